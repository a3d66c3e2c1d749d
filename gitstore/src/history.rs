//! The history of one file: commits, newest first across all parents, in which the blob at the
//! path differs from every parent's (added, changed or deleted), like `git log -- <path>`.

use std::collections::BinaryHeap;

use gix::ObjectId;

use crate::objects::{blob_size, commit_info, ObjectReadError};
use crate::trees::{components, find_entry, subtree, TreeReadError};
use crate::GitStore;
use gix::objs::tree::EntryKind as GitKind;

/// One commit that touched the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub commit: ObjectId,
    /// Author time, unix seconds.
    pub time: i64,
    pub author_name: String,
    pub author_email: String,
    /// First line of the commit message.
    pub summary: String,
    /// The file's blob after the commit; `None` if the commit deleted it.
    pub blob: Option<ObjectId>,
    /// Size of `blob` in bytes.
    pub size: Option<u64>,
}

/// Why the history walk failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history of {path:?}: could not read commit")]
    Commit {
        path: String,
        #[source]
        source: ObjectReadError,
    },
    #[error("history of {path:?}: could not read a tree")]
    Tree {
        path: String,
        #[source]
        source: TreeReadError,
    },
}

impl GitStore {
    /// Commits reachable from `start` that changed the file at `path`, newest first (by commit
    /// time), at most `limit` of them.
    pub fn path_history(
        &self,
        start: ObjectId,
        path: &str,
        limit: Option<usize>,
    ) -> Result<Vec<HistoryEntry>, HistoryError> {
        let repo = self.repo();
        let mut walk = Walk {
            repo: &repo,
            path,
            parts: components(path).collect(),
            buf: Vec::new(),
            blobs: Default::default(),
        };
        let mut queue = BinaryHeap::new();
        let mut seen = gix::hashtable::HashSet::default();
        let mut out = Vec::new();
        let first = walk.commit(start)?;
        seen.insert(start);
        queue.push((first.commit_time, start));
        while let Some((_, id)) = queue.pop() {
            if limit.is_some_and(|limit| out.len() >= limit) {
                break;
            }
            let info = walk.commit(id)?;
            let blob = walk.blob_at(id, info.tree)?;
            let mut touched = info.parents.is_empty() && blob.is_some();
            let mut differs_from_all = !info.parents.is_empty();
            for &parent in &info.parents {
                let parent_info = walk.commit(parent)?;
                if walk.blob_at(parent, parent_info.tree)? == blob {
                    differs_from_all = false;
                }
                if seen.insert(parent) {
                    queue.push((parent_info.commit_time, parent));
                }
            }
            touched |= differs_from_all;
            if touched {
                let size = match blob {
                    Some(b) => Some(blob_size(&repo, b).map_err(|source| walk.commit_err(source))?),
                    None => None,
                };
                out.push(HistoryEntry {
                    commit: id,
                    time: info.time,
                    summary: info.summary().to_owned(),
                    author_name: info.author_name,
                    author_email: info.author_email,
                    blob,
                    size,
                });
            }
        }
        Ok(out)
    }
}

struct Walk<'a> {
    repo: &'a gix::Repository,
    path: &'a str,
    parts: Vec<&'a str>,
    buf: Vec<u8>,
    /// The file's blob per commit, as each commit is also looked at as a parent.
    blobs: gix::hashtable::HashMap<ObjectId, Option<ObjectId>>,
}

impl Walk<'_> {
    fn commit_err(&self, source: ObjectReadError) -> HistoryError {
        HistoryError::Commit {
            path: self.path.to_owned(),
            source,
        }
    }

    fn commit(&mut self, id: ObjectId) -> Result<crate::CommitInfo, HistoryError> {
        commit_info(self.repo, id, &mut self.buf).map_err(|source| self.commit_err(source))
    }

    /// The blob at the path in `commit`'s `tree` (`None` if absent or not a file).
    fn blob_at(
        &mut self,
        commit: ObjectId,
        tree: ObjectId,
    ) -> Result<Option<ObjectId>, HistoryError> {
        if let Some(&cached) = self.blobs.get(&commit) {
            return Ok(cached);
        }
        let mut found = None;
        if let Some((dirs, file)) = self.parts.split_last().map(|(f, d)| (d, *f)) {
            let dir = subtree(self.repo, tree, &dirs.join("/"), &mut self.buf);
            // A file where a directory of the path should be: the path holds no file here.
            let dir = match dir {
                Err(TreeReadError::NotADirectory { .. }) => None,
                other => other.map_err(|source| HistoryError::Tree {
                    path: self.path.to_owned(),
                    source,
                })?,
            };
            if let Some(dir) = dir {
                let entry = find_entry(self.repo, dir, file, &mut self.buf).map_err(|source| {
                    HistoryError::Tree {
                        path: self.path.to_owned(),
                        source,
                    }
                })?;
                if let Some((GitKind::Blob | GitKind::BlobExecutable, id)) = entry {
                    found = Some(id);
                }
            }
        }
        self.blobs.insert(commit, found);
        Ok(found)
    }
}

//! Replaying local commits onto a moved remote tip: a tree-level rebase that never conflicts,
//! since each commit may only change its own area directories, which are copied over as is.

use gix::ObjectId;

use crate::ancestry::{merge_base, MergeBaseError};
use crate::area::{first_outside, parse_area};
use crate::objects::{commit_info, ObjectReadError};
use crate::trees::{subtree, TreeReadError};
use crate::{Author, CommitInfo, CommitWriteError, GitStore, SetSubtreeError};

/// What [`GitStore::replay`] produced; no ref was moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    /// The commit the branch should now point at (`onto`, `local`, or the last replayed one).
    pub tip: ObjectId,
    /// How many commits were rewritten (0 when one side already contains the other).
    pub replayed: usize,
    /// How many local commits were left out because the caller refused them.
    pub dropped: usize,
}

/// Why local commits could not be replayed; nothing was moved, new objects may be left over.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    MergeBase(#[from] MergeBaseError),
    #[error("commit {commit}: could not carry its changes of {dir} onto the new tip: {detail}")]
    Merge {
        commit: ObjectId,
        dir: String,
        detail: String,
    },
    #[error("commit {commit}: could not read it")]
    Commit {
        commit: ObjectId,
        #[source]
        source: ObjectReadError,
    },
    #[error("commit {commit}: is a merge ({parents} parents); only linear history is replayed")]
    MergeCommit { commit: ObjectId, parents: usize },
    #[error("commit {commit}: its areas are unknown: {reason}")]
    Areas { commit: ObjectId, reason: String },
    #[error("commit {commit}: invalid area {dir:?}: {reason}")]
    InvalidArea {
        commit: ObjectId,
        dir: String,
        reason: String,
    },
    #[error("commit {commit}: changes {path}, outside its areas")]
    OutsideArea { commit: ObjectId, path: String },
    #[error("commit {commit}: could not read its trees")]
    Tree {
        commit: ObjectId,
        #[source]
        source: TreeReadError,
    },
    #[error("commit {commit}: could not graft area {dir:?} onto the new tip")]
    Graft {
        commit: ObjectId,
        dir: String,
        #[source]
        source: SetSubtreeError,
    },
    #[error("commit {commit}: could not write its replayed copy")]
    Write {
        commit: ObjectId,
        #[source]
        source: CommitWriteError,
    },
}

/// The areas of one commit, as the caller names them.
pub type AreasOf<'f> = dyn Fn(&CommitInfo) -> Result<Vec<String>, String> + 'f;

impl GitStore {
    /// Rewrites the commits of `local` that `onto` lacks (the first-parent chain from `local`
    /// down to their merge base, oldest first) on top of `onto` and returns the new tip.
    ///
    /// Each commit may change only the directories `dirs_of` gives for it (its areas, e.g.
    /// `entries` or `state/t`), checked against its original parent; its copy is the new
    /// parent's tree with those directories taken from the commit. Message, author and author
    /// time are kept; the committer time is the original one, raised to the new parent's if
    /// older, so the same replay gives the same ids. Unrelated histories replay `local`'s whole
    /// chain. A fast-forward either way rewrites nothing. No ref is moved.
    pub fn replay(
        &self,
        local: ObjectId,
        onto: ObjectId,
        dirs_of: &AreasOf<'_>,
    ) -> Result<Replayed, ReplayError> {
        self.replay_dropping(local, onto, dirs_of, &|_| false)
    }

    /// [`GitStore::replay`], leaving out the local commits `drop` refuses (a fenced owner's
    /// commits: their changes are someone else's to commit now). When a commit is left out,
    /// even a fast-forward is rewritten.
    pub fn replay_dropping(
        &self,
        local: ObjectId,
        onto: ObjectId,
        dirs_of: &AreasOf<'_>,
        drop: &dyn Fn(&CommitInfo) -> bool,
    ) -> Result<Replayed, ReplayError> {
        let mut repo = self.repo();
        let base = merge_base(&mut repo, local, onto)?;
        if base == Some(local) {
            return Ok(Replayed {
                tip: onto,
                replayed: 0,
                dropped: 0,
            });
        }
        let mut buf = Vec::new();
        let mut read =
            |id| commit_info(&repo, id, &mut buf).map_err(|source| commit_err(id, source));
        let chain = first_parent_chain(&mut read, local, base)?;
        if base == Some(onto) && !chain.iter().any(drop) {
            return Ok(Replayed {
                tip: local,
                replayed: 0,
                dropped: 0,
            });
        }
        let onto_info = read(onto)?;
        let mut old_parent_tree = match base {
            Some(base) => Some(read(base)?.tree),
            None => None,
        };
        let mut tip = (onto, onto_info.commit_time, Some(onto_info.tree));
        let mut dropped = 0;
        for commit in &chain {
            if drop(commit) {
                dropped += 1;
                old_parent_tree = Some(commit.tree);
                continue;
            }
            let tree = self.graft(&repo, commit, old_parent_tree, tip.2, dirs_of)?;
            let author = Author {
                name: commit.author_name.clone(),
                email: commit.author_email.clone(),
            };
            let commit_time = commit.commit_time.max(tip.1);
            let id = self
                .write_commit_at(
                    tree.unwrap_or_else(GitStore::empty_tree_id),
                    &[tip.0],
                    &commit.message,
                    &author,
                    commit.time,
                    commit_time,
                )
                .map_err(|source| ReplayError::Write {
                    commit: commit.id,
                    source,
                })?;
            tip = (id, commit_time, tree);
            old_parent_tree = Some(commit.tree);
        }
        Ok(Replayed {
            tip: tip.0,
            replayed: chain.len() - dropped,
            dropped,
        })
    }

    /// Checks that `commit` changes only its areas relative to `old_parent_tree` and returns
    /// `new_parent_tree` with those areas taken from `commit` (`None` = empty root).
    fn graft(
        &self,
        repo: &gix::Repository,
        commit: &CommitInfo,
        old_parent_tree: Option<ObjectId>,
        new_parent_tree: Option<ObjectId>,
        dirs_of: &AreasOf<'_>,
    ) -> Result<Option<ObjectId>, ReplayError> {
        let id = commit.id;
        let dirs = dirs_of(commit).map_err(|reason| ReplayError::Areas { commit: id, reason })?;
        let areas = dirs
            .iter()
            .map(|dir| {
                parse_area(dir).map_err(|reason| ReplayError::InvalidArea {
                    commit: id,
                    dir: dir.clone(),
                    reason,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tree_err = |source| ReplayError::Tree { commit: id, source };
        if let Some(path) =
            first_outside(repo, old_parent_tree, Some(commit.tree), &areas).map_err(tree_err)?
        {
            return Err(ReplayError::OutsideArea { commit: id, path });
        }
        let mut tree = new_parent_tree;
        let mut buf = Vec::new();
        for (dir, parts) in dirs.iter().zip(&areas) {
            let path = parts.join("/");
            let merge_err = |detail: String| ReplayError::Merge {
                commit: id,
                dir: dir.clone(),
                detail,
            };
            let before = match old_parent_tree {
                Some(t) => subtree(repo, t, &path, &mut buf).map_err(tree_err)?,
                None => None,
            };
            let after = subtree(repo, commit.tree, &path, &mut buf).map_err(tree_err)?;
            let onto = match tree {
                Some(t) => subtree(repo, t, &path, &mut buf).map_err(tree_err)?,
                None => None,
            };
            // Carry the commit's file changes, not its whole directory: a file someone else
            // changed on the remote meanwhile keeps their version (Git wins; the next apply
            // writes it to the KV store and reports the overwritten live value).
            let changes = self
                .diff_files(before, after)
                .map_err(|e| merge_err(e.to_string()))?;
            let merged = apply_unless_changed(repo, onto, &changes).map_err(merge_err)?;
            tree = self
                .set_subtree(tree, &path, merged)
                .map_err(|source| ReplayError::Graft {
                    commit: id,
                    dir: dir.clone(),
                    source,
                })?;
        }
        Ok(tree)
    }
}

/// `onto` with each change applied where `onto` still holds the change's old blob.
fn apply_unless_changed(
    repo: &gix::Repository,
    onto: Option<ObjectId>,
    changes: &[crate::FileChange],
) -> Result<Option<ObjectId>, String> {
    let empty = ObjectId::empty_tree(gix::hash::Kind::Sha1);
    let base = onto.unwrap_or(empty);
    let mut editor = repo.edit_tree(base).map_err(|e| e.to_string())?;
    let current_tree = repo.find_tree(base).map_err(|e| e.to_string())?;
    let mut applied = 0;
    for ch in changes {
        let current = current_tree
            .lookup_entry_by_path(&ch.path)
            .map_err(|e| e.to_string())?
            .filter(|e| e.mode().is_blob())
            .map(|e| e.object_id());
        if current != ch.old {
            continue;
        }
        match ch.new {
            Some(blob) => editor
                .upsert(ch.path.as_str(), gix::object::tree::EntryKind::Blob, blob)
                .map_err(|e| e.to_string())?,
            None => editor.remove(ch.path.as_str()).map_err(|e| e.to_string())?,
        };
        applied += 1;
    }
    if applied == 0 {
        return Ok(onto);
    }
    let id = editor.write().map_err(|e| e.to_string())?.detach();
    Ok((id != empty).then_some(id))
}

fn commit_err(commit: ObjectId, source: ObjectReadError) -> ReplayError {
    ReplayError::Commit { commit, source }
}

/// The commits from `local` back to (not including) `base`, oldest first, following first
/// parents; down to the root when `base` is `None`. A merge on the way is refused.
fn first_parent_chain(
    read: &mut impl FnMut(ObjectId) -> Result<CommitInfo, ReplayError>,
    local: ObjectId,
    base: Option<ObjectId>,
) -> Result<Vec<CommitInfo>, ReplayError> {
    let mut chain = Vec::new();
    let mut next = Some(local);
    while let Some(id) = next.filter(|id| Some(*id) != base) {
        let info = read(id)?;
        if info.parents.len() > 1 {
            return Err(ReplayError::MergeCommit {
                commit: id,
                parents: info.parents.len(),
            });
        }
        next = info.parents.first().copied();
        chain.push(info);
    }
    chain.reverse();
    Ok(chain)
}

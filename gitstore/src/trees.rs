//! Reading trees as kvgit sees them (regular files and directories only): one tree's entries,
//! the subtree at a path, every file under a tree, and the `TreeSource` the mapper reads.

use gix::objs::tree::EntryKind as GitKind;
use gix::objs::Kind;
use gix::ObjectId;
use sync_core::tree::{EntryKind, ListedEntry, TreeSource};

use crate::objects::{read_kind, ObjectReadError};
use crate::GitStore;

/// Why a tree could not be read the way kvgit reads trees.
#[derive(Debug, thiserror::Error)]
pub enum TreeReadError {
    #[error(transparent)]
    Object(#[from] ObjectReadError),
    #[error("tree {tree}: could not decode it")]
    Decode {
        tree: ObjectId,
        #[source]
        source: gix::Error,
    },
    #[error("{path}: is a {kind:?} entry; kvgit stores only regular files and directories")]
    Unsupported { path: String, kind: GitKind },
    #[error("{path}: entry name is not UTF-8")]
    NonUtf8 { path: String },
    #[error("{path}: is a file, not a directory")]
    NotADirectory { path: String },
}

/// One entry of a tree, as kvgit knows it.
pub(crate) struct Item {
    pub name: String,
    pub kind: EntryKind,
    pub id: ObjectId,
}

/// Joins a directory path and a name ("" is the root).
pub(crate) fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// The entries of tree `id`, whose path is `dir` (for error messages), in stored order.
pub(crate) fn list(
    repo: &gix::Repository,
    id: ObjectId,
    dir: &str,
    buf: &mut Vec<u8>,
) -> Result<Vec<Item>, TreeReadError> {
    let data = read_kind(repo, id, Kind::Tree, buf)?;
    parse(id, data, dir)
}

/// The entries of the tree `id` whose data is `data`; see [`list`].
fn parse(id: ObjectId, data: &[u8], dir: &str) -> Result<Vec<Item>, TreeReadError> {
    let mut items = Vec::new();
    for entry in gix::objs::TreeRefIter::from_bytes(data, gix::hash::Kind::Sha1) {
        let (name, kind, entry_id) = entry_of(id, entry, dir)?;
        items.push(Item {
            name: name.to_owned(),
            kind,
            id: entry_id,
        });
    }
    Ok(items)
}

/// One decoded entry of the tree `id` (whose path is `dir`): its name, kind and object,
/// or why kvgit cannot read it (a name that is not UTF-8, a submodule or a symlink).
fn entry_of<'a>(
    id: ObjectId,
    entry: Result<gix::objs::tree::EntryRef<'a>, gix::Error>,
    dir: &str,
) -> Result<(&'a str, EntryKind, ObjectId), TreeReadError> {
    let entry = entry.map_err(|source| TreeReadError::Decode { tree: id, source })?;
    let Ok(name) = std::str::from_utf8(entry.filename) else {
        return Err(TreeReadError::NonUtf8 {
            path: join(dir, &entry.filename.to_string()),
        });
    };
    let kind = match entry.mode.kind() {
        GitKind::Blob | GitKind::BlobExecutable => EntryKind::File,
        GitKind::Tree => EntryKind::Dir,
        other => {
            return Err(TreeReadError::Unsupported {
                path: join(dir, name),
                kind: other,
            })
        }
    };
    Ok((name, kind, entry.oid.to_owned()))
}

/// Splits a '/'-path into its non-empty components.
pub(crate) fn components(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty())
}

/// The entry `name` of tree `id`, without decoding the other entries' names.
pub(crate) fn find_entry(
    repo: &gix::Repository,
    id: ObjectId,
    name: &str,
    buf: &mut Vec<u8>,
) -> Result<Option<(GitKind, ObjectId)>, TreeReadError> {
    let data = read_kind(repo, id, Kind::Tree, buf)?;
    for entry in gix::objs::TreeRefIter::from_bytes(data, gix::hash::Kind::Sha1) {
        let entry = entry.map_err(|source| TreeReadError::Decode { tree: id, source })?;
        if entry.filename == name.as_bytes() {
            return Ok(Some((entry.mode.kind(), entry.oid.to_owned())));
        }
    }
    Ok(None)
}

/// The tree at `path` under `tree`; `None` if absent, an error if a file is in the way.
pub(crate) fn subtree(
    repo: &gix::Repository,
    tree: ObjectId,
    path: &str,
    buf: &mut Vec<u8>,
) -> Result<Option<ObjectId>, TreeReadError> {
    let mut current = tree;
    let mut walked = String::new();
    for name in components(path) {
        walked = join(&walked, name);
        match find_entry(repo, current, name, buf)? {
            None => return Ok(None),
            Some((GitKind::Tree, id)) => current = id,
            Some((GitKind::Blob | GitKind::BlobExecutable, _)) => {
                return Err(TreeReadError::NotADirectory { path: walked })
            }
            Some((kind, _)) => return Err(TreeReadError::Unsupported { path: walked, kind }),
        }
    }
    Ok(Some(current))
}

impl GitStore {
    /// The tree at the '/'-separated `path` below `tree` (`""` is `tree` itself).
    pub fn subtree(&self, tree: ObjectId, path: &str) -> Result<Option<ObjectId>, TreeReadError> {
        subtree(&self.repo(), tree, path, &mut Vec::new())
    }

    /// Every file below `tree` as (path relative to `tree`, blob id), sorted by path.
    pub fn files_under(&self, tree: ObjectId) -> Result<Vec<(String, ObjectId)>, TreeReadError> {
        let repo = self.repo();
        let mut files = Vec::new();
        let mut path = String::new();
        walk_files(&repo, tree, &mut path, &mut Vec::new(), &mut files)?;
        // A tree in Git's order is walked in path order already (Git compares a directory
        // as `name/`, as full paths do): then this is one linear check.
        files.sort();
        Ok(files)
    }
}

/// Appends every file below tree `id` (whose path is `dir`) to `files`, depth first in the
/// tree's stored order. `bufs` holds one read buffer per level, reused across siblings.
fn walk_files(
    repo: &gix::Repository,
    id: ObjectId,
    dir: &mut String,
    bufs: &mut Vec<Vec<u8>>,
    files: &mut Vec<(String, ObjectId)>,
) -> Result<(), TreeReadError> {
    let mut buf = bufs.pop().unwrap_or_default();
    let data = read_kind(repo, id, Kind::Tree, &mut buf)?;
    let dir_len = dir.len();
    for entry in gix::objs::TreeRefIter::from_bytes(data, gix::hash::Kind::Sha1) {
        let (name, kind, entry_id) = entry_of(id, entry, dir)?;
        if dir_len > 0 {
            dir.push('/');
        }
        dir.push_str(name);
        match kind {
            EntryKind::File => files.push((dir.clone(), entry_id)),
            EntryKind::Dir => walk_files(repo, entry_id, dir, bufs, files)?,
        }
        dir.truncate(dir_len);
    }
    bufs.push(buf);
    Ok(())
}

impl GitStore {
    /// The raw data of the tree `id`: shared with the trees written lately (no copy of a
    /// large tree per commit), else read from the store.
    pub(crate) fn tree_data(&self, id: ObjectId) -> Result<std::sync::Arc<[u8]>, TreeReadError> {
        if let Some(data) = self.recent.get(&id) {
            return Ok(data);
        }
        Ok(read_kind(&self.repo(), id, Kind::Tree, &mut Vec::new())?.into())
    }
}

impl TreeSource for GitStore {
    type Id = ObjectId;
    type Error = TreeReadError;

    fn list(&self, id: &ObjectId) -> Result<Vec<ListedEntry<ObjectId>>, TreeReadError> {
        let items = match self.recent.get(id) {
            Some(data) => parse(*id, &data, &format!("<tree {id}>"))?,
            None => list(&self.repo(), *id, &format!("<tree {id}>"), &mut Vec::new())?,
        };
        Ok(items
            .into_iter()
            .map(|i| ListedEntry {
                name: i.name,
                kind: i.kind,
                id: i.id,
            })
            .collect())
    }
}

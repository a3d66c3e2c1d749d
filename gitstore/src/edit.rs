//! Replacing one (possibly nested) directory of a root tree by another tree, or removing it:
//! how an area's new subtree is grafted onto the branch without touching other areas.

use gix::objs::tree::EntryKind as GitKind;
use gix::objs::Kind;
use gix::prelude::Write as _;
use gix::ObjectId;

use crate::objects::{hash, read_kind, HashError, ObjectReadError};
use crate::treefmt::{self, Entry};
use crate::trees::{components, join};
use crate::GitStore;

/// Why a subtree could not be set.
#[derive(Debug, thiserror::Error)]
pub enum SetSubtreeError {
    #[error("{path}: invalid directory name: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error(transparent)]
    Read(#[from] ObjectReadError),
    #[error("tree {tree}: could not decode it")]
    Decode {
        tree: ObjectId,
        #[source]
        source: gix::Error,
    },
    #[error("{path}: is a file, not a directory")]
    NotADirectory { path: String },
    #[error("{path}: could not hash the new tree")]
    Hash {
        path: String,
        #[source]
        source: HashError,
    },
    #[error("{path}: could not write tree {id}")]
    Write {
        path: String,
        id: ObjectId,
        #[source]
        source: gix::Error,
    },
}

/// A raw entry of an existing tree (any mode is kept as is).
struct Raw {
    name: Vec<u8>,
    kind: GitKind,
    id: ObjectId,
}

impl GitStore {
    /// The root tree with the directory at `path` (e.g. `areas/entries`) replaced by `subtree`,
    /// or removed when `subtree` is `None` (or the empty tree). Missing intermediate directories
    /// are created, emptied ones pruned, untouched siblings kept by id. Returns `None` when the
    /// root ends up empty; an empty `path` stands for the root itself.
    pub fn set_subtree(
        &self,
        root: Option<ObjectId>,
        path: &str,
        subtree: Option<ObjectId>,
    ) -> Result<Option<ObjectId>, SetSubtreeError> {
        let parts: Vec<&str> = components(path).collect();
        for (i, name) in parts.iter().enumerate() {
            if let Some(reason) = treefmt::invalid_name(name.as_bytes()) {
                return Err(SetSubtreeError::InvalidPath {
                    path: parts[..=i].join("/"),
                    reason,
                });
            }
        }
        let repo = self.repo();
        set(
            &repo,
            root,
            "",
            &parts,
            subtree.filter(|id| !id.is_empty_tree()),
        )
    }
}

/// Sets `rest` below `tree` (whose path is `dir`) to `new`; returns the new tree id.
fn set(
    repo: &gix::Repository,
    tree: Option<ObjectId>,
    dir: &str,
    rest: &[&str],
    new: Option<ObjectId>,
) -> Result<Option<ObjectId>, SetSubtreeError> {
    let Some((name, deeper)) = rest.split_first() else {
        return Ok(new);
    };
    let tree = tree.filter(|id| !id.is_empty_tree());
    let mut entries = match tree {
        Some(id) => read_raw(repo, id)?,
        None => Vec::new(),
    };
    let path = join(dir, name);
    let pos = entries.iter().position(|e| e.name == name.as_bytes());
    let old_child = match pos.map(|i| &entries[i]) {
        Some(e) if e.kind == GitKind::Tree => Some(e.id),
        Some(_) => return Err(SetSubtreeError::NotADirectory { path }),
        None => None,
    };
    let new_child = set(repo, old_child, &path, deeper, new)?;
    if new_child == old_child {
        return Ok(tree);
    }
    if let Some(i) = pos {
        entries.remove(i);
    }
    if let Some(id) = new_child {
        entries.push(Raw {
            name: name.as_bytes().to_vec(),
            kind: GitKind::Tree,
            id,
        });
    }
    if entries.is_empty() {
        return Ok(None);
    }
    write_tree(repo, &entries, dir).map(Some)
}

fn read_raw(repo: &gix::Repository, id: ObjectId) -> Result<Vec<Raw>, SetSubtreeError> {
    let mut buf = Vec::new();
    let data = read_kind(repo, id, Kind::Tree, &mut buf)?;
    gix::objs::TreeRefIter::from_bytes(data, gix::hash::Kind::Sha1)
        .map(|entry| {
            let entry = entry.map_err(|source| SetSubtreeError::Decode { tree: id, source })?;
            Ok(Raw {
                name: entry.filename.to_vec(),
                kind: entry.mode.kind(),
                id: entry.oid.to_owned(),
            })
        })
        .collect()
}

fn write_tree(repo: &gix::Repository, raw: &[Raw], dir: &str) -> Result<ObjectId, SetSubtreeError> {
    let mut entries: Vec<Entry<'_>> = raw
        .iter()
        .map(|e| Entry {
            name: &e.name,
            kind: e.kind,
            id: e.id,
        })
        .collect();
    treefmt::sort(&mut entries);
    let mut data = Vec::new();
    treefmt::encode(&entries, &mut data);
    let shown = || {
        if dir.is_empty() {
            "/".to_owned()
        } else {
            dir.to_owned()
        }
    };
    let id = hash(Kind::Tree, &data).map_err(|source| SetSubtreeError::Hash {
        path: shown(),
        source,
    })?;
    if !repo.objects.exists_without_refresh(&id) {
        repo.objects
            .write_buf_with_known_id(Kind::Tree, &data, id)
            .map_err(|source| SetSubtreeError::Write {
                path: shown(),
                id,
                source,
            })?;
    }
    Ok(id)
}

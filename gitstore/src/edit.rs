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
        let parts = checked_components(path)?;
        let repo = self.repo();
        let subtree = subtree.filter(|id| !id.is_empty_tree());
        set(&mut Stored { repo: &repo }, root, "", &parts, subtree)
    }

    /// [`GitStore::set_subtree`] whose new trees go into `batch` (and whose root may be one of
    /// the batch's trees), so that a pass can graft several areas one after another and write
    /// the trees and commits together at the end.
    pub fn set_subtree_in(
        &self,
        batch: &mut crate::ObjectBatch,
        root: Option<ObjectId>,
        path: &str,
        subtree: Option<ObjectId>,
    ) -> Result<Option<ObjectId>, SetSubtreeError> {
        let parts = checked_components(path)?;
        let repo = self.repo();
        let subtree = subtree.filter(|id| !id.is_empty_tree());
        set(
            &mut Batched { repo: &repo, batch },
            root,
            "",
            &parts,
            subtree,
        )
    }
}

/// `path`'s directory names, each checked.
fn checked_components(path: &str) -> Result<Vec<&str>, SetSubtreeError> {
    let parts: Vec<&str> = components(path).collect();
    for (i, name) in parts.iter().enumerate() {
        if let Some(reason) = treefmt::invalid_name(name.as_bytes()) {
            return Err(SetSubtreeError::InvalidPath {
                path: parts[..=i].join("/"),
                reason,
            });
        }
    }
    Ok(parts)
}

/// Where [`set`] reads the trees it edits and puts the trees it makes.
trait Trees {
    fn read(&mut self, id: ObjectId) -> Result<Vec<Raw>, SetSubtreeError>;
    fn put(&mut self, raw: &[Raw], dir: &str) -> Result<ObjectId, SetSubtreeError>;
}

/// The object store itself: new trees are written loose.
struct Stored<'r> {
    repo: &'r gix::Repository,
}

impl Trees for Stored<'_> {
    fn read(&mut self, id: ObjectId) -> Result<Vec<Raw>, SetSubtreeError> {
        let mut buf = Vec::new();
        decode_raw(id, read_kind(self.repo, id, Kind::Tree, &mut buf)?)
    }

    fn put(&mut self, raw: &[Raw], dir: &str) -> Result<ObjectId, SetSubtreeError> {
        let (id, data) = encode_tree(raw, dir)?;
        if !self.repo.objects.exists_without_refresh(&id) {
            self.repo
                .objects
                .write_buf_with_known_id(Kind::Tree, &data, id)
                .map_err(|source| SetSubtreeError::Write {
                    path: shown(dir),
                    id,
                    source,
                })?;
        }
        Ok(id)
    }
}

/// A batch of objects not yet written, in front of the store.
struct Batched<'r, 'b> {
    repo: &'r gix::Repository,
    batch: &'b mut crate::ObjectBatch,
}

impl Trees for Batched<'_, '_> {
    fn read(&mut self, id: ObjectId) -> Result<Vec<Raw>, SetSubtreeError> {
        match self.batch.get(&id) {
            Some((Kind::Tree, data)) => decode_raw(id, data),
            Some((actual, _)) => Err(SetSubtreeError::Read(ObjectReadError::WrongKind {
                id,
                expected: Kind::Tree,
                actual,
            })),
            None => Stored { repo: self.repo }.read(id),
        }
    }

    fn put(&mut self, raw: &[Raw], dir: &str) -> Result<ObjectId, SetSubtreeError> {
        let (id, data) = encode_tree(raw, dir)?;
        self.batch.push(id, Kind::Tree, data);
        Ok(id)
    }
}

/// Sets `rest` below `tree` (whose path is `dir`) to `new`; returns the new tree id.
fn set(
    trees: &mut impl Trees,
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
        Some(id) => trees.read(id)?,
        None => Vec::new(),
    };
    let path = join(dir, name);
    let pos = entries.iter().position(|e| e.name == name.as_bytes());
    let old_child = match pos.map(|i| &entries[i]) {
        Some(e) if e.kind == GitKind::Tree => Some(e.id),
        Some(_) => return Err(SetSubtreeError::NotADirectory { path }),
        None => None,
    };
    let new_child = set(trees, old_child, &path, deeper, new)?;
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
    trees.put(&entries, dir).map(Some)
}

fn decode_raw(id: ObjectId, data: &[u8]) -> Result<Vec<Raw>, SetSubtreeError> {
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

/// The directory as errors name it (`/` for the root).
fn shown(dir: &str) -> String {
    if dir.is_empty() {
        "/".to_owned()
    } else {
        dir.to_owned()
    }
}

/// The tree object of `raw` (sorted as git sorts) and its id.
fn encode_tree(raw: &[Raw], dir: &str) -> Result<(ObjectId, Vec<u8>), SetSubtreeError> {
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
    let id = hash(Kind::Tree, &data).map_err(|source| SetSubtreeError::Hash {
        path: shown(dir),
        source,
    })?;
    Ok((id, data))
}

//! Writing a `DirPlan` bottom-up: new blobs and changed trees are hashed once and handed to a
//! sink (loose objects here, one pack in `pack.rs`); `Existing` entries are referenced as is.

use std::borrow::Cow;

use gix::objs::tree::EntryKind as GitKind;
use gix::objs::Kind;
use gix::prelude::Write as _;
use gix::ObjectId;
use sync_core::tree::{EntryKind, PlanEntry};

use crate::objects::{hash, HashError};
use crate::treefmt::{self, Entry};
use crate::trees::TreeReadError;
use crate::GitStore;
use sync_core::tree::{DirPlan, TreeEdit};

/// The content of a planned file, and its blob id when the caller has hashed it already
/// (comparing a value with Git needs its id first; it is not hashed twice).
pub trait BlobContent {
    fn bytes(&self) -> &[u8];
    fn known_id(&self) -> Option<ObjectId> {
        None
    }
    /// The blob is already in the store under this id: referenced, not written again.
    fn stored_id(&self) -> Option<ObjectId> {
        None
    }
}

impl BlobContent for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// A value with its blob id (from [`GitStore::hash_blob`] of exactly these bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashedBlob {
    pub id: ObjectId,
    pub bytes: Vec<u8>,
}

impl BlobContent for HashedBlob {
    fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    fn known_id(&self) -> Option<ObjectId> {
        Some(self.id)
    }
}

/// A file whose blob was stored already (by [`crate::BulkWriter::blob`]): a plan of
/// these writes trees only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredBlob(pub ObjectId);

impl BlobContent for StoredBlob {
    fn bytes(&self) -> &[u8] {
        &[]
    }
    fn known_id(&self) -> Option<ObjectId> {
        Some(self.0)
    }
    fn stored_id(&self) -> Option<ObjectId> {
        Some(self.0)
    }
}

/// Why a plan could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WritePlanError {
    #[error("{path}: invalid entry name: {reason}")]
    InvalidName { path: String, reason: String },
    #[error("{path}: the name occurs twice in one directory")]
    Duplicate { path: String },
    #[error("{path}: could not hash it")]
    Hash {
        path: String,
        #[source]
        source: HashError,
    },
    #[error("{path}: could not read the tree {base} it edits")]
    EditBase {
        path: String,
        base: ObjectId,
        #[source]
        source: TreeReadError,
    },
    #[error("{path}: could not write {kind} {id}")]
    Write {
        path: String,
        kind: Kind,
        id: ObjectId,
        #[source]
        source: gix::Error,
    },
}

/// Receives each new object of a plan, children before parents.
pub(crate) trait Sink<'p> {
    fn put(&mut self, kind: Kind, id: ObjectId, data: Cow<'p, [u8]>) -> Result<(), gix::Error>;
}

/// Walks `plan` and returns its tree id; an empty plan gives the empty tree (also stored).
/// `store` holds the trees the plan's edits start from.
pub(crate) fn write_root<'p, V: BlobContent>(
    plan: &'p DirPlan<ObjectId, V>,
    store: &GitStore,
    sink: &mut impl Sink<'p>,
) -> Result<ObjectId, WritePlanError> {
    let mut dir = Vec::new();
    match write_dir(plan, store, sink, &mut dir)? {
        Some(id) => Ok(id),
        None => {
            let id = ObjectId::empty_tree(gix::hash::Kind::Sha1);
            put(sink, &dir, "", Kind::Tree, id, Cow::Borrowed(&[]))?;
            Ok(id)
        }
    }
}

/// Writes one directory after its subdirectories; `None` when it ends up empty (empty
/// directories are pruned: Git cannot check them out).
pub(crate) fn write_dir<'p, V: BlobContent>(
    plan: &'p DirPlan<ObjectId, V>,
    store: &GitStore,
    sink: &mut impl Sink<'p>,
    dir: &mut Vec<&'p str>,
) -> Result<Option<ObjectId>, WritePlanError> {
    let mut entries = Vec::with_capacity(plan.entries.len());
    for (name, entry) in &plan.entries {
        if let Some(reason) = treefmt::invalid_name(name.as_bytes()) {
            return Err(WritePlanError::InvalidName {
                path: path_of(dir, name),
                reason,
            });
        }
        let (kind, id) = match entry {
            PlanEntry::Existing { kind, id } => (git_kind(*kind), *id),
            PlanEntry::File(content) => match content.stored_id() {
                Some(id) => (GitKind::Blob, id),
                None => {
                    let bytes = content.bytes();
                    let id = match content.known_id() {
                        Some(id) => {
                            debug_assert_eq!(hash(Kind::Blob, bytes).ok(), Some(id), "{name}");
                            id
                        }
                        None => hash(Kind::Blob, bytes).map_err(|source| WritePlanError::Hash {
                            path: path_of(dir, name),
                            source,
                        })?,
                    };
                    put(sink, dir, name, Kind::Blob, id, Cow::Borrowed(bytes))?;
                    (GitKind::Blob, id)
                }
            },
            PlanEntry::Dir(sub) => {
                dir.push(name);
                let id = write_dir(sub, store, sink, dir)?;
                dir.pop();
                match id {
                    Some(id) => (GitKind::Tree, id),
                    None => continue,
                }
            }
        };
        entries.push(Entry {
            name: name.as_bytes(),
            kind,
            id,
        });
    }
    let base;
    let entries = match &plan.edit {
        None => {
            treefmt::sort(&mut entries);
            entries
        }
        Some(edit) => {
            base = store
                .tree_data(edit.base)
                .map_err(|source| WritePlanError::EditBase {
                    path: path_of(dir, ""),
                    base: edit.base,
                    source,
                })?;
            let names = plan.entries.iter().map(|(name, _)| name.as_bytes());
            edited(&base, edit, names, entries).map_err(|source| WritePlanError::EditBase {
                path: path_of(dir, ""),
                base: edit.base,
                source,
            })?
        }
    };
    if entries.is_empty() {
        return Ok(None);
    }
    if let Some(name) = treefmt::duplicate(&entries) {
        return Err(WritePlanError::Duplicate {
            path: path_of(dir, &String::from_utf8_lossy(name)),
        });
    }
    let mut data = Vec::with_capacity(entries.len() * 48);
    treefmt::encode(&entries, &mut data);
    let id = hash(Kind::Tree, &data).map_err(|source| WritePlanError::Hash {
        path: path_of(dir, ""),
        source,
    })?;
    put(sink, dir, "", Kind::Tree, id, Cow::Owned(data))?;
    Ok(Some(id))
}

/// The entries of the tree `base` (its raw data) after `edit`: those named `planned` (the
/// plan's entries) or removed are replaced by `changed` (what the planned ones became; a
/// directory that ended up empty is not there). One pass over the tree, no name decoded.
fn edited<'a>(
    base: &'a [u8],
    edit: &'a TreeEdit<ObjectId>,
    planned: impl Iterator<Item = &'a [u8]>,
    mut changed: Vec<Entry<'a>>,
) -> Result<Vec<Entry<'a>>, TreeReadError> {
    let mut names: Vec<&[u8]> = planned.collect();
    names.extend(edit.removed.iter().map(|n| n.as_bytes()));
    let gone = Gone::new(names);
    treefmt::sort(&mut changed);
    let mut out = Vec::with_capacity(base.len() / 30 + changed.len());
    let mut changed = changed.into_iter().peekable();
    for entry in gix::objs::TreeRefIter::from_bytes(base, gix::hash::Kind::Sha1) {
        let entry = entry.map_err(|source| TreeReadError::Decode {
            tree: edit.base,
            source,
        })?;
        let name: &[u8] = entry.filename.as_ref();
        if gone.contains(name) {
            continue;
        }
        // Kept as a full rewrite would write it: a regular file or a directory.
        let kind = match entry.mode.kind() {
            GitKind::Tree => GitKind::Tree,
            _ => GitKind::Blob,
        };
        let kept = Entry {
            name,
            kind,
            id: entry.oid.to_owned(),
        };
        while let Some(c) = changed.next_if(|c| treefmt::cmp(c, &kept).is_lt()) {
            out.push(c);
        }
        out.push(kept);
    }
    out.extend(changed);
    // A tree written by Git is in canonical order already; one that is not is sorted here.
    if !out.is_sorted_by(|a, b| treefmt::cmp(a, b).is_le()) {
        treefmt::sort(&mut out);
    }
    Ok(out)
}

/// The names an edit replaces or removes. Every entry of the base tree is asked about, and
/// a directory of thousands of entries changes a few: a filter of name hashes answers most
/// of them with one hash instead of a binary search over byte strings (a twelfth of a
/// 100-key commit's CPU at 10M keys went to those searches).
struct Gone<'a> {
    names: Vec<&'a [u8]>,
    filter: [u64; FILTER_WORDS],
}

/// 1024 bits: a few dozen names leave a kept name a few percent chance of a search.
const FILTER_WORDS: usize = 16;

impl<'a> Gone<'a> {
    fn new(mut names: Vec<&'a [u8]>) -> Gone<'a> {
        names.sort_unstable();
        let mut filter = [0; FILTER_WORDS];
        for name in &names {
            let (word, bit) = filter_bit(name);
            filter[word] |= bit;
        }
        Gone { names, filter }
    }

    fn contains(&self, name: &[u8]) -> bool {
        let (word, bit) = filter_bit(name);
        self.filter[word] & bit != 0 && self.names.binary_search(&name).is_ok()
    }
}

/// The filter's word and bit for `name`, from foldhash (fixed seed: the filter lives for one
/// call, so a per-process seed would buy nothing).
fn filter_bit(name: &[u8]) -> (usize, u64) {
    use std::hash::BuildHasher as _;
    let h = foldhash::fast::FixedState::with_seed(0).hash_one(name);
    // The top 10 bits: 4 pick the word, 6 the bit.
    let top = (h >> 54) as usize;
    (top >> 6, 1 << (top & 63))
}

fn put<'p>(
    sink: &mut impl Sink<'p>,
    dir: &[&str],
    name: &str,
    kind: Kind,
    id: ObjectId,
    data: Cow<'p, [u8]>,
) -> Result<(), WritePlanError> {
    sink.put(kind, id, data)
        .map_err(|source| WritePlanError::Write {
            path: path_of(dir, name),
            kind,
            id,
            source,
        })
}

pub(crate) fn git_kind(kind: EntryKind) -> GitKind {
    match kind {
        EntryKind::File => GitKind::Blob,
        EntryKind::Dir => GitKind::Tree,
    }
}

/// `dir/name` for error messages; the root shows as `/`.
fn path_of(dir: &[&str], name: &str) -> String {
    let mut parts: Vec<&str> = dir.to_vec();
    if !name.is_empty() {
        parts.push(name);
    }
    if parts.is_empty() {
        "/".to_owned()
    } else {
        parts.join("/")
    }
}

/// Writes each object as a loose file unless the store already has it.
struct LooseSink<'r> {
    repo: &'r gix::Repository,
}

impl<'p> Sink<'p> for LooseSink<'_> {
    fn put(&mut self, kind: Kind, id: ObjectId, data: Cow<'p, [u8]>) -> Result<(), gix::Error> {
        if self.repo.objects.exists_without_refresh(&id) {
            return Ok(());
        }
        self.repo.objects.write_buf_with_known_id(kind, &data, id)?;
        Ok(())
    }
}

impl GitStore {
    /// Writes the plan's new blobs and changed trees as loose objects and returns the root tree
    /// id. `Existing` entries are referenced by id, so only changed subtrees are rewritten.
    /// Empty directories are pruned; an empty plan gives the empty tree.
    pub fn write_plan<V: BlobContent>(
        &self,
        plan: &DirPlan<ObjectId, V>,
    ) -> Result<ObjectId, WritePlanError> {
        let repo = self.repo();
        write_root(plan, self, &mut LooseSink { repo: &repo })
    }
}

#[cfg(test)]
mod tests {
    use super::Gone;

    #[test]
    fn gone_names_are_found_and_no_other_name_is() {
        // Names as areas have them (`key-0001234`, longer than a hash word), their prefixes
        // and extensions, names a byte apart at either end, and the empty name.
        let mut all: Vec<Vec<u8>> = (0..3000)
            .map(|i| format!("key-{i:07}").into_bytes())
            .collect();
        all.extend(
            [
                "",
                "k",
                "key-",
                "key-0000001x",
                "xey-0000001",
                "%self",
                "a/b",
            ]
            .map(|n| n.as_bytes().to_vec()),
        );
        let gone_idx: Vec<usize> = (0..all.len()).filter(|i| i % 97 == 3).collect();
        let gone = Gone::new(gone_idx.iter().map(|&i| all[i].as_slice()).collect());
        for (i, name) in all.iter().enumerate() {
            assert_eq!(
                gone.contains(name),
                gone_idx.contains(&i),
                "{}",
                String::from_utf8_lossy(name)
            );
        }
        // The filter is what saves the searches: few kept names get past it.
        let searched = all
            .iter()
            .filter(|n| {
                let (word, bit) = super::filter_bit(n);
                gone.filter[word] & bit != 0
            })
            .count();
        assert!(
            searched < gone_idx.len() + all.len() / 20,
            "{searched} of {} names searched",
            all.len()
        );
        assert!(!Gone::new(Vec::new()).contains(b"key-0000001"));
    }
}

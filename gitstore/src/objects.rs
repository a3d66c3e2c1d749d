//! Reading single objects: blobs, blob sizes and commit metadata, plus the blob id of bytes
//! that are not written. Tree reading lives in `trees.rs`.

use gix::objs::Kind;
use gix::prelude::{Find, Header};
use gix::ObjectId;

use crate::packed::{PackedReader, Position};
use crate::GitStore;
use std::cell::RefCell;

/// Why an object could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ObjectReadError {
    #[error("object {id}: read failed")]
    Read {
        id: ObjectId,
        #[source]
        source: gix::Error,
    },
    #[error("object {id}: not found")]
    Missing { id: ObjectId },
    #[error("object {id}: is a {actual}, expected a {expected}")]
    WrongKind {
        id: ObjectId,
        expected: Kind,
        actual: Kind,
    },
    #[error("object {id}: could not decode the {kind}")]
    Decode {
        id: ObjectId,
        kind: Kind,
        #[source]
        source: gix::Error,
    },
}

/// Hashing refused the input: SHA-1 collision detection tripped (a crafted collision attack).
#[derive(Debug, thiserror::Error)]
#[error("could not hash a {kind} of {len} bytes")]
pub struct HashError {
    pub kind: Kind,
    pub len: usize,
    #[source]
    pub source: gix::Error,
}

/// What kvgit needs to know about a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    pub id: ObjectId,
    /// The root tree the commit records.
    pub tree: ObjectId,
    /// In order; the first parent is the branch's previous tip.
    pub parents: Vec<ObjectId>,
    pub author_name: String,
    pub author_email: String,
    /// Author time, unix seconds (kvgit writes author = committer).
    pub time: i64,
    /// Committer time, unix seconds: the order of history walks.
    pub commit_time: i64,
    /// The full message (summary, blank line, body and `Kvgit-*` trailers), lossily UTF-8.
    pub message: String,
}

impl CommitInfo {
    /// The first line of the message.
    pub fn summary(&self) -> &str {
        self.message.lines().next().unwrap_or("")
    }
}

/// The id `git hash-object` gives `data` of `kind`. The header `<kind> <len>\0` is fed in
/// parts: gix's own goes through a growable buffer per object, 2% of a first export that
/// hashes 100k small values.
pub(crate) fn hash(kind: Kind, data: &[u8]) -> Result<ObjectId, HashError> {
    let mut hasher = gix::hash::hasher(gix::hash::Kind::Sha1);
    let mut len = itoa::Buffer::new();
    for part in [
        kind.as_bytes(),
        b" ",
        len.format(data.len()).as_bytes(),
        b"\0",
        data,
    ] {
        hasher.update(part);
    }
    hasher.try_finalize().map_err(|source| HashError {
        kind,
        len: data.len(),
        source,
    })
}

/// Reads object `id` into `buf`, which must hold an object of kind `expected`.
pub(crate) fn read_kind<'b>(
    repo: &gix::Repository,
    id: ObjectId,
    expected: Kind,
    buf: &'b mut Vec<u8>,
) -> Result<&'b [u8], ObjectReadError> {
    if expected == Kind::Tree && id.is_empty_tree() {
        // gix knows the empty tree without storing it; so does git.
        buf.clear();
        return Ok(&buf[..]);
    }
    let data = repo
        .objects
        .try_find(&id, buf)
        .map_err(|source| ObjectReadError::Read { id, source })?
        .ok_or(ObjectReadError::Missing { id })?;
    if data.kind != expected {
        return Err(ObjectReadError::WrongKind {
            id,
            expected,
            actual: data.kind,
        });
    }
    Ok(data.data)
}

/// Parses the commit `id`.
pub(crate) fn commit_info(
    repo: &gix::Repository,
    id: ObjectId,
    buf: &mut Vec<u8>,
) -> Result<CommitInfo, ObjectReadError> {
    let data = read_kind(repo, id, Kind::Commit, buf)?;
    let decode = |source| ObjectReadError::Decode {
        id,
        kind: Kind::Commit,
        source,
    };
    let commit = gix::objs::CommitRef::from_bytes(data, gix::hash::Kind::Sha1).map_err(decode)?;
    let author = commit.author().map_err(decode)?.trim();
    let committer = commit.committer().map_err(decode)?;
    Ok(CommitInfo {
        id,
        tree: commit.tree(),
        parents: commit.parents().collect(),
        author_name: author.name.to_string(),
        author_email: author.email.to_string(),
        time: author.seconds(),
        commit_time: committer.seconds(),
        message: commit.message.to_string(),
    })
}

impl GitStore {
    /// The content of blob `id`.
    pub fn read_blob(&self, id: ObjectId) -> Result<Vec<u8>, ObjectReadError> {
        let mut buf = Vec::new();
        read_kind(&self.repo(), id, Kind::Blob, &mut buf)?;
        Ok(buf)
    }

    /// A reader for many blobs in a row: one repository handle for all of them instead of
    /// one per call, which dominates reading 100k small values. Packed values, whole or
    /// stored as chains of deltas (packs git made: a fetch, a repack), are read from the
    /// packs directly (`packed.rs`, which keeps the bases it resolved). What is left to gix
    /// (a pack that came after the reader opened, say) goes through a delta-base cache of
    /// its own, since without one every read inflates its whole chain again. Neither is an
    /// object cache: each blob is read once, and caching it would cost a copy per read.
    pub fn blob_reader(&self) -> BlobReader {
        let mut repo = self.repo();
        repo.objects.set_pack_cache(|| {
            Box::new(gix::odb::pack::cache::lru::MemoryCappedHashmap::new(
                DELTA_BASE_CACHE_BYTES,
            ))
        });
        BlobReader {
            repo,
            packed: RefCell::new(None),
        }
    }

    /// The size of blob `id` without reading its content.
    pub fn blob_size(&self, id: ObjectId) -> Result<u64, ObjectReadError> {
        blob_size(&self.repo(), id)
    }

    /// The blob id of `bytes`, computed without writing anything.
    pub fn hash_blob(&self, bytes: &[u8]) -> Result<ObjectId, HashError> {
        hash(Kind::Blob, bytes)
    }

    /// The id of the empty tree (the tree of an empty directory).
    pub fn empty_tree_id() -> ObjectId {
        ObjectId::empty_tree(gix::hash::Kind::Sha1)
    }

    /// Whether `id` is the empty tree.
    pub fn is_empty_tree(&self, id: ObjectId) -> bool {
        id == Self::empty_tree_id()
    }

    /// Whether the object exists in the store.
    pub fn has_object(&self, id: ObjectId) -> bool {
        self.repo().has_object(id)
    }

    /// Metadata of commit `id`.
    pub fn commit_info(&self, id: ObjectId) -> Result<CommitInfo, ObjectReadError> {
        commit_info(&self.repo(), id, &mut Vec::new())
    }
}

/// The delta-base cache of one [`BlobReader`]: git's own default for a process (96 MiB)
/// would be most of kvgit's memory budget.
const DELTA_BASE_CACHE_BYTES: usize = 32 << 20;

/// A blob and where [`BlobReader::locate`] found it.
#[derive(Debug, Clone, Copy)]
pub struct Located {
    id: ObjectId,
    /// `None`: not in a pack the reader opened (loose, or missing): gix is asked.
    at: Option<Position>,
}

impl Located {
    pub fn id(&self) -> ObjectId {
        self.id
    }
}

/// Reads many blobs through one repository handle; see [`GitStore::blob_reader`].
pub struct BlobReader {
    repo: gix::Repository,
    /// Opened on first use (a reader of one value never needs it).
    packed: RefCell<Option<PackedReader>>,
}

impl BlobReader {
    /// The content of blob `id`, read from its pack entry (`packed.rs`: a fifth less CPU
    /// than through gix for 100k values of kvgit's own packs, a quarter less for an apply
    /// from a pack git made), or through gix when it is not in a pack opened.
    pub fn read(&self, id: ObjectId) -> Result<Vec<u8>, ObjectReadError> {
        let mut buf = Vec::new();
        if self
            .with_packed(|p| p.read(&id, Kind::Blob, &mut buf))
            .is_some()
        {
            return Ok(buf);
        }
        read_kind(&self.repo, id, Kind::Blob, &mut buf)?;
        Ok(buf)
    }

    /// The size of blob `id` from its header, without inflating it.
    pub fn size(&self, id: ObjectId) -> Result<u64, ObjectReadError> {
        match self.with_packed(|p| p.kind_and_size(&id)) {
            Some((Kind::Blob, size)) => Ok(size),
            // Not in a pack opened, or not a blob: gix answers, and names what is wrong.
            _ => blob_size(&self.repo, id),
        }
    }

    /// Finds many blobs ahead of sizing or reading them ([`Self::sizes_of`],
    /// [`Self::read_many`]): cheaper than one lookup at a time when there are many (the
    /// pack indices are read in id order, see `packed.rs`). Only this reader can use them.
    pub fn locate(&self, ids: &[ObjectId]) -> Vec<Located> {
        let mut located: Vec<Located> = ids.iter().map(|&id| Located { id, at: None }).collect();
        self.with_packed(|p| p.locate(ids, |i, at| located[i].at = Some(at)));
        located
    }

    /// [`Self::size`] of many blobs [`Self::locate`] found, in the order given (worked out
    /// in pack order, see `PackedReader::kinds_and_sizes_at`).
    pub fn sizes_of(&self, blobs: &[Located]) -> Vec<Result<u64, ObjectReadError>> {
        let at: Vec<_> = blobs.iter().map(|b| b.at).collect();
        let found = self.with_packed(|p| p.kinds_and_sizes_at(&at));
        blobs
            .iter()
            .zip(found)
            .map(|(blob, found)| match found {
                Some((Kind::Blob, size)) => Ok(size),
                // Not in a pack opened, or not a blob: gix answers, and names what is wrong.
                _ => blob_size(&self.repo, blob.id),
            })
            .collect()
    }

    /// [`Self::read`] of many blobs [`Self::locate`] found, in the order given (read in pack
    /// order, see `PackedReader::read_many_at`).
    pub fn read_many(&self, blobs: &[Located]) -> Vec<Result<Vec<u8>, ObjectReadError>> {
        let at: Vec<_> = blobs.iter().map(|b| b.at).collect();
        let found = self.with_packed(|p| p.read_many_at(&at, Kind::Blob));
        blobs
            .iter()
            .zip(found)
            .map(|(blob, found)| match found {
                Some(value) => Ok(value),
                None => self.read(blob.id),
            })
            .collect()
    }

    fn with_packed<T>(&self, f: impl FnOnce(&mut PackedReader) -> T) -> T {
        let mut packed = self.packed.borrow_mut();
        f(packed.get_or_insert_with(|| {
            PackedReader::open(
                self.repo.objects.store_ref().path(),
                self.repo.object_hash(),
            )
        }))
    }
}

pub(crate) fn blob_size(repo: &gix::Repository, id: ObjectId) -> Result<u64, ObjectReadError> {
    let header = repo
        .objects
        .try_header(&id)
        .map_err(|source| ObjectReadError::Read { id, source })?
        .ok_or(ObjectReadError::Missing { id })?;
    if header.kind() != Kind::Blob {
        return Err(ObjectReadError::WrongKind {
            id,
            expected: Kind::Blob,
            actual: header.kind(),
        });
    }
    Ok(header.size())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_gix_for_every_kind_and_length_of_digits() {
        for kind in [Kind::Blob, Kind::Tree, Kind::Commit, Kind::Tag] {
            for len in [0, 1, 9, 10, 99, 100, 65_535, 1_000_000] {
                let data = vec![b'x'; len];
                assert_eq!(
                    hash(kind, &data).expect("hash"),
                    gix::objs::compute_hash(gix::hash::Kind::Sha1, kind, &data).expect("gix"),
                    "{kind} of {len} bytes"
                );
            }
        }
    }
}

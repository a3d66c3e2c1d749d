//! Objects a pass makes one after another (areas' trees and values, root trees, commits),
//! each readable by the next, written together at the end: one pack instead of a file each.

use std::borrow::Cow;

use gix::objs::Kind;
use gix::prelude::Write as _;
use gix::ObjectId;

use crate::commit::{Author, CommitWriteError};
use crate::pack::{write_pack, NewObject, PackWriteError};
use crate::write::{write_root, BlobContent, Sink, WritePlanError};
use crate::GitStore;
use sync_core::tree::DirPlan;

/// From this many objects a batch is written as a pack: below it, the loose files cost
/// less than a pack and its index, each written and synced.
const PACK_FROM: usize = 12;

/// Objects made but not written yet; [`GitStore::write_batch`] writes them.
#[derive(Default)]
pub struct ObjectBatch {
    objects: Vec<(ObjectId, Kind, Vec<u8>)>,
    /// Where each object is in `objects`.
    index: gix::hashtable::HashMap<ObjectId, usize>,
}

/// Where [`GitStore::write_batch`] puts a batch's commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitsGo {
    /// Loose files: the next commit on the branch reads its parent, and gix finds an object
    /// in a new pack only after rescanning the pack directory.
    Loose,
    /// In the pack with the rest (a pass that nothing in this process reads after).
    WithTheRest,
}

impl ObjectBatch {
    pub fn new() -> ObjectBatch {
        ObjectBatch::default()
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    pub(crate) fn get(&self, id: &ObjectId) -> Option<(Kind, &[u8])> {
        let (_, kind, data) = &self.objects[*self.index.get(id)?];
        Some((*kind, &data[..]))
    }

    pub(crate) fn push(&mut self, id: ObjectId, kind: Kind, data: Vec<u8>) {
        if !self.index.contains_key(&id) {
            self.index.insert(id, self.objects.len());
            self.objects.push((id, kind, data));
        }
    }

    /// Takes `other`'s objects into this batch.
    pub fn append(&mut self, other: ObjectBatch) {
        for (id, kind, data) in other.objects {
            self.push(id, kind, data);
        }
    }
}

impl<'p> Sink<'p> for ObjectBatch {
    fn put(&mut self, kind: Kind, id: ObjectId, data: Cow<'p, [u8]>) -> Result<(), gix::Error> {
        // Owned only when new: a plan repeats the bytes of identical values.
        if !self.index.contains_key(&id) {
            self.push(id, kind, data.into_owned());
        }
        Ok(())
    }
}

/// Why a batch could not be written.
#[derive(Debug, thiserror::Error)]
pub enum BatchWriteError {
    #[error(transparent)]
    Pack(#[from] PackWriteError),
    #[error("{kind} {id}: could not write it")]
    Loose {
        id: ObjectId,
        kind: Kind,
        #[source]
        source: gix::Error,
    },
}

impl GitStore {
    /// [`GitStore::write_plan`] into `batch`: the plan's new trees and blobs, written with the
    /// rest of the batch.
    pub fn write_plan_in<V: BlobContent>(
        &self,
        batch: &mut ObjectBatch,
        plan: &DirPlan<ObjectId, V>,
    ) -> Result<ObjectId, WritePlanError> {
        write_root(plan, self, batch)
    }

    /// [`GitStore::write_commit`] into `batch`: its tree and parents may be the batch's own.
    pub fn commit_in(
        &self,
        batch: &mut ObjectBatch,
        tree: ObjectId,
        parents: &[ObjectId],
        message: &str,
        author: &Author,
        unix_secs: i64,
    ) -> Result<ObjectId, CommitWriteError> {
        let repo = self.repo();
        self.check_inputs(&repo, tree, parents, |id| batch.get(id).is_some())?;
        let (id, data) =
            self.encode_commit(tree, parents, message, author, unix_secs, unix_secs)?;
        // gix knows the empty tree without storing it; git needs the object.
        if tree.is_empty_tree() && !repo.objects.exists_without_refresh(&tree) {
            batch.push(tree, Kind::Tree, Vec::new());
        }
        batch.push(id, Kind::Commit, data);
        Ok(id)
    }

    /// Writes the batch: as one pack from [`PACK_FROM`] objects, else loose; its commits go
    /// where `commits` says. Nothing refers to the objects before the caller moves a ref to
    /// them.
    pub fn write_batch(
        &self,
        batch: ObjectBatch,
        commits: CommitsGo,
    ) -> Result<(), BatchWriteError> {
        let repo = self.repo();
        let packed = batch.len() >= PACK_FROM;
        let loose = |kind: Kind| !packed || (kind == Kind::Commit && commits == CommitsGo::Loose);
        let mut objects: Vec<NewObject<'_>> = Vec::new();
        for (id, kind, data) in &batch.objects {
            if !loose(*kind) {
                objects.push(NewObject {
                    id: *id,
                    kind: *kind,
                    data: Cow::Borrowed(&data[..]),
                });
                continue;
            }
            if *kind == Kind::Tree && repo.objects.exists_without_refresh(id) {
                continue;
            }
            repo.objects
                .write_buf_with_known_id(*kind, data, *id)
                .map_err(|source| BatchWriteError::Loose {
                    id: *id,
                    kind: *kind,
                    source,
                })?;
        }
        if objects.is_empty() {
            return Ok(());
        }
        // Trees first, then the rest (as git orders packs): a tree read later maps pages of
        // trees only.
        objects.sort_by_key(|obj| obj.kind != Kind::Tree);
        let dir = repo.objects.store_ref().path().join("pack");
        write_pack(&dir, &objects)?;
        // Read back through this handle without rescanning the pack directory.
        self.recent.insert(
            objects
                .iter()
                .filter(|obj| obj.kind == Kind::Tree)
                .map(|obj| (obj.id, &obj.data[..])),
        );
        Ok(())
    }
}

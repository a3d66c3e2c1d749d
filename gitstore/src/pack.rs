//! The bulk path: every new object of a plan goes into one pack (+ index) in `objects/pack`
//! instead of one loose file each; objects are compressed on all cores, hashed only once.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::sync_channel;

use gix::objs::Kind;
use gix::zlib::stream::deflate::{Compress, FlushCompress};
use gix::ObjectId;

use crate::known::Known;
use crate::packfile::{entry_bytes, PackWriter};
use crate::write::{write_root, Sink, WritePlanError};
use crate::{GitStore, Plan};

/// Fast zlib: the pack is rewritten by the next `git gc` anyway.
const COMPRESSION: gix::zlib::Compression = gix::zlib::Compression::BEST_SPEED;
/// Objects compressed per unit of work.
const BATCH: usize = 1024;
/// Compression threads at most (bounded by the machine's parallelism).
const MAX_WORKERS: usize = 8;

/// Why a plan could not be written as a pack.
#[derive(Debug, thiserror::Error)]
pub enum PackWriteError {
    #[error(transparent)]
    Plan(#[from] WritePlanError),
    #[error("{count} new objects do not fit one pack")]
    TooManyObjects { count: usize },
    #[error("object {id}: could not compress it")]
    Compress {
        id: ObjectId,
        #[source]
        source: gix::Error,
    },
    #[error("{dir}: could not write the pack")]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One new object for the pack; file contents are borrowed from the plan.
struct NewObject<'p> {
    id: ObjectId,
    kind: Kind,
    data: Cow<'p, [u8]>,
}

/// Collects new objects, skipping duplicates and objects the store already has.
struct PackSink<'p, 'r> {
    repo: &'r gix::Repository,
    /// The store's objects read up front; `None`: ask the object database per object.
    known: Option<Known>,
    seen: gix::hashtable::HashSet,
    objects: Vec<NewObject<'p>>,
}

impl<'p> Sink<'p> for PackSink<'p, '_> {
    fn put(&mut self, kind: Kind, id: ObjectId, data: Cow<'p, [u8]>) -> Result<(), gix::Error> {
        if !self.seen.insert(id) {
            return Ok(());
        }
        let exists = match &self.known {
            Some(known) => known.contains(&id),
            None => self.repo.objects.exists_without_refresh(&id),
        };
        if !exists {
            self.objects.push(NewObject { id, kind, data });
        }
        Ok(())
    }
}

impl GitStore {
    /// Like [`GitStore::write_plan`] (same tree id), but all new objects go into one new pack
    /// and its index: the bulk path for large exports. Identical blobs are stored once, objects
    /// the store already has are not repeated, and the objects are readable through this
    /// handle as soon as the call returns. Each call adds a pack file: small incremental
    /// changes are better written loose (and folded by [`GitStore::repack`]).
    pub fn write_plan_packed(&self, plan: &Plan) -> Result<ObjectId, PackWriteError> {
        let repo = self.repo();
        let objects_dir = repo.objects.store_ref().path().to_owned();
        let mut sink = PackSink {
            repo: &repo,
            known: Known::scan(&objects_dir),
            seen: Default::default(),
            objects: Vec::new(),
        };
        let root = write_root(plan, &mut sink)?;
        let dir = objects_dir.join("pack");
        write_pack(&dir, &sink.objects)?;
        Ok(root)
    }
}

/// Compresses `objects` on worker threads and writes them, in order, as one pack in `dir`.
fn write_pack(dir: &Path, objects: &[NewObject<'_>]) -> Result<(), PackWriteError> {
    if objects.is_empty() {
        return Ok(());
    }
    let count = u32::try_from(objects.len()).map_err(|_| PackWriteError::TooManyObjects {
        count: objects.len(),
    })?;
    let io = |source| PackWriteError::Io {
        dir: dir.to_owned(),
        source,
    };
    let mut pack = PackWriter::create(dir, count).map_err(io)?;
    let batches: Vec<&[NewObject<'_>]> = objects.chunks(BATCH).collect();
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_WORKERS)
        .min(batches.len());
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let (tx, rx) = sync_channel(workers * 2);
        for _ in 0..workers {
            let (tx, next, batches) = (tx.clone(), &next, &batches);
            scope.spawn(move || {
                let mut compressor = Compress::new(COMPRESSION);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(batch) = batches.get(i) else { break };
                    let encoded = encode_batch(&mut compressor, batch).map(|entries| (i, entries));
                    // A closed channel means the writer failed; it reports its own error.
                    if tx.send(encoded).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        for batch in gix::parallel::InOrderIter::from(rx.into_iter()) {
            for (id, entry) in batch? {
                pack.add(id, &entry).map_err(io)?;
            }
        }
        Ok::<_, PackWriteError>(())
    })?;
    let path = pack.publish().map_err(io)?;
    tracing::debug!(objects = count, pack = %path.display(), "wrote pack");
    Ok(())
}

/// Pack entries (id, header + zlib stream) for one batch.
fn encode_batch(
    compressor: &mut Compress,
    batch: &[NewObject<'_>],
) -> Result<Vec<(ObjectId, Vec<u8>)>, PackWriteError> {
    batch
        .iter()
        .map(|obj| {
            let compressed = deflate(compressor, &obj.data)
                .map_err(|source| PackWriteError::Compress { id: obj.id, source })?;
            Ok((
                obj.id,
                entry_bytes(obj.kind, obj.data.len() as u64, &compressed),
            ))
        })
        .collect()
}

/// zlib-compresses `input` with a reused compressor (a new one per object costs an allocation),
/// straight into the output vector.
fn deflate(compressor: &mut Compress, mut input: &[u8]) -> Result<Vec<u8>, gix::Error> {
    compressor.reset();
    // Stored blocks cost 5 bytes per 16 KiB, zlib adds 6: one pass nearly always suffices.
    let mut out = Vec::with_capacity(input.len() + input.len() / 1024 + 64);
    loop {
        if out.len() == out.capacity() {
            out.reserve(4096);
        }
        let start = out.len();
        out.resize(out.capacity(), 0);
        let (in_before, out_before) = (compressor.total_in(), compressor.total_out());
        let status = compressor.compress(input, &mut out[start..], FlushCompress::Finish)?;
        out.truncate(start + (compressor.total_out() - out_before) as usize);
        input = &input[(compressor.total_in() - in_before) as usize..];
        if matches!(status, gix::zlib::Status::StreamEnd) {
            return Ok(out);
        }
    }
}

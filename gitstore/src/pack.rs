//! The bulk path: every new object of a plan goes into one pack (+ index) in `objects/pack`
//! instead of one loose file each; objects are compressed on all cores, hashed only once.
//!
//! Objects the store may already have are written again rather than looked up: checking each
//! new object against every pack index cost more than the rest of a large commit (most of
//! its objects are new anyway), and the next geometric repack keeps one copy.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::OnceLock;

use gix::objs::Kind;
use gix::zlib::stream::deflate::{Compress, FlushCompress};
use gix::ObjectId;

use crate::packfile::{entry_header, PackWriter};
use crate::write::{write_dir, write_root, BlobContent, Sink, StoredBlob, WritePlanError};
use crate::GitStore;
use sync_core::tree::{DirPlan, EntryKind, PlanEntry};

/// Fast zlib: the pack is rewritten by the next `git gc` anyway.
const COMPRESSION: gix::zlib::Compression = gix::zlib::Compression::BEST_SPEED;
/// Objects compressed per unit of work.
const BATCH: usize = 1024;
/// Compression threads at most (bounded by the machine's parallelism).
const MAX_WORKERS: usize = 8;
/// Objects smaller than this go into the pack as stored (uncompressed) zlib blocks: setting
/// up a deflate stream clears a 128 KiB hash table, which for a value of a few hundred
/// bytes costs far more than compressing it saves.
const STORE_BELOW: usize = 1024;
/// A pack of at most this many objects (one commit's, not a bulk export's) stores every
/// object: its trees of a few KiB would save a third of their size, at a deflate setup each
/// (1 of the ~6 ms a one-shot export of 4 areas spends after etcd answers), and the next
/// geometric repack compresses them anyway.
const STORE_ALL_UP_TO: usize = BATCH;
/// A commit's pack whose trees come to at most this stores them too, whatever the object
/// count: a tree is mostly object ids, which do not compress (deflate saves a third), and
/// deflating the few large directories each commit rewrites took 7% of `serve`'s CPU at a
/// full-speed ingest. A repack deltas a rewritten tree against its next version, compressing
/// the delta. Past this (a resync rewriting a large area) the trees are compressed: there
/// the disk saved is large and the CPU a one-off.
const STORE_TREES_UP_TO: usize = 8 << 20;

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
pub(crate) struct NewObject<'p> {
    pub(crate) id: ObjectId,
    pub(crate) kind: Kind,
    pub(crate) data: Cow<'p, [u8]>,
}

/// Collects the plan's objects, each once.
#[derive(Default)]
struct PackSink<'p> {
    seen: gix::hashtable::HashSet,
    objects: Vec<NewObject<'p>>,
}

impl<'p> Sink<'p> for PackSink<'p> {
    fn put(&mut self, kind: Kind, id: ObjectId, data: Cow<'p, [u8]>) -> Result<(), gix::Error> {
        if self.seen.insert(id) {
            self.objects.push(NewObject { id, kind, data });
        }
        Ok(())
    }
}

impl GitStore {
    /// Like [`GitStore::write_plan`] (same tree id), but the plan's objects go into one new
    /// pack and its index: the bulk path for large exports. Identical objects are stored once
    /// per pack; one the store already had is stored again, until the next geometric repack
    /// keeps one copy. The objects are readable through this handle as soon as the call
    /// returns. Each call adds a pack file: small incremental changes are better written
    /// loose (and folded by [`GitStore::repack_geometric`]).
    pub fn write_plan_packed<V: BlobContent>(
        &self,
        plan: &DirPlan<ObjectId, V>,
    ) -> Result<ObjectId, PackWriteError> {
        let repo = self.repo();
        let objects_dir = repo.objects.store_ref().path().to_owned();
        let mut sink = PackSink::default();
        let root = write_root(plan, self, &mut sink)?;
        // Trees first, then blobs (as git orders packs): reading a tree later then maps
        // pages of trees only, not the blobs around it, which keeps resident memory down.
        sink.objects.sort_by_key(|obj| obj.kind != Kind::Tree);
        let dir = objects_dir.join("pack");
        write_pack(&dir, &sink.objects)?;
        self.recent.insert(
            sink.objects
                .iter()
                .filter(|obj| obj.kind == Kind::Tree)
                .map(|obj| (obj.id, &obj.data[..])),
        );
        Ok(root)
    }
}

/// Writes one very large tree in bounded memory: blobs as the caller reads them, then the
/// trees a batch of root entries at a time, all into one pack whose object count is only
/// known at the end. Objects are queued up to `queue_bytes` (what it holds in memory) and
/// compressed on all cores. Nothing refers to these objects until the caller commits the
/// returned root tree; none is readable before [`BulkWriter::finish`].
pub struct BulkWriter<'g> {
    git: &'g GitStore,
    /// Every object of the pack so far: a pack holds each object once.
    seen: gix::hashtable::HashSet,
    queued: Vec<NewObject<'static>>,
    queued_bytes: usize,
    queue_bytes: usize,
    pack: Option<PackWriter>,
    root: DirPlan<ObjectId, StoredBlob>,
}

impl GitStore {
    pub fn bulk_writer(&self, queue_bytes: usize) -> BulkWriter<'_> {
        BulkWriter {
            git: self,
            seen: Default::default(),
            queued: Vec::new(),
            queued_bytes: 0,
            queue_bytes,
            pack: None,
            root: DirPlan::default(),
        }
    }
}

impl BulkWriter<'_> {
    /// Queues a blob for the next pack and returns its id.
    pub fn blob(&mut self, bytes: Vec<u8>) -> Result<ObjectId, PackWriteError> {
        let id =
            crate::objects::hash(Kind::Blob, &bytes).map_err(|source| WritePlanError::Hash {
                path: "(value)".into(),
                source,
            })?;
        self.queue(Kind::Blob, id, Cow::Owned(bytes))?;
        Ok(id)
    }

    /// Writes every tree below the root entries of `plan` (its files are stored blobs) and
    /// keeps those entries for the root, which [`BulkWriter::finish`] writes.
    pub fn add_root_entries(
        &mut self,
        plan: DirPlan<ObjectId, StoredBlob>,
    ) -> Result<(), PackWriteError> {
        for (name, entry) in plan.entries {
            let entry = match entry {
                PlanEntry::Dir(sub) => {
                    let mut sink = PackSink::default();
                    let mut dir = vec![name.as_str()];
                    let Some(id) = write_dir(&sub, self.git, &mut sink, &mut dir)? else {
                        continue;
                    };
                    self.queue_all(sink)?;
                    PlanEntry::Existing {
                        kind: EntryKind::Dir,
                        id,
                    }
                }
                other => other,
            };
            self.root.entries.push((name, entry));
        }
        Ok(())
    }

    /// Writes the root tree and the last pack: the tree id, or `None` when no entry was added.
    pub fn finish(mut self) -> Result<Option<ObjectId>, PackWriteError> {
        let root = if self.root.is_empty() {
            None
        } else {
            let root = std::mem::take(&mut self.root);
            let mut sink = PackSink::default();
            let id = write_root(&root, self.git, &mut sink)?;
            self.queue_all(sink)?;
            Some(id)
        };
        self.flush()?;
        if let Some(pack) = self.pack.take() {
            let dir = self.pack_dir();
            let path = pack.publish().map_err(io_error(&dir))?;
            tracing::debug!(objects = self.seen.len(), pack = %path.display(), "wrote pack");
        }
        Ok(root)
    }

    /// Queues the trees a plan's walk wrote into `sink` (its files are stored blobs).
    fn queue_all(&mut self, sink: PackSink<'_>) -> Result<(), PackWriteError> {
        for obj in sink.objects {
            self.queue(obj.kind, obj.id, Cow::Owned(obj.data.into_owned()))?;
        }
        Ok(())
    }

    fn queue(
        &mut self,
        kind: Kind,
        id: ObjectId,
        data: Cow<'static, [u8]>,
    ) -> Result<(), PackWriteError> {
        if !self.seen.insert(id) {
            return Ok(());
        }
        self.queued_bytes += data.len();
        self.queued.push(NewObject { id, kind, data });
        if self.queued_bytes >= self.queue_bytes {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), PackWriteError> {
        let queued = std::mem::take(&mut self.queued);
        self.queued_bytes = 0;
        if queued.is_empty() {
            return Ok(());
        }
        let dir = self.pack_dir();
        let pack = match &mut self.pack {
            Some(pack) => pack,
            empty => empty.insert(PackWriter::create(&dir, None).map_err(io_error(&dir))?),
        };
        append(pack, &dir, &queued, Stored::SMALL)
    }

    fn pack_dir(&self) -> PathBuf {
        self.git.repo().objects.store_ref().path().join("pack")
    }
}

/// Compresses `objects` on worker threads and writes them, in order, as one pack in `dir`.
pub(crate) fn write_pack(dir: &Path, objects: &[NewObject<'_>]) -> Result<(), PackWriteError> {
    if objects.is_empty() {
        return Ok(());
    }
    let count = u32::try_from(objects.len()).map_err(|_| PackWriteError::TooManyObjects {
        count: objects.len(),
    })?;
    let mut pack = PackWriter::create(dir, Some(count)).map_err(io_error(dir))?;
    // A pack written whole knows its size: a small one is a commit's.
    let tree_bytes: usize = objects
        .iter()
        .filter(|obj| obj.kind == Kind::Tree)
        .map(|obj| obj.data.len())
        .sum();
    let store = Stored {
        below: if objects.len() <= STORE_ALL_UP_TO {
            usize::MAX
        } else {
            STORE_BELOW
        },
        trees: tree_bytes <= STORE_TREES_UP_TO,
    };
    append(&mut pack, dir, objects, store)?;
    let path = pack.publish().map_err(io_error(dir))?;
    tracing::debug!(objects = count, pack = %path.display(), "wrote pack");
    Ok(())
}

fn io_error(dir: &Path) -> impl Fn(std::io::Error) -> PackWriteError + '_ {
    move |source| PackWriteError::Io {
        dir: dir.to_owned(),
        source,
    }
}

/// Which objects go into a pack as stored zlib blocks instead of compressed.
#[derive(Clone, Copy)]
struct Stored {
    /// Every object smaller than this.
    below: usize,
    /// Every tree.
    trees: bool,
}

impl Stored {
    /// As the bulk path stores: small objects only.
    const SMALL: Stored = Stored {
        below: STORE_BELOW,
        trees: false,
    };

    fn stores(self, obj: &NewObject<'_>) -> bool {
        obj.data.len() < self.below || (self.trees && obj.kind == Kind::Tree)
    }
}

/// The machine's parallelism, read once: the standard library reads the cgroup's CPU quota
/// from three files on each call, and every commit's pack asked.
fn parallelism() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Compresses `objects` on worker threads and appends them, in order, to `pack`.
fn append(
    pack: &mut PackWriter,
    dir: &Path,
    objects: &[NewObject<'_>],
    store: Stored,
) -> Result<(), PackWriteError> {
    let batches: Vec<&[NewObject<'_>]> = objects.chunks(BATCH).collect();
    if let [only] = batches[..] {
        // One batch: no thread to start and wait for.
        let mut compressor = Compress::new(COMPRESSION);
        for (id, entry) in encode_batch(&mut compressor, only, store)? {
            pack.add(id, &entry).map_err(io_error(dir))?;
        }
        return Ok(());
    }
    let workers = parallelism().clamp(1, MAX_WORKERS).min(batches.len());
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
                    let encoded =
                        encode_batch(&mut compressor, batch, store).map(|entries| (i, entries));
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
                pack.add(id, &entry).map_err(io_error(dir))?;
            }
        }
        Ok::<_, PackWriteError>(())
    })
}

/// Pack entries (id, header + zlib stream) for one batch, each built in one buffer: the
/// values of a first export pass through here once, and a copy each was 6% of its CPU.
fn encode_batch(
    compressor: &mut Compress,
    batch: &[NewObject<'_>],
    store: Stored,
) -> Result<Vec<(ObjectId, Vec<u8>)>, PackWriteError> {
    batch
        .iter()
        .map(|obj| {
            // The entry header takes at most 10 bytes for any size under 2^64.
            let mut entry = Vec::with_capacity(10 + zlib_bound(obj.data.len()));
            entry_header(obj.kind, obj.data.len() as u64, &mut entry);
            if store.stores(obj) {
                stored(&obj.data, &mut entry);
            } else {
                deflate(compressor, &obj.data, &mut entry)
                    .map_err(|source| PackWriteError::Compress { id: obj.id, source })?;
            }
            Ok((obj.id, entry))
        })
        .collect()
}

/// Room for the zlib stream of `len` bytes, stored or deflated, in one allocation nearly
/// always: stored blocks cost 5 bytes per 64 KiB and deflate's 5 per 16 KiB on data that
/// does not compress, and zlib adds 6 (its header and checksum).
fn zlib_bound(len: usize) -> usize {
    len + len / 1024 + 64
}

/// Appends `input` to `out` as a zlib stream of stored blocks (RFC 1950/1951): what any
/// inflater reads back, without a deflate stream's setup.
fn stored(input: &[u8], out: &mut Vec<u8>) {
    const MAX_BLOCK: usize = u16::MAX as usize;
    out.reserve(zlib_bound(input.len()));
    // CMF: deflate with a 32 KiB window; FLG: no dictionary, check bits making it % 31 == 0.
    out.extend_from_slice(&[0x78, 0x01]);
    let mut chunks = input.chunks(MAX_BLOCK).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let len = chunk.len() as u16;
        out.push(u8::from(last));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&adler2::adler32_slice(input).to_be_bytes());
}

/// zlib-compresses `input` with a reused compressor (a new one per object costs an
/// allocation), appending the stream to `out`.
fn deflate(
    compressor: &mut Compress,
    mut input: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), gix::Error> {
    compressor.reset();
    out.reserve(zlib_bound(input.len()));
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
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::stored;

    /// What an inflater reads back from `stream`, which must end exactly there.
    fn inflate(stream: &[u8], len: usize) -> Vec<u8> {
        let mut out = vec![0; len + 16];
        let (status, used, written) = gix::zlib::Inflate::default()
            .once(stream, &mut out)
            .expect("a valid zlib stream");
        assert_eq!(status, gix::zlib::Status::StreamEnd);
        assert_eq!(used, stream.len(), "the stream ends with its checksum");
        out.truncate(written);
        out
    }

    #[test]
    fn stored_streams_inflate_to_their_input_at_every_block_boundary() {
        for len in [0, 1, 200, 1023, 65_535, 65_536, 140_000] {
            let input: Vec<u8> = (0..len).map(|i| (i * 7 + i / 13) as u8).collect();
            let mut stream = Vec::new();
            stored(&input, &mut stream);
            assert_eq!(inflate(&stream, len), input, "{len} bytes");
        }
    }
}

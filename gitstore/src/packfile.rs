//! The pack format written in one pass: a v2 pack of whole objects and its v2 index, built from
//! ids and CRCs already known (nothing is inflated or hashed twice), published index last.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use gix::odb::pack::data;
use gix::ObjectId;
use sha1::Digest as _;

/// The SHA-1 of a pack's or an index's bytes, their trailing checksum. Plain SHA-1, not the
/// collision-detecting one that names objects: a checksum guards against corruption, and
/// the plain one costs a third as much (it hashed every byte of every pack at ingest).
#[derive(Default)]
struct Checksum(sha1::Sha1);

impl Checksum {
    fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finalize(self) -> ObjectId {
        ObjectId::from_bytes_or_panic(&self.0.finalize())
    }
}

/// Writes through to `inner` and checksums what it writes.
struct HashingWriter<W> {
    inner: W,
    hash: Checksum,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Where one object sits in the pack, for the index.
pub(crate) struct IndexEntry {
    pub id: ObjectId,
    pub crc32: u32,
    pub offset: u64,
}

/// One object's pack entry header, appended to `out`; its zlib stream follows it there.
pub(crate) fn entry_header(kind: gix::objs::Kind, size: u64, out: &mut Vec<u8>) {
    use gix::objs::Kind;
    let header = match kind {
        Kind::Blob => data::entry::Header::Blob,
        Kind::Tree => data::entry::Header::Tree,
        Kind::Commit => data::entry::Header::Commit,
        Kind::Tag => data::entry::Header::Tag,
    };
    header
        .write_to(size, out)
        .expect("writing to a Vec cannot fail");
}

/// A pack being written to a temporary file in the pack directory; removed unless published.
pub(crate) struct PackWriter {
    dir: PathBuf,
    tmp_pack: PathBuf,
    out: BufWriter<File>,
    /// The pack's checksum so far; `None` while the object count is unknown, in which case
    /// `publish` writes the count into the header and hashes the file once, from disk.
    hash: Option<Checksum>,
    offset: u64,
    entries: Vec<IndexEntry>,
}

impl PackWriter {
    /// A pack of exactly `count` objects, or (`None`) of as many as are added: for a writer
    /// that streams objects it cannot count in advance without holding them.
    pub(crate) fn create(dir: &Path, count: Option<u32>) -> std::io::Result<PackWriter> {
        let tmp_pack = temp_path(dir, "pack");
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp_pack)?;
        let mut writer = PackWriter {
            dir: dir.to_owned(),
            tmp_pack,
            out: BufWriter::with_capacity(1 << 20, file),
            hash: count.map(|_| Checksum::default()),
            offset: 0,
            entries: Vec::with_capacity(count.unwrap_or(0) as usize),
        };
        let header = data::header::encode(data::Version::V2, count.unwrap_or(0));
        writer.write(&header)?;
        Ok(writer)
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        if let Some(hash) = &mut self.hash {
            hash.update(bytes);
        }
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Appends one entry ([`entry_header`] and the zlib stream).
    pub(crate) fn add(&mut self, id: ObjectId, entry: &[u8]) -> std::io::Result<()> {
        let offset = self.offset;
        self.write(entry)?;
        self.entries.push(IndexEntry {
            id,
            crc32: crc32fast::hash(entry),
            offset,
        });
        Ok(())
    }

    /// Writes the trailer and the index, syncs both (one fsync per pack, not per object) and
    /// moves them into place; returns the pack's path.
    pub(crate) fn publish(mut self) -> std::io::Result<PathBuf> {
        self.out.flush()?;
        let checksum = match self.hash.take() {
            Some(hash) => hash.finalize(),
            None => self.count_and_hash()?,
        };
        let file = self.out.get_mut();
        file.write_all(checksum.as_bytes())?;
        file.sync_data()?;

        let tmp_idx = temp_path(&self.dir, "idx");
        let written = write_index(&tmp_idx, &mut self.entries, checksum);
        let name = format!("pack-{checksum}");
        let (pack, idx) = (
            self.dir.join(format!("{name}.pack")),
            self.dir.join(format!("{name}.idx")),
        );
        let published = written.and_then(|()| {
            std::fs::rename(&self.tmp_pack, &pack)?;
            std::fs::rename(&tmp_idx, &idx)
        });
        if published.is_err() {
            // Best effort: the error that matters is returned below.
            let _ = std::fs::remove_file(&tmp_idx);
        }
        published.map(|()| pack)
    }

    /// Puts the object count into the header of a pack created without one and returns the
    /// checksum of the whole file, read back (from the page cache, as it was just written).
    fn count_and_hash(&mut self) -> std::io::Result<ObjectId> {
        let count = u32::try_from(self.entries.len())
            .map_err(|_| std::io::Error::other("more objects than a pack holds"))?;
        let file = self.out.get_mut();
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&data::header::encode(data::Version::V2, count))?;
        file.seek(SeekFrom::Start(0))?;
        let mut hash = Checksum::default();
        const CHUNK: usize = 1 << 20;
        let mut buf = vec![0; CHUNK];
        let mut left = self.offset;
        while left > 0 {
            let want = left.min(CHUNK as u64) as usize;
            let n = file.read(&mut buf[..want])?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            hash.update(&buf[..n]);
            left -= n as u64;
        }
        file.seek(SeekFrom::End(0))?;
        Ok(hash.finalize())
    }
}

impl Drop for PackWriter {
    fn drop(&mut self) {
        // After a successful publish the temporary name no longer exists.
        let _ = std::fs::remove_file(&self.tmp_pack);
    }
}

/// Writes a version-2 pack index: fan-out, sorted ids, CRCs, offsets (with the 64-bit table
/// for offsets past 2 GiB), the pack checksum and the index's own checksum.
fn write_index(
    path: &Path,
    entries: &mut [IndexEntry],
    pack_checksum: ObjectId,
) -> std::io::Result<()> {
    // Ids are uniformly spread, so their first eight bytes as a number nearly always decide
    // (a comparison of whole ids was a tenth of a commit's pack writing at ingest).
    let lead = |id: &ObjectId| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&id.as_bytes()[..8]);
        u64::from_be_bytes(b)
    };
    entries.sort_unstable_by(|a, b| lead(&a.id).cmp(&lead(&b.id)).then_with(|| a.id.cmp(&b.id)));
    let file = File::options().write(true).create_new(true).open(path)?;
    // Buffered before the checksum, which then hashes large chunks, not 4 bytes a call.
    let mut out = BufWriter::with_capacity(
        1 << 20,
        HashingWriter {
            inner: file,
            hash: Checksum::default(),
        },
    );
    out.write_all(b"\xfftOc")?;
    out.write_all(&2u32.to_be_bytes())?;
    let mut fanout = [0u32; 256];
    for e in entries.iter() {
        fanout[e.id.as_bytes()[0] as usize] += 1;
    }
    let mut total = 0u32;
    for count in fanout {
        total += count;
        out.write_all(&total.to_be_bytes())?;
    }
    for e in entries.iter() {
        out.write_all(e.id.as_bytes())?;
    }
    for e in entries.iter() {
        out.write_all(&e.crc32.to_be_bytes())?;
    }
    let mut large = Vec::new();
    for e in entries.iter() {
        let small = match u32::try_from(e.offset) {
            Ok(offset) if offset < 0x8000_0000 => offset,
            _ => {
                large.push(e.offset);
                0x8000_0000 | (large.len() as u32 - 1)
            }
        };
        out.write_all(&small.to_be_bytes())?;
    }
    for offset in large {
        out.write_all(&offset.to_be_bytes())?;
    }
    out.write_all(pack_checksum.as_bytes())?;
    let HashingWriter {
        inner: mut file,
        hash,
    } = out.into_inner().map_err(|e| e.into_error())?;
    file.write_all(hash.finalize().as_bytes())?;
    file.sync_data()
}

/// A fresh name in the pack directory that git's own cleanup recognises (`tmp_*`).
fn temp_path(dir: &Path, ext: &str) -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("tmp_kvgit_{}_{seq}.{ext}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gix::odb::pack::index;

    #[test]
    fn index_round_trips_through_gix_including_large_offsets() {
        let dir = std::env::temp_dir().join(format!("kvgit-idx-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("t.idx");
        let _ = std::fs::remove_file(&path);
        let id = |b: u8| ObjectId::from_bytes_or_panic(&[b; 20]);
        let mut entries = vec![
            IndexEntry {
                id: id(0xee),
                crc32: 3,
                offset: 5 << 32,
            },
            IndexEntry {
                id: id(0x01),
                crc32: 1,
                offset: 12,
            },
            IndexEntry {
                id: id(0x7f),
                crc32: 2,
                offset: 0x8000_0000,
            },
        ];
        // Ids alike up to their last byte: ordered by the bytes past the first eight.
        let ending = |b: u8, last: u8| {
            let mut bytes = [b; 20];
            bytes[19] = last;
            ObjectId::from_bytes_or_panic(&bytes)
        };
        for (last, crc, offset) in [(0xff, 5, 50), (0x00, 4, 40)] {
            entries.push(IndexEntry {
                id: ending(0x7f, last),
                crc32: crc,
                offset,
            });
        }
        write_index(&path, &mut entries, id(0x42)).expect("write index");
        let index = index::File::at(&path, gix::hash::Kind::Sha1).expect("gix reads it");
        assert_eq!(index.num_objects(), 5);
        let ids: Vec<ObjectId> = (0..5).map(|i| index.oid_at_index(i).to_owned()).collect();
        let sorted = [
            id(0x01),
            ending(0x7f, 0x00),
            id(0x7f),
            ending(0x7f, 0xff),
            id(0xee),
        ];
        assert_eq!(ids, sorted, "the index lists ids in order");
        for (at, (crc, offset)) in [(1, (4, 40)), (3, (5, 50))] {
            assert_eq!(index.lookup(sorted[at]), Some(at as u32));
            assert_eq!(index.crc32_at_index(at as u32), Some(crc));
            assert_eq!(index.pack_offset_at_index(at as u32), offset);
        }
        let checksum = index
            .verify_checksum(&mut gix::progress::Discard, &Default::default())
            .expect("index checksum");
        assert_eq!(index.index_checksum(), checksum);
        assert_eq!(index.pack_checksum(), id(0x42));
        for (b, crc, offset) in [(0x01, 1, 12), (0x7f, 2, 0x8000_0000), (0xee, 3, 5 << 32)] {
            let at = index.lookup(id(b)).expect("listed");
            assert_eq!(index.crc32_at_index(at), Some(crc));
            assert_eq!(index.pack_offset_at_index(at), offset);
        }
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}

//! Many blobs at once, straight from pack entries: their sizes from entry headers (a delta
//! chain walked to its base only once) and the content of values stored whole.
//!
//! Why: gix's lookup searches the pack indices in a fixed order and, for a header of a value
//! Git stored as a delta (a fetched pack, a `git repack`), walks its chain (up to 50 deep) to
//! the base to learn the object's kind, for every value. An area's values sit in one pack,
//! so a lookup here starts in the pack that answered last, and the deltas of a pack share
//! their bases. Whatever this path cannot answer plainly (a loose object, a delta's content,
//! a base outside the packs opened, anything odd) is asked of gix, which stays the authority
//! on errors.

use std::path::Path;

use gix::objs::Kind;
use gix::odb::pack::data::entry::Header as EntryHeader;
use gix::odb::pack::data::Entry;
use gix::odb::pack::Bundle;
use gix::ObjectId;

/// Compressed bytes offered to inflate a delta's first 20: a deflate block's code tables
/// come first and take at most a few hundred.
const PROBE_IN: u64 = 1024;
/// Longer chains than Git ever writes (its default depth is 50) are left to gix.
const MAX_CHAIN: usize = 10_000;
/// `memo_key` keeps a pack's number in the top 16 bits and its offsets in the 48 below.
const MAX_PACKS: usize = 1 << 16;
const MAX_OFFSET: u64 = 1 << 48;

/// Reads the packs of one repository as they were when it was opened.
pub(crate) struct PackedReader {
    packs: Vec<Bundle>,
    /// The pack that answered the last lookup.
    last: usize,
    /// The kind at the end of the chain from an entry already walked (`memo_key`).
    kinds: foldhash::HashMap<u64, Kind>,
    inflate: gix::zlib::Inflate,
}

impl PackedReader {
    /// Opens every pack of `objects_dir`; one that cannot be opened is left to gix.
    pub fn open(objects_dir: &Path, hash: gix::hash::Kind) -> PackedReader {
        let mut packs = Vec::new();
        if let Ok(dir) = std::fs::read_dir(objects_dir.join("pack")) {
            for entry in dir.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "idx") {
                    if let Ok(b) = Bundle::at(&path, hash) {
                        packs.push(b);
                    }
                }
            }
        }
        if packs.len() > MAX_PACKS {
            // `memo_key` could not tell them apart: gix answers.
            packs.clear();
        }
        PackedReader {
            packs,
            last: 0,
            kinds: foldhash::HashMap::default(),
            inflate: gix::zlib::Inflate::default(),
        }
    }

    /// The kind and size of packed object `id`, or `None` for gix to answer.
    pub fn kind_and_size(&mut self, id: &ObjectId) -> Option<(Kind, u64)> {
        let (pack, offset) = self.find(id)?;
        let entry = self.packs[pack].pack.entry(offset).ok()?;
        let size = match entry.header {
            EntryHeader::OfsDelta { .. } | EntryHeader::RefDelta { .. } => {
                self.delta_result_size(pack, &entry)?
            }
            _ => entry.decompressed_size,
        };
        Some((self.kind_at(pack, entry)?, size))
    }

    /// Inflates packed object `id` into `buf` when its pack stores it whole and it is of
    /// `kind`, or returns `None` for gix to read (a delta through gix's base cache).
    pub fn read_whole(&mut self, id: &ObjectId, kind: Kind, buf: &mut Vec<u8>) -> Option<()> {
        let (pack, offset) = self.find(id)?;
        let file = &self.packs[pack].pack;
        let entry = file.entry(offset).ok()?;
        if entry.header.as_kind()? != kind {
            return None;
        }
        // The size comes from the pack: a corrupt one must not allocate more than deflate
        // can give from the bytes left in the pack (at most 1032 to 1); gix names the error.
        let left = u64::try_from(file.pack_end())
            .ok()?
            .checked_sub(entry.data_offset)?;
        if entry.decompressed_size > left.saturating_mul(1032) {
            return None;
        }
        buf.clear();
        buf.resize(usize::try_from(entry.decompressed_size).ok()?, 0);
        file.decompress_entry(&entry, &mut self.inflate, buf).ok()?;
        Some(())
    }

    fn find(&mut self, id: &ObjectId) -> Option<(usize, u64)> {
        let (n, last) = (self.packs.len(), self.last);
        let (p, offset) = (0..n).map(|i| (last + i) % n).find_map(|p| {
            let index = &self.packs[p].index;
            Some((p, index.pack_offset_at_index(index.lookup(id)?)))
        })?;
        self.last = p;
        Some((p, offset))
    }

    /// A delta starts with two sizes: its base's, then the object's it makes. Only its first
    /// bytes are inflated, as git does.
    fn delta_result_size(&mut self, pack: usize, entry: &Entry) -> Option<u64> {
        let file = &self.packs[pack].pack;
        let end = (entry.data_offset + PROBE_IN).min(u64::try_from(file.pack_end()).ok()?);
        let input = file.entry_slice(entry.data_offset..end)?;
        let mut out = [0u8; 20];
        let want = usize::try_from(entry.decompressed_size.min(20)).ok()?;
        self.inflate.reset();
        let (_, _, written) = self.inflate.prefix(input, &mut out[..want]).ok()?;
        let (_, rest) = varint(&out[..written])?;
        Some(varint(rest)?.0)
    }

    /// The kind at the base of `entry`'s chain; every entry passed on the way learns it
    /// (a whole object is its own answer and is not kept).
    fn kind_at(&mut self, mut pack: usize, mut entry: Entry) -> Option<Kind> {
        if let Some(kind) = entry.header.as_kind() {
            return Some(kind);
        }
        let mut walked = Vec::new();
        let kind = loop {
            if entry.data_offset >= MAX_OFFSET {
                return None;
            }
            let here = memo_key(pack, entry.data_offset);
            if let Some(kind) = self.kinds.get(&here) {
                break *kind;
            }
            if walked.len() > MAX_CHAIN {
                return None;
            }
            walked.push(here);
            entry = match entry.header {
                EntryHeader::OfsDelta { base_distance } => {
                    let base = entry.checked_base_pack_offset(base_distance)?;
                    self.packs[pack].pack.entry(base).ok()?
                }
                EntryHeader::RefDelta { base_id } => {
                    let (p, offset) = self.find(&base_id)?;
                    pack = p;
                    self.packs[pack].pack.entry(offset).ok()?
                }
                base => break base.as_kind()?,
            };
        };
        for at in walked {
            self.kinds.insert(at, kind);
        }
        Some(kind)
    }
}

/// One number for an entry (below `MAX_PACKS` packs, offsets below `MAX_OFFSET`).
fn memo_key(pack: usize, data_offset: u64) -> u64 {
    ((pack as u64) << 48) | data_offset
}

/// A delta header size: 7 bits a byte, least significant first, high bit set on all but the
/// last byte. Returns it and the bytes after it.
fn varint(d: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, byte) in d.iter().enumerate() {
        let shift = 7 * u32::try_from(i).ok()?;
        if shift > 63 {
            return None;
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((value, &d[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::varint;

    #[test]
    fn delta_header_sizes_decode_least_significant_first() {
        assert_eq!(varint(&[0x05, 0xff]), Some((5, &[0xff][..])));
        assert_eq!(varint(&[0x80 | 0x10, 0x01]), Some((0x90, &[][..])));
        assert_eq!(varint(&[0x80, 0x80]), None, "no last byte");
        assert_eq!(varint(&[0x80; 11]), None, "longer than 64 bits");
    }
}

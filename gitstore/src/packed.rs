//! Many blobs at once, straight from pack entries: their sizes from entry headers (a delta
//! chain walked to its base only once) and their contents, deltas resolved here.
//!
//! Why: gix's lookup searches the pack indices in a fixed order and, for a value Git stored
//! as a delta (a fetched pack, a `git repack`), walks its chain (up to 50 deep) to the base
//! for a header, and resolves it through a general cache for its content. An area's values
//! sit in one pack, so a lookup here starts in the pack that answered last, and the deltas
//! of a pack share their bases. Whatever this path cannot answer plainly (a loose object, a
//! base outside the packs opened, anything odd) is asked of gix, which stays the authority
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
/// Entries the kind memo keeps at most (16 bytes each, and the table's slack).
const MAX_KINDS: usize = 1 << 18;
/// `memo_key` keeps a pack's number in the top 16 bits and its offsets in the 48 below.
const MAX_PACKS: usize = 1 << 16;
const MAX_OFFSET: u64 = 1 << 48;

/// Where an object is in the packs of one [`PackedReader`], found ahead of reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    /// The reader that found it: another one may have opened other packs.
    reader: u64,
    pack: usize,
    offset: u64,
}

/// Tells readers apart, for [`Position`].
static READERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Reads the packs of one repository as they were when it was opened.
pub(crate) struct PackedReader {
    serial: u64,
    packs: Vec<Bundle>,
    /// The pack that answered the last lookup.
    last: usize,
    /// The kind at the end of the chain from an entry already walked (`memo_key`).
    kinds: foldhash::HashMap<u64, Kind>,
    /// The entries one [`Self::kind_at`] passes, kept to spare an allocation per delta.
    walked: Vec<u64>,
    /// Entries resolved lately, for the deltas that use them as bases.
    resolved: Resolved,
    inflate: gix::zlib::Inflate,
    /// A delta's instructions, inflated; and the object a delta makes, before it is kept.
    delta: Vec<u8>,
    target: Vec<u8>,
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
            serial: READERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            packs,
            last: 0,
            kinds: foldhash::HashMap::default(),
            walked: Vec::new(),
            resolved: Resolved::default(),
            inflate: gix::zlib::Inflate::default(),
            delta: Vec::new(),
            target: Vec::new(),
        }
    }

    /// Where each of `ids` is, told to `found` with its index (not at all when it is not in
    /// a pack opened), looked up in the order of the ids rather than the order given.
    ///
    /// Why: values come in key order, which is random in id order, and each lookup then
    /// misses the cache on every step of its binary search through an index of a few MB
    /// (190 ns a value, most of a plan's sizing and a quarter of reading kvgit's own packs).
    /// In id order, neighbouring lookups read the same lines of the index.
    pub fn locate(&mut self, ids: &[ObjectId], mut found: impl FnMut(usize, Position)) {
        // The first 8 bytes order ids well enough for the cache, and compare as one integer.
        let mut order: Vec<(u64, usize)> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let mut head = [0u8; 8];
                head.copy_from_slice(&id.as_bytes()[..8]);
                (u64::from_be_bytes(head), i)
            })
            .collect();
        order.sort_unstable();
        // Per pack, the index entry the last id was found at: the next id is after it.
        let mut cursors = vec![None; self.packs.len()];
        for (_, i) in order {
            let id = &ids[i];
            let hit = self
                .seek(&mut cursors, id)
                .or_else(|| self.find_entry(&mut cursors, id));
            if let Some((pack, offset)) = hit {
                let reader = self.serial;
                found(
                    i,
                    Position {
                        reader,
                        pack,
                        offset,
                    },
                );
            }
        }
    }

    /// `id` searched forward from the cursor of the pack that answered last: doubling steps
    /// and then halving them touch the index lines the ids after it will need anyway, where a
    /// search from the start would touch new ones in a large index (git's one pack of 100k
    /// values). `None`: not found there (or ids out of order), for [`Self::find_entry`].
    fn seek(&mut self, cursors: &mut [Option<u32>], id: &ObjectId) -> Option<(usize, u64)> {
        let p = self.last;
        let from = (*cursors.get(p)?)?;
        let index = &self.packs[p].index;
        let (id, n) = (id.as_ref(), index.num_objects());
        let at = |k: u32| index.oid_at_index(k).cmp(id);
        let hit = |k: u32, cursors: &mut [Option<u32>]| {
            cursors[p] = Some(k);
            Some((p, index.pack_offset_at_index(k)))
        };
        match at(from) {
            std::cmp::Ordering::Equal => return hit(from, cursors),
            std::cmp::Ordering::Greater => return None,
            std::cmp::Ordering::Less => {}
        }
        // Invariant: entry `lo` is below `id`, entry `hi` (or the end) above it.
        let (mut lo, mut step) = (from, 1u32);
        let mut hi = loop {
            let probe = lo.saturating_add(step);
            if probe >= n {
                break n;
            }
            match at(probe) {
                std::cmp::Ordering::Less => (lo, step) = (probe, step.saturating_mul(2)),
                std::cmp::Ordering::Equal => return hit(probe, cursors),
                std::cmp::Ordering::Greater => break probe,
            }
        };
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            match at(mid) {
                std::cmp::Ordering::Less => lo = mid,
                std::cmp::Ordering::Equal => return hit(mid, cursors),
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        None
    }

    /// [`Self::find`], also setting the cursor of the pack it is found in.
    fn find_entry(&mut self, cursors: &mut [Option<u32>], id: &ObjectId) -> Option<(usize, u64)> {
        let n = self.packs.len();
        let (p, k) = (0..n)
            .map(|i| (self.last + i) % n)
            .find_map(|p| Some((p, self.packs[p].index.lookup(id)?)))?;
        self.last = p;
        cursors[p] = Some(k);
        Some((p, self.packs[p].index.pack_offset_at_index(k)))
    }

    /// The kind and size of packed object `id`, or `None` for gix to answer.
    pub fn kind_and_size(&mut self, id: &ObjectId) -> Option<(Kind, u64)> {
        let (pack, offset) = self.find(id)?;
        self.kind_and_size_in(pack, offset)
    }

    /// [`Self::kind_and_size`] of many positions [`Self::locate`] found, in the order given
    /// (worked out in pack order, see [`Self::in_pack_order`]; an `OfsDelta`'s base is always
    /// earlier in its pack, so the kind memo answers at the first step).
    pub fn kinds_and_sizes_at(&mut self, at: &[Option<Position>]) -> Vec<Option<(Kind, u64)>> {
        self.in_pack_order(at, |r, pack, offset| r.kind_and_size_in(pack, offset))
    }

    /// `each` of many positions, answered in the order given but called in pack order:
    /// values come in key order, which is random in the pack, and in pack order a delta's
    /// base was mostly met just before (walked, or resolved and still in the CPU's caches)
    /// and the pack is read forward. `None` for a position of another reader.
    fn in_pack_order<T>(
        &mut self,
        at: &[Option<Position>],
        mut each: impl FnMut(&mut Self, usize, u64) -> Option<T>,
    ) -> Vec<Option<T>> {
        let mut order: Vec<(usize, u64, usize)> = at
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((self.own((*p)?)?, i)))
            .map(|((pack, offset), i)| (pack, offset, i))
            .collect();
        order.sort_unstable();
        let mut found: Vec<Option<T>> = std::iter::repeat_with(|| None).take(at.len()).collect();
        for (pack, offset, i) in order {
            found[i] = each(self, pack, offset);
        }
        found
    }

    /// A position this reader found (one from another reader could name another pack).
    fn own(&self, at: Position) -> Option<(usize, u64)> {
        (at.reader == self.serial).then_some((at.pack, at.offset))
    }

    fn kind_and_size_in(&mut self, pack: usize, offset: u64) -> Option<(Kind, u64)> {
        let entry = self.packs[pack].pack.entry(offset).ok()?;
        let size = match entry.header {
            EntryHeader::OfsDelta { .. } | EntryHeader::RefDelta { .. } => {
                self.delta_result_size(pack, &entry)?
            }
            _ => entry.decompressed_size,
        };
        Some((self.kind_at(pack, entry)?, size))
    }

    /// The content of packed object `id` of `kind` into `buf`, deltas resolved here, or
    /// `None` for gix to read (and name what is wrong).
    ///
    /// Why not gix: a pack git made stores nearly every value as a delta (99k of 100k in
    /// the bench's `git repack`). gix looked each one up again and kept its bases in a
    /// general cache with an LRU list: 2.8 µs of CPU a value, taken from etcd on the same
    /// cores while an apply writes. Here the lookup starts in the pack that answered last,
    /// and resolved entries are kept by pack position in two generations.
    pub fn read(&mut self, id: &ObjectId, kind: Kind, buf: &mut Vec<u8>) -> Option<()> {
        let (pack, offset) = self.find(id)?;
        self.read_in(pack, offset, kind, buf)
    }

    /// [`Self::read`] of many positions [`Self::locate`] found, in the order given (read in
    /// pack order, see [`Self::in_pack_order`]: resolved bases are met at random in a
    /// working set of 32 MiB otherwise).
    pub fn read_many_at(&mut self, at: &[Option<Position>], kind: Kind) -> Vec<Option<Vec<u8>>> {
        self.in_pack_order(at, |r, pack, offset| {
            let mut buf = Vec::new();
            r.read_in(pack, offset, kind, &mut buf).map(|()| buf)
        })
    }

    fn read_in(&mut self, pack: usize, offset: u64, kind: Kind, buf: &mut Vec<u8>) -> Option<()> {
        let entry = self.packs[pack].pack.entry(offset).ok()?;
        // Something else than asked for is rare (a wrong file mode): read for nothing, and
        // left to gix to name.
        (self.resolve(pack, entry, buf)? == kind).then_some(())
    }

    /// The object `entry` stands for, and its kind: its chain is walked down to a base kept
    /// or stored whole, then the deltas are applied from there up, each base on the way kept.
    ///
    /// The object asked for is not kept: most values are no other value's base, and keeping
    /// each one (a copy into a 32 MiB working set, a hash insert) cost more than making the
    /// few that are again from their kept base (kvgit's CPU for an apply from git's pack of
    /// 100k values: 512 -> 455 ms).
    fn resolve(&mut self, mut pack: usize, mut entry: Entry, out: &mut Vec<u8>) -> Option<Kind> {
        let mut chain = Vec::new();
        let kind = loop {
            let here = memo_key(pack, entry.data_offset);
            if entry.data_offset >= MAX_OFFSET || chain.len() > MAX_CHAIN {
                return None;
            }
            if let Some((kind, kept)) = self.resolved.get(here) {
                out.clear();
                out.extend_from_slice(kept);
                break kind;
            }
            if let Some(kind) = entry.header.as_kind() {
                inflate_entry(&self.packs[pack].pack, &entry, &mut self.inflate, out)?;
                // A base is kept for the next delta on it; a value read whole is not
                // (kvgit's own packs hold nothing else).
                if !chain.is_empty() {
                    self.resolved.keep(here, kind, out);
                }
                break kind;
            }
            let base = self.base_of(pack, &entry)?;
            chain.push((pack, entry));
            (pack, entry) = base;
        };
        let top = chain.len();
        for (n, (pack, entry)) in chain.into_iter().rev().enumerate() {
            let file = &self.packs[pack].pack;
            inflate_entry(file, &entry, &mut self.inflate, &mut self.delta)?;
            let (base_size, rest) = varint(&self.delta)?;
            let (size, instructions) = varint(rest)?;
            if base_size != u64::try_from(out.len()).ok()? {
                return None;
            }
            self.target.clear();
            apply_delta(
                out,
                instructions,
                usize::try_from(size).ok()?,
                &mut self.target,
            )?;
            if u64::try_from(self.target.len()).ok()? != size {
                return None;
            }
            std::mem::swap(out, &mut self.target);
            if n + 1 < top {
                // A base on the way to the object asked for.
                self.resolved
                    .keep(memo_key(pack, entry.data_offset), kind, out);
            }
        }
        Some(kind)
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

    /// The entry delta `entry` (in `pack`) is made from: at an offset back in the same pack,
    /// or named by id. `None` for a whole object, or a base not in the packs opened.
    fn base_of(&mut self, pack: usize, entry: &Entry) -> Option<(usize, Entry)> {
        let (pack, offset) = match entry.header {
            EntryHeader::OfsDelta { base_distance } => {
                (pack, entry.checked_base_pack_offset(base_distance)?)
            }
            EntryHeader::RefDelta { base_id } => self.find(&base_id)?,
            _ => return None,
        };
        Some((pack, self.packs[pack].pack.entry(offset).ok()?))
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
        let mut walked = std::mem::take(&mut self.walked);
        walked.clear();
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
            (pack, entry) = self.base_of(pack, &entry)?;
            if let Some(kind) = entry.header.as_kind() {
                break kind;
            }
        };
        if self.kinds.len() + walked.len() > MAX_KINDS {
            // A memo, not a record: starting over costs some walks again, never a wrong
            // answer, and keeps it under ~9 MiB whatever the pack holds.
            self.kinds.clear();
        }
        for &at in &walked {
            self.kinds.insert(at, kind);
        }
        self.walked = walked;
        Some(kind)
    }
}

/// Inflates `entry`'s data (a whole object, or a delta's instructions) into `out`.
fn inflate_entry(
    file: &gix::odb::pack::data::File,
    entry: &Entry,
    inflate: &mut gix::zlib::Inflate,
    out: &mut Vec<u8>,
) -> Option<()> {
    // The size comes from the pack: a corrupt one must not allocate more than deflate can
    // give from the bytes left in the pack (at most 1032 to 1).
    let left = u64::try_from(file.pack_end())
        .ok()?
        .checked_sub(entry.data_offset)?;
    if entry.decompressed_size > left.saturating_mul(1032) {
        return None;
    }
    out.clear();
    out.resize(usize::try_from(entry.decompressed_size).ok()?, 0);
    file.decompress_entry(entry, inflate, out).ok()?;
    Some(())
}

/// Appends to `out` what git's delta `instructions` (after its two sizes) make of `base`,
/// refusing to make more than the `size` the delta announced (a corrupt delta could
/// otherwise copy 64 KiB for every 8 bytes of it): a byte with the high bit set copies a
/// range of the base (offset in up to 4 bytes, size in up to 3, each byte present when its
/// flag bit is set; size 0 means 64 KiB); any other byte but 0 inserts that many bytes
/// that follow it.
fn apply_delta(base: &[u8], mut instructions: &[u8], size: usize, out: &mut Vec<u8>) -> Option<()> {
    while let Some((&op, rest)) = instructions.split_first() {
        instructions = rest;
        let piece = if op & 0x80 != 0 {
            let offset = little_endian(&mut instructions, op, 4)?;
            let len = match little_endian(&mut instructions, op >> 4, 3)? {
                0 => 0x10000,
                n => n,
            };
            base.get(offset..offset.checked_add(len)?)?
        } else if op != 0 {
            let (literal, rest) = instructions.split_at_checked(usize::from(op))?;
            instructions = rest;
            literal
        } else {
            return None;
        };
        if out.len() + piece.len() > size {
            return None;
        }
        out.extend_from_slice(piece);
    }
    Some(())
}

/// A number of up to `bytes` bytes, least significant first, of which only those whose bit
/// is set in `flags` are present (the others are 0).
fn little_endian(from: &mut &[u8], flags: u8, bytes: u32) -> Option<usize> {
    let mut value = 0usize;
    for i in 0..bytes {
        if flags & (1 << i) != 0 {
            let (&byte, rest) = from.split_first()?;
            *from = rest;
            value |= usize::from(byte) << (8 * i);
        }
    }
    Some(value)
}

/// Objects resolved lately, by `memo_key`, within a byte budget: a new generation takes
/// them until it holds half the budget, then becomes the old one (the one before is
/// dropped); a hit in the old generation moves back to the new. An LRU's effect without a
/// list to keep in order on every read.
#[derive(Default)]
struct Resolved {
    new: foldhash::HashMap<u64, (Kind, Box<[u8]>)>,
    old: foldhash::HashMap<u64, (Kind, Box<[u8]>)>,
    new_bytes: usize,
}

impl Resolved {
    /// Git's own default for its delta-base cache is 96 MiB a process; kvgit keeps less.
    const BUDGET: usize = 32 << 20;

    fn get(&mut self, key: u64) -> Option<(Kind, &[u8])> {
        // The newer generation first: it answers most hits with one probe.
        if !self.new.contains_key(&key) {
            let (kind, value) = self.old.remove(&key)?;
            self.keep_box(key, kind, value);
        }
        self.new.get(&key).map(|(kind, v)| (*kind, &v[..]))
    }

    fn keep(&mut self, key: u64, kind: Kind, value: &[u8]) {
        // One object that would take a large share of the budget is not kept.
        if value.len() <= Self::BUDGET / 16 {
            self.keep_box(key, kind, value.into());
        }
    }

    fn keep_box(&mut self, key: u64, kind: Kind, value: Box<[u8]>) {
        if self.new_bytes + value.len() > Self::BUDGET / 2 {
            self.old = std::mem::take(&mut self.new);
            self.new_bytes = 0;
        }
        self.new_bytes += value.len();
        if let Some((_, before)) = self.new.insert(key, (kind, value)) {
            self.new_bytes -= before.len();
        }
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
    use super::{apply_delta, varint};

    #[test]
    fn deltas_copy_and_insert_and_refuse_what_is_corrupt() {
        let base = b"0123456789";
        let apply = |ins: &[u8], size: usize| {
            let mut out = Vec::new();
            apply_delta(base, ins, size, &mut out).map(|()| out)
        };
        // Copy 4 bytes from offset 2, insert "ab", copy 2 from 0 (offset byte absent).
        let ins = [0x80 | 0x01 | 0x10, 2, 4, 2, b'a', b'b', 0x80 | 0x10, 2];
        assert_eq!(apply(&ins, 8).as_deref(), Some(&b"2345ab01"[..]));
        assert_eq!(apply(&ins, 7), None, "more than the delta announced");
        assert_eq!(
            apply(&[0x80 | 0x01 | 0x10, 8, 4], 4),
            None,
            "past the base's end"
        );
        assert_eq!(apply(&[0], 1), None, "op 0 is reserved");
        assert_eq!(apply(&[3, b'a'], 3), None, "an insert cut short");
        assert_eq!(apply(&[0x80 | 0x01], 1), None, "a copy cut short");
        // Size 0 stands for 64 KiB: past this base.
        assert_eq!(apply(&[0x80], 0x10000), None);
    }

    #[test]
    fn delta_header_sizes_decode_least_significant_first() {
        assert_eq!(varint(&[0x05, 0xff]), Some((5, &[0xff][..])));
        assert_eq!(varint(&[0x80 | 0x10, 0x01]), Some((0x90, &[][..])));
        assert_eq!(varint(&[0x80, 0x80]), None, "no last byte");
        assert_eq!(varint(&[0x80; 11]), None, "longer than 64 bits");
    }
}

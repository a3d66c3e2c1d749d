//! Baselines: Consul keeps no history, so exact deltas need the previous key set. Per prefix
//! the backend remembers the key -> `ModifyIndex` set of its latest listing and the range of
//! revisions at which that set is provably the store's state.
//!
//! Why a range, and why its low end moves only with changes: a listing read at revision `S`
//! (see `snapshot::read_at`) is the state at `S`. A later listing at `S2` compared with it
//! finds every change in between: a key with another `ModifyIndex` was written at that
//! index, a key gone was deleted at some revision <= `S2` (dated `S2`, which is never
//! early). So the new set is the state at every revision from the newest of those dates
//! (or the old range's low end, when nothing changed) to `S2`. Consul's prefix index alone
//! cannot prove "nothing changed since R": it reaps tombstones after a while, so a delete
//! can vanish from it.

use crate::listing::{KeySet, Listing};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use sync_core::{ChangeKind, Key, KvChange, Revision};

/// A prefix's key set and where it holds.
#[derive(Debug)]
pub(crate) struct Baseline {
    pub keys: KeySet,
    /// The keys are the store's state at every revision in `lo..=hi`.
    pub lo: Revision,
    pub hi: Revision,
    /// `X-Consul-Index` of the listing: a blocking query waits for the prefix to pass it.
    pub index: u64,
}

impl Baseline {
    pub fn covers(&self, r: Revision) -> bool {
        self.lo <= r && r <= self.hi
    }

    /// The baseline after a listing read at `at` (>= `self.hi`) whose newest difference
    /// from this one is dated `newest` (`None`: no difference).
    pub fn advance(
        &self,
        keys: KeySet,
        index: u64,
        at: Revision,
        newest: Option<Revision>,
    ) -> Baseline {
        Baseline {
            keys,
            lo: newest.map_or(self.lo, |n| n.max(self.lo)),
            hi: at,
            index,
        }
    }

    /// A first baseline: one listing proves the state at its own revision only.
    pub fn first(keys: KeySet, index: u64, at: Revision) -> Baseline {
        Baseline {
            keys,
            lo: at,
            hi: at,
            index,
        }
    }
}

/// The latest baseline of every prefix this backend listed.
#[derive(Debug, Default)]
pub(crate) struct Baselines(Mutex<HashMap<Vec<u8>, Arc<Baseline>>>);

impl Baselines {
    pub fn get(&self, prefix: &[u8]) -> Option<Arc<Baseline>> {
        self.lock().get(prefix).cloned()
    }

    /// Keeps `b` unless a newer one (read later) is already there: every baseline is a true
    /// statement, the newest is the most useful.
    pub fn install(&self, prefix: &[u8], b: Arc<Baseline>) {
        let mut map = self.lock();
        match map.get(prefix) {
            Some(cur) if cur.hi > b.hi => {}
            _ => {
                map.insert(prefix.to_vec(), b);
            }
        }
    }

    /// Replaces whatever is there: for a store whose index went back, where every older
    /// baseline describes another history.
    pub fn replace(&self, prefix: &[u8], b: Arc<Baseline>) {
        self.lock().insert(prefix.to_vec(), b);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Arc<Baseline>>> {
        // A panic while holding the lock cannot leave the map half-updated (one insert).
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Every change from `old` to `listing` (read with `Collect::ChangedSince(old)`, at `at`):
/// puts at their `ModifyIndex` with the current value, deletes at `at`; sorted by revision,
/// then key.
pub(crate) fn changes(
    prefix: &[u8],
    old: &KeySet,
    listing: &mut Listing,
    at: Revision,
) -> Vec<KvChange> {
    let mut out: Vec<KvChange> = std::mem::take(&mut listing.entries)
        .into_iter()
        .map(KvChange::from)
        .collect();
    for suffix in removed(old, &listing.keys) {
        let mut key = Vec::with_capacity(prefix.len() + suffix.len());
        key.extend_from_slice(prefix);
        key.extend_from_slice(suffix);
        out.push(KvChange {
            key: Key(key),
            kind: ChangeKind::Delete,
            revision: at,
        });
    }
    out.sort_by(|a, b| (a.revision, &a.key).cmp(&(b.revision, &b.key)));
    out
}

/// The newest date of any change from `old` to `new` (puts at their index, deletes at
/// `at`), or `None` when the sets are equal. For callers that did not keep the values.
pub(crate) fn newest_change(old: &KeySet, new: &KeySet, at: Revision) -> Option<Revision> {
    if !removed(old, new).is_empty() {
        return Some(at);
    }
    new.iter()
        .filter(|(suffix, index)| old.find(suffix) != Some(*index))
        .map(|(_, index)| Revision(index))
        .max()
}

/// Suffixes in `old` that `new` lacks (both sorted): one merge walk.
fn removed<'a>(old: &'a KeySet, new: &KeySet) -> Vec<&'a [u8]> {
    let mut gone = Vec::new();
    let mut j = 0;
    for i in 0..old.len() {
        let k = old.suffix(i);
        while j < new.len() && new.suffix(j) < k {
            j += 1;
        }
        if j >= new.len() || new.suffix(j) != k {
            gone.push(k);
        }
    }
    gone
}

/// The newest date among `changes`.
pub(crate) fn newest(changes: &[KvChange]) -> Option<Revision> {
    changes.iter().map(|c| c.revision).max()
}

/// Groups sorted changes into one event per revision (one Consul transaction each, for
/// puts; the deletes seen by one listing share its revision).
pub(crate) fn group(changes: Vec<KvChange>) -> Vec<(Revision, Vec<KvChange>)> {
    let mut out: Vec<(Revision, Vec<KvChange>)> = Vec::new();
    for c in changes {
        match out.last_mut() {
            Some((r, batch)) if *r == c.revision => batch.push(c),
            _ => out.push((c.revision, vec![c])),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listing::{KeySet, Listing};
    use sync_core::KvEntry;

    fn set(items: &[(&str, u64)]) -> KeySet {
        let mut s = KeySet::default();
        for (k, i) in items {
            s.push(k.as_bytes(), *i).unwrap();
        }
        s
    }

    fn put(k: &str, v: &str, r: u64) -> KvEntry {
        KvEntry {
            key: Key::from(k),
            value: v.as_bytes().to_vec(),
            mod_revision: Revision(r),
        }
    }

    #[test]
    fn a_listing_diff_is_puts_at_their_index_and_deletes_at_the_listing() {
        let old = set(&[("a", 10), ("b", 11), ("c", 12), ("d", 12)]);
        // b rewritten at 20, c deleted, e created at 21 with d deleted at some point.
        let mut listing = Listing {
            index: 22,
            keys: set(&[("a", 10), ("b", 20), ("e", 21)]),
            entries: vec![put("p/b", "B", 20), put("p/e", "E", 21)],
        };
        let got = changes(b"p/", &old, &mut listing, Revision(25));
        let summary: Vec<_> = got
            .iter()
            .map(|c| {
                (
                    c.revision.0,
                    c.key.to_string(),
                    matches!(c.kind, ChangeKind::Delete),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (20, "p/b".into(), false),
                (21, "p/e".into(), false),
                (25, "p/c".into(), true),
                (25, "p/d".into(), true),
            ]
        );
        let groups = group(got);
        assert_eq!(groups.len(), 3);
        assert_eq!(groups[2].1.len(), 2, "both deletes in the listing's event");
        assert!(groups
            .iter()
            .all(|(r, cs)| cs.iter().all(|c| c.revision == *r)));
    }

    #[test]
    fn the_range_of_a_baseline_starts_at_its_newest_change() {
        let b = Baseline::first(set(&[("a", 5)]), 5, Revision(9));
        assert!(b.covers(Revision(9)) && !b.covers(Revision(8)));
        let same = b.advance(set(&[("a", 5)]), 5, Revision(15), None);
        assert_eq!((same.lo, same.hi), (Revision(9), Revision(15)));
        let moved = same.advance(KeySet::default(), 19, Revision(20), Some(Revision(20)));
        assert_eq!((moved.lo, moved.hi), (Revision(20), Revision(20)));
    }

    #[test]
    fn newest_change_sees_puts_and_deletes() {
        let old = set(&[("a", 5), ("b", 6)]);
        assert_eq!(
            newest_change(&old, &set(&[("a", 5), ("b", 6)]), Revision(30)),
            None
        );
        assert_eq!(
            newest_change(&old, &set(&[("a", 5), ("b", 8), ("c", 7)]), Revision(30)),
            Some(Revision(8))
        );
        assert_eq!(
            newest_change(&old, &set(&[("b", 6)]), Revision(30)),
            Some(Revision(30))
        );
    }

    #[test]
    fn install_keeps_the_newest() {
        let bs = Baselines::default();
        bs.install(
            b"p/",
            Arc::new(Baseline::first(KeySet::default(), 1, Revision(10))),
        );
        bs.install(
            b"p/",
            Arc::new(Baseline::first(KeySet::default(), 1, Revision(5))),
        );
        assert_eq!(bs.get(b"p/").unwrap().hi, Revision(10));
        bs.install(
            b"p/",
            Arc::new(Baseline::first(KeySet::default(), 1, Revision(12))),
        );
        assert_eq!(bs.get(b"p/").unwrap().hi, Revision(12));
        assert!(bs.get(b"q/").is_none());
    }
}

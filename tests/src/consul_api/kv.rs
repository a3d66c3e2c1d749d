//! The KV table as Consul's state store keeps it: entries sorted bytewise by key, a
//! graveyard of tombstones so indexes never slide backwards after deletes, the table's own
//! last-change index, lock delays, and an undo journal that makes a transaction atomic.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// One KV entry (Consul's `DirEntry`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    pub flags: u64,
    /// How many times a session has acquired this key.
    pub lock_index: u64,
    /// The session holding the lock, if any.
    pub session: Option<String>,
    pub create_index: u64,
    pub modify_index: u64,
}

impl Entry {
    /// Consul skips a write whose entry equals the stored one on these fields (indexes
    /// excluded), so an idempotent PUT leaves `ModifyIndex` and blocking queries alone.
    fn same_content(&self, other: &Entry) -> bool {
        self.lock_index == other.lock_index
            && self.flags == other.flags
            && self.value == other.value
            && self.session == other.session
    }
}

/// How to undo one change made inside a transaction.
#[derive(Debug)]
enum Undo {
    Entry(String, Option<Entry>),
    Tombstone(String, Option<u64>),
    TableIndex(u64),
}

#[derive(Default)]
pub(crate) struct Kv {
    entries: BTreeMap<String, Entry>,
    /// Key (or deleted prefix) -> index of its deletion. Kept forever: Consul reaps them
    /// after a while, which only makes indexes fall back to the table index sooner.
    tombstones: BTreeMap<String, u64>,
    /// The last index at which the entries or the tombstones changed (Consul's max of the
    /// `kvs` and `tombstones` table indexes).
    table_index: u64,
    /// Keys that may not be locked again until the instant, after their session was
    /// invalidated. Wall-clock state outside Raft, as in Consul, so never journaled.
    lock_delays: HashMap<String, Instant>,
    /// `Some` while a transaction runs.
    journal: Option<Vec<Undo>>,
}

impl Kv {
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key)
    }

    /// Entries whose key starts with `prefix`, in bytewise key order (`str` orders by bytes).
    pub fn list<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(move |(key, _)| key.starts_with(prefix))
            .map(|(_, entry)| entry)
    }

    /// `X-Consul-Index` of a single-key read: the entry's `ModifyIndex`, or when the key is
    /// absent the table index (so a delete of the key is seen as a change).
    pub fn key_index(&self, key: &str) -> u64 {
        self.get(key)
            .map_or(self.table_index, |entry| entry.modify_index)
            .max(1)
    }

    /// `X-Consul-Index` of a prefix read: the highest `ModifyIndex` under the prefix or
    /// tombstone under it; the whole table's index when that is 0 or the prefix is empty.
    pub fn prefix_index(&self, prefix: &str) -> u64 {
        let mut index = 0;
        if !prefix.is_empty() {
            index = self
                .list(prefix)
                .map(|entry| entry.modify_index)
                .max()
                .unwrap_or(0);
            let graves = self
                .tombstones
                .range::<str, _>((
                    std::ops::Bound::Included(prefix),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(|(key, _)| key.starts_with(prefix))
                .map(|(_, &at)| at);
            index = graves.fold(index, u64::max);
        }
        if index == 0 {
            index = self.table_index;
        }
        index.max(1)
    }

    /// Plain set. The session is kept; `LockIndex` becomes 0 because Consul's HTTP and txn
    /// `set` carry no lock index and the state store does not preserve the old one.
    pub fn set(&mut self, index: u64, key: &str, value: Vec<u8>, flags: u64) -> Entry {
        let session = self.get(key).and_then(|e| e.session.clone());
        self.write(index, key, value, flags, 0, session)
    }

    /// Check-and-set: `cas == 0` creates only when absent; otherwise the stored
    /// `ModifyIndex` must equal `cas`. `None` when the check fails.
    pub fn cas(
        &mut self,
        index: u64,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        cas: u64,
    ) -> Option<Entry> {
        let matches = match self.get(key) {
            None => cas == 0,
            Some(entry) => cas != 0 && entry.modify_index == cas,
        };
        matches.then(|| self.set(index, key, value, flags))
    }

    /// Acquire for `session` (whose validity the caller checked). Held by another session:
    /// `None`. Held by this one: value and flags are updated, `LockIndex` stays. Free:
    /// `LockIndex` goes up by one.
    pub fn lock(
        &mut self,
        index: u64,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        session: &str,
    ) -> Option<Entry> {
        let lock_index = match self.get(key) {
            None => 1,
            Some(entry) => match entry.session.as_deref() {
                Some(holder) if holder == session => entry.lock_index,
                Some(_) => return None,
                None => entry.lock_index + 1,
            },
        };
        Some(self.write(
            index,
            key,
            value,
            flags,
            lock_index,
            Some(session.to_string()),
        ))
    }

    /// Release by `session`: only when it holds the key. Like Consul, the request's value
    /// and flags replace the stored ones.
    pub fn unlock(
        &mut self,
        index: u64,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        session: &str,
    ) -> Option<Entry> {
        let entry = self.get(key)?;
        if entry.session.as_deref() != Some(session) {
            return None;
        }
        let lock_index = entry.lock_index;
        Some(self.write(index, key, value, flags, lock_index, None))
    }

    pub fn delete(&mut self, index: u64, key: &str) {
        if self.entries.contains_key(key) {
            self.set_tombstone(key, index);
            self.remove_entry(key);
            self.set_table_index(index);
        }
    }

    /// Delete when `ModifyIndex == cas`. An absent key counts as success, as in Consul.
    pub fn delete_cas(&mut self, index: u64, key: &str, cas: u64) -> bool {
        match self.get(key) {
            None => true,
            Some(entry) if entry.modify_index != cas => false,
            Some(_) => {
                self.delete(index, key);
                true
            }
        }
    }

    /// Deletes every key under `prefix` and, as Consul does, leaves a single tombstone at
    /// the prefix itself (none for the empty prefix: the table index covers that case).
    pub fn delete_tree(&mut self, index: u64, prefix: &str) {
        let doomed: Vec<String> = self.list(prefix).map(|e| e.key.clone()).collect();
        if doomed.is_empty() {
            return;
        }
        for key in &doomed {
            self.remove_entry(key);
        }
        if !prefix.is_empty() {
            self.set_tombstone(prefix, index);
        }
        self.set_table_index(index);
    }

    /// Keys held by `session`, for invalidation.
    pub fn held_by(&self, session: &str) -> Vec<String> {
        self.entries
            .values()
            .filter(|e| e.session.as_deref() == Some(session))
            .map(|e| e.key.clone())
            .collect()
    }

    /// Clears the session of a held key, keeping value and `LockIndex` (invalidation with
    /// behavior "release").
    pub fn force_release(&mut self, index: u64, key: &str) {
        if let Some(entry) = self.get(key).cloned() {
            self.write(index, key, entry.value, entry.flags, entry.lock_index, None);
        }
    }

    pub fn lock_delayed(&self, key: &str, now: Instant) -> bool {
        self.lock_delays.get(key).is_some_and(|until| *until > now)
    }

    pub fn set_lock_delay(&mut self, key: &str, until: Instant) {
        self.lock_delays.insert(key.to_string(), until);
    }

    /// Starts journaling changes so [`Kv::rollback`] can undo them.
    pub fn begin(&mut self) {
        self.journal = Some(Vec::new());
    }

    pub fn commit(&mut self) {
        self.journal = None;
    }

    /// Undoes everything since [`Kv::begin`], newest first.
    pub fn rollback(&mut self) {
        let Some(journal) = self.journal.take() else {
            return;
        };
        for undo in journal.into_iter().rev() {
            match undo {
                Undo::Entry(key, Some(entry)) => {
                    self.entries.insert(key, entry);
                }
                Undo::Entry(key, None) => {
                    self.entries.remove(&key);
                }
                Undo::Tombstone(key, Some(at)) => {
                    self.tombstones.insert(key, at);
                }
                Undo::Tombstone(key, None) => {
                    self.tombstones.remove(&key);
                }
                Undo::TableIndex(at) => self.table_index = at,
            }
        }
    }

    /// Consul's `kvsSetTxn`: keeps `CreateIndex`, and skips the write (keeping
    /// `ModifyIndex`) when nothing but indexes would change.
    fn write(
        &mut self,
        index: u64,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        lock_index: u64,
        session: Option<String>,
    ) -> Entry {
        let existing = self.get(key);
        let mut entry = Entry {
            key: key.to_string(),
            value,
            flags,
            lock_index,
            session,
            create_index: existing.map_or(index, |e| e.create_index),
            modify_index: index,
        };
        if let Some(existing) = existing {
            if existing.same_content(&entry) {
                entry.modify_index = existing.modify_index;
                return entry;
            }
        }
        let previous = self.entries.insert(key.to_string(), entry.clone());
        self.record(|| Undo::Entry(key.to_string(), previous));
        self.set_table_index(index);
        entry
    }

    fn remove_entry(&mut self, key: &str) {
        let previous = self.entries.remove(key);
        self.record(|| Undo::Entry(key.to_string(), previous));
    }

    fn set_tombstone(&mut self, key: &str, index: u64) {
        let previous = self.tombstones.insert(key.to_string(), index);
        self.record(|| Undo::Tombstone(key.to_string(), previous));
    }

    fn set_table_index(&mut self, index: u64) {
        let previous = std::mem::replace(&mut self.table_index, index);
        self.record(|| Undo::TableIndex(previous));
    }

    fn record(&mut self, undo: impl FnOnce() -> Undo) {
        if let Some(journal) = self.journal.as_mut() {
            journal.push(undo());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotent_set_keeps_modify_index() {
        let mut kv = Kv::default();
        kv.set(11, "a", b"1".to_vec(), 0);
        let again = kv.set(12, "a", b"1".to_vec(), 0);
        assert_eq!(again.modify_index, 11);
        assert_eq!(kv.key_index("a"), 11);
    }

    #[test]
    fn prefix_index_counts_tombstones_and_falls_back_to_table() {
        let mut kv = Kv::default();
        kv.set(11, "p/a", b"1".to_vec(), 0);
        kv.set(12, "p/b", b"1".to_vec(), 0);
        kv.set(13, "q/a", b"1".to_vec(), 0);
        assert_eq!(kv.prefix_index("p/"), 12);
        kv.delete(14, "p/a");
        assert_eq!(kv.prefix_index("p/"), 14);
        assert_eq!(kv.prefix_index("none/"), 14);
        assert_eq!(kv.prefix_index(""), 14);
    }

    #[test]
    fn rollback_restores_entries_tombstones_and_index() {
        let mut kv = Kv::default();
        kv.set(11, "a", b"1".to_vec(), 0);
        kv.begin();
        kv.set(12, "a", b"2".to_vec(), 0);
        kv.set(12, "b", b"2".to_vec(), 0);
        kv.delete_tree(12, "");
        kv.rollback();
        assert_eq!(kv.get("a").map(|e| e.value.clone()), Some(b"1".to_vec()));
        assert!(kv.get("b").is_none());
        assert_eq!(kv.key_index("zzz"), 11);
    }

    #[test]
    fn list_is_bytewise_and_prefix_bounded() {
        let mut kv = Kv::default();
        for key in ["a/z", "a/B", "a", "a0", "a/b"] {
            kv.set(11, key, Vec::new(), 0);
        }
        let keys: Vec<&str> = kv.list("a/").map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["a/B", "a/b", "a/z"]);
    }
}

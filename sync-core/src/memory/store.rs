//! The versioned key space of the in-memory backend: the current keys, and a log of every
//! transaction since the compaction point, each change with the entry before and after.

use super::KIND;
use crate::backend::BackendError;
use crate::types::{ChangeKind, Key, KvChange, KvEntry, Revision, Snapshot, Value, WatchEvent};
use std::collections::{BTreeMap, VecDeque};

/// One key as stored.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) value: Value,
    /// The revision that created the key; later puts keep it, as etcd does, so it is the
    /// epoch of a claim.
    pub(super) created: Revision,
    pub(super) modified: Revision,
    /// The lease the key goes away with (a claim). A plain put detaches it, as in etcd.
    pub(super) lease: Option<u64>,
}

/// One change of a transaction. Both sides are kept (`None`: absent) so that an older state
/// is the current one with later changes undone, and a watch can replay the new values.
#[derive(Debug)]
pub(super) struct Change {
    pub(super) key: Key,
    pub(super) before: Option<Entry>,
    pub(super) after: Option<Entry>,
}

/// Every change made at one revision, in the order of the ops that made them.
#[derive(Debug)]
pub(super) struct Txn {
    pub(super) revision: Revision,
    pub(super) changes: Vec<Change>,
}

impl Txn {
    /// The changes under `prefix` as one watch event; `None` when none is under it.
    pub(super) fn event(&self, prefix: &[u8]) -> Option<WatchEvent> {
        let changes: Vec<KvChange> = self
            .changes
            .iter()
            .filter(|c| c.key.0.starts_with(prefix))
            .map(|c| KvChange {
                key: c.key.clone(),
                kind: kind_of(&c.after),
                revision: self.revision,
            })
            .collect();
        (!changes.is_empty()).then_some(WatchEvent::Changes {
            revision: self.revision,
            changes,
        })
    }
}

fn kind_of(after: &Option<Entry>) -> ChangeKind {
    match after {
        Some(e) => ChangeKind::Put(e.value.clone()),
        None => ChangeKind::Delete,
    }
}

/// One write to apply; preconditions were checked before.
pub(super) enum Edit {
    Put {
        key: Key,
        value: Value,
        lease: Option<u64>,
    },
    Delete {
        key: Key,
    },
}

pub(super) struct Store {
    /// The newest revision. A fresh store is at 1, as a fresh etcd is, so that revision 0
    /// keeps meaning "nothing yet" to callers.
    revision: Revision,
    /// The oldest revision still readable; 0 until the first compaction.
    compacted: Revision,
    current: BTreeMap<Key, Entry>,
    /// Transactions with revision >= `compacted`, oldest first.
    log: VecDeque<Txn>,
}

impl Store {
    pub(super) fn new() -> Self {
        Store {
            revision: Revision(1),
            compacted: Revision(0),
            current: BTreeMap::new(),
            log: VecDeque::new(),
        }
    }

    pub(super) fn revision(&self) -> Revision {
        self.revision
    }

    pub(super) fn get(&self, key: &Key) -> Option<&Entry> {
        self.current.get(key)
    }

    /// The current keys under `prefix`, sorted.
    pub(super) fn under<'a>(
        &'a self,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = (&'a Key, &'a Entry)> {
        self.current
            .range(Key(prefix.to_vec())..)
            .take_while(move |(k, _)| k.0.starts_with(prefix))
    }

    /// Applies `edits` at the next revision. Deleting an absent key changes nothing, and a
    /// write that changes nothing does not move the revision (etcd does the same).
    pub(super) fn commit(&mut self, edits: Vec<Edit>) -> Option<&Txn> {
        let revision = self.revision.next();
        let mut changes = Vec::with_capacity(edits.len());
        for edit in edits {
            match edit {
                Edit::Put { key, value, lease } => {
                    let before = self.current.get(&key).cloned();
                    let after = Entry {
                        value,
                        created: before.as_ref().map_or(revision, |e| e.created),
                        modified: revision,
                        lease,
                    };
                    self.current.insert(key.clone(), after.clone());
                    changes.push(Change {
                        key,
                        before,
                        after: Some(after),
                    });
                }
                Edit::Delete { key } => {
                    if let Some(before) = self.current.remove(&key) {
                        changes.push(Change {
                            key,
                            before: Some(before),
                            after: None,
                        });
                    }
                }
            }
        }
        if changes.is_empty() {
            return None;
        }
        self.revision = revision;
        self.log.push_back(Txn { revision, changes });
        self.log.back()
    }

    /// Every key under `prefix` at `at` (or now): today's keys with every later change undone.
    pub(super) fn snapshot(
        &self,
        prefix: &[u8],
        at: Option<Revision>,
    ) -> Result<Snapshot, BackendError> {
        let at = at.unwrap_or(self.revision);
        self.readable(at)?;
        let mut keys: BTreeMap<&Key, &Entry> = self.under(prefix).collect();
        for txn in self.starting_at(at.next()).rev() {
            for c in txn.changes.iter().filter(|c| c.key.0.starts_with(prefix)) {
                match &c.before {
                    Some(e) => keys.insert(&c.key, e),
                    None => keys.remove(&c.key),
                };
            }
        }
        Ok(Snapshot {
            revision: at,
            entries: keys
                .into_iter()
                .map(|(k, e)| KvEntry {
                    key: k.clone(),
                    value: e.value.clone(),
                    mod_revision: e.modified,
                })
                .collect(),
        })
    }

    /// The last change of every key under `prefix` touched in `(after, upto]`, sorted by key;
    /// exact, deletes included (a key created and deleted in between is a `Delete`, as a
    /// collapsed watch would say).
    pub(super) fn changes_between(
        &self,
        prefix: &[u8],
        after: Revision,
        upto: Revision,
    ) -> Result<Vec<KvChange>, BackendError> {
        if after >= upto {
            return Ok(Vec::new());
        }
        self.readable(after)?;
        self.readable(upto)?;
        let mut last: BTreeMap<&Key, (&Option<Entry>, Revision)> = BTreeMap::new();
        for txn in self
            .starting_at(after.next())
            .take_while(|t| t.revision <= upto)
        {
            for c in txn.changes.iter().filter(|c| c.key.0.starts_with(prefix)) {
                last.insert(&c.key, (&c.after, txn.revision));
            }
        }
        Ok(last
            .into_iter()
            .map(|(key, (after, revision))| KvChange {
                key: key.clone(),
                kind: kind_of(after),
                revision,
            })
            .collect())
    }

    /// The events under `prefix` from revision `from` on; `Err(oldest kept)` when `from` is
    /// compacted.
    pub(super) fn replay(
        &self,
        prefix: &[u8],
        from: Revision,
    ) -> Result<Vec<WatchEvent>, Revision> {
        if from < self.compacted {
            return Err(self.compacted);
        }
        Ok(self
            .starting_at(from)
            .filter_map(|t| t.event(prefix))
            .collect())
    }

    /// Forgets history below `rev` (clamped to the current revision; never moves back).
    pub(super) fn compact(&mut self, rev: Revision) {
        let rev = rev.min(self.revision);
        if rev <= self.compacted {
            return;
        }
        self.compacted = rev;
        while self.log.front().is_some_and(|t| t.revision < rev) {
            self.log.pop_front();
        }
    }

    /// Refuses a revision that is compacted or not written yet.
    fn readable(&self, at: Revision) -> Result<(), BackendError> {
        if at < self.compacted {
            return Err(BackendError::Compacted {
                backend: KIND,
                requested: at,
                compact_revision: self.compacted,
            });
        }
        if at > self.revision {
            return Err(BackendError::Refused {
                backend: KIND,
                detail: format!(
                    "revision {at} is in the future (current: {})",
                    self.revision
                ),
            });
        }
        Ok(())
    }

    /// The logged transactions with revision >= `first`, oldest first.
    fn starting_at(&self, first: Revision) -> std::collections::vec_deque::Iter<'_, Txn> {
        let start = self.log.partition_point(|t| t.revision < first);
        self.log.range(start..)
    }
}

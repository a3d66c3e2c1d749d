//! Trees this process has just written into packs, kept in memory (bounded) for the next
//! commit, which reads them back: its base is the tree the previous commit wrote.
//!
//! Why: gix sees a new pack only after rescanning the pack directory, and under a steady
//! load every commit adds a pack, so each first read of a new pack's tree paid a rescan of
//! all of them (O(packs) per commit; a fifth of `serve`'s CPU while ingesting 1M keys).
//! Served from here, the reads and the existence check of a commit's tree touch no pack.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use gix::ObjectId;

/// Bytes of tree data kept: the trees of the last few commits of every area (a commit at
/// 10M keys rewrites ~0.5 MiB of trees), small beside the serve's memory target.
const CAP_BYTES: usize = 8 << 20;

#[derive(Default)]
pub(crate) struct RecentTrees {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    trees: HashMap<ObjectId, Arc<[u8]>>,
    /// Insertion order, oldest first: the oldest trees go when the cap is passed.
    order: VecDeque<ObjectId>,
    bytes: usize,
}

impl RecentTrees {
    /// Keeps the trees of a pack that is published (durable and in the repository).
    pub(crate) fn insert<'a>(&self, trees: impl IntoIterator<Item = (ObjectId, &'a [u8])>) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        for (id, data) in trees {
            if data.len() > CAP_BYTES / 4 || inner.trees.contains_key(&id) {
                continue;
            }
            inner.bytes += data.len();
            inner.trees.insert(id, Arc::from(data));
            inner.order.push_back(id);
        }
        while inner.bytes > CAP_BYTES {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if let Some(data) = inner.trees.remove(&old) {
                inner.bytes -= data.len();
            }
        }
    }

    /// The tree `id`'s data, if it was written recently.
    pub(crate) fn get(&self, id: &ObjectId) -> Option<Arc<[u8]>> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.trees.get(id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ObjectId {
        ObjectId::from_bytes_or_panic(&[n; 20])
    }

    #[test]
    fn the_oldest_trees_go_first_once_the_cap_is_passed() {
        let recent = RecentTrees::default();
        let data = vec![7u8; CAP_BYTES / 4];
        recent.insert([(id(1), &data[..]), (id(2), &data[..])]);
        recent.insert([(id(3), &data[..]), (id(4), &data[..]), (id(5), &data[..])]);
        assert!(recent.get(&id(1)).is_none(), "the oldest tree is dropped");
        for n in 2..=5 {
            assert_eq!(recent.get(&id(n)).as_deref(), Some(&data[..]), "tree {n}");
        }
        let big = vec![0u8; CAP_BYTES / 4 + 1];
        recent.insert([(id(6), &big[..])]);
        assert!(
            recent.get(&id(6)).is_none(),
            "a tree over a quarter of the cap is not kept"
        );
    }
}

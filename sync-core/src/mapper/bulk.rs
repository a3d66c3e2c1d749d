//! The canonical tree of a key set too large to lay out at once: keys are held packed, and
//! the root's entries are laid out a batch at a time, each batch from whole root groups.

use super::component::first_span;
use super::escape::MAX_ESCAPED;
use super::layout::layout_all;
use crate::tree::DirPlan;

// A component's raw bytes never outnumber its escaped ones: its length fits a byte.
const _: () = assert!(MAX_ESCAPED <= u8::MAX as usize);

/// Relative keys and their values, packed into one byte buffer (a few bytes of overhead per
/// key instead of an allocation each), in the order pushed.
pub struct BulkKeys<V> {
    bytes: Vec<u8>,
    ends: Vec<usize>,
    values: Vec<V>,
}

impl<V> Default for BulkKeys<V> {
    fn default() -> Self {
        BulkKeys {
            bytes: Vec::new(),
            ends: Vec::new(),
            values: Vec::new(),
        }
    }
}

impl<V: Clone> BulkKeys<V> {
    pub fn push(&mut self, rel: &[u8], value: V) {
        self.bytes.extend_from_slice(rel);
        self.ends.push(self.bytes.len());
        self.values.push(value);
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn key(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }

    /// Lays the keys out in batches of about `batch_keys` keys and hands each batch's plan
    /// to `emit`. The root entries of all batches together are exactly the root entries of
    /// [`layout_all`] over every key (a key pushed twice keeps its last value).
    ///
    /// Why batches of whole groups are exact: a root entry's name depends only on keys
    /// whose first component is the same ignoring ASCII case (case tags, `%self`,
    /// continuations), and each such group goes whole into one batch.
    pub fn layout_batches<Id, E>(
        self,
        batch_keys: usize,
        mut emit: impl FnMut(DirPlan<Id, V>) -> Result<(), E>,
    ) -> Result<(), E> {
        // Each key's group (its first component, at most 180 bytes) is found once, not
        // on every comparison of the sort.
        let group_lens: Vec<u8> = (0..self.len())
            .map(|i| first_span(self.key(i)).end as u8)
            .collect();
        let group_of = |i: usize| &self.key(i)[..usize::from(group_lens[i])];
        let folded_cmp = |a: &[u8], b: &[u8]| {
            a.iter()
                .map(u8::to_ascii_lowercase)
                .cmp(b.iter().map(u8::to_ascii_lowercase))
        };
        let mut order: Vec<usize> = (0..self.len()).collect();
        // Stable: a key pushed twice stays in push order, so its last value wins as in
        // `layout_all`. Keys arrive sorted, so this is close to a single pass.
        order.sort_by(|&a, &b| folded_cmp(group_of(a), group_of(b)));
        let mut batch: Vec<(Vec<u8>, V)> = Vec::new();
        for (n, &i) in order.iter().enumerate() {
            batch.push((self.key(i).to_vec(), self.values[i].clone()));
            let group_ends = order
                .get(n + 1)
                .is_none_or(|&next| folded_cmp(group_of(i), group_of(next)).is_ne());
            if group_ends && batch.len() >= batch_keys {
                emit(layout_all(std::mem::take(&mut batch)))?;
            }
        }
        if !batch.is_empty() {
            emit(layout_all(batch))?;
        }
        Ok(())
    }
}

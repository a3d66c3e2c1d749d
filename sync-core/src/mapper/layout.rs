//! The canonical tree of a whole key set, built in one pass: sort by component sequence,
//! then build each directory from the contiguous run of keys below it (no quadratic work).

use std::ops::Range;

use super::assemble::{assemble, place, Content, Slot};
use super::component::{component_at, group_len, seq_cmp, spans, Component, Span};
use crate::tree::DirPlan;

struct Item<V> {
    key: Vec<u8>,
    /// This key's components, in the shared `spans` arena (one allocation for all keys).
    spans: Range<usize>,
    /// Whether a segment is chunked; unchunked keys compare by a plain byte walk.
    chunked: bool,
    value: Option<V>,
}

/// The area tree holding exactly these relative keys and values. A key given twice keeps
/// its last value. An empty set gives an empty plan.
pub fn layout_all<Id, V>(entries: impl IntoIterator<Item = (Vec<u8>, V)>) -> DirPlan<Id, V> {
    let mut arena: Vec<Span> = Vec::new();
    let mut items: Vec<Item<V>> = entries
        .into_iter()
        .map(|(key, value)| {
            let own = spans(&key);
            let start = arena.len();
            arena.extend_from_slice(&own);
            Item {
                chunked: own.iter().any(|s| s.continues),
                spans: start..arena.len(),
                key,
                value: Some(value),
            }
        })
        .collect();
    // Stable, so a repeated key keeps the input order and the last value wins below.
    items.sort_by(|a, b| {
        if a.chunked || b.chunked {
            seq_cmp(
                &a.key,
                &arena[a.spans.clone()],
                &b.key,
                &arena[b.spans.clone()],
            )
        } else {
            unchunked_cmp(&a.key, &b.key)
        }
    });
    assemble(build(&mut items, &arena, 0))
}

/// `seq_cmp` for keys without chunks, at the cost of one byte walk: comparing segment by
/// segment is comparing bytes with `/` ranked below every other byte.
fn unchunked_cmp(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let rank = |b: u8| if b == b'/' { 0 } else { u16::from(b) + 1 };
    let i = common_prefix(a, b);
    match (a.get(i), b.get(i)) {
        (Some(&x), Some(&y)) => rank(x).cmp(&rank(y)),
        _ => a.len().cmp(&b.len()),
    }
}

/// Keys of one area tend to share long prefixes, so this strides 8 bytes at a time.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 8 <= n && a[i..i + 8] == b[i..i + 8] {
        i += 8;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

/// The slots of the directory holding component `depth` of every item (all items have one).
fn build<Id, V>(
    items: &mut [Item<V>],
    arena: &[Span],
    depth: usize,
) -> Vec<(Component, Slot<Id, V>)> {
    let span = |it: &Item<V>| arena[it.spans.start + depth];
    let mut out = Vec::new();
    let mut rest = items;
    while !rest.is_empty() {
        let n = group_len(rest, |it| (&it.key[..], span(it)));
        let (group, tail) = std::mem::take(&mut rest).split_at_mut(n);
        rest = tail;
        let comp = component_at(&group[0].key, span(&group[0]));
        // Keys ending at this component sort first in their group.
        let ends = group
            .iter()
            .take_while(|it| it.spans.len() == depth + 1)
            .count();
        let (own, below) = group.split_at_mut(ends);
        let value = own.iter_mut().filter_map(|it| it.value.take()).last();
        let children = (!below.is_empty()).then(|| assemble(build(below, arena, depth + 1)));
        if let Some(slot) = place(value.map(Content::New), children) {
            out.push((comp, slot));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_walk_orders_like_components() {
        let keys: [&[u8]; 9] = [
            b"", b"a", b"a/", b"a/b", b"a-c", b"a//", b"ab", b"a0/x", b"\xff",
        ];
        for a in keys {
            for b in keys {
                assert_eq!(
                    unchunked_cmp(a, b),
                    seq_cmp(a, &spans(a), b, &spans(b)),
                    "{a:?} vs {b:?}"
                );
            }
        }
    }
}

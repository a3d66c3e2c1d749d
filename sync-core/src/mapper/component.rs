//! Splitting a relative key into components (segments on `/`, long segments chunked) and
//! the order and joining rules that turn component sequences back into keys.

use std::cmp::Ordering;

use super::escape::{escaped_len, MAX_ESCAPED};

/// One step of a key's path: a whole segment, or a chunk of a long one (`continues`: the
/// segment goes on in the next component, so this one is always a directory).
///
/// The derived order (raw bytes, then `continues`) is the order of directory walks.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Component {
    pub raw: Vec<u8>,
    pub continues: bool,
}

/// A component as a byte range of its key, so bulk layouts do not allocate per component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub start: usize,
    pub end: usize,
    pub continues: bool,
}

/// The components of a relative key: never empty, and the last one never continues.
pub fn components(rel: &[u8]) -> Vec<Component> {
    spans(rel)
        .into_iter()
        .map(|s| component_at(rel, s))
        .collect()
}

pub(crate) fn component_at(key: &[u8], span: Span) -> Component {
    Component {
        raw: key[span.start..span.end].to_vec(),
        continues: span.continues,
    }
}

pub(crate) fn spans(rel: &[u8]) -> Vec<Span> {
    let mut out = Vec::new();
    let mut start = 0;
    loop {
        let end = rel[start..]
            .iter()
            .position(|&b| b == b'/')
            .map_or(rel.len(), |p| start + p);
        chunk_segment(rel, start, end, &mut out);
        if end == rel.len() {
            return out;
        }
        start = end + 1;
    }
}

/// The first component of a relative key, without splitting the rest.
pub(crate) fn first_span(rel: &[u8]) -> Span {
    let end = rel.iter().position(|&b| b == b'/').unwrap_or(rel.len());
    let chunk = chunk_end(rel, 0, end);
    Span {
        start: 0,
        end: chunk,
        continues: chunk < end,
    }
}

/// Greedy chunking: each chunk is the longest run whose own escaped form fits. Each byte
/// escapes to at most 3 bytes, so every chunk takes at least 60 bytes and the loop ends.
fn chunk_segment(key: &[u8], start: usize, end: usize, out: &mut Vec<Span>) {
    if start == end {
        out.push(Span {
            start,
            end,
            continues: false,
        });
        return;
    }
    let mut i = start;
    while i < end {
        let j = chunk_end(key, i, end);
        out.push(Span {
            start: i,
            end: j,
            continues: j < end,
        });
        i = j;
    }
}

/// Where the chunk starting at `i` ends: the longest run whose escaped form fits.
fn chunk_end(key: &[u8], i: usize, end: usize) -> usize {
    let (mut j, mut cost) = (i, 0);
    while j < end {
        let c = escaped_len(key[j], j == i);
        if cost + c > MAX_ESCAPED {
            break;
        }
        cost += c;
        j += 1;
    }
    j
}

/// Same order as `Component`'s derived `Ord`, on spans.
pub(crate) fn span_cmp(a_key: &[u8], a: Span, b_key: &[u8], b: Span) -> Ordering {
    a_key[a.start..a.end]
        .cmp(&b_key[b.start..b.end])
        .then(a.continues.cmp(&b.continues))
}

/// Lexicographic order of component sequences: keys sharing a first component are
/// contiguous, and a key sorts right before the keys below it (a prefix sorts first).
pub(crate) fn seq_cmp(a_key: &[u8], a: &[Span], b_key: &[u8], b: &[Span]) -> Ordering {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| span_cmp(a_key, x, b_key, y))
        .find(|o| o.is_ne())
        .unwrap_or_else(|| a.len().cmp(&b.len()))
}

/// How many leading items share the component that `get` picks from them.
pub(crate) fn group_len<T>(items: &[T], get: impl Fn(&T) -> (&[u8], Span)) -> usize {
    let Some(first) = items.first() else {
        return 0;
    };
    let (fk, fs) = get(first);
    items
        .iter()
        .take_while(|it| {
            let (k, s) = get(it);
            span_cmp(k, s, fk, fs).is_eq()
        })
        .count()
}

/// Extends the key of the directory reached so far by one component: what follows a
/// whole segment is a new segment, what follows a chunk is the same segment.
pub(crate) fn extend_dir_prefix(prefix: &mut Vec<u8>, comp: &Component) {
    prefix.extend_from_slice(&comp.raw);
    if !comp.continues {
        prefix.push(b'/');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comps(rel: &[u8]) -> Vec<(Vec<u8>, bool)> {
        components(rel)
            .into_iter()
            .map(|c| (c.raw, c.continues))
            .collect()
    }

    #[test]
    fn segments() {
        assert_eq!(comps(b""), vec![(vec![], false)]);
        assert_eq!(comps(b"a/"), vec![(b"a".to_vec(), false), (vec![], false)]);
        assert_eq!(comps(b"/a"), vec![(vec![], false), (b"a".to_vec(), false)]);
        assert_eq!(
            comps(b"a//b"),
            vec![
                (b"a".to_vec(), false),
                (vec![], false),
                (b"b".to_vec(), false)
            ]
        );
    }

    #[test]
    fn chunks() {
        let seg = vec![b'x'; 600];
        let c = components(&seg);
        assert_eq!(c.len(), 4);
        assert_eq!(
            c.iter().map(|c| c.raw.len()).collect::<Vec<_>>(),
            [180, 180, 180, 60]
        );
        assert_eq!(
            c.iter().map(|c| c.continues).collect::<Vec<_>>(),
            [true, true, true, false]
        );
        // 60 escaped bytes of 3 each fill a chunk exactly.
        let c = components(&[0xffu8; 61]);
        assert_eq!(c.iter().map(|c| c.raw.len()).collect::<Vec<_>>(), [60, 1]);
        // Each chunk's own leading dot is escaped, so it counts 3.
        let c = components(&[b'.'; 200]);
        assert_eq!(c.iter().map(|c| c.raw.len()).collect::<Vec<_>>(), [178, 22]);
        assert_eq!(components(&[b'x'; 180]).len(), 1);
    }
}

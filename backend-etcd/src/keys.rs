//! etcd key-range arithmetic on raw bytes: the range `[start, end)` that holds a prefix, and
//! the first key after a given one (for paging). Keys are never assumed to be UTF-8.

/// `[start, end)` covering every key that starts with `prefix`.
///
/// etcd's convention: the end is the prefix with its last byte below 0xff incremented (and
/// the 0xff tail dropped); "\0" as end means "to the end of the keyspace". The empty prefix is
/// the whole keyspace, `["\0", "\0")` (the empty key cannot exist).
pub(crate) fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() {
        return (vec![0], vec![0]);
    }
    (prefix.to_vec(), prefix_end(prefix))
}

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    match prefix.iter().rposition(|b| *b < 0xff) {
        Some(i) => {
            let mut end = prefix[..=i].to_vec();
            end[i] += 1;
            end
        }
        // All 0xff: no key after the prefix sorts above it, so range to the end.
        None => vec![0],
    }
}

/// The smallest key greater than `key`: the next page starts here.
pub(crate) fn key_after(key: &[u8]) -> Vec<u8> {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges() {
        assert_eq!(prefix_range(b"app"), (b"app".to_vec(), b"apq".to_vec()));
        assert_eq!(prefix_range(b"a\xff"), (b"a\xff".to_vec(), b"b".to_vec()));
        assert_eq!(prefix_range(b"\xff\xff"), (b"\xff\xff".to_vec(), vec![0]));
        assert_eq!(prefix_range(b""), (vec![0], vec![0]));
        // `app/` must not include `app-dev` or `app2`.
        let (start, end) = prefix_range(b"app/");
        for k in [&b"app-dev/x"[..], b"app2/x", b"app"] {
            assert!(!(k >= &start[..] && k < &end[..]), "{k:?} in range");
        }
        let inside: &[u8] = b"app/x";
        assert!(inside >= start.as_slice() && inside < end.as_slice());
    }

    #[test]
    fn key_after_is_the_immediate_successor() {
        assert_eq!(key_after(b"a"), b"a\0".to_vec());
        assert!(key_after(b"a\xff").as_slice() > &b"a\xff"[..]);
        assert!(key_after(b"a").as_slice() < &b"a\x01"[..]);
    }
}

//! One component's raw bytes <-> its escaped name text, and the case tag. Byte-level only:
//! which name a component gets next to its siblings is decided in `name.rs`.

use super::error::NameProblem;

/// Longest escaped form of one component; with the longest tag (`~` + 45 hex digits) and
/// `%+` a name stays at 228 bytes, under NAME_MAX (255).
pub const MAX_ESCAPED: usize = 180;

/// The name of an empty component (an empty key segment), since names cannot be empty.
pub const EMPTY_NAME: &str = "%empty";

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";
const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// A leading `.` is escaped so no name is `.`, `..`, `.git` or hidden.
fn stays(b: u8, first: bool) -> bool {
    is_plain(b) || (b == b'.' && !first)
}

/// A name that is its component's spelling in any directory: nothing escaped, no tag, no
/// chunk, and no upper case, so no other component of a directory can fold to it.
pub(crate) fn is_lone_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ESCAPED
        && name
            .iter()
            .enumerate()
            .all(|(i, &b)| stays(b, i == 0) && !b.is_ascii_uppercase())
}

/// Bytes that `b` takes in an escaped name.
pub(crate) fn escaped_len(b: u8, first: bool) -> usize {
    if stays(b, first) {
        1
    } else {
        3
    }
}

pub(crate) fn escape_into(raw: &[u8], out: &mut String) {
    if raw.is_empty() {
        out.push_str(EMPTY_NAME);
        return;
    }
    for (i, &b) in raw.iter().enumerate() {
        if stays(b, i == 0) {
            out.push(char::from(b));
        } else {
            push_escaped(b, out);
        }
    }
}

pub(crate) fn push_escaped(b: u8, out: &mut String) {
    out.push('%');
    out.push(char::from(HEX_UPPER[usize::from(b >> 4)]));
    out.push(char::from(HEX_UPPER[usize::from(b & 0x0f)]));
}

fn upper_hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Inverse of `escape_into` for a non-empty base (no tag, no suffix). Literal bytes other
/// than `%` are taken as they are, so hand-written names like `a b` or `café` still decode.
pub(crate) fn unescape(base: &str) -> Result<Vec<u8>, NameProblem> {
    let bytes = base.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(upper_hex_value);
            let lo = bytes.get(i + 2).copied().and_then(upper_hex_value);
            match (hi, lo) {
                (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                _ => return Err(NameProblem::BadEscape),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Lowercase hex of the mask whose bit i is set iff `raw[i]` is an ASCII uppercase letter.
/// Built nibble by nibble because a 180-byte component needs a 180-bit mask.
pub(crate) fn case_tag(raw: &[u8]) -> String {
    let nibbles: Vec<u8> = raw
        .chunks(4)
        .map(|four| {
            four.iter()
                .enumerate()
                .filter(|(_, b)| b.is_ascii_uppercase())
                .fold(0u8, |m, (k, _)| m | 1 << k)
        })
        .collect();
    match nibbles.iter().rposition(|&n| n != 0) {
        None => "0".to_string(),
        Some(top) => nibbles[..=top]
            .iter()
            .rev()
            .map(|&n| char::from(HEX_LOWER[usize::from(n)]))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc(raw: &[u8]) -> String {
        let mut s = String::new();
        escape_into(raw, &mut s);
        s
    }

    #[test]
    fn escapes() {
        assert_eq!(esc(b""), "%empty");
        assert_eq!(esc(b".git"), "%2Egit");
        assert_eq!(esc(b".."), "%2E.");
        assert_eq!(esc(b"a.b"), "a.b");
        assert_eq!(esc(b"a b"), "a%20b");
        assert_eq!(esc(b"\xff~%"), "%FF%7E%25");
        assert_eq!(unescape("%FF%7E%25a.b"), Ok(b"\xff~%a.b".to_vec()));
        assert_eq!(unescape("%ff"), Err(NameProblem::BadEscape));
        assert_eq!(unescape("%F"), Err(NameProblem::BadEscape));
    }

    #[test]
    fn tags() {
        assert_eq!(case_tag(b"node"), "0");
        assert_eq!(case_tag(b"Node"), "1");
        assert_eq!(case_tag(b"NoDe"), "5");
        assert_eq!(case_tag(b"aaaaB"), "10");
        assert_eq!(case_tag(&[b'A'; 180]).len(), 45);
    }
}

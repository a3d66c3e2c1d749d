//! Git's tree object format as kvgit writes it: entry-name checks, the canonical entry order
//! (a directory sorts as `name/`) and the byte encoding, shared by every tree writer.

use std::cmp::Ordering;

use gix::objs::tree::EntryKind as GitKind;
use gix::ObjectId;
pub(crate) use sync_core::tree::canonical_cmp;

/// One entry of a tree about to be encoded.
pub(crate) struct Entry<'a> {
    pub name: &'a [u8],
    pub kind: GitKind,
    pub id: ObjectId,
}

/// Two entries in canonical order.
pub(crate) fn cmp(a: &Entry<'_>, b: &Entry<'_>) -> Ordering {
    canonical_cmp(
        a.name,
        a.kind == GitKind::Tree,
        b.name,
        b.kind == GitKind::Tree,
    )
}

/// Sorts entries into canonical order.
pub(crate) fn sort(entries: &mut [Entry<'_>]) {
    entries.sort_unstable_by(cmp);
}

/// The first name that occurs twice (as file and/or directory), if any. `entries` must be sorted.
pub(crate) fn duplicate<'a>(entries: &[Entry<'a>]) -> Option<&'a [u8]> {
    if let Some(pair) = entries.windows(2).find(|w| w[0].name == w[1].name) {
        return Some(pair[0].name);
    }
    // A file and a directory of the same name are not neighbours in canonical order.
    let mut dirs: Vec<&[u8]> = entries
        .iter()
        .filter(|e| e.kind == GitKind::Tree)
        .map(|e| e.name)
        .collect();
    if dirs.is_empty() || dirs.len() == entries.len() {
        return None;
    }
    dirs.sort_unstable();
    entries
        .iter()
        .filter(|e| e.kind != GitKind::Tree)
        .find(|e| dirs.binary_search(&e.name).is_ok())
        .map(|e| e.name)
}

/// Encodes sorted entries as a tree object body (`<mode> <name>\0<raw id>` each).
pub(crate) fn encode(entries: &[Entry<'_>], out: &mut Vec<u8>) {
    out.clear();
    for e in entries {
        out.extend_from_slice(e.kind.as_octal_str());
        out.push(b' ');
        out.extend_from_slice(e.name);
        out.push(0);
        out.extend_from_slice(e.id.as_bytes());
    }
}

/// Why a name cannot be a tree entry (`None` if it can): `git fsck --strict` and checkouts
/// must accept every tree kvgit writes.
pub(crate) fn invalid_name(name: &[u8]) -> Option<String> {
    if name.contains(&0) {
        return Some("contains a NUL byte".into());
    }
    let options = gix::validate::path::component::Options {
        protect_windows: false,
        protect_hfs: true,
        protect_ntfs: true,
    };
    gix::validate::path::component(name.into(), None, options)
        .err()
        .map(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_sort_with_a_trailing_slash() {
        // "a-b" < "a/" because '-' (0x2d) < '/' (0x2f); "a/" < "a0" because '/' < '0'.
        assert_eq!(canonical_cmp(b"a", true, b"a-b", false), Ordering::Greater);
        assert_eq!(canonical_cmp(b"a", true, b"a0", false), Ordering::Less);
        assert_eq!(canonical_cmp(b"a", false, b"a-b", false), Ordering::Less);
        assert_eq!(canonical_cmp(b"a", false, b"a", true), Ordering::Less);
    }

    #[test]
    fn names_git_refuses_are_reported() {
        for bad in [
            &b""[..],
            b".",
            b"..",
            b".git",
            b".GIT",
            b"a/b",
            b"a\0b",
            b"git~1",
        ] {
            assert!(
                invalid_name(bad).is_some(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        for good in [&b"key"[..], b".hidden", b"aux", b"with space", b"\xc3\xa9"] {
            assert!(
                invalid_name(good).is_none(),
                "{:?}",
                String::from_utf8_lossy(good)
            );
        }
    }
}

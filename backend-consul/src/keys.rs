//! Consul's key rules on kvgit's byte keys: keys are UTF-8 strings on Consul's API, and a key
//! placed in a URL path must survive Go's path cleaning; escaping for paths and queries.

use percent_encoding::{percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sync_core::{BackendError, Key};

use crate::errors::KIND;

/// Bytes escaped in a path: everything but RFC 3986's unreserved characters and '/'.
/// Keeping '/' literal changes nothing for Consul (Go decodes `%2F` to '/' before routing)
/// and keeps paths readable in logs.
const PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');
/// Bytes escaped in a query value: everything but the unreserved characters.
const QUERY: &AsciiSet = &PATH.add(b'/');

/// `key` escaped for a URL path (spaces, '%', '?', '#', '+', non-ASCII: all escaped).
pub(crate) fn path(key: &str) -> String {
    percent_encode(key.as_bytes(), PATH).to_string()
}

/// `value` escaped for a query parameter.
pub(crate) fn query(value: &str) -> String {
    percent_encode(value.as_bytes(), QUERY).to_string()
}

/// The key as Consul's API carries it (a JSON string), or `Refused` naming the key.
pub(crate) fn utf8(key: &Key) -> Result<&str, BackendError> {
    if key.as_bytes().is_empty() {
        return Err(BackendError::Refused {
            backend: KIND,
            detail: "the empty key cannot be stored in Consul".into(),
        });
    }
    std::str::from_utf8(key.as_bytes()).map_err(|_| BackendError::Refused {
        backend: KIND,
        detail: format!(
            "key {key} is not UTF-8: Consul's API carries keys as JSON strings, so it cannot \
             store it and read it back unchanged"
        ),
    })
}

/// Whether `/v1/kv/<key>` reaches Consul as is. Go's HTTP router answers a path with an
/// empty, "." or ".." segment (a leading '/', "//", "/./") with a redirect to the cleaned
/// path, i.e. to another key (hashicorp/consul#3476); escaping does not help, since Go
/// decodes the path before cleaning it. A trailing '/' is kept.
pub(crate) fn path_safe(key: &str) -> bool {
    first_unsafe_segment(key).is_none()
}

/// The longest prefix of `prefix` that is path-safe and ends before its first unsafe
/// segment: listing it recursively returns every key under `prefix` (and neighbours, which
/// the caller filters out).
pub(crate) fn listable_prefix(prefix: &str) -> &str {
    match first_unsafe_segment(prefix) {
        Some(start) => &prefix[..start],
        None => prefix,
    }
}

/// Byte offset of the first segment Go would clean away.
fn first_unsafe_segment(key: &str) -> Option<usize> {
    let mut start = 0;
    let mut segments = key.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if (segment.is_empty() && !last) || segment == "." || segment == ".." {
            return Some(start);
        }
        start += segment.len() + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_escape_everything_but_unreserved_and_slash() {
        assert_eq!(path("app/config.yaml"), "app/config.yaml");
        assert_eq!(path("a b/%/?x#y+z&w=v"), "a%20b/%25/%3Fx%23y%2Bz%26w%3Dv");
        assert_eq!(path("caf\u{e9}"), "caf%C3%A9");
        assert_eq!(path("nul\0"), "nul%00");
        assert_eq!(query("dc 1/x"), "dc%201%2Fx");
    }

    #[test]
    fn keys_must_be_utf8_and_the_error_names_them() {
        assert_eq!(utf8(&Key::from("a/b")).unwrap(), "a/b");
        let err = utf8(&Key(b"app/\xff\xfe".to_vec())).unwrap_err();
        assert!(matches!(err, BackendError::Refused { .. }));
        assert!(err.to_string().contains("app/\\xff\\xfe"), "{err}");
        assert!(utf8(&Key(Vec::new())).is_err());
    }

    #[test]
    fn path_safety_follows_go_path_cleaning() {
        for ok in ["a", "a/", "a/b", "a/.b", "a/..b/", "", "x.", "a/b./c"] {
            assert!(path_safe(ok), "{ok:?}");
        }
        for bad in [
            "/a", "a//b", "a/./b", "a/../b", "a/.", "a/..", ".", "./a", "//",
        ] {
            assert!(!path_safe(bad), "{bad:?}");
        }
    }

    #[test]
    fn unsafe_prefixes_are_listed_through_a_safe_ancestor() {
        assert_eq!(listable_prefix("app/"), "app/");
        assert_eq!(listable_prefix("/kvgit/app/"), "");
        assert_eq!(listable_prefix("a//b/"), "a/");
        assert_eq!(listable_prefix("a/./b"), "a/");
        assert_eq!(listable_prefix("a/b/."), "a/b/");
        for p in ["/kvgit/app/", "a//b/", "a/./b", "a/b/."] {
            assert!(p.starts_with(listable_prefix(p)));
            assert!(path_safe(listable_prefix(p)));
        }
    }
}

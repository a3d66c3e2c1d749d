//! Path -> key: decoding one file path relative to the area directory, and a whole set of
//! paths with detection of two paths that hold the same key.

use super::error::{MapError, NameProblem};
use super::escape::is_lone_name;
use super::name::{decode_name, Name, SELF_NAME};
use crate::types::Key;

/// The relative key whose value the file at `rel_path` holds.
pub fn decode_path(rel_path: &str) -> Result<Vec<u8>, MapError> {
    match lone_key(rel_path) {
        Some(key) => Ok(key),
        None => decode_names(rel_path),
    }
}

/// [`decode_path`] name by name.
fn decode_names(rel_path: &str) -> Result<Vec<u8>, MapError> {
    let bad = |name: &str, problem| MapError::BadName {
        path: rel_path.to_string(),
        name: name.to_string(),
        problem,
    };
    let mut key = Vec::new();
    // Whether the previous component continues its segment; None before the first one.
    let mut prev: Option<bool> = None;
    let mut names = rel_path.split('/').peekable();
    while let Some(name) = names.next() {
        let last = names.peek().is_none();
        match decode_name(name).map_err(|p| bad(name, p))? {
            Name::SelfValue => {
                let problem = match prev {
                    None => Some(NameProblem::SelfAtRoot),
                    Some(_) if !last => Some(NameProblem::SelfNotFile),
                    Some(true) => Some(NameProblem::SelfInContinuation),
                    Some(false) => None,
                };
                if let Some(problem) = problem {
                    return Err(bad(name, problem));
                }
            }
            Name::Comp(comp) => {
                if comp.continues && last {
                    return Err(bad(name, NameProblem::ContinuationNotDir));
                }
                if prev == Some(false) {
                    key.push(b'/');
                }
                key.extend_from_slice(&comp.raw);
                prev = Some(comp.continues);
            }
        }
    }
    Ok(key)
}

/// The key of a path made of lone names only (each its component's own spelling, see
/// [`is_lone_name`]), with perhaps a last `%self`: the path itself, less that `/%self`.
/// Most paths are such, and this spares decoding them name by name.
fn lone_key(rel_path: &str) -> Option<Vec<u8>> {
    let names = rel_path
        .strip_suffix(SELF_NAME)
        .and_then(|dir| dir.strip_suffix('/'))
        .unwrap_or(rel_path)
        .as_bytes();
    names
        .split(|&b| b == b'/')
        .all(is_lone_name)
        .then(|| names.to_vec())
}

/// `(relative key, index of its path)` for every path decoded, sorted by key.
pub type DecodedPaths = Vec<(Vec<u8>, usize)>;

/// Decodes every path and returns `(relative key, index of its path)` sorted by key.
/// Fails on the first bad path, or when two paths decode to one key (naming both).
pub fn decode_paths<I, P>(paths: I) -> Result<DecodedPaths, MapError>
where
    I: IntoIterator<Item = P>,
    P: AsRef<str>,
{
    let paths: Vec<P> = paths.into_iter().collect();
    let mut keys = paths
        .iter()
        .enumerate()
        .map(|(i, p)| decode_path(p.as_ref()).map(|k| (k, i)))
        .collect::<Result<Vec<_>, _>>()?;
    keys.sort_unstable();
    if let Some(pair) = keys.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(MapError::Duplicate {
            key: Key(pair[0].0.clone()),
            first: paths[pair[0].1].as_ref().to_string(),
            second: paths[pair[1].1].as_ref().to_string(),
        });
    }
    Ok(keys)
}

/// Like [`decode_paths`], but a path that maps to no key is set aside instead of failing
/// the whole set: `(decoded, unmapped)`. Used where recording must go on around a bad file
/// (KV -> Git); applying Git to the KV store stays strict. Two paths holding one key are
/// still an error.
pub fn decode_paths_lenient<I, P>(paths: I) -> Result<(DecodedPaths, Vec<MapError>), MapError>
where
    I: IntoIterator<Item = P>,
    P: AsRef<str>,
{
    let paths: Vec<P> = paths.into_iter().collect();
    let mut keys = Vec::with_capacity(paths.len());
    let mut unmapped = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        match decode_path(p.as_ref()) {
            Ok(k) => keys.push((k, i)),
            Err(e) => unmapped.push(e),
        }
    }
    keys.sort_unstable();
    if let Some(pair) = keys.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(MapError::Duplicate {
            key: Key(pair[0].0.clone()),
            first: paths[pair[0].1].as_ref().to_string(),
            second: paths[pair[1].1].as_ref().to_string(),
        });
    }
    Ok((keys, unmapped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(path: &str) -> NameProblem {
        match decode_path(path) {
            Err(MapError::BadName { problem, .. }) => problem,
            other => panic!("{path}: expected a bad name, got {other:?}"),
        }
    }

    #[test]
    fn decodes() {
        assert_eq!(
            decode_path("node-7/status").as_deref(),
            Ok(&b"node-7/status"[..])
        );
        assert_eq!(decode_path("a/%self").as_deref(), Ok(&b"a"[..]));
        assert_eq!(decode_path("%empty").as_deref(), Ok(&b""[..]));
        assert_eq!(decode_path("a/%empty").as_deref(), Ok(&b"a/"[..]));
        assert_eq!(decode_path("ab%+/cd").as_deref(), Ok(&b"abcd"[..]));
        assert_eq!(decode_path("ab%+/cd%+/e/f").as_deref(), Ok(&b"abcde/f"[..]));
    }

    proptest::proptest! {
        /// The shortcut for lone names gives what decoding name by name gives.
        #[test]
        fn lone_paths_decode_as_name_by_name(
            names in proptest::collection::vec("[aZ0._~-]{0,3}|%self|%2e|x%\\+", 1..4)
        ) {
            let path = names.join("/");
            if let Some(key) = lone_key(&path) {
                proptest::prop_assert_eq!(Ok(key), decode_names(&path), "{}", path);
            }
        }
    }

    #[test]
    fn refuses() {
        assert_eq!(problem("%self"), NameProblem::SelfAtRoot);
        assert_eq!(problem("a/%self/b"), NameProblem::SelfNotFile);
        assert_eq!(problem("a%+/%self"), NameProblem::SelfInContinuation);
        assert_eq!(problem("a/b%+"), NameProblem::ContinuationNotDir);
        assert_eq!(problem("a//b"), NameProblem::Empty);
        assert_eq!(problem(""), NameProblem::Empty);
        assert_eq!(problem("a/./b"), NameProblem::Dot);
        assert_eq!(problem("a%2e"), NameProblem::BadEscape);
    }

    #[test]
    fn lenient_decoding_sets_bad_paths_aside() {
        let (ok, bad) = decode_paths_lenient(["a", "%ZZ", "b/%self", "%self"]).unwrap();
        assert_eq!(ok, vec![(b"a".to_vec(), 0), (b"b".to_vec(), 2)]);
        assert_eq!(bad.len(), 2);
        assert!(bad[0].to_string().contains("%ZZ"), "{}", bad[0]);
        assert!(
            decode_paths_lenient(["a", "a/%self"]).is_err(),
            "duplicates still fail"
        );
    }

    #[test]
    fn duplicates_name_both_paths() {
        let err = decode_paths(["x", "a", "node", "a/%self"]).unwrap_err();
        assert_eq!(
            err,
            MapError::Duplicate {
                key: Key::from("a"),
                first: "a".into(),
                second: "a/%self".into()
            }
        );
        assert!(err.to_string().contains("`a/%self`"));
        let ok = decode_paths(["b", "Node", "node~0/x"]).unwrap();
        assert_eq!(
            ok,
            vec![
                (b"Node".to_vec(), 1),
                (b"b".to_vec(), 0),
                (b"node/x".to_vec(), 2)
            ]
        );
    }
}

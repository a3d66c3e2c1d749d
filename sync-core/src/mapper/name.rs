//! The names of one directory's entries: giving every component of a directory its name
//! (case groups and tags), and decoding one name back into a component or `%self`.

use super::component::Component;
use super::error::NameProblem;
use super::escape::{case_tag, escape_into, push_escaped, unescape, EMPTY_NAME};

/// The file holding the value of a key that also has keys below it.
pub const SELF_NAME: &str = "%self";

/// Suffix of a continuation component's name.
pub const CONTINUATION_SUFFIX: &str = "%+";

const TAG_MARK: char = '~';

/// What one name in a tree stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Name {
    /// `%self`: the value of the key whose directory this is.
    SelfValue,
    Comp(Component),
}

/// Lenient about canonical form: an untagged name whose case siblings exist, literal bytes
/// that would have been escaped, or non-greedy chunks all decode; callers catch keys that
/// end up stored twice.
pub(crate) fn decode_name(name: &str) -> Result<Name, NameProblem> {
    if name.is_empty() {
        return Err(NameProblem::Empty);
    }
    if name == "." || name == ".." {
        return Err(NameProblem::Dot);
    }
    if name == SELF_NAME {
        return Ok(Name::SelfValue);
    }
    let (rest, continues) = match name.strip_suffix(CONTINUATION_SUFFIX) {
        Some(rest) => (rest, true),
        None => (name, false),
    };
    let (base, tag) = match rest.split_once(TAG_MARK) {
        Some((base, tag)) => (base, Some(tag)),
        None => (rest, None),
    };
    let raw = match base {
        "" => return Err(NameProblem::Empty),
        EMPTY_NAME => Vec::new(),
        _ => unescape(base)?,
    };
    if let Some(found) = tag {
        let expected = case_tag(&raw);
        if found != expected {
            return Err(NameProblem::BadTag {
                found: found.to_string(),
                expected,
            });
        }
    }
    Ok(Name::Comp(Component { raw, continues }))
}

/// The names of the distinct components of one directory, in the same order. Depends on
/// the set of components only, so a from-scratch layout and an incremental one agree.
pub(crate) fn dir_names(comps: &[&Component]) -> Vec<String> {
    // Components that only differ in ASCII case (same `continues`) share a group: they
    // would collide on a case-insensitive file system. Each is folded once: folding inside
    // every comparison of the sort was most of the cost of naming a large directory.
    let folded: Vec<Vec<u8>> = comps.iter().map(|c| c.raw.to_ascii_lowercase()).collect();
    let same_group =
        |a: usize, b: usize| folded[a] == folded[b] && comps[a].continues == comps[b].continues;
    let mut order: Vec<usize> = (0..comps.len()).collect();
    order.sort_unstable_by(|&a, &b| {
        folded[a]
            .cmp(&folded[b])
            .then(comps[a].continues.cmp(&comps[b].continues))
            .then_with(|| comps[a].raw.cmp(&comps[b].raw))
    });
    let mut names = vec![String::new(); comps.len()];
    let mut i = 0;
    while i < order.len() {
        let lead = comps[order[i]];
        names[order[i]] = name_of(lead, false);
        let mut j = i + 1;
        while j < order.len() && same_group(order[i], order[j]) {
            debug_assert_ne!(
                lead, comps[order[j]],
                "components of a directory are distinct"
            );
            names[order[j]] = name_of(comps[order[j]], true);
            j += 1;
        }
        i = j;
    }
    names
}

fn name_of(comp: &Component, tagged: bool) -> String {
    let mut name = String::with_capacity(comp.raw.len() + 8);
    let tag = tagged.then(|| case_tag(&comp.raw));
    // Git refuses `git~1` (the NTFS short name of `.git`) on every platform, so that one
    // tagged name spells its first letter escaped: `%47it~1`.
    if tag.as_deref() == Some("1") && !comp.continues && comp.raw.eq_ignore_ascii_case(b"git") {
        push_escaped(comp.raw[0], &mut name);
        escape_into(&comp.raw[1..], &mut name);
    } else {
        escape_into(&comp.raw, &mut name);
    }
    if let Some(tag) = tag {
        name.push(TAG_MARK);
        name.push_str(&tag);
    }
    if comp.continues {
        name.push_str(CONTINUATION_SUFFIX);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comp(raw: &[u8], continues: bool) -> Component {
        Component {
            raw: raw.to_vec(),
            continues,
        }
    }

    fn names(raws: &[(&[u8], bool)]) -> Vec<String> {
        let comps: Vec<Component> = raws.iter().map(|&(r, c)| comp(r, c)).collect();
        dir_names(&comps.iter().collect::<Vec<_>>())
    }

    #[test]
    fn case_groups() {
        assert_eq!(
            names(&[(b"node", false), (b"Node", false)]),
            ["node~0", "Node"]
        );
        assert_eq!(names(&[(b"Status", false)]), ["Status"]);
        assert_eq!(
            names(&[(b"Node", true), (b"node", true), (b"Node", false)]),
            ["Node%+", "node~0%+", "Node"]
        );
        assert_eq!(
            names(&[(b"Git", false), (b"GIT", false)]),
            ["%47it~1", "GIT"]
        );
        assert_eq!(names(&[(b"Git", false), (b"git", false)]), ["Git", "git~0"]);
    }

    #[test]
    fn decoding() {
        assert_eq!(decode_name("%self"), Ok(Name::SelfValue));
        assert_eq!(decode_name("node~0"), Ok(Name::Comp(comp(b"node", false))));
        assert_eq!(decode_name("NoDe~5%+"), Ok(Name::Comp(comp(b"NoDe", true))));
        assert_eq!(decode_name("%47it~1"), Ok(Name::Comp(comp(b"Git", false))));
        assert_eq!(decode_name("%empty"), Ok(Name::Comp(comp(b"", false))));
        assert_eq!(decode_name("a b"), Ok(Name::Comp(comp(b"a b", false))));
        assert_eq!(
            decode_name("node~1"),
            Err(NameProblem::BadTag {
                found: "1".into(),
                expected: "0".into()
            })
        );
        assert_eq!(decode_name("~0"), Err(NameProblem::Empty));
        assert_eq!(decode_name(".."), Err(NameProblem::Dot));
        assert_eq!(decode_name("%self%+"), Err(NameProblem::BadEscape));
    }
}

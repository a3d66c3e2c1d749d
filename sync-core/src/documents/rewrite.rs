//! Rewriting a document from the keys of its subtree (KV → Git): the old document gives the
//! shape and the scalar kinds, the keys give the content.

use std::collections::BTreeMap;

use super::node::{Node, Scalar, ScalarKind};
use super::{json, yaml, DocFormat, Document};

/// The outcome of a rewrite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    /// The new document, or `None` when no key of the subtree is left (the file goes).
    pub document: Option<Document>,
    /// Keys (relative to the subtree) no document can hold beside the others: a key that is
    /// also a prefix of another (`a` and `a/b`), a non-UTF-8 key or value. They are left to
    /// be plain files, which `validate` and `apply` then report.
    pub misfits: Vec<Vec<u8>>,
}

/// Rewrites `old` to stand for exactly `keys` (relative key → value), less the misfits.
/// Places the old document had keep their kind (number, boolean) while the new text still
/// reads as that kind in `format`; new places are strings. An array stays an array while
/// its keys are exactly `0`…`n-1`; otherwise it becomes an object with those members.
pub fn rewrite(
    format: DocFormat,
    old: Option<&Document>,
    keys: &BTreeMap<Vec<u8>, Vec<u8>>,
) -> Rewrite {
    let mut misfits = Vec::new();
    let mut root = Trie::default();
    for (key, value) in keys {
        match (std::str::from_utf8(key), std::str::from_utf8(value)) {
            (Ok(k), Ok(v)) => root.insert(k, v),
            _ => misfits.push(key.clone()),
        }
    }
    let document = if root.children.is_empty() {
        None
    } else {
        let node = build(format, &mut root, old.map(|d| &d.root), &mut misfits);
        Some(Document { root: node })
    };
    misfits.sort();
    Rewrite { document, misfits }
}

/// The keys of a subtree by segment; a place may (wrongly) hold a value and children.
#[derive(Default)]
struct Trie<'a> {
    key: &'a str,
    value: Option<&'a str>,
    children: BTreeMap<&'a str, Trie<'a>>,
}

impl<'a> Trie<'a> {
    fn insert(&mut self, key: &'a str, value: &'a str) {
        let mut at = self;
        for segment in key.split('/') {
            at = at.children.entry(segment).or_default();
        }
        at.key = key;
        at.value = Some(value);
    }

    fn keys(&self, out: &mut Vec<Vec<u8>>) {
        if self.value.is_some() {
            out.push(self.key.as_bytes().to_vec());
        }
        for child in self.children.values() {
            child.keys(out);
        }
    }
}

fn build(
    format: DocFormat,
    trie: &mut Trie<'_>,
    old: Option<&Node>,
    misfits: &mut Vec<Vec<u8>>,
) -> Node {
    if trie.value.is_some() && !trie.children.is_empty() {
        // One place cannot be a value and a container. The old document decides which
        // stays: a scalar keeps its value, otherwise the deeper keys win.
        if matches!(old, Some(Node::Scalar(_))) {
            for child in trie.children.values() {
                child.keys(misfits);
            }
            trie.children.clear();
        } else {
            misfits.push(trie.key.as_bytes().to_vec());
            trie.value = None;
        }
    }
    if let Some(text) = trie.value {
        let kind = match old {
            Some(Node::Scalar(s)) if fits(format, s.kind, text) => s.kind,
            _ => ScalarKind::String,
        };
        return Node::Scalar(Scalar {
            kind,
            text: text.to_owned(),
        });
    }
    let mut indexed: Vec<(usize, &mut Trie<'_>)> = Vec::new();
    let mut named: Vec<(&str, &mut Trie<'_>)> = Vec::new();
    for (name, child) in trie.children.iter_mut() {
        match index(name) {
            Some(i) => indexed.push((i, child)),
            None => named.push((name, child)),
        }
    }
    indexed.sort_by_key(|(i, _)| *i);
    let dense = named.is_empty() && indexed.iter().enumerate().all(|(n, (i, _))| n == *i);
    match old {
        Some(Node::Array(items)) if dense => Node::Array(
            indexed
                .into_iter()
                .map(|(i, child)| build(format, child, items.get(i), misfits))
                .collect(),
        ),
        _ => {
            let mut members = BTreeMap::new();
            for (i, child) in indexed {
                let was = old_member(old, &i.to_string());
                members.insert(i.to_string(), build(format, child, was, misfits));
            }
            for (name, child) in named {
                let was = old_member(old, name);
                members.insert(name.to_owned(), build(format, child, was, misfits));
            }
            Node::Object(members)
        }
    }
}

/// What the old document had under member `name` (an array's element by its index).
fn old_member<'n>(old: Option<&'n Node>, name: &str) -> Option<&'n Node> {
    match old? {
        Node::Object(m) => m.get(name),
        Node::Array(items) => index(name).and_then(|i| items.get(i)),
        Node::Scalar(_) => None,
    }
}

/// An array index as a key segment spells it: decimal, no sign, no leading zero.
fn index(segment: &str) -> Option<usize> {
    let plain = !segment.is_empty()
        && segment.bytes().all(|b| b.is_ascii_digit())
        && (segment == "0" || !segment.starts_with('0'));
    plain.then(|| segment.parse().ok()).flatten()
}

fn fits(format: DocFormat, kind: ScalarKind, text: &str) -> bool {
    match format {
        DocFormat::Json => json::fits(kind, text),
        DocFormat::Yaml => yaml::fits(kind, text),
    }
}

//! The document tree both formats parse into: objects with sorted members, arrays, and
//! scalars that keep their text as written, so a key's value is that text byte for byte.

use std::collections::BTreeMap;

use super::{push_pointer, DocError};

/// What a scalar was in the document; the key's value is its text either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScalarKind {
    String,
    Number,
    Bool,
}

/// A leaf: its kind and its text (a string's content, a number or boolean as written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scalar {
    pub kind: ScalarKind,
    pub text: String,
}

/// One place in a document. Objects are sorted by member name (bytewise), which is the
/// canonical order; neither objects nor arrays are ever empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Object(BTreeMap<String, Node>),
    Array(Vec<Node>),
    Scalar(Scalar),
}

impl Node {
    pub fn string(text: impl Into<String>) -> Node {
        Node::Scalar(Scalar {
            kind: ScalarKind::String,
            text: text.into(),
        })
    }

    pub(crate) fn entries(&self, path: &mut Vec<String>, out: &mut Vec<(Vec<u8>, Vec<u8>)>) {
        match self {
            Node::Scalar(s) => out.push((path.join("/").into_bytes(), s.text.clone().into_bytes())),
            Node::Object(members) => {
                for (name, child) in members {
                    path.push(name.clone());
                    child.entries(path, out);
                    path.pop();
                }
            }
            Node::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    path.push(i.to_string());
                    child.entries(path, out);
                    path.pop();
                }
            }
        }
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            Node::Object(m) => {
                Value::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
            Node::Array(a) => Value::Array(a.iter().map(Node::to_json).collect()),
            Node::Scalar(s) => match s.kind {
                ScalarKind::String => Value::String(s.text.clone()),
                ScalarKind::Bool => {
                    Value::Bool(matches!(s.text.as_str(), "true" | "True" | "TRUE"))
                }
                ScalarKind::Number => number_value(&s.text),
            },
        }
    }
}

/// A number's JSON value: its own text when JSON can spell it, else the value YAML's core
/// schema gives it, else (infinity, NaN) its text as a string.
fn number_value(text: &str) -> serde_json::Value {
    if let Some(n) = json_number(text) {
        return serde_json::Value::Number(n);
    }
    use saphyr::Scalar as Y;
    match Y::parse_from_cow(text.into()) {
        Y::Integer(i) => serde_json::Value::Number(i.into()),
        Y::FloatingPoint(f) => serde_json::Number::from_f64(f.0)
            .map(serde_json::Value::Number)
            .unwrap_or_else(|| serde_json::Value::String(text.to_owned())),
        _ => serde_json::Value::String(text.to_owned()),
    }
}

/// `text` as a JSON number spelled exactly so, or `None` (serde_json keeps the digits as
/// written with `arbitrary_precision`; surrounding blanks are not part of a number).
pub(crate) fn json_number(text: &str) -> Option<serde_json::Number> {
    let n: serde_json::Number = serde_json::from_str(text).ok()?;
    (n.to_string() == text).then_some(n)
}

/// Builds objects and arrays for the parsers, refusing what has no key: null, empty
/// containers, member names holding `/` (they would split into two segments).
pub(crate) fn object(pointer: &str, members: BTreeMap<String, Node>) -> Result<Node, DocError> {
    if members.is_empty() {
        return Err(DocError::at(pointer, "an empty object stands for no key"));
    }
    Ok(Node::Object(members))
}

pub(crate) fn array(pointer: &str, items: Vec<Node>) -> Result<Node, DocError> {
    if items.is_empty() {
        return Err(DocError::at(pointer, "an empty array stands for no key"));
    }
    Ok(Node::Array(items))
}

pub(crate) fn null(pointer: &str) -> DocError {
    DocError::at(pointer, "null stands for no key")
}

/// Checks a member name and returns the pointer of its value.
pub(crate) fn member(pointer: &str, name: &str) -> Result<String, DocError> {
    let child = push_pointer(pointer, name);
    if name.contains('/') {
        return Err(DocError::at(
            &child,
            "a member name cannot hold `/`: it separates key segments",
        ));
    }
    Ok(child)
}

//! JSON documents through serde_json: numbers keep their digits (`arbitrary_precision`),
//! duplicate member names are refused, output is serde_json's pretty form.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::node::{self, json_number, Node, Scalar, ScalarKind};
use super::{push_pointer, DocError};

pub(super) fn parse(bytes: &[u8]) -> Result<Node, DocError> {
    let located = |e: serde_json::Error| DocError {
        pointer: String::new(),
        message: format!("not valid JSON: {}", strip_position(&e)),
        line: Some(e.line()).filter(|l| *l > 0),
        column: Some(e.column()).filter(|_| e.line() > 0),
    };
    // serde_json keeps the last of two equal member names silently; a document must say
    // one thing per key, so a first pass refuses duplicates.
    serde_json::from_slice::<NoDuplicates>(bytes).map_err(located)?;
    let value: Value = serde_json::from_slice(bytes).map_err(located)?;
    convert("", value)
}

fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

fn convert(pointer: &str, value: Value) -> Result<Node, DocError> {
    match value {
        Value::Null => Err(node::null(pointer)),
        Value::Bool(b) => Ok(Node::Scalar(Scalar {
            kind: ScalarKind::Bool,
            text: b.to_string(),
        })),
        Value::Number(n) => Ok(Node::Scalar(Scalar {
            kind: ScalarKind::Number,
            text: n.to_string(),
        })),
        Value::String(s) => Ok(Node::string(s)),
        Value::Array(items) => {
            let items = items
                .into_iter()
                .enumerate()
                .map(|(i, v)| convert(&push_pointer(pointer, &i.to_string()), v))
                .collect::<Result<Vec<_>, _>>()?;
            node::array(pointer, items)
        }
        Value::Object(members) => {
            let mut out = BTreeMap::new();
            for (name, v) in members {
                let child = node::member(pointer, &name)?;
                out.insert(name, convert(&child, v)?);
            }
            node::object(pointer, out)
        }
    }
}

pub(super) fn render(root: &Node) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(&to_value(root))
        .expect("a JSON value of strings, numbers and booleans always serializes");
    out.push(b'\n');
    out
}

fn to_value(node: &Node) -> Value {
    match node {
        Node::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), to_value(v))).collect()),
        Node::Array(a) => Value::Array(a.iter().map(to_value).collect()),
        Node::Scalar(s) => match s.kind {
            ScalarKind::String => Value::String(s.text.clone()),
            ScalarKind::Bool => Value::Bool(s.text == "true"),
            // A number's text came from a JSON document or passed `fits`; should a YAML
            // spelling arrive here anyway, it is written as a string rather than lost.
            ScalarKind::Number => json_number(&s.text)
                .map(Value::Number)
                .unwrap_or_else(|| Value::String(s.text.clone())),
        },
    }
}

/// Whether `text` is still a `kind` in JSON, spelled exactly so.
pub(super) fn fits(kind: ScalarKind, text: &str) -> bool {
    match kind {
        ScalarKind::String => true,
        ScalarKind::Bool => matches!(text, "true" | "false"),
        ScalarKind::Number => json_number(text).is_some(),
    }
}

/// A JSON value read only to find a member name given twice in one object.
struct NoDuplicates;

impl<'de> Deserialize<'de> for NoDuplicates {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDuplicatesVisitor)
    }
}

struct NoDuplicatesVisitor;

impl<'de> Visitor<'de> for NoDuplicatesVisitor {
    type Value = NoDuplicates;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_i64<E>(self, _: i64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_u64<E>(self, _: u64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_f64<E>(self, _: f64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_str<E>(self, _: &str) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_unit<E>(self) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NoDuplicates, A::Error> {
        while seq.next_element::<NoDuplicates>()?.is_some() {}
        Ok(NoDuplicates)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NoDuplicates, A::Error> {
        let mut seen = std::collections::BTreeSet::new();
        while let Some(name) = map.next_key::<String>()? {
            // With `arbitrary_precision` a number arrives as a one-member map whose name is
            // serde_json's private token; its value is the number's text.
            if !seen.insert(name.clone()) {
                return Err(de::Error::custom(format!("member `{name}` is given twice")));
            }
            map.next_value::<NoDuplicates>()?;
        }
        Ok(NoDuplicates)
    }
}

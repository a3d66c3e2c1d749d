//! YAML documents through saphyr (YAML 1.2, core schema): scalars are loaded unresolved so
//! numbers and booleans keep their spelling, and written back by saphyr's emitter.

use std::borrow::Cow;
use std::collections::BTreeMap;

use saphyr::{
    AnnotatedMapping, Mapping, MarkedYaml, Scalar as Y, ScalarStyle, Tag, Yaml, YamlData,
    YamlEmitter, YamlLoader,
};

use super::node::{self, Node, Scalar, ScalarKind};
use super::{push_pointer, DocError};

pub(super) fn parse(bytes: &[u8]) -> Result<Node, DocError> {
    let text =
        std::str::from_utf8(bytes).map_err(|e| DocError::at("", format!("not UTF-8: {e}")))?;
    let mut parser = saphyr_parser::Parser::new_from_str(text);
    let mut loader = YamlLoader::<MarkedYaml>::default();
    loader.early_parse(false);
    let scanned = parser.load(&mut loader, true);
    if let Some(e) = scanned.err().or_else(|| loader.error().cloned()) {
        return Err(DocError {
            pointer: String::new(),
            message: format!("not valid YAML: {}", e.info()),
            line: Some(e.marker().line()),
            column: Some(e.marker().col() + 1),
        });
    }
    let mut docs = loader.into_documents();
    match docs.len() {
        0 => Err(DocError::at("", "the file holds no YAML document")),
        1 => convert("", docs.remove(0)),
        n => Err(DocError::at(
            "",
            format!("the file holds {n} YAML documents; one is expected"),
        )),
    }
}

fn located(e: DocError, node: &MarkedYaml) -> DocError {
    DocError {
        line: e.line.or(Some(node.span.start.line())),
        column: e.column.or(Some(node.span.start.col() + 1)),
        ..e
    }
}

fn convert(pointer: &str, node: MarkedYaml) -> Result<Node, DocError> {
    let at = node.clone();
    let result = match node.data {
        YamlData::Representation(text, style, tag) => scalar(pointer, text, style, tag.as_ref()),
        YamlData::Tagged(_, inner) => return convert(pointer, *inner),
        YamlData::Sequence(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| convert(&push_pointer(pointer, &i.to_string()), v))
            .collect::<Result<Vec<_>, _>>()
            .and_then(|items| node::array(pointer, items)),
        YamlData::Mapping(m) => mapping(pointer, m),
        // The loader resolves aliases and, with `early_parse(false)`, leaves every scalar
        // unresolved; anything else is a value it could not make sense of.
        YamlData::Value(_) | YamlData::Alias(_) | YamlData::BadValue => {
            Err(DocError::at(pointer, "a value YAML could not resolve"))
        }
    };
    result.map_err(|e| located(e, &at))
}

fn mapping(pointer: &str, m: AnnotatedMapping<'_, MarkedYaml<'_>>) -> Result<Node, DocError> {
    let mut out = BTreeMap::new();
    for (k, v) in m {
        let name = match &k.data {
            YamlData::Representation(text, _, _) => text.to_string(),
            _ => {
                return Err(located(
                    DocError::at(
                        pointer,
                        "a member name must be a plain value, not a list or map",
                    ),
                    &k,
                ))
            }
        };
        let child = node::member(pointer, &name).map_err(|e| located(e, &k))?;
        if out.contains_key(&name) {
            // `1` and `"1"` are two keys to YAML but one key segment to us.
            return Err(located(DocError::at(&child, "member name given twice"), &k));
        }
        let value = convert(&child, v)?;
        out.insert(name, value);
    }
    node::object(pointer, out)
}

fn scalar(
    pointer: &str,
    text: Cow<'_, str>,
    style: ScalarStyle,
    tag: Option<&Cow<'_, Tag>>,
) -> Result<Node, DocError> {
    let kind = match Y::parse_from_cow_and_metadata(text.clone(), style, tag) {
        None => {
            return Err(DocError::at(
                pointer,
                format!("`{text}` does not fit its tag"),
            ))
        }
        Some(Y::Null) => return Err(node::null(pointer)),
        Some(Y::Boolean(_)) => ScalarKind::Bool,
        Some(Y::Integer(_) | Y::FloatingPoint(_)) => ScalarKind::Number,
        Some(Y::String(_)) => ScalarKind::String,
    };
    Ok(Node::Scalar(Scalar {
        kind,
        text: text.into_owned(),
    }))
}

/// Whether `text`, written plain, reads back as a `kind` in YAML.
pub(super) fn fits(kind: ScalarKind, text: &str) -> bool {
    let read = Y::parse_from_cow(text.into());
    match kind {
        ScalarKind::String => true,
        ScalarKind::Bool => matches!(read, Y::Boolean(_)),
        ScalarKind::Number => {
            matches!(read, Y::Integer(_) | Y::FloatingPoint(_)) && !text.contains(['\n', ' ', '#'])
        }
    }
}

pub(super) fn render(root: &Node) -> Vec<u8> {
    let mut out = String::new();
    YamlEmitter::new(&mut out)
        .dump(&to_yaml(root))
        .expect("writing YAML into a String cannot fail");
    // The emitter starts every stream with `---`; one document per file needs no marker.
    let body = out.strip_prefix("---\n").unwrap_or(&out);
    let mut bytes = body.as_bytes().to_vec();
    if !bytes.ends_with(b"\n") {
        bytes.push(b'\n');
    }
    bytes
}

fn to_yaml(node: &Node) -> Yaml<'_> {
    match node {
        Node::Object(m) => {
            let mut out = Mapping::new();
            for (k, v) in m {
                out.insert(Yaml::Value(Y::String(k.as_str().into())), to_yaml(v));
            }
            Yaml::Mapping(out)
        }
        Node::Array(a) => Yaml::Sequence(a.iter().map(to_yaml).collect()),
        Node::Scalar(s) => match s.kind {
            ScalarKind::String => Yaml::Value(Y::String(s.text.as_str().into())),
            // Numbers and booleans are written as they were spelled; `fits` made sure the
            // spelling reads back as the same kind.
            ScalarKind::Number | ScalarKind::Bool if fits(s.kind, &s.text) => {
                Yaml::Representation(s.text.as_str().into(), ScalarStyle::Plain, None)
            }
            _ => Yaml::Value(Y::String(s.text.as_str().into())),
        },
    }
}

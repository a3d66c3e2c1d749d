//! Document areas, property-tested: arbitrary documents survive render → parse → expand →
//! rewrite unchanged, and a rewrite from changed keys stands for exactly those keys.

use std::collections::BTreeMap;

use proptest::prelude::*;
use sync_core::documents::{
    canonical, expand, parse, rewrite, DocFormat, Document, Node, Scalar, ScalarKind,
};

fn scalar(kind: ScalarKind, text: &str) -> Node {
    Node::Scalar(Scalar {
        kind,
        text: text.to_owned(),
    })
}

fn number(format: DocFormat) -> BoxedStrategy<String> {
    let common = prop_oneof![
        any::<i64>().prop_map(|i| i.to_string()),
        (any::<i32>(), 0u32..1000, 0usize..3)
            .prop_map(|(i, f, zeros)| format!("{i}.{f}{}", "0".repeat(zeros))),
        (1u32..100, -20i32..20).prop_map(|(m, e)| format!("{m}e{e:+}")),
        Just("-0".to_owned()),
        Just("1.50".to_owned()),
        Just("12345678901234567890123".to_owned()),
    ];
    match format {
        DocFormat::Json => prop_oneof![common, Just("1e+2".to_owned())].boxed(),
        DocFormat::Yaml => prop_oneof![
            common,
            Just("0x1F".to_owned()),
            Just("0o17".to_owned()),
            Just("+5".to_owned()),
            Just(".inf".to_owned()),
            Just("-.Inf".to_owned()),
        ]
        .boxed(),
    }
}

fn boolean(format: DocFormat) -> BoxedStrategy<String> {
    match format {
        DocFormat::Json => prop_oneof![Just("true"), Just("false")]
            .prop_map(String::from)
            .boxed(),
        DocFormat::Yaml => prop_oneof![Just("true"), Just("False"), Just("TRUE")]
            .prop_map(String::from)
            .boxed(),
    }
}

/// Strings that look like other things, and arbitrary ones.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z0-9 ._:#-]{0,8}",
        prop_oneof![
            Just(""),
            Just("5"),
            Just("true"),
            Just("null"),
            Just("~"),
            Just("- x"),
            Just("a: b"),
            Just("line\nnext\n"),
            Just("\n"),
            Just(" lead"),
            Just("0x1F"),
            Just("---"),
            Just("..."),
            Just("'q'"),
            Just("\u{feff}bom"),
            Just("tab\there"),
            Just("\u{85}\u{2028}"),
        ]
        .prop_map(String::from),
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9_-]{0,6}",
        text().prop_map(|s| s.replace('/', "_")),
    ]
}

fn leaf(format: DocFormat) -> BoxedStrategy<Node> {
    prop_oneof![
        3 => text().prop_map(|t| scalar(ScalarKind::String, &t)),
        1 => number(format).prop_map(|t| scalar(ScalarKind::Number, &t)),
        1 => boolean(format).prop_map(|t| scalar(ScalarKind::Bool, &t)),
    ]
    .boxed()
}

fn document(format: DocFormat) -> impl Strategy<Value = Document> {
    let container = |inner: BoxedStrategy<Node>| {
        prop_oneof![
            prop::collection::btree_map(name(), inner.clone(), 1..5).prop_map(Node::Object),
            prop::collection::vec(inner, 1..4).prop_map(Node::Array),
        ]
    };
    leaf(format)
        .prop_recursive(4, 40, 5, move |inner| container(inner).boxed())
        .prop_filter("the root is a container", |n| !matches!(n, Node::Scalar(_)))
        .prop_map(|root| Document { root })
}

fn keys_of(doc: &Document) -> BTreeMap<Vec<u8>, Vec<u8>> {
    doc.entries().into_iter().collect()
}

fn round_trip(format: DocFormat, doc: Document) -> Result<(), TestCaseError> {
    let text = doc.render(format);
    let parsed = parse(format, &text)
        .map_err(|e| TestCaseError::fail(format!("{e}\n{}", String::from_utf8_lossy(&text))))?;
    prop_assert_eq!(&parsed, &doc, "{}", String::from_utf8_lossy(&text));
    prop_assert_eq!(canonical(format, &text).unwrap(), text.clone());
    let keys = keys_of(&doc);
    prop_assert_eq!(expand(format, &text).unwrap().len(), keys.len());
    let again = rewrite(format, Some(&doc), &keys);
    prop_assert!(again.misfits.is_empty());
    prop_assert_eq!(again.document.map(|d| d.render(format)), Some(text));
    Ok(())
}

/// Changes some values, drops some keys and adds some, then checks the rewrite stands for
/// exactly the keys it did not set aside, and that those could not fit.
fn rewrite_follows_keys(
    format: DocFormat,
    doc: Document,
    edits: Vec<(usize, Option<String>)>,
    added: Vec<(String, String)>,
) -> Result<(), TestCaseError> {
    let mut keys = keys_of(&doc);
    let names: Vec<Vec<u8>> = keys.keys().cloned().collect();
    for (i, value) in edits {
        let key = &names[i % names.len()];
        match value {
            Some(v) => keys.insert(key.clone(), v.into_bytes()),
            None => keys.remove(key),
        };
    }
    for (k, v) in added {
        keys.insert(k.into_bytes(), v.into_bytes());
    }
    let out = rewrite(format, Some(&doc), &keys);
    for m in &out.misfits {
        let holds_more = keys.keys().any(|k| {
            k != m
                && (k.starts_with(&[m.as_slice(), b"/"].concat())
                    || m.starts_with(&[k.as_slice(), b"/"].concat()))
        });
        prop_assert!(holds_more, "misfit {:?} fits", String::from_utf8_lossy(m));
    }
    let mut expect = keys.clone();
    for m in &out.misfits {
        expect.remove(m);
    }
    match out.document {
        None => prop_assert!(expect.is_empty()),
        Some(new) => {
            let text = new.render(format);
            let got: BTreeMap<_, _> = expand(format, &text)
                .map_err(|e| TestCaseError::fail(e.to_string()))?
                .into_iter()
                .collect();
            // A value that did not change keeps its kind.
            for (key, value) in keys_of(&doc) {
                if expect.get(&key) == Some(&value) {
                    let before = scalar_at(&doc.root, &key).map(|s| s.kind);
                    let after = scalar_at(&new.root, &key).map(|s| s.kind);
                    prop_assert_eq!(before, after, "{:?}", String::from_utf8_lossy(&key));
                }
            }
            prop_assert_eq!(got, expect);
        }
    }
    Ok(())
}

/// The scalar a relative key names in a document.
fn scalar_at<'a>(node: &'a Node, key: &[u8]) -> Option<&'a Scalar> {
    let mut at = node;
    for segment in std::str::from_utf8(key).ok()?.split('/') {
        at = match at {
            Node::Object(m) => m.get(segment)?,
            Node::Array(a) => a.get(segment.parse::<usize>().ok()?)?,
            Node::Scalar(_) => return None,
        };
    }
    match at {
        Node::Scalar(s) => Some(s),
        _ => None,
    }
}

fn edits() -> impl Strategy<Value = Vec<(usize, Option<String>)>> {
    prop::collection::vec((any::<usize>(), prop::option::of(text())), 0..4)
}

fn added() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(("[a-c0-2]{1,2}(/[a-c0-2]{1,2}){0,2}", text()), 0..3)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn json_documents_round_trip(doc in document(DocFormat::Json)) {
        round_trip(DocFormat::Json, doc)?;
    }

    #[test]
    fn yaml_documents_round_trip(doc in document(DocFormat::Yaml)) {
        round_trip(DocFormat::Yaml, doc)?;
    }

    #[test]
    fn json_rewrite_stands_for_the_keys(doc in document(DocFormat::Json), e in edits(), a in added()) {
        rewrite_follows_keys(DocFormat::Json, doc, e, a)?;
    }

    #[test]
    fn yaml_rewrite_stands_for_the_keys(doc in document(DocFormat::Yaml), e in edits(), a in added()) {
        rewrite_follows_keys(DocFormat::Yaml, doc, e, a)?;
    }
}

fn keys(format: DocFormat, text: &str) -> Vec<(String, String)> {
    expand(format, text.as_bytes())
        .unwrap()
        .into_iter()
        .map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn scalars_are_keys_with_their_text_as_written() {
    let json = r#"{"port": 8080, "ratio": 1.50, "on": true, "name": "a b", "hosts": ["x", "y"]}"#;
    assert_eq!(
        keys(DocFormat::Json, json),
        pairs(&[
            ("hosts/0", "x"),
            ("hosts/1", "y"),
            ("name", "a b"),
            ("on", "true"),
            ("port", "8080"),
            ("ratio", "1.50"),
        ])
    );
    let yaml = "port: 8080\nratio: 1.50\non: True\nmask: 0x1F\nquoted: '5'\nhosts:\n  - x\n";
    assert_eq!(
        keys(DocFormat::Yaml, yaml),
        pairs(&[
            ("hosts/0", "x"),
            ("mask", "0x1F"),
            ("on", "True"),
            ("port", "8080"),
            ("quoted", "5"),
            ("ratio", "1.50"),
        ])
    );
}

#[test]
fn canonical_form_sorts_members_and_indents_by_two() {
    let json = br#"{"b":{"y":1.50,"x":[true]},"a":"s"}"#;
    assert_eq!(
        String::from_utf8(canonical(DocFormat::Json, json).unwrap()).unwrap(),
        "{\n  \"a\": \"s\",\n  \"b\": {\n    \"x\": [\n      true\n    ],\n    \"y\": 1.50\n  }\n}\n"
    );
    let yaml = b"b:\n    y: 1.50\n    x: [true, '5']\na: s\n";
    assert_eq!(
        String::from_utf8(canonical(DocFormat::Yaml, yaml).unwrap()).unwrap(),
        "a: s\nb:\n  x:\n    - true\n    - \"5\"\n  y: 1.50\n"
    );
}

#[test]
fn what_stands_for_no_key_is_refused_with_its_pointer() {
    let cases: &[(DocFormat, &str, &str)] = &[
        (DocFormat::Json, r#"{"a": {"b": null}}"#, "/a/b"),
        (DocFormat::Json, r#"{"a": [1, {}]}"#, "/a/1"),
        (DocFormat::Json, r#"{"a": []}"#, "/a"),
        (DocFormat::Json, r#"{"a/b": 1}"#, "/a~1b"),
        (DocFormat::Json, r#"{"a": 1, "a": 2}"#, ""),
        (DocFormat::Json, r#"{"a": "#, ""),
        (DocFormat::Json, "5", ""),
        (DocFormat::Json, "{}", ""),
        (DocFormat::Yaml, "a:\n  b: ~\n", "/a/b"),
        (DocFormat::Yaml, "a:\n  b:\n", "/a/b"),
        (DocFormat::Yaml, "a: {}\n", "/a"),
        (DocFormat::Yaml, "a: 1\na: 2\n", ""),
        (DocFormat::Yaml, "1: x\n\"1\": y\n", "/1"),
        (DocFormat::Yaml, "a: [\n", ""),
        (DocFormat::Yaml, "a: 1\n---\nb: 2\n", ""),
        (DocFormat::Yaml, "", ""),
        (DocFormat::Yaml, "just text\n", ""),
    ];
    for (format, text, pointer) in cases {
        let err = parse(*format, text.as_bytes()).expect_err(text);
        assert_eq!(&err.pointer, pointer, "{text}: {err}");
    }
    let err = parse(DocFormat::Yaml, b"a: 1\nb: [\n").unwrap_err();
    assert!(err.line.is_some(), "{err}");
}

#[test]
fn a_changed_value_keeps_its_kind_while_its_text_still_reads_as_that_kind() {
    let doc = parse(DocFormat::Json, br#"{"n": 1, "b": true, "s": "x", "m": 2}"#).unwrap();
    let mut keys: BTreeMap<Vec<u8>, Vec<u8>> = keys_of(&doc);
    keys.insert(b"n".to_vec(), b"2.50".to_vec());
    keys.insert(b"b".to_vec(), b"false".to_vec());
    keys.insert(b"s".to_vec(), b"7".to_vec());
    keys.insert(b"m".to_vec(), b"many".to_vec());
    keys.insert(b"new".to_vec(), b"3".to_vec());
    let out = rewrite(DocFormat::Json, Some(&doc), &keys);
    assert!(out.misfits.is_empty());
    assert_eq!(
        String::from_utf8(out.document.unwrap().render(DocFormat::Json)).unwrap(),
        "{\n  \"b\": false,\n  \"m\": \"many\",\n  \"n\": 2.50,\n  \"new\": \"3\",\n  \"s\": \"7\"\n}\n"
    );
}

#[test]
fn an_array_with_a_gap_becomes_an_object_and_a_value_cannot_be_a_prefix() {
    let doc = parse(DocFormat::Yaml, b"l: [a, b, c]\nv: 1\n").unwrap();
    let mut keys = keys_of(&doc);
    keys.remove(b"l/1".as_slice());
    keys.insert(b"v/deeper".to_vec(), b"x".to_vec());
    let out = rewrite(DocFormat::Yaml, Some(&doc), &keys);
    assert_eq!(out.misfits, vec![b"v/deeper".to_vec()]);
    assert_eq!(
        String::from_utf8(out.document.unwrap().render(DocFormat::Yaml)).unwrap(),
        "l:\n  \"0\": a\n  \"2\": c\nv: 1\n"
    );
    let gone = rewrite(DocFormat::Yaml, Some(&doc), &BTreeMap::new());
    assert_eq!(gone.document, None);
}

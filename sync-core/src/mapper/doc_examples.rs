//! The example table of docs/mapping.md, read from the file itself and checked row by row,
//! so the documentation cannot drift from the code.

use std::collections::BTreeMap;

use super::{decode_path, layout_all};
use crate::tree::{DirPlan, PlanEntry};

const DOC: &str = include_str!("../../../docs/mapping.md");

/// Expands the table's notation: `{N*c}` is N copies of `c`, `\xNN` one byte.
fn expand(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix('{') {
            let close = after.find('}').expect("unclosed {");
            let (n, ch) = after[..close].split_once('*').expect("{N*c}");
            let n: usize = n.parse().expect("count");
            out.extend(std::iter::repeat_n(ch.as_bytes(), n).flatten());
            rest = &after[close + 1..];
        } else if let Some(after) = rest.strip_prefix("\\x") {
            out.push(u8::from_str_radix(&after[..2], 16).expect("hex byte"));
            rest = &after[2..];
        } else {
            let mut buf = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// The items of one cell: backticked texts, and `(empty)` for the empty key.
fn items(cell: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = cell;
    loop {
        let tick = rest.find('`');
        let empty = rest.find("(empty)");
        match (tick, empty) {
            (Some(t), e) if e.is_none_or(|e| t < e) => {
                let after = &rest[t + 1..];
                let close = after.find('`').expect("unclosed backtick");
                out.push(expand(&after[..close]));
                rest = &after[close + 1..];
            }
            (_, Some(e)) => {
                out.push(Vec::new());
                rest = &rest[e + "(empty)".len()..];
            }
            (None, None) => return out,
            (Some(_), None) => unreachable!(),
        }
    }
}

fn rows() -> Vec<(Vec<Vec<u8>>, Vec<String>)> {
    let start = DOC.find("<!-- examples:begin -->").expect("begin marker");
    let end = DOC.find("<!-- examples:end -->").expect("end marker");
    DOC[start..end]
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|---"))
        .skip(1)
        .map(|line| {
            let cells: Vec<&str> = line.split('|').collect();
            let keys = items(cells[1]);
            let paths = items(cells[2])
                .into_iter()
                .map(|p| String::from_utf8(p).expect("paths are text"))
                .collect::<Vec<_>>();
            assert_eq!(keys.len(), paths.len(), "row {line}");
            (keys, paths)
        })
        .collect()
}

fn files(plan: DirPlan<(), usize>, dir: &str, out: &mut BTreeMap<String, usize>) {
    for (name, entry) in plan.entries {
        let path = if dir.is_empty() {
            name
        } else {
            format!("{dir}/{name}")
        };
        match entry {
            PlanEntry::File(v) => assert!(out.insert(path, v).is_none()),
            PlanEntry::Dir(sub) => files(sub, &path, out),
            PlanEntry::Existing { .. } => panic!("a fresh layout has no existing entries"),
        }
    }
}

#[test]
fn every_documented_example_holds() {
    let rows = rows();
    assert!(rows.len() >= 15, "the table has {} rows", rows.len());
    for (keys, paths) in rows {
        let plan = layout_all::<(), usize>(keys.iter().cloned().zip(0..));
        let mut got = BTreeMap::new();
        files(plan, "", &mut got);
        let want: BTreeMap<String, usize> = paths.iter().cloned().zip(0..).collect();
        assert_eq!(got, want, "keys {keys:?}");
        for (key, path) in keys.iter().zip(&paths) {
            assert_eq!(decode_path(path).as_ref(), Ok(key), "path {path}");
        }
    }
}

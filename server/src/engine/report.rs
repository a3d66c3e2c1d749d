//! The plan as one serializable document: per area what an apply would add, change and
//! delete, each key with its file. `kvgit plan` (text and `--format json`) and `GET /api/v1/plan` all render it.
//!
//! Keys are bytes: `key` is the key as text when it is UTF-8 (else null) and `key_b64` is
//! always there (standard base64), so a script never has to guess. Values are never part
//! of the document (they may be secrets and the HTTP endpoint has no token); the text
//! rendering alone previews the live value Git overwrites, from a field not serialized.

use super::apply::{AreaPlan, OpKind};
use base64::Engine as _;
use gitstore::ObjectId;
use serde::Serialize;
use sync_core::{Key, Value};

/// What `kvgit plan` would tell for the selected areas.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    /// The commit planned from (full id), or null when the branch has no commits yet.
    pub commit: Option<String>,
    pub areas: Vec<AreaReport>,
    pub summary: Summary,
}

/// Totals over every area, and whether an apply would write anything.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub add: usize,
    pub change: usize,
    pub delete: usize,
    /// What `--detailed-exitcode` turns into exit code 2.
    pub changes: bool,
}

/// One area's part of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct AreaReport {
    pub area: String,
    pub mode: &'static str,
    /// The area's prefix as text (invalid UTF-8 replaced; config prefixes are text).
    pub prefix: String,
    pub path: String,
    /// `--exact`: the area becomes exactly the tree of `commit`, whatever the base.
    pub exact: bool,
    /// Exact restores of areas that record KV changes (`kv-to-git`, `both`) commit the
    /// restore on the branch: this names the commit restored from (full id).
    pub restore_commit_from: Option<String>,
    pub adds: Vec<KeyReport>,
    pub changes: Vec<KeyReport>,
    pub deletes: Vec<KeyReport>,
    /// Keys whose live value changed too and is overwritten because Git wins.
    pub conflicts: Vec<KeyReport>,
    /// git-to-kv keys whose live value differs from Git and is left alone (self_heal off).
    pub drift: Vec<KeyReport>,
    /// Keys only the KV store has a newer value for (they go to Git by export).
    pub pending_export: usize,
}

/// A key and the file that holds it (or would hold it).
#[derive(Debug, Clone, Serialize)]
pub struct KeyReport {
    /// The key when it is UTF-8, else null.
    pub key: Option<String>,
    /// The key's bytes, standard base64 with padding.
    pub key_b64: String,
    /// The file's path from the repository root (in a document area, the document's).
    pub path: String,
    /// In a document area, the JSON pointer to the key inside the document; else null.
    pub pointer: Option<String>,
    /// The key itself, for the text rendering.
    #[serde(skip)]
    pub raw: Key,
    /// A conflict's live value, previewed by the text rendering only.
    #[serde(skip)]
    pub live_value: Option<Value>,
}

impl KeyReport {
    pub fn new(key: &Key, path: String) -> KeyReport {
        KeyReport {
            key: std::str::from_utf8(&key.0).ok().map(str::to_owned),
            key_b64: base64::engine::general_purpose::STANDARD.encode(&key.0),
            path,
            pointer: None,
            raw: key.clone(),
            live_value: None,
        }
    }

    fn at(key: &Key, path: &str, pointer: Option<&str>) -> KeyReport {
        KeyReport {
            pointer: pointer.map(str::to_owned),
            ..KeyReport::new(key, path.to_owned())
        }
    }
}

impl PlanReport {
    /// The report of validated plans made from `commit`.
    pub fn new(commit: Option<ObjectId>, plans: &[AreaPlan]) -> PlanReport {
        let areas: Vec<AreaReport> = plans.iter().map(area_report).collect();
        let count = |f: fn(&AreaReport) -> usize| areas.iter().map(f).sum::<usize>();
        let (add, change, delete) = (
            count(|a| a.adds.len()),
            count(|a| a.changes.len()),
            count(|a| a.deletes.len()),
        );
        PlanReport {
            commit: commit.map(|c| c.to_string()),
            summary: Summary {
                add,
                change,
                delete,
                changes: add + change + delete > 0,
            },
            areas,
        }
    }
}

fn area_report(p: &AreaPlan) -> AreaReport {
    let mut r = AreaReport {
        area: p.area.name.0.clone(),
        mode: p.area.rule.mode.as_str(),
        prefix: String::from_utf8_lossy(&p.area.prefix).into_owned(),
        path: p.area.path.clone(),
        exact: p.exact.is_some(),
        restore_commit_from: p
            .exact
            .as_ref()
            .filter(|_| p.commits_restore())
            .and_then(|e| e.from)
            .map(|c| c.to_string()),
        adds: Vec::new(),
        changes: Vec::new(),
        deletes: Vec::new(),
        conflicts: Vec::new(),
        drift: p
            .drift
            .iter()
            .zip(&p.drift_paths)
            .map(|(k, (path, pointer))| KeyReport::at(k, path, pointer.as_deref()))
            .collect(),
        pending_export: p.pending_export,
    };
    for op in &p.ops {
        let entry = KeyReport::at(&op.key, &p.path_of(op), op.pointer());
        if let Some(v) = op.overwrites() {
            r.conflicts.push(KeyReport {
                live_value: Some(v.clone()),
                ..entry.clone()
            });
        }
        match op.kind {
            OpKind::Add => r.adds.push(entry),
            OpKind::Change => r.changes.push(entry),
            OpKind::Delete => r.deletes.push(entry),
        }
    }
    r
}

impl AreaReport {
    /// Every write in key order with its kind, as the text plan lists them.
    pub fn ops_in_key_order(&self) -> Vec<(OpKind, &KeyReport)> {
        let mut all: Vec<(OpKind, &KeyReport)> = self
            .adds
            .iter()
            .map(|k| (OpKind::Add, k))
            .chain(self.changes.iter().map(|k| (OpKind::Change, k)))
            .chain(self.deletes.iter().map(|k| (OpKind::Delete, k)))
            .collect();
        all.sort_by(|a, b| a.1.raw.0.cmp(&b.1.raw.0));
        all
    }

    /// The live value a write overwrites although it changed too (Git wins).
    pub fn overwritten(&self, key: &Key) -> Option<&Value> {
        self.conflicts
            .iter()
            .find(|c| &c.raw == key)
            .and_then(|c| c.live_value.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_text_when_utf8_and_always_base64() {
        let k = KeyReport::new(&Key(b"/a/b".to_vec()), "a/b".into());
        let j = serde_json::to_value(&k).expect("json");
        assert_eq!(j["key"], "/a/b");
        assert_eq!(j["key_b64"], "L2EvYg==");
        assert_eq!(j["path"], "a/b");
        assert!(j.get("raw").is_none() && j.get("live_value").is_none());
        let bin = KeyReport::new(&Key(vec![b'/', 0xff]), "a/%FF".into());
        let j = serde_json::to_value(&bin).expect("json");
        assert!(j["key"].is_null());
        assert_eq!(j["key_b64"], "L/8=");
    }
}

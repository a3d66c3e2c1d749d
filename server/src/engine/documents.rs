//! Document areas in Git: an area tree of JSON/YAML documents is read as the tree of keys
//! it stands for (one blob per scalar, written like any file), and a changed key tree is
//! folded back, rewriting only the documents whose keys changed (docs/documents.md).
//!
//! The rest of the engine never sees a document: it compares, decides and writes key trees
//! as in a `files` area. Base trees (checkpoints) are key trees too; only the branch holds
//! documents.

use super::export::write_changes;
use super::view::ReadAreaError;
use super::GitError;
use gitstore::{GitStore, ObjectId};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use sync_core::documents::{self, AreaDoc, Fault, Naming};
use sync_core::mapper;
use sync_core::tree::{DirPlan, EntryKind, PlanEntry};
use sync_core::Value;

/// A file of a document area that stands for no key, or claims keys another file claims.
/// `path` is relative to the area directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct DocProblem {
    pub path: String,
    pub message: String,
}

/// An area tree of documents taken apart ([`documents::sort_area`] decides).
#[derive(Default)]
struct Analysis {
    docs: Vec<AreaDoc>,
    /// Plain files: relative key -> blob.
    plain: BTreeMap<Vec<u8>, ObjectId>,
    problems: Vec<DocProblem>,
}

fn analyse(git: &GitStore, tree: Option<ObjectId>) -> Result<Analysis, ReadAreaError> {
    let Some(tree) = tree else {
        return Ok(Analysis::default());
    };
    let files = git.files_under(tree)?;
    let paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    let sorted = documents::sort_area(&paths, true, |i| git.read_blob(files[i].1))
        .map_err(GitError::from)?;
    let mut problems = Vec::new();
    for p in sorted.problems {
        // Two plain files of one key fail the whole read, as in a `files` area.
        if let Fault::Duplicate { key, first } = p.fault {
            return Err(ReadAreaError::InvalidFile {
                area_path: String::new(),
                error: mapper::MapError::Duplicate {
                    key: sync_core::Key(key),
                    first,
                    second: p.path,
                },
            });
        }
        let message = p.message(Naming::default());
        problems.push(DocProblem {
            message: match p.pointer() {
                "" => message,
                pointer => format!("at {pointer}: {message}"),
            },
            path: p.path,
        });
    }
    Ok(Analysis {
        docs: sorted.docs,
        plain: sorted
            .plain
            .into_iter()
            .map(|(k, i)| (k, files[i].1))
            .collect(),
        problems,
    })
}

/// What an area tree of documents stands for, as a key tree.
#[derive(Debug, Clone)]
pub struct Expanded {
    pub tree: Option<ObjectId>,
    /// Files that stand for no key or claim another's keys: left out of `tree`.
    pub problems: Vec<DocProblem>,
}

/// Expansions by document tree; the same tree is expanded once per process.
static EXPANDED: Mutex<Option<HashMap<ObjectId, Expanded>>> = Mutex::new(None);

/// The key tree a document area tree stands for: each document's scalars as files at the
/// paths their keys map to, beside the plain files. Blobs are written (the engine reads
/// values to write to the KV store by blob id).
pub fn expand_tree(git: &GitStore, tree: Option<ObjectId>) -> Result<Expanded, ReadAreaError> {
    let Some(id) = tree else {
        return Ok(Expanded {
            tree: None,
            problems: Vec::new(),
        });
    };
    if let Some(hit) = cache().as_ref().and_then(|m| m.get(&id).cloned()) {
        return Ok(hit);
    }
    let a = analyse(git, tree)?;
    let mut all: BTreeMap<Vec<u8>, Source> = a
        .plain
        .into_iter()
        .map(|(k, id)| (k, Source::Blob(id)))
        .collect();
    for d in &a.docs {
        for (rel, value) in d.doc.entries() {
            let mut key = d.prefix.clone();
            key.extend_from_slice(&rel);
            all.insert(key, Source::Bytes(value));
        }
    }
    let plan: DirPlan<ObjectId, Vec<u8>> =
        mapper::layout_all(all.keys().map(|k| (k.clone(), k.clone())));
    let plan = resolve(plan, &mut all);
    let expanded = Expanded {
        tree: if plan.is_empty() {
            None
        } else {
            Some(git.write_plan(&plan).map_err(GitError::from)?)
        },
        problems: a.problems,
    };
    let mut cached = cache();
    let map = cached.get_or_insert_with(HashMap::new);
    if map.len() >= 1024 {
        map.clear();
    }
    map.insert(id, expanded.clone());
    Ok(expanded)
}

fn cache() -> std::sync::MutexGuard<'static, Option<HashMap<ObjectId, Expanded>>> {
    EXPANDED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a key's file comes from: a blob the tree has, or a scalar's text.
enum Source {
    Blob(ObjectId),
    Bytes(Value),
}

/// Turns a layout whose files carry their key into one carrying blobs or contents.
fn resolve(
    plan: DirPlan<ObjectId, Vec<u8>>,
    all: &mut BTreeMap<Vec<u8>, Source>,
) -> DirPlan<ObjectId, Vec<u8>> {
    DirPlan {
        edit: plan.edit,
        entries: plan
            .entries
            .into_iter()
            .filter_map(|(name, entry)| {
                let entry = match entry {
                    PlanEntry::File(key) => match all.remove(&key)? {
                        Source::Blob(id) => PlanEntry::Existing {
                            kind: EntryKind::File,
                            id,
                        },
                        Source::Bytes(v) => PlanEntry::File(v),
                    },
                    PlanEntry::Dir(sub) => PlanEntry::Dir(resolve(sub, all)),
                    existing @ PlanEntry::Existing { .. } => existing,
                };
                Some((name, entry))
            })
            .collect(),
    }
}

/// Every key of a key tree with its blob.
fn key_ids(
    git: &GitStore,
    tree: Option<ObjectId>,
) -> Result<BTreeMap<Vec<u8>, ObjectId>, ReadAreaError> {
    let Some(t) = tree else {
        return Ok(BTreeMap::new());
    };
    let files = git.files_under(t)?;
    let decoded = mapper::decode_paths(files.iter().map(|(p, _)| p.as_str())).map_err(|error| {
        ReadAreaError::InvalidFile {
            area_path: String::new(),
            error,
        }
    })?;
    Ok(decoded.into_iter().map(|(k, i)| (k, files[i].1)).collect())
}

/// The document area tree that stands for the key tree `keys`, made from `folded` (the
/// area tree the keys were read from): a document whose keys did not change keeps its
/// bytes; one whose keys changed is rewritten in canonical form, keeping the kinds of its
/// values; keys outside every document, and keys no document can hold beside the others,
/// are plain files. Files that stood for no key are kept as they are.
pub fn fold_tree(
    git: &GitStore,
    folded: Option<ObjectId>,
    keys: Option<ObjectId>,
) -> Result<Option<ObjectId>, ReadAreaError> {
    let old_keys = expand_tree(git, folded)?.tree;
    if old_keys == keys {
        return Ok(folded);
    }
    let a = analyse(git, folded)?;
    let old_keys = key_ids(git, old_keys)?;
    let mut new_keys = key_ids(git, keys)?;
    let mut changes: BTreeMap<Vec<u8>, Option<Value>> = BTreeMap::new();
    for d in &a.docs {
        let in_doc = |m: &BTreeMap<Vec<u8>, ObjectId>| -> Vec<(Vec<u8>, ObjectId)> {
            m.range(d.prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&d.prefix))
                .map(|(k, id)| (k.clone(), *id))
                .collect()
        };
        let mine = in_doc(&new_keys);
        for (k, _) in &mine {
            new_keys.remove(k);
        }
        // Same keys, same blobs: the document stays byte for byte, unread.
        if mine == in_doc(&old_keys) {
            continue;
        }
        let mut sub: BTreeMap<Vec<u8>, Value> = BTreeMap::new();
        for (k, id) in mine {
            sub.insert(k[d.prefix.len()..].to_vec(), git.read_blob(id)?);
        }
        let out = documents::rewrite(d.format, Some(&d.doc), &sub);
        for m in out.misfits {
            tracing::warn!(
                "{}: key {:?} cannot be part of the document beside the others; kept as a plain file",
                d.path,
                String::from_utf8_lossy(&m)
            );
            let mut key = d.prefix.clone();
            key.extend_from_slice(&m);
            let value = sub.remove(&m).expect("a misfit is one of the keys");
            changes.insert(key, Some(value));
        }
        changes.insert(
            d.file_key.clone(),
            out.document.map(|doc| doc.render(d.format)),
        );
    }
    for (k, id) in &new_keys {
        if a.plain.get(k) != Some(id) && !changes.contains_key(k) {
            changes.insert(k.clone(), Some(git.read_blob(*id)?));
        }
    }
    for k in a.plain.keys() {
        if !new_keys.contains_key(k) {
            changes.insert(k.clone(), None);
        }
    }
    if changes.is_empty() {
        return Ok(folded);
    }
    Ok(write_changes(git, folded.as_ref(), changes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Entry = (String, PlanEntry<ObjectId, Vec<u8>>);

    fn file(name: &str, bytes: &[u8]) -> Entry {
        (name.to_owned(), PlanEntry::File(bytes.to_vec()))
    }

    fn dir(name: &str, entries: Vec<Entry>) -> Entry {
        (name.to_owned(), PlanEntry::Dir(DirPlan::new(entries)))
    }

    /// A new repository holding the tree `entries`.
    fn repo(entries: Vec<Entry>) -> (tempfile::TempDir, GitStore, ObjectId) {
        let dir = tempfile::tempdir().expect("tempdir");
        let git = GitStore::open_or_init(dir.path(), "main").expect("init");
        let tree = git.write_plan(&DirPlan::new(entries)).expect("write");
        (dir, git, tree)
    }

    #[test]
    fn files_at_fault_are_named_as_validate_names_them_and_left_out() {
        let (_dir, git, tree) = repo(vec![
            file("a.json", br#"{"x": "1"}"#),
            file("a.yaml", b"y: 2\n"),
            dir("a", vec![file("z", b"3")]),
            file("b.json", br#"{"e": null}"#),
            file("p", b"4"),
        ]);
        let expanded = expand_tree(&git, Some(tree)).expect("expand");
        let mut lines: Vec<String> = expanded.problems.iter().map(|p| p.to_string()).collect();
        lines.sort();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(
            lines[0],
            "a.yaml: claims the keys under \"a/\" that a.json stands for"
        );
        assert_eq!(lines[1], "a/z: holds a key inside the subtree of a.json");
        assert!(
            lines[2].starts_with("b.json: at /e: not a usable JSON document: "),
            "{lines:?}"
        );
        let keys: Vec<String> = git
            .files_under(expanded.tree.expect("a key tree"))
            .expect("list")
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(keys, ["a/x", "p"]);
    }

    #[test]
    fn two_plain_files_of_one_key_fail_the_read_as_in_a_files_area() {
        let (_dir, git, tree) = repo(vec![
            file("p", b"1"),
            dir("p%+", vec![file("%empty", b"2")]),
        ]);
        let err = expand_tree(&git, Some(tree)).expect_err("a duplicate");
        assert!(
            matches!(
                &err,
                ReadAreaError::InvalidFile {
                    error: mapper::MapError::Duplicate { .. },
                    ..
                }
            ),
            "{err}"
        );
    }
}

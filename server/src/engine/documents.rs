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
use sync_core::documents::{self, DocFormat, Document};
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

/// One document file of an area tree that parsed and claims its subtree alone.
struct DocFile {
    path: String,
    /// The key its path maps to as a plain file (`dir/name.json`): where it is written.
    file_key: Vec<u8>,
    /// The subtree it stands for: `dir/name/`.
    prefix: Vec<u8>,
    format: DocFormat,
    doc: Document,
}

/// An area tree of documents taken apart.
#[derive(Default)]
struct Analysis {
    docs: Vec<DocFile>,
    /// Plain files: relative key -> blob.
    plain: BTreeMap<Vec<u8>, ObjectId>,
    problems: Vec<DocProblem>,
}

fn analyse(git: &GitStore, tree: Option<ObjectId>) -> Result<Analysis, ReadAreaError> {
    let mut out = Analysis::default();
    let Some(tree) = tree else { return Ok(out) };
    let files = git.files_under(tree)?;
    let (doc_files, plain_files): (Vec<_>, Vec<_>) = files.into_iter().partition(|(p, _)| {
        let name = p.rsplit('/').next().unwrap_or(p);
        DocFormat::split_name(name).is_some()
    });
    let (decoded, bad) = mapper::decode_paths_lenient(plain_files.iter().map(|(p, _)| p.as_str()))
        .map_err(|error| ReadAreaError::InvalidFile {
            area_path: String::new(),
            error,
        })?;
    for e in bad {
        let path = match &e {
            mapper::MapError::BadName { path, .. } => path.clone(),
            _ => String::new(),
        };
        out.problems.push(DocProblem {
            path,
            message: format!("maps to no key ({e})"),
        });
    }
    let plain: Vec<(Vec<u8>, String, ObjectId)> = decoded
        .into_iter()
        .map(|(k, i)| (k, plain_files[i].0.clone(), plain_files[i].1))
        .collect();
    let mut docs: Vec<DocFile> = Vec::new();
    for (path, id) in doc_files {
        match doc_file(git, &path, id)? {
            Ok(d) => docs.push(d),
            Err(message) => out.problems.push(DocProblem { path, message }),
        }
    }
    // Two documents claiming one subtree, or one inside another's: the first by path keeps it.
    docs.sort_by(|a, b| a.prefix.cmp(&b.prefix).then(a.path.cmp(&b.path)));
    for d in docs {
        if let Some(owner) = out.docs.iter().find(|o| d.prefix.starts_with(&o.prefix)) {
            out.problems.push(DocProblem {
                message: format!(
                    "claims keys under {:?} that {} already stands for",
                    String::from_utf8_lossy(&d.prefix),
                    owner.path
                ),
                path: d.path,
            });
        } else {
            out.docs.push(d);
        }
    }
    for (key, path, id) in plain {
        match out.docs.iter().find(|d| key.starts_with(&d.prefix)) {
            Some(owner) => out.problems.push(DocProblem {
                message: format!(
                    "holds key {:?}, which is inside the subtree of {}",
                    String::from_utf8_lossy(&key),
                    owner.path
                ),
                path,
            }),
            None => {
                out.plain.insert(key, id);
            }
        }
    }
    Ok(out)
}

/// Reads one document file; `Ok(Err(why))` when it cannot stand for keys.
fn doc_file(git: &GitStore, path: &str, id: ObjectId) -> Result<Result<DocFile, String>, GitError> {
    let name = path.rsplit('/').next().unwrap_or(path);
    let Some((_, format)) = DocFormat::split_name(name) else {
        return Ok(Err("not a document".into()));
    };
    let file_key = match mapper::decode_path(path) {
        Ok(k) => k,
        Err(e) => return Ok(Err(format!("maps to no key ({e})"))),
    };
    let ext_len = name.len() - name.rfind('.').unwrap_or(name.len());
    if !file_key.ends_with(&name.as_bytes()[name.len() - ext_len..]) {
        return Ok(Err("an escaped name cannot be a document".into()));
    }
    let mut prefix = file_key[..file_key.len() - ext_len].to_vec();
    prefix.push(b'/');
    let bytes = git.read_blob(id)?;
    Ok(match documents::parse(format, &bytes) {
        Ok(doc) => Ok(DocFile {
            path: path.to_owned(),
            file_key,
            prefix,
            format,
            doc,
        }),
        Err(e) => Err(format!("{format} document: {e}")),
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

//! `kvgit validate`: the offline check CI runs before a merge, on a commit or on a
//! checkout's working files, with no backend. Every problem is listed with file and JSON pointer.
//!
//! Checks per area: every file maps to a key (strict decoding, as apply does) and no two
//! files hold one key; in document areas (`format = "json"|"yaml"`) every document parses
//! and stands for keys (no null, no empty object or array) that no other file claims;
//! every value fits the backend's single-write limit; the area's `schema` exists, is JSON,
//! and is a valid JSON Schema (2020-12); and the area's content matches it. In a document
//! area each document is matched on its own; a files area is matched as one JSON object,
//! its key tree: each `/`-separated segment an object member, each value a string (a key
//! that is also a prefix of others is left out: it cannot be a string and an object at
//! once). `kvgit plan`/`apply` run the same schema and document checks
//! ([`content_problems`]) before they read the backend.

use super::GitError;
use crate::config::AreaConfig;
use gitstore::{GitStore, ObjectId};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use sync_core::documents::{self, AreaDoc, Naming, NO_KEY};
use sync_core::WriteLimits;

/// One thing wrong: the file (from the repository root), where in it, and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub area: String,
    pub file: String,
    /// A JSON pointer into the file's content (or the area's key tree), `""` for the whole.
    pub pointer: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.pointer.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: at {}: {}", self.file, self.pointer, self.message)
        }
    }
}

/// What was checked and what is wrong.
#[derive(Debug, Clone, Serialize)]
pub struct ValidateReport {
    /// The commit checked (full id), or the directory.
    pub source: String,
    pub areas: usize,
    pub files: usize,
    pub valid: bool,
    pub problems: Vec<Problem>,
}

/// What to check: a commit of the repository, or a checkout's working files.
pub enum Source<'a> {
    /// The tree of this commit (None: the branch has no commits, nothing to check).
    Commit(&'a GitStore, Option<ObjectId>),
    /// The files under this directory (the repository's root in a checkout).
    Dir(&'a Path),
}

/// Why validation could not run at all (as opposed to what it found).
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("{}: cannot read", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

crate::engine::git::from_gitstore_errors!(ValidateError);

/// Where a listed file's bytes are.
enum At {
    Blob(ObjectId),
    File(PathBuf),
    /// A symbolic link: Git stores its target as the file's content.
    Link(PathBuf),
}

/// One file of an area: its path relative to the area directory, size and whereabouts.
struct Listed {
    rel: String,
    size: u64,
    at: At,
}

impl Source<'_> {
    fn describe(&self) -> String {
        match self {
            Source::Commit(_, Some(c)) => c.to_string(),
            Source::Commit(_, None) => "(no commits)".into(),
            Source::Dir(d) => d.display().to_string(),
        }
    }

    /// Every file under the repository directory `dir`, or an empty list when it is absent.
    fn list(&self, dir: &str) -> Result<Vec<Listed>, ValidateError> {
        match self {
            Source::Commit(_, None) => Ok(Vec::new()),
            Source::Commit(git, Some(commit)) => {
                let root = git.commit_info(*commit)?.tree;
                let Some(tree) = git.subtree(root, dir)? else {
                    return Ok(Vec::new());
                };
                let blobs = git.blob_reader();
                let files = git.files_under(tree)?;
                let ids: Vec<ObjectId> = files.iter().map(|(_, id)| *id).collect();
                let sizes = blobs.sizes_of(&blobs.locate(&ids));
                files
                    .into_iter()
                    .zip(sizes)
                    .map(|((rel, id), size)| {
                        Ok(Listed {
                            rel,
                            size: size?,
                            at: At::Blob(id),
                        })
                    })
                    .collect()
            }
            Source::Dir(root) => {
                let mut out = Vec::new();
                walk(&root.join(dir), "", &mut out)?;
                out.sort_by(|a, b| a.rel.cmp(&b.rel));
                Ok(out)
            }
        }
    }

    fn read(&self, at: &At) -> Result<Vec<u8>, ValidateError> {
        match (self, at) {
            (Source::Commit(git, _), At::Blob(id)) => Ok(git.read_blob(*id)?),
            (_, At::File(p)) => std::fs::read(p).map_err(|source| ValidateError::Io {
                path: p.clone(),
                source,
            }),
            (_, At::Link(p)) => link_target(p),
            (Source::Dir(_), At::Blob(_)) => unreachable!("a directory lists files, not blobs"),
        }
    }

    /// The bytes of the file at `path` (from the repository root), None when there is none.
    fn read_path(&self, path: &str) -> Result<Option<Vec<u8>>, ValidateError> {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        match self {
            Source::Commit(_, None) => Ok(None),
            Source::Commit(git, Some(commit)) => {
                let root = git.commit_info(*commit)?.tree;
                let tree = if dir.is_empty() {
                    Some(root)
                } else {
                    git.subtree(root, dir)?
                };
                let Some(tree) = tree else { return Ok(None) };
                match git.files_under(tree)?.into_iter().find(|(p, _)| p == name) {
                    Some((_, id)) => Ok(Some(git.read_blob(id)?)),
                    None => Ok(None),
                }
            }
            Source::Dir(root) => {
                let p = root.join(path);
                match std::fs::read(&p) {
                    Ok(b) => Ok(Some(b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) if p.is_dir() => {
                        let _ = e;
                        Ok(None)
                    }
                    Err(source) => Err(ValidateError::Io { path: p, source }),
                }
            }
        }
    }
}

/// A symlink's target as Git stores it.
fn link_target(p: &Path) -> Result<Vec<u8>, ValidateError> {
    use std::os::unix::ffi::OsStrExt;
    std::fs::read_link(p)
        .map(|t| t.as_os_str().as_bytes().to_vec())
        .map_err(|source| ValidateError::Io {
            path: p.to_owned(),
            source,
        })
}

/// The regular files under `dir`, with '/'-separated paths below `prefix`. Symlinks are
/// listed as files holding their target (as Git stores them); a name that is not UTF-8 is
/// listed lossily and then maps to no key, which is reported.
fn walk(dir: &Path, prefix: &str, out: &mut Vec<Listed>) -> Result<(), ValidateError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ValidateError::Io {
                path: dir.to_owned(),
                source,
            })
        }
    };
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ValidateError::Io { path, source }
    };
    for entry in entries {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        if meta.is_dir() {
            walk(&path, &rel, out)?;
        } else if meta.file_type().is_symlink() {
            out.push(Listed {
                rel,
                size: link_target(&path)?.len() as u64,
                at: At::Link(path),
            });
        } else {
            out.push(Listed {
                rel,
                size: meta.len(),
                at: At::File(path),
            });
        }
    }
    Ok(())
}

/// What the backend takes, known without connecting to it.
#[derive(Debug, Clone, Copy)]
pub struct BackendRules {
    pub limits: WriteLimits,
    /// Consul: every key must be UTF-8.
    pub utf8_keys: bool,
}

/// `kvgit validate`: every check on every area of `areas`, by the backend's `rules`.
pub fn validate(
    source: &Source<'_>,
    areas: &[AreaConfig],
    rules: BackendRules,
) -> Result<ValidateReport, ValidateError> {
    let limits = rules.limits;
    let mut problems = Vec::new();
    let mut files = 0;
    for area in areas {
        let listed = source.list(&area.path)?;
        files += listed.len();
        let (keys, docs) = map_area(source, area, &listed, &mut problems)?;
        let too_big = |file: &str, pointer: String, rel: &[u8], size: u64| {
            let mut key = area.prefix.clone();
            key.extend_from_slice(rel);
            let max = limits.max_value_len(&sync_core::Key(key)) as u64;
            (size > max).then(|| Problem {
                area: area.name.0.clone(),
                file: format!("{}/{file}", area.path),
                pointer,
                message: format!(
                    "the value is {size} bytes, over the backend's limit of {max} bytes for one write"
                ),
            })
        };
        for (rel, i) in &keys {
            let l = &listed[*i];
            problems.extend(too_big(&l.rel, String::new(), rel, l.size));
            if rules.utf8_keys && std::str::from_utf8(rel).is_err() {
                problems.push(Problem {
                    area: area.name.0.clone(),
                    file: format!("{}/{}", area.path, l.rel),
                    pointer: String::new(),
                    message: "holds a key that is not UTF-8, which Consul cannot store".into(),
                });
            }
        }
        for d in &docs {
            for (rel, value) in d.doc.entries() {
                let pointer = format!("/{}", String::from_utf8_lossy(&rel));
                let mut key = d.prefix.clone();
                key.extend_from_slice(&rel);
                problems.extend(too_big(&d.path, pointer, &key, value.len() as u64));
            }
        }
        schema_problems(source, area, &listed, &keys, &docs, &mut problems)?;
    }
    Ok(ValidateReport {
        source: source.describe(),
        areas: areas.len(),
        files,
        valid: problems.is_empty(),
        problems,
    })
}

/// The schema checks of [`validate`] on the areas of `commit` that have a `schema`: what
/// `plan`/`apply` refuse before their first read of the backend (paths and sizes they
/// check themselves).
pub fn content_problems(
    git: &GitStore,
    commit: Option<ObjectId>,
    areas: &[AreaConfig],
) -> Result<Vec<Problem>, ValidateError> {
    let source = Source::Commit(git, commit);
    let mut problems = Vec::new();
    for area in areas
        .iter()
        .filter(|a| a.schema.is_some() || a.format.is_documents())
    {
        let listed = source.list(&area.path)?;
        // Paths that map to no key are apply's own check (it names them the same way);
        // documents that do not parse are reported here.
        let mut found = Vec::new();
        let (keys, docs) = map_area(&source, area, &listed, &mut found)?;
        problems.extend(found.into_iter().filter(|p| !p.message.starts_with(NO_KEY)));
        schema_problems(&source, area, &listed, &keys, &docs, &mut problems)?;
    }
    Ok(problems)
}

/// Relative key -> index of the plain file holding it.
type KeyFiles = BTreeMap<Vec<u8>, usize>;

/// The plain files (relative key -> index into `listed`) and, in a document area, the
/// documents that parsed and claim their subtree alone; every other file is a problem
/// ([`documents::sort_area`] decides, as for plan and apply).
fn map_area(
    source: &Source<'_>,
    area: &AreaConfig,
    listed: &[Listed],
    problems: &mut Vec<Problem>,
) -> Result<(KeyFiles, Vec<AreaDoc>), ValidateError> {
    let paths: Vec<&str> = listed.iter().map(|l| l.rel.as_str()).collect();
    let sorted = documents::sort_area(&paths, area.format.is_documents(), |i| {
        source.read(&listed[i].at)
    })?;
    let naming = Naming {
        dir: &area.path,
        prefix: &area.prefix,
    };
    problems.extend(sorted.problems.iter().map(|p| Problem {
        area: area.name.0.clone(),
        file: format!("{}/{}", area.path, p.path),
        pointer: p.pointer().to_owned(),
        message: p.message(naming),
    }));
    Ok((sorted.plain, sorted.docs))
}

/// The area's schema: present, JSON, a valid 2020-12 schema; then the area's content
/// matched against it, every error reported.
fn schema_problems(
    source: &Source<'_>,
    area: &AreaConfig,
    listed: &[Listed],
    keys: &BTreeMap<Vec<u8>, usize>,
    docs: &[AreaDoc],
    problems: &mut Vec<Problem>,
) -> Result<(), ValidateError> {
    let Some(schema_path) = &area.schema else {
        return Ok(());
    };
    let problem = |file: String, pointer: String, message: String| Problem {
        area: area.name.0.clone(),
        file,
        pointer,
        message,
    };
    let Some(bytes) = source.read_path(schema_path)? else {
        problems.push(problem(
            schema_path.clone(),
            String::new(),
            format!(
                "the schema of area {} (area.schema) is not in {}",
                area.name,
                source.describe()
            ),
        ));
        return Ok(());
    };
    let schema: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            problems.push(problem(
                schema_path.clone(),
                String::new(),
                format!("not JSON: {e}"),
            ));
            return Ok(());
        }
    };
    if let Err(e) = jsonschema::draft202012::meta::validate(&schema) {
        problems.push(problem(
            schema_path.clone(),
            e.instance_path().to_string(),
            format!("not a valid JSON Schema (2020-12): {e}"),
        ));
        return Ok(());
    }
    let validator = match jsonschema::draft202012::new(&schema) {
        Ok(v) => v,
        Err(e) => {
            problems.push(problem(
                schema_path.clone(),
                e.instance_path().to_string(),
                format!("unusable JSON Schema: {e}"),
            ));
            return Ok(());
        }
    };
    if area.format.is_documents() {
        // Each document on its own; plain files beside them are not matched.
        for d in docs {
            let json = d.doc.to_json();
            for e in validator.iter_errors(&json) {
                problems.push(problem(
                    format!("{}/{}", area.path, d.path),
                    e.instance_path().to_string(),
                    e.to_string(),
                ));
            }
        }
        return Ok(());
    }
    let (tree, files) = key_tree(area, source, listed, keys)?;
    for e in validator.iter_errors(&tree) {
        let pointer = e.instance_path().to_string();
        let file = files
            .get(&pointer)
            .cloned()
            .unwrap_or_else(|| area.path.clone());
        problems.push(problem(file, pointer, e.to_string()));
    }
    Ok(())
}

/// A files area as one JSON object (see the module docs), and the file of each leaf's
/// JSON pointer.
fn key_tree(
    area: &AreaConfig,
    source: &Source<'_>,
    listed: &[Listed],
    keys: &BTreeMap<Vec<u8>, usize>,
) -> Result<(serde_json::Value, BTreeMap<String, String>), ValidateError> {
    let mut root = serde_json::Map::new();
    let mut files = BTreeMap::new();
    // Keys that are a prefix of another key are objects, not strings.
    let prefixes: BTreeSet<Vec<u8>> = keys
        .keys()
        .flat_map(|k| {
            k.iter()
                .enumerate()
                .filter(|(_, b)| **b == b'/')
                .map(|(i, _)| k[..i].to_vec())
                .collect::<Vec<_>>()
        })
        .collect();
    for (rel, i) in keys {
        if prefixes.contains(rel) {
            continue;
        }
        let l = &listed[*i];
        let value = String::from_utf8_lossy(&source.read(&l.at)?).into_owned();
        let segments: Vec<String> = rel
            .split(|b| *b == b'/')
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        let mut pointer = String::new();
        let mut node = &mut root;
        for (n, seg) in segments.iter().enumerate() {
            pointer.push('/');
            pointer.push_str(&seg.replace('~', "~0").replace('/', "~1"));
            if n + 1 == segments.len() {
                node.insert(seg.clone(), serde_json::Value::String(value.clone()));
            } else {
                let next = node
                    .entry(seg.clone())
                    .or_insert_with(|| serde_json::Value::Object(Default::default()));
                node = match next {
                    serde_json::Value::Object(m) => m,
                    _ => break,
                };
            }
        }
        files.insert(pointer, format!("{}/{}", area.path, l.rel));
    }
    Ok((serde_json::Value::Object(root), files))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_core::rule::{Mode, Rule};
    use sync_core::AreaName;

    fn area(schema: Option<&str>) -> AreaConfig {
        AreaConfig {
            name: AreaName("cfg".into()),
            prefix: b"/cfg/".to_vec(),
            path: "cfg".into(),
            rule: Rule {
                mode: Mode::Both,
                self_heal: true,
            },
            schema: schema.map(str::to_owned),
            format: Default::default(),
        }
    }

    fn limits() -> BackendRules {
        BackendRules {
            limits: WriteLimits {
                max_ops: 4,
                max_bytes: 100,
                max_value_bytes: 20,
            },
            utf8_keys: false,
        }
    }

    fn write(root: &Path, path: &str, bytes: &[u8]) {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, bytes).expect("write");
    }

    #[test]
    fn every_problem_is_listed_with_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(root, "cfg/ok", b"1");
        write(root, "cfg/bad%ZZ", b"1");
        write(root, "cfg/big", &[b'x'; 30]);
        write(
            root,
            "schemas/cfg.json",
            br#"{"type":"object","properties":{"ok":{"pattern":"^[a-z]+$"}}}"#,
        );
        let r = validate(
            &Source::Dir(root),
            &[area(Some("schemas/cfg.json"))],
            limits(),
        )
        .expect("validate");
        let lines: Vec<String> = r.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(r.files, 3, "{lines:?}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("cfg/bad%ZZ: maps to no key")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("cfg/big: the value is 30 bytes")),
            "{lines:?}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("cfg/ok: at /ok: ")),
            "{lines:?}"
        );
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(!r.valid);
    }

    #[test]
    fn documents_are_parsed_claimed_and_matched_one_by_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(root, "cfg/app.json", br#"{"port": 80, "name": "a"}"#);
        write(root, "cfg/bad.yaml", b"port: [1, 2\n");
        write(root, "cfg/empty.json", br#"{"a": {}}"#);
        write(root, "cfg/app/port", b"81");
        write(root, "cfg/plain", b"p");
        write(
            root,
            "s.json",
            br#"{"properties": {"port": {"type": "string"}}}"#,
        );
        let docs = AreaConfig {
            format: crate::config::AreaFormat::Json,
            ..area(Some("s.json"))
        };
        let r = validate(&Source::Dir(root), &[docs], limits()).expect("validate");
        let lines: Vec<String> = r.problems.iter().map(|p| p.to_string()).collect();
        let has = |prefix: &str| lines.iter().any(|l| l.starts_with(prefix));
        assert!(has("cfg/app.json: at /port: "), "{lines:?}");
        assert!(has("cfg/bad.yaml: "), "{lines:?}");
        assert!(has("cfg/empty.json: at /a: "), "{lines:?}");
        assert!(
            has("cfg/app/port: holds a key inside the subtree of cfg/app.json"),
            "{lines:?}"
        );
        assert_eq!(lines.len(), 4, "{lines:?}");
    }

    #[test]
    fn document_numbers_are_numbers_to_the_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(root, "cfg/ok.json", br#"{"port": 8080, "ratio": 1.50}"#);
        write(root, "cfg/low.yaml", b"port: 0\nratio: 2\n");
        write(
            root,
            "s.json",
            br#"{"properties": {"port": {"type": "integer", "minimum": 1},
                "ratio": {"type": "number", "maximum": 1.5}}}"#,
        );
        let docs = AreaConfig {
            format: crate::config::AreaFormat::Yaml,
            ..area(Some("s.json"))
        };
        let r = validate(&Source::Dir(root), &[docs], limits()).expect("validate");
        let mut found: Vec<(String, String)> = r
            .problems
            .iter()
            .map(|p| (p.file.clone(), p.pointer.clone()))
            .collect();
        found.sort();
        assert_eq!(
            found,
            [
                ("cfg/low.yaml".to_string(), "/port".to_string()),
                ("cfg/low.yaml".to_string(), "/ratio".to_string())
            ],
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn a_missing_or_invalid_schema_is_a_problem_of_the_schema_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(root, "cfg/a", b"1");
        let r = validate(
            &Source::Dir(root),
            &[area(Some("schemas/none.json"))],
            limits(),
        )
        .expect("validate");
        assert_eq!(r.problems.len(), 1);
        assert_eq!(r.problems[0].file, "schemas/none.json");
        write(root, "schemas/bad.json", br#"{"type": 12}"#);
        let r = validate(
            &Source::Dir(root),
            &[area(Some("schemas/bad.json"))],
            limits(),
        )
        .expect("validate");
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert_eq!(r.problems[0].file, "schemas/bad.json");
        assert!(r.problems[0].message.contains("not a valid JSON Schema"));
    }
}

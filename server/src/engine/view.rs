//! Reading an area out of a Git tree: every file decoded back to its key, with the file's
//! blob id. Bad paths are reported here, before anything is written anywhere.

use super::documents::{expand_tree, DocProblem};
use super::GitError;
use crate::config::AreaFormat;
use gitstore::GitStore;
use gitstore::ObjectId;
use std::collections::BTreeMap;
use sync_core::mapper::MapError;

/// One file of an area tree.
#[derive(Debug, Clone)]
pub struct AreaFile {
    pub id: ObjectId,
    /// Path relative to the area directory, for messages.
    pub path: String,
}

/// Relative key -> file, for every file of the area tree.
pub type AreaFiles = BTreeMap<Vec<u8>, AreaFile>;

/// [`AreaFiles`] as a list sorted by key: what one walk in key order needs, without
/// building a map of 100k entries to walk it once.
pub type SortedFiles = Vec<(Vec<u8>, AreaFile)>;

/// Why an area tree could not be read as keys.
#[derive(Debug, thiserror::Error)]
pub enum ReadAreaError {
    #[error(transparent)]
    Git(#[from] GitError),
    /// A file whose path maps to no key, or two files holding one key. The mapping error is
    /// part of the message, not a cause: the area's path alone would read as a repeat of
    /// its name in a one-line chain.
    #[error("{area_path}: {error}")]
    InvalidFile { area_path: String, error: MapError },
    /// Document files that stand for no key, or claim keys another file claims.
    #[error("{}", problems.iter().map(|p| format!("{area_path}/{p}")).collect::<Vec<_>>().join("; "))]
    Documents {
        area_path: String,
        problems: Vec<DocProblem>,
    },
}

impl ReadAreaError {
    /// The error naming `area_path` (the document code reads trees without knowing it).
    pub fn in_area(self, area_path: &str) -> ReadAreaError {
        match self {
            ReadAreaError::InvalidFile { error, .. } => ReadAreaError::InvalidFile {
                area_path: area_path.to_owned(),
                error,
            },
            ReadAreaError::Documents { problems, .. } => ReadAreaError::Documents {
                area_path: area_path.to_owned(),
                problems,
            },
            e @ ReadAreaError::Git(_) => e,
        }
    }
}

impl From<gitstore::ObjectReadError> for ReadAreaError {
    fn from(e: gitstore::ObjectReadError) -> Self {
        ReadAreaError::Git(e.into())
    }
}

impl From<gitstore::TreeReadError> for ReadAreaError {
    fn from(e: gitstore::TreeReadError) -> Self {
        ReadAreaError::Git(e.into())
    }
}

/// The area's directory in the tree of `commit` (None when the area has no directory).
pub fn area_tree(
    git: &GitStore,
    commit: Option<ObjectId>,
    path: &str,
) -> Result<Option<ObjectId>, GitError> {
    let Some(commit) = commit else {
        return Ok(None);
    };
    let root = git.commit_info(commit)?.tree;
    Ok(git.subtree(root, path)?)
}

/// Every file of an area tree, decoded to its relative key, sorted by key (each key once).
/// A path that is not a valid kvgit path, or two paths naming one key, is an error naming
/// the file(s).
pub fn read_area(
    git: &GitStore,
    tree: Option<ObjectId>,
    area_path: &str,
) -> Result<SortedFiles, ReadAreaError> {
    let Some(tree) = tree else {
        return Ok(SortedFiles::new());
    };
    let mut files = git.files_under(tree)?;
    let decoded = sync_core::mapper::decode_paths(files.iter().map(|(p, _)| p.as_str())).map_err(
        |error| ReadAreaError::InvalidFile {
            area_path: area_path.to_string(),
            error,
        },
    )?;
    // Every path is decoded, once each (two paths naming one key were refused above).
    Ok(decoded
        .into_iter()
        .map(|(rel, i)| {
            let (path, id) = &mut files[i];
            let path = std::mem::take(path);
            (rel, AreaFile { id: *id, path })
        })
        .collect())
}

/// Like [`read_area`], but a file that maps to no key (a hand-written `%ZZ`) is set aside
/// and returned by path instead of failing: recording KV changes goes on around it.
pub fn read_area_lenient(
    git: &GitStore,
    tree: Option<ObjectId>,
    area_path: &str,
) -> Result<(AreaFiles, Vec<String>), ReadAreaError> {
    let Some(tree) = tree else {
        return Ok((AreaFiles::new(), Vec::new()));
    };
    let files = git.files_under(tree)?;
    let (decoded, bad) = sync_core::mapper::decode_paths_lenient(
        files.iter().map(|(p, _)| p.as_str()),
    )
    .map_err(|error| ReadAreaError::InvalidFile {
        area_path: area_path.to_string(),
        error,
    })?;
    let unmapped = bad
        .iter()
        .map(|e| match e {
            MapError::BadName { path, problem, .. } => {
                format!("{area_path}/{path}: maps to no key ({problem})")
            }
            other => format!("{area_path}: {other}"),
        })
        .collect();
    let mut files: Vec<Option<(String, ObjectId)>> = files.into_iter().map(Some).collect();
    let area = decoded
        .into_iter()
        .filter_map(|(rel, i)| {
            files[i]
                .take()
                .map(|(path, id)| (rel, AreaFile { id, path }))
        })
        .collect();
    Ok((area, unmapped))
}

/// The key tree of an area in `commit`: the area's directory itself in a `files` area; in a
/// document area the tree of keys its documents and plain files stand for. `strict`
/// (apply, plan) refuses a document that does not parse or claims another's keys, naming
/// the file; otherwise (recording KV changes) such files are logged and left out.
pub fn key_tree(
    git: &GitStore,
    commit: Option<ObjectId>,
    path: &str,
    format: AreaFormat,
    strict: bool,
) -> Result<Option<ObjectId>, ReadAreaError> {
    let tree = area_tree(git, commit, path)?;
    if !format.is_documents() {
        return Ok(tree);
    }
    let expanded = expand_tree(git, tree).map_err(|e| e.in_area(path))?;
    if !expanded.problems.is_empty() {
        if strict {
            return Err(ReadAreaError::Documents {
                area_path: path.to_owned(),
                problems: expanded.problems,
            });
        }
        for p in &expanded.problems {
            tracing::warn!("{path}/{p}; left as it is");
        }
    }
    Ok(expanded.tree)
}

/// [`key_tree`] for readers that must not fail on a bad file (status, log, the service's
/// check for Git edits): two files holding one key read as the area's own tree, which then
/// differs from every base, so the full pass that follows reports the files.
pub fn key_tree_lenient(
    git: &GitStore,
    commit: Option<ObjectId>,
    path: &str,
    format: AreaFormat,
) -> Result<Option<ObjectId>, GitError> {
    match key_tree(git, commit, path, format, false) {
        Ok(t) => Ok(t),
        Err(ReadAreaError::Git(e)) => Err(e),
        Err(_) => area_tree(git, commit, path),
    }
}

//! Reading an area out of a Git tree: every file decoded back to its key, with the file's
//! blob id. Bad paths are reported here, before anything is written anywhere.

use super::GitError;
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

/// Every file of an area tree, decoded to its relative key. A path that is not a valid
/// kvgit path, or two paths naming one key, is an error naming the file(s).
pub fn read_area(
    git: &GitStore,
    tree: Option<ObjectId>,
    area_path: &str,
) -> Result<AreaFiles, ReadAreaError> {
    let Some(tree) = tree else {
        return Ok(AreaFiles::new());
    };
    let files = git.files_under(tree)?;
    let decoded = sync_core::mapper::decode_paths(files.iter().map(|(p, _)| p.as_str())).map_err(
        |error| ReadAreaError::InvalidFile {
            area_path: area_path.to_string(),
            error,
        },
    )?;
    let mut files: Vec<Option<(String, ObjectId)>> = files.into_iter().map(Some).collect();
    Ok(decoded
        .into_iter()
        .filter_map(|(rel, i)| {
            files[i]
                .take()
                .map(|(path, id)| (rel, AreaFile { id, path }))
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

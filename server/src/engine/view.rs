//! Reading an area out of a Git tree: every file decoded back to its key, with the file's
//! blob id. Bad paths are reported here, before anything is written anywhere.

use anyhow::anyhow;
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

/// The area's directory in the tree of `commit` (None when the area has no directory).
pub fn area_tree(
    git: &GitStore,
    commit: Option<ObjectId>,
    path: &str,
) -> anyhow::Result<Option<ObjectId>> {
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
) -> anyhow::Result<AreaFiles> {
    let Some(tree) = tree else {
        return Ok(AreaFiles::new());
    };
    let files = git.files_under(tree)?;
    let decoded = sync_core::mapper::decode_paths(files.iter().map(|(p, _)| p.as_str()))
        .map_err(|e| anyhow!("{area_path}: {e}"))?;
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
) -> anyhow::Result<(AreaFiles, Vec<String>)> {
    let Some(tree) = tree else {
        return Ok((AreaFiles::new(), Vec::new()));
    };
    let files = git.files_under(tree)?;
    let (decoded, bad) =
        sync_core::mapper::decode_paths_lenient(files.iter().map(|(p, _)| p.as_str()))
            .map_err(|e| anyhow!("{area_path}: {e}"))?;
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

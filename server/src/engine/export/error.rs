//! Why an export stopped. Each variant names the area, file, ref or setting at fault; a
//! batch the mass-delete guard holds back is a report, and an error only for the CLI.

use super::HeldDeletes;
use crate::engine::changes::ChangesError;
use crate::engine::checkpoint::CheckpointError;
use crate::engine::git::from_gitstore_errors;
use crate::engine::view::ReadAreaError;
use crate::engine::{ConnectError, GitError};
use gitstore::RefUpdateError;
use sync_core::mapper::MapError;
use sync_core::BackendError;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("cannot read the cluster id")]
    ClusterId(#[source] BackendError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Changes(#[from] ChangesError),
    #[error(transparent)]
    Git(#[from] GitError),
    /// Two files of the area hold one key (a file mapping to no key is only reported).
    #[error("{area_path}: {error}")]
    InvalidFile { area_path: String, error: MapError },
    /// The branch moved while the pass ran (`source` says whether someone else moved it).
    #[error("branch {branch} moved while exporting; run again")]
    BranchMoved {
        branch: String,
        #[source]
        source: RefUpdateError,
    },
    /// Document files that stand for no key or claim keys another file claims.
    #[error(transparent)]
    Documents(ReadAreaError),
    /// `--area` names no configured area.
    #[error("{0}")]
    UnknownArea(String),
    #[error("area {area}")]
    Area {
        area: String,
        #[source]
        source: Box<ExportError>,
    },
    /// The mass-delete guard held these areas' batches back (the others were recorded).
    #[error("{}", held_message(.0))]
    HeldBack(Vec<(String, HeldDeletes)>),
}

from_gitstore_errors!(ExportError);

impl From<ReadAreaError> for ExportError {
    fn from(e: ReadAreaError) -> Self {
        match e {
            ReadAreaError::Git(e) => ExportError::Git(e),
            ReadAreaError::InvalidFile { area_path, error } => {
                ExportError::InvalidFile { area_path, error }
            }
            e @ ReadAreaError::Documents { .. } => ExportError::Documents(e),
        }
    }
}

impl ExportError {
    /// Worth running again as it is: the backend was unavailable, a watch stalled, or
    /// someone moved the branch or a checkpoint first. The rest needs a person.
    pub fn is_retryable(&self) -> bool {
        match self {
            ExportError::Connect(e) => e.is_retryable(),
            ExportError::ClusterId(e) | ExportError::Backend(e) => e.is_retryable(),
            ExportError::Checkpoint(e) => e.is_retryable(),
            ExportError::Changes(e) => e.is_retryable(),
            ExportError::Git(e) => e.is_retryable(),
            ExportError::BranchMoved { source, .. } => source.is_conflict(),
            ExportError::Area { source, .. } => source.is_retryable(),
            ExportError::InvalidFile { .. }
            | ExportError::Documents(_)
            | ExportError::UnknownArea(_)
            | ExportError::HeldBack(_) => false,
        }
    }
}

fn held_message(held: &[(String, HeldDeletes)]) -> String {
    held.iter()
        .map(|(area, h)| format!("area {area}: {h}"))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_areas_are_named_in_one_message() {
        let held = |deletes, keys, prefix: &str| HeldDeletes {
            deletes,
            keys,
            fraction: 0.5,
            prefix: prefix.into(),
        };
        let e = ExportError::HeldBack(vec![
            ("a".into(), held(5, 5, "/a/")),
            ("b".into(), held(4, 5, "/b/")),
        ]);
        assert_eq!(
            e.to_string(),
            "area a: not recording the deletion of 5 of 5 keys under \"/a/\": it would empty \
             the area; if that is intended, run `kvgit export --allow-mass-delete`; \
             area b: not recording the deletion of 4 of 5 keys under \"/b/\": it is more than \
             sync.max_delete_fraction = 0.5 of them; if that is intended, run \
             `kvgit export --allow-mass-delete`"
        );
        assert!(!e.is_retryable());
    }

    #[test]
    fn a_lost_branch_race_is_retryable() {
        let moved = |source| ExportError::Area {
            area: "a".into(),
            source: Box::new(ExportError::BranchMoved {
                branch: "main".into(),
                source,
            }),
        };
        let lost = moved(RefUpdateError::Conflict {
            name: "refs/heads/main".into(),
            expected: None,
            actual: Some(gitstore::GitStore::empty_tree_id()),
        });
        assert!(lost.is_retryable());
        assert_eq!(lost.to_string(), "area a");
        let watch = ExportError::Changes(ChangesError::Ended {
            backend: "etcd",
            target: sync_core::Revision(9),
        });
        assert!(watch.is_retryable());
    }
}

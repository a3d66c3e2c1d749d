//! Why a plan or an apply stopped. Everything a person must fix (a bad file, a value too
//! big, a key the backend refuses, a mass delete) is found while planning, before the first
//! write of any area; each error names the file, key, ref, area or setting at fault.

use crate::engine::checkpoint::CheckpointError;
use crate::engine::git::from_gitstore_errors;
use crate::engine::validate::{Problem, ValidateError};
use crate::engine::view::ReadAreaError;
use crate::engine::{ConnectError, GitError};
use sync_core::mapper::MapError;
use sync_core::{BackendError, Key};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("cannot read the cluster id")]
    ClusterId(#[source] BackendError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Git(#[from] GitError),
    /// A file of the area whose path maps to no key, or two files holding one key.
    #[error("{area_path}: {error}")]
    InvalidFile { area_path: String, error: MapError },
    /// A value bigger than the backend takes in one write (`path` is the file holding it).
    #[error("{path}: the value of key {key} is {size} bytes, over the backend's limit of {limit} bytes (the largest single write it takes)")]
    ValueTooLarge {
        path: String,
        key: Key,
        size: u64,
        limit: usize,
    },
    /// A key this backend cannot hold (Consul: not UTF-8); `path` is the file naming it.
    #[error("{path}: {error}")]
    KeyRefused {
        path: String,
        key: Key,
        error: BackendError,
    },
    #[error(transparent)]
    MassDelete(#[from] MassDeleteRefused),
    /// Files `kvgit validate` finds wrong (a schema missing or invalid, content that does
    /// not match it): nothing was read from or written to the backend.
    #[error("{}", invalid_line(.0))]
    Invalid(Vec<Problem>),
    #[error(transparent)]
    Validate(#[from] ValidateError),
    /// The KV store was restored, but the restore commit and checkpoint did not move
    /// (someone moved the branch or checkpoint meanwhile).
    #[error("the KV store was restored, but the restore could not be committed on branch {branch} (run `kvgit export` to record the restored keys)")]
    RestoreNotRecorded {
        branch: String,
        #[source]
        source: gitstore::RefUpdateError,
    },
    /// An exact restore found keys changed by someone else after it read them: their new
    /// values were kept, and the areas' restores were not committed.
    #[error("keys changed by someone else while restoring area(s) {} ({}); their values were kept and those areas' restore was not committed: run the restore again", .areas.join(", "), raced_keys(.keys))]
    RestoreRaced { areas: Vec<String>, keys: Vec<Key> },
    /// Others kept writing the same keys through every round of re-deciding.
    #[error("keys in area(s) {} kept changing while applying; run apply again", .areas.join(", "))]
    KeptChanging { areas: Vec<String> },
    /// `--ref` names no commit.
    #[error("--ref {rev}")]
    BadRef {
        rev: String,
        #[source]
        source: gitstore::ResolveError,
    },
    /// A commit since the area's base that no allowed signer signed (git.allowed_signers_file).
    #[error("{0}; only commits signed by an allowed signer (git.allowed_signers_file) are applied, nothing was written")]
    Unverified(gitstore::Unverified),
    #[error("cannot check commit signatures")]
    Verify(#[source] gitstore::VerifyError),
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
        source: Box<ApplyError>,
    },
}

from_gitstore_errors!(ApplyError);

/// The first raced keys, then how many more.
fn raced_keys(keys: &[Key]) -> String {
    const SHOWN: usize = 5;
    let mut line = keys
        .iter()
        .take(SHOWN)
        .map(|k| k.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if keys.len() > SHOWN {
        line.push_str(&format!(", and {} more", keys.len() - SHOWN));
    }
    line
}

/// Problems on one line: the first ones in full, then how many more (`kvgit validate`
/// lists them all).
fn invalid_line(problems: &[Problem]) -> String {
    const SHOWN: usize = 3;
    let mut line = problems
        .iter()
        .take(SHOWN)
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > SHOWN {
        line.push_str(&format!("; and {} more", problems.len() - SHOWN));
    }
    format!("{line} (nothing was written; `kvgit validate` lists every problem)")
}

impl From<ReadAreaError> for ApplyError {
    fn from(e: ReadAreaError) -> Self {
        match e {
            ReadAreaError::Git(e) => ApplyError::Git(e),
            ReadAreaError::InvalidFile { area_path, error } => {
                ApplyError::InvalidFile { area_path, error }
            }
            e @ ReadAreaError::Documents { .. } => ApplyError::Documents(e),
        }
    }
}

impl ApplyError {
    /// Worth running again as it is: the backend was unavailable, someone moved a
    /// checkpoint first, or others kept writing the keys. The rest needs a person.
    pub fn is_retryable(&self) -> bool {
        match self {
            ApplyError::Connect(e) => e.is_retryable(),
            ApplyError::ClusterId(e) | ApplyError::Backend(e) => e.is_retryable(),
            ApplyError::Checkpoint(e) => e.is_retryable(),
            ApplyError::Git(e) => e.is_retryable(),
            ApplyError::RestoreNotRecorded { source, .. } => source.is_conflict(),
            ApplyError::KeptChanging { .. } | ApplyError::RestoreRaced { .. } => true,
            ApplyError::Area { source, .. } => source.is_retryable(),
            ApplyError::InvalidFile { .. }
            | ApplyError::Documents(_)
            | ApplyError::ValueTooLarge { .. }
            | ApplyError::KeyRefused { .. }
            | ApplyError::MassDelete(_)
            | ApplyError::Invalid(_)
            | ApplyError::Validate(_)
            | ApplyError::BadRef { .. }
            | ApplyError::Unverified(_)
            | ApplyError::Verify(_)
            | ApplyError::UnknownArea(_) => false,
        }
    }
}

/// An apply that would delete too much: refused unless `--allow-mass-delete`.
#[derive(Debug, thiserror::Error)]
pub enum MassDeleteRefused {
    #[error("refusing to delete all {live} keys under {prefix:?}: the apply would empty the area (pass --allow-mass-delete if that is intended)")]
    Empties { live: usize, prefix: String },
    #[error("refusing to delete {deletes} of {live} keys under {prefix:?}, more than sync.max_delete_fraction = {fraction} (pass --allow-mass-delete if that is intended)")]
    OverFraction {
        deletes: usize,
        live: usize,
        prefix: String,
        fraction: f64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_area(e: ApplyError) -> ApplyError {
        ApplyError::Area {
            area: "routes".into(),
            source: Box::new(e),
        }
    }

    /// What the CLI prints is the chain on one line: the tests of the binary match on it.
    fn chain(e: &dyn std::error::Error) -> String {
        let mut out = e.to_string();
        let mut next = e.source();
        while let Some(s) = next {
            out = format!("{out}: {s}");
            next = s.source();
        }
        out
    }

    #[test]
    fn messages_name_the_file_key_and_area() {
        let too_large = in_area(ApplyError::ValueTooLarge {
            path: "routes/huge".into(),
            key: Key(b"/r/huge".to_vec()),
            size: 2_000_000,
            limit: 1_568_750,
        });
        assert_eq!(
            chain(&too_large),
            "area routes: routes/huge: the value of key /r/huge is 2000000 bytes, over the \
             backend's limit of 1568750 bytes (the largest single write it takes)"
        );
        let refused = ApplyError::KeyRefused {
            path: "routes/%FF".into(),
            key: Key(vec![b'/', 0xff]),
            error: BackendError::Refused {
                backend: "consul",
                detail: "key is not UTF-8".into(),
            },
        };
        assert_eq!(
            chain(&refused),
            "routes/%FF: consul refused the request: key is not UTF-8"
        );
        let raced = ApplyError::KeptChanging {
            areas: vec!["a".into(), "b".into()],
        };
        assert_eq!(
            raced.to_string(),
            "keys in area(s) a, b kept changing while applying; run apply again"
        );
    }

    #[test]
    fn retryable_follows_the_cause() {
        let unavailable = || BackendError::Unavailable {
            backend: "etcd",
            endpoint: "http://127.0.0.1:2379".into(),
            detail: "connection refused".into(),
        };
        assert!(in_area(ApplyError::Backend(unavailable())).is_retryable());
        assert!(ApplyError::ClusterId(unavailable()).is_retryable());
        assert!(ApplyError::KeptChanging { areas: vec![] }.is_retryable());
        let refused = MassDeleteRefused::Empties {
            live: 5,
            prefix: "/r/".into(),
        };
        assert!(!in_area(refused.into()).is_retryable());
        assert!(!ApplyError::UnknownArea("--area x".into()).is_retryable());
    }
}

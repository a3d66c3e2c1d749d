//! `GitError`: every gitstore failure the engine meets on its Git side (reading refs, trees
//! and blobs, writing trees and commits), plus a blocking Git task that panicked. The
//! per-operation errors (`ExportError`, `ApplyError`, …) take it with `#[from]`; refs that
//! move by compare-and-swap are wrapped by those errors instead, naming the ref.

use gitstore::TreeReadError;
use sync_core::mapper::PlanError;

/// A failure of the local repository: none is worth retrying (a disk, permission or
/// corruption problem needs a person), and each names the object or path it is about.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error(transparent)]
    RefRead(#[from] gitstore::RefReadError),
    #[error(transparent)]
    ObjectRead(#[from] gitstore::ObjectReadError),
    #[error(transparent)]
    Hash(#[from] gitstore::HashError),
    #[error(transparent)]
    TreeRead(#[from] TreeReadError),
    /// Looking keys up in, or planning changes to, an area tree.
    #[error(transparent)]
    Tree(#[from] PlanError<TreeReadError>),
    #[error(transparent)]
    WritePlan(#[from] gitstore::WritePlanError),
    #[error(transparent)]
    PackWrite(#[from] gitstore::PackWriteError),
    #[error(transparent)]
    SetSubtree(#[from] gitstore::SetSubtreeError),
    #[error(transparent)]
    CommitWrite(#[from] gitstore::CommitWriteError),
    #[error(transparent)]
    BatchWrite(#[from] gitstore::BatchWriteError),
    #[error(transparent)]
    Diff(#[from] gitstore::DiffError),
    /// The blocking task running the Git work panicked (or was cancelled at shutdown).
    #[error("git task panicked")]
    Panicked(#[from] tokio::task::JoinError),
}

impl GitError {
    /// Always false: the local repository does not get better by waiting.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Lets `?` inside a Git closure turn each gitstore error straight into an operation's
/// error, through [`GitError`] (which the operation's error takes with `#[from]`).
macro_rules! from_gitstore_errors {
    ($target:ty) => {
        $crate::engine::git::from_gitstore_errors!($target:
            gitstore::RefReadError,
            gitstore::ObjectReadError,
            gitstore::HashError,
            gitstore::TreeReadError,
            sync_core::mapper::PlanError<gitstore::TreeReadError>,
            gitstore::WritePlanError,
            gitstore::PackWriteError,
            gitstore::SetSubtreeError,
            gitstore::CommitWriteError,
            gitstore::BatchWriteError,
            gitstore::DiffError
        );
    };
    ($target:ty: $($source:ty),+) => {
        $(
            impl From<$source> for $target {
                fn from(e: $source) -> Self {
                    Self::from($crate::engine::git::GitError::from(e))
                }
            }
        )+
    };
}
pub(crate) use from_gitstore_errors;

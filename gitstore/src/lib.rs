//! kvgit's Git side: a bare repository read and written with gix (never a work tree): planned
//! trees written loose or as one pack, commits, compare-and-swap refs, diffs, history, remotes.
//!
//! Every method blocks; callers run them in `spawn_blocking`. The handle is `Send + Sync`: it
//! holds a `gix::ThreadSafeRepository` and takes a thread-local view per call.

mod ancestry;
mod area;
mod auth;
mod batch;
mod cli;
mod commit;
mod diff;
mod edit;
mod history;
mod objects;
mod pack;
mod packed;
mod packfile;
mod recent;
mod refs;
mod remote;
mod replay;
mod signing;
mod store;
mod treefmt;
mod trees;
mod write;

pub use ancestry::MergeBaseError;
pub use auth::{RemoteAuth, RemoteAuthError};
pub use batch::{BatchWriteError, CommitsGo, ObjectBatch};
pub use cli::{redact as redact_url, CliError};
pub use commit::{Author, CommitWriteError};
pub use diff::{DiffError, FileChange};
pub use edit::SetSubtreeError;
pub use gix::ObjectId;
pub use history::{HistoryEntry, HistoryError};
pub use objects::{BlobReader, CommitInfo, HashError, Located, ObjectReadError};
pub use pack::{BulkWriter, PackWriteError};
pub use refs::{
    meta_tracking_ref, tracking_ref, RefReadError, RefUpdateError, ResolveError, META_REFS,
};
pub use remote::{FetchError, PushError, PushOutcome, RejectedRef};
pub use replay::{AreasOf, ReplayError, Replayed};
pub use signing::{
    AllowedSigners, AllowedSignersError, SigningKey, SigningKeyError, SshKeygenError, Unverified,
    VerifyError, MAX_UNBASED_WALK,
};
pub use store::{GitStore, OpenError};
pub use trees::TreeReadError;
pub use write::{BlobContent, HashedBlob, StoredBlob, WritePlanError};

/// The plan type gitstore writes: new file contents are owned byte vectors.
pub type Plan = sync_core::tree::DirPlan<ObjectId, Vec<u8>>;

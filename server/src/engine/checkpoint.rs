//! Checkpoints: per area, the revision up to which every KV change is committed, the
//! cluster it belongs to and the base tree, kept as a commit chain on `refs/kvgit/checkpoints/<area>`.
//!
//! The checkpoint commit's tree *is* the area's base tree, so the base is found without
//! walking history, and the ref moves by compare-and-swap like the branch.

use super::git::from_gitstore_errors;
use super::message::{self, Trailers};
use super::{Context, GitError};
use gitstore::{ObjectId, RefUpdateError};
use sync_core::{AreaName, ClusterId, Epoch, Revision};

/// Where an area's sync stands.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The checkpoint commit itself (its tree is the base).
    pub id: ObjectId,
    pub revision: Revision,
    pub cluster: ClusterId,
    /// The area's base tree; None when the base is known to be empty.
    pub base_tree: Option<ObjectId>,
    /// The branch commit this checkpoint was taken with, if any.
    pub branch_commit: Option<String>,
    pub node: String,
    /// The `Kvgit-Area` it was written for: a checkpoint copied under another area's ref
    /// (by hand, or a rename in the config) describes another prefix and is not trusted.
    pub area: Option<String>,
}

/// Why a checkpoint cannot be the base of this pass: the area is then synced again by the
/// rule with no base (nothing deleted), and the reason is logged, shown and counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Distrust {
    /// Written against another cluster (a backend switch, a restore onto a new cluster).
    OtherCluster { recorded: ClusterId },
    /// Above the cluster's current revision: the store went back in time (a snapshot
    /// restore keeps the cluster id), so events after it were never seen.
    RevisionAhead {
        recorded: Revision,
        current: Revision,
    },
    /// Its `Kvgit-Area` trailer names another area.
    OtherArea { recorded: String },
}

impl Distrust {
    /// Every label, so each series exists from the first scrape.
    pub const LABELS: [&'static str; 3] = ["other_cluster", "revision_ahead", "other_area"];

    /// The `reason` label of `kvgit_resyncs_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Distrust::OtherCluster { .. } => "other_cluster",
            Distrust::RevisionAhead { .. } => "revision_ahead",
            Distrust::OtherArea { .. } => "other_area",
        }
    }
}

impl std::fmt::Display for Distrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Distrust::OtherCluster { recorded } => {
                write!(f, "checkpoint belongs to cluster {recorded}, not this one")
            }
            Distrust::RevisionAhead { recorded, current } => write!(
                f,
                "checkpoint revision {recorded} is above the cluster's current revision \
                 {current} (the store was restored from a snapshot?)"
            ),
            Distrust::OtherArea { recorded } => {
                write!(f, "checkpoint was written for area {recorded:?}")
            }
        }
    }
}

impl Checkpoint {
    /// Whether this checkpoint can be the base of `area` on `cluster`, whose newest
    /// revision is `current` (read after the checkpoint, so a trusted one is never above it).
    pub fn distrust(
        &self,
        area: &AreaName,
        cluster: &ClusterId,
        current: Revision,
    ) -> Option<Distrust> {
        if let Some(recorded) = self.area.as_ref().filter(|a| **a != area.0) {
            return Some(Distrust::OtherArea {
                recorded: recorded.clone(),
            });
        }
        if &self.cluster != cluster {
            return Some(Distrust::OtherCluster {
                recorded: self.cluster.clone(),
            });
        }
        if self.revision > current {
            return Some(Distrust::RevisionAhead {
                recorded: self.revision,
                current,
            });
        }
        None
    }
}

/// An area's checkpoint as judged against the live cluster.
#[derive(Debug, Clone)]
pub enum Judged {
    /// No checkpoint was ever written: a first pass, with no base.
    Missing,
    /// A base to build on.
    Trusted(Checkpoint),
    /// One exists (its ref moves by compare-and-swap on it) but cannot be the base.
    Distrusted(Checkpoint, Distrust),
}

impl Judged {
    pub fn judge(
        cp: Option<Checkpoint>,
        area: &AreaName,
        cluster: &ClusterId,
        current: Revision,
    ) -> Judged {
        match cp {
            None => Judged::Missing,
            Some(cp) => match cp.distrust(area, cluster, current) {
                None => Judged::Trusted(cp),
                Some(why) => Judged::Distrusted(cp, why),
            },
        }
    }

    /// The checkpoint to build on, if trusted.
    pub fn trusted(&self) -> Option<&Checkpoint> {
        match self {
            Judged::Trusted(cp) => Some(cp),
            _ => None,
        }
    }

    pub fn distrust(&self) -> Option<&Distrust> {
        match self {
            Judged::Distrusted(_, why) => Some(why),
            _ => None,
        }
    }
}

/// Why a checkpoint could not be read or recorded.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Git(#[from] GitError),
    /// The ref points at a commit that is not a checkpoint (written by hand?).
    #[error("{name}: checkpoint commit {id} has no {trailer} trailer")]
    MissingTrailer {
        name: String,
        id: ObjectId,
        trailer: &'static str,
    },
    /// The ref did not move: someone else moved it first (a conflict), or it could not be
    /// written.
    #[error("cannot move {name}")]
    Move {
        name: String,
        #[source]
        source: RefUpdateError,
    },
}

from_gitstore_errors!(CheckpointError);

impl CheckpointError {
    /// Worth running again: another writer moved the ref first (re-read, then retry).
    pub fn is_retryable(&self) -> bool {
        match self {
            CheckpointError::Git(e) => e.is_retryable(),
            CheckpointError::Move { source, .. } => source.is_conflict(),
            CheckpointError::MissingTrailer { .. } => false,
        }
    }
}

/// The area's checkpoint, if one was ever written.
pub async fn load(ctx: &Context, area: &AreaName) -> Result<Option<Checkpoint>, CheckpointError> {
    let name = super::refs::checkpoint_ref(&area.0);
    ctx.git_blocking(move |git| {
        let Some(id) = git.read_ref(&name)? else {
            return Ok(None);
        };
        let info = git.commit_info(id)?;
        let t = message::parse_trailers(&info.message);
        let revision = t
            .get(message::REVISION)
            .and_then(|r| r.parse().ok())
            .map(Revision)
            .ok_or_else(|| CheckpointError::MissingTrailer {
                name: name.clone(),
                id,
                trailer: message::REVISION,
            })?;
        let cluster = t
            .get(message::CLUSTER)
            .cloned()
            .map(ClusterId)
            .ok_or_else(|| CheckpointError::MissingTrailer {
                name: name.clone(),
                id,
                trailer: message::CLUSTER,
            })?;
        let empty = git.is_empty_tree(info.tree);
        Ok(Some(Checkpoint {
            id,
            revision,
            cluster,
            base_tree: (!empty).then_some(info.tree),
            branch_commit: t.get(message::COMMIT).cloned(),
            node: t.get(message::NODE).cloned().unwrap_or_default(),
            area: t.get(message::AREA).cloned(),
        }))
    })
    .await
}

/// Record a new checkpoint on top of `previous` (compare-and-swap on the ref).
/// Writes a checkpoint commit (its tree is the base; an empty tree for an empty base) on
/// top of `previous`, without moving any ref.
pub fn write_commit(
    git: &gitstore::GitStore,
    base_tree: Option<ObjectId>,
    previous: Option<ObjectId>,
    message: &str,
    author: &gitstore::Author,
    time: i64,
) -> Result<ObjectId, GitError> {
    let tree = match base_tree {
        Some(t) => t,
        None => git.write_plan(&gitstore::Plan::default())?,
    };
    let parents: Vec<ObjectId> = previous.into_iter().collect();
    Ok(git.write_commit(tree, &parents, message, author, time)?)
}

pub async fn save(
    ctx: &Context,
    area: &AreaName,
    previous: Option<ObjectId>,
    revision: Revision,
    cluster: &ClusterId,
    base_tree: Option<ObjectId>,
    branch_commit: Option<ObjectId>,
    epoch: Option<Epoch>,
) -> Result<ObjectId, CheckpointError> {
    let name = super::refs::checkpoint_ref(&area.0);
    let msg = message::checkpoint_message(
        &Trailers {
            area,
            revision,
            cluster,
            node: &ctx.cfg.sync.node,
            epoch,
        },
        branch_commit.map(|c| c.to_string()).as_deref(),
    );
    let author = ctx.author();
    ctx.git_blocking(move |git| {
        let id = write_commit(git, base_tree, previous, &msg, &author, super::now_unix())?;
        git.update_ref(&name, id, previous, "kvgit: checkpoint")
            .map_err(|source| CheckpointError::Move {
                name: name.clone(),
                source,
            })?;
        Ok(id)
    })
    .await
}

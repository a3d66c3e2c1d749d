//! Bringing the remote in: fetch (no lock held), then, under the Git lock, adopt or keep
//! each area's checkpoint and replay our unpushed commits on the remote tip.
//!
//! Per area, our local checkpoint (and the local commits behind it) survives only while this
//! node owns the area with a live lease and is strictly ahead of the remote's checkpoint,
//! whose epoch is not newer than ours. Otherwise the remote's checkpoint is adopted and our
//! unpushed commits of that area are left out: that is the fence against a stale owner, and
//! nothing is lost, since the owner commits every event after the remote's checkpoint.

use super::gitlock::GitLock;
use super::metrics::Metrics;
use super::ownership::Ownership;
use crate::engine::git::GitError;
use crate::engine::{message, refs, Context};
use gitstore::{GitStore, ObjectId};
use std::collections::BTreeSet;
use std::sync::Arc;
use sync_core::Epoch;

/// Why bringing the remote in failed. A fetch that failed leaves the local repository as
/// it was; the rest fails before any ref moved or after it moved by compare-and-swap.
#[derive(Debug, thiserror::Error)]
pub enum IntegrateError {
    #[error("git.remote {url}")]
    Fetch {
        url: String,
        #[source]
        source: gitstore::FetchError,
    },
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("cannot tell whether a checkpoint is behind the remote's")]
    Ancestry(#[from] gitstore::MergeBaseError),
    #[error("cannot move a local ref to the remote's")]
    MoveRef(#[from] gitstore::RefUpdateError),
    #[error("cannot replay local commits on the remote tip")]
    Replay(#[from] gitstore::ReplayError),
}

crate::engine::git::from_gitstore_errors!(IntegrateError:
    gitstore::RefReadError,
    gitstore::ObjectReadError
);

impl IntegrateError {
    /// A remote that is away or slow may be back later; a local failure needs a person.
    pub fn is_retryable(&self) -> bool {
        match self {
            IntegrateError::Fetch { source, .. } => source.is_retryable(),
            IntegrateError::MoveRef(e) => e.is_conflict(),
            _ => false,
        }
    }
}

/// What integrating needs: the repository, its lock, who owns what, and a counter of
/// fenced-off work. Cloned into every task that fetches.
#[derive(Clone)]
pub struct Integrator {
    pub engine: Arc<Context>,
    pub git_lock: Arc<GitLock>,
    /// Held while git talks to the remote (fetch, push) and while the refs that mirror the
    /// remote are moved after a push: git's fetch locks those refs itself, so a fetch and a
    /// push's bookkeeping running at once would make both fail on a healthy node.
    pub remote_lock: Arc<GitLock>,
    pub ownership: Arc<Ownership>,
    pub metrics: Arc<Metrics>,
}

impl Integrator {
    /// Fetch and integrate, keeping local work only where this node owns the area. The
    /// caller must not hold the Git lock.
    pub async fn remote(&self) -> Result<(), IntegrateError> {
        self.integrate(false).await
    }

    /// At start, before ownership is known: keep local work that is strictly ahead of the
    /// remote (a restart after `kill -9` with unpushed commits); the first push drops what
    /// this node turns out not to own.
    pub async fn at_start(&self) -> Result<(), IntegrateError> {
        self.integrate(true).await
    }

    async fn integrate(&self, at_start: bool) -> Result<(), IntegrateError> {
        let cfg = &self.engine.cfg;
        let Some(remote) = cfg.git.remote.clone() else {
            return Ok(());
        };
        let areas: Vec<(String, String, Option<Epoch>)> = cfg
            .areas
            .iter()
            .map(|a| {
                let fence = self.ownership.fence(&a.name.0);
                (a.name.0.clone(), a.path.clone(), fence)
            })
            .collect();
        let branch = cfg.git.branch.clone();
        // Network I/O without the Git lock: a slow remote must not stop commits.
        let remote_guard = self.remote_lock.lock("fetch").await;
        let theirs = self
            .engine
            .git_blocking(move |git| -> Result<_, IntegrateError> {
                git.fetch(&remote, &branch)
                    .map_err(|source| IntegrateError::Fetch {
                        url: gitstore::redact_url(&remote),
                        source,
                    })
            })
            .await;
        drop(remote_guard);
        self.metrics.fetch(theirs.is_ok());
        let theirs = theirs?;
        let _git = self.git_lock.lock("integrate").await;
        let dropped = self
            .engine
            .git_blocking(move |git| adopt(git, &areas, at_start, theirs))
            .await?;
        for area in dropped {
            self.metrics.fenced(&area);
        }
        Ok(())
    }
}

/// Under the lock: per area keep or adopt the checkpoint, then bring the branch to the
/// fetched tip. Returns the areas whose local commits were left out.
fn adopt(
    git: &GitStore,
    areas: &[(String, String, Option<Epoch>)],
    at_start: bool,
    theirs: Option<ObjectId>,
) -> Result<BTreeSet<String>, IntegrateError> {
    let mut fenced: BTreeSet<String> = BTreeSet::new();
    for (name, _, fence) in areas {
        let local_ref = refs::checkpoint_ref(name);
        let remote_ref = refs::remote_checkpoint_ref(name);
        let local = git.read_ref(&local_ref)?;
        let remote_cp = git.read_ref(&remote_ref)?;
        if local == remote_cp {
            continue;
        }
        let ahead = match (local, remote_cp) {
            (Some(l), Some(r)) => git.is_ancestor(r, l)?,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let newer_remote_epoch = match (remote_cp, fence) {
            (Some(r), Some(ours)) => checkpoint_epoch(git, r)?.is_some_and(|e| e > *ours),
            _ => false,
        };
        // With no checkpoint of the area on the remote, nobody published it yet: our local
        // work is the only record of it and is kept (dropping it while the branch keeps
        // older commits would let a no-base pass resurrect deletes). Whoever owns the area
        // publishes first; we then adopt theirs.
        let keep =
            remote_cp.is_none() || ahead && (fence.is_some() || at_start) && !newer_remote_epoch;
        if keep {
            continue;
        }
        let behind = match (local, remote_cp) {
            (Some(l), Some(r)) => git.is_ancestor(l, r)?,
            (None, _) => true,
            (Some(_), None) => false,
        };
        if !behind {
            // Commits of ours the remote lacks: someone else's to make now.
            fenced.insert(name.clone());
        }
        match (local, remote_cp) {
            (_, Some(r)) => {
                git.update_ref(&local_ref, r, local, "kvgit: adopt the remote checkpoint")?
            }
            (Some(l), None) => git.delete_ref(&local_ref, l)?,
            (None, None) => {}
        }
    }
    let Some(theirs) = theirs else {
        return Ok(fenced);
    };
    let ours = git.tip()?;
    let new_tip = match ours {
        None => theirs,
        Some(ours) => {
            let path_areas: Vec<(String, String)> = areas
                .iter()
                .map(|(n, p, _)| (n.clone(), p.clone()))
                .collect();
            let dirs_of = |c: &gitstore::CommitInfo| area_dirs(c, &path_areas);
            let drop = |c: &gitstore::CommitInfo| {
                message::parse_trailers(&c.message)
                    .get(message::AREA)
                    .is_some_and(|a| fenced.contains(a))
            };
            let out = git.replay_dropping(ours, theirs, &dirs_of, &drop)?;
            if out.dropped > 0 {
                tracing::warn!(
                    dropped = out.dropped,
                    areas = ?fenced,
                    "left out local commits of areas this node does not own (fenced)"
                );
            }
            out.tip
        }
    };
    if Some(new_tip) != ours {
        git.update_ref(
            git.branch_ref(),
            new_tip,
            ours,
            "kvgit: bring in the remote",
        )?;
    }
    Ok(fenced)
}

/// The epoch stamped on a checkpoint commit, if any.
fn checkpoint_epoch(git: &GitStore, id: ObjectId) -> Result<Option<Epoch>, IntegrateError> {
    let info = git.commit_info(id)?;
    Ok(message::parse_trailers(&info.message)
        .get(message::EPOCH)
        .and_then(|e| e.parse().ok())
        .map(Epoch))
}

/// The directory a kvgit commit may touch: its area's path, from the `Kvgit-Area` trailer.
fn area_dirs(c: &gitstore::CommitInfo, areas: &[(String, String)]) -> Result<Vec<String>, String> {
    let trailers = message::parse_trailers(&c.message);
    let area = trailers
        .get(message::AREA)
        .ok_or_else(|| format!("local commit {} has no {} trailer", c.id, message::AREA))?;
    areas
        .iter()
        .find(|(n, _)| n == area)
        .map(|(_, p)| vec![p.clone()])
        .ok_or_else(|| {
            format!(
                "local commit {} is for area {area:?}, which is not configured",
                c.id
            )
        })
}

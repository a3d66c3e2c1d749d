//! The remote: push the branch and the checkpoint refs every `push_interval`, or when
//! ownership asks (a hand-over publishes before the claim goes); a rejected push
//! integrates the new remote tip and pushes again. Never forced; an unreachable remote
//! only delays.

use super::gitlock::GitLock;
use super::integrate::{IntegrateError, Integrator};
use super::metrics::{Metrics, PushResult};
use super::ownership::Ownership;
use super::state::ServiceState;
use crate::engine::git::GitError;
use crate::engine::{refs, Context};
use gitstore::{GitStore, ObjectId, PushOutcome};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Bounded: another node pushing in between each time means something is off.
const PUSH_ATTEMPTS: usize = 5;

/// Why a push pass failed; commits stay queued locally either way.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Push(#[from] gitstore::PushError),
    #[error(transparent)]
    Integrate(#[from] IntegrateError),
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("cannot record what the remote holds")]
    Track(#[from] gitstore::RefUpdateError),
    #[error("checkpoints of areas this node does not own are still pending")]
    NotOwner,
    #[error("push still rejected after {PUSH_ATTEMPTS} replays")]
    KeptRejected,
}

crate::engine::git::from_gitstore_errors!(PublishError: gitstore::RefReadError, gitstore::ObjectReadError);

impl PublishError {
    /// The remote was away or moved on: the next interval may do better.
    pub fn is_retryable(&self) -> bool {
        match self {
            PublishError::Push(e) => e.is_retryable(),
            PublishError::Integrate(e) => e.is_retryable(),
            PublishError::NotOwner | PublishError::KeptRejected => true,
            _ => false,
        }
    }
}

/// What the pusher needs.
pub struct PushCtx {
    pub engine: Arc<Context>,
    pub git_lock: Arc<GitLock>,
    pub ownership: Arc<Ownership>,
    pub state: Arc<ServiceState>,
    pub metrics: Arc<Metrics>,
    pub integrate: Integrator,
}

/// "Publish now, and tell me whether `area`'s checkpoint is on the remote."
pub struct PushRequest {
    area: String,
    reply: oneshot::Sender<bool>,
}

/// How other tasks ask the pusher for a push (ownership, before it releases a claim).
#[derive(Clone)]
pub struct PushHandle(mpsc::Sender<PushRequest>);

impl PushHandle {
    /// A handle and the receiving end for [`run`].
    pub fn channel() -> (PushHandle, mpsc::Receiver<PushRequest>) {
        // A hand-over at a time per area: a few slots are plenty.
        let (tx, rx) = mpsc::channel(16);
        (PushHandle(tx), rx)
    }

    /// Pushes now and says whether `area`'s checkpoint is on the remote afterwards (false
    /// when the pusher is gone: the caller keeps the claim and asks again).
    pub async fn publish(&self, area: &str) -> bool {
        let (reply, answer) = oneshot::channel();
        let request = PushRequest {
            area: area.to_string(),
            reply,
        };
        if self.0.send(request).await.is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }
}

/// Pushes every `push_interval` and on request until `shutdown`; hands its context back so
/// the service can make the last push after every area has committed.
pub async fn run(
    ctx: PushCtx,
    mut requests: mpsc::Receiver<PushRequest>,
    shutdown: CancellationToken,
) -> PushCtx {
    let interval = ctx.engine.cfg.sync.push_interval;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return ctx,
            _ = tokio::time::sleep(interval) => push_now(&ctx).await,
            Some(request) = requests.recv() => {
                push_now(&ctx).await;
                let pushed = area_pushed(&ctx, &request.area).await.unwrap_or(false);
                let _ = request.reply.send(pushed);
            }
        }
    }
}

/// One push pass (with replays), recorded in metrics; errors are logged, not fatal.
pub async fn push_now(ctx: &PushCtx) {
    if ctx.engine.cfg.git.remote.is_none() {
        return;
    }
    let outcome = push_once(ctx).await;
    count_unpushed(ctx).await;
    match outcome {
        Ok(Published::Pushed) => {
            ctx.metrics.push(PushResult::Ok);
            ctx.metrics.push_succeeded();
        }
        // Not a push of ours to count, but the remote has taken our commits: the gauge
        // operators alert on must not stay old while nothing is left unpushed.
        Ok(Published::LandedLate) => ctx.metrics.push_succeeded(),
        Ok(Published::Nothing) => {}
        Err(e) => {
            let msg = crate::errors::chain(&e);
            tracing::warn!(error = %msg, retryable = e.is_retryable(), "push failed; commits stay queued locally");
            ctx.metrics.push(PushResult::Error);
            ctx.state.set_push_error(Some(msg));
        }
    }
}

/// What a push pass did.
enum Published {
    /// The remote took our push.
    Pushed,
    /// Nothing was pending.
    Nothing,
    /// Nothing was pending right after a failed pass: the push we gave up on (a timeout, a
    /// dropped connection) reached the remote after all.
    LandedLate,
}

/// Push if the local branch or a checkpoint is ahead of what the remote has.
async fn push_once(ctx: &PushCtx) -> Result<Published, PublishError> {
    let Some(remote) = ctx.engine.cfg.git.remote.clone() else {
        return Ok(Published::Nothing);
    };
    for attempt in 0..PUSH_ATTEMPTS {
        let (mut updates, mut areas) = {
            let _git = ctx.git_lock.lock("push").await;
            pending_updates(ctx).await?
        };
        // Only an owner with a live lease publishes an area: anything else is left out first.
        if areas.iter().any(|a| ctx.ownership.fence(a).is_none()) {
            ctx.integrate.remote().await?;
            let _git = ctx.git_lock.lock("push").await;
            (updates, areas) = pending_updates(ctx).await?;
            if areas.iter().any(|a| ctx.ownership.fence(a).is_none()) {
                return Err(PublishError::NotOwner);
            }
        }
        if updates.is_empty() {
            let failed_before = ctx.state.set_push_error(None);
            return Ok(if failed_before {
                Published::LandedLate
            } else {
                Published::Nothing
            });
        }
        let url = remote.clone();
        let branch = ctx.engine.cfg.git.branch.clone();
        // Network I/O without the Git lock: areas keep committing while the remote is slow.
        // The push is a compare-and-swap on the remote, so commits made meanwhile simply
        // go with the next one.
        let remote_guard = ctx.integrate.remote_lock.lock("push").await;
        let outcome = ctx
            .engine
            .git_blocking(move |git| -> Result<_, PublishError> {
                let outcome = git.push(&url, &updates)?;
                if matches!(outcome, PushOutcome::Pushed) {
                    // Remember what the remote has now, so an idle service pushes nothing.
                    note_pushed(git, &branch, &updates)?;
                }
                Ok(outcome)
            })
            .await;
        drop(remote_guard);
        match outcome? {
            PushOutcome::Pushed => {
                ctx.state.set_push_error(None);
                return Ok(Published::Pushed);
            }
            PushOutcome::Rejected { .. } => {
                ctx.metrics.push(PushResult::Rejected);
                tracing::info!(
                    attempt,
                    "push rejected: replaying our commits on the remote tip"
                );
                ctx.integrate.remote().await?;
            }
        }
    }
    Err(PublishError::KeptRejected)
}

/// The refs the remote lacks: the branch when ours is not what we last fetched, and each
/// area's checkpoint when it differs from the remote's.
async fn pending_updates(
    ctx: &PushCtx,
) -> Result<(Vec<(ObjectId, String)>, Vec<String>), PublishError> {
    let branch = ctx.engine.cfg.git.branch.clone();
    let areas: Vec<String> = ctx
        .engine
        .cfg
        .areas
        .iter()
        .map(|a| a.name.0.clone())
        .collect();
    ctx.engine
        .git_blocking(move |git| -> Result<_, PublishError> {
            let mut updates = Vec::new();
            let mut pending_areas = Vec::new();
            if let Some(tip) = git.tip()? {
                if git.read_ref(&gitstore::tracking_ref(&branch))? != Some(tip) {
                    updates.push((tip, git.branch_ref().to_owned()));
                }
            }
            for name in areas {
                let local = refs::checkpoint_ref(&name);
                let theirs = refs::remote_checkpoint_ref(&name);
                if let Some(id) = git.read_ref(&local)? {
                    if git.read_ref(&theirs)? != Some(id) {
                        updates.push((id, local));
                        pending_areas.push(name);
                    }
                }
            }
            Ok((updates, pending_areas))
        })
        .await
}

/// Walking more commits than this to count unpushed ones means the remote has been away
/// for long; the gauge then says "at least this many".
const MAX_UNPUSHED_WALK: usize = 10_000;

/// `kvgit_unpushed_commits{area}`: our commits since what the remote last took, by their
/// `Kvgit-Area` trailer (first parents only: our history is linear).
async fn count_unpushed(ctx: &PushCtx) {
    let branch = ctx.engine.cfg.git.branch.clone();
    let counted = ctx
        .engine
        .git_blocking(move |git| -> Result<_, PublishError> {
            let mut per_area = std::collections::BTreeMap::<String, usize>::new();
            let pushed = git.read_ref(&gitstore::tracking_ref(&branch))?;
            let mut next = git.tip()?;
            for _ in 0..MAX_UNPUSHED_WALK {
                let Some(id) = next.filter(|id| Some(*id) != pushed) else {
                    break;
                };
                let info = git.commit_info(id)?;
                if let Some(area) = crate::engine::message::parse_trailers(&info.message)
                    .get(crate::engine::message::AREA)
                {
                    *per_area.entry(area.clone()).or_default() += 1;
                }
                next = info.parents.first().copied();
            }
            Ok(per_area)
        })
        .await;
    match counted {
        Ok(per_area) => {
            for area in &ctx.engine.cfg.areas {
                let n = per_area.get(&area.name.0).copied().unwrap_or(0);
                ctx.metrics.unpushed(&area.name.0, n);
            }
        }
        Err(e) => {
            tracing::debug!(error = %crate::errors::chain(&e), "cannot count unpushed commits")
        }
    }
}

/// Whether the remote has this area's checkpoint as we have it (nothing left to publish).
async fn area_pushed(ctx: &PushCtx, area: &str) -> Result<bool, PublishError> {
    if ctx.engine.cfg.git.remote.is_none() {
        return Ok(true);
    }
    let local = refs::checkpoint_ref(area);
    let theirs = refs::remote_checkpoint_ref(area);
    ctx.engine
        .git_blocking(move |git| -> Result<_, PublishError> {
            Ok(git.read_ref(&local)? == git.read_ref(&theirs)?)
        })
        .await
}

/// After a push, our tracking refs say what the remote now holds.
fn note_pushed(
    git: &GitStore,
    branch: &str,
    updates: &[(ObjectId, String)],
) -> Result<(), PublishError> {
    for (id, remote_ref) in updates {
        let tracking = gitstore::meta_tracking_ref(remote_ref)
            .unwrap_or_else(|| gitstore::tracking_ref(branch));
        let current = git.read_ref(&tracking)?;
        if current != Some(*id) {
            git.update_ref(&tracking, *id, current, "kvgit: pushed")?;
        }
    }
    Ok(())
}

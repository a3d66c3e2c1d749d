//! One area's KV -> Git loop: catch up from the checkpoint, then watch, batch events by
//! `batch_window`/`batch_max`, and commit each batch as one commit; resync when told to.
//!
//! Every Git write happens under the service's Git lock, so the batcher, the fetch/apply
//! loop and the pusher never race on the branch or the checkpoint refs.

use super::backoff::Backoff;
use super::gitlock::{GitGuard, GitLock};
use super::health::HealthCtx;
use super::integrate::{IntegrateError, Integrator};
use super::metrics::Metrics;
use super::ownership::{Grant, Ownership};
use super::state::ServiceState;
use super::trigger::SyncTrigger;
use super::Repacker;
use crate::config::AreaConfig;
use crate::engine::export::{DeleteGuard, ExportOptions};
use crate::engine::{checkpoint, export};
use crate::engine::{ConnectError, Context};
use futures::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use sync_core::batch::Batch;
use sync_core::{BackendError, ChangeKind, ClusterId, ResyncReason, WatchEvent};
use tokio_util::sync::CancellationToken;

/// Why a watch session ended without an error.
enum Stop {
    Shutdown,
    Resync(ResyncReason),
    /// The area is no longer ours (lease lost, claim gone, or checkpoint moved by another
    /// owner): the batch is dropped; whoever owns the area commits from the checkpoint.
    Lost,
    /// Handed over: everything pending was committed first.
    Released,
}

/// Why an area session ended with an error. `Fenced` is not a failure: the area is no
/// longer surely ours, and whoever owns it commits from the checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum AreaError {
    #[error("area {0}: not owned with a live lease; not committing (fenced)")]
    Fenced(String),
    #[error("area {area}: checkpoint vanished or changed cluster; resyncing")]
    CheckpointGone { area: String },
    #[error("{backend} watch of {area} ended")]
    WatchEnded { backend: &'static str, area: String },
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Export(#[from] export::ExportError),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error("fetch before taking the area over")]
    Integrate(#[from] IntegrateError),
}

impl AreaError {
    /// Worth the normal backoff (the backend or the remote may be back soon); anything else
    /// (a broken repository, a full disk) waits the longest backoff between tries.
    pub fn is_retryable(&self) -> bool {
        match self {
            AreaError::Fenced(_) | AreaError::CheckpointGone { .. } => true,
            AreaError::WatchEnded { .. } => true,
            AreaError::Connect(e) => e.is_retryable(),
            AreaError::Backend(e) => e.is_retryable(),
            AreaError::Export(e) => e.is_retryable(),
            AreaError::Checkpoint(e) => e.is_retryable(),
            AreaError::Integrate(e) => e.is_retryable(),
        }
    }
}

/// What an area task needs.
#[derive(Clone)]
pub struct AreaCtx {
    pub engine: Arc<Context>,
    pub git_lock: Arc<GitLock>,
    pub ownership: Arc<Ownership>,
    pub state: Arc<ServiceState>,
    pub metrics: Arc<Metrics>,
    /// Poked after a catch-up: an area applying Git needs its first apply now.
    pub trigger: Arc<SyncTrigger>,
    pub repack: Arc<Repacker>,
    pub integrate: Integrator,
    /// For asking the backend, when the session fails, whether it is the one at fault.
    pub health: HealthCtx,
}

/// How to export under the fence: the epoch its check passed goes into the commit and
/// the checkpoint as it is, so the trailer always names the claim that allowed the commit.
fn fence(ctx: &AreaCtx, area: &AreaConfig) -> Result<ExportOptions, AreaError> {
    let epoch = ctx
        .ownership
        .fence(&area.name.0)
        .ok_or_else(|| AreaError::Fenced(area.name.0.clone()))?;
    Ok(ExportOptions {
        guard: DeleteGuard::from_config(&ctx.engine.cfg, false),
        epoch: Some(epoch),
    })
}

/// How often the lag gauge is refreshed while a batch waits, and a progress-only
/// checkpoint is written at most (an idle area must not write objects every second).
const LAG_TICK: Duration = Duration::from_secs(1);
const IDLE_CHECKPOINT: Duration = Duration::from_secs(60);

/// How long to wait before trying again after an error that needs a person to fix.
const FIX_RETRY: Duration = Duration::from_secs(10);

/// A session that ends (a resync, an error, the fence) sooner than this after it started
/// counts as a repeat: the next one waits longer, so a backend that keeps failing or
/// forcing resyncs is not hammered; one that lasted longer starts the backoff over.
const RESYNC_QUIET: Duration = Duration::from_secs(30);

pub async fn run(ctx: AreaCtx, area: AreaConfig, shutdown: CancellationToken) {
    let name = area.name.0.clone();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut resync_backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let Some(mut grant) = ctx.ownership.subscribe(&name) else {
        return;
    };
    let mut first = true;
    // The claim the last session ran under: only a newly acquired one needs a fetch first.
    let mut started_under = None;
    // A resync the watch asked for and that was counted already: the catch-up that
    // performs it does not count it again.
    let mut watch_resync: Option<&'static str> = None;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        // Wait until this node owns the area.
        loop {
            let now = *grant.borrow_and_update();
            match now {
                Grant::Owned(_) => break,
                // Asked to hand over between sessions (e.g. while backing off): nothing is
                // buffered here, so let go at once; the next owner commits from the
                // checkpoint whatever was not committed.
                Grant::HandOver(_) => {
                    stopped(&ctx, &name);
                    ctx.ownership.released(&name);
                }
                Grant::NotOwned | Grant::Released(_) => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = grant.changed() => if changed.is_err() { return },
            }
        }
        if !first {
            ctx.metrics.watch_restart();
        }
        first = false;
        let epoch = grant.borrow().epoch();
        let session_started = Instant::now();
        if epoch != started_under {
            // A new owner first brings in the remote's newest checkpoint. A remote that is
            // missing, hung or refusing must not stop recording: the area starts from the
            // local checkpoint, and if another node got further meanwhile, the next push
            // finds out and the fence drops our duplicate work (it is re-committed from
            // the remote's checkpoint).
            if let Err(e) = start_from_remote(&ctx).await {
                let msg = crate::errors::chain(&e);
                tracing::warn!(area = %name, error = %msg, "cannot fetch before taking the area over; starting from the local checkpoint");
                ctx.state.set_sync_error(Some(msg));
            }
        }
        started_under = epoch;
        let outcome = session(&ctx, &area, &shutdown, &mut grant, watch_resync.take()).await;
        let outcome = match outcome {
            Err(AreaError::Fenced(_)) => Ok(Stop::Lost),
            other => other,
        };
        // A session that ran a while was healthy: the next failure starts the backoff over
        // instead of waiting as long as the last burst of failures had come to.
        if session_started.elapsed() >= RESYNC_QUIET {
            backoff.reset();
        }
        match outcome {
            Ok(Stop::Shutdown) => return,
            Ok(Stop::Lost) => {
                tracing::warn!(area = %name, "area lost: uncommitted events are left to its owner");
                stopped(&ctx, &name);
                // Fenced while the grant still says ours: the lease's renewal is overdue (an
                // overloaded backend). Starting again at once would spin, each time with a
                // catch-up read that loads the backend more; wait for the grant or a backoff.
                if matches!(*grant.borrow(), Grant::Owned(_))
                    && !pause(&shutdown, &mut grant, backoff.next_delay()).await
                {
                    return;
                }
            }
            Ok(Stop::Released) => {
                stopped(&ctx, &name);
                ctx.ownership.released(&name);
            }
            Ok(Stop::Resync(reason)) => {
                ctx.metrics.resync(&name, reason.label());
                watch_resync = Some(reason.label());
                let why = format!("the watch asked for a resync ({})", reason.label());
                ctx.state.update(&name, |s| {
                    s.resyncs += 1;
                    s.last_resync = Some(why.clone());
                });
                backoff.reset();
                // The next session's catch-up resyncs by the rule. Repeats back off, and the
                // log line says when the next try is, so it stays readable at any rate.
                if session_started.elapsed() >= RESYNC_QUIET {
                    resync_backoff.reset();
                }
                let delay = resync_backoff.next_delay();
                tracing::warn!(area = %name, reason = reason.label(), retry_in = ?delay, "watch asks for a resync");
                if !pause(&shutdown, &mut grant, delay).await {
                    return;
                }
            }
            Err(e) => {
                let msg = crate::errors::chain(&e);
                // A failure the error itself calls passing (backend, remote) takes the normal
                // backoff; one that needs a person (a broken repository, a full disk) is
                // tried again at the longest interval, not hammered.
                let delay = if e.is_retryable() {
                    backoff.next_delay()
                } else {
                    FIX_RETRY
                };
                tracing::warn!(area = %name, error = %msg, retryable = e.is_retryable(), retry_in = ?delay, "area loop failed; retrying");
                // Ask the backend now, so /readyz never names this failure before it says
                // whether the backend is the one at fault.
                super::health::probe(&ctx.health).await;
                ctx.state.update(&name, |s| s.last_error = Some(msg));
                if !pause(&shutdown, &mut grant, delay).await {
                    return;
                }
            }
        }
    }
}

/// Waits `delay`, or less when ownership changes (a hand-over must not wait out a backoff).
/// False on shutdown.
async fn pause(
    shutdown: &CancellationToken,
    grant: &mut tokio::sync::watch::Receiver<Grant>,
    delay: Duration,
) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
        changed = grant.changed() => changed.is_ok(),
    }
}

/// The area is not being followed here any more.
fn stopped(ctx: &AreaCtx, name: &str) {
    ctx.metrics.lag(name, 0.0);
    ctx.state.update(name, |s| {
        s.caught_up = false;
        s.ready = false;
        s.applied_once = false;
        s.owned_here = false;
        s.pending_events = 0;
        s.oldest_pending = None;
    });
}

/// A new owner starts from the remote's newest checkpoint of the area, so the events the
/// previous owner committed are not committed twice and the ones it did not are not lost.
async fn start_from_remote(ctx: &AreaCtx) -> Result<(), AreaError> {
    if ctx.engine.cfg.git.remote.is_none() {
        return Ok(());
    }
    Ok(ctx.integrate.remote().await?)
}

/// Catch up, then follow the watch until shutdown, a resync, a change of ownership, or an
/// error.
async fn session(
    ctx: &AreaCtx,
    area: &AreaConfig,
    shutdown: &CancellationToken,
    grant: &mut tokio::sync::watch::Receiver<Grant>,
    counted: Option<&'static str>,
) -> Result<Stop, AreaError> {
    let name = area.name.0.as_str();
    let backend = ctx.engine.backend().await?;
    let cluster = backend.cluster_id().await?;
    // What the watch delivered before it asked for a resync may have been incomplete, and
    // the checkpoint moved with it: then the whole area is compared, not only what came after.
    let resync = counted.map(|label| export::ResyncCause {
        label,
        why: format!("the watch asked for a resync ({label})"),
    });
    let report = catch_up(ctx, area, &cluster, resync).await?;
    if let Some(cause) = report.resync.as_ref().filter(|c| counted != Some(c.label)) {
        ctx.metrics.resync(name, cause.label);
        ctx.state.update(name, |s| {
            s.resyncs += 1;
            s.last_resync = Some(cause.why.clone());
        });
    }
    note_commit(ctx, name, &report);
    let cp = checkpoint::load(&ctx.engine, &area.name).await?;
    let from = cp.as_ref().map_or(report.revision, |c| c.revision);
    let applies_git = area.rule.mode.applies_git();
    let node = ctx.engine.cfg.sync.node.clone();
    ctx.state.update(name, |s| {
        s.owner = Some(node);
        s.owned_here = true;
        s.caught_up = true;
        s.last_error = None;
        // The catch-up committed everything up to now: nothing waits any more.
        s.pending_events = 0;
        s.oldest_pending = None;
        // kv-to-git is in sync once caught up; the others after their first apply.
        s.ready = s.ready || !applies_git;
    });
    if applies_git {
        ctx.trigger.apply();
    }
    let mut batch = Batch::new(from);
    // A catch-up held back by the mass-delete guard becomes the pending batch: it is
    // re-examined as events come (a restore of the keys lets it through), never dropped.
    let watch_from = match report.held {
        Some(held) => {
            batch.hold(
                report.held_changes,
                report.revision,
                Instant::now(),
                HOLD_RECHECK,
            );
            note_held(ctx, name, Some(&held));
            note_pending(ctx, name, &batch);
            report.revision
        }
        None => {
            note_held(ctx, name, None);
            from
        }
    };
    let mut stream = backend.watch(&area.prefix, watch_from.next()).await?;
    let mut last_checkpoint = Instant::now();
    let mut tick = tokio::time::interval(LAG_TICK);
    // A due batch waiting its turn for the Git lock (group commit): while other areas
    // commit, this one keeps taking in events, so under load commits grow instead of
    // queueing up. Dropped before any other path takes the lock: a queued request that
    // nobody polls would hold a released lock for itself.
    let mut queued: Option<futures::future::BoxFuture<'_, GitGuard<'_>>> = None;
    let batch_max = ctx.engine.cfg.sync.batch_max;
    loop {
        let deadline = batch
            .due(ctx.engine.cfg.sync.batch_window)
            .map(tokio::time::Instant::from_std);
        // A full batch stops taking events until it is committed (`batch_max` bounds a commit).
        let full = batch.events() >= batch_max;
        tokio::select! {
            _ = shutdown.cancelled() => {
                drop(queued.take());
                flush(ctx, area, &cluster, &mut batch).await?;
                catch_up_at_stop(ctx, area, &cluster).await?;
                return Ok(Stop::Shutdown);
            }
            changed = grant.changed() => {
                if changed.is_err() {
                    return Ok(Stop::Shutdown);
                }
                let now = *grant.borrow_and_update();
                match now {
                    Grant::Owned(_) => {}
                    Grant::HandOver(_) => {
                        drop(queued.take());
                        flush(ctx, area, &cluster, &mut batch).await?;
                        catch_up_at_stop(ctx, area, &cluster).await?;
                        return Ok(Stop::Released);
                    }
                    Grant::NotOwned | Grant::Released(_) => return Ok(Stop::Lost),
                }
            }
            _ = async { if let Some(d) = deadline { tokio::time::sleep_until(d).await } }, if deadline.is_some() && queued.is_none() => {
                queued = Some(Box::pin(ctx.git_lock.lock("commit")));
            }
            git = async { match queued.as_mut() { Some(turn) => turn.await, None => std::future::pending().await } }, if queued.is_some() => {
                queued = None;
                flush_locked(ctx, area, &cluster, &mut batch, git).await?;
                last_checkpoint = Instant::now();
            }
            _ = tick.tick() => {
                let lag = batch.first_at().map_or(0.0, |t| t.elapsed().as_secs_f64());
                ctx.metrics.lag(name, lag);
            }
            event = stream.next(), if !(full && queued.is_some()) => match event {
                None => {
                    return Err(AreaError::WatchEnded {
                        backend: backend.kind(),
                        area: name.to_string(),
                    })
                }
                Some(Err(e)) => {
                    drop(queued.take());
                    flush(ctx, area, &cluster, &mut batch).await?;
                    return Err(e.into());
                }
                Some(Ok(WatchEvent::ResyncNeeded(reason))) => {
                    drop(queued.take());
                    flush(ctx, area, &cluster, &mut batch).await?;
                    return Ok(Stop::Resync(reason));
                }
                Some(Ok(WatchEvent::Progress { revision })) => {
                    if batch.is_empty() && revision > batch.upto() {
                        batch.advance(revision);
                        if last_checkpoint.elapsed() >= IDLE_CHECKPOINT && queued.is_none() {
                            flush(ctx, area, &cluster, &mut batch).await?;
                            last_checkpoint = Instant::now();
                        }
                    }
                }
                Some(Ok(WatchEvent::Changes { revision, changes })) => {
                    let deletes = changes
                        .iter()
                        .filter(|c| matches!(c.kind, ChangeKind::Delete))
                        .count();
                    ctx.metrics.events(name, (changes.len() - deletes) as u64, deletes as u64);
                    batch.add(revision, changes, Instant::now());
                    note_pending(ctx, name, &batch);
                    let full = batch.events() >= batch_max;
                    if full && queued.is_none() && batch.may_retry(Instant::now()) {
                        // Full before its window ended: take the next turn for the lock.
                        queued = Some(Box::pin(ctx.git_lock.lock("commit")));
                    }
                }
            }
        }
    }
}

/// A held batch is examined again this often (and on `batch_max`), never in a tight loop.
const HOLD_RECHECK: Duration = Duration::from_secs(5);

/// Commits what changed since the area's checkpoint, read as a one-shot `export` reads it
/// (under the Git lock and the fence); with `resync`, the whole area against its base.
async fn catch_up(
    ctx: &AreaCtx,
    area: &AreaConfig,
    cluster: &ClusterId,
    resync: Option<export::ResyncCause>,
) -> Result<export::ExportReport, AreaError> {
    let _git = ctx.git_lock.lock("catch-up").await;
    let started = Instant::now();
    let opts = fence(ctx, area)?;
    let report = match resync {
        Some(cause) => export::resync_area(&ctx.engine, area, cluster, opts, cause).await?,
        None => export::export_area(&ctx.engine, area, cluster, opts).await?,
    };
    // A catch-up's commit is a commit like a batch's: after downtime it may be the largest
    // one, and a scraper that sees the checkpoint move must see the commit counted too.
    if report.commit.is_some() {
        ctx.metrics
            .commit(&area.name.0, started.elapsed().as_secs_f64());
    }
    Ok(report)
}

/// At shutdown or hand-over, once the batch is committed: commit what the store
/// acknowledged before we stopped that the watch has not delivered yet. Exact on every
/// backend, where waiting on the watch is not: etcd before 3.4.25 cannot say when a
/// watcher has seen everything.
async fn catch_up_at_stop(
    ctx: &AreaCtx,
    area: &AreaConfig,
    cluster: &ClusterId,
) -> Result<(), AreaError> {
    let report = catch_up(ctx, area, cluster, None).await?;
    if report.held.is_none() {
        note_commit(ctx, &area.name.0, &report);
    }
    Ok(())
}

/// The batch's size and age in `/status` (the lag gauge is refreshed from it).
fn note_pending(ctx: &AreaCtx, name: &str, batch: &Batch) {
    ctx.state.update(name, |s| {
        s.pending_events = batch.events() as u64;
        s.oldest_pending = batch.first_at();
    });
}

/// Commit the batch (one commit for the area, or none when the tree does not change) and
/// move the checkpoint to `upto`.
async fn flush(
    ctx: &AreaCtx,
    area: &AreaConfig,
    cluster: &ClusterId,
    batch: &mut Batch,
) -> Result<(), AreaError> {
    if !batch.has_news() {
        return Ok(());
    }
    let git = ctx.git_lock.lock("commit").await;
    flush_locked(ctx, area, cluster, batch, git).await
}

/// [`flush`] with the Git lock already held (`_git` is released once the commit is on the
/// branch).
async fn flush_locked(
    ctx: &AreaCtx,
    area: &AreaConfig,
    cluster: &ClusterId,
    batch: &mut Batch,
    _git: GitGuard<'_>,
) -> Result<(), AreaError> {
    if !batch.has_news() {
        return Ok(());
    }
    let name = area.name.0.as_str();
    let started = Instant::now();
    let opts = fence(ctx, area)?;
    let cp = checkpoint::load(&ctx.engine, &area.name)
        .await?
        .filter(|c| &c.cluster == cluster)
        .ok_or_else(|| AreaError::CheckpointGone {
            area: name.to_string(),
        })?;
    if cp.revision != batch.committed() {
        // Someone else moved it (another owner's push, adopted on fetch): start again from it.
        return Err(AreaError::Fenced(name.to_string()));
    }
    let upto = batch.upto();
    let report =
        export::incremental(&ctx.engine, area, cluster, cp, upto, batch.take(), opts).await?;
    drop(_git);
    if let Some(held) = &report.held {
        batch.hold(report.held_changes, upto, Instant::now(), HOLD_RECHECK);
        note_held(ctx, name, Some(held));
        note_pending(ctx, name, batch);
        return Ok(());
    }
    if report.commit.is_some() {
        ctx.metrics.commit(name, started.elapsed().as_secs_f64());
        ctx.repack.after_commit();
    }
    note_commit(ctx, name, &report);
    if batch.committed_all() {
        note_held(ctx, name, None);
    }
    ctx.metrics.lag(name, 0.0);
    ctx.state.update(name, |s| {
        s.pending_events = 0;
        s.oldest_pending = None;
    });
    Ok(())
}

/// Shows (or clears) a batch held back by the mass-delete guard: `/status`, `/readyz`,
/// `kvgit_export_refused`.
fn note_held(ctx: &AreaCtx, name: &str, held: Option<&export::HeldDeletes>) {
    let msg = held.map(ToString::to_string);
    ctx.metrics.export_refused(name, msg.is_some());
    ctx.state.update(name, |s| s.held = msg);
}

fn note_commit(ctx: &AreaCtx, name: &str, report: &export::ExportReport) {
    // Conflicts are counted when apply overwrites the live value, not here.
    ctx.metrics.checkpoint(name, report.revision.0);
    ctx.state.update(name, |s| {
        if let Some(unmapped) = &report.unmapped {
            s.unmapped_files = unmapped.clone();
        }
        s.checkpoint = Some(report.revision.0);
        if let Some(c) = report.commit {
            s.last_commit = Some(c.to_string());
            s.base_commit = Some(c.to_string());
        }
    });
    if let Some(c) = report.commit {
        tracing::info!(area = name, commit = %c, changes = report.changes, revision = %report.revision, "committed");
    }
}

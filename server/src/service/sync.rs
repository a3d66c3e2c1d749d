//! Git -> KV in the service: every `fetch_interval`, and at once on `POST /sync`, fetch the
//! remote, bring the local branch up to it, and apply the desired state to git-to-kv and both areas.
//!
//! A mass-delete refusal is reported (status, metrics) and not retried until the branch
//! tip changes: retrying the same commit would only refuse again.

use super::gitlock::GitLock;
use super::integrate::{IntegrateError, Integrator};
use super::metrics::Metrics;
use super::ownership::Ownership;
use super::state::ServiceState;
use super::trigger::SyncTrigger;
use crate::engine::apply::{self, plan_area, AreaPlan, OpKind};
use crate::engine::checkpoint::{CheckpointError, Judged};
use crate::engine::git::GitError;
use crate::engine::{checkpoint, export, ConnectError, Context};
use gitstore::ObjectId;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Why a fetch/apply pass failed as a whole (one area's own trouble is reported on the
/// area and does not fail the pass).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("fetch")]
    Fetch(#[from] IntegrateError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Backend(#[from] sync_core::BackendError),
    #[error(transparent)]
    Apply(#[from] apply::ApplyError),
    #[error(transparent)]
    Export(#[from] export::ExportError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Git(#[from] GitError),
}

/// What the fetch/apply loop needs.
pub struct SyncCtx {
    pub engine: Arc<Context>,
    pub git_lock: Arc<GitLock>,
    pub ownership: Arc<Ownership>,
    pub state: Arc<ServiceState>,
    pub metrics: Arc<Metrics>,
    /// `POST /sync` and the areas' catch-ups ask for passes here.
    pub trigger: Arc<SyncTrigger>,
    pub integrate: Integrator,
}

/// Overwritten live values kept in `/status` per area (the log keeps every one).
const MAX_CONFLICTS_KEPT: usize = 100;

/// What the loop remembers between passes.
#[derive(Default)]
pub struct Memory {
    /// Tip at which an area's apply was refused: skipped until the tip moves.
    refused: BTreeMap<String, Option<ObjectId>>,
    /// (tip, checkpoint commit) of an area's last complete apply: while neither moves,
    /// Git has nothing new and no live change was seen, so the area is not re-read.
    applied: BTreeMap<String, (Option<ObjectId>, ObjectId)>,
    /// The desired key tree an area's last plan validated: the next plan checks only the
    /// files changed since (see `apply::plan_area_delta`).
    validated: BTreeMap<String, Option<ObjectId>>,
}

pub async fn run(ctx: SyncCtx, shutdown: CancellationToken) {
    let mut memory = Memory::default();
    loop {
        if let Err(e) = sync_once(&ctx, &mut memory).await {
            let msg = crate::errors::chain(&e);
            tracing::warn!(error = %msg, "fetch/apply failed; retrying at the next interval");
            ctx.state.set_sync_error(Some(msg));
            // A pass that failed before it took the areas' requests (the backend down)
            // would otherwise start again at once, and again: it waits for the interval
            // (or for someone asking for a fetch).
            ctx.trigger.take_apply();
        } else {
            ctx.state.set_sync_error(None);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(ctx.engine.cfg.sync.fetch_interval) => {}
            _ = ctx.trigger.requested() => {}
        }
    }
}

/// One fetch + apply pass.
///
/// A remote that cannot be fetched delays only what it would bring: the local branch is
/// still applied (a first apply makes the area ready), and the fetch error is returned
/// after it, for `/status`.
pub async fn sync_once(ctx: &SyncCtx, memory: &mut Memory) -> Result<(), SyncError> {
    ctx.trigger.take_fetch();
    let fetched = match ctx.engine.cfg.git.remote {
        Some(_) => ctx.integrate.remote().await.map_err(SyncError::from),
        None => Ok(()),
    };
    apply_local(ctx, memory).await?;
    fetched
}

/// Apply the local branch to the git-to-kv and both areas this node owns.
async fn apply_local(ctx: &SyncCtx, memory: &mut Memory) -> Result<(), SyncError> {
    let engine = &ctx.engine;
    let backend = engine.backend().await?;
    let cluster = backend.cluster_id().await?;
    let _git = ctx.git_lock.lock("apply").await;
    correct_kv_to_git(ctx, memory, &cluster).await?;
    let areas: Vec<_> = engine
        .cfg
        .areas
        .iter()
        .filter(|a| a.rule.mode.applies_git())
        .cloned()
        .collect();
    if areas.is_empty() {
        return Ok(());
    }
    // The areas that have caught up by now are this pass's; one that catches up later asks
    // for the next pass.
    ctx.trigger.take_apply();
    let caught_up: Vec<bool> = areas
        .iter()
        .map(|a| ctx.state.caught_up(&a.name.0))
        .collect();
    let tip = apply::target_commit(engine, None).await?;
    let mut plans: Vec<AreaPlan> = Vec::new();
    for (area, caught_up) in areas.iter().zip(caught_up) {
        let name = area.name.0.clone();
        // Only the owner applies: it is the one moving the area's checkpoint, under the
        // epoch this check passed.
        let Some(epoch) = ctx.ownership.fence(&name) else {
            continue;
        };
        // Apply on top of what the batcher has committed, never before its first catch-up.
        let cp = match checkpoint::load(engine, &area.name).await {
            Ok(Some(cp)) => cp,
            Ok(None) => continue,
            Err(e) => {
                // This area's record is unreadable: its own task reports it; the other
                // areas are applied.
                ctx.state
                    .update(&name, |s| s.apply_error = Some(crate::errors::chain(&e)));
                continue;
            }
        };
        if !caught_up {
            continue;
        }
        // A restarted area task (a lost and regained area, a held batch let go) has not
        // applied yet, even when tip and checkpoint are the ones last applied.
        let unchanged =
            memory.applied.get(&name) == Some(&(tip, cp.id)) && ctx.state.applied_once(&name);
        if memory.refused.get(&name) == Some(&tip) || unchanged {
            continue;
        }
        let validated = memory.validated.get(&name).copied();
        match plan(engine, area, tip, &cluster, validated).await {
            Ok(mut plan) => {
                memory.validated.insert(name.clone(), plan.desired_tree);
                plan.epoch = Some(epoch);
                memory.refused.remove(&name);
                // The status and the gauge change together: a reader never sees one cleared
                // and the other still set. The last apply error stays shown until the write
                // has succeeded: a retry that fails the same way must not blink it away.
                ctx.metrics.refused(&name, false);
                ctx.state.update(&name, |s| s.refused = None);
                plans.push(plan);
            }
            Err(e @ apply::ApplyError::MassDelete(_)) => {
                let msg = crate::errors::chain(&e);
                tracing::error!(area = %name, error = %msg, "apply refused");
                ctx.metrics.refused(&name, true);
                ctx.state.update(&name, |s| s.refused = Some(msg));
                memory.refused.insert(name, tip);
            }
            Err(e @ apply::ApplyError::Unverified(_)) => {
                // A commit no allowed signer signed: nothing of the area is written until
                // the tip moves (a signed fix, or the commit removed).
                let msg = crate::errors::chain(&e);
                tracing::error!(area = %name, error = %msg, "tip not verified; not applied");
                ctx.metrics.unverified(&name, true);
                ctx.state.update(&name, |s| s.apply_error = Some(msg));
                memory.refused.insert(name, tip);
            }
            Err(e) => {
                // One area's bad desired state (a file that maps to no key, a value over
                // the limit) must not stop the others: reported on the area, tried again
                // at the next pass.
                let msg = crate::errors::chain(&e);
                tracing::warn!(area = %name, error = %msg, retryable = e.is_retryable(), "cannot apply the area");
                ctx.state.update(&name, |s| s.apply_error = Some(msg));
                if !e.is_retryable() {
                    // Bad desired state (a file, a value): the same tip fails the same way,
                    // so it is planned again when the tip moves, not every interval.
                    memory.refused.insert(name, tip);
                }
            }
        }
    }
    let plans = std::sync::Arc::new(plans);
    let written = match apply::write_plans(engine, &plans).await {
        Ok(written) => written,
        Err(e) => {
            // The pass's areas with writes are not recorded as applied: each shows why (a
            // backend refusal names the key and the credential), not only the pass.
            let msg = crate::errors::chain(&e);
            for plan in plans.iter() {
                let error = (!plan.ops.is_empty()).then(|| msg.clone());
                settle_apply_error(ctx, &plan.area.name.0, error);
            }
            return Err(e.into());
        }
    };
    for (plan, w) in plans.iter().zip(&written) {
        let name = plan.area.name.0.as_str();
        settle_apply_error(ctx, name, None);
        if w.raced.is_empty() {
            // The checkpoint as the apply left it (it moves when the base moved).
            if let Some(cp) = checkpoint::load(engine, &plan.area.name).await? {
                memory.applied.insert(name.to_string(), (tip, cp.id));
            }
        } else {
            memory.applied.remove(name);
        }
        let puts = (plan.count(OpKind::Add) + plan.count(OpKind::Change)) as u64;
        let deletes = plan.count(OpKind::Delete) as u64;
        if puts + deletes > 0 {
            ctx.metrics.applied(name, puts, deletes);
            tracing::info!(area = name, puts, deletes, "applied Git to the KV store");
        }
        let conflicts = plan.ops.iter().filter(|o| o.overwrites().is_some()).count() as u64;
        if conflicts > 0 {
            ctx.metrics.conflicts(name, conflicts);
            for op in plan.ops.iter() {
                let Some(overwritten) = op.overwrites() else {
                    continue;
                };
                let overwritten = String::from_utf8_lossy(overwritten);
                tracing::warn!(area = name, key = %op.key, %overwritten, "Git won a conflict; live value overwritten");
            }
        }
        // What still differs once the writes are in: a reverted key no longer does (a pass
        // whose writes raced counts every drift key until the next pass reads them again).
        let reverted = if w.raced.is_empty() {
            plan.drift_reverted
        } else {
            0
        };
        if reverted > 0 {
            tracing::info!(
                area = name,
                keys = reverted,
                "live drift reverted to Git's values"
            );
        }
        let drift = (plan.drift.len() - reverted) as u64;
        ctx.metrics.drift(name, drift);
        ctx.state.update(name, |s| {
            s.drift = drift;
            s.applied_once = s.applied_once || w.raced.is_empty();
            s.ready = s.caught_up && s.applied_once;
            // Kept across passes (newest last, bounded): a later apply must not erase the
            // record of a value Git overwrote.
            s.last_conflicts.extend(plan.ops.iter().filter_map(|o| {
                o.overwrites()
                    .map(|v| (o.key.to_string(), String::from_utf8_lossy(v).into_owned()))
            }));
            let excess = s.last_conflicts.len().saturating_sub(MAX_CONFLICTS_KEPT);
            s.last_conflicts.drain(..excess);
        });
    }
    Ok(())
}

/// The area's plan: from what changed in Git when that is all that can need a write (a
/// `both` area with a trusted base: see `apply::plan_area_delta`), else from the whole area.
/// A pass after live changes alone then costs a diff of two equal trees, not a read of the
/// area (at 1M keys under a live trickle, that read made the serve's CPU 18.9× and etcd's
/// 24.7× what recording alone costs: docs/performance.md, twenty-first round).
async fn plan(
    engine: &Context,
    area: &crate::config::AreaConfig,
    tip: Option<ObjectId>,
    cluster: &sync_core::ClusterId,
    validated: Option<Option<ObjectId>>,
) -> Result<AreaPlan, apply::ApplyError> {
    let started = std::time::Instant::now();
    if let Some(plan) = apply::plan_area_delta(engine, area, tip, cluster, validated).await? {
        tracing::debug!(area = %area.name, elapsed = ?started.elapsed(), ops = plan.ops.len(), "planned from the change");
        return Ok(plan);
    }
    let plan = plan_area(engine, area, tip, cluster, false).await?;
    tracing::debug!(area = %area.name, elapsed = ?started.elapsed(), ops = plan.ops.len(), "planned from the whole area");
    Ok(plan)
}

/// The area's apply outcome once its writes are done: the tip was verified (it was
/// planned), so the unverified gauge clears with the error it had set.
fn settle_apply_error(ctx: &SyncCtx, name: &str, error: Option<String>) {
    ctx.metrics.unverified(name, false);
    ctx.state.update(name, |s| s.apply_error = error);
}

/// A kv-to-git area whose tree at the tip is not its base was edited in Git (a foreign
/// commit): the rule gives the live value back, so run the three-way pass, which commits
/// it. Skipped while neither the tip nor the checkpoint moved. The caller holds the Git lock.
async fn correct_kv_to_git(
    ctx: &SyncCtx,
    memory: &mut Memory,
    cluster: &sync_core::ClusterId,
) -> Result<(), SyncError> {
    let engine = &ctx.engine;
    let tip = apply::target_commit(engine, None).await?;
    for area in engine
        .cfg
        .areas
        .iter()
        .filter(|a| !a.rule.mode.applies_git())
    {
        let name = area.name.0.clone();
        let Some(epoch) = ctx.ownership.fence(&name) else {
            continue;
        };
        if !ctx.state.caught_up(&name) {
            continue;
        }
        let current = engine.backend().await?.current_revision().await?;
        let Ok(loaded) = checkpoint::load(engine, &area.name).await else {
            continue; // reported by the area's own task
        };
        // Only against a trusted base; otherwise the area task resyncs it with no base.
        let Judged::Trusted(cp) = Judged::judge(loaded, &area.name, cluster, current) else {
            continue;
        };
        if memory.applied.get(&name) == Some(&(tip, cp.id)) {
            continue;
        }
        let (path, format) = (area.path.clone(), area.format);
        let current = engine
            .git_blocking(move |git| crate::engine::view::key_tree_lenient(git, tip, &path, format))
            .await?;
        if current != cp.base_tree {
            let opts = export::ExportOptions {
                guard: export::DeleteGuard::from_config(&engine.cfg, false),
                epoch: Some(epoch),
            };
            let report = export::full_pass(
                engine,
                area,
                cluster,
                Some(cp),
                export::PassKind::Resync,
                opts,
            )
            .await?;
            if let Some(c) = report.commit {
                tracing::info!(area = %name, commit = %c, changes = report.changes, "Git edits of a kv-to-git area reverted to the live values");
            }
        }
        let after = apply::target_commit(engine, None).await?;
        if let Some(cp) = checkpoint::load(engine, &area.name).await? {
            memory.applied.insert(name, (after, cp.id));
        }
    }
    Ok(())
}

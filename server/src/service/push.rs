//! The remote: push the branch and the checkpoint refs every `push_interval`; a rejected
//! push fetches, replays our commits on the new remote tip (areas are disjoint, so this
//! never conflicts) and pushes again. Never forced; an unreachable remote only delays.

use super::Service;
use crate::engine::{message, refs};
use anyhow::{anyhow, Context as _};
use gitstore::{GitStore, ObjectId, PushOutcome};
use std::collections::BTreeSet;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Bounded: another node pushing in between each time means something is off.
const PUSH_ATTEMPTS: usize = 5;

pub async fn run(svc: Arc<Service>, shutdown: CancellationToken) {
    if svc.ctx.cfg.git.remote.is_none() {
        return;
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(svc.ctx.cfg.sync.push_interval) => {}
        }
        push_now(&svc).await;
    }
}

/// One push attempt (with replays), recorded in metrics; errors are logged, not fatal.
pub async fn push_now(svc: &Arc<Service>) {
    match push_once(svc).await {
        Ok(true) => svc.metrics.push(super::metrics::PushResult::Ok),
        Ok(false) => {}
        Err(e) => {
            let msg = format!("{e:#}");
            tracing::warn!(error = %msg, "push failed; commits stay queued locally");
            svc.metrics.push(super::metrics::PushResult::Error);
            svc.state.set_push_error(Some(msg));
        }
    }
}

/// Push if the local branch or a checkpoint is ahead of what the remote has. Ok(false):
/// nothing to push.
async fn push_once(svc: &Arc<Service>) -> anyhow::Result<bool> {
    let Some(remote) = svc.ctx.cfg.git.remote.clone() else {
        return Ok(false);
    };
    for attempt in 0..PUSH_ATTEMPTS {
        let pending = {
            let _git = svc.git_lock.lock("push").await;
            pending_updates(svc).await?
        };
        let (mut updates, mut areas) = pending;
        // Only an owner with a live lease publishes an area: anything else is left out first.
        if areas.iter().any(|a| svc.ownership.fence(a).is_none()) {
            integrate_remote(svc).await?;
            let _git = svc.git_lock.lock("push").await;
            (updates, areas) = pending_updates(svc).await?;
            if areas.iter().any(|a| svc.ownership.fence(a).is_none()) {
                anyhow::bail!("checkpoints of areas this node does not own are still pending");
            }
        }
        if updates.is_empty() {
            svc.state.set_push_error(None);
            return Ok(false);
        }
        let url = remote.clone();
        let branch = svc.ctx.cfg.git.branch.clone();
        // Network I/O without the Git lock: areas keep committing while the remote is slow.
        // The push is a compare-and-swap on the remote, so commits made meanwhile simply
        // go with the next one.
        let outcome = svc
            .ctx
            .git_blocking(move |git| -> anyhow::Result<_> {
                let outcome = git.push(&url, &updates)?;
                if matches!(outcome, PushOutcome::Pushed) {
                    // Remember what the remote has now, so an idle service pushes nothing.
                    note_pushed(git, &branch, &updates)?;
                }
                Ok(outcome)
            })
            .await?;
        match outcome {
            PushOutcome::Pushed => {
                svc.state.set_push_error(None);
                return Ok(true);
            }
            PushOutcome::Rejected { .. } => {
                svc.metrics.push(super::metrics::PushResult::Rejected);
                tracing::info!(
                    attempt,
                    "push rejected: replaying our commits on the remote tip"
                );
                integrate_remote(svc).await?;
            }
        }
    }
    Err(anyhow!("push still rejected after {PUSH_ATTEMPTS} replays"))
}

/// The refs the remote lacks: the branch when ours is not what we last fetched, and each
/// area's checkpoint when it differs from the remote's.
async fn pending_updates(
    svc: &Arc<Service>,
) -> anyhow::Result<(Vec<(ObjectId, String)>, Vec<String>)> {
    let branch = svc.ctx.cfg.git.branch.clone();
    let areas: Vec<String> = svc.ctx.cfg.areas.iter().map(|a| a.name.0.clone()).collect();
    svc.ctx
        .git_blocking(move |git| {
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

/// Fetch, then bring the local branch up to the remote tip: fast-forward when we have no
/// commits of our own, replay ours on top otherwise. The fetch runs without the Git lock
/// (a slow remote must not stop commits); the integration takes it. The caller must not
/// hold it.
///
/// Per area, our local checkpoint (and the local commits behind it) survives only while this
/// node owns the area with a live lease and is strictly ahead of the remote's checkpoint,
/// whose epoch is not newer than ours. Otherwise the remote's checkpoint is adopted and our
/// unpushed commits of that area are left out: that is the fence against a stale owner, and
/// nothing is lost, since the owner commits every event after the remote's checkpoint.
pub async fn integrate_remote(svc: &Arc<Service>) -> anyhow::Result<()> {
    integrate(svc, false).await
}

/// At start, before ownership is known: keep local work that is strictly ahead of the remote
/// (a restart after `kill -9` with unpushed commits); the first push drops what this node
/// turns out not to own.
pub async fn integrate_at_start(svc: &Arc<Service>) -> anyhow::Result<()> {
    integrate(svc, true).await
}

async fn integrate(svc: &Arc<Service>, at_start: bool) -> anyhow::Result<()> {
    let Some(remote) = svc.ctx.cfg.git.remote.clone() else {
        return Ok(());
    };
    let branch = svc.ctx.cfg.git.branch.clone();
    let areas: Vec<(String, String, Option<sync_core::Epoch>)> = svc
        .ctx
        .cfg
        .areas
        .iter()
        .map(|a| {
            let fence = svc.ownership.fence(&a.name.0);
            (a.name.0.clone(), a.path.clone(), fence)
        })
        .collect();
    let fetch_branch = branch.clone();
    let theirs = svc
        .ctx
        .git_blocking(move |git| {
            git.fetch(&remote, &fetch_branch)
                .with_context(|| format!("git.remote {}", gitstore::redact_url(&remote)))
        })
        .await?;
    let _git = svc.git_lock.lock("integrate").await;
    let dropped = svc
        .ctx
        .git_blocking(move |git| -> anyhow::Result<_> {
            let mut fenced: BTreeSet<String> = BTreeSet::new();
            for (name, _, fence) in &areas {
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
                // With no checkpoint of the area on the remote, nobody published it yet: our
                // local work is the only record of it and is kept (dropping it while the
                // branch keeps older commits would let a no-base pass resurrect deletes).
                // Whoever owns the area publishes first; we then adopt theirs.
                let keep = remote_cp.is_none()
                    || ahead && (fence.is_some() || at_start) && !newer_remote_epoch;
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
        })
        .await?;
    for area in dropped {
        svc.metrics.fenced(&area);
    }
    Ok(())
}

/// The epoch stamped on a checkpoint commit, if any.
fn checkpoint_epoch(git: &GitStore, id: ObjectId) -> anyhow::Result<Option<sync_core::Epoch>> {
    let info = git.commit_info(id)?;
    Ok(message::parse_trailers(&info.message)
        .get(message::EPOCH)
        .and_then(|e| e.parse().ok())
        .map(sync_core::Epoch))
}

/// Whether the remote has this area's checkpoint as we have it (nothing left to publish).
pub async fn area_pushed(svc: &Arc<Service>, area: &str) -> anyhow::Result<bool> {
    if svc.ctx.cfg.git.remote.is_none() {
        return Ok(true);
    }
    let local = refs::checkpoint_ref(area);
    let theirs = refs::remote_checkpoint_ref(area);
    svc.ctx
        .git_blocking(move |git| Ok(git.read_ref(&local)? == git.read_ref(&theirs)?))
        .await
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

/// After a push, our tracking refs say what the remote now holds.
fn note_pushed(git: &GitStore, branch: &str, updates: &[(ObjectId, String)]) -> anyhow::Result<()> {
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

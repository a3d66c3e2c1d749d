//! The remote: push the branch and the checkpoint refs every `push_interval`; a rejected
//! push fetches, replays our commits on the new remote tip (areas are disjoint, so this
//! never conflicts) and pushes again. Never forced; an unreachable remote only delays.

use super::Service;
use crate::engine::message;
use anyhow::{anyhow, Context as _};
use gitstore::{GitStore, ObjectId, PushOutcome};
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
        let _git = svc.git_lock.lock().await;
        let updates = pending_updates(svc).await?;
        if updates.is_empty() {
            svc.state.set_push_error(None);
            return Ok(false);
        }
        let url = remote.clone();
        let branch = svc.ctx.cfg.git.branch.clone();
        let outcome = svc
            .ctx
            .git_blocking(move |git| {
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
async fn pending_updates(svc: &Arc<Service>) -> anyhow::Result<Vec<(ObjectId, String)>> {
    let branch = svc.ctx.cfg.git.branch.clone();
    let areas: Vec<String> = svc.ctx.cfg.areas.iter().map(|a| a.name.0.clone()).collect();
    svc.ctx
        .git_blocking(move |git| {
            let mut updates = Vec::new();
            if let Some(tip) = git.tip()? {
                if git.read_ref(&gitstore::tracking_ref(&branch))? != Some(tip) {
                    updates.push((tip, format!("refs/heads/{branch}")));
                }
            }
            for name in areas {
                let local = format!("refs/kvgit/checkpoints/{name}");
                let theirs = format!("refs/remotes/kvgit-meta/checkpoints/{name}");
                if let Some(id) = git.read_ref(&local)? {
                    if git.read_ref(&theirs)? != Some(id) {
                        updates.push((id, local));
                    }
                }
            }
            Ok(updates)
        })
        .await
}

/// Fetch, then bring the local branch up to the remote tip: fast-forward when we have no
/// commits of our own, replay ours on top otherwise. Adopt remote checkpoints we lack.
/// The caller holds the Git lock.
pub async fn integrate_remote(svc: &Arc<Service>) -> anyhow::Result<()> {
    let Some(remote) = svc.ctx.cfg.git.remote.clone() else {
        return Ok(());
    };
    let branch = svc.ctx.cfg.git.branch.clone();
    let areas: Vec<(String, String)> = svc
        .ctx
        .cfg
        .areas
        .iter()
        .map(|a| (a.name.0.clone(), a.path.clone()))
        .collect();
    svc.ctx
        .git_blocking(move |git| {
            let theirs = git
                .fetch(&remote, &branch)
                .with_context(|| format!("git.remote {remote}"))?;
            for (name, _) in &areas {
                let local = format!("refs/kvgit/checkpoints/{name}");
                let remote_cp = format!("refs/remotes/kvgit-meta/checkpoints/{name}");
                if git.read_ref(&local)?.is_none() {
                    if let Some(id) = git.read_ref(&remote_cp)? {
                        git.update_ref(&local, id, None, "kvgit: adopt the remote checkpoint")?;
                    }
                }
            }
            let Some(theirs) = theirs else { return Ok(()) };
            let ours = git.tip()?;
            let new_tip = match ours {
                None => theirs,
                Some(ours) => {
                    let dirs_of = |c: &gitstore::CommitInfo| area_dirs(c, &areas);
                    git.replay(ours, theirs, &dirs_of)?.tip
                }
            };
            if Some(new_tip) != ours {
                git.update_ref(
                    &format!("refs/heads/{branch}"),
                    new_tip,
                    ours,
                    "kvgit: bring in the remote",
                )?;
            }
            Ok(())
        })
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
        let tracking = match remote_ref.strip_prefix("refs/kvgit/") {
            Some(rest) => format!("refs/remotes/kvgit-meta/{rest}"),
            None => gitstore::tracking_ref(branch),
        };
        let current = git.read_ref(&tracking)?;
        if current != Some(*id) {
            git.update_ref(&tracking, *id, current, "kvgit: pushed")?;
        }
    }
    Ok(())
}

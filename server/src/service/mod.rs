//! `kvgit serve`: the long-running service. One task per area (watch -> batch -> commit),
//! one fetch/apply loop, one pusher and the HTTP endpoints, all stopped by one token.

pub mod area;
pub mod backoff;
pub mod gitlock;
pub mod health;
pub mod http;
pub mod integrate;
pub mod metrics;
pub mod notify;
pub mod ownership;
pub mod push;
pub mod state;
pub mod sync;
#[cfg(test)]
mod tests;
pub mod trigger;
pub mod ui;
pub mod webhook;

use crate::engine::Context;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long shutdown may take: flush batches, commit, one push.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(20);

/// Merge packs after this many commits, so object lookups stay fast...
const REPACK_EVERY: usize = 64;
/// ...once recording has paused this long: during a burst the merge (seconds at a million
/// keys) would take CPU from recording and from a backend on the same machine...
const REPACK_QUIET: Duration = Duration::from_secs(2);
/// ...or, under load that never pauses, after this many commits anyway.
const REPACK_AT_MOST: usize = 512;

/// Counts commits and merges packs every `REPACK_EVERY` (large commits each write a pack).
///
/// The merge runs beside the commits, not under the Git lock: at a million keys it takes
/// seconds, and holding the lock that long stalled every area's commits behind it. Git's
/// repack is safe beside writers (it deletes a pack only once its objects are in the new
/// one, and leaves packs and loose objects written meanwhile alone).
pub struct Repacker {
    engine: Arc<Context>,
    state: Arc<RepackState>,
}

/// What the commits and the merging task share.
struct RepackState {
    /// Commits since the last merge started.
    commits: AtomicUsize,
    /// When the last commit was made.
    last_commit: std::sync::Mutex<std::time::Instant>,
    /// A merge is waiting for a pause or running.
    running: AtomicBool,
}

impl Repacker {
    pub fn new(engine: Arc<Context>) -> Repacker {
        Repacker {
            engine,
            state: Arc::new(RepackState {
                commits: AtomicUsize::new(0),
                last_commit: std::sync::Mutex::new(std::time::Instant::now()),
                running: AtomicBool::new(false),
            }),
        }
    }

    /// Count a commit; every `REPACK_EVERY`, start a background task that merges packs at
    /// the next pause in recording (see `REPACK_QUIET`), unless one is waiting or running.
    pub fn after_commit(&self) {
        let st = &self.state;
        *st.last_commit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = std::time::Instant::now();
        if st.commits.fetch_add(1, Ordering::Relaxed) + 1 < REPACK_EVERY
            || st.running.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let st = self.state.clone();
        let engine = self.engine.clone();
        tokio::spawn(async move {
            loop {
                let idle = st
                    .last_commit
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .elapsed();
                if idle >= REPACK_QUIET || st.commits.load(Ordering::Relaxed) >= REPACK_AT_MOST {
                    break;
                }
                tokio::time::sleep(REPACK_QUIET - idle).await;
            }
            st.commits.store(0, Ordering::Relaxed);
            engine.merge_packs(None).await;
            st.running.store(false, Ordering::Release);
        });
    }
}

/// Runs the service on `listener` until `shutdown` is cancelled (the CLI cancels it on
/// SIGTERM/SIGINT; tests cancel it themselves), then stops within the deadline: every area
/// drains and commits, one last push, the lease is revoked.
pub async fn run(engine: Context, listener: TcpListener, shutdown: CancellationToken) -> u8 {
    let engine = Arc::new(engine);
    let cfg = &engine.cfg;
    let names: Vec<&str> = cfg.areas.iter().map(|a| a.name.0.as_str()).collect();
    let metrics = Arc::new(metrics::Metrics::new());
    metrics.for_areas(&names);
    let git_lock = Arc::new(gitlock::GitLock::default());
    let state = Arc::new(state::ServiceState::new(cfg).with_git_lock(git_lock.clone()));
    let area_names: Vec<sync_core::AreaName> = cfg.areas.iter().map(|a| a.name.clone()).collect();
    let ownership = Arc::new(ownership::Ownership::new(
        &cfg.sync.node,
        &cfg.sync.ownership_prefix,
        &area_names,
    ));
    let trigger = Arc::new(trigger::SyncTrigger::default());
    let integrate = integrate::Integrator {
        engine: engine.clone(),
        git_lock: git_lock.clone(),
        remote_lock: Arc::new(gitlock::GitLock::default()),
        ownership: ownership.clone(),
        metrics: metrics.clone(),
    };
    let health = health::HealthCtx {
        engine: engine.clone(),
        state: state.clone(),
        metrics: metrics.clone(),
    };
    let push = push::PushCtx {
        engine: engine.clone(),
        git_lock: git_lock.clone(),
        ownership: ownership.clone(),
        state: state.clone(),
        metrics: metrics.clone(),
        integrate: integrate.clone(),
    };
    let (push_handle, push_requests) = push::PushHandle::channel();
    let owner = ownership::OwnershipCtx {
        engine: engine.clone(),
        ownership: ownership.clone(),
        metrics: metrics.clone(),
        state: state.clone(),
        push: push_handle,
    };
    let area_ctx = area::AreaCtx {
        engine: engine.clone(),
        git_lock: git_lock.clone(),
        ownership: ownership.clone(),
        state: state.clone(),
        metrics: metrics.clone(),
        trigger: trigger.clone(),
        repack: Arc::new(Repacker::new(engine.clone())),
        integrate: integrate.clone(),
        health: health.clone(),
    };
    let sync = sync::SyncCtx {
        engine: engine.clone(),
        git_lock,
        ownership,
        state: state.clone(),
        metrics: metrics.clone(),
        trigger: trigger.clone(),
        integrate: integrate.clone(),
    };

    let listen = listener
        .local_addr()
        .map_or_else(|_| cfg.server.listen.clone(), |a| a.to_string());
    let page = ui::router(ui::UiContext {
        engine: engine.clone(),
        state: state.clone(),
        metrics: metrics.clone(),
    })
    .merge(http::api_router(engine.clone()));
    let http = tokio::spawn(http::serve_with_routes(
        listener,
        http::HttpContext {
            state,
            metrics,
            trigger,
            credentials: webhook::Credentials {
                sync_token: cfg.server.sync_token.clone(),
                webhook_secret: cfg.server.webhook_secret.clone(),
            },
        },
        page,
        shutdown.clone(),
    ));
    tracing::info!(listen = %listen, node = %cfg.sync.node, "kvgit serve started");

    // Start from the remote's state when there is one (a new node adopts the checkpoints).
    if cfg.git.remote.is_some() {
        if let Err(e) = integrate.at_start().await {
            tracing::warn!(error = %crate::errors::chain(&e), "first fetch failed; continuing with the local repository");
        }
    }
    ownership::start(&owner).await;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(notify::run(health.state.clone(), shutdown.clone()));
    tasks.spawn(health::run(health, shutdown.clone()));
    tasks.spawn(ownership::run(owner.clone(), shutdown.clone()));
    for area in cfg.areas.clone() {
        tasks.spawn(area::run(area_ctx.clone(), area, shutdown.clone()));
    }
    tasks.spawn(sync::run(sync, shutdown.clone()));
    // The pusher outlives the other tasks: it makes the last push itself below.
    let pusher_stop = CancellationToken::new();
    let pusher = tokio::spawn(push::run(push, push_requests, pusher_stop.clone()));

    shutdown.cancelled().await;
    tracing::info!("shutting down: flushing batches");
    let drained = tokio::time::timeout(SHUTDOWN_DEADLINE, async {
        while tasks.join_next().await.is_some() {}
        pusher_stop.cancel();
        if let Ok(ctx) = pusher.await {
            push::push_now(&ctx).await;
        }
        // Only now, with everything committed and pushed, let the areas go at once.
        ownership::stop(&owner).await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "shutdown deadline passed; exiting with work in flight (the checkpoint makes it safe)"
        );
    }
    let _ = http.await;
    0
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
pub async fn on_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    shutdown.cancel();
}

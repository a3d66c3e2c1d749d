//! `kvgit serve`: the long-running service. One task per area (watch -> batch -> commit),
//! one fetch/apply loop, one pusher and the HTTP endpoints, all stopped by one token.

pub mod area;
pub mod backoff;
pub mod gitlock;
pub mod health;
pub mod http;
pub mod metrics;
pub mod ownership;
pub mod push;
pub mod state;
pub mod sync;

use crate::engine::Context;
use anyhow::Context as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How long shutdown may take: flush batches, commit, one push.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(20);

/// What every task of the service shares.
pub struct Service {
    pub ctx: Context,
    pub metrics: Arc<metrics::Metrics>,
    pub state: Arc<state::ServiceState>,
    /// Serialises every write to the branch and the checkpoint refs.
    pub git_lock: Arc<gitlock::GitLock>,
    /// `POST /sync` and the fetch timer meet here; concurrent triggers coalesce.
    pub trigger: Arc<Notify>,
    /// Commits since the last pack merge (large commits each write a pack).
    pub commits_since_repack: std::sync::atomic::AtomicUsize,
    /// Which areas this node owns, through the backend's leases.
    pub ownership: Arc<ownership::Ownership>,
}

/// Merge packs after this many commits, so object lookups stay fast.
const REPACK_EVERY: usize = 64;

impl Service {
    /// Count a commit; every `REPACK_EVERY`, merge packs (under the Git lock, which the
    /// caller must not hold).
    pub async fn after_commit(&self) {
        use std::sync::atomic::Ordering;
        if self.commits_since_repack.fetch_add(1, Ordering::Relaxed) + 1 < REPACK_EVERY {
            return;
        }
        self.commits_since_repack.store(0, Ordering::Relaxed);
        let _git = self.git_lock.lock("repack").await;
        let started = std::time::Instant::now();
        match self
            .ctx
            .git_blocking(|git| -> anyhow::Result<_> { Ok(git.repack_geometric()?) })
            .await
        {
            Ok(()) => tracing::debug!(elapsed = ?started.elapsed(), "packs merged"),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "repack failed; will try again later")
            }
        }
    }
}

/// Run until SIGTERM/SIGINT (or `shutdown` from a caller), then stop within the deadline.
pub async fn run(ctx: Context) -> anyhow::Result<u8> {
    let listen = ctx.cfg.server.listen.clone();
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("server.listen {listen}: cannot listen"))?;
    let names: Vec<&str> = ctx.cfg.areas.iter().map(|a| a.name.0.as_str()).collect();
    let metrics = Arc::new(metrics::Metrics::new());
    metrics.for_areas(&names);
    let git_lock = Arc::new(gitlock::GitLock::default());
    let state = Arc::new(state::ServiceState::new(&ctx.cfg).with_git_lock(git_lock.clone()));
    let area_names: Vec<sync_core::AreaName> =
        ctx.cfg.areas.iter().map(|a| a.name.clone()).collect();
    let ownership = Arc::new(ownership::Ownership::new(
        &ctx.cfg.sync.node,
        &ctx.cfg.sync.ownership_prefix,
        &area_names,
    ));
    let svc = Arc::new(Service {
        ownership,
        ctx,
        metrics,
        state,
        git_lock,
        trigger: Arc::new(Notify::new()),
        commits_since_repack: std::sync::atomic::AtomicUsize::new(0),
    });
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));

    let http = tokio::spawn(http::serve(
        listener,
        http::HttpContext {
            state: svc.state.clone(),
            metrics: svc.metrics.clone(),
            trigger: svc.trigger.clone(),
            sync_token: svc.ctx.cfg.server.sync_token.clone(),
        },
        shutdown.clone(),
    ));
    tracing::info!(listen = %listen, node = %svc.ctx.cfg.sync.node, "kvgit serve started");

    // Start from the remote's state when there is one (a new node adopts the checkpoints).
    if svc.ctx.cfg.git.remote.is_some() {
        if let Err(e) = push::integrate_at_start(&svc).await {
            tracing::warn!(error = %format!("{e:#}"), "first fetch failed; continuing with the local repository");
        }
    }
    ownership::start(&svc).await;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(health::run(svc.clone(), shutdown.clone()));
    tasks.spawn(ownership::run(svc.clone(), shutdown.clone()));
    for area in svc.ctx.cfg.areas.clone() {
        tasks.spawn(area::run(svc.clone(), area, shutdown.clone()));
    }
    tasks.spawn(sync::run(svc.clone(), shutdown.clone()));
    tasks.spawn(push::run(svc.clone(), shutdown.clone()));

    shutdown.cancelled().await;
    tracing::info!("shutting down: flushing batches");
    let drained = tokio::time::timeout(SHUTDOWN_DEADLINE, async {
        while tasks.join_next().await.is_some() {}
        push::push_now(&svc).await;
        // Only now, with everything committed and pushed, let the areas go at once.
        ownership::stop(&svc).await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "shutdown deadline passed; exiting with work in flight (the checkpoint makes it safe)"
        );
    }
    let _ = http.await;
    Ok(0)
}

async fn signals(shutdown: CancellationToken) {
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

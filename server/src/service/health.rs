//! The service's own health, measured rather than inferred: a backend probe with a short
//! deadline every second, and the lag gauge refreshed from the areas' oldest pending events.
//!
//! Only this probe decides `backend_ok`: an error of the remote, the disk or the config is
//! not the backend's, and a stopped backend must show within seconds, not after the
//! request timeout of whichever call happened to hang.

use super::metrics::Metrics;
use super::state::ServiceState;
use crate::engine::Context;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the backend is asked for its revision.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// A healthy backend answers a revision read in milliseconds; one that takes longer than
/// this cannot serve the watch either.
const PROBE_DEADLINE: Duration = Duration::from_secs(2);

/// What the probe needs: the backend (through the engine), and where to report.
#[derive(Clone)]
pub struct HealthCtx {
    pub engine: Arc<Context>,
    pub state: Arc<ServiceState>,
    pub metrics: Arc<Metrics>,
}

pub async fn run(ctx: HealthCtx, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        probe(&ctx).await;
        // The SPEC's lag: the age of the oldest event not yet committed, whatever the area
        // task is doing (waiting for a lock, failing, holding a batch back).
        for (area, lag) in ctx.state.lags() {
            ctx.metrics.lag(&area, lag);
        }
        ctx.metrics.ready(ctx.state.ready());
    }
}

/// Asks the backend for its revision, within the probe's deadline, and records the answer.
pub async fn probe(ctx: &HealthCtx) {
    let answer = tokio::time::timeout(PROBE_DEADLINE, async {
        let backend = ctx.engine.backend().await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(backend.current_revision().await?)
    })
    .await;
    match answer {
        Ok(Ok(rev)) => {
            ctx.state.set_backend_ok(true);
            ctx.state.set_backend_revision(rev);
            ctx.metrics.backend_revision(rev.0);
        }
        Ok(Err(e)) => {
            let msg = crate::errors::chain(e.as_ref());
            if ctx.state.backend_ok() {
                tracing::warn!(error = %msg, "backend does not answer");
            }
            ctx.state.set_backend_error(msg);
        }
        Err(_) => {
            if ctx.state.backend_ok() {
                tracing::warn!("backend did not answer within {PROBE_DEADLINE:?}");
            }
            ctx.state.set_backend_error(format!(
                "no answer to a revision read within {PROBE_DEADLINE:?}"
            ));
        }
    }
}

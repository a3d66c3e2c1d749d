//! The systemd notify protocol (`Type=notify`): READY=1 once, at the first moment `/readyz`
//! would answer 200, WATCHDOG=1 when the unit sets `WatchdogSec`, STOPPING=1 at shutdown.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every message is a no-op, so this always runs.
//! Readiness is asked of [`ServiceState::ready`], the very function `/readyz` answers from,
//! so the two can never disagree about the moment.

use super::state::ServiceState;
use sd_notify::NotifyState;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often readiness is checked until it is reached: units ordered after kvgit start
/// within this of `/readyz` turning 200, and a check is one short lock over the areas.
const READY_POLL: Duration = Duration::from_millis(100);

/// Sends READY=1 when `state` first becomes ready, WATCHDOG=1 at half the unit's
/// `WatchdogSec` for as long as the runtime runs this task, and STOPPING=1 once `shutdown`
/// is cancelled.
pub async fn run(state: Arc<ServiceState>, shutdown: CancellationToken) {
    let watchdog = sd_notify::watchdog_enabled();
    // Half the interval, as sd_watchdog_enabled(3) advises, so one late tick is no restart.
    let mut watchdog_tick = watchdog.map(|every| {
        let mut t = tokio::time::interval((every / 2).max(Duration::from_millis(10)));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut ready_poll = tokio::time::interval(READY_POLL);
    ready_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut announced = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ready_poll.tick(), if !announced => {
                if state.ready() {
                    announced = true;
                    send(&[NotifyState::Ready, NotifyState::Status("ready: every area synced")]);
                    tracing::debug!("told the service manager we are ready");
                }
            }
            _ = async {
                match watchdog_tick.as_mut() {
                    Some(t) => { t.tick().await; }
                    None => std::future::pending::<()>().await,
                }
            } => send(&[NotifyState::Watchdog]),
        }
    }
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: flushing batches"),
    ]);
}

/// One notification; a failure is logged and otherwise ignored, because a service manager
/// that cannot be told is no reason to stop syncing.
fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}

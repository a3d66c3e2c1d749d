//! Blocking queries: `?index=N&wait=D` holds a read until the query's own index passes N or
//! the wait (default 5m, at most 10m, plus up to 1/16 random jitter) runs out.
//!
//! Every write wakes every waiting query through one watch channel; each re-computes only
//! its index (cheap: one key, or one prefix range) and builds its body once, when it
//! answers. A write elsewhere therefore costs a waiter one lookup, not an answer.
//!
//! With the test fault `/v1/_test/index_skew` on (ours, not Consul's), a query with an index
//! answers at once, below that index.

use super::duration;
use super::http::{ApiError, Params};
use super::ids::random_u64;
use super::state::{Shared, Store};
use std::time::Duration;
use tokio::time::Instant;

const DEFAULT_WAIT: Duration = Duration::from_secs(5 * 60);
const MAX_WAIT: Duration = Duration::from_secs(10 * 60);
/// Consul adds up to `wait / 16` so that many clients do not wake at once.
const JITTER_FRACTION: u32 = 16;

/// A read's blocking parameters; `min_index == 0` means answer at once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Blocking {
    min_index: u64,
    wait: Duration,
}

impl Blocking {
    /// Reads `index` and `wait` with Consul's error messages.
    pub fn from_params(params: &Params) -> Result<Blocking, ApiError> {
        let mut wait = DEFAULT_WAIT;
        if let Some(text) = params.get("wait").filter(|t| !t.is_empty()) {
            let nanos =
                duration::parse(text).map_err(|_| ApiError::bad_request("Invalid wait time"))?;
            wait = match duration::to_std(nanos) {
                d if d.is_zero() => DEFAULT_WAIT,
                d => d.min(MAX_WAIT),
            };
        }
        let min_index = match params.get("index").filter(|t| !t.is_empty()) {
            None => 0,
            Some(text) => text
                .parse()
                .map_err(|_| ApiError::bad_request("Invalid index"))?,
        };
        Ok(Blocking { min_index, wait })
    }

    fn deadline(&self) -> Instant {
        let jitter_ns = self.wait.as_nanos() / u128::from(JITTER_FRACTION);
        let jitter = match u64::try_from(jitter_ns) {
            Ok(0) | Err(_) => Duration::ZERO,
            Ok(max) => Duration::from_nanos(random_u64() % max),
        };
        Instant::now() + self.wait + jitter
    }
}

/// Answers a read: `index_of` computes the query's `X-Consul-Index` from the store, and
/// `answer` builds the response from the same locked store once that index is past
/// `blocking.min_index` or the wait ran out.
pub(crate) async fn answer<T>(
    shared: &Shared,
    blocking: Blocking,
    index_of: impl Fn(&Store) -> u64,
    answer: impl FnOnce(&Store, u64) -> T,
) -> T {
    let mut changes = shared.subscribe();
    if blocking.min_index == 0 {
        let store = shared.lock();
        let index = index_of(&store).max(1);
        return answer(&store, index);
    }
    let deadline = blocking.deadline();
    loop {
        // Marked seen before reading the store, so a write landing in between still wakes us.
        changes.borrow_and_update();
        {
            let store = shared.lock();
            if let Some(index) = skewed(&store, blocking.min_index) {
                return answer(&store, index);
            }
            let index = index_of(&store).max(1);
            if index > blocking.min_index || Instant::now() >= deadline {
                return answer(&store, index);
            }
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => {}
            // Timed out, or the server is shutting down: answer with the current state,
            // possibly at the same index, as Consul does.
            Ok(Err(_)) | Err(_) => {
                let store = shared.lock();
                let index = index_of(&store).max(1);
                return answer(&store, index);
            }
        }
    }
}

/// The fault of `/v1/_test/index_skew` (not Consul's): an index below the client's, at once,
/// as a Consul restored from an older snapshot answers a client that saw the newer state.
/// Never 0, which Consul reads as 1.
fn skewed(store: &Store, min_index: u64) -> Option<u64> {
    (store.index_skew > 0).then(|| min_index.saturating_sub(store.index_skew).max(1))
}

//! What asks the fetch/apply loop for a pass before its timer: `POST /sync` wants a fetch,
//! an area that caught up wants an apply. A pass that is already far enough along serves them.
//!
//! A bare `Notify` keeps a permit for a request made while a pass runs, even when that
//! pass served it (an area that caught up during the fetch is applied by the same pass):
//! the loop then ran once more, re-reading every area, and reverted a live edit made just
//! after the first apply, before anyone asked. Requests are flags here, and each is taken
//! at the point from which the pass serves it.

use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct SyncTrigger {
    /// Someone says the remote moved: served by a pass whose fetch starts after this.
    fetch: AtomicBool,
    /// An area caught up: served by a pass that reads the areas' states after this.
    apply: AtomicBool,
    wake: Notify,
}

impl SyncTrigger {
    /// Asks for a fetch and an apply (`POST /sync`, a webhook). Requests coalesce: a burst
    /// made before the next fetch starts is one pass.
    pub fn fetch(&self) {
        self.fetch.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Asks for an apply of the areas that have caught up (call after marking one so).
    pub fn apply(&self) {
        self.apply.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Returns once a pass is asked for (at once when one already is).
    pub async fn requested(&self) {
        // A permit left by a request a pass has since taken only costs one more look.
        while !self.fetch.load(Ordering::SeqCst) && !self.apply.load(Ordering::SeqCst) {
            self.wake.notified().await;
        }
    }

    /// A pass's fetch starts now: it serves the fetch asked for so far. Whether one was.
    pub fn take_fetch(&self) -> bool {
        self.fetch.swap(false, Ordering::SeqCst)
    }

    /// A pass reads which areas have caught up now, after this: it serves those requests.
    pub fn take_apply(&self) -> bool {
        self.apply.swap(false, Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_request_a_pass_took_does_not_wake_the_loop_again() {
        let t = SyncTrigger::default();
        t.apply();
        // The pass running when the area caught up reads the states after this.
        assert!(t.take_apply());
        let woke = tokio::time::timeout(Duration::from_millis(50), t.requested()).await;
        assert!(
            woke.is_err(),
            "a served request must not start another pass"
        );
    }

    #[tokio::test]
    async fn requests_made_after_a_pass_took_them_wake_the_loop_once() {
        let t = SyncTrigger::default();
        t.fetch();
        t.fetch();
        tokio::time::timeout(Duration::from_secs(1), t.requested())
            .await
            .expect("a request wakes the loop");
        assert!(t.take_fetch(), "the fetch is asked for");
        assert!(!t.take_fetch(), "two requests before the fetch make one");
        t.apply();
        tokio::time::timeout(Duration::from_secs(1), t.requested())
            .await
            .expect("a request after the take wakes the loop");
        assert!(t.take_apply());
    }
}

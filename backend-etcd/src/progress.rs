//! Decides when a watch may report `Progress`: a progress claim must never overtake the events
//! it covers. Pure state (the caller passes the clock), so every rule has a unit test.
//!
//! Why this is needed: etcd before 3.4.25 / 3.5.8 (etcd#15220) answers a progress request at
//! once with the store's current revision, even while the watcher is still catching up on old
//! events, and even while a slow watcher's events wait in a server queue. Measured on 3.4.23:
//! a watch from revision 2 got "progress 7" before the events of revisions 2..6. Newer servers
//! answer only once the watcher is in sync, on the same ordered channel as the events.
//!
//! Rules on such "unordered" servers:
//! - A watcher created with `from` above the store revision starts in sync.
//! - Otherwise it catches up in batches of at most 1000 revisions (etcd's
//!   `watchBatchMaxRevs`), each carrying the store revision of the catch-up pass in its header;
//!   a batch at or beyond the creation revision with fewer than 1000 revisions is the last.
//! - If the catch-up had no event for this prefix, etcd never says so; after `settle` the
//!   requested progress is believed (etcd syncs such watchers within one 100 ms pass).
//! - A trusted requested progress is held back briefly (the server's send loop may still have
//!   an event queued ahead of it) and dropped when a change at or beyond it arrives.
//! - etcd's own periodic notifications (our watch id, `progress_notify`) are always ordered.
//! - A change at or below a revision already reported is an order violation: the stream ends
//!   with a resync instead of a silent gap.

use std::time::{Duration, Instant};
use sync_core::Revision;

/// etcd's `watchBatchMaxRevs`: a catch-up response with this many revisions may not be the last.
const MAX_BATCH_REVS: usize = 1000;

/// Does this etcd server version send requested progress in order with events?
pub(crate) fn server_orders_progress(version: &str) -> bool {
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let (major, minor, patch) = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    match (major, minor) {
        (3, 4) => patch >= 25,
        (3, 5) => patch >= 8,
        (3, m) => m >= 6,
        (m, _) => m > 3,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Catchup {
    /// Every event up to now has been sent; progress requests are truthful.
    Synced,
    /// Catching up from `from` to the creation revision; nothing seen yet.
    Unknown,
    /// A full batch arrived; more may follow.
    Partial,
}

/// A change arrived at or below a revision already reported: the stream's order is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OrderViolation {
    pub change: Revision,
    pub reported: Revision,
}

#[derive(Debug)]
pub(crate) struct ProgressGate {
    /// The server orders progress with events itself (etcd >= 3.4.25 / 3.5.8).
    ordered: bool,
    from: Revision,
    /// Store revision when the watcher was created.
    created_rev: Revision,
    catchup: Catchup,
    created_at: Instant,
    settle: Duration,
    /// Highest revision of a delivered change (0 = none yet).
    last_change: Revision,
    /// Highest revision reported as progress.
    last_progress: Option<Revision>,
}

impl ProgressGate {
    pub fn new(
        ordered: bool,
        from: Revision,
        created_rev: Revision,
        now: Instant,
        settle: Duration,
    ) -> Self {
        // etcd: `synced := startRev > currentRev || startRev == 0`.
        let synced = from.0 == 0 || from > created_rev;
        ProgressGate {
            ordered,
            from,
            created_rev,
            catchup: if synced {
                Catchup::Synced
            } else {
                Catchup::Unknown
            },
            created_at: now,
            settle,
            last_change: Revision(0),
            last_progress: None,
        }
    }

    /// One watch response with changes: `header_rev` from its header, `revs` the distinct
    /// change revisions, ascending.
    pub fn on_changes(
        &mut self,
        header_rev: Revision,
        revs: &[Revision],
    ) -> Result<(), OrderViolation> {
        let (Some(&first), Some(&last)) = (revs.first(), revs.last()) else {
            return Ok(());
        };
        let reported = self
            .last_progress
            .unwrap_or(Revision(0))
            .max(self.last_change);
        let too_old = first < self.last_change || self.last_progress.is_some_and(|p| first <= p);
        if too_old {
            return Err(OrderViolation {
                change: first,
                reported,
            });
        }
        self.last_change = last;
        if self.catchup != Catchup::Synced && header_rev >= self.created_rev {
            self.catchup = if revs.len() < MAX_BATCH_REVS {
                Catchup::Synced
            } else {
                Catchup::Partial
            };
        }
        Ok(())
    }

    /// A progress report at `p`; `server_notify` when etcd sent it for our watch id on its
    /// own (always ordered). Returns the revision that may be reported, if any.
    pub fn on_progress(&self, p: Revision, server_notify: bool, now: Instant) -> Option<Revision> {
        let trusted = self.ordered
            || server_notify
            || match self.catchup {
                Catchup::Synced => true,
                Catchup::Unknown => now.duration_since(self.created_at) >= self.settle,
                Catchup::Partial => false,
            };
        (trusted && self.is_new(p)).then_some(p)
    }

    /// Whether a trusted progress must still wait a moment for queued events.
    pub fn needs_hold(&self, server_notify: bool) -> bool {
        !self.ordered && !server_notify
    }

    /// `p` still says something new (nothing at or beyond it was delivered since).
    pub fn is_new(&self, p: Revision) -> bool {
        let before_start = p.0.saturating_add(1) < self.from.0;
        !before_start && p >= self.last_change && self.last_progress.is_none_or(|l| p > l)
    }

    pub fn reported(&mut self, p: Revision) {
        self.last_progress = Some(p);
    }

    /// The first progress has gone out (until then, progress is asked for more often).
    pub fn has_reported(&self) -> bool {
        self.last_progress.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTLE: Duration = Duration::from_secs(1);

    fn r(n: u64) -> Revision {
        Revision(n)
    }

    #[test]
    fn versions() {
        assert!(!server_orders_progress("3.4.23"));
        assert!(server_orders_progress("3.4.25"));
        assert!(!server_orders_progress("3.5.7"));
        assert!(server_orders_progress("3.5.8"));
        assert!(server_orders_progress("3.6.0"));
        assert!(server_orders_progress("3.6.0-rc.1"));
        assert!(!server_orders_progress("garbage"));
    }

    #[test]
    fn legacy_progress_waits_for_the_last_catchup_batch() {
        let t0 = Instant::now();
        let mut g = ProgressGate::new(false, r(2), r(7), t0, SETTLE);
        // etcd 3.4.23 answers "7" before sending revisions 2..6: not believed.
        assert_eq!(g.on_progress(r(7), false, t0), None);
        let full: Vec<_> = (2..1002).map(r).collect();
        g.on_changes(r(2000), &full).unwrap();
        assert_eq!(
            g.on_progress(r(2000), false, t0),
            None,
            "a full batch may not be the last"
        );
        g.on_changes(r(2000), &[r(1500)]).unwrap();
        assert_eq!(g.on_progress(r(2000), false, t0), Some(r(2000)));
        assert!(g.needs_hold(false));
    }

    #[test]
    fn watch_from_the_future_is_in_sync_at_once() {
        let t0 = Instant::now();
        let g = ProgressGate::new(false, r(8), r(7), t0, SETTLE);
        assert_eq!(g.on_progress(r(7), false, t0), Some(r(7)));
    }

    #[test]
    fn quiet_catchup_is_believed_after_settling() {
        let t0 = Instant::now();
        let g = ProgressGate::new(false, r(3), r(9), t0, SETTLE);
        assert_eq!(g.on_progress(r(9), false, t0), None);
        assert_eq!(g.on_progress(r(9), false, t0 + SETTLE), Some(r(9)));
        assert_eq!(
            g.on_progress(r(9), true, t0),
            Some(r(9)),
            "server notify is ordered"
        );
    }

    #[test]
    fn ordered_servers_are_believed() {
        let t0 = Instant::now();
        let g = ProgressGate::new(true, r(2), r(7), t0, SETTLE);
        assert_eq!(g.on_progress(r(7), false, t0), Some(r(7)));
        assert!(!g.needs_hold(false));
    }

    #[test]
    fn progress_never_goes_back_nor_repeats() {
        let t0 = Instant::now();
        let mut g = ProgressGate::new(true, r(2), r(7), t0, SETTLE);
        g.on_changes(r(9), &[r(9)]).unwrap();
        assert_eq!(g.on_progress(r(8), false, t0), None);
        assert_eq!(g.on_progress(r(9), false, t0), Some(r(9)));
        g.reported(r(9));
        assert_eq!(g.on_progress(r(9), false, t0), None);
        assert_eq!(g.on_progress(r(10), false, t0), Some(r(10)));
    }

    #[test]
    fn a_change_below_reported_progress_is_a_violation() {
        let t0 = Instant::now();
        let mut g = ProgressGate::new(true, r(2), r(7), t0, SETTLE);
        g.reported(r(7));
        assert_eq!(
            g.on_changes(r(7), &[r(5)]),
            Err(OrderViolation {
                change: r(5),
                reported: r(7)
            })
        );
        assert!(g.on_changes(r(8), &[r(8)]).is_ok());
    }

    #[test]
    fn progress_before_the_start_is_not_reported() {
        let t0 = Instant::now();
        let g = ProgressGate::new(true, r(50), r(7), t0, SETTLE);
        assert_eq!(g.on_progress(r(7), false, t0), None);
        assert_eq!(g.on_progress(r(49), false, t0), Some(r(49)));
    }
}

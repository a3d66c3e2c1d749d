//! Decides when a watch may report `Progress`: a progress claim must never overtake the events
//! it covers. Pure state, so every rule has a unit test.
//!
//! Why this is needed: etcd before 3.4.25 / 3.5.8 (etcd#15220) answers a progress request at
//! once with the store's current revision, on a channel of its own: even a watcher that is in
//! sync can get it ahead of events still queued for it, and one that is catching up gets it
//! before the old events. Measured on 3.4.23: a watch from revision 2 got "progress 7" before
//! the events of revisions 2..6; under load (a million keys written while the 2 cores were
//! shared with other work) answers overtook events queued for seconds. A progress believed
//! too early moves the checkpoint past changes not yet seen, and they are never committed. No
//! delay or heuristic makes such an answer safe, so on those servers only etcd's own periodic
//! notifications (`progress_notify`, sent on the watcher's own ordered channel, carrying our
//! watch id) are reported. Newer servers answer requests in order and are believed.
//!
//! A change at or below a revision already reported is an order violation: the stream ends
//! with a resync instead of a silent gap.

use sync_core::Revision;

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

/// A change arrived at or below a revision already reported: the stream's order is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OrderViolation {
    pub change: Revision,
    pub reported: Revision,
}

#[derive(Debug)]
pub(crate) struct ProgressGate {
    /// The server orders requested progress with events (etcd >= 3.4.25 / 3.5.8).
    ordered: bool,
    from: Revision,
    /// Highest revision of a delivered change (0 = none yet).
    last_change: Revision,
    /// Highest revision reported as progress.
    last_progress: Option<Revision>,
}

impl ProgressGate {
    pub fn new(ordered: bool, from: Revision) -> Self {
        ProgressGate {
            ordered,
            from,
            last_change: Revision(0),
            last_progress: None,
        }
    }

    /// Whether asking the server for progress can tell anything (see the module doc).
    pub fn asks(&self) -> bool {
        self.ordered
    }

    /// One watch response with changes: `revs` the distinct change revisions, ascending.
    pub fn on_changes(&mut self, revs: &[Revision]) -> Result<(), OrderViolation> {
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
        Ok(())
    }

    /// A progress report at `p`; `server_notify` when etcd sent it for our watch id on its
    /// own (always ordered). Returns the revision that may be reported, if any.
    pub fn on_progress(&self, p: Revision, server_notify: bool) -> Option<Revision> {
        let trusted = self.ordered || server_notify;
        (trusted && self.is_new(p)).then_some(p)
    }

    /// `p` still says something new (nothing at or beyond it was delivered since).
    fn is_new(&self, p: Revision) -> bool {
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
    fn unordered_servers_answers_are_never_believed_their_notifications_are() {
        let mut g = ProgressGate::new(false, r(2));
        assert!(!g.asks());
        // etcd 3.4.23 answers "7" before sending revisions 2..6.
        assert_eq!(g.on_progress(r(7), false), None);
        // Not even once the watcher has seen changes up to it: an answer can overtake
        // events still queued for a watcher that is in sync.
        g.on_changes(&[r(2), r(6)]).unwrap();
        assert_eq!(g.on_progress(r(9), false), None);
        assert_eq!(g.on_progress(r(9), true), Some(r(9)), "notify is ordered");
    }

    #[test]
    fn ordered_servers_are_believed() {
        let g = ProgressGate::new(true, r(2));
        assert!(g.asks());
        assert_eq!(g.on_progress(r(7), false), Some(r(7)));
    }

    #[test]
    fn progress_never_goes_back_nor_repeats() {
        let mut g = ProgressGate::new(true, r(2));
        g.on_changes(&[r(9)]).unwrap();
        assert_eq!(g.on_progress(r(8), false), None);
        assert_eq!(g.on_progress(r(9), false), Some(r(9)));
        g.reported(r(9));
        assert_eq!(g.on_progress(r(9), false), None);
        assert_eq!(g.on_progress(r(10), false), Some(r(10)));
    }

    #[test]
    fn a_change_below_reported_progress_is_a_violation() {
        let mut g = ProgressGate::new(true, r(2));
        g.reported(r(7));
        assert_eq!(
            g.on_changes(&[r(5)]),
            Err(OrderViolation {
                change: r(5),
                reported: r(7)
            })
        );
        assert!(g.on_changes(&[r(8)]).is_ok());
    }

    #[test]
    fn progress_before_the_start_is_not_reported() {
        let g = ProgressGate::new(true, r(50));
        assert_eq!(g.on_progress(r(7), false), None);
        assert_eq!(g.on_progress(r(49), false), Some(r(49)));
    }
}

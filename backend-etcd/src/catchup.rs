//! `changes_between` for a large area by a watch from `after + 1` over every key: it costs
//! what changed in the window, where the filtered read of `delta` costs every key of the area.
//!
//! Why every key: etcd before 3.4.25 cannot say when a watch from a past revision has caught
//! up (etcd#15220), but every etcd revision changes at least one key (a transaction that
//! changes nothing does not take one), so a watch on every key is sent revision `upto`
//! itself, and once that response is whole nothing up to `upto` is left. etcd reads the
//! window from its store once per catch-up pass, whatever the watched ranges, so the wider
//! range costs only the events outside the prefix that travel here; a budget bounds them.
//! A user allowed to read only some prefixes is refused such a watch: the caller then reads.
//!
//! No fragments: etcd 3.4 splits a large response by measuring the growing fragment once per
//! event it adds, quadratic in the events (66k small events took it over 10 s; unsplit,
//! 0.35 s). A response beyond the client's 16 MiB limit fails the watch instead, and the
//! caller reads.

use crate::backend::Conn;
use crate::errors::{compacted, rev, wire_rev};
use crate::keys::prefix_range;
use etcd_client::{EventType, WatchOptions};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use sync_core::{BackendError, ChangeKind, Key, KvChange, Revision};

/// Events a catch-up watch may always take, however small the area.
const MIN_BUDGET: usize = 1024;
/// Events it may take before the area is counted: counting a large area walks etcd's whole
/// index of it (~100 ms for 4 areas of 250k keys here), which the watch does not wait for.
const UNCOUNTED_BUDGET: usize = 64 * 1024;

/// Why a catch-up watch gave up; the caller reads the area instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GaveUp {
    /// Reading the area (and the others read at the same time) is quicker than the wait
    /// for etcd's catch-up pass: see `worth_watching`.
    Small,
    /// etcd refused or ended the watch (typically: the credential may not read every key).
    Refused,
    /// More events than the area has keys: the filtered read is the cheaper answer.
    OverBudget,
    /// No response within the request timeout.
    Silent,
}

/// One key's changes within the window.
struct Seen {
    /// The key existed at `after` (its first change here is not its creation).
    existed: bool,
    last: ChangeKind,
    revision: Revision,
}

/// Whether a catch-up watch beats a filtered read: the reads of areas caught up at the same
/// time (one export's areas) add up on etcd, while their watches share one catch-up pass.
/// Estimated as this area's keys times the areas in flight, against `from_keys`.
pub(crate) fn worth_watching(area_keys: i64, areas_in_flight: usize, from_keys: usize) -> bool {
    let keys = usize::try_from(area_keys).unwrap_or(0);
    keys.saturating_mul(areas_in_flight.max(1)) >= from_keys
}

/// Counts a `changes_between` call in flight for as long as it lives.
pub(crate) struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    pub fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a catch-up ended: with the answer, or with why the caller should read the area
/// instead and, when it was counted by then, how many keys the area has at `upto`.
pub(crate) enum Caught {
    Changes(Vec<KvChange>),
    Read { why: GaveUp, keys: Option<i64> },
}

/// Every key under `prefix` changed in `(after, upto]`, with its state at `upto`, sorted by
/// key; a key created and deleted within the window is not a change. `Err(Compacted)` when
/// `after + 1` is compacted.
///
/// `area_keys` counts the area at `upto` while the watch waits for etcd's catch-up pass: an
/// area not `worth_watching` is read instead, unless the watch answered first;
/// more events (of any key) than the area has keys, or `MIN_BUDGET`, make the read the
/// cheaper answer.
pub(crate) async fn changes(
    conn: &Conn,
    prefix: &[u8],
    after: Revision,
    upto: Revision,
    area_keys: impl Future<Output = Result<i64, BackendError>>,
) -> Result<Caught, BackendError> {
    let (key, end) = prefix_range(b"");
    let opts = WatchOptions::new()
        .with_range(end)
        .with_start_revision(wire_rev(after.next())?);
    let mut client = conn.watch.clone();
    let timeout = conn.ctx.request_timeout;
    let read = |why, keys| Ok(Caught::Read { why, keys });
    let budget = |keys: i64| usize::try_from(keys).unwrap_or(0).max(MIN_BUDGET);
    let too_small = |keys: i64| {
        let in_flight = conn.catching_up.load(Ordering::Relaxed);
        !worth_watching(keys, in_flight, conn.catch_up_from_keys)
    };
    tokio::pin!(area_keys);
    let mut keys: Option<i64> = None;
    // The count is asked while the watch opens: a small area is read without waiting on it.
    let open = tokio::time::timeout(timeout, client.watch(key, Some(opts)));
    tokio::pin!(open);
    let mut stream = loop {
        tokio::select! {
            counted = &mut area_keys, if keys.is_none() => {
                let n = counted?;
                keys = Some(n);
                if too_small(n) {
                    return read(GaveUp::Small, keys);
                }
            }
            opened = &mut open => match opened {
                Ok(Ok(stream)) => break stream,
                _ => return read(GaveUp::Refused, keys),
            },
        }
    };
    let mut seen: BTreeMap<Vec<u8>, Seen> = BTreeMap::new();
    let mut events = 0usize;
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        let next = tokio::select! {
            counted = &mut area_keys, if keys.is_none() => {
                let n = counted?;
                keys = Some(n);
                if too_small(n) {
                    return read(GaveUp::Small, keys);
                }
                if events > budget(n) {
                    return read(GaveUp::OverBudget, keys);
                }
                continue;
            }
            _ = &mut deadline => return read(GaveUp::Silent, keys),
            next = stream.message() => next,
        };
        let resp = match next {
            Ok(Some(resp)) => resp.0,
            Ok(None) | Err(_) => return read(GaveUp::Refused, keys),
        };
        deadline
            .as_mut()
            .reset(tokio::time::Instant::now() + timeout);
        if resp.compact_revision > 0 {
            return Err(compacted(after, rev(resp.compact_revision)));
        }
        if resp.canceled {
            tracing::debug!(reason = resp.cancel_reason, "catch-up watch refused");
            return read(GaveUp::Refused, keys);
        }
        events += resp.events.len();
        if events > keys.map_or(UNCOUNTED_BUDGET, budget) {
            return read(GaveUp::OverBudget, keys);
        }
        let mut last = Revision(0);
        for ev in resp.events {
            let is_delete = ev.r#type == EventType::Delete as i32;
            let Some(kv) = ev.kv else { continue };
            last = rev(kv.mod_revision);
            if last > upto {
                return Ok(Caught::Changes(collect(seen)));
            }
            if !kv.key.starts_with(prefix) {
                continue;
            }
            let change = if is_delete {
                ChangeKind::Delete
            } else {
                ChangeKind::Put(kv.value)
            };
            match seen.get_mut(&kv.key) {
                Some(s) => {
                    s.last = change;
                    s.revision = last;
                }
                None => {
                    let created_here =
                        matches!(change, ChangeKind::Put(_)) && rev(kv.create_revision) > after;
                    seen.insert(
                        kv.key,
                        Seen {
                            existed: !created_here,
                            last: change,
                            revision: last,
                        },
                    );
                }
            }
        }
        // A revision's events come in one response (this watch asks for no fragments).
        if last == upto {
            return Ok(Caught::Changes(collect(seen)));
        }
    }
}

fn collect(seen: BTreeMap<Vec<u8>, Seen>) -> Vec<KvChange> {
    seen.into_iter()
        .filter(|(_, s)| s.existed || matches!(s.last, ChangeKind::Put(_)))
        .map(|(key, s)| KvChange {
            key: Key(key),
            kind: s.last,
            revision: s.revision,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn areas_read_together_are_weighed_together() {
        let from = 16 * 1024;
        assert!(!worth_watching(10_000, 1, from), "one area of 10k: read");
        assert!(worth_watching(10_000, 2, from), "two read together: 20k");
        assert!(worth_watching(20_000, 1, from));
        assert!(!worth_watching(0, 40, from), "empty areas: nothing to read");
        assert!(worth_watching(0, 1, 0), "0 always watches first");
        assert!(worth_watching(i64::MAX, usize::MAX, from), "no overflow");
        assert!(!worth_watching(-1, 3, 1), "a nonsense count reads");
    }

    #[test]
    fn a_call_counts_while_it_lives() {
        let n = AtomicUsize::new(0);
        {
            let _a = InFlight::enter(&n);
            let _b = InFlight::enter(&n);
            assert_eq!(n.load(Ordering::Relaxed), 2);
        }
        assert_eq!(n.load(Ordering::Relaxed), 0);
    }
}

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
use sync_core::{BackendError, ChangeKind, Key, KvChange, Revision};

/// Events a catch-up watch may always take, however small the area.
pub(crate) const MIN_BUDGET: usize = 1024;
/// Events it may take before the area is counted: counting a large area walks etcd's whole
/// index of it (~100 ms for 4 areas of 250k keys here), which the watch does not wait for.
const UNCOUNTED_BUDGET: usize = 64 * 1024;

/// Why a catch-up watch gave up; the caller reads the area instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GaveUp {
    /// The area has fewer keys than `catch_up_from_keys`: reading it is quicker than the
    /// wait for etcd's catch-up pass.
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
/// area below `conn.catch_up_from_keys` is read instead, unless the watch answered first;
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
    let Ok(Ok(mut stream)) = tokio::time::timeout(timeout, client.watch(key, Some(opts))).await
    else {
        return read(GaveUp::Refused, None);
    };
    tokio::pin!(area_keys);
    let mut keys: Option<i64> = None;
    let budget = |keys: i64| usize::try_from(keys).unwrap_or(0).max(MIN_BUDGET);
    let mut seen: BTreeMap<Vec<u8>, Seen> = BTreeMap::new();
    let mut events = 0usize;
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        let next = tokio::select! {
            counted = &mut area_keys, if keys.is_none() => {
                let n = counted?;
                keys = Some(n);
                if usize::try_from(n).unwrap_or(0) < conn.catch_up_from_keys {
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

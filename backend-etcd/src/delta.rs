//! `changes_between`: for an area of many keys, a watch over every key (`catchup`); else, or
//! when that gives up, one range filtered on `mod_revision` returns every key written since
//! `after` (and how many were created); two counts then tell whether any was deleted, and
//! only then two key-only reads at both revisions tell which.
//!
//! Why two ways: etcd answers the filtered range by reading every key of the prefix (~1.7 µs
//! a key here), while a watch from the past waits for etcd's catch-up pass (every 100 ms) and
//! then costs what changed. A prefix watch on etcd < 3.4.25 cannot say when it has caught
//! up (etcd#15220); `catchup` explains why a watch on every key can.

use crate::backend::Conn;
use crate::catchup::{self, Caught};
use crate::errors::{compacted, is_compacted, missing_header, wire_rev};
use crate::keys::prefix_range;
use crate::snapshot::{compact_revision, keys_at, read_filtered};
use etcd_client::GetOptions;
use std::sync::atomic::Ordering;
use sync_core::{BackendError, ChangeKind, KvChange, Revision};

pub(crate) async fn changes_between(
    conn: &Conn,
    prefix: &[u8],
    after: Revision,
    upto: Revision,
) -> Result<Option<Vec<KvChange>>, BackendError> {
    if after >= upto {
        return Ok(Some(Vec::new()));
    }
    let _in_flight = catchup::InFlight::enter(&conn.catching_up);
    // Counting reads etcd's index only, not the values; it runs while a large area's
    // catch-up watch waits for etcd's pass, and tells whether the area is large.
    let now =
        match catchup::changes(conn, prefix, after, upto, count(conn, prefix, Some(upto))).await? {
            Caught::Changes(changes) => {
                conn.caught_up_by_watch.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    changes = changes.len(),
                    "caught up by a watch over every key"
                );
                return Ok(Some(changes));
            }
            Caught::Read { why, keys } => {
                tracing::debug!(?why, ?keys, "catch-up watch gave up; reading instead");
                match keys {
                    Some(n) => n,
                    None => count(conn, prefix, Some(upto)).await?,
                }
            }
        };
    // Two independent reads at fixed revisions: asked at once.
    let ((snap, created), then) = tokio::try_join!(
        read_filtered(conn, prefix, Some(upto), Some(after), false),
        count(conn, prefix, Some(after)),
    )?;
    // Keys at `upto` = keys at `after` - deleted + created.
    let deleted = then + created as i64 - now;
    let mut out: Vec<KvChange> = snap.entries.into_iter().map(KvChange::from).collect();
    if deleted != 0 {
        // Deleted = there at `after`, gone at `upto` (a key deleted and created again is
        // among the writes above with its last value). Both lists come in key order.
        let (before, after_all) =
            tokio::try_join!(keys_at(conn, prefix, after), keys_at(conn, prefix, upto))?;
        let mut present = after_all.iter().peekable();
        for key in before {
            while present.next_if(|k| **k < key).is_some() {}
            if present.peek().is_some_and(|k| **k == key) {
                continue;
            }
            out.push(KvChange {
                key,
                kind: ChangeKind::Delete,
                // When in (after, upto] is not known; only the key's absence at `upto` is.
                revision: upto,
            });
        }
    }
    Ok(Some(out))
}

/// Keys under `prefix` at revision `at` (None: now).
pub(crate) async fn count(
    conn: &Conn,
    prefix: &[u8],
    at: Option<Revision>,
) -> Result<i64, BackendError> {
    let (key, end) = prefix_range(prefix);
    let mut opts = GetOptions::new().with_range(end).with_count_only();
    if let Some(at) = at {
        opts = opts.with_revision(wire_rev(at)?);
    }
    let mut kv = conn.kv.clone();
    let res = tokio::time::timeout(conn.ctx.request_timeout, kv.get(key, Some(opts))).await;
    match res {
        Ok(Ok(resp)) => {
            resp.header().ok_or_else(|| missing_header("count"))?;
            Ok(resp.count())
        }
        Ok(Err(e)) if is_compacted(&e) => {
            let at = at.unwrap_or_default();
            Err(compacted(at, compact_revision(conn, prefix, at).await))
        }
        Ok(Err(e)) => Err(conn.ctx.map("count", e)),
        Err(_) => Err(conn.ctx.unavailable(format!(
            "count: no answer within {:?}",
            conn.ctx.request_timeout
        ))),
    }
}

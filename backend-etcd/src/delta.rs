//! `changes_between` without a watch: one range filtered on `mod_revision` returns every key
//! written since `after` (and how many were created); two counts then tell whether any was
//! deleted, and only then two key-only reads at both revisions tell which.
//!
//! Why: a watch on etcd < 3.4.25 cannot say when it has caught up (etcd#15220), so a
//! one-shot export would wait on a guess. Counting is exact and costs three round trips.

use crate::backend::Conn;
use crate::errors::{compacted, is_compacted, missing_header, wire_rev};
use crate::keys::prefix_range;
use crate::snapshot::{compact_revision, keys_at, read_filtered};
use etcd_client::GetOptions;
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
    // Three independent reads at fixed revisions: asked at once.
    let ((snap, created), then, now) = tokio::try_join!(
        read_filtered(conn, prefix, Some(upto), Some(after), false),
        count(conn, prefix, after),
        count(conn, prefix, upto),
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

/// Keys under `prefix` at revision `at`.
async fn count(conn: &Conn, prefix: &[u8], at: Revision) -> Result<i64, BackendError> {
    let (key, end) = prefix_range(prefix);
    let opts = GetOptions::new()
        .with_range(end)
        .with_count_only()
        .with_revision(wire_rev(at)?);
    let mut kv = conn.kv.clone();
    let res = tokio::time::timeout(conn.ctx.request_timeout, kv.get(key, Some(opts))).await;
    match res {
        Ok(Ok(resp)) => {
            resp.header().ok_or_else(|| missing_header("count"))?;
            Ok(resp.count())
        }
        Ok(Err(e)) if is_compacted(&e) => {
            Err(compacted(at, compact_revision(conn, prefix, at).await))
        }
        Ok(Err(e)) => Err(conn.ctx.map("count", e)),
        Err(_) => Err(conn.ctx.unavailable(format!(
            "count: no answer within {:?}",
            conn.ctx.request_timeout
        ))),
    }
}

//! `snapshot` and `changes_between`: a prefix read at a revision it provably shows, and exact
//! deltas against the prefix's baseline (Consul keeps no history to read older states from).
//!
//! The revision of a listing: Consul answers a recursive read with the prefix's own index
//! `L` (its newest write or tombstone), often far below the store's. Reading the store's
//! current index `R` first makes the listing the state at `max(L, R)`: nothing under the
//! prefix was written after `L` when the listing was taken, and every write up to `R` was
//! already applied when it was (a delete in between would have left a fresh tombstone, so
//! it would show in `L`).

use crate::backend::Conn;
use crate::baseline::{self, Baseline};
use crate::errors::{compacted, refused};
use crate::listing::{self, Collect, Listing, Wait};
use std::sync::Arc;
use sync_core::{BackendError, KvChange, Revision, Snapshot};

/// A listing and the revision it shows.
pub(crate) struct ReadAt {
    pub listing: Listing,
    pub at: Revision,
}

/// The current revision, then the prefix: the listing is the state at the returned `at`.
pub(crate) async fn read_at(
    conn: &Conn,
    prefix: &[u8],
    collect: Collect<'_>,
) -> Result<ReadAt, BackendError> {
    let before = conn.current_revision().await?;
    let listing = listing::list(conn, prefix, collect, Wait::No).await?;
    let at = before.max(Revision(listing.index));
    Ok(ReadAt { listing, at })
}

/// Every key under `prefix` now; with `at`, only when the baseline proves the prefix is
/// still as it was at `at` (else `Compacted`).
pub(crate) async fn read(
    conn: &Conn,
    prefix: &[u8],
    at: Option<Revision>,
) -> Result<Snapshot, BackendError> {
    let read = read_at(conn, prefix, Collect::All).await?;
    let now = read.at;
    let Listing {
        index,
        keys,
        entries,
    } = read.listing;
    let (next, went_back) = match conn.baselines.get(prefix) {
        Some(prev) if prev.hi <= now => {
            let newest = baseline::newest_change(&prev.keys, &keys, now);
            (prev.advance(keys, index, now, newest), false)
        }
        // The store is behind a state read before: it was reset or restored.
        Some(_) => (Baseline::first(keys, index, now), true),
        None => (Baseline::first(keys, index, now), false),
    };
    let (lo, hi) = (next.lo, next.hi);
    if went_back {
        conn.baselines.replace(prefix, Arc::new(next));
    } else {
        conn.baselines.install(prefix, Arc::new(next));
    }
    let revision = match at {
        None => now,
        Some(r) if r > hi => {
            return Err(refused(format!(
                "snapshot at revision {r}: the store's current revision is {hi}"
            )))
        }
        Some(r) if r < lo => return Err(compacted(r, lo)),
        Some(r) => r,
    };
    Ok(Snapshot { revision, entries })
}

/// See `KvBackend::changes_between`. Exact when the prefix's baseline covers `after` and the
/// listing shows the state at exactly `upto`; `None` (read the watch) when the store moved
/// past `upto` already; `Compacted` without a baseline.
pub(crate) async fn changes_between(
    conn: &Conn,
    prefix: &[u8],
    after: Revision,
    upto: Revision,
) -> Result<Option<Vec<KvChange>>, BackendError> {
    if after >= upto {
        return Ok(Some(Vec::new()));
    }
    let base = conn.baselines.get(prefix);
    let Some(base) = base.filter(|b| b.covers(after)) else {
        let now = conn.current_revision().await?;
        if now == after {
            // Nothing at all was written to the KV store after `after`. (Below it, the
            // store went back: a reset, which needs the full pass `Compacted` leads to.)
            return Ok(Some(Vec::new()));
        }
        let oldest = conn
            .baselines
            .get(prefix)
            .map_or(now, |b| if after < b.lo { b.lo } else { now });
        return Err(compacted(after, oldest));
    };
    let before = conn.current_revision().await?;
    if before > upto {
        // The state at `upto` is gone; a watch from `after + 1` replays up to now.
        return Ok(None);
    }
    let mut listing =
        listing::list(conn, prefix, Collect::ChangedSince(&base.keys), Wait::No).await?;
    let now = before.max(Revision(listing.index));
    if now != upto {
        // The prefix changed after `upto` (or `upto` is ahead of the store).
        return Ok(None);
    }
    let changes = baseline::changes(prefix, &base.keys, &mut listing, now);
    let next = base.advance(listing.keys, listing.index, now, baseline::newest(&changes));
    conn.baselines.install(prefix, Arc::new(next));
    Ok(Some(changes))
}

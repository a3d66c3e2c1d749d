//! `snapshot`: every key under a prefix at one revision, read in pages that are all pinned to
//! the revision of the first (or the requested one), so the result is one consistent cut.

use crate::backend::Conn;
use crate::errors::{
    compacted, is_compacted, is_too_large_to_decode, missing_header, rev, wire_rev,
};
use crate::keys::{key_after, prefix_range};
use etcd_client::{GetOptions, GetResponse, WatchOptions};
use sync_core::{BackendError, Key, KvEntry, Revision, Snapshot};

/// Keys per page: one unpaged range of a large prefix exceeds the client's decode limit.
pub(crate) const PAGE_KEYS: i64 = 10_000;

pub(crate) async fn read(
    conn: &Conn,
    prefix: &[u8],
    at: Option<Revision>,
) -> Result<Snapshot, BackendError> {
    Ok(read_filtered(conn, prefix, at, None, false).await?.0)
}

/// The keys under `prefix` at revision `at`, without values, in key order.
pub(crate) async fn keys_at(
    conn: &Conn,
    prefix: &[u8],
    at: Revision,
) -> Result<Vec<Key>, BackendError> {
    let (snap, _) = read_filtered(conn, prefix, Some(at), None, true).await?;
    Ok(snap.entries.into_iter().map(|e| e.key).collect())
}

/// Like `read`, keeping only keys last written after `modified_after` (etcd filters
/// server-side, so only the matches travel); also says how many of them were created
/// after it (etcd's `count_only` ignores revision filters, so this is the way to count).
/// `keys_only` leaves every value empty.
pub(crate) async fn read_filtered(
    conn: &Conn,
    prefix: &[u8],
    at: Option<Revision>,
    modified_after: Option<Revision>,
    keys_only: bool,
) -> Result<(Snapshot, usize), BackendError> {
    let mut created = 0;
    let (mut start, end) = prefix_range(prefix);
    // 0 asks etcd for the current revision; the first page's header then pins the rest.
    let mut pinned: Option<i64> = at.map(wire_rev).transpose()?;
    let mut limit = PAGE_KEYS;
    let mut entries = Vec::new();
    loop {
        let mut opts = GetOptions::new()
            .with_range(end.clone())
            .with_limit(limit)
            .with_revision(pinned.unwrap_or(0));
        if let Some(after) = modified_after {
            opts = opts.with_min_mod_revision(wire_rev(after.next())?);
        }
        if keys_only {
            opts = opts.with_keys_only();
        }
        let mut resp = match page(conn, start.clone(), opts).await? {
            Page::Got(resp) => resp,
            Page::TooBig if limit > 1 => {
                // Big values: fewer keys per page until a page fits.
                limit = (limit / 4).max(1);
                continue;
            }
            Page::TooBig => {
                return Err(BackendError::Refused {
                    backend: crate::errors::KIND,
                    detail: "range: a single key is larger than the client's decode limit".into(),
                })
            }
            Page::Compacted => {
                let requested = rev(pinned.unwrap_or(0));
                return Err(compacted(
                    requested,
                    compact_revision(conn, prefix, requested).await,
                ));
            }
        };
        let header_rev = resp
            .header()
            .ok_or_else(|| missing_header("range"))?
            .revision();
        let pinned_rev = *pinned.get_or_insert(header_rev);
        let more = resp.more();
        let kvs = resp.take_kvs();
        let next = kvs.last().map(|kv| key_after(kv.key()));
        entries.reserve(kvs.len());
        for kv in kvs {
            if modified_after.is_some_and(|after| rev(kv.create_revision()) > after) {
                created += 1;
            }
            let mod_revision = rev(kv.mod_revision());
            let (key, value) = kv.into_key_value();
            entries.push(KvEntry {
                key: Key(key),
                value,
                mod_revision,
            });
        }
        match (more, next) {
            (true, Some(next)) => start = next,
            _ => {
                return Ok((
                    Snapshot {
                        revision: rev(pinned_rev),
                        entries,
                    },
                    created,
                ))
            }
        }
    }
}

enum Page {
    Got(GetResponse),
    TooBig,
    Compacted,
}

async fn page(conn: &Conn, start: Vec<u8>, opts: GetOptions) -> Result<Page, BackendError> {
    let mut kv = conn.kv.clone();
    let res = tokio::time::timeout(conn.ctx.request_timeout, kv.get(start, Some(opts))).await;
    match res {
        Ok(Ok(resp)) => Ok(Page::Got(resp)),
        Ok(Err(e)) if is_compacted(&e) => Ok(Page::Compacted),
        Ok(Err(e)) if is_too_large_to_decode(&e) => Ok(Page::TooBig),
        Ok(Err(e)) => Err(conn.ctx.map("range", e)),
        Err(_) => Err(conn.ctx.unavailable(format!(
            "range: no answer within {:?}",
            conn.ctx.request_timeout
        ))),
    }
}

/// The oldest revision still kept. A range error does not say; a watch from the compacted
/// revision is cancelled with it. Falls back to `requested + 1`, a true lower bound.
pub(crate) async fn compact_revision(conn: &Conn, prefix: &[u8], requested: Revision) -> Revision {
    let fallback = requested.next();
    let Ok(start) = wire_rev(requested) else {
        return fallback;
    };
    let (key, end) = prefix_range(prefix);
    let probe = async {
        let mut client = conn.watch.clone();
        let opts = WatchOptions::new()
            .with_range(end)
            .with_start_revision(start);
        let mut stream = client.watch(key, Some(opts)).await.ok()?;
        while let Ok(Some(resp)) = stream.message().await {
            if resp.compact_revision() > 0 {
                return Some(rev(resp.compact_revision()));
            }
            if resp.canceled() || !resp.events().is_empty() {
                return None;
            }
        }
        None
    };
    match tokio::time::timeout(conn.ctx.request_timeout, probe).await {
        Ok(Some(r)) => r,
        _ => fallback,
    }
}

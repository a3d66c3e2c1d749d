//! `snapshot` and `snapshot_pages`: every key under a prefix at one revision, read in pages all
//! pinned to the revision of the first (or the requested one), so they make one consistent cut.

use crate::backend::Conn;
use crate::errors::{
    compacted, is_compacted, is_too_large_to_decode, missing_header, rev, wire_rev,
};
use crate::keys::{key_after, prefix_range};
use etcd_client::{GetOptions, GetResponse, WatchOptions};
use futures::StreamExt;
use sync_core::{BackendError, Key, KvEntry, Revision, Snapshot, SnapshotPages};

/// Keys of the first page: one unpaged range of a large prefix exceeds the client's decode
/// limit. Later pages grow while they stay under `PAGE_BYTES` (half that limit).
pub(crate) const PAGE_KEYS: i64 = 10_000;
const PAGE_BYTES: usize = crate::backend::DECODE_LIMIT / 2;
const MAX_PAGE_KEYS: i64 = 100_000;

pub(crate) async fn read(
    conn: &Conn,
    prefix: &[u8],
    at: Option<Revision>,
) -> Result<Snapshot, BackendError> {
    Ok(read_filtered(conn, prefix, at, None, false).await?.0)
}

/// `read` one page at a time. The first page is read here, so a refusal or a compacted `at`
/// is this call's error rather than the stream's; the rest are read as they are asked for.
pub(crate) async fn pages(
    conn: &Conn,
    prefix: &[u8],
    at: Option<Revision>,
) -> Result<SnapshotPages, BackendError> {
    let mut pager = Pager::new(conn, prefix, at, None, false)?;
    let first = pager.next_page().await?;
    let rest = futures::stream::try_unfold(pager, |mut pager| async move {
        let page = pager.next_page().await?;
        Ok::<_, BackendError>(page.map(|page| (page, pager)))
    });
    Ok(futures::stream::iter(first.map(Ok)).chain(rest).boxed())
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
    let mut pager = Pager::new(conn, prefix, at, modified_after, keys_only)?;
    let mut snap = Snapshot {
        revision: at.unwrap_or(Revision(0)),
        entries: Vec::new(),
    };
    while let Some(page) = pager.next_page().await? {
        snap.revision = page.revision;
        snap.entries.extend(page.entries);
    }
    Ok((snap, pager.created))
}

/// Where a paged read of a prefix stands. Owns what it needs (a `Conn` clone), so a stream
/// of pages can outlive the call that started it.
struct Pager {
    conn: Conn,
    /// For the compaction probe, which watches the same prefix.
    prefix: Vec<u8>,
    /// `None` once the last page was read.
    start: Option<Vec<u8>>,
    end: Vec<u8>,
    /// Unset until the first page's header: every later page is read at the first's revision.
    pinned: Option<i64>,
    limit: i64,
    min_mod_revision: Option<i64>,
    modified_after: Option<Revision>,
    keys_only: bool,
    /// Keys created after `modified_after`, over the pages read so far.
    created: usize,
}

impl Pager {
    fn new(
        conn: &Conn,
        prefix: &[u8],
        at: Option<Revision>,
        modified_after: Option<Revision>,
        keys_only: bool,
    ) -> Result<Self, BackendError> {
        let (start, end) = prefix_range(prefix);
        Ok(Pager {
            conn: conn.clone(),
            prefix: prefix.to_vec(),
            start: Some(start),
            end,
            pinned: at.map(wire_rev).transpose()?,
            limit: PAGE_KEYS,
            min_mod_revision: modified_after
                .map(|after| wire_rev(after.next()))
                .transpose()?,
            modified_after,
            keys_only,
            created: 0,
        })
    }

    /// The next page at the pinned revision, `None` after the last. The first call always
    /// gives a page, empty when the prefix is, so the revision is known either way.
    async fn next_page(&mut self) -> Result<Option<Snapshot>, BackendError> {
        let Some(start) = self.start.clone() else {
            return Ok(None);
        };
        loop {
            // 0 asks etcd for the current revision; the first page's header then pins the rest.
            let mut opts = GetOptions::new()
                .with_range(self.end.clone())
                .with_limit(self.limit)
                .with_revision(self.pinned.unwrap_or(0));
            if let Some(min) = self.min_mod_revision {
                opts = opts.with_min_mod_revision(min);
            }
            if self.keys_only {
                opts = opts.with_keys_only();
            }
            let mut resp = match page(&self.conn, start.clone(), opts).await? {
                Page::Got(resp) => resp,
                Page::TooBig if self.limit > 1 => {
                    // Big values: fewer keys per page until a page fits.
                    self.limit = (self.limit / 4).max(1);
                    continue;
                }
                Page::TooBig => {
                    return Err(BackendError::Refused {
                        backend: crate::errors::KIND,
                        detail: "range: a single key is larger than the client's decode limit"
                            .into(),
                    })
                }
                Page::Compacted => {
                    let requested = rev(self.pinned.unwrap_or(0));
                    return Err(compacted(
                        requested,
                        compact_revision(&self.conn, &self.prefix, requested).await,
                    ));
                }
            };
            let header_rev = resp
                .header()
                .ok_or_else(|| missing_header("range"))?
                .revision();
            let pinned_rev = *self.pinned.get_or_insert(header_rev);
            let more = resp.more();
            let kvs = resp.take_kvs();
            self.start = match (more, kvs.last()) {
                (true, Some(last)) => Some(key_after(last.key())),
                _ => None,
            };
            if self.start.is_some() {
                self.grow_limit(&kvs);
            }
            let mut entries = Vec::with_capacity(kvs.len());
            for kv in kvs {
                if self
                    .modified_after
                    .is_some_and(|after| rev(kv.create_revision()) > after)
                {
                    self.created += 1;
                }
                let mod_revision = rev(kv.mod_revision());
                let (key, value) = kv.into_key_value();
                entries.push(KvEntry {
                    key: Key(key),
                    value,
                    mod_revision,
                });
            }
            return Ok(Some(Snapshot {
                revision: rev(pinned_rev),
                entries,
            }));
        }
    }
}

impl Pager {
    /// Larger pages for small keys and values, up to about [`PAGE_BYTES`]: etcd 3.4 walks
    /// the whole rest of the range's index for every page, so at millions of keys the
    /// number of pages, not their size, is what a snapshot costs.
    fn grow_limit(&mut self, kvs: &[etcd_client::KeyValue]) {
        // A key-value's fields besides key and value take about this much on the wire.
        const FIELDS: usize = 32;
        let bytes: usize = kvs
            .iter()
            .map(|kv| kv.key().len() + kv.value().len() + FIELDS)
            .sum();
        let per_key = (bytes / kvs.len().max(1)).max(1);
        let fits = i64::try_from(PAGE_BYTES / per_key).unwrap_or(MAX_PAGE_KEYS);
        self.limit = self
            .limit
            .max((self.limit * 2).min(fits).min(MAX_PAGE_KEYS));
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

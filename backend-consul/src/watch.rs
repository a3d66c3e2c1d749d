//! `watch`: blocking queries on the prefix, each answer diffed against the previous listing
//! into per-revision `Changes` and a `Progress`; a task feeds them through a bounded channel.
//!
//! Consul's blocking-query rules are applied: the next query waits on the index of the
//! last answer (0 is read as 1); an index lower than the last one means the store was reset
//! or restored, so the stream ends with `ResyncNeeded(IndexReset)`; queries are paced, with
//! a growing pause when Consul answers early without a change.

use crate::backend::Conn;
use crate::baseline::{self, Baseline};
use crate::errors::KIND;
use crate::listing::{self, Collect, Wait};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use sync_core::{BackendError, KvChange, ResyncReason, Revision, WatchEvent, WatchStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Events buffered between the task and a slow caller; beyond this the task waits.
const CHANNEL_CAPACITY: usize = 64;
/// Least time between two listings: under a stream of writes each listing then covers
/// several of them instead of one listing of the whole prefix per write.
const MIN_GAP: Duration = Duration::from_millis(100);
/// Longest pause after repeated early answers without a change.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

type Item = Result<WatchEvent, BackendError>;

/// Lists the prefix once (errors such as "permission denied" surface here), decides where
/// the stream starts, and spawns the task that follows the prefix with blocking queries.
pub(crate) async fn open(
    conn: &Arc<Conn>,
    prefix: &[u8],
    from: Revision,
) -> Result<WatchStream, BackendError> {
    // The caller has every change up to `floor`.
    let floor = Revision(from.0.saturating_sub(1));
    let base = conn.baselines.get(prefix).filter(|b| b.covers(floor));
    let before = conn.current_revision().await?;
    let collect = match &base {
        Some(b) => Collect::ChangedSince(&b.keys),
        None => Collect::KeysOnly,
    };
    let mut listing = listing::list(conn, prefix, collect, Wait::No).await?;
    let at = before.max(Revision(listing.index));
    let (start, initial) = match base {
        Some(b) if b.hi <= at => {
            let changes = baseline::changes(prefix, &b.keys, &mut listing, at);
            if let Err(reason) = check_order(&changes, b.hi) {
                return Ok(single(Ok(WatchEvent::ResyncNeeded(reason))));
            }
            let next = b.advance(listing.keys, listing.index, at, baseline::newest(&changes));
            (Arc::new(next), changes)
        }
        // The store answered with an older state than one already read: it went back.
        Some(_) => {
            let first = Baseline::first(listing.keys, listing.index, at);
            conn.baselines.replace(prefix, Arc::new(first));
            return Ok(single(Ok(WatchEvent::ResyncNeeded(
                ResyncReason::IndexReset,
            ))));
        }
        None => {
            let first = Arc::new(Baseline::first(listing.keys, listing.index, at));
            match floor.cmp(&at) {
                // Consul keeps no history: changes between `from` and now are not known.
                std::cmp::Ordering::Less => {
                    conn.baselines.install(prefix, first);
                    return Ok(single(Ok(WatchEvent::ResyncNeeded(
                        ResyncReason::Compacted {
                            compact_revision: at,
                        },
                    ))));
                }
                // `from` is the next revision: the listing is where the stream starts.
                std::cmp::Ordering::Equal => (first, Vec::new()),
                // The caller has seen revisions the store has not reached: the store went
                // back (a reset or restore); following it from here would skip its changes.
                std::cmp::Ordering::Greater => {
                    conn.baselines.replace(prefix, first);
                    return Ok(single(Ok(WatchEvent::ResyncNeeded(
                        ResyncReason::IndexReset,
                    ))));
                }
            }
        }
    };
    conn.baselines.install(prefix, start.clone());
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let task = WatchTask {
        conn: conn.clone(),
        prefix: prefix.to_vec(),
        from,
        prev: start,
        tx,
    };
    tokio::spawn(task.run(initial, at));
    Ok(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .boxed())
}

fn single(item: Item) -> WatchStream {
    futures::stream::iter([item]).boxed()
}

/// Every change must come after the revision the previous listing showed (and reported as
/// progress); one at or below it means the store served an older state.
fn check_order(changes: &[KvChange], shown: Revision) -> Result<(), ResyncReason> {
    match changes.iter().find(|c| c.revision <= shown) {
        Some(c) => {
            tracing::warn!(
                backend = KIND,
                change = c.revision.0,
                shown = shown.0,
                "Consul returned a change at or below a revision already reported; resync needed"
            );
            Err(ResyncReason::IndexReset)
        }
        None => Ok(()),
    }
}

enum Flow {
    Continue,
    Stop,
}

struct WatchTask {
    conn: Arc<Conn>,
    prefix: Vec<u8>,
    from: Revision,
    /// The last listing: the next query waits on its index, the next diff starts from it.
    prev: Arc<Baseline>,
    tx: mpsc::Sender<Item>,
}

impl WatchTask {
    async fn run(mut self, initial: Vec<KvChange>, at: Revision) {
        if let Flow::Stop = self.emit(initial, at).await {
            return;
        }
        let wait = self.conn.watch_wait;
        let mut pause = Duration::ZERO;
        let mut started = Instant::now();
        loop {
            tokio::select! {
                _ = self.tx.closed() => return,
                _ = tokio::time::sleep_until(started + MIN_GAP + pause) => {}
            }
            started = Instant::now();
            let step = async {
                let before = self.conn.current_revision().await?;
                let block = Wait::Block {
                    index: self.prev.index,
                    wait,
                };
                let listing = listing::list(
                    &self.conn,
                    &self.prefix,
                    Collect::ChangedSince(&self.prev.keys),
                    block,
                )
                .await?;
                Ok::<_, BackendError>((before, listing))
            };
            let (before, mut listing) = tokio::select! {
                _ = self.tx.closed() => return,
                step = step => match step {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = self.tx.send(Err(e)).await;
                        return;
                    }
                },
            };
            // Consul's rule: an index lower than the last one means start over. For a prefix
            // this also happens when Consul reaps the tombstone of its newest delete; the
            // resync is cheap then, since the baseline still covers the caller's checkpoint.
            // The store's own index going back means a reset or restored cluster.
            if listing.index < self.prev.index || before < self.prev.hi {
                tracing::warn!(
                    backend = KIND,
                    was = self.prev.index,
                    now = listing.index,
                    store = before.0,
                    shown = self.prev.hi.0,
                    "Consul's index went backwards; resync needed"
                );
                self.resync(ResyncReason::IndexReset).await;
                return;
            }
            // An answer before half the wait with the same index is no change and no
            // timeout: back off so a misbehaving agent is not polled in a tight loop.
            pause = if listing.index == self.prev.index && started.elapsed() < wait / 2 {
                (pause * 2).clamp(MIN_GAP, MAX_BACKOFF)
            } else {
                Duration::ZERO
            };
            let at = before.max(Revision(listing.index)).max(self.prev.hi);
            let changes = baseline::changes(&self.prefix, &self.prev.keys, &mut listing, at);
            if let Err(reason) = check_order(&changes, self.prev.hi) {
                self.resync(reason).await;
                return;
            }
            if self.tx.is_closed() {
                return;
            }
            let next = Arc::new(self.prev.advance(
                listing.keys,
                listing.index,
                at,
                baseline::newest(&changes),
            ));
            self.conn.baselines.install(&self.prefix, next.clone());
            self.prev = next;
            if let Flow::Stop = self.emit(changes, at).await {
                return;
            }
        }
    }

    /// Sends one `Changes` per revision (those before `from` are the caller's already),
    /// then `Progress` at the listing's revision.
    async fn emit(&self, changes: Vec<KvChange>, at: Revision) -> Flow {
        for (revision, changes) in baseline::group(changes) {
            if revision < self.from {
                continue;
            }
            if let Flow::Stop = self
                .send(Ok(WatchEvent::Changes { revision, changes }))
                .await
            {
                return Flow::Stop;
            }
        }
        self.send(Ok(WatchEvent::Progress { revision: at })).await
    }

    async fn send(&self, item: Item) -> Flow {
        match self.tx.send(item).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop, // the caller dropped the stream
        }
    }

    async fn resync(&self, reason: ResyncReason) {
        let _ = self.tx.send(Ok(WatchEvent::ResyncNeeded(reason))).await;
    }
}

//! `watch`: one etcd watcher on its own gRPC stream, owned by a task that turns responses into
//! `WatchEvent`s on a bounded channel; the caller gets a `'static` stream over that channel.

use crate::backend::Conn;
use crate::errors::{rev, wire_rev, Ctx, KIND};
use crate::keys::prefix_range;
use crate::progress::{server_orders_progress, ProgressGate};
use etcd_client::proto::{PbEvent, PbWatchResponse};
use etcd_client::{EventType, WatchOptions, WatchRequestSender, WatchResponseStream};
use futures::StreamExt;
use std::time::Duration;
use sync_core::{
    BackendError, ChangeKind, Key, KvChange, ResyncReason, Revision, WatchEvent, WatchStream,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Events buffered between the watch task and a slow caller; beyond this etcd holds them.
const CHANNEL_CAPACITY: usize = 64;
/// How often progress is asked for until the first one could be reported.
const FIRST_PROGRESS_RETRY: Duration = Duration::from_millis(250);

type Item = Result<WatchEvent, BackendError>;

/// Opens the watcher (errors such as "unavailable" or "permission denied" surface here) and
/// spawns the task that feeds the returned stream.
///
/// etcd checks the auth token when a watcher is created and answers an expired one (its
/// `--auth-token-ttl`, or any token after an etcd restart) with a cancel that etcd-client's
/// token refresh does not see: log in again and open once more.
pub(crate) async fn open(
    conn: &Conn,
    prefix: &[u8],
    from: Revision,
) -> Result<WatchStream, BackendError> {
    match open_once(conn, prefix, from).await {
        Err(e) if is_expired_token(&e) => {
            let client = conn.client.clone();
            conn.ctx.call("log in", client.refresh_token()).await?;
            open_once(conn, prefix, from).await
        }
        other => other,
    }
}

fn is_expired_token(err: &BackendError) -> bool {
    match err {
        BackendError::Unavailable { detail, .. }
        | BackendError::PermissionDenied { detail, .. }
        | BackendError::Refused { detail, .. } => detail.contains("invalid auth token"),
        _ => false,
    }
}

/// An expired token is passing: the caller reopens the watch (from its revision) with the
/// normal backoff, and `open` logs in again. Other errors are kept.
fn expired_is_passing(ctx: &Ctx, err: BackendError) -> BackendError {
    if is_expired_token(&err) && !err.is_retryable() {
        ctx.unavailable(format!("{err} (logging in again)"))
    } else {
        err
    }
}

async fn open_once(
    conn: &Conn,
    prefix: &[u8],
    from: Revision,
) -> Result<WatchStream, BackendError> {
    let ordered = match conn.server_version().await {
        Ok(v) => server_orders_progress(&v),
        // Unknown version: assume the older, unordered behaviour, whose answers are not used.
        Err(_) => false,
    };
    let (key, end) = prefix_range(prefix);
    let opts = WatchOptions::new()
        .with_range(end)
        .with_start_revision(wire_rev(from)?)
        .with_progress_notify()
        .with_fragment();
    let mut client = conn.watch.clone();
    let (mut sender, mut responses) = conn
        .ctx
        .call("watch", client.watch(key, Some(opts)))
        .await?
        .split();
    let created = conn.ctx.call("watch", responses.message()).await?;
    let created = created
        .ok_or_else(|| conn.ctx.unavailable("watch closed before it started"))?
        .0;
    if created.compact_revision != 0 {
        return Ok(single(resync(created.compact_revision)));
    }
    if created.canceled || !created.created {
        return Err(cancel_error(&conn.ctx, &created));
    }
    let gate = ProgressGate::new(ordered, from);
    if gate.asks() {
        conn.ctx
            .call("watch progress", sender.request_progress())
            .await?;
    }

    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let task = WatchTask {
        responses,
        sender,
        tx,
        gate,
        watch_id: created.watch_id,
        interval: conn.progress_interval,
        ctx: conn.ctx.clone(),
        fragments: Vec::new(),
    };
    tokio::spawn(task.run());
    Ok(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .boxed())
}

fn single(item: Item) -> WatchStream {
    futures::stream::iter([item]).boxed()
}

fn resync(compact_revision: i64) -> Item {
    Ok(WatchEvent::ResyncNeeded(ResyncReason::Compacted {
        compact_revision: rev(compact_revision),
    }))
}

fn cancel_error(ctx: &Ctx, resp: &PbWatchResponse) -> BackendError {
    let reason = &resp.cancel_reason;
    if reason.contains("invalid auth token") {
        ctx.unavailable(format!("watch: {reason} (logging in again)"))
    } else if reason.contains("permission denied") {
        BackendError::PermissionDenied {
            backend: KIND,
            detail: format!("watch: {reason}"),
        }
    } else if reason.contains("no leader") {
        ctx.unavailable(format!("watch: {reason}"))
    } else {
        BackendError::Refused {
            backend: KIND,
            detail: format!("watch canceled by etcd: {reason}"),
        }
    }
}

enum Flow {
    Continue,
    Stop,
}

struct WatchTask {
    responses: WatchResponseStream,
    sender: WatchRequestSender,
    tx: mpsc::Sender<Item>,
    gate: ProgressGate,
    /// Our watcher's id: etcd's own periodic notifications carry it, answers to progress
    /// requests carry -1.
    watch_id: i64,
    interval: Duration,
    ctx: Ctx,
    /// Events of a fragmented response, until its last fragment arrives.
    fragments: Vec<PbEvent>,
}

impl WatchTask {
    async fn run(mut self) {
        let mut ask_at = Instant::now() + FIRST_PROGRESS_RETRY;
        let asks = self.gate.asks();
        loop {
            let flow = tokio::select! {
                _ = self.tx.closed() => Flow::Stop,
                msg = self.responses.next() => {
                    let flow = match msg {
                        Some(Ok(resp)) => self.on_response(resp.0).await,
                        Some(Err(e)) => {
                            self.fail(expired_is_passing(&self.ctx, self.ctx.map("watch", e))).await
                        }
                        None => self.fail(self.ctx.unavailable("watch stream closed by etcd")).await,
                    };
                    ask_at = self.next_ask();
                    flow
                }
                _ = tokio::time::sleep_until(ask_at), if asks => {
                    ask_at = self.next_ask();
                    match self.sender.request_progress().await {
                        Ok(()) => Flow::Continue,
                        Err(e) => self.fail(self.ctx.map("watch progress", e)).await,
                    }
                }
            };
            if let Flow::Stop = flow {
                return;
            }
        }
    }

    fn next_ask(&self) -> Instant {
        let wait = if self.gate.has_reported() {
            self.interval
        } else {
            FIRST_PROGRESS_RETRY
        };
        Instant::now() + wait
    }

    async fn send(&self, item: Item) -> Flow {
        match self.tx.send(item).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop, // the caller dropped the stream
        }
    }

    async fn fail(&self, err: BackendError) -> Flow {
        let _ = self.tx.send(Err(err)).await;
        Flow::Stop
    }

    async fn on_response(&mut self, mut resp: PbWatchResponse) -> Flow {
        if resp.compact_revision != 0 {
            let _ = self.tx.send(resync(resp.compact_revision)).await;
            return Flow::Stop;
        }
        if resp.canceled {
            return self.fail(cancel_error(&self.ctx, &resp)).await;
        }
        if resp.fragment {
            self.fragments.append(&mut resp.events);
            return Flow::Continue;
        }
        let mut events = std::mem::take(&mut self.fragments);
        events.append(&mut resp.events);
        let header_rev = rev(resp.header.as_ref().map_or(0, |h| h.revision));
        if events.is_empty() {
            if resp.created {
                return Flow::Continue;
            }
            return self
                .on_progress(header_rev, resp.watch_id == self.watch_id)
                .await;
        }
        self.on_events(events).await
    }

    async fn on_progress(&mut self, p: Revision, server_notify: bool) -> Flow {
        let Some(p) = self.gate.on_progress(p, server_notify) else {
            return Flow::Continue;
        };
        self.gate.reported(p);
        self.send(Ok(WatchEvent::Progress { revision: p })).await
    }

    async fn on_events(&mut self, events: Vec<PbEvent>) -> Flow {
        let batches = match group_by_revision(events) {
            Ok(b) => b,
            Err(e) => return self.fail(e).await,
        };
        let revs: Vec<Revision> = batches.iter().map(|(r, _)| *r).collect();
        if let Err(v) = self.gate.on_changes(&revs) {
            tracing::warn!(
                change = v.change.0,
                reported = v.reported.0,
                "etcd delivered a change below a revision already reported; resync needed"
            );
            let _ = self
                .tx
                .send(Ok(WatchEvent::ResyncNeeded(ResyncReason::IndexReset)))
                .await;
            return Flow::Stop;
        }
        for (revision, changes) in batches {
            if let Flow::Stop = self
                .send(Ok(WatchEvent::Changes { revision, changes }))
                .await
            {
                return Flow::Stop;
            }
        }
        Flow::Continue
    }
}

/// Splits one response's events into per-revision groups (one per etcd transaction), in order.
fn group_by_revision(events: Vec<PbEvent>) -> Result<Vec<(Revision, Vec<KvChange>)>, BackendError> {
    let mut out: Vec<(Revision, Vec<KvChange>)> = Vec::new();
    for ev in events {
        let kind_is_delete = ev.r#type == EventType::Delete as i32;
        let Some(kv) = ev.kv else {
            return Err(BackendError::Other {
                backend: KIND,
                detail: "watch event without key".into(),
            });
        };
        let revision = rev(kv.mod_revision);
        let kind = if kind_is_delete {
            ChangeKind::Delete
        } else {
            ChangeKind::Put(kv.value)
        };
        let change = KvChange {
            key: Key(kv.key),
            kind,
            revision,
        };
        match out.last_mut() {
            Some((r, changes)) if *r == revision => changes.push(change),
            _ => out.push((revision, vec![change])),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Ctx {
        Ctx {
            endpoints: "https://x:1".into(),
            request_timeout: Duration::from_secs(1),
        }
    }

    fn canceled(reason: &str) -> PbWatchResponse {
        PbWatchResponse {
            canceled: true,
            cancel_reason: reason.into(),
            ..PbWatchResponse::default()
        }
    }

    #[test]
    fn an_expired_token_is_passing_and_a_denial_is_not() {
        let expired = cancel_error(
            &ctx(),
            &canceled("rpc error: code = Unauthenticated desc = etcdserver: invalid auth token"),
        );
        assert!(
            expired.is_retryable() && is_expired_token(&expired),
            "{expired}"
        );
        let denied = cancel_error(&ctx(), &canceled("etcdserver: permission denied"));
        assert!(
            matches!(denied, BackendError::PermissionDenied { .. }),
            "{denied}"
        );
        assert!(!is_expired_token(&denied));
        let mid_stream = BackendError::PermissionDenied {
            backend: KIND,
            detail: "watch: etcdserver: invalid auth token (Unauthenticated)".into(),
        };
        assert!(expired_is_passing(&ctx(), mid_stream).is_retryable());
    }
}

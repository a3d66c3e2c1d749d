//! `EtcdBackend`: connects (bounded by timeouts, checked by a first request) and implements
//! `KvBackend` by delegating to the snapshot, txn and watch modules.

use crate::config::{connect_options, ConnectError, EtcdConfig};
use crate::errors::{missing_header, rev, Ctx, KIND};
use crate::{delta, many, ownership, snapshot, txn, watch};
use async_trait::async_trait;
use etcd_client::{Client, KvClient, LeaseClient, MaintenanceClient, WatchClient};
use futures::{StreamExt, TryStreamExt};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use sync_core::{
    BackendError, Claim, ClusterId, Epoch, Key, KvBackend, KvEntry, Lease, LeaseId, Renewal,
    Revision, Snapshot, SnapshotPages, TxnOutcome, WatchStream, WriteLimits, WriteOp,
};

/// etcd refuses a txn of more than 128 ops (`--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;
/// etcd's default `--max-request-bytes`: 1.5 MiB. etcd checks it against the raft proposal
/// (the whole txn request with its header), not just the keys and values.
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// The batch budget: 1400 KiB of keys and values leaves room for the framing and the
/// compares of up to 128 ops.
pub const MAX_TXN_BYTES: usize = 1400 * 1024;
/// The largest op (key + value) written alone, in a one-op txn with its compare.
///
/// Measured on etcd 3.4.23 with the default limit: a one-op txn with a `mod_revision` (or
/// `create_revision == 0`) compare is accepted up to a value of `1572864 - 2 × key - 40`
/// bytes (keys of 10–100 bytes; `- 44` for a 1000-byte key), one byte more is refused
/// ("request is too large"); a plain put takes `1572864 - key - 24`. The compare repeats the
/// key, so in key + value bytes the limit is `1572864 - key - ~44`. The 4 KiB margin covers
/// that framing (a 10-byte revision varint, the username an authenticated request carries
/// in its header) and keys up to ~3.9 KiB.
pub const MAX_SINGLE_OP_BYTES: usize = MAX_REQUEST_BYTES - 4 * 1024;
/// Responses bigger than this are refused by the client; snapshot pages shrink to fit, watch
/// responses are fragmented by the server.
pub(crate) const DECODE_LIMIT: usize = 16 * 1024 * 1024;
/// From this many keys under a prefix (times the prefixes asked about at the same time),
/// `changes_between` watches instead of reading: etcd reads the whole prefix for a filtered
/// range, ~28 ms for 16k keys here, and a catch-up watch waits half of etcd's 100 ms
/// catch-up interval on average.
pub const CATCH_UP_BY_WATCH_FROM_KEYS: usize = 16 * 1024;

/// The clients and settings every request needs; cheap to clone.
#[derive(Clone)]
pub(crate) struct Conn {
    /// The whole client, to log in again when a watch is refused for an expired token.
    pub client: Client,
    /// Who etcd sees us as, for permission-denied messages.
    pub principal: String,
    pub kv: KvClient,
    pub watch: WatchClient,
    pub maintenance: MaintenanceClient,
    pub ctx: Ctx,
    pub progress_interval: Duration,
    /// Areas of at least this many keys are caught up by a watch (see `catchup`).
    pub catch_up_from_keys: usize,
    /// How many `changes_between` a catch-up watch answered (shared by clones).
    pub caught_up_by_watch: Arc<AtomicU64>,
    /// `changes_between` calls in flight (shared by clones): their reads add up.
    pub catching_up: Arc<AtomicUsize>,
}

impl Conn {
    /// The answering member's status: cluster id, revision and server version.
    async fn status(&self) -> Result<etcd_client::StatusResponse, BackendError> {
        let mut m = self.maintenance.clone();
        self.ctx.call("status", m.status()).await
    }

    pub async fn server_version(&self) -> Result<String, BackendError> {
        Ok(self.status().await?.version().to_owned())
    }

    /// A permission-denied error naming what was refused (`target`: a key, keys or prefix)
    /// and to whom; other errors pass unchanged.
    pub fn denied(&self, err: BackendError, target: impl FnOnce() -> String) -> BackendError {
        match err {
            BackendError::PermissionDenied { backend, detail } => BackendError::PermissionDenied {
                backend,
                detail: format!("{} for {}: {detail}", target(), self.principal),
            },
            other => other,
        }
    }
}

/// Who etcd takes a client for: the user, or the CN of its client certificate.
fn principal(cfg: &EtcdConfig) -> String {
    match (&cfg.user, &cfg.cert_file) {
        (Some(user), _) => format!("user {user} (backend.user)"),
        (None, Some(cert)) => format!(
            "the user named by the CN of backend.cert_file {}",
            cert.display()
        ),
        (None, None) => "no user (no backend.user, no client certificate)".to_owned(),
    }
}

/// "key K" for one key, "keys A, B, C and N more" for a batch.
fn name_keys(ops: &[WriteOp]) -> String {
    name_keys_in(ops.iter().map(WriteOp::key), ops.len())
}

/// [`name_keys`] of keys read.
fn name_keys_of(keys: &[Key]) -> String {
    name_keys_in(keys.iter(), keys.len())
}

fn name_keys_in<'a>(keys: impl Iterator<Item = &'a Key>, len: usize) -> String {
    const SHOWN: usize = 3;
    let keys: Vec<String> = keys.take(SHOWN).map(Key::to_string).collect();
    match len {
        1 => format!("key {}", keys[0]),
        n if n > SHOWN => format!("keys {} and {} more", keys.join(", "), n - SHOWN),
        _ => format!("keys {}", keys.join(", ")),
    }
}

fn name_prefix(prefix: &[u8]) -> String {
    format!("prefix {}", Key(prefix.to_vec()))
}

/// kvgit's backend on an etcd v3 cluster.
#[derive(Clone)]
pub struct EtcdBackend {
    conn: Conn,
    leases: LeaseClient,
}

impl std::fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdBackend")
            .field("endpoints", &self.conn.ctx.endpoints)
            .finish()
    }
}

impl EtcdBackend {
    /// Connects and checks with one request that a member answers; fails within
    /// `connect_timeout + request_timeout` when nothing listens.
    pub async fn connect(cfg: EtcdConfig) -> Result<EtcdBackend, ConnectError> {
        let opts = connect_options(&cfg).await?;
        let ctx = Ctx {
            endpoints: cfg.endpoints_label(),
            request_timeout: cfg.request_timeout,
        };
        let budget = cfg.connect_timeout + cfg.request_timeout;
        // With a user, connecting already authenticates: bound it like a request.
        let client =
            match tokio::time::timeout(budget, Client::connect(&cfg.endpoints, Some(opts))).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(connect_error(&cfg, &ctx, ctx.map("connect", e))),
                Err(_) => {
                    return Err(ConnectError::Unreachable {
                        endpoints: ctx.endpoints.clone(),
                        detail: format!("no answer within {budget:?}"),
                    })
                }
            };
        let leases = client.lease_client();
        let conn = Conn {
            client: client.clone(),
            principal: principal(&cfg),
            kv: client.kv_client().max_decoding_message_size(DECODE_LIMIT),
            watch: client
                .watch_client()
                .max_decoding_message_size(DECODE_LIMIT),
            maintenance: client.maintenance_client(),
            ctx: ctx.clone(),
            progress_interval: cfg.watch_progress_interval,
            catch_up_from_keys: CATCH_UP_BY_WATCH_FROM_KEYS,
            caught_up_by_watch: Arc::default(),
            catching_up: Arc::default(),
        };
        let probe = Ctx {
            request_timeout: budget,
            ..ctx.clone()
        };
        let mut m = conn.maintenance.clone();
        probe
            .call("status", m.status())
            .await
            .map_err(|e| connect_error(&cfg, &ctx, e))?;
        Ok(EtcdBackend { conn, leases })
    }

    /// Areas of at least `keys` keys (counting every area asked about at the same time) are
    /// caught up by a watch rather than a filtered read (default
    /// `CATCH_UP_BY_WATCH_FROM_KEYS`); 0 always watches first, as tests do to exercise it on
    /// small areas.
    pub fn catch_up_by_watch_from(mut self, keys: usize) -> Self {
        self.conn.catch_up_from_keys = keys;
        self
    }

    /// How many `changes_between` calls a catch-up watch answered (the rest read the area).
    pub fn caught_up_by_watch(&self) -> u64 {
        self.conn.caught_up_by_watch.load(Ordering::Relaxed)
    }
}

fn connect_error(cfg: &EtcdConfig, ctx: &Ctx, err: BackendError) -> ConnectError {
    let endpoints = ctx.endpoints.clone();
    let detail = match &err {
        BackendError::Unavailable { detail, .. }
        | BackendError::PermissionDenied { detail, .. }
        | BackendError::Refused { detail, .. }
        | BackendError::Other { detail, .. } => detail.clone(),
        _ => String::new(),
    };
    if detail.contains("authentication failed") {
        return ConnectError::BadPassword {
            endpoints,
            user: cfg.user.clone().unwrap_or_default(),
            setting: if cfg.password_file.is_some() {
                "backend.password_file"
            } else {
                "backend.password"
            },
        };
    }
    if let Some(hint) = tls_hint(cfg, &detail) {
        return ConnectError::Tls {
            endpoints,
            hint,
            detail,
        };
    }
    match err {
        BackendError::Unavailable { mut detail, .. } => {
            // Under TLS 1.3 a missing client certificate is refused after the client's
            // handshake is done, seen as a closed stream, a reset or a broken pipe: a hint,
            // and still retryable, since a restarting server looks the same. Nothing
            // listening ("refused") or a silent server (timeout) gets no hint.
            let https = cfg.endpoints.iter().any(|e| e.starts_with("https://"));
            let d = detail.to_ascii_lowercase();
            let dropped = !d.contains("connection refused") && !d.contains("no answer within");
            if https && cfg.cert_file.is_none() && dropped {
                detail.push_str(
                    " (if the server requires client certificates, set backend.cert_file and backend.key_file)",
                );
            }
            ConnectError::Unreachable { endpoints, detail }
        }
        BackendError::PermissionDenied { detail, .. } => {
            ConnectError::AuthFailed { endpoints, detail }
        }
        other => ConnectError::Refused {
            endpoints,
            detail: other.to_string(),
        },
    }
}

/// Which setting to look at when the TLS handshake failed; `None` when it is not TLS.
fn tls_hint(cfg: &EtcdConfig, detail: &str) -> Option<&'static str> {
    let d = detail.to_ascii_lowercase();
    if d.contains("invalid peer certificate") || d.contains("unknownissuer") {
        return Some(if cfg.ca_file.is_some() {
            "the server's certificate is not signed by backend.ca_file"
        } else {
            "the server's certificate is not trusted: set backend.ca_file"
        });
    }
    if d.contains("certificate required") || d.contains("fatal alert") || d.contains("handshake") {
        return Some(if cfg.cert_file.is_some() {
            "the server refused the client certificate in backend.cert_file"
        } else {
            "the server wants a client certificate: set backend.cert_file and backend.key_file"
        });
    }
    None
}

#[async_trait]
impl KvBackend for EtcdBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn write_limits(&self) -> WriteLimits {
        WriteLimits {
            max_ops: MAX_TXN_OPS,
            max_bytes: MAX_TXN_BYTES,
            max_value_bytes: MAX_SINGLE_OP_BYTES,
        }
    }

    async fn cluster_id(&self) -> Result<ClusterId, BackendError> {
        let status = self.conn.status().await?;
        let header = status.header().ok_or_else(|| missing_header("status"))?;
        Ok(ClusterId(format!("{:x}", header.cluster_id())))
    }

    async fn current_revision(&self) -> Result<Revision, BackendError> {
        let status = self.conn.status().await?;
        let header = status.header().ok_or_else(|| missing_header("status"))?;
        Ok(rev(header.revision()))
    }

    async fn snapshot(
        &self,
        prefix: &[u8],
        at: Option<Revision>,
    ) -> Result<Snapshot, BackendError> {
        snapshot::read(&self.conn, prefix, at)
            .await
            .map_err(|e| self.conn.denied(e, || name_prefix(prefix)))
    }

    async fn snapshot_pages(
        &self,
        prefix: &[u8],
        at: Option<Revision>,
    ) -> Result<SnapshotPages, BackendError> {
        let pages = snapshot::pages(&self.conn, prefix, at)
            .await
            .map_err(|e| self.conn.denied(e, || name_prefix(prefix)))?;
        // A later page can be refused too (a revoked permission): named the same way.
        let conn = self.conn.clone();
        let prefix = prefix.to_vec();
        Ok(pages
            .map_err(move |e| conn.denied(e, || name_prefix(&prefix)))
            .boxed())
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<KvEntry>, BackendError> {
        many::get_many(&self.conn, keys, MAX_TXN_OPS)
            .await
            .map_err(|e| self.conn.denied(e, || name_keys_of(keys)))
    }

    async fn count(&self, prefix: &[u8]) -> Result<u64, BackendError> {
        let n = delta::count(&self.conn, prefix, None)
            .await
            .map_err(|e| self.conn.denied(e, || name_prefix(prefix)))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn watch(&self, prefix: &[u8], from: Revision) -> Result<WatchStream, BackendError> {
        watch::open(&self.conn, prefix, from)
            .await
            .map_err(|e| self.conn.denied(e, || name_prefix(prefix)))
    }

    async fn changes_between(
        &self,
        prefix: &[u8],
        after: Revision,
        upto: Revision,
    ) -> Result<Option<Vec<sync_core::KvChange>>, BackendError> {
        delta::changes_between(&self.conn, prefix, after, upto)
            .await
            .map_err(|e| self.conn.denied(e, || name_prefix(prefix)))
    }

    async fn write(&self, ops: &[WriteOp]) -> Result<TxnOutcome, BackendError> {
        txn::write(&self.conn, ops, self.write_limits())
            .await
            .map_err(|e| self.conn.denied(e, || name_keys(ops)))
    }

    async fn probe_write(&self, keys: &[Key]) -> Result<(), BackendError> {
        txn::probe(&self.conn, keys, self.write_limits()).await
    }

    async fn grant_lease(&self, _name: &str, ttl: Duration) -> Result<Lease, BackendError> {
        ownership::grant(&self.conn, &self.leases, ttl).await
    }

    async fn renew_lease(&self, lease: &LeaseId) -> Result<Renewal, BackendError> {
        ownership::renew(&self.conn, &self.leases, lease).await
    }

    async fn revoke_lease(&self, lease: &LeaseId) -> Result<(), BackendError> {
        ownership::revoke(&self.conn, &self.leases, lease).await
    }

    async fn claim(
        &self,
        key: &Key,
        value: &[u8],
        lease: &LeaseId,
    ) -> Result<Option<Epoch>, BackendError> {
        ownership::claim(&self.conn, key, value, lease)
            .await
            .map_err(|e| self.conn.denied(e, || format!("key {key}")))
    }

    async fn release(&self, key: &Key, lease: &LeaseId) -> Result<(), BackendError> {
        ownership::release(&self.conn, key, lease)
            .await
            .map_err(|e| self.conn.denied(e, || format!("key {key}")))
    }

    async fn claims(&self, prefix: &[u8]) -> Result<Vec<Claim>, BackendError> {
        ownership::claims(&self.conn, prefix)
            .await
            .map_err(|e| self.conn.denied(e, || name_prefix(prefix)))
    }
}

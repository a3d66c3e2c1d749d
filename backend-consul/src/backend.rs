//! `ConsulBackend`: connects (endpoint and token checked by a first request within the
//! timeouts) and implements `KvBackend` by delegating to the listing, txn, watch and session
//! modules.

use crate::baseline::Baselines;
use crate::config::{ConnectError, ConsulConfig};
use crate::errors::{other, quote, refused, KIND};
use crate::http::{Http, Query};
use crate::listing::{self, Collect, Wait};
use crate::{keys, session, snapshot, txn, watch};
use async_trait::async_trait;
use futures::{FutureExt, StreamExt, TryStreamExt};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use sync_core::{
    BackendError, Claim, ClusterId, Epoch, Key, KvBackend, KvChange, KvEntry, Lease, LeaseId,
    Renewal, Revision, Snapshot, TxnOutcome, WatchStream, WriteLimits, WriteOp,
};

/// One key's entry, or None; see `get_many`.
fn get_one(
    conn: Arc<Conn>,
    key: Key,
) -> futures::future::BoxFuture<'static, Result<Option<KvEntry>, BackendError>> {
    async move {
        let listed = listing::list(&conn, &key.0, Collect::All, Wait::No).await?;
        Ok(listed.entries.into_iter().find(|e| e.key == key))
    }
    .boxed()
}

/// Keys `get_many` reads at once, one request each.
const GETS_IN_FLIGHT: usize = 8;

/// Everything a request needs; shared by the backend's clones and its watch tasks.
pub(crate) struct Conn {
    pub http: Arc<Http>,
    /// rs-consul, on the same HTTP client, for the session-bound `acquire` PUT.
    pub consul: rs_consul::Consul,
    pub baselines: Baselines,
    pub watch_wait: Duration,
    pub limits: WriteLimits,
    /// `/v1/kv/<revision probe key>`, escaped.
    probe_path: String,
    probe_key: String,
    /// TTLs of the sessions granted here, for renewals whose answer lacks one.
    leases: Mutex<HashMap<String, Duration>>,
}

impl Conn {
    /// The KV store's current index: Consul answers a read of an absent key with the index
    /// of the store's last change (entries and tombstones).
    pub async fn current_revision(&self) -> Result<Revision, BackendError> {
        self.current_revision_within(self.http.request_timeout)
            .await
    }

    async fn current_revision_within(&self, timeout: Duration) -> Result<Revision, BackendError> {
        let uri = self.http.uri(&self.probe_path, Query::new());
        let resp = self
            .http
            .send("current revision", hyper::Method::GET, uri, None, timeout)
            .await?;
        match resp.status.as_u16() {
            404 => resp
                .index
                .map(|i| Revision(i.max(1)))
                .ok_or_else(|| other("current revision: 404 without X-Consul-Index".into())),
            // An existing key's read carries its own ModifyIndex, not the store's.
            200 => Err(refused(format!(
                "the revision probe key {:?} exists; kvgit reads it expecting \"not found\" to \
                 learn the store's index: delete it or configure another revision_probe_key",
                self.probe_key
            ))),
            _ => Err(self
                .http
                .ctx
                .status("current revision", resp.status, &resp.body)),
        }
    }

    pub fn remember_lease(&self, id: &str, ttl: Duration) {
        self.lease_map().insert(id.to_owned(), ttl);
    }

    pub fn forget_lease(&self, id: &str) {
        self.lease_map().remove(id);
    }

    pub fn granted_ttl(&self, id: &str) -> Option<Duration> {
        self.lease_map().get(id).copied()
    }

    fn lease_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Duration>> {
        self.leases
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The datacenter answering: the configured one, else the agent's (`/v1/agent/self`).
    async fn datacenter(&self) -> Result<String, BackendError> {
        if let Some(dc) = &self.http.datacenter {
            return Ok(dc.clone());
        }
        #[derive(Deserialize)]
        struct AgentConfig {
            #[serde(rename = "Datacenter")]
            datacenter: String,
        }
        #[derive(Deserialize)]
        struct AgentSelf {
            #[serde(rename = "Config")]
            config: AgentConfig,
        }
        // The agent's own endpoint: `dc` does not apply.
        let uri = format!("{}/v1/agent/self", self.http.base);
        let resp = self.http.get("agent self", uri).await?;
        if resp.status.as_u16() != 200 {
            let err = self.http.ctx.status("agent self", resp.status, &resp.body);
            return Err(match err {
                BackendError::PermissionDenied { detail, .. } => BackendError::PermissionDenied {
                    backend: KIND,
                    detail: format!(
                        "{detail} (the token needs agent:read to learn the datacenter, or \
                         configure the datacenter)"
                    ),
                },
                e => e,
            });
        }
        let me: AgentSelf = serde_json::from_slice(&resp.body).map_err(|e| {
            other(format!(
                "agent self: unreadable answer ({e}): {}",
                quote(&resp.body)
            ))
        })?;
        Ok(me.config.datacenter)
    }

    /// The cluster's UUID: Consul generates the Connect CA's trust domain
    /// (`<uuid>.consul`) when the cluster is bootstrapped. `None` when Connect is disabled.
    async fn cluster_uuid(&self) -> Result<Option<String>, BackendError> {
        #[derive(Deserialize)]
        struct Roots {
            #[serde(rename = "TrustDomain", default)]
            trust_domain: String,
        }
        let uri = self.http.uri("/v1/connect/ca/roots", Query::new());
        let resp = self.http.get("connect ca roots", uri).await?;
        let status = resp.status.as_u16();
        let disabled = String::from_utf8_lossy(&resp.body).contains("Connect must be enabled");
        match status {
            200 => {
                let roots: Roots = serde_json::from_slice(&resp.body).map_err(|e| {
                    other(format!(
                        "connect ca roots: unreadable answer ({e}): {}",
                        quote(&resp.body)
                    ))
                })?;
                let uuid = roots.trust_domain.split('.').next().unwrap_or_default();
                if uuid.is_empty() {
                    // Right after a leader election the CA may not be set up yet; a
                    // datacenter-only id now would differ from the id a moment later.
                    return Err(self
                        .http
                        .ctx
                        .unavailable("connect ca roots: no trust domain yet"));
                }
                Ok(Some(uuid.to_owned()))
            }
            _ if disabled => Ok(None),
            // Auth problems and outages are errors: a fallback id would make every
            // checkpoint look like another cluster's.
            401 | 403 | 429 | 500..=599 => {
                Err(self
                    .http
                    .ctx
                    .status("connect ca roots", resp.status, &resp.body))
            }
            // 404 (Connect off, or an agent without the endpoint), 400, 405.
            _ => Ok(None),
        }
    }
}

/// kvgit's backend on a Consul datacenter's KV store.
#[derive(Clone)]
pub struct ConsulBackend {
    conn: Arc<Conn>,
}

impl std::fmt::Debug for ConsulBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulBackend")
            .field("endpoint", &self.conn.http.base)
            .field("datacenter", &self.conn.http.datacenter)
            .finish()
    }
}

impl ConsulBackend {
    /// Checks the config, then reads the store's index once: that proves the agent
    /// answers, has a leader and accepts the token, within `connect_timeout +
    /// request_timeout`.
    pub async fn connect(cfg: ConsulConfig) -> Result<ConsulBackend, ConnectError> {
        let base = cfg.base_url()?;
        let http = Http::new(&cfg, base.clone())?;
        let consul = rs_consul::ConsulBuilder::new(rs_consul::Config {
            address: base.clone(),
            token: http.token.clone(),
            ..Default::default()
        })
        .with_https_client(http.client.clone())
        .build();
        let conn = Arc::new(Conn {
            http,
            consul,
            baselines: Baselines::default(),
            watch_wait: cfg.watch_wait,
            limits: txn::limits(cfg.max_txn_ops),
            probe_path: format!("/v1/kv/{}", keys::path(&cfg.revision_probe_key)),
            probe_key: cfg.revision_probe_key.clone(),
            leases: Mutex::new(HashMap::new()),
        });
        conn.current_revision_within(cfg.connect_timeout + cfg.request_timeout)
            .await
            .map_err(|e| connect_error(&base, e))?;
        Ok(ConsulBackend { conn })
    }
}

fn connect_error(endpoint: &str, err: BackendError) -> ConnectError {
    let endpoint = endpoint.to_owned();
    match err {
        BackendError::Unavailable { detail, .. } => ConnectError::Unreachable { endpoint, detail },
        BackendError::PermissionDenied { detail, .. } => {
            ConnectError::AuthFailed { endpoint, detail }
        }
        BackendError::Refused { detail, .. } => ConnectError::Refused { endpoint, detail },
        other => ConnectError::Refused {
            endpoint,
            detail: other.to_string(),
        },
    }
}

#[async_trait]
impl KvBackend for ConsulBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn write_limits(&self) -> WriteLimits {
        self.conn.limits
    }

    /// `<datacenter>:<cluster uuid>`, or `<datacenter>` when Connect is disabled (then a
    /// datacenter rebuilt under the same name looks the same; its index reset is still
    /// caught by watches).
    async fn cluster_id(&self) -> Result<ClusterId, BackendError> {
        let dc = self.conn.datacenter().await?;
        Ok(ClusterId(match self.conn.cluster_uuid().await? {
            Some(uuid) => format!("{dc}:{uuid}"),
            None => dc,
        }))
    }

    async fn current_revision(&self) -> Result<Revision, BackendError> {
        self.conn.current_revision().await
    }

    async fn snapshot(
        &self,
        prefix: &[u8],
        at: Option<Revision>,
    ) -> Result<Snapshot, BackendError> {
        snapshot::read(&self.conn, prefix, at).await
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<KvEntry>, BackendError> {
        // Read as listings of each key, keeping the key itself: unlike `snapshot`, these
        // leave the prefixes' baselines alone (one per key read would pile up for ever).
        let reads: Vec<_> = keys
            .iter()
            .map(|key| get_one(Arc::clone(&self.conn), key.clone()))
            .collect();
        let found: Vec<Option<KvEntry>> = futures::stream::iter(reads)
            .buffered(GETS_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(found.into_iter().flatten().collect())
    }

    async fn count(&self, prefix: &[u8]) -> Result<u64, BackendError> {
        let listed = listing::list(&self.conn, prefix, Collect::KeysOnly, Wait::No).await?;
        Ok(listed.keys.len() as u64)
    }

    async fn watch(&self, prefix: &[u8], from: Revision) -> Result<WatchStream, BackendError> {
        watch::open(&self.conn, prefix, from).await
    }

    async fn changes_between(
        &self,
        prefix: &[u8],
        after: Revision,
        upto: Revision,
    ) -> Result<Option<Vec<KvChange>>, BackendError> {
        snapshot::changes_between(&self.conn, prefix, after, upto).await
    }

    async fn write(&self, ops: &[WriteOp]) -> Result<TxnOutcome, BackendError> {
        txn::write(&self.conn, ops).await
    }

    async fn probe_write(&self, keys: &[Key]) -> Result<(), BackendError> {
        txn::probe(&self.conn, keys).await
    }

    fn check_key(&self, key: &Key) -> Result<(), BackendError> {
        keys::utf8(key).map(|_| ())
    }

    fn keeps_history(&self) -> bool {
        false
    }

    async fn grant_lease(&self, name: &str, ttl: Duration) -> Result<Lease, BackendError> {
        session::grant(&self.conn, name, ttl).await
    }

    async fn renew_lease(&self, lease: &LeaseId) -> Result<Renewal, BackendError> {
        session::renew(&self.conn, lease).await
    }

    async fn revoke_lease(&self, lease: &LeaseId) -> Result<(), BackendError> {
        session::revoke(&self.conn, lease).await
    }

    async fn claim(
        &self,
        key: &Key,
        value: &[u8],
        lease: &LeaseId,
    ) -> Result<Option<Epoch>, BackendError> {
        session::claim(&self.conn, key, value, lease).await
    }

    async fn release(&self, key: &Key, lease: &LeaseId) -> Result<(), BackendError> {
        session::release(&self.conn, key, lease).await
    }

    async fn claims(&self, prefix: &[u8]) -> Result<Vec<Claim>, BackendError> {
        session::claims(&self.conn, prefix).await
    }
}

//! An in-memory implementation of Consul's KV HTTP API (KV, transactions, sessions, blocking
//! queries) with Consul's semantics, so `backend-consul` is tested where Consul is not installed.
//!
//! # Implemented as Consul does it
//!
//! - One Raft-like index for all writes, starting above 1; every write that Consul sends
//!   through Raft takes the next index (a failed CAS or a rolled-back transaction too; a
//!   lock refused for lock delay does not). All operations of a transaction share one.
//! - KV entries with `Flags`, `CreateIndex`, `ModifyIndex`, `LockIndex`, `Session`; an
//!   idempotent write keeps `ModifyIndex`; a plain set resets `LockIndex` to 0 as Consul's
//!   state store does; tombstones on delete (one at the prefix for a tree delete).
//! - `X-Consul-Index` per Consul's endpoints: a key's `ModifyIndex`, or the KV table index
//!   (entries and tombstones) when absent; for prefixes the highest `ModifyIndex` or
//!   tombstone under the prefix, else the table index; never 0.
//! - Blocking queries on every KV read and session info/list (`index`, `wait` default 5m,
//!   max 10m, jitter up to wait/16); `?raw`, `?recurse`, `?keys` with `separator`.
//! - PUT `flags`, `cas`, `acquire`, `release`; DELETE `recurse`, `cas`; the 512 KiB value
//!   limit; Consul's status codes and plain-text error bodies.
//! - `/v1/txn` KV verbs (incl. `get-or-empty`), all errors reported, 409 on rollback, the
//!   operation-count and request-length limits, read-only transactions take no index.
//! - Sessions: TTL 10s..24h, behaviors release/delete, lock delay (default 15s, numbers
//!   below 1000 read as seconds), expiry after 2×TTL without renewal, invalidation on
//!   destroy or expiry releasing or deleting held keys and blocking their re-acquisition
//!   for the lock delay.
//! - `?dc=` of another datacenter (500 "No path to datacenter"), `?stale` reads served
//!   without a leader, `X-Consul-KnownLeader`/`X-Consul-LastContact`.
//! - ACLs (`acl_management_token` set: enabled, default policy deny): policies with
//!   HCL or JSON rules, tokens linked by policy ID or name, the builtin global-management
//!   policy and anonymous token, `/v1/acl/policy*` and `/v1/acl/token*` (see `acl` for the
//!   rule matching). Every KV, txn, session and agent call is checked: 403 with Consul's
//!   "Permission denied: token with AccessorID '…' lacks permission '…' on \"…\"", 403
//!   "ACL not found" for an unknown token; listings and txn reads are filtered with
//!   `X-Consul-Results-Filtered-By-ACLs`; txn ops failing a check roll back with 409.
//! - HTTPS (`tls`): a server certificate, and with `verify_incoming` client certificates.
//!
//! # Deliberately not implemented
//!
//! - Raft, several servers, snapshots, persistence: one process, state lost on exit.
//! - Tombstone reaping (kept forever), namespaces/partitions, Connect certificates (CA
//!   roots carry only the trust domain), catalog, health checks, agent endpoints beyond
//!   `/v1/agent/self`, Node/Service/Check transaction operations.
//! - ACL roles, auth methods, service/node identities, token expiry, legacy tokens,
//!   `acl.enable_key_list_policy`; policies' `Datacenters` are stored, not enforced.
//! - The key validation of the newest Consul releases (no leading "/", no file-like
//!   extensions): any UTF-8 key is accepted, and `/v1/kv//a` is the key "/a" rather than
//!   a redirect to a cleaned path.
//! - `/v1/_test/leader` and `/v1/_test/index_skew` are ours, not Consul's: fault injection
//!   for tests (a lost leader; blocking queries answering below the client's index).

mod acl;
mod acl_endpoint;
mod blocking;
mod duration;
mod endpoints;
mod http;
mod ids;
mod json;
mod kv;
mod kv_endpoint;
mod session;
mod state;
mod tls;
mod txn;

use state::Shared;
use std::sync::Arc;
pub use tls::TlsConfig;

/// Server settings; the defaults are Consul's.
#[derive(Clone, Debug)]
pub struct Config {
    pub datacenter: String,
    pub node_name: String,
    /// When set, ACLs are enabled with default policy deny and this is the initial
    /// management token's secret (`acl.tokens.initial_management`). Requests present a token
    /// as `X-Consul-Token`, `Authorization: Bearer` or `?token=`; none is the anonymous token.
    pub acl_management_token: Option<String>,
    /// When set, the API is served over TLS only.
    pub tls: Option<TlsConfig>,
    /// Consul's `maxTxnOps` (64 in the releases this follows; newer ones allow 128).
    pub max_txn_ops: usize,
    /// Consul's `txn_max_req_len`.
    pub txn_max_req_len: usize,
    /// Consul's `kv_max_value_size`.
    pub kv_max_value_size: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            datacenter: "dc1".to_string(),
            node_name: "kvgit-consul-api".to_string(),
            acl_management_token: None,
            tls: None,
            max_txn_ops: 64,
            txn_max_req_len: 512 * 1024,
            kv_max_value_size: 512 * 1024,
        }
    }
}

/// One simulated single-server Consul cluster.
pub struct ConsulApi {
    shared: Arc<Shared>,
}

impl ConsulApi {
    pub fn new(config: Config) -> ConsulApi {
        ConsulApi {
            shared: Arc::new(Shared::new(config)),
        }
    }

    /// The HTTP routes. Session TTLs only expire while [`ConsulApi::serve`] runs.
    pub fn router(&self) -> axum::Router {
        http::router(self.shared.clone())
    }

    /// Serves HTTP on `listener` and runs the session TTL timers until the server fails
    /// (or the future is dropped).
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        let acceptor = match &self.shared.config.tls {
            Some(tls) => Some(tls::acceptor(tls).map_err(std::io::Error::other)?),
            None => None,
        };
        let timers = tokio::spawn(session::run_timers(self.shared.clone()));
        let result = match acceptor {
            Some(acceptor) => tls::serve(listener, self.router(), acceptor).await,
            None => axum::serve(listener, self.router()).await,
        };
        timers.abort();
        result
    }
}

//! kvgit's `KvBackend` on Consul's KV store: prefix listings pinned to a provable revision,
//! `/v1/txn` writes with check-and-set, blocking-query watches diffed into exact events, and
//! sessions for ownership.
//!
//! # Calls: rs-consul and direct HTTP
//!
//! One hyper client (rs-consul's own stack: hyper 1 + hyper-util's pooled client, https via
//! rustls) carries every request; rs-consul is handed that client.
//! - Through rs-consul: the session-bound acquire of a claim (`PUT /v1/kv/<key>?acquire=`,
//!   `create_or_update_key`), which it covers without loss (the value goes out as bytes).
//! - Direct: everything rs-consul lacks or cannot do without loss. Its `read_key` decodes
//!   values as UTF-8 (values are bytes here) and drops `X-Consul-Index` on a 404 (which is
//!   how the current revision is read), so listings, blocking queries and single reads go
//!   direct; it has no `/v1/txn` (every `write`, claim by `lock` verb for keys a URL path
//!   cannot carry, release); its sessions live in a `Lock` whose `Drop` makes a blocking
//!   call, unusable in async code, and it has no renew or destroy, so sessions go direct;
//!   `/v1/agent/self` and `/v1/connect/ca/roots` (the cluster id) too.
//!
//! Every request carries `X-Consul-Token` when a token is set (`token`, or `token_file` read
//! at connect) and `?dc=` when a datacenter is, and is bounded by `request_timeout` (a
//! blocking query by its `wait` plus Consul's jitter on top). https endpoints use rustls
//! with `ca_file` (else the webpki roots), the client certificate of `cert_file` +
//! `key_file`, and `tls_server_name`; unset settings can come from Consul's CLI variables
//! (`ConsulConfig::apply_env`).
//!
//! # Refusals
//!
//! A 403 (`Permission denied: token with AccessorID '…' lacks permission 'key:write' on
//! "…"`, or `ACL not found`) and a transaction rolled back for one are `PermissionDenied`,
//! their message naming the credential by its setting (`ConsulConfig::credential`), never
//! the secret. Consul filters a `?recurse` listing by the token's read permission instead
//! of refusing it; an answer marked `X-Consul-Results-Filtered-By-ACLs` is
//! `PermissionDenied` too, so hidden keys are never read as deleted. A certificate the CA
//! does not vouch for, or a handshake the agent ends (no or a foreign client certificate),
//! is `Refused` naming `ca_file` / `cert_file`, not an outage to retry.
//!
//! # Revisions
//!
//! A revision is Consul's Raft index. The current revision is the `X-Consul-Index` of a
//! read of an absent key, `revision_probe_key` (the KV table's last change, tombstones
//! included); `connect` makes that read once, which proves the agent answers, has a leader
//! and accepts the token (the token needs `key:read` on the probe key). A recursive
//! listing answers with the prefix's own index, so a listing is pinned to
//! `max(prefix index, current revision read just before)` (see `snapshot`). The cluster id
//! is `<datacenter>:<uuid>`, the uuid from the Connect CA's trust domain
//! (`<uuid>.consul`, generated when the cluster is bootstrapped); with Connect disabled it
//! is the datacenter alone.
//!
//! # No history: baselines
//!
//! Consul keeps only the current state (`keeps_history` is false). Exact deltas come from
//! a baseline per prefix: the key -> `ModifyIndex` set of the latest listing and the
//! revisions at which it provably holds (see `baseline`). `snapshot` sets it, watches and
//! `changes_between` advance it. A `snapshot(at)`, `changes_between(after)` or
//! `watch(from)` at a revision the baseline does not cover is `Compacted` /
//! `ResyncNeeded(Compacted)`: the engine then runs a full pass against its Git base, which
//! costs what a Consul listing costs anyway. A fresh process has no baseline, so its first
//! export of an area is such a pass.
//!
//! # Cost model
//!
//! A blocking query on a prefix returns the whole prefix, so every change under an area
//! costs one listing of that area (plus one small read of the current index). Keep areas
//! small on Consul, or raise `batch_window` so one listing covers many changes; listings
//! are at least 100 ms apart. A prefix that starts with '/' or holds "//" cannot be put in
//! a URL path as is (Go's router redirects it to another key), so it is listed through its
//! nearest safe ancestor and filtered: for a leading '/', the whole KV store. Use prefixes
//! without a leading '/' on Consul, as Consul's own tools do.
//!
//! # Writes
//!
//! One `/v1/txn` per `write`, at most `max_txn_ops` ops and ~366 KiB of keys and values
//! (see `txn` for the arithmetic against Consul's 512 KiB request limit). Deletes are
//! exact keys, never `delete-tree`. Keys must be UTF-8 (`check_key`).

pub mod acl;
mod backend;
mod baseline;
mod config;
mod errors;
mod http;
mod keys;
mod listing;
mod session;
mod snapshot;
mod tls;
mod txn;
mod watch;

pub use backend::ConsulBackend;
pub use config::{ConnectError, ConsulConfig, Secret};
pub use config::{
    ENV_ADDR, ENV_CACERT, ENV_CLIENT_CERT, ENV_CLIENT_KEY, ENV_SSL, ENV_TLS_SERVER_NAME, ENV_TOKEN,
    ENV_TOKEN_FILE,
};
/// The write limits for `max_txn_ops` operations per transaction, known without connecting
/// (`kvgit validate` checks value sizes offline).
pub use txn::limits as write_limits;
pub use txn::TXN_MAX_REQ_LEN;

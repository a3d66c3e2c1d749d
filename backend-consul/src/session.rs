//! Ownership on Consul: a lease is a session (TTL only, behavior "delete", no lock delay), a
//! claim is a key the session acquired; its epoch is the key's `ModifyIndex` at acquire.
//!
//! Why the epoch holds: acquiring writes the key, so its `ModifyIndex` is the acquire's Raft
//! index, above every earlier write; kvgit never rewrites a held claim, so the index stays
//! while it is held, and a new acquire after expiry or release writes a larger one.

use crate::backend::Conn;
use crate::errors::{other, quote, refused, KIND};
use crate::http::Query;
use crate::keys;
use crate::listing::for_each_entry;
use crate::txn::{self, Answer, KvOp, Rollback};
use bytes::Bytes;
use serde::Deserialize;
use std::time::Duration;
use sync_core::{BackendError, Claim, Epoch, Key, Lease, LeaseId, Renewal};

/// Consul's bounds on a session TTL.
const TTL_MIN: Duration = Duration::from_secs(10);
const TTL_MAX: Duration = Duration::from_secs(86_400);

/// The TTL Consul will apply: whole seconds, rounded up, within 10s..=24h.
pub(crate) fn session_ttl(ttl: Duration) -> Duration {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    Duration::from_secs(secs).clamp(TTL_MIN, TTL_MAX)
}

#[derive(Deserialize)]
struct Created {
    #[serde(rename = "ID")]
    id: String,
}

#[derive(Deserialize)]
struct SessionInfo {
    #[serde(rename = "TTL", default)]
    ttl: String,
}

pub(crate) async fn grant(conn: &Conn, name: &str, ttl: Duration) -> Result<Lease, BackendError> {
    let applied = session_ttl(ttl);
    // No health checks: the session lives exactly as long as it is renewed. By default
    // Consul ties it to the agent's serfHealth too, so every kvgit node talking to one agent
    // would lose its claims together when that agent restarts. "Checks" for Consul < 1.7.
    let body = serde_json::json!({
        "Name": name,
        "TTL": format!("{}s", applied.as_secs()),
        "Behavior": "delete",
        "LockDelay": "0s",
        "NodeChecks": [],
        "Checks": [],
    });
    let uri = conn.http.uri("/v1/session/create", Query::new());
    let resp = conn
        .http
        .put("session create", uri, Some(Bytes::from(body.to_string())))
        .await?;
    if resp.status.as_u16() != 200 {
        return Err(conn
            .http
            .ctx
            .status("session create", resp.status, &resp.body));
    }
    let created: Created = serde_json::from_slice(&resp.body).map_err(|e| {
        other(format!(
            "session create: unreadable answer ({e}): {}",
            quote(&resp.body)
        ))
    })?;
    conn.remember_lease(&created.id, applied);
    Ok(Lease {
        id: LeaseId(created.id),
        ttl: applied,
    })
}

pub(crate) async fn renew(conn: &Conn, lease: &LeaseId) -> Result<Renewal, BackendError> {
    let uri = conn.http.uri(
        &format!("/v1/session/renew/{}", keys::path(&lease.0)),
        Query::new(),
    );
    let resp = conn.http.put("session renew", uri, None).await?;
    match resp.status.as_u16() {
        200 => {}
        // "Session id '…' not found": expired, destroyed, or never existed.
        404 => {
            conn.forget_lease(&lease.0);
            return Ok(Renewal::Gone);
        }
        _ => {
            return Err(conn
                .http
                .ctx
                .status("session renew", resp.status, &resp.body))
        }
    }
    let infos: Vec<SessionInfo> = serde_json::from_slice(&resp.body).unwrap_or_default();
    let Some(info) = infos.first() else {
        // A renewal answered with nothing renewed: the session is gone.
        conn.forget_lease(&lease.0);
        return Ok(Renewal::Gone);
    };
    let ttl = parse_go_duration(&info.ttl)
        .filter(|t| !t.is_zero())
        .or_else(|| conn.granted_ttl(&lease.0))
        .unwrap_or(TTL_MIN);
    Ok(Renewal::Alive { ttl })
}

pub(crate) async fn revoke(conn: &Conn, lease: &LeaseId) -> Result<(), BackendError> {
    let uri = conn.http.uri(
        &format!("/v1/session/destroy/{}", keys::path(&lease.0)),
        Query::new(),
    );
    let resp = conn.http.put("session destroy", uri, None).await?;
    match resp.status.as_u16() {
        // Consul answers `true` for unknown sessions too; 404 is fine as well.
        200 | 404 => {
            conn.forget_lease(&lease.0);
            Ok(())
        }
        _ => Err(conn
            .http
            .ctx
            .status("session destroy", resp.status, &resp.body)),
    }
}

/// One KV entry with its lock holder.
struct Held {
    key: String,
    value: Vec<u8>,
    session: Option<String>,
    modify_index: u64,
}

/// Every entry under `prefix` (raw values), read with one recursive listing through a
/// path-safe ancestor, so any UTF-8 key works.
async fn list_held(conn: &Conn, prefix: &str) -> Result<Vec<Held>, BackendError> {
    let listed = keys::listable_prefix(prefix);
    let uri = conn.http.uri(
        &format!("/v1/kv/{}", keys::path(listed)),
        Query::new().flag("recurse"),
    );
    let resp = conn.http.get("list claims", uri).await?;
    match resp.status.as_u16() {
        200 => {}
        404 => return Ok(Vec::new()),
        _ => return Err(conn.http.ctx.status("list claims", resp.status, &resp.body)),
    }
    let mut out = Vec::new();
    for_each_entry(&resp.body, |e| {
        if e.key.starts_with(prefix) {
            out.push(Held {
                value: e.decode_value()?,
                key: e.key.into_owned(),
                session: e.session.filter(|s| !s.is_empty()).map(|s| s.into_owned()),
                modify_index: e.modify_index,
            });
        }
        Ok(())
    })?;
    Ok(out)
}

async fn read_held(conn: &Conn, key: &str) -> Result<Option<Held>, BackendError> {
    Ok(list_held(conn, key)
        .await?
        .into_iter()
        .find(|h| h.key == key))
}

pub(crate) async fn claim(
    conn: &Conn,
    key: &Key,
    value: &[u8],
    lease: &LeaseId,
) -> Result<Option<Epoch>, BackendError> {
    let key = keys::utf8(key)?;
    match read_held(conn, key).await? {
        Some(h) if h.session.as_deref() == Some(lease.0.as_str()) => {
            return Ok(Some(Epoch(h.modify_index)))
        }
        Some(h) if h.session.is_some() => return Ok(None),
        _ => {}
    }
    if keys::path_safe(key) {
        acquire_by_put(conn, key, value, lease).await
    } else {
        acquire_by_txn(conn, key, value, lease).await
    }
}

/// `PUT /v1/kv/<key>?acquire=<session>` through rs-consul, then the key read back for its
/// `ModifyIndex` (the PUT answers only true/false).
async fn acquire_by_put(
    conn: &Conn,
    key: &str,
    value: &[u8],
    lease: &LeaseId,
) -> Result<Option<Epoch>, BackendError> {
    let path = keys::path(key);
    let session = keys::query(&lease.0);
    let req = rs_consul::CreateOrUpdateKeyRequest {
        key: &path,
        datacenter: conn.http.datacenter.as_deref().unwrap_or(""),
        acquire: &session,
        ..Default::default()
    };
    let timeout = conn.http.request_timeout;
    let acquired = match tokio::time::timeout(
        timeout,
        conn.consul.create_or_update_key(req, value.to_vec()),
    )
    .await
    {
        Err(_) => {
            return Err(conn
                .http
                .ctx
                .unavailable(format!("acquire {key}: no answer within {timeout:?}")))
        }
        Ok(Ok((acquired, _index))) => acquired,
        Ok(Err(e)) => return Err(map_rs_consul(conn, key, lease, e)),
    };
    if !acquired {
        // Held by another session, or the key is in its lock delay.
        return Ok(None);
    }
    Ok(read_held(conn, key)
        .await?
        .filter(|h| h.session.as_deref() == Some(lease.0.as_str()))
        .map(|h| Epoch(h.modify_index)))
}

/// The `lock` verb of `/v1/txn`: keys in JSON, so keys Go would redirect work too; the
/// result carries the `ModifyIndex` directly.
async fn acquire_by_txn(
    conn: &Conn,
    key: &str,
    value: &[u8],
    lease: &LeaseId,
) -> Result<Option<Epoch>, BackendError> {
    let ops = [KvOp::new("lock", key).value(value).session(&lease.0).op()];
    match txn::send(conn, &ops, key.len() + value.len()).await? {
        Answer::Committed(results) => Ok(results.first().map(|r| Epoch(r.modify_index))),
        Answer::RolledBack(errors) => match txn::classify(&errors) {
            Rollback::Precondition => Ok(None),
            Rollback::PermissionDenied(detail) => Err(BackendError::PermissionDenied {
                backend: KIND,
                detail: format!(
                    "claim {key}: {detail} (credential: {})",
                    conn.http.ctx.credential
                ),
            }),
            Rollback::Refused(detail) => {
                Err(refused(format!("claim {key} for lease {lease}: {detail}")))
            }
        },
    }
}

fn map_rs_consul(
    conn: &Conn,
    key: &str,
    lease: &LeaseId,
    err: rs_consul::ConsulError,
) -> BackendError {
    use rs_consul::ConsulError as E;
    let what = format!("acquire {key}");
    match err {
        E::UnexpectedResponseCode(status, body) => {
            let body = body.unwrap_or_default();
            // Consul answers an acquire with an expired or unknown session with a 500.
            if body.to_ascii_lowercase().contains("invalid session") {
                return refused(format!(
                    "{what}: lease {lease} is not a live session: {}",
                    body.trim()
                ));
            }
            conn.http.ctx.status(&what, status, body.as_bytes())
        }
        E::ResponseError(e) => conn
            .http
            .ctx
            .unavailable(format!("{what}: {}", crate::errors::chain(&e))),
        E::InvalidResponse(e) => conn.http.ctx.unavailable(format!("{what}: {e}")),
        E::TimeoutExceeded(d) => conn
            .http
            .ctx
            .unavailable(format!("{what}: no answer within {d:?}")),
        other_err => other(format!("{what}: {other_err}")),
    }
}

pub(crate) async fn release(conn: &Conn, key: &Key, lease: &LeaseId) -> Result<(), BackendError> {
    let key = keys::utf8(key)?;
    // Atomic: only a key this session holds is deleted; otherwise the check fails and
    // nothing happens.
    let ops = [
        KvOp::new("check-session", key).session(&lease.0).op(),
        KvOp::new("delete", key).op(),
    ];
    match txn::send(conn, &ops, key.len()).await? {
        Answer::Committed(_) => Ok(()),
        Answer::RolledBack(errors) => match txn::classify(&errors) {
            Rollback::Precondition | Rollback::Refused(_) => Ok(()),
            Rollback::PermissionDenied(detail) => Err(BackendError::PermissionDenied {
                backend: KIND,
                detail: format!(
                    "release {key}: {detail} (credential: {})",
                    conn.http.ctx.credential
                ),
            }),
        },
    }
}

pub(crate) async fn claims(conn: &Conn, prefix: &[u8]) -> Result<Vec<Claim>, BackendError> {
    let Ok(prefix) = std::str::from_utf8(prefix) else {
        return Err(refused(format!(
            "claims under {}: Consul keys are UTF-8",
            Key(prefix.to_vec())
        )));
    };
    let mut out: Vec<Claim> = list_held(conn, prefix)
        .await?
        .into_iter()
        .filter_map(|h| {
            Some(Claim {
                lease: LeaseId(h.session?),
                key: Key(h.key.into_bytes()),
                value: h.value,
                epoch: Epoch(h.modify_index),
            })
        })
        .collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// Go's `time.Duration` text ("15s", "1m30s", "1.5s", "500ms"), as Consul echoes TTLs.
pub(crate) fn parse_go_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let (unit, len) = [
            ("ns", 1e-9),
            ("us", 1e-6),
            ("\u{b5}s", 1e-6),
            ("ms", 1e-3),
            ("s", 1.0),
            ("m", 60.0),
            ("h", 3600.0),
        ]
        .iter()
        .find(|(u, _)| rest.starts_with(u))
        .map(|(u, f)| (*f, u.len()))?;
        total += number * unit;
        rest = &rest[len..];
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_into_consuls_bounds() {
        assert_eq!(session_ttl(Duration::from_secs(1)), Duration::from_secs(10));
        assert_eq!(
            session_ttl(Duration::from_millis(15_001)),
            Duration::from_secs(16)
        );
        assert_eq!(
            session_ttl(Duration::from_secs(30)),
            Duration::from_secs(30)
        );
        assert_eq!(
            session_ttl(Duration::from_secs(100_000)),
            Duration::from_secs(86_400)
        );
    }

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_go_duration("15s"), Some(Duration::from_secs(15)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1h0m0s"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration(""), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("ten"), None);
        assert_eq!(parse_go_duration("10x"), None);
    }
}

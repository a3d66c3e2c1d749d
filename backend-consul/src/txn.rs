//! `write`: kvgit's write ops as one `/v1/txn`; preconditions become Consul's check-and-set
//! verbs, deletes name exact keys (never `delete-tree`), refused before sending when too big.
//!
//! Limits: Consul refuses a transaction of more than 64 operations (128 from 1.14) and a
//! request body over `txn_max_req_len`, 512 KiB by default. Values travel base64 (4/3 of
//! their size) inside per-op JSON framing of at most ~90 bytes (`{"KV":{"Verb":"cas",
//! "Key":…,"Value":…,"Index":<20 digits>}},`). With 128 bytes of framing budgeted per op and
//! 16 KiB of headroom, `max_bytes = (512 KiB − ops × 128 − 16 KiB) × 3/4`: 374,784 bytes of
//! keys and values for 64 ops (a full request is then at most ~508 KiB), 368,640 for 128.
//! Keys needing JSON escapes grow further, so the encoded body is measured before sending.
//!
//! A single op written alone is bound by the same request limit, not by `kv_max_value_size`
//! (also 512 KiB, but of the decoded value: base64 makes the request limit bind first). Its
//! limit is the same formula for one op: `(512 KiB − 128 − 16 KiB) × 3/4` = 380,832 bytes of
//! key and value (a body of at most ~508 KiB). A value bigger than that cannot be written
//! through `/v1/txn` at all, so kvgit cannot restore it.

use crate::backend::Conn;
use crate::errors::{other, quote, refused, KIND};
use crate::http::Query;
use crate::keys;
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sync_core::{BackendError, Key, Precondition, Revision, TxnOutcome, WriteLimits, WriteOp};

/// Consul's default `txn_max_req_len` (and `kv_max_value_size`): 512 KiB.
pub const TXN_MAX_REQ_LEN: usize = 512 * 1024;
/// JSON framing budgeted per operation (the longest is ~90 bytes).
const OP_FRAMING: usize = 128;
/// Left free below `TXN_MAX_REQ_LEN`.
const HEADROOM: usize = 16 * 1024;

/// The limits `write` enforces for `max_ops` operations per transaction: the batch budget
/// for `max_ops` ops, the single-op limit for one.
pub fn limits(max_ops: usize) -> WriteLimits {
    WriteLimits {
        max_ops,
        max_bytes: payload_budget(max_ops),
        max_value_bytes: payload_budget(1),
    }
}

/// Bytes of keys and values that `ops` operations may carry under `TXN_MAX_REQ_LEN`.
fn payload_budget(ops: usize) -> usize {
    let budget = TXN_MAX_REQ_LEN
        .saturating_sub(ops.saturating_mul(OP_FRAMING))
        .saturating_sub(HEADROOM);
    budget / 4 * 3
}

/// One KV operation of `/v1/txn`.
#[derive(Debug, Serialize)]
pub(crate) struct TxnOp<'a> {
    #[serde(rename = "KV")]
    pub kv: KvOp<'a>,
}

#[derive(Debug, Serialize)]
pub(crate) struct KvOp<'a> {
    #[serde(rename = "Verb")]
    pub verb: &'static str,
    #[serde(rename = "Key")]
    pub key: &'a str,
    #[serde(rename = "Value", skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(rename = "Index", skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    #[serde(rename = "Session", skip_serializing_if = "Option::is_none")]
    pub session: Option<&'a str>,
}

impl<'a> KvOp<'a> {
    pub fn new(verb: &'static str, key: &'a str) -> KvOp<'a> {
        KvOp {
            verb,
            key,
            value: None,
            index: None,
            session: None,
        }
    }

    pub fn value(mut self, v: &[u8]) -> KvOp<'a> {
        self.value = Some(base64::engine::general_purpose::STANDARD.encode(v));
        self
    }

    pub fn index(mut self, i: u64) -> KvOp<'a> {
        self.index = Some(i);
        self
    }

    pub fn session(mut self, s: &'a str) -> KvOp<'a> {
        self.session = Some(s);
        self
    }

    pub fn op(self) -> TxnOp<'a> {
        TxnOp { kv: self }
    }
}

/// A KV result of a committed transaction (Consul returns none for deletes and checks).
#[derive(Debug, Deserialize)]
pub(crate) struct ResultKv {
    #[serde(rename = "ModifyIndex")]
    pub modify_index: u64,
}

#[derive(Debug, Deserialize)]
struct ResultItem {
    #[serde(rename = "KV", default)]
    kv: Option<ResultKv>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct TxnError {
    #[serde(rename = "OpIndex", default)]
    pub op_index: usize,
    #[serde(rename = "What", default)]
    pub what: String,
}

#[derive(Debug, Deserialize)]
struct TxnBody {
    #[serde(rename = "Results", default)]
    results: Option<Vec<ResultItem>>,
    #[serde(rename = "Errors", default)]
    errors: Option<Vec<TxnError>>,
}

/// What Consul did with a transaction.
#[derive(Debug)]
pub(crate) enum Answer {
    Committed(Vec<ResultKv>),
    /// Rolled back (409): a check failed, or an op was not allowed.
    RolledBack(Vec<TxnError>),
}

/// Why a rolled-back transaction failed, from Consul's per-op messages.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Rollback {
    /// A check-and-set, check or lock did not hold: someone else wrote first.
    Precondition,
    PermissionDenied(String),
    /// An op Consul cannot apply (bad key, invalid session, unknown verb).
    Refused(String),
}

pub(crate) fn classify(errors: &[TxnError]) -> Rollback {
    let detail = || {
        errors
            .iter()
            .map(|e| format!("op {}: {}", e.op_index, e.what))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let has = |needles: &[&str]| {
        errors.iter().any(|e| {
            let what = e.what.to_ascii_lowercase();
            needles.iter().any(|n| what.contains(n))
        })
    };
    if has(&["permission denied", "acl not found"]) {
        Rollback::PermissionDenied(detail())
    } else if has(&[
        "invalid session",
        "unknown kv verb",
        "must provide key",
        "invalid key",
        "too large",
    ]) {
        Rollback::Refused(detail())
    } else {
        Rollback::Precondition
    }
}

/// Sends one transaction. `payload` and `ops_len` only size the `TooLarge` error.
pub(crate) async fn send(
    conn: &Conn,
    ops: &[TxnOp<'_>],
    payload: usize,
) -> Result<Answer, BackendError> {
    let body = serde_json::to_vec(ops).map_err(|e| other(format!("txn: encoding: {e}")))?;
    if body.len() > TXN_MAX_REQ_LEN {
        // Only keys full of JSON escapes get here past `check_limits`.
        return Err(BackendError::TooLarge {
            backend: KIND,
            ops: ops.len(),
            bytes: body.len(),
            max_ops: conn.limits.max_ops,
            max_bytes: TXN_MAX_REQ_LEN,
        });
    }
    let uri = conn.http.uri("/v1/txn", Query::new());
    let resp = conn.http.put("txn", uri, Some(Bytes::from(body))).await?;
    match resp.status.as_u16() {
        200 | 409 => {
            let parsed: TxnBody = serde_json::from_slice(&resp.body).map_err(|e| {
                other(format!(
                    "txn: unreadable answer ({e}): {}",
                    quote(&resp.body)
                ))
            })?;
            if resp.status.as_u16() == 409 {
                return Ok(Answer::RolledBack(parsed.errors.unwrap_or_default()));
            }
            Ok(Answer::Committed(
                parsed
                    .results
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|r| r.kv)
                    .collect(),
            ))
        }
        413 => {
            tracing::warn!(
                backend = KIND,
                answer = %quote(&resp.body),
                "Consul refused a transaction as too large; is max_txn_ops above the server's limit?"
            );
            Err(BackendError::TooLarge {
                backend: KIND,
                ops: ops.len(),
                bytes: payload,
                max_ops: conn.limits.max_ops,
                max_bytes: conn.limits.max_bytes,
            })
        }
        _ => Err(conn.http.ctx.status("txn", resp.status, &resp.body)),
    }
}

/// See `KvBackend::write`.
pub(crate) async fn write(conn: &Conn, ops: &[WriteOp]) -> Result<TxnOutcome, BackendError> {
    let keys: Vec<&str> = ops
        .iter()
        .map(|op| keys::utf8(op.key()))
        .collect::<Result<_, _>>()?;
    check_limits(ops, conn.limits)?;
    if ops.is_empty() {
        return Ok(TxnOutcome::Committed {
            revision: conn.current_revision().await?,
        });
    }
    let txn = build(ops, &keys);
    let payload = ops.iter().map(WriteOp::payload_len).sum();
    match send(conn, &txn, payload).await? {
        Answer::Committed(results) => {
            // Every op of a transaction is applied at one Raft index, which the results of
            // writes carry. A transaction of deletes returns no result: the current index
            // read right after is then the first revision known to include it.
            let revision = match results.iter().map(|r| r.modify_index).max() {
                Some(i) => Revision(i),
                None => conn.current_revision().await?,
            };
            Ok(TxnOutcome::Committed { revision })
        }
        Answer::RolledBack(errors) => match classify(&errors) {
            Rollback::Precondition => Ok(TxnOutcome::PreconditionFailed),
            Rollback::PermissionDenied(detail) => Err(BackendError::PermissionDenied {
                backend: KIND,
                detail: format!("txn: {detail} (credential: {})", conn.http.ctx.credential),
            }),
            Rollback::Refused(detail) => Err(refused(format!("txn: {detail}"))),
        },
    }
}

/// An index no key reaches, so a `check-index` against it always fails.
const NEVER_INDEX: u64 = 1 << 62;

/// See `KvBackend::probe_write`: per batch of keys, one `/v1/txn` of a `check-index` that
/// cannot hold followed by a `set` (empty value) of each key. Consul checks the ACL of every
/// op on the leader before Raft (`Txn.preCheck` → `kvsPreApply`: `set` and `delete` both
/// need `key:write`), answering 409 with a "Permission denied" error per refused op;
/// when all are allowed, the state store runs the ops in one memdb transaction that the
/// failed check aborts, so no key, modify index or blocking query moves.
pub(crate) async fn probe(conn: &Conn, keys: &[Key]) -> Result<(), BackendError> {
    let names: Vec<&str> = keys.iter().map(keys::utf8).collect::<Result<_, _>>()?;
    // One op of each transaction is the check; keys only (empty values) keep far below the
    // request limit, which `send` checks anyway.
    let per_txn = conn.limits.max_ops.saturating_sub(1).max(1);
    for batch in names.chunks(per_txn) {
        let mut ops = vec![KvOp::new("check-index", batch[0]).index(NEVER_INDEX).op()];
        ops.extend(batch.iter().map(|k| KvOp::new("set", k).value(&[]).op()));
        let payload = batch.iter().map(|k| k.len()).sum();
        match send(conn, &ops, payload).await? {
            Answer::Committed(_) => {
                return Err(other(format!(
                    "txn: the write probe of key {} was applied",
                    batch[0]
                )))
            }
            Answer::RolledBack(errors) => match classify(&errors) {
                Rollback::Precondition => {}
                Rollback::PermissionDenied(detail) => {
                    // Op 0 is the check: op i probes key i - 1.
                    let denied = errors.iter().find(|e| {
                        let what = e.what.to_ascii_lowercase();
                        what.contains("permission denied") || what.contains("acl not found")
                    });
                    let key = denied
                        .and_then(|e| e.op_index.checked_sub(1))
                        .and_then(|i| batch.get(i));
                    let detail = match (key, denied) {
                        (Some(key), Some(e)) => format!("write of key {key}: {}", e.what),
                        _ => format!("txn: {detail}"),
                    };
                    return Err(BackendError::PermissionDenied {
                        backend: KIND,
                        detail: format!("{detail} (credential: {})", conn.http.ctx.credential),
                    });
                }
                Rollback::Refused(detail) => return Err(refused(format!("txn: {detail}"))),
            },
        }
    }
    Ok(())
}

/// Refuses what the backend would refuse, before anything is sent.
pub(crate) fn check_limits(ops: &[WriteOp], limits: WriteLimits) -> Result<(), BackendError> {
    limits.check(KIND, ops)
}

/// One Consul op per write op:
/// - put: `set`; `cas` with index 0 when the key must be absent, with the expected
///   `ModifyIndex` otherwise (fails on a missing key, as etcd's compare does).
/// - delete: `delete`; `check-not-exists` when it must be absent (nothing to delete then);
///   `delete-cas` with the expected index. Consul's `delete-cas` succeeds on a key that is
///   already gone, where etcd's compare fails: the outcome, no key, is the one asked for.
pub(crate) fn build<'a>(ops: &'a [WriteOp], keys: &[&'a str]) -> Vec<TxnOp<'a>> {
    ops.iter()
        .zip(keys)
        .map(|(op, key)| match op {
            WriteOp::Put { value, expect, .. } => match expect {
                Precondition::Any => KvOp::new("set", key).value(value),
                // No range check in a Consul txn: each key of a run alone.
                Precondition::Absent | Precondition::AbsentInRun => {
                    KvOp::new("cas", key).value(value).index(0)
                }
                Precondition::ModRevision(r) => KvOp::new("cas", key).value(value).index(r.0),
            },
            WriteOp::Delete { expect, .. } => match expect {
                Precondition::Any => KvOp::new("delete", key),
                Precondition::Absent | Precondition::AbsentInRun => {
                    KvOp::new("check-not-exists", key)
                }
                Precondition::ModRevision(r) => KvOp::new("delete-cas", key).index(r.0),
            },
        })
        .map(KvOp::op)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_core::Key;

    fn put(k: &str, len: usize) -> WriteOp {
        WriteOp::Put {
            key: Key::from(k),
            value: vec![b'x'; len],
            expect: Precondition::Any,
        }
    }

    #[test]
    fn limits_keep_the_encoded_request_under_consuls_maximum() {
        let l = limits(64);
        assert_eq!(l.max_ops, 64);
        assert_eq!(l.max_bytes, 374_784);
        assert_eq!(limits(128).max_bytes, 368_640);
        assert_eq!(l.max_value_bytes, 380_832);
        // The worst case the limits allow: 64 ops of 1-byte keys and values filling
        // max_bytes, every op with the longest verb and a 20-digit index.
        let each = l.max_bytes / 64 - 1;
        let ops: Vec<WriteOp> = (0..64)
            .map(|i| WriteOp::Put {
                key: Key::from(format!("{}", i % 10).as_str()),
                value: vec![0xff; each],
                expect: Precondition::ModRevision(Revision(u64::MAX)),
            })
            .collect();
        check_limits(&ops, l).expect("within limits");
        let keys: Vec<&str> = ops.iter().map(|o| keys::utf8(o.key()).unwrap()).collect();
        let body = serde_json::to_vec(&build(&ops, &keys)).unwrap();
        assert!(
            body.len() < TXN_MAX_REQ_LEN - 8 * 1024,
            "{} bytes",
            body.len()
        );
        // The largest op written alone.
        let alone = [WriteOp::Put {
            key: Key::from("k"),
            value: vec![0xff; l.max_value_bytes - 1],
            expect: Precondition::ModRevision(Revision(u64::MAX)),
        }];
        check_limits(&alone, l).expect("within the single-op limit");
        let body = serde_json::to_vec(&build(&alone, &["k"])).unwrap();
        assert!(
            body.len() < TXN_MAX_REQ_LEN - 8 * 1024,
            "{} bytes",
            body.len()
        );
    }

    #[test]
    fn limits_are_checked_before_sending() {
        let l = limits(64);
        let ok: Vec<_> = (0..64).map(|i| put(&format!("k{i}"), 1)).collect();
        assert!(check_limits(&ok, l).is_ok());
        let too_many: Vec<_> = (0..65).map(|i| put(&format!("k{i}"), 1)).collect();
        assert!(matches!(
            check_limits(&too_many, l),
            Err(BackendError::TooLarge { ops: 65, .. })
        ));
        assert!(matches!(
            check_limits(&[put("k", l.max_value_bytes)], l),
            Err(BackendError::TooLarge { .. })
        ));
    }

    #[test]
    fn preconditions_become_consul_verbs() {
        let ops = [
            WriteOp::Put {
                key: Key::from("a"),
                value: vec![0xff, 0],
                expect: Precondition::Absent,
            },
            WriteOp::Put {
                key: Key::from("b"),
                value: vec![],
                expect: Precondition::ModRevision(Revision(7)),
            },
            put("c", 1),
            WriteOp::Delete {
                key: Key::from("d"),
                expect: Precondition::ModRevision(Revision(9)),
            },
            WriteOp::Delete {
                key: Key::from("e"),
                expect: Precondition::Any,
            },
            WriteOp::Delete {
                key: Key::from("f"),
                expect: Precondition::Absent,
            },
        ];
        let keys = ["a", "b", "c", "d", "e", "f"];
        let json = serde_json::to_value(build(&ops, &keys)).unwrap();
        let expected = serde_json::json!([
            {"KV": {"Verb": "cas", "Key": "a", "Value": "/wA=", "Index": 0}},
            {"KV": {"Verb": "cas", "Key": "b", "Value": "", "Index": 7}},
            {"KV": {"Verb": "set", "Key": "c", "Value": "eA=="}},
            {"KV": {"Verb": "delete-cas", "Key": "d", "Index": 9}},
            {"KV": {"Verb": "delete", "Key": "e"}},
            {"KV": {"Verb": "check-not-exists", "Key": "f"}},
        ]);
        assert_eq!(json, expected);
    }

    #[test]
    fn rollbacks_are_classified_by_consuls_messages() {
        let e = |what: &str| {
            vec![TxnError {
                op_index: 0,
                what: what.into(),
            }]
        };
        assert_eq!(
            classify(&e("failed to set key \"a\", index is stale")),
            Rollback::Precondition
        );
        assert_eq!(classify(&e("key \"a\" exists")), Rollback::Precondition);
        assert_eq!(
            classify(&e("current modify index 5 != 4")),
            Rollback::Precondition
        );
        assert!(matches!(
            classify(&e("Permission denied: token lacks 'key:write'")),
            Rollback::PermissionDenied(_)
        ));
        assert!(matches!(
            classify(&e("invalid session \"x\"")),
            Rollback::Refused(_)
        ));
    }
}

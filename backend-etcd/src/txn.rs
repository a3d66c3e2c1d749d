//! `write`: kvgit's write ops as one etcd transaction; compares from the preconditions, puts
//! and single-key deletes (never a range), refused before sending when over the limits.

use crate::backend::Conn;
use crate::errors::{missing_header, rev, wire_rev, KIND};
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use sync_core::{BackendError, Key, Precondition, TxnOutcome, WriteLimits, WriteOp};

pub(crate) async fn write(
    conn: &Conn,
    ops: &[WriteOp],
    limits: WriteLimits,
) -> Result<TxnOutcome, BackendError> {
    check_limits(ops, limits)?;
    let txn = build(ops)?;
    let mut kv = conn.kv.clone();
    let resp = conn.ctx.call("txn", kv.txn(txn)).await?;
    if !resp.succeeded() {
        return Ok(TxnOutcome::PreconditionFailed);
    }
    let header = resp.header().ok_or_else(|| missing_header("txn"))?;
    Ok(TxnOutcome::Committed {
        revision: rev(header.revision()),
    })
}

/// See `KvBackend::probe_write`: per batch of keys, one txn whose compare can never hold
/// (`version < 0`) with a put of each key in the success branch and an empty failure
/// branch. etcd checks the permission of every compare and op of both branches before it
/// evaluates the compare (`authApplierV3.Txn` → `checkTxnAuth`, etcd 3.4
/// `etcdserver/apply_auth.go`), so a refused key fails the txn with permission denied;
/// otherwise the failure branch runs, which is empty: no key, revision or watch changes.
/// etcd's write permission covers put and delete alike, so a put probes both; the compare
/// needs read on the batch's first key, which kvgit needs anyway to plan. A batch is
/// refused as a whole, so a refused batch is probed key by key to name the refused key.
pub(crate) async fn probe(
    conn: &Conn,
    keys: &[Key],
    limits: WriteLimits,
) -> Result<(), BackendError> {
    let mut start = 0;
    while start < keys.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < keys.len()
            && end - start < limits.max_ops
            && (end == start || bytes + keys[end].0.len() <= limits.max_bytes)
        {
            bytes += keys[end].0.len();
            end += 1;
        }
        let batch = &keys[start..end];
        match probe_txn(conn, batch).await {
            Err(denied @ BackendError::PermissionDenied { .. }) if batch.len() > 1 => {
                for key in batch {
                    probe_txn(conn, std::slice::from_ref(key)).await?;
                }
                // Each key alone passed (permissions changed meanwhile?): still refused.
                return Err(denied);
            }
            other => other?,
        }
        start = end;
    }
    Ok(())
}

async fn probe_txn(conn: &Conn, keys: &[Key]) -> Result<(), BackendError> {
    let Some(first) = keys.first() else {
        return Ok(());
    };
    let never = Compare::version(first.0.clone(), CompareOp::Less, 0);
    let puts = keys
        .iter()
        .map(|k| TxnOp::put(k.0.clone(), Vec::new(), None))
        .collect::<Vec<_>>();
    let txn = Txn::new().when([never]).and_then(puts);
    let mut kv = conn.kv.clone();
    let resp = conn.ctx.call("txn", kv.txn(txn)).await;
    let resp = resp.map_err(|e| {
        conn.denied(e, || match keys {
            [one] => format!("key {one}"),
            _ => format!("one of {} keys from {first}", keys.len()),
        })
    })?;
    if resp.succeeded() {
        // Cannot happen (no version is below 0); were it to, the empty puts were written.
        return Err(BackendError::Other {
            backend: KIND,
            detail: format!("the write probe of key {first} was applied"),
        });
    }
    Ok(())
}

/// Refuses what the backend would refuse, before anything is sent.
pub(crate) fn check_limits(ops: &[WriteOp], limits: WriteLimits) -> Result<(), BackendError> {
    limits.check(KIND, ops)
}

pub(crate) fn build(ops: &[WriteOp]) -> Result<Txn, BackendError> {
    let mut compares = Vec::new();
    let mut actions = Vec::with_capacity(ops.len());
    // A run of new keys with nothing between them becomes one range compare: etcd checks a
    // compare per key otherwise, which at 128 keys a txn was a tenth of an apply's time.
    let mut run: Option<AbsentRun> = None;
    for op in ops {
        let (key, expect) = match op {
            WriteOp::Put { key, value, expect } => {
                actions.push(TxnOp::put(key.0.clone(), value.clone(), None));
                (key, expect)
            }
            WriteOp::Delete { key, expect } => {
                // No options: exactly this key, never a range or prefix.
                actions.push(TxnOp::delete(key.0.clone(), None));
                (key, expect)
            }
        };
        match expect {
            Precondition::AbsentInRun if run.as_ref().is_some_and(|r| key.0 > r.last) => {
                if let Some(r) = run.as_mut() {
                    r.last.clone_from(&key.0);
                }
            }
            Precondition::Absent | Precondition::AbsentInRun => {
                compares.extend(run.take().map(AbsentRun::compare));
                run = Some(AbsentRun {
                    first: key.0.clone(),
                    last: key.0.clone(),
                });
            }
            Precondition::Any => compares.extend(run.take().map(AbsentRun::compare)),
            Precondition::ModRevision(r) => {
                compares.extend(run.take().map(AbsentRun::compare));
                compares.push(Compare::mod_revision(
                    key.0.clone(),
                    CompareOp::Equal,
                    wire_rev(*r)?,
                ));
            }
        }
    }
    compares.extend(run.take().map(AbsentRun::compare));
    Ok(Txn::new().when(compares).and_then(actions))
}

/// Keys that must not exist, with no key between them: `[first, last]`.
struct AbsentRun {
    first: Vec<u8>,
    last: Vec<u8>,
}

impl AbsentRun {
    /// "No key in [first, last]": over a range, etcd holds a compare only if it holds for
    /// every key in it, and one with no key in it compares a zero key (create revision 0).
    fn compare(self) -> Compare {
        let single = self.first == self.last;
        let compare = Compare::create_revision(self.first, CompareOp::Equal, 0);
        if single {
            return compare;
        }
        // The smallest key after `last`: the range end is exclusive.
        let mut end = self.last;
        end.push(0);
        compare.with_range(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_core::{Key, Revision};

    const LIMITS: WriteLimits = WriteLimits {
        max_ops: 128,
        max_bytes: 1000,
        max_value_bytes: 2000,
    };

    fn put(k: &str, len: usize) -> WriteOp {
        WriteOp::Put {
            key: Key::from(k),
            value: vec![b'x'; len],
            expect: Precondition::Any,
        }
    }

    #[test]
    fn limits_are_checked_before_sending() {
        let ok: Vec<_> = (0..128).map(|i| put(&format!("k{i}"), 1)).collect();
        assert!(check_limits(&ok, LIMITS).is_ok());
        let too_many: Vec<_> = (0..129).map(|i| put(&format!("k{i}"), 1)).collect();
        assert!(matches!(
            check_limits(&too_many, LIMITS),
            Err(BackendError::TooLarge { ops: 129, .. })
        ));
        assert!(matches!(
            check_limits(&[put("k", 999), put("j", 10)], LIMITS),
            Err(BackendError::TooLarge { .. })
        ));
        // Alone, one op may go past the batch budget up to the single-op limit.
        assert!(check_limits(&[put("k", 1999)], LIMITS).is_ok());
        assert!(matches!(
            check_limits(&[put("k", 2000)], LIMITS),
            Err(BackendError::TooLarge {
                ops: 1,
                bytes: 2001,
                max_bytes: 2000,
                ..
            })
        ));
    }

    #[test]
    fn preconditions_become_compares() {
        let ops = [
            WriteOp::Put {
                key: Key::from("a"),
                value: vec![],
                expect: Precondition::Absent,
            },
            WriteOp::Delete {
                key: Key::from("b"),
                expect: Precondition::ModRevision(Revision(7)),
            },
            WriteOp::Delete {
                key: Key::from("c"),
                expect: Precondition::Any,
            },
        ];
        let req: etcd_client::proto::PbTxnRequest = build(&ops).expect("valid").into();
        assert_eq!(req.compare.len(), 2);
        assert_eq!(req.success.len(), 3);
        assert!(req.failure.is_empty());
    }

    fn new_key(k: &str, expect: Precondition) -> WriteOp {
        WriteOp::Put {
            key: Key::from(k),
            value: vec![],
            expect,
        }
    }

    #[test]
    fn a_run_of_new_keys_is_one_range_compare() {
        let ops = [
            new_key("a/1", Precondition::Absent),
            new_key("a/2", Precondition::AbsentInRun),
            new_key("a/3", Precondition::AbsentInRun),
            // A changed key ends the run; the next run starts again.
            new_key("a/4", Precondition::ModRevision(Revision(3))),
            new_key("a/5", Precondition::AbsentInRun),
            new_key("a/6", Precondition::AbsentInRun),
            // A new key the planner saw a key before: a run of its own.
            new_key("a/8", Precondition::Absent),
        ];
        let req: etcd_client::proto::PbTxnRequest = build(&ops).expect("valid").into();
        let compares: Vec<(String, String)> = req
            .compare
            .iter()
            .map(|c| {
                (
                    String::from_utf8_lossy(&c.key).into_owned(),
                    String::from_utf8_lossy(&c.range_end).into_owned(),
                )
            })
            .collect();
        assert_eq!(
            compares,
            [
                ("a/1".to_string(), "a/3\0".to_string()),
                ("a/4".to_string(), String::new()),
                ("a/5".to_string(), "a/6\0".to_string()),
                ("a/8".to_string(), String::new()),
            ]
        );
        assert_eq!(req.success.len(), 7);
    }

    #[test]
    fn a_run_never_goes_backwards() {
        // Out of key order, `AbsentInRun` cannot widen the range: each key is checked alone.
        let ops = [
            new_key("b", Precondition::Absent),
            new_key("a", Precondition::AbsentInRun),
        ];
        let req: etcd_client::proto::PbTxnRequest = build(&ops).expect("valid").into();
        assert_eq!(req.compare.len(), 2);
        assert!(req.compare.iter().all(|c| c.range_end.is_empty()));
    }
}

//! `/v1/txn` for KV operations: decoding with Consul's limits, the pre-checks Consul makes
//! before Raft, and an all-or-nothing apply at a single index with Consul's error texts.

use super::acl::{Access, Authz};
use super::http::ApiError;
use super::json::{EntryJson, TxnErrorJson, TxnResultJson};
use super::kv::Entry;
use super::session::field;
use super::state::Store;
use super::Config;
use base64::Engine;
use serde_json::Value;
use std::time::Instant;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verb {
    Set,
    Cas,
    Lock,
    Unlock,
    Get,
    GetOrEmpty,
    GetTree,
    CheckIndex,
    CheckSession,
    CheckNotExists,
    Delete,
    DeleteTree,
    DeleteCas,
    /// Rejected when the transaction runs, with Consul's "unknown KV verb" error.
    Unknown(String),
}

impl Verb {
    fn parse(text: &str) -> Verb {
        match text {
            "set" => Verb::Set,
            "cas" => Verb::Cas,
            "lock" => Verb::Lock,
            "unlock" => Verb::Unlock,
            "get" => Verb::Get,
            "get-or-empty" => Verb::GetOrEmpty,
            "get-tree" => Verb::GetTree,
            "check-index" => Verb::CheckIndex,
            "check-session" => Verb::CheckSession,
            "check-not-exists" => Verb::CheckNotExists,
            "delete" => Verb::Delete,
            "delete-tree" => Verb::DeleteTree,
            "delete-cas" => Verb::DeleteCas,
            other => Verb::Unknown(other.to_string()),
        }
    }

    /// Whether the verb goes through Raft (and so takes an index).
    fn is_write(&self) -> bool {
        matches!(
            self,
            Verb::Set
                | Verb::Cas
                | Verb::Lock
                | Verb::Unlock
                | Verb::Delete
                | Verb::DeleteTree
                | Verb::DeleteCas
        )
    }
}

/// One `{"KV": {...}}` operation.
#[derive(Clone, Debug)]
pub(crate) struct KvOp {
    verb: Verb,
    key: String,
    value: Vec<u8>,
    flags: u64,
    index: u64,
    session: String,
}

/// Decodes a request body already known to be within the length limit. Errors are the
/// HTTP answers Consul gives: 400 for what does not decode, 413 for too many operations
/// or a too-large value.
pub(crate) fn decode(body: &[u8], config: &Config) -> Result<Vec<KvOp>, ApiError> {
    let parse_failed = |why: String| ApiError::bad_request(format!("Failed to parse body: {why}"));
    let raw: Vec<Value> = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(ops)) => ops,
        Ok(Value::Null) => Vec::new(),
        Ok(other) => return Err(parse_failed(format!("expected an array, got {other}"))),
        Err(e) => return Err(parse_failed(e.to_string())),
    };
    let mut ops = Vec::with_capacity(raw.len());
    for op in &raw {
        ops.push(decode_op(op).map_err(parse_failed)?);
    }
    if ops.len() > config.max_txn_ops {
        return Err(ApiError::too_large(format!(
            "Transaction contains too many operations ({} > {})",
            ops.len(),
            config.max_txn_ops
        )));
    }
    if let Some(op) = ops
        .iter()
        .find(|op| op.value.len() > config.kv_max_value_size)
    {
        return Err(ApiError::too_large(format!(
            "Value for key {:?} is too large ({} > {} bytes)",
            op.key,
            op.value.len(),
            config.kv_max_value_size
        )));
    }
    Ok(ops)
}

fn decode_op(op: &Value) -> Result<KvOp, String> {
    let Value::Object(op) = op else {
        return Err(format!("expected an operation object, got {op}"));
    };
    let Some(kv) = field(op, "KV") else {
        // Node, Service, Check and Session operations exist in Consul but not here.
        return Err("only KV operations are supported by this implementation".to_string());
    };
    let Value::Object(kv) = kv else {
        return Err(format!("KV: expected an object, got {kv}"));
    };
    let text = |name: &str| -> Result<String, String> {
        match field(kv, name) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(format!("{name}: expected a string, got {other}")),
        }
    };
    let number = |name: &str| -> Result<u64, String> {
        match field(kv, name) {
            None | Some(Value::Null) => Ok(0),
            Some(value) => value
                .as_u64()
                .ok_or_else(|| format!("{name}: expected an unsigned integer, got {value}")),
        }
    };
    let value = base64::engine::general_purpose::STANDARD
        .decode(text("Value")?)
        .map_err(|e| format!("failed to decode value: {e}"))?;
    Ok(KvOp {
        verb: Verb::parse(&text("Verb")?),
        key: text("Key")?,
        value,
        flags: number("Flags")?,
        index: number("Index")?,
        session: text("Session")?,
    })
}

/// Whether any operation writes: a read-only transaction takes no index.
pub(crate) fn writes(ops: &[KvOp]) -> bool {
    ops.iter().any(|op| op.verb.is_write())
}

/// Runs the transaction: every operation sees the effects of those before it, and either
/// all apply at one new index or none does. Like Consul, every failing operation is
/// reported, not just the first.
pub(crate) fn apply(
    store: &mut Store,
    ops: &[KvOp],
    now: Instant,
    authz: &Authz,
) -> Result<Vec<TxnResultJson>, Vec<TxnErrorJson>> {
    // Consul checks these on the leader before Raft, so they cost no index.
    let errors: Vec<TxnErrorJson> = ops
        .iter()
        .enumerate()
        .filter_map(|(i, op)| {
            permitted(authz, op)
                .and_then(|()| precheck(store, op, now))
                .err()
                .map(|what| error(i, what))
        })
        .collect();
    if !errors.is_empty() {
        return Err(errors);
    }
    let index = if writes(ops) { store.next_index() } else { 0 };
    store.kv.begin();
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match run(store, index, op) {
            // Consul filters results by read permission (FilterTxnResults): a `get` of a
            // key the token may not read just has no result.
            Ok(entries) => results.extend(
                entries
                    .into_iter()
                    .filter(|kv| authz.allows("key", &kv.key, Access::Read))
                    .map(|kv| TxnResultJson { kv }),
            ),
            Err(what) => errors.push(error(i, what)),
        }
    }
    if errors.is_empty() {
        store.kv.commit();
        Ok(results)
    } else {
        store.kv.rollback();
        Err(errors)
    }
}

fn error(op_index: usize, what: String) -> TxnErrorJson {
    TxnErrorJson { op_index, what }
}

/// Consul's `kvsPreApply` ACL checks: writes need `key:write` (a tree delete write on the
/// whole prefix), checks need `key:read`; plain reads are filtered afterwards instead.
fn permitted(authz: &Authz, op: &KvOp) -> Result<(), String> {
    let denied = match &op.verb {
        Verb::DeleteTree => authz.denied_key_write_prefix(&op.key),
        Verb::CheckIndex | Verb::CheckSession | Verb::CheckNotExists => {
            authz.denied("key", &op.key, Access::Read)
        }
        verb if verb.is_write() => authz.denied("key", &op.key, Access::Write),
        _ => None,
    };
    denied.map_or(Ok(()), Err)
}

fn precheck(store: &Store, op: &KvOp, now: Instant) -> Result<(), String> {
    if op.key.is_empty() && op.verb != Verb::DeleteTree {
        return Err("Must provide key".to_string());
    }
    if op.verb == Verb::Lock && store.kv.lock_delayed(&op.key, now) {
        return Err(format!("failed to lock key {:?} due to lock delay", op.key));
    }
    Ok(())
}

/// One operation; its results (values only for reads) or Consul's error text.
fn run(store: &mut Store, index: u64, op: &KvOp) -> Result<Vec<EntryJson>, String> {
    let key = op.key.as_str();
    let stripped = |entry: Entry| vec![EntryJson::new(&entry, false)];
    match &op.verb {
        Verb::Set => Ok(stripped(store.kv.set(
            index,
            key,
            op.value.clone(),
            op.flags,
        ))),
        Verb::Cas => store
            .kv
            .cas(index, key, op.value.clone(), op.flags, op.index)
            .map(stripped)
            .ok_or_else(|| format!("failed to set key {key:?}, index is stale")),
        Verb::Lock => {
            store.check_lock_session(&op.session)?;
            store
                .kv
                .lock(index, key, op.value.clone(), op.flags, &op.session)
                .map(stripped)
                .ok_or_else(|| format!("failed to lock key {key:?}, lock is already held"))
        }
        Verb::Unlock => {
            if op.session.is_empty() {
                return Err("missing session".to_string());
            }
            store
                .kv
                .unlock(index, key, op.value.clone(), op.flags, &op.session)
                .map(stripped)
                .ok_or_else(|| {
                    format!("failed to unlock key {key:?}, lock isn't held, or is held by another session")
                })
        }
        Verb::Get => store
            .kv
            .get(key)
            .map(|entry| vec![EntryJson::new(entry, true)])
            .ok_or_else(|| format!("key {key:?} doesn't exist")),
        Verb::GetOrEmpty => Ok(vec![match store.kv.get(key) {
            Some(entry) => EntryJson::new(entry, true),
            // Consul echoes the operation's own entry with no value.
            None => EntryJson::new(
                &Entry {
                    key: key.to_string(),
                    value: Vec::new(),
                    flags: op.flags,
                    lock_index: 0,
                    session: (!op.session.is_empty()).then(|| op.session.clone()),
                    create_index: 0,
                    modify_index: op.index,
                },
                false,
            ),
        }]),
        Verb::GetTree => Ok(store
            .kv
            .list(key)
            .map(|entry| EntryJson::new(entry, true))
            .collect()),
        Verb::CheckIndex => {
            let entry = store
                .kv
                .get(key)
                .ok_or_else(|| format!("failed to check index, key {key:?} doesn't exist"))?;
            if entry.modify_index != op.index {
                return Err(format!(
                    "failed index check for key {key:?}, current modify index {} != {}",
                    entry.modify_index, op.index
                ));
            }
            Ok(vec![EntryJson::new(entry, false)])
        }
        Verb::CheckSession => {
            let entry = store
                .kv
                .get(key)
                .ok_or_else(|| format!("failed to check session, key {key:?} doesn't exist"))?;
            let current = entry.session.as_deref().unwrap_or("");
            if current != op.session {
                return Err(format!(
                    "failed session check for key {key:?}, current session {current:?} != {:?}",
                    op.session
                ));
            }
            Ok(vec![EntryJson::new(entry, false)])
        }
        Verb::CheckNotExists => match store.kv.get(key) {
            Some(_) => Err(format!("key {key:?} exists")),
            None => Ok(Vec::new()),
        },
        Verb::Delete => {
            store.kv.delete(index, key);
            Ok(Vec::new())
        }
        Verb::DeleteTree => {
            store.kv.delete_tree(index, key);
            Ok(Vec::new())
        }
        Verb::DeleteCas => {
            if store.kv.delete_cas(index, key, op.index) {
                Ok(Vec::new())
            } else {
                Err(format!("failed to delete key {key:?}, index is stale"))
            }
        }
        Verb::Unknown(verb) => Err(format!("unknown KV verb {verb:?}")),
    }
}

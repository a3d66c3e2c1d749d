//! The JSON shapes Consul answers with, field names and order as Consul writes them.

use super::kv::Entry;
use super::session::Session;
use base64::Engine;
use serde::Serialize;

/// A KV entry as `/v1/kv` and `/v1/txn` return it.
#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct EntryJson {
    pub lock_index: u64,
    pub key: String,
    pub flags: u64,
    /// Base64; `null` for an empty value (Consul stores those as a nil slice) and for
    /// results of transaction writes, which Consul strips to save space.
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    pub create_index: u64,
    pub modify_index: u64,
}

impl EntryJson {
    pub fn new(entry: &Entry, with_value: bool) -> EntryJson {
        let value = (with_value && !entry.value.is_empty())
            .then(|| base64::engine::general_purpose::STANDARD.encode(&entry.value));
        EntryJson {
            lock_index: entry.lock_index,
            key: entry.key.clone(),
            flags: entry.flags,
            value,
            session: entry.session.clone(),
            create_index: entry.create_index,
            modify_index: entry.modify_index,
        }
    }
}

/// A session as `/v1/session/{info,list,renew}` return it.
#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct SessionJson {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub node: String,
    /// Nanoseconds, as Go encodes a `time.Duration`.
    pub lock_delay: u64,
    pub behavior: &'static str,
    #[serde(rename = "TTL")]
    pub ttl: String,
    /// Consul attaches the node's serf health check by default.
    pub node_checks: [&'static str; 1],
    pub service_checks: Option<()>,
    pub create_index: u64,
    pub modify_index: u64,
}

impl SessionJson {
    pub fn new(session: &Session) -> SessionJson {
        SessionJson {
            id: session.id.clone(),
            name: session.name.clone(),
            node: session.node.clone(),
            lock_delay: u64::try_from(session.lock_delay.as_nanos()).unwrap_or(u64::MAX),
            behavior: session.behavior.as_str(),
            ttl: session.ttl.clone(),
            node_checks: ["serfHealth"],
            service_checks: None,
            create_index: session.create_index,
            modify_index: session.modify_index,
        }
    }
}

/// One element of a transaction's `Results`.
#[derive(Serialize, Debug)]
pub(crate) struct TxnResultJson {
    #[serde(rename = "KV")]
    pub kv: EntryJson,
}

/// One element of a transaction's `Errors`.
#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct TxnErrorJson {
    pub op_index: usize,
    pub what: String,
}

/// The body of `/v1/txn`: exactly one of the two lists is non-null.
#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct TxnResponseJson {
    pub results: Option<Vec<TxnResultJson>>,
    pub errors: Option<Vec<TxnErrorJson>>,
}

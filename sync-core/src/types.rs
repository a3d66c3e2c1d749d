//! Names that cross crate boundaries: keys, values, revisions, cluster ids, watch events and
//! write operations. Newtypes so a revision is never confused with a count or an index.

use std::fmt;

/// A backend revision: etcd's store revision or Consul's raft index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision(pub u64);

impl Revision {
    pub fn next(self) -> Revision {
        Revision(self.0 + 1)
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The identity of one backend cluster; a checkpoint from another cluster is no base.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClusterId(pub String);

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A KV key: arbitrary bytes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Key(pub Vec<u8>);

impl Key {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<&str> for Key {
    fn from(s: &str) -> Self {
        Key(s.as_bytes().to_vec())
    }
}

impl From<&[u8]> for Key {
    fn from(s: &[u8]) -> Self {
        Key(s.to_vec())
    }
}

/// Printable form: UTF-8 as is, other bytes as `\xNN`, so messages name the exact key.
impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            // Runs of printable text go out whole: a plan prints 100k keys.
            let mut rest = chunk.valid();
            while let Some(at) = rest.find(char::is_control) {
                f.write_str(&rest[..at])?;
                let c = rest[at..].chars().next().unwrap_or_default();
                write!(f, "{}", c.escape_default())?;
                rest = &rest[at + c.len_utf8()..];
            }
            f.write_str(rest)?;
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({self})")
    }
}

/// A value: the file content, byte for byte.
pub type Value = Vec<u8>;

/// The name of a configured area.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AreaName(pub String);

impl fmt::Display for AreaName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One key as read from a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    pub key: Key,
    pub value: Value,
    /// Revision of the last write to this key; the compare-and-swap token for writes.
    pub mod_revision: Revision,
}

/// Every key under a prefix, as of one revision.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub revision: Revision,
    /// Sorted by key, bytewise.
    pub entries: Vec<KvEntry>,
}

/// A change to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    Put(Value),
    Delete,
}

impl ChangeKind {
    /// The key's value after the change (`None`: deleted).
    pub fn into_value(self) -> Option<Value> {
        match self {
            ChangeKind::Put(v) => Some(v),
            ChangeKind::Delete => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvChange {
    pub key: Key,
    pub kind: ChangeKind,
    /// The revision at which this change happened.
    pub revision: Revision,
}

/// A key as read is the put that last wrote it.
impl From<KvEntry> for KvChange {
    fn from(e: KvEntry) -> Self {
        KvChange {
            key: e.key,
            kind: ChangeKind::Put(e.value),
            revision: e.mod_revision,
        }
    }
}

/// Why a watch cannot continue from where it was: the caller must resync by the sync rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResyncReason {
    /// The requested revision was compacted away (etcd); history before it is gone.
    Compacted { compact_revision: Revision },
    /// The index went backwards or the cluster was reset (Consul).
    IndexReset,
}

impl ResyncReason {
    /// The `reason` label of `kvgit_resyncs_total`.
    pub fn label(&self) -> &'static str {
        match self {
            ResyncReason::Compacted { .. } => "compacted",
            ResyncReason::IndexReset => "index_reset",
        }
    }
}

/// What a watch stream yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// Changes of one backend transaction (all share `revision`), in order.
    Changes {
        revision: Revision,
        changes: Vec<KvChange>,
    },
    /// Everything up to `revision` has been delivered; nothing in the prefix changed since.
    Progress { revision: Revision },
    /// The stream cannot continue; the caller must resync. The stream ends after this.
    ResyncNeeded(ResyncReason),
}

/// The condition under which a write may happen (compare-and-swap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Unconditional.
    Any,
    /// The key must not exist.
    Absent,
    /// The key must not exist, and when the op before it in the same write is `Absent` or
    /// `AbsentInRun` on a smaller key, no key between the two existed when the write was
    /// planned. A backend may check such a run of new keys with one range compare ("no key
    /// in [first, last]"; a key created in between fails the write) or each key alone.
    AbsentInRun,
    /// The key must exist with exactly this mod revision.
    ModRevision(Revision),
}

/// One operation of a conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    Put {
        key: Key,
        value: Value,
        expect: Precondition,
    },
    /// Deletes exactly this key, never a range.
    Delete { key: Key, expect: Precondition },
}

impl WriteOp {
    pub fn key(&self) -> &Key {
        match self {
            WriteOp::Put { key, .. } | WriteOp::Delete { key, .. } => key,
        }
    }

    /// Bytes this op adds to a request, for sizing transactions.
    pub fn payload_len(&self) -> usize {
        match self {
            WriteOp::Put { key, value, .. } => key.0.len() + value.len(),
            WriteOp::Delete { key, .. } => key.0.len(),
        }
    }
}

/// How big one atomic write may be on this backend. Two byte limits, because a batch is
/// sized for throughput with headroom for many ops' framing, while a single large value
/// must still be writable: what the backend accepted, apply must be able to write back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteLimits {
    /// Operations per transaction (etcd 128, Consul 64).
    pub max_ops: usize,
    /// The batch budget: bytes of keys + values per transaction of several ops, with
    /// headroom for the request's framing and every op's compare.
    pub max_bytes: usize,
    /// The largest single op (key + value bytes, `WriteOp::payload_len`) the backend takes
    /// when written alone: a one-op transaction with its compare. At least `max_bytes`; an
    /// op bigger than the batch budget goes in a transaction of its own.
    pub max_value_bytes: usize,
}

/// The result of one conditional transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Every op was applied atomically at this revision.
    Committed { revision: Revision },
    /// A precondition did not hold; nothing was written.
    PreconditionFailed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_show_as_text_with_control_characters_and_bad_bytes_escaped() {
        let show = |bytes: &[u8]| Key(bytes.to_vec()).to_string();
        assert_eq!(show(b"/app/n\xc3\xa9/status"), "/app/né/status");
        assert_eq!(show(b"a\nb\tc\x7f"), "a\\nb\\tc\\u{7f}");
        assert_eq!(show(b"\x00lead"), "\\u{0}lead");
        assert_eq!(show(b"ok\xff\xfe/x\r"), "ok\\xff\\xfe/x\\r");
        assert_eq!(show(b""), "");
    }
}

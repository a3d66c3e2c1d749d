//! Helpers of the conformance cases: building ops, reading a prefix as a map, and a watch
//! reader that checks ordering promises on every event it hands out.

use futures::StreamExt;
use std::collections::BTreeMap;
use std::time::Duration;
use sync_core::{
    BackendError, ChangeKind, Key, KvBackend, KvChange, Precondition, Revision, TxnOutcome,
    WatchEvent, WatchStream, WriteOp,
};

/// How long any single expected event may take.
pub(crate) const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

pub(crate) fn key(prefix: &[u8], rest: impl AsRef<[u8]>) -> Key {
    let mut k = prefix.to_vec();
    k.extend_from_slice(rest.as_ref());
    Key(k)
}

pub fn put(k: Key, v: impl Into<Vec<u8>>) -> WriteOp {
    WriteOp::Put {
        key: k,
        value: v.into(),
        expect: Precondition::Any,
    }
}

/// Writes `ops` and panics unless they committed; returns the commit revision.
pub async fn commit(b: &dyn KvBackend, ops: Vec<WriteOp>) -> Revision {
    match b.write(&ops).await {
        Ok(TxnOutcome::Committed { revision }) => revision,
        other => panic!(
            "write of {} ops: expected Committed, got {other:?}",
            ops.len()
        ),
    }
}

/// The prefix as a map key -> (value, mod revision).
pub(crate) async fn contents(
    b: &dyn KvBackend,
    prefix: &[u8],
    at: Option<Revision>,
) -> BTreeMap<Key, (Vec<u8>, Revision)> {
    let snap = b
        .snapshot(prefix, at)
        .await
        .unwrap_or_else(|e| panic!("snapshot {} at {at:?}: {e}", Key(prefix.to_vec())));
    assert!(
        snap.entries.windows(2).all(|w| w[0].key < w[1].key),
        "snapshot entries must be sorted and unique"
    );
    snap.entries
        .into_iter()
        .map(|e| (e.key, (e.value, e.mod_revision)))
        .collect()
}

pub(crate) async fn next_item(
    stream: &mut WatchStream,
    waiting_for: &str,
) -> Option<Result<WatchEvent, BackendError>> {
    match tokio::time::timeout(EVENT_TIMEOUT, stream.next()).await {
        Ok(item) => item,
        Err(_) => panic!("watch: nothing within {EVENT_TIMEOUT:?} while waiting for {waiting_for}"),
    }
}

/// Checks the stream's promises as events arrive: revisions only grow, and no change comes at
/// or below a revision already reported as progress.
#[derive(Default)]
pub(crate) struct WatchLog {
    last_change: Revision,
    last_progress: Option<Revision>,
}

impl WatchLog {
    /// Next event; panics on errors, resync, end of stream or broken order.
    pub(crate) async fn next(&mut self, stream: &mut WatchStream, waiting_for: &str) -> WatchEvent {
        let ev = match next_item(stream, waiting_for).await {
            Some(Ok(ev)) => ev,
            Some(Err(e)) => panic!("watch error while waiting for {waiting_for}: {e}"),
            None => panic!("watch stream ended while waiting for {waiting_for}"),
        };
        match &ev {
            WatchEvent::Changes { revision, changes } => {
                assert!(!changes.is_empty(), "empty Changes at {revision}");
                assert!(
                    changes.iter().all(|c| c.revision == *revision),
                    "changes of one event share its revision"
                );
                assert!(
                    *revision > self.last_change,
                    "change at {revision} after change at {}",
                    self.last_change
                );
                if let Some(p) = self.last_progress {
                    assert!(*revision > p, "change at {revision} after Progress {p}");
                }
                self.last_change = *revision;
            }
            WatchEvent::Progress { revision } => {
                assert!(
                    *revision >= self.last_change,
                    "Progress {revision} below change {}",
                    self.last_change
                );
                if let Some(p) = self.last_progress {
                    assert!(*revision >= p, "Progress went back from {p} to {revision}");
                }
                self.last_progress = Some(*revision);
            }
            WatchEvent::ResyncNeeded(r) => {
                panic!("unexpected resync ({r:?}) while waiting for {waiting_for}")
            }
        }
        ev
    }

    /// Skips progress reports until the next changes.
    pub(crate) async fn next_changes(
        &mut self,
        stream: &mut WatchStream,
        waiting_for: &str,
    ) -> (Revision, Vec<KvChange>) {
        loop {
            if let WatchEvent::Changes { revision, changes } = self.next(stream, waiting_for).await
            {
                return (revision, changes);
            }
        }
    }

    /// Skips changes (asserting there are none) until a progress at or beyond `at_least`.
    pub(crate) async fn progress_at_least(
        &mut self,
        stream: &mut WatchStream,
        at_least: Revision,
    ) -> Revision {
        loop {
            match self.next(stream, &format!("Progress >= {at_least}")).await {
                WatchEvent::Progress { revision } if revision >= at_least => return revision,
                WatchEvent::Progress { .. } => {}
                other => panic!("expected only Progress, got {other:?}"),
            }
        }
    }
}

pub(crate) fn put_change(k: &Key, v: &[u8], revision: Revision) -> KvChange {
    KvChange {
        key: k.clone(),
        kind: ChangeKind::Put(v.to_vec()),
        revision,
    }
}

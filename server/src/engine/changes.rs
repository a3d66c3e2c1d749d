//! The live delta of an area since its checkpoint, read from the backend's watch: every
//! change up to a target revision, collapsed to the last write per key.

use futures::StreamExt;
use std::collections::BTreeMap;
use std::time::Duration;
use sync_core::{
    BackendError, ChangeKind, Key, KvBackend, ResyncReason, Revision, Value, WatchEvent,
};

/// What happened in an area since a revision.
pub enum Delta {
    /// The last value of every changed key (`None` = deleted), complete up to `upto`.
    Changes {
        upto: Revision,
        changes: BTreeMap<Key, Option<Value>>,
    },
    /// History since the checkpoint is gone: the caller must resync by the sync rule.
    Resync(ResyncReason),
}

/// Every change under `prefix` from `from` until at least `target`.
pub async fn since(
    backend: &dyn KvBackend,
    prefix: &[u8],
    from: Revision,
    target: Revision,
    timeout: Duration,
) -> anyhow::Result<Delta> {
    let mut changes = BTreeMap::new();
    if from > target {
        return Ok(Delta::Changes {
            upto: target,
            changes,
        });
    }
    // Exact and cheap where the backend can answer without a watch.
    match backend
        .changes_between(prefix, Revision(from.0 - 1), target)
        .await
    {
        Ok(Some(list)) => {
            for c in list {
                let v = match c.kind {
                    ChangeKind::Put(v) => Some(v),
                    ChangeKind::Delete => None,
                };
                changes.insert(c.key, v);
            }
            return Ok(Delta::Changes {
                upto: target,
                changes,
            });
        }
        Ok(None) => {}
        Err(BackendError::Compacted {
            compact_revision, ..
        }) => {
            return Ok(Delta::Resync(ResyncReason::Compacted { compact_revision }));
        }
        Err(e) => return Err(e.into()),
    }
    let mut stream = backend.watch(prefix, from).await?;
    loop {
        let next = tokio::time::timeout(timeout, stream.next())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "{} watch of {:?} made no progress within {timeout:?}",
                    backend.kind(),
                    String::from_utf8_lossy(prefix)
                )
            })?;
        match next {
            None => anyhow::bail!("{} watch ended before revision {target}", backend.kind()),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(WatchEvent::ResyncNeeded(reason))) => return Ok(Delta::Resync(reason)),
            Some(Ok(WatchEvent::Progress { revision })) => {
                if revision >= target {
                    return Ok(Delta::Changes {
                        upto: revision,
                        changes,
                    });
                }
            }
            Some(Ok(WatchEvent::Changes {
                revision,
                changes: batch,
            })) => {
                for c in batch {
                    let v = match c.kind {
                        ChangeKind::Put(v) => Some(v),
                        ChangeKind::Delete => None,
                    };
                    changes.insert(c.key, v);
                }
                if revision >= target {
                    return Ok(Delta::Changes {
                        upto: revision,
                        changes,
                    });
                }
            }
        }
    }
}

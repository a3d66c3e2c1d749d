//! The live delta of an area since its checkpoint, read from the backend's watch: every
//! change up to a target revision, collapsed to the last write per key.

use futures::StreamExt;
use std::collections::BTreeMap;
use std::time::Duration;
use sync_core::{BackendError, Key, KvBackend, ResyncReason, Revision, Value, WatchEvent};

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

/// Why the live delta could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ChangesError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("{backend} watch of {prefix:?} made no progress within {timeout:?}")]
    Stalled {
        backend: &'static str,
        prefix: String,
        timeout: Duration,
    },
    #[error("{backend} watch ended before revision {target}")]
    Ended {
        backend: &'static str,
        target: Revision,
    },
}

impl ChangesError {
    /// A watch that stalled or ended, or a backend that is unavailable, may do better later.
    pub fn is_retryable(&self) -> bool {
        match self {
            ChangesError::Backend(e) => e.is_retryable(),
            ChangesError::Stalled { .. } | ChangesError::Ended { .. } => true,
        }
    }
}

/// Every change under `prefix` from `from` until at least `target`.
pub async fn since(
    backend: &dyn KvBackend,
    prefix: &[u8],
    from: Revision,
    target: Revision,
    timeout: Duration,
) -> Result<Delta, ChangesError> {
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
                changes.insert(c.key, c.kind.into_value());
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
            .map_err(|_| ChangesError::Stalled {
                backend: backend.kind(),
                prefix: String::from_utf8_lossy(prefix).into_owned(),
                timeout,
            })?;
        match next {
            None => {
                return Err(ChangesError::Ended {
                    backend: backend.kind(),
                    target,
                })
            }
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
                    changes.insert(c.key, c.kind.into_value());
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

//! The one lock around writes to the branch and the checkpoint refs, remembering who holds
//! it and since when, so a stalled commit can say what it waits for (`/readyz`, `/status`).

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Serialises every write to the branch and the checkpoint refs within the process.
pub struct GitLock {
    inner: tokio::sync::Mutex<()>,
    /// Who holds `inner` now, and since when. A plain mutex: held for an assignment only.
    holder: Mutex<Option<(&'static str, Instant)>>,
}

/// Holds the lock; clears the holder record when dropped.
pub struct GitGuard<'a> {
    lock: &'a GitLock,
    _inner: tokio::sync::MutexGuard<'a, ()>,
}

impl Default for GitLock {
    fn default() -> Self {
        GitLock {
            inner: tokio::sync::Mutex::new(()),
            holder: Mutex::new(None),
        }
    }
}

impl GitLock {
    /// Waits for the lock; `who` names the task for people ("fetch", "commit", "push").
    pub async fn lock(&self, who: &'static str) -> GitGuard<'_> {
        let inner = self.inner.lock().await;
        *self.holder.lock().unwrap_or_else(PoisonError::into_inner) = Some((who, Instant::now()));
        GitGuard {
            lock: self,
            _inner: inner,
        }
    }

    /// Who holds the lock and for how long, if anyone does.
    pub fn holder(&self) -> Option<(&'static str, Duration)> {
        self.holder
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map(|(who, since)| (who, since.elapsed()))
    }
}

impl Drop for GitGuard<'_> {
    fn drop(&mut self) {
        *self
            .lock
            .holder
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_the_holder_while_held_only() {
        let lock = GitLock::default();
        assert!(lock.holder().is_none());
        let guard = lock.lock("fetch").await;
        assert_eq!(lock.holder().map(|(who, _)| who), Some("fetch"));
        drop(guard);
        assert!(lock.holder().is_none());
    }
}

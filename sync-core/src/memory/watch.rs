//! Watch fan-out of the in-memory backend: every open watch has a queue its stream drains; a
//! commit queues the changes under the watch's prefix and notes the new revision as progress.
//!
//! Progress is reported when the stream has handed out everything queued (the reader has
//! caught up), with the newest revision seen: one `Progress` however many commits went by,
//! never below a change already handed out, and never above one still to come.

use super::store::Txn;
use crate::backend::{BackendError, WatchStream};
use crate::types::{Revision, WatchEvent};
use futures::{Stream, StreamExt};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

type Item = Result<WatchEvent, BackendError>;

/// The open watches of one store; it lives under the store's lock, so a watch opened
/// after a commit never misses it nor sees it twice.
#[derive(Default)]
pub(super) struct Watchers {
    open: Vec<Watcher>,
}

struct Watcher {
    prefix: Vec<u8>,
    /// The watch's start: a watch opened ahead of the store sees nothing before it.
    from: Revision,
    queue: Arc<Mutex<Queue>>,
}

/// Unbounded: a commit runs under the store's lock and must never wait for a reader. A
/// watch nobody reads holds every change since it was opened, which is fine for tests.
#[derive(Default)]
struct Queue {
    items: VecDeque<Item>,
    /// The newest revision seen, to report once `items` is drained.
    progress: Option<Revision>,
    /// No more items will come: the stream ends once `items` is drained.
    ended: bool,
    waker: Option<Waker>,
}

impl Queue {
    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// The queue's lock is only held for a push or a pop, never across a panic in user code.
fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    queue
        .lock()
        .expect("watch queue lock poisoned by a panic in the memory backend")
}

impl Watchers {
    /// A stream that yields `backlog`, then progress at `revision`, then what `notify` sends
    /// from revision `from` on.
    pub(super) fn open(
        &mut self,
        prefix: &[u8],
        from: Revision,
        backlog: Vec<WatchEvent>,
        revision: Revision,
    ) -> WatchStream {
        let queue = Arc::new(Mutex::new(Queue {
            items: backlog.into_iter().map(Ok).collect(),
            progress: Some(revision),
            ..Queue::default()
        }));
        self.open.push(Watcher {
            prefix: prefix.to_vec(),
            from,
            queue: queue.clone(),
        });
        Receiver { queue }.boxed()
    }

    /// Hands one committed transaction to every open watch.
    pub(super) fn notify(&mut self, txn: &Txn) {
        // A watch whose stream was dropped holds the only other reference: forget it.
        self.open.retain(|w| Arc::strong_count(&w.queue) > 1);
        for w in &self.open {
            let mut q = lock(&w.queue);
            let event = (txn.revision >= w.from)
                .then(|| txn.event(&w.prefix))
                .flatten();
            if let Some(event) = event {
                q.items.push_back(Ok(event));
            }
            q.progress = Some(txn.revision);
            q.wake();
        }
    }

    /// Ends every open watch with `error` (after what is already queued): the store went
    /// away or is down, and a watch must never end silently.
    pub(super) fn fail_all(&mut self, error: impl Fn() -> BackendError) {
        for w in self.open.drain(..) {
            let mut q = lock(&w.queue);
            q.items.push_back(Err(error()));
            q.progress = None;
            q.ended = true;
            q.wake();
        }
    }
}

impl Drop for Watchers {
    fn drop(&mut self) {
        self.fail_all(|| super::unavailable("the memory backend was dropped"));
    }
}

/// The stream side of one watch.
struct Receiver {
    queue: Arc<Mutex<Queue>>,
}

impl Stream for Receiver {
    type Item = Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        let mut q = lock(&self.queue);
        if let Some(item) = q.items.pop_front() {
            return Poll::Ready(Some(item));
        }
        if q.ended {
            return Poll::Ready(None);
        }
        if let Some(revision) = q.progress.take() {
            return Poll::Ready(Some(Ok(WatchEvent::Progress { revision })));
        }
        q.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

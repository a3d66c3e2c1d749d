//! The backend conformance suite against `MemoryBackend`, the in-memory backend unit tests
//! use: it must keep every promise etcd keeps, ownership and compaction included, and fail
//! like a server that went away when its outage knob is set.

use futures::FutureExt;
use kvgit_tests::conformance::{self, CompactFn};
use std::sync::Arc;
use sync_core::{KvBackend, MemoryBackend, Revision};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_passes_the_conformance_suite() {
    let memory = MemoryBackend::new();
    assert!(memory.keeps_history(), "the suite's etcd branches apply");
    let compact: CompactFn = {
        // A clone shares the store: the knob reaches the backend the suite holds.
        let memory = memory.clone();
        Arc::new(move |rev: Revision| {
            memory.compact(rev);
            futures::future::ready(()).boxed()
        })
    };
    let backend: Arc<dyn KvBackend> = Arc::new(memory);
    conformance::run_all(backend, "/kvgit-conformance", Some(compact)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_outage_is_an_error() {
    let memory = MemoryBackend::new();
    let knob = memory.clone();
    conformance::server_gone_is_an_error(&memory, b"/kvgit-gone/", move || {
        knob.set_unavailable(true)
    })
    .await;
}

#[tokio::test]
async fn memory_kind_limits_and_ids() {
    let memory = MemoryBackend::new();
    assert_eq!(memory.kind(), "memory");
    let limits = memory.write_limits();
    assert_eq!(limits.max_ops, 128, "etcd's transaction size");
    assert!(limits.max_value_bytes >= limits.max_bytes);
    let id = memory.cluster_id().await.expect("cluster_id");
    let other = MemoryBackend::new().cluster_id().await.expect("cluster_id");
    assert_ne!(id, other, "every store is its own cluster");
}

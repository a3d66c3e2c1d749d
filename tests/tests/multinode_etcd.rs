//! Several `kvgit serve` processes on one real etcd and one remote: the scenarios of
//! `kvgit_tests::multinode` (spread, takeover after `kill -9`, a paused owner fenced off).

use kvgit_tests::etcd::EtcdServer;
use kvgit_tests::multinode::{self, Cluster};
use std::sync::Arc;
use std::time::Duration;

async fn cluster(etcd: &EtcdServer) -> Cluster {
    Cluster {
        kind: "etcd",
        endpoint: etcd.endpoint().to_string(),
        backend: Arc::new(etcd.backend().await),
        lease_ttl: "3s",
        takeover_within: Duration::from_secs(3 + 5),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_spread_areas_and_take_over_after_kill9_without_loss_or_doubles() {
    let etcd = EtcdServer::start();
    multinode::three_nodes_take_over_after_kill9(&cluster(&etcd).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_loses_its_lease_and_never_pushes_a_stale_commit() {
    let etcd = EtcdServer::start();
    multinode::a_paused_owner_never_pushes_a_stale_commit(&cluster(&etcd).await).await;
}

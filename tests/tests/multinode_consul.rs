//! The multi-node ownership scenario on Consul (sessions and `acquire`): the in-repo
//! Consul KV API implementation, or a real agent when `CONSUL_HTTP_ADDR` is set.

use backend_consul::{ConsulBackend, ConsulConfig};
use kvgit_tests::consul::ConsulServer;
use kvgit_tests::multinode::{self, Cluster};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_consul_spread_areas_and_take_over_after_kill9() {
    let consul = ConsulServer::start();
    eprintln!("Consul: {}", consul.describe());
    let backend = ConsulBackend::connect(ConsulConfig {
        endpoints: vec![consul.addr().to_string()],
        token: consul.token().map(Into::into),
        ..ConsulConfig::default()
    })
    .await
    .expect("connect to Consul");
    let cluster = Cluster {
        kind: "consul",
        endpoint: consul.addr().to_string(),
        backend: Arc::new(backend),
        // Consul's shortest session TTL; it invalidates an unrenewed session between the
        // TTL and twice the TTL.
        lease_ttl: "10s",
        takeover_within: Duration::from_secs(2 * 10 + 5),
    };
    multinode::three_nodes_take_over_after_kill9(&cluster).await;
}

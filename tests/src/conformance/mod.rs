//! The one conformance suite every `KvBackend` must pass (etcd, Consul, in-memory): snapshots,
//! compare-and-swap, limits, exact deletes and watches. Failures panic with what was expected.
//!
//! Each case works under its own prefix below `prefix_root`, so cases and backends sharing a
//! server do not see each other. Compaction is a hook because only some backends have it.

mod kv;
mod ownership;
mod support;
mod watch;

pub use kv::*;
pub use ownership::*;
pub use support::{commit, put};
pub use watch::*;

use futures::future::BoxFuture;
use std::sync::Arc;
use sync_core::{KvBackend, Revision};

/// Compacts the backend's history up to (not including) a revision; `None` where the
/// backend keeps no history to compact (Consul).
pub type CompactFn = Arc<dyn Fn(Revision) -> BoxFuture<'static, ()> + Send + Sync>;

/// Runs every case in turn; compaction last, as it removes history the others read.
pub async fn run_all(backend: Arc<dyn KvBackend>, prefix_root: &str, compact: Option<CompactFn>) {
    let b = backend.as_ref();
    let p = |case: &str| format!("{prefix_root}/{case}/").into_bytes();
    step("identity", identity(b, &p("identity"))).await;
    step("snapshot_pages", snapshot_pages(b, &p("pages"), 25_000)).await;
    step(
        "snapshot_at_older_revision",
        snapshot_at_older_revision(b, &p("older")),
    )
    .await;
    step(
        "binary_keys_and_values",
        binary_keys_and_values(b, &p("binary")),
    )
    .await;
    step("cas", cas(b, &p("cas"))).await;
    step(
        "failed_txn_applies_nothing",
        failed_txn_applies_nothing(b, &p("atomic")),
    )
    .await;
    step("absent_runs", absent_runs(b, &p("runs"))).await;
    step(
        "probe_write_changes_nothing",
        probe_write_changes_nothing(b, &p("probe")),
    )
    .await;
    step(
        "over_limits_is_refused",
        over_limits_is_refused(b, &p("limits")),
    )
    .await;
    step(
        "largest_op_alone_round_trips",
        largest_op_alone_round_trips(b, &p("largest")),
    )
    .await;
    step("get_many_and_count", get_many_and_count(b, &p("many"))).await;
    step("delete_is_exact", delete_is_exact(b, &p("delete"))).await;
    step(
        "changes_between_is_exact",
        changes_between_is_exact(b, &p("between")),
    )
    .await;
    step(
        "watch_from_revision",
        watch_from_revision(b, prefix_root, "watch"),
    )
    .await;
    step(
        "watch_replays_bulk",
        watch_replays_bulk(b, &p("bulk"), 6_000, 4096),
    )
    .await;
    step(
        "watch_quiet_prefix_progress",
        watch_quiet_prefix_progress(b, &p("quiet"), &p("noise")),
    )
    .await;
    step(
        "claims_are_exclusive",
        claims_are_exclusive(b, &p("claims")),
    )
    .await;
    step(
        "leases_expire_unless_renewed",
        leases_expire_unless_renewed(b, &p("leases")),
    )
    .await;
    match compact {
        Some(compact) => step("compaction", compaction(b, &p("compact"), compact)).await,
        None => eprintln!("conformance: compaction skipped (backend has no compaction)"),
    }
}

async fn step(name: &str, case: impl std::future::Future<Output = ()>) {
    eprintln!("conformance: {name} ...");
    let started = std::time::Instant::now();
    case.await;
    eprintln!("conformance: {name} ok ({:?})", started.elapsed());
}

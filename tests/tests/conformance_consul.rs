//! The backend conformance suite against Consul (the in-repo KV API implementation, or a real
//! agent when `CONSUL_HTTP_ADDR` is set), plus the Consul-specific promises: errors are never
//! "no keys", keys must be UTF-8, transaction limits, binary values, cluster identity, index
//! resets, baselines, and sessions.

use backend_consul::{ConnectError, ConsulBackend, ConsulConfig};
use futures::StreamExt;
use kvgit_tests::conformance::{self, commit, put};
use kvgit_tests::consul::{consul_api_bin, ConsulOptions, ConsulServer};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use sync_core::{
    BackendError, ChangeKind, Key, KvBackend, LeaseId, Precondition, Renewal, ResyncReason,
    Revision, WatchEvent, WatchStream, WriteOp,
};

/// Watches answer within this when the prefix is quiet (blocking query `wait`).
const WATCH_WAIT: Duration = Duration::from_secs(1);
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

fn config(addr: &str, token: Option<&str>) -> ConsulConfig {
    ConsulConfig {
        endpoints: vec![addr.to_owned()],
        token: token.map(Into::into),
        watch_wait: WATCH_WAIT,
        ..ConsulConfig::default()
    }
}

async fn connect(server: &ConsulServer) -> ConsulBackend {
    ConsulBackend::connect(config(server.addr(), server.token()))
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", server.describe()))
}

fn k(prefix: &str, rest: &str) -> Key {
    Key::from(format!("{prefix}{rest}").as_str())
}

async fn next(stream: &mut WatchStream, what: &str) -> Option<Result<WatchEvent, BackendError>> {
    tokio::time::timeout(EVENT_TIMEOUT, stream.next())
        .await
        .unwrap_or_else(|_| panic!("watch: nothing within {EVENT_TIMEOUT:?} waiting for {what}"))
}

/// The next `Changes`, skipping progress.
async fn next_changes(
    stream: &mut WatchStream,
    what: &str,
) -> (Revision, Vec<sync_core::KvChange>) {
    loop {
        match next(stream, what).await {
            Some(Ok(WatchEvent::Changes { revision, changes })) => return (revision, changes),
            Some(Ok(WatchEvent::Progress { .. })) => {}
            other => panic!("waiting for {what}: got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_passes_the_conformance_suite() {
    let server = ConsulServer::start();
    eprintln!("Consul: {}", server.describe());
    let backend: Arc<dyn KvBackend> = Arc::new(connect(&server).await);
    assert!(!backend.keeps_history());
    let root = server.prefix("conformance");
    conformance::run_all(backend, root.trim_end_matches('/'), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_server_gone_is_an_error() {
    let mut server = ConsulServer::start();
    if server.is_real() {
        eprintln!("skipped: a real agent is not ours to stop");
        return;
    }
    let backend = ConsulBackend::connect(ConsulConfig {
        request_timeout: Duration::from_secs(3),
        ..config(server.addr(), server.token())
    })
    .await
    .expect("connect");
    let prefix = server.prefix("gone");
    conformance::server_gone_is_an_error(&backend, prefix.as_bytes(), || server.stop()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cluster_leader_is_unavailable_not_no_keys() {
    let server = ConsulServer::start();
    if server.is_real() {
        eprintln!("skipped: a real agent cannot be made leaderless by a test");
        return;
    }
    let backend = connect(&server).await;
    let prefix = server.prefix("leader");
    commit(&backend, vec![put(k(&prefix, "a"), "1")]).await;
    let snap = backend
        .snapshot(prefix.as_bytes(), None)
        .await
        .expect("snapshot");
    let mut stream = backend
        .watch(prefix.as_bytes(), snap.revision.next())
        .await
        .expect("watch");
    server.set_leader(false);
    let unavailable = |what: &str, e: BackendError| {
        assert!(e.is_retryable(), "{what}: expected Unavailable, got {e}");
        assert!(e.to_string().contains("No cluster leader"), "{what}: {e}");
    };
    match backend.snapshot(prefix.as_bytes(), None).await {
        Err(e) => unavailable("snapshot", e),
        Ok(s) => panic!(
            "snapshot without a leader returned {} entries",
            s.entries.len()
        ),
    }
    unavailable(
        "current_revision",
        backend.current_revision().await.expect_err("no leader"),
    );
    unavailable(
        "write",
        backend
            .write(&[put(k(&prefix, "b"), "2")])
            .await
            .expect_err("no leader"),
    );
    match backend.watch(prefix.as_bytes(), snap.revision.next()).await {
        Err(e) => unavailable("watch", e),
        Ok(_) => panic!("watch opened without a leader"),
    }
    match backend
        .changes_between(prefix.as_bytes(), snap.revision, snap.revision.next())
        .await
    {
        Err(e) => unavailable("changes_between", e),
        Ok(c) => panic!("changes_between without a leader: {c:?}"),
    }
    // The open watch ends with the error at its next query, never with deletes.
    loop {
        match next(&mut stream, "the watch error").await {
            Some(Err(e)) => {
                unavailable("open watch", e);
                break;
            }
            Some(Ok(WatchEvent::Progress { .. })) => {}
            other => panic!("watch without a leader yielded {other:?}"),
        }
    }
    let err = ConsulBackend::connect(config(server.addr(), server.token()))
        .await
        .expect_err("connect without a leader");
    assert!(
        matches!(err, ConnectError::Unreachable { .. }) && err.is_retryable(),
        "{err}"
    );
    server.set_leader(true);
    let back = backend
        .snapshot(prefix.as_bytes(), None)
        .await
        .expect("leader back");
    assert_eq!(back.entries.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused_at_connect() {
    let server = ConsulServer::start_with(ConsulOptions {
        acl_management_token: Some("the-right-token".into()),
        ..ConsulOptions::default()
    });
    if server.is_real() {
        eprintln!("skipped: the in-repo server's ACL setup is needed");
        return;
    }
    for (token, says) in [
        (Some("a-wrong-token"), "ACL not found"),
        (None, "Permission denied"),
    ] {
        let err = ConsulBackend::connect(config(server.addr(), token))
            .await
            .expect_err("refused token");
        assert!(matches!(err, ConnectError::AuthFailed { .. }), "{err}");
        assert!(!err.is_retryable());
        let text = err.to_string();
        assert!(
            text.contains(says) && text.contains(server.addr()),
            "{text}"
        );
    }
    connect(&server).await;
}

/// A Consul KV API process on a port of our choosing, so a test can replace the server
/// behind a connected backend. Killed (by its own pid) on drop.
struct Replaceable {
    child: Child,
}

impl Replaceable {
    fn start(port: u16, token: &str) -> Replaceable {
        let child = Command::new(consul_api_bin())
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--acl-management-token",
                token,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn consul-kv-api");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "consul-kv-api did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Replaceable { child }
    }
}

impl Drop for Replaceable {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_permission_denied_never_no_keys() {
    if std::env::var("CONSUL_HTTP_ADDR").is_ok() {
        eprintln!("skipped: needs the in-repo server on a chosen port");
        return;
    }
    let port = free_port();
    let addr = format!("http://127.0.0.1:{port}");
    let first = Replaceable::start(port, "token-a");
    let backend = ConsulBackend::connect(config(&addr, Some("token-a")))
        .await
        .expect("connect");
    let prefix = "acl/";
    commit(&backend, vec![put(k(prefix, "a"), "1")]).await;
    let snap = backend
        .snapshot(prefix.as_bytes(), None)
        .await
        .expect("snapshot");
    // The same address now answers with another ACL: this backend's token is unknown.
    drop(first);
    let _second = Replaceable::start(port, "token-b");
    let denied = |what: &str, r: Result<(), BackendError>| match r {
        Err(BackendError::PermissionDenied { detail, .. }) => {
            assert!(detail.contains("ACL not found"), "{what}: {detail}")
        }
        other => panic!("{what}: expected PermissionDenied, got {other:?}"),
    };
    denied(
        "snapshot",
        backend.snapshot(prefix.as_bytes(), None).await.map(|s| {
            panic!(
                "snapshot with a refused token returned {} entries",
                s.entries.len()
            )
        }),
    );
    denied(
        "current_revision",
        backend.current_revision().await.map(|_| ()),
    );
    denied(
        "write",
        backend.write(&[put(k(prefix, "b"), "2")]).await.map(|_| ()),
    );
    denied(
        "watch",
        backend
            .watch(prefix.as_bytes(), snap.revision.next())
            .await
            .map(|_| ()),
    );
    denied(
        "claims",
        backend.claims(prefix.as_bytes()).await.map(|_| ()),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_reports_an_index_reset() {
    if std::env::var("CONSUL_HTTP_ADDR").is_ok() {
        eprintln!("skipped: needs the in-repo server on a chosen port");
        return;
    }
    let port = free_port();
    let addr = format!("http://127.0.0.1:{port}");
    let first = Replaceable::start(port, "t");
    let backend = ConsulBackend::connect(config(&addr, Some("t")))
        .await
        .expect("connect");
    let prefix = "reset/";
    for i in 0..20 {
        commit(&backend, vec![put(k(prefix, &format!("k{i}")), "v")]).await;
    }
    let snap = backend
        .snapshot(prefix.as_bytes(), None)
        .await
        .expect("snapshot");
    // A fresh server behind the same address: its index starts over, below the snapshot.
    drop(first);
    let _fresh = Replaceable::start(port, "t");
    let mut stream = backend
        .watch(prefix.as_bytes(), snap.revision.next())
        .await
        .expect("watch after the reset");
    match next(&mut stream, "ResyncNeeded(IndexReset)").await {
        Some(Ok(WatchEvent::ResyncNeeded(ResyncReason::IndexReset))) => {}
        other => panic!("watch across an index reset: expected IndexReset, got {other:?}"),
    }
    assert!(next(&mut stream, "end").await.is_none(), "the stream ends");
    let now = backend.current_revision().await.expect("current");
    assert!(
        now < snap.revision,
        "the index went back: {now} < {}",
        snap.revision
    );
    assert!(matches!(
        backend
            .changes_between(prefix.as_bytes(), snap.revision, snap.revision.next())
            .await,
        Err(BackendError::Compacted { .. })
    ));
    // A snapshot of the new store starts a new baseline: watching from it works.
    let snap = backend
        .snapshot(prefix.as_bytes(), None)
        .await
        .expect("snapshot");
    assert!(snap.entries.is_empty());
    let mut stream = backend
        .watch(prefix.as_bytes(), snap.revision.next())
        .await
        .expect("watch");
    let r = commit(&backend, vec![put(k(prefix, "new"), "1")]).await;
    let (rev, changes) = next_changes(&mut stream, "the first change after the reset").await;
    assert_eq!((rev, changes.len()), (r, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_utf8_key_is_refused_by_name_before_any_write() {
    let server = ConsulServer::start();
    let backend = connect(&server).await;
    let prefix = server.prefix("utf8");
    let bad = Key([prefix.as_bytes(), b"caf\xe9"].concat());
    let err = backend.check_key(&bad).expect_err("not UTF-8");
    assert!(matches!(err, BackendError::Refused { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("{prefix}caf\\xe9")),
        "{err}"
    );
    assert!(backend.check_key(&k(&prefix, "caf\u{e9}")).is_ok());
    let before = backend.current_revision().await.expect("current");
    let err = backend
        .write(&[put(k(&prefix, "fine"), "x"), put(bad.clone(), "y")])
        .await
        .expect_err("refused");
    assert!(matches!(err, BackendError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("caf\\xe9"), "{err}");
    assert_eq!(
        backend.current_revision().await.expect("current"),
        before,
        "nothing sent"
    );
    let snap = backend
        .snapshot(prefix.as_bytes(), None)
        .await
        .expect("snapshot");
    assert!(snap.entries.is_empty(), "nothing written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_ops_pass_and_sixty_five_are_refused_before_sending() {
    // The server would take 128: a 65-op refusal is the backend's own.
    let server = ConsulServer::start_with(ConsulOptions {
        max_txn_ops: 128,
        ..ConsulOptions::default()
    });
    let backend = connect(&server).await;
    let limits = backend.write_limits();
    assert_eq!(limits.max_ops, 64);
    assert!(limits.max_bytes * 4 / 3 + 64 * 128 < backend_consul::TXN_MAX_REQ_LEN);
    let prefix = server.prefix("limits");
    let ops = |n: usize| -> Vec<WriteOp> {
        (0..n)
            .map(|i| put(k(&prefix, &format!("k{i:03}")), vec![0xa5; 16]))
            .collect()
    };
    let before = backend.current_revision().await.expect("current");
    match backend.write(&ops(65)).await {
        Err(BackendError::TooLarge {
            ops: 65,
            max_ops: 64,
            ..
        }) => {}
        other => panic!("65 ops: expected TooLarge, got {other:?}"),
    }
    assert_eq!(
        backend.current_revision().await.expect("current"),
        before,
        "nothing sent"
    );
    commit(&backend, ops(64)).await;
    let snap = backend
        .snapshot(prefix.as_bytes(), None)
        .await
        .expect("snapshot");
    assert_eq!(snap.entries.len(), 64);

    // Full-size transactions are accepted by Consul: max_bytes in 64 ops.
    let each = limits.max_bytes / 64 - k(&prefix, "big00").0.len();
    let big: Vec<WriteOp> = (0..64)
        .map(|i| put(k(&prefix, &format!("big{i:02}")), vec![0xff; each]))
        .collect();
    commit(&backend, big).await;

    // A server stricter than the config: its 413 is TooLarge, not a precondition failure.
    let strict = ConsulServer::start_with(ConsulOptions {
        max_txn_ops: 64,
        ..ConsulOptions::default()
    });
    if !strict.is_real() {
        let eager = ConsulBackend::connect(ConsulConfig {
            max_txn_ops: 128,
            ..config(strict.addr(), strict.token())
        })
        .await
        .expect("connect");
        match eager.write(&ops(65)).await {
            Err(BackendError::TooLarge { ops: 65, .. }) => {}
            other => panic!("65 ops on a 64-op server: expected TooLarge, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_values_round_trip_byte_identical() {
    let server = ConsulServer::start();
    let backend = connect(&server).await;
    let prefix = server.prefix("binary");
    let snap = backend
        .snapshot(prefix.as_bytes(), None)
        .await
        .expect("snapshot");
    let mut stream = backend
        .watch(prefix.as_bytes(), snap.revision.next())
        .await
        .expect("watch");
    let every_byte: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let not_utf8 = vec![
        0xc3, 0x28, 0xa0, 0xa1, 0xe2, 0x28, 0xa1, 0xf0, 0x28, 0x8c, 0xbc,
    ];
    let mut noise = Vec::with_capacity(300_000);
    let mut x: u32 = 0x9e37_79b9;
    for _ in 0..300_000 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise.push(x as u8);
    }
    let values = [
        ("every-byte", every_byte),
        ("not-utf8", not_utf8),
        ("nul", vec![0]),
        ("empty", vec![]),
        ("noise", noise),
    ];
    let r = commit(
        &backend,
        values
            .iter()
            .map(|(name, v)| put(k(&prefix, name), v.clone()))
            .collect(),
    )
    .await;
    let snap = backend
        .snapshot(prefix.as_bytes(), None)
        .await
        .expect("snapshot");
    assert_eq!(snap.entries.len(), values.len());
    for (name, v) in &values {
        let e = snap
            .entries
            .iter()
            .find(|e| e.key == k(&prefix, name))
            .unwrap_or_else(|| panic!("{name} missing"));
        assert!(
            e.value == *v,
            "{name}: {} bytes back for {}",
            e.value.len(),
            v.len()
        );
        assert_eq!(e.mod_revision, r);
    }
    let (rev, changes) = next_changes(&mut stream, "the binary values").await;
    assert_eq!(rev, r);
    for c in changes {
        let name = std::str::from_utf8(&c.key.0[prefix.len()..]).expect("name");
        let want = &values.iter().find(|(n, _)| *n == name).expect("known").1;
        assert_eq!(
            c.kind,
            ChangeKind::Put(want.clone()),
            "{name} through the watch"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_id_is_stable_and_differs_for_a_fresh_server() {
    let server = ConsulServer::start_with(ConsulOptions {
        datacenter: "eu-west".into(),
        ..ConsulOptions::default()
    });
    let backend = connect(&server).await;
    let id = backend.cluster_id().await.expect("cluster_id");
    assert_eq!(backend.cluster_id().await.expect("again"), id);
    assert_eq!(
        connect(&server)
            .await
            .cluster_id()
            .await
            .expect("other client"),
        id
    );
    assert_eq!(backend.kind(), "consul");
    if server.is_real() {
        return;
    }
    let (dc, uuid) = id.0.split_once(':').expect("<datacenter>:<uuid>");
    assert_eq!(dc, "eu-west");
    assert_eq!(uuid.len(), 36, "{uuid}");
    let fresh = ConsulServer::start_with(ConsulOptions {
        datacenter: "eu-west".into(),
        ..ConsulOptions::default()
    });
    let other = connect(&fresh).await.cluster_id().await.expect("fresh");
    assert_ne!(other, id, "a fresh cluster with the same datacenter name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_between_is_exact_from_a_baseline_and_compacted_without() {
    let server = ConsulServer::start();
    let backend = connect(&server).await;
    let prefix = server.prefix("delta");
    let r0 = commit(
        &backend,
        vec![put(k(&prefix, "keep"), "k"), put(k(&prefix, "doomed"), "d")],
    )
    .await;
    let snap = backend
        .snapshot(prefix.as_bytes(), None)
        .await
        .expect("snapshot");
    let r1 = commit(&backend, vec![put(k(&prefix, "new"), "n")]).await;
    let r2 = commit(
        &backend,
        vec![WriteOp::Delete {
            key: k(&prefix, "doomed"),
            expect: Precondition::Any,
        }],
    )
    .await;
    let upto = backend.current_revision().await.expect("current");
    assert_eq!(upto, r2);
    let changes = backend
        .changes_between(prefix.as_bytes(), snap.revision, upto)
        .await
        .expect("changes_between")
        .expect("exact from the baseline");
    let got: Vec<_> = changes
        .iter()
        .map(|c| (c.key.clone(), c.kind.clone(), c.revision))
        .collect();
    assert_eq!(
        got,
        vec![
            (k(&prefix, "new"), ChangeKind::Put(b"n".to_vec()), r1),
            (k(&prefix, "doomed"), ChangeKind::Delete, r2),
        ]
    );
    // The baseline moved to `upto`: the next delta starts there.
    let r3 = commit(&backend, vec![put(k(&prefix, "keep"), "k2")]).await;
    let next = backend
        .changes_between(prefix.as_bytes(), upto, r3)
        .await
        .expect("changes_between")
        .expect("exact");
    assert_eq!(next.len(), 1);
    // Before the baseline: Consul keeps no history.
    match backend.changes_between(prefix.as_bytes(), r0, r3).await {
        Err(BackendError::Compacted { requested, .. }) => assert_eq!(requested, r0),
        other => panic!("changes_between before the baseline: expected Compacted, got {other:?}"),
    }
    // A fresh backend has no baseline at all: it can only tell that nothing was written
    // since the current revision.
    let fresh = connect(&server).await;
    assert!(matches!(
        fresh.changes_between(prefix.as_bytes(), r3, r3.next()).await,
        Ok(Some(ref c)) if c.is_empty()
    ));
    assert!(matches!(
        fresh.changes_between(prefix.as_bytes(), r1, r3).await,
        Err(BackendError::Compacted { .. })
    ));
    // The store moved past `upto`: the watch, not a listing, can tell what was there.
    let r4 = commit(&backend, vec![put(k(&prefix, "later"), "l")]).await;
    commit(&backend, vec![put(k(&prefix, "later"), "l2")]).await;
    assert!(matches!(
        backend.changes_between(prefix.as_bytes(), r3, r4).await,
        Ok(None)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_a_url_path_cannot_carry_are_listed_exactly() {
    let server = ConsulServer::start();
    let backend = connect(&server).await;
    let unique = server.prefix("slash");
    let prefix = format!("/{unique}");
    let sibling = format!("/{}", unique.trim_end_matches('/'));
    let r = commit(
        &backend,
        vec![
            put(k(&prefix, "a"), "1"),
            put(k(&prefix, "b//c"), "2"),
            put(k(&prefix, "../d"), "3"),
            put(Key::from(format!("{sibling}-2/x").as_str()), "not mine"),
        ],
    )
    .await;
    let snap = backend
        .snapshot(prefix.as_bytes(), None)
        .await
        .expect("snapshot");
    let keys: Vec<_> = snap.entries.iter().map(|e| e.key.clone()).collect();
    assert_eq!(
        keys,
        vec![k(&prefix, "../d"), k(&prefix, "a"), k(&prefix, "b//c")]
    );
    assert!(snap.entries.iter().all(|e| e.mod_revision == r));
    let mut stream = backend
        .watch(prefix.as_bytes(), snap.revision.next())
        .await
        .expect("watch");
    let r2 = commit(
        &backend,
        vec![WriteOp::Delete {
            key: k(&prefix, "b//c"),
            expect: Precondition::ModRevision(r),
        }],
    )
    .await;
    let (rev, changes) = next_changes(&mut stream, "the delete").await;
    assert_eq!(rev, r2);
    assert_eq!(changes.len(), 1);
    assert_eq!(
        (&changes[0].key, &changes[0].kind),
        (&k(&prefix, "b//c"), &ChangeKind::Delete)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_hold_claims_until_released_or_revoked() {
    let server = ConsulServer::start();
    let backend = connect(&server).await;
    let prefix = server.prefix("owners");
    let lease = backend
        .grant_lease("kvgit test node-1", Duration::from_secs(3))
        .await
        .expect("grant");
    assert_eq!(lease.ttl, Duration::from_secs(10), "Consul's minimum TTL");
    let other = backend
        .grant_lease("kvgit test node-2", Duration::from_secs(30))
        .await
        .expect("grant");
    assert_eq!(other.ttl, Duration::from_secs(30));
    let area = k(&prefix, "area-1");
    let epoch = backend
        .claim(&area, b"node-1", &lease.id)
        .await
        .expect("claim")
        .expect("free key");
    assert_eq!(
        backend
            .claim(&area, b"node-1", &lease.id)
            .await
            .expect("again"),
        Some(epoch),
        "already held: same epoch, nothing written"
    );
    assert_eq!(
        backend
            .claim(&area, b"node-2", &other.id)
            .await
            .expect("other"),
        None
    );
    // A key Go's router would redirect goes through the txn `lock` verb.
    let odd = k(&prefix, "area//2");
    let odd_epoch = backend
        .claim(&odd, b"node-2", &other.id)
        .await
        .expect("claim")
        .expect("free key");
    let claims = backend.claims(prefix.as_bytes()).await.expect("claims");
    let summary: Vec<_> = claims
        .iter()
        .map(|c| (c.key.clone(), c.value.clone(), c.lease.clone(), c.epoch))
        .collect();
    assert_eq!(
        summary,
        vec![
            (area.clone(), b"node-1".to_vec(), lease.id.clone(), epoch),
            (odd.clone(), b"node-2".to_vec(), other.id.clone(), odd_epoch),
        ]
    );
    assert!(matches!(
        backend.renew_lease(&lease.id).await.expect("renew"),
        Renewal::Alive { ttl } if ttl == Duration::from_secs(10)
    ));
    // Releasing with the wrong lease does nothing; with the right one deletes the key.
    backend
        .release(&area, &other.id)
        .await
        .expect("release by another");
    assert_eq!(
        backend
            .claims(prefix.as_bytes())
            .await
            .expect("claims")
            .len(),
        2
    );
    backend.release(&area, &lease.id).await.expect("release");
    let left = backend.claims(prefix.as_bytes()).await.expect("claims");
    assert_eq!(left.len(), 1);
    assert!(backend
        .snapshot(prefix.as_bytes(), None)
        .await
        .expect("snapshot")
        .entries
        .iter()
        .all(|e| e.key != area));
    // A new claim after release has a larger epoch.
    let again = backend
        .claim(&area, b"node-2", &other.id)
        .await
        .expect("claim")
        .expect("free again");
    assert!(again > epoch, "{again} after {epoch}");
    // Revoking the lease drops every claim made with it (behavior "delete").
    backend.revoke_lease(&other.id).await.expect("revoke");
    assert!(backend
        .claims(prefix.as_bytes())
        .await
        .expect("claims")
        .is_empty());
    assert!(backend
        .snapshot(prefix.as_bytes(), None)
        .await
        .expect("snapshot")
        .entries
        .is_empty());
    assert_eq!(
        backend.renew_lease(&other.id).await.expect("renew"),
        Renewal::Gone
    );
    backend
        .revoke_lease(&other.id)
        .await
        .expect("revoking twice is fine");
    backend
        .revoke_lease(&LeaseId("00000000-0000-0000-0000-000000000000".into()))
        .await
        .expect("unknown lease");
    // A claim with a dead lease is an error, not "held by another".
    match backend.claim(&area, b"x", &other.id).await {
        Err(BackendError::Refused { .. }) => {}
        other => panic!("claim with a revoked lease: expected Refused, got {other:?}"),
    }
    backend.revoke_lease(&lease.id).await.expect("revoke");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_nothing_fails_fast_and_clearly() {
    let port = free_port();
    let cfg = ConsulConfig {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
        ..config(&format!("http://127.0.0.1:{port}"), None)
    };
    let started = Instant::now();
    let err = ConsulBackend::connect(cfg)
        .await
        .expect_err("nothing listens");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(err, ConnectError::Unreachable { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains(&port.to_string()), "{err}");
}

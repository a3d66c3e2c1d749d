//! In-process tests of the engine and the service on `sync_core::MemoryBackend`: export,
//! apply, flush at shutdown, epochs on commits, integrate and hand-over between two nodes.
//! Fast and deterministic; the real failure modes stay in the process tests (tests/).

use super::run;
use crate::config;
use crate::engine::testkit::{delete_all, put};
use crate::engine::{apply, export, Context};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use sync_core::{KvBackend, MemoryBackend, Precondition};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long anything here may take to show; the service runs with 100 ms batches.
const SOON: Duration = Duration::from_secs(20);

/// One area of a test config: (name, prefix, path, mode).
type AreaDef<'a> = (&'a str, &'a str, &'a str, &'a str);

fn write_config(dir: &Path, node: &str, remote: Option<&Path>, areas: &[AreaDef<'_>]) -> PathBuf {
    let remote = remote.map_or(String::new(), |r| format!("remote = \"{}\"\n", r.display()));
    let mut toml = format!(
        "[git]\nrepo = \"state.git\"\n{remote}\
         [sync]\nnode = \"{node}\"\nbatch_window = \"100ms\"\npush_interval = \"200ms\"\n\
         fetch_interval = \"300ms\"\nlease_ttl = \"2s\"\n[server]\nlisten = \"127.0.0.1:0\"\n"
    );
    for (name, prefix, path, mode) in areas {
        toml.push_str(&format!(
            "[[area]]\nname = \"{name}\"\nprefix = \"{prefix}\"\npath = \"{path}\"\nmode = \"{mode}\"\n"
        ));
    }
    let file = dir.join("kvgit.toml");
    std::fs::write(&file, toml).expect("write config");
    file
}

async fn engine(
    dir: &Path,
    node: &str,
    backend: &MemoryBackend,
    remote: Option<&Path>,
    areas: &[AreaDef<'_>],
) -> Context {
    let file = write_config(dir, node, remote, areas);
    let cfg = config::load(&file).unwrap_or_else(|e| panic!("config: {e}"));
    Context::connect(cfg)
        .await
        .expect("open the repository")
        .with_backend(Arc::new(backend.clone()))
}

/// `git --git-dir REPO ARGS…`, stdout; None when git fails (no branch yet).
fn git(repo: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(repo)
        .args(args)
        .output()
        .expect("run git");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + SOON;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `Kvgit-Epoch` of every commit of `rev`'s history that has one, newest first.
fn epochs(repo: &Path, rev: &str) -> Vec<u64> {
    git(
        repo,
        &["log", "--format=%(trailers:key=Kvgit-Epoch,valueonly)", rev],
    )
    .unwrap_or_default()
    .lines()
    .filter_map(|l| l.trim().parse().ok())
    .collect()
}

/// A running service on its own task.
struct Node {
    shutdown: CancellationToken,
    task: JoinHandle<u8>,
}

impl Node {
    async fn start(ctx: Context) -> Node {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(ctx, listener, shutdown.clone()));
        Node { shutdown, task }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let code = tokio::time::timeout(SOON, self.task)
            .await
            .expect("stops within its deadline")
            .expect("service task");
        assert_eq!(code, 0);
    }
}

/// The epoch of the claim on `area`, as the backend holds it now.
async fn claim_epoch(backend: &MemoryBackend, area: &str) -> Option<u64> {
    let key = format!("kvgit/ownership/areas/{area}");
    backend
        .claims(b"kvgit/ownership/areas/")
        .await
        .expect("claims")
        .into_iter()
        .find(|c| c.key.0 == key.as_bytes())
        .map(|c| c.epoch.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_apply_restores_the_store_in_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = MemoryBackend::new();
    // git-to-kv: what the store lost is drift that apply writes back.
    let areas = [("a", "/a/", "a", "git-to-kv")];
    let ctx = engine(dir.path(), "n1", &backend, None, &areas).await;
    for i in 0..20 {
        put(&backend, &format!("/a/k{i:02}"), &format!("v{i}")).await;
    }
    let reports = export::run(&ctx, None, false).await.expect("export");
    assert_eq!(reports[0].changes, 20);
    let repo = dir.path().join("state.git");
    assert_eq!(git(&repo, &["show", "main:a/k07"]).as_deref(), Some("v7"));

    // Wipe the store behind kvgit's back; apply brings every key back.
    delete_all(&backend, (0..20).map(|i| format!("/a/k{i:02}"))).await;
    let plans = apply::plan_all(&ctx, None, None, true).await.expect("plan");
    assert_eq!(plans[0].count(apply::OpKind::Add), 20);
    apply::apply(&ctx, plans, None, true, |_| {})
        .await
        .expect("apply");
    let snap = backend.snapshot(b"/a/", None).await.expect("snapshot");
    assert_eq!(snap.entries.len(), 20);
    assert_eq!(snap.entries[7].value, b"v7");
}

/// A plan sizes its values a few keys at a time (three in unit tests): every op still has
/// its own value's size, the preconditions of a run of new keys carry over from one part to
/// the next, and what is written is what Git holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_sized_in_parts_has_each_values_size_and_writes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = MemoryBackend::new();
    let areas = [("a", "/a/", "a", "git-to-kv")];
    let ctx = engine(dir.path(), "n1", &backend, None, &areas).await;
    let value = |i: usize| "x".repeat(i * 7 + 1);
    for i in 0..20 {
        put(&backend, &format!("/a/k{i:02}"), &value(i)).await;
    }
    export::run(&ctx, None, false).await.expect("export");
    // Keys 3..10 lost (a run of new keys across parts), 14 and 17 drifted.
    delete_all(&backend, (3..10).map(|i| format!("/a/k{i:02}"))).await;
    put(&backend, "/a/k14", "drifted").await;
    put(&backend, "/a/k17", "drifted too").await;

    let plans = apply::plan_all(&ctx, None, None, true).await.expect("plan");
    let ops = &plans[0].ops;
    let keys: Vec<String> = ops.iter().map(|o| o.key.to_string()).collect();
    let want: Vec<String> = [3, 4, 5, 6, 7, 8, 9, 14, 17]
        .iter()
        .map(|i| format!("/a/k{i:02}"))
        .collect();
    assert_eq!(keys, want);
    for (op, i) in ops.iter().zip([3, 4, 5, 6, 7, 8, 9, 14, 17]) {
        assert_eq!(op.value_size, value(i).len() as u64, "{}", op.key);
        assert_eq!(op.overwrites(), None, "{}", op.key);
        assert_eq!(op.pointer(), None, "{}", op.key);
    }
    assert_eq!(ops[0].expect, Precondition::Absent);
    assert!(
        ops[1..7]
            .iter()
            .all(|o| o.expect == Precondition::AbsentInRun),
        "{:?}",
        ops.iter().map(|o| o.expect).collect::<Vec<_>>()
    );
    assert!(matches!(ops[7].expect, Precondition::ModRevision(_)));

    apply::apply(&ctx, plans, None, true, |_| {})
        .await
        .expect("apply");
    let snap = backend.snapshot(b"/a/", None).await.expect("snapshot");
    assert_eq!(snap.entries.len(), 20);
    for (i, e) in snap.entries.iter().enumerate() {
        assert_eq!(e.value, value(i).as_bytes(), "{}", e.key);
    }
}

/// The `Kvgit-Epoch` of each commit is the epoch of the claim the node held when it
/// committed: after its lease is revoked and the area claimed again, new commits carry the
/// new epoch, and no commit carries any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commits_epoch_is_the_one_its_fence_check_passed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = MemoryBackend::new();
    let areas = [("a", "/a/", "a", "kv-to-git")];
    let node = Node::start(engine(dir.path(), "n1", &backend, None, &areas).await).await;
    let repo = dir.path().join("state.git");
    put(&backend, "/a/k1", "1").await;
    wait_for("k1 committed", || {
        git(&repo, &["show", "main:a/k1"]).is_some()
    })
    .await;
    let first = claim_epoch(&backend, "a").await.expect("a claim");
    assert_eq!(epochs(&repo, "main").first(), Some(&first));

    // Take the lease away: the node must claim the area again, under a newer epoch.
    let claim = backend
        .claims(b"kvgit/ownership/areas/")
        .await
        .expect("claims")
        .remove(0);
    backend.revoke_lease(&claim.lease).await.expect("revoke");
    let mut second = None;
    let deadline = Instant::now() + SOON;
    while second.is_none_or(|e| e == first) {
        assert!(Instant::now() < deadline, "the area was not claimed again");
        tokio::time::sleep(Duration::from_millis(50)).await;
        second = claim_epoch(&backend, "a").await;
    }
    let second = second.expect("claimed again");
    assert!(second > first);
    put(&backend, "/a/k2", "2").await;
    wait_for("k2 committed", || {
        git(&repo, &["show", "main:a/k2"]).is_some()
    })
    .await;
    let stamped = epochs(&repo, "main");
    assert_eq!(stamped.first(), Some(&second), "{stamped:?}");
    assert!(
        stamped.iter().all(|e| *e == first || *e == second),
        "only the claims' epochs: {stamped:?}"
    );
    let cp = epochs(&repo, "refs/kvgit/checkpoints/a");
    assert_eq!(cp.first(), Some(&second), "the checkpoint too: {cp:?}");
    node.stop().await;
}

/// Shutdown commits what is pending even when the batch window has not passed yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_the_open_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = MemoryBackend::new();
    let areas = [("a", "/a/", "a", "kv-to-git")];
    let ctx = engine(dir.path(), "n1", &backend, None, &areas).await;
    let repo = dir.path().join("state.git");
    let node = Node::start(ctx).await;
    put(&backend, "/a/first", "1").await;
    wait_for("first committed", || {
        git(&repo, &["show", "main:a/first"]).is_some()
    })
    .await;
    put(&backend, "/a/last", "2").await;
    node.stop().await;
    assert_eq!(git(&repo, &["show", "main:a/last"]).as_deref(), Some("2"));
}

/// Two nodes, one store, one remote: each owns an area; when one stops, the other takes
/// its area over from the remote's checkpoint and commits what follows, nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_area_is_handed_over_when_its_owner_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = dir.path().join("remote.git");
    assert!(Command::new("git")
        .args(["init", "-q", "--bare", "-b", "main"])
        .arg(&remote)
        .status()
        .expect("git init")
        .success());
    let backend = MemoryBackend::new();
    let areas = [
        ("a", "/a/", "a", "kv-to-git"),
        ("b", "/b/", "b", "kv-to-git"),
    ];
    let (d1, d2) = (dir.path().join("n1"), dir.path().join("n2"));
    std::fs::create_dir_all(&d1).expect("mkdir");
    std::fs::create_dir_all(&d2).expect("mkdir");
    let n1 = Node::start(engine(&d1, "n1", &backend, Some(&remote), &areas).await).await;
    let n2 = Node::start(engine(&d2, "n2", &backend, Some(&remote), &areas).await).await;
    // Each area has an owner; which node is rendezvous hashing's business.
    let owners = |backend: MemoryBackend| async move {
        backend
            .claims(b"kvgit/ownership/areas/")
            .await
            .expect("claims")
            .into_iter()
            .map(|c| {
                (
                    String::from_utf8_lossy(&c.key.0).into_owned(),
                    String::from_utf8_lossy(&c.value).into_owned(),
                )
            })
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + SOON;
    while owners(backend.clone()).await.len() < 2 {
        assert!(Instant::now() < deadline, "both areas owned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    put(&backend, "/a/x", "1").await;
    put(&backend, "/b/x", "1").await;
    wait_for("both areas on the remote", || {
        git(&remote, &["show", "main:a/x"]).is_some()
            && git(&remote, &["show", "main:b/x"]).is_some()
    })
    .await;
    // Stop n2; n1 owns everything afterwards and commits the next changes of both areas.
    n2.stop().await;
    let deadline = Instant::now() + SOON;
    loop {
        let now = owners(backend.clone()).await;
        if now.len() == 2 && now.iter().all(|(_, node)| node == "n1") {
            break;
        }
        assert!(Instant::now() < deadline, "n1 takes every area: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    put(&backend, "/a/y", "2").await;
    put(&backend, "/b/y", "2").await;
    wait_for("n1 committed and pushed both", || {
        git(&remote, &["show", "main:a/y"]).is_some()
            && git(&remote, &["show", "main:b/y"]).is_some()
    })
    .await;
    n1.stop().await;
    // Along the remote's history each area's revisions only grow: nothing committed twice.
    for area in ["a", "b"] {
        let revs: Vec<u64> = git(
            &remote,
            &[
                "log",
                "--reverse",
                "--format=%(trailers:key=Kvgit-Revision,valueonly)",
                "main",
                "--",
                area,
            ],
        )
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
        assert!(
            revs.windows(2).all(|w| w[0] < w[1]),
            "area {area}: {revs:?}"
        );
    }
}

//! `kvgit serve` end to end: the real binary as a long-running process against a real etcd,
//! with a bare repository on disk as the remote, checked the way an operator would check
//! it (etcd prefix reads, `git ls-tree`/`cat-file`/`log` on the local and remote repositories,
//! `/metrics`, `/status`, `/readyz`, exit codes).
//!
//! Intervals are fast (batch 200ms, push 500ms, fetch 1s) and every wait is a bounded poll.

use etcd_client::{Client, Txn, TxnOp};
use kvgit_tests::etcd::EtcdServer;
use kvgit_tests::kvgit::{Area, Workspace};
use kvgit_tests::serve::{
    commit_count, diff, etcd_files, git_files, log, poll_until, poll_until_async, rev_parse,
    trailers, LogEntry, Remote, Serve, ServeConfig,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use sync_core::Revision;

const ENTRIES: Area<'static> = Area {
    name: "entries",
    prefix: "/t/entries/",
    path: "entries",
    mode: "both",
};
const EVENTS: Area<'static> = Area {
    name: "events",
    prefix: "/t/events/",
    path: "events",
    mode: "kv-to-git",
};
const ROUTES: Area<'static> = Area {
    name: "routes",
    prefix: "/t/routes/",
    path: "routes",
    mode: "git-to-kv",
};

const MAIN: &str = "refs/heads/main";
const CONVERGE: Duration = Duration::from_secs(30);

async fn put(c: &mut Client, k: &str, v: &str) -> u64 {
    let resp = c.put(k, v, None).await.expect("etcd put");
    resp.header().expect("header").revision() as u64
}

async fn del(c: &mut Client, k: &str) -> u64 {
    let resp = c.delete(k, None).await.expect("etcd delete");
    assert_eq!(resp.deleted(), 1, "{k} existed");
    resp.header().expect("header").revision() as u64
}

async fn get(c: &mut Client, k: &str) -> Option<Vec<u8>> {
    let resp = c.get(k, None).await.expect("etcd get");
    resp.kvs().first().map(|kv| kv.value().to_vec())
}

async fn mod_revision(c: &mut Client, k: &str) -> u64 {
    let resp = c.get(k, None).await.expect("etcd get");
    resp.kvs().first().expect("key exists").mod_revision() as u64
}

/// Whether every area of `repo` at `rev` holds exactly etcd's keys and values.
async fn same(c: &Client, repo: &Path, rev: &str, areas: &[Area<'_>]) -> bool {
    let mut c = c.clone();
    for a in areas {
        if etcd_files(&mut c, a.prefix).await != git_files(repo, rev, a.path) {
            return false;
        }
    }
    true
}

/// Waits until `repo` at `rev` holds exactly etcd's keys and values in every area; panics
/// with the difference and the serve log otherwise.
async fn wait_converged(serve: &Serve, c: &Client, repo: &Path, rev: &str, areas: &[Area<'_>]) {
    let ok = poll_until_async(CONVERGE, || same(c, repo, rev, areas)).await;
    if !ok {
        let mut c = c.clone();
        let mut report = String::new();
        for a in areas {
            let d = diff(
                &etcd_files(&mut c, a.prefix).await,
                &git_files(repo, rev, a.path),
            );
            if !d.is_empty() {
                report.push_str(&format!("area {}:\n{d}\n", a.name));
            }
        }
        serve.fail(&format!(
            "{} {rev} did not converge to etcd within {CONVERGE:?}:\n{report}",
            repo.display()
        ));
    }
}

/// Waits until the remote's main is the local main (everything pushed).
/// Serve with the fast test config and `remote`, once it is ready, has committed what etcd
/// holds and has pushed it.
async fn start_synced(
    ws: &Workspace,
    etcd: &EtcdServer,
    c: &Client,
    remote: &Remote,
    areas: &[Area<'_>],
) -> Serve {
    let serve = Serve::start(
        ws,
        etcd.endpoint(),
        &ServeConfig::fast(areas).remote(remote),
    );
    serve.wait_ready();
    wait_converged(&serve, c, &ws.repo, MAIN, areas).await;
    wait_pushed(&serve, ws, remote);
    serve
}

fn wait_pushed(serve: &Serve, ws: &Workspace, remote: &Remote) {
    serve.wait_until(CONVERGE, "the remote to hold the local branch", || {
        let local = rev_parse(&ws.repo, MAIN);
        local.is_some() && local == remote.tip()
    });
}

/// The files a commit changed against its first parent.
fn changed_paths(repo: &Path, id: &str) -> Vec<String> {
    let raw = kvgit_tests::kvgit::git_in(
        repo,
        &[
            "diff-tree",
            "--root",
            "--no-commit-id",
            "-r",
            "--name-only",
            id,
        ],
    );
    String::from_utf8_lossy(&raw)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Checks one kvgit commit against the SPEC's format and returns (area, revision).
fn kvgit_commit(repo: &Path, e: &LogEntry, areas: &[Area<'_>]) -> (String, u64) {
    let t = trailers(&e.message);
    let area = t
        .get("Kvgit-Area")
        .unwrap_or_else(|| panic!("commit {} has no Kvgit-Area: {:?}", e.id, e.message))
        .clone();
    let a = areas
        .iter()
        .find(|a| a.name == area)
        .unwrap_or_else(|| panic!("commit {} names unknown area {area}", e.id));
    let rev: u64 = t
        .get("Kvgit-Revision")
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "commit {} has no numeric Kvgit-Revision: {:?}",
                e.id, e.message
            )
        });
    let cluster = t.get("Kvgit-Cluster").map(String::as_str).unwrap_or("");
    assert!(!cluster.is_empty(), "commit {} has no Kvgit-Cluster", e.id);
    assert_eq!(
        t.get("Kvgit-Node").map(String::as_str),
        Some("test-node"),
        "commit {}",
        e.id
    );
    let summary = e.message.lines().next().unwrap_or("");
    assert!(
        summary.starts_with(&format!("{area}: "))
            && summary.ends_with(&format!(" up to revision {rev}")),
        "commit {} summary {summary:?}",
        e.id
    );
    assert_eq!(
        e.message.lines().nth(1),
        Some(""),
        "a blank line after the summary: {:?}",
        e.message
    );
    for p in changed_paths(repo, &e.id) {
        assert!(
            p.starts_with(&format!("{}/", a.path)),
            "commit {} of area {area} touches {p}",
            e.id
        );
    }
    (area, rev)
}

/// Along the history (newest first), each area's `Kvgit-Revision` strictly decreases:
/// no revision committed twice, none out of order. Returns the commits per area.
fn revisions_strictly_increase(repo: &Path, areas: &[Area<'_>]) -> BTreeMap<String, Vec<u64>> {
    let mut per_area: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in log(repo, MAIN) {
        if !trailers(&e.message).contains_key("Kvgit-Area") {
            continue;
        }
        let (area, rev) = kvgit_commit(repo, &e, areas);
        per_area.entry(area).or_default().push(rev);
    }
    for (area, revs) in &mut per_area {
        revs.reverse();
        assert!(
            revs.windows(2).all(|w| w[0] < w[1]),
            "Kvgit-Revision of area {area} must strictly increase along the history: {revs:?}"
        );
    }
    per_area
}

fn assert_linear(repo: &Path) {
    for e in log(repo, MAIN) {
        assert!(
            e.parents.len() <= 1,
            "history must stay linear: {} has parents {:?}",
            e.id,
            e.parents
        );
    }
}

fn is_ancestor(repo: &Path, ancestor: &str, of: &str) -> bool {
    std::process::Command::new("git")
        .arg("--git-dir")
        .arg(repo)
        .args(["merge-base", "--is-ancestor", ancestor, of])
        .status()
        .expect("spawn git")
        .success()
}

fn metric(serve: &Serve, series: &str) -> f64 {
    serve
        .metric(series)
        .unwrap_or_else(|| serve.fail(&format!("{series} missing from /metrics")))
}

fn area_status<'j>(status: &'j serde_json::Value, area: &str) -> &'j serde_json::Value {
    status["areas"]
        .as_array()
        .and_then(|l| l.iter().find(|a| a["area"] == area))
        .unwrap_or_else(|| panic!("/status has no area {area}: {status}"))
}

// 1 ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn follows_puts_and_deletes_in_two_areas_and_reaches_the_remote() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let remote = Remote::init(ws.dir.path());
    let areas = [ENTRIES, EVENTS];
    for i in 0..5 {
        put(&mut c, &format!("/t/entries/node-{i}/status"), "up").await;
        put(&mut c, &format!("/t/events/e{i}"), &format!("event {i}")).await;
    }
    put(&mut c, "/t/other/untouched", "x").await;
    let serve = Serve::start(
        &ws,
        etcd.endpoint(),
        &ServeConfig::fast(&areas).remote(&remote),
    );
    serve.wait_ready();
    wait_converged(&serve, &c, &ws.repo, MAIN, &areas).await;

    // A stream of puts and deletes in both areas, in rounds the batcher sees separately.
    for round in 0..3 {
        for i in 0..5 {
            put(
                &mut c,
                &format!("/t/entries/node-{i}/status"),
                &format!("r{round}"),
            )
            .await;
            put(&mut c, &format!("/t/events/r{round}-{i}"), "new").await;
        }
        put(
            &mut c,
            &format!("/t/entries/node-new-{round}/status"),
            "joining",
        )
        .await;
        del(&mut c, &format!("/t/events/e{round}")).await;
        if round > 0 {
            del(&mut c, &format!("/t/entries/node-new-{}/status", round - 1)).await;
        }
        wait_converged(&serve, &c, &ws.repo, MAIN, &areas).await;
    }
    assert_eq!(
        get(&mut c, "/t/entries/node-new-1/status").await,
        None,
        "the test deleted it"
    );

    // Everything reaches the remote: branch and checkpoints.
    wait_pushed(&serve, &ws, &remote);
    wait_converged(&serve, &c, &remote.path, MAIN, &areas).await;
    for a in &areas {
        let local = rev_parse(&ws.repo, &format!("refs/kvgit/checkpoints/{}", a.name));
        assert!(local.is_some(), "checkpoint of {}", a.name);
        serve.wait_until(CONVERGE, "the checkpoint refs on the remote", || {
            remote.rev(&format!("refs/kvgit/checkpoints/{}", a.name))
                == rev_parse(&ws.repo, &format!("refs/kvgit/checkpoints/{}", a.name))
        });
    }
    let root = remote.git(&["ls-tree", "--name-only", MAIN]);
    assert_eq!(
        root.lines().collect::<Vec<_>>(),
        ["entries", "events"],
        "keys outside every area stay out"
    );

    // Every commit is a kvgit commit with the SPEC's trailers, touching only its area.
    let per_area = revisions_strictly_increase(&remote.path, &areas);
    assert!(
        per_area.get("entries").is_some_and(|r| r.len() >= 4),
        "a commit per batch of entries: {per_area:?}"
    );
    assert!(
        per_area.get("events").is_some_and(|r| r.len() >= 4),
        "a commit per batch of events: {per_area:?}"
    );
    assert_eq!(
        remote.commit_count(),
        per_area.values().map(Vec::len).sum::<usize>()
    );
    assert_linear(&remote.path);

    let commits = metric(&serve, r#"kvgit_commits_total{area="events"}"#);
    assert!(commits >= 3.0, "kvgit_commits_total for events: {commits}");
    let deletes = metric(&serve, r#"kvgit_events_total{area="events",op="delete"}"#);
    assert_eq!(deletes, 3.0, "three deletes seen in events");
    serve.wait_until(CONVERGE, "kvgit_push_total{result=\"ok\"} > 0", || {
        serve
            .metric(r#"kvgit_push_total{result="ok"}"#)
            .is_some_and(|n| n > 0.0)
    });
}

// 2 ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn kill9_mid_stream_then_restart_converges_without_double_commits() {
    const TXNS: usize = 1000;
    const PER_TXN: usize = 3;
    let etcd = EtcdServer::start();
    let c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let remote = Remote::init(ws.dir.path());
    let areas = [ENTRIES];
    let cfg = ServeConfig::fast(&areas).remote(&remote);
    let mut serve = Serve::start(&ws, etcd.endpoint(), &cfg);
    serve.wait_ready();

    // 3000 keys in transactions of 3, with a delete of an earlier key every 20 transactions.
    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let mut c = c.clone();
        let written = written.clone();
        tokio::spawn(async move {
            for t in 0..TXNS {
                let mut ops: Vec<TxnOp> = (0..PER_TXN)
                    .map(|j| {
                        let k = t * PER_TXN + j;
                        TxnOp::put(format!("/t/entries/k{k:05}"), format!("v{k}-{t}"), None)
                    })
                    .collect();
                if t % 20 == 19 {
                    ops.push(TxnOp::delete(
                        format!("/t/entries/k{:05}", (t - 10) * PER_TXN),
                        None,
                    ));
                }
                c.txn(Txn::new().and_then(ops)).await.expect("etcd txn");
                written.fetch_add(PER_TXN, Ordering::SeqCst);
            }
        })
    };
    // Killed twice mid-stream (after ~1000 and ~2000 keys), restarted at once each time.
    // The newest revision committed before the last kill: a commit above it was made after
    // a restart. (Counting commits would not do: a restarted node that is not yet the owner
    // rightly drops the dead one's unpushed commits, which the owner commits again.)
    let mut before: u64 = 0;
    for kill_at in [1000, 2000] {
        serve
            .wait_until_async(CONVERGE, &format!("{kill_at} keys written"), || {
                let n = written.load(Ordering::SeqCst);
                async move { n >= kill_at }
            })
            .await;
        serve.kill9();
        if let Some(revs) = revisions_strictly_increase(&ws.repo, &areas).get("entries") {
            before = before.max(revs.last().copied().unwrap_or(0));
        }
        let at_kill = written.load(Ordering::SeqCst);
        assert!(
            at_kill < TXNS * PER_TXN,
            "the stream must still be running at the kill ({at_kill} written)"
        );
        serve = Serve::start(&ws, etcd.endpoint(), &cfg);
    }
    writer.await.expect("writer task");
    wait_converged(&serve, &c, &ws.repo, MAIN, &areas).await;
    let mut cc = c.clone();
    let live = etcd_files(&mut cc, ENTRIES.prefix).await;
    assert_eq!(
        live.len(),
        TXNS * PER_TXN - TXNS / 20,
        "keys in etcd\n{}",
        serve.log_tail(60)
    );

    let per_area = revisions_strictly_increase(&ws.repo, &areas);
    let revs = &per_area["entries"];
    assert!(
        revs.last().is_some_and(|last| *last > before),
        "a commit after the restart: revision {before} before the kill, {revs:?} now"
    );
    // Everything is pushed in the end, and the remote holds the same history.
    wait_pushed(&serve, &ws, &remote);
    wait_converged(&serve, &c, &remote.path, MAIN, &areas).await;
    assert_linear(&remote.path);
}

// 3 ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn compaction_while_down_resyncs_including_deletes() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let remote = Remote::init(ws.dir.path());
    let areas = [ENTRIES, EVENTS];
    let cfg = ServeConfig::fast(&areas).remote(&remote);
    let mut serve = Serve::start(&ws, etcd.endpoint(), &cfg);
    serve.wait_ready();
    for i in 0..20 {
        put(&mut c, &format!("/t/entries/k{i:02}"), "one").await;
        put(&mut c, &format!("/t/events/k{i:02}"), "one").await;
    }
    wait_converged(&serve, &c, &ws.repo, MAIN, &areas).await;
    let (status, _) = serve.terminate();
    assert!(status.success(), "serve exited with {status}");
    let checkpoint_before = rev_parse(&ws.repo, "refs/kvgit/checkpoints/entries");

    // While it is down: changes, additions, deletions; then history is compacted away.
    let mut rev = 0;
    for a in &areas {
        for i in 0..5 {
            put(&mut c, &format!("{}k{i:02}", a.prefix), "two").await;
            put(&mut c, &format!("{}new{i:02}", a.prefix), "added").await;
        }
        for i in 10..13 {
            rev = del(&mut c, &format!("{}k{i:02}", a.prefix)).await;
        }
    }
    etcd.compact(Revision(rev)).await;

    let serve = Serve::start(&ws, etcd.endpoint(), &cfg);
    serve.wait_ready();
    wait_converged(&serve, &c, &ws.repo, MAIN, &areas).await;
    for a in &areas {
        let files = git_files(&ws.repo, MAIN, a.path);
        for i in 10..13 {
            assert!(
                !files.contains_key(&format!("k{i:02}")),
                "{}: deleted key k{i:02} still in Git",
                a.name
            );
        }
        assert_eq!(files.get("new00").map(Vec::as_slice), Some(&b"added"[..]));
        assert_eq!(files.get("k00").map(Vec::as_slice), Some(&b"two"[..]));
        let series = format!(
            r#"kvgit_resyncs_total{{area="{}",reason="compacted"}}"#,
            a.name
        );
        let n = metric(&serve, &series);
        assert!(n >= 1.0, "{series} = {n}");
    }
    assert_ne!(
        rev_parse(&ws.repo, "refs/kvgit/checkpoints/entries"),
        checkpoint_before,
        "the checkpoint moved past the compaction"
    );
    wait_pushed(&serve, &ws, &remote);
    wait_converged(&serve, &c, &remote.path, MAIN, &areas).await;
    revisions_strictly_increase(&remote.path, &areas);
}

// 4 ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_persons_commit_reaches_etcd_after_post_sync_without_echo() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let remote = Remote::init(ws.dir.path());
    let areas = [ENTRIES, ROUTES];
    for k in ["a", "b", "c", "d"] {
        put(&mut c, &format!("/t/entries/{k}"), "from-kv").await;
    }
    // A long fetch interval: only POST /sync brings the commit in.
    let cfg = ServeConfig {
        fetch_interval: "60s",
        ..ServeConfig::fast(&areas).remote(&remote)
    };
    let serve = Serve::start(&ws, etcd.endpoint(), &cfg);
    serve.wait_ready();
    wait_converged(&serve, &c, &ws.repo, MAIN, &areas).await;
    wait_pushed(&serve, &ws, &remote);

    let person = remote.person_commits(
        ws.dir.path(),
        &[
            ("entries/a", Some(b"from-git")),
            ("entries/c", None),
            ("routes/api", Some(b"node-1,node-2")),
        ],
        "route api, change a, remove c",
    );
    serve.sync_now();
    serve
        .wait_until_async(CONVERGE, "the person's commit in etcd", || {
            let mut c = c.clone();
            async move {
                get(&mut c, "/t/entries/a").await.as_deref() == Some(&b"from-git"[..])
                    && get(&mut c, "/t/entries/c").await.is_none()
                    && get(&mut c, "/t/routes/api").await.as_deref() == Some(&b"node-1,node-2"[..])
            }
        })
        .await;
    assert_eq!(
        get(&mut c, "/t/entries/b").await.as_deref(),
        Some(&b"from-kv"[..])
    );
    // The counters move right after the writes.
    for (series, want) in [
        (r#"kvgit_apply_keys_total{area="routes",op="put"}"#, 1.0),
        (r#"kvgit_apply_keys_total{area="entries",op="put"}"#, 1.0),
        (r#"kvgit_apply_keys_total{area="entries",op="delete"}"#, 1.0),
    ] {
        serve.wait_until(CONVERGE, &format!("{series} {want}"), || {
            serve.metric(series) == Some(want)
        });
    }
    wait_converged(&serve, &c, &ws.repo, MAIN, &areas).await;

    // Our own writes come back on the watch: wait until both areas have checkpointed past
    // them, then watch the remote for a few push intervals: no echo commit.
    for (area, key) in [("entries", "/t/entries/a"), ("routes", "/t/routes/api")] {
        let written = mod_revision(&mut c, key).await as f64;
        let series = format!(r#"kvgit_checkpoint_revision{{area="{area}"}}"#);
        serve.wait_until(CONVERGE, &format!("{series} >= {written}"), || {
            serve.metric(&series).is_some_and(|r| r >= written)
        });
    }
    assert_eq!(remote.tip().as_deref(), Some(person.as_str()));
    let count = remote.commit_count();
    let moved = poll_until(Duration::from_millis(2500), || {
        remote.tip().as_deref() != Some(person.as_str())
            || rev_parse(&ws.repo, MAIN).as_deref() != Some(person.as_str())
    });
    if moved {
        serve.fail(&format!(
            "an echo commit appeared after applying the person's commit: remote {:?}, local {:?}\n{}",
            remote.tip(),
            rev_parse(&ws.repo, MAIN),
            remote.git(&["log", "-3", "--format=%H %an %s", MAIN])
        ));
    }
    assert_eq!(remote.commit_count(), count);
    assert_eq!(
        metric(&serve, r#"kvgit_conflicts_total{area="entries"}"#),
        0.0
    );
}

// 5 ------------------------------------------------------------------------------------

/// Sets up a conflict in a `both` area: `k` is "base" on both sides, then etcd gets "live"
/// while a person pushes "from-git", and the service syncs before its batch window ends.
/// Returns the running service.
async fn conflict_setup(
    etcd: &EtcdServer,
    c: &mut Client,
    ws: &Workspace,
    remote: &Remote,
    fetch_interval: &'static str,
) -> Serve {
    let areas = [ENTRIES];
    put(c, "/t/entries/k", "base").await;
    put(c, "/t/entries/other", "same").await;
    // A batch window long enough that the live change is still pending when Git arrives.
    let cfg = ServeConfig {
        batch_window: "4s",
        fetch_interval,
        ..ServeConfig::fast(&areas).remote(remote)
    };
    let serve = Serve::start(ws, etcd.endpoint(), &cfg);
    serve.wait_ready();
    wait_converged(&serve, c, &ws.repo, MAIN, &areas).await;
    wait_pushed(&serve, ws, remote);

    put(c, "/t/entries/k", "live").await;
    remote.person_commits(
        ws.dir.path(),
        &[("entries/k", Some(b"from-git"))],
        "k from git",
    );
    serve.sync_now();
    serve
        .wait_until_async(CONVERGE, "Git's value in etcd", || {
            let mut c = c.clone();
            async move { get(&mut c, "/t/entries/k").await.as_deref() == Some(&b"from-git"[..]) }
        })
        .await;
    serve
}

/// `/status` lists the conflict by key; the value it overwrote is null there, since
/// `/status` has no token and values may be secrets (`server.ui_show_values` is off).
fn names_conflict(serve: &Serve) -> bool {
    let status = serve.status();
    let list = &area_status(&status, "entries")["last_conflicts"];
    list.as_array().is_some_and(|l| {
        l.iter()
            .any(|c| c["key"] == "/t/entries/k" && c["overwritten"].is_null())
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn both_sides_change_a_key_git_wins_and_the_conflict_is_reported() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let remote = Remote::init(ws.dir.path());
    // Only POST /sync fetches (after start-up), so the report is not replaced meanwhile.
    let serve = conflict_setup(&etcd, &mut c, &ws, &remote, "60s").await;

    serve.wait_until(
        Duration::from_secs(5),
        "/status to name the overwritten value",
        || names_conflict(&serve),
    );
    assert_eq!(
        metric(&serve, r#"kvgit_conflicts_total{area="entries"}"#),
        1.0
    );
    // The log (for operators only) is where serve records the value Git overwrote.
    assert!(
        serve
            .log_tail(200)
            .lines()
            .any(|l| l.contains("Git won a conflict") && l.contains("live")),
        "the serve log names the overwritten value: {}",
        serve.log_tail(40)
    );

    // The pending live event ("live", then our own "from-git") commits nothing: Git keeps
    // its value, etcd keeps Git's.
    let tip = remote.tip();
    serve.wait_until(CONVERGE, "the batch to be flushed", || {
        area_status(&serve.status(), "entries")["pending_events"] == 0
    });
    wait_converged(&serve, &c, &ws.repo, MAIN, &[ENTRIES]).await;
    let moved = poll_until(Duration::from_millis(1500), || remote.tip() != tip);
    assert!(
        !moved,
        "no commit after the conflict: {:?} -> {:?}",
        tip,
        remote.tip()
    );
    assert_eq!(
        git_files(&remote.path, MAIN, "entries")
            .get("k")
            .map(Vec::as_slice),
        Some(&b"from-git"[..])
    );
    assert_eq!(
        get(&mut c, "/t/entries/k").await.as_deref(),
        Some(&b"from-git"[..])
    );
    assert!(
        names_conflict(&serve),
        "the report stays until the next apply"
    );
}

/// The conflict must stay findable in `/status` (SPEC: "the overwritten live value is
/// recorded in the commit/apply report"; in `serve` no commit records it, the log holds
/// the value and `/status` the key): an unrelated later change in the area must not erase it.
#[tokio::test(flavor = "multi_thread")]
async fn conflict_report_survives_a_later_apply_of_the_area() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let remote = Remote::init(ws.dir.path());
    let serve = conflict_setup(&etcd, &mut c, &ws, &remote, "1s").await;
    serve.wait_until(
        Duration::from_secs(5),
        "/status to name the overwritten value",
        || names_conflict(&serve),
    );
    serve.wait_until(CONVERGE, "the batch to be flushed", || {
        area_status(&serve.status(), "entries")["pending_events"] == 0
    });
    // Later, an unrelated live change in the same area: committed, then the area is
    // re-planned by the next fetch (which applies nothing).
    put(&mut c, "/t/entries/unrelated", "x").await;
    wait_converged(&serve, &c, &ws.repo, MAIN, &[ENTRIES]).await;
    let gone = poll_until(Duration::from_secs(3), || !names_conflict(&serve));
    if gone {
        serve.fail(&format!(
            "the conflict on /t/entries/k vanished from /status after \
             a later apply that overwrote nothing: {}",
            area_status(&serve.status(), "entries")
        ));
    }
}

// 6 ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_second_writer_on_the_remote_is_kept_and_ours_replayed_on_top() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let remote = Remote::init(ws.dir.path());
    let areas = [ENTRIES, EVENTS];
    put(&mut c, "/t/entries/a", "0").await;
    put(&mut c, "/t/events/start", "0").await;
    let serve = start_synced(&ws, &etcd, &c, &remote, &areas).await;

    let mut theirs = Vec::new();
    for round in 0..3 {
        // Someone else pushes a file outside every area, then our keys change at once.
        let id = remote.person_commits(
            ws.dir.path(),
            &[(
                &format!("docs/notes-{round}.md"),
                Some(format!("notes {round}\n").as_bytes()),
            )],
            &format!("docs: notes {round}"),
        );
        theirs.push(id.clone());
        put(&mut c, "/t/entries/a", &format!("{}", round + 1)).await;
        for i in 0..3 {
            put(&mut c, &format!("/t/events/r{round}-{i}"), "x").await;
        }
        wait_converged(&serve, &c, &ws.repo, MAIN, &areas).await;
        wait_pushed(&serve, &ws, &remote);
        let tip = remote.tip().expect("remote tip");
        assert!(
            is_ancestor(&remote.path, &id, &tip),
            "the other writer's commit {id} must stay in the history of {tip}"
        );
    }

    // Their files are all there, unchanged, next to our areas; the history is linear.
    let docs = git_files(&remote.path, MAIN, "docs");
    for round in 0..3 {
        assert_eq!(
            docs.get(&format!("notes-{round}.md")).map(Vec::as_slice),
            Some(format!("notes {round}\n").as_bytes())
        );
    }
    wait_converged(&serve, &c, &remote.path, MAIN, &areas).await;
    assert_linear(&remote.path);
    let entries = log(&remote.path, MAIN);
    for e in &entries {
        if !trailers(&e.message).contains_key("Kvgit-Area") {
            assert!(
                theirs.contains(&e.id),
                "unexpected commit {}: {}",
                e.id,
                e.message
            );
        }
    }
    let per_area = revisions_strictly_increase(&remote.path, &areas);
    assert!(per_area["events"].len() >= 4, "{per_area:?}");
    // Nothing was forced (the remote refuses non-fast-forwards) and nothing failed.
    assert_eq!(metric(&serve, r#"kvgit_push_total{result="error"}"#), 0.0);
}

// 7 ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_remote_delays_pushes_only_and_loses_nothing() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let remote = Remote::init(ws.dir.path());
    let areas = [ENTRIES, EVENTS];
    put(&mut c, "/t/entries/a", "0").await;
    let serve = start_synced(&ws, &etcd, &c, &remote, &areas).await;
    let pushed = remote.commit_count();

    remote.take_away();
    for round in 0..4 {
        for i in 0..10 {
            put(&mut c, &format!("/t/events/r{round}-{i}"), "x").await;
        }
        put(&mut c, "/t/entries/a", &format!("{}", round + 1)).await;
        if round == 2 {
            del(&mut c, "/t/events/r0-0").await;
        }
        // Commits keep coming locally while the remote is gone.
        wait_converged(&serve, &c, &ws.repo, MAIN, &areas).await;
    }
    serve.wait_until(CONVERGE, r#"kvgit_push_total{result="error"} > 0"#, || {
        serve
            .metric(r#"kvgit_push_total{result="error"}"#)
            .is_some_and(|n| n > 0.0)
    });
    assert!(
        ws.commit_count() >= pushed + 4,
        "commits queue locally: {} local, {pushed} pushed",
        ws.commit_count()
    );
    let status = serve.status();
    assert!(
        status["push_error"].is_string(),
        "/status reports the push error: {status}"
    );
    let (code, body) = serve.get("/readyz");
    assert_eq!(
        code, 200,
        "an unreachable remote only delays pushes: {body}"
    );

    remote.restore();
    wait_pushed(&serve, &ws, &remote);
    wait_converged(&serve, &c, &remote.path, MAIN, &areas).await;
    assert!(remote.commit_count() >= pushed + 4);
    revisions_strictly_increase(&remote.path, &areas);
    serve.wait_until(CONVERGE, "/status push_error cleared", || {
        serve.status()["push_error"].is_null()
    });
}

/// A push kvgit gives up on (its `git.timeout` ran out) may still land on the remote: its
/// post-receive hook hangs after the refs moved. The next pass finds nothing to push, and
/// the push time operators alert on moves on all the same.
#[tokio::test(flavor = "multi_thread")]
async fn a_push_that_lands_after_it_timed_out_counts_as_pushed() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let remote = Remote::init(ws.dir.path());
    put(&mut c, "/t/entries/a", "0").await;
    let mut cfg = ServeConfig::fast(&[ENTRIES]).remote(&remote);
    cfg.git_extra = Some("timeout = \"2s\"\n".to_string());
    // Fetches between push passes: the pass after the timeout finds the remote caught up
    // instead of pushing again (which would say "up to date" and count as a push).
    cfg.push_interval = "3s";
    cfg.fetch_interval = "500ms";
    let serve = Serve::start(&ws, etcd.endpoint(), &cfg);
    serve.wait_ready();
    wait_converged(&serve, &c, &ws.repo, MAIN, &[ENTRIES]).await;
    wait_pushed(&serve, &ws, &remote);
    // The remote moves before the push returns and is recorded.
    serve.wait_until(CONVERGE, "the first push to be recorded", || {
        serve
            .metric("kvgit_last_push_success_timestamp_seconds")
            .is_some_and(|t| t > 0.0)
    });
    let pushed_at = metric(&serve, "kvgit_last_push_success_timestamp_seconds");

    let hook = remote.path.join("hooks/post-receive");
    std::fs::write(&hook, "#!/bin/sh\nsleep 6\n").expect("write the hook");
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("make the hook executable");
    put(&mut c, "/t/entries/a", "1").await;
    serve.wait_until(CONVERGE, "the push to time out", || {
        serve.status()["push_error"]
            .as_str()
            .is_some_and(|e| e.contains("did not finish within"))
    });
    // It landed: the refs moved before the hook hung.
    wait_converged(&serve, &c, &remote.path, MAIN, &[ENTRIES]).await;
    assert_eq!(remote.tip(), rev_parse(&ws.repo, MAIN));

    serve.wait_pushed_since(CONVERGE, "entries", pushed_at);
    // No second push was needed, and the failed one is counted as failed.
    assert_eq!(remote.tip(), rev_parse(&ws.repo, MAIN));
    assert!(metric(&serve, r#"kvgit_push_total{result="error"}"#) >= 1.0);
}

// 8 ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_service_makes_no_commits() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let remote = Remote::init(ws.dir.path());
    let areas = [ENTRIES, EVENTS, ROUTES];
    for i in 0..10 {
        put(&mut c, &format!("/t/entries/k{i}"), "v").await;
        put(&mut c, &format!("/t/events/k{i}"), "v").await;
    }
    let serve = Serve::start(
        &ws,
        etcd.endpoint(),
        &ServeConfig::fast(&areas).remote(&remote),
    );
    serve.wait_ready();
    wait_converged(&serve, &c, &ws.repo, MAIN, &[ENTRIES, EVENTS]).await;
    wait_pushed(&serve, &ws, &remote);
    remote.person_commits(ws.dir.path(), &[("routes/api", Some(b"r"))], "route");
    serve.sync_now();
    serve
        .wait_until_async(CONVERGE, "the route in etcd", || {
            let mut c = c.clone();
            async move { get(&mut c, "/t/routes/api").await.is_some() }
        })
        .await;
    let written = mod_revision(&mut c, "/t/routes/api").await as f64;
    serve.wait_until(CONVERGE, "routes checkpointed past the apply", || {
        serve
            .metric(r#"kvgit_checkpoint_revision{area="routes"}"#)
            .is_some_and(|r| r >= written)
    });
    wait_pushed(&serve, &ws, &remote);

    let (remote_count, local_count) = (remote.commit_count(), ws.commit_count());
    let commits: Vec<f64> = areas
        .iter()
        .map(|a| {
            metric(
                &serve,
                &format!(r#"kvgit_commits_total{{area="{}"}}"#, a.name),
            )
        })
        .collect();
    // Several batch windows, push intervals and fetches with nothing happening.
    let changed = poll_until(Duration::from_secs(3), || {
        remote.commit_count() != remote_count || ws.commit_count() != local_count
    });
    assert!(
        !changed,
        "an idle service committed: remote {remote_count} -> {}, local {local_count} -> {}\n{}",
        remote.commit_count(),
        ws.commit_count(),
        ws.git(&["log", "-3", "--format=%H %s", MAIN])
    );
    let after: Vec<f64> = areas
        .iter()
        .map(|a| {
            metric(
                &serve,
                &format!(r#"kvgit_commits_total{{area="{}"}}"#, a.name),
            )
        })
        .collect();
    assert_eq!(commits, after, "kvgit_commits_total moved while idle");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_counts_the_catch_up_commit_it_makes() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let areas = [ENTRIES, EVENTS];
    let cfg = ServeConfig::fast(&areas);
    let mut serve = Serve::start(&ws, etcd.endpoint(), &cfg);
    serve.wait_ready();
    put(&mut c, "/t/entries/k0", "one").await;
    put(&mut c, "/t/events/k0", "one").await;
    wait_converged(&serve, &c, &ws.repo, MAIN, &areas).await;
    let (status, _) = serve.terminate();
    assert!(status.success(), "serve exited with {status}");
    let before = ws.commit_count();

    // Only `entries` changes while it is down: its catch-up is the one commit.
    for i in 1..4 {
        put(&mut c, &format!("/t/entries/k{i}"), "two").await;
    }
    let serve = Serve::start(&ws, etcd.endpoint(), &cfg);
    serve.wait_ready();
    wait_converged(&serve, &c, &ws.repo, MAIN, &areas).await;
    assert_eq!(
        ws.commit_count(),
        before + 1,
        "one catch-up commit\n{}",
        ws.git(&["log", "-3", "--format=%H %s", MAIN])
    );
    for (area, want) in [("entries", 1.0), ("events", 0.0)] {
        for series in ["kvgit_commits_total", "kvgit_commit_duration_seconds_count"] {
            let got = metric(&serve, &format!(r#"{series}{{area="{area}"}}"#));
            assert_eq!(got, want, "{series} of {area} after the restart");
        }
    }
}

// 9 ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn metrics_readyz_sync_token_and_sigterm_flush() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let remote = Remote::init(ws.dir.path());
    let areas = [ENTRIES, EVENTS];
    put(&mut c, "/t/entries/a", "0").await;
    // A batch window far longer than the shutdown may take: only a flush commits in time.
    let cfg = ServeConfig {
        batch_window: "20s",
        sync_token: Some("s3cret"),
        ..ServeConfig::fast(&areas).remote(&remote)
    };
    let mut serve = Serve::start(&ws, etcd.endpoint(), &cfg);
    serve.wait_ready();
    let (code, body) = serve.get("/readyz");
    assert_eq!(code, 200, "{body}");
    let (code, body) = serve.get("/healthz");
    assert_eq!(code, 200, "{body}");

    // Every SPEC metric name, exactly, with its type.
    let page = serve.metrics();
    for (name, kind) in [
        ("kvgit_events_total", "counter"),
        ("kvgit_commits_total", "counter"),
        ("kvgit_commit_duration_seconds", "histogram"),
        ("kvgit_checkpoint_revision", "gauge"),
        ("kvgit_sync_lag_seconds", "gauge"),
        ("kvgit_push_total", "counter"),
        ("kvgit_apply_keys_total", "counter"),
        ("kvgit_drift_keys", "gauge"),
        ("kvgit_conflicts_total", "counter"),
        ("kvgit_resyncs_total", "counter"),
        ("kvgit_watch_restarts_total", "counter"),
        ("kvgit_build_info", "gauge"),
    ] {
        let line = format!("# TYPE {name} {kind}");
        assert!(
            page.lines().any(|l| l == line),
            "{line:?} missing from /metrics:\n{page}"
        );
    }
    for series in [
        r#"kvgit_events_total{area="entries",op="put"}"#,
        r#"kvgit_events_total{area="events",op="delete"}"#,
        r#"kvgit_commits_total{area="events"}"#,
        r#"kvgit_commit_duration_seconds_count{area="entries"}"#,
        r#"kvgit_checkpoint_revision{area="entries"}"#,
        r#"kvgit_sync_lag_seconds{area="events"}"#,
        r#"kvgit_push_total{result="ok"}"#,
        r#"kvgit_push_total{result="rejected"}"#,
        r#"kvgit_push_total{result="error"}"#,
        r#"kvgit_apply_keys_total{area="entries",op="delete"}"#,
        r#"kvgit_drift_keys{area="entries"}"#,
        r#"kvgit_conflicts_total{area="entries"}"#,
        r#"kvgit_resyncs_total{area="entries",reason="compacted"}"#,
        "kvgit_watch_restarts_total",
    ] {
        assert!(
            kvgit_tests::serve::metric_value(&page, series).is_some(),
            "{series} missing from /metrics:\n{page}"
        );
    }
    assert!(
        page.lines()
            .any(|l| l.starts_with("kvgit_build_info{version=\"") && l.ends_with("} 1")),
        "kvgit_build_info missing:\n{page}"
    );
    let checkpoint = metric(&serve, r#"kvgit_checkpoint_revision{area="entries"}"#);
    assert!(checkpoint > 0.0, "checkpoint revision {checkpoint}");

    // POST /sync needs the token.
    assert_eq!(serve.post("/sync", None).0, 401);
    assert_eq!(serve.post("/sync", Some("wrong")).0, 401);
    assert_eq!(serve.post("/sync", Some("s3cret")).0, 202);
    assert_eq!(serve.get("/sync").0, 405);

    // A key written just before SIGTERM: seen by the watch, waiting in its batch.
    put(&mut c, "/t/events/last-words", "flushed").await;
    serve.wait_until(CONVERGE, "the event to be pending", || {
        area_status(&serve.status(), "events")["pending_events"]
            .as_u64()
            .is_some_and(|n| n > 0)
    });
    assert!(!ws
        .git_bytes(&["ls-tree", "-r", "--name-only", MAIN])
        .is_empty());
    assert!(
        !git_files(&ws.repo, MAIN, "events").contains_key("last-words"),
        "not committed before the flush"
    );
    let (status, took) = serve.terminate();
    assert!(status.success(), "serve exited with {status}");
    assert_eq!(status.code(), Some(0));
    assert!(
        took < Duration::from_secs(5),
        "SIGTERM took {took:?} (batch window 20s: it must flush, not wait)"
    );
    assert_eq!(
        git_files(&ws.repo, MAIN, "events")
            .get("last-words")
            .map(Vec::as_slice),
        Some(&b"flushed"[..]),
        "the pending key is committed on the local branch after SIGTERM"
    );
    // The shutdown push took it to the remote as well.
    assert_eq!(rev_parse(&ws.repo, MAIN), remote.tip());
    assert!(commit_count(&remote.path, MAIN) >= 2);
}

// Found while writing the above ---------------------------------------------------------

/// A person's commit to an area must survive our replay when the service has a local commit
/// of that area not yet pushed: the replay must carry our change, not our whole directory.
#[tokio::test(flavor = "multi_thread")]
async fn a_persons_edit_survives_the_replay_of_an_unpushed_local_commit() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let remote = Remote::init(ws.dir.path());
    let areas = [ENTRIES];
    // The desired state starts on the remote.
    remote.person_commits(ws.dir.path(), &[("entries/x", Some(b"1"))], "seed x");
    // Pushes are rare (as with a long push_interval, or a remote that was briefly down):
    // our next commit stays local for a while.
    let cfg = ServeConfig {
        push_interval: "600s",
        ..ServeConfig::fast(&areas).remote(&remote)
    };
    let serve = Serve::start(&ws, etcd.endpoint(), &cfg);
    serve.wait_ready();
    serve
        .wait_until_async(CONVERGE, "x applied to etcd", || {
            let mut c = c.clone();
            async move { get(&mut c, "/t/entries/x").await.as_deref() == Some(&b"1"[..]) }
        })
        .await;

    // A live change, committed locally, not pushed yet.
    put(&mut c, "/t/entries/z", "live").await;
    serve.wait_until(CONVERGE, "z committed locally", || {
        git_files(&ws.repo, MAIN, "entries").contains_key("z")
    });
    assert!(!git_files(&remote.path, MAIN, "entries").contains_key("z"));

    // Meanwhile a person adds another key of the same area on the remote.
    remote.person_commits(ws.dir.path(), &[("entries/y", Some(b"person"))], "add y");
    serve.sync_now();
    let ok = poll_until_async(Duration::from_secs(10), || {
        let mut c = c.clone();
        async move { get(&mut c, "/t/entries/y").await.as_deref() == Some(&b"person"[..]) }
    })
    .await;
    let local = git_files(&ws.repo, MAIN, "entries");
    if !ok || !local.contains_key("y") || !local.contains_key("z") {
        serve.fail(&format!(
            "the person's entries/y was lost: etcd /t/entries/y = {:?}; local branch entries = {:?}\n{}",
            get(&mut c, "/t/entries/y").await.map(|v| String::from_utf8_lossy(&v).into_owned()),
            local.keys().collect::<Vec<_>>(),
            ws.git(&["log", "--stat", "--format=%h %an %s", MAIN]),
        ));
    }
}

/// `kv-to-git`: the result is the live value, committed (rule row base A, live A, desired
/// B: `git=A`). A commit from elsewhere that changes a file of such an area makes Git
/// disagree with etcd; the service must commit the live value back, and never write Git's
/// value to etcd. (A file added in Git with no base is left alone by the rule: not checked.)
#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_edit_of_a_kv_to_git_area_is_reverted_to_the_live_value() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let remote = Remote::init(ws.dir.path());
    let areas = [EVENTS];
    put(&mut c, "/t/events/e0", "live").await;
    put(&mut c, "/t/events/e1", "live").await;
    let serve = start_synced(&ws, &etcd, &c, &remote, &areas).await;
    let edit = remote.person_commits(
        ws.dir.path(),
        &[("events/e0", Some(b"edited"))],
        "edit a kv-to-git area",
    );
    serve.sync_now();
    serve.wait_until(CONVERGE, "the person's commit fetched", || {
        rev_parse(&ws.repo, MAIN).is_some_and(|tip| is_ancestor(&ws.repo, &edit, &tip))
    });
    let reverted = poll_until(Duration::from_secs(10), || {
        git_files(&ws.repo, MAIN, "events")
            .get("e0")
            .map(Vec::as_slice)
            == Some(&b"live"[..])
    });
    assert_eq!(
        get(&mut c, "/t/events/e0").await.as_deref(),
        Some(&b"live"[..])
    );
    if !reverted {
        serve.fail(&format!(
            "kv-to-git area events: Git keeps e0 = {:?} while etcd holds \"live\" (10s after the fetch)",
            git_files(&ws.repo, MAIN, "events")
                .get("e0")
                .map(|v| String::from_utf8_lossy(v).into_owned())
        ));
    }
}

/// `git-to-kv` with `self_heal = true`: a live edit of a key Git has is drift, reported and
/// reverted on the next apply, and never committed. A live-only key the base never had is
/// drift too, reported and (by the rule: no delete without a base) left in place.
#[tokio::test(flavor = "multi_thread")]
async fn live_drift_in_a_git_to_kv_area_is_reverted_and_reported() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let remote = Remote::init(ws.dir.path());
    let areas = [ROUTES];
    remote.person_commits(ws.dir.path(), &[("routes/api", Some(b"desired"))], "route");
    let serve = Serve::start(
        &ws,
        etcd.endpoint(),
        &ServeConfig::fast(&areas).remote(&remote),
    );
    serve.wait_ready();
    wait_converged(&serve, &c, &ws.repo, MAIN, &areas).await;
    let tip = remote.tip();
    put(&mut c, "/t/routes/api", "hand-edited").await;
    put(&mut c, "/t/routes/extra", "hand-made").await;
    serve
        .wait_until_async(CONVERGE, "the drift reverted", || {
            let mut c = c.clone();
            async move { get(&mut c, "/t/routes/api").await.as_deref() == Some(&b"desired"[..]) }
        })
        .await;
    serve.wait_until(CONVERGE, "kvgit_drift_keys{area=\"routes\"} 1", || {
        serve.metric(r#"kvgit_drift_keys{area="routes"}"#) == Some(1.0)
    });
    assert_eq!(area_status(&serve.status(), "routes")["drift"], 1);
    assert_eq!(
        get(&mut c, "/t/routes/extra").await.as_deref(),
        Some(&b"hand-made"[..])
    );
    assert_eq!(remote.tip(), tip, "drift is never committed");
    assert_eq!(rev_parse(&ws.repo, MAIN), tip);
    assert!(metric(&serve, r#"kvgit_apply_keys_total{area="routes",op="put"}"#) >= 2.0);
}

/// SIGTERM right after acknowledged writes: a clean stop flushes them, so the local branch
/// holds every one of them once the process has exited 0. The process is paused (SIGSTOP)
/// while the writes happen, so they are still on their way to it when the SIGTERM lands: the
/// situation of a busy service, made repeatable.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_right_after_acknowledged_writes_commits_them_all() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let areas = [EVENTS];
    put(&mut c, "/t/events/first", "1").await;
    let cfg = ServeConfig {
        batch_window: "20s",
        ..ServeConfig::fast(&areas)
    };
    let mut serve = Serve::start(&ws, etcd.endpoint(), &cfg);
    serve.wait_ready();
    serve.signal("STOP");
    // 400 writes from 4 clients, every one acknowledged before the SIGTERM.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let mut c = c.clone();
            tokio::spawn(async move {
                for i in 0..100 {
                    put(&mut c, &format!("/t/events/w{w}-{i:03}"), "acked").await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    serve.signal("TERM");
    serve.signal("CONT");
    let status = serve.wait_exit();
    assert!(status.success(), "{status}");
    let files = git_files(&ws.repo, MAIN, "events");
    let mut cc = c.clone();
    let live = etcd_files(&mut cc, "/t/events/").await;
    if files != live {
        serve.fail(&format!(
            "after a clean SIGTERM (exit 0) the branch lacks writes acknowledged before it:\n{}",
            diff(&live, &files)
        ));
    }
}

/// A new node (empty local repository) pointed at the same remote and etcd adopts the
/// remote's branch and checkpoints: no resync, nothing committed twice, and it follows on.
#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_node_adopts_the_remote_and_commits_nothing_twice() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let first = Workspace::new(etcd.endpoint(), &[]);
    let remote = Remote::init(first.dir.path());
    let areas = [ENTRIES, EVENTS];
    let cfg = ServeConfig::fast(&areas).remote(&remote);
    for i in 0..10 {
        put(&mut c, &format!("/t/entries/k{i}"), "1").await;
        put(&mut c, &format!("/t/events/k{i}"), "1").await;
    }
    let mut serve = Serve::start(&first, etcd.endpoint(), &cfg);
    serve.wait_ready();
    wait_converged(&serve, &c, &first.repo, MAIN, &areas).await;
    wait_pushed(&serve, &first, &remote);
    let (status, _) = serve.terminate();
    assert!(status.success());
    let pushed = remote.commit_count();

    // While no node runs: a change in each area.
    put(&mut c, "/t/entries/k0", "2").await;
    del(&mut c, "/t/events/k1").await;

    let second = Workspace::new(etcd.endpoint(), &[]);
    let serve = Serve::start(&second, etcd.endpoint(), &cfg);
    serve.wait_ready();
    wait_converged(&serve, &c, &second.repo, MAIN, &areas).await;
    wait_pushed(&serve, &second, &remote);
    assert_eq!(
        remote.commit_count(),
        pushed + 2,
        "one commit per changed area on top of the adopted history:\n{}",
        remote.git(&["log", "--format=%h %s", MAIN])
    );
    for a in &areas {
        let series = format!(
            r#"kvgit_resyncs_total{{area="{}",reason="compacted"}}"#,
            a.name
        );
        assert_eq!(metric(&serve, &series), 0.0, "{series}");
    }
    revisions_strictly_increase(&remote.path, &areas);
    assert_linear(&remote.path);
    put(&mut c, "/t/events/k2", "3").await;
    wait_converged(&serve, &c, &second.repo, MAIN, &areas).await;
    wait_pushed(&serve, &second, &remote);
    wait_converged(&serve, &c, &remote.path, MAIN, &areas).await;
}

/// The backend goes away: `/readyz` fails (`/healthz` does not), nothing is committed.
#[tokio::test(flavor = "multi_thread")]
async fn readyz_fails_while_etcd_is_down_and_nothing_is_committed() {
    let mut etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let remote = Remote::init(ws.dir.path());
    let areas = [ENTRIES, EVENTS];
    for i in 0..5 {
        put(&mut c, &format!("/t/entries/k{i}"), "1").await;
    }
    let serve = start_synced(&ws, &etcd, &c, &remote, &areas).await;
    let (local, pushed) = (ws.commit_count(), remote.commit_count());
    etcd.stop();
    serve.wait_until(CONVERGE, "/readyz to fail", || {
        matches!(serve.try_get("/readyz"), Ok((503, _)))
    });
    assert_eq!(serve.get("/healthz").0, 200);
    let status = serve.status();
    assert_eq!(status["backend_ok"], false, "{status}");
    // A few fetch and push intervals with the backend gone: no commit anywhere.
    let moved = poll_until(Duration::from_secs(2), || {
        ws.commit_count() != local || remote.commit_count() != pushed
    });
    assert!(!moved, "committed while the backend was down");
    assert!(
        git_files(&ws.repo, MAIN, "entries").len() == 5,
        "no key deleted because the backend did not answer"
    );
}

/// Awkward keys (a key that is also a prefix, case-only twins, escapes, non-UTF-8) followed
/// change by change by the service give, after every round, the very tree a from-scratch
/// `kvgit export` writes for the same keys.
#[tokio::test(flavor = "multi_thread")]
async fn awkward_keys_followed_incrementally_match_a_fresh_export() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let areas = [EVENTS];
    put(&mut c, "/t/events/start", "0").await;
    let serve = Serve::start(&ws, etcd.endpoint(), &ServeConfig::fast(&areas));
    serve.wait_ready();
    let p = |k: &[u8]| [b"/t/events/".as_slice(), k].concat();
    // Per round: keys put, then keys deleted.
    type Round<'k> = (Vec<&'k [u8]>, Vec<&'k [u8]>);
    let rounds: Vec<Round<'_>> = vec![
        (
            vec![
                b"node",
                b"a",
                b"x/y",
                b"sp ace",
                b".hidden",
                b"trail/",
                b"\xc3\xbc",
                b"bin\xff",
                b"",
                b"//",
            ],
            vec![],
        ),
        (vec![b"Node", b"a/b", b"NODE", b"x/y/z"], vec![]),
        (vec![b"a/c/d"], vec![b"Node", b"a/b", b"x/y"]),
        (
            vec![b"Node", b"trail"],
            vec![b"node", b"NODE", b"a/c/d", b"trail/", b""],
        ),
    ];
    for (round, (puts, dels)) in rounds.iter().enumerate() {
        for k in puts {
            c.put(p(k), format!("r{round}"), None).await.expect("put");
        }
        for k in dels {
            let resp = c.delete(p(k), None).await.expect("delete");
            assert_eq!(
                resp.deleted(),
                1,
                "{:?} existed",
                String::from_utf8_lossy(k)
            );
        }
        let fresh = Workspace::new(etcd.endpoint(), &areas);
        fresh.kvgit(&["export"]).ok();
        let want = fresh.git(&["rev-parse", "main:events"]).trim().to_string();
        let matched = poll_until(CONVERGE, || {
            rev_parse(&ws.repo, MAIN).is_some()
                && ws.git(&["rev-parse", "main:events"]).trim() == want
        });
        if !matched {
            serve.fail(&format!(
                "round {round}: the service's events tree differs from a fresh export:\nservice:\n{}\nfresh:\n{}",
                ws.git(&["ls-tree", "-r", "--name-only", "main", "events"]),
                fresh.git(&["ls-tree", "-r", "--name-only", "main", "events"]),
            ));
        }
    }
    // Plain git can check it out.
    let out = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(&ws.repo)
        .args(["fsck", "--strict"])
        .output()
        .expect("git fsck");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    revisions_strictly_increase(&ws.repo, &areas);
}

/// A person's commit that would delete most of an area is refused in `serve`: reported in
/// `/status` and `kvgit_apply_refused`, etcd untouched, not retried until the tip moves;
/// a later commit that fixes it goes through.
#[tokio::test(flavor = "multi_thread")]
async fn a_mass_delete_from_git_is_refused_and_reported() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let remote = Remote::init(ws.dir.path());
    let areas = [ENTRIES];
    for i in 0..4 {
        put(&mut c, &format!("/t/entries/k{i}"), "1").await;
    }
    let serve = start_synced(&ws, &etcd, &c, &remote, &areas).await;
    remote.person_commits(
        ws.dir.path(),
        &[
            ("entries/k0", None),
            ("entries/k1", None),
            ("entries/k2", None),
        ],
        "oops",
    );
    serve.sync_now();
    serve.wait_until(CONVERGE, "the refusal in /status", || {
        area_status(&serve.status(), "entries")["refused"].is_string()
    });
    assert_eq!(
        metric(&serve, r#"kvgit_apply_refused{area="entries"}"#),
        1.0
    );
    let mut cc = c.clone();
    assert_eq!(
        etcd_files(&mut cc, "/t/entries/").await.len(),
        4,
        "etcd untouched"
    );
    assert_eq!(
        metric(
            &serve,
            r#"kvgit_apply_keys_total{area="entries",op="delete"}"#
        ),
        0.0
    );
    // The fix: k0 comes back, deleting two of four is within the guard.
    remote.person_commits(ws.dir.path(), &[("entries/k0", Some(b"1"))], "fix");
    serve.sync_now();
    serve
        .wait_until_async(CONVERGE, "k1 and k2 deleted", || {
            let mut c = c.clone();
            async move { etcd_files(&mut c, "/t/entries/").await.len() == 2 }
        })
        .await;
    serve.wait_until(CONVERGE, "the refusal cleared", || {
        area_status(&serve.status(), "entries")["refused"].is_null()
    });
    assert_eq!(
        metric(&serve, r#"kvgit_apply_refused{area="entries"}"#),
        0.0
    );
    wait_converged(&serve, &c, &ws.repo, MAIN, &areas).await;
}

/// Many commits large enough to be written as packs, across the service's pack merges
/// (after 64 commits, at the first 2 s pause in recording): every commit lands, the
/// merge happens at the pause, the tree stays etcd's, and the repository checks clean.
#[tokio::test(flavor = "multi_thread")]
async fn many_packed_commits_across_repacks_stay_consistent() {
    const ROUNDS: usize = 70;
    const KEYS: usize = 70;
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let remote = Remote::init(ws.dir.path());
    let areas = [EVENTS];
    put(&mut c, "/t/events/start", "0").await;
    let cfg = ServeConfig {
        batch_window: "20ms",
        ..ServeConfig::fast(&areas).remote(&remote)
    };
    let serve = Serve::start(&ws, etcd.endpoint(), &cfg);
    serve.wait_ready();
    for round in 0..ROUNDS {
        let before = ws.commit_count();
        let ops: Vec<TxnOp> = (0..KEYS)
            .map(|i| TxnOp::put(format!("/t/events/k{i:03}"), format!("round {round}"), None))
            .collect();
        c.txn(Txn::new().and_then(ops)).await.expect("etcd txn");
        serve.wait_until(CONVERGE, &format!("round {round} committed"), || {
            ws.commit_count() > before
        });
        if round == 65 {
            // 66 commits, each its own pack, and now a pause: the packs are merged.
            serve.wait_until(CONVERGE, "packs merged at the pause", || {
                packs(&ws.repo) < 10
            });
        }
    }
    wait_converged(&serve, &c, &ws.repo, MAIN, &areas).await;
    let per_area = revisions_strictly_increase(&ws.repo, &areas);
    assert_eq!(per_area["events"].len(), ROUNDS + 1);
    wait_pushed(&serve, &ws, &remote);
    wait_converged(&serve, &c, &remote.path, MAIN, &areas).await;
    for repo in [&ws.repo, &remote.path] {
        let out = std::process::Command::new("git")
            .arg("--git-dir")
            .arg(repo)
            .args(["fsck", "--strict", "--no-progress"])
            .output()
            .expect("git fsck");
        assert!(
            out.status.success(),
            "{}: {}",
            repo.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        area_status(&serve.status(), "events")["last_error"],
        serde_json::Value::Null
    );
}

/// Pack files in `repo`.
fn packs(repo: &Path) -> usize {
    std::fs::read_dir(repo.join("objects/pack"))
        .map(|dir| {
            dir.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
                .count()
        })
        .unwrap_or(0)
}

/// Fetches and pushes run on their own timers and both move the refs that mirror the
/// remote; on a healthy node they must never trip over each other. With both timers at
/// 100 ms and a commit every few tens of milliseconds they overlap constantly.
#[tokio::test(flavor = "multi_thread")]
async fn fetches_and_pushes_at_once_count_no_errors_on_a_healthy_node() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let remote = Remote::init(ws.dir.path());
    let areas = [ENTRIES, EVENTS];
    let cfg = ServeConfig {
        batch_window: "20ms",
        push_interval: "100ms",
        fetch_interval: "100ms",
        ..ServeConfig::fast(&areas).remote(&remote)
    };
    let serve = Serve::start(&ws, etcd.endpoint(), &cfg);
    serve.wait_ready();
    // Writes go on until both timers have fired often enough to overlap (a loaded machine
    // runs fewer per second): at least 60 rounds of 40 ms, and 10 fetches and 5 pushes.
    let overlapped = |serve: &Serve| {
        serve
            .metric(r#"kvgit_fetch_total{result="ok"}"#)
            .is_some_and(|n| n >= 10.0)
            && serve
                .metric(r#"kvgit_push_total{result="ok"}"#)
                .is_some_and(|n| n >= 5.0)
    };
    let mut i = 0;
    while i < 60 || !overlapped(&serve) {
        assert!(i < 1500, "no 10 fetches and 5 pushes within 60 s");
        put(&mut c, &format!("/t/entries/n{}", i % 7), &format!("v{i}")).await;
        put(&mut c, &format!("/t/events/e{i}"), "x").await;
        tokio::time::sleep(Duration::from_millis(40)).await;
        i += 1;
    }
    wait_converged(&serve, &c, &ws.repo, MAIN, &areas).await;
    wait_pushed(&serve, &ws, &remote);
    for series in [
        r#"kvgit_fetch_total{result="error"}"#,
        r#"kvgit_push_total{result="error"}"#,
    ] {
        let errors = serve.metric(series).unwrap_or(0.0);
        if errors != 0.0 {
            serve.fail(&format!("{series} = {errors} on a healthy node"));
        }
    }
}

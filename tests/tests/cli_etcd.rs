//! Every one-shot `kvgit` verb end to end: the real binary against a real etcd started by the
//! test, checked the way an operator would (etcdctl-level reads, plain `git`).

use etcd_client::{Client, DeleteOptions, GetOptions, Txn, TxnOp};
use kvgit_tests::etcd::EtcdServer;
use kvgit_tests::kvgit::{git_in, Area, Workspace};
use std::collections::BTreeMap;

const BOTH: Area<'static> = Area {
    name: "entries",
    prefix: "/sigil/entries/",
    path: "entries",
    mode: "both",
};
const ROUTES: Area<'static> = Area {
    name: "routes",
    prefix: "/sigil/routes/",
    path: "routes",
    mode: "git-to-kv",
};

async fn put(c: &mut Client, k: impl Into<Vec<u8>>, v: impl Into<Vec<u8>>) {
    c.put(k.into(), v.into(), None).await.expect("put");
}

/// The store's current revision.
async fn revision_now(c: &mut Client) -> i64 {
    c.get("/", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision()
}

async fn all(c: &mut Client, prefix: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let resp = c
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    resp.kvs()
        .iter()
        .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
        .collect()
}

async fn get(c: &mut Client, k: &str) -> Option<Vec<u8>> {
    let resp = c.get(k, None).await.expect("get");
    resp.kvs().first().map(|kv| kv.value().to_vec())
}

fn show(ws: &Workspace, path: &str) -> Vec<u8> {
    ws.git_bytes(&["show", &format!("main:{path}")])
}

#[tokio::test(flavor = "multi_thread")]
async fn export_commits_per_area_follows_changes_and_logs_history() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[BOTH, ROUTES]);
    for i in 1..=3 {
        put(&mut c, format!("/sigil/entries/node-{i}/status"), "up").await;
    }
    put(&mut c, "/sigil/routes/api", "node-1,node-2").await;
    put(&mut c, "/sigil/other/untouched", "x").await;

    let out = ws.kvgit(&["export"]).ok();
    assert!(out.stdout.contains("entries: committed"), "{}", out.stdout);
    assert_eq!(ws.commit_count(), 2, "one commit per changed area");
    assert_eq!(show(&ws, "entries/node-2/status"), b"up");
    assert_eq!(show(&ws, "routes/api"), b"node-1,node-2");
    let files = ws.git(&["ls-tree", "-r", "--name-only", "main"]);
    assert!(
        !files.contains("untouched"),
        "keys outside every area stay out: {files}"
    );

    // The SPEC's message: summary, blank line, trailers.
    let msg = ws.git(&["log", "-1", "--format=%B", "main", "--", "entries"]);
    assert!(
        msg.starts_with("entries: 3 changes up to revision "),
        "{msg}"
    );
    for trailer in [
        "\n\nKvgit-Area: entries\n",
        "Kvgit-Revision: ",
        "Kvgit-Cluster: ",
        "Kvgit-Node: test-node",
    ] {
        assert!(msg.contains(trailer), "missing {trailer:?} in {msg}");
    }

    // Nothing changed: no commit.
    let out = ws.kvgit(&["export"]).ok();
    assert!(out.stdout.contains("entries: no changes"), "{}", out.stdout);
    assert_eq!(ws.commit_count(), 2);

    // A put and a delete in one area: one commit touching only that area's files.
    put(&mut c, "/sigil/entries/node-2/status", "down").await;
    c.delete("/sigil/entries/node-3/status", None)
        .await
        .expect("delete");
    ws.kvgit(&["export"]).ok();
    assert_eq!(ws.commit_count(), 3);
    let stat = ws.git(&["show", "--name-status", "--format=", "main"]);
    assert_eq!(
        stat.trim(),
        "M\tentries/node-2/status\nD\tentries/node-3/status",
        "{stat}"
    );
    assert_eq!(show(&ws, "entries/node-2/status"), b"down");

    // History of one key, newest first.
    let log = ws
        .kvgit(&["log", "/sigil/entries/node-2/status"])
        .ok()
        .stdout;
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(
        lines[0].contains("4 bytes") && lines[1].contains("2 bytes"),
        "{log}"
    );
    assert!(lines[0].contains("kvgit test <kvgit@test>"), "{log}");
    let gone = ws
        .kvgit(&["log", "/sigil/entries/node-3/status"])
        .ok()
        .stdout;
    assert!(
        gone.lines().next().is_some_and(|l| l.contains("deleted")),
        "{gone}"
    );

    // Status: checkpoint at the current revision, nothing pending.
    let status = ws.kvgit(&["status", "--json"]).ok().stdout;
    let doc: serde_json::Value = serde_json::from_str(&status).expect("status is JSON");
    let entries = &doc["areas"][0];
    assert_eq!(entries["area"], "entries");
    assert_eq!(entries["mode"], "both");
    assert_eq!(
        entries["checkpoint"]["revision"],
        doc["backend"]["revision"]
    );
    assert_eq!(entries["pending_events"], 0);
    assert_eq!(entries["pending_apply"], 0);
    let table = ws.kvgit(&["status"]).ok().stdout;
    assert!(
        table.contains("entries") && table.contains("git-to-kv"),
        "{table}"
    );

    // The repository is sound for plain git.
    ws.git(&["fsck", "--strict"]);
}

/// Keys every mapping rule has to get right, with awkward values.
fn tricky() -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut keys: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b"/t/".to_vec(), b"the prefix itself".to_vec()),
        (b"/t/a".to_vec(), b"a is a value".to_vec()),
        (b"/t/a/b".to_vec(), b"and a prefix".to_vec()),
        (b"/t/a//c".to_vec(), b"empty segment".to_vec()),
        (b"/t/trailing/".to_vec(), b"trailing slash".to_vec()),
        (b"/t/.".to_vec(), b"dot".to_vec()),
        (b"/t/..".to_vec(), b"dotdot".to_vec()),
        (b"/t/.git".to_vec(), b"not a repo".to_vec()),
        (b"/t/x/.git/config".to_vec(), b"[core]".to_vec()),
        (b"/t/bin\xff\xfe\x00".to_vec(), vec![0, 159, 146, 150, 255]),
        (b"/t/empty-value".to_vec(), Vec::new()),
        (b"/t/Node".to_vec(), b"N".to_vec()),
        (b"/t/node".to_vec(), b"n".to_vec()),
        (b"/t/NODE".to_vec(), b"NN".to_vec()),
        (b"/t/Git".to_vec(), b"g".to_vec()),
        (b"/t/GIT".to_vec(), b"G".to_vec()),
        ("/t/café".as_bytes().to_vec(), "crème".as_bytes().to_vec()),
        (b"/t/with space:and\\back".to_vec(), b"x".to_vec()),
        (b"/t/ctl\n\t".to_vec(), b"control".to_vec()),
    ];
    keys.push((
        format!("/t/{}", "L".repeat(300)).into_bytes(),
        b"long upper".to_vec(),
    ));
    keys.push((
        format!("/t/{}", "l".repeat(300)).into_bytes(),
        b"long lower".to_vec(),
    ));
    keys.push((
        format!("/t/{}/leaf", "s".repeat(600)).into_bytes(),
        vec![7; 3000],
    ));
    keys
}

#[tokio::test(flavor = "multi_thread")]
async fn tricky_keys_round_trip_byte_identical() {
    let area = Area {
        name: "t",
        prefix: "/t/",
        path: "state/t",
        mode: "git-to-kv",
    };
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    for (k, v) in tricky() {
        put(&mut c, k, v).await;
    }
    let before = all(&mut c, "/t/").await;
    assert_eq!(before.len(), tricky().len());
    let ws = Workspace::new(etcd.endpoint(), &[area]);
    ws.kvgit(&["export"]).ok();
    ws.git(&["fsck", "--strict"]);

    // A plain clone checks out one file per key.
    let clone = ws.dir.path().join("checkout");
    let out = std::process::Command::new("git")
        .args(["clone", "-q"])
        .arg(&ws.repo)
        .arg(&clone)
        .output()
        .expect("git clone");
    assert!(
        out.status.success(),
        "clone: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files = String::from_utf8_lossy(&git_in(&clone.join(".git"), &["ls-files"]))
        .lines()
        .count();
    assert_eq!(files, before.len(), "one checked-out file per key");

    // Wipe the keys: in a git-to-kv area that is drift, and apply restores every byte.
    c.delete("/t/", Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("wipe");
    assert!(all(&mut c, "/t/").await.is_empty());
    let out = ws.kvgit(&["apply"]).ok();
    assert!(
        out.stdout.contains(&format!("{} added", before.len())),
        "{}",
        out.stdout
    );
    assert_eq!(
        all(&mut c, "/t/").await,
        before,
        "same keys, same bytes after wipe + apply"
    );

    // And onto a fresh cluster (a restore): the no-base pass writes everything.
    let fresh = EtcdServer::start();
    ws.write_config(
        fresh.endpoint(),
        &[Area {
            name: "t",
            prefix: "/t/",
            path: "state/t",
            mode: "git-to-kv",
        }],
        "",
    );
    ws.kvgit(&["apply"]).ok();
    let mut c2 = fresh.client().await;
    assert_eq!(
        all(&mut c2, "/t/").await,
        before,
        "same keys, same bytes on a fresh cluster"
    );
    let plan = ws.kvgit(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "nothing left to do: {}", plan.stdout);
    assert!(plan.stdout.contains("No changes"), "{}", plan.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_and_apply_a_persons_commit() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[BOTH, ROUTES]);
    put(&mut c, "/sigil/routes/api", "v1").await;
    put(&mut c, "/sigil/routes/web", "v1").await;
    put(&mut c, "/sigil/routes/old", "v1").await;
    put(&mut c, "/sigil/routes/keep", "v1").await;
    ws.kvgit(&["export"]).ok();
    let plan = ws.kvgit(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "in step after export: {}", plan.stdout);

    ws.person_commits(
        &[
            ("routes/api", Some(b"v2")),
            ("routes/new", Some(b"fresh")),
            ("routes/old", None),
        ],
        "rotate routes",
    );
    let plan = ws.kvgit(&["plan", "--detailed-exitcode"]);
    assert_eq!(
        plan.code, 2,
        "changes pending: {}{}",
        plan.stdout, plan.stderr
    );
    let lines: Vec<&str> = plan.stdout.lines().collect();
    for want in [
        "~ /sigil/routes/api",
        "+ /sigil/routes/new",
        "- /sigil/routes/old",
    ] {
        assert!(
            lines.contains(&want),
            "missing {want:?} in:\n{}",
            plan.stdout
        );
    }
    assert!(
        plan.stdout
            .contains("Plan: 1 to add, 1 to change, 1 to delete."),
        "{}",
        plan.stdout
    );
    assert_eq!(
        ws.kvgit(&["plan"]).code,
        0,
        "without the flag, changes exit 0"
    );

    ws.kvgit(&["apply", "--dry-run"]).ok();
    assert_eq!(
        get(&mut c, "/sigil/routes/api").await.as_deref(),
        Some(&b"v1"[..]),
        "dry run writes nothing"
    );

    let out = ws.kvgit(&["apply"]).ok();
    assert!(
        out.stdout.contains("routes: 1 added, 1 changed, 1 deleted"),
        "{}",
        out.stdout
    );
    assert_eq!(
        get(&mut c, "/sigil/routes/api").await.as_deref(),
        Some(&b"v2"[..])
    );
    assert_eq!(
        get(&mut c, "/sigil/routes/new").await.as_deref(),
        Some(&b"fresh"[..])
    );
    assert_eq!(get(&mut c, "/sigil/routes/old").await, None);
    assert_eq!(
        get(&mut c, "/sigil/routes/keep").await.as_deref(),
        Some(&b"v1"[..])
    );
    assert_eq!(ws.kvgit(&["plan", "--detailed-exitcode"]).code, 0);

    // The applied writes are no live change: exporting them commits nothing (no echo).
    let commits = ws.commit_count();
    let out = ws.kvgit(&["export"]).ok();
    assert_eq!(ws.commit_count(), commits, "no echo commit: {}", out.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn git_wins_a_conflict_and_names_the_overwritten_value() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[BOTH]);
    put(&mut c, "/sigil/entries/node-1/status", "up").await;
    put(&mut c, "/sigil/entries/node-2/status", "up").await;
    ws.kvgit(&["export"]).ok();
    ws.person_commits(
        &[("entries/node-1/status", Some(b"maintenance"))],
        "drain node-1",
    );
    put(&mut c, "/sigil/entries/node-1/status", "flapping").await;
    put(&mut c, "/sigil/entries/node-2/status", "down").await;

    let plan = ws.kvgit(&["plan"]).ok().stdout;
    assert!(
        plan.contains("~ /sigil/entries/node-1/status (Git wins over live value \"flapping\")"),
        "{plan}"
    );
    let out = ws.kvgit(&["apply"]).ok().stdout;
    assert!(
        out.contains("! /sigil/entries/node-1/status: overwrote live value \"flapping\""),
        "{out}"
    );
    assert_eq!(
        get(&mut c, "/sigil/entries/node-1/status").await.as_deref(),
        Some(&b"maintenance"[..])
    );
    // The live-only change is not Git's business on apply; export commits it.
    assert_eq!(
        get(&mut c, "/sigil/entries/node-2/status").await.as_deref(),
        Some(&b"down"[..])
    );
    ws.kvgit(&["export"]).ok();
    assert_eq!(show(&ws, "entries/node-2/status"), b"down");
    assert_eq!(show(&ws, "entries/node-1/status"), b"maintenance");
}

#[tokio::test(flavor = "multi_thread")]
async fn point_in_time_restore_with_ref() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[BOTH]);
    put(&mut c, "/sigil/entries/a", "1").await;
    put(&mut c, "/sigil/entries/b", "1").await;
    put(&mut c, "/sigil/entries/c", "1").await;
    ws.kvgit(&["export"]).ok();
    let good = ws.git(&["rev-parse", "main"]).trim().to_string();
    ws.git(&["tag", "known-good", &good]);
    put(&mut c, "/sigil/entries/a", "2").await;
    put(&mut c, "/sigil/entries/d", "new").await;
    ws.kvgit(&["export"]).ok();

    let out = ws.kvgit(&["apply", "--ref", "known-good"]).ok().stdout;
    assert!(out.contains("0 added, 1 changed, 1 deleted"), "{out}");
    let now = all(&mut c, "/sigil/entries/").await;
    let expect: BTreeMap<Vec<u8>, Vec<u8>> = [("a", "1"), ("b", "1"), ("c", "1")]
        .iter()
        .map(|(k, v)| {
            (
                format!("/sigil/entries/{k}").into_bytes(),
                v.as_bytes().to_vec(),
            )
        })
        .collect();
    assert_eq!(now, expect, "state of the tag");
    let bad = ws.kvgit(&["apply", "--ref", "no-such-tag"]);
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("no-such-tag"), "{}", bad.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_fails_before_any_write_naming_the_culprit() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;

    // A bad config: every problem named, nothing created.
    let ws = Workspace::with_extra(
        etcd.endpoint(),
        &[BOTH],
        "batch_window = \"soon\"\ncolour = \"blue\"",
    );
    let out = ws.kvgit(&["export"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("sync.batch_window: \"soon\" is not a duration"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("sync.colour: unknown setting"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("kvgit.toml"), "{}", out.stderr);
    assert!(!ws.repo.exists(), "nothing written for a bad config");
    let overlap = Workspace::new(
        etcd.endpoint(),
        &[
            BOTH,
            Area {
                name: "sub",
                prefix: "/sigil/entries/sub/",
                path: "sub",
                mode: "both",
            },
        ],
    );
    let out = overlap.kvgit(&["plan"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("area[1].prefix") && out.stderr.contains("overlaps"),
        "{}",
        out.stderr
    );
    let env = std::process::Command::new(kvgit_tests::kvgit::kvgit_bin())
        .arg("-c")
        .arg(&overlap.config)
        .arg("plan")
        .env("KVGIT_BACKEND__KIND", "zookeeper")
        .output()
        .expect("spawn");
    assert!(String::from_utf8_lossy(&env.stderr).contains("backend.kind: \"zookeeper\""));

    // An oversized value and a bad path in one commit: nothing of it is applied.
    let ws = Workspace::new(etcd.endpoint(), &[ROUTES]);
    put(&mut c, "/sigil/routes/api", "v1").await;
    ws.kvgit(&["export"]).ok();
    let big = vec![b'x'; 2 * 1024 * 1024];
    ws.person_commits(
        &[("routes/api", Some(b"v2")), ("routes/huge", Some(&big))],
        "too big",
    );
    let out = ws.kvgit(&["apply"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stderr.contains("routes/huge") && out.stderr.contains("over the backend's limit"),
        "{}",
        out.stderr
    );
    assert_eq!(
        get(&mut c, "/sigil/routes/api").await.as_deref(),
        Some(&b"v1"[..]),
        "nothing half-applied"
    );

    ws.person_commits(
        &[("routes/huge", None), ("routes/bad%ZZname", Some(b"x"))],
        "bad name",
    );
    let out = ws.kvgit(&["apply"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stderr.contains("bad%ZZname"), "{}", out.stderr);
    assert_eq!(
        get(&mut c, "/sigil/routes/api").await.as_deref(),
        Some(&b"v1"[..]),
        "nothing half-applied"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mass_delete_is_refused_unless_allowed_and_deletes_are_exact() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[ROUTES]);
    for k in ["app", "app-dev", "app2", "b", "c", "d"] {
        put(&mut c, format!("/sigil/routes/{k}"), "v").await;
    }
    ws.kvgit(&["export"]).ok();

    // Deleting `app` leaves `app-dev` and `app2` alone.
    ws.person_commits(&[("routes/app", None)], "drop app");
    ws.kvgit(&["apply"]).ok();
    let left: Vec<String> = all(&mut c, "/sigil/routes/")
        .await
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert_eq!(
        left,
        [
            "/sigil/routes/app-dev",
            "/sigil/routes/app2",
            "/sigil/routes/b",
            "/sigil/routes/c",
            "/sigil/routes/d"
        ]
    );

    // Deleting 4 of 5 keys is over the default fraction of 0.5.
    ws.person_commits(
        &[
            ("routes/app-dev", None),
            ("routes/app2", None),
            ("routes/b", None),
            ("routes/c", None),
        ],
        "cleanup",
    );
    let out = ws.kvgit(&["apply"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("refusing to delete 4 of 5 keys")
            && out.stderr.contains("sync.max_delete_fraction"),
        "{}",
        out.stderr
    );
    assert_eq!(
        all(&mut c, "/sigil/routes/").await.len(),
        5,
        "nothing deleted"
    );
    assert_eq!(ws.kvgit(&["plan"]).code, 1, "plan says so too");

    // Emptying the area is refused even with a permissive fraction.
    ws.person_commits(&[("routes/d", None)], "empty it");
    let out = ws.kvgit(&["apply"]);
    assert!(
        out.stderr.contains("would empty the area"),
        "{}",
        out.stderr
    );
    assert_eq!(all(&mut c, "/sigil/routes/").await.len(), 5);

    ws.kvgit(&["apply", "--allow-mass-delete"]).ok();
    assert!(all(&mut c, "/sigil/routes/").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_backend_is_an_error_never_no_keys() {
    let mut etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[BOTH]);
    put(&mut c, "/sigil/entries/a", "1").await;
    ws.kvgit(&["export"]).ok();
    let head = ws.git(&["rev-parse", "main"]);
    etcd.stop();
    for verb in [&["export"][..], &["apply"], &["plan"], &["status"]] {
        let out = ws.kvgit(verb);
        assert_eq!(out.code, 1, "{verb:?}: {}", out.stdout);
        assert!(
            out.stderr.contains("127.0.0.1"),
            "{verb:?} names the endpoint: {}",
            out.stderr
        );
        assert_eq!(
            out.stderr.trim().lines().count(),
            1,
            "one line: {}",
            out.stderr
        );
    }
    assert_eq!(ws.git(&["rev-parse", "main"]), head, "nothing committed");
    assert_eq!(show(&ws, "entries/a"), b"1", "nothing deleted from Git");
    // Git-only verbs still work.
    ws.kvgit(&["log", "/sigil/entries/a"]).ok();
}

/// A one-shot verb connects to the backend while the repository opens: a repository that
/// cannot be opened is still the one error named, whether the backend answers or not.
#[tokio::test(flavor = "multi_thread")]
async fn a_repository_that_cannot_be_opened_is_named_whether_the_backend_answers_or_not() {
    let mut etcd = EtcdServer::start();
    let ws = Workspace::new(etcd.endpoint(), &[BOTH]);
    std::fs::write(&ws.repo, b"not a repository").expect("write");
    for backend in ["up", "down"] {
        if backend == "down" {
            etcd.stop();
        }
        for verb in [&["export"][..], &["apply"], &["plan"], &["status"]] {
            let out = ws.kvgit(verb);
            assert_eq!(out.code, 1, "{verb:?}, backend {backend}: {}", out.stdout);
            assert!(
                out.stderr.contains("git.repo") && out.stderr.contains("state.git"),
                "{verb:?}, backend {backend}: names the repository: {}",
                out.stderr
            );
            assert!(
                !out.stderr.contains("backend.endpoints"),
                "{verb:?}, backend {backend}: {}",
                out.stderr
            );
            assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
        }
    }
    assert_eq!(
        std::fs::read(&ws.repo).expect("read"),
        b"not a repository",
        "left as it was"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compacted_checkpoint_resyncs_by_the_rule() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[BOTH]);
    for k in ["a", "b", "c"] {
        put(&mut c, format!("/sigil/entries/{k}"), "1").await;
    }
    ws.kvgit(&["export"]).ok();
    put(&mut c, "/sigil/entries/a", "2").await;
    c.delete("/sigil/entries/b", None).await.expect("delete");
    let rev = revision_now(&mut c).await;
    etcd.compact(sync_core::Revision(rev as u64)).await;

    let out = ws.kvgit(&["export"]).ok().stdout;
    assert!(out.contains("resync"), "{out}");
    let files = ws.git(&["ls-tree", "-r", "--name-only", "main"]);
    assert_eq!(
        files.trim(),
        "entries/a\nentries/c",
        "the delete is carried by the rule: {files}"
    );
    assert_eq!(show(&ws, "entries/a"), b"2");
    // Back to incremental afterwards.
    put(&mut c, "/sigil/entries/c", "2").await;
    let out = ws.kvgit(&["export"]).ok().stdout;
    assert!(out.contains("(incremental)"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn git_to_kv_drift_is_reverted_or_only_reported() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[ROUTES]);
    put(&mut c, "/sigil/routes/api", "v1").await;
    ws.kvgit(&["export"]).ok();
    put(&mut c, "/sigil/routes/api", "hand-edited").await;
    let plan = ws.kvgit(&["plan"]).ok().stdout;
    assert!(
        plan.contains("# drift: /sigil/routes/api differs from Git"),
        "{plan}"
    );
    ws.kvgit(&["apply"]).ok();
    assert_eq!(
        get(&mut c, "/sigil/routes/api").await.as_deref(),
        Some(&b"v1"[..]),
        "drift reverted"
    );

    let cfg = std::fs::read_to_string(&ws.config).expect("config");
    std::fs::write(&ws.config, format!("{cfg}self_heal = false\n")).expect("config");
    put(&mut c, "/sigil/routes/api", "hand-edited").await;
    let plan = ws.kvgit(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "reported, not planned: {}", plan.stdout);
    assert!(plan.stdout.contains("# drift"), "{}", plan.stdout);
    ws.kvgit(&["apply"]).ok();
    assert_eq!(
        get(&mut c, "/sigil/routes/api").await.as_deref(),
        Some(&b"hand-edited"[..]),
        "left alone"
    );
    let status = ws.kvgit(&["status", "--json"]).ok().stdout;
    let doc: serde_json::Value = serde_json::from_str(&status).expect("json");
    assert_eq!(doc["areas"][0]["drift"], 1);
}

/// The branch's `a0` holds exactly `live`, key by key and byte for byte.
fn assert_committed_is(ws: &Workspace, live: &BTreeMap<Vec<u8>, Vec<u8>>) {
    assert_area_committed_is(ws, "a0", live);
}

/// The files of area directory `dir` on `main` are exactly the keys (relative to the area's
/// prefix) and values of `live`.
fn assert_area_committed_is(ws: &Workspace, dir: &str, live: &BTreeMap<Vec<u8>, Vec<u8>>) {
    let files = kvgit_tests::serve::git_files(&ws.repo, "refs/heads/main", dir);
    let committed: BTreeMap<Vec<u8>, Vec<u8>> = files
        .into_iter()
        .map(|(path, v)| {
            let key = sync_core::mapper::decode_path(&path)
                .unwrap_or_else(|e| panic!("{path} maps to no key: {e}"));
            (key, v)
        })
        .collect();
    let missing: Vec<_> = live
        .keys()
        .filter(|k| !committed.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = committed
        .keys()
        .filter(|k| !live.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "keys differ: missing {missing:?}, extra {extra:?}"
    );
    for (k, v) in live {
        assert_eq!(
            committed.get(k),
            Some(v),
            "the value of {}",
            String::from_utf8_lossy(k)
        );
    }
}

/// The bench's keys `/bench/a{i % areas}/node-DDDD/key-IIIIIII`, 100 keys per directory.
fn bench_layout(areas: usize) -> kvgit_tests::bench::Layout {
    kvgit_tests::bench::Layout::Tree {
        areas,
        per_dir: 100,
    }
}

/// An etcd without fsync holding keys `0..n` of [`bench_layout`], written as the bench's
/// raw load writes them, and what that load wrote.
async fn etcd_loaded(areas: usize, n: usize) -> (EtcdServer, kvgit_tests::bench::Written) {
    let etcd = EtcdServer::start_with(kvgit_tests::etcd::EtcdOptions {
        unsafe_no_fsync: true,
        ..Default::default()
    });
    let written =
        kvgit_tests::bench::raw_write(etcd.endpoint(), bench_layout(areas), 0..n, "first").await;
    (etcd, written)
}

/// A first export streams the area: more keys than one etcd page (10k) and than one tree
/// layout batch (64k), with root entries whose names depend on each other (a key that is
/// also a directory, two directories differing only in case). Every key must be in the
/// commit with its value, and nothing else. The next export of this large area catches up
/// by a watch, and commits exactly what changed.
#[tokio::test(flavor = "multi_thread")]
async fn a_first_export_larger_than_a_page_and_a_layout_batch_holds_every_key() {
    let n = 70_000;
    let (etcd, _) = etcd_loaded(1, n).await;
    let mut c = etcd.client().await;
    put(
        &mut c,
        "/bench/a0/node-0001",
        "a key that is also a directory",
    )
    .await;
    put(
        &mut c,
        "/bench/a0/Node-0002/upper",
        "renames node-0002 to node-0002~0",
    )
    .await;
    put(
        &mut c,
        "/bench/a0/zz-last",
        "a root file after every directory",
    )
    .await;
    let area = Area {
        name: "a0",
        prefix: "/bench/a0/",
        path: "a0",
        mode: "kv-to-git",
    };
    let ws = Workspace::new(etcd.endpoint(), &[area]);
    ws.kvgit(&["export"]).ok();

    let live = kvgit_tests::etcd::read_prefix(&mut c, "/bench/a0/").await;
    assert_eq!(live.len(), n + 3, "etcd holds what was written");
    assert_committed_is(&ws, &live);
    // The names that depend on their neighbours came out as the mapping says.
    let paths = git_in(
        &ws.repo,
        &["ls-tree", "-r", "--name-only", "refs/heads/main", "a0"],
    );
    let paths = String::from_utf8_lossy(&paths);
    for want in [
        "a0/node-0001/%self",
        "a0/Node-0002/upper",
        "a0/node-0002~0/key-0000200",
    ] {
        assert!(
            paths.lines().any(|p| p == want),
            "{want} is not in the commit"
        );
    }
    ws.git(&["fsck", "--strict"]);
    // The checkpoint's base is the same tree: a second export finds nothing to commit.
    let head = git_in(&ws.repo, &["rev-parse", "refs/heads/main"]);
    ws.kvgit(&["export"]).ok();
    assert_eq!(
        git_in(&ws.repo, &["rev-parse", "refs/heads/main"]),
        head,
        "nothing new to commit"
    );

    // An area this large catches up by a watch from its checkpoint: changed, deleted,
    // created and created-then-deleted keys, writes outside it, all committed exactly.
    put(&mut c, "/bench/a0/node-0003/key-0000300", "changed").await;
    c.delete("/bench/a0/node-0004/key-0000400", None)
        .await
        .expect("delete");
    put(&mut c, "/bench/a0/new/key", "new").await;
    put(&mut c, "/bench/a0/brief", "created, then deleted").await;
    c.delete("/bench/a0/brief", None).await.expect("delete");
    put(&mut c, "/elsewhere/key", "not in the area").await;
    let run = ws
        .kvgit_env(&["export"], &[("KVGIT_LOG", "warn,backend_etcd=debug")])
        .ok();
    assert!(
        run.stderr.contains("caught up by a watch over every key"),
        "the watch answered: {}",
        run.stderr
    );
    let live = kvgit_tests::etcd::read_prefix(&mut c, "/bench/a0/").await;
    assert_eq!(live.len(), n + 3, "one key deleted, one created");
    assert_committed_is(&ws, &live);
}

/// An apply reads values a window at a time, looked up ahead in id order: more values than
/// one window, stored by git as deltas, with deletes in between, each land as Git has them.
#[tokio::test(flavor = "multi_thread")]
async fn an_apply_of_many_deltified_values_writes_each_as_git_has_it() {
    const N: usize = 10_000;
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[ROUTES]);
    // Values alike enough for git to store nearly all as deltas of one another.
    let text: String = (0..40).map(|l| format!("route line {l}\n")).collect();
    let value = |i: usize| format!("{text}backend {i}\n").into_bytes();
    let files: Vec<(String, Vec<u8>)> = (0..N)
        .map(|i| (format!("routes/k{i:05}"), value(i)))
        .collect();
    ws.kvgit(&["export"]).ok();
    // A person's commit, streamed by `git fast-import`: 10k files through a checkout take
    // seconds of file system time on a slow disk.
    let mut stream = b"commit refs/heads/main\ncommitter A Person <person@example.org> 1700000000 +0000\ndata 19\nten thousand routes\n".to_vec();
    for (path, v) in &files {
        stream.extend_from_slice(format!("M 100644 inline {path}\ndata {}\n", v.len()).as_bytes());
        stream.extend_from_slice(v);
        stream.push(b'\n');
    }
    let mut import = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(&ws.repo)
        .args(["fast-import", "--quiet"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("git fast-import");
    std::io::Write::write_all(&mut import.stdin.take().expect("stdin"), &stream).expect("stream");
    assert!(
        import.wait().expect("fast-import").success(),
        "fast-import failed"
    );
    ws.git(&["repack", "-a", "-d", "-f", "--window=50", "--depth=50"]);
    // Live keys: some to change, and some only the KV store has, between them in key order.
    let changed = (0..N).step_by(5).map(|i| (format!("k{i:05}"), "old"));
    let gone = (0..N)
        .step_by(50)
        .map(|i| (format!("k{i:05}-gone"), "gone"));
    let live: Vec<(String, &str)> = changed.chain(gone).collect();
    for chunk in live.chunks(100) {
        let ops = chunk
            .iter()
            .map(|(k, v)| TxnOp::put(format!("/sigil/routes/{k}"), *v, None))
            .collect::<Vec<_>>();
        c.txn(Txn::new().and_then(ops)).await.expect("txn");
    }

    let out = ws.kvgit(&["apply", "--exact"]).ok();
    assert!(
        out.stdout
            .contains("routes: 8000 added, 2000 changed, 200 deleted"),
        "{}",
        out.stdout
    );
    // Read back in tenths: all at once is more than a gRPC message may carry.
    let mut live = BTreeMap::new();
    for tenth in 0..10 {
        live.extend(all(&mut c, &format!("/sigil/routes/k0{tenth}")).await);
    }
    assert_eq!(live.len(), N, "only Git's keys are left");
    for i in 0..N {
        let key = format!("/sigil/routes/k{i:05}").into_bytes();
        assert_eq!(live.get(&key), Some(&value(i)), "k{i:05}");
    }
}

const NODES: Area<'static> = Area {
    name: "nodes",
    prefix: "/sigil/nodes/",
    path: "nodes",
    mode: "both",
};
const METRICS: Area<'static> = Area {
    name: "metrics",
    prefix: "/sigil/metrics/",
    path: "metrics",
    mode: "kv-to-git",
};

/// The files one commit changes, as `git show` names them.
fn changed_files(ws: &Workspace, commit: &str) -> Vec<String> {
    ws.git(&["show", "--name-only", "--format=", commit])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `git count-objects -v`'s loose objects and packs.
fn objects_and_packs(ws: &Workspace) -> (usize, usize) {
    let counts = ws.git(&["count-objects", "-v"]);
    let field = |name: &str| -> usize {
        counts
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {counts}"))
    };
    (field("count:"), field("packs:"))
}

/// Several areas changed since their checkpoints: one commit per area, in config order,
/// each on the one before, all landing with every checkpoint and written as one pack. An
/// area that needs a full pass (here, one new in the config) keeps its place in the order.
#[tokio::test]
async fn an_export_of_several_areas_commits_each_in_order_and_moves_every_checkpoint() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[BOTH, NODES, METRICS]);
    for i in 0..10 {
        put(&mut c, format!("/sigil/entries/node-{i}/status"), "up").await;
        put(&mut c, format!("/sigil/nodes/r{i}"), "a").await;
    }
    ws.kvgit(&["export"]).ok();
    let before = ws.commit_count();
    assert_eq!(before, 2, "entries and nodes; metrics had no keys");

    // Every area changes in one transaction, 10 keys each.
    let mut ops = Vec::new();
    for i in 0..10 {
        ops.push(TxnOp::put(
            format!("/sigil/entries/node-{i}/status"),
            "down",
            None,
        ));
        ops.push(TxnOp::put(format!("/sigil/nodes/r{i}"), "b", None));
        ops.push(TxnOp::put(
            format!("/sigil/metrics/m{i}"),
            format!("{i}"),
            None,
        ));
    }
    let revision = c
        .txn(Txn::new().and_then(ops))
        .await
        .expect("txn")
        .header()
        .expect("header")
        .revision();
    let (loose_before, packs_before) = objects_and_packs(&ws);
    let out = ws.kvgit(&["export"]).ok();
    for area in ["entries", "nodes", "metrics"] {
        assert!(
            out.stdout.contains(&format!("{area}: committed")),
            "{}",
            out.stdout
        );
    }
    assert_eq!(ws.commit_count(), before + 3, "one commit per area");
    // Config order, each commit on the one before: entries, then nodes, then metrics.
    for (commit, area) in [
        ("main~2", "entries"),
        ("main~1", "nodes"),
        ("main", "metrics"),
    ] {
        let files = changed_files(&ws, commit);
        assert_eq!(files.len(), 10, "{commit}: {files:?}");
        assert!(
            files.iter().all(|f| f.starts_with(&format!("{area}/"))),
            "{commit} changes only {area}: {files:?}"
        );
        let msg = ws.git(&["log", "-1", "--format=%B", commit]);
        assert!(
            msg.starts_with(&format!("{area}: 10 changes up to revision {revision}")),
            "{msg}"
        );
    }
    assert_eq!(show(&ws, "entries/node-3/status"), b"down");
    assert_eq!(show(&ws, "nodes/r3"), b"b");
    assert_eq!(show(&ws, "metrics/m3"), b"3");
    // Every checkpoint moved to the transaction's revision: nothing pending anywhere.
    let status = ws.kvgit(&["status", "--json"]).ok().stdout;
    let doc: serde_json::Value = serde_json::from_str(&status).expect("status is JSON");
    for area in doc["areas"].as_array().expect("areas") {
        assert_eq!(area["checkpoint"]["revision"], revision, "{area}");
        assert_eq!(area["pending_events"], 0, "{area}");
    }
    // The new objects, the three commits and their checkpoints with them, are one pack.
    let (loose, packs) = objects_and_packs(&ws);
    assert_eq!((loose, packs), (loose_before, packs_before + 1), "{status}");
    ws.git(&["fsck", "--strict"]);
    let out = ws.kvgit(&["export"]).ok();
    assert_eq!(
        ws.commit_count(),
        before + 3,
        "nothing more: {}",
        out.stdout
    );

    // A new area first in the config reads all its keys; the others follow it in order.
    const EXTRA: Area<'static> = Area {
        name: "extra",
        prefix: "/sigil/extra/",
        path: "extra",
        mode: "kv-to-git",
    };
    ws.write_config(etcd.endpoint(), &[EXTRA, BOTH, NODES, METRICS], "");
    put(&mut c, "/sigil/extra/x", "1").await;
    put(&mut c, "/sigil/metrics/m0", "changed").await;
    put(&mut c, "/sigil/entries/node-0/status", "up").await;
    ws.kvgit(&["export"]).ok();
    assert_eq!(ws.commit_count(), before + 6);
    assert_eq!(changed_files(&ws, "main~2"), ["extra/x"]);
    assert_eq!(changed_files(&ws, "main~1"), ["entries/node-0/status"]);
    assert_eq!(changed_files(&ws, "main"), ["metrics/m0"]);
    ws.git(&["fsck", "--strict"]);
}

const EXTRA: Area<'static> = Area {
    name: "extra",
    prefix: "/sigil/extra/",
    path: "extra",
    mode: "kv-to-git",
};

/// Every area's checkpoint at `revision`, nothing pending.
fn every_checkpoint_at(ws: &Workspace, revision: i64) {
    let status = ws.kvgit(&["status", "--json"]).ok().stdout;
    let doc: serde_json::Value = serde_json::from_str(&status).expect("status is JSON");
    for area in doc["areas"].as_array().expect("areas") {
        assert_eq!(area["checkpoint"]["revision"], revision, "{area}");
        assert_eq!(area["pending_events"], 0, "{area}");
    }
}

/// The first export of several areas streams them side by side, yet lands as if they ran
/// one after another: one commit per area in config order, each changing only its area
/// and holding every key; an area whose directory exists already (read by the rule, on
/// its own) keeps its place between them.
#[tokio::test]
async fn a_first_export_of_several_areas_lands_in_config_order_around_an_existing_one() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[NODES]);
    for i in 0..300 {
        put(&mut c, format!("/sigil/nodes/r{i}"), "a").await;
    }
    ws.kvgit(&["export"]).ok();
    assert_eq!(ws.commit_count(), 1);
    for i in 0..300 {
        put(
            &mut c,
            format!("/sigil/entries/node-{i}/status"),
            format!("up-{i}"),
        )
        .await;
        put(&mut c, format!("/sigil/extra/x{i}"), format!("{i}")).await;
        put(&mut c, format!("/sigil/metrics/m{i}"), format!("{i}")).await;
    }
    put(&mut c, "/sigil/nodes/r7", "changed").await;
    let revision = revision_now(&mut c).await;
    ws.write_config(etcd.endpoint(), &[BOTH, EXTRA, NODES, METRICS], "");
    let out = ws.kvgit(&["export"]).ok();
    assert_eq!(ws.commit_count(), 5, "{}", out.stdout);
    for (commit, area, files) in [
        ("main~3", "entries", 300),
        ("main~2", "extra", 300),
        ("main~1", "nodes", 1),
        ("main", "metrics", 300),
    ] {
        let changed = changed_files(&ws, commit);
        assert_eq!(changed.len(), files, "{commit}: {changed:?}");
        assert!(
            changed.iter().all(|f| f.starts_with(&format!("{area}/"))),
            "{commit} changes only {area}: {changed:?}"
        );
        let msg = ws.git(&["log", "-1", "--format=%B", commit]);
        assert!(msg.starts_with(&format!("{area}: ")), "{commit}: {msg}");
    }
    assert_eq!(show(&ws, "entries/node-299/status"), b"up-299");
    assert_eq!(show(&ws, "extra/x42"), b"42");
    assert_eq!(show(&ws, "nodes/r7"), b"changed");
    assert_eq!(show(&ws, "metrics/m0"), b"0");
    every_checkpoint_at(&ws, revision);
    ws.git(&["fsck", "--strict"]);
    let out = ws.kvgit(&["export"]).ok();
    assert_eq!(ws.commit_count(), 5, "nothing more: {}", out.stdout);
}

/// Four new areas of two etcd pages each: two read at a time, and the third starts reading
/// while the first lays out and packs its last page. They still land as if they ran one
/// after another: four commits in config order, each changing only its area and holding
/// exactly its keys, every checkpoint at the export's revision.
#[tokio::test(flavor = "multi_thread")]
async fn a_first_export_reading_one_area_while_another_packs_lands_every_area_in_order() {
    let n = 60_000;
    let (etcd, written) = etcd_loaded(4, n).await;
    let names = bench_layout(4).areas();
    let areas = Area::each(&names, "kv-to-git");
    let ws = Workspace::new(etcd.endpoint(), &areas);
    ws.kvgit(&["export"]).ok();

    assert_eq!(ws.commit_count(), 4);
    let mut c = etcd.client().await;
    for (i, (name, prefix, path)) in names.iter().enumerate() {
        let commit = format!("main~{}", 3 - i);
        let msg = ws.git(&["log", "-1", "--format=%B", &commit]);
        assert!(msg.starts_with(&format!("{name}: ")), "{commit}: {msg}");
        let changed = changed_files(&ws, &commit);
        assert_eq!(changed.len(), n / 4, "{commit} adds the area's keys");
        assert!(
            changed.iter().all(|f| f.starts_with(&format!("{path}/"))),
            "{commit} changes only {path}"
        );
        let live = kvgit_tests::etcd::read_prefix(&mut c, prefix).await;
        assert_eq!(live.len(), n / 4, "etcd holds what was written");
        assert_area_committed_is(&ws, path, &live);
    }
    every_checkpoint_at(&ws, written.revision);
    ws.git(&["fsck", "--strict"]);
    ws.kvgit(&["export"]).ok();
    assert_eq!(
        ws.commit_count(),
        4,
        "a second export has nothing to commit"
    );
}

/// A first export whose second area cannot be read fails naming that area; the area
/// before it is recorded with its checkpoint, the one after it is not, as if the areas
/// ran one after another. The next export, once the user may read everything, lands the
/// rest.
#[tokio::test]
async fn a_first_export_that_fails_in_one_area_records_the_areas_before_it() {
    let mut etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    for i in 0..200 {
        put(&mut c, format!("/sigil/entries/node-{i}/status"), "up").await;
        put(&mut c, format!("/sigil/metrics/m{i}"), format!("{i}")).await;
        put(&mut c, format!("/sigil/extra/x{i}"), format!("{i}")).await;
    }
    etcd.enable_auth("root-password");
    etcd.add_role(
        "no-metrics",
        &[
            ("read", "/sigil/entries/", true),
            ("read", "/sigil/extra/", true),
        ],
    );
    etcd.add_role("everything", &[("read", "/sigil/", true)]);
    etcd.add_user("reader", "reader-password", &["no-metrics"]);
    let ws = Workspace::new(etcd.endpoint(), &[BOTH, METRICS, EXTRA]);
    std::fs::write(ws.dir.path().join("reader.pw"), "reader-password\n").expect("pw");
    let env = [
        ("KVGIT_BACKEND__USER", "reader"),
        ("KVGIT_BACKEND__PASSWORD_FILE", "reader.pw"),
    ];
    let run = ws.kvgit_env(&["export"], &env);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("metrics"), "names the area: {run:?}");
    assert_eq!(ws.commit_count(), 1, "only entries: {run:?}");
    let changed = changed_files(&ws, "main");
    assert_eq!(changed.len(), 200, "{changed:?}");
    assert!(
        changed.iter().all(|f| f.starts_with("entries/")),
        "{changed:?}"
    );
    assert!(
        ws.git(&["ls-tree", "--name-only", "main"])
            .lines()
            .eq(["entries"]),
        "neither metrics nor extra is on the branch"
    );

    etcd.etcdctl(&["user", "grant-role", "reader", "everything"]);
    let run = ws.kvgit_env(&["export"], &env);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(ws.commit_count(), 3, "{run:?}");
    assert!(changed_files(&ws, "main~1")
        .iter()
        .all(|f| f.starts_with("metrics/")));
    assert!(changed_files(&ws, "main")
        .iter()
        .all(|f| f.starts_with("extra/")));
    assert_eq!(show(&ws, "extra/x199"), b"199");
    ws.git(&["fsck", "--strict"]);
}

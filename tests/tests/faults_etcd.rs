//! Changes an operator makes are never lost or silently ignored: the deploy-then-record
//! flow, a snapshot restore that rewinds etcd, an accidental wipe, a bad file in Git, and
//! the no-base pass of a kv-to-git area. Real etcd, the real `kvgit` binary, plain `git`.

use etcd_client::{Client, DeleteOptions, GetOptions};
use kvgit_tests::etcd::EtcdServer;
use kvgit_tests::kvgit::{Area, Workspace};
use std::collections::BTreeMap;

const ENTRIES: Area<'static> = Area {
    name: "entries",
    prefix: "/sigil/entries/",
    path: "entries",
    mode: "both",
};
const ROUTES: Area<'static> = Area {
    name: "routes",
    prefix: "/sigil/routes/",
    path: "routes",
    mode: "both",
};
const NODES: Area<'static> = Area {
    name: "nodes",
    prefix: "/sigil/nodes/",
    path: "nodes",
    mode: "kv-to-git",
};

async fn put(c: &mut Client, k: impl Into<Vec<u8>>, v: impl Into<Vec<u8>>) {
    c.put(k.into(), v.into(), None).await.expect("put");
}

async fn get(c: &mut Client, k: &str) -> Option<Vec<u8>> {
    let resp = c.get(k, None).await.expect("get");
    resp.kvs().first().map(|kv| kv.value().to_vec())
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

fn show(ws: &Workspace, path: &str) -> String {
    ws.git(&["show", &format!("main:{path}")])
}

fn files(ws: &Workspace, dir: &str) -> Vec<String> {
    ws.git(&["ls-tree", "-r", "--name-only", "main", "--", dir])
        .lines()
        .map(str::to_string)
        .collect()
}

/// The system's main flow: a person writes the desired state in Git, the first `apply`
/// loads it into a fresh etcd, then an operational change happens in etcd. The change is
/// recorded by the next export, and the next apply leaves it alone.
#[tokio::test(flavor = "multi_thread")]
async fn deploy_then_record_keeps_the_operational_change() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[ENTRIES]);
    ws.kvgit(&["plan"]).ok(); // creates the repository
    ws.person_commits(
        &[
            ("entries/node-1/status", Some(b"up")),
            ("entries/node-2/status", Some(b"up")),
        ],
        "desired state",
    );
    let out = ws.kvgit(&["apply"]).ok();
    assert!(out.stdout.contains("entries: 2 added"), "{}", out.stdout);
    let status = ws.kvgit(&["status", "--json"]).ok().stdout;
    let doc: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    assert!(
        doc["areas"][0]["checkpoint"]["revision"].is_u64(),
        "the first apply records a checkpoint: {doc}"
    );

    put(&mut c, "/sigil/entries/node-1/status", "down").await;
    let out = ws.kvgit(&["export"]).ok();
    assert!(
        out.stdout.contains("entries: committed") && out.stdout.contains("(incremental)"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("Git wins"), "{}", out.stdout);
    assert_eq!(show(&ws, "entries/node-1/status"), "down");
    assert_eq!(show(&ws, "entries/node-2/status"), "up");

    let plan = ws.kvgit(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "nothing to apply:\n{}", plan.stdout);
    ws.kvgit(&["apply"]).ok();
    assert_eq!(
        get(&mut c, "/sigil/entries/node-1/status").await.as_deref(),
        Some(&b"down"[..]),
        "the operational change is not reverted"
    );
}

/// A first apply into a store that already holds keys Git does not have: they are carried
/// to Git by the next export (none is lost behind the new checkpoint), nothing is deleted.
#[tokio::test(flavor = "multi_thread")]
async fn a_first_apply_leaves_live_only_keys_for_export_to_record() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[ENTRIES]);
    put(&mut c, "/sigil/entries/live-only", "from etcd").await;
    ws.kvgit(&["plan"]).ok();
    ws.person_commits(&[("entries/from-git", Some(b"desired"))], "desired state");
    ws.kvgit(&["apply"]).ok();
    assert_eq!(
        get(&mut c, "/sigil/entries/live-only").await.as_deref(),
        Some(&b"from etcd"[..])
    );
    let out = ws.kvgit(&["export"]).ok();
    assert!(out.stdout.contains("entries: committed"), "{}", out.stdout);
    assert_eq!(show(&ws, "entries/live-only"), "from etcd");
    assert_eq!(show(&ws, "entries/from-git"), "desired");
    // And from now on a deletion in etcd is a deletion in Git.
    c.delete("/sigil/entries/live-only", None)
        .await
        .expect("delete");
    ws.kvgit(&["export"]).ok();
    assert_eq!(files(&ws, "entries"), ["entries/from-git"]);
}

/// `etcdctl snapshot restore` keeps the cluster id and rewinds the revision: a checkpoint
/// above the current revision is not trusted; the area is synced again by the rule (nothing
/// deleted), and the writes made after the restore are recorded.
#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_restore_that_rewinds_the_revision_is_resynced() {
    let mut etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[ENTRIES]);
    for i in 0..50 {
        put(&mut c, format!("/sigil/entries/old-{i:03}"), "1").await;
    }
    let snapshot = etcd.save_snapshot("before.db");
    for i in 0..200 {
        put(&mut c, format!("/sigil/entries/later-{i:03}"), "2").await;
    }
    ws.kvgit(&["export"]).ok();
    assert_eq!(files(&ws, "entries").len(), 250);
    let before: serde_json::Value =
        serde_json::from_str(&ws.kvgit(&["status", "--json"]).ok().stdout).expect("JSON");
    let recorded = before["areas"][0]["checkpoint"]["revision"]
        .as_u64()
        .expect("a checkpoint");

    etcd.restore_snapshot(&snapshot);
    let mut c = etcd.client().await;
    for i in 0..10 {
        put(&mut c, format!("/sigil/entries/new-{i:03}"), "3").await;
    }
    let status: serde_json::Value =
        serde_json::from_str(&ws.kvgit(&["status", "--json"]).ok().stdout).expect("JSON");
    let current = status["backend"]["revision"].as_u64().expect("revision");
    assert!(
        current < recorded,
        "the restore rewound {recorded} to {current}"
    );
    assert_eq!(
        status["areas"][0]["checkpoint"]["trusted"], false,
        "{status}"
    );

    let out = ws.kvgit(&["export"]).ok();
    assert!(out.stdout.contains("(full, no base)"), "{}", out.stdout);
    assert!(
        out.stdout.contains(&format!(
            "checkpoint revision {recorded} is above the cluster's current revision"
        )),
        "{}",
        out.stdout
    );
    let in_git = files(&ws, "entries");
    assert_eq!(in_git.len(), 260, "new keys recorded, nothing deleted");
    assert_eq!(show(&ws, "entries/new-009"), "3");
    // Now trusted again, and followed incrementally.
    put(&mut c, "/sigil/entries/new-000", "4").await;
    let out = ws.kvgit(&["export"]).ok();
    assert!(out.stdout.contains("(incremental)"), "{}", out.stdout);
    assert_eq!(show(&ws, "entries/new-000"), "4");
}

/// A checkpoint whose `Kvgit-Area` names another area (copied by hand, or an area renamed)
/// is not the base of this one.
#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_of_another_area_is_not_trusted() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[ENTRIES, ROUTES]);
    put(&mut c, "/sigil/entries/a", "1").await;
    put(&mut c, "/sigil/routes/r", "1").await;
    ws.kvgit(&["export"]).ok();
    let entries_cp = ws.git(&["rev-parse", "refs/kvgit/checkpoints/entries"]);
    ws.git(&[
        "update-ref",
        "refs/kvgit/checkpoints/routes",
        entries_cp.trim(),
    ]);
    put(&mut c, "/sigil/routes/r2", "2").await;
    let out = ws.kvgit(&["export"]).ok();
    assert!(
        out.stdout
            .contains("checkpoint was written for area \"entries\""),
        "{}",
        out.stdout
    );
    assert_eq!(show(&ws, "routes/r2"), "2");
    assert_eq!(show(&ws, "routes/r"), "1", "nothing deleted");
}

/// An accidental wipe of an area is not recorded as the desired state: export holds it,
/// says what to do, records the other areas, and records it when the operator means it.
#[tokio::test(flavor = "multi_thread")]
async fn a_wipe_is_not_recorded_unless_the_operator_means_it() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[ENTRIES, ROUTES]);
    for i in 0..20 {
        put(&mut c, format!("/sigil/entries/k{i:02}"), "v").await;
    }
    put(&mut c, "/sigil/routes/r", "1").await;
    ws.kvgit(&["export"]).ok();
    let commits = ws.commit_count();

    // A few deletions are ordinary.
    for i in 0..5 {
        c.delete(format!("/sigil/entries/k{i:02}"), None)
            .await
            .expect("delete");
    }
    ws.kvgit(&["export"]).ok();
    assert_eq!(files(&ws, "entries").len(), 15);

    c.delete("/sigil/entries/", Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("wipe");
    put(&mut c, "/sigil/routes/r", "2").await;
    let out = ws.kvgit(&["export"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("not recording the deletion of 15 of 15 keys under \"/sigil/entries/\"")
            && out.stderr.contains("kvgit export --allow-mass-delete"),
        "{}",
        out.stderr
    );
    assert_eq!(files(&ws, "entries").len(), 15, "the wipe is not committed");
    assert_eq!(show(&ws, "routes/r"), "2", "other areas are recorded");
    assert_eq!(ws.commit_count(), commits + 2);
    // Still held on the next run: the checkpoint did not move past the wipe.
    assert_eq!(ws.kvgit(&["export"]).code, 1);

    let out = ws.kvgit(&["export", "--allow-mass-delete"]).ok();
    assert!(out.stdout.contains("entries: committed"), "{}", out.stdout);
    assert!(files(&ws, "entries").is_empty());
}

/// A file added by hand that maps to no key is reported by plan (which refuses the area
/// before any write) and does not stop recording: live changes keep reaching Git, and the
/// file is left as it is.
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_file_in_git_does_not_stop_recording() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[ENTRIES]);
    put(&mut c, "/sigil/entries/a", "1").await;
    ws.kvgit(&["export"]).ok();
    ws.person_commits(&[("entries/%ZZ", Some(b"junk"))], "a bad name");

    put(&mut c, "/sigil/entries/a", "2").await;
    put(&mut c, "/sigil/entries/b", "1").await;
    let out = ws.kvgit(&["export"]).ok();
    assert!(out.stdout.contains("entries: committed"), "{}", out.stdout);
    assert_eq!(show(&ws, "entries/a"), "2");
    assert_eq!(show(&ws, "entries/b"), "1");
    assert_eq!(show(&ws, "entries/%ZZ"), "junk", "the person's file stays");

    let plan = ws.kvgit(&["plan"]);
    assert_eq!(plan.code, 1, "{}", plan.stdout);
    assert!(plan.stderr.contains("%ZZ"), "{}", plan.stderr);
    let before = all(&mut c, "/sigil/entries/").await;
    assert_eq!(ws.kvgit(&["apply"]).code, 1);
    assert_eq!(
        all(&mut c, "/sigil/entries/").await,
        before,
        "nothing written"
    );
    let status: serde_json::Value =
        serde_json::from_str(&ws.kvgit(&["status", "--json"]).ok().stdout).expect("JSON");
    assert!(
        status["areas"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("%ZZ")),
        "{status}"
    );
    // A full pass (a compaction past the checkpoint) names the file and keeps going.
    let rev = etcd.backend().await;
    let now = sync_core::KvBackend::current_revision(&rev)
        .await
        .expect("revision");
    put(&mut c, "/sigil/entries/c", "1").await;
    etcd.compact(sync_core::Revision(now.0 + 1)).await;
    let out = ws.kvgit(&["export"]).ok();
    assert!(
        out.stdout.contains("? entries/%ZZ: maps to no key"),
        "{}",
        out.stdout
    );
    assert_eq!(show(&ws, "entries/c"), "1");
}

/// kv-to-git areas record the KV store: with no base, a value that differs from Git's is
/// the live one (the SPEC's no-base rule).
#[tokio::test(flavor = "multi_thread")]
async fn a_no_base_pass_of_a_kv_to_git_area_keeps_the_live_value() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[NODES]);
    ws.kvgit(&["plan"]).ok();
    ws.person_commits(&[("nodes/n1", Some(b"from git"))], "hand edit");
    put(&mut c, "/sigil/nodes/n1", "live").await;
    let out = ws.kvgit(&["export"]).ok();
    assert!(out.stdout.contains("(full, no base)"), "{}", out.stdout);
    assert_eq!(show(&ws, "nodes/n1"), "live");
    assert_eq!(
        get(&mut c, "/sigil/nodes/n1").await.as_deref(),
        Some(&b"live"[..])
    );
}

/// `status` counts keys waiting for export, not events (a key written 51 times is one).
#[tokio::test(flavor = "multi_thread")]
async fn status_counts_pending_keys() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[ENTRIES]);
    put(&mut c, "/sigil/entries/a", "0").await;
    ws.kvgit(&["export"]).ok();
    for i in 0..50 {
        put(&mut c, "/sigil/entries/a", format!("{i}")).await;
    }
    put(&mut c, "/sigil/entries/b", "1").await;
    let status: serde_json::Value =
        serde_json::from_str(&ws.kvgit(&["status", "--json"]).ok().stdout).expect("JSON");
    assert_eq!(status["areas"][0]["pending_events"], 2, "{status}");
}

/// Two applies at once: each reports what it wrote, together every key once, and the one
/// that lost the race summarises instead of printing a line per key.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_applies_report_what_each_wrote() {
    const KEYS: usize = 3000;
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[ENTRIES]);
    ws.kvgit(&["plan"]).ok();
    let contents: Vec<(String, Vec<u8>)> = (0..KEYS)
        .map(|i| (format!("entries/k{i:05}"), format!("v{i}").into_bytes()))
        .collect();
    let refs: Vec<(&str, Option<&[u8]>)> = contents
        .iter()
        .map(|(p, v)| (p.as_str(), Some(v.as_slice())))
        .collect();
    ws.person_commits(&refs, "many keys");
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| ws.kvgit(&["apply"]));
        let b = s.spawn(|| ws.kvgit(&["apply"]));
        (
            a.join().expect("first apply"),
            b.join().expect("second apply"),
        )
    });
    let added = |out: &str| -> usize {
        out.lines()
            .filter_map(|l| l.strip_prefix("entries: "))
            .filter_map(|l| l.split(" added").next()?.parse::<usize>().ok())
            .sum()
    };
    for run in [&a, &b] {
        assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
        assert!(
            run.stdout.lines().count() < 20,
            "a summary, not a line per key:\n{}",
            run.stdout
        );
    }
    assert_eq!(
        added(&a.stdout) + added(&b.stdout),
        KEYS,
        "together every key once:\n{}\n{}",
        a.stdout,
        b.stdout
    );
    assert_eq!(all(&mut c, "/sigil/entries/").await.len(), KEYS);
}

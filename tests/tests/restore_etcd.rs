//! Exact point-in-time restore (`plan/apply --ref REV --exact`) and the plan as JSON
//! (`plan --format json`, `GET /api/v1/plan`), with the real binary against a real etcd.

use etcd_client::{Client, DeleteOptions, GetOptions};
use kvgit_tests::etcd::EtcdServer;
use kvgit_tests::kvgit::{Area, Workspace};
use kvgit_tests::serve::{trailers, Serve, ServeConfig};
use std::collections::BTreeMap;

const BOTH: Area<'static> = Area {
    name: "entries",
    prefix: "/sigil/entries/",
    path: "entries",
    mode: "both",
};
const RECORDED: Area<'static> = Area {
    name: "metrics",
    prefix: "/sigil/metrics/",
    path: "metrics",
    mode: "kv-to-git",
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

async fn del(c: &mut Client, k: &str) {
    c.delete(k, None).await.expect("delete");
}

async fn wipe(c: &mut Client, prefix: &str) {
    c.delete(prefix, Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("delete prefix");
}

async fn all(c: &mut Client, prefix: &str) -> BTreeMap<String, String> {
    let resp = c
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    resp.kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            )
        })
        .collect()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn rev(ws: &Workspace, rev: &str) -> String {
    ws.git(&["rev-parse", rev]).trim().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wiped_both_area_comes_back_with_exact_and_not_without() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[BOTH]);
    for i in 1..=3 {
        put(&mut c, format!("/sigil/entries/node-{i}"), format!("v{i}")).await;
    }
    ws.kvgit(&["export"]).ok();
    let before = all(&mut c, "/sigil/entries/").await;
    assert_eq!(before.len(), 3);
    let commits = ws.commit_count();

    // The new user's case: wipe the keys, then apply main.
    wipe(&mut c, "/sigil/entries/").await;
    // Without --exact the rule reads the wipe as a live change (base had the keys, Git did
    // not change them): nothing is written back, and the plan says export would record it.
    let plan = ws.kvgit(&["plan", "--ref", "main"]).ok().stdout;
    assert!(plan.contains("No changes."), "{plan}");
    assert!(
        plan.contains("# entries: 3 keys changed in the KV store are not in Git yet"),
        "{plan}"
    );
    let out = ws.kvgit(&["apply", "--ref", "main"]).ok().stdout;
    assert!(out.contains("entries: 0 added"), "{out}");
    assert!(all(&mut c, "/sigil/entries/").await.is_empty());

    // --exact: the plan shows the adds, and the apply brings every key back.
    let plan = ws.kvgit(&["plan", "--ref", "main", "--exact"]).ok().stdout;
    assert!(plan.contains("# entries: exact restore from "), "{plan}");
    for i in 1..=3 {
        assert!(
            plan.contains(&format!("+ /sigil/entries/node-{i}\n")),
            "{plan}"
        );
    }
    assert!(
        plan.contains("Plan: 3 to add, 0 to change, 0 to delete."),
        "{plan}"
    );
    let out = ws.kvgit(&["apply", "--ref", "main", "--exact"]).ok().stdout;
    assert!(
        out.contains("entries: 3 added, 0 changed, 0 deleted"),
        "{out}"
    );
    assert_eq!(all(&mut c, "/sigil/entries/").await, before);

    // The tip already holds that tree: no restore commit; and everything agrees.
    assert_eq!(ws.commit_count(), commits);
    let plan = ws.kvgit(&["plan"]).ok().stdout;
    assert_eq!(plan, "No changes. The KV store matches Git.\n");
    let out = ws.kvgit(&["export"]).ok().stdout;
    assert!(out.contains("entries: no changes"), "{out}");
    assert_eq!(ws.commit_count(), commits);
}

#[tokio::test(flavor = "multi_thread")]
async fn restoring_an_older_commit_commits_the_restore_and_leaves_nothing_pending() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[BOTH, RECORDED]);
    for area in ["entries", "metrics"] {
        put(&mut c, format!("/sigil/{area}/a"), "1").await;
        put(&mut c, format!("/sigil/{area}/b"), "1").await;
        put(&mut c, format!("/sigil/{area}/keep"), "k").await;
    }
    ws.kvgit(&["export"]).ok();
    let old = rev(&ws, "main");
    let old_state = |area: &str| {
        map(&[
            (&format!("/sigil/{area}/a"), "1"),
            (&format!("/sigil/{area}/b"), "1"),
            (&format!("/sigil/{area}/keep"), "k"),
        ])
    };
    for area in ["entries", "metrics"] {
        put(&mut c, format!("/sigil/{area}/a"), "2").await;
        del(&mut c, &format!("/sigil/{area}/b")).await;
        put(&mut c, format!("/sigil/{area}/c"), "3").await;
    }
    ws.kvgit(&["export"]).ok();
    let commits = ws.commit_count();

    let plan = ws.kvgit(&["plan", "--ref", &old, "--exact"]).ok().stdout;
    assert!(
        plan.contains("; apply commits the restore on the branch"),
        "{plan}"
    );
    for area in ["entries", "metrics"] {
        for line in [
            format!("~ /sigil/{area}/a\n"),
            format!("+ /sigil/{area}/b\n"),
            format!("- /sigil/{area}/c\n"),
        ] {
            assert!(plan.contains(&line), "{line:?} missing from {plan}");
        }
    }
    let out = ws.kvgit(&["apply", "--ref", &old, "--exact"]).ok().stdout;
    assert!(out.contains("restore committed on the branch as"), "{out}");
    for area in ["entries", "metrics"] {
        assert_eq!(
            all(&mut c, &format!("/sigil/{area}/")).await,
            old_state(area),
            "{area}"
        );
    }

    // One restore commit per area, with the trailer; the area trees are the old ones.
    assert_eq!(ws.commit_count(), commits + 2);
    for (i, area) in ["metrics", "entries"].iter().enumerate() {
        let at = format!("main~{i}");
        let msg = ws.git(&["log", "-1", "--format=%B", &at]);
        let short = &old[..12];
        assert!(
            msg.starts_with(&format!("{area}: restore from {short}\n\n")),
            "{msg}"
        );
        let t = trailers(&msg);
        assert_eq!(t["Kvgit-Restored-From"], old, "{msg}");
        assert_eq!(t["Kvgit-Area"], *area, "{msg}");
        assert!(t.contains_key("Kvgit-Revision") && t.contains_key("Kvgit-Cluster"));
        assert_eq!(t["Kvgit-Node"], "test-node");
        assert_eq!(
            rev(&ws, &format!("main:{area}")),
            rev(&ws, &format!("{old}:{area}"))
        );
        let changed = ws.git(&["show", "--name-only", "--format=", &at]);
        assert!(
            changed.lines().all(|l| l.starts_with(&format!("{area}/"))),
            "a restore commit touches its own area only: {changed}"
        );
    }

    // Git tip, KV store and base agree.
    let plan = ws.kvgit(&["plan"]).ok().stdout;
    assert_eq!(plan, "No changes. The KV store matches Git.\n");
    let out = ws.kvgit(&["export"]).ok().stdout;
    assert!(!out.contains("committed"), "{out}");
    assert_eq!(ws.commit_count(), commits + 2);

    // And live changes after the restore are recorded as usual.
    put(&mut c, "/sigil/entries/a", "after").await;
    let out = ws.kvgit(&["export"]).ok().stdout;
    assert!(out.contains("entries: committed"), "{out}");
    assert_eq!(ws.git(&["show", "main:entries/a"]), "after");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_git_to_kv_restore_commits_nothing_and_the_next_apply_puts_the_tip_back() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[ROUTES]);
    ws.kvgit(&["export"]).ok(); // creates the repository people push to
    ws.person_commits(
        &[("routes/api", Some(b"v1")), ("routes/old", Some(b"o"))],
        "v1",
    );
    let v1 = rev(&ws, "main");
    ws.kvgit(&["apply"]).ok();
    ws.person_commits(
        &[
            ("routes/api", Some(b"v2")),
            ("routes/old", None),
            ("routes/new", Some(b"n")),
        ],
        "v2",
    );
    ws.kvgit(&["apply"]).ok();
    let commits = ws.commit_count();

    ws.kvgit(&["apply", "--ref", &v1, "--exact"]).ok();
    assert_eq!(
        all(&mut c, "/sigil/routes/").await,
        map(&[("/sigil/routes/api", "v1"), ("/sigil/routes/old", "o")])
    );
    assert_eq!(
        ws.commit_count(),
        commits,
        "git-to-kv: the tip stays the desired state"
    );

    // The tip is still the desired state: the next apply writes it back.
    let plan = ws.kvgit(&["plan"]).ok().stdout;
    assert!(plan.contains("~ /sigil/routes/api\n"), "{plan}");
    ws.kvgit(&["apply"]).ok();
    assert_eq!(
        all(&mut c, "/sigil/routes/").await,
        map(&[("/sigil/routes/api", "v2"), ("/sigil/routes/new", "n")])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exact_restore_keeps_the_mass_delete_guard_and_selects_areas() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[BOTH, RECORDED]);
    put(&mut c, "/sigil/entries/first", "1").await;
    put(&mut c, "/sigil/metrics/m", "1").await;
    ws.kvgit(&["export"]).ok();
    let small = rev(&ws, "main");
    for i in 0..4 {
        put(&mut c, format!("/sigil/entries/more-{i}"), "x").await;
    }
    put(&mut c, "/sigil/metrics/m", "2").await;
    ws.kvgit(&["export"]).ok();
    let commits = ws.commit_count();
    let live = all(&mut c, "/sigil/entries/").await;
    assert_eq!(live.len(), 5);

    // Deleting 4 of 5 keys: refused, nothing written, nothing committed.
    let out = ws.kvgit(&["apply", "--ref", &small, "--exact", "--area", "entries"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("refusing to delete 4 of 5 keys under \"/sigil/entries/\""),
        "{}",
        out.stderr
    );
    assert_eq!(all(&mut c, "/sigil/entries/").await, live);
    assert_eq!(ws.commit_count(), commits);

    // With --allow-mass-delete, and only the selected area.
    let out = ws
        .kvgit(&[
            "apply",
            "--ref",
            &small,
            "--exact",
            "--area",
            "entries",
            "--allow-mass-delete",
        ])
        .ok()
        .stdout;
    assert!(
        out.contains("entries: 0 added, 0 changed, 4 deleted"),
        "{out}"
    );
    assert!(!out.contains("metrics"), "{out}");
    assert_eq!(
        all(&mut c, "/sigil/entries/").await,
        map(&[("/sigil/entries/first", "1")])
    );
    assert_eq!(
        all(&mut c, "/sigil/metrics/").await,
        map(&[("/sigil/metrics/m", "2")]),
        "--area entries leaves metrics alone"
    );
    assert_eq!(ws.commit_count(), commits + 1);
    let msg = ws.git(&["log", "-1", "--format=%s", "main"]);
    assert_eq!(
        msg.trim(),
        format!("entries: restore from {}", &small[..12])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_as_json_names_each_key_in_text_and_base64_with_its_file() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[BOTH]);
    let binary: Vec<u8> = b"/sigil/entries/bin\xff".to_vec();
    put(&mut c, binary.clone(), "b").await;
    put(&mut c, "/sigil/entries/node-1/status", "up").await;
    put(&mut c, "/sigil/entries/same", "s").await;
    ws.kvgit(&["export"]).ok();
    let files = ws.git(&["ls-tree", "-r", "--name-only", "main"]);
    let bin_path = files
        .lines()
        .find(|l| l.starts_with("entries/bin"))
        .expect("the binary key's file")
        .to_string();

    c.delete(binary.clone(), None).await.expect("delete");
    put(&mut c, "/sigil/entries/node-1/status", "down").await;
    put(&mut c, "/sigil/entries/extra/x", "e").await;
    let out = ws
        .kvgit(&["plan", "--exact", "--format", "json"])
        .ok()
        .stdout;
    let j: serde_json::Value = serde_json::from_str(&out).expect("plan JSON");
    assert_eq!(j["commit"].as_str(), Some(rev(&ws, "main").as_str()));
    assert_eq!(j["summary"]["add"], 1);
    assert_eq!(j["summary"]["change"], 1);
    assert_eq!(j["summary"]["delete"], 1);
    assert_eq!(j["summary"]["changes"], true);
    let a = &j["areas"][0];
    assert_eq!(a["area"], "entries");
    assert_eq!(a["mode"], "both");
    assert_eq!(a["prefix"], "/sigil/entries/");
    assert_eq!(a["path"], "entries");
    assert_eq!(a["exact"], true);
    assert!(a["restore_commit_from"].is_string());
    let add = &a["adds"][0];
    assert!(add["key"].is_null(), "not UTF-8: no text form: {add}");
    assert_eq!(add["key_b64"], "L3NpZ2lsL2VudHJpZXMvYmlu/w==");
    assert_eq!(add["path"], bin_path);
    let change = &a["changes"][0];
    assert_eq!(change["key"], "/sigil/entries/node-1/status");
    assert_eq!(
        change["key_b64"],
        "L3NpZ2lsL2VudHJpZXMvbm9kZS0xL3N0YXR1cw=="
    );
    assert_eq!(change["path"], "entries/node-1/status");
    assert!(change["pointer"].is_null(), "plain files have no pointer");
    let delete = &a["deletes"][0];
    assert_eq!(delete["key"], "/sigil/entries/extra/x");
    assert_eq!(delete["path"], "entries/extra/x");
    assert_eq!(a["adds"].as_array().map(Vec::len), Some(1));
    assert_eq!(a["conflicts"], serde_json::json!([]));
    assert!(
        !out.contains("\"down\""),
        "values are never in the document: {out}"
    );

    // The text plan is the same report.
    let text = ws.kvgit(&["plan", "--exact"]).ok().stdout;
    assert!(text.contains("+ /sigil/entries/bin\\xff\n"), "{text}");
    assert!(text.contains("~ /sigil/entries/node-1/status\n"), "{text}");
    assert!(text.contains("- /sigil/entries/extra/x\n"), "{text}");
    assert!(
        text.ends_with("Plan: 1 to add, 1 to change, 1 to delete.\n"),
        "{text}"
    );

    // The sync rule's plan: Git wins a conflict, shown in `conflicts`.
    ws.person_commits(&[("entries/node-1/status", Some(b"git"))], "person");
    let out = ws.kvgit(&["plan", "--format", "json"]).ok().stdout;
    let j: serde_json::Value = serde_json::from_str(&out).expect("plan JSON");
    let a = &j["areas"][0];
    assert_eq!(a["exact"], false);
    assert!(a["restore_commit_from"].is_null());
    assert_eq!(a["conflicts"][0]["key"], "/sigil/entries/node-1/status");
    assert_eq!(a["conflicts"][0]["path"], "entries/node-1/status");
    assert_eq!(a["changes"][0]["key"], "/sigil/entries/node-1/status");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_plan_endpoint_serves_the_cli_document() {
    let etcd = EtcdServer::start();
    let ws = Workspace::new(etcd.endpoint(), &[ROUTES, BOTH]);
    ws.kvgit(&["export"]).ok(); // creates the repository people push to
    ws.person_commits(&[("routes/api", Some(b"v1"))], "first");
    // A long fetch interval: the person's next commit stays unapplied while we look.
    let cfg = ServeConfig {
        fetch_interval: "1h",
        ..ServeConfig::fast(&[ROUTES, BOTH])
    };
    let serve = Serve::start(&ws, etcd.endpoint(), &cfg);
    serve.wait_ready();
    ws.person_commits(
        &[("routes/api", Some(b"v2")), ("routes/web", Some(b"w"))],
        "second",
    );

    let (code, body) = serve.get("/api/v1/plan?area=routes");
    if code != 200 {
        serve.fail(&format!("/api/v1/plan answered {code}: {body}"));
    }
    let served: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let cli = ws
        .kvgit(&["plan", "--format", "json", "--area", "routes"])
        .ok()
        .stdout;
    let printed: serde_json::Value = serde_json::from_str(&cli).expect("JSON");
    assert_eq!(served, printed);
    assert_eq!(served["areas"].as_array().map(Vec::len), Some(1));
    assert_eq!(served["areas"][0]["adds"][0]["key"], "/sigil/routes/web");
    assert_eq!(served["areas"][0]["changes"][0]["path"], "routes/api");

    let (code, body) = serve.get("/api/v1/plan?area=nope");
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("no area named \\\"nope\\\""), "{body}");
    let (code, _) = serve.get("/api/v1/plan");
    assert_eq!(code, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exact_restore_of_a_document_area_commits_the_documents_as_they_were() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[BOTH]);
    let mut cfg = std::fs::read_to_string(&ws.config).expect("config");
    cfg.push_str("format = \"json\"\n");
    std::fs::write(&ws.config, cfg).expect("config");
    ws.kvgit(&["export"]).ok(); // creates the repository people push to
    let doc: &[u8] = b"{\n  \"name\": \"app\",\n  \"port\": 80\n}\n";
    ws.person_commits(&[("entries/app.json", Some(doc))], "the app");
    let old = rev(&ws, "main");
    ws.kvgit(&["apply"]).ok();
    assert_eq!(
        all(&mut c, "/sigil/entries/").await,
        map(&[
            ("/sigil/entries/app/name", "app"),
            ("/sigil/entries/app/port", "80")
        ])
    );
    put(&mut c, "/sigil/entries/app/port", "81").await;
    ws.kvgit(&["export"]).ok();
    assert_ne!(rev(&ws, "main"), old);

    // A key inside a document is shown as the document and the pointer in it.
    let out = ws
        .kvgit(&["plan", "--ref", &old, "--exact", "--format", "json"])
        .ok()
        .stdout;
    let j: serde_json::Value = serde_json::from_str(&out).expect("plan JSON");
    let change = &j["areas"][0]["changes"][0];
    assert_eq!(change["key"], "/sigil/entries/app/port", "{out}");
    assert_eq!(change["path"], "entries/app.json", "{out}");
    assert_eq!(change["pointer"], "/port", "{out}");

    let out = ws.kvgit(&["apply", "--ref", &old, "--exact"]).ok().stdout;
    assert!(
        out.contains("entries: 0 added, 1 changed, 0 deleted"),
        "{out}"
    );
    assert_eq!(
        all(&mut c, "/sigil/entries/").await["/sigil/entries/app/port"],
        "80"
    );
    assert_eq!(ws.git_bytes(&["show", "main:entries/app.json"]), doc);
    let msg = ws.git(&["log", "-1", "--format=%B", "main"]);
    assert_eq!(trailers(&msg)["Kvgit-Restored-From"], old, "{msg}");
    assert_eq!(
        ws.kvgit(&["plan"]).ok().stdout,
        "No changes. The KV store matches Git.\n"
    );
    let commits = ws.commit_count();
    ws.kvgit(&["export"]).ok();
    assert_eq!(ws.commit_count(), commits);
}

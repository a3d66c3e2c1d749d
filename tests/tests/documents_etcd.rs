//! Document areas end to end: JSON and YAML files standing for key subtrees, applied to a
//! real etcd and recorded back by the real `kvgit` binary (CLI and `serve`), as an operator
//! would check them: etcdctl-level reads and plain `git show`.

use etcd_client::{Client, GetOptions};
use kvgit_tests::etcd::EtcdServer;
use kvgit_tests::kvgit::{Area, Workspace};
use kvgit_tests::serve::{Remote, Serve, ServeConfig};
use std::collections::BTreeMap;
use std::time::Duration;

const CFG: Area<'static> = Area {
    name: "cfg",
    prefix: "/app/cfg/",
    path: "cfg",
    mode: "both",
};
const OPS: Area<'static> = Area {
    name: "ops",
    prefix: "/app/ops/",
    path: "ops",
    mode: "both",
};

/// A JSON document in canonical form (`kvgit fmt`): sorted members, two-space indent.
const DB_JSON: &str = r#"{
  "host": "db1",
  "port": 5432,
  "ratio": 1.50,
  "replicas": [
    "a",
    "b"
  ],
  "tls": true
}
"#;

/// A YAML document in canonical form.
const WEB_YAML: &str = "name: web\nreplicas: 3\nroutes:\n  - path: /api\n    weight: 0.5\n";

/// Not canonical (one line, members unsorted): kept byte for byte while its keys stay.
const OTHER_JSON: &str = "{\"z\": 1, \"a\": \"x\"}\n";

const CONVERGE: Duration = Duration::from_secs(30);

fn workspace(etcd: &EtcdServer) -> Workspace {
    let ws = Workspace::new(etcd.endpoint(), &[]);
    ws.set_area_extra("cfg", "format = \"json\"");
    ws.set_area_extra("ops", "format = \"yaml\"");
    ws.write_config(etcd.endpoint(), &[CFG, OPS], "");
    // The repository a person pushes the documents to (kvgit opens it as it is).
    kvgit_tests::kvgit::run_git(
        None,
        &[
            "init",
            "-q",
            "--bare",
            "-b",
            "main",
            ws.repo.to_str().expect("utf-8"),
        ],
    );
    ws
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

async fn get(c: &mut Client, k: &str) -> Option<String> {
    let resp = c.get(k, None).await.expect("get");
    resp.kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn show(ws: &Workspace, path: &str) -> String {
    String::from_utf8_lossy(&ws.git_bytes(&["show", &format!("main:{path}")])).into_owned()
}

fn seed(ws: &Workspace) {
    ws.person_commits(
        &[
            ("cfg/db.json", Some(DB_JSON.as_bytes())),
            ("cfg/other.json", Some(OTHER_JSON.as_bytes())),
            ("cfg/plain/note", Some(b"hi".as_slice())),
            ("ops/web.yaml", Some(WEB_YAML.as_bytes())),
        ],
        "documents",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn documents_become_keys_and_a_kv_change_rewrites_only_its_document() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = workspace(&etcd);
    seed(&ws);

    let plan = ws.kvgit(&["plan"]).ok();
    assert!(
        plan.stdout.contains("+ /app/cfg/db/port"),
        "{}",
        plan.stdout
    );
    ws.kvgit(&["apply"]).ok();
    assert_eq!(
        all(&mut c, "/app/cfg/").await,
        map(&[
            ("/app/cfg/db/host", "db1"),
            ("/app/cfg/db/port", "5432"),
            ("/app/cfg/db/ratio", "1.50"),
            ("/app/cfg/db/replicas/0", "a"),
            ("/app/cfg/db/replicas/1", "b"),
            ("/app/cfg/db/tls", "true"),
            ("/app/cfg/other/a", "x"),
            ("/app/cfg/other/z", "1"),
            ("/app/cfg/plain/note", "hi"),
        ])
    );
    assert_eq!(
        all(&mut c, "/app/ops/").await,
        map(&[
            ("/app/ops/web/name", "web"),
            ("/app/ops/web/replicas", "3"),
            ("/app/ops/web/routes/0/path", "/api"),
            ("/app/ops/web/routes/0/weight", "0.5"),
        ])
    );

    // Git -> KV -> Git: our own writes come back as nothing to record.
    let commits = ws.commit_count();
    let out = ws.kvgit(&["export"]).ok();
    assert_eq!(ws.commit_count(), commits, "echo commit: {}", out.stdout);
    assert_eq!(show(&ws, "cfg/db.json"), DB_JSON);
    assert_eq!(show(&ws, "ops/web.yaml"), WEB_YAML);

    // A number stays a number while its new text is one; a new key is a string; a number
    // whose new text is not one becomes a string.
    c.put("/app/cfg/db/port", "6543", None).await.expect("put");
    c.put("/app/cfg/db/pool", "10", None).await.expect("put");
    c.put("/app/ops/web/replicas", "many", None)
        .await
        .expect("put");
    c.put("/app/cfg/loose", "free", None).await.expect("put");
    // The document's own name without the trailing `/` is no part of it: a plain file.
    c.put("/app/cfg/db", "self", None).await.expect("put");
    ws.kvgit(&["export"]).ok();
    assert_eq!(ws.commit_count(), commits + 2, "one commit per area");
    assert_eq!(
        show(&ws, "cfg/db.json"),
        DB_JSON
            .replace("\"port\": 5432", "\"port\": 6543")
            .replace("  \"port\"", "  \"pool\": \"10\",\n  \"port\"")
    );
    assert_eq!(
        show(&ws, "ops/web.yaml"),
        WEB_YAML.replace("replicas: 3", "replicas: many")
    );
    assert_eq!(
        show(&ws, "cfg/other.json"),
        OTHER_JSON,
        "untouched document"
    );
    assert_eq!(
        show(&ws, "cfg/loose"),
        "free",
        "a key outside every document"
    );
    assert_eq!(show(&ws, "cfg/plain/note"), "hi");
    let changed = ws.git(&["diff", "--name-only", "HEAD~2", "main"]);
    let mut changed: Vec<&str> = changed.lines().collect();
    changed.sort();
    assert_eq!(
        changed,
        ["cfg/db", "cfg/db.json", "cfg/loose", "ops/web.yaml"]
    );
    assert_eq!(show(&ws, "cfg/db"), "self");

    // A key's history is that of its value inside the document: the seed, then the change.
    let log = ws.kvgit(&["log", "/app/cfg/db/port"]).ok();
    let lines: Vec<&str> = log.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", log.stdout);
    assert!(lines[0].contains(" 4 bytes  cfg: "), "{}", log.stdout);
    assert!(lines[1].ends_with(" 4 bytes  documents"), "{}", log.stdout);

    // Deleting every key of a document removes its file.
    c.delete(
        "/app/cfg/other/",
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await
    .expect("delete");
    ws.kvgit(&["export"]).ok();
    let files = ws.git(&["ls-tree", "-r", "--name-only", "main", "cfg"]);
    assert!(!files.contains("other.json"), "{files}");

    // And the recorded state applies back as it is.
    let plan = ws.kvgit(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{}{}", plan.stdout, plan.stderr);
    assert_eq!(
        get(&mut c, "/app/cfg/db/port").await.as_deref(),
        Some("6543")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_documents_are_refused_before_the_first_write_naming_the_file() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = workspace(&etcd);
    let good: (&str, Option<&[u8]>) = ("cfg/good.json", Some(br#"{"k": "v"}"#.as_slice()));
    let cases: &[(&[(&str, Option<&[u8]>)], &str)] = &[
        (
            &[("cfg/bad.json", Some(b"{\"a\": ".as_slice()))],
            "cfg/bad.json",
        ),
        (
            &[("cfg/bad.json", Some(br#"{"a": null}"#.as_slice()))],
            "cfg/bad.json",
        ),
        (
            &[("cfg/bad.json", Some(br#"{"a": {}}"#.as_slice()))],
            "cfg/bad.json",
        ),
        (
            &[("cfg/bad.json", Some(br#"{"a": []}"#.as_slice()))],
            "cfg/bad.json",
        ),
        (
            &[
                ("cfg/bad.json", Some(br#"{"a": "1"}"#.as_slice())),
                ("cfg/bad.yaml", Some(b"b: 2\n".as_slice())),
            ],
            "cfg/bad.yaml",
        ),
        (
            &[
                ("cfg/bad.json", Some(br#"{"a": "1"}"#.as_slice())),
                ("cfg/bad/b", Some(b"2".as_slice())),
            ],
            "cfg/bad/b",
        ),
        (
            &[("ops/bad.yaml", Some(b"a: [\n".as_slice()))],
            "ops/bad.yaml",
        ),
    ];
    for (files, named) in cases {
        let mut all_files = vec![good];
        all_files.extend(files.iter().copied());
        ws.person_commits(&all_files, "bad input");
        for verb in ["plan", "apply"] {
            let run = ws.kvgit(&[verb]);
            assert_eq!(run.code, 1, "{verb} accepted {files:?}: {}", run.stdout);
            assert!(
                run.stderr.contains(named),
                "{verb} does not name {named}: {}",
                run.stderr
            );
        }
        assert!(
            all(&mut c, "/app/").await.is_empty(),
            "something was written for {files:?}"
        );
        let undo: Vec<(&str, Option<&[u8]>)> = files.iter().map(|(p, _)| (*p, None)).collect();
        ws.person_commits(&undo, "undo");
    }
    ws.kvgit(&["apply"]).ok();
    assert_eq!(get(&mut c, "/app/cfg/good/k").await.as_deref(), Some("v"));
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_keeps_documents_in_step_both_ways() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = workspace(&etcd);
    let remote = Remote::init(ws.dir.path());
    let serve = Serve::start(
        &ws,
        etcd.endpoint(),
        &ServeConfig::fast(&[CFG, OPS]).remote(&remote),
    );
    serve.wait_ready();
    remote.person_commits(
        ws.dir.path(),
        &[
            ("cfg/db.json", Some(DB_JSON.as_bytes())),
            ("ops/web.yaml", Some(WEB_YAML.as_bytes())),
        ],
        "documents",
    );
    serve.sync_now();
    serve
        .wait_until_async(CONVERGE, "the documents' keys in etcd", || {
            let mut c = c.clone();
            async move {
                get(&mut c, "/app/cfg/db/ratio").await.as_deref() == Some("1.50")
                    && get(&mut c, "/app/ops/web/routes/0/weight").await.as_deref() == Some("0.5")
            }
        })
        .await;

    c.put("/app/cfg/db/port", "7000", None).await.expect("put");
    let want = DB_JSON.replace("5432", "7000");
    serve.wait_until(CONVERGE, "the change in cfg/db.json on the remote", || {
        remote.git(&["show", "main:cfg/db.json"]) == want
    });
    assert_eq!(remote.git(&["show", "main:ops/web.yaml"]), WEB_YAML);
}

#[tokio::test(flavor = "multi_thread")]
async fn fmt_writes_canonical_documents_and_check_reports_the_rest() {
    let etcd = EtcdServer::start();
    let ws = workspace(&etcd);
    let checkout = ws.dir.path().join("checkout");
    let files: &[(&str, &str)] = &[
        ("cfg/db.json", DB_JSON),
        ("cfg/other.json", OTHER_JSON),
        ("cfg/plain/note", "not a document"),
        (
            "ops/web.yaml",
            "routes:\n- weight: 0.5\n  path: /api\nreplicas: 3\nname: web\n",
        ),
        ("ops/broken.yml", "a: {}\n"),
    ];
    for (path, text) in files {
        let p = checkout.join(path);
        std::fs::create_dir_all(p.parent().expect("a parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }
    let dir = checkout.to_str().expect("utf-8");

    let check = ws.kvgit(&["fmt", "--check", "--dir", dir]);
    assert_eq!(check.code, 1, "{}{}", check.stdout, check.stderr);
    let mut lines: Vec<&str> = check.stdout.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "4 document(s) checked, 2 not canonical, 1 invalid",
            "cfg/other.json: not in canonical form (run `kvgit fmt`)",
            "ops/broken.yml: YAML document: line 1 column 4: at `/a`: an empty object stands for no key",
            "ops/web.yaml: not in canonical form (run `kvgit fmt`)",
        ]
    );
    assert_eq!(
        std::fs::read_to_string(checkout.join("cfg/other.json")).expect("read"),
        OTHER_JSON,
        "--check writes nothing"
    );

    let run = ws.kvgit(&["fmt", "--dir", dir]);
    assert_eq!(
        run.code, 1,
        "the invalid file fails the run: {}",
        run.stdout
    );
    let read = |p: &str| std::fs::read_to_string(checkout.join(p)).expect("read");
    assert_eq!(
        read("cfg/other.json"),
        "{\n  \"a\": \"x\",\n  \"z\": 1\n}\n"
    );
    assert_eq!(read("ops/web.yaml"), WEB_YAML);
    assert_eq!(read("cfg/db.json"), DB_JSON);
    assert_eq!(read("cfg/plain/note"), "not a document");
    assert_eq!(
        read("ops/broken.yml"),
        "a: {}\n",
        "an invalid file is left alone"
    );

    std::fs::remove_file(checkout.join("ops/broken.yml")).expect("rm");
    let check = ws.kvgit(&["fmt", "--check", "--dir", dir]);
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    assert_eq!(
        check.stdout,
        "3 document(s) checked, 0 not canonical, 0 invalid\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_pass_with_no_checkpoint_records_live_values_into_the_documents() {
    const REC: Area<'static> = Area {
        name: "rec",
        prefix: "/app/rec/",
        path: "rec",
        mode: "kv-to-git",
    };
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    ws.set_area_extra("rec", "format = \"yaml\"");
    ws.write_config(etcd.endpoint(), &[REC], "");
    kvgit_tests::kvgit::run_git(
        None,
        &[
            "init",
            "-q",
            "--bare",
            "-b",
            "main",
            ws.repo.to_str().expect("utf-8"),
        ],
    );
    ws.person_commits(&[("rec/web.yaml", Some(WEB_YAML.as_bytes()))], "documents");
    for (k, v) in [
        ("/app/rec/web/name", "web"),
        ("/app/rec/web/replicas", "5"),
        ("/app/rec/web/routes/0/path", "/api"),
        ("/app/rec/web/routes/0/weight", "0.5"),
        ("/app/rec/web/routes/1/path", "/v2"),
    ] {
        c.put(k, v, None).await.expect("put");
    }
    // No checkpoint: a full pass by the rule, which in a kv-to-git area records the KV store.
    ws.kvgit(&["export"]).ok();
    assert_eq!(
        show(&ws, "rec/web.yaml"),
        "name: web\nreplicas: 5\nroutes:\n  - path: /api\n    weight: 0.5\n  - path: /v2\n"
    );
    // From the checkpoint on, nothing more to record.
    let commits = ws.commit_count();
    ws.kvgit(&["export"]).ok();
    assert_eq!(ws.commit_count(), commits);
}

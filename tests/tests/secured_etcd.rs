//! kvgit against a secured etcd: TLS with `ca_file`, mutual TLS, user + `password_file` with
//! auth enabled (token expiry, restarts), bad credentials and read-only users, secrets unseen.

use etcd_client::{Client, GetOptions};
use kvgit_tests::certs::TestPki;
use kvgit_tests::etcd::{EtcdOptions, EtcdServer, EtcdTls};
use kvgit_tests::kvgit::{kvgit_bin, Area, Run, Workspace};
use kvgit_tests::serve::{Serve, ServeConfig};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const ENTRIES: Area<'static> = Area {
    name: "entries",
    prefix: "/sigil/entries/",
    path: "entries",
    mode: "both",
};
/// Long enough for a loaded machine; the waits end as soon as the condition holds.
const WAIT: Duration = Duration::from_secs(60);
const PASSWORD: &str = "s3cr3t-Pa55-do-not-print";

async fn put(c: &mut Client, k: &str, v: &str) {
    c.put(k, v, None).await.expect("put");
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

/// Adds `lines` to the workspace config's `[backend]` table.
fn backend_settings(ws: &Workspace, lines: &[(&str, String)]) {
    let text = std::fs::read_to_string(&ws.config).expect("read config");
    let mut extra = String::new();
    for (name, value) in lines {
        extra.push_str(&format!("{name} = {value:?}\n"));
    }
    let text = text.replacen("[backend]\n", &format!("[backend]\n{extra}"), 1);
    std::fs::write(&ws.config, text).expect("write config");
}

/// The same settings as `KVGIT_BACKEND__*` variables, for `serve` (which rewrites the file).
fn backend_env(lines: &[(&str, String)]) -> Vec<(String, String)> {
    lines
        .iter()
        .map(|(name, value)| {
            (
                format!("KVGIT_BACKEND__{}", name.to_ascii_uppercase()),
                value.clone(),
            )
        })
        .collect()
}

fn start_serve(ws: &Workspace, etcd: &EtcdServer, env: &[(String, String)]) -> Serve {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Serve::start_with_env(ws, etcd.endpoint(), &ServeConfig::fast(&[ENTRIES]), &env)
}

fn path_setting(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_owned()
}

fn write_password(dir: &Path, password: &str) -> PathBuf {
    let file = dir.join("etcd-password");
    std::fs::write(&file, format!("{password}\n")).expect("write password file");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    file
}

/// export, status, log, a person's commit, plan, apply: every verb works and apply writes.
async fn every_verb_works(ws: &Workspace, c: &mut Client) -> Vec<Run> {
    let mut runs = Vec::new();
    put(c, "/sigil/entries/node-1/status", "up").await;
    let export = ws.kvgit(&["export"]).ok();
    assert!(export.stdout.contains("entries: committed"), "{export:?}");
    assert_eq!(ws.git(&["show", "main:entries/node-1/status"]), "up");
    runs.push(export);
    runs.push(ws.kvgit(&["status"]).ok());
    runs.push(ws.kvgit(&["log", "/sigil/entries/node-1/status"]).ok());
    ws.person_commits(&[("entries/node-2/status", Some(b"down"))], "add node-2");
    let plan = ws.kvgit(&["plan"]).ok();
    assert!(plan.stdout.contains("node-2"), "{plan:?}");
    runs.push(plan);
    runs.push(ws.kvgit(&["apply"]).ok());
    let kv = all(c, "/sigil/entries/").await;
    assert_eq!(
        kv.get("/sigil/entries/node-2/status").map(String::as_str),
        Some("down"),
        "{kv:?}"
    );
    runs
}

/// serve commits a KV change.
async fn serve_commits(serve: &Serve, ws: &Workspace, c: &mut Client, key: &str, value: &str) {
    put(c, &format!("/sigil/entries/{key}"), value).await;
    serve.wait_until(WAIT, &format!("{key} committed"), || {
        Command::new("git")
            .arg("--git-dir")
            .arg(&ws.repo)
            .args(["show", &format!("main:entries/{key}")])
            .output()
            .map(|o| o.status.success() && o.stdout == value.as_bytes())
            .unwrap_or(false)
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_with_ca_file_every_verb_and_serve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path());
    let etcd = EtcdServer::start_with(EtcdOptions {
        tls: Some(EtcdTls::from_pki(&pki)),
        ..EtcdOptions::default()
    });
    assert!(etcd.endpoint().starts_with("https://"));
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[ENTRIES]);
    let settings = [("ca_file", path_setting(&pki.ca_file()))];
    backend_settings(&ws, &settings);
    every_verb_works(&ws, &mut c).await;

    let serve = start_serve(&ws, &etcd, &backend_env(&settings));
    serve.wait_ready();
    serve_commits(&serve, &ws, &mut c, "node-3/status", "up").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_with_client_certificates_every_verb_and_serve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path());
    let etcd = EtcdServer::start_with(EtcdOptions {
        tls: Some(EtcdTls::from_pki(&pki)),
        client_cert_auth: true,
        ..EtcdOptions::default()
    });
    let mut c = etcd.client().await;
    let (cert, key) = pki.client("kvgit-test-node");
    let ws = Workspace::new(etcd.endpoint(), &[ENTRIES]);
    let settings = [
        ("ca_file", path_setting(&pki.ca_file())),
        ("cert_file", path_setting(&cert)),
        ("key_file", path_setting(&key)),
    ];
    backend_settings(&ws, &settings);
    every_verb_works(&ws, &mut c).await;

    let serve = start_serve(&ws, &etcd, &backend_env(&settings));
    serve.wait_ready();
    serve_commits(&serve, &ws, &mut c, "node-3/status", "up").await;

    // Without a client certificate the server refuses the handshake: named, not a hang.
    let bare = Workspace::new(etcd.endpoint(), &[ENTRIES]);
    backend_settings(&bare, &settings[..1]);
    let run = bare.kvgit(&["export"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("backend.cert_file"),
        "names the setting: {run:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn password_auth_survives_token_expiry_and_etcd_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path());
    let mut etcd = EtcdServer::start_with(EtcdOptions {
        tls: Some(EtcdTls::from_pki(&pki)),
        auth_token_ttl: Some(2),
        ..EtcdOptions::default()
    });
    etcd.enable_auth("root-password");
    let mut c = etcd.client().await;
    etcd.add_role(
        "kvgit-entries",
        &[
            ("readwrite", "/sigil/entries/", true),
            ("readwrite", "kvgit/ownership/", true),
        ],
    );
    etcd.add_user("kvgit-test-node", PASSWORD, &["kvgit-entries"]);
    let ws = Workspace::new(etcd.endpoint(), &[ENTRIES]);
    let settings = [
        ("ca_file", path_setting(&pki.ca_file())),
        ("user", "kvgit-test-node".to_owned()),
        (
            "password_file",
            path_setting(&write_password(dir.path(), PASSWORD)),
        ),
    ];
    backend_settings(&ws, &settings);
    every_verb_works(&ws, &mut c).await;

    let serve = start_serve(&ws, &etcd, &backend_env(&settings));
    serve.wait_ready();
    serve_commits(&serve, &ws, &mut c, "node-3/status", "up").await;
    // Several token lifetimes pass with nothing to do: the token serve holds expires.
    tokio::time::sleep(Duration::from_secs(7)).await;
    serve_commits(&serve, &ws, &mut c, "node-4/status", "after-expiry").await;

    // A restart forgets every token and breaks the watch; serve logs in again.
    etcd.restart();
    let mut c = etcd.client().await;
    serve_commits(&serve, &ws, &mut c, "node-5/status", "after-restart").await;
    serve.wait_ready();
    tokio::time::sleep(Duration::from_secs(5)).await;
    serve_commits(&serve, &ws, &mut c, "node-6/status", "after-both").await;
}

/// A config problem: non-zero exit, one line naming `needle`, no commit, KV unchanged.
async fn refused_before_any_write(ws: &Workspace, c: &mut Client, needle: &str) {
    let commits = ws.commit_count();
    let kv = all(c, "/sigil/").await;
    for verb in ["apply", "export"] {
        let run = ws.kvgit(&[verb]);
        eprintln!("kvgit {verb}: {}", run.stderr.trim_end());
        assert_ne!(run.code, 0, "{verb} must fail: {run:?}");
        let lines: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(lines.len(), 1, "{verb}: one line: {run:?}");
        assert!(lines[0].contains(needle), "{verb}: names {needle}: {run:?}");
        assert!(!run.stderr.contains(PASSWORD), "{run:?}");
    }
    assert_eq!(ws.commit_count(), commits, "no commit");
    assert_eq!(all(c, "/sigil/").await, kv, "KV unchanged");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_files_and_credentials_exit_non_zero_naming_them_and_write_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path());
    let other = TestPki::other(dir.path());
    let mut etcd = EtcdServer::start_with(EtcdOptions {
        tls: Some(EtcdTls::from_pki(&pki)),
        client_cert_auth: true,
        ..EtcdOptions::default()
    });
    etcd.enable_auth("root-password");
    etcd.add_role("kvgit-entries", &[("readwrite", "/sigil/", true)]);
    etcd.add_user("kvgit-test-node", PASSWORD, &["kvgit-entries"]);
    let mut c = etcd.client().await;
    let (cert, key) = pki.client("kvgit-test-node");
    let good = || {
        vec![
            ("ca_file", path_setting(&pki.ca_file())),
            ("cert_file", path_setting(&cert)),
            ("key_file", path_setting(&key)),
        ]
    };
    // A repository with a pending change, so `apply` would write if it got that far.
    let ws = Workspace::new(etcd.endpoint(), &[ENTRIES]);
    backend_settings(&ws, &good());
    put(&mut c, "/sigil/entries/a", "1").await;
    ws.kvgit(&["export"]).ok();
    ws.person_commits(&[("entries/b", Some(b"2"))], "add b");
    let config = std::fs::read_to_string(&ws.config).expect("read config");
    let with = |from: &str, to: &str| {
        std::fs::write(&ws.config, config.replace(from, to)).expect("write config");
    };

    let key_line = format!("key_file = {:?}\n", path_setting(&key));
    assert!(config.contains(&key_line));
    with(&key_line, "");
    refused_before_any_write(&ws, &mut c, "backend.cert_file and backend.key_file").await;

    let missing = dir.path().join("missing.pem");
    with(&path_setting(&cert), &path_setting(&missing));
    refused_before_any_write(&ws, &mut c, "backend.cert_file").await;

    let malformed = dir.path().join("malformed-key.pem");
    std::fs::write(
        &malformed,
        "-----BEGIN PRIVATE KEY-----\nnot base64 !!\n-----END PRIVATE KEY-----\n",
    )
    .expect("write");
    with(&path_setting(&key), &path_setting(&malformed));
    refused_before_any_write(&ws, &mut c, "backend.key_file").await;

    let (_, stranger_key) = pki.client("someone-else");
    with(&path_setting(&key), &path_setting(&stranger_key));
    refused_before_any_write(&ws, &mut c, "backend.key_file").await;

    with(
        &path_setting(&pki.ca_file()),
        &path_setting(&other.ca_file()),
    );
    refused_before_any_write(&ws, &mut c, "backend.ca_file").await;

    let wrong = dir.path().join("wrong-password");
    std::fs::write(&wrong, "not-the-password\n").expect("write");
    std::fs::write(
        &ws.config,
        config.replacen(
            "[backend]\n",
            &format!(
                "[backend]\nuser = \"kvgit-test-node\"\npassword_file = {:?}\n",
                path_setting(&wrong)
            ),
            1,
        ),
    )
    .expect("write config");
    refused_before_any_write(
        &ws,
        &mut c,
        "authentication failed for user kvgit-test-node (backend.password_file)",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_user_cannot_apply_and_is_told_which_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path());
    let mut etcd = EtcdServer::start_with(EtcdOptions {
        tls: Some(EtcdTls::from_pki(&pki)),
        ..EtcdOptions::default()
    });
    etcd.enable_auth("root-password");
    etcd.add_role(
        "kvgit-entries-read",
        &[
            ("read", "/sigil/entries/", true),
            ("readwrite", "kvgit/ownership/", true),
        ],
    );
    etcd.add_user("reader", PASSWORD, &["kvgit-entries-read"]);
    let mut c = etcd.client().await;
    put(&mut c, "/sigil/entries/a", "1").await;
    let ws = Workspace::new(etcd.endpoint(), &[ENTRIES]);
    backend_settings(
        &ws,
        &[
            ("ca_file", path_setting(&pki.ca_file())),
            ("user", "reader".to_owned()),
            (
                "password_file",
                path_setting(&write_password(dir.path(), PASSWORD)),
            ),
        ],
    );
    ws.kvgit(&["export"]).ok();
    ws.person_commits(
        &[("entries/a", Some(b"changed")), ("entries/b", Some(b"2"))],
        "change a, add b",
    );
    let commits = ws.commit_count();
    let run = ws.kvgit(&["apply"]);
    eprintln!("kvgit apply: {}", run.stderr.trim_end());
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("permission denied"), "{run:?}");
    assert!(
        run.stderr.contains("/sigil/entries/a"),
        "names the key: {run:?}"
    );
    assert!(
        run.stderr.contains("user reader"),
        "names the user: {run:?}"
    );
    assert_eq!(ws.commit_count(), commits);
    let kv = all(&mut c, "/sigil/entries/").await;
    assert_eq!(
        kv,
        BTreeMap::from([("/sigil/entries/a".to_owned(), "1".to_owned())])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_password_is_never_printed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path());
    let mut etcd = EtcdServer::start_with(EtcdOptions {
        tls: Some(EtcdTls::from_pki(&pki)),
        ..EtcdOptions::default()
    });
    etcd.enable_auth("root-password");
    etcd.add_role(
        "kvgit-entries",
        &[
            ("readwrite", "/sigil/entries/", true),
            ("readwrite", "kvgit/ownership/", true),
        ],
    );
    etcd.add_user("kvgit-test-node", PASSWORD, &["kvgit-entries"]);
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[ENTRIES]);
    let settings = [
        ("ca_file", path_setting(&pki.ca_file())),
        ("user", "kvgit-test-node".to_owned()),
        (
            "password_file",
            path_setting(&write_password(dir.path(), PASSWORD)),
        ),
    ];
    backend_settings(&ws, &settings);
    let mut seen: Vec<(String, String)> = Vec::new();
    for run in every_verb_works(&ws, &mut c).await {
        seen.push(("verb".into(), format!("{run:?}")));
    }
    // The backend config as a program would log it.
    let cfg = etcd.config_as("kvgit-test-node", PASSWORD);
    seen.push(("EtcdConfig Debug".into(), format!("{cfg:?}")));
    seen.push(("EtcdConfig Debug".into(), format!("{cfg:#?}")));
    // A wrong password's error, and `--help` of every subcommand.
    let bad = etcd.config_as("kvgit-test-node", &format!("{PASSWORD}-wrong"));
    let err = backend_etcd::EtcdBackend::connect(bad)
        .await
        .expect_err("wrong password");
    seen.push(("connect error".into(), format!("{err} / {err:?}")));
    for args in [
        vec!["--help"],
        vec!["export", "--help"],
        vec!["plan", "--help"],
        vec!["apply", "--help"],
        vec!["status", "--help"],
        vec!["log", "--help"],
        vec!["serve", "--help"],
    ] {
        let out = Command::new(kvgit_bin())
            .args(&args)
            .output()
            .expect("run kvgit");
        seen.push((
            format!("kvgit {}", args.join(" ")),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ));
    }

    let mut env = backend_env(&settings);
    env.push(("KVGIT_LOG".into(), "trace".into()));
    env.push(("RUST_LOG".into(), "trace".into()));
    let mut serve = start_serve(&ws, &etcd, &env);
    serve.wait_ready();
    serve_commits(&serve, &ws, &mut c, "node-3/status", "up").await;
    seen.push(("GET /status".into(), serve.status().to_string()));
    seen.push(("GET /metrics".into(), serve.metrics()));
    seen.push(("GET /".into(), serve.get("/").1));
    serve.terminate();
    seen.push((
        "serve log".into(),
        std::fs::read_to_string(&serve.log).expect("read serve log"),
    ));

    for (what, text) in &seen {
        assert!(
            !text.is_empty() || what == "GET /",
            "{what} printed nothing"
        );
        assert!(
            !text.contains(PASSWORD),
            "{what} shows the password:\n{text}"
        );
    }
    // The trace log did see the connection (so the check above had something to look at).
    let log = &seen.iter().find(|(w, _)| w == "serve log").expect("log").1;
    assert!(log.contains("kvgit-test-node") || log.len() > 1000, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_reports_permission_denied_and_applies_once_granted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path());
    let mut etcd = EtcdServer::start_with(EtcdOptions {
        tls: Some(EtcdTls::from_pki(&pki)),
        ..EtcdOptions::default()
    });
    etcd.enable_auth("root-password");
    etcd.add_role(
        "kvgit-entries",
        &[
            ("read", "/sigil/entries/", true),
            ("readwrite", "kvgit/ownership/", true),
        ],
    );
    etcd.add_user("kvgit-test-node", PASSWORD, &["kvgit-entries"]);
    let mut c = etcd.client().await;
    put(&mut c, "/sigil/entries/a", "1").await;
    let ws = Workspace::new(etcd.endpoint(), &[ENTRIES]);
    let settings = [
        ("ca_file", path_setting(&pki.ca_file())),
        ("user", "kvgit-test-node".to_owned()),
        (
            "password_file",
            path_setting(&write_password(dir.path(), PASSWORD)),
        ),
    ];
    backend_settings(&ws, &settings);
    ws.kvgit(&["export"]).ok();
    ws.person_commits(&[("entries/b", Some(b"2"))], "add b");

    let serve = start_serve(&ws, &etcd, &backend_env(&settings));
    serve.wait_until(WAIT, "/status names the refused key and user", || {
        let status = serve.status().to_string();
        status.contains("permission denied")
            && status.contains("/sigil/entries/b")
            && status.contains("kvgit-test-node")
    });
    let (code, _) = serve.get("/readyz");
    assert_ne!(code, 200, "not ready while the apply is refused");
    assert_eq!(serve.metric("kvgit_ready"), Some(0.0));
    assert_eq!(
        all(&mut c, "/sigil/entries/").await,
        BTreeMap::from([("/sigil/entries/a".to_owned(), "1".to_owned())]),
        "nothing written"
    );

    // An operator grants write access: the next retry applies the commit.
    etcd.etcdctl(&[
        "role",
        "grant-permission",
        "kvgit-entries",
        "readwrite",
        "/sigil/entries/",
        "--prefix=true",
    ]);
    serve.wait_until(WAIT, "b applied after the grant", || {
        etcd.etcdctl(&["get", "/sigil/entries/b", "--print-value-only"])
            .trim()
            == "2"
    });
    serve.wait_until(WAIT, "/status clear again", || {
        !serve.status().to_string().contains("permission denied")
    });
    serve.wait_until(WAIT, "kvgit_ready 1", || {
        serve.metric("kvgit_ready") == Some(1.0)
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn the_backend_logs_in_again_after_its_token_expired_watches_included() {
    use sync_core::KvBackend;
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path());
    let mut etcd = EtcdServer::start_with(EtcdOptions {
        tls: Some(EtcdTls::from_pki(&pki)),
        auth_token_ttl: Some(1),
        ..EtcdOptions::default()
    });
    etcd.enable_auth("root-password");
    etcd.add_role("rw", &[("readwrite", "/sigil/", true)]);
    etcd.add_user("kvgit-test-node", PASSWORD, &["rw"]);
    let mut cfg = etcd.config();
    cfg.user = Some("kvgit-test-node".into());
    cfg.password_file = Some(write_password(dir.path(), PASSWORD));
    let backend = backend_etcd::EtcdBackend::connect(cfg)
        .await
        .expect("connect with password_file");
    let mut c = etcd.client().await;
    // Idle for several token lifetimes, then a watch and a read.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let from = backend.current_revision().await.expect("revision");
    let mut watch = backend
        .watch(b"/sigil/", from.next())
        .await
        .expect("watch after expiry");
    put(&mut c, "/sigil/x", "1").await;
    assert_eq!(next_changes(&mut watch).await.len(), 1);
    // After a restart every token is gone: reads and new watches log in again.
    etcd.restart();
    let snap = backend
        .snapshot(b"/sigil/", None)
        .await
        .expect("read after restart");
    assert_eq!(snap.entries.len(), 1);
    let mut c = etcd.client().await;
    let mut watch = backend
        .watch(b"/sigil/", snap.revision.next())
        .await
        .expect("watch after restart");
    put(&mut c, "/sigil/y", "2").await;
    assert_eq!(next_changes(&mut watch).await.len(), 1);
}

async fn next_changes(watch: &mut sync_core::WatchStream) -> Vec<sync_core::KvChange> {
    use futures::StreamExt;
    loop {
        match watch.next().await {
            Some(Ok(sync_core::WatchEvent::Changes { changes, .. })) => return changes,
            Some(Ok(_)) => continue,
            other => panic!("watch ended: {other:?}"),
        }
    }
}

/// A user that may write area `a` but not `b`: the apply is refused before its first write,
/// naming b's key and the user, and none of a's keys (more than one transaction's worth,
/// written first) is written. Once b is granted, the same apply succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_area_leaves_the_other_areas_unwritten() {
    const A: Area<'static> = Area {
        name: "a",
        prefix: "/sigil/a/",
        path: "a",
        mode: "both",
    };
    const B: Area<'static> = Area {
        name: "b",
        prefix: "/sigil/b/",
        path: "b",
        mode: "both",
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path());
    let mut etcd = EtcdServer::start_with(EtcdOptions {
        tls: Some(EtcdTls::from_pki(&pki)),
        ..EtcdOptions::default()
    });
    etcd.enable_auth("root-password");
    etcd.add_role(
        "kvgit-node",
        &[
            ("readwrite", "/sigil/a/", true),
            ("read", "/sigil/b/", true),
            ("readwrite", "kvgit/ownership/", true),
        ],
    );
    etcd.add_user("node", PASSWORD, &["kvgit-node"]);
    let mut c = etcd.client().await;
    put(&mut c, "/sigil/a/seed", "a").await;
    put(&mut c, "/sigil/b/seed", "b").await;
    let ws = Workspace::new(etcd.endpoint(), &[A, B]);
    backend_settings(
        &ws,
        &[
            ("ca_file", path_setting(&pki.ca_file())),
            ("user", "node".to_owned()),
            (
                "password_file",
                path_setting(&write_password(dir.path(), PASSWORD)),
            ),
        ],
    );
    ws.kvgit(&["export"]).ok();
    // 300 keys of a (over two of etcd's 128-op transactions) come before b's one key.
    let names: Vec<String> = (0..300).map(|i| format!("a/k{i:03}")).collect();
    let mut files: Vec<(&str, Option<&[u8]>)> = names
        .iter()
        .map(|n| (n.as_str(), Some(&b"v"[..])))
        .collect();
    files.push(("b/x", Some(b"x")));
    ws.person_commits(&files, "300 keys in a, one in b");
    let commits = ws.commit_count();
    let before = all(&mut c, "/sigil/").await;

    let run = ws.kvgit(&["apply"]);
    eprintln!("kvgit apply: {}", run.stderr.trim_end());
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("permission denied"), "{run:?}");
    assert!(run.stderr.contains("/sigil/b/x"), "names b's key: {run:?}");
    assert!(run.stderr.contains("user node"), "names the user: {run:?}");
    assert_eq!(
        all(&mut c, "/sigil/a/").await.len(),
        1,
        "no key of area a written"
    );
    assert_eq!(all(&mut c, "/sigil/").await, before, "nothing written");
    assert_eq!(ws.commit_count(), commits, "nothing committed");

    etcd.etcdctl(&[
        "role",
        "grant-permission",
        "kvgit-node",
        "readwrite",
        "/sigil/b/",
        "--prefix=true",
    ]);
    ws.kvgit(&["apply"]).ok();
    assert_eq!(all(&mut c, "/sigil/a/").await.len(), 301);
    let b = all(&mut c, "/sigil/b/").await;
    assert_eq!(b.get("/sigil/b/x").map(String::as_str), Some("x"), "{b:?}");
}

/// A user who may read only its area's prefix cannot watch every key: an area catches up
/// by reading it instead, with the same answer; granted read on every key, it watches.
#[tokio::test(flavor = "multi_thread")]
async fn a_user_reading_only_its_prefix_still_gets_the_exact_delta() {
    use sync_core::KvBackend;
    let mut etcd = EtcdServer::start();
    etcd.enable_auth("root-password");
    etcd.add_role("entries-read", &[("read", "/sigil/entries/", true)]);
    etcd.add_user("reader", PASSWORD, &["entries-read"]);
    let mut c = etcd.client().await;
    put(&mut c, "/sigil/entries/a", "1").await;
    put(&mut c, "/sigil/entries/b", "1").await;
    let backend = backend_etcd::EtcdBackend::connect(etcd.config_as("reader", PASSWORD))
        .await
        .expect("connect as reader")
        .catch_up_by_watch_from(0);
    let after = backend.current_revision().await.expect("revision");
    put(&mut c, "/elsewhere/x", "1").await;
    put(&mut c, "/sigil/entries/a", "2").await;
    c.delete("/sigil/entries/b", None).await.expect("delete");
    let upto = backend.current_revision().await.expect("revision");
    let delta = || async {
        backend
            .changes_between(b"/sigil/entries/", after, upto)
            .await
            .expect("changes_between as reader")
            .expect("an exact answer")
            .into_iter()
            .map(|c| (c.key.to_string(), c.kind.into_value()))
            .collect::<BTreeMap<String, Option<Vec<u8>>>>()
    };
    let got = delta().await;
    assert_eq!(
        got,
        BTreeMap::from([
            ("/sigil/entries/a".to_owned(), Some(b"2".to_vec())),
            ("/sigil/entries/b".to_owned(), None),
        ])
    );
    assert_eq!(backend.caught_up_by_watch(), 0, "the wide watch is refused");

    // As the README says: read on the whole keyspace brings the watch back.
    etcd.etcdctl(&[
        "role",
        "grant-permission",
        "entries-read",
        "read",
        "--from-key",
        "",
    ]);
    assert_eq!(delta().await, got);
    assert_eq!(backend.caught_up_by_watch(), 1, "the watch answered");
}

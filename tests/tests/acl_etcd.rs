//! `kvgit acl plan|apply` on a real etcd with auth enabled: the roles and the node user the
//! config implies, exactly; every verb and `serve` working with those credentials and
//! nothing more; idempotence; stale kvgit roles removed; bad admin credentials in one line.

use kvgit_tests::etcd::{EtcdOptions, EtcdServer, EtcdTls};
use kvgit_tests::kvgit::{kvgit_bin, Area, Run, Workspace};
use kvgit_tests::serve::{git_files, poll_until, Remote, Serve, ServeConfig};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

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
    mode: "git-to-kv",
};
const ROOT_PASSWORD: &str = "root-secret-pw";
const CONVERGE: Duration = Duration::from_secs(30);

/// The node's credentials for kvgit, as settings from the environment (the workspace's
/// config file has none): user kvgit-test-node, password in `node.pw` next to the config.
const NODE_ENV: [(&str, &str); 2] = [
    ("KVGIT_BACKEND__USER", "kvgit-test-node"),
    ("KVGIT_BACKEND__PASSWORD_FILE", "node.pw"),
];

fn kvgit_env(ws: &Workspace, args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = Command::new(kvgit_bin())
        .arg("-c")
        .arg(&ws.config)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(ws.dir.path())
        .output()
        .expect("spawn kvgit");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `kvgit acl VERB --admin-user root --admin-password-file admin.pw ARGS…`, with the node's
/// settings in the environment (acl must not use them to log in).
fn acl(ws: &Workspace, verb: &str, extra: &[&str]) -> Run {
    let admin = ws.dir.path().join("admin.pw");
    if !admin.exists() {
        std::fs::write(&admin, format!("{ROOT_PASSWORD}\n")).expect("write admin.pw");
    }
    let mut args = vec![
        "acl",
        verb,
        "--admin-user",
        "root",
        "--admin-password-file",
        admin.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    kvgit_env(ws, &args, &NODE_ENV)
}

/// etcdctl as the node user; `Err(stderr)` when etcd refuses.
fn etcdctl_as_node(etcd: &EtcdServer, ws: &Workspace, args: &[&str]) -> Result<String, String> {
    let password = std::fs::read_to_string(ws.dir.path().join("node.pw")).expect("node.pw");
    let out = Command::new("etcdctl")
        .arg(format!("--endpoints={}", etcd.endpoint()))
        .arg(format!("--user=kvgit-test-node:{}", password.trim()))
        .args(args)
        .output()
        .expect("spawn etcdctl");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

fn secured_etcd() -> EtcdServer {
    let mut etcd = EtcdServer::start();
    etcd.enable_auth(ROOT_PASSWORD);
    etcd
}

#[test]
fn the_generated_user_runs_every_verb_and_serve_and_nothing_else() {
    let etcd = secured_etcd();
    let ws = Workspace::new(etcd.endpoint(), &[ENTRIES, ROUTES]);
    let pw = ws.dir.path().join("node.pw");

    let plan = acl(&ws, "plan", &["--detailed-exitcode"]);
    assert_eq!(
        plan.code, 2,
        "changes to make:\n{}{}",
        plan.stdout, plan.stderr
    );
    assert_eq!(
        lines(&plan.stdout),
        [
            "+ role kvgit-entries readwrite [/sigil/entries/, /sigil/entries0)",
            "+ role kvgit-entries-read read [/sigil/entries/, /sigil/entries0)",
            "+ role kvgit-ownership readwrite [kvgit/ownership/, kvgit/ownership0)",
            "+ role kvgit-routes readwrite [/sigil/routes/, /sigil/routes0)",
            "+ role kvgit-routes-read read [/sigil/routes/, /sigil/routes0)",
            &format!("+ user kvgit-test-node password new, written to {}", pw.display()),
            "+ user kvgit-test-node role kvgit-entries",
            "+ user kvgit-test-node role kvgit-ownership",
            "+ user kvgit-test-node role kvgit-routes",
            "# user kvgit-test-node gets readwrite on each area's prefix range and on sync.ownership_prefix; it needs nothing outside them (status, leases and watches need no key rights)",
            "# roles kvgit-<area>-read are for readers (monitoring, people); no user gets them here",
            "acl: 9 to add, 0 to change, 0 to remove (etcd, user kvgit-test-node)",
        ]
    );
    assert!(!pw.exists(), "plan writes nothing");

    let json = acl(&ws, "plan", &["--format", "json"]).ok();
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).expect("plan json");
    assert_eq!(doc["principal"], "user kvgit-test-node");
    assert_eq!(doc["changes"].as_array().map(Vec::len), Some(9));
    assert_eq!(doc["changes"][0]["op"], "add");
    assert_eq!(doc["changes"][0]["object"], "role");
    assert_eq!(doc["changes"][0]["name"], "kvgit-entries");
    assert_eq!(doc["changes"][0]["permission"]["type"], "readwrite");
    assert_eq!(doc["changes"][0]["permission"]["key"], "/sigil/entries/");
    assert_eq!(
        doc["changes"][0]["permission"]["range_end"],
        "/sigil/entries0"
    );
    assert_eq!(doc["changes"][6]["role"], "kvgit-entries");

    let applied = acl(&ws, "apply", &[]).ok();
    assert_eq!(
        applied.stdout.lines().last(),
        Some("acl: 9 added, 0 changed, 0 removed (etcd, user kvgit-test-node)"),
        "{}",
        applied.stdout
    );
    let mode = std::fs::metadata(&pw)
        .expect("node.pw")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the password file is private");
    let password = std::fs::read_to_string(&pw).expect("node.pw");
    assert!(
        !applied.stdout.contains(password.trim()) && !applied.stderr.contains(password.trim()),
        "the password is never printed"
    );

    // Idempotent: a second apply changes nothing, and plan agrees.
    let again = acl(&ws, "apply", &[]).ok();
    assert_eq!(
        again.stdout.trim(),
        "acl: no changes (etcd, user kvgit-test-node)"
    );
    let plan = acl(&ws, "plan", &["--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{}{}", plan.stdout, plan.stderr);
    assert_eq!(
        plan.stdout.lines().last(),
        Some("acl: no changes (etcd, user kvgit-test-node)")
    );

    // etcd itself: the node user writes its areas and nothing else.
    etcdctl_as_node(&etcd, &ws, &["put", "/sigil/entries/node-7/status", "up"])
        .expect("a write in an area is allowed");
    for outside in ["/sigil/other", "/sigil/entries", "kvgit/elsewhere", "/x"] {
        let refused = etcdctl_as_node(&etcd, &ws, &["put", outside, "v"])
            .expect_err("a write outside the areas is refused");
        assert!(
            refused.contains("permission denied"),
            "{outside}: {refused}"
        );
    }
    let refused = etcdctl_as_node(&etcd, &ws, &["user", "list"]).expect_err("no admin");
    assert!(refused.contains("permission denied"), "{refused}");

    // Every verb works as the node user.
    let export = kvgit_env(&ws, &["export"], &NODE_ENV).ok();
    assert!(
        export.stdout.contains("entries: committed"),
        "{}",
        export.stdout
    );
    kvgit_env(&ws, &["plan"], &NODE_ENV).ok();
    kvgit_env(&ws, &["apply"], &NODE_ENV).ok();
    let status = kvgit_env(&ws, &["status"], &NODE_ENV).ok();
    assert!(status.stdout.contains("entries"), "{}", status.stdout);
    let log = kvgit_env(&ws, &["log", "/sigil/entries/node-7/status"], &NODE_ENV).ok();
    assert_eq!(log.stdout.lines().count(), 1, "{}", log.stdout);

    // serve: a KV change is committed, a pushed Git change is applied.
    let remote = Remote::init(ws.dir.path());
    let cfg = ServeConfig::fast(&[ENTRIES, ROUTES]).remote(&remote);
    let serve = Serve::start_with_env(&ws, etcd.endpoint(), &cfg, &NODE_ENV);
    serve.wait_ready();
    etcd.etcdctl(&["put", "/sigil/entries/node-8/status", "down"]);
    let committed = poll_until(CONVERGE, || {
        git_files(&remote.path, "refs/heads/main", "entries")
            .get("node-8/status")
            .is_some_and(|v| v == b"down")
    });
    if !committed {
        serve.fail("the KV change never reached the remote");
    }
    remote.person_commits(
        ws.dir.path(),
        &[("routes/web", Some(b"10.0.0.1".as_slice()))],
        "route web",
    );
    let applied = poll_until(CONVERGE, || {
        etcd.etcdctl(&["get", "--print-value-only", "/sigil/routes/web"])
            .trim()
            == "10.0.0.1"
    });
    if !applied {
        serve.fail("the pushed change was never applied");
    }
    assert!(
        !std::fs::read_to_string(&serve.log)
            .expect("serve log")
            .contains("permission denied"),
        "serve needed a right it does not have:\n{}",
        serve.log_tail(30)
    );
}

#[test]
fn stale_kvgit_roles_go_and_grants_are_corrected_others_are_left_alone() {
    let etcd = secured_etcd();
    let ws = Workspace::new(etcd.endpoint(), &[ENTRIES, ROUTES]);
    acl(&ws, "apply", &[]).ok();
    // An operator's own role and a kvgit role drifted by hand.
    etcd.add_role("readers", &[("read", "/sigil/", true)]);
    etcd.etcdctl(&[
        "role",
        "grant-permission",
        "kvgit-entries",
        "write",
        "/elsewhere/",
        "--prefix=true",
    ]);
    etcd.etcdctl(&["user", "grant-role", "kvgit-test-node", "readers"]);

    ws.write_config(etcd.endpoint(), &[ENTRIES], "");
    let plan = acl(&ws, "plan", &[]).ok();
    assert_eq!(
        lines(&plan.stdout)
            .into_iter()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>(),
        [
            "~ role kvgit-entries - write [/elsewhere/, /elsewhere0)",
            "~ user kvgit-test-node - role kvgit-routes",
            "- role kvgit-routes",
            "- role kvgit-routes-read",
            "acl: 0 to add, 2 to change, 2 to remove (etcd, user kvgit-test-node)",
        ]
    );
    acl(&ws, "apply", &[]).ok();
    assert_eq!(
        acl(&ws, "plan", &[]).ok().stdout.lines().last(),
        Some("acl: no changes (etcd, user kvgit-test-node)")
    );
    let roles = etcd.etcdctl(&["role", "list"]);
    assert_eq!(
        lines(&roles),
        [
            "kvgit-entries",
            "kvgit-entries-read",
            "kvgit-ownership",
            "readers",
            "root"
        ]
    );
    // The operator's grant of a non-kvgit role is theirs to keep.
    let user = etcd.etcdctl(&["user", "get", "kvgit-test-node"]);
    assert!(user.contains("readers"), "{user}");
}

#[test]
fn a_changed_password_file_is_set_again() {
    let etcd = secured_etcd();
    let ws = Workspace::new(etcd.endpoint(), &[ENTRIES]);
    // A password file apply could not write is refused before any change.
    let unwritable = acl(
        &ws,
        "apply",
        &["--user-password-file", "/nonexistent/dir/node.pw"],
    );
    assert_eq!(unwritable.code, 1, "{}", unwritable.stdout);
    assert_eq!(
        unwritable.stderr.trim(),
        "kvgit: --user-password-file: cannot write /nonexistent/dir/node.pw: directory \
         /nonexistent/dir does not exist"
    );
    assert_eq!(
        etcd.etcdctl(&["role", "list"]).trim(),
        "root",
        "nothing done"
    );

    acl(&ws, "apply", &[]).ok();
    std::fs::write(ws.dir.path().join("node.pw"), "a-new-password\n").expect("write");
    let plan = acl(&ws, "plan", &[]).ok();
    assert_eq!(
        lines(&plan.stdout)[0],
        format!(
            "~ user kvgit-test-node password from {}",
            ws.dir.path().join("node.pw").display()
        )
    );
    acl(&ws, "apply", &[]).ok();
    etcdctl_as_node(&etcd, &ws, &["put", "/sigil/entries/a", "1"]).expect("new password works");
}

#[test]
fn bad_admin_credentials_fail_in_one_line() {
    let etcd = secured_etcd();
    let ws = Workspace::new(etcd.endpoint(), &[ENTRIES]);
    std::fs::write(ws.dir.path().join("admin.pw"), "wrong\n").expect("write");
    let run = acl(&ws, "apply", &[]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("refused admin user root"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("wrong"), "{}", run.stderr);
    assert!(!ws.dir.path().join("node.pw").exists(), "nothing done");

    let missing = kvgit_env(&ws, &["acl", "plan"], &[]);
    assert_eq!(missing.code, 1);
    assert_eq!(
        missing.stderr.trim(),
        "kvgit: etcd needs --admin-user and --admin-password-file (a user with the root role)"
    );
    let unreadable = kvgit_env(
        &ws,
        &[
            "acl",
            "plan",
            "--admin-user",
            "root",
            "--admin-password-file",
            "/nonexistent/admin.pw",
        ],
        &[],
    );
    assert_eq!(unreadable.code, 1);
    assert!(
        unreadable
            .stderr
            .starts_with("kvgit: --admin-password-file: cannot read /nonexistent/admin.pw"),
        "{}",
        unreadable.stderr
    );
}

/// TLS with `--client-cert-auth`: the node user has no password and logs in by the CN of
/// its certificate; the admin connection reuses the config's CA.
#[test]
fn a_user_without_password_logs_in_by_its_certificate() {
    let pki_dir = tempfile::tempdir().expect("tempdir");
    let pki = kvgit_tests::certs::TestPki::new(pki_dir.path());
    let mut etcd = EtcdServer::start_with(EtcdOptions {
        tls: Some(EtcdTls::from_pki(&pki)),
        client_cert_auth: true,
        ..EtcdOptions::default()
    });
    etcd.enable_auth(ROOT_PASSWORD);
    let ws = Workspace::new(etcd.endpoint(), &[ENTRIES]);
    let (cert, key) = pki.client("kvgit-test-node");
    let tls_env = [
        ("KVGIT_BACKEND__CA_FILE", pki.ca_file()),
        ("KVGIT_BACKEND__CERT_FILE", cert),
        ("KVGIT_BACKEND__KEY_FILE", key),
    ];
    let env: Vec<(&str, &str)> = tls_env
        .iter()
        .map(|(k, v)| (*k, v.to_str().expect("utf-8")))
        .collect();
    let admin = ws.dir.path().join("admin.pw");
    std::fs::write(&admin, ROOT_PASSWORD).expect("write");
    let admin_args = [
        "--admin-user",
        "root",
        "--admin-password-file",
        admin.to_str().expect("utf-8"),
    ];
    let mut args = vec!["acl", "apply"];
    args.extend(admin_args);
    let applied = kvgit_env(&ws, &args, &env).ok();
    assert!(
        applied
            .stdout
            .contains("+ user kvgit-test-node no password (logs in by client certificate CN)"),
        "{}",
        applied.stdout
    );
    kvgit_env(&ws, &["export"], &env).ok();
    etcd.etcdctl(&["put", "/sigil/entries/a", "1"]);
    let export = kvgit_env(&ws, &["export"], &env).ok();
    assert!(
        export.stdout.contains("entries: committed"),
        "{}",
        export.stdout
    );
    assert_eq!(
        git_files(&ws.repo, "refs/heads/main", "entries")
            .get("a")
            .map(Vec::as_slice),
        Some(b"1".as_slice())
    );
    let mut args = vec!["acl", "plan"];
    args.extend(admin_args);
    let plan = kvgit_env(&ws, &args, &env).ok();
    assert_eq!(
        plan.stdout.lines().last(),
        Some("acl: no changes (etcd, user kvgit-test-node)")
    );
}

/// Every shipped example config is accepted by the real binary: `acl plan` loads and
/// validates the config first and only then asks for the admin credentials.
#[test]
fn every_example_config_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        seen += 1;
        let out = Command::new(kvgit_bin())
            .arg("-c")
            .arg(&path)
            .args(["acl", "plan"])
            .env_remove("CONSUL_HTTP_ADDR")
            .output()
            .expect("spawn kvgit");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with("kvgit: etcd needs --admin-user")
                || stderr.starts_with("kvgit: Consul needs --admin-token-file"),
            "{}: {stderr}",
            path.display()
        );
    }
    assert!(seen >= 3, "examples/*.toml: found {seen}");
}

/// `backend.password` given inline (here from the environment) is the node's password: set,
/// checked, never written to a file.
#[test]
fn a_password_from_the_settings_is_set_as_it_is() {
    let etcd = secured_etcd();
    let ws = Workspace::new(etcd.endpoint(), &[ENTRIES]);
    std::fs::write(ws.dir.path().join("admin.pw"), ROOT_PASSWORD).expect("write");
    let env = [
        ("KVGIT_BACKEND__USER", "kvgit-test-node"),
        ("KVGIT_BACKEND__PASSWORD", "pw-from-env"),
    ];
    let admin = ["--admin-user", "root", "--admin-password-file", "admin.pw"];
    let run = |verb: &str| {
        let mut args = vec!["acl", verb];
        args.extend(admin);
        kvgit_env(&ws, &args, &env).ok()
    };
    let applied = run("apply");
    assert!(
        applied
            .stdout
            .contains("+ user kvgit-test-node password from backend.password\n"),
        "{}",
        applied.stdout
    );
    assert!(!applied.stdout.contains("pw-from-env"));
    assert_eq!(
        run("plan").stdout.lines().last(),
        Some("acl: no changes (etcd, user kvgit-test-node)")
    );
    kvgit_env(&ws, &["export"], &env).ok();
}

//! kvgit against a secured Consul (the in-repo API with ACLs, default deny, and TLS): every
//! verb and `serve` over TLS with client certificates and a `token_file` whose policy covers
//! the areas; Consul's CLI variables for what the config leaves unset; bad files and tokens
//! refused naming the setting before any write; a token without write on one area refused
//! naming key and credential (CLI and serve); the token never printed.
//!
//! A real agent (`CONSUL_HTTP_ADDR`) cannot be given ACLs or TLS by a test: these tests are
//! skipped there.

use kvgit_tests::certs::TestPki;
use kvgit_tests::consul::{AclToken, ConsulOptions, ConsulServer, ConsulTls};
use kvgit_tests::kvgit::{kvgit_bin, Area, Run, Workspace};
use kvgit_tests::serve::{Serve, ServeConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const ENTRIES: Area<'static> = Area {
    name: "entries",
    prefix: "sigil/entries/",
    path: "entries",
    mode: "both",
};
const CONFIG: Area<'static> = Area {
    name: "config",
    prefix: "sigil/config/",
    path: "config",
    mode: "git-to-kv",
};
const MANAGEMENT: &str = "management-s3cr3t";
const WAIT: Duration = Duration::from_secs(60);

/// What `kvgit acl` grants a node (server/src/acl/consul.rs), for `areas`: write on each
/// area, `write` or `read` as given.
fn node_rules(areas: &[(&str, &str)]) -> String {
    let mut rules = String::new();
    for (prefix, policy) in areas {
        rules.push_str(&format!(
            "key_prefix \"{prefix}\" {{ policy = \"{policy}\" }}\n"
        ));
    }
    rules.push_str(
        "key_prefix \"kvgit/ownership/\" { policy = \"write\" }\n\
         key \"kvgit/revision-probe\" { policy = \"read\" }\n\
         session_prefix \"\" { policy = \"write\" }\n\
         node_prefix \"\" { policy = \"read\" }\n\
         agent_prefix \"\" { policy = \"read\" }\n",
    );
    rules
}

/// A Consul with ACLs (and TLS when `pki` is given), or `None` for a real agent.
fn secured_consul(pki: Option<&TestPki>, verify_incoming: bool) -> Option<ConsulServer> {
    let tls = pki.map(|pki| {
        let (cert_file, key_file) = pki.server("localhost");
        ConsulTls {
            cert_file,
            key_file,
            ca_file: pki.ca_file(),
            verify_incoming,
        }
    });
    let server = ConsulServer::start_with(ConsulOptions {
        acl_management_token: Some(MANAGEMENT.to_string()),
        tls,
        ..ConsulOptions::default()
    });
    if server.is_real() {
        eprintln!("skipped: a real agent's ACLs and TLS are not the test's to configure");
        return None;
    }
    Some(server)
}

fn write_secret(dir: &Path, name: &str, secret: &str) -> PathBuf {
    let file = dir.join(name);
    std::fs::write(&file, format!("{secret}\n")).expect("write token file");
    file
}

/// `[backend]` settings: name and value.
type Settings = Vec<(&'static str, String)>;

fn path_setting(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_owned()
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

fn workspace(server: &ConsulServer, areas: &[Area<'_>]) -> Workspace {
    let ws = Workspace::new(server.addr(), &[]);
    ws.set_backend_kind("consul");
    ws.write_config(server.addr(), areas, "");
    ws
}

/// `kvgit ARGS…` with `env` and no Consul variable of the test's own environment.
fn kvgit_env(ws: &Workspace, args: &[&str], env: &[(&str, String)]) -> Run {
    let mut command = Command::new(kvgit_bin());
    command
        .arg("-c")
        .arg(&ws.config)
        .args(args)
        .current_dir(ws.dir.path());
    for (name, _) in std::env::vars() {
        if name.starts_with("CONSUL_") {
            command.env_remove(name);
        }
    }
    let out = command
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("spawn kvgit");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn put(server: &ConsulServer, key: &str, value: &str) {
    let response = server.request("PUT", &format!("/v1/kv/{key}"), value.as_bytes());
    assert_eq!(response.status, 200, "PUT {key}: {}", response.text());
}

/// Every key under `sigil/` with its value, read with the management token.
fn all(server: &ConsulServer) -> BTreeMap<String, String> {
    let response = server.request("GET", "/v1/kv/sigil/?recurse", b"");
    if response.status == 404 {
        return BTreeMap::new();
    }
    assert_eq!(response.status, 200, "{}", response.text());
    use base64::Engine;
    response
        .json()
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            let value = e["Value"].as_str().map_or(Vec::new(), |v| {
                base64::engine::general_purpose::STANDARD
                    .decode(v)
                    .expect("base64")
            });
            (
                e["Key"].as_str().expect("Key").to_string(),
                String::from_utf8_lossy(&value).into_owned(),
            )
        })
        .collect()
}

/// export, status, log, plan, apply: each succeeds and does its work.
fn every_verb_works(ws: &Workspace, server: &ConsulServer, env: &[(&str, String)]) -> Vec<Run> {
    let mut runs = Vec::new();
    let ok = |run: Run| {
        assert_eq!(run.code, 0, "{run:?}");
        run
    };
    put(server, "sigil/entries/node-1/status", "up");
    let export = ok(kvgit_env(ws, &["export"], env));
    assert!(export.stdout.contains("entries: committed"), "{export:?}");
    assert_eq!(ws.git(&["show", "main:entries/node-1/status"]), "up");
    runs.push(export);
    runs.push(ok(kvgit_env(ws, &["status"], env)));
    runs.push(ok(kvgit_env(
        ws,
        &["log", "sigil/entries/node-1/status"],
        env,
    )));
    ws.person_commits(&[("entries/node-2/status", Some(b"down"))], "add node-2");
    let plan = ok(kvgit_env(ws, &["plan"], env));
    assert!(plan.stdout.contains("node-2"), "{plan:?}");
    runs.push(plan);
    runs.push(ok(kvgit_env(ws, &["apply"], env)));
    assert_eq!(
        all(server)
            .get("sigil/entries/node-2/status")
            .map(String::as_str),
        Some("down")
    );
    runs
}

fn start_serve(
    ws: &Workspace,
    server: &ConsulServer,
    areas: &[Area<'_>],
    env: &[(String, String)],
) -> Serve {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Serve::start_with_env(ws, server.addr(), &ServeConfig::fast(areas), &env)
}

fn serve_commits(serve: &Serve, ws: &Workspace, server: &ConsulServer, key: &str, value: &str) {
    put(server, &format!("sigil/entries/{key}"), value);
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

/// The TLS + client certificate + token file settings for a node token.
fn secured_settings(dir: &Path, pki: &TestPki, token: &AclToken) -> Vec<(&'static str, String)> {
    let (cert, key) = pki.client("kvgit-test-node");
    vec![
        (
            "token_file",
            path_setting(&write_secret(dir, "consul-token", &token.secret)),
        ),
        ("ca_file", path_setting(&pki.ca_file())),
        ("cert_file", path_setting(&cert)),
        ("key_file", path_setting(&key)),
        ("tls_server_name", "localhost".to_string()),
    ]
}

#[test]
fn tls_client_certificates_and_token_file_every_verb_and_serve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path());
    let Some(server) = secured_consul(Some(&pki), true) else {
        return;
    };
    let token = server.token_with_rules(
        "kvgit-test-node",
        &node_rules(&[("sigil/entries/", "write")]),
    );
    let ws = workspace(&server, &[ENTRIES]);
    let settings = secured_settings(dir.path(), &pki, &token);
    backend_settings(&ws, &settings);
    every_verb_works(&ws, &server, &[]);

    let serve = start_serve(&ws, &server, &[ENTRIES], &backend_env(&settings));
    serve.wait_ready();
    serve_commits(&serve, &ws, &server, "node-3/status", "up");
}

#[test]
fn consul_cli_variables_fill_what_the_config_leaves_unset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path());
    let Some(server) = secured_consul(Some(&pki), false) else {
        return;
    };
    let token = server.token_with_rules(
        "kvgit-test-node",
        &node_rules(&[("sigil/entries/", "write")]),
    );
    let ws = workspace(&server, &[ENTRIES]);
    // No backend setting but the kind: address, TLS and token come from Consul's variables,
    // the address without a scheme (CONSUL_HTTP_SSL makes it https).
    let text = std::fs::read_to_string(&ws.config).expect("read config");
    let text = text.replacen(&format!("endpoints = [\"{}\"]\n", server.addr()), "", 1);
    assert!(!text.contains("endpoints"), "{text}");
    std::fs::write(&ws.config, text).expect("write config");
    let host_port = server.addr().trim_start_matches("https://").to_string();
    let token_file = path_setting(&write_secret(dir.path(), "consul-token", &token.secret));
    let env = vec![
        ("CONSUL_HTTP_ADDR", host_port.clone()),
        ("CONSUL_HTTP_SSL", "true".to_string()),
        ("CONSUL_CACERT", path_setting(&pki.ca_file())),
        ("CONSUL_HTTP_TOKEN_FILE", token_file.clone()),
    ];
    every_verb_works(&ws, &server, &env);

    // Without CONSUL_HTTP_SSL a scheme-less address is http, which a TLS port does not answer.
    let plain: Vec<_> = env
        .iter()
        .filter(|(k, _)| *k != "CONSUL_HTTP_SSL")
        .cloned()
        .collect();
    let run = kvgit_env(&ws, &["export"], &plain);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains(&format!("http://{host_port}")),
        "{run:?}"
    );

    // The config wins over the environment: its token_file is used, and named.
    let wrong = write_secret(dir.path(), "wrong-token", "not-a-known-token");
    backend_settings(&ws, &[("token_file", path_setting(&wrong))]);
    let run = kvgit_env(&ws, &["export"], &env);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("ACL not found") && run.stderr.contains("backend.token_file"),
        "{run:?}"
    );
    assert!(!run.stderr.contains(&token.secret), "{run:?}");
}

/// `apply` and `export` each exit non-zero with one line naming `needle`; nothing written.
fn refused_before_any_write(
    ws: &Workspace,
    server: &ConsulServer,
    env: &[(&str, String)],
    needle: &str,
    secret: &str,
) {
    let commits = ws.commit_count();
    let kv = all(server);
    for verb in ["apply", "export"] {
        let run = kvgit_env(ws, &[verb], env);
        assert_ne!(run.code, 0, "{verb} must fail: {run:?}");
        let lines: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(lines.len(), 1, "{verb}: one line: {run:?}");
        eprintln!("  {verb}: {}", lines[0]);
        assert!(lines[0].contains(needle), "{verb}: names {needle}: {run:?}");
        assert!(
            !run.stderr.contains(secret) && !run.stdout.contains(secret),
            "{run:?}"
        );
    }
    assert_eq!(ws.commit_count(), commits, "no commit");
    assert_eq!(all(server), kv, "KV unchanged");
}

#[test]
fn bad_files_and_tokens_are_refused_naming_the_setting_and_nothing_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path());
    let other = TestPki::other(dir.path());
    let Some(server) = secured_consul(Some(&pki), true) else {
        return;
    };
    let token = server.token_with_rules(
        "kvgit-test-node",
        &node_rules(&[("sigil/entries/", "write")]),
    );
    let powerless =
        server.token_with_rules("powerless", "key_prefix \"nothing/\" { policy = \"read\" }");
    let good = secured_settings(dir.path(), &pki, &token);
    let ws = workspace(&server, &[ENTRIES]);
    backend_settings(&ws, &good);
    put(&server, "sigil/entries/a", "1");
    kvgit_env(&ws, &["export"], &[]);
    ws.person_commits(&[("entries/b", Some(b"2"))], "add b");

    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a PEM file\n").expect("write garbage");
    let empty = write_secret(dir.path(), "empty-token", "");
    let unknown = write_secret(
        dir.path(),
        "unknown-token",
        "00000000-dead-beef-0000-000000000000",
    );
    let weak = write_secret(dir.path(), "weak-token", &powerless.secret);
    let (other_cert, other_key) = other.client("kvgit-test-node");
    let missing = dir.path().join("missing.pem");
    let cases: Vec<(&str, Settings, &str)> = vec![
        (
            "missing token file",
            vec![("token_file", path_setting(&missing))],
            "backend.token_file",
        ),
        (
            "empty token file",
            vec![("token_file", path_setting(&empty))],
            "backend.token_file",
        ),
        (
            "unknown token",
            vec![("token_file", path_setting(&unknown))],
            "ACL not found",
        ),
        (
            "token without the policy",
            vec![("token_file", path_setting(&weak))],
            "Permission denied",
        ),
        (
            "missing CA",
            vec![("ca_file", path_setting(&missing))],
            "backend.ca_file",
        ),
        (
            "garbage CA",
            vec![("ca_file", path_setting(&garbage))],
            "backend.ca_file",
        ),
        (
            "another CA",
            vec![("ca_file", path_setting(&other.ca_file()))],
            "backend.ca_file",
        ),
        (
            "a server name the certificate does not carry",
            vec![("tls_server_name", "wrong.example".to_string())],
            "backend.tls_server_name",
        ),
        (
            "garbage certificate",
            vec![("cert_file", path_setting(&garbage))],
            "backend.cert_file",
        ),
        (
            "garbage key",
            vec![("key_file", path_setting(&garbage))],
            "backend.key_file",
        ),
        (
            "a certificate of another CA",
            vec![
                ("cert_file", path_setting(&other_cert)),
                ("key_file", path_setting(&other_key)),
            ],
            "backend.cert_file",
        ),
    ];
    for (what, overrides, needle) in cases {
        eprintln!("case: {what}");
        let mut settings = good.clone();
        settings.retain(|(k, _)| !overrides.iter().any(|(o, _)| o == k));
        settings.extend(overrides);
        // Rewrite the backend table from the workspace's plain config.
        ws.write_config(server.addr(), &[ENTRIES], "");
        let text = std::fs::read_to_string(&ws.config).expect("read config");
        std::fs::write(
            &ws.config,
            text.replacen("kind = \"etcd\"", "kind = \"consul\"", 1),
        )
        .expect("write config");
        backend_settings(&ws, &settings);
        refused_before_any_write(&ws, &server, &[], needle, &token.secret);
    }
    // No client certificate where the agent verifies incoming connections.
    ws.write_config(server.addr(), &[ENTRIES], "");
    let mut settings = good.clone();
    settings.retain(|(k, _)| *k != "cert_file" && *k != "key_file");
    backend_settings(&ws, &settings);
    refused_before_any_write(&ws, &server, &[], "backend.cert_file", &token.secret);
    // A bad file from Consul's variables is named by the variable.
    let mut settings = good.clone();
    settings.retain(|(k, _)| *k != "ca_file");
    ws.write_config(server.addr(), &[ENTRIES], "");
    backend_settings(&ws, &settings);
    let env = [("CONSUL_CACERT", path_setting(&missing))];
    refused_before_any_write(&ws, &server, &env, "CONSUL_CACERT", &token.secret);
}

#[test]
fn a_token_without_write_on_one_area_is_refused_naming_key_and_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(server) = secured_consul(None, false) else {
        return;
    };
    let token = server.token_with_rules(
        "kvgit-test-node",
        &node_rules(&[("sigil/entries/", "write"), ("sigil/config/", "read")]),
    );
    let token_file = path_setting(&write_secret(dir.path(), "consul-token", &token.secret));
    let settings = vec![("token_file", token_file.clone())];
    let ws = workspace(&server, &[ENTRIES, CONFIG]);
    backend_settings(&ws, &settings);
    put(&server, "sigil/config/a", "1");
    put(&server, "sigil/entries/e", "1");
    let first = kvgit_env(&ws, &["export"], &[]);
    assert_eq!(first.code, 0, "{first:?}");
    ws.person_commits(
        &[("config/a", Some(b"changed")), ("config/b", Some(b"2"))],
        "change a, add b",
    );
    let kv = all(&server);
    let commits = ws.commit_count();
    let run = kvgit_env(&ws, &["apply", "--area", "config"], &[]);
    assert_ne!(run.code, 0, "{run:?}");
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "one line: {run:?}");
    eprintln!("apply: {}", lines[0]);
    assert!(
        lines[0].contains("sigil/config/a"),
        "names the key: {run:?}"
    );
    assert!(
        lines[0].contains("backend.token_file"),
        "names the setting: {run:?}"
    );
    assert!(
        lines[0].contains(&token.accessor),
        "names the accessor: {run:?}"
    );
    assert!(!run.stderr.contains(&token.secret), "{run:?}");
    assert_eq!(all(&server), kv, "KV unchanged");
    assert_eq!(ws.commit_count(), commits, "no commit");

    let serve = start_serve(&ws, &server, &[ENTRIES, CONFIG], &backend_env(&settings));
    // The area's own entry in /status names the refused key and the credential.
    let area = |name: &str| {
        serve.status()["areas"]
            .as_array()
            .and_then(|areas| areas.iter().find(|a| a["area"] == name).cloned())
            .unwrap_or_default()
    };
    serve.wait_until(WAIT, "/status names the refusal on the area", || {
        area("config")["apply_error"]
            .as_str()
            .is_some_and(|e| e.contains("lacks permission 'key:write'"))
    });
    // Retried every sync interval, failing the same way each time: the error stays shown
    // through the retries instead of blinking away while one is planned.
    let mut error = String::new();
    // 1.5 s: past at least one retry (the fetch interval is 1 s).
    for _ in 0..60 {
        error = area("config")["apply_error"].to_string();
        assert!(
            error.contains("lacks permission"),
            "shown at every read: {error}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    eprintln!("/status config apply_error: {error}");
    assert!(error.contains("sigil/config/a"), "{error}");
    assert!(error.contains("backend.token_file"), "{error}");
    assert!(error.contains(&token.accessor), "{error}");
    assert_eq!(area("entries")["apply_error"], serde_json::Value::Null);
    let status = serve.status().to_string();
    assert!(!status.contains(&token.secret), "{status}");
    let (code, body) = serve.get("/readyz");
    assert_ne!(code, 200, "{body}");
    assert!(body.contains("config"), "/readyz names the area: {body}");
    assert_eq!(serve.metric("kvgit_ready"), Some(0.0));
    // The other area keeps working.
    serve_commits(&serve, &ws, &server, "still/works", "yes");
    assert_eq!(
        all(&server).get("sigil/config/a").map(String::as_str),
        Some("1")
    );
}

#[test]
fn the_token_is_never_printed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path());
    let Some(server) = secured_consul(Some(&pki), true) else {
        return;
    };
    let token = server.token_with_rules(
        "kvgit-test-node",
        &node_rules(&[("sigil/entries/", "write")]),
    );
    let ws = workspace(&server, &[ENTRIES]);
    let settings = secured_settings(dir.path(), &pki, &token);
    backend_settings(&ws, &settings);
    let trace = [
        ("RUST_LOG", "trace".to_string()),
        ("KVGIT_LOG", "trace".to_string()),
    ];
    let mut seen: Vec<(String, String)> = Vec::new();
    for run in every_verb_works(&ws, &server, &trace) {
        seen.push(("verb".into(), format!("{run:?}")));
    }
    // The token given inline through the environment, and through Consul's variable.
    for env in [
        vec![("KVGIT_BACKEND__TOKEN", token.secret.clone())],
        vec![("CONSUL_HTTP_TOKEN", token.secret.clone())],
    ] {
        ws.write_config(server.addr(), &[ENTRIES], "");
        let mut file_settings = settings.clone();
        file_settings.retain(|(k, _)| *k != "token_file");
        backend_settings(&ws, &file_settings);
        let text = std::fs::read_to_string(&ws.config).expect("read config");
        std::fs::write(
            &ws.config,
            text.replacen("kind = \"etcd\"", "kind = \"consul\"", 1),
        )
        .expect("write config");
        let mut env = env;
        env.extend(trace.iter().cloned());
        let run = kvgit_env(&ws, &["export"], &env);
        assert_eq!(run.code, 0, "{run:?}");
        seen.push((
            "export with the token in the environment".into(),
            format!("{run:?}"),
        ));
    }
    let cfg = backend_consul::ConsulConfig {
        token: Some(token.secret.as_str().into()),
        ..backend_consul::ConsulConfig::default()
    };
    seen.push(("ConsulConfig Debug".into(), format!("{cfg:?} {cfg:#?}")));
    for args in [
        vec!["--help"],
        vec!["export", "--help"],
        vec!["plan", "--help"],
        vec!["apply", "--help"],
        vec!["status", "--help"],
        vec!["serve", "--help"],
    ] {
        let run = kvgit_env(&ws, &args, &[("CONSUL_HTTP_TOKEN", token.secret.clone())]);
        seen.push((format!("kvgit {}", args.join(" ")), format!("{run:?}")));
    }

    ws.write_config(server.addr(), &[ENTRIES], "");
    let mut env = backend_env(&settings);
    env.push(("KVGIT_LOG".into(), "trace".into()));
    env.push(("RUST_LOG".into(), "trace".into()));
    let serve = start_serve(&ws, &server, &[ENTRIES], &env);
    serve.wait_ready();
    serve_commits(&serve, &ws, &server, "node-3/status", "up");
    seen.push(("GET /status".into(), serve.status().to_string()));
    seen.push(("GET /metrics".into(), serve.metrics()));
    seen.push(("GET /".into(), serve.get("/").1));
    seen.push((
        "serve log".into(),
        std::fs::read_to_string(&serve.log).expect("read serve log"),
    ));
    for (what, text) in &seen {
        assert!(
            !text.contains(&token.secret),
            "{what} shows the token:\n{text}"
        );
    }
    let log = &seen.iter().find(|(w, _)| w == "serve log").expect("log").1;
    assert!(log.len() > 1000, "the trace log saw the traffic: {log}");
}

#[test]
fn keys_the_token_may_not_read_stop_export_instead_of_being_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(server) = secured_consul(None, false) else {
        return;
    };
    let full = server.token_with_rules("full", &node_rules(&[("sigil/entries/", "write")]));
    let mut rules = node_rules(&[("sigil/entries/", "write")]);
    rules.push_str("key_prefix \"sigil/entries/hidden/\" { policy = \"deny\" }\n");
    let partial = server.token_with_rules("partial", &rules);
    put(&server, "sigil/entries/a", "1");
    put(&server, "sigil/entries/hidden/b", "2");
    let ws = workspace(&server, &[ENTRIES]);
    let token_file = write_secret(dir.path(), "consul-token", &full.secret);
    backend_settings(&ws, &[("token_file", path_setting(&token_file))]);
    let run = kvgit_env(&ws, &["export"], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(ws.git(&["show", "main:entries/hidden/b"]), "2");
    let commits = ws.commit_count();

    // Consul leaves the hidden key out of the listing (X-Consul-Results-Filtered-By-ACLs):
    // read as the area's content, it would be committed as deleted.
    std::fs::write(&token_file, &partial.secret).expect("swap the token");
    put(&server, "sigil/entries/a", "changed");
    let run = kvgit_env(&ws, &["export"], &[]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("sigil/entries/") && run.stderr.contains("may not read"),
        "{run:?}"
    );
    assert!(run.stderr.contains("backend.token_file"), "{run:?}");
    assert_eq!(ws.commit_count(), commits, "nothing committed");
    assert_eq!(ws.git(&["show", "main:entries/hidden/b"]), "2");
    assert_eq!(all(&server).len(), 2, "nothing deleted");
    eprintln!("export: {}", run.stderr.trim());
}

/// Also against a real agent (`CONSUL_HTTP_ADDR`, with its `CONSUL_HTTP_TOKEN` if any): the
/// address and the token come from Consul's variables alone.
#[test]
fn address_and_token_from_consul_variables_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ConsulServer::start_with(ConsulOptions {
        acl_management_token: Some(MANAGEMENT.to_string()),
        ..ConsulOptions::default()
    });
    eprintln!("testing {}", server.describe());
    let prefix = server.prefix("env");
    let token = if server.is_real() {
        server.token().map(str::to_string)
    } else {
        Some(
            server
                .token_with_rules("env", &node_rules(&[(&prefix, "write")]))
                .secret,
        )
    };
    let area = Area {
        name: "env",
        prefix: &prefix,
        path: "env",
        mode: "both",
    };
    let ws = workspace(&server, &[area]);
    let text = std::fs::read_to_string(&ws.config).expect("read config");
    let text = text.replacen(&format!("endpoints = [\"{}\"]\n", server.addr()), "", 1);
    std::fs::write(&ws.config, text).expect("write config");
    let mut env = vec![(
        "CONSUL_HTTP_ADDR",
        server.addr().trim_start_matches("http://").to_string(),
    )];
    if let Some(token) = &token {
        let file = write_secret(dir.path(), "consul-token", token);
        env.push(("CONSUL_HTTP_TOKEN_FILE", path_setting(&file)));
    }
    put(&server, &format!("{prefix}a"), "1");
    let run = kvgit_env(&ws, &["export"], &env);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(ws.git(&["show", "main:env/a"]), "1");
    ws.person_commits(&[("env/b", Some(b"2"))], "add b");
    let run = kvgit_env(&ws, &["apply"], &env);
    assert_eq!(run.code, 0, "{run:?}");
    let b = server.request("GET", &format!("/v1/kv/{prefix}b?raw"), b"");
    assert_eq!((b.status, b.text()), (200, "2".to_string()));
    if let Some(token) = &token {
        assert!(!format!("{run:?}").contains(token.as_str()));
    }
    // Without the variables the default address is asked: refused naming it, or (an agent
    // on the default port) the missing token.
    if !server.is_real() {
        let run = kvgit_env(&ws, &["export"], &[]);
        assert_ne!(run.code, 0, "{run:?}");
        assert!(run.stderr.contains("127.0.0.1:8500"), "{run:?}");
    }
}

/// A token that may write area entries but not config: the apply is refused before its
/// first write, naming config's key and the token, and none of entries' keys (more than
/// one 64-op transaction's worth, written first) is written. With a token that may write
/// both, the same apply succeeds.
#[test]
fn a_refused_area_leaves_the_other_areas_unwritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(server) = secured_consul(None, false) else {
        return;
    };
    let token = server.token_with_rules(
        "kvgit-test-node",
        &node_rules(&[("sigil/entries/", "write"), ("sigil/config/", "read")]),
    );
    let token_path = write_secret(dir.path(), "consul-token", &token.secret);
    let ws = workspace(&server, &[ENTRIES, CONFIG]);
    backend_settings(&ws, &[("token_file", path_setting(&token_path))]);
    put(&server, "sigil/config/a", "1");
    put(&server, "sigil/entries/e", "1");
    let first = kvgit_env(&ws, &["export"], &[]);
    assert_eq!(first.code, 0, "{first:?}");
    // 100 keys of entries (over one 64-op transaction) come before config's one key.
    let names: Vec<String> = (0..100).map(|i| format!("entries/k{i:03}")).collect();
    let mut files: Vec<(&str, Option<&[u8]>)> = names
        .iter()
        .map(|n| (n.as_str(), Some(&b"v"[..])))
        .collect();
    files.push(("config/x", Some(b"x")));
    ws.person_commits(&files, "100 keys in entries, one in config");
    let kv = all(&server);
    let commits = ws.commit_count();

    let run = kvgit_env(&ws, &["apply"], &[]);
    eprintln!("apply: {}", run.stderr.trim_end());
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("sigil/config/x"),
        "names the key: {run:?}"
    );
    assert!(
        run.stderr.contains(&token.accessor),
        "names the token: {run:?}"
    );
    assert!(!run.stderr.contains(&token.secret), "{run:?}");
    let entries = |kv: &BTreeMap<String, String>| {
        kv.keys()
            .filter(|k| k.starts_with("sigil/entries/"))
            .count()
    };
    assert_eq!(entries(&all(&server)), 1, "no key of entries written");
    assert_eq!(all(&server), kv, "KV unchanged");
    assert_eq!(ws.commit_count(), commits, "no commit");

    let both = server.token_with_rules(
        "kvgit-test-node-both",
        &node_rules(&[("sigil/entries/", "write"), ("sigil/config/", "write")]),
    );
    write_secret(dir.path(), "consul-token", &both.secret);
    let run = kvgit_env(&ws, &["apply"], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let kv = all(&server);
    assert_eq!(entries(&kv), 101, "{kv:?}");
    assert_eq!(kv.get("sigil/config/x").map(String::as_str), Some("x"));
}

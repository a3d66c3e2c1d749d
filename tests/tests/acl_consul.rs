//! `kvgit acl plan|apply` on Consul with ACLs (default deny): the node's policy and the
//! readers' policy the config implies, the node's token written to a private file, every
//! verb and `serve` working with that token and nothing more, idempotence, bad admin tokens.
//!
//! Runs against the in-repo Consul API (`tests/src/consul_api`, ACLs enabled with a
//! management token), or a real agent at `CONSUL_HTTP_ADDR` whose `CONSUL_HTTP_TOKEN` is a
//! management token.

use kvgit_tests::consul::{ConsulOptions, ConsulServer};
use kvgit_tests::kvgit::{kvgit_bin, Area, Run, Workspace};
use kvgit_tests::serve::{git_files, poll_until, Remote, Serve, ServeConfig};
use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;
use std::time::Duration;

const ENTRIES: Area<'static> = Area {
    name: "entries",
    prefix: "sigil/entries/",
    path: "entries",
    mode: "both",
};
const ROUTES: Area<'static> = Area {
    name: "routes",
    prefix: "sigil/routes/",
    path: "routes",
    mode: "git-to-kv",
};
const MANAGEMENT: &str = "3f2c7a0e-6a8b-4d7e-9d0e-2b1c4a5f6e70";
const CONVERGE: Duration = Duration::from_secs(30);

/// The node's token for kvgit, from the environment (the config file has none).
const NODE_ENV: [(&str, &str); 1] = [("KVGIT_BACKEND__TOKEN_FILE", "node.token")];

fn consul() -> ConsulServer {
    ConsulServer::start_with(ConsulOptions {
        acl_management_token: Some(MANAGEMENT.to_owned()),
        ..ConsulOptions::default()
    })
}

fn workspace(consul: &ConsulServer, areas: &[Area<'_>]) -> Workspace {
    let ws = Workspace::new(consul.addr(), &[]);
    ws.set_backend_kind("consul");
    ws.write_config(consul.addr(), areas, "");
    let admin = consul.token().unwrap_or(MANAGEMENT);
    std::fs::write(ws.dir.path().join("admin.token"), format!("{admin}\n")).expect("write");
    ws
}

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

/// `kvgit acl VERB --admin-token-file admin.token --create-token node.token ARGS…`.
fn acl(ws: &Workspace, verb: &str, extra: &[&str]) -> Run {
    let mut args = vec![
        "acl",
        verb,
        "--admin-token-file",
        "admin.token",
        "--create-token",
        "node.token",
    ];
    args.extend_from_slice(extra);
    kvgit_env(ws, &args, &NODE_ENV)
}

fn node_token(ws: &Workspace) -> String {
    std::fs::read_to_string(ws.dir.path().join("node.token"))
        .expect("node.token")
        .trim()
        .to_owned()
}

#[test]
fn the_generated_token_runs_every_verb_and_serve_and_nothing_else() {
    let consul = consul();
    let ws = workspace(&consul, &[ENTRIES, ROUTES]);
    let token_file = ws.dir.path().join("node.token");

    let plan = acl(&ws, "plan", &["--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}{}", plan.stdout, plan.stderr);
    assert_eq!(
        plan.stdout.lines().collect::<Vec<_>>(),
        [
            "+ policy kvgit-test-node key_prefix \"sigil/entries/\" write, key_prefix \"sigil/routes/\" write, key_prefix \"kvgit/ownership/\" write, key \"kvgit/revision-probe\" read, session_prefix \"\" write, node_prefix \"\" read, agent_prefix \"\" read",
            "+ policy kvgit-read key_prefix \"sigil/entries/\" read, key_prefix \"sigil/routes/\" read",
            // As given on the command line: relative to the working directory.
            "+ token kvgit-test-node policy kvgit-test-node, secret written to node.token",
            "# policy kvgit-test-node writes each area's prefix and sync.ownership_prefix, reads the revision probe key \"kvgit/revision-probe\", writes sessions and reads nodes (ownership), reads the agent (the datacenter; set backend.datacenter to drop it)",
            "# policy kvgit-read is for readers (monitoring, people); no kvgit token gets it",
            "# other kvgit-* policies (other nodes') are left alone",
            "acl: 3 to add, 0 to change, 0 to remove (consul, policy kvgit-test-node)",
        ]
    );
    assert!(!token_file.exists(), "plan writes nothing");

    let applied = acl(&ws, "apply", &[]).ok();
    assert_eq!(
        applied.stdout.lines().last(),
        Some("acl: 3 added, 0 changed, 0 removed (consul, policy kvgit-test-node)"),
        "{}",
        applied.stdout
    );
    let mode = std::fs::metadata(&token_file)
        .expect("node.token")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the token file is private");
    let token = node_token(&ws);
    assert!(
        !applied.stdout.contains(&token),
        "the token is never printed"
    );

    // Idempotent: the token in the file is valid and linked, so nothing is created.
    let again = acl(&ws, "apply", &[]).ok();
    assert_eq!(
        again.stdout.trim(),
        "acl: no changes (consul, policy kvgit-test-node)"
    );
    assert_eq!(node_token(&ws), token, "the token file is kept");
    assert_eq!(acl(&ws, "plan", &["--detailed-exitcode"]).code, 0);

    // Consul itself: the token writes the areas and nothing else.
    let put = |path: &str| {
        consul
            .try_request_as("PUT", path, Some(&token), b"v")
            .expect("request")
            .status
    };
    assert_eq!(put("/v1/kv/sigil/entries/node-7/status"), 200);
    assert_eq!(put("/v1/kv/sigil/other"), 403);
    assert_eq!(put("/v1/kv/kvgit/revision-probe"), 403);
    assert_eq!(put("/v1/kv/elsewhere"), 403);
    let policies = consul
        .try_request_as("GET", "/v1/acl/policies", Some(&token), b"")
        .expect("request");
    assert_eq!(policies.status, 403, "the node token cannot read ACLs");

    // Every verb works with the node's token.
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
    let log = kvgit_env(&ws, &["log", "sigil/entries/node-7/status"], &NODE_ENV).ok();
    assert_eq!(log.stdout.lines().count(), 1, "{}", log.stdout);

    // serve: a KV change is committed, a pushed Git change is applied.
    let remote = Remote::init(ws.dir.path());
    let cfg = ServeConfig::fast(&[ENTRIES, ROUTES]).remote(&remote);
    let serve = Serve::start_with_env(&ws, consul.addr(), &cfg, &NODE_ENV);
    serve.wait_ready();
    assert_eq!(
        consul
            .request("PUT", "/v1/kv/sigil/entries/node-8/status", b"down")
            .status,
        200
    );
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
        let r = consul.request("GET", "/v1/kv/sigil/routes/web?raw", b"");
        r.status == 200 && r.body == b"10.0.0.1"
    });
    if !applied {
        serve.fail("the pushed change was never applied");
    }
    // Every refusal reads "refused access (permission denied): … Permission denied: token
    // …" (a bare "403" would also match timestamps and commit ids).
    let log = std::fs::read_to_string(&serve.log)
        .expect("serve log")
        .to_ascii_lowercase();
    assert!(
        !log.contains("permission denied") && !log.contains("refused access"),
        "serve needed a right it does not have:\n{}",
        serve.log_tail(30)
    );
}

#[test]
fn a_changed_config_updates_the_policy_and_an_unknown_token_is_replaced() {
    let consul = consul();
    let ws = workspace(&consul, &[ENTRIES, ROUTES]);
    acl(&ws, "apply", &[]).ok();
    let first = node_token(&ws);

    ws.write_config(consul.addr(), &[ENTRIES], "");
    let plan = acl(&ws, "plan", &[]).ok();
    let changes: Vec<&str> = plan
        .stdout
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect();
    assert_eq!(
        changes,
        [
            "~ policy kvgit-test-node key_prefix \"sigil/entries/\" write, key_prefix \"kvgit/ownership/\" write, key \"kvgit/revision-probe\" read, session_prefix \"\" write, node_prefix \"\" read, agent_prefix \"\" read",
            "~ policy kvgit-read key_prefix \"sigil/entries/\" read",
            "acl: 0 to add, 2 to change, 0 to remove (consul, policy kvgit-test-node)",
        ]
    );
    acl(&ws, "apply", &[]).ok();
    let put = consul
        .try_request_as("PUT", "/v1/kv/sigil/routes/x", Some(&first), b"v")
        .expect("request");
    assert_eq!(put.status, 403, "the dropped area is no longer writable");
    assert_eq!(node_token(&ws), first);

    // A token Consul does not know (deleted, or from another cluster) is replaced.
    std::fs::write(
        ws.dir.path().join("node.token"),
        "00000000-0000-4000-8000-000000000000\n",
    )
    .expect("write");
    let plan = acl(&ws, "plan", &[]).ok();
    assert!(
        plan.stdout
            .starts_with("+ token kvgit-test-node policy kvgit-test-node"),
        "{}",
        plan.stdout
    );
    acl(&ws, "apply", &[]).ok();
    let replaced = node_token(&ws);
    assert_ne!(replaced, first);
    let put = consul
        .try_request_as("PUT", "/v1/kv/sigil/entries/x", Some(&replaced), b"v")
        .expect("request");
    assert_eq!(put.status, 200);

    // A token made by hand without the node's policy gets it linked, and keeps its secret.
    let bare = consul.create_token("made by hand", &[]);
    std::fs::write(ws.dir.path().join("node.token"), &bare.secret).expect("write");
    let plan = acl(&ws, "plan", &[]).ok();
    assert_eq!(
        plan.stdout.lines().next(),
        Some(format!("~ token {} + policy kvgit-test-node", bare.accessor).as_str())
    );
    acl(&ws, "apply", &[]).ok();
    assert_eq!(node_token(&ws), bare.secret);
    let put = consul
        .try_request_as("PUT", "/v1/kv/sigil/entries/y", Some(&bare.secret), b"v")
        .expect("request");
    assert_eq!(put.status, 200);

    // The admin's token is never widened or overwritten as the node's.
    std::fs::write(ws.dir.path().join("node.token"), MANAGEMENT).expect("write");
    let refused = acl(&ws, "apply", &[]);
    assert_eq!(refused.code, 1, "{}", refused.stdout);
    assert!(
        refused
            .stderr
            .contains("linked to policies not made by kvgit (global-management)"),
        "{}",
        refused.stderr
    );
    assert_eq!(node_token(&ws), MANAGEMENT);
}

#[test]
fn bad_admin_tokens_fail_in_one_line() {
    let consul = consul();
    let ws = workspace(&consul, &[ENTRIES]);
    std::fs::write(
        ws.dir.path().join("admin.token"),
        "11111111-2222-4333-8444-555555555555\n",
    )
    .expect("write");
    let run = acl(&ws, "apply", &[]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("refused the admin token (--admin-token-file admin.token)"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("11111111"), "{}", run.stderr);
    assert!(!ws.dir.path().join("node.token").exists(), "nothing done");

    // The node's own token may not administer ACLs either.
    let node = consul.create_token("kvgit node", &[]);
    std::fs::write(ws.dir.path().join("admin.token"), &node.secret).expect("write");
    let run = acl(&ws, "plan", &[]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);

    let missing = kvgit_env(&ws, &["acl", "plan"], &[]);
    assert_eq!(
        missing.stderr.trim(),
        "kvgit: Consul needs --admin-token-file (a token with acl = \"write\")"
    );
}

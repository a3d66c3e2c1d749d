//! The files an operator installs from `deploy/`, checked by the tools that will read them:
//! `promtool` on the alert rules and their unit tests, `systemd-analyze verify` on the unit,
//! and the unit's `Type=notify` protocol spoken by a real `kvgit serve` to a socket this
//! test binds as systemd would (READY=1 only once `/readyz` answers 200, WATCHDOG=1, STOPPING=1).

use etcd_client::Client;
use kvgit_tests::etcd::EtcdServer;
use kvgit_tests::kvgit::{kvgit_bin, Area, Workspace};
use kvgit_tests::serve::{Serve, ServeConfig};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// The repository root (the tests crate lives in `tests/`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the workspace")
        .to_path_buf()
}

fn run(program: &str, args: &[&str], dir: &Path) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (scripts/deps.sh installs it): {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The names of the alerts in the rules file, in order.
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(|n| n.trim().to_owned())
        .collect()
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = root().join("deploy/prometheus");
    let check = run("promtool", &["check", "rules", "kvgit-alerts.yml"], &dir);
    assert!(
        check.status.success(),
        "promtool check rules:\n{}",
        text(&check)
    );
    let names = alert_names(
        &std::fs::read_to_string(dir.join("kvgit-alerts.yml")).expect("read kvgit-alerts.yml"),
    );
    assert!(
        text(&check).contains(&format!("SUCCESS: {} rules found", names.len())),
        "every rule is an alert: {names:?}\n{}",
        text(&check)
    );

    let test = run(
        "promtool",
        &["test", "rules", "kvgit-alerts.test.yml"],
        &dir,
    );
    assert!(
        test.status.success(),
        "promtool test rules:\n{}",
        text(&test)
    );
    assert!(text(&test).contains("SUCCESS"), "{}", text(&test));

    // Every alert has a unit test in which it fires (a case with expected alerts).
    let tests = std::fs::read_to_string(dir.join("kvgit-alerts.test.yml"))
        .expect("read kvgit-alerts.test.yml");
    let firing: Vec<&str> = tests
        .split("- eval_time:")
        .filter(|case| case.contains("exp_labels:"))
        .filter_map(|case| {
            case.lines()
                .find_map(|l| l.trim().strip_prefix("alertname: "))
        })
        .collect();
    for name in &names {
        assert!(
            firing.contains(&name.as_str()),
            "{name} has no promtool case in which it fires"
        );
    }
    // And at least one case where an alert must stay quiet.
    assert!(
        tests.contains("exp_alerts: []"),
        "no case checks an alert that must not fire"
    );
}

/// `systemd-analyze verify` checks that ExecStart's binary exists, so the unit is verified
/// as installed: a copy whose `/usr/local/bin/kvgit` is the binary this build made (the only
/// line that differs).
#[test]
fn systemd_unit_verifies_clean() {
    let unit = std::fs::read_to_string(root().join("deploy/systemd/kvgit.service"))
        .expect("read deploy/systemd/kvgit.service");
    for line in [
        "Type=notify",
        "ExecStart=/usr/local/bin/kvgit -c /etc/kvgit/kvgit.toml serve",
        "StateDirectory=kvgit",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "KillMode=mixed",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "the unit lacks `{line}`:\n{unit}"
        );
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = kvgit_bin();
    let installed = unit.replace(
        "ExecStart=/usr/local/bin/kvgit ",
        &format!("ExecStart={} ", bin.display()),
    );
    std::fs::write(dir.path().join("kvgit.service"), installed).expect("write the unit copy");
    let out = run(
        "systemd-analyze",
        &["verify", "./kvgit.service"],
        dir.path(),
    );
    assert!(
        out.status.success() && text(&out).trim().is_empty(),
        "systemd-analyze verify is not clean:\n{}",
        text(&out)
    );
}

const EVENTS: Area<'static> = Area {
    name: "events",
    prefix: "/n/events/",
    path: "events",
    mode: "kv-to-git",
};

/// Keys recorded before the start and deleted while kvgit was down: at least
/// `sync.mass_delete_min_keys` (10), so the start holds the wipe back and is not ready.
const KEYS: usize = 12;

/// Every datagram queued on the (non-blocking) socket, as text.
fn drain(sock: &UnixDatagram) -> Vec<String> {
    let mut buf = [0u8; 4096];
    let mut out = Vec::new();
    while let Ok(n) = sock.recv(&mut buf) {
        out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    out
}

fn says(messages: &[String], line: &str) -> usize {
    messages
        .iter()
        .filter(|m| m.lines().any(|l| l == line))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn notify_ready_only_once_readyz_answers_200_then_stopping_on_sigterm() {
    let etcd = EtcdServer::start();
    let mut c: Client = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[EVENTS]);
    for i in 0..KEYS {
        c.put(format!("/n/events/k{i}"), "v", None)
            .await
            .expect("etcd put");
    }
    ws.kvgit(&["export"]).ok();
    // An accidental wipe while kvgit was down: the start must hold it back, not commit it,
    // and so is not ready; systemd must not hear READY=1 meanwhile.
    for i in 0..KEYS {
        c.delete(format!("/n/events/k{i}"), None)
            .await
            .expect("etcd delete");
    }

    let sock_dir = tempfile::tempdir().expect("temp dir");
    let sock_path = sock_dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind the notify socket");
    // Non-blocking: a drain takes what is queued and returns, however fast pings come.
    sock.set_nonblocking(true).expect("non-blocking socket");
    let sock_env = sock_path.to_str().expect("utf-8 temp path");
    // WATCHDOG_USEC=200ms: WATCHDOG=1 every 100ms, so 20 pings show the notify task ran
    // (and polled readiness) for two seconds while the service was not ready.
    let mut serve = Serve::start_with_env(
        &ws,
        etcd.endpoint(),
        &ServeConfig::fast(&[EVENTS]),
        &[("NOTIFY_SOCKET", sock_env), ("WATCHDOG_USEC", "200000")],
    );

    // Not ready while the wipe is held: drained socket first, then /readyz, so a READY=1
    // sent before a 503 would be caught.
    let mut watchdogs = 0;
    let mut held_seen = 0;
    serve.wait_until(
        Duration::from_secs(60),
        "/readyz to report the held wipe, and the watchdog pings",
        || {
            let messages = drain(&sock);
            assert_eq!(
                says(&messages, "READY=1"),
                0,
                "READY=1 before /readyz answers 200: {messages:?}"
            );
            watchdogs += says(&messages, "WATCHDOG=1");
            let (code, body) = serve.try_get("/readyz").unwrap_or((0, String::new()));
            assert_eq!(code, 503, "ready with the wipe held back: {body}");
            if body.contains("mass delete held back") {
                held_seen += 1;
            }
            held_seen >= 10 && watchdogs >= 20
        },
    );

    // The keys come back: the held batch no longer deletes anything, the area commits
    // and the service becomes ready; READY=1 comes, and /readyz agrees.
    for i in 0..KEYS {
        c.put(format!("/n/events/k{i}"), "v", None)
            .await
            .expect("etcd put");
    }
    let mut ready_messages = 0;
    serve.wait_until(Duration::from_secs(60), "READY=1", || {
        let messages = drain(&sock);
        ready_messages += says(&messages, "READY=1");
        ready_messages > 0
    });
    let (code, body) = serve.get("/readyz");
    assert_eq!(code, 200, "READY=1 was sent, /readyz must agree: {body}");

    // READY=1 is sent once; the watchdog goes on.
    let mut later = Vec::new();
    serve.wait_until(Duration::from_secs(30), "WATCHDOG=1 after READY=1", || {
        later.extend(drain(&sock));
        says(&later, "WATCHDOG=1") >= 3
    });
    assert_eq!(says(&later, "READY=1"), 0, "READY=1 repeated: {later:?}");

    let (status, _) = serve.terminate();
    assert!(status.success(), "kvgit serve exit on SIGTERM: {status}");
    let last = drain(&sock);
    assert_eq!(
        says(&last, "STOPPING=1"),
        1,
        "STOPPING=1 once on SIGTERM: {last:?}"
    );
    assert_eq!(says(&last, "READY=1"), 0, "READY=1 repeated: {last:?}");
}

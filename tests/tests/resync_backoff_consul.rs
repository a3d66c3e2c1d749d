//! A backend that keeps asking for a resync must not make `serve` resync in a tight loop.
//!
//! The fault, as it was seen: a Consul whose blocking queries answer with an
//! `X-Consul-Index` below the index the client passed (what a Consul restored from an older
//! snapshot does). backend-consul's watch reads that as "the store went back" and ends with
//! `ResyncNeeded(IndexReset)`; the area task starts a new session, whose first blocking
//! query is answered the same way, and so on. Before the backoff in `service::area` that was
//! a resync logged ten times a second, forever. The in-repo Consul KV API reproduces the
//! fault with its test hook `PUT /v1/_test/index_skew?by=N` (ours, not Consul's), so this
//! test needs it: with `CONSUL_HTTP_ADDR` (a real agent) it is skipped.

use kvgit_tests::consul::ConsulServer;
use kvgit_tests::kvgit::{Area, Workspace};
use kvgit_tests::serve::{git_files, Serve, ServeConfig};
use std::time::{Duration, Instant};

/// How long the fault stays on.
const FAULT_WINDOW: Duration = Duration::from_secs(20);
/// How often the service is sampled meanwhile.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// The message `service::area` logs for each resync the watch asks for.
const RESYNC_LINE: &str = "watch asks for a resync";
/// The counter of resyncs caused by Consul's index going back, for the test's area "t".
const INDEX_RESET_SERIES: &str = r#"kvgit_resyncs_total{area="t",reason="index_reset"}"#;

/// The most watch resyncs the backoff allows within `elapsed` of the fault being switched
/// on. The schedule (`service::area`): after a resync the area task sleeps 1 s, then 2 s,
/// 4 s, … (doubling, capped at 60 s) before its next session; it only starts again at 1 s
/// after a session that lasted 30 s, which no session does while the fault is on. The first
/// resync comes at the earliest when the fault is switched on, the k-th no earlier than
/// 1 + 2 + … + 2^(k-2) = 2^(k-1) - 1 seconds after it. So within t seconds at most
/// 1 + floor(log2(t + 1)) resyncs: 5 in the 20 s window (the 6th needs 31 s). Without the
/// backoff it was ~10 a second, ~200 in the window.
fn resyncs_allowed(elapsed: Duration) -> u64 {
    let t = elapsed.as_secs_f64();
    1 + (t + 1.0).log2().floor() as u64
}

/// The test's area in `/status`.
fn area_status(serve: &Serve) -> serde_json::Value {
    let status = serve.status();
    status["areas"]
        .as_array()
        .and_then(|areas| areas.iter().find(|a| a["area"] == "t"))
        .cloned()
        .unwrap_or_else(|| serve.fail(&format!("no area \"t\" in /status: {status}")))
}

/// The serve log without terminal colour codes (tracing colours its fields).
fn plain_log(serve: &Serve) -> String {
    let raw = std::fs::read_to_string(&serve.log)
        .unwrap_or_else(|e| panic!("read {}: {e}", serve.log.display()));
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters… final byte in '@'..='~'.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The lines of the serve log that report a resync the watch asked for.
fn resync_lines(serve: &Serve) -> Vec<String> {
    plain_log(serve)
        .lines()
        .filter(|l| l.contains(RESYNC_LINE))
        .map(str::to_string)
        .collect()
}

/// The `retry_in=…` of a resync line, e.g. "4s".
fn retry_in(line: &str) -> Option<&str> {
    line.split_whitespace()
        .find_map(|field| field.strip_prefix("retry_in="))
}

/// One sample of the three places a resync shows.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counts {
    metric: u64,
    status: u64,
    log: u64,
}

fn counts(serve: &Serve) -> Counts {
    let metric = serve
        .metric(INDEX_RESET_SERIES)
        .unwrap_or_else(|| serve.fail(&format!("{INDEX_RESET_SERIES} not on /metrics")));
    let status = area_status(serve)["resyncs"]
        .as_u64()
        .unwrap_or_else(|| serve.fail("/status: area t has no numeric resyncs"));
    Counts {
        metric: metric as u64,
        status,
        log: resync_lines(serve).len() as u64,
    }
}

/// `PUT /v1/_test/index_skew?by=N` on the in-repo Consul KV API (0 switches it off).
fn set_index_skew(consul: &ConsulServer, by: u64) {
    let response = consul.request("PUT", &format!("/v1/_test/index_skew?by={by}"), b"");
    assert_eq!(response.status, 200, "index_skew={by}: {}", response.text());
}

/// A plain KV PUT through Consul's HTTP API.
fn consul_put(consul: &ConsulServer, key: &str, value: &[u8]) {
    let response = consul.request("PUT", &format!("/v1/kv/{key}"), value);
    assert_eq!(
        (response.status, response.text().trim()),
        (200, "true"),
        "PUT {key}"
    );
}

/// Waits (bounded) until `file` of the area holds `value` at the tip of main.
fn wait_committed(serve: &Serve, ws: &Workspace, file: &str, value: &[u8], within: Duration) {
    serve.wait_until(within, &format!("{file} committed to Git"), || {
        git_files(&ws.repo, "main", "state/t")
            .get(file)
            .map(Vec::as_slice)
            == Some(value)
    });
}

#[test]
fn an_index_that_keeps_going_back_makes_serve_back_off_then_recover() {
    let consul = ConsulServer::start();
    eprintln!("Consul: {}", consul.describe());
    if consul.is_real() {
        eprintln!("skipped: the fault needs the in-repo API's /v1/_test/index_skew");
        return;
    }
    let prefix = consul.prefix("resync");
    consul_put(&consul, &format!("{prefix}a"), b"one");
    consul_put(&consul, &format!("{prefix}b"), b"two");
    let area = Area {
        name: "t",
        prefix: &prefix,
        path: "state/t",
        mode: "kv-to-git",
    };
    let ws = Workspace::new(consul.addr(), &[area]);
    ws.set_backend_kind("consul");
    let serve = Serve::start(&ws, consul.addr(), &ServeConfig::fast(&[area]));
    serve.wait_ready();
    wait_committed(&serve, &ws, "b", b"two", Duration::from_secs(30));
    let before = counts(&serve);
    assert_eq!(
        before,
        Counts {
            metric: 0,
            status: 0,
            log: 0
        },
        "no resync before the fault"
    );

    // The fault: every blocking query answers at once, 3 below the index it was given (the
    // prefix's index is above 10, so the answer is a real step back). The waiting query of
    // the running watch is woken by the switch and is the first to see it.
    let fault_on = Instant::now();
    set_index_skew(&consul, 3);
    let mut last = before;
    let mut samples = Vec::new();
    while fault_on.elapsed() < FAULT_WINDOW {
        std::thread::sleep(SAMPLE_EVERY);
        match serve.try_get("/healthz") {
            Ok((200, _)) => {}
            other => serve.fail(&format!(
                "/healthz during the fault ({:?} in): {other:?}",
                fault_on.elapsed()
            )),
        }
        let now = counts(&serve);
        // Measured after reading: the bound is checked against the longest time it allows.
        let elapsed = fault_on.elapsed();
        let allowed = resyncs_allowed(elapsed);
        samples.push((elapsed.as_millis(), now));
        for (what, n, was) in [
            ("kvgit_resyncs_total index_reset", now.metric, last.metric),
            ("/status resyncs", now.status, last.status),
            ("log lines", now.log, last.log),
        ] {
            assert!(n >= was, "{what} went down: {was} -> {n}");
            if n > allowed {
                serve.fail(&format!(
                    "{what}: {n} resyncs within {elapsed:?} of the fault, the backoff allows \
                     {allowed}; samples (ms, counts): {samples:?}"
                ));
            }
        }
        last = now;
    }
    eprintln!("resyncs during the fault (ms since on, counts): {samples:?}");
    // 1 + 2 = 3 s of backoff (plus three short sessions) give a third resync well inside
    // the window, however loaded the machine: the count grows, it is not stuck at one.
    for (what, n) in [
        ("kvgit_resyncs_total index_reset", last.metric),
        ("/status resyncs", last.status),
        ("log lines", last.log),
    ] {
        if n < 3 {
            serve.fail(&format!(
                "{what}: only {n} resyncs in {FAULT_WINDOW:?} of the fault; samples: {samples:?}"
            ));
        }
    }
    let t = area_status(&serve);
    let last_resync = t["last_resync"].as_str().unwrap_or_default();
    assert!(
        last_resync.contains("index_reset"),
        "/status last_resync names the reason: {t}"
    );
    // Each line says when the next try is, and the waits follow the doubling schedule.
    let lines = resync_lines(&serve);
    let waits: Vec<&str> = lines.iter().filter_map(|l| retry_in(l)).collect();
    let schedule = ["1s", "2s", "4s", "8s", "16s", "32s"];
    assert_eq!(
        waits,
        schedule[..waits.len().min(schedule.len())],
        "retry_in of each resync line:\n{}",
        lines.join("\n")
    );
    assert!(
        lines.iter().all(|l| l.contains("index_reset")),
        "every line names the reason:\n{}",
        lines.join("\n")
    );

    // Fault off: the area's next session (after at most the pending wait: 16 s after the
    // fifth resync, 32 s if one more slipped in as the fault went off) catches up and
    // follows the watch again. A key written now is committed by the catch-up or the watch.
    set_index_skew(&consul, 0);
    consul_put(&consul, &format!("{prefix}after"), b"recovered");
    wait_committed(&serve, &ws, "after", b"recovered", Duration::from_secs(60));
    let recovered = counts(&serve);
    // The session that committed it is following the watch now: a later key comes through
    // the watch, with no new resync.
    consul_put(&consul, &format!("{prefix}later"), b"watched");
    wait_committed(&serve, &ws, "later", b"watched", Duration::from_secs(15));
    assert_eq!(
        counts(&serve),
        recovered,
        "no resync once the fault is off:\n{}",
        serve.log_tail(20)
    );
    assert!(matches!(serve.try_get("/healthz"), Ok((200, _))));
}

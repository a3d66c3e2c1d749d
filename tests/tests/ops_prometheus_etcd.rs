//! The shipped dashboard and alert rules against a real Prometheus scraping a real
//! `kvgit serve` (real etcd, a bare-repository remote): every dashboard query runs and returns
//! data, every alert rule loads and evaluates, and breaking the remote turns the push alert
//! pending, then firing.

use etcd_client::Client;
use kvgit_tests::etcd::EtcdServer;
use kvgit_tests::kvgit::{Area, Workspace};
use kvgit_tests::prometheus::Prometheus;
use kvgit_tests::serve::{rev_parse, Remote, Serve, ServeConfig};
use serde_json::Value as Json;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ENTRIES: Area<'static> = Area {
    name: "entries",
    prefix: "/p/entries/",
    path: "entries",
    mode: "both",
};
const EVENTS: Area<'static> = Area {
    name: "events",
    prefix: "/p/events/",
    path: "events",
    mode: "kv-to-git",
};

const MAIN: &str = "refs/heads/main";
const CONVERGE: Duration = Duration::from_secs(60);
/// Grafana's `$__rate_interval` for a 1s scrape: at least four scrapes.
const RATE_INTERVAL: &str = "10s";
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the workspace")
        .to_path_buf()
}

/// The shipped rules on a clock 60 times faster: every duration (`for:` and range windows,
/// all in minutes) becomes the same number of seconds, so each rule behaves as in
/// production, only sooner, and a transient error fires no more than it would there.
/// Nothing else differs.
fn rules_for_test(dir: &Path) -> PathBuf {
    let shipped = std::fs::read_to_string(root().join("deploy/prometheus/kvgit-alerts.yml"))
        .expect("read deploy/prometheus/kvgit-alerts.yml");
    let mut scaled = 0;
    let copy: Vec<String> = shipped
        .lines()
        .map(|line| {
            if line.trim_start().starts_with('#') {
                return line.to_owned();
            }
            let (out, n) = minutes_to_seconds(line);
            scaled += n;
            out
        })
        .collect();
    assert!(scaled > 10, "the rules have durations to scale");
    let path = dir.join("kvgit-alerts.yml");
    std::fs::write(&path, copy.join("\n") + "\n").expect("write the test rules");
    path
}

/// `for: 15m` -> `for: 15s`, `[5m]` -> `[5s]`; panics on any other duration unit in those
/// places, so no window is left unscaled.
fn minutes_to_seconds(line: &str) -> (String, usize) {
    let mut n = 0;
    let mut scale = |duration: &str| -> String {
        let digits = duration.trim_end_matches(|c: char| !c.is_ascii_digit());
        let unit = &duration[digits.len()..];
        assert!(
            !digits.is_empty() && unit == "m",
            "a rule duration not in minutes: {duration:?} in {line:?}"
        );
        n += 1;
        format!("{digits}s")
    };
    let mut out = String::new();
    if let Some(d) = line.trim_start().strip_prefix("for: ") {
        let indent = &line[..line.len() - line.trim_start().len()];
        out = format!("{indent}for: {}", scale(d.trim()));
    } else {
        let mut rest = line;
        while let Some(open) = rest.find('[') {
            let Some(close) = rest[open..].find(']') else {
                break;
            };
            out.push_str(&rest[..=open]);
            out.push_str(&scale(&rest[open + 1..open + close]));
            out.push(']');
            rest = &rest[open + close + 1..];
        }
        out.push_str(rest);
    }
    (out, n)
}

/// Every query of the dashboard: each panel's targets (rows included), with the
/// template variables as Grafana would expand them for "All".
fn dashboard_queries(dash: &Json) -> Vec<(String, String)> {
    fn walk(panels: &Json, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_owned();
            if p["type"] != "row" {
                assert_eq!(
                    p["datasource"]["uid"], "${datasource}",
                    "panel {title:?} uses the datasource variable"
                );
                let targets = p["targets"].as_array().cloned().unwrap_or_default();
                assert!(!targets.is_empty(), "panel {title:?} has no query");
                for t in targets {
                    let expr = t["expr"].as_str().expect("a Prometheus target has expr");
                    out.push((title.clone(), expand(expr)));
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

fn expand(expr: &str) -> String {
    expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace("$area", ".*")
        .replace("$instance", ".*")
}

/// A template variable by name.
fn variable<'a>(dash: &'a Json, name: &str) -> &'a Json {
    dash["templating"]["list"]
        .as_array()
        .and_then(|l| l.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("the dashboard has no ${name} variable"))
}

/// `label_values(SELECTOR, LABEL)` split in its two parts.
fn label_values_query(var: &Json) -> (String, String) {
    let q = var["query"]["query"]
        .as_str()
        .or_else(|| var["query"].as_str())
        .expect("a query variable has a query");
    let inner = q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not a label_values query: {q}"));
    let (selector, label) = inner
        .rsplit_once(',')
        .expect("label_values(selector, label)");
    (expand(selector.trim()), label.trim().to_owned())
}

fn non_empty(result: &Json) -> bool {
    result.as_array().is_some_and(|a| !a.is_empty())
}

/// The warnings and errors of the serve log, for failure messages.
fn warnings(serve: &Serve) -> String {
    let log = std::fs::read_to_string(&serve.log).unwrap_or_default();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    lines.join("\n")
}

async fn put(c: &mut Client, k: &str, v: &str) {
    c.put(k, v, None).await.expect("etcd put");
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_and_alerts_work_against_prometheus_scraping_kvgit() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let areas = [ENTRIES, EVENTS];
    let ws = Workspace::new(etcd.endpoint(), &areas);
    let remote = Remote::init(ws.dir.path());
    let serve = Serve::start(
        &ws,
        etcd.endpoint(),
        &ServeConfig::fast(&areas).remote(&remote),
    );
    serve.wait_ready();
    put(&mut c, "/p/entries/node-1/status", "up").await;
    put(&mut c, "/p/events/e0", "x").await;
    serve.wait_until(CONVERGE, "the first commits pushed", || {
        let local = rev_parse(&ws.repo, MAIN);
        local.is_some() && local == remote.tip() && remote.commit_count() > 0
    });

    let rules_dir = tempfile::tempdir().expect("temp dir");
    let rules = rules_for_test(rules_dir.path());
    let prom = Prometheus::start("kvgit", &[serve.addr], &[rules]);

    // Some traffic while Prometheus scrapes, so rates and histograms have samples.
    let mut n = 0;
    let deadline = Instant::now() + CONVERGE;
    loop {
        n += 1;
        put(&mut c, &format!("/p/events/e{n}"), "x").await;
        put(&mut c, "/p/entries/node-1/load", &n.to_string()).await;
        let enough = prom.query(r#"count_over_time(kvgit_ready{job="kvgit"}[1m]) >= 12"#);
        if enough.is_ok_and(|r| non_empty(&r)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus holds no 12 scrapes of kvgit within {CONVERGE:?}:\n{}",
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let up = prom.query(r#"up{job="kvgit"}"#).expect("query up");
    assert_eq!(up[0]["value"][1], "1", "kvgit is scraped: {up}");

    // Every dashboard query runs without error and returns series.
    let dash: Json = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana/kvgit-dashboard.json"))
            .expect("read deploy/grafana/kvgit-dashboard.json"),
    )
    .expect("the dashboard is JSON");
    assert!(
        dash["schemaVersion"].as_u64().is_some(),
        "schemaVersion set"
    );
    assert_eq!(variable(&dash, "datasource")["type"], "datasource");
    assert_eq!(variable(&dash, "datasource")["query"], "prometheus");
    let queries = dashboard_queries(&dash);
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let mut failures = Vec::new();
    for (title, expr) in &queries {
        match prom.query(expr) {
            Ok(result) if non_empty(&result) => {}
            Ok(result) => failures.push(format!("{title}: `{expr}`: no data ({result})")),
            Err(e) => failures.push(format!("{title}: `{expr}`: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "dashboard queries failed:\n{}",
        failures.join("\n")
    );
    // The core panels show what happened: events and commits of both areas, commit times.
    let by_area = |expr: &str| -> BTreeSet<String> {
        prom.query(expr)
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| {
                s["value"][1]
                    .as_str()
                    .is_some_and(|v| v != "0" && v != "NaN")
            })
            .filter_map(|s| s["metric"]["area"].as_str().map(str::to_owned))
            .collect()
    };
    let both: BTreeSet<String> = ["entries", "events"].map(String::from).into();
    assert_eq!(
        by_area(r#"sum by (area) (increase(kvgit_commits_total[1h]))"#),
        both,
        "commits of both areas"
    );
    assert!(by_area(r#"sum by (area) (increase(kvgit_events_total[1m]))"#).contains("events"));
    assert!(by_area(r#"histogram_quantile(0.9, sum by (area, le) (rate(kvgit_commit_duration_seconds_bucket[1h])))"#).contains("events"));
    assert_eq!(
        by_area("kvgit_area_owner"),
        both,
        "this node owns both areas"
    );

    // The template variables list what they should.
    for (name, want) in [
        ("area", both.clone()),
        ("instance", [serve.addr.to_string()].into()),
    ] {
        let (selector, label) = label_values_query(variable(&dash, name));
        let got: BTreeSet<String> = prom
            .label_values(&label, &selector)
            .unwrap_or_else(|e| panic!("${name}: {e}"))
            .into_iter()
            .collect();
        assert_eq!(got, want, "${name} lists");
    }

    // Every alert rule is loaded, labelled and annotated, and evaluates without error.
    let shipped = std::fs::read_to_string(root().join("deploy/prometheus/kvgit-alerts.yml"))
        .expect("read the rules");
    let names: Vec<&str> = shipped
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    let loaded = prom.api("/api/v1/rules?type=alert").expect("rules API");
    let rules: Vec<Json> = loaded["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(
        rules
            .iter()
            .filter_map(|r| r["name"].as_str())
            .collect::<Vec<_>>(),
        names,
        "Prometheus loaded every alert"
    );
    for r in &rules {
        let name = &r["name"];
        assert!(
            ["critical", "warning"].contains(&r["labels"]["severity"].as_str().unwrap_or("")),
            "{name}: severity"
        );
        for a in ["summary", "description", "runbook"] {
            assert!(
                r["annotations"][a].as_str().is_some_and(|t| !t.is_empty()),
                "{name}: {a} annotation"
            );
        }
        assert_eq!(r["health"], "ok", "{name} evaluates: {r}");
    }
    // A healthy service fires nothing (a transient error may make a rule pending, as it
    // would in production, never firing).
    let alerts = prom.api("/api/v1/alerts").expect("alerts API");
    let firing: Vec<&Json> = alerts["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["state"] == "firing")
        .collect();
    assert!(
        firing.is_empty(),
        "alerts firing on a healthy kvgit: {firing:?}\n{}",
        warnings(&serve)
    );

    // Break the remote: pushes fail while commits go on, and the alert goes pending, then
    // firing (`for: 15m`, 15 s here).
    // Pushes work: the push alert is inactive (a transient error has left its window).
    let deadline = Instant::now() + CONVERGE;
    loop {
        let (state, error) = prom
            .alert_state("KvgitPushFailing")
            .expect("the rule is loaded");
        assert_eq!(error, None, "the rule evaluates");
        if state == "inactive" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "KvgitPushFailing {state} while pushes work:\n{}",
            warnings(&serve)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    remote.take_away();
    let mut states: Vec<String> = Vec::new();
    let deadline = Instant::now() + CONVERGE;
    while states.last().map(String::as_str) != Some("firing") {
        n += 1;
        put(&mut c, &format!("/p/events/e{n}"), "x").await;
        let (state, error) = prom
            .alert_state("KvgitPushFailing")
            .expect("the rule is loaded");
        assert_eq!(error, None, "the rule evaluates");
        if states.last() != Some(&state) {
            states.push(state);
        }
        assert!(
            Instant::now() < deadline,
            "KvgitPushFailing not firing within {CONVERGE:?}: {states:?}\n{}",
            serve.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pending = states.iter().position(|s| s == "pending");
    assert!(
        pending.is_some_and(|i| i + 1 == states.len() - 1),
        "pending, then firing: {states:?}"
    );
    let unpushed = prom
        .query("sum(kvgit_unpushed_commits)")
        .expect("query unpushed");
    assert!(
        unpushed[0]["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| v > 0.0),
        "commits pile up unpushed: {unpushed}"
    );
    let firing = prom.api("/api/v1/alerts").expect("alerts API");
    let push_alert = firing["alerts"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|x| x["labels"]["alertname"] == "KvgitPushFailing")
        })
        .unwrap_or_else(|| panic!("KvgitPushFailing listed: {firing}"));
    assert_eq!(push_alert["labels"]["instance"], serve.addr.to_string());
    assert!(push_alert["annotations"]["runbook"]
        .as_str()
        .is_some_and(|r| r.contains("push")));
}

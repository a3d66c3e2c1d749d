//! A real Prometheus for tests (Debian's `prometheus`): started on a free loopback port with
//! its own temp storage, scraping given targets every second, stopped by PID on drop.
//!
//! Queries go through its HTTP API (`/api/v1/query`, `/api/v1/rules`, `/api/v1/alerts`), as
//! Grafana and an operator's tooling would send them.

use crate::serve::{free_addr, http};
use serde_json::Value as Json;
use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long Prometheus may take to answer `/-/ready` on a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// One Prometheus process owned by a test.
pub struct Prometheus {
    /// The process; killed and reaped on drop.
    child: Option<Child>,
    /// Where the HTTP API listens.
    pub addr: SocketAddr,
    /// Config, storage and log; removed on drop.
    dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` as job `job` every second and evaluating
    /// `rule_files` every second; waits until it answers `/-/ready`.
    pub fn start(job: &str, targets: &[SocketAddr], rule_files: &[PathBuf]) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir for prometheus");
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let rules: Vec<String> = rule_files
            .iter()
            .map(|r| format!("  - \"{}\"\n", r.display()))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n{}\
             scrape_configs:\n  - job_name: \"{job}\"\n    static_configs:\n      - targets: [{}]\n",
            rules.concat(),
            targets.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let log_path = dir.path().join("prometheus.log");
        let mut last = String::new();
        // A free port can be taken before Prometheus binds it: retry a few times.
        for _ in 0..3 {
            let addr = free_addr();
            let log = File::create(&log_path).expect("create prometheus.log");
            let err = log.try_clone().expect("dup prometheus.log");
            let child = Command::new("prometheus")
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err)
                .spawn()
                .expect("spawn prometheus (Debian package `prometheus`; scripts/deps.sh)");
            let mut child = KillOnDrop(Some(child));
            match wait_ready(&mut child, addr) {
                Ok(()) => {
                    return Prometheus {
                        child: child.0.take(),
                        addr,
                        dir,
                    }
                }
                Err(why) => {
                    drop(child);
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    last = format!("{why}\n--- prometheus log ---\n{log}");
                    if !log.contains("address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("prometheus did not come up: {last}");
    }

    /// Prometheus' own log (config errors, rule evaluation errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET path` on the API, the `data` of a `"status": "success"` answer, or the error
    /// Prometheus gave (a PromQL parse or evaluation error included).
    pub fn api(&self, path: &str) -> Result<Json, String> {
        let (code, body) =
            http(self.addr, "GET", path, None).map_err(|e| format!("GET {path}: {e}"))?;
        let doc: Json = serde_json::from_str(&body)
            .map_err(|e| format!("GET {path}: {code}, not JSON ({e}): {body}"))?;
        if code != 200 || doc["status"] != "success" {
            return Err(format!("GET {path}: {code}: {body}"));
        }
        Ok(doc["data"].clone())
    }

    /// An instant query: the result vector (or scalar), or Prometheus' error.
    pub fn query(&self, promql: &str) -> Result<Json, String> {
        let q: String = form_urlencoded::byte_serialize(promql.as_bytes()).collect();
        self.api(&format!("/api/v1/query?query={q}"))
            .map(|data| data["result"].clone())
    }

    /// The values of `label` over the series `selector` matches (Grafana's `label_values`).
    pub fn label_values(&self, label: &str, selector: &str) -> Result<Vec<String>, String> {
        let m: String = form_urlencoded::byte_serialize(selector.as_bytes()).collect();
        let data = self.api(&format!("/api/v1/label/{label}/values?match[]={m}"))?;
        Ok(data
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The state of alert `name` (`inactive`, `pending`, `firing`) as its rule reports it,
    /// and the rule's last evaluation error if it has one.
    pub fn alert_state(&self, name: &str) -> Option<(String, Option<String>)> {
        let data = self.api("/api/v1/rules?type=alert").ok()?;
        data["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .find(|r| r["name"] == name)
            .map(|r| {
                let state = r["state"].as_str().unwrap_or("").to_owned();
                let error = r["lastError"]
                    .as_str()
                    .filter(|e| !e.is_empty())
                    .map(str::to_owned);
                (state, error)
            })
    }

    /// Kills the process (SIGKILL by PID: its storage is thrown away) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `/-/ready` until 200, or says why not.
fn wait_ready(child: &mut KillOnDrop, addr: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(c) = child.0.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                return Err(format!("prometheus exited early with {status}"));
            }
        }
        if matches!(http(addr, "GET", "/-/ready", None), Ok((200, _))) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("/-/ready not 200 within {START_TIMEOUT:?}"))
}

/// A process killed (by PID) and reaped when dropped, so a failed start leaks nothing.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

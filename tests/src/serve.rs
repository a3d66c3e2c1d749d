//! Driving `kvgit serve` as a process in tests: a config with a remote, a free loopback
//! port and fast intervals; the child started with its log in the workspace; plain HTTP over
//! `std::net::TcpStream`; SIGKILL/SIGTERM by pid; and the pollers and readers the tests use to
//! check what an operator would check (etcd prefix reads, `git ls-tree`/`cat-file`).

use crate::kvgit::{kvgit_bin, run_git, Area, Workspace};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long `serve` may take to answer `/healthz` (debug build, loaded machine).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long SIGTERM may take before the test calls it a hang.
const TERM_TIMEOUT: Duration = Duration::from_secs(30);
/// Poll step of every waiter.
const STEP: Duration = Duration::from_millis(50);

/// The settings of one `serve` run; `fast` gives the intervals the tests use.
#[derive(Debug, Clone)]
pub struct ServeConfig<'a> {
    pub areas: Vec<Area<'a>>,
    /// A bare repository on disk used as `git.remote`.
    pub remote: Option<PathBuf>,
    pub batch_window: &'a str,
    pub batch_max: usize,
    pub push_interval: &'a str,
    pub fetch_interval: &'a str,
    pub sync_token: Option<&'a str>,
    /// `server.webhook_secret_file`: the key of GitHub/Gitea signatures and GitLab's token.
    pub webhook_secret_file: Option<PathBuf>,
    /// `sync.node`; the workspace default ("test-node") when `None`.
    pub node: Option<&'a str>,
    /// `sync.lease_ttl`; kvgit's default (10s) when `None`.
    pub lease_ttl: Option<&'a str>,
    /// More `[git]` lines (e.g. an ssh `remote`, `ssh_key_file`, `timeout`), appended as is.
    pub git_extra: Option<String>,
    /// More `[server]` lines (e.g. `ui_show_values = true`), appended as is.
    pub server_extra: Option<String>,
}

impl<'a> ServeConfig<'a> {
    /// batch_window 200ms, push_interval 500ms, fetch_interval 1s, no remote.
    pub fn fast(areas: &[Area<'a>]) -> ServeConfig<'a> {
        ServeConfig {
            areas: areas.to_vec(),
            remote: None,
            batch_window: "200ms",
            batch_max: 10_000,
            push_interval: "500ms",
            fetch_interval: "1s",
            sync_token: None,
            webhook_secret_file: None,
            node: None,
            lease_ttl: None,
            git_extra: None,
            server_extra: None,
        }
    }

    pub fn remote(mut self, remote: &Remote) -> Self {
        self.remote = Some(remote.path.clone());
        self
    }

    /// Writes `ws.config` for `endpoint`, listening on `listen`.
    pub fn write(&self, ws: &Workspace, endpoint: &str, listen: SocketAddr) {
        let mut git_extra = match &self.remote {
            Some(r) => format!("remote = \"{}\"\n", r.display()),
            None => String::new(),
        };
        if let Some(extra) = &self.git_extra {
            git_extra.push_str(extra);
        }
        let mut sync_extra = format!(
            "batch_window = \"{}\"\nbatch_max = {}\npush_interval = \"{}\"\nfetch_interval = \"{}\"\n",
            self.batch_window, self.batch_max, self.push_interval, self.fetch_interval
        );
        if let Some(node) = self.node {
            sync_extra.push_str(&format!("node = \"{node}\"\n"));
        }
        if let Some(ttl) = self.lease_ttl {
            sync_extra.push_str(&format!("lease_ttl = \"{ttl}\"\n"));
        }
        let mut server = format!("listen = \"{listen}\"\n");
        if let Some(t) = self.sync_token {
            server.push_str(&format!("sync_token = \"{t}\"\n"));
        }
        if let Some(f) = &self.webhook_secret_file {
            server.push_str(&format!("webhook_secret_file = \"{}\"\n", f.display()));
        }
        if let Some(extra) = &self.server_extra {
            server.push_str(extra);
        }
        ws.write_config_full(endpoint, &self.areas, &git_extra, &sync_extra, &server);
    }
}

/// A running `kvgit -c <config> serve`; killed (SIGKILL) on drop.
pub struct Serve {
    child: Option<Child>,
    pub pid: u32,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl Serve {
    /// Writes the config (a fresh free port for `server.listen`), starts the process with
    /// its output appended to `serve.log` in the workspace, and waits for `/healthz`.
    pub fn start(ws: &Workspace, endpoint: &str, cfg: &ServeConfig<'_>) -> Serve {
        Serve::start_with_env(ws, endpoint, cfg, &[])
    }

    /// [`Serve::start`] with more environment variables for the process (e.g.
    /// `NOTIFY_SOCKET`, as systemd sets it).
    pub fn start_with_env(
        ws: &Workspace,
        endpoint: &str,
        cfg: &ServeConfig<'_>,
        env: &[(&str, &str)],
    ) -> Serve {
        let log = ws.dir.path().join("serve.log");
        let mut last = String::new();
        // A free port can be taken before serve binds it: retry a few times.
        for _ in 0..3 {
            let addr = free_addr();
            cfg.write(ws, endpoint, addr);
            let mut out = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .expect("open serve.log");
            writeln!(out, "===== kvgit serve on {addr} =====").expect("write serve.log");
            let err = out.try_clone().expect("dup serve.log");
            let child = Command::new(kvgit_bin())
                .arg("-c")
                .arg(&ws.config)
                .arg("serve")
                .current_dir(ws.dir.path())
                .env(
                    "KVGIT_LOG",
                    std::env::var("TEST_KVGIT_LOG").unwrap_or_else(|_| "kvgit=info".into()),
                )
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .expect("spawn kvgit serve");
            let mut serve = Serve {
                pid: child.id(),
                child: Some(child),
                addr,
                log: log.clone(),
            };
            match serve.wait_healthy() {
                Ok(()) => return serve,
                Err(why) => {
                    serve.kill9();
                    last = format!("{why}\n--- serve log tail ---\n{}", serve.log_tail(30));
                    if !last.contains("cannot listen") {
                        break;
                    }
                }
            }
        }
        panic!("kvgit serve did not come up: {last}");
    }

    fn wait_healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("kvgit serve exited early with {status}"));
                }
            }
            if matches!(self.try_get("/healthz"), Ok((200, _))) {
                return Ok(());
            }
            std::thread::sleep(STEP);
        }
        Err(format!("/healthz not 200 within {START_TIMEOUT:?}"))
    }

    /// The last `lines` lines of the serve log (every run of this workspace).
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// Panics with `msg` and the log tail.
    pub fn fail(&self, msg: &str) -> ! {
        panic!("{msg}\n--- serve log tail ---\n{}", self.log_tail(40))
    }

    pub fn try_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http(self.addr, "GET", path, None)
    }

    /// `GET path`: (status, body); panics when the service does not answer.
    pub fn get(&self, path: &str) -> (u16, String) {
        self.try_get(path)
            .unwrap_or_else(|e| self.fail(&format!("GET {path}: {e}")))
    }

    /// `POST path`, with `Authorization: Bearer <bearer>` when given.
    pub fn post(&self, path: &str, bearer: Option<&str>) -> (u16, String) {
        http(self.addr, "POST", path, bearer)
            .unwrap_or_else(|e| self.fail(&format!("POST {path}: {e}")))
    }

    /// `POST /sync` with no token; asserts 202.
    pub fn sync_now(&self) {
        let (code, body) = self.post("/sync", None);
        if code != 202 {
            self.fail(&format!("POST /sync answered {code}: {body}"));
        }
    }

    /// The `/metrics` page.
    pub fn metrics(&self) -> String {
        let (code, body) = self.get("/metrics");
        if code != 200 {
            self.fail(&format!("/metrics answered {code}"));
        }
        body
    }

    /// The value of one series, e.g. `kvgit_push_total{result="error"}`; `None` when absent.
    pub fn metric(&self, series: &str) -> Option<f64> {
        metric_value(&self.metrics(), series)
    }

    /// The `/status` document.
    pub fn status(&self) -> serde_json::Value {
        let (code, body) = self.get("/status");
        if code != 200 {
            self.fail(&format!("/status answered {code}: {body}"));
        }
        serde_json::from_str(&body).unwrap_or_else(|e| self.fail(&format!("/status JSON: {e}")))
    }

    /// Waits (bounded) until `/readyz` answers 200.
    pub fn wait_ready(&self) {
        if !poll_until(Duration::from_secs(30), || {
            matches!(self.try_get("/readyz"), Ok((200, _)))
        }) {
            let last = self.try_get("/readyz");
            self.fail(&format!("/readyz not 200 within 30s: {last:?}"));
        }
    }

    /// Like [`wait_until`], with the serve log in the panic message.
    pub fn wait_until(&self, timeout: Duration, what: &str, f: impl FnMut() -> bool) {
        if !poll_until(timeout, f) {
            self.fail(&format!("timed out after {timeout:?} waiting for {what}"));
        }
    }

    /// Waits until a push has gone through after one failed: the push error cleared,
    /// nothing of `area` left unpushed, and a last push time newer than `before`.
    pub fn wait_pushed_since(&self, timeout: Duration, area: &str, before: f64) {
        self.wait_until(timeout, "the push error to clear", || {
            self.status()["push_error"].is_null()
        });
        let unpushed = format!(r#"kvgit_unpushed_commits{{area="{area}"}}"#);
        self.wait_until(timeout, "nothing unpushed and a newer push time", || {
            self.metric(&unpushed) == Some(0.0)
                && self
                    .metric("kvgit_last_push_success_timestamp_seconds")
                    .is_some_and(|t| t > before)
        });
    }

    /// Like [`wait_until_async`], with the serve log in the panic message.
    pub async fn wait_until_async<F, Fut>(&self, timeout: Duration, what: &str, f: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        if !poll_until_async(timeout, f).await {
            self.fail(&format!("timed out after {timeout:?} waiting for {what}"));
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL by pid, then reap; idempotent.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-9", &self.pid.to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Sends `kill -<sig>` (e.g. "STOP", "CONT", "TERM") to the process by pid.
    pub fn signal(&self, sig: &str) {
        let sent = Command::new("kill")
            .args([format!("-{sig}"), self.pid.to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{sig} {} failed", self.pid);
    }

    /// SIGTERM by pid and wait (bounded) for the exit: its status and how long it took.
    pub fn terminate(&mut self) -> (ExitStatus, Duration) {
        let started = Instant::now();
        self.signal("TERM");
        let status = self.wait_exit();
        (status, started.elapsed())
    }

    /// Waits (bounded) for the process to exit on its own, and reaps it.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("serve (pid {}) is not running", self.pid));
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if started.elapsed() > TERM_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                self.fail(&format!("serve did not exit within {TERM_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A bare repository on disk standing in for the Git hosting remote. Forced pushes and
/// branch deletions are refused, so a test sees it if kvgit ever tries one.
pub struct Remote {
    pub path: PathBuf,
}

impl Remote {
    /// `git init --bare -b main` at `dir/remote.git`.
    pub fn init(dir: &Path) -> Remote {
        let path = dir.join("remote.git");
        run_git(
            None,
            &[
                "init",
                "-q",
                "--bare",
                "-b",
                "main",
                path.to_str().expect("utf-8"),
            ],
        );
        let remote = Remote { path };
        remote.git(&["config", "receive.denyNonFastForwards", "true"]);
        remote.git(&["config", "receive.denyDeletes", "true"]);
        remote
    }

    /// `git --git-dir remote.git ARGS…`, stdout; panics on failure.
    pub fn git(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&crate::kvgit::git_in(&self.path, args)).into_owned()
    }

    /// The id `rev` names, `None` when it does not resolve (e.g. no branch yet).
    pub fn rev(&self, rev: &str) -> Option<String> {
        rev_parse(&self.path, rev)
    }

    /// The tip of `main`.
    pub fn tip(&self) -> Option<String> {
        self.rev("refs/heads/main")
    }

    /// Commits on `main` (0 before the first push).
    pub fn commit_count(&self) -> usize {
        commit_count(&self.path, "refs/heads/main")
    }

    /// Makes the remote unreachable by renaming it away; `restore` puts it back.
    pub fn take_away(&self) {
        std::fs::rename(&self.path, self.away()).expect("rename the remote away");
    }

    pub fn restore(&self) {
        std::fs::rename(self.away(), &self.path).expect("put the remote back");
    }

    fn away(&self) -> PathBuf {
        self.path.with_extension("away")
    }

    /// A person's commit: clone into `work/<name>`, write (Some) or remove (None) `files`,
    /// commit as "A Person" and push to main (pulling with rebase and retrying when someone
    /// pushed in between). Returns the pushed commit id.
    pub fn person_commits(
        &self,
        work: &Path,
        files: &[(&str, Option<&[u8]>)],
        message: &str,
    ) -> String {
        let clone = work.join(format!(
            "person-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("time")
                .as_nanos()
        ));
        run_git(
            None,
            &[
                "clone",
                "-q",
                self.path.to_str().expect("utf-8"),
                clone.to_str().expect("utf-8"),
            ],
        );
        crate::kvgit::write_files(&clone, files);
        let person = [
            "-c",
            "user.name=A Person",
            "-c",
            "user.email=person@example.org",
        ];
        run_git(Some(&clone), &["add", "-A"]);
        let mut commit = person.to_vec();
        commit.extend(["commit", "-q", "-m", message]);
        run_git(Some(&clone), &commit);
        let mut pushed = false;
        for _ in 0..5 {
            if try_git(Some(&clone), &["push", "-q", "origin", "HEAD:main"]) {
                pushed = true;
                break;
            }
            let mut pull = person.to_vec();
            pull.extend(["pull", "-q", "--rebase", "origin", "main"]);
            run_git(Some(&clone), &pull);
        }
        assert!(pushed, "the person's push kept being rejected");
        let id = String::from_utf8_lossy(&run_git(Some(&clone), &["rev-parse", "HEAD"]))
            .trim()
            .to_string();
        std::fs::remove_dir_all(&clone).expect("remove clone");
        id
    }
}

/// Polls `f` every 50 ms until it holds or `timeout` passes; whether it held.
pub fn poll_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(STEP);
    }
}

/// Polls `f` every 50 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, f: impl FnMut() -> bool) {
    assert!(
        poll_until(timeout, f),
        "timed out after {timeout:?} waiting for {what}"
    );
}

/// The async form of [`poll_until`], for conditions that read etcd.
pub async fn poll_until_async<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(STEP).await;
    }
}

/// The async form of [`wait_until`].
pub async fn wait_until_async<F, Fut>(timeout: Duration, what: &str, f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    assert!(
        poll_until_async(timeout, f).await,
        "timed out after {timeout:?} waiting for {what}"
    );
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`): status and body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let auth = bearer.map(|token| format!("Bearer {token}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| ("Authorization", a))
        .into_iter()
        .collect();
    http_with(addr, method, path, &headers, b"")
}

/// Like [`http`], with any header lines and a body (sent with its Content-Length), as a Git
/// host's webhook delivery is.
pub fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    let mut req = req.into_bytes();
    req.extend_from_slice(body);
    stream.write_all(&req)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header block"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let body = &raw[split + 4..];
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(body).ok_or_else(|| bad("bad chunked body"))?
    } else {
        body.to_vec()
    };
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// The value of `series` (name with its exact label set) on a Prometheus text page.
pub fn metric_value(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        let value = rest.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// The trailers (`Key: value` lines of the last paragraph) of a commit message.
pub fn trailers(message: &str) -> BTreeMap<String, String> {
    let last = message.trim_end().rsplit("\n\n").next().unwrap_or("");
    last.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// One commit of `git log`: id, parents, full message.
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub id: String,
    pub parents: Vec<String>,
    pub message: String,
}

/// `git log REV` of a repository, newest first (empty when `rev` does not resolve).
pub fn log(repo: &Path, rev: &str) -> Vec<LogEntry> {
    if rev_parse(repo, rev).is_none() {
        return Vec::new();
    }
    let raw = crate::kvgit::git_in(repo, &["log", "--format=%H %P%x00%B%x01", rev]);
    String::from_utf8_lossy(&raw)
        .split('\x01')
        .filter(|c| !c.trim().is_empty())
        .map(|c| {
            let (head, message) = c.split_once('\0').expect("log format");
            let mut ids = head.split_whitespace().map(str::to_string);
            LogEntry {
                id: ids.next().expect("commit id"),
                parents: ids.collect(),
                message: message.to_string(),
            }
        })
        .collect()
}

/// `git rev-parse --verify -q REV^{commit}` or `None`.
pub fn rev_parse(repo: &Path, rev: &str) -> Option<String> {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(repo)
        .args(["rev-parse", "--verify", "-q", &format!("{rev}^{{commit}}")])
        .output()
        .expect("spawn git");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Commits reachable from `rev` (0 when it does not resolve).
pub fn commit_count(repo: &Path, rev: &str) -> usize {
    if rev_parse(repo, rev).is_none() {
        return 0;
    }
    let raw = crate::kvgit::git_in(repo, &["rev-list", "--count", rev]);
    String::from_utf8_lossy(&raw)
        .trim()
        .parse()
        .expect("a count")
}

/// Every file under `dir` at `rev`, path relative to `dir` -> content: `git ls-tree -r`
/// for the list, one `git cat-file --batch` for the contents (the `git show` of each file,
/// in one process). Empty when `rev` does not resolve or has no `dir`.
pub fn git_files(repo: &Path, rev: &str, dir: &str) -> BTreeMap<String, Vec<u8>> {
    let Some(commit) = rev_parse(repo, rev) else {
        return BTreeMap::new();
    };
    let listing = crate::kvgit::git_in(repo, &["ls-tree", "-r", "-z", &commit, "--", dir]);
    let mut entries: Vec<(String, String)> = Vec::new();
    for item in listing.split(|b| *b == 0).filter(|i| !i.is_empty()) {
        let item = String::from_utf8_lossy(item);
        let (meta, path) = item.split_once('\t').expect("ls-tree line");
        let mut meta = meta.split(' ');
        let (_mode, kind, id) = (meta.next(), meta.next(), meta.next());
        assert_eq!(kind, Some("blob"), "unexpected tree entry {item}");
        let rel = path
            .strip_prefix(&format!("{dir}/"))
            .unwrap_or_else(|| panic!("{path} is not under {dir}/"))
            .to_string();
        entries.push((rel, id.expect("blob id").to_string()));
    }
    if entries.is_empty() {
        return BTreeMap::new();
    }
    let mut child = Command::new("git")
        .arg("--git-dir")
        .arg(repo)
        .args(["cat-file", "--batch"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn git cat-file");
    let mut stdin = child.stdin.take().expect("stdin");
    let ids: String = entries.iter().map(|(_, id)| format!("{id}\n")).collect();
    // Written from a thread: cat-file's output must be read while the ids go in.
    let writer = std::thread::spawn(move || {
        stdin.write_all(ids.as_bytes()).expect("feed cat-file");
    });
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut files = BTreeMap::new();
    for (rel, id) in entries {
        let mut header = String::new();
        out.read_line(&mut header).expect("cat-file header");
        let mut parts = header.split_whitespace();
        assert_eq!(
            parts.next(),
            Some(id.as_str()),
            "cat-file answered {header}"
        );
        assert_eq!(parts.next(), Some("blob"), "cat-file answered {header}");
        let size: usize = parts.next().and_then(|s| s.parse().ok()).expect("size");
        let mut content = vec![0u8; size + 1];
        out.read_exact(&mut content).expect("cat-file content");
        content.pop();
        files.insert(rel, content);
    }
    writer.join().expect("writer thread");
    let status = child.wait().expect("wait cat-file");
    assert!(status.success(), "git cat-file failed");
    files
}

/// Every key under `prefix` in etcd, the prefix stripped, as text -> value.
pub async fn etcd_files(c: &mut etcd_client::Client, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let resp = c
        .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .expect("etcd get --prefix");
    resp.kvs()
        .iter()
        .map(|kv| {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let rel = key
                .strip_prefix(prefix)
                .expect("under the prefix")
                .to_string();
            (rel, kv.value().to_vec())
        })
        .collect()
}

/// A short description of how two key -> value maps differ (empty when they are equal).
pub fn diff(kv: &BTreeMap<String, Vec<u8>>, git: &BTreeMap<String, Vec<u8>>) -> String {
    let mut lines = Vec::new();
    for (k, v) in kv {
        match git.get(k) {
            None => lines.push(format!("only in etcd: {k}")),
            Some(g) if g != v => lines.push(format!(
                "differs: {k}: etcd {:?} git {:?}",
                String::from_utf8_lossy(v),
                String::from_utf8_lossy(g)
            )),
            Some(_) => {}
        }
    }
    for k in git.keys().filter(|k| !kv.contains_key(*k)) {
        lines.push(format!("only in git: {k}"));
    }
    let n = lines.len();
    lines.truncate(10);
    if n > 10 {
        lines.push(format!("… {} more", n - 10));
    }
    lines.join("\n")
}

/// A loopback address whose port is free right now (it may be taken before it is bound).
pub fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local addr")
}

fn log_tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    match File::open(path).and_then(|mut f| f.read_to_string(&mut text)) {
        Ok(_) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

fn try_git(cwd: Option<&Path>, args: &[&str]) -> bool {
    let mut cmd = Command::new("git");
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    cmd.args(args).output().expect("spawn git").status.success()
}

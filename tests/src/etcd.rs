//! A real etcd for tests: started from the installed binary on free loopback ports with a
//! temp data dir, polled until healthy, killed on `stop()` or drop.

use backend_etcd::{EtcdBackend, EtcdConfig};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use sync_core::Revision;
use tempfile::TempDir;

/// Room for a million small keys plus their history (etcd's default quota is 2 GiB).
const QUOTA_BYTES: u64 = 8 * 1024 * 1024 * 1024;
/// How long etcd may take to answer /health on a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One single-member etcd cluster owned by a test.
pub struct EtcdServer {
    /// The etcd process; `None` once stopped.
    child: Option<Child>,
    /// Its pid, kept after stop for messages.
    pid: u32,
    /// `http://127.0.0.1:PORT`.
    endpoint: String,
    /// etcd's stdout and stderr, for the panic message when something goes wrong.
    log_path: PathBuf,
    /// The binary and ports, to start it again in place (after a snapshot restore).
    bin: PathBuf,
    client_port: u16,
    peer_port: u16,
    /// Data dir and log; removed when the server is dropped.
    _dir: TempDir,
}

impl EtcdServer {
    /// Starts etcd and waits until it answers; panics (with the log tail) when it cannot.
    pub fn start() -> EtcdServer {
        let bin = find_etcd();
        // A free port can be taken by someone else before etcd binds it: retry a few times.
        let mut last_failure = String::new();
        for _ in 0..3 {
            match try_start(&bin) {
                Ok(server) => return server,
                Err(failure) => last_failure = failure,
            }
        }
        panic!("etcd did not start: {last_failure}");
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Kills the process (by its pid) and waits for it; idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // An error here means it already exited; wait reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `etcdctl snapshot save`: the whole store as of now, to restore later.
    pub fn save_snapshot(&self, name: &str) -> PathBuf {
        let path = self._dir.path().join(name);
        etcdctl(&[
            &format!("--endpoints={}", self.endpoint),
            "snapshot",
            "save",
            path.to_str().expect("utf-8 path"),
        ]);
        path
    }

    /// Stops etcd, restores `snapshot` the way an operator does (`etcdctl snapshot restore`
    /// with the same member name and peer URL, so cluster and member ids are kept and only
    /// the revision goes back), and starts it again on the same ports.
    pub fn restore_snapshot(&mut self, snapshot: &Path) {
        self.stop();
        let data = self._dir.path().join("data");
        std::fs::remove_dir_all(&data).expect("remove the old data dir");
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        etcdctl(&[
            "snapshot",
            "restore",
            snapshot.to_str().expect("utf-8 path"),
            "--name=default",
            &format!("--initial-cluster=default={peer_url}"),
            &format!("--initial-advertise-peer-urls={peer_url}"),
            &format!("--data-dir={}", data.display()),
        ]);
        let child = spawn(
            &self.bin,
            self._dir.path(),
            self.client_port,
            self.peer_port,
        )
        .unwrap_or_else(|e| panic!("restart etcd: {e}"));
        self.pid = child.id();
        self.child = Some(child);
        if let Err(why) = wait_healthy(self, self.client_port) {
            panic!("etcd after restore: {why}\n{}", self.log_tail(30));
        }
    }

    /// The last `lines` lines of etcd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }

    /// A backend config for this server with short timeouts (tests must not hang).
    pub fn config(&self) -> EtcdConfig {
        EtcdConfig {
            endpoints: vec![self.endpoint.clone()],
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            watch_progress_interval: Duration::from_secs(1),
            ..EtcdConfig::default()
        }
    }

    /// A connected `EtcdBackend`.
    pub async fn backend(&self) -> EtcdBackend {
        EtcdBackend::connect(self.config())
            .await
            .unwrap_or_else(|e| panic!("connect to test etcd: {e}\n{}", self.log_tail(20)))
    }

    /// A plain etcd-client, for setup the backend does not offer (compaction, raw puts).
    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.endpoint.as_str()], None)
            .await
            .unwrap_or_else(|e| panic!("etcd-client connect: {e}"))
    }

    /// Compacts history up to `rev` and waits until it is physically applied.
    pub async fn compact(&self, rev: Revision) {
        let r = i64::try_from(rev.0).expect("revision fits in i64");
        self.client()
            .await
            .compact(
                r,
                Some(etcd_client::CompactionOptions::new().with_physical()),
            )
            .await
            .unwrap_or_else(|e| panic!("compact to {rev}: {e}"));
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn find_etcd() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("etcd"))
            .find(|p| p.is_file())
    });
    let fallback = PathBuf::from("/usr/bin/etcd");
    match on_path {
        Some(p) => p,
        None if fallback.is_file() => fallback,
        None => panic!("etcd not found: install etcd-server (apt-get install -y etcd-server)"),
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local addr").port()
}

fn try_start(bin: &Path) -> Result<EtcdServer, String> {
    let dir = tempfile::Builder::new()
        .prefix("kvgit-etcd-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    let (client_port, peer_port) = (free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{client_port}");
    let log_path = dir.path().join("etcd.log");
    let child = spawn(bin, dir.path(), client_port, peer_port)?;
    let mut server = EtcdServer {
        pid: child.id(),
        child: Some(child),
        endpoint: client_url,
        log_path,
        bin: bin.to_owned(),
        client_port,
        peer_port,
        _dir: dir,
    };
    match wait_healthy(&mut server, client_port) {
        Ok(()) => Ok(server),
        Err(why) => {
            server.stop();
            Err(format!(
                "{why}\n--- etcd log tail ---\n{}",
                server.log_tail(30)
            ))
        }
    }
}

/// Starts etcd on these ports with its data (`data`) and log (`etcd.log`, appended) in `dir`.
fn spawn(bin: &Path, dir: &Path, client_port: u16, peer_port: u16) -> Result<Child, String> {
    let client_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let log_path = dir.join("etcd.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("open {}: {e}", log_path.display()))?;
    let log_err = log.try_clone().map_err(|e| format!("dup log: {e}"))?;
    Command::new(bin)
        .arg("--name=default")
        .arg(format!("--data-dir={}", dir.join("data").display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=default={peer_url}"))
        .arg(format!("--quota-backend-bytes={QUOTA_BYTES}"))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", bin.display()))
}

/// `etcdctl ARGS…` (API v3); panics with its output when it fails.
fn etcdctl(args: &[&str]) {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(args)
        .output()
        .expect("run etcdctl (apt-get install -y etcd-client)");
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_healthy(server: &mut EtcdServer, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(child) = server.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("etcd exited early with {status}"));
            }
        }
        if health_ok(port) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "etcd did not report healthy within {START_TIMEOUT:?}"
    ))
}

/// etcd serves `GET /health` on its client port; `"health":"true"` once it has a leader.
fn health_ok(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /health HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.contains("\"health\":\"true\"")
}

fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

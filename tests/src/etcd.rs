//! A real etcd for tests: started from the installed binary on free loopback ports with a
//! temp data dir, polled until healthy, killed on `stop()` or drop.

use crate::certs::TestPki;
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

/// How a test etcd is secured: all off by default (plain http, no auth).
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    /// Serve clients over https with these files.
    pub tls: Option<EtcdTls>,
    /// `--client-cert-auth`: clients must present a certificate signed by the CA; with auth
    /// enabled its CN is the user.
    pub client_cert_auth: bool,
    /// `--auth-token-ttl` in seconds: how long an idle simple token lives (etcd's default 300).
    pub auth_token_ttl: Option<u64>,
    /// `--unsafe-no-fsync`: etcd stops syncing its WAL, so a benchmark measures its client
    /// rather than the disk (the data does not survive a crash of the machine).
    pub unsafe_no_fsync: bool,
}

/// The PEM files of a TLS etcd, and the certificate its own tooling (etcdctl, `client()`)
/// presents when client certificates are required.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// A client certificate with CN "root": the admin identity under `--client-cert-auth`.
    pub admin_cert: (PathBuf, PathBuf),
}

impl EtcdTls {
    /// Server certificate for the loopback names and a root client certificate from `pki`.
    pub fn from_pki(pki: &TestPki) -> EtcdTls {
        let (cert_file, key_file) = pki.server("localhost");
        EtcdTls {
            ca_file: pki.ca_file(),
            cert_file,
            key_file,
            admin_cert: pki.client("root"),
        }
    }
}

/// One single-member etcd cluster owned by a test.
pub struct EtcdServer {
    /// The etcd process; `None` once stopped.
    child: Option<Child>,
    /// Its pid, kept after stop for messages.
    pid: u32,
    /// `http://127.0.0.1:PORT` (`https://` with TLS).
    endpoint: String,
    /// How it is secured; kept to restart it the same way.
    options: EtcdOptions,
    /// Plain-http port for `/health`, so health checks need no TLS.
    metrics_port: u16,
    /// The root password once `enable_auth` ran (etcdctl and `client()` log in with it).
    root_password: Option<String>,
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
        EtcdServer::start_with(EtcdOptions::default())
    }

    /// Starts etcd secured as `options` say (TLS, client certificates, token TTL).
    pub fn start_with(options: EtcdOptions) -> EtcdServer {
        assert!(
            !options.client_cert_auth || options.tls.is_some(),
            "client_cert_auth needs tls"
        );
        let bin = find_etcd();
        // A free port can be taken by someone else before etcd binds it: retry a few times.
        let mut last_failure = String::new();
        for _ in 0..3 {
            match try_start(&bin, &options) {
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

    /// Stops etcd and starts it again on the same ports with the same data and options;
    /// its simple auth tokens do not survive this.
    pub fn restart(&mut self) {
        self.stop();
        self.respawn("restart");
    }

    fn respawn(&mut self, why: &str) {
        let child = spawn(&self.bin, self._dir.path(), &self.ports(), &self.options)
            .unwrap_or_else(|e| panic!("{why} etcd: {e}"));
        self.pid = child.id();
        self.child = Some(child);
        if let Err(e) = wait_healthy(self, self.metrics_port) {
            panic!("etcd after {why}: {e}\n{}", self.log_tail(30));
        }
    }

    fn ports(&self) -> Ports {
        Ports {
            client: self.client_port,
            peer: self.peer_port,
            metrics: self.metrics_port,
        }
    }

    /// `etcdctl ARGS…` against this server with its TLS files and, once auth is enabled,
    /// as root; returns stdout, panics with the output when it fails.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let mut all = vec![format!("--endpoints={}", self.endpoint)];
        if let Some(tls) = &self.options.tls {
            all.push(format!("--cacert={}", tls.ca_file.display()));
            if self.options.client_cert_auth {
                all.push(format!("--cert={}", tls.admin_cert.0.display()));
                all.push(format!("--key={}", tls.admin_cert.1.display()));
            }
        }
        if let Some(password) = &self.root_password {
            all.push(format!("--user=root:{password}"));
        }
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        etcdctl(&all)
    }

    /// Creates user root with `root_password` and turns authentication on; from now on
    /// `etcdctl` and `client()` act as root.
    pub fn enable_auth(&mut self, root_password: &str) {
        self.etcdctl(&["user", "add", &format!("root:{root_password}")]);
        self.etcdctl(&["auth", "enable"]);
        self.root_password = Some(root_password.to_owned());
    }

    /// Adds a role with permissions `(perm, key, prefix)`, perm being "read", "write" or
    /// "readwrite"; `prefix` grants the whole range of keys starting with `key`.
    pub fn add_role(&self, role: &str, permissions: &[(&str, &str, bool)]) {
        self.etcdctl(&["role", "add", role]);
        for (perm, key, prefix) in permissions {
            let mut args = vec!["role", "grant-permission", role, perm, key];
            if *prefix {
                args.push("--prefix=true");
            }
            self.etcdctl(&args);
        }
    }

    /// Adds a user with `password` and these roles.
    pub fn add_user(&self, user: &str, password: &str, roles: &[&str]) {
        self.etcdctl(&["user", "add", &format!("{user}:{password}")]);
        for role in roles {
            self.etcdctl(&["user", "grant-role", user, role]);
        }
    }

    /// `etcdctl snapshot save`: the whole store as of now, to restore later.
    pub fn save_snapshot(&self, name: &str) -> PathBuf {
        let path = self._dir.path().join(name);
        self.etcdctl(&["snapshot", "save", path.to_str().expect("utf-8 path")]);
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
        self.respawn("restore");
    }

    /// The last `lines` lines of etcd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }

    /// A backend config for this server with short timeouts (tests must not hang): its CA
    /// with TLS, and the root client certificate when client certificates are required.
    pub fn config(&self) -> EtcdConfig {
        let tls = self.options.tls.as_ref();
        let admin = tls
            .filter(|_| self.options.client_cert_auth)
            .map(|t| &t.admin_cert);
        EtcdConfig {
            endpoints: vec![self.endpoint.clone()],
            ca_file: tls.map(|t| t.ca_file.clone()),
            cert_file: admin.map(|(cert, _)| cert.clone()),
            key_file: admin.map(|(_, key)| key.clone()),
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            watch_progress_interval: Duration::from_secs(1),
            ..EtcdConfig::default()
        }
    }

    /// The config of `config()` logging in as `user` with `password`.
    pub fn config_as(&self, user: &str, password: &str) -> EtcdConfig {
        EtcdConfig {
            user: Some(user.to_owned()),
            password: Some(password.into()),
            ..self.config()
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
        let mut opts = etcd_client::ConnectOptions::new();
        if let Some(tls) = &self.options.tls {
            let read =
                |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
            let mut t = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca_file)));
            if self.options.client_cert_auth {
                t = t.identity(etcd_client::Identity::from_pem(
                    read(&tls.admin_cert.0),
                    read(&tls.admin_cert.1),
                ));
            }
            opts = opts.with_tls(t);
        }
        if let Some(password) = &self.root_password {
            opts = opts
                .with_user("root", password)
                .with_auto_token_refresh(true);
        }
        etcd_client::Client::connect([self.endpoint.as_str()], Some(opts))
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

/// The loopback ports of one etcd.
struct Ports {
    client: u16,
    peer: u16,
    metrics: u16,
}

fn client_url(port: u16, options: &EtcdOptions) -> String {
    let scheme = if options.tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://127.0.0.1:{port}")
}

fn try_start(bin: &Path, options: &EtcdOptions) -> Result<EtcdServer, String> {
    let dir = tempfile::Builder::new()
        .prefix("kvgit-etcd-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    let ports = Ports {
        client: free_port(),
        peer: free_port(),
        metrics: free_port(),
    };
    let log_path = dir.path().join("etcd.log");
    let child = spawn(bin, dir.path(), &ports, options)?;
    let mut server = EtcdServer {
        pid: child.id(),
        child: Some(child),
        endpoint: client_url(ports.client, options),
        options: options.clone(),
        metrics_port: ports.metrics,
        root_password: None,
        log_path,
        bin: bin.to_owned(),
        client_port: ports.client,
        peer_port: ports.peer,
        _dir: dir,
    };
    match wait_healthy(&mut server, ports.metrics) {
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
fn spawn(bin: &Path, dir: &Path, ports: &Ports, options: &EtcdOptions) -> Result<Child, String> {
    let client_url = client_url(ports.client, options);
    let peer_url = format!("http://127.0.0.1:{}", ports.peer);
    let mut secured = vec![format!(
        "--listen-metrics-urls=http://127.0.0.1:{}",
        ports.metrics
    )];
    if let Some(tls) = &options.tls {
        secured.push(format!("--cert-file={}", tls.cert_file.display()));
        secured.push(format!("--key-file={}", tls.key_file.display()));
    }
    // etcd 3.4 asks every client for a certificate once it has a trusted CA, so the CA is
    // given only when client certificates are wanted.
    if let Some(tls) = options.tls.as_ref().filter(|_| options.client_cert_auth) {
        secured.push(format!("--trusted-ca-file={}", tls.ca_file.display()));
        secured.push("--client-cert-auth".to_owned());
    }
    if let Some(ttl) = options.auth_token_ttl {
        secured.push(format!("--auth-token-ttl={ttl}"));
    }
    if options.unsafe_no_fsync {
        secured.push("--unsafe-no-fsync".to_owned());
    }
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
        // etcd 3.4.23's answers to progress requests can overtake events, so kvgit believes
        // only etcd's own notifications (`backend-etcd/src/progress.rs`); their default
        // interval is 10 minutes, the one setting an operator lowers for idle checkpoints.
        .arg("--experimental-watch-progress-notify-interval=500ms")
        .args(&secured)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", bin.display()))
}

/// `etcdctl ARGS…` (API v3); returns stdout, panics with its output when it fails.
fn etcdctl(args: &[&str]) -> String {
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
    String::from_utf8_lossy(&out.stdout).into_owned()
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

/// etcd serves `GET /health` on its (plain http) metrics port; `"health":"true"` once it has
/// a leader.
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

/// Every key under `prefix` with its value, relative to the prefix, read in pages of 10k
/// (one range of a large prefix is more than the client decodes at once).
pub async fn read_prefix(
    c: &mut etcd_client::Client,
    prefix: &str,
) -> std::collections::BTreeMap<Vec<u8>, Vec<u8>> {
    let end = prefix_end(prefix.as_bytes());
    let mut from = prefix.as_bytes().to_vec();
    let mut out = std::collections::BTreeMap::new();
    loop {
        let opts = etcd_client::GetOptions::new()
            .with_range(end.clone())
            .with_limit(10_000);
        let resp = c.get(from.clone(), Some(opts)).await.expect("etcd range");
        for kv in resp.kvs() {
            out.insert(kv.key()[prefix.len()..].to_vec(), kv.value().to_vec());
        }
        match resp.kvs().last() {
            Some(last) if resp.more() => from = [last.key(), b"\0"].concat(),
            _ => return out,
        }
    }
}

/// The end of the range of keys starting with `prefix` (its last byte plus one).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

//! A Consul for tests: the real agent at `CONSUL_HTTP_ADDR` when that is set, otherwise the
//! in-repo implementation (`consul_api`) run as the `consul-kv-api` binary on a free port.
//!
//! Also a minimal HTTP/1.0 client (std `TcpStream`, rustls when the server serves https) for
//! the harness and for tests that talk to the API directly, with helpers that make ACL
//! policies and tokens; [`encode_request`] and [`HttpResponse::parse`] serve async callers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the binary may take to print its address and answer.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Read timeout of [`ConsulServer::request`]: blocking queries must wait less than this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings for the in-repo server; ignored (except in `describe`) for a real agent.
#[derive(Clone, Debug)]
pub struct ConsulOptions {
    /// Enables ACLs with default policy deny; this is the initial management token's secret
    /// (the harness's own requests carry it).
    pub acl_management_token: Option<String>,
    /// Serve https only (the address is then `https://127.0.0.1:PORT`).
    pub tls: Option<ConsulTls>,
    pub datacenter: String,
    pub max_txn_ops: usize,
}

/// The agent's TLS files. With `verify_incoming` clients need a certificate signed by
/// `ca_file`; the harness presents the server's own (TestPki server certificates allow
/// client use).
#[derive(Clone, Debug)]
pub struct ConsulTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
    pub verify_incoming: bool,
}

/// A token made by [`ConsulServer::create_token`]: the accessor names it in messages, the
/// secret is what clients send.
#[derive(Clone, Debug)]
pub struct AclToken {
    pub accessor: String,
    pub secret: String,
}

impl Default for ConsulOptions {
    fn default() -> ConsulOptions {
        ConsulOptions {
            acl_management_token: None,
            tls: None,
            datacenter: "dc1".to_string(),
            max_txn_ops: 64,
        }
    }
}

/// A Consul HTTP API owned by a test (or borrowed, for a real agent).
pub struct ConsulServer {
    /// `http://HOST:PORT`.
    addr: String,
    /// The in-repo server's process; `None` for a real agent or once stopped.
    child: Option<Child>,
    /// Kept after stop for messages.
    pid: Option<u32>,
    /// Keeps the server's stdout pipe open, so a late print cannot fail with EPIPE.
    _stdout: Option<BufReader<ChildStdout>>,
    token: Option<String>,
    real: bool,
    /// The harness's TLS client when the server serves https.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl ConsulServer {
    pub fn start() -> ConsulServer {
        Self::start_with(ConsulOptions::default())
    }

    /// Wraps the agent at `CONSUL_HTTP_ADDR` (token from `CONSUL_HTTP_TOKEN`) if set, else
    /// starts `consul-kv-api` with `opts` and waits until it answers.
    pub fn start_with(opts: ConsulOptions) -> ConsulServer {
        if let Ok(addr) = std::env::var("CONSUL_HTTP_ADDR") {
            return ConsulServer {
                addr: normalize_addr(&addr),
                child: None,
                pid: None,
                _stdout: None,
                token: std::env::var("CONSUL_HTTP_TOKEN")
                    .ok()
                    .filter(|t| !t.is_empty()),
                real: true,
                tls: None,
            };
        }
        let bin = consul_api_bin();
        let mut command = Command::new(&bin);
        command
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--datacenter")
            .arg(&opts.datacenter)
            .arg("--max-txn-ops")
            .arg(opts.max_txn_ops.to_string());
        if let Some(token) = &opts.acl_management_token {
            command.arg("--acl-management-token").arg(token);
        }
        if let Some(tls) = &opts.tls {
            command
                .arg("--tls-cert-file")
                .arg(&tls.cert_file)
                .arg("--tls-key-file")
                .arg(&tls.key_file)
                .arg("--tls-ca-file")
                .arg(&tls.ca_file);
            if tls.verify_incoming {
                command.arg("--tls-verify-incoming");
            }
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let pid = child.id();
        let stdout = child.stdout.take().expect("piped stdout");
        let mut server = ConsulServer {
            addr: String::new(),
            child: Some(child),
            pid: Some(pid),
            _stdout: None,
            token: opts.acl_management_token.clone(),
            real: false,
            tls: opts.tls.as_ref().map(client_config),
        };
        match read_listening_line(stdout) {
            Ok((addr, stdout)) => {
                server.addr = addr;
                server._stdout = Some(stdout);
            }
            Err(why) => {
                server.stop();
                panic!("{} (pid {pid}) did not start: {why}", bin.display());
            }
        }
        server.wait_answering();
        server
    }

    /// `http://127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The server process; `None` for a real agent.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    pub fn is_real(&self) -> bool {
        self.real
    }

    /// The ACL token requests should carry, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Which Consul this is, for test logs.
    pub fn describe(&self) -> String {
        if self.real {
            format!("real Consul agent at {}", self.addr)
        } else {
            let pid = self.pid.map_or(String::new(), |p| format!(", pid {p}"));
            format!(
                "Consul KV API implementation (tests/src/consul_api) at {}{pid}",
                self.addr
            )
        }
    }

    /// Kills the in-repo server (by its pid) and reaps it; idempotent; a no-op for a real
    /// agent, which is not ours to stop.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // An error means it already exited; wait reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Makes the in-repo server lose (`false`) or regain (`true`) its cluster leader.
    pub fn set_leader(&self, present: bool) {
        assert!(
            !self.real,
            "set_leader needs the in-repo Consul KV API: a real agent ({}) cannot be made \
             leaderless by a test; skip this test when is_real()",
            self.addr
        );
        let response = self.request("PUT", &format!("/v1/_test/leader?present={present}"), b"");
        assert_eq!(
            response.status,
            200,
            "set_leader({present}): {}",
            response.text()
        );
    }

    /// A key prefix unique to this test run and `name` (`kvgit-test/<pid>-<nanos>-<n>/<name>/`),
    /// so tests sharing one real agent never see each other's keys.
    pub fn prefix(&self, name: &str) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        format!("kvgit-test/{}-{nanos}-{n}/{name}/", std::process::id())
    }

    /// One blocking HTTP request with this server's token; panics on I/O errors.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> HttpResponse {
        self.try_request(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path} on {}: {e}", self.describe()))
    }

    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> std::io::Result<HttpResponse> {
        self.try_request_as(method, path, self.token(), body)
    }

    /// One request with `token` (`None`: the anonymous token) instead of the harness's.
    pub fn try_request_as(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> std::io::Result<HttpResponse> {
        let host = host_port(&self.addr);
        let mut stream = TcpStream::connect(host)?;
        stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        let request = encode_request(method, host, path, token, body);
        let mut raw = Vec::new();
        match &self.tls {
            None => {
                stream.write_all(&request)?;
                stream.read_to_end(&mut raw)?;
            }
            Some(config) => {
                let ip = host.rsplit_once(':').map_or(host, |(h, _)| h);
                let name = rustls::pki_types::ServerName::try_from(ip.to_string())
                    .map_err(std::io::Error::other)?;
                let conn = rustls::ClientConnection::new(config.clone(), name)
                    .map_err(std::io::Error::other)?;
                let mut tls = rustls::StreamOwned::new(conn, stream);
                tls.write_all(&request)?;
                match tls.read_to_end(&mut raw) {
                    // A server that closes without close_notify has still answered.
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
                    other => {
                        other?;
                    }
                }
            }
        }
        HttpResponse::parse(&raw)
    }

    /// Creates an ACL policy with the management token; returns its ID. In-repo server
    /// with `acl_management_token`, or a real agent whose `CONSUL_HTTP_TOKEN` may do so.
    pub fn create_policy(&self, name: &str, rules: &str) -> String {
        let body = serde_json::json!({ "Name": name, "Rules": rules }).to_string();
        let response = self.request("PUT", "/v1/acl/policy", body.as_bytes());
        assert_eq!(
            response.status,
            200,
            "create policy {name}: {}",
            response.text()
        );
        response.json()["ID"]
            .as_str()
            .expect("policy ID")
            .to_string()
    }

    /// Creates a token bound to the named policies.
    pub fn create_token(&self, description: &str, policies: &[&str]) -> AclToken {
        let links: Vec<_> = policies
            .iter()
            .map(|name| serde_json::json!({ "Name": name }))
            .collect();
        let body = serde_json::json!({ "Description": description, "Policies": links });
        let response = self.request("PUT", "/v1/acl/token", body.to_string().as_bytes());
        assert_eq!(response.status, 200, "create token: {}", response.text());
        let json = response.json();
        AclToken {
            accessor: json["AccessorID"].as_str().expect("AccessorID").to_string(),
            secret: json["SecretID"].as_str().expect("SecretID").to_string(),
        }
    }

    /// A policy named `name` with `rules` and a token holding only it.
    pub fn token_with_rules(&self, name: &str, rules: &str) -> AclToken {
        self.create_policy(name, rules);
        self.create_token(&format!("kvgit test: {name}"), &[name])
    }

    fn wait_answering(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("{} exited early with {status}", self.describe());
                }
            }
            match self.try_request("GET", "/v1/status/leader", b"") {
                Ok(response) if response.status == 200 => return,
                _ if Instant::now() > deadline => {
                    let description = self.describe();
                    self.stop();
                    panic!(
                        "{description} did not answer /v1/status/leader within {START_TIMEOUT:?}"
                    );
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for ConsulServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The built `consul-kv-api` (target/<profile>/consul-kv-api next to the test's deps dir),
/// or `TEST_CONSUL_API_BIN`.
pub fn consul_api_bin() -> PathBuf {
    crate::kvgit::built_bin(
        "consul-kv-api",
        "TEST_CONSUL_API_BIN",
        "build it first (`cargo build -p kvgit-tests --bins`), or set CONSUL_HTTP_ADDR to \
         test against a real Consul agent",
    )
}

/// Reads `listening on http://ADDR` from the server, on a thread so a silent server cannot
/// hang the test; hands the reader back to keep the pipe open.
fn read_listening_line(stdout: ChildStdout) -> Result<(String, BufReader<ChildStdout>), String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let read = reader.read_line(&mut line).map(|_| line);
        // The receiver may have given up; nothing left to do then.
        let _ = tx.send(read.map(|line| (line, reader)));
    });
    let (line, reader) = rx
        .recv_timeout(START_TIMEOUT)
        .map_err(|_| format!("no address printed within {START_TIMEOUT:?}"))?
        .map_err(|e| format!("reading its stdout: {e}"))?;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .ok_or_else(|| format!("unexpected first line {line:?}"))?;
    Ok((addr.to_string(), reader))
}

/// `127.0.0.1:8500` or `http://127.0.0.1:8500/` -> `http://127.0.0.1:8500`.
fn normalize_addr(addr: &str) -> String {
    assert!(
        !addr.starts_with("https://") && !addr.starts_with("unix://"),
        "CONSUL_HTTP_ADDR={addr}: only plain http agents are supported by the test harness"
    );
    format!("http://{}", host_port(addr))
}

/// The harness's TLS client: trusts the test CA; with `verify_incoming` it presents the
/// server's certificate (which allows client use) as its own.
fn client_config(tls: &ConsulTls) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = |path: &PathBuf| -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(&tls.ca_file) {
        roots.add(cert).expect("test CA certificate");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots);
    let config = if tls.verify_incoming {
        let key = PrivateKeyDer::from_pem_file(&tls.key_file)
            .unwrap_or_else(|e| panic!("{}: {e}", tls.key_file.display()));
        builder
            .with_client_auth_cert(certs(&tls.cert_file), key)
            .expect("client certificate")
    } else {
        builder.with_no_client_auth()
    };
    Arc::new(config)
}

/// `http(s)://HOST:PORT/...` -> `HOST:PORT`.
pub fn host_port(addr: &str) -> &str {
    let rest = addr
        .strip_prefix("http://")
        .or_else(|| addr.strip_prefix("https://"))
        .unwrap_or(addr);
    rest.split('/').next().unwrap_or(rest)
}

/// An HTTP/1.0 request (the server closes the connection after answering, so the response
/// is simply everything read until EOF).
pub fn encode_request(
    method: &str,
    host: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> Vec<u8> {
    let mut head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(token) = token {
        head.push_str(&format!("X-Consul-Token: {token}\r\n"));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    request
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// Parses a whole response as read until EOF.
    pub fn parse(raw: &[u8]) -> std::io::Result<HttpResponse> {
        let invalid =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| invalid("no end of headers"))?;
        let head = std::str::from_utf8(&raw[..split]).map_err(|_| invalid("headers not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| invalid("bad status line"))?;
        let headers = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
            .collect();
        Ok(HttpResponse {
            status,
            headers,
            body: raw[split + 4..].to_vec(),
        })
    }

    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `X-Consul-Index`; panics when missing.
    pub fn index(&self) -> u64 {
        self.header("x-consul-index")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no X-Consul-Index in {self:?}"))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics (with the body) when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text()))
    }
}

//! How to reach etcd (`EtcdConfig`) and what can go wrong before the first request
//! (`ConnectError`); turns the config into etcd-client's `ConnectOptions`, TLS included.

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything needed to talk to one etcd cluster.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs (`http://host:2379`, `https://host:2379`); several members are balanced.
    pub endpoints: Vec<String>,
    /// etcd user for authentication; `password` must then be set too.
    pub user: Option<String>,
    pub password: Option<String>,
    /// PEM CA bundle that signed the server certificates (needed for `https://`).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for mutual TLS; both or neither.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Bound on opening a connection, so an endpoint where nothing listens fails fast.
    pub connect_timeout: Duration,
    /// Bound on every unary request (and on opening a watch).
    pub request_timeout: Duration,
    /// A watch asks etcd for progress after this long without events, so callers can move
    /// their checkpoint forward while the prefix is quiet.
    pub watch_progress_interval: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            user: None,
            password: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            watch_progress_interval: Duration::from_secs(5),
        }
    }
}

impl EtcdConfig {
    /// The endpoints as one string, for messages.
    pub fn endpoints_label(&self) -> String {
        self.endpoints.join(",")
    }

    fn wants_tls(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }
}

/// Why `EtcdBackend::connect` failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no etcd endpoints configured")]
    NoEndpoints,
    #[error("cannot read TLS {what} file {path}: {source}")]
    TlsFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS client certificate and key must be given together (only the {given} is set)")]
    TlsHalfIdentity { given: &'static str },
    #[error("endpoint {endpoint} is plain http but TLS files are configured; use https://")]
    TlsOverHttp { endpoint: String },
    #[error("etcd user {user} is configured without a password")]
    MissingPassword { user: String },
    #[error("no etcd answered at {endpoints}: {detail}")]
    Unreachable { endpoints: String, detail: String },
    #[error("etcd at {endpoints} refused the credentials: {detail}")]
    AuthFailed { endpoints: String, detail: String },
    #[error("etcd at {endpoints} refused the connection setup: {detail}")]
    Refused { endpoints: String, detail: String },
}

impl ConnectError {
    /// Worth retrying later (nothing answered yet); the others need a config change.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ConnectError::Unreachable { .. })
    }
}

/// Checks the config (no network) and builds etcd-client's options, reading the PEM files.
pub(crate) async fn connect_options(cfg: &EtcdConfig) -> Result<ConnectOptions, ConnectError> {
    if cfg.endpoints.is_empty() {
        return Err(ConnectError::NoEndpoints);
    }
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(cfg.connect_timeout)
        .with_timeout(cfg.request_timeout)
        // Dead connections under a quiet watch are found by HTTP/2 pings; etcd tolerates
        // pings every 5 s or slower (--grpc-keepalive-min-time).
        .with_keep_alive(Duration::from_secs(10), cfg.request_timeout)
        // A member cut off from the quorum answers "no leader" instead of a silent watch.
        .with_require_leader(true);
    match (&cfg.user, &cfg.password) {
        (Some(user), Some(password)) => opts = opts.with_user(user, password),
        (Some(user), None) => return Err(ConnectError::MissingPassword { user: user.clone() }),
        (None, _) => {}
    }
    if cfg.wants_tls() {
        if let Some(http) = cfg.endpoints.iter().find(|e| e.starts_with("http://")) {
            return Err(ConnectError::TlsOverHttp {
                endpoint: http.clone(),
            });
        }
        opts = opts.with_tls(tls_options(cfg).await?);
    }
    Ok(opts)
}

async fn tls_options(cfg: &EtcdConfig) -> Result<TlsOptions, ConnectError> {
    let mut tls = TlsOptions::new();
    if let Some(ca) = &cfg.ca_file {
        tls = tls.ca_certificate(Certificate::from_pem(read_pem("CA", ca).await?));
    }
    match (&cfg.cert_file, &cfg.key_file) {
        (Some(cert), Some(key)) => {
            let cert = read_pem("client certificate", cert).await?;
            let key = read_pem("client key", key).await?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        (Some(_), None) => {
            return Err(ConnectError::TlsHalfIdentity {
                given: "certificate",
            })
        }
        (None, Some(_)) => return Err(ConnectError::TlsHalfIdentity { given: "key" }),
        (None, None) => {}
    }
    Ok(tls)
}

async fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, ConnectError> {
    tokio::fs::read(path)
        .await
        .map_err(|source| ConnectError::TlsFile {
            what,
            path: path.to_owned(),
            source,
        })
}

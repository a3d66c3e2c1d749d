//! How to reach etcd (`EtcdConfig`: kvgit's `[backend]` table when `kind = "etcd"`, with
//! its defaults and checks) and what can go wrong before the first request
//! (`ConnectError`); turns the config into etcd-client's `ConnectOptions`, TLS included.

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything needed to talk to one etcd cluster. Deserialized from kvgit's `[backend]`
/// table (every setting optional, the defaults are `EtcdConfig::default()`'s); durations are
/// written for people ("500ms", "5s", "1m").
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct EtcdConfig {
    /// Client URLs (`http://host:2379`, `https://host:2379`); several members are balanced.
    pub endpoints: Vec<String>,
    /// etcd user for authentication; `password` must then be set too.
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// PEM CA bundle that signed the server certificates (needed for `https://`).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for mutual TLS; both or neither.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Bound on opening a connection, so an endpoint where nothing listens fails fast.
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// Bound on every unary request (and on opening a watch).
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// A watch asks etcd for progress after this long without events, so callers can move
    /// their checkpoint forward while the prefix is quiet. Not a config file setting.
    #[serde(skip)]
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
            request_timeout: Duration::from_secs(30),
            watch_progress_interval: Duration::from_secs(5),
        }
    }
}

impl EtcdConfig {
    /// The endpoints as one string, for messages.
    pub fn endpoints_label(&self) -> String {
        self.endpoints.join(",")
    }

    /// Every problem found without I/O, one line each, naming the setting as kvgit's config
    /// file spells it (`backend.<name>`); empty when the config is usable.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.endpoints.is_empty() {
            problems.push("backend.endpoints: at least one endpoint is needed".to_owned());
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                problems.push(format!(
                    "backend.endpoints[{i}]: {e:?} must start with http:// or https://"
                ));
            }
        }
        if self.user.is_some() != self.password.is_some() {
            problems.push("backend.user and backend.password: set both or neither".to_owned());
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            problems.push("backend.cert_file and backend.key_file: set both or neither".to_owned());
        }
        problems
    }

    /// Takes relative file settings (`ca_file`, `cert_file`, `key_file`) as relative to
    /// `dir` (the config file's directory), not to wherever the process was started.
    pub fn resolve_paths(&mut self, dir: &Path) {
        for file in [&mut self.ca_file, &mut self.cert_file, &mut self.key_file] {
            if let Some(path) = file.as_mut().filter(|p| p.is_relative()) {
                *path = dir.join(&*path);
            }
        }
    }

    fn wants_tls(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }
}

/// A password: `Debug` shows `<redacted>` and there is no `Display`, so it never reaches a
/// log line or an error message; `expose` is for the one place that sends it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

/// A duration written for people ("500ms", "5s", "1m"), longer than zero.
fn duration<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(de)?;
    match humantime::parse_duration(&text) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(D::Error::custom(format!(
            "must be longer than zero, got {text:?}"
        ))),
        Err(e) => Err(D::Error::custom(format!(
            "{text:?} is not a duration ({e}); write e.g. \"500ms\", \"5s\", \"1m\""
        ))),
    }
}

/// Why `EtcdBackend::connect` failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// What `EtcdConfig::validate` found, joined by "; ".
    #[error("invalid etcd settings: {0}")]
    Invalid(String),
    #[error("cannot read TLS {what} file {path}: {source}")]
    TlsFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("endpoint {endpoint} is plain http but TLS files are configured; use https://")]
    TlsOverHttp { endpoint: String },
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
    let problems = cfg.validate();
    if !problems.is_empty() {
        return Err(ConnectError::Invalid(problems.join("; ")));
    }
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(cfg.connect_timeout)
        .with_timeout(cfg.request_timeout)
        // Dead connections under a quiet watch are found by HTTP/2 pings; etcd tolerates
        // pings every 5 s or slower (--grpc-keepalive-min-time).
        .with_keep_alive(Duration::from_secs(10), cfg.request_timeout)
        // A member cut off from the quorum answers "no leader" instead of a silent watch.
        .with_require_leader(true);
    // `validate` saw to it that user and password come together.
    if let (Some(user), Some(password)) = (&cfg.user, &cfg.password) {
        opts = opts.with_user(user, password.expose());
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
    // `validate` saw to it that certificate and key come together.
    if let (Some(cert), Some(key)) = (&cfg.cert_file, &cfg.key_file) {
        let cert = read_pem("client certificate", cert).await?;
        let key = read_pem("client key", key).await?;
        tls = tls.identity(Identity::from_pem(cert, key));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_named_by_its_setting() {
        let cfg = EtcdConfig {
            endpoints: vec!["127.0.0.1:2379".into(), "https://e:2379".into()],
            user: Some("root".into()),
            key_file: Some("client.key".into()),
            ..EtcdConfig::default()
        };
        assert_eq!(
            cfg.validate(),
            [
                "backend.endpoints[0]: \"127.0.0.1:2379\" must start with http:// or https://",
                "backend.user and backend.password: set both or neither",
                "backend.cert_file and backend.key_file: set both or neither",
            ]
        );
        let none = EtcdConfig {
            endpoints: vec![],
            ..EtcdConfig::default()
        };
        assert_eq!(
            none.validate(),
            ["backend.endpoints: at least one endpoint is needed"]
        );
        assert!(EtcdConfig::default().validate().is_empty());
    }

    #[test]
    fn the_password_never_prints() {
        let cfg = EtcdConfig {
            user: Some("root".into()),
            password: Some("hunter2".into()),
            ..EtcdConfig::default()
        };
        let shown = format!("{cfg:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    #[test]
    fn relative_files_are_taken_from_the_config_directory() {
        let mut cfg = EtcdConfig {
            ca_file: Some("tls/ca.pem".into()),
            cert_file: Some("/etc/kvgit/client.pem".into()),
            ..EtcdConfig::default()
        };
        cfg.resolve_paths(Path::new("/srv/kvgit"));
        assert_eq!(
            cfg.ca_file.as_deref(),
            Some(Path::new("/srv/kvgit/tls/ca.pem"))
        );
        assert_eq!(
            cfg.cert_file.as_deref(),
            Some(Path::new("/etc/kvgit/client.pem"))
        );
    }

    #[tokio::test]
    async fn an_invalid_config_is_refused_before_any_request() {
        let cfg = EtcdConfig {
            user: Some("root".into()),
            ..EtcdConfig::default()
        };
        let err = connect_options(&cfg)
            .await
            .expect_err("user without password");
        assert!(matches!(err, ConnectError::Invalid(_)), "{err}");
        assert!(
            err.to_string()
                .contains("backend.user and backend.password"),
            "{err}"
        );
    }
}

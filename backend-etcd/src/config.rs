//! How to reach etcd (`EtcdConfig`: kvgit's `[backend]` table when `kind = "etcd"`, with
//! its defaults and checks) and what can go wrong before the first request
//! (`ConnectError`); turns the config into etcd-client's `ConnectOptions`, TLS included.

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
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
    /// etcd user for authentication; `password_file` (or `password`, e.g. from the
    /// environment) must then be set too.
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// A file holding the user's password (trailing newline ignored); read at connect.
    pub password_file: Option<PathBuf>,
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
    /// their checkpoint forward while the prefix is quiet: on etcd >= 3.4.25 / 3.5.8 only,
    /// as older servers' answers can overtake events (`progress.rs`). Not a config file
    /// setting.
    #[serde(skip)]
    pub watch_progress_interval: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            user: None,
            password: None,
            password_file: None,
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
        if self.password.is_some() && self.password_file.is_some() {
            problems
                .push("backend.password and backend.password_file: set one, not both".to_owned());
        }
        let has_password = self.password.is_some() || self.password_file.is_some();
        if self.user.is_some() != has_password {
            problems.push(
                "backend.user and backend.password: set both or neither (the password in backend.password_file, or backend.password from the environment)"
                    .to_owned(),
            );
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            problems.push("backend.cert_file and backend.key_file: set both or neither".to_owned());
        }
        problems
    }

    /// Takes relative file settings (`ca_file`, `cert_file`, `key_file`, `password_file`) as
    /// relative to `dir` (the config file's directory), not to wherever the process was
    /// started.
    pub fn resolve_paths(&mut self, dir: &Path) {
        for file in [
            &mut self.ca_file,
            &mut self.cert_file,
            &mut self.key_file,
            &mut self.password_file,
        ] {
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
    /// A file setting that cannot be used: unreadable, not PEM, key not matching.
    #[error("{setting}: {detail}")]
    File {
        setting: &'static str,
        detail: String,
    },
    /// The TLS handshake failed: the server's certificate is not signed by `ca_file`, or it
    /// refused our client certificate.
    #[error("TLS handshake with {endpoints} failed ({hint}): {detail}")]
    Tls {
        endpoints: String,
        hint: &'static str,
        detail: String,
    },
    #[error("endpoint {endpoint} is plain http but TLS files are configured; use https://")]
    TlsOverHttp { endpoint: String },
    #[error("no etcd answered at {endpoints}: {detail}")]
    Unreachable { endpoints: String, detail: String },
    #[error("etcd at {endpoints} refused the credentials: {detail}")]
    AuthFailed { endpoints: String, detail: String },
    /// etcd's "authentication failed, invalid user ID or password".
    #[error("etcd at {endpoints}: authentication failed for user {user} ({setting})")]
    BadPassword {
        endpoints: String,
        user: String,
        setting: &'static str,
    },
    #[error("etcd at {endpoints} refused the connection setup: {detail}")]
    Refused { endpoints: String, detail: String },
}

impl ConnectError {
    /// Worth retrying later (nothing answered yet); the others need a config change.
    /// A handshake failure is final: retrying a CA that does not match only hides it.
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
    if let Some(user) = &cfg.user {
        let password = match (&cfg.password, &cfg.password_file) {
            (Some(p), _) => p.clone(),
            (None, Some(file)) => read_password(file).await?,
            (None, None) => {
                return Err(ConnectError::Invalid(
                    "backend.user without password".into(),
                ))
            }
        };
        // Simple tokens expire (`--auth-token-ttl`, and on every etcd restart): requests
        // refused with "invalid auth token" log in again and are sent once more.
        opts = opts
            .with_user(user, password.expose())
            .with_auto_token_refresh(true);
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

/// Reads and checks the PEM files, so a wrong file is named here rather than surfacing as
/// an opaque handshake failure.
async fn tls_options(cfg: &EtcdConfig) -> Result<TlsOptions, ConnectError> {
    let mut tls = TlsOptions::new();
    if let Some(ca) = &cfg.ca_file {
        let pem = read_file("backend.ca_file", ca).await?;
        certificates("backend.ca_file", ca, &pem)?;
        tls = tls.ca_certificate(Certificate::from_pem(pem));
    }
    // `validate` saw to it that certificate and key come together.
    if let (Some(cert_path), Some(key_path)) = (&cfg.cert_file, &cfg.key_file) {
        let cert = read_file("backend.cert_file", cert_path).await?;
        let key = read_file("backend.key_file", key_path).await?;
        check_identity(cert_path, &cert, key_path, &key)?;
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Ok(tls)
}

async fn read_file(setting: &'static str, path: &Path) -> Result<Vec<u8>, ConnectError> {
    tokio::fs::read(path).await.map_err(|e| ConnectError::File {
        setting,
        detail: format!("cannot read {}: {e}", path.display()),
    })
}

async fn read_password(path: &Path) -> Result<Secret, ConnectError> {
    let setting = "backend.password_file";
    let bytes = read_file(setting, path).await?;
    let text = String::from_utf8(bytes).map_err(|_| ConnectError::File {
        setting,
        detail: format!("{} is not UTF-8 text", path.display()),
    })?;
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(ConnectError::File {
            setting,
            detail: format!("{} is empty", path.display()),
        });
    }
    Ok(Secret(password.to_owned()))
}

/// The PEM certificates in `pem`; at least one, each well-formed.
fn certificates(
    setting: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, ConnectError> {
    let bad = |why: String| ConnectError::File {
        setting,
        detail: format!("{}: {why}", path.display()),
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("malformed PEM ({e})")))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    for cert in &certs {
        rustls::server::ParsedCertificate::try_from(cert)
            .map_err(|e| bad(format!("not a valid X.509 certificate ({e})")))?;
    }
    Ok(certs)
}

/// The client certificate and key parse, and the key is the certificate's.
fn check_identity(
    cert_path: &Path,
    cert: &[u8],
    key_path: &Path,
    key: &[u8],
) -> Result<(), ConnectError> {
    let chain = certificates("backend.cert_file", cert_path, cert)?;
    let bad_key = |why: String| ConnectError::File {
        setting: "backend.key_file",
        detail: format!("{}: {why}", key_path.display()),
    };
    // The parse error names only the PEM section, never key material.
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| bad_key(format!("no PEM private key in it ({e})")))?;
    let provider = rustls::crypto::ring::default_provider();
    match rustls::sign::CertifiedKey::from_der(chain, key, &provider) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InconsistentKeys(_)) => Err(bad_key(format!(
            "does not belong to the certificate in backend.cert_file {}",
            cert_path.display()
        ))),
        Err(e) => Err(bad_key(format!("unusable private key ({e})"))),
    }
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
                "backend.user and backend.password: set both or neither (the password in backend.password_file, or backend.password from the environment)",
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

    #[test]
    fn the_password_comes_from_one_place() {
        let both = EtcdConfig {
            user: Some("root".into()),
            password: Some("x".into()),
            password_file: Some("pw".into()),
            ..EtcdConfig::default()
        };
        assert_eq!(
            both.validate(),
            ["backend.password and backend.password_file: set one, not both"]
        );
        let file_only = EtcdConfig {
            user: Some("root".into()),
            password_file: Some("pw".into()),
            ..EtcdConfig::default()
        };
        assert!(file_only.validate().is_empty());
    }

    #[tokio::test]
    async fn password_files_are_read_without_their_newline_and_named_when_bad() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pw");
        std::fs::write(&file, "hunter2\n").expect("write");
        assert_eq!(
            read_password(&file).await.expect("read").expose(),
            "hunter2"
        );
        std::fs::write(&file, "\n").expect("write");
        let empty = read_password(&file).await.expect_err("empty");
        assert!(
            empty.to_string().starts_with("backend.password_file: "),
            "{empty}"
        );
        let missing = read_password(&dir.path().join("nope"))
            .await
            .expect_err("missing");
        assert!(missing.to_string().contains("cannot read"), "{missing}");
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

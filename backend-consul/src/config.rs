//! How to reach Consul (`ConsulConfig`: kvgit's `[backend]` table when `kind = "consul"`,
//! with its defaults, its fallbacks to Consul's CLI environment and its checks) and what can
//! go wrong before the first request (`ConnectError`).

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything needed to talk to one Consul datacenter's KV store. Deserialized from kvgit's
/// `[backend]` table (every setting optional, the defaults are `ConsulConfig::default()`'s);
/// durations are written for people ("500ms", "5s", "1m").
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ConsulConfig {
    /// HTTP(S) addresses of Consul agents (`http://127.0.0.1:8500`); the first is used (an
    /// agent forwards to the servers itself, so one address is the usual Consul setup).
    pub endpoints: Vec<String>,
    /// ACL token sent as `X-Consul-Token`; `None` (and no `token_file`) is the anonymous
    /// token.
    pub token: Option<Secret>,
    /// A file holding the ACL token (surrounding whitespace trimmed), read at connect.
    pub token_file: Option<PathBuf>,
    /// Datacenter whose KV store is used (`?dc=`); `None` is the agent's own.
    pub datacenter: Option<String>,
    /// CA certificates (PEM) that Consul's certificate must chain to, for https://
    /// endpoints; `None` trusts the public web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for agents with `verify_incoming`; needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// The name Consul's certificate is checked against, when it is not the endpoint's
    /// host (e.g. `server.dc1.consul` while dialling an IP address).
    pub tls_server_name: Option<String>,
    /// Bound on opening a TCP (and TLS) connection, so an address where nothing listens
    /// fails fast.
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// Bound on every request; a blocking query may take `watch_wait` (plus Consul's jitter
    /// of up to 1/16 of it) on top.
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// How long one blocking query of a watch waits for a change (Consul's `wait`, at most
    /// 10 minutes). A quiet prefix reports progress once per `watch_wait`. Not a config
    /// file setting, nor are the two below.
    #[serde(skip)]
    pub watch_wait: Duration,
    /// Operations per `/v1/txn`: 64 up to Consul 1.13, 128 from 1.14 on.
    #[serde(skip)]
    pub max_txn_ops: usize,
    /// A key that must not exist, read (404) for the KV store's current index; the token
    /// needs `key:read` on it. Consul answers a read of an absent key with the index of the
    /// KV store's last change, which is exactly "the current revision".
    #[serde(skip)]
    pub revision_probe_key: String,
    /// Settings taken from Consul's CLI environment (`apply_env`): setting -> variable, so
    /// messages name the variable the operator actually set.
    #[serde(skip)]
    pub from_env: BTreeMap<&'static str, &'static str>,
}

impl Default for ConsulConfig {
    fn default() -> Self {
        ConsulConfig {
            endpoints: vec!["http://127.0.0.1:8500".to_owned()],
            token: None,
            token_file: None,
            datacenter: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            tls_server_name: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            watch_wait: Duration::from_secs(60),
            max_txn_ops: 64,
            revision_probe_key: "kvgit/revision-probe".to_owned(),
            from_env: BTreeMap::new(),
        }
    }
}

/// An ACL token: `Debug` shows `<redacted>` and there is no `Display`, so it never reaches
/// a log line or an error message; `expose` is for the places that send it.
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

/// Why `ConsulBackend::connect` failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// What `ConsulConfig::validate` found, joined by "; ".
    #[error("invalid Consul settings: {0}")]
    Invalid(String),
    #[error("cannot set up TLS for {endpoint}: {detail}")]
    Tls { endpoint: String, detail: String },
    #[error("no Consul answered at {endpoint}: {detail}")]
    Unreachable { endpoint: String, detail: String },
    #[error("Consul at {endpoint} refused the token: {detail}")]
    AuthFailed { endpoint: String, detail: String },
    #[error("Consul at {endpoint} refused the first request: {detail}")]
    Refused { endpoint: String, detail: String },
}

impl ConnectError {
    /// Worth retrying later (nothing answered yet, or no leader); the others need a
    /// config change.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ConnectError::Unreachable { .. })
    }
}

/// Consul's CLI variables, as `api.DefaultConfig` reads them; an empty value is unset.
pub const ENV_ADDR: &str = "CONSUL_HTTP_ADDR";
pub const ENV_SSL: &str = "CONSUL_HTTP_SSL";
pub const ENV_TOKEN: &str = "CONSUL_HTTP_TOKEN";
pub const ENV_TOKEN_FILE: &str = "CONSUL_HTTP_TOKEN_FILE";
pub const ENV_CACERT: &str = "CONSUL_CACERT";
pub const ENV_CLIENT_CERT: &str = "CONSUL_CLIENT_CERT";
pub const ENV_CLIENT_KEY: &str = "CONSUL_CLIENT_KEY";
pub const ENV_TLS_SERVER_NAME: &str = "CONSUL_TLS_SERVER_NAME";

impl ConsulConfig {
    /// How messages name `setting`: the Consul variable it came from, else
    /// `backend.<setting>`.
    pub fn setting(&self, setting: &str) -> String {
        match self.from_env.get(setting) {
            Some(var) => (*var).to_owned(),
            None => format!("backend.{setting}"),
        }
    }

    /// The credential requests carry, named without its secret, for refusals: "the token in
    /// backend.token_file (/etc/kvgit/token)", "the anonymous token (no token set)".
    pub fn credential(&self) -> String {
        match (&self.token_file, &self.token) {
            (Some(file), _) => format!(
                "the token in {} ({})",
                self.setting("token_file"),
                file.display()
            ),
            (None, Some(_)) => format!("the token in {}", self.setting("token")),
            (None, None) => "the anonymous token (no backend.token_file set)".to_owned(),
        }
    }

    /// Makes relative file settings relative to `dir` (the config file's directory). Call
    /// before `apply_env`: Consul's variables are relative to the working directory.
    pub fn resolve_paths(&mut self, dir: &Path) {
        for file in [
            &mut self.token_file,
            &mut self.ca_file,
            &mut self.cert_file,
            &mut self.key_file,
        ] {
            if let Some(path) = file.as_mut().filter(|p| p.is_relative()) {
                *path = dir.join(&*path);
            }
        }
    }

    /// Fills the settings the config left unset from Consul's CLI variables, as `consul`
    /// itself reads them (api.DefaultConfig + NewClient): `CONSUL_HTTP_ADDR` with or without
    /// a scheme (`CONSUL_HTTP_SSL=true` makes a scheme-less or http address https),
    /// `CONSUL_HTTP_TOKEN_FILE` before `CONSUL_HTTP_TOKEN`, `CONSUL_CACERT`,
    /// `CONSUL_CLIENT_CERT`, `CONSUL_CLIENT_KEY`, `CONSUL_TLS_SERVER_NAME`. A setting in the
    /// config (file or `KVGIT_BACKEND__…`) always wins; `endpoints_set` says whether
    /// `endpoints` was. Returns the variables that cannot be used, one line each.
    pub fn apply_env(
        &mut self,
        endpoints_set: bool,
        env: impl Fn(&str) -> Option<String>,
    ) -> Vec<String> {
        let get = |name: &str| env(name).filter(|v| !v.is_empty());
        let mut problems = Vec::new();
        let ssl = match get(ENV_SSL) {
            None => false,
            // Go's strconv.ParseBool.
            Some(v) => match v.as_str() {
                "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
                "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
                _ => {
                    problems.push(format!("{ENV_SSL}: {v:?} is not a boolean (true or false)"));
                    false
                }
            },
        };
        if !endpoints_set {
            let addr = get(ENV_ADDR);
            if addr.is_some() || ssl {
                let addr = addr.unwrap_or_else(|| "127.0.0.1:8500".to_owned());
                let (scheme, rest) = match addr.split_once("://") {
                    Some(("http", rest)) => (if ssl { "https" } else { "http" }, rest),
                    Some(("https", rest)) => ("https", rest),
                    Some((other, _)) => {
                        problems.push(format!(
                            "{ENV_ADDR}: scheme {other:?} is not supported (http or https)"
                        ));
                        ("http", "")
                    }
                    None => (if ssl { "https" } else { "http" }, addr.as_str()),
                };
                if !rest.is_empty() {
                    self.endpoints = vec![format!("{scheme}://{rest}")];
                    self.from_env.insert("endpoints", ENV_ADDR);
                }
            }
        }
        if self.token.is_none() && self.token_file.is_none() {
            // Consul reads the file when both are set, and uses it.
            if let Some(file) = get(ENV_TOKEN_FILE) {
                self.token_file = Some(PathBuf::from(file));
                self.from_env.insert("token_file", ENV_TOKEN_FILE);
            } else if let Some(token) = get(ENV_TOKEN) {
                self.token = Some(Secret(token));
                self.from_env.insert("token", ENV_TOKEN);
            }
        }
        for (setting, var, slot) in [
            ("ca_file", ENV_CACERT, &mut self.ca_file),
            ("cert_file", ENV_CLIENT_CERT, &mut self.cert_file),
            ("key_file", ENV_CLIENT_KEY, &mut self.key_file),
        ] {
            if slot.is_none() {
                if let Some(file) = get(var) {
                    *slot = Some(PathBuf::from(file));
                    self.from_env.insert(setting, var);
                }
            }
        }
        if self.tls_server_name.is_none() {
            if let Some(name) = get(ENV_TLS_SERVER_NAME) {
                self.tls_server_name = Some(name);
                self.from_env.insert("tls_server_name", ENV_TLS_SERVER_NAME);
            }
        }
        problems
    }

    /// Whether the first endpoint is https (TLS settings only apply then).
    pub(crate) fn uses_tls(&self) -> bool {
        self.endpoints
            .first()
            .is_some_and(|e| e.starts_with("https://"))
    }

    /// Every problem found without I/O, one line each, naming the setting as kvgit's config
    /// file spells it (`backend.<name>`); empty when the config is usable. The token itself
    /// is never part of a message.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.endpoints.is_empty() {
            problems.push("backend.endpoints: at least one endpoint is needed".to_owned());
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            if let Err(why) = check_endpoint(e) {
                let name = match self.from_env.get("endpoints") {
                    Some(var) => (*var).to_owned(),
                    None => format!("backend.endpoints[{i}]"),
                };
                problems.push(format!("{name}: {e:?} {why}"));
            }
        }
        if let Some(token) = &self.token {
            if hyper::header::HeaderValue::from_str(token.expose()).is_err() {
                problems.push(format!(
                    "{}: has characters an HTTP header cannot carry",
                    self.setting("token")
                ));
            }
            if self.token_file.is_some() {
                problems.push(format!(
                    "{}: set together with {}; set one of them",
                    self.setting("token"),
                    self.setting("token_file")
                ));
            }
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            let (set, unset) = if self.cert_file.is_some() {
                ("cert_file", "key_file")
            } else {
                ("key_file", "cert_file")
            };
            problems.push(format!(
                "{}: a client certificate needs both cert_file and key_file; {} is not set",
                self.setting(set),
                self.setting(unset)
            ));
        }
        if !self.uses_tls() {
            // Consul's variables are ignored for an http address, as the CLI does; settings
            // of the config file are a mistake there.
            for setting in ["ca_file", "cert_file", "key_file", "tls_server_name"] {
                let set = match setting {
                    "ca_file" => self.ca_file.is_some(),
                    "cert_file" => self.cert_file.is_some(),
                    "key_file" => self.key_file.is_some(),
                    _ => self.tls_server_name.is_some(),
                };
                if set && !self.from_env.contains_key(setting) {
                    problems.push(format!(
                        "backend.{setting}: only applies to https:// endpoints, and {} is {:?}",
                        self.setting("endpoints"),
                        self.endpoints
                            .first()
                            .map(String::as_str)
                            .unwrap_or_default()
                    ));
                }
            }
        }
        if let Some(name) = &self.tls_server_name {
            if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                problems.push(format!(
                    "{}: {name:?} is not a DNS name or IP address",
                    self.setting("tls_server_name")
                ));
            }
        }
        if self.max_txn_ops == 0 {
            problems.push("backend.max_txn_ops: must be at least 1".to_owned());
        }
        if self.revision_probe_key.is_empty() || !crate::keys::path_safe(&self.revision_probe_key) {
            problems.push(format!(
                "backend.revision_probe_key: {:?} must be a key usable in a URL path (no \
                 leading '/', no '//', no '.' or '..' segments)",
                self.revision_probe_key
            ));
        }
        if self.watch_wait.is_zero() || self.watch_wait > Duration::from_secs(600) {
            problems.push(format!(
                "backend.watch_wait: {:?} must be between 1s and Consul's maximum of 10m",
                self.watch_wait
            ));
        }
        problems
    }

    /// Refuses what `validate` finds; returns the endpoint to use, without a trailing slash.
    pub(crate) fn base_url(&self) -> Result<String, ConnectError> {
        let problems = self.validate();
        match self.endpoints.first() {
            Some(endpoint) if problems.is_empty() => Ok(endpoint.trim_end_matches('/').to_owned()),
            _ => Err(ConnectError::Invalid(problems.join("; "))),
        }
    }
}

/// An agent's address: `http(s)://host[:port]`, nothing after it but a `/`.
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err("must start with http:// or https://".into());
    }
    let uri: hyper::Uri = endpoint
        .trim_end_matches('/')
        .parse()
        .map_err(|e| format!("is not a usable URL: {e}"))?;
    if uri.host().is_none() {
        return Err("has no host".into());
    }
    if uri.query().is_some() || !matches!(uri.path(), "" | "/") {
        return Err("must be the agent's address only, without a path or query".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_endpoint(e: &str) -> ConsulConfig {
        ConsulConfig {
            endpoints: vec![e.to_owned()],
            ..ConsulConfig::default()
        }
    }

    #[test]
    fn endpoints_are_checked_before_any_request() {
        assert_eq!(
            with_endpoint("http://127.0.0.1:8500/").base_url().unwrap(),
            "http://127.0.0.1:8500"
        );
        assert!(with_endpoint("https://consul.example:8501")
            .validate()
            .is_empty());
        for bad in [
            "127.0.0.1:8500",
            "ftp://x:1",
            "http://x:1/v1",
            "http://x:1?dc=a",
        ] {
            let problems = with_endpoint(bad).validate();
            assert!(
                problems.len() == 1 && problems[0].starts_with("backend.endpoints[0]: "),
                "{bad}: {problems:?}"
            );
            assert!(
                matches!(with_endpoint(bad).base_url(), Err(ConnectError::Invalid(_))),
                "{bad}"
            );
        }
        let none = ConsulConfig {
            endpoints: vec![],
            ..ConsulConfig::default()
        };
        assert_eq!(
            none.validate(),
            ["backend.endpoints: at least one endpoint is needed"]
        );
        assert!(matches!(none.base_url(), Err(ConnectError::Invalid(_))));
    }

    #[test]
    fn settings_are_checked() {
        let bad_token = ConsulConfig {
            token: Some("a\nsecret".into()),
            ..ConsulConfig::default()
        };
        let problems = bad_token.validate();
        assert_eq!(
            problems,
            ["backend.token: has characters an HTTP header cannot carry"]
        );
        assert!(matches!(
            bad_token.base_url(),
            Err(ConnectError::Invalid(_))
        ));
        let bad_probe = ConsulConfig {
            revision_probe_key: "/x".into(),
            ..ConsulConfig::default()
        };
        assert!(bad_probe.base_url().is_err());
        let bad_wait = ConsulConfig {
            watch_wait: Duration::from_secs(3600),
            ..ConsulConfig::default()
        };
        assert!(bad_wait.base_url().is_err());
        // Every problem at once.
        let all = ConsulConfig {
            endpoints: vec!["consul:8500".into()],
            max_txn_ops: 0,
            ..bad_probe
        };
        assert_eq!(all.validate().len(), 3, "{:?}", all.validate());
    }

    #[test]
    fn the_token_never_prints() {
        let cfg = ConsulConfig {
            token: Some("s3cr3t-token".into()),
            ..ConsulConfig::default()
        };
        let shown = format!("{cfg:?}");
        assert!(
            !shown.contains("s3cr3t") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn unset_settings_fall_back_to_consul_variables() {
        let mut cfg = ConsulConfig::default();
        let problems = cfg.apply_env(
            false,
            env(&[
                (ENV_ADDR, "consul.example:8501"),
                (ENV_SSL, "true"),
                (ENV_TOKEN, "from-env"),
                (ENV_TOKEN_FILE, "/run/consul-token"),
                (ENV_CACERT, "/etc/consul/ca.pem"),
                (ENV_CLIENT_CERT, "/etc/consul/c.pem"),
                (ENV_CLIENT_KEY, "/etc/consul/k.pem"),
                (ENV_TLS_SERVER_NAME, "server.dc1.consul"),
            ]),
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(cfg.endpoints, ["https://consul.example:8501"]);
        // The file wins over the token, as in Consul's CLI.
        assert_eq!(
            cfg.token_file.as_deref(),
            Some(Path::new("/run/consul-token"))
        );
        assert!(cfg.token.is_none());
        assert_eq!(
            cfg.ca_file.as_deref(),
            Some(Path::new("/etc/consul/ca.pem"))
        );
        assert_eq!(cfg.tls_server_name.as_deref(), Some("server.dc1.consul"));
        assert_eq!(cfg.setting("token_file"), ENV_TOKEN_FILE);
        assert!(cfg.credential().contains(ENV_TOKEN_FILE));
        assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());

        // http:// stays http without CONSUL_HTTP_SSL, becomes https with it.
        for (addr, ssl, want) in [
            ("http://h:8500", "false", "http://h:8500"),
            ("http://h:8500", "1", "https://h:8500"),
            ("https://h:8501", "false", "https://h:8501"),
            ("h:8500", "0", "http://h:8500"),
        ] {
            let mut cfg = ConsulConfig::default();
            let vars: &'static [(&str, &str)] =
                Box::leak(vec![(ENV_ADDR, addr), (ENV_SSL, ssl)].into_boxed_slice());
            assert!(cfg.apply_env(false, env(vars)).is_empty());
            assert_eq!(cfg.endpoints, [want], "{addr} ssl={ssl}");
        }
        let mut bad = ConsulConfig::default();
        let problems = bad.apply_env(false, env(&[(ENV_ADDR, "unix:///s"), (ENV_SSL, "yes")]));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().any(|p| p.starts_with(ENV_SSL)));
        assert!(problems.iter().any(|p| p.starts_with(ENV_ADDR)));
    }

    #[test]
    fn the_config_wins_over_the_environment() {
        let mut cfg = ConsulConfig {
            endpoints: vec!["https://consul.internal:8501".into()],
            token: Some("from-config".into()),
            ca_file: Some("/etc/kvgit/ca.pem".into()),
            ..ConsulConfig::default()
        };
        cfg.apply_env(
            true,
            env(&[
                (ENV_ADDR, "other:8500"),
                (ENV_TOKEN_FILE, "/run/t"),
                (ENV_CACERT, "/other/ca.pem"),
            ]),
        );
        assert_eq!(cfg.endpoints, ["https://consul.internal:8501"]);
        assert_eq!(cfg.token.as_ref().map(Secret::expose), Some("from-config"));
        assert!(cfg.token_file.is_none());
        assert_eq!(cfg.ca_file.as_deref(), Some(Path::new("/etc/kvgit/ca.pem")));
        assert_eq!(cfg.setting("ca_file"), "backend.ca_file");
    }

    #[test]
    fn tls_settings_are_checked() {
        let http_with_ca = ConsulConfig {
            ca_file: Some("ca.pem".into()),
            ..ConsulConfig::default()
        };
        let problems = http_with_ca.validate();
        assert!(
            problems.len() == 1 && problems[0].starts_with("backend.ca_file: only applies"),
            "{problems:?}"
        );
        let half_pair = ConsulConfig {
            endpoints: vec!["https://h:8501".into()],
            cert_file: Some("c.pem".into()),
            ..ConsulConfig::default()
        };
        let problems = half_pair.validate();
        assert!(
            problems.len() == 1 && problems[0].starts_with("backend.cert_file:"),
            "{problems:?}"
        );
        let both_tokens = ConsulConfig {
            token: Some("s3cr3t".into()),
            token_file: Some("t".into()),
            ..ConsulConfig::default()
        };
        let problems = both_tokens.validate();
        assert!(
            problems.len() == 1 && !problems[0].contains("s3cr3t"),
            "{problems:?}"
        );
    }
}

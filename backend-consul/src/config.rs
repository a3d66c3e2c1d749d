//! How to reach Consul (`ConsulConfig`: kvgit's `[backend]` table when `kind = "consul"`,
//! with its defaults and checks) and what can go wrong before the first request
//! (`ConnectError`); endpoint and token are checked so a bad config fails without a request.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use std::fmt;
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
    /// ACL token sent as `X-Consul-Token`; `None` is the anonymous token.
    pub token: Option<Secret>,
    /// Datacenter whose KV store is used (`?dc=`); `None` is the agent's own.
    pub datacenter: Option<String>,
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
}

impl Default for ConsulConfig {
    fn default() -> Self {
        ConsulConfig {
            endpoints: vec!["http://127.0.0.1:8500".to_owned()],
            token: None,
            datacenter: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            watch_wait: Duration::from_secs(60),
            max_txn_ops: 64,
            revision_probe_key: "kvgit/revision-probe".to_owned(),
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

impl ConsulConfig {
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
                problems.push(format!("backend.endpoints[{i}]: {e:?} {why}"));
            }
        }
        if let Some(token) = &self.token {
            if hyper::header::HeaderValue::from_str(token.expose()).is_err() {
                problems
                    .push("backend.token: has characters an HTTP header cannot carry".to_owned());
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
}

//! How to reach Consul (`ConsulConfig`) and what can go wrong before the first request
//! (`ConnectError`); checks the endpoint and token so a bad config fails without a request.

use std::time::Duration;

/// Everything needed to talk to one Consul datacenter's KV store.
#[derive(Debug, Clone)]
pub struct ConsulConfig {
    /// HTTP(S) addresses of Consul agents (`http://127.0.0.1:8500`); the first is used (an
    /// agent forwards to the servers itself, so one address is the usual Consul setup).
    pub endpoints: Vec<String>,
    /// ACL token sent as `X-Consul-Token`; `None` is the anonymous token.
    pub token: Option<String>,
    /// Datacenter whose KV store is used (`?dc=`); `None` is the agent's own.
    pub datacenter: Option<String>,
    /// Bound on opening a TCP (and TLS) connection, so an address where nothing listens
    /// fails fast.
    pub connect_timeout: Duration,
    /// Bound on every request; a blocking query may take `watch_wait` (plus Consul's jitter
    /// of up to 1/16 of it) on top.
    pub request_timeout: Duration,
    /// How long one blocking query of a watch waits for a change (Consul's `wait`, at most
    /// 10 minutes). A quiet prefix reports progress once per `watch_wait`.
    pub watch_wait: Duration,
    /// Operations per `/v1/txn`: 64 up to Consul 1.13, 128 from 1.14 on.
    pub max_txn_ops: usize,
    /// A key that must not exist, read (404) for the KV store's current index; the token
    /// needs `key:read` on it. Consul answers a read of an absent key with the index of the
    /// KV store's last change, which is exactly "the current revision".
    pub revision_probe_key: String,
}

impl Default for ConsulConfig {
    fn default() -> Self {
        ConsulConfig {
            endpoints: vec!["http://127.0.0.1:8500".to_owned()],
            token: None,
            datacenter: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            watch_wait: Duration::from_secs(60),
            max_txn_ops: 64,
            revision_probe_key: "kvgit/revision-probe".to_owned(),
        }
    }
}

/// Why `ConsulBackend::connect` failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no Consul endpoints configured")]
    NoEndpoints,
    #[error("Consul endpoint {endpoint} is not a usable http(s) URL: {detail}")]
    InvalidEndpoint { endpoint: String, detail: String },
    #[error("invalid Consul setting: {0}")]
    InvalidSetting(String),
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
    /// Checks what can be checked without the network; returns the endpoint to use,
    /// without a trailing slash.
    pub(crate) fn validate(&self) -> Result<String, ConnectError> {
        let endpoint = self.endpoints.first().ok_or(ConnectError::NoEndpoints)?;
        let base = endpoint.trim_end_matches('/').to_owned();
        let invalid = |detail: String| ConnectError::InvalidEndpoint {
            endpoint: endpoint.clone(),
            detail,
        };
        let uri: hyper::Uri = base.parse().map_err(|e| invalid(format!("{e}")))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => return Err(invalid("the scheme must be http:// or https://".into())),
        }
        if uri.host().is_none() {
            return Err(invalid("no host".into()));
        }
        if uri.query().is_some() || !matches!(uri.path(), "" | "/") {
            return Err(invalid(
                "give the agent's address only, without a path or query".into(),
            ));
        }
        if let Some(token) = &self.token {
            if hyper::header::HeaderValue::from_str(token).is_err() {
                return Err(ConnectError::InvalidSetting(
                    "the ACL token has characters an HTTP header cannot carry".into(),
                ));
            }
        }
        if self.max_txn_ops == 0 {
            return Err(ConnectError::InvalidSetting(
                "max_txn_ops must be at least 1".into(),
            ));
        }
        if self.revision_probe_key.is_empty() || !crate::keys::path_safe(&self.revision_probe_key) {
            return Err(ConnectError::InvalidSetting(format!(
                "revision_probe_key {:?} must be a key usable in a URL path (no leading '/', \
                 no '//', no '.' or '..' segments)",
                self.revision_probe_key
            )));
        }
        if self.watch_wait.is_zero() || self.watch_wait > Duration::from_secs(600) {
            return Err(ConnectError::InvalidSetting(format!(
                "watch_wait {:?} must be between 1s and Consul's maximum of 10m",
                self.watch_wait
            )));
        }
        Ok(base)
    }
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
            with_endpoint("http://127.0.0.1:8500/").validate().unwrap(),
            "http://127.0.0.1:8500"
        );
        assert!(with_endpoint("https://consul.example:8501")
            .validate()
            .is_ok());
        for bad in [
            "127.0.0.1:8500",
            "ftp://x:1",
            "http://x:1/v1",
            "http://x:1?dc=a",
        ] {
            assert!(
                matches!(
                    with_endpoint(bad).validate(),
                    Err(ConnectError::InvalidEndpoint { .. })
                ),
                "{bad}"
            );
        }
        let none = ConsulConfig {
            endpoints: vec![],
            ..ConsulConfig::default()
        };
        assert!(matches!(none.validate(), Err(ConnectError::NoEndpoints)));
    }

    #[test]
    fn settings_are_checked() {
        let bad_token = ConsulConfig {
            token: Some("a\nb".into()),
            ..ConsulConfig::default()
        };
        assert!(matches!(
            bad_token.validate(),
            Err(ConnectError::InvalidSetting(_))
        ));
        let bad_probe = ConsulConfig {
            revision_probe_key: "/x".into(),
            ..ConsulConfig::default()
        };
        assert!(bad_probe.validate().is_err());
        let bad_wait = ConsulConfig {
            watch_wait: Duration::from_secs(3600),
            ..ConsulConfig::default()
        };
        assert!(bad_wait.validate().is_err());
    }
}

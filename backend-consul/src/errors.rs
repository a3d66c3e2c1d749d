//! Maps Consul's HTTP answers and transport failures to `BackendError`, so callers can tell
//! "retry later" (no leader, 5xx, timeout, refused connection) from "fix something" (ACL, bad request).

use hyper::StatusCode;
use sync_core::{BackendError, Revision};

pub(crate) const KIND: &str = "consul";

/// Longest piece of a response body quoted in an error.
const BODY_QUOTE: usize = 512;

/// Where failed requests went and with what credentials, for messages (never a secret).
#[derive(Debug, Clone, Default)]
pub(crate) struct Ctx {
    pub endpoint: String,
    /// The token requests carry, named by its setting (`ConsulConfig::credential`).
    pub credential: String,
    /// `ca_file` and `cert_file` as messages name them, when set.
    pub ca_setting: Option<String>,
    pub cert_setting: Option<String>,
    /// `tls_server_name` as messages name it, when set.
    pub server_name_setting: Option<String>,
}

impl Ctx {
    /// A request that got no answer. A TLS handshake that failed on a certificate is not
    /// an outage but a setting to fix, so it is `Refused` naming the setting.
    pub fn transport(&self, what: &str, detail: &str) -> BackendError {
        let lower = detail.to_ascii_lowercase();
        if lower.contains("notvalidforname") || lower.contains("not valid for name") {
            let name = self.server_name_setting.as_deref().unwrap_or(
                "the endpoint's host (set backend.tls_server_name to a name the certificate \
                 carries)",
            );
            return refused(format!(
                "{what}: the certificate of Consul at {} is not valid for {name}: {detail}",
                self.endpoint
            ));
        }
        if lower.contains("invalid peer certificate") {
            let ca = self
                .ca_setting
                .as_deref()
                .unwrap_or("the public web PKI roots (backend.ca_file not set)");
            return refused(format!(
                "{what}: the certificate of Consul at {} is not trusted by {ca}: {detail}",
                self.endpoint
            ));
        }
        if lower.contains("received fatal alert") {
            let cert = self.cert_setting.as_deref().unwrap_or(
                "no client certificate (backend.cert_file and backend.key_file not set)",
            );
            return refused(format!(
                "{what}: Consul at {} ended the TLS handshake (it may require a client \
                 certificate signed by its CA; sent: {cert}): {detail}",
                self.endpoint
            ));
        }
        self.unavailable(format!("{what}: {detail}"))
    }

    pub fn unavailable(&self, detail: impl Into<String>) -> BackendError {
        BackendError::Unavailable {
            backend: KIND,
            endpoint: self.endpoint.clone(),
            detail: detail.into(),
        }
    }

    /// An unexpected status: `what` names the request, the body says why. 404 is not
    /// handled here: for KV reads it means "no keys", which the callers decide.
    pub fn status(&self, what: &str, status: StatusCode, body: &[u8]) -> BackendError {
        let detail = format!("{what}: HTTP {}: {}", status.as_u16(), quote(body));
        match status.as_u16() {
            // Consul answers 403 for a missing permission ("Permission denied") and for an
            // unknown token ("ACL not found").
            401 | 403 => BackendError::PermissionDenied {
                backend: KIND,
                detail: format!("{detail} (credential: {})", self.credential),
            },
            // 500 "No cluster leader", 503 and 429 from the rate limiter, 502/504 from
            // proxies: all pass.
            429 | 500..=599 => self.unavailable(detail),
            // A redirect means Go cleaned the path to another key; never followed.
            300..=399 => refused(format!(
                "{detail} (Consul redirected the request: the key is not usable in a URL path)"
            )),
            _ => refused(detail),
        }
    }
}

pub(crate) fn refused(detail: String) -> BackendError {
    BackendError::Refused {
        backend: KIND,
        detail,
    }
}

pub(crate) fn other(detail: String) -> BackendError {
    BackendError::Other {
        backend: KIND,
        detail,
    }
}

pub(crate) fn compacted(requested: Revision, oldest: Revision) -> BackendError {
    BackendError::Compacted {
        backend: KIND,
        requested,
        compact_revision: oldest,
    }
}

/// The body as text for messages: lossy UTF-8, trimmed, cut at `BODY_QUOTE` bytes.
pub(crate) fn quote(body: &[u8]) -> String {
    let cut = &body[..body.len().min(BODY_QUOTE)];
    let mut text = String::from_utf8_lossy(cut).trim().to_owned();
    if body.len() > BODY_QUOTE {
        text.push_str(" [...]");
    }
    if text.is_empty() {
        text.push_str("(empty body)");
    }
    text
}

/// An error and its sources on one line: hyper's errors say little at the top level
/// ("client error (Connect)"), the cause is further down.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Ctx {
        Ctx {
            endpoint: "http://127.0.0.1:8500".into(),
            credential: "the token in backend.token_file (/etc/kvgit/token)".into(),
            ..Ctx::default()
        }
    }

    #[test]
    fn statuses_map_to_the_right_kind() {
        let c = ctx();
        let no_leader = c.status(
            "list",
            StatusCode::INTERNAL_SERVER_ERROR,
            b"No cluster leader",
        );
        assert!(no_leader.is_retryable(), "{no_leader}");
        assert!(no_leader.to_string().contains("No cluster leader"));
        assert!(no_leader.to_string().contains("127.0.0.1:8500"));
        assert!(c
            .status("list", StatusCode::TOO_MANY_REQUESTS, b"rate limit")
            .is_retryable());
        assert!(c
            .status("list", StatusCode::SERVICE_UNAVAILABLE, b"")
            .is_retryable());
        let denied = c.status("list", StatusCode::FORBIDDEN, b"ACL not found");
        assert!(matches!(denied, BackendError::PermissionDenied { .. }));
        assert!(denied.to_string().contains("ACL not found"));
        assert!(
            denied.to_string().contains("backend.token_file"),
            "{denied}"
        );
        assert!(matches!(
            c.status("txn", StatusCode::BAD_REQUEST, b"Failed to parse body"),
            BackendError::Refused { .. }
        ));
        assert!(matches!(
            c.status("txn", StatusCode::PAYLOAD_TOO_LARGE, b"too large"),
            BackendError::Refused { .. }
        ));
        let moved = c.status("get", StatusCode::MOVED_PERMANENTLY, b"");
        assert!(matches!(moved, BackendError::Refused { .. }));
        assert!(!moved.is_retryable());
    }

    #[test]
    fn bodies_are_quoted_short() {
        assert_eq!(quote(b" x \n"), "x");
        assert_eq!(quote(b""), "(empty body)");
        let long = vec![b'a'; 2000];
        assert!(quote(&long).len() < 600);
        assert_eq!(quote(b"\xff"), "\u{fffd}");
    }
}

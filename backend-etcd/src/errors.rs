//! Maps etcd-client and gRPC failures to `BackendError`, so callers can tell "retry later"
//! (no leader, timeout, refused connection) from "fix something" (auth, bad request).

use etcd_client::Error as EtcdError;
use std::future::Future;
use std::time::Duration;
use sync_core::{BackendError, Revision};
use tonic::Code;

pub(crate) const KIND: &str = "etcd";

/// Where a failed request went, for `Unavailable` messages.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub endpoints: String,
    pub request_timeout: Duration,
}

impl Ctx {
    pub fn unavailable(&self, detail: impl Into<String>) -> BackendError {
        BackendError::Unavailable {
            backend: KIND,
            endpoint: self.endpoints.clone(),
            detail: detail.into(),
        }
    }

    /// Runs one request bounded by the request timeout: etcd-client's own timeout does not
    /// cover waiting for a connection, so without this a dead endpoint hangs forever.
    pub async fn call<T, F>(&self, what: &str, fut: F) -> Result<T, BackendError>
    where
        F: Future<Output = Result<T, EtcdError>>,
    {
        match tokio::time::timeout(self.request_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.map(what, e)),
            Err(_) => Err(self.unavailable(format!(
                "{what}: no answer within {:?}",
                self.request_timeout
            ))),
        }
    }

    /// Maps a client error; `what` names the request for the message.
    pub fn map(&self, what: &str, err: EtcdError) -> BackendError {
        match err {
            EtcdError::GRpcStatus(status) => self.map_status(what, &status),
            EtcdError::TransportError(e) => {
                let text = e.to_string();
                self.unavailable(format!("{what}: transport: {text}{}", causes(&text, &e)))
            }
            EtcdError::IoError(e) => self.unavailable(format!("{what}: i/o: {e}")),
            // The watch request channel closed: the stream is gone.
            EtcdError::WatchError(e) => self.unavailable(format!("{what}: watch: {e}")),
            EtcdError::InvalidArgs(e) => refused(format!("{what}: {e}")),
            EtcdError::InvalidUri(e) => refused(format!("{what}: invalid endpoint: {e}")),
            other => BackendError::Other {
                backend: KIND,
                detail: format!("{what}: {other}"),
            },
        }
    }

    fn map_status(&self, what: &str, status: &tonic::Status) -> BackendError {
        let msg = status.message();
        let detail = format!("{what}: {msg}{} ({:?})", causes(msg, status), status.code());
        if msg.contains("message length too large") {
            // The client's own size limit, not etcd's refusal.
            return BackendError::Other {
                backend: KIND,
                detail: format!("{what}: response over the client's size limit: {msg}"),
            };
        }
        match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => {
                self.unavailable(detail)
            }
            Code::PermissionDenied | Code::Unauthenticated => BackendError::PermissionDenied {
                backend: KIND,
                detail,
            },
            // etcd's rate limiter ("too many requests") passes; a full database does not.
            Code::ResourceExhausted if msg.contains("too many requests") => {
                self.unavailable(detail)
            }
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::ResourceExhausted
            | Code::NotFound
            | Code::AlreadyExists
            | Code::Unimplemented => refused(detail),
            // tonic reports broken connections as Unknown/Internal with a transport message.
            Code::Unknown | Code::Internal if looks_like_transport(msg) => self.unavailable(detail),
            _ => BackendError::Other {
                backend: KIND,
                detail,
            },
        }
    }
}

/// The chain of sources under `err`, each as ": cause": tonic's "transport error" alone
/// does not tell a refused connection from a rejected certificate.
/// Causes already in `shown` (the message printed before them) are left out.
fn causes(shown: &str, err: &dyn std::error::Error) -> String {
    let mut out = String::new();
    let mut next = err.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !shown.contains(&text) && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

fn refused(detail: String) -> BackendError {
    BackendError::Refused {
        backend: KIND,
        detail,
    }
}

fn looks_like_transport(msg: &str) -> bool {
    let msg = msg.to_ascii_lowercase();
    [
        "transport",
        "connection",
        "broken pipe",
        "h2 protocol",
        "stream closed",
        "reset",
    ]
    .iter()
    .any(|m| msg.contains(m))
}

/// etcd's "required revision has been compacted" (a range at a compacted revision).
pub(crate) fn is_compacted(err: &EtcdError) -> bool {
    matches!(err, EtcdError::GRpcStatus(s)
        if s.code() == Code::OutOfRange && s.message().contains("compacted"))
}

/// tonic's "decoded message length too large": the page was bigger than the decode limit.
pub(crate) fn is_too_large_to_decode(err: &EtcdError) -> bool {
    matches!(err, EtcdError::GRpcStatus(s)
        if s.message().contains("decoded message length too large"))
}

pub(crate) fn compacted(requested: Revision, compact_revision: Revision) -> BackendError {
    BackendError::Compacted {
        backend: KIND,
        requested,
        compact_revision,
    }
}

pub(crate) fn missing_header(what: &str) -> BackendError {
    BackendError::Other {
        backend: KIND,
        detail: format!("{what}: response without header"),
    }
}

/// etcd revisions are i64 on the wire and never negative.
pub(crate) fn rev(r: i64) -> Revision {
    Revision(u64::try_from(r).unwrap_or(0))
}

pub(crate) fn wire_rev(r: Revision) -> Result<i64, BackendError> {
    i64::try_from(r.0).map_err(|_| BackendError::Refused {
        backend: KIND,
        detail: format!("revision {r} is out of etcd's range"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Ctx {
        Ctx {
            endpoints: "http://x:1".into(),
            request_timeout: Duration::from_secs(1),
        }
    }

    fn status(code: Code, msg: &str) -> EtcdError {
        EtcdError::GRpcStatus(tonic::Status::new(code, msg))
    }

    #[test]
    fn status_codes_map_to_the_right_kind() {
        let c = ctx();
        let unavailable = c.map("get", status(Code::Unavailable, "etcdserver: no leader"));
        assert!(unavailable.is_retryable(), "{unavailable}");
        assert!(matches!(
            c.map(
                "get",
                status(Code::PermissionDenied, "etcdserver: permission denied")
            ),
            BackendError::PermissionDenied { .. }
        ));
        assert!(matches!(
            c.map(
                "get",
                status(Code::Unauthenticated, "etcdserver: invalid auth token")
            ),
            BackendError::PermissionDenied { .. }
        ));
        assert!(matches!(
            c.map(
                "txn",
                status(
                    Code::InvalidArgument,
                    "etcdserver: too many operations in txn request"
                )
            ),
            BackendError::Refused { .. }
        ));
        assert!(matches!(
            c.map(
                "put",
                status(
                    Code::ResourceExhausted,
                    "etcdserver: mvcc: database space exceeded"
                )
            ),
            BackendError::Refused { .. }
        ));
        assert!(c
            .map(
                "put",
                status(Code::ResourceExhausted, "etcdserver: too many requests")
            )
            .is_retryable());
        assert!(c
            .map("get", status(Code::DeadlineExceeded, "timeout"))
            .is_retryable());
        assert!(c
            .map("get", status(Code::Unknown, "transport error"))
            .is_retryable());
    }

    #[test]
    fn compaction_is_recognised() {
        assert!(is_compacted(&status(
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted"
        )));
        assert!(!is_compacted(&status(
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision"
        )));
    }
}

//! The HTTP face of `serve` (SPEC "HTTP (serve)"): metrics, liveness, readiness, status,
//! and `POST /sync` to ask for a fetch now; it only reads shared state and pokes a Notify.

use super::metrics::Metrics;
use super::state::ServiceState;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What the handlers need; built once by the service.
pub struct HttpContext {
    /// Read by `/status` and `/readyz`.
    pub state: Arc<ServiceState>,
    /// Encoded by `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Poked by `POST /sync`. A Notify holds at most one permit, so a burst of webhooks
    /// becomes one fetch, not one per request.
    pub trigger: Arc<Notify>,
    /// When set, `POST /sync` needs `Authorization: Bearer <token>`: the endpoint makes
    /// the service do work, and webhooks come from outside.
    pub sync_token: Option<String>,
}

/// The routes, over a shared context (an `Arc` so a request clones a pointer, not the token).
pub fn router(ctx: HttpContext) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/sync", post(sync))
        .with_state(Arc::new(ctx))
}

/// Serves until `shutdown` is cancelled, then lets requests in flight finish. The caller
/// binds the listener, so tests can use port 0 and the service can report a bind error
/// with the configured address.
pub async fn serve(
    listener: TcpListener,
    app: HttpContext,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

type Ctx = State<Arc<HttpContext>>;

async fn metrics(State(ctx): Ctx) -> Response {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        ctx.metrics.encode(),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(ctx): Ctx) -> Response {
    if ctx.state.ready() {
        return (StatusCode::OK, Json(json!({ "ready": true }))).into_response();
    }
    // Say why, so whoever looks at a failing probe knows where to look next.
    let body = json!({
        "ready": false,
        "backend_ok": ctx.state.backend_ok(),
        "not_ready": ctx.state.not_ready_areas(),
    });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

async fn status(State(ctx): Ctx) -> Json<serde_json::Value> {
    Json(ctx.state.to_json())
}

async fn sync(State(ctx): Ctx, headers: HeaderMap) -> Response {
    if let Some(token) = &ctx.sync_token {
        if !authorized(&headers, token) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(json!({ "error": "a valid bearer token is required" })),
            )
                .into_response();
        }
    }
    ctx.trigger.notify_one();
    (
        StatusCode::ACCEPTED,
        Json(json!({ "status": "sync requested" })),
    )
        .into_response()
}

/// Whether the request carries `Authorization: Bearer <token>` (scheme case-insensitive,
/// RFC 7235).
fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, given)) = value.split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && constant_time_eq(given.trim().as_bytes(), token.as_bytes())
}

/// Compares without stopping at the first difference, so response times do not reveal
/// how much of a guess was right. The length may leak; it says little about the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold back into an early exit.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::metrics::ALL_NAMES;
    use crate::service::state::AreaStatus;
    use std::net::SocketAddr;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;
    use tokio::task::JoinHandle;

    /// A running server and the handles a test pokes at.
    struct Harness {
        addr: SocketAddr,
        state: Arc<ServiceState>,
        trigger: Arc<Notify>,
        shutdown: CancellationToken,
        task: JoinHandle<std::io::Result<()>>,
    }

    async fn start(sync_token: Option<&str>) -> Harness {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound address");
        let state = Arc::new(ServiceState::with_areas(
            "core-1",
            "main",
            [(
                "a".to_string(),
                AreaStatus {
                    mode: "both".to_string(),
                    prefix: "/a/".to_string(),
                    path: "a".to_string(),
                    ..AreaStatus::default()
                },
            )],
        ));
        let trigger = Arc::new(Notify::new());
        let metrics = Arc::new(Metrics::new());
        metrics.for_areas(&["a"]);
        let shutdown = CancellationToken::new();
        let ctx = HttpContext {
            state: state.clone(),
            metrics,
            trigger: trigger.clone(),
            sync_token: sync_token.map(str::to_string),
        };
        let task = tokio::spawn(serve(listener, ctx, shutdown.clone()));
        Harness {
            addr,
            state,
            trigger,
            shutdown,
            task,
        }
    }

    /// A response: status code, header block (lower-cased), body.
    struct Reply {
        code: u16,
        headers: String,
        body: String,
    }

    /// One HTTP/1.1 request on a fresh connection; `Connection: close` lets us read the
    /// response to the end without parsing the framing.
    async fn request(addr: SocketAddr, method: &str, path: &str, extra: &[(&str, &str)]) -> Reply {
        let exchange = async {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let mut req = format!(
                "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: 0\r\n"
            );
            for (name, value) in extra {
                req.push_str(&format!("{name}: {value}\r\n"));
            }
            req.push_str("\r\n");
            stream.write_all(req.as_bytes()).await.expect("send");
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await.expect("receive");
            String::from_utf8(raw).expect("a UTF-8 response")
        };
        let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .expect("the server answers in time");
        let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
        let code = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status line");
        Reply {
            code,
            headers: head.to_ascii_lowercase(),
            body: body.to_string(),
        }
    }

    async fn stop(h: Harness) {
        h.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(10), h.task)
            .await
            .expect("serve stops on cancel")
            .expect("the serve task does not panic");
        assert!(result.is_ok(), "serve ended with {result:?}");
    }

    #[tokio::test]
    async fn metrics_lists_every_name() {
        let h = start(None).await;
        let r = request(h.addr, "GET", "/metrics", &[]).await;
        assert_eq!(r.code, 200);
        assert!(
            r.headers
                .contains("content-type: text/plain; version=0.0.4"),
            "{}",
            r.headers
        );
        for name in ALL_NAMES {
            assert!(
                r.body.contains(&format!("# TYPE {name} ")),
                "{name} missing"
            );
        }
        stop(h).await;
    }

    #[tokio::test]
    async fn healthz_and_readyz() {
        let h = start(None).await;
        let r = request(h.addr, "GET", "/healthz", &[]).await;
        assert_eq!((r.code, r.body.as_str()), (200, "ok"));

        let r = request(h.addr, "GET", "/readyz", &[]).await;
        assert_eq!(r.code, 503);
        let body: serde_json::Value = serde_json::from_str(&r.body).expect("JSON body");
        assert_eq!(body["backend_ok"], false);
        assert_eq!(body["not_ready"], json!(["a"]));

        h.state.set_backend_ok(true);
        h.state.update("a", |a| a.ready = true);
        let r = request(h.addr, "GET", "/readyz", &[]).await;
        assert_eq!(r.code, 200);
        stop(h).await;
    }

    #[tokio::test]
    async fn status_has_the_area() {
        let h = start(None).await;
        h.state.update("a", |a| a.checkpoint = Some(7));
        let r = request(h.addr, "GET", "/status", &[]).await;
        assert_eq!(r.code, 200);
        let body: serde_json::Value = serde_json::from_str(&r.body).expect("JSON body");
        assert_eq!(body["node"], "core-1");
        assert_eq!(body["areas"][0]["area"], "a");
        assert_eq!(body["areas"][0]["checkpoint"], 7);
        stop(h).await;
    }

    #[tokio::test]
    async fn sync_needs_the_token_and_coalesces() {
        let h = start(Some("s3cret")).await;
        let r = request(h.addr, "POST", "/sync", &[]).await;
        assert_eq!(r.code, 401);
        assert!(r.headers.contains("www-authenticate: bearer"));
        let r = request(
            h.addr,
            "POST",
            "/sync",
            &[("Authorization", "Bearer wrong")],
        )
        .await;
        assert_eq!(r.code, 401);
        let r = request(
            h.addr,
            "POST",
            "/sync",
            &[("Authorization", "Basic s3cret")],
        )
        .await;
        assert_eq!(r.code, 401);
        // No permit was stored by the refused requests.
        let quiet = tokio::time::timeout(Duration::from_millis(50), h.trigger.notified()).await;
        assert!(quiet.is_err(), "a refused request must not trigger a sync");

        for _ in 0..2 {
            let r = request(
                h.addr,
                "POST",
                "/sync",
                &[("Authorization", "bearer s3cret")],
            )
            .await;
            assert_eq!(r.code, 202);
            let body: serde_json::Value = serde_json::from_str(&r.body).expect("JSON body");
            assert_eq!(body["status"], "sync requested");
        }
        tokio::time::timeout(Duration::from_secs(1), h.trigger.notified())
            .await
            .expect("the trigger fires");
        // Two requests, one permit: concurrent triggers coalesce into one fetch.
        let again = tokio::time::timeout(Duration::from_millis(50), h.trigger.notified()).await;
        assert!(again.is_err(), "two requests must make one sync");

        let r = request(h.addr, "GET", "/sync", &[]).await;
        assert_eq!(r.code, 405);
        stop(h).await;
    }

    #[tokio::test]
    async fn sync_is_open_without_a_token() {
        let h = start(None).await;
        let r = request(h.addr, "POST", "/sync", &[]).await;
        assert_eq!(r.code, 202);
        tokio::time::timeout(Duration::from_secs(1), h.trigger.notified())
            .await
            .expect("the trigger fires");
        stop(h).await;
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}

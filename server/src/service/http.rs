//! The HTTP face of `serve` (SPEC "HTTP (serve)"): metrics, liveness, readiness, status,
//! and `POST /sync` to ask for a fetch now; it only reads shared state and sets a request flag.
//!
//! The endpoints face the network, and a descriptor spent on an idle socket is one that the
//! Git subprocesses and etcd connections cannot have. So every connection is bounded: at most
//! [`MAX_CONNECTIONS`] at once (beyond that, new ones wait in the kernel's listen queue, which
//! costs us no descriptor), a deadline for the request header, one for silence, one for its
//! whole life. A failed `accept` (EMFILE, ENFILE, ...) is logged at a bounded rate and retried
//! after a pause; it never ends the server. Connections are served by hyper's HTTP/1 server,
//! the routes by axum.

use super::metrics::{Metrics, WebhookResult};
use super::state::ServiceState;
use super::trigger::SyncTrigger;
use super::webhook::{self, Credentials, Verdict};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Connections served at once. Our clients are a few probes, a Prometheus scraper and
/// webhooks; 256 is far more than they need, and a quarter of the common 1,024-descriptor
/// limit, which leaves the rest to Git subprocesses, pack files and etcd.
const MAX_CONNECTIONS: usize = 256;
/// How long a client may take to send a request's header block. A header is a few hundred
/// bytes, sent in one packet; ten seconds leaves room for a slow link and cuts off a client
/// that trickles bytes to hold a connection open.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may stay silent (no byte either way) before it is closed. Probes and
/// webhooks send one request per connection and a scraper comes back every 15 s or more, so a
/// kept-alive connection would mostly sit idle holding a descriptor; reconnecting is cheap.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest life of a connection, however busy. No exchange with these endpoints takes
/// anywhere near a minute; this catches what the other deadlines do not (a body or a response
/// moved one byte at a time).
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);
/// Once a connection is asked to close (idle, too old, shutdown), how long the response in
/// flight may take before the connection is dropped. Also bounds graceful shutdown.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Length of the kernel's queue of connections not yet accepted (tokio listens with 128). A
/// deeper queue lets a burst beyond [`MAX_CONNECTIONS`] wait there rather than have its SYNs
/// dropped and retried seconds later; the kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: i32 = 1024;
/// Pause after a failed `accept`: running out of descriptors lasts until some are closed, and
/// retrying at once would only spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// At most one log line per this period for a repeated condition (accept errors, the
/// connection limit reached), with the count of the lines held back.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What the handlers need; built once by the service.
pub struct HttpContext {
    /// Read by `/status` and `/readyz`.
    pub state: Arc<ServiceState>,
    /// Encoded by `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Asked by `POST /sync`. Requests coalesce, so a burst of webhooks becomes one fetch,
    /// not one per request.
    pub trigger: Arc<SyncTrigger>,
    /// When either is set, `POST /sync` needs the bearer token or a valid webhook
    /// signature/token (`service::webhook`): the endpoint makes the service do work, and
    /// webhooks come from outside.
    pub credentials: Credentials,
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

/// Serves until `shutdown` is cancelled, then stops accepting and closes every connection:
/// idle ones at once, ones with a request in flight after its response (within
/// [`CLOSE_GRACE`]). The caller binds the listener, so tests can use port 0 and the service
/// can report a bind error with the configured address. Once listening it does not fail: an
/// accept error is logged and retried.
#[cfg(test)]
pub async fn serve(
    listener: TcpListener,
    app: HttpContext,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, router(app), shutdown, Limits::default()).await;
    Ok(())
}

/// Like `serve`, with more routes beside the built-in ones (the web page, `service::ui`):
/// what the service runs.
pub async fn serve_with_routes(
    listener: TcpListener,
    app: HttpContext,
    extra: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(
        listener,
        router(app).merge(extra),
        shutdown,
        Limits::default(),
    )
    .await;
    Ok(())
}

/// The read-only API over the engine: `GET /api/v1/plan?area=A`, the plan of one area as
/// the document `kvgit plan --format json --area A` prints (merged beside [`router`]).
/// Off with the rest of `/api/v1` when `server.ui` is false.
pub fn api_router(engine: Arc<crate::engine::Context>) -> Router {
    if !engine.cfg.server.ui {
        return Router::new();
    }
    Router::new()
        .route("/api/v1/plan", get(plan))
        .with_state(engine)
}

/// Plans read a whole area from the backend and Git: a few at a time, whatever the load.
static PLANS_AT_ONCE: Semaphore = Semaphore::const_new(2);

#[derive(serde::Deserialize)]
struct PlanQuery {
    area: Option<String>,
}

async fn plan(
    State(engine): State<Arc<crate::engine::Context>>,
    axum::extract::Query(q): axum::extract::Query<PlanQuery>,
) -> Response {
    use crate::engine::apply::{plan_all_with, PlanOptions};
    let error =
        |code: StatusCode, msg: String| (code, Json(json!({ "error": msg }))).into_response();
    let Some(area) = q.area else {
        return error(
            StatusCode::BAD_REQUEST,
            "name the area: /api/v1/plan?area=NAME".into(),
        );
    };
    if !engine.cfg.areas.iter().any(|a| a.name.0 == area) {
        let known: Vec<&str> = engine.cfg.areas.iter().map(|a| a.name.0.as_str()).collect();
        return error(
            StatusCode::NOT_FOUND,
            format!("no area named {area:?} (areas: {})", known.join(", ")),
        );
    }
    let Ok(_permit) = PLANS_AT_ONCE.acquire().await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into());
    };
    match plan_all_with(&engine, Some(&area), None, PlanOptions::default()).await {
        Ok((commit, plans)) => {
            Json(crate::engine::report::PlanReport::new(commit, &plans)).into_response()
        }
        Err(e) => {
            let code = if e.is_retryable() {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            error(code, crate::errors::chain(&e))
        }
    }
}

/// The bounds on connections; [`Limits::default`] is what `serve` uses, tests shrink them.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Connections served at once.
    max_connections: usize,
    /// Deadline for a request's header block (hyper's `header_read_timeout`).
    header_read: Duration,
    /// Silence after which a connection is closed.
    idle: Duration,
    /// Life after which a connection is closed.
    max_age: Duration,
    /// Time a connection asked to close has to finish its response.
    close_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: MAX_CONNECTIONS,
            header_read: HEADER_READ_TIMEOUT,
            idle: IDLE_TIMEOUT,
            max_age: MAX_CONNECTION_AGE,
            close_grace: CLOSE_GRACE,
        }
    }
}

/// The accept loop: a slot first, then a connection, then a task for it.
async fn serve_with(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    limits: Limits,
) {
    if let Err(e) = socket2::SockRef::from(&listener).listen(LISTEN_BACKLOG) {
        tracing::warn!(error = %e, "cannot deepen the HTTP listen queue; keeping the default");
    }
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut full_log = Throttle::new(LOG_EVERY);
    let mut error_log = Throttle::new(LOG_EVERY);
    loop {
        // The slot is taken before accepting: at the limit, new connections wait in the
        // kernel's queue, where they cost no descriptor, until a connection closes.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if let Some(held) = full_log.check() {
                    tracing::info!(
                        limit = limits.max_connections,
                        held,
                        "HTTP connection limit reached; new connections wait until one closes"
                    );
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                }
            }
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                connections.spawn(serve_connection(
                    stream,
                    app.clone(),
                    limits,
                    shutdown.clone(),
                    slot,
                ));
            }
            // The peer gave up before we accepted: nothing is short, take the next one.
            Err(e) if is_peer_error(&e) => tracing::debug!(error = %e, "HTTP accept: peer gone"),
            Err(e) => {
                if let Some(held) = error_log.check() {
                    tracing::warn!(
                        error = %e,
                        held,
                        "cannot accept HTTP connections; retrying (sync goes on)"
                    );
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                }
            }
        }
    }
    // No new connections; each open one sees the same token and ends within `close_grace`.
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Errors of `accept` that concern one connection, not the server.
fn is_peer_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

/// Serves one connection with hyper until it ends, or until it is idle, too old or the server
/// shuts down; then closes it gracefully, dropping it if the response in flight takes longer
/// than `close_grace`. The slot is freed when this returns.
async fn serve_connection(
    stream: TcpStream,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
    _slot: OwnedSemaphorePermit,
) {
    let activity = Activity::new();
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .keep_alive(true)
        .serve_connection(io, TowerToHyperService::new(app));
    tokio::pin!(conn);
    let too_old = tokio::time::sleep(limits.max_age);
    tokio::pin!(too_old);
    let reason = loop {
        let idle_at = activity.last() + limits.idle;
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    // Timeouts and clients that hang up mid-request land here; not our fault.
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            () = shutdown.cancelled() => break "shutdown",
            () = &mut too_old => break "maximum age",
            () = tokio::time::sleep_until(idle_at) => {
                if activity.last() + limits.idle <= Instant::now() {
                    break "idle";
                }
                // Bytes moved meanwhile: wait again from the last one.
            }
        }
    };
    tracing::debug!(reason, "closing HTTP connection");
    conn.as_mut().graceful_shutdown();
    match tokio::time::timeout(limits.close_grace, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "HTTP connection ended with an error"),
        Err(_) => tracing::debug!(
            reason,
            "HTTP connection dropped: its response was not done in time"
        ),
    }
}

/// When a connection last moved a byte, shared by its stream and its watchdog.
#[derive(Clone)]
struct Activity {
    /// When the connection was accepted; `last` counts from here.
    born: Instant,
    /// Milliseconds from `born` to the last byte read or written.
    last: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            born: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.born + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }
}

/// A stream that records in [`Activity`] every read or write that moved bytes, so silence
/// can be measured whatever hyper is doing (waiting for a request, a body or the client).
struct Tracked<T> {
    inner: T,
    activity: Activity,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Lets a repeated log line through at most once per period, counting the ones held back.
struct Throttle {
    every: Duration,
    last: Option<Instant>,
    held: u64,
}

impl Throttle {
    fn new(every: Duration) -> Self {
        Throttle {
            every,
            last: None,
            held: 0,
        }
    }

    /// `Some(lines held back since the last one)` when a line may be logged now.
    fn check(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.every)
        {
            self.held += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }
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
    let reasons = ctx.state.not_ready_reasons();
    let body = json!({
        "ready": false,
        "backend_ok": ctx.state.backend_ok(),
        "not_ready": reasons.iter().map(|(name, _)| name).collect::<Vec<_>>(),
        "reasons": reasons
            .into_iter()
            .map(|(name, why)| (name, serde_json::Value::String(why)))
            .collect::<serde_json::Map<_, _>>(),
    });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

async fn status(State(ctx): Ctx) -> Json<serde_json::Value> {
    Json(ctx.state.to_json())
}

async fn sync(State(ctx): Ctx, headers: HeaderMap, body: Body) -> Response {
    let source = webhook::source(&headers);
    let verdict = webhook::judge(&ctx.credentials, source, &headers, body).await;
    let (result, code, body) = match verdict {
        Verdict::Accepted => {
            ctx.trigger.fetch();
            (
                WebhookResult::Accepted,
                StatusCode::ACCEPTED,
                json!({ "status": "sync requested" }),
            )
        }
        Verdict::Unauthorized => (
            WebhookResult::Rejected,
            StatusCode::UNAUTHORIZED,
            json!({ "error": "a valid bearer token or webhook signature is required" }),
        ),
        Verdict::TooLarge => (
            WebhookResult::TooLarge,
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({ "error": format!("the body is over {} bytes", webhook::MAX_BODY) }),
        ),
        Verdict::BadBody => (
            WebhookResult::Rejected,
            StatusCode::BAD_REQUEST,
            json!({ "error": "the body could not be read" }),
        ),
    };
    ctx.metrics.webhook(source, result);
    if result != WebhookResult::Accepted {
        tracing::debug!(
            source = source.label(),
            result = result.label(),
            "POST /sync refused"
        );
    }
    let mut response = (code, Json(body)).into_response();
    if code == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
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
        metrics: Arc<Metrics>,
        trigger: Arc<SyncTrigger>,
        shutdown: CancellationToken,
        task: JoinHandle<std::io::Result<()>>,
    }

    async fn start(sync_token: Option<&str>) -> Harness {
        start_with(sync_token, None).await
    }

    /// Like `start`; with `Some(limits)`, the server runs with those bounds on connections.
    async fn start_with(sync_token: Option<&str>, limits: Option<Limits>) -> Harness {
        let credentials = Credentials {
            sync_token: sync_token.and_then(|t| Secret::new(t.to_string())),
            webhook_secret: None,
        };
        start_full(credentials, limits).await
    }

    /// A server with both secrets set: the bearer token and the webhook secret.
    async fn start_webhooks(sync_token: &str, webhook_secret: &str) -> Harness {
        let credentials = Credentials {
            sync_token: Secret::new(sync_token.to_string()),
            webhook_secret: Secret::new(webhook_secret.to_string()),
        };
        start_full(credentials, None).await
    }

    async fn start_full(credentials: Credentials, limits: Option<Limits>) -> Harness {
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
        let trigger = Arc::new(SyncTrigger::default());
        let metrics = Arc::new(Metrics::new());
        metrics.for_areas(&["a"]);
        let shutdown = CancellationToken::new();
        let ctx = HttpContext {
            state: state.clone(),
            metrics: metrics.clone(),
            trigger: trigger.clone(),
            credentials,
        };
        let task = match limits {
            None => tokio::spawn(serve(listener, ctx, shutdown.clone())),
            Some(limits) => {
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    serve_with(listener, router(ctx), shutdown, limits).await;
                    Ok(())
                })
            }
        };
        Harness {
            addr,
            state,
            metrics,
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
        assert_eq!(body["areas"][0]["checkpoint"]["revision"], 7);
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
        quiet(&h);

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
        triggered(&h).await;
        // Two requests before the next fetch starts make one fetch.
        assert!(!h.trigger.take_fetch(), "two requests must make one sync");

        let r = request(h.addr, "GET", "/sync", &[]).await;
        assert_eq!(r.code, 405);
        stop(h).await;
    }

    #[tokio::test]
    async fn sync_is_open_without_a_token() {
        let h = start(None).await;
        let r = request(h.addr, "POST", "/sync", &[]).await;
        assert_eq!(r.code, 202);
        triggered(&h).await;
        stop(h).await;
    }

    /// Bounds small enough for a test to watch them act; `Limits::default()` otherwise.
    fn limits(f: impl FnOnce(&mut Limits)) -> Option<Limits> {
        let mut l = Limits {
            max_connections: 8,
            header_read: Duration::from_secs(30),
            idle: Duration::from_secs(30),
            max_age: Duration::from_secs(60),
            close_grace: Duration::from_secs(2),
        };
        f(&mut l);
        Some(l)
    }

    /// Slack for a loaded machine when a test checks that a deadline acted.
    const SLACK: Duration = Duration::from_secs(3);

    /// Reads until the server closes the connection (EOF or reset); how long that took from
    /// `since`, and what the server sent meanwhile.
    async fn until_closed(stream: &mut TcpStream, since: Instant) -> (Duration, Vec<u8>) {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let read = async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(40), read)
            .await
            .expect("the server closes the connection");
        (since.elapsed(), got)
    }

    /// Sends `GET /healthz` on a kept-alive connection.
    async fn send_healthz(stream: &mut TcpStream) {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .expect("send");
    }

    /// Reads one `/healthz` answer ("200", body "ok") and leaves the connection open.
    async fn read_healthz(stream: &mut TcpStream) {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let read = async {
            while !got.ends_with(b"\r\n\r\nok") {
                let n = stream.read(&mut buf).await.expect("receive");
                assert!(n > 0, "closed before the answer: {got:?}");
                got.extend_from_slice(&buf[..n]);
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("the server answers in time");
        assert!(got.starts_with(b"HTTP/1.1 200 "), "{got:?}");
    }

    async fn healthz_ok(addr: SocketAddr) {
        let r = request(addr, "GET", "/healthz", &[]).await;
        assert_eq!((r.code, r.body.as_str()), (200, "ok"));
    }

    #[tokio::test]
    async fn a_silent_or_trickling_client_is_cut_off_by_the_header_timeout() {
        let header = Duration::from_millis(400);
        let h = start_with(None, limits(|l| l.header_read = header)).await;
        let started = Instant::now();
        let mut silent = TcpStream::connect(h.addr).await.expect("connect");
        let mut trickle = TcpStream::connect(h.addr).await.expect("connect");
        // One header byte every 50 ms: never idle, never done.
        let trickler = async {
            trickle
                .write_all(b"GET /healthz HTTP/1.1\r\n")
                .await
                .expect("send");
            for b in b"X-Slow: ".iter().cycle().take(400) {
                if trickle.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            until_closed(&mut trickle, started).await
        };
        let ((silent_after, _), (trickle_after, _)) =
            tokio::join!(until_closed(&mut silent, started), trickler);
        for (who, after) in [("silent", silent_after), ("trickling", trickle_after)] {
            assert!(
                after >= header - Duration::from_millis(50) && after < header + SLACK,
                "the {who} connection closed after {after:?}, header timeout {header:?}"
            );
        }
        healthz_ok(h.addr).await;
        stop(h).await;
    }

    #[tokio::test]
    async fn an_idle_kept_alive_connection_is_closed() {
        let idle = Duration::from_millis(400);
        let h = start_with(None, limits(|l| l.idle = idle)).await;
        let mut c = TcpStream::connect(h.addr).await.expect("connect");
        // Kept alive: two requests on one connection.
        for _ in 0..2 {
            send_healthz(&mut c).await;
            read_healthz(&mut c).await;
        }
        let (after, rest) = until_closed(&mut c, Instant::now()).await;
        assert!(rest.is_empty(), "nothing more was asked: {rest:?}");
        assert!(
            after >= idle - Duration::from_millis(50) && after < idle + SLACK,
            "closed {after:?} after the last answer, idle timeout {idle:?}"
        );
        healthz_ok(h.addr).await;
        stop(h).await;
    }

    #[tokio::test]
    async fn a_busy_connection_is_closed_at_its_maximum_age() {
        let max_age = Duration::from_millis(600);
        let h = start_with(None, limits(|l| l.max_age = max_age)).await;
        let started = Instant::now();
        let mut c = TcpStream::connect(h.addr).await.expect("connect");
        let mut answered = 0;
        // Never idle; every request sent is answered before the close.
        while started.elapsed() < max_age + SLACK {
            // After the close, a write may fail (reset) or succeed into the void.
            let sent = c
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
                .await;
            if sent.is_err() {
                break;
            }
            let mut buf = [0u8; 1024];
            match tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {
                    assert!(buf.starts_with(b"HTTP/1.1 200 "), "{:?}", &buf[..n]);
                    answered += 1;
                }
                Ok(_) => break,
                Err(_) => panic!("no answer and no close"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let after = started.elapsed();
        assert!(answered >= 3, "{answered} answers");
        assert!(
            after >= max_age - Duration::from_millis(50) && after < max_age + SLACK,
            "closed after {after:?}, maximum age {max_age:?}"
        );
        healthz_ok(h.addr).await;
        stop(h).await;
    }

    #[tokio::test]
    async fn at_the_limit_a_new_connection_waits_for_an_old_one_to_close() {
        let h = start_with(None, limits(|l| l.max_connections = 2)).await;
        let mut old = Vec::new();
        for _ in 0..2 {
            let mut c = TcpStream::connect(h.addr).await.expect("connect");
            send_healthz(&mut c).await;
            read_healthz(&mut c).await;
            old.push(c);
        }
        // The kernel completes the handshake; the server does not take it yet.
        let mut new = TcpStream::connect(h.addr).await.expect("connect");
        send_healthz(&mut new).await;
        let mut buf = [0u8; 1];
        let early = tokio::time::timeout(Duration::from_millis(300), new.read(&mut buf)).await;
        assert!(early.is_err(), "served beyond the limit: {early:?}");

        drop(old.pop());
        read_healthz(&mut new).await;
        drop(old);
        drop(new);
        healthz_ok(h.addr).await;
        stop(h).await;
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections_at_once() {
        let h = start_with(None, limits(|_| {})).await;
        let mut c = TcpStream::connect(h.addr).await.expect("connect");
        send_healthz(&mut c).await;
        read_healthz(&mut c).await;
        let started = Instant::now();
        stop(h).await;
        let (after, _) = until_closed(&mut c, started).await;
        assert!(
            after < Duration::from_secs(2),
            "closed {after:?} after shutdown"
        );
    }

    #[test]
    fn throttle_lets_one_line_through_per_period() {
        let mut t = Throttle::new(Duration::from_millis(200));
        assert_eq!(t.check(), Some(0));
        assert_eq!(t.check(), None);
        assert_eq!(t.check(), None);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(t.check(), Some(2), "the held-back lines are counted");
        assert_eq!(t.check(), None);
    }

    #[test]
    fn token_comparison() {
        use webhook::constant_time_eq;
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }

    // ---- POST /sync as Git hosts send it (service::webhook) ----

    const SECRET: &str = "It's a Secret to Everybody";

    /// HMAC-SHA256 of the exact body bytes, lowercase hex: what GitHub puts after `sha256=`
    /// in `X-Hub-Signature-256` and what Gitea puts in `X-Gitea-Signature`.
    fn hmac_hex(secret: &str, body: &[u8]) -> String {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    fn github(secret: &str, body: &[u8]) -> String {
        format!("sha256={}", hmac_hex(secret, body))
    }

    /// Sends `head` then `body` on a fresh connection while reading the answer, so a server
    /// that answers before reading everything (413) is heard even if it then closes.
    async fn raw_exchange(addr: SocketAddr, head: String, body: Vec<u8>) -> Reply {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut rd, mut wr) = stream.into_split();
        let writer = tokio::spawn(async move {
            // The server may close before taking it all: a failed write is expected then.
            if wr.write_all(head.as_bytes()).await.is_ok() {
                let _ = wr.write_all(&body).await;
            }
            wr
        });
        let mut raw = Vec::new();
        let read = async {
            let mut buf = [0u8; 4096];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => raw.extend_from_slice(&buf[..n]),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .expect("the server answers in time");
        drop(writer.await);
        let raw = String::from_utf8_lossy(&raw).into_owned();
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

    fn head(extra: &[(&str, &str)], framing: &str) -> String {
        let mut h = String::from(
            "POST /sync HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: application/json\r\n",
        );
        for (name, value) in extra {
            h.push_str(&format!("{name}: {value}\r\n"));
        }
        h.push_str(framing);
        h.push_str("\r\n");
        h
    }

    /// `POST /sync` with `body` and its true Content-Length.
    async fn post(addr: SocketAddr, extra: &[(&str, &str)], body: &[u8]) -> Reply {
        let framing = format!("Content-Length: {}\r\n", body.len());
        raw_exchange(addr, head(extra, &framing), body.to_vec()).await
    }

    /// `POST /sync` with `body` in 64 KiB chunks and no Content-Length.
    async fn post_chunked(addr: SocketAddr, extra: &[(&str, &str)], body: &[u8]) -> Reply {
        let mut wire = Vec::new();
        for chunk in body.chunks(64 * 1024) {
            wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            wire.extend_from_slice(chunk);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        raw_exchange(addr, head(extra, "Transfer-Encoding: chunked\r\n"), wire).await
    }

    fn webhook_count(h: &Harness, source: &str, result: &str) -> u64 {
        let series = format!("kvgit_webhook_total{{result=\"{result}\",source=\"{source}\"}} ");
        let text = h.metrics.encode();
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} missing:\n{text}"))
    }

    /// Asserts a fetch was requested, and takes the request as a pass would.
    async fn triggered(h: &Harness) {
        tokio::time::timeout(Duration::from_secs(1), h.trigger.requested())
            .await
            .expect("the trigger fires");
        assert!(h.trigger.take_fetch(), "the request is for a fetch");
    }

    /// Asserts no sync was requested (the handler sets the request before it answers).
    fn quiet(h: &Harness) {
        assert!(
            !h.trigger.take_fetch(),
            "a refused request must not trigger a sync"
        );
        assert!(
            !h.trigger.take_apply(),
            "a refused request must not trigger a sync"
        );
    }

    #[test]
    fn the_signature_is_the_one_github_documents() {
        // GitHub's "Validating webhook deliveries" test values.
        assert_eq!(
            github(SECRET, b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[tokio::test]
    async fn github_and_gitea_signatures_are_checked_over_the_exact_body() {
        let h = start_webhooks("t0ken", SECRET).await;
        let body = br#"{"ref":"refs/heads/main","after":"0123abcd","commits":[]}"#;

        let sig = github(SECRET, body);
        let r = post(
            h.addr,
            &[("X-GitHub-Event", "push"), ("X-Hub-Signature-256", &sig)],
            body,
        )
        .await;
        assert_eq!(r.code, 202, "{}", r.body);
        triggered(&h).await;
        let sig = hmac_hex(SECRET, body);
        let r = post(
            h.addr,
            &[("X-Gitea-Event", "push"), ("X-Gitea-Signature", &sig)],
            body,
        )
        .await;
        assert_eq!(r.code, 202, "{}", r.body);
        triggered(&h).await;
        // Gitea sends both headers; its own is the one checked.
        let both = [
            ("X-Gitea-Signature", sig.clone()),
            ("X-Hub-Signature-256", format!("sha256={sig}")),
        ];
        let both: Vec<(&str, &str)> = both.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let r = post(h.addr, &both, body).await;
        assert_eq!(r.code, 202, "{}", r.body);
        triggered(&h).await;

        let mut tampered = body.to_vec();
        tampered[8] ^= 1;
        let refused: Vec<(&str, String, Vec<u8>)> = vec![
            // Signed with another secret.
            (
                "X-Hub-Signature-256",
                github("not the secret", body),
                body.to_vec(),
            ),
            (
                "X-Gitea-Signature",
                hmac_hex("not the secret", body),
                body.to_vec(),
            ),
            // Right secret, body changed on the way.
            (
                "X-Hub-Signature-256",
                github(SECRET, body),
                tampered.clone(),
            ),
            ("X-Gitea-Signature", hmac_hex(SECRET, body), tampered),
            // A body with one more byte.
            (
                "X-Hub-Signature-256",
                github(SECRET, body),
                [&body[..], b" "].concat(),
            ),
            // GitHub's value without its prefix, Gitea's with one, the old SHA-1 form.
            ("X-Hub-Signature-256", hmac_hex(SECRET, body), body.to_vec()),
            ("X-Gitea-Signature", github(SECRET, body), body.to_vec()),
            ("X-Hub-Signature-256", "sha1=0123".into(), body.to_vec()),
            ("X-Hub-Signature-256", String::new(), body.to_vec()),
        ];
        for (name, value, sent) in &refused {
            let r = post(h.addr, &[(name, value)], sent).await;
            assert_eq!(r.code, 401, "{name}: {value}");
            assert!(r.headers.contains("www-authenticate: bearer"));
            assert!(!r.body.contains(SECRET), "{}", r.body);
        }
        quiet(&h);
        assert_eq!(webhook_count(&h, "github", "accepted"), 1);
        assert_eq!(webhook_count(&h, "gitea", "accepted"), 2);
        assert_eq!(webhook_count(&h, "github", "rejected"), 6);
        assert_eq!(webhook_count(&h, "gitea", "rejected"), 3);
        stop(h).await;
    }

    #[tokio::test]
    async fn gitlab_token_and_bearer_each_open_their_own_door() {
        let h = start_webhooks("t0ken", SECRET).await;
        let body = br#"{"object_kind":"push"}"#;
        let bearer = "Bearer t0ken".to_string();
        for (name, value) in [
            ("X-Gitlab-Token", SECRET),
            ("Authorization", bearer.as_str()),
        ] {
            let r = post(h.addr, &[(name, value)], body).await;
            assert_eq!(r.code, 202, "{name}");
            triggered(&h).await;
        }
        let refused = [
            ("X-Gitlab-Token", "wrong"),
            ("X-Gitlab-Token", ""),
            // Each secret opens its own door only.
            ("X-Gitlab-Token", "t0ken"),
            ("Authorization", "Bearer It's a Secret to Everybody"),
            ("Authorization", "Bearer wrong"),
            ("X-Unknown", "t0ken"),
        ];
        for (name, value) in refused {
            let r = post(h.addr, &[(name, value)], body).await;
            assert_eq!(r.code, 401, "{name}: {value}");
        }
        quiet(&h);
        assert_eq!(webhook_count(&h, "gitlab", "accepted"), 1);
        assert_eq!(webhook_count(&h, "bearer", "accepted"), 1);
        assert_eq!(webhook_count(&h, "gitlab", "rejected"), 3);
        assert_eq!(webhook_count(&h, "bearer", "rejected"), 2);
        assert_eq!(webhook_count(&h, "unknown", "rejected"), 1);
        stop(h).await;
    }

    #[tokio::test]
    async fn a_body_over_one_mib_is_refused_before_it_is_read() {
        let h = start_webhooks("t0ken", SECRET).await;
        let max = webhook::MAX_BODY;
        let big = vec![b'x'; max + 1];
        let sig = github(SECRET, &big);
        let signed = [("X-Hub-Signature-256", sig.as_str())];

        // Declared too large: answered from the header, before any body byte is sent.
        let framing = format!("Content-Length: {}\r\n", max + 1);
        let r = raw_exchange(h.addr, head(&signed, &framing), Vec::new()).await;
        assert_eq!(r.code, 413, "{}", r.body);
        // Declared and sent.
        let r = post(h.addr, &signed, &big).await;
        assert_eq!(r.code, 413, "{}", r.body);
        // Not declared (chunked): cut off by the limit on reading.
        let r = post_chunked(h.addr, &signed, &big).await;
        assert_eq!(r.code, 413, "{}", r.body);
        // The same with a token that is right: size is checked for every sender.
        let r = post_chunked(h.addr, &[("Authorization", "Bearer t0ken")], &big).await;
        assert_eq!(r.code, 413, "{}", r.body);
        quiet(&h);

        // Exactly the limit is fine, chunked or not.
        let edge = vec![b'y'; max];
        let sig = github(SECRET, &edge);
        let r = post_chunked(h.addr, &[("X-Hub-Signature-256", &sig)], &edge).await;
        assert_eq!(r.code, 202, "{}", r.body);
        triggered(&h).await;
        let r = post(h.addr, &[("X-Hub-Signature-256", &sig)], &edge).await;
        assert_eq!(r.code, 202, "{}", r.body);
        triggered(&h).await;

        assert_eq!(webhook_count(&h, "github", "too_large"), 3);
        assert_eq!(webhook_count(&h, "bearer", "too_large"), 1);
        assert_eq!(webhook_count(&h, "github", "accepted"), 2);
        stop(h).await;
    }

    #[tokio::test]
    async fn a_body_longer_than_its_content_length_says_is_still_cut_off() {
        // hyper frames by Content-Length on the wire, so a lie there cannot reach the
        // handler over TCP; the handler is called directly with a body that outgrows it.
        let metrics = Arc::new(Metrics::new());
        let trigger = Arc::new(SyncTrigger::default());
        let ctx = Arc::new(HttpContext {
            state: Arc::new(ServiceState::with_areas("core-1", "main", [])),
            metrics: metrics.clone(),
            trigger: trigger.clone(),
            credentials: Credentials {
                sync_token: None,
                webhook_secret: Secret::new(SECRET.into()),
            },
        });
        let big = vec![b'x'; webhook::MAX_BODY + 1];
        for declared in [Some("10"), None] {
            let mut headers = HeaderMap::new();
            let sig = github(SECRET, &big);
            headers.insert("x-hub-signature-256", sig.parse().expect("a header value"));
            if let Some(n) = declared {
                headers.insert(header::CONTENT_LENGTH, n.parse().expect("a header value"));
            }
            let r = sync(State(ctx.clone()), headers, Body::from(big.clone())).await;
            assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE, "{declared:?}");
        }
        assert!(
            !trigger.take_fetch(),
            "an oversized body must not trigger a sync"
        );
        assert!(metrics
            .encode()
            .contains(r#"kvgit_webhook_total{result="too_large",source="github"} 2"#));
    }
}

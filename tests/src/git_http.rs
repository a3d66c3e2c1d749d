//! A Git hosting remote over HTTP for tests: a small HTTP server on 127.0.0.1 (axum, on a
//! thread and runtime of its own) that requires `Authorization: Basic base64(user:token)`
//! and runs git's own `git http-backend` as a CGI program for every request, so the smart
//! HTTP protocol is git's, not ours. Plain http on loopback: TLS would add nothing to what
//! these tests check (where the token goes), only certificates.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Router;
use base64::Engine as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt as _;

/// One request the server answered: what an operator would see in an access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub method: String,
    /// Path and query, e.g. `/remote.git/info/refs?service=git-receive-pack`.
    pub uri: String,
    pub status: u16,
}

/// What the handler needs: where the repositories are, the one accepted credential, and
/// the access log the tests read.
struct Ctx {
    root: PathBuf,
    /// The whole expected `Authorization` header value (a Mutex: tests revoke the token).
    expected: Mutex<String>,
    user: String,
    log: Mutex<Vec<Served>>,
    /// Requests being answered (entered the handler, not yet logged).
    in_flight: AtomicUsize,
}

/// A running server; stopped when dropped.
pub struct GitHttpServer {
    pub port: u16,
    ctx: Arc<Ctx>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GitHttpServer {
    /// Serves the bare repositories below `root` (as `/<name>.git`) to `user`:`token` only.
    /// Pushes are allowed (`http.receivepack`) in every repository found there.
    pub fn start(root: &Path, user: &str, token: &str) -> GitHttpServer {
        for entry in std::fs::read_dir(root).expect("read root").flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "git") && path.join("HEAD").exists() {
                crate::kvgit::git_in(&path, &["config", "http.receivepack", "true"]);
            }
        }
        let ctx = Arc::new(Ctx {
            root: root.to_owned(),
            expected: Mutex::new(basic(user, token)),
            user: user.to_owned(),
            log: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("local addr").port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = Router::new().fallback(handle).with_state(ctx.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("serve");
            });
        });
        GitHttpServer {
            port,
            ctx,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The URL of `repo` (a directory below the root), e.g. `http://127.0.0.1:PORT/remote.git`.
    pub fn url(&self, repo: &Path) -> String {
        let name = repo
            .strip_prefix(&self.ctx.root)
            .expect("repo below the served root");
        format!("http://127.0.0.1:{}/{}", self.port, name.display())
    }

    /// From now on only `token` is accepted (the old one is revoked).
    pub fn set_token(&self, token: &str) {
        *self.ctx.expected.lock().expect("expected") = basic(&self.ctx.user, token);
    }

    /// Waits until no request is being answered, so that a count taken next cannot be
    /// raised by one that was already let in (e.g. a push authenticated before `set_token`).
    pub fn wait_idle(&self) {
        crate::serve::wait_until(Duration::from_secs(30), "the git server to go idle", || {
            self.ctx.in_flight.load(Ordering::SeqCst) == 0
        });
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Served> {
        self.ctx.log.lock().expect("log").clone()
    }

    /// Requests answered with `status`.
    pub fn count(&self, status: u16) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.status == status)
            .count()
    }

    /// Successful pushes (`git-receive-pack` POSTs answered 200).
    pub fn pushes(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| {
                r.method == "POST" && r.uri.ends_with("/git-receive-pack") && r.status == 200
            })
            .count()
    }
}

impl Drop for GitHttpServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn basic(user: &str, token: &str) -> String {
    let credential = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}"));
    format!("Basic {credential}")
}

/// Counts a request in flight until dropped (hyper drops the handler when a client hangs up).
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(State(ctx): State<Arc<Ctx>>, req: Request) -> Response {
    ctx.in_flight.fetch_add(1, Ordering::SeqCst);
    let _in_flight = InFlight(&ctx.in_flight);
    let method = req.method().as_str().to_owned();
    let uri = req.uri().to_string();
    let resp = answer(&ctx, req).await;
    ctx.log.lock().expect("log").push(Served {
        method,
        uri,
        status: resp.status().as_u16(),
    });
    resp
}

async fn answer(ctx: &Ctx, req: Request) -> Response {
    let authorized = req
        .headers()
        .get("authorization")
        .is_some_and(|v| v.as_bytes() == ctx.expected.lock().expect("expected").as_bytes());
    if !authorized {
        return Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header("WWW-Authenticate", "Basic realm=\"kvgit test remote\"")
            .body(Body::from("authentication required\n"))
            .expect("response");
    }
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => return plain(StatusCode::BAD_REQUEST, format!("body: {e}\n")),
    };
    match cgi(ctx, &parts, body).await {
        Ok(resp) => resp,
        Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

fn plain(status: StatusCode, text: String) -> Response {
    Response::builder()
        .status(status)
        .body(Body::from(text))
        .expect("response")
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Runs `git http-backend` for one request, CGI style, and turns its output into a response.
async fn cgi(
    ctx: &Ctx,
    parts: &axum::http::request::Parts,
    body: Bytes,
) -> std::io::Result<Response> {
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_PROJECT_ROOT", &ctx.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", parts.uri.path())
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("QUERY_STRING", parts.uri.query().unwrap_or_default())
        .env("CONTENT_TYPE", header(&parts.headers, "content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_USER", &ctx.user)
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("GIT_PROTOCOL", header(&parts.headers, "git-protocol"))
        .env(
            "HTTP_CONTENT_ENCODING",
            header(&parts.headers, "content-encoding"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let out = child.wait_with_output().await?;
    let _ = writer.await;
    if !out.stderr.is_empty() {
        eprintln!(
            "git http-backend: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_cgi(&out.stdout)
}

/// CGI output: header lines (`Status: 404 Not Found`, `Content-Type: ...`), a blank line,
/// the body.
fn parse_cgi(out: &[u8]) -> std::io::Result<Response> {
    let bad = |what: &str| std::io::Error::other(format!("CGI output: {what}"));
    let (head, body) = [&b"\r\n\r\n"[..], b"\n\n"]
        .iter()
        .filter_map(|sep| {
            out.windows(sep.len())
                .position(|w| w == *sep)
                .map(|at| (&out[..at], &out[at + sep.len()..]))
        })
        .min_by_key(|(head, _)| head.len())
        .ok_or_else(|| bad("no end of headers"))?;
    let mut resp = Response::builder().status(StatusCode::OK);
    for line in String::from_utf8_lossy(head).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value
                .split_whitespace()
                .next()
                .and_then(|c| c.parse::<u16>().ok())
                .ok_or_else(|| bad("status"))?;
            resp = resp.status(code);
        } else if let Ok(v) = HeaderValue::from_str(value) {
            resp = resp.header(name.trim(), v);
        }
    }
    resp.body(Body::from(body.to_vec()))
        .map_err(|e| bad(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::parse_cgi;

    #[test]
    fn cgi_headers_become_the_response() {
        let resp = parse_cgi(b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnope")
            .expect("parse");
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.headers()["content-type"], "text/plain");
        let resp = parse_cgi(b"Content-Type: application/x-git-upload-pack-advertisement\n\n0000")
            .expect("parse");
        assert_eq!(resp.status(), 200);
    }
}

//! The operators' web page of `serve` (SPEC "HTTP (serve)", `GET /`): one HTML shell with its
//! script and style compiled into the binary (no external asset: it works on an offline node).
//!
//! The page is plain JavaScript that polls `/api/v1/overview` (the `/status` document from
//! memory, plus a few gauges) and reads Git only on demand (an area's commits, a key's
//! history). Values are never sent unless `server.ui_show_values` is set; everything the page
//! shows from data goes through `textContent`, never through HTML.

mod api;

use super::metrics::Metrics;
use super::state::ServiceState;
use crate::engine::Context;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

/// The page shell: the same HTML for the overview, an area and a key; the script reads the URL.
const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("style.css");

/// The page allows only itself: no inline script, no other origin, no framing. Data shown
/// by the page is text, and this is the second line of defence if it ever were not.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// What the page's handlers read; built once by the service.
pub struct UiContext {
    /// Git reads (commits, key history) and the configured areas.
    pub engine: Arc<Context>,
    /// The live status, the same the `/status` endpoint answers from.
    pub state: Arc<ServiceState>,
    /// Gauges `/status` does not carry: unpushed commits, last push, fetch counts.
    pub metrics: Arc<Metrics>,
}

/// The page and its `/api/v1` reads, or nothing at all when `server.ui` is false (then `/`
/// answers 404 like any unknown path).
pub fn router(ctx: UiContext) -> Router {
    if !ctx.engine.cfg.server.ui {
        return Router::new();
    }
    let api = Arc::new(api::Api::new(ctx));
    Router::new()
        .route("/", get(page))
        .route("/areas/{area}", get(page))
        .route("/key", get(page))
        .route("/ui/app.js", get(script))
        .route("/ui/style.css", get(style))
        .route("/api/v1/overview", get(api::overview))
        .route("/api/v1/areas/{area}/commits", get(api::area_commits))
        .route("/api/v1/key", get(api::key_history))
        .with_state(api)
}

async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// An embedded file with the page's security headers. `no-cache` (revalidate, here: refetch)
/// so a new binary's page is never mixed with an old cached script.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    secure(headers);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Headers every page and API answer carries.
fn secure(headers: &mut axum::http::HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page must work on a node with no Internet: nothing it loads may come from
    /// elsewhere (a CDN, a web font), and the CSP would block it anyway.
    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for (name, text) in [
            ("page.html", PAGE),
            ("app.js", SCRIPT),
            ("style.css", STYLE),
        ] {
            for scheme in ["http://", "https://", "//cdn", "@import", "url("] {
                assert!(!text.contains(scheme), "{name} refers to {scheme:?}");
            }
        }
        assert!(PAGE.contains("src=\"/ui/app.js\"") && PAGE.contains("href=\"/ui/style.css\""));
    }

    /// Keys and values are arbitrary bytes: the script only ever sets text, never HTML.
    #[test]
    fn the_script_never_parses_data_as_html() {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!SCRIPT.contains(sink), "app.js uses {sink}");
        }
    }
}

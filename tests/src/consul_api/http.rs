//! The HTTP surface: routes, the checks Consul makes before any endpoint runs (datacenter,
//! leader, ACL token), plain-text errors, query parameters and request bodies.

use super::acl::Authz;
use super::state::Shared;
use super::{acl_endpoint, endpoints, kv_endpoint};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, put};
use axum::Router;
use std::sync::Arc;

/// Bodies are read whole before any size check, so that a client still sending a too-large
/// value gets its 413 instead of a reset connection; this only bounds memory.
const MAX_READ_BYTES: usize = 64 * 1024 * 1024;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/kv/", any(kv_endpoint::handle))
        .route("/v1/kv/{*key}", any(kv_endpoint::handle))
        .route("/v1/txn", put(endpoints::txn))
        .route("/v1/session/create", put(endpoints::session_create))
        .route("/v1/session/renew/{id}", put(endpoints::session_renew))
        .route("/v1/session/destroy/{id}", put(endpoints::session_destroy))
        .route("/v1/session/info/{id}", get(endpoints::session_info))
        .route("/v1/session/list", get(endpoints::session_list))
        .route("/v1/agent/self", get(endpoints::agent_self))
        .route("/v1/status/leader", get(endpoints::status_leader))
        .route("/v1/connect/ca/roots", get(endpoints::ca_roots))
        .route("/v1/acl/policy", put(acl_endpoint::policy_create))
        .route(
            "/v1/acl/policy/{id}",
            get(acl_endpoint::policy_read)
                .put(acl_endpoint::policy_update)
                .delete(acl_endpoint::policy_delete),
        )
        .route(
            "/v1/acl/policy/name/{name}",
            get(acl_endpoint::policy_read_by_name),
        )
        .route("/v1/acl/policies", get(acl_endpoint::policy_list))
        .route("/v1/acl/token", put(acl_endpoint::token_create))
        .route("/v1/acl/token/self", get(acl_endpoint::token_self))
        .route(
            "/v1/acl/token/{accessor}",
            get(acl_endpoint::token_read)
                .put(acl_endpoint::token_update)
                .delete(acl_endpoint::token_delete),
        )
        .route("/v1/acl/tokens", get(acl_endpoint::token_list))
        .route("/v1/_test/leader", put(endpoints::test_set_leader))
        .route("/v1/_test/index_skew", put(endpoints::test_set_index_skew))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "404 page not found\n") })
        .layer(middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

/// What Consul checks before an endpoint runs, in its order: the datacenter (forwarding),
/// the leader (server RPCs are forwarded to it), then the ACL token (resolved there).
async fn guard(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    // Fault injection is not Consul's and must work whatever state it set up.
    if path.starts_with("/v1/_test/") {
        return next.run(request).await;
    }
    let params = Params::parse(request.uri());
    if let Some(dc) = params.get("dc") {
        if !dc.is_empty() && dc != shared.config.datacenter {
            return ApiError::internal("No path to datacenter").into_response();
        }
    }
    // Any server answers `?stale` reads, leader or not.
    let stale_read = request.method() == Method::GET && params.has("stale");
    let needs_leader = [
        "/v1/kv/",
        "/v1/txn",
        "/v1/session/",
        "/v1/connect/",
        "/v1/acl/",
    ]
    .iter()
    .any(|p| path.starts_with(p));
    if needs_leader && !stale_read && !shared.lock().leader {
        return ApiError::internal("No cluster leader").into_response();
    }
    // Consul serves the leader address and the CA roots without resolving a token.
    let public = path == "/v1/status/leader" || path == "/v1/connect/ca/roots";
    let authz = {
        let store = shared.lock();
        match (&store.acl, public) {
            (Some(acl), false) => {
                match acl.resolve(presented_token(request.headers(), &params).as_deref()) {
                    Ok(identity) => Authz(Some(Arc::new(identity))),
                    Err(not_found) => {
                        return ApiError::new(StatusCode::FORBIDDEN, not_found).into_response()
                    }
                }
            }
            _ => Authz(None),
        }
    };
    let mut request = request;
    request.extensions_mut().insert(authz);
    next.run(request).await
}

/// The token from `X-Consul-Token`, `Authorization: Bearer`, or `?token=`, in Consul's order.
pub(crate) fn presented_token(headers: &HeaderMap, params: &Params) -> Option<String> {
    if let Some(token) = headers.get("x-consul-token").and_then(|v| v.to_str().ok()) {
        return Some(token.to_string());
    }
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(token) = bearer {
        return Some(token.trim().to_string());
    }
    params.get("token").map(str::to_string)
}

/// An error answered as Consul does: a status and a plain-text body.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    body: String,
}

impl ApiError {
    pub fn new(status: StatusCode, body: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: body.into(),
        }
    }

    pub fn bad_request(body: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, body)
    }

    /// Consul answers 500 for any RPC error it does not classify.
    pub fn internal(body: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, body)
    }

    pub fn too_large(body: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            [(CONTENT_TYPE, "text/plain; charset=utf-8")],
            self.body,
        )
            .into_response()
    }
}

pub(crate) type ApiResult = Result<Response, ApiError>;

/// Query parameters in order, decoded like Go's `url.ParseQuery` (`+` is a space). Flags
/// such as `?recurse` are present with an empty value.
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub fn parse(uri: &Uri) -> Params {
        let query = uri.query().unwrap_or("");
        Params(
            form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect(),
        )
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }

    /// The first value, as Go's `Values.Get`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A `uint64` parameter; the error text is Go's `strconv.ParseUint` message, which is
    /// what Consul answers (with a 500) for `flags=` and `cas=`.
    pub fn get_u64(&self, name: &str) -> Result<Option<u64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(text) => text.parse().map(Some).map_err(|_| {
                ApiError::internal(format!(
                    "strconv.ParseUint: parsing {text:?}: invalid syntax"
                ))
            }),
        }
    }
}

/// The whole request body (see [`MAX_READ_BYTES`]).
pub(crate) async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_READ_BYTES)
        .await
        .map_err(|e| ApiError::too_large(format!("Request body too large: {e}")))
}

/// Adds the headers of a consistent read: `X-Consul-Index` (never 0, so a client's next
/// blocking call always blocks) and the leader metadata.
pub(crate) fn with_query_meta(mut response: Response, index: u64, leader: bool) -> Response {
    response
        .headers_mut()
        .insert("x-consul-index", HeaderValue::from(index.max(1)));
    with_leader_meta(response, leader)
}

/// `X-Consul-KnownLeader` and `X-Consul-LastContact` (always 0: this server is the leader,
/// or knows none).
pub(crate) fn with_leader_meta(mut response: Response, leader: bool) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        "x-consul-knownleader",
        HeaderValue::from_static(if leader { "true" } else { "false" }),
    );
    headers.insert("x-consul-lastcontact", HeaderValue::from_static("0"));
    response
}

//! The endpoints other than `/v1/kv`: transactions, sessions, the agent/status/CA reads
//! clients use to identify the cluster, and the `/v1/_test/` fault injection.

use super::acl::{Access, Authz};
use super::blocking::{self, Blocking};
use super::http::{read_body, with_leader_meta, with_query_meta, ApiError, ApiResult, Params};
use super::json::{SessionJson, TxnResponseJson};
use super::session::SessionSpec;
use super::state::{Shared, START_INDEX};
use super::txn;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

type SharedState = State<Arc<Shared>>;

type Caller = Extension<Authz>;

pub(crate) async fn txn(
    State(shared): SharedState,
    Extension(authz): Caller,
    body: Body,
) -> ApiResult {
    let config = &shared.config;
    // Consul lets a large `kv_max_value_size` raise the transaction limit too.
    let max_len = config.txn_max_req_len.max(config.kv_max_value_size);
    let body = read_body(body).await?;
    if body.len() > max_len {
        return Err(ApiError::too_large(format!(
            "Request body too large, max size: {max_len} bytes"
        )));
    }
    let ops = txn::decode(&body, config)?;
    let read_only = !txn::writes(&ops);
    let now = Instant::now();
    let (outcome, leader) =
        shared.update(|store| (txn::apply(store, &ops, now, &authz), store.leader));
    let (status, body) = match outcome {
        Ok(results) => (
            StatusCode::OK,
            TxnResponseJson {
                results: Some(results),
                errors: None,
            },
        ),
        Err(errors) => (
            StatusCode::CONFLICT,
            TxnResponseJson {
                results: None,
                errors: Some(errors),
            },
        ),
    };
    let mut response = (status, Json(body)).into_response();
    // Only read-only transactions are reads, with read metadata; they carry no index.
    if read_only {
        response = with_leader_meta(response, leader);
    }
    Ok(response)
}

pub(crate) async fn session_create(
    State(shared): SharedState,
    Extension(authz): Caller,
    body: Body,
) -> ApiResult {
    let spec = SessionSpec::parse(&read_body(body).await?)?;
    let node = shared.config.node_name.as_str();
    // Sessions belong to a node: creating, renewing and destroying one needs session:write
    // on it, reading session:read.
    authz.check("session", node, Access::Write)?;
    let id = shared.update(|store| store.create_session(spec, node, Instant::now()))?;
    // The new session may expire before whatever the timer task sleeps for.
    shared.session_timers.notify_one();
    Ok(Json(json!({ "ID": id })).into_response())
}

pub(crate) async fn session_renew(
    State(shared): SharedState,
    Extension(authz): Caller,
    Path(id): Path<String>,
) -> ApiResult {
    authz.check("session", &shared.config.node_name, Access::Write)?;
    match shared.update(|store| store.renew_session(&id, Instant::now())) {
        Some(session) => Ok(Json([SessionJson::new(&session)]).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("Session id '{id}' not found"),
        )),
    }
}

pub(crate) async fn session_destroy(
    State(shared): SharedState,
    Extension(authz): Caller,
    Path(id): Path<String>,
) -> ApiResult {
    authz.check("session", &shared.config.node_name, Access::Write)?;
    // Destroying an unknown session is not an error in Consul.
    shared.update(|store| store.destroy_session(&id, Instant::now()));
    Ok(Json(true).into_response())
}

pub(crate) async fn session_info(
    State(shared): SharedState,
    Extension(authz): Caller,
    Path(id): Path<String>,
    uri: Uri,
) -> ApiResult {
    authz.check("session", &shared.config.node_name, Access::Read)?;
    let blocking = Blocking::from_params(&Params::parse(&uri))?;
    Ok(blocking::answer(
        &shared,
        blocking,
        |store| store.sessions.table_index(),
        |store, index| {
            // An unknown session is an empty list, not a 404.
            let sessions: Vec<SessionJson> = store
                .sessions
                .get(&id)
                .map(SessionJson::new)
                .into_iter()
                .collect();
            with_query_meta(Json(sessions).into_response(), index, store.leader)
        },
    )
    .await)
}

pub(crate) async fn session_list(
    State(shared): SharedState,
    Extension(authz): Caller,
    uri: Uri,
) -> ApiResult {
    authz.check("session", &shared.config.node_name, Access::Read)?;
    let blocking = Blocking::from_params(&Params::parse(&uri))?;
    Ok(blocking::answer(
        &shared,
        blocking,
        |store| store.sessions.table_index(),
        |store, index| {
            let sessions: Vec<SessionJson> = store.sessions.list().map(SessionJson::new).collect();
            with_query_meta(Json(sessions).into_response(), index, store.leader)
        },
    )
    .await)
}

/// The part of the agent's self-description clients read to name the node and datacenter.
pub(crate) async fn agent_self(State(shared): SharedState, Extension(authz): Caller) -> ApiResult {
    let config = &shared.config;
    authz.check("agent", &config.node_name, Access::Read)?;
    Ok(Json(json!({
        "Config": {
            "Datacenter": config.datacenter,
            "NodeName": config.node_name,
            "NodeID": shared.node_id,
            "Server": true,
        },
        "Member": { "Name": config.node_name },
    }))
    .into_response())
}

/// The leader's RPC address, or "" while the cluster has none.
pub(crate) async fn status_leader(State(shared): SharedState) -> Response {
    let leader = if shared.lock().leader {
        "127.0.0.1:8300"
    } else {
        ""
    };
    Json(leader).into_response()
}

/// Consul Connect's CA roots; clients read `TrustDomain` (`<cluster id>.consul`) to tell one
/// cluster from another, e.g. a rebuilt one at the same address. No certificates are kept.
pub(crate) async fn ca_roots(State(shared): SharedState) -> Response {
    let leader = shared.lock().leader;
    let body = Json(json!({
        "ActiveRootID": shared.cluster_id.replace('-', ""),
        "TrustDomain": format!("{}.consul", shared.cluster_id),
        "Roots": [],
    }));
    with_query_meta(body.into_response(), START_INDEX, leader)
}

/// `PUT /v1/_test/leader?present=false|true`: not Consul's. Without a leader, KV, txn and
/// session requests fail as they do in a cluster that lost quorum, and session TTLs stop;
/// a leader regained restarts every session timer, as a newly elected Consul leader does.
pub(crate) async fn test_set_leader(State(shared): SharedState, uri: Uri) -> ApiResult {
    let present = match Params::parse(&uri).get("present") {
        Some("true") => true,
        Some("false") => false,
        _ => return Err(ApiError::bad_request("present must be true or false")),
    };
    shared.update(|store| {
        if present && !store.leader {
            store.restart_session_timers(Instant::now());
        }
        store.leader = present;
    });
    shared.session_timers.notify_one();
    Ok(Json(true).into_response())
}

/// `PUT /v1/_test/index_skew?by=N`: not Consul's. With N > 0 every blocking query (`?index=I`
/// on KV and session reads, the 404 of an absent key or prefix included) answers at once with
/// `X-Consul-Index` `max(I - N, 1)` and the current body: the index a client waits on keeps
/// going backwards, as after a restore from an older snapshot, on every query. Reads without
/// `index` and writes are untouched. `by=0` switches it off. Waiting queries are woken to
/// answer under the new setting.
pub(crate) async fn test_set_index_skew(State(shared): SharedState, uri: Uri) -> ApiResult {
    let by = Params::parse(&uri)
        .get("by")
        .and_then(|t| t.parse::<u64>().ok())
        .ok_or_else(|| ApiError::bad_request("by must be a whole number (0 switches off)"))?;
    shared.update(|store| store.index_skew = by);
    shared.wake_queries();
    Ok(Json(true).into_response())
}

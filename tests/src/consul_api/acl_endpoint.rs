//! `/v1/acl/policy*` and `/v1/acl/token*`: create, read (by ID, by name, the caller's own
//! token), update, delete and list policies and tokens, as Consul's ACL HTTP API does;
//! reads need `acl:read`, writes `acl:write` (the management token has both).

use super::acl::{
    Access, Acl, Authz, Policy, Rules, Token, ANONYMOUS_ACCESSOR, GLOBAL_MANAGEMENT_ID,
};
use super::http::{read_body, ApiError, ApiResult, Params};
use super::ids;
use super::session::field;
use super::state::{Shared, Store};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde_json::{Map, Value};
use std::sync::Arc;

type SharedState = State<Arc<Shared>>;
type Caller = Extension<Authz>;

/// Consul's answer for a missing policy or token on reads.
fn not_found() -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "ACL not found")
}

fn disabled() -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "ACL support disabled")
}

/// Runs `f` on the ACL tables (with a fresh Raft index for writes).
fn with_acl<R>(
    shared: &Shared,
    write: bool,
    f: impl FnOnce(&mut Acl, u64) -> Result<R, ApiError>,
) -> Result<R, ApiError> {
    shared.update(|store: &mut Store| {
        if store.acl.is_none() {
            return Err(disabled());
        }
        let index = if write {
            store.next_index()
        } else {
            store.index
        };
        match store.acl.as_mut() {
            Some(acl) => f(acl, index),
            None => Err(disabled()),
        }
    })
}

async fn object(body: Body) -> Result<Map<String, Value>, ApiError> {
    let bytes = read_body(body).await?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request(
            "Request decode failed: expected an object",
        )),
        Err(e) => Err(ApiError::bad_request(format!("Request decode failed: {e}"))),
    }
}

fn text(body: &Map<String, Value>, name: &str) -> String {
    field(body, name)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

// ---- policies ----

/// Name, description, rules and datacenters of a policy body, checked as Consul does.
fn policy_fields(
    acl: &Acl,
    body: &Map<String, Value>,
    id: &str,
) -> Result<(String, String, String, Rules, Vec<String>), ApiError> {
    let name = text(body, "Name");
    let valid_name = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid_name {
        return Err(ApiError::bad_request(
            "Invalid Policy: invalid Name. Only alphanumeric characters, '-' and '_' are allowed",
        ));
    }
    if acl.policy_by_name(&name).is_some_and(|p| p.id != id) {
        return Err(ApiError::bad_request(format!(
            "Invalid Policy: A Policy with Name {name:?} already exists"
        )));
    }
    let rules_text = text(body, "Rules");
    let rules = Rules::parse(&rules_text).map_err(ApiError::bad_request)?;
    let datacenters = field(body, "Datacenters")
        .and_then(Value::as_array)
        .map(|dcs| {
            dcs.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    Ok((
        name,
        text(body, "Description"),
        rules_text,
        rules,
        datacenters,
    ))
}

pub(crate) async fn policy_create(
    State(shared): SharedState,
    Extension(caller): Caller,
    body: Body,
) -> ApiResult {
    caller.check("acl", "", Access::Write)?;
    let body = object(body).await?;
    let policy = with_acl(&shared, true, |acl, index| {
        let id = ids::uuid();
        let (name, description, rules_text, rules, datacenters) = policy_fields(acl, &body, &id)?;
        let policy = Policy {
            id: id.clone(),
            name,
            description,
            rules_text,
            rules,
            datacenters,
            create_index: index,
            modify_index: index,
        };
        acl.policies.insert(id, policy.clone());
        Ok(policy)
    })?;
    Ok(Json(policy.to_json(true)).into_response())
}

pub(crate) async fn policy_update(
    State(shared): SharedState,
    Extension(caller): Caller,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult {
    caller.check("acl", "", Access::Write)?;
    let body = object(body).await?;
    let given = text(&body, "ID");
    if !given.is_empty() && given != id {
        return Err(ApiError::bad_request(
            "Policy ID in URL and payload do not match",
        ));
    }
    let policy = with_acl(&shared, true, |acl, index| {
        let Some(old) = acl.policies.get(&id).cloned() else {
            return Err(ApiError::bad_request(format!(
                "Invalid Policy: Cannot find policy {id}"
            )));
        };
        let (name, description, rules_text, rules, datacenters) = policy_fields(acl, &body, &id)?;
        if id == GLOBAL_MANAGEMENT_ID && rules_text != old.rules_text {
            return Err(ApiError::bad_request(
                "Changing the Rules for the builtin global-management policy is not permitted",
            ));
        }
        let policy = Policy {
            name,
            description,
            rules_text,
            rules,
            datacenters,
            modify_index: index,
            ..old
        };
        acl.policies.insert(id.clone(), policy.clone());
        Ok(policy)
    })?;
    Ok(Json(policy.to_json(true)).into_response())
}

pub(crate) async fn policy_delete(
    State(shared): SharedState,
    Extension(caller): Caller,
    Path(id): Path<String>,
) -> ApiResult {
    caller.check("acl", "", Access::Write)?;
    with_acl(&shared, true, |acl, _| {
        if id == GLOBAL_MANAGEMENT_ID {
            return Err(ApiError::bad_request(
                "Delete of builtin global-management policy is not permitted",
            ));
        }
        acl.policies.remove(&id);
        Ok(())
    })?;
    Ok(Json(true).into_response())
}

pub(crate) async fn policy_read(
    State(shared): SharedState,
    Extension(caller): Caller,
    Path(id): Path<String>,
) -> ApiResult {
    caller.check("acl", "", Access::Read)?;
    let policy = with_acl(&shared, false, |acl, _| {
        acl.policies.get(&id).cloned().ok_or_else(not_found)
    })?;
    Ok(Json(policy.to_json(true)).into_response())
}

pub(crate) async fn policy_read_by_name(
    State(shared): SharedState,
    Extension(caller): Caller,
    Path(name): Path<String>,
) -> ApiResult {
    caller.check("acl", "", Access::Read)?;
    let policy = with_acl(&shared, false, |acl, _| {
        acl.policy_by_name(&name).cloned().ok_or_else(not_found)
    })?;
    Ok(Json(policy.to_json(true)).into_response())
}

pub(crate) async fn policy_list(
    State(shared): SharedState,
    Extension(caller): Caller,
) -> ApiResult {
    caller.check("acl", "", Access::Read)?;
    let list = with_acl(&shared, false, |acl, _| {
        Ok(acl
            .policies
            .values()
            .map(|p| p.to_json(false))
            .collect::<Vec<_>>())
    })?;
    Ok(Json(list).into_response())
}

// ---- tokens ----

/// The policy IDs a token body links, by `ID` or by `Name`.
fn linked_policies(acl: &Acl, body: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let mut ids = Vec::new();
    let links = field(body, "Policies").and_then(Value::as_array);
    for link in links.into_iter().flatten() {
        let Value::Object(link) = link else {
            return Err(ApiError::bad_request("Invalid policy link"));
        };
        let (id, name) = (text(link, "ID"), text(link, "Name"));
        let found = if !id.is_empty() {
            acl.policies.get(&id).map(|p| p.id.clone()).ok_or_else(|| {
                ApiError::bad_request(format!("No such ACL policy with ID {id:?}"))
            })?
        } else {
            acl.policy_by_name(&name)
                .map(|p| p.id.clone())
                .ok_or_else(|| {
                    ApiError::bad_request(format!("No such ACL policy with name {name:?}"))
                })?
        };
        if !ids.contains(&found) {
            ids.push(found);
        }
    }
    Ok(ids)
}

/// A token as the caller may see it: the secret only with `acl:write`, as Consul redacts it.
fn shown(acl: &Acl, token: &Token, caller: &Authz) -> Value {
    let mut json = acl.token_json(token);
    let own = caller
        .identity()
        .is_some_and(|i| i.accessor == token.accessor);
    if !own && !caller.allows("acl", "", Access::Write) {
        json["SecretID"] = Value::String("<hidden>".to_string());
    }
    json
}

pub(crate) async fn token_create(
    State(shared): SharedState,
    Extension(caller): Caller,
    body: Body,
) -> ApiResult {
    caller.check("acl", "", Access::Write)?;
    let body = object(body).await?;
    let json = with_acl(&shared, true, |acl, index| {
        let policies = linked_policies(acl, &body)?;
        let accessor = Some(text(&body, "AccessorID"))
            .filter(|a| !a.is_empty())
            .unwrap_or_else(ids::uuid);
        let secret = Some(text(&body, "SecretID"))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(ids::uuid);
        if acl.tokens.contains_key(&accessor) {
            return Err(ApiError::bad_request(
                "Invalid Token: AccessorID is already in use",
            ));
        }
        if acl.tokens.values().any(|t| t.secret == secret) {
            return Err(ApiError::bad_request(
                "Invalid Token: SecretID is already in use",
            ));
        }
        let token = Token {
            accessor: accessor.clone(),
            secret,
            description: text(&body, "Description"),
            policies,
            local: field(&body, "Local")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            create_time: acl_now(),
            create_index: index,
            modify_index: index,
        };
        let json = acl.token_json(&token);
        acl.tokens.insert(accessor, token);
        Ok(json)
    })?;
    Ok(Json(json).into_response())
}

fn acl_now() -> String {
    // The creation time of the anonymous token is as good a clock as any for a label.
    super::acl::now_rfc3339()
}

pub(crate) async fn token_update(
    State(shared): SharedState,
    Extension(caller): Caller,
    Path(accessor): Path<String>,
    body: Body,
) -> ApiResult {
    caller.check("acl", "", Access::Write)?;
    let body = object(body).await?;
    let given = text(&body, "AccessorID");
    if !given.is_empty() && given != accessor {
        return Err(ApiError::bad_request(
            "Token Accessor ID in URL and payload do not match",
        ));
    }
    let json = with_acl(&shared, true, |acl, index| {
        let Some(old) = acl.tokens.get(&accessor).cloned() else {
            return Err(ApiError::bad_request(format!(
                "Cannot find token {accessor:?}"
            )));
        };
        let secret = text(&body, "SecretID");
        if !secret.is_empty() && secret != old.secret {
            return Err(ApiError::bad_request(
                "Changing a token's SecretID is not permitted",
            ));
        }
        let token = Token {
            description: text(&body, "Description"),
            policies: linked_policies(acl, &body)?,
            modify_index: index,
            ..old
        };
        let json = acl.token_json(&token);
        acl.tokens.insert(accessor.clone(), token);
        Ok(json)
    })?;
    Ok(Json(json).into_response())
}

pub(crate) async fn token_delete(
    State(shared): SharedState,
    Extension(caller): Caller,
    Path(accessor): Path<String>,
) -> ApiResult {
    caller.check("acl", "", Access::Write)?;
    with_acl(&shared, true, |acl, _| {
        if accessor == ANONYMOUS_ACCESSOR {
            return Err(ApiError::bad_request(
                "Delete of anonymous token is not allowed",
            ));
        }
        acl.tokens.remove(&accessor);
        Ok(())
    })?;
    Ok(Json(true).into_response())
}

pub(crate) async fn token_read(
    State(shared): SharedState,
    Extension(caller): Caller,
    Path(accessor): Path<String>,
) -> ApiResult {
    caller.check("acl", "", Access::Read)?;
    let json = with_acl(&shared, false, |acl, _| {
        let token = acl.tokens.get(&accessor).ok_or_else(not_found)?;
        Ok(shown(acl, token, &caller))
    })?;
    Ok(Json(json).into_response())
}

/// The caller's own token; needs no permission beyond holding it.
pub(crate) async fn token_self(State(shared): SharedState, Extension(caller): Caller) -> ApiResult {
    let accessor = match caller.identity() {
        Some(identity) => identity.accessor.clone(),
        None => return Err(disabled()),
    };
    let json = with_acl(&shared, false, |acl, _| {
        let token = acl.tokens.get(&accessor).ok_or_else(not_found)?;
        Ok(acl.token_json(token))
    })?;
    Ok(Json(json).into_response())
}

pub(crate) async fn token_list(
    State(shared): SharedState,
    Extension(caller): Caller,
    uri: Uri,
) -> ApiResult {
    caller.check("acl", "", Access::Read)?;
    let params = Params::parse(&uri);
    let policy = params.get("policy").map(str::to_string);
    let list = with_acl(&shared, false, |acl, _| {
        Ok(acl
            .tokens
            .values()
            .filter(|t| policy.as_ref().is_none_or(|p| t.policies.contains(p)))
            .map(|t| {
                let mut json = shown(acl, t, &caller);
                json["Legacy"] = Value::Bool(false);
                json
            })
            .collect::<Vec<_>>())
    })?;
    Ok(Json(list).into_response())
}

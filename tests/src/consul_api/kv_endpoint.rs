//! `/v1/kv/<key>`: GET (single, `?recurse`, `?keys`, `?raw`, blocking), PUT (`flags`,
//! `cas`, `acquire`, `release`) and DELETE (`recurse`, `cas`), answered as Consul does.

use super::acl::{Access, Authz};
use super::blocking::{self, Blocking};
use super::http::{read_body, with_query_meta, ApiError, ApiResult, Params};
use super::json::EntryJson;
use super::state::Shared;
use axum::body::Body;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderValue;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use percent_encoding::percent_decode_str;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

pub(crate) async fn handle(
    State(shared): State<Arc<Shared>>,
    Extension(authz): Extension<Authz>,
    method: Method,
    uri: Uri,
    body: Body,
) -> Response {
    let result = match key_of(&uri) {
        Err(e) => Err(e),
        Ok(key) => {
            let params = Params::parse(&uri);
            match method {
                Method::GET => read(&shared, &authz, key, &params).await,
                Method::PUT => write(&shared, &authz, key, &params, &uri, body).await,
                Method::DELETE => delete(&shared, &authz, key, &params, &uri),
                other => Err(ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("method {other} not allowed"),
                )),
            }
        }
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// The key is the rest of the raw path, percent-decoded, taken as is: keys may start
/// with or contain "/" (`/v1/kv//a` is the key "/a"), which routing must not normalise.
fn key_of(uri: &Uri) -> Result<String, ApiError> {
    let raw = uri.path().strip_prefix("/v1/kv/").unwrap_or("");
    percent_decode_str(raw)
        .decode_utf8()
        .map(|key| key.into_owned())
        .map_err(|_| ApiError::bad_request("Invalid key: not UTF-8"))
}

/// Consul's header on a listing it left entries out of because the token may not read them.
fn mark_filtered(mut response: Response, filtered: bool) -> Response {
    if filtered {
        response.headers_mut().insert(
            "x-consul-results-filtered-by-acls",
            HeaderValue::from_static("true"),
        );
    }
    response
}

async fn read(shared: &Shared, authz: &Authz, key: String, params: &Params) -> ApiResult {
    let blocking = Blocking::from_params(params)?;
    let readable = |k: &str| authz.allows("key", k, Access::Read);
    if params.has("keys") {
        // Consul accepts its historical misspelling too; the correct one wins.
        let separator = params
            .get("separator")
            .or_else(|| params.get("seperator"))
            .unwrap_or("")
            .to_string();
        return Ok(blocking::answer(
            shared,
            blocking,
            |store| store.kv.prefix_index(&key),
            |store, index| {
                // Consul filters a listing by read permission (unless the agent enables
                // `acl.enable_key_list_policy`, which this implementation does not).
                let mut filtered = false;
                let visible = store.kv.list(&key).map(|e| e.key.as_str()).filter(|k| {
                    let ok = readable(k);
                    filtered |= !ok;
                    ok
                });
                let keys = list_keys(visible, &key, &separator);
                // The root answers an empty list; any other prefix 404s when empty.
                let response = if keys.is_empty() && !key.is_empty() {
                    StatusCode::NOT_FOUND.into_response()
                } else {
                    Json(keys).into_response()
                };
                mark_filtered(
                    with_query_meta(response, index, store.leader),
                    filtered && authz.reports_filtering(),
                )
            },
        )
        .await);
    }
    if params.has("recurse") {
        return Ok(blocking::answer(
            shared,
            blocking,
            |store| store.kv.prefix_index(&key),
            |store, index| {
                let mut filtered = false;
                let entries: Vec<EntryJson> = store
                    .kv
                    .list(&key)
                    .filter(|e| {
                        let ok = readable(&e.key);
                        filtered |= !ok;
                        ok
                    })
                    .map(|e| EntryJson::new(e, true))
                    .collect();
                let response = if entries.is_empty() {
                    StatusCode::NOT_FOUND.into_response()
                } else {
                    Json(entries).into_response()
                };
                mark_filtered(
                    with_query_meta(response, index, store.leader),
                    filtered && authz.reports_filtering(),
                )
            },
        )
        .await);
    }
    if key.is_empty() {
        return Err(ApiError::bad_request("Missing key name"));
    }
    authz.check("key", &key, Access::Read)?;
    let raw = params.has("raw");
    Ok(blocking::answer(
        shared,
        blocking,
        |store| store.kv.key_index(&key),
        |store, index| {
            let response = match store.kv.get(&key) {
                None => StatusCode::NOT_FOUND.into_response(),
                // Consul's raw answers are plain text, never sniffed.
                Some(entry) if raw => (
                    [
                        (CONTENT_TYPE, "text/plain"),
                        (axum::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                    ],
                    entry.value.clone(),
                )
                    .into_response(),
                Some(entry) => Json([EntryJson::new(entry, true)]).into_response(),
            };
            with_query_meta(response, index, store.leader)
        },
    )
    .await)
}

/// Consul's key listing: with a separator, each key is cut after the first separator
/// that follows the prefix, and the cut keys are de-duplicated.
fn list_keys<'a>(
    keys: impl Iterator<Item = &'a str>,
    prefix: &str,
    separator: &str,
) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for key in keys {
        if separator.is_empty() {
            out.push(key.to_string());
            continue;
        }
        match key[prefix.len()..].find(separator) {
            Some(at) => {
                let cut = &key[..prefix.len() + at + separator.len()];
                if seen.insert(cut.to_string()) {
                    out.push(cut.to_string());
                }
            }
            None => out.push(key.to_string()),
        }
    }
    out
}

/// What a PUT does, chosen by its query flags.
enum Put {
    Set,
    Cas(u64),
    Acquire(String),
    Release(String),
}

async fn write(
    shared: &Shared,
    authz: &Authz,
    key: String,
    params: &Params,
    uri: &Uri,
    body: Body,
) -> ApiResult {
    if key.is_empty() {
        return Err(ApiError::bad_request("Missing key name"));
    }
    authz.check("key", &key, Access::Write)?;
    conflicting_flags(params, uri, &["cas", "acquire", "release"])?;
    let flags = params.get_u64("flags")?.unwrap_or(0);
    let mut op = Put::Set;
    if let Some(cas) = params.get_u64("cas")? {
        op = Put::Cas(cas);
    }
    if let Some(session) = params.get("acquire") {
        op = Put::Acquire(session.to_string());
    }
    if let Some(session) = params.get("release") {
        op = Put::Release(session.to_string());
    }
    let value = read_body(body).await?;
    let limit = shared.config.kv_max_value_size;
    if value.len() > limit {
        return Err(ApiError::too_large(format!(
            "Request body({} bytes) too large, max size: {limit} bytes",
            value.len()
        )));
    }
    let value = value.to_vec();
    let now = Instant::now();
    let outcome = shared.update(|store| {
        // Lock delay is checked on the leader before Raft: a refused acquire takes no index.
        if matches!(op, Put::Acquire(_)) && store.kv.lock_delayed(&key, now) {
            return Ok(false);
        }
        let index = store.next_index();
        match &op {
            Put::Set => {
                store.kv.set(index, &key, value, flags);
                Ok(true)
            }
            Put::Cas(cas) => Ok(store.kv.cas(index, &key, value, flags, *cas).is_some()),
            Put::Acquire(session) => {
                store
                    .check_lock_session(session)
                    .map_err(ApiError::internal)?;
                Ok(store.kv.lock(index, &key, value, flags, session).is_some())
            }
            Put::Release(session) => {
                if session.is_empty() {
                    return Err(ApiError::internal("missing session"));
                }
                Ok(store
                    .kv
                    .unlock(index, &key, value, flags, session)
                    .is_some())
            }
        }
    })?;
    Ok(Json(outcome).into_response())
}

fn delete(shared: &Shared, authz: &Authz, key: String, params: &Params, uri: &Uri) -> ApiResult {
    conflicting_flags(params, uri, &["recurse", "cas"])?;
    let recurse = params.has("recurse");
    if key.is_empty() && !recurse {
        return Err(ApiError::bad_request("Missing key name"));
    }
    if recurse {
        authz.check_key_write_prefix(&key)?;
    } else {
        authz.check("key", &key, Access::Write)?;
    }
    let cas = params.get_u64("cas")?;
    let outcome = shared.update(|store| {
        let index = store.next_index();
        match cas {
            Some(cas) => store.kv.delete_cas(index, &key, cas),
            None if recurse => {
                store.kv.delete_tree(index, &key);
                true
            }
            None => {
                store.kv.delete(index, &key);
                true
            }
        }
    });
    Ok(Json(outcome).into_response())
}

fn conflicting_flags(params: &Params, uri: &Uri, flags: &[&str]) -> Result<(), ApiError> {
    if flags.iter().filter(|flag| params.has(flag)).count() > 1 {
        return Err(ApiError::bad_request(format!(
            "Conflicting flags: {}\n",
            uri.query().unwrap_or("")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cut_at_the_first_separator_after_the_prefix() {
        let keys = ["a/b", "a/c/d", "a/c/e", "a/f/g/h", "a/x"];
        assert_eq!(
            list_keys(keys.into_iter(), "a/", "/"),
            ["a/b", "a/c/", "a/f/", "a/x"]
        );
        assert_eq!(list_keys(keys.into_iter(), "a/", ""), keys);
        assert_eq!(list_keys(keys.into_iter(), "", "/"), ["a/"]);
    }

    #[test]
    fn keys_are_percent_decoded_from_the_raw_path() {
        let uri: Uri = "/v1/kv//a%20b%2Fc?raw".parse().unwrap();
        assert_eq!(key_of(&uri).unwrap(), "/a b/c");
    }
}

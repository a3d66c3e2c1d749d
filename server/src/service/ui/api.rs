//! The JSON the web page reads under `/api/v1`: the overview it polls (built from the same
//! in-memory state as `/status`, never from the backend), and on-demand Git reads.
//!
//! Cost matters because the page may stay open on many laptops: the overview costs what
//! `/status` costs plus one commit read per new area tip (cached); Git walks happen only
//! when someone opens an area or a key. Values leave the process only with
//! `server.ui_show_values`.

use super::{secure, UiContext};
use crate::config::AreaConfig;
use crate::engine::git::GitError;
use crate::engine::log::{self, LogError};
use crate::engine::now_unix;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use gitstore::ObjectId;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Commit summaries kept for the overview; past this the cache starts over (a few areas'
/// tips are all it needs at any time).
const BRIEF_CACHE: usize = 1024;
/// Commits of an area listed by default, and at most.
const COMMITS_DEFAULT: usize = 20;
const COMMITS_MAX: usize = 200;
/// How far back an area's commit list looks: other areas' commits are in between, and a
/// page must not walk a long history to fill its list.
const COMMITS_SCAN: usize = 2000;
/// A key's history entries by default, and at most.
const HISTORY_DEFAULT: usize = 50;
const HISTORY_MAX: usize = 500;
/// The longest value sent for display (with `ui_show_values`); longer ones are cut and say so.
const VALUE_MAX: usize = 64 * 1024;

/// The page's reads and their small cache.
pub struct Api {
    ctx: UiContext,
    /// Commit id -> (time, summary) of area tips already read.
    briefs: Mutex<HashMap<ObjectId, Brief>>,
}

/// What the overview shows of a commit.
#[derive(Debug, Clone, Serialize)]
struct Brief {
    id: String,
    /// Author time, unix seconds.
    time: i64,
    summary: String,
}

type Shared = State<Arc<Api>>;

impl Api {
    pub fn new(ctx: UiContext) -> Api {
        Api {
            ctx,
            briefs: Mutex::new(HashMap::new()),
        }
    }

    fn show_values(&self) -> bool {
        self.ctx.engine.cfg.server.ui_show_values
    }

    /// Summaries of `ids`, read from Git only for the ones not seen before.
    async fn briefs(&self, ids: &[ObjectId]) -> HashMap<ObjectId, Brief> {
        let (mut known, missing) = {
            let cache = self.briefs.lock().unwrap_or_else(PoisonError::into_inner);
            let mut known = HashMap::new();
            let mut missing = Vec::new();
            for id in ids {
                match cache.get(id) {
                    Some(b) => {
                        known.insert(*id, b.clone());
                    }
                    None => missing.push(*id),
                }
            }
            (known, missing)
        };
        if missing.is_empty() {
            return known;
        }
        let read = self
            .ctx
            .engine
            .git_blocking(move |git| -> Result<_, GitError> {
                let mut out = Vec::new();
                for id in missing {
                    let info = git.commit_info(id)?;
                    out.push(Brief {
                        id: id.to_string(),
                        time: info.time,
                        summary: info.summary().to_string(),
                    });
                }
                Ok(out)
            })
            .await;
        match read {
            Ok(read) => {
                let mut cache = self.briefs.lock().unwrap_or_else(PoisonError::into_inner);
                if cache.len() + read.len() > BRIEF_CACHE {
                    cache.clear();
                }
                for b in read {
                    if let Ok(id) = ObjectId::from_hex(b.id.as_bytes()) {
                        cache.insert(id, b.clone());
                        known.insert(id, b);
                    }
                }
            }
            // The overview still answers; the page shows the bare id.
            Err(e) => {
                tracing::debug!(error = %crate::errors::chain(&e), "web page: cannot read a commit summary")
            }
        }
        known
    }

    fn area(&self, name: &str) -> Option<&AreaConfig> {
        self.ctx.engine.cfg.areas.iter().find(|a| a.name.0 == name)
    }
}

/// A JSON answer with the page's headers; never cached (it is live state).
fn reply(code: StatusCode, body: Value) -> Response {
    let mut response = (code, Json(body)).into_response();
    let headers = response.headers_mut();
    secure(headers);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn error(code: StatusCode, message: String) -> Response {
    reply(code, json!({ "error": message }))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `GET /api/v1/overview`: the `/status` document with what the page adds (per area the
/// last commit's time and summary, unpushed commits, the prefix as base64; push and fetch
/// state; the server's clock) and, unless `ui_show_values`, no overwritten values.
pub async fn overview(State(api): Shared) -> Response {
    let mut doc = api.ctx.state.to_json();
    let tips: Vec<ObjectId> = doc["areas"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["last_commit"].as_str())
        .filter_map(|id| ObjectId::from_hex(id.as_bytes()).ok())
        .collect();
    let briefs = api.briefs(&tips).await;
    let show_values = api.show_values();
    if let Some(areas) = doc["areas"].as_array_mut() {
        for area in areas {
            let name = area["area"].as_str().unwrap_or_default().to_string();
            area["unpushed"] = json!(api.ctx.metrics.unpushed_of(&name));
            area["prefix_b64"] = json!(api.area(&name).map(|a| b64(&a.prefix)));
            let brief = area["last_commit"]
                .as_str()
                .and_then(|id| ObjectId::from_hex(id.as_bytes()).ok())
                .and_then(|id| briefs.get(&id));
            area["last_commit_info"] = json!(brief);
            if let Some(conflicts) = area["last_conflicts"].as_array_mut() {
                for c in conflicts {
                    let key = c["key"].as_str().unwrap_or_default().as_bytes().to_vec();
                    c["key_b64"] = json!(b64(&key));
                    if !show_values {
                        c["overwritten"] = Value::Null;
                    }
                }
            }
        }
    }
    let cfg = &api.ctx.engine.cfg;
    let (fetch_ok, fetch_error) = api.ctx.metrics.fetch_counts();
    let last_push = api.ctx.metrics.last_push_success_at();
    doc["ui"] = json!({
        "show_values": show_values,
        "remote": cfg.git.remote.is_some(),
        "token_required": cfg.server.sync_token.is_some() || cfg.server.webhook_secret.is_some(),
    });
    doc["push"] = json!({ "last_success": (last_push > 0.0).then_some(last_push) });
    doc["fetch"] = json!({ "ok": fetch_ok, "error": fetch_error });
    doc["now"] = json!(now_unix());
    reply(StatusCode::OK, doc)
}

#[derive(Debug, Deserialize)]
pub struct CommitsQuery {
    limit: Option<usize>,
}

/// One commit in an area's list.
#[derive(Debug, Serialize)]
struct AreaCommit {
    id: String,
    time: i64,
    author_name: String,
    summary: String,
}

/// `GET /api/v1/areas/{area}/commits?limit=N`: the branch's latest commits that changed the
/// area's directory, newest first along the first parent, looking back at most
/// [`COMMITS_SCAN`] commits.
pub async fn area_commits(
    State(api): Shared,
    Path(name): Path<String>,
    Query(q): Query<CommitsQuery>,
) -> Response {
    let Some(area) = api.area(&name) else {
        return error(StatusCode::NOT_FOUND, format!("no area named {name:?}"));
    };
    let limit = q.limit.unwrap_or(COMMITS_DEFAULT).clamp(1, COMMITS_MAX);
    let path = area.path.clone();
    let walked = api
        .ctx
        .engine
        .git_blocking(move |git| -> Result<_, GitError> {
            let mut out = Vec::new();
            let mut next = git.tip()?;
            let mut scanned = 0;
            while let Some(id) = next {
                if out.len() >= limit || scanned >= COMMITS_SCAN {
                    break;
                }
                scanned += 1;
                let info = git.commit_info(id)?;
                let here = git.subtree(info.tree, &path)?;
                let parent = info.parents.first().copied();
                let before = match parent {
                    Some(p) => git.subtree(git.commit_info(p)?.tree, &path)?,
                    None => None,
                };
                if here != before {
                    out.push(AreaCommit {
                        id: id.to_string(),
                        time: info.time,
                        author_name: info.author_name.clone(),
                        summary: info.summary().to_string(),
                    });
                }
                next = parent;
            }
            let more = next.is_some() && out.len() < limit;
            Ok((out, scanned, more))
        })
        .await;
    match walked {
        Ok((commits, scanned, more)) => reply(
            StatusCode::OK,
            json!({ "area": name, "commits": commits, "scanned": scanned, "scan_limit_reached": more }),
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("area {name:?}: {}", crate::errors::chain(&e)),
        ),
    }
}

#[derive(Debug, Deserialize)]
pub struct KeyQuery {
    area: Option<String>,
    key_b64: String,
    limit: Option<usize>,
}

/// `GET /api/v1/key?area=A&key_b64=K&limit=N`: the commits that changed one key (the whole
/// key, base64), newest first; with `ui_show_values`, each entry's value too.
pub async fn key_history(State(api): Shared, Query(q): Query<KeyQuery>) -> Response {
    let Some(key) = decode_b64(&q.key_b64) else {
        return error(StatusCode::BAD_REQUEST, "key_b64 is not base64".to_string());
    };
    let area = match &q.area {
        Some(name) => match api.area(name) {
            Some(a) if key.starts_with(&a.prefix) => a,
            Some(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("the key is not under the prefix of area {name:?}"),
                )
            }
            None => return error(StatusCode::NOT_FOUND, format!("no area named {name:?}")),
        },
        None => match api.ctx.engine.cfg.area_of_key(&key) {
            Some(a) => a,
            None => {
                return error(
                    StatusCode::NOT_FOUND,
                    "the key is under no configured area".to_string(),
                )
            }
        },
    };
    let limit = q.limit.unwrap_or(HISTORY_DEFAULT).clamp(1, HISTORY_MAX);
    let history = match log::history(&api.ctx.engine, area, &key, Some(limit)).await {
        Ok(h) => h,
        Err(e) => return history_error(&area.name.0, &e),
    };
    let show_values = api.show_values();
    let blobs: Vec<Option<ObjectId>> = history.entries.iter().map(|e| e.blob).collect();
    let values = if show_values {
        let read = api
            .ctx
            .engine
            .git_blocking(move |git| -> Result<_, GitError> {
                blobs
                    .into_iter()
                    .map(|b| b.map(|b| git.read_blob(b)).transpose())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(GitError::from)
            })
            .await;
        match read {
            Ok(v) => v,
            Err(e) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("area {:?}: {}", area.name.0, crate::errors::chain(&e)),
                )
            }
        }
    } else {
        Vec::new()
    };
    let entries: Vec<Value> = history
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut entry = json!({
                "commit": e.commit.to_string(),
                "time": e.time,
                "author_name": e.author_name,
                "author_email": e.author_email,
                "summary": e.summary,
                "size": e.size,
                "deleted": e.size.is_none(),
            });
            if let Some(Some(value)) = values.get(i) {
                entry["value"] = shown_value(value);
            }
            entry
        })
        .collect();
    reply(
        StatusCode::OK,
        json!({
            "area": area.name.0,
            "key": history.key,
            "key_b64": b64(&key),
            "show_values": show_values,
            "entries": entries,
        }),
    )
}

/// A value for display: as text when it is UTF-8, else base64; cut at [`VALUE_MAX`].
fn shown_value(value: &[u8]) -> Value {
    let cut = &value[..value.len().min(VALUE_MAX)];
    let text = match std::str::from_utf8(cut) {
        Ok(t) => Some(t.to_string()),
        // A cut in the middle of a character is still text.
        Err(e) if cut.len() < value.len() && e.error_len().is_none() => {
            Some(String::from_utf8_lossy(&cut[..e.valid_up_to()]).into_owned())
        }
        Err(_) => None,
    };
    json!({
        "text": text,
        "b64": if text.is_none() { Some(b64(cut)) } else { None },
        "size": value.len(),
        "truncated": cut.len() < value.len(),
    })
}

fn history_error(area: &str, e: &LogError) -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("area {area:?}: {}", crate::errors::chain(e)),
    )
}

/// Standard or URL-safe base64, padded or not: whatever a link or a hand-made URL carries.
fn decode_b64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(s.trim()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_text_or_base64_and_cut() {
        let v = shown_value(b"hello");
        assert_eq!(v["text"], "hello");
        assert_eq!(v["b64"], Value::Null);
        let v = shown_value(&[0xff, 0xfe]);
        assert_eq!(v["text"], Value::Null);
        assert_eq!(v["b64"], "//4=");
        let long = "é".repeat(VALUE_MAX);
        let v = shown_value(long.as_bytes());
        assert_eq!(v["truncated"], true);
        assert!(v["text"].as_str().is_some_and(|t| t.len() <= VALUE_MAX));
    }

    #[test]
    fn keys_decode_from_either_alphabet() {
        assert_eq!(decode_b64("/w==").as_deref(), Some(&[0xff][..]));
        assert_eq!(decode_b64("_w").as_deref(), Some(&[0xff][..]));
        assert_eq!(decode_b64("not base64!"), None);
    }
}

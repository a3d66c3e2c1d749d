//! Sessions: creation with Consul's validation, TTL renewal, and invalidation (destroy or
//! TTL expiry) that releases or deletes every key the session holds and starts each key's
//! lock delay. One task keeps the TTL timers, as Consul's leader does.

use super::duration;
use super::http::ApiError;
use super::state::{Shared, Store};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TTL_MIN: Duration = Duration::from_secs(10);
const TTL_MAX: Duration = Duration::from_secs(24 * 60 * 60);
/// Consul's `SessionTTLMultiplier`: a session is invalidated only when not renewed within
/// twice its TTL, the grace period its docs promise.
const TTL_MULTIPLIER: u32 = 2;
const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);
/// Consul reads a `LockDelay` below this many nanoseconds as seconds (people send `15`).
const LOCK_DELAY_SECONDS_BELOW: i128 = 1000;

/// What happens to held keys when the session is invalidated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Behavior {
    Release,
    Delete,
}

impl Behavior {
    pub fn as_str(self) -> &'static str {
        match self {
            Behavior::Release => "release",
            Behavior::Delete => "delete",
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Session {
    pub id: String,
    pub name: String,
    pub node: String,
    pub lock_delay: Duration,
    pub behavior: Behavior,
    /// As the client sent it ("10s"); Consul echoes the string back.
    pub ttl: String,
    ttl_duration: Option<Duration>,
    pub create_index: u64,
    pub modify_index: u64,
    /// When the TTL timer fires, if the session has a TTL.
    expires_at: Option<Instant>,
}

impl Session {
    fn restart_timer(&mut self, now: Instant) {
        self.expires_at = self.ttl_duration.map(|ttl| now + ttl * TTL_MULTIPLIER);
    }
}

/// A validated `/v1/session/create` body.
#[derive(Debug)]
pub(crate) struct SessionSpec {
    name: String,
    node: Option<String>,
    ttl: String,
    ttl_duration: Option<Duration>,
    behavior: Behavior,
    lock_delay: Duration,
}

impl SessionSpec {
    /// Parses the optional JSON body. Field names match case-insensitively, as Go's decoder
    /// does. A body that does not decode is a 400; a bad TTL or behavior is the server's
    /// error, which Consul answers with a 500.
    pub fn parse(body: &[u8]) -> Result<SessionSpec, ApiError> {
        let decode_failed =
            |why: String| ApiError::bad_request(format!("Request decode failed: {why}"));
        let fields = if body.iter().all(u8::is_ascii_whitespace) {
            Map::new()
        } else {
            match serde_json::from_slice::<Value>(body).map_err(|e| decode_failed(e.to_string()))? {
                Value::Object(map) => map,
                Value::Null => Map::new(),
                other => return Err(decode_failed(format!("expected an object, got {other}"))),
            }
        };
        let text = |name: &str| -> Result<Option<String>, ApiError> {
            match field(&fields, name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(decode_failed(format!(
                    "{name}: expected a string, got {other}"
                ))),
            }
        };
        let lock_delay = match field(&fields, "LockDelay") {
            None | Some(Value::Null) => DEFAULT_LOCK_DELAY,
            Some(Value::String(s)) => lock_delay(duration::parse(s).map_err(decode_failed)?),
            Some(Value::Number(n)) => lock_delay(n.as_f64().unwrap_or(0.0) as i128),
            Some(other) => return Err(decode_failed(format!("LockDelay: unexpected {other}"))),
        };
        let behavior = match text("Behavior")?.as_deref() {
            None | Some("") | Some("release") => Behavior::Release,
            Some("delete") => Behavior::Delete,
            Some(other) => {
                return Err(ApiError::internal(format!(
                    "Invalid Behavior setting '{other}'"
                )))
            }
        };
        let ttl = text("TTL")?.unwrap_or_default();
        let ttl_duration = if ttl.is_empty() {
            None
        } else {
            let nanos = duration::parse(&ttl)
                .map_err(|e| ApiError::internal(format!("Session TTL '{ttl}' invalid: {e}")))?;
            let valid = nanos == 0
                || (TTL_MIN.as_nanos() as i128..=TTL_MAX.as_nanos() as i128).contains(&nanos);
            if !valid {
                // Consul formats the TTL with %d: nanoseconds.
                return Err(ApiError::internal(format!(
                    "Invalid Session TTL '{nanos}', must be between [10s=24h0m0s]"
                )));
            }
            (nanos != 0).then(|| duration::to_std(nanos))
        };
        Ok(SessionSpec {
            name: text("Name")?.unwrap_or_default(),
            node: text("Node")?.filter(|n| !n.is_empty()),
            ttl,
            ttl_duration,
            behavior,
            lock_delay,
        })
    }
}

fn lock_delay(nanos: i128) -> Duration {
    if nanos < LOCK_DELAY_SECONDS_BELOW {
        Duration::from_secs(u64::try_from(nanos.max(0)).unwrap_or(0))
    } else {
        duration::to_std(nanos)
    }
}

/// A JSON object field by exact name, else case-insensitively (Go's `encoding/json` rule).
pub(crate) fn field<'a>(fields: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    fields.get(name).or_else(|| {
        fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

/// The session table, sorted by ID as Consul lists it.
#[derive(Default)]
pub(crate) struct Sessions {
    by_id: BTreeMap<String, Session>,
    /// The last index at which a session was created or destroyed.
    table_index: u64,
}

impl Sessions {
    pub fn get(&self, id: &str) -> Option<&Session> {
        self.by_id.get(id)
    }

    pub fn list(&self) -> impl Iterator<Item = &Session> {
        self.by_id.values()
    }

    pub fn table_index(&self) -> u64 {
        self.table_index
    }
}

impl Store {
    /// Creates a session at a new index; its TTL timer starts now.
    pub fn create_session(
        &mut self,
        spec: SessionSpec,
        node: &str,
        now: Instant,
    ) -> Result<String, ApiError> {
        if spec.node.as_deref().is_some_and(|n| n != node) {
            return Err(ApiError::internal("Missing node registration"));
        }
        let index = self.next_index();
        let mut id = super::ids::uuid();
        while self.sessions.by_id.contains_key(&id) {
            id = super::ids::uuid();
        }
        let mut session = Session {
            id: id.clone(),
            name: spec.name,
            node: node.to_string(),
            lock_delay: spec.lock_delay,
            behavior: spec.behavior,
            ttl: spec.ttl,
            ttl_duration: spec.ttl_duration,
            create_index: index,
            modify_index: index,
            expires_at: None,
        };
        session.restart_timer(now);
        self.sessions.by_id.insert(id.clone(), session);
        self.sessions.table_index = index;
        Ok(id)
    }

    /// The session checks of Consul's lock, made when it applies: present and known.
    pub fn check_lock_session(&self, session: &str) -> Result<(), String> {
        if session.is_empty() {
            return Err("missing session".to_string());
        }
        if self.sessions.get(session).is_none() {
            return Err(format!("invalid session {session:?}"));
        }
        Ok(())
    }

    /// Restarts the TTL timer; `None` when the session is unknown or already invalidated.
    /// Not a Raft write in Consul, so no index is taken.
    pub fn renew_session(&mut self, id: &str, now: Instant) -> Option<Session> {
        let session = self.sessions.by_id.get_mut(id)?;
        session.restart_timer(now);
        Some(session.clone())
    }

    /// Destroys (invalidates) a session; `false` when there was none.
    pub fn destroy_session(&mut self, id: &str, now: Instant) -> bool {
        let Some(session) = self.sessions.by_id.remove(id) else {
            return false;
        };
        let index = self.next_index();
        self.sessions.table_index = index;
        for key in self.kv.held_by(&session.id) {
            match session.behavior {
                Behavior::Release => self.kv.force_release(index, &key),
                Behavior::Delete => self.kv.delete(index, &key),
            }
            if !session.lock_delay.is_zero() {
                self.kv.set_lock_delay(&key, now + session.lock_delay);
            }
        }
        true
    }

    /// Invalidates every session whose timer has fired, each at its own index.
    fn expire_sessions(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .sessions
            .list()
            .filter(|s| s.expires_at.is_some_and(|at| at <= now))
            .map(|s| s.id.clone())
            .collect();
        for id in expired {
            self.destroy_session(&id, now);
        }
    }

    fn next_session_expiry(&self) -> Option<Instant> {
        self.sessions.list().filter_map(|s| s.expires_at).min()
    }

    /// A newly elected Consul leader starts every session's TTL timer afresh.
    pub fn restart_session_timers(&mut self, now: Instant) {
        for session in self.sessions.by_id.values_mut() {
            session.restart_timer(now);
        }
    }
}

/// Expires sessions for as long as the server runs. Without a leader nothing expires,
/// as in Consul, where only the leader runs session timers.
pub(crate) async fn run_timers(shared: Arc<Shared>) {
    loop {
        let next = shared.update(|store| {
            if !store.leader {
                return None;
            }
            store.expire_sessions(Instant::now());
            store.next_session_expiry()
        });
        // `notify_one` keeps a permit when nobody waits, so a create between the update
        // above and this wait is not missed.
        let notified = shared.session_timers.notified();
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = notified => {}
                }
            }
            None => notified.await,
        }
    }
}

//! What `serve` knows about itself right now: per area its progress and errors, and whether
//! the backend answers. The sync tasks write it; `/status` and `/readyz` read it.

use super::gitlock::GitLock;
use crate::config::Config;
use crate::engine::status::{self, Status};
use serde_json::Value as Json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use sync_core::Revision;

/// How long past `batch_window` an uncommitted event may wait before the area counts as
/// unable to commit (a hung Git lock, a disk that does not answer): long enough for a
/// large commit, short enough that a probe notices within seconds.
const STALL_GRACE: Duration = Duration::from_secs(10);

/// The live status of one area, as `/status` reports it.
#[derive(Debug, Clone, Default)]
pub struct AreaStatus {
    /// `kv-to-git`, `git-to-kv` or `both`, as configured.
    pub mode: String,
    /// The KV prefix the area covers.
    pub prefix: String,
    /// The directory in the repository the area covers.
    pub path: String,
    /// The backend revision of the last checkpoint; `None` before the first one.
    pub checkpoint: Option<u64>,
    /// The Git commit the checkpoint agrees with (the sync rule's base).
    pub base_commit: Option<String>,
    /// The node that owns the area's writes, when ownership is known.
    pub owner: Option<String>,
    /// Whether that node is this one.
    pub owned_here: bool,
    /// Events seen on the watch and not yet committed.
    pub pending_events: u64,
    /// When the oldest of those events arrived: the lag is measured from it.
    pub oldest_pending: Option<Instant>,
    /// Keys whose live value differs from Git.
    pub drift: u64,
    /// The batcher has caught up with the backend once (first export done): only then
    /// may Git be applied on top of what it committed.
    pub caught_up: bool,
    /// An apply of Git to the KV store has completed with no key raced.
    pub applied_once: bool,
    /// The first sync of the area has completed; `/readyz` waits for every area's.
    pub ready: bool,
    /// The last error of the area's loop, cleared by the next success.
    pub last_error: Option<String>,
    /// A mass-delete refusal: reported, not retried, until someone acts.
    pub refused: Option<String>,
    /// A KV -> Git batch held back by the mass-delete guard: not committed (SPEC).
    pub held: Option<String>,
    /// Why the last apply of Git to this area could not even be planned (a file that maps
    /// to no key, a value over the backend's limit, the backend failing).
    pub apply_error: Option<String>,
    /// Why the area last started over from a full read (an untrusted or compacted
    /// checkpoint), and how often that happened since the start.
    pub last_resync: Option<String>,
    pub resyncs: u64,
    /// Files of the area in Git that map to no key (e.g. a hand-written `%ZZ`): left as
    /// they are, recorded around, and listed here until someone fixes them.
    pub unmapped_files: Vec<String>,
    /// The last commit written for the area.
    pub last_commit: Option<String>,
    /// Keys whose live value Git overwrote in the last apply, with the value lost:
    /// a conflict must be visible somewhere besides the log.
    pub last_conflicts: Vec<(String, String)>,
}

impl AreaStatus {
    /// Nothing to wait for here: another node owns the area, or this node has synced it and
    /// can commit its changes now.
    pub fn settled(&self, now: Instant, stall_after: Duration) -> bool {
        self.blocker(now, stall_after).is_none()
    }

    /// What keeps this area from being in sync here, for `/readyz` and `/status`.
    pub fn blocker(&self, now: Instant, stall_after: Duration) -> Option<String> {
        if self.owner.is_some() && !self.owned_here {
            return None;
        }
        if let Some(e) = &self.last_error {
            return Some(format!("cannot sync: {e}"));
        }
        if let Some(e) = &self.apply_error {
            return Some(format!("cannot apply Git: {e}"));
        }
        if let Some(h) = &self.held {
            return Some(format!("mass delete held back: {h}"));
        }
        if !self.ready {
            return Some("first sync not completed".into());
        }
        let lag = self.lag_seconds(now);
        if lag > stall_after.as_secs_f64() {
            return Some(format!("changes waiting {lag:.0}s for their commit"));
        }
        None
    }

    /// Seconds since the oldest uncommitted event arrived, 0 when there is none.
    pub fn lag_seconds(&self, now: Instant) -> f64 {
        self.oldest_pending
            .map(|t| now.saturating_duration_since(t).as_secs_f64())
            .unwrap_or(0.0)
    }
}

/// The shared status of the service, one per process, behind an `Arc`.
pub struct ServiceState {
    /// This node's name (`Kvgit-Node`), so a status page says which node answered.
    node: String,
    /// The Git branch the service commits to.
    branch: String,
    /// This build's version, for the same reason as `kvgit_build_info`.
    version: &'static str,
    /// Whether the backend answered the last health probe: `/readyz` fails while it does not.
    backend_ok: AtomicBool,
    /// What the backend last answered when it failed, for `/status`.
    backend_error: Mutex<Option<String>>,
    /// `backend.kind`, and the revision the health probe last read (0: none yet).
    backend_kind: &'static str,
    backend_revision: AtomicU64,
    /// An event older than this (batch window + grace) means the area cannot commit.
    stall_after: Duration,
    /// The Git lock, so a stalled area can say who holds it.
    git_lock: Option<Arc<GitLock>>,
    /// `server.ui_show_values`: `/status` has no token, and values may be secrets, so the
    /// live values Git overwrote are shown only when the operator says so.
    show_values: bool,
    /// The last error of the fetch/apply loop (not per area: one fetch serves all).
    sync_error: Mutex<Option<String>>,
    /// The last push error: an unreachable remote only delays pushes, so it is reported
    /// here and does not make the service unready.
    push_error: Mutex<Option<String>>,
    /// Areas in config order, so `/status` lists them as the config does. A Vec, not a
    /// map: there are a handful of areas and the order matters more than lookup speed.
    areas: Mutex<Vec<(String, AreaStatus)>>,
}

/// Locks a mutex of plain status values. A panic in some updater must not take `/status`
/// down with it: the data is still worth reporting, so a poisoned lock is used as is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ServiceState {
    /// The state of a service running `cfg`: every configured area, not ready yet.
    pub fn new(cfg: &Config) -> ServiceState {
        let areas = cfg.areas.iter().map(|a| {
            let status = AreaStatus {
                mode: a.rule.mode.as_str().to_string(),
                // Prefixes are bytes; status is for people, so show them lossily.
                prefix: String::from_utf8_lossy(&a.prefix).into_owned(),
                path: a.path.clone(),
                ..AreaStatus::default()
            };
            (a.name.0.clone(), status)
        });
        let mut state =
            ServiceState::with_areas(cfg.sync.node.clone(), cfg.git.branch.clone(), areas);
        state.stall_after = cfg.sync.batch_window + STALL_GRACE;
        state.backend_kind = cfg.backend.kind_name();
        state.show_values = cfg.server.ui_show_values;
        state
    }

    /// Reports the holder of `lock` when an area waits for its commit.
    pub fn with_git_lock(mut self, lock: Arc<GitLock>) -> ServiceState {
        self.git_lock = Some(lock);
        self
    }

    /// A state for `areas` (name and initial status, in config order). The backend counts
    /// as down until someone says otherwise, so `/readyz` never passes before a first contact.
    pub fn with_areas(
        node: impl Into<String>,
        branch: impl Into<String>,
        areas: impl IntoIterator<Item = (String, AreaStatus)>,
    ) -> ServiceState {
        ServiceState {
            node: node.into(),
            branch: branch.into(),
            version: env!("CARGO_PKG_VERSION"),
            backend_ok: AtomicBool::new(false),
            backend_error: Mutex::new(None),
            backend_kind: "etcd",
            backend_revision: AtomicU64::new(0),
            stall_after: Duration::from_secs(1) + STALL_GRACE,
            git_lock: None,
            show_values: true,
            sync_error: Mutex::new(None),
            push_error: Mutex::new(None),
            areas: Mutex::new(areas.into_iter().collect()),
        }
    }

    fn areas(&self) -> MutexGuard<'_, Vec<(String, AreaStatus)>> {
        lock(&self.areas)
    }

    /// Changes the status of `area` in place. An unknown area is a bug in the caller: it
    /// fails debug builds and is logged and ignored in release builds.
    pub fn update(&self, area: &str, f: impl FnOnce(&mut AreaStatus)) {
        let mut areas = self.areas();
        match areas.iter_mut().find(|(name, _)| name == area) {
            Some((_, status)) => f(status),
            None => {
                debug_assert!(false, "status update for unknown area {area:?}");
                tracing::warn!(area, "status update for an unknown area ignored");
            }
        }
    }

    /// Whether the batcher of `area` has caught up once (false for an unknown area).
    pub fn caught_up(&self, area: &str) -> bool {
        self.areas()
            .iter()
            .any(|(name, s)| name == area && s.caught_up)
    }

    /// Whether Git was applied to `area` since its task last (re)started.
    pub fn applied_once(&self, area: &str) -> bool {
        self.areas()
            .iter()
            .any(|(name, s)| name == area && s.applied_once)
    }

    /// Records the outcome of the last fetch/apply pass (`None`: it succeeded).
    pub fn set_sync_error(&self, error: Option<String>) {
        *lock(&self.sync_error) = error;
    }

    /// Records the outcome of the last push (`None`: it succeeded or had nothing to do);
    /// says whether the one before had failed.
    pub fn set_push_error(&self, error: Option<String>) -> bool {
        std::mem::replace(&mut *lock(&self.push_error), error).is_some()
    }

    /// Records whether the backend answered.
    pub fn set_backend_ok(&self, ok: bool) {
        self.backend_ok.store(ok, Ordering::Relaxed);
        if ok {
            *lock(&self.backend_error) = None;
        }
    }

    /// The backend's revision, as the health probe read it.
    pub fn set_backend_revision(&self, revision: Revision) {
        self.backend_revision.store(revision.0, Ordering::Relaxed);
    }

    /// Records that the backend failed to answer, and how.
    pub fn set_backend_error(&self, error: String) {
        self.backend_ok.store(false, Ordering::Relaxed);
        *lock(&self.backend_error) = Some(error);
    }

    /// The age of the oldest uncommitted event of every area, for the lag gauge.
    pub fn lags(&self) -> Vec<(String, f64)> {
        let now = Instant::now();
        self.areas()
            .iter()
            .map(|(name, s)| (name.clone(), s.lag_seconds(now)))
            .collect()
    }

    /// Whether the backend answered the last request.
    pub fn backend_ok(&self) -> bool {
        self.backend_ok.load(Ordering::Relaxed)
    }

    /// The areas that are not in sync here, in config order.
    #[cfg(test)]
    pub fn not_ready_areas(&self) -> Vec<String> {
        self.not_ready_reasons()
            .into_iter()
            .map(|(name, _)| name)
            .collect()
    }

    /// The areas that are not in sync here, each with what blocks it.
    pub fn not_ready_reasons(&self) -> Vec<(String, String)> {
        let now = Instant::now();
        let waiting_for = self.lock_holder();
        self.areas()
            .iter()
            .filter_map(|(name, s)| {
                let why = s.blocker(now, self.stall_after)?;
                let why = match (&waiting_for, s.lag_seconds(now) > 0.0) {
                    (Some(holder), true) => format!("{why} ({holder})"),
                    _ => why,
                };
                Some((name.clone(), why))
            })
            .collect()
    }

    /// "the Git lock is held by fetch for 42s", when it has been held for a while.
    fn lock_holder(&self) -> Option<String> {
        let (who, held) = self.git_lock.as_ref()?.holder()?;
        (held > Duration::from_secs(2)).then(|| {
            format!(
                "the Git lock is held by {who} for {:.0}s",
                held.as_secs_f64()
            )
        })
    }

    /// Every area can commit and has synced, and the backend answers (SPEC `/readyz`).
    pub fn ready(&self) -> bool {
        let now = Instant::now();
        self.backend_ok()
            && self
                .areas()
                .iter()
                .all(|(_, s)| s.settled(now, self.stall_after))
    }

    /// The `/status` document: the same type `kvgit status --json` prints, with the
    /// service's live parts filled in and what only a full read can tell left empty.
    pub fn to_status(&self) -> Status {
        let now = Instant::now();
        let backend_ok = self.backend_ok();
        // Copied before the area lock is taken: one lock at a time, no lock order to keep.
        let sync_error = lock(&self.sync_error).clone();
        let push_error = lock(&self.push_error).clone();
        let backend_error = lock(&self.backend_error).clone();
        let waiting_for = self.lock_holder();
        let revision = self.backend_revision.load(Ordering::Relaxed);
        let areas = self.areas();
        let ready = backend_ok && areas.iter().all(|(_, s)| s.settled(now, self.stall_after));
        let list = areas
            .iter()
            .map(|(name, s)| status::AreaStatus {
                area: name.clone(),
                base_commit: s.base_commit.clone(),
                checkpoint: s.checkpoint.map(|r| status::CheckpointStatus {
                    cluster: None,
                    commit: None,
                    distrust: None,
                    node: None,
                    revision: Revision(r),
                    same_cluster: None,
                    trusted: None,
                }),
                drift: Some(s.drift as usize),
                error: None,
                live: Some(status::AreaLive {
                    apply_error: s.apply_error.clone(),
                    blocked: s.blocker(now, self.stall_after),
                    caught_up: s.caught_up,
                    held: s.held.clone(),
                    lag_seconds: s.lag_seconds(now),
                    last_commit: s.last_commit.clone(),
                    last_conflicts: s
                        .last_conflicts
                        .iter()
                        .map(|(key, live)| status::Overwritten {
                            key: key.clone(),
                            overwritten: self.show_values.then(|| live.clone()),
                        })
                        .collect(),
                    last_error: s.last_error.clone(),
                    last_resync: s.last_resync.clone(),
                    owned_here: s.owned_here,
                    ready: s.ready,
                    refused: s.refused.clone(),
                    resyncs: s.resyncs,
                    unmapped_files: s.unmapped_files.clone(),
                }),
                mode: s.mode.clone(),
                owner: s.owner.clone(),
                path: s.path.clone(),
                pending_apply: None,
                pending_events: Some(status::Pending::Keys(s.pending_events as usize)),
                pending_export: None,
                prefix: s.prefix.clone(),
            })
            .collect();
        Status {
            areas: list,
            backend: status::BackendStatus {
                cluster: None,
                kind: self.backend_kind,
                revision: (revision > 0).then_some(Revision(revision)),
            },
            branch: self.branch.clone(),
            node: self.node.clone(),
            service: Some(status::ServiceStatus {
                backend_error,
                backend_ok,
                git_lock: waiting_for,
                push_error,
                ready,
                sync_error,
                version: self.version,
            }),
            tip: None,
        }
    }

    /// [`ServiceState::to_status`] as JSON.
    pub fn to_json(&self) -> Json {
        serde_json::to_value(self.to_status())
            .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn state() -> ServiceState {
        let area = |mode: &str| AreaStatus {
            mode: mode.to_string(),
            prefix: "/p/".to_string(),
            path: "dir".to_string(),
            ..AreaStatus::default()
        };
        ServiceState::with_areas(
            "core-1",
            "main",
            [
                ("a".to_string(), area("both")),
                ("b".to_string(), area("kv-to-git")),
            ],
        )
    }

    #[test]
    fn ready_needs_every_area_and_the_backend() {
        let s = state();
        assert!(!s.ready());
        s.set_backend_ok(true);
        s.update("a", |a| a.ready = true);
        assert!(!s.ready());
        assert_eq!(s.not_ready_areas(), vec!["b".to_string()]);
        s.update("b", |a| a.ready = true);
        assert!(s.ready());
        s.set_backend_ok(false);
        assert!(!s.ready());
    }

    #[test]
    fn json_lists_areas_in_order_with_lag() {
        let s = state();
        s.update("b", |a| {
            a.checkpoint = Some(42);
            a.pending_events = 3;
            a.oldest_pending = Instant::now().checked_sub(Duration::from_secs(2));
            a.refused = Some("would delete 9 of 10 keys".to_string());
        });
        s.update("a", |a| {
            a.caught_up = true;
            a.last_conflicts = vec![("/p/k".to_string(), "old".to_string())];
        });
        s.set_push_error(Some("remote unreachable".to_string()));
        assert!(s.caught_up("a") && !s.caught_up("b") && !s.caught_up("nope"));
        let j = s.to_json();
        assert_eq!(j["push_error"], "remote unreachable");
        assert_eq!(j["sync_error"], Json::Null);
        assert_eq!(j["areas"][0]["last_conflicts"][0]["overwritten"], "old");
        assert_eq!(j["node"], "core-1");
        assert_eq!(j["branch"], "main");
        assert_eq!(j["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(j["ready"], false);
        assert_eq!(j["areas"][0]["area"], "a");
        assert_eq!(j["areas"][0]["lag_seconds"], 0.0);
        assert_eq!(j["areas"][0]["checkpoint"], Json::Null);
        let b = &j["areas"][1];
        assert_eq!(b["area"], "b");
        assert_eq!(b["mode"], "kv-to-git");
        assert_eq!(b["checkpoint"]["revision"], 42);
        assert_eq!(b["pending_events"], 3);
        assert_eq!(b["refused"], "would delete 9 of 10 keys");
        let lag = b["lag_seconds"].as_f64().expect("lag is a number");
        assert!((2.0..60.0).contains(&lag), "lag {lag}");
    }
}

//! Every Prometheus metric `kvgit serve` exports, named once here (SPEC "Metrics": the
//! names are the contract), with typed helpers so callers never spell a name or label value.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use sync_core::{ResyncReason, Revision};

/// Upper bounds of `kvgit_commit_duration_seconds`: a commit of a few keys takes about a
/// millisecond, a resync of a large area can take tens of seconds; roughly 2.5x steps keep
/// the quantile error small across that whole range with few series.
const COMMIT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
];

/// The `op` label of key-level counters: a fixed set of two.
const OP_PUT: &str = "put";
const OP_DELETE: &str = "delete";

/// The outcome of one `git push`, the `result` label of `kvgit_push_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushResult {
    /// The remote took the commits.
    Ok,
    /// The remote moved on (non-fast-forward); the caller replays and pushes again.
    Rejected,
    /// Anything else: unreachable remote, authentication, I/O.
    Error,
}

impl PushResult {
    /// Every value, so each series exists from the first scrape.
    const ALL: [PushResult; 3] = [PushResult::Ok, PushResult::Rejected, PushResult::Error];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            PushResult::Ok => "ok",
            PushResult::Rejected => "rejected",
            PushResult::Error => "error",
        }
    }
}

/// Who sent a `POST /sync`, the `source` label of `kvgit_webhook_total`: told by the
/// credential header the request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookSource {
    /// `X-Hub-Signature-256` (GitHub).
    Github,
    /// `X-Gitea-Signature` (Gitea, Forgejo).
    Gitea,
    /// `X-Gitlab-Token` (GitLab).
    Gitlab,
    /// `Authorization: Bearer` (an operator, a script).
    Bearer,
    /// No credential header.
    Unknown,
}

impl WebhookSource {
    /// Every value, so each series exists from the first scrape.
    const ALL: [WebhookSource; 5] = [
        WebhookSource::Github,
        WebhookSource::Gitea,
        WebhookSource::Gitlab,
        WebhookSource::Bearer,
        WebhookSource::Unknown,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            WebhookSource::Github => "github",
            WebhookSource::Gitea => "gitea",
            WebhookSource::Gitlab => "gitlab",
            WebhookSource::Bearer => "bearer",
            WebhookSource::Unknown => "unknown",
        }
    }
}

/// What became of a `POST /sync`, the `result` label of `kvgit_webhook_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookResult {
    /// Authenticated: a sync was requested (202).
    Accepted,
    /// No valid credential (401), or a body that could not be read.
    Rejected,
    /// A body over the limit (413), refused before it was read whole.
    TooLarge,
}

impl WebhookResult {
    /// Every value, so each series exists from the first scrape.
    const ALL: [WebhookResult; 3] = [
        WebhookResult::Accepted,
        WebhookResult::Rejected,
        WebhookResult::TooLarge,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            WebhookResult::Accepted => "accepted",
            WebhookResult::Rejected => "rejected",
            WebhookResult::TooLarge => "too_large",
        }
    }
}

/// The registry and every metric in it. Shared as `Arc<Metrics>`; all methods take `&self`
/// because the prometheus types are atomic inside.
pub struct Metrics {
    /// Our own registry rather than the global default one, so tests (and several
    /// `Metrics` in one process) never collide on registration.
    registry: Registry,
    /// Changes seen on the watch, per area and op: the input rate of the exporter.
    events: IntCounterVec,
    /// Commits written, per area.
    commits: IntCounterVec,
    /// Time to build and write one commit, per area.
    commit_duration: HistogramVec,
    /// The backend revision last checkpointed, per area: stalls show as a flat line.
    checkpoint: IntGaugeVec,
    /// Age of the oldest event not yet committed (0 when none): the freshness of Git.
    sync_lag: prometheus::GaugeVec,
    /// Pushes by outcome.
    push: IntCounterVec,
    /// Keys written to the KV store by an apply, per area and op.
    apply_keys: IntCounterVec,
    /// Keys whose live value differs from Git, per area (git-to-kv drift).
    drift: IntGaugeVec,
    /// Keys changed on both sides since the base, per area.
    conflicts: IntCounterVec,
    /// Full resyncs, per area and cause (compaction, index reset, ...).
    resyncs: IntCounterVec,
    /// Watch streams restarted after an error: a flapping backend shows here.
    watch_restarts: IntCounter,
    /// 1 on the node that currently owns the area's writes, 0 elsewhere.
    area_owner: IntGaugeVec,
    /// 1 while an apply of the area is refused as a mass delete: the refusal is not
    /// retried, so it must stay visible until someone acts (SPEC "Guarantees").
    apply_refused: IntGaugeVec,
    /// Times local commits of an area were left out because this node no longer owned it
    /// (a stale owner fenced off): each is work another node commits instead.
    fenced: IntCounterVec,
    /// 1 while a KV -> Git batch of the area is held back as a mass delete (SPEC
    /// "Guarantees"): an accidental wipe waits for an operator instead of being committed.
    export_refused: IntGaugeVec,
    /// 1 while the area's desired tip holds a commit no allowed signer signed
    /// (git.allowed_signers_file): the area is not applied until the tip moves.
    unverified_tip: IntGaugeVec,
    /// The backend's current revision, as the health probe last read it: against
    /// `kvgit_checkpoint_revision` it shows how far behind an area is.
    backend_revision: prometheus::IntGauge,
    /// 1 while `/readyz` would answer 200.
    ready: prometheus::IntGauge,
    /// `POST /sync` requests by sender and outcome: a misconfigured webhook secret shows as
    /// `rejected`, probing from outside as `unknown`.
    webhook: IntCounterVec,
    /// Fetches by outcome (`ok`, `error`): a remote that keeps failing shows here while
    /// commits go on locally.
    fetch: IntCounterVec,
    /// Unix time of the last push the remote took: alert when it grows old.
    last_push_success: prometheus::Gauge,
    /// Local commits of the area the remote does not have yet.
    unpushed: IntGaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// All metrics, registered, with no area yet (see [`Metrics::for_areas`]).
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("a static metric definition is valid");
            registry
                .register(Box::new(c.clone()))
                .expect("each metric name is registered once");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)
                .expect("a static metric definition is valid");
            registry
                .register(Box::new(g.clone()))
                .expect("each metric name is registered once");
            g
        };

        let events = counter(
            "kvgit_events_total",
            "Key changes seen on the backend watch.",
            &["area", "op"],
        );
        let commits = counter("kvgit_commits_total", "Commits written.", &["area"]);
        let commit_duration = HistogramVec::new(
            HistogramOpts::new(
                "kvgit_commit_duration_seconds",
                "Time to build and write one commit.",
            )
            .buckets(COMMIT_BUCKETS.to_vec()),
            &["area"],
        )
        .expect("a static metric definition is valid");
        registry
            .register(Box::new(commit_duration.clone()))
            .expect("each metric name is registered once");
        let checkpoint = gauge(
            "kvgit_checkpoint_revision",
            "Backend revision of the last checkpoint.",
            &["area"],
        );
        let sync_lag = prometheus::GaugeVec::new(
            Opts::new(
                "kvgit_sync_lag_seconds",
                "Age of the oldest event not yet committed (0 when none).",
            ),
            &["area"],
        )
        .expect("a static metric definition is valid");
        registry
            .register(Box::new(sync_lag.clone()))
            .expect("each metric name is registered once");
        let push = counter("kvgit_push_total", "Git pushes by result.", &["result"]);
        let apply_keys = counter(
            "kvgit_apply_keys_total",
            "Keys written to the KV store by an apply.",
            &["area", "op"],
        );
        let drift = gauge(
            "kvgit_drift_keys",
            "Keys whose live value differs from Git.",
            &["area"],
        );
        let conflicts = counter(
            "kvgit_conflicts_total",
            "Keys changed on both sides since the base.",
            &["area"],
        );
        let resyncs = counter(
            "kvgit_resyncs_total",
            "Full resyncs by reason.",
            &["area", "reason"],
        );
        let watch_restarts = IntCounter::new(
            "kvgit_watch_restarts_total",
            "Watch streams restarted after an error.",
        )
        .expect("a static metric definition is valid");
        registry
            .register(Box::new(watch_restarts.clone()))
            .expect("each metric name is registered once");
        let build_info = gauge("kvgit_build_info", "Build of this kvgit.", &["version"]);
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let area_owner = gauge(
            "kvgit_area_owner",
            "1 on the node owning the area's writes.",
            &["area"],
        );
        let apply_refused = gauge(
            "kvgit_apply_refused",
            "1 while an apply of the area is refused as a mass delete.",
            &["area"],
        );

        let fenced = counter(
            "kvgit_fenced_total",
            "Times unpushed commits of an area were left out because this node lost it.",
            &["area"],
        );

        let export_refused = gauge(
            "kvgit_export_refused",
            "1 while a KV -> Git batch of the area is held back as a mass delete.",
            &["area"],
        );
        let unverified_tip = gauge(
            "kvgit_unverified_tip",
            "1 while the area's tip holds a commit not signed by an allowed signer.",
            &["area"],
        );
        let plain_gauge = |name: &str, help: &str| {
            let g =
                prometheus::IntGauge::new(name, help).expect("a static metric definition is valid");
            registry
                .register(Box::new(g.clone()))
                .expect("each metric name is registered once");
            g
        };
        let backend_revision = plain_gauge(
            "kvgit_backend_revision",
            "The backend's current revision, as last read by the health probe.",
        );
        let ready = plain_gauge("kvgit_ready", "1 while /readyz answers 200.");

        for result in PushResult::ALL {
            push.with_label_values(&[result.label()]);
        }
        let webhook = counter(
            "kvgit_webhook_total",
            "POST /sync requests by sender and outcome.",
            &["source", "result"],
        );
        for source in WebhookSource::ALL {
            for result in WebhookResult::ALL {
                webhook.with_label_values(&[source.label(), result.label()]);
            }
        }

        let fetch = counter("kvgit_fetch_total", "Git fetches by result.", &["result"]);
        for result in ["ok", "error"] {
            fetch.with_label_values(&[result]);
        }
        let last_push_success = prometheus::Gauge::new(
            "kvgit_last_push_success_timestamp_seconds",
            "Unix time of the last push the remote accepted (0: none yet).",
        )
        .expect("a static metric definition is valid");
        registry
            .register(Box::new(last_push_success.clone()))
            .expect("each metric name is registered once");
        let unpushed = gauge(
            "kvgit_unpushed_commits",
            "Local commits of the area the remote does not have yet.",
            &["area"],
        );

        Metrics {
            fetch,
            last_push_success,
            unpushed,
            registry,
            events,
            commits,
            commit_duration,
            checkpoint,
            sync_lag,
            push,
            apply_keys,
            drift,
            conflicts,
            resyncs,
            watch_restarts,
            area_owner,
            apply_refused,
            fenced,
            export_refused,
            unverified_tip,
            backend_revision,
            ready,
            webhook,
        }
    }

    /// Creates the series of every given area (see [`Metrics::init_area`]).
    pub fn for_areas(&self, areas: &[&str]) {
        for area in areas {
            self.init_area(area);
        }
    }

    /// Creates every labelled series of `area` at zero: a label-vector family with no child
    /// is absent from the output, and dashboards and alerts need each name from the first
    /// scrape, before any event.
    pub fn init_area(&self, area: &str) {
        for op in [OP_PUT, OP_DELETE] {
            self.events.with_label_values(&[area, op]);
            self.apply_keys.with_label_values(&[area, op]);
        }
        self.commits.with_label_values(&[area]);
        self.commit_duration.with_label_values(&[area]);
        self.checkpoint.with_label_values(&[area]);
        self.sync_lag.with_label_values(&[area]);
        self.drift.with_label_values(&[area]);
        self.conflicts.with_label_values(&[area]);
        self.area_owner.with_label_values(&[area]);
        self.apply_refused.with_label_values(&[area]);
        self.fenced.with_label_values(&[area]);
        self.export_refused.with_label_values(&[area]);
        self.unverified_tip.with_label_values(&[area]);
        self.unpushed.with_label_values(&[area]);
        // The reasons the backends report; labels come from sync-core so they match.
        let known = [
            ResyncReason::Compacted {
                compact_revision: Revision::default(),
            },
            ResyncReason::IndexReset,
        ];
        for reason in known {
            self.resyncs.with_label_values(&[area, reason.label()]);
        }
        // And the reasons a checkpoint is not trusted.
        for label in crate::engine::checkpoint::Distrust::LABELS {
            self.resyncs.with_label_values(&[area, label]);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding fails only on a malformed family, a bug; a partial page beats a
        // failed scrape, so log it and serve what was written.
        if let Err(e) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        out
    }

    /// Key changes seen on the watch, counted per transaction: finding the labelled
    /// counter once per change was 0.6% of the serve's CPU at a full-speed ingest.
    pub fn events(&self, area: &str, puts: u64, deletes: u64) {
        for (op, n) in [(OP_PUT, puts), (OP_DELETE, deletes)] {
            if n > 0 {
                self.events.with_label_values(&[area, op]).inc_by(n);
            }
        }
    }

    /// One commit written, and how long it took.
    pub fn commit(&self, area: &str, seconds: f64) {
        self.commits.with_label_values(&[area]).inc();
        self.commit_duration
            .with_label_values(&[area])
            .observe(seconds);
    }

    /// The revision just checkpointed.
    pub fn checkpoint(&self, area: &str, rev: u64) {
        // Backend revisions are i64 on the wire (etcd), so saturating never bites.
        let rev = i64::try_from(rev).unwrap_or(i64::MAX);
        self.checkpoint.with_label_values(&[area]).set(rev);
    }

    /// Age in seconds of the oldest uncommitted event (0 when none).
    pub fn lag(&self, area: &str, seconds: f64) {
        self.sync_lag.with_label_values(&[area]).set(seconds);
    }

    /// One push and its outcome.
    pub fn push(&self, result: PushResult) {
        self.push.with_label_values(&[result.label()]).inc();
    }

    /// Keys written to the KV store by one apply.
    pub fn applied(&self, area: &str, puts: u64, deletes: u64) {
        self.apply_keys
            .with_label_values(&[area, OP_PUT])
            .inc_by(puts);
        self.apply_keys
            .with_label_values(&[area, OP_DELETE])
            .inc_by(deletes);
    }

    /// Keys currently drifting from Git.
    pub fn drift(&self, area: &str, n: u64) {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.drift.with_label_values(&[area]).set(n);
    }

    /// Conflicting keys found by one pass.
    pub fn conflicts(&self, area: &str, n: u64) {
        self.conflicts.with_label_values(&[area]).inc_by(n);
    }

    /// One full resync; `reason` is a short fixed word such as [`ResyncReason::label`].
    pub fn resync(&self, area: &str, reason: &str) {
        self.resyncs.with_label_values(&[area, reason]).inc();
    }

    /// One watch stream restarted after an error.
    pub fn watch_restart(&self) {
        self.watch_restarts.inc();
    }

    /// Whether this node owns `area`'s writes.
    pub fn owner(&self, area: &str, owned: bool) {
        self.area_owner
            .with_label_values(&[area])
            .set(i64::from(owned));
    }

    /// Unpushed commits of `area` were left out: this node no longer owns it.
    pub fn fenced(&self, area: &str) {
        self.fenced.with_label_values(&[area]).inc();
    }

    /// Whether a KV -> Git batch of the area is held back as a mass delete.
    pub fn export_refused(&self, area: &str, held: bool) {
        self.export_refused
            .with_label_values(&[area])
            .set(i64::from(held));
    }

    /// The backend's revision as the health probe read it.
    pub fn backend_revision(&self, rev: u64) {
        self.backend_revision
            .set(i64::try_from(rev).unwrap_or(i64::MAX));
    }

    /// Whether the service is ready.
    pub fn ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// One `POST /sync` and what became of it.
    pub fn webhook(&self, source: WebhookSource, result: WebhookResult) {
        self.webhook
            .with_label_values(&[source.label(), result.label()])
            .inc();
    }

    /// One fetch and whether it worked.
    pub fn fetch(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.fetch.with_label_values(&[result]).inc();
    }

    /// The remote took a push now.
    pub fn push_succeeded(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_push_success.set(now);
    }

    /// Local commits of `area` the remote lacks.
    pub fn unpushed(&self, area: &str, commits: usize) {
        self.unpushed
            .with_label_values(&[area])
            .set(i64::try_from(commits).unwrap_or(i64::MAX));
    }

    /// Local commits of `area` the remote lacks, as last set (for the web page).
    pub fn unpushed_of(&self, area: &str) -> i64 {
        self.unpushed.with_label_values(&[area]).get()
    }

    /// Unix time of the last push the remote took; 0 before the first (for the web page).
    pub fn last_push_success_at(&self) -> f64 {
        self.last_push_success.get()
    }

    /// Fetches so far, (ok, error) (for the web page).
    pub fn fetch_counts(&self) -> (u64, u64) {
        let count = |result: &str| self.fetch.with_label_values(&[result]).get();
        (count("ok"), count("error"))
    }

    /// Whether the area's apply is currently refused as a mass delete.
    pub fn refused(&self, area: &str, refused: bool) {
        self.apply_refused
            .with_label_values(&[area])
            .set(i64::from(refused));
    }

    /// Whether the area's tip is refused as not signed by an allowed signer.
    pub fn unverified(&self, area: &str, unverified: bool) {
        self.unverified_tip
            .with_label_values(&[area])
            .set(i64::from(unverified));
    }
}

#[cfg(test)]
/// The SPEC's list plus `kvgit_export_refused`: what tests expect on the first scrape. A
/// test-only copy, checked against the definitions above by the tests.
pub(crate) const ALL_NAMES: &[&str] = &[
    "kvgit_events_total",
    "kvgit_commits_total",
    "kvgit_commit_duration_seconds",
    "kvgit_checkpoint_revision",
    "kvgit_sync_lag_seconds",
    "kvgit_push_total",
    "kvgit_apply_keys_total",
    "kvgit_drift_keys",
    "kvgit_conflicts_total",
    "kvgit_resyncs_total",
    "kvgit_watch_restarts_total",
    "kvgit_build_info",
    "kvgit_area_owner",
    "kvgit_apply_refused",
    "kvgit_fenced_total",
    "kvgit_export_refused",
    "kvgit_unverified_tip",
    "kvgit_backend_revision",
    "kvgit_ready",
    "kvgit_webhook_total",
    "kvgit_fetch_total",
    "kvgit_last_push_success_timestamp_seconds",
    "kvgit_unpushed_commits",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_listed_before_any_event() {
        let m = Metrics::new();
        m.for_areas(&["a"]);
        let mut registered: Vec<String> = m
            .registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        registered.sort();
        let mut expected: Vec<String> = ALL_NAMES.iter().map(|n| n.to_string()).collect();
        expected.sort();
        assert_eq!(
            registered, expected,
            "the registry holds exactly the contract's names"
        );
        let text = m.encode();
        for name in ALL_NAMES {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} missing:\n{text}"
            );
        }
        assert!(text.contains(&format!(
            "kvgit_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(text.contains(r#"kvgit_events_total{area="a",op="delete"} 0"#));
        assert!(text.contains(r#"kvgit_push_total{result="rejected"} 0"#));
        assert!(text.contains(r#"kvgit_resyncs_total{area="a",reason="compacted"} 0"#));
        for source in WebhookSource::ALL {
            for result in WebhookResult::ALL {
                let series = format!(
                    "kvgit_webhook_total{{result=\"{}\",source=\"{}\"}} 0",
                    result.label(),
                    source.label()
                );
                assert!(text.contains(&series), "{series} missing:\n{text}");
            }
        }
    }

    #[test]
    fn helpers_move_the_right_series() {
        let m = Metrics::new();
        m.for_areas(&["a", "b"]);
        m.events("a", 1, 0);
        m.events("a", 0, 2);
        m.events("b", 0, 0);
        m.commit("a", 0.003);
        m.checkpoint("a", 1234);
        m.lag("b", 1.5);
        m.push(PushResult::Rejected);
        m.applied("b", 3, 1);
        m.drift("b", 7);
        m.conflicts("a", 2);
        m.resync("a", ResyncReason::IndexReset.label());
        m.watch_restart();
        m.owner("a", true);
        m.refused("b", true);
        m.unverified("a", true);
        m.webhook(WebhookSource::Github, WebhookResult::Accepted);
        m.webhook(WebhookSource::Unknown, WebhookResult::TooLarge);
        m.webhook(WebhookSource::Unknown, WebhookResult::TooLarge);
        let text = m.encode();
        for line in [
            r#"kvgit_events_total{area="a",op="put"} 1"#,
            r#"kvgit_events_total{area="a",op="delete"} 2"#,
            r#"kvgit_commits_total{area="a"} 1"#,
            r#"kvgit_commit_duration_seconds_bucket{area="a",le="0.005"} 1"#,
            r#"kvgit_commit_duration_seconds_bucket{area="a",le="0.0025"} 0"#,
            r#"kvgit_checkpoint_revision{area="a"} 1234"#,
            r#"kvgit_sync_lag_seconds{area="b"} 1.5"#,
            r#"kvgit_push_total{result="rejected"} 1"#,
            r#"kvgit_apply_keys_total{area="b",op="put"} 3"#,
            r#"kvgit_apply_keys_total{area="b",op="delete"} 1"#,
            r#"kvgit_drift_keys{area="b"} 7"#,
            r#"kvgit_conflicts_total{area="a"} 2"#,
            r#"kvgit_resyncs_total{area="a",reason="index_reset"} 1"#,
            "kvgit_watch_restarts_total 1",
            r#"kvgit_area_owner{area="a"} 1"#,
            r#"kvgit_area_owner{area="b"} 0"#,
            r#"kvgit_apply_refused{area="a"} 0"#,
            r#"kvgit_apply_refused{area="b"} 1"#,
            r#"kvgit_unverified_tip{area="a"} 1"#,
            r#"kvgit_unverified_tip{area="b"} 0"#,
            r#"kvgit_webhook_total{result="accepted",source="github"} 1"#,
            r#"kvgit_webhook_total{result="too_large",source="unknown"} 2"#,
            r#"kvgit_webhook_total{result="rejected",source="github"} 0"#,
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
    }
}

//! `kvgit status`: per area its mode, checkpoint, base commit, owner, pending events and
//! drift, as one document (rendered as a table or JSON by the CLI).

use super::apply::plan_area;
use super::changes::{self, ChangesError, Delta};
use super::checkpoint::{self, CheckpointError, Judged};
use super::{ser, ConnectError, Context, GitError};
use gitstore::ObjectId;
use serde::Serialize;
use sync_core::{BackendError, Revision};

/// Why the status could not be read at all (one area's bad desired state is not this: it
/// is that area's `error`).
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("cannot read the cluster id")]
    ClusterId(#[source] BackendError),
    #[error("cannot read the area owners")]
    Owners(#[source] BackendError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Changes(#[from] ChangesError),
    #[error(transparent)]
    Git(#[from] GitError),
}

// Fields are in alphabetical order: the JSON lists them so (it always has).

/// The status document: what `kvgit status --json` prints, and what `serve` answers on
/// `GET /status` (one type; the service fills in its live parts, `service` and each area's
/// `live`, and leaves what only a full read can tell — drift, pending apply — to `null`).
#[derive(Debug, Serialize)]
pub struct Status {
    pub areas: Vec<AreaStatus>,
    pub backend: BackendStatus,
    pub branch: String,
    pub node: String,
    /// The running service's own health (`serve` only).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceStatus>,
    #[serde(serialize_with = "ser::display_opt")]
    pub tip: Option<ObjectId>,
}

#[derive(Debug, Serialize)]
pub struct BackendStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    pub kind: &'static str,
    #[serde(
        serialize_with = "ser::revision_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub revision: Option<Revision>,
}

/// What only a running `serve` knows about itself.
#[derive(Debug, Serialize)]
pub struct ServiceStatus {
    /// Whether the last health probe got an answer, and what failed when it did not.
    pub backend_error: Option<String>,
    pub backend_ok: bool,
    /// Who holds the Git lock, when it has been held for a while.
    pub git_lock: Option<String>,
    pub push_error: Option<String>,
    pub ready: bool,
    pub sync_error: Option<String>,
    pub version: &'static str,
}

/// One area; `error` is set (and drift and pending counts are not) when it cannot be planned.
#[derive(Debug, Serialize)]
pub struct AreaStatus {
    pub area: String,
    /// The branch commit the checkpoint was taken with.
    pub base_commit: Option<String>,
    pub checkpoint: Option<CheckpointStatus>,
    pub drift: Option<usize>,
    /// What stopped the area from being planned, its causes joined by ": ".
    pub error: Option<String>,
    /// What the running service knows of the area (`serve` only).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub live: Option<AreaLive>,
    pub mode: String,
    /// The `serve` node that owns the area, as its claim records it.
    pub owner: Option<String>,
    pub path: String,
    pub pending_apply: Option<usize>,
    /// Keys changed since the checkpoint (None without a trusted checkpoint); in `serve`,
    /// the events waiting in the batch.
    pub pending_events: Option<Pending>,
    pub pending_export: Option<usize>,
    pub prefix: String,
}

/// An area as the running service sees it.
#[derive(Debug, Serialize)]
pub struct AreaLive {
    pub apply_error: Option<String>,
    /// What keeps the area from being in sync here (`/readyz` lists the same).
    pub blocked: Option<String>,
    pub caught_up: bool,
    pub held: Option<String>,
    pub lag_seconds: f64,
    pub last_commit: Option<String>,
    pub last_conflicts: Vec<Overwritten>,
    pub last_error: Option<String>,
    pub last_resync: Option<String>,
    pub owned_here: bool,
    pub ready: bool,
    pub refused: Option<String>,
    pub resyncs: u64,
    pub unmapped_files: Vec<String>,
}

/// A live value Git overwrote.
#[derive(Debug, Serialize)]
pub struct Overwritten {
    pub key: String,
    /// None (null) when values are not shown (`server.ui_show_values = false`, the default).
    pub overwritten: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CheckpointStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(
        serialize_with = "ser::display_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub commit: Option<ObjectId>,
    /// Why it cannot be the base, if it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distrust: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(serialize_with = "ser::revision")]
    pub revision: Revision,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub same_cluster: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trusted: Option<bool>,
}

/// The live changes since an area's checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    /// This many keys changed (a key written many times counts once).
    Keys(usize),
    /// History since the checkpoint is gone (the label of the resync reason).
    ResyncNeeded(&'static str),
}

impl std::fmt::Display for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pending::Keys(n) => write!(f, "{n}"),
            Pending::ResyncNeeded(label) => write!(f, "resync needed ({label})"),
        }
    }
}

/// A count as a number, a resync as its sentence.
impl Serialize for Pending {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Pending::Keys(n) => s.serialize_u64(*n as u64),
            Pending::ResyncNeeded(_) => s.collect_str(self),
        }
    }
}

/// The status document: one entry per area, each with what went wrong if anything did.
pub async fn collect(ctx: &Context) -> Result<Status, StatusError> {
    let backend = ctx.backend().await?;
    let cluster = backend.cluster_id().await.map_err(StatusError::ClusterId)?;
    let current = backend.current_revision().await?;
    let tip = ctx
        .git_blocking(|git| -> Result<_, GitError> { Ok(git.tip()?) })
        .await?;
    // Owners as the running `serve` nodes recorded them (claims on their leases).
    let owners_prefix = sync_core::ownership::owners_prefix(&ctx.cfg.sync.ownership_prefix);
    let owners: std::collections::BTreeMap<Vec<u8>, String> = backend
        .claims(&owners_prefix)
        .await
        .map_err(StatusError::Owners)?
        .into_iter()
        .map(|c| {
            let area = c.key.0[owners_prefix.len()..].to_vec();
            (area, String::from_utf8_lossy(&c.value).into_owned())
        })
        .collect();
    // Areas are independent: read side by side.
    let areas = futures::future::try_join_all(ctx.cfg.areas.iter().map(|area| {
        let (backend, cluster, owners) = (&backend, &cluster, &owners);
        async move {
            let cp = checkpoint::load(ctx, &area.name).await?;
            let judged = Judged::judge(cp.clone(), &area.name, cluster, current);
            let pending_events = match judged.trusted() {
                Some(c) => Some(
                    match changes::since(
                        backend.as_ref(),
                        &area.prefix,
                        c.revision.next(),
                        current,
                        ctx.cfg.backend.request_timeout(),
                    )
                    .await?
                    {
                        Delta::Changes { changes, .. } => Pending::Keys(changes.len()),
                        Delta::Resync(r) => Pending::ResyncNeeded(r.label()),
                    },
                ),
                None => None,
            };
            let mut entry = AreaStatus {
                area: area.name.0.clone(),
                base_commit: cp.as_ref().and_then(|c| c.branch_commit.clone()),
                checkpoint: cp.as_ref().map(|c| CheckpointStatus {
                    cluster: Some(c.cluster.0.clone()),
                    commit: Some(c.id),
                    distrust: judged.distrust().map(ToString::to_string),
                    node: Some(c.node.clone()),
                    revision: c.revision,
                    same_cluster: Some(&c.cluster == cluster),
                    trusted: Some(judged.trusted().is_some()),
                }),
                drift: None,
                error: None,
                live: None,
                mode: area.rule.mode.as_str().to_string(),
                owner: owners.get(area.name.0.as_bytes()).cloned(),
                path: area.path.clone(),
                pending_apply: None,
                pending_events,
                pending_export: None,
                prefix: String::from_utf8_lossy(&area.prefix).into_owned(),
            };
            match plan_area(ctx, area, tip, cluster, true).await {
                Ok(plan) => {
                    entry.drift = Some(plan.drift.len());
                    entry.pending_apply = Some(plan.ops.len());
                    entry.pending_export = Some(plan.pending_export);
                }
                Err(e) => entry.error = Some(one_line(&e)),
            }
            Ok::<_, StatusError>(entry)
        }
    }))
    .await?;
    Ok(Status {
        areas,
        backend: BackendStatus {
            cluster: Some(cluster.0),
            kind: backend.kind(),
            revision: Some(current),
        },
        branch: ctx.cfg.git.branch.clone(),
        node: ctx.cfg.sync.node.clone(),
        service: None,
        tip,
    })
}

/// An error and its causes on one line, joined by ": ".
fn one_line(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

//! `kvgit plan` and `kvgit apply`: Git -> KV by the sync rule, or with `--exact` an exact
//! restore. Every selected area is read, decided and validated (paths, value sizes, the
//! area's schema, the mass-delete guard) before the first write.

mod error;

pub use error::{ApplyError, MassDeleteRefused};
pub use restore::Exact;

mod restore;
#[cfg(test)]
mod tests;

use super::checkpoint::{self, Judged};
use super::decide::{base_after, union3, Sides};
use super::export::write_changes;
use super::view::{key_tree, read_area, read_area_lenient, AreaFile};
use super::{ser, writer};
use super::{Context, GitError};
use crate::config::AreaConfig;
use gitstore::ObjectId;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use sync_core::rule::{Base, Mode};
use sync_core::{ClusterId, Key, KvBackend, KvEntry, Precondition, Revision, Value, WriteOp};

/// How a planned write changes a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    Add,
    Change,
    Delete,
}

impl OpKind {
    /// `+`, `~` or `-`, as plans show it.
    pub fn sign(self) -> char {
        match self {
            OpKind::Add => '+',
            OpKind::Change => '~',
            OpKind::Delete => '-',
        }
    }
}

/// One write an apply would make.
#[derive(Debug, Clone)]
pub struct PlannedOp {
    pub kind: OpKind,
    pub key: Key,
    /// The Git blob to write (read only when writing), or None to delete.
    pub value: Option<ObjectId>,
    /// The blob's size, from its header when planned (0 for a delete): what the writes
    /// hold of it at once is bounded by it.
    pub value_size: u64,
    pub expect: Precondition,
    /// What few ops have; `None` for most (a plan of a million keys kept three empty
    /// fields, 72 bytes, for each).
    detail: Option<Box<OpDetail>>,
}

/// The parts of a [`PlannedOp`] most ops do not have.
#[derive(Debug, Clone)]
struct OpDetail {
    /// The file holding (or, for a delete, that would hold) the key, from the repository
    /// root: in a document area, the document that stands for it. `None`: the key's own
    /// file, `<area path>/<relative key>` (see [`AreaPlan::path_of`]).
    path: Option<String>,
    /// In a document area, where in the document the key is (a JSON pointer).
    pointer: Option<String>,
    /// The live value this write replaces although it changed too (Git wins).
    overwrites: Option<Value>,
}

impl PlannedOp {
    /// In a document area, where in the document the key is (a JSON pointer).
    pub fn pointer(&self) -> Option<&str> {
        self.detail.as_ref()?.pointer.as_deref()
    }

    /// The live value this write replaces although it changed too (Git wins).
    pub fn overwrites(&self) -> Option<&Value> {
        self.detail.as_ref()?.overwrites.as_ref()
    }
}

/// One key the rule gives the KV store something for, or that drifted, with its sides.
struct Decided<'a> {
    rel: &'a Vec<u8>,
    live: Option<&'a (ObjectId, KvEntry)>,
    file: Option<&'a AreaFile>,
    /// What the KV store receives (`Some(None)`: a delete).
    kv: Option<Option<ObjectId>>,
    conflict: bool,
    drift: bool,
    /// Live keys before this one: two new keys with the same count have none between them.
    live_before: usize,
}

impl<'a> Decided<'a> {
    fn new(
        rel: &'a Vec<u8>,
        live: Option<&'a (ObjectId, KvEntry)>,
        file: Option<&'a AreaFile>,
        kv: Option<Option<ObjectId>>,
        live_before: usize,
    ) -> Decided<'a> {
        Decided {
            rel,
            live,
            file,
            kv,
            conflict: false,
            drift: false,
            live_before,
        }
    }
}

/// Everything an apply of one area would do, validated.
pub struct AreaPlan {
    pub area: AreaConfig,
    pub ops: Vec<PlannedOp>,
    pub drift: Vec<Key>,
    /// The file (and pointer in a document) of each drift key, in the same order.
    pub drift_paths: Vec<(String, Option<String>)>,
    /// How many drift keys the ops give Git's value back (self-heal): once written, they
    /// no longer differ.
    pub drift_reverted: usize,
    /// Keys only the KV store has a newer value for (they go to Git by export); a delta
    /// plan counts only among the keys it read.
    pub pending_export: usize,
    pub live_keys: usize,
    /// The area's checkpoint as judged against the live cluster.
    pub checkpoint: Judged,
    cluster: ClusterId,
    /// The tree the base changes apply to: the checkpoint's base, or for a first apply
    /// (no trusted checkpoint) the desired tree.
    base_start: Option<ObjectId>,
    /// Base changes that hold once every op is written: relative key -> agreed value.
    base_changes: Vec<(Vec<u8>, Option<Value>)>,
    /// The epoch of `serve`'s claim on the area, stamped on the checkpoint an apply moves
    /// (set by the caller from its fence check; None for the CLI).
    pub epoch: Option<sync_core::Epoch>,
    /// For a first apply, the revision its checkpoint records: every live change up to it
    /// is in the new base, or is a key the rule carries to Git (those are dated before it,
    /// so the next export sees them and commits them).
    first_revision: Revision,
    /// `--exact`: the area becomes exactly the tree planned from (no rule, no base).
    pub exact: Option<Exact>,
    /// The area's desired key tree this plan read and validated (see [`plan_area_delta`]).
    pub desired_tree: Option<ObjectId>,
}

impl AreaPlan {
    /// The file of `op` from the repository root (see [`PlannedOp`]'s `path`).
    pub fn path_of(&self, op: &PlannedOp) -> String {
        match op.detail.as_ref().and_then(|d| d.path.as_ref()) {
            Some(path) => path.clone(),
            None => {
                let rel = op.key.0.get(self.area.prefix.len()..).unwrap_or_default();
                format!("{}/{}", self.area.path, String::from_utf8_lossy(rel))
            }
        }
    }

    pub fn count(&self, kind: OpKind) -> usize {
        self.ops.iter().filter(|o| o.kind == kind).count()
    }

    /// Whether applying this plan commits a restore on the branch: an exact restore of an
    /// area that records KV changes (`kv-to-git`, `both`).
    pub fn commits_restore(&self) -> bool {
        self.exact.is_some() && self.area.rule.mode != sync_core::rule::Mode::GitToKv
    }
}

/// How to plan: what the operator allowed and asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanOptions {
    /// `--allow-mass-delete`.
    pub allow_mass_delete: bool,
    /// `--exact`: make the KV store exactly the planned tree, whatever the mode and base.
    pub exact: bool,
}

/// What one round of an apply wrote to one area: counts of what was written (a raced op
/// was not), the keys whose changed live value Git overwrote, and the keys someone else
/// changed meanwhile (re-decided in the next round).
#[derive(Debug, Clone, serde::Serialize)]
pub struct AreaApplied {
    pub area: String,
    pub added: usize,
    pub changed: usize,
    pub deleted: usize,
    /// The newest revision the writes produced (None when nothing was written).
    #[serde(serialize_with = "ser::revision_opt")]
    pub revision: Option<Revision>,
    pub overwrote: Vec<Overwrote>,
    #[serde(serialize_with = "ser::display_seq")]
    pub raced: Vec<Key>,
    /// The restore commit an exact restore made on the branch (`kv-to-git`, `both`).
    #[serde(serialize_with = "ser::display_opt")]
    pub restore_commit: Option<ObjectId>,
}

/// A live value that had changed too, overwritten because Git wins.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Overwrote {
    #[serde(serialize_with = "ser::display")]
    pub key: Key,
    #[serde(serialize_with = "ser::bytes_lossy")]
    pub live_value: Value,
}

impl AreaApplied {
    fn new(plan: &AreaPlan, w: &writer::Written) -> AreaApplied {
        // Count what was written, not what was planned: a raced op was not written.
        let raced: std::collections::HashSet<&Key> = w.raced.iter().collect();
        let written = || plan.ops.iter().filter(|o| !raced.contains(&o.key));
        let count = |kind: OpKind| written().filter(|o| o.kind == kind).count();
        AreaApplied {
            area: plan.area.name.0.clone(),
            added: count(OpKind::Add),
            changed: count(OpKind::Change),
            deleted: count(OpKind::Delete),
            revision: w.last_revision,
            overwrote: written()
                .filter_map(|o| {
                    Some(Overwrote {
                        key: o.key.clone(),
                        live_value: o.overwrites()?.clone(),
                    })
                })
                .collect(),
            raced: w.raced.clone(),
            restore_commit: None,
        }
    }
}

/// `kvgit apply`: write validated plans (from [`plan_all`]), then re-read and re-decide
/// each area where someone else wrote a key meanwhile, never clobbering it (3 rounds at
/// most). `on_round` gets each round's outcome as soon as it is written, so what earlier
/// rounds wrote is known even when a later round fails.
pub async fn apply(
    ctx: &Context,
    plans: Vec<AreaPlan>,
    rev: Option<&str>,
    allow_mass_delete: bool,
    mut on_round: impl FnMut(&[AreaApplied]),
) -> Result<Vec<Vec<AreaApplied>>, ApplyError> {
    let started = std::time::Instant::now();
    let backend = ctx.backend().await?;
    let mut plans = Arc::new(plans);
    let mut rounds = Vec::new();
    for round in 0..3 {
        let written = write_and_record(ctx, &plans).await?;
        let applied: Vec<AreaApplied> = plans
            .iter()
            .zip(&written)
            .map(|(plan, (w, restore_commit))| AreaApplied {
                restore_commit: *restore_commit,
                ..AreaApplied::new(plan, w)
            })
            .collect();
        on_round(&applied);
        let raced_areas: Vec<String> = applied
            .iter()
            .filter(|a| !a.raced.is_empty())
            .map(|a| a.area.clone())
            .collect();
        rounds.push(applied);
        if raced_areas.is_empty() {
            tracing::debug!(elapsed = ?started.elapsed(), "written");
            return Ok(rounds);
        }
        if round == 2 {
            return Err(ApplyError::KeptChanging { areas: raced_areas });
        }
        let exact = plans.iter().any(|p| p.exact.is_some());
        if exact {
            // Re-deciding would overwrite what someone just wrote: a restore stops and
            // says so instead (what it wrote stays; the raced areas are not committed).
            let raced = rounds
                .last()
                .into_iter()
                .flatten()
                .flat_map(|a| a.raced.iter().cloned())
                .collect();
            return Err(ApplyError::RestoreRaced {
                areas: raced_areas,
                keys: raced,
            });
        }
        let cluster = backend.cluster_id().await?;
        let commit = target_commit(ctx, rev).await?;
        let opts = PlanOptions {
            allow_mass_delete,
            exact,
        };
        let mut replanned = Vec::new();
        for name in raced_areas {
            let area = ctx
                .cfg
                .select_areas(Some(&name))
                .map_err(ApplyError::UnknownArea)?[0]
                .clone();
            replanned.push(plan_area_with(ctx, &area, commit, &cluster, opts).await?);
        }
        plans = Arc::new(replanned);
    }
    Ok(rounds)
}

/// The commit to apply: `--ref` resolved, or the branch tip (None: no commits yet).
pub async fn target_commit(
    ctx: &Context,
    rev: Option<&str>,
) -> Result<Option<ObjectId>, ApplyError> {
    let rev = rev.map(str::to_string);
    let branch = ctx.cfg.git.branch.clone();
    ctx.git_blocking(move |git| match rev {
        Some(r) => git
            .resolve_commit(&r)
            .map(Some)
            .map_err(|source| ApplyError::BadRef { rev: r, source }),
        None => {
            let tip = git.tip()?;
            if tip.is_none() {
                tracing::info!("branch {branch} has no commits yet: desired state is empty");
            }
            Ok(tip)
        }
    })
    .await
}

/// Plan every selected area; any invalid file or refused deletion fails the whole call.
#[cfg(test)]
pub async fn plan_all(
    ctx: &Context,
    only: Option<&str>,
    rev: Option<&str>,
    allow_mass_delete: bool,
) -> Result<Vec<AreaPlan>, ApplyError> {
    let opts = PlanOptions {
        allow_mass_delete,
        exact: false,
    };
    Ok(plan_all_with(ctx, only, rev, opts).await?.1)
}

/// [`plan_all`] with every option, also returning the commit planned from.
pub async fn plan_all_with(
    ctx: &Context,
    only: Option<&str>,
    rev: Option<&str>,
    opts: PlanOptions,
) -> Result<(Option<ObjectId>, Vec<AreaPlan>), ApplyError> {
    let started = std::time::Instant::now();
    let areas = ctx
        .cfg
        .select_areas(only)
        .map_err(ApplyError::UnknownArea)?;
    // Documents and schemas are checked offline, as `kvgit validate` does, while the
    // backend connects and names its cluster: a bad schema or document stops the call with
    // its own error whatever the backend answers, and without waiting for it.
    let selected: Vec<AreaConfig> = areas.iter().map(|a| (*a).clone()).collect();
    let checked = async {
        let commit = target_commit(ctx, rev).await?;
        let problems = ctx
            .git_blocking(move |git| -> Result<_, ApplyError> {
                Ok(super::validate::content_problems(git, commit, &selected)?)
            })
            .await?;
        if problems.is_empty() {
            Ok(commit)
        } else {
            Err(ApplyError::Invalid(problems))
        }
    };
    let connected = async {
        let backend = ctx.backend().await?;
        backend.cluster_id().await.map_err(ApplyError::ClusterId)
    };
    tokio::pin!(checked, connected);
    let mut named = None;
    let commit = loop {
        tokio::select! {
            commit = &mut checked => break commit?,
            cluster = &mut connected, if named.is_none() => named = Some(cluster),
        }
    };
    let cluster = match named {
        Some(cluster) => cluster?,
        None => connected.await?,
    };
    // Areas are independent: their Git reads run side by side on blocking threads, a few
    // at a time (see PLANNED_AT_ONCE).
    let planning = tokio::sync::Semaphore::new(PLANNED_AT_ONCE);
    let plans = futures::future::try_join_all(areas.into_iter().map(|area| {
        let (cluster, planning) = (&cluster, &planning);
        async move {
            let _turn = planning.acquire().await.ok();
            plan_area_with(ctx, area, commit, cluster, opts)
                .await
                .map_err(|e| ApplyError::Area {
                    area: area.name.0.clone(),
                    source: Box::new(e),
                })
        }
    }))
    .await?;
    tracing::debug!(elapsed = ?started.elapsed(), "planned and validated");
    Ok((commit, plans))
}

pub async fn plan_area(
    ctx: &Context,
    area: &AreaConfig,
    commit: Option<ObjectId>,
    cluster: &ClusterId,
    allow_mass_delete: bool,
) -> Result<AreaPlan, ApplyError> {
    // `serve` and `status` plan one area at a time: the offline checks run here for them
    // (`plan_all_with` runs them for every selected area before it asks the backend).
    let selected = vec![area.clone()];
    let problems = ctx
        .git_blocking(move |git| -> Result<_, ApplyError> {
            Ok(super::validate::content_problems(git, commit, &selected)?)
        })
        .await?;
    if !problems.is_empty() {
        return Err(ApplyError::Invalid(problems));
    }
    let opts = PlanOptions {
        allow_mass_delete,
        exact: false,
    };
    plan_area_with(ctx, area, commit, cluster, opts).await
}

/// Plan one area from `commit`: by the sync rule, or (`opts.exact`) so that the area's
/// keys become exactly that tree.
pub async fn plan_area_with(
    ctx: &Context,
    area: &AreaConfig,
    commit: Option<ObjectId>,
    cluster: &ClusterId,
    opts: PlanOptions,
) -> Result<AreaPlan, ApplyError> {
    let allow_mass_delete = opts.allow_mass_delete;
    let exact = opts.exact;
    let backend = ctx.backend().await?;
    let cp = checkpoint::load(ctx, &area.name).await?;
    let started = std::time::Instant::now();
    // The desired side is read from Git while the backend answers the snapshot. Documents
    // that do not parse or claim one key twice are refused, naming the file, before the
    // first write (after the snapshot's and the signatures' errors, as before).
    let (path, format) = (area.path.clone(), area.format);
    let desired_read = ctx.git_blocking(move |git| -> Result<_, ApplyError> {
        let t0 = std::time::Instant::now();
        let tree = key_tree(git, commit, &path, format, true)?;
        let files = read_area(git, tree, &path)?;
        tracing::debug!(area_path = %path, elapsed = ?t0.elapsed(), "desired read");
        Ok((tree, files))
    });
    // Read after the checkpoint: its revision is the cluster's current one or later.
    let (desired_read, snap) = tokio::join!(desired_read, backend.snapshot(&area.prefix, None));
    let snap = snap?;
    tracing::debug!(area = %area.name, elapsed = ?started.elapsed(), keys = snap.entries.len(), "live read");
    let judged = Judged::judge(cp, &area.name, cluster, snap.revision);
    if let Some(why) = judged.distrust() {
        tracing::info!(area = %area.name, reason = %why, "checkpoint not trusted: planning with no base");
    }
    if let (Some(allowed), Some(tip)) = (ctx.cfg.git.allowed_signers.clone(), commit) {
        verify_signed(ctx, &allowed, judged.trusted(), tip, &area.path).await?;
    }
    let (desired_tree, desired) = desired_read?;
    let snap_revision = snap.revision;
    let plan_cluster = cluster.clone();
    let area_cfg = area.clone();
    let base_tree = judged.trusted().map(|c| c.base_tree);
    let checker = backend.clone();
    let mut plan = ctx
        .git_blocking(move |git| -> Result<AreaPlan, ApplyError> {
            let area = area_cfg;
            let prefix_len = area.prefix.len();
            let t0 = std::time::Instant::now();
            let base = match base_tree {
                // The base is kvgit's own record: a file in it that maps to no key was
                // carried over from Git and stands for no key.
                Some(t) if !exact => Some(read_area_lenient(git, t, &area.path)?.0),
                _ => None,
            };
            let live_keys = snap.entries.len();
            let live: BTreeMap<Vec<u8>, (ObjectId, KvEntry)> =
                hashed(git, snap.entries, prefix_len).collect::<Result<_, GitError>>()?;
            // One walk over the three sorted sides decides every key; lookups per key were
            // most of the planning time at 100k keys.
            let mut decided: Vec<Decided> = Vec::with_capacity(live.len() + desired.len());
            let mut agreed: Vec<(&Vec<u8>, Option<ObjectId>)> = Vec::new();
            let mut unagreed_desired: Vec<(Vec<u8>, Option<Value>)> = Vec::new();
            let (mut pending_export, mut first_revision) = (0, snap_revision);
            let mut live_before = 0;
            let base_files = base.iter().flat_map(|b| b.iter());
            let desired_files = desired.iter().map(|(rel, f)| (rel, f));
            for (rel, l, d, b) in union3(live.iter(), desired_files, base_files) {
                let before = live_before;
                live_before += usize::from(l.is_some());
                let (live_id, desired_id) = (l.map(|(id, _)| *id), d.map(|f| f.id));
                if exact {
                    // No rule, no base: every key that differs from the tree becomes it.
                    if live_id != desired_id {
                        decided.push(Decided::new(rel, l, d, Some(desired_id), before));
                    }
                    continue;
                }
                let sides = Sides {
                    base: match &base {
                        None => Base::Unknown,
                        Some(_) => b.map_or(Base::Absent, |f| Base::Present(f.id)),
                    },
                    live: live_id,
                    desired: desired_id,
                };
                let decision = sides.decide(area.rule);
                if decision.git.is_some() {
                    pending_export += 1;
                    if let Some((_, e)) = l {
                        let before = Revision(e.mod_revision.0.saturating_sub(1));
                        first_revision = first_revision.min(before);
                    }
                }
                let live_after = decision.kv.unwrap_or(live_id);
                let agreed_now = base_after(&sides.base, live_after, desired_id);
                // Only a trusted base moves by what is agreed; a first apply's base is the
                // desired tree less what is not (below).
                if let (Some(v), Some(_)) = (agreed_now, &base) {
                    agreed.push((rel, v));
                }
                // A first apply's base is the desired tree less what the sides disagree on.
                if let (None, Some(f)) = (&base, d) {
                    if agreed_now != Some(Some(f.id)) {
                        unagreed_desired.push((rel.clone(), None));
                    }
                }
                if decision.kv.is_some() || decision.drift {
                    decided.push(Decided {
                        conflict: decision.conflict,
                        drift: decision.drift,
                        ..Decided::new(rel, l, d, decision.kv, before)
                    });
                }
            }
            let key_of = |rel: &[u8]| area_key(&area.prefix, rel);
            // A key with no file in the tree (a delete, some drift) is shown with the file
            // an export would give it among the live keys.
            let wanted: BTreeSet<Vec<u8>> = decided
                .iter()
                .filter(|k| k.file.is_none() && k.live.is_some())
                .filter(|k| k.kv == Some(None) || k.drift)
                .map(|k| k.rel.clone())
                .collect();
            let live_paths = if wanted.is_empty() {
                BTreeMap::new()
            } else {
                restore::paths_of(wanted, live.keys().cloned().collect())
            };
            // In a document area a key inside a document is shown as that document and
            // the pointer to the key in it.
            let docs = if area.format.is_documents() {
                restore::documents_in(git, commit, &area.path)?
            } else {
                Vec::new()
            };
            let in_area = |file: &str| {
                let mut path = String::with_capacity(area.path.len() + 1 + file.len());
                path.push_str(&area.path);
                path.push('/');
                path.push_str(file);
                path
            };
            let path_of = |k: &Decided| -> (String, Option<String>) {
                let rel = k.rel;
                if let Some((prefix, doc)) = docs.iter().find(|(p, _)| rel.starts_with(p)) {
                    return (in_area(doc), Some(restore::pointer(&rel[prefix.len()..])));
                }
                let file = match k.file {
                    Some(f) => f.path.as_str(),
                    None => live_paths.get(rel).map_or("?", String::as_str),
                };
                (in_area(file), None)
            };
            let ops = sized_ops(
                git,
                &area,
                checker.as_ref(),
                &decided,
                docs.is_empty(),
                &path_of,
            )?;
            tracing::debug!(area = %area.name, elapsed = ?t0.elapsed(), "decided and sized");
            let drifted: Vec<&Decided> = decided.iter().filter(|k| k.drift).collect();
            let (base_start, base_changes) = match base_tree {
                // An exact restore's base is the tree itself (recorded only by a restore
                // commit, see `restore::record`).
                _ if exact => (desired_tree, Vec::new()),
                // The base after a full apply: agreed values, read from the desired side.
                Some(start) => {
                    let changes = agreed
                        .into_iter()
                        .map(|(rel, v)| {
                            let bytes = v.map(|id| git.read_blob(id)).transpose()?;
                            Ok((rel.clone(), bytes))
                        })
                        .collect::<Result<Vec<_>, GitError>>()?;
                    (start, changes)
                }
                // A first apply: no value needs reading.
                None => (desired_tree, unagreed_desired),
            };
            Ok(AreaPlan {
                drift: drifted.iter().map(|k| key_of(k.rel)).collect(),
                drift_reverted: drifted.iter().filter(|k| k.kv.is_some()).count(),
                drift_paths: drifted.iter().map(|k| path_of(k)).collect(),
                exact: exact.then_some(Exact {
                    from: commit,
                    area_tree: desired_tree,
                    snapshot_revision: snap_revision,
                }),
                pending_export,
                live_keys,
                ops,
                area,
                checkpoint: Judged::Missing,
                cluster: plan_cluster,
                base_start,
                base_changes,
                first_revision,
                epoch: None,
                desired_tree,
            })
        })
        .await?;
    plan.checkpoint = judged;
    guard_mass_delete(&plan, ctx.cfg.sync.max_delete_fraction, allow_mass_delete)?;
    Ok(plan)
}

/// The ops of the keys in `decided` that the KV store receives something for, in order:
/// each key checked against the backend, each value sized from its object header and
/// refused over the backend's single-op limit. `own_paths`: a key whose file is named as
/// it is needs no path kept (not in a document area); `path_of` gives the others'.
fn sized_ops(
    git: &gitstore::GitStore,
    area: &AreaConfig,
    checker: &dyn KvBackend,
    decided: &[Decided],
    own_paths: bool,
    path_of: &dyn Fn(&Decided) -> (String, Option<String>),
) -> Result<Vec<PlannedOp>, ApplyError> {
    let limits = checker.write_limits();
    let key_of = |rel: &[u8]| area_key(&area.prefix, rel);
    let blobs = git.blob_reader();
    let mut ops = Vec::with_capacity(decided.len());
    // The previous new key's count of live keys before it: the same count means
    // nothing between them, so the backend may check both with one range compare.
    let mut previous_new: Option<usize> = None;
    // Sized a part at a time: the ids, positions and sizes of a whole area at once
    // came to ~200 bytes a key, 200 MB on top of a plan of a million keys.
    for part in decided.chunks(SIZED_AT_ONCE) {
        let targets: Vec<ObjectId> = part.iter().filter_map(|k| k.kv.flatten()).collect();
        let located = blobs.locate(&targets);
        let mut sizes = located.iter().map(|b| b.id()).zip(blobs.sizes_of(&located));
        for k in part {
            let Some(target) = k.kv else { continue };
            let key = key_of(k.rel);
            let current = k.live.map(|(_, e)| e);
            // A key this backend cannot hold (Consul: not UTF-8) stops the apply here,
            // before the first write of any area.
            let file = || format!("{}/{}", area.path, k.file.map_or("?", |f| f.path.as_str()));
            if target.is_some() {
                checker
                    .check_key(&key)
                    .map_err(|error| ApplyError::KeyRefused {
                        path: file(),
                        key: key.clone(),
                        error,
                    })?;
            }
            // Sizes come from object headers: validated now, contents read while writing.
            // The limit is the backend's single-op one: a value too big for a batch is
            // written alone, so only what the backend cannot take at all is refused.
            let mut value_size = 0;
            if let Some(id) = target {
                let size = match sizes.next() {
                    Some((sized, size)) if sized == id => size?,
                    _ => blobs.size(id)?,
                };
                let max = limits.max_value_len(&key);
                if size > max as u64 {
                    return Err(ApplyError::ValueTooLarge {
                        path: file(),
                        key,
                        size,
                        limit: max,
                    });
                }
                value_size = size;
            }
            let kind = match (current, &target) {
                (None, _) => OpKind::Add,
                (Some(_), Some(_)) => OpKind::Change,
                (Some(_), None) => OpKind::Delete,
            };
            // A file named as its key is: its path is made when shown, not here.
            let own_file = k
                .file
                .is_some_and(|f| f.path.as_bytes() == k.rel.as_slice());
            let (path, pointer) = if own_paths && own_file {
                (None, None)
            } else {
                let (path, pointer) = path_of(k);
                (Some(path), pointer)
            };
            let expect = match current {
                Some(e) => Precondition::ModRevision(e.mod_revision),
                None if previous_new == Some(k.live_before) => Precondition::AbsentInRun,
                None => Precondition::Absent,
            };
            previous_new = current.is_none().then_some(k.live_before);
            let overwrites = k
                .conflict
                .then(|| current.map(|e| e.value.clone()))
                .flatten();
            let detail = (path.is_some() || pointer.is_some() || overwrites.is_some()).then(|| {
                Box::new(OpDetail {
                    path,
                    pointer,
                    overwrites,
                })
            });
            ops.push(PlannedOp {
                kind,
                key,
                expect,
                value: target,
                value_size,
                detail,
            });
        }
    }
    Ok(ops)
}

/// Live entries by their key relative to the area (`prefix_len`), each with the id its
/// value has as a Git blob: the rule compares sides by id, never by reading values.
fn hashed<'g>(
    git: &'g gitstore::GitStore,
    entries: Vec<KvEntry>,
    prefix_len: usize,
) -> impl Iterator<Item = Result<(Vec<u8>, (ObjectId, KvEntry)), GitError>> + 'g {
    entries.into_iter().map(move |e| {
        let id = git.hash_blob(&e.value)?;
        Ok((e.key.0[prefix_len..].to_vec(), (id, e)))
    })
}

/// The full key of `rel` in an area with key prefix `prefix`.
fn area_key(prefix: &[u8], rel: &[u8]) -> Key {
    let mut k = Vec::with_capacity(prefix.len() + rel.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(rel);
    Key(k)
}

/// `serve`'s plan of a `both` area from what differs between its base and its desired
/// tree. In `both` the KV store receives only keys whose desired value moved away from the
/// base (see `rule::decide`), and only those keys' agreed values move the base, so reading
/// the live values of those keys (`KvBackend::get_many`) plans what reading the whole area
/// would, at the cost of the change instead of the area's size.
///
/// `validated`: a desired key tree a plan found valid before (`Some(None)`: the area had no
/// directory); only the files changed since are checked (that they map to keys, and that
/// no key is held twice). With none, the desired files are read whole to be checked (Git
/// only: the live side is still read for the changed keys alone). `Ok(None)` when the
/// full plan must be made instead: another mode or format, a schema, no trusted
/// checkpoint, or a file only the full plan's read judges (it then names the file).
pub async fn plan_area_delta(
    ctx: &Context,
    area: &AreaConfig,
    commit: Option<ObjectId>,
    cluster: &ClusterId,
    validated: Option<Option<ObjectId>>,
) -> Result<Option<AreaPlan>, ApplyError> {
    let plain = !area.format.is_documents() && area.schema.is_none();
    if area.rule.mode != Mode::Both || !plain {
        return Ok(None);
    }
    let backend = ctx.backend().await?;
    let cp = checkpoint::load(ctx, &area.name).await?;
    let current = backend.current_revision().await?;
    let judged = Judged::judge(cp, &area.name, cluster, current);
    let Some(cp) = judged.trusted() else {
        return Ok(None);
    };
    if let (Some(allowed), Some(tip)) = (ctx.cfg.git.allowed_signers.clone(), commit) {
        verify_signed(ctx, &allowed, Some(cp), tip, &area.path).await?;
    }
    let base_tree = cp.base_tree;
    let path = area.path.clone();
    let found = ctx
        .git_blocking(move |git| -> Result<_, ApplyError> {
            let desired = super::view::area_tree(git, commit, &path)?;
            let valid = match validated {
                Some(validated) => still_valid(git, validated, desired),
                None => read_area(git, desired, &path).is_ok(),
            };
            if !valid {
                return Ok(None);
            }
            Ok(candidates(git, base_tree, desired)?.map(|c| (desired, c)))
        })
        .await?;
    let Some((desired_tree, candidates)) = found else {
        return Ok(None);
    };
    let keys: Vec<Key> = candidates
        .iter()
        .map(|c| area_key(&area.prefix, &c.rel))
        .collect();
    let live = backend.get_many(&keys).await?;
    let area_cfg = area.clone();
    let checker = backend.clone();
    let mut plan = ctx
        .git_blocking(move |git| -> Result<AreaPlan, ApplyError> {
            let area = area_cfg;
            let prefix_len = area.prefix.len();
            let live: Vec<(Vec<u8>, (ObjectId, KvEntry))> =
                hashed(git, live, prefix_len).collect::<Result<_, GitError>>()?;
            let mut live = live.iter().peekable();
            let (mut decided, mut agreed, mut pending_export) = (Vec::new(), Vec::new(), 0);
            for (i, c) in candidates.iter().enumerate() {
                let l = live.next_if(|(rel, _)| *rel == c.rel).map(|(_, l)| l);
                let sides = Sides {
                    base: c
                        .base
                        .as_ref()
                        .map_or(Base::Absent, |f| Base::Present(f.id)),
                    live: l.map(|(id, _)| *id),
                    desired: c.desired.as_ref().map(|f| f.id),
                };
                let decision = sides.decide(area.rule);
                pending_export += usize::from(decision.git.is_some());
                let live_after = decision.kv.unwrap_or(sides.live);
                if let Some(v) = base_after(&sides.base, live_after, sides.desired) {
                    agreed.push((c.rel.clone(), v));
                }
                if decision.kv.is_some() {
                    // What lies between two new keys is not read here: each is checked
                    // absent on its own (a distinct count), never as a run.
                    decided.push(Decided {
                        conflict: decision.conflict,
                        ..Decided::new(&c.rel, l, c.desired.as_ref(), decision.kv, i)
                    });
                }
            }
            // A key Git deletes is shown as the file Git deleted.
            let path_of = |k: &Decided| -> (String, Option<String>) {
                let file = k.file.map(|f| f.path.as_str()).or_else(|| {
                    let at = candidates.binary_search_by(|c| c.rel.as_slice().cmp(k.rel));
                    at.ok()
                        .and_then(|i| candidates[i].base.as_ref())
                        .map(|f| f.path.as_str())
                });
                (format!("{}/{}", area.path, file.unwrap_or("?")), None)
            };
            let ops = sized_ops(git, &area, checker.as_ref(), &decided, true, &path_of)?;
            let base_changes = agreed
                .into_iter()
                .map(|(rel, v)| Ok((rel, v.map(|id| git.read_blob(id)).transpose()?)))
                .collect::<Result<Vec<_>, GitError>>()?;
            Ok(AreaPlan {
                drift: Vec::new(),
                drift_reverted: 0,
                drift_paths: Vec::new(),
                exact: None,
                pending_export,
                live_keys: 0,
                ops,
                area,
                checkpoint: Judged::Missing,
                cluster: ClusterId(String::new()),
                base_start: base_tree,
                base_changes,
                first_revision: current,
                epoch: None,
                desired_tree,
            })
        })
        .await?;
    plan.cluster = cluster.clone();
    plan.checkpoint = judged;
    // Only a plan that deletes needs the area's size, for the mass-delete guard.
    if plan.count(OpKind::Delete) > 0 {
        let live_keys = backend.count(&area.prefix).await?;
        plan.live_keys = usize::try_from(live_keys).unwrap_or(usize::MAX);
    }
    guard_mass_delete(&plan, ctx.cfg.sync.max_delete_fraction, false)?;
    Ok(Some(plan))
}

/// A key whose desired file differs from its base file, with both (a file renamed to
/// another spelling of its key has both paths).
struct Candidate {
    rel: Vec<u8>,
    base: Option<AreaFile>,
    desired: Option<AreaFile>,
}

/// The keys whose file differs between the base tree and the desired one, sorted by key;
/// `None` when a changed path maps to no key, or two changed paths to one key on the same
/// side (the full read names them; a base may hold a file carried over from Git that maps
/// to no key).
fn candidates(
    git: &gitstore::GitStore,
    base: Option<ObjectId>,
    desired: Option<ObjectId>,
) -> Result<Option<Vec<Candidate>>, GitError> {
    if base == desired {
        return Ok(Some(Vec::new()));
    }
    let mut by_key: BTreeMap<Vec<u8>, Candidate> = BTreeMap::new();
    for change in git.diff_files(base, desired)? {
        let Ok(rel) = sync_core::mapper::decode_path(&change.path) else {
            return Ok(None);
        };
        let c = by_key.entry(rel.clone()).or_insert(Candidate {
            rel,
            base: None,
            desired: None,
        });
        for (side, id) in [(&mut c.base, change.old), (&mut c.desired, change.new)] {
            let Some(id) = id else { continue };
            if side.is_some() {
                return Ok(None);
            }
            *side = Some(AreaFile {
                id,
                path: change.path.clone(),
            });
        }
    }
    Ok(Some(by_key.into_values().collect()))
}

/// Whether `desired` is as valid as `validated`, the tree it changed from: every file
/// added or changed since maps to a key, no two of them to one key, and no added file to a
/// key `validated` holds elsewhere (unless that file was removed). A tree that cannot be
/// compared (gone from the repository) is not.
fn still_valid(
    git: &gitstore::GitStore,
    validated: Option<ObjectId>,
    desired: Option<ObjectId>,
) -> bool {
    if validated == desired {
        return true;
    }
    let Ok(changes) = git.diff_files(validated, desired) else {
        return false;
    };
    let (mut written, mut removed, mut added) = (Vec::new(), BTreeSet::new(), Vec::new());
    for change in &changes {
        let Ok(rel) = sync_core::mapper::decode_path(&change.path) else {
            return false;
        };
        match (change.old, change.new) {
            (Some(_), None) => {
                removed.insert(rel);
            }
            (old, Some(_)) => {
                if old.is_none() {
                    added.push(rel.clone());
                }
                written.push(rel);
            }
            (None, None) => {}
        }
    }
    written.sort_unstable();
    if written.windows(2).any(|w| w[0] == w[1]) {
        return false;
    }
    let mut held = sync_core::mapper::Locator::default();
    added
        .iter()
        .filter(|rel| !removed.contains(*rel))
        .all(|rel| {
            matches!(
                sync_core::mapper::lookup(git, validated.as_ref(), rel, &mut held),
                Ok(None)
            )
        })
}

/// Checkpoints looked back through for the last branch commit kvgit recorded (an apply's
/// checkpoint records none; the export before it does).
const BASE_SEARCH_DEPTH: usize = 100;

/// With `git.allowed_signers_file`: every commit since the area's base (the branch commit
/// its checkpoint records, else every reachable one, bounded) that changes the area's path
/// must be signed by an allowed signer, or the area is refused before any write.
async fn verify_signed(
    ctx: &Context,
    allowed: &gitstore::AllowedSigners,
    checkpoint: Option<&checkpoint::Checkpoint>,
    tip: ObjectId,
    path: &str,
) -> Result<(), ApplyError> {
    let allowed = allowed.clone();
    let start = checkpoint.map(|c| c.id);
    let path = path.to_owned();
    let found = ctx
        .git_blocking(move |git| -> Result<_, ApplyError> {
            let base = match start {
                Some(cp) => recorded_branch_commit(git, cp)?,
                None => None,
            };
            git.unverified_commit(&allowed, base, tip, &path)
                .map_err(ApplyError::Verify)
        })
        .await?;
    match found {
        Some(unverified) => Err(ApplyError::Unverified(unverified)),
        None => Ok(()),
    }
}

/// The newest `Kvgit-Commit` along the checkpoint chain from `cp` that is in the repository.
fn recorded_branch_commit(
    git: &gitstore::GitStore,
    cp: ObjectId,
) -> Result<Option<ObjectId>, GitError> {
    let mut at = Some(cp);
    for _ in 0..BASE_SEARCH_DEPTH {
        let Some(id) = at else { break };
        let info = git.commit_info(id)?;
        let trailers = super::message::parse_trailers(&info.message);
        let recorded = trailers
            .get(super::message::COMMIT)
            .and_then(|c| ObjectId::from_hex(c.as_bytes()).ok())
            .filter(|c| git.has_object(*c));
        if recorded.is_some() {
            return Ok(recorded);
        }
        at = info.parents.first().copied();
    }
    Ok(None)
}

/// Refuse an apply that empties an area holding keys, or deletes more than the fraction.
fn guard_mass_delete(
    plan: &AreaPlan,
    fraction: f64,
    allowed: bool,
) -> Result<(), MassDeleteRefused> {
    if allowed || plan.live_keys == 0 {
        return Ok(());
    }
    let deletes = plan.count(OpKind::Delete);
    let adds = plan.count(OpKind::Add);
    let prefix = String::from_utf8_lossy(&plan.area.prefix).into_owned();
    if deletes > 0 && deletes == plan.live_keys && adds == 0 {
        return Err(MassDeleteRefused::Empties {
            live: plan.live_keys,
            prefix,
        });
    }
    if deletes as f64 > fraction * plan.live_keys as f64 {
        return Err(MassDeleteRefused::OverFraction {
            deletes,
            live: plan.live_keys,
            prefix,
            fraction,
        });
    }
    Ok(())
}

/// Areas planned at once: each holds its files, live keys and decisions until its plan is
/// made (four areas of 250k keys at once peaked at ~550 MB), and two keep two cores busy.
const PLANNED_AT_ONCE: usize = 2;

/// Keys a plan sizes the values of at once (in pack order within them; see
/// `BlobReader::sizes_of`): bounds what sizing holds whatever the area's size. A few in
/// unit tests, so that every planning test crosses parts.
const SIZED_AT_ONCE: usize = if cfg!(test) { 3 } else { 1 << 15 };

/// Values the writes look up and read at once (`BlobReader::locate`, `read_many`), at most;
/// the first window holds FIRST_WINDOW, and each one twice the one before.
const LOCATE_WINDOW: usize = 4096;
const FIRST_WINDOW: usize = 256;
/// Bytes of values one window holds at most (a value larger than that goes alone).
const WINDOW_BYTES: u64 = 8 << 20;

/// Write every area's plan as one stream of transactions (no drain between areas), then
/// move each fully written area's base to what both sides now agree on.
pub async fn write_plans(
    ctx: &Context,
    plans: &Arc<Vec<AreaPlan>>,
) -> Result<Vec<writer::Written>, ApplyError> {
    Ok(write_and_record(ctx, plans)
        .await?
        .into_iter()
        .map(|(w, _)| w)
        .collect())
}

/// [`write_plans`], also returning per area the restore commit an exact restore made.
async fn write_and_record(
    ctx: &Context,
    plans: &Arc<Vec<AreaPlan>>,
) -> Result<Vec<(writer::Written, Option<ObjectId>)>, ApplyError> {
    let backend = ctx.backend().await?;
    let (tx, rx) = writer::channel();
    let limits = backend.write_limits();
    // The writes are built and their values read from Git on a blocking thread while
    // earlier transactions are written: copying 100k keys up front held the first one back
    // by 10-13 ms.
    let shared = Arc::clone(plans);
    let producer = ctx.git_blocking(move |git| -> Result<(), GitError> {
        let mut chunker = writer::Chunker::new(limits);
        let blobs = git.blob_reader();
        let mut ops = shared.iter().flat_map(|p| p.ops.iter()).peekable();
        let mut most = FIRST_WINDOW;
        loop {
            // Looked up and read a window at a time (see `BlobReader::locate`,
            // `BlobReader::read_many`); the first is small, so that the first transaction is
            // not held back, and each holds at most WINDOW_BYTES of values.
            let (mut window, mut bytes) = (Vec::with_capacity(most), 0u64);
            while let Some(op) =
                ops.next_if(|op| window.is_empty() || bytes + op.value_size <= WINDOW_BYTES)
            {
                bytes += op.value_size;
                window.push(op);
                if window.len() == most {
                    break;
                }
            }
            if window.is_empty() {
                break;
            }
            most = (most * 2).min(LOCATE_WINDOW);
            let ids: Vec<ObjectId> = window.iter().filter_map(|op| op.value).collect();
            let located = blobs.locate(&ids);
            let mut values = ids.iter().zip(blobs.read_many(&located));
            for op in window {
                let (key, expect) = (op.key.clone(), op.expect);
                let w = match op.value {
                    Some(id) => WriteOp::Put {
                        key,
                        value: match values.next() {
                            Some((read, value)) if *read == id => value?,
                            _ => blobs.read(id)?,
                        },
                        expect,
                    },
                    None => WriteOp::Delete { key, expect },
                };
                for chunk in chunker.push(w) {
                    if tx.blocking_send(chunk).is_err() {
                        return Ok(()); // the writers stopped on an error; they report it
                    }
                }
            }
        }
        if let Some(chunk) = chunker.finish() {
            let _ = tx.blocking_send(chunk);
        }
        Ok(())
    });
    // The first transactions are built while the credential is probed; nothing is written
    // before it passed (a refusal drops `rx`, which stops the producer).
    let written = async {
        probe_areas(backend.as_ref(), plans).await?;
        Ok::<_, ApplyError>(writer::write_queue(backend.clone(), rx).await?)
    };
    let (produced, all) = tokio::join!(producer, written);
    let all = all?;
    produced?;
    let reports: Vec<writer::Written> = plans
        .iter()
        .map(|plan| {
            let raced: Vec<Key> = all
                .raced
                .iter()
                .filter(|k| k.0.starts_with(&plan.area.prefix))
                .cloned()
                .collect();
            writer::Written {
                ops: plan.ops.len() - raced.len(),
                txns: all.txns,
                last_revision: all.last_revision,
                raced,
            }
        })
        .collect();
    // Only an area written in full moves its base (a raced one is decided again).
    let complete = plans
        .iter()
        .zip(&reports)
        .enumerate()
        .filter(|(_, (_, r))| r.raced.is_empty());
    let mut restore_commits = vec![None; plans.len()];
    if plans.iter().any(|p| p.exact.is_some()) {
        // A restore commits on the branch: one area after the other.
        for (i, (plan, _)) in complete {
            restore_commits[i] = record(ctx, plan).await?;
        }
    } else {
        // Each area moves its own checkpoint ref: side by side.
        futures::future::try_join_all(complete.map(|(_, (plan, _))| record(ctx, plan))).await?;
    }
    Ok(reports.into_iter().zip(restore_commits).collect())
}

/// Record what a fully written area's plan leaves both sides agreeing on: its base, or for
/// an exact restore the restore (and its commit on the branch, returned).
async fn record(ctx: &Context, plan: &AreaPlan) -> Result<Option<ObjectId>, ApplyError> {
    let recorded = match &plan.exact {
        Some(exact) => restore::record(ctx, plan, exact).await,
        None => record_base(ctx, plan).await.map(|()| None),
    };
    recorded.map_err(|e| ApplyError::Area {
        area: plan.area.name.0.clone(),
        source: Box::new(e),
    })
}

/// Ask the backend, before the first write, whether the credential may write each area
/// that has ops, so a credential that may write one area but not another is refused with
/// nothing written in any area (transactions mix areas and run concurrently). One key per
/// area, its first op's: roles are per-area prefixes (what `kvgit acl` makes), so one key
/// stands for its area; probing every key would double the requests of an apply. A role
/// narrower than its area's prefix can still refuse a later key mid-apply.
async fn probe_areas(backend: &dyn KvBackend, plans: &[AreaPlan]) -> Result<(), ApplyError> {
    let keys: Vec<Key> = plans
        .iter()
        .filter_map(|p| p.ops.first().map(|op| op.key.clone()))
        .collect();
    backend.probe_write(&keys).await?;
    Ok(())
}

/// After a complete apply, record what both sides now agree on. With a trusted checkpoint
/// only its base moves; otherwise (a first apply, or a checkpoint that cannot be trusted)
/// a checkpoint is written, so that live changes made after this apply are recorded by
/// the next export instead of being reverted as conflicts.
async fn record_base(ctx: &Context, plan: &AreaPlan) -> Result<(), ApplyError> {
    let (previous, revision, cluster) = match &plan.checkpoint {
        Judged::Trusted(_) if plan.base_changes.is_empty() => return Ok(()),
        Judged::Trusted(cp) => (Some(cp.id), cp.revision, cp.cluster.clone()),
        Judged::Distrusted(cp, _) => (Some(cp.id), plan.first_revision, plan.cluster.clone()),
        Judged::Missing => (None, plan.first_revision, plan.cluster.clone()),
    };
    let changes = plan.base_changes.clone();
    let start = plan.base_start;
    let new_base = if changes.is_empty() {
        start
    } else {
        ctx.git_blocking(move |git| write_changes(git, start.as_ref(), changes))
            .await?
    };
    checkpoint::save(
        ctx,
        &plan.area.name,
        previous,
        revision,
        &cluster,
        new_base,
        None,
        plan.epoch,
    )
    .await?;
    Ok(())
}

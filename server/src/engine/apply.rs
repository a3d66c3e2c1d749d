//! `kvgit plan` and `kvgit apply`: Git -> KV by the sync rule. Every selected area is read,
//! decided and validated (paths, value sizes, the mass-delete guard) before the first write.

use super::checkpoint::{self, Judged};
use super::decide::{base_after, Outcome, Sides};
use super::export::write_changes;
use super::view::{area_tree, read_area, read_area_lenient};
use super::writer;
use super::Context;
use crate::config::AreaConfig;
use anyhow::{bail, Context as _};
use gitstore::ObjectId;
use std::collections::{BTreeMap, BTreeSet};
use sync_core::rule::Base;
use sync_core::{ClusterId, Key, KvEntry, Precondition, Revision, Value, WriteOp};

/// How a planned write changes a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Add,
    Change,
    Delete,
}

impl OpKind {
    fn sign(self) -> char {
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
    /// The live value this write replaces although it changed too (Git wins).
    pub overwrites: Option<Value>,
    pub expect: Precondition,
}

/// Everything an apply of one area would do, validated.
pub struct AreaPlan {
    pub area: AreaConfig,
    pub ops: Vec<PlannedOp>,
    pub drift: Vec<Key>,
    /// Keys only the KV store has a newer value for (they go to Git by export).
    pub pending_export: usize,
    pub live_keys: usize,
    /// The area's checkpoint as judged against the live cluster.
    pub checkpoint: Judged,
    cluster: ClusterId,
    /// The tree the base changes apply to: the checkpoint's base, or for a first apply
    /// (no trusted checkpoint) the desired tree.
    base_start: Option<ObjectId>,
    /// Base changes that hold once every op is written: relative key -> agreed value.
    base_changes: BTreeMap<Vec<u8>, Option<Value>>,
    /// For a first apply, the revision its checkpoint records: every live change up to it
    /// is in the new base, or is a key the rule carries to Git (those are dated before it,
    /// so the next export sees them and commits them).
    first_revision: Revision,
}

impl AreaPlan {
    pub fn count(&self, kind: OpKind) -> usize {
        self.ops.iter().filter(|o| o.kind == kind).count()
    }
}

/// Print the plan; exit 2 with --detailed-exitcode when there is something to do.
pub async fn plan_cmd(
    ctx: &Context,
    only: Option<&str>,
    rev: Option<&str>,
    detailed: bool,
    allow_mass_delete: bool,
) -> anyhow::Result<u8> {
    let plans = plan_all(ctx, only, rev, allow_mass_delete).await?;
    print_plans(&plans);
    let changes = plans.iter().any(|p| !p.ops.is_empty());
    Ok(if detailed && changes { 2 } else { 0 })
}

pub async fn apply_cmd(
    ctx: &Context,
    only: Option<&str>,
    rev: Option<&str>,
    dry_run: bool,
    allow_mass_delete: bool,
) -> anyhow::Result<u8> {
    let started = std::time::Instant::now();
    let mut plans = plan_all(ctx, only, rev, allow_mass_delete).await?;
    tracing::debug!(elapsed = ?started.elapsed(), "planned and validated");
    if dry_run {
        print_plans(&plans);
        println!("dry run: nothing written");
        return Ok(0);
    }
    let backend = ctx.backend().await?;
    // A key someone else changed after we read it is re-decided, never clobbered.
    for round in 0..3 {
        let written = write_plans(ctx, &plans).await?;
        let mut raced_areas = Vec::new();
        for (plan, report) in plans.iter().zip(&written) {
            print_applied(plan, report);
            if !report.raced.is_empty() {
                raced_areas.push(plan.area.name.0.clone());
            }
        }
        if raced_areas.is_empty() {
            tracing::debug!(elapsed = ?started.elapsed(), "written");
            return Ok(0);
        }
        if round == 2 {
            bail!(
                "keys in area(s) {} kept changing while applying; run apply again",
                raced_areas.join(", ")
            );
        }
        let cluster = backend.cluster_id().await?;
        let commit = target_commit(ctx, rev).await?;
        plans.clear();
        for name in raced_areas {
            let area = ctx
                .cfg
                .select_areas(Some(&name))
                .map_err(anyhow::Error::msg)?[0]
                .clone();
            plans.push(plan_area(ctx, &area, commit, &cluster, allow_mass_delete).await?);
        }
    }
    Ok(0)
}

pub async fn target_commit(ctx: &Context, rev: Option<&str>) -> anyhow::Result<Option<ObjectId>> {
    let rev = rev.map(str::to_string);
    let branch = ctx.cfg.git.branch.clone();
    ctx.git_blocking(move |git| match rev {
        Some(r) => Ok(Some(
            git.resolve_commit(&r)
                .with_context(|| format!("--ref {r}"))?,
        )),
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
pub async fn plan_all(
    ctx: &Context,
    only: Option<&str>,
    rev: Option<&str>,
    allow_mass_delete: bool,
) -> anyhow::Result<Vec<AreaPlan>> {
    let areas = ctx.cfg.select_areas(only).map_err(anyhow::Error::msg)?;
    let commit = target_commit(ctx, rev).await?;
    let backend = ctx.backend().await?;
    let cluster = backend
        .cluster_id()
        .await
        .context("cannot read the cluster id")?;
    // Areas are independent: their Git reads run side by side on blocking threads.
    futures::future::try_join_all(areas.into_iter().map(|area| {
        let cluster = &cluster;
        async move {
            plan_area(ctx, area, commit, cluster, allow_mass_delete)
                .await
                .with_context(|| format!("area {}", area.name))
        }
    }))
    .await
}

pub async fn plan_area(
    ctx: &Context,
    area: &AreaConfig,
    commit: Option<ObjectId>,
    cluster: &ClusterId,
    allow_mass_delete: bool,
) -> anyhow::Result<AreaPlan> {
    let backend = ctx.backend().await?;
    let limits = backend.write_limits();
    let cp = checkpoint::load(ctx, &area.name).await?;
    let started = std::time::Instant::now();
    // Read after the checkpoint: its revision is the cluster's current one or later.
    let snap = backend.snapshot(&area.prefix, None).await?;
    tracing::debug!(area = %area.name, elapsed = ?started.elapsed(), keys = snap.entries.len(), "live read");
    let judged = Judged::judge(cp, &area.name, cluster, snap.revision);
    if let Some(why) = judged.distrust() {
        tracing::warn!(area = %area.name, reason = %why, "checkpoint not trusted: planning with no base");
    }
    let snap_revision = snap.revision;
    let plan_cluster = cluster.clone();
    let area_cfg = area.clone();
    let base_tree = judged.trusted().map(|c| c.base_tree);
    let checker = backend.clone();
    let mut plan = ctx
        .git_blocking(move |git| {
            let area = area_cfg;
            let prefix_len = area.prefix.len();
            let t0 = std::time::Instant::now();
            let desired_tree = area_tree(git, commit, &area.path)?;
            let desired = read_area(git, desired_tree, &area.path)?;
            tracing::debug!(area = %area.name, elapsed = ?t0.elapsed(), "desired read");
            let base = match base_tree {
                // The base is kvgit's own record: a file in it that maps to no key was
                // carried over from Git and stands for no key.
                Some(t) => Some(read_area_lenient(git, t, &area.path)?.0),
                None => None,
            };
            let live_keys = snap.entries.len();
            let live: BTreeMap<Vec<u8>, (ObjectId, KvEntry)> = snap
                .entries
                .into_iter()
                .map(|e| Ok((e.key.0[prefix_len..].to_vec(), (git.hash_blob(&e.value)?, e))))
                .collect::<anyhow::Result<_>>()?;
            let mut keys: BTreeSet<&Vec<u8>> = live.keys().chain(desired.keys()).collect();
            if let Some(b) = &base {
                keys.extend(b.keys());
            }
            let mut outcome = Outcome::default();
            let mut agreed: BTreeMap<Vec<u8>, Option<ObjectId>> = BTreeMap::new();
            for rel in keys {
                let s = Sides {
                    base: match &base {
                        None => Base::Unknown,
                        Some(b) => b.get(rel).map_or(Base::Absent, |f| Base::Present(f.id)),
                    },
                    live: live.get(rel).map(|(id, _)| *id),
                    desired: desired.get(rel).map(|f| f.id),
                };
                outcome.add(area.rule, rel.clone(), &s);
                let live_after = match outcome.kv.get(rel) {
                    Some(a) => *a,
                    None => s.live,
                };
                if let Some(v) = base_after(&s.base, live_after, s.desired) {
                    agreed.insert(rel.clone(), v);
                }
            }
            let key_of = |rel: &[u8]| {
                let mut k = area.prefix.clone();
                k.extend_from_slice(rel);
                Key(k)
            };
            let conflicts: BTreeSet<&Vec<u8>> = outcome.conflicts.iter().collect();
            let blobs = git.blob_reader();
            let mut ops = Vec::with_capacity(outcome.kv.len());
            for (rel, target) in &outcome.kv {
                let current = live.get(rel).map(|(_, e)| e);
                // A key this backend cannot hold (Consul: not UTF-8) stops the apply here,
                // before the first write of any area.
                if target.is_some() {
                    checker.check_key(&key_of(rel)).map_err(|e| {
                        anyhow::anyhow!(
                            "{}/{}: {e}",
                            area.path,
                            desired.get(rel).map_or("?", |f| f.path.as_str())
                        )
                    })?;
                }
                // Sizes come from object headers: validated now, contents read while writing.
                // The limit is the backend's single-op one: a value too big for a batch is
                // written alone, so only what the backend cannot take at all is refused.
                if let Some(id) = target {
                    let size = blobs.size(*id)?;
                    let max = limits.max_value_len(&key_of(rel));
                    if size > max as u64 {
                        bail!(
                            "{}/{}: the value of key {} is {size} bytes, over the backend's limit of {max} bytes (the largest single write it takes)",
                            area.path,
                            desired.get(rel).map_or("?", |f| f.path.as_str()),
                            key_of(rel),
                        );
                    }
                }
                let value = *target;
                let kind = match (current, &value) {
                    (None, _) => OpKind::Add,
                    (Some(_), Some(_)) => OpKind::Change,
                    (Some(_), None) => OpKind::Delete,
                };
                ops.push(PlannedOp {
                    kind,
                    key: key_of(rel),
                    overwrites: conflicts.contains(rel).then(|| current.map(|e| e.value.clone())).flatten(),
                    expect: current.map_or(Precondition::Absent, |e| Precondition::ModRevision(e.mod_revision)),
                    value,
                });
            }
            tracing::debug!(area = %area.name, elapsed = ?t0.elapsed(), "decided and sized");
            let mut base_changes = BTreeMap::new();
            let base_start = match base_tree {
                Some(start) => {
                    // The base after a full apply: agreed values, read from the desired side.
                    for (rel, v) in agreed {
                        let bytes = match v {
                            Some(id) => Some(git.read_blob(id)?),
                            None => None,
                        };
                        base_changes.insert(rel, bytes);
                    }
                    start
                }
                None => {
                    // A first apply: the base is the desired tree less the keys the two
                    // sides still disagree on (no value needs reading).
                    for (rel, f) in &desired {
                        if agreed.get(rel) != Some(&Some(f.id)) {
                            base_changes.insert(rel.clone(), None);
                        }
                    }
                    desired_tree
                }
            };
            let first_revision = outcome
                .git
                .keys()
                .filter_map(|rel| live.get(rel))
                .map(|(_, e)| Revision(e.mod_revision.0.saturating_sub(1)))
                .fold(snap_revision, Revision::min);
            Ok(AreaPlan {
                drift: outcome.drift.iter().map(|r| key_of(r)).collect(),
                pending_export: outcome.git.len(),
                live_keys,
                ops,
                area,
                checkpoint: Judged::Missing,
                cluster: plan_cluster,
                base_start,
                base_changes,
                first_revision,
            })
        })
        .await?;
    plan.checkpoint = judged;
    guard_mass_delete(&plan, ctx.cfg.sync.max_delete_fraction, allow_mass_delete)?;
    Ok(plan)
}

/// An apply that would delete too much: refused unless `--allow-mass-delete`.
#[derive(Debug, thiserror::Error)]
pub enum MassDeleteRefused {
    #[error("refusing to delete all {live} keys under {prefix:?}: the apply would empty the area (pass --allow-mass-delete if that is intended)")]
    Empties { live: usize, prefix: String },
    #[error("refusing to delete {deletes} of {live} keys under {prefix:?}, more than sync.max_delete_fraction = {fraction} (pass --allow-mass-delete if that is intended)")]
    OverFraction {
        deletes: usize,
        live: usize,
        prefix: String,
        fraction: f64,
    },
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

fn print_plans(plans: &[AreaPlan]) {
    let (mut add, mut change, mut delete) = (0, 0, 0);
    for p in plans {
        for op in &p.ops {
            match &op.overwrites {
                Some(v) => println!(
                    "{} {} (Git wins over live value {})",
                    op.kind.sign(),
                    op.key,
                    preview(v)
                ),
                None => println!("{} {}", op.kind.sign(), op.key),
            }
        }
        for k in &p.drift {
            println!("# drift: {k} differs from Git");
        }
        if p.pending_export > 0 {
            println!(
                "# {}: {} keys changed in the KV store are not in Git yet (run export)",
                p.area.name, p.pending_export
            );
        }
        add += p.count(OpKind::Add);
        change += p.count(OpKind::Change);
        delete += p.count(OpKind::Delete);
    }
    if add + change + delete == 0 {
        println!("No changes. The KV store matches Git.");
    } else {
        println!("Plan: {add} to add, {change} to change, {delete} to delete.");
    }
}

fn preview(v: &[u8]) -> String {
    let k = Key(v.iter().copied().take(64).collect());
    let more = if v.len() > 64 { "…" } else { "" };
    format!("\"{k}{more}\"")
}

fn print_applied(plan: &AreaPlan, w: &writer::Written) {
    let rev = w
        .last_revision
        .map_or_else(|| "-".to_string(), |r| r.to_string());
    // Count what was written, not what was planned: a raced op was not written.
    let raced: std::collections::HashSet<&Key> = w.raced.iter().collect();
    let written = |kind: OpKind| {
        plan.ops
            .iter()
            .filter(|o| o.kind == kind && !raced.contains(&o.key))
            .count()
    };
    println!(
        "{}: {} added, {} changed, {} deleted (revision {rev})",
        plan.area.name,
        written(OpKind::Add),
        written(OpKind::Change),
        written(OpKind::Delete),
    );
    for op in plan.ops.iter().filter(|o| !raced.contains(&o.key)) {
        if let Some(v) = &op.overwrites {
            println!("  ! {}: overwrote live value {}", op.key, preview(v));
        }
    }
    if !w.raced.is_empty() {
        // Another writer (a second apply, an operator): a summary, not a line per key.
        const SHOWN: usize = 5;
        let some: Vec<String> = w.raced.iter().take(SHOWN).map(|k| k.to_string()).collect();
        let more = w.raced.len().saturating_sub(SHOWN);
        let tail = if more > 0 {
            format!(", and {more} more")
        } else {
            String::new()
        };
        println!(
            "  ? {} keys changed by someone else meanwhile ({}{tail}); re-deciding them",
            w.raced.len(),
            some.join(", ")
        );
    }
}

/// Write every area's plan as one stream of transactions (no drain between areas), then
/// move each fully written area's base to what both sides now agree on.
pub async fn write_plans(
    ctx: &Context,
    plans: &[AreaPlan],
) -> anyhow::Result<Vec<writer::Written>> {
    let backend = ctx.backend().await?;
    let ops: Vec<PlannedOp> = plans.iter().flat_map(|p| p.ops.iter().cloned()).collect();
    let (tx, rx) = writer::channel();
    let limits = backend.write_limits();
    // Values are read from Git on a blocking thread while earlier transactions are written.
    let producer = ctx.git_blocking(move |git| {
        let mut chunker = writer::Chunker::new(limits);
        let blobs = git.blob_reader();
        for op in ops {
            let w = match op.value {
                Some(id) => WriteOp::Put {
                    key: op.key,
                    value: blobs.read(id)?,
                    expect: op.expect,
                },
                None => WriteOp::Delete {
                    key: op.key,
                    expect: op.expect,
                },
            };
            for chunk in chunker.push(w) {
                if tx.blocking_send(Ok(chunk)).is_err() {
                    return Ok(()); // the writers stopped on an error; they report it
                }
            }
        }
        if let Some(chunk) = chunker.finish() {
            let _ = tx.blocking_send(Ok(chunk));
        }
        Ok(())
    });
    let (produced, all) = tokio::join!(producer, writer::write_queue(backend, rx));
    let all = all?;
    produced?;
    let mut per_area = Vec::with_capacity(plans.len());
    for plan in plans {
        let raced: Vec<Key> = all
            .raced
            .iter()
            .filter(|k| k.0.starts_with(&plan.area.prefix))
            .cloned()
            .collect();
        let report = writer::Written {
            ops: plan.ops.len() - raced.len(),
            txns: all.txns,
            last_revision: all.last_revision,
            raced,
        };
        if report.raced.is_empty() {
            record_base(ctx, plan)
                .await
                .with_context(|| format!("area {}", plan.area.name))?;
        }
        per_area.push(report);
    }
    Ok(per_area)
}

/// After a complete apply, record what both sides now agree on. With a trusted checkpoint
/// only its base moves; otherwise (a first apply, or a checkpoint that cannot be trusted)
/// a checkpoint is written, so that live changes made after this apply are recorded by
/// the next export instead of being reverted as conflicts.
async fn record_base(ctx: &Context, plan: &AreaPlan) -> anyhow::Result<()> {
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
    )
    .await?;
    Ok(())
}

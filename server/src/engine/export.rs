//! `kvgit export`: one pass KV -> Git. From a checkpoint of the same cluster only the keys
//! changed since it are read (cost follows the changes); otherwise a full pass by the rule.

mod error;

pub use error::ExportError;

use super::changes::{self, Delta};
use super::checkpoint::{self, Checkpoint, Judged};
use super::decide::{base_after, union3, Sides};
use super::message::{commit_message, Trailers};
use super::ser;
use super::view::{key_tree, read_area_lenient};
use super::{Context, GitError};
use crate::config::AreaConfig;
use futures::StreamExt;
use gitstore::{BlobContent, CommitsGo, GitStore, HashedBlob, ObjectBatch, ObjectId, StoredBlob};
use std::collections::BTreeMap;
use sync_core::mapper::{self, BulkKeys, Locator};
use sync_core::rule::Base;
use sync_core::tree::DirPlan;
use sync_core::{AreaName, ClusterId, Epoch, Key, KvEntry, Revision, Value};

/// Full passes hold an area's keys and values in memory (a first export its keys and blob
/// ids); the service runs one at a time.
static FULL_PASSES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// From this many changed files on, a commit's objects go into one pack instead of loose
/// files: a loose object costs a file create (and often a directory), ~0.6-0.9 ms each on
/// the test machine's ext4, a pack two files and two fsyncs whatever its size. Packs are
/// merged geometrically by the service, and by one-shot commands past 32 packs.
const PACK_THRESHOLD: usize = 8;

/// How an export pass read the live side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PassKind {
    /// Watch events since the checkpoint.
    Incremental,
    /// A full snapshot with no base (first export, or a checkpoint that cannot be trusted).
    NoBase,
    /// A full snapshot against the checkpoint's base (its revision was compacted).
    Resync,
}

/// Why a pass started again from a full read instead of following the checkpoint.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ResyncCause {
    /// The `reason` label of `kvgit_resyncs_total`.
    pub label: &'static str,
    /// For people: logs, `/status`, the export's output.
    pub why: String,
}

/// The guard against recording an accidental wipe (SPEC: mass deletion, KV -> Git).
#[derive(Debug, Clone, Copy)]
pub struct DeleteGuard {
    /// Refuse when more than this fraction of the area's keys would be deleted...
    pub fraction: f64,
    /// ...and at least this many (small areas may lose their last keys).
    pub min_keys: usize,
    /// `--allow-mass-delete`: the operator means it.
    pub allowed: bool,
}

impl DeleteGuard {
    pub fn from_config(cfg: &crate::config::Config, allowed: bool) -> DeleteGuard {
        DeleteGuard {
            fraction: cfg.sync.max_delete_fraction,
            min_keys: cfg.sync.mass_delete_min_keys,
            allowed,
        }
    }

    /// Whether deleting `deletes` of `keys` must be refused.
    fn refuses(&self, deletes: usize, keys: usize) -> bool {
        !self.allowed
            && deletes > 0
            && deletes >= self.min_keys
            && deletes as f64 > self.fraction * keys as f64
    }
}

/// How an export pass writes: the guard it honours and the owner's epoch it stamps.
#[derive(Debug, Clone, Copy)]
pub struct ExportOptions {
    pub guard: DeleteGuard,
    /// The epoch of the claim under which `serve` owns the area, from the very fence check
    /// that allowed this commit (`Kvgit-Epoch`); None for the one-shot CLI.
    pub epoch: Option<Epoch>,
}

/// A batch the guard held back: nothing committed, the checkpoint not moved.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HeldDeletes {
    pub deletes: usize,
    pub keys: usize,
    pub fraction: f64,
    pub prefix: String,
}

impl std::fmt::Display for HeldDeletes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.deletes >= self.keys {
            "would empty the area".to_string()
        } else {
            format!(
                "is more than sync.max_delete_fraction = {} of them",
                self.fraction
            )
        };
        write!(
            f,
            "not recording the deletion of {} of {} keys under {:?}: it {what}; if that is \
             intended, run `kvgit export --allow-mass-delete`",
            self.deletes, self.keys, self.prefix
        )
    }
}

/// What one area's export did.
#[derive(Debug, serde::Serialize)]
pub struct ExportReport {
    pub area: String,
    pub pass: PassKind,
    #[serde(serialize_with = "ser::display_opt")]
    pub commit: Option<ObjectId>,
    pub changes: usize,
    #[serde(serialize_with = "ser::revision")]
    pub revision: Revision,
    #[serde(serialize_with = "ser::display_seq")]
    pub conflicts: Vec<Key>,
    pub pending_apply: usize,
    /// Set when the checkpoint could not be followed (compacted, or not trusted).
    pub resync: Option<ResyncCause>,
    /// Set when the mass-delete guard held the batch back.
    pub held: Option<HeldDeletes>,
    /// The live changes of a held incremental batch, handed back so the caller keeps them.
    #[serde(skip)]
    pub held_changes: BTreeMap<Key, Option<Value>>,
    /// Files of the area that map to no key, when the pass read the whole area (`None`
    /// when it did not look: an incremental pass reads only the changed paths).
    pub unmapped: Option<Vec<String>>,
}

/// `kvgit export`: one pass over every selected area, in config order. An area the
/// mass-delete guard held back is in the reports (see [`held_back`]); any other failure
/// stops the pass, naming the area.
pub async fn run(
    ctx: &Context,
    only: Option<&str>,
    allow_mass_delete: bool,
) -> Result<Vec<ExportReport>, ExportError> {
    let areas = ctx
        .cfg
        .select_areas(only)
        .map_err(ExportError::UnknownArea)?;
    let opts = ExportOptions {
        guard: DeleteGuard::from_config(&ctx.cfg, allow_mass_delete),
        epoch: None,
    };
    // The checkpoints load while the backend answers who it is. Every area then follows its
    // checkpoint up to one revision, read after all of them (a trusted checkpoint is never
    // above it), all areas at once: the backend answers them in parallel. The first area
    // that fails stops the pass, as if the areas ran one after another: the areas before it
    // are still recorded.
    let identify = async {
        let backend = ctx.backend().await?;
        let cluster = backend.cluster_id().await.map_err(ExportError::ClusterId)?;
        Ok::<_, ExportError>((backend, cluster))
    };
    let loads =
        futures::future::join_all(areas.iter().map(|area| checkpoint::load(ctx, &area.name)));
    let (identified, checkpoints) = tokio::join!(identify, loads);
    let (backend, cluster) = identified?;
    let target = backend.current_revision().await?;
    tracing::debug!("checkpoints loaded");
    let reads = futures::future::join_all(areas.iter().zip(checkpoints).map(|(area, cp)| {
        let cluster = &cluster;
        async move { follow(ctx, area, cluster, cp?, target, None).await }
    }))
    .await;
    // The leading areas that only have changes since their checkpoints (usually all of
    // them): their Git steps run side by side, and their commits go onto the branch as one
    // chain (config order) with one ref update, their objects in one write.
    let mut reads = areas.iter().copied().zip(reads).peekable();
    let mut head = Vec::new();
    while let Some((area, Ok(LiveRead::Incremental { cp, upto, changes }))) =
        reads.next_if(|(_, read)| matches!(read, Ok(LiveRead::Incremental { .. })))
    {
        head.push((area, cp, upto, changes));
    }
    let steps = futures::future::join_all(head.into_iter().map(
        |(area, cp, upto, changes)| async move {
            let step = incremental_step(ctx, area, &cp, changes, opts.guard, Objects::Deferred)
                .await
                .map_err(|e| in_area(area, e))?;
            Ok::<_, ExportError>(Recording {
                area,
                previous: Some(cp),
                revision: upto,
                step,
                pass: PassKind::Incremental,
                epoch: opts.epoch,
            })
        },
    ))
    .await;
    // Up to the first step that failed, the areas are recorded.
    let mut recordings = Vec::with_capacity(steps.len());
    let mut failed = None;
    for step in steps {
        match step {
            Ok(r) => recordings.push(r),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let t0 = std::time::Instant::now();
    let mut reports = record_together(ctx, &cluster, recordings)
        .await
        .map_err(|AtRecording(i, e)| in_area(areas[i], *e))?;
    tracing::debug!(elapsed = ?t0.elapsed(), "recorded together");
    if let Some(e) = failed {
        return Err(e);
    }
    // The rest in config order: a full pass reads its area's snapshot itself. Areas in a
    // row whose directory the branch does not have yet (a first export of several areas)
    // stream side by side and land as one chain; any other pass runs on its own.
    let mut rest: Vec<(&AreaConfig, Result<LiveRead, ExportError>)> = reads.collect();
    rest.reverse();
    while let Some((area, read)) = rest.pop() {
        let firsts = match &read {
            Ok(LiveRead::Full {
                pass: PassKind::NoBase,
                ..
            }) => {
                let mut run = vec![(area, read)];
                while let Some((_, Ok(LiveRead::Full { pass, .. }))) = rest.last() {
                    if *pass != PassKind::NoBase {
                        break;
                    }
                    run.extend(rest.pop());
                }
                let (tip, firsts) = first_exports_ahead(ctx, &run).await?;
                // Fewer than two first exports: the leading area runs on its own, and the
                // others go back, in order, to be looked at again.
                let keep = if firsts >= 2 { firsts } else { 1 };
                let others = run.split_off(keep);
                rest.extend(others.into_iter().rev());
                if firsts >= 2 {
                    Some((tip, run))
                } else {
                    let (area, read) = run.pop().expect("the run starts with its area");
                    reports.push(record_one(ctx, area, &cluster, read, opts).await?);
                    None
                }
            }
            _ => {
                reports.push(record_one(ctx, area, &cluster, read, opts).await?);
                None
            }
        };
        let Some((tip, run)) = firsts else { continue };
        let (recorded, failed) = first_exports_together(ctx, &cluster, tip, run, opts).await;
        reports.extend(recorded?);
        if let Some(e) = failed {
            return Err(e);
        }
    }
    Ok(reports)
}

/// One area of `kvgit export`'s rest, on its own; an error names the area.
async fn record_one(
    ctx: &Context,
    area: &AreaConfig,
    cluster: &ClusterId,
    read: Result<LiveRead, ExportError>,
    opts: ExportOptions,
) -> Result<ExportReport, ExportError> {
    let r = match read {
        Ok(read) => record_live(ctx, area, cluster, read, opts).await,
        Err(e) => Err(e),
    };
    r.map_err(|e| in_area(area, e))
}

/// `e`, naming the area it happened in.
fn in_area(area: &AreaConfig, e: ExportError) -> ExportError {
    ExportError::Area {
        area: area.name.0.clone(),
        source: Box::new(e),
    }
}

/// First exports that may read from the backend at once: two keep both cores busy (etcd
/// serving one area's pages while kvgit hashes and packs another's).
const FIRST_EXPORTS_READING: usize = 2;
/// First exports alive at once: one more than read, so that the backend serves the next
/// area while kvgit lays out and packs one whose last page came (the backend sat idle for
/// that tail, ~60 ms of every pair of 25k-key areas). Memory stays within about two
/// areas' keys and blob ids plus what the next one read meanwhile.
const FIRST_EXPORTS_AT_ONCE: usize = FIRST_EXPORTS_READING + 1;

/// The branch tip, and how many of `run`'s areas (full passes with no base, config order)
/// lead with no directory on it: those are first exports, planned on that tip.
async fn first_exports_ahead(
    ctx: &Context,
    run: &[(&AreaConfig, Result<LiveRead, ExportError>)],
) -> Result<(Option<ObjectId>, usize), ExportError> {
    let dirs: Vec<_> = run
        .iter()
        .map(|(area, _)| (area.path.clone(), area.format))
        .collect();
    ctx.git_blocking(move |git| -> Result<_, ExportError> {
        let tip = git.tip()?;
        let mut firsts = 0;
        for (path, format) in &dirs {
            if key_tree(git, tip, path, *format, false)?.is_some() {
                break;
            }
            firsts += 1;
        }
        Ok((tip, firsts))
    })
    .await
}

/// The first exports of `run` (each a full pass with no base whose directory `tip` lacks),
/// [`FIRST_EXPORTS_READING`] reading at a time and one more finishing its pack, recorded as
/// one chain on `tip` in config order. Up to the first area whose read failed, the areas
/// are recorded, as if they ran one after another; that failure is returned beside their
/// reports.
async fn first_exports_together(
    ctx: &Context,
    cluster: &ClusterId,
    tip: Option<ObjectId>,
    run: Vec<(&AreaConfig, Result<LiveRead, ExportError>)>,
    opts: ExportOptions,
) -> (Result<Vec<ExportReport>, ExportError>, Option<ExportError>) {
    let backend = match ctx.backend().await {
        Ok(b) => b,
        Err(e) => return (Err(in_area(run[0].0, e.into())), None),
    };
    let mut causes = Vec::with_capacity(run.len());
    let mut areas = Vec::with_capacity(run.len());
    let reading = tokio::sync::Semaphore::new(FIRST_EXPORTS_READING);
    let reading = &reading;
    // Boxed, so that dropping it below stops the exports still streaming (each closes its
    // queue, and its writer ends without a tree).
    let mut exports = Box::pin(
        futures::stream::iter(run.into_iter().map(|(area, read)| {
            let backend = backend.clone();
            let (cp, cause) = match read {
                Ok(LiveRead::Full { cp, cause, .. }) => (cp, cause),
                _ => (None, None),
            };
            async move {
                let r = first_export(ctx, area, backend.as_ref(), tip, Some(reading)).await;
                crate::alloc::release_freed();
                (area, cp, cause, r)
            }
        }))
        .buffered(FIRST_EXPORTS_AT_ONCE),
    );
    let mut recordings = Vec::new();
    let mut failed = None;
    while let Some((area, cp, cause, r)) = exports.next().await {
        match r {
            Ok((revision, step)) => {
                areas.push(area);
                causes.push(cause);
                recordings.push(Recording {
                    area,
                    previous: cp,
                    revision,
                    step,
                    pass: PassKind::NoBase,
                    epoch: opts.epoch,
                });
            }
            Err(e) => {
                failed = Some(in_area(area, e));
                break;
            }
        }
    }
    // The exports still streaming stop here; their packs are unreferenced until a repack.
    drop(exports);
    let recorded = record_together(ctx, cluster, recordings)
        .await
        .map(|mut reports| {
            for (report, cause) in reports.iter_mut().zip(causes) {
                report.resync = cause;
            }
            reports
        })
        .map_err(|AtRecording(i, e)| in_area(areas[i], *e));
    (recorded, failed)
}

/// The error a pass ends with when the guard held an area back (other areas are recorded;
/// the held one fails the command, naming what to do).
pub fn held_back(reports: &[ExportReport]) -> Result<(), ExportError> {
    let held: Vec<(String, HeldDeletes)> = reports
        .iter()
        .filter_map(|r| Some((r.area.clone(), r.held.clone()?)))
        .collect();
    if held.is_empty() {
        Ok(())
    } else {
        Err(ExportError::HeldBack(held))
    }
}

/// Export one area; the checkpoint moves only after the commit is on the branch.
pub async fn export_area(
    ctx: &Context,
    area: &AreaConfig,
    cluster: &ClusterId,
    opts: ExportOptions,
) -> Result<ExportReport, ExportError> {
    let read = read_live(ctx, area, cluster, None).await?;
    record_live(ctx, area, cluster, read, opts).await
}

/// Like [`export_area`] after the watch itself asked for a resync (its order broke, or the
/// store's index went back): the checkpoint's revision no longer bounds what may have been
/// missed, so the whole area is compared with the checkpoint's base by the rule, whatever
/// the checkpoint says. A checkpoint that is not trusted at all still means no base.
pub async fn resync_area(
    ctx: &Context,
    area: &AreaConfig,
    cluster: &ClusterId,
    opts: ExportOptions,
    cause: ResyncCause,
) -> Result<ExportReport, ExportError> {
    let read = read_live(ctx, area, cluster, Some(cause)).await?;
    record_live(ctx, area, cluster, read, opts).await
}

/// What an area's checkpoint allows reading of the live side, read (for an incremental
/// pass) or still to read (a full pass reads its snapshot itself, one area at a time).
enum LiveRead {
    Incremental {
        cp: Checkpoint,
        upto: Revision,
        changes: BTreeMap<Key, Option<Value>>,
    },
    Full {
        cp: Option<Checkpoint>,
        pass: PassKind,
        cause: Option<ResyncCause>,
    },
}

/// Judges the area's checkpoint and reads what changed since it; no Git write.
async fn read_live(
    ctx: &Context,
    area: &AreaConfig,
    cluster: &ClusterId,
    resync: Option<ResyncCause>,
) -> Result<LiveRead, ExportError> {
    let backend = ctx.backend().await?;
    let cp = checkpoint::load(ctx, &area.name).await?;
    // Read after the checkpoint: a trusted checkpoint is never above it.
    let target = backend.current_revision().await?;
    follow(ctx, area, cluster, cp, target, resync).await
}

/// What the checkpoint `cp` allows reading of the live side up to `target`, a revision read
/// after `cp` was loaded.
async fn follow(
    ctx: &Context,
    area: &AreaConfig,
    cluster: &ClusterId,
    cp: Option<Checkpoint>,
    target: Revision,
    resync: Option<ResyncCause>,
) -> Result<LiveRead, ExportError> {
    let started = std::time::Instant::now();
    Ok(match Judged::judge(cp, &area.name, cluster, target) {
        Judged::Trusted(cp) if resync.is_some() => LiveRead::Full {
            cp: Some(cp),
            pass: PassKind::Resync,
            cause: resync,
        },
        Judged::Trusted(cp) => {
            let backend = ctx.backend().await?;
            let delta = changes::since(
                backend.as_ref(),
                &area.prefix,
                cp.revision.next(),
                target,
                ctx.cfg.backend.request_timeout(),
            )
            .await?;
            tracing::debug!(area = %area.name, elapsed = ?started.elapsed(), "live delta read");
            match delta {
                Delta::Changes { upto, changes, .. } => LiveRead::Incremental { cp, upto, changes },
                Delta::Resync(reason) => {
                    tracing::warn!(area = %area.name, ?reason, "checkpoint history gone; resyncing");
                    let cause = ResyncCause {
                        label: reason.label(),
                        why: format!(
                            "history since checkpoint revision {} is gone ({})",
                            cp.revision,
                            reason.label()
                        ),
                    };
                    LiveRead::Full {
                        cp: Some(cp),
                        pass: PassKind::Resync,
                        cause: Some(cause),
                    }
                }
            }
        }
        Judged::Distrusted(cp, why) => {
            tracing::warn!(area = %area.name, reason = %why, "checkpoint not trusted: syncing the area again by the rule, with no base");
            let cause = ResyncCause {
                label: why.label(),
                why: why.to_string(),
            };
            LiveRead::Full {
                cp: Some(cp),
                pass: PassKind::NoBase,
                cause: Some(cause),
            }
        }
        Judged::Missing => LiveRead::Full {
            cp: None,
            pass: PassKind::NoBase,
            cause: None,
        },
    })
}

/// Commits what [`read_live`] found (a full pass reads its snapshot here).
async fn record_live(
    ctx: &Context,
    area: &AreaConfig,
    cluster: &ClusterId,
    read: LiveRead,
    opts: ExportOptions,
) -> Result<ExportReport, ExportError> {
    match read {
        LiveRead::Incremental { cp, upto, changes } => {
            incremental(ctx, area, cluster, cp, upto, changes, opts).await
        }
        LiveRead::Full { cp, pass, cause } => {
            let mut r = full_pass(ctx, area, cluster, cp, pass, opts).await?;
            r.resync = cause;
            Ok(r)
        }
    }
}

/// Commit one batch of live changes (collapsed, complete up to `upto`) on top of the
/// checkpoint `cp`; shared by `kvgit export` and the service's batcher.
pub async fn incremental(
    ctx: &Context,
    area: &AreaConfig,
    cluster: &ClusterId,
    cp: Checkpoint,
    upto: Revision,
    changes: BTreeMap<Key, Option<Value>>,
    opts: ExportOptions,
) -> Result<ExportReport, ExportError> {
    let started = std::time::Instant::now();
    let step = incremental_step(ctx, area, &cp, changes, opts.guard, Objects::Now).await?;
    let report = record(
        ctx,
        area,
        cluster,
        Some(cp),
        upto,
        step,
        PassKind::Incremental,
        opts.epoch,
    )
    .await;
    tracing::debug!(area = %area.name, elapsed = ?started.elapsed(), "batch recorded");
    report
}

/// An area's changed keys and values of at most this size are kept in its step when their
/// writing is deferred; more are written at once (memory over one pack).
const DEFER_MAX_BYTES: usize = 8 << 20;

/// When a step's new trees and values are written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Objects {
    /// At once (`serve`, one area at a time): the pack borrows them from the plan.
    Now,
    /// With the commits, other areas' objects in the same pack (a `kvgit export` of several
    /// areas); the batch holds a copy of each until then. A document area's are written at
    /// once all the same: recording folds the new key tree into its documents, reading it.
    Deferred,
}

/// The Git side of an incremental batch: the rule over the changed keys, and the new area
/// tree's objects, written or kept in the step (`objects`). Nothing refers to them until the
/// batch is recorded.
async fn incremental_step(
    ctx: &Context,
    area: &AreaConfig,
    cp: &Checkpoint,
    changes: BTreeMap<Key, Option<Value>>,
    guard: DeleteGuard,
    objects: Objects,
) -> Result<Step, ExportError> {
    warn_near_limit(
        area,
        ctx.backend().await?.write_limits(),
        changes.iter().filter_map(|(k, v)| Some((k, v.as_deref()?))),
    );
    let prefix_len = area.prefix.len();
    let changes: Vec<(Vec<u8>, Option<Value>)> = changes
        .into_iter()
        .map(|(k, v)| (relative(k, prefix_len), v))
        .collect();
    let path = area.path.clone();
    let format = area.format;
    let rule = area.rule;
    let base_tree = cp.base_tree;
    // Kept objects are copies of the values: a large batch is written at once instead.
    let bytes: usize = changes
        .iter()
        .map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.len()))
        .sum();
    let defer = objects == Objects::Deferred && !format.is_documents() && bytes <= DEFER_MAX_BYTES;
    let started = std::time::Instant::now();
    let step = ctx
        .git_blocking(move |git| -> Result<Step, ExportError> {
            let live = hashed(git, changes)?;
            let tip = git.tip()?;
            let desired_tree = key_tree(git, tip, &path, format, false)?;
            let mut base_loc = Locator::default();
            let mut desired_loc = Locator::default();
            let mut sides = Vec::with_capacity(live.len());
            // Usually nothing is pending either way and base and tip are one tree.
            let same = base_tree == desired_tree;
            for (rel, value) in &live {
                let b = mapper::lookup(git, base_tree.as_ref(), rel, &mut base_loc)
                    .map_err(GitError::from)?;
                let d = if same {
                    b
                } else {
                    mapper::lookup(git, desired_tree.as_ref(), rel, &mut desired_loc)
                        .map_err(GitError::from)?
                };
                let s = Sides {
                    base: b.map_or(Base::Absent, Base::Present),
                    live: value.as_ref().map(|v| v.id),
                    desired: d,
                };
                sides.push((rel.clone(), s));
            }
            // The lookups listed the directories the new tree rewrites: when the branch's
            // tree is the base, planning takes those listings instead of reading them again.
            let mut listed = if same { base_loc } else { desired_loc };
            let mut kept = ObjectBatch::new();
            let out = defer.then_some(&mut kept);
            let mut step = finish(
                git,
                rule,
                guard,
                tip,
                desired_tree,
                base_tree,
                sides,
                live,
                &mut listed,
                out,
            )?;
            step.objects = kept;
            Ok(step)
        })
        .await?;
    tracing::debug!(area = %area.name, changes = step.changes, elapsed = ?started.elapsed(), "batch's objects written");
    Ok(step)
}

/// A full three-way pass over one area (snapshot, base and tip), committing what the rule
/// gives Git; used after compaction and when the tip changed under a kv-to-git area.
pub async fn full_pass(
    ctx: &Context,
    area: &AreaConfig,
    cluster: &ClusterId,
    cp: Option<Checkpoint>,
    pass: PassKind,
    opts: ExportOptions,
) -> Result<ExportReport, ExportError> {
    let guard = opts.guard;
    // One full pass at a time: each holds a whole area in memory.
    let _permit = FULL_PASSES
        .acquire()
        .await
        .expect("the full-pass semaphore is never closed");
    let backend = ctx.backend().await?;
    let base_known = pass == PassKind::Resync;
    if !base_known {
        let (path, format) = (area.path.clone(), area.format);
        let (tip, desired_tree) = ctx
            .git_blocking(move |git| -> Result<_, ExportError> {
                let tip = git.tip()?;
                Ok((tip, key_tree(git, tip, &path, format, false)?))
            })
            .await?;
        if desired_tree.is_none() {
            let (revision, step) = first_export(ctx, area, backend.as_ref(), tip, None).await?;
            crate::alloc::release_freed();
            return record(ctx, area, cluster, cp, revision, step, pass, opts.epoch).await;
        }
    }
    let snap = backend.snapshot(&area.prefix, None).await?;
    warn_near_limit(
        area,
        backend.write_limits(),
        snap.entries.iter().map(|e| (&e.key, &e.value[..])),
    );
    let revision = snap.revision;
    let prefix_len = area.prefix.len();
    let path = area.path.clone();
    let format = area.format;
    let rule = area.rule;
    let base_tree = cp.as_ref().and_then(|c| c.base_tree);
    let step = ctx
        .git_blocking(move |git| -> Result<Step, ExportError> {
            let tip = git.tip()?;
            let desired_tree = key_tree(git, tip, &path, format, false)?;
            if desired_tree.is_none() && !base_known {
                // The directory went away since the check above.
                let mut first = FirstExport::new(git, prefix_len);
                first.add(snap.entries)?;
                return Ok(first.finish(tip)?);
            }
            let relative = snap
                .entries
                .into_iter()
                .map(move |e| (relative(e.key, prefix_len), e.value));
            let live = hashed(git, relative.map(|(rel, value)| (rel, Some(value))))?;
            // A file that maps to no key is reported, not fatal: live changes keep
            // being recorded, and rewriting its directory keeps the file as it is.
            let (desired, unmapped) = read_area_lenient(git, desired_tree, &path)?;
            for u in &unmapped {
                tracing::warn!("{u}; left as it is");
            }
            let base = if base_known {
                Some(read_area_lenient(git, base_tree, &path)?.0)
            } else {
                None
            };
            // One walk over the three sorted sides, as apply plans.
            let base_files = base.iter().flat_map(|b| b.iter());
            let sides: Vec<(Vec<u8>, Sides)> = union3(live.iter(), desired.iter(), base_files)
                .map(|(rel, l, d, b)| {
                    let s = Sides {
                        base: match &base {
                            None => Base::Unknown,
                            Some(_) => b.map_or(Base::Absent, |f| Base::Present(f.id)),
                        },
                        live: l.and_then(|v| v.as_ref()).map(|v| v.id),
                        desired: d.map(|f| f.id),
                    };
                    (rel.clone(), s)
                })
                .collect();
            let base_start = if base_known { base_tree } else { None };
            let mut step = finish(
                git,
                rule,
                guard,
                tip,
                desired_tree,
                base_start,
                sides,
                live,
                &mut Locator::default(),
                None,
            )?;
            step.unmapped = unmapped;
            Ok(step)
        })
        .await?;
    // The area's keys and values are dropped by now: return their memory before the next pass.
    crate::alloc::release_freed();
    let previous = cp;
    record(
        ctx, area, cluster, previous, revision, step, pass, opts.epoch,
    )
    .await
}

/// The Git side of a pass, computed in one blocking step.
struct Step {
    tip: Option<ObjectId>,
    new_area_tree: Option<ObjectId>,
    changed: bool,
    changes: usize,
    base_tree: Option<ObjectId>,
    /// Keys whose live value Git overwrites.
    conflicts: Vec<Vec<u8>>,
    /// Keys Git must still give the KV store (a later apply does).
    pending_apply: usize,
    /// The guard held the batch back: nothing was written.
    held: Option<(HeldDeletes, BTreeMap<Vec<u8>, Option<Value>>)>,
    /// Files of the area that map to no key (full passes only read every file).
    unmapped: Vec<String>,
    /// New objects not written yet: they are written when the step is recorded.
    objects: ObjectBatch,
}

#[allow(clippy::too_many_arguments)]
fn finish(
    git: &GitStore,
    rule: sync_core::rule::Rule,
    guard: DeleteGuard,
    tip: Option<ObjectId>,
    desired_tree: Option<ObjectId>,
    base_tree: Option<ObjectId>,
    sides: Vec<(Vec<u8>, Sides)>,
    live: BTreeMap<Vec<u8>, Option<HashedBlob>>,
    listed: &mut Locator<ObjectId>,
    mut out: Option<&mut ObjectBatch>,
) -> Result<Step, GitError> {
    // `sides` is sorted and unique, so what each side receives comes out sorted too: plain
    // vectors, no per-key map inserts (at ingest rates those were a tenth of serve's CPU).
    let mut git_ids: Vec<(Vec<u8>, Option<ObjectId>)> = Vec::new();
    // What the base must become, as blob ids (values are only needed if it is written).
    let mut base_ids: Vec<(Vec<u8>, Option<ObjectId>)> = Vec::new();
    let (mut conflicts, mut pending_apply) = (Vec::new(), 0);
    for (rel, s) in sides {
        let d = s.decide(rule);
        if d.conflict {
            conflicts.push(rel.clone());
        }
        pending_apply += usize::from(d.kv.is_some());
        if let Some(new_base) = base_after(&s.base, s.live, d.git.unwrap_or(s.desired)) {
            base_ids.push((rel.clone(), new_base));
        }
        if let Some(id) = d.git {
            git_ids.push((rel, id));
        }
    }
    let deletes = git_ids.iter().filter(|(_, v)| v.is_none()).count();
    if deletes > 0 && deletes >= guard.min_keys && !guard.allowed {
        // Counted only when the batch could be refused: a walk of the area's tree.
        let keys = match desired_tree {
            Some(t) => git.files_under(t)?.len(),
            None => 0,
        };
        if guard.refuses(deletes, keys) {
            let held = HeldDeletes {
                deletes,
                keys,
                fraction: guard.fraction,
                prefix: String::new(),
            };
            return Ok(Step {
                tip,
                new_area_tree: desired_tree,
                changed: false,
                changes: 0,
                base_tree,
                conflicts,
                pending_apply,
                held: Some((
                    held,
                    live.into_iter()
                        .map(|(rel, v)| (rel, v.map(|v| v.bytes)))
                        .collect(),
                )),
                unmapped: Vec::new(),
                objects: ObjectBatch::new(),
            });
        }
    }
    // The base usually equals the new area tree (nothing pending either way): the same
    // edits from the same start give the same tree, so reuse it instead of writing twice.
    let reuse_base = base_tree == desired_tree && base_ids == git_ids;
    let base_changes: Option<Vec<(Vec<u8>, Option<HashedBlob>)>> =
        (!reuse_base && !base_ids.is_empty()).then(|| {
            base_ids
                .iter()
                .map(|(rel, id)| {
                    (
                        rel.clone(),
                        id.and_then(|_| live.get(rel).cloned().flatten()),
                    )
                })
                .collect()
        });
    // Values move from the live read into the commit: no second copy of a large pass. Both
    // are sorted, so one walk pairs them.
    let mut live = live.into_iter().peekable();
    let git_changes: Vec<(Vec<u8>, Option<HashedBlob>)> = git_ids
        .into_iter()
        .map(|(rel, _)| {
            while live.next_if(|(k, _)| *k < rel).is_some() {}
            let value = live.next_if(|(k, _)| *k == rel).and_then(|(_, v)| v);
            (rel, value)
        })
        .collect();
    drop(live);
    let changes = git_changes.len();
    let new_area_tree = if git_changes.is_empty() {
        desired_tree
    } else {
        write_changes_with(
            git,
            desired_tree.as_ref(),
            git_changes,
            listed,
            out.as_deref_mut(),
        )?
    };
    let new_base = match base_changes {
        _ if base_ids.is_empty() => base_tree,
        None => new_area_tree,
        Some(changes) => write_changes_with(
            git,
            base_tree.as_ref(),
            changes,
            &mut Locator::default(),
            out,
        )?,
    };
    Ok(Step {
        tip,
        changed: new_area_tree != desired_tree,
        new_area_tree,
        changes,
        base_tree: new_base,
        conflicts,
        pending_apply,
        held: None,
        unmapped: Vec::new(),
        objects: ObjectBatch::new(),
    })
}

/// Pages of a first export on their way from the backend to Git, at most this many queued:
/// reading the next page overlaps hashing and writing this one. One is enough for that;
/// a second (up to 8 MiB of decoded values) only added memory, two areas at a time.
const PAGES_IN_FLIGHT: usize = 1;
/// Keys laid out into trees at once in a first export (whole root groups; see `BulkKeys`).
const LAYOUT_BATCH: usize = 64 * 1024;
/// Objects a first export queues before compressing them into its pack. Small: the queue's
/// memory is reused from one flush to the next, and 8 MiB only added peak memory (and its
/// page faults) at no gain, the compression threads being busy either way.
const BULK_QUEUE_BYTES: usize = 1 << 20;

/// The first export of an area into a repository that has no directory for it: by the
/// rule every live key is committed and the base is the same tree. The snapshot streams
/// page by page into one pack: values go out as they are read and only the keys and blob
/// ids stay, so an area of millions of keys never sits whole in memory.
///
/// With `reading`, a permit of it is held from the first page to the last: the writer's
/// tail (layout, the pack's end) runs while another area reads.
async fn first_export(
    ctx: &Context,
    area: &AreaConfig,
    backend: &dyn sync_core::KvBackend,
    tip: Option<ObjectId>,
    reading: Option<&tokio::sync::Semaphore>,
) -> Result<(Revision, Step), ExportError> {
    let permit = match reading {
        // Never closed: it lives as long as the areas that wait on it.
        Some(reading) => reading.acquire().await.ok(),
        None => None,
    };
    let mut pages = backend.snapshot_pages(&area.prefix, None).await?;
    let limits = backend.write_limits();
    let prefix_len = area.prefix.len();
    // `None` after the last page: a read that stopped early never becomes a tree.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<Vec<KvEntry>>>(PAGES_IN_FLIGHT);
    let write = ctx.git_blocking(move |git| -> Result<Option<Step>, ExportError> {
        let mut first = FirstExport::new(git, prefix_len);
        while let Some(page) = rx.blocking_recv() {
            match page {
                Some(entries) => first.add(entries)?,
                None => return Ok(Some(first.finish(tip)?)),
            }
        }
        // The read failed; its error is the one returned.
        Ok(None)
    });
    let read = async move {
        let mut revision = None;
        while let Some(page) = pages.next().await {
            let page = page?;
            revision = Some(page.revision);
            warn_near_limit(
                area,
                limits,
                page.entries.iter().map(|e| (&e.key, &e.value[..])),
            );
            // Closed only when the writer failed; its error is the one returned.
            if tx.send(Some(page.entries)).await.is_err() {
                return Ok(revision);
            }
        }
        drop(permit);
        let _ = tx.send(None).await;
        Ok::<_, ExportError>(revision)
    };
    let (revision, step) = tokio::join!(read, write);
    match (revision?, step?) {
        (Some(revision), Some(step)) => Ok((revision, step)),
        _ => Err(ExportError::Backend(sync_core::BackendError::Refused {
            backend: backend.kind(),
            detail: format!(
                "the snapshot of {} returned no page",
                Key(area.prefix.clone())
            ),
        })),
    }
}

/// The Git side of a first export: each value becomes a blob as its page arrives; only the
/// keys and blob ids are kept until the trees are laid out, a batch of root groups at a time.
struct FirstExport<'g> {
    bulk: gitstore::BulkWriter<'g>,
    keys: BulkKeys<StoredBlob>,
    prefix_len: usize,
}

impl<'g> FirstExport<'g> {
    fn new(git: &'g GitStore, prefix_len: usize) -> Self {
        FirstExport {
            bulk: git.bulk_writer(BULK_QUEUE_BYTES),
            keys: BulkKeys::default(),
            prefix_len,
        }
    }

    fn add(&mut self, page: Vec<KvEntry>) -> Result<(), GitError> {
        for entry in page {
            let id = self.bulk.blob(entry.value)?;
            self.keys
                .push(&entry.key.0[self.prefix_len..], StoredBlob(id));
        }
        Ok(())
    }

    fn finish(mut self, tip: Option<ObjectId>) -> Result<Step, GitError> {
        let changes = self.keys.len();
        let bulk = &mut self.bulk;
        self.keys
            .layout_batches(LAYOUT_BATCH, |plan| bulk.add_root_entries(plan))?;
        let tree = self.bulk.finish()?;
        Ok(Step {
            tip,
            changed: tree.is_some(),
            new_area_tree: tree,
            changes,
            base_tree: tree,
            conflicts: Vec::new(),
            pending_apply: 0,
            held: None,
            unmapped: Vec::new(),
            objects: ObjectBatch::new(),
        })
    }
}

/// `key` without the area prefix, shortened in place: no second copy of an area's keys.
fn relative(key: Key, prefix_len: usize) -> Vec<u8> {
    let mut rel = key.0;
    rel.drain(..prefix_len);
    rel
}

/// Live values with their blob ids, hashed once: the ids decide by the rule, and the
/// same ids name the blobs when the values are written.
fn hashed(
    git: &GitStore,
    live: impl IntoIterator<Item = (Vec<u8>, Option<Value>)>,
) -> Result<BTreeMap<Vec<u8>, Option<HashedBlob>>, GitError> {
    live.into_iter()
        .map(|(rel, value)| {
            let blob = match value {
                Some(bytes) => Some(HashedBlob {
                    id: git.hash_blob(&bytes)?,
                    bytes,
                }),
                None => None,
            };
            Ok((rel, blob))
        })
        .collect()
}

/// The area tree `base` with `changes` (each key at most once) applied, written loose or,
/// when large, as one pack.
pub fn write_changes<V: BlobContent>(
    git: &GitStore,
    base: Option<&ObjectId>,
    changes: impl IntoIterator<Item = (Vec<u8>, Option<V>)>,
) -> Result<Option<ObjectId>, GitError> {
    write_changes_with(git, base, changes, &mut Locator::default(), None)
}

/// [`write_changes`] reusing the directories of `base` that `listed` already holds; into
/// `out` when given (written later, with the rest of a batch).
fn write_changes_with<V: BlobContent>(
    git: &GitStore,
    base: Option<&ObjectId>,
    changes: impl IntoIterator<Item = (Vec<u8>, Option<V>)>,
    listed: &mut Locator<ObjectId>,
    out: Option<&mut ObjectBatch>,
) -> Result<Option<ObjectId>, GitError> {
    let changes: Vec<(Vec<u8>, Option<V>)> = changes.into_iter().collect();
    let big = changes.len() >= PACK_THRESHOLD;
    let plan: Option<DirPlan<ObjectId, V>> = match base {
        None if changes.iter().all(|(_, v)| v.is_some()) => {
            let all = changes.into_iter().filter_map(|(k, v)| v.map(|v| (k, v)));
            let plan = mapper::layout_all(all);
            (!plan.is_empty()).then_some(plan)
        }
        _ => mapper::plan_changes_with(git, base, changes, listed)?,
    };
    let Some(plan) = plan else { return Ok(None) };
    let id = if let Some(batch) = out {
        git.write_plan_in(batch, &plan)?
    } else if big {
        git.write_plan_packed(&plan)?
    } else {
        git.write_plan(&plan)?
    };
    Ok(Some(id))
}

/// One area's step, to be recorded.
struct Recording<'a> {
    area: &'a AreaConfig,
    previous: Option<Checkpoint>,
    revision: Revision,
    step: Step,
    pass: PassKind,
    epoch: Option<Epoch>,
}

/// Commit the new area tree on the branch (compare-and-swap on the tip), and move the
/// checkpoint with it. A crash between the two only repeats work that then commits nothing.
#[allow(clippy::too_many_arguments)]
async fn record(
    ctx: &Context,
    area: &AreaConfig,
    cluster: &ClusterId,
    previous: Option<Checkpoint>,
    revision: Revision,
    step: Step,
    pass: PassKind,
    epoch: Option<Epoch>,
) -> Result<ExportReport, ExportError> {
    let one = Recording {
        area,
        previous,
        revision,
        step,
        pass,
        epoch,
    };
    let mut reports = record_together(ctx, cluster, vec![one])
        .await
        .map_err(|AtRecording(_, e)| *e)?;
    Ok(reports.pop().expect("a report per recording"))
}

/// Records areas' steps, in order, as one chain of commits on the branch (one area per
/// commit) and their checkpoints, all moved by one ref update: every area lands, or none.
/// Their root trees and commits are written together, as one pack when there are several.
/// An error names the index of the recording at fault.
async fn record_together(
    ctx: &Context,
    cluster: &ClusterId,
    mut recordings: Vec<Recording<'_>>,
) -> Result<Vec<ExportReport>, AtRecording> {
    let author = ctx.author();
    let now = super::now_unix();
    // What the blocking step needs of each recording, owned.
    struct Job {
        path: String,
        format: crate::config::AreaFormat,
        cp_ref: String,
        cp_previous: Option<ObjectId>,
        message: String,
        trailers: (AreaName, Revision, Option<Epoch>),
        tip: Option<ObjectId>,
        new_area_tree: Option<ObjectId>,
        base_tree: Option<ObjectId>,
        changed: bool,
        moved: bool,
        held: bool,
    }
    // A pass of several areas is the last thing a `kvgit export` writes: its commits go
    // into the one pack. `serve` records one area at a time and reads each commit again.
    let commits_go = if recordings.len() > 1 {
        CommitsGo::WithTheRest
    } else {
        CommitsGo::Loose
    };
    // The first step's objects are the batch; the others' join them.
    let mut objects = ObjectBatch::new();
    for r in &mut recordings {
        let step_objects = std::mem::take(&mut r.step.objects);
        if objects.is_empty() {
            objects = step_objects;
        } else {
            objects.append(step_objects);
        }
    }
    let jobs: Vec<Job> = recordings
        .iter()
        .map(|r| {
            let previous = r.previous.as_ref();
            let trailers = Trailers {
                area: &r.area.name,
                revision: r.revision,
                cluster,
                node: &ctx.cfg.sync.node,
                epoch: r.epoch,
            };
            Job {
                path: r.area.path.clone(),
                format: r.area.format,
                cp_ref: super::refs::checkpoint_ref(&r.area.name.0),
                cp_previous: previous.map(|p| p.id),
                message: commit_message(&trailers, r.step.changes, ""),
                trailers: (r.area.name.clone(), r.revision, r.epoch),
                tip: r.step.tip,
                new_area_tree: r.step.new_area_tree,
                base_tree: r.step.base_tree,
                changed: r.step.changed,
                moved: previous.map(|p| p.revision) != Some(r.revision)
                    || previous.map(|p| p.base_tree) != Some(r.step.base_tree)
                    || previous.map(|p| &p.cluster) != Some(cluster),
                held: r.step.held.is_some(),
            }
        })
        .collect();
    let (cluster_id, node) = (cluster.clone(), ctx.cfg.sync.node.clone());
    let branch = ctx.cfg.git.branch.clone();
    let commits = ctx
        .git_blocking(move |git| -> Result<Vec<Option<ObjectId>>, AtRecording> {
            let cp_message = |job: &Job, branch_commit: Option<ObjectId>| {
                let (area, revision, epoch) = &job.trailers;
                let t = Trailers {
                    area,
                    revision: *revision,
                    cluster: &cluster_id,
                    node: &node,
                    epoch: *epoch,
                };
                super::message::checkpoint_message(
                    &t,
                    branch_commit.map(|c| c.to_string()).as_deref(),
                )
            };
            let empty_tree = GitStore::empty_tree_id();
            let mut batch = objects;
            let mut commits = Vec::with_capacity(jobs.len());
            let mut refs: Vec<(String, ObjectId, Option<ObjectId>)> = Vec::new();
            // The branch tip the chain starts from and its root tree, the chain's tip and its
            // root tree.
            type Ends = (Option<ObjectId>, Option<ObjectId>);
            let mut chain: Option<(Ends, Ends)> = None;
            for (i, job) in jobs.iter().enumerate() {
                let at = |e: ExportError| AtRecording(i, Box::new(e));
                if job.held {
                    commits.push(None);
                    continue;
                }
                if !job.changed {
                    if job.moved {
                        let tree = job.base_tree.unwrap_or(empty_tree);
                        let parents: Vec<ObjectId> = job.cp_previous.into_iter().collect();
                        let msg = cp_message(job, job.tip);
                        let cp = git
                            .commit_in(&mut batch, tree, &parents, &msg, &author, now)
                            .map_err(|e| at(GitError::from(e).into()))?;
                        refs.push((job.cp_ref.clone(), cp, job.cp_previous));
                    }
                    commits.push(None);
                    continue;
                }
                let ((start, start_root), (tip, root)) = match chain {
                    Some(c) => c,
                    None => {
                        let root = match job.tip {
                            Some(t) => Some(
                                git.commit_info(t)
                                    .map_err(|e| at(GitError::from(e).into()))?
                                    .tree,
                            ),
                            None => None,
                        };
                        ((job.tip, root), (job.tip, root))
                    }
                };
                // Each step was planned on the tip the chain starts from; one planned on
                // another would undo what that tip changed in its area.
                if job.tip != start {
                    return Err(at(ExportError::BranchMoved {
                        branch: branch.clone(),
                        source: gitstore::RefUpdateError::Conflict {
                            name: git.branch_ref().to_owned(),
                            expected: start,
                            actual: job.tip,
                        },
                    }));
                }
                // A document area's branch holds documents: the new key tree is folded into
                // them, rewriting only the documents whose keys changed. Other areas' commits
                // in the chain leave this area's directory as the start's root has it.
                let new_area_tree = if job.format.is_documents() {
                    let old = match start_root {
                        Some(r) => git
                            .subtree(r, &job.path)
                            .map_err(|e| at(GitError::from(e).into()))?,
                        None => None,
                    };
                    super::documents::fold_tree(git, old, job.new_area_tree)
                        .map_err(|e| at(e.in_area(&job.path).into()))?
                } else {
                    job.new_area_tree
                };
                let new_root = git
                    .set_subtree_in(&mut batch, root, &job.path, new_area_tree)
                    .map_err(|e| at(GitError::from(e).into()))?
                    .unwrap_or(empty_tree);
                let parents: Vec<ObjectId> = tip.into_iter().collect();
                let id = git
                    .commit_in(&mut batch, new_root, &parents, &job.message, &author, now)
                    .map_err(|e| at(GitError::from(e).into()))?;
                let tree = job.base_tree.unwrap_or(empty_tree);
                let cp_parents: Vec<ObjectId> = job.cp_previous.into_iter().collect();
                let cp = git
                    .commit_in(
                        &mut batch,
                        tree,
                        &cp_parents,
                        &cp_message(job, Some(id)),
                        &author,
                        now,
                    )
                    .map_err(|e| at(GitError::from(e).into()))?;
                refs.push((job.cp_ref.clone(), cp, job.cp_previous));
                chain = Some(((start, start_root), (Some(id), Some(new_root))));
                commits.push(Some(id));
            }
            // Who is named when the write or the shared ref update fails: the first area
            // that moves a ref.
            let first = jobs
                .iter()
                .position(|j| !j.held && (j.changed || j.moved))
                .unwrap_or(0);
            git.write_batch(batch, commits_go)
                .map_err(|e| AtRecording(first, Box::new(GitError::from(e).into())))?;
            let mut updates: Vec<(&str, ObjectId, Option<ObjectId>)> = Vec::new();
            if let Some(((start, _), (Some(tip), _))) = chain {
                updates.push((git.branch_ref(), tip, start));
            }
            updates.extend(
                refs.iter()
                    .map(|(name, new, old)| (name.as_str(), *new, *old)),
            );
            if !updates.is_empty() {
                // The branch and the checkpoints move together, or none does.
                git.update_refs(&updates, "kvgit: export")
                    .map_err(|source| {
                        AtRecording(
                            first,
                            Box::new(ExportError::BranchMoved {
                                branch: branch.clone(),
                                source,
                            }),
                        )
                    })?;
            }
            Ok(commits)
        })
        .await?;
    Ok(recordings
        .into_iter()
        .zip(commits)
        .map(|(r, commit)| report_of(r, commit))
        .collect())
}

/// An error of one recording, by its index (a panic of the blocking task names the first).
struct AtRecording(usize, Box<ExportError>);

impl From<GitError> for AtRecording {
    fn from(e: GitError) -> AtRecording {
        AtRecording(0, Box::new(e.into()))
    }
}

/// What one recorded (or held) area reports.
fn report_of(r: Recording<'_>, commit: Option<ObjectId>) -> ExportReport {
    let area = r.area;
    let rel_key = |rel: &Vec<u8>| {
        let mut k = area.prefix.clone();
        k.extend_from_slice(rel);
        Key(k)
    };
    if let Some((mut held, live)) = r.step.held {
        held.prefix = String::from_utf8_lossy(&area.prefix).into_owned();
        tracing::error!(area = %area.name, "{held}");
        return ExportReport {
            area: area.name.0.clone(),
            pass: r.pass,
            commit: None,
            changes: 0,
            revision: r.previous.as_ref().map_or(r.revision, |p| p.revision),
            conflicts: Vec::new(),
            pending_apply: 0,
            resync: None,
            held: Some(held),
            held_changes: live
                .into_iter()
                .map(|(rel, v)| (rel_key(&rel), v))
                .collect(),
            unmapped: None,
        };
    }
    ExportReport {
        area: area.name.0.clone(),
        pass: r.pass,
        commit,
        changes: r.step.changes,
        revision: r.revision,
        conflicts: r.step.conflicts.iter().map(rel_key).collect(),
        pending_apply: r.step.pending_apply,
        resync: None,
        held: None,
        held_changes: BTreeMap::new(),
        unmapped: (r.pass != PassKind::Incremental).then_some(r.step.unmapped),
    }
}

/// Warns (log, so also on `kvgit export`'s stderr) about each live value a pass reads that
/// is within 10% of the backend's single-op limit or over it: `kvgit apply` can write it
/// back only alone, and one over the limit (etcd takes a plain put a little above what fits
/// in a compare-and-swap txn) could not be restored at all.
fn warn_near_limit<'a>(
    area: &AreaConfig,
    limits: sync_core::WriteLimits,
    values: impl Iterator<Item = (&'a Key, &'a [u8])>,
) {
    /// Warn from this share of the limit on: etcd's 1.5 MiB less 10% is ~1.41 MB.
    const NEAR_PERCENT: u64 = 90;
    for (key, value) in values {
        let (bytes, limit) = (value.len(), limits.max_value_len(key));
        if (bytes as u64) * 100 < limit as u64 * NEAR_PERCENT {
            continue;
        }
        let what = if bytes > limit { "over" } else { "near" };
        tracing::warn!(
            area = %area.name, %key, bytes, limit,
            "the value of key {key} is {bytes} bytes, {what} the backend's limit of {limit} bytes for one write; \
             `kvgit apply` could not restore a value over it"
        );
    }
}

#[cfg(test)]
mod tests {
    //! `record_together`'s chain on `MemoryBackend`: every step must be planned on the tip the
    //! chain starts from.
    use super::*;
    use crate::engine::testkit::{context, put};
    use sync_core::KvBackend;

    /// Both areas' changes, each step planned on the branch as it is at that moment.
    async fn step<'a>(ctx: &Context, area: &'a AreaConfig, cluster: &ClusterId) -> Recording<'a> {
        let LiveRead::Incremental { cp, upto, changes } =
            read_live(ctx, area, cluster, None).await.expect("read")
        else {
            panic!("{}: an incremental read", area.name);
        };
        let guard = DeleteGuard::from_config(&ctx.cfg, false);
        let step = incremental_step(ctx, area, &cp, changes, guard, Objects::Deferred)
            .await
            .expect("step");
        Recording {
            area,
            previous: Some(cp),
            revision: upto,
            step,
            pass: PassKind::Incremental,
            epoch: None,
        }
    }

    /// A commit lands between one area's step and the other's, and the later step comes first
    /// in the chain: the branch is where the chain starts, so only the check of each step's
    /// tip stops the earlier step from being committed on a tip it was not planned on. The
    /// recording is refused as the branch having moved, naming that area, and neither the
    /// branch nor any checkpoint moves.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_step_planned_on_another_tip_is_refused_and_nothing_lands() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ctx, backend) = context(dir.path(), &["a", "b"]).await;
        put(&backend, "/a/k", "1").await;
        put(&backend, "/b/k", "1").await;
        run(&ctx, None, false).await.expect("first export");
        put(&backend, "/a/k", "2").await;
        put(&backend, "/b/k", "2").await;
        let cluster = backend.cluster_id().await.expect("cluster");
        let areas = ctx.cfg.areas.clone();
        let b = step(&ctx, &areas[1], &cluster).await;
        // Someone's commit, beside both areas.
        let moved = ctx
            .git_blocking(|git| -> Result<ObjectId, GitError> {
                let tip = git.tip()?.expect("a tip");
                let root = git.commit_info(tip)?.tree;
                let docs = git.subtree(root, "a")?;
                let root = git.set_subtree(Some(root), "docs", docs)?.expect("a root");
                let id = git.write_commit(root, &[tip], "docs", &ctx_author(), 1)?;
                git.update_ref(git.branch_ref(), id, Some(tip), "a person")
                    .expect("move the branch");
                Ok(id)
            })
            .await
            .expect("a person's commit");
        let a = step(&ctx, &areas[0], &cluster).await;
        let checkpoints = |ctx: &Context| {
            let names = ["a", "b"].map(crate::engine::refs::checkpoint_ref);
            let git = ctx.git.clone();
            names.map(|n| git.read_ref(&n).expect("checkpoint ref"))
        };
        let before = checkpoints(&ctx);
        let Err(AtRecording(at, e)) = record_together(&ctx, &cluster, vec![a, b]).await else {
            panic!("recording steps planned on two tips is refused");
        };
        assert_eq!(at, 1, "the step planned on the older tip is named");
        assert!(matches!(*e, ExportError::BranchMoved { .. }), "{e}");
        let tip = ctx.git.tip().expect("tip");
        assert_eq!(tip, Some(moved), "the branch did not move");
        assert_eq!(checkpoints(&ctx), before, "no checkpoint moved");
        // The next export plans both areas on the new tip and lands both.
        let reports = run(&ctx, None, false).await.expect("export");
        assert!(reports.iter().all(|r| r.commit.is_some()), "{reports:?}");
    }

    fn ctx_author() -> gitstore::Author {
        gitstore::Author {
            name: "a person".into(),
            email: "person@example.com".into(),
        }
    }
}

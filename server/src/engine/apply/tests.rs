//! `serve`'s plan of a `both` area from the change (`plan_area_delta`) against the plan of
//! the whole area: the same writes and the same base, and the full plan wherever only a
//! whole read can judge (a key held twice, another mode).

use super::{plan_area, plan_area_delta, write_plans, AreaPlan, OpKind, PlannedOp};
use crate::engine::testkit::{context, delete_all, put};
use crate::engine::{export, Context};
use gitstore::ObjectId;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use sync_core::{ClusterId, KvBackend, Precondition};

/// Commits `edits` (path in the area `a` -> content, None to remove) on `main` of the
/// context's repository through a clone, as a person would push them.
fn push_edits(dir: &Path, edits: &[(&str, Option<&str>)]) {
    let bare = dir.join("state.git");
    let work = dir.join("work");
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t", "-C"])
            .arg(&work)
            .args(args)
            .output()
            .expect("run git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    if !work.exists() {
        let out = Command::new("git")
            .args(["clone", "-q", "-b", "main"])
            .arg(&bare)
            .arg(&work)
            .output()
            .expect("git clone");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    git(&["pull", "-q", "--ff-only", "origin", "main"]);
    for (path, content) in edits {
        let file = work.join("a").join(path);
        match content {
            Some(c) => {
                std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
                std::fs::write(&file, c).expect("write");
            }
            None => std::fs::remove_file(&file).expect("remove"),
        }
    }
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "edit"]);
    git(&["push", "-q", "origin", "main"]);
}

async fn tip(ctx: &Context) -> Option<ObjectId> {
    super::target_commit(ctx, None).await.expect("tip")
}

async fn cluster(ctx: &Context) -> ClusterId {
    ctx.backend()
        .await
        .expect("backend")
        .cluster_id()
        .await
        .expect("cluster")
}

async fn full(ctx: &Context) -> Result<AreaPlan, super::ApplyError> {
    let area = ctx.cfg.areas[0].clone();
    plan_area(ctx, &area, tip(ctx).await, &cluster(ctx).await, false).await
}

async fn delta(ctx: &Context, validated: Option<ObjectId>) -> Option<AreaPlan> {
    let area = ctx.cfg.areas[0].clone();
    plan_area_delta(
        ctx,
        &area,
        tip(ctx).await,
        &cluster(ctx).await,
        Some(validated),
    )
    .await
    .expect("delta plan")
}

/// An op as compared: kind, key, value, its size, precondition, overwritten value.
type Write = (
    OpKind,
    String,
    Option<ObjectId>,
    u64,
    Precondition,
    Option<Vec<u8>>,
);

/// A delta plan with nothing validated before.
async fn delta_unvalidated(ctx: &Context) -> Option<AreaPlan> {
    let area = ctx.cfg.areas[0].clone();
    plan_area_delta(ctx, &area, tip(ctx).await, &cluster(ctx).await, None)
        .await
        .expect("delta plan")
}

/// What an op writes, with a run of new keys compared as new keys one by one (a delta
/// plan does not read what lies between them).
fn writes(plan: &AreaPlan) -> Vec<Write> {
    let row = |o: &PlannedOp| {
        let expect = match o.expect {
            Precondition::AbsentInRun => Precondition::Absent,
            e => e,
        };
        (
            o.kind,
            o.key.to_string(),
            o.value,
            o.value_size,
            expect,
            o.overwrites().cloned(),
        )
    };
    plan.ops.iter().map(row).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_from_the_change_writes_what_a_plan_of_the_whole_area_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ctx, backend) = context(dir.path(), &["a"]).await;
    for i in 0..30 {
        put(&backend, &format!("/a/k{i:02}"), &format!("v{i}")).await;
    }
    put(&backend, "/a/dir/x", "x").await;
    export::run(&ctx, None, false).await.expect("export");
    let validated = full(&ctx).await.expect("plan").desired_tree;
    assert!(validated.is_some());
    assert_eq!(delta(&ctx, validated).await.expect("a delta").ops.len(), 0);

    // Git changes five keys, deletes two, adds three (one in a new directory); meanwhile
    // the live side changes one of Git's keys differently (a conflict Git wins), one the
    // same way (agreed), and keys Git left alone (theirs to export).
    push_edits(
        dir.path(),
        &[
            ("k01", Some("g1")),
            ("k02", Some("g2")),
            ("k03", Some("g3")),
            ("k04", Some("g4")),
            ("k05", Some("g5")),
            ("k06", None),
            ("k07", None),
            ("k40", Some("n40")),
            ("k41", Some("n41")),
            ("new/k42", Some("n42")),
        ],
    );
    put(&backend, "/a/k02", "live2").await;
    put(&backend, "/a/k03", "g3").await;
    put(&backend, "/a/k10", "live10").await;
    put(&backend, "/a/k41", "n41").await;
    put(&backend, "/a/k50", "live50").await;
    delete_all(&backend, ["/a/k11".to_string()]).await;

    let whole = full(&ctx).await.expect("full plan");
    let changed = delta(&ctx, validated).await.expect("a delta plan");
    assert_eq!(writes(&changed), writes(&whole));
    assert_eq!(
        changed.base_changes, whole.base_changes,
        "the base moves the same way"
    );
    assert_eq!(changed.base_start, whole.base_start);
    assert_eq!(changed.desired_tree, whole.desired_tree);
    let keys: Vec<String> = changed.ops.iter().map(|o| o.key.to_string()).collect();
    assert_eq!(
        keys,
        [
            "/a/k01",
            "/a/k02",
            "/a/k04",
            "/a/k05",
            "/a/k06",
            "/a/k07",
            "/a/k40",
            "/a/new/k42"
        ]
    );
    assert_eq!(
        changed.live_keys, whole.live_keys,
        "a plan that deletes counts the area"
    );
    assert_eq!(changed.path_of(&changed.ops[4]), "a/k06");

    // Written, the store holds Git's values where Git moved and the live ones elsewhere;
    // planned again either way, nothing is left to write.
    write_plans(&ctx, &Arc::new(vec![changed]))
        .await
        .expect("write");
    let snap = backend.snapshot(b"/a/", None).await.expect("snapshot");
    let value = |k: &str| {
        snap.entries
            .iter()
            .find(|e| e.key.0 == k.as_bytes())
            .map(|e| String::from_utf8_lossy(&e.value).into_owned())
    };
    for (k, v) in [
        ("k01", "g1"),
        ("k02", "g2"),
        ("k03", "g3"),
        ("k10", "live10"),
        ("k50", "live50"),
        ("new/k42", "n42"),
    ] {
        assert_eq!(value(&format!("/a/{k}")).as_deref(), Some(v), "{k}");
    }
    assert_eq!(value("/a/k06"), None);
    assert_eq!(value("/a/k11"), None);
    let next = delta(&ctx, whole.desired_tree).await.expect("a delta plan");
    assert!(next.ops.is_empty(), "{:?}", writes(&next));
    assert!(full(&ctx).await.expect("full plan").ops.is_empty());
}

/// A change only a whole read can judge gives no delta plan, validated before or not: the
/// full plan then names the file (a second spelling of a key, a name that maps to no key);
/// another mode gives none either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_only_a_whole_read_judges_is_planned_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ctx, backend) = context(dir.path(), &["a"]).await;
    put(&backend, "/a/k", "1").await;
    put(&backend, "/a/d/x", "1").await;
    export::run(&ctx, None, false).await.expect("export");
    let validated = full(&ctx).await.expect("plan").desired_tree;
    let area = ctx.cfg.areas[0].clone();
    // With nothing validated yet, the desired files are read whole to be checked.
    let first = delta_unvalidated(&ctx).await.expect("a delta plan");
    assert_eq!(first.desired_tree, validated);

    // `k~0` is another spelling of the key `k`.
    push_edits(dir.path(), &[("k~0", Some("2"))]);
    assert!(delta(&ctx, validated).await.is_none());
    assert!(delta_unvalidated(&ctx).await.is_none());
    let err = full(&ctx).await.err().expect("refused");
    assert!(err.to_string().contains("stored twice"), "{err}");

    // The spelling replacing the old one is a change of the key, planned from the change.
    push_edits(dir.path(), &[("k", None)]);
    let plan = delta(&ctx, validated).await.expect("a delta plan");
    assert_eq!(writes(&plan), writes(&full(&ctx).await.expect("full plan")));
    assert_eq!(plan.ops.len(), 1);
    assert_eq!(plan.path_of(&plan.ops[0]), "a/k~0");

    push_edits(dir.path(), &[("d/bad%ZZ", Some("3"))]);
    assert!(delta(&ctx, validated).await.is_none());
    assert!(delta_unvalidated(&ctx).await.is_none());
    let err = full(&ctx).await.err().expect("refused");
    assert!(err.to_string().contains("bad%ZZ"), "{err}");

    let mut other = area.clone();
    other.rule.mode = sync_core::rule::Mode::GitToKv;
    let planned = plan_area_delta(
        &ctx,
        &other,
        tip(&ctx).await,
        &cluster(&ctx).await,
        Some(validated),
    )
    .await;
    assert!(
        planned.expect("plan").is_none(),
        "git-to-kv reads the live side whole"
    );
}

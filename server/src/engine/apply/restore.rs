//! Exact restore (`apply --ref REV --exact`): after the KV writes, areas that record KV
//! changes get the restore committed on the branch, together with their checkpoint.
//!
//! The branch commit (`<area>: restore from <short id>`, `Kvgit-Restored-From`) and the
//! checkpoint (base = the restored tree, revision = the snapshot the plan read) move in one
//! ref transaction, as export's do: afterwards Git tip, KV store and base agree, so `plan`
//! shows nothing and `export` commits nothing. Live changes made after the snapshot are
//! still after the checkpoint, so the next export records them. `git-to-kv` areas get no
//! commit: their tip stays the desired state, and only the checkpoint moves (base = the
//! restored tree, what the store now holds), so the next apply puts the tip back exactly,
//! deleting the keys the restore brought back too.

use super::{ApplyError, AreaPlan};
use crate::engine::checkpoint::{self, Judged};
use crate::engine::message::{restore_message, Trailers};
use crate::engine::Context;
use gitstore::ObjectId;
use std::collections::{BTreeMap, BTreeSet};
use sync_core::tree::{DirPlan, PlanEntry};
use sync_core::Revision;

/// What an exact plan restores, and from which read of the KV store.
#[derive(Debug, Clone)]
pub struct Exact {
    /// The commit restored from (None: the branch has no commits, the area is emptied).
    pub from: Option<ObjectId>,
    /// The area's tree in that commit.
    pub area_tree: Option<ObjectId>,
    /// The revision of the live read the plan was made against.
    pub snapshot_revision: Revision,
}

/// The documents of a document area in `commit`: the subtree each stands for (relative to
/// the area prefix, ending in `/`) and its path in the area directory. Only their names are
/// read; whether they parse is the plan's own check.
pub fn documents_in(
    git: &gitstore::GitStore,
    commit: Option<ObjectId>,
    path: &str,
) -> Result<Vec<(Vec<u8>, String)>, crate::engine::GitError> {
    let Some(tree) = crate::engine::view::area_tree(git, commit, path)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (file, _) in git.files_under(tree)? {
        let name = file.rsplit('/').next().unwrap_or(&file);
        let Some((stem, _)) = sync_core::documents::DocFormat::split_name(name) else {
            continue;
        };
        let Ok(key) = sync_core::mapper::decode_path(&file) else {
            continue;
        };
        let ext = name.len() - stem.len();
        if key.len() >= ext && key.ends_with(&name.as_bytes()[stem.len()..]) {
            let mut prefix = key[..key.len() - ext].to_vec();
            prefix.push(b'/');
            out.push((prefix, file));
        }
    }
    Ok(out)
}

/// The JSON pointer of a key relative to its document (`a/0/b` -> `/a/0/b`).
pub fn pointer(rel: &[u8]) -> String {
    let mut out = String::new();
    for seg in String::from_utf8_lossy(rel).split('/') {
        out.push('/');
        out.push_str(&seg.replace('~', "~0"));
    }
    out
}

/// The file each of `wanted` gets when the area holds exactly `all` (relative keys), as an
/// export would lay it out (a key that is also a prefix of others is named differently).
pub fn paths_of(wanted: BTreeSet<Vec<u8>>, all: Vec<Vec<u8>>) -> BTreeMap<Vec<u8>, String> {
    let mut out = BTreeMap::new();
    if wanted.is_empty() {
        return out;
    }
    let plan: DirPlan<ObjectId, Vec<u8>> =
        sync_core::mapper::layout_all(all.into_iter().map(|k| (k.clone(), k)));
    let mut stack: Vec<(String, &DirPlan<ObjectId, Vec<u8>>)> = vec![(String::new(), &plan)];
    while let Some((dir, plan)) = stack.pop() {
        for (name, entry) in &plan.entries {
            let path = if dir.is_empty() {
                name.clone()
            } else {
                format!("{dir}/{name}")
            };
            match entry {
                PlanEntry::File(rel) if wanted.contains(rel) => {
                    out.insert(rel.clone(), path);
                }
                PlanEntry::Dir(sub) => stack.push((path, sub)),
                _ => {}
            }
        }
    }
    out
}

/// After an exact restore of one area was fully written: in `kv-to-git` and `both` areas
/// commit the restored tree and move the checkpoint with it; returns the commit made (None
/// when the tip already has that tree, or in `git-to-kv` areas, where only the checkpoint
/// moves).
pub async fn record(
    ctx: &Context,
    plan: &AreaPlan,
    exact: &Exact,
) -> Result<Option<ObjectId>, ApplyError> {
    let previous = match &plan.checkpoint {
        Judged::Trusted(cp) | Judged::Distrusted(cp, _) => Some(cp.id),
        Judged::Missing => None,
    };
    if !plan.commits_restore() {
        checkpoint::save(
            ctx,
            &plan.area.name,
            previous,
            exact.snapshot_revision,
            &plan.cluster,
            exact.area_tree,
            None,
            plan.epoch,
        )
        .await?;
        return Ok(None);
    }
    let area = plan.area.name.clone();
    let path = plan.area.path.clone();
    let documents = plan.area.format.is_documents();
    let cluster = plan.cluster.clone();
    let node = ctx.cfg.sync.node.clone();
    let branch = ctx.cfg.git.branch.clone();
    let author = ctx.author();
    let (from, area_tree, revision, epoch) = (
        exact.from,
        exact.area_tree,
        exact.snapshot_revision,
        plan.epoch,
    );
    let cp_ref = crate::engine::refs::checkpoint_ref(&area.0);
    ctx.git_blocking(move |git| -> Result<Option<ObjectId>, ApplyError> {
        let trailers = Trailers {
            area: &area,
            revision,
            cluster: &cluster,
            node: &node,
            epoch,
        };
        let now = crate::engine::now_unix();
        let tip = git.tip()?;
        let root = match tip {
            Some(t) => Some(git.commit_info(t)?.tree),
            None => None,
        };
        let tip_area = match root {
            Some(r) => git.subtree(r, &path)?,
            None => None,
        };
        // `area_tree` is the key tree; a document area's branch holds the documents of
        // the commit restored from.
        let branch_tree = match from {
            Some(from) if documents => crate::engine::view::area_tree(git, Some(from), &path)?,
            _ => area_tree,
        };
        let commit = match from {
            // The branch already holds the tree (or there is nothing to restore from):
            // only the checkpoint moves.
            Some(from) if tip_area != branch_tree => {
                let new_root = match git.set_subtree(root, &path, branch_tree)? {
                    Some(r) => r,
                    None => git.write_plan(&gitstore::Plan::default())?,
                };
                let parents: Vec<ObjectId> = tip.into_iter().collect();
                let msg = restore_message(&trailers, &from.to_string());
                Some(git.write_commit(new_root, &parents, &msg, &author, now)?)
            }
            _ => None,
        };
        let on_branch = commit.or(tip).map(|c| c.to_string());
        let cp_msg = crate::engine::message::checkpoint_message(&trailers, on_branch.as_deref());
        let cp = checkpoint::write_commit(git, area_tree, previous, &cp_msg, &author, now)?;
        let mut updates: Vec<(&str, ObjectId, Option<ObjectId>)> = vec![(&cp_ref, cp, previous)];
        if let Some(c) = commit {
            updates.insert(0, (git.branch_ref(), c, tip));
        }
        // The branch and the checkpoint move together, or neither does.
        git.update_refs(&updates, "kvgit: exact restore")
            .map_err(|source| ApplyError::RestoreNotRecorded {
                branch: branch.clone(),
                source,
            })?;
        Ok(commit)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::super::{apply, plan_all_with, ApplyError, PlanOptions};
    use crate::engine::export;
    use crate::engine::testkit::{context, put};
    use sync_core::{Key, KvBackend};

    #[tokio::test(flavor = "multi_thread")]
    async fn a_key_changed_while_restoring_is_kept_and_the_restore_stops() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ctx, backend) = context(dir.path(), &["a"]).await;
        put(&backend, "/a/x", "1").await;
        put(&backend, "/a/y", "1").await;
        export::run(&ctx, None, false).await.expect("export");
        put(&backend, "/a/x", "2").await;

        let opts = PlanOptions {
            allow_mass_delete: false,
            exact: true,
        };
        let (_, plans) = plan_all_with(&ctx, None, None, opts).await.expect("plan");
        assert_eq!(plans[0].ops.len(), 1, "x goes back to 1");
        // Someone writes x between the plan and the write.
        put(&backend, "/a/x", "3").await;
        let err = apply(&ctx, plans, None, false, |_| {})
            .await
            .expect_err("the restore must stop");
        assert!(
            matches!(&err, ApplyError::RestoreRaced { keys, .. } if keys == &[Key(b"/a/x".to_vec())]),
            "{err}"
        );
        assert!(err.to_string().contains("their values were kept"), "{err}");
        let snap = backend.snapshot(b"/a/", None).await.expect("snapshot");
        let x = snap.entries.iter().find(|e| e.key.0 == b"/a/x").expect("x");
        assert_eq!(x.value, b"3", "the concurrent write is not overwritten");
    }
}

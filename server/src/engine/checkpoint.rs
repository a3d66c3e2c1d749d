//! Checkpoints: per area, the revision up to which every KV change is committed, the
//! cluster it belongs to and the base tree, kept as a commit chain on `refs/kvgit/checkpoints/<area>`.
//!
//! The checkpoint commit's tree *is* the area's base tree, so the base is found without
//! walking history, and the ref moves by compare-and-swap like the branch.

use super::message::{self, Trailers};
use super::Context;
use anyhow::{anyhow, Context as _};
use gitstore::ObjectId;
use sync_core::{AreaName, ClusterId, Revision};

/// Where an area's sync stands.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The checkpoint commit itself (its tree is the base).
    pub id: ObjectId,
    pub revision: Revision,
    pub cluster: ClusterId,
    /// The area's base tree; None when the base is known to be empty.
    pub base_tree: Option<ObjectId>,
    /// The branch commit this checkpoint was taken with, if any.
    pub branch_commit: Option<String>,
    pub node: String,
}

pub fn ref_name(area: &AreaName) -> String {
    format!("refs/kvgit/checkpoints/{}", area.0)
}

/// The area's checkpoint, if one was ever written.
pub async fn load(ctx: &Context, area: &AreaName) -> anyhow::Result<Option<Checkpoint>> {
    let name = ref_name(area);
    ctx.git_blocking(move |git| {
        let Some(id) = git.read_ref(&name)? else {
            return Ok(None);
        };
        let info = git.commit_info(id)?;
        let t = message::parse_trailers(&info.message);
        let revision = t
            .get(message::REVISION)
            .and_then(|r| r.parse().ok())
            .map(Revision)
            .ok_or_else(|| {
                anyhow!(
                    "{name}: checkpoint commit {id} has no {} trailer",
                    message::REVISION
                )
            })?;
        let cluster = t
            .get(message::CLUSTER)
            .cloned()
            .map(ClusterId)
            .ok_or_else(|| {
                anyhow!(
                    "{name}: checkpoint commit {id} has no {} trailer",
                    message::CLUSTER
                )
            })?;
        let empty = git.is_empty_tree(info.tree);
        Ok(Some(Checkpoint {
            id,
            revision,
            cluster,
            base_tree: (!empty).then_some(info.tree),
            branch_commit: t.get(message::COMMIT).cloned(),
            node: t.get(message::NODE).cloned().unwrap_or_default(),
        }))
    })
    .await
}

/// Record a new checkpoint on top of `previous` (compare-and-swap on the ref).
pub async fn save(
    ctx: &Context,
    area: &AreaName,
    previous: Option<ObjectId>,
    revision: Revision,
    cluster: &ClusterId,
    base_tree: Option<ObjectId>,
    branch_commit: Option<ObjectId>,
) -> anyhow::Result<ObjectId> {
    let name = ref_name(area);
    let msg = message::checkpoint_message(
        &Trailers {
            area,
            revision,
            cluster,
            node: &ctx.cfg.sync.node,
            epoch: ctx.epoch(area),
        },
        branch_commit.map(|c| c.to_string()).as_deref(),
    );
    let author = ctx.author();
    ctx.git_blocking(move |git| {
        let tree = match base_tree {
            Some(t) => t,
            None => git.write_plan(&Default::default())?,
        };
        let parents: Vec<ObjectId> = previous.into_iter().collect();
        let id = git.write_commit(tree, &parents, &msg, &author, super::now_unix())?;
        git.update_ref(&name, id, previous, "kvgit: checkpoint")
            .with_context(|| format!("cannot move {name}"))?;
        Ok(id)
    })
    .await
}

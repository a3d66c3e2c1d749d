//! `kvgit log KEY`: the history of one key from Git (commit, time, author, value size),
//! found per commit through the mapper so renames such as `a` -> `a/%self` are followed.

use super::view::area_tree;
use super::Context;
use anyhow::anyhow;
use gitstore::ObjectId;
use std::collections::{BTreeSet, BinaryHeap};
use sync_core::mapper::{self, Locator};

pub async fn run(ctx: &Context, key: &str, limit: Option<usize>) -> anyhow::Result<u8> {
    let area = ctx.cfg.area_of_key(key.as_bytes()).ok_or_else(|| {
        anyhow!(
            "key {key:?} is under no configured area of {} (prefixes: {})",
            ctx.cfg.source.display(),
            ctx.cfg
                .areas
                .iter()
                .map(|a| format!("{:?}", String::from_utf8_lossy(&a.prefix)))
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let rel = key.as_bytes()[area.prefix.len()..].to_vec();
    let path = area.path.clone();
    let limit = limit.unwrap_or(usize::MAX);
    let entries = ctx
        .git_blocking(move |git| {
            let Some(tip) = git.tip()? else {
                return Ok(Vec::new());
            };
            // Newest first by commit time over all parents; each commit compared with its parents.
            let mut heap = BinaryHeap::new();
            let mut seen = BTreeSet::new();
            let info = git.commit_info(tip)?;
            heap.push((info.time, tip));
            seen.insert(tip);
            let mut out = Vec::new();
            while let Some((_, id)) = heap.pop() {
                if out.len() >= limit {
                    break;
                }
                let info = git.commit_info(id)?;
                let here = blob_at(git, Some(id), &path, &rel)?;
                let mut differs = info.parents.is_empty() && here.is_some();
                for p in &info.parents {
                    if blob_at(git, Some(*p), &path, &rel)? != here {
                        differs = true;
                    }
                    if seen.insert(*p) {
                        heap.push((git.commit_info(*p)?.time, *p));
                    }
                }
                if differs {
                    let size = match here {
                        Some(b) => Some(git.read_blob(b)?.len()),
                        None => None,
                    };
                    out.push((info, size));
                }
            }
            Ok(out)
        })
        .await?;
    if entries.is_empty() {
        println!("{key}: no history in Git");
        return Ok(0);
    }
    for (info, size) in entries {
        let when = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(info.time.max(0) as u64),
        );
        let what = match size {
            Some(n) => format!("{n} bytes"),
            None => "deleted".to_string(),
        };
        let summary = info.message.lines().next().unwrap_or("");
        println!(
            "{} {when} {} <{}> {what}  {summary}",
            &info.id.to_string()[..12],
            info.author_name,
            info.author_email
        );
    }
    Ok(0)
}

fn blob_at(
    git: &gitstore::GitStore,
    commit: Option<ObjectId>,
    path: &str,
    rel: &[u8],
) -> anyhow::Result<Option<ObjectId>> {
    let tree = area_tree(git, commit, path)?;
    Ok(mapper::lookup(
        git,
        tree.as_ref(),
        rel,
        &mut Locator::default(),
    )?)
}

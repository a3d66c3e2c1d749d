//! `kvgit status`: per area its mode, checkpoint, base commit, owner, pending events and
//! drift, as a table or JSON (the same data `GET /status` serves).

use super::apply::plan_area;
use super::changes::{self, Delta};
use super::checkpoint::{self, Judged};
use super::Context;
use anyhow::Context as _;
use serde_json::{json, Value as Json};

pub async fn run(ctx: &Context, as_json: bool) -> anyhow::Result<u8> {
    let report = collect(ctx).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(0);
    }
    println!(
        "{:<16} {:<10} {:>12} {:<14} {:<12} {:>8} {:>6} {:>8}",
        "AREA", "MODE", "CHECKPOINT", "BASE COMMIT", "OWNER", "PENDING", "DRIFT", "TO APPLY"
    );
    for a in report["areas"].as_array().into_iter().flatten() {
        let s = |v: &Json| match v {
            Json::Null => "-".to_string(),
            Json::String(s) => s.clone(),
            other => other.to_string(),
        };
        let commit = s(&a["base_commit"]);
        println!(
            "{:<16} {:<10} {:>12} {:<14} {:<12} {:>8} {:>6} {:>8}",
            s(&a["area"]),
            s(&a["mode"]),
            s(&a["checkpoint"]["revision"]),
            &commit[..commit.len().min(12)],
            s(&a["owner"]),
            s(&a["pending_events"]),
            s(&a["drift"]),
            s(&a["pending_apply"]),
        );
        if let Some(e) = a["error"].as_str() {
            println!("  error: {e}");
        }
    }
    Ok(0)
}

/// The status document: one entry per area, each with what went wrong if anything did.
pub async fn collect(ctx: &Context) -> anyhow::Result<Json> {
    let backend = ctx.backend().await?;
    let cluster = backend
        .cluster_id()
        .await
        .context("cannot read the cluster id")?;
    let current = backend.current_revision().await?;
    let tip = ctx.git_blocking(|git| Ok(git.tip()?)).await?;
    // Owners as the running `serve` nodes recorded them (claims on their leases).
    let owners_prefix = {
        let mut p = ctx.cfg.sync.ownership_prefix.clone();
        p.extend_from_slice(b"areas/");
        p
    };
    let owners: std::collections::BTreeMap<Vec<u8>, String> = backend
        .claims(&owners_prefix)
        .await
        .context("cannot read the area owners")?
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
            // Keys changed since the checkpoint (a key written many times counts once).
            let pending = match judged.trusted() {
                Some(c) => match changes::since(
                    backend.as_ref(),
                    &area.prefix,
                    c.revision.next(),
                    current,
                    ctx.cfg.backend.request_timeout,
                )
                .await?
                {
                    Delta::Changes { changes, .. } => json!(changes.len()),
                    Delta::Resync(r) => json!(format!("resync needed ({})", r.label())),
                },
                None => Json::Null,
            };
            let mut entry = json!({
                "area": area.name.0,
                "mode": area.rule.mode.as_str(),
                "prefix": String::from_utf8_lossy(&area.prefix),
                "path": area.path,
                "checkpoint": cp.as_ref().map(|c| json!({
                    "revision": c.revision.0,
                    "cluster": c.cluster.0,
                    "same_cluster": &c.cluster == cluster,
                    "trusted": judged.trusted().is_some(),
                    "distrust": judged.distrust().map(ToString::to_string),
                    "node": c.node,
                    "commit": c.id.to_string(),
                })),
                "base_commit": cp.as_ref().and_then(|c| c.branch_commit.clone()),
                "owner": owners.get(area.name.0.as_bytes()),
                "pending_events": pending,
                "drift": Json::Null,
                "pending_apply": Json::Null,
                "pending_export": Json::Null,
                "error": Json::Null,
            });
            match plan_area(ctx, area, tip, cluster, true).await {
                Ok(plan) => {
                    entry["drift"] = json!(plan.drift.len());
                    entry["pending_apply"] = json!(plan.ops.len());
                    entry["pending_export"] = json!(plan.pending_export);
                }
                Err(e) => entry["error"] = json!(format!("{e:#}")),
            }
            Ok::<_, anyhow::Error>(entry)
        }
    }))
    .await?;
    Ok(json!({
        "node": ctx.cfg.sync.node,
        "backend": { "kind": backend.kind(), "cluster": cluster.0, "revision": current.0 },
        "branch": ctx.cfg.git.branch,
        "tip": tip.map(|t| t.to_string()),
        "areas": areas,
    }))
}

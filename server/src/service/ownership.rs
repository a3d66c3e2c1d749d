//! Area ownership across nodes: one backend lease per node, a member record and one claim
//! per owned area hanging on it; rendezvous hashing over the live members says who should own what.
//!
//! Fencing: a node commits or pushes an area only while its lease is surely alive — until
//! the last renewal's send time plus three quarters of the TTL; the backend cannot expire it
//! sooner. Commits carry the claim's epoch (`Kvgit-Epoch`); the pusher refuses to publish an
//! area whose remote checkpoint already carries a newer epoch.

use super::metrics::Metrics;
use super::push::PushHandle;
use super::state::ServiceState;
use crate::engine::{ConnectError, Context};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use sync_core::ownership::{members_prefix, owners_prefix};
use sync_core::{rendezvous_owner, AreaName, Epoch, Key, Lease, LeaseId, Renewal};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What this node may do with one area right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Someone else's (or no one's yet).
    NotOwned,
    /// Ours: watch, commit and push it.
    Owned(Epoch),
    /// Ours, but another node should own it: commit what is pending, then let go.
    HandOver(Epoch),
    /// The area task has committed and stopped; the claim goes once the push is done.
    Released(Epoch),
}

impl Grant {
    pub fn epoch(self) -> Option<Epoch> {
        match self {
            Grant::NotOwned => None,
            Grant::Owned(e) | Grant::HandOver(e) | Grant::Released(e) => Some(e),
        }
    }
}

/// One node's view of ownership, shared by the area tasks, the pusher and `/status`.
pub struct Ownership {
    node: String,
    prefix: Vec<u8>,
    grants: BTreeMap<String, watch::Sender<Grant>>,
    /// The current lease and until when it is surely alive.
    lease: Mutex<Option<(Lease, Instant)>>,
    /// Per area: the owner's node name as last read from the backend, for status.
    owners: Mutex<BTreeMap<String, String>>,
}

/// How much of the TTL after a renewal's send the node trusts its lease for: the rest is
/// the margin for a slow clock, a GC pause or a push in flight.
fn trusted(ttl: Duration) -> Duration {
    ttl * 3 / 4
}

impl Ownership {
    pub fn new(node: &str, prefix: &[u8], areas: &[AreaName]) -> Ownership {
        Ownership {
            node: node.to_string(),
            prefix: prefix.to_vec(),
            grants: areas
                .iter()
                .map(|a| (a.0.clone(), watch::channel(Grant::NotOwned).0))
                .collect(),
            lease: Mutex::new(None),
            owners: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn member_key(&self, node: &str) -> Key {
        let mut k = members_prefix(&self.prefix);
        k.extend_from_slice(node.as_bytes());
        Key(k)
    }

    pub fn owner_key(&self, area: &str) -> Key {
        let mut k = owners_prefix(&self.prefix);
        k.extend_from_slice(area.as_bytes());
        Key(k)
    }

    pub fn subscribe(&self, area: &str) -> Option<watch::Receiver<Grant>> {
        self.grants.get(area).map(watch::Sender::subscribe)
    }

    pub fn grant(&self, area: &str) -> Grant {
        self.grants
            .get(area)
            .map_or(Grant::NotOwned, |g| *g.borrow())
    }

    fn set(&self, area: &str, grant: Grant) {
        if let Some(g) = self.grants.get(area) {
            g.send_if_modified(|cur| {
                let changed = *cur != grant;
                *cur = grant;
                changed
            });
        }
    }

    /// The area task has flushed and stopped after a hand-over request.
    pub fn released(&self, area: &str) {
        if let Grant::HandOver(e) = self.grant(area) {
            self.set(area, Grant::Released(e));
        }
    }

    /// `Some(epoch)` while this node owns `area` and its lease is surely alive: the only
    /// state in which it may commit or push the area.
    pub fn fence(&self, area: &str) -> Option<Epoch> {
        let epoch = self.grant(area).epoch()?;
        let lease = self.lease.lock().unwrap_or_else(PoisonError::into_inner);
        match &*lease {
            Some((_, until)) if Instant::now() < *until => Some(epoch),
            _ => None,
        }
    }

    /// The owner of each area as last seen (node name), for `/status`.
    pub fn owner_of(&self, area: &str) -> Option<String> {
        self.owners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(area)
            .cloned()
    }

    fn lease(&self) -> Option<Lease> {
        self.lease
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|(l, _)| l.clone())
    }

    fn set_lease(&self, lease: Option<(Lease, Instant)>) {
        *self.lease.lock().unwrap_or_else(PoisonError::into_inner) = lease;
    }

    /// The lease id, for revoking it at shutdown.
    pub fn lease_id(&self) -> Option<LeaseId> {
        self.lease().map(|l| l.id)
    }
}

/// The member record: which areas a node is configured for, so only those count for it.
fn member_record(areas: &[String]) -> Vec<u8> {
    serde_json::json!({ "areas": areas })
        .to_string()
        .into_bytes()
}

fn member_areas(value: &[u8]) -> BTreeSet<String> {
    serde_json::from_slice::<serde_json::Value>(value)
        .ok()
        .and_then(|v| {
            v.get("areas").and_then(|a| a.as_array()).map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Why an ownership round failed; the loop tries again within a second.
#[derive(Debug, thiserror::Error)]
pub enum OwnershipError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Backend(#[from] sync_core::BackendError),
    #[error("sync.node {node:?}: another live kvgit holds {key} (two nodes with one name?)")]
    NameTaken { node: String, key: Key },
}

/// What the ownership loop needs: the backend and config (through the engine), the
/// shared ownership view it keeps, where to report, and a way to ask for a push.
#[derive(Clone)]
pub struct OwnershipCtx {
    pub engine: Arc<Context>,
    pub ownership: Arc<Ownership>,
    pub metrics: Arc<Metrics>,
    pub state: Arc<ServiceState>,
    pub push: PushHandle,
}

/// The ownership loop: keep the lease, publish membership, claim what rendezvous hashing
/// gives this node, hand over what it gives another. Runs until shutdown; the lease is
/// revoked by the caller after the last push, so the areas move at once.
pub async fn run(ctx: OwnershipCtx, shutdown: CancellationToken) {
    let own = ctx.ownership.clone();
    let ttl = ctx.engine.cfg.sync.lease_ttl;
    let areas: Vec<String> = own.grants.keys().cloned().collect();
    let record = member_record(&areas);
    // When each area was first seen without an owner: a node that is not the chosen one
    // still takes an area nobody took for a whole TTL (the chosen node may be stuck).
    let mut unowned_since: BTreeMap<String, Instant> = BTreeMap::new();
    let mut tick = ttl / 4;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        tick = ttl / 4;
        if let Err(e) = round(&ctx, &record, &areas, &mut unowned_since).await {
            // backend_ok is the health probe's to say: this may be a config problem.
            tracing::warn!(error = %crate::errors::chain(&e), "ownership round failed; retrying");
            tick = Duration::from_secs(1).min(ttl / 4);
        }
        // Without a trusted lease nothing may be committed: tell the area tasks.
        if own.lease().is_none() {
            for a in &areas {
                own.set(a, Grant::NotOwned);
            }
        }
        publish(&ctx, &areas);
    }
}

/// What the rest of the service reads: `kvgit_area_owner`. (The epoch stamped on a commit
/// is the one the committer's own fence check returned, never a value published here.)
fn publish(ctx: &OwnershipCtx, areas: &[String]) {
    for a in areas {
        ctx.metrics.owner(a, ctx.ownership.fence(a).is_some());
    }
}

/// Starts ownership before the area tasks: grant the lease and take the first claims, so a
/// lone node owns its areas at once instead of after a tick.
pub async fn start(ctx: &OwnershipCtx) {
    let areas: Vec<String> = ctx.ownership.grants.keys().cloned().collect();
    let record = member_record(&areas);
    let mut unowned = BTreeMap::new();
    if let Err(e) = round(ctx, &record, &areas, &mut unowned).await {
        tracing::warn!(error = %crate::errors::chain(&e), "first ownership round failed; retrying in the loop");
    }
    publish(ctx, &areas);
}

async fn round(
    ctx: &OwnershipCtx,
    record: &[u8],
    areas: &[String],
    unowned_since: &mut BTreeMap<String, Instant>,
) -> Result<(), OwnershipError> {
    let own = &ctx.ownership;
    let node = own.node.clone();
    let ttl = ctx.engine.cfg.sync.lease_ttl;
    let backend = ctx.engine.backend().await?;

    // 1. The lease: renew it, or get a new one when it is gone.
    let lease = match own.lease() {
        Some(lease) => {
            let sent = Instant::now();
            match backend.renew_lease(&lease.id).await? {
                Renewal::Alive { ttl } => {
                    own.set_lease(Some((lease.clone(), sent + trusted(ttl))));
                    lease
                }
                Renewal::Gone => {
                    tracing::warn!(lease = %lease.id, "lease expired: this node's areas are no longer its own");
                    own.set_lease(None);
                    for a in areas {
                        own.set(a, Grant::NotOwned);
                    }
                    grant_lease(ctx, &node, ttl).await?
                }
            }
        }
        None => grant_lease(ctx, &node, ttl).await?,
    };

    // 2. Membership: one record per node name; a second process with the same name is refused.
    let member = own.member_key(&node);
    if backend.claim(&member, record, &lease.id).await?.is_none() {
        return Err(OwnershipError::NameTaken { node, key: member });
    }

    // 3. Who is alive, and who owns what.
    let claims = backend.claims(&own.prefix).await?;
    let members_prefix = own.member_key("").0;
    let areas_prefix = own.owner_key("").0;
    let mut members: Vec<(String, BTreeSet<String>)> = Vec::new();
    let mut owners: BTreeMap<String, sync_core::Claim> = BTreeMap::new();
    for c in claims {
        if let Some(n) = c.key.0.strip_prefix(members_prefix.as_slice()) {
            members.push((
                String::from_utf8_lossy(n).into_owned(),
                member_areas(&c.value),
            ));
        } else if let Some(a) = c.key.0.strip_prefix(areas_prefix.as_slice()) {
            owners.insert(String::from_utf8_lossy(a).into_owned(), c);
        }
    }
    {
        let mut seen = own.owners.lock().unwrap_or_else(PoisonError::into_inner);
        seen.clear();
        for (a, c) in &owners {
            seen.insert(a.clone(), String::from_utf8_lossy(&c.value).into_owned());
        }
    }

    // 4. Per area: claim, keep, hand over or let go.
    for area in areas {
        let eligible = members
            .iter()
            .filter(|(_, served)| served.contains(area))
            .map(|(n, _)| n.as_str());
        let chosen = rendezvous_owner(area, eligible).unwrap_or(node.as_str()) == node;
        let current = own.grant(area);
        match owners.get(area) {
            Some(c) if c.lease == lease.id => {
                unowned_since.remove(area);
                match current {
                    Grant::NotOwned => own.set(area, Grant::Owned(c.epoch)),
                    Grant::Owned(e) if !chosen => {
                        tracing::info!(area, "another node should own this area: handing it over");
                        own.set(area, Grant::HandOver(e));
                    }
                    Grant::Released(_) => {
                        // Publish what the area task committed, then let go.
                        if ctx.push.publish(area).await {
                            backend.release(&c.key, &lease.id).await?;
                            own.set(area, Grant::NotOwned);
                            tracing::info!(area, "area handed over");
                        }
                    }
                    _ => {}
                }
            }
            Some(_) => {
                unowned_since.remove(area);
                if current != Grant::NotOwned {
                    tracing::warn!(area, "another node holds this area's claim now: stopping");
                    own.set(area, Grant::NotOwned);
                }
            }
            None => {
                if current != Grant::NotOwned {
                    // Our claim vanished (expired or deleted) under a lease we still renew.
                    tracing::warn!(area, "this area's claim is gone: stopping");
                    own.set(area, Grant::NotOwned);
                }
                let since = *unowned_since
                    .entry(area.clone())
                    .or_insert_with(Instant::now);
                if chosen || since.elapsed() >= ttl {
                    let key = own.owner_key(area);
                    if let Some(epoch) = backend.claim(&key, node.as_bytes(), &lease.id).await? {
                        tracing::info!(area, %epoch, "area claimed");
                        unowned_since.remove(area);
                        own.owners
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert(area.clone(), node.clone());
                        own.set(area, Grant::Owned(epoch));
                    }
                }
            }
        }
    }
    for area in areas {
        let owner = own.owner_of(area);
        let here = own.grant(area) != Grant::NotOwned;
        ctx.state.update(area, |s| {
            s.owner = owner;
            s.owned_here = here;
        });
    }
    Ok(())
}

async fn grant_lease(
    ctx: &OwnershipCtx,
    node: &str,
    ttl: Duration,
) -> Result<Lease, OwnershipError> {
    let backend = ctx.engine.backend().await?;
    let sent = Instant::now();
    let lease = backend.grant_lease(&format!("kvgit {node}"), ttl).await?;
    tracing::info!(lease = %lease.id, ttl = ?lease.ttl, "lease granted");
    ctx.ownership
        .set_lease(Some((lease.clone(), sent + trusted(lease.ttl))));
    Ok(lease)
}

/// At shutdown, after the last push: revoke the lease so other nodes take the areas at once.
pub async fn stop(ctx: &OwnershipCtx) {
    let Some(lease) = ctx.ownership.lease_id() else {
        return;
    };
    ctx.ownership.set_lease(None);
    if let Ok(backend) = ctx.engine.backend().await {
        match tokio::time::timeout(Duration::from_secs(3), backend.revoke_lease(&lease)).await {
            Ok(Ok(())) => tracing::info!(%lease, "lease revoked: areas released"),
            Ok(Err(e)) => {
                tracing::warn!(%lease, error = %e, "could not revoke the lease; it expires by its TTL")
            }
            Err(_) => tracing::warn!(%lease, "revoking the lease timed out; it expires by its TTL"),
        }
    }
}

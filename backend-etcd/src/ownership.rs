//! Ownership on etcd: leases (grant, keep-alive, revoke) and claims as keys attached to a
//! lease, taken by a txn on `create_revision == 0`; the key's create revision is the epoch.

use crate::backend::Conn;
use crate::errors::{missing_header, rev, KIND};
use crate::keys::prefix_range;
use etcd_client::{
    Compare, CompareOp, GetOptions, LeaseClient, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use std::time::Duration;
use sync_core::{BackendError, Claim, Epoch, Key, Lease, LeaseId, Renewal};

/// etcd lease ids are i64; kvgit shows them in hex, as `etcdctl lease list` does.
fn lease_id(lease: &LeaseId) -> Result<i64, BackendError> {
    i64::from_str_radix(&lease.0, 16).map_err(|_| BackendError::Refused {
        backend: KIND,
        detail: format!("{lease:?} is not an etcd lease id"),
    })
}

fn lease_name(id: i64) -> LeaseId {
    LeaseId(format!("{id:x}"))
}

fn ttl_secs(ttl: Duration) -> i64 {
    // etcd counts whole seconds; round up so the lease lives at least as long as asked.
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

pub(crate) async fn grant(
    conn: &Conn,
    leases: &LeaseClient,
    ttl: Duration,
) -> Result<Lease, BackendError> {
    let mut l = leases.clone();
    let resp = conn
        .ctx
        .call("lease grant", l.grant(ttl_secs(ttl), None))
        .await?;
    // etcd may raise a TTL below its minimum; the answer says what applies.
    let applied = u64::try_from(resp.ttl()).unwrap_or(0).max(1);
    Ok(Lease {
        id: lease_name(resp.id()),
        ttl: Duration::from_secs(applied),
    })
}

pub(crate) async fn renew(
    conn: &Conn,
    leases: &LeaseClient,
    lease: &LeaseId,
) -> Result<Renewal, BackendError> {
    let id = lease_id(lease)?;
    let mut l = leases.clone();
    let once = async move {
        // `keep_alive` renews once and swallows the answer (failing on an unknown lease);
        // a second request on the same stream tells the TTL granted.
        let (mut keeper, mut stream) = l.keep_alive(id).await?;
        keeper.keep_alive().await?;
        stream.message().await
    };
    match conn.ctx.call("lease keep-alive", once).await {
        Ok(Some(resp)) if resp.ttl() > 0 => Ok(Renewal::Alive {
            ttl: Duration::from_secs(u64::try_from(resp.ttl()).unwrap_or(1)),
        }),
        // A TTL of 0 (or a closed stream) is etcd's "lease not found".
        Ok(_) => Ok(Renewal::Gone),
        Err(e) if is_lease_not_found(&e) => Ok(Renewal::Gone),
        Err(e) => Err(e),
    }
}

pub(crate) async fn revoke(
    conn: &Conn,
    leases: &LeaseClient,
    lease: &LeaseId,
) -> Result<(), BackendError> {
    let id = lease_id(lease)?;
    let mut l = leases.clone();
    match conn.ctx.call("lease revoke", l.revoke(id)).await {
        // Already gone is what revoking wants.
        Ok(_) => Ok(()),
        Err(e) if is_lease_not_found(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

pub(crate) async fn claim(
    conn: &Conn,
    key: &Key,
    value: &[u8],
    lease: &LeaseId,
) -> Result<Option<Epoch>, BackendError> {
    let id = lease_id(lease)?;
    let k = key.0.clone();
    let txn = Txn::new()
        .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            k.clone(),
            value.to_vec(),
            Some(PutOptions::new().with_lease(id)),
        )])
        .or_else([TxnOp::get(k, None)]);
    let mut kv = conn.kv.clone();
    let resp = conn.ctx.call("claim", kv.txn(txn)).await?;
    if resp.succeeded() {
        // The put created the key: its create revision is this txn's revision.
        let header = resp.header().ok_or_else(|| missing_header("claim"))?;
        return Ok(Some(Epoch(rev(header.revision()).0)));
    }
    for op in resp.op_responses() {
        if let TxnOpResponse::Get(get) = op {
            if let Some(kv) = get.kvs().first() {
                if kv.lease() == id {
                    return Ok(Some(Epoch(rev(kv.create_revision()).0)));
                }
            }
        }
    }
    Ok(None)
}

pub(crate) async fn release(conn: &Conn, key: &Key, lease: &LeaseId) -> Result<(), BackendError> {
    let id = lease_id(lease)?;
    let k = key.0.clone();
    let txn = Txn::new()
        .when([Compare::lease(k.clone(), CompareOp::Equal, id)])
        .and_then([TxnOp::delete(k, None)]);
    let mut kv = conn.kv.clone();
    conn.ctx.call("release", kv.txn(txn)).await?;
    Ok(())
}

pub(crate) async fn claims(conn: &Conn, prefix: &[u8]) -> Result<Vec<Claim>, BackendError> {
    let (start, end) = prefix_range(prefix);
    let mut kv = conn.kv.clone();
    let resp = conn
        .ctx
        .call(
            "claims",
            kv.get(start, Some(GetOptions::new().with_range(end))),
        )
        .await?;
    let mut out: Vec<Claim> = resp
        .kvs()
        .iter()
        .filter(|kv| kv.lease() != 0)
        .map(|kv| Claim {
            key: Key(kv.key().to_vec()),
            value: kv.value().to_vec(),
            lease: lease_name(kv.lease()),
            epoch: Epoch(rev(kv.create_revision()).0),
        })
        .collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// etcd's "requested lease not found", however the client wrapped it; never an outage.
fn is_lease_not_found(err: &BackendError) -> bool {
    match err {
        BackendError::Refused { detail, .. } | BackendError::Other { detail, .. } => {
            detail.contains("lease not found")
        }
        _ => false,
    }
}

//! Ownership cases: leases and the claims that hang on them: exclusive, idempotent for the
//! holder, released exactly, gone with the lease (revoked or expired), epochs that grow.

use super::support::key;
use std::time::{Duration, Instant};
use sync_core::{Claim, KvBackend, Lease, Renewal};

async fn grant(b: &dyn KvBackend, name: &str, ttl: Duration) -> Lease {
    let lease = b
        .grant_lease(name, ttl)
        .await
        .unwrap_or_else(|e| panic!("grant_lease({name}, {ttl:?}): {e}"));
    assert!(
        lease.ttl >= ttl,
        "the applied TTL {:?} is at least the asked {ttl:?}",
        lease.ttl
    );
    lease
}

async fn claims(b: &dyn KvBackend, prefix: &[u8]) -> Vec<Claim> {
    b.claims(prefix).await.expect("claims")
}

/// One holder at a time; the holder's claim is idempotent; release and revoke free it, and
/// each new claim has a larger epoch than the one before.
pub async fn claims_are_exclusive(b: &dyn KvBackend, prefix: &[u8]) {
    let ttl = Duration::from_secs(10);
    let one = grant(b, "kvgit-conformance-one", ttl).await;
    let two = grant(b, "kvgit-conformance-two", ttl).await;
    assert_ne!(one.id, two.id);
    let k = key(prefix, "owner/area-a");

    let e1 = b.claim(&k, b"one", &one.id).await.expect("claim");
    let e1 = e1.expect("a free key is claimed");
    assert_eq!(
        b.claim(&k, b"one", &one.id).await.expect("claim again"),
        Some(e1),
        "claiming what one holds is a no-op with the same epoch"
    );
    assert_eq!(
        b.claim(&k, b"two", &two.id).await.expect("claim held"),
        None,
        "a held key is not taken"
    );
    let listed = claims(b, prefix).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].key, k);
    assert_eq!(listed[0].value, b"one");
    assert_eq!(listed[0].lease, one.id);
    assert_eq!(listed[0].epoch, e1);

    // Releasing with the wrong lease does nothing; with the holder's it frees the key.
    b.release(&k, &two.id).await.expect("release by non-holder");
    assert_eq!(claims(b, prefix).await.len(), 1, "still held by one");
    b.release(&k, &one.id).await.expect("release");
    assert!(claims(b, prefix).await.is_empty(), "released");
    let e2 = b
        .claim(&k, b"two", &two.id)
        .await
        .expect("claim freed")
        .expect("a released key is free");
    assert!(e2 > e1, "epochs grow: {e1} then {e2}");

    // Revoking a lease drops its claims at once.
    let k2 = key(prefix, "owner/area-b");
    assert!(b
        .claim(&k2, b"two", &two.id)
        .await
        .expect("claim")
        .is_some());
    b.revoke_lease(&two.id).await.expect("revoke");
    assert!(
        claims(b, prefix).await.is_empty(),
        "revoked lease's claims are gone"
    );
    assert_eq!(
        b.renew_lease(&two.id).await.expect("renew revoked"),
        Renewal::Gone
    );
    let e3 = b
        .claim(&k, b"one", &one.id)
        .await
        .expect("claim after revoke")
        .expect("free after revoke");
    assert!(e3 > e2, "epochs grow: {e2} then {e3}");
    b.revoke_lease(&one.id).await.expect("revoke one");
    b.revoke_lease(&one.id)
        .await
        .expect("revoking twice is fine");
}

/// A lease that is renewed stays; one that is not expires by its TTL (etcd: at the TTL;
/// Consul: between TTL and twice the TTL) and takes its claims with it.
pub async fn leases_expire_unless_renewed(b: &dyn KvBackend, prefix: &[u8]) {
    let asked = Duration::from_secs(2);
    let kept = grant(b, "kvgit-conformance-kept", asked).await;
    let dropped = grant(b, "kvgit-conformance-dropped", asked).await;
    let ttl = kept.ttl;
    let k_kept = key(prefix, "owner/kept");
    let k_dropped = key(prefix, "owner/dropped");
    assert!(b
        .claim(&k_kept, b"k", &kept.id)
        .await
        .expect("claim")
        .is_some());
    assert!(b
        .claim(&k_dropped, b"d", &dropped.id)
        .await
        .expect("claim")
        .is_some());

    // The backend may keep an unrenewed lease up to twice its TTL (Consul), never less.
    let limit = ttl * 2 + Duration::from_secs(5);
    let started = Instant::now();
    loop {
        match b.renew_lease(&kept.id).await.expect("renew") {
            Renewal::Alive { ttl: t } => assert!(t >= ttl, "renewed for {t:?} < {ttl:?}"),
            Renewal::Gone => panic!("a renewed lease expired after {:?}", started.elapsed()),
        }
        let held: Vec<_> = claims(b, prefix).await.into_iter().map(|c| c.key).collect();
        assert!(held.contains(&k_kept), "the renewed lease's claim stays");
        if !held.contains(&k_dropped) {
            assert!(
                started.elapsed() >= ttl.saturating_sub(Duration::from_millis(500)),
                "expired after {:?}, before its TTL {ttl:?}",
                started.elapsed()
            );
            break;
        }
        assert!(
            started.elapsed() < limit,
            "an unrenewed lease of TTL {ttl:?} still holds its claim after {limit:?}"
        );
        tokio::time::sleep(ttl / 4).await;
    }
    assert_eq!(
        b.renew_lease(&dropped.id).await.expect("renew expired"),
        Renewal::Gone
    );
    b.revoke_lease(&kept.id).await.expect("revoke");
}

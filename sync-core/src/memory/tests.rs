//! Unit tests of the in-memory backend's own choices (lazy lease expiry, coalesced progress,
//! compaction, outage); the promises shared with etcd and Consul are the conformance suite's.
//! Run on futures' executor, not tokio: the backend must need none.

use super::*;
use crate::types::{ChangeKind, Precondition, ResyncReason, WatchEvent};
use futures::executor::block_on;
use futures::{FutureExt, StreamExt};

fn put(k: &str, v: &str) -> WriteOp {
    WriteOp::Put {
        key: Key::from(k),
        value: v.into(),
        expect: Precondition::Any,
    }
}

fn delete(k: &str) -> WriteOp {
    WriteOp::Delete {
        key: Key::from(k),
        expect: Precondition::Any,
    }
}

fn commit(b: &MemoryBackend, ops: Vec<WriteOp>) -> Revision {
    match block_on(b.write(&ops)) {
        Ok(TxnOutcome::Committed { revision }) => revision,
        other => panic!("expected Committed, got {other:?}"),
    }
}

/// The next item if one is ready now; `None` when the stream would wait.
fn ready_item(s: &mut WatchStream) -> Option<Option<Result<WatchEvent, BackendError>>> {
    s.next().now_or_never()
}

fn next_event(s: &mut WatchStream) -> WatchEvent {
    match ready_item(s) {
        Some(Some(Ok(ev))) => ev,
        other => panic!("expected an event ready now, got {other:?}"),
    }
}

#[test]
fn a_watch_from_a_compacted_revision_asks_for_a_resync_and_ends() {
    let b = MemoryBackend::new();
    let r1 = commit(&b, vec![put("/p/k", "1")]);
    commit(&b, vec![put("/p/k", "2")]);
    let r3 = commit(&b, vec![put("/p/k", "3")]);
    b.compact(r3);

    let mut s = block_on(b.watch(b"/p/", r1)).expect("a compacted start is not an Err");
    assert_eq!(
        next_event(&mut s),
        WatchEvent::ResyncNeeded(ResyncReason::Compacted {
            compact_revision: r3
        })
    );
    assert!(matches!(ready_item(&mut s), Some(None)), "ends after it");

    match block_on(b.snapshot(b"/p/", Some(r1))) {
        Err(BackendError::Compacted {
            requested,
            compact_revision,
            ..
        }) => assert_eq!((requested, compact_revision), (r1, r3)),
        other => panic!("expected Compacted, got {other:?}"),
    }
    assert!(matches!(
        block_on(b.changes_between(b"/p/", r1, r3)),
        Err(BackendError::Compacted { .. })
    ));
    // The compaction revision itself is still there, to read and to watch from.
    assert_eq!(
        block_on(b.snapshot(b"/p/", Some(r3)))
            .expect("at r3")
            .entries
            .len(),
        1
    );
    let mut s = block_on(b.watch(b"/p/", r3)).expect("watch");
    assert!(matches!(next_event(&mut s), WatchEvent::Changes { revision, .. } if revision == r3));
}

#[test]
fn an_expired_lease_drops_its_claims_in_one_transaction() {
    let b = MemoryBackend::new();
    let lease = block_on(b.grant_lease("node", Duration::from_millis(50))).expect("grant");
    let (k1, k2) = (Key::from("/own/a"), Key::from("/own/b"));
    let e1 = block_on(b.claim(&k1, b"node", &lease.id)).expect("claim");
    assert!(e1.is_some());
    assert!(block_on(b.claim(&k2, b"node", &lease.id))
        .expect("claim")
        .is_some());
    let from = block_on(b.current_revision()).expect("revision").next();
    let mut s = block_on(b.watch(b"/own/", from)).expect("watch");

    std::thread::sleep(Duration::from_millis(80));
    // Nothing runs in the background: the next call ends the lease.
    assert!(block_on(b.claims(b"/own/")).expect("claims").is_empty());
    assert_eq!(
        block_on(b.renew_lease(&lease.id)).expect("renew"),
        Renewal::Gone
    );
    match next_event(&mut s) {
        WatchEvent::Changes { changes, .. } => {
            let keys: Vec<_> = changes
                .iter()
                .map(|c| (c.key.clone(), c.kind.clone()))
                .collect();
            assert_eq!(
                keys,
                [(k1.clone(), ChangeKind::Delete), (k2, ChangeKind::Delete)]
            );
        }
        other => panic!("expected both deletes in one event, got {other:?}"),
    }

    let other = block_on(b.grant_lease("other", Duration::from_secs(10))).expect("grant");
    let e2 = block_on(b.claim(&k1, b"other", &other.id)).expect("claim");
    assert!(e2 > e1, "epochs grow: {e1:?} then {e2:?}");
}

#[test]
fn claims_behave_as_on_etcd() {
    let b = MemoryBackend::new();
    let lease = block_on(b.grant_lease("node", Duration::from_secs(10))).expect("grant");
    let plain = Key::from("/own/plain");
    commit(&b, vec![put("/own/plain", "x")]);
    assert_eq!(
        block_on(b.claim(&plain, b"n", &lease.id)).expect("claim"),
        None
    );

    // A plain put over a claim detaches it from the lease: it is no claim any more.
    let k = Key::from("/own/k");
    assert!(block_on(b.claim(&k, b"n", &lease.id))
        .expect("claim")
        .is_some());
    commit(&b, vec![put("/own/k", "overwritten")]);
    assert!(block_on(b.claims(b"/own/")).expect("claims").is_empty());

    let unknown = LeaseId("ffff".into());
    let free = Key::from("/own/free");
    assert!(matches!(
        block_on(b.claim(&free, b"n", &unknown)),
        Err(BackendError::Refused { .. })
    ));
    assert!(
        block_on(b.revoke_lease(&unknown)).is_ok(),
        "revoking the unknown is fine"
    );
}

#[test]
fn older_states_and_exact_changes_read_back() {
    let b = MemoryBackend::new();
    let r1 = commit(&b, vec![put("/p/a", "1"), put("/p/c", "c")]);
    let r2 = commit(
        &b,
        vec![put("/p/a", "2"), put("/p/gone", "g"), put("/q/x", "no")],
    );
    let r3 = commit(&b, vec![delete("/p/c"), delete("/p/gone")]);

    let old = block_on(b.snapshot(b"/p/", Some(r1))).expect("at r1");
    let old: Vec<_> = old
        .entries
        .iter()
        .map(|e| (e.key.to_string(), e.mod_revision))
        .collect();
    assert_eq!(old, [("/p/a".to_string(), r1), ("/p/c".to_string(), r1)]);

    let delta = block_on(b.changes_between(b"/p/", r1, r3))
        .expect("delta")
        .expect("exact");
    let delta: Vec<_> = delta
        .into_iter()
        .map(|c| (c.key.to_string(), c.kind, c.revision))
        .collect();
    assert_eq!(
        delta,
        [
            ("/p/a".to_string(), ChangeKind::Put(b"2".to_vec()), r2),
            ("/p/c".to_string(), ChangeKind::Delete, r3),
            ("/p/gone".to_string(), ChangeKind::Delete, r3),
        ]
    );
    assert!(matches!(
        block_on(b.snapshot(b"/p/", Some(r3.next()))),
        Err(BackendError::Refused { .. })
    ));
}

#[test]
fn a_refused_or_failed_write_changes_nothing() {
    let b = MemoryBackend::new();
    let r = commit(&b, vec![put("/p/y", "y")]);
    let failed = vec![
        put("/p/x", "x"),
        WriteOp::Put {
            key: Key::from("/p/y"),
            value: b"y2".to_vec(),
            expect: Precondition::Absent,
        },
    ];
    assert_eq!(
        block_on(b.write(&failed)).expect("write"),
        TxnOutcome::PreconditionFailed
    );
    let twice = vec![put("/p/z", "1"), delete("/p/z")];
    assert!(matches!(
        block_on(b.write(&twice)),
        Err(BackendError::Refused { .. })
    ));
    let too_many: Vec<_> = (0..=LIMITS.max_ops)
        .map(|i| put(&format!("/p/n{i}"), "v"))
        .collect();
    assert!(matches!(
        block_on(b.write(&too_many)),
        Err(BackendError::TooLarge { .. })
    ));
    // Deleting what is absent writes nothing, so the revision does not move.
    assert_eq!(commit(&b, vec![delete("/p/absent")]), r);
    assert_eq!(block_on(b.current_revision()).expect("revision"), r);
    assert_eq!(
        block_on(b.snapshot(b"/p/", None))
            .expect("snapshot")
            .entries
            .len(),
        1
    );
}

#[test]
fn a_quiet_watch_reports_one_progress_for_many_commits() {
    let b = MemoryBackend::new();
    let start = block_on(b.current_revision()).expect("revision");
    let mut s = block_on(b.watch(b"/quiet/", start.next())).expect("watch");
    assert_eq!(next_event(&mut s), WatchEvent::Progress { revision: start });
    assert!(
        ready_item(&mut s).is_none(),
        "nothing more until the store changes"
    );
    let mut last = start;
    for i in 0..5 {
        last = commit(&b, vec![put(&format!("/noise/{i}"), "x")]);
    }
    assert_eq!(next_event(&mut s), WatchEvent::Progress { revision: last });
    assert!(ready_item(&mut s).is_none());

    let r = commit(&b, vec![put("/quiet/k", "v")]);
    assert!(matches!(next_event(&mut s), WatchEvent::Changes { revision, .. } if revision == r));
    assert_eq!(next_event(&mut s), WatchEvent::Progress { revision: r });
}

#[test]
fn an_outage_fails_calls_and_ends_watches_with_an_error() {
    let b = MemoryBackend::new();
    let mut s = block_on(b.watch(b"/p/", Revision(0))).expect("watch");
    assert!(matches!(next_event(&mut s), WatchEvent::Progress { .. }));
    b.set_unavailable(true);
    match ready_item(&mut s) {
        Some(Some(Err(e))) => assert!(e.is_retryable(), "{e}"),
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(
        matches!(ready_item(&mut s), Some(None)),
        "ends after the error"
    );
    let err = block_on(b.snapshot(b"/p/", None)).expect_err("down");
    assert!(err.is_retryable(), "{err}");
    assert!(block_on(b.write(&[put("/p/k", "v")])).is_err());
    b.set_unavailable(false);
    commit(&b, vec![put("/p/k", "v")]);
}

#[test]
fn dropping_the_backend_ends_its_watches_with_an_error() {
    let b = MemoryBackend::new();
    let s = block_on(b.watch(b"/p/", Revision(0))).expect("watch");
    drop(b);
    let rest: Vec<_> = block_on(s.collect::<Vec<_>>());
    assert!(
        matches!(rest.as_slice(), [Err(e)] if e.is_retryable()),
        "{rest:?}"
    );
}

#[test]
fn every_store_has_its_own_cluster_id() {
    let (a, b) = (MemoryBackend::new(), MemoryBackend::new());
    let id = block_on(a.cluster_id()).expect("id");
    assert_eq!(
        block_on(a.clone().cluster_id()).expect("id"),
        id,
        "clones share the store"
    );
    assert_ne!(block_on(b.cluster_id()).expect("id"), id);
    assert_eq!(a.kind(), "memory");
}

#[test]
fn a_watch_opened_ahead_of_the_store_skips_earlier_changes() {
    let b = MemoryBackend::new();
    let now = block_on(b.current_revision()).expect("revision");
    let from = Revision(now.0 + 2);
    let mut s = block_on(b.watch(b"/p/", from)).expect("watch");
    assert_eq!(next_event(&mut s), WatchEvent::Progress { revision: now });
    let early = commit(&b, vec![put("/p/k", "early")]);
    assert_eq!(next_event(&mut s), WatchEvent::Progress { revision: early });
    let r = commit(&b, vec![put("/p/k", "at from")]);
    assert_eq!(r, from);
    assert!(matches!(next_event(&mut s), WatchEvent::Changes { revision, .. } if revision == from));
}

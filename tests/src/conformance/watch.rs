//! Conformance cases for watches: replay from a revision, bulk replay, progress on a quiet
//! prefix, compaction, and a server that goes away.

use super::support::{commit, contents, key, next_item, put, put_change, WatchLog};
use super::CompactFn;
use sync_core::{
    BackendError, ChangeKind, KvBackend, KvChange, Precondition, ResyncReason, Revision,
    WatchEvent, WriteOp,
};

/// A watch replaying more data than one response may carry (big values, many keys) delivers
/// every change in order; large responses are split and reassembled, not refused.
pub async fn watch_replays_bulk(b: &dyn KvBackend, prefix: &[u8], keys: usize, value_len: usize) {
    let limits = b.write_limits();
    let per_txn = limits
        .max_ops
        .min(limits.max_bytes / (value_len + 64))
        .max(1);
    // Without history a watch replays from a snapshot's revision, not from an old one.
    let before = match b.keeps_history() {
        true => None,
        false => Some(b.snapshot(prefix, None).await.expect("snapshot").revision),
    };
    let mut first = None;
    let mut last = Revision(0);
    let mut ops = Vec::new();
    for i in 0..keys {
        ops.push(put(
            key(prefix, format!("k{i:07}")),
            vec![(i % 251) as u8; value_len],
        ));
        if ops.len() == per_txn || i + 1 == keys {
            last = commit(b, std::mem::take(&mut ops)).await;
            first.get_or_insert(last);
        }
    }
    let first = first.expect("at least one key");
    let from = before.map_or(first, Revision::next);
    let mut stream = b.watch(prefix, from).await.expect("watch");
    let mut log = WatchLog::default();
    let mut seen = 0;
    while seen < keys {
        let (_, changes) = log
            .next_changes(&mut stream, &format!("change {seen} of {keys}"))
            .await;
        for c in changes {
            let want = key(prefix, format!("k{seen:07}"));
            assert_eq!(c.key, want, "changes out of order");
            assert_eq!(
                c.kind,
                ChangeKind::Put(vec![(seen % 251) as u8; value_len]),
                "value of {want}"
            );
            seen += 1;
        }
    }
    log.progress_at_least(&mut stream, last).await;
    drop(stream);
    // The same data as a snapshot: pages shrink to what the client accepts.
    let got = contents(b, prefix, None).await;
    assert_eq!(got.len(), keys, "snapshot of the bulk prefix");
}

/// A watch from an older revision replays puts and deletes in order, one event per txn, then
/// reports progress, then delivers live changes; neighbours of the prefix stay out.
pub async fn watch_from_revision(b: &dyn KvBackend, prefix_root: &str, case: &str) {
    let prefix = format!("{prefix_root}/{case}/").into_bytes();
    let neighbour = format!("{prefix_root}/{case}-sibling/").into_bytes();
    if !b.keeps_history() {
        let old = commit(b, vec![put(key(&prefix, "a"), "0")]).await;
        commit(b, vec![put(key(&neighbour, "x"), "not mine")]).await;
        watch_after_snapshot(b, &prefix, &neighbour, old).await;
        return;
    }
    let (a, bk, bin) = (
        key(&prefix, "a"),
        key(&prefix, "b"),
        key(&prefix, [0xff, 0x00]),
    );
    let r1 = commit(b, vec![put(a.clone(), "1"), put(bk.clone(), "2")]).await;
    let r2 = commit(
        b,
        vec![WriteOp::Delete {
            key: a.clone(),
            expect: Precondition::Any,
        }],
    )
    .await;
    commit(b, vec![put(key(&neighbour, "x"), "not mine")]).await;
    let r3 = commit(
        b,
        vec![put(bin.clone(), vec![0x80, 0x00]), put(a.clone(), "")],
    )
    .await;
    let settled = commit(b, vec![put(key(&neighbour, "y"), "not mine")]).await;

    let mut stream = b.watch(&prefix, r1).await.expect("watch");
    let mut log = WatchLog::default();
    let (rev, changes) = log.next_changes(&mut stream, "changes of r1").await;
    assert_eq!(
        (rev, changes),
        (
            r1,
            vec![put_change(&a, b"1", r1), put_change(&bk, b"2", r1)]
        )
    );
    let (rev, changes) = log.next_changes(&mut stream, "changes of r2").await;
    assert_eq!(
        (rev, changes),
        (
            r2,
            vec![KvChange {
                key: a.clone(),
                kind: ChangeKind::Delete,
                revision: r2
            }]
        )
    );
    let (rev, changes) = log.next_changes(&mut stream, "changes of r3").await;
    assert_eq!(
        (rev, changes),
        (
            r3,
            vec![put_change(&bin, &[0x80, 0x00], r3), put_change(&a, b"", r3)]
        )
    );
    log.progress_at_least(&mut stream, settled).await;

    let r4 = commit(b, vec![put(bk.clone(), "live")]).await;
    let (rev, changes) = log.next_changes(&mut stream, "live change r4").await;
    assert_eq!((rev, changes), (r4, vec![put_change(&bk, b"live", r4)]));
}

/// The same promises without history: a watch from a revision the backend cannot replay
/// yields `ResyncNeeded` and ends; a watch from just after a snapshot delivers every later
/// change exactly (deletes included, one event per transaction, neighbours out), progress,
/// and live changes.
async fn watch_after_snapshot(b: &dyn KvBackend, prefix: &[u8], neighbour: &[u8], old: Revision) {
    let mut stream = b
        .watch(prefix, old)
        .await
        .expect("watch from an old revision");
    match next_item(&mut stream, "ResyncNeeded").await {
        Some(Ok(WatchEvent::ResyncNeeded(ResyncReason::Compacted { compact_revision }))) => {
            assert!(compact_revision > old, "{compact_revision} <= {old}");
        }
        other => panic!("watch from {old} without history: expected ResyncNeeded, got {other:?}"),
    }
    assert!(
        next_item(&mut stream, "end of stream").await.is_none(),
        "the stream ends after ResyncNeeded"
    );
    drop(stream);

    let (a, bk, odd) = (
        key(prefix, "a"),
        key(prefix, "b"),
        key(prefix, "\u{ff}\u{0}"),
    );
    let snap = b.snapshot(prefix, None).await.expect("snapshot");
    let had: Vec<_> = snap.entries.iter().map(|e| e.key.clone()).collect();
    let mut stream = b.watch(prefix, snap.revision.next()).await.expect("watch");
    let mut log = WatchLog::default();
    log.progress_at_least(&mut stream, snap.revision).await;
    // Each write is awaited before the next: a backend that lists (Consul) sees every one.
    let r4 = commit(b, vec![put(a.clone(), "1"), put(bk.clone(), "2")]).await;
    let (rev, changes) = log.next_changes(&mut stream, "changes of r4").await;
    assert_eq!(
        (rev, changes),
        (
            r4,
            vec![put_change(&a, b"1", r4), put_change(&bk, b"2", r4)]
        )
    );
    let r5 = commit(
        b,
        vec![WriteOp::Delete {
            key: a.clone(),
            expect: Precondition::Any,
        }],
    )
    .await;
    let (rev, changes) = log.next_changes(&mut stream, "delete of r5").await;
    assert_eq!(
        (rev, changes),
        (
            r5,
            vec![KvChange {
                key: a.clone(),
                kind: ChangeKind::Delete,
                revision: r5
            }]
        )
    );
    let settled = commit(b, vec![put(key(neighbour, "z"), "not mine")]).await;
    log.progress_at_least(&mut stream, settled).await;
    let r6 = commit(
        b,
        vec![put(odd.clone(), vec![0x80, 0x00]), put(a.clone(), "")],
    )
    .await;
    let (rev, mut changes) = log.next_changes(&mut stream, "changes of r6").await;
    changes.sort_by(|x, y| x.key.cmp(&y.key));
    assert_eq!(
        (rev, changes),
        (
            r6,
            vec![put_change(&a, b"", r6), put_change(&odd, &[0x80, 0x00], r6)]
        )
    );
    let keys: Vec<_> = contents(b, prefix, None).await.into_keys().collect();
    let mut want = had;
    want.extend([a, bk, odd]);
    want.sort();
    want.dedup();
    assert_eq!(keys, want);
}

/// A watch on a prefix where nothing happens still reports progress, so checkpoints advance.
pub async fn watch_quiet_prefix_progress(b: &dyn KvBackend, quiet: &[u8], noise: &[u8]) {
    // Without history a watch starts from a snapshot's revision.
    let before = match b.keeps_history() {
        true => None,
        false => Some(b.snapshot(quiet, None).await.expect("snapshot").revision),
    };
    let from = commit(b, vec![put(key(noise, "1"), "x")]).await;
    let current = commit(b, vec![put(key(noise, "2"), "x")]).await;
    let from = before.map_or(from, Revision::next);
    let mut stream = b.watch(quiet, from).await.expect("watch");
    let mut log = WatchLog::default();
    log.progress_at_least(&mut stream, current).await;
    let later = commit(b, vec![put(key(noise, "3"), "x")]).await;
    log.progress_at_least(&mut stream, later).await;
}

/// After compaction: a snapshot at a compacted revision is `Compacted`; a watch from it
/// yields `ResyncNeeded(Compacted)` first and then ends.
pub async fn compaction(b: &dyn KvBackend, prefix: &[u8], compact: CompactFn) {
    let k = key(prefix, "k");
    let r1 = commit(b, vec![put(k.clone(), "1")]).await;
    commit(b, vec![put(k.clone(), "2")]).await;
    let r3 = commit(b, vec![put(k.clone(), "3")]).await;
    compact(r3).await;
    match b.snapshot(prefix, Some(r1)).await {
        Err(BackendError::Compacted {
            requested,
            compact_revision,
            ..
        }) => {
            assert_eq!(requested, r1);
            assert!(
                compact_revision > r1,
                "oldest kept {compact_revision} must be above {r1}"
            );
        }
        other => panic!("snapshot at compacted {r1}: expected Compacted, got {other:?}"),
    }
    let mut stream = b
        .watch(prefix, r1)
        .await
        .expect("watch from a compacted revision is not an Err");
    match next_item(&mut stream, "ResyncNeeded").await {
        Some(Ok(WatchEvent::ResyncNeeded(ResyncReason::Compacted { compact_revision }))) => {
            assert!(
                compact_revision > r1,
                "compact revision {compact_revision} must be above {r1}"
            );
        }
        other => {
            panic!("watch from compacted {r1}: expected ResyncNeeded(Compacted), got {other:?}")
        }
    }
    assert!(
        next_item(&mut stream, "end of stream").await.is_none(),
        "the stream ends after ResyncNeeded"
    );
    let now = contents(b, prefix, None).await;
    assert_eq!(
        now.get(&k),
        Some(&(b"3".to_vec(), r3)),
        "current state survives compaction"
    );
}

/// With the server gone, reads fail and an open watch reports an error: never an empty
/// result, never a silent end. `stop` must stop the server the backend talks to.
pub async fn server_gone_is_an_error(b: &dyn KvBackend, prefix: &[u8], stop: impl FnOnce()) {
    commit(b, vec![put(key(prefix, "k"), "v")]).await;
    let from = b.current_revision().await.expect("current_revision");
    let mut stream = b.watch(prefix, from.next()).await.expect("watch");
    stop();
    match b.snapshot(prefix, None).await {
        Err(e) => assert!(e.is_retryable(), "a stopped server is retryable, got {e}"),
        Ok(snap) => panic!(
            "snapshot on a stopped server returned {} entries",
            snap.entries.len()
        ),
    }
    loop {
        match next_item(&mut stream, "a watch error").await {
            Some(Err(e)) => {
                assert!(e.is_retryable(), "a stopped server is retryable, got {e}");
                break;
            }
            Some(Ok(WatchEvent::Progress { .. })) => {}
            Some(Ok(other)) => panic!("watch on a stopped server yielded {other:?}"),
            None => panic!("watch ended silently when the server stopped"),
        }
    }
    assert!(
        b.write(&[put(key(prefix, "k2"), "v")]).await.is_err(),
        "write on a stopped server"
    );
}

//! Conformance cases for reads and writes: identity, paged and pinned snapshots, raw bytes,
//! compare-and-swap, atomicity, size limits and exact deletes.

use super::support::{commit, contents, key, put, put_change, WatchLog};
use futures::{StreamExt, TryStreamExt};
use std::collections::BTreeMap;
use sync_core::{
    BackendError, Key, KvBackend, KvEntry, Precondition, Revision, Snapshot, TxnOutcome, WriteOp,
};

/// Cluster id is stable and non-empty; the current revision covers the last commit.
pub async fn identity(b: &dyn KvBackend, prefix: &[u8]) {
    let id = b.cluster_id().await.expect("cluster_id");
    assert!(!id.0.is_empty(), "empty cluster id");
    assert_eq!(
        b.cluster_id().await.expect("cluster_id again"),
        id,
        "cluster id changed"
    );
    let r = commit(b, vec![put(key(prefix, "k"), "v")]).await;
    let current = b.current_revision().await.expect("current_revision");
    assert!(current >= r, "current revision {current} below commit {r}");
}

/// `n` keys written in full-size transactions read back exactly (the read must page).
pub async fn snapshot_pages(b: &dyn KvBackend, prefix: &[u8], n: usize) {
    let limits = b.write_limits();
    let mut expected = BTreeMap::new();
    let mut ops = Vec::new();
    let mut last = Revision(0);
    for i in 0..n {
        let k = key(prefix, format!("k{i:07}"));
        ops.push(put(k, format!("value-{i}")));
        if ops.len() == limits.max_ops || i + 1 == n {
            let batch = std::mem::take(&mut ops);
            last = commit(b, batch.clone()).await;
            for op in batch {
                if let WriteOp::Put { key, value, .. } = op {
                    expected.insert(key, (value, last));
                }
            }
        }
    }
    let snap = b.snapshot(prefix, None).await.expect("snapshot");
    assert!(
        snap.revision >= last,
        "snapshot revision {} below last write {last}",
        snap.revision
    );
    assert_eq!(
        snap.entries.len(),
        n,
        "snapshot holds {} of {n} keys",
        snap.entries.len()
    );
    let got: BTreeMap<_, _> = snap
        .entries
        .iter()
        .map(|e| (e.key.clone(), (e.value.clone(), e.mod_revision)))
        .collect();
    for ((k, want), (gk, have)) in expected.iter().zip(got.iter()) {
        assert_eq!(k, gk, "keys differ");
        assert_eq!(want, have, "value or mod revision of {k} differs");
    }

    let pages = all_pages(b, prefix, None, "snapshot_pages").await;
    eprintln!("conformance: {n} keys came in {} pages", pages.len());
    let paged = joined_pages(pages, "snapshot_pages");
    assert_eq!(
        paged.revision, snap.revision,
        "snapshot_pages is at revision {}, the snapshot before it at {} (nothing was written \
         in between)",
        paged.revision, snap.revision
    );
    if let Some(diff) = first_difference(&paged.entries, &snap.entries) {
        panic!("snapshot_pages differs from snapshot: {diff}");
    }
    let empty = all_pages(
        b,
        &key(prefix, "empty/").0,
        None,
        "snapshot_pages of a prefix with no keys",
    )
    .await;
    assert_eq!(
        empty.len(),
        1,
        "a prefix with no keys gave {} pages, not one empty page",
        empty.len()
    );
    assert!(
        empty[0].entries.is_empty(),
        "a prefix with no keys gave a page of {} entries, the first {}",
        empty[0].entries.len(),
        empty[0].entries[0].key
    );
    assert!(
        empty[0].revision >= last,
        "the empty page's revision {} is below the last write {last}",
        empty[0].revision
    );
    pages_ignore_writes_made_while_reading(b, prefix, n, &snap, &mut expected).await;

    // Writes while the snapshot pages through the prefix must not leak into it: every page is
    // read at the first page's revision.
    let writer = async {
        for i in 0..20 {
            let doomed = key(prefix, format!("k{:07}", n - 1 - i));
            let ops = vec![
                put(key(prefix, format!("z-late-{i}")), "late"),
                WriteOp::Delete {
                    key: doomed,
                    expect: Precondition::Any,
                },
            ];
            commit(b, ops).await;
        }
    };
    let (during, ()) = futures::join!(b.snapshot(prefix, None), writer);
    let during = during.expect("snapshot during writes");
    if !b.keeps_history() {
        // No older state to compare with: the snapshot must be one of the 21 states the
        // writer went through, never a mix of two.
        let late = during
            .entries
            .iter()
            .filter(|e| e.key.as_bytes().starts_with(&key(prefix, "z-late-").0))
            .count();
        let mut want = expected;
        for i in 0..late {
            want.remove(&key(prefix, format!("k{:07}", n - 1 - i)));
        }
        let got: BTreeMap<_, _> = during
            .entries
            .iter()
            .filter(|e| !e.key.as_bytes().starts_with(&key(prefix, "z-late-").0))
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect();
        let want: BTreeMap<_, _> = want.into_iter().map(|(k, (v, _))| (k, v)).collect();
        assert!(
            got == want,
            "a snapshot read while writing holds {late} late keys but not the state after \
             {late} writes (revision {})",
            during.revision
        );
        for i in 0..late {
            assert!(
                during
                    .entries
                    .iter()
                    .any(|e| e.key == key(prefix, format!("z-late-{i}"))),
                "late write {i} missing although {late} are in the snapshot"
            );
        }
        return;
    }
    let pinned = b
        .snapshot(prefix, Some(during.revision))
        .await
        .expect("snapshot at its revision");
    assert!(
        during.entries == pinned.entries,
        "a snapshot read while writing differs from the state at its revision {}",
        during.revision
    );
}

/// Writes made while pages are being read do not show in the later pages: the stream is the
/// state at its first page's revision. Keeps `expected` the model of the prefix for what follows.
async fn pages_ignore_writes_made_while_reading(
    b: &dyn KvBackend,
    prefix: &[u8],
    n: usize,
    before: &Snapshot,
    expected: &mut BTreeMap<Key, (Vec<u8>, Revision)>,
) {
    let what = "snapshot_pages read while writing";
    let mut stream = b
        .snapshot_pages(prefix, None)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let first = stream
        .next()
        .await
        .unwrap_or_else(|| panic!("{what}: the stream ended before a first page"))
        .unwrap_or_else(|e| panic!("{what}: first page: {e}"));
    // Both far past a backend's first page (etcd: 10k keys), clear of the keys the
    // writer below deletes.
    let doomed = key(prefix, format!("k{:07}", n - 100));
    let new = key(prefix, format!("k{:07}+new", n - 100));
    let written = commit(
        b,
        vec![
            put(new.clone(), "new"),
            WriteOp::Delete {
                key: doomed.clone(),
                expect: Precondition::Any,
            },
        ],
    )
    .await;
    let mut pages = vec![first];
    while let Some(page) = stream.next().await {
        pages.push(page.unwrap_or_else(|e| panic!("{what}: page {}: {e}", pages.len())));
    }
    let read = joined_pages(pages, what);
    assert!(
        read.revision < written,
        "{what}: pages at revision {}, not before the write at {written} made after the first",
        read.revision
    );
    // Nothing was written between `before` and the first page, so `before` is the state at
    // their revision, read without paging: a reference the pages cannot share a bug with.
    assert_eq!(
        read.revision, before.revision,
        "{what}: pages at revision {}, the snapshot before them at {}",
        read.revision, before.revision
    );
    let mut references = vec![("the snapshot read before them", before.clone())];
    if b.keeps_history() {
        let at = b
            .snapshot(prefix, Some(read.revision))
            .await
            .unwrap_or_else(|e| panic!("snapshot at {}: {e}", read.revision));
        references.push(("the snapshot at their revision", at));
    }
    for (name, want) in references {
        if let Some(diff) = first_difference(&read.entries, &want.entries) {
            panic!(
                "{what} ({new} put, {doomed} deleted after the first page) differ from {name} \
                 (revision {}): {diff}",
                want.revision
            );
        }
    }
    let now = contents(b, prefix, None).await;
    let state = |k: &Key| match now.contains_key(k) {
        true => "present",
        false => "absent",
    };
    assert!(
        now.contains_key(&new) && !now.contains_key(&doomed),
        "the writes made while reading pages did not land: afterwards {new} is {} and {doomed} \
         is {}",
        state(&new),
        state(&doomed)
    );
    expected.remove(&doomed);
    expected.insert(new, (b"new".to_vec(), written));
}

/// Every page of `snapshot_pages`, each one checked as it comes.
async fn all_pages(
    b: &dyn KvBackend,
    prefix: &[u8],
    at: Option<Revision>,
    what: &str,
) -> Vec<Snapshot> {
    let stream = b
        .snapshot_pages(prefix, at)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    stream
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("{what}: a later page: {e}"))
}

/// The pages as one snapshot, after checking what a page stream promises: at least one page,
/// one revision for all, keys sorted within a page and every page after the one before.
fn joined_pages(pages: Vec<Snapshot>, what: &str) -> Snapshot {
    let Some(revision) = pages.first().map(|p| p.revision) else {
        panic!("{what}: no page at all (a prefix with no keys is one empty page)");
    };
    let mut entries: Vec<KvEntry> = Vec::new();
    for (i, page) in pages.into_iter().enumerate() {
        assert_eq!(
            page.revision, revision,
            "{what}: page {i} is at revision {}, page 0 at {revision}",
            page.revision
        );
        if let Some(j) = page.entries.windows(2).position(|w| w[0].key >= w[1].key) {
            panic!(
                "{what}: page {i} is not sorted: {} comes before {}",
                page.entries[j].key,
                page.entries[j + 1].key
            );
        }
        if let (Some(prev), Some(head)) = (entries.last(), page.entries.first()) {
            assert!(
                head.key > prev.key,
                "{what}: page {i} starts at {}, not after the previous page's last key {}",
                head.key,
                prev.key
            );
        }
        entries.extend(page.entries);
    }
    Snapshot { revision, entries }
}

/// Where two listings first differ, in words; `None` when they are equal.
fn first_difference(got: &[KvEntry], want: &[KvEntry]) -> Option<String> {
    let describe = |e: Option<&KvEntry>| match e {
        Some(e) => format!(
            "{} = {:?} ({} bytes) at mod revision {}",
            e.key,
            String::from_utf8_lossy(&e.value[..e.value.len().min(40)]),
            e.value.len(),
            e.mod_revision
        ),
        None => "nothing".to_owned(),
    };
    let i = (0..got.len().max(want.len())).find(|&i| got.get(i) != want.get(i))?;
    Some(format!(
        "{} entries where {} were expected; entry {i} is {}, expected {}",
        got.len(),
        want.len(),
        describe(got.get(i)),
        describe(want.get(i))
    ))
}

/// A snapshot at an older revision shows that revision's state, not today's.
pub async fn snapshot_at_older_revision(b: &dyn KvBackend, prefix: &[u8]) {
    let (a, c) = (key(prefix, "a"), key(prefix, "c"));
    let r1 = commit(b, vec![put(a.clone(), "1"), put(c.clone(), "c")]).await;
    let r2 = commit(b, vec![put(a.clone(), "2"), put(key(prefix, "b"), "new")]).await;
    commit(
        b,
        vec![WriteOp::Delete {
            key: c.clone(),
            expect: Precondition::Any,
        }],
    )
    .await;
    if !b.keeps_history() {
        no_history_snapshots(b, prefix, r1, (&a, r2)).await;
        return;
    }
    let old = b.snapshot(prefix, Some(r1)).await.expect("snapshot at r1");
    assert_eq!(
        old.revision, r1,
        "snapshot at r1 reports revision {}",
        old.revision
    );
    let old: BTreeMap<_, _> = old
        .entries
        .into_iter()
        .map(|e| (e.key, (e.value, e.mod_revision)))
        .collect();
    let want: BTreeMap<_, _> = [(a.clone(), (b"1".to_vec(), r1)), (c, (b"c".to_vec(), r1))].into();
    assert_eq!(old, want, "state at r1");
    let now = contents(b, prefix, None).await;
    assert_eq!(now.get(&a), Some(&(b"2".to_vec(), r2)));
    assert_eq!(now.len(), 2, "a and b now, c deleted: {now:?}");
}

/// Without history: an older revision is `Compacted`; the current state reads back at the
/// revision a snapshot reported, for as long as the prefix does not change.
async fn no_history_snapshots(b: &dyn KvBackend, prefix: &[u8], r1: Revision, a: (&Key, Revision)) {
    match b.snapshot(prefix, Some(r1)).await {
        Err(BackendError::Compacted {
            requested,
            compact_revision,
            ..
        }) => {
            assert_eq!(requested, r1);
            assert!(
                compact_revision > r1,
                "oldest kept {compact_revision} <= {r1}"
            );
        }
        other => {
            panic!("snapshot at older {r1} without history: expected Compacted, got {other:?}")
        }
    }
    let now = b.snapshot(prefix, None).await.expect("snapshot");
    let again = b
        .snapshot(prefix, Some(now.revision))
        .await
        .expect("snapshot at the revision just read");
    assert_eq!(again.revision, now.revision);
    assert!(
        again.entries == now.entries,
        "same state at the same revision"
    );
    let got = contents(b, prefix, None).await;
    assert_eq!(got.get(a.0), Some(&(b"2".to_vec(), a.1)));
    assert_eq!(got.len(), 2, "a and b now, c deleted: {got:?}");
}

/// Keys and values are bytes: non-UTF-8, NUL and 0xff survive; an empty value is a value.
/// A key the backend cannot store (`check_key`: Consul needs UTF-8) is refused by name,
/// before anything is written.
pub async fn binary_keys_and_values(b: &dyn KvBackend, prefix: &[u8]) {
    let entries: Vec<(Key, Vec<u8>)> = vec![
        (
            key(prefix, [0xff, 0xfe, 0x00, 0x80]),
            vec![0x00, 0xc3, 0x28, 0xff],
        ),
        (key(prefix, [0x00]), b"nul key".to_vec()),
        (key(prefix, "empty"), Vec::new()),
        (
            key(prefix, "caf\u{e9}/\u{1f600}"),
            "utf-8 too \u{2713}".as_bytes().to_vec(),
        ),
    ];
    let (entries, refused): (Vec<_>, Vec<_>) = entries
        .into_iter()
        .partition(|(k, _)| b.check_key(k).is_ok());
    for (k, v) in &refused {
        match b.check_key(k) {
            Err(BackendError::Refused { detail, .. }) => {
                assert!(
                    detail.contains(&k.to_string()),
                    "{detail} does not name {k}"
                )
            }
            other => panic!("check_key({k}): expected Refused, got {other:?}"),
        }
        let ops = vec![put(key(prefix, "fine"), "x"), put(k.clone(), v.clone())];
        match b.write(&ops).await {
            Err(BackendError::Refused { detail, .. }) => {
                assert!(
                    detail.contains(&k.to_string()),
                    "{detail} does not name {k}"
                )
            }
            other => panic!("write of refused key {k}: expected Refused, got {other:?}"),
        }
    }
    let r = commit(
        b,
        entries
            .iter()
            .map(|(k, v)| put(k.clone(), v.clone()))
            .collect(),
    )
    .await;
    let got = contents(b, prefix, None).await;
    let want: BTreeMap<_, _> = entries.into_iter().map(|(k, v)| (k, (v, r))).collect();
    assert_eq!(got, want);
}

/// Absent fails when present; ModRevision fails when stale, succeeds when current.
pub async fn cas(b: &dyn KvBackend, prefix: &[u8]) {
    let k = key(prefix, "k");
    let absent = |v: &str| WriteOp::Put {
        key: k.clone(),
        value: v.into(),
        expect: Precondition::Absent,
    };
    let at = |r, v: &str| WriteOp::Put {
        key: k.clone(),
        value: v.into(),
        expect: Precondition::ModRevision(r),
    };
    let r1 = commit(b, vec![absent("1")]).await;
    let failed = b.write(&[absent("2")]).await.expect("write");
    assert_eq!(
        failed,
        TxnOutcome::PreconditionFailed,
        "Absent on an existing key"
    );
    let r2 = commit(b, vec![at(r1, "2")]).await;
    assert!(r2 > r1);
    let stale = b.write(&[at(r1, "3")]).await.expect("write");
    assert_eq!(
        stale,
        TxnOutcome::PreconditionFailed,
        "ModRevision with a stale revision"
    );
    let del_stale = WriteOp::Delete {
        key: k.clone(),
        expect: Precondition::ModRevision(r1),
    };
    assert_eq!(
        b.write(&[del_stale]).await.expect("write"),
        TxnOutcome::PreconditionFailed
    );
    let got = contents(b, prefix, None).await;
    assert_eq!(
        got.get(&k),
        Some(&(b"2".to_vec(), r2)),
        "failed writes changed nothing"
    );
    let missing = WriteOp::Put {
        key: key(prefix, "missing"),
        value: vec![],
        expect: Precondition::ModRevision(r2),
    };
    assert_eq!(
        b.write(&[missing]).await.expect("write"),
        TxnOutcome::PreconditionFailed,
        "ModRevision on a missing key"
    );
    let del = WriteOp::Delete {
        key: k.clone(),
        expect: Precondition::ModRevision(r2),
    };
    commit(b, vec![del]).await;
    let r4 = commit(b, vec![absent("again")]).await;
    assert_eq!(
        contents(b, prefix, None).await.get(&k),
        Some(&(b"again".to_vec(), r4))
    );
}

/// When one precondition fails, none of the transaction's ops is applied.
pub async fn failed_txn_applies_nothing(b: &dyn KvBackend, prefix: &[u8]) {
    let (x, y, z) = (key(prefix, "x"), key(prefix, "y"), key(prefix, "z"));
    let r = commit(b, vec![put(y.clone(), "y"), put(z.clone(), "z")]).await;
    let ops = vec![
        put(x.clone(), "x"),
        WriteOp::Delete {
            key: z.clone(),
            expect: Precondition::Any,
        },
        WriteOp::Put {
            key: y.clone(),
            value: b"y2".to_vec(),
            expect: Precondition::Absent,
        },
    ];
    assert_eq!(
        b.write(&ops).await.expect("write"),
        TxnOutcome::PreconditionFailed
    );
    let want: BTreeMap<_, _> = [(y, (b"y".to_vec(), r)), (z, (b"z".to_vec(), r))].into();
    assert_eq!(
        contents(b, prefix, None).await,
        want,
        "nothing of the failed txn applied"
    );
}

/// A run of new keys (`Absent` then `AbsentInRun`) is written when none exists, and a run
/// one of whose keys exists fails as a whole, as `Absent` on each key would.
pub async fn absent_runs(b: &dyn KvBackend, prefix: &[u8]) {
    let new = |k: &str, expect: Precondition| WriteOp::Put {
        key: key(prefix, k),
        value: k.as_bytes().to_vec(),
        expect,
    };
    let r = commit(
        b,
        vec![
            new("a", Precondition::Absent),
            new("b", Precondition::AbsentInRun),
            new("c", Precondition::AbsentInRun),
        ],
    )
    .await;
    let ops = vec![
        new("d", Precondition::Absent),
        new("e", Precondition::AbsentInRun),
        new("c", Precondition::AbsentInRun),
    ];
    assert_eq!(
        b.write(&ops).await.expect("write"),
        TxnOutcome::PreconditionFailed,
        "a run over an existing key fails"
    );
    let want: BTreeMap<_, _> = ["a", "b", "c"]
        .into_iter()
        .map(|k| (key(prefix, k), (k.as_bytes().to_vec(), r)))
        .collect();
    assert_eq!(
        contents(b, prefix, None).await,
        want,
        "only the first run written"
    );
}

/// `changes_between` after a snapshot answers exactly with each changed key's last state:
/// a deleted key as a delete, a key deleted and written again as its new value, keys left
/// alone not at all. This is how an export and a catch-up read what changed, deletes included.
pub async fn changes_between_is_exact(b: &dyn KvBackend, prefix: &[u8]) {
    let k = |n: &str| key(prefix, n);
    let del = |n: &str| WriteOp::Delete {
        key: k(n),
        expect: Precondition::Any,
    };
    let names = ["a", "b", "c", "e", "same"];
    commit(b, names.iter().map(|n| put(k(n), *n)).collect()).await;
    let from = b.snapshot(prefix, None).await.expect("snapshot").revision;
    commit(b, vec![del("a"), put(k("b"), "b2")]).await;
    commit(b, vec![del("c")]).await;
    commit(b, vec![put(k("c"), "c2"), put(k("d"), "d")]).await;
    commit(b, vec![del("e")]).await;
    let upto = b.current_revision().await.expect("current revision");
    let list = b
        .changes_between(prefix, from, upto)
        .await
        .expect("changes_between")
        .expect("an exact answer after a snapshot, up to the current revision");
    let got: BTreeMap<Key, Option<Vec<u8>>> = list
        .into_iter()
        .map(|c| (c.key, c.kind.into_value()))
        .collect();
    let want: BTreeMap<Key, Option<Vec<u8>>> = [
        ("a", None),
        ("b", Some("b2")),
        ("c", Some("c2")),
        ("d", Some("d")),
        ("e", None),
    ]
    .into_iter()
    .map(|(n, v)| (k(n), v.map(|v| v.as_bytes().to_vec())))
    .collect();
    assert_eq!(got, want, "changes between {from} and {upto}");
}

/// `get_many` gives exactly the named keys that exist, in key order, each with the value
/// and mod revision a snapshot shows (a key that is a prefix of others gives only itself),
/// across more keys than one transaction holds; `count` counts the prefix.
pub async fn get_many_and_count(b: &dyn KvBackend, prefix: &[u8]) {
    let k = |n: &str| key(prefix, n);
    let names: Vec<String> = (0..300).map(|i| format!("n/{i:04}")).collect();
    let mut ops: Vec<WriteOp> = names.iter().map(|n| put(k(n), n.as_str())).collect();
    ops.extend([put(k("a"), "a"), put(k("ab"), "ab"), put(k("a/b"), "a/b")]);
    for chunk in ops.chunks(b.write_limits().max_ops) {
        commit(b, chunk.to_vec()).await;
    }
    commit(b, vec![put(k("a"), "a2")]).await;
    let live = contents(b, prefix, None).await;
    let mut asked: Vec<Key> = names.iter().map(|n| k(n)).collect();
    asked.extend([k("a"), k("absent"), k("n/9999"), k("n/")]);
    asked.sort();
    let got = b.get_many(&asked).await.expect("get_many");
    let got: Vec<(Key, (Vec<u8>, Revision))> = got
        .into_iter()
        .map(|e| (e.key, (e.value, e.mod_revision)))
        .collect();
    let want: Vec<(Key, (Vec<u8>, Revision))> = asked
        .iter()
        .filter_map(|key| live.get(key).map(|v| (key.clone(), v.clone())))
        .collect();
    assert_eq!(want.len(), 301, "the 300 keys and `a` exist");
    assert_eq!(
        got, want,
        "get_many: the existing keys asked for, in order, as read"
    );
    assert_eq!(
        b.get_many(&[]).await.expect("get_many of nothing"),
        Vec::new()
    );
    assert_eq!(b.count(prefix).await.expect("count"), 303);
    assert_eq!(b.count(&key(prefix, "n/").0).await.expect("count"), 300);
    assert_eq!(b.count(&key(prefix, "none/").0).await.expect("count"), 0);
}

/// Writes over the limits are refused with TooLarge before anything is written.
pub async fn over_limits_is_refused(b: &dyn KvBackend, prefix: &[u8]) {
    let limits = b.write_limits();
    let too_many: Vec<_> = (0..=limits.max_ops)
        .map(|i| put(key(prefix, format!("n{i}")), "v"))
        .collect();
    match b.write(&too_many).await {
        Err(BackendError::TooLarge { ops, .. }) => assert_eq!(ops, limits.max_ops + 1),
        other => panic!("{} ops: expected TooLarge, got {other:?}", too_many.len()),
    }
    let big_value = vec![put(
        key(prefix, "big"),
        vec![7u8; limits.max_value_bytes + 1],
    )];
    assert!(
        matches!(
            b.write(&big_value).await,
            Err(BackendError::TooLarge { .. })
        ),
        "a value over max_value_bytes must be refused"
    );
    let n = limits.max_ops.min(8);
    let each = limits.max_bytes / n + 1;
    let too_big: Vec<_> = (0..n)
        .map(|i| {
            put(
                key(prefix, format!("b{i}")),
                vec![1u8; each.min(limits.max_value_bytes)],
            )
        })
        .collect();
    if too_big.iter().map(WriteOp::payload_len).sum::<usize>() > limits.max_bytes {
        assert!(
            matches!(b.write(&too_big).await, Err(BackendError::TooLarge { .. })),
            "a txn over max_bytes must be refused"
        );
    }
    assert!(
        contents(b, prefix, None).await.is_empty(),
        "nothing of a refused write is stored"
    );
    let at_limit: Vec<_> = (0..limits.max_ops)
        .map(|i| put(key(prefix, format!("n{i}")), "v"))
        .collect();
    commit(b, at_limit).await;
    assert_eq!(contents(b, prefix, None).await.len(), limits.max_ops);
}

/// The largest op `write_limits` admits (`max_value_bytes` of key and value, beyond the
/// batch budget where the backend allows it) is written alone, as apply writes it: created
/// on absence, then replaced under a `mod_revision` compare, and read back byte-identical.
/// One byte more is refused with `TooLarge` by the pre-check, before anything is sent.
pub async fn largest_op_alone_round_trips(b: &dyn KvBackend, prefix: &[u8]) {
    let limits = b.write_limits();
    assert!(
        limits.max_value_bytes >= limits.max_bytes,
        "the single-op limit {} is below the batch budget {}",
        limits.max_value_bytes,
        limits.max_bytes
    );
    let k = key(prefix, "largest");
    let len = limits.max_value_len(&k);
    // Every byte value, in a pattern that does not repeat at power-of-two offsets.
    let first: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let created = commit(
        b,
        vec![WriteOp::Put {
            key: k.clone(),
            value: first.clone(),
            expect: Precondition::Absent,
        }],
    )
    .await;
    let got = contents(b, prefix, None).await;
    assert!(
        got.get(&k) == Some(&(first, created)),
        "a {len}-byte value written alone did not read back byte-identical"
    );
    let second: Vec<u8> = (0..len).map(|i| (i % 253) as u8 ^ 0x5a).collect();
    let replaced = commit(
        b,
        vec![WriteOp::Put {
            key: k.clone(),
            value: second.clone(),
            expect: Precondition::ModRevision(created),
        }],
    )
    .await;
    let got = contents(b, prefix, None).await;
    assert!(
        got.get(&k) == Some(&(second, replaced)),
        "a {len}-byte value replaced under its mod_revision did not read back byte-identical"
    );

    let over = key(prefix, "over");
    let too_big = vec![WriteOp::Put {
        value: vec![9u8; limits.max_value_len(&over) + 1],
        key: over,
        expect: Precondition::Absent,
    }];
    match b.write(&too_big).await {
        // The pre-check's answer: the single-op limit, one byte over it.
        Err(BackendError::TooLarge {
            ops: 1,
            bytes,
            max_bytes,
            ..
        }) if max_bytes == limits.max_value_bytes && bytes == max_bytes + 1 => {}
        other => panic!("one byte over the single-op limit: expected TooLarge, got {other:?}"),
    }
    assert_eq!(
        contents(b, prefix, None).await.len(),
        1,
        "nothing of the refused write is stored"
    );
}

/// Deleting `app` removes exactly that key, not `app-dev`, `app2` or `app/x`.
pub async fn delete_is_exact(b: &dyn KvBackend, prefix: &[u8]) {
    let names = ["app", "app-dev", "app2", "app/x"];
    let r = commit(b, names.iter().map(|n| put(key(prefix, n), *n)).collect()).await;
    commit(
        b,
        vec![WriteOp::Delete {
            key: key(prefix, "app"),
            expect: Precondition::Any,
        }],
    )
    .await;
    let got = contents(b, prefix, None).await;
    let want: BTreeMap<_, _> = names[1..]
        .iter()
        .map(|n| (key(prefix, n), (n.as_bytes().to_vec(), r)))
        .collect();
    assert_eq!(got, want);
}

/// A write probe changes nothing: values and revisions stay, no key appears, and a watch's
/// next change is the write made after it. More keys than one transaction holds are probed.
pub async fn probe_write_changes_nothing(b: &dyn KvBackend, prefix: &[u8]) {
    let (x, y) = (key(prefix, "x"), key(prefix, "y"));
    commit(b, vec![put(x.clone(), "x"), put(y.clone(), "y")]).await;
    let before = contents(b, prefix, None).await;
    let from = b
        .snapshot(prefix, None)
        .await
        .expect("snapshot")
        .revision
        .next();
    let mut stream = b.watch(prefix, from).await.expect("watch");
    let mut keys = vec![x, y];
    keys.extend((0..2 * b.write_limits().max_ops + 1).map(|i| key(prefix, format!("n{i:04}"))));
    b.probe_write(&keys).await.expect("probe_write");
    b.probe_write(&[]).await.expect("probe_write of no keys");
    assert_eq!(
        contents(b, prefix, None).await,
        before,
        "a probe changed values, revisions or keys"
    );
    let marker = key(prefix, "marker");
    let r = commit(b, vec![put(marker.clone(), "m")]).await;
    let (revision, changes) = WatchLog::default()
        .next_changes(&mut stream, "the marker written after the probe")
        .await;
    assert_eq!(
        (revision, changes),
        (r, vec![put_change(&marker, b"m", r)]),
        "the probe must not be seen by a watch"
    );
}

//! Values near etcd's request limit, end to end with the real binary against a real etcd:
//! what `kvgit export` records, `kvgit apply` and `kvgit serve` write back (a value too big
//! for a batch in a transaction of its own), export warns about such values, and a Git file
//! over the single-op limit is refused before any write, naming the file.

use etcd_client::{Client, DeleteOptions, GetOptions};
use kvgit_tests::etcd::EtcdServer;
use kvgit_tests::kvgit::{Area, Workspace};
use kvgit_tests::serve::{diff, etcd_files, poll_until_async, Serve, ServeConfig};
use std::collections::BTreeMap;
use std::time::Duration;

/// Git is the source: a restore is an apply of the exported tree.
const BLOBS: Area<'static> = Area {
    name: "blobs",
    prefix: "/sigil/blobs/",
    path: "blobs",
    mode: "git-to-kv",
};

/// Over etcd's batch budget (1400 KiB), well within what etcd takes in one put.
const LARGE: usize = 1_450_000;

/// `len` bytes of every value 0..=250, so a shifted or truncated copy does not compare equal.
fn bytes(len: usize, salt: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ salt).collect()
}

async fn wipe(c: &mut Client) {
    c.delete(BLOBS.prefix, Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("delete the area's keys");
    assert!(etcd_files(c, BLOBS.prefix).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_value_over_the_batch_budget_is_exported_with_a_warning_and_restored() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[BLOBS]);
    for i in 0..500 {
        let k = format!("{}small/k{i:03}", BLOBS.prefix);
        c.put(k, format!("value-{i}"), None).await.expect("put");
    }
    let large_key = format!("{}large", BLOBS.prefix);
    c.put(large_key.as_str(), bytes(LARGE, 0), None)
        .await
        .expect("etcd takes a 1,450,000-byte value");
    let want = etcd_files(&mut c, BLOBS.prefix).await;
    assert_eq!(want.len(), 501);

    // Export records it, and says that it is near the limit.
    let out = ws.kvgit(&["export"]).ok();
    assert!(out.stdout.contains("blobs: committed"), "{}", out.stdout);
    let warning = out
        .stderr
        .lines()
        .find(|l| l.contains("WARN") && l.contains(&large_key))
        .unwrap_or_else(|| panic!("no warning about {large_key}:\n{}", out.stderr));
    assert!(
        warning.contains("1450000 bytes") && warning.contains("near the backend's limit"),
        "{warning}"
    );
    assert_eq!(
        ws.git_bytes(&["show", "main:blobs/large"]),
        bytes(LARGE, 0),
        "recorded byte-identical"
    );

    // Everything gone from etcd: apply brings back all 501 keys, the large one alone.
    wipe(&mut c).await;
    let out = ws.kvgit(&["apply"]).ok();
    assert!(
        out.stdout.contains("blobs: 501 added"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    let got = etcd_files(&mut c, BLOBS.prefix).await;
    assert!(got == want, "after apply: {}", diff(&got, &want));

    // And so does serve, which becomes ready.
    wipe(&mut c).await;
    let mut serve = Serve::start(&ws, etcd.endpoint(), &ServeConfig::fast(&[BLOBS]));
    serve.wait_ready();
    let restored = poll_until_async(Duration::from_secs(60), || {
        let (mut c, want) = (c.clone(), want.clone());
        async move { etcd_files(&mut c, BLOBS.prefix).await == want }
    })
    .await;
    let got = etcd_files(&mut c, BLOBS.prefix).await;
    assert!(
        restored,
        "serve did not restore the area: {}\n{}",
        diff(&got, &want),
        serve.log_tail(30)
    );
    serve.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_git_file_over_the_single_op_limit_is_refused_before_any_write() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[BLOBS]);
    let small = format!("{}small", BLOBS.prefix);
    c.put(small.as_str(), "v1", None).await.expect("put");
    ws.kvgit(&["export"]).ok();

    // One byte more than etcd takes in a compare-and-swap txn with this key: etcd itself
    // would take it as a plain put, but kvgit could not write it back; a change next to it
    // in the same commit is not written either.
    let huge_key = format!("{}huge", BLOBS.prefix);
    let max = backend_etcd::MAX_SINGLE_OP_BYTES - huge_key.len();
    let huge = bytes(max + 1, 0x5a);
    ws.person_commits(
        &[("blobs/small", Some(b"v2")), ("blobs/huge", Some(&huge))],
        "one too big",
    );
    let out = ws.kvgit(&["apply"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let msg = format!(
        "blobs/huge: the value of key {huge_key} is {} bytes, over the backend's limit of {max} bytes",
        max + 1
    );
    assert!(out.stderr.contains(&msg), "{}", out.stderr);
    let got = etcd_files(&mut c, BLOBS.prefix).await;
    assert_eq!(
        got,
        BTreeMap::from([("small".to_string(), b"v1".to_vec())]),
        "nothing written"
    );

    // At the limit it is written (alone), byte-identical.
    let at_limit = bytes(max, 0x5a);
    ws.person_commits(&[("blobs/huge", Some(&at_limit))], "just fits");
    ws.kvgit(&["apply"]).ok();
    let got = etcd_files(&mut c, BLOBS.prefix).await;
    assert_eq!(got.len(), 2);
    assert!(got["small"] == b"v2", "the small change is written");
    assert!(
        got["huge"] == at_limit,
        "the value at the limit is written byte-identical"
    );
}

/// An apply reads values a window at a time, each window holding at most a few MiB of them:
/// large values git stored as deltas of one another (24 MB in all, several windows) come
/// back byte-identical, in a pack git made.
#[tokio::test(flavor = "multi_thread")]
async fn large_values_git_stored_as_deltas_are_applied_byte_identical_window_by_window() {
    const N: usize = 24;
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[BLOBS]);
    ws.kvgit(&["export"]).ok();
    // Alike but for a marker each, at a place of its own: git stores them as deltas.
    let value = |i: usize| {
        let mut v = bytes(1_000_000, 0);
        v[i * 40_000..i * 40_000 + 8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
        v
    };
    let values: Vec<(String, Vec<u8>)> = (0..N)
        .map(|i| (format!("blobs/v{i:02}"), value(i)))
        .collect();
    let files: Vec<(&str, Option<&[u8]>)> = values
        .iter()
        .map(|(p, v)| (p.as_str(), Some(v.as_slice())))
        .collect();
    ws.person_commits(&files, "large values");
    ws.git(&["repack", "-a", "-d", "-f", "--window=50", "--depth=50"]);
    let packs = std::fs::read_dir(ws.repo.join("objects/pack")).expect("pack dir");
    let idx = packs
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "idx"))
        .expect("one pack after repack -a -d");
    let verify = ws.git(&["verify-pack", "-v", idx.to_str().expect("utf-8 path")]);
    let deltas = verify
        .lines()
        .filter(|l| l.contains(" blob ") && l.split_whitespace().count() > 5)
        .count();
    assert!(
        deltas >= N / 2,
        "git stored the values as deltas:\n{verify}"
    );

    let out = ws.kvgit(&["apply"]).ok();
    assert!(
        out.stdout.contains(&format!("blobs: {N} added")),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    // Key by key: all at once is more than a gRPC message may carry.
    let listed = c
        .get(
            BLOBS.prefix,
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .expect("list the area's keys");
    assert_eq!(listed.kvs().len(), N, "only Git's keys");
    for (path, value) in &values {
        let key = format!("{}{}", BLOBS.prefix, &path["blobs/".len()..]);
        let got = c.get(key.as_str(), None).await.expect("get");
        let got = got.kvs().first().map(|kv| kv.value());
        assert!(got == Some(value.as_slice()), "{key} is not byte-identical");
    }
}

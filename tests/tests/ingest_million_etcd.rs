//! A million keys written as fast as etcd takes them (8 tasks of 128-key transactions) while
//! `kvgit serve` records them: afterwards the repository holds every key with its value and
//! nothing else, checked key by key against etcd. Correctness at the scale the benchmarks
//! time; nothing here is timed.

use kvgit_tests::bench::{raw_write, value, Layout};
use kvgit_tests::etcd::{read_prefix, EtcdOptions, EtcdServer};
use kvgit_tests::kvgit::{Area, Workspace};
use kvgit_tests::serve::{git_files, Serve, ServeConfig};
use std::collections::BTreeMap;
use std::time::Duration;

/// The figure: a million keys (set `INGEST_TEST_KEYS` for a smaller run by hand; a
/// `KVGIT_` name would reach the serve as a setting and stop it).
fn keys() -> usize {
    std::env::var("INGEST_TEST_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_million_keys_ingested_at_full_speed_are_all_in_the_repository_key_by_key() {
    let n = keys();
    let layout = Layout::STANDARD;
    // fsync off: the figure is about kvgit keeping up, not about this disk.
    let etcd = EtcdServer::start_with(EtcdOptions {
        unsafe_no_fsync: true,
        ..Default::default()
    });
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let names = layout.areas();
    let areas = Area::each(&names, "kv-to-git");
    let serve = Serve::start(&ws, etcd.endpoint(), &ServeConfig::fast(&areas));
    serve.wait_ready();

    let written = raw_write(etcd.endpoint(), layout, 0..n, "million").await;
    serve
        .wait_until_async(
            Duration::from_secs(600),
            "every area's checkpoint at its last write",
            || {
                let done = names
                    .iter()
                    .zip(&written.last_by_area)
                    .all(|((name, ..), last)| {
                        serve
                            .metric(&format!("kvgit_checkpoint_revision{{area=\"{name}\"}}"))
                            .is_some_and(|r| r >= *last as f64)
                    });
                async move { done }
            },
        )
        .await;

    let mut c = etcd.client().await;
    let mut total = 0;
    for (name, prefix, path) in &names {
        let kv: BTreeMap<String, Vec<u8>> = read_prefix(&mut c, prefix)
            .await
            .into_iter()
            .map(|(rel, v)| (String::from_utf8_lossy(&rel).into_owned(), v))
            .collect();
        let git = git_files(&ws.repo, "refs/heads/main", path);
        // The values are the ones written: etcd was not changed by anything else.
        let expected = (0..n).filter(|&i| layout.area_index(i) == names_index(&names, name));
        assert_eq!(
            kv.len(),
            expected.clone().count(),
            "etcd holds area {name}'s keys"
        );
        for i in expected.step_by(9973) {
            let rel = layout.key(i)[prefix.len()..].to_owned();
            assert_eq!(kv.get(&rel), Some(&value(i, "million")), "etcd key {rel}");
        }
        let mut wrong = Vec::new();
        for (rel, v) in &kv {
            match git.get(rel) {
                None => wrong.push(format!("{name}: {rel} is not in the repository")),
                Some(g) if g != v => wrong.push(format!("{name}: {rel} has another value")),
                Some(_) => {}
            }
        }
        wrong.extend(
            git.keys()
                .filter(|rel| !kv.contains_key(*rel))
                .map(|rel| format!("{name}: {rel} is in the repository but not in etcd")),
        );
        if !wrong.is_empty() {
            // With the serve's log: what it warned about (a resync, a lost area) says why.
            serve.fail(&format!(
                "{} of {} keys differ, first: {:?}",
                wrong.len(),
                kv.len(),
                &wrong[..wrong.len().min(10)]
            ));
        }
        total += git.len();
    }
    assert_eq!(total, n, "the repository holds every key written");
}

fn names_index(names: &[(String, String, String)], name: &str) -> usize {
    names
        .iter()
        .position(|(n, ..)| n == name)
        .expect("a configured area")
}

//! Shared pieces of the benchmark harnesses: the key set (N keys of ~200 bytes over 4
//! areas), raw etcd writes as the baseline, configs, and running the `kvgit` binary.

use etcd_client::{Client, Txn, TxnOp};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const AREAS: usize = 4;
pub const VALUE_BYTES: usize = 200;

pub fn key(i: usize) -> String {
    format!(
        "/bench/a{}/node-{:04}/key-{i:07}",
        i % AREAS,
        (i / AREAS) / 100
    )
}

pub fn value(i: usize, salt: &str) -> Vec<u8> {
    let mut v = format!("{salt}:{i}:").into_bytes();
    while v.len() < VALUE_BYTES {
        v.extend_from_slice(b"abcdefghijklmnopqrstuvwxyz0123456789");
    }
    v.truncate(VALUE_BYTES);
    v
}

/// Raw etcd writes: 128-op transactions from 8 concurrent tasks (the baseline).
pub async fn raw_write(endpoint: &str, n: usize) -> Duration {
    raw_write_range(endpoint, 0..n, "v1").await
}

/// Raw writes of the keys `range` (values salted with `salt`), same shape as `raw_write`.
pub async fn raw_write_range(
    endpoint: &str,
    range: std::ops::Range<usize>,
    salt: &str,
) -> Duration {
    let client = Client::connect([endpoint], None).await.expect("connect");
    let start = Instant::now();
    let keys: Vec<usize> = range.collect();
    let chunks: Vec<Vec<usize>> = keys.chunks(128).map(|c| c.to_vec()).collect();
    let per_task = chunks.len().div_ceil(8);
    let mut tasks = Vec::new();
    for part in chunks.chunks(per_task.max(1)) {
        let part = part.to_vec();
        let mut kv = client.kv_client();
        let salt = salt.to_string();
        tasks.push(tokio::spawn(async move {
            for chunk in part {
                let ops: Vec<TxnOp> = chunk
                    .iter()
                    .map(|&i| TxnOp::put(key(i), value(i, &salt), None))
                    .collect();
                kv.txn(Txn::new().and_then(ops)).await.expect("raw txn");
            }
        }));
    }
    for t in tasks {
        t.await.expect("raw writer");
    }
    start.elapsed()
}

pub fn config(dir: &Path, endpoint: &str, repo: &Path) -> PathBuf {
    let mut toml = format!(
        "[backend]\nendpoints = [\"{endpoint}\"]\n[git]\nrepo = \"{}\"\n[sync]\nnode = \"bench\"\n",
        repo.display()
    );
    for a in 0..AREAS {
        toml.push_str(&format!(
            "[[area]]\nname = \"a{a}\"\nprefix = \"/bench/a{a}/\"\npath = \"a{a}\"\nmode = \"both\"\n"
        ));
    }
    let path = dir.join(format!(
        "kvgit-{}.toml",
        endpoint.rsplit(':').next().unwrap_or("x")
    ));
    std::fs::write(&path, toml).expect("write config");
    path
}

pub fn kvgit_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TEST_KVGIT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe.with_file_name("kvgit");
    assert!(
        bin.exists(),
        "{} not found: build it with `cargo build --release -p kvgit`",
        bin.display()
    );
    bin
}

pub fn timed(cmd: &mut Command) -> Duration {
    let start = Instant::now();
    let out = cmd.output().expect("spawn");
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

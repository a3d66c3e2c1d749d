//! kvgit-bench: the figures of the issue notes, each measured side by side with its baseline
//! in one run on real etcd servers: export vs a cron script, incremental export, apply vs raw writes.
//!
//! Run: `cargo build --release -p kvgit -p kvgit-tests && target/release/kvgit-bench`
//! (BENCH_KEYS=100000 by default; BENCH_RUNS=3 repeats the cheap measurements).

use etcd_client::{Client, Txn, TxnOp};
use kvgit_tests::etcd::EtcdServer;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kvgit_tests::bench::{config, key, kvgit_bin, raw_write, timed, value, AREAS, VALUE_BYTES};

/// The cron script an operator would write: dump as JSON, files, `git add -A && git commit`.
const CRON_SCRIPT: &str = r#"
set -euo pipefail
endpoint=$1; tree=$2
ETCDCTL_API=3 etcdctl --endpoints "$endpoint" get --prefix /bench/ -w json > "$tree.dump.json"
python3 - "$tree.dump.json" "$tree" <<'PY'
import base64, json, os, sys
d = json.load(open(sys.argv[1]))
root = sys.argv[2]
for kv in d.get("kvs", []):
    k = base64.b64decode(kv["key"]).decode("utf-8", "surrogateescape").lstrip("/")
    p = os.path.join(root, k)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
        f.write(base64.b64decode(kv.get("value", "")))
PY
cd "$tree"
git add -A
git -c user.name=cron -c user.email=cron@localhost commit -q -m "etcd export $(date +%s)" || true
"#;

fn cron(endpoint: &str, tree: &Path) -> Duration {
    timed(
        Command::new("bash")
            .arg("-c")
            .arg(CRON_SCRIPT)
            .arg("cron")
            .arg(endpoint)
            .arg(tree),
    )
}

enum Workdir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl From<PathBuf> for Workdir {
    fn from(p: PathBuf) -> Self {
        Workdir::Kept(p)
    }
}

impl Workdir {
    fn path(&self) -> &Path {
        match self {
            Workdir::Temp(t) => t.path(),
            Workdir::Kept(p) => p,
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let kvgit = kvgit_bin();
    // BENCH_WORKDIR keeps the repositories and configs for a closer look afterwards.
    let dir = match std::env::var("BENCH_WORKDIR") {
        Ok(d) => tempfile::Builder::new()
            .prefix("kvgit-bench")
            .tempdir_in(d)
            .expect("tempdir")
            .keep()
            .into(),
        Err(_) => Workdir::Temp(tempfile::tempdir().expect("tempdir")),
    };
    println!("kvgit-bench: {n} keys of {VALUE_BYTES} bytes over {AREAS} areas, {runs} runs for the incremental figures");

    let etcd = EtcdServer::start();
    let raw = raw_write(etcd.endpoint(), n).await;
    let raw_rate = n as f64 / raw.as_secs_f64();
    println!(
        "raw etcd load (128-op txns, 8 tasks) into an empty etcd: {} ({raw_rate:.0} keys/s)",
        secs(raw)
    );

    // 1. First export vs the cron script.
    let repo = dir.path().join("state.git");
    let cfg = config(dir.path(), etcd.endpoint(), &repo);
    let export_full = timed(Command::new(&kvgit).arg("-c").arg(&cfg).arg("export"));
    let tree = dir.path().join("cron-tree");
    std::fs::create_dir_all(&tree).expect("mkdir");
    timed(Command::new("git").arg("init").arg("-q").arg(&tree));
    // BENCH_ONLY=apply skips the (slow) cron baselines and the incremental figures.
    let only_apply = std::env::var("BENCH_ONLY").is_ok_and(|v| v == "apply");
    let cron_full = if only_apply {
        Duration::ZERO
    } else {
        cron(etcd.endpoint(), &tree)
    };
    println!(
        "full export:        kvgit {}   cron script {}   ratio {:.1}x (target >= 10x)",
        secs(export_full),
        secs(cron_full),
        cron_full.as_secs_f64() / export_full.as_secs_f64()
    );

    // 2. Incremental export of 100 changed keys.
    let client = Client::connect([etcd.endpoint()], None)
        .await
        .expect("connect");
    let (mut inc, mut cron_inc) = (vec![Duration::ZERO], vec![Duration::ZERO]);
    for run in 0..if only_apply { 0 } else { runs } {
        if run == 0 {
            inc.clear();
            cron_inc.clear();
        }
        let ops: Vec<TxnOp> = (0..100)
            .map(|j| {
                let i = (j * 997 + run * 13) % n;
                TxnOp::put(key(i), value(i, &format!("run{run}")), None)
            })
            .collect();
        client
            .kv_client()
            .txn(Txn::new().and_then(ops))
            .await
            .expect("change 100 keys");
        inc.push(timed(
            Command::new(&kvgit).arg("-c").arg(&cfg).arg("export"),
        ));
        cron_inc.push(cron(etcd.endpoint(), &tree));
    }
    let (inc, cron_inc) = (median(inc), median(cron_inc));
    println!(
        "incremental export: kvgit {}   cron script {}   ratio {:.1}x (target >= 50x)",
        secs(inc),
        secs(cron_inc),
        cron_inc.as_secs_f64() / inc.as_secs_f64()
    );

    // 3. Apply of every key into an empty etcd vs raw writes into an empty etcd.
    let empty = EtcdServer::start();
    let cfg2 = config(dir.path(), empty.endpoint(), &repo);
    let apply = timed(Command::new(&kvgit).arg("-c").arg(&cfg2).arg("apply"));
    let count = Client::connect([empty.endpoint()], None)
        .await
        .expect("connect")
        .get(
            "/bench/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await
        .expect("count")
        .count();
    assert_eq!(count as usize, n, "apply wrote every key");
    let apply_rate = n as f64 / apply.as_secs_f64();
    println!(
        "apply into empty:   kvgit {} ({apply_rate:.0} keys/s)   raw {} ({raw_rate:.0} keys/s)   ratio {:.2} (target >= 0.8)",
        secs(apply),
        secs(raw),
        apply_rate / raw_rate
    );
}

//! kvgit-bench-serve: the figures of `kvgit serve`, each beside its baseline in one run on a
//! real etcd: ingest vs etcd's own write time, a 100-key commit at 100k vs 1M keys, peak RSS.
//!
//! Run: `cargo build --release -p kvgit -p kvgit-tests && target/release/kvgit-bench-serve`
//! (BENCH_INGEST=200000, BENCH_SMALL=100000, BENCH_LARGE=1000000, BENCH_BATCH_WINDOW=250ms
//! by default: the window bounds how long the last event waits, so it is part of the lag).

use etcd_client::{Client, Txn, TxnOp};
use kvgit_tests::bench::{key, kvgit_bin, raw_write_range, value, AREAS};
use kvgit_tests::etcd::EtcdServer;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Sum of a metric's samples whose line starts with `prefix` (e.g. `kvgit_commits_total{area="a0"}`).
fn metric(port: u16, prefix: &str) -> f64 {
    let (_, body) = http_get(port, "/metrics").expect("metrics");
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn checkpoint_of(port: u16, area: &str) -> u64 {
    metric(
        port,
        &format!("kvgit_checkpoint_revision{{area=\"{area}\"}}"),
    ) as u64
}

fn min_checkpoint(port: u16) -> u64 {
    (0..AREAS)
        .map(|a| metric(port, &format!("kvgit_checkpoint_revision{{area=\"a{a}\"}}")) as u64)
        .min()
        .unwrap_or(0)
}

struct Serve {
    child: Child,
    port: u16,
}

impl Serve {
    fn start(dir: &Path, endpoint: &str, name: &str) -> Serve {
        let port = free_port();
        let window = std::env::var("BENCH_BATCH_WINDOW").unwrap_or_else(|_| "250ms".into());
        let mut toml = format!(
            "[backend]\nendpoints = [\"{endpoint}\"]\n[git]\nrepo = \"{name}.git\"\n[sync]\nnode = \"bench\"\nbatch_window = \"{window}\"\nbatch_max = 10000\n[server]\nlisten = \"127.0.0.1:{port}\"\n"
        );
        for a in 0..AREAS {
            toml.push_str(&format!("[[area]]\nname = \"a{a}\"\nprefix = \"/bench/a{a}/\"\npath = \"a{a}\"\nmode = \"kv-to-git\"\n"));
        }
        let cfg = dir.join(format!("{name}.toml"));
        std::fs::write(&cfg, toml).expect("config");
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log");
        let child = Command::new(kvgit_bin())
            .arg("-c")
            .arg(&cfg)
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn serve");
        let serve = Serve { child, port };
        let start = Instant::now();
        while http_get(port, "/readyz").map(|(s, _)| s) != Some(200) {
            assert!(
                start.elapsed() < Duration::from_secs(600),
                "serve never became ready"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        serve
    }

    /// Peak resident memory so far (VmHWM), in MiB.
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        let kb: f64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .expect("VmHWM");
        kb / 1024.0
    }

    fn wait_checkpoint(&self, rev: u64) -> Instant {
        while min_checkpoint(self.port) < rev {
            std::thread::sleep(Duration::from_millis(20));
        }
        Instant::now()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn revision(client: &mut Client) -> u64 {
    client
        .get("/", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision() as u64
}

/// One transaction changing 100 keys of area a0; returns the seconds its commit took.
async fn commit_of_100(client: &mut Client, serve: &Serve, n: usize, salt: &str) -> f64 {
    let (sum0, count0) = (
        metric(serve.port, "kvgit_commit_duration_seconds_sum{area=\"a0\"}"),
        metric(
            serve.port,
            "kvgit_commit_duration_seconds_count{area=\"a0\"}",
        ),
    );
    let ops: Vec<TxnOp> = (0..100)
        .map(|j| (j * 7919 * AREAS) % n)
        .map(|i| TxnOp::put(key(i), value(i, salt), None))
        .collect();
    client
        .kv_client()
        .txn(Txn::new().and_then(ops))
        .await
        .expect("txn");
    let rev = revision(client).await;
    while checkpoint_of(serve.port, "a0") < rev {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (sum1, count1) = (
        metric(serve.port, "kvgit_commit_duration_seconds_sum{area=\"a0\"}"),
        metric(
            serve.port,
            "kvgit_commit_duration_seconds_count{area=\"a0\"}",
        ),
    );
    assert_eq!(count1 - count0, 1.0, "one commit for the 100 keys");
    sum1 - sum0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let ingest = env_usize("BENCH_INGEST", 200_000);
    let small = env_usize("BENCH_SMALL", 100_000);
    let large = env_usize("BENCH_LARGE", 1_000_000);
    let dir = tempfile::tempdir().expect("tempdir");
    println!(
        "kvgit-bench-serve: ingest {ingest} keys; 100-key commits at {small} and {large} keys"
    );

    // 1. Ingest: etcd written at full speed while serve follows.
    let etcd = EtcdServer::start();
    let mut client = Client::connect([etcd.endpoint()], None)
        .await
        .expect("connect");
    let serve = Serve::start(dir.path(), etcd.endpoint(), "ingest");
    let start = Instant::now();
    let write = raw_write_range(etcd.endpoint(), 0..ingest, "v1").await;
    let rev = revision(&mut client).await;
    let done = serve.wait_checkpoint(rev).duration_since(start);
    println!(
        "ingest: etcd writes {:.2} s, tree holds every key after {:.2} s: ratio {:.2} (target >= 0.9)",
        write.as_secs_f64(),
        done.as_secs_f64(),
        write.as_secs_f64() / done.as_secs_f64()
    );
    println!("ingest: peak RSS of serve {:.0} MiB", serve.peak_rss_mib());
    drop(serve);
    drop(client);
    drop(etcd);

    // 2. A 100-key commit at `small` keys, then at `large` keys, in one serve.
    let etcd = EtcdServer::start();
    let mut client = Client::connect([etcd.endpoint()], None)
        .await
        .expect("connect");
    raw_write_range(etcd.endpoint(), 0..small, "v1").await;
    let serve = Serve::start(dir.path(), etcd.endpoint(), "scale");
    let mut runs = Vec::new();
    for r in 0..5 {
        runs.push(commit_of_100(&mut client, &serve, small, &format!("s{r}")).await);
    }
    let at_small = median(runs);
    raw_write_range(etcd.endpoint(), small..large, "v1").await;
    let rev = revision(&mut client).await;
    serve.wait_checkpoint(rev);
    let mut runs = Vec::new();
    for r in 0..5 {
        runs.push(commit_of_100(&mut client, &serve, large, &format!("l{r}")).await);
    }
    let at_large = median(runs);
    println!(
        "commit of 100 keys: {:.1} ms at {small} keys, {:.1} ms at {large} keys: ratio {:.2} (target <= 1.5)",
        at_small * 1e3,
        at_large * 1e3,
        at_large / at_small
    );
    println!(
        "serve following {large} keys: peak RSS {:.0} MiB (target <= 300)",
        serve.peak_rss_mib()
    );
    drop(serve);

    // 3. A first start on the already filled etcd: the no-base pass mirrors every key.
    let first = Instant::now();
    let fresh = Serve::start(dir.path(), etcd.endpoint(), "first-start");
    println!(
        "first start on {large} keys: ready after {:.1} s, peak RSS {:.0} MiB (target <= 300)",
        first.elapsed().as_secs_f64(),
        fresh.peak_rss_mib()
    );
}

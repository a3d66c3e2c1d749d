//! Shared pieces of the benchmark harnesses (issue 16): key sets, etcd started with
//! `--unsafe-no-fsync`, the yardsticks (raw writes, a null consumer), runs with peak RSS, and
//! the markdown summary.
//!
//! Every figure is measured beside its yardstick in the same run, on the same machine, with
//! the same etcd flags and the same key set; runs alternate and the median of `BENCH_RUNS`
//! (3) is reported. Benchmarks are binaries, never part of the test suite.

use crate::etcd::{EtcdOptions, EtcdServer};
use crate::serve::{http, metric_value};
use etcd_client::{Client, EventType, GetOptions, Txn, TxnOp, WatchOptions};
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The areas of the standard key set.
pub const AREAS: usize = 4;
/// The size of every value.
pub const VALUE_BYTES: usize = 200;
/// Operations per raw transaction (etcd's default `--max-txn-ops`).
pub const TXN_OPS: usize = 128;
/// Concurrent writer tasks of the raw yardstick.
pub const WRITERS: usize = 8;
/// Every benchmark key lives under here.
pub const ROOT: &str = "/bench/";

/// How the keys `0..n` are laid out, and so which trees a commit rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `/bench/a{i % areas}/node-DDDD/key-IIIIIII`, `per_dir` keys per directory.
    Tree { areas: usize, per_dir: usize },
    /// `/bench/flat/key-IIIIIII`: every key in one directory of one area.
    Flat,
    /// The keys of `Flat` (0..n) split into 10 to 99 areas by the leading digits of their
    /// number (prefix `/bench/flat/key-00`, `…-01`, …), each area its own directory.
    FlatSplit { n: usize },
}

/// Digits of the key numbers (`key-IIIIIII`).
const KEY_DIGITS: u32 = 7;

impl Layout {
    /// The issue's default: 4 areas, directories of 100 keys.
    pub const STANDARD: Layout = Layout::Tree {
        areas: AREAS,
        per_dir: 100,
    };
    /// The scale figure's layout: directories of 1,000 keys (10M keys = 10k directories).
    pub const SCALE: Layout = Layout::Tree {
        areas: AREAS,
        per_dir: 1000,
    };

    pub fn key(&self, i: usize) -> String {
        match *self {
            Layout::Tree { areas, per_dir } => format!(
                "{ROOT}a{}/node-{:04}/key-{i:07}",
                i % areas,
                (i / areas) / per_dir
            ),
            Layout::Flat | Layout::FlatSplit { .. } => format!("{ROOT}flat/key-{i:07}"),
        }
    }

    /// `(name, prefix, path)` of every area.
    pub fn areas(&self) -> Vec<(String, String, String)> {
        match *self {
            Layout::Tree { areas, .. } => (0..areas)
                .map(|a| (format!("a{a}"), format!("{ROOT}a{a}/"), format!("a{a}")))
                .collect(),
            Layout::Flat => vec![("flat".into(), format!("{ROOT}flat/"), "flat".into())],
            Layout::FlatSplit { n } => {
                let (digits, span) = split_of(n);
                let w = digits as usize;
                (0..n.div_ceil(span))
                    .map(|p| {
                        (
                            format!("f{p:0w$}"),
                            format!("{ROOT}flat/key-{p:0w$}"),
                            format!("flat-{p:0w$}"),
                        )
                    })
                    .collect()
            }
        }
    }

    /// The index (in `areas()`) of the area holding key `i`.
    pub fn area_index(&self, i: usize) -> usize {
        match *self {
            Layout::Tree { areas, .. } => i % areas,
            Layout::Flat => 0,
            Layout::FlatSplit { n } => i / split_of(n).1,
        }
    }

    pub fn first_area(&self) -> String {
        self.areas()[0].0.clone()
    }

    /// How `hundred_keys(n, _)` spreads its keys, for the report.
    pub fn hundred_keys_shape(&self, n: usize) -> &'static str {
        match *self {
            Layout::Tree { areas, per_dir }
                if n.div_ceil(areas) / per_dir >= 10 && per_dir >= 10 =>
            {
                "10 keys in each of 10 directories"
            }
            _ => "spread evenly over the area",
        }
    }

    /// 100 distinct keys of the first area (one commit), different for each `run`. In a
    /// tree, 10 keys in each of 10 directories spread over the area, so that the same
    /// number of tree objects is rewritten whatever the size of the store.
    pub fn hundred_keys(&self, n: usize, run: usize) -> Vec<usize> {
        let areas = match *self {
            Layout::Tree { areas, .. } => areas,
            Layout::Flat => 1,
            Layout::FlatSplit { .. } => panic!("use flat_keys for a split flat directory"),
        };
        let in_area = n.div_ceil(areas);
        assert!(in_area >= 100, "at least 100 keys per area are needed");
        if let Layout::Tree { per_dir, .. } = *self {
            let dirs = in_area / per_dir;
            if dirs >= 10 && per_dir >= 10 {
                return (0..100)
                    .map(|j| {
                        let (d, k) = ((j / 10) * dirs / 10, j % 10);
                        let local = d * per_dir + (run * 10 + k) % per_dir;
                        local * areas
                    })
                    .collect();
            }
        }
        let stride = in_area / 100;
        (0..100)
            .map(|j| (j * stride + run % stride) * areas)
            .collect()
    }
}

/// How `FlatSplit { n }` splits: the leading digits that make 10 to 99 areas, and how many
/// key numbers each area spans.
fn split_of(n: usize) -> (u32, usize) {
    (1..=KEY_DIGITS)
        .map(|d| (d, 10usize.pow(KEY_DIGITS - d)))
        .find(|&(_, span)| n / span >= 10)
        .unwrap_or((KEY_DIGITS, 1))
}

/// The 100 keys of run `run` of the flat figure, the same numbers in every layout: spread
/// evenly over the key numbers of the first area of `FlatSplit { n }`.
pub fn flat_keys(n: usize, run: usize) -> Vec<usize> {
    let span = split_of(n).1.min(n);
    assert!(span >= 100, "the flat figure needs at least 1000 keys");
    let stride = span / 100;
    (0..100).map(|j| j * stride + run % stride).collect()
}

pub fn value(i: usize, salt: &str) -> Vec<u8> {
    let mut v = format!("{salt}:{i}:").into_bytes();
    while v.len() < VALUE_BYTES {
        v.extend_from_slice(b"abcdefghijklmnopqrstuvwxyz0123456789");
    }
    v.truncate(VALUE_BYTES);
    v
}

/// `BENCH_<name>` as a number, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// etcd as every yardstick needs it: `--unsafe-no-fsync`, so that the disk is not the
/// bottleneck that hides kvgit's own cost.
pub fn etcd() -> EtcdServer {
    EtcdServer::start_with(EtcdOptions {
        unsafe_no_fsync: true,
        ..EtcdOptions::default()
    })
}

pub async fn connect(endpoint: &str) -> Client {
    Client::connect([endpoint], None)
        .await
        .unwrap_or_else(|e| panic!("connect to {endpoint}: {e}"))
}

/// What a raw load did: its time and the revision of its last transaction, overall and
/// per area (an area is complete once its checkpoint reaches its own last revision).
#[derive(Debug, Clone)]
pub struct Written {
    pub took: Duration,
    pub revision: i64,
    pub last_by_area: Vec<i64>,
}

/// The raw yardstick: keys `range` of `layout` (values salted with `salt`) in 128-op
/// transactions from 8 concurrent tasks, as fast as etcd takes them.
pub async fn raw_write(
    endpoint: &str,
    layout: Layout,
    range: std::ops::Range<usize>,
    salt: &str,
) -> Written {
    let client = connect(endpoint).await;
    // Task t writes the t-th eighth of the 128-key chunks, as ranges (10M keys are not
    // materialised).
    let chunks = range.len().div_ceil(TXN_OPS);
    let per_task = chunks.div_ceil(WRITERS).max(1) * TXN_OPS;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for from in range.clone().step_by(per_task) {
        let part = from..(from + per_task).min(range.end);
        let mut kv = client.kv_client();
        let salt = salt.to_string();
        let areas = layout.areas().len();
        tasks.push(tokio::spawn(async move {
            let mut last = vec![0; areas];
            for first in part.clone().step_by(TXN_OPS) {
                let chunk = first..(first + TXN_OPS).min(part.end);
                let ops: Vec<TxnOp> = chunk
                    .clone()
                    .map(|i| TxnOp::put(layout.key(i), value(i, &salt), None))
                    .collect();
                let resp = txn_retrying(&mut kv, ops).await;
                let rev = resp.header().map_or(0, |h| h.revision());
                for i in chunk {
                    let a = layout.area_index(i);
                    last[a] = last[a].max(rev);
                }
            }
            last
        }));
    }
    let mut last_by_area = vec![0; layout.areas().len()];
    for t in tasks {
        for (all, task) in last_by_area.iter_mut().zip(t.await.expect("raw writer")) {
            *all = (*all).max(task);
        }
    }
    Written {
        took: start.elapsed(),
        revision: last_by_area.iter().copied().max().unwrap_or(0),
        last_by_area,
    }
}

/// One raw transaction, sent again (four times at most) when etcd answers Unavailable: an
/// etcd short of CPU says "request timed out" for a proposal it may still apply. The puts
/// are of the same values either way, so a first attempt applied after all changes no
/// value anything compares; only the load's last revision may be later than the one waited
/// for.
async fn txn_retrying(kv: &mut etcd_client::KvClient, ops: Vec<TxnOp>) -> etcd_client::TxnResponse {
    let mut attempt = 1;
    loop {
        match kv.txn(Txn::new().and_then(ops.clone())).await {
            Ok(resp) => return resp,
            Err(etcd_client::Error::GRpcStatus(status))
                if status.code() == tonic::Code::Unavailable && attempt < 5 =>
            {
                eprintln!(
                    "raw txn: etcd answered {:?} ({}); sending it again",
                    status.code(),
                    status.message()
                );
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                attempt += 1;
            }
            Err(e) => panic!("raw txn: {e:?}"),
        }
    }
}

/// Deletes every benchmark key (one range delete): the keys keep their history.
pub async fn delete_all(endpoint: &str) {
    connect(endpoint)
        .await
        .delete(ROOT, Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await
        .expect("delete the benchmark keys");
}

/// How many benchmark keys the store holds.
pub async fn count(endpoint: &str) -> usize {
    let resp = connect(endpoint)
        .await
        .get(
            ROOT,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("count the benchmark keys");
    usize::try_from(resp.count()).expect("count fits")
}

/// Changes the keys `keys` in one transaction; returns its revision.
pub async fn change(endpoint: &str, layout: Layout, keys: &[usize], salt: &str) -> i64 {
    let ops: Vec<TxnOp> = keys
        .iter()
        .map(|&i| TxnOp::put(layout.key(i), value(i, salt), None))
        .collect();
    let resp = connect(endpoint)
        .await
        .kv_client()
        .txn(Txn::new().and_then(ops))
        .await
        .expect("change keys");
    resp.header().map_or(0, |h| h.revision())
}

/// The backend's own cost of the question an incremental export asks: every change since
/// `after` under each area prefix of `layout`, all prefixes at once, each as one range read
/// with a mod-revision filter (kvgit's way for small areas: etcd reads every key of the
/// prefix for it). Timed from an open connection; returns the time and the number of
/// changed keys found.
pub async fn changed_since(endpoint: &str, layout: Layout, after: i64) -> (Duration, usize) {
    let client = connect(endpoint).await;
    let started = Instant::now();
    let reads = layout.areas().into_iter().map(|(_, prefix, _)| {
        let mut kv = client.kv_client();
        async move {
            let opts = GetOptions::new()
                .with_prefix()
                .with_min_mod_revision(after + 1);
            kv.get(prefix, Some(opts))
                .await
                .expect("filtered range")
                .kvs()
                .len()
        }
    });
    let found: usize = futures::future::join_all(reads).await.into_iter().sum();
    (started.elapsed(), found)
}

/// etcd's other answer to the same question, the one kvgit asks for large areas: one watch
/// over every key per area from `after + 1`, at once on an open connection, until each has
/// seen revision `upto`; returns the time and the events under the areas' prefixes.
pub async fn caught_up_since(
    endpoint: &str,
    layout: Layout,
    after: i64,
    upto: i64,
) -> (Duration, usize) {
    let client = connect(endpoint).await;
    let started = Instant::now();
    let watches = layout.areas().into_iter().map(|(_, prefix, _)| {
        let mut watch = client.watch_client();
        async move {
            // No fragments, as kvgit's (etcd 3.4 fragments in quadratic time).
            let opts = WatchOptions::new()
                .with_all_keys()
                .with_start_revision(after + 1);
            let mut stream = watch.watch("", Some(opts)).await.expect("catch-up watch");
            let mut found = 0;
            loop {
                let resp = stream
                    .message()
                    .await
                    .expect("catch-up watch")
                    .expect("catch-up watch open");
                let revs = resp.events().iter().filter_map(|e| e.kv());
                found += revs
                    .clone()
                    .filter(|kv| kv.key().starts_with(prefix.as_bytes()))
                    .count();
                if revs.map(|kv| kv.mod_revision()).max() >= Some(upto) {
                    return found;
                }
            }
        }
    });
    let found: usize = futures::future::join_all(watches).await.into_iter().sum();
    (started.elapsed(), found)
}

/// Returns `phase` after one of etcd's catch-up passes (every 100 ms): a watch from a past
/// revision waits for the next pass, so two such watches are compared at the same phase.
pub async fn after_catch_up_pass(endpoint: &str, phase: Duration) {
    let mut client = connect(endpoint).await;
    let now = client
        .get("\0", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision();
    let opts = WatchOptions::new().with_all_keys().with_start_revision(now);
    let mut stream = client.watch("", Some(opts)).await.expect("watch");
    loop {
        let resp = stream.message().await.expect("watch").expect("watch open");
        if !resp.events().is_empty() {
            break;
        }
    }
    tokio::time::sleep(phase).await;
}

/// The null consumer of the ingest figure: the watches kvgit opens (one per area prefix,
/// progress notifications, fragments), doing nothing but count the events.
pub struct NullConsumer {
    seen: Arc<AtomicUsize>,
    done: tokio::sync::watch::Receiver<Option<Instant>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl NullConsumer {
    /// Watches from the next revision; `expected` events complete it.
    pub async fn start(endpoint: &str, layout: Layout, expected: usize) -> NullConsumer {
        let seen = Arc::new(AtomicUsize::new(0));
        let (tx, done) = tokio::sync::watch::channel(None);
        let tx = Arc::new(tx);
        let mut tasks = Vec::new();
        for (_, prefix, _) in layout.areas() {
            let mut client = connect(endpoint).await;
            let mut end = prefix.clone().into_bytes();
            *end.last_mut().expect("prefix") += 1;
            let opts = WatchOptions::new()
                .with_range(end)
                .with_progress_notify()
                .with_fragment();
            let mut stream = client
                .watch(prefix.as_str(), Some(opts))
                .await
                .expect("null consumer watch");
            // The writes start only once every watch exists, as with kvgit's (ready) serve.
            let created = stream.message().await.expect("watch created");
            assert!(created.is_some_and(|c| c.created()), "watch not created");
            let (seen, tx) = (seen.clone(), tx.clone());
            tasks.push(tokio::spawn(async move {
                let _client = client;
                while let Ok(Some(resp)) = stream.message().await {
                    let n = resp
                        .events()
                        .iter()
                        .filter(|e| matches!(e.event_type(), EventType::Put | EventType::Delete))
                        .count();
                    if seen.fetch_add(n, Ordering::SeqCst) + n >= expected && n > 0 {
                        tx.send_if_modified(|t| {
                            let first = t.is_none();
                            if first {
                                *t = Some(Instant::now());
                            }
                            first
                        });
                    }
                }
            }));
        }
        NullConsumer { seen, done, tasks }
    }

    /// The instant the last expected event arrived.
    pub async fn finished(&mut self) -> Instant {
        let at = self
            .done
            .wait_for(Option::is_some)
            .await
            .expect("null consumer ended early");
        at.expect("set")
    }

    pub fn seen(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}

impl Drop for NullConsumer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A kvgit config for `layout` on `endpoint` with `repo`; `sync` and `server` lines added.
pub fn write_config(
    path: &Path,
    endpoint: &str,
    repo: &Path,
    layout: Layout,
    mode: &str,
    extra: &str,
) {
    let mut toml = format!(
        "[backend]\nendpoints = [\"{endpoint}\"]\n[git]\nrepo = \"{}\"\n{extra}",
        repo.display()
    );
    if !extra.contains("[sync]") {
        toml.push_str("[sync]\nnode = \"bench\"\n");
    }
    for (name, prefix, dir) in layout.areas() {
        toml.push_str(&format!(
            "[[area]]\nname = \"{name}\"\nprefix = \"{prefix}\"\npath = \"{dir}\"\nmode = \"{mode}\"\n"
        ));
    }
    std::fs::write(path, toml).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// The `kvgit` binary next to this harness (target/<profile>/), or `TEST_KVGIT_BIN`.
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

/// One finished process: its wall time and peak resident memory.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub took: Duration,
    pub peak_rss_mib: f64,
}

/// Runs `cmd` to its end with its output in `log`; the peak RSS is the kernel's (`wait4`),
/// so a short process is measured whole. Panics with the log tail when it fails.
// The child is reaped by `wait4` (which also gives its peak RSS), not by `Child::wait`.
#[allow(clippy::zombie_processes)]
pub fn run(cmd: &mut Command, log: &Path) -> Measured {
    let out = std::fs::File::create(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    let err = out.try_clone().expect("dup log");
    let start = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    let mut status = 0;
    // SAFETY: wait4 writes into the two locals; the child is ours and reaped exactly once here.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let took = start.elapsed();
    assert_eq!(r, pid, "wait4 {cmd:?}: {}", std::io::Error::last_os_error());
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    assert!(ok, "{cmd:?} failed (status {status}):\n{}", tail(log, 30));
    Measured {
        took,
        // ru_maxrss is in KiB on Linux.
        peak_rss_mib: usage.ru_maxrss as f64 / 1024.0,
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// How long a serve may take to become ready (a first start over millions of keys).
fn ready_timeout() -> Duration {
    Duration::from_secs(env_usize("BENCH_READY_TIMEOUT", 3600) as u64)
}

/// A `kvgit serve` for the figures: its own repository and port, watched through `/metrics`
/// and `/proc/PID/status`; killed on drop.
pub struct BenchServe {
    child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
    layout: Layout,
}

impl BenchServe {
    /// Starts serve (mode kv-to-git, `batch_window`, batch_max 10000) on `endpoint` with the
    /// repository `dir/name.git`, and waits for `/readyz`.
    pub fn start(
        dir: &Path,
        name: &str,
        endpoint: &str,
        layout: Layout,
        batch_window: &str,
    ) -> BenchServe {
        Self::start_in_mode(dir, name, endpoint, layout, batch_window, "kv-to-git", "")
    }

    /// [`BenchServe::start`] with every area in `mode`, and `sync` lines added to `[sync]`.
    pub fn start_in_mode(
        dir: &Path,
        name: &str,
        endpoint: &str,
        layout: Layout,
        batch_window: &str,
        mode: &str,
        sync: &str,
    ) -> BenchServe {
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let cfg = dir.join(format!("{name}.toml"));
        let sync = format!(
            "[sync]\nnode = \"bench\"\nbatch_window = \"{batch_window}\"\nbatch_max = 10000\n{sync}[server]\nlisten = \"{addr}\"\n"
        );
        write_config(
            &cfg,
            endpoint,
            &dir.join(format!("{name}.git")),
            layout,
            mode,
            &sync,
        );
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("serve log");
        let child = Command::new(kvgit_bin())
            .arg("-c")
            .arg(&cfg)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup log"))
            .stderr(out)
            .spawn()
            .expect("spawn kvgit serve");
        let mut serve = BenchServe {
            child,
            addr,
            log,
            layout,
        };
        let start = Instant::now();
        while !matches!(http(addr, "GET", "/readyz", None), Ok((200, _))) {
            if let Ok(Some(status)) = serve.child.try_wait() {
                panic!(
                    "kvgit serve exited with {status}:\n{}",
                    tail(&serve.log, 30)
                );
            }
            assert!(
                start.elapsed() < ready_timeout(),
                "serve not ready after {:?}:\n{}",
                ready_timeout(),
                tail(&serve.log, 30)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        serve
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory so far (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        peak_rss_mib(self.pid())
    }

    /// CPU time the serve has used so far, in seconds.
    pub fn cpu_secs(&self) -> f64 {
        cpu_secs(self.pid())
    }

    fn metrics(&self) -> String {
        match http(self.addr, "GET", "/metrics", None) {
            Ok((200, body)) => body,
            other => panic!("/metrics: {other:?}\n{}", tail(&self.log, 30)),
        }
    }

    fn series(&self, page: &str, name: &str, area: &str) -> f64 {
        metric_value(page, &format!("{name}{{area=\"{area}\"}}")).unwrap_or(0.0)
    }

    /// Whether each area's checkpoint has reached its revision in `revs` (by area index).
    fn checkpoints_reach(&self, revs: &[i64]) -> bool {
        let page = self.metrics();
        self.layout
            .areas()
            .iter()
            .zip(revs)
            .all(|((a, _, _), &rev)| {
                self.series(&page, "kvgit_checkpoint_revision", a) as i64 >= rev
            })
    }

    /// Waits until every area is checkpointed at `rev` or later; the instant it saw that.
    pub fn wait_checkpoint(&self, rev: i64) -> Instant {
        self.wait_checkpoints(&vec![rev; self.layout.areas().len()])
    }

    /// Waits until each area is checkpointed at its revision in `revs` (what a raw load
    /// returns as `last_by_area`); the instant it saw that.
    pub fn wait_checkpoints(&self, revs: &[i64]) -> Instant {
        let rev = revs.iter().copied().max().unwrap_or(0);
        let start = Instant::now();
        loop {
            if self.checkpoints_reach(revs) {
                return Instant::now();
            }
            assert!(
                start.elapsed() < ready_timeout(),
                "checkpoint never reached {rev}:\n{}",
                tail(&self.log, 30)
            );
            // Each poll renders /metrics in serve: often enough for a fine figure, rarely
            // enough not to slow it down.
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The duration of the one commit that changing `keys` (all in the first area, one txn)
    /// makes, as serve measures it (`kvgit_commit_duration_seconds`), in seconds.
    pub async fn commit_of(&self, endpoint: &str, keys: &[usize], salt: &str) -> f64 {
        let area = self.layout.first_area();
        let sums = |page: &str| {
            (
                self.series(page, "kvgit_commit_duration_seconds_sum", &area),
                self.series(page, "kvgit_commit_duration_seconds_count", &area),
            )
        };
        let (sum0, count0) = sums(&self.metrics());
        let rev = change(endpoint, self.layout, keys, salt).await;
        let start = Instant::now();
        loop {
            let mut page = self.metrics();
            if self.series(&page, "kvgit_checkpoint_revision", &area) as i64 >= rev {
                // A page is not one snapshot: the registry reads its collectors one after
                // another, so a commit that lands between two reads shows the checkpoint
                // it moved without the duration it observed (seen twice in thousands of
                // commits; the second time the repository was kept, and held the commit).
                // Read again until the count moves too.
                let seen = Instant::now();
                while sums(&page).1 == count0 && seen.elapsed() < Duration::from_secs(1) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    page = self.metrics();
                }
                let (sum1, count1) = sums(&page);
                let cp = self.series(&page, "kvgit_checkpoint_revision", &area);
                assert_eq!(
                    count1 - count0,
                    1.0,
                    "one commit for the 100 keys of revision {rev} (checkpoint now {cp}):\n{}",
                    tail(&self.log, 30)
                );
                return sum1 - sum0;
            }
            assert!(
                start.elapsed() < ready_timeout(),
                "the 100-key commit never came:\n{}",
                tail(&self.log, 30)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for BenchServe {
    /// SIGTERM first: serve then gives up its areas, so that the next serve on the same
    /// store does not wait for a dead owner's lease to expire; SIGKILL after 30 s.
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: signals our own child, which has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// VmHWM of a running process, in MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .expect("VmHWM");
    kb / 1024.0
}

/// CPU time (user + system) a running process has used so far, in seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command name, which is in parentheses and may hold spaces:
    // state is field 3, utime and stime are fields 14 and 15.
    let after = &stat[stat.rfind(')').expect("comm in stat") + 2..];
    let ticks: f64 = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|f| f.parse::<f64>().expect("utime/stime"))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

/// Writes every dirty page back (`sync(2)`) before a timed side starts, so that it does not
/// pay for the writes of the side before it (the cron script leaves 100k files and as many
/// loose objects dirty; etcd without fsync, whole loads).
pub fn write_back() {
    // SAFETY: sync(2) takes no arguments and only flushes file systems.
    unsafe { libc::sync() };
}

/// Waits until no process works inside `dir`, and says how long that took. A `git commit`
/// over 100k loose objects leaves `git maintenance run --auto --detach` repacking them on
/// both cores for seconds after it returns; the next timed side must not run beside it.
pub fn wait_for_processes_in(dir: &Path) -> Duration {
    let start = Instant::now();
    let busy = || {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
            .filter_map(|e| std::fs::read_link(e.path().join("cwd")).ok())
            .any(|cwd| cwd.starts_with(dir))
    };
    while busy() {
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "processes still working in {} after 10 minutes",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

pub fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty(), "median of nothing");
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn secs(s: f64) -> String {
    if s < 1.0 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

pub fn list(v: &[f64]) -> String {
    v.iter().map(|s| secs(*s)).collect::<Vec<_>>().join(", ")
}

/// Which figures to run: `--only a,b` or `BENCH_ONLY=a,b` (a name or its start, e.g.
/// `apply` for `apply-empty` and `apply-history`); `--list` prints the names.
pub struct Selection {
    only: Option<Vec<String>>,
    all: Vec<String>,
}

impl Selection {
    pub fn from_args(all: &[(&str, &str)]) -> Selection {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut only = std::env::var("BENCH_ONLY").ok();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--only" => only = it.next().cloned(),
                s if s.starts_with("--only=") => only = Some(s["--only=".len()..].into()),
                "--list" => {
                    for (name, what) in all {
                        println!("{name:20} {what}");
                    }
                    std::process::exit(0);
                }
                other => {
                    eprintln!("unknown argument {other:?}: use --only NAME[,NAME] or --list");
                    std::process::exit(2);
                }
            }
        }
        let only: Option<Vec<String>> =
            only.map(|o| o.split(',').map(|s| s.trim().to_string()).collect());
        if let Some(names) = &only {
            for n in names {
                if !all.iter().any(|(a, _)| a.starts_with(n.as_str())) {
                    eprintln!("no figure named {n:?}; --list shows them");
                    std::process::exit(2);
                }
            }
        }
        Selection {
            only,
            all: all.iter().map(|(n, _)| n.to_string()).collect(),
        }
    }

    /// A figure's own name selects it alone; any other start of names selects them all.
    pub fn wants(&self, name: &str) -> bool {
        match &self.only {
            None => true,
            Some(tokens) => tokens
                .iter()
                .any(|t| name == t || (!self.all.contains(t) && name.starts_with(t.as_str()))),
        }
    }
}

/// One line of the results table.
pub struct Row {
    pub figure: String,
    pub kvgit: String,
    pub yardstick: String,
    pub result: String,
    pub target: String,
    pub met: Option<bool>,
}

/// The results of one harness run, printed as markdown for docs/performance.md.
pub struct Report {
    title: String,
    command: String,
    started: String,
    load_before: String,
    /// The file system of the work dir (see [`filesystem_of`]), once known.
    work_fs: Option<String>,
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Report {
    pub fn new(title: &str) -> Report {
        Report {
            title: title.into(),
            command: command_line(),
            started: utc_now(),
            load_before: loadavg(),
            work_fs: None,
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Adds a row and prints it at once (a long run shows its figures as they come).
    pub fn row(&mut self, row: Row) {
        println!(
            "  => {}: kvgit {} | yardstick {} | {} (target {}){}",
            row.figure,
            row.kvgit,
            row.yardstick,
            row.result,
            row.target,
            match row.met {
                Some(true) => " MET",
                Some(false) => " NOT MET",
                None => "",
            }
        );
        self.rows.push(row);
    }

    /// The harness's work dir (repositories, configs, logs): its file system goes into
    /// the report, and is printed now.
    pub fn work_dir(&mut self, dir: &Path) {
        let fs = filesystem_of(dir);
        println!("work dir {} on {fs}", dir.display());
        self.work_fs = Some(fs);
    }

    pub fn note(&mut self, note: String) {
        println!("  .. {note}");
        self.notes.push(note);
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "#### {} — {}", self.title, self.started);
        let _ = writeln!(s);
        let _ = writeln!(s, "```sh\n{}\n```", self.command);
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "Machine: {} cores, kernel {}, {} with `--unsafe-no-fsync`; kvgit `{}`; work dir on {}; load average before {}, after {}.",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            first_line("uname", &["-r"]),
            first_line("etcd", &["--version"]).replace("etcd Version: ", "etcd "),
            kvgit_bin().display(),
            self.work_fs.as_deref().unwrap_or("?"),
            self.load_before,
            loadavg()
        );
        let _ = writeln!(s);
        let _ = writeln!(s, "| figure | kvgit | yardstick | result | target | met |");
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for r in &self.rows {
            let met = match r.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "–",
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {met} |",
                r.figure, r.kvgit, r.yardstick, r.result, r.target
            );
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s);
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }

    /// Prints the markdown block between two marker lines; with `BENCH_APPEND=FILE` also
    /// appends it to FILE (docs/performance.md).
    pub fn print(&self) {
        let block = self.markdown();
        println!("\n----- markdown for docs/performance.md -----");
        print!("{block}");
        println!("----- end -----");
        if let Ok(path) = std::env::var("BENCH_APPEND") {
            use std::io::Write as _;
            let appended = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .and_then(|mut f| write!(f, "\n{block}"));
            match appended {
                Ok(()) => println!("appended to {path}"),
                Err(e) => eprintln!("BENCH_APPEND {path}: {e}"),
            }
        }
    }
}

/// The command line as run, with the `BENCH_*`/`TEST_KVGIT_BIN` settings in front.
pub fn command_line() -> String {
    let mut env: Vec<String> = std::env::vars()
        .filter(|(k, _)| (k.starts_with("BENCH_") && k != "BENCH_APPEND") || k == "TEST_KVGIT_BIN")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    env.sort();
    let exe = std::env::args().next().unwrap_or_default();
    let exe = Path::new(&exe);
    // Relative to the workspace when the binary lives in its target directory.
    let shown = exe
        .to_str()
        .and_then(|s| s.find("target/").map(|i| s[i..].to_string()))
        .unwrap_or_else(|| exe.display().to_string());
    let mut parts = env;
    parts.push(shown);
    parts.extend(std::env::args().skip(1));
    parts.join(" ")
}

/// The file system holding `dir`, as the commit figures depend on it: `ext4 (/dev/vda)
/// without a journal` and the like. Without a journal, ext4 skips every inode freed in the
/// last half minute or so when it allocates one, looking each one up; every commit of a
/// serve creates four files and frees two (its ref updates), so a busy serve pays more for
/// each file the more it commits (docs/performance.md, fifteenth round).
pub fn filesystem_of(dir: &Path) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    // Fields: id parent dev root mountpoint options [optional...] - fstype source superopts.
    let best = mounts
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let point = Path::new(fields.get(4)?);
            let dash = fields.iter().position(|f| *f == "-")?;
            let (fstype, source) = (fields.get(dash + 1)?, fields.get(dash + 2)?);
            dir.starts_with(point).then(|| {
                (
                    point.as_os_str().len(),
                    fstype.to_string(),
                    source.to_string(),
                )
            })
        })
        .max_by_key(|(len, _, _)| *len);
    let Some((_, fstype, source)) = best else {
        return "?".into();
    };
    if fstype != "ext4" {
        return format!("{fstype} ({source})");
    }
    let name = Path::new(&source)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match std::fs::read_to_string(format!("/sys/fs/ext4/{name}/journal_task")) {
        Ok(task) if task.trim() == "<none>" => format!("ext4 ({source}) without a journal"),
        Ok(_) => format!("ext4 ({source}) with a journal"),
        Err(_) => format!("ext4 ({source})"),
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn utc_now() -> String {
    first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn a_dir_is_on_the_file_system_of_its_longest_mount() {
        // `/` is a prefix of `/proc` too: the longer mount point is the one.
        let proc = filesystem_of(Path::new("/proc/self"));
        assert!(proc.starts_with("proc ("), "/proc is on {proc}");
        assert_ne!(filesystem_of(&std::env::temp_dir()), "?");
    }

    /// The keys of one measured commit are 100 distinct keys of the first area, in range.
    fn check_commit_keys(layout: Layout, n: usize, keys: &[usize]) {
        let set: BTreeSet<usize> = keys.iter().copied().collect();
        assert_eq!(set.len(), 100, "{layout:?} n={n}: distinct");
        assert!(keys.iter().all(|&i| i < n), "{layout:?} n={n}: in range");
        let first = &layout.areas()[0].1;
        assert!(
            keys.iter()
                .all(|&i| layout.key(i).starts_with(first.as_str())),
            "{layout:?} n={n}: all in the first area"
        );
    }

    #[test]
    fn a_commit_touches_ten_directories_at_any_size() {
        for n in [100_000, 10_000_000] {
            for run in 0..3 {
                let keys = Layout::SCALE.hundred_keys(n, run);
                check_commit_keys(Layout::SCALE, n, &keys);
                let dirs: BTreeSet<String> = keys
                    .iter()
                    .map(|&i| {
                        let k = Layout::SCALE.key(i);
                        k[..k.rfind('/').expect("dir")].to_string()
                    })
                    .collect();
                assert_eq!(dirs.len(), 10, "n={n}");
            }
        }
        // Too few directories: spread over the area instead.
        check_commit_keys(Layout::SCALE, 5000, &Layout::SCALE.hundred_keys(5000, 1));
    }

    #[test]
    fn flat_keys_sit_in_the_first_area_of_the_split() {
        for n in [20_000, 1_000_000] {
            let split = Layout::FlatSplit { n };
            let parts = split.areas().len();
            assert!((10..100).contains(&parts), "n={n}: {parts} areas");
            for run in 0..3 {
                let keys = flat_keys(n, run);
                check_commit_keys(split, n, &keys);
                check_commit_keys(Layout::Flat, n, &keys);
            }
            // Every key belongs to exactly the area its index says.
            for i in [0, n / 2, n - 1] {
                let (_, prefix, _) = &split.areas()[split.area_index(i)];
                assert!(split.key(i).starts_with(prefix.as_str()), "key {i}");
            }
        }
        assert_eq!(
            Layout::FlatSplit { n: 1_000_000 }.areas()[0].1,
            "/bench/flat/key-00"
        );
    }

    #[test]
    fn medians_of_odd_runs() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![0.5]), 0.5);
    }
}

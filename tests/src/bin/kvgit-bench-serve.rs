//! kvgit-bench-serve: the figures of `kvgit serve` in issue 16, each beside its yardstick in
//! one run on etcd started with `--unsafe-no-fsync`: ingest vs a null consumer, peak RSS, a
//! 100-key commit at 10M vs 100k keys, the cost of a flat directory of 1M keys, and what a
//! serve in mode both costs beyond recording alone.
//!
//! Run: `cargo build --release -p kvgit -p kvgit-tests && target/release/kvgit-bench-serve`
//! (`--only NAME[,NAME]` or BENCH_ONLY runs some figures, `--list` names them; sizes by
//! BENCH_INGEST, BENCH_INGEST_LARGE, BENCH_SCALE_SMALL, BENCH_SCALE_LARGE, BENCH_FLAT_KEYS,
//! BENCH_BOTH_KEYS;
//! BENCH_RUNS=3 (15 at least for the commit figures); BENCH_BATCH_WINDOW=250ms, which bounds how long the last event waits;
//! BENCH_PAUSE_BEFORE_COMMITS=FILE waits before the timed commits until FILE exists).

use kvgit_tests::bench::{
    change, cpu_secs, env_usize, etcd, flat_keys, kvgit_bin, list, median, raw_write, run, secs,
    write_config, BenchServe, Layout, NullConsumer, Report, Row, Selection, VALUE_BYTES,
};
use kvgit_tests::etcd::EtcdServer;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Runs of a commit figure at least (its runs spread more than the other figures').
const COMMIT_RUNS: usize = 15;

const FIGURES: &[(&str, &str)] = &[
    (
        "ingest",
        "serve ingest of BENCH_INGEST (200k) keys vs a null consumer (target >= 0.85)",
    ),
    (
        "ingest-large",
        "the same at BENCH_INGEST_LARGE (1M) keys, with peak RSS ingested and on a first start (<= 200 MiB)",
    ),
    (
        "scale",
        "BENCH_SCALE_LARGE (10M) keys in 10k directories: export and serve work, 100-key commit vs at BENCH_SCALE_SMALL (<= 1.3x), RSS <= 1 GiB",
    ),
    (
        "flat",
        "100-key commit in one flat directory of BENCH_FLAT_KEYS (1M) keys vs the same keys in 1k-key directories",
    ),
    (
        "both",
        "serve in mode both over BENCH_BOTH_KEYS (1M) keys under a trickle of live changes vs the same serve in kv-to-git (recording alone): serve and etcd CPU (<= 1.25x); a push of 100 files until live",
    ),
];

/// `both`: the trickle is 100 keys changed every `TRICKLE_EVERY`, `TRICKLE_STEPS` times,
/// with `fetch_interval` 1 s, so that a serve makes a fetch/apply pass about every second.
const TRICKLE_STEPS: usize = 100;
const TRICKLE_EVERY: std::time::Duration = std::time::Duration::from_millis(200);
/// `both`: what a both serve may cost beyond recording alone.
const BOTH_TARGET: f64 = 1.25;

/// Ingest target: kvgit's time ≤ null consumer's ÷ 0.85 + batch_window.
const INGEST_TARGET: f64 = 0.85;
const MIB_200: f64 = 200.0;
const GIB: f64 = 1024.0;

/// A serve, its etcd, and the keys a run changes.
type Side<'a> = (&'a BenchServe, &'a str, &'a dyn Fn(usize) -> Vec<usize>);

struct Bench {
    dir: PathBuf,
    runs: usize,
    window: String,
    window_s: f64,
}

/// `250ms`, `1s`, `1.5s` as seconds.
fn parse_window(w: &str) -> f64 {
    let (num, scale) = match w.strip_suffix("ms") {
        Some(n) => (n, 1e-3),
        None => (w.strip_suffix('s').unwrap_or(w), 1.0),
    };
    num.trim()
        .parse::<f64>()
        .unwrap_or_else(|_| panic!("BENCH_BATCH_WINDOW {w:?}: use e.g. 250ms or 1s"))
        * scale
}

impl Bench {
    /// Ingest of `n` keys written at full speed into an empty etcd: the time until serve has
    /// committed every key vs the time until a null consumer has seen every event, each on
    /// a new etcd, alternating. Returns the etcd of the last kvgit run (holding the keys).
    async fn ingest(&self, report: &mut Report, figure: &str, n: usize) -> (EtcdServer, f64) {
        let layout = Layout::STANDARD;
        let (mut kv, mut null, mut rss) = (Vec::new(), Vec::new(), 0f64);
        // CPU seconds: kvgit's serve, and etcd's in the kvgit and the null consumer runs. The
        // machine is busy throughout (etcd and the writers take both cores), so kvgit's CPU
        // is what lengthens its run; it drifts between runs less than the wall times do.
        let (mut kv_cpu, mut etcd_kv, mut etcd_null) = (Vec::new(), Vec::new(), Vec::new());
        let mut kept = None;
        for r in 0..self.runs {
            for side in if r % 2 == 0 { [0, 1] } else { [1, 0] } {
                let cluster = etcd();
                if side == 0 {
                    let mut consumer = NullConsumer::start(cluster.endpoint(), layout, n).await;
                    let etcd0 = cpu_secs(cluster.pid());
                    let start = Instant::now();
                    let w = raw_write(cluster.endpoint(), layout, 0..n, "v1").await;
                    let took = consumer.finished().await.duration_since(start);
                    let etcd = cpu_secs(cluster.pid()) - etcd0;
                    assert_eq!(consumer.seen(), n, "the null consumer saw every event");
                    println!(
                        "  {figure} run {r}: null consumer {} (writes {}), etcd CPU {etcd:.2} s",
                        secs(took.as_secs_f64()),
                        secs(w.took.as_secs_f64())
                    );
                    null.push(took.as_secs_f64());
                    etcd_null.push(etcd);
                } else {
                    let name = format!("{figure}-{r}");
                    let serve = BenchServe::start(
                        &self.dir,
                        &name,
                        cluster.endpoint(),
                        layout,
                        &self.window,
                    );
                    let (serve0, etcd0) = (serve.cpu_secs(), cpu_secs(cluster.pid()));
                    let start = Instant::now();
                    let w = raw_write(cluster.endpoint(), layout, 0..n, "v1").await;
                    let took = serve
                        .wait_checkpoints(&w.last_by_area)
                        .duration_since(start);
                    let (cpu, etcd) = (serve.cpu_secs() - serve0, cpu_secs(cluster.pid()) - etcd0);
                    let peak = serve.peak_rss_mib();
                    println!(
                        "  {figure} run {r}: kvgit serve {} (writes {}), peak RSS {peak:.0} MiB, \
                         serve CPU {cpu:.2} s, etcd CPU {etcd:.2} s",
                        secs(took.as_secs_f64()),
                        secs(w.took.as_secs_f64())
                    );
                    rss = rss.max(peak);
                    kv.push(took.as_secs_f64());
                    kv_cpu.push(cpu);
                    etcd_kv.push(etcd);
                    drop(serve);
                    kept = Some(cluster);
                }
            }
        }
        let (k, y) = (median(kv.clone()), median(null.clone()));
        // The window is the longest the last event may wait by design: it is not ingest cost.
        let adjusted = y / (k - self.window_s).max(1e-9);
        report.row(Row {
            figure: format!("serve ingest of {n} keys (128-op txns × 8 tasks, full speed)"),
            kvgit: format!("{} until every key is committed", secs(k)),
            yardstick: format!("null consumer (4 prefix watches, counting): {}", secs(y)),
            result: format!(
                "{adjusted:.2} (null ÷ (kvgit − batch_window {})); {:.2} without the window",
                self.window,
                y / k
            ),
            target: format!("≥ {INGEST_TARGET} (kvgit ≤ null ÷ {INGEST_TARGET} + batch_window)"),
            met: Some(k <= y / INGEST_TARGET + self.window_s),
        });
        report.note(format!(
            "{figure} runs: kvgit [{}], null consumer [{}]",
            list(&kv),
            list(&null)
        ));
        report.note(format!(
            "{figure} CPU: kvgit serve [{}]; etcd in the kvgit runs [{}], in the null consumer runs [{}]",
            list(&kv_cpu),
            list(&etcd_kv),
            list(&etcd_null)
        ));
        (kept.expect("at least one run"), rss)
    }

    /// Starts serve over a store that already holds `n` keys (a first start) and waits until
    /// it has committed them all.
    async fn first_start(
        &self,
        name: &str,
        cluster: &EtcdServer,
        layout: Layout,
    ) -> (BenchServe, f64) {
        let rev = current_revision(cluster.endpoint()).await;
        let start = Instant::now();
        let serve = BenchServe::start(&self.dir, name, cluster.endpoint(), layout, &self.window);
        serve.wait_checkpoint(rev);
        (serve, start.elapsed().as_secs_f64())
    }

    /// Commits in each serve of `sides` in turn (run `r` starts at side `r % len`), side
    /// `s` changing the keys `keys(r)` in its store: the durations of each side.
    ///
    /// Measured settled and warm, at least `COMMIT_RUNS` times: a commit takes a few tens of
    /// milliseconds, and right after a load of millions of keys the kernel is still writing
    /// back gigabytes (etcd without fsync leaves them dirty), which the first runs timed as
    /// commit time, unevenly between the sides. So `sync(2)` first, then one commit per side
    /// that is not timed (it fills what a long-running serve keeps warm: its recent trees,
    /// the page cache of the trees it reads).
    async fn commits(&self, sides: &[Side<'_>]) -> Vec<Vec<f64>> {
        kvgit_tests::bench::write_back();
        for (serve, endpoint, keys) in sides {
            serve.commit_of(endpoint, &keys(0), "warm-up").await;
        }
        pause_for_a_profiler(sides).await;
        let mut times = vec![Vec::new(); sides.len()];
        for r in 0..self.runs.max(COMMIT_RUNS) {
            let salt = format!("c{r}");
            for k in 0..sides.len() {
                let s = (r + k) % sides.len();
                let (serve, endpoint, keys) = &sides[s];
                times[s].push(serve.commit_of(endpoint, &keys(r), &salt).await);
            }
        }
        times
    }
}

impl Bench {
    /// A serve in mode `both` against the same serve in `kv-to-git` (the yardstick: what
    /// recording the live changes costs alone), each a first start of a new repository over
    /// a new etcd holding `n` keys, alternating: the CPU that serve and etcd spend over a
    /// trickle of live changes to the first area, during which a `both` serve keeps making
    /// fetch/apply passes over areas whose tip and checkpoint move. Then, in `both` only, a
    /// push of 100 changed files of the second area into the serve's repository and
    /// `POST /sync`: the time until the last of them is live.
    async fn both(&self, report: &mut Report, n: usize) {
        let layout = Layout::STANDARD;
        let modes = ["both", "kv-to-git"];
        let (mut serve_cpu, mut etcd_cpu) = ([vec![], vec![]], [vec![], vec![]]);
        let (mut rss, mut pushes) = ([0f64; 2], Vec::new());
        for r in 0..self.runs {
            for side in if r % 2 == 0 { [0, 1] } else { [1, 0] } {
                let mode = modes[side];
                let cluster = etcd();
                raw_write(cluster.endpoint(), layout, 0..n, "v1").await;
                let rev = current_revision(cluster.endpoint()).await;
                let name = format!("both-{mode}-{r}");
                let serve = BenchServe::start_in_mode(
                    &self.dir,
                    &name,
                    cluster.endpoint(),
                    layout,
                    &self.window,
                    mode,
                    "fetch_interval = \"1s\"\n",
                );
                serve.wait_checkpoint(rev);
                kvgit_tests::bench::write_back();
                let (s0, e0) = (serve.cpu_secs(), cpu_secs(cluster.pid()));
                let mut last = 0;
                for t in 0..TRICKLE_STEPS {
                    let keys = layout.hundred_keys(n, t);
                    last = change(cluster.endpoint(), layout, &keys, &format!("t{r}.{t}")).await;
                    tokio::time::sleep(TRICKLE_EVERY).await;
                }
                serve.wait_checkpoints(&[last, 0, 0, 0]);
                let (cpu, etcd) = (serve.cpu_secs() - s0, cpu_secs(cluster.pid()) - e0);
                serve_cpu[side].push(cpu);
                etcd_cpu[side].push(etcd);
                let mut line = format!(
                    "  both run {r}, {mode}: serve CPU {cpu:.2} s, etcd CPU {etcd:.2} s over the trickle"
                );
                if mode == "both" {
                    let took = push_until_live(&self.dir, &serve, cluster.endpoint(), n, r).await;
                    line.push_str(&format!("; a push of 100 files live after {}", secs(took)));
                    pushes.push(took);
                }
                rss[side] = rss[side].max(serve.peak_rss_mib());
                println!("{line}, peak RSS {:.0} MiB", serve.peak_rss_mib());
            }
        }
        let (sb, sk) = (median(serve_cpu[0].clone()), median(serve_cpu[1].clone()));
        let (eb, ek) = (median(etcd_cpu[0].clone()), median(etcd_cpu[1].clone()));
        let trickle = format!(
            "{TRICKLE_STEPS} txns of 100 keys, one every {} ms",
            TRICKLE_EVERY.as_millis()
        );
        report.row(Row {
            figure: format!(
                "serve in mode both over {n} keys: serve CPU over a trickle ({trickle})"
            ),
            kvgit: format!("{sb:.2} s"),
            yardstick: format!("the same serve in kv-to-git: {sk:.2} s"),
            result: format!("{:.2}× (both ÷ kv-to-git)", sb / sk),
            target: format!("≤ {BOTH_TARGET}×"),
            met: Some(sb <= BOTH_TARGET * sk),
        });
        report.row(Row {
            figure: "the same: etcd CPU over the trickle".to_string(),
            kvgit: format!("{eb:.2} s"),
            yardstick: format!("kv-to-git: {ek:.2} s"),
            result: format!("{:.2}× (both ÷ kv-to-git)", eb / ek),
            target: format!("≤ {BOTH_TARGET}×"),
            met: Some(eb <= BOTH_TARGET * ek),
        });
        report.row(Row {
            figure: "the same: a push of 100 changed files until live (POST /sync)".to_string(),
            kvgit: secs(median(pushes.clone())),
            yardstick: "–".into(),
            result: format!("peak RSS {:.0} MiB (kv-to-git {:.0} MiB)", rss[0], rss[1]),
            target: "measured".into(),
            met: None,
        });
        report.note(format!(
            "both runs: serve CPU both [{}], kv-to-git [{}]; etcd CPU both [{}], kv-to-git [{}]; pushes [{}]",
            list(&serve_cpu[0]),
            list(&serve_cpu[1]),
            list(&etcd_cpu[0]),
            list(&etcd_cpu[1]),
            list(&pushes)
        ));
    }
}

/// Pushes a commit changing 100 files of the second area into the serve's repository (as a
/// person would, through a clone), asks for a pass, and waits until the last changed key
/// holds its new value in etcd: the seconds from the push's end.
async fn push_until_live(
    dir: &Path,
    serve: &BenchServe,
    endpoint: &str,
    n: usize,
    r: usize,
) -> f64 {
    let layout = Layout::STANDARD;
    let repo = dir.join(format!("both-both-{r}.git"));
    let work = dir.join(format!("both-work-{r}"));
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=bench", "-c", "user.email=bench@bench"])
            .args(args)
            .output()
            .expect("run git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (repo_s, work_s) = (repo.display().to_string(), work.display().to_string());
    git(&["clone", "-q", "-b", "main", &repo_s, &work_s]);
    // The first area's keys, moved to the second (`/bench/a1/…`).
    let keys: Vec<usize> = layout.hundred_keys(n, 7).iter().map(|i| i + 1).collect();
    let salt = format!("push{r}");
    for &i in &keys {
        let file = work.join(layout.key(i).trim_start_matches(kvgit_tests::bench::ROOT));
        std::fs::write(&file, kvgit_tests::bench::value(i, &salt))
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }
    git(&["-C", &work_s, "commit", "-qam", "100 files"]);
    git(&["-C", &work_s, "push", "-q", "origin", "main"]);
    let start = Instant::now();
    let (code, body) =
        kvgit_tests::serve::http(serve.addr, "POST", "/sync", None).expect("POST /sync");
    assert!(code < 300, "POST /sync: {code} {body}");
    let last = layout.key(*keys.last().expect("100 keys"));
    let want = kvgit_tests::bench::value(*keys.last().expect("100 keys"), &salt);
    let mut kv = kvgit_tests::bench::connect(endpoint).await.kv_client();
    loop {
        let got = kv.get(last.as_str(), None).await.expect("get");
        if got
            .kvs()
            .first()
            .is_some_and(|k| k.value() == want.as_slice())
        {
            return start.elapsed().as_secs_f64();
        }
        assert!(start.elapsed().as_secs() < 600, "the push never went live");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// With `BENCH_PAUSE_BEFORE_COMMITS=FILE`, waits after the warm-up commits until `FILE`
/// exists, having printed the serves' pids: a profiler attached then sees the timed commits
/// alone, not the load and first start of millions of keys before them.
async fn pause_for_a_profiler(sides: &[Side<'_>]) {
    let Ok(file) = std::env::var("BENCH_PAUSE_BEFORE_COMMITS") else {
        return;
    };
    let pids: Vec<String> = sides.iter().map(|(s, _, _)| s.pid().to_string()).collect();
    println!(
        "  commits: serves ready (pids {}, in the order of the figure's sides); create {file} to go on",
        pids.join(", ")
    );
    while !Path::new(&file).exists() {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

async fn current_revision(endpoint: &str) -> i64 {
    kvgit_tests::bench::connect(endpoint)
        .await
        .get("/", None)
        .await
        .expect("get")
        .header()
        .map_or(0, |h| h.revision())
}

/// Size in bytes of the tree object at `main:path` of `repo`.
fn tree_bytes(repo: &Path, path: &str) -> u64 {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(repo)
        .args(["cat-file", "-s", &format!("main:{path}")])
        .output()
        .expect("git cat-file");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let sel = Selection::from_args(FIGURES);
    let runs = env_usize("BENCH_RUNS", 3);
    let window = std::env::var("BENCH_BATCH_WINDOW").unwrap_or_else(|_| "250ms".into());
    let dir = match std::env::var("BENCH_WORKDIR") {
        Ok(d) => tempfile::Builder::new()
            .prefix("kvgit-bench-serve")
            .tempdir_in(d)
            .expect("tempdir")
            .keep(),
        Err(_) => tempfile::tempdir().expect("tempdir").keep(),
    };
    let keep = std::env::var("BENCH_WORKDIR").is_ok();
    let bench = Bench {
        dir: dir.clone(),
        runs,
        window_s: parse_window(&window),
        window,
    };
    let mut report = Report::new(&format!(
        "kvgit-bench-serve: values of {VALUE_BYTES} B, batch_window {}, median of {runs} (commits: of {})",
        bench.window,
        runs.max(COMMIT_RUNS)
    ));
    println!("kvgit-bench-serve (etcd --unsafe-no-fsync)");
    report.work_dir(&dir);

    if sel.wants("ingest") {
        let n = env_usize("BENCH_INGEST", 200_000);
        bench.ingest(&mut report, "ingest", n).await;
    }

    if sel.wants("ingest-large") {
        let n = env_usize("BENCH_INGEST_LARGE", 1_000_000);
        let (cluster, rss) = bench.ingest(&mut report, "ingest-large", n).await;
        report.row(Row {
            figure: format!("serve peak RSS while ingesting {n} keys (highest of the runs)"),
            kvgit: format!("{rss:.0} MiB"),
            yardstick: "–".into(),
            result: format!("{rss:.0} MiB"),
            target: "≤ 200 MiB".into(),
            met: Some(rss <= MIB_200),
        });
        let (serve, took) = bench
            .first_start("first-start", &cluster, Layout::STANDARD)
            .await;
        let rss = serve.peak_rss_mib();
        report.row(Row {
            figure: format!("serve first start over {n} keys (new repository)"),
            kvgit: format!(
                "peak RSS {rss:.0} MiB, every key committed after {}",
                secs(took)
            ),
            yardstick: "–".into(),
            result: format!("{rss:.0} MiB"),
            target: "≤ 200 MiB".into(),
            met: Some(rss <= MIB_200),
        });
    }

    if sel.wants("scale") {
        let layout = Layout::SCALE;
        let small = env_usize("BENCH_SCALE_SMALL", 100_000);
        let large = env_usize("BENCH_SCALE_LARGE", 10_000_000);
        let (xs, xl) = (etcd(), etcd());
        let w = raw_write(xs.endpoint(), layout, 0..small, "v1").await;
        println!(
            "  scale: {small} keys loaded in {}",
            secs(w.took.as_secs_f64())
        );
        let w = raw_write(xl.endpoint(), layout, 0..large, "v1").await;
        println!(
            "  scale: {large} keys loaded in {}",
            secs(w.took.as_secs_f64())
        );

        // A one-shot export of the whole large store into an empty repository.
        let cfg = dir.join("scale-export.toml");
        write_config(
            &cfg,
            xl.endpoint(),
            &dir.join("scale-export.git"),
            layout,
            "kv-to-git",
            "",
        );
        let mut cmd = Command::new(kvgit_bin());
        cmd.arg("-c").arg(&cfg).arg("export");
        let m = run(&mut cmd, &dir.join("scale-export.log"));
        report.row(Row {
            figure: format!("one-shot full export of {large} keys (1k keys per directory)"),
            kvgit: format!(
                "{}, peak RSS {:.0} MiB",
                secs(m.took.as_secs_f64()),
                m.peak_rss_mib
            ),
            yardstick: "–".into(),
            result: format!("{:.0} MiB", m.peak_rss_mib),
            target: "works; RSS ≤ 1 GiB".into(),
            met: Some(m.peak_rss_mib <= GIB),
        });

        let (ss, took_small) = bench.first_start("scale-small", &xs, layout).await;
        let (sl, took_large) = bench.first_start("scale-large", &xl, layout).await;
        report.note(format!(
            "scale: first start committed {small} keys after {}, {large} keys after {} (peak RSS {:.0} MiB)",
            secs(took_small),
            secs(took_large),
            sl.peak_rss_mib()
        ));
        let mut t = bench
            .commits(&[
                (&ss, xs.endpoint(), &|r| layout.hundred_keys(small, r)),
                (&sl, xl.endpoint(), &|r| layout.hundred_keys(large, r)),
            ])
            .await;
        let (tl, ts) = (t.pop().expect("large"), t.pop().expect("small"));
        let (ms, ml) = (median(ts.clone()), median(tl.clone()));
        report.row(Row {
            figure: format!(
                "100-key commit ({}) at {large} keys",
                layout.hundred_keys_shape(large)
            ),
            kvgit: secs(ml),
            yardstick: format!("the same commit at {small} keys: {}", secs(ms)),
            result: format!("{:.2}× (large ÷ small)", ml / ms),
            target: "≤ 1.3×".into(),
            met: Some(ml / ms <= 1.3),
        });
        let rss = sl.peak_rss_mib();
        report.row(Row {
            figure: format!("serve peak RSS at {large} keys (first start and commits)"),
            kvgit: format!("{rss:.0} MiB"),
            yardstick: "–".into(),
            result: format!("{rss:.0} MiB"),
            target: "≤ 1 GiB".into(),
            met: Some(rss <= GIB),
        });
        report.note(format!(
            "scale commit runs: at {large} [{}], at {small} [{}]",
            list(&tl),
            list(&ts)
        ));
    }

    if sel.wants("flat") {
        let n = env_usize("BENCH_FLAT_KEYS", 1_000_000);
        let hier = Layout::Tree {
            areas: 1,
            per_dir: 1000,
        };
        let split = Layout::FlatSplit { n };
        let (ef, eh, es) = (etcd(), etcd(), etcd());
        raw_write(ef.endpoint(), Layout::Flat, 0..n, "v1").await;
        raw_write(eh.endpoint(), hier, 0..n, "v1").await;
        raw_write(es.endpoint(), split, 0..n, "v1").await;
        let (sf, took_f) = bench.first_start("flat", &ef, Layout::Flat).await;
        let (sh, took_h) = bench.first_start("flat-hier", &eh, hier).await;
        let (ss, took_s) = bench.first_start("flat-split", &es, split).await;
        // The same key numbers everywhere: in the one flat directory, spread over 100 of
        // the 1k-key directories, or in the first area of the split.
        let keys = |r| flat_keys(n, r);
        let mut t = bench
            .commits(&[
                (&sf, ef.endpoint(), &keys),
                (&sh, eh.endpoint(), &keys),
                (&ss, es.endpoint(), &keys),
            ])
            .await;
        let (tsplit, th, tf) = (
            t.pop().expect("split"),
            t.pop().expect("hier"),
            t.pop().expect("flat"),
        );
        let (mf, mh, ms) = (
            median(tf.clone()),
            median(th.clone()),
            median(tsplit.clone()),
        );
        let bytes = tree_bytes(&dir.join("flat.git"), "flat");
        let parts = split.areas().len();
        report.row(Row {
            figure: format!("100-key commit in one flat directory of {n} keys"),
            kvgit: secs(mf),
            yardstick: format!("the same keys in 1k-key directories: {}", secs(mh)),
            result: format!("{:.1}× (flat ÷ directories)", mf / mh),
            target: "measured and documented".into(),
            met: None,
        });
        report.row(Row {
            figure: format!(
                "the same commit with the flat directory split into {parts} areas by key prefix"
            ),
            kvgit: secs(ms),
            yardstick: format!("one flat directory: {}", secs(mf)),
            result: format!("{:.2}× (split ÷ flat)", ms / mf),
            target: "measured and documented".into(),
            met: None,
        });
        report.note(format!(
            "flat: the directory's tree object is {:.1} MiB and is rewritten by every commit; first start {} (flat) vs {} (directories) vs {} (split); peak RSS {:.0} vs {:.0} vs {:.0} MiB; runs flat [{}], directories [{}], split [{}]",
            bytes as f64 / (1024.0 * 1024.0),
            secs(took_f),
            secs(took_h),
            secs(took_s),
            sf.peak_rss_mib(),
            sh.peak_rss_mib(),
            ss.peak_rss_mib(),
            list(&tf),
            list(&th),
            list(&tsplit)
        ));
    }

    if sel.wants("both") {
        let n = env_usize("BENCH_BOTH_KEYS", 1_000_000);
        bench.both(&mut report, n).await;
    }

    report.print();
    if !keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! `kvgit serve` when its HTTP port is flooded: the real binary against a real etcd, its
//! descriptors capped with `prlimit --pid` (util-linux), and more idle TCP connections than
//! it has descriptors. The HTTP server must keep to its connection limit, so commits and
//! pushes go on; when descriptors do run out, a failed `accept` must neither end the server
//! nor spin.
//!
//! All traffic goes to 127.0.0.1; every loop is bounded in count and time.

use etcd_client::Client;
use kvgit_tests::etcd::EtcdServer;
use kvgit_tests::kvgit::{Area, Workspace};
use kvgit_tests::serve::{
    etcd_files, git_files, poll_until_async, rev_parse, Remote, Serve, ServeConfig,
};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

const ENTRIES: Area<'static> = Area {
    name: "entries",
    prefix: "/t/entries/",
    path: "entries",
    mode: "kv-to-git",
};
const MAIN: &str = "refs/heads/main";
const CONVERGE: Duration = Duration::from_secs(30);

/// The open-file limit of the fault-injection run that found the leak.
const NOFILE: u64 = 1024;
/// More idle connections than `NOFILE`: without a connection limit they would take every
/// descriptor of the service.
const IDLE_CONNECTIONS: usize = 1100;
/// `MAX_CONNECTIONS` of `server/src/service/http.rs`.
const SERVER_MAX_CONNECTIONS: usize = 256;
/// Descriptors the rest of the service may open or close while we count (Git subprocess
/// pipes, etcd connections).
const FD_SLACK: usize = 48;

// Descriptor limits, counted descriptors and CPU time of a process, from util-linux and /proc.

/// Sets a process's RLIMIT_NOFILE with `prlimit --pid`.
fn set_nofile(pid: u32, soft: u64, hard: u64) {
    let out = Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={soft}:{hard}"),
        ])
        .output()
        .expect("run prlimit (util-linux)");
    assert!(
        out.status.success(),
        "prlimit --pid {pid} --nofile={soft}:{hard}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (soft, hard) RLIMIT_NOFILE of `pid` ("self" for this process), from /proc/PID/limits.
fn nofile(pid: &str) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut values = line["Max open files".len()..].split_whitespace().map(|v| {
        if v == "unlimited" {
            u64::MAX
        } else {
            v.parse().expect("a number")
        }
    });
    (values.next().expect("soft"), values.next().expect("hard"))
}

/// This test holds `IDLE_CONNECTIONS` sockets itself: raise its own soft limit (up to the
/// hard one, which needs no privilege) when it is lower.
fn ensure_own_nofile(needed: u64) {
    let (soft, hard) = nofile("self");
    if soft >= needed {
        return;
    }
    assert!(
        hard >= needed,
        "this test needs {needed} descriptors; the hard limit is {hard}"
    );
    set_nofile(std::process::id(), needed, hard);
}

/// Descriptors `pid` has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list /proc/PID/fd")
        .count()
}

/// CPU time (user + system) `pid` has used.
fn cpu_time(pid: u32) -> Duration {
    Duration::from_secs_f64(kvgit_tests::bench::cpu_secs(pid))
}

/// Opens `n` TCP connections to `addr` and sends nothing on them. Each connect must complete
/// (accepted, or queued by the kernel) within a few seconds.
async fn open_idle(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => held.push(s),
            Ok(Err(e)) => panic!("connection {i} of {n} to {addr}: {e}"),
            Err(_) => panic!("connection {i} of {n} to {addr}: no handshake within 5s"),
        }
    }
    held
}

/// How many lines of the serve log contain `needle`.
fn log_count(serve: &Serve, needle: &str) -> usize {
    std::fs::read_to_string(&serve.log)
        .expect("read serve.log")
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

async fn put(c: &mut Client, k: &str, v: &str) {
    c.put(k, v, None).await.expect("etcd put");
}

/// Waits until `repo` at main holds exactly etcd's keys of the area.
async fn wait_committed(serve: &Serve, c: &Client, repo: &Path, what: &str) {
    let ok =
        poll_until_async(CONVERGE, || {
            let mut c = c.clone();
            async move {
                etcd_files(&mut c, ENTRIES.prefix).await == git_files(repo, MAIN, ENTRIES.path)
            }
        })
        .await;
    if !ok {
        serve.fail(&format!(
            "{what}: {} did not hold etcd's keys within {CONVERGE:?}",
            repo.display()
        ));
    }
}

/// Waits until the remote's main is the local main.
fn wait_pushed(serve: &Serve, ws: &Workspace, remote: &Remote) {
    serve.wait_until(CONVERGE, "the remote to hold the local branch", || {
        let local = rev_parse(&ws.repo, MAIN);
        local.is_some() && local == remote.tip()
    });
}

/// Serve with a remote, ready and synced, its descriptors capped at `NOFILE`.
async fn start(etcd: &EtcdServer, c: &mut Client, ws: &Workspace, remote: &Remote) -> Serve {
    put(c, "/t/entries/before", "x").await;
    let serve = Serve::start(
        ws,
        etcd.endpoint(),
        &ServeConfig::fast(&[ENTRIES]).remote(remote),
    );
    serve.wait_ready();
    wait_committed(&serve, c, &ws.repo, "at start").await;
    wait_pushed(&serve, ws, remote);
    set_nofile(serve.pid, NOFILE, NOFILE);
    assert_eq!(nofile(&serve.pid.to_string()), (NOFILE, NOFILE));
    serve
}

#[tokio::test(flavor = "multi_thread")]
async fn eleven_hundred_idle_connections_under_1024_descriptors_do_not_stop_sync() {
    ensure_own_nofile(IDLE_CONNECTIONS as u64 + 512);
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let remote = Remote::init(ws.dir.path());
    let mut serve = start(&etcd, &mut c, &ws, &remote).await;
    let baseline = open_fds(serve.pid);

    let held = open_idle(serve.addr, IDLE_CONNECTIONS).await;
    // The server takes connections up to its limit and no further.
    let mut peak = 0;
    for _ in 0..20 {
        peak = peak.max(open_fds(serve.pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        peak >= baseline + SERVER_MAX_CONNECTIONS - FD_SLACK,
        "the server should be holding about {SERVER_MAX_CONNECTIONS} connections: \
         {peak} descriptors open, {baseline} before"
    );
    assert!(
        peak <= baseline + SERVER_MAX_CONNECTIONS + FD_SLACK,
        "the server went past its connection limit: {peak} descriptors open, {baseline} before"
    );

    // Sync goes on while the connections are held: commit and push.
    for round in 0..4 {
        for i in 0..5 {
            put(
                &mut c,
                &format!("/t/entries/k{i}"),
                &format!("round {round}"),
            )
            .await;
        }
        put(&mut c, &format!("/t/entries/new-{round}"), "x").await;
        wait_committed(&serve, &c, &ws.repo, &format!("round {round}")).await;
    }
    wait_pushed(&serve, &ws, &remote);
    assert_eq!(
        git_files(&remote.path, MAIN, ENTRIES.path),
        etcd_files(&mut c, ENTRIES.prefix).await,
        "the remote holds etcd's keys"
    );

    // The queued connections are taken in turn as idle ones are closed; a new one is served.
    serve.wait_until(
        Duration::from_secs(60),
        "/healthz while the idle connections are held",
        || matches!(serve.try_get("/healthz"), Ok((200, _))),
    );
    assert_eq!(held.len(), IDLE_CONNECTIONS, "still held");
    assert!(
        log_count(&serve, "HTTP connection limit reached") >= 1,
        "the limit should have been reached\n{}",
        serve.log_tail(20)
    );
    assert_eq!(
        log_count(&serve, "Too many open files") + log_count(&serve, "os error 24"),
        0,
        "the service ran out of descriptors\n{}",
        serve.log_tail(40)
    );

    drop(held);
    serve.wait_until(CONVERGE, "/healthz after the flood", || {
        matches!(serve.try_get("/healthz"), Ok((200, _)))
    });
    assert_eq!(serve.get("/healthz"), (200, "ok".to_string()));
    let (status, took) = serve.terminate();
    assert!(
        status.success(),
        "serve exited with {status} after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn running_out_of_descriptors_neither_ends_the_server_nor_spins() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let remote = Remote::init(ws.dir.path());
    let mut serve = start(&etcd, &mut c, &ws, &remote).await;

    // A soft limit just above what is open: accept soon fails with EMFILE.
    let open = open_fds(serve.pid) as u64;
    set_nofile(serve.pid, open + 4, NOFILE);
    let cpu_before = cpu_time(serve.pid);
    let started = Instant::now();
    let held = open_idle(serve.addr, 64).await;
    put(
        &mut c,
        "/t/entries/during",
        "written while descriptors ran out",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu = cpu_time(serve.pid) - cpu_before;
    let wall = started.elapsed();

    assert!(serve.running(), "serve ended\n{}", serve.log_tail(40));
    let warned = log_count(&serve, "cannot accept HTTP connections");
    assert!(
        warned >= 1,
        "accept should have failed (limit {} with {open} open)\n{}",
        open + 4,
        serve.log_tail(40)
    );
    assert!(
        warned <= 2,
        "accept errors are logged at a bounded rate: {warned} lines in {wall:?}"
    );
    // A loop retrying at once would keep a core busy the whole time.
    assert!(
        cpu < wall / 2,
        "serve used {cpu:?} of CPU in {wall:?} while accept failed"
    );

    // Descriptors come back: the server answers, and sync catches up and goes on.
    set_nofile(serve.pid, NOFILE, NOFILE);
    drop(held);
    serve.wait_until(CONVERGE, "/healthz once descriptors are back", || {
        matches!(serve.try_get("/healthz"), Ok((200, _)))
    });
    put(
        &mut c,
        "/t/entries/after",
        "written once descriptors were back",
    )
    .await;
    wait_committed(&serve, &c, &ws.repo, "after the descriptors came back").await;
    wait_pushed(&serve, &ws, &remote);
    let (status, took) = serve.terminate();
    assert!(
        status.success(),
        "serve exited with {status} after {took:?}"
    );
}

//! `kvgit serve` with a remote over SSH: a real OpenSSH server (tests/src/sshd.rs) serving
//! a bare repository to a deploy key, a real etcd and the real binary.
//!
//! - keys reach the remote over ssh, and a person's commit pushed over ssh comes back;
//! - a known_hosts with another host key: nothing is pushed, the message says so, serve
//!   keeps committing locally and stays ready;
//! - a hung remote (sshd stopped): commits continue, `git.timeout` kills every git/ssh
//!   child, and after the remote wakes everything arrives; SIGTERM during a hung push ends
//!   serve within its deadline with no child left.

use etcd_client::Client;
use kvgit_tests::etcd::EtcdServer;
use kvgit_tests::kvgit::{git_in, Area, Workspace};
use kvgit_tests::serve::{
    etcd_files, git_files, poll_until_async, rev_parse, Remote, Serve, ServeConfig,
};
use kvgit_tests::sshd::{children, SshServer};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const ENTRIES: Area<'static> = Area {
    name: "entries",
    prefix: "/t/entries/",
    path: "entries",
    mode: "both",
};
const MAIN: &str = "refs/heads/main";
const CONVERGE: Duration = Duration::from_secs(30);
/// `git.timeout` in the hung-remote tests.
const GIT_TIMEOUT: Duration = Duration::from_secs(3);
/// How much longer than the timeout a killed child may still be seen (polling, reaping).
const SLACK: Duration = Duration::from_secs(3);
const ERRORS: &str = r#"kvgit_push_total{result="error"}"#;

/// The `[git]` lines for an ssh remote at `remote` with the test's client key.
fn ssh_git_lines(sshd: &SshServer, remote: &Remote, known_hosts: &Path, timeout: &str) -> String {
    format!(
        "remote = \"{}\"\nssh_key_file = \"{}\"\nknown_hosts_file = \"{}\"\ntimeout = \"{timeout}\"\n",
        sshd.url(&remote.path),
        sshd.client_key.display(),
        known_hosts.display()
    )
}

fn start_serve(ws: &Workspace, etcd: &EtcdServer, git: String) -> Serve {
    let areas = [ENTRIES];
    let cfg = ServeConfig {
        git_extra: Some(git),
        ..ServeConfig::fast(&areas)
    };
    let serve = Serve::start(ws, etcd.endpoint(), &cfg);
    serve.wait_ready();
    serve
}

async fn put(c: &mut Client, k: &str, v: &str) {
    c.put(k, v, None).await.expect("etcd put");
}

async fn get(c: &mut Client, k: &str) -> Option<Vec<u8>> {
    let resp = c.get(k, None).await.expect("etcd get");
    resp.kvs().first().map(|kv| kv.value().to_vec())
}

/// The area's files at `rev` of `repo` (empty when the ref does not exist).
fn files(repo: &Path, rev: &str) -> BTreeMap<String, Vec<u8>> {
    if rev_parse(repo, rev).is_none() {
        return BTreeMap::new();
    }
    git_files(repo, rev, ENTRIES.path)
}

/// Waits until `repo` at `rev` holds exactly etcd's keys of the area.
async fn wait_same(serve: &Serve, c: &Client, repo: &Path, rev: &str, what: &str) {
    let ok = poll_until_async(CONVERGE, || {
        let mut c = c.clone();
        async move { etcd_files(&mut c, ENTRIES.prefix).await == files(repo, rev) }
    })
    .await;
    if !ok {
        serve.fail(&format!(
            "{what}: {} does not hold etcd's keys",
            repo.display()
        ));
    }
}

fn wait_pushed(serve: &Serve, ws: &Workspace, remote: &Remote) {
    serve.wait_until(CONVERGE, "the remote to hold the local branch", || {
        let local = rev_parse(&ws.repo, MAIN);
        local.is_some() && local == remote.tip()
    });
}

/// A person clones the remote over ssh, changes `entries/<name>` and pushes over ssh.
fn person_pushes_over_ssh(sshd: &SshServer, remote: &Remote, work: &Path, name: &str, value: &str) {
    let clone = work.join(format!("person-{name}"));
    let git = |dir: Option<&Path>, args: &[&str]| {
        let mut cmd = Command::new("git");
        if let Some(d) = dir {
            cmd.current_dir(d);
        }
        let out = cmd
            .args([
                "-c",
                "user.name=A Person",
                "-c",
                "user.email=person@example.org",
            ])
            .args(args)
            .env("GIT_SSH_COMMAND", sshd.git_ssh_command())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .expect("run git");
        assert!(
            out.status.success(),
            "git {args:?}: {}\n--- sshd log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            sshd.log_text()
        );
    };
    git(
        None,
        &[
            "clone",
            "-q",
            &sshd.url(&remote.path),
            clone.to_str().expect("utf-8"),
        ],
    );
    std::fs::create_dir_all(clone.join(ENTRIES.path)).expect("mkdir");
    std::fs::write(clone.join(ENTRIES.path).join(name), value).expect("write file");
    git(Some(&clone), &["add", "-A"]);
    git(Some(&clone), &["commit", "-q", "-m", "a person's change"]);
    git(Some(&clone), &["push", "-q", "origin", "HEAD:main"]);
}

/// git and ssh processes below `pid` (any depth), with their names.
fn git_ssh_descendants(pid: u32) -> Vec<(u32, String)> {
    let mut todo = children(pid);
    let mut found = Vec::new();
    while let Some(p) = todo.pop() {
        todo.extend(children(p));
        let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
        let comm = comm.trim().to_string();
        if comm.starts_with("git") || comm == "ssh" {
            found.push((p, comm));
        }
    }
    found
}

/// Processes (not below sshd) whose command line names `remote`: the git and ssh that
/// serve started for it, wherever they were reparented.
fn processes_for(remote: &Path, sshd: &SshServer) -> Vec<(u32, String)> {
    let server_side = sshd.pids();
    let needle = remote.display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if server_side.contains(&pid) || pid == std::process::id() {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(&needle) {
            found.push((pid, cmdline));
        }
    }
    found
}

// a ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn keys_reach_an_ssh_remote_and_a_persons_ssh_push_comes_back() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let remote = Remote::init(ws.dir.path());
    let sshd = SshServer::start(ws.dir.path());
    let serve = start_serve(
        &ws,
        &etcd,
        ssh_git_lines(&sshd, &remote, &sshd.known_hosts, "20s"),
    );

    put(&mut c, "/t/entries/a", "from-kv").await;
    wait_same(&serve, &c, &ws.repo, MAIN, "local commit").await;
    wait_pushed(&serve, &ws, &remote);
    assert_eq!(
        files(&remote.path, MAIN).get("a").map(Vec::as_slice),
        Some(&b"from-kv"[..])
    );
    assert!(
        sshd.log_text().contains("Accepted publickey for root"),
        "the push went through sshd with the key:\n{}",
        sshd.log_text()
    );

    person_pushes_over_ssh(&sshd, &remote, ws.dir.path(), "b", "from-git");
    serve.sync_now();
    serve
        .wait_until_async(CONVERGE, "the person's commit in etcd", || {
            let mut c = c.clone();
            async move { get(&mut c, "/t/entries/b").await.as_deref() == Some(&b"from-git"[..]) }
        })
        .await;
    assert_eq!(
        get(&mut c, "/t/entries/a").await.as_deref(),
        Some(&b"from-kv"[..])
    );
    wait_same(&serve, &c, &ws.repo, MAIN, "after the person's commit").await;
    let status = serve.status();
    assert!(status["push_error"].is_null(), "{status}");
}

// b ------------------------------------------------------------------------------------

/// The remote's host key changes while serve runs (a man in the middle, or a rebuilt
/// server): ssh reads known_hosts on every connection, so the next push is refused.
#[tokio::test(flavor = "multi_thread")]
async fn another_host_key_is_refused_and_nothing_is_pushed() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let remote = Remote::init(ws.dir.path());
    let sshd = SshServer::start(ws.dir.path());
    let known_hosts = ws.dir.path().join("known_hosts");
    std::fs::copy(&sshd.known_hosts, &known_hosts).expect("copy known_hosts");
    let serve = start_serve(
        &ws,
        &etcd,
        ssh_git_lines(&sshd, &remote, &known_hosts, "20s"),
    );
    put(&mut c, "/t/entries/a", "1").await;
    wait_same(&serve, &c, &ws.repo, MAIN, "local commit").await;
    wait_pushed(&serve, &ws, &remote);
    let remote_tip = remote.tip();
    let logins = sshd.log_text().matches("Accepted publickey").count();

    std::fs::copy(sshd.wrong_known_hosts(), &known_hosts).expect("swap known_hosts");
    let errors_before = serve.metric(ERRORS).unwrap_or(0.0);
    put(&mut c, "/t/entries/b", "2").await;
    wait_same(&serve, &c, &ws.repo, MAIN, "a local commit after the swap").await;
    serve.wait_until(CONVERGE, "a push error", || {
        serve.metric(ERRORS).is_some_and(|n| n > errors_before)
    });
    serve.wait_until(CONVERGE, "the host key message in /status", || {
        serve.status()["push_error"]
            .as_str()
            .is_some_and(|m| m.contains("host key did not match"))
    });
    let status = serve.status();
    let msg = status["push_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("Host key verification failed"), "{msg}");
    assert!(!msg.contains('\n'), "one line: {msg:?}");
    assert!(serve.log_tail(200).contains("host key did not match"));

    // Serve stays ready and keeps committing locally; nothing more reaches the remote.
    let before = rev_parse(&ws.repo, MAIN);
    put(&mut c, "/t/entries/c", "3").await;
    wait_same(&serve, &c, &ws.repo, MAIN, "a later local commit").await;
    assert_ne!(rev_parse(&ws.repo, MAIN), before);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(serve.get("/readyz").0, 200, "{}", serve.get("/readyz").1);
    assert_eq!(remote.tip(), remote_tip, "nothing may reach the remote");
    assert_eq!(
        sshd.log_text().matches("Accepted publickey").count(),
        logins,
        "ssh must stop before authenticating:\n{}",
        sshd.log_text()
    );
}

/// With the wrong host key from the start, recording goes on locally (SPEC: a remote at
/// fault delays pushes only): serve becomes ready, commits, names the host key in
/// `/status`, and nothing reaches the remote.
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_host_key_at_start_delays_pushes_only() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let remote = Remote::init(ws.dir.path());
    let sshd = SshServer::start(ws.dir.path());
    let wrong = sshd.wrong_known_hosts();
    let areas = [ENTRIES];
    let cfg = ServeConfig {
        git_extra: Some(ssh_git_lines(&sshd, &remote, &wrong, "20s")),
        ..ServeConfig::fast(&areas)
    };
    let serve = Serve::start(&ws, etcd.endpoint(), &cfg);
    serve.wait_ready();
    put(&mut c, "/t/entries/a", "1").await;
    serve.wait_until(CONVERGE, "a committed locally", || {
        files(&ws.repo, MAIN).contains_key("a")
    });
    serve.wait_until(CONVERGE, "/status naming the host key", || {
        let status = serve.status();
        ["push_error", "sync_error"].iter().any(|k| {
            status[k]
                .as_str()
                .is_some_and(|e| e.contains("host key did not match"))
        })
    });
    assert_eq!(remote.tip(), None, "nothing may reach the remote");
    assert!(!sshd.log_text().contains("Accepted publickey"));
}

// c ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_remote_delays_pushes_only_and_every_child_is_killed_in_time() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let remote = Remote::init(ws.dir.path());
    let sshd = SshServer::start(ws.dir.path());
    let serve = start_serve(
        &ws,
        &etcd,
        ssh_git_lines(&sshd, &remote, &sshd.known_hosts, "3s"),
    );

    put(&mut c, "/t/entries/before", "1").await;
    wait_same(&serve, &c, &ws.repo, MAIN, "first commit").await;
    wait_pushed(&serve, &ws, &remote);
    let errors_before = serve.metric(ERRORS).unwrap_or(0.0);

    sshd.signal_all("STOP");
    let hung_at = Instant::now();
    let mut first_seen: BTreeMap<u32, (Instant, String)> = BTreeMap::new();
    let mut longest = Duration::ZERO;
    let mut watch = |first_seen: &mut BTreeMap<u32, (Instant, String)>| {
        let now = Instant::now();
        let alive = git_ssh_descendants(serve.pid);
        first_seen.retain(|pid, _| alive.iter().any(|(p, _)| p == pid));
        for (pid, comm) in alive {
            let (since, comm) = first_seen.entry(pid).or_insert((now, comm)).clone();
            let age = now - since;
            longest = longest.max(age);
            if age > GIT_TIMEOUT + SLACK {
                serve.fail(&format!(
                    "{comm} (pid {pid}) of serve still alive after {age:?} (git.timeout {GIT_TIMEOUT:?})"
                ));
            }
        }
    };
    // Commits keep coming within seconds while the remote hangs.
    for i in 0..3 {
        let key = format!("/t/entries/during-{i}");
        put(&mut c, &key, "x").await;
        let committed = Instant::now();
        loop {
            watch(&mut first_seen);
            if files(&ws.repo, MAIN).contains_key(&format!("during-{i}")) {
                break;
            }
            if committed.elapsed() > Duration::from_secs(10) {
                serve.fail(&format!(
                    "{key} not committed locally within 10s of a hung remote"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            serve.get("/readyz").0,
            200,
            "/readyz while the remote hangs"
        );
    }
    // Keep watching for a few timeouts: pushes and fetches start, hang, and are killed.
    let mut saw_child = false;
    while hung_at.elapsed() < GIT_TIMEOUT * 4 {
        watch(&mut first_seen);
        saw_child |= !first_seen.is_empty();
        assert_eq!(
            serve.get("/readyz").0,
            200,
            "/readyz while the remote hangs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        saw_child,
        "expected a git/ssh child of serve trying the hung remote"
    );
    serve.wait_until(CONVERGE, "push errors to grow", || {
        serve.metric(ERRORS).is_some_and(|n| n > errors_before)
    });
    let msg = serve.status()["push_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("did not finish within"), "{msg}");
    assert!(
        remote.tip() != rev_parse(&ws.repo, MAIN),
        "the remote was hung"
    );
    // The metrics an operator alerts on say so too.
    serve.wait_until(
        CONVERGE,
        "unpushed commits and failed fetches to show",
        || {
            serve
                .metric(r#"kvgit_unpushed_commits{area="entries"}"#)
                .is_some_and(|n| n >= 1.0)
                && serve
                    .metric(r#"kvgit_fetch_total{result="error"}"#)
                    .is_some_and(|n| n >= 1.0)
        },
    );
    let pushed_at = serve
        .metric("kvgit_last_push_success_timestamp_seconds")
        .unwrap_or(0.0);
    assert!(pushed_at > 0.0, "the first push was recorded");
    eprintln!("longest git/ssh child while hung: {longest:?}");

    sshd.signal_all("CONT");
    wait_pushed(&serve, &ws, &remote);
    wait_same(&serve, &c, &remote.path, MAIN, "after the remote woke up").await;
    serve.wait_pushed_since(CONVERGE, "entries", pushed_at);
    let _ = git_in(&remote.path, &["fsck", "--no-progress"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_hung_push_exits_in_time_with_no_child_left() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let remote = Remote::init(ws.dir.path());
    let sshd = SshServer::start(ws.dir.path());
    let mut serve = start_serve(
        &ws,
        &etcd,
        ssh_git_lines(&sshd, &remote, &sshd.known_hosts, "3s"),
    );
    put(&mut c, "/t/entries/a", "1").await;
    wait_pushed(&serve, &ws, &remote);

    sshd.signal_all("STOP");
    put(&mut c, "/t/entries/b", "2").await;
    serve.wait_until(CONVERGE, "the local commit", || {
        files(&ws.repo, MAIN).contains_key("b")
    });
    serve.wait_until(CONVERGE, "a git/ssh child on the hung remote", || {
        !git_ssh_descendants(serve.pid).is_empty()
    });
    let children_then = git_ssh_descendants(serve.pid);
    let (status, took) = serve.terminate();
    // 20s shutdown deadline; each hung push is cut after git.timeout.
    assert!(took < Duration::from_secs(20) + SLACK, "exit took {took:?}");
    assert!(status.success(), "exit status {status}");
    for (pid, comm) in &children_then {
        let alive =
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm);
        assert!(!alive, "{comm} (pid {pid}) outlived serve");
    }
    let left = processes_for(&remote.path, &sshd);
    assert!(
        left.is_empty(),
        "processes for the remote left behind: {left:?}"
    );
    sshd.signal_all("CONT");
}

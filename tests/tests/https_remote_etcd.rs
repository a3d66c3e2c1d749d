//! `kvgit serve` with a remote over HTTP(S) with a token (`git.https_token_file`): git's own
//! `git http-backend` behind a small HTTP server that requires basic authentication
//! (tests/src/git_http.rs), a real etcd and the real binary. The server is plain http on
//! 127.0.0.1: kvgit passes the token the same way for https, and TLS would only add
//! certificates to what these tests check.
//!
//! - keys reach the remote with the token, and a person's commit pushed with the token
//!   comes back;
//! - a revoked token: the push is refused with one line naming `git.https_token_file`,
//!   nothing reaches the remote; with a wrong token from the start serve records locally
//!   and `/status` names the setting;
//! - the token is in no log line, no `/status`, and no command line or environment of any
//!   git (or helper) process serve started during the run.

use etcd_client::Client;
use kvgit_tests::etcd::EtcdServer;
use kvgit_tests::git_http::GitHttpServer;
use kvgit_tests::kvgit::{Area, Workspace};
use kvgit_tests::serve::{
    etcd_files, git_files, poll_until_async, rev_parse, Remote, Serve, ServeConfig,
};
use kvgit_tests::sshd::children;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ENTRIES: Area<'static> = Area {
    name: "entries",
    prefix: "/t/entries/",
    path: "entries",
    mode: "both",
};
const MAIN: &str = "refs/heads/main";
const CONVERGE: Duration = Duration::from_secs(30);
const USER: &str = "x-access-token";
const ERRORS: &str = r#"kvgit_push_total{result="error"}"#;

/// A token no other text in the run contains by chance.
fn token(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!("kvgt_{tag}_{}_{nanos}", std::process::id())
}

/// The remote `served/remote.git` behind an HTTP server accepting `USER`:`token` only.
fn remote_over_http(ws: &Workspace, token: &str) -> (Remote, GitHttpServer) {
    let root = ws.dir.path().join("served");
    std::fs::create_dir_all(&root).expect("mkdir served");
    let remote = Remote::init(&root);
    let server = GitHttpServer::start(&root, USER, token);
    (remote, server)
}

/// Writes `token` (with the newline an editor adds) to a file and returns the `[git]` lines.
fn https_git_lines(ws: &Workspace, server: &GitHttpServer, remote: &Remote, token: &str) -> String {
    let file = ws.dir.path().join("git_token");
    std::fs::write(&file, format!("{token}\n")).expect("write token file");
    format!(
        "remote = \"{}\"\nhttps_token_file = \"{}\"\ntimeout = \"20s\"\n",
        server.url(&remote.path),
        file.display()
    )
}

fn start_serve(ws: &Workspace, etcd: &EtcdServer, git: String) -> Serve {
    let areas = [ENTRIES];
    let cfg = ServeConfig {
        git_extra: Some(git),
        ..ServeConfig::fast(&areas)
    };
    Serve::start(ws, etcd.endpoint(), &cfg)
}

async fn put(c: &mut Client, k: &str, v: &str) {
    c.put(k, v, None).await.expect("etcd put");
}

async fn get(c: &mut Client, k: &str) -> Option<Vec<u8>> {
    let resp = c.get(k, None).await.expect("etcd get");
    resp.kvs().first().map(|kv| kv.value().to_vec())
}

fn files(repo: &Path, rev: &str) -> BTreeMap<String, Vec<u8>> {
    if rev_parse(repo, rev).is_none() {
        return BTreeMap::new();
    }
    git_files(repo, rev, ENTRIES.path)
}

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

/// A person clones over http with the token in their own URL, changes `entries/<name>` and
/// pushes.
fn person_pushes(server: &GitHttpServer, remote: &Remote, token: &str, work: &Path, name: &str) {
    let clone = work.join(format!("person-{name}"));
    let url = server
        .url(&remote.path)
        .replacen("http://", &format!("http://{USER}:{token}@"), 1);
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
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .output()
            .expect("run git");
        assert!(
            out.status.success(),
            "git {:?}: {}",
            args.first(),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(None, &["clone", "-q", &url, clone.to_str().expect("utf-8")]);
    std::fs::create_dir_all(clone.join(ENTRIES.path)).expect("mkdir");
    std::fs::write(clone.join(ENTRIES.path).join(name), "from-git").expect("write file");
    git(Some(&clone), &["add", "-A"]);
    git(Some(&clone), &["commit", "-q", "-m", "a person's change"]);
    git(Some(&clone), &["push", "-q", "origin", "HEAD:main"]);
}

/// Per pid: its command line (for messages), and the raw bytes of every cmdline and
/// environ read from /proc.
type Seen = BTreeMap<u32, (String, Vec<u8>)>;

/// Watches every process below serve (git, its remote helper, the credential helper's
/// shell) on a thread, recording each one's command line and environment.
struct Watcher {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    fn start(pid: u32) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let (s, r) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let mut todo = children(pid);
                while let Some(p) = todo.pop() {
                    todo.extend(children(p));
                    let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                    let environ = std::fs::read(format!("/proc/{p}/environ")).unwrap_or_default();
                    if cmdline.is_empty() {
                        continue;
                    }
                    let mut all = cmdline.clone();
                    all.extend_from_slice(&environ);
                    let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                    r.lock()
                        .expect("seen")
                        .entry(p)
                        .or_insert((text, Vec::new()))
                        .1
                        .extend(all);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Watcher {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Stops watching; the command lines seen, and whether any cmdline/environ held `needle`.
    fn finish(mut self, needle: &str) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("watcher");
        }
        let seen = self.seen.lock().expect("seen");
        let lines = seen.values().map(|(l, _)| l.clone()).collect();
        let leaks = seen
            .values()
            .filter(|(_, raw)| String::from_utf8_lossy(raw).contains(needle))
            .map(|(l, _)| l.clone())
            .collect();
        (lines, leaks)
    }
}

/// Credential directories serve left in the temp dir.
fn credential_dirs(pid: u32) -> Vec<PathBuf> {
    let prefix = format!("kvgit-credential-{pid}-");
    std::fs::read_dir(std::env::temp_dir())
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

fn assert_no_token(serve: &Serve, token: &str) {
    let log = std::fs::read_to_string(&serve.log).expect("read serve log");
    assert!(!log.contains(token), "the token is in the serve log");
    let status = serve.status().to_string();
    assert!(!status.contains(token), "the token is in /status: {status}");
    let (_, metrics) = serve.get("/metrics");
    assert!(!metrics.contains(token), "the token is in /metrics");
}

// a ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn keys_reach_an_https_remote_with_the_token_and_a_persons_push_comes_back() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let token = token("good");
    let (remote, server) = remote_over_http(&ws, &token);
    let mut serve = start_serve(&ws, &etcd, https_git_lines(&ws, &server, &remote, &token));
    let watcher = Watcher::start(serve.pid);
    serve.wait_ready();

    put(&mut c, "/t/entries/a", "from-kv").await;
    wait_same(&serve, &c, &ws.repo, MAIN, "local commit").await;
    wait_pushed(&serve, &ws, &remote);
    assert_eq!(
        files(&remote.path, MAIN).get("a").map(Vec::as_slice),
        Some(&b"from-kv"[..])
    );
    assert!(server.pushes() >= 1, "{:?}", server.requests());

    person_pushes(&server, &remote, &token, ws.dir.path(), "b");
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

    // A 401 first, then the credential: git asked kvgit's helper, nothing else.
    assert!(server.count(401) >= 1, "{:?}", server.requests());
    assert_no_token(&serve, &token);
    let (status, _) = serve.terminate();
    assert!(status.success(), "exit status {status}");
    let (lines, leaks) = watcher.finish(&token);
    eprintln!("{} processes seen below serve", lines.len());
    assert!(
        lines.iter().any(|l| l.contains("remote-http")),
        "expected to see git's http helper below serve: {lines:?}"
    );
    assert!(
        leaks.is_empty(),
        "the token in a process's argv or environment: {leaks:?}"
    );
    assert!(
        lines.iter().all(|l| !l.contains("@127.0.0.1")),
        "no user info in any URL: {lines:?}"
    );
    assert_eq!(
        credential_dirs(serve.pid),
        Vec::<PathBuf>::new(),
        "credential files left behind"
    );
}

// b ------------------------------------------------------------------------------------

/// The hosting side revokes the token while serve runs: the next push is refused with one
/// line naming the setting, and nothing reaches the remote.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_token_is_named_in_one_line_and_nothing_is_pushed() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let token = token("revoked");
    let (remote, server) = remote_over_http(&ws, &token);
    let serve = start_serve(&ws, &etcd, https_git_lines(&ws, &server, &remote, &token));
    serve.wait_ready();
    put(&mut c, "/t/entries/a", "1").await;
    wait_same(&serve, &c, &ws.repo, MAIN, "local commit").await;
    wait_pushed(&serve, &ws, &remote);
    let remote_tip = remote.tip();

    server.set_token(&self::token("new"));
    // A push let in before the revocation (kvgit also pushes checkpoints) may still be
    // sending: it counts as before.
    server.wait_idle();
    let pushes = server.pushes();
    let errors_before = serve.metric(ERRORS).unwrap_or(0.0);
    put(&mut c, "/t/entries/b", "2").await;
    wait_same(
        &serve,
        &c,
        &ws.repo,
        MAIN,
        "a local commit after the revocation",
    )
    .await;
    serve.wait_until(CONVERGE, "a push error", || {
        serve.metric(ERRORS).is_some_and(|n| n > errors_before)
    });
    serve.wait_until(CONVERGE, "the credentials message in /status", || {
        serve.status()["push_error"]
            .as_str()
            .is_some_and(|m| m.contains("git.https_token_file"))
    });
    let msg = serve.status()["push_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    eprintln!("push_error: {msg}");
    assert!(msg.contains("refused the credentials"), "{msg}");
    assert!(!msg.contains('\n'), "one line: {msg:?}");
    assert!(!msg.contains(&token), "{msg}");
    assert!(serve.log_tail(200).contains("git.https_token_file"));

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(serve.get("/readyz").0, 200, "{}", serve.get("/readyz").1);
    assert_eq!(remote.tip(), remote_tip, "nothing may reach the remote");
    assert_eq!(server.pushes(), pushes, "{:?}", server.requests());
    assert_no_token(&serve, &token);
}

/// A wrong token from the start: recording goes on locally (SPEC: a remote at fault delays
/// pushes only), `/status` names the setting, and nothing reaches the remote.
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_token_at_start_delays_pushes_only() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let (remote, server) = remote_over_http(&ws, &token("right"));
    let wrong = token("wrong");
    let serve = start_serve(&ws, &etcd, https_git_lines(&ws, &server, &remote, &wrong));
    serve.wait_ready();
    put(&mut c, "/t/entries/a", "1").await;
    serve.wait_until(CONVERGE, "a committed locally", || {
        files(&ws.repo, MAIN).contains_key("a")
    });
    serve.wait_until(CONVERGE, "/status naming git.https_token_file", || {
        let status = serve.status();
        ["push_error", "sync_error"].iter().any(|k| {
            status[k]
                .as_str()
                .is_some_and(|e| e.contains("git.https_token_file"))
        })
    });
    assert_eq!(remote.tip(), None, "nothing may reach the remote");
    assert_eq!(server.pushes(), 0, "{:?}", server.requests());
    assert!(server.count(401) >= 1, "{:?}", server.requests());
    assert_no_token(&serve, &wrong);
}

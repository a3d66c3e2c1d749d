//! `kvgit serve` under the faults an operator meets: it records what happens after a
//! deploy, holds an accidental wipe back while the other areas keep committing, and its
//! `/readyz`, `/status` and lag gauge tell the truth within seconds when etcd stops, when a
//! commit cannot be written (a missing object, a full disk) and when they recover.

use etcd_client::{Client, DeleteOptions};
use kvgit_tests::etcd::EtcdServer;
use kvgit_tests::kvgit::{Area, Workspace};
use kvgit_tests::serve::{git_files, Serve, ServeConfig};
use std::process::Command;
use std::time::{Duration, Instant};

const ENTRIES: Area<'static> = Area {
    name: "entries",
    prefix: "/f/entries/",
    path: "entries",
    mode: "both",
};
const EVENTS: Area<'static> = Area {
    name: "events",
    prefix: "/f/events/",
    path: "events",
    mode: "kv-to-git",
};

const MAIN: &str = "refs/heads/main";
/// How long a fault may take to show: "within seconds".
const SHOWS: Duration = Duration::from_secs(8);
const CONVERGE: Duration = Duration::from_secs(30);

async fn put(c: &mut Client, k: &str, v: impl Into<Vec<u8>>) {
    c.put(k, v.into(), None).await.expect("etcd put");
}

async fn get(c: &mut Client, k: &str) -> Option<Vec<u8>> {
    let resp = c.get(k, None).await.expect("etcd get");
    resp.kvs().first().map(|kv| kv.value().to_vec())
}

fn area<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["areas"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["area"] == name))
        .unwrap_or_else(|| panic!("no area {name} in {status}"))
}

fn readyz(serve: &Serve) -> (u16, String) {
    serve.try_get("/readyz").unwrap_or((0, String::new()))
}

fn ready(serve: &Serve) -> bool {
    readyz(serve).0 == 200
}

/// Deploy, then record, through the service: the first `apply` loads Git into a fresh
/// etcd, `serve` starts after it, and an operational change is committed, not reverted.
#[tokio::test(flavor = "multi_thread")]
async fn serve_started_after_a_deploy_records_the_operational_change() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[ENTRIES]);
    ws.kvgit(&["plan"]).ok();
    ws.person_commits(
        &[
            ("entries/node-1/status", Some(b"up")),
            ("entries/node-2/status", Some(b"up")),
        ],
        "desired state",
    );
    ws.kvgit(&["apply"]).ok();
    let serve = Serve::start(&ws, etcd.endpoint(), &ServeConfig::fast(&[ENTRIES]));
    serve.wait_ready();
    put(&mut c, "/f/entries/node-1/status", "down").await;
    serve.wait_until(CONVERGE, "the change committed", || {
        git_files(&ws.repo, MAIN, "entries")
            .get("node-1/status")
            .map(Vec::as_slice)
            == Some(&b"down"[..])
    });
    // Several fetch/apply intervals later the live value is still the operator's.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        get(&mut c, "/f/entries/node-1/status").await.as_deref(),
        Some(&b"down"[..])
    );
    assert_eq!(area(&serve.status(), "entries")["drift"], 0);
}

/// An accidental wipe of one area is held back (not committed), shown in `/status`,
/// `/readyz` and `kvgit_export_refused`, while the other areas keep committing; putting the
/// keys back lets it go, and an operator's `kvgit export --allow-mass-delete` records it.
#[tokio::test(flavor = "multi_thread")]
async fn a_wipe_is_held_back_while_other_areas_keep_committing() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    for i in 0..20 {
        put(&mut c, &format!("/f/entries/k{i:02}"), "v").await;
    }
    let serve = Serve::start(&ws, etcd.endpoint(), &ServeConfig::fast(&[ENTRIES, EVENTS]));
    serve.wait_ready();
    serve.wait_until(CONVERGE, "entries committed", || {
        git_files(&ws.repo, MAIN, "entries").len() == 20
    });

    let wipe = |c: &mut Client| {
        let mut c = c.clone();
        async move {
            c.delete("/f/entries/", Some(DeleteOptions::new().with_prefix()))
                .await
                .expect("wipe");
        }
    };
    wipe(&mut c).await;
    put(&mut c, "/f/events/e1", "happened").await;
    serve.wait_until(SHOWS, "the wipe to be held", || {
        area(&serve.status(), "entries")["held"]
            .as_str()
            .is_some_and(|h| h.contains("not recording the deletion of 20 of 20 keys"))
    });
    serve.wait_until(CONVERGE, "the other area to commit", || {
        git_files(&ws.repo, MAIN, "events").contains_key("e1")
    });
    let (code, body) = readyz(&serve);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("mass delete held back"), "{body}");
    assert_eq!(
        serve.metric(r#"kvgit_export_refused{area="entries"}"#),
        Some(1.0)
    );
    assert_eq!(
        git_files(&ws.repo, MAIN, "entries").len(),
        20,
        "not committed"
    );

    // The keys come back (a restore): nothing to record, the hold is gone.
    for i in 0..20 {
        put(&mut c, &format!("/f/entries/k{i:02}"), "v").await;
    }
    serve.wait_until(CONVERGE, "the hold to clear", || {
        area(&serve.status(), "entries")["held"].is_null() && ready(&serve)
    });
    assert_eq!(git_files(&ws.repo, MAIN, "entries").len(), 20);
    assert_eq!(
        serve.metric(r#"kvgit_export_refused{area="entries"}"#),
        Some(0.0)
    );

    // The operator means it this time.
    wipe(&mut c).await;
    serve.wait_until(SHOWS, "the second wipe to be held", || {
        area(&serve.status(), "entries")["held"].is_string()
    });
    ws.kvgit(&["export", "--area", "entries", "--allow-mass-delete"])
        .ok();
    assert!(git_files(&ws.repo, MAIN, "entries").is_empty());
    let followed = kvgit_tests::serve::poll_until(CONVERGE, || {
        area(&serve.status(), "entries")["held"].is_null() && ready(&serve)
    });
    if !followed {
        serve.fail(&format!(
            "serve did not follow the operator's export: {:?}\n{}",
            readyz(&serve),
            serve.status()
        ));
    }
    put(&mut c, "/f/entries/after", "1").await;
    serve.wait_until(CONVERGE, "a new key committed", || {
        git_files(&ws.repo, MAIN, "entries").contains_key("after")
    });
}

/// A stopped etcd (SIGSTOP: connections stay open, nothing answers) shows in `/readyz`
/// within seconds, not after the request timeout, and readiness comes back with it.
#[tokio::test(flavor = "multi_thread")]
async fn readyz_fails_within_seconds_while_etcd_is_stopped() {
    let etcd = EtcdServer::start();
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let serve = Serve::start(&ws, etcd.endpoint(), &ServeConfig::fast(&[EVENTS]));
    serve.wait_ready();
    let pid = etcd.pid().to_string();
    let signal = |sig: &str| {
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("run kill");
        assert!(ok.success());
    };
    signal("-STOP");
    let stopped = Instant::now();
    let shown = kvgit_tests::serve::poll_until(SHOWS, || readyz(&serve).0 == 503);
    let status = serve.status();
    signal("-CONT");
    assert!(
        shown,
        "/readyz still 200 {:?} after SIGSTOP",
        stopped.elapsed()
    );
    assert_eq!(status["backend_ok"], false, "{status}");
    assert!(
        status["backend_error"]
            .as_str()
            .is_some_and(|e| e.contains("no answer")),
        "{status}"
    );
    serve.wait_until(CONVERGE, "ready again after SIGCONT", || ready(&serve));
}

/// A commit that cannot be written (the area's checkpoint names an object that is not
/// there) makes `/readyz` fail naming the area and the cause, the lag gauge grows with the
/// waiting change, and both recover once the repository is repaired.
#[tokio::test(flavor = "multi_thread")]
async fn readyz_and_the_lag_gauge_show_an_area_that_cannot_commit() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let serve = Serve::start(&ws, etcd.endpoint(), &ServeConfig::fast(&[ENTRIES, EVENTS]));
    serve.wait_ready();
    put(&mut c, "/f/entries/a", "1").await;
    serve.wait_until(CONVERGE, "a committed", || {
        git_files(&ws.repo, MAIN, "entries").contains_key("a")
    });
    let cp_ref = ws.repo.join("refs/kvgit/checkpoints/entries");
    let good = std::fs::read_to_string(&cp_ref).expect("a loose checkpoint ref");
    std::fs::write(&cp_ref, "0123456789abcdef0123456789abcdef01234567\n").expect("break it");

    put(&mut c, "/f/entries/b", "1").await;
    serve.wait_until(
        SHOWS + Duration::from_secs(2),
        "/readyz to name the area",
        || {
            let (code, body) = readyz(&serve);
            code == 503 && body.contains("entries") && body.contains("0123456789abcdef")
        },
    );
    let status = serve.status();
    assert!(
        area(&status, "entries")["blocked"]
            .as_str()
            .is_some_and(|b| b.contains("cannot sync")),
        "{status}"
    );
    assert!(area(&status, "events")["blocked"].is_null(), "{status}");
    let lag = || {
        serve
            .metric(r#"kvgit_sync_lag_seconds{area="entries"}"#)
            .unwrap_or(0.0)
    };
    serve.wait_until(SHOWS, "the lag gauge to grow", || lag() >= 2.0);
    let status_lag = area(&serve.status(), "entries")["lag_seconds"]
        .as_f64()
        .expect("lag");
    assert!(
        (status_lag - lag()).abs() < 3.0,
        "gauge {} vs /status {status_lag}",
        lag()
    );

    std::fs::write(&cp_ref, good).expect("repair");
    serve.wait_until(CONVERGE, "b committed after the repair", || {
        git_files(&ws.repo, MAIN, "entries").contains_key("b")
    });
    serve.wait_until(CONVERGE, "ready and no lag", || {
        ready(&serve) && lag() == 0.0
    });
}

/// A full disk under the repository: commits fail, `/readyz` says so, nothing is lost, and
/// everything is committed once there is room again. The repository lives on a small tmpfs.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_shows_in_readyz_and_nothing_is_lost() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let mount = Mount::tmpfs(&ws.repo, "16m");
    let serve = Serve::start(&ws, etcd.endpoint(), &ServeConfig::fast(&[EVENTS]));
    serve.wait_ready();
    // Fill the disk up to the last few KiB.
    let filler = ws.repo.join("filler");
    let free = mount.free_bytes();
    std::fs::write(&filler, vec![0u8; free.saturating_sub(8 * 1024) as usize]).expect("fill");
    for i in 0..4 {
        put(&mut c, &format!("/f/events/big-{i}"), vec![b'x'; 64 * 1024]).await;
    }
    serve.wait_until(SHOWS + Duration::from_secs(4), "/readyz to fail", || {
        let (code, body) = readyz(&serve);
        code == 503 && body.contains("events")
    });
    std::fs::remove_file(&filler).expect("make room");
    serve.wait_until(
        CONVERGE,
        "every key committed after the disk has room",
        || git_files(&ws.repo, MAIN, "events").len() == 4,
    );
    serve.wait_until(CONVERGE, "ready again", || ready(&serve));
    drop(serve);
    drop(mount);
}

/// A tmpfs mounted for one test, unmounted on drop.
struct Mount(std::path::PathBuf);

impl Mount {
    fn tmpfs(at: &std::path::Path, size: &str) -> Mount {
        std::fs::create_dir_all(at).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount a tmpfs (the tests run as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Mount(at.to_owned())
    }

    fn free_bytes(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.0)
            .output()
            .expect("run df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df prints the free bytes")
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

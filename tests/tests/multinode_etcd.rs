//! Several `kvgit serve` processes on one etcd and one remote: each area owned exactly once
//! and spread by rendezvous hashing, takeover after `kill -9` within TTL + 5 s, no lost or
//! doubled commits, and a paused (SIGSTOP) owner that never pushes a stale commit.

use etcd_client::Client;
use kvgit_tests::etcd::EtcdServer;
use kvgit_tests::kvgit::{Area, Workspace};
use kvgit_tests::serve::{
    diff, etcd_files, git_files, log, trailers, wait_until, wait_until_async, Remote, Serve,
    ServeConfig,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

const MAIN: &str = "main";
const TTL: Duration = Duration::from_secs(3);
const CONVERGE: Duration = Duration::from_secs(60);

const AREA_NAMES: [&str; 6] = ["a0", "a1", "a2", "a3", "a4", "a5"];
const NODES: [&str; 3] = ["core-1", "core-2", "core-3"];

fn areas() -> Vec<Area<'static>> {
    AREA_NAMES
        .iter()
        .map(|n| Area {
            name: n,
            prefix: Box::leak(format!("/m/{n}/").into_boxed_str()),
            path: Box::leak(format!("m/{n}").into_boxed_str()),
            mode: "kv-to-git",
        })
        .collect()
}

/// One node: its own workspace (local repository) and process, sharing etcd and the remote.
struct Node {
    name: &'static str,
    ws: Workspace,
    serve: Serve,
}

fn start_node(
    name: &'static str,
    etcd: &EtcdServer,
    remote_path: &Path,
    areas: &[Area<'static>],
) -> Node {
    let ws = Workspace::new(etcd.endpoint(), areas);
    let mut cfg = ServeConfig::fast(areas);
    cfg.remote = Some(remote_path.to_path_buf());
    cfg.node = Some(name);
    cfg.lease_ttl = Some("3s");
    let serve = Serve::start(&ws, etcd.endpoint(), &cfg);
    Node { name, ws, serve }
}

/// Per area, the nodes whose `/status` says they own it.
fn owners(nodes: &[&Node]) -> BTreeMap<String, Vec<&'static str>> {
    let mut out: BTreeMap<String, Vec<&'static str>> = AREA_NAMES
        .iter()
        .map(|a| (a.to_string(), Vec::new()))
        .collect();
    for n in nodes {
        let Ok((200, body)) = n.serve.try_get("/status") else {
            continue;
        };
        let status: serde_json::Value = serde_json::from_str(&body).expect("status json");
        for a in status["areas"].as_array().expect("areas") {
            if a["owned_here"].as_bool() == Some(true) {
                let name = a["area"].as_str().expect("area name").to_string();
                out.entry(name).or_default().push(n.name);
            }
        }
    }
    out
}

/// Each area owned by exactly one of `nodes`.
fn owned_exactly_once(nodes: &[&Node]) -> bool {
    owners(nodes).values().all(|o| o.len() == 1)
}

/// Along the remote branch (oldest first), each area's `Kvgit-Revision` only grows: no
/// event range is committed twice.
fn revisions_only_grow(remote: &Remote) {
    let mut history = log(&remote.path, MAIN);
    history.reverse();
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for c in &history {
        let t = trailers(&c.message);
        let (Some(area), Some(rev)) = (t.get("Kvgit-Area"), t.get("Kvgit-Revision")) else {
            continue;
        };
        let rev: u64 = rev.parse().expect("numeric revision");
        if let Some(prev) = last.get(area) {
            assert!(
                rev > *prev,
                "area {area}: commit {} has Kvgit-Revision {rev} after {prev} (committed twice)",
                c.id
            );
        }
        last.insert(area.clone(), rev);
    }
}

async fn put(c: &mut Client, key: &str, value: &str) -> i64 {
    c.put(key, value, None)
        .await
        .expect("etcd put")
        .header()
        .expect("header")
        .revision()
}

/// The remote's tree equals etcd for every area.
async fn converged(c: &mut Client, remote: &Remote, areas: &[Area<'_>]) -> Result<(), String> {
    for a in areas {
        let kv = etcd_files(c, a.prefix).await;
        let git = git_files(&remote.path, MAIN, a.path);
        let d = diff(&kv, &git);
        if !d.is_empty() {
            return Err(format!("area {}: {d}", a.name));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_spread_areas_and_take_over_after_kill9_without_loss_or_doubles() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = Remote::init(dir.path());
    let areas = areas();
    for a in &areas {
        put(&mut c, &format!("{}seed", a.prefix), "0").await;
    }
    let mut nodes: Vec<Node> = NODES
        .iter()
        .map(|n| start_node(n, &etcd, &remote.path, &areas))
        .collect();

    // Every area owned exactly once, as rendezvous hashing over the three names says.
    let all: Vec<&Node> = nodes.iter().collect();
    wait_until(CONVERGE, "every area owned exactly once", || {
        owned_exactly_once(&all)
    });
    let expected: BTreeMap<String, Vec<&str>> = AREA_NAMES
        .iter()
        .map(|a| {
            let o = sync_core::rendezvous_owner(a, NODES).expect("an owner");
            (a.to_string(), vec![o])
        })
        .collect();
    // A node that joined late may still be handing over: wait for the stable spread.
    wait_until(CONVERGE, "the rendezvous spread", || {
        owners(&all) == expected
    });
    for n in NODES {
        assert!(
            expected.values().any(|o| o[0] == n),
            "{n} owns nothing: {expected:?}"
        );
    }
    for n in &nodes {
        for (area, o) in &expected {
            let series = format!("kvgit_area_owner{{area=\"{area}\"}}");
            let want = if o[0] == n.name { 1.0 } else { 0.0 };
            assert_eq!(n.serve.metric(&series), Some(want), "{} {series}", n.name);
        }
    }

    // `kvgit status` (a one-shot process) reads the same owners from etcd.
    let out = nodes[0].ws.kvgit(&["status", "--json"]).ok().stdout;
    let status: serde_json::Value = serde_json::from_str(&out).expect("status json");
    for a in status["areas"].as_array().expect("areas") {
        let name = a["area"].as_str().expect("name");
        assert_eq!(a["owner"].as_str(), Some(expected[name][0]), "{name}: {a}");
    }

    // Writes to every area while the owner of some of them is killed.
    let victim = nodes
        .iter()
        .position(|n| n.name == expected["a0"][0])
        .expect("a0's owner");
    let victim_areas: Vec<String> = expected
        .iter()
        .filter(|(_, o)| o[0] == nodes[victim].name)
        .map(|(a, _)| a.clone())
        .collect();
    let mut killed_at = None;
    for round in 0..60 {
        for a in &areas {
            put(
                &mut c,
                &format!("{}k{}", a.prefix, round % 25),
                &round.to_string(),
            )
            .await;
        }
        if round == 30 {
            nodes[victim].serve.kill9();
            killed_at = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let killed_at = killed_at.expect("killed");
    let victim_name = nodes[victim].name;
    let dead = nodes.remove(victim);
    let alive: Vec<&Node> = nodes.iter().collect();
    wait_until(
        TTL + Duration::from_secs(5),
        "the survivors to own every area",
        || owned_exactly_once(&alive),
    );
    let took = killed_at.elapsed();
    assert!(
        took <= TTL + Duration::from_secs(5),
        "takeover of {victim_areas:?} took {took:?}"
    );
    for a in &victim_areas {
        assert!(
            !owners(&alive)[a].contains(&victim_name),
            "{a} still owned by the dead node"
        );
    }

    // More writes after the takeover, then the remote converges to etcd.
    for a in &areas {
        put(&mut c, &format!("{}after", a.prefix), "takeover").await;
        c.delete(format!("{}k3", a.prefix), None)
            .await
            .expect("delete");
    }
    wait_until_async(CONVERGE, "the remote to converge to etcd", || {
        let remote = &remote;
        let areas = &areas;
        let endpoint = etcd.endpoint().to_string();
        async move {
            let mut c = Client::connect([endpoint], None).await.expect("connect");
            converged(&mut c, remote, areas).await.is_ok()
        }
    })
    .await;
    if let Err(d) = converged(&mut c, &remote, &areas).await {
        panic!("not converged: {d}");
    }
    revisions_only_grow(&remote);
    // Takeover commits name the new owner and carry its epoch.
    let history = log(&remote.path, MAIN);
    for a in &victim_areas {
        let newest = history
            .iter()
            .map(|c| trailers(&c.message))
            .find(|t| t.get("Kvgit-Area") == Some(a))
            .expect("a commit of the area");
        assert_ne!(
            newest.get("Kvgit-Node").map(String::as_str),
            Some(victim_name)
        );
        assert!(newest.contains_key("Kvgit-Epoch"), "{newest:?}");
    }
    drop(dead);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_loses_its_lease_and_never_pushes_a_stale_commit() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = Remote::init(dir.path());
    let areas = areas();
    for a in &areas {
        put(&mut c, &format!("{}seed", a.prefix), "0").await;
    }
    // Node A reaches the remote through a symlink that the test can take away.
    let link = dir.path().join("remote-for-a.git");
    std::os::unix::fs::symlink(&remote.path, &link).expect("symlink");
    let a = start_node("core-1", &etcd, &link, &areas);
    let b = start_node("core-2", &etcd, &remote.path, &areas);
    let both = [&a, &b];
    wait_until(CONVERGE, "every area owned exactly once", || {
        owned_exactly_once(&both)
    });
    let area = owners(&both)
        .into_iter()
        .find(|(_, o)| o == &vec!["core-1"])
        .map(|(area, _)| area)
        .expect("core-1 owns an area");
    let prefix = format!("/m/{area}/");
    wait_until(CONVERGE, "the first pushes", || {
        git_files(&remote.path, MAIN, &format!("m/{area}")).contains_key("seed")
    });

    // A commits a change it cannot push, then freezes past its lease.
    std::fs::remove_file(&link).expect("take the remote away from A");
    let stale_rev = put(&mut c, &format!("{prefix}stale"), "from-a").await as u64;
    a.serve.wait_until(CONVERGE, "A to commit locally", || {
        let status = a.serve.status();
        status["areas"]
            .as_array()
            .and_then(|l| l.iter().find(|s| s["area"] == area.as_str()))
            .and_then(|s| s["checkpoint"].as_u64())
            .is_some_and(|cp| cp >= stale_rev)
    });
    a.serve.signal("STOP");
    let paused = Instant::now();
    // The stale commit as A holds it: its epoch is the one that must never be published.
    let stale = log(&a.ws.repo, MAIN)
        .into_iter()
        .map(|c| (c.id.clone(), trailers(&c.message)))
        .find(|(_, t)| {
            t.get("Kvgit-Area") == Some(&area)
                && t["Kvgit-Revision"].parse::<u64>().expect("revision") >= stale_rev
        })
        .expect("A's local commit of the stale key");
    let stale_epoch = stale
        .1
        .get("Kvgit-Epoch")
        .cloned()
        .expect("an epoch trailer");
    b.serve.wait_until(
        TTL + Duration::from_secs(5),
        "B to take the paused node's area",
        || {
            owners(&[&b])
                .get(&area)
                .is_some_and(|o| o == &vec!["core-2"])
        },
    );
    assert!(paused.elapsed() <= TTL + Duration::from_secs(5));
    put(&mut c, &format!("{prefix}after"), "from-b").await;
    wait_until(CONVERGE, "B to push the area with both keys", || {
        let files = git_files(&remote.path, MAIN, &format!("m/{area}"));
        files.get("stale").map(Vec::as_slice) == Some(b"from-a".as_slice())
            && files.contains_key("after")
    });

    // A wakes up with its remote back: its commit is stale and must not reach the remote.
    std::os::unix::fs::symlink(&remote.path, &link).expect("give the remote back");
    a.serve.signal("CONT");
    a.serve
        .wait_until(CONVERGE, "A to fence off its stale commit", || {
            a.serve
                .metric(&format!("kvgit_fenced_total{{area=\"{area}\"}}"))
                .is_some_and(|v| v >= 1.0)
        });
    // Rendezvous hashing gives the area back to A once it is a live member again, under a
    // new lease and a new epoch; the stale commit's epoch never reaches the remote.
    wait_until(CONVERGE, "every area owned exactly once again", || {
        owned_exactly_once(&both)
    });
    put(&mut c, &format!("{prefix}last"), "x").await;
    wait_until_async(CONVERGE, "the remote to converge to etcd", || {
        let remote = &remote;
        let areas = &areas;
        let endpoint = etcd.endpoint().to_string();
        async move {
            let mut c = Client::connect([endpoint], None).await.expect("connect");
            converged(&mut c, remote, areas).await.is_ok()
        }
    })
    .await;
    for commit in log(&remote.path, MAIN) {
        let t = trailers(&commit.message);
        assert_ne!(commit.id, stale.0, "the stale commit itself was pushed");
        assert!(
            !(t.get("Kvgit-Area") == Some(&area)
                && t.get("Kvgit-Epoch") == Some(&stale_epoch)
                && t["Kvgit-Revision"].parse::<u64>().expect("revision") >= stale_rev),
            "a commit of the lost lease (epoch {stale_epoch}) reached the remote: {}",
            commit.message
        );
    }
    revisions_only_grow(&remote);
}

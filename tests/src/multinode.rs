//! Scenarios of several `kvgit serve` processes on one KV store and one remote, run by the
//! etcd and the Consul test binaries: each area owned exactly once
//! and spread by rendezvous hashing, takeover after `kill -9` within TTL + 5 s, no lost or
//! doubled commits, and a paused (SIGSTOP) owner that never pushes a stale commit.

use crate::kvgit::{Area, Workspace};
use crate::serve::{
    diff, git_files, log, trailers, wait_until, wait_until_async, Remote, Serve, ServeConfig,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use sync_core::{Key, KvBackend, Precondition, TxnOutcome, WriteOp};

const MAIN: &str = "main";
const CONVERGE: Duration = Duration::from_secs(90);

/// The KV store the nodes share, as the scenarios need it.
pub struct Cluster {
    /// `backend.kind` for the node configs.
    pub kind: &'static str,
    pub endpoint: String,
    /// For the test's own writes and reads.
    pub backend: Arc<dyn KvBackend>,
    /// `sync.lease_ttl` of the nodes.
    pub lease_ttl: &'static str,
    /// How long after an owner dies its areas must have a new owner: the TTL (etcd) or
    /// twice the TTL (Consul invalidates a session between TTL and 2 × TTL), plus 5 s.
    pub takeover_within: Duration,
}

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

/// One node: its own workspace (local repository) and process, sharing the KV store and the remote.
struct Node {
    name: &'static str,
    ws: Workspace,
    serve: Serve,
}

fn start_node(
    name: &'static str,
    cluster: &Cluster,
    remote_path: &Path,
    areas: &[Area<'static>],
) -> Node {
    let ws = Workspace::new(&cluster.endpoint, areas);
    ws.set_backend_kind(cluster.kind);
    let mut cfg = ServeConfig::fast(areas);
    cfg.remote = Some(remote_path.to_path_buf());
    cfg.node = Some(name);
    cfg.lease_ttl = Some(cluster.lease_ttl);
    let serve = Serve::start(&ws, &cluster.endpoint, &cfg);
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

async fn put(c: &Cluster, key: &str, value: &str) -> u64 {
    write(
        c,
        WriteOp::Put {
            key: Key::from(key),
            value: value.as_bytes().to_vec(),
            expect: Precondition::Any,
        },
    )
    .await
}

async fn delete(c: &Cluster, key: &str) -> u64 {
    write(
        c,
        WriteOp::Delete {
            key: Key::from(key),
            expect: Precondition::Any,
        },
    )
    .await
}

async fn write(c: &Cluster, op: WriteOp) -> u64 {
    match c.backend.write(&[op]).await.expect("write") {
        TxnOutcome::Committed { revision } => revision.0,
        other => panic!("unconditional write: {other:?}"),
    }
}

/// Every key under `prefix`, the prefix stripped, as text -> value.
async fn kv_files(c: &Cluster, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let snap = c
        .backend
        .snapshot(prefix.as_bytes(), None)
        .await
        .expect("snapshot");
    snap.entries
        .into_iter()
        .map(|e| {
            let key = String::from_utf8_lossy(&e.key.0).into_owned();
            (key[prefix.len()..].to_string(), e.value)
        })
        .collect()
}

/// The remote's tree equals the KV store for every area.
async fn converged(c: &Cluster, remote: &Remote, areas: &[Area<'_>]) -> Result<(), String> {
    for a in areas {
        let kv = kv_files(c, a.prefix).await;
        let git = git_files(&remote.path, MAIN, a.path);
        let d = diff(&kv, &git);
        if !d.is_empty() {
            return Err(format!("area {}: {d}", a.name));
        }
    }
    Ok(())
}

/// Three nodes: every area owned exactly once and spread as rendezvous hashing says; `kill -9`
/// of an owner in the middle of writes: the others own its areas within
/// `takeover_within`, the remote converges to the KV state, and each area's
/// `Kvgit-Revision` only grows along the remote's history.
pub async fn three_nodes_take_over_after_kill9(c: &Cluster) {
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = Remote::init(dir.path());
    let areas = areas();
    for a in &areas {
        put(c, &format!("{}seed", a.prefix), "0").await;
    }
    let mut nodes: Vec<Node> = NODES
        .iter()
        .map(|n| start_node(n, c, &remote.path, &areas))
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

    // `kvgit status` (a one-shot process) reads the same owners from the backend.
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
                c,
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
    wait_until(c.takeover_within, "the survivors to own every area", || {
        owned_exactly_once(&alive)
    });
    let took = killed_at.elapsed();
    assert!(
        took <= c.takeover_within,
        "takeover of {victim_areas:?} took {took:?}"
    );
    for a in &victim_areas {
        assert!(
            !owners(&alive)[a].contains(&victim_name),
            "{a} still owned by the dead node"
        );
    }

    // More writes after the takeover, then the remote converges to the KV store.
    for a in &areas {
        put(c, &format!("{}after", a.prefix), "takeover").await;
        delete(c, &format!("{}k3", a.prefix)).await;
    }
    wait_until_async(CONVERGE, "the remote to converge to the KV store", || {
        let remote = &remote;
        let areas = &areas;
        async move { converged(c, remote, areas).await.is_ok() }
    })
    .await;
    if let Err(d) = converged(c, &remote, &areas).await {
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

/// A node that loses its lease (SIGSTOP past the TTL, then SIGCONT) with a local commit it
/// could not push: another node commits the area, and the stale commit never reaches the
/// remote.
pub async fn a_paused_owner_never_pushes_a_stale_commit(c: &Cluster) {
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = Remote::init(dir.path());
    let areas = areas();
    for a in &areas {
        put(c, &format!("{}seed", a.prefix), "0").await;
    }
    // Node A reaches the remote through a symlink that the test can take away.
    let link = dir.path().join("remote-for-a.git");
    std::os::unix::fs::symlink(&remote.path, &link).expect("symlink");
    let a = start_node("core-1", c, &link, &areas);
    let b = start_node("core-2", c, &remote.path, &areas);
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
    let stale_rev = put(c, &format!("{prefix}stale"), "from-a").await;
    a.serve.wait_until(CONVERGE, "A to commit locally", || {
        let status = a.serve.status();
        status["areas"]
            .as_array()
            .and_then(|l| l.iter().find(|s| s["area"] == area.as_str()))
            .and_then(|s| s["checkpoint"]["revision"].as_u64())
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
        c.takeover_within,
        "B to take the paused node's area",
        || {
            owners(&[&b])
                .get(&area)
                .is_some_and(|o| o == &vec!["core-2"])
        },
    );
    assert!(paused.elapsed() <= c.takeover_within);
    put(c, &format!("{prefix}after"), "from-b").await;
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
    put(c, &format!("{prefix}last"), "x").await;
    wait_until_async(CONVERGE, "the remote to converge to the KV store", || {
        let remote = &remote;
        let areas = &areas;
        async move { converged(c, remote, areas).await.is_ok() }
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

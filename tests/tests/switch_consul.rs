//! Switching backends by config: a repository exported from a real etcd restores Consul by
//! the no-base pass after `kind = "consul"`, byte for byte, `plan` then has nothing to do,
//! and `serve` follows Consul. Consul here is the in-repo KV API implementation, or a real
//! agent when `CONSUL_HTTP_ADDR` is set.

use backend_consul::{ConsulBackend, ConsulConfig};
use kvgit_tests::consul::ConsulServer;
use kvgit_tests::etcd::EtcdServer;
use kvgit_tests::kvgit::{Area, Workspace};
use kvgit_tests::serve::{git_files, Serve, ServeConfig};
use std::collections::BTreeMap;
use std::time::Duration;
use sync_core::{Key, KvBackend, Precondition, TxnOutcome, WriteOp};

/// The mapping tests' awkward keys that Consul can hold (its API carries keys as JSON
/// strings, so every UTF-8 key, control characters included), with awkward values.
fn tricky(prefix: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let k = |rest: &str| format!("{prefix}{rest}").into_bytes();
    let mut keys: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (k(""), b"the prefix itself".to_vec()),
        (k("a"), b"a is a value".to_vec()),
        (k("a/b"), b"and a prefix".to_vec()),
        (k("a//c"), b"empty segment".to_vec()),
        (k("trailing/"), b"trailing slash".to_vec()),
        (k("."), b"dot".to_vec()),
        (k(".."), b"dotdot".to_vec()),
        (k(".git"), b"not a repo".to_vec()),
        (k("x/.git/config"), b"[core]".to_vec()),
        (k("binary-value"), vec![0, 159, 146, 150, 255, 0]),
        (k("empty-value"), Vec::new()),
        (k("Node"), b"N".to_vec()),
        (k("node"), b"n".to_vec()),
        (k("NODE"), b"NN".to_vec()),
        (k("Git"), b"g".to_vec()),
        (k("GIT"), b"G".to_vec()),
        (k("café"), "crème".as_bytes().to_vec()),
        (k("with space:and\\back"), b"x".to_vec()),
        (k("pct%2F?q=1#frag"), b"url-ish".to_vec()),
        (k("ctl\n\t"), b"control".to_vec()),
        (k("nul\0inside"), b"nul".to_vec()),
    ];
    keys.push((k(&"L".repeat(300)), b"long upper".to_vec()));
    keys.push((k(&"l".repeat(300)), b"long lower".to_vec()));
    keys.push((k(&format!("{}/leaf", "s".repeat(600))), vec![7; 3000]));
    keys
}

async fn etcd_put(c: &mut etcd_client::Client, k: Vec<u8>, v: Vec<u8>) {
    c.put(k, v, None).await.expect("etcd put");
}

async fn etcd_all(c: &mut etcd_client::Client, prefix: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let resp = c
        .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .expect("etcd get");
    resp.kvs()
        .iter()
        .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
        .collect()
}

async fn consul_backend(consul: &ConsulServer) -> ConsulBackend {
    ConsulBackend::connect(ConsulConfig {
        endpoints: vec![consul.addr().to_string()],
        token: consul.token().map(Into::into),
        watch_wait: Duration::from_secs(2),
        ..ConsulConfig::default()
    })
    .await
    .expect("connect to Consul")
}

async fn consul_all(b: &ConsulBackend, prefix: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    b.snapshot(prefix.as_bytes(), None)
        .await
        .expect("Consul snapshot")
        .entries
        .into_iter()
        .map(|e| (e.key.0, e.value))
        .collect()
}

/// Keys put in a fresh etcd and exported to a fresh repository: the starting point of a
/// switch. `keys` builds the key set under the Consul-side unique prefix.
struct Exported {
    consul: ConsulServer,
    _etcd: EtcdServer,
    prefix: String,
    area: Area<'static>,
    ws: Workspace,
    /// Every key and value in etcd under the prefix at the export.
    before: BTreeMap<Vec<u8>, Vec<u8>>,
}

async fn exported_from_etcd(
    name: &str,
    mode: &'static str,
    keys: impl Fn(&str) -> Vec<(Vec<u8>, Vec<u8>)>,
) -> Exported {
    let consul = ConsulServer::start();
    eprintln!("Consul: {}", consul.describe());
    let prefix = consul.prefix(name);
    let area = Area {
        name: "t",
        prefix: Box::leak(prefix.clone().into_boxed_str()),
        path: "state/t",
        mode,
    };
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    for (k, v) in keys(&prefix) {
        etcd_put(&mut c, k, v).await;
    }
    let before = etcd_all(&mut c, &prefix).await;
    assert_eq!(before.len(), keys(&prefix).len());
    let ws = Workspace::new(etcd.endpoint(), &[area]);
    ws.kvgit(&["export"]).ok();
    Exported {
        consul,
        _etcd: etcd,
        prefix,
        area,
        ws,
        before,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_export_then_switch_to_consul_restores_every_byte_and_serve_follows_consul() {
    let Exported {
        consul,
        prefix,
        area,
        ws,
        before,
        ..
    } = exported_from_etcd("switch", "both", tricky).await;

    // The switch: one config value (and where Consul listens).
    ws.set_backend_kind("consul");
    ws.write_config(consul.addr(), &[area], "");
    let applied = ws.kvgit(&["apply"]).ok();
    assert!(
        applied.stdout.contains(&format!("{} added", before.len())),
        "{}",
        applied.stdout
    );
    let b = consul_backend(&consul).await;
    assert_eq!(
        consul_all(&b, &prefix).await,
        before,
        "same keys, same bytes in Consul"
    );
    let plan = ws.kvgit(&["plan", "--detailed-exitcode"]);
    assert_eq!(
        plan.code, 0,
        "nothing left to do: {}{}",
        plan.stdout, plan.stderr
    );
    assert!(plan.stdout.contains("No changes"), "{}", plan.stdout);
    let status = ws.kvgit(&["status", "--json"]).ok().stdout;
    let status: serde_json::Value = serde_json::from_str(&status).expect("status json");
    assert_eq!(status["backend"]["kind"], "consul", "{status}");

    // serve follows Consul from here: a live change becomes a commit.
    let serve = Serve::start(&ws, consul.addr(), &ServeConfig::fast(&[area]));
    serve.wait_ready();
    let key = format!("{prefix}from-consul");
    let put = WriteOp::Put {
        key: Key::from(key.as_str()),
        value: b"live".to_vec(),
        expect: Precondition::Absent,
    };
    assert!(matches!(
        b.write(&[put]).await.expect("write"),
        TxnOutcome::Committed { .. }
    ));
    serve.wait_until(
        Duration::from_secs(30),
        "serve to commit the Consul change",
        || git_files(&ws.repo, "main", "state/t").get("from-consul") == Some(&b"live".to_vec()),
    );
    let gone = WriteOp::Delete {
        key: Key::from(format!("{prefix}a").as_str()),
        expect: Precondition::Any,
    };
    b.write(&[gone]).await.expect("delete");
    serve.wait_until(
        Duration::from_secs(30),
        "serve to commit the Consul delete",
        || !git_files(&ws.repo, "main", "state/t").contains_key("a"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_consul_cannot_hold_stops_the_apply_before_any_write() {
    let with_binary_key = |prefix: &str| {
        let mut bad = prefix.as_bytes().to_vec();
        bad.extend_from_slice(b"bin\xff\xfe");
        vec![
            (format!("{prefix}fine").into_bytes(), b"ok".to_vec()),
            (bad, b"x".to_vec()),
        ]
    };
    let Exported {
        consul,
        prefix,
        area,
        ws,
        ..
    } = exported_from_etcd("binary-key", "git-to-kv", with_binary_key).await;

    ws.set_backend_kind("consul");
    ws.write_config(consul.addr(), &[area], "");
    let out = ws.kvgit(&["apply"]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    let err = out.stderr.trim();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("bin\\xff\\xfe"), "names the key: {err}");
    assert!(err.contains("UTF-8"), "says why: {err}");
    let b = consul_backend(&consul).await;
    assert!(
        consul_all(&b, &prefix).await.is_empty(),
        "nothing was written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_then_restarting_serve_alone_restores_consul_and_deletes_nothing_in_git() {
    let Exported {
        consul,
        prefix,
        area,
        ws,
        before,
        ..
    } = exported_from_etcd("serve-switch", "both", tricky).await;
    let files_before = git_files(&ws.repo, "main", "state/t");

    // Only the config changes; `serve` restarts on Consul and restores it by the no-base pass.
    ws.set_backend_kind("consul");
    let serve = Serve::start(&ws, consul.addr(), &ServeConfig::fast(&[area]));
    serve.wait_ready();
    let b = consul_backend(&consul).await;
    let restored = kvgit_tests::serve::poll_until_async(Duration::from_secs(30), || {
        let (b, prefix, before) = (&b, &prefix, &before);
        async move { consul_all(b, prefix).await == *before }
    })
    .await;
    assert!(restored, "Consul holds every key and byte after the switch");
    assert_eq!(
        git_files(&ws.repo, "main", "state/t"),
        files_before,
        "Git lost nothing: an empty Consul is no reason to delete"
    );
}

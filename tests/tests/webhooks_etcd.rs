//! `POST /sync` as Git hosts send it, end to end: a real etcd, the real `kvgit serve` with
//! `server.webhook_secret_file`, a bare repository as the remote, and a GitHub-style
//! delivery (`X-Hub-Signature-256: sha256=<HMAC-SHA256 of the body>`). The fetch interval is
//! an hour, so only the webhook can bring a person's commit into etcd; a badly signed
//! delivery brings nothing, and the secret shows up nowhere an operator can look.

use etcd_client::Client;
use hmac::{Hmac, Mac};
use kvgit_tests::etcd::EtcdServer;
use kvgit_tests::kvgit::{kvgit_bin, Area, Workspace};
use kvgit_tests::serve::{http_with, poll_until_async, rev_parse, Remote, Serve, ServeConfig};
use std::time::{Duration, Instant};

const ENTRIES: Area<'static> = Area {
    name: "entries",
    prefix: "/t/entries/",
    path: "entries",
    mode: "both",
};
const ROUTES: Area<'static> = Area {
    name: "routes",
    prefix: "/t/routes/",
    path: "routes",
    mode: "git-to-kv",
};
const MAIN: &str = "refs/heads/main";
/// A string that appears nowhere else, so finding it anywhere means the secret leaked.
const SECRET: &str = "wh-7f3c9e1a-never-print-me";
/// How soon after the delivery the key must be in etcd: a fetch and an apply, on a loaded
/// debug build. The fetch interval (an hour) is far beyond it.
const QUICKLY: Duration = Duration::from_secs(15);

fn github_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A push delivery as GitHub sends it: JSON body, event and signature headers.
fn deliver(serve: &Serve, body: &[u8], signature: &str) -> (u16, String) {
    let headers = [
        ("Content-Type", "application/json"),
        ("User-Agent", "GitHub-Hookshot/kvgit-test"),
        ("X-GitHub-Event", "push"),
        ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ("X-Hub-Signature-256", signature),
    ];
    http_with(serve.addr, "POST", "/sync", &headers, body)
        .unwrap_or_else(|e| serve.fail(&format!("POST /sync: {e}")))
}

async fn get(c: &mut Client, k: &str) -> Option<Vec<u8>> {
    let resp = c.get(k, None).await.expect("etcd get");
    resp.kvs().first().map(|kv| kv.value().to_vec())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_push_delivery_applies_the_commit_and_a_forged_one_does_nothing() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[]);
    let remote = Remote::init(ws.dir.path());
    let secret_file = ws.dir.path().join("webhook_secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).expect("write the secret file");
    c.put("/t/entries/a", "from-kv", None)
        .await
        .expect("etcd put");
    let cfg = ServeConfig {
        fetch_interval: "1h",
        webhook_secret_file: Some(secret_file),
        ..ServeConfig::fast(&[ENTRIES, ROUTES]).remote(&remote)
    };
    let serve = Serve::start(&ws, etcd.endpoint(), &cfg);
    serve.wait_ready();
    serve.wait_until(Duration::from_secs(30), "the first commit pushed", || {
        let local = rev_parse(&ws.repo, MAIN);
        local.is_some() && local == remote.tip()
    });

    let person = remote.person_commits(
        ws.dir.path(),
        &[("routes/api", Some(b"node-1,node-2"))],
        "route api",
    );
    let body = format!(
        r#"{{"ref":"refs/heads/main","after":"{person}","repository":{{"full_name":"ops/state"}}}}"#
    )
    .into_bytes();

    // Forged: signed with another secret, or the body changed after signing. No token
    // either, so nothing may start a fetch.
    let mut tampered = body.clone();
    tampered.extend_from_slice(b" ");
    for (sent, signature) in [
        (&body, github_signature("not-the-secret", &body)),
        (&tampered, github_signature(SECRET, &body)),
    ] {
        let (code, answer) = deliver(&serve, sent, &signature);
        assert_eq!(code, 401, "{answer}");
        assert!(!answer.contains(SECRET), "{answer}");
    }
    let applied = poll_until_async(Duration::from_secs(3), || {
        let mut c = c.clone();
        async move { get(&mut c, "/t/routes/api").await.is_some() }
    })
    .await;
    if applied {
        serve.fail("a badly signed delivery made the service fetch and apply");
    }

    // Signed as GitHub signs: the commit is in etcd long before the fetch interval.
    let sent_at = Instant::now();
    let (code, answer) = deliver(&serve, &body, &github_signature(SECRET, &body));
    assert_eq!(code, 202, "{answer}");
    serve
        .wait_until_async(QUICKLY, "the person's commit in etcd", || {
            let mut c = c.clone();
            async move {
                get(&mut c, "/t/routes/api").await.as_deref() == Some(&b"node-1,node-2"[..])
            }
        })
        .await;
    eprintln!("webhook to etcd: {:?}", sent_at.elapsed());

    for (series, want) in [
        (
            r#"kvgit_webhook_total{result="accepted",source="github"}"#,
            1.0,
        ),
        (
            r#"kvgit_webhook_total{result="rejected",source="github"}"#,
            2.0,
        ),
        (
            r#"kvgit_webhook_total{result="too_large",source="github"}"#,
            0.0,
        ),
        (
            r#"kvgit_webhook_total{result="accepted",source="unknown"}"#,
            0.0,
        ),
    ] {
        assert_eq!(serve.metric(series), Some(want), "{series}");
    }

    // The secret is nowhere an operator (or an attacker reading logs) can look.
    let status = serve.status().to_string();
    assert!(!status.contains(SECRET), "/status shows the secret");
    assert!(
        !serve.metrics().contains(SECRET),
        "/metrics shows the secret"
    );
    let log = std::fs::read_to_string(&serve.log).expect("read serve.log");
    assert!(!log.contains(SECRET), "serve.log shows the secret");
}

#[test]
fn an_empty_or_missing_secret_file_stops_the_start_naming_the_setting() {
    let ws = Workspace::new("http://127.0.0.1:1", &[]);
    let empty = ws.dir.path().join("empty_secret");
    std::fs::write(&empty, "\n").expect("write");
    for (file, why) in [
        (empty.clone(), "is empty"),
        (ws.dir.path().join("absent"), "cannot read"),
    ] {
        let cfg = ServeConfig {
            webhook_secret_file: Some(file),
            ..ServeConfig::fast(&[ENTRIES])
        };
        cfg.write(
            &ws,
            "http://127.0.0.1:1",
            "127.0.0.1:0".parse().expect("addr"),
        );
        let out = std::process::Command::new(kvgit_bin())
            .arg("-c")
            .arg(&ws.config)
            .arg("serve")
            .output()
            .expect("run kvgit serve");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        let line = stderr
            .lines()
            .find(|l| l.contains("server.webhook_secret_file"))
            .unwrap_or_else(|| panic!("no line names the setting:\n{stderr}"));
        assert!(line.contains(why), "{line}");
    }
}

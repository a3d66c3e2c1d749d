//! The Consul KV API implementation (tests/src/consul_api) checked over real HTTP against
//! what Consul documents. With `CONSUL_HTTP_ADDR` set the same tests run against a real
//! agent, skipping only what a test cannot set up there (ACLs, leader loss, exact limits).

use base64::Engine;
use kvgit_tests::consul::{encode_request, host_port, ConsulOptions, ConsulServer, HttpResponse};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An async HTTP/1.0 client for one server, cheap to clone into spawned tasks.
#[derive(Clone)]
struct Client {
    host: String,
    token: Option<String>,
}

impl Client {
    fn of(server: &ConsulServer) -> Client {
        eprintln!("testing {}", server.describe());
        Client {
            host: host_port(server.addr()).to_string(),
            token: server.token().map(str::to_string),
        }
    }

    fn with_token(&self, token: Option<&str>) -> Client {
        Client {
            host: self.host.clone(),
            token: token.map(str::to_string),
        }
    }

    async fn call(&self, method: &str, path: &str, body: &[u8]) -> HttpResponse {
        let request = encode_request(method, &self.host, path, self.token.as_deref(), body);
        let mut stream = tokio::net::TcpStream::connect(&self.host)
            .await
            .unwrap_or_else(|e| panic!("connect {}: {e}", self.host));
        stream.write_all(&request).await.expect("send request");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read response");
        HttpResponse::parse(&raw).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    async fn get(&self, path: &str) -> HttpResponse {
        self.call("GET", path, b"").await
    }

    async fn put(&self, path: &str, body: impl AsRef<[u8]>) -> HttpResponse {
        self.call("PUT", path, body.as_ref()).await
    }

    async fn delete(&self, path: &str) -> HttpResponse {
        self.call("DELETE", path, b"").await
    }

    /// PUT that must answer 200 with a JSON boolean.
    async fn put_ok(&self, path: &str, body: impl AsRef<[u8]>) -> bool {
        let response = self.put(path, body).await;
        assert_eq!(response.status, 200, "PUT {path}: {}", response.text());
        response.json().as_bool().expect("a boolean answer")
    }

    /// The single entry of `GET /v1/kv/<key>`, `None` on 404.
    async fn entry(&self, key: &str) -> Option<Value> {
        let response = self.get(&format!("/v1/kv/{key}")).await;
        match response.status {
            404 => None,
            200 => Some(response.json()[0].clone()),
            other => panic!("GET {key}: {other} {}", response.text()),
        }
    }

    async fn txn(&self, ops: &Value) -> HttpResponse {
        self.put("/v1/txn", ops.to_string()).await
    }

    async fn create_session(&self, body: Value) -> String {
        let response = self.put("/v1/session/create", body.to_string()).await;
        assert_eq!(response.status, 200, "create session: {}", response.text());
        response.json()["ID"].as_str().expect("ID").to_string()
    }
}

fn b64(value: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(value)
}

fn modify_index(entry: &Value) -> u64 {
    entry["ModifyIndex"].as_u64().expect("ModifyIndex")
}

fn keys_of(response: &HttpResponse) -> Vec<String> {
    let body = response.json();
    let list = body.as_array().expect("a JSON array");
    list.iter()
        .map(|v| {
            v.as_str()
                .or_else(|| v["Key"].as_str())
                .expect("key")
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn kv_create_cas_flags_raw_recurse_and_keys() {
    let server = ConsulServer::start();
    let c = Client::of(&server);
    let p = server.prefix("kv");

    assert!(c.put_ok(&format!("/v1/kv/{p}a"), "one").await);
    let a = c.entry(&format!("{p}a")).await.expect("created");
    assert_eq!(a["Key"], format!("{p}a"));
    assert_eq!(a["Value"], b64(b"one"));
    assert_eq!(a["LockIndex"], 0);
    assert_eq!(a["Flags"], 0);
    assert_eq!(a["CreateIndex"], a["ModifyIndex"]);
    assert!(a.get("Session").is_none(), "Session only when held: {a}");
    let response = c.get(&format!("/v1/kv/{p}a")).await;
    assert_eq!(
        response.index(),
        modify_index(&a),
        "a key's index is its ModifyIndex"
    );
    assert_eq!(response.header("x-consul-knownleader"), Some("true"));

    // cas=0: create only if absent.
    assert!(!c.put_ok(&format!("/v1/kv/{p}a?cas=0"), "x").await);
    assert!(c.put_ok(&format!("/v1/kv/{p}new?cas=0"), "x").await);
    // cas=N: only if ModifyIndex == N.
    let stale = modify_index(&a) + 1000;
    assert!(!c.put_ok(&format!("/v1/kv/{p}a?cas={stale}"), "x").await);
    assert!(
        c.put_ok(
            &format!("/v1/kv/{p}a?cas={}&flags=42", modify_index(&a)),
            "two"
        )
        .await
    );
    let a2 = c.entry(&format!("{p}a")).await.expect("still there");
    assert_eq!(a2["Value"], b64(b"two"));
    assert_eq!(a2["Flags"], 42);
    assert_eq!(a2["CreateIndex"], a["CreateIndex"]);
    assert!(modify_index(&a2) > modify_index(&a));
    assert!(
        !c.put_ok(&format!("/v1/kv/{p}gone?cas=5"), "x").await,
        "cas=N on a missing key"
    );

    // Empty values are null; ?raw is the bytes.
    assert!(c.put_ok(&format!("/v1/kv/{p}empty"), "").await);
    assert_eq!(
        c.entry(&format!("{p}empty")).await.expect("empty")["Value"],
        Value::Null
    );
    let raw = c.get(&format!("/v1/kv/{p}a?raw")).await;
    assert_eq!((raw.status, raw.body.as_slice()), (200, b"two".as_slice()));

    // Recurse is sorted bytewise; keys with a separator cut at the next separator, once.
    for key in ["b/c", "b/d/e", "B", "b/d/f"] {
        assert!(c.put_ok(&format!("/v1/kv/{p}{key}"), "v").await);
    }
    let all = c.get(&format!("/v1/kv/{p}?recurse")).await;
    assert_eq!(all.status, 200);
    let want: Vec<String> = ["B", "a", "b/c", "b/d/e", "b/d/f", "empty", "new"]
        .iter()
        .map(|k| format!("{p}{k}"))
        .collect();
    assert_eq!(keys_of(&all), want);
    let cut = c.get(&format!("/v1/kv/{p}?keys&separator=/")).await;
    let want: Vec<String> = ["B", "a", "b/", "empty", "new"]
        .iter()
        .map(|k| format!("{p}{k}"))
        .collect();
    assert_eq!(keys_of(&cut), want);
    let keys = c.get(&format!("/v1/kv/{p}b/?keys")).await;
    assert_eq!(keys_of(&keys).len(), 3);

    // Missing: 404 with an empty body, for a key, a recurse and a key list alike.
    for path in [
        format!("/v1/kv/{p}missing"),
        format!("/v1/kv/{p}missing/?recurse"),
        format!("/v1/kv/{p}missing/?keys"),
    ] {
        let response = c.get(&path).await;
        assert_eq!((response.status, response.body.len()), (404, 0), "{path}");
        assert!(response.index() >= 1, "{path} still carries X-Consul-Index");
    }

    // Deletes: recurse removes the subtree only; cas deletes only at the right index.
    assert!(c
        .delete(&format!("/v1/kv/{p}b/?recurse"))
        .await
        .json()
        .as_bool()
        .unwrap());
    assert_eq!(c.get(&format!("/v1/kv/{p}b/?recurse")).await.status, 404);
    assert!(c.entry(&format!("{p}B")).await.is_some());
    let b = c.entry(&format!("{p}B")).await.unwrap();
    assert_eq!(c.delete(&format!("/v1/kv/{p}B?cas=1")).await.json(), false);
    let path = format!("/v1/kv/{p}B?cas={}", modify_index(&b));
    assert_eq!(c.delete(&path).await.json(), true);
    assert!(c.entry(&format!("{p}B")).await.is_none());

    // 512 KiB is the value limit.
    let too_big = vec![b'x'; 512 * 1024 + 1];
    let response = c.put(&format!("/v1/kv/{p}big"), &too_big).await;
    assert_eq!(response.status, 413, "{}", response.text());
    assert!(c.put_ok(&format!("/v1/kv/{p}big"), &too_big[1..]).await);

    // Keys may start with "/": the rest of the raw path, percent-decoded, is the key.
    // (The newest Consul releases reject such keys, so only the in-repo server is asked.)
    if !server.is_real() {
        assert!(c.put_ok("/v1/kv//rooted/k%20y", "r").await);
        assert_eq!(
            c.entry("/rooted/k%20y").await.expect("rooted")["Key"],
            "/rooted/k y"
        );
        assert_eq!(
            c.entry("%2Frooted%2Fk%20y").await.expect("encoded")["Value"],
            b64(b"r")
        );
    }
}

#[tokio::test]
async fn prefix_index_moves_on_deletes_under_it_but_not_on_writes_elsewhere() {
    let server = ConsulServer::start();
    let c = Client::of(&server);
    let p = server.prefix("index");
    let q = server.prefix("elsewhere");

    assert!(c.put_ok(&format!("/v1/kv/{p}x"), "1").await);
    assert!(c.put_ok(&format!("/v1/kv/{p}y"), "1").await);
    let before = c.get(&format!("/v1/kv/{p}?recurse")).await.index();
    let y = c.entry(&format!("{p}y")).await.unwrap();
    assert_eq!(
        before,
        modify_index(&y),
        "the highest ModifyIndex under the prefix"
    );

    assert!(c.put_ok(&format!("/v1/kv/{q}z"), "1").await);
    assert_eq!(c.get(&format!("/v1/kv/{p}?recurse")).await.index(), before);
    assert_eq!(c.get(&format!("/v1/kv/{p}?keys")).await.index(), before);
    assert_eq!(c.get(&format!("/v1/kv/{p}y")).await.index(), before);

    // Deleting the newest key must not let the index slide back: the tombstone counts.
    assert!(c
        .delete(&format!("/v1/kv/{p}y"))
        .await
        .json()
        .as_bool()
        .unwrap());
    let after_delete = c.get(&format!("/v1/kv/{p}?recurse")).await.index();
    assert!(after_delete > before, "{after_delete} > {before}");
    // An absent key answers the whole table's index, which includes that delete.
    assert!(c.get(&format!("/v1/kv/{p}y")).await.index() >= after_delete);

    // Emptying the prefix still moves its index forward (404 with the new index).
    assert!(c
        .delete(&format!("/v1/kv/{p}?recurse"))
        .await
        .json()
        .as_bool()
        .unwrap());
    let empty = c.get(&format!("/v1/kv/{p}?recurse")).await;
    assert_eq!(empty.status, 404);
    assert!(empty.index() > after_delete);
}

#[tokio::test]
async fn blocking_query_returns_when_a_key_under_the_prefix_changes() {
    let server = ConsulServer::start();
    let c = Client::of(&server);
    let p = server.prefix("watch");
    let q = server.prefix("noise");

    assert!(c.put_ok(&format!("/v1/kv/{p}a"), "1").await);
    let index = c.get(&format!("/v1/kv/{p}?recurse")).await.index();
    let started = Instant::now();
    let watcher = {
        let c = c.clone();
        let path = format!("/v1/kv/{p}?recurse&index={index}&wait=10s");
        tokio::spawn(async move { c.get(&path).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(c.put_ok(&format!("/v1/kv/{q}n"), "noise").await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !watcher.is_finished(),
        "a write elsewhere must not answer the query"
    );
    assert!(c.put_ok(&format!("/v1/kv/{p}b"), "2").await);

    let response = watcher.await.expect("watcher task");
    let elapsed = started.elapsed();
    assert_eq!(response.status, 200);
    assert!(response.index() > index);
    assert!(keys_of(&response).contains(&format!("{p}b")));
    assert!(
        elapsed >= Duration::from_millis(550) && elapsed < Duration::from_secs(5),
        "answered after {elapsed:?}"
    );
}

#[tokio::test]
async fn blocking_query_times_out_with_the_same_index() {
    let server = ConsulServer::start();
    let c = Client::of(&server);
    let p = server.prefix("quiet");
    let q = server.prefix("busy");

    assert!(c.put_ok(&format!("/v1/kv/{p}a"), "1").await);
    let index = c.get(&format!("/v1/kv/{p}?recurse")).await.index();
    let started = Instant::now();
    let watcher = {
        let c = c.clone();
        let path = format!("/v1/kv/{p}?recurse&index={index}&wait=1s");
        tokio::spawn(async move { c.get(&path).await })
    };
    for n in 0..3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(c.put_ok(&format!("/v1/kv/{q}{n}"), "x").await);
    }
    let response = watcher.await.expect("watcher task");
    let elapsed = started.elapsed();
    assert_eq!(response.status, 200);
    assert_eq!(response.index(), index, "nothing changed under the prefix");
    // The wait plus at most wait/16 of jitter, plus scheduling slack.
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_millis(2500),
        "answered after {elapsed:?}"
    );
}

#[tokio::test]
async fn txn_applies_all_or_nothing_at_one_index() {
    let server = ConsulServer::start();
    let c = Client::of(&server);
    let p = server.prefix("txn");

    assert!(c.put_ok(&format!("/v1/kv/{p}a"), "1").await);
    let a = c.entry(&format!("{p}a")).await.unwrap();
    let prefix_index = c.get(&format!("/v1/kv/{p}?recurse")).await.index();

    // A failing cas in the middle: nothing applies, and the error names its op.
    let failing = json!([
        {"KV": {"Verb": "set", "Key": format!("{p}b"), "Value": b64(b"2")}},
        {"KV": {"Verb": "cas", "Key": format!("{p}a"), "Value": b64(b"x"), "Index": modify_index(&a) + 1000}},
        {"KV": {"Verb": "delete-tree", "Key": &p}},
    ]);
    let response = c.txn(&failing).await;
    assert_eq!(response.status, 409, "{}", response.text());
    let body = response.json();
    assert_eq!(body["Results"], Value::Null);
    let errors = body["Errors"].as_array().expect("Errors");
    assert_eq!(errors.len(), 1, "{body}");
    assert_eq!(errors[0]["OpIndex"], 1);
    assert!(
        errors[0]["What"]
            .as_str()
            .unwrap()
            .contains("index is stale"),
        "{body}"
    );
    assert!(
        c.entry(&format!("{p}b")).await.is_none(),
        "the set was rolled back"
    );
    assert_eq!(
        c.entry(&format!("{p}a")).await.unwrap(),
        a,
        "the delete-tree too"
    );
    assert_eq!(
        c.get(&format!("/v1/kv/{p}?recurse")).await.index(),
        prefix_index
    );

    // All succeed: one index for every write; write results carry no value, gets do.
    let ok = json!([
        {"KV": {"Verb": "set", "Key": format!("{p}b"), "Value": b64(b"2"), "Flags": 7}},
        {"KV": {"Verb": "cas", "Key": format!("{p}a"), "Value": b64(b"3"), "Index": modify_index(&a)}},
        {"KV": {"Verb": "check-not-exists", "Key": format!("{p}c")}},
        {"KV": {"Verb": "get", "Key": format!("{p}b")}},
    ]);
    let response = c.txn(&ok).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(body["Errors"], Value::Null);
    let results = body["Results"].as_array().expect("Results");
    assert_eq!(results.len(), 3, "check-not-exists has no result: {body}");
    let (b, a2, got) = (&results[0]["KV"], &results[1]["KV"], &results[2]["KV"]);
    assert_eq!(b["Value"], Value::Null);
    assert_eq!(b["Flags"], 7);
    assert_eq!(
        modify_index(b),
        modify_index(a2),
        "one index for the whole transaction"
    );
    assert!(modify_index(b) > modify_index(&a));
    assert_eq!(got["Value"], b64(b"2"));
    assert_eq!(c.entry(&format!("{p}a")).await.unwrap()["Value"], b64(b"3"));

    // A read-only transaction takes no index: the next write gets the next one.
    if !server.is_real() {
        // (A real agent's own Raft traffic, e.g. coordinates, would race this check.)
        let read = json!([{"KV": {"Verb": "get-tree", "Key": &p}}]);
        let response = c.txn(&read).await;
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.json()["Results"].as_array().unwrap().len(), 2);
        assert!(c.put_ok(&format!("/v1/kv/{p}d"), "4").await);
        let d = c.entry(&format!("{p}d")).await.unwrap();
        assert_eq!(modify_index(&d), modify_index(b) + 1);
    }
}

#[tokio::test]
async fn txn_limits_on_operations_and_request_size() {
    let server = ConsulServer::start();
    let c = Client::of(&server);
    let p = server.prefix("limits");
    let sets = |n: usize| -> Value {
        (0..n)
            .map(
                |i| json!({"KV": {"Verb": "set", "Key": format!("{p}{i:03}"), "Value": b64(b"v")}}),
            )
            .collect()
    };

    let response = c.txn(&sets(64)).await;
    assert_eq!(
        response.status,
        200,
        "64 operations are allowed: {}",
        response.text()
    );
    assert_eq!(
        c.get(&format!("/v1/kv/{p}?keys"))
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        64
    );

    // Newer Consul releases allow 128 operations; the default of 64 is what is checked here.
    if !server.is_real() {
        let response = c.txn(&sets(65)).await;
        assert_eq!(response.status, 413);
        assert_eq!(
            response.text(),
            "Transaction contains too many operations (65 > 64)"
        );
    }

    let big = json!([{"KV": {"Verb": "set", "Key": format!("{p}big"), "Value": b64(&vec![b'x'; 400 * 1024])}}]);
    let response = c.txn(&big).await;
    assert_eq!(response.status, 413, "{}", response.text());
    assert!(
        response.text().starts_with("Request body too large"),
        "{}",
        response.text()
    );
    assert!(c.entry(&format!("{p}big")).await.is_none());
}

#[tokio::test]
async fn sessions_ttl_bounds_renew_info_and_destroy() {
    let server = ConsulServer::start();
    let c = Client::of(&server);

    for ttl in ["5s", "86401s"] {
        let response = c
            .put("/v1/session/create", json!({"TTL": ttl}).to_string())
            .await;
        assert_eq!(response.status, 500, "TTL {ttl}: {}", response.text());
        assert!(
            response.text().contains("Invalid Session TTL"),
            "{}",
            response.text()
        );
    }
    let id = c
        .create_session(json!({"Name": "kvgit-test", "TTL": "10s"}))
        .await;

    let renewed = c.put(&format!("/v1/session/renew/{id}"), "").await;
    assert_eq!(renewed.status, 200, "{}", renewed.text());
    let session = &renewed.json()[0];
    assert_eq!(session["ID"], id);
    assert_eq!(session["TTL"], "10s");
    assert_eq!(session["Behavior"], "release");
    assert_eq!(
        session["LockDelay"], 15_000_000_000u64,
        "default lock delay, in ns"
    );

    let info = c.get(&format!("/v1/session/info/{id}")).await;
    assert_eq!(info.json()[0]["Name"], "kvgit-test");

    let unknown = "5e1f3a0c-0000-4000-8000-000000000000";
    let response = c.put(&format!("/v1/session/renew/{unknown}"), "").await;
    assert_eq!(response.status, 404);
    assert_eq!(response.text(), format!("Session id '{unknown}' not found"));
    assert_eq!(
        c.get(&format!("/v1/session/info/{unknown}")).await.json(),
        json!([])
    );

    assert_eq!(
        c.put(&format!("/v1/session/destroy/{id}"), "").await.json(),
        true
    );
    assert_eq!(
        c.put(&format!("/v1/session/renew/{id}"), "").await.status,
        404
    );
}

#[tokio::test]
async fn acquire_release_and_lock_delay() {
    let server = ConsulServer::start();
    let c = Client::of(&server);
    let p = server.prefix("locks");
    let s1 = c.create_session(json!({"TTL": "30s"})).await;
    let s2 = c.create_session(json!({"TTL": "30s"})).await;
    let k = format!("{p}lock");

    assert!(c.put_ok(&format!("/v1/kv/{k}?acquire={s1}"), "v1").await);
    let held = c.entry(&k).await.unwrap();
    assert_eq!(
        (held["LockIndex"].clone(), held["Session"].clone()),
        (json!(1), json!(s1))
    );
    assert!(
        !c.put_ok(&format!("/v1/kv/{k}?acquire={s2}"), "v2").await,
        "held by s1"
    );
    // The holder may acquire again: the value changes, LockIndex does not.
    assert!(c.put_ok(&format!("/v1/kv/{k}?acquire={s1}"), "v1b").await);
    let again = c.entry(&k).await.unwrap();
    assert_eq!(
        (again["LockIndex"].clone(), again["Value"].clone()),
        (json!(1), json!(b64(b"v1b")))
    );

    assert!(
        !c.put_ok(&format!("/v1/kv/{k}?release={s2}"), "v1b").await,
        "not s2's"
    );
    assert!(c.put_ok(&format!("/v1/kv/{k}?release={s1}"), "v1b").await);
    let free = c.entry(&k).await.unwrap();
    assert!(free.get("Session").is_none(), "{free}");
    assert_eq!(free["LockIndex"], 1);
    assert!(c.put_ok(&format!("/v1/kv/{k}?acquire={s2}"), "v2").await);
    assert_eq!(c.entry(&k).await.unwrap()["LockIndex"], 2);

    let response = c
        .put(
            &format!("/v1/kv/{k}x?acquire=00000000-0000-4000-8000-000000000000"),
            "v",
        )
        .await;
    assert_eq!(response.status, 500, "{}", response.text());
    assert!(
        response.text().contains("invalid session"),
        "{}",
        response.text()
    );

    // Destroying s2 releases its key, which then stays unlockable for its lock delay (15s).
    assert_eq!(
        c.put(&format!("/v1/session/destroy/{s2}"), "").await.json(),
        true
    );
    assert!(c.entry(&k).await.unwrap().get("Session").is_none());
    assert!(
        !c.put_ok(&format!("/v1/kv/{k}?acquire={s1}"), "v1").await,
        "lock delay"
    );
    // (The explicit release above started no delay: s2 acquired at once.) A session with
    // LockDelay 0s starts none either.
    let s3 = c
        .create_session(json!({"TTL": "30s", "LockDelay": "0s"}))
        .await;
    let k2 = format!("{p}lock2");
    assert!(c.put_ok(&format!("/v1/kv/{k2}?acquire={s3}"), "v3").await);
    assert_eq!(
        c.put(&format!("/v1/session/destroy/{s3}"), "").await.json(),
        true
    );
    assert!(c.put_ok(&format!("/v1/kv/{k2}?acquire={s1}"), "v1").await);
}

/// The one slow test: a TTL session is only invalidated after being left unrenewed for
/// between its TTL and twice its TTL (Consul's grace period); "delete" removes its keys.
#[tokio::test]
async fn expired_delete_session_deletes_its_keys() {
    let server = ConsulServer::start();
    let c = Client::of(&server);
    let p = server.prefix("expiry");
    let session = c
        .create_session(json!({"TTL": "10s", "Behavior": "delete", "LockDelay": "0s"}))
        .await;
    let created = Instant::now();
    let k = format!("{p}held");
    assert!(
        c.put_ok(&format!("/v1/kv/{k}?acquire={session}"), "mine")
            .await
    );
    assert!(c.put_ok(&format!("/v1/kv/{p}free"), "other").await);

    let deadline = created + Duration::from_secs(25);
    while c.entry(&k).await.is_some() {
        assert!(Instant::now() < deadline, "the key outlived 2×TTL by far");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let gone_after = created.elapsed();
    assert!(
        gone_after >= Duration::from_secs(10),
        "expired before its TTL: {gone_after:?}"
    );
    assert!(
        c.entry(&format!("{p}free")).await.is_some(),
        "only held keys are deleted"
    );
    assert_eq!(
        c.get(&format!("/v1/session/info/{session}")).await.json(),
        json!([])
    );
    assert_eq!(
        c.put(&format!("/v1/session/renew/{session}"), "")
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn acls_default_deny_the_anonymous_token_and_refuse_unknown_ones() {
    let server = ConsulServer::start_with(ConsulOptions {
        acl_management_token: Some("s3cret".to_string()),
        ..ConsulOptions::default()
    });
    if server.is_real() {
        eprintln!("skipped: the ACLs of a real agent are not the test's to configure");
        return;
    }
    let c = Client::of(&server);
    let anonymous = c.with_token(None);
    let wrong = c.with_token(Some("wrong"));

    let response = anonymous.get("/v1/kv/a").await;
    assert_eq!(response.status, 403);
    assert_eq!(
        response.text(),
        "Permission denied: anonymous token lacks permission 'key:read' on \"a\". The \
         anonymous token is used implicitly when a request does not specify a token."
    );
    assert_eq!(anonymous.put("/v1/kv/a", "x").await.status, 403);
    // A transaction is checked op by op: an empty one needs nothing.
    assert_eq!(anonymous.txn(&json!([])).await.status, 200);
    assert_eq!(anonymous.put("/v1/session/create", "").await.status, 403);
    assert_eq!(anonymous.get("/v1/agent/self").await.status, 403);
    let response = wrong.get("/v1/kv/a").await;
    assert_eq!(
        (response.status, response.text()),
        (403, "ACL not found".into())
    );

    assert!(c.put_ok("/v1/kv/a", "x").await, "with X-Consul-Token");
    assert_eq!(anonymous.get("/v1/kv/a?token=s3cret").await.status, 200);
    let bearer = encode_request("GET", &c.host, "/v1/kv/a", None, b"");
    let bearer = String::from_utf8(bearer).expect("ASCII").replacen(
        "\r\n\r\n",
        "\r\nAuthorization: Bearer s3cret\r\n\r\n",
        1,
    );
    let mut stream = tokio::net::TcpStream::connect(&c.host)
        .await
        .expect("connect");
    stream.write_all(bearer.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    assert_eq!(HttpResponse::parse(&raw).expect("response").status, 200);
    assert_eq!(anonymous.get("/v1/status/leader").await.status, 200);
    assert_eq!(anonymous.get("/v1/connect/ca/roots").await.status, 200);
}

#[tokio::test]
async fn acl_policies_and_tokens_decide_each_key_by_the_longest_prefix() {
    let server = ConsulServer::start_with(ConsulOptions {
        acl_management_token: Some("root".to_string()),
        ..ConsulOptions::default()
    });
    if server.is_real() {
        eprintln!("skipped: the ACLs of a real agent are not the test's to configure");
        return;
    }
    let c = Client::of(&server);
    // Policies in HCL and in JSON, as Consul accepts both.
    let rules = r#"
key_prefix "" { policy = "read" }
key_prefix "app/" { policy = "write" }
key_prefix "app/locked/" { policy = "deny" }
key "app/locked/open" { policy = "write" }
session_prefix "" { policy = "write" }
"#;
    let response = c
        .put(
            "/v1/acl/policy",
            json!({"Name": "app", "Rules": rules}).to_string(),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let policy = response.json();
    let policy_id = policy["ID"].as_str().expect("ID").to_string();
    assert_eq!(policy["Rules"], rules);
    let json_rules = r#"{"node_prefix": {"": {"policy": "read"}}}"#;
    let response = c
        .put(
            "/v1/acl/policy",
            json!({"Name": "nodes", "Rules": json_rules}).to_string(),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    // Names are unique, rules must parse.
    for bad in [
        json!({"Name": "app", "Rules": ""}),
        json!({"Name": "x", "Rules": "key_prefix \"\" { policy = \"sometimes\" }"}),
        json!({"Name": "bad name!", "Rules": ""}),
    ] {
        assert_eq!(
            c.put("/v1/acl/policy", bad.to_string()).await.status,
            400,
            "{bad}"
        );
    }
    let by_name = c.get("/v1/acl/policy/name/app").await;
    assert_eq!(by_name.json()["ID"], policy_id.as_str());
    assert_eq!(
        c.get(&format!("/v1/acl/policy/{policy_id}")).await.json()["Name"],
        "app"
    );
    let names: Vec<String> = c
        .get("/v1/acl/policies")
        .await
        .json()
        .as_array()
        .expect("list")
        .iter()
        .map(|p| p["Name"].as_str().expect("Name").to_string())
        .collect();
    assert!(
        names.contains(&"global-management".to_string()) && names.contains(&"app".to_string()),
        "{names:?}"
    );

    let response = c
        .put(
            "/v1/acl/token",
            json!({"Description": "app", "Policies": [{"Name": "app"}, {"ID": policy_id}]})
                .to_string(),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let token = response.json();
    let accessor = token["AccessorID"]
        .as_str()
        .expect("AccessorID")
        .to_string();
    let secret = token["SecretID"].as_str().expect("SecretID").to_string();
    assert_eq!(token["Policies"].as_array().map(Vec::len), Some(1));
    let app = c.with_token(Some(&secret));
    assert_eq!(
        app.get("/v1/acl/token/self").await.json()["AccessorID"],
        accessor.as_str()
    );
    // The token holds no acl permission.
    assert_eq!(app.get("/v1/acl/policies").await.status, 403);
    let listed = c
        .get(&format!("/v1/acl/tokens?policy={policy_id}"))
        .await
        .json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");

    assert!(app.put_ok("/v1/kv/app/x", "1").await);
    assert!(app.put_ok("/v1/kv/app/locked/open", "1").await);
    assert!(c.put_ok("/v1/kv/app/locked/shut", "1").await);
    assert!(c.put_ok("/v1/kv/other", "1").await);
    let denied = app.put("/v1/kv/app/locked/shut", "2").await;
    assert_eq!(denied.status, 403);
    assert_eq!(
        denied.text(),
        format!(
            "Permission denied: token with AccessorID '{accessor}' lacks permission \
             'key:write' on \"app/locked/shut\""
        )
    );
    assert_eq!(app.put("/v1/kv/other", "2").await.status, 403);
    assert_eq!(
        app.get("/v1/kv/other").await.status,
        200,
        "read on everything"
    );
    assert_eq!(
        app.get("/v1/kv/app/locked/shut").await.status,
        403,
        "deny beats read"
    );
    assert_eq!(
        app.delete("/v1/kv/app?recurse").await.status,
        403,
        "a deny under it"
    );

    // Listings leave out what the token may not read, and say so.
    let listing = app.get("/v1/kv/app/?recurse").await;
    assert_eq!(listing.status, 200);
    assert_eq!(
        listing.header("x-consul-results-filtered-by-acls"),
        Some("true")
    );
    let entries = listing.json();
    let keys: Vec<&str> = entries
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["Key"].as_str().expect("Key"))
        .collect();
    assert_eq!(keys, ["app/locked/open", "app/x"]);
    let full = c.get("/v1/kv/app/?recurse").await;
    assert_eq!(full.json().as_array().map(Vec::len), Some(3));
    assert_eq!(full.header("x-consul-results-filtered-by-acls"), None);

    // A transaction is checked per op before anything applies: 409 naming the op.
    let b64 = |v: &str| base64::engine::general_purpose::STANDARD.encode(v);
    let response = app
        .txn(&json!([
            {"KV": {"Verb": "set", "Key": "app/y", "Value": b64("1")}},
            {"KV": {"Verb": "set", "Key": "elsewhere", "Value": b64("1")}},
        ]))
        .await;
    assert_eq!(response.status, 409, "{}", response.text());
    let errors = response.json()["Errors"].clone();
    assert_eq!(errors[0]["OpIndex"], 1, "{errors}");
    assert!(
        errors[0]["What"]
            .as_str()
            .is_some_and(|w| w.contains("lacks permission 'key:write' on \"elsewhere\"")),
        "{errors}"
    );
    assert_eq!(c.get("/v1/kv/app/y").await.status, 404, "nothing applied");
    // Sessions need session:write on the node; the app token has it.
    app.create_session(json!({"TTL": "15s"})).await;

    // Updating the token's policies takes effect at once; deleting it makes it unknown.
    let update = json!({"Description": "app", "Policies": [{"Name": "nodes"}]});
    let response = c
        .put(&format!("/v1/acl/token/{accessor}"), update.to_string())
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(app.get("/v1/kv/other").await.status, 403);
    assert!(c.delete(&format!("/v1/acl/token/{accessor}")).await.json() == json!(true));
    let gone = app.get("/v1/kv/other").await;
    assert_eq!((gone.status, gone.text()), (403, "ACL not found".into()));
    assert_eq!(
        c.get(&format!("/v1/acl/token/{accessor}")).await.status,
        403
    );
    assert!(
        c.delete(&format!("/v1/acl/policy/{policy_id}"))
            .await
            .json()
            == json!(true)
    );
    assert_eq!(c.get("/v1/acl/policy/name/app").await.status, 403);
    // The builtins stay.
    assert_eq!(
        c.delete("/v1/acl/policy/00000000-0000-0000-0000-000000000001")
            .await
            .status,
        400
    );
    assert_eq!(
        c.delete("/v1/acl/token/00000000-0000-0000-0000-000000000002")
            .await
            .status,
        400
    );
}

#[tokio::test]
async fn acl_endpoints_answer_401_while_acls_are_disabled() {
    let server = ConsulServer::start();
    if server.is_real() {
        eprintln!("skipped: a real agent may have ACLs enabled");
        return;
    }
    let c = Client::of(&server);
    let response = c.get("/v1/acl/policies").await;
    assert_eq!(
        (response.status, response.text()),
        (401, "ACL support disabled".into())
    );
}

#[test]
fn tls_serves_https_and_verify_incoming_needs_a_client_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = kvgit_tests::certs::TestPki::new(dir.path());
    let (cert_file, key_file) = pki.server("localhost");
    let tls = kvgit_tests::consul::ConsulTls {
        cert_file: cert_file.clone(),
        key_file: key_file.clone(),
        ca_file: pki.ca_file(),
        verify_incoming: true,
    };
    let server = ConsulServer::start_with(ConsulOptions {
        tls: Some(tls),
        ..ConsulOptions::default()
    });
    if server.is_real() {
        eprintln!("skipped: needs the in-repo server's TLS");
        return;
    }
    assert!(server.addr().starts_with("https://"), "{}", server.addr());
    // The harness presents a certificate of the CA: answered.
    assert_eq!(server.request("PUT", "/v1/kv/a", b"1").status, 200);
    assert_eq!(server.request("GET", "/v1/kv/a?raw", b"").text(), "1");
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = std::net::TcpStream::connect(host_port(server.addr())).and_then(|mut s| {
        use std::io::{Read, Write};
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(&encode_request("GET", "x", "/v1/kv/a", None, b""))?;
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        Ok(raw)
    });
    assert!(
        plain.map_or(true, |raw| HttpResponse::parse(&raw).is_err()),
        "plain HTTP must not be served"
    );
}
#[tokio::test]
async fn unknown_datacenter_and_lost_leader_are_500s() {
    let server = ConsulServer::start();
    let c = Client::of(&server);
    let p = server.prefix("leader");

    let response = c.get(&format!("/v1/kv/{p}a?dc=no-such-dc")).await;
    assert_eq!(response.status, 500);
    assert!(
        response.text().contains("No path to datacenter"),
        "{}",
        response.text()
    );

    if server.is_real() {
        eprintln!("skipped the leader part: a real agent cannot be made leaderless");
        return;
    }
    assert!(c.put_ok(&format!("/v1/kv/{p}a"), "1").await);
    server.set_leader(false);
    for response in [
        c.get(&format!("/v1/kv/{p}a")).await,
        c.put(&format!("/v1/kv/{p}a"), "2").await,
        c.txn(&json!([{"KV": {"Verb": "get", "Key": format!("{p}a")}}]))
            .await,
        c.put("/v1/session/create", "").await,
    ] {
        assert_eq!(response.status, 500);
        assert_eq!(response.text(), "No cluster leader");
    }
    assert_eq!(c.get("/v1/status/leader").await.json(), "");
    // Stale reads are served by any server, saying there is no known leader.
    let stale = c.get(&format!("/v1/kv/{p}a?stale")).await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.header("x-consul-knownleader"), Some("false"));

    server.set_leader(true);
    assert_eq!(c.get("/v1/status/leader").await.json(), "127.0.0.1:8300");
    assert!(c.put_ok(&format!("/v1/kv/{p}a"), "2").await);
    assert_eq!(c.entry(&format!("{p}a")).await.unwrap()["Value"], b64(b"2"));
}

#[tokio::test]
async fn index_skew_fault_answers_blocking_queries_below_the_clients_index() {
    let server = ConsulServer::start();
    if server.is_real() {
        eprintln!("skipped: /v1/_test/index_skew is the in-repo API's fault hook, not Consul's");
        return;
    }
    let c = Client::of(&server);
    let p = server.prefix("skew");
    assert!(c.put_ok(&format!("/v1/kv/{p}a"), "1").await);
    let index = c.get(&format!("/v1/kv/{p}?recurse")).await.index();

    // A query already waiting is woken by the switch and answers below its index.
    let started = Instant::now();
    let watcher = {
        let c = c.clone();
        let path = format!("/v1/kv/{p}?recurse&index={index}&wait=10s");
        tokio::spawn(async move { c.get(&path).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!watcher.is_finished(), "nothing changed: the query waits");
    assert!(c.put_ok("/v1/_test/index_skew?by=3", "").await);
    let response = watcher.await.expect("watcher task");
    assert!(started.elapsed() < Duration::from_secs(5), "woken at once");
    assert_eq!(response.status, 200);
    assert_eq!(response.index(), index - 3);
    assert_eq!(keys_of(&response), [format!("{p}a")], "the current body");

    // Every blocking query, a 404 included, keeps answering at once; plain reads do not lie.
    let started = Instant::now();
    let absent = c
        .get(&format!("/v1/kv/{p}none/?recurse&index={index}&wait=10s"))
        .await;
    assert_eq!((absent.status, absent.index()), (404, index - 3));
    let key = c.get(&format!("/v1/kv/{p}a?index={index}&wait=10s")).await;
    assert_eq!((key.status, key.index()), (200, index - 3));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered at once"
    );
    assert_eq!(c.get(&format!("/v1/kv/{p}?recurse")).await.index(), index);
    assert_eq!(
        c.get(&format!("/v1/kv/{p}a?index=2&wait=1s")).await.index(),
        1
    );

    // Switched off: Consul's behaviour again (wait out the quiet prefix, same index).
    assert_eq!(c.put("/v1/_test/index_skew?by=x", "").await.status, 400);
    assert!(c.put_ok("/v1/_test/index_skew?by=0", "").await);
    let started = Instant::now();
    let quiet = c
        .get(&format!("/v1/kv/{p}?recurse&index={index}&wait=1s"))
        .await;
    assert_eq!(quiet.index(), index);
    assert!(started.elapsed() >= Duration::from_secs(1), "waited again");
}

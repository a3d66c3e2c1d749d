//! The operators' web page of `kvgit serve`, in a real headless Chromium against a real etcd:
//! what it shows after real changes (while it stays open), the area's plan after a drift,
//! "Sync now" with the typed token, a key's history, values hidden unless enabled, a phone
//! layout without horizontal scrolling, and `server.ui = false`.
//!
//! Screenshots of every page a test looks at are kept in `target/test-artifacts/`.

use base64::Engine as _;
use etcd_client::Client;
use kvgit_tests::browser::{artifacts_dir, Browser};
use kvgit_tests::etcd::EtcdServer;
use kvgit_tests::kvgit::{Area, Workspace};
use kvgit_tests::serve::{log, poll_until_async, rev_parse, Remote, Serve, ServeConfig};
use std::time::Duration;

const ENTRIES: Area<'static> = Area {
    name: "entries",
    prefix: "/t/entries/",
    path: "entries",
    mode: "both",
};
const EVENTS: Area<'static> = Area {
    name: "events",
    prefix: "/t/events/",
    path: "events",
    mode: "kv-to-git",
};
const ROUTES: Area<'static> = Area {
    name: "routes",
    prefix: "/t/routes/",
    path: "routes",
    mode: "git-to-kv",
};

const MAIN: &str = "refs/heads/main";
/// How long the page may take to show something (it polls every 3 s; a loaded machine).
const SEE: Duration = Duration::from_secs(30);
const TOKEN: &str = "ui-test-token-7f3a";
/// A value no page or `/api/v1` answer may carry unless `server.ui_show_values` is set.
const SECRET: &str = "s3cret-password-DO-NOT-SHOW";
/// A live value Git overwrites: `/status` records it as a conflict, the page must not show it.
const HAND_EDIT: &str = "hand-edit-s3cret-9c1d";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// `/key?…` for a whole key.
fn key_url(serve: &Serve, area: &str, key: &str) -> String {
    format!(
        "http://{}/key?area={area}&key_b64={}",
        serve.addr,
        percent(&b64(key))
    )
}

fn percent(s: &str) -> String {
    s.replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

async fn put(c: &mut Client, k: &str, v: &str) {
    c.put(k, v, None).await.expect("etcd put");
}

async fn get(c: &mut Client, k: &str) -> Option<Vec<u8>> {
    let resp = c.get(k, None).await.expect("etcd get");
    resp.kvs().first().map(|kv| kv.value().to_vec())
}

/// The summary of the newest commit of the local branch, and how many commits it has.
fn newest(ws: &Workspace) -> (usize, String) {
    let log = log(&ws.repo, MAIN);
    let summary = log
        .first()
        .map(|e| e.message.lines().next().unwrap_or_default().to_string())
        .unwrap_or_default();
    (log.len(), summary)
}

/// Waits until the local branch has more than `before` commits; returns the newest summary.
async fn wait_commit_after(serve: &Serve, ws: &Workspace, before: usize) -> String {
    let ok = poll_until_async(SEE, || async { newest(ws).0 > before }).await;
    if !ok {
        serve.fail(&format!(
            "no commit after the first {before} within {SEE:?}"
        ));
    }
    newest(ws).1
}

fn shot(browser: &mut Browser, name: &str) {
    let path = artifacts_dir().join(format!("web-{name}.png"));
    browser.screenshot(&path);
    eprintln!("screenshot: {}", path.display());
}

/// Every `/api/v1` answer the pages read for `key` in `area`: (path, status, body).
fn api_answers(serve: &Serve, area: &str, key: &str) -> Vec<(String, u16, String)> {
    [
        "/api/v1/overview".to_string(),
        format!("/api/v1/areas/{area}/commits"),
        format!("/api/v1/key?area={area}&key_b64={}", percent(&b64(key))),
        format!("/api/v1/plan?area={area}"),
    ]
    .into_iter()
    .map(|path| {
        let (code, body) = serve.get(&path);
        (path, code, body)
    })
    .collect()
}

/// The overview lists every area with its mode, owner and checkpoint; a change made in etcd
/// while the page is open shows up as its commit's summary without a reload; the layout fits
/// a phone; a key's page lists its commits; no value reaches the page or `/api/v1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_areas_and_follows_changes_while_open() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let areas = [ENTRIES, EVENTS, ROUTES];
    let ws = Workspace::new(etcd.endpoint(), &areas);
    let remote = Remote::init(ws.dir.path());
    put(&mut c, "/t/entries/db/password", SECRET).await;
    put(&mut c, "/t/entries/db/host", "db.internal").await;
    put(&mut c, "/t/events/e1", "started").await;
    let cfg = ServeConfig {
        sync_token: Some(TOKEN),
        ..ServeConfig::fast(&areas).remote(&remote)
    };
    let serve = Serve::start(&ws, etcd.endpoint(), &cfg);
    serve.wait_ready();
    wait_commit_after(&serve, &ws, 0).await;

    let mut browser = Browser::launch();
    browser.viewport(1280, 900, false);
    browser.goto(&format!("http://{}/", serve.addr));
    browser.wait_for(
        SEE,
        "the areas table",
        "document.querySelectorAll('#areas tbody tr').length === 3",
    );
    for a in &areas {
        let row = browser.eval(&format!(
            "document.querySelector('#areas tr[data-area=\"{}\"]').innerText",
            a.name
        ));
        let row = row.as_str().unwrap_or_default().to_string();
        assert!(
            row.contains(a.mode),
            "row of {} names its mode: {row}",
            a.name
        );
        assert!(
            row.contains("test-node"),
            "row of {} names its owner: {row}",
            a.name
        );
    }
    // The checkpoint against the backend's revision, as the status has them.
    let status = serve.status();
    let cp = status["areas"][0]["checkpoint"]["revision"]
        .as_u64()
        .expect("entries has a checkpoint");
    browser.wait_text(SEE, &format!("{cp} /"));

    // A change in etcd while the page is open: its commit appears by the page's own polling.
    let (before, _) = newest(&ws);
    put(&mut c, "/t/entries/feature/flag", "on").await;
    let summary = wait_commit_after(&serve, &ws, before).await;
    assert!(
        summary.starts_with("entries: "),
        "a commit of entries: {summary}"
    );
    browser.wait_text(SEE, &summary);
    shot(&mut browser, "overview-laptop");

    // The same page at a phone's width: cards, no horizontal scrolling.
    browser.viewport(390, 844, true);
    browser.goto(&format!("http://{}/", serve.addr));
    browser.wait_for(
        SEE,
        "the areas table",
        "document.querySelectorAll('#areas tbody tr').length === 3",
    );
    assert!(
        !browser.overflows_horizontally(),
        "the overview scrolls sideways at 390px: scrollWidth {}",
        browser.eval("document.documentElement.scrollWidth")
    );
    shot(&mut browser, "overview-phone");

    // A key's page: its commits from Git, and no value.
    browser.viewport(1280, 900, false);
    let (before, _) = newest(&ws);
    put(
        &mut c,
        "/t/entries/db/password",
        &format!("{SECRET}-rotated"),
    )
    .await;
    wait_commit_after(&serve, &ws, before).await;
    browser.goto(&key_url(&serve, "entries", "/t/entries/db/password"));
    browser.wait_for(
        SEE,
        "the key's history",
        "document.querySelectorAll('#history tbody tr').length >= 2",
    );
    browser.wait_text(SEE, "/t/entries/db/password");
    assert!(
        browser.text().contains("Values are not shown"),
        "the page says values are hidden"
    );
    shot(&mut browser, "key-values-hidden");
    let html = browser.html();
    assert!(
        !html.contains(SECRET),
        "the key page holds the secret value"
    );

    browser.goto(&format!("http://{}/", serve.addr));
    browser.wait_for(
        SEE,
        "the areas table",
        "document.querySelectorAll('#areas tbody tr').length === 3",
    );
    assert!(
        !browser.html().contains(SECRET),
        "the overview holds the secret value"
    );
    for (path, code, body) in api_answers(&serve, "entries", "/t/entries/db/password") {
        assert!(
            code == 200 || (path.contains("/plan") && code == 404),
            "GET {path} answered {code}: {body}"
        );
        assert!(
            !body.contains(SECRET),
            "GET {path} holds the secret value: {body}"
        );
        assert!(
            !body.contains(&b64(SECRET)[..16]),
            "GET {path} holds the secret value in base64"
        );
    }
}

/// A hand edit of a git-to-kv key is drift: the area page lists the key among what an
/// apply would change; "Sync now" with a wrong token is refused, with the right one it runs
/// and the plan comes back empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_area_page_lists_the_plan_and_sync_now_applies_it() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let areas = [ENTRIES, ROUTES];
    let ws = Workspace::new(etcd.endpoint(), &areas);
    let remote = Remote::init(ws.dir.path());
    remote.person_commits(
        ws.dir.path(),
        &[
            ("routes/api", Some(b"node-1")),
            ("routes/web", Some(b"node-2")),
        ],
        "routes",
    );
    // No timer: only "Sync now" applies Git after the start.
    let cfg = ServeConfig {
        sync_token: Some(TOKEN),
        fetch_interval: "1h",
        ..ServeConfig::fast(&areas).remote(&remote)
    };
    let serve = Serve::start(&ws, etcd.endpoint(), &cfg);
    serve.wait_ready();
    let applied = poll_until_async(SEE, || async {
        get(&mut c.clone(), "/t/routes/api").await.as_deref() == Some(b"node-1")
    })
    .await;
    assert!(applied, "routes applied at start");

    put(&mut c, "/t/routes/api", HAND_EDIT).await;
    let mut browser = Browser::launch();
    browser.viewport(1280, 900, false);
    browser.goto(&format!("http://{}/areas/routes", serve.addr));
    browser.wait_text(SEE, "git-to-kv");
    browser.wait_for(
        SEE,
        "the drifted key in the plan",
        "[...document.querySelectorAll('#area-plan li')].some(li => li.innerText.includes('/t/routes/api'))",
    );
    shot(&mut browser, "area-plan");

    // A wrong token is refused and said so.
    browser.eval("document.getElementById('sync-token').value = 'wrong'; document.getElementById('sync-button').click(); true");
    browser.wait_text(SEE, "Refused (HTTP 401)");
    assert_eq!(
        get(&mut c, "/t/routes/api").await.as_deref(),
        Some(HAND_EDIT.as_bytes())
    );
    // The right one runs the sync: Git's value is back in etcd and the plan is empty.
    browser.eval(&format!(
        "document.getElementById('sync-token').value = '{TOKEN}'; document.getElementById('sync-button').click(); true"
    ));
    browser.wait_text(SEE, "Accepted (HTTP 202)");
    let healed = poll_until_async(SEE, || async {
        get(&mut c.clone(), "/t/routes/api").await.as_deref() == Some(b"node-1")
    })
    .await;
    if !healed {
        serve.fail("Sync now did not apply Git to /t/routes/api");
    }
    browser.eval("document.getElementById('plan-refresh').click(); true");
    browser.wait_for(
        SEE,
        "an empty plan",
        "document.getElementById('plan-empty') !== null",
    );
    shot(&mut browser, "area-after-sync");
    // The overwritten live value is in no answer the page reads, nor in the page.
    let (code, overview) = serve.get("/api/v1/overview");
    assert_eq!(code, 200, "{overview}");
    assert!(
        !overview.contains(HAND_EDIT),
        "the overview holds the overwritten value: {overview}"
    );
    assert!(
        !browser.html().contains(HAND_EDIT),
        "the area page holds the overwritten value"
    );
    assert!(
        !browser.html().contains(TOKEN),
        "the token stays in its field, never in the page"
    );
}

/// With `server.ui_show_values = true` the key page shows each value and what changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_and_their_diffs_show_only_when_enabled() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let areas = [ENTRIES];
    let ws = Workspace::new(etcd.endpoint(), &areas);
    put(&mut c, "/t/entries/app/config", "port=80\nmode=blue\n").await;
    let cfg = ServeConfig {
        server_extra: Some("ui_show_values = true\n".to_string()),
        ..ServeConfig::fast(&areas)
    };
    let serve = Serve::start(&ws, etcd.endpoint(), &cfg);
    serve.wait_ready();
    let before = newest(&ws).0.max(1);
    wait_commit_after(&serve, &ws, before - 1).await;
    put(&mut c, "/t/entries/app/config", "port=80\nmode=green\n").await;
    wait_commit_after(&serve, &ws, before).await;

    let mut browser = Browser::launch();
    browser.viewport(1280, 900, false);
    browser.goto(&key_url(&serve, "entries", "/t/entries/app/config"));
    browser.wait_for(
        SEE,
        "two history rows",
        "document.querySelectorAll('#history tbody tr').length >= 2",
    );
    let text = browser.text();
    assert!(
        text.contains("mode=green") && text.contains("mode=blue"),
        "both values shown:\n{text}"
    );
    let diff = browser
        .eval("[...document.querySelectorAll('pre.diff .add')].map(e => e.innerText).join('|')");
    assert!(
        diff.as_str().unwrap_or_default().contains("mode=green"),
        "the diff marks the new line: {diff}"
    );
    let removed = browser
        .eval("[...document.querySelectorAll('pre.diff .del')].map(e => e.innerText).join('|')");
    assert!(
        removed.as_str().unwrap_or_default().contains("mode=blue"),
        "the diff marks the old line: {removed}"
    );
    shot(&mut browser, "key-values-shown");
    let (code, body) = serve.get(&format!(
        "/api/v1/key?area=entries&key_b64={}",
        percent(&b64("/t/entries/app/config"))
    ));
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("mode=green"),
        "the API carries values when enabled: {body}"
    );
}

/// `server.ui = false`: no page and no `/api/v1` reads of it; the other endpoints stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_false_serves_no_page() {
    let etcd = EtcdServer::start();
    let areas = [ENTRIES];
    let ws = Workspace::new(etcd.endpoint(), &areas);
    let cfg = ServeConfig {
        server_extra: Some("ui = false\n".to_string()),
        ..ServeConfig::fast(&areas)
    };
    let serve = Serve::start(&ws, etcd.endpoint(), &cfg);
    for path in ["/", "/ui/app.js", "/areas/entries", "/api/v1/overview"] {
        let (code, body) = serve.get(path);
        assert_eq!(code, 404, "GET {path} with ui = false: {body}");
    }
    assert_eq!(serve.get("/status").0, 200);
    assert_eq!(serve.get("/healthz").0, 200);
}

/// A hundred areas: the overview lists every one, fits a phone, and costs what `/status`
/// costs (both are printed: a measurement, not a timed assertion).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_areas_are_listed() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let names: Vec<(String, String, String)> = (0..100)
        .map(|i| {
            (
                format!("a{i:03}"),
                format!("/h/a{i:03}/"),
                format!("h/a{i:03}"),
            )
        })
        .collect();
    let areas = Area::each(&names, "both");
    for (_, prefix, _) in names.iter().step_by(10) {
        put(&mut c, &format!("{prefix}k"), "v").await;
    }
    let ws = Workspace::new(etcd.endpoint(), &areas);
    let serve = Serve::start(&ws, etcd.endpoint(), &ServeConfig::fast(&areas));
    serve.wait_ready();

    let mut browser = Browser::launch();
    browser.viewport(1280, 900, false);
    browser.goto(&format!("http://{}/", serve.addr));
    browser.wait_for(
        SEE,
        "a hundred rows",
        "document.querySelectorAll('#areas tbody tr').length === 100",
    );
    // One poll, timed in the page: the request, then drawing the table.
    let timing = browser.eval(
        "(async () => { const t0 = performance.now(); const r = await fetch('/api/v1/overview'); \
         const d = await r.json(); const t1 = performance.now(); page.doc = d; render(); \
         const t2 = performance.now(); return [t1 - t0, t2 - t1]; })()",
    );
    eprintln!(
        "100 areas: overview request {:.1} ms, drawing {:.1} ms",
        timing[0].as_f64().unwrap_or(f64::NAN),
        timing[1].as_f64().unwrap_or(f64::NAN)
    );
    shot(&mut browser, "overview-100-areas");
    browser.viewport(390, 844, true);
    browser.goto(&format!("http://{}/", serve.addr));
    browser.wait_for(
        SEE,
        "a hundred rows",
        "document.querySelectorAll('#areas tbody tr').length === 100",
    );
    assert!(
        !browser.overflows_horizontally(),
        "100 areas scroll sideways on a phone"
    );

    // The server's side of one poll against /status: the same in-memory document.
    for path in ["/status", "/api/v1/overview"] {
        let started = std::time::Instant::now();
        for _ in 0..200 {
            assert_eq!(serve.get(path).0, 200);
        }
        eprintln!(
            "100 areas: GET {path} {:.2} ms each (200 in a row, new connection each)",
            started.elapsed().as_secs_f64() * 5.0
        );
    }
}

/// Both sides changed a key and Git won: `/status` and the page list the conflict and its
/// key, never the value it overwrote (values may be secrets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_is_listed_without_its_value() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let areas = [ENTRIES];
    let ws = Workspace::new(etcd.endpoint(), &areas);
    let remote = Remote::init(ws.dir.path());
    put(&mut c, "/t/entries/k", "base").await;
    // A long batch window keeps the live change pending when Git's arrives; only
    // POST /sync fetches after the start.
    let cfg = ServeConfig {
        batch_window: "4s",
        fetch_interval: "1h",
        ..ServeConfig::fast(&areas).remote(&remote)
    };
    let serve = Serve::start(&ws, etcd.endpoint(), &cfg);
    serve.wait_ready();
    serve.wait_until(SEE, "the first commit pushed", || {
        let local = rev_parse(&ws.repo, MAIN);
        local.is_some() && local == remote.tip()
    });
    put(&mut c, "/t/entries/k", HAND_EDIT).await;
    remote.person_commits(
        ws.dir.path(),
        &[("entries/k", Some(b"from-git"))],
        "k from git",
    );
    serve.sync_now();
    serve.wait_until(SEE, "/status to list the conflict", || {
        serve.get("/status").1.contains("last_conflicts\":[{")
    });
    // /status has no token either: the value is not in it unless ui_show_values is on.
    let status = serve.get("/status").1;
    assert!(
        status.contains("\"overwritten\":null") && !status.contains(HAND_EDIT),
        "/status holds the overwritten value: {status}"
    );

    let mut browser = Browser::launch();
    browser.viewport(1280, 900, false);
    browser.goto(&format!("http://{}/areas/entries", serve.addr));
    browser.wait_text(SEE, "Conflicts: live values Git overwrote (1)");
    browser.wait_text(SEE, "hidden (server.ui_show_values = false)");
    let link = browser.eval(
        "[...document.querySelectorAll('#area-facts a')].map(a => a.innerText + ' ' + a.getAttribute('href')).join('|')",
    );
    assert!(
        link.as_str().unwrap_or_default().contains(&format!(
            "/t/entries/k /key?area=entries&key_b64={}",
            percent(&b64("/t/entries/k"))
        )),
        "the conflict links to its key's page: {link}"
    );
    shot(&mut browser, "area-conflict");
    assert!(
        !browser.html().contains(HAND_EDIT),
        "the area page holds the overwritten value"
    );
    browser.goto(&format!("http://{}/", serve.addr));
    browser.wait_for(SEE, "one conflict in the overview", "document.querySelector('#areas tr[data-area=\"entries\"] td[data-label=\"Conflicts\"]').innerText.trim() === '1'");
    assert!(
        !browser.html().contains(HAND_EDIT),
        "the overview holds the overwritten value"
    );
    let (code, overview) = serve.get("/api/v1/overview");
    assert_eq!(code, 200, "{overview}");
    assert!(
        !overview.contains(HAND_EDIT),
        "GET /api/v1/overview holds the overwritten value: {overview}"
    );
}

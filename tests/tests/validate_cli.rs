//! `kvgit validate` as CI runs it (no backend), the same bad input refused by `apply` before
//! its first write, and the CI job of docs/ci.md run exactly as written.

use etcd_client::{Client, GetOptions};
use kvgit_tests::etcd::EtcdServer;
use kvgit_tests::kvgit::{kvgit_bin, run_git, write_files, Area, Workspace};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

const ENTRIES: Area<'static> = Area {
    name: "entries",
    prefix: "/sigil/entries/",
    path: "entries",
    mode: "both",
};

/// An endpoint nothing listens on: validate must not need the backend.
const NO_BACKEND: &str = "http://127.0.0.1:9";

const SCHEMA: &[u8] = br#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "properties": {
    "port": { "type": "string", "pattern": "^[0-9]+$" },
    "node-1": { "type": "object", "required": ["status"] }
  },
  "additionalProperties": { "type": ["string", "object"] }
}"#;

/// The workspace with `schema = PATH` on its (only) area.
fn with_schema(endpoint: &str, schema: &str) -> Workspace {
    let ws = Workspace::new(endpoint, &[ENTRIES]);
    let mut cfg = std::fs::read_to_string(&ws.config).expect("config");
    cfg.push_str(&format!("schema = \"{schema}\"\n"));
    std::fs::write(&ws.config, cfg).expect("config");
    // The repository people push to (kvgit creates it on first use; validate never does).
    run_git(
        None,
        &["init", "-q", "--bare", "-b", "main", path(&ws.repo)],
    );
    ws
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

async fn all(c: &mut Client, prefix: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let resp = c
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    resp.kvs()
        .iter()
        .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
        .collect()
}

#[test]
fn validate_lists_every_problem_of_a_commit_in_each_format_without_a_backend() {
    let ws = with_schema(NO_BACKEND, "schemas/entries.json");
    let big = vec![b'x'; 1_600_000];
    ws.person_commits(
        &[
            ("schemas/entries.json", Some(SCHEMA)),
            ("entries/port", Some(b"80")),
            ("entries/node-1/status", Some(b"up")),
            ("entries/bad%ZZ", Some(b"1")),
            ("entries/dup", Some(b"1")),
            ("entries/dup%+/%empty", Some(b"2")),
            ("entries/big", Some(&big)),
        ],
        "good and bad",
    );
    let good_enough = ws.git(&["rev-parse", "main"]).trim().to_string();
    ws.person_commits(
        &[
            ("entries/port", Some(b"eighty")),
            ("entries/node-1/status", None),
            ("entries/node-1/role", Some(b"x")),
        ],
        "schema breaks",
    );

    let out = ws.kvgit(&["validate"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let text = out.stdout;
    let l = lines(&text);
    assert!(
        l.iter()
            .any(|l| l.starts_with("entries/bad%ZZ: maps to no key")),
        "{text}"
    );
    assert!(
        l.iter().any(|l| l.starts_with(
            "entries/dup%+/%empty: holds key /sigil/entries/dup that entries/dup holds too"
        )),
        "{text}"
    );
    assert!(
        l.iter().any(|l| l
            .starts_with("entries/big: the value is 1600000 bytes, over the backend's limit of")),
        "{text}"
    );
    assert!(
        l.iter()
            .any(|l| l.starts_with("entries/port: at /port: ") && l.contains("\"eighty\"")),
        "{text}"
    );
    assert!(
        l.iter()
            .any(|l| l.starts_with("entries: at /node-1: ") && l.contains("status")),
        "{text}"
    );
    assert!(
        text.ends_with(&format!(
            "invalid: 5 problems in 6 files of 1 areas of {}\n",
            ws.git(&["rev-parse", "main"]).trim()
        )),
        "{text}"
    );

    let json = ws.kvgit(&["validate", "--format", "json"]);
    assert_eq!(json.code, 1);
    let j: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(j["valid"], false);
    let problems = j["problems"].as_array().expect("problems");
    assert_eq!(problems.len(), 5);
    let port = problems
        .iter()
        .find(|p| p["file"] == "entries/port")
        .expect("the port problem");
    assert_eq!(port["pointer"], "/port");
    assert_eq!(port["area"], "entries");
    assert!(port["message"]
        .as_str()
        .is_some_and(|m| m.contains("eighty")));

    let gh = ws.kvgit(&["validate", "--format", "github"]);
    assert_eq!(gh.code, 1);
    let gh_lines = lines(&gh.stdout);
    assert_eq!(gh_lines.len(), 5, "{}", gh.stdout);
    assert!(gh_lines.iter().all(|l| l.starts_with("::error file=")));
    assert!(
        gh_lines.iter().any(|l| l.starts_with(
            "::error file=entries/bad%25ZZ,title=kvgit::entries/bad%25ZZ: maps to no key"
        )),
        "{}",
        gh.stdout
    );

    // An older commit: only what was wrong then.
    let older = ws.kvgit(&["validate", "--ref", &good_enough]);
    assert_eq!(older.code, 1);
    assert!(!older.stdout.contains("entries/port:"), "{}", older.stdout);
    assert!(older.stdout.contains("entries/bad%ZZ"), "{}", older.stdout);
}

#[test]
fn validate_reads_a_checkouts_working_files() {
    let ws = with_schema(NO_BACKEND, "schemas/entries.json");
    ws.person_commits(
        &[
            ("schemas/entries.json", Some(SCHEMA)),
            ("entries/port", Some(b"80")),
        ],
        "valid",
    );
    let out = ws.kvgit(&["validate"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.starts_with("valid: 1 files in 1 areas of "),
        "{}",
        out.stdout
    );

    let checkout = ws.dir.path().join("checkout");
    run_git(None, &["clone", "-q", path(&ws.repo), path(&checkout)]);
    let dir = path(&checkout);
    let ok = ws.kvgit(&["validate", "--dir", dir]);
    assert_eq!(ok.code, 0, "{}\n{}", ok.stdout, ok.stderr);
    // Uncommitted edits are what --dir checks.
    write_files(&checkout, &[("entries/port", Some(b"http"))]);
    let bad = ws.kvgit(&["validate", "--dir", dir, "--format", "github"]);
    assert_eq!(bad.code, 1, "{}\n{}", bad.stdout, bad.stderr);
    assert!(
        bad.stdout
            .starts_with("::error file=entries/port,title=kvgit::entries/port: at /port: "),
        "{}",
        bad.stdout
    );
    assert_eq!(ws.kvgit(&["validate"]).code, 0, "the commit is still valid");
    // A schema that is not in the directory.
    std::fs::remove_file(checkout.join("schemas/entries.json")).expect("rm");
    let missing = ws.kvgit(&["validate", "--dir", dir]);
    assert_eq!(missing.code, 1);
    assert!(
        missing.stdout.starts_with(
            "schemas/entries.json: the schema of area entries (area.schema) is not in "
        ),
        "{}",
        missing.stdout
    );
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_refuses_a_bad_schema_or_a_missing_one_before_the_first_write() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = with_schema(etcd.endpoint(), "schemas/entries.json");
    c.put("/sigil/entries/port", "80", None).await.expect("put");
    ws.kvgit(&["export"]).ok();
    let before = all(&mut c, "/sigil/entries/").await;

    // The schema path is missing from the commit.
    ws.person_commits(&[("entries/port", Some(b"81"))], "no schema yet");
    let out = ws.kvgit(&["apply"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("schemas/entries.json: the schema of area entries (area.schema) is not in"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("nothing was written"), "{}", out.stderr);
    let v = ws.kvgit(&["validate"]);
    assert_eq!(v.code, 1);
    assert!(
        v.stdout.starts_with("schemas/entries.json: "),
        "{}",
        v.stdout
    );

    // Not a valid JSON Schema.
    ws.person_commits(
        &[("schemas/entries.json", Some(br#"{"type": "strnig"}"#))],
        "typo",
    );
    let out = ws.kvgit(&["plan"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("schemas/entries.json: ")
            && out.stderr.contains("not a valid JSON Schema (2020-12)"),
        "{}",
        out.stderr
    );
    let out = ws.kvgit(&["apply"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("schemas/entries.json: "),
        "{}",
        out.stderr
    );
    let v = ws.kvgit(&["validate", "--format", "json"]);
    assert_eq!(v.code, 1);
    let j: serde_json::Value = serde_json::from_str(&v.stdout).expect("JSON");
    assert_eq!(j["problems"][0]["file"], "schemas/entries.json");

    // Content that does not match: refused too; then fixed, applied.
    ws.person_commits(
        &[
            ("schemas/entries.json", Some(SCHEMA)),
            ("entries/port", Some(b"eighty")),
        ],
        "schema, bad port",
    );
    let out = ws.kvgit(&["apply"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("entries/port: at /port: "),
        "{}",
        out.stderr
    );
    assert_eq!(
        all(&mut c, "/sigil/entries/").await,
        before,
        "nothing written"
    );
    // The content is checked while the backend connects: with no backend to reach, the
    // call still names the bad value, not the endpoint.
    let good = std::fs::read_to_string(&ws.config).expect("config");
    let nowhere = good.replace(etcd.endpoint(), "http://127.0.0.1:9");
    assert_ne!(nowhere, good, "the endpoint is in the config");
    std::fs::write(&ws.config, nowhere).expect("config");
    for verb in ["plan", "apply"] {
        let out = ws.kvgit(&[verb]);
        assert_eq!(out.code, 1, "{verb}");
        assert!(
            out.stderr.contains("entries/port: at /port: ") && !out.stderr.contains("127.0.0.1:9"),
            "{verb}: {}",
            out.stderr
        );
    }
    std::fs::write(&ws.config, good).expect("config");
    ws.person_commits(&[("entries/port", Some(b"8080"))], "good port");
    ws.kvgit(&["apply"]).ok();
    assert_eq!(
        all(&mut c, "/sigil/entries/").await[&b"/sigil/entries/port".to_vec()],
        b"8080"
    );
}

/// The ```sh ci``` block of docs/ci.md, as written.
fn ci_block() -> String {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/ci.md"))
        .expect("docs/ci.md");
    let start = doc
        .find("```sh ci\n")
        .expect("a ```sh ci block in docs/ci.md")
        + "```sh ci\n".len();
    let len = doc[start..].find("\n```").expect("the block's end");
    doc[start..start + len + 1].to_string()
}

/// Runs the CI block in `checkout` as a CI job would: `kvgit` on PATH, the config and the
/// pull request's commit in the environment.
fn run_ci(checkout: &Path, config: &Path, pr_sha: &str) -> (i32, String, String) {
    let bin_dir = kvgit_bin().parent().expect("bin dir").to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(ci_block())
        .current_dir(checkout)
        .env("PATH", path)
        .env("NODE_CONFIG", config)
        .env("PR_SHA", pr_sha)
        .output()
        .expect("spawn sh");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ci_job_of_the_docs_runs_as_written() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = with_schema(etcd.endpoint(), "schemas/entries.json");
    ws.person_commits(&[("schemas/entries.json", Some(SCHEMA))], "schema");
    c.put("/sigil/entries/port", "80", None).await.expect("put");
    c.put("/sigil/entries/node-1/status", "up", None)
        .await
        .expect("put");
    ws.kvgit(&["export"]).ok();

    // The pull request: a checkout with one more commit.
    let checkout = ws.dir.path().join("pr");
    run_git(None, &["clone", "-q", path(&ws.repo), path(&checkout)]);
    let commit = |files: &[(&str, Option<&[u8]>)], msg: &str| {
        write_files(&checkout, files);
        run_git(Some(&checkout), &["add", "-A"]);
        run_git(
            Some(&checkout),
            &[
                "-c",
                "user.name=P",
                "-c",
                "user.email=p@x",
                "commit",
                "-q",
                "-m",
                msg,
            ],
        );
        String::from_utf8_lossy(&run_git(Some(&checkout), &["rev-parse", "HEAD"]))
            .trim()
            .to_string()
    };
    let sha = commit(&[("entries/port", Some(b"8080"))], "new port");
    let (code, stdout, stderr) = run_ci(&checkout, &ws.config, &sha);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("~ /sigil/entries/port\n"), "{stdout}");
    assert!(
        stdout.contains("Plan: 0 to add, 1 to change, 0 to delete."),
        "{stdout}"
    );
    assert_eq!(
        all(&mut c, "/sigil/entries/").await[&b"/sigil/entries/port".to_vec()],
        b"80",
        "the job only plans"
    );

    // A pull request that breaks the schema fails the job with an annotation.
    let sha = commit(&[("entries/port", Some(b"http"))], "bad port");
    let (code, stdout, stderr) = run_ci(&checkout, &ws.config, &sha);
    assert_ne!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("::error file=entries/port,title=kvgit::entries/port: at /port: "),
        "{stdout}\n{stderr}"
    );
}

#[test]
fn consul_rules_are_checked_offline_too() {
    let ws = Workspace::new(NO_BACKEND, &[ENTRIES]);
    ws.set_backend_kind("consul");
    ws.write_config(NO_BACKEND, &[ENTRIES], "");
    run_git(
        None,
        &["init", "-q", "--bare", "-b", "main", path(&ws.repo)],
    );
    let mid = vec![b'v'; 400_000];
    ws.person_commits(
        &[("entries/bin%FF", Some(b"b")), ("entries/mid", Some(&mid))],
        "fine for etcd, not for consul",
    );
    let out = ws.kvgit(&["validate"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let text = out.stdout;
    assert!(
        text.contains("entries/bin%FF: holds a key that is not UTF-8, which Consul cannot store"),
        "{text}"
    );
    assert!(
        text.contains("entries/mid: the value is 400000 bytes, over the backend's limit of"),
        "{text}"
    );

    // The same commit is valid for etcd.
    ws.set_backend_kind("etcd");
    ws.write_config(NO_BACKEND, &[ENTRIES], "");
    let out = ws.kvgit(&["validate"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
}

#[test]
fn documents_are_parsed_and_each_matched_against_the_schema() {
    let ws = with_schema(NO_BACKEND, "schemas/app.json");
    let mut cfg = std::fs::read_to_string(&ws.config).expect("config");
    cfg.push_str("format = \"yaml\"\n");
    std::fs::write(&ws.config, cfg).expect("config");
    ws.person_commits(
        &[
            (
                "schemas/app.json",
                Some(br#"{"type": "object", "required": ["port"], "properties": {"port": {"type": "integer"}}}"#),
            ),
            ("entries/web.yaml", Some(b"port: 8080\nhosts: [a, b]\n")),
            ("entries/api.json", Some(br#"{"port": "eighty", "extra": null}"#)),
            ("entries/db.yml", Some(b"name: db\n")),
            ("entries/broken.yaml", Some(b"port: [1\n")),
        ],
        "documents",
    );
    let out = ws.kvgit(&["validate", "--format", "json"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let j: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    let found: Vec<(String, String)> = j["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| {
            (
                p["file"].as_str().unwrap_or_default().to_string(),
                p["pointer"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    // null has no key: the document is refused where it is, before any schema check.
    assert!(
        found.contains(&("entries/api.json".into(), "/extra".into())),
        "{found:?}"
    );
    assert!(
        found.iter().any(|(f, _)| f == "entries/broken.yaml"),
        "{found:?}"
    );
    assert!(
        found.contains(&("entries/db.yml".into(), String::new())),
        "db.yml lacks the required port: {found:?}"
    );
    assert!(
        !found.iter().any(|(f, _)| f == "entries/web.yaml"),
        "{found:?}"
    );
    assert_eq!(found.len(), 3, "{found:?}");
}

//! Signed history end to end: with `git.sign_key_file` every kvgit commit (exports and
//! checkpoints) passes real `git verify-commit`; with `git.allowed_signers_file` a tip
//! holding a commit no allowed signer signed is not applied by `plan`, `apply` or `serve`.

use etcd_client::Client;
use kvgit_tests::etcd::EtcdServer;
use kvgit_tests::kvgit::{run_git, write_files, Area, Workspace};
use kvgit_tests::serve::{Serve, ServeConfig};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const ROUTES: Area<'static> = Area {
    name: "routes",
    prefix: "/sigil/routes/",
    path: "routes",
    mode: "both",
};

/// The `[git]` lines of every test: paths relative to the config file.
const SIGNED: &str = "sign_key_file = \"kvgit_key\"\nallowed_signers_file = \"allowed_signers\"\n";

/// An ed25519 key without passphrase at `dir/name`; returns its public line.
fn keygen(dir: &Path, name: &str) -> String {
    let key = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .output()
        .expect("run ssh-keygen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(key.with_extension("pub"))
        .expect("public key")
        .trim()
        .to_string()
}

/// Keys of kvgit, a person and a stranger in the workspace; the allowed signers are kvgit
/// and the person.
fn keys(ws: &Workspace) {
    let dir = ws.dir.path();
    let kvgit = keygen(dir, "kvgit_key");
    let person = keygen(dir, "person_key");
    keygen(dir, "stranger_key");
    std::fs::write(
        dir.join("allowed_signers"),
        format!("# who may change the state\nkvgit@test {kvgit}\nperson@example.org {person}\n"),
    )
    .expect("write allowed_signers");
}

/// A person's commit of `files` on main, signed with `dir/<key>` when given; returns its id.
fn person_commits(
    ws: &Workspace,
    files: &[(&str, Option<&[u8]>)],
    msg: &str,
    key: Option<&str>,
) -> String {
    let clone = ws.dir.path().join("person-clone");
    if clone.exists() {
        std::fs::remove_dir_all(&clone).expect("remove old clone");
    }
    let repo = ws.repo.to_str().expect("utf-8");
    run_git(None, &["clone", "-q", repo, clone.to_str().expect("utf-8")]);
    write_files(&clone, files);
    run_git(Some(&clone), &["add", "-A"]);
    let key_cfg = key.map(|k| format!("user.signingkey={}", ws.dir.path().join(k).display()));
    let mut args = vec![
        "-c",
        "user.name=A Person",
        "-c",
        "user.email=person@example.org",
        "-c",
        "gpg.format=ssh",
        "-c",
        "commit.gpgsign=false",
    ];
    if let Some(k) = &key_cfg {
        args.extend(["-c", k.as_str(), "commit", "-S"]);
    } else {
        args.push("commit");
    }
    args.extend(["-q", "-m", msg]);
    run_git(Some(&clone), &args);
    run_git(Some(&clone), &["push", "-q", "origin", "HEAD:main"]);
    let id = String::from_utf8_lossy(&run_git(Some(&clone), &["rev-parse", "HEAD"]))
        .trim()
        .to_string();
    std::fs::remove_dir_all(&clone).expect("remove clone");
    id
}

/// `git verify-commit` of `rev` against the workspace's allowed signers.
fn git_verifies(ws: &Workspace, rev: &str) -> bool {
    let allowed = ws.dir.path().join("allowed_signers");
    Command::new("git")
        .arg("--git-dir")
        .arg(&ws.repo)
        .arg("-c")
        .arg(format!("gpg.ssh.allowedSignersFile={}", allowed.display()))
        .args(["verify-commit", rev])
        .output()
        .expect("run git")
        .status
        .success()
}

async fn get(c: &mut Client, k: &str) -> Option<Vec<u8>> {
    let resp = c.get(k, None).await.expect("get");
    resp.kvs().first().map(|kv| kv.value().to_vec())
}

fn revs(ws: &Workspace, args: &[&str]) -> Vec<String> {
    ws.git(args).lines().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn kvgit_signs_its_commits_and_applies_only_allowed_signers() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[ROUTES]);
    keys(&ws);
    ws.write_config_full(etcd.endpoint(), &[ROUTES], SIGNED, "", "");
    c.put("/sigil/routes/api", "v1", None).await.expect("put");
    ws.kvgit(&["export"]).ok();
    c.put("/sigil/routes/web", "w1", None).await.expect("put");
    ws.kvgit(&["export"]).ok();

    // Every kvgit commit, on the branch and on the checkpoint chains, passes git.
    let mut ours = revs(&ws, &["rev-list", "main"]);
    assert_eq!(ours.len(), 2, "one commit per export");
    ours.extend(revs(&ws, &["rev-list", "--glob=refs/kvgit/checkpoints/*"]));
    assert!(ours.len() >= 3, "checkpoint commits too: {ours:?}");
    for rev in &ours {
        assert!(git_verifies(&ws, rev), "git verify-commit refused {rev}");
        let raw = ws.git(&["cat-file", "commit", rev]);
        assert!(
            raw.contains("gpgsig -----BEGIN SSH SIGNATURE-----"),
            "{raw}"
        );
    }
    let exported = ws.git(&["rev-parse", "main"]).trim().to_string();

    // A person's unsigned commit: plan and apply name it and the area; nothing is written.
    let unsigned = person_commits(&ws, &[("routes/api", Some(b"v2"))], "unsigned change", None);
    assert!(!git_verifies(&ws, &unsigned));
    for verb in ["plan", "apply"] {
        let run = ws.kvgit(&[verb]);
        assert_eq!(
            run.code, 1,
            "{verb} must refuse:\n{}\n{}",
            run.stdout, run.stderr
        );
        for part in [
            &unsigned[..12],
            "unsigned change",
            "area routes",
            "not signed",
        ] {
            assert!(
                run.stderr.contains(part),
                "{verb}: {part:?} missing:\n{}",
                run.stderr
            );
        }
    }
    assert_eq!(
        get(&mut c, "/sigil/routes/api").await.as_deref(),
        Some(&b"v1"[..])
    );

    // The same change signed by an allowed key is applied.
    ws.git(&["update-ref", "refs/heads/main", &exported]);
    let signed = person_commits(
        &ws,
        &[("routes/api", Some(b"v3"))],
        "signed change",
        Some("person_key"),
    );
    assert!(git_verifies(&ws, &signed));
    let plan = ws.kvgit(&["plan"]).ok();
    assert!(plan.stdout.contains("/sigil/routes/api"), "{}", plan.stdout);
    ws.kvgit(&["apply"]).ok();
    assert_eq!(
        get(&mut c, "/sigil/routes/api").await.as_deref(),
        Some(&b"v3"[..])
    );

    // Signed, but by a key the file does not list: refused.
    let stranger = person_commits(
        &ws,
        &[("routes/api", Some(b"v4"))],
        "stranger change",
        Some("stranger_key"),
    );
    let run = ws.kvgit(&["apply"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains(&stranger[..12]), "{}", run.stderr);
    assert!(
        run.stderr.contains("not in the allowed signers"),
        "{}",
        run.stderr
    );
    assert_eq!(
        get(&mut c, "/sigil/routes/api").await.as_deref(),
        Some(&b"v3"[..])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unusable_key_and_signer_files_stop_the_start_naming_the_setting() {
    let etcd = EtcdServer::start();
    let ws = Workspace::new(etcd.endpoint(), &[ROUTES]);
    keys(&ws);
    let dir: PathBuf = ws.dir.path().to_owned();
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "secret", "-f"])
        .arg(dir.join("locked_key"))
        .status()
        .expect("run ssh-keygen");
    assert!(status.success());
    std::fs::write(dir.join("bad_signers"), "person@example.org ssh-ed25519\n").expect("write");
    for (git, setting) in [
        ("sign_key_file = \"locked_key\"\n", "git.sign_key_file: "),
        ("sign_key_file = \"absent\"\n", "git.sign_key_file: "),
        (
            "allowed_signers_file = \"bad_signers\"\n",
            "git.allowed_signers_file: ",
        ),
        (
            "allowed_signers_file = \"absent\"\n",
            "git.allowed_signers_file: ",
        ),
    ] {
        ws.write_config_full(etcd.endpoint(), &[ROUTES], git, "", "");
        let run = ws.kvgit(&["plan"]);
        assert_ne!(run.code, 0, "{git}");
        let line = run
            .stderr
            .lines()
            .find(|l| l.contains(setting))
            .unwrap_or_else(|| panic!("{setting} not named:\n{}", run.stderr));
        assert!(!line.contains("secret"), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_shows_an_unverified_tip_and_writes_nothing() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    let ws = Workspace::new(etcd.endpoint(), &[ROUTES]);
    keys(&ws);
    c.put("/sigil/routes/api", "v1", None).await.expect("put");
    let mut cfg = ServeConfig::fast(&[ROUTES]);
    cfg.git_extra = Some(SIGNED.to_string());
    let serve = Serve::start(&ws, etcd.endpoint(), &cfg);
    serve.wait_ready();
    serve.wait_until(Duration::from_secs(20), "the export commit", || {
        ws.commit_count() >= 1
    });
    assert_eq!(
        serve.metric(r#"kvgit_unverified_tip{area="routes"}"#),
        Some(0.0)
    );

    let unsigned = person_commits(&ws, &[("routes/new", Some(b"x"))], "unsigned route", None);
    serve.sync_now();
    serve.wait_until(Duration::from_secs(20), "kvgit_unverified_tip = 1", || {
        serve.metric(r#"kvgit_unverified_tip{area="routes"}"#) == Some(1.0)
    });
    let status = serve.status();
    let area = status["areas"]
        .as_array()
        .and_then(|l| l.iter().find(|a| a["area"] == "routes"))
        .unwrap_or_else(|| panic!("no area routes: {status}"));
    let error = area["apply_error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&unsigned[..12]) && error.contains("unsigned route"),
        "{status}"
    );
    assert_eq!(
        get(&mut c, "/sigil/routes/new").await,
        None,
        "nothing applied"
    );
}

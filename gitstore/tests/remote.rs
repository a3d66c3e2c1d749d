//! Push and fetch against bare remotes on disk, through the git CLI.

mod common;

use common::*;
use gitstore::{FetchError, PushError, PushOutcome};

fn remote(dir: &std::path::Path) -> String {
    let path = dir.join("remote.git");
    git(dir, &["init", "-q", "--bare", path.to_str().expect("utf8")]);
    path.to_str().expect("utf8").to_owned()
}

#[test]
fn push_is_atomic_and_never_forced_and_fetch_brings_the_tip() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = remote(tmp.path());
    let node_a = tmp.path().join("a");
    let node_b = tmp.path().join("b");
    std::fs::create_dir_all(&node_a).expect("mkdir");
    std::fs::create_dir_all(&node_b).expect("mkdir");
    let a = store(&node_a);
    let b = store(&node_b);

    // Nothing on the remote yet.
    assert_eq!(b.fetch(&url, "main").expect("fetch empty"), None);

    let ta = a
        .write_plan_packed(&plan(&[("areas/x/k", b"a1")]))
        .expect("tree");
    let ca = commit(&a, ta, None, "a1", 1);
    let meta = a
        .write_commit(ta, &[], "meta", &author(), 1)
        .expect("meta commit");
    let out = a
        .push(
            &url,
            &[
                (ca, "refs/heads/main".into()),
                (meta, "refs/kvgit/nodes/a".into()),
            ],
        )
        .expect("push");
    assert_eq!(out, PushOutcome::Pushed);
    assert_eq!(
        git(tmp.path(), &["--git-dir", &url, "rev-parse", "main"]).trim(),
        ca.to_string()
    );

    // b fetches a's tip and meta refs, builds on it and pushes.
    assert_eq!(b.fetch(&url, "main").expect("fetch"), Some(ca));
    assert_eq!(
        b.read_ref("refs/remotes/kvgit/main").expect("ref"),
        Some(ca)
    );
    assert_eq!(
        b.read_ref("refs/remotes/kvgit-meta/nodes/a").expect("ref"),
        Some(meta)
    );
    assert_eq!(
        b.files_under(b.commit_info(ca).expect("fetched commit").tree)
            .expect("walk")
            .len(),
        1
    );
    let tb = b.write_plan(&plan(&[("areas/x/k", b"b1")])).expect("tree");
    let cb = b
        .write_commit(tb, &[ca], "b1", &author(), 2)
        .expect("commit");
    assert_eq!(
        b.push(&url, &[(cb, "refs/heads/main".into())])
            .expect("push"),
        PushOutcome::Pushed
    );

    // a is now behind: its non-fast-forward push is rejected, and atomically nothing moves.
    let ta2 = a.write_plan(&plan(&[("areas/x/k", b"a2")])).expect("tree");
    let ca2 = a
        .write_commit(ta2, &[ca], "a2", &author(), 3)
        .expect("commit");
    let out = a
        .push(
            &url,
            &[
                (ca2, "refs/heads/main".into()),
                (ca2, "refs/kvgit/nodes/a2".into()),
            ],
        )
        .expect("push runs");
    match out {
        PushOutcome::Rejected { refs } => {
            assert_eq!(refs.len(), 1, "{refs:?}");
            assert_eq!(refs[0].remote_ref, "refs/heads/main");
        }
        PushOutcome::Pushed => panic!("a non-fast-forward push must be rejected"),
    }
    assert_eq!(
        git(tmp.path(), &["--git-dir", &url, "rev-parse", "main"]).trim(),
        cb.to_string()
    );
    assert!(!git_output(
        tmp.path(),
        &[
            "--git-dir",
            &url,
            "rev-parse",
            "--verify",
            "-q",
            "refs/kvgit/nodes/a2"
        ]
    )
    .status
    .success());

    // After a fetch, replaying on the new tip goes through.
    assert_eq!(a.fetch(&url, "main").expect("fetch"), Some(cb));
    let ca3 = a
        .write_commit(ta2, &[cb], "a2 replayed", &author(), 4)
        .expect("commit");
    assert_eq!(
        a.push(&url, &[(ca3, "refs/heads/main".into())])
            .expect("push"),
        PushOutcome::Pushed
    );
    fsck(std::path::Path::new(&url));
}

#[test]
fn unreachable_remotes_and_bad_arguments_are_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    let tree = s.write_plan(&plan(&[("k", b"v")])).expect("tree");
    let c = commit(&s, tree, None, "c", 1);
    let missing = tmp.path().join("no-such-remote.git");
    let missing = missing.to_str().expect("utf8");

    let err = s
        .push(missing, &[(c, "refs/heads/main".into())])
        .expect_err("unreachable");
    assert!(matches!(err, PushError::Unreachable { .. }), "{err}");
    assert!(err.is_retryable());
    let err = s.fetch(missing, "main").expect_err("unreachable");
    assert!(matches!(err, FetchError::Unreachable { .. }), "{err}");

    let err = s
        .push("--upload-pack=evil", &[(c, "refs/heads/main".into())])
        .expect_err("option-like url");
    assert!(matches!(err, PushError::InvalidUrl { .. }), "{err}");
    let err = s
        .push(missing, &[(c, "main".into())])
        .expect_err("short ref");
    assert!(matches!(err, PushError::InvalidRef { .. }), "{err}");
}

//! Opening, commits, compare-and-swap ref updates and revision resolution.

mod common;

use common::*;
use gitstore::{GitStore, OpenError, RefUpdateError, ResolveError};

#[test]
fn open_refuses_files_and_work_trees_and_reopens_bare_repos() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("file");
    std::fs::write(&file, b"x").expect("write");
    let err = GitStore::open_or_init(&file, "main")
        .err()
        .expect("a file is refused");
    assert!(matches!(err, OpenError::NotADirectory { .. }));
    assert!(err.to_string().contains("file"), "{err}");

    let work = tmp.path().join("work");
    std::fs::create_dir(&work).expect("mkdir");
    git(&work, &["init", "-q"]);
    let err = GitStore::open_or_init(&work, "main")
        .err()
        .expect("a work tree is refused");
    assert!(matches!(err, OpenError::NotBare { .. }), "{err}");

    let err = GitStore::open_or_init(&tmp.path().join("x"), "bad..name")
        .err()
        .expect("bad branch");
    assert!(matches!(err, OpenError::InvalidBranch { .. }), "{err}");

    let s = store(tmp.path());
    assert_eq!(s.branch(), "main");
    assert_eq!(s.tip().expect("tip"), None);
    let tree = s.write_plan(&plan(&[("k", b"v")])).expect("write");
    let c = commit(&s, tree, None, "one", 10);
    drop(s);
    let again = store(tmp.path());
    assert_eq!(again.tip().expect("tip"), Some(c));
    assert_eq!(
        git(again.git_dir(), &["symbolic-ref", "HEAD"]).trim(),
        "refs/heads/main"
    );
}

#[test]
fn commit_info_round_trips() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    let tree = s.write_plan(&plan(&[("k", b"v")])).expect("write");
    let msg = "entries: 1 changes up to revision 7\n\nKvgit-Area: entries\nKvgit-Revision: 7";
    let c1 = commit(&s, tree, None, msg, 1_700_000_000);
    let c2 = commit(&s, tree, Some(c1), "second", 1_700_000_100);
    let info = s.commit_info(c2).expect("info");
    assert_eq!(info.id, c2);
    assert_eq!(info.tree, tree);
    assert_eq!(info.parents, vec![c1]);
    assert_eq!(info.author_name, "kvgit test");
    assert_eq!(info.author_email, "test@kvgit");
    assert_eq!(info.time, 1_700_000_100);
    assert_eq!(info.message, "second\n");
    let first = s.commit_info(c1).expect("info");
    assert_eq!(first.summary(), "entries: 1 changes up to revision 7");
    // git agrees on the trailers.
    let trailers = git(
        s.git_dir(),
        &[
            "log",
            "-1",
            "--format=%(trailers:key=Kvgit-Revision,valueonly)",
            &c1.to_string(),
        ],
    );
    assert_eq!(trailers.trim(), "7");
    fsck(s.git_dir());
}

#[test]
fn update_ref_is_compare_and_swap() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    let tree = s.write_plan(&plan(&[("k", b"v")])).expect("write");
    let a = s
        .write_commit(tree, &[], "a", &author(), 1)
        .expect("commit");
    let b = s
        .write_commit(tree, &[a], "b", &author(), 2)
        .expect("commit");
    let c = s
        .write_commit(tree, &[a], "c", &author(), 3)
        .expect("commit");
    let name = "refs/heads/main";

    s.update_ref(name, a, None, "create").expect("create");
    let err = s
        .update_ref(name, b, None, "create again")
        .expect_err("exists");
    assert!(
        matches!(err, RefUpdateError::Conflict { expected: None, actual: Some(x), .. } if x == a),
        "{err}"
    );

    s.update_ref(name, b, Some(a), "advance").expect("cas");
    let err = s
        .update_ref(name, c, Some(a), "stale")
        .expect_err("lost race");
    match err {
        RefUpdateError::Conflict {
            name: n,
            expected,
            actual,
        } => {
            assert_eq!(n, name);
            assert_eq!(expected, Some(a));
            assert_eq!(actual, Some(b));
        }
        other => panic!("expected a conflict, got {other}"),
    }
    assert_eq!(s.tip().expect("tip"), Some(b));
    assert_eq!(s.read_ref(name).expect("read"), Some(b));
    assert_eq!(s.read_ref("refs/heads/none").expect("read"), None);
    assert!(s.read_ref("not a ref").is_err());
    assert!(matches!(
        s.update_ref("bad..ref", a, None, "x"),
        Err(RefUpdateError::InvalidName { .. })
    ));
}

#[test]
fn revisions_resolve_to_commits() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    let tree = s.write_plan(&plan(&[("k", b"v")])).expect("write");
    let c1 = commit(&s, tree, None, "1", 1);
    let c2 = commit(&s, tree, Some(c1), "2", 2);
    let c3 = commit(&s, tree, Some(c2), "3", 3);
    git(
        s.git_dir(),
        &["tag", "-a", "-m", "annotated", "v1", &c2.to_string()],
    );

    assert_eq!(s.resolve_commit("main").expect("branch"), c3);
    assert_eq!(s.resolve_commit("refs/heads/main").expect("full ref"), c3);
    assert_eq!(s.resolve_commit("HEAD").expect("HEAD"), c3);
    assert_eq!(s.resolve_commit("main~2").expect("ancestor"), c1);
    assert_eq!(s.resolve_commit("v1").expect("annotated tag peeled"), c2);
    assert_eq!(s.resolve_commit(&c1.to_string()).expect("full id"), c1);
    assert_eq!(
        s.resolve_commit(&c1.to_string()[..10]).expect("short id"),
        c1
    );

    let err = s.resolve_commit("nope").expect_err("unknown");
    assert!(matches!(err, ResolveError::NotFound { .. }));
    assert!(err.to_string().contains("\"nope\""), "{err}");
    let err = s.resolve_commit(&tree.to_string()).expect_err("a tree");
    assert!(matches!(err, ResolveError::NotACommit { .. }), "{err}");
}

#[test]
fn commits_need_their_tree_and_a_sane_author() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    let missing = s.hash_blob(b"never written").expect("hash");
    assert!(s.write_commit(missing, &[], "x", &author(), 1).is_err());
    let tree = s.write_plan(&plan(&[("k", b"v")])).expect("write");
    let bad = gitstore::Author {
        name: "a <b>".into(),
        email: "e".into(),
    };
    assert!(s.write_commit(tree, &[], "x", &bad, 1).is_err());
    assert!(s.write_commit(tree, &[missing], "x", &author(), 1).is_err());
}

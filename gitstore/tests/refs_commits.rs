//! Opening, commits, compare-and-swap ref updates and revision resolution.

mod common;

use common::*;
use gitstore::{
    CommitsGo, GitStore, ObjectBatch, ObjectId, OpenError, RefUpdateError, ResolveError,
};

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

/// Several areas grafted and committed one after another into one batch, as a `kvgit
/// export` of several areas records them: each commit is the next one's parent and
/// root, nothing is in the store before `write_batch`, and git reads the result.
#[test]
fn a_batch_chains_commits_on_its_own_trees_and_writes_them_at_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    let start_root = s
        .write_plan(&plan(&[("a/k", b"1"), ("b/k", b"2"), ("keep/k", b"3")]))
        .expect("write");
    commit(&s, start_root, None, "start", 10);
    let mut previous_cp = None;
    let packs = |s: &GitStore| {
        std::fs::read_dir(s.git_dir().join("objects/pack"))
            .expect("pack dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".pack"))
            .count()
    };
    for (round, (go, many)) in [
        (CommitsGo::WithTheRest, 40),
        (CommitsGo::Loose, 40),
        (CommitsGo::Loose, 1),
    ]
    .into_iter()
    .enumerate()
    {
        let tip = s.tip().expect("tip").expect("a tip");
        let root = s.commit_info(tip).expect("info").tree;
        let (loose_before, packs_before) = (loose_count(s.git_dir()), packs(&s));
        let mut batch = ObjectBatch::new();
        // Area a gets `many` new files, written into the batch only.
        let files: Vec<(String, Vec<u8>)> = (0..many)
            .map(|i| (format!("k{i}"), format!("{go:?}-{i}").into_bytes()))
            .collect();
        let refs: Vec<(&str, &[u8])> = files.iter().map(|(p, v)| (p.as_str(), &v[..])).collect();
        let a_tree = s
            .write_plan_in(&mut batch, &plan(&refs))
            .expect("plan in batch");
        assert!(!s.has_object(a_tree), "nothing is written before the batch");
        let root1 = s
            .set_subtree_in(&mut batch, Some(root), "a", Some(a_tree))
            .expect("graft a")
            .expect("a root");
        let c1 = s
            .commit_in(&mut batch, root1, &[tip], "area a", &author(), 20)
            .expect("commit a");
        // Area b is removed on top of the first commit's root, which only the batch holds.
        let root2 = s
            .set_subtree_in(&mut batch, Some(root1), "b", None)
            .expect("remove b")
            .expect("b root");
        let c2 = s
            .commit_in(&mut batch, root2, &[c1], "area b", &author(), 20)
            .expect("commit b");
        // A checkpoint-like commit of the empty tree, with no parent.
        let empty = GitStore::empty_tree_id();
        let cp = s
            .commit_in(
                &mut batch,
                empty,
                &[],
                "checkpoint",
                &author(),
                20 + round as i64,
            )
            .expect("commit of the empty tree");
        assert!(!s.has_object(c1) && !s.has_object(c2) && !s.has_object(cp));
        s.write_batch(batch, go).expect("write the batch");
        let cp_ref = "refs/kvgit/checkpoints/t";
        s.update_refs(
            &[(s.branch_ref(), c2, Some(tip)), (cp_ref, cp, previous_cp)],
            "batch",
        )
        .expect("the branch and the checkpoint move together");
        previous_cp = Some(cp);
        let dir = s.git_dir();
        assert_eq!(git(dir, &["rev-parse", "main"]).trim(), c2.to_string());
        assert_eq!(git(dir, &["rev-parse", "main^"]).trim(), c1.to_string());
        assert_eq!(git(dir, &["rev-parse", "main^^"]).trim(), tip.to_string());
        assert_eq!(git(dir, &["show", "main:a/k0"]), format!("{go:?}-0"));
        assert_eq!(git(dir, &["show", "main:keep/k"]), "3");
        assert_eq!(git(dir, &["ls-tree", "--name-only", "main"]), "a\nkeep\n");
        assert_eq!(
            git(dir, &["ls-tree", "--name-only", "main^"]),
            "a\nb\nkeep\n"
        );
        assert_eq!(
            git(dir, &["cat-file", "-t", &cp.to_string()]).trim(),
            "commit"
        );
        fsck(dir);
        let (loose, packed) = (loose_count(dir) - loose_before, packs(&s) - packs_before);
        match (go, many) {
            // Everything in one new pack.
            (CommitsGo::WithTheRest, _) => assert_eq!((loose, packed), (0, 1)),
            // One pack, the three commits loose.
            (CommitsGo::Loose, 40) => assert_eq!((loose, packed), (3, 1)),
            // A few objects: loose, no pack.
            _ => assert_eq!(packed, 0),
        }
        // Put area b back for the next round.
        let tip = s.tip().expect("tip").expect("a tip");
        let root = s.commit_info(tip).expect("info").tree;
        let b = s.write_plan(&plan(&[("k", b"2")])).expect("b");
        let back = s
            .set_subtree(Some(root), "b", Some(b))
            .expect("graft")
            .expect("root");
        commit(&s, back, Some(tip), "b again", 30);
    }
}

#[test]
fn a_batch_commit_names_a_parent_or_tree_nowhere_to_be_found() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    let tree = s.write_plan(&plan(&[("k", b"v")])).expect("write");
    let nowhere = ObjectId::from_hex(b"1111111111111111111111111111111111111111").expect("id");
    let mut batch = ObjectBatch::new();
    let err = s
        .commit_in(&mut batch, tree, &[nowhere], "m", &author(), 1)
        .expect_err("a missing parent is refused");
    assert!(err.to_string().contains("1111111111"), "{err}");
    let err = s
        .commit_in(&mut batch, nowhere, &[], "m", &author(), 1)
        .expect_err("a missing tree is refused");
    assert!(err.to_string().contains("1111111111"), "{err}");
    assert!(batch.is_empty(), "nothing refused is kept");
}

//! Replaying one node's commits onto another node's tip, merge bases and fast-forward checks,
//! all checked with real git (log, diff-tree, merge-base, fsck, push).

mod common;

use std::path::Path;

use common::*;
use gitstore::{Author, CommitInfo, GitStore, ObjectId, PushOutcome, ReplayError};

fn node_author(name: &str) -> Author {
    Author {
        name: name.into(),
        email: format!("{name}@kvgit"),
    }
}

/// Commits on `parent` a tree whose `area` holds exactly `files` (none: the area is removed),
/// with a `Kvgit-Area` trailer.
fn area_commit(
    s: &GitStore,
    parent: ObjectId,
    area: &str,
    files: &[(&str, &[u8])],
    msg: &str,
    by: &str,
    time: i64,
) -> ObjectId {
    let root = s.commit_info(parent).expect("parent").tree;
    let sub = (!files.is_empty()).then(|| s.write_plan(&plan(files)).expect("area tree"));
    let tree = s
        .set_subtree(Some(root), area, sub)
        .expect("graft")
        .unwrap_or_else(GitStore::empty_tree_id);
    raw_commit(
        s,
        tree,
        &[parent],
        &format!("{msg}\n\nKvgit-Area: {area}\n"),
        by,
        time,
    )
}

/// Writes a commit by `by` (no ref moves).
fn raw_commit(
    s: &GitStore,
    tree: ObjectId,
    parents: &[ObjectId],
    msg: &str,
    by: &str,
    time: i64,
) -> ObjectId {
    s.write_commit(tree, parents, msg, &node_author(by), time)
        .expect("commit")
}

/// The caller's side: the areas of a commit from its `Kvgit-Area` trailers.
fn areas(c: &CommitInfo) -> Result<Vec<String>, String> {
    let dirs: Vec<String> = c
        .message
        .lines()
        .filter_map(|l| l.strip_prefix("Kvgit-Area: "))
        .map(str::to_owned)
        .collect();
    if dirs.is_empty() {
        return Err(format!("{}: no Kvgit-Area trailer", c.id));
    }
    Ok(dirs)
}

fn files(s: &GitStore, commit: ObjectId) -> Vec<(String, String)> {
    let tree = s.commit_info(commit).expect("commit").tree;
    s.files_under(tree)
        .expect("files")
        .into_iter()
        .map(|(path, blob)| {
            let bytes = s.read_blob(blob).expect("blob");
            (path, String::from_utf8(bytes).expect("utf8"))
        })
        .collect()
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(p, c)| (p.to_string(), c.to_string()))
        .collect()
}

fn git_dir(s: &GitStore) -> &str {
    s.git_dir().to_str().expect("utf8 path")
}

fn node(root: &Path, name: &str) -> GitStore {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    store(&dir)
}

#[test]
fn replay_onto_another_nodes_tip_keeps_both_and_pushes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = tmp.path().join("remote.git");
    let url = url.to_str().expect("utf8");
    git(tmp.path(), &["init", "-q", "--bare", url]);
    let a = node(tmp.path(), "a");
    let b = node(tmp.path(), "b");

    // A seeds the remote; B starts from it.
    let seed = a
        .write_plan(&plan(&[
            ("entries/seed", b"0"),
            ("state/a/x", b"0"),
            ("state/b/y", b"0"),
        ]))
        .expect("seed tree");
    let c0 = raw_commit(&a, seed, &[], "seed\n\nKvgit-Area: entries\n", "node-a", 10);
    assert_eq!(
        a.push(url, &[(c0, "refs/heads/main".into())])
            .expect("push"),
        PushOutcome::Pushed
    );
    assert_eq!(b.fetch(url, "main").expect("fetch"), Some(c0));

    // A: three commits in its areas (one nested), the last deletes a file.
    let a1 = area_commit(
        &a,
        c0,
        "entries",
        &[("seed", b"0"), ("k1", b"a1")],
        "a1",
        "node-a",
        100,
    );
    let a2 = area_commit(&a, a1, "state/a", &[("x", b"1")], "a2", "node-a", 101);
    let a3 = area_commit(&a, a2, "entries", &[("k1", b"a3")], "a3", "node-a", 102);
    a.update_ref(a.branch_ref(), a3, None, "a3")
        .expect("branch");
    // B: two commits in its own area, pushed first.
    let b1 = area_commit(&b, c0, "state/b", &[("y", b"1")], "b1", "node-b", 200);
    let b2 = area_commit(
        &b,
        b1,
        "state/b",
        &[("y", b"2"), ("z", b"2")],
        "b2",
        "node-b",
        201,
    );
    assert_eq!(
        b.push(url, &[(b2, "refs/heads/main".into())])
            .expect("push b"),
        PushOutcome::Pushed
    );

    // A loses the race, fetches and replays.
    assert!(matches!(
        a.push(url, &[(a3, "refs/heads/main".into())])
            .expect("push a"),
        PushOutcome::Rejected { .. }
    ));
    assert_eq!(a.fetch(url, "main").expect("fetch"), Some(b2));
    assert_eq!(a.merge_base(a3, b2).expect("base"), Some(c0));
    let out = a.replay(a3, b2, &areas).expect("replay");
    assert_eq!(out.replayed, 3);
    let tip = out.tip;

    // Both nodes' latest files.
    assert_eq!(
        files(&a, tip),
        owned(&[
            ("entries/k1", "a3"),
            ("state/a/x", "1"),
            ("state/b/y", "2"),
            ("state/b/z", "2"),
        ])
    );
    // Linear: b2's chain then A's three, no merges.
    let dir = git_dir(&a);
    let gd = |args: &[&str]| git(tmp.path(), &[&["--git-dir", dir][..], args].concat());
    assert_eq!(gd(&["rev-list", "--count", &tip.to_string()]).trim(), "6");
    assert_eq!(gd(&["rev-list", "--merges", &tip.to_string()]).trim(), "");
    assert_eq!(
        gd(&["rev-parse", &format!("{tip}~3")]).trim(),
        b2.to_string()
    );
    // Messages, authors and author times kept; each copy changes only its area.
    let log = gd(&["log", "--format=%an <%ae> %at %s", "-3", &tip.to_string()]);
    assert_eq!(
        log,
        "node-a <node-a@kvgit> 102 a3\nnode-a <node-a@kvgit> 101 a2\nnode-a <node-a@kvgit> 100 a1\n"
    );
    let mut copy = tip;
    for (original, touched) in [
        (a3, "entries/k1\nentries/seed\n"),
        (a2, "state/a/x\n"),
        (a1, "entries/k1\n"),
    ] {
        let info = a.commit_info(copy).expect("copy");
        let orig = a.commit_info(original).expect("original");
        assert_eq!(info.message, orig.message);
        assert_eq!(info.time, orig.time);
        assert!(
            info.commit_time >= 201,
            "committer time follows the new parent"
        );
        let changed = gd(&[
            "diff-tree",
            "-r",
            "--name-only",
            "--no-commit-id",
            &copy.to_string(),
        ]);
        assert_eq!(changed, touched);
        copy = info.parents[0];
    }
    assert_eq!(copy, b2);
    assert!(a.is_ancestor(b2, tip).expect("ancestry"));
    assert!(!a.is_ancestor(a3, tip).expect("ancestry"));
    // Deterministic: replaying again gives the same commits.
    assert_eq!(a.replay(a3, b2, &areas).expect("again").tip, tip);
    fsck(a.git_dir());

    // The replayed tip fast-forwards the remote; the branch move is the caller's.
    assert_eq!(a.read_ref(a.branch_ref()).expect("ref"), Some(a3));
    assert_eq!(
        a.push(url, &[(tip, "refs/heads/main".into())])
            .expect("push replayed"),
        PushOutcome::Pushed
    );
    assert_eq!(
        git(tmp.path(), &["--git-dir", url, "rev-parse", "main"]).trim(),
        tip.to_string()
    );
    fsck(Path::new(url));
    // B fetches it and sees a fast-forward.
    assert_eq!(b.fetch(url, "main").expect("fetch"), Some(tip));
    assert!(b.is_ancestor(b2, tip).expect("ancestry"));
}

#[test]
fn a_commit_outside_its_area_is_refused_naming_the_path() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    let root = s
        .write_plan(&plan(&[
            ("entries/e", b"0"),
            ("state/a/x", b"0"),
            ("state/b/y", b"0"),
        ]))
        .expect("root");
    let c0 = raw_commit(&s, root, &[], "root", "n", 1);
    let onto = area_commit(&s, c0, "state/b", &[("y", b"1")], "other node", "m", 5);

    // Declared `entries`, also rewrote another node's file.
    let good = area_commit(&s, c0, "entries", &[("e", b"1")], "fine", "n", 2);
    let tree = s.commit_info(good).expect("good").tree;
    let other = s.write_plan(&plan(&[("y", b"stolen")])).expect("sub");
    let bad_tree = s
        .set_subtree(Some(tree), "state/b", Some(other))
        .expect("graft")
        .expect("root");
    let bad = raw_commit(
        &s,
        bad_tree,
        &[good],
        "bad\n\nKvgit-Area: entries\n",
        "n",
        3,
    );
    match s.replay(bad, onto, &areas) {
        Err(ReplayError::OutsideArea { commit, path }) => {
            assert_eq!(commit, bad);
            assert_eq!(path, "state/b/y");
        }
        other => panic!("expected OutsideArea, got {other:?}"),
    }

    // Nested area `state/a`: a sibling directory of the same parent is outside it.
    let tree = s.commit_info(c0).expect("c0").tree;
    let sub = s
        .write_plan(&plan(&[("x", b"1"), ("new", b"n")]))
        .expect("sub");
    let t1 = s
        .set_subtree(Some(tree), "state/a", Some(sub))
        .expect("a")
        .expect("root");
    let t2 = s
        .set_subtree(Some(t1), "state/c", Some(sub))
        .expect("c")
        .expect("root");
    let nested = raw_commit(&s, t2, &[c0], "nested\n\nKvgit-Area: state/a\n", "n", 4);
    match s.replay(nested, onto, &areas) {
        Err(ReplayError::OutsideArea { commit, path }) => {
            assert_eq!(commit, nested);
            assert_eq!(path, "state/c/new");
        }
        other => panic!("expected OutsideArea, got {other:?}"),
    }

    // The root is no area; a caller without areas for a commit stops the replay.
    let root_area = raw_commit(&s, tree, &[c0], "noop\n\nKvgit-Area: /\n", "n", 6);
    assert!(matches!(
        s.replay(root_area, onto, &areas),
        Err(ReplayError::InvalidArea { commit, .. }) if commit == root_area
    ));
    let untagged = raw_commit(&s, tree, &[root_area], "untagged", "n", 7);
    assert!(matches!(
        s.replay(untagged, onto, &|c: &CommitInfo| if c.id == untagged {
            Err("no trailer".to_owned())
        } else {
            Ok(vec!["entries".to_owned()])
        }),
        Err(ReplayError::Areas { commit, .. }) if commit == untagged
    ));
}

#[test]
fn fast_forwards_and_no_ops_replay_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    let root = s.write_plan(&plan(&[("entries/e", b"0")])).expect("root");
    let c0 = raw_commit(&s, root, &[], "root", "n", 1);
    let c1 = area_commit(&s, c0, "entries", &[("e", b"1")], "c1", "n", 2);
    let c2 = area_commit(&s, c1, "entries", &[("e", b"2")], "c2", "n", 3);
    s.update_ref(s.branch_ref(), c2, None, "c2")
        .expect("branch");
    let never = |_: &CommitInfo| -> Result<Vec<String>, String> { panic!("nothing to replay") };

    // Local is behind: the tip is onto.
    let out = s.replay(c1, c2, &never).expect("behind");
    assert_eq!((out.tip, out.replayed), (c2, 0));
    // Onto is behind: local is already a fast-forward.
    let out = s.replay(c2, c0, &never).expect("ahead");
    assert_eq!((out.tip, out.replayed), (c2, 0));
    // Equal.
    let out = s.replay(c1, c1, &never).expect("equal");
    assert_eq!((out.tip, out.replayed), (c1, 0));

    assert!(s.is_ancestor(c0, c2).expect("ancestry"));
    assert!(s.is_ancestor(c2, c2).expect("ancestry"));
    assert!(!s.is_ancestor(c2, c0).expect("ancestry"));
    assert_eq!(s.read_ref(s.branch_ref()).expect("ref"), Some(c2));
}

#[test]
fn merge_base_follows_merges_and_replay_refuses_them() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    let dir = tmp.path();
    let tree = |content: &[u8]| {
        s.write_plan(&plan(&[("entries/e", content)]))
            .expect("tree")
    };
    let write = |t, parents: &[ObjectId], msg: &str, time| {
        s.write_commit(t, parents, msg, &author(), time)
            .expect("commit")
    };
    //   r - x1 - x2 - m - m2
    //    \           /
    //     y1 ------- - y2
    let r = write(tree(b"r"), &[], "r", 1);
    let x1 = write(tree(b"x1"), &[r], "x1", 2);
    let x2 = write(tree(b"x2"), &[x1], "x2", 3);
    let y1 = write(tree(b"y1"), &[r], "y1", 4);
    let m = write(tree(b"m"), &[x2, y1], "m\n\nKvgit-Area: entries\n", 5);
    let m2 = write(tree(b"m2"), &[m], "m2\n\nKvgit-Area: entries\n", 6);
    let y2 = write(tree(b"y2"), &[y1], "y2", 7);
    let u = write(tree(b"u"), &[], "unrelated", 8);
    s.update_ref("refs/heads/keep", m2, None, "keep")
        .expect("ref");
    s.update_ref("refs/heads/keep2", y2, None, "keep")
        .expect("ref");

    let gd = s.git_dir().to_str().expect("utf8").to_owned();
    for (a, b, want) in [
        (m2, y2, Some(y1)),
        (y2, m2, Some(y1)),
        (x2, y2, Some(r)),
        (m, x2, Some(x2)),
        (x1, y1, Some(r)),
        (u, m2, None),
    ] {
        let got = s.merge_base(a, b).expect("merge base");
        assert_eq!(got, want, "merge-base {a} {b}");
        let out = git_output(
            dir,
            &[
                "--git-dir",
                &gd,
                "merge-base",
                &a.to_string(),
                &b.to_string(),
            ],
        );
        let by_git = String::from_utf8(out.stdout).expect("utf8");
        assert_eq!(
            by_git.trim(),
            want.map(|w| w.to_string()).unwrap_or_default()
        );
    }
    assert!(s.is_ancestor(y1, m2).expect("ancestry"));
    assert!(!s.is_ancestor(y2, m2).expect("ancestry"));

    // m2's chain down to y1 meets the merge m.
    match s.replay(m2, y2, &areas) {
        Err(ReplayError::MergeCommit { commit, parents }) => {
            assert_eq!((commit, parents), (m, 2));
        }
        other => panic!("expected MergeCommit, got {other:?}"),
    }
}

#[test]
fn unrelated_histories_replay_the_whole_chain() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    let theirs = s.write_plan(&plan(&[("state/b/y", b"b")])).expect("tree");
    let onto = raw_commit(&s, theirs, &[], "b root", "b", 50);
    let ours = s.write_plan(&plan(&[("entries/e", b"1")])).expect("tree");
    let l0 = s
        .write_commit(
            ours,
            &[],
            "a root\n\nKvgit-Area: entries\n",
            &node_author("a"),
            10,
        )
        .expect("commit");
    let l1 = area_commit(&s, l0, "entries", &[("e", b"2")], "a1", "a", 11);
    let out = s.replay(l1, onto, &areas).expect("replay");
    assert_eq!(out.replayed, 2);
    assert_eq!(
        files(&s, out.tip),
        owned(&[("entries/e", "2"), ("state/b/y", "b")])
    );
    assert!(s.is_ancestor(onto, out.tip).expect("ancestry"));
    s.update_ref("refs/heads/replayed", out.tip, None, "keep")
        .expect("ref");
    fsck(s.git_dir());
}

#[test]
fn dropped_commits_are_left_out_even_of_a_fast_forward() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    let root = s
        .write_plan(&plan(&[("a/x", b"0"), ("b/y", b"0")]))
        .expect("root");
    let c0 = raw_commit(&s, root, &[], "root", "n", 1);
    // Local: a change to `a` (fenced: another owner commits it now), then one to `b`.
    let a1 = area_commit(&s, c0, "a", &[("x", b"stale")], "a1", "n", 2);
    let b1 = area_commit(&s, a1, "b", &[("y", b"1")], "b1", "n", 3);
    let is_a = |c: &CommitInfo| c.message.contains("Kvgit-Area: a\n");

    // Onto is the merge base: without drops this is a fast-forward; with one it is rewritten.
    let out = s.replay_dropping(b1, c0, &areas, &is_a).expect("replay");
    assert_eq!((out.replayed, out.dropped), (1, 1));
    assert_ne!(out.tip, b1);
    let tip = s.commit_info(out.tip).expect("tip");
    assert_eq!(tip.parents, vec![c0]);
    assert!(tip.message.starts_with("b1"));
    let tree = s.commit_info(out.tip).expect("tip").tree;
    let files = s.files_under(tree).expect("files");
    let blob = |path: &str| {
        let (_, id) = files.iter().find(|(p, _)| p == path).expect(path);
        s.read_blob(*id).expect("blob")
    };
    assert_eq!(blob("a/x"), b"0", "the dropped change is gone");
    assert_eq!(blob("b/y"), b"1", "the kept change is there");
    // Nothing to drop: still a plain fast-forward.
    let out = s.replay_dropping(b1, c0, &areas, &|_| false).expect("ff");
    assert_eq!((out.tip, out.replayed, out.dropped), (b1, 0, 0));
}

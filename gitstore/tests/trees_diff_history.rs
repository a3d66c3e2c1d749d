//! Tree reading, subtree grafting, diffs and per-file history.

mod common;

use common::*;
use gitstore::{SetSubtreeError, TreeReadError};
use sync_core::tree::{EntryKind, TreeSource};

#[test]
fn set_subtree_grafts_nested_dirs_and_prunes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    let root = s
        .write_plan(&plan(&[
            ("other/k", b"o"),
            ("areas/x/k", b"x"),
            ("top", b"t"),
        ]))
        .expect("root");
    let other = s.subtree(root, "other").expect("lookup").expect("other");
    let area = s
        .write_plan(&plan(&[("e1", b"1"), ("d/e2", b"2")]))
        .expect("area");

    // Created with its intermediate dir; siblings kept by id.
    let r1 = s
        .set_subtree(Some(root), "areas/entries", Some(area))
        .expect("graft")
        .expect("root");
    assert_eq!(s.subtree(r1, "areas/entries").expect("lookup"), Some(area));
    assert_eq!(s.subtree(r1, "other").expect("lookup"), Some(other));
    assert!(s.subtree(r1, "areas/x").expect("lookup").is_some());

    // Setting the same subtree changes nothing.
    assert_eq!(
        s.set_subtree(Some(r1), "areas/entries", Some(area))
            .expect("same"),
        Some(r1)
    );

    // Removing both areas prunes "areas" itself.
    let r2 = s
        .set_subtree(Some(r1), "areas/entries", None)
        .expect("remove")
        .expect("root");
    let r3 = s
        .set_subtree(Some(r2), "/areas/x/", None)
        .expect("remove")
        .expect("root");
    assert_eq!(s.subtree(r3, "areas").expect("lookup"), None);
    assert_eq!(s.files_under(r3).expect("walk").len(), 2);

    // From nothing, and back to nothing.
    let fresh = s
        .set_subtree(None, "a/b/c", Some(area))
        .expect("graft")
        .expect("root");
    assert_eq!(
        s.files_under(fresh)
            .expect("walk")
            .iter()
            .map(|f| f.0.as_str())
            .collect::<Vec<_>>(),
        ["a/b/c/d/e2", "a/b/c/e1"]
    );
    assert_eq!(
        s.set_subtree(Some(fresh), "a/b/c", None).expect("remove"),
        None
    );

    // A file in the way is an error naming it.
    let err = s
        .set_subtree(Some(root), "top/x", Some(area))
        .expect_err("file in the way");
    assert!(
        matches!(err, SetSubtreeError::NotADirectory { ref path } if path == "top"),
        "{err}"
    );

    commit(&s, r1, None, "graft", 1);
    fsck(s.git_dir());
}

#[test]
fn reading_trees_refuses_symlinks_and_submodules() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    let blob = git(s.git_dir(), &["hash-object", "-w", "--stdin"]); // empty stdin → empty blob
    let blob = blob.trim();
    let listing = format!("120000 blob {blob}\tlink\n100644 blob {blob}\tfile\n");
    let mut child = std::process::Command::new("git")
        .args(["--git-dir", s.git_dir().to_str().expect("utf8"), "mktree"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("git mktree");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), listing.as_bytes())
        .expect("feed");
    let out = child.wait_with_output().expect("mktree");
    let inner = String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .parse::<gitstore::ObjectId>()
        .expect("id");
    let root = s
        .set_subtree(None, "dir", Some(inner))
        .expect("graft")
        .expect("root");

    let err = s.files_under(root).expect_err("symlink");
    assert!(
        matches!(err, TreeReadError::Unsupported { ref path, .. } if path == "dir/link"),
        "{err}"
    );
    assert!(s.list(&inner).is_err());
    let listed = s.list(&root).expect("root has only a dir");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].kind, EntryKind::Dir);
    let err = s.subtree(root, "dir/file/x").expect_err("file in the way");
    assert!(
        matches!(err, TreeReadError::NotADirectory { ref path } if path == "dir/file"),
        "{err}"
    );
}

#[test]
fn diff_files_reports_adds_changes_deletes_and_kind_flips() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    let old = s
        .write_plan(&plan(&[
            ("same/k", b"1"),
            ("chg/k", b"old"),
            ("gone/k", b"g"),
            ("flip", b"file"),
        ]))
        .expect("old");
    let new = s
        .write_plan(&plan(&[
            ("same/k", b"1"),
            ("chg/k", b"new"),
            ("added/a/b", b"a"),
            ("flip/inner", b"dir"),
        ]))
        .expect("new");
    let changes = s.diff_files(Some(old), Some(new)).expect("diff");
    let h = |b: &[u8]| Some(s.hash_blob(b).expect("hash"));
    let got: Vec<(&str, _, _)> = changes
        .iter()
        .map(|c| (c.path.as_str(), c.old, c.new))
        .collect();
    assert_eq!(
        got,
        vec![
            ("added/a/b", None, h(b"a")),
            ("chg/k", h(b"old"), h(b"new")),
            ("flip", h(b"file"), None),
            ("flip/inner", None, h(b"dir")),
            ("gone/k", h(b"g"), None),
        ]
    );
    assert!(s.diff_files(Some(old), Some(old)).expect("same").is_empty());
    assert_eq!(
        s.diff_files(None, Some(old)).expect("from nothing").len(),
        4
    );
    assert_eq!(s.diff_files(Some(old), None).expect("to nothing").len(), 4);
}

#[test]
fn path_history_follows_changes_across_merges() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    let t = |files: &[(&str, &[u8])]| s.write_plan(&plan(files)).expect("tree");
    let msg = |m: &str| m.to_owned();
    let w = |tree, parents: &[gitstore::ObjectId], m: &str, time| {
        s.write_commit(tree, parents, &msg(m), &author(), time)
            .expect("commit")
    };
    let c1 = w(t(&[("a/k", b"v1"), ("other", b"o")]), &[], "add k", 10);
    let c2 = w(
        t(&[("a/k", b"v1"), ("other", b"o2")]),
        &[c1],
        "other only",
        20,
    );
    let c3 = w(
        t(&[("a/k", b"v2"), ("other", b"o2")]),
        &[c2],
        "change k\n\nbody",
        30,
    );
    let side = w(
        t(&[("a/k", b"v1"), ("other", b"side")]),
        &[c2],
        "side branch",
        35,
    );
    let merge = w(
        t(&[("a/k", b"v2"), ("other", b"side")]),
        &[c3, side],
        "merge",
        40,
    );
    let c5 = w(t(&[("other", b"side")]), &[merge], "delete k", 50);
    let c6 = w(
        t(&[("a/k", b"v3"), ("other", b"side")]),
        &[c5],
        "re-add k",
        60,
    );

    let hist = s.path_history(c6, "a/k", None).expect("history");
    let got: Vec<_> = hist
        .iter()
        .map(|h| (h.commit, h.summary.as_str(), h.blob.is_some()))
        .collect();
    assert_eq!(
        got,
        vec![
            (c6, "re-add k", true),
            (c5, "delete k", false),
            (c3, "change k", true),
            (c1, "add k", true),
        ]
    );
    assert_eq!(hist[0].size, Some(2));
    assert_eq!(hist[0].time, 60);
    assert_eq!(hist[0].author_email, "test@kvgit");
    assert_eq!(hist[1].size, None);

    let limited = s.path_history(c6, "a/k", Some(2)).expect("history");
    assert_eq!(limited.len(), 2);
    assert!(s
        .path_history(c6, "nope", None)
        .expect("history")
        .is_empty());

    // git log agrees (default history simplification).
    s.update_ref("refs/heads/main", c6, None, "x").expect("ref");
    let log = git(s.git_dir(), &["log", "--format=%H", "main", "--", "a/k"]);
    let ids: Vec<String> = got.iter().map(|g| g.0.to_string()).collect();
    assert_eq!(log.lines().collect::<Vec<_>>(), ids);
}

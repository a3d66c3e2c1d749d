//! Writing plans, loose and packed, checked by real git: same ids, fsck --strict, clones with
//! exact bytes, and incremental writes that only touch changed subtrees.

mod common;

use common::*;
use gitstore::{GitStore, ObjectId, WritePlanError};
use std::collections::HashMap;
use sync_core::tree::{EntryKind, PlanEntry};

/// Names chosen so Git's "directory sorts as name/" order differs from plain byte order.
fn nested_files() -> Vec<(String, Vec<u8>)> {
    let mut files = vec![
        ("a/x".to_owned(), b"dir a".to_vec()),
        ("a-b".to_owned(), b"file a-b".to_vec()),
        ("a.txt".to_owned(), b"file a.txt".to_vec()),
        ("a0/y".to_owned(), b"dir a0".to_vec()),
        (
            "areas/entries/deep/k1".to_owned(),
            b"\x00\xffbinary\n".to_vec(),
        ),
        ("areas/entries/k2".to_owned(), Vec::new()),
        ("areas/meta".to_owned(), b"same".to_vec()),
        ("dup1".to_owned(), b"same".to_vec()),
        ("unicode-\u{e9}".to_owned(), "caf\u{e9}".as_bytes().to_vec()),
    ];
    for i in 0..50 {
        files.push((
            format!("many/n{}/k{i}", i % 7),
            format!("value {i}").into_bytes(),
        ));
    }
    files
}

fn nested_plan() -> gitstore::Plan {
    let files = nested_files();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_slice()))
        .collect();
    plan(&refs)
}

#[test]
fn loose_and_packed_give_the_same_tree_and_git_accepts_both() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let loose_dir = tmp.path().join("loose");
    let packed_dir = tmp.path().join("packed");
    std::fs::create_dir_all(&loose_dir).expect("mkdir");
    std::fs::create_dir_all(&packed_dir).expect("mkdir");
    let loose = store(&loose_dir);
    let packed = store(&packed_dir);

    let tree_loose = loose.write_plan(&nested_plan()).expect("loose write");
    let tree_packed = packed
        .write_plan_packed(&nested_plan())
        .expect("packed write");
    assert_eq!(tree_loose, tree_packed);
    assert_eq!(
        loose_count(packed.git_dir()),
        0,
        "packed write leaves no loose objects"
    );

    // The packed objects are readable through the same handle right away.
    let files = packed.files_under(tree_packed).expect("walk packed tree");
    let expected = nested_files();
    assert_eq!(files.len(), expected.len());
    for (path, content) in &expected {
        let id = files
            .iter()
            .find(|(p, _)| p == path)
            .expect("file listed")
            .1;
        assert_eq!(
            &packed.read_blob(id).expect("read packed blob"),
            content,
            "{path}"
        );
    }

    for s in [&loose, &packed] {
        let tree = s.write_plan(&nested_plan()).expect("rewrite is a no-op");
        commit(s, tree, None, "first", 1_700_000_000);
        fsck(s.git_dir());
        let clone = s.git_dir().parent().expect("parent").join("clone");
        git(
            tmp.path(),
            &[
                "clone",
                "-q",
                s.git_dir().to_str().expect("utf8"),
                clone.to_str().expect("utf8"),
            ],
        );
        for (path, content) in &expected {
            let got = std::fs::read(clone.join(path)).expect("checked out file");
            assert_eq!(&got, content, "{path}");
        }
    }
}

#[test]
fn packed_write_stores_each_object_once_and_a_repack_drops_rewritten_copies() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    let p = plan(&[
        ("a/k", b"same"),
        ("b/k", b"same"),
        ("c", b"same"),
        ("d", b"other"),
    ]);
    let first = s.write_plan_packed(&p).expect("packed write");
    let count = git(s.git_dir(), &["count-objects", "-v"]);
    // Blobs "same" and "other", trees a and b (identical: one object), root.
    assert!(count.contains("in-pack: 4"), "{count}");

    // The objects the store has are not looked up: a plan sharing them writes them into
    // its own pack again (blobs "same", "other", tree a, beside blob "new" and a new root)...
    let mut more = p.clone();
    insert(&mut more, "e", PlanEntry::File(b"new".to_vec()));
    let second = s.write_plan_packed(&more).expect("packed rewrite");
    assert_ne!(second, first);
    let count = git(s.git_dir(), &["count-objects", "-v"]);
    assert!(
        count.contains("in-pack: 9") && count.contains("packs: 2"),
        "{count}"
    );
    // ...and the geometric repack the service runs keeps one copy of each.
    s.repack_geometric().expect("repack");
    let count = git(s.git_dir(), &["count-objects", "-v"]);
    assert!(
        count.contains("in-pack: 6") && count.contains("packs: 1"),
        "{count}"
    );
    assert_eq!(s.files_under(first).expect("first").len(), 4);
    assert_eq!(s.files_under(second).expect("second").len(), 5);
    fsck(s.git_dir());
}

#[test]
fn incremental_write_touches_only_changed_subtrees() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    let base = s.write_plan_packed(&nested_plan()).expect("base");
    let areas = s
        .subtree(base, "areas")
        .expect("lookup")
        .expect("areas dir");
    let entries = s
        .subtree(areas, "entries")
        .expect("lookup")
        .expect("entries dir");
    let deep = s
        .subtree(entries, "deep")
        .expect("lookup")
        .expect("deep dir");
    let before = loose_count(s.git_dir());

    // Change areas/entries/k2 only: keep every other dir by id.
    let mut p = gitstore::Plan::default();
    for item in sync_core::tree::TreeSource::list(&s, &base).expect("list root") {
        if item.name != "areas" {
            p.entries.push((
                item.name,
                PlanEntry::Existing {
                    kind: item.kind,
                    id: item.id,
                },
            ));
        }
    }
    insert(
        &mut p,
        "areas/meta",
        PlanEntry::Existing {
            kind: EntryKind::File,
            id: s.hash_blob(b"same").expect("hash"),
        },
    );
    insert(&mut p, "areas/entries/deep", existing_dir(deep));
    insert(
        &mut p,
        "areas/entries/k2",
        PlanEntry::File(b"changed".to_vec()),
    );
    let tree = s.write_plan(&p).expect("incremental write");

    // One blob and three trees (entries, areas, root).
    assert_eq!(loose_count(s.git_dir()) - before, 4);
    let changes = s.diff_files(Some(base), Some(tree)).expect("diff");
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].path, "areas/entries/k2");
    commit(&s, tree, None, "incremental", 1);
    fsck(s.git_dir());
}

#[test]
fn empty_dirs_are_pruned_and_an_empty_plan_is_the_empty_tree() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    let mut p = plan(&[("k", b"v")]);
    p.entries
        .push(("empty".into(), PlanEntry::Dir(gitstore::Plan::default())));
    let tree = s.write_plan(&p).expect("write");
    assert_eq!(
        s.files_under(tree).expect("walk"),
        vec![("k".to_owned(), s.hash_blob(b"v").expect("hash"))]
    );
    assert!(s.subtree(tree, "empty").expect("lookup").is_none());

    let empty = s
        .write_plan(&gitstore::Plan::default())
        .expect("empty plan");
    assert_eq!(empty, ObjectId::empty_tree(gix::hash::Kind::Sha1));
    assert_eq!(
        empty,
        s.write_plan_packed(&gitstore::Plan::default())
            .expect("empty packed")
    );
    commit(&s, empty, None, "empty", 1);
    fsck(s.git_dir());
}

#[test]
fn bad_names_are_refused_with_their_path() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    for bad in ["a/.git/x", "a/../x", "a/./x"] {
        let err = s.write_plan(&plan(&[(bad, b"v")])).expect_err(bad);
        assert!(matches!(err, WritePlanError::InvalidName { .. }), "{err}");
    }
    let err = s.write_plan(&plan(&[("d/.GIT", b"v")])).expect_err(".GIT");
    assert!(err.to_string().starts_with("d/.GIT:"), "{err}");

    let mut p = plan(&[("x/k", b"v"), ("x", b"file too")]);
    p.entries.push(("y".into(), PlanEntry::File(b"1".to_vec())));
    p.entries.push(("y".into(), PlanEntry::File(b"2".to_vec())));
    let err = s.write_plan(&p).expect_err("duplicates");
    assert!(matches!(err, WritePlanError::Duplicate { .. }), "{err}");
}

fn packs(git_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut packs: Vec<_> = std::fs::read_dir(git_dir.join("objects/pack"))
        .expect("pack dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pack"))
        .collect();
    packs.sort();
    packs
}

#[test]
fn packs_pass_verify_pack_and_several_stay_readable() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    // A loose object first: packs and loose objects read through one handle.
    let loose_tree = s
        .write_plan(&plan(&[("x/loose", b"loose")]))
        .expect("loose");
    let first = s.write_plan_packed(&nested_plan()).expect("first pack");
    let more: Vec<(String, Vec<u8>)> = (0..3000)
        .map(|i| (format!("b/{}/k{i}", i % 13), format!("v{i}").into_bytes()))
        .collect();
    let refs: Vec<(&str, &[u8])> = more
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_slice()))
        .chain([("x/loose", &b"loose"[..])])
        .collect();
    let second = s.write_plan_packed(&plan(&refs)).expect("second pack");

    let all = packs(s.git_dir());
    assert_eq!(all.len(), 2);
    for pack in &all {
        let idx = pack.with_extension("idx");
        git(s.git_dir(), &["verify-pack", idx.to_str().expect("utf8")]);
    }
    // Both packs (and the loose objects) read through the same handle.
    assert_eq!(
        s.files_under(first).expect("first").len(),
        nested_files().len()
    );
    let files = s.files_under(second).expect("second");
    assert_eq!(files.len(), 3001);
    for (path, id) in files.iter().step_by(97) {
        let want = more
            .iter()
            .find(|(p, _)| p == path)
            .map_or(&b"loose"[..], |(_, c)| c.as_slice());
        assert_eq!(s.read_blob(*id).expect("blob"), want);
    }
    assert_eq!(s.files_under(loose_tree).expect("loose").len(), 1);
    let root = s
        .set_subtree(Some(first), "more", Some(second))
        .expect("graft")
        .expect("root");
    commit(&s, root, None, "both", 1);
    fsck(s.git_dir());
}

/// `git verify-pack -v` of the one pack in `git_dir`: (size, size in the pack) by object id.
fn sizes_in_pack(git_dir: &std::path::Path) -> HashMap<String, (u64, u64)> {
    let all = packs(git_dir);
    assert_eq!(all.len(), 1, "one pack");
    let idx = all[0].with_extension("idx");
    let listing = git(git_dir, &["verify-pack", "-v", idx.to_str().expect("utf8")]);
    listing
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (size, in_pack) = (f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?);
            (f.first()?.len() == 40).then(|| (f[0].to_owned(), (size, in_pack)))
        })
        .collect()
}

#[test]
fn a_commits_pack_stores_its_trees_and_compresses_large_values() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    // More objects than a small commit's pack (which stores everything): a burst's commit.
    let text = "a line of a configuration file that compresses well\n".repeat(100);
    let mut files: Vec<(String, Vec<u8>)> = (0..1500)
        .map(|i| (format!("dir/key{i:05}"), format!("value {i}").into_bytes()))
        .collect();
    files.push(("config".to_owned(), text.clone().into_bytes()));
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_slice()))
        .collect();
    let root = s.write_plan_packed(&plan(&refs)).expect("packed");
    let sizes = sizes_in_pack(s.git_dir());
    let dir = s.subtree(root, "dir").expect("read").expect("dir");
    let (size, in_pack) = sizes[&dir.to_string()];
    assert!(size > 40_000, "a large directory: {size} bytes");
    assert!(
        in_pack > size,
        "the tree is stored: {in_pack} bytes in the pack for {size}"
    );
    let files_under = s.files_under(root).expect("walk");
    let config = files_under
        .iter()
        .find(|(p, _)| p == "config")
        .expect("config")
        .1;
    let (size, in_pack) = sizes[&config.to_string()];
    assert!(
        in_pack < size / 4,
        "the value is compressed: {in_pack} bytes for {size}"
    );
    assert_eq!(s.read_blob(config).expect("read"), text.as_bytes());
    assert_eq!(files_under.len(), 1501);
    commit(&s, root, None, "burst", 1);
    fsck(s.git_dir());
}

#[test]
fn repack_folds_loose_objects_and_the_handle_keeps_reading() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    let tree = s.write_plan(&nested_plan()).expect("loose write");
    commit(&s, tree, None, "loose", 1);
    assert!(loose_count(s.git_dir()) > 10);
    s.repack().expect("repack");
    assert_eq!(loose_count(s.git_dir()), 0);
    let files = s.files_under(tree).expect("walk after repack");
    for (path, content) in nested_files() {
        let id = files.iter().find(|(p, _)| *p == path).expect("listed").1;
        assert_eq!(s.read_blob(id).expect("read after repack"), content);
    }
    fsck(s.git_dir());
}

#[test]
fn large_and_incompressible_blobs_round_trip_through_a_pack() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..3 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let zeros = vec![0u8; 5 << 20];
    let tree = s
        .write_plan_packed(&plan(&[("noise", &noise), ("zeros", &zeros)]))
        .expect("packed");
    let files = s.files_under(tree).expect("walk");
    assert_eq!(s.read_blob(files[0].1).expect("noise"), noise);
    assert_eq!(s.read_blob(files[1].1).expect("zeros"), zeros);
    assert_eq!(s.blob_size(files[0].1).expect("size"), noise.len() as u64);
    commit(&s, tree, None, "big", 1);
    fsck(s.git_dir());
}

#[test]
fn values_hashed_by_the_caller_are_written_under_their_ids_without_hashing_again() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    let files: &[(&str, &[u8])] = &[("a/k", b"one"), ("a/l", b"two"), ("m", b"three")];
    let plain = s.write_plan(&plan(files)).expect("plain");
    let mut hashed: sync_core::tree::DirPlan<ObjectId, gitstore::HashedBlob> = Default::default();
    let mut dir_a = sync_core::tree::DirPlan::default();
    for (name, bytes) in [("k", b"one".as_slice()), ("l", b"two".as_slice())] {
        let id = s.hash_blob(bytes).expect("hash");
        let blob = gitstore::HashedBlob {
            id,
            bytes: bytes.to_vec(),
        };
        dir_a.entries.push((name.to_owned(), PlanEntry::File(blob)));
    }
    hashed.entries.push(("a".to_owned(), PlanEntry::Dir(dir_a)));
    let id = s.hash_blob(b"three").expect("hash");
    hashed.entries.push((
        "m".to_owned(),
        PlanEntry::File(gitstore::HashedBlob {
            id,
            bytes: b"three".to_vec(),
        }),
    ));
    assert_eq!(s.write_plan(&hashed).expect("loose"), plain);
    assert_eq!(s.write_plan_packed(&hashed).expect("packed"), plain);
    fsck(s.git_dir());
}

/// The bulk path of a first export: blobs stored as read, trees batch by batch of root
/// groups, small packs. It must give the very tree one packed write of the whole layout gives.
#[test]
fn bulk_writes_in_batches_give_the_tree_of_one_packed_write() {
    use sync_core::mapper::{layout_all, BulkKeys};
    let tmp = tempfile::tempdir().expect("tempdir");
    let (one_dir, bulk_dir) = (tmp.path().join("one"), tmp.path().join("bulk"));
    std::fs::create_dir_all(&one_dir).expect("mkdir");
    std::fs::create_dir_all(&bulk_dir).expect("mkdir");
    // Keys whose root entries interact: case variants, a key that is also a directory,
    // a long segment that is chunked, the empty segment; and many plain ones.
    let mut keys: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b"Node/a".to_vec(), b"1".to_vec()),
        (b"node".to_vec(), b"2".to_vec()),
        (b"node/b".to_vec(), b"3".to_vec()),
        (b"a-b".to_vec(), b"4".to_vec()),
        ([b"x".repeat(400), b"/y".to_vec()].concat(), b"5".to_vec()),
        ([b"x".repeat(200), b"/z".to_vec()].concat(), b"6".to_vec()),
        (b"/lead".to_vec(), b"7".to_vec()),
        (Vec::new(), b"8".to_vec()),
    ];
    // Values repeat (as statuses do): the pack must still hold each blob once.
    for i in 0..300 {
        keys.push((
            format!("n{}/k{i:04}", i % 13).into_bytes(),
            format!("value {}", i % 40).repeat(20).into_bytes(),
        ));
    }
    keys.sort();

    let one = store(&one_dir);
    let whole = one
        .write_plan_packed(&layout_all(keys.clone()))
        .expect("packed write");

    let bulk_store = store(&bulk_dir);
    // A 4 KiB queue: the values alone are appended to the pack a dozen times.
    let mut bulk = bulk_store.bulk_writer(4096);
    let mut ids = BulkKeys::default();
    for (k, v) in keys.clone() {
        let id = bulk.blob(v).expect("blob");
        ids.push(&k, gitstore::StoredBlob(id));
    }
    ids.layout_batches(2, |plan| bulk.add_root_entries(plan))
        .expect("trees");
    let root = bulk.finish().expect("finish").expect("a root");
    assert_eq!(root, whole, "the bulk tree differs from the one-shot tree");

    let count = git(bulk_store.git_dir(), &["count-objects", "-v"]);
    assert!(
        count.contains("packs: 1\n"),
        "one pack for the whole tree: {count}"
    );
    let files = bulk_store.files_under(root).expect("walk bulk tree");
    assert_eq!(files.len(), keys.len(), "every key is a file");
    let commit = bulk_store
        .write_commit(root, &[], "bulk", &author(), 1)
        .expect("commit");
    git(
        bulk_store.git_dir(),
        &["update-ref", "refs/heads/main", &commit.to_string()],
    );
    fsck(bulk_store.git_dir());
}

#[test]
fn an_edit_of_a_tree_gives_the_tree_a_whole_plan_gives() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let git = store(tmp.path());
    let base = git.write_plan(&nested_plan()).expect("write base");
    // Replace a file, turn a file into a directory (it sorts as `a-b/` now), remove one,
    // add one that sorts between `a` (a directory, `a/`) and `a.txt`.
    let whole = {
        let mut files = nested_files();
        files.retain(|(p, _)| p != "dup1" && p != "a-b");
        files.push(("a-b/inner".to_owned(), b"now a dir".to_vec()));
        files.push(("a/".to_owned() + "x", b"changed".to_vec()));
        files.retain(|(p, c)| p != "a/x" || c == b"changed");
        files.push(("a-".to_owned(), b"between".to_vec()));
        let refs: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(p, c)| (p.as_str(), c.as_slice()))
            .collect();
        plan(&refs)
    };
    let expected = git.write_plan(&whole).expect("write whole");
    let mut a_dir = gitstore::Plan::default();
    insert(&mut a_dir, "x", PlanEntry::File(b"changed".to_vec()));
    let mut a_b = gitstore::Plan::default();
    insert(&mut a_b, "inner", PlanEntry::File(b"now a dir".to_vec()));
    let edit = gitstore::Plan {
        entries: vec![
            ("a".to_owned(), PlanEntry::Dir(a_dir)),
            ("a-b".to_owned(), PlanEntry::Dir(a_b)),
            ("a-".to_owned(), PlanEntry::File(b"between".to_vec())),
        ],
        edit: Some(sync_core::tree::TreeEdit {
            base,
            removed: vec!["dup1".to_owned()],
        }),
    };
    assert_eq!(git.write_plan(&edit).expect("write edit"), expected);
    assert_eq!(
        git.write_plan_packed(&edit).expect("write edit packed"),
        expected
    );
    fsck(git.git_dir());
}

/// `BlobReader` answers from pack entries as git does: sizes and contents of whole values
/// (kvgit's own packs), of values git stored as deltas (`git repack` with a deep window), of
/// objects left loose, and it refuses a tree and a missing object by name, as gix's own
/// lookup does.
#[test]
fn blob_sizes_and_contents_match_git_for_whole_deltified_and_loose_values() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    // Values alike enough for git to store most as deltas of one another.
    let base: String = (0..400)
        .map(|i| format!("line {i} of a config\n"))
        .collect();
    let files: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| {
            let mut v = base.clone().into_bytes();
            v.truncate(1000 + i * 17);
            v.extend_from_slice(format!("node {i}\n").as_bytes());
            (format!("nodes/n{}/config", i), v)
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_slice()))
        .collect();
    let tree = s.write_plan_packed(&plan(&refs)).expect("packed");
    commit(&s, tree, None, "configs", 1);
    let content: HashMap<&str, &[u8]> = refs.iter().copied().collect();
    // One value at a time, and all found ahead (`locate`, as apply reads them).
    let read_back = |s: &GitStore, tree: ObjectId| {
        let blobs = s.blob_reader();
        let files = s.files_under(tree).expect("walk");
        for (path, id) in &files {
            let value = blobs.read(*id).expect("read");
            assert_eq!(value, content[path.as_str()], "{path}");
        }
        // Each id twice: keys with the same value share a blob.
        let ids: Vec<ObjectId> = files.iter().chain(&files).map(|(_, id)| *id).collect();
        let blobs = s.blob_reader();
        // Read in pack order, as apply's writes read them: each value in its place.
        let many = blobs.read_many(&blobs.locate(&ids));
        assert_eq!(many.len(), ids.len());
        for ((path, _), value) in files.iter().chain(&files).zip(many) {
            assert_eq!(value.expect("read many"), content[path.as_str()], "{path}");
        }
    };
    // kvgit's own pack stores every value whole.
    read_back(&store(tmp.path()), tree);
    git(
        s.git_dir(),
        &["repack", "-a", "-d", "-f", "--window=50", "--depth=50"],
    );
    let idx = std::fs::read_dir(s.git_dir().join("objects/pack"))
        .expect("pack dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "idx"))
        .expect("one pack after repack -a -d");
    let verify = git(
        s.git_dir(),
        &["verify-pack", "-v", idx.to_str().expect("utf-8 path")],
    );
    let deltas = verify
        .lines()
        .filter(|l| l.contains(" blob ") && l.split_whitespace().count() > 5)
        .count();
    assert!(deltas > 100, "git stored values as deltas: {deltas}");
    // One more value, left loose.
    let loose = s
        .write_plan(&plan(&[("loose", b"a loose value")]))
        .expect("loose");

    let s = store(tmp.path());
    let blobs = s.blob_reader();
    let mut listed = s.files_under(tree).expect("walk");
    listed.extend(s.files_under(loose).expect("walk"));
    let ids: Vec<ObjectId> = listed.iter().map(|(_, id)| *id).collect();
    let located = blobs.locate(&ids);
    // Sized all at once (in pack order, as a plan sizes them): each size in its place, the
    // loose value's too.
    let sizes = blobs.sizes_of(&located);
    assert_eq!(sizes.len(), listed.len());
    for ((path, id), size) in listed.iter().zip(sizes) {
        let by_git: u64 = git(s.git_dir(), &["cat-file", "-s", &id.to_string()])
            .trim()
            .parse()
            .expect("size");
        assert_eq!(blobs.size(*id).expect("size"), by_git, "{path}");
        assert_eq!(size.expect("sized"), by_git, "{path}");
    }
    // Found by another reader (which may have opened other packs): still the right value.
    let other = s.blob_reader().read_many(&[located[7], located[300]]);
    assert_eq!(
        other[0].as_ref().expect("read"),
        content[listed[7].0.as_str()]
    );
    assert_eq!(other[1].as_ref().expect("loose"), b"a loose value");
    read_back(&s, tree);
    assert_eq!(blobs.read(listed[300].1).expect("loose"), b"a loose value");
    // Found before a repack replaced the pack they were found in: the reader that found
    // them still has that pack open, and a reader opened after it looks them up again.
    let before_repack = blobs.locate(&ids);
    // Deltas naming their base by id (REF_DELTA), as older git and some servers write them.
    git(
        s.git_dir(),
        &[
            "-c",
            "repack.useDeltaBaseOffset=false",
            "repack",
            "-a",
            "-d",
            "-f",
            "--window=50",
            "--depth=50",
        ],
    );
    read_back(&store(tmp.path()), tree);
    let after_repack = store(tmp.path()).blob_reader();
    for reader in [&blobs, &after_repack] {
        let values = reader.read_many(&before_repack);
        for ((path, _), value) in listed.iter().zip(values) {
            let want = content
                .get(path.as_str())
                .copied()
                .unwrap_or(b"a loose value");
            assert_eq!(value.expect("read after repack"), want, "{path}");
        }
    }
    let err = blobs.size(tree).expect_err("a tree is no blob");
    assert!(err.to_string().contains("expected a blob"), "{err}");
    let err = blobs.read(tree).expect_err("a tree is no blob");
    assert!(err.to_string().contains("expected a blob"), "{err}");
    let missing = ObjectId::from_hex(b"0123456789abcdef0123456789abcdef01234567").expect("hex");
    let err = blobs.size(missing).expect_err("missing");
    assert!(err.to_string().contains("not found"), "{err}");
    let err = blobs.read(missing).expect_err("missing");
    assert!(err.to_string().contains("not found"), "{err}");
    let located = blobs.locate(&[missing, tree]);
    let sized = blobs.sizes_of(&located);
    let err = sized[0].as_ref().expect_err("missing");
    assert!(err.to_string().contains("not found"), "{err}");
    let err = sized[1].as_ref().expect_err("a tree is no blob");
    assert!(err.to_string().contains("expected a blob"), "{err}");
    let read = blobs.read_many(&located);
    let err = read[0].as_ref().expect_err("missing");
    assert!(err.to_string().contains("not found"), "{err}");
    let err = read[1].as_ref().expect_err("a tree is no blob");
    assert!(err.to_string().contains("expected a blob"), "{err}");
}

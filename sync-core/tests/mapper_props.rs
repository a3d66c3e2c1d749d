//! Property and scenario tests of the key <-> path mapper, over an in-memory,
//! content-addressed tree store that plays the part of Git.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::select;
use sync_core::mapper::{
    components, decode_path, decode_paths, layout_all, lookup, plan_changes, plan_changes_with,
    BulkKeys, Locator, MapError, NameProblem, PlanError,
};
use sync_core::tree::{canonical_cmp, DirPlan, EntryKind, ListedEntry, PlanEntry, TreeSource};
use sync_core::Key;

// ---------------------------------------------------------------- in-memory store

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Obj {
    Blob(Vec<u8>),
    Tree(Vec<(String, EntryKind, u64)>),
}

/// Content-addressed like Git: equal trees get equal ids, so comparing two roots compares
/// the whole trees.
#[derive(Default)]
struct Store {
    objs: Vec<Obj>,
    ids: HashMap<Obj, u64>,
    lists: Cell<usize>,
}

#[derive(Debug, thiserror::Error)]
#[error("object {0} is not a tree")]
struct NotATree(u64);

impl TreeSource for Store {
    type Id = u64;
    type Error = NotATree;

    fn list(&self, id: &u64) -> Result<Vec<ListedEntry<u64>>, NotATree> {
        self.lists.set(self.lists.get() + 1);
        match self.objs.get(*id as usize) {
            Some(Obj::Tree(entries)) => Ok(entries
                .iter()
                .map(|(name, kind, id)| ListedEntry {
                    name: name.clone(),
                    kind: *kind,
                    id: *id,
                })
                .collect()),
            _ => Err(NotATree(*id)),
        }
    }
}

impl Store {
    fn put(&mut self, obj: Obj) -> u64 {
        if let Some(&id) = self.ids.get(&obj) {
            return id;
        }
        let id = self.objs.len() as u64;
        self.objs.push(obj.clone());
        self.ids.insert(obj, id);
        id
    }

    fn blob(&mut self, content: &[u8]) -> u64 {
        self.put(Obj::Blob(content.to_vec()))
    }

    /// Writes a plan as Git would, checking what a writer relies on.
    fn write(&mut self, plan: DirPlan<u64, Vec<u8>>) -> u64 {
        assert!(!plan.is_empty(), "planned directories are never empty");
        let mut entries = Vec::new();
        if let Some(edit) = &plan.edit {
            // The base's entries, less those the plan replaces or removes.
            let gone: HashSet<&str> = plan
                .entries
                .iter()
                .map(|(name, _)| name.as_str())
                .chain(edit.removed.iter().map(String::as_str))
                .collect();
            entries.extend(
                self.tree(edit.base)
                    .iter()
                    .filter(|(name, _, _)| !gone.contains(name.as_str()))
                    .cloned(),
            );
        }
        for (name, entry) in plan.entries {
            let (kind, id) = match entry {
                PlanEntry::Existing { kind, id } => {
                    let actual = match self.objs[id as usize] {
                        Obj::Blob(_) => EntryKind::File,
                        Obj::Tree(_) => EntryKind::Dir,
                    };
                    assert_eq!(actual, kind, "existing {name} has the wrong kind");
                    (kind, id)
                }
                PlanEntry::File(v) => (EntryKind::File, self.blob(&v)),
                PlanEntry::Dir(sub) => (EntryKind::Dir, self.write(sub)),
            };
            entries.push((name, kind, id));
        }
        assert!(!entries.is_empty(), "an edit never empties its directory");
        let mut names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "duplicate names in one directory");
        // Git's order (a directory sorts as `name/`), which lookups by name rely on.
        let dir = |e: &(String, EntryKind, u64)| e.1 == EntryKind::Dir;
        entries.sort_by(|a, b| canonical_cmp(a.0.as_bytes(), dir(a), b.0.as_bytes(), dir(b)));
        self.put(Obj::Tree(entries))
    }

    fn write_opt(&mut self, plan: Option<DirPlan<u64, Vec<u8>>>) -> Option<u64> {
        plan.map(|p| self.write(p))
    }

    fn tree(&self, id: u64) -> &[(String, EntryKind, u64)] {
        match &self.objs[id as usize] {
            Obj::Tree(entries) => entries,
            Obj::Blob(_) => panic!("{id} is a blob"),
        }
    }

    fn content(&self, id: u64) -> &[u8] {
        match &self.objs[id as usize] {
            Obj::Blob(v) => v,
            Obj::Tree(_) => panic!("{id} is a tree"),
        }
    }

    /// Every directory as (path, entries).
    fn dirs(&self, root: Option<u64>) -> Vec<(String, Vec<(String, EntryKind, u64)>)> {
        let mut out = Vec::new();
        let mut todo: Vec<(String, u64)> = root.map(|r| (String::new(), r)).into_iter().collect();
        while let Some((path, id)) = todo.pop() {
            let entries = self.tree(id).to_vec();
            for (name, kind, sub) in &entries {
                if *kind == EntryKind::Dir {
                    todo.push((join(&path, name), *sub));
                }
            }
            out.push((path, entries));
        }
        out
    }

    /// Every file as path -> content.
    fn files(&self, root: Option<u64>) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        for (dir, entries) in self.dirs(root) {
            for (name, kind, id) in entries {
                if kind == EntryKind::File {
                    out.insert(join(&dir, &name), self.content(id).to_vec());
                }
            }
        }
        out
    }

    /// The key set the tree holds, read back through `decode_paths`.
    fn read_back(&self, root: Option<u64>) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let files: Vec<(String, Vec<u8>)> = self.files(root).into_iter().collect();
        let keys = decode_paths(files.iter().map(|(p, _)| p)).expect("a written tree decodes");
        keys.into_iter()
            .map(|(key, i)| (key, files[i].1.clone()))
            .collect()
    }

    /// Builds a tree by hand from (path, content), for non-canonical trees.
    fn hand_written(&mut self, files: &[(&str, &str)]) -> u64 {
        fn insert(plan: &mut DirPlan<u64, Vec<u8>>, names: &[&str], content: &str) {
            if let [name] = names {
                plan.entries
                    .push((name.to_string(), PlanEntry::File(content.into())));
                return;
            }
            let pos = plan
                .entries
                .iter()
                .position(|(n, _)| n == names[0])
                .unwrap_or_else(|| {
                    plan.entries
                        .push((names[0].to_string(), PlanEntry::Dir(DirPlan::default())));
                    plan.entries.len() - 1
                });
            match &mut plan.entries[pos].1 {
                PlanEntry::Dir(sub) => insert(sub, &names[1..], content),
                _ => panic!("{} is a file", names[0]),
            }
        }
        let mut plan = DirPlan::default();
        for (path, content) in files {
            insert(&mut plan, &path.split('/').collect::<Vec<_>>(), content);
        }
        self.write(plan)
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn layout(store: &mut Store, set: &BTreeMap<Vec<u8>, Vec<u8>>) -> Option<u64> {
    let plan = layout_all::<u64, Vec<u8>>(set.iter().map(|(k, v)| (k.clone(), v.clone())));
    (!plan.is_empty()).then(|| store.write(plan))
}

/// Rule 7 of the scheme, plus Git's own refusals.
fn assert_checkout_safe(name: &str) {
    assert!(!name.is_empty());
    assert!(name.len() <= 255, "{name} is {} bytes", name.len());
    assert!(name != "." && name != "..");
    assert!(!name.eq_ignore_ascii_case(".git"));
    assert!(!name.eq_ignore_ascii_case("git~1"), "{name}");
    assert!(!name.starts_with('.'), "{name}");
    assert!(
        name.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-%~+".contains(&b)),
        "{name}"
    );
}

fn assert_canonical_shape(store: &Store, root: Option<u64>) {
    for (dir, entries) in store.dirs(root) {
        assert!(
            dir.is_empty() || !entries.is_empty(),
            "empty directory {dir}"
        );
        let mut folded = HashSet::new();
        for (name, kind, _) in &entries {
            assert_checkout_safe(name);
            assert!(
                folded.insert(name.to_ascii_lowercase()),
                "{dir}: {name} collides ignoring case"
            );
            if name == "%self" {
                assert!(!dir.is_empty(), "%self at the root");
                assert_eq!(*kind, EntryKind::File);
                assert!(
                    entries.len() > 1,
                    "{dir}: a lone %self should be a plain file"
                );
            }
            if name.ends_with("%+") {
                assert_eq!(*kind, EntryKind::Dir);
            }
        }
    }
}

// ---------------------------------------------------------------- strategies

/// Bytes that exercise every rule: case, dots, escapes, tags, non-UTF-8.
const ALPHABET: &[u8] = b"aAbBgGiItT.%~ -/\xff\xc3";

fn segment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => vec(select(ALPHABET.to_vec()), 0..4),
        1 => (select(b"xX.\xff".to_vec()), 170usize..620).prop_map(|(b, n)| vec![b; n]),
        1 => vec(any::<u8>(), 150..420),
        1 => select(vec![&b".git"[..], b".", b"..", "café".as_bytes(), b"Git", b"GIT", b"%self", b"%empty"])
            .prop_map(<[u8]>::to_vec),
    ]
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    vec(segment(), 1..4).prop_map(|segs| segs.join(&b'/'))
}

/// Keys plus relatives of them (case variants, keys below them, their parents), so case
/// groups, `%self` and shared chunks come up often.
fn related_keys(max: usize) -> impl Strategy<Value = Vec<Vec<u8>>> {
    (
        vec(key(), 1..max.max(2)),
        vec(
            (
                any::<prop::sample::Index>(),
                0u8..3,
                any::<u64>(),
                segment(),
            ),
            0..max,
        ),
    )
        .prop_map(|(mut keys, relatives)| {
            for (i, how, seed, seg) in relatives {
                let k = i.get(&keys).clone();
                let relative = match how {
                    0 => k
                        .iter()
                        .enumerate()
                        .map(|(j, b)| {
                            if seed >> (j % 64) & 1 == 1 {
                                flip_case(*b)
                            } else {
                                *b
                            }
                        })
                        .collect(),
                    1 => [&k[..], b"/", &seg].concat(),
                    _ => k[..k.iter().rposition(|&b| b == b'/').unwrap_or(0)].to_vec(),
                };
                keys.push(relative);
            }
            keys.sort();
            keys.dedup();
            keys
        })
}

fn flip_case(b: u8) -> u8 {
    if b.is_ascii_alphabetic() {
        b ^ 0x20
    } else {
        b
    }
}

fn key_set() -> impl Strategy<Value = BTreeMap<Vec<u8>, Vec<u8>>> {
    related_keys(8).prop_map(|keys| {
        keys.into_iter()
            .enumerate()
            .map(|(i, k)| (k, format!("v{i}").into_bytes()))
            .collect()
    })
}

type Batch = Vec<(usize, Option<u8>)>;

type History = (Vec<Vec<u8>>, BTreeMap<usize, u8>, Vec<Batch>);

fn history() -> impl Strategy<Value = History> {
    related_keys(6).prop_flat_map(history_of)
}

/// An initial set of keys from `pool` and batches of changes to them.
fn history_of(pool: Vec<Vec<u8>>) -> impl Strategy<Value = History> {
    let n = pool.len();
    (
        Just(pool),
        btree_map(0..n, any::<u8>(), 0..n),
        vec(
            vec((0..n, proptest::option::weighted(0.6, any::<u8>())), 0..5),
            1..5,
        ),
    )
}

// ---------------------------------------------------------------- properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_single_key_round_trips(k in prop_oneof![key(), vec(any::<u8>(), 0..700)]) {
        let plan = layout_all::<u64, Vec<u8>>([(k.clone(), b"v".to_vec())]);
        let mut store = Store::default();
        let root = Some(store.write(plan));
        assert_canonical_shape(&store, root);
        let files = store.files(root);
        prop_assert_eq!(files.len(), 1);
        let (path, _) = files.into_iter().next().unwrap();
        prop_assert_eq!(decode_path(&path).unwrap(), k.clone(), "path {}", path);
        let found = lookup(&store, root.as_ref(), &k, &mut Locator::default()).unwrap();
        prop_assert_eq!(found.map(|id| store.content(id).to_vec()), Some(b"v".to_vec()));
        let comps = components(&k);
        prop_assert!(!comps.last().unwrap().continues);
    }

    #[test]
    fn batches_of_root_groups_give_the_tree_of_one_layout(
        (set, batch) in (key_set(), 1usize..4),
    ) {
        let mut store = Store::default();
        let whole = layout(&mut store, &set);
        let mut bulk = BulkKeys::default();
        for (k, v) in &set {
            bulk.push(k, v.clone());
        }
        // Each batch's subtrees are written at once; only the root's entries are kept.
        let mut root = DirPlan::<u64, Vec<u8>>::default();
        bulk.layout_batches(batch, |plan: DirPlan<u64, Vec<u8>>| {
            for (name, entry) in plan.entries {
                let existing = match entry {
                    PlanEntry::File(v) => PlanEntry::Existing { kind: EntryKind::File, id: store.blob(&v) },
                    PlanEntry::Dir(sub) => PlanEntry::Existing { kind: EntryKind::Dir, id: store.write(sub) },
                    e @ PlanEntry::Existing { .. } => e,
                };
                root.entries.push((name, existing));
            }
            Ok::<(), ()>(())
        }).unwrap();
        let batched = (!root.is_empty()).then(|| store.write(root));
        prop_assert_eq!(batched, whole, "trees differ for {:?}", set.keys().map(|k| Key(k.clone())).collect::<Vec<_>>());
    }

    #[test]
    fn a_key_set_is_laid_out_safely_and_reads_back(set in key_set()) {
        let mut store = Store::default();
        let root = layout(&mut store, &set);
        prop_assert_eq!(root.is_none(), set.is_empty());
        assert_canonical_shape(&store, root);
        prop_assert_eq!(&store.read_back(root), &set);
        let mut locator = Locator::default();
        for (k, v) in &set {
            let id = lookup(&store, root.as_ref(), k, &mut locator).unwrap();
            prop_assert_eq!(id.map(|id| store.content(id)), Some(&v[..]), "key {}", Key(k.clone()));
            let mut absent = k.clone();
            absent.push(b'!');
            if !set.contains_key(&absent) {
                prop_assert_eq!(lookup(&store, root.as_ref(), &absent, &mut locator).unwrap(), None);
            }
        }
    }
}

/// Keys whose segments are mostly names that are their own spelling (so directories of
/// them are written as edits), with some that are not (`.` first, empty segments).
fn lone_history() -> impl Strategy<Value = History> {
    let key = vec(vec(select(b"abg0-_.".to_vec()), 0..3), 1..4).prop_map(|s| s.join(&b'/'));
    vec(key, 1..14).prop_flat_map(history_of)
}

/// Applies `batches` one plan at a time, checking each tree against a layout from scratch.
fn check_history(
    pool: &[Vec<u8>],
    initial: &BTreeMap<usize, u8>,
    batches: Vec<Batch>,
) -> Result<(), TestCaseError> {
    let mut store = Store::default();
    let mut set: BTreeMap<Vec<u8>, Vec<u8>> = initial
        .iter()
        .map(|(&i, &v)| (pool[i].clone(), vec![v]))
        .collect();
    let mut root = layout(&mut store, &set);
    for batch in batches {
        let mut changes = BTreeMap::new();
        for (i, op) in batch {
            changes.insert(pool[i].clone(), op.map(|v| vec![v]));
        }
        for (k, op) in &changes {
            match op {
                Some(v) => set.insert(k.clone(), v.clone()),
                None => set.remove(k),
            };
        }
        let plan = plan_changes(&store, root.as_ref(), changes).unwrap();
        root = store.write_opt(plan);
        let scratch = layout(&mut store, &set);
        prop_assert_eq!(
            root,
            scratch,
            "trees differ for {:?}",
            set.keys().map(|k| Key(k.clone())).collect::<Vec<_>>()
        );
        prop_assert_eq!(&store.read_back(root), &set);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(160))]

    #[test]
    fn edits_of_lone_named_directories_equal_from_scratch((pool, initial, batches) in lone_history()) {
        check_history(&pool, &initial, batches)?;
    }

    #[test]
    fn incremental_equals_from_scratch((pool, initial, batches) in history()) {
        check_history(&pool, &initial, batches)?;
    }

    #[test]
    fn planning_after_lookups_lists_no_directory_twice((pool, initial, batches) in history()) {
        let mut store = Store::default();
        let set: BTreeMap<Vec<u8>, Vec<u8>> =
            initial.iter().map(|(&i, &v)| (pool[i].clone(), vec![v])).collect();
        let root = layout(&mut store, &set);
        let Some(batch) = batches.into_iter().next() else { return Ok(()) };
        let changes: BTreeMap<Vec<u8>, Option<Vec<u8>>> =
            batch.into_iter().map(|(i, op)| (pool[i].clone(), op.map(|v| vec![v]))).collect();
        let alone = plan_changes(&store, root.as_ref(), changes.clone()).unwrap();
        let lists_alone = store.lists.replace(0);
        let mut listed = Locator::default();
        for k in changes.keys() {
            lookup(&store, root.as_ref(), k, &mut listed).unwrap();
        }
        let lists_lookups = store.lists.replace(0);
        let shared = plan_changes_with(&store, root.as_ref(), changes, &mut listed).unwrap();
        let lists_after = store.lists.replace(0);
        prop_assert_eq!(store.write_opt(shared), store.write_opt(alone), "the same tree either way");
        // Every lookup lists the root first, so at least the root is handed over.
        if lists_lookups > 0 {
            prop_assert!(lists_after < lists_alone, "alone {lists_alone} lists, after the lookups {lists_after}");
        }
    }

    #[test]
    fn no_op_changes_keep_every_object((set, extra) in (key_set(), vec(key(), 0..4))) {
        let mut store = Store::default();
        let root = layout(&mut store, &set);
        let changes: BTreeMap<Vec<u8>, Option<Vec<u8>>> = extra
            .into_iter()
            .filter(|k| !set.contains_key(k))
            .map(|k| (k, None))
            .collect();
        let plan = plan_changes(&store, root.as_ref(), changes).unwrap();
        if let Some(plan) = &plan {
            for (name, entry) in &plan.entries {
                prop_assert!(matches!(entry, PlanEntry::Existing { .. }), "{} was rebuilt", name);
            }
        }
        prop_assert_eq!(store.write_opt(plan), root);
    }

    #[test]
    fn from_nothing_equals_layout(set in key_set()) {
        let mut store = Store::default();
        let changes: Vec<_> = set.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect();
        let plan = plan_changes(&store, None, changes).unwrap();
        let root = store.write_opt(plan);
        prop_assert_eq!(root, layout(&mut store, &set));
    }
}

// ---------------------------------------------------------------- scenarios

fn set_of(pairs: &[(&str, &str)]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

fn changes_of(pairs: &[(&str, Option<&str>)]) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec())))
        .collect()
}

fn entry<'p>(plan: &'p DirPlan<u64, Vec<u8>>, name: &str) -> &'p PlanEntry<u64, Vec<u8>> {
    &plan
        .entries
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no {name} in {plan:?}"))
        .1
}

fn id_at(store: &Store, root: u64, path: &str) -> u64 {
    let mut id = root;
    for name in path.split('/') {
        id = store
            .tree(id)
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("no {path}"))
            .2;
    }
    id
}

#[test]
fn a_case_sibling_renames_the_existing_file_without_rewriting_it() {
    let mut store = Store::default();
    let root = layout(&mut store, &set_of(&[("node", "n")])).unwrap();
    let old = id_at(&store, root, "node");
    let plan = plan_changes(&store, Some(&root), changes_of(&[("Node", Some("N"))]))
        .unwrap()
        .unwrap();
    assert_eq!(
        entry(&plan, "node~0"),
        &PlanEntry::Existing {
            kind: EntryKind::File,
            id: old
        }
    );
    assert_eq!(entry(&plan, "Node"), &PlanEntry::File(b"N".to_vec()));
    assert_eq!(plan.entries.len(), 2);

    // And back: with `Node` gone, `node` is plain again.
    let root = store.write(plan);
    let plan = plan_changes(&store, Some(&root), changes_of(&[("Node", None)]))
        .unwrap()
        .unwrap();
    assert_eq!(
        plan.entries,
        vec![(
            "node".to_string(),
            PlanEntry::Existing {
                kind: EntryKind::File,
                id: old
            }
        )]
    );
}

#[test]
fn a_moved_subtree_stays_one_existing_object() {
    let mut store = Store::default();
    let root = layout(&mut store, &set_of(&[("x/y", "1"), ("x/z", "2")])).unwrap();
    let x = id_at(&store, root, "x");
    let plan = plan_changes(&store, Some(&root), changes_of(&[("X/q", Some("3"))]))
        .unwrap()
        .unwrap();
    assert_eq!(
        entry(&plan, "x~0"),
        &PlanEntry::Existing {
            kind: EntryKind::Dir,
            id: x
        }
    );
    assert!(matches!(entry(&plan, "X"), PlanEntry::Dir(_)));
}

#[test]
fn a_value_moves_into_self_and_collapses_back() {
    let mut store = Store::default();
    let root = layout(&mut store, &set_of(&[("a", "va")])).unwrap();
    let va = id_at(&store, root, "a");

    let plan = plan_changes(&store, Some(&root), changes_of(&[("a/b", Some("vb"))]))
        .unwrap()
        .unwrap();
    let PlanEntry::Dir(a) = entry(&plan, "a") else {
        panic!("a is not a directory: {plan:?}")
    };
    assert_eq!(
        entry(a, "%self"),
        &PlanEntry::Existing {
            kind: EntryKind::File,
            id: va
        }
    );
    assert_eq!(entry(a, "b"), &PlanEntry::File(b"vb".to_vec()));
    let root = store.write(plan);
    assert_eq!(
        store.files(Some(root)).keys().collect::<Vec<_>>(),
        ["a/%self", "a/b"]
    );

    let plan = plan_changes(&store, Some(&root), changes_of(&[("a/b", None)]))
        .unwrap()
        .unwrap();
    assert_eq!(
        plan.entries,
        vec![(
            "a".to_string(),
            PlanEntry::Existing {
                kind: EntryKind::File,
                id: va
            }
        )]
    );

    // Deleting the value only keeps the directory, without `%self`.
    let plan = plan_changes(&store, Some(&root), changes_of(&[("a", None)]))
        .unwrap()
        .unwrap();
    let root = store.write(plan);
    assert_eq!(store.files(Some(root)).keys().collect::<Vec<_>>(), ["a/b"]);
}

#[test]
fn emptying_the_area_gives_none() {
    let mut store = Store::default();
    let root = layout(&mut store, &set_of(&[("a", "1"), ("a/b", "2")])).unwrap();
    let plan = plan_changes(
        &store,
        Some(&root),
        changes_of(&[("a", None), ("a/b", None)]),
    )
    .unwrap();
    assert!(plan.is_none());
    let plan = plan_changes::<_, Vec<u8>>(&store, None, changes_of(&[("gone", None)])).unwrap();
    assert!(plan.is_none());
}

#[test]
fn lookups_list_each_directory_once() {
    let mut store = Store::default();
    let set: BTreeMap<Vec<u8>, Vec<u8>> = (0..25_000)
        .map(|i| (format!("big/k{i}").into_bytes(), i.to_string().into_bytes()))
        .chain([(b"big".to_vec(), b"self".to_vec())])
        .collect();
    let root = layout(&mut store, &set).unwrap();
    store.lists.set(0);
    let mut locator = Locator::default();
    let mut find = |rel: &[u8]| lookup(&store, Some(&root), rel, &mut locator).unwrap();
    for i in (0..25_000).step_by(250) {
        let id = find(format!("big/k{i}").as_bytes()).unwrap();
        assert_eq!(store.content(id), i.to_string().as_bytes());
    }
    assert_eq!(find(b"big/nope"), None);
    assert_eq!(find(b"big/k1/deeper"), None);
    let id = find(b"big").unwrap();
    assert_eq!(store.content(id), b"self");
    assert_eq!(store.lists.get(), 2, "root and big/ are listed once each");
}

/// A locator remembers the directory the last key was found in: keys looked up in a row
/// (present or not, below it, beside it, `%self`, a segment long enough to be chunked) find
/// what a fresh locator finds.
#[test]
fn lookups_in_a_row_find_what_fresh_lookups_find() {
    let mut store = Store::default();
    let long = "L".repeat(400);
    let mut set: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for key in [
        "d/a".to_string(),
        "d/b".to_string(),
        "d/c/x".to_string(),
        "d/c".to_string(),
        format!("d/{long}"),
        format!("d/{long}/under"),
        "d/e/f/g".to_string(),
        "d2/a".to_string(),
        "top".to_string(),
    ] {
        let value = format!("v:{key}").into_bytes();
        set.insert(key.into_bytes(), value);
    }
    let root = layout(&mut store, &set).unwrap();
    let mut asked: Vec<Vec<u8>> = set.keys().cloned().collect();
    for absent in [
        "d/aa",
        "d/c/y",
        "d/e",
        "d/e/f",
        "d/zz",
        "d2/b",
        "d3/a",
        "d/",
        "",
        // Below missing directories and below files, several in a row.
        "d3/",
        "d3/b",
        "d3/c/d",
        "d3x/a",
        "d/a/x",
        "d/a/y",
        "d/e/g/h",
        "d/e/g",
        "top/x",
        "top/y/z",
        "d/e/f/g/h",
    ] {
        asked.push(absent.as_bytes().to_vec());
    }
    asked.push(format!("d/{long}x").into_bytes());
    asked.push(format!("d/{long}/other").into_bytes());
    for below in ["/a", "/b", "y/a", "y/b", "/under/deeper"] {
        asked.push(format!("d/{long}{below}").into_bytes());
        asked.push(format!("d/{}{below}", "M".repeat(400)).into_bytes());
    }
    asked.sort();
    let mut in_a_row = Locator::default();
    for order in [asked.clone(), asked.iter().rev().cloned().collect()] {
        for key in &order {
            let fresh = lookup(&store, Some(&root), key, &mut Locator::default()).unwrap();
            let again = lookup(&store, Some(&root), key, &mut in_a_row).unwrap();
            assert_eq!(again, fresh, "{}", Key(key.clone()));
            let want = set.get(key).map(|v| &v[..]);
            assert_eq!(
                fresh.map(|id| store.content(id)),
                want,
                "{}",
                Key(key.clone())
            );
        }
    }
}

#[test]
fn hand_written_spellings_decode_and_get_canonical_when_touched() {
    let mut store = Store::default();
    // `node~0` and `node` spell one component; `café` is a literal (unescaped) name.
    let root = store.hand_written(&[
        ("Node", "N"),
        ("node/x", "x"),
        ("node~0/y", "y"),
        ("café", "c"),
    ]);
    assert_eq!(
        store.read_back(Some(root)),
        set_of(&[
            ("Node", "N"),
            ("node/x", "x"),
            ("node/y", "y"),
            ("café", "c")
        ])
    );
    assert_eq!(
        lookup(&store, Some(&root), b"node/y", &mut Locator::default())
            .unwrap()
            .map(|id| store.content(id).to_vec()),
        Some(b"y".to_vec())
    );

    let plan = plan_changes(&store, Some(&root), changes_of(&[("z", Some("z"))])).unwrap();
    let root = store.write_opt(plan);
    assert_eq!(
        store.files(root).keys().collect::<Vec<_>>(),
        ["Node", "caf%C3%A9", "node~0/x", "node~0/y", "z"]
    );
}

#[test]
fn a_key_stored_twice_is_reported_with_both_paths() {
    let mut store = Store::default();
    let root = store.hand_written(&[("a", "1"), ("a~0/%self", "2"), ("a~0/b", "3")]);
    let want = MapError::Duplicate {
        key: Key::from("a"),
        first: "a".into(),
        second: "a~0/%self".into(),
    };
    let err = plan_changes(&store, Some(&root), changes_of(&[("c", Some("c"))])).unwrap_err();
    assert!(matches!(&err, PlanError::Map(e) if *e == want), "{err}");
    let err = lookup(&store, Some(&root), b"a", &mut Locator::default()).unwrap_err();
    assert!(matches!(&err, PlanError::Map(e) if *e == want), "{err}");
    let err = decode_paths(["a", "a~0/%self", "a~0/b"]).unwrap_err();
    assert_eq!(err, want);
    assert_eq!(
        err.to_string(),
        "key `a` is stored twice: at `a` and at `a~0/%self`"
    );
}

#[test]
fn bad_names_in_a_tree_are_reported_by_strict_decoding_with_their_path() {
    match decode_paths(["d/x~1"]).unwrap_err() {
        MapError::BadName {
            path,
            name,
            problem,
        } => {
            assert_eq!(path, "d/x~1");
            assert_eq!(name, "x~1");
            assert_eq!(
                problem,
                NameProblem::BadTag {
                    found: "1".into(),
                    expected: "0".into()
                }
            );
        }
        other => panic!("unexpected {other}"),
    }
    let err = decode_paths(["%self"]).unwrap_err();
    assert!(
        err.to_string()
            .contains("`%self` cannot be at the area root"),
        "{err}"
    );
    let err = decode_paths(["a%+"]).unwrap_err();
    assert!(err.to_string().contains("must be a directory"), "{err}");
}

/// A hand-written file whose name maps to no key never stops recording: lookups pass it by,
/// and rewriting its directory carries it over untouched (a person's file is not deleted).
#[test]
fn files_that_map_to_no_key_are_kept_and_passed_by() {
    let mut store = Store::default();
    let root = store.hand_written(&[("d/x~1", "1"), ("d/z", "z"), ("%ZZ", "junk")]);
    let plan = plan_changes(
        &store,
        Some(&root),
        changes_of(&[("d/y", Some("2")), ("d/z", None)]),
    )
    .expect("a bad name does not fail the plan");
    let new_root = store.write_opt(plan);
    let files = store.files(new_root);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(names, ["%ZZ", "d/x~1", "d/y"], "{files:?}");
    assert_eq!(files["%ZZ"], b"junk");
    assert_eq!(files["d/x~1"], b"1");
    for bad in [&[("%self", "1")][..], &[("a%+", "1")][..]] {
        let root = store.hand_written(bad);
        let found = lookup(&store, Some(&root), b"a", &mut Locator::default())
            .expect("a bad name is passed by");
        assert_eq!(found, None);
    }
    let root = store.hand_written(&[("d/x~1", "1"), ("d/y", "2")]);
    let found = lookup(&store, Some(&root), b"d/y", &mut Locator::default()).expect("lookup");
    assert!(found.is_some());
    // Deleting the last mapped key keeps the directory for the unmapped file.
    let plan = plan_changes(&store, Some(&root), changes_of(&[("d/y", None)])).expect("plan");
    let kept = store.write_opt(plan);
    let files = store.files(kept);
    assert_eq!(files.keys().collect::<Vec<_>>(), ["d/x~1"]);
}

#[test]
fn a_failing_source_is_reported_with_the_directory() {
    let mut store = Store::default();
    let blob = store.blob(b"not a tree");
    let err = plan_changes(&store, Some(&blob), changes_of(&[("a", Some("1"))])).unwrap_err();
    assert!(matches!(err, PlanError::List { ref path, .. } if path.is_empty()));
    assert_eq!(
        err.to_string(),
        "cannot list directory `<area root>` of the area tree"
    );
}

#[test]
fn a_few_changes_in_a_large_lone_named_directory_are_an_edit_of_its_tree() {
    let mut store = Store::default();
    let mut set = BTreeMap::new();
    for d in 0..40 {
        for k in 0..5 {
            set.insert(format!("node-{d:02}/key-{k}").into_bytes(), vec![1]);
        }
    }
    let root = layout(&mut store, &set).unwrap();
    let changes = changes_of(&[
        ("node-03/key-1", Some("v")),
        ("node-07/key-9", Some("new")),
        ("node-11/key-0", None),
        ("node-40/key-0", Some("new dir")),
    ]);
    for (k, op) in &changes {
        match op {
            Some(v) => set.insert(k.clone(), v.clone()),
            None => set.remove(k),
        };
    }
    let plan = plan_changes(&store, Some(&root), changes).unwrap().unwrap();
    // Only the changed directories are planned; the other 37 are kept by the edit.
    assert_eq!(plan.edit.as_ref().map(|e| e.base), Some(root));
    let names: Vec<&str> = plan.entries.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["node-03", "node-07", "node-11", "node-40"]);
    let PlanEntry::Dir(node3) = entry(&plan, "node-03") else {
        panic!("node-03 is not a directory: {plan:?}")
    };
    assert_eq!(node3.entries.len(), 1, "one file of node-03 changes");
    let root = store.write(plan);
    assert_eq!(Some(root), layout(&mut store, &set));

    // Emptying a directory removes it from the edit; an upper-case name is no edit.
    let plan = plan_changes(&store, Some(&root), changes_of(&[("node-40/key-0", None)]))
        .unwrap()
        .unwrap();
    assert_eq!(
        plan.edit.as_ref().map(|e| e.removed.clone()),
        Some(vec!["node-40".to_string()])
    );
    assert!(plan.entries.is_empty());
    let plan = plan_changes(
        &store,
        Some(&root),
        changes_of(&[("Node-40/key-0", Some("v"))]),
    )
    .unwrap()
    .unwrap();
    assert!(
        plan.edit.is_none(),
        "a name that could fold onto another is planned whole"
    );
}

#[test]
fn lookups_by_name_find_files_and_directories_in_git_order() {
    // In Git's order `a-b` and `a.c` sort before the directory `a` (as `a/`), and `a0` after.
    let mut store = Store::default();
    let set = set_of(&[
        ("a/x", "1"),
        ("a", "2"),
        ("a-b", "3"),
        ("a.c", "4"),
        ("a0", "5"),
    ]);
    let root = layout(&mut store, &set).unwrap();
    let names: Vec<&str> = store
        .tree(root)
        .iter()
        .map(|(n, _, _)| n.as_str())
        .collect();
    assert_eq!(names, ["a-b", "a.c", "a", "a0"]);
    let mut locator = Locator::default();
    for (key, value) in &set {
        let id = lookup(&store, Some(&root), key, &mut locator).unwrap();
        assert_eq!(
            id.map(|id| store.content(id).to_vec()),
            Some(value.clone()),
            "{key:?}"
        );
    }
    for absent in ["a-", "b", "a/y", "a0/x", "A"] {
        let id = lookup(&store, Some(&root), absent.as_bytes(), &mut locator).unwrap();
        assert_eq!(id, None, "{absent}");
    }
    // A change planned on the lookups' listings gives the tree of a layout from scratch.
    let mut set = set;
    set.insert(b"a-b".to_vec(), b"new".to_vec());
    set.remove(&b"a/x"[..]);
    let plan = plan_changes_with(
        &store,
        Some(&root),
        changes_of(&[("a-b", Some("new")), ("a/x", None)]),
        &mut locator,
    )
    .unwrap();
    let root = store.write_opt(plan);
    assert_eq!(root, layout(&mut store, &set));
}

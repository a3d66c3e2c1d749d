//! Reading one directory of an existing area tree into components: decodes and checks its
//! names, and merges hand-written spellings of one component (`node` next to `node~0`).

use std::collections::BTreeMap;

use super::component::Component;
use super::error::{MapError, NameProblem, PlanError};
use super::escape::is_lone_name;
use super::name::{decode_name, Name, SELF_NAME};
use crate::tree::{canonical_cmp, EntryKind, ListedEntry, TreeSource};
use crate::types::Key;

/// An existing object and its path relative to the area directory.
#[derive(Debug, Clone)]
pub(crate) struct Src<Id> {
    pub id: Id,
    pub path: String,
}

/// Where one component of a directory is stored. Canonical trees have one file or one
/// directory; lenient ones may spread a component over several directories.
#[derive(Debug, Clone)]
pub(crate) struct Found<Id> {
    pub file: Option<Src<Id>>,
    pub dirs: Vec<Src<Id>>,
}

impl<Id> Default for Found<Id> {
    fn default() -> Self {
        Found {
            file: None,
            dirs: Vec::new(),
        }
    }
}

/// Which kind of directory is read, for the `%self` rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DirKind {
    Root,
    /// The directory of a whole segment: may hold `%self`.
    Node,
    /// The directory of a chunk of a long segment.
    Continuation,
}

impl DirKind {
    pub(crate) fn of(comp: &Component) -> DirKind {
        if comp.continues {
            DirKind::Continuation
        } else {
            DirKind::Node
        }
    }
}

/// One directory of the area, decoded.
pub(crate) struct DirListing<Id> {
    pub self_file: Option<Src<Id>>,
    /// `None` while the directory is lone: one tree in Git's order whose every name is its
    /// component's only spelling (or `%self`), so a component is found by its name alone
    /// and the entries are decoded only if all of them are needed ([`DirListing::decode`]).
    children: Option<BTreeMap<Component, Found<Id>>>,
    /// The path of the directory's one tree and its key prefix, kind, for a later decode.
    path: String,
    prefix: Vec<u8>,
    kind: DirKind,
    /// The listing as read, when the directory is exactly one tree: lets the caller keep an
    /// opened directory that comes out unchanged as the same object.
    pub single: Option<Vec<ListedEntry<Id>>>,
    /// Entries whose names map to no key (a hand-written `%ZZ`, a `%self` at the root):
    /// no key can live there, so lookups pass them by, and a rewrite of the directory
    /// carries them over untouched; a person's file is never deleted for its name.
    pub unmapped: Vec<ListedEntry<Id>>,
}

/// Called for every entry of every directory read: plain pushes, not `format!`.
fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        return name.to_string();
    }
    let mut path = String::with_capacity(dir.len() + 1 + name.len());
    path.push_str(dir);
    path.push('/');
    path.push_str(name);
    path
}

/// Reads the trees `dirs` (all holding the directory whose key prefix is `prefix`).
pub(crate) fn read_dir<S: TreeSource>(
    source: &S,
    dirs: &[Src<S::Id>],
    prefix: &[u8],
    kind: DirKind,
) -> Result<DirListing<S::Id>, PlanError<S::Error>> {
    let mut out = DirListing {
        self_file: None,
        children: None,
        path: dirs.first().map(|d| d.path.clone()).unwrap_or_default(),
        prefix: prefix.to_vec(),
        kind,
        single: None,
        unmapped: Vec::new(),
    };
    if let [dir] = dirs {
        let listed = source.list(&dir.id).map_err(|source| PlanError::List {
            path: dir.path.clone(),
            source,
        })?;
        if is_lone(&listed, kind) {
            out.self_file = listed.iter().find(|e| e.name == SELF_NAME).map(|e| Src {
                id: e.id.clone(),
                path: join(&dir.path, &e.name),
            });
            out.single = Some(listed);
            return Ok(out);
        }
        out.single = Some(listed);
    }
    let mut comps: Vec<(Component, EntryKind, Src<S::Id>)> = Vec::new();
    let single = out.single.take();
    for dir in dirs {
        let fresh;
        let listed = match &single {
            Some(listed) => listed,
            None => {
                fresh = source.list(&dir.id).map_err(|source| PlanError::List {
                    path: dir.path.clone(),
                    source,
                })?;
                &fresh
            }
        };
        add_entries(&mut out, &mut comps, listed, &dir.path)?;
    }
    out.single = single;
    out.children = Some(merge(comps, prefix)?);
    Ok(out)
}

/// Whether a directory's one tree can be read by name (see `DirListing::children`).
fn is_lone<Id>(listed: &[ListedEntry<Id>], kind: DirKind) -> bool {
    let dir = |e: &ListedEntry<Id>| e.kind == EntryKind::Dir;
    listed.iter().all(|e| {
        is_lone_name(e.name.as_bytes())
            || (kind == DirKind::Node && e.kind == EntryKind::File && e.name == SELF_NAME)
    }) && listed.windows(2).all(|w| {
        canonical_cmp(
            w[0].name.as_bytes(),
            dir(&w[0]),
            w[1].name.as_bytes(),
            dir(&w[1]),
        )
        .is_lt()
    })
}

/// Decodes `listed` (a tree of the directory at `path`) into `out` and `comps`.
fn add_entries<Id: Clone>(
    out: &mut DirListing<Id>,
    comps: &mut Vec<(Component, EntryKind, Src<Id>)>,
    listed: &[ListedEntry<Id>],
    path: &str,
) -> Result<(), MapError> {
    comps.reserve(listed.len());
    let (prefix, kind) = (out.prefix.clone(), out.kind);
    for entry in listed {
        match add_entry(out, entry, join(path, &entry.name), &prefix, kind) {
            Ok(Some(comp)) => comps.push(comp),
            Ok(None) => {}
            Err(MapError::BadName { .. }) => out.unmapped.push(entry.clone()),
            Err(other) => return Err(other),
        }
    }
    Ok(())
}

/// The children of a directory from its decoded entries.
fn merge<Id>(
    mut comps: Vec<(Component, EntryKind, Src<Id>)>,
    prefix: &[u8],
) -> Result<BTreeMap<Component, Found<Id>>, MapError> {
    // A tree lists its entries in name order, which is nearly component order: the stable
    // sort is about one pass, and the map is built in bulk rather than by a search per entry
    // (those searches were the largest cost of reading a directory of a thousand entries).
    comps.sort_by(|a, b| a.0.cmp(&b.0));
    let mut merged: Vec<(Component, Found<Id>)> = Vec::with_capacity(comps.len());
    for (comp, entry_kind, src) in comps {
        if merged.last().is_none_or(|(last, _)| *last != comp) {
            merged.push((comp, Found::default()));
        }
        let last = merged.len() - 1; // never empty: pushed above when it was
        let (comp, found) = &mut merged[last];
        match entry_kind {
            EntryKind::Dir => found.dirs.push(src),
            EntryKind::File => {
                let key = [prefix, &comp.raw].concat();
                put_once(&mut found.file, src, &key)?;
            }
        }
    }
    Ok(merged.into_iter().collect())
}

impl<Id: Clone> DirListing<Id> {
    /// Where component `comp` is stored in this directory (empty if nowhere).
    pub(crate) fn find(&self, comp: &Component) -> Found<Id> {
        match (&self.children, &self.single) {
            (Some(children), _) => children.get(comp).cloned().unwrap_or_default(),
            (None, Some(listed)) if !comp.continues && is_lone_name(&comp.raw) => {
                let name = &comp.raw[..];
                let at = |dir: bool| {
                    listed
                        .binary_search_by(|e| {
                            canonical_cmp(e.name.as_bytes(), e.kind == EntryKind::Dir, name, dir)
                        })
                        .ok()
                        .map(|i| Src {
                            id: listed[i].id.clone(),
                            path: join(&self.path, &listed[i].name),
                        })
                };
                Found {
                    file: at(false),
                    dirs: at(true).into_iter().collect(),
                }
            }
            // A lone directory holds no other component.
            (None, _) => Found::default(),
        }
    }

    /// The number of entries of the directory's one tree while it is read by name (its
    /// names are all lone, see `children`); `None` once decoded or if it never was lone.
    pub(crate) fn lone_entries(&self) -> Option<usize> {
        match (&self.children, &self.single) {
            (None, Some(listed)) => Some(listed.len()),
            _ => None,
        }
    }

    /// Takes every child of the directory, decoding them if it was read by name; called
    /// once, by a plan that rewrites the directory whole (the rest of the listing stays).
    pub(crate) fn decode(&mut self) -> Result<BTreeMap<Component, Found<Id>>, MapError> {
        if let Some(children) = self.children.take() {
            return Ok(children);
        }
        let listed = self.single.take().unwrap_or_default();
        let path = self.path.clone();
        self.self_file = None;
        let mut comps = Vec::new();
        let added = add_entries(self, &mut comps, &listed, &path);
        self.single = Some(listed);
        added?;
        merge(comps, &self.prefix)
    }
}

/// Files `entry` in `out` (`%self`) or returns its component, kind and source.
fn add_entry<Id: Clone>(
    out: &mut DirListing<Id>,
    entry: &ListedEntry<Id>,
    path: String,
    prefix: &[u8],
    kind: DirKind,
) -> Result<Option<(Component, EntryKind, Src<Id>)>, MapError> {
    let src = Src {
        id: entry.id.clone(),
        path,
    };
    let bad = |problem| MapError::BadName {
        path: src.path.clone(),
        name: entry.name.clone(),
        problem,
    };
    match decode_name(&entry.name).map_err(bad)? {
        Name::SelfValue => {
            let problem = match (kind, entry.kind) {
                (DirKind::Root, _) => Some(NameProblem::SelfAtRoot),
                (DirKind::Continuation, _) => Some(NameProblem::SelfInContinuation),
                (DirKind::Node, EntryKind::Dir) => Some(NameProblem::SelfNotFile),
                (DirKind::Node, EntryKind::File) => None,
            };
            if let Some(problem) = problem {
                return Err(bad(problem));
            }
            let node_key = &prefix[..prefix.len().saturating_sub(1)];
            put_once(&mut out.self_file, src, node_key).map(|()| None)
        }
        Name::Comp(comp) if comp.continues && entry.kind == EntryKind::File => {
            Err(bad(NameProblem::ContinuationNotDir))
        }
        Name::Comp(comp) => Ok(Some((comp, entry.kind, src))),
    }
}

/// Records the file holding `key`'s value, refusing a second one.
pub(crate) fn put_once<Id>(
    slot: &mut Option<Src<Id>>,
    src: Src<Id>,
    key: &[u8],
) -> Result<(), MapError> {
    match slot {
        Some(first) => Err(duplicate(key, first, &src)),
        None => {
            *slot = Some(src);
            Ok(())
        }
    }
}

pub(crate) fn duplicate<Id>(key: &[u8], first: &Src<Id>, second: &Src<Id>) -> MapError {
    MapError::Duplicate {
        key: Key(key.to_vec()),
        first: first.path.clone(),
        second: second.path.clone(),
    }
}

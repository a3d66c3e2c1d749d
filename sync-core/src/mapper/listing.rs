//! Reading one directory of an existing area tree into components: decodes and checks its
//! names, and merges hand-written spellings of one component (`node` next to `node~0`).

use std::collections::BTreeMap;

use super::component::Component;
use super::error::{MapError, NameProblem, PlanError};
use super::name::{decode_name, Name};
use crate::tree::{EntryKind, ListedEntry, TreeSource};
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
    pub children: BTreeMap<Component, Found<Id>>,
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
        children: BTreeMap::new(),
        single: None,
        unmapped: Vec::new(),
    };
    let mut comps: Vec<(Component, EntryKind, Src<S::Id>)> = Vec::new();
    for dir in dirs {
        let listed = source.list(&dir.id).map_err(|source| PlanError::List {
            path: dir.path.clone(),
            source,
        })?;
        comps.reserve(listed.len());
        for entry in &listed {
            match add_entry(&mut out, entry, join(&dir.path, &entry.name), prefix, kind) {
                Ok(Some(comp)) => comps.push(comp),
                Ok(None) => {}
                Err(MapError::BadName { .. }) => out.unmapped.push(entry.clone()),
                Err(other) => return Err(other.into()),
            }
        }
        if dirs.len() == 1 {
            out.single = Some(listed);
        }
    }
    // A tree lists its entries in name order, which is nearly component order: the stable
    // sort is about one pass, and the map is built in bulk rather than by a search per entry
    // (those searches were the largest cost of reading a directory of a thousand entries).
    comps.sort_by(|a, b| a.0.cmp(&b.0));
    let mut merged: Vec<(Component, Found<S::Id>)> = Vec::with_capacity(comps.len());
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
    out.children = merged.into_iter().collect();
    Ok(out)
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

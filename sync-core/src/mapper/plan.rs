//! Applying a batch of key changes to an existing area tree: only the directories on the
//! paths of changed keys are listed and rebuilt; everything else is carried by id.

use std::collections::HashMap;

use super::assemble::{assemble, place, Content, Slot};
use super::component::{
    component_at, extend_dir_prefix, group_len, seq_cmp, spans, Component, Span,
};
use super::error::PlanError;
use super::escape::is_lone_name;
use super::listing::{duplicate, read_dir, DirKind, DirListing, Found, Src};
use super::lookup::Locator;
use super::name::SELF_NAME;
use crate::tree::{DirPlan, EntryKind, ListedEntry, PlanEntry, TreeEdit, TreeSource};

struct Change<V> {
    key: Vec<u8>,
    spans: Vec<Span>,
    /// Some(put value) or None (delete); taken when applied.
    op: Option<Option<V>>,
}

/// One directory after the changes: its own `%self` (as found) and its new slots.
struct DirOutcome<Id, V> {
    self_file: Option<Src<Id>>,
    slots: Vec<(Component, Slot<Id, V>)>,
    single: Option<Vec<ListedEntry<Id>>>,
    /// Entries that map to no key, kept as they are.
    unmapped: Vec<ListedEntry<Id>>,
    /// Set (and `slots` empty) when the directory is written as an edit of its one tree.
    edit: Option<Edit<Id, V>>,
}

/// A directory written as an edit of its tree `base`, and how many entries it holds after.
struct Edit<Id, V> {
    base: Id,
    entries: Vec<(String, PlanEntry<Id, V>)>,
    removed: Vec<String>,
    len: usize,
}

impl<Id, V> Edit<Id, V> {
    fn into_plan(self) -> DirPlan<Id, V> {
        DirPlan {
            entries: self.entries,
            edit: Some(TreeEdit {
                base: self.base,
                removed: self.removed,
            }),
        }
    }
}

/// A changed component of a directory: what it held (kind and id of its one entry) and its
/// new slot.
type Changed<Id, V> = (Component, Option<(EntryKind, Id)>, Option<Slot<Id, V>>);

/// The changes of one component of a directory: the one ending there, and those below.
type Group<'c, V> = (Component, Option<Option<V>>, &'c mut [Change<V>]);
/// A planned area tree (None: empty), or why it could not be planned from `S`.
type Planned<S, V> =
    Result<Option<DirPlan<<S as TreeSource>::Id, V>>, PlanError<<S as TreeSource>::Error>>;
/// One component's slot in its directory (None: nothing left there), or why not.
type SlotPlanned<S, V> =
    Result<Option<Slot<<S as TreeSource>::Id, V>>, PlanError<<S as TreeSource>::Error>>;

/// The directory of `slots` plus the unmapped entries carried over; None when empty.
fn assemble_with<Id, V>(
    slots: Vec<(Component, Slot<Id, V>)>,
    unmapped: Vec<ListedEntry<Id>>,
) -> Option<DirPlan<Id, V>> {
    let mut plan = assemble(slots);
    plan.entries.extend(unmapped.into_iter().map(|e| {
        (
            e.name,
            PlanEntry::Existing {
                kind: e.kind,
                id: e.id,
            },
        )
    }));
    (!plan.is_empty()).then_some(plan)
}

/// The area tree after applying `changes` (relative key -> Some(value) to put, None to
/// delete; each key at most once, in any order) to the tree `base` (None: empty). None when
/// the area ends up empty.
///
/// The result equals `layout_all` of the resulting key set when `base` is canonical;
/// untouched files and subtrees are `PlanEntry::Existing`, even when renamed.
pub fn plan_changes<S: TreeSource, V>(
    source: &S,
    base: Option<&S::Id>,
    changes: impl IntoIterator<Item = (Vec<u8>, Option<V>)>,
) -> Planned<S, V> {
    plan_changes_with(source, base, changes, &mut Locator::default())
}

/// [`plan_changes`] taking the directories `listed` already holds for `base` (from
/// [`lookup`](super::lookup) calls in the same tree) instead of listing them again.
pub fn plan_changes_with<S: TreeSource, V>(
    source: &S,
    base: Option<&S::Id>,
    changes: impl IntoIterator<Item = (Vec<u8>, Option<V>)>,
    listed: &mut Locator<S::Id>,
) -> Planned<S, V> {
    let mut items: Vec<Change<V>> = changes
        .into_iter()
        .map(|(key, op)| Change {
            spans: spans(&key),
            key,
            op: Some(op),
        })
        .collect();
    items.sort_by(|a, b| seq_cmp(&a.key, &a.spans, &b.key, &b.spans));
    let roots: Vec<Src<S::Id>> = base
        .map(|id| Src {
            id: id.clone(),
            path: String::new(),
        })
        .into_iter()
        .collect();
    let mut planner = Planner {
        source,
        base,
        listed,
    };
    let root = planner.dir(&roots, DirKind::Root, &mut Vec::new(), &mut items, 0)?;
    if let Some(edit) = root.edit {
        return Ok((edit.len > 0).then(|| edit.into_plan()));
    }
    Ok(assemble_with(root.slots, root.unmapped))
}

struct Planner<'s, S: TreeSource> {
    source: &'s S,
    base: Option<&'s S::Id>,
    listed: &'s mut Locator<S::Id>,
}

impl<S: TreeSource> Planner<'_, S> {
    /// The directory stored in `dirs` (none if new) at key prefix `prefix`, with `changes`
    /// applied; every change has a component at `depth`.
    fn dir<V>(
        &mut self,
        dirs: &[Src<S::Id>],
        kind: DirKind,
        prefix: &mut Vec<u8>,
        changes: &mut [Change<V>],
        depth: usize,
    ) -> Result<DirOutcome<S::Id, V>, PlanError<S::Error>> {
        let mut listing = match self.listed.take(self.base, prefix, dirs) {
            Some(listing) => listing,
            None => read_dir(self.source, dirs, prefix, kind)?,
        };
        let mut groups: Vec<Group<'_, V>> = Vec::new();
        let mut rest = changes;
        while !rest.is_empty() {
            let n = group_len(rest, |c| (&c.key[..], c.spans[depth]));
            let (group, tail) = std::mem::take(&mut rest).split_at_mut(n);
            rest = tail;
            let comp = component_at(&group[0].key, group[0].spans[depth]);
            // Keys are unique, so at most one change ends here, and it sorts first.
            let ends = group
                .iter()
                .take_while(|c| c.spans.len() == depth + 1)
                .count();
            let (own, below) = group.split_at_mut(ends);
            let own = own.iter_mut().find_map(|c| c.op.take());
            groups.push((comp, own, below));
        }
        // An edit when every changed component is a lone name held by at most one entry.
        let edit = editable(&listing, dirs).and_then(|(base, len)| {
            let held: Option<Vec<_>> = groups
                .iter()
                .map(|(comp, _, _)| {
                    if comp.continues || !is_lone_name(&comp.raw) {
                        return None;
                    }
                    let found = listing.find(comp);
                    let held = match (&found.file, &found.dirs[..]) {
                        (None, []) => None,
                        (Some(f), []) => Some((EntryKind::File, f.id.clone())),
                        (None, [d]) => Some((EntryKind::Dir, d.id.clone())),
                        _ => return None,
                    };
                    Some((found, held))
                })
                .collect();
            Some((base, len, held?))
        });
        if let Some((base, len, held)) = edit {
            let mut changed: Vec<Changed<S::Id, V>> = Vec::with_capacity(groups.len());
            for ((comp, own, below), (found, held)) in groups.into_iter().zip(held) {
                let slot = self.node(&comp, found, own, below, prefix, depth)?;
                changed.push((comp, held, slot));
            }
            return Ok(DirOutcome {
                self_file: listing.self_file,
                slots: Vec::new(),
                single: None,
                unmapped: Vec::new(),
                edit: Some(edit_of(base, len, changed)),
            });
        }
        let mut children = listing.decode()?;
        let mut slots: Vec<(Component, Slot<S::Id, V>)> = Vec::new();
        for (comp, own, below) in groups {
            let found = children.remove(&comp).unwrap_or_default();
            if let Some(slot) = self.node(&comp, found, own, below, prefix, depth)? {
                slots.push((comp, slot));
            }
        }
        for (comp, found) in children {
            if let Some(slot) = self.node(&comp, found, None, &mut [], prefix, depth)? {
                slots.push((comp, slot));
            }
        }
        Ok(DirOutcome {
            self_file: listing.self_file,
            slots,
            single: listing.single,
            unmapped: listing.unmapped,
            edit: None,
        })
    }

    /// The new slot of component `comp` of the directory at `prefix`.
    fn node<V>(
        &mut self,
        comp: &Component,
        found: Found<S::Id>,
        own: Option<Option<V>>,
        below: &mut [Change<V>],
        prefix: &mut Vec<u8>,
        depth: usize,
    ) -> SlotPlanned<S, V> {
        let Found { file, mut dirs } = found;
        // A directory is opened only if something inside it changes, its `%self` must be
        // set or removed, or a lenient tree spreads this component over several entries.
        let open = !below.is_empty()
            || (!dirs.is_empty() && (own.is_some() || file.is_some() || dirs.len() > 1));
        if !open {
            if let Some(dir) = dirs.pop() {
                return Ok(Some(Slot::Opaque(dir.id)));
            }
            let value = apply(file.map(|f| Content::Existing(f.id)), own);
            return Ok(value.map(Slot::File));
        }
        let node_key_len = prefix.len() + comp.raw.len();
        extend_dir_prefix(prefix, comp);
        let inner = self.dir(&dirs, DirKind::of(comp), prefix, below, depth + 1);
        let node_key = prefix[..node_key_len].to_vec();
        prefix.truncate(node_key_len - comp.raw.len());
        let inner = inner?;
        let had_self = inner.self_file.as_ref().map(|s| s.id.clone());
        let stored = match (file, inner.self_file) {
            (Some(f), Some(s)) => return Err(duplicate(&node_key, &f, &s).into()),
            (f, s) => f.or(s).map(|src| Content::Existing(src.id)),
        };
        let value = apply(stored, own);
        if let Some(edit) = inner.edit {
            return Ok(edited(edit, value, had_self));
        }
        let children = assemble_with(inner.slots, inner.unmapped);
        let slot = place(value, children);
        // Keeping an unchanged directory as the same object makes no-op changes write nothing.
        if let (Some(Slot::Dir(plan)), Some(listed), [dir]) = (&slot, &inner.single, &dirs[..]) {
            if same_as_listed(plan, listed) {
                return Ok(Some(Slot::Opaque(dir.id.clone())));
            }
        }
        Ok(slot)
    }
}

/// The tree of `listing` and its number of entries, when the directory can be written as
/// an edit of it: it was read by name (one tree whose every name is its component's only
/// spelling), so changing some entries renames none of the others.
fn editable<Id: Clone>(listing: &DirListing<Id>, dirs: &[Src<Id>]) -> Option<(Id, usize)> {
    match (dirs, listing.lone_entries()) {
        ([dir], Some(listed)) => Some((dir.id.clone(), listed)),
        _ => None,
    }
}

/// The edit of `base` (holding `len` entries) that the changed components make; each one's
/// name is its raw bytes (checked lone by the caller).
fn edit_of<Id: Eq, V>(base: Id, mut len: usize, changed: Vec<Changed<Id, V>>) -> Edit<Id, V> {
    let mut entries = Vec::new();
    let mut removed = Vec::new();
    for (comp, held, slot) in changed {
        let name = String::from_utf8_lossy(&comp.raw).into_owned();
        match (held, slot) {
            (None, None) => {}
            (Some(_), None) => {
                len -= 1;
                removed.push(name);
            }
            (held, Some(slot)) => {
                let entry = slot.into_entry();
                match held {
                    None => len += 1,
                    Some((kind, id)) if is_existing(&entry, kind, &id) => continue,
                    Some(_) => {}
                }
                entries.push((name, entry));
            }
        }
    }
    Edit {
        base,
        entries,
        removed,
        len,
    }
}

fn is_existing<Id: Eq, V>(entry: &PlanEntry<Id, V>, kind: EntryKind, id: &Id) -> bool {
    matches!(entry, PlanEntry::Existing { kind: k, id: i } if *k == kind && i == id)
}

/// The slot of a node whose directory is written as `edit`, its own value (`%self`) now
/// `value`; kept as the same tree when nothing in it changes.
fn edited<Id: Eq, V>(
    mut edit: Edit<Id, V>,
    value: Option<Content<Id, V>>,
    had_self: Option<Id>,
) -> Option<Slot<Id, V>> {
    // Without children the node is its value alone, as `place` makes it: a file or nothing.
    if edit.len == usize::from(had_self.is_some()) {
        return place(value, None);
    }
    match (value, had_self) {
        (None, None) => {}
        (None, Some(_)) => {
            edit.len -= 1;
            edit.removed.push(SELF_NAME.to_string());
        }
        (Some(Content::Existing(id)), Some(old)) if id == old => {}
        (Some(value), had) => {
            edit.len += usize::from(had.is_none());
            edit.entries
                .push((SELF_NAME.to_string(), value.into_entry()));
        }
    }
    if edit.entries.is_empty() && edit.removed.is_empty() {
        return Some(Slot::Opaque(edit.base));
    }
    Some(Slot::Dir(edit.into_plan()))
}

fn apply<Id, V>(stored: Option<Content<Id, V>>, op: Option<Option<V>>) -> Option<Content<Id, V>> {
    match op {
        None => stored,
        Some(put) => put.map(Content::New),
    }
}

fn same_as_listed<Id: Eq, V>(plan: &DirPlan<Id, V>, listed: &[ListedEntry<Id>]) -> bool {
    if plan.entries.len() != listed.len() {
        return false;
    }
    let by_name: HashMap<&str, &ListedEntry<Id>> =
        listed.iter().map(|e| (e.name.as_str(), e)).collect();
    plan.entries.iter().all(|(name, entry)| match entry {
        PlanEntry::Existing { kind, id } => by_name
            .get(name.as_str())
            .is_some_and(|l| l.kind == *kind && l.id == *id),
        _ => false,
    })
}

//! Applying a batch of key changes to an existing area tree: only the directories on the
//! paths of changed keys are listed and rebuilt; everything else is carried by id.

use std::collections::HashMap;

use super::assemble::{assemble, place, Content, Slot};
use super::component::{
    component_at, extend_dir_prefix, group_len, seq_cmp, spans, Component, Span,
};
use super::error::PlanError;
use super::listing::{duplicate, read_dir, DirKind, Found, Src};
use super::lookup::Locator;
use crate::tree::{DirPlan, ListedEntry, PlanEntry, TreeSource};

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
}

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
) -> Result<Option<DirPlan<S::Id, V>>, PlanError<S::Error>> {
    plan_changes_with(source, base, changes, &mut Locator::default())
}

/// [`plan_changes`] taking the directories `listed` already holds for `base` (from
/// [`lookup`](super::lookup) calls in the same tree) instead of listing them again.
pub fn plan_changes_with<S: TreeSource, V>(
    source: &S,
    base: Option<&S::Id>,
    changes: impl IntoIterator<Item = (Vec<u8>, Option<V>)>,
    listed: &mut Locator<S::Id>,
) -> Result<Option<DirPlan<S::Id, V>>, PlanError<S::Error>> {
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
        let listing = match self.listed.take(self.base, prefix, dirs) {
            Some(listing) => listing,
            None => read_dir(self.source, dirs, prefix, kind)?,
        };
        let mut children = listing.children;
        let mut slots = Vec::new();
        let mut rest = changes;
        while !rest.is_empty() {
            let n = group_len(rest, |c| (&c.key[..], c.spans[depth]));
            let (group, tail) = std::mem::take(&mut rest).split_at_mut(n);
            rest = tail;
            let comp = component_at(&group[0].key, group[0].spans[depth]);
            let found = children.remove(&comp).unwrap_or_default();
            // Keys are unique, so at most one change ends here, and it sorts first.
            let ends = group
                .iter()
                .take_while(|c| c.spans.len() == depth + 1)
                .count();
            let (own, below) = group.split_at_mut(ends);
            let own = own.iter_mut().find_map(|c| c.op.take());
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
    ) -> Result<Option<Slot<S::Id, V>>, PlanError<S::Error>> {
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
        let stored = match (file, inner.self_file) {
            (Some(f), Some(s)) => return Err(duplicate(&node_key, &f, &s).into()),
            (f, s) => f.or(s).map(|src| Content::Existing(src.id)),
        };
        let value = apply(stored, own);
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

//! Turning the nodes of one directory into a `DirPlan`: the single placement and naming
//! step shared by `layout_all` and `plan_changes`, so both produce the same tree.

use super::component::Component;
use super::name::{dir_names, SELF_NAME};
use crate::tree::{DirPlan, EntryKind, PlanEntry};

/// A value's content: an existing blob, or new bytes.
pub(crate) enum Content<Id, V> {
    Existing(Id),
    New(V),
}

impl<Id, V> Content<Id, V> {
    pub(crate) fn into_entry(self) -> PlanEntry<Id, V> {
        match self {
            Content::Existing(id) => PlanEntry::Existing {
                kind: EntryKind::File,
                id,
            },
            Content::New(v) => PlanEntry::File(v),
        }
    }
}

/// What one component of a directory holds.
pub(crate) enum Slot<Id, V> {
    /// A value and no children.
    File(Content<Id, V>),
    /// Children (never empty), with the component's own value as `%self` if it has one.
    Dir(DirPlan<Id, V>),
    /// An existing directory kept unopened (possibly under a new name).
    Opaque(Id),
}

impl<Id, V> Slot<Id, V> {
    /// The entry holding this slot in its directory.
    pub(crate) fn into_entry(self) -> PlanEntry<Id, V> {
        match self {
            Slot::File(content) => content.into_entry(),
            Slot::Dir(dir) => PlanEntry::Dir(dir),
            Slot::Opaque(id) => PlanEntry::Existing {
                kind: EntryKind::Dir,
                id,
            },
        }
    }
}

/// The slot of a node from its value and children; None when it holds nothing.
pub(crate) fn place<Id, V>(
    value: Option<Content<Id, V>>,
    children: Option<DirPlan<Id, V>>,
) -> Option<Slot<Id, V>> {
    match (value, children) {
        (None, None) => None,
        (Some(v), None) => Some(Slot::File(v)),
        (value, Some(mut dir)) => {
            if let Some(v) = value {
                dir.entries.push((SELF_NAME.to_string(), v.into_entry()));
            }
            Some(Slot::Dir(dir))
        }
    }
}

/// The directory holding these (distinct) components.
pub(crate) fn assemble<Id, V>(slots: Vec<(Component, Slot<Id, V>)>) -> DirPlan<Id, V> {
    let names = dir_names(&slots.iter().map(|(c, _)| c).collect::<Vec<_>>());
    let entries = names
        .into_iter()
        .zip(slots)
        .map(|(name, (_, slot))| (name, slot.into_entry()))
        .collect();
    DirPlan::new(entries)
}

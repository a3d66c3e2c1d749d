//! The shape of a directory as the mapper plans it and gitstore writes it, generic over the
//! object id so sync-core stays free of Git: `TreeSource` reads trees, `DirPlan` is the new tree.

/// File or directory, as Git trees know them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    File,
    Dir,
}

/// One entry of an existing tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedEntry<Id> {
    pub name: String,
    pub kind: EntryKind,
    pub id: Id,
}

/// Read access to existing trees (gitstore implements it over a bare repository).
pub trait TreeSource {
    type Id: Clone + Eq + std::fmt::Debug;
    type Error: std::error::Error + Send + Sync + 'static;

    /// The entries of the tree `id`, in any order.
    fn list(&self, id: &Self::Id) -> Result<Vec<ListedEntry<Self::Id>>, Self::Error>;
}

/// The content of one entry of a planned directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanEntry<Id, V> {
    /// An object that already exists (a kept or moved file or subtree): written as is.
    Existing { kind: EntryKind, id: Id },
    /// A new file with this content.
    File(V),
    /// A new or changed directory.
    Dir(DirPlan<Id, V>),
}

/// A directory to write: entry names are unique, in any order (the writer sorts them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirPlan<Id, V> {
    pub entries: Vec<(String, PlanEntry<Id, V>)>,
}

impl<Id, V> Default for DirPlan<Id, V> {
    fn default() -> Self {
        DirPlan {
            entries: Vec::new(),
        }
    }
}

impl<Id, V> DirPlan<Id, V> {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

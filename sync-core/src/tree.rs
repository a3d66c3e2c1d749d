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

/// Git's tree order: byte order, where a directory's name compares as if it ended in `/`.
pub fn canonical_cmp(a: &[u8], a_dir: bool, b: &[u8], b_dir: bool) -> std::cmp::Ordering {
    let common = a.len().min(b.len());
    match a[..common].cmp(&b[..common]) {
        std::cmp::Ordering::Equal => {
            let tail = |name: &[u8], dir: bool| name.get(common).copied().or(dir.then_some(b'/'));
            tail(a, a_dir).cmp(&tail(b, b_dir))
        }
        other => other,
    }
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
    /// `Some`: the directory is an edit of an existing tree, and `entries` only the entries
    /// that change; see [`TreeEdit`].
    pub edit: Option<TreeEdit<Id>>,
}

/// An edit of the existing tree `base`: the directory is `base` with each entry of the
/// plan put in place of `base`'s entry of the same name (or added), the `removed` names
/// taken out, and every other entry kept as it is (a regular file or a directory). The
/// planner makes one only where no other name can change, so a large directory of which
/// a few entries change is written without naming all the others again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEdit<Id> {
    pub base: Id,
    pub removed: Vec<String>,
}

impl<Id, V> Default for DirPlan<Id, V> {
    fn default() -> Self {
        DirPlan::new(Vec::new())
    }
}

impl<Id, V> DirPlan<Id, V> {
    /// A whole directory of these entries.
    pub fn new(entries: Vec<(String, PlanEntry<Id, V>)>) -> Self {
        DirPlan {
            entries,
            edit: None,
        }
    }

    /// A whole directory without entries (an edit always keeps or adds one).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.edit.is_none()
    }
}

//! File-level diff of two trees: recursion stops at subtrees with equal ids, so the cost
//! follows the size of the change, not of the tree.

use std::cmp::Ordering;

use gix::ObjectId;
use sync_core::tree::EntryKind;

use crate::refs::show;
use crate::trees::{join, list, Item, TreeReadError};
use crate::GitStore;

/// One file that differs: added (`old` None), deleted (`new` None) or changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    /// '/'-separated, relative to the compared trees.
    pub path: String,
    /// The blob before; `None` if the file was added.
    pub old: Option<ObjectId>,
    /// The blob after; `None` if the file was deleted.
    pub new: Option<ObjectId>,
}

/// Why two trees could not be compared.
#[derive(Debug, thiserror::Error)]
#[error("diff {} -> {}", show(.old), show(.new))]
pub struct DiffError {
    pub old: Option<ObjectId>,
    pub new: Option<ObjectId>,
    #[source]
    pub source: TreeReadError,
}

impl GitStore {
    /// Every file that differs between trees `old` and `new` (`None` = no tree), sorted by path.
    pub fn diff_files(
        &self,
        old: Option<ObjectId>,
        new: Option<ObjectId>,
    ) -> Result<Vec<FileChange>, DiffError> {
        let mut walk = Walk {
            repo: self.repo(),
            buf: Vec::new(),
            out: Vec::new(),
        };
        walk.dirs("", old, new)
            .map_err(|source| DiffError { old, new, source })?;
        let mut out = walk.out;
        out.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }
}

struct Walk {
    repo: gix::Repository,
    buf: Vec<u8>,
    out: Vec<FileChange>,
}

impl Walk {
    fn items(&mut self, tree: Option<ObjectId>, dir: &str) -> Result<Vec<Item>, TreeReadError> {
        let Some(id) = tree else {
            return Ok(Vec::new());
        };
        let mut items = list(&self.repo, id, dir, &mut self.buf)?;
        items.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        Ok(items)
    }

    fn dirs(
        &mut self,
        dir: &str,
        old: Option<ObjectId>,
        new: Option<ObjectId>,
    ) -> Result<(), TreeReadError> {
        if old == new {
            return Ok(());
        }
        let olds = self.items(old, dir)?;
        let news = self.items(new, dir)?;
        let (mut o, mut n) = (olds.into_iter().peekable(), news.into_iter().peekable());
        loop {
            let order = match (o.peek(), n.peek()) {
                (None, None) => return Ok(()),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(a), Some(b)) => a.name.cmp(&b.name),
            };
            let (a, b) = match order {
                Ordering::Less => (o.next(), None),
                Ordering::Greater => (None, n.next()),
                Ordering::Equal => (o.next(), n.next()),
            };
            let name = a
                .as_ref()
                .or(b.as_ref())
                .map(|i| i.name.clone())
                .unwrap_or_default();
            self.entry(&join(dir, &name), a, b)?;
        }
    }

    /// Compares one name present on at least one side.
    fn entry(
        &mut self,
        path: &str,
        old: Option<Item>,
        new: Option<Item>,
    ) -> Result<(), TreeReadError> {
        let split = |item: Option<Item>| match item {
            Some(Item {
                kind: EntryKind::File,
                id,
                ..
            }) => (Some(id), None),
            Some(Item {
                kind: EntryKind::Dir,
                id,
                ..
            }) => (None, Some(id)),
            None => (None, None),
        };
        let (old_file, old_dir) = split(old);
        let (new_file, new_dir) = split(new);
        if old_file != new_file {
            self.out.push(FileChange {
                path: path.to_owned(),
                old: old_file,
                new: new_file,
            });
        }
        self.dirs(path, old_dir, new_dir)
    }
}

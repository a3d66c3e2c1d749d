//! Checking that a commit stays inside its areas: the first path at which two root trees
//! differ outside a set of directories, descending only into subtrees whose ids differ.

use std::collections::HashMap;

use gix::objs::tree::EntryMode;
use gix::objs::Kind;
use gix::ObjectId;

use crate::objects::read_kind;
use crate::treefmt;
use crate::trees::{components, join, TreeReadError};

/// An area directory split into its components (`state/t` -> `["state", "t"]`).
pub(crate) type AreaPath<'a> = Vec<&'a str>;

/// Splits an area directory into components; `Err(reason)` for the root or an invalid name.
pub(crate) fn parse_area(dir: &str) -> Result<AreaPath<'_>, String> {
    let parts: AreaPath<'_> = components(dir).collect();
    if parts.is_empty() {
        return Err("an area must be a directory below the root".into());
    }
    for name in &parts {
        if let Some(reason) = treefmt::invalid_name(name.as_bytes()) {
            return Err(format!("{name:?}: {reason}"));
        }
    }
    Ok(parts)
}

/// The first path (in name order) at which trees `old` and `new` (`None` = no tree) differ
/// outside the `areas`; `None` when every difference (content, mode or kind) is inside them.
/// A path below an area reports the entry or file that changed, not the area's parent.
pub(crate) fn first_outside(
    repo: &gix::Repository,
    old: Option<ObjectId>,
    new: Option<ObjectId>,
    areas: &[AreaPath<'_>],
) -> Result<Option<String>, TreeReadError> {
    let areas: Vec<&[&str]> = areas.iter().map(Vec::as_slice).collect();
    Walk {
        repo,
        buf: Vec::new(),
    }
    .dir("", old, new, &areas)
}

struct Walk<'r> {
    repo: &'r gix::Repository,
    buf: Vec<u8>,
}

impl Walk<'_> {
    /// `areas` are relative to `dir`; an empty one covers `dir` entirely.
    fn dir(
        &mut self,
        dir: &str,
        old: Option<ObjectId>,
        new: Option<ObjectId>,
        areas: &[&[&str]],
    ) -> Result<Option<String>, TreeReadError> {
        if old == new || areas.iter().any(|a| a.is_empty()) {
            return Ok(None);
        }
        let olds = self.entries(old)?;
        let mut news = self.entries(new)?;
        let mut changed: Vec<(Vec<u8>, Option<Raw>, Option<Raw>)> = Vec::new();
        for (name, o) in olds {
            let n = news.remove(&name);
            if n != Some(o) {
                changed.push((name, Some(o), n));
            }
        }
        changed.extend(news.into_iter().map(|(name, n)| (name, None, Some(n))));
        changed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (name, o, n) in changed {
            let path = join(dir, &String::from_utf8_lossy(&name));
            let below: Vec<&[&str]> = areas
                .iter()
                .filter(|a| a[0].as_bytes() == name.as_slice())
                .map(|a| &a[1..])
                .collect();
            let found = match (as_dir(o), as_dir(n)) {
                // Directories on both sides (or absent): look inside.
                (Some(o), Some(n)) => self.dir(&path, o, n, &below)?,
                // A file, link or submodule changed here: fine only if this is an area itself.
                _ if below.iter().any(|a| a.is_empty()) => None,
                _ => Some(path),
            };
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    fn entries(&mut self, tree: Option<ObjectId>) -> Result<HashMap<Vec<u8>, Raw>, TreeReadError> {
        let Some(id) = tree else {
            return Ok(HashMap::new());
        };
        let data = read_kind(self.repo, id, Kind::Tree, &mut self.buf)?;
        gix::objs::TreeRefIter::from_bytes(data, gix::hash::Kind::Sha1)
            .map(|entry| {
                let entry = entry.map_err(|source| TreeReadError::Decode { tree: id, source })?;
                let raw = Raw {
                    mode: entry.mode,
                    id: entry.oid.to_owned(),
                };
                Ok((entry.filename.to_vec(), raw))
            })
            .collect()
    }
}

/// One side of an entry: mode and id, compared as git compares them.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Raw {
    mode: EntryMode,
    id: ObjectId,
}

/// `Some(tree)` for a directory, `Some(None)` for no entry, `None` for anything else.
fn as_dir(entry: Option<Raw>) -> Option<Option<ObjectId>> {
    match entry {
        None => Some(None),
        Some(raw) if raw.mode.is_tree() => Some(Some(raw.id)),
        Some(_) => None,
    }
}

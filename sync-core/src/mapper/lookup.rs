//! Finding the file that holds one key's value in an existing area tree, by decoded
//! component (so tags and `%self` are handled), listing each directory at most once.

use std::collections::hash_map::{Entry, HashMap};

use super::component::{component_at, extend_dir_prefix, first_span, spans, Component};
use super::error::PlanError;
use super::listing::{duplicate, read_dir, DirKind, DirListing, Found, Src};
use crate::tree::TreeSource;

/// A cache for `lookup`: every directory listed so far (by key prefix), so many lookups in
/// one large directory list it once. It belongs to one tree: used with another `base`, it
/// forgets what it holds.
pub struct Locator<Id> {
    base: Option<Id>,
    /// Each listing with the ids of the trees it was read from.
    dirs: HashMap<Vec<u8>, (Vec<Id>, DirListing<Id>)>,
    /// The directory the last key was found in: a sorted batch looks many keys up in one
    /// directory in a row, and the way down to it is the same for each.
    last_dir: Option<LastDir<Id>>,
    /// A key prefix ending in `/` whose directory the last walk found missing: the keys of a
    /// new directory come in a row too, and each would search the listings above it again.
    absent_dir: Option<Vec<u8>>,
}

/// A directory of whole segments (key prefix ending in `/`) and where it is stored.
struct LastDir<Id> {
    prefix: Vec<u8>,
    kind: DirKind,
    dirs: Vec<Src<Id>>,
}

impl<Id> Default for Locator<Id> {
    fn default() -> Self {
        Locator {
            base: None,
            dirs: HashMap::new(),
            last_dir: None,
            absent_dir: None,
        }
    }
}

/// The id of the file holding relative key `rel`'s value in the area tree `base` (None:
/// empty area); None if the key is absent.
pub fn lookup<S: TreeSource>(
    source: &S,
    base: Option<&S::Id>,
    rel: &[u8],
    cache: &mut Locator<S::Id>,
) -> Result<Option<S::Id>, PlanError<S::Error>> {
    let Some(base) = base else {
        return Ok(None);
    };
    if cache.base.as_ref() != Some(base) {
        cache.dirs.clear();
        cache.last_dir = None;
        cache.absent_dir = None;
        cache.base = Some(base.clone());
    }
    // The components up to a `/` are those of the bytes before it, so a key below a
    // directory the last walk found missing stops at the same step, finding nothing.
    if let Some(absent) = &cache.absent_dir {
        if rel.starts_with(absent) {
            return Ok(None);
        }
        cache.absent_dir = None;
    }
    if let Some(last) = cache.last_dir.take() {
        // The same directory as the last key, and a last component of one whole segment.
        if let Some(rest) = rel.strip_prefix(&last.prefix[..]) {
            let span = first_span(rest);
            if span.end == rest.len() && !span.continues {
                let comp = component_at(rest, span);
                let found = leaf(source, cache, &last.prefix, last.kind, &last.dirs, &comp);
                cache.last_dir = Some(last);
                return found;
            }
        }
    }
    let mut dirs = vec![Src {
        id: base.clone(),
        path: String::new(),
    }];
    let mut kind = DirKind::Root;
    let mut prefix = Vec::new();
    let spans = spans(rel);
    for (i, &span) in spans.iter().enumerate() {
        let comp = component_at(rel, span);
        if i + 1 == spans.len() {
            let found = leaf(source, cache, &prefix, kind, &dirs, &comp);
            if prefix.last() == Some(&b'/') {
                cache.last_dir = Some(LastDir { prefix, kind, dirs });
            }
            return found;
        }
        let Found { dirs: below, .. } = cache.listing(source, &prefix, kind, &dirs)?.find(&comp);
        if below.is_empty() {
            // No directory `comp` here (at most a file): nothing below it either. A whole
            // segment ends at a `/`, and every key under that prefix ends here too.
            if !span.continues {
                cache.absent_dir = Some(rel[..=span.end].to_vec());
            }
            return Ok(None);
        }
        extend_dir_prefix(&mut prefix, &comp);
        kind = DirKind::of(&comp);
        dirs = below;
    }
    Ok(None)
}

/// The last component `comp` of a key, in the directory at `prefix` stored in `dirs`: its
/// value is its file, or `%self` in its directory.
fn leaf<S: TreeSource>(
    source: &S,
    cache: &mut Locator<S::Id>,
    prefix: &[u8],
    kind: DirKind,
    dirs: &[Src<S::Id>],
    comp: &Component,
) -> Result<Option<S::Id>, PlanError<S::Error>> {
    let Found { file, dirs: below } = cache.listing(source, prefix, kind, dirs)?.find(comp);
    if file.is_none() && below.is_empty() {
        return Ok(None);
    }
    let self_file = if below.is_empty() {
        None
    } else {
        let mut below_prefix = prefix.to_vec();
        extend_dir_prefix(&mut below_prefix, comp);
        cache
            .listing(source, &below_prefix, DirKind::of(comp), &below)?
            .self_file
            .clone()
    };
    match (file, self_file) {
        (Some(f), Some(s)) => {
            let node_key_len = prefix.len() + comp.raw.len();
            let mut key = prefix.to_vec();
            key.extend_from_slice(&comp.raw);
            Err(duplicate(&key[..node_key_len], &f, &s).into())
        }
        (f, s) => Ok(f.or(s).map(|src| src.id)),
    }
}

impl<Id: Clone + PartialEq> Locator<Id> {
    fn listing<S: TreeSource<Id = Id>>(
        &mut self,
        source: &S,
        prefix: &[u8],
        kind: DirKind,
        dirs: &[Src<Id>],
    ) -> Result<&DirListing<Id>, PlanError<S::Error>> {
        match self.dirs.entry(prefix.to_vec()) {
            Entry::Occupied(e) => Ok(&e.into_mut().1),
            Entry::Vacant(e) => {
                let listing = read_dir(source, dirs, prefix, kind)?;
                let ids = dirs.iter().map(|d| d.id.clone()).collect();
                Ok(&e.insert((ids, listing)).1)
            }
        }
    }

    /// Hands over the listing of the directory at `prefix` read from exactly the trees
    /// `dirs` of `base`, if it was read: planning changes to the tree the lookups were
    /// made in then lists each directory once, not twice.
    pub(crate) fn take(
        &mut self,
        base: Option<&Id>,
        prefix: &[u8],
        dirs: &[Src<Id>],
    ) -> Option<DirListing<Id>> {
        if base.is_none() || self.base.as_ref() != base {
            return None;
        }
        let (ids, _) = self.dirs.get(prefix)?;
        let same = ids.len() == dirs.len() && ids.iter().zip(dirs).all(|(a, d)| *a == d.id);
        if !same {
            return None;
        }
        self.dirs.remove(prefix).map(|(_, listing)| listing)
    }
}

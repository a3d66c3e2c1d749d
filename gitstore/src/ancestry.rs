//! Ancestry of commits: the best common ancestor of two commits (gix's merge-base, a
//! date- and generation-ordered paint-down) and the "is an ancestor of" test built on it.

use gix::ObjectId;

use crate::GitStore;

/// Why the common ancestor of two commits could not be found.
#[derive(Debug, thiserror::Error)]
#[error("merge base of {a} and {b}: history walk failed")]
pub struct MergeBaseError {
    pub a: ObjectId,
    pub b: ObjectId,
    #[source]
    pub source: gix::Error,
}

impl GitStore {
    /// The best common ancestor of commits `a` and `b` (`git merge-base a b`), `None` when
    /// their histories are unrelated. Both commits must exist. The walk goes from both tips
    /// towards the base in date (or commit-graph generation) order and stops there.
    pub fn merge_base(&self, a: ObjectId, b: ObjectId) -> Result<Option<ObjectId>, MergeBaseError> {
        merge_base(&mut self.repo(), a, b)
    }

    /// Whether `a` is an ancestor of `b` or `b` itself (`git merge-base --is-ancestor a b`):
    /// moving a branch from `a` to `b` is then a fast-forward.
    pub fn is_ancestor(&self, a: ObjectId, b: ObjectId) -> Result<bool, MergeBaseError> {
        Ok(self.merge_base(a, b)? == Some(a))
    }
}

/// [`GitStore::merge_base`] on a repository view the caller already holds.
pub(crate) fn merge_base(
    repo: &mut gix::Repository,
    a: ObjectId,
    b: ObjectId,
) -> Result<Option<ObjectId>, MergeBaseError> {
    // Every commit of the walk is read once per side; a cache spares inflating it twice.
    repo.object_cache_size_if_unset(4 * 1024 * 1024);
    let base = repo
        .merge_base(a, b)
        .map_err(|source| MergeBaseError { a, b, source })?;
    Ok(base.map(|id| id.detach()))
}

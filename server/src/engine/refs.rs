//! The names of the refs the server keeps beside the branch: one checkpoint per area under
//! gitstore's `refs/kvgit/` namespace, and the fetched copy of the remote's. The branch's own
//! name is `GitStore::branch_ref`.

/// `refs/kvgit/checkpoints/<area>`: the area's checkpoint (see `checkpoint`).
pub fn checkpoint_ref(area: &str) -> String {
    format!("{}checkpoints/{area}", gitstore::META_REFS)
}

/// `refs/remotes/kvgit-meta/checkpoints/<area>`: the remote's checkpoint as of the last
/// fetch or push.
pub fn remote_checkpoint_ref(area: &str) -> String {
    gitstore::meta_tracking_ref(&checkpoint_ref(area))
        .expect("a checkpoint ref is under gitstore::META_REFS")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names are part of the contract with remotes (SPEC: checkpoint refs).
    #[test]
    fn checkpoint_ref_names() {
        assert_eq!(checkpoint_ref("app"), "refs/kvgit/checkpoints/app");
        assert_eq!(
            remote_checkpoint_ref("app"),
            "refs/remotes/kvgit-meta/checkpoints/app"
        );
    }
}

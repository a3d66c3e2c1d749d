//! kvgit KvBackend on Consul: not built yet (issue 4).
//! The crate exists so the workspace has its final shape.

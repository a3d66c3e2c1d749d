//! kvgit KvBackend on etcd (in progress).

//! Shared test support: a real etcd started per test binary (`etcd`) and the one backend
//! conformance suite (`conformance`) that every `KvBackend` implementation runs.

pub mod bench;
pub mod browser;
pub mod certs;
pub mod conformance;
pub mod consul;
pub mod consul_api;
pub mod etcd;
pub mod git_http;
pub mod kvgit;
pub mod multinode;
pub mod prometheus;
pub mod serve;
pub mod sshd;

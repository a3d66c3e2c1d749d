//! Shared setup of the engine's in-process tests: a config and repository in a temp dir,
//! on `MemoryBackend`, and a plain put.

use super::Context;
use std::path::Path;
use std::sync::Arc;
use sync_core::{Key, KvBackend, MemoryBackend, Precondition, TxnOutcome, WriteOp};

/// Writes `value` at `key`, whatever was there.
pub(crate) async fn put(backend: &MemoryBackend, key: &str, value: &str) {
    let op = WriteOp::Put {
        key: Key(key.as_bytes().to_vec()),
        value: value.as_bytes().to_vec(),
        expect: Precondition::Any,
    };
    match backend.write(&[op]).await {
        Ok(TxnOutcome::Committed { .. }) => {}
        other => panic!("put {key}: {other:?}"),
    }
}

/// Deletes every key of `keys` in one write, whatever was there (a store losing keys
/// behind kvgit's back).
pub(crate) async fn delete_all(backend: &MemoryBackend, keys: impl IntoIterator<Item = String>) {
    let ops: Vec<WriteOp> = keys
        .into_iter()
        .map(|key| WriteOp::Delete {
            key: Key(key.into_bytes()),
            expect: Precondition::Any,
        })
        .collect();
    match backend.write(&ops).await {
        Ok(TxnOutcome::Committed { .. }) => {}
        other => panic!("delete {} keys: {other:?}", ops.len()),
    }
}

/// A context on a new `MemoryBackend` and a new repository in `dir`, with one `both` area per
/// name: prefix `/name/`, path `name`.
pub(crate) async fn context(dir: &Path, areas: &[&str]) -> (Context, MemoryBackend) {
    let mut toml = String::from("[git]\nrepo = \"state.git\"\n[sync]\nnode = \"n1\"\n");
    for name in areas {
        toml.push_str(&format!(
            "[[area]]\nname = \"{name}\"\nprefix = \"/{name}/\"\npath = \"{name}\"\nmode = \"both\"\n"
        ));
    }
    let file = dir.join("kvgit.toml");
    std::fs::write(&file, toml).expect("config");
    let cfg = crate::config::load(&file).unwrap_or_else(|e| panic!("config: {e}"));
    let backend = MemoryBackend::new();
    let ctx = Context::connect(cfg)
        .await
        .expect("open the repository")
        .with_backend(Arc::new(backend.clone()));
    (ctx, backend)
}

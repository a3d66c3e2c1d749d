//! The one-shot engine behind the CLI verbs: reading the three sides of an area (live,
//! base, desired), deciding by the sync rule, and writing Git or the KV store.

pub mod apply;
pub mod changes;
pub mod checkpoint;
pub mod decide;
pub mod documents;
pub mod export;
pub mod fmt;
pub mod git;
pub mod log;
pub mod message;
pub mod refs;
pub mod report;
mod ser;
pub mod status;
#[cfg(test)]
pub(crate) mod testkit;
pub mod validate;
pub mod view;
pub mod writer;

use crate::config::{BackendConfig, Config};
use backend_consul::ConsulBackend;
use backend_etcd::EtcdBackend;
use gitstore::{Author, GitStore};
use std::path::PathBuf;
use std::sync::Arc;
use sync_core::KvBackend;
use tokio::sync::OnceCell;
use tokio_util::task::AbortOnDropHandle;

pub use git::GitError;

/// Why the repository could not be opened, or the backend not connected: each names the
/// setting to look at.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("git.repo {}", .repo.display())]
    Repo {
        repo: PathBuf,
        #[source]
        source: gitstore::OpenError,
    },
    #[error("git task panicked")]
    Panicked(#[source] tokio::task::JoinError),
    #[error("the task connecting to the backend panicked")]
    ConnectPanicked(#[source] tokio::task::JoinError),
    #[error("backend.endpoints {endpoints}")]
    Etcd {
        endpoints: String,
        #[source]
        source: backend_etcd::ConnectError,
    },
    #[error("backend.endpoints {endpoints}")]
    Consul {
        endpoints: String,
        #[source]
        source: backend_consul::ConnectError,
    },
}

impl ConnectError {
    /// Worth retrying later: the backend did not answer yet (the rest needs a config change).
    pub fn is_retryable(&self) -> bool {
        match self {
            ConnectError::Etcd { source, .. } => source.is_retryable(),
            ConnectError::Consul { source, .. } => source.is_retryable(),
            ConnectError::Repo { .. }
            | ConnectError::Panicked(_)
            | ConnectError::ConnectPanicked(_) => false,
        }
    }
}

/// A backend connection under way; dropping it stops the attempt.
type Connecting = AbortOnDropHandle<Result<Arc<dyn KvBackend>, ConnectError>>;

/// What every verb works with: the config, the repository, and (on first use) the backend.
pub struct Context {
    pub cfg: Config,
    git: Arc<GitStore>,
    /// Connected lazily so Git-only verbs (`log`) work while the backend is down.
    backend: OnceCell<Arc<dyn KvBackend>>,
    /// The connection [`Context::connect_both`] started while the repository opened: the
    /// first [`Context::backend`] call takes its outcome.
    early: std::sync::Mutex<Option<Connecting>>,
}

impl Context {
    /// Opens the repository; the backend connects on first use.
    pub async fn connect(cfg: Config) -> Result<Context, ConnectError> {
        Context::open(cfg, None).await
    }

    /// Opens the repository while the backend connects, for verbs that need both: a one-shot
    /// command would otherwise wait for one, then the other (~1 ms each here).
    pub async fn connect_both(cfg: Config) -> Result<Context, ConnectError> {
        let backend = cfg.backend.clone();
        let early =
            AbortOnDropHandle::new(tokio::spawn(async move { connect_backend(&backend).await }));
        Context::open(cfg, Some(early)).await
    }

    async fn open(cfg: Config, early: Option<Connecting>) -> Result<Context, ConnectError> {
        let repo = cfg.git.repo.clone();
        let branch = cfg.git.branch.clone();
        let timeout = cfg.git.timeout;
        let auth = cfg.git.remote_auth.clone();
        let sign_key = cfg.git.sign_key.clone();
        let git = tokio::task::spawn_blocking(move || {
            GitStore::open_or_init(&repo, &branch).map(|g| {
                let g = g.with_network_timeout(timeout);
                let g = match sign_key {
                    Some(key) => g.with_signing_key(key),
                    None => g,
                };
                match auth {
                    Some(auth) => g.with_remote_auth(auth),
                    None => g,
                }
            })
        })
        .await
        .map_err(ConnectError::Panicked)?
        .map_err(|source| ConnectError::Repo {
            repo: cfg.git.repo.clone(),
            source,
        })?;
        Ok(Context {
            cfg,
            git: Arc::new(git),
            backend: OnceCell::new(),
            early: std::sync::Mutex::new(early),
        })
    }

    /// This context with `backend` already connected (in-process tests hand a
    /// `MemoryBackend` in; the config's `[backend]` is then not used).
    #[cfg(test)]
    pub fn with_backend(self, backend: Arc<dyn KvBackend>) -> Context {
        let cell = OnceCell::new();
        let _ = cell.set(backend);
        Context {
            backend: cell,
            ..self
        }
    }

    /// The backend, connected on first use.
    pub async fn backend(&self) -> Result<Arc<dyn KvBackend>, ConnectError> {
        self.backend
            .get_or_try_init(|| async {
                let early = self.early.lock().map(|mut e| e.take()).unwrap_or(None);
                match early {
                    Some(connecting) => connecting.await.map_err(ConnectError::ConnectPanicked)?,
                    None => connect_backend(&self.cfg.backend).await,
                }
            })
            .await
            .cloned()
    }

    /// Housekeeping after a one-shot command that committed: once commits have left more
    /// than 32 packs (there is no `serve` merging them here), merge them.
    pub async fn tidy(&self) {
        /// Object lookups go through every pack; past this many, merge.
        const MAX_PACKS: usize = 32;
        self.merge_packs(Some(MAX_PACKS)).await;
    }

    /// Merges packs geometrically (`git repack -d --geometric=2`, at low priority), when
    /// there are more than `past` (always, with `None`). A failure is logged, never
    /// returned: everything is recorded already, and the next try merges what is left.
    pub async fn merge_packs(&self, past: Option<usize>) {
        let started = std::time::Instant::now();
        let merged = self
            .git_blocking(move |git| -> Result<_, GitError> {
                Ok(match (past, git.pack_count()) {
                    (Some(max), Ok(n)) if n <= max => None,
                    _ => Some(git.repack_geometric()),
                })
            })
            .await;
        match merged {
            Ok(Some(Ok(()))) => tracing::debug!(elapsed = ?started.elapsed(), "packs merged"),
            Ok(None) => {}
            Ok(Some(Err(e))) => {
                tracing::warn!(error = %crate::errors::chain(&e), "repack failed; will try again later")
            }
            Err(e) => {
                tracing::warn!(error = %crate::errors::chain(&e), "repack failed; will try again later")
            }
        }
    }

    /// Run blocking Git work off the async threads; the closure's error type is the
    /// caller's (a panicked task becomes its [`GitError::Panicked`]).
    pub async fn git_blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<GitError> + Send + 'static,
        F: FnOnce(&GitStore) -> Result<T, E> + Send + 'static,
    {
        let git = self.git.clone();
        tokio::task::spawn_blocking(move || f(&git))
            .await
            .map_err(|e| E::from(GitError::Panicked(e)))?
    }

    pub fn author(&self) -> Author {
        Author {
            name: self.cfg.git.author_name.clone(),
            email: self.cfg.git.author_email.clone(),
        }
    }
}

/// Connects to the backend the config names; the error names `backend.endpoints`.
async fn connect_backend(b: &BackendConfig) -> Result<Arc<dyn KvBackend>, ConnectError> {
    let endpoints = || b.endpoints().join(",");
    Ok(match b {
        BackendConfig::Etcd(cfg) => {
            Arc::new(EtcdBackend::connect(cfg.clone()).await.map_err(|source| {
                ConnectError::Etcd {
                    endpoints: endpoints(),
                    source,
                }
            })?) as Arc<dyn KvBackend>
        }
        BackendConfig::Consul(cfg) => Arc::new(ConsulBackend::connect(cfg.clone()).await.map_err(
            |source| ConnectError::Consul {
                endpoints: endpoints(),
                source,
            },
        )?),
    })
}

/// Seconds since the Unix epoch, for commit times.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

//! The one-shot engine behind the CLI verbs: reading the three sides of an area (live,
//! base, desired), deciding by the sync rule, and writing Git or the KV store.

pub mod apply;
pub mod changes;
pub mod checkpoint;
pub mod decide;
pub mod export;
pub mod log;
pub mod message;
pub mod status;
pub mod view;
pub mod writer;

use crate::config::{BackendKind, Config};
use anyhow::Context as _;
use backend_consul::{ConsulBackend, ConsulConfig};
use backend_etcd::{EtcdBackend, EtcdConfig};
use gitstore::{Author, GitStore};
use std::sync::Arc;
use sync_core::{AreaName, Epoch, KvBackend};
use tokio::sync::OnceCell;

/// What every verb works with: the config, the repository, and (on first use) the backend.
pub struct Context {
    pub cfg: Config,
    git: Arc<GitStore>,
    /// Connected lazily so Git-only verbs (`log`) work while the backend is down.
    backend: OnceCell<Arc<dyn KvBackend>>,
    /// Per area, the epoch of this node's claim while `serve` owns it; stamped on every
    /// commit and checkpoint so a stale owner's work can be told apart.
    epochs: std::sync::Mutex<std::collections::BTreeMap<AreaName, Epoch>>,
}

impl Context {
    pub async fn connect(cfg: Config) -> anyhow::Result<Context> {
        let repo = cfg.git.repo.clone();
        let branch = cfg.git.branch.clone();
        let timeout = cfg.git.timeout;
        let git = tokio::task::spawn_blocking(move || {
            GitStore::open_or_init(&repo, &branch).map(|g| g.with_network_timeout(timeout))
        })
        .await
        .context("git task panicked")?
        .with_context(|| format!("git.repo {}", cfg.git.repo.display()))?;
        Ok(Context {
            cfg,
            git: Arc::new(git),
            backend: OnceCell::new(),
            epochs: Default::default(),
        })
    }

    /// The backend, connected on first use.
    pub async fn backend(&self) -> anyhow::Result<Arc<dyn KvBackend>> {
        self.backend
            .get_or_try_init(|| async {
                let b = &self.cfg.backend;
                match b.kind {
                    BackendKind::Etcd => {
                        let cfg = EtcdConfig {
                            endpoints: b.endpoints.clone(),
                            user: b.user.clone(),
                            password: b.password.clone(),
                            ca_file: b.ca_file.clone(),
                            cert_file: b.cert_file.clone(),
                            key_file: b.key_file.clone(),
                            connect_timeout: b.connect_timeout,
                            request_timeout: b.request_timeout,
                            ..EtcdConfig::default()
                        };
                        let backend = EtcdBackend::connect(cfg).await.with_context(|| {
                            format!("backend.endpoints {}", b.endpoints.join(","))
                        })?;
                        Ok(Arc::new(backend) as Arc<dyn KvBackend>)
                    }
                    BackendKind::Consul => {
                        let cfg = ConsulConfig {
                            endpoints: b.endpoints.clone(),
                            token: b.token.clone(),
                            datacenter: b.datacenter.clone(),
                            connect_timeout: b.connect_timeout,
                            request_timeout: b.request_timeout,
                            ..ConsulConfig::default()
                        };
                        let backend = ConsulBackend::connect(cfg).await.with_context(|| {
                            format!("backend.endpoints {}", b.endpoints.join(","))
                        })?;
                        Ok(Arc::new(backend) as Arc<dyn KvBackend>)
                    }
                }
            })
            .await
            .cloned()
    }

    /// Run blocking Git work off the async threads.
    pub async fn git_blocking<T, F>(&self, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&GitStore) -> anyhow::Result<T> + Send + 'static,
    {
        let git = self.git.clone();
        tokio::task::spawn_blocking(move || f(&git))
            .await
            .context("git task panicked")?
    }

    /// The epoch this node owns `area` under, if it does.
    pub fn epoch(&self, area: &AreaName) -> Option<Epoch> {
        self.epochs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(area)
            .copied()
    }

    pub fn set_epoch(&self, area: &AreaName, epoch: Option<Epoch>) {
        let mut epochs = self
            .epochs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match epoch {
            Some(e) => epochs.insert(area.clone(), e),
            None => epochs.remove(area),
        };
    }

    pub fn author(&self) -> Author {
        Author {
            name: self.cfg.git.author_name.clone(),
            email: self.cfg.git.author_email.clone(),
        }
    }
}

/// Seconds since the Unix epoch, for commit times.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

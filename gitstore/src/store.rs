//! The `GitStore` handle: opens or creates the bare repository and hands each call a
//! thread-local gix view, so one handle can be shared by all blocking tasks.

use std::path::{Path, PathBuf};

use gix::refs::FullName;

/// A bare Git repository that kvgit reads and writes; cheap to share (`Send + Sync`).
pub struct GitStore {
    /// Shared repository state (object store, refs, config); each call takes `to_thread_local()`.
    repo: gix::ThreadSafeRepository,
    /// The branch kvgit commits to, as a short name (`main`).
    branch: String,
    /// `refs/heads/<branch>`, validated once when opening.
    branch_ref: FullName,
    /// The same name as a string, for callers and error messages.
    branch_ref_str: String,
    /// The repository directory, handed to the `git` CLI for fetch, push and repack.
    git_dir: PathBuf,
    /// How long a fetch or push may run before it is killed (None: unbounded).
    network_timeout: Option<std::time::Duration>,
    /// The deploy key and known_hosts for ssh remotes (None: ssh as configured for the user).
    remote_auth: Option<crate::RemoteAuth>,
    /// Every commit written is signed with this key (None: unsigned commits).
    signing_key: Option<crate::SigningKey>,
    /// Trees just written into packs, read back by the next commit without a pack rescan.
    pub(crate) recent: std::sync::Arc<crate::recent::RecentTrees>,
}

/// Pack indices the object database can hold at once (git keeps far fewer after a repack).
const PACK_INDEX_SLOTS: u16 = 4096;

/// Why the repository could not be opened or created.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{path}: exists and is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{path}: is a repository with a work tree; kvgit needs a bare repository")]
    NotBare { path: PathBuf },
    #[error("invalid branch name {branch:?}")]
    InvalidBranch {
        branch: String,
        #[source]
        source: gix::validate::reference::name::Error,
    },
    #[error("{path}: could not inspect the path")]
    Inspect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: could not create a bare repository")]
    Init {
        path: PathBuf,
        #[source]
        source: gix::Error,
    },
    #[error("{path}: could not point HEAD at the branch")]
    SetHead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: could not open the repository")]
    Open {
        path: PathBuf,
        #[source]
        source: gix::Error,
    },
}

impl GitStore {
    /// Opens the bare repository at `path`, creating it (with HEAD on `branch`) when the path is
    /// missing or an empty directory. A file or a repository with a work tree is refused.
    pub fn open_or_init(path: &Path, branch: &str) -> Result<GitStore, OpenError> {
        let branch_ref_str = crate::refs::branch_ref(branch);
        let branch_ref = FullName::try_from(branch_ref_str.as_str()).map_err(|source| {
            OpenError::InvalidBranch {
                branch: branch.to_owned(),
                source,
            }
        })?;
        let fresh = match std::fs::metadata(path) {
            Ok(meta) if !meta.is_dir() => {
                return Err(OpenError::NotADirectory {
                    path: path.to_owned(),
                })
            }
            Ok(_) => is_empty_dir(path)?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => true,
            Err(source) => {
                return Err(OpenError::Inspect {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        if fresh {
            gix::init_bare(path).map_err(|source| OpenError::Init {
                path: path.to_owned(),
                source,
            })?;
            // gix names the initial branch itself; a clone must check out kvgit's branch.
            let head = format!("ref: {branch_ref_str}\n");
            std::fs::write(path.join("HEAD"), head).map_err(|source| OpenError::SetHead {
                path: path.to_owned(),
                source,
            })?;
        }
        // Isolated: only the repository's own config counts, never the user's or the system's.
        // Slots for pack indices are fixed at open; a long-running service adds a pack per
        // large commit between repacks, so reserve room instead of sizing by today's disk.
        let options = gix::open::Options::isolated()
            .object_store_slots(gix::odb::store::init::Slots::Given(PACK_INDEX_SLOTS));
        let repo = gix::open_opts(path, options).map_err(|source| OpenError::Open {
            path: path.to_owned(),
            source,
        })?;
        if !repo.is_bare() {
            return Err(OpenError::NotBare {
                path: path.to_owned(),
            });
        }
        let git_dir = repo.git_dir().to_owned();
        Ok(GitStore {
            repo: repo.into_sync(),
            branch: branch.to_owned(),
            branch_ref,
            branch_ref_str,
            git_dir,
            network_timeout: None,
            remote_auth: None,
            signing_key: None,
            recent: Default::default(),
        })
    }

    /// The branch kvgit commits to (short name).
    pub fn branch(&self) -> &str {
        &self.branch
    }

    /// `refs/heads/<branch>`.
    pub fn branch_ref(&self) -> &str {
        &self.branch_ref_str
    }

    /// The repository directory.
    pub fn git_dir(&self) -> &Path {
        &self.git_dir
    }

    /// Bounds every fetch and push to `limit`: the `git` child and its helpers are killed
    /// after it (`CliError::TimedOut`).
    pub fn with_network_timeout(mut self, limit: std::time::Duration) -> GitStore {
        self.network_timeout = Some(limit);
        self
    }

    /// Fetch and push reach ssh remotes with `auth`'s key and known_hosts only: no agent, no
    /// user ssh config, strict host key checking.
    pub fn with_remote_auth(mut self, auth: crate::RemoteAuth) -> GitStore {
        self.remote_auth = Some(auth);
        self
    }

    /// Every commit written from now on (exports, checkpoints, replays) carries an SSH
    /// signature by `key`, as `git commit -S` with `gpg.format=ssh` makes it.
    pub fn with_signing_key(mut self, key: crate::SigningKey) -> GitStore {
        self.signing_key = Some(key);
        self
    }

    pub(crate) fn signing_key(&self) -> Option<&crate::SigningKey> {
        self.signing_key.as_ref()
    }

    pub(crate) fn remote_auth(&self) -> Option<&crate::RemoteAuth> {
        self.remote_auth.as_ref()
    }

    pub(crate) fn network_timeout(&self) -> Option<std::time::Duration> {
        self.network_timeout
    }

    /// A thread-local view of the repository for one call.
    pub(crate) fn repo(&self) -> gix::Repository {
        self.repo.to_thread_local()
    }

    pub(crate) fn branch_full_name(&self) -> &FullName {
        &self.branch_ref
    }
}

/// The handle is shared across `spawn_blocking` tasks.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<GitStore>();
};

fn is_empty_dir(path: &Path) -> Result<bool, OpenError> {
    let mut entries = std::fs::read_dir(path).map_err(|source| OpenError::Inspect {
        path: path.to_owned(),
        source,
    })?;
    Ok(entries.next().is_none())
}

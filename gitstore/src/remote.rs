//! Talking to a remote with the `git` CLI: fetch the branch into `refs/remotes/kvgit/<branch>`
//! (and `refs/kvgit/*` into `refs/remotes/kvgit-meta/*`), and push atomically, never forced.

use gix::ObjectId;

use crate::auth::{credentials_refused, host_key_lines, host_key_refused, one_line};
use crate::cli::{looks_unreachable, redact, CliError, Git};
use crate::refs::{branch_ref, meta_fetch_spec, tracking_ref};
use crate::GitStore;

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("invalid remote url {url:?}")]
    InvalidUrl { url: String },
    #[error("invalid branch name {branch:?}")]
    InvalidBranch { branch: String },
    #[error("fetch from {url}: remote unreachable: {stderr}")]
    Unreachable { url: String, stderr: String },
    #[error("fetch from {url}: the remote's host key did not match the known_hosts file (git.known_hosts_file): {stderr}")]
    HostKey { url: String, stderr: String },
    #[error("fetch from {url}: the remote refused the credentials or asked for some (git.https_token_file, git.https_user): {stderr}")]
    Credentials { url: String, stderr: String },
    #[error("fetch from {url}")]
    Git {
        url: String,
        #[source]
        source: CliError,
    },
    #[error("fetch from {url}: could not read {name}")]
    ReadRef {
        url: String,
        name: String,
        #[source]
        source: crate::RefReadError,
    },
}

impl FetchError {
    /// Worth retrying later (the remote may come back).
    pub fn is_retryable(&self) -> bool {
        match self {
            FetchError::Unreachable { .. } => true,
            FetchError::Git { source, .. } => source.is_retryable(),
            _ => false,
        }
    }
}

/// Why a push failed (a lost race is not a failure: see [`PushOutcome::Rejected`]).
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("invalid remote url {url:?}")]
    InvalidUrl { url: String },
    #[error("push to {url}: {name:?} is not a full ref name (refs/...)")]
    InvalidRef { url: String, name: String },
    #[error("push to {url}: remote unreachable: {stderr}")]
    Unreachable { url: String, stderr: String },
    #[error("push to {url}: the remote's host key did not match the known_hosts file (git.known_hosts_file): {stderr}")]
    HostKey { url: String, stderr: String },
    #[error("push to {url}: the remote refused the credentials or asked for some (git.https_token_file, git.https_user): {stderr}")]
    Credentials { url: String, stderr: String },
    #[error("push to {url}: the remote refused {refs:?}")]
    RemoteRefused { url: String, refs: Vec<RejectedRef> },
    #[error("push to {url}")]
    Git {
        url: String,
        #[source]
        source: CliError,
    },
}

impl PushError {
    /// Worth retrying later (the remote may come back).
    pub fn is_retryable(&self) -> bool {
        match self {
            PushError::Unreachable { .. } => true,
            PushError::Git { source, .. } => source.is_retryable(),
            _ => false,
        }
    }
}

/// A remote ref that did not move, and git's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRef {
    /// The full ref name on the remote.
    pub remote_ref: String,
    /// git's reason, e.g. `non-fast-forward`, `fetch first`.
    pub reason: String,
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// Every ref was updated (or already had the value).
    Pushed,
    /// The remote moved on (non-fast-forward, fetch first, lost race): nothing was updated
    /// (atomic); fetch, replay on the new tip and push again.
    Rejected { refs: Vec<RejectedRef> },
}

impl GitStore {
    /// Fetches `branch` from `remote_url` into `refs/remotes/kvgit/<branch>` (and `refs/kvgit/*`
    /// into `refs/remotes/kvgit-meta/*`); returns the fetched tip, `None` if the remote has no
    /// such branch (the stale tracking ref is then removed).
    pub fn fetch(&self, remote_url: &str, branch: &str) -> Result<Option<ObjectId>, FetchError> {
        let url = redact(remote_url);
        if remote_url.starts_with('-') || remote_url.is_empty() {
            return Err(FetchError::InvalidUrl { url });
        }
        let tracking = tracking_ref(branch);
        if gix::refs::FullName::try_from(branch_ref(branch).as_str()).is_err() {
            return Err(FetchError::InvalidBranch {
                branch: branch.to_owned(),
            });
        }
        let branch_spec = format!("+{}:{tracking}", branch_ref(branch));
        let meta_spec = meta_fetch_spec();
        let git = Git::new(self.git_dir())
            .with_limit(self.network_timeout())
            .with_auth(self.remote_auth());
        let base = [
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--",
            remote_url,
        ];
        let args: Vec<&str> = base
            .iter()
            .copied()
            .chain([branch_spec.as_str(), meta_spec.as_str()])
            .collect();
        let out = git.output(&args).map_err(|source| FetchError::Git {
            url: url.clone(),
            source,
        })?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if !out.status.success() {
            if stderr.contains("couldn't find remote ref") {
                // No branch on the remote yet: fetch the rest, forget the stale tracking ref.
                let args: Vec<&str> = base.iter().copied().chain([meta_spec.as_str()]).collect();
                git.run(&args).map_err(|source| FetchError::Git {
                    url: url.clone(),
                    source,
                })?;
                git.run(&["update-ref", "-d", &tracking])
                    .map_err(|source| FetchError::Git {
                        url: url.clone(),
                        source,
                    })?;
                return Ok(None);
            }
            if host_key_refused(&stderr) {
                return Err(FetchError::HostKey {
                    url,
                    stderr: host_key_lines(&stderr),
                });
            }
            if credentials_refused(&stderr) {
                return Err(FetchError::Credentials {
                    url,
                    stderr: one_line(&stderr),
                });
            }
            if looks_unreachable(&stderr) {
                return Err(FetchError::Unreachable { url, stderr });
            }
            return Err(FetchError::Git {
                url,
                source: CliError::Failed {
                    args: args.join(" "),
                    status: out.status.to_string(),
                    stderr,
                },
            });
        }
        self.read_ref(&tracking)
            .map_err(|source| FetchError::ReadRef {
                url,
                name: tracking,
                source,
            })
    }

    /// Pushes each `(commit, remote ref)` atomically: all refs move or none. Never forced, so
    /// a remote that moved on gives [`PushOutcome::Rejected`].
    pub fn push(
        &self,
        remote_url: &str,
        updates: &[(ObjectId, String)],
    ) -> Result<PushOutcome, PushError> {
        let url = redact(remote_url);
        if remote_url.starts_with('-') || remote_url.is_empty() {
            return Err(PushError::InvalidUrl { url });
        }
        if updates.is_empty() {
            return Ok(PushOutcome::Pushed);
        }
        let mut specs = Vec::with_capacity(updates.len());
        for (id, name) in updates {
            if !name.starts_with("refs/") || gix::refs::FullName::try_from(name.as_str()).is_err() {
                return Err(PushError::InvalidRef {
                    url,
                    name: name.clone(),
                });
            }
            specs.push(format!("{id}:{name}"));
        }
        let mut args = vec![
            "push",
            "--atomic",
            "--porcelain",
            "--no-verify",
            "--",
            remote_url,
        ];
        args.extend(specs.iter().map(String::as_str));
        let out = Git::new(self.git_dir())
            .with_limit(self.network_timeout())
            .with_auth(self.remote_auth())
            .output(&args)
            .map_err(|source| PushError::Git {
                url: url.clone(),
                source,
            })?;
        if out.status.success() {
            return Ok(PushOutcome::Pushed);
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        let (lost_race, refused) = classify(&stdout);
        if !refused.is_empty() {
            return Err(PushError::RemoteRefused { url, refs: refused });
        }
        if !lost_race.is_empty() {
            return Ok(PushOutcome::Rejected { refs: lost_race });
        }
        if host_key_refused(&stderr) {
            return Err(PushError::HostKey {
                url,
                stderr: host_key_lines(&stderr),
            });
        }
        if credentials_refused(&stderr) {
            return Err(PushError::Credentials {
                url,
                stderr: one_line(&stderr),
            });
        }
        if looks_unreachable(&stderr) {
            return Err(PushError::Unreachable { url, stderr });
        }
        Err(PushError::Git {
            url,
            source: CliError::Failed {
                args: args.join(" "),
                status: out.status.to_string(),
                stderr,
            },
        })
    }

    /// Packs loose objects into one pack and drops the loose copies (`git repack -d`); objects
    /// not yet reachable from a ref stay loose. Blocking: run it in the background.
    pub fn repack(&self) -> Result<(), CliError> {
        Git::new(self.git_dir())
            .run(&["repack", "-d", "-q"])
            .map(drop)
    }

    /// Merges packs so their sizes form a geometric progression (`git repack -d
    /// --geometric=2`): many small per-commit packs become few, at a cost that follows the
    /// small packs, not the whole repository. Also packs loose objects. It runs at a lower
    /// CPU priority, and is safe beside writers (new packs and loose objects written while
    /// it runs are kept; a pack is deleted only after its objects are in the new one).
    pub fn repack_geometric(&self) -> Result<(), CliError> {
        Git::new(self.git_dir())
            .in_background()
            .run(&["repack", "-d", "-q", "--geometric=2"])
            .map(drop)
    }

    /// How many pack files the repository has (each large commit adds one until a repack).
    pub fn pack_count(&self) -> std::io::Result<usize> {
        let dir = self.git_dir().join("objects/pack");
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut n = 0;
        for entry in entries {
            if entry?.path().extension().is_some_and(|x| x == "pack") {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// Splits `git push --porcelain` rejections into "the remote moved on" (retry after a fetch)
/// and "the remote refused" (hooks, permissions: retrying will not help).
fn classify(porcelain: &str) -> (Vec<RejectedRef>, Vec<RejectedRef>) {
    let (mut lost_race, mut refused) = (Vec::new(), Vec::new());
    for line in porcelain.lines() {
        // "<flag>\t<from>:<to>\t<summary> (<reason>)"; flag '!' means not updated.
        let mut fields = line.splitn(3, '\t');
        let (Some("!"), Some(spec), Some(summary)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let remote_ref = spec.rsplit_once(':').map_or(spec, |(_, to)| to).to_owned();
        let reason = summary
            .split_once('(')
            .map_or("", |(_, r)| r.trim_end_matches(')'))
            .to_owned();
        let rejected = RejectedRef { remote_ref, reason };
        if rejected.reason.contains("atomic push failed")
            || rejected.reason.contains("atomic transaction failed")
        {
            // A bystander of another ref's rejection; that one carries the cause.
            continue;
        }
        let moved_on = [
            "non-fast-forward",
            "fetch first",
            "stale info",
            "already exists",
        ]
        .iter()
        .any(|r| rejected.reason.contains(r))
            || ["cannot lock ref", "failed to update ref", "but expected"]
                .iter()
                .any(|r| rejected.reason.contains(r));
        if summary.starts_with("[rejected]") || moved_on {
            lost_race.push(rejected);
        } else {
            refused.push(rejected);
        }
    }
    (lost_race, refused)
}

#[cfg(test)]
mod tests {
    use super::classify;

    #[test]
    fn porcelain_rejections_are_classified() {
        let out = "To /tmp/r.git\n\
            !\tabc:refs/heads/main\t[rejected] (non-fast-forward)\n\
            !\tdef:refs/kvgit/x\t[rejected] (atomic push failed)\n\
            !\t012:refs/heads/other\t[remote rejected] (pre-receive hook declined)\n\
            Done\n";
        let (lost, refused) = classify(out);
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].remote_ref, "refs/heads/main");
        assert_eq!(lost[0].reason, "non-fast-forward");
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].reason, "pre-receive hook declined");
    }
}

//! Reading refs, resolving revisions to commits, and moving refs by compare-and-swap: an
//! update names the value it expects, and losing a race is its own error variant. Also the
//! one place the names of the refs gitstore reads, writes and fetches are spelled.

use gix::refs::transaction::{Change, LogChange, PreviousValue, RefEdit, RefLog};
use gix::refs::{FullName, Target};
use gix::ObjectId;

use crate::GitStore;

/// Why a ref could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RefReadError {
    #[error("invalid ref name {name:?}")]
    InvalidName {
        name: String,
        #[source]
        source: gix::validate::reference::name::Error,
    },
    #[error("{name}: could not read the ref")]
    Read {
        name: String,
        #[source]
        source: gix::Error,
    },
}

/// Why a revision did not resolve to a commit.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("revision {rev:?}: not found or ambiguous")]
    NotFound {
        rev: String,
        #[source]
        source: gix::Error,
    },
    #[error("revision {rev:?}: does not lead to a commit")]
    NotACommit {
        rev: String,
        #[source]
        source: gix::Error,
    },
}

/// Why a ref was not moved.
#[derive(Debug, thiserror::Error)]
pub enum RefUpdateError {
    #[error("invalid ref name {name:?}")]
    InvalidName {
        name: String,
        #[source]
        source: gix::validate::reference::name::Error,
    },
    /// Someone else moved the ref first: re-read it and retry on top of `actual`.
    #[error("{name}: expected {}, found {}", show(.expected), show(.actual))]
    Conflict {
        name: String,
        expected: Option<ObjectId>,
        actual: Option<ObjectId>,
    },
    #[error("{name}: could not update the ref")]
    Update {
        name: String,
        #[source]
        source: gix::Error,
    },
}

/// The namespace of kvgit's own refs (checkpoints and the like): fetched and pushed beside
/// the branch, never checked out.
pub const META_REFS: &str = "refs/kvgit/";

/// Where a fetch keeps the remote's `refs/kvgit/*`.
const META_TRACKING_REFS: &str = "refs/remotes/kvgit-meta/";

/// `refs/heads/<branch>`.
pub(crate) fn branch_ref(branch: &str) -> String {
    format!("refs/heads/{branch}")
}

/// Remote-tracking ref for the branch.
pub fn tracking_ref(branch: &str) -> String {
    format!("refs/remotes/kvgit/{branch}")
}

/// The remote-tracking ref of one of kvgit's own refs (`refs/kvgit/x` →
/// `refs/remotes/kvgit-meta/x`); `None` for a ref outside [`META_REFS`].
pub fn meta_tracking_ref(name: &str) -> Option<String> {
    name.strip_prefix(META_REFS)
        .map(|rest| format!("{META_TRACKING_REFS}{rest}"))
}

/// The refspec a fetch copies kvgit's own refs with (forced: the remote is the truth).
pub(crate) fn meta_fetch_spec() -> String {
    format!("+{META_REFS}*:{META_TRACKING_REFS}*")
}

impl RefUpdateError {
    /// A lost race: retrying on top of the new value can succeed.
    pub fn is_conflict(&self) -> bool {
        matches!(self, RefUpdateError::Conflict { .. })
    }
}

impl GitStore {
    /// The commit the branch points to; `None` before the first commit.
    pub fn tip(&self) -> Result<Option<ObjectId>, RefReadError> {
        read(&self.repo(), self.branch_full_name())
    }

    /// The object the full ref `name` (e.g. `refs/remotes/kvgit/main`) points to, if it exists.
    pub fn read_ref(&self, name: &str) -> Result<Option<ObjectId>, RefReadError> {
        let full = FullName::try_from(name).map_err(|source| RefReadError::InvalidName {
            name: name.to_owned(),
            source,
        })?;
        read(&self.repo(), &full)
    }

    /// The commit `rev` names: a branch, tag, full or short id, `main~2`… (git rev-parse
    /// syntax as gix supports it); tags are peeled.
    pub fn resolve_commit(&self, rev: &str) -> Result<ObjectId, ResolveError> {
        let repo = self.repo();
        let id = repo
            .rev_parse_single(rev)
            .map_err(|source| ResolveError::NotFound {
                rev: rev.to_owned(),
                source,
            })?;
        let commit = id
            .object()
            .and_then(|object| object.peel_to_commit())
            .map_err(|source| ResolveError::NotACommit {
                rev: rev.to_owned(),
                source,
            })?;
        Ok(commit.id)
    }

    /// Compare-and-swap: points `name` at `new` only if it currently points at `expected`
    /// (`None`: only if it does not exist yet). Never forced.
    pub fn update_ref(
        &self,
        name: &str,
        new: ObjectId,
        expected: Option<ObjectId>,
        reflog_msg: &str,
    ) -> Result<(), RefUpdateError> {
        let change = Change::Update {
            log: LogChange {
                mode: RefLog::AndReference,
                force_create_reflog: false,
                message: reflog_msg.replace('\n', " ").into(),
            },
            expected: match expected {
                Some(old) => PreviousValue::MustExistAndMatch(Target::Object(old)),
                None => PreviousValue::MustNotExist,
            },
            new: Target::Object(new),
        };
        self.edit_ref(name, expected, change)
    }

    /// Compare-and-swap on several refs in one transaction: every `(name, new, expected)`
    /// moves, or none does (each ref's lock is taken before any moves). kvgit moves the
    /// branch and an area's checkpoint together so a crash never leaves a commit on the
    /// branch whose checkpoint is missing (its events would be replayed against a base that
    /// lacks them, and a deletion made meanwhile could come back).
    pub fn update_refs(
        &self,
        updates: &[(&str, ObjectId, Option<ObjectId>)],
        reflog_msg: &str,
    ) -> Result<(), RefUpdateError> {
        let mut edits = Vec::with_capacity(updates.len());
        for (name, new, expected) in updates {
            let full = FullName::try_from(*name).map_err(|source| RefUpdateError::InvalidName {
                name: (*name).to_owned(),
                source,
            })?;
            edits.push(RefEdit {
                change: Change::Update {
                    log: LogChange {
                        mode: RefLog::AndReference,
                        force_create_reflog: false,
                        message: reflog_msg.replace('\n', " ").into(),
                    },
                    expected: match expected {
                        Some(old) => PreviousValue::MustExistAndMatch(Target::Object(*old)),
                        None => PreviousValue::MustNotExist,
                    },
                    new: Target::Object(*new),
                },
                name: full,
                deref: false,
            });
        }
        let repo = self.repo();
        let committer = kvgit_signature();
        let mut time = gix::date::parse::TimeBuf::default();
        match repo.edit_references_as(edits, Some(committer.to_ref(&mut time))) {
            Ok(_) => Ok(()),
            Err(source) => {
                // Name the first ref that no longer holds what was expected: a lost race.
                for (name, _, expected) in updates {
                    let full = FullName::try_from(*name).ok();
                    let actual = full.and_then(|f| read(&repo, &f).ok().flatten());
                    if actual != *expected {
                        return Err(RefUpdateError::Conflict {
                            name: (*name).to_owned(),
                            expected: *expected,
                            actual,
                        });
                    }
                }
                Err(RefUpdateError::Update {
                    name: updates
                        .iter()
                        .map(|(n, _, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", "),
                    source,
                })
            }
        }
    }

    /// Compare-and-swap delete: removes `name` only if it points at `expected`.
    pub fn delete_ref(&self, name: &str, expected: ObjectId) -> Result<(), RefUpdateError> {
        let change = Change::Delete {
            expected: PreviousValue::MustExistAndMatch(Target::Object(expected)),
            log: RefLog::AndReference,
        };
        self.edit_ref(name, Some(expected), change)
    }

    /// One ref edit whose precondition is that `name` holds `expected`; a failure while it
    /// no longer does is reported as the lost race it is.
    fn edit_ref(
        &self,
        name: &str,
        expected: Option<ObjectId>,
        change: Change,
    ) -> Result<(), RefUpdateError> {
        let full = FullName::try_from(name).map_err(|source| RefUpdateError::InvalidName {
            name: name.to_owned(),
            source,
        })?;
        let repo = self.repo();
        let edit = RefEdit {
            change,
            name: full.clone(),
            deref: false,
        };
        let committer = kvgit_signature();
        let mut time = gix::date::parse::TimeBuf::default();
        match repo.edit_references_as([edit], Some(committer.to_ref(&mut time))) {
            Ok(_) => Ok(()),
            Err(source) => {
                let actual = read(&repo, &full).ok().flatten();
                if actual != expected {
                    Err(RefUpdateError::Conflict {
                        name: name.to_owned(),
                        expected,
                        actual,
                    })
                } else {
                    Err(RefUpdateError::Update {
                        name: name.to_owned(),
                        source,
                    })
                }
            }
        }
    }
}

pub(crate) fn read(
    repo: &gix::Repository,
    name: &FullName,
) -> Result<Option<ObjectId>, RefReadError> {
    let failed = |source| RefReadError::Read {
        name: name.as_bstr().to_string(),
        source,
    };
    let Some(mut reference) = repo.try_find_reference(name.as_ref()).map_err(failed)? else {
        return Ok(None);
    };
    // Follows symbolic refs (HEAD) to the object, without peeling tags.
    let id = reference.follow_to_object().map_err(failed)?;
    Ok(Some(id.detach()))
}

/// An optional id for messages: the hex id or "no ref".
pub(crate) fn show(id: &Option<ObjectId>) -> String {
    id.map_or_else(|| "no ref".to_owned(), |id| id.to_string())
}

/// The identity written to reflogs (bare repositories keep none unless configured to).
fn kvgit_signature() -> gix::actor::Signature {
    gix::actor::Signature {
        name: "kvgit".into(),
        email: "kvgit@localhost".into(),
        time: gix::date::Time::now_utc(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names are part of the contract with remotes and older kvgit versions.
    #[test]
    fn ref_names() {
        assert_eq!(branch_ref("main"), "refs/heads/main");
        assert_eq!(tracking_ref("main"), "refs/remotes/kvgit/main");
        assert_eq!(
            meta_tracking_ref("refs/kvgit/checkpoints/app").as_deref(),
            Some("refs/remotes/kvgit-meta/checkpoints/app")
        );
        assert_eq!(meta_tracking_ref("refs/heads/main"), None);
        assert_eq!(meta_fetch_spec(), "+refs/kvgit/*:refs/remotes/kvgit-meta/*");
    }
}

//! Reading refs, resolving revisions to commits, and moving refs by compare-and-swap: an
//! update names the value it expects, and losing a race is its own error variant.

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

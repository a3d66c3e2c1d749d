//! Writing commit objects: kvgit is both author and committer, the time is given by the
//! caller (so batches and tests are reproducible), and every tree and parent must exist.

use gix::prelude::Write as _;
use gix::ObjectId;

use crate::objects::{hash, HashError};
use crate::GitStore;

/// Who a commit is by (author = committer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Author {
    /// Shown by `git log`; no '<', '>' or newline.
    pub name: String,
    /// Written between '<' and '>'; no '<', '>' or newline.
    pub email: String,
}

/// Why a commit could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CommitWriteError {
    #[error("author {name:?} <{email}>: names and emails cannot hold '<', '>' or newlines")]
    InvalidAuthor { name: String, email: String },
    #[error("tree {tree}: not in the repository")]
    MissingTree { tree: ObjectId },
    #[error("parent {parent}: not in the repository")]
    MissingParent { parent: ObjectId },
    #[error("commit on tree {tree}: could not write it")]
    Write {
        tree: ObjectId,
        #[source]
        source: gix::Error,
    },
    #[error("commit on tree {tree}: could not hash it")]
    Hash {
        tree: ObjectId,
        #[source]
        source: HashError,
    },
    #[error("commit on tree {tree}: could not sign it (git.sign_key_file)")]
    Sign {
        tree: ObjectId,
        #[source]
        source: crate::SshKeygenError,
    },
}

impl GitStore {
    /// Writes a commit of `tree` with `parents` and returns its id; `unix_secs` is the author and
    /// committer time (UTC). A message without a final newline gets one, as `git commit` does.
    pub fn write_commit(
        &self,
        tree: ObjectId,
        parents: &[ObjectId],
        message: &str,
        author: &Author,
        unix_secs: i64,
    ) -> Result<ObjectId, CommitWriteError> {
        self.write_commit_at(tree, parents, message, author, unix_secs, unix_secs)
    }

    /// [`write_commit`](Self::write_commit) with distinct author and committer times (unix
    /// seconds, UTC), as a replayed commit keeps its author time but is committed later.
    pub fn write_commit_at(
        &self,
        tree: ObjectId,
        parents: &[ObjectId],
        message: &str,
        author: &Author,
        author_secs: i64,
        committer_secs: i64,
    ) -> Result<ObjectId, CommitWriteError> {
        let repo = self.repo();
        self.check_inputs(&repo, tree, parents, |_| false)?;
        // An empty tree is known to gix without being stored; git needs the object.
        if tree.is_empty_tree() {
            repo.write_object(gix::objs::Tree::empty())
                .map_err(|source| CommitWriteError::Write { tree, source })?;
        }
        let (id, buf) =
            self.encode_commit(tree, parents, message, author, author_secs, committer_secs)?;
        // A new commit is never in the store (it holds its time and parents): written
        // without `write_object`'s lookup, which misses in every pack index and then
        // rescans the pack directory, once per commit (with the tree check: a fifth of
        // `serve`'s CPU while ingesting 1M keys).
        repo.objects
            .write_buf_with_known_id(gix::objs::Kind::Commit, &buf, id)
            .map_err(|source| CommitWriteError::Write { tree, source })?;
        Ok(id)
    }

    /// Refuses a commit whose tree or a parent is nowhere to be found: not in the store, not
    /// among the trees just written (`recent`), and not what `also` holds (a batch's own).
    pub(crate) fn check_inputs(
        &self,
        repo: &gix::Repository,
        tree: ObjectId,
        parents: &[ObjectId],
        also: impl Fn(&ObjectId) -> bool,
    ) -> Result<(), CommitWriteError> {
        if self.recent.get(&tree).is_none() && !also(&tree) && !repo.has_object(tree) {
            return Err(CommitWriteError::MissingTree { tree });
        }
        if let Some(&parent) = parents.iter().find(|p| !also(p) && !repo.has_object(**p)) {
            return Err(CommitWriteError::MissingParent { parent });
        }
        Ok(())
    }

    /// The commit object (signed with the store's key, if any) and its id, not written.
    pub(crate) fn encode_commit(
        &self,
        tree: ObjectId,
        parents: &[ObjectId],
        message: &str,
        author: &Author,
        author_secs: i64,
        committer_secs: i64,
    ) -> Result<(ObjectId, Vec<u8>), CommitWriteError> {
        let bad = |s: &str| s.contains(['<', '>', '\n']);
        if bad(&author.name) || bad(&author.email) {
            return Err(CommitWriteError::InvalidAuthor {
                name: author.name.clone(),
                email: author.email.clone(),
            });
        }
        let signature = |secs| gix::actor::Signature {
            name: author.name.as_str().into(),
            email: author.email.as_str().into(),
            time: gix::date::Time::new(secs, 0),
        };
        let mut message = message.to_owned();
        if !message.ends_with('\n') {
            message.push('\n');
        }
        let mut commit = gix::objs::Commit {
            tree,
            parents: parents.iter().copied().collect(),
            author: signature(author_secs),
            committer: signature(committer_secs),
            encoding: None,
            message: message.into(),
            extra_headers: Vec::new(),
        };
        if let Some(key) = self.signing_key() {
            // Signed over the commit as encoded without the header, as git signs it.
            let mut payload = Vec::new();
            gix::objs::WriteTo::write_to(&commit, &mut payload)
                .expect("encoding into a Vec cannot fail");
            let signature = key
                .sign(&payload)
                .map_err(|source| CommitWriteError::Sign { tree, source })?;
            commit
                .extra_headers
                .push(("gpgsig".into(), signature.into()));
        }
        let mut buf = Vec::new();
        gix::objs::WriteTo::write_to(&commit, &mut buf).expect("encoding into a Vec cannot fail");
        let id = hash(gix::objs::Kind::Commit, &buf)
            .map_err(|source| CommitWriteError::Hash { tree, source })?;
        Ok((id, buf))
    }
}

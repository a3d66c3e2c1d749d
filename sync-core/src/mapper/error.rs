//! The mapper's errors: a bad name or a key stored twice (`MapError`), and failures while
//! reading an existing tree (`PlanError`). Each names the path and/or key it is about.

use crate::types::Key;

/// How a path relative to the area directory is shown in messages (the root has no name).
fn shown(path: &str) -> &str {
    if path.is_empty() {
        "<area root>"
    } else {
        path
    }
}

/// What is wrong with one file or directory name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameProblem {
    #[error("empty name")]
    Empty,
    #[error("`.` and `..` are not names")]
    Dot,
    #[error(
        "`%` must start `%XX` (two uppercase hex digits), `%empty`, `%self` or the `%+` suffix"
    )]
    BadEscape,
    #[error("case tag `~{found}` does not match the decoded name, whose tag is `~{expected}`")]
    BadTag { found: String, expected: String },
    #[error("`%self` cannot be at the area root")]
    SelfAtRoot,
    #[error("`%self` must be a file")]
    SelfNotFile,
    #[error("`%self` cannot be inside a continuation (`%+`) directory")]
    SelfInContinuation,
    #[error("a continuation name (ending in `%+`) must be a directory")]
    ContinuationNotDir,
}

/// A path that is not a valid mapping of a key, or two paths holding one key.
/// Paths are relative to the area directory; keys are relative to the area prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("bad name `{name}` in `{}`: {problem}", shown(path))]
    BadName {
        path: String,
        name: String,
        problem: NameProblem,
    },
    #[error("key `{key}` is stored twice: at `{first}` and at `{second}`")]
    Duplicate {
        key: Key,
        first: String,
        second: String,
    },
}

/// Reading an existing area tree failed: the tree source failed, or the tree holds a bad path.
#[derive(Debug, thiserror::Error)]
pub enum PlanError<E>
where
    E: std::error::Error + Send + Sync + 'static,
{
    #[error("cannot list directory `{}` of the area tree", shown(path))]
    List {
        path: String,
        #[source]
        source: E,
    },
    #[error(transparent)]
    Map(#[from] MapError),
}

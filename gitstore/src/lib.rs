//! kvgit Git store (in progress).

//! Shared test support (in progress).

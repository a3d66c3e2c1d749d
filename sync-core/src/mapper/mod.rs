//! Key <-> path mapping (in progress).

//! The three-way sync rule (in progress).

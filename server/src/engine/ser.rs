//! Serde helpers for the report types: their fields hold types of crates without serde
//! (`Key`, `Revision`, `ObjectId`), written here as the text people read (a key as `Key`
//! displays it, a commit as its full hex id) and a revision as a number.

use serde::Serializer;
use std::fmt::Display;
use sync_core::Revision;

/// Any `Display` value, as a string.
pub fn display<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// An optional `Display` value, as a string or null.
pub fn display_opt<T: Display, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

/// A list of `Display` values, as a list of strings.
pub fn display_seq<T: Display, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(ToString::to_string))
}

/// A revision, as a number.
pub fn revision<S: Serializer>(v: &Revision, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(v.0)
}

/// An optional revision, as a number or null.
pub fn revision_opt<S: Serializer>(v: &Option<Revision>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_u64(v.0),
        None => s.serialize_none(),
    }
}

/// Bytes (a value), as a string, invalid UTF-8 replaced.
pub fn bytes_lossy<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(v))
}

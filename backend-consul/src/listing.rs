//! Reading a prefix: one `GET /v1/kv/<prefix>?recurse` (one consistent state of the store,
//! at its `X-Consul-Index`), parsed entry by entry with values decoded from base64 to bytes.
//!
//! A listing of 100k+ keys is one large JSON array: it is parsed from the response buffer
//! without an intermediate document, keys borrowed where JSON needs no unescaping, and
//! values decoded only for the entries the caller keeps.

use crate::backend::Conn;
use crate::errors::{other, KIND};
use crate::http::Query;
use crate::keys;
use base64::Engine;
use serde::de::{Deserializer, Error as _, SeqAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::time::Duration;
use sync_core::{BackendError, Key, KvEntry, Revision};

/// One element of Consul's KV listing (`DirEntry`); other fields are skipped.
#[derive(Deserialize)]
pub(crate) struct RawEntry<'a> {
    #[serde(rename = "Key", borrow)]
    pub key: Cow<'a, str>,
    #[serde(rename = "Value", borrow, default)]
    pub value: Option<Cow<'a, str>>,
    #[serde(rename = "ModifyIndex")]
    pub modify_index: u64,
    #[serde(rename = "Session", borrow, default)]
    pub session: Option<Cow<'a, str>>,
}

impl RawEntry<'_> {
    /// The value as bytes: Consul sends base64, and `null` for an empty value.
    pub fn decode_value(&self) -> Result<Vec<u8>, BackendError> {
        match &self.value {
            None => Ok(Vec::new()),
            Some(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| other(format!("value of key {:?} is not base64: {e}", self.key))),
        }
    }
}

/// Calls `f` for each entry of a listing body, in the order Consul sent them, without
/// building the whole array first.
pub(crate) fn for_each_entry<'de>(
    body: &'de [u8],
    f: impl FnMut(RawEntry<'de>) -> Result<(), BackendError>,
) -> Result<(), BackendError> {
    struct Each<F> {
        f: F,
        failed: Option<BackendError>,
    }
    impl<'de, F: FnMut(RawEntry<'de>) -> Result<(), BackendError>> Visitor<'de> for &mut Each<F> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an array of KV entries")
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while let Some(entry) = seq.next_element::<RawEntry<'de>>()? {
                if let Err(e) = (self.f)(entry) {
                    self.failed = Some(e);
                    return Err(A::Error::custom("stopped"));
                }
            }
            Ok(())
        }
    }
    let mut each = Each { f, failed: None };
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = de.deserialize_any(&mut each).and_then(|()| de.end());
    match (parsed, each.failed) {
        (_, Some(e)) => Err(e),
        (Err(e), None) => Err(other(format!("KV listing is not valid JSON: {e}"))),
        (Ok(()), None) => Ok(()),
    }
}

/// Keys under a prefix with their `ModifyIndex`, sorted bytewise, packed: key suffixes
/// (after the prefix) in one buffer with end offsets. A million 40-byte suffixes take
/// ~52 MB, against ~100 MB as a `Vec<(Key, u64)>`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct KeySet {
    bytes: Vec<u8>,
    ends: Vec<u32>,
    indexes: Vec<u64>,
    unsorted: bool,
}

impl KeySet {
    pub fn len(&self) -> usize {
        self.indexes.len()
    }

    pub fn suffix(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.bytes[start..self.ends[i] as usize]
    }

    /// The `ModifyIndex` recorded for `suffix`.
    pub fn find(&self, suffix: &[u8]) -> Option<u64> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.suffix(mid).cmp(suffix) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(self.indexes[mid]),
            }
        }
        None
    }

    /// Appends; out-of-order keys are remembered and sorted by `finish`.
    pub fn push(&mut self, suffix: &[u8], index: u64) -> Result<(), BackendError> {
        if let Some(last) = self.len().checked_sub(1) {
            if self.suffix(last) >= suffix {
                self.unsorted = true;
            }
        }
        self.bytes.extend_from_slice(suffix);
        let end = u32::try_from(self.bytes.len())
            .map_err(|_| other("a prefix holds more than 4 GiB of key names".into()))?;
        self.ends.push(end);
        self.indexes.push(index);
        Ok(())
    }

    /// Sorts if Consul sent keys out of order (it never does: its radix tree iterates in
    /// byte order) and refuses duplicates.
    pub fn finish(self) -> Result<KeySet, BackendError> {
        if !self.unsorted {
            return Ok(self);
        }
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.sort_by(|&a, &b| self.suffix(a).cmp(self.suffix(b)));
        let mut sorted = KeySet::default();
        for i in order {
            if sorted.len() > 0 && sorted.suffix(sorted.len() - 1) == self.suffix(i) {
                return Err(other(format!(
                    "KV listing holds key suffix {} twice",
                    Key(self.suffix(i).to_vec())
                )));
            }
            sorted.push(self.suffix(i), self.indexes[i])?;
        }
        Ok(sorted)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], u64)> + '_ {
        (0..self.len()).map(|i| (self.suffix(i), self.indexes[i]))
    }

    /// Heap bytes held (for the memory budget test).
    #[cfg(test)]
    pub fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + self.ends.capacity() * 4 + self.indexes.capacity() * 8
    }
}

/// Which values a listing keeps.
#[derive(Clone, Copy)]
pub(crate) enum Collect<'a> {
    /// Every entry (a snapshot).
    All,
    /// Entries whose `ModifyIndex` differs from (or is missing in) this set: the puts since.
    ChangedSince(&'a KeySet),
    /// No values: only the key set.
    KeysOnly,
}

/// A prefix as read by one request.
#[derive(Debug)]
pub(crate) struct Listing {
    /// `X-Consul-Index`: the highest `ModifyIndex` or tombstone under the listed prefix, or
    /// the KV table's index when there is neither. Never 0 (Consul's rule: 0 reads as 1).
    pub index: u64,
    pub keys: KeySet,
    /// The entries `Collect` asked for, sorted by key.
    pub entries: Vec<KvEntry>,
}

/// How a listing waits.
#[derive(Clone, Copy)]
pub(crate) enum Wait {
    /// Answer now.
    No,
    /// A blocking query: answer when the prefix's index passes `index`, or after `wait`.
    Block { index: u64, wait: Duration },
}

/// Reads every key under `prefix` with one request. 404 is Consul's answer for "no keys",
/// every other failure is an error (never an empty listing).
pub(crate) async fn list(
    conn: &Conn,
    prefix: &[u8],
    collect: Collect<'_>,
    wait: Wait,
) -> Result<Listing, BackendError> {
    // Keys are UTF-8; a prefix cut inside a character is listed up to its last whole one.
    let text = match std::str::from_utf8(prefix) {
        Ok(t) => t,
        Err(e) => std::str::from_utf8(&prefix[..e.valid_up_to()]).unwrap_or_default(),
    };
    let listed = keys::listable_prefix(text);
    let mut query = Query::new().flag("recurse");
    let mut timeout = conn.http.request_timeout;
    if let Wait::Block { index, wait } = wait {
        query = query
            .param("index", index.max(1))
            .param("wait", format!("{}ms", wait.as_millis()));
        // Consul adds up to wait/16 of jitter before answering.
        timeout += wait + wait / 16;
    }
    let uri = conn
        .http
        .uri(&format!("/v1/kv/{}", keys::path(listed)), query);
    let resp = conn
        .http
        .send("list", hyper::Method::GET, uri, None, timeout)
        .await?;
    let index = resp.index.ok_or_else(|| {
        other(format!(
            "list: HTTP {} without X-Consul-Index",
            resp.status.as_u16()
        ))
    })?;
    let index = index.max(1);
    if resp.filtered_by_acls {
        // Consul drops the entries the token may not read instead of refusing: what is
        // left is not the prefix's content, and reading it as such would delete the rest.
        return Err(BackendError::PermissionDenied {
            backend: crate::errors::KIND,
            detail: format!(
                "list {listed:?}: Consul left out keys the token may not read \
                 (X-Consul-Results-Filtered-By-ACLs); the token needs read on the whole \
                 prefix (credential: {})",
                conn.http.ctx.credential
            ),
        });
    }
    match resp.status.as_u16() {
        200 => parse(&resp.body, prefix, collect, index),
        404 => Ok(Listing {
            index,
            keys: KeySet::default(),
            entries: Vec::new(),
        }),
        _ => Err(conn.http.ctx.status("list", resp.status, &resp.body)),
    }
}

fn parse(
    body: &[u8],
    prefix: &[u8],
    collect: Collect<'_>,
    index: u64,
) -> Result<Listing, BackendError> {
    let mut keys = KeySet::default();
    let mut entries = Vec::new();
    for_each_entry(body, |e| {
        let key = e.key.as_bytes();
        // The listing may cover a wider, path-safe ancestor of the prefix.
        let Some(suffix) = key.strip_prefix(prefix) else {
            return Ok(());
        };
        keys.push(suffix, e.modify_index)?;
        let keep = match collect {
            Collect::All => true,
            Collect::ChangedSince(old) => old.find(suffix) != Some(e.modify_index),
            Collect::KeysOnly => false,
        };
        if keep {
            entries.push(KvEntry {
                key: Key(key.to_vec()),
                value: e.decode_value()?,
                mod_revision: Revision(e.modify_index),
            });
        }
        Ok(())
    })?;
    let sorted = !keys.unsorted;
    let keys = keys.finish()?;
    if !sorted {
        tracing::warn!(
            backend = KIND,
            "Consul listed keys out of order; sorted them"
        );
        entries.sort_by(|a, b| a.key.cmp(&b.key));
    }
    Ok(Listing {
        index,
        keys,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(entries: &[(&str, Option<&str>, u64)]) -> Vec<u8> {
        let items: Vec<serde_json::Value> = entries
            .iter()
            .map(|(k, v, i)| {
                serde_json::json!({
                    "LockIndex": 0, "Key": k, "Flags": 0, "Value": v,
                    "CreateIndex": i, "ModifyIndex": i
                })
            })
            .collect();
        serde_json::to_vec(&items).unwrap()
    }

    #[test]
    fn values_are_bytes_and_null_is_empty() {
        // "/w==" is 0xff; "AMMo/w==" is 00 c3 28 ff (not UTF-8).
        let b = body(&[
            ("p/a", Some("AMMo/w=="), 7),
            ("p/b", None, 8),
            ("q/x", Some("eA=="), 9),
        ]);
        let l = parse(&b, b"p/", Collect::All, 9).unwrap();
        assert_eq!(l.keys.len(), 2, "q/x is not under p/");
        assert_eq!(l.entries[0].value, vec![0x00, 0xc3, 0x28, 0xff]);
        assert_eq!(l.entries[0].mod_revision, Revision(7));
        assert_eq!(l.entries[1].value, Vec::<u8>::new());
        assert_eq!(l.keys.find(b"b"), Some(8));
    }

    #[test]
    fn escaped_keys_are_read_exactly() {
        let b = body(&[("p/\u{0}nul", None, 1), ("p/caf\u{e9} \"q\"", None, 2)]);
        let l = parse(&b, b"p/", Collect::All, 2).unwrap();
        assert_eq!(l.entries[0].key, Key::from("p/\u{0}nul"));
        assert_eq!(l.entries[1].key, Key::from("p/caf\u{e9} \"q\""));
    }

    #[test]
    fn changed_since_keeps_only_changed_values() {
        let mut old = KeySet::default();
        old.push(b"a", 5).unwrap();
        old.push(b"b", 6).unwrap();
        let b = body(&[
            ("p/a", Some("eA=="), 5),
            ("p/b", Some("eQ=="), 9),
            ("p/c", None, 9),
        ]);
        let l = parse(&b, b"p/", Collect::ChangedSince(&old), 9).unwrap();
        let keys: Vec<_> = l.entries.iter().map(|e| e.key.clone()).collect();
        assert_eq!(keys, vec![Key::from("p/b"), Key::from("p/c")]);
        assert_eq!(l.keys.len(), 3);
    }

    #[test]
    fn out_of_order_listings_are_sorted_and_duplicates_refused() {
        let b = body(&[("p/b", None, 2), ("p/a", None, 1)]);
        let l = parse(&b, b"p/", Collect::All, 2).unwrap();
        assert_eq!(l.keys.suffix(0), b"a");
        assert_eq!(l.entries[0].key, Key::from("p/a"));
        let dup = body(&[("p/b", None, 2), ("p/a", None, 1), ("p/b", None, 3)]);
        assert!(parse(&dup, b"p/", Collect::All, 3).is_err());
    }

    #[test]
    fn bad_json_and_bad_base64_are_errors_not_empty() {
        assert!(parse(b"[{\"Key\":", b"", Collect::All, 1).is_err());
        assert!(parse(b"{}", b"", Collect::All, 1).is_err());
        let b = body(&[("p/a", Some("!!"), 1)]);
        assert!(parse(&b, b"p/", Collect::All, 1).is_err());
        assert_eq!(parse(b"null", b"", Collect::All, 1).unwrap().keys.len(), 0);
    }

    #[test]
    fn a_million_keys_stay_well_under_100_mb() {
        let mut set = KeySet::default();
        for i in 0..1_000_000u64 {
            set.push(
                format!("service-{:06}/config/settings.yaml", i).as_bytes(),
                i,
            )
            .unwrap();
        }
        let set = set.finish().unwrap();
        assert!(set.heap_bytes() < 64 << 20, "{} bytes", set.heap_bytes());
        assert_eq!(
            set.find(b"service-123456/config/settings.yaml"),
            Some(123456)
        );
        assert_eq!(set.find(b"service-123456/config"), None);
    }
}

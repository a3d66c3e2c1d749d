//! Deciding a set of keys by the sync rule on blob ids (no value is read to compare), and
//! collecting what each side must receive and what the base becomes.

use gitstore::ObjectId;
use sync_core::rule::{decide, Action, Base, Rule};

/// One key's three sides, as blob ids.
pub struct Sides {
    pub base: Base<ObjectId>,
    pub live: Option<ObjectId>,
    pub desired: Option<ObjectId>,
}

/// What the rule gives each side for one key, as blob ids (`Some(None)`: delete).
pub struct KeyDecision {
    /// The new Git content, when Git must change.
    pub git: Option<Option<ObjectId>>,
    /// The new KV content, when the KV store must change.
    pub kv: Option<Option<ObjectId>>,
    /// Git overwrites a live value that changed too (counted in kvgit_conflicts_total).
    pub conflict: bool,
    /// The live value drifted from Git (git-to-kv).
    pub drift: bool,
}

impl Sides {
    pub fn decide(&self, rule: Rule) -> KeyDecision {
        let base = match &self.base {
            Base::Unknown => Base::Unknown,
            Base::Absent => Base::Absent,
            Base::Present(id) => Base::Present(id),
        };
        let d = decide(rule, base, self.live.as_ref(), self.desired.as_ref());
        let flat = |a: Action<ObjectId>| match a {
            Action::Put(id) => Some(id),
            Action::Delete => None,
        };
        KeyDecision {
            git: d.git.map(flat),
            kv: d.kv.map(flat),
            conflict: d.conflict,
            drift: d.drift,
        }
    }
}

/// Walks three maps sorted by key in step and yields each key of any of them once, in
/// order, with what each holds for it: n comparisons where lookups per key cost n log n.
pub fn union3<'a, A, B, C>(
    a: impl IntoIterator<Item = (&'a Vec<u8>, A)>,
    b: impl IntoIterator<Item = (&'a Vec<u8>, B)>,
    c: impl IntoIterator<Item = (&'a Vec<u8>, C)>,
) -> impl Iterator<Item = (&'a Vec<u8>, Option<A>, Option<B>, Option<C>)> {
    let (mut a, mut b, mut c) = (
        a.into_iter().peekable(),
        b.into_iter().peekable(),
        c.into_iter().peekable(),
    );
    std::iter::from_fn(move || {
        let key: &'a Vec<u8> = [
            a.peek().map(|x| x.0),
            b.peek().map(|x| x.0),
            c.peek().map(|x| x.0),
        ]
        .into_iter()
        .flatten()
        .min()?;
        let x = a.next_if(|(k, _)| *k == key).map(|(_, v)| v);
        let y = b.next_if(|(k, _)| *k == key).map(|(_, v)| v);
        let z = c.next_if(|(k, _)| *k == key).map(|(_, v)| v);
        Some((key, x, y, z))
    })
}

/// After Git received `git_after` and the KV store `live_after` for a key, what the base
/// must hold: the agreed value where both sides are equal, the old base otherwise.
pub fn base_after(
    old: &Base<ObjectId>,
    live_after: Option<ObjectId>,
    git_after: Option<ObjectId>,
) -> Option<Option<ObjectId>> {
    let old_value = match old {
        Base::Present(id) => Some(*id),
        _ => None,
    };
    let new_value = if live_after == git_after {
        live_after
    } else {
        old_value
    };
    // Some(change) when the base tree must change for this key.
    let changed = match old {
        Base::Unknown => new_value.is_some(),
        _ => new_value != old_value,
    };
    changed.then_some(new_value)
}

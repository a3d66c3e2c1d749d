//! Deciding a set of keys by the sync rule on blob ids (no value is read to compare), and
//! collecting what each side must receive and what the base becomes.

use gitstore::ObjectId;
use std::collections::BTreeMap;
use sync_core::rule::{decide, Action, Base, Rule};

/// One key's three sides, as blob ids.
pub struct Sides {
    pub base: Base<ObjectId>,
    pub live: Option<ObjectId>,
    pub desired: Option<ObjectId>,
}

/// What a pass over a set of keys decided.
#[derive(Default)]
pub struct Outcome {
    /// Relative key -> new Git content (`None` = delete): the commit.
    pub git: BTreeMap<Vec<u8>, Option<ObjectId>>,
    /// Relative key -> new KV content: the apply.
    pub kv: BTreeMap<Vec<u8>, Option<ObjectId>>,
    /// Keys whose live value Git overwrites (counted in kvgit_conflicts_total).
    pub conflicts: Vec<Vec<u8>>,
    /// Keys whose live value drifted from Git (git-to-kv).
    pub drift: Vec<Vec<u8>>,
}

impl Outcome {
    pub fn add(&mut self, rule: Rule, rel: Vec<u8>, s: &Sides) {
        let base = match &s.base {
            Base::Unknown => Base::Unknown,
            Base::Absent => Base::Absent,
            Base::Present(id) => Base::Present(id),
        };
        let d = decide(rule, base, s.live.as_ref(), s.desired.as_ref());
        let flat = |a: Action<ObjectId>| match a {
            Action::Put(id) => Some(id),
            Action::Delete => None,
        };
        if d.conflict {
            self.conflicts.push(rel.clone());
        }
        if d.drift {
            self.drift.push(rel.clone());
        }
        if let Some(a) = d.git {
            self.git.insert(rel.clone(), flat(a));
        }
        if let Some(a) = d.kv {
            self.kv.insert(rel, flat(a));
        }
    }
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

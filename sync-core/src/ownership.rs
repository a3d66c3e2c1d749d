//! Area ownership: the lease and claim types a backend provides, and the rendezvous
//! (highest-random-weight) choice of which live node should own which area.

use crate::types::Key;
use std::fmt;
use std::time::Duration;

/// A backend lease that claims hang on: an etcd lease id, a Consul session id. When it is
/// not renewed within its TTL the backend drops every claim made with it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseId(pub String);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A lease as granted: its id and the TTL the backend actually applies (it may round up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: LeaseId,
    pub ttl: Duration,
}

/// The fencing token of a claim: the backend revision at which it was acquired. A later
/// claim of the same key always has a larger epoch, so a commit carrying an older epoch
/// comes from a stale owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One held claim, as listed by `KvBackend::claims`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub key: Key,
    /// What the holder wrote (kvgit: the node name, or a member record).
    pub value: Vec<u8>,
    pub lease: LeaseId,
    pub epoch: Epoch,
}

/// `<ownership_prefix>members/`: one record per live node, `members/<node>`.
pub fn members_prefix(ownership_prefix: &[u8]) -> Vec<u8> {
    [ownership_prefix, b"members/"].concat()
}

/// `<ownership_prefix>areas/`: one claim per owned area, `areas/<area>`, holding the
/// owner's node name. Both the service and `kvgit status` read owners here.
pub fn owners_prefix(ownership_prefix: &[u8]) -> Vec<u8> {
    [ownership_prefix, b"areas/"].concat()
}

/// What renewing a lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Renewed: the backend keeps it at least this long from the moment of the request.
    Alive { ttl: Duration },
    /// Expired or revoked: every claim made with it is gone.
    Gone,
}

/// The node that should own `area` among `nodes`: the one with the highest weight of
/// hash(node, area). Adding or removing a node moves only the areas it wins or held.
pub fn rendezvous_owner<'a>(
    area: &str,
    nodes: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    nodes
        .into_iter()
        .map(|n| (weight(n, area), n))
        .max()
        .map(|(_, n)| n)
}

/// A stable 64-bit mix of node and area (FNV-1a, then a finaliser for avalanche); stable
/// across versions and platforms, since every node must compute the same answer.
fn weight(node: &str, area: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes().chain([0u8]).chain(area.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64 finaliser
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn areas(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("area-{i}")).collect()
    }

    #[test]
    fn every_node_computes_the_same_owner_whatever_the_order() {
        let a = ["core-1", "core-2", "core-3"];
        let b = ["core-3", "core-1", "core-2"];
        for area in areas(50) {
            assert_eq!(rendezvous_owner(&area, a), rendezvous_owner(&area, b));
        }
        assert_eq!(rendezvous_owner("x", std::iter::empty()), None);
    }

    #[test]
    fn areas_spread_evenly_over_nodes() {
        let nodes = ["core-1", "core-2", "core-3"];
        let mut count: BTreeMap<&str, usize> = BTreeMap::new();
        for area in areas(3000) {
            *count
                .entry(rendezvous_owner(&area, nodes).unwrap())
                .or_default() += 1;
        }
        for n in nodes {
            let c = count.get(n).copied().unwrap_or(0);
            assert!(
                (850..=1150).contains(&c),
                "{n} owns {c} of 3000 areas: {count:?}"
            );
        }
    }

    #[test]
    fn a_node_leaving_moves_only_its_own_areas() {
        let before = ["core-1", "core-2", "core-3"];
        let after = ["core-1", "core-3"];
        for area in areas(500) {
            let was = rendezvous_owner(&area, before).unwrap();
            let now = rendezvous_owner(&area, after).unwrap();
            if was != "core-2" {
                assert_eq!(was, now, "{area} moved from {was} to {now}");
            }
        }
    }

    #[test]
    fn a_node_joining_takes_only_areas_it_wins() {
        let before = ["core-1", "core-2"];
        let after = ["core-1", "core-2", "core-3"];
        let mut moved = 0;
        for area in areas(600) {
            let was = rendezvous_owner(&area, before).unwrap();
            let now = rendezvous_owner(&area, after).unwrap();
            if was != now {
                assert_eq!(now, "core-3");
                moved += 1;
            }
        }
        assert!((120..=280).contains(&moved), "{moved} of 600 moved");
    }
}

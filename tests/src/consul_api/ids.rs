//! Random numbers and UUIDs without a crypto dependency: session IDs, the node and cluster
//! IDs and blocking-query jitter only need to be unique and spread out, not secret.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Makes two calls within the same nanosecond still hash different inputs.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// 64 random-looking bits: each `RandomState` is seeded from the OS once per thread and
/// then perturbed, and the input adds a counter and the clock.
pub(crate) fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    hasher.write_u128(nanos);
    hasher.finish()
}

/// A version-4 style UUID string (`xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`), as Consul's IDs look.
pub(crate) fn uuid() -> String {
    let mut bits = (u128::from(random_u64()) << 64) | u128::from(random_u64());
    // Version 4 and the RFC 4122 variant, so tools that parse UUIDs accept ours.
    bits = (bits & !(0xf << 76)) | (0x4 << 76);
    bits = (bits & !(0x3 << 62)) | (0x2 << 62);
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_well_formed_and_distinct() {
        let a = uuid();
        let b = uuid();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
    }
}

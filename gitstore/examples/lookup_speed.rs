//! Measures `mapper::lookup` of one batch of sorted keys in one area of the bench's layout
//! (`node-DDDD/key-IIIIIII`, 100 keys a directory), as an export's step makes them: a
//! figure for the notes, not a test.
//! `cargo run -p gitstore --release --example lookup_speed [AREA_KEYS] [BATCH]`

use std::time::{Duration, Instant};

use gitstore::{GitStore, Plan};
use sync_core::mapper::{lookup, Locator};
use sync_core::tree::PlanEntry;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arg = |n: usize, default: usize| -> Result<usize, Box<dyn std::error::Error>> {
        Ok(match std::env::args().nth(n) {
            Some(a) => a.parse()?,
            None => default,
        })
    };
    let (n, batch) = (arg(1, 250_000)?, arg(2, 6_000)?);
    let mut area = Plan::default();
    for d in 0..n.div_ceil(100) {
        let mut dir = Plan::default();
        for i in d * 100..((d + 1) * 100).min(n) {
            let value = format!("{{\"key\":{i}}}").into_bytes();
            dir.entries
                .push((format!("key-{i:07}"), PlanEntry::File(value)));
        }
        area.entries
            .push((format!("node-{d:04}"), PlanEntry::Dir(dir)));
    }
    let tmp = tempfile::tempdir()?;
    let store = GitStore::open_or_init(&tmp.path().join("repo"), "main")?;
    let tree = store.write_plan_packed(&area)?;
    // A batch: `batch` distinct keys of the area in key order (a fixed pseudo-random pick).
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut picked = std::collections::BTreeSet::new();
    while picked.len() < batch.min(n) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        picked.insert(usize::try_from(seed % n as u64)?);
    }
    let keys: Vec<Vec<u8>> = picked
        .iter()
        .map(|i| format!("node-{:04}/key-{i:07}", i / 100).into_bytes())
        .collect();
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..9 {
        let mut loc = Locator::default();
        let t = Instant::now();
        for k in &keys {
            lookup(&store, Some(&tree), k, &mut loc)?.ok_or("a key of the area is missing")?;
        }
        cold.push(t.elapsed());
        // Again with every directory listed already: the searches alone.
        let t = Instant::now();
        for k in &keys {
            lookup(&store, Some(&tree), k, &mut loc)?.ok_or("a key of the area is missing")?;
        }
        warm.push(t.elapsed());
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    println!(
        "{} sorted lookups in an area of {n} keys ({} directories): {:?} with the listings \
         read, {:?} with them listed already (medians of 9)",
        keys.len(),
        n.div_ceil(100),
        median(cold),
        median(warm)
    );
    Ok(())
}

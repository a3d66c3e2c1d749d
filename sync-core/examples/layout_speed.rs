//! Measures `mapper::layout_all` on 1M keys (a figure for the notes, not a test):
//! `cargo run -p sync-core --release --example layout_speed`.

use sync_core::mapper::layout_all;

fn main() {
    let keys: Vec<(Vec<u8>, Vec<u8>)> = (0..1_000_000u32)
        .map(|i| {
            let k = format!("region-{}/Node-{}/svc{}/status", i % 7, i % 1000, i);
            (k.into_bytes(), i.to_le_bytes().to_vec())
        })
        .collect();
    let start = std::time::Instant::now();
    let plan = layout_all::<u64, Vec<u8>>(keys);
    println!(
        "layout_all of 1M keys: {:?} ({} top-level entries)",
        start.elapsed(),
        plan.entries.len()
    );
}

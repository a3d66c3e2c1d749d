//! Benchmark: 100k files of ~200 bytes over 4 dirs (`a{0..3}/node-{i/100}/key-{i}`), written
//! once as one pack and once as loose objects.
//! `cargo run -p gitstore --release --example bulk_write [N] [packed|loose]`

use std::time::Instant;

use gitstore::{GitStore, Plan};
use sync_core::tree::PlanEntry;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 100_000,
    };
    let only = std::env::args().nth(2);
    let t = Instant::now();
    let plan = build_plan(n);
    println!(
        "plan of {n} files built in {:.2}s",
        t.elapsed().as_secs_f64()
    );

    let tmp = tempfile::tempdir()?;
    let mut trees = Vec::new();
    let modes = [("write_plan_packed", true), ("write_plan (loose)", false)];
    for (label, packed) in modes
        .into_iter()
        .filter(|(_, packed)| match only.as_deref() {
            Some("packed") => *packed,
            Some("loose") => !*packed,
            _ => true,
        })
    {
        let store = GitStore::open_or_init(&tmp.path().join(label.replace(' ', "_")), "main")?;
        let t = Instant::now();
        let tree = if packed {
            store.write_plan_packed(&plan)?
        } else {
            store.write_plan(&plan)?
        };
        println!("{label}: {:.2}s (tree {tree})", t.elapsed().as_secs_f64());
        let t = Instant::now();
        let files = store.files_under(tree)?;
        assert_eq!(files.len(), n);
        println!(
            "  files_under read back {} files in {:.2}s",
            files.len(),
            t.elapsed().as_secs_f64()
        );
        trees.push(tree);
    }
    assert!(
        trees.windows(2).all(|w| w[0] == w[1]),
        "loose and packed writes must give the same tree"
    );
    Ok(())
}

/// `a{i%4}/node-{i/100}/key-{i}` with a ~200-byte value each.
fn build_plan(n: usize) -> Plan {
    let mut areas: Vec<Vec<Plan>> = vec![Vec::new(); 4];
    for i in 0..n {
        let nodes = &mut areas[i % 4];
        let node = i / 100;
        while nodes.len() <= node {
            nodes.push(Plan::default());
        }
        let value = format!("{{\"key\":{i},\"payload\":\"{}\"}}", "x".repeat(170)).into_bytes();
        nodes[node]
            .entries
            .push((format!("key-{i}"), PlanEntry::File(value)));
    }
    let mut root = Plan::default();
    for (a, nodes) in areas.into_iter().enumerate() {
        let mut area = Plan::default();
        for (node, dir) in nodes.into_iter().enumerate() {
            if !dir.is_empty() {
                area.entries
                    .push((format!("node-{node}"), PlanEntry::Dir(dir)));
            }
        }
        root.entries.push((format!("a{a}"), PlanEntry::Dir(area)));
    }
    root
}

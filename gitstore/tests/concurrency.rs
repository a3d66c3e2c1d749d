//! One handle shared by threads (as `spawn_blocking` tasks share it): parallel writes and a
//! real compare-and-swap race on the branch.

mod common;

use std::sync::{Arc, Barrier};

use common::*;
use gitstore::RefUpdateError;

#[test]
fn threads_share_one_handle_and_exactly_one_wins_the_ref_race() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = Arc::new(store(tmp.path()));
    let base_tree = s.write_plan(&plan(&[("k", b"base")])).expect("base");
    let base = commit(&s, base_tree, None, "base", 1);

    let threads = 6;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (s, barrier) = (Arc::clone(&s), Arc::clone(&barrier));
            std::thread::spawn(move || {
                let files: Vec<(String, Vec<u8>)> = (0..200)
                    .map(|i| {
                        (
                            format!("t{t}/d{}/k{i}", i % 5),
                            format!("{t}-{i}").into_bytes(),
                        )
                    })
                    .collect();
                let refs: Vec<(&str, &[u8])> = files
                    .iter()
                    .map(|(p, c)| (p.as_str(), c.as_slice()))
                    .collect();
                let p = plan(&refs);
                let tree = if t % 2 == 0 {
                    s.write_plan_packed(&p)
                } else {
                    s.write_plan(&p).map_err(Into::into)
                }
                .expect("write");
                assert_eq!(s.files_under(tree).expect("read back").len(), 200);
                let c = s
                    .write_commit(tree, &[base], &format!("t{t}"), &author(), 2)
                    .expect("commit");
                barrier.wait();
                s.update_ref(s.branch_ref(), c, Some(base), "race")
                    .map(|()| c)
            })
        })
        .collect();
    let results: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for r in &results {
        if let Err(err) = r {
            assert!(matches!(err, RefUpdateError::Conflict { .. }), "{err}");
        }
    }
    assert_eq!(s.tip().expect("tip"), Some(*winners[0]));
    fsck(s.git_dir());
}

//! Shared test helpers: temp repositories, plan builders and a real `git` to check results.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use gitstore::{Author, GitStore, ObjectId, Plan};
use sync_core::tree::{EntryKind, PlanEntry};

pub fn store(dir: &Path) -> GitStore {
    GitStore::open_or_init(&dir.join("repo.git"), "main").expect("open a fresh bare repo")
}

/// Runs real git (isolated from user config) in `dir`, returning stdout; panics on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = git_output(dir, args);
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8 git output")
}

pub fn git_output(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t")
        .args(args)
        .output()
        .expect("run git")
}

pub fn fsck(git_dir: &Path) {
    git(git_dir, &["fsck", "--strict", "--no-dangling"]);
}

pub fn author() -> Author {
    Author {
        name: "kvgit test".into(),
        email: "test@kvgit".into(),
    }
}

/// Builds a plan from (path, content) pairs.
pub fn plan(files: &[(&str, &[u8])]) -> Plan {
    let mut root = Plan::default();
    for (path, content) in files {
        insert(&mut root, path, PlanEntry::File(content.to_vec()));
    }
    root
}

/// Adds `entry` at `path`, creating planned directories on the way.
pub fn insert(root: &mut Plan, path: &str, entry: PlanEntry<ObjectId, Vec<u8>>) {
    let mut parts: Vec<&str> = path.split('/').collect();
    let last = parts.pop().expect("non-empty path");
    let mut dir = root;
    for part in parts {
        let pos = match dir.entries.iter().position(|(n, _)| n == part) {
            Some(pos) => pos,
            None => {
                dir.entries
                    .push((part.to_owned(), PlanEntry::Dir(Plan::default())));
                dir.entries.len() - 1
            }
        };
        dir = match &mut dir.entries[pos].1 {
            PlanEntry::Dir(sub) => sub,
            _ => panic!("{part} is not a planned dir"),
        };
    }
    dir.entries.push((last.to_owned(), entry));
}

pub fn existing_dir(id: ObjectId) -> PlanEntry<ObjectId, Vec<u8>> {
    PlanEntry::Existing {
        kind: EntryKind::Dir,
        id,
    }
}

/// Commits `tree` on `main` after `parent` and moves the branch (compare-and-swap).
pub fn commit(
    store: &GitStore,
    tree: ObjectId,
    parent: Option<ObjectId>,
    msg: &str,
    time: i64,
) -> ObjectId {
    let parents: Vec<ObjectId> = parent.into_iter().collect();
    let id = store
        .write_commit(tree, &parents, msg, &author(), time)
        .expect("write commit");
    store
        .update_ref(store.branch_ref(), id, parent, msg)
        .expect("move branch");
    id
}

/// Loose object files under objects/xx/.
pub fn loose_count(git_dir: &Path) -> usize {
    let mut n = 0;
    for dir in std::fs::read_dir(git_dir.join("objects"))
        .expect("objects dir")
        .flatten()
    {
        let name = dir.file_name();
        let name = name.to_string_lossy();
        if name.len() == 2 && name.chars().all(|c| c.is_ascii_hexdigit()) {
            n += std::fs::read_dir(dir.path()).expect("fan-out dir").count();
        }
    }
    n
}

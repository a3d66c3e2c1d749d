//! Signed commits checked by real git (`verify-commit` against an allowed-signers file) and
//! the walk that finds a commit not signed by an allowed signer.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use gitstore::{AllowedSigners, GitStore, SigningKey};

/// A fresh ed25519 key without passphrase at `dir/name`.
fn keygen(dir: &Path, name: &str) -> PathBuf {
    let key = dir.join(name);
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .status()
        .expect("run ssh-keygen");
    assert!(status.success());
    key
}

#[test]
fn kvgit_commits_verify_with_git_and_unsigned_ones_are_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key_path = keygen(dir.path(), "kvgit");
    let other_path = keygen(dir.path(), "other");
    let key = SigningKey::new(&key_path).expect("usable key");
    let allowed = dir.path().join("allowed_signers");
    std::fs::write(&allowed, format!("kvgit@test {}\n", key.public_key())).expect("write");
    let allowed_signers = AllowedSigners::new(&allowed).expect("well-formed");

    let repo = dir.path().join("repo.git");
    let signed = GitStore::open_or_init(&repo, "main")
        .expect("open")
        .with_signing_key(key);
    let t1 = signed.write_plan(&plan(&[("area/a", b"1")])).expect("tree");
    let c1 = signed
        .write_commit(t1, &[], "first", &author(), 1_700_000_000)
        .expect("signed commit");
    let allowed_cfg = format!("gpg.ssh.allowedSignersFile={}", allowed.display());
    let verify = git_output(
        &repo,
        &["-c", &allowed_cfg, "verify-commit", &c1.to_string()],
    );
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert_eq!(
        signed
            .unverified_commit(&allowed_signers, None, c1, "area")
            .expect("walk"),
        None
    );

    // Unsigned, outside the area: not checked. Unsigned in the area: named.
    let unsigned = GitStore::open_or_init(&repo, "main").expect("reopen");
    let t2 = unsigned
        .write_plan(&plan(&[("area/a", b"1"), ("elsewhere/x", b"2")]))
        .expect("tree");
    let c2 = unsigned
        .write_commit(t2, &[c1], "elsewhere", &author(), 1_700_000_001)
        .expect("commit");
    assert_eq!(
        signed
            .unverified_commit(&allowed_signers, None, c2, "area")
            .expect("walk"),
        None
    );
    let t3 = unsigned
        .write_plan(&plan(&[("area/a", b"3"), ("elsewhere/x", b"2")]))
        .expect("tree");
    let c3 = unsigned
        .write_commit(t3, &[c2], "by hand", &author(), 1_700_000_002)
        .expect("commit");
    let found = signed
        .unverified_commit(&allowed_signers, Some(c1), c3, "area")
        .expect("walk")
        .expect("unsigned commit found");
    assert_eq!((found.commit, found.summary.as_str()), (c3, "by hand"));
    assert_eq!(found.reason, "not signed");
    // Behind the base: not walked.
    assert_eq!(
        signed
            .unverified_commit(&allowed_signers, Some(c3), c3, "area")
            .expect("walk"),
        None
    );

    // Signed by a key the file does not list.
    let stranger = GitStore::open_or_init(&repo, "main")
        .expect("reopen")
        .with_signing_key(SigningKey::new(&other_path).expect("usable key"));
    let c4 = stranger
        .write_commit(t1, &[c3], "stranger", &author(), 1_700_000_003)
        .expect("commit");
    let found = signed
        .unverified_commit(&allowed_signers, Some(c3), c4, "area")
        .expect("walk")
        .expect("stranger found");
    assert_eq!(found.commit, c4);
    assert!(
        found.reason.contains("not in the allowed signers"),
        "{}",
        found.reason
    );
    let verify = git_output(
        &repo,
        &["-c", &allowed_cfg, "verify-commit", &c4.to_string()],
    );
    assert!(!verify.status.success());
}

#[test]
fn keys_with_a_passphrase_and_malformed_signer_files_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("locked");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "secret", "-f"])
        .arg(&key)
        .status()
        .expect("run ssh-keygen");
    assert!(status.success());
    let err = SigningKey::new(&key).expect_err("passphrase");
    assert!(err.to_string().contains("without a passphrase"), "{err}");
    assert!(SigningKey::new(&dir.path().join("absent")).is_err());

    let file = dir.path().join("allowed");
    std::fs::write(&file, "# only a comment\n").expect("write");
    assert!(AllowedSigners::new(&file).is_err());
    std::fs::write(&file, "alice ssh-ed25519\n").expect("write");
    let err = AllowedSigners::new(&file).expect_err("malformed");
    assert!(err.to_string().contains(":1: "), "{err}");
}

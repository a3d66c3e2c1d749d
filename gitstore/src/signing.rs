//! Signed history: kvgit's commits carry an SSH signature (`gpgsig`, as `git commit -S` with
//! `gpg.format=ssh` writes it), and the commits a person adds can be checked against an
//! allowed-signers file before they are applied. Both go through `ssh-keygen -Y`, the tool
//! git itself runs, so `git verify-commit` and kvgit agree on what is signed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gix::bstr::ByteSlice as _;
use gix::ObjectId;

use crate::GitStore;

/// How long one `ssh-keygen` may run: it only hashes a commit and does one key operation.
const SSH_KEYGEN_LIMIT: Duration = Duration::from_secs(30);

/// Commits walked from a tip when the area has no base commit to stop at: more than this
/// is refused (fail closed) rather than read without end.
pub const MAX_UNBASED_WALK: usize = 10_000;

/// The SSH private key every commit is signed with (checked when made: readable, a key,
/// no passphrase).
#[derive(Debug, Clone)]
pub struct SigningKey {
    path: PathBuf,
    /// Its public half (`ssh-ed25519 AAAA...`), for allowed-signers files and messages.
    public: String,
}

/// Why a signing key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    #[error("cannot read {path}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not an SSH private key usable without a passphrase: {detail}")]
    Refused { path: PathBuf, detail: String },
    #[error(transparent)]
    Run(#[from] SshKeygenError),
}

/// A failed `ssh-keygen` run.
#[derive(Debug, thiserror::Error)]
pub enum SshKeygenError {
    #[error("could not run ssh-keygen")]
    Spawn(#[source] std::io::Error),
    #[error("ssh-keygen did not finish within {0:?}; killed")]
    TimedOut(Duration),
    #[error("ssh-keygen failed ({status}): {stderr}")]
    Failed { status: String, stderr: String },
}

impl SigningKey {
    pub fn new(path: &Path) -> Result<SigningKey, SigningKeyError> {
        std::fs::File::open(path).map_err(|source| SigningKeyError::Unreadable {
            path: path.to_owned(),
            source,
        })?;
        // An empty passphrase: a key that has one fails here instead of prompting.
        let mut cmd = Command::new("ssh-keygen");
        cmd.arg("-y").arg("-P").arg("").arg("-f").arg(path);
        let out = run(cmd, None)?;
        let public = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !out.ok || public.is_empty() {
            return Err(SigningKeyError::Refused {
                path: path.to_owned(),
                detail: out.stderr_line(),
            });
        }
        Ok(SigningKey {
            path: path.to_owned(),
            public,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The public key, one line (`ssh-ed25519 AAAA... comment`).
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// The armored SSH signature (namespace `git`) of `payload`, without a final newline.
    pub(crate) fn sign(&self, payload: &[u8]) -> Result<String, SshKeygenError> {
        let mut cmd = Command::new("ssh-keygen");
        cmd.args(["-Y", "sign", "-n", "git", "-f"]).arg(&self.path);
        let out = run(cmd, Some(payload))?;
        if !out.ok {
            return Err(out.failed());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    }
}

/// An allowed-signers file (`ssh-keygen(1)` ALLOWED SIGNERS), checked for form when made.
#[derive(Debug, Clone)]
pub struct AllowedSigners {
    path: PathBuf,
}

/// Why an allowed-signers file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AllowedSignersError {
    #[error("cannot read {path}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason} (expected `principal[,principal] [options] keytype base64`)")]
    Malformed {
        path: PathBuf,
        line: usize,
        reason: &'static str,
    },
    #[error("{path}: lists no signer")]
    Empty { path: PathBuf },
}

impl AllowedSigners {
    pub fn new(path: &Path) -> Result<AllowedSigners, AllowedSignersError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| AllowedSignersError::Unreadable {
                path: path.to_owned(),
                source,
            })?;
        let mut signers = 0;
        for (i, line) in text.lines().enumerate() {
            check_signer_line(line).map_err(|reason| AllowedSignersError::Malformed {
                path: path.to_owned(),
                line: i + 1,
                reason,
            })?;
            signers += usize::from(!is_blank_or_comment(line));
        }
        if signers == 0 {
            return Err(AllowedSignersError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(AllowedSigners {
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `signature` (armored) over `payload` is by a key this file allows for git;
    /// `Err(reason)` says why not.
    fn check(&self, signature: &str, payload: &[u8]) -> Result<Result<(), String>, VerifyError> {
        let mut file = tempfile::NamedTempFile::new().map_err(VerifyError::TempFile)?;
        file.write_all(signature.as_bytes())
            .and_then(|()| file.write_all(b"\n"))
            .map_err(VerifyError::TempFile)?;
        let mut find = Command::new("ssh-keygen");
        find.args(["-Y", "find-principals", "-f"])
            .arg(&self.path)
            .arg("-s")
            .arg(file.path());
        let found = run(find, None)?;
        let principals = String::from_utf8_lossy(&found.stdout).into_owned();
        let Some(principal) = principals.lines().map(str::trim).find(|p| !p.is_empty()) else {
            return Ok(Err("signed by a key not in the allowed signers".into()));
        };
        let mut verify = Command::new("ssh-keygen");
        verify
            .args(["-Y", "verify", "-n", "git", "-f"])
            .arg(&self.path)
            .arg("-I")
            .arg(principal)
            .arg("-s")
            .arg(file.path());
        let verified = run(verify, Some(payload))?;
        if verified.ok {
            Ok(Ok(()))
        } else {
            Ok(Err(format!(
                "bad signature for {principal}: {}",
                verified.stderr_line()
            )))
        }
    }
}

fn is_blank_or_comment(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

/// One line of an allowed-signers file: principals, optional options (which may quote
/// spaces), a key type and its base64.
fn check_signer_line(line: &str) -> Result<(), &'static str> {
    if is_blank_or_comment(line) {
        return Ok(());
    }
    let fields = split_fields(line.trim()).ok_or("unbalanced quotes")?;
    let (principals, rest) = fields.split_first().ok_or("empty line")?;
    if principals.split(',').any(str::is_empty) {
        return Err("empty principal");
    }
    // The key is the first field naming a key type; options (if any) come before it.
    let at = rest
        .iter()
        .position(|f| is_key_type(f))
        .ok_or("no key type (ssh-ed25519, ecdsa-sha2-*, ssh-rsa, sk-*)")?;
    let base64 = rest.get(at + 1).ok_or("key type without its base64 key")?;
    let valid = !base64.is_empty()
        && base64
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
    if !valid {
        return Err("the key is not base64");
    }
    Ok(())
}

fn is_key_type(f: &str) -> bool {
    f.starts_with("ssh-") || f.starts_with("ecdsa-sha2-") || f.starts_with("sk-")
}

/// Whitespace-separated fields; double quotes keep spaces inside one field.
fn split_fields(s: &str) -> Option<Vec<String>> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    fields.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if quoted {
        return None;
    }
    if !cur.is_empty() {
        fields.push(cur);
    }
    Some(fields)
}

/// A commit that is not signed by an allowed signer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unverified {
    pub commit: ObjectId,
    /// First line of its message.
    pub summary: String,
    /// Why: not signed, a key not allowed, a bad signature.
    pub reason: String,
}

impl std::fmt::Display for Unverified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short = self.commit.to_hex_with_len(12);
        write!(f, "commit {short} ({:?}): {}", self.summary, self.reason)
    }
}

/// Why the signatures could not be checked (not: a commit is unsigned).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("walking history from {tip}")]
    Walk {
        tip: ObjectId,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("more than {limit} commits reachable from {tip} and no base commit to stop at; cannot verify them all")]
    TooLong { tip: ObjectId, limit: usize },
    #[error("cannot write a signature to a temporary file")]
    TempFile(#[source] std::io::Error),
    #[error(transparent)]
    Run(#[from] SshKeygenError),
}

impl GitStore {
    /// The first commit (newest first) reachable from `tip` but not from `base` that changes
    /// the tree at `path` ("" for the root) and is not signed by one of `allowed`; `None`
    /// when all are. Without a base at most [`MAX_UNBASED_WALK`] commits are walked.
    pub fn unverified_commit(
        &self,
        allowed: &AllowedSigners,
        base: Option<ObjectId>,
        tip: ObjectId,
        path: &str,
    ) -> Result<Option<Unverified>, VerifyError> {
        let repo = self.repo();
        let walk_err =
            |e: Box<dyn std::error::Error + Send + Sync>| VerifyError::Walk { tip, source: e };
        let base = base.filter(|b| repo.has_object(*b));
        let walk = repo
            .rev_walk([tip])
            .with_hidden(base)
            .all()
            .map_err(|e| walk_err(Box::new(e)))?;
        let area_of = |tree: ObjectId| -> Result<Option<ObjectId>, VerifyError> {
            if path.is_empty() {
                return Ok(Some(tree));
            }
            self.subtree(tree, path).map_err(|e| walk_err(Box::new(e)))
        };
        for (n, info) in walk.enumerate() {
            if base.is_none() && n >= MAX_UNBASED_WALK {
                return Err(VerifyError::TooLong {
                    tip,
                    limit: MAX_UNBASED_WALK,
                });
            }
            let info = info.map_err(|e| walk_err(Box::new(e)))?;
            let commit = repo
                .find_commit(info.id)
                .map_err(|e| walk_err(Box::new(e)))?;
            let tree = commit
                .tree_id()
                .map_err(|e| walk_err(Box::new(e)))?
                .detach();
            let mine = area_of(tree)?;
            let parents: Vec<ObjectId> = commit.parent_ids().map(|p| p.detach()).collect();
            let touched = if parents.is_empty() {
                mine.is_some()
            } else {
                let mut any = false;
                for p in parents {
                    let pt = repo
                        .find_commit(p)
                        .and_then(|c| c.tree_id())
                        .map_err(|e| walk_err(Box::new(e)))?
                        .detach();
                    if area_of(pt)? != mine {
                        any = true;
                        break;
                    }
                }
                any
            };
            if !touched {
                continue;
            }
            let summary = commit
                .message_raw_sloppy()
                .lines()
                .next()
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .unwrap_or_default();
            let unverified = |reason: String| Unverified {
                commit: info.id,
                summary: summary.clone(),
                reason,
            };
            let Some((signature, payload)) = split_signature(&commit.data) else {
                return Ok(Some(unverified("not signed".into())));
            };
            if !signature.starts_with("-----BEGIN SSH SIGNATURE-----") {
                return Ok(Some(unverified("not an SSH signature".into())));
            }
            if let Err(reason) = allowed.check(&signature, &payload)? {
                return Ok(Some(unverified(reason)));
            }
        }
        Ok(None)
    }
}

/// A raw commit's `gpgsig` header value and the commit without that header (what was
/// signed), as git splits them; `None` when it has no signature.
pub(crate) fn split_signature(raw: &[u8]) -> Option<(String, Vec<u8>)> {
    let header_end = raw
        .windows(2)
        .position(|w| w == b"\n\n")
        .map_or(raw.len(), |i| i + 1);
    let mut payload = Vec::with_capacity(raw.len());
    let mut signature: Option<Vec<u8>> = None;
    let mut in_sig = false;
    let mut pos = 0;
    while pos < header_end {
        let end = raw[pos..header_end]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(header_end, |i| pos + i + 1);
        let line = &raw[pos..end];
        if in_sig && line.first() == Some(&b' ') {
            let sig = signature.as_mut().expect("in a signature");
            sig.extend_from_slice(&line[1..]);
        } else if signature.is_none() && line.starts_with(b"gpgsig ") {
            in_sig = true;
            signature = Some(line[b"gpgsig ".len()..].to_vec());
        } else {
            in_sig = false;
            payload.extend_from_slice(line);
        }
        pos = end;
    }
    payload.extend_from_slice(&raw[header_end..]);
    let sig = String::from_utf8_lossy(&signature?).into_owned();
    Some((sig, payload))
}

/// The outcome of one `ssh-keygen`.
struct RunOutput {
    ok: bool,
    status: String,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl RunOutput {
    fn stderr_line(&self) -> String {
        let text = String::from_utf8_lossy(&self.stderr);
        let line = text.lines().map(str::trim).rfind(|l| !l.is_empty());
        line.unwrap_or(&self.status).to_owned()
    }

    fn failed(&self) -> SshKeygenError {
        SshKeygenError::Failed {
            status: self.status.clone(),
            stderr: self.stderr_line(),
        }
    }
}

/// Runs `cmd` with `stdin` (or none), killed after [`SSH_KEYGEN_LIMIT`].
fn run(cmd: Command, stdin: Option<&[u8]>) -> Result<RunOutput, SshKeygenError> {
    let out = crate::cli::run_child(cmd, stdin, SSH_KEYGEN_LIMIT)
        .map_err(SshKeygenError::Spawn)?
        .ok_or(SshKeygenError::TimedOut(SSH_KEYGEN_LIMIT))?;
    Ok(RunOutput {
        ok: out.status.success(),
        status: out.status.to_string(),
        stdout: out.stdout,
        stderr: out.stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signer_lines_are_checked_for_form() {
        let ok = [
            "# comment",
            "",
            "alice@example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB",
            "a@x,b@y namespaces=\"git\" ssh-ed25519 AAAA+/=",
            "* cert-authority,namespaces=\"git,file\" ecdsa-sha2-nistp256 AAAA",
        ];
        for line in ok {
            assert_eq!(check_signer_line(line), Ok(()), "{line}");
        }
        let bad = [
            "alice@example.org",
            "alice@example.org ssh-ed25519",
            "alice ssh-ed25519 not*base64",
            ",alice ssh-ed25519 AAAA",
            "alice namespaces=\"git ssh-ed25519 AAAA",
        ];
        for line in bad {
            assert!(check_signer_line(line).is_err(), "{line}");
        }
    }

    #[test]
    fn the_signature_header_is_split_from_what_was_signed() {
        let raw = b"tree 1\nparent 2\nauthor a\ncommitter c\ngpgsig -----BEGIN SSH SIGNATURE-----\n AAAA\n -----END SSH SIGNATURE-----\n\nmessage\n";
        let (sig, payload) = split_signature(raw).expect("signed");
        assert_eq!(
            sig,
            "-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----\n"
        );
        assert_eq!(
            payload,
            b"tree 1\nparent 2\nauthor a\ncommitter c\n\nmessage\n".to_vec()
        );
        assert!(split_signature(b"tree 1\n\nmsg gpgsig x\n").is_none());
    }
}

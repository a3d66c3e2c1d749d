//! How fetch and push authenticate to a remote.
//!
//! - ssh: one deploy key, one known_hosts file, strict host key checking. Nothing of the
//!   user's ssh setup (agent, `~/.ssh/config`, `~/.ssh/known_hosts`, default identities)
//!   takes part.
//! - https: a user and a token, handed to git by kvgit's own credential helper, which reads
//!   the token from a 0600 file in a 0700 directory of kvgit's that lives only as long as
//!   the one git command. The token is never in the URL, in any argv or environment, nor in
//!   an error (git's output is scrubbed of it).

use std::ffi::OsString;
use std::fmt;
use std::io::Write as _;
use std::os::unix::ffi::OsStringExt as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

/// The credentials for remotes, set on a [`crate::GitStore`] when opening it
/// ([`crate::GitStore::with_remote_auth`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteAuth {
    /// For ssh remotes (None: plain `ssh` in batch mode).
    ssh: Option<SshFiles>,
    /// For https remotes (None: no credentials; a remote asking for some fails the command).
    https: Option<HttpsCredential>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SshFiles {
    /// The private key ssh offers, and the only one (`IdentitiesOnly`, no agent).
    ssh_key: PathBuf,
    /// The only host keys ssh accepts; an unknown or different host key fails the command.
    known_hosts: PathBuf,
}

/// The user and token for https remotes (HTTP basic authentication, as GitHub, Gitea and
/// GitLab take a token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpsCredential {
    user: String,
    token: Token,
}

/// A token whose `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why a key or known_hosts file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RemoteAuthError {
    #[error("{}: ssh cannot take this path literally (it must be absolute, UTF-8, without '\"', '\\\\', \"${{\" or control characters)", .path.display())]
    UnusablePath { path: PathBuf },
    #[error("{}: cannot read the file", .path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: could not run `ssh-keygen` to check the key", .path.display())]
    KeygenSpawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a private key without a passphrase (ssh-keygen: {stderr}); kvgit cannot type a passphrase", .path.display())]
    NotUsableKey { path: PathBuf, stderr: String },
    #[error("user {user:?}: must be non-empty, without ':' or control characters (HTTP basic authentication)")]
    UnusableUser { user: String },
    #[error("the token holds a line break or control character; git's credential protocol cannot carry it")]
    UnusableToken,
}

impl RemoteAuth {
    /// Checks both files and returns the settings: each must be readable, the key must be a
    /// private key without a passphrase (`ssh-keygen -y -P "" -f KEY` succeeds), and both
    /// paths must reach ssh unchanged (ssh expands `%` tokens and `${VAR}` in them).
    pub fn new(ssh_key: &Path, known_hosts: &Path) -> Result<RemoteAuth, RemoteAuthError> {
        for path in [ssh_key, known_hosts] {
            check_path(path)?;
            std::fs::File::open(path).map_err(|source| RemoteAuthError::Unreadable {
                path: path.to_owned(),
                source,
            })?;
        }
        check_key(ssh_key)?;
        Ok(RemoteAuth {
            ssh: Some(SshFiles {
                ssh_key: ssh_key.to_owned(),
                known_hosts: known_hosts.to_owned(),
            }),
            https: None,
        })
    }

    /// Credentials for https remotes only: `user` and `token` (basic authentication).
    pub fn https(user: &str, token: String) -> Result<RemoteAuth, RemoteAuthError> {
        RemoteAuth {
            ssh: None,
            https: None,
        }
        .with_https(user, token)
    }

    /// These settings plus `user` and `token` for https remotes. The user must be usable in
    /// basic authentication (no `:`), neither may hold control characters (git's credential
    /// protocol is line-based).
    pub fn with_https(mut self, user: &str, token: String) -> Result<RemoteAuth, RemoteAuthError> {
        if user.is_empty() || user.contains(':') || user.chars().any(char::is_control) {
            return Err(RemoteAuthError::UnusableUser {
                user: user.to_owned(),
            });
        }
        if token.is_empty() || token.chars().any(char::is_control) {
            return Err(RemoteAuthError::UnusableToken);
        }
        self.https = Some(HttpsCredential {
            user: user.to_owned(),
            token: Token(token),
        });
        Ok(self)
    }

    /// The deploy key (None: no ssh settings).
    pub fn ssh_key(&self) -> Option<&Path> {
        self.ssh.as_ref().map(|s| s.ssh_key.as_path())
    }

    /// The known_hosts file (None: no ssh settings).
    pub fn known_hosts(&self) -> Option<&Path> {
        self.ssh.as_ref().map(|s| s.known_hosts.as_path())
    }

    /// The user sent to https remotes (None: no https credentials).
    pub fn https_user(&self) -> Option<&str> {
        self.https.as_ref().map(|h| h.user.as_str())
    }

    pub(crate) fn https_credential(&self) -> Option<&HttpsCredential> {
        self.https.as_ref()
    }

    /// The value for `core.sshCommand`: git runs it through `sh -c`, so every path is
    /// shell-quoted; ssh then expands `%` tokens in file options, so `%` is doubled.
    pub(crate) fn ssh_command(&self) -> Option<OsString> {
        let ssh = self.ssh.as_ref()?;
        let key = ssh_file_arg(&ssh.ssh_key);
        let known = ssh_file_arg(&ssh.known_hosts);
        let cmd = format!(
            "ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityAgent=none \
             -o PasswordAuthentication=no -o KbdInteractiveAuthentication=no \
             -i {} -o {} -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes \
             -o UpdateHostKeys=no",
            shell_quote(&key),
            // ssh splits the option's value at spaces unless it is double-quoted.
            shell_quote(&format!("UserKnownHostsFile=\"{known}\"")),
        );
        Some(OsString::from_vec(cmd.into_bytes()))
    }
}

impl HttpsCredential {
    /// `bytes` with every occurrence of the token replaced by `<redacted>`: git's output
    /// becomes error text, and a remote may echo what it was sent.
    pub(crate) fn scrub(&self, bytes: Vec<u8>) -> Vec<u8> {
        let token = self.token.0.as_bytes();
        if token.is_empty() || !bytes.windows(token.len()).any(|w| w == token) {
            return bytes;
        }
        let mut out = Vec::with_capacity(bytes.len());
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            if rest.starts_with(token) {
                out.extend_from_slice(b"<redacted>");
                rest = &rest[token.len()..];
            } else {
                out.push(rest[0]);
                rest = &rest[1..];
            }
        }
        out
    }

    /// Writes the token to a fresh private file for one git command; the returned value
    /// holds the `credential.helper` that reads it, and removes the file when dropped.
    pub(crate) fn helper_files(&self) -> std::io::Result<CredentialFiles> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir();
        let dir = loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = base.join(format!("kvgit-credential-{}-{n}", std::process::id()));
            // 0700, and never an existing directory (someone else's, or a planted one).
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        };
        let files = CredentialFiles { dir };
        let token_file = files.dir.join("token");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&token_file)?;
        f.write_all(self.token.0.as_bytes())?;
        Ok(files)
    }

    /// The `credential.helper` value: a shell function answering `get` with the user and the
    /// file's content. `printf` is a shell builtin, so the token is in no process's argv.
    fn helper(&self, token_file: &Path) -> OsString {
        let mut helper = OsString::from(format!(
            "!f() {{ test \"$1\" = get || exit 0; printf 'username=%s\\npassword=%s\\n' {} \"$(cat ",
            shell_quote(&self.user)
        ));
        helper.push(shell_quote_os(token_file));
        helper.push(")\"; }; f");
        helper
    }
}

/// A private directory holding one token file, for one git command; removed on drop.
pub(crate) struct CredentialFiles {
    dir: PathBuf,
}

impl CredentialFiles {
    /// The `credential.helper` setting that answers with `cred`'s user and this token file.
    pub(crate) fn helper(&self, cred: &HttpsCredential) -> OsString {
        cred.helper(&self.dir.join("token"))
    }
}

impl Drop for CredentialFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether git's stderr says the remote refused the credentials, or asked for some and
/// none were configured.
pub(crate) fn credentials_refused(stderr: &str) -> bool {
    stderr.contains("Authentication failed")
        || stderr.contains("could not read Username")
        || stderr.contains("could not read Password")
        || stderr.contains("The requested URL returned error: 401")
        || stderr.contains("The requested URL returned error: 403")
}

/// git's stderr in one line.
pub(crate) fn one_line(stderr: &str) -> String {
    stderr.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Paths ssh would read differently from how they are written are refused up front.
fn check_path(path: &Path) -> Result<(), RemoteAuthError> {
    let usable = path.is_absolute()
        && path.to_str().is_some_and(|s| {
            !s.contains('"')
                && !s.contains('\\')
                && !s.contains("${")
                && !s.chars().any(char::is_control)
        });
    if usable {
        Ok(())
    } else {
        Err(RemoteAuthError::UnusablePath {
            path: path.to_owned(),
        })
    }
}

/// A key that needs a passphrase (or is no private key) would make every push fail late.
fn check_key(key: &Path) -> Result<(), RemoteAuthError> {
    let out = Command::new("ssh-keygen")
        .args(["-y", "-P", "", "-f"])
        .arg(key)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| RemoteAuthError::KeygenSpawn {
            path: key.to_owned(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(RemoteAuthError::NotUsableKey {
            path: key.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        })
    }
}

/// A checked path (UTF-8) with ssh's `%` escaped.
fn ssh_file_arg(path: &Path) -> String {
    path.to_str().unwrap_or_default().replace('%', "%%")
}

/// `s` as one word for `sh`: single-quoted, each `'` written as `'\''`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A path (any bytes) as one word for `sh`.
fn shell_quote_os(path: &Path) -> OsString {
    use std::os::unix::ffi::OsStrExt as _;
    let mut out = b"'".to_vec();
    for &b in path.as_os_str().as_bytes() {
        if b == b'\'' {
            out.extend_from_slice(br"'\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    OsString::from_vec(out)
}

/// ssh's lines about the host key (its banner of `@` lines and advice left out), for a
/// one-line message.
pub(crate) fn host_key_lines(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| l.to_ascii_lowercase().contains("host key") && !l.starts_with('@'))
        .collect();
    if lines.is_empty() {
        stderr.split_whitespace().collect::<Vec<_>>().join(" ")
    } else {
        lines.join(" ")
    }
}

/// Whether git's stderr says ssh refused the remote's host key (unknown or changed).
pub(crate) fn host_key_refused(stderr: &str) -> bool {
    stderr.contains("Host key verification failed")
        || stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || stderr.contains("No ED25519 host key is known")
        || stderr.contains("host key is known for")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_quoted_for_the_shell_and_for_ssh() {
        let auth = RemoteAuth {
            ssh: Some(SshFiles {
                ssh_key: "/etc/kv git/it's%key".into(),
                known_hosts: "/etc/kv git/known hosts".into(),
            }),
            https: None,
        };
        let cmd = auth
            .ssh_command()
            .expect("ssh settings")
            .into_string()
            .expect("utf-8");
        assert!(cmd.contains(r"-i '/etc/kv git/it'\''s%%key'"), "{cmd}");
        assert!(
            cmd.contains(r#"-o 'UserKnownHostsFile="/etc/kv git/known hosts"'"#),
            "{cmd}"
        );
        assert!(cmd.contains("IdentitiesOnly=yes") && cmd.contains("-F /dev/null"));
        assert!(cmd.contains("StrictHostKeyChecking=yes") && cmd.contains("IdentityAgent=none"));
    }

    #[test]
    fn paths_ssh_would_rewrite_are_refused() {
        for bad in ["relative/key", "/a\"b", "/a\\b", "/a${HOME}", "/a\nb"] {
            assert!(
                matches!(
                    check_path(Path::new(bad)),
                    Err(RemoteAuthError::UnusablePath { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(check_path(Path::new("/etc/kvgit/deploy key")).is_ok());
    }

    #[test]
    fn a_changed_host_key_is_told_in_one_line() {
        let stderr =
            "@@@@@@@@@@@@\r\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\r\n\
            The fingerprint for the ED25519 key sent by the remote host is\nSHA256:abc.\r\n\
            Host key for [127.0.0.1]:2222 has changed and you have requested strict checking.\r\n\
            Host key verification failed.\r\nfatal: Could not read from remote repository.\n";
        assert!(host_key_refused(stderr));
        assert_eq!(
            host_key_lines(stderr),
            "Host key for [127.0.0.1]:2222 has changed and you have requested strict checking. \
             Host key verification failed."
        );
    }

    #[test]
    fn missing_files_and_passphrase_keys_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope");
        let hosts = dir.path().join("known_hosts");
        std::fs::write(&hosts, "").expect("write");
        assert!(matches!(
            RemoteAuth::new(&missing, &hosts),
            Err(RemoteAuthError::Unreadable { .. })
        ));
        let keygen = |name: &str, pass: &str| {
            let key = dir.path().join(name);
            let ok = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", pass, "-C", "test", "-f"])
                .arg(&key)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            ok.then_some(key)
        };
        let Some(locked) = keygen("locked", "secret") else {
            eprintln!("ssh-keygen not installed: skipping the key checks");
            return;
        };
        assert!(matches!(
            RemoteAuth::new(&locked, &hosts),
            Err(RemoteAuthError::NotUsableKey { .. })
        ));
        let open = keygen("open", "").expect("ssh-keygen");
        let auth = RemoteAuth::new(&open, &hosts).expect("usable");
        assert_eq!(auth.ssh_key(), Some(open.as_path()));
    }

    #[test]
    fn the_token_is_checked_hidden_and_scrubbed() {
        let auth = RemoteAuth::https("x-access-token", "ghp_s3cr3t".into()).expect("usable");
        assert!(!format!("{auth:?}").contains("ghp_s3cr3t"));
        assert_eq!(auth.https_user(), Some("x-access-token"));
        assert!(auth.ssh_command().is_none());
        let cred = auth.https_credential().expect("https");
        assert_eq!(
            cred.scrub(b"fatal: ghp_s3cr3t! and ghp_s3cr3t".to_vec()),
            b"fatal: <redacted>! and <redacted>".to_vec()
        );
        assert!(matches!(
            RemoteAuth::https("a:b", "t".into()),
            Err(RemoteAuthError::UnusableUser { .. })
        ));
        assert!(matches!(
            RemoteAuth::https("u", "two\nlines".into()),
            Err(RemoteAuthError::UnusableToken)
        ));
    }

    #[test]
    fn the_helper_answers_get_from_a_private_file_removed_afterwards() {
        use std::os::unix::fs::PermissionsExt as _;
        let auth = RemoteAuth::https("it's me", "tok en$x".into()).expect("usable");
        let cred = auth.https_credential().expect("https");
        let files = cred.helper_files().expect("write");
        let token_file = files.dir.join("token");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&files.dir), 0o700);
        assert_eq!(mode(&token_file), 0o600);
        let helper = files.helper(cred).into_string().expect("utf-8");
        assert!(!helper.contains("tok en"), "{helper}");
        // git runs `!` helpers as `sh -c '<helper> get'`.
        let script = format!("{} get", helper.strip_prefix('!').expect("shell helper"));
        let out = Command::new("sh")
            .args(["-c", &script])
            .output()
            .expect("sh");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "username=it's me\npassword=tok en$x\n"
        );
        let script = format!("{} store", helper.strip_prefix('!').expect("shell helper"));
        let out = Command::new("sh")
            .args(["-c", &script])
            .output()
            .expect("sh");
        assert!(out.status.success() && out.stdout.is_empty());
        let dir = files.dir.clone();
        drop(files);
        assert!(!dir.exists());
    }
}

//! How fetch and push authenticate to an ssh remote: one deploy key, one known_hosts file,
//! strict host key checking. Nothing of the user's ssh setup (agent, `~/.ssh/config`,
//! `~/.ssh/known_hosts`, default identities) takes part.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The credentials for ssh remotes, set on a [`crate::GitStore`] when opening it
/// ([`crate::GitStore::with_remote_auth`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteAuth {
    /// The private key ssh offers, and the only one (`IdentitiesOnly`, no agent).
    ssh_key: PathBuf,
    /// The only host keys ssh accepts; an unknown or different host key fails the command.
    known_hosts: PathBuf,
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
            ssh_key: ssh_key.to_owned(),
            known_hosts: known_hosts.to_owned(),
        })
    }

    /// The deploy key.
    pub fn ssh_key(&self) -> &Path {
        &self.ssh_key
    }

    /// The known_hosts file.
    pub fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }

    /// The value for `core.sshCommand`: git runs it through `sh -c`, so every path is
    /// shell-quoted; ssh then expands `%` tokens in file options, so `%` is doubled.
    pub(crate) fn ssh_command(&self) -> OsString {
        let key = ssh_file_arg(&self.ssh_key);
        let known = ssh_file_arg(&self.known_hosts);
        let cmd = format!(
            "ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityAgent=none \
             -o PasswordAuthentication=no -o KbdInteractiveAuthentication=no \
             -i {} -o {} -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes \
             -o UpdateHostKeys=no",
            shell_quote(&key),
            // ssh splits the option's value at spaces unless it is double-quoted.
            shell_quote(&format!("UserKnownHostsFile=\"{known}\"")),
        );
        OsString::from_vec(cmd.into_bytes())
    }
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
            ssh_key: "/etc/kv git/it's%key".into(),
            known_hosts: "/etc/kv git/known hosts".into(),
        };
        let cmd = auth.ssh_command().into_string().expect("utf-8");
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
        assert_eq!(auth.ssh_key(), open);
    }
}

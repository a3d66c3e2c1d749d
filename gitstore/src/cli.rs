//! Running the `git` CLI against the bare repository for what gix cannot do (push) or what
//! git does best (fetch, repack), isolated from user/system config, hooks and prompts.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::auth::{HttpsCredential, RemoteAuth};

/// Why a `git` command could not run.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("could not write the private credential file for `git {args}`")]
    Credential {
        args: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not run `git {args}`")]
    Spawn {
        args: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`git {args}` failed ({status}): {stderr}")]
    Failed {
        args: String,
        status: String,
        stderr: String,
    },
    #[error(
        "`git {args}` did not finish within {limit:?} (git.timeout); killed with its children"
    )]
    TimedOut { args: String, limit: Duration },
}

impl CliError {
    /// Worth retrying later: the remote was slow or away, nothing is wrong locally.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CliError::TimedOut { .. })
    }
}

/// Environment variables that would point git at another repository or config, or make it
/// ask a program for a password.
const CLEARED_ENV: &[&str] = &[
    "GIT_ASKPASS",
    "SSH_ASKPASS",
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
    "GIT_CEILING_DIRECTORIES",
    "GIT_CONFIG",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
];

/// `-c` settings for every command: no hooks, no auto-gc/maintenance behind kvgit's back, no
/// interactive ssh.
const CONFIG: &[&str] = &[
    "core.hooksPath=/dev/null",
    "gc.auto=0",
    "maintenance.auto=false",
    "fetch.writeCommitGraph=false",
    "core.sshCommand=ssh -o BatchMode=yes",
    "core.askPass=",
];

/// A `git` command bound to one repository.
pub(crate) struct Git {
    git_dir: PathBuf,
    /// Network commands (fetch, push) are killed after this long: a hung remote must
    /// delay pushes only, never hold a thread or a lock forever.
    limit: Option<Duration>,
    /// `core.sshCommand` for ssh remotes with a deploy key (None: plain `ssh` in batch mode).
    ssh_command: Option<OsString>,
    /// The user and token for https remotes, given to git by a credential helper.
    https: Option<HttpsCredential>,
    /// Housekeeping (repacks) runs at a lower CPU priority than kvgit and the backend.
    background: bool,
}

impl Git {
    pub(crate) fn new(git_dir: &Path) -> Self {
        Git {
            git_dir: git_dir.to_owned(),
            limit: None,
            ssh_command: None,
            https: None,
            background: false,
        }
    }

    /// Runs the commands at a lower CPU priority (nice 10): housekeeping that may take
    /// seconds must not slow down recording or the backend on the same machine.
    pub(crate) fn in_background(mut self) -> Self {
        self.background = true;
        self
    }

    /// ssh (for ssh remotes) uses `auth`'s key and known_hosts only, https remotes get its
    /// user and token; see [`RemoteAuth`].
    pub(crate) fn with_auth(mut self, auth: Option<&RemoteAuth>) -> Self {
        self.ssh_command = auth.and_then(RemoteAuth::ssh_command);
        self.https = auth.and_then(RemoteAuth::https_credential).cloned();
        self
    }

    /// Bounds every command run through this value to `limit`.
    pub(crate) fn with_limit(mut self, limit: Option<Duration>) -> Self {
        self.limit = limit;
        self
    }

    /// Runs `git <args>`; a non-zero exit is not an error here (callers read the output).
    /// With an https token, its file exists only while git runs, and the output comes back
    /// with the token scrubbed out.
    pub(crate) fn output(&self, args: &[&str]) -> Result<Output, CliError> {
        let mut cmd = self.command();
        let files = match &self.https {
            Some(cred) => {
                let files = cred.helper_files().map_err(|source| CliError::Credential {
                    args: args.join(" "),
                    source,
                })?;
                // An empty value first: no other helper (repository config) is asked.
                cmd.arg("-c").arg("credential.helper=");
                let mut setting = OsString::from("credential.helper=");
                setting.push(files.helper(cred));
                cmd.arg("-c").arg(setting);
                Some(files)
            }
            None => None,
        };
        cmd.arg("--git-dir").arg(&self.git_dir).args(args);
        let out = match self.limit {
            None => cmd.output().map_err(|source| CliError::Spawn {
                args: args.join(" "),
                source,
            }),
            Some(limit) => run_bounded(cmd, args, limit),
        };
        drop(files);
        let mut out = out?;
        if let Some(cred) = &self.https {
            out.stdout = cred.scrub(std::mem::take(&mut out.stdout));
            out.stderr = cred.scrub(std::mem::take(&mut out.stderr));
        }
        Ok(out)
    }

    /// `git -c ...` with the isolating environment; the caller adds `--git-dir` and args.
    fn command(&self) -> Command {
        let mut cmd = Command::new("git");
        for var in CLEARED_ENV {
            cmd.env_remove(var);
        }
        cmd.env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        if self.background {
            // SAFETY: setpriority is async-signal-safe and touches only the child itself.
            unsafe {
                cmd.pre_exec(|| {
                    // Best effort: a refused change leaves the priority as it was.
                    libc::setpriority(libc::PRIO_PROCESS, 0, 10);
                    Ok(())
                });
            }
        }
        for setting in CONFIG {
            cmd.arg("-c").arg(setting);
        }
        if let Some(ssh) = &self.ssh_command {
            // Set later, so it wins over the plain one; the environment would win over both.
            cmd.env_remove("GIT_SSH").env_remove("GIT_SSH_COMMAND");
            let mut setting = OsString::from("core.sshCommand=");
            setting.push(ssh);
            cmd.arg("-c").arg(setting);
        }
        cmd
    }

    /// Runs `git <args>` and requires success.
    pub(crate) fn run(&self, args: &[&str]) -> Result<Output, CliError> {
        let out = self.output(args)?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(CliError::Failed {
                args: args.join(" "),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }
}

/// Runs `cmd` in a process group of its own and kills the whole group (git and the ssh or
/// https helper it started) when it outlives `limit`.
fn run_bounded(cmd: Command, args: &[&str], limit: Duration) -> Result<Output, CliError> {
    match run_child(cmd, None, limit) {
        Ok(Some(out)) => Ok(out),
        Ok(None) => Err(CliError::TimedOut {
            args: args.join(" "),
            limit,
        }),
        Err(source) => Err(CliError::Spawn {
            args: args.join(" "),
            source,
        }),
    }
}

/// Runs `cmd` with `stdin` fed to it (or none) in a process group of its own, its output
/// collected; `Ok(None)` when it outlived `limit` and the whole group was killed. Shared by
/// every child gitstore starts (git, ssh-keygen), so none can hang a thread for good.
pub(crate) fn run_child(
    mut cmd: Command,
    stdin: Option<&[u8]>,
    limit: Duration,
) -> std::io::Result<Option<Output>> {
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    let writer = match (stdin, child.stdin.take()) {
        (Some(bytes), Some(mut pipe)) => {
            let bytes = bytes.to_vec();
            Some(std::thread::spawn(move || {
                use std::io::Write as _;
                let _ = pipe.write_all(&bytes);
            }))
        }
        _ => None,
    };
    // Pipes are drained on their own threads so a chatty child never blocks on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait()? {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                // kill(2) on our own child's process group id: the child and every helper
                // it started.
                let pgid = child.id() as i32;
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                }
                let _ = child.wait();
                return Ok(None);
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    Ok(Some(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }))
}

/// `url` without user info (`https://user:token@host/x` → `https://host/x`), for messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// Whether git's stderr says the remote could not be reached at all.
pub(crate) fn looks_unreachable(stderr: &str) -> bool {
    const SIGNS: &[&str] = &[
        "does not appear to be a git repository",
        "Could not read from remote repository",
        "unable to access",
        "Could not resolve host",
        "Connection refused",
        "Connection timed out",
        "No route to host",
        "unable to connect",
        "remote end hung up",
        "Repository not found",
        "' not found",
    ];
    SIGNS.iter().any(|sign| stderr.contains(sign))
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn credentials_are_not_shown() {
        assert_eq!(redact("https://u:tok@host/r.git"), "https://host/r.git");
        assert_eq!(redact("ssh://git@host/r"), "ssh://host/r");
        assert_eq!(redact("/srv/repo.git"), "/srv/repo.git");
        assert_eq!(redact("https://host/a@b"), "https://host/a@b");
    }
}

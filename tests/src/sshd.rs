//! A real OpenSSH server for tests: `sshd -D -e -f CONFIG` on a free loopback port with a
//! host key and a client key generated at test time, serving the repositories on this
//! machine to root (`ssh://root@127.0.0.1:PORT/abs/path.git`); stopped by its pid.
//!
//! sshd runs commands through root's shell, and bash sources `~/.bashrc` for them even for
//! `git-receive-pack`; a slow rc file would stall every fetch and push. When it can, sshd
//! runs in a mount namespace of its own with an empty file bound over `/root/.bashrc`.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long sshd may take to answer with its banner on a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// One sshd owned by a test.
pub struct SshServer {
    /// The sshd process (the listener); `None` once stopped.
    child: Option<Child>,
    /// Its pid: the listener, parent of one sshd per connection.
    pub pid: u32,
    pub port: u16,
    /// Keys, config and log live here (a directory of the test's workspace).
    pub dir: PathBuf,
    /// The private key sshd accepts for root (no passphrase).
    pub client_key: PathBuf,
    /// A known_hosts file holding this server's host key for `[127.0.0.1]:PORT`.
    pub known_hosts: PathBuf,
    /// sshd's own output (`-e`), for messages.
    pub log: PathBuf,
}

impl SshServer {
    /// Starts sshd with fresh keys under `dir/sshd`, and waits for its banner.
    pub fn start(dir: &Path) -> SshServer {
        let dir = dir.join("sshd");
        std::fs::create_dir_all(&dir).expect("create sshd dir");
        // Privilege separation needs it; Debian's package creates it only at boot.
        std::fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        let host_key = dir.join("host_key");
        let client_key = dir.join("client_key");
        keygen(&host_key, "kvgit-test-host");
        keygen(&client_key, "kvgit-test-client");
        let authorized = dir.join("authorized_keys");
        std::fs::copy(client_key.with_extension("pub"), &authorized).expect("authorized_keys");
        let empty_rc = dir.join("empty_rc");
        std::fs::write(&empty_rc, "").expect("write empty rc");
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let config = dir.join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "ListenAddress 127.0.0.1:{port}\n\
                     HostKey {host}\n\
                     PidFile none\n\
                     AuthorizedKeysFile {authorized}\n\
                     StrictModes no\n\
                     UsePAM no\n\
                     PermitRootLogin prohibit-password\n\
                     PubkeyAuthentication yes\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     AllowAgentForwarding no\n\
                     AllowTcpForwarding no\n\
                     X11Forwarding no\n\
                     PrintMotd no\n\
                     LogLevel VERBOSE\n",
                    host = host_key.display(),
                    authorized = authorized.display(),
                ),
            )
            .expect("write sshd_config");
            let log = dir.join("sshd.log");
            let out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .expect("open sshd.log");
            let err = out.try_clone().expect("dup sshd.log");
            let mut cmd = if own_mount_namespace_works() {
                // `unshare` without --fork and `exec`: the pid is sshd's own.
                let mut cmd = Command::new("unshare");
                cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
                    .arg(r#"mount --bind "$1" /root/.bashrc && exec /usr/sbin/sshd -D -e -f "$2""#)
                    .arg("sh")
                    .arg(&empty_rc)
                    .arg(&config);
                cmd
            } else {
                let mut cmd = Command::new(sshd_bin());
                cmd.args(["-D", "-e", "-f"]).arg(&config);
                cmd
            };
            let child = cmd
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .expect("spawn sshd");
            let known_hosts = dir.join("known_hosts");
            let host_pub = std::fs::read_to_string(host_key.with_extension("pub")).expect("pub");
            std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {host_pub}"))
                .expect("write known_hosts");
            let mut server = SshServer {
                pid: child.id(),
                child: Some(child),
                port,
                dir: dir.clone(),
                client_key: client_key.clone(),
                known_hosts,
                log,
            };
            match server.wait_banner() {
                Ok(()) => return server,
                Err(why) => {
                    server.stop();
                    last = format!("{why}\n--- sshd log ---\n{}", server.log_text());
                }
            }
        }
        panic!("sshd did not start: {last}");
    }

    fn wait_banner(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!("sshd exited early with {status}"));
            }
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 8];
                if s.read_exact(&mut buf).is_ok() && buf.starts_with(b"SSH-2.0") {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "no ssh banner on port {} within {START_TIMEOUT:?}",
            self.port
        ))
    }

    /// `ssh://root@127.0.0.1:PORT/<abs path>` for a repository on this machine.
    pub fn url(&self, repo: &Path) -> String {
        assert!(repo.is_absolute(), "{} is not absolute", repo.display());
        format!("ssh://root@127.0.0.1:{}{}", self.port, repo.display())
    }

    /// A `GIT_SSH_COMMAND` for a person's git: the client key, this server's known_hosts.
    pub fn git_ssh_command(&self) -> String {
        format!(
            "ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityAgent=none -i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes",
            self.client_key.display(),
            self.known_hosts.display()
        )
    }

    /// A known_hosts file naming this server's address with another host key.
    pub fn wrong_known_hosts(&self) -> PathBuf {
        let other = self.dir.join("other_host_key");
        if !other.exists() {
            keygen(&other, "some-other-host");
        }
        let other_pub = std::fs::read_to_string(other.with_extension("pub")).expect("pub");
        let path = self.dir.join("wrong_known_hosts");
        std::fs::write(&path, format!("[127.0.0.1]:{} {other_pub}", self.port))
            .expect("write wrong known_hosts");
        path
    }

    /// The listener and every sshd (and its children) serving a connection.
    pub fn pids(&self) -> Vec<u32> {
        let mut all = vec![self.pid];
        let mut i = 0;
        while i < all.len() {
            all.extend(children(all[i]));
            i += 1;
        }
        all
    }

    /// `kill -<sig>` to the listener and all its descendants (e.g. "STOP", "CONT").
    pub fn signal_all(&self, sig: &str) {
        for pid in self.pids() {
            let _ = Command::new("kill")
                .args([format!("-{sig}"), pid.to_string()])
                .status();
        }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the listener and what it started (by pid, continued first so a stopped process
    /// dies), then reaps the listener; idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pids = self.pids();
            for pid in &pids {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
            for pid in &pids {
                let _ = Command::new("kill")
                    .args(["-CONT", &pid.to_string()])
                    .status();
            }
            let _ = child.wait();
        }
    }
}

impl Drop for SshServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The pids whose parent is `pid` (`ps --ppid`).
pub fn children(pid: u32) -> Vec<u32> {
    let out = Command::new("ps")
        .args(["-o", "pid=", "--ppid", &pid.to_string()])
        .output()
        .expect("run ps");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// `ssh-keygen -t ed25519 -N ""` at `path` (and `path.pub`).
pub fn keygen(path: &Path, comment: &str) {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("run ssh-keygen (scripts/deps.sh installs openssh-client)")
        .success();
    assert!(ok, "ssh-keygen failed for {}", path.display());
}

fn sshd_bin() -> &'static str {
    let bin = "/usr/sbin/sshd";
    assert!(
        Path::new(bin).exists(),
        "{bin} missing: run scripts/deps.sh (installs openssh-server)"
    );
    bin
}

/// Whether `unshare --mount` works here (root with CAP_SYS_ADMIN) and root's shell reads a
/// `~/.bashrc` worth hiding.
fn own_mount_namespace_works() -> bool {
    sshd_bin();
    Path::new("/root/.bashrc").is_file()
        && Command::new("unshare")
            .args(["--mount", "--propagation", "private", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

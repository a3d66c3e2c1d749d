//! Driving the real `kvgit` binary in tests: a temp work dir with a config and a bare
//! repository, the binary run as a process, and plain `git` to check what it wrote.

use std::path::{Path, PathBuf};
use std::process::Command;
use tempfile::TempDir;

/// The built `kvgit` binary (target/<profile>/kvgit next to the test's deps dir).
pub fn kvgit_bin() -> PathBuf {
    built_bin(
        "kvgit",
        "TEST_KVGIT_BIN",
        "build it first (`cargo build -p kvgit`; scripts/test.sh does)",
    )
}

/// A binary of this workspace: `$env_var` when set, else `target/<profile>/<name>` next to
/// the running test's deps dir; panics with `hint` when it is not built.
pub fn built_bin(name: &str, env_var: &str, hint: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env_var) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps");
    let bin = profile_dir.join(name);
    assert!(bin.exists(), "{} not found: {hint}", bin.display());
    bin
}

/// One area of a generated config.
#[derive(Debug, Clone, Copy)]
pub struct Area<'a> {
    pub name: &'a str,
    pub prefix: &'a str,
    pub path: &'a str,
    pub mode: &'a str,
}

impl<'a> Area<'a> {
    /// One area per (name, prefix, path), all in `mode`.
    pub fn each(names: &'a [(String, String, String)], mode: &'a str) -> Vec<Area<'a>> {
        names
            .iter()
            .map(|(name, prefix, path)| Area {
                name,
                prefix,
                path,
                mode,
            })
            .collect()
    }
}

/// What a finished command printed, and how it exited.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Panics with the whole output unless the command exited 0.
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "command failed:\n{}\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// A temp dir with `kvgit.toml` and `state.git`.
pub struct Workspace {
    pub dir: TempDir,
    pub config: PathBuf,
    pub repo: PathBuf,
    /// `backend.kind` of the configs written from now on ("etcd" unless set).
    kind: std::sync::Mutex<&'static str>,
    /// More lines for the `[[area]]` table of an area, by name (e.g. `format = "json"`).
    area_extra: std::sync::Mutex<Vec<(String, String)>>,
}

impl Workspace {
    pub fn new(endpoint: &str, areas: &[Area<'_>]) -> Workspace {
        Self::with_extra(endpoint, areas, "")
    }

    /// `extra` is appended to the `[sync]` table.
    pub fn with_extra(endpoint: &str, areas: &[Area<'_>], extra: &str) -> Workspace {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("kvgit.toml");
        let repo = dir.path().join("state.git");
        let ws = Workspace {
            dir,
            config,
            repo,
            kind: std::sync::Mutex::new("etcd"),
            area_extra: std::sync::Mutex::new(Vec::new()),
        };
        ws.write_config(endpoint, areas, extra);
        ws
    }

    /// Configs written from now on add `lines` to the `[[area]]` table of area `name`.
    pub fn set_area_extra(&self, name: &str, lines: &str) {
        self.area_extra
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.to_owned(), lines.to_owned()));
    }

    /// Configs written from now on name this backend (`"etcd"` or `"consul"`).
    pub fn set_backend_kind(&self, kind: &'static str) {
        *self.kind.lock().unwrap_or_else(|e| e.into_inner()) = kind;
    }

    pub fn write_config(&self, endpoint: &str, areas: &[Area<'_>], extra: &str) {
        self.write_config_full(endpoint, areas, "", extra, "");
    }

    /// Like [`Workspace::write_config`], with lines appended to the `[git]` table
    /// (`git_extra`, e.g. `remote = "…"`), to the `[sync]` table (`sync_extra`) and to a
    /// `[server]` table (`server`, e.g. `listen = "127.0.0.1:PORT"`; none when empty).
    pub fn write_config_full(
        &self,
        endpoint: &str,
        areas: &[Area<'_>],
        git_extra: &str,
        sync_extra: &str,
        server: &str,
    ) {
        let kind = *self.kind.lock().unwrap_or_else(|e| e.into_inner());
        // A `node = …` in the extra lines replaces the default name.
        let node = if sync_extra
            .lines()
            .any(|l| l.trim_start().starts_with("node "))
        {
            String::new()
        } else {
            "node = \"test-node\"\n".to_string()
        };
        let mut toml = format!(
            "[backend]\nkind = \"{kind}\"\nendpoints = [\"{endpoint}\"]\nconnect_timeout = \"3s\"\nrequest_timeout = \"10s\"\n\
             [git]\nrepo = \"state.git\"\nbranch = \"main\"\nauthor_name = \"kvgit test\"\nauthor_email = \"kvgit@test\"\n{git_extra}\n\
             [sync]\n{node}{sync_extra}\n"
        );
        if !server.is_empty() {
            toml.push_str(&format!("[server]\n{server}\n"));
        }
        for a in areas {
            toml.push_str(&format!(
                "[[area]]\nname = \"{}\"\nprefix = \"{}\"\npath = \"{}\"\nmode = \"{}\"\n",
                a.name, a.prefix, a.path, a.mode
            ));
            for (name, lines) in self
                .area_extra
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
            {
                if name == a.name {
                    toml.push_str(lines);
                    toml.push('\n');
                }
            }
        }
        std::fs::write(&self.config, toml).expect("write config");
    }

    /// Run `kvgit -c kvgit.toml ARGS…` and wait for it.
    pub fn kvgit(&self, args: &[&str]) -> Run {
        self.kvgit_env(args, &[])
    }

    /// `kvgit` with these environment variables set (e.g. `KVGIT_LOG`).
    pub fn kvgit_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let out = Command::new(kvgit_bin())
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .envs(env.iter().copied())
            .current_dir(self.dir.path())
            .output()
            .expect("spawn kvgit");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `git --git-dir state.git ARGS…`, stdout as bytes; panics on failure.
    pub fn git_bytes(&self, args: &[&str]) -> Vec<u8> {
        git_in(&self.repo, args)
    }

    pub fn git(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.git_bytes(args)).into_owned()
    }

    /// The number of commits on main (0 when the branch does not exist yet).
    pub fn commit_count(&self) -> usize {
        let out = Command::new("git")
            .arg("--git-dir")
            .arg(&self.repo)
            .args(["rev-list", "--count", "main"])
            .output()
            .expect("spawn git");
        if !out.status.success() {
            return 0;
        }
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a count")
    }

    /// Commit `files` (path -> Some(content) or None to delete) on main as a person would:
    /// in a clone, pushed back to the bare repository.
    pub fn person_commits(&self, files: &[(&str, Option<&[u8]>)], message: &str) {
        let clone = self
            .dir
            .path()
            .join(format!("clone-{}", std::process::id()));
        if clone.exists() {
            std::fs::remove_dir_all(&clone).expect("remove old clone");
        }
        run_git(
            None,
            &[
                "clone",
                "-q",
                self.repo.to_str().expect("utf-8 path"),
                clone.to_str().expect("utf-8 path"),
            ],
        );
        write_files(&clone, files);
        run_git(Some(&clone), &["add", "-A"]);
        run_git(
            Some(&clone),
            &[
                "-c",
                "user.name=A Person",
                "-c",
                "user.email=person@example.org",
                "commit",
                "-q",
                "-m",
                message,
            ],
        );
        run_git(Some(&clone), &["push", "-q", "origin", "HEAD:main"]);
        std::fs::remove_dir_all(&clone).expect("remove clone");
    }
}

/// Write (Some) or remove (None) each file under `dir`, creating directories as needed.
pub fn write_files(dir: &Path, files: &[(&str, Option<&[u8]>)]) {
    for (path, content) in files {
        let p = dir.join(path);
        match content {
            Some(c) => {
                std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
                std::fs::write(&p, c).expect("write file");
            }
            None => {
                std::fs::remove_file(&p).unwrap_or_else(|e| panic!("remove {}: {e}", p.display()))
            }
        }
    }
}

/// `git --git-dir REPO ARGS…`, stdout; panics with stderr on failure.
pub fn git_in(repo: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(repo)
        .args(args)
        .output()
        .expect("spawn git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `git ARGS…` in `cwd`, stdout; panics with stderr on failure.
pub fn run_git(cwd: Option<&Path>, args: &[&str]) -> Vec<u8> {
    let mut cmd = Command::new("git");
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    let out = cmd.args(args).output().expect("spawn git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

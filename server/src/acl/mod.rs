//! `kvgit acl plan|apply`: the backend roles and users (etcd) or policies and tokens (Consul)
//! that the config implies, the difference to what the backend has, and making them so.
//!
//! Least privilege, derived from the config alone: each area's prefix range, the ownership
//! prefix, and the few reads kvgit makes outside them (listed in the plan's notes). Only
//! objects named `kvgit-*` are ever read or changed; the whole difference is computed before
//! the first write, and a second apply finds nothing to do. Admin credentials come from the
//! command line only, never from the node's own settings.

pub mod command;
mod consul;
mod etcd;
pub mod render;

use crate::config::{BackendConfig, Config};
use serde::Serialize;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Objects kvgit creates carry this prefix; nothing else is touched.
pub const PREFIX: &str = "kvgit-";

/// What the command line says besides plan/apply.
#[derive(Debug, Clone, Default)]
pub struct AclArgs {
    /// etcd: the admin user (with the root role) and the file holding its password.
    pub admin_user: Option<String>,
    pub admin_password_file: Option<PathBuf>,
    /// Consul: the file holding a token with `acl = "write"`.
    pub admin_token_file: Option<PathBuf>,
    /// etcd: the node user's password; created (random, mode 0600) when missing. Without
    /// it the node user has no password and logs in by its client certificate's CN.
    pub user_password_file: Option<PathBuf>,
    /// Consul: where the node's token is (or is to be written, mode 0600).
    pub create_token: Option<PathBuf>,
}

/// `+`, `~` or `-`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Add,
    Change,
    Remove,
}

impl Op {
    pub fn sign(self) -> char {
        match self {
            Op::Add => '+',
            Op::Change => '~',
            Op::Remove => '-',
        }
    }
}

/// One line of the plan, and the backend calls that make it so.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub op: Op,
    /// `role`, `user`, `policy` or `token`.
    pub object: &'static str,
    pub name: String,
    /// What changes, e.g. `readwrite [/sigil/entries/, /sigil/entries0)` or `+ role kvgit-x`.
    pub detail: String,
    /// The same, structured (JSON only).
    #[serde(flatten)]
    pub subject: Subject,
    /// The calls, in order (a new role's first line also creates it).
    #[serde(skip)]
    steps: Vec<Step>,
}

/// What a change is about, for `--format json`: at most one field is set.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Subject {
    /// etcd: the role permission granted or revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permission: Option<PermissionJson>,
    /// etcd: the role granted to or revoked from the user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Consul: the policy's rules (HCL) as they will be.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules: Option<String>,
    /// Consul: the policies the token is linked to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policies: Option<Vec<String>>,
    /// The password or token file read or written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

/// An etcd permission: keys as text when UTF-8 and always as base64, as `kvgit plan
/// --format json` gives keys.
#[derive(Debug, Clone, Serialize)]
pub struct PermissionJson {
    #[serde(rename = "type")]
    pub kind: backend_etcd::acl::PermKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub key_b64: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range_end: Option<String>,
    pub range_end_b64: String,
}

impl From<&backend_etcd::acl::Perm> for PermissionJson {
    fn from(p: &backend_etcd::acl::Perm) -> Self {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let text = |b: &[u8]| std::str::from_utf8(b).ok().map(str::to_owned);
        PermissionJson {
            kind: p.kind,
            key: text(&p.key),
            key_b64: b64(&p.key),
            range_end: text(&p.range_end),
            range_end_b64: b64(&p.range_end),
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    Etcd(etcd::Step),
    Consul(consul::Step),
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.op.sign(), self.object, self.name)?;
        if !self.detail.is_empty() {
            write!(f, " {}", self.detail)?;
        }
        Ok(())
    }
}

/// The whole difference between what the config implies and what the backend has.
#[derive(Debug, Clone, Serialize)]
pub struct AclPlan {
    pub backend: &'static str,
    pub node: String,
    /// The credential kvgit runs as: `user kvgit-core-1` or `policy kvgit-core-1`.
    pub principal: String,
    pub changes: Vec<Change>,
    /// Why each right outside the areas is there, and what was left alone and why.
    pub notes: Vec<String>,
}

impl AclPlan {
    pub fn count(&self, op: Op) -> usize {
        self.changes.iter().filter(|c| c.op == op).count()
    }
}

/// Why `kvgit acl` failed; every variant names the setting, file or object at fault.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error("{0}")]
    Usage(String),
    #[error("{setting}: cannot read {path}: {source}")]
    ReadFile {
        setting: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{setting}: {path} is empty")]
    EmptyFile {
        setting: &'static str,
        path: PathBuf,
    },
    #[error("{setting}: cannot write {path}: {source}")]
    WriteFile {
        setting: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Etcd(#[from] backend_etcd::acl::AclError),
    #[error(transparent)]
    Consul(#[from] backend_consul::acl::AclError),
}

/// Computes the plan against the backend (no write).
pub async fn plan(cfg: &Config, args: &AclArgs) -> Result<(AclPlan, Admin), AclError> {
    match &cfg.backend {
        BackendConfig::Etcd(ec) => {
            let (plan, admin) = etcd::plan(cfg, ec, args).await?;
            Ok((plan, Admin::Etcd(admin)))
        }
        BackendConfig::Consul(cc) => {
            let (plan, admin) = consul::plan(cfg, cc, args).await?;
            Ok((plan, Admin::Consul(admin)))
        }
    }
}

/// The admin connection a plan was made with, kept for its apply.
pub enum Admin {
    Etcd(etcd::Admin),
    Consul(consul::Admin),
}

/// Makes every change of `plan`, in its order; `done` hears of each one as it is made.
pub async fn apply(
    admin: &Admin,
    plan: &AclPlan,
    mut done: impl FnMut(&Change),
) -> Result<(), AclError> {
    for change in &plan.changes {
        for step in &change.steps {
            match (step, admin) {
                (Step::Etcd(step), Admin::Etcd(a)) => etcd::apply(a, step).await?,
                (Step::Consul(step), Admin::Consul(a)) => consul::apply(a, step).await?,
                _ => return Err(AclError::Usage("internal: plan and admin disagree".into())),
            }
        }
        done(change);
    }
    Ok(())
}

/// A secret file for `setting`, without its trailing newline; missing, unreadable or empty
/// is one line naming the setting and the path, never the content.
fn read_secret(setting: &'static str, path: &Path) -> Result<String, AclError> {
    let text = std::fs::read_to_string(path).map_err(|source| AclError::ReadFile {
        setting,
        path: path.to_owned(),
        source,
    })?;
    let trimmed = text.trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        return Err(AclError::EmptyFile {
            setting,
            path: path.to_owned(),
        });
    }
    Ok(trimmed.to_owned())
}

/// Refuses a file that apply could not create (its directory missing), before anything is
/// changed in the backend.
fn check_writable_dir(setting: &'static str, path: &Path) -> Result<(), AclError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if dir.is_dir() {
        Ok(())
    } else {
        Err(AclError::WriteFile {
            setting,
            path: path.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("directory {} does not exist", dir.display()),
            ),
        })
    }
}

/// Writes a new secret to `path`, readable by its owner only; refuses to replace a file
/// that appeared meanwhile.
fn write_secret(setting: &'static str, path: &Path, secret: &str) -> Result<(), AclError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let err = |source| AclError::WriteFile {
        setting,
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    file.write_all(secret.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .map_err(err)
}

/// Replaces the secret in `path` (mode 0600) through a temp file and a rename, so a reader
/// never sees half of it.
fn replace_secret(setting: &'static str, path: &Path, secret: &str) -> Result<(), AclError> {
    let tmp = path.with_extension("kvgit-new");
    let _ = std::fs::remove_file(&tmp);
    write_secret(setting, &tmp, secret)?;
    std::fs::rename(&tmp, path).map_err(|source| AclError::WriteFile {
        setting,
        path: path.to_owned(),
        source,
    })
}

/// 32 random bytes as hex: a password nobody has to type.
fn random_secret() -> Result<String, AclError> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| AclError::Usage(format!("cannot get random bytes for a password: {e}")))?;
    Ok(hex::encode(bytes))
}

/// The name of an object kvgit owns, checked against what both backends accept in names.
fn owned_name(what: &str, suffix: &str) -> Result<String, AclError> {
    let name = format!("{PREFIX}{suffix}");
    let ok = suffix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !suffix.is_empty()
        && name.len() <= 128;
    if ok {
        Ok(name)
    } else {
        Err(AclError::Config(format!(
            "{what}: {suffix:?} cannot be part of the name {name:?} (letters, digits, '-' and \
             '_' only, at most 128 characters)"
        )))
    }
}

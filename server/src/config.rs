//! The config file: parsed with figment (TOML + `KVGIT_…` env), then validated without I/O,
//! collecting every problem at once, each naming the file and the exact setting. Unknown
//! settings are the keys serde itself ignored (`serde_ignored`); `[backend]` is the chosen
//! backend crate's own config type, with that crate's defaults and checks.

use crate::secret::Secret;
use backend_consul::ConsulConfig;
use backend_etcd::EtcdConfig;
use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Value};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use sync_core::rule::{Mode, Rule};
use sync_core::AreaName;

/// A config that passed validation.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, for messages.
    pub source: PathBuf,
    pub backend: BackendConfig,
    pub git: GitConfig,
    pub sync: SyncConfig,
    pub server: ServerConfig,
    pub areas: Vec<AreaConfig>,
}

/// `[backend]`: `kind = "etcd" | "consul"` (etcd when absent) picks the variant; every
/// other setting, its default and its checks belong to that backend's crate, and the
/// config is handed to its `connect` as it is.
#[derive(Debug, Clone)]
pub enum BackendConfig {
    Etcd(EtcdConfig),
    Consul(ConsulConfig),
}

impl BackendConfig {
    /// `backend.kind` as written in the file (`/status` names it before the backend
    /// answers; a connected backend names itself with `KvBackend::kind`).
    pub fn kind_name(&self) -> &'static str {
        match self {
            BackendConfig::Etcd(_) => "etcd",
            BackendConfig::Consul(_) => "consul",
        }
    }

    pub fn endpoints(&self) -> &[String] {
        match self {
            BackendConfig::Etcd(c) => &c.endpoints,
            BackendConfig::Consul(c) => &c.endpoints,
        }
    }

    /// Bound on one request to the store; callers waiting on the store use it too.
    pub fn request_timeout(&self) -> Duration {
        match self {
            BackendConfig::Etcd(c) => c.request_timeout,
            BackendConfig::Consul(c) => c.request_timeout,
        }
    }

    /// What the backend takes in one write, known without connecting (`kvgit validate`).
    pub fn write_limits(&self) -> sync_core::WriteLimits {
        match self {
            BackendConfig::Etcd(_) => sync_core::WriteLimits {
                max_ops: backend_etcd::MAX_TXN_OPS,
                max_bytes: backend_etcd::MAX_TXN_BYTES,
                max_value_bytes: backend_etcd::MAX_SINGLE_OP_BYTES,
            },
            BackendConfig::Consul(c) => backend_consul::write_limits(c.max_txn_ops),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GitConfig {
    /// Absolute, or relative to the config file's directory.
    pub repo: PathBuf,
    pub branch: String,
    pub remote: Option<String>,
    pub author_name: String,
    pub author_email: String,
    /// A fetch or push still running after this long is killed (with its ssh/https child).
    pub timeout: Duration,
    /// `ssh_key_file` and `known_hosts_file`, checked: ssh remotes are reached with this key
    /// only and this known_hosts only (strict host key checking). `https_token_file` (read
    /// at start) and `https_user`: https remotes get this token through a credential helper.
    pub remote_auth: Option<gitstore::RemoteAuth>,
    /// `sign_key_file`, checked (readable, no passphrase): every kvgit commit is signed.
    pub sign_key: Option<gitstore::SigningKey>,
    /// `allowed_signers_file`, checked for form: Git -> KV applies only commits signed by these.
    pub allowed_signers: Option<gitstore::AllowedSigners>,
}

#[derive(Debug, Clone)]
pub struct SyncConfig {
    pub node: String,
    pub batch_window: Duration,
    pub batch_max: usize,
    pub push_interval: Duration,
    pub fetch_interval: Duration,
    pub max_delete_fraction: f64,
    /// KV -> Git: a batch deleting fewer keys than this is never held back as a mass
    /// delete, whatever the fraction (small areas may lose their last keys).
    pub mass_delete_min_keys: usize,
    /// TTL of this node's lease (etcd) or session (Consul); its areas move to another node
    /// when it is not renewed for this long.
    pub lease_ttl: Duration,
    /// Where members and area owners are recorded in the KV store; outside every area.
    pub ownership_prefix: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: String,
    /// `Authorization: Bearer` token for `POST /sync` (`sync_token` or `sync_token_file`).
    pub sync_token: Option<Secret>,
    /// Key of GitHub/Gitea HMAC-SHA256 signatures and GitLab's `X-Gitlab-Token`
    /// (`webhook_secret` or `webhook_secret_file`).
    pub webhook_secret: Option<Secret>,
    /// `server.ui`: the operators' web page at `/` and its `/api/v1` reads (default true).
    pub ui: bool,
    /// `server.ui_show_values`: values (and value diffs) on the web page; off by default,
    /// since values may be secrets.
    pub ui_show_values: bool,
}

#[derive(Debug, Clone)]
pub struct AreaConfig {
    pub name: AreaName,
    pub prefix: Vec<u8>,
    /// Directory in the repository, '/'-separated, no leading or trailing '/'.
    pub path: String,
    pub rule: Rule,
    /// `schema`: a JSON Schema (2020-12) file, a path in the repository, that the area's
    /// values or documents must match (`kvgit validate`; apply refuses what does not).
    pub schema: Option<String>,
    /// `format`: one file per key, or documents (JSON/YAML files standing for key subtrees).
    pub format: AreaFormat,
}

/// How an area's files hold its keys (`format`; docs/documents.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AreaFormat {
    /// One file per key (docs/mapping.md).
    #[default]
    Files,
    /// `.json`, `.yaml` and `.yml` files are documents; `json` or `yaml` names the usual
    /// format of the area's documents, and `kvgit fmt` treats both the same.
    Json,
    Yaml,
}

impl AreaFormat {
    pub fn is_documents(self) -> bool {
        self != AreaFormat::Files
    }
}

/// Every problem found in a config, one line each.
#[derive(Debug)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problems.join("\n"))
    }
}

impl std::error::Error for ConfigError {}

// The raw shapes: every field optional or loosely typed so validation can report all
// problems at once instead of stopping at serde's first. `[backend]` stays a table here and
// is parsed by `parse_backend` once `kind` is known.
#[derive(Deserialize, Default)]
struct RawConfig {
    #[serde(default)]
    backend: Dict,
    #[serde(default)]
    git: RawGit,
    #[serde(default)]
    sync: RawSync,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    area: Vec<RawArea>,
}

#[derive(Deserialize, Default)]
struct RawGit {
    repo: Option<PathBuf>,
    branch: Option<String>,
    remote: Option<String>,
    author_name: Option<String>,
    author_email: Option<String>,
    timeout: Option<String>,
    ssh_key_file: Option<PathBuf>,
    known_hosts_file: Option<PathBuf>,
    sign_key_file: Option<PathBuf>,
    allowed_signers_file: Option<PathBuf>,
    https_token_file: Option<PathBuf>,
    https_user: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawSync {
    node: Option<String>,
    batch_window: Option<String>,
    batch_max: Option<i64>,
    push_interval: Option<String>,
    fetch_interval: Option<String>,
    max_delete_fraction: Option<f64>,
    mass_delete_min_keys: Option<i64>,
    lease_ttl: Option<String>,
    ownership_prefix: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawServer {
    listen: Option<String>,
    sync_token: Option<String>,
    sync_token_file: Option<PathBuf>,
    webhook_secret: Option<String>,
    webhook_secret_file: Option<PathBuf>,
    ui: Option<bool>,
    ui_show_values: Option<bool>,
}

#[derive(Deserialize, Default)]
struct RawArea {
    name: Option<String>,
    prefix: Option<String>,
    path: Option<String>,
    mode: Option<String>,
    self_heal: Option<bool>,
    schema: Option<String>,
    format: Option<String>,
}

/// Load and validate `path` with `KVGIT_…` overrides from the environment.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    if !path.is_file() {
        return Err(ConfigError {
            problems: vec![format!(
                "{file}: config file not found (pass -c/--config FILE)"
            )],
        });
    }
    let figment = Figment::new()
        .merge(Toml::file(path))
        // KVGIT_LOG is the log filter, not a setting.
        .merge(Env::prefixed("KVGIT_").ignore(&["log"]).split("__"));
    let merged = match figment.extract::<Dict>() {
        Ok(dict) => Value::from(dict),
        Err(e) => {
            return Err(ConfigError {
                problems: figment_problems(&file, e),
            })
        }
    };
    let (raw, unknown) = deserialize_noting_unknown::<RawConfig>(&merged);
    let mut problems: Vec<String> = unknown
        .into_iter()
        .map(|setting| format!("{setting}: unknown setting"))
        .collect();
    let raw = match raw {
        Ok(raw) => raw,
        Err(e) => {
            problems.extend(figment_problems(&file, e));
            return Err(ConfigError {
                problems: prefix_all(&file, problems),
            });
        }
    };
    let base_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let config = validate(raw, path, base_dir, &mut problems);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError {
            problems: prefix_all(&file, problems),
        })
    }
}

fn prefix_all(file: &str, problems: Vec<String>) -> Vec<String> {
    problems
        .into_iter()
        .map(|p| {
            if p.starts_with(file) {
                p
            } else {
                format!("{file}: {p}")
            }
        })
        .collect()
}

fn figment_problems(file: &str, e: figment::Error) -> Vec<String> {
    e.into_iter()
        .map(|e| {
            let setting = e.path.join(".");
            let kind = e.kind.to_string();
            if setting.is_empty() {
                format!("{file}: {kind}")
            } else {
                format!("{file}: {setting}: {kind}")
            }
        })
        .collect()
}

/// Deserializes `T` from `value`, and names every key `T` has no field for (`sync.colour`,
/// `area[0].colour`): serde finds them, so no list of known settings is kept by hand.
fn deserialize_noting_unknown<T: DeserializeOwned>(
    value: &Value,
) -> (Result<T, figment::Error>, Vec<String>) {
    let mut unknown = Vec::new();
    let result = serde_ignored::deserialize(value, |path| unknown.push(setting_name(&path)));
    (result, unknown)
}

/// A path as the messages spell settings: `sync.colour`, `area[0].colour`.
fn setting_name(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", setting_name(parent)),
        Path::Map { parent, key } => match setting_name(parent) {
            p if p.is_empty() => key.clone(),
            p => format!("{p}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => setting_name(parent),
    }
}

/// `[backend]`: `kind` picks the backend, whose config type parses the rest. A setting that
/// fails to parse is reported and left at its default, so the other settings and the
/// backend's own checks are still reported in the same run; a setting of the other kind is
/// refused naming the kind it belongs to.
fn parse_backend(mut table: Dict, base_dir: &Path, problems: &mut Vec<String>) -> BackendConfig {
    let kind = table.remove("kind");
    let mut backend = match kind.as_ref().map(|k| k.as_str()) {
        None | Some(Some("etcd")) => {
            let cfg = parse_settings::<EtcdConfig, ConsulConfig>(table, "consul", problems);
            BackendConfig::Etcd(cfg)
        }
        Some(Some("consul")) => {
            let endpoints_set = table.contains_key("endpoints");
            let mut cfg = parse_settings::<ConsulConfig, EtcdConfig>(table, "etcd", problems);
            // Consul's CLI variables (CONSUL_HTTP_ADDR, …) fill what the config leaves unset.
            cfg.resolve_paths(base_dir);
            problems.extend(cfg.apply_env(endpoints_set, |var| std::env::var(var).ok()));
            BackendConfig::Consul(cfg)
        }
        Some(other) => {
            let why = other.map_or_else(
                || "is not a string".into(),
                |k| format!("{k:?} is not a backend"),
            );
            problems.push(format!("backend.kind: {why} (valid: \"etcd\", \"consul\")"));
            return BackendConfig::Etcd(EtcdConfig::default());
        }
    };
    problems.extend(match &backend {
        BackendConfig::Etcd(c) => c.validate(),
        BackendConfig::Consul(c) => c.validate(),
    });
    if let BackendConfig::Etcd(c) = &mut backend {
        c.resolve_paths(base_dir);
    }
    backend
}

/// The backend settings in `table` as `T`, every problem pushed to `problems`. A key `T`
/// does not know but `Other` (the other kind's config) does is named as belonging to
/// `other_kind`.
fn parse_settings<T, Other>(mut table: Dict, other_kind: &str, problems: &mut Vec<String>) -> T
where
    T: DeserializeOwned + Default,
    Other: DeserializeOwned,
{
    // serde stops at the first bad value: report it, drop it (its default applies) and go
    // again; every round drops a key, so this ends.
    let (cfg, unknown) = loop {
        match deserialize_noting_unknown::<T>(&Value::from(table.clone())) {
            (Ok(cfg), unknown) => break (cfg, unknown),
            (Err(errors), _) => {
                let mut dropped = false;
                for e in errors {
                    let setting = e.path.iter().fold("backend".to_owned(), |s, k| s + "." + k);
                    problems.push(format!("{setting}: {}", e.kind));
                    dropped |= e.path.first().is_some_and(|k| table.remove(k).is_some());
                }
                if !dropped {
                    break (T::default(), Vec::new());
                }
            }
        }
    };
    for setting in unknown {
        let of_other_kind = table.get(&setting).is_some_and(|value| {
            let probe = Value::from(Dict::from([(setting.clone(), value.clone())]));
            deserialize_noting_unknown::<Other>(&probe).1.is_empty()
        });
        if of_other_kind {
            problems.push(format!(
                "backend.{setting}: only applies to kind = \"{other_kind}\""
            ));
        } else {
            problems.push(format!("backend.{setting}: unknown setting"));
        }
    }
    cfg
}

fn duration(
    setting: &str,
    raw: Option<String>,
    default: &str,
    problems: &mut Vec<String>,
) -> Duration {
    let text = raw.unwrap_or_else(|| default.to_string());
    match humantime::parse_duration(&text) {
        Ok(d) if !d.is_zero() => d,
        Ok(_) => {
            problems.push(format!("{setting}: must be longer than zero, got {text:?}"));
            Duration::from_secs(1)
        }
        Err(e) => {
            problems.push(format!(
                "{setting}: {text:?} is not a duration ({e}); write e.g. \"500ms\", \"5s\", \"1m\""
            ));
            Duration::from_secs(1)
        }
    }
}

fn validate(raw: RawConfig, path: &Path, base_dir: &Path, problems: &mut Vec<String>) -> Config {
    let resolve = |p: PathBuf| if p.is_absolute() { p } else { base_dir.join(p) };
    let backend = parse_backend(raw.backend, base_dir, problems);

    let node = raw.sync.node.unwrap_or_else(default_node);
    if node.is_empty() || node.chars().any(|c| c.is_control() || c == '<' || c == '>') {
        problems.push(format!("sync.node: {node:?} is not a usable node name"));
    }
    let batch_max = match raw.sync.batch_max {
        None => 10_000,
        Some(n) if n >= 1 => n as usize,
        Some(n) => {
            problems.push(format!("sync.batch_max: must be at least 1, got {n}"));
            1
        }
    };
    let max_delete_fraction = raw.sync.max_delete_fraction.unwrap_or(0.5);
    if !(0.0..=1.0).contains(&max_delete_fraction) {
        problems.push(format!(
            "sync.max_delete_fraction: must be between 0 and 1, got {max_delete_fraction}"
        ));
    }
    let mass_delete_min_keys = match raw.sync.mass_delete_min_keys {
        None => 10,
        Some(n) if n >= 1 => n as usize,
        Some(n) => {
            problems.push(format!(
                "sync.mass_delete_min_keys: must be at least 1, got {n}"
            ));
            1
        }
    };
    let sync = SyncConfig {
        mass_delete_min_keys,
        batch_window: duration("sync.batch_window", raw.sync.batch_window, "1s", problems),
        batch_max,
        push_interval: duration("sync.push_interval", raw.sync.push_interval, "5s", problems),
        fetch_interval: duration(
            "sync.fetch_interval",
            raw.sync.fetch_interval,
            "30s",
            problems,
        ),
        max_delete_fraction,
        lease_ttl: duration("sync.lease_ttl", raw.sync.lease_ttl, "10s", problems),
        ownership_prefix: raw
            .sync
            .ownership_prefix
            .unwrap_or_else(|| DEFAULT_OWNERSHIP_PREFIX.into())
            .into_bytes(),
        node: node.clone(),
    };
    if sync.ownership_prefix.is_empty() {
        problems.push("sync.ownership_prefix: must not be empty (it would hold every key)".into());
    }
    if sync.lease_ttl < Duration::from_secs(2) {
        problems.push(format!(
            "sync.lease_ttl: {:?} is too short; at least 2s (renewals go every third of it)",
            sync.lease_ttl
        ));
    }

    let branch = raw.git.branch.unwrap_or_else(|| "main".into());
    if branch.is_empty()
        || branch.starts_with('-')
        || branch.contains("..")
        || branch
            .chars()
            .any(|c| c.is_whitespace() || "~^:?*[\\".contains(c))
    {
        problems.push(format!("git.branch: {branch:?} is not a valid branch name"));
    }
    let remote = raw.git.remote.filter(|r| !r.is_empty());
    if let Some(remote) = &remote {
        check_remote_credentials(remote, problems);
    }
    let remote_auth = remote_auth(
        raw.git.ssh_key_file.map(&resolve),
        raw.git.known_hosts_file.map(&resolve),
        problems,
    );
    let remote_auth = https_auth(
        remote_auth,
        remote.as_deref(),
        raw.git.https_token_file.map(&resolve),
        raw.git.https_user,
        problems,
    );
    let git = GitConfig {
        repo: resolve(raw.git.repo.unwrap_or_else(|| PathBuf::from("state.git"))),
        branch,
        remote,
        author_name: raw
            .git
            .author_name
            .unwrap_or_else(|| format!("kvgit {node}")),
        author_email: raw
            .git
            .author_email
            .unwrap_or_else(|| format!("kvgit@{node}")),
        timeout: duration("git.timeout", raw.git.timeout, "60s", problems),
        remote_auth,
        sign_key: checked_file(
            "git.sign_key_file",
            raw.git.sign_key_file,
            resolve,
            problems,
            gitstore::SigningKey::new,
        ),
        allowed_signers: checked_file(
            "git.allowed_signers_file",
            raw.git.allowed_signers_file,
            resolve,
            problems,
            gitstore::AllowedSigners::new,
        ),
    };

    let listen = raw.server.listen.unwrap_or_else(|| "127.0.0.1:9464".into());
    if listen.parse::<std::net::SocketAddr>().is_err() {
        problems.push(format!(
            "server.listen: {listen:?} is not an address:port (e.g. \"127.0.0.1:9464\")"
        ));
    }
    let server = ServerConfig {
        listen,
        sync_token: server_secret(
            "server.sync_token",
            raw.server.sync_token,
            raw.server.sync_token_file.map(&resolve),
            problems,
        ),
        webhook_secret: server_secret(
            "server.webhook_secret",
            raw.server.webhook_secret,
            raw.server.webhook_secret_file.map(&resolve),
            problems,
        ),
        ui: raw.server.ui.unwrap_or(true),
        ui_show_values: raw.server.ui_show_values.unwrap_or(false),
    };

    let areas = validate_areas(raw.area, problems);
    for (i, area) in areas.iter().enumerate() {
        let (a, o) = (&area.prefix, &sync.ownership_prefix);
        if a.starts_with(o) || o.starts_with(a) {
            problems.push(format!(
                "sync.ownership_prefix: {:?} overlaps area[{i}] ({}) prefix {:?}; ownership records must stay outside every area",
                String::from_utf8_lossy(o),
                area.name,
                String::from_utf8_lossy(a)
            ));
        }
    }
    Config {
        source: path.to_path_buf(),
        backend,
        git,
        sync,
        server,
        areas,
    }
}

/// A `[server]` secret given inline (`setting`) or in a file (`setting_file`, read now so a
/// bad file stops the start); both at once is refused. An empty inline value means unset.
fn server_secret(
    setting: &str,
    inline: Option<String>,
    file: Option<PathBuf>,
    problems: &mut Vec<String>,
) -> Option<Secret> {
    match (inline, file) {
        (Some(_), Some(_)) => {
            problems.push(format!("{setting} and {setting}_file: set one, not both"));
            None
        }
        (Some(value), None) => Secret::new(value),
        (None, Some(path)) => match crate::secret::read_file(&format!("{setting}_file"), &path) {
            Ok(secret) => Some(secret),
            Err(problem) => {
                problems.push(problem);
                None
            }
        },
        (None, None) => None,
    }
}

/// A password or token in `git.remote` would end up in logs, `/status` and process lists:
/// refused, and the message shows the URL without it.
fn check_remote_credentials(remote: &str, problems: &mut Vec<String>) {
    let Some((scheme, rest)) = remote.split_once("://") else {
        return;
    };
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let Some(at) = authority.rfind('@') else {
        return;
    };
    let user_info = &authority[..at];
    // `ssh://git@host` names a user; a password, or any user info over http(s), is a secret.
    let http = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
    if user_info.contains(':') || http {
        problems.push(format!(
            "git.remote: {:?} embeds a credential; remove it from the URL (ssh remotes: git.ssh_key_file and git.known_hosts_file; https remotes: git.https_token_file)",
            gitstore::redact_url(remote)
        ));
    }
}

/// A file setting (`git.sign_key_file`, `git.allowed_signers_file`) resolved against the
/// config's directory and checked by `check` now, so a bad file stops the start with one
/// line naming the setting.
fn checked_file<T, E: std::error::Error + 'static>(
    setting: &str,
    raw: Option<PathBuf>,
    resolve: impl Fn(PathBuf) -> PathBuf,
    problems: &mut Vec<String>,
    check: impl FnOnce(&Path) -> Result<T, E>,
) -> Option<T> {
    let path = resolve(raw?);
    check(&path)
        .map_err(|e| problems.push(format!("{setting}: {}", crate::errors::chain(&e))))
        .ok()
}

/// `git.ssh_key_file` and `git.known_hosts_file`: both or neither, each readable, the key
/// without a passphrase (checked now, so a bad file stops the start, not the first push).
fn remote_auth(
    key: Option<PathBuf>,
    known_hosts: Option<PathBuf>,
    problems: &mut Vec<String>,
) -> Option<gitstore::RemoteAuth> {
    use gitstore::RemoteAuthError as E;
    let (key, known_hosts) = match (key, known_hosts) {
        (None, None) => return None,
        (Some(key), Some(known_hosts)) => (key, known_hosts),
        (Some(_), None) => {
            problems.push("git.known_hosts_file: required with git.ssh_key_file (strict host key checking, no trust on first use)".into());
            return None;
        }
        (None, Some(_)) => {
            problems.push("git.ssh_key_file: required with git.known_hosts_file".into());
            return None;
        }
    };
    match gitstore::RemoteAuth::new(&key, &known_hosts) {
        Ok(auth) => Some(auth),
        Err(e) => {
            let setting = match &e {
                E::UnusablePath { path } | E::Unreadable { path, .. } if *path == known_hosts => {
                    "git.known_hosts_file"
                }
                _ => "git.ssh_key_file",
            };
            problems.push(format!("{setting}: {}", crate::errors::chain(&e)));
            None
        }
    }
}

/// `git.https_token_file` (read now: unreadable or empty stops the start) and
/// `git.https_user` (default `x-access-token`, which GitHub, Gitea and GitLab take with a
/// token), only with an http(s) remote; added to the ssh settings, if any.
fn https_auth(
    auth: Option<gitstore::RemoteAuth>,
    remote: Option<&str>,
    token_file: Option<PathBuf>,
    user: Option<String>,
    problems: &mut Vec<String>,
) -> Option<gitstore::RemoteAuth> {
    let Some(token_file) = token_file else {
        if user.is_some() {
            problems.push("git.https_user: only with git.https_token_file".into());
        }
        return auth;
    };
    let scheme = remote.and_then(|r| r.split_once("://")).map(|(s, _)| s);
    if !scheme.is_some_and(|s| s.eq_ignore_ascii_case("https") || s.eq_ignore_ascii_case("http")) {
        problems.push("git.https_token_file: only with an https:// (or http://) git.remote".into());
        return auth;
    }
    let token = match crate::secret::read_file("git.https_token_file", &token_file) {
        Ok(token) => token,
        Err(problem) => {
            problems.push(problem);
            return auth;
        }
    };
    let user = user.unwrap_or_else(|| "x-access-token".into());
    let token = token.expose().to_owned();
    let with = match auth {
        Some(auth) => auth.with_https(&user, token),
        None => gitstore::RemoteAuth::https(&user, token),
    };
    match with {
        Ok(auth) => Some(auth),
        Err(e) => {
            let setting = match e {
                gitstore::RemoteAuthError::UnusableUser { .. } => "git.https_user",
                _ => "git.https_token_file",
            };
            problems.push(format!("{setting}: {}", crate::errors::chain(&e)));
            None
        }
    }
}

fn validate_areas(raw: Vec<RawArea>, problems: &mut Vec<String>) -> Vec<AreaConfig> {
    if raw.is_empty() {
        problems.push("[[area]]: no area is configured; add at least one [[area]] table".into());
    }
    let mut areas: Vec<AreaConfig> = Vec::new();
    let mut names = BTreeMap::new();
    for (i, a) in raw.into_iter().enumerate() {
        let at = format!("area[{i}]");
        let name = a.name.unwrap_or_default();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            problems.push(format!(
                "{at}.name: {name:?} must be non-empty and use only [A-Za-z0-9._-]"
            ));
        } else if let Some(j) = names.insert(name.clone(), i) {
            problems.push(format!("{at}.name: {name:?} is also the name of area[{j}]"));
        }
        let prefix = match a.prefix {
            // "/" (or "") would take the whole keyspace, other tools' keys included.
            Some(p) if p.trim_matches('/').is_empty() && !p.is_empty() => {
                problems.push(format!(
                    "{at}.prefix: {p:?} would cover the whole keyspace; name a prefix such as \"/app/config/\""
                ));
                Vec::new()
            }
            Some(p) if !p.is_empty() => p.into_bytes(),
            _ => {
                problems.push(format!(
                    "{at}.prefix: missing (e.g. prefix = \"/app/config/\")"
                ));
                Vec::new()
            }
        };
        let path = a.path.unwrap_or_default();
        if let Err(why) = check_repo_path(&path) {
            problems.push(format!("{at}.path: {path:?} {why}"));
        }
        let mode = match a.mode.as_deref() {
            Some("kv-to-git") => Mode::KvToGit,
            Some("git-to-kv") => Mode::GitToKv,
            Some("both") => Mode::Both,
            Some(other) => {
                problems.push(format!(
                    "{at}.mode: {other:?} is not a mode (valid: \"kv-to-git\", \"git-to-kv\", \"both\")"
                ));
                Mode::Both
            }
            None => {
                problems.push(format!(
                    "{at}.mode: missing (one of \"kv-to-git\", \"git-to-kv\", \"both\")"
                ));
                Mode::Both
            }
        };
        let format = match a.format.as_deref() {
            None | Some("files") => AreaFormat::Files,
            Some("json") => AreaFormat::Json,
            Some("yaml") => AreaFormat::Yaml,
            Some(other) => {
                problems.push(format!(
                    "{at}.format: {other:?} is not a format (valid: \"files\", \"json\", \"yaml\")"
                ));
                AreaFormat::Files
            }
        };
        let area = AreaConfig {
            format,
            name: AreaName(name),
            prefix,
            path: path.trim_matches('/').to_string(),
            rule: Rule {
                mode,
                self_heal: a.self_heal.unwrap_or(true),
            },
            schema: a.schema.and_then(|schema| match check_repo_path(&schema) {
                Ok(()) => Some(schema.trim_end_matches('/').to_string()),
                Err(why) => {
                    problems.push(format!("{at}.schema: {schema:?} {why}"));
                    None
                }
            }),
        };
        for (j, other) in areas.iter().enumerate() {
            if !area.prefix.is_empty()
                && !other.prefix.is_empty()
                && (area.prefix.starts_with(&other.prefix)
                    || other.prefix.starts_with(&area.prefix))
            {
                problems.push(format!(
                    "{at}.prefix: {:?} overlaps area[{j}] ({}) prefix {:?}; areas never overlap",
                    String::from_utf8_lossy(&area.prefix),
                    other.name,
                    String::from_utf8_lossy(&other.prefix)
                ));
            }
            if !area.path.is_empty()
                && !other.path.is_empty()
                && paths_overlap(&area.path, &other.path)
            {
                problems.push(format!(
                    "{at}.path: {:?} overlaps area[{j}] ({}) path {:?}; areas never overlap",
                    area.path, other.name, other.path
                ));
            }
        }
        areas.push(area);
    }
    areas
}

fn check_repo_path(path: &str) -> Result<(), &'static str> {
    if path.starts_with('/') {
        return Err("must be relative to the repository root (e.g. \"entries\"), not absolute");
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err("must name a directory of the repository (e.g. \"entries\")");
    }
    for seg in trimmed.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err("must not contain empty, \".\" or \"..\" segments");
        }
        if seg.eq_ignore_ascii_case(".git") {
            return Err("must not contain a \".git\" segment");
        }
        if seg.len() > 255 || seg.chars().any(|c| c.is_control() || c == '\\') {
            return Err("has a segment over 255 bytes or with control characters");
        }
    }
    Ok(())
}

fn paths_overlap(a: &str, b: &str) -> bool {
    let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
    a == b || a.starts_with(&format!("{b}/")) || b.starts_with(&format!("{a}/"))
}

/// Members and owners live under here unless `sync.ownership_prefix` says otherwise.
pub const DEFAULT_OWNERSHIP_PREFIX: &str = "kvgit/ownership/";

fn default_node() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "kvgit".into())
}

impl Config {
    /// The areas selected by `--area` (all when None); an unknown name is an error.
    pub fn select_areas(&self, only: Option<&str>) -> Result<Vec<&AreaConfig>, String> {
        match only {
            None => Ok(self.areas.iter().collect()),
            Some(name) => self
                .areas
                .iter()
                .find(|a| a.name.0 == name)
                .map(|a| vec![a])
                .ok_or_else(|| {
                    let known: Vec<&str> = self.areas.iter().map(|a| a.name.0.as_str()).collect();
                    format!(
                        "--area {name:?}: no such area in {} (areas: {})",
                        self.source.display(),
                        known.join(", ")
                    )
                }),
        }
    }

    /// The area whose prefix holds `key`.
    pub fn area_of_key(&self, key: &[u8]) -> Option<&AreaConfig> {
        self.areas.iter().find(|a| key.starts_with(&a.prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(toml: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kvgit.toml");
        std::fs::write(&path, toml).expect("write config");
        load(&path)
    }

    #[test]
    fn every_problem_reported_at_once_naming_the_setting() {
        let err = load_str(
            r#"
[backend]
kind = "zookeeper"
[sync]
batch_window = "soon"
colour = "blue"
[[area]]
name = "a"
prefix = "/x/"
path = "a"
mode = "sideways"
[[area]]
name = "b"
prefix = "/x/y/"
path = "a/b"
mode = "both"
"#,
        )
        .expect_err("bad config must be refused");
        let text = err.to_string();
        for needle in [
            "backend.kind: \"zookeeper\"",
            "sync.batch_window: \"soon\" is not a duration",
            "sync.colour: unknown setting",
            "area[0].mode: \"sideways\"",
            "area[1].prefix: \"/x/y/\" overlaps area[0]",
            "area[1].path: \"a/b\" overlaps area[0]",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        assert!(text.lines().all(|l| l.contains("kvgit.toml")), "{text}");
    }

    #[test]
    fn a_good_config_loads_with_defaults() {
        let cfg = load_str(
            "[git]\nrepo = \"state.git\"\n[[area]]\nname = \"entries\"\nprefix = \"/sigil/entries/\"\npath = \"entries\"\nmode = \"both\"\n",
        )
        .expect("valid");
        assert_eq!(cfg.backend.kind_name(), "etcd");
        assert_eq!(cfg.backend.endpoints(), ["http://127.0.0.1:2379"]);
        assert_eq!(cfg.backend.request_timeout(), Duration::from_secs(30));
        assert_eq!(cfg.sync.batch_max, 10_000);
        assert_eq!(cfg.sync.max_delete_fraction, 0.5);
        assert!(cfg.git.repo.is_absolute() || cfg.git.repo.starts_with("/"));
        assert_eq!(cfg.areas[0].prefix, b"/sigil/entries/");
        assert_eq!(cfg.sync.lease_ttl, Duration::from_secs(10));
        assert_eq!(
            cfg.sync.ownership_prefix,
            DEFAULT_OWNERSHIP_PREFIX.as_bytes()
        );
    }

    const AREA: &str = "[[area]]\nname = \"a\"\nprefix = \"/a/\"\npath = \"a\"\nmode = \"both\"\n";

    #[test]
    fn server_secrets_come_inline_or_from_files_and_never_print() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kvgit.toml");
        let load_here = |toml: &str| {
            std::fs::write(&path, toml).expect("write config");
            load(&path)
        };
        std::fs::write(dir.path().join("webhook_secret"), "wh-s3cret\n").expect("write");
        std::fs::write(dir.path().join("sync_token"), "tok-s3cret").expect("write");
        let cfg = load_here(&format!(
            "[server]\nsync_token_file = \"sync_token\"\nwebhook_secret_file = \"webhook_secret\"\n{AREA}"
        ))
        .expect("secrets from files");
        let expose = |s: &Option<Secret>| s.as_ref().map(|s| s.expose().to_string());
        assert_eq!(
            expose(&cfg.server.sync_token).as_deref(),
            Some("tok-s3cret")
        );
        assert_eq!(
            expose(&cfg.server.webhook_secret).as_deref(),
            Some("wh-s3cret")
        );
        let debug = format!("{cfg:?}");
        assert!(!debug.contains("s3cret"), "{debug}");

        let cfg = load_here(&format!(
            "[server]\nsync_token = \"tok-s3cret\"\nwebhook_secret = \"wh-s3cret\"\n{AREA}"
        ))
        .expect("inline secrets");
        assert_eq!(
            expose(&cfg.server.sync_token).as_deref(),
            Some("tok-s3cret")
        );
        assert_eq!(
            expose(&cfg.server.webhook_secret).as_deref(),
            Some("wh-s3cret")
        );
        assert!(!format!("{cfg:?}").contains("s3cret"));

        std::fs::write(dir.path().join("empty"), "\n").expect("write");
        let err = load_here(&format!(
            "[server]\nsync_token_file = \"absent\"\nwebhook_secret_file = \"empty\"\n{AREA}"
        ))
        .expect_err("unreadable and empty secret files");
        let text = err.to_string();
        assert!(
            text.contains("server.sync_token_file: cannot read "),
            "{text}"
        );
        assert!(
            text.contains("server.webhook_secret_file: ") && text.contains("is empty"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 2, "{text}");

        let err = load_here(&format!(
            "[server]\nwebhook_secret = \"wh-s3cret\"\nwebhook_secret_file = \"webhook_secret\"\n{AREA}"
        ))
        .expect_err("both forms at once");
        let text = err.to_string();
        assert!(
            text.contains(
                "server.webhook_secret and server.webhook_secret_file: set one, not both"
            ),
            "{text}"
        );
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn every_backend_problem_is_reported_at_once_naming_the_setting() {
        let err = load_str(&format!(
            r#"
[backend]
kind = "etcd"
endpoints = ["127.0.0.1:2379"]
token = "t0ken"
user = "root"
request_timeout = "soon"
connect_timeout = "0s"
colour = "blue"
{AREA}"#
        ))
        .expect_err("bad backend must be refused");
        let text = err.to_string();
        for needle in [
            "backend.endpoints[0]: \"127.0.0.1:2379\" must start with http:// or https://",
            "backend.token: only applies to kind = \"consul\"",
            "backend.user and backend.password: set both or neither",
            "backend.request_timeout: \"soon\" is not a duration",
            "backend.connect_timeout: must be longer than zero, got \"0s\"",
            "backend.colour: unknown setting",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        assert_eq!(text.lines().count(), 6, "{text}");
        assert!(text.lines().all(|l| l.contains("kvgit.toml")), "{text}");
        assert!(!text.contains("t0ken"), "{text}");

        let err = load_str(&format!(
            "[backend]\nkind = \"consul\"\nuser = \"u\"\npassword = \"p\"\ncert_file = \"c.pem\"\n{AREA}"
        ))
        .expect_err("etcd settings under consul must be refused");
        let text = err.to_string();
        // cert_file is a setting of both kinds (Consul: client certificate).
        for setting in ["user", "password"] {
            let needle = format!("backend.{setting}: only applies to kind = \"etcd\"");
            assert!(text.contains(&needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn each_backend_brings_its_own_defaults_and_keeps_secrets_out_of_debug() {
        let cfg = load_str(&format!(
            "[backend]\nkind = \"consul\"\ntoken = \"s3cr3t\"\ndatacenter = \"dc1\"\n{AREA}"
        ))
        .expect("valid consul config");
        let BackendConfig::Consul(consul) = &cfg.backend else {
            panic!("kind = consul gave {:?}", cfg.backend.kind_name());
        };
        assert_eq!(cfg.backend.endpoints(), ["http://127.0.0.1:8500"]);
        assert_eq!(consul.datacenter.as_deref(), Some("dc1"));
        assert_eq!(consul.token.as_ref().map(|t| t.expose()), Some("s3cr3t"));
        assert_eq!(cfg.backend.request_timeout(), Duration::from_secs(30));
        assert!(!format!("{cfg:?}").contains("s3cr3t"));

        let cfg = load_str(&format!(
            "[backend]\nuser = \"root\"\npassword = \"hunter2\"\nca_file = \"tls/ca.pem\"\nrequest_timeout = \"500ms\"\n{AREA}"
        ))
        .expect("valid etcd config");
        let BackendConfig::Etcd(etcd) = &cfg.backend else {
            panic!("no kind gave {:?}", cfg.backend.kind_name());
        };
        assert_eq!(cfg.backend.request_timeout(), Duration::from_millis(500));
        assert_eq!(etcd.connect_timeout, Duration::from_secs(5));
        let ca = etcd.ca_file.as_deref().expect("ca_file");
        assert!(ca.is_absolute() && ca.ends_with("tls/ca.pem"), "{ca:?}");
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }

    #[test]
    fn ownership_records_stay_outside_every_area_and_the_ttl_is_sane() {
        let err = load_str(
            "[sync]\nlease_ttl = \"500ms\"\nownership_prefix = \"/app/kvgit/\"\n[[area]]\nname = \"app\"\nprefix = \"/app/\"\npath = \"app\"\n",
        )
        .expect_err("overlap and short TTL must be refused");
        let text = err.to_string();
        assert!(
            text.contains("sync.ownership_prefix: \"/app/kvgit/\" overlaps area[0] (app)"),
            "{text}"
        );
        assert!(text.contains("sync.lease_ttl"), "{text}");
    }

    #[test]
    fn a_remote_with_a_credential_is_refused_without_showing_it() {
        let err = load_str(&format!(
            "[git]\nremote = \"https://bob:hunter2@git.example.org/ops/state.git\"\n{AREA}"
        ))
        .expect_err("credential in the URL");
        let text = err.to_string();
        assert!(text.contains("git.remote: "), "{text}");
        assert!(
            text.contains("https://git.example.org/ops/state.git"),
            "{text}"
        );
        assert!(!text.contains("hunter2") && !text.contains("bob"), "{text}");
        let err = load_str(&format!(
            "[git]\nremote = \"https://ghp_token@git.example.org/x.git\"\n{AREA}"
        ))
        .expect_err("token as the user");
        assert!(!err.to_string().contains("ghp_token"), "{err}");
        let cfg = load_str(&format!(
            "[git]\nremote = \"ssh://git@git.example.org/ops/state.git\"\n{AREA}"
        ))
        .expect("an ssh user is no credential");
        assert!(cfg.git.remote_auth.is_none());
    }

    #[test]
    fn ssh_key_and_known_hosts_are_checked_relative_to_the_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kvgit.toml");
        let load_with = |git: &str| {
            std::fs::write(&path, format!("[git]\n{git}{AREA}")).expect("write config");
            load(&path)
        };
        let problem = |git: &str| {
            let text = load_with(git).expect_err("refused").to_string();
            assert_eq!(text.lines().count(), 1, "{text}");
            text
        };
        let text = problem("ssh_key_file = \"deploy_key\"\n");
        assert!(text.contains("git.known_hosts_file: required"), "{text}");
        let text = problem("ssh_key_file = \"deploy_key\"\nknown_hosts_file = \"known_hosts\"\n");
        assert!(text.contains("git.ssh_key_file: "), "{text}");
        assert!(
            text.contains(&dir.path().join("deploy_key").display().to_string()),
            "{text}"
        );

        let keygen = |name: &str, pass: &str| {
            std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-C", "test", "-N", pass, "-f"])
                .arg(dir.path().join(name))
                .status()
                .is_ok_and(|s| s.success())
        };
        if !keygen("deploy_key", "") || !keygen("locked_key", "secret") {
            eprintln!("ssh-keygen not installed: skipping the key checks");
            return;
        }
        let text = problem("ssh_key_file = \"deploy_key\"\nknown_hosts_file = \"known_hosts\"\n");
        assert!(text.contains("git.known_hosts_file: "), "{text}");
        std::fs::write(dir.path().join("known_hosts"), "").expect("write known_hosts");
        let text = problem("ssh_key_file = \"locked_key\"\nknown_hosts_file = \"known_hosts\"\n");
        assert!(
            text.contains("git.ssh_key_file: ") && text.contains("passphrase"),
            "{text}"
        );
        let cfg = load_with("ssh_key_file = \"deploy_key\"\nknown_hosts_file = \"known_hosts\"\n")
            .expect("a usable key");
        let auth = cfg.git.remote_auth.expect("remote auth");
        assert_eq!(
            auth.ssh_key(),
            Some(dir.path().join("deploy_key").as_path())
        );
        assert_eq!(
            auth.known_hosts(),
            Some(dir.path().join("known_hosts").as_path())
        );
    }

    #[test]
    fn an_https_token_file_is_read_relative_to_the_config_and_never_shown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kvgit.toml");
        let load_with = |git: &str| {
            std::fs::write(&path, format!("[git]\n{git}{AREA}")).expect("write config");
            load(&path)
        };
        let problem = |git: &str| {
            let text = load_with(git).expect_err("refused").to_string();
            assert_eq!(text.lines().count(), 1, "{text}");
            text
        };
        const HTTPS: &str = "remote = \"https://git.example.org/ops/state.git\"\n";
        let text = problem(&format!("{HTTPS}https_token_file = \"git_token\"\n"));
        assert!(
            text.contains("git.https_token_file: cannot read "),
            "{text}"
        );
        assert!(
            text.contains(&dir.path().join("git_token").display().to_string()),
            "{text}"
        );
        std::fs::write(dir.path().join("git_token"), "\n").expect("write token");
        let text = problem(&format!("{HTTPS}https_token_file = \"git_token\"\n"));
        assert!(
            text.contains("git.https_token_file: ") && text.contains("is empty"),
            "{text}"
        );
        std::fs::write(dir.path().join("git_token"), "ghp_s3cr3t\n").expect("write token");
        let text = problem(
            "remote = \"ssh://git@git.example.org/x.git\"\nhttps_token_file = \"git_token\"\n",
        );
        assert!(
            text.contains("git.https_token_file: only with an https://"),
            "{text}"
        );
        let text = problem(&format!("{HTTPS}https_user = \"me\"\n"));
        assert!(text.contains("git.https_user: only with"), "{text}");
        let text = problem(&format!(
            "{HTTPS}https_token_file = \"git_token\"\nhttps_user = \"a:b\"\n"
        ));
        assert!(text.contains("git.https_user: "), "{text}");
        assert!(!text.contains("ghp_s3cr3t"), "{text}");

        let cfg = load_with(&format!("{HTTPS}https_token_file = \"git_token\"\n"))
            .expect("a usable token");
        assert!(!format!("{cfg:?}").contains("ghp_s3cr3t"));
        let auth = cfg.git.remote_auth.expect("remote auth");
        assert_eq!(auth.https_user(), Some("x-access-token"));
        let cfg = load_with(
            "remote = \"http://127.0.0.1:1/x.git\"\nhttps_token_file = \"git_token\"\nhttps_user = \"kvgit\"\n",
        )
        .expect("http for tests");
        assert_eq!(
            cfg.git.remote_auth.expect("remote auth").https_user(),
            Some("kvgit")
        );
    }

    #[test]
    fn a_root_prefix_and_an_absolute_path_are_refused() {
        let err = load_str(
            "[[area]]\nname = \"all\"\nprefix = \"/\"\npath = \"/etc\"\nmode = \"both\"\n",
        )
        .expect_err("prefix / and path /etc must be refused");
        let text = err.to_string();
        assert!(
            text.contains("area[0].prefix: \"/\" would cover the whole keyspace"),
            "{text}"
        );
        assert!(
            text.contains("area[0].path: \"/etc\" must be relative"),
            "{text}"
        );
        let err = load_str("[sync]\nmass_delete_min_keys = 0\n[[area]]\nname = \"a\"\nprefix = \"/a/\"\npath = \"a\"\nmode = \"both\"\n")
            .expect_err("zero min keys");
        assert!(
            err.to_string().contains("sync.mass_delete_min_keys"),
            "{err}"
        );
    }
}

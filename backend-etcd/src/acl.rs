//! etcd's auth admin API for `kvgit acl`: reads the kvgit-owned roles and users (`kvgit-*`)
//! with their permissions and grants, and makes the single changes a plan consists of.

use crate::config::{connect_options, ConnectError, EtcdConfig, Secret};
use crate::errors::Ctx;
use crate::keys::prefix_range;
use etcd_client::{
    AuthClient, Client, Permission, PermissionType, RoleRevokePermissionOptions, UserAddOptions,
};
use std::collections::BTreeMap;
use std::fmt;
use sync_core::BackendError;

/// Only roles and users whose name starts with this are read or ever changed.
pub const OWNED_PREFIX: &str = "kvgit-";

/// What a permission allows, as etcd names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PermKind {
    Read,
    Write,
    Readwrite,
}

impl fmt::Display for PermKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PermKind::Read => "read",
            PermKind::Write => "write",
            PermKind::Readwrite => "readwrite",
        })
    }
}

/// One role permission on the key range `[key, range_end)` (`range_end` empty: `key` alone).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Perm {
    pub kind: PermKind,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

impl Perm {
    /// `kind` on every key that starts with `prefix`.
    pub fn prefix(kind: PermKind, prefix: &[u8]) -> Perm {
        let (key, range_end) = prefix_range(prefix);
        Perm {
            kind,
            key,
            range_end,
        }
    }

    /// `kind` on exactly `key`.
    pub fn key(kind: PermKind, key: &[u8]) -> Perm {
        Perm {
            kind,
            key: key.to_vec(),
            range_end: Vec::new(),
        }
    }
}

/// `readwrite [/sigil/entries/, /sigil/entries0)`, or `read key` for a single key; bytes
/// that are not printable ASCII are escaped.
impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.range_end.is_empty() {
            write!(f, "{} {}", self.kind, escape(&self.key))
        } else {
            write!(
                f,
                "{} [{}, {})",
                self.kind,
                escape(&self.key),
                escape(&self.range_end)
            )
        }
    }
}

fn escape(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// The kvgit-owned part of etcd's auth store, plus which other users hold kvgit roles.
#[derive(Debug, Clone, Default)]
pub struct AclState {
    /// `kvgit-*` roles and their permissions, sorted.
    pub roles: BTreeMap<String, Vec<Perm>>,
    /// Every user (kvgit's or not) and the `kvgit-*` roles it holds, sorted.
    pub users: BTreeMap<String, Vec<String>>,
}

/// Why an admin call failed; each names the object it was about.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error("{0}")]
    Connect(#[from] ConnectError),
    #[error("etcd at {endpoints} refused admin user {user}: {detail}")]
    AdminRefused {
        endpoints: String,
        user: String,
        detail: String,
    },
    #[error("{what}: {source}")]
    Request {
        what: String,
        #[source]
        source: BackendError,
    },
}

/// A connection to etcd as an admin (a user with the root role).
pub struct EtcdAdmin {
    auth: AuthClient,
    ctx: Ctx,
}

impl EtcdAdmin {
    /// Connects with `cfg` (endpoints and TLS as configured; `cfg.user`/`cfg.password` are
    /// the admin's) and checks with one read of the role list that it may administer auth.
    pub async fn connect(cfg: &EtcdConfig) -> Result<EtcdAdmin, AclError> {
        let opts = connect_options(cfg).await?;
        let ctx = Ctx {
            endpoints: cfg.endpoints_label(),
            request_timeout: cfg.request_timeout,
        };
        let user = cfg.user.clone().unwrap_or_else(|| "(none)".to_owned());
        let budget = cfg.connect_timeout + cfg.request_timeout;
        let client =
            match tokio::time::timeout(budget, Client::connect(&cfg.endpoints, Some(opts))).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    return Err(match ctx.map("connect", e) {
                        BackendError::Unavailable { detail, .. } => ConnectError::Unreachable {
                            endpoints: ctx.endpoints.clone(),
                            detail,
                        }
                        .into(),
                        other => AclError::AdminRefused {
                            endpoints: ctx.endpoints.clone(),
                            user,
                            detail: other.to_string(),
                        },
                    })
                }
                Err(_) => {
                    return Err(ConnectError::Unreachable {
                        endpoints: ctx.endpoints.clone(),
                        detail: format!("no answer within {budget:?}"),
                    }
                    .into())
                }
            };
        // Auth admin calls need the root role: one cheap call proves it before any plan.
        let mut auth = client.auth_client();
        match ctx.call("role list", auth.role_list()).await {
            Ok(_) => Ok(EtcdAdmin { auth, ctx }),
            Err(BackendError::Unavailable { detail, .. }) => Err(ConnectError::Unreachable {
                endpoints: ctx.endpoints,
                detail,
            }
            .into()),
            Err(e) => Err(AclError::AdminRefused {
                endpoints: ctx.endpoints,
                user,
                detail: e.to_string(),
            }),
        }
    }

    /// The `kvgit-*` roles with their permissions and every user's `kvgit-*` roles.
    pub async fn read(&self) -> Result<AclState, AclError> {
        let mut state = AclState::default();
        let mut auth = self.auth.clone();
        let roles = self.call("role list".into(), auth.role_list()).await?;
        for name in roles.roles().iter().filter(|r| owned(r)) {
            let resp = self
                .call(format!("role {name}: read"), auth.role_get(name.as_str()))
                .await?;
            let mut perms: Vec<Perm> = resp.permissions().iter().map(from_client).collect();
            perms.sort();
            state.roles.insert(name.clone(), perms);
        }
        let users = self.call("user list".into(), auth.user_list()).await?;
        for name in users.users() {
            let resp = self
                .call(format!("user {name}: read"), auth.user_get(name.as_str()))
                .await?;
            let mut roles: Vec<String> =
                resp.roles().iter().filter(|r| owned(r)).cloned().collect();
            roles.sort();
            state.users.insert(name.clone(), roles);
        }
        Ok(state)
    }

    pub async fn add_role(&self, role: &str) -> Result<(), AclError> {
        let mut auth = self.auth.clone();
        self.call(format!("role {role}: add"), auth.role_add(role))
            .await
            .map(drop)
    }

    pub async fn delete_role(&self, role: &str) -> Result<(), AclError> {
        let mut auth = self.auth.clone();
        self.call(format!("role {role}: delete"), auth.role_delete(role))
            .await
            .map(drop)
    }

    pub async fn grant(&self, role: &str, perm: &Perm) -> Result<(), AclError> {
        let kind = match perm.kind {
            PermKind::Read => PermissionType::Read,
            PermKind::Write => PermissionType::Write,
            PermKind::Readwrite => PermissionType::Readwrite,
        };
        let mut p = Permission::new(kind, perm.key.clone());
        if !perm.range_end.is_empty() {
            p = p.with_range_end(perm.range_end.clone());
        }
        let mut auth = self.auth.clone();
        self.call(
            format!("role {role}: grant {perm}"),
            auth.role_grant_permission(role, p),
        )
        .await
        .map(drop)
    }

    pub async fn revoke(&self, role: &str, perm: &Perm) -> Result<(), AclError> {
        let mut opts = RoleRevokePermissionOptions::new();
        if !perm.range_end.is_empty() {
            opts = opts.with_range_end(perm.range_end.clone());
        }
        let mut auth = self.auth.clone();
        self.call(
            format!("role {role}: revoke {perm}"),
            auth.role_revoke_permission(role, perm.key.clone(), Some(opts)),
        )
        .await
        .map(drop)
    }

    /// Adds `user` with `password`, or without one (it then authenticates by the CN of its
    /// client certificate only, etcd's `--client-cert-auth`).
    pub async fn add_user(&self, user: &str, password: Option<&Secret>) -> Result<(), AclError> {
        let mut auth = self.auth.clone();
        let what = format!("user {user}: add");
        match password {
            Some(p) => self.call(what, auth.user_add(user, p.expose(), None)).await,
            None => {
                let opts = UserAddOptions::new().with_no_pwd();
                self.call(what, auth.user_add(user, "", Some(opts))).await
            }
        }
        .map(drop)
    }

    pub async fn change_password(&self, user: &str, password: &Secret) -> Result<(), AclError> {
        let mut auth = self.auth.clone();
        self.call(
            format!("user {user}: change password"),
            auth.user_change_password(user, password.expose()),
        )
        .await
        .map(drop)
    }

    pub async fn delete_user(&self, user: &str) -> Result<(), AclError> {
        let mut auth = self.auth.clone();
        self.call(format!("user {user}: delete"), auth.user_delete(user))
            .await
            .map(drop)
    }

    pub async fn grant_role(&self, user: &str, role: &str) -> Result<(), AclError> {
        let mut auth = self.auth.clone();
        self.call(
            format!("user {user}: grant role {role}"),
            auth.user_grant_role(user, role),
        )
        .await
        .map(drop)
    }

    pub async fn revoke_role(&self, user: &str, role: &str) -> Result<(), AclError> {
        let mut auth = self.auth.clone();
        self.call(
            format!("user {user}: revoke role {role}"),
            auth.user_revoke_role(user, role),
        )
        .await
        .map(drop)
    }

    /// Whether `user` can log in with `password` (etcd stores only a hash, so this is the
    /// one way to tell whether the password must be set).
    pub async fn password_matches(&self, user: &str, password: &Secret) -> Result<bool, AclError> {
        let mut auth = self.auth.clone();
        let attempt = auth.authenticate(user.to_owned(), password.expose().to_owned());
        match self.ctx.call("authenticate", attempt).await {
            Ok(_) => Ok(true),
            // etcd answers a wrong password (and a user without one) with InvalidArgument.
            Err(BackendError::Refused { .. } | BackendError::PermissionDenied { .. }) => Ok(false),
            Err(source) => Err(AclError::Request {
                what: format!("user {user}: check password"),
                source,
            }),
        }
    }

    async fn call<T, F>(&self, what: String, fut: F) -> Result<T, AclError>
    where
        F: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        self.ctx
            .call("request", fut)
            .await
            .map_err(|source| AclError::Request { what, source })
    }
}

fn owned(name: &str) -> bool {
    name.starts_with(OWNED_PREFIX)
}

fn from_client(p: &Permission) -> Perm {
    // An unknown type (a newer etcd) is shown as read-write, so a plan never hides it.
    let kind = match PermissionType::try_from(p.get_type()) {
        Ok(PermissionType::Read) => PermKind::Read,
        Ok(PermissionType::Write) => PermKind::Write,
        _ => PermKind::Readwrite,
    };
    Perm {
        kind,
        key: p.key().to_vec(),
        range_end: p.range_end().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_permission_is_the_prefix_range() {
        let p = Perm::prefix(PermKind::Readwrite, b"/sigil/entries/");
        assert_eq!(
            p.to_string(),
            "readwrite [/sigil/entries/, /sigil/entries0)"
        );
        assert_eq!(
            Perm::key(PermKind::Read, b"kvgit/probe").to_string(),
            "read kvgit/probe"
        );
        assert_eq!(
            Perm::prefix(PermKind::Read, b"a\xff").to_string(),
            "read [a\\xff, b)"
        );
    }
}

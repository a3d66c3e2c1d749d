//! etcd's side of `kvgit acl`: the roles (`kvgit-<area>`, `kvgit-<area>-read`,
//! `kvgit-ownership`) and the node user `kvgit-<node>` the config implies, diffed against etcd.

use super::{owned_name, AclArgs, AclError, AclPlan, Change, Op, Step as AnyStep, Subject, PREFIX};
use crate::config::Config;
use backend_etcd::acl::{AclState, EtcdAdmin, Perm, PermKind};
use backend_etcd::{EtcdConfig, Secret};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

pub type Admin = EtcdAdmin;

/// One admin call.
#[derive(Debug, Clone)]
pub enum Step {
    AddRole(String),
    Grant(String, Perm),
    Revoke(String, Perm),
    DeleteRole(String),
    /// The user, and its password file (`generate`: write a new random password there first).
    AddUser {
        user: String,
        password: Option<PasswordSource>,
    },
    SetPassword {
        user: String,
        password: PasswordSource,
    },
    GrantRole(String, String),
    RevokeRole(String, String),
}

/// Where the node user's password comes from.
#[derive(Debug, Clone)]
pub enum PasswordSource {
    /// A file; `generate`: it does not exist yet, apply writes a random password into it.
    File { file: PathBuf, generate: bool },
    /// `backend.password` itself (e.g. from `KVGIT_BACKEND__PASSWORD`): nothing to write.
    Setting(Secret),
}

impl PasswordSource {
    fn file(&self) -> Option<&PathBuf> {
        match self {
            PasswordSource::File { file, .. } => Some(file),
            PasswordSource::Setting(_) => None,
        }
    }

    fn generate(&self) -> bool {
        matches!(self, PasswordSource::File { generate: true, .. })
    }

    fn detail(&self) -> String {
        match self {
            PasswordSource::File {
                file,
                generate: true,
            } => format!("password new, written to {}", file.display()),
            PasswordSource::File { file, .. } => format!("password from {}", file.display()),
            PasswordSource::Setting(_) => "password from backend.password".to_owned(),
        }
    }
}

/// What the config implies: roles with their permissions, the node user and its roles.
struct Desired {
    roles: BTreeMap<String, Vec<Perm>>,
    user: String,
    user_roles: BTreeSet<String>,
}

fn desired(cfg: &Config) -> Result<Desired, AclError> {
    let mut roles: BTreeMap<String, Vec<Perm>> = BTreeMap::new();
    // Whose each role is, so a clash names both sides.
    let mut whose_of: BTreeMap<String, String> = BTreeMap::new();
    let mut insert = |name: String, perm: Perm, whose: String| -> Result<(), AclError> {
        if let Some(other) = whose_of.get(&name) {
            return Err(AclError::Config(format!(
                "{whose}: its role {name} would also be the role of {other}; rename the area"
            )));
        }
        whose_of.insert(name.clone(), whose);
        roles.insert(name, vec![perm]);
        Ok(())
    };
    // The ownership role first: an area named "ownership" is the one to rename.
    let ownership = format!("{PREFIX}ownership");
    insert(
        ownership.clone(),
        Perm::prefix(PermKind::Readwrite, &cfg.sync.ownership_prefix),
        "sync.ownership_prefix".into(),
    )?;
    for (i, area) in cfg.areas.iter().enumerate() {
        let what = format!("area[{i}] ({}) name", area.name);
        let rw = owned_name(&what, &area.name.0)?;
        let read = owned_name(&what, &format!("{}-read", area.name.0))?;
        insert(
            rw,
            Perm::prefix(PermKind::Readwrite, &area.prefix),
            what.clone(),
        )?;
        insert(read, Perm::prefix(PermKind::Read, &area.prefix), what)?;
    }
    let user = owned_name("sync.node", &cfg.sync.node)?;
    let mut user_roles: BTreeSet<String> = cfg
        .areas
        .iter()
        .map(|a| format!("{PREFIX}{}", a.name.0))
        .collect();
    user_roles.insert(ownership);
    Ok(Desired {
        roles,
        user,
        user_roles,
    })
}

/// Connects as the admin and diffs.
pub async fn plan(
    cfg: &Config,
    ec: &EtcdConfig,
    args: &AclArgs,
) -> Result<(AclPlan, Admin), AclError> {
    if args.admin_token_file.is_some() || args.create_token.is_some() {
        return Err(AclError::Usage(
            "--admin-token-file and --create-token are for Consul; backend.kind is etcd (use \
             --admin-user and --admin-password-file)"
                .into(),
        ));
    }
    let want = desired(cfg)?;
    let (Some(user), Some(file)) = (&args.admin_user, &args.admin_password_file) else {
        return Err(AclError::Usage(
            "etcd needs --admin-user and --admin-password-file (a user with the root role)".into(),
        ));
    };
    let password = super::read_secret("--admin-password-file", file)?;
    let mut admin_cfg = ec.clone();
    admin_cfg.user = Some(user.clone());
    admin_cfg.password = Some(Secret::from(password));
    admin_cfg.password_file = None;
    let admin = EtcdAdmin::connect(&admin_cfg).await?;
    let have = admin.read().await?;
    // The node's own password file is where its password belongs, unless told otherwise.
    let password_file = args
        .user_password_file
        .clone()
        .or_else(|| ec.password_file.clone());
    if password_file.as_ref() == Some(file) {
        return Err(AclError::Usage(
            "the node's password file and --admin-password-file are the same file; the node \
             never gets the admin's password"
                .into(),
        ));
    }
    let node_password = match &password_file {
        Some(file) if file.exists() => Some((
            PasswordSource::File {
                file: file.clone(),
                generate: false,
            },
            Some(Secret::from(super::read_secret(
                "--user-password-file",
                file,
            )?)),
        )),
        Some(file) => {
            super::check_writable_dir("--user-password-file", file)?;
            let source = PasswordSource::File {
                file: file.clone(),
                generate: true,
            };
            Some((source, None))
        }
        // A password given inline (or from the environment) is the one to set.
        None => ec
            .password
            .clone()
            .map(|p| (PasswordSource::Setting(p.clone()), Some(p))),
    };
    // etcd keeps only a hash: the password is right when the user can log in with it.
    let password_ok = match (&node_password, have.users.contains_key(&want.user)) {
        (Some((_, Some(secret))), true) => admin.password_matches(&want.user, secret).await?,
        _ => true,
    };
    let plan = diff(
        cfg,
        &want,
        &have,
        node_password.map(|(source, _)| source),
        password_ok,
    );
    Ok((plan, admin))
}

fn change(op: Op, object: &'static str, name: &str, detail: String, step: Step) -> Change {
    let mut subject = Subject::default();
    match &step {
        Step::Grant(_, perm) | Step::Revoke(_, perm) => subject.permission = Some(perm.into()),
        Step::GrantRole(_, role) | Step::RevokeRole(_, role) => subject.role = Some(role.clone()),
        Step::AddUser {
            password: Some(p), ..
        }
        | Step::SetPassword { password: p, .. } => subject.file = p.file().cloned(),
        Step::AddRole(_) | Step::DeleteRole(_) | Step::AddUser { .. } => {}
    }
    Change {
        op,
        object,
        name: name.to_owned(),
        detail,
        subject,
        steps: vec![AnyStep::Etcd(step)],
    }
}

fn diff(
    cfg: &Config,
    want: &Desired,
    have: &AclState,
    password: Option<PasswordSource>,
    password_ok: bool,
) -> AclPlan {
    let mut changes = Vec::new();
    let mut notes = vec![
        format!(
            "user {} gets readwrite on each area's prefix range and on sync.ownership_prefix; \
             it needs nothing outside them (status, leases and watches need no key rights)",
            want.user
        ),
        "roles kvgit-<area>-read are for readers (monitoring, people); no user gets them here"
            .to_owned(),
    ];
    // Roles first, so the user's grants find them.
    for (role, perms) in &want.roles {
        match have.roles.get(role) {
            None => {
                for (i, p) in perms.iter().enumerate() {
                    let mut c = change(
                        Op::Add,
                        "role",
                        role,
                        p.to_string(),
                        Step::Grant(role.clone(), p.clone()),
                    );
                    if i == 0 {
                        c.steps
                            .insert(0, AnyStep::Etcd(Step::AddRole(role.clone())));
                    }
                    changes.push(c);
                }
            }
            Some(current) => {
                for p in perms.iter().filter(|p| !current.contains(p)) {
                    changes.push(change(
                        Op::Change,
                        "role",
                        role,
                        format!("+ {p}"),
                        Step::Grant(role.clone(), p.clone()),
                    ));
                }
                for p in current.iter().filter(|p| !perms.contains(p)) {
                    changes.push(change(
                        Op::Change,
                        "role",
                        role,
                        format!("- {p}"),
                        Step::Revoke(role.clone(), p.clone()),
                    ));
                }
            }
        }
    }
    let user = &want.user;
    match have.users.get(user) {
        None => {
            let detail = match &password {
                Some(p) => p.detail(),
                None => "no password (logs in by client certificate CN)".to_owned(),
            };
            changes.push(change(
                Op::Add,
                "user",
                user,
                detail,
                Step::AddUser {
                    user: user.clone(),
                    password,
                },
            ));
            for role in &want.user_roles {
                changes.push(change(
                    Op::Add,
                    "user",
                    user,
                    format!("role {role}"),
                    Step::GrantRole(user.clone(), role.clone()),
                ));
            }
        }
        Some(roles) => {
            if let Some(p) = password.filter(|p| p.generate() || !password_ok) {
                let detail = p.detail();
                changes.push(change(
                    Op::Change,
                    "user",
                    user,
                    detail,
                    Step::SetPassword {
                        user: user.clone(),
                        password: p,
                    },
                ));
            }
            for role in want.user_roles.iter().filter(|r| !roles.contains(r)) {
                changes.push(change(
                    Op::Change,
                    "user",
                    user,
                    format!("+ role {role}"),
                    Step::GrantRole(user.clone(), role.clone()),
                ));
            }
            for role in roles.iter().filter(|r| !want.user_roles.contains(*r)) {
                changes.push(change(
                    Op::Change,
                    "user",
                    user,
                    format!("- role {role}"),
                    Step::RevokeRole(user.clone(), role.clone()),
                ));
            }
        }
    }
    // A kvgit role the config no longer implies goes, unless another user holds it (or its
    // area role): other nodes' configs may still name that area.
    let held_elsewhere = |role: &str| {
        have.users
            .iter()
            .filter(|(u, _)| *u != user)
            .find(|(_, roles)| roles.iter().any(|r| r == role))
            .map(|(u, _)| u.clone())
    };
    for role in have.roles.keys().filter(|r| !want.roles.contains_key(*r)) {
        let base = role.strip_suffix("-read").unwrap_or(role);
        match held_elsewhere(role).or_else(|| held_elsewhere(base)) {
            Some(other) => notes.push(format!(
                "role {role} is not implied by this config but kept: user {other} holds it"
            )),
            None => changes.push(change(
                Op::Remove,
                "role",
                role,
                String::new(),
                Step::DeleteRole(role.clone()),
            )),
        }
    }
    AclPlan {
        backend: "etcd",
        node: cfg.sync.node.clone(),
        principal: format!("user {user}"),
        changes,
        notes,
    }
}

pub async fn apply(admin: &Admin, step: &Step) -> Result<(), AclError> {
    match step {
        Step::AddRole(role) => admin.add_role(role).await?,
        Step::Grant(role, perm) => admin.grant(role, perm).await?,
        Step::Revoke(role, perm) => admin.revoke(role, perm).await?,
        Step::DeleteRole(role) => admin.delete_role(role).await?,
        Step::AddUser { user, password } => {
            let secret = match password {
                Some(p) => Some(password_secret(p)?),
                None => None,
            };
            admin.add_user(user, secret.as_ref()).await?
        }
        Step::SetPassword { user, password } => {
            let secret = password_secret(password)?;
            admin.change_password(user, &secret).await?
        }
        Step::GrantRole(user, role) => admin.grant_role(user, role).await?,
        Step::RevokeRole(user, role) => admin.revoke_role(user, role).await?,
    }
    Ok(())
}

/// The password to set: the file's, or a new random one written to the file first (so a
/// failure after it leaves the password where the next run finds it).
fn password_secret(p: &PasswordSource) -> Result<Secret, AclError> {
    match p {
        PasswordSource::Setting(secret) => Ok(secret.clone()),
        PasswordSource::File { file, generate } if *generate && !file.exists() => {
            let secret = super::random_secret()?;
            super::write_secret("--user-password-file", file, &secret)?;
            Ok(Secret::from(secret))
        }
        PasswordSource::File { file, .. } => Ok(Secret::from(super::read_secret(
            "--user-password-file",
            file,
        )?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(areas: &[(&str, &str)]) -> Config {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut toml = String::from("[sync]\nnode = \"core-1\"\n");
        for (name, prefix) in areas {
            toml.push_str(&format!(
                "[[area]]\nname = \"{name}\"\nprefix = \"{prefix}\"\npath = \"{name}\"\nmode = \"both\"\n"
            ));
        }
        let path = dir.path().join("kvgit.toml");
        std::fs::write(&path, toml).expect("write");
        crate::config::load(&path).expect("config")
    }

    fn lines(plan: &AclPlan) -> Vec<String> {
        plan.changes.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn an_area_whose_role_names_another_object_is_refused() {
        for (areas, culprit) in [
            (vec![("ownership", "/o/")], "area[0] (ownership) name"),
            (
                vec![("x", "/x/"), ("x-read", "/y/")],
                "area[1] (x-read) name",
            ),
        ] {
            let err = desired(&config(&areas)).err().expect("a clash");
            assert!(err.to_string().starts_with(culprit), "{err}");
        }
    }

    #[test]
    fn stale_roles_go_unless_another_user_holds_them_or_their_area_role() {
        let cfg = config(&[("entries", "/e/")]);
        let want = desired(&cfg).expect("desired");
        let mut have = AclState::default();
        for (role, perm) in [
            ("kvgit-entries", Perm::prefix(PermKind::Readwrite, b"/e/")),
            ("kvgit-entries-read", Perm::prefix(PermKind::Read, b"/e/")),
            (
                "kvgit-ownership",
                Perm::prefix(PermKind::Readwrite, b"kvgit/ownership/"),
            ),
            ("kvgit-old", Perm::prefix(PermKind::Readwrite, b"/old/")),
            ("kvgit-old-read", Perm::prefix(PermKind::Read, b"/old/")),
            ("kvgit-gone", Perm::prefix(PermKind::Readwrite, b"/gone/")),
        ] {
            have.roles.insert(role.into(), vec![perm]);
        }
        have.users.insert(
            "kvgit-core-1".into(),
            vec![
                "kvgit-entries".into(),
                "kvgit-gone".into(),
                "kvgit-ownership".into(),
            ],
        );
        have.users
            .insert("kvgit-core-2".into(), vec!["kvgit-old".into()]);
        let plan = diff(&cfg, &want, &have, None, true);
        assert_eq!(
            lines(&plan),
            ["~ user kvgit-core-1 - role kvgit-gone", "- role kvgit-gone"]
        );
        assert!(plan.notes.iter().any(|n| {
            n == "role kvgit-old is not implied by this config but kept: user kvgit-core-2 holds it"
        }));
        assert!(plan
            .notes
            .iter()
            .any(|n| n == "role kvgit-old-read is not implied by this config but kept: user kvgit-core-2 holds it"));
    }
}

//! The `kvgit acl` subcommands and their options (clap), and running them: plan against the
//! backend, print, and for apply make the changes in the plan's order.

use super::{render, AclArgs};
use crate::config::Config;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum AclCommand {
    /// Show the roles/users (etcd) or policies/tokens (Consul) that apply would add
    /// (`+`), change (`~`) or remove (`-`), then a summary.
    Plan {
        #[command(flatten)]
        opts: AclOpts,
        /// Exit 0 when there is nothing to do, 2 when there are changes, 1 on error.
        #[arg(long)]
        detailed_exitcode: bool,
    },
    /// Make the backend's kvgit roles/users or policies/token what the config implies.
    /// Idempotent: a second run changes nothing.
    Apply {
        #[command(flatten)]
        opts: AclOpts,
    },
}

#[derive(Args, Debug)]
pub struct AclOpts {
    /// `text` (default) or `json`.
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    format: String,
    /// etcd: an admin user (one with the root role); never the node's own.
    #[arg(long, value_name = "USER")]
    admin_user: Option<String>,
    /// etcd: the file holding the admin user's password.
    #[arg(long, value_name = "FILE")]
    admin_password_file: Option<PathBuf>,
    /// etcd: the node user's password file (default: backend.password_file). A missing
    /// FILE is created (mode 0600) with a random password by apply. With neither, the node
    /// user has no password and logs in by its client certificate (etcd --client-cert-auth,
    /// certificate CN = kvgit-<node>).
    #[arg(long, value_name = "FILE")]
    user_password_file: Option<PathBuf>,
    /// Consul: the file holding a token with acl = "write"; never the node's own.
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// Consul: the node's token file, for backend.token_file. When FILE is missing or holds
    /// a token Consul does not know, apply creates a token for the node's policy and writes
    /// it there (mode 0600).
    #[arg(long, value_name = "FILE")]
    create_token: Option<PathBuf>,
}

impl AclOpts {
    fn args(&self) -> AclArgs {
        AclArgs {
            admin_user: self.admin_user.clone(),
            admin_password_file: self.admin_password_file.clone(),
            admin_token_file: self.admin_token_file.clone(),
            user_password_file: self.user_password_file.clone(),
            create_token: self.create_token.clone(),
        }
    }
}

/// Runs `kvgit acl …`; the returned code is the process exit code.
pub async fn run(cfg: &Config, cmd: &AclCommand) -> anyhow::Result<u8> {
    let out = &mut std::io::stdout();
    match cmd {
        AclCommand::Plan {
            opts,
            detailed_exitcode,
        } => {
            let (plan, _admin) = super::plan(cfg, &opts.args()).await?;
            if opts.format == "json" {
                render::plan_json(out, &plan)?;
            } else {
                render::plan(out, &plan)?;
            }
            Ok(if *detailed_exitcode && !plan.changes.is_empty() {
                2
            } else {
                0
            })
        }
        AclCommand::Apply { opts } => {
            let (plan, admin) = super::plan(cfg, &opts.args()).await?;
            if opts.format == "json" {
                super::apply(&admin, &plan, |_| {}).await?;
                render::plan_json(out, &plan)?;
                return Ok(0);
            }
            let mut printed = Ok(());
            let result = super::apply(&admin, &plan, |change| {
                if printed.is_ok() {
                    printed = render::applied(out, change);
                }
            })
            .await;
            printed?;
            result?;
            render::summary(out, &plan, true)?;
            Ok(0)
        }
    }
}

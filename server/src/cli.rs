//! The command line: one binary, one verb per SPEC row, `-c/--config` on every verb.
//! Each verb loads the config, connects what it needs, hands over to the engine and
//! renders the report it returns (`render`); errors go up to `main` with their causes.

use crate::config;
use crate::engine;
use crate::render;
use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "kvgit",
    version,
    about = "Keeps etcd or Consul and a Git repository in step, both ways",
    long_about = "kvgit keeps a key-value store (etcd or Consul) and a Git repository in step. \
Git holds the desired state and the history; the KV store holds the live state. \
On disagreement Git wins."
)]
pub struct Cli {
    /// The config file (TOML; every setting can be overridden by KVGIT_… env variables).
    #[arg(
        short,
        long,
        global = true,
        default_value = "kvgit.toml",
        value_name = "FILE"
    )]
    pub config: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the service: watch, batch, commit, push, fetch, apply; HTTP endpoints.
    Serve,
    /// One pass KV -> Git now (one commit per changed area), then exit.
    Export {
        /// Only this area.
        #[arg(long, value_name = "AREA")]
        area: Option<String>,
        /// Record a deletion of more than sync.max_delete_fraction of an area's keys (at
        /// least sync.mass_delete_min_keys), emptying it included: the operator means it.
        #[arg(long)]
        allow_mass_delete: bool,
    },
    /// Show what an apply would do: `+ key`, `~ key`, `- key` per line, then a summary.
    Plan {
        /// Only this area.
        #[arg(long, value_name = "AREA")]
        area: Option<String>,
        /// The commit, tag or branch to plan from (default: the branch tip).
        #[arg(long = "ref", value_name = "REV")]
        rev: Option<String>,
        /// Exit 0 when there is nothing to do, 2 when there are changes, 1 on error.
        #[arg(long)]
        detailed_exitcode: bool,
        /// Plan as if --allow-mass-delete were given to apply.
        #[arg(long)]
        allow_mass_delete: bool,
    },
    /// One pass Git -> KV now, by the sync rule; --ref restores any commit or tag.
    Apply {
        /// Only this area.
        #[arg(long, value_name = "AREA")]
        area: Option<String>,
        /// The commit, tag or branch to apply (point-in-time restore).
        #[arg(long = "ref", value_name = "REV")]
        rev: Option<String>,
        /// Validate and print the plan, write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Allow an apply that empties an area or deletes more than sync.max_delete_fraction.
        #[arg(long)]
        allow_mass_delete: bool,
    },
    /// Per area: mode, checkpoint, base commit, owner, pending events, drift.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The history of one key from Git: commit, time, author, value size.
    Log {
        /// The full KV key, e.g. /sigil/entries/node-7/status
        key: String,
        /// At most this many entries.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
}

/// Run one verb; the returned code is the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    let cfg = config::load(&cli.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ctx = engine::Context::connect(cfg)
        .await
        .context("cannot start")?;
    let out = &mut std::io::stdout();
    match cli.command {
        Command::Serve => {
            let listen = ctx.cfg.server.listen.clone();
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("server.listen {listen}: cannot listen"))?;
            let shutdown = tokio_util::sync::CancellationToken::new();
            tokio::spawn(crate::service::on_signals(shutdown.clone()));
            Ok(crate::service::run(ctx, listener, shutdown).await)
        }
        Command::Export {
            area,
            allow_mass_delete,
        } => {
            let reports = engine::export::run(&ctx, area.as_deref(), allow_mass_delete).await?;
            render::export(out, &reports)?;
            // Other areas are recorded; a held one fails the command, naming what to do.
            engine::export::held_back(&reports)?;
            Ok(0)
        }
        Command::Plan {
            area,
            rev,
            detailed_exitcode,
            allow_mass_delete,
        } => {
            let plans =
                engine::apply::plan_all(&ctx, area.as_deref(), rev.as_deref(), allow_mass_delete)
                    .await?;
            render::plan(out, &plans)?;
            let changes = plans.iter().any(|p| !p.ops.is_empty());
            Ok(if detailed_exitcode && changes { 2 } else { 0 })
        }
        Command::Apply {
            area,
            rev,
            dry_run,
            allow_mass_delete,
        } => {
            let plans =
                engine::apply::plan_all(&ctx, area.as_deref(), rev.as_deref(), allow_mass_delete)
                    .await?;
            if dry_run {
                render::plan(out, &plans)?;
                render::dry_run(out)?;
                return Ok(0);
            }
            // Each round is printed as soon as it is written.
            let mut printed = Ok(());
            let applied =
                engine::apply::apply(&ctx, plans, rev.as_deref(), allow_mass_delete, |round| {
                    if printed.is_ok() {
                        printed = render::applied(out, round);
                    }
                })
                .await;
            printed?;
            applied?;
            Ok(0)
        }
        Command::Status { json } => {
            let status = engine::status::collect(&ctx).await?;
            if json {
                render::status_json(out, &status)?;
            } else {
                render::status_table(out, &status)?;
            }
            Ok(0)
        }
        Command::Log { key, limit } => {
            let history = engine::log::run(&ctx, &key, limit).await?;
            render::log(out, &history)?;
            Ok(0)
        }
    }
}

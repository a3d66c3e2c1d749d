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
        /// Exact restore: the areas' keys become exactly the tree at --ref (adds, changes,
        /// deletes), whatever the mode and the base.
        #[arg(long)]
        exact: bool,
        /// `text` (default) or `json` (per area adds/changes/deletes/conflicts, each key
        /// as `key` when UTF-8 and always `key_b64`, with its `path`).
        #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
        format: String,
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
        /// Exact restore: the areas' keys become exactly the tree at --ref (adds, changes,
        /// deletes), whatever the mode and the base; kv-to-git and both areas commit the
        /// restore (`<area>: restore from <id>`, trailer Kvgit-Restored-From).
        #[arg(long)]
        exact: bool,
    },
    /// Offline check of a commit or a checkout before a merge: every file maps to a key,
    /// values fit the backend's limits, content matches the area's JSON Schema. Needs no
    /// backend. Exit 0 valid, 1 invalid (or could not check).
    Validate {
        /// The commit, tag or branch to check (default: the branch tip of git.repo).
        #[arg(long = "ref", value_name = "REV", conflicts_with = "dir")]
        rev: Option<String>,
        /// Check the working files under DIR (a checkout's root) instead of a commit.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// `text` (default), `json`, or `github` (workflow annotations).
        #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json", "github"])]
        format: String,
    },
    /// Rewrite the document files of JSON/YAML areas in a checkout into canonical form.
    Fmt {
        /// Only report files that are not canonical (exit 1 if any), write nothing.
        #[arg(long)]
        check: bool,
        /// The checkout's root.
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
    },
    /// The backend roles/users (etcd) or policies/tokens (Consul) that the config implies:
    /// `plan` shows the difference, `apply` makes it so. Admin credentials come from the
    /// options, never from the node's own config.
    Acl {
        #[command(subcommand)]
        action: crate::acl::command::AclCommand,
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
    if let Command::Validate { rev, dir, format } = &cli.command {
        // Offline: no backend, and with --dir not even the repository.
        let report = validate(&cfg, rev.as_deref(), dir.as_deref()).await?;
        render::validate(&mut std::io::stdout(), &report, format)?;
        return Ok(if report.valid { 0 } else { 1 });
    }
    if let Command::Fmt { check, dir } = &cli.command {
        // Works on a checkout's files: no backend, no repository.
        anyhow::ensure!(dir.is_dir(), "--dir {}: not a directory", dir.display());
        let report = engine::fmt::run(dir, &cfg.areas, *check)?;
        print!("{report}");
        return Ok(report.exit_code());
    }
    if let Command::Acl { action } = &cli.command {
        // Connects as the admin, not as the node (whose user may not exist yet).
        return crate::acl::command::run(&cfg, action).await;
    }
    // A one-shot verb that needs the backend connects while the repository opens; `log`
    // works without it, and `serve` starts (and retries) whether or not it answers.
    let ctx = match cli.command {
        Command::Log { .. } | Command::Serve => engine::Context::connect(cfg).await,
        _ => engine::Context::connect_both(cfg).await,
    }
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
            ctx.tidy().await;
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
            exact,
            format,
        } => {
            let opts = engine::apply::PlanOptions {
                allow_mass_delete,
                exact,
            };
            let (commit, plans) =
                engine::apply::plan_all_with(&ctx, area.as_deref(), rev.as_deref(), opts).await?;
            let report = engine::report::PlanReport::new(commit, &plans);
            // One write per line would be a system call per key of a large plan.
            let mut buffered = std::io::BufWriter::new(out.lock());
            match format.as_str() {
                "json" => render::plan_json(&mut buffered, &report)?,
                _ => render::plan(&mut buffered, &report)?,
            }
            std::io::Write::flush(&mut buffered)?;
            Ok(if detailed_exitcode && report.summary.changes {
                2
            } else {
                0
            })
        }
        Command::Apply {
            area,
            rev,
            dry_run,
            allow_mass_delete,
            exact,
        } => {
            let opts = engine::apply::PlanOptions {
                allow_mass_delete,
                exact,
            };
            let (commit, plans) =
                engine::apply::plan_all_with(&ctx, area.as_deref(), rev.as_deref(), opts).await?;
            if dry_run {
                render::plan(out, &engine::report::PlanReport::new(commit, &plans))?;
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
            ctx.tidy().await;
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
        Command::Validate { .. } => unreachable!("validate runs before connecting"),
        Command::Acl { .. } => unreachable!("acl runs before connecting"),
        Command::Fmt { .. } => unreachable!("fmt runs before connecting"),
    }
}

/// `kvgit validate`: the working files under `dir`, or a commit of git.repo (opened, never
/// created: a missing repository is an error naming it).
async fn validate(
    cfg: &config::Config,
    rev: Option<&str>,
    dir: Option<&std::path::Path>,
) -> anyhow::Result<engine::validate::ValidateReport> {
    let limits = engine::validate::BackendRules {
        limits: cfg.backend.write_limits(),
        utf8_keys: cfg.backend.kind_name() == "consul",
    };
    let areas = cfg.areas.clone();
    if let Some(dir) = dir {
        let dir = dir.to_owned();
        anyhow::ensure!(dir.is_dir(), "--dir {}: not a directory", dir.display());
        return tokio::task::spawn_blocking(move || {
            engine::validate::validate(&engine::validate::Source::Dir(&dir), &areas, limits)
        })
        .await?
        .map_err(Into::into);
    }
    let repo = cfg.git.repo.clone();
    anyhow::ensure!(
        repo.exists(),
        "git.repo {}: no repository there (validate a checkout with --dir)",
        repo.display()
    );
    let (branch, rev) = (cfg.git.branch.clone(), rev.map(str::to_owned));
    tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let git = gitstore::GitStore::open_or_init(&repo, &branch)
            .with_context(|| format!("git.repo {}", repo.display()))?;
        let commit = match &rev {
            Some(r) => Some(
                git.resolve_commit(r)
                    .with_context(|| format!("--ref {r}"))?,
            ),
            None => git.tip().context("git.repo: cannot read the branch")?,
        };
        Ok(engine::validate::validate(
            &engine::validate::Source::Commit(&git, commit),
            &areas,
            limits,
        )?)
    })
    .await?
}

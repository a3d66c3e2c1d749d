//! The `kvgit` binary: parses the command line, loads the config, runs one verb, and turns
//! every error into one line naming the file, key or setting at fault, with a non-zero exit.

mod acl;
mod alloc;
mod cli;
mod config;
mod engine;
mod errors;
mod render;
mod secret;
mod service;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KVGIT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kvgit: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // One line per cause chain, so the culprit is named on the first line.
            eprintln!("kvgit: {}", errors::chain(e.as_ref()));
            ExitCode::from(1)
        }
    }
}

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
    let code = match runtime.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(e) => {
            // One line per cause chain, so the culprit is named on the first line.
            eprintln!("kvgit: {}", errors::chain(e.as_ref()));
            1
        }
    };
    // The verb is done and everything it wrote is on disk: exit without dropping the
    // runtime, whose idle threads would be woken and joined one by one (2–3 ms of a
    // one-shot `kvgit export`, most of what is left once its commits are written).
    let _ = std::io::Write::flush(&mut std::io::stdout());
    std::process::exit(i32::from(code))
}

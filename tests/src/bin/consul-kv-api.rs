//! consul-kv-api: serves the in-repo implementation of Consul's KV HTTP API
//! (`kvgit_tests::consul_api`) for tests, since no Consul binary is installed.
//!
//! Usage: `consul-kv-api [--listen 127.0.0.1:0] [--datacenter dc1] [--acl-token T]
//! [--max-txn-ops 64]`. Prints `listening on http://ADDR` once bound.

use kvgit_tests::consul_api::{Config, ConsulApi};
use std::io::Write;

const USAGE: &str =
    "usage: consul-kv-api [--listen ADDR] [--datacenter DC] [--acl-token T] [--max-txn-ops N]";

fn main() {
    let (listen, config) = match parse_args(std::env::args().skip(1)) {
        Ok(parsed) => parsed,
        Err(why) => {
            eprintln!("consul-kv-api: {why}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("start the tokio runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .unwrap_or_else(|e| panic!("bind {listen}: {e}"));
        let addr = listener.local_addr().expect("bound address");
        // The harness reads this line to learn the port; flush so it is not left buffered.
        let mut stdout = std::io::stdout();
        writeln!(stdout, "listening on http://{addr}").expect("write to stdout");
        stdout.flush().expect("flush stdout");
        if let Err(e) = ConsulApi::new(config).serve(listener).await {
            eprintln!("consul-kv-api: serve: {e}");
            std::process::exit(1);
        }
    });
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<(String, Config), String> {
    let mut listen = "127.0.0.1:0".to_string();
    let mut config = Config::default();
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = value()?,
            "--datacenter" => config.datacenter = value()?,
            "--acl-token" => config.acl_token = Some(value()?),
            "--max-txn-ops" => {
                let text = value()?;
                config.max_txn_ops = text
                    .parse()
                    .map_err(|_| format!("--max-txn-ops: not a number: {text}"))?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok((listen, config))
}

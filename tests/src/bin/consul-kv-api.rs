//! consul-kv-api: serves the in-repo implementation of Consul's KV HTTP API
//! (`kvgit_tests::consul_api`) for tests, since no Consul binary is installed.
//!
//! Usage: `consul-kv-api [--listen 127.0.0.1:0] [--datacenter dc1] [--acl-management-token T]
//! [--max-txn-ops 64] [--tls-cert-file F --tls-key-file F [--tls-ca-file F]
//! [--tls-verify-incoming]]`. Prints `listening on http(s)://ADDR` once bound.

use kvgit_tests::consul_api::{Config, ConsulApi, TlsConfig};
use std::io::Write;

const USAGE: &str =
    "usage: consul-kv-api [--listen ADDR] [--datacenter DC] [--acl-management-token T] [--max-txn-ops N] [--tls-cert-file F --tls-key-file F [--tls-ca-file F] [--tls-verify-incoming]]";

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
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        writeln!(stdout, "listening on {scheme}://{addr}").expect("write to stdout");
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
    let (mut cert, mut key, mut ca, mut verify_incoming) = (None, None, None, false);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = value()?,
            "--datacenter" => config.datacenter = value()?,
            "--acl-management-token" => config.acl_management_token = Some(value()?),
            "--max-txn-ops" => {
                let text = value()?;
                config.max_txn_ops = text
                    .parse()
                    .map_err(|_| format!("--max-txn-ops: not a number: {text}"))?;
            }
            "--tls-cert-file" => cert = Some(value()?.into()),
            "--tls-key-file" => key = Some(value()?.into()),
            "--tls-ca-file" => ca = Some(value()?.into()),
            "--tls-verify-incoming" => verify_incoming = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    config.tls = match (cert, key) {
        (Some(cert_file), Some(key_file)) => Some(TlsConfig {
            cert_file,
            key_file,
            ca_file: ca,
            verify_incoming,
        }),
        (None, None) if ca.is_none() && !verify_incoming => None,
        _ => return Err("TLS needs --tls-cert-file and --tls-key-file".to_string()),
    };
    Ok((listen, config))
}

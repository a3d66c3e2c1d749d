//! Serving the API over TLS as a Consul agent with `tls.https` does: a server certificate,
//! and with `verify_incoming` only clients presenting a certificate signed by the CA.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// The agent's `tls.defaults`: `cert_file`, `key_file`, `ca_file`, `verify_incoming`.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CA for client certificates; needed with `verify_incoming`.
    pub ca_file: Option<PathBuf>,
    pub verify_incoming: bool,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The acceptor for `config`; the error names the file at fault.
pub(crate) fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, String> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if config.verify_incoming {
        let ca = config
            .ca_file
            .as_ref()
            .ok_or("verify_incoming needs a ca_file")?;
        let mut roots = RootCertStore::empty();
        for cert in certs(ca)? {
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", ca.display()))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| e.to_string())?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let key = PrivateKeyDer::from_pem_file(&config.key_file)
        .map_err(|e| format!("{}: {e}", config.key_file.display()))?;
    let mut server = builder
        .with_single_cert(certs(&config.cert_file)?, key)
        .map_err(|e| format!("{}: {e}", config.cert_file.display()))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// How long a client may take over its handshake: an agent does not hold a connection open
/// for a client that never finishes (Go's `http.Server` bounds it by its read timeouts).
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Accepts TLS connections and serves `app` on each for as long as the process runs (a
/// failed accept is logged and retried, as `axum::serve` does). A failed
/// handshake (wrong CA, no client certificate) only ends that connection, and is logged to
/// stderr with its peer and cause, so a test that fails on an answer it did not get shows
/// whether the server saw the connection at all.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    acceptor: TlsAcceptor,
) -> std::io::Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            // A connection reset before it was accepted, or a moment without file descriptors
            // or buffers, is not the listener failing (`axum::serve` carries on the same way).
            Err(e) => {
                eprintln!("consul-kv-api: accept: {e}; accepting again");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    eprintln!("consul-kv-api: TLS handshake with {peer} refused: {e}");
                    return;
                }
                Err(_) => {
                    eprintln!(
                        "consul-kv-api: TLS handshake with {peer} not finished within \
                         {HANDSHAKE_TIMEOUT:?}; connection closed"
                    );
                    return;
                }
            };
            // A client hanging up mid-request is its business.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(
                    hyper_util::rt::TokioIo::new(tls),
                    hyper_util::service::TowerToHyperService::new(app),
                )
                .await;
        });
    }
}

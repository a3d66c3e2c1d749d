//! The credentials a Consul connection carries, read from the config's files at connect: the
//! ACL token (`token_file`) and the rustls client config (CA, client certificate and key).
//! Every failure is one line naming the setting and the file; no secret is ever quoted.

use crate::config::{ConnectError, ConsulConfig};
use hyper_rustls::ConfigBuilderExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::path::Path;
use std::sync::Arc;

/// The token to send: `token_file`'s content (surrounding whitespace trimmed, as Consul's
/// CLI reads it), else `token`; `None` is the anonymous token.
pub(crate) fn token(cfg: &ConsulConfig) -> Result<Option<String>, ConnectError> {
    let Some(file) = &cfg.token_file else {
        return Ok(cfg.token.as_ref().map(|t| t.expose().to_owned()));
    };
    let setting = cfg.setting("token_file");
    let text = std::fs::read_to_string(file).map_err(|e| {
        ConnectError::Invalid(format!("{setting}: cannot read {}: {e}", file.display()))
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(ConnectError::Invalid(format!(
            "{setting}: {} is empty",
            file.display()
        )));
    }
    if hyper::header::HeaderValue::from_str(token).is_err() {
        return Err(ConnectError::Invalid(format!(
            "{setting}: {} holds characters an HTTP header cannot carry",
            file.display()
        )));
    }
    Ok(Some(token.to_owned()))
}

/// The name Consul's certificate must carry, when it is not the endpoint's host.
pub(crate) fn server_name(cfg: &ConsulConfig) -> Option<ServerName<'static>> {
    let name = cfg.tls_server_name.as_ref().filter(|_| cfg.uses_tls())?;
    ServerName::try_from(name.clone()).ok()
}

/// TLS 1.2/1.3 with ring; roots from `ca_file` only when set (else the webpki roots), the
/// client certificate when `cert_file` and `key_file` are. For http endpoints the files are
/// not read (Consul's CLI ignores its TLS variables there too).
pub(crate) fn client_config(cfg: &ConsulConfig, base: &str) -> Result<ClientConfig, ConnectError> {
    let tls_error = |detail: String| ConnectError::Tls {
        endpoint: base.to_owned(),
        detail,
    };
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(e.to_string()))?;
    if !cfg.uses_tls() {
        return Ok(builder.with_webpki_roots().with_no_client_auth());
    }
    let builder = match &cfg.ca_file {
        Some(file) => {
            let setting = cfg.setting("ca_file");
            let mut roots = RootCertStore::empty();
            for cert in certificates(&setting, file)? {
                roots.add(cert).map_err(|e| {
                    ConnectError::Invalid(format!(
                        "{setting}: {} holds an unusable CA certificate: {e}",
                        file.display()
                    ))
                })?;
            }
            builder.with_root_certificates(roots)
        }
        None => builder.with_webpki_roots(),
    };
    match (&cfg.cert_file, &cfg.key_file) {
        (Some(cert_file), Some(key_file)) => {
            let cert_setting = cfg.setting("cert_file");
            let key_setting = cfg.setting("key_file");
            let certs = certificates(&cert_setting, cert_file)?;
            let key = private_key(&key_setting, key_file)?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                ConnectError::Invalid(format!(
                    "{cert_setting}, {key_setting}: {} and {} are not a usable certificate \
                     and key pair: {e}",
                    cert_file.display(),
                    key_file.display()
                ))
            })
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

fn read(setting: &str, file: &Path) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(file).map_err(|e| {
        ConnectError::Invalid(format!("{setting}: cannot read {}: {e}", file.display()))
    })
}

/// Every certificate of a PEM file; none, or one that does not parse, is an error.
fn certificates(setting: &str, file: &Path) -> Result<Vec<CertificateDer<'static>>, ConnectError> {
    let pem = read(setting, file)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            ConnectError::Invalid(format!(
                "{setting}: {} is not PEM certificates: {e}",
                file.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(ConnectError::Invalid(format!(
            "{setting}: {} holds no PEM certificate",
            file.display()
        )));
    }
    Ok(certs)
}

/// The PEM private key (PKCS#8, PKCS#1 or SEC1). pki-types' errors never quote key bytes.
fn private_key(setting: &str, file: &Path) -> Result<PrivateKeyDer<'static>, ConnectError> {
    let pem = read(setting, file)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        ConnectError::Invalid(format!(
            "{setting}: {} holds no usable PEM private key: {e}",
            file.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_file_is_trimmed_and_checked_without_quoting_it() {
        let dir = std::env::temp_dir().join(format!("kvgit-consul-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("token");
        let cfg = ConsulConfig {
            token_file: Some(file.clone()),
            ..ConsulConfig::default()
        };
        std::fs::write(&file, "  s3cr3t-token\n").expect("write");
        assert_eq!(token(&cfg).expect("token").as_deref(), Some("s3cr3t-token"));
        for bad in ["\n", "s3cr3t\u{7f}token"] {
            std::fs::write(&file, bad).expect("write");
            let err = token(&cfg).expect_err("refused").to_string();
            assert!(
                err.contains("backend.token_file") && !err.contains("s3cr3t"),
                "{err}"
            );
        }
        std::fs::remove_file(&file).expect("remove");
        let err = token(&cfg).expect_err("missing").to_string();
        assert!(err.contains("backend.token_file: cannot read"), "{err}");
        let _ = std::fs::remove_dir(&dir);
    }

    #[test]
    fn http_endpoints_read_no_tls_file() {
        let cfg = ConsulConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            from_env: [("ca_file", crate::config::ENV_CACERT)].into(),
            ..ConsulConfig::default()
        };
        assert!(client_config(&cfg, "http://127.0.0.1:8500").is_ok());
        let https = ConsulConfig {
            endpoints: vec!["https://127.0.0.1:8501".into()],
            ..cfg
        };
        let err = client_config(&https, "https://127.0.0.1:8501")
            .expect_err("unreadable CA")
            .to_string();
        assert!(
            err.contains("CONSUL_CACERT: cannot read /nonexistent/ca.pem"),
            "{err}"
        );
    }
}

//! A throwaway PKI generated at test time (rcgen, no CLI): a CA, server certificates for the
//! loopback names and client certificates whose CN names the user, written as PEM files.

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A CA whose key stays in memory; every certificate it issues is written under `dir`.
pub struct TestPki {
    dir: PathBuf,
    /// File-name prefix, so a second CA (`other`) can share a directory with the first.
    prefix: &'static str,
    ca_cert: Certificate,
    ca_key: KeyPair,
}

impl TestPki {
    /// A new CA; writes `dir/ca.pem`.
    pub fn new(dir: &Path) -> TestPki {
        TestPki::with_prefix(dir, "", "kvgit test CA")
    }

    /// A second, unrelated CA (files `dir/other-*.pem`), for "CA does not match" tests.
    pub fn other(dir: &Path) -> TestPki {
        TestPki::with_prefix(dir, "other-", "kvgit other test CA")
    }

    fn with_prefix(dir: &Path, prefix: &'static str, name: &str) -> TestPki {
        std::fs::create_dir_all(dir).expect("create the PKI dir");
        let ca_key = KeyPair::generate().expect("generate the CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name = distinguished_name(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = params.self_signed(&ca_key).expect("self-sign the CA");
        let pki = TestPki {
            dir: dir.to_path_buf(),
            prefix,
            ca_cert,
            ca_key,
        };
        write_public(&pki.ca_file(), &pki.ca_cert.pem());
        pki
    }

    /// The CA certificate (PEM).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join(format!("{}ca.pem", self.prefix))
    }

    /// A server certificate for 127.0.0.1, ::1, "localhost" and `name`: (cert, key) PEM files.
    /// It also allows client use: etcd dials itself with its server certificate (gateway).
    pub fn server(&self, name: &str) -> (PathBuf, PathBuf) {
        let mut sans = vec![
            SanType::IpAddress([127, 0, 0, 1].into()),
            SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
            SanType::DnsName("localhost".try_into().expect("DNS name")),
        ];
        if name != "localhost" {
            let dns = name
                .to_string()
                .try_into()
                .unwrap_or_else(|e| panic!("server name {name:?} is not a DNS name: {e}"));
            sans.push(SanType::DnsName(dns));
        }
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.distinguished_name = distinguished_name(name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue(&format!("server-{name}"), params)
    }

    /// A client certificate with CN = `common_name` (etcd maps the CN to the user when
    /// started with --client-cert-auth): (cert, key) PEM files.
    pub fn client(&self, common_name: &str) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(&format!("client-{common_name}"), params)
    }

    fn issue(&self, stem: &str, mut params: CertificateParams) -> (PathBuf, PathBuf) {
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate().expect("generate a key");
        let cert = params
            .signed_by(&key, &self.ca_cert, &self.ca_key)
            .expect("sign a certificate");
        let cert_path = self.dir.join(format!("{}{stem}.pem", self.prefix));
        let key_path = self.dir.join(format!("{}{stem}-key.pem", self.prefix));
        write_public(&cert_path, &cert.pem());
        write_secret(&key_path, &key.serialize_pem());
        (cert_path, key_path)
    }
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn write_public(path: &Path, pem: &str) {
    std::fs::write(path, pem).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Private keys are written owner-only, as an operator would keep them.
fn write_secret(path: &Path, pem: &str) {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    file.write_all(pem.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

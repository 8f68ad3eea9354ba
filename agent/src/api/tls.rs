//! The serving certificate of the kubelet API: the one the `kubelet-serving` CSR
//! issued (`<state-dir>/pki/kubelet-server.{crt,key}`), picked up again whenever the
//! files change (rotation), and until one is issued a self-signed certificate for the
//! node's name and addresses, as kubelet serves before its CSR is approved.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why the kubelet API's TLS cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}: {source}")]
    Pem {
        what: &'static str,
        source: rustls::pki_types::pem::Error,
    },
    #[error("no certificate in the {0}")]
    Empty(&'static str),
    #[error("{what}: {source}")]
    Rustls {
        what: &'static str,
        source: rustls::Error,
    },
    #[error("client CA: {0}")]
    ClientCa(String),
    #[error("making the self-signed certificate: {0}")]
    SelfSigned(#[from] rcgen::Error),
}

/// Resolves the serving certificate for every handshake, reloading it on change.
#[derive(Debug)]
pub struct ServingCerts {
    crt: PathBuf,
    key: PathBuf,
    self_signed: Arc<CertifiedKey>,
    current: Mutex<Option<(SystemTime, Arc<CertifiedKey>)>>,
}

fn certified(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> =
        rustls::pki_types::pem::PemObject::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|source| TlsError::Pem {
                what: "certificate",
                source,
            })?;
    if certs.is_empty() {
        return Err(TlsError::Empty("certificate PEM"));
    }
    let key =
        <PrivateKeyDer<'static> as rustls::pki_types::pem::PemObject>::from_pem_slice(key_pem)
            .map_err(|source| TlsError::Pem {
                what: "key",
                source,
            })?;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    CertifiedKey::from_der(certs, key, &provider).map_err(|source| TlsError::Rustls {
        what: "serving certificate and key",
        source,
    })
}

impl ServingCerts {
    /// The resolver for a node `name` with `ips`; its self-signed fallback is made now.
    pub fn new(
        crt: PathBuf,
        key: PathBuf,
        name: &str,
        ips: &[std::net::IpAddr],
    ) -> Result<Self, TlsError> {
        let mut sans: Vec<String> = vec![name.to_string()];
        sans.extend(ips.iter().map(ToString::to_string));
        let mut params = rcgen::CertificateParams::new(sans)?;
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("{name}@kernlet-self-signed"),
        );
        let kp = rcgen::KeyPair::generate()?;
        let cert = params.self_signed(&kp)?;
        let self_signed = certified(cert.pem().as_bytes(), kp.serialize_pem().as_bytes())?;
        Ok(Self {
            crt,
            key,
            self_signed: Arc::new(self_signed),
            current: Mutex::new(None),
        })
    }

    /// The issued certificate when its files exist and parse, reloaded when the
    /// certificate file changes; else the self-signed one.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mtime = std::fs::metadata(&self.crt).and_then(|m| m.modified()).ok();
        let Ok(mut cur) = self.current.lock() else {
            return Arc::clone(&self.self_signed);
        };
        match (mtime, cur.as_ref()) {
            (Some(m), Some((seen, ck))) if *seen == m => return Arc::clone(ck),
            (None, _) => {
                *cur = None;
                return Arc::clone(&self.self_signed);
            }
            _ => {}
        }
        let loaded = std::fs::read(&self.crt)
            .ok()
            .zip(std::fs::read(&self.key).ok())
            .and_then(|(c, k)| certified(&c, &k).ok());
        match (loaded, mtime) {
            (Some(ck), Some(m)) => {
                tracing::info!(cert = %self.crt.display(), "serving the issued kubelet certificate");
                let ck = Arc::new(ck);
                *cur = Some((m, Arc::clone(&ck)));
                ck
            }
            _ => Arc::clone(&self.self_signed),
        }
    }

    /// Whether handshakes now get the self-signed certificate.
    pub fn is_self_signed(&self) -> bool {
        Arc::ptr_eq(&self.current(), &self.self_signed)
    }
}

impl ResolvesServerCert for ServingCerts {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The TLS configuration: TLS 1.2 and 1.3 with rustls' modern suites only, client
/// certificates optional and verified against `client_ca_pem` when sent.
pub fn server_config(
    certs: Arc<ServingCerts>,
    client_ca_pem: &[u8],
) -> Result<rustls::ServerConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::pem::PemObject::pem_slice_iter(client_ca_pem) {
        let c: CertificateDer<'static> = c.map_err(|source| TlsError::Pem {
            what: "client CA",
            source,
        })?;
        roots.add(c).map_err(|source| TlsError::Rustls {
            what: "client CA",
            source,
        })?;
    }
    if roots.is_empty() {
        return Err(TlsError::Empty("client CA"));
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::ClientCa(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_protocol_versions(&[
        &rustls::version::TLS13,
        &rustls::version::TLS12,
    ])
    .with_client_cert_verifier(verifier)
    .with_cert_resolver(certs);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_until_issued_then_the_issued_one_reloaded_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let (crt, key) = (dir.path().join("s.crt"), dir.path().join("s.key"));
        let certs = ServingCerts::new(
            crt.clone(),
            key.clone(),
            "n1",
            &["198.18.0.10".parse().unwrap()],
        )
        .unwrap();
        assert!(certs.is_self_signed());
        let issue = |cn: &str| {
            let mut p = rcgen::CertificateParams::new(vec!["n1".to_string()]).unwrap();
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            let k = rcgen::KeyPair::generate().unwrap();
            let c = p.self_signed(&k).unwrap();
            std::fs::write(&key, k.serialize_pem()).unwrap();
            std::fs::write(&crt, c.pem()).unwrap();
            c.der().to_vec()
        };
        let first = issue("system:node:n1");
        assert!(!certs.is_self_signed());
        assert_eq!(certs.current().cert[0].as_ref(), first.as_slice());
        std::thread::sleep(std::time::Duration::from_millis(20));
        let second = issue("system:node:n1 rotated");
        // A new modification time: the rotated certificate is served.
        let f = std::fs::File::options().append(true).open(&crt).unwrap();
        f.set_modified(SystemTime::now() + std::time::Duration::from_secs(1))
            .unwrap();
        assert_eq!(certs.current().cert[0].as_ref(), second.as_slice());
    }
}

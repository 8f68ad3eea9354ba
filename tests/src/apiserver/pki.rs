//! The test cluster's certificate authority: serving and client certificates, and
//! signing of CertificateSigningRequests like the controller-manager's signer.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate and its private key, PEM encoded.
#[derive(Clone, Debug)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The cluster CA.
pub struct Ca {
    pub cert_pem: String,
    /// The CA key, for a real controller-manager's CSR signer.
    pub key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = jiff::Timestamp::now().as_second();
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + time_secs(now - 300);
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + time_secs(now + days * 86400);
}

fn time_secs(s: i64) -> std::time::Duration {
    std::time::Duration::from_secs(u64::try_from(s).unwrap_or(0))
}

impl Ca {
    /// A new CA named `kubernetes`, like kubeadm's.
    pub fn new() -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "kubernetes");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::CrlSign,
        ];
        validity(&mut params, 3650);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A serving certificate for the apiserver with the given SANs.
    pub fn serving(&self, cn: &str, dns: &[&str], ips: &[IpAddr]) -> anyhow::Result<CertPair> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        for d in dns {
            params
                .subject_alt_names
                .push(SanType::DnsName((*d).try_into()?));
        }
        for ip in ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        validity(&mut params, 365);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The kube-apiserver's serving certificate: the names of the `kubernetes` Service
    /// plus `ips` (where it listens and is forwarded to, and 10.96.0.1).
    pub fn apiserver_serving(&self, ips: &[IpAddr]) -> anyhow::Result<CertPair> {
        self.serving(
            "kube-apiserver",
            &[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            ips,
        )
    }

    /// A client certificate: the apiserver reads the user from CN and groups from O.
    /// rcgen keeps one value per attribute type, so at most one group fits.
    pub fn client(&self, user: &str, groups: &[&str]) -> anyhow::Result<CertPair> {
        self.client_for(user, groups, 365 * 86400)
    }

    /// A client certificate (as [`Ca::client`]) that expires `seconds` from now.
    pub fn client_for(
        &self,
        user: &str,
        groups: &[&str],
        seconds: i64,
    ) -> anyhow::Result<CertPair> {
        anyhow::ensure!(
            groups.len() <= 1,
            "a test client certificate carries at most one group (O), got {groups:?}"
        );
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        for g in groups {
            params.distinguished_name.push(DnType::OrganizationName, *g);
        }
        params.distinguished_name.push(DnType::CommonName, user);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        validity(&mut params, 0);
        params.not_after += time_secs(seconds);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a certificate for a PEM CSR, valid for `seconds` (the CSR's
    /// `expirationSeconds`, like the kube-controller-manager signer honours).
    pub fn sign_csr(&self, csr_pem: &str, seconds: i64, usages: &[&str]) -> anyhow::Result<String> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        validity(&mut csr.params, 0);
        csr.params.not_after = csr.params.not_before + time_secs(300 + seconds);
        csr.params.is_ca = IsCa::NoCa;
        csr.params.extended_key_usages = usages
            .iter()
            .filter_map(|u| match *u {
                "client auth" => Some(ExtendedKeyUsagePurpose::ClientAuth),
                "server auth" => Some(ExtendedKeyUsagePurpose::ServerAuth),
                _ => None,
            })
            .collect();
        csr.params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        Ok(csr.signed_by(&self.issuer)?.pem())
    }
}

/// The validity window of a DER certificate, in seconds since the epoch.
pub fn validity_window(der: &[u8]) -> Option<(i64, i64)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// `(CN, [O...])` of a DER certificate: the user and groups of a client certificate.
pub fn subject_identity(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let cn = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    Some((cn, groups))
}

/// How many DNS and IP subject alternative names a PEM CSR asks for.
pub fn csr_san_count(csr_pem: &str) -> usize {
    CertificateSigningRequestParams::from_pem(csr_pem)
        .map(|c| {
            c.params
                .subject_alt_names
                .iter()
                .filter(|n| matches!(n, rcgen::SanType::DnsName(_) | rcgen::SanType::IpAddress(_)))
                .count()
        })
        .unwrap_or(0)
}

/// `(CN, [O...])` of a PEM CSR, for checking what a CSR asks for.
pub fn csr_identity(csr_pem: &str) -> Option<(String, Vec<String>)> {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem).ok()?;
    let mut cn = None;
    let mut groups = Vec::new();
    for (ty, value) in csr.params.distinguished_name.iter() {
        let text = match value {
            rcgen::DnValue::PrintableString(s) => s.to_string(),
            rcgen::DnValue::Utf8String(s) => s.clone(),
            _ => continue,
        };
        match ty {
            DnType::CommonName => cn = Some(text),
            DnType::OrganizationName => groups.push(text),
            _ => {}
        }
    }
    Some((cn?, groups))
}

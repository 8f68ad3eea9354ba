//! Node certificate requests: what a node asks for and how to read the answer.

use std::net::IpAddr;

use k8s_openapi::api::certificates::v1::CertificateSigningRequestStatus;

/// A PEM CSR with the node's identity (`CN=system:node:<name>`, `O=system:nodes`) and,
/// for a serving certificate, SANs: the node name and `ips`.
pub fn node_csr(
    node: &str,
    serving_ips: Option<&[IpAddr]>,
    key: &rcgen::KeyPair,
) -> Result<String, rcgen::Error> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    if let Some(ips) = serving_ips {
        params
            .subject_alt_names
            .push(rcgen::SanType::DnsName(node.try_into()?));
        for ip in ips {
            params
                .subject_alt_names
                .push(rcgen::SanType::IpAddress(*ip));
        }
    }
    params.serialize_request(key)?.pem()
}

/// Where a CSR stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CsrOutcome {
    Pending,
    /// The issued certificate (PEM).
    Issued(Vec<u8>),
    /// Denied or Failed, with the condition type and why.
    Refused {
        condition: String,
        why: String,
    },
}

/// Reads a CSR's status: a Denied or Failed condition wins over a certificate.
pub fn outcome(status: Option<CertificateSigningRequestStatus>) -> CsrOutcome {
    let status = status.unwrap_or_default();
    if let Some(c) = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Denied" || c.type_ == "Failed")
    {
        return CsrOutcome::Refused {
            condition: c.type_.clone(),
            why: c.message.clone().or(c.reason.clone()).unwrap_or_default(),
        };
    }
    status
        .certificate
        .map_or(CsrOutcome::Pending, |c| CsrOutcome::Issued(c.0))
}

/// `(notBefore, notAfter)` of a PEM certificate, in Unix seconds.
pub fn validity(cert_pem: &[u8]) -> Option<(i64, i64)> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// When kubelet's certificate manager rotates a certificate: at a point between 70 %
/// and 90 % of its lifetime, `jitter` in `[0, 1)` choosing where.
pub fn rotation_deadline(not_before: i64, not_after: i64, jitter: f64) -> i64 {
    let lifetime = i128::from((not_after - not_before).max(0));
    let per_million = 700_000 + (200_000.0 * jitter.clamp(0.0, 1.0)) as i128;
    not_before + i64::try_from(lifetime * per_million / 1_000_000).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_and_serving_requests() {
        let key = rcgen::KeyPair::generate().unwrap();
        let client =
            rcgen::CertificateSigningRequestParams::from_pem(&node_csr("n1", None, &key).unwrap())
                .unwrap();
        assert!(client.params.subject_alt_names.is_empty());
        let ips: [IpAddr; 1] = ["198.18.0.101".parse().unwrap()];
        let pem = node_csr("fixture-node-1", Some(&ips), &key).unwrap();
        let serving = rcgen::CertificateSigningRequestParams::from_pem(&pem).unwrap();
        let sans: Vec<String> = serving
            .params
            .subject_alt_names
            .iter()
            .map(|s| format!("{s:?}"))
            .collect();
        assert_eq!(
            sans.len(),
            2,
            "the name and the address, like the recorded serving CSR"
        );
        assert!(
            sans[0].contains("fixture-node-1") && sans[1].contains("198.18.0.101"),
            "{sans:?}"
        );
        // A dual-stack node: both addresses.
        let ips: [IpAddr; 2] = [
            "198.18.0.101".parse().unwrap(),
            "fd00::101".parse().unwrap(),
        ];
        let pem = node_csr("n1", Some(&ips), &key).unwrap();
        let serving = rcgen::CertificateSigningRequestParams::from_pem(&pem).unwrap();
        assert_eq!(serving.params.subject_alt_names.len(), 3);
    }

    #[test]
    fn outcomes() {
        let status = |v: serde_json::Value| Some(serde_json::from_value(v).unwrap());
        assert_eq!(outcome(None), CsrOutcome::Pending);
        assert_eq!(
            outcome(status(serde_json::json!({"certificate": "eA=="}))),
            CsrOutcome::Issued(b"x".to_vec())
        );
        assert_eq!(
            outcome(status(
                serde_json::json!({"certificate": "eA==", "conditions": [{"type": "Denied", "status": "True", "reason": "R", "message": "no"}]})
            )),
            CsrOutcome::Refused {
                condition: "Denied".into(),
                why: "no".into()
            }
        );
    }

    #[test]
    fn rotation_falls_between_seventy_and_ninety_percent() {
        assert_eq!(rotation_deadline(1000, 2000, 0.0), 1700);
        assert_eq!(rotation_deadline(1000, 2000, 0.5), 1800);
        assert_eq!(rotation_deadline(1000, 2000, 0.999_999), 1899);
        assert_eq!(rotation_deadline(1000, 2000, 7.0), 1900);
        assert_eq!(rotation_deadline(2000, 1000, 0.5), 2000);
    }
}

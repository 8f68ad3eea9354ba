//! Who is asking and whether they may: kubelet's authentication (client certificates
//! against the cluster CA, bearer tokens through TokenReview) and authorization
//! (SubjectAccessReview on the node's subresources), with kubelet's caches.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::TokenReview;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::client::SharedClient;

/// An authenticated user.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

/// The user a verified client certificate names: CN is the user, each O a group.
pub fn user_from_cert(der: &[u8]) -> Option<User> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    Some(User { name, groups })
}

/// The node subresources a request may be authorized by, most specific first: kubelet
/// asks for the fine-grained one (`nodes/pods`, `nodes/healthz`, `nodes/configz`) and
/// falls back to `nodes/proxy`.
pub fn subresources(path: &str) -> &'static [&'static str] {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    match first {
        "stats" => &["stats"],
        "metrics" => &["metrics"],
        "logs" => &["log"],
        "spec" => &["spec"],
        "checkpoint" => &["checkpoint"],
        "pods" | "runningpods" => &["pods", "proxy"],
        "healthz" => &["healthz", "proxy"],
        "configz" => &["configz", "proxy"],
        _ => &["proxy"],
    }
}

/// The verb of an HTTP method, as kubelet maps it.
pub fn verb(method: &http::Method) -> &'static str {
    match *method {
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "get",
    }
}

/// kubelet's body for a refused request.
pub fn forbidden_body(user: &User, verb: &str, subresource: &str) -> String {
    format!(
        "Forbidden (user={}, verb={verb}, resource=nodes, subresource(s)=[{subresource}])\n",
        user.name
    )
}

struct Cached<T> {
    value: T,
    until: Instant,
}

/// Why a review could not be had from the apiserver.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("building the {0}: {1}")]
    Encode(&'static str, #[source] serde_json::Error),
    #[error("{0} timed out after {secs} s", secs = REVIEW_TIMEOUT.as_secs())]
    TimedOut(&'static str),
    #[error("{0}: {1}")]
    Api(&'static str, #[source] kube::Error),
}

/// The most entries each cache holds: requests with ever new tokens (or users) cannot
/// grow it without bound; when full, the entry closest to expiry goes.
const MAX_CACHED: usize = 4096;

/// Puts `value` into `cache` for `ttl`, after dropping what expired and, when full,
/// the entry closest to expiry.
fn remember<K: std::hash::Hash + Eq + Clone, T>(
    cache: &Mutex<HashMap<K, Cached<T>>>,
    key: K,
    value: T,
    ttl: Duration,
) {
    let Ok(mut cache) = cache.lock() else {
        return;
    };
    let now = Instant::now();
    cache.retain(|_, c| c.until > now);
    if cache.len() >= MAX_CACHED
        && let Some(soonest) = cache
            .iter()
            .min_by_key(|(_, c)| c.until)
            .map(|(k, _)| k.clone())
    {
        cache.remove(&soonest);
    }
    cache.insert(
        key,
        Cached {
            value,
            until: now + ttl,
        },
    );
}

/// TokenReview and SubjectAccessReview through the apiserver, cached as kubelet caches
/// them (tokens 2 min; allowed 5 min, denied 30 s).
pub struct Authorizer {
    client: SharedClient,
    node: String,
    tokens: Mutex<HashMap<String, Cached<Option<User>>>>,
    decisions: Mutex<HashMap<(User, String, String), Cached<bool>>>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("node", &self.node)
            .finish()
    }
}

const TOKEN_TTL: Duration = Duration::from_secs(120);
const ALLOWED_TTL: Duration = Duration::from_secs(300);
const DENIED_TTL: Duration = Duration::from_secs(30);
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

impl Authorizer {
    pub fn new(client: SharedClient, node: String) -> Self {
        Self {
            client,
            node,
            tokens: Mutex::default(),
            decisions: Mutex::default(),
        }
    }

    /// The user a bearer token belongs to (`None`: not a valid token). An apiserver that
    /// cannot be asked is an error, not a refusal to cache.
    pub async fn user_for_token(&self, token: &str) -> Result<Option<User>, AuthError> {
        // Cached by digest, so the cache holds no usable token.
        let key: String = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if let Ok(cache) = self.tokens.lock()
            && let Some(c) = cache.get(&key)
            && c.until > Instant::now()
        {
            return Ok(c.value.clone());
        }
        let review: TokenReview = serde_json::from_value(json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token},
        }))
        .map_err(|e| AuthError::Encode("TokenReview", e))?;
        let api: Api<TokenReview> = Api::all(self.client.get());
        let answer =
            tokio::time::timeout(REVIEW_TIMEOUT, api.create(&PostParams::default(), &review))
                .await
                .map_err(|_| AuthError::TimedOut("TokenReview"))?
                .map_err(|e| AuthError::Api("TokenReview", e))?;
        let status = answer.status.unwrap_or_default();
        let user = if status.authenticated == Some(true) {
            status.user.map(|u| User {
                name: u.username.unwrap_or_default(),
                groups: u.groups.unwrap_or_default(),
            })
        } else {
            None
        };
        remember(&self.tokens, key, user.clone(), TOKEN_TTL);
        Ok(user)
    }

    /// Whether `user` may `verb` the node's `subresource`.
    pub async fn allowed(
        &self,
        user: &User,
        verb: &str,
        subresource: &str,
    ) -> Result<bool, AuthError> {
        let key = (user.clone(), verb.to_string(), subresource.to_string());
        if let Ok(cache) = self.decisions.lock()
            && let Some(c) = cache.get(&key)
            && c.until > Instant::now()
        {
            return Ok(c.value);
        }
        let review: SubjectAccessReview = serde_json::from_value(json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {
                "user": user.name, "groups": user.groups,
                "resourceAttributes": {
                    "verb": verb, "group": "", "version": "v1", "resource": "nodes",
                    "subresource": subresource, "name": self.node,
                },
            },
        }))
        .map_err(|e| AuthError::Encode("SubjectAccessReview", e))?;
        let api: Api<SubjectAccessReview> = Api::all(self.client.get());
        let answer =
            tokio::time::timeout(REVIEW_TIMEOUT, api.create(&PostParams::default(), &review))
                .await
                .map_err(|_| AuthError::TimedOut("SubjectAccessReview"))?
                .map_err(|e| AuthError::Api("SubjectAccessReview", e))?;
        let allowed = answer.status.is_some_and(|s| s.allowed);
        let ttl = if allowed { ALLOWED_TTL } else { DENIED_TTL };
        remember(&self.decisions, key, allowed, ttl);
        Ok(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_never_holds_more_than_its_bound() {
        let cache: Mutex<HashMap<u32, Cached<bool>>> = Mutex::default();
        for i in 0..(MAX_CACHED as u32 + 100) {
            remember(&cache, i, true, TOKEN_TTL);
        }
        let cache = cache.lock().unwrap();
        assert_eq!(cache.len(), MAX_CACHED);
        // The newest stay.
        assert!(cache.contains_key(&(MAX_CACHED as u32 + 99)));
        assert!(!cache.contains_key(&0));
    }

    #[test]
    fn paths_map_to_kubelets_subresources() {
        assert_eq!(subresources("/containerLogs/ns/p/c"), ["proxy"]);
        assert_eq!(subresources("/exec/ns/p/c"), ["proxy"]);
        assert_eq!(subresources("/stats/summary"), ["stats"]);
        assert_eq!(subresources("/metrics/resource"), ["metrics"]);
        assert_eq!(subresources("/metrics"), ["metrics"]);
        assert_eq!(subresources("/logs/"), ["log"]);
        assert_eq!(subresources("/pods"), ["pods", "proxy"]);
        assert_eq!(subresources("/healthz"), ["healthz", "proxy"]);
        assert_eq!(verb(&http::Method::POST), "create");
        assert_eq!(verb(&http::Method::GET), "get");
    }

    #[test]
    fn refusals_read_like_kubelets() {
        let u = User {
            name: "system:serviceaccount:default:x".into(),
            groups: vec![],
        };
        assert_eq!(
            forbidden_body(&u, "get", "proxy"),
            "Forbidden (user=system:serviceaccount:default:x, verb=get, resource=nodes, subresource(s)=[proxy])\n"
        );
    }

    #[test]
    fn certificates_name_user_and_groups() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kube-apiserver-kubelet-client");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "kubeadm:cluster-admins");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            user_from_cert(cert.der()),
            Some(User {
                name: "kube-apiserver-kubelet-client".into(),
                groups: vec!["kubeadm:cluster-admins".into()],
            })
        );
    }
}

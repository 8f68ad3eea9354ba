//! Service-account tokens (TokenRequest) and bootstrap tokens, verified by the server
//! itself for authentication and TokenReview.

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};

/// The API audience tokens get when a TokenRequest names none.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// Signs and verifies JWTs (HS256 with a per-server key).
pub struct TokenSigner {
    key: hmac::Key,
}

impl TokenSigner {
    pub fn new() -> Self {
        let secret = uuid::Uuid::new_v4();
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
        }
    }

    /// A JWT carrying `claims`.
    pub fn sign(&self, claims: &Value) -> String {
        let header = B64.encode(json!({"alg": "HS256", "kid": "kernlet-testkit"}).to_string());
        let body = B64.encode(claims.to_string());
        let signing_input = format!("{header}.{body}");
        let tag = hmac::sign(&self.key, signing_input.as_bytes());
        format!("{signing_input}.{}", B64.encode(tag.as_ref()))
    }

    /// The claims of a token this server signed and that has not expired.
    pub fn verify(&self, token: &str) -> Option<Value> {
        let (input, sig) = token.rsplit_once('.')?;
        let sig = B64.decode(sig).ok()?;
        hmac::verify(&self.key, input.as_bytes(), &sig).ok()?;
        let (_, body) = input.split_once('.')?;
        let claims: Value = serde_json::from_slice(&B64.decode(body).ok()?).ok()?;
        let exp = claims.get("exp").and_then(Value::as_i64)?;
        (exp > jiff::Timestamp::now().as_second()).then_some(claims)
    }
}

impl Default for TokenSigner {
    fn default() -> Self {
        Self::new()
    }
}

/// Splits a bootstrap token `<6 chars>.<16 chars>` into id and secret.
pub fn parse_bootstrap_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    };
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

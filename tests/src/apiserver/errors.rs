//! `Status` errors shaped like the real apiserver's.

use serde_json::{Value, json};

use super::resources::ResourceType;

/// An API error: HTTP code and the `Status` body the real apiserver sends.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: String, details: Option<Value>) -> Self {
        Self {
            code,
            reason,
            message,
            details,
        }
    }

    /// The `Status` object.
    pub fn status(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }

    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        let q = rt.qualified();
        Self::new(
            404,
            "NotFound",
            format!("{q} \"{name}\" not found"),
            Some(details(rt, Some(name))),
        )
    }

    pub fn namespace_not_found(ns: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("namespaces \"{ns}\" not found"),
            Some(json!({"name": ns, "kind": "namespaces"})),
        )
    }

    pub fn path_not_found() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
            Some(json!({})),
        )
    }

    pub fn already_exists(rt: &ResourceType, name: &str) -> Self {
        let q = rt.qualified();
        Self::new(
            409,
            "AlreadyExists",
            format!("{q} \"{name}\" already exists"),
            Some(details(rt, Some(name))),
        )
    }

    pub fn conflict(rt: &ResourceType, name: &str) -> Self {
        let q = rt.qualified();
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {q} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
            Some(details(rt, Some(name))),
        )
    }

    pub fn precondition(rt: &ResourceType, name: &str, what: impl std::fmt::Display) -> Self {
        let q = rt.qualified();
        Self::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {q} \"{name}\": {what}"),
            Some(details(rt, Some(name))),
        )
    }

    /// 403 with the apiserver's message text (built by the authorizer).
    pub fn forbidden(rt: &ResourceType, name: Option<&str>, message: String) -> Self {
        Self::new(403, "Forbidden", message, Some(details(rt, name)))
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized".into(), None)
    }

    pub fn invalid(kind: &str, name: &str, causes: Vec<(String, String)>) -> Self {
        let summary = causes
            .iter()
            .map(|(field, msg)| format!("{field}: {msg}"))
            .collect::<Vec<_>>();
        let message = if summary.len() == 1 {
            format!("{kind} \"{name}\" is invalid: {}", summary[0])
        } else {
            format!("{kind} \"{name}\" is invalid: [{}]", summary.join(", "))
        };
        let causes: Vec<Value> = causes
            .into_iter()
            .map(|(field, msg)| json!({"reason": "FieldValueInvalid", "message": msg, "field": field}))
            .collect();
        Self::new(
            422,
            "Invalid",
            message,
            Some(json!({"name": name, "kind": kind, "causes": causes})),
        )
    }

    pub fn bad_request(message: String) -> Self {
        Self::new(400, "BadRequest", message, None)
    }

    /// The apiserver could not reach a kubelet (its proxy's 500).
    pub fn internal(message: String) -> Self {
        Self::new(500, "InternalError", message, None)
    }

    pub fn gone(message: String) -> Self {
        Self::new(410, "Expired", message, None)
    }

    pub fn method_not_allowed(message: String) -> Self {
        Self::new(405, "MethodNotAllowed", message, Some(json!({})))
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {content_type})"
            ),
            None,
        )
    }
}

fn details(rt: &ResourceType, name: Option<&str>) -> Value {
    let mut d = json!({"kind": rt.plural});
    if let Some(n) = name {
        d["name"] = json!(n);
    }
    if !rt.group.is_empty() {
        d["group"] = json!(rt.group);
    }
    d
}

//! JSON merge patch (RFC 7386), strategic merge patch (the subset Kubernetes clients
//! send: merge keys of the core lists, `$patch` directives) and JSON patch (RFC 6902).

use serde_json::{Map, Value};

use super::errors::ApiError;

/// RFC 7386: objects merge recursively, `null` deletes, everything else replaces.
pub fn merge_patch(target: &Value, patch: &Value) -> Value {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            let mut out = t.clone();
            for (k, v) in p {
                if v.is_null() {
                    out.remove(k);
                } else {
                    let merged = merge_patch(out.get(k).unwrap_or(&Value::Null), v);
                    out.insert(k.clone(), merged);
                }
            }
            Value::Object(out)
        }
        (_, Value::Object(p)) => merge_patch(&Value::Object(Map::new()), &Value::Object(p.clone())),
        (_, p) => p.clone(),
    }
}

/// The merge key of a list field under strategic merge, from the Kubernetes API types.
fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    Some(match field {
        "conditions" | "addresses" => "type",
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "containerStatuses"
        | "initContainerStatuses"
        | "ephemeralContainerStatuses"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "podIPs" | "hostIPs" | "hostAliases" => "ip",
        "ownerReferences" => "uid",
        "taints" => "key",
        "ports" => {
            if items.iter().any(|i| i.get("containerPort").is_some()) {
                "containerPort"
            } else {
                "port"
            }
        }
        _ => return None,
    })
}

/// Strategic merge patch of `patch` onto `target`.
pub fn strategic_merge_patch(target: &Value, patch: &Value) -> Result<Value, ApiError> {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            if p.get("$patch").and_then(Value::as_str) == Some("replace") {
                let mut replaced = p.clone();
                replaced.remove("$patch");
                return Ok(Value::Object(strip_directives(&replaced)));
            }
            let mut out = t.clone();
            for (k, v) in p {
                if k.starts_with('$') {
                    continue;
                }
                if v.is_null() {
                    out.remove(k);
                    continue;
                }
                let current = out.get(k).cloned().unwrap_or(Value::Null);
                let merged = match (&current, v) {
                    (Value::Array(cur), Value::Array(new)) => match merge_key(k, new) {
                        Some(mk) => Value::Array(merge_list(cur, new, mk)?),
                        None => Value::Array(new.iter().map(clean).collect()),
                    },
                    (Value::Object(_), Value::Object(_)) => strategic_merge_patch(&current, v)?,
                    (_, Value::Object(_)) => strategic_merge_patch(&Value::Object(Map::new()), v)?,
                    (_, other) => clean(other),
                };
                out.insert(k.clone(), merged);
            }
            Ok(Value::Object(out))
        }
        (_, p) => Ok(clean(p)),
    }
}

fn merge_list(current: &[Value], patch: &[Value], mk: &str) -> Result<Vec<Value>, ApiError> {
    let mut out: Vec<Value> = current.to_vec();
    for item in patch {
        let key = item.get(mk).cloned();
        let Some(key) = key else {
            return Err(ApiError::bad_request(format!(
                "map: {item} does not contain declared merge key: {mk}"
            )));
        };
        let pos = out.iter().position(|e| e.get(mk) == Some(&key));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                out.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => out[i] = strategic_merge_patch(&out[i], item)?,
            (None, false) => out.push(clean(item)),
        }
    }
    Ok(out)
}

fn strip_directives(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k.clone(), clean(v)))
        .collect()
}

/// Removes patch directives (`$setElementOrder/...`, `$retainKeys`) from stored values.
fn clean(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(strip_directives(m)),
        Value::Array(a) => Value::Array(a.iter().map(clean).collect()),
        other => other.clone(),
    }
}

/// RFC 6902 JSON patch: add, remove, replace, test, move, copy.
pub fn json_patch(target: &Value, ops: &Value) -> Result<Value, ApiError> {
    let bad = |m: String| ApiError::bad_request(format!("invalid JSON patch: {m}"));
    let ops = ops.as_array().ok_or_else(|| bad("not an array".into()))?;
    let mut doc = target.clone();
    for op in ops {
        let kind = op
            .get("op")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("op missing".into()))?;
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("path missing".into()))?;
        match kind {
            "add" | "replace" => {
                let value = op
                    .get("value")
                    .cloned()
                    .ok_or_else(|| bad("value missing".into()))?;
                set_pointer(&mut doc, path, value, kind == "add").map_err(bad)?;
            }
            "remove" => {
                remove_pointer(&mut doc, path).map_err(bad)?;
            }
            "test" => {
                if doc.pointer(path) != op.get("value") {
                    return Err(ApiError::bad_request(format!(
                        "the test operation on {path} failed"
                    )));
                }
            }
            "move" | "copy" => {
                let from = op
                    .get("from")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("from missing".into()))?;
                let value = doc
                    .pointer(from)
                    .cloned()
                    .ok_or_else(|| bad(format!("{from} not found")))?;
                if kind == "move" {
                    remove_pointer(&mut doc, from).map_err(bad)?;
                }
                set_pointer(&mut doc, path, value, true).map_err(bad)?;
            }
            other => return Err(bad(format!("unknown op {other}"))),
        }
    }
    Ok(doc)
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn split_parent(path: &str) -> Result<(&str, String), String> {
    let idx = path.rfind('/').ok_or_else(|| format!("bad path {path}"))?;
    Ok((&path[..idx], unescape(&path[idx + 1..])))
}

fn set_pointer(doc: &mut Value, path: &str, value: Value, insert: bool) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split_parent(path)?;
    let parent = doc
        .pointer_mut(parent)
        .ok_or_else(|| format!("{path}: parent not found"))?;
    match parent {
        Value::Object(m) => {
            if !insert && !m.contains_key(&last) {
                return Err(format!("{path} not found"));
            }
            m.insert(last, value);
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(value);
            } else {
                let i: usize = last.parse().map_err(|_| format!("bad index in {path}"))?;
                if insert && i <= a.len() {
                    a.insert(i, value);
                } else if !insert && i < a.len() {
                    a[i] = value;
                } else {
                    return Err(format!("{path}: index out of range"));
                }
            }
        }
        _ => return Err(format!("{path}: parent is not a container")),
    }
    Ok(())
}

fn remove_pointer(doc: &mut Value, path: &str) -> Result<(), String> {
    let (parent, last) = split_parent(path)?;
    match doc.pointer_mut(parent) {
        Some(Value::Object(m)) => m
            .remove(&last)
            .map(|_| ())
            .ok_or_else(|| format!("{path} not found")),
        Some(Value::Array(a)) => {
            let i: usize = last.parse().map_err(|_| format!("bad index in {path}"))?;
            if i < a.len() {
                a.remove(i);
                Ok(())
            } else {
                Err(format!("{path}: index out of range"))
            }
        }
        _ => Err(format!("{path} not found")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_keeps_other_writers_conditions() {
        let node = json!({"status": {"conditions": [
            {"type": "Ready", "status": "False"},
            {"type": "NetworkUnavailable", "status": "True", "reason": "NoRoute"}
        ]}});
        let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        let out = strategic_merge_patch(&node, &patch).unwrap();
        assert_eq!(
            out["status"]["conditions"],
            json!([
                {"type": "Ready", "status": "True"},
                {"type": "NetworkUnavailable", "status": "True", "reason": "NoRoute"}
            ])
        );
        // A JSON merge patch replaces the list: the other writer's entry is lost.
        let merged = merge_patch(&node, &patch);
        assert_eq!(merged["status"]["conditions"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn container_statuses_by_name_and_delete_directive() {
        let pod = json!({"status": {"containerStatuses": [{"name": "a", "ready": false}, {"name": "b", "ready": false}]}});
        let patch = json!({"status": {
            "$setElementOrder/containerStatuses": [{"name": "a"}, {"name": "b"}],
            "containerStatuses": [{"name": "b", "ready": true}, {"name": "a", "$patch": "delete"}]
        }});
        let out = strategic_merge_patch(&pod, &patch).unwrap();
        assert_eq!(
            out,
            json!({"status": {"containerStatuses": [{"name": "b", "ready": true}]}})
        );
    }

    #[test]
    fn json_patch_ops() {
        let doc = json!({"metadata": {"labels": {"a": "1"}}, "list": [1, 2]});
        let out = json_patch(
            &doc,
            &json!([
                {"op": "add", "path": "/metadata/labels/b~1c", "value": "2"},
                {"op": "remove", "path": "/metadata/labels/a"},
                {"op": "add", "path": "/list/-", "value": 3},
                {"op": "test", "path": "/list/0", "value": 1}
            ]),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"metadata": {"labels": {"b/c": "2"}}, "list": [1, 2, 3]})
        );
        assert!(
            json_patch(
                &doc,
                &json!([{"op": "test", "path": "/list/0", "value": 9}])
            )
            .is_err()
        );
    }
}

//! `kernlet inspect`: one pod or container as the node has it — its spec and state,
//! the sandbox (namespace pins, IP, cgroup), and per container the process, cgroup
//! path and the limits written there, namespaces and mounts. Read from the state
//! directory and the kernel, so it answers while the daemon is down.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::runtime::container::{ContainerRecord, ContainerState, records_in, state_in};

/// The limit files of a cgroup worth showing.
const LIMIT_FILES: [&str; 5] = [
    "memory.max",
    "cpu.max",
    "cpu.weight",
    "pids.max",
    "cgroup.procs",
];

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// The limits a cgroup directory holds (the files it has).
fn limits(dir: &Path) -> Value {
    let mut out = serde_json::Map::new();
    for f in LIMIT_FILES {
        if let Ok(text) = std::fs::read_to_string(dir.join(f)) {
            let text = text.trim();
            let v = if f == "cgroup.procs" {
                json!(
                    text.lines()
                        .filter_map(|l| l.parse::<u32>().ok())
                        .collect::<Vec<_>>()
                )
            } else {
                json!(text)
            };
            out.insert(f.to_string(), v);
        }
    }
    Value::Object(out)
}

/// One container: record, state, process, cgroup, namespaces, mounts.
fn container(state_dir: &Path, cgroup_root: Option<&Path>, r: &ContainerRecord) -> Value {
    let dir = state_dir.join("containers").join(&r.id);
    let mut c = json!({
        "id": r.id, "name": r.name, "attempt": r.restart, "image": r.image_ref,
        "imageID": r.image_id, "createdAt": r.created_at, "log": r.log_path,
        "cgroup": {"path": r.cgroup},
    });
    if let Some(root) = cgroup_root {
        let path = root.join(&r.cgroup);
        c["cgroup"]["absolute"] = json!(path);
        c["cgroup"]["limits"] = limits(&path);
    }
    if !r.unenforced.is_empty() {
        c["cgroup"]["notEnforced"] = json!(r.unenforced);
    }
    match state_in(&dir) {
        ContainerState::Created => c["state"] = json!("created"),
        ContainerState::Running { pid, started_at } => {
            c["state"] = json!("running");
            c["pid"] = json!(pid);
            c["startedAt"] = json!(started_at);
            let ns: serde_json::Map<String, Value> = ["mnt", "pid", "net", "ipc", "uts", "cgroup"]
                .iter()
                .filter_map(|k| {
                    let link = std::fs::read_link(format!("/proc/{pid}/ns/{k}")).ok()?;
                    Some((k.to_string(), json!(link.to_string_lossy())))
                })
                .collect();
            c["namespaces"] = Value::Object(ns);
        }
        ContainerState::Exited { exit, started_at } => {
            c["state"] = json!("exited");
            c["exitCode"] = json!(exit.exit_code);
            c["reason"] = json!(exit.reason());
            c["startedAt"] = json!(started_at);
            c["finishedAt"] = json!(exit.finished_at);
        }
        ContainerState::Failed(why) => {
            c["state"] = json!("failed");
            c["reason"] = json!(why.trim());
        }
    }
    // The runtime spec is in the container's bundle (under the run directory), which
    // its shim request names.
    let bundle = read_json(&dir.join(crate::runtime::shim::REQUEST))
        .and_then(|r| r["bundle"].as_str().map(std::path::PathBuf::from));
    if let Some(spec) = bundle.and_then(|b| read_json(&b.join("config.json"))) {
        c["process"] = json!({
            "args": spec["process"]["args"], "cwd": spec["process"]["cwd"],
            "user": spec["process"]["user"],
            "capabilities": spec["process"]["capabilities"]["effective"],
            "noNewPrivileges": spec["process"]["noNewPrivileges"].as_bool().unwrap_or(false),
            "seccomp": spec["linux"]["seccomp"]["defaultAction"],
        });
        c["mounts"] = json!(
            spec["mounts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| json!({
                    "destination": m["destination"], "type": m["type"], "source": m["source"],
                    "readOnly": m["options"].as_array().is_some_and(|o| o.iter().any(|x| x == "ro")),
                }))
                .collect::<Vec<_>>()
        );
    }
    c
}

/// `what` — `[namespace/]pod` or a container ID (a unique prefix will do) — as JSON.
pub fn inspect(state_dir: &Path, cgroup_root: Option<&Path>, what: &str) -> Result<Value, String> {
    let records = records_in(state_dir);
    let matching: Vec<&ContainerRecord> = records
        .iter()
        .filter(|r| what.len() >= 6 && r.id.starts_with(what))
        .collect();
    if let [r] = matching.as_slice() {
        let mut c = container(state_dir, cgroup_root, r);
        c["podUID"] = json!(r.pod_uid);
        return Ok(c);
    }
    let (ns, name) = what.split_once('/').unwrap_or(("default", what));
    let pods = crate::podworker::recorded_pods(state_dir);
    let pod = pods
        .iter()
        .find(|p| p["metadata"]["namespace"] == ns && p["metadata"]["name"] == name)
        .ok_or_else(|| {
            if matching.len() > 1 {
                format!("{what:?} names {} containers; give more of the ID", matching.len())
            } else {
                format!(
                    "no pod {ns}/{name} and no container {what:?} on this node (see kernlet pods, kernlet ps --state-dir {})",
                    state_dir.display()
                )
            }
        })?;
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let sandbox = read_json(&state_dir.join("pods").join(uid).join("sandbox.json"));
    let mut out = json!({
        "pod": format!("{ns}/{name}"), "uid": uid,
        "phase": pod["status"]["phase"], "spec": pod["spec"], "status": pod["status"],
    });
    if let Some(sb) = sandbox {
        let pins: PathBuf = sb["nsDir"].as_str().map(PathBuf::from).unwrap_or_default();
        let pinned: Vec<PathBuf> = ["net", "ipc", "uts"]
            .iter()
            .map(|k| pins.join(k))
            .filter(|p| crate::sys::ns::is_pinned(p))
            .collect();
        out["sandbox"] = json!({
            "ip": sb["ip"], "hostNetwork": sb["hostNetwork"], "hostIPC": sb["hostIpc"],
            "hostPID": sb["hostPid"], "qosClass": sb["qos"], "createdAt": sb["createdAt"],
            "namespacePins": pinned,
            "cgroup": {"path": sb["cgroup"]},
        });
        if let (Some(root), Some(cg)) = (cgroup_root, sb["cgroup"].as_str()) {
            out["sandbox"]["cgroup"]["absolute"] = json!(root.join(cg));
            out["sandbox"]["cgroup"]["limits"] = limits(&root.join(cg));
        }
    }
    out["volumes"] = crate::volume_view::describe(state_dir, uid, pod);
    out["containers"] = json!(
        records
            .iter()
            .filter(|r| r.pod_uid == uid)
            .map(|r| container(state_dir, cgroup_root, r))
            .collect::<Vec<_>>()
    );
    Ok(out)
}

/// The JSON as `key: value` lines, nested keys joined with dots (the table form).
pub fn lines(v: &Value, prefix: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                lines(v, &key, out);
            }
        }
        Value::Array(a) if a.iter().any(|x| x.is_object()) => {
            for (i, v) in a.iter().enumerate() {
                lines(v, &format!("{prefix}[{i}]"), out);
            }
        }
        Value::Null => {}
        other => out.push(format!(
            "{prefix}: {}",
            match other {
                Value::String(s) => s.clone(),
                x => x.to_string(),
            }
        )),
    }
}

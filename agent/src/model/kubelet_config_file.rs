//! `--config FILE`: kubelet's `KubeletConfiguration` (`kubelet.config.k8s.io/v1beta1`,
//! kubeadm's `/var/lib/kubelet/config.yaml`) as kernlet's flags. Every field kernlet
//! implements becomes the flag of the same meaning; a flag given on the command line
//! wins, as with kubelet; fields kernlet does not implement are named at start.

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("--config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("--config {path}: not valid YAML: {why}")]
    Yaml { path: String, why: String },
    #[error(
        "--config {path}: not a KubeletConfiguration (kind {kind:?}, apiVersion {api_version:?}); give kubelet.config.k8s.io/v1beta1 KubeletConfiguration"
    )]
    Kind {
        path: String,
        kind: String,
        api_version: String,
    },
    #[error("--config {path}: field {field}: {why}")]
    Field {
        path: String,
        field: String,
        why: String,
    },
    #[error("--config needs a file")]
    Missing,
}

/// A duration in kubelet's form as whole seconds.
fn seconds(v: &Value) -> Result<String, String> {
    let text = v.as_str().ok_or("not a duration string")?;
    super::eviction::parse_duration(text)
        .map(|d| d.as_secs().to_string())
        .map_err(|e| e.to_string())
}

fn scalar(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err("not a scalar".into()),
    }
}

/// `{k: v}` as `k<sep>v,...` (sorted by key).
fn pairs(v: &Value, sep: &str) -> Result<String, String> {
    let map = v.as_object().ok_or("not a map")?;
    let mut out = Vec::new();
    for (k, x) in map {
        out.push(format!("{k}{sep}{}", scalar(x)?));
    }
    Ok(out.join(","))
}

/// `[{priority, shutdownGracePeriodSeconds}]` as `priority=seconds,...`.
fn priority_groups(v: &Value) -> Result<String, String> {
    let items = v.as_array().ok_or("not a list")?;
    let mut out = Vec::new();
    for i in items {
        let p = i.get("priority").and_then(Value::as_i64).unwrap_or(0);
        let s = i
            .get("shutdownGracePeriodSeconds")
            .and_then(Value::as_i64)
            .ok_or("an item without shutdownGracePeriodSeconds")?;
        out.push(format!("{p}={s}"));
    }
    Ok(out.join(","))
}

fn list(v: &Value) -> Result<String, String> {
    let items = v.as_array().ok_or("not a list")?;
    Ok(items
        .iter()
        .map(scalar)
        .collect::<Result<Vec<_>, _>>()?
        .join(","))
}

fn taints(v: &Value) -> Result<String, String> {
    let items = v.as_array().ok_or("not a list")?;
    let mut out = Vec::new();
    for t in items {
        let key = t["key"].as_str().ok_or("a taint without key")?;
        let effect = t["effect"].as_str().ok_or("a taint without effect")?;
        out.push(match t["value"].as_str() {
            Some(value) if !value.is_empty() => format!("{key}={value}:{effect}"),
            _ => format!("{key}:{effect}"),
        });
    }
    Ok(out.join(","))
}

type Convert = fn(&Value) -> Result<String, String>;

/// The fields kernlet implements: JSON pointer, flag, conversion.
const FIELDS: &[(&str, &str, Convert)] = &[
    ("/maxPods", "--max-pods", scalar),
    ("/podPidsLimit", "--pod-max-pids", scalar),
    ("/evictionHard", "--eviction-hard", |v| pairs(v, "<")),
    ("/evictionSoft", "--eviction-soft", |v| pairs(v, "<")),
    (
        "/memoryThrottlingFactor",
        "--memory-throttling-factor",
        scalar,
    ),
    (
        "/memoryReservationPolicy",
        "--memory-reservation-policy",
        scalar,
    ),
    ("/memorySwap/swapBehavior", "--memory-swap-behavior", scalar),
    ("/shutdownGracePeriod", "--shutdown-grace-period", scalar),
    (
        "/shutdownGracePeriodCriticalPods",
        "--shutdown-grace-period-critical-pods",
        scalar,
    ),
    (
        "/shutdownGracePeriodByPodPriority",
        "--shutdown-grace-period-by-pod-priority",
        priority_groups,
    ),
    (
        "/evictionSoftGracePeriod",
        "--eviction-soft-grace-period",
        |v| pairs(v, "="),
    ),
    (
        "/evictionMinimumReclaim",
        "--eviction-minimum-reclaim",
        |v| pairs(v, "="),
    ),
    (
        "/evictionMaxPodGracePeriod",
        "--eviction-max-pod-grace-period",
        scalar,
    ),
    (
        "/evictionPressureTransitionPeriod",
        "--eviction-pressure-transition-period",
        scalar,
    ),
    (
        "/imageGCHighThresholdPercent",
        "--image-gc-high-threshold",
        scalar,
    ),
    (
        "/imageGCLowThresholdPercent",
        "--image-gc-low-threshold",
        scalar,
    ),
    ("/imageMinimumGCAge", "--image-minimum-gc-age", scalar),
    ("/imageMaximumGCAge", "--image-maximum-gc-age", scalar),
    ("/systemReserved", "--system-reserved", |v| pairs(v, "=")),
    ("/kubeReserved", "--kube-reserved", |v| pairs(v, "=")),
    ("/clusterDNS", "--cluster-dns", list),
    ("/clusterDomain", "--cluster-domain", scalar),
    (
        "/nodeStatusUpdateFrequency",
        "--node-status-update-frequency",
        seconds,
    ),
    (
        "/nodeStatusReportFrequency",
        "--node-status-report-frequency",
        seconds,
    ),
    ("/syncFrequency", "--sync-frequency", seconds),
    ("/resolvConf", "--resolv-conf", scalar),
    ("/address", "--address", scalar),
    ("/port", "--port", scalar),
    ("/healthzPort", "--healthz-port", scalar),
    ("/healthzBindAddress", "--healthz-bind-address", scalar),
    (
        "/authentication/anonymous/enabled",
        "--anonymous-auth",
        scalar,
    ),
    (
        "/authentication/x509/clientCAFile",
        "--client-ca-file",
        scalar,
    ),
    ("/containerLogMaxSize", "--container-log-max-size", scalar),
    ("/containerLogMaxFiles", "--container-log-max-files", scalar),
    ("/registerWithTaints", "--register-with-taints", taints),
];

/// Fields kernlet reads as kubelet means them without a flag of their own (kernlet
/// always does what they ask at kubeadm's values), or that only identify the file.
const ACCEPTED: &[&str] = &[
    "/apiVersion",
    "/kind",
    "/authentication/webhook/enabled",
    "/authentication/webhook/cacheTTL",
    "/authorization/mode",
    "/authorization/webhook/cacheAuthorizedTTL",
    "/authorization/webhook/cacheUnauthorizedTTL",
    "/rotateCertificates",
    "/serverTLSBootstrap",
    "/seccompDefault",
    "/featureGates/MemoryQoS",
];

/// A flag and its value (`None`: a switch).
pub type Flag = (String, Option<String>);

/// The file's settings as flags, and the fields kernlet does not implement.
pub fn translate(path: &str, yaml: &str) -> Result<(Vec<Flag>, Vec<String>), ConfigFileError> {
    let v: Value = serde_saphyr::from_str(yaml).map_err(|e| ConfigFileError::Yaml {
        path: path.to_string(),
        why: e.to_string(),
    })?;
    let kind = v["kind"].as_str().unwrap_or_default();
    let api_version = v["apiVersion"].as_str().unwrap_or_default();
    if kind != "KubeletConfiguration" || !api_version.starts_with("kubelet.config.k8s.io/") {
        return Err(ConfigFileError::Kind {
            path: path.to_string(),
            kind: kind.to_string(),
            api_version: api_version.to_string(),
        });
    }
    let mut flags = Vec::new();
    for (pointer, flag, convert) in FIELDS {
        if let Some(x) = v.pointer(pointer).filter(|x| !x.is_null()) {
            let value = convert(x).map_err(|why| ConfigFileError::Field {
                path: path.to_string(),
                field: pointer.trim_start_matches('/').replace('/', "."),
                why,
            })?;
            flags.push(((*flag).to_string(), Some(value)));
        }
    }
    if v["seccompDefault"].as_bool() == Some(true) {
        flags.push(("--seccomp-default".into(), None));
    }
    if v.pointer("/featureGates/MemoryQoS")
        .and_then(Value::as_bool)
        == Some(true)
    {
        flags.push(("--memory-qos".into(), None));
    }
    let mut ignored = Vec::new();
    leaves(&v, String::new(), &mut |p| {
        let known = FIELDS
            .iter()
            .any(|(f, _, _)| p == *f || p.starts_with(&format!("{f}/")))
            || ACCEPTED.contains(&p.as_str());
        if !known {
            ignored.push(p.trim_start_matches('/').replace('/', "."));
        }
    });
    Ok((flags, ignored))
}

/// The cluster's KubeletConfiguration (kubeadm's `kube-system/kubelet-config`) as a
/// joined node keeps it (kubeadm's `/var/lib/kubelet/config.yaml`): the client CA file
/// it names is the one the join wrote (`ca_file`). JSON, which is YAML.
pub fn for_joined_node(yaml: &str, ca_file: &std::path::Path) -> Result<String, ConfigFileError> {
    let path = "kube-system/kubelet-config";
    let mut v: Value = serde_saphyr::from_str(yaml).map_err(|e| ConfigFileError::Yaml {
        path: path.to_string(),
        why: e.to_string(),
    })?;
    if !v.is_object() {
        return Err(ConfigFileError::Kind {
            path: path.to_string(),
            kind: String::new(),
            api_version: String::new(),
        });
    }
    v["authentication"]["x509"]["clientCAFile"] = Value::from(ca_file.display().to_string());
    Ok(serde_json::to_string_pretty(&v).unwrap_or_default())
}

/// Calls `f` with the JSON pointer of every leaf of `v` (empty maps and lists are
/// leaves).
fn leaves(v: &Value, at: String, f: &mut dyn FnMut(String)) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                leaves(x, format!("{at}/{k}"), f);
            }
        }
        _ => f(at),
    }
}

/// `kernlet run|join … --config FILE …` with the file's settings inserted as flags
/// after the subcommand, except those the command line gives itself; returns the new
/// arguments and the file's fields kernlet does not implement. Other commands, and
/// commands without `--config`, are returned as they are.
pub fn expand(args: Vec<String>) -> Result<(Vec<String>, Vec<String>), ConfigFileError> {
    if !matches!(args.get(1).map(String::as_str), Some("run" | "join")) {
        return Ok((args, Vec::new()));
    }
    let mut rest = Vec::new();
    let mut file = None;
    let mut it = args.into_iter();
    let program: Vec<String> = it.by_ref().take(2).collect();
    while let Some(a) = it.next() {
        if a == "--config" {
            file = Some(it.next().ok_or(ConfigFileError::Missing)?);
        } else if let Some(f) = a.strip_prefix("--config=") {
            file = Some(f.to_string());
        } else {
            rest.push(a);
        }
    }
    let Some(path) = file else {
        return Ok((program.into_iter().chain(rest).collect(), Vec::new()));
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigFileError::Read {
        path: path.clone(),
        source,
    })?;
    let (flags, ignored) = translate(&path, &text)?;
    let given = |flag: &str| {
        rest.iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
    };
    let mut out = program;
    for (flag, value) in flags {
        if given(&flag) {
            continue;
        }
        match value {
            Some(v) => out.push(format!("{flag}={v}")),
            None => out.push(flag),
        }
    }
    out.extend(rest);
    Ok((out, ignored))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBEADM: &str = r#"
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous:
    enabled: false
  webhook:
    cacheTTL: 0s
    enabled: true
  x509:
    clientCAFile: /etc/kubernetes/pki/ca.crt
authorization:
  mode: Webhook
cgroupDriver: systemd
clusterDNS:
- 10.96.0.10
clusterDomain: cluster.local
containerRuntimeEndpoint: ""
evictionHard:
  memory.available: 200Mi
  nodefs.available: 5%
maxPods: 50
nodeStatusUpdateFrequency: 20s
rotateCertificates: true
seccompDefault: true
staticPodPath: /etc/kubernetes/manifests
registerWithTaints:
- key: dedicated
  value: gpu
  effect: NoSchedule
"#;

    #[test]
    fn a_kubeadm_config_becomes_flags_and_names_what_kernlet_lacks() {
        let (flags, ignored) = translate("c.yaml", KUBEADM).unwrap();
        let get = |f: &str| {
            flags
                .iter()
                .find(|(x, _)| x == f)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("{f} in {flags:?}"))
        };
        assert_eq!(get("--max-pods").as_deref(), Some("50"));
        assert_eq!(
            get("--eviction-hard").as_deref(),
            Some("memory.available<200Mi,nodefs.available<5%")
        );
        assert_eq!(get("--cluster-dns").as_deref(), Some("10.96.0.10"));
        assert_eq!(get("--node-status-update-frequency").as_deref(), Some("20"));
        assert_eq!(get("--anonymous-auth").as_deref(), Some("false"));
        assert_eq!(
            get("--client-ca-file").as_deref(),
            Some("/etc/kubernetes/pki/ca.crt")
        );
        assert_eq!(
            get("--register-with-taints").as_deref(),
            Some("dedicated=gpu:NoSchedule")
        );
        assert_eq!(get("--seccomp-default"), None);
        assert_eq!(
            ignored,
            ["cgroupDriver", "containerRuntimeEndpoint", "staticPodPath"]
        );
        assert!(matches!(
            translate("c.yaml", "kind: Pod\napiVersion: v1\n"),
            Err(ConfigFileError::Kind { .. })
        ));
        let bad = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nsyncFrequency: soon\n";
        assert!(
            translate("c.yaml", bad)
                .unwrap_err()
                .to_string()
                .contains("field syncFrequency")
        );
    }

    #[test]
    fn eviction_shutdown_and_memory_fields_become_flags() {
        let yaml = r#"
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
evictionSoft: {memory.available: 1Gi}
evictionSoftGracePeriod: {memory.available: 1m30s}
evictionMinimumReclaim: {nodefs.available: 500Mi}
evictionMaxPodGracePeriod: 60
shutdownGracePeriod: 30s
shutdownGracePeriodCriticalPods: 10s
shutdownGracePeriodByPodPriority:
- {priority: 0, shutdownGracePeriodSeconds: 20}
- {priority: 2000000000, shutdownGracePeriodSeconds: 10}
featureGates: {MemoryQoS: true}
memoryThrottlingFactor: 0.8
memorySwap: {swapBehavior: LimitedSwap}
"#;
        let (flags, ignored) = translate("c.yaml", yaml).unwrap();
        let get = |f: &str| {
            flags
                .iter()
                .find(|(x, _)| x == f)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("{f} in {flags:?}"))
        };
        assert_eq!(
            get("--eviction-soft").as_deref(),
            Some("memory.available<1Gi")
        );
        assert_eq!(
            get("--eviction-soft-grace-period").as_deref(),
            Some("memory.available=1m30s")
        );
        assert_eq!(
            get("--eviction-minimum-reclaim").as_deref(),
            Some("nodefs.available=500Mi")
        );
        assert_eq!(
            get("--eviction-max-pod-grace-period").as_deref(),
            Some("60")
        );
        assert_eq!(get("--shutdown-grace-period").as_deref(), Some("30s"));
        assert_eq!(
            get("--shutdown-grace-period-by-pod-priority").as_deref(),
            Some("0=20,2000000000=10")
        );
        assert_eq!(get("--memory-qos"), None);
        assert_eq!(get("--memory-throttling-factor").as_deref(), Some("0.8"));
        assert_eq!(
            get("--memory-swap-behavior").as_deref(),
            Some("LimitedSwap")
        );
        assert!(ignored.is_empty(), "{ignored:?}");
    }

    #[test]
    fn a_joined_node_keeps_the_clusters_config_with_its_own_ca() {
        let text =
            for_joined_node(KUBEADM, std::path::Path::new("/var/lib/kernlet/pki/ca.crt")).unwrap();
        let (flags, _) = translate("config.yaml", &text).unwrap();
        assert!(flags.contains(&(
            "--client-ca-file".into(),
            Some("/var/lib/kernlet/pki/ca.crt".into())
        )));
        assert!(flags.contains(&("--max-pods".into(), Some("50".into()))));
        assert!(for_joined_node("- a list", std::path::Path::new("x")).is_err());
    }

    #[test]
    fn flags_on_the_command_line_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, KUBEADM).unwrap();
        let args: Vec<String> = [
            "kernlet",
            "run",
            "--max-pods=9",
            "--config",
            path.to_str().unwrap(),
            "--kubeconfig",
            "k",
        ]
        .map(String::from)
        .to_vec();
        let (out, ignored) = expand(args).unwrap();
        assert!(out.contains(&"--max-pods=9".to_string()));
        assert!(!out.iter().any(|a| a == "--max-pods=50"));
        assert!(out.contains(&"--cluster-domain=cluster.local".to_string()));
        assert!(out.contains(&"--seccomp-default".to_string()));
        assert!(!out.iter().any(|a| a.contains("c.yaml")));
        assert_eq!(&out[..2], ["kernlet", "run"]);
        assert_eq!(ignored.len(), 3);
        let other: Vec<String> = ["kernlet", "pods", "--config", "x"]
            .map(String::from)
            .to_vec();
        assert_eq!(expand(other.clone()).unwrap().0, other);
    }
}

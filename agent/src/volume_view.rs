//! A pod's volumes as `kernlet inspect` and `kernlet explain` show them: each volume's
//! source (for a claim: the claim, its PersistentVolume, the plugin and the path on
//! the node, as set up), and where each container mounts it.

use std::path::Path;

use serde_json::{Value, json};

/// The kinds of volume source a pod spec can name, in the order they are looked for.
const KINDS: &[&str] = &[
    "persistentVolumeClaim",
    "ephemeral",
    "emptyDir",
    "hostPath",
    "configMap",
    "secret",
    "downwardAPI",
    "projected",
    "image",
    "csi",
    "nfs",
];

/// The volumes of the recorded pod `pod` (its JSON) with uid `uid`.
pub fn describe(state_dir: &Path, uid: &str, pod: &Value) -> Value {
    let claimed = crate::runtime::claimed_volumes::claimed_in(state_dir, uid);
    let containers: Vec<&Value> = ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| pod["spec"][k].as_array().into_iter().flatten())
        .collect();
    let vols = pod["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    json!(
        vols.iter()
            .map(|v| {
                let name = v["name"].as_str().unwrap_or_default();
                let kind = KINDS
                    .iter()
                    .find(|k| v.get(**k).is_some())
                    .copied()
                    .unwrap_or("other");
                let mut out = json!({"name": name, "kind": kind});
                match kind {
                    "hostPath" => out["path"] = v["hostPath"]["path"].clone(),
                    "persistentVolumeClaim" | "ephemeral" | "csi" => {
                        out["setUp"] = json!(false);
                        if let Some(m) = claimed.iter().find(|m| m.volume == name && m.ready) {
                            out["setUp"] = json!(true);
                            if !m.claim.is_empty() {
                                out["claim"] = json!(format!("{}/{}", m.namespace, m.claim));
                            }
                            out["persistentVolume"] = json!(m.pv);
                            out["plugin"] = json!(m.plugin.name());
                            out["path"] = json!(m.path);
                            out["mode"] = json!(if m.block { "Block" } else { "Filesystem" });
                            out["readOnly"] = json!(m.read_only);
                        }
                    }
                    _ => {}
                }
                let mounts: Vec<String> = containers
                    .iter()
                    .flat_map(|c| {
                        let cname = c["name"].as_str().unwrap_or_default().to_string();
                        let at = |list: &str, key: &str| -> Vec<String> {
                            c[list]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter(|m| m["name"] == name)
                                .map(|m| format!("{cname}:{}", m[key].as_str().unwrap_or_default()))
                                .collect()
                        };
                        let mut all = at("volumeMounts", "mountPath");
                        all.extend(at("volumeDevices", "devicePath"));
                        all
                    })
                    .collect();
                out["mountedAt"] = json!(mounts);
                out
            })
            .collect::<Vec<_>>()
    )
}

/// One line per volume: `name (kind) source → container:path, …`.
pub fn lines(volumes: &Value) -> Vec<String> {
    volumes
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            let s = |k: &str| v[k].as_str().unwrap_or("-").to_string();
            let source = match s("kind").as_str() {
                "persistentVolumeClaim" | "ephemeral" if v["setUp"] == true => format!(
                    "claim {} → PV {} ({}, {}) at {}{}",
                    s("claim"),
                    s("persistentVolume"),
                    s("plugin"),
                    s("mode"),
                    s("path"),
                    if v["readOnly"] == true {
                        ", read-only"
                    } else {
                        ""
                    }
                ),
                "csi" if v["setUp"] == true => format!(
                    "inline volume ({}) at {}{}",
                    s("plugin"),
                    s("path"),
                    if v["readOnly"] == true {
                        ", read-only"
                    } else {
                        ""
                    }
                ),
                "persistentVolumeClaim" | "ephemeral" | "csi" => "not set up yet".into(),
                "hostPath" => format!("host path {}", s("path")),
                _ => String::new(),
            };
            let mounts: Vec<String> = v["mountedAt"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m.as_str().map(str::to_string))
                .collect();
            let mut line = format!("volume {} ({})", s("name"), s("kind"));
            if !source.is_empty() {
                line.push(' ');
                line.push_str(&source);
            }
            let mounted = if mounts.is_empty() {
                "not mounted".to_string()
            } else {
                mounts.join(", ")
            };
            format!("{line} → {mounted}")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_is_shown_with_its_volume_plugin_path_and_mounts() {
        let dir = tempfile::tempdir().unwrap();
        let m = crate::model::claims::Mountable {
            volume: "data".into(),
            claim: "data-db-0".into(),
            namespace: "t".into(),
            pv: "pv-1".into(),
            plugin: crate::model::claims::Plugin::Local,
            path: "/mnt/disks/a".into(),
            block: false,
            read_only: false,
            owned_by_fs_group: true,
            ready: true,
        };
        let rec = dir.path().join("pods/u1/volumes/claims");
        std::fs::create_dir_all(&rec).unwrap();
        std::fs::write(rec.join("data.json"), serde_json::to_vec(&m).unwrap()).unwrap();
        let pod = json!({"spec": {
            "containers": [{"name": "db", "volumeMounts": [{"name": "data", "mountPath": "/var/lib/db"}]}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data-db-0"}},
                        {"name": "tmp", "emptyDir": {}},
                        {"name": "later", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}}]}});
        let v = describe(dir.path(), "u1", &pod);
        assert_eq!(
            lines(&v),
            [
                "volume data (persistentVolumeClaim) claim t/data-db-0 → PV pv-1 (kubernetes.io/local-volume, Filesystem) at /mnt/disks/a → db:/var/lib/db",
                "volume tmp (emptyDir) → not mounted",
                "volume later (ephemeral) not set up yet → not mounted",
            ]
        );
    }
}

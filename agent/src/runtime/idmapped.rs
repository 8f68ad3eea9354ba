//! The files of a `hostUsers: false` container, seen through idmapped mounts: each
//! bind mount of its `config.json` (volumes, `/etc/hosts`, `/dev/shm`, …) is given
//! from a view the shim makes in the bundle (`idmap/<n>`), mapped by the pod's user
//! namespace, so a file owned by node ID `n` shows as owned by container ID `n` and
//! what the container's root writes there is stored as owned by root — as kubelet's
//! runtimes (containerd 2, CRI-O) mount a user-namespaced pod's volumes. The image's
//! layers are idmapped the same way below the container's overlay (see
//! [`super::shim`]); its upper layer belongs to the node ID of the container's root.
//!
//! The container's processes run as node IDs without rights on the node's root-only
//! directories, so everything the runtime resolves for them lies in the bundle,
//! which others may cross (mode 0711) but not list.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What the shim idmaps before it starts a user-namespaced container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdmapRequest {
    /// The pod's user namespace (its pin).
    pub userns: PathBuf,
    /// `(node path, view in the bundle)` of every bind mount.
    pub mounts: Vec<(PathBuf, PathBuf)>,
}

/// Points the bind mounts of `config` at views in `bundle` and says which node path
/// each view shows. Sources in `skip` (image volumes, mounted from idmapped layers
/// already) are left as they are.
pub fn stage(config: &mut Value, bundle: &Path, userns: &Path, skip: &[PathBuf]) -> IdmapRequest {
    let mut mounts = Vec::new();
    for m in config["mounts"].as_array_mut().into_iter().flatten() {
        if m["type"] != "bind" {
            continue;
        }
        let Some(source) = m["source"].as_str().map(PathBuf::from) else {
            continue;
        };
        if skip.iter().any(|s| source.starts_with(s)) {
            continue;
        }
        let view = bundle.join("idmap").join(mounts.len().to_string());
        m["source"] = Value::String(view.display().to_string());
        mounts.push((source, view));
    }
    IdmapRequest {
        userns: userns.to_path_buf(),
        mounts,
    }
}

/// Makes `bundle` (and the directory of bundles) crossable by the container's node
/// IDs, and gives the container's writable layer to the node ID of its root.
pub fn prepare(bundle: &Path, upper: &Path, work: &Path, root_id: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(bundle, std::fs::Permissions::from_mode(0o711))?;
    let id = Some(root_id);
    std::os::unix::fs::chown(upper, id, id)?;
    std::os::unix::fs::chown(work, id, id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_bind_mount_but_image_volumes_is_given_from_a_view_in_the_bundle() {
        let mut config = json!({"mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev/shm", "type": "bind", "source": "/run/k/pods/u/shm"},
            {"destination": "/data", "type": "bind", "source": "/var/k/pods/u/volumes/data"},
            {"destination": "/img", "type": "bind", "source": "/var/k/pods/u/volumes/images/i"},
        ]});
        let req = stage(
            &mut config,
            Path::new("/run/k/bundles/c1"),
            Path::new("/run/k/pods/u/ns/user"),
            &[PathBuf::from("/var/k/pods/u/volumes/images")],
        );
        assert_eq!(
            req.mounts,
            [
                (
                    "/run/k/pods/u/shm".into(),
                    "/run/k/bundles/c1/idmap/0".into()
                ),
                (
                    "/var/k/pods/u/volumes/data".into(),
                    "/run/k/bundles/c1/idmap/1".into()
                ),
            ]
        );
        assert_eq!(config["mounts"][0]["source"], "proc");
        assert_eq!(config["mounts"][1]["source"], "/run/k/bundles/c1/idmap/0");
        assert_eq!(config["mounts"][2]["source"], "/run/k/bundles/c1/idmap/1");
        assert_eq!(
            config["mounts"][3]["source"],
            "/var/k/pods/u/volumes/images/i"
        );
    }
}

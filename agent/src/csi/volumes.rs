//! A pod's CSI volume on the node, as kubelet's CSI plugin drives it: the driver's
//! `CSIDriver` object read (`attachRequired`, `podInfoOnMount`), the attachment waited
//! for when one is required (the VolumeAttachment the attach-detach controller makes,
//! its `attachmentMetadata` passed as the publish context), the secrets of the PV's
//! `nodeStageSecretRef`/`nodePublishSecretRef` read, then `NodeStageVolume` at
//! `<kubelet-dir>/plugins/kubernetes.io/csi/<driver>/<sha256(handle)>/globalmount` (for
//! drivers with STAGE_UNSTAGE_VOLUME) and `NodePublishVolume` at
//! `<kubelet-dir>/pods/<uid>/volumes/kubernetes.io~csi/<pv>/mount`, kubelet's
//! `vol_data.json` beside it. A raw block volume (`volumeMode: Block`) is staged at
//! `<kubelet-dir>/plugins/kubernetes.io/csi/volumeDevices/staging/<pv>` and published
//! as a device file at `.../volumeDevices/publish/<pv>/<uid>` (its `vol_data.json` in
//! `.../volumeDevices/<pv>/data`), which the container gets at its `devicePath`. When
//! the pod goes: `NodeUnpublishVolume`, and
//! `NodeUnstageVolume` once no other pod of the node uses the volume.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::storage::v1::{CSIDriver, VolumeAttachment};
use kube::api::Api;

use super::proto::csi::node_client::NodeClient;
use super::proto::csi::volume_capability::{
    AccessMode, AccessType, BlockVolume, MountVolume, access_mode,
};
use super::proto::csi::{
    NodePublishVolumeRequest, NodeStageVolumeRequest, NodeUnpublishVolumeRequest,
    NodeUnstageVolumeRequest, VolumeCapability,
};
use super::{CsiError, Drivers, channel, rpc, sha256_hex};
use crate::client::SharedClient;
use crate::model::claims::{CsiSource, Mountable, Plugin};

/// kubelet's timeout of a CSI node call.
const CSI_TIMEOUT_SECS: u64 = 120;

/// The node's CSI: its drivers and where kubelet's paths are.
#[derive(Clone)]
pub struct Csi {
    pub drivers: Drivers,
    pub kubelet_dir: PathBuf,
    pub state_dir: PathBuf,
    pub node: String,
    pub client: SharedClient,
    pub handle: tokio::runtime::Handle,
    /// Held by a teardown and by each statistics call: the driver is never asked for
    /// the statistics of a volume being (or just) unpublished.
    pub teardowns: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Csi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Csi")
            .field("drivers", &self.drivers)
            .field("kubelet_dir", &self.kubelet_dir)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// Where kubelet stages a driver's volume.
pub fn staging_path(kubelet_dir: &Path, driver: &str, handle: &str) -> PathBuf {
    kubelet_dir
        .join("plugins/kubernetes.io/csi")
        .join(driver)
        .join(sha256_hex(handle))
        .join("globalmount")
}

/// Where kubelet publishes a pod's CSI volume.
pub fn target_path(kubelet_dir: &Path, uid: &str, pv: &str) -> PathBuf {
    kubelet_dir
        .join("pods")
        .join(uid)
        .join("volumes/kubernetes.io~csi")
        .join(pv)
        .join("mount")
}

/// Where kubelet keeps a raw block CSI volume's files: `staging/<pv>`,
/// `publish/<pv>/<uid>` and `<pv>/data`.
fn block_dir(kubelet_dir: &Path) -> PathBuf {
    kubelet_dir.join("plugins/kubernetes.io/csi/volumeDevices")
}

/// Where kubelet stages a raw block volume.
pub fn block_staging_path(kubelet_dir: &Path, pv: &str) -> PathBuf {
    block_dir(kubelet_dir).join("staging").join(pv)
}

/// Where kubelet has the driver publish a pod's raw block volume (a device file).
pub fn block_publish_path(kubelet_dir: &Path, uid: &str, pv: &str) -> PathBuf {
    block_dir(kubelet_dir).join("publish").join(pv).join(uid)
}

/// Where a pod's volume is published: a directory for a filesystem volume, a device
/// file for a raw block one.
pub fn publish_path(kubelet_dir: &Path, uid: &str, pv: &str, block: bool) -> PathBuf {
    if block {
        block_publish_path(kubelet_dir, uid, pv)
    } else {
        target_path(kubelet_dir, uid, pv)
    }
}

/// Where kubelet writes a volume's `vol_data.json`.
fn vol_data_path(kubelet_dir: &Path, m: &Mountable) -> PathBuf {
    if m.block {
        block_dir(kubelet_dir)
            .join(&m.pv)
            .join("data/vol_data.json")
    } else {
        m.path.parent().unwrap_or(&m.path).join("vol_data.json")
    }
}

/// The VolumeAttachment name kubelet and the attach-detach controller agree on.
pub fn attachment_name(handle: &str, driver: &str, node: &str) -> String {
    format!("csi-{}", sha256_hex(&format!("{handle}{driver}{node}")))
}

/// The capability kubelet asks for: the PV's first access mode, mounted with its
/// fsType and mountOptions — or, for a raw block volume, as a block device.
pub fn capability(s: &CsiSource, block: bool) -> VolumeCapability {
    let mode = match s.access_modes.first().map(String::as_str) {
        Some("ReadOnlyMany") => access_mode::Mode::MultiNodeReaderOnly,
        Some("ReadWriteMany") => access_mode::Mode::MultiNodeMultiWriter,
        _ => access_mode::Mode::SingleNodeWriter,
    };
    let access_type = if block {
        AccessType::Block(BlockVolume {})
    } else {
        AccessType::Mount(MountVolume {
            fs_type: s.fs_type.clone(),
            mount_flags: s.mount_options.clone(),
            volume_mount_group: String::new(),
        })
    };
    VolumeCapability {
        access_type: Some(access_type),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

/// Whether the driver attaches the volume before the node may use it (its CSIDriver's
/// `attachRequired`, true without one; never for an inline volume).
pub fn attach_required(
    policy: &k8s_openapi::api::storage::v1::CSIDriverSpec,
    s: &CsiSource,
) -> bool {
    policy.attach_required.unwrap_or(true) && !s.inline
}

/// Whether kubelet applies the pod's fsGroup to a published CSI volume, by the
/// driver's `fsGroupPolicy`: `File` always, `None` never, and the default
/// `ReadWriteOnceWithFSType` when the volume has an fsType and is ReadWriteOnce.
pub fn fs_group_applies(policy: Option<&str>, s: &CsiSource) -> bool {
    match policy.unwrap_or("ReadWriteOnceWithFSType") {
        "File" => true,
        "None" => false,
        _ => {
            !s.fs_type.is_empty()
                && !s.access_modes.is_empty()
                && s.access_modes.iter().all(|m| m == "ReadWriteOnce")
        }
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CsiError {
    let path = path.to_path_buf();
    move |source| CsiError::Io { what, path, source }
}

impl Csi {
    /// Where the driver stages the volume `m` (of source `s`) on this node, if it
    /// stages it at all: drivers with STAGE_UNSTAGE_VOLUME, never for an inline volume.
    pub fn staging_of(
        &self,
        driver: &super::Driver,
        s: &CsiSource,
        m: &Mountable,
    ) -> Option<PathBuf> {
        (driver.stage_unstage && !s.inline).then(|| {
            if m.block {
                block_staging_path(&self.kubelet_dir, &m.pv)
            } else {
                staging_path(&self.kubelet_dir, &s.driver, &s.handle)
            }
        })
    }

    /// A secret's data as the driver gets it.
    async fn secret(
        &self,
        r: &Option<(String, String)>,
    ) -> Result<BTreeMap<String, String>, CsiError> {
        let Some((ns, name)) = r else {
            return Ok(BTreeMap::new());
        };
        let api: Api<Secret> = Api::namespaced(self.client.get(), ns);
        let s = api.get(name).await.map_err(|source| CsiError::Api {
            what: format!("secret {ns}/{name}"),
            source,
        })?;
        Ok(s.data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
            .collect())
    }

    /// The driver's CSIDriver spec (kubelet's defaults when it has none:
    /// `attachRequired` true, `podInfoOnMount` false, Persistent volumes only).
    pub async fn driver_policy(
        &self,
        driver: &str,
    ) -> Result<k8s_openapi::api::storage::v1::CSIDriverSpec, CsiError> {
        let api: Api<CSIDriver> = Api::all(self.client.get());
        let d = api.get_opt(driver).await.map_err(|source| CsiError::Api {
            what: format!("CSIDriver {driver}"),
            source,
        })?;
        Ok(d.map(|d| d.spec).unwrap_or_default())
    }

    /// The publish context of an attached volume, or why it is not attached yet.
    async fn attachment(&self, s: &CsiSource) -> Result<BTreeMap<String, String>, CsiError> {
        let name = attachment_name(&s.handle, &s.driver, &self.node);
        let api: Api<VolumeAttachment> = Api::all(self.client.get());
        let va = match api.get_opt(&name).await {
            Ok(va) => va,
            // The Node authorizer lets a node read an attachment only once it names the
            // node: before the attach-detach controller made it, a read is forbidden.
            Err(kube::Error::Api(e)) if e.code == 403 => None,
            Err(source) => {
                return Err(CsiError::Api {
                    what: format!("VolumeAttachment {name}"),
                    source,
                });
            }
        };
        match va.and_then(|v| v.status) {
            Some(st) if st.attached => Ok(st.attachment_metadata.unwrap_or_default()),
            _ => Err(CsiError::NotAttached {
                driver: s.driver.clone(),
                handle: s.handle.clone(),
                attachment: name,
            }),
        }
    }

    /// Stages (when the driver does) and publishes the pod's volume at `m.path` — the
    /// publish path ([`target_path`]) the caller recorded before — and says whether
    /// the pod's fsGroup applies to it.
    pub async fn publish(&self, pod: &Pod, m: &mut Mountable) -> Result<(), CsiError> {
        let Plugin::Csi(s) = &m.plugin else {
            return Ok(());
        };
        let driver = self
            .drivers
            .get(&s.driver)
            .ok_or_else(|| CsiError::NotRegistered(s.driver.clone()))?;
        let policy = self.driver_policy(&s.driver).await?;
        let modes = policy
            .volume_lifecycle_modes
            .clone()
            .unwrap_or_else(|| vec!["Persistent".into()]);
        let mode = if s.inline { "Ephemeral" } else { "Persistent" };
        if !modes.iter().any(|m| m == mode) {
            return Err(CsiError::LifecycleMode {
                mode,
                driver: s.driver.clone(),
                modes,
            });
        }
        // Inline volumes are neither attached nor staged.
        let attach_required = attach_required(&policy, s);
        let pod_info = policy.pod_info_on_mount.unwrap_or(false);
        let publish_context = if attach_required {
            self.attachment(s).await?
        } else {
            BTreeMap::new()
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let mut node = NodeClient::new(channel(&driver.endpoint).await?);
        let staging = self.staging_of(&driver, s, m);
        if let Some(staging) = &staging {
            std::fs::create_dir_all(staging).map_err(io("creating the staging path", staging))?;
            let req = NodeStageVolumeRequest {
                volume_id: s.handle.clone(),
                publish_context: publish_context.clone().into_iter().collect(),
                staging_target_path: staging.display().to_string(),
                volume_capability: Some(capability(s, m.block)),
                secrets: self.secret(&s.stage_secret).await?.into_iter().collect(),
                volume_context: s.attributes.clone().into_iter().collect(),
            };
            rpc(
                "NodeStageVolume",
                CSI_TIMEOUT_SECS,
                node.node_stage_volume(req),
            )
            .await?;
        }
        // The caller chose the publish path (and recorded it) before.
        let target = m.path.clone();
        let parent = target.parent().unwrap_or(&target).to_path_buf();
        std::fs::create_dir_all(&parent)
            .map_err(io("creating the publish path's parent", &parent))?;
        let vol_data = serde_json::json!({
            "driverName": s.driver, "volumeHandle": s.handle, "specVolID": m.pv,
            "nodeName": self.node, "volumeLifecycleMode": mode,
            "attachmentID": if attach_required { attachment_name(&s.handle, &s.driver, &self.node) } else { String::new() },
        });
        let vol_data_path = vol_data_path(&self.kubelet_dir, m);
        if let Some(dir) = vol_data_path.parent() {
            std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        }
        std::fs::write(&vol_data_path, vol_data.to_string())
            .map_err(io("writing", &vol_data_path))?;
        let mut context: BTreeMap<String, String> = s.attributes.clone();
        if pod_info {
            let sa = pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into());
            for (k, v) in [
                (
                    "csi.storage.k8s.io/pod.name",
                    pod.metadata.name.clone().unwrap_or_default(),
                ),
                (
                    "csi.storage.k8s.io/pod.namespace",
                    pod.metadata.namespace.clone().unwrap_or_default(),
                ),
                ("csi.storage.k8s.io/pod.uid", uid.clone()),
                ("csi.storage.k8s.io/serviceAccount.name", sa),
                ("csi.storage.k8s.io/ephemeral", s.inline.to_string()),
            ] {
                context.insert(k.into(), v);
            }
        }
        let req = NodePublishVolumeRequest {
            volume_id: s.handle.clone(),
            publish_context: publish_context.into_iter().collect(),
            staging_target_path: staging.map(|p| p.display().to_string()).unwrap_or_default(),
            target_path: target.display().to_string(),
            volume_capability: Some(capability(s, m.block)),
            readonly: m.read_only,
            secrets: self.secret(&s.publish_secret).await?.into_iter().collect(),
            volume_context: context.into_iter().collect(),
        };
        rpc(
            "NodePublishVolume",
            CSI_TIMEOUT_SECS,
            node.node_publish_volume(req),
        )
        .await?;
        // A raw block volume has no files to own.
        m.owned_by_fs_group = !m.block && fs_group_applies(policy.fs_group_policy.as_deref(), s);
        Ok(())
    }

    /// Whether another pod of the node has the driver's volume set up.
    fn used_elsewhere(&self, uid: &str, s: &CsiSource) -> bool {
        std::fs::read_dir(self.state_dir.join("pods"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy() != uid)
            .flat_map(|e| {
                crate::runtime::claimed_volumes::claimed_in(
                    &self.state_dir,
                    &e.file_name().to_string_lossy(),
                )
            })
            .any(|o| matches!(&o.plugin, Plugin::Csi(x) if x.driver == s.driver && x.handle == s.handle))
    }

    /// Unpublishes the pod's volume and, when no other pod uses it, unstages it.
    pub async fn unpublish(&self, uid: &str, m: &Mountable) -> Result<(), CsiError> {
        let Plugin::Csi(s) = &m.plugin else {
            return Ok(());
        };
        let driver = self
            .drivers
            .get(&s.driver)
            .ok_or_else(|| CsiError::NotRegistered(s.driver.clone()))?;
        let _teardown = self.teardowns.lock().await;
        let mut node = NodeClient::new(channel(&driver.endpoint).await?);
        let target = &m.path;
        let req = NodeUnpublishVolumeRequest {
            volume_id: s.handle.clone(),
            target_path: target.display().to_string(),
        };
        rpc(
            "NodeUnpublishVolume",
            CSI_TIMEOUT_SECS,
            node.node_unpublish_volume(req),
        )
        .await?;
        // The driver removed what it made at the target; the rest is kubelet's.
        if m.block {
            let _ = std::fs::remove_file(target);
        } else {
            let _ = std::fs::remove_dir(target);
        }
        let vol_data = vol_data_path(&self.kubelet_dir, m);
        let _ = std::fs::remove_file(&vol_data);
        for dir in [
            target.parent(),
            vol_data.parent(),
            vol_data.parent().and_then(Path::parent),
        ]
        .into_iter()
        .flatten()
        {
            // Only when empty: another pod's block volume may share the directory.
            let _ = std::fs::remove_dir(dir);
        }
        if let Some(staging) = self.staging_of(&driver, s, m)
            && !self.used_elsewhere(uid, s)
        {
            let req = NodeUnstageVolumeRequest {
                volume_id: s.handle.clone(),
                staging_target_path: staging.display().to_string(),
            };
            rpc(
                "NodeUnstageVolume",
                CSI_TIMEOUT_SECS,
                node.node_unstage_volume(req),
            )
            .await?;
            let _ = std::fs::remove_dir(&staging);
            if !m.block
                && let Some(p) = staging.parent()
            {
                let _ = std::fs::remove_dir(p);
            }
        }
        Ok(())
    }
}

impl crate::runtime::claimed_volumes::DriverVolumes for Csi {
    fn tear_down(&self, uid: &str, m: &Mountable) -> Result<(), String> {
        self.handle
            .block_on(self.unpublish(uid, m))
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_group_follows_the_drivers_policy() {
        let rwo = |fs: &str| CsiSource {
            fs_type: fs.into(),
            access_modes: vec!["ReadWriteOnce".into()],
            ..Default::default()
        };
        assert!(fs_group_applies(None, &rwo("ext4")));
        assert!(!fs_group_applies(None, &rwo("")));
        let rwx = CsiSource {
            fs_type: "ext4".into(),
            access_modes: vec!["ReadWriteMany".into()],
            ..Default::default()
        };
        assert!(!fs_group_applies(None, &rwx));
        assert!(fs_group_applies(Some("File"), &rwx));
        assert!(!fs_group_applies(Some("None"), &rwo("ext4")));
    }

    #[test]
    fn paths_are_kubelets() {
        let k = Path::new("/var/lib/kubelet");
        assert_eq!(
            staging_path(k, "csi.example.com", "vol-1"),
            PathBuf::from(format!(
                "/var/lib/kubelet/plugins/kubernetes.io/csi/csi.example.com/{}/globalmount",
                sha256_hex("vol-1")
            ))
        );
        assert_eq!(
            target_path(k, "u1", "pv-1"),
            PathBuf::from("/var/lib/kubelet/pods/u1/volumes/kubernetes.io~csi/pv-1/mount")
        );
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(attachment_name("h", "d", "n").starts_with("csi-"));
        assert_eq!(
            block_staging_path(k, "pv-1"),
            PathBuf::from("/var/lib/kubelet/plugins/kubernetes.io/csi/volumeDevices/staging/pv-1")
        );
        assert_eq!(
            publish_path(k, "u1", "pv-1", true),
            PathBuf::from(
                "/var/lib/kubelet/plugins/kubernetes.io/csi/volumeDevices/publish/pv-1/u1"
            )
        );
        let m = Mountable {
            volume: "data".into(),
            claim: "c".into(),
            namespace: "default".into(),
            pv: "pv-1".into(),
            plugin: Plugin::Csi(Box::default()),
            path: block_publish_path(k, "u1", "pv-1"),
            block: true,
            read_only: false,
            owned_by_fs_group: false,
            ready: true,
        };
        assert_eq!(
            vol_data_path(k, &m),
            PathBuf::from(
                "/var/lib/kubelet/plugins/kubernetes.io/csi/volumeDevices/pv-1/data/vol_data.json"
            )
        );
    }
}

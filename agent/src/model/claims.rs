//! A pod's persistent volumes as kubelet's volume manager resolves them: the claim a
//! volume names (a `persistentVolumeClaim`, or the claim a generic `ephemeral` volume
//! gets from the ephemeral-volume controller), the checks on the claim and on the
//! PersistentVolume bound to it, and the in-tree plugin that mounts it. Messages are
//! kubelet's, so `kubectl describe pod` reads the same on a kernlet node.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Volume};

use super::admission::NodeFit;

/// Why a claimed volume cannot be mounted (yet): the pod waits with this reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error("error processing PVC {ns}/{name}: failed to fetch PVC from API server: {why}")]
    ClaimFetch {
        ns: String,
        name: String,
        why: String,
    },
    #[error("error processing PVC {ns}/{name}: can't start pod because PVC is being deleted")]
    ClaimDeleting { ns: String, name: String },
    #[error("error processing PVC {ns}/{name}: PVC is not bound")]
    NotBound { ns: String, name: String },
    #[error(
        "error processing PVC {ns}/{name}: PVC {ns}/{name} was not created for pod {ns}/{pod} (pod is not owner)"
    )]
    NotForPod {
        ns: String,
        name: String,
        pod: String,
    },
    #[error("error processing PVC {ns}/{name}: failed to fetch PV {pv:?} from API server: {why}")]
    VolumeFetch {
        ns: String,
        name: String,
        pv: String,
        why: String,
    },
    #[error(
        "found PV object {pv:?} but it has a nil pv.Spec.ClaimRef indicating it is not yet bound to the claim"
    )]
    NoClaimRef { pv: String },
    #[error(
        "found PV object {pv:?} but its pv.Spec.ClaimRef.UID ({found:?}) does not point to claim.UID ({want:?})"
    )]
    ClaimRefUid {
        pv: String,
        found: String,
        want: String,
    },
    #[error(
        "MountVolume.NodeAffinity check failed for volume {pv:?} : no matching NodeSelectorTerms"
    )]
    NodeAffinity { pv: String },
    #[error(
        "PV {pv:?}: its volume source ({kind}) is not supported by kernlet yet (hostPath, local and csi are)"
    )]
    Unsupported { pv: String, kind: String },
    #[error("volume {volume:?} has volumeMode Block, but is specified in volumeMounts")]
    BlockInMounts { volume: String },
    #[error("volume {volume:?} has volumeMode Filesystem, but is specified in volumeDevices")]
    FilesystemInDevices { volume: String },
    #[error("PV {pv:?}: {field} {path:?} is not an absolute path")]
    Relative {
        pv: String,
        field: &'static str,
        path: String,
    },
}

/// The claim a pod volume stands for: its name, and whether it is a generic ephemeral
/// volume's (`<pod>-<volume>`, which must be owned by the pod).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimRef {
    pub name: String,
    pub ephemeral: bool,
    /// The pod's `persistentVolumeClaim.readOnly`.
    pub read_only: bool,
}

/// The claim behind `vol`, if it is a persistent or generic ephemeral volume.
pub fn claim_of(pod: &Pod, vol: &Volume) -> Option<ClaimRef> {
    if let Some(c) = &vol.persistent_volume_claim {
        return Some(ClaimRef {
            name: c.claim_name.clone(),
            ephemeral: false,
            read_only: c.read_only.unwrap_or(false),
        });
    }
    vol.ephemeral.as_ref()?;
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    Some(ClaimRef {
        name: format!("{pod_name}-{}", vol.name),
        ephemeral: true,
        read_only: false,
    })
}

/// The PersistentVolume name the claim is bound to, after kubelet's checks: the claim
/// is not being deleted (unless the pod already runs with it), is bound, and for an
/// ephemeral volume is controlled by the pod.
pub fn bound_volume(
    pod: &Pod,
    claim: &ClaimRef,
    pvc: &PersistentVolumeClaim,
    already_mounted: bool,
) -> Result<String, ClaimError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = claim.name.clone();
    if pvc.metadata.deletion_timestamp.is_some() && !already_mounted {
        return Err(ClaimError::ClaimDeleting { ns, name });
    }
    if claim.ephemeral {
        let owner = pvc
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true));
        if owner.map(|o| o.uid.as_str()) != pod.metadata.uid.as_deref() {
            let pod = pod.metadata.name.clone().unwrap_or_default();
            return Err(ClaimError::NotForPod { ns, name, pod });
        }
    }
    let phase = pvc.status.as_ref().and_then(|s| s.phase.as_deref());
    let pv = pvc.spec.as_ref().and_then(|s| s.volume_name.clone());
    match (phase, pv) {
        (Some("Bound"), Some(pv)) if !pv.is_empty() => Ok(pv),
        _ => Err(ClaimError::NotBound { ns, name }),
    }
}

/// The in-tree volume plugins kernlet mounts persistent volumes with.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Plugin {
    /// `kubernetes.io/host-path`: the path with the PV's type check.
    HostPath { kind: String },
    /// `kubernetes.io/local-volume`: a directory (Filesystem) or a block device.
    Local,
    /// `kubernetes.io/csi`: a CSI driver's volume, staged and published by the driver
    /// on the node.
    Csi(Box<CsiSource>),
}

/// What a CSI driver is told about a volume (from the PV's `csi` source).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CsiSource {
    pub driver: String,
    pub handle: String,
    pub fs_type: String,
    pub attributes: std::collections::BTreeMap<String, String>,
    /// The PV's access modes (`ReadWriteOnce`, …).
    pub access_modes: Vec<String>,
    /// The PV's `mountOptions`.
    pub mount_options: Vec<String>,
    /// `nodeStageSecretRef` and `nodePublishSecretRef`: (namespace, name).
    pub stage_secret: Option<(String, String)>,
    pub publish_secret: Option<(String, String)>,
    /// A CSI inline volume of the pod (`volumes[].csi`): published, never staged, its
    /// handle made from the pod and volume.
    #[serde(default)]
    pub inline: bool,
    /// The driver attaches it (`attachRequired`): it is reported in the node's
    /// `volumesInUse` while the pod has it.
    #[serde(default)]
    pub attachable: bool,
}

/// A pod's volumes the node reports in `status.volumesInUse` — attachable CSI volumes,
/// by kubelet's unique name `kubernetes.io/csi/<driver>^<handle>`.
pub fn in_use_name(m: &Mountable) -> Option<String> {
    match &m.plugin {
        Plugin::Csi(s) if s.attachable => {
            Some(format!("kubernetes.io/csi/{}^{}", s.driver, s.handle))
        }
        _ => None,
    }
}

/// A pod's CSI inline volume (`volumes[].csi`) as the node publishes it: kubelet's
/// handle `csi-<sha256(pod uid + volume name)>`, the pod's secret namespace.
pub fn inline_csi(pod: &Pod, vol: &Volume, handle: String) -> Option<Mountable> {
    let csi = vol.csi.as_ref()?;
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let source = CsiSource {
        driver: csi.driver.clone(),
        handle,
        fs_type: csi.fs_type.clone().unwrap_or_default(),
        attributes: csi.volume_attributes.clone().unwrap_or_default(),
        access_modes: vec!["ReadWriteOnce".into()],
        mount_options: Vec::new(),
        stage_secret: None,
        publish_secret: csi
            .node_publish_secret_ref
            .as_ref()
            .map(|r| (ns.clone(), r.name.clone())),
        inline: true,
        attachable: false,
    };
    Some(Mountable {
        volume: vol.name.clone(),
        claim: String::new(),
        namespace: ns,
        pv: vol.name.clone(),
        plugin: Plugin::Csi(Box::new(source)),
        path: PathBuf::new(),
        block: false,
        read_only: csi.read_only.unwrap_or(false),
        owned_by_fs_group: false,
        ready: false,
    })
}

impl Plugin {
    /// kubelet's plugin name, as `kubectl describe` and the metrics show it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::HostPath { .. } => "kubernetes.io/host-path",
            Self::Local => "kubernetes.io/local-volume",
            Self::Csi(_) => "kubernetes.io/csi",
        }
    }
}

/// A claimed volume as the node mounts it: what [`mountable`] resolved, kept with the
/// pod so a restarted agent mounts the same thing without the apiserver.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mountable {
    /// The pod's volume name.
    pub volume: String,
    pub claim: String,
    pub namespace: String,
    pub pv: String,
    pub plugin: Plugin,
    /// The PV's path on the node.
    pub path: PathBuf,
    /// The claim's volume is `volumeMode: Block`.
    pub block: bool,
    /// The pod's `readOnly` or the PV's own.
    pub read_only: bool,
    /// Whether the pod's fsGroup applies (local filesystem volumes; hostPath never,
    /// as kubelet's host-path plugin manages no ownership).
    pub owned_by_fs_group: bool,
    /// Set up and ready for containers; a driver's volume is recorded before the
    /// driver is called, so a pod that goes while it is half set up is torn down too.
    #[serde(default)]
    pub ready: bool,
}

/// The volume mode of a claim (`Filesystem` unless it says `Block`).
fn is_block(pvc: &PersistentVolumeClaim) -> bool {
    pvc.spec.as_ref().and_then(|s| s.volume_mode.as_deref()) == Some("Block")
}

/// The PV bound to `pvc` as the node mounts it, after kubelet's checks: the PV is
/// bound to this claim, its node affinity matches the node, and its plugin is one
/// kernlet has.
pub fn mountable(
    vol: &Volume,
    claim: &ClaimRef,
    pvc: &PersistentVolumeClaim,
    pv: &PersistentVolume,
    node: &NodeFit,
) -> Result<Mountable, ClaimError> {
    let pv_name = pv.metadata.name.clone().unwrap_or_default();
    let spec = pv.spec.clone().unwrap_or_default();
    let Some(claim_ref) = &spec.claim_ref else {
        return Err(ClaimError::NoClaimRef { pv: pv_name });
    };
    let want = pvc.metadata.uid.clone().unwrap_or_default();
    let found = claim_ref.uid.clone().unwrap_or_default();
    if found != want {
        return Err(ClaimError::ClaimRefUid {
            pv: pv_name,
            found,
            want,
        });
    }
    if let Some(required) = spec
        .node_affinity
        .as_ref()
        .and_then(|a| a.required.as_ref())
        && !super::admission::selector_matches(required, node)
    {
        return Err(ClaimError::NodeAffinity { pv: pv_name });
    }
    let (plugin, path, pv_read_only) = if let Some(hp) = &spec.host_path {
        let kind = hp.type_.clone().unwrap_or_default();
        (Plugin::HostPath { kind }, hp.path.clone(), false)
    } else if let Some(local) = &spec.local {
        (Plugin::Local, local.path.clone(), false)
    } else if let Some(csi) = &spec.csi {
        let secret = |r: &Option<k8s_openapi::api::core::v1::SecretReference>| {
            r.as_ref().map(|r| {
                (
                    r.namespace.clone().unwrap_or_default(),
                    r.name.clone().unwrap_or_default(),
                )
            })
        };
        let source = CsiSource {
            driver: csi.driver.clone(),
            handle: csi.volume_handle.clone(),
            fs_type: csi.fs_type.clone().unwrap_or_default(),
            attributes: csi.volume_attributes.clone().unwrap_or_default(),
            access_modes: spec.access_modes.clone().unwrap_or_default(),
            mount_options: spec.mount_options.clone().unwrap_or_default(),
            stage_secret: secret(&csi.node_stage_secret_ref),
            publish_secret: secret(&csi.node_publish_secret_ref),
            inline: false,
            attachable: false,
        };
        // The publish path is the node's, set when the driver publishes it.
        (
            Plugin::Csi(Box::new(source)),
            String::new(),
            csi.read_only.unwrap_or(false),
        )
    } else {
        return Err(ClaimError::Unsupported {
            pv: pv_name,
            kind: source_kind(pv),
        });
    };
    if !path.starts_with('/') && !matches!(plugin, Plugin::Csi(_)) {
        let field = match plugin {
            Plugin::HostPath { .. } => "hostPath.path",
            _ => "local.path",
        };
        return Err(ClaimError::Relative {
            pv: pv_name,
            field,
            path,
        });
    }
    let block = is_block(pvc);
    Ok(Mountable {
        volume: vol.name.clone(),
        claim: claim.name.clone(),
        namespace: pvc.metadata.namespace.clone().unwrap_or_default(),
        pv: pv_name,
        owned_by_fs_group: plugin == Plugin::Local && !block,
        plugin,
        path: PathBuf::from(path),
        block,
        read_only: claim.read_only || pv_read_only,
        ready: false,
    })
}

/// The name of a PV's volume source, for the refusal of one kernlet cannot mount.
fn source_kind(pv: &PersistentVolume) -> String {
    let value = serde_json::to_value(pv.spec.clone().unwrap_or_default()).unwrap_or_default();
    const SOURCES: &[&str] = &[
        "nfs",
        "iscsi",
        "fc",
        "rbd",
        "cephfs",
        "awsElasticBlockStore",
        "gcePersistentDisk",
        "azureDisk",
        "azureFile",
        "cinder",
        "flexVolume",
        "glusterfs",
        "portworxVolume",
        "vsphereVolume",
        "quobyte",
        "scaleIO",
        "storageos",
        "photonPersistentDisk",
        "flocker",
    ];
    SOURCES
        .iter()
        .find(|s| value.get(**s).is_some())
        .map_or_else(|| "none".into(), |s| (*s).to_string())
}

/// Whether a container uses the claim's volume the way its mode allows: a Block
/// volume only through `volumeDevices`, a Filesystem one only through `volumeMounts`.
pub fn check_use(pod: &Pod, m: &Mountable) -> Result<(), ClaimError> {
    let spec = pod.spec.clone().unwrap_or_default();
    let containers = super::pod_lifecycle::all_containers(&spec);
    for c in containers {
        let mounted = c.volume_mounts.iter().flatten().any(|v| v.name == m.volume);
        let device = c
            .volume_devices
            .iter()
            .flatten()
            .any(|v| v.name == m.volume);
        if m.block && mounted {
            return Err(ClaimError::BlockInMounts {
                volume: m.volume.clone(),
            });
        }
        if !m.block && device {
            return Err(ClaimError::FilesystemInDevices {
                volume: m.volume.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db-0", "namespace": "t", "uid": "pod-uid"},
            "spec": {"containers": [{"name": "c", "image": "i",
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                "volumes": [
                    {"name": "data", "persistentVolumeClaim": {"claimName": "data-db-0"}},
                    {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}}
                ]}
        }))
        .unwrap()
    }

    fn pvc(v: serde_json::Value) -> PersistentVolumeClaim {
        serde_json::from_value(v).unwrap()
    }

    fn node() -> NodeFit {
        NodeFit {
            name: "n1".into(),
            allocatable_cpu_milli: 1000,
            allocatable_memory: 1 << 30,
            max_pods: 110,
            labels: crate::model::admission::NodeLabels::new(
                [("kubernetes.io/hostname".to_string(), "n1".to_string())].into(),
            ),
            runtime_handlers: vec![],
            lsm: Default::default(),
            user_namespaces: true,
            pressure: Default::default(),
            shutting_down: Default::default(),
        }
    }

    fn bound_pvc() -> PersistentVolumeClaim {
        pvc(serde_json::json!({
            "metadata": {"name": "data-db-0", "namespace": "t", "uid": "claim-uid"},
            "spec": {"volumeName": "pv-1"},
            "status": {"phase": "Bound"}
        }))
    }

    fn pv(v: serde_json::Value) -> PersistentVolume {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn claims_of_both_kinds_are_named_as_kubelet_names_them() {
        let p = pod();
        let vols = p.spec.as_ref().unwrap().volumes.clone().unwrap();
        let a = claim_of(&p, &vols[0]).unwrap();
        assert_eq!((a.name.as_str(), a.ephemeral), ("data-db-0", false));
        let b = claim_of(&p, &vols[1]).unwrap();
        assert_eq!((b.name.as_str(), b.ephemeral), ("db-0-scratch", true));
    }

    #[test]
    fn a_claim_must_be_bound_alive_and_for_an_ephemeral_volume_the_pods() {
        let p = pod();
        let claim = ClaimRef {
            name: "data-db-0".into(),
            ephemeral: false,
            read_only: false,
        };
        assert_eq!(
            bound_volume(&p, &claim, &bound_pvc(), false).unwrap(),
            "pv-1"
        );
        let pending = pvc(
            serde_json::json!({"metadata": {"name": "data-db-0"}, "status": {"phase": "Pending"}}),
        );
        assert_eq!(
            bound_volume(&p, &claim, &pending, false)
                .unwrap_err()
                .to_string(),
            "error processing PVC t/data-db-0: PVC is not bound"
        );
        let mut deleting = bound_pvc();
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        assert!(matches!(
            bound_volume(&p, &claim, &deleting, false),
            Err(ClaimError::ClaimDeleting { .. })
        ));
        // A pod already running with it keeps it.
        assert!(bound_volume(&p, &claim, &deleting, true).is_ok());
        let eph = ClaimRef {
            name: "db-0-scratch".into(),
            ephemeral: true,
            read_only: false,
        };
        assert!(matches!(
            bound_volume(&p, &eph, &bound_pvc(), false),
            Err(ClaimError::NotForPod { .. })
        ));
        let mut owned = bound_pvc();
        owned.metadata.owner_references = Some(vec![serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "name": "db-0", "uid": "pod-uid", "controller": true
        })).unwrap()]);
        assert!(bound_volume(&p, &eph, &owned, false).is_ok());
    }

    #[test]
    fn the_pv_must_point_back_match_the_node_and_have_a_known_plugin() {
        let p = pod();
        let vol = p.spec.as_ref().unwrap().volumes.clone().unwrap()[0].clone();
        let claim = claim_of(&p, &vol).unwrap();
        let local = |host: &str| {
            pv(serde_json::json!({
                "metadata": {"name": "pv-1"},
                "spec": {"claimRef": {"name": "data-db-0", "namespace": "t", "uid": "claim-uid"},
                    "local": {"path": "/mnt/disks/a"},
                    "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "kubernetes.io/hostname", "operator": "In", "values": [host]}]}]}}}
            }))
        };
        let m = mountable(&vol, &claim, &bound_pvc(), &local("n1"), &node()).unwrap();
        assert_eq!(m.plugin, Plugin::Local);
        assert_eq!(m.path, PathBuf::from("/mnt/disks/a"));
        assert!(m.owned_by_fs_group && !m.block && !m.read_only);
        assert_eq!(
            mountable(&vol, &claim, &bound_pvc(), &local("n2"), &node())
                .unwrap_err()
                .to_string(),
            "MountVolume.NodeAffinity check failed for volume \"pv-1\" : no matching NodeSelectorTerms"
        );
        let other = pv(serde_json::json!({
            "metadata": {"name": "pv-1"},
            "spec": {"claimRef": {"uid": "someone-else"}, "hostPath": {"path": "/srv"}}
        }));
        assert!(matches!(
            mountable(&vol, &claim, &bound_pvc(), &other, &node()),
            Err(ClaimError::ClaimRefUid { .. })
        ));
        let unbound = pv(
            serde_json::json!({"metadata": {"name": "pv-1"}, "spec": {"hostPath": {"path": "/srv"}}}),
        );
        assert!(matches!(
            mountable(&vol, &claim, &bound_pvc(), &unbound, &node()),
            Err(ClaimError::NoClaimRef { .. })
        ));
        let nfs = pv(serde_json::json!({
            "metadata": {"name": "pv-1"},
            "spec": {"claimRef": {"uid": "claim-uid"}, "nfs": {"server": "s", "path": "/x"}}
        }));
        assert_eq!(
            mountable(&vol, &claim, &bound_pvc(), &nfs, &node())
                .unwrap_err()
                .to_string(),
            "PV \"pv-1\": its volume source (nfs) is not supported by kernlet yet (hostPath, local and csi are)"
        );
        let host = pv(serde_json::json!({
            "metadata": {"name": "pv-1"},
            "spec": {"claimRef": {"uid": "claim-uid"}, "hostPath": {"path": "/srv/x", "type": "DirectoryOrCreate"}}
        }));
        let ro = ClaimRef {
            read_only: true,
            ..claim
        };
        let m = mountable(&vol, &ro, &bound_pvc(), &host, &node()).unwrap();
        assert_eq!(
            m.plugin,
            Plugin::HostPath {
                kind: "DirectoryOrCreate".into()
            }
        );
        assert!(m.read_only && !m.owned_by_fs_group);
    }

    #[test]
    fn a_block_volume_is_a_device_and_a_filesystem_one_a_mount() {
        let p = pod();
        let vol = p.spec.as_ref().unwrap().volumes.clone().unwrap()[0].clone();
        let claim = claim_of(&p, &vol).unwrap();
        let mut block = bound_pvc();
        block.spec.as_mut().unwrap().volume_mode = Some("Block".into());
        let dev = pv(serde_json::json!({
            "metadata": {"name": "pv-1"},
            "spec": {"claimRef": {"uid": "claim-uid"}, "local": {"path": "/dev/loop7"}, "volumeMode": "Block"}
        }));
        let m = mountable(&vol, &claim, &block, &dev, &node()).unwrap();
        assert!(m.block && !m.owned_by_fs_group);
        assert_eq!(
            check_use(&p, &m).unwrap_err().to_string(),
            "volume \"data\" has volumeMode Block, but is specified in volumeMounts"
        );
        let fs = mountable(&vol, &claim, &bound_pvc(), &dev, &node()).unwrap();
        assert!(check_use(&p, &fs).is_ok());
    }
}

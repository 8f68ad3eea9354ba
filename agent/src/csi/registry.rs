//! The plugin watcher and the CSI drivers of the node: each socket that appears in
//! `<kubelet-dir>/plugins_registry` is asked for its plugin info
//! (`pluginregistration` GetInfo); a `CSIPlugin` of a 1.x version is then asked for
//! its node ID, topology, volume limit and capabilities (`NodeGetInfo`,
//! `NodeGetCapabilities`), written into the node's `CSINode` (and kubelet's
//! `csi.volume.kubernetes.io/nodeid` annotation and topology labels on the Node), and
//! told it is registered. A socket that goes away takes its driver off again.
//!
//! kubelet watches the directory with inotify; kernlet looks at it every second.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::storage::v1::{CSINode, CSINodeDriver, CSINodeSpec, VolumeNodeResources};
use kube::api::{Api, Patch, PatchParams, PostParams};

use super::proto::csi::node_client::NodeClient;
use super::proto::csi::node_service_capability::rpc::Type as NodeCap;
use super::proto::registration::registration_client::RegistrationClient;
use super::proto::registration::{InfoRequest, RegistrationStatus};
use super::{CsiError, channel, rpc};
use crate::client::SharedClient;

/// kubelet's annotation on the Node: `{"<driver>": "<node ID>", …}`.
pub const NODE_ID_ANNOTATION: &str = "csi.volume.kubernetes.io/nodeid";

/// A registered CSI driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Driver {
    pub name: String,
    /// The socket of its Identity and Node services.
    pub endpoint: PathBuf,
    /// The registration socket it came from.
    pub socket: PathBuf,
    pub node_id: String,
    /// It implements NodeStageVolume/NodeUnstageVolume.
    pub stage_unstage: bool,
    /// It answers NodeGetVolumeStats.
    pub volume_stats: bool,
    /// It expands volumes on the node (NodeExpandVolume).
    pub expand: bool,
    pub max_volumes: i64,
    pub topology: BTreeMap<String, String>,
}

/// The registered drivers, by name (shared by the watcher and the volume code).
#[derive(Clone, Debug, Default)]
pub struct Drivers(Arc<Mutex<BTreeMap<String, Driver>>>);

impl Drivers {
    pub fn get(&self, name: &str) -> Option<Driver> {
        self.0.lock().ok()?.get(name).cloned()
    }

    pub fn all(&self) -> Vec<Driver> {
        self.0
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    fn insert(&self, d: Driver) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(d.name.clone(), d);
        }
    }

    fn remove_socket(&self, socket: &Path) -> Option<Driver> {
        let mut m = self.0.lock().ok()?;
        let name = m.values().find(|d| d.socket == socket)?.name.clone();
        m.remove(&name)
    }
}

/// Asks the plugin behind a registration socket what it is, then the CSI driver for
/// its node facts.
async fn probe(socket: &Path) -> Result<Driver, CsiError> {
    let mut reg = RegistrationClient::new(channel(socket).await?);
    let info = rpc("GetInfo", 10, reg.get_info(InfoRequest {})).await?;
    let v1 = info.supported_versions.iter().any(|v| v.starts_with('1'));
    if info.r#type != "CSIPlugin" || !v1 {
        return Err(CsiError::Unsupported {
            name: info.name,
            kind: info.r#type,
            socket: socket.to_path_buf(),
        });
    }
    let endpoint = PathBuf::from(info.endpoint.trim_start_matches("unix://"));
    let mut node = NodeClient::new(channel(&endpoint).await?);
    let facts = rpc(
        "NodeGetInfo",
        10,
        node.node_get_info(super::proto::csi::NodeGetInfoRequest {}),
    )
    .await?;
    let caps = rpc(
        "NodeGetCapabilities",
        10,
        node.node_get_capabilities(super::proto::csi::NodeGetCapabilitiesRequest {}),
    )
    .await?;
    let has = |cap: NodeCap| {
        caps.capabilities.iter().any(|c| {
            matches!(&c.r#type,
                Some(super::proto::csi::node_service_capability::Type::Rpc(r))
                    if r.r#type == cap as i32)
        })
    };
    let stage_unstage = has(NodeCap::StageUnstageVolume);
    let volume_stats = has(NodeCap::GetVolumeStats);
    let expand = has(NodeCap::ExpandVolume);
    Ok(Driver {
        name: info.name,
        endpoint,
        socket: socket.to_path_buf(),
        node_id: facts.node_id,
        stage_unstage,
        volume_stats,
        expand,
        max_volumes: facts.max_volumes_per_node,
        topology: facts
            .accessible_topology
            .map(|t| t.segments.into_iter().collect())
            .unwrap_or_default(),
    })
}

/// Tells the plugin whether it was registered (it may exit on `false`).
async fn notify(socket: &Path, registered: bool, error: String) {
    if let Ok(ch) = channel(socket).await {
        let mut reg = RegistrationClient::new(ch);
        let status = RegistrationStatus {
            plugin_registered: registered,
            error,
        };
        let _ = rpc(
            "NotifyRegistrationStatus",
            10,
            reg.notify_registration_status(status),
        )
        .await;
    }
}

/// The node's CSINode with `drivers` as its driver list (created, owned by the Node,
/// when missing), kubelet's node-ID annotation and the drivers' topology labels.
async fn write_node_objects(
    client: &SharedClient,
    node: &str,
    drivers: &[Driver],
) -> Result<(), CsiError> {
    let api_err = |what: &str| {
        let what = what.to_string();
        move |source| CsiError::Api { what, source }
    };
    let nodes: Api<Node> = Api::all(client.get());
    let node_obj = nodes.get(node).await.map_err(api_err("the Node"))?;
    let entries: Vec<CSINodeDriver> = drivers
        .iter()
        .map(|d| CSINodeDriver {
            name: d.name.clone(),
            node_id: d.node_id.clone(),
            topology_keys: (!d.topology.is_empty()).then(|| d.topology.keys().cloned().collect()),
            allocatable: (d.max_volumes > 0).then(|| VolumeNodeResources {
                count: i32::try_from(d.max_volumes).ok(),
            }),
        })
        .collect();
    let csinodes: Api<CSINode> = Api::all(client.get());
    match csinodes
        .get_opt(node)
        .await
        .map_err(api_err("the CSINode"))?
    {
        Some(mut cur) => {
            if cur.spec.drivers != entries {
                cur.spec.drivers = entries;
                csinodes
                    .replace(node, &PostParams::default(), &cur)
                    .await
                    .map_err(api_err("the CSINode"))?;
            }
        }
        None => {
            let obj = CSINode {
                metadata: kube::api::ObjectMeta {
                    name: Some(node.to_string()),
                    owner_references: Some(vec![
                        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                            api_version: "v1".into(),
                            kind: "Node".into(),
                            name: node.to_string(),
                            uid: node_obj.metadata.uid.clone().unwrap_or_default(),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                },
                spec: CSINodeSpec { drivers: entries },
            };
            csinodes
                .create(&PostParams::default(), &obj)
                .await
                .map_err(api_err("the CSINode"))?;
        }
    }
    let ids: BTreeMap<&str, &str> = drivers
        .iter()
        .map(|d| (d.name.as_str(), d.node_id.as_str()))
        .collect();
    let mut meta = Node::default();
    let mut annotations = BTreeMap::new();
    annotations.insert(
        NODE_ID_ANNOTATION.to_string(),
        serde_json::to_string(&ids).unwrap_or_default(),
    );
    meta.metadata.annotations = Some(annotations);
    let labels: BTreeMap<String, String> =
        drivers.iter().flat_map(|d| d.topology.clone()).collect();
    if !labels.is_empty() {
        meta.metadata.labels = Some(labels);
    }
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(&meta))
        .await
        .map_err(api_err("the Node"))?;
    Ok(())
}

/// The sockets in the registration directory.
fn sockets(dir: &Path) -> BTreeSet<PathBuf> {
    use std::os::unix::fs::FileTypeExt as _;
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
        .map(|e| e.path())
        .collect()
}

/// Watches `<kubelet-dir>/plugins_registry` until `stop`: registers new CSI drivers,
/// deregisters those whose socket went. A socket that cannot be registered is tried
/// again every 5 s (said once in the log).
pub async fn watch(
    drivers: Drivers,
    client: SharedClient,
    node: String,
    kubelet_dir: PathBuf,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let dir = kubelet_dir.join("plugins_registry");
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::warn!(dir = %dir.display(), "cannot make the plugin registration directory: {e}");
    }
    let mut failed: BTreeMap<PathBuf, std::time::Instant> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let present = sockets(&dir);
        let mut changed = false;
        for d in drivers.all() {
            if !present.contains(&d.socket) {
                drivers.remove_socket(&d.socket);
                tracing::info!(driver = %d.name, "CSI driver deregistered: its socket is gone");
                changed = true;
            }
        }
        let known: BTreeSet<PathBuf> = drivers.all().into_iter().map(|d| d.socket).collect();
        failed.retain(|s, _| present.contains(s));
        for socket in present.difference(&known) {
            if failed
                .get(socket)
                .is_some_and(|t| t.elapsed() < Duration::from_secs(5))
            {
                continue;
            }
            match probe(socket).await {
                Ok(d) => {
                    let mut all = drivers.all();
                    all.retain(|o| o.name != d.name);
                    all.push(d.clone());
                    match write_node_objects(&client, &node, &all).await {
                        Ok(()) => {
                            tracing::info!(driver = %d.name, node_id = %d.node_id,
                                endpoint = %d.endpoint.display(), "CSI driver registered");
                            drivers.insert(d);
                            failed.remove(socket);
                            notify(socket, true, String::new()).await;
                        }
                        Err(e) => {
                            if failed
                                .insert(socket.clone(), std::time::Instant::now())
                                .is_none()
                            {
                                tracing::warn!(driver = %d.name, "registering the CSI driver: {e}");
                            }
                        }
                    }
                }
                Err(e) => {
                    if failed
                        .insert(socket.clone(), std::time::Instant::now())
                        .is_none()
                    {
                        tracing::warn!(socket = %socket.display(), "plugin registration: {e}");
                        notify(socket, false, e.to_string()).await;
                    }
                }
            }
        }
        if changed && let Err(e) = write_node_objects(&client, &node, &drivers.all()).await {
            tracing::warn!("updating the CSINode after a driver went: {e}");
        }
    }
}

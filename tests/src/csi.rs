//! A CSI node plugin as a test peer, written from the CSI specification (spec.md,
//! "Node Service RPC" and "RPC Interactions"), never from kernlet's code: it registers
//! through kubelet's plugin registration protocol, serves Identity and Node with
//! STAGE_UNSTAGE_VOLUME, GET_VOLUME_STATS and EXPAND_VOLUME, makes real mounts (a directory it keeps per volume, bound at
//! the staging path, and the staging path bound at each target), and checks every
//! call against the spec's rules — required fields, a publish only of a staged volume
//! at its staging path, an unstage only after every unpublish of the volume — keeping
//! each breach in `violations`. A volume asked for as a raw block device (the Block
//! access type) is backed by a device the test gives it (`block_devices`): staging
//! keeps it, publishing places that device at the target path — a file the peer
//! creates — by a bind mount. Knobs make stages fail and publishes wait, for the
//! fault tests. Only the generated gRPC bindings (the protocol's wire format) are
//! shared with kernlet.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kernlet::csi::proto::csi as pb;
use kernlet::csi::proto::registration as reg;
use tonic::{Request, Response, Status};

/// What the peer saw and holds.
#[derive(Debug, Default)]
pub struct PeerState {
    /// Each call, `"<Rpc> <volume id>"`, in order.
    pub calls: Vec<String>,
    /// Breaches of the spec's rules by the caller.
    pub violations: Vec<String>,
    /// Staged volumes: volume id → staging path.
    pub staged: BTreeMap<String, String>,
    /// Published targets: target path → volume id.
    pub published: BTreeMap<String, String>,
    /// What NotifyRegistrationStatus said.
    pub registered: Option<bool>,
    /// The next this many stages fail (Internal).
    pub fail_stages: u32,
    /// While set, publishes answer Unavailable (after being counted).
    pub hold_publishes: bool,
    /// The last stage's secrets and the last publish's volume context, publish
    /// context (the attachment's metadata) and readonly.
    pub stage_secrets: BTreeMap<String, String>,
    pub volume_context: BTreeMap<String, String>,
    pub publish_context: BTreeMap<String, String>,
    pub publish_readonly: Option<bool>,
    /// Each NodeExpandVolume: volume id and required bytes.
    pub expanded: Vec<(String, i64)>,
    /// The devices behind raw block volumes: volume id → device node.
    pub block_devices: BTreeMap<String, PathBuf>,
    /// Each volume's access type as the last stage or publish asked: volume id → block.
    pub block: BTreeMap<String, bool>,
}

type Shared = Arc<Mutex<PeerState>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, PeerState> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The peer: its driver name, sockets and the directories it backs volumes with.
pub struct CsiPeer {
    pub name: String,
    /// The registration socket (in the node's `plugins_registry`).
    pub registration: PathBuf,
    /// The socket of its Identity and Node services.
    pub endpoint: PathBuf,
    /// Where each volume's data lives: `<backing>/<volume id>`.
    pub backing: PathBuf,
    state: Shared,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

struct Identity(String);
struct Node(Shared, PathBuf);
struct Registration(String, PathBuf, Shared);

#[tonic::async_trait]
impl pb::identity_server::Identity for Identity {
    async fn get_plugin_info(
        &self,
        _: Request<pb::GetPluginInfoRequest>,
    ) -> Result<Response<pb::GetPluginInfoResponse>, Status> {
        Ok(Response::new(pb::GetPluginInfoResponse {
            name: self.0.clone(),
            vendor_version: "0.1.0".into(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<pb::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<pb::GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(pb::GetPluginCapabilitiesResponse {
            capabilities: vec![],
        }))
    }

    async fn probe(
        &self,
        _: Request<pb::ProbeRequest>,
    ) -> Result<Response<pb::ProbeResponse>, Status> {
        Ok(Response::new(pb::ProbeResponse { ready: Some(true) }))
    }
}

fn bind(source: &Path, target: &Path, readonly: bool) -> Result<(), Status> {
    use nix::mount::{MsFlags, mount};
    let fail = |e: nix::Error| Status::internal(format!("mount {}: {e}", target.display()));
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(fail)?;
    if readonly {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(fail)?;
    }
    Ok(())
}

/// Whether a capability asks for a raw block device.
fn is_block(c: &Option<pb::VolumeCapability>) -> bool {
    matches!(
        c.as_ref().and_then(|c| c.access_type.as_ref()),
        Some(pb::volume_capability::AccessType::Block(_))
    )
}

/// The device behind a raw block volume, or FailedPrecondition when the test gave none.
fn device_of(state: &Shared, volume: &str) -> Result<PathBuf, Status> {
    lock(state)
        .block_devices
        .get(volume)
        .cloned()
        .ok_or_else(|| {
            Status::failed_precondition(format!("no device backs block volume {volume}"))
        })
}

fn unmount(target: &Path) -> Result<(), Status> {
    match nix::mount::umount(target) {
        Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(Status::internal(format!(
            "umount {}: {e}",
            target.display()
        ))),
    }
}

/// A required field left empty: InvalidArgument, and a breach.
fn required(state: &Shared, call: &str, field: &str, empty: bool) -> Result<(), Status> {
    if empty {
        lock(state)
            .violations
            .push(format!("{call} without its required {field}"));
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    Ok(())
}

#[tonic::async_trait]
impl pb::node_server::Node for Node {
    async fn node_stage_volume(
        &self,
        r: Request<pb::NodeStageVolumeRequest>,
    ) -> Result<Response<pb::NodeStageVolumeResponse>, Status> {
        let r = r.into_inner();
        let s = &self.0;
        lock(s)
            .calls
            .push(format!("NodeStageVolume {}", r.volume_id));
        required(s, "NodeStageVolume", "volume_id", r.volume_id.is_empty())?;
        required(
            s,
            "NodeStageVolume",
            "staging_target_path",
            r.staging_target_path.is_empty(),
        )?;
        required(
            s,
            "NodeStageVolume",
            "volume_capability",
            r.volume_capability.is_none(),
        )?;
        {
            let mut st = lock(s);
            if st.fail_stages > 0 {
                st.fail_stages -= 1;
                return Err(Status::internal("the storage backend failed (injected)"));
            }
            match st.staged.get(&r.volume_id) {
                Some(p) if *p == r.staging_target_path => {
                    return Ok(Response::new(pb::NodeStageVolumeResponse {}));
                }
                Some(p) => {
                    let v = format!(
                        "NodeStageVolume of {} at {} while staged at {p}",
                        r.volume_id, r.staging_target_path
                    );
                    st.violations.push(v.clone());
                    return Err(Status::already_exists(v));
                }
                None => {}
            }
        }
        // The CO makes the staging path, a directory (spec: NodeStageVolume).
        let staging = PathBuf::from(&r.staging_target_path);
        if !staging.is_dir() {
            let v = format!(
                "staging path {} is not a directory the CO made",
                staging.display()
            );
            lock(s).violations.push(v.clone());
            return Err(Status::failed_precondition(v));
        }
        let block = is_block(&r.volume_capability);
        if block {
            // The device is kept by the peer; nothing is mounted at the staging path.
            device_of(s, &r.volume_id)?;
        } else {
            let data = self.1.join(&r.volume_id);
            std::fs::create_dir_all(&data).map_err(|e| Status::internal(e.to_string()))?;
            bind(&data, &staging, false)?;
        }
        let mut st = lock(s);
        st.block.insert(r.volume_id.clone(), block);
        st.staged.insert(r.volume_id, r.staging_target_path);
        st.stage_secrets = r.secrets.into_iter().collect();
        Ok(Response::new(pb::NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        r: Request<pb::NodeUnstageVolumeRequest>,
    ) -> Result<Response<pb::NodeUnstageVolumeResponse>, Status> {
        let r = r.into_inner();
        let s = &self.0;
        lock(s)
            .calls
            .push(format!("NodeUnstageVolume {}", r.volume_id));
        required(s, "NodeUnstageVolume", "volume_id", r.volume_id.is_empty())?;
        required(
            s,
            "NodeUnstageVolume",
            "staging_target_path",
            r.staging_target_path.is_empty(),
        )?;
        {
            let mut st = lock(s);
            let still: Vec<String> = st
                .published
                .iter()
                .filter(|(_, v)| **v == r.volume_id)
                .map(|(t, _)| t.clone())
                .collect();
            if !still.is_empty() {
                let v = format!(
                    "NodeUnstageVolume of {} while published at {still:?}",
                    r.volume_id
                );
                st.violations.push(v.clone());
                return Err(Status::failed_precondition(v));
            }
        }
        unmount(Path::new(&r.staging_target_path))?;
        lock(s).staged.remove(&r.volume_id);
        Ok(Response::new(pb::NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        r: Request<pb::NodePublishVolumeRequest>,
    ) -> Result<Response<pb::NodePublishVolumeResponse>, Status> {
        let r = r.into_inner();
        let s = &self.0;
        lock(s)
            .calls
            .push(format!("NodePublishVolume {}", r.volume_id));
        required(s, "NodePublishVolume", "volume_id", r.volume_id.is_empty())?;
        required(
            s,
            "NodePublishVolume",
            "target_path",
            r.target_path.is_empty(),
        )?;
        required(
            s,
            "NodePublishVolume",
            "volume_capability",
            r.volume_capability.is_none(),
        )?;
        // An ephemeral (inline) volume is published without a stage (spec: "CSI
        // ephemeral volumes"); any other needs its stage with STAGE_UNSTAGE_VOLUME.
        let ephemeral = r
            .volume_context
            .get("csi.storage.k8s.io/ephemeral")
            .map(String::as_str)
            == Some("true");
        if !ephemeral {
            required(
                s,
                "NodePublishVolume",
                "staging_target_path",
                r.staging_target_path.is_empty(),
            )?;
        }
        {
            let mut st = lock(s);
            if st.hold_publishes {
                return Err(Status::unavailable("publishes are held (test knob)"));
            }
            if !ephemeral && st.staged.get(&r.volume_id) != Some(&r.staging_target_path) {
                let v = format!(
                    "NodePublishVolume of {} from {} which is not where it was staged ({:?})",
                    r.volume_id,
                    r.staging_target_path,
                    st.staged.get(&r.volume_id)
                );
                st.violations.push(v.clone());
                return Err(Status::failed_precondition(v));
            }
            // Published already and still mounted: nothing to do (idempotent).
            if st.published.get(&r.target_path) == Some(&r.volume_id)
                && !mounts_under(Path::new(&r.target_path)).is_empty()
            {
                return Ok(Response::new(pb::NodePublishVolumeResponse {}));
            }
        }
        let target = PathBuf::from(&r.target_path);
        // The CO makes the target's parent; the SP the target itself.
        if !target.parent().is_some_and(Path::is_dir) {
            let v = format!("the parent of target {} does not exist", target.display());
            lock(s).violations.push(v.clone());
            return Err(Status::failed_precondition(v));
        }
        let block = is_block(&r.volume_capability);
        if block {
            if lock(s).block.get(&r.volume_id) != Some(&true) {
                let v = format!(
                    "NodePublishVolume of {} as a block device, staged otherwise",
                    r.volume_id
                );
                lock(s).violations.push(v.clone());
                return Err(Status::failed_precondition(v));
            }
            let device = device_of(s, &r.volume_id)?;
            std::fs::File::create(&target).map_err(|e| Status::internal(e.to_string()))?;
            bind(&device, &target, r.readonly)?;
            let mut st = lock(s);
            st.published.insert(r.target_path, r.volume_id);
            st.publish_readonly = Some(r.readonly);
            return Ok(Response::new(pb::NodePublishVolumeResponse {}));
        }
        std::fs::create_dir_all(&target).map_err(|e| Status::internal(e.to_string()))?;
        let source = if ephemeral {
            let data = self.1.join(&r.volume_id);
            std::fs::create_dir_all(&data).map_err(|e| Status::internal(e.to_string()))?;
            data
        } else {
            PathBuf::from(&r.staging_target_path)
        };
        bind(&source, &target, r.readonly)?;
        let mut st = lock(s);
        st.published.insert(r.target_path, r.volume_id);
        st.volume_context = r.volume_context.into_iter().collect();
        st.publish_context = r.publish_context.into_iter().collect();
        st.publish_readonly = Some(r.readonly);
        Ok(Response::new(pb::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        r: Request<pb::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<pb::NodeUnpublishVolumeResponse>, Status> {
        let r = r.into_inner();
        let s = &self.0;
        lock(s)
            .calls
            .push(format!("NodeUnpublishVolume {}", r.volume_id));
        required(
            s,
            "NodeUnpublishVolume",
            "volume_id",
            r.volume_id.is_empty(),
        )?;
        required(
            s,
            "NodeUnpublishVolume",
            "target_path",
            r.target_path.is_empty(),
        )?;
        let target = PathBuf::from(&r.target_path);
        unmount(&target)?;
        // The SP deletes what it made at the target (a file for a block volume).
        if target.is_dir() {
            let _ = std::fs::remove_dir(&target);
        } else {
            let _ = std::fs::remove_file(&target);
        }
        lock(s).published.remove(&r.target_path);
        Ok(Response::new(pb::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        r: Request<pb::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<pb::NodeGetVolumeStatsResponse>, Status> {
        let r = r.into_inner();
        let s = &self.0;
        lock(s)
            .calls
            .push(format!("NodeGetVolumeStats {}", r.volume_id));
        required(s, "NodeGetVolumeStats", "volume_id", r.volume_id.is_empty())?;
        required(
            s,
            "NodeGetVolumeStats",
            "volume_path",
            r.volume_path.is_empty(),
        )?;
        // The path must be one the volume is published (or staged) at.
        {
            let mut st = lock(s);
            let known = st.published.get(&r.volume_path) == Some(&r.volume_id)
                || st.staged.get(&r.volume_id) == Some(&r.volume_path);
            if !known {
                let v = format!(
                    "NodeGetVolumeStats of {} at {}, where it is not published",
                    r.volume_id, r.volume_path
                );
                st.violations.push(v.clone());
                return Err(Status::not_found(v));
            }
        }
        let fs = nix::sys::statvfs::statvfs(Path::new(&r.volume_path))
            .map_err(|e| Status::internal(e.to_string()))?;
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let bs = fs.fragment_size();
        let usage =
            |unit: pb::volume_usage::Unit, total: u64, free: u64, avail: u64| pb::VolumeUsage {
                available: n(avail),
                total: n(total),
                used: n(total.saturating_sub(free)),
                unit: unit as i32,
            };
        Ok(Response::new(pb::NodeGetVolumeStatsResponse {
            usage: vec![
                usage(
                    pb::volume_usage::Unit::Bytes,
                    fs.blocks() * bs,
                    fs.blocks_free() * bs,
                    fs.blocks_available() * bs,
                ),
                usage(
                    pb::volume_usage::Unit::Inodes,
                    fs.files(),
                    fs.files_free(),
                    fs.files_free(),
                ),
            ],
            volume_condition: None,
        }))
    }

    async fn node_expand_volume(
        &self,
        r: Request<pb::NodeExpandVolumeRequest>,
    ) -> Result<Response<pb::NodeExpandVolumeResponse>, Status> {
        let r = r.into_inner();
        let s = &self.0;
        lock(s)
            .calls
            .push(format!("NodeExpandVolume {}", r.volume_id));
        required(s, "NodeExpandVolume", "volume_id", r.volume_id.is_empty())?;
        required(
            s,
            "NodeExpandVolume",
            "volume_path",
            r.volume_path.is_empty(),
        )?;
        let mut st = lock(s);
        if st.published.get(&r.volume_path) != Some(&r.volume_id) {
            let v = format!(
                "NodeExpandVolume of {} at {}, where it is not published",
                r.volume_id, r.volume_path
            );
            st.violations.push(v.clone());
            return Err(Status::not_found(v));
        }
        let bytes = r.capacity_range.map_or(0, |c| c.required_bytes);
        st.expanded.push((r.volume_id, bytes));
        Ok(Response::new(pb::NodeExpandVolumeResponse {
            capacity_bytes: bytes,
        }))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<pb::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<pb::NodeGetCapabilitiesResponse>, Status> {
        use pb::node_service_capability::{Rpc, Type, rpc};
        Ok(Response::new(pb::NodeGetCapabilitiesResponse {
            capabilities: [
                rpc::Type::StageUnstageVolume,
                rpc::Type::GetVolumeStats,
                rpc::Type::ExpandVolume,
            ]
            .into_iter()
            .map(|t| pb::NodeServiceCapability {
                r#type: Some(Type::Rpc(Rpc { r#type: t as i32 })),
            })
            .collect(),
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<pb::NodeGetInfoRequest>,
    ) -> Result<Response<pb::NodeGetInfoResponse>, Status> {
        Ok(Response::new(pb::NodeGetInfoResponse {
            node_id: "peer-node-1".into(),
            max_volumes_per_node: 16,
            accessible_topology: Some(pb::Topology {
                segments: [(
                    "topology.csi.kernlet.test/zone".to_string(),
                    "z1".to_string(),
                )]
                .into_iter()
                .collect(),
            }),
        }))
    }
}

#[tonic::async_trait]
impl reg::registration_server::Registration for Registration {
    async fn get_info(
        &self,
        _: Request<reg::InfoRequest>,
    ) -> Result<Response<reg::PluginInfo>, Status> {
        Ok(Response::new(reg::PluginInfo {
            r#type: "CSIPlugin".into(),
            name: self.0.clone(),
            endpoint: self.1.display().to_string(),
            supported_versions: vec!["1.0.0".into()],
        }))
    }

    async fn notify_registration_status(
        &self,
        r: Request<reg::RegistrationStatus>,
    ) -> Result<Response<reg::RegistrationStatusResponse>, Status> {
        lock(&self.2).registered = Some(r.into_inner().plugin_registered);
        Ok(Response::new(reg::RegistrationStatusResponse {}))
    }
}

fn listen(path: &Path) -> anyhow::Result<tokio_stream::wrappers::UnixListenerStream> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    let _ = std::fs::remove_file(path);
    Ok(tokio_stream::wrappers::UnixListenerStream::new(
        tokio::net::UnixListener::bind(path)?,
    ))
}

impl CsiPeer {
    /// Starts the driver `name` for a node whose kubelet directory is `kubelet_dir`
    /// (its sockets where a DaemonSet's hostPath mounts would put them), backing
    /// volumes under `backing`.
    pub fn start(name: &str, kubelet_dir: &Path, backing: &Path) -> anyhow::Result<Self> {
        let state: Shared = Arc::default();
        let endpoint = kubelet_dir.join("plugins").join(name).join("csi.sock");
        let registration = kubelet_dir
            .join("plugins_registry")
            .join(format!("{name}-reg.sock"));
        let mut peer = Self {
            name: name.to_string(),
            registration,
            endpoint,
            backing: backing.to_path_buf(),
            state,
            tasks: Vec::new(),
        };
        peer.serve()?;
        Ok(peer)
    }

    /// (Re)opens both sockets.
    pub fn serve(&mut self) -> anyhow::Result<()> {
        let services = listen(&self.endpoint)?;
        let node = Node(Arc::clone(&self.state), self.backing.clone());
        let identity = Identity(self.name.clone());
        self.tasks.push(tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(pb::identity_server::IdentityServer::new(identity))
                .add_service(pb::node_server::NodeServer::new(node))
                .serve_with_incoming(services)
                .await;
        }));
        let regs = listen(&self.registration)?;
        let r = Registration(
            self.name.clone(),
            self.endpoint.clone(),
            Arc::clone(&self.state),
        );
        self.tasks.push(tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(reg::registration_server::RegistrationServer::new(r))
                .serve_with_incoming(regs)
                .await;
        }));
        Ok(())
    }

    /// Closes both sockets and removes them (the driver's pod went away).
    pub fn vanish(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.endpoint);
        let _ = std::fs::remove_file(&self.registration);
    }

    /// What the peer saw and holds.
    pub fn state(&self) -> std::sync::MutexGuard<'_, PeerState> {
        lock(&self.state)
    }
}

impl Drop for CsiPeer {
    fn drop(&mut self) {
        self.vanish();
        // Whatever is still mounted from the peer's volumes goes with it.
        let st = lock(&self.state);
        for t in st.published.keys().chain(st.staged.values()) {
            let _ = nix::mount::umount2(Path::new(t), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Mount points of this process's namespace at or below `dir`.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(PathBuf::from))
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// The mount points strictly below `dir` (a node's kubelet directory is a mount of
/// its own: a shared bind, as kubelet makes it).
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    mounts_under(dir).into_iter().filter(|p| p != dir).collect()
}

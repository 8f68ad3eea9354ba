//! The CRI socket: the `runtime.v1` RuntimeService and ImageService (the upstream
//! protos, `proto/runtime/v1/api.proto`) served over a unix socket
//! (`--container-runtime-endpoint`, default `/run/kernlet/cri.sock`) from kernlet's own
//! state, so the tools people use on nodes — `crictl pods`, `ps`, `inspect`, `logs`,
//! `exec`, `attach`, `port-forward`, `stats`, `images`, `pull`, `rmi` — work on a kernlet
//! node. kernlet's pod manager stays the only writer of sandboxes and containers: the
//! CRI calls that would fight it answer `Unimplemented` with the reason.

pub mod image_service;
pub mod info;
pub mod runtime_service;
pub mod stats;
pub mod streaming;
pub mod view;

/// The generated `runtime.v1` messages, clients and servers.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("runtime.v1");
}

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::Status;

use crate::api::stats::CpuSamples;
use crate::runtime::Runtime;
use view::{NodeView, Run};

/// Where kubelet's tools look for the runtime's socket on a kernlet node.
pub const DEFAULT_ENDPOINT: &str = "/run/kernlet/cri.sock";

/// Items per message of the `Stream*` calls.
const CHUNK: usize = 500;

/// Why the CRI socket cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error(
        "--container-runtime-endpoint {0:?}: give a unix socket path (unix:///run/kernlet/cri.sock or /run/kernlet/cri.sock)"
    )]
    Endpoint(String),
    #[error("cannot listen on the CRI socket {path}: {source}")]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{0} is in use: another runtime (containerd?) or kernlet answers there; give kernlet a socket of its own with --container-runtime-endpoint"
    )]
    InUse(PathBuf),
    #[error("the CRI streaming server: {0}")]
    Streaming(std::io::Error),
    #[error("serving the CRI: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// The socket path of an endpoint flag (`unix://` optional).
pub fn socket_path(endpoint: &str) -> Result<PathBuf, CriError> {
    let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    if path.is_empty()
        || !path.starts_with('/')
        || endpoint.contains("://") && !endpoint.starts_with("unix://")
    {
        return Err(CriError::Endpoint(endpoint.to_string()));
    }
    Ok(PathBuf::from(path))
}

/// Clears a dead socket at `socket` ([`crate::state::clear_stale_socket`]).
async fn clear_stale(socket: &Path) -> Result<(), CriError> {
    crate::state::clear_stale_socket(socket)
        .await
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AddrInUse => CriError::InUse(socket.to_path_buf()),
            _ => CriError::Listen {
                path: socket.to_path_buf(),
                source,
            },
        })
}

/// Both CRI services over one node's runtime.
#[derive(Debug)]
pub struct Cri {
    pub rt: Runtime,
    pub streaming: Arc<streaming::Streaming>,
    pub samples: Arc<CpuSamples>,
    /// The RuntimeClass handlers this node runs (`status.runtimeHandlers`).
    pub runtime_handlers: Vec<String>,
}

/// `items` in messages of at most [`CHUNK`], as the `Stream*` calls send them.
fn chunks<T: Send + 'static, M: Send + 'static>(
    items: Vec<T>,
    wrap: impl Fn(Vec<T>) -> M + Send + 'static,
) -> Pin<Box<dyn Stream<Item = Result<M, Status>> + Send>> {
    let mut batches = Vec::new();
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        batches.push(Ok(wrap(items.by_ref().take(CHUNK).collect())));
    }
    Box::pin(futures::stream::iter(batches))
}

fn joined(e: tokio::task::JoinError) -> Status {
    Status::internal(format!("reading the node's state: {e}"))
}

impl Cri {
    /// The node's sandboxes and containers now (read off the async threads).
    async fn view(&self) -> Result<NodeView, Status> {
        let rt = self.rt.clone();
        tokio::task::spawn_blocking(move || {
            let runs = rt
                .containers()
                .into_iter()
                .map(|record| Run {
                    state: rt.container_state(&record.id),
                    record,
                })
                .collect();
            NodeView::read(&rt.cfg.state_dir, rt.sandboxes(), runs)
        })
        .await
        .map_err(joined)
    }

    async fn sandboxes(
        &self,
        filter: Option<proto::PodSandboxFilter>,
    ) -> Result<Vec<proto::PodSandbox>, Status> {
        let view = self.view().await?;
        Ok(view
            .sandboxes
            .iter()
            .filter(|s| s.passes(filter.as_ref()))
            .map(view::Sandbox::to_cri)
            .collect())
    }

    async fn containers(
        &self,
        filter: Option<proto::ContainerFilter>,
    ) -> Result<Vec<proto::Container>, Status> {
        let view = self.view().await?;
        Ok(view
            .runs
            .iter()
            .filter(|r| r.passes(filter.as_ref(), view.sandbox_of(r)))
            .map(|r| r.to_cri(view.sandbox_of(r)))
            .collect())
    }

    /// Runs `read` over the stats sources off the async threads.
    async fn read_stats<T: Send + 'static>(
        &self,
        read: impl FnOnce(&stats::Sources) -> T + Send + 'static,
    ) -> Result<T, Status> {
        let (state_dir, cgroup_root, run_dir) = (
            self.rt.cfg.state_dir.clone(),
            self.rt.cgroup_root.clone(),
            self.rt.cfg.run_dir.clone(),
        );
        let samples = Arc::clone(&self.samples);
        tokio::task::spawn_blocking(move || {
            read(&stats::Sources {
                state_dir: &state_dir,
                cgroup_root: &cgroup_root,
                run_dir: &run_dir,
                samples: &samples,
            })
        })
        .await
        .map_err(joined)
    }

    /// Stats of the running containers `filter` selects.
    async fn container_stats_of(
        &self,
        view: NodeView,
        filter: Option<proto::ContainerStatsFilter>,
    ) -> Result<Vec<proto::ContainerStats>, Status> {
        self.read_stats(move |src| {
            running(&view)
                .filter(|r| r.passes_stats(filter.as_ref(), view.sandbox_of(r)))
                .map(|r| stats::container(src, r, view.sandbox_of(r)))
                .collect()
        })
        .await
    }

    /// Stats of the sandboxes `filter` selects, with their running containers'.
    async fn sandbox_stats_of(
        &self,
        view: NodeView,
        filter: Option<proto::PodSandboxStatsFilter>,
    ) -> Result<Vec<proto::PodSandboxStats>, Status> {
        self.read_stats(move |src| {
            view.sandboxes
                .iter()
                .filter(|s| s.passes_stats(filter.as_ref()))
                .map(|s| {
                    let containers = running(&view)
                        .filter(|r| r.record.pod_uid == s.record.uid)
                        .map(|r| stats::container(src, r, Some(s)))
                        .collect();
                    stats::sandbox(src, s, containers)
                })
                .collect()
        })
        .await
    }

    /// RuntimeReady always (the runtime answers); NetworkReady when the pod network is.
    fn runtime_status(&self, verbose: bool) -> proto::StatusResponse {
        use crate::runtime::network::NetworkState;
        let network = self.rt.network.read().map(|n| n.clone()).ok();
        let (net_ready, reason, message) = match network {
            Some(NetworkState::Ready(_)) => (true, String::new(), String::new()),
            Some(NetworkState::Off) => (
                true,
                String::new(),
                "no pod network is configured: pods share the host's or have loopback only".into(),
            ),
            Some(NetworkState::Waiting(why)) => (false, "NetworkPluginNotReady".into(), why),
            None => (false, "NetworkPluginNotReady".into(), "unreadable".into()),
        };
        let conditions = vec![
            proto::RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: true,
                ..Default::default()
            },
            proto::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: net_ready,
                reason,
                message,
            },
        ];
        let mut info = std::collections::HashMap::new();
        if verbose {
            info.insert(
                "config".into(),
                serde_json::json!({
                    "stateDir": self.rt.cfg.state_dir,
                    "runDir": self.rt.cfg.run_dir,
                    "logDir": self.rt.cfg.log_dir,
                    "imageDir": self.rt.images.root(),
                    "cgroupRoot": self.rt.cgroup_root,
                    "controllers": self.rt.controllers,
                    "streamServer": self.streaming.address.to_string(),
                })
                .to_string(),
            );
        }
        let handler = |name: &str| proto::RuntimeHandler {
            name: name.into(),
            features: Some(proto::RuntimeHandlerFeatures {
                recursive_read_only_mounts: false,
                user_namespaces: false,
            }),
        };
        let mut runtime_handlers = vec![handler("")];
        runtime_handlers.extend(self.runtime_handlers.iter().map(|h| handler(h)));
        proto::StatusResponse {
            status: Some(proto::RuntimeStatus { conditions }),
            info,
            runtime_handlers,
            features: Some(proto::RuntimeFeatures {
                supplemental_groups_policy: true,
                user_namespaces_host_network: false,
            }),
        }
    }
}

fn running(view: &NodeView) -> impl Iterator<Item = &Run> {
    view.runs.iter().filter(|r| {
        matches!(
            r.state,
            crate::runtime::container::ContainerState::Running { .. }
        )
    })
}

/// Serves both services on `socket` (mode 0600, root's alone, as containerd's) until
/// `stop`, with the streaming server for exec, attach and port-forward.
pub async fn serve(
    socket: &Path,
    rt: Runtime,
    runtime_handlers: Vec<String>,
    exe: PathBuf,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), CriError> {
    use std::os::unix::fs::PermissionsExt as _;
    let streaming = streaming::Streaming::start(
        streaming::Sources {
            state_dir: rt.cfg.state_dir.clone(),
            run_dir: rt.cfg.run_dir.clone(),
            exe,
        },
        stop.clone(),
    )
    .await
    .map_err(CriError::Streaming)?;
    let listen = |source| CriError::Listen {
        path: socket.to_path_buf(),
        source,
    };
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(listen)?;
    }
    clear_stale(socket).await?;
    let listener = tokio::net::UnixListener::bind(socket).map_err(listen)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(listen)?;
    let cri = Arc::new(Cri {
        rt,
        streaming,
        samples: Arc::default(),
        runtime_handlers,
    });
    tracing::info!(socket = %socket.display(), stream_server = %cri.streaming.address, "CRI listening");
    let mut stop = stop;
    let result = tonic::transport::Server::builder()
        .add_service(
            proto::runtime_service_server::RuntimeServiceServer::from_arc(Arc::clone(&cri)),
        )
        .add_service(proto::image_service_server::ImageServiceServer::from_arc(
            cri,
        ))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            async move {
                let _ = stop.changed().await;
            },
        )
        .await;
    let _ = std::fs::remove_file(socket);
    result.map_err(CriError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_is_a_unix_socket_path() {
        assert_eq!(
            socket_path("unix:///run/kernlet/cri.sock").unwrap(),
            PathBuf::from("/run/kernlet/cri.sock")
        );
        assert_eq!(
            socket_path("/x/cri.sock").unwrap(),
            PathBuf::from("/x/cri.sock")
        );
        for bad in ["", "cri.sock", "tcp://127.0.0.1:1", "unix://relative"] {
            assert!(socket_path(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_live_socket_is_never_taken_over_and_a_dead_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cri.sock");
        let live = tokio::net::UnixListener::bind(&path).unwrap();
        assert!(matches!(clear_stale(&path).await, Err(CriError::InUse(_))));
        assert!(path.exists());
        drop(live);
        clear_stale(&path).await.unwrap();
        assert!(!path.exists());
        clear_stale(&path).await.unwrap();
        std::fs::write(&path, "not a socket").unwrap();
        assert!(clear_stale(&path).await.is_err());
        assert!(path.exists(), "a file that is not a socket is left alone");
    }

    #[tokio::test]
    async fn stream_calls_send_every_item_once_in_bounded_messages() {
        use futures::StreamExt as _;
        let items: Vec<u32> = (0..1201).collect();
        let got: Vec<Vec<u32>> = chunks(items.clone(), |v| v)
            .map(|m| m.unwrap())
            .collect()
            .await;
        assert_eq!(
            got.iter().map(Vec::len).collect::<Vec<_>>(),
            [500, 500, 201]
        );
        assert_eq!(got.concat(), items);
        assert_eq!(chunks(Vec::<u32>::new(), |v| v).count().await, 0);
    }
}

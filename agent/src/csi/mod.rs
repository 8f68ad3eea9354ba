//! CSI on the node, as kubelet's CSI plugin does it: drivers register through the
//! plugin watcher's directory (`<kubelet-dir>/plugins_registry`, kubelet's
//! `pluginregistration` protocol) and are written into the node's `CSINode`
//! ([`registry`]); a pod's CSI volume is staged and published by its driver at the
//! paths kubelet uses — which drivers' manifests hard-code — and unpublished and
//! unstaged when the pod goes ([`volumes`]).

pub mod expand;
pub mod registry;
pub mod stats;
pub mod volumes;

use std::path::{Path, PathBuf};

/// The generated gRPC code of the protocols (`agent/proto/csi`,
/// `agent/proto/pluginregistration`).
pub mod proto {
    /// CSI v1's Identity and Node services.
    pub mod csi {
        tonic::include_proto!("csi.v1");
    }
    /// kubelet's plugin registration.
    pub mod registration {
        tonic::include_proto!("pluginregistration");
    }
}

pub use registry::{Driver, Drivers};
pub use volumes::Csi;

/// Why a CSI call or registration failed; kubelet's wording where it has one.
#[derive(Debug, thiserror::Error)]
pub enum CsiError {
    #[error("driver name {0} not found in the list of registered CSI drivers")]
    NotRegistered(String),
    #[error("connecting to {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{call}: rpc error: code = {:?} desc = {}", status.code(), status.message())]
    Rpc {
        call: &'static str,
        status: tonic::Status,
    },
    #[error("{call}: the driver did not answer within {} s", secs)]
    TimedOut { call: &'static str, secs: u64 },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "volume {handle} of driver {driver} is not attached to this node yet (VolumeAttachment {attachment})"
    )]
    NotAttached {
        driver: String,
        handle: String,
        attachment: String,
    },
    #[error("volume mode {mode:?} not supported by driver {driver} (only supports {modes:?})")]
    LifecycleMode {
        mode: &'static str,
        driver: String,
        modes: Vec<String>,
    },
    #[error(
        "plugin {name:?} of type {kind:?} at {}: only CSIPlugin with a 1.x version is supported",
        socket.display()
    )]
    Unsupported {
        name: String,
        kind: String,
        socket: PathBuf,
    },
}

/// A gRPC channel to a unix socket (the URI is not used: every connection goes to
/// the socket).
pub async fn channel(path: &Path) -> Result<tonic::transport::Channel, CsiError> {
    let socket = path.to_path_buf();
    tonic::transport::Endpoint::from_static("http://csi.invalid")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let socket = socket.clone();
            async move {
                let s = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .map_err(|source| CsiError::Connect {
            path: path.to_path_buf(),
            source,
        })
}

/// Runs `call` with kubelet's CSI timeout, naming it in the error.
async fn rpc<T>(
    call: &'static str,
    secs: u64,
    f: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, CsiError> {
    match tokio::time::timeout(std::time::Duration::from_secs(secs), f).await {
        Err(_) => Err(CsiError::TimedOut { call, secs }),
        Ok(Err(status)) => Err(CsiError::Rpc { call, status }),
        Ok(Ok(r)) => Ok(r.into_inner()),
    }
}

/// Lowercase hex SHA-256 of `text` (kubelet names staging paths and
/// VolumeAttachments by it).
pub fn sha256_hex(text: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

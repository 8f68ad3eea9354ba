//! A CRI client for tests, from the same upstream protos kernlet serves: both services
//! over a node's unix socket, and `crictl` when the machine has it.

use std::path::{Path, PathBuf};

use kernlet::cri::proto::image_service_client::ImageServiceClient;
use kernlet::cri::proto::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint};

/// Both CRI services of one socket.
pub struct CriClient {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
}

impl CriClient {
    /// Connects to the socket at `path`.
    pub async fn connect(path: &Path) -> anyhow::Result<Self> {
        let path = path.to_path_buf();
        // The URI is not used: every connection goes to the socket.
        let channel = Endpoint::try_from("http://cri.invalid")?
            .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                let path = path.clone();
                async move {
                    let s = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                }
            }))
            .await?;
        Ok(Self {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }
}

/// `crictl` when the machine has one: `$CRICTL`, on the PATH, or beside the stock
/// control plane's binaries (`$KUBEBUILDER_ASSETS`). Debian's archive has none.
pub fn crictl() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CRICTL").map(PathBuf::from) {
        return p.is_file().then_some(p);
    }
    let dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let assets = std::env::var_os("KUBEBUILDER_ASSETS").map(PathBuf::from);
    dirs.into_iter()
        .chain(assets)
        .map(|d| d.join("crictl"))
        .find(|p| p.is_file())
}

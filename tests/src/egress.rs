//! How a real kube-apiserver reaches the kubelets of simulated nodes: its `cluster`
//! egress (logs, exec, attach, port-forward, the node proxy) goes through an HTTP
//! CONNECT proxy on a unix socket (`--egress-selector-config-file`), which dials the
//! node's address inside the current lab's bridge namespace. Nothing is routed from
//! the test's own network namespace into the lab.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::SocketAddr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The bridge namespace of the newest lab of this process (a pin path), where node
/// addresses live.
static LAB_NETWORK: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Makes `netns` the place node addresses are reached from (`None`: none).
pub fn set_lab_network(netns: Option<PathBuf>) {
    if let Ok(mut n) = LAB_NETWORK.lock() {
        *n = netns;
    }
}

/// The current lab's bridge namespace, if a lab is up.
pub fn lab_network() -> Option<PathBuf> {
    LAB_NETWORK.lock().ok().and_then(|n| n.clone())
}

/// The egress selector configuration that sends `cluster` traffic to `socket`.
pub fn selector_config(socket: &Path) -> String {
    format!(
        "apiVersion: apiserver.k8s.io/v1beta1\n\
         kind: EgressSelectorConfiguration\n\
         egressSelections:\n\
         - name: cluster\n  \
           connection:\n    \
             proxyProtocol: HTTPConnect\n    \
             transport:\n      \
               uds:\n        \
                 udsName: {}\n",
        socket.display()
    )
}

/// The CONNECT proxy; stops accepting when dropped.
pub struct EgressProxy {
    socket: PathBuf,
    stop: Arc<AtomicBool>,
}

impl EgressProxy {
    /// Listens on `socket` (a path that must not exist yet).
    pub fn start(socket: &Path) -> anyhow::Result<Self> {
        let listener = UnixListener::bind(socket)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    std::thread::spawn(move || {
                        let _ = serve(conn);
                    });
                }
            }
        });
        Ok(Self {
            socket: socket.to_path_buf(),
            stop,
        })
    }
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = UnixStream::connect(&self.socket);
    }
}

/// One CONNECT: the target dialed in the lab's namespace, then bytes both ways.
fn serve(conn: UnixStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let target = line
        .strip_prefix("CONNECT ")
        .and_then(|l| l.split_whitespace().next())
        .and_then(|t| t.parse::<SocketAddr>().ok());
    // The request's headers end with an empty line.
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
    }
    let mut writer = conn;
    let Some(target) = target else {
        writer.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")?;
        return Ok(());
    };
    let netns = lab_network();
    let upstream =
        match kernlet::sys::ns::connect_in(netns.as_deref(), target, Duration::from_secs(5)) {
            Ok(s) => s,
            Err(e) => {
                writer.write_all(format!("HTTP/1.1 502 Bad Gateway\r\n\r\n{e}").as_bytes())?;
                return Ok(());
            }
        };
    writer.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
    // What the reader buffered past the headers belongs to the tunnel.
    let early = reader.buffer().to_vec();
    let mut up_w = upstream.try_clone()?;
    up_w.write_all(&early)?;
    let mut up_r = upstream;
    let mut down_w = writer.try_clone()?;
    let to_node = std::thread::spawn(move || {
        let mut r = reader.into_inner();
        let _ = std::io::copy(&mut r, &mut up_w);
        let _ = up_w.shutdown(std::net::Shutdown::Write);
    });
    let mut buf = [0u8; 32 * 1024];
    loop {
        match up_r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if down_w.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = writer.shutdown(std::net::Shutdown::Write);
    let _ = to_node.join();
    Ok(())
}

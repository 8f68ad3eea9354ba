//! A real OCI registry for tests: Debian's `docker-registry` (distribution 2.8) in a
//! SimNode's network namespace, plain HTTP or TLS with htpasswd basic auth (which
//! makes clients use basic credentials or the token flow the registry answers with),
//! images pushed with skopeo.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::apiserver::pki::Ca;
use crate::simnode::SimNode;

/// Registry port on its node.
pub const PORT: u16 = 5000;

/// A running registry; stopped on drop.
pub struct Registry {
    child: Child,
    dir: PathBuf,
    /// `ip:port`.
    pub addr: String,
    /// The CA of its TLS certificate, when it serves TLS.
    pub ca_pem: Option<String>,
    /// User and password it requires, when it requires any.
    pub login: Option<(String, String)>,
}

impl Registry {
    /// Starts a registry on `node`; with `login`, it serves TLS and requires that user.
    pub fn start(node: &SimNode, login: Option<(&str, &str)>) -> anyhow::Result<Self> {
        let dir = node.dir("registry");
        std::fs::create_dir_all(dir.join("data"))?;
        let addr = format!("{}:{PORT}", node.address);
        let mut config = format!(
            "version: 0.1\nlog: {{level: info}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp:\n  addr: {addr}\n",
            dir.join("data").display()
        );
        let mut ca_pem = None;
        if let Some((user, pass)) = login {
            let ca = Ca::new()?;
            let pair = ca.serving("registry", &[], &[IpAddr::V4(node.address)])?;
            std::fs::write(dir.join("tls.crt"), &pair.cert_pem)?;
            std::fs::write(dir.join("tls.key"), &pair.key_pem)?;
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .context("htpasswd (Debian apache2-utils; `cargo xtask setup` installs it)")?;
            if !out.status.success() {
                bail!("htpasswd: {}", String::from_utf8_lossy(&out.stderr));
            }
            std::fs::write(dir.join("htpasswd"), &out.stdout)?;
            config.push_str(&format!(
                "  tls: {{certificate: {}, key: {}}}\nauth:\n  htpasswd: {{realm: kltest, path: {}}}\n",
                dir.join("tls.crt").display(),
                dir.join("tls.key").display(),
                dir.join("htpasswd").display()
            ));
            ca_pem = Some(ca.cert_pem.clone());
            std::fs::write(dir.join("ca.crt"), &ca.cert_pem)?;
        }
        std::fs::write(dir.join("config.yml"), config)?;
        let log = std::fs::File::create(dir.join("registry.log"))?;
        let child = node
            .command("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("docker-registry (Debian docker-registry; `cargo xtask setup` installs it)")?;
        let reg = Self {
            child,
            dir,
            addr,
            ca_pem,
            login: login.map(|(u, p)| (u.to_string(), p.to_string())),
        };
        let start = Instant::now();
        while !reg.log().contains("listening on") {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("the registry did not listen on {}: {}", reg.addr, reg.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(reg)
    }

    /// The registry's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// Where it stores blobs (`docker/registry/v2/blobs/sha256/<2>/<hex>/data`).
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The CA file of its certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Pushes `layout:tag` as `repo:tag` with skopeo, from `node`'s network namespace.
    pub fn push(&self, node: &SimNode, layout: &Path, tag: &str, repo: &str) -> anyhow::Result<()> {
        let mut cmd = node.command("skopeo");
        cmd.args(["copy", "--dest-tls-verify=false"]);
        if let Some((u, p)) = &self.login {
            cmd.arg(format!("--dest-creds={u}:{p}"));
        }
        cmd.arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo}:{tag}", self.addr));
        let out = cmd.output()?;
        if !out.status.success() {
            bail!("skopeo push: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

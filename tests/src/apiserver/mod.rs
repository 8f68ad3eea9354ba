//! The in-memory control plane: a real HTTPS server speaking enough of the Kubernetes
//! REST API, with the semantics recorded in `shared/k8s-fixtures`, that kube-rs and the
//! installed kubectl work against it unmodified.

pub mod authz;
pub mod defaults;
pub mod errors;
pub mod http;
pub mod metrics;
pub mod patch;
pub mod pki;
pub mod resources;
pub mod selectors;
pub mod storage;
pub mod store;
pub mod tables;
pub mod tokens;
pub mod workloads;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::Context as _;
use base64::Engine as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use serde_json::{Value, json};

use authz::Identity;
use http::Server;
use store::Store;

/// The bootstrap token every test cluster has (kubeadm's format `<id>.<secret>`).
pub const BOOTSTRAP_TOKEN: &str = "abcdef.0123456789abcdef";

/// Options for starting the in-memory apiserver.
#[derive(Clone, Debug)]
pub struct Options {
    /// Address to listen on; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Extra IP SANs on the serving certificate (e.g. the address on a lab bridge).
    pub extra_ips: Vec<IpAddr>,
    /// How many changes are kept for watch resumption before 410 Gone.
    pub history_window: usize,
    /// Node,RBAC authorization (true) or allow-all (false).
    pub enforce_authz: bool,
    /// Run the CSR approver and signer like kube-controller-manager does.
    pub csr_controllers: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            extra_ips: Vec::new(),
            history_window: 1000,
            enforce_authz: true,
            csr_controllers: true,
        }
    }
}

/// A running in-memory apiserver. Stops when dropped.
pub struct InMemoryApiServer {
    pub server: Arc<Server>,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for InMemoryApiServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Installs the process-wide rustls provider (aws-lc-rs) once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A kubeconfig with an embedded client certificate (or a token when `token` is set).
pub fn kubeconfig_yaml(
    server: &str,
    ca_pem: &str,
    user: &str,
    cert: Option<&pki::CertPair>,
    token: Option<&str>,
) -> String {
    let mut user_entry = json!({});
    if let Some(c) = cert {
        user_entry["client-certificate-data"] = json!(b64(&c.cert_pem));
        user_entry["client-key-data"] = json!(b64(&c.key_pem));
    }
    if let Some(t) = token {
        user_entry["token"] = json!(t);
    }
    let cfg = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "kernlet-test", "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}],
        "users": [{"name": user, "user": user_entry}],
        "contexts": [{"name": "kernlet-test", "context": {"cluster": "kernlet-test", "user": user}}],
        "current-context": "kernlet-test",
    });
    // JSON is YAML; kubectl and kube-rs read it either way.
    serde_json::to_string_pretty(&cfg).unwrap_or_default()
}

impl InMemoryApiServer {
    /// Starts the server and seeds what a fresh kubeadm cluster has.
    pub async fn start(opts: Options) -> anyhow::Result<Self> {
        install_crypto_provider();
        let ca = pki::Ca::new()?;
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .with_context(|| format!("bind {}", opts.listen))?;
        let addr = listener.local_addr()?;
        let mut ips: Vec<IpAddr> = vec![
            addr.ip(),
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from([10, 96, 0, 1]),
        ];
        ips.extend(opts.extra_ips.iter().copied());
        ips.dedup();
        let serving = ca.apiserver_serving(&ips)?;
        let server = Arc::new(Server {
            store: Arc::new(Store::new(opts.history_window)),
            ca,
            signer: tokens::TokenSigner::new(),
            enforce_authz: AtomicBool::new(opts.enforce_authz),
            static_tokens: std::sync::Mutex::new(Default::default()),
            bookmark_interval_ms: AtomicU64::new(5000),
            watch_seconds_cap: AtomicU64::new(0),
            stall: std::sync::Mutex::new(None),
            node_network: std::sync::Mutex::new(None),
            kubelet_client: std::sync::OnceLock::new(),
            csr_auto_approve: AtomicBool::new(true),
            signing_seconds: std::sync::atomic::AtomicI64::new(365 * 86400),
            token_seconds: std::sync::atomic::AtomicI64::new(0),
            node_refusals: std::sync::Mutex::new(Vec::new()),
            metrics_scrapes: std::sync::Mutex::new(Default::default()),
            requests: std::sync::Mutex::new(Default::default()),
        });
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-apiserver-", crate::hygiene::run_prefix()))
            .tempdir()?;
        let mut this = Self {
            server: Arc::clone(&server),
            addr,
            dir,
            tasks: Vec::new(),
        };
        this.seed()?;
        let tls = Arc::new(tls_config(&server.ca.cert_pem, &serving)?);
        this.tasks.push(tokio::spawn(accept_loop(
            listener,
            tls,
            Arc::clone(&server),
        )));
        if opts.csr_controllers {
            this.tasks
                .push(tokio::spawn(controllers::csr_controller(Arc::clone(
                    &server,
                ))));
        }
        this.tasks
            .push(tokio::spawn(controllers::namespace_controller(Arc::clone(
                &server,
            ))));
        this.tasks
            .push(tokio::spawn(storage::storage_controller(Arc::clone(
                &server,
            ))));
        this.tasks
            .push(tokio::spawn(workloads::statefulset_controller(Arc::clone(
                &server,
            ))));
        Ok(this)
    }

    /// `https://<addr>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn ca_pem(&self) -> &str {
        &self.server.ca.cert_pem
    }

    /// Directory holding the kubeconfigs this server wrote.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a kubeconfig for a client-certificate identity and returns its path.
    pub fn kubeconfig_for(&self, user: &str, groups: &[&str]) -> anyhow::Result<PathBuf> {
        let cert = self.server.ca.client(user, groups)?;
        let path = self
            .dir
            .path()
            .join(format!("{}.kubeconfig", user.replace(':', "_")));
        std::fs::write(
            &path,
            kubeconfig_yaml(&self.url(), self.ca_pem(), user, Some(&cert), None),
        )?;
        Ok(path)
    }

    /// The admin kubeconfig (`system:masters`).
    pub fn admin_kubeconfig(&self) -> anyhow::Result<PathBuf> {
        self.kubeconfig_for("kubernetes-admin", &["system:masters"])
    }

    /// Switches Node,RBAC authorization on or off.
    pub fn set_enforce_authz(&self, on: bool) {
        self.server.enforce_authz.store(on, Ordering::Relaxed);
    }

    /// Sets how many changes are kept for watch resumption (small windows force 410).
    pub fn set_history_window(&self, n: usize) {
        self.server.store.set_window(n);
    }

    /// Turns the auto-approval of node client CSRs on or off.
    pub fn set_csr_auto_approve(&self, on: bool) {
        self.server.csr_auto_approve.store(on, Ordering::Relaxed);
    }

    /// Sets the lifetime of issued certificates whose CSR names none.
    pub fn set_signing_duration(&self, d: std::time::Duration) {
        self.server.signing_seconds.store(
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Caps the lifetime of issued service account tokens (tests of their rotation).
    pub fn set_token_lifetime(&self, d: std::time::Duration) {
        self.server.token_seconds.store(
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Requests by node identities that were refused (see `Server::node_refusals`).
    pub fn node_refusals(&self) -> Vec<String> {
        self.server
            .node_refusals
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    /// Makes requests whose path starts with `prefix` wait `d` before their answer;
    /// `None` answers everything at once again.
    pub fn set_stall(&self, stall: Option<(&str, std::time::Duration)>) {
        if let Ok(mut s) = self.server.stall.lock() {
            *s = stall.map(|(p, d)| (p.to_string(), d));
        }
    }

    /// The network namespace (a pin path) in which this apiserver reaches kubelets for
    /// `pods/exec`, `attach`, `portforward` and `log` (a lab's bridge namespace).
    pub fn set_node_network(&self, netns: std::path::PathBuf) {
        if let Ok(mut n) = self.server.node_network.lock() {
            *n = Some(netns);
        }
    }

    /// Ends every watch after at most `d` (the real apiserver ends them after its
    /// `--min-request-timeout`, 30 to 60 minutes): clients must watch again, with
    /// whatever credentials they hold then.
    pub fn set_watch_timeout_cap(&self, d: std::time::Duration) {
        self.server
            .watch_seconds_cap
            .store(d.as_secs().max(1), Ordering::Relaxed);
    }

    /// Sets the progress-bookmark interval of watches.
    pub fn set_bookmark_interval(&self, d: std::time::Duration) {
        self.server.bookmark_interval_ms.store(
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn put(&self, plural: &str, group: &str, ns: &str, obj: Value) -> anyhow::Result<()> {
        let rt = resources::RESOURCES
            .iter()
            .find(|r| r.plural == plural && r.group == group)
            .context("unknown resource")?;
        self.server
            .store
            .create(rt, ns, obj)
            .map_err(|e| anyhow::anyhow!(e.message))?;
        Ok(())
    }

    fn seed(&self) -> anyhow::Result<()> {
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            self.put("namespaces", "", "", json!({"metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}))?;
            controllers::namespace_defaults(&self.server, ns);
        }
        self.put("services", "", "default", json!({"metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"], "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster", "sessionAffinity": "None",
                     "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": self.addr.port()}]}, "status": {"loadBalancer": {}}}))?;
        for (plural, obj) in authz::bootstrap_policy() {
            self.put(plural, "rbac.authorization.k8s.io", "", obj)?;
        }
        self.seed_kubeadm()?;
        Ok(())
    }

    /// What `kubeadm init` creates for joining (see [`kubeadm_objects`]).
    fn seed_kubeadm(&self) -> anyhow::Result<()> {
        for (plural, group, ns, obj) in kubeadm_objects(&self.url(), self.ca_pem())? {
            self.put(plural, group, ns, obj)?;
        }
        Ok(())
    }
}

/// The objects `kubeadm init` creates for joining nodes: the bootstrap token, a signed
/// `cluster-info`, `kubelet-config` (from the fixture), and the RBAC for bootstrappers.
/// Returned as `(plural, group, namespace, object)` so any control plane can apply them.
pub fn kubeadm_objects(
    server_url: &str,
    ca_pem: &str,
) -> anyhow::Result<Vec<(&'static str, &'static str, &'static str, Value)>> {
    let (id, secret) = tokens::parse_bootstrap_token(BOOTSTRAP_TOKEN).context("bootstrap token")?;
    let group = "system:bootstrappers:kubeadm:default-node-token";
    let rbac = "rbac.authorization.k8s.io";
    let mut out = Vec::new();
    out.push(("secrets", "", "kube-system", json!({"metadata": {"name": format!("bootstrap-token-{id}")}, "type": "bootstrap.kubernetes.io/token",
        "data": {"token-id": b64(id), "token-secret": b64(secret), "usage-bootstrap-authentication": b64("true"), "usage-bootstrap-signing": b64("true"), "auth-extra-groups": b64(group)}})));
    let kubeconfig = format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: {server_url}\n  name: \"\"\ncontexts: null\ncurrent-context: \"\"\nkind: Config\npreferences: {{}}\nusers: null\n",
        b64(ca_pem)
    );
    let jws = controllers::detached_jws(&kubeconfig, id, secret);
    out.push(("configmaps", "", "kube-public", json!({"metadata": {"name": "cluster-info"}, "data": {"kubeconfig": kubeconfig, format!("jws-kubeconfig-{id}"): jws}})));
    out.push(("roles", rbac, "kube-public", json!({"metadata": {"name": "kubeadm:bootstrap-signer-clusterinfo"}, "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["cluster-info"], "verbs": ["get"]}]})));
    out.push(("rolebindings", rbac, "kube-public", json!({"metadata": {"name": "kubeadm:bootstrap-signer-clusterinfo"}, "roleRef": {"apiGroup": rbac, "kind": "Role", "name": "kubeadm:bootstrap-signer-clusterinfo"}, "subjects": [{"apiGroup": rbac, "kind": "User", "name": "system:anonymous"}]})));
    // Built in, so the kit runs where the source tree is not (the VM of `vm-test`).
    let kubelet_config: Value = serde_json::from_str(include_str!(
        "../../../fixtures/k8s/bootstrap/00-kubelet-config.json"
    ))
    .context("parse fixtures/k8s/bootstrap/00-kubelet-config.json")?;
    let data = kubelet_config.get("data").cloned().unwrap_or(json!({}));
    out.push((
        "configmaps",
        "",
        "kube-system",
        json!({"metadata": {"name": "kubelet-config"}, "data": data}),
    ));
    out.push(("roles", rbac, "kube-system", json!({"metadata": {"name": "kubeadm:kubelet-config"}, "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["kubelet-config"], "verbs": ["get"]}]})));
    out.push(("rolebindings", rbac, "kube-system", json!({"metadata": {"name": "kubeadm:kubelet-config"}, "roleRef": {"apiGroup": rbac, "kind": "Role", "name": "kubeadm:kubelet-config"},
        "subjects": [{"apiGroup": rbac, "kind": "Group", "name": "system:nodes"}, {"apiGroup": rbac, "kind": "Group", "name": group}]})));
    for (name, role, subject) in [
        (
            "kubeadm:kubelet-bootstrap",
            "system:node-bootstrapper",
            group,
        ),
        (
            "kubeadm:node-autoapprove-bootstrap",
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            group,
        ),
        (
            "kubeadm:node-autoapprove-certificate-rotation",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            "system:nodes",
        ),
    ] {
        out.push(("clusterrolebindings", rbac, "", json!({"metadata": {"name": name}, "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": role}, "subjects": [{"apiGroup": rbac, "kind": "Group", "name": subject}]})));
    }
    Ok(out)
}

fn tls_config(ca_pem: &str, serving: &pki::CertPair) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::clone(&provider),
    )
    .allow_unauthenticated()
    .build()?;
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(serving.cert_pem.as_bytes()).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes())?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    server: Arc<Server>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            // The certificate's validity is checked again on every request, as the
            // real x509 authenticator does: a connection may outlive its certificate.
            let identity = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| {
                    let (user, groups) = pki::subject_identity(c.as_ref())?;
                    let (not_before, not_after) = pki::validity_window(c.as_ref())?;
                    let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
                    Some(http::ClientCert {
                        identity: Identity::new(&user, &groups),
                        not_before,
                        not_after,
                    })
                });
            let svc = hyper::service::service_fn(move |req| {
                Arc::clone(&server).handle(req, identity.clone())
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
    }
}

pub mod controllers;

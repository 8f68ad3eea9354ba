//! One interface over the two control planes: the in-memory one (default) and a real
//! one when `KUBEBUILDER_ASSETS` names the stock binaries. Tests use only this, so
//! every test can run against either. The controller hooks go through the API, so they
//! behave the same on both.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DynamicObject, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::ApiResource;
use serde_json::{Value, json};

use crate::apiserver::{self, InMemoryApiServer, Options};
use crate::real::RealControlPlane;

/// A running control plane.
#[allow(
    clippy::large_enum_variant,
    reason = "one per test; never moved in a hot path"
)]
pub enum Cluster {
    InMemory(InMemoryApiServer),
    Real(RealControlPlane),
}

impl Cluster {
    /// The real control plane when `KUBEBUILDER_ASSETS` is set, else the in-memory one.
    /// Either listens on loopback; `extra_ips` are added to the serving certificate for
    /// addresses it is forwarded to (the lab bridge, see [`crate::simnode::Lab::forward`]).
    pub async fn start(extra_ips: &[IpAddr]) -> anyhow::Result<Self> {
        Self::start_with(extra_ips, false).await
    }

    /// As [`Cluster::start`], with kube-scheduler and the EndpointSlice controllers
    /// running in real mode (for a cluster people and the upstream e2e suite use, where
    /// nobody binds pods or writes slices by hand).
    pub async fn start_scheduled(extra_ips: &[IpAddr]) -> anyhow::Result<Self> {
        Self::start_with(extra_ips, true).await
    }

    /// As [`Cluster::start`], with node certificates and watches that live
    /// `lifetimes` (the controller-manager's signing duration and the apiserver's
    /// minimum request timeout in real mode, the in-memory server's knobs otherwise).
    pub async fn start_short_lived(
        extra_ips: &[IpAddr],
        lifetimes: crate::real::Lifetimes,
    ) -> anyhow::Result<Self> {
        let cluster = Self::start_opts(extra_ips, false, lifetimes).await?;
        if let Some(s) = cluster.in_memory() {
            if let Some(c) = lifetimes.certificates {
                s.set_signing_duration(c);
            }
            if let Some(w) = lifetimes.watches {
                s.set_watch_timeout_cap(w);
            }
        }
        Ok(cluster)
    }

    async fn start_with(extra_ips: &[IpAddr], scheduler: bool) -> anyhow::Result<Self> {
        Self::start_opts(extra_ips, scheduler, crate::real::Lifetimes::default()).await
    }

    async fn start_opts(
        extra_ips: &[IpAddr],
        scheduler: bool,
        lifetimes: crate::real::Lifetimes,
    ) -> anyhow::Result<Self> {
        apiserver::install_crypto_provider();
        match std::env::var_os("KUBEBUILDER_ASSETS") {
            Some(assets) => {
                let cp = RealControlPlane::start_with(
                    std::path::Path::new(&assets),
                    extra_ips,
                    scheduler,
                    lifetimes,
                )?;
                let cluster = Self::Real(cp);
                cluster.apply_kubeadm_objects().await?;
                // As a cluster that has been up a while: pods in `default` admitted.
                cluster.create_namespace("default").await?;
                Ok(cluster)
            }
            None => Ok(Self::InMemory(
                InMemoryApiServer::start(Options {
                    extra_ips: extra_ips.to_vec(),
                    ..Options::default()
                })
                .await?,
            )),
        }
    }

    /// The in-memory server, for knobs only it has (history window, authz switch).
    pub fn in_memory(&self) -> Option<&InMemoryApiServer> {
        match self {
            Self::InMemory(s) => Some(s),
            Self::Real(_) => None,
        }
    }

    pub fn url(&self) -> String {
        match self {
            Self::InMemory(s) => s.url(),
            Self::Real(r) => r.url.clone(),
        }
    }

    pub fn ca_pem(&self) -> &str {
        match self {
            Self::InMemory(s) => s.ca_pem(),
            Self::Real(r) => &r.ca.cert_pem,
        }
    }

    /// The loopback address the control plane listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        let url = self.url();
        url.trim_start_matches("https://")
            .parse()
            .unwrap_or_else(|_| ([127, 0, 0, 1], 6443).into())
    }

    /// A kubeconfig for `user` that reaches the control plane at `server` (a forwarded
    /// address on the lab bridge), written to `path`.
    pub fn kubeconfig_at(
        &self,
        server: &str,
        user: &str,
        groups: &[&str],
        path: &std::path::Path,
    ) -> anyhow::Result<()> {
        let cert = match self {
            Self::InMemory(s) => s.server.ca.client(user, groups)?,
            Self::Real(r) => r.ca.client(user, groups)?,
        };
        std::fs::write(
            path,
            apiserver::kubeconfig_yaml(server, self.ca_pem(), user, Some(&cert), None),
        )?;
        Ok(())
    }

    /// A kubeconfig for a client-certificate identity (CN = user, O = group).
    pub fn kubeconfig_for(&self, user: &str, groups: &[&str]) -> anyhow::Result<PathBuf> {
        match self {
            Self::InMemory(s) => s.kubeconfig_for(user, groups),
            Self::Real(r) => {
                let cert = r.ca.client(user, groups)?;
                let path = r
                    .dir()
                    .join(format!("{}.kubeconfig", user.replace(':', "_")));
                std::fs::write(
                    &path,
                    apiserver::kubeconfig_yaml(&r.url, &r.ca.cert_pem, user, Some(&cert), None),
                )?;
                Ok(path)
            }
        }
    }

    /// A kubeconfig for a client-certificate identity whose certificate expires
    /// `seconds` from now.
    pub fn expiring_kubeconfig(
        &self,
        user: &str,
        groups: &[&str],
        seconds: i64,
        path: &std::path::Path,
    ) -> anyhow::Result<()> {
        let cert = match self {
            Self::InMemory(s) => s.server.ca.client_for(user, groups, seconds)?,
            Self::Real(r) => r.ca.client_for(user, groups, seconds)?,
        };
        std::fs::write(
            path,
            apiserver::kubeconfig_yaml(&self.url(), self.ca_pem(), user, Some(&cert), None),
        )?;
        Ok(())
    }

    pub fn admin_kubeconfig(&self) -> anyhow::Result<PathBuf> {
        self.kubeconfig_for("kubernetes-admin", &["system:masters"])
    }

    /// A node's kubeconfig (`system:node:<name>` in `system:nodes`).
    pub fn node_kubeconfig(&self, node: &str) -> anyhow::Result<PathBuf> {
        self.kubeconfig_for(&format!("system:node:{node}"), &["system:nodes"])
    }

    /// A kube-rs client from a kubeconfig file.
    pub async fn client_from(path: &std::path::Path) -> anyhow::Result<kube::Client> {
        let kc = Kubeconfig::read_from(path).with_context(|| format!("read {}", path.display()))?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
        Ok(kube::Client::try_from(cfg)?)
    }

    pub async fn admin(&self) -> anyhow::Result<kube::Client> {
        Self::client_from(&self.admin_kubeconfig()?).await
    }

    pub async fn node_client(&self, node: &str) -> anyhow::Result<kube::Client> {
        Self::client_from(&self.node_kubeconfig(node)?).await
    }

    /// The kubeadm-style bootstrap token for `kernlet join`.
    pub fn bootstrap_token(&self) -> &'static str {
        apiserver::BOOTSTRAP_TOKEN
    }

    async fn apply_kubeadm_objects(&self) -> anyhow::Result<()> {
        let client = self.admin().await?;
        for (plural, group, ns, obj) in apiserver::kubeadm_objects(&self.url(), self.ca_pem())? {
            let rt = apiserver::resources::RESOURCES
                .iter()
                .find(|r| r.plural == plural && r.group == group)
                .context("resource")?;
            let ar = ApiResource {
                group: rt.group.into(),
                version: rt.version.into(),
                api_version: rt.api_version(),
                kind: rt.kind.into(),
                plural: rt.plural.into(),
            };
            let api: Api<DynamicObject> = if rt.namespaced {
                Api::namespaced_with(client.clone(), ns, &ar)
            } else {
                Api::all_with(client.clone(), &ar)
            };
            let mut obj = obj;
            obj["apiVersion"] = json!(rt.api_version());
            obj["kind"] = json!(rt.kind);
            let dynamic: DynamicObject = serde_json::from_value(obj)?;
            match api.create(&PostParams::default(), &dynamic).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Requests by node identities the authorizer or NodeRestriction refused; `None`
    /// against a real control plane, which keeps no such record.
    pub fn node_refusals(&self) -> Option<Vec<String>> {
        self.in_memory().map(InMemoryApiServer::node_refusals)
    }

    /// How many `method` requests for `path` the apiserver answered; `None` against a
    /// real control plane (its `apiserver_request_total` does not name objects).
    pub fn requests_to(&self, method: &str, path: &str) -> Option<u64> {
        self.in_memory().map(|s| {
            s.server
                .requests
                .lock()
                .map(|m| {
                    m.get(&(method.to_string(), path.to_string()))
                        .copied()
                        .unwrap_or(0)
                })
                .unwrap_or(0)
        })
    }

    /// The scheduler's part: binds a pod to a node.
    pub async fn bind_pod(&self, ns: &str, pod: &str, node: &str) -> anyhow::Result<()> {
        let api: Api<Pod> = Api::namespaced(self.admin().await?, ns);
        let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod}, "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
        match api
            .create_subresource::<Value, Value>("binding", pod, &PostParams::default(), &binding)
            .await
        {
            Ok(_) => Ok(()),
            // Bound there already (by a scheduler): what the caller wanted.
            Err(kube::Error::Api(e))
                if e.code == 409
                    && api
                        .get(pod)
                        .await?
                        .spec
                        .and_then(|s| s.node_name)
                        .as_deref()
                        == Some(node) =>
            {
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// What `kubectl certificate approve` does.
    pub async fn approve_csr(&self, name: &str) -> anyhow::Result<()> {
        use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
        let api: Api<CertificateSigningRequest> = Api::all(self.admin().await?);
        let mut csr = api.get(name).await?;
        let status = csr.status.get_or_insert_with(Default::default);
        status.conditions.get_or_insert_with(Vec::new).push(serde_json::from_value(json!({
            "type": "Approved", "status": "True", "reason": "KernletTestApprove", "message": "approved by a test"
        }))?);
        api.replace_subresource("approval", name, &PostParams::default(), &csr)
            .await?;
        Ok(())
    }

    /// Creates namespace `name` and waits for its `default` ServiceAccount, which the
    /// controller-manager adds shortly after: pods are refused until it is there.
    pub async fn create_namespace(&self, name: &str) -> anyhow::Result<()> {
        use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
        let admin = self.admin().await?;
        let ns: Api<Namespace> = Api::all(admin.clone());
        match ns
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": name}}))?,
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        let sas: Api<ServiceAccount> = Api::namespaced(admin, name);
        let start = std::time::Instant::now();
        while sas.get_opt("default").await?.is_none() {
            anyhow::ensure!(
                start.elapsed() < std::time::Duration::from_secs(60),
                "namespace {name} got no default ServiceAccount within 60 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// What `kubectl certificate deny` does.
    pub async fn deny_csr(&self, name: &str, message: &str) -> anyhow::Result<()> {
        use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
        let api: Api<CertificateSigningRequest> = Api::all(self.admin().await?);
        let mut csr = api.get(name).await?;
        let status = csr.status.get_or_insert_with(Default::default);
        status
            .conditions
            .get_or_insert_with(Vec::new)
            .push(serde_json::from_value(json!({
                "type": "Denied", "status": "True", "reason": "KernletTestDeny", "message": message
            }))?);
        api.replace_subresource("approval", name, &PostParams::default(), &csr)
            .await?;
        Ok(())
    }

    /// The EndpointSlice controller's part for one Service: one slice from the pods its
    /// selector matches, with ready/serving/terminating from the pods' status, each
    /// endpoint's zone from its node's `topology.kubernetes.io/zone`, hints for the
    /// Service's `trafficDistribution` (PreferSameNode: `forNodes` and `forZones`;
    /// PreferSameZone and PreferClose: `forZones`), and the slice's
    /// `endpoints.kubernetes.io/last-change-trigger-time` (now).
    pub async fn sync_endpointslice(&self, ns: &str, service: &str) -> anyhow::Result<()> {
        use k8s_openapi::api::discovery::v1::EndpointSlice;
        let client = self.admin().await?;
        let svc = Api::<Service>::namespaced(client.clone(), ns)
            .get(service)
            .await?;
        let spec = svc.spec.clone().unwrap_or_default();
        let selector = spec.selector.clone().unwrap_or_default();
        let sel = selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let pods = Api::<Pod>::namespaced(client.clone(), ns)
            .list(&kube::api::ListParams::default().labels(&sel))
            .await?;
        let zones: std::collections::BTreeMap<String, String> =
            Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
                .list(&Default::default())
                .await?
                .items
                .into_iter()
                .filter_map(|n| {
                    let zone = n
                        .metadata
                        .labels
                        .as_ref()?
                        .get("topology.kubernetes.io/zone")?
                        .clone();
                    Some((n.metadata.name?, zone))
                })
                .collect();
        let distribution = spec.traffic_distribution.clone().unwrap_or_default();
        let mut endpoints = Vec::new();
        for p in pods
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some())
        {
            let status = p.status.clone().unwrap_or_default();
            let ready = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let terminating = p.metadata.deletion_timestamp.is_some();
            let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
            let zone = node.as_ref().and_then(|n| zones.get(n));
            let mut ep = json!({
                "addresses": [status.pod_ip],
                "conditions": {"ready": ready && !terminating, "serving": ready, "terminating": terminating},
                "nodeName": node,
                "targetRef": {"kind": "Pod", "namespace": ns, "name": p.metadata.name, "uid": p.metadata.uid},
            });
            if let Some(z) = zone {
                ep["zone"] = json!(z);
            }
            match (distribution.as_str(), &node, zone) {
                ("PreferSameNode", Some(n), Some(z)) => {
                    ep["hints"] = json!({"forNodes": [{"name": n}], "forZones": [{"name": z}]});
                }
                ("PreferSameZone" | "PreferClose", _, Some(z)) => {
                    ep["hints"] = json!({"forZones": [{"name": z}]});
                }
                _ => {}
            }
            endpoints.push(ep);
        }
        let pod0 = pods.items.first();
        let ports: Vec<Value> = spec.ports.iter().flatten().map(|sp| {
            use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
            let port = match &sp.target_port {
                Some(IntOrString::Int(n)) => Some(*n),
                Some(IntOrString::String(name)) => pod0.and_then(|p| p.spec.as_ref()).and_then(|s| {
                    s.containers.iter().flat_map(|c| c.ports.iter().flatten()).find(|cp| cp.name.as_deref() == Some(name)).map(|cp| cp.container_port)
                }),
                None => Some(sp.port),
            };
            json!({"name": sp.name.clone().unwrap_or_default(), "port": port, "protocol": sp.protocol.clone().unwrap_or_else(|| "TCP".into())})
        }).collect();
        let name = format!("{service}-kltest");
        let slice: EndpointSlice = serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": service, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                         "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": service, "uid": svc.metadata.uid, "controller": true, "blockOwnerDeletion": true}]},
            "addressType": "IPv4", "endpoints": endpoints, "ports": ports,
        }))?;
        let api: Api<EndpointSlice> = Api::namespaced(client, ns);
        match api.get_opt(&name).await? {
            Some(existing) => {
                let mut slice = slice;
                slice.metadata.resource_version = existing.metadata.resource_version;
                api.replace(&name, &PostParams::default(), &slice).await?;
            }
            None => {
                api.create(&PostParams::default(), &slice).await?;
            }
        }
        Ok(())
    }
}

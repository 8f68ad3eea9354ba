//! A control plane and one kernlet node with busybox in its image store: what most
//! end-to-end tests of the pod manager (and `cargo xtask bench pods`) stand on.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};

use crate::cluster::Cluster;
use crate::simnode::{BRIDGE_IP, Forward, Lab, SimNode};

/// The node's network.
pub enum Network<'a> {
    /// Pods with loopback only; `kernlet run` gets these extra flags.
    Loopback(&'a [&'a str]),
    /// The pod network and overlay (pod CIDR 10.244.1.0/24), as a cluster with a CNI.
    Overlay,
}

/// The cluster and its node (dropped in this order: the control plane, the lab's
/// forward and namespaces, then the node).
pub struct OneNode {
    pub cluster: Cluster,
    _fwd: Forward,
    _lab: Lab,
    pub node: SimNode,
    /// Pods of `default`, as the cluster's admin.
    pub pods: Api<Pod>,
}

impl OneNode {
    /// Starts the control plane and node `name` in a lab labelled `label`; returns once
    /// the node has registered.
    pub async fn start(label: &str, name: &str, network: Network<'_>) -> anyhow::Result<Self> {
        let cluster = Cluster::start(&[BRIDGE_IP.into()]).await?;
        let mut lab = Lab::new(label)?;
        let fwd = lab.forward(0, cluster.addr())?;
        let mut node = lab.add_node(name)?;
        node.import_busybox()?;
        match network {
            Network::Loopback(flags) => {
                node.start_agent(&cluster, &fwd.url, flags)?;
            }
            Network::Overlay => {
                crate::overlay::apply_node_rbac(&cluster)?;
                crate::overlay::start_overlay_node(&cluster, &fwd.url, &mut node, 1, &[]).await?;
            }
        }
        let admin = cluster.admin().await?;
        let nodes: Api<Node> = Api::all(admin.clone());
        crate::wait_for("the node", Duration::from_secs(60), async || {
            nodes.get_opt(name).await.ok()?.map(|_| ())
        })
        .await;
        Ok(Self {
            cluster,
            _fwd: fwd,
            _lab: lab,
            node,
            pods: Api::namespaced(admin, "default"),
        })
    }

    /// Kills the agent (SIGKILL: its pods run on) and starts it again with `flags`.
    pub fn restart_agent_killed(&mut self, flags: &[&str]) -> anyhow::Result<()> {
        self.node.kill9_kernlet()?;
        self.node
            .start_agent(&self.cluster, &self._fwd.url, flags)?;
        Ok(())
    }

    /// Pod `name` of `default` once it has ended (phase Succeeded or Failed), waited for
    /// up to `within`.
    pub async fn ended(&self, name: &str, within: Duration) -> Pod {
        crate::wait_for(&format!("pod {name} ended"), within, async || {
            let p = self.pods.get(name).await.ok()?;
            let phase = p.status.as_ref()?.phase.clone()?;
            matches!(phase.as_str(), "Succeeded" | "Failed").then_some(p)
        })
        .await
    }

    /// Creates `pod` in `default` and binds it to the node, as the scheduler would;
    /// returns its name.
    pub async fn create_bound(&self, pod: &Pod) -> anyhow::Result<String> {
        let name = pod
            .metadata
            .name
            .clone()
            .ok_or_else(|| anyhow::anyhow!("the pod has no name"))?;
        self.pods.create(&PostParams::default(), pod).await?;
        self.cluster
            .bind_pod("default", &name, &self.node.name)
            .await?;
        Ok(name)
    }
}

//! The node's part of a volume expansion, as kubelet does it: once the resizer has
//! grown the volume and marked the claim `allocatedResourceStatuses.storage:
//! NodeResizePending`, a driver with EXPAND_VOLUME is asked `NodeExpandVolume` for the
//! PV's new capacity on the published (and staged) volume, and the claim's status gets
//! the new capacity; a failure marks it `NodeResizeFailed`. A driver without the
//! capability needs no node step: the claim is finished at once.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::proto::csi::node_client::NodeClient;
use super::proto::csi::{CapacityRange, NodeExpandVolumeRequest};
use super::{Csi, CsiError, channel, rpc};
use crate::model::claims::{Mountable, Plugin};

/// What happened to a pending expansion.
#[derive(Debug, PartialEq, Eq)]
pub enum Expanded {
    /// None was pending.
    Nothing,
    /// The volume now has this capacity (the claim says so).
    To(String),
}

fn api(what: String) -> impl FnOnce(kube::Error) -> CsiError {
    move |source| CsiError::Api { what, source }
}

/// Expands `m` on the node when its claim says the node's part is pending.
pub async fn expand_if_pending(csi: &Csi, m: &Mountable) -> Result<Expanded, CsiError> {
    let Plugin::Csi(s) = &m.plugin else {
        return Ok(Expanded::Nothing);
    };
    if s.inline || m.claim.is_empty() {
        return Ok(Expanded::Nothing);
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(csi.client.get(), &m.namespace);
    let pvc = pvcs
        .get(&m.claim)
        .await
        .map_err(api(format!("claim {}/{}", m.namespace, m.claim)))?;
    let pending = pvc
        .status
        .as_ref()
        .and_then(|st| st.allocated_resource_statuses.as_ref())
        .and_then(|a| a.get("storage"))
        .is_some_and(|v| v == "NodeResizePending");
    if !pending {
        return Ok(Expanded::Nothing);
    }
    let pvs: Api<PersistentVolume> = Api::all(csi.client.get());
    let pv = pvs.get(&m.pv).await.map_err(api(format!("PV {}", m.pv)))?;
    let capacity = pv
        .spec
        .as_ref()
        .and_then(|sp| sp.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .map(|q| q.0.clone())
        .unwrap_or_default();
    let bytes = crate::model::quantity::Quantity::parse(&capacity)
        .map(|q| i64::try_from(q.value()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let driver = csi
        .drivers
        .get(&s.driver)
        .ok_or_else(|| CsiError::NotRegistered(s.driver.clone()))?;
    let result = if driver.expand {
        let mut node = NodeClient::new(channel(&driver.endpoint).await?);
        let staging = csi.staging_of(&driver, s, m);
        let req = NodeExpandVolumeRequest {
            volume_id: s.handle.clone(),
            volume_path: m.path.display().to_string(),
            capacity_range: Some(CapacityRange {
                required_bytes: bytes,
                limit_bytes: 0,
            }),
            staging_target_path: staging.map(|p| p.display().to_string()).unwrap_or_default(),
            volume_capability: Some(super::volumes::capability(s, m.block)),
            secrets: Default::default(),
        };
        rpc("NodeExpandVolume", 120, node.node_expand_volume(req))
            .await
            .map(|_| ())
    } else {
        Ok(())
    };
    let status = match &result {
        Ok(()) => json!({"status": {"capacity": {"storage": capacity},
            "allocatedResourceStatuses": {"storage": null}, "conditions": []}}),
        Err(_) => json!({"status": {"allocatedResourceStatuses": {"storage": "NodeResizeFailed"}}}),
    };
    pvcs.patch_status(&m.claim, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map_err(api(format!(
            "the status of claim {}/{}",
            m.namespace, m.claim
        )))?;
    result.map(|()| Expanded::To(capacity))
}

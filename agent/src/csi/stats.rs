//! CSI volume statistics, as kubelet's volume stats calculator gathers them: every
//! period, each set-up CSI volume of a driver with GET_VOLUME_STATS is asked
//! `NodeGetVolumeStats` (its publish path, and staging path when staged), and the
//! answer is kept beside the volume's record
//! (`<state-dir>/pods/<uid>/volumes/claims/<volume>.stats`), where `/stats/summary` and
//! the `kubelet_volume_stats_*` metrics read it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use super::proto::csi::NodeGetVolumeStatsRequest;
use super::proto::csi::node_client::NodeClient;
use super::proto::csi::volume_usage::Unit;
use super::{Csi, channel, rpc};
use crate::model::claims::{Mountable, Plugin};

/// Where a volume's last statistics are kept.
pub fn stats_path(state_dir: &Path, uid: &str, volume: &str) -> PathBuf {
    state_dir
        .join("pods")
        .join(uid)
        .join("volumes/claims")
        .join(format!("{volume}.stats"))
}

/// The statistics of one volume from its driver, as `/stats/summary` words them.
async fn of(csi: &Csi, m: &Mountable) -> Option<Value> {
    let Plugin::Csi(s) = &m.plugin else {
        return None;
    };
    // kubelet reads no usage of a raw block volume.
    if m.block {
        return None;
    }
    let driver = csi.drivers.get(&s.driver).filter(|d| d.volume_stats)?;
    // Only a volume still published, and not while one is torn down.
    let _teardown = csi.teardowns.lock().await;
    if !crate::sys::mount::is_mount_point(&m.path) {
        return None;
    }
    let mut node = NodeClient::new(channel(&driver.endpoint).await.ok()?);
    let staging = csi.staging_of(&driver, s, m);
    let req = NodeGetVolumeStatsRequest {
        volume_id: s.handle.clone(),
        volume_path: m.path.display().to_string(),
        staging_target_path: staging.map(|p| p.display().to_string()).unwrap_or_default(),
    };
    let got = rpc("NodeGetVolumeStats", 30, node.node_get_volume_stats(req))
        .await
        .map_err(|e| tracing::debug!(volume = %m.volume, "volume stats: {e}"))
        .ok()?;
    let mut v = json!({"time": k8s_openapi::jiff::Timestamp::now().to_string()});
    for u in got.usage {
        let u64_of = |n: i64| u64::try_from(n).unwrap_or(0);
        match Unit::try_from(u.unit) {
            Ok(Unit::Bytes) => {
                v["capacityBytes"] = json!(u64_of(u.total));
                v["availableBytes"] = json!(u64_of(u.available));
                v["usedBytes"] = json!(u64_of(u.used));
            }
            Ok(Unit::Inodes) => {
                v["inodes"] = json!(u64_of(u.total));
                v["inodesFree"] = json!(u64_of(u.available));
                v["inodesUsed"] = json!(u64_of(u.used));
            }
            _ => {}
        }
    }
    if let Some(c) = got.volume_condition {
        v["volumeHealthStats"] = json!({"abnormal": c.abnormal});
    }
    Some(v)
}

/// Gathers every period until `stop`.
pub async fn collect(csi: Csi, period: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let pods: Vec<String> = std::fs::read_dir(csi.state_dir.join("pods"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        for uid in pods {
            for m in crate::runtime::claimed_volumes::claimed_in(&csi.state_dir, &uid) {
                if !m.ready {
                    continue;
                }
                if let Some(v) = of(&csi, &m).await {
                    let path = stats_path(&csi.state_dir, &uid, &m.volume);
                    let _ = crate::runtime::write_json(&path, &v);
                }
            }
        }
    }
}

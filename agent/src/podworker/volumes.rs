//! Writing a pod's volumes before its containers start.

use super::*;

/// Why a pod's volume could not be made ready.
#[derive(Debug, thiserror::Error)]
pub(super) enum VolumeError {
    #[error(transparent)]
    Source(#[from] crate::controllers::pod_sources::SourceError),
    #[error("volume {volume:?}: the apiserver did not answer within {} s", READ_TIMEOUT.as_secs())]
    TimedOut { volume: String },
    #[error(transparent)]
    Mount(#[from] crate::runtime::RuntimeError),
    #[error("volume {volume:?}: {source}")]
    Write {
        volume: String,
        #[source]
        source: std::io::Error,
    },
}

/// How long the reads of one volume's sources may take: a worker waiting on a slow
/// apiserver holds up only its own pod, and not for the client's 295 s.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

impl Runner {
    /// Writes the files of the pod's configMap, secret, downwardAPI and projected
    /// volumes before its containers start, then keeps them current: every
    /// `sync_frequency` the sources are read again and a changed volume is swapped
    /// whole (see [`crate::runtime::volume_files`]); a service account token is
    /// requested again once 80 % of its lifetime has passed. A source that cannot be
    /// read keeps the volume as it was (the error is logged); before the first write
    /// it holds the pod's containers back.
    pub(super) fn prepare_volumes(&mut self, uid: &str, pod: &Pod) -> Result<(), VolumeError> {
        use crate::runtime::volume_files;
        let Source::Api { client, handle, .. } = &self.source else {
            return Ok(());
        };
        if is_static(pod) {
            return Ok(());
        }
        let written = |v: &&k8s_openapi::api::core::v1::Volume| {
            v.config_map.is_some()
                || v.secret.is_some()
                || v.downward_api.is_some()
                || v.projected.is_some()
        };
        let volumes: Vec<_> = pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .filter(written)
            .collect();
        if volumes.is_empty() {
            return Ok(());
        }
        // In memory, never on disk.
        self.rt.mount_written_volumes(uid)?;
        let fs_group = pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.as_ref()?.fs_group)
            .and_then(|g| u32::try_from(g).ok());
        let fs_user =
            crate::model::pod_lifecycle::fs_user(&spec_of(pod)).and_then(|u| u32::try_from(u).ok());
        let now = Instant::now();
        let sb_ip = self
            .rt
            .sandbox(uid)
            .ok()
            .flatten()
            .map(|s| s.ip)
            .unwrap_or_default();
        for vol in volumes {
            let dir = self.rt.prepared_volume(uid, &vol.name);
            let current = volume_files::current(&dir);
            let key = (uid.to_string(), vol.name.clone());
            if current.is_some() && self.volume_checks.get(&key).is_some_and(|next| now < *next) {
                continue;
            }
            // Tokens still fresh are kept; the earliest refresh sets the next check.
            let epoch = k8s_openapi::jiff::Timestamp::now().as_second();
            let mut next = now + self.timing.sync_frequency;
            let mut keep_tokens = std::collections::BTreeMap::new();
            for (path, (content, _)) in current.iter().flatten() {
                if let Some(due) = volume_files::token_refresh_at(content)
                    && due > epoch
                {
                    keep_tokens.insert(path.clone(), content.clone());
                    let wait = Duration::from_secs(u64::try_from(due - epoch).unwrap_or(0));
                    next = next.min(now + wait);
                }
            }
            let ctx = crate::controllers::pod_sources::VolumeContext {
                node_ip: self.node_ip.clone(),
                pod_ip: sb_ip.clone(),
                allocatable: self.allocatable,
                keep_tokens,
                private_tokens: fs_user.is_some() || fs_group.is_some(),
            };
            let fetched = handle
                .block_on(async {
                    tokio::time::timeout(
                        READ_TIMEOUT,
                        crate::controllers::pod_sources::volume_files(client, pod, vol, &ctx),
                    )
                    .await
                })
                .map(|r| r.map_err(VolumeError::from))
                .unwrap_or_else(|_| {
                    Err(VolumeError::TimedOut {
                        volume: vol.name.clone(),
                    })
                });
            self.volume_checks.insert(key, next);
            let mut files = match fetched {
                Ok(Some(files)) => files,
                Ok(None) => continue,
                Err(e) if current.is_some() => {
                    tracing::warn!(pod = %format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or_default(), pod.metadata.name.as_deref().unwrap_or_default()),
                        volume = %vol.name, "cannot refresh the volume, keeping its contents: {e}");
                    continue;
                }
                Err(e) => return Err(e),
            };
            if fs_group.is_some() {
                volume_files::with_fs_group(&mut files);
            }
            if volume_files::differs(&dir, &files) {
                let tokens: Vec<String> = vol
                    .projected
                    .iter()
                    .flat_map(|p| p.sources.iter().flatten())
                    .filter_map(|s| Some(s.service_account_token.as_ref()?.path.clone()))
                    .collect();
                let owned = fs_user.map(|u| (u, tokens.as_slice()));
                volume_files::write(&dir, &files, fs_group, owned).map_err(|source| {
                    VolumeError::Write {
                        volume: vol.name.clone(),
                        source,
                    }
                })?;
                if current.is_some() {
                    tracing::info!(pod = %format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or_default(), pod.metadata.name.as_deref().unwrap_or_default()),
                        volume = %vol.name, "volume contents updated");
                }
            }
        }
        Ok(())
    }
}

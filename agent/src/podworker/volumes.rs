//! Writing a pod's volumes before its containers start.

use super::*;

impl Runner {
    /// Writes the files of the pod's configMap, secret, downwardAPI and projected
    /// volumes before its containers start, then keeps them current: every
    /// `sync_frequency` the sources are read again and a changed volume is swapped
    /// whole (see [`crate::runtime::volume_files`]); a service account token is
    /// requested again once 80 % of its lifetime has passed. A source that cannot be
    /// read keeps the volume as it was (the error is logged); before the first write
    /// it holds the pod's containers back.
    pub(super) fn prepare_volumes(&mut self, uid: &str, pod: &Pod) -> Result<(), String> {
        use crate::runtime::volume_files;
        let Source::Api { client, handle, .. } = &self.source else {
            return Ok(());
        };
        if is_static(pod) {
            return Ok(());
        }
        let now = Instant::now();
        let sb_ip = self
            .rt
            .sandbox(uid)
            .ok()
            .flatten()
            .map(|s| s.ip)
            .unwrap_or_default();
        for vol in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let has_files = vol.config_map.is_some()
                || vol.secret.is_some()
                || vol.downward_api.is_some()
                || vol.projected.is_some();
            if !has_files {
                continue;
            }
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
            };
            let fetched = handle.block_on(crate::controllers::pod_sources::volume_files(
                client, pod, vol, &ctx,
            ));
            self.volume_checks.insert(key, next);
            let files = match fetched {
                Ok(Some(files)) => files,
                Ok(None) => continue,
                Err(e) if current.is_some() => {
                    tracing::warn!(pod = %format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or_default(), pod.metadata.name.as_deref().unwrap_or_default()),
                        volume = %vol.name, "cannot refresh the volume, keeping its contents: {e}");
                    continue;
                }
                Err(e) => return Err(e.to_string()),
            };
            if volume_files::differs(&dir, &files) {
                volume_files::write(&dir, &files)
                    .map_err(|e| format!("volume {:?}: {e}", vol.name))?;
                if current.is_some() {
                    tracing::info!(pod = %format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or_default(), pod.metadata.name.as_deref().unwrap_or_default()),
                        volume = %vol.name, "volume contents updated");
                }
            }
        }
        Ok(())
    }
}

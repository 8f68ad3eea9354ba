//! The images of a pod's image volumes (`volumes[].image`), pulled before its
//! containers start: each by its `pullPolicy` (kubelet's default by tag when unset),
//! with the pod's pull secrets, through the same background pulls, events and
//! back-off as containers' images; recorded with the pod once present (see
//! [`crate::runtime::image_volumes`]).

use super::*;

impl Runner {
    /// Pulls and records the pod's image volumes; while one is not ready, the
    /// containers' waiting reason and message (`ContainerCreating` while pulling,
    /// `ErrImagePull` / `ImagePullBackOff` after a failed pull).
    pub(super) fn prepare_image_volumes(
        &mut self,
        uid: &str,
        pod: &Pod,
    ) -> Result<(), (String, String)> {
        let spec = spec_of(pod);
        let mut waiting = None;
        for vol in spec.volumes.iter().flatten() {
            let Some(img) = &vol.image else { continue };
            if self.rt.image_volume(uid, &vol.name).is_some() {
                continue;
            }
            let reference = img.reference.clone().unwrap_or_default();
            // Pulled as a container of that image would be; its events are the pod's.
            let as_container = k8s_openapi::api::core::v1::Container {
                name: format!("volume {}", vol.name),
                image: Some(reference.clone()),
                image_pull_policy: img.pull_policy.clone(),
                ..Default::default()
            };
            let why = match self.image_ready(pod, &as_container, 0) {
                ImageReady::Yes(image) => self
                    .rt
                    .record_image_volume(uid, &vol.name, &reference, &image)
                    .err()
                    .map(|e| ("ContainerCreating".to_string(), e.to_string())),
                ImageReady::Pulling(_) => Some(("ContainerCreating".into(), String::new())),
                ImageReady::BackOff(m) => Some(("ImagePullBackOff".into(), m)),
                ImageReady::Failed(e) => Some(("ErrImagePull".into(), e.to_string())),
            };
            if let Some(why) = why {
                waiting.get_or_insert(why);
            }
        }
        waiting.map_or(Ok(()), Err)
    }
}

//! Image volumes (`volumes[].image`): the image the pod worker pulled for the volume is
//! recorded with the pod (`<state-dir>/pods/<uid>/volumes/images/<volume>.json`: its ID
//! and layers), and each container that mounts the volume gets the image's layers
//! mounted read-only by its shim, in the shim's own mount namespace, at
//! `<run-dir>/pods/<uid>/image-volumes/<volume>` — so nothing is mounted on the node
//! and nothing is left when the container goes. A mount with a subPath gets that path
//! of the image, opened beneath the image's root by the shim and bound where the
//! container's other subPaths are (`<run-dir>/pods/<uid>/subpaths/<container>/<n>`). The image counts as in use for the
//! image garbage collector while a pod has it.

use std::path::PathBuf;

use super::Runtime;

/// An image volume of a pod, as pulled.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageVolume {
    pub volume: String,
    pub reference: String,
    pub image_id: String,
    /// The image's layers, top first (names in the store's layer directory).
    pub lower: Vec<String>,
}

impl Runtime {
    fn image_volumes_dir(&self, uid: &str) -> PathBuf {
        self.pod_state_dir(uid).join("volumes/images")
    }

    /// Records the image pulled for the pod's volume `name`.
    pub fn record_image_volume(
        &self,
        uid: &str,
        name: &str,
        reference: &str,
        image: &super::image::ImageRecord,
    ) -> Result<(), super::RuntimeError> {
        let v = ImageVolume {
            volume: name.to_string(),
            reference: reference.to_string(),
            image_id: image.id.clone(),
            lower: image.lower(),
        };
        super::write_json(
            &self.image_volumes_dir(uid).join(format!("{name}.json")),
            &v,
        )
    }

    /// The pod's image volume `name`, once its image was pulled.
    pub fn image_volume(&self, uid: &str, name: &str) -> Option<ImageVolume> {
        super::read_json(&self.image_volumes_dir(uid).join(format!("{name}.json")))
            .ok()
            .flatten()
    }

    /// Where a container's shim mounts the image volume `name` (an empty directory on
    /// the node).
    pub fn image_volume_path(&self, uid: &str, name: &str) -> PathBuf {
        self.pod_run_dir(uid).join("image-volumes").join(name)
    }

    /// What the shim of container `c` mounts for its image volumes.
    pub fn image_mounts(
        &self,
        uid: &str,
        spec: &k8s_openapi::api::core::v1::PodSpec,
        c: &k8s_openapi::api::core::v1::Container,
    ) -> Vec<super::shim::ImageVolumeMount> {
        c.volume_mounts
            .iter()
            .flatten()
            .enumerate()
            .filter(|(_, vm)| {
                spec.volumes
                    .iter()
                    .flatten()
                    .any(|v| v.name == vm.name && v.image.is_some())
            })
            .filter_map(|(index, vm)| {
                let v = self.image_volume(uid, &vm.name)?;
                Some(super::shim::ImageVolumeMount {
                    path: self.image_volume_path(uid, &vm.name),
                    lower: v.lower,
                    sub_path: super::container::sub_path_of(c, vm)
                        .map(|sub| (sub, self.sub_path_target(uid, &c.name, index))),
                })
            })
            .collect()
    }

    /// The image IDs the node's pods have as volumes (in use for the collector).
    pub fn image_volume_ids(&self) -> Vec<String> {
        std::fs::read_dir(self.cfg.state_dir.join("pods"))
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|pod| {
                std::fs::read_dir(pod.path().join("volumes/images"))
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .filter_map(|e| {
                super::read_json::<ImageVolume>(&e.path())
                    .ok()
                    .flatten()
                    .map(|v| v.image_id)
            })
            .collect()
    }
}

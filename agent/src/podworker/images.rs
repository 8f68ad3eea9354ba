//! Whether a container's image is ready: background pulls and their back-off.

use super::*;

/// Background pulls by (pod uid, container, restart).
pub(super) type Pulls = Arc<std::sync::Mutex<HashMap<(String, String, u32), PullState>>>;

/// A background pull for one container start.
pub(super) enum PullState {
    Pulling,
    /// The result and how long the pull took.
    Done(
        Box<Result<crate::runtime::image::ImageRecord, crate::runtime::RuntimeError>>,
        Duration,
    ),
}

/// Whether a container's image is ready to start it.
pub(super) enum ImageReady {
    Yes(crate::runtime::image::ImageRecord),
    Pulling(String),
    /// The last pull failed and the next waits: kubelet's `ImagePullBackOff` message.
    BackOff(String),
    Failed(crate::runtime::RuntimeError),
}

impl Runner {
    /// The image for start number `restart` of `c`: at once when stored and its pull
    /// policy allows, else pulled in the background (the pod's other work goes on).
    pub(super) fn image_ready(
        &mut self,
        pod: &Pod,
        c: &k8s_openapi::api::core::v1::Container,
        restart: u32,
    ) -> ImageReady {
        use crate::runtime::container::LocalImage;
        let (reference, verify) = match self.rt.local_image(c) {
            Ok(LocalImage::Use(image)) => {
                self.event(pod, &c.name, false, "Pulled", format!(
                    "Container image {:?} already present on machine and can be accessed by the pod",
                    c.image.as_deref().unwrap_or_default()
                ));
                return ImageReady::Yes(image);
            }
            Ok(LocalImage::Pull(reference)) => (reference, false),
            Ok(LocalImage::Verify(reference)) => (reference, true),
            Err(e) => return ImageReady::Failed(e),
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let backoff_key = (uid.clone(), c.name.clone());
        if let Some((next, _, why)) = self.pull_backoff.get(&backoff_key)
            && Instant::now() < *next
        {
            return ImageReady::BackOff(format!("Back-off pulling image \"{reference}\": {why}"));
        }
        let key = (uid, c.name.clone(), restart);
        let Ok(mut pulls) = self.pulls.lock() else {
            return ImageReady::Pulling(reference.to_string());
        };
        let shown = c.image.clone().unwrap_or_default();
        match pulls.remove(&key) {
            Some(PullState::Done(result, took)) if result.is_ok() => {
                let Ok(image) = *result else {
                    return ImageReady::Pulling(reference.to_string());
                };
                drop(pulls);
                self.pull_backoff.remove(&backoff_key);
                let ms = took.as_millis();
                self.event(pod, &c.name, false, "Pulled", format!(
                    "Successfully pulled image {shown:?} in {ms}ms ({ms}ms including waiting). Image size: {} bytes.",
                    image.size
                ));
                ImageReady::Yes(image)
            }
            Some(PullState::Done(result, _)) => {
                drop(pulls);
                let Err(e) = *result else {
                    return ImageReady::Pulling(reference.to_string());
                };
                self.event(
                    pod,
                    &c.name,
                    true,
                    "Failed",
                    format!("Failed to pull image {shown:?}: {e}"),
                );
                self.event(pod, &c.name, true, "Failed", "Error: ErrImagePull".into());
                self.event(
                    pod,
                    &c.name,
                    false,
                    "BackOff",
                    format!("Back-off pulling image {shown:?}"),
                );
                // 10 s doubling to 300 s between pulls, like kubelet's image backoff.
                let delay = self
                    .pull_backoff
                    .get(&backoff_key)
                    .map_or(self.timing.backoff_initial, |(_, d, _)| {
                        (*d * 2).min(self.timing.backoff_max)
                    });
                self.pull_backoff
                    .insert(backoff_key, (Instant::now() + delay, delay, e.to_string()));
                ImageReady::Failed(e)
            }
            Some(PullState::Pulling) => {
                pulls.insert(key, PullState::Pulling);
                ImageReady::Pulling(reference.to_string())
            }
            None => {
                pulls.insert(key.clone(), PullState::Pulling);
                drop(pulls);
                self.event(
                    pod,
                    &c.name,
                    false,
                    "Pulling",
                    format!("Pulling image {shown:?}"),
                );
                let (rt, pulls, shown) = (
                    self.rt.clone(),
                    Arc::clone(&self.pulls),
                    reference.to_string(),
                );
                // A static pod cannot reference API objects; an apiserver pod's
                // imagePullSecrets are read for each pull, so a changed secret counts.
                let secrets = match &self.source {
                    Source::Api { client, handle, .. } if !is_static(pod) => {
                        Some((client.clone(), handle.clone(), pod.clone()))
                    }
                    _ => None,
                };
                std::thread::spawn(move || {
                    let started = Instant::now();
                    let secrets = secrets.map_or_else(Vec::new, |(client, handle, pod)| {
                        handle
                            .block_on(crate::controllers::pod_sources::pull_secrets(&client, &pod))
                    });
                    let result = if verify {
                        rt.verify_or_pull_blocking(&reference, &secrets)
                    } else {
                        rt.pull_blocking(&reference, &secrets)
                    };
                    if let Ok(mut p) = pulls.lock() {
                        p.insert(key, PullState::Done(Box::new(result), started.elapsed()));
                    }
                });
                ImageReady::Pulling(shown)
            }
        }
    }
}

//! The pod's persistent and generic ephemeral volumes before its containers start:
//! each claim read from the apiserver, checked as kubelet's volume manager checks it
//! (see [`crate::model::claims`]), set up on the node and recorded with the pod, so
//! later starts — after an agent restart too — mount the same thing without asking.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};

use super::*;
use crate::model::claims::{self, ClaimError, Mountable};

/// Why a claimed volume is not ready: the claim or its PV (kubelet's reasons), the
/// apiserver, or setting it up on the node.
#[derive(Debug, thiserror::Error)]
pub(super) enum ClaimStepError {
    #[error(transparent)]
    Claim(#[from] ClaimError),
    #[error("volume {volume:?}: the apiserver did not answer within {} s", READ_TIMEOUT.as_secs())]
    TimedOut { volume: String },
    #[error(transparent)]
    SetUp(#[from] crate::runtime::claimed_volumes::SetUpError),
    #[error("MountVolume.SetUp failed for volume {volume:?} : {source}")]
    Csi {
        volume: String,
        #[source]
        source: crate::csi::CsiError,
    },
}

/// The CSI error of setting up `volume`, as kubelet words it.
fn csi_failed(volume: &str) -> impl FnOnce(crate::csi::CsiError) -> ClaimStepError {
    let volume = volume.to_string();
    move |source| ClaimStepError::Csi { volume, source }
}

/// How long the reads of one claim may take.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

impl Runner {
    /// Whether the pod has claimed volumes (claims, generic ephemeral or CSI inline):
    /// only those are set up and given back here.
    pub(super) fn has_claimed_volumes(pod: &Pod) -> bool {
        spec_of(pod)
            .volumes
            .iter()
            .flatten()
            .any(|v| claims::claim_of(pod, v).is_some() || v.csi.is_some())
    }

    /// Whether the pod has finished for good: its phase is terminal and nothing of it
    /// runs (kubelet's terminated pod, whose volumes the volume manager unmounts).
    pub(super) fn finished(&self, uid: &str, pod: &Pod) -> bool {
        let views = self.views(uid, pod);
        matches!(
            crate::model::pod_lifecycle::phase(&spec_of(pod), &views),
            "Succeeded" | "Failed"
        ) && !views
            .iter()
            .any(|v| matches!(v.current, Observed::Running { .. }))
    }

    /// Gives back the driver volumes of a finished pod, as kubelet unmounts a
    /// terminated pod's volumes before it is deleted: each CSI volume is unpublished
    /// (and unstaged once no other pod uses it), so a ReadWriteOnce volume is free
    /// for a pod elsewhere and leaves `volumesInUse`. What fails is tried again at the
    /// pod's next sync and when its sandbox goes.
    pub(super) fn release_claims(&self, uid: &str, pod: &Pod) {
        match self.rt.tear_down_driver_volumes(uid) {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(pod = %pod_key(pod), "finished: its {n} CSI volume(s) unpublished")
            }
            Err(e) => tracing::warn!(pod = %pod_key(pod), "finished, but its volumes stay: {e}"),
        }
    }

    /// Resolves and sets up every claimed volume of the pod not yet recorded; the
    /// first that cannot be is the pod's reason to wait, with the names of every
    /// volume still missing (kubelet's FailedMount message).
    pub(super) fn prepare_claims(&mut self, uid: &str, pod: &Pod) -> Result<(), String> {
        let Source::Api {
            client,
            handle,
            csi,
            ..
        } = &self.source
        else {
            return Ok(());
        };
        let spec = spec_of(pod);
        let (mut missing, mut unattached, mut failed) = (Vec::new(), Vec::new(), Vec::new());
        let mut first_error = None;
        let mut ready = Vec::new();
        for vol in spec.volumes.iter().flatten() {
            // Claims (persistent and generic ephemeral) and CSI inline volumes only.
            let claim = claims::claim_of(pod, vol);
            if claim.is_none() && vol.csi.is_none() {
                continue;
            }
            if let Some(m) = self.rt.claimed_volume(uid, &vol.name) {
                ready.push(m);
                continue;
            }
            let resolved = match &claim {
                Some(claim) => handle.block_on(async {
                    tokio::time::timeout(
                        READ_TIMEOUT,
                        resolve(client, pod, vol, claim, &self.node_fit),
                    )
                    .await
                    .unwrap_or_else(|_| {
                        Err(ClaimStepError::TimedOut {
                            volume: vol.name.clone(),
                        })
                    })
                }),
                None => {
                    // kubelet's handle of an inline volume.
                    let volume_handle = format!(
                        "csi-{}",
                        crate::csi::sha256_hex(&format!("{uid}{}", vol.name))
                    );
                    let Some(m) = claims::inline_csi(pod, vol, volume_handle) else {
                        continue;
                    };
                    Ok(m)
                }
            };
            let set_up = resolved.and_then(|mut m| {
                claims::check_use(pod, &m)?;
                if let claims::Plugin::Csi(src) = &mut m.plugin {
                    // In volumesInUse from now on when the driver attaches it.
                    let policy = handle
                        .block_on(csi.driver_policy(&src.driver))
                        .map_err(csi_failed(&vol.name))?;
                    src.attachable = crate::csi::volumes::attach_required(&policy, src);
                    // Recorded first: a pod that goes half set up is torn down too.
                    m.path =
                        crate::csi::volumes::publish_path(&csi.kubelet_dir, uid, &m.pv, m.block);
                    self.rt.record_pending(uid, &m)?;
                    handle
                        .block_on(csi.publish(pod, &mut m))
                        .map_err(csi_failed(&vol.name))?;
                }
                let psc = spec.security_context.clone().unwrap_or_default();
                self.rt.set_up_claimed(uid, &m, &psc)?;
                Ok(m)
            });
            match set_up {
                Ok(m) => tracing::info!(pod = %pod_key(pod), volume = %m.volume, pv = %m.pv,
                    plugin = m.plugin.name(), path = %m.path.display(), "volume set up"),
                Err(e) => {
                    missing.push(vol.name.clone());
                    // Waiting for its attachment is not a failure to process it.
                    if matches!(
                        e,
                        ClaimStepError::Csi {
                            source: crate::csi::CsiError::NotAttached { .. },
                            ..
                        }
                    ) {
                        unattached.push(vol.name.clone());
                    } else {
                        failed.push(vol.name.clone());
                    }
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
        for m in &ready {
            self.expand_when_due(uid, pod, m);
        }
        match first_error {
            None => Ok(()),
            Some(why) => Err(format!(
                "Unable to attach or mount volumes: unmounted volumes=[{}], unattached volumes=[{}], \
                 failed to process volumes=[{}]: {why}",
                missing.join(" "),
                unattached.join(" "),
                failed.join(" ")
            )),
        }
    }
}

/// How often a set-up CSI claim is looked at for a pending node expansion.
const EXPANSION_CHECK: Duration = Duration::from_secs(10);

impl Runner {
    /// Every [`EXPANSION_CHECK`], the node's part of a pending expansion of a CSI
    /// claim (see [`crate::csi::expand`]), with kubelet's events.
    fn expand_when_due(&mut self, uid: &str, pod: &Pod, m: &Mountable) {
        let Source::Api { handle, csi, .. } = &self.source else {
            return;
        };
        if !matches!(m.plugin, claims::Plugin::Csi(_)) || m.claim.is_empty() {
            return;
        }
        let key = (uid.to_string(), format!("expand {}", m.volume));
        let now = Instant::now();
        if self.volume_checks.get(&key).is_some_and(|next| now < *next) {
            return;
        }
        self.volume_checks.insert(key, now + EXPANSION_CHECK);
        let got = handle.block_on(async {
            tokio::time::timeout(
                READ_TIMEOUT * 4,
                crate::csi::expand::expand_if_pending(csi, m),
            )
            .await
        });
        match got {
            Ok(Ok(crate::csi::expand::Expanded::To(size))) => self.event(
                pod,
                "",
                false,
                "FileSystemResizeSuccessful",
                format!(
                    "MountVolume.NodeExpandVolume succeeded for volume {:?} (now {size})",
                    m.pv
                ),
            ),
            Ok(Ok(crate::csi::expand::Expanded::Nothing)) => {}
            Ok(Err(e)) => self.event(
                pod,
                "",
                true,
                "FileSystemResizeFailed",
                format!(
                    "MountVolume.NodeExpandVolume failed for volume {:?} : {e}",
                    m.pv
                ),
            ),
            Err(_) => {
                tracing::warn!(pod = %pod_key(pod), volume = %m.volume, "node expansion timed out")
            }
        }
    }
}

fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The claim and its PV from the apiserver, checked.
async fn resolve(
    client: &crate::client::SharedClient,
    pod: &Pod,
    vol: &k8s_openapi::api::core::v1::Volume,
    claim: &claims::ClaimRef,
    node: &crate::model::admission::NodeFit,
) -> Result<Mountable, ClaimStepError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let pvcs: kube::Api<PersistentVolumeClaim> = kube::Api::namespaced(client.get(), &ns);
    let pvc = pvcs
        .get(&claim.name)
        .await
        .map_err(|e| ClaimError::ClaimFetch {
            ns: ns.clone(),
            name: claim.name.clone(),
            why: api_reason(&e),
        })?;
    let pv_name = claims::bound_volume(pod, claim, &pvc, false)?;
    let pvs: kube::Api<PersistentVolume> = kube::Api::all(client.get());
    let pv = pvs
        .get(&pv_name)
        .await
        .map_err(|e| ClaimError::VolumeFetch {
            ns,
            name: claim.name.clone(),
            pv: pv_name,
            why: api_reason(&e),
        })?;
    Ok(claims::mountable(vol, claim, &pvc, &pv, node)?)
}

/// The apiserver's own words for a refused read (`persistentvolumeclaims "x" not
/// found`), else the client's.
fn api_reason(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

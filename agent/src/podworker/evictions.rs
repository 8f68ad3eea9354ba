//! Evictions the eviction manager asks of the pod workers: the pod's uid, kubelet's
//! message and the grace period its containers get. The dispatcher wakes the pod's
//! worker, which stops the pod and reports it `Failed`/`Evicted`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::model::eviction::Eviction;

/// The evictions asked for, by pod uid (with whether the pod is cleaned up: nothing of
/// it runs, its volumes gone), and the pods no worker was woken for yet.
type Asked = (HashMap<String, (Eviction, bool)>, Vec<String>);

/// The evictions asked of the pod workers, shared by the eviction manager, the
/// dispatcher and the workers.
#[derive(Clone, Debug, Default)]
pub struct Evictions(Arc<Mutex<Asked>>);

impl Evictions {
    /// Asks for the eviction of pod `uid`; `false` when it was asked for already.
    pub fn request(&self, uid: &str, e: Eviction) -> bool {
        let Ok(mut m) = self.0.lock() else {
            return false;
        };
        if m.0.contains_key(uid) {
            return false;
        }
        m.0.insert(uid.to_string(), (e, false));
        m.1.push(uid.to_string());
        true
    }

    /// The eviction asked for pod `uid`, if any.
    pub fn get(&self, uid: &str) -> Option<Eviction> {
        self.0.lock().ok()?.0.get(uid).map(|(e, _)| e.clone())
    }

    /// Whether evicted pod `uid` is cleaned up (or no longer known here).
    pub fn cleaned_up(&self, uid: &str) -> bool {
        self.0
            .lock()
            .is_ok_and(|m| m.0.get(uid).is_none_or(|(_, done)| *done))
    }

    /// Marks evicted pod `uid` cleaned up.
    pub(super) fn mark_cleaned_up(&self, uid: &str) {
        if let Ok(mut m) = self.0.lock()
            && let Some((_, done)) = m.0.get_mut(uid)
        {
            *done = true;
        }
    }

    /// Whether pod `uid` is being evicted.
    pub fn contains(&self, uid: &str) -> bool {
        self.0.lock().is_ok_and(|m| m.0.contains_key(uid))
    }

    /// The pods whose workers were not woken yet for their eviction.
    pub(super) fn take_new(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|mut m| std::mem::take(&mut m.1))
            .unwrap_or_default()
    }

    /// Forgets the pods not in `here` (removed from the node).
    pub(super) fn retain(&self, here: impl Fn(&str) -> bool) {
        if let Ok(mut m) = self.0.lock() {
            m.0.retain(|uid, _| here(uid));
        }
    }
}

impl super::Runner {
    /// Takes up the eviction asked for pod `uid`, if any: from now on the pod is
    /// Failed/Evicted with kubelet's message, and what runs is stopped.
    pub(super) fn take_eviction(&mut self, uid: &str, pod: &k8s_openapi::api::core::v1::Pod) {
        if self.evicted.is_some() {
            return;
        }
        let Some(e) = self.evictions.get(uid) else {
            return;
        };
        if e.reason == crate::model::eviction::REASON {
            self.event(pod, "", true, &e.reason, e.message.clone());
        }
        self.failed.insert(
            uid.to_string(),
            crate::model::admission::Refusal {
                reason: e.reason.clone(),
                message: e.message.clone(),
            },
        );
        self.evicted = Some(e);
    }

    /// Once nothing of an evicted pod runs, its emptyDir volumes go (kubelet removes
    /// an evicted pod's content; the records stay for its status).
    pub(super) fn remove_evicted_content(
        &mut self,
        uid: &str,
        views: &[crate::model::pod_lifecycle::View],
    ) {
        if self.evicted.is_none()
            || self.evictions.cleaned_up(uid)
            || views.iter().any(|v| {
                matches!(
                    v.current,
                    crate::model::pod_lifecycle::Observed::Running { .. }
                )
            })
        {
            return;
        }
        match self.rt.discard_pod_volumes(uid) {
            Ok(()) => self.evictions.mark_cleaned_up(uid),
            Err(e) => tracing::warn!(pod = %uid, "removing the evicted pod's volumes: {e}"),
        }
    }

    /// The `DisruptionTarget` condition of a pod evicted for node pressure.
    pub(super) fn disruption_condition(
        &self,
        previous: &[k8s_openapi::api::core::v1::PodCondition],
        generation: Option<i64>,
    ) -> Option<k8s_openapi::api::core::v1::PodCondition> {
        let e = self.evicted.as_ref().filter(|e| e.disruption_condition)?;
        let since = previous
            .iter()
            .find(|c| c.type_ == "DisruptionTarget" && c.status == "True")
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        Some(k8s_openapi::api::core::v1::PodCondition {
            type_: "DisruptionTarget".into(),
            status: "True".into(),
            reason: Some("TerminationByKubelet".into()),
            message: Some(e.message.clone()),
            last_transition_time: Some(since),
            observed_generation: generation,
            ..Default::default()
        })
    }
}

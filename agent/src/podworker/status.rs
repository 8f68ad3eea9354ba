//! Pod status as kubelet writes it: recorded on the node, sent to the apiserver.

use super::*;

/// The pods recorded under a state directory (their last written status), for
/// `kernlet pods`; works without the daemon.
pub fn recorded_pods(state_dir: &Path) -> Vec<serde_json::Value> {
    let mut v: Vec<serde_json::Value> = std::fs::read_dir(state_dir.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| read_json(&e.path().join("pod.json")).ok().flatten())
        .collect();
    v.sort_by_key(|p: &serde_json::Value| {
        (
            p.pointer("/metadata/namespace")
                .and_then(|n| n.as_str())
                .unwrap_or("")
                .to_string(),
            p.pointer("/metadata/name")
                .and_then(|n| n.as_str())
                .unwrap_or("")
                .to_string(),
        )
    });
    v
}

impl Runner {
    pub(super) fn write_status(
        &mut self,
        sb: &SandboxRecord,
        pod: &Pod,
        views: &[View],
    ) -> Result<(), crate::runtime::RuntimeError> {
        let spec = pod.spec.clone().unwrap_or_default();
        let is_init = |n: &str| spec.init_containers.iter().flatten().any(|c| c.name == n);
        let main: Vec<&View> = views.iter().filter(|v| !is_init(&v.name)).collect();
        let init: Vec<&View> = views.iter().filter(|v| is_init(&v.name)).collect();
        let waiting = |v: &View| match &v.current {
            Observed::Exited { code, .. } => {
                let policy = spec.restart_policy.as_deref().unwrap_or("Always");
                let restarts = policy == "Always" || (policy == "OnFailure" && *code != 0);
                let (may, delay) = self.restart_wait(&sb.uid, v);
                (restarts && !may).then(|| {
                    (
                        "CrashLoopBackOff".to_string(),
                        format!(
                            "back-off {} restarting failed container={} pod={}_{}({})",
                            pod_lifecycle::go_duration(delay),
                            v.name,
                            sb.name,
                            sb.namespace,
                            sb.uid
                        ),
                    )
                })
            }
            _ => None,
        };
        let sidecar = |n: &str| {
            spec.init_containers
                .iter()
                .flatten()
                .any(|c| c.name == n && pod_lifecycle::is_sidecar(c))
        };
        let initialized = init.iter().all(|v| {
            matches!(v.current, Observed::Exited { code: 0, .. })
                || (sidecar(&v.name)
                    && (main.iter().any(|m| m.current != Observed::NotStarted)
                        || (matches!(v.current, Observed::Running { .. })
                            && v.started != Some(false))))
        });
        let ready = !main.is_empty() && main.iter().all(|v| v.is_ready());
        let phase = if self.failed.contains_key(&sb.uid) {
            "Failed"
        } else {
            pod_lifecycle::phase(&spec, views)
        };
        let terminal = phase == "Succeeded" || phase == "Failed";
        // Conditions as kubelet words them; a condition's lastTransitionTime moves only
        // when its status does.
        let previous: Vec<serde_json::Value> =
            read_json::<serde_json::Value>(&self.rt.pod_state_dir(&sb.uid).join("pod.json"))
                .ok()
                .flatten()
                .and_then(|p| p["status"]["conditions"].as_array().cloned())
                .unwrap_or_default();
        let now = k8s_openapi::jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let cond = |t: &str, ok: bool, reason: Option<&str>, message: Option<String>| {
            let status = if ok { "True" } else { "False" };
            let since = previous
                .iter()
                .find(|c| c["type"] == t && c["status"] == status)
                .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_string))
                .unwrap_or_else(|| {
                    if previous.is_empty() {
                        sb.created_at.clone()
                    } else {
                        now.clone()
                    }
                });
            let mut c = json!({"type": t, "status": status, "lastTransitionTime": since});
            if let Some(r) = reason {
                c["reason"] = json!(r);
            }
            if let Some(m) = message {
                c["message"] = json!(m);
            }
            c
        };
        let names = |vs: Vec<&&View>| {
            format!(
                "[{}]",
                vs.iter()
                    .map(|v| v.name.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        };
        let initialized_cond = if initialized {
            cond(
                "Initialized",
                true,
                (phase == "Succeeded").then_some("PodCompleted"),
                None,
            )
        } else {
            let incomplete = init
                .iter()
                .filter(|v| !matches!(v.current, Observed::Exited { code: 0, .. }))
                .collect();
            cond(
                "Initialized",
                false,
                Some("ContainersNotInitialized"),
                Some(format!(
                    "containers with incomplete status: {}",
                    names(incomplete)
                )),
            )
        };
        let ready_cond = |t: &str| match phase {
            "Succeeded" => cond(t, false, Some("PodCompleted"), None),
            "Failed" => cond(t, false, Some("PodFailed"), None),
            _ if ready => cond(t, true, None, None),
            _ => {
                let unready = main.iter().filter(|v| !v.is_ready()).collect();
                cond(
                    t,
                    false,
                    Some("ContainersNotReady"),
                    Some(format!(
                        "containers with unready status: {}",
                        names(unready)
                    )),
                )
            }
        };
        // A main container that has not started waits for the init containers, then
        // for its creation.
        let main_status = |v: &View| {
            let mut s = pod_lifecycle::container_status(v, waiting(v));
            if v.current == Observed::NotStarted && initialized {
                s["state"] = json!({"waiting": {"reason": "ContainerCreating"}});
            }
            s
        };
        let mut status = json!({
            "phase": phase,
            "conditions": [
                cond("PodReadyToStartContainers", !terminal, None, None), initialized_cond,
                ready_cond("Ready"), ready_cond("ContainersReady"), cond("PodScheduled", true, None, None),
            ],
            "hostIP": self.node_ip, "hostIPs": [{"ip": self.node_ip}],
            "startTime": sb.created_at, "qosClass": sb.qos,
            "containerStatuses": main.iter().map(|v| main_status(v)).collect::<Vec<_>>(),
        });
        if !init.is_empty() {
            status["initContainerStatuses"] = json!(
                init.iter()
                    .map(|v| {
                        let mut s = pod_lifecycle::container_status(v, waiting(v));
                        // A regular init container is ready once it completed (a
                        // sidecar by its probes, like a main container).
                        if !sidecar(&v.name) {
                            s["ready"] =
                                json!(matches!(v.current, Observed::Exited { code: 0, .. }));
                        }
                        s
                    })
                    .collect::<Vec<_>>()
            );
        }
        if !sb.ip.is_empty() {
            status["podIP"] = json!(sb.ip);
            status["podIPs"] = json!([{"ip": sb.ip}]);
        }
        // Past its activeDeadlineSeconds: failed, whatever its containers did.
        if let Some(r) = self.failed.get(&sb.uid) {
            status["reason"] = json!(r.reason);
            status["message"] = json!(r.message);
        }
        self.publish(&sb.uid, &sb.namespace, &sb.name, pod, status)
    }

    /// Records a pod's status under the state directory (for `kernlet pods`, `exec` and
    /// the kubelet API), then sends it to the apiserver when it changed.
    pub(super) fn publish(
        &mut self,
        uid: &str,
        namespace: &str,
        name: &str,
        pod: &Pod,
        status: serde_json::Value,
    ) -> Result<(), crate::runtime::RuntimeError> {
        let mut out = serde_json::to_value(pod).unwrap_or_default();
        out["apiVersion"] = json!("v1");
        out["kind"] = json!("Pod");
        out["status"] = status;
        // The node's record first: once the apiserver shows the status, `kernlet exec`,
        // `logs` and the kubelet API find the pod.
        let path = self.rt.pod_state_dir(uid).join("pod.json");
        if read_json::<serde_json::Value>(&path)
            .ok()
            .flatten()
            .as_ref()
            != Some(&out)
        {
            write_json(&path, &out)?;
        }
        if let Source::Api { updates, .. } = &self.source
            && let Ok(mut last_sent) = self.last_sent.lock()
            && last_sent.get(uid) != Some(&out["status"])
        {
            let sent = updates.send(crate::controllers::pods::Update::Status {
                namespace: namespace.to_string(),
                name: name.to_string(),
                uid: uid.to_string(),
                status: out["status"].clone(),
            });
            if sent.is_ok() {
                last_sent.insert(uid.to_string(), out["status"].clone());
            }
        }
        Ok(())
    }
}

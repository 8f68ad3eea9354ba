//! A pod's status as kubelet 1.36 writes it, as a typed `PodStatus`: a pure function of
//! the spec, what the runtime observed of each container and the conditions written
//! before (kubelet's `generateAPIPodStatus`).

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, PodCondition, PodIP, PodSpec, PodStatus, ResourceRequirements,
    VolumeMountStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::model::pod_lifecycle::{self, Observed, View};

/// The lists of container statuses of a pod's status.
pub const STATUS_LISTS: [&str; 3] = [
    "initContainerStatuses",
    "containerStatuses",
    "ephemeralContainerStatuses",
];

/// Every container status of a recorded pod (init, main, ephemeral).
pub fn container_statuses(pod: &serde_json::Value) -> impl Iterator<Item = &serde_json::Value> {
    STATUS_LISTS
        .iter()
        .flat_map(|l| pod["status"][l].as_array().into_iter().flatten())
}

/// Everything a pod's status is made of.
pub struct Input<'a> {
    pub spec: &'a PodSpec,
    /// `metadata.generation` of the pod object this status answers.
    pub generation: Option<i64>,
    pub views: &'a [View],
    /// The ephemeral containers (`kubectl debug`), in the order they were added.
    pub ephemeral: &'a [View],
    /// What the node allocated to each container, and what each runs with now (by
    /// name; in-place resize).
    pub allocated: &'a crate::model::resize::Allocation,
    pub actual: &'a crate::model::resize::Allocation,
    /// PodResizePending (reason, message) and PodResizeInProgress (with an error).
    pub resize_pending: Option<(&'a str, &'a str)>,
    pub resize_in_progress: Option<Option<&'a str>>,
    /// The phase, from the containers or decided for the pod (Failed when refused or
    /// past its deadline).
    pub phase: &'a str,
    /// Whether the pod's sandbox stands ready for containers (PodReadyToStartContainers):
    /// false once the pod is terminal or its deletion has stopped everything.
    pub sandbox_ready: bool,
    /// The pod's `reason` and `message` (refused, past its deadline, …).
    pub reason: Option<(&'a str, &'a str)>,
    /// The waiting state that replaces an exited container's state while it waits out
    /// its restart back-off (CrashLoopBackOff: reason, message), by container.
    pub backoff: &'a dyn Fn(&View) -> Option<(String, String)>,
    /// The conditions of the last status written, for their transition times.
    pub previous: &'a [PodCondition],
    /// The pod's conditions in the apiserver (other writers'), for readiness gates.
    pub current: &'a [PodCondition],
    pub now: Timestamp,
    /// When the node took the pod (its sandbox was made).
    pub start_time: Option<Timestamp>,
    pub host_ip: &'a str,
    pub pod_ip: &'a str,
    pub qos: &'a str,
}

/// The pod's status.
pub fn pod_status(i: &Input) -> PodStatus {
    let spec = i.spec;
    let is_init = |n: &str| spec.init_containers.iter().flatten().any(|c| c.name == n);
    let sidecar = |n: &str| {
        spec.init_containers
            .iter()
            .flatten()
            .any(|c| c.name == n && pod_lifecycle::is_sidecar(c))
    };
    let main: Vec<&View> = i.views.iter().filter(|v| !is_init(&v.name)).collect();
    let init: Vec<&View> = i.views.iter().filter(|v| is_init(&v.name)).collect();
    let initialized = init.iter().all(|v| {
        matches!(v.current, Observed::Exited { code: 0, .. })
            || (sidecar(&v.name)
                && (main.iter().any(|m| m.current != Observed::NotStarted)
                    || (matches!(v.current, Observed::Running { .. }) && v.started != Some(false))))
    });
    let conditions = Conditions { i };
    let with = |v: &View| {
        status_of(
            pod_lifecycle::all_containers(spec).find(|c| c.name == v.name),
            v,
            (i.backoff)(v),
            i.allocated.get(&v.name),
            i.actual.get(&v.name),
        )
    };
    let main_status = |v: &View| {
        let mut s = with(v);
        if v.current == Observed::NotStarted && initialized {
            s.state = Some(waiting("ContainerCreating", None));
        }
        s
    };
    let init_status = |v: &View| {
        let mut s = with(v);
        // A regular init container is ready once it completed (a sidecar by its
        // probes, like a main container).
        if !sidecar(&v.name) {
            s.ready = matches!(v.current, Observed::Exited { code: 0, .. });
        }
        s
    };
    let ips = |ip: &str| (!ip.is_empty()).then(|| ip.to_string());
    PodStatus {
        phase: Some(i.phase.to_string()),
        observed_generation: i.generation,
        conditions: Some(
            [
                i.resize_pending.map(|(reason, message)| {
                    conditions.make("PodResizePending", true, Some(reason), Some(message.into()))
                }),
                i.resize_in_progress.map(|error| {
                    conditions.make(
                        "PodResizeInProgress",
                        true,
                        error.map(|_| "Error"),
                        error.map(str::to_string),
                    )
                }),
                Some(conditions.make("PodReadyToStartContainers", i.sandbox_ready, None, None)),
                Some(conditions.initialized(initialized, &init)),
                Some(conditions.ready("Ready", &main)),
                Some(conditions.containers_ready(&main)),
                Some(conditions.make("PodScheduled", true, None, None)),
            ]
            .into_iter()
            .flatten()
            .collect(),
        ),
        host_ip: ips(i.host_ip),
        host_ips: ips(i.host_ip).map(|ip| vec![HostIP { ip }]),
        pod_ip: ips(i.pod_ip),
        pod_ips: ips(i.pod_ip).map(|ip| vec![PodIP { ip }]),
        start_time: i.start_time.map(Time),
        qos_class: Some(i.qos.to_string()),
        container_statuses: Some(main.iter().map(|v| main_status(v)).collect()),
        init_container_statuses: (!init.is_empty())
            .then(|| init.iter().map(|v| init_status(v)).collect()),
        ephemeral_container_statuses: (!i.ephemeral.is_empty()).then(|| {
            let ephemeral = pod_lifecycle::ephemeral_containers(spec);
            i.ephemeral
                .iter()
                .map(|v| {
                    let c = ephemeral.iter().find(|c| c.name == v.name);
                    let mut s = status_of(c, v, None, None, None);
                    // Never probed, never counted in readiness: kubelet reports them
                    // unready.
                    s.ready = false;
                    s.resources = None;
                    s.allocated_resources = None;
                    s
                })
                .collect()
        }),
        reason: i.reason.map(|(r, _)| r.to_string()),
        message: i.reason.map(|(_, m)| m.to_string()),
        ..Default::default()
    }
}

/// The pod's conditions as kubelet words them; a condition's lastTransitionTime moves
/// only when its status does.
struct Conditions<'a, 'b> {
    i: &'b Input<'a>,
}

impl Conditions<'_, '_> {
    fn make(
        &self,
        t: &str,
        ok: bool,
        reason: Option<&str>,
        message: Option<String>,
    ) -> PodCondition {
        let status = if ok { "True" } else { "False" };
        let since = self
            .i
            .previous
            .iter()
            .find(|c| c.type_ == t && c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or(Time(
                match (self.i.previous.is_empty(), self.i.start_time) {
                    (true, Some(start)) => start,
                    _ => self.i.now,
                },
            ));
        PodCondition {
            type_: t.to_string(),
            status: status.to_string(),
            last_transition_time: Some(since),
            observed_generation: self.i.generation,
            reason: reason.map(str::to_string),
            message,
            ..Default::default()
        }
    }

    fn initialized(&self, initialized: bool, init: &[&View]) -> PodCondition {
        if initialized {
            let completed = self.i.phase == "Succeeded";
            return self.make(
                "Initialized",
                true,
                completed.then_some("PodCompleted"),
                None,
            );
        }
        let incomplete: Vec<&str> = init
            .iter()
            .filter(|v| !matches!(v.current, Observed::Exited { code: 0, .. }))
            .map(|v| v.name.as_str())
            .collect();
        self.make(
            "Initialized",
            false,
            Some("ContainersNotInitialized"),
            Some(format!(
                "containers with incomplete status: [{}]",
                incomplete.join(" ")
            )),
        )
    }

    /// ContainersReady: every main container ready.
    fn containers_ready(&self, main: &[&View]) -> PodCondition {
        match self.i.phase {
            "Succeeded" => self.make("ContainersReady", false, Some("PodCompleted"), None),
            "Failed" => self.make("ContainersReady", false, Some("PodFailed"), None),
            _ => {
                let unready: Vec<&str> = main
                    .iter()
                    .filter(|v| !v.is_ready())
                    .map(|v| v.name.as_str())
                    .collect();
                if !main.is_empty() && unready.is_empty() {
                    self.make("ContainersReady", true, None, None)
                } else {
                    self.make(
                        "ContainersReady",
                        false,
                        Some("ContainersNotReady"),
                        Some(format!(
                            "containers with unready status: [{}]",
                            unready.join(" ")
                        )),
                    )
                }
            }
        }
    }

    /// Ready: the containers ready, then every readiness gate's condition True.
    fn ready(&self, t: &str, main: &[&View]) -> PodCondition {
        let containers = self.containers_ready(main);
        if containers.status != "True" {
            return self.make(t, false, containers.reason.as_deref(), containers.message);
        }
        let gates: Vec<String> = self
            .i
            .spec
            .readiness_gates
            .iter()
            .flatten()
            .filter_map(
                |g| match self.i.current.iter().find(|c| c.type_ == g.condition_type) {
                    None => Some(format!(
                        "corresponding condition of pod readiness gate \"{}\" does not exist.",
                        g.condition_type
                    )),
                    Some(c) if c.status != "True" => Some(format!(
                        "the status of pod readiness gate \"{}\" is not \"True\", but {}",
                        g.condition_type, c.status
                    )),
                    Some(_) => None,
                },
            )
            .collect();
        if gates.is_empty() {
            self.make(t, true, None, None)
        } else {
            self.make(
                t,
                false,
                Some("ReadinessGatesNotReady"),
                Some(gates.join(", ")),
            )
        }
    }
}

fn time(t: &str) -> Option<Time> {
    t.parse::<Timestamp>().ok().map(Time)
}

fn waiting(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_string()),
            message,
        }),
        ..Default::default()
    }
}

/// One run of a container as a `ContainerState`.
pub fn state(o: &Observed, id: &str) -> ContainerState {
    match o {
        Observed::NotStarted => waiting("PodInitializing", None),
        Observed::Running { started_at } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: time(started_at),
            }),
            ..Default::default()
        },
        Observed::Exited {
            code,
            reason,
            started_at,
            finished_at,
            message,
        } => ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: *code,
                reason: Some(reason.clone()),
                started_at: time(started_at),
                finished_at: time(finished_at),
                container_id: (!id.is_empty()).then(|| format!("kernlet://{id}")),
                message: (!message.is_empty()).then(|| message.clone()),
                ..Default::default()
            }),
            ..Default::default()
        },
        Observed::StartFailed { reason, message } => {
            waiting(reason, (!message.is_empty()).then(|| message.clone()))
        }
    }
}

/// A container status as kubelet writes it (`ready` and `started` from the probes);
/// `backoff` replaces an exited container's state (CrashLoopBackOff: reason, message)
/// and makes the run that ended the last state.
pub fn container_status(
    spec: &PodSpec,
    v: &View,
    backoff: Option<(String, String)>,
) -> ContainerStatus {
    status_of(
        pod_lifecycle::all_containers(spec).find(|c| c.name == v.name),
        v,
        backoff,
        None,
        None,
    )
}

/// The status of container `c` (its spec, when known) from what the runtime shows.
///
/// `resources` is what a running container runs with (`actual`), else what the node
/// allocated to it, else its spec; `allocatedResources` the allocated requests.
fn status_of(
    c: Option<&k8s_openapi::api::core::v1::Container>,
    v: &View,
    backoff: Option<(String, String)>,
    allocated: Option<&ResourceRequirements>,
    actual: Option<&ResourceRequirements>,
) -> ContainerStatus {
    let running = matches!(v.current, Observed::Running { .. });
    let mut current = state(&v.current, &v.id);
    let mut last = v
        .last
        .as_ref()
        .map_or_else(ContainerState::default, |l| state(l, ""));
    if let (Some((reason, message)), Observed::Exited { .. }) = (backoff, &v.current) {
        last = current;
        current = waiting(&reason, Some(message));
    }
    let spec_resources = c.map(|c| {
        let r = c.resources.clone().unwrap_or_default();
        ResourceRequirements {
            limits: r.limits,
            requests: r.requests,
            claims: None,
        }
    });
    let allocated = allocated.cloned().or_else(|| spec_resources.clone());
    let resources = match (running, actual) {
        (true, Some(a)) => Some(a.clone()),
        _ => allocated.clone(),
    };
    ContainerStatus {
        name: v.name.clone(),
        image: v.image.clone(),
        image_id: v.image_id.clone(),
        container_id: (!v.id.is_empty()).then(|| format!("kernlet://{}", v.id)),
        ready: v.is_ready(),
        started: Some(running && v.started != Some(false)),
        restart_count: i32::try_from(v.restarts).unwrap_or(i32::MAX),
        state: Some(current),
        last_state: Some(last),
        allocated_resources: allocated.and_then(|r| r.requests),
        resources,
        volume_mounts: c.and_then(volume_mounts),
        user: v.user.clone().map(
            |(uid, gid, groups)| k8s_openapi::api::core::v1::ContainerUser {
                linux: Some(k8s_openapi::api::core::v1::LinuxContainerUser {
                    uid,
                    gid,
                    supplemental_groups: Some(groups),
                }),
            },
        ),
        ..Default::default()
    }
}

/// The container's mounts as kubelet reports them.
fn volume_mounts(c: &k8s_openapi::api::core::v1::Container) -> Option<Vec<VolumeMountStatus>> {
    let mounts = c.volume_mounts.as_ref()?;
    Some(
        mounts
            .iter()
            .map(|m| {
                let read_only = m.read_only == Some(true);
                VolumeMountStatus {
                    name: m.name.clone(),
                    mount_path: m.mount_path.clone(),
                    read_only: read_only.then_some(true),
                    // kernlet makes no mount recursively read-only (yet): what
                    // kubelet reports for a runtime without the feature.
                    recursive_read_only: read_only.then(|| "Disabled".into()),
                    ..Default::default()
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> PodSpec {
        serde_json::from_value(v).unwrap()
    }

    static NONE: crate::model::resize::Allocation = std::collections::BTreeMap::new();

    fn running(name: &str) -> View {
        View {
            current: Observed::Running {
                started_at: "2026-12-05T09:00:00Z".into(),
            },
            id: format!("id-{name}"),
            ..View::new(name)
        }
    }

    fn input<'a>(
        spec: &'a PodSpec,
        views: &'a [View],
        previous: &'a [PodCondition],
        current: &'a [PodCondition],
    ) -> Input<'a> {
        Input {
            spec,
            generation: Some(3),
            views,
            ephemeral: &[],
            allocated: &NONE,
            actual: &NONE,
            resize_pending: None,
            resize_in_progress: None,
            phase: "Running",
            sandbox_ready: true,
            reason: None,
            backoff: &|_| None,
            previous,
            current,
            now: "2026-12-05T09:00:10Z".parse().unwrap(),
            start_time: Some("2026-12-05T08:59:00Z".parse().unwrap()),
            host_ip: "10.0.0.1",
            pod_ip: "10.244.0.5",
            qos: "BestEffort",
        }
    }

    fn condition<'a>(s: &'a PodStatus, t: &str) -> &'a PodCondition {
        s.conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == t)
            .unwrap()
    }

    #[test]
    fn every_condition_and_the_pod_carry_the_generation_they_answer() {
        let sp = spec(json!({"containers": [{"name": "a"}]}));
        let views = [running("a")];
        let s = pod_status(&input(&sp, &views, &[], &[]));
        assert_eq!(s.observed_generation, Some(3));
        for t in [
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled",
        ] {
            assert_eq!(condition(&s, t).observed_generation, Some(3), "{t}");
        }
        // The first status dates its conditions from the pod's start.
        assert_eq!(
            condition(&s, "Ready").last_transition_time,
            Some(Time("2026-12-05T08:59:00Z".parse().unwrap()))
        );
    }

    #[test]
    fn readiness_gates_keep_the_pod_unready_until_their_conditions_are_true() {
        let sp = spec(json!({
            "containers": [{"name": "a"}],
            "readinessGates": [{"conditionType": "example.com/lb"}, {"conditionType": "example.com/dns"}],
        }));
        let views = [running("a")];
        let gate = |t: &str, status: &str| PodCondition {
            type_: t.into(),
            status: status.into(),
            ..Default::default()
        };
        let table = [
            (
                vec![],
                "False",
                Some(
                    "corresponding condition of pod readiness gate \"example.com/lb\" does not exist., corresponding condition of pod readiness gate \"example.com/dns\" does not exist.",
                ),
            ),
            (
                vec![
                    gate("example.com/lb", "True"),
                    gate("example.com/dns", "False"),
                ],
                "False",
                Some(
                    "the status of pod readiness gate \"example.com/dns\" is not \"True\", but False",
                ),
            ),
            (
                vec![
                    gate("example.com/lb", "True"),
                    gate("example.com/dns", "True"),
                ],
                "True",
                None,
            ),
        ];
        for (current, want, message) in table {
            let s = pod_status(&input(&sp, &views, &[], &current));
            let ready = condition(&s, "Ready");
            assert_eq!(ready.status, want, "{current:?}");
            assert_eq!(ready.message.as_deref(), message);
            if want == "False" {
                assert_eq!(ready.reason.as_deref(), Some("ReadinessGatesNotReady"));
            }
            // The containers themselves are ready whatever the gates say.
            assert_eq!(condition(&s, "ContainersReady").status, "True");
        }
    }

    #[test]
    fn unready_containers_explain_ready_before_the_gates() {
        let sp = spec(json!({
            "containers": [{"name": "a"}, {"name": "b"}],
            "readinessGates": [{"conditionType": "example.com/lb"}],
        }));
        let views = [running("a"), View::new("b")];
        let s = pod_status(&input(&sp, &views, &[], &[]));
        let ready = condition(&s, "Ready");
        assert_eq!(ready.reason.as_deref(), Some("ContainersNotReady"));
        assert_eq!(
            ready.message.as_deref(),
            Some("containers with unready status: [b]")
        );
    }

    #[test]
    fn a_transition_time_moves_only_with_the_status() {
        let sp = spec(json!({"containers": [{"name": "a"}]}));
        let views = [running("a")];
        let earlier = Time("2026-12-05T08:00:00Z".parse().unwrap());
        let previous = [
            PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                last_transition_time: Some(earlier.clone()),
                ..Default::default()
            },
            PodCondition {
                type_: "ContainersReady".into(),
                status: "False".into(),
                last_transition_time: Some(earlier.clone()),
                ..Default::default()
            },
        ];
        let s = pod_status(&input(&sp, &views, &previous, &[]));
        assert_eq!(condition(&s, "Ready").last_transition_time, Some(earlier));
        assert_eq!(
            condition(&s, "ContainersReady").last_transition_time,
            Some(Time("2026-12-05T09:00:10Z".parse().unwrap()))
        );
    }

    #[test]
    fn container_statuses_carry_mounts_and_resources_as_kubelet_writes_them() {
        let sp = spec(json!({
            "containers": [{
                "name": "a",
                "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "500m"}},
                "volumeMounts": [
                    {"name": "www", "mountPath": "/www"},
                    {"name": "token", "mountPath": "/var/run/secrets", "readOnly": true},
                ],
            }],
            "initContainers": [{"name": "init"}],
        }));
        let mut init = View::new("init");
        init.current = Observed::Exited {
            code: 0,
            reason: "Completed".into(),
            started_at: "2026-12-05T09:00:00Z".into(),
            finished_at: "2026-12-05T09:00:01Z".into(),
            message: String::new(),
        };
        init.id = "i1".into();
        let views = [init, running("a")];
        let s = serde_json::to_value(pod_status(&input(&sp, &views, &[], &[]))).unwrap();
        let a = &s["containerStatuses"][0];
        assert_eq!(a["containerID"], "kernlet://id-a");
        assert_eq!(
            a["resources"],
            json!({"requests": {"cpu": "100m"}, "limits": {"cpu": "500m"}})
        );
        assert_eq!(a["allocatedResources"], json!({"cpu": "100m"}));
        assert_eq!(
            a["volumeMounts"],
            json!([
                {"name": "www", "mountPath": "/www"},
                {"name": "token", "mountPath": "/var/run/secrets", "readOnly": true, "recursiveReadOnly": "Disabled"},
            ])
        );
        assert_eq!(a["lastState"], json!({}));
        assert_eq!(a["state"]["running"]["startedAt"], "2026-12-05T09:00:00Z");
        let i = &s["initContainerStatuses"][0];
        assert_eq!(i["ready"], true);
        assert_eq!(i["resources"], json!({}));
        assert_eq!(i["state"]["terminated"]["containerID"], "kernlet://i1");
        assert_eq!(i["state"]["terminated"]["reason"], "Completed");
        assert_eq!(s["podIPs"], json!([{"ip": "10.244.0.5"}]));
        assert_eq!(s["observedGeneration"], 3);
    }

    #[test]
    fn a_backed_off_container_waits_with_its_last_run_as_last_state() {
        let sp = spec(json!({"containers": [{"name": "a"}]}));
        let mut v = View::new("a");
        v.current = Observed::Exited {
            code: 1,
            reason: "Error".into(),
            started_at: "2026-12-05T09:00:00Z".into(),
            finished_at: "2026-12-05T09:00:01Z".into(),
            message: String::new(),
        };
        let s = container_status(
            &sp,
            &v,
            Some(("CrashLoopBackOff".into(), "back-off".into())),
        );
        let st = s.state.unwrap();
        assert_eq!(
            st.waiting.unwrap().reason.as_deref(),
            Some("CrashLoopBackOff")
        );
        assert_eq!(s.last_state.unwrap().terminated.unwrap().exit_code, 1);
    }

    #[test]
    fn a_resize_reports_allocation_actual_resources_and_its_conditions() {
        let sp = spec(json!({"containers": [{
            "name": "a",
            "resources": {"requests": {"cpu": "200m"}, "limits": {"cpu": "200m"}},
        }]}));
        let views = [running("a")];
        let rr = |cpu: &str| -> ResourceRequirements {
            serde_json::from_value(json!({"requests": {"cpu": cpu}, "limits": {"cpu": cpu}}))
                .unwrap()
        };
        let allocated: crate::model::resize::Allocation =
            [("a".to_string(), rr("150m"))].into_iter().collect();
        let actual: crate::model::resize::Allocation =
            [("a".to_string(), rr("100m"))].into_iter().collect();
        let mut i = input(&sp, &views, &[], &[]);
        i.allocated = &allocated;
        i.actual = &actual;
        i.resize_pending = Some(("Deferred", "Node didn't have enough resource: cpu"));
        i.resize_in_progress = Some(None);
        let s = serde_json::to_value(pod_status(&i)).unwrap();
        let c = &s["containerStatuses"][0];
        assert_eq!(c["allocatedResources"], json!({"cpu": "150m"}));
        assert_eq!(c["resources"]["limits"], json!({"cpu": "100m"}));
        let conds = s["conditions"].as_array().unwrap();
        let pending = conds
            .iter()
            .find(|c| c["type"] == "PodResizePending")
            .unwrap();
        assert_eq!(pending["status"], "True");
        assert_eq!(pending["reason"], "Deferred");
        let progress = conds
            .iter()
            .find(|c| c["type"] == "PodResizeInProgress")
            .unwrap();
        assert_eq!(progress["status"], "True");
        assert!(progress.get("reason").is_none());
        // Nothing pending: no resize condition at all.
        let s = pod_status(&input(&sp, &views, &[], &[]));
        assert!(
            s.conditions
                .unwrap()
                .iter()
                .all(|c| !c.type_.starts_with("PodResize"))
        );
    }
}

//! What a pod worker does next, and the status it reports — pure functions of the pod
//! spec and what the runtime observed, shared by standalone and apiserver modes.
//!
//! Init containers run one at a time, in order, each to success; then every main
//! container runs. An exited container restarts by the pod's `restartPolicy`, after
//! kubelet's CrashLoopBackOff delay (the first restart at once, then 10 s doubling to
//! 5 min, forgotten after 10 min of running).

use std::time::Duration;

use k8s_openapi::api::core::v1::PodSpec;

/// The annotation kubelet marks a static pod's source with (`file`; `api` for the
/// apiserver's pods).
pub const CONFIG_SOURCE: &str = "kubernetes.io/config.source";

/// The annotation a mirror pod (the apiserver's copy of a static pod) carries.
pub const CONFIG_MIRROR: &str = "kubernetes.io/config.mirror";

/// `scheduling.SystemCriticalPriority`.
pub const SYSTEM_CRITICAL_PRIORITY: i32 = 2_000_000_000;

/// kubelet's `IsCriticalPod`: a static or mirror pod, or one of a system-critical
/// priority. Such pods are never evicted.
pub fn is_critical(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    let static_or_mirror = pod.metadata.annotations.as_ref().is_some_and(|a| {
        a.get(CONFIG_SOURCE).is_some_and(|s| s != "api") || a.contains_key(CONFIG_MIRROR)
    });
    static_or_mirror
        || pod
            .spec
            .as_ref()
            .and_then(|s| s.priority)
            .is_some_and(|p| p >= SYSTEM_CRITICAL_PRIORITY)
}

/// One container as the runtime sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    NotStarted,
    Running {
        started_at: String,
    },
    Exited {
        code: i32,
        reason: String,
        started_at: String,
        finished_at: String,
        /// The termination message (its file, or the log's tail on error when the
        /// policy says so); empty when there is none.
        message: String,
    },
    /// It could not be started (image missing, bad spec): the waiting reason and why.
    StartFailed {
        reason: String,
        message: String,
    },
}

/// A container of the pod: its current run, the one before, and how many restarts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    pub name: String,
    pub restarts: u32,
    pub current: Observed,
    pub last: Option<Observed>,
    pub id: String,
    pub image: String,
    pub image_id: String,
    /// The readiness probe's verdict; `None` without a readiness probe (ready while
    /// running).
    pub ready: Option<bool>,
    /// The startup probe's verdict; `None` without a startup probe.
    pub started: Option<bool>,
    /// The [`spec_hash`] the current run was made from; empty when unknown.
    pub spec_hash: String,
    /// The uid, gid and supplementary groups its process runs with
    /// (`status.containerStatuses[].user.linux`).
    pub user: Option<(i64, i64, Vec<i64>)>,
}

impl View {
    /// Running, started and ready by its probes.
    pub fn is_ready(&self) -> bool {
        matches!(self.current, Observed::Running { .. })
            && self.started != Some(false)
            && self.ready.unwrap_or(true)
    }
}

/// The user every container of the pod runs as (each container's `runAsUser`, else
/// the pod's), or `None` when one has none or two differ: kubelet's `FsUserFrom`, the
/// owner of the pod's service account tokens.
pub fn fs_user(spec: &k8s_openapi::api::core::v1::PodSpec) -> Option<i64> {
    let pod = spec.security_context.as_ref().and_then(|s| s.run_as_user);
    let mut users = all_containers(spec).map(|c| {
        c.security_context
            .as_ref()
            .and_then(|s| s.run_as_user)
            .or(pod)
    });
    let first = users.next()??;
    users.all(|u| u == Some(first)).then_some(first)
}

impl View {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            restarts: 0,
            current: Observed::NotStarted,
            last: None,
            id: String::new(),
            image: String::new(),
            image_id: String::new(),
            ready: None,
            started: None,
            spec_hash: String::new(),
            user: None,
        }
    }
}

/// What to do now for a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start container `name` (its `restart`-th restart).
    Start { name: String, restart: u32 },
    /// Stop running container `name` (a sidecar once the main containers are done).
    Stop { name: String },
}

/// Whether `c` is a sidecar: an init container with `restartPolicy: Always`.
pub fn is_sidecar(c: &k8s_openapi::api::core::v1::Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// The hash of what a container's run is made from (kubelet's container hash): every
/// field of its spec but the resources, which change in place. A running container
/// whose spec no longer hashes the same is restarted.
pub fn spec_hash(c: &k8s_openapi::api::core::v1::Container) -> String {
    let mut c = c.clone();
    c.resources = None;
    c.resize_policy = None;
    let bytes = serde_json::to_vec(&c).unwrap_or_default();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An ephemeral container (`kubectl debug`) as the container it runs as: the same
/// fields, without the target (which the runtime reads from the pod spec).
pub fn ephemeral_as_container(
    e: &k8s_openapi::api::core::v1::EphemeralContainer,
) -> k8s_openapi::api::core::v1::Container {
    k8s_openapi::api::core::v1::Container {
        args: e.args.clone(),
        command: e.command.clone(),
        env: e.env.clone(),
        env_from: e.env_from.clone(),
        image: e.image.clone(),
        image_pull_policy: e.image_pull_policy.clone(),
        name: e.name.clone(),
        security_context: e.security_context.clone(),
        stdin: e.stdin,
        stdin_once: e.stdin_once,
        termination_message_path: e.termination_message_path.clone(),
        termination_message_policy: e.termination_message_policy.clone(),
        tty: e.tty,
        volume_devices: e.volume_devices.clone(),
        volume_mounts: e.volume_mounts.clone(),
        working_dir: e.working_dir.clone(),
        // Lifecycle, probes, ports and resources are refused by the apiserver for
        // ephemeral containers; nothing of them is carried.
        ..Default::default()
    }
}

/// The pod's ephemeral containers as containers, in the order they were added.
pub fn ephemeral_containers(spec: &PodSpec) -> Vec<k8s_openapi::api::core::v1::Container> {
    spec.ephemeral_containers
        .iter()
        .flatten()
        .map(ephemeral_as_container)
        .collect()
}

/// Every container of a pod in start order: init containers, then the main ones.
pub fn all_containers(
    spec: &PodSpec,
) -> impl Iterator<Item = &k8s_openapi::api::core::v1::Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
}

/// CrashLoopBackOff: the delay before restart number `n` (1-based).
pub fn backoff(n: u32, initial: Duration, max: Duration) -> Duration {
    if n <= 1 {
        return Duration::ZERO;
    }
    let factor = 1u32.checked_shl(n - 2).unwrap_or(u32::MAX);
    initial.saturating_mul(factor).min(max)
}

fn policy(spec: &PodSpec) -> &str {
    spec.restart_policy.as_deref().unwrap_or("Always")
}

fn should_restart(policy: &str, code: i32) -> bool {
    match policy {
        "Always" => true,
        "OnFailure" => code != 0,
        _ => false,
    }
}

/// Whether container `name` of `spec`, exited with `code`, runs again (waiting in
/// back-off meanwhile): a sidecar always; a regular init container on failure unless
/// the policy is `Never`; a main container by the pod's restart policy.
pub fn restarts_after_exit(spec: &PodSpec, name: &str, code: i32) -> bool {
    if let Some(ic) = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == name)
    {
        return is_sidecar(ic) || (policy(spec) != "Never" && code != 0);
    }
    should_restart(policy(spec), code)
}

/// How long after a run ended the run before it is kept for the status that first
/// shows the end (its last state).
pub const JUST_ENDED: Duration = Duration::from_secs(10);

/// How many of a container's newest runs the node keeps, as kubelet's container
/// collection (`MaxPerPodContainer` 1: each container's running run and its newest ended
/// one): two while the latest runs (it and the run before, the status's last state),
/// one while the latest waits to restart (it is the last state) once it ended
/// `JUST_ENDED` ago; two for a latest run that ended for good (the pod's final status
/// shows the run before as its last state). `latest_ended` is how long ago the latest
/// run ended, `None` while it runs.
pub fn runs_to_keep(latest_ended: Option<Duration>, restarts: bool) -> usize {
    match latest_ended {
        Some(ago) if restarts && ago >= JUST_ENDED => 1,
        _ => 2,
    }
}

/// The run `kubectl logs` reads of `runs` (oldest first), as kubelet picks it from the
/// container's status: the latest; with `previous`, the status's `lastState` — the
/// latest itself while it waits to restart (`latest_waits`), else the run before it.
pub fn log_run<R>(runs: &[R], previous: bool, latest_waits: bool) -> Option<&R> {
    match (previous, latest_waits) {
        (false, _) | (true, true) => runs.last(),
        (true, false) => runs.iter().rev().nth(1),
    }
}

fn view<'a>(views: &'a [View], name: &str) -> Option<&'a View> {
    views.iter().find(|v| v.name == name)
}

/// The next actions for a pod; `may_restart(name)` says whether that container's
/// backoff has passed.
///
/// Init containers run in order; a regular one must exit 0 before the next starts, a
/// sidecar (`restartPolicy: Always`) must have started (its startup probe passed) and
/// then keeps running — restarted whenever it exits — next to the main containers.
/// Once every main container is done for good, the sidecars are stopped.
pub fn next(spec: &PodSpec, views: &[View], may_restart: &dyn Fn(&str) -> bool) -> Vec<Action> {
    let policy = policy(spec);
    let mut actions = Vec::new();
    let mains_begun = spec.containers.iter().any(|c| {
        view(views, &c.name).is_some_and(|v| v.current != Observed::NotStarted || v.restarts > 0)
    });
    for ic in spec.init_containers.iter().flatten() {
        let v = view(views, &ic.name);
        let restarts = v.map_or(0, |v| v.restarts);
        let start = |restart| Action::Start {
            name: ic.name.clone(),
            restart,
        };
        match v.map(|v| &v.current) {
            None | Some(Observed::NotStarted) => {
                actions.push(start(0));
                return actions;
            }
            Some(Observed::Running { .. }) if is_sidecar(ic) => {
                if v.is_some_and(|v| v.started == Some(false)) && !mains_begun {
                    return actions;
                }
            }
            Some(Observed::Running { .. }) => return actions,
            Some(Observed::Exited { code: 0, .. }) if !is_sidecar(ic) => {}
            Some(Observed::StartFailed { .. }) => {
                // It never ran: retried (with backoff) whatever the policy.
                if may_restart(&ic.name) {
                    actions.push(start(restarts));
                }
                if !(is_sidecar(ic) && mains_begun) {
                    return actions;
                }
            }
            Some(Observed::Exited { .. }) if is_sidecar(ic) => {
                // A sidecar always comes back, unless the pod is done.
                let done = mains_begun && main_done(spec, views);
                if !done && may_restart(&ic.name) {
                    actions.push(start(restarts + 1));
                }
                if !mains_begun {
                    return actions;
                }
            }
            Some(Observed::Exited { .. }) => {
                // A failed init container is retried unless the pod never restarts.
                if policy != "Never" && may_restart(&ic.name) {
                    actions.push(start(restarts + 1));
                }
                return actions;
            }
        }
    }
    for c in &spec.containers {
        let v = view(views, &c.name);
        let restarts = v.map_or(0, |v| v.restarts);
        match v.map(|v| &v.current) {
            None | Some(Observed::NotStarted) => actions.push(Action::Start {
                name: c.name.clone(),
                restart: 0,
            }),
            Some(Observed::Running { .. }) => {}
            Some(Observed::Exited { code, .. }) => {
                if should_restart(policy, *code) && may_restart(&c.name) {
                    actions.push(Action::Start {
                        name: c.name.clone(),
                        restart: restarts + 1,
                    });
                }
            }
            Some(Observed::StartFailed { .. }) => {
                if may_restart(&c.name) {
                    actions.push(Action::Start {
                        name: c.name.clone(),
                        restart: restarts,
                    });
                }
            }
        }
    }
    // Every main container finished for good: the sidecars go, last first.
    if main_done(spec, views) {
        actions.extend(
            spec.init_containers
                .iter()
                .flatten()
                .filter(|ic| is_sidecar(ic))
                .filter(|ic| {
                    matches!(
                        view(views, &ic.name).map(|v| &v.current),
                        Some(Observed::Running { .. })
                    )
                })
                .rev()
                .map(|ic| Action::Stop {
                    name: ic.name.clone(),
                }),
        );
    }
    actions
}

/// Whether every main container has exited and none will restart.
fn main_done(spec: &PodSpec, views: &[View]) -> bool {
    let policy = policy(spec);
    !spec.containers.is_empty()
        && spec.containers.iter().all(|c| {
            matches!(
                view(views, &c.name).map(|v| &v.current),
                Some(Observed::Exited { code, .. }) if !should_restart(policy, *code)
            )
        })
}

/// The pod phase kubelet reports for these views.
pub fn phase(spec: &PodSpec, views: &[View]) -> &'static str {
    let policy = policy(spec);
    let init_failed = spec.init_containers.iter().flatten().any(|ic| {
        !is_sidecar(ic)
            && matches!(view(views, &ic.name).map(|v| &v.current), Some(Observed::Exited { code, .. }) if *code != 0)
    });
    if init_failed && policy == "Never" {
        return "Failed";
    }
    let mains: Vec<Option<&Observed>> = spec
        .containers
        .iter()
        .map(|c| view(views, &c.name).map(|v| &v.current))
        .collect();
    // A main container that never ran yet keeps the pod Pending, whatever the others
    // do (kubelet counts it as waiting).
    let waiting = spec.containers.iter().any(|c| {
        view(views, &c.name).is_none_or(|v| {
            matches!(
                v.current,
                Observed::NotStarted | Observed::StartFailed { .. }
            ) && v.restarts == 0
                && v.last.is_none()
        })
    });
    if waiting {
        return "Pending";
    }
    if mains
        .iter()
        .any(|o| matches!(o, Some(Observed::Running { .. })))
    {
        return "Running";
    }
    let all_exited = !mains.is_empty()
        && mains
            .iter()
            .all(|o| matches!(o, Some(Observed::Exited { .. })));
    if all_exited {
        let failed = mains
            .iter()
            .any(|o| matches!(o, Some(Observed::Exited { code, .. }) if *code != 0));
        return match (policy, failed) {
            ("Always", _) => "Running",
            ("OnFailure", true) => "Running",
            (_, true) => "Failed",
            (_, false) => "Succeeded",
        };
    }
    "Pending"
}

/// The phase of a pod whose containers were all stopped because it is being deleted
/// (kubelet's terminal phase for deleted pods): Succeeded when every main container
/// exited 0, else Failed — whatever the restart policy.
pub fn phase_when_stopped(spec: &PodSpec, views: &[View]) -> &'static str {
    let succeeded = !spec.containers.is_empty()
        && spec.containers.iter().all(|c| {
            matches!(
                view(views, &c.name).map(|v| &v.current),
                Some(Observed::Exited { code: 0, .. })
            )
        });
    if succeeded { "Succeeded" } else { "Failed" }
}

/// A duration as Go prints it (`10s`, `1m20s`, `5m0s`), for kubelet's messages.
pub fn go_duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m{sec}s"),
        (h, m, sec) => format!("{h}h{m}m{sec}s"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ended_runs_are_kept_as_kubelets_collection_keeps_them() {
        let s = Duration::from_secs;
        assert_eq!(
            runs_to_keep(None, true),
            2,
            "running: it and the run before"
        );
        assert_eq!(
            runs_to_keep(Some(s(2)), true),
            2,
            "just ended: its first status"
        );
        assert_eq!(runs_to_keep(Some(s(30)), true), 1, "waiting to restart");
        assert_eq!(runs_to_keep(Some(s(30)), false), 2, "ended for good");
    }

    #[test]
    fn logs_previous_reads_the_last_state_as_kubelet() {
        let spec: PodSpec = serde_json::from_value(serde_json::json!({
            "restartPolicy": "OnFailure",
            "initContainers": [{"name": "init"}, {"name": "side", "restartPolicy": "Always"}],
            "containers": [{"name": "c"}]}))
        .unwrap();
        assert!(restarts_after_exit(&spec, "c", 1));
        assert!(!restarts_after_exit(&spec, "c", 0));
        assert!(restarts_after_exit(&spec, "side", 0));
        assert!(restarts_after_exit(&spec, "init", 2));
        assert!(!restarts_after_exit(&spec, "init", 0));
        let runs = [0, 1, 2];
        assert_eq!(log_run(&runs, false, false), Some(&2));
        assert_eq!(
            log_run(&runs, true, false),
            Some(&1),
            "before a running or final run"
        );
        assert_eq!(
            log_run(&runs, true, true),
            Some(&2),
            "in back-off: the run that exited"
        );
        assert_eq!(log_run(&runs[..1], true, false), None);
    }

    use super::*;

    #[test]
    fn the_pods_one_user_is_every_containers_run_as_user() {
        let spec = |v: serde_json::Value| -> k8s_openapi::api::core::v1::PodSpec {
            serde_json::from_value(v).unwrap()
        };
        let run_as = |u: i64| serde_json::json!({"runAsUser": u});
        assert_eq!(
            fs_user(&spec(serde_json::json!({"securityContext": run_as(1000),
                "containers": [{"name": "a"}, {"name": "b"}]}))),
            Some(1000)
        );
        assert_eq!(
            fs_user(&spec(serde_json::json!({"securityContext": run_as(1000),
                "containers": [{"name": "a"}, {"name": "b", "securityContext": run_as(2000)}]}))),
            None,
            "two users"
        );
        assert_eq!(
            fs_user(&spec(
                serde_json::json!({"containers": [{"name": "a", "securityContext": run_as(5)},
                {"name": "b"}]})
            )),
            None,
            "one container without a user"
        );
    }
    use serde_json::json;

    fn spec(policy: &str, init: &[&str], main: &[&str]) -> PodSpec {
        serde_json::from_value(json!({
            "restartPolicy": policy,
            "initContainers": init.iter().map(|n| json!({"name": n})).collect::<Vec<_>>(),
            "containers": main.iter().map(|n| json!({"name": n})).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    fn exited(name: &str, code: i32, restarts: u32) -> View {
        View {
            restarts,
            current: Observed::Exited {
                code,
                reason: "Error".into(),
                started_at: "t".into(),
                finished_at: "t".into(),
                message: String::new(),
            },
            ..View::new(name)
        }
    }

    fn running(name: &str) -> View {
        View {
            current: Observed::Running {
                started_at: "t".into(),
            },
            ..View::new(name)
        }
    }

    #[test]
    fn the_spec_hash_follows_what_a_restart_would_change_and_not_resources() {
        let c: k8s_openapi::api::core::v1::Container = serde_json::from_value(json!({
            "name": "a", "image": "busybox:1.36", "resources": {"limits": {"cpu": "1"}},
        }))
        .unwrap();
        let mut image = c.clone();
        image.image = Some("busybox:1.37".into());
        let mut resources = c.clone();
        resources.resources = None;
        let mut env = c.clone();
        env.env = Some(vec![
            serde_json::from_value(json!({"name": "X", "value": "1"})).unwrap(),
        ]);
        assert_eq!(spec_hash(&c), spec_hash(&resources));
        assert_ne!(spec_hash(&c), spec_hash(&image));
        assert_ne!(spec_hash(&c), spec_hash(&env));
        assert_eq!(spec_hash(&c).len(), 16);
    }

    #[test]
    fn a_pod_with_a_main_container_not_yet_started_is_pending() {
        let sp = spec("Always", &[], &["a", "b"]);
        assert_eq!(phase(&sp, &[running("a"), View::new("b")]), "Pending");
        let failed = View {
            current: Observed::StartFailed {
                reason: "ErrImagePull".into(),
                message: String::new(),
            },
            ..View::new("b")
        };
        assert_eq!(phase(&sp, &[running("a"), failed.clone()]), "Pending");
        // One that ran before and waits to restart does not.
        let again = View {
            restarts: 1,
            ..failed
        };
        assert_eq!(phase(&sp, &[running("a"), again]), "Running");
        assert_eq!(phase(&sp, &[running("a"), running("b")]), "Running");
    }

    #[test]
    fn a_stopped_deleted_pod_is_terminal_by_its_containers_exits() {
        let table = [
            (
                "Always",
                vec![exited("a", 0, 3), exited("b", 0, 0)],
                "Succeeded",
            ),
            (
                "Always",
                vec![exited("a", 0, 0), exited("b", 137, 0)],
                "Failed",
            ),
            (
                "OnFailure",
                vec![exited("a", 143, 1), exited("b", 0, 0)],
                "Failed",
            ),
            ("Never", vec![exited("a", 0, 0), View::new("b")], "Failed"),
        ];
        for (policy, views, want) in table {
            let sp = spec(policy, &[], &["a", "b"]);
            assert_eq!(phase_when_stopped(&sp, &views), want, "{policy} {views:?}");
        }
    }

    fn sidecar_spec(policy: &str) -> PodSpec {
        serde_json::from_value(json!({
            "restartPolicy": policy,
            "initContainers": [{"name": "init"}, {"name": "side", "restartPolicy": "Always"}, {"name": "init2"}],
            "containers": [{"name": "a"}],
        }))
        .unwrap()
    }

    fn start(name: &str, restart: u32) -> Action {
        Action::Start {
            name: name.into(),
            restart,
        }
    }

    #[test]
    fn sidecars_start_before_later_init_containers_and_stay() {
        let s = sidecar_spec("Never");
        let yes = |_: &str| true;
        assert_eq!(next(&s, &[exited("init", 0, 0)], &yes), [start("side", 0)]);
        // Running (no startup probe): the next init container may go.
        let side = running("side");
        assert_eq!(
            next(&s, &[exited("init", 0, 0), side.clone()], &yes),
            [start("init2", 0)]
        );
        // With a startup probe not yet passed, it holds the rest back.
        let waiting = View {
            started: Some(false),
            ..side.clone()
        };
        assert!(next(&s, &[exited("init", 0, 0), waiting], &yes).is_empty());
        assert_eq!(
            next(
                &s,
                &[exited("init", 0, 0), side.clone(), exited("init2", 0, 0)],
                &yes
            ),
            [start("a", 0)]
        );
        // A sidecar that exits while the main container runs is restarted, even with
        // restartPolicy Never.
        assert_eq!(
            next(
                &s,
                &[
                    exited("init", 0, 0),
                    exited("side", 1, 0),
                    exited("init2", 0, 0),
                    running("a")
                ],
                &yes
            ),
            [start("side", 1)]
        );
        // The main container is done: the sidecar is stopped, not restarted.
        let done = [
            exited("init", 0, 0),
            side,
            exited("init2", 0, 0),
            exited("a", 0, 0),
        ];
        assert_eq!(
            next(&s, &done, &yes),
            [Action::Stop {
                name: "side".into()
            }]
        );
        assert_eq!(phase(&s, &done), "Succeeded");
    }

    #[test]
    fn durations_print_like_go() {
        assert_eq!(go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(go_duration(Duration::from_secs(80)), "1m20s");
        assert_eq!(go_duration(Duration::from_secs(300)), "5m0s");
        assert_eq!(go_duration(Duration::from_secs(3700)), "1h1m40s");
    }

    #[test]
    fn init_containers_run_in_order_before_the_main_ones() {
        let s = spec("Always", &["i1", "i2"], &["a", "b"]);
        let yes = |_: &str| true;
        assert_eq!(
            next(&s, &[], &yes),
            [Action::Start {
                name: "i1".into(),
                restart: 0
            }]
        );
        assert!(next(&s, &[running("i1")], &yes).is_empty());
        assert_eq!(
            next(&s, &[exited("i1", 0, 0)], &yes),
            [Action::Start {
                name: "i2".into(),
                restart: 0
            }]
        );
        assert_eq!(
            next(&s, &[exited("i1", 3, 0)], &yes),
            [Action::Start {
                name: "i1".into(),
                restart: 1
            }]
        );
        assert_eq!(
            next(&s, &[exited("i1", 0, 0), exited("i2", 0, 0)], &yes),
            [
                Action::Start {
                    name: "a".into(),
                    restart: 0
                },
                Action::Start {
                    name: "b".into(),
                    restart: 0
                }
            ]
        );
        assert_eq!(phase(&s, &[exited("i1", 0, 0)]), "Pending");
        let never = spec("Never", &["i1"], &["a"]);
        assert!(next(&never, &[exited("i1", 1, 0)], &yes).is_empty());
        assert_eq!(phase(&never, &[exited("i1", 1, 0)]), "Failed");
    }

    #[test]
    fn restart_policies_and_phases() {
        let yes = |_: &str| true;
        let no = |_: &str| false;
        let always = spec("Always", &[], &["a"]);
        assert_eq!(
            next(&always, &[exited("a", 0, 2)], &yes),
            [Action::Start {
                name: "a".into(),
                restart: 3
            }]
        );
        assert!(
            next(&always, &[exited("a", 0, 2)], &no).is_empty(),
            "backing off"
        );
        assert_eq!(phase(&always, &[exited("a", 1, 2)]), "Running");
        let on_failure = spec("OnFailure", &[], &["a"]);
        assert!(next(&on_failure, &[exited("a", 0, 0)], &yes).is_empty());
        assert_eq!(phase(&on_failure, &[exited("a", 0, 0)]), "Succeeded");
        assert_eq!(next(&on_failure, &[exited("a", 3, 0)], &yes).len(), 1);
        let never = spec("Never", &[], &["a", "b"]);
        assert_eq!(
            phase(&never, &[exited("a", 0, 0), exited("b", 3, 0)]),
            "Failed"
        );
        assert_eq!(phase(&never, &[exited("a", 0, 0), running("b")]), "Running");
        assert_eq!(phase(&never, &[]), "Pending");
    }

    #[test]
    fn crash_loop_backoff_doubles_to_five_minutes() {
        let (i, m) = (Duration::from_secs(10), Duration::from_secs(300));
        let delays: Vec<u64> = (1..=8).map(|n| backoff(n, i, m).as_secs()).collect();
        assert_eq!(delays, [0, 10, 20, 40, 80, 160, 300, 300]);
    }
}

//! Upstream conformance behaviours of the kubelet, each its own test, on a kernlet node
//! against the control plane (the in-memory one, or a real one from
//! `KUBEBUILDER_ASSETS`): pods are created through the apiserver and bound to the node
//! as the scheduler would, and only what the apiserver and the containers' output show
//! is checked.
#![cfg(target_os = "linux")]
#![allow(
    clippy::unwrap_used,
    reason = "a test that cannot go on should stop loudly"
)]

use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kernlet_tests::cluster::Cluster;
use kernlet_tests::one_node::{Network, OneNode};
use kernlet_tests::wait_for;
use kube::api::{Api, DeleteParams, PostParams};

/// A control plane and one kernlet node `c1` (pod CIDR 10.244.1.0/24) that runs its
/// pods.
struct Env(OneNode);

impl std::ops::Deref for Env {
    type Target = OneNode;
    fn deref(&self) -> &OneNode {
        &self.0
    }
}

async fn env(label: &str) -> Env {
    Env(OneNode::start(label, "c1", Network::Overlay).await.unwrap())
}

impl Env {
    /// Creates the pod and binds it to the node.
    async fn create(&self, pod: serde_json::Value) -> String {
        let pod: Pod = serde_json::from_value(pod).unwrap();
        self.create_bound(&pod).await.unwrap()
    }

    /// Waits until the pod satisfies `ok`; fails naming `what` (with the pod and the
    /// node's log) after `within`.
    async fn wait(
        &self,
        name: &str,
        what: &str,
        within: Duration,
        ok: impl Fn(&Pod) -> bool,
    ) -> Pod {
        let start = std::time::Instant::now();
        loop {
            let p = self.pods.get(name).await.unwrap();
            if ok(&p) {
                return p;
            }
            assert!(
                start.elapsed() < within,
                "{name}: timed out waiting for {what}: {:#?}\n{}",
                p.status,
                self.node.kernlet_log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// What container `container` of `pod` wrote in its first run.
    async fn output(&self, pod: &Pod, container: &str) -> String {
        let dir = kernlet::runtime::logs::pod_dir(
            &self.node.dir("logs"),
            "default",
            pod.metadata.name.as_deref().unwrap(),
            pod.metadata.uid.as_deref().unwrap(),
        );
        let log = kernlet::runtime::logs::container_log(&dir, container, 0);
        let raw = wait_for(
            "the container's output",
            Duration::from_secs(10),
            async || std::fs::read_to_string(&log).ok().filter(|t| !t.is_empty()),
        )
        .await;
        raw.lines()
            .filter_map(kernlet::runtime::logs::parse_line)
            .map(|l| l.text + "\n")
            .collect()
    }
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// The status of container `name` (init or main).
fn container<'a>(p: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    let s = p.status.as_ref()?;
    s.init_container_statuses
        .iter()
        .flatten()
        .chain(s.container_statuses.iter().flatten())
        .find(|c| c.name == name)
}

fn running(p: &Pod, name: &str) -> bool {
    container(p, name)
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_some())
}

fn condition(p: &Pod, ty: &str) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == ty)
        .map(|c| c.status.clone())
}

fn busybox(name: &str, script: &str) -> serde_json::Value {
    serde_json::json!({"name": name, "image": "busybox:1.36", "command": ["sh", "-c", script]})
}

/// [k8s.io] Pods should be submitted and removed: the pod runs, and a graceful delete
/// removes it from the apiserver (kernlet's final DELETE) and from the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_submitted_and_removed() {
    let e = env("cf-submit").await;
    let name = e
        .create(serde_json::json!({
            "metadata": {"name": "pod-submit-remove", "labels": {"time": "now"}},
            "spec": {"terminationGracePeriodSeconds": 30,
                     "containers": [busybox("c", "exec sleep 600")]},
        }))
        .await;
    e.wait(&name, "running", Duration::from_secs(60), |p| {
        phase(p) == "Running" && running(p, "c")
    })
    .await;
    e.pods
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    // sleep as PID 1 ignores SIGTERM; SIGKILL comes at the 30 s grace deadline at the
    // latest (kernlet waits no longer), then the object goes.
    wait_for(
        "the pod gone from the apiserver",
        Duration::from_secs(60),
        async || e.pods.get_opt(&name).await.ok()?.is_none().then_some(()),
    )
    .await;
    wait_for(
        "the pod gone from the node",
        Duration::from_secs(10),
        async || {
            let left = std::fs::read_dir(e.node.dir("state").join("pods"))
                .map(|d| d.count())
                .unwrap_or(0);
            (left == 0).then_some(())
        },
    )
    .await;
}

/// [k8s.io] Container Runtime blackbox test, on terminated container: the exit status
/// decides restarts and the phase per restart policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_exit_status_follows_the_restart_policy() {
    let e = env("cf-exit").await;
    for (name, policy, code) in [
        ("terminate-cmd-rpa", "Always", 0),
        ("terminate-cmd-rpof", "OnFailure", 0),
        ("terminate-cmd-rpn", "Never", 3),
    ] {
        e.create(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"restartPolicy": policy, "terminationGracePeriodSeconds": 1,
                     "containers": [busybox("c", &format!("exit {code}"))]},
        }))
        .await;
    }
    // Always: restarted although it succeeded; the pod stays Running.
    let p = e
        .wait(
            "terminate-cmd-rpa",
            "a restart",
            Duration::from_secs(60),
            |p| container(p, "c").is_some_and(|c| c.restart_count >= 1),
        )
        .await;
    assert_eq!(phase(&p), "Running");
    let last = container(&p, "c")
        .and_then(|c| c.last_state.as_ref()?.terminated.clone())
        .expect("lastState.terminated");
    assert_eq!(
        (last.exit_code, last.reason.as_deref()),
        (0, Some("Completed"))
    );
    // OnFailure with success: Succeeded, never restarted.
    let p = e
        .wait(
            "terminate-cmd-rpof",
            "Succeeded",
            Duration::from_secs(60),
            |p| phase(p) == "Succeeded",
        )
        .await;
    let c = container(&p, "c").unwrap();
    assert_eq!(c.restart_count, 0);
    assert!(!c.ready);
    let t = c.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
    // Never with failure: Failed with the code, never restarted.
    let p = e
        .wait(
            "terminate-cmd-rpn",
            "Failed",
            Duration::from_secs(60),
            |p| phase(p) == "Failed",
        )
        .await;
    let c = container(&p, "c").unwrap();
    assert_eq!(c.restart_count, 0);
    let t = c.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!((t.exit_code, t.reason.as_deref()), (3, Some("Error")));
    assert_eq!(condition(&p, "Ready").as_deref(), Some("False"));
}

/// [k8s.io] Probing container should be restarted with an exec "cat /tmp/health"
/// liveness probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_liveness_probe_restarts_the_container() {
    let e = env("cf-liveness").await;
    let name = e
        .create(serde_json::json!({
            "metadata": {"name": "liveness-exec"},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                "name": "c", "image": "busybox:1.36",
                "command": ["sh", "-c", "echo ok > /tmp/health; sleep 4; rm -f /tmp/health; sleep 600"],
                "livenessProbe": {"exec": {"command": ["cat", "/tmp/health"]},
                                  "initialDelaySeconds": 1, "periodSeconds": 1, "failureThreshold": 1},
            }]},
        }))
        .await;
    let p = e
        .wait(&name, "a restart", Duration::from_secs(60), |p| {
            container(p, "c").is_some_and(|c| c.restart_count >= 1)
        })
        .await;
    let last = container(&p, "c")
        .and_then(|c| c.last_state.as_ref()?.terminated.clone())
        .expect("lastState.terminated");
    // Killed for the failed probe, not exited by itself.
    assert_eq!(last.exit_code, 137, "{last:?}");
}

/// [k8s.io] Pods should have monotonically increasing restart count: each restart
/// comes after a longer back-off than the one before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_counts_increase_with_back_off() {
    let e = env("cf-restarts").await;
    let name = e
        .create(serde_json::json!({
            "metadata": {"name": "crasher"},
            "spec": {"terminationGracePeriodSeconds": 1,
                     "containers": [busybox("c", "exit 1")]},
        }))
        .await;
    let mut seen = Vec::new();
    let mut last_count = 0;
    let start = std::time::Instant::now();
    while last_count < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "restarts so far: {seen:?}"
        );
        let p = e.pods.get(&name).await.unwrap();
        if let Some(c) = container(&p, "c") {
            assert!(
                c.restart_count >= last_count,
                "restartCount went from {last_count} to {}",
                c.restart_count
            );
            if c.restart_count > last_count {
                seen.push((c.restart_count, std::time::Instant::now()));
                last_count = c.restart_count;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Back-off 10 s, then 20 s: the gap between the 2nd and 3rd restart is longer.
    let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1].1 - w[0].1).collect();
    assert!(
        gaps.last().unwrap() > &Duration::from_secs(15),
        "back-off doubles: {gaps:?}"
    );
    let p = e.pods.get(&name).await.unwrap();
    let waiting = container(&p, "c").and_then(|c| c.state.as_ref()?.waiting.clone());
    if let Some(w) = waiting {
        assert_eq!(w.reason.as_deref(), Some("CrashLoopBackOff"));
    }
}

/// [k8s.io] Probing container with readiness probe that fails should never be ready
/// and never restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_readiness_probe_is_never_ready_and_never_restarted() {
    let e = env("cf-readiness").await;
    let name = e
        .create(serde_json::json!({
            "metadata": {"name": "never-ready"},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                "name": "c", "image": "busybox:1.36", "command": ["sleep", "600"],
                "readinessProbe": {"exec": {"command": ["/bin/false"]}, "periodSeconds": 1},
            }]},
        }))
        .await;
    e.wait(&name, "running", Duration::from_secs(60), |p| {
        running(p, "c")
    })
    .await;
    let until = std::time::Instant::now() + Duration::from_secs(12);
    while std::time::Instant::now() < until {
        let p = e.pods.get(&name).await.unwrap();
        let c = container(&p, "c").unwrap();
        assert!(!c.ready, "{c:?}");
        assert_eq!(c.restart_count, 0, "{c:?}");
        assert_eq!(condition(&p, "Ready").as_deref(), Some("False"));
        assert_eq!(condition(&p, "ContainersReady").as_deref(), Some("False"));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// [k8s.io] Container Lifecycle Hook should execute prestop exec hook properly: the
/// hook runs when the pod is deleted, before the container is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pre_stop_hook_runs_on_delete() {
    let e = env("cf-prestop").await;
    let out = e.node.dir("prestop-out");
    std::fs::create_dir_all(&out).unwrap();
    let name = e
        .create(serde_json::json!({
            "metadata": {"name": "pod-with-prestop-exec-hook"},
            "spec": {"terminationGracePeriodSeconds": 10,
                     "volumes": [{"name": "out", "hostPath": {"path": out, "type": "Directory"}}],
                     "containers": [{
                "name": "c", "image": "busybox:1.36",
                "command": ["sh", "-c", "trap 'echo term >> /out/log; exit 0' TERM; while true; do sleep 0.2; done"],
                "volumeMounts": [{"name": "out", "mountPath": "/out"}],
                "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "echo prestop >> /out/log"]}}},
            }]},
        }))
        .await;
    e.wait(&name, "running", Duration::from_secs(60), |p| {
        running(p, "c")
    })
    .await;
    e.pods
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    wait_for("the pod gone", Duration::from_secs(30), async || {
        e.pods.get_opt(&name).await.ok()?.is_none().then_some(())
    })
    .await;
    let log = std::fs::read_to_string(out.join("log")).unwrap();
    assert_eq!(log, "prestop\nterm\n", "the hook, then SIGTERM");
}

/// [k8s.io] InitContainer should not start app containers if init containers fail on
/// a RestartNever pod (and keep retrying them on a RestartAlways pod).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_init_container_blocks_the_app_containers() {
    let e = env("cf-init").await;
    for (name, policy) in [
        ("init-fails-never", "Never"),
        ("init-fails-always", "Always"),
    ] {
        e.create(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"restartPolicy": policy, "terminationGracePeriodSeconds": 1,
                     "initContainers": [busybox("init1", "exit 1"), busybox("init2", "true")],
                     "containers": [busybox("run1", "sleep 600")]},
        }))
        .await;
    }
    let p = e
        .wait("init-fails-never", "Failed", Duration::from_secs(60), |p| {
            phase(p) == "Failed"
        })
        .await;
    let t = container(&p, "init1")
        .and_then(|c| c.state.as_ref()?.terminated.clone())
        .expect("init1 terminated");
    assert_eq!(t.exit_code, 1);
    for never in ["init2", "run1"] {
        let c = container(&p, never).unwrap();
        assert!(
            c.state.as_ref().unwrap().waiting.is_some(),
            "{never} never started: {c:?}"
        );
    }
    assert_eq!(condition(&p, "Initialized").as_deref(), Some("False"));
    let p = e
        .wait(
            "init-fails-always",
            "init1 retried",
            Duration::from_secs(60),
            |p| container(p, "init1").is_some_and(|c| c.restart_count >= 1),
        )
        .await;
    assert_eq!(phase(&p), "Pending");
    let run1 = container(&p, "run1").unwrap();
    assert!(run1.state.as_ref().unwrap().waiting.is_some(), "{run1:?}");
    assert_eq!(run1.restart_count, 0);
}

/// [k8s.io] Security Context when creating containers with a read-only root
/// filesystem should not allow writing to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_root_filesystem_refuses_writes() {
    let e = env("cf-rofs").await;
    let name = e
        .create(serde_json::json!({
            "metadata": {"name": "busybox-readonly-true"},
            "spec": {"restartPolicy": "Never", "containers": [{
                "name": "c", "image": "busybox:1.36",
                "command": ["sh", "-c", "echo x > /file"],
                "securityContext": {"readOnlyRootFilesystem": true},
            }]},
        }))
        .await;
    let p = e
        .wait(&name, "Failed", Duration::from_secs(60), |p| {
            phase(p) == "Failed"
        })
        .await;
    let out = e.output(&p, "c").await;
    assert!(out.contains("Read-only file system"), "{out}");
}

/// [k8s.io] Security Context when creating containers with AllowPrivilegeEscalation
/// should not allow privilege escalation when false: the process has no_new_privs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_privilege_escalation_false_sets_no_new_privs() {
    let e = env("cf-nnp").await;
    for (name, allow) in [("ape-false", false), ("ape-true", true)] {
        e.create(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "containers": [{
                "name": "c", "image": "busybox:1.36",
                "command": ["grep", "NoNewPrivs", "/proc/self/status"],
                "securityContext": {"runAsUser": 1000, "allowPrivilegeEscalation": allow},
            }]},
        }))
        .await;
    }
    for (name, want) in [("ape-false", "1"), ("ape-true", "0")] {
        let p = e
            .wait(name, "Succeeded", Duration::from_secs(60), |p| {
                phase(p) == "Succeeded"
            })
            .await;
        let out = e.output(&p, "c").await;
        assert_eq!(
            out.split_whitespace().collect::<Vec<_>>(),
            ["NoNewPrivs:", want],
            "{name}"
        );
    }
}

/// [k8s.io] Security Context when creating containers with runAsUser should run the
/// container with uid 65534.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_as_user_65534() {
    let e = env("cf-uid").await;
    let name = e
        .create(serde_json::json!({
            "metadata": {"name": "busybox-user-65534"},
            "spec": {"restartPolicy": "Never", "containers": [{
                "name": "c", "image": "busybox:1.36", "command": ["id", "-u"],
                "securityContext": {"runAsUser": 65534},
            }]},
        }))
        .await;
    let p = e
        .wait(&name, "Succeeded", Duration::from_secs(60), |p| {
            phase(p) == "Succeeded"
        })
        .await;
    assert_eq!(e.output(&p, "c").await, "65534\n");
}

/// [k8s.io] KubeletManagedEtcHosts should test kubelet managed /etc/hosts file: a pod's
/// containers get kubelet's managed hosts file (with hostAliases), except one that
/// mounts its own /etc/hosts; a hostNetwork pod gets the node's under kubelet's
/// host-network header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etc_hosts_is_managed() {
    let e = env("cf-hosts").await;
    let own = e.node.dir("own-hosts");
    std::fs::create_dir_all(&own).unwrap();
    std::fs::write(own.join("hosts"), "127.0.0.1 mine\n").unwrap();
    e.create(serde_json::json!({
        "metadata": {"name": "test-pod"},
        "spec": {"restartPolicy": "Never",
                 "hostAliases": [{"ip": "123.45.67.89", "hostnames": ["foo", "bar"]}],
                 "volumes": [{"name": "own", "hostPath": {"path": own.join("hosts"), "type": "File"}}],
                 "containers": [busybox("managed", "cat /etc/hosts"), {
                     "name": "own", "image": "busybox:1.36", "command": ["cat", "/etc/hosts"],
                     "volumeMounts": [{"name": "own", "mountPath": "/etc/hosts"}]}]},
    }))
    .await;
    e.create(serde_json::json!({
        "metadata": {"name": "test-host-network-pod"},
        "spec": {"restartPolicy": "Never", "hostNetwork": true,
                 "containers": [busybox("c", "cat /etc/hosts")]},
    }))
    .await;
    let p = e
        .wait("test-pod", "Succeeded", Duration::from_secs(60), |p| {
            phase(p) == "Succeeded"
        })
        .await;
    let managed = e.output(&p, "managed").await;
    let ip = p.status.as_ref().unwrap().pod_ip.clone().unwrap();
    assert!(ip.starts_with("10.244.1."), "{ip}");
    // kubelet's exact header: the upstream test takes a file as managed by it.
    assert!(
        managed.starts_with("# Kubernetes-managed hosts file.\n"),
        "{managed}"
    );
    assert!(managed.contains("123.45.67.89\tfoo\tbar"), "{managed}");
    assert!(
        managed
            .lines()
            .any(|l| l.starts_with(&format!("{ip}\t")) && l.ends_with("test-pod")),
        "the pod's own name and IP ({ip}): {managed}"
    );
    assert_eq!(e.output(&p, "own").await, "127.0.0.1 mine\n");
    let p = e
        .wait(
            "test-host-network-pod",
            "Succeeded",
            Duration::from_secs(60),
            |p| phase(p) == "Succeeded",
        )
        .await;
    let host = e.output(&p, "c").await;
    // The node's file under kubelet's host-network header, which the upstream test
    // does not take for a managed one.
    assert_eq!(
        host,
        format!(
            "# Kubernetes-managed hosts file (host network).\n{}",
            std::fs::read_to_string("/etc/hosts").unwrap()
        )
    );
}

/// [sig-storage] Subpath with an absolute path: a 1.36 apiserver refuses the pod at
/// validation (the upstream spec that ran it on nodes is gone), so it never reaches a
/// node; kernlet's own refusal, for static pods, is tested in `runtime.rs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_sub_path_is_refused() {
    let cluster = Cluster::start(&[]).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(cluster.admin().await.unwrap(), "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "pod-subpath-absolute"},
        "spec": {"volumes": [{"name": "v", "emptyDir": {}}],
                 "containers": [{"name": "c", "image": "busybox:1.36", "command": ["sleep", "600"],
                                 "volumeMounts": [{"name": "v", "mountPath": "/v", "subPath": "/tmp"}]}]},
    }))
    .unwrap();
    match pods.create(&PostParams::default(), &pod).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 422, "{e:?}");
            assert!(e.message.contains("must be a relative path"), "{e:?}");
        }
        other => panic!("an absolute subPath was accepted: {other:?}"),
    }
}

/// [sig-node] Pods should contain environment variables for services: a container gets
/// `<NAME>_SERVICE_HOST`/`_PORT` and the Docker-link variables of every Service of its
/// namespace that exists when it starts (from the node's Services watch, so no request
/// per container), and a Service deleted before a later pod starts is not in that
/// pod's variables; `enableServiceLinks: false` leaves only the apiserver's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_get_the_variables_of_their_namespaces_services() {
    use k8s_openapi::api::core::v1::Service;
    let e = env("cf-svcenv").await;
    let services: Api<Service> = Api::namespaced(e.pods.clone().into_client(), "default");
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "fooservice"},
        "spec": {"selector": {"name": "nothing"},
                 "ports": [{"name": "web", "port": 8765, "protocol": "TCP"}]},
    }))
    .unwrap();
    let ip = services
        .create(&PostParams::default(), &svc)
        .await
        .unwrap()
        .spec
        .and_then(|s| s.cluster_ip)
        .unwrap();
    let env_of = async |name: &str, links: bool| {
        let name = e
            .create(serde_json::json!({
                "metadata": {"name": name},
                "spec": {"restartPolicy": "Never", "enableServiceLinks": links,
                         "containers": [busybox("c", "env")]},
            }))
            .await;
        let p = e
            .wait(&name, "Succeeded", Duration::from_secs(60), |p| {
                phase(p) == "Succeeded"
            })
            .await;
        e.output(&p, "c").await
    };
    let out = env_of("svc-env", true).await;
    for want in [
        format!("FOOSERVICE_SERVICE_HOST={ip}"),
        "FOOSERVICE_SERVICE_PORT=8765".to_string(),
        "FOOSERVICE_SERVICE_PORT_WEB=8765".to_string(),
        format!("FOOSERVICE_PORT=tcp://{ip}:8765"),
        format!("FOOSERVICE_PORT_8765_TCP_ADDR={ip}"),
        "KUBERNETES_SERVICE_HOST=".to_string(),
    ] {
        assert!(out.contains(&want), "{want} in:\n{out}");
    }
    let out = env_of("svc-env-nolinks", false).await;
    assert!(!out.contains("FOOSERVICE_"), "{out}");
    assert!(out.contains("KUBERNETES_SERVICE_HOST="), "{out}");
    services
        .delete("fooservice", &DeleteParams::default())
        .await
        .unwrap();
    // The node's watch sees the delete within moments; a pod started after it has no
    // variables of the Service.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let out = env_of("svc-env-after", true).await;
    assert!(!out.contains("FOOSERVICE_"), "{out}");
}

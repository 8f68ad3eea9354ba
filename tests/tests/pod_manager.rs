//! The pod manager against the control plane, as kubelet behaves: spec updates
//! (observedGeneration, a changed image restarts only that container), readiness gates,
//! postStart before the next container, and termination (the shortest grace period
//! wins, the terminal phase is written before the object goes, a forced delete kills at
//! once). Root: runs kernlet on a SimNode.

#![allow(
    clippy::unwrap_used,
    reason = "a test that cannot go on should stop loudly"
)]

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kernlet_tests::one_node::{Network, OneNode};
use kernlet_tests::wait_for;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

/// A cluster, and one node `w1` running kernlet with busybox in its image store.
struct Setup(OneNode);

impl std::ops::Deref for Setup {
    type Target = OneNode;
    fn deref(&self) -> &OneNode {
        &self.0
    }
}

async fn setup(name: &str) -> Setup {
    let flags = ["--node-lease-renew-interval-ms", "300"];
    Setup(
        OneNode::start(name, "w1", Network::Loopback(&flags))
            .await
            .unwrap(),
    )
}

impl Setup {
    async fn run(&self, pod: serde_json::Value) -> Pod {
        let pod: Pod = serde_json::from_value(pod).unwrap();
        let name = self.create_bound(&pod).await.unwrap();
        self.wait(&name, "running", |p| {
            let s = p.status.as_ref()?;
            let all = s.container_statuses.as_ref()?;
            (s.phase.as_deref() == Some("Running")
                && all
                    .iter()
                    .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some())))
            .then_some(())
        })
        .await;
        self.pods.get(&name).await.unwrap()
    }

    /// Waits until pod `name` satisfies `f` (`what` says what is awaited).
    async fn wait<T>(&self, name: &str, what: &str, f: impl Fn(&Pod) -> Option<T>) -> T {
        let started = std::time::Instant::now();
        loop {
            if let Ok(p) = self.pods.get(name).await
                && let Some(v) = f(&p)
            {
                return v;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "timed out waiting for {name}: {what}: {:#?}\n{}",
                self.pods
                    .get_opt(name)
                    .await
                    .ok()
                    .flatten()
                    .map(|p| p.status),
                self.node.kernlet_log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn container_id(p: &Pod, name: &str) -> (String, i32) {
    let c = p
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == name)
        .unwrap();
    (c.container_id.clone().unwrap_or_default(), c.restart_count)
}

/// A spec update is observed (status.observedGeneration and every condition's); a
/// changed image restarts that container and no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_updates_are_observed_and_a_new_image_restarts_only_its_container() {
    let s = setup("podgen").await;
    let pod = s
        .run(json!({
            "metadata": {"name": "gen"},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [
                {"name": "a", "image": "busybox:1.36", "command": ["sleep", "600"]},
                {"name": "b", "image": "busybox:1.36", "command": ["sleep", "600"]},
            ]},
        }))
        .await;
    assert_eq!(pod.metadata.generation, Some(1));
    let observed = |p: &Pod, g: i64| {
        let s = p.status.as_ref()?;
        (s.observed_generation == Some(g)
            && s.conditions
                .iter()
                .flatten()
                .all(|c| c.observed_generation == Some(g)))
        .then_some(())
    };
    s.wait("gen", "at generation 1", |p| observed(p, 1)).await;
    let (a0, b0) = (container_id(&pod, "a"), container_id(&pod, "b"));

    let patch = |v: serde_json::Value| Patch::Strategic(v);
    s.pods
        .patch(
            "gen",
            &PatchParams::default(),
            &patch(json!({"spec": {"activeDeadlineSeconds": 5000}})),
        )
        .await
        .unwrap();
    s.wait("gen", "at generation 2", |p| observed(p, 2)).await;

    // The same image under another name: a new spec for b, the same image to run.
    s.pods
        .patch(
            "gen",
            &PatchParams::default(),
            &patch(json!({"spec": {"containers": [
                {"name": "b", "image": "docker.io/library/busybox:1.36"},
            ]}})),
        )
        .await
        .unwrap();
    let p = s
        .wait("gen", "b restarted", |p| {
            observed(p, 3)?;
            let (id, restarts) = container_id(p, "b");
            let running = p
                .status
                .as_ref()?
                .container_statuses
                .iter()
                .flatten()
                .any(|c| c.name == "b" && c.state.as_ref().is_some_and(|s| s.running.is_some()));
            (restarts == 1 && id != b0.0 && running).then(|| p.clone())
        })
        .await;
    assert_eq!(container_id(&p, "a"), a0, "a was left alone");
    let b = p
        .status
        .unwrap()
        .container_statuses
        .unwrap()
        .into_iter()
        .find(|c| c.name == "b")
        .unwrap();
    assert_eq!(b.image, "docker.io/library/busybox:1.36");
    assert!(
        s.node
            .kernlet_log()
            .contains("Container b definition changed, will be restarted"),
        "{}",
        s.node.kernlet_log()
    );
}

/// A pod with a readiness gate stays unready, with kubelet's reason, until someone
/// sets the gate's condition True; its containers are ready meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_gates_hold_the_pod_unready_until_their_condition_is_true() {
    let s = setup("podgate").await;
    s.run(json!({
        "metadata": {"name": "gated"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "readinessGates": [{"conditionType": "example.com/lb"}],
            "containers": [{"name": "a", "image": "busybox:1.36", "command": ["sleep", "600"]}],
        },
    }))
    .await;
    let condition = |p: &Pod, t: &str| {
        p.status
            .as_ref()?
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == t)
            .cloned()
    };
    let ready = s
        .wait("gated", "unready by its gate", |p| {
            let r = condition(p, "Ready")?;
            (r.reason.as_deref() == Some("ReadinessGatesNotReady")).then_some(r)
        })
        .await;
    assert_eq!(ready.status, "False");
    assert_eq!(
        ready.message.as_deref(),
        Some("corresponding condition of pod readiness gate \"example.com/lb\" does not exist.")
    );
    let p = s.pods.get("gated").await.unwrap();
    assert_eq!(condition(&p, "ContainersReady").unwrap().status, "True");

    s.pods
        .patch_status(
            "gated",
            &PatchParams::default(),
            &Patch::Strategic(json!({"status": {"conditions": [
                {"type": "example.com/lb", "status": "True"},
            ]}})),
        )
        .await
        .unwrap();
    s.wait("gated", "ready", |p| {
        (condition(p, "Ready")?.status == "True").then_some(())
    })
    .await;
    // The gate's condition is the other writer's and stays.
    let p = s.pods.get("gated").await.unwrap();
    assert_eq!(condition(&p, "example.com/lb").unwrap().status, "True");
}

/// postStart returns before the next container starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_container_starts_after_post_start_returned() {
    let s = setup("podhook").await;
    let pod = s
        .run(json!({
            "metadata": {"name": "hooked"},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "volumes": [{"name": "shared", "emptyDir": {}}],
                "containers": [
                    {"name": "a", "image": "busybox:1.36", "command": ["sleep", "600"],
                     "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
                     "lifecycle": {"postStart": {"exec": {"command": ["sh", "-c", "sleep 2; touch /shared/hook-done"]}}}},
                    {"name": "b", "image": "busybox:1.36",
                     "command": ["sh", "-c", "if [ -e /shared/hook-done ]; then echo after; else echo before; fi; exec sleep 600"],
                     "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]},
                ],
            },
        }))
        .await;
    let uid = pod.metadata.uid.unwrap();
    let log = kernlet::runtime::logs::container_log(
        &kernlet::runtime::logs::pod_dir(&s.node.dir("logs"), "default", "hooked", &uid),
        "b",
        0,
    );
    let text = wait_for("b's output", Duration::from_secs(20), async || {
        std::fs::read_to_string(&log).ok().filter(|t| !t.is_empty())
    })
    .await;
    let line = kernlet::runtime::logs::parse_line(text.lines().next().unwrap()).unwrap();
    assert_eq!(line.text, "after", "{}", s.node.kernlet_log());
}

/// A pod deleted with a long grace period keeps running and reporting Running; a
/// second delete with a short one ends it then, with the killed container's
/// terminated state and phase Failed written before the object goes. A forced delete
/// of another such pod kills it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shortest_grace_period_wins_and_the_terminal_phase_is_written() {
    use futures::StreamExt as _;
    let s = setup("podgrace").await;
    let stubborn = |name: &str| {
        json!({
            "metadata": {"name": name},
            "spec": {"terminationGracePeriodSeconds": 300, "containers": [
                {"name": "c", "image": "busybox:1.36",
                 "command": ["sh", "-c", "trap '' TERM; while true; do sleep 1; done"]},
            ]},
        })
    };
    s.run(stubborn("slow")).await;
    let statuses = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Pod>::new()));
    let recorder = {
        let (statuses, pods) = (statuses.clone(), s.pods.clone());
        tokio::spawn(async move {
            let mut stream = kube::runtime::watcher(pods, Default::default()).boxed();
            while let Some(Ok(e)) = stream.next().await {
                if let kube::runtime::watcher::Event::Apply(p) = e {
                    statuses.lock().unwrap().push(p);
                }
            }
        })
    };
    s.pods
        .delete("slow", &DeleteParams::default())
        .await
        .unwrap();
    // Still there and running a few seconds on: SIGTERM is ignored, 300 s are given.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let p = s.pods.get("slow").await.unwrap();
    assert!(p.metadata.deletion_timestamp.is_some());
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Running"));

    s.pods
        .delete(
            "slow",
            &DeleteParams {
                grace_period_seconds: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    wait_for("pod slow gone", Duration::from_secs(30), async || {
        s.pods.get_opt("slow").await.ok()?.is_none().then_some(())
    })
    .await;
    recorder.abort();
    let last = statuses
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|p| p.metadata.name.as_deref() == Some("slow"))
        .and_then(|p| p.status.clone())
        .unwrap();
    assert_eq!(last.phase.as_deref(), Some("Failed"), "{last:#?}");
    let c = &last.container_statuses.unwrap()[0];
    let t = c.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(t.exit_code, 137, "killed at the shortened deadline: {c:#?}");
    assert!(!c.ready);

    // Forced: the object goes at once; the node kills what runs with grace 0.
    s.run(stubborn("forced")).await;
    s.pods
        .delete("forced", &DeleteParams::default())
        .await
        .unwrap();
    s.pods
        .delete(
            "forced",
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(s.pods.get_opt("forced").await.unwrap().is_none());
    wait_for(
        "the forced pod's sandbox gone",
        Duration::from_secs(30),
        async || {
            let left = std::fs::read_dir(s.node.dir("state").join("pods"))
                .map(|d| d.count())
                .unwrap_or(0);
            (left == 0).then_some(())
        },
    )
    .await;
    if let Some(refused) = s.cluster.node_refusals() {
        assert!(refused.is_empty(), "{refused:#?}");
    }
}

/// `kubectl debug --target`: an ephemeral container added through the
/// `ephemeralcontainers` subresource runs once, in its target's process namespace,
/// reported in `ephemeralContainerStatuses`; the pod's own containers are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ephemeral_container_runs_in_its_targets_process_namespace() {
    let s = setup("podebug").await;
    let pod = s
        .run(json!({
            "metadata": {"name": "debugged"},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [
                {"name": "app", "image": "busybox:1.36", "command": ["sleep", "600"]},
            ]},
        }))
        .await;
    let app = container_id(&pod, "app");
    s.pods
        .patch_subresource(
            "ephemeralcontainers",
            "debugged",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"ephemeralContainers": [{
                "name": "debugger", "image": "busybox:1.36", "targetContainerName": "app",
                "command": ["sh", "-c", "ps -o pid,comm; exec sleep 600"],
            }]}})),
        )
        .await
        .unwrap();
    let status = s
        .wait("debugged", "the debugger running", |p| {
            let e = p
                .status
                .as_ref()?
                .ephemeral_container_statuses
                .as_ref()?
                .first()?
                .clone();
            e.state.as_ref()?.running.as_ref()?;
            Some(e)
        })
        .await;
    assert_eq!(status.name, "debugger");
    assert!(!status.ready);
    assert_eq!(status.restart_count, 0);
    assert!(status.container_id.unwrap().starts_with("kernlet://"));
    let uid = pod.metadata.uid.unwrap();
    let log = kernlet::runtime::logs::container_log(
        &kernlet::runtime::logs::pod_dir(&s.node.dir("logs"), "default", "debugged", &uid),
        "debugger",
        0,
    );
    let text = wait_for("the debugger's ps", Duration::from_secs(20), async || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.lines().count() >= 2)
    })
    .await;
    let lines: Vec<String> = text
        .lines()
        .filter_map(|l| kernlet::runtime::logs::parse_line(l).map(|l| l.text))
        .collect();
    // PID 1 of the namespace it joined is the target's `sleep`.
    assert!(
        lines.iter().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f == ["1", "sleep"]
        }),
        "{lines:#?}"
    );
    let p = s.pods.get("debugged").await.unwrap();
    assert_eq!(container_id(&p, "app"), app, "the target was left alone");
}

/// In-place resize through the `resize` subresource: a container whose policy allows it
/// is resized without a restart (allocatedResources and resources follow); one whose
/// policy says RestartContainer restarts for it; a resize beyond the node is
/// Infeasible (PodResizePending) and changes nothing until it is taken back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resizes_are_allocated_and_actuated_as_their_policy_says() {
    let s = setup("podresize").await;
    let res = |cpu: &str, mem: &str| json!({"requests": {"cpu": cpu, "memory": mem}, "limits": {"cpu": cpu, "memory": mem}});
    let pod = s
        .run(json!({
            "metadata": {"name": "resized"},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [
                {"name": "a", "image": "busybox:1.36", "command": ["sleep", "600"],
                 "resources": res("100m", "64Mi")},
                {"name": "b", "image": "busybox:1.36", "command": ["sleep", "600"],
                 "resources": res("100m", "64Mi"),
                 "resizePolicy": [{"resourceName": "memory", "restartPolicy": "RestartContainer"}]},
            ]},
        }))
        .await;
    let (a0, b0) = (container_id(&pod, "a"), container_id(&pod, "b"));
    let resize = async |containers: serde_json::Value| {
        s.pods
            .patch_subresource(
                "resize",
                "resized",
                &PatchParams::default(),
                &Patch::Strategic(json!({"spec": {"containers": containers}})),
            )
            .await
            .unwrap()
    };
    let status_of = |p: &Pod, name: &str| {
        p.status
            .as_ref()?
            .container_statuses
            .iter()
            .flatten()
            .find(|c| c.name == name)
            .cloned()
    };
    let cpu_of = |c: &k8s_openapi::api::core::v1::ContainerStatus| {
        let limits = c.resources.as_ref()?.limits.as_ref()?;
        Some(limits.get("cpu")?.0.clone())
    };

    // a: CPU up, in place.
    resize(json!([{"name": "a", "resources": res("200m", "64Mi")}])).await;
    let p = s
        .wait("resized", "a resized in place", |p| {
            let a = status_of(p, "a")?;
            (a.allocated_resources.as_ref()?.get("cpu")?.0 == "200m"
                && cpu_of(&a)? == "200m"
                && p.status.as_ref()?.observed_generation == p.metadata.generation)
                .then(|| p.clone())
        })
        .await;
    assert_eq!(container_id(&p, "a"), a0, "no restart for a");
    assert_eq!(container_id(&p, "b"), b0);

    // b: memory up, and its policy restarts it.
    resize(json!([{"name": "b", "resources": res("100m", "128Mi")}])).await;
    let p = s
        .wait("resized", "b restarted for its resize", |p| {
            let b = status_of(p, "b")?;
            let mem = b
                .resources
                .as_ref()?
                .limits
                .as_ref()?
                .get("memory")?
                .0
                .clone();
            (b.restart_count == 1 && mem == "128Mi" && b.state.as_ref()?.running.is_some())
                .then(|| p.clone())
        })
        .await;
    assert_eq!(container_id(&p, "a"), a0, "a left alone");

    // More CPU than the node has at all: the apiserver refuses it (as 1.36 does).
    let refused = s
        .pods
        .patch_subresource(
            "resize",
            "resized",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"containers": [
                {"name": "a", "resources": res("100000", "64Mi")},
            ]}})),
        )
        .await;
    match refused {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 403, "{e:?}");
            assert!(
                e.message
                    .contains("node didn't have enough allocatable resources: cpu"),
                "{e:?}"
            );
        }
        other => panic!("an infeasible resize was taken: {other:?}"),
    }
    // More than the other pods leave: Deferred (PodResizePending) until they go.
    let node: Node = Api::<Node>::all(s.cluster.admin().await.unwrap())
        .get("w1")
        .await
        .unwrap();
    let allocatable = kernlet::model::quantity::Quantity::parse(
        &node.status.unwrap().allocatable.unwrap()["cpu"].0,
    )
    .unwrap()
    .milli();
    s.run(json!({
        "metadata": {"name": "hog"},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [
            {"name": "c", "image": "busybox:1.36", "command": ["sleep", "600"],
             "resources": res("300m", "16Mi")},
        ]},
    }))
    .await;
    let most = format!("{}m", allocatable - 200);
    resize(json!([{"name": "a", "resources": res(&most, "64Mi")}])).await;
    let pending = s
        .wait("resized", "the resize deferred", |p| {
            p.status
                .as_ref()?
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "PodResizePending")
                .cloned()
        })
        .await;
    assert_eq!(pending.reason.as_deref(), Some("Deferred"), "{pending:?}");
    assert!(
        pending
            .message
            .as_deref()
            .unwrap_or("")
            .starts_with("Node didn't have enough resource: cpu"),
        "{pending:?}"
    );
    let p = s.pods.get("resized").await.unwrap();
    assert_eq!(
        cpu_of(&status_of(&p, "a").unwrap()).as_deref(),
        Some("200m")
    );
    // The other pod goes: the resize is admitted and done, the condition gone.
    s.pods
        .delete("hog", &DeleteParams::default())
        .await
        .unwrap();
    s.wait("resized", "the deferred resize done", |p| {
        let done = p
            .status
            .as_ref()?
            .conditions
            .iter()
            .flatten()
            .all(|c| c.type_ != "PodResizePending");
        (done && cpu_of(&status_of(p, "a")?)? == most).then_some(())
    })
    .await;
    assert_eq!(container_id(&s.pods.get("resized").await.unwrap(), "a"), a0);
}

/// Pods deleted at once (grace 0: the object goes before the node has stopped
/// anything) leave nothing behind on the node: no container records, no pod
/// directories, no shim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_deleted_at_once_leave_nothing_on_the_node() {
    let s = setup("podgone").await;
    let names = ["gone-0", "gone-1", "gone-2", "gone-3"];
    for name in names {
        s.run(json!({
            "metadata": {"name": name},
            "spec": {"containers": [
                {"name": "c", "image": "busybox:1.36", "command": ["sleep", "600"]},
            ]},
        }))
        .await;
    }
    let state = s.node.dir("state");
    let shims: Vec<u32> = std::fs::read_dir(state.join("containers"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let st: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.path().join("state.json")).ok()?).ok()?;
            u32::try_from(st["shimPid"].as_u64()?).ok()
        })
        .collect();
    assert_eq!(shims.len(), names.len());
    for name in names {
        s.pods
            .delete(name, &DeleteParams::default().grace_period(0))
            .await
            .unwrap();
    }
    let count = |dir: &str| {
        std::fs::read_dir(state.join(dir))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let start = std::time::Instant::now();
    while count("containers") + count("pods") > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "left on the node: {} containers, {} pods\n{}",
            count("containers"),
            count("pods"),
            s.node.kernlet_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_for("the shims gone", Duration::from_secs(10), async || {
        shims
            .iter()
            .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
            .then_some(())
    })
    .await;
}

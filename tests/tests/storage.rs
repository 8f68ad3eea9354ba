//! Persistent volumes on a kernlet node, against the control plane (the kit's binder
//! and ephemeral-volume controller in memory; the stock controller-manager's in real
//! mode): a pod waits for its claim with kubelet's FailedMount reason, then runs on a
//! `local` PV with its fsGroup; the data outlives the pod and an agent killed with
//! SIGKILL; a hostPath PV is created by its type; a generic ephemeral volume gets its
//! pod's claim; a PV of another node is refused by its node affinity; stats, metrics,
//! `kernlet inspect` and `explain` show each volume. Root: runs kernlet on a SimNode.

#![allow(
    clippy::unwrap_used,
    reason = "a test that cannot go on should stop loudly"
)]

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim, Pod};
use kernlet_tests::one_node::{Network, OneNode};
use kernlet_tests::simnode::{SimNode, kernlet_bin};
use kernlet_tests::wait_for;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};

fn object<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

/// A PV of `class` with `source` (`{"local": …}` or `{"hostPath": …}`), for node `host`.
fn volume(name: &str, class: &str, source: Value, host: &str) -> PersistentVolume {
    let mut spec = json!({
        "capacity": {"storage": "100Mi"},
        "accessModes": ["ReadWriteOnce"],
        "persistentVolumeReclaimPolicy": "Retain",
        "storageClassName": class,
        "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": [host]}]}]}},
    });
    for (k, v) in source.as_object().unwrap() {
        spec[k] = v.clone();
    }
    object(json!({"metadata": {"name": name}, "spec": spec}))
}

fn claim(name: &str, class: &str) -> PersistentVolumeClaim {
    object(json!({
        "metadata": {"name": name},
        "spec": {"storageClassName": class, "accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "10Mi"}}},
    }))
}

/// A pod that runs `script` with the claim `claim` at /data.
fn pod_with(name: &str, volume: Value, script: &str) -> Pod {
    object(json!({
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 3000},
            "volumes": [volume],
            "containers": [{"name": "c", "image": "busybox:1.36", "command": ["sh", "-c", script],
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
        },
    }))
}

fn claimed(name: &str) -> Value {
    json!({"name": "data", "persistentVolumeClaim": {"claimName": name}})
}

async fn phase_of(pods: &Api<Pod>, name: &str, want: &str) -> Pod {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let p = pods.get(name).await.ok();
        if let Some(p) = &p
            && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(want)
        {
            return p.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for pod {name} {want}: {}",
            serde_json::to_string(&p.and_then(|p| p.status)).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits for a FailedMount event of the pod whose message holds `needle`, while its
/// container waits in ContainerCreating.
async fn waits_for_mount(one: &OneNode, events: &Api<Event>, pod: &str, needle: &str) {
    let msg = wait_for(
        &format!("FailedMount of {pod} with {needle:?}"),
        Duration::from_secs(60),
        async || {
            let list = events.list(&Default::default()).await.ok()?;
            list.items.into_iter().find_map(|e| {
                (e.involved_object.name.as_deref() == Some(pod)
                    && e.reason.as_deref() == Some("FailedMount"))
                .then_some(e.message?)
                .filter(|m| m.contains(needle))
            })
        },
    )
    .await;
    assert!(
        msg.starts_with("Unable to attach or mount volumes: unmounted volumes=[data]"),
        "{msg}"
    );
    let p = one.pods.get(pod).await.unwrap();
    let status = p.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Pending"));
    let waiting = status.container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .waiting
        .unwrap();
    assert_eq!(waiting.reason.as_deref(), Some("ContainerCreating"));
}

/// Deletes pod `name` and waits until the apiserver no longer has it (the node
/// finished with it).
async fn delete_and_wait(one: &OneNode, name: &str) {
    one.pods
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        &format!("pod {name} gone"),
        Duration::from_secs(60),
        async || one.pods.get_opt(name).await.ok()?.is_none().then_some(()),
    )
    .await;
}

/// Deletes pod `name` and waits until nothing is mounted under `dir` any more.
async fn delete_until_unmounted(one: &OneNode, name: &str, dir: &std::path::Path) {
    one.pods
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        &format!("pod {name}'s volumes unmounted"),
        Duration::from_secs(60),
        async || {
            kernlet_tests::csi::mounts_below(dir)
                .is_empty()
                .then_some(())
        },
    )
    .await;
}

fn kernlet_cli(node: &SimNode, args: &[&str]) -> String {
    let out = node
        .command(kernlet_bin().unwrap())
        .args(args)
        .arg("--state-dir")
        .arg(node.dir("state"))
        .arg("--run-dir")
        .arg(node.dir("run"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kernlet {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claimed_volumes_run_stateful_pods_as_on_a_kubelet_node() {
    let mut one = OneNode::start("pvlocal", "w1", Network::Loopback(&[]))
        .await
        .unwrap();
    let admin = one.cluster.admin().await.unwrap();
    let pvs: Api<PersistentVolume> = Api::all(admin.clone());
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(admin.clone(), "default");
    let events: Api<Event> = Api::namespaced(admin.clone(), "default");
    let pp = PostParams::default();
    let disks = one.node.dir("disks");
    let disk_a = disks.join("a");
    std::fs::create_dir_all(&disk_a).unwrap();

    // The claim exists but nothing can bind it yet: the pod waits, as on kubelet.
    pvcs.create(&pp, &claim("data", "local-storage"))
        .await
        .unwrap();
    let writer = pod_with(
        "writer",
        claimed("data"),
        "echo kept > /data/hello && sleep 3600",
    );
    one.create_bound(&writer).await.unwrap();
    waits_for_mount(&one, &events, "writer", "PVC is not bound").await;

    // A local PV of this node binds it; the pod runs and writes through its fsGroup.
    pvs.create(
        &pp,
        &volume(
            "local-a",
            "local-storage",
            json!({"local": {"path": disk_a}}),
            "w1",
        ),
    )
    .await
    .unwrap();
    let running = phase_of(&one.pods, "writer", "Running").await;
    let uid = running.metadata.uid.unwrap();
    wait_for("the writer's file", Duration::from_secs(30), async || {
        (read(&disk_a.join("hello")) == "kept\n").then_some(())
    })
    .await;
    let root = std::fs::metadata(&disk_a).unwrap();
    assert_eq!(root.gid(), 3000, "fsGroup owns the local volume");
    assert_eq!(root.permissions().mode() & 0o2070, 0o2070);
    assert_eq!(
        std::fs::metadata(disk_a.join("hello")).unwrap().gid(),
        3000,
        "new files take the group (setgid)"
    );

    // What the node shows of it.
    let inspect: Value = serde_json::from_str(&kernlet_cli(
        &one.node,
        &["inspect", "writer", "-o", "json"],
    ))
    .unwrap();
    let vol = &inspect["volumes"][0];
    assert_eq!(vol["claim"], "default/data", "{inspect:#}");
    assert_eq!(vol["persistentVolume"], "local-a");
    assert_eq!(vol["plugin"], "kubernetes.io/local-volume");
    assert_eq!(vol["path"], json!(disk_a));
    assert_eq!(vol["mountedAt"], json!(["c:/data"]));
    let state = one.node.dir("state");
    let stats = kernlet::api::stats::claim_stats(&state, &uid);
    assert_eq!(stats.len(), 1);
    assert_eq!(
        stats[0].1["pvcRef"],
        json!({"name": "data", "namespace": "default"})
    );
    assert!(stats[0].1["capacityBytes"].as_u64().unwrap() > 0);
    let metrics = kernlet::api::volume_metrics(&state);
    let parsed = kernlet_tests::prometheus::parse(&metrics).unwrap();
    for series in [
        "kubelet_volume_stats_capacity_bytes",
        "kubelet_volume_stats_available_bytes",
        "kubelet_volume_stats_used_bytes",
        "kubelet_volume_stats_inodes",
        "kubelet_volume_stats_inodes_free",
        "kubelet_volume_stats_inodes_used",
    ] {
        assert!(
            metrics.contains(&format!(
                "{series}{{namespace=\"default\",persistentvolumeclaim=\"data\"}}"
            )),
            "{series} in\n{metrics}"
        );
    }
    assert_eq!(
        parsed
            .find(
                "kubelet_volume_stats_capacity_bytes",
                &[("persistentvolumeclaim", "data")]
            )
            .len(),
        1
    );

    // SIGKILL of the agent: the pod keeps running, and the restarted agent keeps its
    // volume from the record (no new setup, no second FailedMount).
    one.restart_agent_killed(&[]).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = one.pods.get("writer").await.unwrap();
    assert_eq!(again.status.unwrap().phase.as_deref(), Some("Running"));

    // The data outlives the pod: a new pod of the same claim reads it.
    delete_and_wait(&one, "writer").await;
    let reader = pod_with(
        "reader",
        claimed("data"),
        "[ \"$(cat /data/hello)\" = kept ] && echo again >> /data/hello",
    );
    // With a subPath of the claim too: made beneath the volume, as kubelet makes it.
    let reader: Pod = object({
        let mut v = serde_json::to_value(&reader).unwrap();
        v["spec"]["restartPolicy"] = json!("Never");
        v["spec"]["containers"][0]["volumeMounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "data", "mountPath": "/nested", "subPath": "sub"}));
        v["spec"]["containers"][0]["command"][2] = json!(
            "[ \"$(cat /data/hello)\" = kept ] && echo again >> /data/hello && echo deep > /nested/x"
        );
        v
    });
    one.create_bound(&reader).await.unwrap();
    phase_of(&one.pods, "reader", "Succeeded").await;
    assert_eq!(read(&disk_a.join("hello")), "kept\nagain\n");
    assert_eq!(read(&disk_a.join("sub/x")), "deep\n");

    // A hostPath PV: its type creates the directory, no fsGroup is applied.
    let host_dir = disks.join("host-b");
    pvs.create(
        &pp,
        &volume(
            "host-b",
            "host",
            json!({"hostPath": {"path": host_dir, "type": "DirectoryOrCreate"}}),
            "w1",
        ),
    )
    .await
    .unwrap();
    pvcs.create(&pp, &claim("host", "host")).await.unwrap();
    let mut host_pod = pod_with("host-user", claimed("host"), "echo hi > /data/f");
    host_pod.spec.as_mut().unwrap().security_context = Some(object(json!({"fsGroup": 3000})));
    host_pod.spec.as_mut().unwrap().restart_policy = Some("Never".into());
    one.create_bound(&host_pod).await.unwrap();
    phase_of(&one.pods, "host-user", "Succeeded").await;
    assert_eq!(read(&host_dir.join("f")), "hi\n");
    assert_eq!(
        std::fs::metadata(&host_dir).unwrap().gid(),
        0,
        "the host-path plugin manages no ownership"
    );

    // A generic ephemeral volume: the controller makes the pod's claim, a PV binds it.
    let disk_c = disks.join("c");
    std::fs::create_dir_all(&disk_c).unwrap();
    pvs.create(
        &pp,
        &volume(
            "scratch-c",
            "scratch",
            json!({"local": {"path": disk_c}}),
            "w1",
        ),
    )
    .await
    .unwrap();
    let mut eph = pod_with(
        "eph",
        json!({"name": "data", "ephemeral": {"volumeClaimTemplate": {"spec": {
            "storageClassName": "scratch", "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Mi"}}}}}}),
        "echo scratch > /data/s",
    );
    eph.spec.as_mut().unwrap().restart_policy = Some("Never".into());
    one.create_bound(&eph).await.unwrap();
    phase_of(&one.pods, "eph", "Succeeded").await;
    assert_eq!(read(&disk_c.join("s")), "scratch\n");
    let eph_claim = pvcs.get("eph-data").await.unwrap();
    assert_eq!(
        eph_claim.metadata.owner_references.unwrap()[0].name,
        "eph",
        "the ephemeral claim is the pod's"
    );

    // A PV of another node: refused by its node affinity, the pod never runs.
    std::fs::create_dir_all(disks.join("d")).unwrap();
    pvs.create(
        &pp,
        &volume(
            "elsewhere",
            "far",
            json!({"local": {"path": disks.join("d")}}),
            "w2",
        ),
    )
    .await
    .unwrap();
    pvcs.create(&pp, &claim("far", "far")).await.unwrap();
    one.create_bound(&pod_with("stray", claimed("far"), "sleep 3600"))
        .await
        .unwrap();
    waits_for_mount(
        &one,
        &events,
        "stray",
        "MountVolume.NodeAffinity check failed for volume \"elsewhere\"",
    )
    .await;
    let explained = kernlet_cli(&one.node, &["explain", "stray"]);
    assert!(
        explained.contains("volume data (persistentVolumeClaim) not set up yet"),
        "{explained}"
    );
}

/// Binds every pod of `default` that has no node yet to `node`, as the scheduler
/// would, until dropped (the kit has no scheduler, and the real control plane here
/// runs none either).
struct Scheduler(tokio::task::JoinHandle<()>);

impl Scheduler {
    fn start(one: &OneNode, node: &str) -> Self {
        let pods = one.pods.clone();
        let node = node.to_string();
        Self(tokio::spawn(async move {
            loop {
                for p in pods
                    .list(&Default::default())
                    .await
                    .map(|l| l.items)
                    .unwrap_or_default()
                {
                    let unbound = p.spec.as_ref().is_some_and(|s| s.node_name.is_none());
                    if unbound && let Some(name) = &p.metadata.name {
                        let binding = json!({"apiVersion": "v1", "kind": "Binding",
                            "metadata": {"name": name},
                            "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
                        let _ = pods
                            .create_subresource::<Value, Value>(
                                "binding",
                                name,
                                &PostParams::default(),
                                &binding,
                            )
                            .await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }))
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A StatefulSet with `volumeClaimTemplates` over local PVs, as a database runs on a
/// kubelet node: the controller makes each ordinal's claim, the binder binds it to a
/// local PV of the node, the pod runs and writes its identity into its volume; a
/// deleted pod is made again and finds its data, and so do the pods after the agent
/// is killed (-9) and restarted, and a pod deleted after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statefulset_keeps_its_data_across_pod_deletes_and_agent_restarts() {
    use k8s_openapi::api::apps::v1::StatefulSet;
    let mut one = OneNode::start("pvsts", "w1", Network::Loopback(&[]))
        .await
        .unwrap();
    let admin = one.cluster.admin().await.unwrap();
    let pvs: Api<PersistentVolume> = Api::all(admin.clone());
    let sets: Api<StatefulSet> = Api::namespaced(admin.clone(), "default");
    let pp = PostParams::default();
    let disks = one.node.dir("disks");
    for d in ["s0", "s1"] {
        std::fs::create_dir_all(disks.join(d)).unwrap();
        pvs.create(
            &pp,
            &volume(
                &format!("local-{d}"),
                "local-sts",
                json!({"local": {"path": disks.join(d)}}),
                "w1",
            ),
        )
        .await
        .unwrap();
    }
    let _scheduler = Scheduler::start(&one, "w1");
    let set: StatefulSet = object(json!({
        "metadata": {"name": "db"},
        "spec": {
            "serviceName": "db",
            "replicas": 2,
            "selector": {"matchLabels": {"app": "db"}},
            "template": {
                "metadata": {"labels": {"app": "db"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "c", "image": "busybox:1.36",
                        "command": ["sh", "-c", "[ -f /data/id ] || hostname > /data/id; echo start >> /data/log; exec sleep 3600"],
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                },
            },
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                "storageClassName": "local-sts", "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "10Mi"}}}}],
        },
    }));
    sets.create(&pp, &set).await.unwrap();
    // Each ordinal's disk: the PV its claim was bound to.
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(admin.clone(), "default");
    let disk_of = async |ordinal: u32| {
        let claim = format!("data-db-{ordinal}");
        let pv = wait_for(
            &format!("claim {claim} bound"),
            Duration::from_secs(60),
            async || pvcs.get(&claim).await.ok()?.spec?.volume_name,
        )
        .await;
        disks.join(pv.trim_start_matches("local-"))
    };
    let starts = |disk: &Path| read(&disk.join("log")).lines().count();
    let both_running = async |one: &OneNode| {
        for name in ["db-0", "db-1"] {
            phase_of(&one.pods, name, "Running").await;
        }
        wait_for("the set ready", Duration::from_secs(90), async || {
            let s = sets.get("db").await.ok()?.status?;
            (s.ready_replicas == Some(2)).then_some(())
        })
        .await;
    };
    both_running(&one).await;
    let (d0, d1) = (disk_of(0).await, disk_of(1).await);
    wait_for(
        "both identities written",
        Duration::from_secs(30),
        async || {
            (read(&d0.join("id")) == "db-0\n" && read(&d1.join("id")) == "db-1\n").then_some(())
        },
    )
    .await;
    assert_eq!((starts(&d0), starts(&d1)), (1, 1));

    // A deleted pod is made again (a new uid) and finds its volume as it left it.
    let old = one.pods.get("db-0").await.unwrap().metadata.uid;
    one.pods
        .delete("db-0", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        "db-0 made again and running",
        Duration::from_secs(120),
        async || {
            let p = one.pods.get("db-0").await.ok()?;
            (p.metadata.uid != old && p.status?.phase.as_deref() == Some("Running")).then_some(())
        },
    )
    .await;
    wait_for(
        "db-0 started on its data",
        Duration::from_secs(30),
        async || (starts(&d0) == 2).then_some(()),
    )
    .await;
    assert_eq!(read(&d0.join("id")), "db-0\n");

    // kill -9 of the agent: the pods run on with their volumes; a pod deleted after
    // the restart is made again on its data too.
    one.restart_agent_killed(&[]).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    both_running(&one).await;
    assert_eq!((starts(&d0), starts(&d1)), (2, 1), "no container restarted");
    one.pods
        .delete("db-1", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        "db-1 started again on its data",
        Duration::from_secs(120),
        async || (starts(&d1) == 2).then_some(()),
    )
    .await;
    both_running(&one).await;
    assert_eq!(read(&d1.join("id")), "db-1\n");
}

/// A loop device over a file, detached when dropped (even when the test fails).
struct Loop {
    dev: String,
}

impl Loop {
    fn attach(file: &Path) -> Self {
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .unwrap();
        assert!(out.status.success(), "losetup: {out:?}");
        Self {
            dev: String::from_utf8(out.stdout).unwrap().trim().to_string(),
        }
    }

    /// Detaches loop devices an earlier run of this test left (backing file gone).
    fn sweep(label: &str) {
        let out = std::process::Command::new("losetup")
            .args(["-l", "-n", "-O", "NAME,BACK-FILE"])
            .output()
            .unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some((dev, back)) = line.split_once(' ')
                && back.contains(label)
            {
                let _ = std::process::Command::new("losetup")
                    .args(["-d", dev.trim()])
                    .status();
            }
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.dev])
            .status();
    }
}

/// A 1 MiB disk image starting with `kernlet!` under the node's `disks`, and a loop
/// device over it.
fn disk(one: &OneNode, label: &str) -> (PathBuf, Loop) {
    let image = one.node.dir("disks").join(format!("{label}.img"));
    std::fs::create_dir_all(image.parent().unwrap()).unwrap();
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..8].copy_from_slice(b"kernlet!");
    std::fs::write(&image, &bytes).unwrap();
    let dev = Loop::attach(&image);
    (image, dev)
}

/// A Block PV and its Block claim `claim` (class the same name).
async fn block_claim(admin: &kube::Client, mut pv: PersistentVolume, claim_name: &str) {
    let pp = PostParams::default();
    pv.spec.as_mut().unwrap().volume_mode = Some("Block".into());
    Api::<PersistentVolume>::all(admin.clone())
        .create(&pp, &pv)
        .await
        .unwrap();
    let mut pvc = claim(claim_name, claim_name);
    pvc.spec.as_mut().unwrap().volume_mode = Some("Block".into());
    Api::<PersistentVolumeClaim>::namespaced(admin.clone(), "default")
        .create(&pp, &pvc)
        .await
        .unwrap();
}

/// A pod whose container checks the disk's header at `device` (its claim `claim`'s
/// volumeDevice), writes `word` at its second sector and then runs `then`.
fn block_user(name: &str, claim_name: &str, device: &str, word: &str, then: &str) -> Pod {
    object(json!({
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "volumes": [claimed(claim_name)],
            "containers": [{"name": "c", "image": "busybox:1.36",
                "command": ["sh", "-c", format!("[ \"$(head -c 8 {device})\" = kernlet! ] && printf {word} | dd of={device} bs=512 seek=1 conv=notrunc,fsync{then}")],
                "volumeDevices": [{"name": "data", "devicePath": device}]}],
        },
    }))
}

/// A `volumeMode: Block` local PV reaches the container as the device at its
/// `devicePath`, usable by an unprivileged container (the device rule the shim
/// enforces allows that one device); a Block volume named in `volumeMounts` is refused
/// with kubelet's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_volume_is_the_containers_device() {
    const LABEL: &str = "pvblock";
    Loop::sweep(LABEL);
    let one = OneNode::start(LABEL, "w1", Network::Loopback(&[]))
        .await
        .unwrap();
    let admin = one.cluster.admin().await.unwrap();
    let events: Api<Event> = Api::namespaced(admin.clone(), "default");
    let (image, dev) = disk(&one, LABEL);
    let pv = volume("block-a", "raw", json!({"local": {"path": dev.dev}}), "w1");
    block_claim(&admin, pv, "raw").await;
    let pod = block_user("raw-user", "raw", "/dev/xvda", "written", "");
    one.create_bound(&pod).await.unwrap();
    let done = one.ended("raw-user", Duration::from_secs(90)).await;
    assert_eq!(
        done.status.as_ref().unwrap().phase.as_deref(),
        Some("Succeeded"),
        "{:#?}\n{}",
        done.status,
        one.node.kernlet_log()
    );
    drop(dev);
    let back = std::fs::read(&image).unwrap();
    assert_eq!(&back[512..519], b"written");

    // The same claim in volumeMounts: kubelet's refusal.
    let wrong = pod_with("raw-mounted", claimed("raw"), "true");
    let mut wrong = wrong;
    wrong.spec.as_mut().unwrap().security_context = None;
    one.create_bound(&wrong).await.unwrap();
    waits_for_mount(
        &one,
        &events,
        "raw-mounted",
        "volume \"data\" has volumeMode Block, but is specified in volumeMounts",
    )
    .await;
}

/// A raw block CSI volume (`volumeMode: Block` through a driver): staged at kubelet's
/// `volumeDevices/staging/<pv>` with the Block access type, published by the driver as
/// a device file at `volumeDevices/publish/<pv>/<uid>`, and that device is the
/// container's at its `devicePath` (the driver's device is a loop device the test
/// made); unpublished and unstaged when the pod goes, the peer finding no breach of
/// the spec.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csi_block_volume_is_the_containers_device() {
    use k8s_openapi::api::storage::v1::{CSIDriver, CSINode};
    use kernlet_tests::csi::{CsiPeer, mounts_under};
    const LABEL: &str = "pvcsiblk";
    const DRIVER: &str = "block.csi.kernlet.test";
    Loop::sweep(LABEL);
    let one = OneNode::start(LABEL, "w1", Network::Loopback(&[]))
        .await
        .unwrap();
    let admin = one.cluster.admin().await.unwrap();
    let pp = PostParams::default();
    let kubelet_dir = one.node.dir("kubelet");
    let peer = CsiPeer::start(DRIVER, &kubelet_dir, &one.node.dir("csi-backing")).unwrap();
    let (image, dev) = disk(&one, LABEL);
    peer.state()
        .block_devices
        .insert("blk-1".into(), PathBuf::from(&dev.dev));
    let csinodes: Api<CSINode> = Api::all(admin.clone());
    wait_for(
        "the driver in the CSINode",
        Duration::from_secs(30),
        async || {
            let n = csinodes.get_opt("w1").await.ok()??;
            n.spec.drivers.into_iter().find(|d| d.name == DRIVER)
        },
    )
    .await;
    let drivers: Api<CSIDriver> = Api::all(admin.clone());
    drivers
        .create(
            &pp,
            &object(json!({"metadata": {"name": DRIVER}, "spec": {"attachRequired": false}})),
        )
        .await
        .unwrap();
    let mut pv = volume(
        "csi-blk",
        "rawcsi",
        json!({"csi": {"driver": DRIVER, "volumeHandle": "blk-1"}}),
        "w1",
    );
    // As a provisioner makes it: affine to the topology the driver reported, a label
    // the node got after it registered (kubelet reads its node's labels as they are).
    pv.spec.as_mut().unwrap().node_affinity = Some(object(json!({"required": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "topology.csi.kernlet.test/zone",
            "operator": "In", "values": ["z1"]}]}]}})));
    block_claim(&admin, pv, "rawcsi").await;
    let pod = block_user(
        "csi-raw-user",
        "rawcsi",
        "/dev/xvdb",
        "via-csi",
        " && exec sleep 3600",
    );
    one.create_bound(&pod).await.unwrap();
    let running = phase_of(&one.pods, "csi-raw-user", "Running").await;
    // What the container wrote to its device reached the driver's disk.
    wait_for(
        "the write on the disk",
        Duration::from_secs(30),
        async || {
            let back = std::fs::read(&image).ok()?;
            (&back[512..519] == b"via-csi").then_some(())
        },
    )
    .await;
    let uid = running.metadata.uid.unwrap();
    let staging = kernlet::csi::volumes::block_staging_path(&kubelet_dir, "csi-blk");
    let target = kernlet::csi::volumes::block_publish_path(&kubelet_dir, &uid, "csi-blk");
    {
        let st = peer.state();
        assert_eq!(st.staged.get("blk-1"), Some(&staging.display().to_string()));
        assert_eq!(
            st.published
                .get(&target.display().to_string())
                .map(String::as_str),
            Some("blk-1")
        );
        assert_eq!(st.block.get("blk-1"), Some(&true));
    }
    let vol_data: Value = serde_json::from_str(&read(
        &kubelet_dir.join("plugins/kubernetes.io/csi/volumeDevices/csi-blk/data/vol_data.json"),
    ))
    .unwrap();
    assert_eq!(vol_data["volumeHandle"], "blk-1");
    assert_eq!(mounts_under(&target), std::slice::from_ref(&target));

    delete_until_unmounted(&one, "csi-raw-user", &kubelet_dir).await;
    wait_for(
        "the block volume unstaged",
        Duration::from_secs(30),
        async || {
            peer.state()
                .calls
                .iter()
                .any(|c| c == "NodeUnstageVolume blk-1")
                .then_some(())
        },
    )
    .await;
    assert!(!target.exists(), "the publish file is gone");
    {
        let st = peer.state();
        assert!(
            st.violations.is_empty(),
            "breaches of the CSI spec: {:?}",
            st.violations
        );
    }
    drop(dev);
}

/// A CSI driver as a DaemonSet would run it beside a kernlet node (the kit's test peer,
/// written from the CSI spec): it registers through the plugin watcher and lands in the
/// node's CSINode; a pod's CSI volume is staged and published at kubelet's paths with
/// the PV's secret and the pod's info, and torn down (unpublish, then unstage) when the
/// pod goes, the peer finding no breach of the spec's call rules. Faults: a stage that
/// fails once, and a kill -9 of the agent between stage and publish — the volume ends
/// mounted exactly once, and nothing is left mounted after the pod is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csi_volumes_are_staged_published_and_torn_down_by_their_driver() {
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::api::storage::v1::{CSIDriver, CSINode};
    use kernlet_tests::csi::{CsiPeer, mounts_below, mounts_under};
    const DRIVER: &str = "csi.kernlet.test";
    let mut one = OneNode::start("pvcsi", "w1", Network::Loopback(&[]))
        .await
        .unwrap();
    let admin = one.cluster.admin().await.unwrap();
    let pp = PostParams::default();
    let kubelet_dir = one.node.dir("kubelet");
    let mut peer = CsiPeer::start(DRIVER, &kubelet_dir, &one.node.dir("csi-backing")).unwrap();

    // Registered: the CSINode names the driver, its node ID, topology and limit.
    let csinodes: Api<CSINode> = Api::all(admin.clone());
    let entry = wait_for(
        "the driver in the CSINode",
        Duration::from_secs(30),
        async || {
            let n = csinodes.get_opt("w1").await.ok()??;
            n.spec.drivers.into_iter().find(|d| d.name == DRIVER)
        },
    )
    .await;
    assert_eq!(entry.node_id, "peer-node-1");
    assert_eq!(
        entry.topology_keys,
        Some(vec!["topology.csi.kernlet.test/zone".to_string()])
    );
    assert_eq!(entry.allocatable.unwrap().count, Some(16));
    wait_for(
        "the peer told it is registered",
        Duration::from_secs(10),
        async || (peer.state().registered == Some(true)).then_some(()),
    )
    .await;

    // As a driver's DaemonSet mounts it: the kubelet directory is a shared mount (kernlet
    // makes it one, as kubelet does), so a privileged pod's Bidirectional mount of
    // `<kubelet-dir>/pods` gets its mounts back to the node.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        kernlet::sys::mount::propagation_of(&mountinfo, &kubelet_dir).is_some_and(|m| m.shared),
        "the kubelet directory is a shared mount"
    );
    let pods_dir = kubelet_dir.join("pods");
    let probe = pods_dir.join("probe");
    let plugin: Pod = object(json!({
        "metadata": {"name": "plugin-like"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "volumes": [{"name": "pods", "hostPath": {"path": pods_dir, "type": "DirectoryOrCreate"}}],
            "containers": [{"name": "c", "image": "busybox:1.36",
                "securityContext": {"privileged": true},
                "command": ["sh", "-c", format!("mkdir -p {p} && mount -t tmpfs tmpfs {p} && touch {p}/from-pod && exec sleep 3600", p = probe.display())],
                "volumeMounts": [{"name": "pods", "mountPath": pods_dir, "mountPropagation": "Bidirectional"}]}],
        },
    }));
    one.create_bound(&plugin).await.unwrap();
    wait_for(
        "the pod's mount on the node",
        Duration::from_secs(60),
        async || probe.join("from-pod").exists().then_some(()),
    )
    .await;
    delete_and_wait(&one, "plugin-like").await;
    nix::mount::umount2(&probe, nix::mount::MntFlags::MNT_DETACH).unwrap();
    // The node's /dev over the container's /dev (as the host-path driver's DaemonSet
    // mounts it): the container sees the node's device filesystem (its /dev/null is
    // the node's), with its own /dev/pts and its pod's /dev/shm over it, and nothing
    // of the runtime's /dev setup lands in the node's /dev.
    use std::os::unix::fs::FileTypeExt as _;
    let dev_of = |p: &str| std::fs::metadata(p).unwrap().dev();
    let probe_name = format!("kl-probe-{}", std::process::id());
    let dev_pod: Pod = object(json!({
        "metadata": {"name": "dev-over-dev"},
        "spec": {
            "restartPolicy": "Never",
            "volumes": [{"name": "dev", "hostPath": {"path": "/dev", "type": "Directory"}}],
            "containers": [{"name": "c", "image": "busybox:1.36",
                "command": ["sh", "-c", format!(
                    "[ $(stat -c %d /dev/null) = {null} ] && [ $(stat -c %d /dev/pts) != {pts} ] && touch /dev/shm/{probe_name} && [ -c /dev/ptmx ]",
                    null = dev_of("/dev/null"), pts = dev_of("/dev/pts"))],
                "securityContext": {"privileged": true},
                "volumeMounts": [{"name": "dev", "mountPath": "/dev"}]}],
        },
    }));
    one.create_bound(&dev_pod).await.unwrap();
    let done = phase_of(&one.pods, "dev-over-dev", "Succeeded").await;
    assert_eq!(done.status.unwrap().phase.as_deref(), Some("Succeeded"));
    assert!(
        !Path::new("/dev/shm").join(&probe_name).exists(),
        "the pod's /dev/shm is its own"
    );
    assert!(
        std::fs::symlink_metadata("/dev/ptmx")
            .unwrap()
            .file_type()
            .is_char_device()
    );
    delete_and_wait(&one, "dev-over-dev").await;

    let drivers: Api<CSIDriver> = Api::all(admin.clone());
    drivers
        .create(
            &pp,
            &object(json!({"metadata": {"name": DRIVER},
                "spec": {"attachRequired": false, "podInfoOnMount": true,
                         "volumeLifecycleModes": ["Persistent", "Ephemeral"]}})),
        )
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "default");
    secrets
        .create(
            &pp,
            &object(json!({"metadata": {"name": "stage-creds"}, "stringData": {"user": "alice"}})),
        )
        .await
        .unwrap();
    let pvs: Api<PersistentVolume> = Api::all(admin.clone());
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(admin.clone(), "default");
    let mut pv = volume(
        "csi-a",
        "csi",
        json!({"csi": {"driver": DRIVER, "volumeHandle": "vol-1", "fsType": "ext4",
            "volumeAttributes": {"tier": "gold"},
            "nodeStageSecretRef": {"name": "stage-creds", "namespace": "default"}}}),
        "w1",
    );
    pv.spec.as_mut().unwrap().node_affinity = None;
    pvs.create(&pp, &pv).await.unwrap();
    pvcs.create(&pp, &claim("csi-data", "csi")).await.unwrap();

    // The first stage fails: the pod waits with the driver's error, then runs.
    peer.state().fail_stages = 1;
    let mut writer = pod_with(
        "csi-writer",
        claimed("csi-data"),
        "echo via-csi > /data/f && sleep 3600",
    );
    writer.spec.as_mut().unwrap().security_context = None;
    one.create_bound(&writer).await.unwrap();
    let events: Api<Event> = Api::namespaced(admin.clone(), "default");
    waits_for_mount(
        &one,
        &events,
        "csi-writer",
        "NodeStageVolume: rpc error: code = Internal",
    )
    .await;
    let running = phase_of(&one.pods, "csi-writer", "Running").await;
    let uid = running.metadata.uid.unwrap();
    let data = one.node.dir("csi-backing").join("vol-1");
    wait_for(
        "the file in the driver's volume",
        Duration::from_secs(30),
        async || (read(&data.join("f")) == "via-csi\n").then_some(()),
    )
    .await;
    let staging = kernlet::csi::volumes::staging_path(&kubelet_dir, DRIVER, "vol-1");
    let target = kernlet::csi::volumes::target_path(&kubelet_dir, &uid, "csi-a");
    {
        let st = peer.state();
        assert_eq!(st.staged.get("vol-1"), Some(&staging.display().to_string()));
        assert_eq!(
            st.published
                .get(&target.display().to_string())
                .map(String::as_str),
            Some("vol-1")
        );
        assert_eq!(
            st.stage_secrets.get("user").map(String::as_str),
            Some("alice")
        );
        assert_eq!(
            st.volume_context.get("tier").map(String::as_str),
            Some("gold")
        );
        assert_eq!(
            st.volume_context
                .get("csi.storage.k8s.io/pod.name")
                .map(String::as_str),
            Some("csi-writer")
        );
        assert_eq!(st.publish_readonly, Some(false));
    }
    // Its statistics from the driver (NodeGetVolumeStats), in the metrics.
    let state = one.node.dir("state");
    let metrics = wait_for("the CSI volume's stats", Duration::from_secs(40), async || {
        let m = kernlet::api::volume_metrics(&state);
        m.contains("kubelet_volume_stats_capacity_bytes{namespace=\"default\",persistentvolumeclaim=\"csi-data\"}")
            .then_some(m)
    })
    .await;
    kernlet_tests::prometheus::parse(&metrics).unwrap();
    let vol_data: Value =
        serde_json::from_str(&read(&target.parent().unwrap().join("vol_data.json"))).unwrap();
    assert_eq!(vol_data["driverName"], DRIVER);
    assert_eq!(vol_data["volumeHandle"], "vol-1");
    assert_eq!(
        mounts_under(&staging),
        std::slice::from_ref(&staging),
        "staged once"
    );
    assert_eq!(
        mounts_under(&target),
        std::slice::from_ref(&target),
        "published once"
    );
    let inspect: Value = serde_json::from_str(&kernlet_cli(
        &one.node,
        &["inspect", "csi-writer", "-o", "json"],
    ))
    .unwrap();
    assert_eq!(
        inspect["volumes"][0]["plugin"], "kubernetes.io/csi",
        "{inspect:#}"
    );
    assert_eq!(inspect["volumes"][0]["path"], json!(target));

    // The resizer grew the volume and left the node's part pending: the node expands
    // it (NodeExpandVolume for the PV's new size) and finishes the claim's resize.
    let mut grown = pvs.get("csi-a").await.unwrap();
    grown.spec.as_mut().unwrap().capacity = Some(
        [(
            "storage".to_string(),
            k8s_openapi::apimachinery::pkg::api::resource::Quantity("200Mi".into()),
        )]
        .into_iter()
        .collect(),
    );
    pvs.replace("csi-a", &pp, &grown).await.unwrap();
    pvcs.patch_status(
        "csi-data",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(
            json!({"status": {"allocatedResourceStatuses": {"storage": "NodeResizePending"}}}),
        ),
    )
    .await
    .unwrap();
    wait_for(
        "the claim's resize finished",
        Duration::from_secs(40),
        async || {
            let c = pvcs.get("csi-data").await.ok()?;
            let st = c.status?;
            let done = st
                .allocated_resource_statuses
                .as_ref()
                .is_none_or(|a| !a.contains_key("storage"));
            (done && st.capacity.as_ref()?.get("storage")?.0 == "200Mi").then_some(())
        },
    )
    .await;
    assert_eq!(peer.state().expanded, [("vol-1".to_string(), 200 << 20)]);

    // The pod goes: unpublished, then unstaged; nothing mounted is left.
    delete_and_wait(&one, "csi-writer").await;
    wait_for("the volume unstaged", Duration::from_secs(30), async || {
        peer.state().staged.is_empty().then_some(())
    })
    .await;
    {
        let st = peer.state();
        let tail: Vec<&str> = st
            .calls
            .iter()
            .rev()
            .take(2)
            .rev()
            .map(String::as_str)
            .collect();
        assert_eq!(
            tail,
            ["NodeUnpublishVolume vol-1", "NodeUnstageVolume vol-1"]
        );
        assert!(st.published.is_empty());
    }
    assert_eq!(mounts_below(&kubelet_dir), Vec::<std::path::PathBuf>::new());

    // kill -9 of the agent between stage and publish: the restarted agent publishes,
    // the volume is staged and published exactly once.
    peer.state().hold_publishes = true;
    // With an fsGroup (3000, user 1000): the driver's default fsGroupPolicy (an
    // fsType, ReadWriteOnce) has it applied to the published volume.
    let again = pod_with(
        "csi-again",
        claimed("csi-data"),
        "cat /data/f && touch /data/g && sleep 3600",
    );
    one.create_bound(&again).await.unwrap();
    wait_for(
        "a publish attempt after the stage",
        Duration::from_secs(60),
        async || {
            let st = peer.state();
            (st.staged.contains_key("vol-1")
                && st
                    .calls
                    .last()
                    .is_some_and(|c| c.starts_with("NodePublishVolume")))
            .then_some(())
        },
    )
    .await;
    one.restart_agent_killed(&[]).unwrap();
    peer.state().hold_publishes = false;
    let running = phase_of(&one.pods, "csi-again", "Running").await;
    wait_for("the fsGroup's file", Duration::from_secs(30), async || {
        data.join("g").exists().then_some(())
    })
    .await;
    assert_eq!(
        std::fs::metadata(&data).unwrap().gid(),
        3000,
        "fsGroup applied"
    );
    let target =
        kernlet::csi::volumes::target_path(&kubelet_dir, &running.metadata.uid.unwrap(), "csi-a");
    assert_eq!(
        mounts_under(&staging),
        std::slice::from_ref(&staging),
        "staged once after the restart"
    );
    assert_eq!(
        mounts_under(&target),
        std::slice::from_ref(&target),
        "published once after the restart"
    );
    // Unmounted behind the node's back (as after a reboot): the restarted agent finds
    // its record but no mount, and has the driver publish it again.
    nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH).unwrap();
    assert!(mounts_under(&target).is_empty());
    one.restart_agent_killed(&[]).unwrap();
    wait_for(
        "the volume published again",
        Duration::from_secs(60),
        async || (mounts_under(&target) == std::slice::from_ref(&target)).then_some(()),
    )
    .await;
    delete_until_unmounted(&one, "csi-again", &kubelet_dir).await;

    // The driver's sockets vanish while a publish is under way (its pod restarted):
    // the driver is taken off the CSINode, the pod waits naming it, and once the
    // driver is back it is registered again and the volume ends published once.
    peer.state().hold_publishes = true;
    let mut third = pod_with("csi-third", claimed("csi-data"), "sleep 3600");
    third.spec.as_mut().unwrap().security_context = None;
    one.create_bound(&third).await.unwrap();
    wait_for("a held publish", Duration::from_secs(60), async || {
        let st = peer.state();
        st.calls
            .last()
            .is_some_and(|c| c.starts_with("NodePublishVolume"))
            .then_some(())
    })
    .await;
    peer.vanish();
    wait_for(
        "the driver off the CSINode",
        Duration::from_secs(30),
        async || {
            let n = csinodes.get_opt("w1").await.ok()??;
            (!n.spec.drivers.iter().any(|d| d.name == DRIVER)).then_some(())
        },
    )
    .await;
    waits_for_mount(
        &one,
        &events,
        "csi-third",
        "driver name csi.kernlet.test not found in the list of registered CSI drivers",
    )
    .await;
    peer.state().hold_publishes = false;
    peer.serve().unwrap();
    let running = phase_of(&one.pods, "csi-third", "Running").await;
    let target =
        kernlet::csi::volumes::target_path(&kubelet_dir, &running.metadata.uid.unwrap(), "csi-a");
    assert_eq!(mounts_under(&staging), std::slice::from_ref(&staging));
    assert_eq!(mounts_under(&target), std::slice::from_ref(&target));
    delete_until_unmounted(&one, "csi-third", &kubelet_dir).await;

    // A driver without a CSIDriver object attaches (kubelet's default): the pod waits
    // for the VolumeAttachment the attach-detach controller and the driver's attacher
    // make, gets its attachment metadata as the publish context, and the node reports
    // the volume in volumesInUse while the pod has it.
    use k8s_openapi::api::storage::v1::VolumeAttachment;
    const ATTACHER: &str = "attach.kernlet.test";
    let attacher = CsiPeer::start(ATTACHER, &kubelet_dir, &one.node.dir("attach-backing")).unwrap();
    wait_for(
        "the attaching driver registered",
        Duration::from_secs(30),
        async || (attacher.state().registered == Some(true)).then_some(()),
    )
    .await;
    let mut pv = volume(
        "attached-b",
        "attached",
        json!({"csi": {"driver": ATTACHER, "volumeHandle": "vol-9", "fsType": "ext4"}}),
        "w1",
    );
    pv.spec.as_mut().unwrap().node_affinity = None;
    pvs.create(&pp, &pv).await.unwrap();
    pvcs.create(&pp, &claim("attached", "attached"))
        .await
        .unwrap();
    let mut waiting = pod_with("attached-user", claimed("attached"), "sleep 3600");
    waiting.spec.as_mut().unwrap().security_context = None;
    one.create_bound(&waiting).await.unwrap();
    let va_name = kernlet::csi::volumes::attachment_name("vol-9", ATTACHER, "w1");
    waits_for_mount(
        &one,
        &events,
        "attached-user",
        &format!("VolumeAttachment {va_name}"),
    )
    .await;
    // kubelet's lists: waiting for its attachment, not failed to process.
    waits_for_mount(
        &one,
        &events,
        "attached-user",
        "unmounted volumes=[data], unattached volumes=[data], failed to process volumes=[]",
    )
    .await;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(admin.clone());
    let in_use = wait_for("volumesInUse", Duration::from_secs(30), async || {
        let n = nodes.get("w1").await.ok()?;
        n.status?.volumes_in_use.filter(|v| !v.is_empty())
    })
    .await;
    assert_eq!(in_use, ["kubernetes.io/csi/attach.kernlet.test^vol-9"]);
    let vas: Api<VolumeAttachment> = Api::all(admin.clone());
    let va: VolumeAttachment = object(json!({
        "metadata": {"name": va_name},
        "spec": {"attacher": ATTACHER, "nodeName": "w1", "source": {"persistentVolumeName": "attached-b"}},
    }));
    let _ = vas.create(&pp, &va).await;
    vas.patch_status(
        &va_name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(
            json!({"status": {"attached": true, "attachmentMetadata": {"lun": "3"}}}),
        ),
    )
    .await
    .unwrap();
    phase_of(&one.pods, "attached-user", "Running").await;
    {
        let st = attacher.state();
        assert!(st.violations.is_empty(), "{:?}", st.violations);
        assert_eq!(st.publish_context.get("lun").map(String::as_str), Some("3"));
    }
    one.pods
        .delete("attached-user", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        "volumesInUse emptied",
        Duration::from_secs(60),
        async || {
            let n = nodes.get("w1").await.ok()?;
            n.status?
                .volumes_in_use
                .is_none_or(|v| v.is_empty())
                .then_some(())
        },
    )
    .await;

    // A CSI inline volume: published (never staged) under kubelet's handle for the
    // pod and volume, with the ephemeral flag, and unpublished when the pod goes.
    let inline: Pod = object(json!({
        "metadata": {"name": "csi-inline"},
        "spec": {
            "restartPolicy": "Never",
            "volumes": [{"name": "data", "csi": {"driver": DRIVER, "volumeAttributes": {"size": "1Mi"}}}],
            "containers": [{"name": "c", "image": "busybox:1.36", "command": ["sh", "-c", "echo inline > /data/i"],
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
        },
    }));
    one.create_bound(&inline).await.unwrap();
    let done = phase_of(&one.pods, "csi-inline", "Succeeded").await;
    let handle = format!(
        "csi-{}",
        kernlet::csi::sha256_hex(&format!("{}data", done.metadata.uid.unwrap()))
    );
    assert_eq!(
        read(&one.node.dir("csi-backing").join(&handle).join("i")),
        "inline\n"
    );
    assert_eq!(
        peer.state()
            .volume_context
            .get("csi.storage.k8s.io/ephemeral")
            .map(String::as_str),
        Some("true")
    );
    // Finished, the pod gives its volume back before it is deleted (kubelet unmounts
    // a terminated pod's volumes).
    wait_for(
        "the finished pod's volume unpublished",
        Duration::from_secs(30),
        async || {
            (!peer.state().published.values().any(|v| *v == handle)
                && mounts_below(&kubelet_dir).is_empty())
            .then_some(())
        },
    )
    .await;
    delete_until_unmounted(&one, "csi-inline", &kubelet_dir).await;
    let st = peer.state();
    assert!(
        !st.calls
            .iter()
            .any(|c| c == &format!("NodeStageVolume {handle}")),
        "an inline volume is never staged: {:?}",
        st.calls
    );
    assert!(
        st.violations.is_empty(),
        "breaches of the CSI spec: {:?}",
        st.violations
    );
}

/// An image volume: the image (present, `IfNotPresent`) is mounted read-only for the
/// container by its shim — nothing is mounted on the node — and an image that may not
/// be pulled (`Never`, not in the store) holds the pod with kubelet's ErrImagePull.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_volumes_mount_an_image_read_only() {
    let one = OneNode::start("pvimage", "w1", Network::Loopback(&[]))
        .await
        .unwrap();
    let pod: Pod = object(json!({
        "metadata": {"name": "img"},
        "spec": {
            "restartPolicy": "Never",
            "volumes": [{"name": "tools", "image": {"reference": "busybox:1.36", "pullPolicy": "IfNotPresent"}}],
            "containers": [{"name": "c", "image": "busybox:1.36",
                "command": ["sh", "-c", "test -x /tools/bin/busybox && ! touch /tools/x 2>/dev/null && grep -q /tools /proc/mounts && test -x /sub/busybox && ! touch /sub/x 2>/dev/null && cmp /img-busybox /tools/bin/busybox"],
                "volumeMounts": [{"name": "tools", "mountPath": "/tools"},
                                 {"name": "tools", "mountPath": "/sub", "subPath": "bin"},
                                 {"name": "tools", "mountPath": "/img-busybox", "subPathExpr": "$(DIR)/busybox"}],
                "env": [{"name": "DIR", "value": "bin"}]}],
        },
    }));
    one.create_bound(&pod).await.unwrap();
    let done = one.ended("img", Duration::from_secs(90)).await;
    assert_eq!(
        done.status.as_ref().unwrap().phase.as_deref(),
        Some("Succeeded"),
        "{}\n{}",
        serde_json::to_string(&done.status).unwrap(),
        one.node.kernlet_log()
    );
    assert!(
        !kernlet_tests::csi::mounts_under(&one.node.dir("run").join("pods"))
            .iter()
            .any(|m| m.to_string_lossy().contains("image-volumes")),
        "the image volume is mounted in the container's namespace only"
    );

    // A subPath the image does not have: the container is not created.
    let missing: Pod = object(json!({
        "metadata": {"name": "img-missing"},
        "spec": {
            "volumes": [{"name": "tools", "image": {"reference": "busybox:1.36", "pullPolicy": "IfNotPresent"}}],
            "containers": [{"name": "c", "image": "busybox:1.36", "command": ["sleep", "3600"],
                "volumeMounts": [{"name": "tools", "mountPath": "/tools", "subPath": "no/such"}]}],
        },
    }));
    one.create_bound(&missing).await.unwrap();
    let waiting = wait_for(
        "the missing subPath's error",
        Duration::from_secs(60),
        async || {
            let p = one.pods.get("img-missing").await.ok()?;
            p.status?
                .container_statuses?
                .first()?
                .state
                .clone()?
                .waiting
                .filter(|w| w.reason.as_deref() != Some("ContainerCreating"))
        },
    )
    .await;
    assert_eq!(
        waiting.reason.as_deref(),
        Some("CreateContainerError"),
        "{waiting:?}"
    );
    assert!(
        waiting.message.unwrap_or_default().contains("no/such"),
        "the message names the subPath"
    );

    let never: Pod = object(json!({
        "metadata": {"name": "img-never"},
        "spec": {
            "volumes": [{"name": "tools", "image": {"reference": "registry.invalid/none:1", "pullPolicy": "Never"}}],
            "containers": [{"name": "c", "image": "busybox:1.36", "command": ["sleep", "3600"],
                "volumeMounts": [{"name": "tools", "mountPath": "/tools"}]}],
        },
    }));
    one.create_bound(&never).await.unwrap();
    let waiting = wait_for("ErrImagePull", Duration::from_secs(60), async || {
        let p = one.pods.get("img-never").await.ok()?;
        let st = p
            .status?
            .container_statuses?
            .first()?
            .state
            .clone()?
            .waiting?;
        (st.reason.as_deref() == Some("ErrImagePull")).then_some(st)
    })
    .await;
    assert!(
        waiting
            .message
            .unwrap_or_default()
            .contains("imagePullPolicy is Never"),
    );
}

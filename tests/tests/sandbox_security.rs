//! The sandbox as a boundary between tenants, against the control plane: secret
//! volumes live in memory (never on the node's disk), with the modes the pod asks for
//! and its fsGroup; what the runtime records is root's alone. Root: runs kernlet on a
//! SimNode.

#![allow(
    clippy::unwrap_used,
    reason = "a test that cannot go on should stop loudly"
)]

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kernlet_tests::one_node::{Network, OneNode};
use kernlet_tests::wait_for;
use kube::api::{Api, PostParams};
use serde_json::json;

/// A value no file of the node's disk may hold.
const SECRET: &str = "kernlet-secret-7c1d0e9a";

/// Every regular file under `dir` whose content holds `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file()
                && std::fs::read(e.path())
                    .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
            {
                found.push(e.path());
            }
        }
    }
    found
}

/// How many pods have a sandbox on the node.
fn sandboxes_on(one: &OneNode) -> usize {
    std::fs::read_dir(one.node.dir("state").join("pods"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("sandbox.json").exists())
        .count()
}

/// A non-root pod reads its secret through its fsGroup (defaultMode 0400) and gets it
/// in its environment; the secret is on a tmpfs of the pod (0750, root's) and in the
/// container's bundle under the run directory (0600 in 0700), nowhere on the node's
/// state directory, whose records are 0600 in 0700 directories.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_volumes_live_in_memory_with_their_modes_and_fs_group() {
    let one = OneNode::start("sbsecret", "w1", Network::Loopback(&[]))
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(one.pods.clone().into_client(), "default");
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "db"},
        "stringData": {"password": SECRET},
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "reader"},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000},
            "volumes": [{"name": "s", "secret": {"secretName": "db", "defaultMode": 0o400}}],
            "containers": [{
                "name": "c", "image": "busybox:1.36",
                "command": ["sh", "-c", "cat /s/password >/dev/null && [ \"$PASSWORD\" = \"$(cat /s/password)\" ] || exit 7"],
                "env": [{"name": "PASSWORD",
                         "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}],
                "volumeMounts": [{"name": "s", "mountPath": "/s"}],
            }],
        },
    }))
    .unwrap();
    one.create_bound(&pod).await.unwrap();
    let done = one.ended("reader", Duration::from_secs(60)).await;
    let status = done.status.clone().unwrap();
    assert_eq!(
        status.phase.as_deref(),
        Some("Succeeded"),
        "uid 1000 reads its 0400 secret through fsGroup 2000: {status:#?}\n{}",
        one.node.kernlet_log()
    );
    let uid = done.metadata.uid.clone().unwrap();
    let tmpfs = one
        .node
        .dir("run")
        .join("pods")
        .join(&uid)
        .join("volume-files");
    let fs = nix::sys::statfs::statfs(&tmpfs).unwrap();
    assert_eq!(fs.filesystem_type(), nix::sys::statfs::TMPFS_MAGIC);
    let root = std::fs::metadata(&tmpfs).unwrap();
    assert_eq!((root.uid(), root.mode() & 0o7777), (0, 0o750));
    let file = std::fs::metadata(tmpfs.join("s/password")).unwrap();
    assert_eq!((file.gid(), file.mode() & 0o7777), (2000, 0o440));
    assert_eq!(
        std::fs::read_to_string(tmpfs.join("s/password")).unwrap(),
        SECRET
    );
    let state = one.node.dir("state");
    assert_eq!(
        files_holding(&state, SECRET.as_bytes()),
        Vec::<std::path::PathBuf>::new(),
        "nothing secret on the node's disk"
    );
    for d in ["pods", "containers"] {
        let m = std::fs::metadata(state.join(d)).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o700, "{d}");
    }
    // The runtime spec, with the environment the secret went into, is in the
    // container's bundle under the run directory, root's alone.
    let bundles = one.node.dir("run").join("bundles");
    let configs: Vec<_> = std::fs::read_dir(&bundles)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("config.json"))
        .collect();
    assert_eq!(configs.len(), 1);
    for c in configs {
        let m = std::fs::metadata(&c).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600, "{}", c.display());
        let bundle = std::fs::metadata(c.parent().unwrap()).unwrap();
        assert_eq!(
            bundle.permissions().mode() & 0o777,
            0o700,
            "{}",
            c.display()
        );
        assert!(std::fs::read_to_string(&c).unwrap().contains(SECRET));
    }
    // Crossed (by the node IDs of user-namespaced containers), never listed.
    let bundles_mode = std::fs::metadata(&bundles).unwrap().permissions().mode();
    assert_eq!(bundles_mode & 0o777, 0o711);
    // The escape corpus's secret class: another pod's user (uid 1001) on the node
    // tries every file of the node's run and state directories.
    let mut files = Vec::new();
    let mut stack = vec![one.node.dir("run"), state.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => files.push(e.path()),
                _ => {}
            }
        }
    }
    let out = std::process::Command::new("/bin/busybox")
        .args([
            "sh",
            "-c",
            "for f; do grep -q \"$0\" \"$f\" 2>/dev/null && echo \"$f\"; done",
            SECRET,
        ])
        .args(&files)
        .uid(1001)
        .gid(1001)
        .output()
        .unwrap();
    let read = String::from_utf8_lossy(&out.stdout);
    println!(
        "escape corpus, secrets read by another user: {} tried, {} escaped",
        files.len(),
        read.lines().count()
    );
    assert!(files.len() > 10, "{files:?}");
    assert_eq!(read, "", "uid 1001 read the secret");
}

/// RuntimeClass as kubelet on a containerd node: a class whose handler the node has
/// (`runc`, kernlet's default `--runtime-handlers`) runs its pod; a class with a
/// handler the node lacks fails the sandbox with `FailedCreatePodSandBox` naming the
/// handler, and the pod stays Pending, never run with another runtime; the Node lists
/// its handlers in `status.runtimeHandlers`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_classes_run_on_their_handler_or_not_at_all() {
    use k8s_openapi::api::core::v1::{Event, Node};
    use k8s_openapi::api::node::v1::RuntimeClass;
    let one = OneNode::start("sbrtclass", "w1", Network::Loopback(&[]))
        .await
        .unwrap();
    let admin = one.pods.clone().into_client();
    let classes: Api<RuntimeClass> = Api::all(admin.clone());
    for (name, handler) in [("kl-runc", "runc"), ("kl-sandboxed", "kl-no-such-handler")] {
        let rc: RuntimeClass =
            serde_json::from_value(json!({"metadata": {"name": name}, "handler": handler}))
                .unwrap();
        let _ = classes.delete(name, &Default::default()).await;
        classes.create(&PostParams::default(), &rc).await.unwrap();
    }
    let pod = |name: &str, class: &str| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"runtimeClassName": class, "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "c", "image": "busybox:1.36",
                                     "imagePullPolicy": "Never", "command": ["sleep", "600"]}]},
        }))
        .unwrap()
    };
    one.create_bound(&pod("on-runc", "kl-runc")).await.unwrap();
    one.create_bound(&pod("on-missing-handler", "kl-sandboxed"))
        .await
        .unwrap();
    let phase = |p: &Pod| p.status.as_ref().and_then(|s| s.phase.clone());
    wait_for(
        "the runc pod running",
        Duration::from_secs(60),
        async || {
            let p = one.pods.get("on-runc").await.ok()?;
            (phase(&p).as_deref() == Some("Running")).then_some(())
        },
    )
    .await;
    let events: Api<Event> = Api::namespaced(admin.clone(), "default");
    let refusal = wait_for(
        "FailedCreatePodSandBox for the missing handler",
        Duration::from_secs(30),
        async || {
            let list = events.list(&Default::default()).await.ok()?.items;
            list.into_iter().find(|e| {
                e.involved_object.name.as_deref() == Some("on-missing-handler")
                    && e.reason.as_deref() == Some("FailedCreatePodSandBox")
            })
        },
    )
    .await;
    assert_eq!(
        refusal.message.as_deref(),
        Some(
            "Failed to create pod sandbox: failed to get sandbox runtime: no runtime for \"kl-no-such-handler\" is configured"
        )
    );
    assert_eq!(refusal.type_.as_deref(), Some("Warning"));
    let p = one.pods.get("on-missing-handler").await.unwrap();
    assert_eq!(phase(&p).as_deref(), Some("Pending"), "{:#?}", p.status);
    let waiting = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone());
    assert_eq!(waiting.as_deref(), Some("ContainerCreating"));
    let sandboxes = sandboxes_on(&one);
    assert_eq!(sandboxes, 1, "only the runc pod has a sandbox");
    let node: Node = Api::all(admin).get("w1").await.unwrap();
    let handlers: Vec<String> = node
        .status
        .and_then(|s| s.runtime_handlers)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|h| h.name)
        .collect();
    assert_eq!(handlers, ["", "runc"]);
    for name in ["kl-runc", "kl-sandboxed"] {
        let _ = classes.delete(name, &Default::default()).await;
    }
}

/// AppArmor as kubelet on a node without it (this machine's kernel has none): a pod
/// asking for a confining profile is refused at admission (phase Failed, reason
/// `AppArmor`, kubelet's message) and nothing of it runs; a pod asking for
/// `Unconfined` runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apparmor_pods_are_refused_where_the_node_has_no_apparmor() {
    if kernlet::sys::lsm::apparmor_enabled() {
        eprintln!("skipped: this node has AppArmor (the refusal is for nodes without it)");
        return;
    }
    let one = OneNode::start("sbapparmor", "w1", Network::Loopback(&[]))
        .await
        .unwrap();
    let pod = |name: &str, profile: serde_json::Value| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"terminationGracePeriodSeconds": 0,
                     "securityContext": {"appArmorProfile": profile},
                     "containers": [{"name": "c", "image": "busybox:1.36",
                                     "imagePullPolicy": "Never", "command": ["sleep", "600"]}]},
        }))
        .unwrap()
    };
    one.create_bound(&pod("confined", json!({"type": "RuntimeDefault"})))
        .await
        .unwrap();
    one.create_bound(&pod("unconfined", json!({"type": "Unconfined"})))
        .await
        .unwrap();
    let status = |p: Pod| p.status.unwrap_or_default();
    let refused = wait_for(
        "the confined pod refused",
        Duration::from_secs(30),
        async || {
            let s = status(one.pods.get("confined").await.ok()?);
            (s.phase.as_deref() == Some("Failed")).then_some(s)
        },
    )
    .await;
    assert_eq!(refused.reason.as_deref(), Some("AppArmor"));
    assert_eq!(
        refused.message.as_deref(),
        Some("Pod was rejected: Cannot enforce AppArmor: AppArmor is not enabled on the host")
    );
    wait_for(
        "the unconfined pod running",
        Duration::from_secs(60),
        async || {
            let s = status(one.pods.get("unconfined").await.ok()?);
            (s.phase.as_deref() == Some("Running")).then_some(())
        },
    )
    .await;
    let sandboxes = sandboxes_on(&one);
    assert_eq!(sandboxes, 1, "nothing of the refused pod was made");
}

/// Unmounts what a test mounted on the node, last first, however the test ends.
struct Mounted(Vec<std::path::PathBuf>);

impl Drop for Mounted {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(p)
                .status();
        }
    }
}

fn run_ok(program: &str, args: &[&str]) {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// mountPropagation as kubelet: a `HostToContainer` hostPath volume on a shared mount
/// shows what the node mounts below it after the container started; a container
/// without such a volume does not see it; `Bidirectional` is refused with CreateContainerConfigError
/// (kernlet cannot carry a container's mounts back to the node yet) instead of running
/// as something less.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_to_container_volumes_see_the_nodes_later_mounts() {
    let one = OneNode::start("sbpropagate", "w1", Network::Loopback(&[]))
        .await
        .unwrap();
    let dir = one.node.root().join("propagate");
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.to_str().unwrap().to_string();
    let mut mounted = Mounted(Vec::new());
    run_ok("mount", &["--bind", &d, &d]);
    mounted.0.push(dir.clone());
    run_ok("mount", &["--make-shared", &d]);
    // What the Bidirectional container mounts (as a CSI node plugin would) stays on the
    // node after it: the guard takes it away.
    mounted.0.push(dir.join("fromc"));
    let pod = |name: &str, propagation: Option<&str>, privileged: bool| -> Pod {
        let mut mount = json!({"name": "host", "mountPath": "/host"});
        if let Some(p) = propagation {
            mount["mountPropagation"] = json!(p);
        }
        let command = if propagation == Some("Bidirectional") {
            "mkdir -p /host/fromc && mount -t tmpfs -o size=1m fc /host/fromc && echo from-the-container >/host/fromc/hello && exec sleep 600"
        } else {
            "exec sleep 600"
        };
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"terminationGracePeriodSeconds": 0,
                     "volumes": [{"name": "host", "hostPath": {"path": d, "type": "Directory"}}],
                     "containers": [{"name": "c", "image": "busybox:1.36", "imagePullPolicy": "Never",
                                     "command": ["sh", "-c", command], "volumeMounts": [mount],
                                     "securityContext": {"privileged": privileged}}]},
        }))
        .unwrap()
    };
    one.create_bound(&pod("h2c", Some("HostToContainer"), false))
        .await
        .unwrap();
    one.create_bound(&pod("plain", None, false)).await.unwrap();
    one.create_bound(&pod("bidi", Some("Bidirectional"), true))
        .await
        .unwrap();
    let status = |p: Pod| p.status.unwrap_or_default();
    for name in ["h2c", "plain", "bidi"] {
        wait_for(
            &format!("{name} running"),
            Duration::from_secs(60),
            async || {
                let s = status(one.pods.get(name).await.ok()?);
                (s.phase.as_deref() == Some("Running")).then_some(())
            },
        )
        .await;
    }
    // Mounted by the node after the containers started.
    let sub = dir.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    run_ok(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=1m",
            "tmpfs",
            sub.to_str().unwrap(),
        ],
    );
    mounted.0.push(sub.clone());
    std::fs::write(sub.join("hello"), "from the node").unwrap();
    let cat = |pod: &str, file: &str| {
        let out = std::process::Command::new(kernlet_tests::simnode::kernlet_bin().unwrap())
            .args(["exec", &format!("default/{pod}"), "-c", "c", "--state-dir"])
            .arg(one.node.dir("state"))
            .args(["--", "cat", file])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let seen = tokio::task::block_in_place(|| cat("h2c", "/host/sub/hello"));
    assert_eq!(seen, "from the node");
    let unseen = tokio::task::block_in_place(|| cat("plain", "/host/sub/hello"));
    assert!(
        !unseen.contains("from the node"),
        "a volume without propagation keeps what it had at start: {unseen}"
    );
    // Bidirectional: the node's mount reaches the privileged container, and the
    // container's own mount reaches the node and the HostToContainer pod.
    let both = tokio::task::block_in_place(|| cat("bidi", "/host/sub/hello"));
    assert_eq!(both, "from the node");
    let from_container = dir.join("fromc/hello");
    let on_node = wait_for(
        "the container's mount on the node",
        Duration::from_secs(30),
        async || std::fs::read_to_string(&from_container).ok(),
    )
    .await;
    assert_eq!(on_node, "from-the-container\n");
    let relayed = tokio::task::block_in_place(|| cat("h2c", "/host/fromc/hello"));
    assert_eq!(relayed, "from-the-container\n");
    // Nothing else of the container's namespace reached the node: its root and its
    // cgroup view are not mounted there.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let bundles = one.node.dir("run").join("bundles");
    assert!(
        !kernlet_tests::hygiene::mount_points(&mountinfo)
            .iter()
            .any(|m| m.starts_with(&bundles)),
        "a container root leaked to the node"
    );
    // Once the pod is gone its peer mount goes too, out of the peer group first: what
    // the container mounted stays on the node (as a CSI plugin's mounts do).
    one.pods.delete("bidi", &Default::default()).await.unwrap();
    let propagated = wait_for("bidi gone", Duration::from_secs(60), async || {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let left = kernlet_tests::hygiene::mount_points(&mountinfo)
            .into_iter()
            .any(|m| m.to_string_lossy().contains("/propagated/"));
        (!left && one.pods.get_opt("bidi").await.ok()?.is_none()).then_some(())
    })
    .await;
    let () = propagated;
    assert_eq!(
        std::fs::read_to_string(&from_container).unwrap(),
        "from-the-container\n"
    );
}

/// The `Uid:` line's IDs of process `pid` on the node.
fn node_uids(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .map(|ids| ids.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// `hostUsers: false` as kubelet 1.36 with a runtime that supports it: each pod gets
/// its own user namespace mapping 65,536 node IDs from 65,536 up (two pods never the
/// same); its root is that range's first ID on the node and root in the container,
/// with full rights on its own root filesystem and none outside; its volumes
/// (secret, configMap, downward API, emptyDir) show node root's files as root's and
/// its fsGroup as itself, through idmapped mounts (an image volume's layers too), and
/// what it writes to an emptyDir
/// is stored as root's on the node; its network namespace is its own (sysfs
/// mounts); `kubectl exec` enters the user namespace too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_namespaced_pods_run_as_unprivileged_node_ids() {
    use k8s_openapi::api::core::v1::ConfigMap;
    let one = OneNode::start("sbuserns", "w1", Network::Loopback(&[]))
        .await
        .unwrap();
    let admin = one.pods.clone().into_client();
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "cfg"}, "data": {"k": "v"}})).unwrap();
    Api::<ConfigMap>::namespaced(admin.clone(), "default")
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "tok"}, "stringData": {"t": "x"}}))
            .unwrap();
    Api::<Secret>::namespaced(admin, "default")
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let report = [
        "cat /proc/self/uid_map",
        "id -u",
        "stat -c %u:%g /v/s/t /v/c/k /v/d/name",
        "stat -c %u /data",
        "stat -c %u:%g /img/bin/busybox",
        "touch /etc/written && echo rootfs-writable",
        "echo x >/data/f && echo emptydir-writable",
        "ls /sys/class/net",
        "[ -f /sys/fs/cgroup/cgroup.procs ] && echo cgroupfs",
        "chown 1000 /data/f && echo chown-in-range",
        "chown 70000 /data/f 2>/dev/null || echo chown-out-of-range-refused",
    ]
    .join("; ");
    let pod = |name: &str| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "hostUsers": false,
                "terminationGracePeriodSeconds": 0,
                "securityContext": {"fsGroup": 200},
                "volumes": [
                    {"name": "s", "secret": {"secretName": "tok"}},
                    {"name": "c", "configMap": {"name": "cfg"}},
                    {"name": "d", "downwardAPI": {"items": [
                        {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
                    {"name": "data", "emptyDir": {}},
                    {"name": "img", "image": {"reference": "busybox:1.36", "pullPolicy": "IfNotPresent"}},
                ],
                "containers": [{
                    "name": "c", "image": "busybox:1.36", "imagePullPolicy": "Never",
                    "command": ["sh", "-c", format!("({report}) >/data/report 2>&1; sleep 600")],
                    "volumeMounts": [
                        {"name": "s", "mountPath": "/v/s"},
                        {"name": "c", "mountPath": "/v/c"},
                        {"name": "d", "mountPath": "/v/d"},
                        {"name": "data", "mountPath": "/data"},
                        {"name": "img", "mountPath": "/img"},
                    ],
                }],
            },
        }))
        .unwrap()
    };
    one.create_bound(&pod("userns-a")).await.unwrap();
    one.create_bound(&pod("userns-b")).await.unwrap();
    let state = one.node.dir("state");
    let mut ranges = Vec::new();
    for name in ["userns-a", "userns-b"] {
        let p = wait_for(
            &format!("{name} running"),
            Duration::from_secs(60),
            async || {
                let p = one.pods.get(name).await.ok()?;
                (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(p)
            },
        )
        .await;
        let uid = p.metadata.uid.clone().unwrap();
        let data = state.join("pods").join(&uid).join("volumes/empty-dir/data");
        let text = wait_for(
            &format!("{name}'s report"),
            Duration::from_secs(30),
            async || {
                let t = std::fs::read_to_string(data.join("report")).ok()?;
                t.contains("chown").then_some(t)
            },
        )
        .await;
        let sandbox: serde_json::Value = serde_json::from_slice(
            &std::fs::read(state.join("pods").join(&uid).join("sandbox.json")).unwrap(),
        )
        .unwrap();
        let host_id = sandbox["userns"]["hostId"].as_u64().unwrap();
        assert_eq!(sandbox["userns"]["length"], 65_536);
        assert_eq!(host_id % 65_536, 0);
        assert!(host_id >= 65_536);
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let map: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            map,
            ["0", &host_id.to_string(), "65536"],
            "{text}\n{}",
            one.node.kernlet_log()
        );
        assert_eq!(
            &lines[1..],
            [
                "0",
                "0:200",
                "0:200",
                "0:200",
                "0",
                "0:0",
                "rootfs-writable",
                "emptydir-writable",
                "lo",
                "cgroupfs",
                "chown-in-range",
                "chown-out-of-range-refused",
            ],
            "{text}"
        );
        // On the node: the container's files in the emptyDir are root's and
        // fsGroup's (stored unmapped), the chown to 1000 stored as 1000.
        let f = std::fs::metadata(data.join("f")).unwrap();
        assert_eq!((f.uid(), f.gid()), (1000, 200));
        // The container's process is the range's first ID on the node.
        let pid = std::fs::read_dir(state.join("containers"))
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("state.json")).ok())
            .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .filter_map(|s| s["pid"].as_u64())
            .map(|p| p as u32)
            .find(|p| {
                std::fs::read_to_string(format!("/proc/{p}/uid_map"))
                    .is_ok_and(|m| m.split_whitespace().nth(1) == Some(&host_id.to_string()))
            })
            .unwrap_or_else(|| panic!("no process of {name} on the node"));
        let id = host_id.to_string();
        assert_eq!(node_uids(pid), [id.as_str(); 4].join(" "));
        ranges.push(host_id);
    }
    assert_ne!(ranges[0], ranges[1], "two pods never share a range");
    // A shared process namespace: the pod's pause process holds it, in the pod's user
    // namespace.
    let shared: Pod = serde_json::from_value(json!({
        "metadata": {"name": "userns-shared"},
        "spec": {
            "hostUsers": false, "shareProcessNamespace": true, "restartPolicy": "Never",
            "containers": [{"name": "c", "image": "busybox:1.36", "imagePullPolicy": "Never",
                "command": ["sh", "-c",
                    "[ \"$(cat /proc/1/comm)\" = pause ] && [ \"$(id -u)\" = 0 ] && grep -q ' 65536$' /proc/1/uid_map"]}],
        },
    }))
    .unwrap();
    one.create_bound(&shared).await.unwrap();
    let phase = one
        .ended("userns-shared", Duration::from_secs(60))
        .await
        .status
        .and_then(|s| s.phase)
        .unwrap_or_default();
    assert_eq!(phase, "Succeeded", "{}", one.node.kernlet_log());
    // exec enters the user namespace: root in the container, its range on the node.
    let out = std::process::Command::new(kernlet_tests::simnode::kernlet_bin().unwrap())
        .args(["exec", "default/userns-a", "--state-dir"])
        .arg(&state)
        .args([
            "--",
            "sh",
            "-c",
            "id -u; cat /proc/self/uid_map; cat /proc/self/status",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first(), Some(&"0"), "{out:?}");
    let map: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(map, ["0", &ranges[0].to_string(), "65536"], "{text}");
}

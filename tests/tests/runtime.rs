//! The pod runtime end to end on SimNodes (root), in standalone mode: pods from
//! manifests run from an imported busybox image, logs land in CRI files, exit codes and
//! restarts are right, the security defaults hold, and `kill -9` of kernlet disturbs
//! no container and leaves nothing behind once the pods are gone.

#![allow(
    clippy::unwrap_used,
    reason = "a test that cannot go on should stop loudly"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kernlet_tests::simnode::{Lab, SimNode, kernlet_bin};
use serde_json::Value;

fn import_busybox(node: &SimNode) {
    node.import_busybox().unwrap();
}

fn manifests(node: &SimNode, yaml: &str) -> PathBuf {
    let dir = node.dir("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("pods.yaml"), yaml).unwrap();
    dir
}

fn start(node: &mut SimNode, manifests: &Path) {
    let m = manifests.display().to_string();
    node.start_kernlet(&["run", "--standalone", "--manifests", &m])
        .unwrap();
}

fn pods(node: &SimNode) -> Vec<Value> {
    node.recorded_pods().unwrap()
}

fn pod(node: &SimNode, name: &str) -> Option<Value> {
    node.recorded_pod(name).unwrap()
}

fn wait_for<T>(
    node: &SimNode,
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < within,
            "timed out waiting for {what}\n{}",
            node.kernlet_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn status<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod["status"][list]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

/// The lines a container wrote, from its CRI log.
fn log_lines(node: &SimNode, pod: &Value, container: &str, restart: u32) -> Vec<(String, String)> {
    let dir = kernlet::runtime::logs::pod_dir(
        &node.dir("logs"),
        pod["metadata"]["namespace"].as_str().unwrap(),
        pod["metadata"]["name"].as_str().unwrap(),
        pod["metadata"]["uid"].as_str().unwrap(),
    );
    let text = std::fs::read_to_string(kernlet::runtime::logs::container_log(
        &dir, container, restart,
    ))
    .unwrap_or_default();
    text.lines()
        .filter_map(kernlet::runtime::logs::parse_line)
        .map(|r| (r.stream, r.text))
        .collect()
}

const LIFECYCLE: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: life, namespace: t}
spec:
  restartPolicy: Never
  initContainers:
  - {name: init, image: busybox:1.36, command: ["sh", "-c", "echo init ran"]}
  containers:
  - name: main
    image: busybox:1.36
    command: ["sh", "-c", "echo host $(hostname) $GREETING; cat /etc/hostname; grep -c localhost /etc/hosts; exec sleep 600"]
    env: [{name: GREETING, value: hello}]
  - {name: fails, image: busybox:1.36, command: ["sh", "-c", "echo oops >&2; exit 3"]}
---
apiVersion: v1
kind: Pod
metadata: {name: crash, namespace: t}
spec:
  restartPolicy: Always
  containers:
  - {name: c, image: busybox:1.36, command: ["sh", "-c", "echo run; exit 1"]}
---
apiVersion: v1
kind: Pod
metadata: {name: missing, namespace: t}
spec:
  containers:
  - {name: c, image: example.com/not/here:1, imagePullPolicy: Never}
"#;

#[test]
fn pods_run_log_exit_and_restart_like_kubelet() {
    let mut lab = Lab::new("rt").unwrap();
    let mut node = lab.add_node("r1").unwrap();
    import_busybox(&node);
    let m = manifests(&node, LIFECYCLE);
    start(&mut node, &m);

    let life = wait_for(&node, "pod life running", Duration::from_secs(30), || {
        pod(&node, "life").filter(|p| {
            status(p, "containerStatuses", "main")["state"]["running"].is_object()
                && status(p, "containerStatuses", "fails")["state"]["terminated"].is_object()
        })
    });
    assert_eq!(life["status"]["phase"], "Running");
    assert_eq!(life["status"]["qosClass"], "BestEffort");
    let init = status(&life, "initContainerStatuses", "init");
    assert_eq!(init["state"]["terminated"]["exitCode"], 0);
    assert_eq!(init["state"]["terminated"]["reason"], "Completed");
    let fails = status(&life, "containerStatuses", "fails");
    assert_eq!(fails["state"]["terminated"]["exitCode"], 3);
    assert_eq!(fails["state"]["terminated"]["reason"], "Error");
    assert_eq!(fails["restartCount"], 0, "restartPolicy Never");
    let main = status(&life, "containerStatuses", "main");
    assert_eq!(main["ready"], true);
    assert!(
        main["containerID"]
            .as_str()
            .unwrap()
            .starts_with("kernlet://")
    );
    assert!(main["imageID"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(main["image"], "docker.io/library/busybox:1.36");

    // Logs: CRI files with the right streams; the sandbox's hostname and hosts file.
    assert_eq!(
        log_lines(&node, &life, "init", 0),
        [("stdout".into(), "init ran".into())]
    );
    assert_eq!(
        log_lines(&node, &life, "fails", 0),
        [("stderr".into(), "oops".into())]
    );
    let main_log = wait_for(&node, "main's output", Duration::from_secs(10), || {
        Some(log_lines(&node, &life, "main", 0)).filter(|l| l.len() == 3)
    });
    assert_eq!(
        main_log,
        [
            ("stdout".into(), "host life hello".into()),
            ("stdout".into(), "life".into()),
            ("stdout".into(), "2".into())
        ]
    );

    // Always: restarted with CrashLoopBackOff (the first restart at once, then 10 s).
    let crash = wait_for(&node, "crash restarted", Duration::from_secs(20), || {
        pod(&node, "crash").filter(|p| status(p, "containerStatuses", "c")["restartCount"] == 1)
    });
    let c = status(&crash, "containerStatuses", "c");
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 1);
    let backing_off = wait_for(&node, "CrashLoopBackOff", Duration::from_secs(10), || {
        pod(&node, "crash").filter(|p| {
            status(p, "containerStatuses", "c")["state"]["waiting"]["reason"] == "CrashLoopBackOff"
        })
    });
    assert_eq!(
        status(&backing_off, "containerStatuses", "c")["restartCount"],
        1
    );

    // An image that is not in the store: waiting, with what to do.
    let missing = pod(&node, "missing").unwrap();
    let w = &status(&missing, "containerStatuses", "c")["state"]["waiting"];
    assert_eq!(w["reason"], "ErrImageNeverPull");
    assert!(
        w["message"]
            .as_str()
            .unwrap()
            .contains("kernlet image import")
    );
    assert_eq!(missing["status"]["phase"], "Pending");

    // The limits this host's cgroup2 cannot enforce are said out loud.
    assert!(
        node.kernlet_log().contains("NOT enforced"),
        "{}",
        node.kernlet_log()
    );
    // kubectl-like table.
    let table = Command::new(kernlet_bin().unwrap())
        .args(["pods", "--state-dir"])
        .arg(node.dir("state"))
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("life") && table.contains("1/2") && table.contains("ErrImageNeverPull"),
        "{table}"
    );
}

const SECURITY: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: sec, namespace: t}
spec:
  restartPolicy: Never
  containers:
  - name: root
    image: busybox:1.36
    command: ["sh", "-c", "grep -E '^(Cap|NoNewPrivs)' /proc/self/status; echo kcore=$(head -c 16 /proc/kcore | wc -c); echo 1 > /proc/sys/kernel/domainname && echo sys=writable || echo sys=readonly; id -u; [ -c /dev/kmsg ] && echo kmsg=yes || echo kmsg=no"]
  - name: user
    image: busybox:1.36
    command: ["sh", "-c", "grep -E '^(Cap|NoNewPrivs)' /proc/self/status; id -u; id -G"]
    securityContext: {runAsUser: 1234, runAsGroup: 5678, allowPrivilegeEscalation: false}
  - name: dropped
    image: busybox:1.36
    command: ["sh", "-c", "grep -E '^Cap(Bnd|Eff)' /proc/self/status"]
    securityContext: {capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}}
  - name: rofs
    image: busybox:1.36
    command: ["sh", "-c", "touch /x 2>/dev/null && echo root=writable || echo root=readonly; echo shm > /dev/shm/from-rofs; echo fds=$(ls /proc/self/fd); echo operstate=$(cat /sys/class/net/lo/operstate)"]
    securityContext: {readOnlyRootFilesystem: true}
  - name: unconfined
    image: busybox:1.36
    command: ["sh", "-c", "grep ^Seccomp: /proc/self/status; busybox unshare -U true && echo userns=allowed || echo userns=denied"]
  - name: confined
    image: busybox:1.36
    command: ["sh", "-c", "grep ^Seccomp: /proc/self/status; busybox unshare -U true && echo userns=allowed || echo userns=denied; echo alive=yes"]
    securityContext: {seccompProfile: {type: RuntimeDefault}}
  - name: localhost
    image: busybox:1.36
    command: ["sh", "-c", "grep ^Seccomp: /proc/self/status; mkdir /tmp/d 2>&1 && echo mkdir=allowed || echo mkdir=denied; echo uname=$(uname -s)"]
    securityContext: {seccompProfile: {type: Localhost, localhostProfile: profiles/no-mkdir.json}}
  - name: priv
    image: busybox:1.36
    command: ["sh", "-c", "grep ^CapEff: /proc/self/status; [ -c /dev/kmsg ] && echo kmsg=yes || echo kmsg=no; grep -c ' /proc/kcore ' /proc/self/mounts | sed 's/^/kcoremask=/'"]
    securityContext: {privileged: true}
  - name: shmreader
    image: busybox:1.36
    command: ["sh", "-c", "for i in $(seq 1 50); do [ -f /dev/shm/from-rofs ] && break; sleep 0.1; done; echo shared=$(cat /dev/shm/from-rofs)"]
  securityContext: {supplementalGroups: [4000]}
---
apiVersion: v1
kind: Pod
metadata: {name: noprofile, namespace: t}
spec:
  containers:
  - name: c
    image: busybox:1.36
    command: [sleep, "600"]
    securityContext: {seccompProfile: {type: Localhost, localhostProfile: profiles/missing.json}}
  - name: escape
    image: busybox:1.36
    command: [sleep, "600"]
    securityContext: {seccompProfile: {type: Localhost, localhostProfile: ../../../etc/passwd}}
"#;

/// A node seccomp profile in Docker's format: mkdir refused with EACCES; a rule for
/// containers with CAP_SYS_ADMIN only (which would refuse uname) left out.
const NO_MKDIR: &str = r#"{
  "defaultAction": "SCMP_ACT_ALLOW",
  "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
              {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
  "syscalls": [
    {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
    {"names": ["uname"], "action": "SCMP_ACT_ERRNO", "includes": {"caps": ["CAP_SYS_ADMIN"]}}
  ]
}"#;

fn field<'a>(lines: &'a [(String, String)], key: &str) -> &'a str {
    lines
        .iter()
        .find_map(|(_, l)| l.strip_prefix(key))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key} in {lines:?}"))
}

#[test]
fn containers_get_containerd_security_defaults() {
    let mut lab = Lab::new("sec").unwrap();
    let mut node = lab.add_node("s1").unwrap();
    import_busybox(&node);
    let profiles = node.dir("state").join("seccomp/profiles");
    std::fs::create_dir_all(&profiles).unwrap();
    std::fs::write(profiles.join("no-mkdir.json"), NO_MKDIR).unwrap();
    let m = manifests(&node, SECURITY);
    start(&mut node, &m);
    let p = wait_for(
        &node,
        "every container done",
        Duration::from_secs(30),
        || {
            pod(&node, "sec")
                .filter(|p| p["status"]["phase"] == "Succeeded" || p["status"]["phase"] == "Failed")
        },
    );
    // containerd's 14 default capabilities.
    let default_caps = "00000000a80425fb";
    let root = log_lines(&node, &p, "root", 0);
    assert_eq!(field(&root, "CapBnd:"), default_caps);
    assert_eq!(field(&root, "CapEff:"), default_caps);
    assert_eq!(field(&root, "CapPrm:"), default_caps);
    assert_eq!(field(&root, "CapInh:"), "0000000000000000");
    assert_eq!(field(&root, "NoNewPrivs:"), "0");
    assert_eq!(field(&root, "kcore="), "0", "/proc/kcore is masked");
    assert_eq!(field(&root, "sys="), "readonly", "/proc/sys is read-only");
    assert_eq!(
        field(&root, "kmsg="),
        "no",
        "no host devices without privileged"
    );
    let user = log_lines(&node, &p, "user", 0);
    assert_eq!(field(&user, "CapEff:"), "0000000000000000");
    assert_eq!(field(&user, "CapPrm:"), "0000000000000000");
    assert_eq!(field(&user, "CapBnd:"), default_caps);
    assert_eq!(field(&user, "NoNewPrivs:"), "1");
    let ids: Vec<&str> = user.iter().map(|(_, l)| l.as_str()).collect();
    assert!(ids.contains(&"1234"), "{ids:?}");
    assert!(
        ids.iter()
            .any(|l| l.split(' ').collect::<Vec<_>>() == ["5678", "4000"]),
        "{ids:?}"
    );
    let dropped = log_lines(&node, &p, "dropped", 0);
    assert_eq!(field(&dropped, "CapBnd:"), "0000000000000400");
    assert_eq!(field(&dropped, "CapEff:"), "0000000000000400");
    // Privileged: every capability, the host's devices, nothing masked.
    let privileged = log_lines(&node, &p, "priv", 0);
    let own = std::fs::read_to_string("/proc/self/status").unwrap();
    let own_caps = own
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(
        field(&privileged, "CapEff:"),
        own_caps,
        "every capability kernlet has"
    );
    assert_eq!(field(&privileged, "kmsg="), "yes");
    assert_eq!(field(&privileged, "kcoremask="), "0");
    let rofs = log_lines(&node, &p, "rofs", 0);
    assert_eq!(field(&rofs, "root="), "readonly");
    // Only stdin, stdout, stderr, and ls's own directory handle: nothing of kernlet's.
    assert_eq!(field(&rofs, "fds="), "0 1 2 3");
    // The pod's loopback is up (a loopback that is up reports "unknown").
    assert_eq!(field(&rofs, "operstate="), "unknown");
    // RuntimeDefault seccomp: filtered, and a syscall that needs no capability but is
    // not in the profile (unshare of a user namespace) is refused; ordinary programs run.
    let unconfined = log_lines(&node, &p, "unconfined", 0);
    assert_eq!(field(&unconfined, "Seccomp:"), "0");
    assert_eq!(field(&unconfined, "userns="), "allowed");
    let confined = log_lines(&node, &p, "confined", 0);
    assert_eq!(field(&confined, "Seccomp:"), "2");
    assert_eq!(field(&confined, "userns="), "denied");
    assert_eq!(field(&confined, "alive="), "yes");
    // A Localhost profile from <state-dir>/seccomp: its rules apply, the rule for
    // capabilities this container lacks does not.
    let localhost = log_lines(&node, &p, "localhost", 0);
    assert_eq!(field(&localhost, "Seccomp:"), "2");
    assert_eq!(field(&localhost, "mkdir="), "denied");
    assert!(
        localhost
            .iter()
            .any(|(_, l)| l.contains("Permission denied")),
        "EACCES as the profile says: {localhost:?}"
    );
    assert_eq!(field(&localhost, "uname="), "Linux");
    // A profile that is not on the node: the container is not created, and says why.
    let missing = wait_for(&node, "noprofile refused", Duration::from_secs(10), || {
        pod(&node, "noprofile").filter(|p| {
            status(p, "containerStatuses", "c")["state"]["waiting"]["reason"]
                == "CreateContainerError"
        })
    });
    let waiting = &status(&missing, "containerStatuses", "c")["state"]["waiting"];
    let message = waiting["message"].as_str().unwrap();
    assert!(
        message.contains(&profiles.join("missing.json").display().to_string()),
        "{message}"
    );
    let escape = &status(&missing, "containerStatuses", "escape")["state"]["waiting"];
    assert_eq!(escape["reason"], "CreateContainerError", "{missing}");
    assert!(
        escape["message"].as_str().unwrap().contains("without '..'"),
        "{escape}"
    );
    // /dev/shm is the pod's, shared by its containers.
    assert_eq!(
        field(&log_lines(&node, &p, "shmreader", 0), "shared="),
        "shm"
    );
}

const PID_NAMESPACES: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: shared, namespace: t}
spec:
  shareProcessNamespace: true
  containers:
  - {name: sleeper, image: busybox:1.36, command: [sleep, "600"]}
  - name: looker
    image: busybox:1.36
    command: ["sh", "-c", "sleep 1; echo pid1=$(cat /proc/1/comm); echo seen=$(cat /proc/[0-9]*/comm | sort -u | tr '\\n' ' '); exec sleep 600"]
---
apiVersion: v1
kind: Pod
metadata: {name: own, namespace: t}
spec:
  containers:
  - {name: c, image: busybox:1.36, command: ["sh", "-c", "echo pid1=$(cat /proc/1/comm); echo count=$(ls -d /proc/[0-9]* | wc -l); exec sleep 600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: host, namespace: t}
spec:
  hostPID: true
  containers:
  - {name: c, image: busybox:1.36, command: ["sh", "-c", "echo count=$(ls -d /proc/[0-9]* | wc -l); exec sleep 600"]}
"#;

#[test]
fn pid_namespaces_private_shared_through_a_pause_process_or_the_nodes() {
    let mut lab = Lab::new("pidns").unwrap();
    let mut node = lab.add_node("p1").unwrap();
    import_busybox(&node);
    let m = manifests(&node, PID_NAMESPACES);
    start(&mut node, &m);
    let lines = |name: &str, c: &str, key: &str| {
        wait_for(
            &node,
            &format!("{name}/{c} output"),
            Duration::from_secs(30),
            || {
                let p = pod(&node, name)?;
                let l = log_lines(&node, &p, c, 0);
                l.iter()
                    .find_map(|(_, t)| t.strip_prefix(key).map(str::to_string))
            },
        )
    };
    // Shared: PID 1 is the pod's pause process and the other container's sleep shows.
    assert_eq!(lines("shared", "looker", "pid1="), "pause");
    let seen = lines("shared", "looker", "seen=");
    assert!(seen.contains("sleep") && seen.contains("pause"), "{seen}");
    // Private: the container's own process is PID 1 and it sees only itself.
    assert_eq!(lines("own", "c", "pid1="), "sh");
    let own: u32 = lines("own", "c", "count=").trim().parse().unwrap();
    // sh, the command substitution's subshell, ls and wc.
    assert!(own <= 4, "a private PID namespace shows {own} processes");
    // hostPID: the node's processes.
    let host: u32 = lines("host", "c", "count=").trim().parse().unwrap();
    assert!(host > 20, "hostPID shows only {host} processes");
    // The pause process goes with its pod.
    let sb_pause = std::fs::read_dir(node.dir("state").join("pods"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("sandbox.json")).ok())
        .filter_map(|b| serde_json::from_slice::<Value>(&b).ok())
        .find_map(|s| s["pausePid"].as_u64())
        .expect("a pause pid recorded");
    assert!(Path::new(&format!("/proc/{sb_pause}")).exists());
    std::fs::write(m.join("pods.yaml"), "").unwrap();
    wait_for(
        &node,
        "the pause process gone",
        Duration::from_secs(60),
        || {
            (!Path::new(&format!("/proc/{sb_pause}/comm")).exists()
                || std::fs::read_to_string(format!("/proc/{sb_pause}/comm"))
                    .is_ok_and(|c| c.trim() != "pause"))
            .then_some(())
        },
    );
}

#[test]
fn kill_9_of_kernlet_with_ten_pods_restarts_nothing_and_leaves_nothing() {
    let mut lab = Lab::new("k9").unwrap();
    let mut node = lab.add_node("k1").unwrap();
    import_busybox(&node);
    let mut yaml = String::new();
    for i in 0..10 {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: t}}\nspec:\n  terminationGracePeriodSeconds: 2\n  containers:\n  - {{name: c, image: busybox:1.36, command: [sleep, '600']}}\n"
        ));
    }
    let m = manifests(&node, &yaml);
    start(&mut node, &m);
    let running = |node: &SimNode| {
        let all = pods(node);
        (all.len() == 10
            && all
                .iter()
                .all(|p| status(p, "containerStatuses", "c")["state"]["running"].is_object()))
        .then(|| {
            all.iter()
                .map(|p| {
                    status(p, "containerStatuses", "c")["containerID"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect::<Vec<_>>()
        })
    };
    let before = wait_for(&node, "10 running pods", Duration::from_secs(60), || {
        running(&node)
    });

    node.kill9_kernlet().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    start(&mut node, &m);
    // Give the restarted agent a few resyncs, then compare.
    std::thread::sleep(Duration::from_secs(3));
    let after = wait_for(
        &node,
        "10 running pods again",
        Duration::from_secs(30),
        || running(&node),
    );
    assert_eq!(before, after, "the same containers, adopted");
    for p in pods(&node) {
        assert_eq!(status(&p, "containerStatuses", "c")["restartCount"], 0);
    }
    assert!(
        !node.kernlet_log().contains("container started"),
        "{}",
        node.kernlet_log()
    );

    // The pods go away: nothing of them is left.
    std::fs::write(m.join("pods.yaml"), "").unwrap();
    wait_for(&node, "every pod removed", Duration::from_secs(60), || {
        pods(&node).is_empty().then_some(())
    });
    let state = node.dir("state");
    wait_for(
        &node,
        "containers and sandboxes gone",
        Duration::from_secs(30),
        || {
            let empty = |d: PathBuf| std::fs::read_dir(d).map(|r| r.count() == 0).unwrap_or(true);
            (empty(state.join("containers")) && empty(node.dir("run").join("pods"))).then_some(())
        },
    );
    // Only the running node's read-only binary (runtime::sealed_exe) stays mounted.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = node.dir("");
    let sealed = node.dir("state").join("bin/kernlet");
    let left: Vec<_> = kernlet_tests::hygiene::mount_points(&mountinfo)
        .into_iter()
        .filter(|m| m.starts_with(&root) && *m != sealed)
        .collect();
    assert!(
        left.is_empty(),
        "mounts left under {}: {left:?}",
        root.display()
    );
    let pods_cgroup = node.cgroup().join("kernlet/kubepods/besteffort");
    let left: Vec<_> = std::fs::read_dir(&pods_cgroup)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "pod cgroups left: {left:?}");
    assert!(node.kernlet_running());
}

#[test]
fn what_a_crash_left_without_a_record_is_removed_at_start() {
    use nix::mount::{MsFlags, mount};
    let mut lab = Lab::new("orph").unwrap();
    let mut node = lab.add_node("o1").unwrap();
    // Leftovers as a crash in the middle of creating or removing could leave them.
    let run_pod = node
        .dir("run")
        .join("pods/0rphan00-0000-0000-0000-000000000000");
    std::fs::create_dir_all(run_pod.join("ns")).unwrap();
    std::fs::create_dir_all(run_pod.join("shm")).unwrap();
    std::fs::File::create(run_pod.join("ns/net")).unwrap();
    // Pin this test's own network namespace: harmless, and a real nsfs bind mount.
    mount(
        Some("/proc/self/ns/net"),
        &run_pod.join("ns/net"),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    mount(
        Some("shm"),
        &run_pod.join("shm"),
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap();
    let cg = node
        .cgroup()
        .join("kernlet/kubepods/besteffort/pod0rphan00-0000-0000-0000-000000000000");
    std::fs::create_dir_all(&cg).unwrap();
    let mut sleeper = Command::new("sleep").arg("600").spawn().unwrap();
    std::fs::write(cg.join("cgroup.procs"), sleeper.id().to_string()).unwrap();
    let half = node.dir("state").join("containers/half-created");
    std::fs::create_dir_all(half.join("rootfs")).unwrap();
    let lc = node.dir("run").join("libcontainer/gone");
    std::fs::create_dir_all(&lc).unwrap();

    let m = manifests(&node, "");
    start(&mut node, &m);
    wait_for(
        &node,
        "the leftovers removed",
        Duration::from_secs(20),
        || (!run_pod.exists() && !cg.exists() && !half.exists() && !lc.exists()).then_some(()),
    );
    // The process in the orphaned pod cgroup was ended with it.
    let status = sleeper.wait().unwrap();
    assert!(!status.success());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains("0rphan00"), "{mountinfo}");
    assert!(
        node.kernlet_log()
            .contains("removed what an earlier run left"),
        "{}",
        node.kernlet_log()
    );
}

#[test]
fn image_user_names_and_fs_group_volumes() {
    use kernlet_tests::oci::{RawTar, write_layout_config};
    let mut lab = Lab::new("user").unwrap();
    let mut node = lab.add_node("u1").unwrap();
    // An image whose config runs as a user named in its own /etc/passwd.
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let mut base = RawTar::new()
        .dir("bin")
        .file_mode("bin/busybox", &busybox, 0o755);
    for applet in ["sh", "id", "echo"] {
        base = base.symlink(&format!("bin/{applet}"), "busybox");
    }
    let etc = RawTar::new()
        .dir("etc")
        .file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1234:5678::/:/bin/sh\n",
        )
        .file("etc/group", b"root:x:0:\napp:x:5678:\n");
    let layout = node.dir("image-build/named");
    write_layout_config(
        &layout,
        "1",
        &[base.finish(), etc.finish()],
        serde_json::json!({"User": "app", "Env": ["PATH=/bin"]}),
    )
    .unwrap();
    kernlet_tests::succeeded(
        Command::new(kernlet_bin().unwrap())
            .args(["image", "import"])
            .arg(&layout)
            .args(["--name", "example.com/named", "--image-dir"])
            .arg(node.dir("images")),
    );
    let m = manifests(
        &node,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: named, namespace: t}
spec:
  restartPolicy: Never
  securityContext: {fsGroup: 4444}
  volumes: [{name: data, emptyDir: {}}]
  containers:
  - name: c
    image: example.com/named:1
    command: ["sh", "-c", "echo uid=$(id -u) gid=$(id -g); echo volume=$(busybox stat -c '%g %a' /data)"]
    volumeMounts: [{name: data, mountPath: /data}]
"#,
    );
    start(&mut node, &m);
    let p = wait_for(&node, "pod named done", Duration::from_secs(30), || {
        pod(&node, "named").filter(|p| p["status"]["phase"] == "Succeeded")
    });
    let lines = log_lines(&node, &p, "c", 0);
    let texts: Vec<&str> = lines.iter().map(|(_, t)| t.as_str()).collect();
    assert!(texts.contains(&"uid=1234 gid=5678"), "{texts:?}");
    assert!(texts.contains(&"volume=4444 2777"), "{texts:?}");
}

const PROBES: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: t}
spec:
  containers:
  - name: c
    image: busybox:1.36
    command: ["sh", "-c", "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"]
    ports: [{name: http, containerPort: 8080}]
    readinessProbe: {httpGet: {path: /index.html, port: http}, periodSeconds: 1}
    livenessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: notready, namespace: t}
spec:
  containers:
  - name: c
    image: busybox:1.36
    command: ["sh", "-c", "mkdir -p /www && exec httpd -f -p 8080 -h /www"]
    readinessProbe: {httpGet: {path: /missing, port: 8080}, periodSeconds: 1}
  - name: exec
    image: busybox:1.36
    command: ["sleep", "600"]
    readinessProbe: {exec: {command: ["false"]}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: liveness, namespace: t}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox:1.36
    command: ["sh", "-c", "touch /tmp/health; sleep 3; rm /tmp/health; exec sleep 600"]
    livenessProbe: {exec: {command: ["cat", "/tmp/health"]}, periodSeconds: 1, failureThreshold: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: startup, namespace: t}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox:1.36
    command: ["sleep", "600"]
    startupProbe: {exec: {command: ["cat", "/tmp/never"]}, periodSeconds: 1, failureThreshold: 2}
    livenessProbe: {exec: {command: ["false"]}, periodSeconds: 1, failureThreshold: 1}
"#;

/// Probes as kubelet runs them: httpGet (named port) and tcpSocket from the pod's
/// network namespace, exec inside the container; readiness drives `ready` and the
/// pod's Ready condition without restarts; a failed liveness probe restarts the
/// container; a startup probe holds liveness back and, failing, restarts it too.
#[test]
fn probes_decide_readiness_and_restarts() {
    let mut lab = Lab::new("probes").unwrap();
    let mut node = lab.add_node("p1").unwrap();
    import_busybox(&node);
    let m = manifests(&node, PROBES);
    start(&mut node, &m);
    let ready = |p: &Value| {
        p["status"]["conditions"]
            .as_array()
            .and_then(|l| l.iter().find(|c| c["type"] == "Ready"))
            .map(|c| c["status"] == "True")
            .unwrap_or(false)
    };
    let web = wait_for(&node, "web ready", Duration::from_secs(30), || {
        pod(&node, "web").filter(ready)
    });
    let c = status(&web, "containerStatuses", "c");
    assert_eq!(c["ready"], true);
    assert_eq!(c["started"], true);
    let liveness = wait_for(&node, "liveness restarted", Duration::from_secs(30), || {
        pod(&node, "liveness")
            .filter(|p| status(p, "containerStatuses", "c")["restartCount"].as_u64() >= Some(1))
    });
    assert!(
        status(&liveness, "containerStatuses", "c")["lastState"]["terminated"].is_object(),
        "{liveness}"
    );
    let startup = wait_for(&node, "startup restarted", Duration::from_secs(30), || {
        pod(&node, "startup")
            .filter(|p| status(p, "containerStatuses", "c")["restartCount"].as_u64() >= Some(1))
    });
    let log = node.kernlet_log();
    assert!(
        log.contains("failed startup probe, will be restarted"),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("t/startup") && l.contains("Startup probe failed")),
        "{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("t/startup") && l.contains("Liveness probe failed")),
        "liveness does not run before the startup probe passed: {log}"
    );
    assert_eq!(
        status(&startup, "containerStatuses", "c")["started"],
        false,
        "{startup}"
    );
    // Failing readiness: running, never ready, never restarted.
    let notready = pod(&node, "notready").unwrap();
    for name in ["c", "exec"] {
        let c = status(&notready, "containerStatuses", name);
        assert!(c["state"]["running"].is_object(), "{notready}");
        assert_eq!(c["ready"], false, "{name}");
        assert_eq!(c["started"], true, "{name}");
        assert_eq!(c["restartCount"], 0, "{name}");
    }
    assert!(!ready(&notready));
    assert!(
        log.contains("HTTP probe failed with statuscode: 404"),
        "{log}"
    );
    let web = pod(&node, "web").unwrap();
    assert_eq!(status(&web, "containerStatuses", "c")["restartCount"], 0);
}

const MESSAGES: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: messages, namespace: t}
spec:
  restartPolicy: Never
  containers:
  - name: file
    image: busybox:1.36
    command: ["sh", "-c", "echo -n 'all done' > /dev/termination-log"]
  - name: custom
    image: busybox:1.36
    command: ["sh", "-c", "echo -n 'custom path' > /tmp/why; exit 4"]
    terminationMessagePath: /tmp/why
  - name: fallback
    image: busybox:1.36
    command: ["sh", "-c", "echo failing >&2; exit 3"]
    terminationMessagePolicy: FallbackToLogsOnError
  - name: nofallback
    image: busybox:1.36
    command: ["sh", "-c", "echo failing >&2; exit 3"]
  - name: nonroot
    image: busybox:1.36
    command: ["/bin/sh", "-c", "/bin/echo -n DONE > /dev/termination-custom-log"]
    terminationMessagePath: /dev/termination-custom-log
    securityContext: {runAsUser: 10000}
  - name: partial
    image: busybox:1.36
    command: ["/bin/sh", "-c", "/bin/echo -n DONE; /bin/false"]
    terminationMessagePolicy: FallbackToLogsOnError
  - name: succeeded
    image: busybox:1.36
    command: ["sh", "-c", "echo fine"]
    terminationMessagePolicy: FallbackToLogsOnError
"#;

/// Termination messages as kubelet reports them: the file at terminationMessagePath
/// (default /dev/termination-log), or with FallbackToLogsOnError the end of the log
/// of a failed container.
#[test]
fn termination_messages_from_the_file_or_the_log() {
    let mut lab = Lab::new("msgs").unwrap();
    let mut node = lab.add_node("m1").unwrap();
    import_busybox(&node);
    let m = manifests(&node, MESSAGES);
    start(&mut node, &m);
    let p = wait_for(
        &node,
        "every container done",
        Duration::from_secs(30),
        || pod(&node, "messages").filter(|p| p["status"]["phase"] == "Failed"),
    );
    let terminated =
        |name: &str| status(&p, "containerStatuses", name)["state"]["terminated"].clone();
    assert_eq!(terminated("file")["message"], "all done", "{p}");
    assert_eq!(terminated("custom")["message"], "custom path");
    assert_eq!(terminated("custom")["exitCode"], 4);
    assert_eq!(terminated("fallback")["message"], "failing\n");
    // The upstream conformance cases: a non-root user writes its message at a custom
    // path; a last line without a newline stays without one.
    assert_eq!(terminated("nonroot")["message"], "DONE", "{p}");
    assert_eq!(terminated("nonroot")["exitCode"], 0, "{p}");
    assert_eq!(terminated("partial")["message"], "DONE", "{p}");
    assert!(terminated("nofallback").get("message").is_none(), "{p}");
    assert!(terminated("succeeded").get("message").is_none(), "{p}");
}

const HOOKS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: hooks, namespace: t}
spec:
  terminationGracePeriodSeconds: 3
  containers:
  - name: main
    image: busybox:1.36
    command: ["sh", "-c", "trap 'echo got TERM; sleep 1; exit 0' TERM; while [ ! -f /tmp/started ]; do sleep 0.1; done; echo saw $(cat /tmp/started); while true; do sleep 0.2; done"]
    lifecycle:
      postStart: {exec: {command: ["sh", "-c", "echo poststart > /tmp/started"]}}
      preStop: {exec: {command: ["sh", "-c", "echo prestop ran > /proc/1/fd/1"]}}
  - name: badhook
    image: busybox:1.36
    command: ["sleep", "600"]
    lifecycle:
      postStart: {exec: {command: ["false"]}}
  - name: usr1
    image: busybox:1.36
    command: ["sh", "-c", "trap 'echo got USR1; exit 0' USR1; trap 'echo got TERM; exit 0' TERM; while true; do sleep 0.2; done"]
    lifecycle:
      stopSignal: SIGUSR1
"#;

/// Lifecycle hooks: postStart runs in the container right after it starts (and a
/// failing one kills the container, which restarts); on deletion preStop runs
/// before SIGTERM, or before the container's `lifecycle.stopSignal`.
#[test]
fn post_start_and_pre_stop_hooks() {
    let mut lab = Lab::new("hooks").unwrap();
    let mut node = lab.add_node("h1").unwrap();
    import_busybox(&node);
    let m = manifests(&node, HOOKS);
    start(&mut node, &m);
    let p = wait_for(
        &node,
        "postStart seen by the container",
        Duration::from_secs(30),
        || {
            pod(&node, "hooks").filter(|p| {
                log_lines(&node, p, "main", 0)
                    .iter()
                    .any(|(_, l)| l == "saw poststart")
            })
        },
    );
    wait_for(&node, "badhook restarted", Duration::from_secs(30), || {
        pod(&node, "hooks").filter(|p| {
            status(p, "containerStatuses", "badhook")["restartCount"].as_u64() >= Some(1)
        })
    });
    assert!(node.kernlet_log().contains("FailedPostStartHook"));
    // Delete: preStop, then SIGTERM (the container traps it and says so).
    let uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    let pod_logs = kernlet::runtime::logs::pod_dir(&node.dir("logs"), "t", "hooks", &uid);
    let log = kernlet::runtime::logs::container_log(&pod_logs, "main", 0);
    std::fs::remove_file(m.join("pods.yaml")).unwrap();
    let text = wait_for(
        &node,
        "preStop then SIGTERM in the log",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|t| t.contains("got TERM"))
        },
    );
    let lines: Vec<String> = text
        .lines()
        .filter_map(kernlet::runtime::logs::parse_line)
        .map(|r| r.text)
        .collect();
    let pre = lines.iter().position(|l| l == "prestop ran");
    let term = lines.iter().position(|l| l == "got TERM");
    assert!(pre.is_some() && pre < term, "{lines:?}");
    let usr1_log = kernlet::runtime::logs::container_log(&pod_logs, "usr1", 0);
    let usr1 = wait_for(
        &node,
        "the stop signal in the log",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(&usr1_log)
                .ok()
                .filter(|t| t.contains("got "))
        },
    );
    assert!(
        usr1.contains("got USR1") && !usr1.contains("got TERM"),
        "{usr1}"
    );
    wait_for(&node, "pod removed", Duration::from_secs(20), || {
        pod(&node, "hooks").is_none().then_some(())
    });
}

const DNS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: dns, namespace: t}
spec:
  restartPolicy: Never
  subdomain: web
  hostAliases: [{ip: 192.0.2.7, hostnames: [foo.local, bar.local]}]
  containers:
  - {name: c, image: busybox:1.36, command: ["sh", "-c", "cat /etc/resolv.conf /etc/hosts"]}
---
apiVersion: v1
kind: Pod
metadata: {name: custom, namespace: t}
spec:
  restartPolicy: Never
  dnsPolicy: None
  dnsConfig: {nameservers: [192.0.2.1], searches: [x.example], options: [{name: ndots, value: "2"}]}
  containers:
  - {name: c, image: busybox:1.36, command: ["cat", "/etc/resolv.conf"]}
"#;

/// resolv.conf and hosts as kubelet writes them: ClusterFirst from --cluster-dns and
/// --cluster-domain with the node's search domains, dnsPolicy None from dnsConfig,
/// hostAliases appended to the managed hosts file.
#[test]
fn dns_policies_and_host_aliases() {
    let mut lab = Lab::new("dns").unwrap();
    let mut node = lab.add_node("n1").unwrap();
    import_busybox(&node);
    let m = manifests(&node, DNS);
    let resolv = node.dir("state").join("node-resolv.conf");
    std::fs::create_dir_all(node.dir("state")).unwrap();
    std::fs::write(&resolv, "nameserver 192.0.2.53\nsearch corp.example\n").unwrap();
    let (m, r) = (m.display().to_string(), resolv.display().to_string());
    node.start_kernlet(&[
        "run",
        "--standalone",
        "--manifests",
        &m,
        "--cluster-dns",
        "10.96.0.10",
        "--cluster-domain",
        "cluster.test",
        "--resolv-conf",
        &r,
    ])
    .unwrap();
    let done = |name: &str| {
        wait_for(
            &node,
            &format!("{name} done"),
            Duration::from_secs(30),
            || pod(&node, name).filter(|p| p["status"]["phase"] == "Succeeded"),
        )
    };
    let p = done("dns");
    let text: Vec<String> = log_lines(&node, &p, "c", 0)
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    let text = text.join("\n");
    assert!(text.contains("nameserver 10.96.0.10"), "{text}");
    assert!(
        text.contains("search t.svc.cluster.test svc.cluster.test cluster.test corp.example"),
        "{text}"
    );
    assert!(text.contains("options ndots:5"), "{text}");
    assert!(text.contains("192.0.2.7\tfoo.local\tbar.local"), "{text}");
    let p = done("custom");
    let text: Vec<String> = log_lines(&node, &p, "c", 0)
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert_eq!(
        text,
        [
            "nameserver 192.0.2.1",
            "search x.example",
            "options ndots:2"
        ],
        "{text:?}"
    );
}

const VOLUMES: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: vols, namespace: t}
spec:
  restartPolicy: Never
  volumes:
  - {name: scratch, emptyDir: {}}
  - {name: host, hostPath: {path: HOSTDIR, type: Directory}}
  - {name: made, hostPath: {path: HOSTDIR/made, type: DirectoryOrCreate}}
  - {name: untyped, hostPath: {path: HOSTDIR/untyped}}
  containers:
  - name: writer
    image: busybox:1.36
    command: ["sh", "-c", "echo from-sub > /sub/file; cat /host/hello; ls -d /made && echo made=yes; ls -d /untyped && echo untyped=yes; touch /host/ro 2>/dev/null && echo host=writable || echo host=readonly"]
    volumeMounts:
    - {name: scratch, mountPath: /sub, subPath: a/b}
    - {name: host, mountPath: /host, readOnly: true}
    - {name: made, mountPath: /made}
    - {name: untyped, mountPath: /untyped}
---
apiVersion: v1
kind: Pod
metadata: {name: escape, namespace: t}
spec:
  volumes:
  - {name: scratch, emptyDir: {}}
  initContainers:
  - name: plant
    image: busybox:1.36
    command: ["sh", "-c", "ln -s / /v/out"]
    volumeMounts: [{name: scratch, mountPath: /v}]
  containers:
  - name: c
    image: busybox:1.36
    command: ["sleep", "600"]
    volumeMounts: [{name: scratch, mountPath: /x, subPath: out}]
---
apiVersion: v1
kind: Pod
metadata: {name: absolute, namespace: t}
spec:
  volumes:
  - {name: scratch, emptyDir: {}}
  containers:
  - name: c
    image: busybox:1.36
    command: ["sleep", "600"]
    volumeMounts: [{name: scratch, mountPath: /x, subPath: /etc}]
"#;

/// hostPath volumes with their type checks and readOnly, and subPath resolved safely:
/// a path below the volume is created and mounted; a subPath through a symlink that
/// points out of the volume, or an absolute one, refuses the container.
#[test]
fn host_path_volumes_and_safe_sub_paths() {
    let mut lab = Lab::new("vols").unwrap();
    let mut node = lab.add_node("v1").unwrap();
    import_busybox(&node);
    let host = node.dir("hostdir");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("hello"), "hello from the node\n").unwrap();
    let m = manifests(
        &node,
        &VOLUMES.replace("HOSTDIR", &host.display().to_string()),
    );
    start(&mut node, &m);
    let p = wait_for(&node, "vols done", Duration::from_secs(30), || {
        pod(&node, "vols").filter(|p| p["status"]["phase"] == "Succeeded")
    });
    let lines: Vec<String> = log_lines(&node, &p, "writer", 0)
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert!(
        lines.contains(&"hello from the node".to_string()),
        "{lines:?}"
    );
    assert!(lines.contains(&"made=yes".to_string()), "{lines:?}");
    assert!(lines.contains(&"host=readonly".to_string()), "{lines:?}");
    assert!(host.join("made").is_dir(), "DirectoryOrCreate made it");
    assert!(lines.contains(&"untyped=yes".to_string()), "{lines:?}");
    assert!(
        host.join("untyped").is_dir(),
        "no type: made as a directory"
    );
    assert!(!host.join("ro").exists());
    // The subPath is a directory in the volume, created for it.
    let uid = p["metadata"]["uid"].as_str().unwrap();
    let file = node
        .dir("state")
        .join("pods")
        .join(uid)
        .join("volumes/empty-dir/scratch/a/b/file");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "from-sub\n");
    for (name, words) in [
        ("escape", "cannot be opened inside the volume"),
        ("absolute", "must be a relative path"),
    ] {
        let p = wait_for(
            &node,
            &format!("{name} refused"),
            Duration::from_secs(30),
            || {
                pod(&node, name).filter(|p| {
                    status(p, "containerStatuses", "c")["state"]["waiting"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains(words))
                })
            },
        );
        assert_eq!(
            status(&p, "containerStatuses", "c")["state"]["waiting"]["reason"],
            "CreateContainerConfigError",
            "{p}"
        );
    }
}

/// gRPC probes speak the standard health protocol: SERVING is ready; NOT_SERVING and
/// an unknown service are not, with kubelet's words in the log.
#[test]
fn grpc_probes_use_the_health_protocol() {
    let mut lab = Lab::new("grpc").unwrap();
    let mut node = lab.add_node("g1").unwrap();
    import_busybox(&node);
    let server = kernlet_tests::grpc_health::HealthServer::start(&node).unwrap();
    let yaml = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: grpc, namespace: t}}
spec:
  hostNetwork: true
  containers:
  - {{name: ok, image: busybox:1.36, command: [sleep, "600"], readinessProbe: {{grpc: {{port: {p}}}, periodSeconds: 1}}}}
  - {{name: sick, image: busybox:1.36, command: [sleep, "600"], readinessProbe: {{grpc: {{port: {p}, service: sick}}, periodSeconds: 1}}}}
  - {{name: unknown, image: busybox:1.36, command: [sleep, "600"], readinessProbe: {{grpc: {{port: {p}, service: nope}}, periodSeconds: 1}}}}
"#,
        p = server.port
    );
    let m = manifests(&node, &yaml);
    start(&mut node, &m);
    let p = wait_for(
        &node,
        "the SERVING container ready",
        Duration::from_secs(30),
        || pod(&node, "grpc").filter(|p| status(p, "containerStatuses", "ok")["ready"] == true),
    );
    for name in ["sick", "unknown"] {
        let c = status(&p, "containerStatuses", name);
        assert!(
            c["state"]["running"].is_object() && c["ready"] == false,
            "{name}: {c}"
        );
    }
    let log = node.kernlet_log();
    assert!(
        log.contains("service unhealthy (responded with \\\"NOT_SERVING\\\")")
            || log.contains("service unhealthy (responded with \"NOT_SERVING\")"),
        "{log}"
    );
    assert!(log.contains("rpc error: code = 5"), "{log}");
    drop(server);
}

/// hostPort without iptables: the node's address relays TCP and UDP to the container
/// port inside the pod's network namespace, until the pod goes.
#[test]
fn host_ports_relay_tcp_and_udp_into_the_pod() {
    use std::os::fd::AsFd as _;
    let mut lab = Lab::new("hostport").unwrap();
    let mut node = lab.add_node("h1").unwrap();
    import_busybox(&node);
    let m = manifests(
        &node,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: t}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: busybox:1.36
    command: ["sh", "-c", "mkdir -p /www && echo hostport ok > /www/index.html && exec httpd -f -p 8080 -h /www"]
    ports: [{containerPort: 8080, hostPort: 18080}, {containerPort: 9000, hostPort: 19000, protocol: UDP}]
"#,
    );
    start(&mut node, &m);
    let p = wait_for(&node, "web running", Duration::from_secs(30), || {
        pod(&node, "web")
            .filter(|p| status(p, "containerStatuses", "httpd")["state"]["running"].is_object())
    });
    // An HTTP GET from the node's namespace to its own address.
    let node_ns = std::path::PathBuf::from(format!("/run/netns/{}", node.netns));
    let get = |ns: std::path::PathBuf, addr: std::net::SocketAddr| -> Option<String> {
        std::thread::spawn(move || -> Option<String> {
            use std::io::{Read as _, Write as _};
            let f = std::fs::File::open(ns).ok()?;
            nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
            let mut c = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
            c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            c.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
            let mut text = String::new();
            c.read_to_string(&mut text).ok()?;
            Some(text)
        })
        .join()
        .ok()?
    };
    let addr = std::net::SocketAddr::new(node.address.into(), 18080);
    let body = wait_for(
        &node,
        "the page through the host port",
        Duration::from_secs(15),
        || get(node_ns.clone(), addr).filter(|t| t.contains("hostport ok")),
    );
    assert!(body.ends_with("hostport ok\n"), "{body}");
    // UDP: an echo inside the pod's namespace, a datagram to the node's address.
    let uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    let pod_ns = node.dir("run").join("pods").join(&uid).join("ns/net");
    let in_ns = |path: std::path::PathBuf, bind: std::net::SocketAddr| {
        std::thread::spawn(move || {
            let ns = std::fs::File::open(path).unwrap();
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            std::net::UdpSocket::bind(bind).unwrap()
        })
        .join()
        .unwrap()
    };
    let echo = in_ns(pod_ns, "0.0.0.0:9000".parse().unwrap());
    let echo_thread = std::thread::spawn(move || {
        let mut b = [0u8; 64];
        echo.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        if let Ok((n, from)) = echo.recv_from(&mut b) {
            let _ = echo.send_to(&b[..n], from);
        }
    });
    let client = in_ns(
        std::path::PathBuf::from(format!("/run/netns/{}", node.netns)),
        std::net::SocketAddr::new(node.address.into(), 0),
    );
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.send_to(b"ping", (node.address, 19000)).unwrap();
    let mut b = [0u8; 64];
    let (n, _) = client
        .recv_from(&mut b)
        .expect("the echo through the UDP host port");
    assert_eq!(&b[..n], b"ping");
    echo_thread.join().unwrap();
    // Gone with the pod.
    std::fs::remove_file(m.join("pods.yaml")).unwrap();
    wait_for(&node, "web removed", Duration::from_secs(30), || {
        pod(&node, "web").is_none().then_some(())
    });
    assert!(get(node_ns, addr).is_none(), "the host port is closed");
}

/// `kernlet ps`, `logs` and `inspect`, crictl's equivalents, from the state
/// directory: every run of every container with its state, a container's output
/// (current or previous run, the last lines, with times) as the container wrote it,
/// and a pod or container with its namespaces, cgroup and mounts as the kernel has them.
#[test]
fn ps_logs_and_inspect_answer_from_the_state_directory() {
    let mut lab = Lab::new("pslogs").unwrap();
    let mut node = lab.add_node("p1").unwrap();
    import_busybox(&node);
    let m = manifests(
        &node,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: talk, namespace: t}
spec:
  restartPolicy: OnFailure
  terminationGracePeriodSeconds: 1
  containers:
  - {name: once, image: busybox:1.36, command: ["sh", "-c", "echo line one; echo line two >&2; exit 1"]}
  - {name: sleeper, image: busybox:1.36, command: ["sleep", "600"]}
"#,
    );
    start(&mut node, &m);
    wait_for(
        &node,
        "the second run of once",
        Duration::from_secs(30),
        || {
            pod(&node, "talk").filter(|p| {
                let c = status(p, "containerStatuses", "once");
                c["restartCount"].as_u64() >= Some(1)
                    && c["state"]["waiting"]["reason"] == "CrashLoopBackOff"
            })
        },
    );
    let kernlet = |args: &[&str]| {
        let out = Command::new(kernlet_bin().unwrap())
            .args(args)
            .arg("--state-dir")
            .arg(node.dir("state"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let ps: Value = serde_json::from_str(&kernlet(&["ps", "-o", "json"])).unwrap();
    let items = ps["items"].as_array().unwrap();
    // Its ended runs as kubelet's collection keeps them: the latest, and the one
    // before while the latest has just ended.
    let once: Vec<&Value> = items.iter().filter(|i| i["container"] == "once").collect();
    assert!(!once.is_empty() && once.len() <= 2, "{ps:#}");
    for i in &once {
        assert_eq!(i["state"], "exited", "{i}");
        assert_eq!(i["exitCode"], 1);
        assert_eq!(i["reason"], "Error");
        assert_eq!(i["pod"]["name"], "talk");
        assert_eq!(i["pod"]["namespace"], "t");
    }
    assert!(
        once.last().unwrap()["attempt"].as_u64() >= Some(1),
        "{ps:#}"
    );
    let sleeper = items.iter().find(|i| i["container"] == "sleeper").unwrap();
    assert_eq!(sleeper["state"], "running");
    assert!(sleeper["pid"].as_u64().unwrap() > 1);
    let table = kernlet(&["ps"]);
    let rows: Vec<&str> = table.lines().filter(|l| l.contains("t/talk")).collect();
    assert_eq!(rows.len(), items.len(), "{table}");
    assert!(
        rows.iter()
            .any(|r| r.contains("exited (1)") && r.contains("once")),
        "{table}"
    );
    assert!(
        rows.iter()
            .any(|r| r.contains("running") && r.contains("sleeper")),
        "{table}"
    );
    // Logs: stdout and stderr as written, the previous run, the tail, with times.
    assert_eq!(
        kernlet(&["logs", "t/talk", "-c", "once"]),
        "line one\nline two\n"
    );
    assert_eq!(
        kernlet(&["logs", "t/talk", "-c", "once", "--previous"]),
        "line one\nline two\n"
    );
    assert_eq!(
        kernlet(&["logs", "t/talk", "-c", "once", "--tail", "1"]),
        "line two\n"
    );
    let stamped = kernlet(&["logs", "t/talk", "-c", "once", "--timestamps"]);
    let first = stamped.lines().next().unwrap();
    let (time, text) = first.split_once(' ').unwrap();
    assert!(
        time.parse::<k8s_openapi::jiff::Timestamp>().is_ok() && text == "line one",
        "{first}"
    );
    // inspect: the pod with its sandbox and containers, as the kernel has them.
    let flags = node.kernlet_dir_flags();
    let cg_at = flags.iter().position(|f| f == "--cgroup-root").unwrap();
    // top: the pod and its running container by CPU from their cgroups.
    let top = |extra: &[&str]| -> Value {
        let out = Command::new(kernlet_bin().unwrap())
            .args([
                "top",
                "-o",
                "json",
                "--interval",
                "0.5",
                "--cgroup-root",
                &flags[cg_at + 1],
                "--state-dir",
            ])
            .arg(node.dir("state"))
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let pods = top(&[]);
    let talk = pods
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["pod"] == "talk")
        .unwrap();
    assert_eq!(talk["namespace"], "t");
    assert!(talk["cpuMillicores"].is_u64(), "{pods}");
    let containers = top(&["--containers"]);
    assert!(
        containers
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["pod"] == "talk"
                && r["container"] == "sleeper"
                && r["cpuMillicores"].is_u64()),
        "{containers}"
    );
    let inspect = |what: &str, json_out: bool| {
        let mut cmd = Command::new(kernlet_bin().unwrap());
        cmd.args([
            "inspect",
            what,
            "--cgroup-root",
            &flags[cg_at + 1],
            "--state-dir",
        ])
        .arg(node.dir("state"))
        .arg("--run-dir")
        .arg(node.dir("run"));
        if json_out {
            cmd.args(["-o", "json"]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let v: Value = serde_json::from_str(&inspect("t/talk", true)).unwrap();
    assert_eq!(v["pod"], "t/talk");
    // The standalone daemon answers on its socket: its pods pass synced.
    assert_eq!(v["daemon"]["running"], true, "{}", v["daemon"]);
    assert!(v["daemon"]["lastSync"].is_string(), "{}", v["daemon"]);
    let pins = v["sandbox"]["namespacePins"].as_array().unwrap();
    let net_pin = pins
        .iter()
        .find(|p| p.as_str().unwrap().ends_with("/ns/net"))
        .unwrap();
    let sleeping = v["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "sleeper" && c["state"] == "running")
        .unwrap();
    assert_eq!(sleeping["pid"], sleeper["pid"]);
    let ino =
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(net_pin.as_str().unwrap()).unwrap());
    assert_eq!(
        sleeping["namespaces"]["net"],
        format!("net:[{ino}]"),
        "the pod's network namespace"
    );
    let procs = sleeping["cgroup"]["limits"]["cgroup.procs"]
        .as_array()
        .unwrap();
    assert!(procs.contains(&sleeping["pid"]), "{sleeping:#}");
    assert!(
        sleeping["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["destination"] == "/etc/hosts"),
        "{sleeping:#}"
    );
    // A container by a prefix of its ID, and the table form.
    let id = sleeping["id"].as_str().unwrap();
    let by_id: Value = serde_json::from_str(&inspect(&id[..12], true)).unwrap();
    assert_eq!(by_id["name"], "sleeper");
    assert_eq!(by_id["podUID"], v["uid"]);
    let table = inspect("t/talk", false);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("containers[") && l.ends_with(".state: running")),
        "{table}"
    );
    assert!(table.contains("sandbox.namespacePins: ["), "{table}");
    assert!(table.starts_with("daemon: running (pid "), "{table}");
    let missing = Command::new(kernlet_bin().unwrap())
        .args(["logs", "t/nope", "--state-dir"])
        .arg(node.dir("state"))
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no pod t/nope on this node"));
}

/// Safe sysctls of the pod's securityContext are set in its namespaces; an unsafe
/// one refuses the pod at admission (SysctlForbidden), as kubelet does by default.
#[test]
fn safe_sysctls_apply_and_unsafe_ones_refuse_the_pod() {
    let mut lab = Lab::new("sysctl").unwrap();
    let mut node = lab.add_node("s1").unwrap();
    import_busybox(&node);
    let m = manifests(
        &node,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: safe, namespace: t}
spec:
  restartPolicy: Never
  securityContext: {sysctls: [{name: net.ipv4.ip_unprivileged_port_start, value: "0"}]}
  containers:
  - {name: c, image: busybox:1.36, command: ["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"]}
---
apiVersion: v1
kind: Pod
metadata: {name: unsafe, namespace: t}
spec:
  securityContext: {sysctls: [{name: kernel.msgmax, value: "1"}]}
  containers:
  - {name: c, image: busybox:1.36, command: ["sleep", "600"]}
"#,
    );
    start(&mut node, &m);
    let p = wait_for(&node, "safe done", Duration::from_secs(30), || {
        pod(&node, "safe").filter(|p| p["status"]["phase"] == "Succeeded")
    });
    let lines: Vec<String> = log_lines(&node, &p, "c", 0)
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert_eq!(lines, ["0"]);
    let refused = wait_for(&node, "unsafe refused", Duration::from_secs(30), || {
        pod(&node, "unsafe").filter(|p| p["status"]["phase"] == "Failed")
    });
    assert_eq!(refused["status"]["reason"], "SysctlForbidden", "{refused}");
    assert!(
        refused["status"]["containerStatuses"].is_null(),
        "never started"
    );
    // Once the refused pod leaves the manifests, its record goes too (no ghost in
    // `kernlet pods`, none for `kernlet exec` to pick).
    let m = m.join("pods.yaml");
    let text = std::fs::read_to_string(&m).unwrap();
    std::fs::write(&m, text.split("\n---\n").next().unwrap()).unwrap();
    wait_for(
        &node,
        "the refused pod's record gone",
        Duration::from_secs(30),
        || pod(&node, "unsafe").is_none().then_some(()),
    );
    assert!(pod(&node, "safe").is_some());
}

const TWO_PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: left, namespace: net}
spec:
  containers:
  - {name: c, image: busybox:1.36, command: ["sleep", "600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: right, namespace: net}
spec:
  containers:
  - {name: c, image: busybox:1.36, command: ["sleep", "600"]}
"#;

/// Standalone with `--pod-cidr`: pods get addresses of it on `cni0`, reach each other,
/// keep their addresses across a `kill -9` of kernlet, and an address recorded for a
/// pod that does not exist is released at start.
#[test]
fn standalone_pods_get_addresses_on_the_bridge_and_keep_them_across_kill_9() {
    use std::io::{Read as _, Write as _};
    use std::os::fd::AsFd as _;
    let mut lab = Lab::new("pnet").unwrap();
    let mut node = lab.add_node("n1").unwrap();
    node.import_busybox().unwrap();
    let m = manifests(&node, TWO_PODS).display().to_string();
    let ipam = node.dir("state").join("ipam/10.88.0.0_24");
    std::fs::create_dir_all(&ipam).unwrap();
    std::fs::write(ipam.join("10.88.0.200"), "a-pod-that-is-gone").unwrap();
    let args = [
        "run",
        "--standalone",
        "--manifests",
        &m,
        "--pod-cidr",
        "10.88.0.0/24",
    ];
    node.start_kernlet(&args).unwrap();
    let addresses = |node: &SimNode| {
        wait_for(
            node,
            "both pods running with an IP",
            Duration::from_secs(60),
            || {
                let ips: Vec<(String, String)> = ["left", "right"]
                    .iter()
                    .filter_map(|n| {
                        let p = pod(node, n)?;
                        (p["status"]["phase"] == "Running").then_some(())?;
                        let ip = p["status"]["podIP"].as_str()?.to_string();
                        Some((ip, p["metadata"]["uid"].as_str()?.to_string()))
                    })
                    .collect();
                (ips.len() == 2).then_some(ips)
            },
        )
    };
    let before = addresses(&node);
    let net: kernlet::model::cidr::Ipv4Net = "10.88.0.0/24".parse().unwrap();
    for (ip, _) in &before {
        assert!(net.contains(ip.parse().unwrap()), "{ip}");
    }
    assert_ne!(before[0].0, before[1].0);
    assert!(
        !ipam.join("10.88.0.200").exists(),
        "the address of a pod that is gone is released"
    );
    let bridge = Command::new("ip")
        .args(["-n", &node.netns, "addr", "show", "cni0"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&bridge.stdout).contains("10.88.0.1/24"));

    // left → right over the bridge, from the pods' own namespaces.
    let ns = |uid: &str| node.dir("run").join("pods").join(uid).join("ns/net");
    let right_ip: std::net::Ipv4Addr = before[1].0.parse().unwrap();
    let right_ns = std::fs::File::open(ns(&before[1].1)).unwrap();
    let listener = std::thread::spawn(move || {
        nix::sched::setns(right_ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        std::net::TcpListener::bind((right_ip, 7070)).unwrap()
    })
    .join()
    .unwrap();
    let serve = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        s.write_all(peer.ip().to_string().as_bytes()).unwrap();
    });
    let mut conn = kernlet::sys::ns::connect_in(
        Some(&ns(&before[0].1)),
        (right_ip, 7070).into(),
        Duration::from_secs(5),
    )
    .unwrap();
    let mut seen = String::new();
    conn.read_to_string(&mut seen).unwrap();
    serve.join().unwrap();
    assert_eq!(
        seen, before[0].0,
        "the right pod sees the left pod's own address"
    );

    node.kill9_kernlet().unwrap();
    node.start_kernlet(&args).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(addresses(&node), before, "pods keep their addresses");
}

const CGROUP_VIEW: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: cgview, namespace: t}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: busybox:1.36
    command: ["sh", "-c", "cat /proc/self/cgroup; ls /sys/fs/cgroup | sed 's/^/entry=/'; touch /sys/fs/cgroup/x 2>/dev/null && echo cg=rw || echo cg=ro"]
"#;

/// A container has a cgroup namespace of its own and its own cgroup, read-only, at
/// /sys/fs/cgroup (as containerd mounts it): /proc/self/cgroup says `0::/`, and nothing
/// of the node's tree (its other pods, kubepods) shows.
#[test]
fn containers_see_their_own_cgroup_read_only() {
    let mut lab = Lab::new("cgview").unwrap();
    let mut node = lab.add_node("c1").unwrap();
    import_busybox(&node);
    let m = manifests(&node, CGROUP_VIEW);
    start(&mut node, &m);
    let p = wait_for(&node, "cgview done", Duration::from_secs(30), || {
        pod(&node, "cgview").filter(|p| p["status"]["phase"] == "Succeeded")
    });
    let lines: Vec<String> = log_lines(&node, &p, "c", 0)
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert!(lines.contains(&"0::/".to_string()), "{lines:?}");
    assert!(lines.contains(&"cg=ro".to_string()), "{lines:?}");
    let entries: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("entry="))
        .collect();
    assert!(entries.contains(&"cgroup.procs"), "{lines:?}");
    assert!(
        !entries
            .iter()
            .any(|e| e.starts_with("kubepods") || e.starts_with("kltest")),
        "the node's tree shows: {entries:?}"
    );
}

const OOM_SCORES: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: besteffort, namespace: t}
spec:
  containers:
  - {name: c, image: busybox:1.36, command: ["sh", "-c", "echo oom=$(cat /proc/self/oom_score_adj); exec sleep 600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: burstable, namespace: t}
spec:
  containers:
  - name: c
    image: busybox:1.36
    command: ["sh", "-c", "echo oom=$(cat /proc/self/oom_score_adj); exec sleep 600"]
    resources: {requests: {memory: 1Gi}}
---
apiVersion: v1
kind: Pod
metadata: {name: guaranteed, namespace: t}
spec:
  containers:
  - name: c
    image: busybox:1.36
    command: ["sh", "-c", "echo oom=$(cat /proc/self/oom_score_adj); exec sleep 600"]
    resources: {limits: {memory: 64Mi, cpu: 100m}}
"#;

/// Containers start with kubelet's oom_score_adj for their QoS (BestEffort 1000,
/// Burstable from its memory request and the node's memory, Guaranteed -997 — or
/// kernlet's own where it may not lower scores), and exec'd commands share it.
#[test]
fn containers_get_kubelets_oom_score_for_their_qos() {
    let mut lab = Lab::new("oom").unwrap();
    let mut node = lab.add_node("o1").unwrap();
    import_busybox(&node);
    let m = manifests(&node, OOM_SCORES);
    start(&mut node, &m);
    let mem_total =
        kernlet::sys::machine::parse_mem_total(&std::fs::read_to_string("/proc/meminfo").unwrap())
            .unwrap() as i64;
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|m| u64::from_str_radix(m.trim(), 16).unwrap())
        .unwrap();
    let own: i32 = std::fs::read_to_string("/proc/self/oom_score_adj")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let guaranteed = if caps & (1 << 24) != 0 {
        -997
    } else {
        own.max(-997)
    };
    let burstable = 1000 - (1000 * (1i64 << 30) / mem_total) as i32;
    for (name, want) in [
        ("besteffort", 1000),
        ("burstable", burstable),
        ("guaranteed", guaranteed),
    ] {
        let p = wait_for(&node, name, Duration::from_secs(30), || {
            pod(&node, name).filter(|p| !log_lines(&node, p, "c", 0).is_empty())
        });
        assert_eq!(
            field(&log_lines(&node, &p, "c", 0), "oom="),
            want.to_string(),
            "{name}"
        );
        let out = Command::new(kernlet_bin().unwrap())
            .args(["exec", &format!("t/{name}"), "--state-dir"])
            .arg(node.dir("state"))
            .args(["--", "cat", "/proc/self/oom_score_adj"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            want.to_string(),
            "exec in {name}"
        );
    }
    if guaranteed != -997 {
        assert!(node.kernlet_log().contains("lacks CAP_SYS_RESOURCE"));
    }
}

/// Image garbage collection as kubelet's: over the high threshold (1 % here, so it
/// always is) unused images go, the one a container uses stays.
#[test]
fn unused_images_are_collected_and_used_ones_kept() {
    let mut lab = Lab::new("imggc").unwrap();
    let mut node = lab.add_node("g1").unwrap();
    import_busybox(&node);
    let layout = node.dir("unused-layout");
    kernlet_tests::oci::write_layout(
        &layout,
        "1",
        &[kernlet_tests::oci::RawTar::new()
            .file("hello", b"unused")
            .finish()],
        &["sh"],
    )
    .unwrap();
    node.import_layout(&layout, "example.com/unused:1").unwrap();
    let listed = |node: &SimNode| -> Vec<String> {
        let out = Command::new(kernlet_bin().unwrap())
            .args(["image", "ls", "-o", "json", "--image-dir"])
            .arg(node.dir("images"))
            .output()
            .unwrap();
        let v: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v.iter().map(|i| i.to_string()).collect()
    };
    assert_eq!(listed(&node).len(), 2);
    let m = manifests(
        &node,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: user, namespace: t}
spec:
  containers:
  - {name: c, image: busybox:1.36, command: [sleep, "600"]}
"#,
    );
    let md = m.display().to_string();
    node.start_kernlet(&[
        "run",
        "--standalone",
        "--manifests",
        &md,
        "--image-gc-high-threshold",
        "1",
        "--image-gc-low-threshold",
        "0",
        "--image-minimum-gc-age",
        "0s",
        // The first pass after the pod's container exists (it would be the pod's
        // image's first use, with no minimum age to protect it).
        "--image-gc-period-seconds",
        "3",
    ])
    .unwrap();
    let left = wait_for(
        &node,
        "the unused image collected",
        Duration::from_secs(30),
        || {
            let l = listed(&node);
            (l.len() == 1).then_some(l)
        },
    );
    assert!(left[0].contains("busybox"), "{left:?}");
    assert!(!left[0].contains("example.com/unused"), "{left:?}");
    assert!(node.kernlet_log().contains("image garbage-collected"));
    // The pod kept running on its image.
    let p = pod(&node, "user").unwrap();
    assert!(
        status(&p, "containerStatuses", "c")["state"]["running"].is_object(),
        "{p}"
    );
}

/// `--container-log-max-size` and `--container-log-max-files` bound a container's log
/// as kubelet's `containerLogMaxSize`/`containerLogMaxFiles` do.
#[test]
fn container_logs_rotate_within_the_configured_limits() {
    let mut lab = Lab::new("logrot").unwrap();
    let mut node = lab.add_node("l1").unwrap();
    import_busybox(&node);
    let m = manifests(
        &node,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: chatty, namespace: t}
spec:
  containers:
  - {name: c, image: busybox:1.36, command: ["sh", "-c", "i=0; while [ $i -lt 2000 ]; do echo line $i of a chatty container; i=$((i+1)); done; echo DONE; exec sleep 600"]}
"#,
    );
    let md = m.display().to_string();
    node.start_kernlet(&[
        "run",
        "--standalone",
        "--manifests",
        &md,
        "--container-log-max-size",
        "4Ki",
        "--container-log-max-files",
        "2",
    ])
    .unwrap();
    let p = wait_for(
        &node,
        "the chatty container done",
        Duration::from_secs(30),
        || {
            pod(&node, "chatty")
                .filter(|p| log_lines(&node, p, "c", 0).iter().any(|(_, l)| l == "DONE"))
        },
    );
    let dir = kernlet::runtime::logs::pod_dir(
        &node.dir("logs"),
        "t",
        "chatty",
        p["metadata"]["uid"].as_str().unwrap(),
    )
    .join("c");
    let files: Vec<(String, u64)> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    assert!(files.len() <= 2, "{files:?}");
    assert!(files.len() == 2, "rotated at least once: {files:?}");
    for (name, size) in &files {
        assert!(*size <= 4096 + 512, "{name} is {size} bytes");
    }
}

const MEMORY_VOLUMES: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: memvol, namespace: t}
spec:
  restartPolicy: Never
  volumes:
  - {name: mem, emptyDir: {medium: Memory, sizeLimit: 8Mi}}
  containers:
  - name: c
    image: busybox:1.36
    command: ["sh", "-c", "echo mem=$(df -k /mem | tail -1 | awk '{print $2}'); echo shm=$(df -k /dev/shm | tail -1 | awk '{print $2}'); dd if=/dev/zero of=/mem/f bs=1M count=16 2>&1 | grep -q 'No space' && echo full=yes"]
    volumeMounts: [{name: mem, mountPath: /mem}]
"#;

/// A memory-backed emptyDir and the pod's /dev/shm are tmpfs mounts of their own, of
/// their sizes (8Mi, 64Mi), even where the run directory is itself on a tmpfs (`/run`),
/// so a memory volume cannot outgrow its sizeLimit and goes with its pod.
#[test]
fn memory_volumes_and_shm_are_tmpfs_of_their_size() {
    let mut lab = Lab::new("memvol").unwrap();
    let mut node = lab.add_node("m1").unwrap();
    import_busybox(&node);
    // The run directory on a tmpfs, as /run is on most nodes (unmounted by the
    // SimNode's drop).
    std::fs::create_dir_all(node.dir("run")).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &node.dir("run"),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=256m"),
    )
    .unwrap();
    let m = manifests(&node, MEMORY_VOLUMES);
    start(&mut node, &m);
    let p = wait_for(&node, "memvol done", Duration::from_secs(30), || {
        pod(&node, "memvol").filter(|p| p["status"]["phase"] == "Succeeded")
    });
    let lines: Vec<String> = log_lines(&node, &p, "c", 0)
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert!(lines.contains(&"mem=8192".to_string()), "{lines:?}");
    assert!(lines.contains(&"shm=65536".to_string()), "{lines:?}");
    assert!(lines.contains(&"full=yes".to_string()), "{lines:?}");
}

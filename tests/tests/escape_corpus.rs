//! The escape corpus: attacks a tenant can make on the node from an image or a
//! container, each tried against a kernlet node (root, SimNode, standalone mode), each
//! counted. A container reports every attempt as `TRY <what>` in its log and every
//! success as `ESCAPED <what>`; the node side is checked by the test. The figure — "N
//! tried, 0 escaped" per class — is printed and must have no escape.
//!
//! Classes here: host devices through mknod (no device cgroup), masked and read-only
//! `/proc`/`/sys`, mounts, the node's files by any path (cwd, inherited descriptors —
//! CVE-2024-21626), `workingDir` at an inherited descriptor, subPath symlink swaps
//! during start (CVE-2017-1002101, CVE-2021-25741), overwriting the runtime binary
//! through `/proc/<pid>/exe` (CVE-2019-5736), setuid files of images reached by the
//! node's users. Hostile layers are in `images.rs`, secrets read by other users in
//! `sandbox_security.rs`, forged kubelet-API credentials in `kubelet_api.rs`; each
//! prints its figure the same way.

#![allow(
    clippy::unwrap_used,
    reason = "a test that cannot go on should stop loudly"
)]

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kernlet_tests::oci::ExtraFile;
use kernlet_tests::simnode::{Lab, SimNode, kernlet_bin};
use serde_json::Value;

/// One class of the corpus: what was tried, what got through.
struct Tally {
    class: &'static str,
    tried: usize,
    escaped: Vec<String>,
}

impl Tally {
    fn new(class: &'static str) -> Self {
        Self {
            class,
            tried: 0,
            escaped: Vec::new(),
        }
    }

    /// Counts the `TRY` and `ESCAPED` lines of a container's output.
    fn read_log(&mut self, lines: &[String]) {
        for l in lines {
            if l.starts_with("TRY ") {
                self.tried += 1;
            } else if let Some(what) = l.strip_prefix("ESCAPED ") {
                self.escaped.push(what.to_string());
            }
        }
    }

    /// Prints the figure and fails on any escape.
    fn report(&self) {
        println!(
            "escape corpus, {}: {} tried, {} escaped",
            self.class,
            self.tried,
            self.escaped.len()
        );
        assert!(
            self.escaped.is_empty(),
            "{}: escaped: {:#?}",
            self.class,
            self.escaped
        );
    }
}

fn manifests(node: &SimNode, yaml: &str) -> PathBuf {
    let dir = node.dir("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("pods.yaml"), yaml).unwrap();
    dir
}

fn pod(node: &SimNode, name: &str) -> Option<Value> {
    node.recorded_pod(name).unwrap()
}

/// Every line every run of a container wrote (all restarts).
fn all_lines(node: &SimNode, pod: &Value, container: &str) -> Vec<String> {
    let dir = kernlet::runtime::logs::pod_dir(
        &node.dir("logs"),
        pod["metadata"]["namespace"].as_str().unwrap(),
        pod["metadata"]["name"].as_str().unwrap(),
        pod["metadata"]["uid"].as_str().unwrap(),
    );
    let mut lines = Vec::new();
    for restart in 0..64 {
        let path = kernlet::runtime::logs::container_log(&dir, container, restart);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        lines.extend(
            text.lines()
                .filter_map(kernlet::runtime::logs::parse_line)
                .map(|r| r.text),
        );
    }
    lines
}

fn wait_until(node: &SimNode, what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < within,
            "timed out waiting for {what}\n{}",
            node.kernlet_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The files an image needs to run the node's (dynamically linked) kernlet binary: the
/// dynamic loader and the libraries `ldd` names, at their paths — what an attacker's
/// image would carry to run the runtime's binary inside the container.
fn kernlet_libraries() -> Vec<ExtraFile> {
    let out = Command::new("ldd")
        .arg(kernlet_bin().unwrap())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut files = Vec::new();
    for line in text.lines() {
        let path = match line.split("=>").nth(1) {
            Some(rest) => rest.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/')),
        };
        let Some(path) = path.filter(|p| p.starts_with('/')) else {
            continue;
        };
        let content = std::fs::read(path).unwrap();
        files.push(ExtraFile {
            path: path.to_string(),
            content,
            mode: 0o755,
        });
    }
    files
}

/// Builds and imports `escape:1`: busybox, a setuid-root copy of it, the node's dynamic
/// loader and kernlet's libraries, and `/evil`, a script whose interpreter is
/// `/proc/self/exe` — the runtime's own binary when the runtime is what execs it.
fn import_escape_image(node: &SimNode) {
    let work = node.dir("escape-image");
    std::fs::create_dir_all(&work).unwrap();
    let mut extra = kernlet_libraries();
    extra.push(ExtraFile {
        path: "/bin/busybox-suid".into(),
        content: std::fs::read("/bin/busybox").unwrap(),
        mode: 0o4755,
    });
    extra.push(ExtraFile {
        path: "/evil".into(),
        content: b"#!/proc/self/exe\n".to_vec(),
        mode: 0o755,
    });
    let layout =
        kernlet_tests::oci::busybox_layout_with(&work, "1", Path::new("/bin/busybox"), &extra)
            .unwrap();
    let out = Command::new(kernlet_bin().unwrap())
        .args(["image", "import"])
        .arg(&layout)
        .args(["--name", "escape", "--image-dir"])
        .arg(node.dir("images"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The attempts of an ordinary root container (containerd's default capabilities,
/// among them CAP_MKNOD): `$M` is the path of a file of the node.
const PROBES: &str = r#"
try() { echo "TRY $1"; }
bad() { echo "ESCAPED $1"; }
i=0
for d in /sys/dev/block/*; do
  [ $i -lt 24 ] || break; i=$((i+1))
  mm=${d##*/}
  try "block device $mm"
  rm -f /tmp/dev; mknod /tmp/dev b ${mm%%:*} ${mm##*:} 2>/dev/null
  head -c 1 /tmp/dev >/dev/null 2>&1 && bad "read the node's block device $mm"
  try "block device $mm in /dev"
  rm -f /dev/x; mknod /dev/x b ${mm%%:*} ${mm##*:} 2>/dev/null
  head -c 1 /dev/x >/dev/null 2>&1 && bad "read the node's block device $mm in /dev"
done
rm -f /tmp/dev /dev/x
for c in 1:1 1:2 1:4 1:11 4:1 7:0 10:229 10:237 10:232 13:63; do
  try "char device $c"
  rm -f /tmp/dev; mknod /tmp/dev c ${c%%:*} ${c##*:} 2>/dev/null
  (exec 3</tmp/dev) 2>/dev/null && bad "opened the node's char device $c"
done
rm -f /tmp/dev
for f in /proc/kcore /proc/keys /proc/timer_list /proc/sched_debug /proc/latency_stats /proc/timer_stats /proc/interrupts; do
  try "read $f"
  [ -e $f ] && [ "$(head -c 1 $f 2>/dev/null | wc -c)" -gt 0 ] && bad "read $f"
done
for d in /proc/acpi /proc/scsi /proc/asound /sys/firmware /sys/devices/virtual/powercap; do
  try "list $d"
  [ -n "$(ls -A $d 2>/dev/null)" ] && bad "listed $d"
done
for f in /proc/sys/kernel/core_pattern /proc/sys/kernel/modprobe /proc/sys/vm/drop_caches \
         /proc/sysrq-trigger /proc/sys/kernel/hostname /proc/sys/net/ipv4/ip_forward \
         /proc/irq/default_smp_affinity /sys/kernel/uevent_helper /sys/kernel/mm/transparent_hugepage/enabled \
         /sys/fs/cgroup/cgroup.procs /sys/fs/cgroup/cgroup.subtree_control /sys/fs/cgroup/cgroup.max.descendants; do
  try "open $f for writing"
  (: >>$f) 2>/dev/null && bad "opened $f for writing"
done
mkdir -p /tmp/m
for t in proc sysfs tmpfs cgroup2; do
  try "mount $t"
  mount -t $t none /tmp/m 2>/dev/null && { bad "mounted $t"; umount /tmp/m; }
done
try "unshare a mount namespace"
unshare -m true 2>/dev/null && bad "unshared a mount namespace"
try "mount --bind /"
mount --bind / /tmp/m 2>/dev/null && bad "bind-mounted /"
for p in "$M" "/proc/1/root$M" "/proc/self/root$M" "../../../../../../../..$M" \
         "/proc/self/cwd/../../../../../../..$M" "/sys/fs/cgroup/../../../../../..$M" \
         "/dev/../../../..$M" "/proc/1/cwd/../../../../../..$M"; do
  try "the node's file as $p"
  [ -e "$p" ] && bad "reached the node's file as $p"
done
for f in /proc/self/fd/* /proc/1/fd/*; do
  try "the node's file through $f"
  [ -e "$f/../../../../../../..$M" ] && bad "reached the node's file through $f"
done
echo DONE
"#;

/// Every container of the pods below (and the node itself) tried to get out; none did.
#[test]
fn containers_and_images_do_not_reach_the_node() {
    let mut lab = Lab::new("escape").unwrap();
    let mut node = lab.add_node("e1").unwrap();
    node.import_busybox().unwrap();
    import_escape_image(&node);
    // A file of the node no container may see.
    let marker = node.root().join("escape-marker");
    std::fs::write(&marker, "node\n").unwrap();
    let marker = marker.display().to_string();
    let probes_yaml = serde_json::to_string(PROBES).unwrap();
    let mut cwd_containers = String::new();
    for fd in 3..10 {
        cwd_containers.push_str(&format!(
            "  - {{name: fd{fd}, image: busybox:1.36, workingDir: /proc/self/fd/{fd}, env: [{{name: M, value: \"{marker}\"}}], command: [\"sh\", \"-c\", {probes_yaml}]}}\n"
        ));
    }
    let mut subpath_containers = String::new();
    for i in 0..8 {
        subpath_containers.push_str(&format!(
            "  - name: sub{i}\n    image: busybox:1.36\n    volumeMounts: [{{name: v, mountPath: /mnt, subPath: x}}]\n    command: [\"sh\", \"-c\", \"echo TRY subpath; [ -e /mnt{marker} ] && echo ESCAPED subpath shows the node; exit 1\"]\n"
        ));
    }
    let yaml = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: probes, namespace: t}}
spec:
  restartPolicy: Never
  containers:
  - {{name: root, image: busybox:1.36, env: [{{name: M, value: "{marker}"}}], command: ["sh", "-c", {probes_yaml}]}}
  - {{name: sleeper, image: busybox:1.36, env: [{{name: M, value: "{marker}"}}], command: ["sleep", "3600"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: cwd, namespace: t}}
spec:
  restartPolicy: Never
  containers:
{cwd_containers}---
apiVersion: v1
kind: Pod
metadata: {{name: subpath, namespace: t}}
spec:
  volumes: [{{name: v, emptyDir: {{}}}}]
  initContainers:
  - name: swapper
    image: busybox:1.36
    restartPolicy: Always
    volumeMounts: [{{name: v, mountPath: /v}}]
    command: ["sh", "-c", "end=$(( $(date +%s) + 90 )); while [ $(date +%s) -lt $end ]; do rm -rf /v/x; ln -s / /v/x; rm -f /v/x; ln -s ../../../../../../../.. /v/x; rm -f /v/x; mkdir /v/x; ln -sfn /proc/1/root /v/x 2>/dev/null; done; exec sleep 3600"]
  containers:
{subpath_containers}---
apiVersion: v1
kind: Pod
metadata: {{name: setuid, namespace: t}}
spec:
  restartPolicy: Never
  securityContext: {{runAsUser: 1000, runAsGroup: 1000}}
  containers:
  - name: c
    image: escape:1
    securityContext: {{allowPrivilegeEscalation: false}}
    command: ["sh", "-c", "echo TRY setuid without privilege escalation; [ \"$(/bin/busybox-suid sh -c 'id -u' 2>/dev/null)\" = 1000 ] || echo ESCAPED setuid; echo DONE"]
"#
    );
    let m = manifests(&node, &yaml).display().to_string();
    node.start_kernlet(&["run", "--standalone", "--manifests", &m])
        .unwrap();

    let mut runtime = Tally::new("containers");
    // The ordinary container's probes.
    wait_until(&node, "the probes done", Duration::from_secs(60), || {
        pod(&node, "probes").is_some_and(|p| {
            all_lines(&node, &p, "root").iter().any(|l| l == "DONE")
                && p["status"]["containerStatuses"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|c| c["state"]["running"].is_object()))
        })
    });
    let p = pod(&node, "probes").unwrap();
    runtime.read_log(&all_lines(&node, &p, "root"));
    // The same from a process `kernlet exec` starts (CVE-2024-21626 hit runc's exec).
    let out = Command::new(kernlet_bin().unwrap())
        .args(["exec", "t/probes", "-c", "sleeper", "--state-dir"])
        .arg(node.dir("state"))
        .args(["--", "sh", "-c", PROBES])
        .output()
        .unwrap();
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert!(lines.iter().any(|l| l == "DONE"), "{out:?}");
    runtime.read_log(&lines);
    // A recorded pid that names another process (the container gone, its pid reused):
    // exec refuses rather than run in that process's namespaces.
    let id = p["status"]["containerStatuses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "sleeper")
        .and_then(|c| c["containerID"].as_str())
        .unwrap()
        .trim_start_matches("kernlet://")
        .to_string();
    let state_file = node
        .dir("state")
        .join("containers")
        .join(&id)
        .join("state.json");
    let recorded = std::fs::read(&state_file).unwrap();
    let mut other = Command::new("sleep").arg("60").spawn().unwrap();
    let mut forged: Value = serde_json::from_slice(&recorded).unwrap();
    forged["pid"] = other.id().into();
    std::fs::write(&state_file, serde_json::to_vec(&forged).unwrap()).unwrap();
    let out = Command::new(kernlet_bin().unwrap())
        .args(["exec", "t/probes", "-c", "sleeper", "--state-dir"])
        .arg(node.dir("state"))
        .args([
            "--",
            "sh",
            "-c",
            "echo ESCAPED exec ran in the process a reused pid names",
        ])
        .output()
        .unwrap();
    std::fs::write(&state_file, &recorded).unwrap();
    let _ = other.kill();
    let _ = other.wait();
    runtime.tried += 1;
    let said = String::from_utf8_lossy(&out.stdout);
    if said.contains("ESCAPED") || out.status.success() {
        runtime
            .escaped
            .push(format!("exec through a reused pid: {said}"));
    }
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not its process"),
        "{out:?}"
    );
    // workingDir at a descriptor the runtime might leak: each container either is
    // refused or runs with nothing of the node's (its probes as above).
    wait_until(
        &node,
        "the cwd pod settled",
        Duration::from_secs(60),
        || {
            pod(&node, "cwd").is_some_and(|p| {
                p["status"]["containerStatuses"]
                    .as_array()
                    .is_some_and(|s| {
                        s.len() == 7
                            && s.iter().all(|c| {
                                c["state"]["terminated"].is_object()
                                    || c["state"]["waiting"]["reason"]
                                        .as_str()
                                        .is_some_and(|r| r.contains("Error"))
                            })
                    })
            })
        },
    );
    let p = pod(&node, "cwd").unwrap();
    for fd in 3..10 {
        runtime.tried += 1;
        runtime.read_log(&all_lines(&node, &p, &format!("fd{fd}")));
    }
    // setuid with allowPrivilegeEscalation false.
    wait_until(
        &node,
        "the setuid pod done",
        Duration::from_secs(60),
        || pod(&node, "setuid").is_some_and(|p| p["status"]["phase"] == "Succeeded"),
    );
    let p = pod(&node, "setuid").unwrap();
    let lines = all_lines(&node, &p, "c");
    assert!(lines.iter().any(|l| l == "DONE"), "{lines:?}");
    runtime.read_log(&lines);
    runtime.report();

    // The image store's setuid files are not the node users' to run.
    let mut store = Tally::new("image store");
    let layers = node.dir("images").join("layers");
    for e in std::fs::read_dir(&layers).unwrap().flatten() {
        let suid = e.path().join("bin/busybox-suid");
        for target in [suid.clone(), e.path()] {
            store.tried += 1;
            let out = Command::new("/bin/busybox")
                .args(["sh", "-c", "ls \"$1\" >/dev/null 2>&1", "sh"])
                .arg(&target)
                .uid(1000)
                .gid(1000)
                .output()
                .unwrap();
            if out.status.success() {
                store
                    .escaped
                    .push(format!("uid 1000 reaches {}", target.display()));
            }
        }
    }
    store.report();

    // subPath swaps: every start of every container counted, until each has started
    // at least twice while the swapper raced it.
    let mut swaps = Tally::new("subPath symlink swaps");
    wait_until(
        &node,
        "subPath containers restarted",
        Duration::from_secs(120),
        || {
            pod(&node, "subpath").is_some_and(|p| {
                (0..8).all(|i| {
                    all_lines(&node, &p, &format!("sub{i}"))
                        .iter()
                        .filter(|l| l.starts_with("TRY"))
                        .count()
                        >= 2
                })
            })
        },
    );
    let p = pod(&node, "subpath").unwrap();
    for i in 0..8 {
        swaps.read_log(&all_lines(&node, &p, &format!("sub{i}")));
    }
    swaps.report();
    node.stop_kernlet(Duration::from_secs(30)).unwrap();
}

/// CVE-2019-5736: a container makes the runtime exec its own binary inside the
/// container (`/evil`, interpreter `/proc/self/exe`) — as the container's command, an
/// exec probe, and `kernlet exec` — holds it there (the dynamic loader blocks opening
/// its debug output, a FIFO), opens `/proc/<pid>/exe`, kills it, and tries to open
/// the binary for writing. kernlet runs shims and exec helpers from a read-only mount
/// of its binary, so the open fails with EROFS, whoever else runs the binary.
#[test]
fn the_runtime_binary_cannot_be_overwritten_from_a_container() {
    let mut lab = Lab::new("exe").unwrap();
    let mut node = lab.add_node("x1").unwrap();
    node.import_busybox().unwrap();
    import_escape_image(&node);
    let attacker = r#"
for i in $(seq 1 2000); do set -- "$@" /shared/dbg.$i; done; mkfifo "$@"
touch /shared/ready
caught=0
end=$(( $(date +%s) + 100 ))
while [ $(date +%s) -lt $end ] && [ $caught -lt 3 ]; do
  for p in /proc/[0-9]*; do
    l=$(readlink $p/exe 2>/dev/null) || continue
    case "$l" in *kernlet*) ;; *) continue ;; esac
    pid=${p#/proc/}
    echo "TRY open the runtime binary of pid $pid for writing"
    if exec 3<$p/exe; then
      kill -9 $pid
      sleep 0.3
      if ( : >>/proc/self/fd/3 ) 2>/tmp/err; then echo "ESCAPED the runtime binary $l opened for writing";
      else echo "REFUSED $l: $(cat /tmp/err)"; fi
      exec 3<&-
    else
      kill -9 $pid
      echo "REFUSED no access"
    fi
    caught=$((caught+1))
  done
  sleep 0.05
done
echo DONE
exec sleep 3600
"#;
    let yaml = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: exe, namespace: t}}
spec:
  shareProcessNamespace: true
  volumes: [{{name: shared, emptyDir: {{}}}}]
  containers:
  - name: attacker
    image: escape:1
    env: [{{name: LD_DEBUG, value: libs}}, {{name: LD_DEBUG_OUTPUT, value: /shared/dbg}}]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
    command: ["sh", "-c", {attacker}]
    readinessProbe:
      exec: {{command: ["/evil"]}}
      initialDelaySeconds: 2
      periodSeconds: 3
      timeoutSeconds: 20
  - name: victim
    image: escape:1
    env: [{{name: LD_DEBUG, value: libs}}, {{name: LD_DEBUG_OUTPUT, value: /shared/dbg}}]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
    command: ["sh", "-c", "while [ ! -e /shared/ready ]; do sleep 0.1; done; exec /evil"]
"#,
        attacker = serde_json::to_string(attacker).unwrap()
    );
    let m = manifests(&node, &yaml).display().to_string();
    node.start_kernlet(&["run", "--standalone", "--manifests", &m])
        .unwrap();
    wait_until(&node, "the attacker ready", Duration::from_secs(60), || {
        pod(&node, "exe").is_some_and(|p| {
            all_lines(&node, &p, "attacker")
                .iter()
                .any(|l| l.starts_with("TRY"))
        })
    });
    // `kernlet exec` too (it blocks until the attacker kills what it started).
    let mut exec = Command::new(kernlet_bin().unwrap())
        .args(["exec", "t/exe", "-c", "attacker", "--state-dir"])
        .arg(node.dir("state"))
        .args(["--", "/evil"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let p = pod(&node, "exe").unwrap();
    wait_until(&node, "the attacker done", Duration::from_secs(120), || {
        all_lines(&node, &p, "attacker").iter().any(|l| l == "DONE")
    });
    let _ = exec.kill();
    let _ = exec.wait();
    let lines = all_lines(&node, &p, "attacker");
    let mut tally = Tally::new("/proc/<pid>/exe overwrite");
    tally.read_log(&lines);
    // The open failed; the binary it reached must also be on a read-only mount (the
    // attacker may have been refused only because the agent runs the same file — an
    // agent stopped for an upgrade would not refuse it).
    let refused: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("REFUSED "))
        .collect();
    for r in &refused {
        let path = r.split(':').next().unwrap();
        if !kernlet::sys::mount::read_only(Path::new(path)) {
            tally
                .escaped
                .push(format!("reached {path}, which is on a writable mount"));
        }
    }
    assert!(
        tally.tried >= 3 && refused.len() == tally.tried,
        "the attacker caught the runtime as command, probe and exec: {lines:?}"
    );
    tally.report();
    node.stop_kernlet(Duration::from_secs(30)).unwrap();
}

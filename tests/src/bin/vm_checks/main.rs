//! `kernlet-vm-checks`: runs inside the VM of `cargo xtask vm-test`, where cgroup v2
//! has the cpu, memory and pids controllers this host binds to v1. It starts kernlet in
//! standalone mode and checks that limits are written and enforced: memory.max
//! OOM-kills (reported OOMKilled, 137), pids.max stops forks, cpu.max throttles,
//! cgroup.kill empties a pod, pod-level resources limit the pod cgroup, a container sees
//! its own limits at /sys/fs/cgroup, a `hostUsers: false` pod runs as its mapped IDs
//! (or is refused on a kernel without idmapped tmpfs), AppArmor confines a container
//! to its Localhost profile and holds one whose profile is not loaded, a root container cannot open the kernel's log through mknod, a Guaranteed container
//! gets oom_score_adj -997, the QoS parents get kubelet's CPU weights, kubepods the node's allocatable,
//! and memory pressure evicts the right pod (`eviction.rs`). Prints
//! `KLTEST PASS|FAIL <name>` lines and `KLTEST DONE <passed> <failed>` for the runner
//! to parse from the serial console.

mod eviction;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

const CG: &str = "/sys/fs/cgroup/kernlet";
const STATE: &str = "/var/lib/kernlet";

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: limits, namespace: vm}
spec:
  # Never: the cgroup.kill check needs the pod cgroup to stay empty after
  # the kill instead of racing a restart of the container.
  restartPolicy: Never
  containers:
  - name: c
    image: busybox:1.36
    command: [sleep, "600"]
    resources:
      requests: {cpu: 100m, memory: 16Mi}
      limits: {cpu: 200m, memory: 48Mi}
---
apiVersion: v1
kind: Pod
metadata: {name: oom, namespace: vm}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: busybox:1.36
    command: [sh, -c, "tail /dev/zero"]
    resources:
      limits: {memory: 32Mi}
---
apiVersion: v1
kind: Pod
metadata: {name: pids, namespace: vm}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: busybox:1.36
    command: [sh, -c, "i=0; while [ $i -lt 60 ]; do sleep 600 & i=$((i+1)); echo started $i; done; echo all 60 started"]
---
apiVersion: v1
kind: Pod
metadata: {name: podlevel, namespace: vm}
spec:
  resources:
    requests: {cpu: 100m}
    limits: {cpu: 300m, memory: 40Mi}
  containers:
  - name: c
    image: busybox:1.36
    command: [sleep, "600"]
  - name: d
    image: busybox:1.36
    command: [sleep, "600"]
    resources:
      limits: {memory: 24Mi}
---
apiVersion: v1
kind: Pod
metadata: {name: cgview, namespace: vm}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: busybox:1.36
    command: [sh, -c, "echo mem=$(cat /sys/fs/cgroup/memory.max); echo cpu=$(cat /sys/fs/cgroup/cpu.max); echo oom=$(cat /proc/self/oom_score_adj)"]
    resources:
      limits: {cpu: 200m, memory: 48Mi}
---
apiVersion: v1
kind: Pod
metadata: {name: devices, namespace: vm}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: busybox:1.36
    command: [sh, -c, "for c in 1:11 4:1 10:237; do mknod /tmp/d$c c ${c%:*} ${c#*:} && echo made=$c; (exec 3</tmp/d$c) 2>/dev/null && echo opened=$c; done; mknod /tmp/null c 1 3; head -c 1 /dev/zero | wc -c | sed s/^/zero=/; echo x >/tmp/null && echo null=ok"]
---
apiVersion: v1
kind: Pod
metadata: {name: userns, namespace: vm}
spec:
  restartPolicy: Never
  hostUsers: false
  containers:
  - name: c
    image: busybox:1.36
    command: [sh, -c, "echo map=$(cat /proc/self/uid_map); echo uid=$(id -u); echo mem=$(cat /sys/fs/cgroup/memory.max); touch /etc/x && echo rootfs=ok; sleep 600"]
    resources:
      limits: {memory: 48Mi}
---
apiVersion: v1
kind: Pod
metadata: {name: apparmor, namespace: vm}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: busybox:1.36
    command: [sh, -c, "echo label=$(cat /proc/self/attr/current); echo x >/tmp/f && echo tmp=written || echo tmp=denied; echo x >/f && echo root=written"]
    securityContext:
      appArmorProfile: {type: Localhost, localhostProfile: kltest-no-tmp}
---
apiVersion: v1
kind: Pod
metadata: {name: apparmor-default, namespace: vm}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: busybox:1.36
    command: [sh, -c, "echo label=$(cat /proc/self/attr/current)"]
    securityContext:
      appArmorProfile: {type: RuntimeDefault}
      privileged: false
---
apiVersion: v1
kind: Pod
metadata: {name: apparmor-missing, namespace: vm}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: busybox:1.36
    command: [sleep, "600"]
    securityContext:
      appArmorProfile: {type: Localhost, localhostProfile: kltest-not-loaded}
---
apiVersion: v1
kind: Pod
metadata: {name: cpu, namespace: vm}
spec:
  containers:
  - name: c
    image: busybox:1.36
    command: [sh, -c, "while :; do :; done"]
    resources:
      limits: {cpu: 100m}
"#;

fn pod(name: &str) -> Option<Value> {
    for e in std::fs::read_dir(Path::new(STATE).join("pods"))
        .ok()?
        .flatten()
    {
        let Ok(bytes) = std::fs::read(e.path().join("pod.json")) else {
            continue;
        };
        let Ok(p) = serde_json::from_slice::<Value>(&bytes) else {
            continue;
        };
        if p["metadata"]["name"] == name {
            return Some(p);
        }
    }
    None
}

fn container_id(p: &Value) -> Option<String> {
    p["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .map(|s| s.trim_start_matches("kernlet://").to_string())
}

fn terminated(name: &str) -> Option<Value> {
    pod(name).filter(|p| p["status"]["containerStatuses"][0]["state"]["terminated"].is_object())
}

fn running(name: &str) -> Option<Value> {
    pod(name).filter(|p| p["status"]["containerStatuses"][0]["state"]["running"].is_object())
}

/// The pod cgroup and the container cgroup of a pod's first container.
fn cgroups(p: &Value) -> Option<(PathBuf, PathBuf)> {
    let uid = p["metadata"]["uid"].as_str()?;
    let qos = p["status"]["qosClass"].as_str()?;
    let pod = match qos {
        "Guaranteed" => format!("{CG}/kubepods/pod{uid}"),
        "Burstable" => format!("{CG}/kubepods/burstable/pod{uid}"),
        _ => format!("{CG}/kubepods/besteffort/pod{uid}"),
    };
    let pod = PathBuf::from(pod);
    let c = pod.join(container_id(p)?);
    Some((pod, c))
}

fn wait<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    while start.elapsed() < within {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("<{}: {e}>", p.display()))
}

fn stat(p: &Path, key: &str) -> u64 {
    read(p)
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

type Check = fn() -> Result<(), String>;

fn limits_are_written() -> Result<(), String> {
    let p = wait(Duration::from_secs(120), || running("limits")).ok_or("pod limits never ran")?;
    let (pod, c) = cgroups(&p).ok_or("no cgroup paths")?;
    let mem = read(&c.join("memory.max"));
    let cpu = read(&c.join("cpu.max"));
    let weight = read(&c.join("cpu.weight"));
    let pids = read(&pod.join("pids.max"));
    // The pod cgroup: the sum of its containers' limits (one container here).
    let pod_mem = read(&pod.join("memory.max"));
    let pod_cpu = read(&pod.join("cpu.max"));
    let pod_weight = read(&pod.join("cpu.weight"));
    if pod_mem != "50331648" || pod_cpu != "20000 100000" || pod_weight != "17" {
        return Err(format!(
            "pod memory.max {pod_mem}, cpu.max {pod_cpu}, cpu.weight {pod_weight}"
        ));
    }
    // requests.cpu 100m → 102 shares (kubelet), which the runtime turns into cpu.weight
    // 17 with runc ≥ 1.3's (and libcontainer's) conversion.
    if mem != "50331648" || cpu != "20000 100000" || weight != "17" || pids != "30" {
        return Err(format!(
            "memory.max {mem}, cpu.max {cpu}, cpu.weight {weight}, pod pids.max {pids}"
        ));
    }
    // --memory-qos: memory.high = floor((16Mi + 0.9 × 32Mi) / 4096) × 4096; no swap
    // (NoSwap) where the kernel accounts swap.
    let high = read(&c.join("memory.high"));
    let swap = c.join("memory.swap.max");
    let swap = swap.exists().then(|| read(&swap));
    if high != "46972928" || swap.as_deref().is_some_and(|s| s != "0") {
        return Err(format!("memory.high {high}, memory.swap.max {swap:?}"));
    }
    // TieredReservation: the Burstable request protected by memory.low on the
    // container and the pod; the QoS parents cover the sums of the requests below them
    // (kubepods' memory.min the Guaranteed and Burstable ones).
    let number = |p: &Path| read(p).parse::<u64>().unwrap_or(0);
    let (c_low, pod_low, pod_min) = (
        read(&c.join("memory.low")),
        read(&pod.join("memory.low")),
        read(&pod.join("memory.min")),
    );
    let parent_low = number(&Path::new(CG).join("kubepods/burstable/memory.low"));
    let root_min = number(&Path::new(CG).join("kubepods/memory.min"));
    if c_low != "16777216"
        || pod_low != "16777216"
        || pod_min != "0"
        || parent_low < 16 << 20
        || root_min < parent_low
    {
        return Err(format!(
            "memory.low container {c_low}, pod {pod_low} (memory.min {pod_min}), burstable {parent_low}, kubepods memory.min {root_min}"
        ));
    }
    Ok(())
}

/// Pod-level resources: the pod cgroup has the pod's own limits and CPU weight, in the
/// Burstable parent; a container keeps its own limit below them.
fn pod_level_limits() -> Result<(), String> {
    let p =
        wait(Duration::from_secs(120), || running("podlevel")).ok_or("pod podlevel never ran")?;
    let (pod, _) = cgroups(&p).ok_or("no cgroup paths")?;
    let (mem, cpu, weight) = (
        read(&pod.join("memory.max")),
        read(&pod.join("cpu.max")),
        read(&pod.join("cpu.weight")),
    );
    if mem != "41943040" || cpu != "30000 100000" || weight != "17" {
        return Err(format!(
            "pod memory.max {mem}, cpu.max {cpu}, cpu.weight {weight}"
        ));
    }
    if !pod.display().to_string().contains("/burstable/") {
        return Err(format!(
            "pod cgroup {} is not under burstable",
            pod.display()
        ));
    }
    Ok(())
}

/// An in-place resize as the pod manager actuates it: the running container's cgroup
/// gets the new cpu.max, cpu.weight and memory.max, its process untouched.
fn resized_in_place() -> Result<(), String> {
    let p = wait(Duration::from_secs(120), || running("limits")).ok_or("pod limits never ran")?;
    let (_, c) = cgroups(&p).ok_or("no cgroup paths")?;
    let id = container_id(&p).ok_or("no container id")?;
    let before = read(&c.join("cgroup.procs"));
    let rt = kernlet::runtime::Runtime::open(kernlet::runtime::RuntimeConfig {
        state_dir: STATE.into(),
        run_dir: "/run/kernlet".into(),
        log_dir: "/var/log/pods".into(),
        image_dir: "/images".into(),
        cgroup_root: "kernlet".into(),
        exe: "/bin/kernlet".into(),
        rotation: Default::default(),
        registries: Default::default(),
        pod_pids_limit: Some(30),
        seccomp_default: false,
        dns: Default::default(),
        resolv_conf: "/etc/resolv.conf".into(),
        node_allocatable: None,
        memory_policy: kernlet::model::memory_qos::MemoryPolicy {
            qos: true,
            ..Default::default()
        },
        userns_pool: None,
    })
    .map_err(|e| format!("opening the runtime: {e}"))?;
    let resources = serde_json::from_value(serde_json::json!({
        "requests": {"cpu": "300m", "memory": "16Mi"},
        "limits": {"cpu": "400m", "memory": "96Mi"},
    }))
    .map_err(|e| e.to_string())?;
    let pod: k8s_openapi::api::core::v1::Pod =
        serde_json::from_value(p.clone()).map_err(|e| e.to_string())?;
    let unenforced = rt
        .update_resources(&pod, &id, &resources)
        .map_err(|e| format!("resizing: {e}"))?;
    let (mem, cpu, weight) = (
        read(&c.join("memory.max")),
        read(&c.join("cpu.max")),
        read(&c.join("cpu.weight")),
    );
    let after = read(&c.join("cgroup.procs"));
    if unenforced.is_empty()
        && mem == "100663296"
        && cpu == "40000 100000"
        && weight == "12"
        // memory.high follows: 16Mi + 0.9 × 80Mi.
        && read(&c.join("memory.high")) == "92274688"
        && after == before
        && !before.is_empty()
    {
        Ok(())
    } else {
        Err(format!(
            "memory.max {mem}, cpu.max {cpu}, cpu.weight {weight}, memory.high {}, procs {before:?} -> {after:?}, unenforced {unenforced:?}",
            read(&c.join("memory.high"))
        ))
    }
}

/// A container sees its own limits at /sys/fs/cgroup (its cgroup namespace's root),
/// as a JVM or Go runtime reads them.
/// The log of the first run of container `c` of pod `vm/<pod>`.
fn first_log(pod: &str) -> Result<String, String> {
    let logs = std::fs::read_dir("/var/log/pods")
        .map_err(|e| format!("/var/log/pods: {e}"))?
        .flatten()
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("vm_{pod}_"))
        })
        .ok_or_else(|| format!("no log directory of {pod}"))?;
    Ok(read(&logs.path().join("c/0.log")))
}

fn cgroupfs_in_the_container() -> Result<(), String> {
    wait(Duration::from_secs(120), || terminated("cgview")).ok_or("pod cgview never ended")?;
    let log = first_log("cgview")?;
    if log.contains("mem=50331648") && log.contains("cpu=20000 100000") {
        Ok(())
    } else {
        Err(format!("the container saw: {log:?}"))
    }
}

/// A root container makes nodes of the kernel's log, a console and loop-control
/// (mknod is allowed) but cannot open them; /dev/zero and a null device it made
/// itself work.
fn devices_are_limited() -> Result<(), String> {
    wait(Duration::from_secs(120), || terminated("devices")).ok_or("pod devices never ended")?;
    let log = first_log("devices")?;
    if log.contains("made=1:11")
        && !log.contains("opened=")
        && log.contains("zero=1")
        && log.contains("null=ok")
    {
        Ok(())
    } else {
        Err(format!("the container saw: {log:?}"))
    }
}

/// The AppArmor profile the `apparmor` pod runs under: everything allowed but writing
/// below /tmp.
const NO_TMP_PROFILE: &str = "profile kltest-no-tmp flags=(attach_disconnected,mediate_deleted) {
  file,
  capability,
  network,
  mount,
  umount,
  pivot_root,
  ptrace,
  signal,
  unix,
  deny /tmp/** w,
}
";

/// Loads [`NO_TMP_PROFILE`] into the kernel (before kernlet starts the pods).
fn load_profile() -> Result<(), String> {
    std::fs::write("/m-profile", NO_TMP_PROFILE).map_err(|e| e.to_string())?;
    let out = Command::new("/bin/apparmor_parser")
        .args(["-r", "/m-profile"])
        .output()
        .map_err(|e| format!("apparmor_parser: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "apparmor_parser: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// AppArmor on a kernel that has it: a container with a loaded `Localhost` profile
/// runs confined by it (its label, a write the profile denies fails, others pass); one
/// asking for `RuntimeDefault` runs under the `kernlet-default` profile kernlet loaded
/// at start; a
/// container whose profile is not loaded is not started (CreateContainerError naming
/// the profile), never run unconfined.
fn apparmor_confines() -> Result<(), String> {
    if !std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.starts_with('Y'))
    {
        return Err("AppArmor is not enabled in the VM's kernel".into());
    }
    wait(Duration::from_secs(120), || terminated("apparmor")).ok_or("pod apparmor never ended")?;
    let log = first_log("apparmor")?;
    let seen = [
        "label=kltest-no-tmp (enforce)",
        "tmp=denied",
        "root=written",
    ];
    if let Some(missing) = seen.iter().find(|s| !log.contains(*s)) {
        return Err(format!("the container did not see {missing}: {log:?}"));
    }
    // RuntimeDefault: kernlet loaded its own profile at start.
    wait(Duration::from_secs(120), || terminated("apparmor-default"))
        .ok_or("pod apparmor-default never ended")?;
    let log = first_log("apparmor-default")?;
    if !log.contains("label=kernlet-default (enforce)") {
        return Err(format!("RuntimeDefault: the container saw {log:?}"));
    }
    let missing = wait(Duration::from_secs(60), || {
        pod("apparmor-missing").filter(|p| {
            p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                == "CreateContainerError"
        })
    })
    .ok_or("pod apparmor-missing was not held in CreateContainerError")?;
    let message = missing["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if message.contains("kltest-not-loaded") && first_log("apparmor-missing").is_err() {
        Ok(())
    } else {
        Err(format!("apparmor-missing: {message:?}, or it ran"))
    }
}

/// `(major, minor)` of the running kernel.
fn kernel_version() -> (u32, u32) {
    kernlet::sys::machine::kernel_version(&read(Path::new("/proc/sys/kernel/osrelease")))
        .unwrap_or((0, 0))
}

/// `hostUsers: false`. With idmapped tmpfs mounts (Linux 6.3): the container's root
/// is the pod's first mapped ID (65536) on the node, and sees its own `memory.max`
/// through its cgroup namespace. On an older kernel (the Debian 6.1 of this VM): the
/// pod is refused as kubelet refuses it on a runtime without user namespaces, and
/// nothing of it runs in the node's user namespace.
fn user_namespaced_pod() -> Result<(), String> {
    if kernel_version() < (6, 3) {
        let p = wait(Duration::from_secs(120), || {
            pod("userns").filter(|p| p["status"]["phase"] == "Failed")
        })
        .ok_or("pod userns was not refused")?;
        let (reason, message) = (&p["status"]["reason"], &p["status"]["message"]);
        let refused = reason == "UnsupportedFeature"
            && message
                .as_str()
                .is_some_and(|m| m.contains("does not support user namespaces"));
        if !refused || first_log("userns").is_ok() {
            return Err(format!("refused as {reason} {message}, or it ran"));
        }
        return Ok(());
    }
    wait(Duration::from_secs(120), || running("userns")).ok_or("pod userns never ran")?;
    let log = wait(Duration::from_secs(30), || {
        first_log("userns").ok().filter(|l| l.contains("rootfs="))
    })
    .ok_or("pod userns wrote no report")?;
    let seen = ["map=0 65536 65536", "uid=0", "mem=50331648", "rootfs=ok"];
    if let Some(missing) = seen.iter().find(|s| !log.contains(*s)) {
        return Err(format!("the container did not see {missing}: {log:?}"));
    }
    let on_node = std::fs::read_dir("/proc")
        .map_err(|e| e.to_string())?
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter(|s| {
            s.lines()
                .any(|l| l.starts_with("Name:") && l.contains("sleep"))
        })
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|u| u.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .any(|uids| uids == "65536 65536 65536 65536");
    if on_node {
        Ok(())
    } else {
        Err("no sleep of the pod runs as node ID 65536".into())
    }
}

/// As root with every capability, a Guaranteed container gets kubelet's -997.
fn guaranteed_oom_score() -> Result<(), String> {
    wait(Duration::from_secs(120), || terminated("cgview")).ok_or("pod cgview never ended")?;
    let log = first_log("cgview")?;
    if log.contains("oom=-997") {
        Ok(())
    } else {
        Err(format!("the container saw: {log:?}"))
    }
}

/// The QoS parents' weights as kubelet keeps them: BestEffort the least, Burstable
/// the weight of its pods' summed CPU requests (not the default 100).
fn qos_parent_weights() -> Result<(), String> {
    wait(Duration::from_secs(60), || running("limits")).ok_or("pod limits never ran")?;
    let mut requests = Vec::new();
    for e in std::fs::read_dir(Path::new(STATE).join("pods"))
        .map_err(|e| e.to_string())?
        .flatten()
    {
        let Ok(bytes) = std::fs::read(e.path().join("sandbox.json")) else {
            continue;
        };
        let sb: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        if sb["qos"] == "Burstable" {
            requests.push(sb["cpuRequestMilli"].as_u64().unwrap_or(0));
        }
    }
    let (besteffort, burstable) = kernlet::runtime::qos_cgroups::parent_weights(requests.clone());
    let got = (
        read(&Path::new(CG).join("kubepods/besteffort/cpu.weight")),
        read(&Path::new(CG).join("kubepods/burstable/cpu.weight")),
    );
    if got.0.trim() == besteffort.to_string()
        && got.1.trim() == burstable.to_string()
        && burstable != 100
    {
        Ok(())
    } else {
        Err(format!(
            "besteffort {:?} burstable {:?}, wanted {besteffort} {burstable} for requests {requests:?}",
            got.0, got.1
        ))
    }
}

/// `kubepods` is limited to the node's allocatable (no reservations here: all of its
/// memory, page-rounded as the kernel stores it) and weighted by its CPUs.
fn kubepods_allocatable() -> Result<(), String> {
    let mem_total = kernlet::sys::machine::parse_mem_total(&read(Path::new("/proc/meminfo")))
        .ok_or("no MemTotal")?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let want_memory = mem_total / 4096 * 4096;
    let want_weight = kernlet::runtime::sandbox::shares_to_weight(
        kernlet::runtime::container::cpu_shares(cpus * 1000),
    );
    let memory = read(&Path::new(CG).join("kubepods/memory.max"));
    let weight = read(&Path::new(CG).join("kubepods/cpu.weight"));
    if memory.trim() == want_memory.to_string() && weight.trim() == want_weight.to_string() {
        Ok(())
    } else {
        Err(format!(
            "memory.max {memory:?} cpu.weight {weight:?}, wanted {want_memory} {want_weight}"
        ))
    }
}

fn memory_max_oom_kills() -> Result<(), String> {
    let p = wait(Duration::from_secs(120), || terminated("oom")).ok_or("pod oom never ended")?;
    let t = &p["status"]["containerStatuses"][0]["state"]["terminated"];
    if t["reason"] != "OOMKilled" || t["exitCode"] != 137 {
        return Err(format!("terminated as {t}"));
    }
    Ok(())
}

fn pids_max_stops_forks() -> Result<(), String> {
    // The shell starts sleeps until a fork fails (ash then exits): the pod's 30 pids
    // are the sandbox's processes, the shell and the sleeps.
    let p = wait(Duration::from_secs(120), || terminated("pids")).ok_or("pod pids never ended")?;
    let log_dir = Path::new("/var/log/pods").join(format!(
        "vm_pids_{}",
        p["metadata"]["uid"].as_str().unwrap_or("")
    ));
    let log = read(&log_dir.join("c/0.log"));
    let started = log
        .lines()
        .filter_map(|l| {
            l.split("started ")
                .nth(1)
                .and_then(|n| n.trim().parse::<u32>().ok())
        })
        .max()
        .unwrap_or(0);
    if log.contains("all 60 started") || !log.contains("can't fork") || started >= 30 {
        return Err(format!("{started} processes started; log:\n{log}"));
    }
    println!("KLTEST INFO pids: fork refused after {started} sleeps");
    Ok(())
}

fn cpu_max_throttles() -> Result<(), String> {
    let p = wait(Duration::from_secs(120), || running("cpu")).ok_or("pod cpu never ran")?;
    let (_, c) = cgroups(&p).ok_or("no cgroup paths")?;
    std::thread::sleep(Duration::from_secs(1));
    let before = stat(&c.join("cpu.stat"), "usage_usec ");
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let used = stat(&c.join("cpu.stat"), "usage_usec ") - before;
    let wall = start.elapsed().as_micros() as u64;
    let share = used as f64 / wall as f64;
    println!(
        "KLTEST INFO cpu: {:.1} % of one CPU with a 100m limit",
        share * 100.0
    );
    if share > 0.2 || used == 0 {
        return Err(format!("used {used} µs of CPU in {wall} µs"));
    }
    if stat(&c.join("cpu.stat"), "nr_throttled ") == 0 {
        return Err("never throttled".into());
    }
    Ok(())
}

fn cgroup_kill_empties_the_pod() -> Result<(), String> {
    let p = running("limits").ok_or("pod limits is not running")?;
    let (pod, _) = cgroups(&p).ok_or("no cgroup paths")?;
    std::fs::write(pod.join("cgroup.kill"), "1").map_err(|e| e.to_string())?;
    wait(Duration::from_secs(10), || {
        read(&pod.join("cgroup.events"))
            .contains("populated 0")
            .then_some(())
    })
    .ok_or_else(|| format!("still populated: {}", read(&pod.join("cgroup.events"))))?;
    // kernlet sees the container killed by signal 9.
    wait(Duration::from_secs(30), || {
        pod_killed("limits").then_some(())
    })
    .ok_or("the kill is not in the pod status")?;
    Ok(())
}

fn pod_killed(name: &str) -> bool {
    pod(name).is_some_and(|p| {
        let s = &p["status"]["containerStatuses"][0];
        s["state"]["terminated"]["exitCode"] == 137
            || s["lastState"]["terminated"]["exitCode"] == 137
    })
}

fn main() {
    let controllers = read(Path::new("/sys/fs/cgroup/cgroup.controllers"));
    println!("KLTEST INFO cgroup2 controllers: {controllers}");
    let _ = std::fs::create_dir_all("/m");
    let _ = std::fs::write("/m/pods.yaml", PODS);
    if let Err(e) = load_profile() {
        println!("KLTEST INFO loading the AppArmor profile: {e}");
    }
    let log = std::fs::File::create("/var/log/kernlet.log").ok();
    let mut cmd = Command::new("/bin/kernlet");
    cmd.args([
        "run",
        "--standalone",
        "--manifests",
        "/m",
        "--state-dir",
        STATE,
        "--run-dir",
        "/run/kernlet",
        "--log-dir",
        "/var/log/pods",
        "--image-dir",
        "/images",
        "--cgroup-root",
        "kernlet",
        "--bpffs-dir",
        "/sys/fs/bpf/kernlet",
        "--node-ip",
        "127.0.0.1",
        "--pod-max-pids",
        "30",
        "--memory-qos",
        "--memory-reservation-policy",
        "TieredReservation",
    ]);
    if let Some(l) = log {
        if let Ok(l2) = l.try_clone() {
            cmd.stdout(l2);
        }
        cmd.stderr(l);
    }
    let mut kernlet = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            println!("KLTEST FAIL start: {e}");
            println!("KLTEST DONE 0 1");
            return;
        }
    };
    let checks: [(&str, Check); 15] = [
        ("limits-written", limits_are_written),
        ("kubepods-allocatable", kubepods_allocatable),
        ("qos-parent-weights", qos_parent_weights),
        ("guaranteed-oom-score", guaranteed_oom_score),
        ("devices-limited", devices_are_limited),
        ("pod-level-limits", pod_level_limits),
        ("resized-in-place", resized_in_place),
        ("cgroupfs-in-container", cgroupfs_in_the_container),
        ("user-namespaced-pod", user_namespaced_pod),
        ("apparmor-confines", apparmor_confines),
        ("memory-max-oom-killed", memory_max_oom_kills),
        ("pids-max-enforced", pids_max_stops_forks),
        ("cpu-max-throttles", cpu_max_throttles),
        ("cgroup-kill-empties-pod", cgroup_kill_empties_the_pod),
        (
            "memory-pressure-evicts",
            eviction::memory_pressure_evicts_the_besteffort_hog,
        ),
    ];
    let (mut pass, mut fail) = (0, 0);
    for (name, check) in checks {
        match check() {
            Ok(()) => {
                pass += 1;
                println!("KLTEST PASS {name}");
            }
            Err(why) => {
                fail += 1;
                println!("KLTEST FAIL {name}: {why}");
            }
        }
    }
    if fail > 0 {
        for line in read(Path::new("/var/log/kernlet.log"))
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            println!("KLTEST LOG {line}");
        }
    }
    let _ = kernlet.kill();
    println!("KLTEST DONE {pass} {fail}");
}

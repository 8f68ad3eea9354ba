//! A container's OCI runtime spec (`config.json`), as containerd's CRI plugin would
//! write it for the same Pod: default capabilities, masked and read-only paths, the
//! standard /proc, /dev, /sys mounts, the pod's namespaces joined by path.

use std::path::PathBuf;

use serde_json::{Value, json};

/// containerd's default capability set for containers.
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The PATH of containers whose image sets none (containerd's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Every capability (for privileged containers), as of Linux 6.x.
pub const ALL_CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Paths containerd masks in unprivileged containers.
pub const MASKED_PATHS: [&str; 12] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/interrupts",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths containerd makes read-only in unprivileged containers.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// A file or directory of the host shown in the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub destination: String,
    pub readonly: bool,
    /// `mountPropagation: HostToContainer`: mounts the node makes below the source
    /// later show in the container (`rslave`); otherwise none do (`rprivate`).
    pub host_to_container: bool,
    /// `mountPropagation: Bidirectional`: also the container's mounts below it reach
    /// the node (`rshared`; the source is a shared mount kept in the node's peer group).
    pub bidirectional: bool,
}

/// Where a namespace of the container comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ns {
    /// A new one for this container.
    New,
    /// The node's (hostNetwork, hostIPC, hostPID).
    Host,
    /// A pinned one, joined by path (the pod's).
    Path(PathBuf),
}

/// What the spec is generated from (resolved from the Pod and the image by the
/// runtime).
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerPlan {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub net: Ns,
    pub ipc: Ns,
    pub uts: Ns,
    pub pid: Ns,
    /// cgroup path below the cgroup root libcontainer sees as /sys/fs/cgroup.
    pub cgroups_path: String,
    /// The pod's shared memory directory, shown as /dev/shm.
    pub shm: PathBuf,
    pub mounts: Vec<BindMount>,
    /// A volume over `/dev` and whether read-only: mounted by a createContainer hook
    /// once the runtime made the container's own `/dev` (see `sys::mount::dev_volume`).
    pub dev_volume: Option<(PathBuf, bool)>,
    pub privileged: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub no_new_privileges: bool,
    pub read_only_root: bool,
    /// `linux.resources` to apply, only those the cgroup can enforce.
    pub resources: Option<Value>,
    /// The seccomp profile to load.
    pub seccomp: Seccomp,
    /// The AppArmor profile to run under (`process.apparmorProfile`), on a node with
    /// AppArmor.
    pub apparmor: Option<String>,
    /// Devices to create in the container: the host's (privileged containers) and the
    /// block volumes of its `volumeDevices`.
    pub devices: Vec<Value>,
    /// The capabilities kernlet itself has (its bounding set, as a mask).
    pub host_caps: u64,
    /// The pod's `securityContext.sysctls` (admission let only safe ones in).
    pub sysctls: Vec<(String, String)>,
    /// `tty: true`: the process gets a terminal (the runtime hands its master to the
    /// shim through the console socket).
    pub terminal: bool,
    /// `process.oomScoreAdj` (`model::oom`), when set.
    pub oom_score_adj: Option<i32>,
    /// `hostUsers: false`: the pod's user namespace, joined by its pin.
    pub userns: Option<PathBuf>,
}

/// A container's seccomp profile (`securityContext.seccompProfile`).
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Seccomp {
    #[default]
    Unconfined,
    RuntimeDefault,
    /// A profile file from the node (`Localhost`), converted to `linux.seccomp`
    /// (see [`crate::model::seccomp::localhost`]).
    Localhost(Value),
}

/// `CAP_X` from a Kubernetes capability name (`NET_ADMIN`, `net_admin`, `CAP_NET_ADMIN`).
pub fn cap_name(k8s: &str) -> String {
    let up = k8s.to_ascii_uppercase();
    if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    }
}

/// The capabilities whose bits are set in a capability mask (`CapBnd` of
/// /proc/<pid>/status).
pub fn caps_in_mask(mask: u64) -> Vec<String> {
    ALL_CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1u64 << bit) != 0)
        .map(|(_, c)| c.to_string())
        .collect()
}

/// The capability sets `(bounding, effective/permitted)` for a plan. A privileged
/// container gets every capability kernlet itself has (containerd's "all current
/// capabilities"), and no container can be given one kernlet lacks.
pub fn capabilities(plan: &ContainerPlan) -> (Vec<String>, Vec<String>) {
    let host = caps_in_mask(plan.host_caps);
    let mut set: Vec<String> = if plan.privileged {
        host.clone()
    } else {
        DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect()
    };
    if !plan.privileged {
        let drop_all = plan.cap_drop.iter().any(|d| d.eq_ignore_ascii_case("ALL"));
        if drop_all {
            set.clear();
        } else {
            let drop: Vec<String> = plan.cap_drop.iter().map(|c| cap_name(c)).collect();
            set.retain(|c| !drop.contains(c));
        }
        if plan.cap_add.iter().any(|a| a.eq_ignore_ascii_case("ALL")) {
            set = ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect();
        } else {
            for a in &plan.cap_add {
                let c = cap_name(a);
                if !set.contains(&c) {
                    set.push(c);
                }
            }
        }
    }
    set.retain(|c| host.contains(c));
    // A non-root process starts with empty effective and permitted sets (as in
    // containerd 2): it has to gain capabilities through file capabilities.
    let active = if plan.uid == 0 {
        set.clone()
    } else {
        Vec::new()
    };
    (set, active)
}

/// The `config.json` for a plan.
pub fn spec(plan: &ContainerPlan) -> Value {
    let (bounding, active) = capabilities(plan);
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if plan.privileged { "rw" } else { "ro" }]}),
        // The container's own cgroup (its cgroup namespace's root), read-only unless
        // privileged, as containerd mounts it: runtimes that size themselves from
        // cgroups (the JVM, Go, .NET) see their limits, not the node's.
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", if plan.privileged { "rw" } else { "ro" }]}),
    ];
    // The pod's /dev/shm (a tmpfs the sandbox owns, or the node's with hostIPC), shared
    // by its containers as containerd does.
    mounts.push(json!({"destination": "/dev/shm", "type": "bind", "source": plan.shm, "options": ["rbind", "rprivate", "nosuid", "noexec", "nodev"]}));
    for m in &plan.mounts {
        let mut options = vec![
            "rbind",
            if m.bidirectional {
                "rshared"
            } else if m.host_to_container {
                "rslave"
            } else {
                "rprivate"
            },
        ];
        options.push(if m.readonly { "ro" } else { "rw" });
        mounts.push(json!({"destination": m.destination, "type": "bind", "source": m.source, "options": options}));
    }
    let mut namespaces = Vec::new();
    // The pod's user namespace first: the others belong to it.
    if let Some(pin) = &plan.userns {
        namespaces.push(json!({"type": "user", "path": pin}));
    }
    for (kind, ns) in [
        ("pid", &plan.pid),
        ("network", &plan.net),
        ("ipc", &plan.ipc),
        ("uts", &plan.uts),
    ] {
        match ns {
            Ns::New => namespaces.push(json!({"type": kind})),
            Ns::Host => {}
            Ns::Path(p) => namespaces.push(json!({"type": kind, "path": p})),
        }
    }
    namespaces.push(json!({"type": "mount"}));
    // A private cgroup namespace (containerd's default on cgroup v2).
    namespaces.push(json!({"type": "cgroup"}));
    // The runtime (libcontainer) takes propagation from the container's root, not from
    // each mount's options: a container with a Bidirectional volume shares its mounts
    // (containerd's rshared root), one with a HostToContainer volume receives the
    // node's mounts below its volumes (slave), any other receives none (private).
    let propagation = if plan.mounts.iter().any(|m| m.bidirectional) {
        "shared"
    } else if plan.mounts.iter().any(|m| m.host_to_container) {
        "slave"
    } else {
        "private"
    };
    let mut linux = json!({
        "namespaces": namespaces,
        "cgroupsPath": plan.cgroups_path,
        "rootfsPropagation": propagation,
    });
    if !plan.sysctls.is_empty() {
        linux["sysctl"] = json!(
            plan.sysctls
                .iter()
                .cloned()
                .collect::<std::collections::BTreeMap<_, _>>()
        );
    }
    if !plan.privileged {
        linux["maskedPaths"] = json!(MASKED_PATHS);
        linux["readonlyPaths"] = json!(READONLY_PATHS);
    }
    // Device rules as containerd writes them; the shim enforces them on cgroup v2.
    let mut resources = plan.resources.clone().unwrap_or_else(|| json!({}));
    resources["devices"] = json!(if plan.privileged {
        crate::model::devices::allow_all()
    } else {
        // containerd's defaults, and each device the container is given (the block
        // volumes of its volumeDevices).
        let mut rules = crate::model::devices::default_rules();
        rules.extend(
            plan.devices
                .iter()
                .filter_map(crate::model::devices::rule_for),
        );
        rules
    });
    linux["resources"] = resources;
    if !plan.devices.is_empty() {
        linux["devices"] = json!(plan.devices);
    }
    match &plan.seccomp {
        Seccomp::Unconfined => {}
        Seccomp::RuntimeDefault => {
            linux["seccomp"] = crate::model::seccomp::runtime_default(&bounding);
        }
        Seccomp::Localhost(section) => {
            linux["seccomp"] = section.clone();
        }
    }
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": plan.terminal,
            "user": {"uid": plan.uid, "gid": plan.gid, "additionalGids": plan.additional_gids},
            "args": plan.args,
            "env": plan.env,
            "cwd": if plan.cwd.is_empty() { "/" } else { plan.cwd.as_str() },
            "capabilities": {"bounding": bounding, "effective": active, "permitted": active},
        },
        "root": {"path": "rootfs", "readonly": plan.read_only_root},
        "mounts": mounts,
        "linux": linux,
    });
    if let Some(adj) = plan.oom_score_adj {
        spec["process"]["oomScoreAdj"] = json!(adj);
    }
    // Only `true` is written: libcontainer takes an explicit `false` as "load seccomp
    // after dropping capabilities", which then fails without no_new_privs.
    if plan.no_new_privileges {
        spec["process"]["noNewPrivileges"] = json!(true);
    }
    if let Some(profile) = &plan.apparmor {
        spec["process"]["apparmorProfile"] = json!(profile);
    }
    spec
}

/// Expands `$(NAME)` references as Kubernetes does for env values, command and args:
/// defined names are replaced, `$$` is a literal `$`, anything else stays as written.
pub fn expand(text: &str, vars: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
        {
            let name = &body[..end];
            match vars(name) {
                Some(v) => out.push_str(&v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The process a container runs, from its spec and its image's config, by Kubernetes'
/// rules: `command` replaces the image's Entrypoint (and drops its Cmd), `args` replace
/// Cmd; env is the image's, then the container's in order with `$(VAR)` expanded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
}

/// Resolves [`Process`] for `c` on an image with `entrypoint`, `cmd`, `env`, `workdir`.
pub fn process(
    c: &k8s_openapi::api::core::v1::Container,
    entrypoint: &[String],
    cmd: &[String],
    image_env: &[String],
    workdir: &str,
) -> Process {
    let mut env: Vec<(String, String)> = image_env
        .iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (e.clone(), String::new()),
        })
        .collect();
    // containerd gives images without a PATH the default one.
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.insert(0, ("PATH".into(), DEFAULT_PATH.into()));
    }
    for var in c.env.iter().flatten() {
        let value = {
            let lookup = |n: &str| {
                env.iter()
                    .rev()
                    .find(|(k, _)| k == n)
                    .map(|(_, v)| v.clone())
            };
            expand(var.value.as_deref().unwrap_or(""), &lookup)
        };
        match env.iter_mut().find(|(k, _)| *k == var.name) {
            Some(slot) => slot.1 = value,
            None => env.push((var.name.clone(), value)),
        }
    }
    let lookup = |n: &str| env.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let expand_all = |v: &[String]| v.iter().map(|a| expand(a, &lookup)).collect::<Vec<_>>();
    let args = match (&c.command, &c.args) {
        (Some(command), args) => {
            let mut v = expand_all(command);
            v.extend(expand_all(args.as_deref().unwrap_or_default()));
            v
        }
        (None, Some(args)) => {
            let mut v = entrypoint.to_vec();
            v.extend(expand_all(args));
            v
        }
        (None, None) => entrypoint.iter().chain(cmd).cloned().collect(),
    };
    Process {
        args,
        env: env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        cwd: c
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| {
                if workdir.is_empty() {
                    "/".into()
                } else {
                    workdir.into()
                }
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn plan() -> ContainerPlan {
        ContainerPlan {
            args: vec!["sh".into()],
            env: vec!["PATH=/bin".into()],
            cwd: String::new(),
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            net: Ns::Path("/run/kernlet/pods/u/ns/net".into()),
            ipc: Ns::Path("/run/kernlet/pods/u/ns/ipc".into()),
            uts: Ns::Path("/run/kernlet/pods/u/ns/uts".into()),
            pid: Ns::New,
            cgroups_path: "/kubepods/besteffort/podu/c".into(),
            shm: "/run/kernlet/pods/u/shm".into(),
            dev_volume: None,
            mounts: vec![BindMount {
                source: "/run/kernlet/pods/u/hosts".into(),
                destination: "/etc/hosts".into(),
                readonly: false,
                host_to_container: false,
                bidirectional: false,
            }],
            privileged: false,
            cap_add: vec![],
            cap_drop: vec![],
            no_new_privileges: false,
            read_only_root: false,
            resources: None,
            seccomp: Seccomp::Unconfined,
            apparmor: None,
            devices: vec![],
            host_caps: (1 << 41) - 1,
            sysctls: Vec::new(),
            terminal: false,
            oom_score_adj: None,
            userns: None,
        }
    }

    #[test]
    fn the_spec_is_a_valid_oci_runtime_spec() {
        let v = spec(&plan());
        let parsed: oci_spec::runtime::Spec = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(
            parsed.root().as_ref().unwrap().path(),
            std::path::Path::new("rootfs")
        );
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "network", "ipc", "uts", "mount", "cgroup"]);
        // A user-namespaced pod's container joins the pod's user namespace first.
        let userns = ContainerPlan {
            userns: Some("/run/k/pods/u/ns/user".into()),
            ..plan()
        };
        let v2 = spec(&userns);
        assert_eq!(
            v2["linux"]["namespaces"][0],
            json!({"type": "user", "path": "/run/k/pods/u/ns/user"})
        );
        assert_eq!(v2["linux"]["namespaces"].as_array().unwrap().len(), 7);
        let cgroupfs = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/sys/fs/cgroup")
            .unwrap();
        assert_eq!(cgroupfs["type"], "cgroup");
        assert!(
            cgroupfs["options"]
                .as_array()
                .unwrap()
                .contains(&json!("ro"))
        );
        assert_eq!(v["linux"]["maskedPaths"].as_array().unwrap().len(), 12);
        assert_eq!(
            v["process"]["capabilities"]["effective"]
                .as_array()
                .unwrap()
                .len(),
            14
        );
        assert!(
            v["process"].get("noNewPrivileges").is_none(),
            "false is left out"
        );
        assert!(v["linux"].get("seccomp").is_none());
        assert!(v["process"].get("apparmorProfile").is_none());
        assert_eq!(v["linux"]["rootfsPropagation"], "private");
        let mut p = plan();
        p.no_new_privileges = true;
        p.seccomp = Seccomp::RuntimeDefault;
        p.apparmor = Some("kernlet-default".into());
        let v = spec(&p);
        assert_eq!(v["process"]["apparmorProfile"], "kernlet-default");
        assert_eq!(v["process"]["noNewPrivileges"], true);
        assert_eq!(v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
    }

    #[test]
    fn capabilities_follow_add_drop_user_and_privileged() {
        let mut p = plan();
        p.cap_drop = vec!["NET_RAW".into(), "chown".into()];
        p.cap_add = vec!["NET_ADMIN".into()];
        let (b, e) = capabilities(&p);
        assert!(!b.contains(&"CAP_NET_RAW".to_string()) && !b.contains(&"CAP_CHOWN".to_string()));
        assert!(b.contains(&"CAP_NET_ADMIN".to_string()));
        assert_eq!(b, e);
        p.cap_drop = vec!["ALL".into()];
        p.cap_add = vec!["NET_BIND_SERVICE".into()];
        assert_eq!(capabilities(&p).0, ["CAP_NET_BIND_SERVICE"]);
        p.uid = 1000;
        assert!(capabilities(&p).1.is_empty());
        let mut p = plan();
        p.privileged = true;
        assert_eq!(capabilities(&p).0.len(), 41);
        assert!(spec(&p)["linux"].get("maskedPaths").is_none());
    }

    #[test]
    fn variable_references_expand_like_kubernetes() {
        let vars = |n: &str| (n == "A").then(|| "x".to_string());
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &vars), "x-$(B)-$(A)-$");
        assert_eq!(expand("$(A", &vars), "$(A");
    }

    #[test]
    fn command_and_args_combine_with_the_image_as_kubernetes_defines() {
        let img = (vec!["/ep".to_string()], vec!["cmd".to_string()]);
        let c = |command: Option<Vec<&str>>, args: Option<Vec<&str>>| {
            k8s_openapi::api::core::v1::Container {
                name: "c".into(),
                command: command.map(|v| v.into_iter().map(String::from).collect()),
                args: args.map(|v| v.into_iter().map(String::from).collect()),
                env: Some(vec![
                    serde_json::from_value(json!({"name": "GREETING", "value": "hi $(USER)"}))
                        .unwrap(),
                    serde_json::from_value(json!({"name": "PATH", "value": "/opt:$(PATH)"}))
                        .unwrap(),
                ]),
                ..Default::default()
            }
        };
        let env = ["PATH=/bin".to_string(), "USER=root".to_string()];
        let run = |c| process(&c, &img.0, &img.1, &env, "");
        assert_eq!(run(c(None, None)).args, ["/ep", "cmd"]);
        assert_eq!(run(c(None, Some(vec!["a"]))).args, ["/ep", "a"]);
        assert_eq!(run(c(Some(vec!["sh"]), None)).args, ["sh"]);
        assert_eq!(
            run(c(Some(vec!["echo"]), Some(vec!["$(GREETING)"]))).args,
            ["echo", "hi root"]
        );
        let p = run(c(None, None));
        assert_eq!(p.env, ["PATH=/opt:/bin", "USER=root", "GREETING=hi root"]);
        assert_eq!(p.cwd, "/");
    }
}

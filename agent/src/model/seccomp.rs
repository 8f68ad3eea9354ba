//! The `RuntimeDefault` seccomp profile, as containerd applies it: everything a normal
//! program needs is allowed, the rest fails with EPERM; syscalls that need a capability
//! are allowed only when the container has it; `clone` may not create namespaces and
//! `clone3` reports ENOSYS (so libcs fall back to `clone`) unless CAP_SYS_ADMIN.

use serde_json::{Value, json};

/// Syscalls allowed to every container.
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "arch_prctl",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "modify_ldt",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socket",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Syscalls allowed only with a capability.
const BY_CAPABILITY: &[(&str, &[&str])] = &[
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// The namespace flags `clone` may not carry without CAP_SYS_ADMIN
/// (NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET).
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// The RuntimeDefault profile (`linux.seccomp`) for a container with capability set
/// `caps` (the bounding set, `CAP_*` names).
pub fn runtime_default(caps: &[String]) -> Value {
    let has = |c: &str| caps.iter().any(|x| x == c);
    let mut syscalls = vec![json!({"names": ALLOWED, "action": "SCMP_ACT_ALLOW"})];
    // personality: only the harmless domains (linux, linux32, UNAME26 variants, query).
    for persona in [0u64, 8, 0x20000, 0x20008, 0xffff_ffff] {
        syscalls.push(json!({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                             "args": [{"index": 0, "value": persona, "op": "SCMP_CMP_EQ"}]}));
    }
    for (cap, names) in BY_CAPABILITY {
        if has(cap) {
            syscalls.push(json!({"names": names, "action": "SCMP_ACT_ALLOW"}));
        }
    }
    if !has("CAP_SYS_ADMIN") {
        syscalls.push(json!({"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                             "args": [{"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}));
        syscalls.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}));
    }
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": syscalls,
    })
}

/// The `SCMP_ARCH_*` name of the architecture kernlet runs on.
fn native_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "SCMP_ARCH_AARCH64",
        "arm" => "SCMP_ARCH_ARM",
        "riscv64" => "SCMP_ARCH_RISCV64",
        "s390x" => "SCMP_ARCH_S390X",
        "powerpc64" => "SCMP_ARCH_PPC64LE",
        _ => "SCMP_ARCH_X86_64",
    }
}

/// A `Localhost` profile (the JSON format of Docker's and containerd's profiles, a
/// superset of the OCI section) as `linux.seccomp` for a container with capability
/// set `caps`: `archMap` narrowed to this machine's architecture, old single `name`
/// rules accepted, rules whose `includes`/`excludes` (capabilities, architectures)
/// do not match this container dropped — as containerd loads them. The result must
/// parse as an OCI seccomp section, so an unknown action or operator is refused here
/// instead of failing inside the container's start.
pub fn localhost(profile: &Value, caps: &[String]) -> Result<Value, String> {
    let obj = profile
        .as_object()
        .ok_or("the profile is not a JSON object")?;
    let default_action = obj
        .get("defaultAction")
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty())
        .ok_or("the profile has no defaultAction")?;
    let arch = native_arch();
    let mut architectures: Vec<Value> = obj
        .get("architectures")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for entry in obj
        .get("archMap")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if entry.get("architecture").and_then(Value::as_str) == Some(arch) {
            architectures.push(json!(arch));
            architectures.extend(
                entry
                    .get("subArchitectures")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
            );
        }
    }
    let has_cap = |c: &Value| c.as_str().is_some_and(|c| caps.iter().any(|x| x == c));
    let is_arch = |a: &Value| a.as_str() == Some(arch);
    let mut syscalls = Vec::new();
    for (i, rule) in obj
        .get("syscalls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let list = |v: Option<&Value>, key: &str| -> Vec<Value> {
            v.and_then(|v| v.get(key))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        let (inc, exc) = (rule.get("includes"), rule.get("excludes"));
        let inc_caps = list(inc, "caps");
        let inc_arches = list(inc, "arches");
        if !inc_caps.iter().all(has_cap)
            || (!inc_arches.is_empty() && !inc_arches.iter().any(is_arch))
        {
            continue;
        }
        if list(exc, "caps").iter().any(has_cap) || list(exc, "arches").iter().any(is_arch) {
            continue;
        }
        let mut names = list(Some(rule), "names");
        if let Some(n) = rule.get("name").filter(|n| n.is_string()) {
            names.push(n.clone());
        }
        if names.is_empty() {
            return Err(format!("syscall rule {i} names no syscall"));
        }
        let mut out =
            json!({"names": names, "action": rule.get("action").cloned().unwrap_or(Value::Null)});
        for key in ["errnoRet", "args"] {
            if let Some(v) = rule.get(key) {
                out[key] = v.clone();
            }
        }
        syscalls.push(out);
    }
    let mut section = json!({"defaultAction": default_action, "syscalls": syscalls});
    if !architectures.is_empty() {
        section["architectures"] = json!(architectures);
    }
    for key in [
        "defaultErrnoRet",
        "flags",
        "listenerPath",
        "listenerMetadata",
    ] {
        if let Some(v) = obj.get(key) {
            section[key] = v.clone();
        }
    }
    serde_json::from_value::<oci_spec::runtime::LinuxSeccomp>(section.clone())
        .map_err(|e| format!("not a valid seccomp profile: {e}"))?;
    Ok(section)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localhost_profiles_load_like_containerd_loads_them() {
        let caps = vec!["CAP_CHOWN".to_string(), "CAP_NET_RAW".to_string()];
        let profile = json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "archMap": [{"architecture": native_arch(), "subArchitectures": ["SCMP_ARCH_X86"]},
                        {"architecture": "SCMP_ARCH_MIPS", "subArchitectures": []}],
            "syscalls": [
                {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
                {"name": "getpid", "action": "SCMP_ACT_ALLOW"},
                {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["socket"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_NET_RAW"]}},
                {"names": ["chown"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_CHOWN"]}},
                {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["SCMP_ARCH_MIPS"]}},
                {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 3,
                 "args": [{"index": 1, "value": 9, "op": "SCMP_CMP_EQ"}]}
            ]
        });
        let s = localhost(&profile, &caps).unwrap();
        assert_eq!(s["architectures"], json!([native_arch(), "SCMP_ARCH_X86"]));
        assert_eq!(s["defaultErrnoRet"], 1);
        let names: Vec<&str> = s["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["names"].as_array().unwrap())
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(names, ["read", "write", "getpid", "socket", "kill"]);
        let kill = s["syscalls"].as_array().unwrap().last().unwrap();
        assert_eq!(kill["errnoRet"], 3);
        assert_eq!(kill["args"][0]["op"], "SCMP_CMP_EQ");

        let bad_action = json!({"defaultAction": "SCMP_ACT_MAYBE", "syscalls": []});
        assert!(
            localhost(&bad_action, &caps)
                .unwrap_err()
                .contains("not a valid")
        );
        let no_default = json!({"syscalls": []});
        assert!(
            localhost(&no_default, &caps)
                .unwrap_err()
                .contains("defaultAction")
        );
        let nameless =
            json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ERRNO"}]});
        assert!(localhost(&nameless, &caps).unwrap_err().contains("rule 0"));
    }

    #[test]
    fn the_profile_is_a_valid_oci_seccomp_section() {
        let caps: Vec<String> = crate::model::runtime_spec::DEFAULT_CAPABILITIES
            .iter()
            .map(|c| c.to_string())
            .collect();
        let p = runtime_default(&caps);
        let parsed: oci_spec::runtime::LinuxSeccomp = serde_json::from_value(p.clone()).unwrap();
        assert_eq!(parsed.default_errno_ret(), Some(1));
        let names = |v: &Value| -> Vec<String> {
            v["syscalls"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["action"] == "SCMP_ACT_ALLOW" && r.get("args").is_none())
                .flat_map(|r| {
                    r["names"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|n| n.as_str().unwrap().to_string())
                })
                .collect()
        };
        let allowed = names(&p);
        assert!(
            allowed.contains(&"chroot".to_string()),
            "CAP_SYS_CHROOT is a default capability"
        );
        assert!(
            !allowed.contains(&"unshare".to_string()) && !allowed.contains(&"mount".to_string())
        );
        let mut admin = caps.clone();
        admin.push("CAP_SYS_ADMIN".into());
        let allowed = names(&runtime_default(&admin));
        assert!(
            allowed.contains(&"unshare".to_string()) && allowed.contains(&"clone3".to_string())
        );
    }
}

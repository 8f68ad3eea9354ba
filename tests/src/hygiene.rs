//! Names, guards and the sweep that keep a shared machine clean.
//!
//! Everything the kit creates — network namespaces, cgroups, temp directories, bpffs
//! pins — is named `kltest-<pid>-...` after the test process that made it. Guards
//! remove it on drop; the sweep at start removes what a killed run left behind (its pid
//! is gone). Nothing without the prefix is touched.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// The prefix of every object a test creates.
pub const PREFIX: &str = "kltest";

/// This process's prefix: `kltest-<pid>`.
pub fn run_prefix() -> String {
    format!("{PREFIX}-{}", std::process::id())
}

/// The pid a prefixed name belongs to (`kltest-1234-n1` → 1234).
pub fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?
        .strip_prefix('-')?
        .split(['-', '.'])
        .next()?
        .parse()
        .ok()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Runs `ip` with arguments; an error carries its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("run ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The cgroup2 directory that holds every test cgroup of this machine.
pub fn cgroup_base() -> anyhow::Result<PathBuf> {
    Ok(kernlet::sys::cgroup::cgroup2_mount()?)
}

/// Network namespaces whose name carries the prefix.
pub fn prefixed_netns() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&format!("{PREFIX}-")))
        .collect()
}

/// Ends (SIGKILL, by pid) every process in a cgroup tree we created, then removes it.
/// A killed process leaves its cgroup only once it has exited, so removal is retried
/// for a while (EBUSY) before giving up.
pub fn remove_cgroup_tree(dir: &Path) -> anyhow::Result<()> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let mut last = None;
    for _ in 0..250 {
        let mut pids = Vec::new();
        collect_procs(dir, &mut pids);
        for pid in pids {
            if let Ok(p) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
        }
        match kernlet::sys::cgroup::Cgroup::open(dir.to_path_buf()).remove() {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(last.map_or_else(
        || anyhow::anyhow!("cgroup {} not removed", dir.display()),
        Into::into,
    ))
}

fn collect_procs(dir: &Path, out: &mut Vec<u32>) {
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect_procs(&e.path(), out);
        }
    }
}

/// Mount points in a `/proc/self/mountinfo` text (octal escapes decoded).
pub fn mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| {
            let mut out = Vec::new();
            let b = m.as_bytes();
            let mut i = 0;
            while i < b.len() {
                let octal = b.get(i + 1..i + 4).and_then(|d| {
                    std::str::from_utf8(d)
                        .ok()
                        .and_then(|d| u8::from_str_radix(d, 8).ok())
                });
                match (b[i], octal) {
                    (b'\\', Some(c)) => {
                        out.push(c);
                        i += 4;
                    }
                    (c, _) => {
                        out.push(c);
                        i += 1;
                    }
                }
            }
            PathBuf::from(std::ffi::OsString::from(
                String::from_utf8_lossy(&out).into_owned(),
            ))
        })
        .collect()
}

/// Detaches every mount at or below `dir`, deepest first; returns what was unmounted.
pub fn unmount_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<PathBuf> = mount_points(&text)
        .into_iter()
        .filter(|m| m.starts_with(dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    mounts.dedup();
    mounts
        .into_iter()
        .filter(|m| nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH).is_ok())
        .collect()
}

/// What a sweep removed.
#[derive(Debug, Default)]
pub struct Swept {
    pub netns: Vec<String>,
    pub cgroups: Vec<PathBuf>,
    pub mounts: Vec<PathBuf>,
    pub dirs: Vec<PathBuf>,
}

/// Removes leftovers of test runs whose process is gone.
pub fn sweep() -> Swept {
    sweep_where(|pid| !alive(pid))
}

/// Removes leftovers of runs for which `dead(pid)` holds.
pub fn sweep_where(dead: impl Fn(u32) -> bool) -> Swept {
    let mut swept = Swept::default();
    // Processes first (they may hold namespaces and cgroups), so cgroups go first.
    if let Ok(base) = cgroup_base() {
        for e in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if owner_pid(&name).is_some_and(&dead) && remove_cgroup_tree(&e.path()).is_ok() {
                swept.cgroups.push(e.path());
            }
        }
    }
    for ns in prefixed_netns() {
        if owner_pid(&ns).is_some_and(&dead) && ip(&["netns", "delete", &ns]).is_ok() {
            swept.netns.push(ns);
        }
    }
    for dir in [std::env::temp_dir(), PathBuf::from("/sys/fs/bpf")] {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !owner_pid(&name).is_some_and(&dead) {
                continue;
            }
            // Mounts first: removing files under a live mount would empty it, and
            // its mount point could not go.
            swept.mounts.extend(unmount_under(&e.path()));
            if std::fs::remove_dir_all(e.path()).is_ok() {
                swept.dirs.push(e.path());
            }
        }
    }
    swept
}

/// Sweeps once per process, before the first lab is built.
pub fn sweep_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let s = sweep();
        if !s.netns.is_empty()
            || !s.cgroups.is_empty()
            || !s.mounts.is_empty()
            || !s.dirs.is_empty()
        {
            eprintln!("kltest sweep removed leftovers of killed runs: {s:?}");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pids_from_names() {
        assert_eq!(owner_pid("kltest-1234-n1"), Some(1234));
        assert_eq!(owner_pid("kltest-99"), Some(99));
        assert_eq!(owner_pid("kltest-77.tmpXyz"), Some(77));
        assert_eq!(owner_pid("kernlet-demo"), None);
        assert_eq!(owner_pid("kltestx-1-a"), None);
    }

    #[test]
    fn mount_points_are_decoded() {
        let text = "36 35 98:0 / /mnt/a\\040b rw - ext3 /dev/root rw\n\
                    40 36 0:33 / /tmp/kltest-1-x/state rw - tmpfs tmpfs rw\n";
        assert_eq!(
            mount_points(text),
            [
                PathBuf::from("/mnt/a b"),
                PathBuf::from("/tmp/kltest-1-x/state")
            ]
        );
    }
}

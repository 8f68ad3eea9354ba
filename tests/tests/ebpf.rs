//! The eBPF pipeline (root): the object built from `ebpf/programs` and embedded in
//! kernlet loads, its `cgroup/connect4` probe attaches to a cgroup we create, and it
//! counts connects made from inside that cgroup only.

#![allow(
    clippy::unwrap_used,
    reason = "a test that cannot go on should stop loudly"
)]

use std::net::TcpListener;
use std::process::Command;

use kernlet::sys::bpf::Probe;
use kernlet::sys::cgroup::Cgroup;
use kernlet_tests::hygiene;

/// Removes the test cgroup even when an assertion fails.
struct CgroupGuard(std::path::PathBuf);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        let _ = hygiene::remove_cgroup_tree(&self.0);
    }
}

fn connect_from(cgroup: Option<&Cgroup>, port: u16) {
    let procs = cgroup.map(|c| c.path().join("cgroup.procs").display().to_string());
    let script = match &procs {
        Some(p) => format!("echo $$ > {p} && exec 3<>/dev/tcp/127.0.0.1/{port}"),
        None => format!("exec 3<>/dev/tcp/127.0.0.1/{port}"),
    };
    let status = Command::new("bash").args(["-c", &script]).status().unwrap();
    assert!(status.success(), "connect via bash failed: {status}");
}

#[test]
fn embedded_connect4_probe_counts_connects_in_its_cgroup() {
    hygiene::sweep_once();
    let base = hygiene::cgroup_base().unwrap();
    let rel = format!("{}-ebpf", hygiene::run_prefix());
    let cgroup = Cgroup::create(&base, std::path::Path::new(&rel)).unwrap();
    let _guard = CgroupGuard(cgroup.path().to_path_buf());

    let probe = Probe::attach(cgroup.path()).unwrap_or_else(|e| panic!("attach: {e}"));
    assert_eq!(probe.counters().unwrap().connect4, 0);

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    connect_from(None, port);
    assert_eq!(
        probe.counters().unwrap().connect4,
        0,
        "a connect outside the cgroup is not seen"
    );
    connect_from(Some(&cgroup), port);
    connect_from(Some(&cgroup), port);
    assert_eq!(
        probe.counters().unwrap().connect4,
        2,
        "both connects inside the cgroup are counted"
    );

    // Dropping the probe detaches it: later connects are not counted by anyone, and the
    // cgroup can be removed.
    drop(probe);
    connect_from(Some(&cgroup), port);
    drop(listener);
}

/// Unmounts everything under a test directory and removes it, however the test ends.
struct MountsGuard(std::path::PathBuf);

impl Drop for MountsGuard {
    fn drop(&mut self) {
        hygiene::unmount_under(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A pin directory under the conventional bpffs place, where nothing is mounted and
/// the place takes no new directories (as /sys/fs/bpf on sysfs, here a read-only
/// tmpfs): kernlet mounts a bpffs there first, then makes its directory on it.
#[test]
fn a_bpffs_is_mounted_where_the_conventional_place_has_none() {
    hygiene::sweep_once();
    let base = std::env::temp_dir().join(format!("{}-bpffs", hygiene::run_prefix()));
    std::fs::create_dir_all(&base).unwrap();
    let _guard = MountsGuard(base.clone());
    let standard = base.join("sys-fs-bpf");
    std::fs::create_dir_all(&standard).unwrap();
    // A read-only stand-in for sysfs.
    kernlet_tests::succeeded(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "ro", "kltest-ro"])
            .arg(&standard),
    );
    let pins = standard.join("node-a/lb");
    assert!(
        std::fs::create_dir_all(&pins).is_err(),
        "the stand-in takes no directories"
    );
    kernlet::sys::bpf::ensure_bpffs_with(&pins, &standard).unwrap();
    assert!(
        kernlet::sys::bpf::on_bpffs(&standard),
        "a bpffs on the conventional place"
    );
    assert!(kernlet::sys::bpf::on_bpffs(&pins) && pins.is_dir());
    // A second instance (or a restart) finds it there and mounts nothing more.
    let mounts_before = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .count();
    kernlet::sys::bpf::ensure_bpffs_with(&standard.join("node-b/lb"), &standard).unwrap();
    kernlet::sys::bpf::ensure_bpffs_with(&pins, &standard).unwrap();
    let mounts_after = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .count();
    assert_eq!(mounts_before, mounts_after);
}

/// The programs for traffic from outside the node pass the kernel's verifier (the
/// end-to-end tests would only see them not attached).
#[test]
fn the_outside_traffic_programs_pass_the_verifier() {
    kernlet::sys::lb::verify_outside_programs().unwrap_or_else(|e| panic!("{e}"));
}

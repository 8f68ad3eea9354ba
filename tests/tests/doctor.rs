//! `kernlet doctor` on a SimNode (root): each verdict compared with what the test finds
//! on the machine itself, in both output formats. (The serving CSR and cluster
//! permission checks are tested against a control plane in `node_agent.rs`.)

#![allow(
    clippy::unwrap_used,
    reason = "a test that cannot go on should stop loudly"
)]

use kernlet_tests::simnode::{Lab, kernlet_bin};
use serde_json::Value;

/// The cgroup2 mount of this process, read the plain way.
fn cgroup2_mount() -> std::path::PathBuf {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).unwrap().into())
        })
        .unwrap()
}

#[test]
fn doctor_names_what_this_machine_lacks_and_the_fix() {
    let mut lab = Lab::new("doctor").unwrap();
    let node = lab.add_node("d1").unwrap();
    let mut flags = node.kernlet_dir_flags();
    // A bpffs dir flag where no directory can be made (procfs): pinning cannot work
    // there. (On a plain directory kernlet mounts a bpffs itself: a warning.)
    let not_bpffs = std::path::PathBuf::from("/proc/kltest-no-bpffs");
    let at = flags.iter().position(|f| f == "--bpffs-dir").unwrap();
    flags[at + 1] = not_bpffs.display().to_string();
    let run = |format: &str| {
        node.command(kernlet_bin().unwrap())
            .arg("doctor")
            .args(["-o", format])
            .args(&flags)
            .output()
            .unwrap()
    };
    let out = run("json");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let checks = report["checks"].as_array().unwrap();
    let find = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name}: {report:#}"))
    };

    // cgroup v2: exactly the controllers its root lacks, with the fix.
    let mount = cgroup2_mount();
    let root = std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap();
    let missing: Vec<&str> = ["cpu", "memory", "pids"]
        .into_iter()
        .filter(|c| !root.split_whitespace().any(|r| r == *c))
        .collect();
    let cg = find("cgroup v2");
    let detail = cg["detail"].as_str().unwrap();
    assert!(detail.contains(&mount.display().to_string()), "{detail}");
    if missing.is_empty() {
        assert_eq!(cg["verdict"], "ok", "{cg}");
    } else {
        assert_eq!(cg["verdict"], "fail", "{cg}");
        assert!(
            detail.contains(&format!("no {} controller(s)", missing.join(", "))),
            "{detail}"
        );
        assert!(
            cg["fix"]
                .as_str()
                .unwrap()
                .contains("systemd.unified_cgroup_hierarchy=1"),
            "{cg}"
        );
        assert_eq!(report["verdict"], "fail");
        assert_eq!(
            out.status.code(),
            Some(1),
            "a failed check fails the command"
        );
    }

    // bpffs: the flag's directory is named, with the mount to make.
    let bpffs = find("bpffs");
    assert_eq!(bpffs["verdict"], "fail", "{bpffs}");
    assert!(
        bpffs["detail"]
            .as_str()
            .unwrap()
            .contains(&not_bpffs.display().to_string())
    );
    assert!(bpffs["fix"].as_str().unwrap().contains("mount -t bpf"));

    // Kernel: the release uname reports; the options are all there on this machine.
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let kv = find("kernel version");
    assert!(
        kv["detail"].as_str().unwrap().starts_with(release.trim()),
        "{kv}"
    );
    assert_eq!(find("kernel config")["verdict"], "ok");

    // The sysctls as the node's namespace has them. The lab gives the node a global
    // IPv6 address, so IPv6 forwarding is asked for too.
    for (path, name) in [
        (
            "/proc/sys/net/ipv4/ip_forward",
            "sysctl net.ipv4.ip_forward",
        ),
        (
            "/proc/sys/net/ipv6/conf/all/forwarding",
            "sysctl net.ipv6.conf.all.forwarding",
        ),
    ] {
        let value = node.run("cat", &[path]).unwrap();
        let value = String::from_utf8_lossy(&value.stdout).trim().to_string();
        let sysctl = find(name);
        assert_eq!(
            sysctl["verdict"],
            if value == "1" { "ok" } else { "warn" },
            "{sysctl}"
        );
        assert!(
            sysctl["detail"].as_str().unwrap().starts_with(&value),
            "{sysctl}"
        );
    }

    // Disks: each directory flag's path, with its free space.
    for (flag, dir) in [
        ("state-dir", "state"),
        ("image-dir", "images"),
        ("log-dir", "logs"),
    ] {
        let d = find(&format!("disk --{flag}"));
        let text = d["detail"].as_str().unwrap();
        assert!(
            text.starts_with(&node.dir(dir).display().to_string()) && text.contains("MiB free"),
            "{d}"
        );
    }
    // Standalone: nothing asked of an apiserver, no certificate expected.
    assert_eq!(find("serving certificate")["verdict"], "ok");
    assert_eq!(find("cluster permissions")["verdict"], "ok");

    // The table says the same, check by check, with the fixes.
    let table = String::from_utf8(run("table").stdout).unwrap();
    for c in checks {
        let name = c["name"].as_str().unwrap();
        let line = table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} not in\n{table}"));
        let verdict = c["verdict"].as_str().unwrap();
        let shown = if verdict == "fail" { "FAIL" } else { verdict };
        // A disk near a threshold may change its verdict between the two runs.
        assert!(name.starts_with("disk ") || line.contains(shown), "{line}");
        // Free space moves between the two runs: disks compare by path only.
        let detail = c["detail"].as_str().unwrap();
        let stable = if name.starts_with("disk ") {
            detail.split(':').next().unwrap()
        } else {
            detail
        };
        assert!(line.contains(stable), "{line}");
        if let Some(fix) = c["fix"].as_str()
            && !name.starts_with("disk ")
        {
            assert!(table.contains(&format!("fix: {fix}")), "{table}");
        }
    }
}

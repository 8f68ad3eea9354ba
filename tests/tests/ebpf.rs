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

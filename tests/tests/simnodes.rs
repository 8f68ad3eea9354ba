//! Simulated nodes (root): three nodes on the lab underlay reach each other and the
//! control plane, run commands in their own namespace and cgroup, and a killed test
//! run's leftovers are swept by the next one.

#![allow(
    clippy::unwrap_used,
    reason = "a test that cannot go on should stop loudly"
)]

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kernlet_tests::cluster::Cluster;
use kernlet_tests::hygiene;
use kernlet_tests::simnode::{BRIDGE_IP, Lab};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_simnodes_ping_each_other_and_reach_the_control_plane() {
    let cluster = Cluster::start(&[BRIDGE_IP.into()]).await.unwrap();
    let started = Instant::now();
    let mut lab = Lab::new("ping").unwrap();
    let nodes: Vec<_> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| lab.add_node(n).unwrap())
        .collect();
    let up = started.elapsed();
    eprintln!("three SimNodes up in {up:?}");
    assert!(up < Duration::from_secs(10), "three SimNodes took {up:?}");

    for a in &nodes {
        for b in &nodes {
            if a.name == b.name {
                continue;
            }
            let out = a
                .run("ping", &["-c", "1", "-W", "2", &b.address.to_string()])
                .unwrap();
            assert!(
                out.status.success(),
                "{} cannot ping {}: {}",
                a.name,
                b.name,
                String::from_utf8_lossy(&out.stdout)
            );
        }
        // Commands "on the node" run in its cgroup and see only its addresses.
        let cg = a.run("cat", &["/proc/self/cgroup"]).unwrap();
        let rel = a
            .cgroup()
            .strip_prefix(hygiene::cgroup_base().unwrap())
            .unwrap()
            .display()
            .to_string();
        assert!(
            String::from_utf8_lossy(&cg.stdout)
                .lines()
                .any(|l| l.starts_with("0::/") && l.ends_with(&rel)),
            "{}",
            String::from_utf8_lossy(&cg.stdout)
        );
        let addrs = a
            .run("ip", &["-4", "-o", "addr", "show", "dev", "eth0"])
            .unwrap();
        assert!(String::from_utf8_lossy(&addrs.stdout).contains(&format!("{}/24", a.address)));
    }

    // The control plane, forwarded onto the bridge, is reachable from a node with the
    // node's own credentials.
    let fwd = lab.forward(0, cluster.addr()).unwrap();
    let kubeconfig = nodes[0].dir("state").join("kubeconfig");
    cluster
        .kubeconfig_at(&fwd.url, "system:node:n1", &["system:nodes"], &kubeconfig)
        .unwrap();
    let node0 = &nodes[0];
    let kc = kubeconfig.display().to_string();
    let out = tokio::task::spawn_blocking({
        let cmd_out = node0.run(
            "kubectl",
            &["--kubeconfig", &kc, "get", "--raw", "/version"],
        );
        move || cmd_out
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "kubectl from n1: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let version: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(version["minor"], "36", "{version}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_on_a_node_can_be_started_stopped_and_killed() {
    let mut lab = Lab::new("proc").unwrap();
    let node = lab.add_node("p1").unwrap();
    let mut child = node.command("sleep").arg("600").spawn().unwrap();
    let pid = child.id();
    // The command keeps its pid (exec in place) and is in the node's cgroup.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !kernlet::sys::cgroup::Cgroup::open(node.cgroup().to_path_buf())
        .processes()
        .unwrap()
        .contains(&pid)
    {
        assert!(
            Instant::now() < deadline,
            "pid {pid} never appeared in {}",
            node.cgroup().display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let netns = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_ne!(
        netns, ours,
        "the process runs in the node's network namespace"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    drop(node);
    assert!(
        !std::path::Path::new(&format!("/run/netns/{}-proc-p1", hygiene::run_prefix())).exists()
    );
}

/// Not a test on its own: the body of the child process the sweep test kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper: run as a child process by sweep_removes_what_a_killed_run_left_behind"]
#[allow(
    clippy::zombie_processes,
    reason = "the process is left on purpose for the sweep to find"
)]
async fn leftover_child() {
    let mut lab = Lab::new("left").unwrap();
    let a = lab.add_node("a").unwrap();
    let _b = lab.add_node("b").unwrap();
    let _sleeper = a.command("sleep").arg("600").spawn().unwrap();
    println!("READY {}", std::process::id());
    tokio::time::sleep(Duration::from_secs(600)).await;
}

#[test]
fn sweep_removes_what_a_killed_run_left_behind() {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "leftover_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stdout = child.stdout.take().unwrap();
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("READY"));
    assert!(ready, "child never got ready");
    let prefix = format!("{}-{pid}-", hygiene::PREFIX);
    let leftovers = || -> Vec<String> {
        let mut v: Vec<String> = hygiene::prefixed_netns()
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect();
        let base = hygiene::cgroup_base().unwrap();
        if base.join(format!("{}-{pid}", hygiene::PREFIX)).exists() {
            v.push("cgroup".into());
        }
        for e in std::fs::read_dir(std::env::temp_dir()).unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                v.push(e.path().display().to_string());
            }
        }
        v
    };
    assert!(
        leftovers().len() >= 4,
        "bridge ns, two node ns and the cgroup exist: {:?}",
        leftovers()
    );
    // A forced kill: no guard runs.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!leftovers().is_empty());
    let swept = hygiene::sweep();
    assert!(
        swept.netns.iter().any(|n| n.starts_with(&prefix)),
        "{swept:?}"
    );
    assert!(
        leftovers().is_empty(),
        "left after sweep: {:?}",
        leftovers()
    );
    let ns_list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&ns_list.stdout).contains(&prefix));
}

//! kernlet's test kit: a control plane (in-memory, or a real one from
//! `KUBEBUILDER_ASSETS`), simulated nodes in network namespaces, and the hygiene that
//! keeps a shared machine clean.

pub mod apiserver;
pub mod bench_pods;
pub mod bench_rollout;
pub mod bench_services;
pub mod cluster;
pub mod cri;
pub mod csi;
pub mod dns;
pub mod egress;
pub mod fixtures;
pub mod grpc_health;
pub mod hygiene;
pub mod kube_proxy;
pub mod logind;
pub mod oci;
pub mod one_node;
pub mod overlay;
pub mod prometheus;
pub mod real;
pub mod registry;
pub mod simnode;

/// `python3 -c code` as a process of `cgroup` (made when missing; so the socket
/// load-balancer attached there translates it) inside the network namespace `netns`;
/// the caller adds the script's arguments and runs it.
pub fn python_in(
    cgroup: &std::path::Path,
    netns: &std::path::Path,
    code: &str,
) -> std::io::Result<std::process::Command> {
    std::fs::create_dir_all(cgroup)?;
    let mut cmd = std::process::Command::new("bash");
    cmd.arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec nsenter --net={} python3 -c \"$0\" \"$@\"",
            cgroup.display(),
            netns.display()
        ))
        .arg(code);
    Ok(cmd)
}

/// The `p`th percentile (nearest rank) of `sorted`; zero when it is empty.
pub fn percentile(sorted: &[std::time::Duration], p: usize) -> std::time::Duration {
    let i = (sorted.len() * p).div_ceil(100).saturating_sub(1);
    sorted
        .get(i.min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

/// Polls `f` every 200 ms until it gives a value; fails the test naming `what` after
/// `within`.
pub async fn wait_for<T>(
    what: &str,
    within: std::time::Duration,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Runs `cmd` to its end and gives its output; fails the test with the command and its
/// stderr when it did not succeed.
pub fn succeeded(
    mut cmd: impl std::borrow::BorrowMut<std::process::Command>,
) -> std::process::Output {
    let cmd = cmd.borrow_mut();
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

//! `kernlet run --standalone` with the repository's examples, as `cargo xtask run`
//! starts it, and its answers to bad input.

#![allow(
    clippy::unwrap_used,
    reason = "a test that cannot go on should stop loudly"
)]

use std::process::Command;

use kernlet_tests::simnode::kernlet_bin;

fn examples() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn dir_flags(tmp: &std::path::Path) -> Vec<String> {
    let d = |n: &str| tmp.join(n).display().to_string();
    vec![
        "--state-dir".into(),
        d("state"),
        "--run-dir".into(),
        d("run"),
        "--log-dir".into(),
        d("logs"),
        "--image-dir".into(),
        d("images"),
        "--cgroup-root".into(),
        "kltest-standalone".into(),
        "--bpffs-dir".into(),
        d("bpf"),
    ]
}

#[test]
fn standalone_reports_every_example_pod_and_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(kernlet_bin().unwrap())
        .args(["run", "--standalone", "--manifests"])
        .arg(examples())
        .args(dir_flags(tmp.path()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("2 pod(s) planned"), "{stdout}");
    assert!(
        stdout.contains("pod demo/web (QoS Burstable, pod network)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("pod demo/tools (QoS Guaranteed, host network)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("container httpd: image busybox:1.36"),
        "{stdout}"
    );
    assert!(
        stdout.contains("nothing was started"),
        "says clearly that the runtime is not there yet"
    );
    let cgroup = kernlet::sys::cgroup::cgroup2_mount()
        .unwrap()
        .join("kltest-standalone");
    assert!(
        stdout.contains(&format!("cgroup {}", cgroup.display())),
        "the cgroup below the real cgroup2 mount: {stdout}"
    );
}

#[test]
fn bad_input_is_named_with_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let manifests = tmp.path().join("m");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(manifests.join("bad.yaml"), "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: c, resources: {limits: {cpu: lots}}}]}\n").unwrap();
    let out = Command::new(kernlet_bin().unwrap())
        .args(["run", "--standalone", "--manifests"])
        .arg(&manifests)
        .args(dir_flags(tmp.path()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml") && err.contains("\"lots\""),
        "{err}"
    );

    let out = Command::new(kernlet_bin().unwrap())
        .args(["run", "--standalone", "--state-dir", "relative"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--state-dir must be an absolute path"));

    let out = Command::new(kernlet_bin().unwrap())
        .args(["run", "--standalone", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap usage error");
}

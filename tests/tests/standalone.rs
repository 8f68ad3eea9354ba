//! `kernlet run --standalone`: its answers to bad input (running pods is tested in
//! `runtime.rs`).

#![allow(
    clippy::unwrap_used,
    reason = "a test that cannot go on should stop loudly"
)]

use std::process::Command;

use kernlet_tests::simnode::kernlet_bin;

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

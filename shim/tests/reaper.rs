//! The reaper against a real child process: its output into the CRI log, its exit, the
//! termination message from the log on error, and what it removes at the end.

use std::os::fd::IntoRawFd as _;
use std::process::{Command, Stdio};

use kernlet_shim::cri::{Rotation, parse_line};
use kernlet_shim::reaper::{Handover, run};
use kernlet_shim::records::{EXIT, ExitRecord, HANDOVER};

#[test]
fn the_reaper_logs_reaps_and_records_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let runtime_state = dir.path().join("libcontainer-state");
    std::fs::create_dir_all(runtime_state.join("x")).unwrap();
    let mut child = Command::new("sh")
        .args(["-c", "echo out; echo err >&2; printf tail; exit 3"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap().into_raw_fd();
    let err = child.stderr.take().unwrap().into_raw_fd();
    let log = dir.path().join("0.log");
    let h = Handover {
        pid: i32::try_from(child.id()).unwrap(),
        outputs: vec![out, err],
        terminal: None,
        stdin: None,
        attach: None,
        stdin_once: false,
        console: None,
        log: log.clone(),
        rotation: Rotation::default(),
        message_from_log_on_error: true,
        cgroup: None,
        runtime_state: Some(runtime_state.clone()),
    };
    std::fs::write(dir.path().join(HANDOVER), serde_json::to_vec(&h).unwrap()).unwrap();
    run(dir.path()).unwrap();
    // The reaper reaped it: nothing is left to wait for.
    assert!(child.try_wait().is_err());
    let exit: ExitRecord =
        serde_json::from_slice(&std::fs::read(dir.path().join(EXIT)).unwrap()).unwrap();
    assert_eq!(
        (exit.exit_code, exit.signal, exit.oom_killed),
        (3, None, false)
    );
    assert_eq!(exit.reason(), "Error");
    // No message file: the log's end, as written (the last line without its newline).
    assert_eq!(exit.message.lines().last(), Some("tail"));
    let records: Vec<_> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter_map(parse_line)
        .map(|r| (r.stream, r.partial, r.text))
        .collect();
    assert!(records.contains(&("stdout".into(), false, "out".into())));
    assert!(records.contains(&("stderr".into(), false, "err".into())));
    assert!(records.contains(&("stdout".into(), true, "tail".into())));
    assert!(!runtime_state.exists(), "the runtime's state is removed");
}

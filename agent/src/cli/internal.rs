//! `kernlet internal …`: kernlet's helper processes.

use std::process::ExitCode;

/// kernlet's helper processes: single-threaded, started by kernlet itself.
/// `kernlet internal shim <bundle>`, `kernlet internal exec <bundle> <timeout-ms>
/// <command...>` and
/// `kernlet internal sandbox <dir> <hostname> <host-network:0|1> <host-ipc:0|1>
/// <pod cgroup for a pause process, or "">`.
pub fn internal(args: &[String]) -> ExitCode {
    match args {
        [cmd, bundle, timeout_ms, command @ ..] if cmd == "exec" => {
            let timeout = std::time::Duration::from_millis(timeout_ms.parse().unwrap_or(1000));
            ExitCode::from(kernlet::runtime::exec::helper_main(
                std::path::Path::new(bundle),
                timeout,
                command,
            ) as u8)
        }
        [cmd, bundle, mode, command @ ..] if cmd == "exec-stream" => {
            ExitCode::from(kernlet::runtime::exec::stream_helper_main(
                std::path::Path::new(bundle),
                kernlet::runtime::exec::StreamMode::parse(mode),
                command,
            ) as u8)
        }
        [cmd, source, dev, shm, read_only] if cmd == "dev-volume" => {
            // A createContainer hook: in the container's mount namespace, before it
            // enters its root.
            let p = std::path::Path::new;
            match kernlet::sys::mount::dev_volume(p(source), p(dev), p(shm), read_only == "ro") {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mounting {source} over the container's /dev ({dev}): {e}");
                    ExitCode::FAILURE
                }
            }
        }
        [cmd, bundle] if cmd == "shim" => {
            ExitCode::from(kernlet::runtime::shim::main(std::path::Path::new(bundle)) as u8)
        }
        [cmd, dir, hostname, _, _, pause_cgroup, userns]
            if cmd == "sandbox" && !userns.is_empty() =>
        {
            user_namespaced_sandbox(dir, hostname, pause_cgroup, userns)
        }
        [cmd, dir, hostname, host_net, host_ipc, pause_cgroup, _] if cmd == "sandbox" => {
            match kernlet::sys::ns::create_here(
                std::path::Path::new(dir),
                hostname,
                host_net == "1",
                host_ipc == "1",
            ) {
                Ok(()) => {}
                Err(e) => {
                    eprintln!("creating the pod namespaces in {dir}: {e}");
                    return ExitCode::FAILURE;
                }
            }
            // A shared PID namespace needs a process to hold it: the pause process.
            if !pause_cgroup.is_empty() {
                match kernlet::sys::ns::start_pause(
                    &std::path::Path::new(pause_cgroup).join("cgroup.procs"),
                ) {
                    Ok(pid) => println!("{pid}"),
                    Err(e) => {
                        eprintln!("starting the pause process of {dir}: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("kernlet internal: not for direct use");
            ExitCode::from(2)
        }
    }
}

/// `kernlet internal sandbox` for a `hostUsers: false` pod: its namespaces made in
/// its own user namespace mapping `userns` (`host_id:length`).
fn user_namespaced_sandbox(
    dir: &str,
    hostname: &str,
    pause_cgroup: &str,
    userns: &str,
) -> ExitCode {
    let range = userns.split_once(':').and_then(|(id, len)| {
        Some(kernlet::sys::userns::IdRange {
            host_id: id.parse().ok()?,
            length: len.parse().ok()?,
        })
    });
    let Some(range) = range else {
        eprintln!("kernlet internal sandbox: {userns:?} is not host_id:length");
        return ExitCode::from(2);
    };
    let pause = (!pause_cgroup.is_empty()).then(|| std::path::Path::new(pause_cgroup));
    match kernlet::sys::userns::create_pod_namespaces(
        std::path::Path::new(dir),
        hostname,
        range,
        pause,
    ) {
        Ok(pid) => {
            if let Some(pid) = pid {
                println!("{pid}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "creating the pod's namespaces in {dir} (user namespace mapping {userns}): {e}"
            );
            ExitCode::FAILURE
        }
    }
}

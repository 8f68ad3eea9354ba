//! The node views of the CLI that read the state directory: pods, containers, logs.

use anyhow::Context as _;

use std::path::PathBuf;

use super::Output;

/// The recorded pod `[namespace/]name` (default namespace: `default`), with its
/// namespace and name; an error naming it when the node has no such pod.
pub fn recorded_pod(
    state_dir: &std::path::Path,
    pod: &str,
) -> anyhow::Result<(String, String, serde_json::Value)> {
    let (ns, name) = pod.split_once('/').unwrap_or(("default", pod));
    kernlet::podworker::recorded_pods(state_dir)
        .into_iter()
        .find(|p| p["metadata"]["namespace"] == ns && p["metadata"]["name"] == name)
        .map(|p| (ns.to_string(), name.to_string(), p))
        .with_context(|| {
            format!(
                "no pod {ns}/{name} on this node (see kernlet pods --state-dir {})",
                state_dir.display()
            )
        })
}

/// What the daemon says of its pods, or that the answer comes from the state directory.
pub fn pods_daemon(run_dir: &std::path::Path) -> serde_json::Value {
    kernlet::daemon::view_of(
        run_dir,
        "pods",
        "pods and containers are read from the state directory and the kernel",
    )
}

/// `kernlet ps`: every recorded container with its pod and state.
pub fn ps(state_dir: &std::path::Path, run_dir: &std::path::Path, output: Output) {
    use kernlet::runtime::container::{ContainerState, records_in, state_in};
    let pods = kernlet::podworker::recorded_pods(state_dir);
    let pod_of = |uid: &str| {
        pods.iter()
            .find(|p| p["metadata"]["uid"] == uid)
            .map(|p| {
                (
                    p["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                    p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                )
            })
            .unwrap_or_default()
    };
    let items: Vec<serde_json::Value> = records_in(state_dir)
        .into_iter()
        .map(|r| {
            let (ns, name) = pod_of(&r.pod_uid);
            let mut item = serde_json::json!({
                "id": r.id, "container": r.name, "attempt": r.restart,
                "pod": {"namespace": ns, "name": name, "uid": r.pod_uid},
                "image": r.image_ref, "imageID": r.image_id, "createdAt": r.created_at,
                "cgroup": r.cgroup, "log": r.log_path,
            });
            match state_in(&state_dir.join("containers").join(&r.id)) {
                ContainerState::Created => item["state"] = "created".into(),
                ContainerState::Running { pid, started_at } => {
                    item["state"] = "running".into();
                    item["pid"] = pid.into();
                    item["startedAt"] = started_at.into();
                }
                ContainerState::Exited { exit, started_at } => {
                    item["state"] = "exited".into();
                    item["exitCode"] = exit.exit_code.into();
                    item["reason"] = exit.reason().into();
                    item["startedAt"] = started_at.unwrap_or_default().into();
                    item["finishedAt"] = exit.finished_at.into();
                }
                ContainerState::Failed(why) => {
                    item["state"] = "failed".into();
                    item["reason"] = why.trim().into();
                }
            }
            item
        })
        .collect();
    let daemon = pods_daemon(run_dir);
    if output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"items": items, "daemon": daemon}))
                .unwrap_or_default()
        );
        return;
    }
    println!("{}", kernlet::daemon::line(&daemon));
    println!(
        "{:<13}  {:<32}  {:<20}  {:<8}  {:<16}  {:<7}  POD",
        "CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT"
    );
    for i in &items {
        let s = |k: &str| i[k].as_str().unwrap_or("").to_string();
        let state = match i["exitCode"].as_i64() {
            Some(code) => format!("{} ({code})", s("state")),
            None => s("state"),
        };
        println!(
            "{:<13}  {:<32}  {:<20}  {:<8}  {:<16}  {:<7}  {}/{}",
            s("id").chars().take(13).collect::<String>(),
            s("image"),
            s("createdAt"),
            state,
            s("container"),
            i["attempt"],
            i["pod"]["namespace"].as_str().unwrap_or(""),
            i["pod"]["name"].as_str().unwrap_or("")
        );
    }
}

/// `kernlet logs`: a container's CRI log as the container wrote it.
pub fn logs(
    state_dir: &std::path::Path,
    pod: &str,
    container: Option<&str>,
    previous: bool,
    tail: Option<usize>,
    timestamps: bool,
) -> anyhow::Result<()> {
    let (ns, name, p) = recorded_pod(state_dir, pod)?;
    let (ns, name, p) = (ns.as_str(), name.as_str(), &p);
    let wanted = container
        .map(str::to_string)
        .or_else(|| {
            p["spec"]["containers"][0]["name"]
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_default();
    let run = kernlet::runtime::logs::run_to_read(state_dir, p, &wanted, previous).with_context(
        || {
            if previous {
                format!("container {wanted:?} of pod {ns}/{name} has no previous run")
            } else {
                format!("pod {ns}/{name} has no container {wanted:?} that ran")
            }
        },
    )?;
    let lines = kernlet::runtime::logs::read_lines(
        &run.log_path,
        &kernlet::runtime::logs::ReadOptions {
            tail,
            timestamps,
            ..Default::default()
        },
    );
    let mut out = std::io::stdout().lock();
    for l in &lines {
        if std::io::Write::write_all(&mut out, l.as_bytes()).is_err() {
            break;
        }
    }
    Ok(())
}

pub fn pods(state_dir: &std::path::Path, run_dir: &std::path::Path, output: Output) {
    let pods = kernlet::podworker::recorded_pods(state_dir);
    let daemon = pods_daemon(run_dir);
    if output == Output::Json {
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": pods, "daemon": daemon});
        println!(
            "{}",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        );
        return;
    }
    println!("{}", kernlet::daemon::line(&daemon));
    println!(
        "{:<16} {:<32} {:<6} {:<18} {:<9} {:<16}",
        "NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "IP"
    );
    for p in &pods {
        let s = |ptr: &str| {
            p.pointer(ptr)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        let statuses = p
            .pointer("/status/containerStatuses")
            .and_then(|v| v.as_array())
            .cloned()
            .unwrap_or_default();
        let ready = statuses.iter().filter(|c| c["ready"] == true).count();
        let restarts: u64 = statuses
            .iter()
            .filter_map(|c| c["restartCount"].as_u64())
            .sum();
        // kubectl's STATUS: a waiting or terminated reason wins over the phase.
        let reason = statuses
            .iter()
            .find_map(|c| {
                c.pointer("/state/waiting/reason")
                    .or_else(|| c.pointer("/state/terminated/reason"))
                    .and_then(|r| r.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| s("/status/phase"));
        println!(
            "{:<16} {:<32} {:<6} {:<18} {:<9} {:<16}",
            s("/metadata/namespace"),
            s("/metadata/name"),
            format!("{ready}/{}", statuses.len()),
            reason,
            restarts,
            s("/status/podIP"),
        );
    }
}

/// `--kubeconfig`, else the one `kernlet join` wrote when there is one.
pub fn joined_kubeconfig(flag: Option<PathBuf>, state_dir: &std::path::Path) -> Option<PathBuf> {
    flag.or_else(|| Some(kernlet::bootstrap::kubeconfig_path(state_dir)).filter(|p| p.exists()))
}

/// A view as pretty JSON or through its table printer.
pub fn print_view(output: Output, v: &serde_json::Value, table: fn(&serde_json::Value) -> String) {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
        Output::Table => print!("{}", table(v)),
    }
}

/// `kernlet inspect`: one pod or container as the node has it.
/// `kernlet top`: readings `interval` seconds apart, printed as a table (refreshed
/// until interrupted unless `once`) or, with `-o json`, once as JSON.
pub fn top(
    state_dir: &std::path::Path,
    cgroup_root: &std::path::Path,
    containers: bool,
    interval: f64,
    once: bool,
    output: Output,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        interval.is_finite() && (0.1..=3600.0).contains(&interval),
        "--interval {interval}: give seconds between 0.1 and 3600"
    );
    let root = kernlet::sys::cgroup::cgroup2_mount()
        .map_err(|e| anyhow::anyhow!("finding the cgroup2 mount: {e}"))?
        .join(cgroup_root);
    let interval = std::time::Duration::from_secs_f64(interval);
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut before = kernlet::top::read(state_dir, &root);
    let mut at = std::time::Instant::now();
    loop {
        std::thread::sleep(interval);
        let after = kernlet::top::read(state_dir, &root);
        let now = std::time::Instant::now();
        let rows = kernlet::top::rows(&before, &after, now - at, containers);
        if output == Output::Json {
            println!(
                "{}",
                serde_json::to_string_pretty(&rows).unwrap_or_default()
            );
        } else {
            if terminal && !once {
                // Clear the screen and go home, as top does.
                print!("\x1b[H\x1b[2J");
            }
            print!("{}", kernlet::top::table(&rows, containers));
        }
        if once {
            return Ok(());
        }
        (before, at) = (after, now);
    }
}

pub fn inspect(
    what: &str,
    output: Output,
    state_dir: &std::path::Path,
    run_dir: &std::path::Path,
    cgroup_root: &std::path::Path,
) -> anyhow::Result<()> {
    let root = kernlet::sys::cgroup::cgroup2_mount()
        .ok()
        .map(|m| m.join(cgroup_root));
    let mut v = kernlet::inspect::inspect(state_dir, root.as_deref(), what)
        .map_err(|e| anyhow::anyhow!(e))?;
    let daemon = pods_daemon(run_dir);
    if output == Output::Json {
        v["daemon"] = daemon;
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!("{}", kernlet::daemon::line(&daemon));
        // The table leaves the pod's spec and status to -o json.
        if let Some(m) = v.as_object_mut() {
            m.remove("spec");
            m.remove("status");
        }
        let mut out = Vec::new();
        kernlet::inspect::lines(&v, "", &mut out);
        println!("{}", out.join("\n"));
    }
    Ok(())
}

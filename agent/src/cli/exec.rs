//! `kernlet exec`: a command in a running container of a recorded pod.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use super::views::recorded_pod;

/// Runs `command` in `container` (default: the pod's first) of `pod`, as `kubectl exec`
/// would, and exits with its code; `stdin`/`tty` make it interactive.
pub fn exec(
    state_dir: &Path,
    pod: &str,
    container: Option<String>,
    timeout: u64,
    (stdin, tty): (bool, bool),
    command: &[String],
) -> anyhow::Result<()> {
    let (ns, name, p) = recorded_pod(state_dir, pod)?;
    let (ns, name, p) = (ns.as_str(), name.as_str(), &p);
    let statuses: Vec<&serde_json::Value> =
        kernlet::model::pod_status::container_statuses(p).collect();
    let wanted = container.clone().or_else(|| {
        p["spec"]["containers"][0]["name"]
            .as_str()
            .map(str::to_string)
    });
    let status = statuses
        .iter()
        .find(|c| Some(c["name"].as_str().unwrap_or("")) == wanted.as_deref())
        .with_context(|| {
            format!(
                "pod {ns}/{name} has no container {:?}",
                wanted.unwrap_or_default()
            )
        })?;
    let id = status["containerID"]
        .as_str()
        .and_then(|c| c.strip_prefix("kernlet://"))
        .filter(|_| status["state"]["running"].is_object())
        .with_context(|| {
            format!(
                "container {} of pod {ns}/{name} is not running",
                status["name"]
            )
        })?;
    let exe =
        kernlet::runtime::sealed_exe::for_tools(state_dir).context("finding the kernlet binary")?;
    if stdin || tty {
        // Interactive: the helper gets this process's own stdin, stdout and
        // stderr (with -t this terminal becomes the command's).
        let status = std::process::Command::new(&exe)
            .arg("internal")
            .arg("exec-stream")
            .arg(state_dir.join("containers").join(id))
            .arg(if tty { "1" } else { "0" })
            .args(command)
            .status()
            .with_context(|| format!("starting the exec helper {}", exe.display()))?;
        std::process::exit(status.code().unwrap_or(1));
    }
    let r = kernlet::runtime::exec::via_helper(
        &exe,
        &state_dir.join("containers").join(id),
        command,
        Duration::from_secs(timeout),
    )
    .map_err(|e| anyhow::anyhow!("exec in {ns}/{name}: {e}"))?;
    print!("{}", r.output);
    if r.timed_out {
        eprintln!("kernlet exec: killed after {timeout} s");
    }
    std::process::exit(r.exit_code.clamp(0, 255));
}

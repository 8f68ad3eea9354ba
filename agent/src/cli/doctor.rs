//! `kernlet doctor`: whether this machine can be a node, and what to do where not.

use kernlet::config::NodeDirs;

use super::Output;
use super::views::joined_kubeconfig;

/// Prints the checks; exits 1 when one fails.
pub fn doctor(
    output: Output,
    dirs: &NodeDirs,
    kubeconfig: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    dirs.validate()?;
    let kubeconfig = joined_kubeconfig(kubeconfig, &dirs.state_dir);
    let facts = kernlet::doctor::gather(dirs, kubeconfig.is_some());
    let cluster = kernlet::node::tokio_runtime()?
        .block_on(kernlet::doctor::cluster_facts(kubeconfig.as_deref()));
    let checks = kernlet::doctor::judge(&facts, &cluster);
    let worst = checks
        .iter()
        .map(|c| c.verdict)
        .max()
        .unwrap_or(kernlet::doctor::Verdict::Ok);
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({"verdict": worst, "checks": checks})
        ),
        Output::Table => print!("{}", kernlet::doctor::table(&checks)),
    }
    if worst == kernlet::doctor::Verdict::Fail {
        std::process::exit(1);
    }
    Ok(())
}

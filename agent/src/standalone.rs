//! Standalone mode: pods from manifest files, no apiserver.
//!
//! Until the runtime lands (issue 4) this reads and validates the manifests and reports
//! what kernlet would run for each pod, then stops.

use std::fmt::Write as _;
use std::path::Path;

use crate::config::NodeDirs;
use crate::model::manifest::{self, ManifestError, ManifestPod};
use crate::model::qos::qos_class;
use crate::model::quantity::QuantityError;

/// Why a standalone plan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("pod {pod} in {source_file}: {error}")]
    Resources {
        pod: String,
        source_file: String,
        error: QuantityError,
    },
    #[error("no pod manifests (*.yaml, *.yml, *.json) in {0}")]
    Empty(String),
}

/// What kernlet would run for one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPlan {
    pub namespace: String,
    pub name: String,
    pub qos: &'static str,
    pub host_network: bool,
    /// `(name, image)` of init containers then containers, in start order.
    pub containers: Vec<(String, String)>,
}

/// Reads the manifests of `dir` and plans every pod.
pub fn plan(dir: &Path) -> Result<Vec<PodPlan>, StandaloneError> {
    let pods = manifest::load_dir(dir)?;
    if pods.is_empty() {
        return Err(StandaloneError::Empty(dir.display().to_string()));
    }
    pods.iter().map(plan_pod).collect()
}

fn plan_pod(mp: &ManifestPod) -> Result<PodPlan, StandaloneError> {
    let name = mp.pod.metadata.name.clone().unwrap_or_default();
    let spec = mp.pod.spec.clone().unwrap_or_default();
    let qos = qos_class(&spec).map_err(|error| StandaloneError::Resources {
        pod: name.clone(),
        source_file: mp.source.display().to_string(),
        error,
    })?;
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
        .collect();
    Ok(PodPlan {
        namespace: mp
            .pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        name,
        qos: qos.as_str(),
        host_network: spec.host_network.unwrap_or(false),
        containers,
    })
}

/// The report printed by `kernlet run --standalone`; `cgroup2` is the cgroup2 mount,
/// when there is one.
pub fn render(plans: &[PodPlan], dirs: &NodeDirs, cgroup2: Option<&Path>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "kernlet standalone: {} pod(s) planned", plans.len());
    for p in plans {
        let net = if p.host_network {
            "host network"
        } else {
            "pod network"
        };
        let _ = writeln!(
            out,
            "  pod {}/{} (QoS {}, {net})",
            p.namespace, p.name, p.qos
        );
        for (name, image) in &p.containers {
            let _ = writeln!(out, "    container {name}: image {image}");
        }
    }
    let _ = writeln!(
        out,
        "state {} · logs {} · cgroup {} · bpffs {}",
        dirs.state_dir.display(),
        dirs.log_dir.display(),
        cgroup2.map_or_else(
            || format!("<no cgroup2 mount>/{}", dirs.cgroup_root.display()),
            |m| m.join(&dirs.cgroup_root).display().to_string()
        ),
        dirs.bpffs_dir.display()
    );
    let _ = writeln!(
        out,
        "the pod runtime is not built yet: nothing was started, kernlet stops here"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_pods_from_a_directory_in_file_order() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("b.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  initContainers: [{name: init, image: busybox}]\n  containers: [{name: main, image: nginx, resources: {limits: {cpu: 100m, memory: 64Mi}}}]\n",
        )
        .unwrap();
        std::fs::write(
            tmp.path().join("a.yml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: tools, namespace: ops}\nspec: {hostNetwork: true, containers: [{name: sh, image: busybox}]}\n",
        )
        .unwrap();
        std::fs::write(tmp.path().join("notes.txt"), "not a manifest").unwrap();
        let plans = plan(tmp.path()).unwrap();
        assert_eq!(
            plans,
            vec![
                PodPlan {
                    namespace: "ops".into(),
                    name: "tools".into(),
                    qos: "BestEffort",
                    host_network: true,
                    containers: vec![("sh".into(), "busybox".into())],
                },
                PodPlan {
                    namespace: "default".into(),
                    name: "web".into(),
                    qos: "Burstable", // the init container sets no limits
                    host_network: false,
                    containers: vec![
                        ("init".into(), "busybox".into()),
                        ("main".into(), "nginx".into())
                    ],
                },
            ]
        );
    }

    #[test]
    fn empty_directory_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let err = plan(tmp.path()).unwrap_err().to_string();
        assert!(err.contains(&tmp.path().display().to_string()), "{err}");
    }
}

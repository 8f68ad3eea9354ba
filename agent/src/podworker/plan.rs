//! What `kernlet run` would start for a manifest directory, without starting it.

use super::*;

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
    pods.iter().map(plan_pod).collect()
}

pub(super) fn plan_pod(mp: &ManifestPod) -> Result<PodPlan, StandaloneError> {
    let name = mp.pod.metadata.name.clone().unwrap_or_default();
    let spec = mp.pod.spec.clone().unwrap_or_default();
    let qos = qos_class(&spec).map_err(|error| StandaloneError::Resources {
        pod: name.clone(),
        source_file: mp.source.display().to_string(),
        error,
    })?;
    let containers = pod_lifecycle::all_containers(&spec)
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
    fn static_pod_uids_follow_the_manifest() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "a"}})).unwrap();
        let other: Pod = serde_json::from_value(json!({"metadata": {"name": "b"}})).unwrap();
        let u = static_uid(Path::new("/m/a.yaml"), &pod);
        assert_eq!(u.len(), 36);
        assert_eq!(u, static_uid(Path::new("/m/a.yaml"), &pod));
        assert_ne!(u, static_uid(Path::new("/m/a.yaml"), &other));
        assert_ne!(u, static_uid(Path::new("/m/b.yaml"), &pod));
    }
}

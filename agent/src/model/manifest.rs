//! Manifests for standalone mode: multi-document YAML (or JSON) files holding Pods.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;

/// A manifest that cannot be used, naming the file and the document in it.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file or directory could not be read.
    #[error("cannot read manifests at {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid YAML.
    #[error("{path}: not valid YAML: {message}")]
    Yaml { path: PathBuf, message: String },
    /// A document is not an object the standalone mode runs.
    #[error("{path}, document {index}: {message}")]
    Document {
        path: PathBuf,
        index: usize,
        message: String,
    },
}

/// A pod read from a manifest file, with where it came from.
#[derive(Clone, Debug)]
pub struct ManifestPod {
    pub source: PathBuf,
    pub pod: Pod,
}

/// Reads every `*.yaml`, `*.yml` and `*.json` file of `dir` (sorted by name) as Pods.
pub fn load_dir(dir: &Path) -> Result<Vec<ManifestPod>, ManifestError> {
    let read_err = |source| ManifestError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            )
        })
        .collect();
    files.sort();
    let mut pods = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|source| ManifestError::Read {
            path: file.clone(),
            source,
        })?;
        pods.extend(parse_pods(&file, &text)?);
    }
    Ok(pods)
}

/// Parses the documents of one file; every document must be a `v1` `Pod`.
pub fn parse_pods(path: &Path, text: &str) -> Result<Vec<ManifestPod>, ManifestError> {
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(text).map_err(|e| ManifestError::Yaml {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let mut pods = Vec::new();
    for (index, doc) in docs.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        let index = index + 1;
        let doc_err = |message: String| ManifestError::Document {
            path: path.to_path_buf(),
            index,
            message,
        };
        let api_version = doc.get("apiVersion").and_then(|v| v.as_str());
        let kind = doc.get("kind").and_then(|v| v.as_str());
        if (api_version, kind) != (Some("v1"), Some("Pod")) {
            return Err(doc_err(format!(
                "standalone mode runs Pods only (apiVersion: v1, kind: Pod), found apiVersion {} kind {}",
                api_version.unwrap_or("<missing>"),
                kind.unwrap_or("<missing>")
            )));
        }
        let pod: Pod = serde_json::from_value(doc).map_err(|e| doc_err(e.to_string()))?;
        let name = pod.metadata.name.clone().unwrap_or_default();
        if name.is_empty() {
            return Err(doc_err("metadata.name is required".into()));
        }
        match pod.spec.as_ref() {
            Some(spec) if !spec.containers.is_empty() => {}
            _ => {
                return Err(doc_err(format!(
                    "pod {name:?} has no spec.containers; a pod needs at least one container"
                )));
            }
        }
        pods.push(ManifestPod {
            source: path.to_path_buf(),
            pod,
        });
    }
    Ok(pods)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_lifecycle_pods_parse_and_namespace_is_refused() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/k8s/kubelet/lifecycle-pods.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        // The first document is a Namespace: standalone mode says what it runs.
        let err = parse_pods(&path, &text).unwrap_err().to_string();
        assert!(err.contains("document 1"), "{err}");
        assert!(err.contains("kind Namespace"), "{err}");
        let pods_only = text.split_once("---\n").unwrap().1;
        let pods = parse_pods(&path, pods_only).unwrap();
        let names: Vec<_> = pods
            .iter()
            .map(|p| p.pod.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "exit0", "exit3", "crash", "notready", "liveness", "initfail"
            ]
        );
    }

    #[test]
    fn malformed_yaml_names_the_file() {
        let err = parse_pods(Path::new("bad.yaml"), "kind: Pod\n  - : [").unwrap_err();
        assert!(
            err.to_string().starts_with("bad.yaml: not valid YAML"),
            "{err}"
        );
    }

    #[test]
    fn pod_without_containers_is_refused() {
        let err = parse_pods(
            Path::new("p.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: []}\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("no spec.containers"), "{err}");
    }
}

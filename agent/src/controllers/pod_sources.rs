//! What a pod's containers and volumes read from the apiserver: configMaps and
//! secrets (whole or by key), service account tokens bound to the pod, downward API
//! values, the Service variables and the image pull secrets.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use serde_json::json;

use crate::client::SharedClient;

/// Why a source of a pod's files or variables could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{what} has no key {key:?}")]
    NoKey { what: String, key: String },
    #[error("downwardAPI item {0:?} has no source")]
    NoSource(String),
    #[error("downwardAPI resourceFieldRef names no container {0:?}")]
    NoContainer(String),
    #[error(transparent)]
    Field(#[from] crate::model::env::EnvError),
    #[error("building the token request: {0}")]
    TokenRequest(serde_json::Error),
    #[error("{0}")]
    Unsupported(String),
}

impl SourceError {
    /// Whether the apiserver said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Api { source: kube::Error::Api(e), .. } if e.code == 404)
    }
}

/// One file of a volume: path inside the volume, content, mode.
pub type VolumeFile = (String, Vec<u8>, u32);

/// What volume contents draw on besides the apiserver and the pod.
#[derive(Clone, Debug, Default)]
pub struct VolumeContext {
    pub node_ip: String,
    pub pod_ip: String,
    /// The node's allocatable CPU (millicores) and memory (bytes), for
    /// `resourceFieldRef` of containers without limits.
    pub allocatable: (u64, u64),
    /// Service account tokens already in the volume and not yet due for refresh, by
    /// path: reused instead of requesting new ones.
    pub keep_tokens: BTreeMap<String, Vec<u8>>,
    /// Whether the pod runs as one user ([`crate::model::pod_lifecycle::fs_user`]) or
    /// has an fsGroup: its service account tokens are then 0600 (0640 with the group),
    /// as kubelet writes them.
    pub private_tokens: bool,
}

/// The items of a configMap or secret: all keys, or the listed ones at their paths.
fn items(
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<k8s_openapi::api::core::v1::KeyToPath>>,
    mode: u32,
    what: &str,
) -> Result<Vec<VolumeFile>, SourceError> {
    match items {
        None => Ok(data.into_iter().map(|(k, v)| (k, v, mode)).collect()),
        Some(list) => list
            .iter()
            .map(|i| {
                let v = data.get(&i.key).ok_or_else(|| SourceError::NoKey {
                    what: what.to_string(),
                    key: i.key.clone(),
                })?;
                Ok((i.path.clone(), v.clone(), i.mode.map_or(mode, |m| m as u32)))
            })
            .collect(),
    }
}

/// A configMap's or secret's keys with their bytes: the text keys, then the binary
/// ones (`binaryData` of a configMap, `data` of a secret).
fn keyed_bytes(
    text: Option<BTreeMap<String, String>>,
    binary: Option<BTreeMap<String, k8s_openapi::ByteString>>,
) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = text
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    out.extend(
        binary
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0)),
    );
    out
}

/// Object `name` of kind `K` in `ns`; `what` names its kind in the error.
async fn get_object<K>(
    client: &SharedClient,
    ns: &str,
    name: &str,
    what: &str,
) -> Result<K, SourceError>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    Api::<K>::namespaced(client.get(), ns)
        .get(name)
        .await
        .map_err(|source| SourceError::Api {
            what: format!("{what} {ns}/{name}"),
            source,
        })
}

async fn config_map(
    client: &SharedClient,
    ns: &str,
    name: &str,
) -> Result<BTreeMap<String, Vec<u8>>, SourceError> {
    let cm: k8s_openapi::api::core::v1::ConfigMap =
        get_object(client, ns, name, "configMap").await?;
    Ok(keyed_bytes(cm.data, cm.binary_data))
}

async fn secret(
    client: &SharedClient,
    ns: &str,
    name: &str,
) -> Result<BTreeMap<String, Vec<u8>>, SourceError> {
    let s: k8s_openapi::api::core::v1::Secret = get_object(client, ns, name, "secret").await?;
    // stringData is write-only: the apiserver folds it into data.
    Ok(keyed_bytes(s.string_data, s.data))
}

async fn token(
    client: &SharedClient,
    pod: &Pod,
    audience: Option<&str>,
    seconds: Option<i64>,
) -> Result<Vec<u8>, SourceError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let request: k8s_openapi::api::authentication::v1::TokenRequest = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {
            "audiences": audience.map(|a| vec![a]).unwrap_or_default(),
            "expirationSeconds": seconds.unwrap_or(3607),
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod.metadata.name, "uid": pod.metadata.uid},
        },
    }))
    .map_err(SourceError::TokenRequest)?;
    let api: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.get(), &ns);
    let answer: k8s_openapi::api::authentication::v1::TokenRequest = api
        .create_subresource("token", &sa, &kube::api::PostParams::default(), &request)
        .await
        .map_err(|source| SourceError::Api {
            what: format!("token for service account {ns}/{sa}"),
            source,
        })?;
    Ok(answer
        .status
        .and_then(|s| s.token)
        .unwrap_or_default()
        .into_bytes())
}

/// The files of a configMap or secret (all keys, or the listed ones); a missing one
/// that is `optional` gives none.
#[allow(clippy::too_many_arguments, reason = "one volume source's parts")]
async fn keyed_files(
    client: &SharedClient,
    ns: &str,
    secret_source: bool,
    name: &str,
    list: Option<&Vec<k8s_openapi::api::core::v1::KeyToPath>>,
    optional: Option<bool>,
    mode: u32,
) -> Result<Vec<VolumeFile>, SourceError> {
    let data = if secret_source {
        secret(client, ns, name).await
    } else {
        config_map(client, ns, name).await
    };
    match data {
        Ok(data) => {
            let what = format!(
                "{} {name}",
                if secret_source { "secret" } else { "configMap" }
            );
            items(data, list, mode, &what)
        }
        Err(e) if optional == Some(true) && e.is_not_found() => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The files of downward API items.
fn downward_files(
    pod: &Pod,
    list: Option<&Vec<k8s_openapi::api::core::v1::DownwardAPIVolumeFile>>,
    mode: u32,
    ctx: &VolumeContext,
) -> Result<Vec<VolumeFile>, SourceError> {
    list.into_iter()
        .flatten()
        .map(|i| {
            let value = match (&i.field_ref, &i.resource_field_ref) {
                (Some(f), _) => {
                    crate::model::env::field_value(pod, &ctx.node_ip, &ctx.pod_ip, &f.field_path)
                        .map_err(SourceError::Field)?
                }
                (None, Some(r)) => {
                    let name = r.container_name.clone().unwrap_or_default();
                    let c = pod
                        .spec
                        .iter()
                        .flat_map(crate::model::pod_lifecycle::all_containers)
                        .find(|c| c.name == name)
                        .ok_or_else(|| SourceError::NoContainer(name.clone()))?;
                    crate::model::env::resource_value(c, r, ctx.allocatable.0, ctx.allocatable.1)
                        .map_err(SourceError::Field)?
                }
                (None, None) => return Err(SourceError::NoSource(i.path.clone())),
            };
            Ok((
                i.path.clone(),
                value.into_bytes(),
                i.mode.map_or(mode, |m| m as u32),
            ))
        })
        .collect()
}

/// A configMap's (or with `secret`, a secret's) data; `Ok(None)` when it does not
/// exist.
pub async fn source_data(
    client: &SharedClient,
    ns: &str,
    secret: bool,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, SourceError> {
    let found = if secret {
        self::secret(client, ns, name).await
    } else {
        config_map(client, ns, name).await
    };
    match found {
        Ok(data) => Ok(Some(data)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// The service variables of a container in namespace `ns`: the apiserver's Service
/// (`KUBERNETES_*`, always) and with service links every Service of `ns`. From the
/// Services watch (`cache`) once it has listed; listed here until then.
pub async fn service_env(
    client: &SharedClient,
    cache: &super::service_links::ServiceLinks,
    ns: &str,
    links: bool,
) -> Result<Vec<(String, String)>, SourceError> {
    use k8s_openapi::api::core::v1::Service;
    if let Some(services) = cache.of(ns, links) {
        return Ok(crate::model::env::service_links(&services));
    }
    let describe = super::service_links::linked;
    let mut services = Vec::new();
    if links && ns != "default" {
        let list = Api::<Service>::namespaced(client.get(), ns)
            .list(&Default::default())
            .await
            .map_err(|source| SourceError::Api {
                what: format!("listing the services of {ns}"),
                source,
            })?;
        services.extend(list.items.iter().filter_map(describe));
    }
    let default = Api::<Service>::namespaced(client.get(), "default")
        .list(&Default::default())
        .await
        .map_err(|source| SourceError::Api {
            what: "listing the services of default".into(),
            source,
        })?;
    services.extend(
        default
            .items
            .iter()
            .filter(|s| {
                (links && ns == "default") || s.metadata.name.as_deref() == Some("kubernetes")
            })
            .filter_map(describe),
    );
    Ok(crate::model::env::service_links(&services))
}

/// The registry credentials of a pod's `imagePullSecrets`. Like kubelet, a secret that
/// is missing or unusable is named in the log and the pull goes on without it.
pub async fn pull_secrets(
    client: &SharedClient,
    pod: &Pod,
) -> Vec<crate::runtime::image::pull::DockerConfig> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let names = pod
        .spec
        .iter()
        .flat_map(|s| s.image_pull_secrets.iter().flatten())
        .map(|r| r.name.clone());
    let mut out = Vec::new();
    for name in names {
        let parsed = secret(client, &ns, &name)
            .await
            .map_err(|e| e.to_string())
            .and_then(|data| {
                crate::runtime::image::pull::DockerConfig::from_secret(&data)
                    .map_err(|e| e.to_string())
            });
        match parsed {
            Ok(c) => out.push(c),
            Err(e) => tracing::warn!(
                pod = %format!("{ns}/{}", pod.metadata.name.as_deref().unwrap_or_default()),
                "image pull secret {name:?} is not used: {e}"
            ),
        }
    }
    out
}

/// The files of a pod's configMap, secret, downwardAPI or projected volume, read from
/// the apiserver (a service account token is requested bound to the pod). `None` for
/// volume types that hold no such files.
pub async fn volume_files(
    client: &SharedClient,
    pod: &Pod,
    vol: &k8s_openapi::api::core::v1::Volume,
    ctx: &VolumeContext,
) -> Result<Option<Vec<VolumeFile>>, SourceError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mode_of = |m: Option<i32>| m.map_or(0o644, |m| m as u32);
    if let Some(cm) = &vol.config_map {
        let mode = mode_of(cm.default_mode);
        let files = keyed_files(
            client,
            &ns,
            false,
            &cm.name,
            cm.items.as_ref(),
            cm.optional,
            mode,
        )
        .await?;
        return Ok(Some(files));
    }
    if let Some(s) = &vol.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let mode = mode_of(s.default_mode);
        let files =
            keyed_files(client, &ns, true, &name, s.items.as_ref(), s.optional, mode).await?;
        return Ok(Some(files));
    }
    if let Some(d) = &vol.downward_api {
        return downward_files(pod, d.items.as_ref(), mode_of(d.default_mode), ctx).map(Some);
    }
    let Some(p) = &vol.projected else {
        return Ok(None);
    };
    let mode = mode_of(p.default_mode);
    let mut files = Vec::new();
    for src in p.sources.iter().flatten() {
        if let Some(t) = &src.service_account_token {
            let token = match ctx.keep_tokens.get(&t.path) {
                Some(kept) => kept.clone(),
                None => token(client, pod, t.audience.as_deref(), t.expiration_seconds).await?,
            };
            let mode = if ctx.private_tokens { 0o600 } else { mode };
            files.push((t.path.clone(), token, mode));
        }
        if let Some(cm) = &src.config_map {
            files.extend(
                keyed_files(
                    client,
                    &ns,
                    false,
                    &cm.name,
                    cm.items.as_ref(),
                    cm.optional,
                    mode,
                )
                .await?,
            );
        }
        if let Some(s) = &src.secret {
            files.extend(
                keyed_files(
                    client,
                    &ns,
                    true,
                    &s.name,
                    s.items.as_ref(),
                    s.optional,
                    mode,
                )
                .await?,
            );
        }
        if let Some(d) = &src.downward_api {
            files.extend(downward_files(pod, d.items.as_ref(), mode, ctx)?);
        }
        if src.cluster_trust_bundle.is_some() || src.pod_certificate.is_some() {
            return Err(SourceError::Unsupported(format!(
                "projected volume {:?}: clusterTrustBundle and podCertificate sources are not supported yet",
                vol.name
            )));
        }
    }
    Ok(Some(files))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> SourceError {
        SourceError::Api {
            what: "configMap ns/cfg".into(),
            source: kube::Error::Api(
                kube::core::Status::failure("gone", "NotFound")
                    .with_code(code)
                    .boxed(),
            ),
        }
    }

    #[test]
    fn only_the_apiservers_404_is_not_found() {
        assert!(api_error(404).is_not_found());
        assert!(!api_error(403).is_not_found());
        assert!(
            !SourceError::NoKey {
                what: "configMap ns/cfg".into(),
                key: "404".into()
            }
            .is_not_found()
        );
    }

    #[test]
    fn listed_items_name_a_missing_key() {
        let data: BTreeMap<String, Vec<u8>> = [("a".to_string(), b"1".to_vec())].into();
        let list: Vec<k8s_openapi::api::core::v1::KeyToPath> =
            serde_json::from_value(json!([{"key": "a", "path": "x/a", "mode": 0o400}])).unwrap();
        assert_eq!(
            items(data.clone(), Some(&list), 0o644, "configMap ns/cfg").unwrap(),
            vec![("x/a".to_string(), b"1".to_vec(), 0o400)]
        );
        let missing: Vec<k8s_openapi::api::core::v1::KeyToPath> =
            serde_json::from_value(json!([{"key": "b", "path": "b"}])).unwrap();
        let err = items(data, Some(&missing), 0o644, "configMap ns/cfg").unwrap_err();
        assert_eq!(err.to_string(), "configMap ns/cfg has no key \"b\"");
    }
}

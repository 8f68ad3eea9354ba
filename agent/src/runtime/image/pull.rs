//! Pulling images from OCI distribution registries (oci-client): anonymous, basic and
//! bearer-token auth (the registry's `WWW-Authenticate` challenge decides), credentials
//! from dockerconfigjson (a pod's imagePullSecrets, then the node's file), plain HTTP
//! only for registries named insecure, manifest lists and indexes resolved to
//! linux/<this arch>, every blob verified against its digest by the store, pulls of one
//! image coalesced.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use super::{ImageError, ImageRecord, ImageStore, layout};
use crate::model::image_ref::ImageRef;

/// The media types kernlet accepts for manifests.
const MANIFEST_TYPES: [&str; 4] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// A dockerconfigjson (`~/.docker/config.json`, `kubernetes.io/dockerconfigjson`).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct DockerConfig {
    #[serde(default)]
    pub auths: BTreeMap<String, AuthEntry>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct AuthEntry {
    pub auth: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// Why registry credentials cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("not a {format}: {source}")]
    Json {
        format: &'static str,
        source: serde_json::Error,
    },
    #[error("it has neither a .dockerconfigjson nor a .dockercfg key")]
    NoKey,
}

impl DockerConfig {
    pub fn parse(bytes: &[u8]) -> Result<Self, CredentialsError> {
        serde_json::from_slice(bytes).map_err(|source| CredentialsError::Json {
            format: "dockerconfigjson",
            source,
        })
    }

    /// The credentials of an image pull secret: `.dockerconfigjson` of a
    /// `kubernetes.io/dockerconfigjson` secret, or the older `.dockercfg` (the `auths`
    /// map without its wrapper) of a `kubernetes.io/dockercfg` one.
    pub fn from_secret(data: &BTreeMap<String, Vec<u8>>) -> Result<Self, CredentialsError> {
        if let Some(json) = data.get(".dockerconfigjson") {
            return Self::parse(json);
        }
        if let Some(cfg) = data.get(".dockercfg") {
            let auths = serde_json::from_slice(cfg).map_err(|source| CredentialsError::Json {
                format: "dockercfg",
                source,
            })?;
            return Ok(Self { auths });
        }
        Err(CredentialsError::NoKey)
    }

    /// The user and password for `registry` (`host[:port]`): keys may carry a scheme
    /// and a path (`https://index.docker.io/v1/` for Docker Hub).
    pub fn lookup(&self, registry: &str) -> Option<(String, String)> {
        let want = if registry == "docker.io" {
            "index.docker.io"
        } else {
            registry
        };
        self.auths.iter().find_map(|(key, e)| {
            let host = key
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .split('/')
                .next()
                .unwrap_or("");
            let host = if host == "docker.io" {
                "index.docker.io"
            } else {
                host
            };
            if host != want {
                return None;
            }
            if let (Some(u), Some(p)) = (&e.username, &e.password) {
                return Some((u.clone(), p.clone()));
            }
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(e.auth.as_deref()?.trim())
                .ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let (u, p) = text.split_once(':')?;
            Some((u.to_string(), p.to_string()))
        })
    }
}

/// How this node reaches registries.
#[derive(Clone, Debug, Default)]
pub struct RegistryConfig {
    /// `host:port` of registries that speak plain HTTP.
    pub insecure: Vec<String>,
    /// Extra CA certificates (PEM) trusted for registries.
    pub ca_pems: Vec<Vec<u8>>,
    /// The node's credentials.
    pub credentials: DockerConfig,
}

/// The [`auth_key`] of anonymous pulls.
pub const ANONYMOUS: &str = "anonymous";

/// Which credentials `auth` is, without keeping a secret in the text.
pub fn auth_key(auth: &RegistryAuth) -> String {
    let hash = |s: &str| {
        super::layer::sha256_hex(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            s.as_bytes(),
        ))
    };
    match auth {
        RegistryAuth::Anonymous => ANONYMOUS.into(),
        RegistryAuth::Basic(u, p) => format!("basic {}", hash(&format!("{u}\0{p}"))),
        RegistryAuth::Bearer(t) => format!("bearer {}", hash(t)),
    }
}

/// The gate of one image's pull: holds the result once the pull succeeded.
type Gate = Arc<tokio::sync::Mutex<Option<ImageRecord>>>;

/// Pulls images into the store.
pub struct Puller {
    /// One client per set of credentials, built on its first pull (building one reads
    /// the system's CA certificates, and a node that only imports images may have
    /// none). A client keeps the first credentials it is given for a registry and the
    /// tokens it got with them, so a shared one would pull for one pod with another
    /// pod's secret.
    clients: Mutex<HashMap<String, Arc<oci_client::Client>>>,
    store: ImageStore,
    cfg: RegistryConfig,
    /// Pulls under way, by reference: later pulls of the same image wait on the gate
    /// and take the first one's result.
    inflight: Mutex<HashMap<String, Gate>>,
}

impl std::fmt::Debug for Puller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Puller")
            .field("store", &self.store.root())
            .field("insecure", &self.cfg.insecure)
            .finish_non_exhaustive()
    }
}

fn pull_error(
    reference: &ImageRef,
    insecure: bool,
    e: oci_client::errors::OciDistributionError,
) -> ImageError {
    use oci_client::errors::OciDistributionError as E;
    let registry = &reference.registry;
    let text = e.to_string();
    let why = match &e {
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => format!(
            "registry {registry} refused the credentials ({text}); check the pod's imagePullSecrets or the node's --image-credentials"
        ),
        E::ImageManifestNotFoundError(_) => {
            format!("{reference} is not in registry {registry} ({text})")
        }
        _ if [
            "manifest unknown",
            "name unknown",
            "MANIFEST_UNKNOWN",
            "NAME_UNKNOWN",
        ]
        .iter()
        .any(|m| text.contains(m)) =>
        {
            format!("{reference} is not in registry {registry} (check the name and tag)")
        }
        _ if text.contains("error sending request") || text.contains("connect") => {
            if insecure {
                format!("cannot reach registry {registry} over plain HTTP: {text}")
            } else {
                format!(
                    "cannot reach registry {registry} over HTTPS: {text}; if it serves plain HTTP, pass --insecure-registry {registry}; \
                     if its certificate is from a private CA, pass --registry-ca FILE"
                )
            }
        }
        _ => format!("pulling from {registry}: {text}"),
    };
    ImageError::BadImage(format!("pulling {reference}: {why}"))
}

impl Puller {
    pub fn new(store: ImageStore, cfg: RegistryConfig) -> Self {
        Self {
            clients: Mutex::new(HashMap::new()),
            store,
            cfg,
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// The client for pulls with `auth`.
    fn client(&self, auth: &RegistryAuth) -> Result<Arc<oci_client::Client>, ImageError> {
        let key = auth_key(auth);
        let mut clients = self
            .clients
            .lock()
            .map_err(|_| ImageError::BadImage("puller poisoned".into()))?;
        if let Some(c) = clients.get(&key) {
            return Ok(Arc::clone(c));
        }
        let c = Arc::new(self.build_client().map_err(ImageError::BadImage)?);
        clients.insert(key, Arc::clone(&c));
        Ok(c)
    }

    fn build_client(&self) -> Result<oci_client::Client, String> {
        let cfg = &self.cfg;
        let config = oci_client::client::ClientConfig {
            protocol: if cfg.insecure.is_empty() {
                oci_client::client::ClientProtocol::Https
            } else {
                oci_client::client::ClientProtocol::HttpsExcept(cfg.insecure.clone())
            },
            extra_root_certificates: cfg
                .ca_pems
                .iter()
                .map(|pem| oci_client::client::Certificate {
                    encoding: oci_client::client::CertificateEncoding::Pem,
                    data: pem.clone(),
                })
                .collect(),
            platform_resolver: Some(Box::new(oci_client::client::current_platform_resolver)),
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            ..Default::default()
        };
        // oci-client falls back to a default HTTP client when the configured one cannot
        // be built, and that one panics without system CA certificates.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| oci_client::Client::new(config))).map_err(|_| {
            "cannot create the registry client: no CA certificates on this node (install ca-certificates) \
             or a bad --registry-ca"
                .to_string()
        })
    }

    /// The credentials to try for a registry, in order: the pod's secrets, then the
    /// node's; anonymous when none names the registry (kubelet tries each in turn).
    fn auths(&self, registry: &str, secrets: &[DockerConfig]) -> Vec<RegistryAuth> {
        let mut out: Vec<RegistryAuth> = Vec::new();
        for (u, p) in secrets
            .iter()
            .chain(std::iter::once(&self.cfg.credentials))
            .filter_map(|c| c.lookup(registry))
        {
            let auth = RegistryAuth::Basic(u, p);
            if !out.iter().any(|a| auth_key(a) == auth_key(&auth)) {
                out.push(auth);
            }
        }
        if out.is_empty() {
            out.push(RegistryAuth::Anonymous);
        }
        out
    }

    /// The stored image `reference` names, when a pod with `secrets` may use it
    /// without a new pull (see [`ImageStore::usable_with`]).
    pub fn present_for(
        &self,
        reference: &ImageRef,
        secrets: &[DockerConfig],
    ) -> Result<Option<ImageRecord>, ImageError> {
        let Some(image) = self.store.resolve(&reference.to_string())? else {
            return Ok(None);
        };
        let keys: Vec<String> = self
            .auths(&reference.registry, secrets)
            .iter()
            .map(auth_key)
            .collect();
        Ok(self.store.usable_with(&image.id, &keys)?.then_some(image))
    }

    /// Pulls `reference` (normalized) into the store and names it there.
    pub async fn pull(
        &self,
        reference: &ImageRef,
        secrets: &[DockerConfig],
    ) -> Result<ImageRecord, ImageError> {
        let auths = self.auths(&reference.registry, secrets);
        // Pulls coalesce only when they would use the same credentials: a pod never
        // gets an image through another pod's secret.
        let key = std::iter::once(reference.to_string())
            .chain(auths.iter().map(auth_key))
            .collect::<Vec<_>>()
            .join(" ");
        let gate = {
            let mut m = self
                .inflight
                .lock()
                .map_err(|_| ImageError::BadImage("puller poisoned".into()))?;
            Arc::clone(m.entry(key.clone()).or_default())
        };
        // A second pull of the same image waits for the first and reuses its result.
        let mut slot = gate.lock().await;
        if let Some(record) = slot.as_ref() {
            tracing::info!(image = %reference, "pulled by a concurrent request; reusing it");
            return Ok(record.clone());
        }
        let mut last = None;
        for auth in &auths {
            match self.pull_with(reference, auth).await {
                Ok(record) => {
                    // Waiters already holding the gate get the result; later pulls
                    // start afresh.
                    *slot = Some(record.clone());
                    if let Ok(mut m) = self.inflight.lock() {
                        m.remove(&key);
                    }
                    return Ok(record);
                }
                Err(e) => {
                    if auths.len() > 1 {
                        tracing::info!(image = %reference, "{e}; trying the next credentials");
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            ImageError::BadImage(format!("pulling {reference}: no credentials to try"))
        }))
    }

    /// One pull of `reference` with `auth`.
    async fn pull_with(
        &self,
        reference: &ImageRef,
        auth: &RegistryAuth,
    ) -> Result<ImageRecord, ImageError> {
        let started = Instant::now();
        let insecure = self.cfg.insecure.contains(&reference.registry);
        let err = |e| pull_error(reference, insecure, e);
        let client = self.client(auth)?;
        let oci_ref: oci_client::Reference = match (&reference.tag, &reference.digest) {
            (_, Some(d)) => oci_client::Reference::with_digest(
                reference.registry.clone(),
                reference.repository.clone(),
                d.clone(),
            ),
            (Some(t), None) => oci_client::Reference::with_tag(
                reference.registry.clone(),
                reference.repository.clone(),
                t.clone(),
            ),
            (None, None) => oci_client::Reference::with_tag(
                reference.registry.clone(),
                reference.repository.clone(),
                "latest".into(),
            ),
        };
        tracing::info!(image = %reference, "pulling");
        let (bytes, _) = client
            .pull_manifest_raw(&oci_ref, auth, &MANIFEST_TYPES)
            .await
            .map_err(err)?;
        let mut digest = super::layer::sha256_hex(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            &bytes,
        ));
        if let Some(pinned) = &reference.digest
            && *pinned != digest
        {
            return Err(ImageError::BadImage(format!(
                "pulling {reference}: the registry sent a manifest with digest {digest}: corrupted or tampered with"
            )));
        }
        let mut manifest = bytes.to_vec();
        let media: String = serde_json::from_slice::<serde_json::Value>(&manifest)
            .ok()
            .and_then(|v| {
                v.get("mediaType")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_default();
        let is_index = media.contains("index")
            || media.contains("manifest.list")
            || serde_json::from_slice::<serde_json::Value>(&manifest)
                .is_ok_and(|v| v.get("manifests").is_some());
        if is_index {
            self.store
                .put_blob(&digest, manifest.len() as u64, &manifest[..])?;
            let index: oci_spec::image::ImageIndex =
                serde_json::from_slice(&manifest).map_err(|e| {
                    ImageError::BadImage(format!(
                        "pulling {reference}: the image index is not valid: {e}"
                    ))
                })?;
            let chosen = index
                .manifests()
                .iter()
                .find(|d| {
                    d.platform().as_ref().is_some_and(|p| {
                        p.os().to_string() == "linux"
                            && p.architecture().to_string() == layout::this_arch()
                    })
                })
                .ok_or_else(|| {
                    ImageError::BadImage(format!(
                        "pulling {reference}: no manifest for linux/{}",
                        layout::this_arch()
                    ))
                })?;
            let by_digest = oci_client::Reference::with_digest(
                reference.registry.clone(),
                reference.repository.clone(),
                chosen.digest().to_string(),
            );
            let (bytes, _) = client
                .pull_manifest_raw(&by_digest, auth, &MANIFEST_TYPES)
                .await
                .map_err(err)?;
            manifest = bytes.to_vec();
            digest = chosen.digest().to_string();
        }
        // The store verifies the manifest against the digest it was asked for.
        self.store
            .put_blob(&digest, manifest.len() as u64, &manifest[..])?;
        let parsed: oci_spec::image::ImageManifest =
            serde_json::from_slice(&manifest).map_err(|e| {
                ImageError::BadImage(format!(
                    "pulling {reference}: the manifest is not valid: {e}"
                ))
            })?;
        let mut blobs = vec![parsed.config().clone()];
        blobs.extend(parsed.layers().iter().cloned());
        let mut bytes_pulled = 0u64;
        for d in &blobs {
            let bd = d.digest().to_string();
            if self.store.blob_path(&bd).is_some_and(|p| p.exists()) {
                continue;
            }
            let work = self.store.work_dir()?;
            let tmp = work.0.join("blob");
            let file = tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| ImageError::BadImage(format!("pulling {reference}: {e}")))?;
            let desc = oci_client::manifest::OciDescriptor {
                media_type: d.media_type().to_string(),
                digest: bd.clone(),
                size: i64::try_from(d.size()).unwrap_or(i64::MAX),
                ..Default::default()
            };
            client.pull_blob(&oci_ref, &desc, file).await.map_err(err)?;
            let f = std::fs::File::open(&tmp)
                .map_err(|e| ImageError::BadImage(format!("pulling {reference}: {e}")))?;
            self.store.put_blob(&bd, d.size(), f)?;
            bytes_pulled += d.size();
            tracing::info!(image = %reference, blob = %bd, bytes = d.size(), "blob pulled");
        }
        let store = self.store.clone();
        let manifest_digest = digest.clone();
        let reference_owned = reference.clone();
        let key = auth_key(auth);
        let record = tokio::task::spawn_blocking(move || {
            let lock = store.lock()?;
            let record = store.assemble(&manifest_digest, &mut |d, _| {
                if store.blob_path(d).is_some_and(|p| p.exists()) {
                    Ok(())
                } else {
                    Err(ImageError::BadImage(format!("blob {d} was not pulled")))
                }
            })?;
            store.tag_pulled(&lock, &reference_owned, record.clone(), &key)?;
            Ok::<_, ImageError>(record)
        })
        .await
        .map_err(|e| ImageError::BadImage(format!("pulling {reference}: {e}")))??;
        tracing::info!(image = %reference, id = %record.id, bytes = bytes_pulled, elapsed = ?started.elapsed(), "pulled");
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_lookup_by_host() {
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        let cfg = DockerConfig::parse(
            format!(
                r#"{{"auths": {{"https://198.18.0.5:5000/v2/": {{"auth": "{auth}"}},
                    "https://index.docker.io/v1/": {{"username": "bob", "password": "pw"}}}}}}"#
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(
            cfg.lookup("198.18.0.5:5000"),
            Some(("alice".into(), "s3cret".into()))
        );
        assert_eq!(cfg.lookup("docker.io"), Some(("bob".into(), "pw".into())));
        assert_eq!(cfg.lookup("example.com"), None);
        assert!(DockerConfig::parse(b"nope").is_err());
    }

    fn basic(user: &str, pass: &str) -> DockerConfig {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        DockerConfig::parse(
            format!(r#"{{"auths": {{"reg:5000": {{"auth": "{auth}"}}}}}}"#).as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn pull_secrets_in_both_formats() {
        let mut data = BTreeMap::new();
        data.insert(
            ".dockercfg".to_string(),
            br#"{"reg:5000": {"username": "u", "password": "p"}}"#.to_vec(),
        );
        let old = DockerConfig::from_secret(&data).unwrap();
        assert_eq!(old.lookup("reg:5000"), Some(("u".into(), "p".into())));
        data.insert(
            ".dockerconfigjson".to_string(),
            br#"{"auths": {"reg:5000": {"username": "v", "password": "q"}}}"#.to_vec(),
        );
        let new = DockerConfig::from_secret(&data).unwrap();
        assert_eq!(new.lookup("reg:5000"), Some(("v".into(), "q".into())));
        let err = DockerConfig::from_secret(&BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains(".dockerconfigjson"), "{err}");
    }

    #[test]
    fn credentials_tried_in_order_and_images_kept_to_their_holders() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let node = RegistryConfig {
            credentials: basic("node", "n"),
            ..Default::default()
        };
        let puller = Puller::new(store.clone(), node);
        let pod = [basic("pod", "p"), basic("pod", "p"), basic("other", "o")];
        let keys: Vec<String> = puller
            .auths("reg:5000", &pod)
            .iter()
            .map(auth_key)
            .collect();
        // The pod's secrets first (duplicates once), then the node's.
        assert_eq!(keys.len(), 3, "{keys:?}");
        assert_eq!(
            keys[0],
            auth_key(&RegistryAuth::Basic("pod".into(), "p".into()))
        );
        assert_eq!(
            keys[2],
            auth_key(&RegistryAuth::Basic("node".into(), "n".into()))
        );
        let anonymous = Puller::new(store.clone(), RegistryConfig::default());
        assert_eq!(
            anonymous
                .auths("reg:5000", &[])
                .iter()
                .map(auth_key)
                .collect::<Vec<_>>(),
            [ANONYMOUS]
        );

        let image = |id: &str| ImageRecord {
            id: id.into(),
            config_digest: id.into(),
            layers: Vec::new(),
            run: Default::default(),
            size: 0,
        };
        let lock = store.lock().unwrap();
        let r = |s: &str| ImageRef::parse(s).unwrap();
        let pod_key = auth_key(&RegistryAuth::Basic("pod".into(), "p".into()));
        store
            .tag_pulled(
                &lock,
                &r("reg:5000/private:1"),
                image("sha256:aa"),
                &pod_key,
            )
            .unwrap();
        store
            .tag_pulled(
                &lock,
                &r("reg:5000/public:1"),
                image("sha256:bb"),
                ANONYMOUS,
            )
            .unwrap();
        store
            .tag(&lock, &r("reg:5000/imported:1"), image("sha256:cc"))
            .unwrap();
        // Imported first, pulled later with credentials: still open to all.
        store
            .tag_pulled(
                &lock,
                &r("reg:5000/imported:2"),
                image("sha256:cc"),
                &pod_key,
            )
            .unwrap();
        drop(lock);
        assert!(
            store
                .usable_with("sha256:aa", std::slice::from_ref(&pod_key))
                .unwrap()
        );
        assert!(!store.usable_with("sha256:aa", &[]).unwrap());
        assert!(!store.usable_with("sha256:aa", &[ANONYMOUS.into()]).unwrap());
        assert!(store.usable_with("sha256:bb", &[]).unwrap());
        assert!(store.usable_with("sha256:cc", &[]).unwrap());
        let private = r("reg:5000/private:1");
        assert!(puller.present_for(&private, &pod).unwrap().is_some());
        assert!(
            puller
                .present_for(&private, &[basic("pod", "wrong")])
                .unwrap()
                .is_none()
        );
        // The record holds no secret.
        let text = std::fs::read_to_string(dir.path().join("images.json")).unwrap();
        assert!(!text.contains("\"p\"") && !text.contains("pod:p"), "{text}");
    }
}

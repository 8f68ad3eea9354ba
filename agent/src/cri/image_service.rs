//! The CRI `ImageService` over kernlet's image store: list, status, pull (with the
//! credentials of the request), remove (refused while a container uses the image) and
//! the image filesystem's usage.

use std::collections::BTreeMap;
use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::proto::{self, image_service_server::ImageService};
use super::view::now_nanos;
use super::{Cri, chunks};
use crate::model::image_ref::ImageRef;
use crate::runtime::image::pull::{AuthEntry, DockerConfig};
use crate::runtime::image::{ImageStore, Listed};

type Answer<T> = Result<Response<T>, Status>;

fn store_error(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("the image store: {e}"))
}

/// The stored image `what` names: a reference, an image ID (`sha256:…`) or the start
/// of one, as containerd resolves them.
pub fn find(store: &ImageStore, what: &str) -> Result<Option<Listed>, Status> {
    let listed = store.list().map_err(store_error)?;
    if let Ok(Some(record)) = store.resolve(what) {
        return Ok(listed.into_iter().find(|l| l.image.id == record.id));
    }
    let hex = what.strip_prefix("sha256:").unwrap_or(what);
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let mut hits = listed
        .into_iter()
        .filter(|l| l.image.id.trim_start_matches("sha256:").starts_with(hex));
    match (hits.next(), hits.next()) {
        (Some(one), None) => Ok(Some(one)),
        (None, _) => Ok(None),
        (Some(_), Some(_)) => Err(Status::invalid_argument(format!(
            "image ID prefix \"{what}\" is ambiguous: give more of it"
        ))),
    }
}

/// A stored image in the CRI's shape.
pub fn to_cri(l: &Listed) -> proto::Image {
    let (repo_digests, repo_tags): (Vec<String>, Vec<String>) =
        l.references.iter().cloned().partition(|r| r.contains('@'));
    let user = l.image.run.user.split(':').next().unwrap_or("");
    let (uid, username) = match user.parse::<i64>() {
        Ok(value) => (Some(proto::Int64Value { value }), String::new()),
        Err(_) => (None, user.to_string()),
    };
    proto::Image {
        id: l.image.id.clone(),
        repo_tags,
        repo_digests,
        size: l.image.size,
        uid,
        username,
        spec: Some(proto::ImageSpec {
            image: l.image.id.clone(),
            ..Default::default()
        }),
        pinned: false,
    }
}

/// The credentials of a pull request as a docker config for its registry.
pub fn credentials(auth: Option<proto::AuthConfig>, reference: &ImageRef) -> Vec<DockerConfig> {
    let Some(a) = auth else { return Vec::new() };
    let entry = AuthEntry {
        auth: (!a.auth.is_empty()).then_some(a.auth),
        username: (!a.username.is_empty()).then_some(a.username),
        password: (!a.password.is_empty()).then_some(a.password),
    };
    if entry.auth.is_none() && entry.username.is_none() {
        return Vec::new();
    }
    let server = if a.server_address.is_empty() {
        reference.registry.clone()
    } else {
        a.server_address
    };
    vec![DockerConfig {
        auths: BTreeMap::from([(server, entry)]),
    }]
}

impl Cri {
    fn images(&self, filter: Option<proto::ImageFilter>) -> Result<Vec<proto::Image>, Status> {
        let wanted = filter
            .and_then(|f| f.image)
            .map(|i| i.image)
            .filter(|i| !i.is_empty());
        match wanted {
            Some(w) => Ok(find(&self.rt.images, &w)?.iter().map(to_cri).collect()),
            None => Ok(self
                .rt
                .images
                .list()
                .map_err(store_error)?
                .iter()
                .map(to_cri)
                .collect()),
        }
    }
}

fn image_spec(spec: Option<proto::ImageSpec>) -> Result<String, Status> {
    spec.map(|i| i.image)
        .filter(|i| !i.is_empty())
        .ok_or_else(|| Status::invalid_argument("no image given"))
}

#[tonic::async_trait]
impl ImageService for Cri {
    async fn list_images(
        &self,
        req: Request<proto::ListImagesRequest>,
    ) -> Answer<proto::ListImagesResponse> {
        let images = self.images(req.into_inner().filter)?;
        Ok(Response::new(proto::ListImagesResponse { images }))
    }

    type StreamImagesStream =
        Pin<Box<dyn Stream<Item = Result<proto::StreamImagesResponse, Status>> + Send>>;

    async fn stream_images(
        &self,
        req: Request<proto::StreamImagesRequest>,
    ) -> Answer<Self::StreamImagesStream> {
        let images = self.images(req.into_inner().filter)?;
        Ok(Response::new(chunks(images, |images| {
            proto::StreamImagesResponse { images }
        })))
    }

    async fn image_status(
        &self,
        req: Request<proto::ImageStatusRequest>,
    ) -> Answer<proto::ImageStatusResponse> {
        let req = req.into_inner();
        let what = image_spec(req.image)?;
        let found = find(&self.rt.images, &what)?;
        let mut info = std::collections::HashMap::new();
        if let (true, Some(l)) = (req.verbose, &found) {
            info.insert(
                "info".into(),
                serde_json::to_string(&l.image).map_err(|e| Status::internal(e.to_string()))?,
            );
        }
        Ok(Response::new(proto::ImageStatusResponse {
            image: found.as_ref().map(to_cri),
            info,
        }))
    }

    async fn pull_image(
        &self,
        req: Request<proto::PullImageRequest>,
    ) -> Answer<proto::PullImageResponse> {
        let req = req.into_inner();
        let what = image_spec(req.image)?;
        let reference = ImageRef::parse(&what)
            .map_err(|e| Status::invalid_argument(format!("image \"{what}\": {e}")))?;
        let secrets = credentials(req.auth, &reference);
        let record = self
            .rt
            .puller
            .pull(&reference, &secrets)
            .await
            .map_err(|e| Status::unknown(format!("pulling {reference}: {e}")))?;
        Ok(Response::new(proto::PullImageResponse {
            image_ref: record.id,
        }))
    }

    async fn remove_image(
        &self,
        req: Request<proto::RemoveImageRequest>,
    ) -> Answer<proto::RemoveImageResponse> {
        let what = image_spec(req.into_inner().image)?;
        // Removing what is not there succeeds, as the CRI asks.
        let Some(found) = find(&self.rt.images, &what)? else {
            return Ok(Response::new(proto::RemoveImageResponse {}));
        };
        let id = found.image.id.clone();
        let users: Vec<String> = self
            .rt
            .containers()
            .into_iter()
            .filter(|c| c.image_id == id)
            .map(|c| c.id)
            .collect();
        if !users.is_empty() {
            return Err(Status::failed_precondition(format!(
                "image {id} is used by container(s) {}: their layers are its layers; it goes \
                 once their pods are gone",
                users.join(", ")
            )));
        }
        let store = self.rt.images.clone();
        tokio::task::spawn_blocking(move || store.remove(&id))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(store_error)?;
        Ok(Response::new(proto::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _: Request<proto::ImageFsInfoRequest>,
    ) -> Answer<proto::ImageFsInfoResponse> {
        let (images, containers) = (
            self.rt.images.root().to_path_buf(),
            self.rt.cfg.state_dir.join("containers"),
        );
        let usage = tokio::task::spawn_blocking(move || {
            let at = now_nanos();
            let fs = |dir: &std::path::Path| {
                let (bytes, inodes) = crate::sys::stats::disk_usage(dir);
                proto::FilesystemUsage {
                    timestamp: at,
                    fs_id: Some(proto::FilesystemIdentifier {
                        mountpoint: dir.display().to_string(),
                    }),
                    used_bytes: Some(proto::UInt64Value { value: bytes }),
                    inodes_used: Some(proto::UInt64Value { value: inodes }),
                }
            };
            (fs(&images), fs(&containers))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(proto::ImageFsInfoResponse {
            image_filesystems: vec![usage.0],
            container_filesystems: vec![usage.1],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_credentials_name_the_registry_of_the_image() {
        let r = ImageRef::parse("registry.example:5000/app:1").unwrap();
        let auth = proto::AuthConfig {
            username: "u".into(),
            password: "p".into(),
            ..Default::default()
        };
        let c = credentials(Some(auth), &r);
        assert_eq!(
            c[0].lookup("registry.example:5000"),
            Some(("u".into(), "p".into()))
        );
        assert!(credentials(Some(proto::AuthConfig::default()), &r).is_empty());
        assert!(credentials(None, &r).is_empty());
    }
}

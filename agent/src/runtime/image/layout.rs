//! Importing images from an OCI image layout (a directory, or an `oci-archive` tar of
//! one) for nodes without a registry: every blob is verified against its digest on the
//! way into the store, every layer unpacked as hostile.

use std::io::Read;
use std::path::{Path, PathBuf};

use oci_spec::image::ImageIndex;

use super::{ImageError, ImageRecord, ImageStore, digest_hex};
use crate::model::image_ref::ImageRef;

/// The annotation that names a manifest in a layout's index.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The OCI architecture name of this machine.
pub fn this_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// One imported image.
#[derive(Debug, Clone)]
pub struct Imported {
    pub reference: ImageRef,
    pub image: ImageRecord,
}

fn bad(source: &Path, why: impl std::fmt::Display) -> ImageError {
    ImageError::BadImage(format!("{}: {why}", source.display()))
}

/// The reference an imported manifest is recorded under: `--name` if given (with the
/// layout's tag when `--name` has none), else the layout's `ref.name` if it is a full
/// reference.
pub fn reference_for(
    source: &Path,
    ref_name: Option<&str>,
    name: Option<&str>,
) -> Result<ImageRef, ImageError> {
    match (name, ref_name) {
        (Some(n), layout_tag) => {
            let mut r = ImageRef::parse(n)?;
            let explicit =
                n.rsplit('/').next().is_some_and(|last| last.contains(':')) || r.digest.is_some();
            if !explicit && let Some(t) = layout_tag.filter(|t| !t.contains(['/', ':'])) {
                r.tag = Some(t.to_string());
            }
            Ok(r)
        }
        (None, Some(full)) if full.contains(['/', ':']) => Ok(ImageRef::parse(full)?),
        (None, Some(tag)) => Err(bad(
            source,
            format!(
                "the layout names this image only by the tag {tag:?}; pass --name REPOSITORY (e.g. --name example.com/app)"
            ),
        )),
        (None, None) => Err(bad(
            source,
            "the layout gives this image no name; pass --name REFERENCE",
        )),
    }
}

/// Copies the layout parts of an `oci-archive` tar into `into`: only `oci-layout`,
/// `index.json` and `blobs/sha256/<hex>` regular files; the names are rebuilt from
/// validated parts, so an entry cannot land anywhere else.
fn extract_archive(archive: &Path, into: &Path) -> Result<(), ImageError> {
    let f = std::fs::File::open(archive).map_err(|e| bad(archive, format!("cannot open: {e}")))?;
    let mut tar = tar::Archive::new(f);
    let entries = tar
        .entries()
        .map_err(|e| bad(archive, format!("not a tar archive: {e}")))?;
    std::fs::create_dir_all(into.join("blobs/sha256")).map_err(|e| bad(into, e))?;
    for e in entries {
        let mut e = e.map_err(|e| bad(archive, format!("reading the tar: {e}")))?;
        if !e.header().entry_type().is_file() {
            continue;
        }
        let raw = e.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw);
        let name = name.trim_start_matches("./");
        let dest = match name {
            "oci-layout" | "index.json" => into.join(name),
            other => match other
                .strip_prefix("blobs/")
                .map(|d| format!("sha256:{}", d.trim_start_matches("sha256/")))
            {
                Some(d) if other.starts_with("blobs/sha256/") && digest_hex(&d).is_some() => {
                    into.join("blobs/sha256").join(&d[7..])
                }
                _ => continue,
            },
        };
        let mut out = std::fs::File::create(&dest).map_err(|e| bad(&dest, e))?;
        std::io::copy(&mut e, &mut out)
            .map_err(|e| bad(archive, format!("reading {name}: {e}")))?;
    }
    Ok(())
}

struct Layout<'a> {
    dir: PathBuf,
    source: &'a Path,
    store: &'a ImageStore,
}

impl Layout<'_> {
    fn blob_file(&self, digest: &str) -> Result<std::fs::File, ImageError> {
        let hex = digest_hex(digest)
            .ok_or_else(|| bad(self.source, format!("{digest:?} is not a sha256 digest")))?;
        let path = self.dir.join("blobs/sha256").join(hex);
        std::fs::File::open(&path)
            .map_err(|e| bad(self.source, format!("blob {digest} is missing ({e})")))
    }

    /// Stores a blob from the layout (verified) and returns its bytes if `small`.
    fn store_blob(&self, digest: &str, size: u64) -> Result<(), ImageError> {
        let f = self.blob_file(digest)?;
        self.store.put_blob(digest, size, f)?;
        Ok(())
    }

    fn json_blob<T: serde::de::DeserializeOwned>(
        &self,
        digest: &str,
        size: u64,
        what: &str,
    ) -> Result<T, ImageError> {
        self.store_blob(digest, size)?;
        let bytes = self.store.read_blob(digest)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| bad(self.source, format!("{what} {digest} is not valid: {e}")))
    }

    /// Picks this platform's manifest from an index.
    fn pick_platform(&self, index: &ImageIndex) -> Result<(String, u64), ImageError> {
        index
            .manifests()
            .iter()
            .find(|d| {
                d.platform().as_ref().is_some_and(|p| {
                    p.os().to_string() == "linux" && p.architecture().to_string() == this_arch()
                })
            })
            .map(|d| (d.digest().to_string(), d.size()))
            .ok_or_else(|| {
                bad(
                    self.source,
                    format!("the image index has no manifest for linux/{}", this_arch()),
                )
            })
    }

    fn manifest(&self, digest: &str, size: u64) -> Result<ImageRecord, ImageError> {
        self.store_blob(digest, size)?;
        self.store
            .assemble(digest, &mut |d, size| self.store_blob(d, size))
            .map_err(|e| match e {
                ImageError::BadImage(why) => bad(self.source, why),
                other => other,
            })
    }
}

/// Imports every image of the layout (directory or archive) at `source`; `name` names
/// them when the layout does not (see [`reference_for`]).
pub fn import(
    store: &ImageStore,
    source: &Path,
    name: Option<&str>,
) -> Result<Vec<Imported>, ImageError> {
    let lock = store.lock()?;
    let meta = std::fs::metadata(source).map_err(|e| bad(source, format!("cannot read: {e}")))?;
    let work = store.work_dir()?;
    let dir = if meta.is_dir() {
        source.to_path_buf()
    } else {
        extract_archive(source, &work.0)?;
        work.0.clone()
    };
    let mut marker = String::new();
    std::fs::File::open(dir.join("oci-layout"))
        .and_then(|mut f| f.read_to_string(&mut marker))
        .map_err(|_| bad(source, "not an OCI image layout (no oci-layout file); build one with umoci or `skopeo copy ... oci:DIR:TAG`"))?;
    let index_text = std::fs::read(dir.join("index.json"))
        .map_err(|e| bad(source, format!("index.json: {e}")))?;
    let index: ImageIndex = serde_json::from_slice(&index_text)
        .map_err(|e| bad(source, format!("index.json is not valid: {e}")))?;
    if index.manifests().is_empty() {
        return Err(bad(source, "index.json lists no images"));
    }
    if name.is_some() && index.manifests().len() > 1 {
        let tags: Vec<_> = index
            .manifests()
            .iter()
            .filter_map(|d| d.annotations().as_ref()?.get(REF_NAME))
            .collect();
        if tags.len() != index.manifests().len() {
            return Err(bad(
                source,
                "--name with several images needs each to carry a ref.name tag",
            ));
        }
    }
    let layout = Layout { dir, source, store };
    let mut out = Vec::new();
    for d in index.manifests() {
        let ref_name = d
            .annotations()
            .as_ref()
            .and_then(|a| a.get(REF_NAME))
            .map(String::as_str);
        let reference = reference_for(source, ref_name, name)?;
        let media = d.media_type().to_string();
        let (digest, size) = if media.contains("image.index") || media.contains("manifest.list") {
            let nested: ImageIndex =
                layout.json_blob(d.digest().as_ref(), d.size(), "image index")?;
            layout.pick_platform(&nested)?
        } else {
            (d.digest().to_string(), d.size())
        };
        let image = layout.manifest(&digest, size)?;
        store.tag(&lock, &reference, image.clone())?;
        tracing::info!(image = %reference, id = %image.id, "imported");
        out.push(Imported { reference, image });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_for_imported_images() {
        let p = Path::new("x");
        let r = |ref_name, name| reference_for(p, ref_name, name).map(|r| r.to_string());
        assert_eq!(
            r(Some("1.36"), Some("busybox")).unwrap(),
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(
            r(Some("1.36"), Some("example.com/bb:2")).unwrap(),
            "example.com/bb:2"
        );
        assert_eq!(
            r(None, Some("example.com/bb")).unwrap(),
            "example.com/bb:latest"
        );
        assert_eq!(
            r(Some("docker.io/library/busybox:1.36"), None).unwrap(),
            "docker.io/library/busybox:1.36"
        );
        let e = r(Some("1.36"), None).unwrap_err().to_string();
        assert!(e.contains("--name"), "{e}");
        assert!(r(None, None).is_err());
    }
}

//! The image store: content-addressed blobs, unpacked layers shared between images,
//! and a record of which reference names which image.
//!
//! ```text
//! <image-dir>/blobs/sha256/<hex>   manifests, configs, compressed layers (verified)
//! <image-dir>/layers/<hex>/        a layer unpacked, named by its diff ID
//! <image-dir>/images.json          references → image records (written atomically)
//! <image-dir>/tmp/                 work in progress; emptied when the store opens
//! <image-dir>/lock                 flock held while the record changes
//! ```
//! A blob or layer appears under its final name only once complete and verified
//! (written to `tmp/`, renamed), so a crash never leaves a half-written one.

pub mod layer;
pub mod layout;
pub mod pull;

use std::collections::BTreeMap;
use std::io::{self, Read, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::image_ref::ImageRef;
use crate::state;

/// How many file bytes one layer may unpack to unless configured otherwise.
pub const DEFAULT_MAX_LAYER_BYTES: u64 = 32 << 30;

/// What went wrong with an image, naming it and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image store {dir}: {what}: {source}")]
    Store {
        dir: PathBuf,
        what: String,
        source: io::Error,
    },
    #[error("blob {digest}: {why}")]
    BadBlob { digest: String, why: String },
    #[error(transparent)]
    Layer(#[from] layer::LayerError),
    #[error("{0}")]
    BadImage(String),
    #[error(transparent)]
    Ref(#[from] crate::model::image_ref::RefError),
    #[error(
        "image {0} is not in the store (see `kernlet image ls`; import it with `kernlet image import`)"
    )]
    NotFound(String),
    #[error(transparent)]
    State(#[from] state::StateError),
}

/// A layer of an image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the blob as stored (compressed).
    pub digest: String,
    /// Digest of the uncompressed tar (the directory under `layers/`).
    pub diff_id: String,
    pub size: u64,
}

/// What a container needs from the image config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunConfig {
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: String,
    #[serde(default)]
    pub user: String,
    /// The image's `StopSignal` (empty: none; records of older versions lack it).
    #[serde(default)]
    pub stop_signal: String,
}

/// One image: its manifest, config and layers (bottom first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageRecord {
    /// Digest of the manifest: the image ID kernlet reports (`imageID`).
    pub id: String,
    pub config_digest: String,
    pub layers: Vec<LayerRecord>,
    pub run: RunConfig,
    /// Compressed size of config and layers.
    pub size: u64,
}

impl ImageRecord {
    /// The image's unpacked layers, top first, by their names in the store's layer
    /// directory (an overlay's lower directories).
    pub fn lower(&self) -> Vec<String> {
        self.layers
            .iter()
            .rev()
            .map(|l| l.diff_id.trim_start_matches("sha256:").to_string())
            .collect()
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Records {
    /// Image ID → image.
    images: BTreeMap<String, ImageRecord>,
    /// Normalized reference → image ID.
    references: BTreeMap<String, String>,
    /// Image ID → the credentials (as [`pull::auth_key`]s, never the secrets) that
    /// pulled it. An image without an entry was imported by the node's admin and may
    /// be used by every pod; one pulled with credentials may be used without a new
    /// pull only by pods that hold one of them (kubelet's ensure-secret-pulled-images);
    /// `anonymous` among them opens it to all.
    #[serde(default)]
    pulled_with: BTreeMap<String, std::collections::BTreeSet<String>>,
}

/// What `remove` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub references: Vec<String>,
    pub images: Vec<String>,
    pub layers: usize,
    pub blobs: usize,
}

/// An image as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listed {
    pub references: Vec<String>,
    pub image: ImageRecord,
}

/// `sha256:<hex>` → `<hex>`, refusing anything else (digests become file names).
pub fn digest_hex(digest: &str) -> Option<&str> {
    digest.strip_prefix("sha256:").filter(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The image store of one kernlet instance.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
    max_layer_bytes: u64,
}

/// The store's lock: held by whoever adds images or removes them, so a removal's
/// garbage collection never takes blobs an import is still adding.
pub struct StoreLock(
    #[allow(dead_code, reason = "held for its drop")] nix::fcntl::Flock<std::fs::File>,
);

impl ImageStore {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        let store = Self {
            root: root.to_path_buf(),
            max_layer_bytes: DEFAULT_MAX_LAYER_BYTES,
        };
        for d in ["blobs/sha256", "layers", "tmp"] {
            std::fs::create_dir_all(root.join(d))
                .map_err(|e| store.err(format!("creating {d}"), e))?;
        }
        // Unpacked layers keep their setuid files and images may hold secrets: the
        // store is root's alone (containerd's is 0700 too), so no user of the node
        // runs an image's setuid-root program.
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| store.err("restricting the store to root", e))?;
        }
        Ok(store)
    }

    /// Sets how many file bytes one layer may unpack to.
    pub fn with_max_layer_bytes(mut self, max: u64) -> Self {
        self.max_layer_bytes = max;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn err(&self, what: impl Into<String>, source: io::Error) -> ImageError {
        ImageError::Store {
            dir: self.root.clone(),
            what: what.into(),
            source,
        }
    }

    /// Takes the store's lock (blocking while another process holds it).
    pub fn lock(&self) -> Result<StoreLock, ImageError> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join("lock"))
            .map_err(|e| self.err("opening the lock", e))?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map(StoreLock)
            .map_err(|(_, e)| self.err("locking", io::Error::from_raw_os_error(e as i32)))
    }

    /// A fresh private work directory under `tmp/`, removed when dropped.
    pub(crate) fn work_dir(&self) -> Result<WorkDir, ImageError> {
        let name = format!(
            "{}-{}",
            std::process::id(),
            k8s_openapi::jiff::Timestamp::now().as_nanosecond()
        );
        let path = self.root.join("tmp").join(name);
        std::fs::create_dir(&path).map_err(|e| self.err("creating a work directory", e))?;
        Ok(WorkDir(path))
    }

    /// Removes work directories that no live process owns (left by a crash).
    pub fn clean_tmp(&self) {
        for e in std::fs::read_dir(self.root.join("tmp"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let owner = name.split('-').next().and_then(|p| p.parse::<u32>().ok());
            if owner.is_none_or(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// Path of a stored blob.
    pub fn blob_path(&self, digest: &str) -> Option<PathBuf> {
        digest_hex(digest).map(|h| self.root.join("blobs/sha256").join(h))
    }

    /// Path of an unpacked layer.
    pub fn layer_path(&self, diff_id: &str) -> Option<PathBuf> {
        digest_hex(diff_id).map(|h| self.root.join("layers").join(h))
    }

    /// Stores a blob read from `from`, verifying its size and digest; a blob already
    /// present is not read again.
    pub fn put_blob(
        &self,
        digest: &str,
        size: u64,
        from: impl Read,
    ) -> Result<PathBuf, ImageError> {
        let bad = |why: String| ImageError::BadBlob {
            digest: digest.to_string(),
            why,
        };
        let path = self
            .blob_path(digest)
            .ok_or_else(|| bad("not a sha256 digest; only sha256 is supported".into()))?;
        if path.exists() {
            return Ok(path);
        }
        let work = self.work_dir()?;
        let tmp = work.0.join("blob");
        let mut f = std::fs::File::create(&tmp).map_err(|e| self.err("creating a blob", e))?;
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut from = from.take(size.saturating_add(1));
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        loop {
            let n = from
                .read(&mut buf)
                .map_err(|e| self.err(format!("reading blob {digest}"), e))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            ctx.update(&buf[..n]);
            f.write_all(&buf[..n])
                .map_err(|e| self.err("writing a blob", e))?;
        }
        if total != size {
            return Err(bad(format!(
                "{total}{} bytes where the descriptor says {size}",
                if total > size { "+" } else { "" }
            )));
        }
        let actual = layer::sha256_hex(ctx.finish());
        if actual != digest {
            return Err(bad(format!(
                "the content's digest is {actual}: corrupted or tampered with"
            )));
        }
        f.sync_all().map_err(|e| self.err("writing a blob", e))?;
        std::fs::rename(&tmp, &path).map_err(|e| self.err("storing a blob", e))?;
        Ok(path)
    }

    /// Reads a stored blob whole (manifests and configs; small).
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let path = self.blob_path(digest).ok_or_else(|| ImageError::BadBlob {
            digest: digest.into(),
            why: "not a sha256 digest".into(),
        })?;
        let meta =
            std::fs::metadata(&path).map_err(|e| self.err(format!("reading blob {digest}"), e))?;
        if meta.len() > 4 << 20 {
            return Err(ImageError::BadBlob {
                digest: digest.into(),
                why: format!("{} bytes is too large for a manifest or config", meta.len()),
            });
        }
        std::fs::read(&path).map_err(|e| self.err(format!("reading blob {digest}"), e))
    }

    /// Unpacks a stored layer blob unless a layer with `diff_id` is already there.
    pub fn unpack_layer(&self, blob_digest: &str, diff_id: &str) -> Result<PathBuf, ImageError> {
        let dest = self.layer_path(diff_id).ok_or_else(|| {
            ImageError::BadImage(format!("diff ID {diff_id:?} is not a sha256 digest"))
        })?;
        if dest.exists() {
            return Ok(dest);
        }
        let blob = self
            .blob_path(blob_digest)
            .ok_or_else(|| ImageError::BadBlob {
                digest: blob_digest.into(),
                why: "not a sha256 digest".into(),
            })?;
        let f = std::fs::File::open(&blob)
            .map_err(|e| self.err(format!("opening blob {blob_digest}"), e))?;
        let work = self.work_dir()?;
        let tree = work.0.join("layer");
        std::fs::create_dir(&tree).map_err(|e| self.err("creating a layer", e))?;
        let unpacked = layer::unpack(f, &tree, blob_digest, self.max_layer_bytes)?;
        if unpacked.diff_id != diff_id {
            return Err(ImageError::BadImage(format!(
                "layer {blob_digest} unpacks to {}, but the image config says {diff_id}: the image is corrupt or tampered with",
                unpacked.diff_id
            )));
        }
        if !unpacked.skipped_devices.is_empty() {
            tracing::info!(layer = %blob_digest, devices = ?unpacked.skipped_devices, "device nodes in the layer were skipped");
        }
        match std::fs::rename(&tree, &dest) {
            Ok(()) => Ok(dest),
            // Another import unpacked the same layer meanwhile.
            Err(_) if dest.exists() => Ok(dest),
            Err(e) => Err(self.err("storing a layer", e)),
        }
    }

    /// Builds the record of the image whose manifest blob `digest` is stored, unpacking
    /// its layers; `fetch(digest, size)` must store a blob the manifest names (config,
    /// layers) when it is not there yet.
    pub fn assemble(
        &self,
        digest: &str,
        fetch: &mut dyn FnMut(&str, u64) -> Result<(), ImageError>,
    ) -> Result<ImageRecord, ImageError> {
        use oci_spec::image::{ImageConfiguration, ImageManifest};
        let bad = |why: String| ImageError::BadImage(why);
        let manifest: ImageManifest = serde_json::from_slice(&self.read_blob(digest)?)
            .map_err(|e| bad(format!("manifest {digest} is not valid: {e}")))?;
        let cdesc = manifest.config();
        let cdigest = cdesc.digest().to_string();
        fetch(&cdigest, cdesc.size())?;
        let config: ImageConfiguration = serde_json::from_slice(&self.read_blob(&cdigest)?)
            .map_err(|e| bad(format!("image config {cdigest} is not valid: {e}")))?;
        let (os, arch) = (config.os().to_string(), config.architecture().to_string());
        let this = layout::this_arch();
        if os != "linux" || arch != this {
            return Err(bad(format!(
                "image {digest} is for {os}/{arch}; this node is linux/{this}"
            )));
        }
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(bad(format!(
                "image {digest} has {} layers but its config lists {} diff IDs",
                manifest.layers().len(),
                diff_ids.len()
            )));
        }
        let mut layers = Vec::new();
        let mut size = cdesc.size();
        for (l, diff_id) in manifest.layers().iter().zip(diff_ids) {
            let ldigest = l.digest().to_string();
            let media = l.media_type().to_string();
            if !(media.contains("tar") || media.contains("rootfs")) {
                return Err(bad(format!(
                    "layer {ldigest} has media type {media}, not a tar layer"
                )));
            }
            fetch(&ldigest, l.size())?;
            self.unpack_layer(&ldigest, diff_id)?;
            size += l.size();
            layers.push(LayerRecord {
                digest: ldigest,
                diff_id: diff_id.clone(),
                size: l.size(),
            });
        }
        let c = config.config().clone().unwrap_or_default();
        Ok(ImageRecord {
            id: digest.to_string(),
            config_digest: cdigest,
            layers,
            run: RunConfig {
                entrypoint: c.entrypoint().clone().unwrap_or_default(),
                cmd: c.cmd().clone().unwrap_or_default(),
                env: c.env().clone().unwrap_or_default(),
                working_dir: c.working_dir().clone().unwrap_or_default(),
                user: c.user().clone().unwrap_or_default(),
                stop_signal: c.stop_signal().clone().unwrap_or_default(),
            },
            size,
        })
    }

    fn load(&self) -> Result<Records, ImageError> {
        match std::fs::read(self.root.join("images.json")) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                ImageError::BadImage(format!(
                    "{} is damaged ({e}); move it away and import the images again",
                    self.root.join("images.json").display()
                ))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Records::default()),
            Err(e) => Err(self.err("reading images.json", e)),
        }
    }

    fn save(&self, r: &Records) -> Result<(), ImageError> {
        let bytes =
            serde_json::to_vec_pretty(r).map_err(|e| ImageError::BadImage(e.to_string()))?;
        state::write_atomic(&self.root.join("images.json"), &bytes, 0o644)?;
        Ok(())
    }

    /// Records `image` under `reference` (moving the reference if it named another);
    /// the caller holds the lock it took before adding the image's blobs.
    pub fn tag(
        &self,
        _held: &StoreLock,
        reference: &ImageRef,
        image: ImageRecord,
    ) -> Result<(), ImageError> {
        let mut r = self.load()?;
        // Imported by the node's admin: every pod may use it.
        r.pulled_with.remove(&image.id);
        r.references.insert(reference.to_string(), image.id.clone());
        r.images.insert(image.id.clone(), image);
        self.save(&r)
    }

    /// Like [`Self::tag`] for an image pulled with the credentials `auth_key`: they
    /// are recorded, unless the image was already here without such a record
    /// (imported), in which case it stays open to every pod.
    pub fn tag_pulled(
        &self,
        _held: &StoreLock,
        reference: &ImageRef,
        image: ImageRecord,
        auth_key: &str,
    ) -> Result<(), ImageError> {
        let mut r = self.load()?;
        let imported = r.images.contains_key(&image.id) && !r.pulled_with.contains_key(&image.id);
        if !imported {
            r.pulled_with
                .entry(image.id.clone())
                .or_default()
                .insert(auth_key.to_string());
        }
        r.references.insert(reference.to_string(), image.id.clone());
        r.images.insert(image.id.clone(), image);
        self.save(&r)
    }

    /// Whether a pod holding the credentials `auth_keys` may use the stored image
    /// `id` without pulling it again.
    pub fn usable_with(&self, id: &str, auth_keys: &[String]) -> Result<bool, ImageError> {
        let r = self.load()?;
        Ok(r.pulled_with.get(id).is_none_or(|keys| {
            keys.contains(pull::ANONYMOUS) || auth_keys.iter().any(|k| keys.contains(k))
        }))
    }

    /// The image a reference names; a digest reference also matches by image ID.
    pub fn resolve(&self, reference: &str) -> Result<Option<ImageRecord>, ImageError> {
        let parsed = ImageRef::parse(reference)?;
        let r = self.load()?;
        if let Some(id) = r.references.get(&parsed.to_string()) {
            return Ok(r.images.get(id).cloned());
        }
        Ok(parsed.digest.and_then(|d| r.images.get(&d).cloned()))
    }

    /// Every image with the references that name it.
    pub fn list(&self) -> Result<Vec<Listed>, ImageError> {
        let r = self.load()?;
        Ok(r.images
            .values()
            .map(|image| Listed {
                references: r
                    .references
                    .iter()
                    .filter(|(_, id)| **id == image.id)
                    .map(|(name, _)| name.clone())
                    .collect(),
                image: image.clone(),
            })
            .collect())
    }

    /// Removes a reference (or, given an image ID, every reference to it); images no
    /// longer named go, and so do their blobs and layers no other image uses.
    pub fn remove(&self, what: &str) -> Result<Removed, ImageError> {
        let _lock = self.lock()?;
        let mut r = self.load()?;
        let mut out = Removed::default();
        let by_id = digest_hex(what).is_some() && r.images.contains_key(what);
        let key = if by_id {
            what.to_string()
        } else {
            ImageRef::parse(what)?.to_string()
        };
        let before = r.references.len();
        r.references.retain(|name, id| {
            let hit = if by_id { *id == key } else { *name == key };
            if hit {
                out.references.push(name.clone());
            }
            !hit
        });
        if r.references.len() == before && !by_id {
            return Err(ImageError::NotFound(what.to_string()));
        }
        let named: std::collections::BTreeSet<String> = r.references.values().cloned().collect();
        let gone: Vec<String> = r
            .images
            .keys()
            .filter(|id| !named.contains(*id))
            .cloned()
            .collect();
        for id in &gone {
            r.images.remove(id);
            r.pulled_with.remove(id);
        }
        out.images = gone;
        self.save(&r)?;
        // Garbage: blobs and layers no remaining image refers to.
        let mut blobs = std::collections::BTreeSet::new();
        let mut layers = std::collections::BTreeSet::new();
        for img in r.images.values() {
            blobs.insert(img.id.clone());
            blobs.insert(img.config_digest.clone());
            for l in &img.layers {
                blobs.insert(l.digest.clone());
                layers.insert(l.diff_id.clone());
            }
        }
        for e in std::fs::read_dir(self.root.join("blobs/sha256"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let d = format!("sha256:{}", e.file_name().to_string_lossy());
            if !blobs.contains(&d) && std::fs::remove_file(e.path()).is_ok() {
                out.blobs += 1;
            }
        }
        for e in std::fs::read_dir(self.root.join("layers"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let d = format!("sha256:{}", e.file_name().to_string_lossy());
            if !layers.contains(&d) && std::fs::remove_dir_all(e.path()).is_ok() {
                out.layers += 1;
            }
        }
        Ok(out)
    }
}

/// A work directory removed (with everything in it) on drop.
pub(crate) struct WorkDir(pub(crate) PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

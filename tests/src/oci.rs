//! OCI image layouts for tests: real ones built with umoci from Debian's busybox-static,
//! and hand-made ones whose layers hold exactly the tar entries a test wants, hostile
//! ones included (the `tar` crate's builder refuses `..` and absolute names, so headers
//! are written raw here).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use serde_json::json;

/// `sha256:<hex>` of bytes.
pub fn sha256(bytes: &[u8]) -> String {
    kernlet::runtime::image::layer::sha256_hex(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        bytes,
    ))
}

/// A tar stream assembled entry by entry, names and link targets written verbatim.
#[derive(Default)]
pub struct RawTar {
    bytes: Vec<u8>,
}

impl RawTar {
    pub fn new() -> Self {
        Self::default()
    }

    fn header(name: &[u8], kind: tar::EntryType, size: u64, mode: u32, link: &[u8]) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        {
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name);
            old.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        h
    }

    fn push(mut self, h: &tar::Header, data: &[u8]) -> Self {
        self.bytes.extend_from_slice(h.as_bytes());
        self.bytes.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.bytes.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    pub fn dir(self, name: &str) -> Self {
        let h = Self::header(name.as_bytes(), tar::EntryType::Directory, 0, 0o755, b"");
        self.push(&h, b"")
    }

    pub fn file(self, name: &str, data: &[u8]) -> Self {
        let h = Self::header(
            name.as_bytes(),
            tar::EntryType::Regular,
            data.len() as u64,
            0o644,
            b"",
        );
        self.push(&h, data)
    }

    /// A regular file with `mode` (an executable, say).
    pub fn file_mode(self, name: &str, data: &[u8], mode: u32) -> Self {
        let h = Self::header(
            name.as_bytes(),
            tar::EntryType::Regular,
            data.len() as u64,
            mode,
            b"",
        );
        self.push(&h, data)
    }

    pub fn symlink(self, name: &str, target: &str) -> Self {
        let h = Self::header(
            name.as_bytes(),
            tar::EntryType::Symlink,
            0,
            0o777,
            target.as_bytes(),
        );
        self.push(&h, b"")
    }

    pub fn hard_link(self, name: &str, target: &str) -> Self {
        let h = Self::header(
            name.as_bytes(),
            tar::EntryType::Link,
            0,
            0o644,
            target.as_bytes(),
        );
        self.push(&h, b"")
    }

    pub fn char_device(self, name: &str, major: u32, minor: u32) -> Self {
        let mut h = Self::header(name.as_bytes(), tar::EntryType::Char, 0, 0o666, b"");
        let _ = h.set_device_major(major);
        let _ = h.set_device_minor(minor);
        h.set_cksum();
        self.push(&h, b"")
    }

    /// A GNU sparse entry whose real size is `real_size` while the archive holds a few
    /// bytes: the "10 GB file" a tiny layer can claim.
    pub fn sparse_claim(self, name: &str, real_size: u64) -> Self {
        let mut h = Self::header(name.as_bytes(), tar::EntryType::GNUSparse, 512, 0o644, b"");
        if let Some(gnu) = h.as_gnu_mut() {
            number(&mut gnu.realsize, real_size);
            // One 512-byte chunk at the very end; everything before it is a hole.
            number(&mut gnu.sparse[0].offset, real_size - 512);
            number(&mut gnu.sparse[0].numbytes, 512);
        }
        h.set_cksum();
        self.push(&h, &[b'x'; 512])
    }

    /// The archive with its end marker.
    pub fn finish(mut self) -> Vec<u8> {
        self.bytes.extend(std::iter::repeat_n(0u8, 1024));
        self.bytes
    }
}

/// A 12-byte tar number field: octal where it fits, else GNU's base-256 (the high bit
/// of the first byte set, big-endian after it).
fn number(field: &mut [u8; 12], value: u64) {
    let octal = format!("{value:011o}");
    if octal.len() <= 11 {
        field[..11].copy_from_slice(octal.as_bytes());
        field[11] = 0;
    } else {
        field.fill(0);
        field[0] = 0x80;
        field[4..].copy_from_slice(&value.to_be_bytes());
    }
}

/// Gzip-compresses a layer.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = enc.write_all(bytes);
    enc.finish().unwrap_or_default()
}

fn put_blob(dir: &Path, bytes: &[u8]) -> anyhow::Result<String> {
    let d = sha256(bytes);
    std::fs::write(dir.join("blobs/sha256").join(&d[7..]), bytes)?;
    Ok(d)
}

/// Writes an OCI layout at `dir` with one image of `layers` (uncompressed tars, stored
/// gzip-compressed), tagged `tag` in the index; returns the manifest digest.
pub fn write_layout(
    dir: &Path,
    tag: &str,
    layers: &[Vec<u8>],
    cmd: &[&str],
) -> anyhow::Result<String> {
    write_layout_config(
        dir,
        tag,
        layers,
        json!({"Cmd": cmd, "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}),
    )
}

/// Like [`write_layout`], with the image config's `config` section given whole.
pub fn write_layout_config(
    dir: &Path,
    tag: &str,
    layers: &[Vec<u8>],
    config: serde_json::Value,
) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir.join("blobs/sha256"))?;
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        diff_ids.push(sha256(l));
        let gz = gzip(l);
        let d = put_blob(dir, &gz)?;
        descs.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": gz.len()}));
    }
    let arch = kernlet::runtime::image::layout::this_arch();
    let config = serde_json::to_vec(&json!({
        "architecture": arch, "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))?;
    let cd = put_blob(dir, &config)?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": descs,
    }))?;
    let md = put_blob(dir, &manifest)?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": manifest.len(),
                       "annotations": {"org.opencontainers.image.ref.name": tag}}],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    Ok(md)
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A busybox image built the way an image author would, with umoci from Debian's
/// busybox-static: `/bin/busybox`, `/bin/sh` and `httpd` linked to it, `Cmd ["sh"]`.
/// Returns the layout directory (`dir/layout`), tagged `tag`.
pub fn busybox_layout(dir: &Path, tag: &str) -> anyhow::Result<PathBuf> {
    busybox_layout_of(dir, tag, Path::new("/bin/busybox"))
}

/// As [`busybox_layout`], with the (static) busybox binary at `busybox`.
pub fn busybox_layout_of(dir: &Path, tag: &str, busybox: &Path) -> anyhow::Result<PathBuf> {
    busybox_layout_with(dir, tag, busybox, &[])
}

/// A file an image adds to busybox's: its path in the image, content and mode (setuid
/// bits kept).
pub struct ExtraFile {
    pub path: String,
    pub content: Vec<u8>,
    pub mode: u32,
}

/// As [`busybox_layout_of`], with `extra` files in the same layer.
pub fn busybox_layout_with(
    dir: &Path,
    tag: &str,
    busybox: &Path,
    extra: &[ExtraFile],
) -> anyhow::Result<PathBuf> {
    let layout = dir.join("layout");
    let bundle = dir.join("bundle");
    let image = format!("{}:{tag}", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout))?;
    run(Command::new("umoci").args(["new", "--image", &image]))?;
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle))?;
    let bin = bundle.join("rootfs/bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy(busybox, bin.join("busybox")).with_context(|| {
        format!(
            "copy {} (Debian busybox-static; `cargo xtask setup` installs it)",
            busybox.display()
        )
    })?;
    // Every applet as a link in /bin, like the busybox image on Docker Hub.
    let list = Command::new(busybox).arg("--list").output()?;
    let applets = String::from_utf8_lossy(&list.stdout).into_owned();
    for applet in applets
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        std::os::unix::fs::symlink("busybox", bin.join(applet))?;
    }
    for d in ["etc", "tmp", "proc", "sys", "dev", "var/www"] {
        std::fs::create_dir_all(bundle.join("rootfs").join(d))?;
    }
    std::fs::write(
        bundle.join("rootfs/var/www/index.html"),
        "hello from kernlet\n",
    )?;
    for f in extra {
        use std::os::unix::fs::PermissionsExt as _;
        let to = bundle.join("rootfs").join(f.path.trim_start_matches('/'));
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&to, &f.content)?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(f.mode))?;
    }
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle))?;
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.cmd",
        "sh",
        "--config.env",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ]))?;
    std::fs::remove_dir_all(&bundle)?;
    Ok(layout)
}

/// Copies the single-image layout `src` (tag `tag`) into `dest` as a multi-platform
/// image: an OCI image index with the original manifest for this machine's
/// architecture and a second one (same layers, its config saying `arm64`, or `amd64`
/// on arm64 machines) for another, tagged `tag`. Returns the index digest.
pub fn index_layout(src: &Path, dest: &Path, tag: &str) -> anyhow::Result<String> {
    std::fs::create_dir_all(dest.join("blobs/sha256"))?;
    for e in std::fs::read_dir(src.join("blobs/sha256"))? {
        let e = e?;
        std::fs::copy(e.path(), dest.join("blobs/sha256").join(e.file_name()))?;
    }
    std::fs::copy(src.join("oci-layout"), dest.join("oci-layout"))?;
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(src.join("index.json"))?)?;
    let desc = index["manifests"]
        .as_array()
        .and_then(|m| {
            m.iter().find(|d| {
                d.pointer("/annotations/org.opencontainers.image.ref.name")
                    .and_then(|t| t.as_str())
                    == Some(tag)
            })
        })
        .cloned()
        .context("no manifest with that tag")?;
    let md = desc["digest"].as_str().context("digest")?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("blobs/sha256").join(&md[7..]))?)?;
    let cd = manifest["config"]["digest"]
        .as_str()
        .context("config digest")?;
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("blobs/sha256").join(&cd[7..]))?)?;
    let this = kernlet::runtime::image::layout::this_arch();
    let other = if this == "arm64" { "amd64" } else { "arm64" };
    config["architecture"] = json!(other);
    let other_config = serde_json::to_vec(&config)?;
    let ocd = put_blob(dest, &other_config)?;
    let mut other_manifest = manifest.clone();
    other_manifest["config"]["digest"] = json!(ocd);
    other_manifest["config"]["size"] = json!(other_config.len());
    let other_manifest = serde_json::to_vec(&other_manifest)?;
    let omd = put_blob(dest, &other_manifest)?;
    let image_index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": omd, "size": other_manifest.len(),
             "platform": {"os": "linux", "architecture": other}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": desc["size"],
             "platform": {"os": "linux", "architecture": this}},
        ],
    }))?;
    let id = put_blob(dest, &image_index)?;
    std::fs::write(
        dest.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [
            {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": id, "size": image_index.len(),
             "annotations": {"org.opencontainers.image.ref.name": tag}}]}))?,
    )?;
    Ok(id)
}

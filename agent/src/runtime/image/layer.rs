//! Unpacking one image layer into a directory that overlayfs can use as a lower layer,
//! treating the layer as hostile.
//!
//! What a layer may not do, each refused with the layer and the entry named:
//! - name a path with `..` or an absolute path;
//! - reach anything through a symlink (an entry `a -> /etc` followed by `a/passwd`):
//!   every parent of every entry must be a real directory of this layer, and files are
//!   created with `O_EXCL`, so no symlink is ever followed while unpacking;
//! - hard-link to anything that is not a file already unpacked from this layer;
//! - hold a relative symlink that climbs above the layer root (absolute symlink targets
//!   are kept: the kernel resolves them inside the container's root, and nothing on the
//!   host side follows them);
//! - hold sparse files (a few bytes can claim terabytes), or more file bytes than the
//!   store allows for one layer.
//!
//! Device nodes are skipped (the container's /dev is built by kernlet). OCI whiteouts
//! become overlayfs ones: `.wh.NAME` a 0:0 character device, `.wh..wh..opq` the
//! `trusted.overlay.opaque` xattr. The diff ID (SHA-256 of the uncompressed tar) is
//! computed on the way and returned for the caller to check against the image config.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use crate::sys::fs as sysfs;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Why a layer could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error(
        "layer {layer}: entry {entry:?} {why}; the layer is refused and nothing of it was kept"
    )]
    Refused {
        layer: String,
        entry: String,
        why: String,
    },
    #[error("layer {layer}: {what}: {source}")]
    Io {
        layer: String,
        what: String,
        source: io::Error,
    },
}

/// What an unpacked layer was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// `sha256:<hex>` of the uncompressed tar stream.
    pub diff_id: String,
    /// Bytes of regular files written.
    pub file_bytes: u64,
    /// Device nodes that were in the layer and were not created.
    pub skipped_devices: Vec<String>,
}

/// Compression of a layer blob, told by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn sniff(head: &[u8]) -> Self {
        match head {
            [0x1f, 0x8b, ..] => Self::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Self::Zstd,
            _ => Self::None,
        }
    }
}

/// A reader that hashes what passes through it and counts it.
struct Hashing<R> {
    inner: R,
    ctx: aws_lc_rs::digest::Context,
    count: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ctx.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// `sha256:<hex>` of a finished digest.
pub fn sha256_hex(d: aws_lc_rs::digest::Digest) -> String {
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in d.as_ref() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The normal components of a tar path, or why it is not acceptable.
fn clean(raw: &[u8]) -> Result<Vec<&OsStr>, &'static str> {
    if raw.starts_with(b"/") {
        return Err("is an absolute path");
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("climbs out of the layer with '..'"),
            c if c.contains(&0) => return Err("has a NUL byte in its name"),
            c => out.push(OsStr::from_bytes(c)),
        }
    }
    Ok(out)
}

/// Whether a relative symlink target, seen from the directory holding the link at
/// `depth` levels below the root, stays within the root.
fn symlink_stays_inside(depth: usize, target: &[u8]) -> bool {
    if target.starts_with(b"/") {
        return true;
    }
    let mut depth = depth as i64;
    for c in target.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    true
}

struct Unpacker<'a> {
    root: &'a Path,
    layer: &'a str,
    max_bytes: u64,
    used: u64,
    skipped: Vec<String>,
}

impl Unpacker<'_> {
    fn refuse(&self, entry: &str, why: impl Into<String>) -> LayerError {
        LayerError::Refused {
            layer: self.layer.to_string(),
            entry: entry.to_string(),
            why: why.into(),
        }
    }

    fn io(&self, what: String, source: io::Error) -> LayerError {
        LayerError::Io {
            layer: self.layer.to_string(),
            what,
            source,
        }
    }

    /// Makes sure every component of `parents` is a real directory of this layer
    /// (creating missing ones), never passing through a symlink.
    fn parents(&self, entry: &str, parents: &[&OsStr]) -> Result<PathBuf, LayerError> {
        let mut dir = self.root.to_path_buf();
        for c in parents {
            dir.push(c);
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(self.refuse(
                        entry,
                        format!("goes through the symlink {:?}", rel(self.root, &dir)),
                    ));
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(self.refuse(
                        entry,
                        format!(
                            "has the non-directory {:?} as a parent",
                            rel(self.root, &dir)
                        ),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    std::fs::create_dir(&dir)
                        .map_err(|e| self.io(format!("creating {}", dir.display()), e))?;
                }
                Err(e) => return Err(self.io(format!("inspecting {}", dir.display()), e)),
            }
        }
        Ok(dir)
    }

    /// Removes what an earlier entry of this layer put at `path` (never following it).
    fn clear(&self, path: &Path, keep_dir: bool) -> Result<bool, LayerError> {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() && keep_dir => Ok(true),
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(path)
                .map(|()| false)
                .map_err(|e| self.io(format!("replacing {}", path.display()), e)),
            Ok(_) => std::fs::remove_file(path)
                .map(|()| false)
                .map_err(|e| self.io(format!("replacing {}", path.display()), e)),
            Err(_) => Ok(false),
        }
    }

    fn entry<R: Read>(&mut self, mut e: tar::Entry<'_, R>) -> Result<(), LayerError> {
        let raw = e.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let comps = clean(&raw).map_err(|why| self.refuse(&name, why))?;
        let kind = e.header().entry_type();
        if kind.is_gnu_longname() || kind.is_gnu_longlink() || kind.is_pax_global_extensions() {
            return Ok(());
        }
        if kind.is_gnu_sparse()
            || e.pax_extensions().ok().flatten().is_some_and(|mut x| {
                x.any(|x| x.is_ok_and(|x| x.key_bytes().starts_with(b"GNU.sparse.")))
            })
        {
            return Err(self.refuse(
                &name,
                "is a sparse file; sparse entries are refused (a few bytes could claim terabytes)",
            ));
        }
        let Some((last, parents)) = comps.split_last() else {
            return Ok(()); // the layer root itself
        };
        let dir = self.parents(&name, parents)?;
        let path = dir.join(last);

        // Whiteouts.
        let last_bytes = last.as_bytes();
        if last_bytes == OPAQUE.as_bytes() {
            return sysfs::set_opaque(&dir)
                .map_err(|e| self.io(format!("marking {} opaque", dir.display()), e));
        }
        if let Some(hidden) = last_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(self.refuse(&name, "is a whiteout of no valid name"));
            }
            let target = dir.join(OsStr::from_bytes(hidden));
            self.clear(&target, false)?;
            return sysfs::make_whiteout(&target)
                .map_err(|e| self.io(format!("creating whiteout {}", target.display()), e));
        }

        let h = e.header();
        let mode = h.mode().unwrap_or(0o644) & 0o7777;
        let uid = h.uid().ok().and_then(|u| u32::try_from(u).ok());
        let gid = h.gid().ok().and_then(|g| u32::try_from(g).ok());
        let mtime = h.mtime().ok().and_then(|t| i64::try_from(t).ok());
        let is_symlink = kind.is_symlink();
        if kind.is_file() || kind == tar::EntryType::Continuous {
            let size = h.entry_size().unwrap_or(u64::MAX);
            if size > self.max_bytes.saturating_sub(self.used) {
                return Err(self.refuse(
                    &name,
                    format!(
                        "claims {size} bytes, past the {} bytes one layer may unpack to",
                        self.max_bytes
                    ),
                ));
            }
            self.clear(&path, false)?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .mode(0o600)
                .open(&path)
                .map_err(|e| self.io(format!("creating {}", path.display()), e))?;
            let written = io::copy(&mut (&mut e).take(size), &mut f)
                .map_err(|err| self.io(format!("writing {}", path.display()), err))?;
            self.used += written;
        } else if kind.is_dir() {
            if !self.clear(&path, true)? {
                std::fs::create_dir(&path)
                    .map_err(|e| self.io(format!("creating {}", path.display()), e))?;
            }
        } else if is_symlink {
            let target = e
                .link_name_bytes()
                .ok_or_else(|| self.refuse(&name, "is a symlink without a target"))?
                .into_owned();
            if target.is_empty() || !symlink_stays_inside(parents.len(), &target) {
                return Err(self.refuse(
                    &name,
                    format!(
                        "is a symlink pointing outside the layer ({:?})",
                        String::from_utf8_lossy(&target)
                    ),
                ));
            }
            self.clear(&path, false)?;
            std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                .map_err(|e| self.io(format!("creating symlink {}", path.display()), e))?;
        } else if kind.is_hard_link() {
            let target_raw = e
                .link_name_bytes()
                .ok_or_else(|| self.refuse(&name, "is a hard link without a target"))?
                .into_owned();
            let shown = String::from_utf8_lossy(&target_raw).into_owned();
            let outside = || {
                self.refuse(
                    &name,
                    format!("is a hard link to {shown:?}, outside the layer"),
                )
            };
            let tcomps = clean(&target_raw).map_err(|_| outside())?;
            let Some((tlast, tparents)) = tcomps.split_last() else {
                return Err(outside());
            };
            let mut tdir = self.root.to_path_buf();
            for c in tparents {
                tdir.push(c);
                let m = std::fs::symlink_metadata(&tdir).map_err(|_| outside())?;
                if !m.is_dir() || m.file_type().is_symlink() {
                    return Err(outside());
                }
            }
            let tpath = tdir.join(tlast);
            match std::fs::symlink_metadata(&tpath) {
                Ok(m) if !m.is_dir() => {}
                _ => {
                    return Err(self.refuse(
                        &name,
                        format!("is a hard link to {shown:?}, which is not a file of this layer"),
                    ));
                }
            }
            if tpath != path {
                self.clear(&path, false)?;
                std::fs::hard_link(&tpath, &path)
                    .map_err(|e| self.io(format!("linking {}", path.display()), e))?;
            }
            // A hard link shares its target's inode: no metadata of its own.
            return Ok(());
        } else if kind.is_character_special() || kind.is_block_special() {
            self.skipped.push(name);
            return Ok(());
        } else if kind.is_fifo() {
            self.clear(&path, false)?;
            sysfs::make_fifo(&path, mode)
                .map_err(|e| self.io(format!("creating fifo {}", path.display()), e))?;
        } else {
            return Err(self.refuse(&name, format!("has an unsupported type {kind:?}")));
        }

        // Ownership first (chown clears set-id bits), then mode, then time.
        std::os::unix::fs::lchown(&path, uid, gid)
            .map_err(|e| self.io(format!("chown {}", path.display()), e))?;
        if !is_symlink {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| self.io(format!("chmod {}", path.display()), e))?;
        }
        if let Some(t) = mtime {
            let _ = sysfs::set_mtime_nofollow(&path, t);
        }
        Ok(())
    }
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

/// Unpacks a layer blob (gzip, zstd or plain tar) into `dest`, which must be an empty
/// directory; `layer` names it in errors. On error `dest` is left for the caller to
/// remove.
pub fn unpack(
    blob: impl Read,
    dest: &Path,
    layer: &str,
    max_bytes: u64,
) -> Result<Unpacked, LayerError> {
    let mut blob = io::BufReader::new(blob);
    let head = io::BufRead::fill_buf(&mut blob)
        .map_err(|e| LayerError::Io {
            layer: layer.to_string(),
            what: "reading".into(),
            source: e,
        })?
        .to_vec();
    let decoded: Box<dyn Read> = match Compression::sniff(&head) {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(blob)),
        Compression::Zstd => Box::new(ruzstd::decoding::StreamingDecoder::new(blob).map_err(
            |e| LayerError::Io {
                layer: layer.to_string(),
                what: "reading the zstd frame".into(),
                source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
            },
        )?),
        Compression::None => Box::new(blob),
    };
    let mut hashing = Hashing {
        inner: decoded,
        ctx: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256),
        count: 0,
    };
    let mut u = Unpacker {
        root: dest,
        layer,
        max_bytes,
        used: 0,
        skipped: Vec::new(),
    };
    {
        let mut archive = tar::Archive::new(&mut hashing);
        let entries = archive
            .entries()
            .map_err(|e| u.io("reading the tar".into(), e))?;
        for e in entries {
            let e = e.map_err(|e| u.io("reading the tar".into(), e))?;
            u.entry(e)?;
        }
    }
    // The diff ID covers the whole stream, padding after the end marker included; the
    // padding counts against the same budget.
    let allowance = max_bytes.saturating_sub(u.used).saturating_add(1 << 20);
    let rest = io::copy(&mut (&mut hashing).take(allowance), &mut io::sink())
        .map_err(|e| u.io("reading the tar".into(), e))?;
    if rest >= allowance {
        return Err(u.refuse(
            "(after the end of the archive)",
            "has more trailing data than the layer may hold",
        ));
    }
    Ok(Unpacked {
        diff_id: sha256_hex(hashing.ctx.finish()),
        file_bytes: u.used,
        skipped_devices: u.skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_cleaned_or_refused() {
        assert_eq!(clean(b"./a//b/./c").unwrap(), ["a", "b", "c"]);
        assert!(clean(b"./").unwrap().is_empty());
        assert!(clean(b"/etc/passwd").is_err());
        assert!(clean(b"a/../../b").is_err());
        assert!(clean(b"..").is_err());
    }

    #[test]
    fn relative_symlinks_may_not_climb_out() {
        assert!(symlink_stays_inside(0, b"/etc/passwd"));
        assert!(symlink_stays_inside(0, b"busybox"));
        assert!(symlink_stays_inside(1, b"../lib/x"));
        assert!(!symlink_stays_inside(0, b"../x"));
        assert!(!symlink_stays_inside(1, b"../../x"));
        assert!(!symlink_stays_inside(2, b"a/../../../../x"));
        assert!(symlink_stays_inside(2, b"a/../../../x"));
    }

    #[test]
    fn compression_by_magic() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"bin/"), Compression::None);
    }
}

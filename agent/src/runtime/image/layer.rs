//! Unpacking one image layer into a directory that overlayfs can use as a lower layer,
//! treating the layer as hostile and reading it as containerd does.
//!
//! Names are read relative to the layer root: a leading `/` or `./` means the root
//! (`umoci insert` writes an entry named `/`, buildah-style layers `./etc/...`), and
//! `a/../b` is `b`. What a layer may not do, each refused with the layer and the entry
//! named:
//! - name a path that climbs above the root with `..`;
//! - reach outside the root through a symlink: a parent that is a symlink of this layer
//!   is followed as the kernel would inside the container (an absolute target from the
//!   layer root, `..` stopping at the root), never on the host's side, and files are
//!   created with `O_EXCL | O_NOFOLLOW`;
//! - hard-link to anything that is not a file already unpacked from this layer;
//! - hold more file bytes than the store allows for one layer (sparse files count at
//!   their full size, and are written with their holes).
//!
//! Symlinks are kept as written, also those whose relative target climbs above the
//! layer root: they resolve inside the container's root at run time, as with
//! containerd. Extended attributes (`SCHILY.xattr.*` PAX records: file capabilities,
//! `user.*`) are set, except overlayfs' own `trusted.overlay.*`, which would let a layer
//! steer the mount. Device nodes are skipped (the container's /dev is built by kernlet).
//! OCI whiteouts become overlayfs ones: `.wh.NAME` a 0:0 character device,
//! `.wh..wh..opq` the `trusted.overlay.opaque` xattr. The diff ID (SHA-256 of the
//! uncompressed tar) is computed on the way and returned for the caller to check against
//! the image config.

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

/// A reader that, once its inner stream ends, gives a few blocks of zeros: an archive
/// that stops right after its last entry's data, without padding or end-of-archive
/// blocks (as Debian's umoci writes `umoci insert` layers), reads as complete, as Go's
/// archive/tar (and so containerd) reads it. A file whose data is cut short is still
/// refused: the unpacker checks that it got every byte the header claims.
struct EndPadding<R> {
    inner: R,
    ended: bool,
    zeros_left: usize,
    /// How many zeros were given in place of the stream, shared with the unpacker.
    given: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R> EndPadding<R> {
    fn new(inner: R, given: std::rc::Rc<std::cell::Cell<u64>>) -> Self {
        Self {
            inner,
            ended: false,
            // Padding of the last block and the two end-of-archive blocks.
            zeros_left: 3 * 512,
            given,
        }
    }
}

impl<R: Read> Read for EndPadding<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.ended {
            let n = self.inner.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            self.ended = true;
        }
        let n = buf.len().min(self.zeros_left);
        buf[..n].fill(0);
        self.zeros_left -= n;
        self.given.set(self.given.get() + n as u64);
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

/// The components of a tar path relative to the layer root, or why it is not
/// acceptable: leading slashes and `.` are dropped, `..` takes back the component
/// before it and may not climb above the root.
fn clean(raw: &[u8]) -> Result<Vec<&OsStr>, &'static str> {
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err("climbs out of the layer with '..'");
                }
            }
            c if c.contains(&0) => return Err("has a NUL byte in its name"),
            c => out.push(OsStr::from_bytes(c)),
        }
    }
    Ok(out)
}

/// How many symlinks one path may pass through (the kernel's limit).
const MAX_SYMLINKS: usize = 40;

/// The PAX record prefix of an extended attribute.
const PAX_XATTR: &str = "SCHILY.xattr.";

/// Whether a layer may set the extended attribute `name`: not overlayfs' own, which
/// would let it redirect or hide what the layers below hold.
fn xattr_allowed(name: &str) -> bool {
    !name.starts_with("trusted.overlay.") && !name.is_empty()
}

struct Unpacker<'a> {
    root: &'a Path,
    layer: &'a str,
    max_bytes: u64,
    used: u64,
    skipped: Vec<String>,
    /// Zeros the reader gave after the stream ended (see [`EndPadding`]).
    padding: std::rc::Rc<std::cell::Cell<u64>>,
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

    /// The directory `parents` names inside the layer, creating missing directories.
    /// A symlink of this layer on the way is followed as inside the container: an
    /// absolute target from the layer root, `..` stopping at the root.
    fn parents(
        &self,
        entry: &str,
        parents: &[&OsStr],
        create: bool,
    ) -> Result<PathBuf, LayerError> {
        let mut pending: std::collections::VecDeque<std::ffi::OsString> =
            parents.iter().map(|c| c.to_os_string()).collect();
        let mut at: Vec<std::ffi::OsString> = Vec::new();
        let mut links = 0;
        while let Some(c) = pending.pop_front() {
            match c.as_bytes() {
                b"" | b"." => continue,
                b".." => {
                    at.pop();
                    continue;
                }
                _ => {}
            }
            let dir: PathBuf = std::iter::once(self.root.as_os_str())
                .chain(at.iter().map(|c| c.as_os_str()))
                .chain(std::iter::once(c.as_os_str()))
                .collect();
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.file_type().is_symlink() => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(self.refuse(entry, "passes through too many symlinks"));
                    }
                    let target = std::fs::read_link(&dir)
                        .map_err(|e| self.io(format!("reading {}", dir.display()), e))?;
                    let target = target.as_os_str().as_bytes();
                    if target.starts_with(b"/") {
                        at.clear();
                    }
                    for t in target.split(|b| *b == b'/').rev() {
                        pending.push_front(OsStr::from_bytes(t).to_os_string());
                    }
                }
                Ok(m) if m.is_dir() => at.push(c),
                Ok(_) => {
                    return Err(self.refuse(
                        entry,
                        format!(
                            "has the non-directory {:?} as a parent",
                            rel(self.root, &dir)
                        ),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    std::fs::create_dir(&dir)
                        .map_err(|e| self.io(format!("creating {}", dir.display()), e))?;
                    at.push(c);
                }
                Err(e) => return Err(self.io(format!("inspecting {}", dir.display()), e)),
            }
        }
        Ok(std::iter::once(self.root.as_os_str())
            .chain(at.iter().map(|c| c.as_os_str()))
            .collect())
    }

    /// Sets the entry's extended attributes on `path` (after its owner: chown clears
    /// `security.capability`).
    fn xattrs<R: Read>(
        &self,
        e: &mut tar::Entry<'_, R>,
        name: &str,
        path: &Path,
    ) -> Result<(), LayerError> {
        let Ok(Some(exts)) = e.pax_extensions() else {
            return Ok(());
        };
        for ext in exts.flatten() {
            let Some(attr) = ext
                .key()
                .ok()
                .and_then(|k| k.strip_prefix(PAX_XATTR))
                .map(str::to_string)
            else {
                continue;
            };
            if !xattr_allowed(&attr) {
                tracing::warn!(layer = %self.layer, entry = %name, xattr = %attr, "extended attribute of overlayfs' own not set");
                continue;
            }
            match sysfs::set_xattr_nofollow(path, &attr, ext.value_bytes()) {
                Ok(()) => {}
                // A filesystem without that namespace (user.* on a symlink, say):
                // containerd goes on without it too.
                Err(err)
                    if matches!(
                        err.raw_os_error(),
                        Some(libc::ENOTSUP | libc::EPERM | libc::EINVAL)
                    ) =>
                {
                    tracing::warn!(layer = %self.layer, entry = %name, xattr = %attr, "extended attribute not set: {err}");
                }
                Err(err) => {
                    return Err(self.io(format!("setting {attr} on {}", path.display()), err));
                }
            }
        }
        Ok(())
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
        if e.pax_extensions().ok().flatten().is_some_and(|mut x| {
            x.any(|x| x.is_ok_and(|x| x.key_bytes().starts_with(b"GNU.sparse.")))
        }) {
            return Err(self.refuse(
                &name,
                "is a sparse file in the PAX format, which kernlet does not read; write the layer without --sparse or in GNU format",
            ));
        }
        let Some((last, parents)) = comps.split_last() else {
            // The layer root itself (`/`, `./`): its owner, mode and time, as containerd
            // applies them.
            if kind.is_dir() {
                let root = self.root.to_path_buf();
                self.metadata(&mut e, &name, &root, false)?;
            }
            return Ok(());
        };
        let dir = self.parents(&name, parents, true)?;
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

        let mode = e.header().mode().unwrap_or(0o644) & 0o7777;
        let is_symlink = kind.is_symlink();
        if kind.is_file() || kind == tar::EntryType::Continuous || kind.is_gnu_sparse() {
            self.file(&mut e, &name, &path)?;
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
            if target.is_empty() {
                return Err(self.refuse(&name, "is a symlink with an empty target"));
            }
            self.clear(&path, false)?;
            std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                .map_err(|e| self.io(format!("creating symlink {}", path.display()), e))?;
        } else if kind.is_hard_link() {
            return self.hard_link(&e, &name, &path);
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
        self.metadata(&mut e, &name, &path, is_symlink)
    }

    /// A regular file (sparse ones with their holes): every byte its header claims,
    /// within the layer's budget.
    fn file<R: Read>(
        &mut self,
        e: &mut tar::Entry<'_, R>,
        name: &str,
        path: &Path,
    ) -> Result<(), LayerError> {
        // A sparse entry's size is the file's, holes included.
        let size = e.size();
        if size > self.max_bytes.saturating_sub(self.used) {
            return Err(self.refuse(
                name,
                format!(
                    "claims {size} bytes, past the {} bytes one layer may unpack to",
                    self.max_bytes
                ),
            ));
        }
        self.clear(path, false)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(path)
            .map_err(|e| self.io(format!("creating {}", path.display()), e))?;
        let padded_before = self.padding.get();
        let written = copy_sparse(&mut e.take(size), &mut f)
            .map_err(|err| self.io(format!("writing {}", path.display()), err))?;
        let padded = self.padding.get() - padded_before;
        if written != size || padded > 0 {
            let written = written.saturating_sub(padded);
            return Err(self.refuse(
                name,
                format!("is cut short: {written} of its {size} bytes are in the layer"),
            ));
        }
        self.used += written;
        Ok(())
    }

    /// A hard link to a file this layer already holds (reached through symlinked
    /// parents as any path of the layer).
    fn hard_link<R: Read>(
        &self,
        e: &tar::Entry<'_, R>,
        name: &str,
        path: &Path,
    ) -> Result<(), LayerError> {
        let target_raw = e
            .link_name_bytes()
            .ok_or_else(|| self.refuse(name, "is a hard link without a target"))?
            .into_owned();
        let shown = String::from_utf8_lossy(&target_raw).into_owned();
        let not_here = || {
            self.refuse(
                name,
                format!("is a hard link to {shown:?}, which is not a file of this layer"),
            )
        };
        let tcomps = clean(&target_raw).map_err(|_| not_here())?;
        let Some((tlast, tparents)) = tcomps.split_last() else {
            return Err(not_here());
        };
        let tpath = self
            .parents(name, tparents, false)
            .map_err(|_| not_here())?
            .join(tlast);
        match std::fs::symlink_metadata(&tpath) {
            Ok(m) if !m.is_dir() && !m.file_type().is_symlink() => {}
            _ => return Err(not_here()),
        }
        if tpath != path {
            self.clear(path, false)?;
            std::fs::hard_link(&tpath, path)
                .map_err(|e| self.io(format!("linking {}", path.display()), e))?;
        }
        // A hard link shares its target's inode: no metadata of its own.
        Ok(())
    }

    /// The entry's owner, extended attributes, mode and time on `path`, in that order
    /// (chown clears set-id bits and file capabilities).
    fn metadata<R: Read>(
        &self,
        e: &mut tar::Entry<'_, R>,
        name: &str,
        path: &Path,
        is_symlink: bool,
    ) -> Result<(), LayerError> {
        let h = e.header();
        let mode = h.mode().unwrap_or(0o644) & 0o7777;
        let uid = h.uid().ok().and_then(|u| u32::try_from(u).ok());
        let gid = h.gid().ok().and_then(|g| u32::try_from(g).ok());
        let mtime = h.mtime().ok().and_then(|t| i64::try_from(t).ok());
        std::os::unix::fs::lchown(path, uid, gid)
            .map_err(|e| self.io(format!("chown {}", path.display()), e))?;
        self.xattrs(e, name, path)?;
        if !is_symlink {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| self.io(format!("chmod {}", path.display()), e))?;
        }
        if let Some(t) = mtime {
            let _ = sysfs::set_mtime_nofollow(path, t);
        }
        Ok(())
    }
}

/// Copies `from` into the new file `to`, leaving runs of zeros as holes (as containerd
/// does when it writes a sparse entry); the number of bytes copied, holes included.
fn copy_sparse(from: &mut impl Read, to: &mut std::fs::File) -> io::Result<u64> {
    use std::io::{Seek as _, Write as _};
    const CHUNK: usize = 64 << 10;
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    let mut hole_at_end = false;
    loop {
        // A whole chunk, so a hole is judged on aligned blocks and not on how the
        // reader happens to cut its data.
        let mut filled = 0;
        while filled < CHUNK {
            match from.read(&mut buf[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        if filled == 0 {
            break;
        }
        let chunk = &buf[..filled];
        if chunk.iter().all(|b| *b == 0) {
            to.seek(io::SeekFrom::Current(filled as i64))?;
            hole_at_end = true;
        } else {
            to.write_all(chunk)?;
            hole_at_end = false;
        }
        total += filled as u64;
        if filled < CHUNK {
            break;
        }
    }
    if hole_at_end {
        to.set_len(total)?;
    }
    Ok(total)
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
        padding: Default::default(),
    };
    {
        let mut archive = tar::Archive::new(EndPadding::new(
            &mut hashing,
            std::rc::Rc::clone(&u.padding),
        ));
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
        // Absolute names are read from the layer root, as containerd reads them.
        assert!(clean(b"/").unwrap().is_empty());
        assert_eq!(clean(b"/etc/passwd").unwrap(), ["etc", "passwd"]);
        assert_eq!(clean(b"a/../b").unwrap(), ["b"]);
        assert!(clean(b"a/../../b").is_err());
        assert!(clean(b"/../etc").is_err());
        assert!(clean(b"..").is_err());
    }

    #[test]
    fn overlayfs_attributes_are_not_a_layers_to_set() {
        assert!(xattr_allowed("security.capability") && xattr_allowed("user.mime"));
        assert!(!xattr_allowed("trusted.overlay.redirect"));
        assert!(!xattr_allowed("trusted.overlay.opaque"));
    }

    #[test]
    fn an_archive_ending_after_its_last_data_reads_as_complete() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, "etc/f", &b"hi\n"[..]).unwrap();
        let whole = b.into_inner().unwrap();
        // What `umoci insert` writes: no padding after the data, no end blocks.
        let cut = whole[..512 + 3].to_vec();
        let d = tempfile::tempdir().unwrap();
        let u = unpack(&cut[..], d.path(), "l", 1 << 20).unwrap();
        assert_eq!(std::fs::read(d.path().join("etc/f")).unwrap(), b"hi\n");
        assert_eq!(
            u.diff_id,
            sha256_hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &cut))
        );
        // Data cut short is refused.
        let d = tempfile::tempdir().unwrap();
        let short = unpack(&whole[..512 + 2], d.path(), "l", 1 << 20).unwrap_err();
        assert!(short.to_string().contains("cut short"), "{short}");
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

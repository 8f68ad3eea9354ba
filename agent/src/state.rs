//! Crash-consistent files under the state directory: written to a temp file, fsynced,
//! renamed over the old one, and the directory fsynced, so a crash leaves the old or the
//! new content, never half of it.

use std::path::{Path, PathBuf};

/// A state file that could not be written, with its path.
#[derive(Debug, thiserror::Error)]
#[error("writing {path}: {source}")]
pub struct StateError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Removes a unix socket left at `path` by a daemon that died, so a new one can be
/// bound there. A socket something still answers on (another daemon's) is never taken
/// over: `AddrInUse`. Nothing there is fine; anything but a socket is refused.
pub async fn clear_stale_socket(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt as _;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(std::io::Error::other(
            "something other than a socket is there",
        ));
    }
    if tokio::net::UnixStream::connect(path).await.is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "another process answers on this socket",
        ));
    }
    std::fs::remove_file(path)
}

/// Writes `content` to `path` with permission `mode`, atomically.
pub fn write_atomic(path: &Path, content: &[u8], mode: u32) -> Result<(), StateError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let err = |source| StateError {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    // A name of this writer's own: two threads writing the same file at once (two
    // pods taking addresses) must not rename each other's temporary away.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp.{}.{n}", std::process::id()));
    let tmp = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(content)
        .and_then(|()| f.sync_all())
        .map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_leaves_no_temp_and_sets_mode() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("a/kubeconfig");
        write_atomic(&p, b"x", 0o600).unwrap();
        write_atomic(&p, b"yz", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"yz");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["kubeconfig"], "no temporary left");
    }

    #[test]
    fn writers_of_one_file_at_once_all_succeed() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("last");
        std::thread::scope(|s| {
            for i in 0..8 {
                let p = &p;
                s.spawn(move || {
                    for _ in 0..50 {
                        write_atomic(p, format!("{i}").as_bytes(), 0o644).unwrap();
                    }
                });
            }
        });
        let last: u32 = std::fs::read_to_string(&p).unwrap().parse().unwrap();
        assert!(last < 8);
    }

    #[test]
    fn an_unwritable_place_is_named() {
        let err = write_atomic(Path::new("/proc/kernlet-test/x"), b"x", 0o600).unwrap_err();
        assert!(
            err.to_string().starts_with("writing /proc/kernlet-test/x"),
            "{err}"
        );
    }
}

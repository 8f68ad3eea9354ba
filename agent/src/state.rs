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
    let tmp = path.with_extension("tmp");
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
        assert!(!p.with_extension("tmp").exists());
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

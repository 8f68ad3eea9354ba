//! The container reaper (`kernlet-shim`, the `shim/` crate): a small static binary,
//! built by `build.rs` and embedded here, installed under the state directory at start,
//! which each container's shim becomes once its container runs.

use std::path::{Path, PathBuf};

use super::RuntimeError;

/// The reaper binary.
const BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kernlet-shim"));

/// Installs the reaper as `<state_dir>/bin/kernlet-shim` (unless the same binary is
/// there already; a replaced one goes by rename, so shims running it are undisturbed).
pub fn install(state_dir: &Path) -> Result<PathBuf, RuntimeError> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = state_dir.join("bin");
    let path = dir.join("kernlet-shim");
    if std::fs::read(&path).is_ok_and(|b| b == BINARY) {
        return Ok(path);
    }
    let what = || format!("installing the container reaper at {}", path.display());
    std::fs::create_dir_all(&dir).map_err(RuntimeError::io(what()))?;
    let tmp = dir.join(".kernlet-shim.tmp");
    std::fs::write(&tmp, BINARY).map_err(RuntimeError::io(what()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .map_err(RuntimeError::io(what()))?;
    std::fs::rename(&tmp, &path).map_err(RuntimeError::io(what()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reaper_is_installed_once_and_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = install(dir.path()).unwrap();
        let installed = std::fs::metadata(&path).unwrap().modified().unwrap();
        assert_eq!(install(dir.path()).unwrap(), path);
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            installed
        );
        // Without a container directory it says how it is used.
        let out = std::process::Command::new(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
    }
}

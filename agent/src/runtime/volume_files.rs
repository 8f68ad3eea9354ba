//! Volume contents that change while a pod runs (configMap, secret, downwardAPI and
//! projected volumes), written as kubelet's atomic writer does, so a container never
//! sees half an update:
//!
//! ```text
//! <volume>/..2026_11_26_08_00_00.123456789/   the files of one version
//! <volume>/..data -> ..2026_11_26_…            swapped by one rename
//! <volume>/<name> -> ..data/<name>             one link per top-level entry
//! ```

use std::collections::BTreeMap;
use std::io;
use std::path::{Component, Path};

/// One file of a volume: its relative path, content and mode.
pub type File = (String, Vec<u8>, u32);

const DATA: &str = "..data";

/// The files the volume shows now (path → content, mode), read through `..data`.
pub fn current(dir: &Path) -> Option<BTreeMap<String, (Vec<u8>, u32)>> {
    use std::os::unix::fs::PermissionsExt as _;
    let data = dir.join(DATA);
    if !data.exists() {
        return None;
    }
    let mut out = BTreeMap::new();
    let mut stack = vec![data.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).ok()?;
            if meta.is_dir() {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(&data) {
                let content = std::fs::read(&p).ok()?;
                out.insert(
                    rel.to_string_lossy().into_owned(),
                    (content, meta.permissions().mode() & 0o7777),
                );
            }
        }
    }
    Some(out)
}

/// Whether `files` differ from what the volume shows.
pub fn differs(dir: &Path, files: &[File]) -> bool {
    let want: BTreeMap<String, (Vec<u8>, u32)> = files
        .iter()
        .map(|(p, c, m)| (p.clone(), (c.clone(), *m & 0o7777)))
        .collect();
    current(dir).is_none_or(|have| have != want)
}

/// The modes of a volume's files with the pod's `fsGroup`, as kubelet sets ownership of
/// a read-only volume: readable by the group too (`| 0440`); the files and directories
/// then belong to the group ([`write`]).
pub fn with_fs_group(files: &mut [File]) {
    for (_, _, mode) in files {
        *mode |= 0o440;
    }
}

/// Makes `dir` show exactly `files`: a new version directory, `..data` swapped to it
/// by one rename, the top-level links made or removed, the old version removed. With
/// `group` (the pod's fsGroup), the volume's directories and files belong to it and the
/// directories are readable and searchable by it, setgid (kubelet's ownership change).
/// `owned` gives the files at some paths to a user (service account tokens to the user
/// every container of the pod runs as).
pub fn write(
    dir: &Path,
    files: &[File],
    group: Option<u32>,
    owned: Option<(u32, &[String])>,
) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    for (path, _, _) in files {
        let rel = Path::new(path);
        if path.is_empty()
            || path.starts_with("..")
            || !rel.components().all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("file path {path:?} is not a plain relative path"),
            ));
        }
    }
    std::fs::create_dir_all(dir)?;
    let stamp = k8s_openapi::jiff::Timestamp::now()
        .strftime("..%Y_%m_%d_%H_%M_%S.%f")
        .to_string();
    let version = dir.join(&stamp);
    for (path, content, mode) in files {
        let target = version.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, content)?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode & 0o7777))?;
        let owner = owned.and_then(|(uid, paths)| paths.contains(path).then_some(uid));
        if group.is_some() || owner.is_some() {
            std::os::unix::fs::chown(&target, owner, group)?;
        }
    }
    std::fs::create_dir_all(&version)?;
    if let Some(gid) = group {
        for d in std::iter::once(dir.to_path_buf()).chain(dirs_under(&version)) {
            std::os::unix::fs::chown(&d, None, Some(gid))?;
            let mode = std::fs::metadata(&d)?.permissions().mode() & 0o7777;
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode | 0o2550))?;
        }
    }
    let old = std::fs::read_link(dir.join(DATA)).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp)?;
    std::fs::rename(&tmp, dir.join(DATA))?;
    // Top-level names: a link for each new one, none for those gone.
    let top: std::collections::BTreeSet<String> = files
        .iter()
        .filter_map(|(p, _, _)| Path::new(p).components().next())
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    for name in &top {
        let link = dir.join(name);
        if std::fs::read_link(&link).is_err() {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(Path::new(DATA).join(name), &link)?;
        }
    }
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !top.contains(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    if let Some(old) = old.filter(|o| o.as_os_str() != stamp.as_str()) {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

/// `dir` and every directory below it.
fn dirs_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let subdirs: Vec<_> = std::fs::read_dir(&out[i])
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        out.extend(subdirs);
        i += 1;
    }
    out
}

/// When a service account token (a JWT) is due for a new one, in Unix seconds: at
/// 80 % of its lifetime or after 24 h, whichever comes first (kubelet's rule). `None`
/// for content that is no such token.
pub fn token_refresh_at(content: &[u8]) -> Option<i64> {
    use base64::Engine as _;
    let text = std::str::from_utf8(content).ok()?;
    let mut parts = text.trim().split('.');
    let (_, body, _) = (parts.next()?, parts.next()?, parts.next()?);
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body.trim_end_matches('='))
            .ok()?,
    )
    .ok()?;
    let exp = claims.get("exp")?.as_i64()?;
    let iat = claims
        .get("iat")
        .or_else(|| claims.get("nbf"))
        .and_then(serde_json::Value::as_i64)?;
    Some((iat + (exp - iat) * 8 / 10).min(iat + 86400))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_due_at_80_percent_of_their_life() {
        use base64::Engine as _;
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let jwt = |claims| {
            format!(
                "{}.{}.sig",
                b64(serde_json::json!({"alg": "RS256"})),
                b64(claims)
            )
        };
        let t = jwt(serde_json::json!({"iat": 1000, "exp": 1000 + 3600}));
        assert_eq!(token_refresh_at(t.as_bytes()), Some(1000 + 2880));
        let long = jwt(serde_json::json!({"iat": 0, "exp": 10 * 86400}));
        assert_eq!(token_refresh_at(long.as_bytes()), Some(86400));
        assert_eq!(token_refresh_at(b"-----BEGIN CERTIFICATE-----"), None);
    }

    #[test]
    fn versions_swap_whole_and_links_follow() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vol");
        let v1: Vec<File> = vec![
            ("a".into(), b"one".to_vec(), 0o644),
            ("sub/b".into(), b"two".to_vec(), 0o400),
        ];
        assert!(differs(&dir, &v1));
        write(&dir, &v1, None, None).unwrap();
        assert!(!differs(&dir, &v1));
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"one");
        assert_eq!(std::fs::read(dir.join("sub/b")).unwrap(), b"two");
        assert_eq!(
            std::fs::read_link(dir.join("a")).unwrap(),
            Path::new("..data/a")
        );
        let first = std::fs::read_link(dir.join("..data")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let v2: Vec<File> = vec![
            ("a".into(), b"uno".to_vec(), 0o644),
            ("c".into(), b"3".to_vec(), 0o644),
        ];
        assert!(differs(&dir, &v2));
        write(&dir, &v2, None, None).unwrap();
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"uno");
        assert_eq!(std::fs::read(dir.join("c")).unwrap(), b"3");
        assert!(!dir.join("sub").exists(), "gone from the volume");
        assert!(!dir.join(first).exists(), "the old version is removed");
        let versions = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("..2"))
            .count();
        assert_eq!(versions, 1);
        assert!(write(&dir, &[("../x".into(), Vec::new(), 0o644)], None, None).is_err());
        assert!(write(&dir, &[("..data/x".into(), Vec::new(), 0o644)], None, None).is_err());
    }

    #[test]
    fn an_fs_group_owns_the_volume_and_may_read_it() {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vol");
        let mut files: Vec<File> = vec![
            ("token".into(), b"t".to_vec(), 0o400),
            ("sub/ca.crt".into(), b"c".to_vec(), 0o600),
        ];
        with_fs_group(&mut files);
        let owned = ["token".to_string()];
        write(&dir, &files, Some(2000), Some((1000, &owned))).unwrap();
        assert!(!differs(&dir, &files));
        for (path, mode) in [("token", 0o440), ("sub/ca.crt", 0o640)] {
            let m = std::fs::metadata(dir.join(path)).unwrap();
            assert_eq!(
                (m.gid(), m.permissions().mode() & 0o7777),
                (2000, mode),
                "{path}"
            );
        }
        // The token belongs to the pod's one user; the rest stays root's.
        let uid = |p: &str| std::fs::metadata(dir.join(p)).unwrap().uid();
        assert_eq!((uid("token"), uid("sub/ca.crt")), (1000, 0));
        let sub = std::fs::metadata(dir.join("..data/sub")).unwrap();
        assert_eq!(sub.gid(), 2000);
        assert_eq!(sub.permissions().mode() & 0o2550, 0o2550);
        assert_eq!(std::fs::metadata(&dir).unwrap().gid(), 2000);
    }
}

//! What the kernel offers for sandbox security, read from sysfs and procfs: AppArmor
//! (and its loaded profiles), SELinux, user namespaces and idmapped mounts.

use std::path::Path;

use crate::model::lsm::LsmSupport;

const APPARMOR_DIR: &str = "/sys/kernel/security/apparmor";
const APPARMOR_ENABLED: &str = "/sys/module/apparmor/parameters/enabled";

/// Whether AppArmor is enabled (kubelet's test: its securityfs directory exists and
/// the module parameter says `Y`).
pub fn apparmor_enabled() -> bool {
    Path::new(APPARMOR_DIR).is_dir()
        && std::fs::read_to_string(APPARMOR_ENABLED).is_ok_and(|s| s.starts_with('Y'))
}

/// Whether SELinux is enabled: selinuxfs is mounted and has an `enforce` file.
pub fn selinux_enabled() -> bool {
    Path::new("/sys/fs/selinux/enforce").is_file()
}

/// The node's security modules.
pub fn support() -> LsmSupport {
    LsmSupport {
        apparmor: apparmor_enabled(),
        selinux: selinux_enabled(),
    }
}

/// Whether AppArmor profile `name` is loaded (`<securityfs>/apparmor/profiles` lists
/// `name (mode)` per line).
pub fn apparmor_loaded(name: &str) -> bool {
    std::fs::read_to_string(Path::new(APPARMOR_DIR).join("profiles"))
        .is_ok_and(|t| profile_listed(&t, name))
}

/// Whether the kernel's profile list `text` has `name`.
pub fn profile_listed(text: &str, name: &str) -> bool {
    text.lines()
        .filter_map(|l| l.rsplit_once(" ("))
        .any(|(n, _)| n == name)
}

/// Loads (or replaces) the AppArmor profile `name` from its policy `text`, written to
/// `dir/name`, with the node's `apparmor_parser` (AppArmor's own compiler, as
/// containerd loads its default profile).
pub fn load_profile(dir: &Path, name: &str, text: &str) -> std::io::Result<()> {
    let parser = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/sbin".into(), "/usr/sbin".into()])
        .map(|d| d.join("apparmor_parser"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "apparmor_parser is not installed (Debian and Ubuntu: the apparmor package)",
            )
        })?;
    std::fs::create_dir_all(dir)?;
    let file = dir.join(name);
    crate::state::write_atomic(&file, text.as_bytes(), 0o644).map_err(std::io::Error::other)?;
    let out = std::process::Command::new(&parser)
        .arg("-Kr")
        .arg(&file)
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "{} -Kr {}: {}",
            parser.display(),
            file.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// How many user namespaces may be made (`user.max_user_namespaces`); `None` where the
/// kernel has no user namespaces.
pub fn max_user_namespaces() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loaded_profiles_are_read_by_name() {
        let text = "kernlet-default (enforce)\nk8s-apparmor-example-deny-write (complain)\n/usr/bin/man (enforce)\n";
        assert!(profile_listed(text, "kernlet-default"));
        assert!(profile_listed(text, "/usr/bin/man"));
        assert!(!profile_listed(text, "k8s-apparmor"));
    }
}

//! The sandbox-security checks of `kernlet doctor`: which of AppArmor, SELinux, user
//! namespaces and idmapped mounts this node has, and what kernlet does with each.

use super::{Check, Facts, Verdict, check, kernel_version};
use crate::model::lsm::RUNTIME_DEFAULT_PROFILE;

/// What the kernel offers for sandbox security.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecurityFacts {
    pub lsm: crate::model::lsm::LsmSupport,
    /// Whether the profile `RuntimeDefault` runs under is loaded (AppArmor nodes).
    pub default_profile_loaded: bool,
    /// `user.max_user_namespaces`; `None` without user namespaces.
    pub max_user_namespaces: Option<u64>,
}

/// Reads them from the running kernel.
pub fn gather() -> SecurityFacts {
    let lsm = crate::sys::lsm::support();
    SecurityFacts {
        default_profile_loaded: lsm.apparmor
            && crate::sys::lsm::apparmor_loaded(RUNTIME_DEFAULT_PROFILE),
        lsm,
        max_user_namespaces: crate::sys::lsm::max_user_namespaces(),
    }
}

/// Judges them.
pub fn judge(f: &Facts) -> Vec<Check> {
    use Verdict::{Ok, Warn};
    let s = &f.security;
    let mut out = Vec::new();
    out.push(match (s.lsm.apparmor, s.default_profile_loaded) {
        (false, _) => check(
            "AppArmor",
            Ok,
            "not enabled: pods asking for an AppArmor profile are refused (reason AppArmor), as kubelet refuses them".into(),
            "",
        ),
        (true, true) => check(
            "AppArmor",
            Ok,
            format!("enabled: Localhost profiles run when loaded, RuntimeDefault runs under {RUNTIME_DEFAULT_PROFILE}"),
            "",
        ),
        (true, false) => check(
            "AppArmor",
            Warn,
            format!("enabled, but the profile {RUNTIME_DEFAULT_PROFILE} is not loaded: containers asking for RuntimeDefault fail to start (CreateContainerError)"),
            "install apparmor_parser (the apparmor package): kernlet loads its profile at start",
        ),
    });
    out.push(if s.lsm.selinux {
        check(
            "SELinux",
            Warn,
            "enabled: kernlet does not label containers; pods with seLinuxOptions are refused (reason SELinux), others run in kernlet's own context".into(),
            "keep SELinux-labelled workloads off this node, or run it with SELinux disabled",
        )
    } else {
        check(
            "SELinux",
            Ok,
            "not enabled: seLinuxOptions have no meaning here and are ignored, as kubelet and containerd do".into(),
            "",
        )
    });
    let version = kernel_version(&f.kernel_release);
    let idmapped_tmpfs = version.is_some_and(|v| v >= (6, 3));
    out.push(match s.max_user_namespaces {
        Some(n) if n > 0 && idmapped_tmpfs => check(
            "user namespaces",
            Ok,
            format!("the kernel allows {n}: hostUsers: false pods run in their own user namespace, 65536 node IDs each (from 65536, or the kubelet user's in /etc/subuid)"),
            "",
        ),
        Some(n) if n > 0 => check(
            "user namespaces",
            Ok,
            format!("the kernel allows {n}, but cannot idmap tmpfs (Linux 6.3), where pods' secrets and tokens live: hostUsers: false pods are refused"),
            "",
        ),
        _ => check(
            "user namespaces",
            Ok,
            "not available (user.max_user_namespaces is 0 or missing); hostUsers: false pods are refused".into(),
            "",
        ),
    });
    out.push(check(
        "idmapped mounts",
        Ok,
        match version {
            Some(v) if v >= (6, 3) => format!(
                "kernel {}.{}: idmapped mounts for every filesystem pods use, tmpfs included; used for the volumes and image layers of hostUsers: false pods",
                v.0, v.1
            ),
            Some(v) if v >= (5, 12) => format!(
                "kernel {}.{}: idmapped mounts, but not of tmpfs (6.3): not used",
                v.0, v.1
            ),
            _ => "kernel older than 5.12: no idmapped mounts".into(),
        },
        "",
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_apparmor_node_without_the_default_profile_is_told_to_load_it() {
        let mut f = super::super::tests::facts();
        f.security.lsm.apparmor = true;
        let checks = judge(&f);
        let aa = checks.iter().find(|c| c.name == "AppArmor").unwrap();
        assert_eq!(aa.verdict, Verdict::Warn);
        assert!(aa.fix.contains("install apparmor_parser"), "{aa:?}");
        f.security.default_profile_loaded = true;
        assert_eq!(judge(&f)[0].verdict, Verdict::Ok);
        f.security.lsm.selinux = true;
        let se = judge(&f).into_iter().find(|c| c.name == "SELinux").unwrap();
        assert_eq!(se.verdict, Verdict::Warn);
        f.kernel_release = "5.15.0-91-generic".into();
        let id = judge(&f)
            .into_iter()
            .find(|c| c.name == "idmapped mounts")
            .unwrap();
        assert!(id.detail.contains("not of tmpfs"), "{id:?}");
        let us = judge(&f)
            .into_iter()
            .find(|c| c.name == "user namespaces")
            .unwrap();
        assert!(us.detail.contains("pods are refused"), "{us:?}");
        f.kernel_release = "6.18.1".into();
        f.security.max_user_namespaces = Some(100);
        let us = judge(&f)
            .into_iter()
            .find(|c| c.name == "user namespaces")
            .unwrap();
        assert!(
            us.detail.contains("run in their own user namespace"),
            "{us:?}"
        );
    }
}

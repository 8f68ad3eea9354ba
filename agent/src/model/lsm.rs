//! Linux security modules as kubelet 1.36 treats them: which AppArmor profile each
//! container asks for (its securityContext, the deprecated
//! `container.apparmor.security.beta.kubernetes.io/<name>` annotation, then the pod's
//! securityContext), kubelet's admission (a pod that needs AppArmor is refused with
//! reason `AppArmor` on a node without it), and what the container gets where the
//! node has AppArmor. SELinux: on a node where it is disabled, labels mean nothing and
//! are ignored (as kubelet and containerd do); where it is enabled, kernlet cannot
//! apply labels, so a pod asking for one is refused rather than run unlabelled.

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};

use super::admission::Refusal;

/// What the node's kernel offers (see `sys::lsm`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LsmSupport {
    /// AppArmor is enabled (`/sys/module/apparmor/parameters/enabled` is `Y` and its
    /// securityfs directory exists).
    pub apparmor: bool,
    /// SELinux is enabled (selinuxfs is mounted).
    pub selinux: bool,
}

/// An AppArmor profile a container asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppArmor {
    Unconfined,
    RuntimeDefault,
    Localhost(String),
}

/// The deprecated per-container annotation's prefix.
pub const ANNOTATION_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";

/// The profile kernlet applies for `RuntimeDefault` on an AppArmor node; kernlet
/// loads it at start ([`RUNTIME_DEFAULT_PROFILE_TEXT`], with the node's
/// `apparmor_parser`) and never runs the container without it.
pub const RUNTIME_DEFAULT_PROFILE: &str = "kernlet-default";

/// The policy of [`RUNTIME_DEFAULT_PROFILE`].
pub const RUNTIME_DEFAULT_PROFILE_TEXT: &str = include_str!("apparmor/kernlet-default");

fn from_api(p: &k8s_openapi::api::core::v1::AppArmorProfile) -> AppArmor {
    match p.type_.as_str() {
        "Unconfined" => AppArmor::Unconfined,
        "Localhost" => AppArmor::Localhost(p.localhost_profile.clone().unwrap_or_default()),
        _ => AppArmor::RuntimeDefault,
    }
}

fn from_annotation(value: &str) -> Option<AppArmor> {
    match value {
        "runtime/default" => Some(AppArmor::RuntimeDefault),
        "unconfined" => Some(AppArmor::Unconfined),
        v => v
            .strip_prefix("localhost/")
            .map(|name| AppArmor::Localhost(name.to_string())),
    }
}

/// The profile container `c` of `pod` asks for, in kubelet's order; `None`: nothing
/// asked.
pub fn apparmor_profile(pod: &Pod, c: &Container) -> Option<AppArmor> {
    if let Some(p) = c
        .security_context
        .as_ref()
        .and_then(|s| s.app_armor_profile.as_ref())
    {
        return Some(from_api(p));
    }
    let annotation = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(&format!("{ANNOTATION_PREFIX}{}", c.name)))
        .and_then(|v| from_annotation(v));
    annotation.or_else(|| {
        pod.spec
            .as_ref()?
            .security_context
            .as_ref()?
            .app_armor_profile
            .as_ref()
            .map(from_api)
    })
}

/// Every container of the spec, init and ephemeral ones included.
fn all_containers(spec: &PodSpec) -> impl Iterator<Item = Container> + '_ {
    super::pod_lifecycle::all_containers(spec)
        .cloned()
        .chain(super::pod_lifecycle::ephemeral_containers(spec))
}

/// Whether the pod needs AppArmor: a profile other than `Unconfined` for the pod or
/// any of its containers (kubelet's `isRequired`).
pub fn apparmor_required(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    let confined = |p: Option<AppArmor>| p.is_some_and(|p| p != AppArmor::Unconfined);
    confined(
        spec.security_context
            .as_ref()
            .and_then(|s| s.app_armor_profile.as_ref())
            .map(from_api),
    ) || all_containers(spec).any(|c| confined(apparmor_profile(pod, &c)))
}

fn selinux_asked(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    let set = |o: Option<&k8s_openapi::api::core::v1::SELinuxOptions>| {
        o.is_some_and(|o| {
            [&o.user, &o.role, &o.type_, &o.level]
                .iter()
                .any(|f| f.as_deref().is_some_and(|v| !v.is_empty()))
        })
    };
    set(spec
        .security_context
        .as_ref()
        .and_then(|s| s.se_linux_options.as_ref()))
        || all_containers(spec).any(|c| {
            set(c
                .security_context
                .as_ref()
                .and_then(|s| s.se_linux_options.as_ref()))
        })
}

/// kubelet's admission of the pod's security modules on this node.
pub fn admit(pod: &Pod, host: &LsmSupport) -> Result<(), Refusal> {
    let refuse = |reason: &str, message: String| {
        Err(Refusal {
            reason: reason.into(),
            message,
        })
    };
    if apparmor_required(pod) {
        if !host.apparmor {
            return refuse(
                "AppArmor",
                "Cannot enforce AppArmor: AppArmor is not enabled on the host".into(),
            );
        }
        for c in pod.spec.iter().flat_map(all_containers) {
            if let Some(AppArmor::Localhost(name)) = apparmor_profile(pod, &c)
                && name.trim().is_empty()
            {
                return refuse(
                    "AppArmor",
                    "Cannot enforce AppArmor: invalid empty AppArmor profile name".into(),
                );
            }
        }
    }
    if host.selinux && selinux_asked(pod) {
        return refuse(
            "SELinux",
            "Cannot enforce SELinux options: SELinux is enabled on this node and kernlet does not apply SELinux labels".into(),
        );
    }
    Ok(())
}

/// The profile a container runs under on an AppArmor node (`process.apparmorProfile`),
/// given the profiles the kernel has loaded; an error names what is missing. Nothing
/// asked, or `Unconfined`, runs unconfined (as kubelet 1.36 with its runtime's default
/// left out; privileged containers always do).
pub fn oci_profile(
    asked: Option<&AppArmor>,
    privileged: bool,
    loaded: &dyn Fn(&str) -> bool,
) -> Result<Option<String>, String> {
    let name = match asked {
        None | Some(AppArmor::Unconfined) => return Ok(None),
        Some(AppArmor::RuntimeDefault) if privileged => return Ok(None),
        Some(AppArmor::RuntimeDefault) => RUNTIME_DEFAULT_PROFILE,
        Some(AppArmor::Localhost(name)) => name.as_str(),
    };
    if loaded(name) {
        Ok(Some(name.to_string()))
    } else {
        Err(format!(
            "AppArmor profile {name:?} is not loaded on this node: load it with apparmor_parser -r <file> (RuntimeDefault uses the profile {RUNTIME_DEFAULT_PROFILE:?}, which kernlet loads at start where apparmor_parser is installed)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    const NO_LSM: LsmSupport = LsmSupport {
        apparmor: false,
        selinux: false,
    };
    const APPARMOR: LsmSupport = LsmSupport {
        apparmor: true,
        selinux: false,
    };

    #[test]
    fn a_pod_that_needs_apparmor_is_refused_where_there_is_none() {
        let cases = [
            (json!({"containers": [{"name": "c"}]}), false),
            (
                json!({"securityContext": {"appArmorProfile": {"type": "Unconfined"}},
                       "containers": [{"name": "c"}]}),
                false,
            ),
            (
                json!({"securityContext": {"appArmorProfile": {"type": "RuntimeDefault"}},
                       "containers": [{"name": "c"}]}),
                true,
            ),
            (
                json!({"containers": [{"name": "c", "securityContext":
                       {"appArmorProfile": {"type": "Localhost", "localhostProfile": "p"}}}]}),
                true,
            ),
            (
                json!({"initContainers": [{"name": "i", "securityContext":
                       {"appArmorProfile": {"type": "RuntimeDefault"}}}],
                       "containers": [{"name": "c"}]}),
                true,
            ),
        ];
        for (spec, needs) in cases {
            let p = pod(json!({"metadata": {"name": "p"}, "spec": spec}));
            assert_eq!(apparmor_required(&p), needs, "{spec}");
            let r = admit(&p, &NO_LSM);
            assert_eq!(r.is_err(), needs, "{spec}");
            if let Err(r) = r {
                assert_eq!(r.reason, "AppArmor");
                assert_eq!(
                    r.message,
                    "Cannot enforce AppArmor: AppArmor is not enabled on the host"
                );
            }
            assert!(admit(&p, &APPARMOR).is_ok(), "{spec}");
        }
        // The deprecated annotation counts too.
        let annotated = pod(json!({
            "metadata": {"name": "p", "annotations": {
                "container.apparmor.security.beta.kubernetes.io/c": "localhost/k8s-deny"}},
            "spec": {"containers": [{"name": "c"}]},
        }));
        assert!(apparmor_required(&annotated));
        assert_eq!(
            apparmor_profile(&annotated, &annotated.spec.as_ref().unwrap().containers[0]),
            Some(AppArmor::Localhost("k8s-deny".into()))
        );
        // An empty Localhost name is refused even where AppArmor is.
        let empty = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "c", "securityContext": {"appArmorProfile": {"type": "Localhost", "localhostProfile": " "}}}]}}));
        assert_eq!(
            admit(&empty, &APPARMOR).unwrap_err().message,
            "Cannot enforce AppArmor: invalid empty AppArmor profile name"
        );
    }

    #[test]
    fn the_container_wins_over_the_annotation_over_the_pod() {
        let p = pod(json!({
            "metadata": {"name": "p", "annotations": {
                "container.apparmor.security.beta.kubernetes.io/b": "unconfined"}},
            "spec": {"securityContext": {"appArmorProfile": {"type": "RuntimeDefault"}},
                     "containers": [
                         {"name": "a", "securityContext": {"appArmorProfile":
                             {"type": "Localhost", "localhostProfile": "mine"}}},
                         {"name": "b"},
                         {"name": "c"}]},
        }));
        let spec = p.spec.clone().unwrap();
        let got: Vec<_> = spec
            .containers
            .iter()
            .map(|c| apparmor_profile(&p, c))
            .collect();
        assert_eq!(
            got,
            [
                Some(AppArmor::Localhost("mine".into())),
                Some(AppArmor::Unconfined),
                Some(AppArmor::RuntimeDefault)
            ]
        );
    }

    #[test]
    fn selinux_labels_are_refused_only_where_selinux_is_enabled() {
        let p = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "c", "securityContext": {"seLinuxOptions": {"level": "s0:c123,c456"}}}]}}));
        assert!(
            admit(&p, &NO_LSM).is_ok(),
            "labels mean nothing without SELinux"
        );
        let on = LsmSupport {
            apparmor: false,
            selinux: true,
        };
        assert_eq!(admit(&p, &on).unwrap_err().reason, "SELinux");
        let plain =
            pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}}));
        assert!(admit(&plain, &on).is_ok());
    }

    #[test]
    fn a_profile_runs_only_when_the_kernel_has_it_loaded() {
        let loaded = |n: &str| n == "kernlet-default" || n == "k8s-deny";
        assert_eq!(oci_profile(None, false, &loaded), Ok(None));
        assert_eq!(
            oci_profile(Some(&AppArmor::Unconfined), false, &loaded),
            Ok(None)
        );
        assert_eq!(
            oci_profile(Some(&AppArmor::RuntimeDefault), false, &loaded),
            Ok(Some("kernlet-default".into()))
        );
        assert_eq!(
            oci_profile(Some(&AppArmor::RuntimeDefault), true, &loaded),
            Ok(None)
        );
        assert_eq!(
            oci_profile(
                Some(&AppArmor::Localhost("k8s-deny".into())),
                false,
                &loaded
            ),
            Ok(Some("k8s-deny".into()))
        );
        let e =
            oci_profile(Some(&AppArmor::Localhost("other".into())), false, &loaded).unwrap_err();
        assert!(e.contains("\"other\" is not loaded"), "{e}");
        let none = |_: &str| false;
        assert!(oci_profile(Some(&AppArmor::RuntimeDefault), false, &none).is_err());
    }
}

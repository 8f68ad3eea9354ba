//! Image references as Kubernetes and the container runtimes read them:
//! `busybox` is `docker.io/library/busybox:latest`, a digest pins the content.

use std::fmt;

/// A parsed, normalized image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    /// Registry host (with port), e.g. `docker.io`, `198.18.0.5:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/busybox`.
    pub repository: String,
    /// Tag; `latest` when neither tag nor digest is given.
    pub tag: Option<String>,
    /// `sha256:<hex>` when the reference pins a digest.
    pub digest: Option<String>,
}

/// Why a reference was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("image reference {reference:?} is not valid: {why}")]
pub struct RefError {
    pub reference: String,
    pub why: &'static str,
}

fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    })
}

impl ImageRef {
    /// Parses `[registry/]repo[:tag][@sha256:hex]` with Docker's defaults.
    pub fn parse(reference: &str) -> Result<Self, RefError> {
        let err = |why| RefError {
            reference: reference.to_string(),
            why,
        };
        if reference.is_empty() || reference.len() > 4096 || reference.contains(char::is_whitespace)
        {
            return Err(err("empty, too long or containing spaces"));
        }
        let (name, digest) = match reference.split_once('@') {
            Some((n, d)) if valid_digest(d) => (n, Some(d.to_string())),
            Some(_) => return Err(err("the digest must be sha256:<64 lowercase hex digits>")),
            None => (reference, None),
        };
        // A tag is after the last ':' that follows the last '/'.
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &name[last_slash + i + 1..];
                if tag.is_empty()
                    || tag.len() > 128
                    || !tag
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                {
                    return Err(err(
                        "the tag may hold only letters, digits, '.', '_' and '-'",
                    ));
                }
                (&name[..last_slash + i], Some(tag.to_string()))
            }
            None => (name, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), rest.to_string())
            }
            _ => ("docker.io".to_string(), name.to_string()),
        };
        if let Some((host, port)) = registry.split_once(':')
            && (host.is_empty() || port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(err("the registry must be host or host:port"));
        }
        let repository = if registry == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.is_empty()
            || repository.split('/').any(|c| {
                c.is_empty()
                    || !c.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            })
        {
            return Err(err(
                "the repository may hold only lowercase letters, digits, '.', '_', '-' and '/'",
            ));
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_string()),
            _ => tag,
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(r: &str) -> String {
        ImageRef::parse(r).unwrap().to_string()
    }

    #[test]
    fn docker_defaults() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("bitnami/nginx"), "docker.io/bitnami/nginx:latest");
        assert_eq!(
            norm("registry.k8s.io/pause:3.10"),
            "registry.k8s.io/pause:3.10"
        );
        assert_eq!(
            norm("198.18.0.5:5000/library/busybox:1.36"),
            "198.18.0.5:5000/library/busybox:1.36"
        );
        assert_eq!(norm("localhost/app"), "localhost/app:latest");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            norm(&format!("busybox@{d}")),
            format!("docker.io/library/busybox@{d}")
        );
        assert_eq!(
            norm(&format!("host:5000/x/y:t@{d}")),
            format!("host:5000/x/y:t@{d}")
        );
    }

    #[test]
    fn bad_references_are_named() {
        for bad in [
            "",
            "Busybox",
            "a b",
            "busybox:",
            "busybox@sha256:12",
            "x//y",
            "busybox:t/a",
        ] {
            let e = ImageRef::parse(bad).unwrap_err();
            assert_eq!(e.reference, bad);
        }
    }
}

//! Pure translations from Kubernetes objects to what kernlet will build. No I/O here.

pub mod admission;
pub mod cidr;
pub mod csr;
pub mod devices;
pub mod dns;
pub mod env;
pub mod eviction;
pub mod image_ref;
pub mod kubelet_config;
pub mod kubelet_config_file;
pub mod lsm;
pub mod maglev;
pub mod manifest;
pub mod node;
pub mod oom;
pub mod overlay;
pub mod pod_lifecycle;
pub mod pod_status;
pub mod probe;
pub mod qos;
pub mod quantity;
pub mod resize;
pub mod runtime_spec;
pub mod seccomp;
pub mod services;
pub mod stop_signal;

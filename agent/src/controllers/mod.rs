//! Controllers: observe the apiserver, compute what should be (`model`), apply the
//! difference. They never call the kernel directly.

pub mod client_cert;
pub mod endpoint_barrier;
pub mod events;
pub mod node;
pub mod node_labels;
pub mod overlay;
pub mod permissions;
pub mod pod_sources;
pub mod pods;
pub mod proxy_health;
pub mod proxy_metrics;
pub mod runtime_classes;
pub mod service_index;
pub mod service_links;
pub mod services;
pub mod serving_cert;
pub mod watch_cache;

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

/// How the cluster-wide watches (Services, EndpointSlices, Nodes) list: from the
/// apiserver's watch cache (`resourceVersion=0`, which it answers whole, ignoring the
/// page size), as client-go's informers do for kube-proxy and flannel — not a quorum
/// read paged 500 at a time (kube-rs's default), which at 10k Services is 20 round
/// trips a resource before the first sync.
pub fn list_from_cache() -> kube::runtime::watcher::Config {
    kube::runtime::watcher::Config::default().any_semantic()
}

#[cfg(test)]
mod tests {
    #[test]
    fn cluster_wide_watches_list_from_the_watch_cache() {
        let c = super::list_from_cache();
        assert_eq!(
            c.list_semantic,
            kube::runtime::watcher::ListSemantic::Any,
            "resourceVersion=0: served whole from the apiserver's cache"
        );
    }
}

//! Everything that touches the kernel: cgroups, BPF, and (later) namespaces, mounts,
//! netlink. One small module per primitive; callers above see plain Rust types.

pub mod bpf;
pub mod cgroup;
pub mod cgroup_stats;
pub mod clock;
pub mod device_filter;
pub mod fs;
pub mod icmp;
pub mod lb;
pub mod lsm;
pub mod machine;
pub mod mount;
pub mod netlink;
pub mod nftables;
pub mod ns;
pub mod process;
pub mod sockdiag;
pub mod stats;
pub mod userns;
pub mod vtep;

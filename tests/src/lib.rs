//! kernlet's test kit: a control plane (in-memory, or a real one from
//! `KUBEBUILDER_ASSETS`), simulated nodes in network namespaces, and the hygiene that
//! keeps a shared machine clean.

pub mod apiserver;
pub mod cluster;
pub mod fixtures;
pub mod grpc_health;
pub mod hygiene;
pub mod oci;
pub mod overlay;
pub mod real;
pub mod registry;
pub mod simnode;

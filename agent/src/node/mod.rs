//! A node: its flags, their checking into a configuration, and its wiring — in the
//! library, so the binary only parses flags and a test can start a node in-process.

mod args;
mod logind;
mod prepare;
mod run;
mod shutdown;
mod standalone;

pub use args::{LbAlgorithm, NodeArgs, NodeIps, RegistryArgs};
pub use prepare::{PreparedNode, prepare_node};
pub use run::run_node;
pub use standalone::run_standalone;

/// The tokio runtime of the agent and its CLI: two worker threads.
pub fn tokio_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

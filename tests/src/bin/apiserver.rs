//! Starts the test kit's in-memory control plane, writes an admin kubeconfig and prints
//! its path, so a person can point kubectl at it. Stops on Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use kernlet_tests::apiserver::{InMemoryApiServer, Options};

#[derive(Parser)]
#[command(
    name = "kernlet-apiserver",
    about = "kernlet's in-memory Kubernetes control plane for tests"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Where to write the admin kubeconfig.
    #[arg(long, default_value = "target/kernlet-apiserver/admin.kubeconfig")]
    kubeconfig: PathBuf,
    /// Allow every request (no Node/RBAC authorization).
    #[arg(long)]
    allow_all: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = InMemoryApiServer::start(Options {
        listen: args.listen,
        enforce_authz: !args.allow_all,
        ..Options::default()
    })
    .await?;
    let admin = server.admin_kubeconfig()?;
    if let Some(parent) = args.kubeconfig.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(&admin, &args.kubeconfig)?;
    let shown = std::fs::canonicalize(&args.kubeconfig).unwrap_or(args.kubeconfig);
    println!("in-memory apiserver at {}", server.url());
    println!("admin kubeconfig: {}", shown.display());
    println!(
        "try: kubectl --kubeconfig {} get --raw /version",
        shown.display()
    );
    println!(
        "bootstrap token: {}",
        kernlet_tests::apiserver::BOOTSTRAP_TOKEN
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}

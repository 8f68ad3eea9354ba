//! The `kernlet` binary: parses flags and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kernlet::config::NodeDirs;

#[derive(Parser, Debug)]
#[command(
    name = "kernlet",
    version,
    about = "kubelet, kube-proxy and flannel in one daemon"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the node agent.
    Run(RunArgs),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Run the pods of manifest files, without an apiserver.
    #[arg(long, required = true)]
    standalone: bool,
    /// Directory of Pod manifests (*.yaml, *.yml, *.json) for --standalone.
    #[arg(
        long,
        requires = "standalone",
        default_value = "/etc/kernlet/manifests"
    )]
    manifests: PathBuf,
    #[command(flatten)]
    dirs: NodeDirs,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kernlet: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => {
            args.dirs.validate()?;
            let plans = kernlet::standalone::plan(&args.manifests)?;
            print!("{}", kernlet::standalone::render(&plans, &args.dirs));
            Ok(())
        }
    }
}

//! The `kernlet` binary: parses flags and hands over to the library.

mod cli;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use cli::views::{joined_kubeconfig, logs, pods, print_view, ps};
use cli::{Cli, Command, ViewDirs};
use kernlet::node::{prepare_node, run_node, run_standalone};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("internal") {
        return cli::internal::internal(&args[2..]);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // `--config FILE` (a KubeletConfiguration) becomes the flags it sets, flags given
    // on the command line winning, before the command line is parsed.
    let raw = args.clone();
    let args = match kernlet::model::kubelet_config_file::expand(args) {
        Ok((args, ignored)) => {
            if !ignored.is_empty() {
                tracing::warn!(
                    "--config: kernlet does not implement {}; ignored",
                    ignored.join(", ")
                );
            }
            args
        }
        Err(e) => {
            eprintln!("kernlet: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse_from(args);
    match run(cli, &raw) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kernlet: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, raw: &[String]) -> anyhow::Result<()> {
    // One TLS crypto provider for every client of the process (apiserver, registries).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match cli.command {
        Command::Run(args) => {
            args.node.dirs.validate()?;
            if args.standalone {
                return run_standalone(args.manifests.clone(), &args.node);
            }
            let kubeconfig = args
                .kubeconfig
                .clone()
                .context("--kubeconfig is required without --standalone")?;
            let mut node = prepare_node(&args.node)?;
            node.static_pods = args.manifests.clone();
            runtime()?.block_on(run_node(kubeconfig, node))
        }
        Command::Image(cmd) => cli::image::image(cmd),
        Command::Pods {
            output,
            state_dir,
            run_dir,
        } => {
            pods(&state_dir, &run_dir, output.output);
            Ok(())
        }
        Command::Inspect {
            what,
            output,
            state_dir,
            run_dir,
            cgroup_root,
        } => cli::views::inspect(&what, output.output, &state_dir, &run_dir, &cgroup_root),
        Command::Ps {
            output,
            state_dir,
            run_dir,
        } => {
            ps(&state_dir, &run_dir, output.output);
            Ok(())
        }
        Command::Logs {
            pod,
            container,
            previous,
            tail,
            timestamps,
            state_dir,
        } => logs(
            &state_dir,
            &pod,
            container.as_deref(),
            previous,
            tail,
            timestamps,
        ),
        Command::Exec {
            pod,
            container,
            timeout,
            stdin,
            tty,
            state_dir,
            command,
        } => cli::exec::exec(&state_dir, &pod, container, timeout, (stdin, tty), &command),
        Command::Explain {
            target,
            output,
            kubeconfig,
            dirs:
                ViewDirs {
                    state_dir,
                    run_dir,
                    bpffs_dir,
                },
        } => {
            let kubeconfig = joined_kubeconfig(kubeconfig, &state_dir);
            let src = kernlet::explain::Sources {
                state_dir: &state_dir,
                run_dir: &run_dir,
                bpffs_dir: &bpffs_dir,
                kubeconfig: kubeconfig.as_deref(),
            };
            let v = runtime()?
                .block_on(kernlet::explain::explain(&target, &src))
                .map_err(|e| anyhow::anyhow!(e))?;
            print_view(output.output, &v, kernlet::explain::text);
            Ok(())
        }
        Command::Services {
            filter,
            output,
            kubeconfig,
            dirs:
                ViewDirs {
                    state_dir,
                    run_dir,
                    bpffs_dir,
                },
        } => {
            let kubeconfig = joined_kubeconfig(kubeconfig, &state_dir);
            let v = runtime()?
                .block_on(kernlet::services_view::gather(
                    &bpffs_dir.join("lb"),
                    &run_dir,
                    kubeconfig.as_deref(),
                    filter.as_deref(),
                ))
                .map_err(|e| anyhow::anyhow!(e))?;
            print_view(output.output, &v, kernlet::services_view::table);
            Ok(())
        }
        Command::Top {
            containers,
            interval,
            once,
            output,
            state_dir,
            cgroup_root,
        } => cli::views::top(
            &state_dir,
            &cgroup_root,
            containers,
            interval,
            once || output.output == cli::Output::Json,
            output.output,
        ),
        Command::Status {
            output,
            kubeconfig,
            node_name,
            dirs:
                ViewDirs {
                    state_dir,
                    run_dir,
                    bpffs_dir,
                },
        } => {
            let kubeconfig = joined_kubeconfig(kubeconfig, &state_dir);
            let v = runtime()?.block_on(kernlet::status::gather(
                kubeconfig.as_deref(),
                node_name,
                &state_dir,
                &run_dir,
                &bpffs_dir,
            ));
            print_view(output.output, &v, kernlet::status::text);
            Ok(())
        }
        Command::Overlay {
            output,
            kubeconfig,
            state_dir,
            run_dir,
        } => {
            let kubeconfig = joined_kubeconfig(kubeconfig, &state_dir);
            let view = runtime()?
                .block_on(kernlet::overlay_view::gather(
                    kubeconfig.as_deref(),
                    &run_dir,
                ))
                .map_err(|e| anyhow::anyhow!(e))?;
            print_view(output.output, &view, kernlet::overlay_view::table);
            Ok(())
        }
        Command::Doctor {
            output,
            dirs,
            kubeconfig,
        } => cli::doctor::doctor(output.output, &dirs, kubeconfig),
        Command::Cleanup {
            output,
            dirs,
            bridge,
            dry_run,
        } => {
            let mut node = kernlet::cleanup::node::KernelTraces {
                pin_dir: dirs.bpffs_dir.join("lb"),
                state_dir: dirs.state_dir,
                run_dir: dirs.run_dir,
                bridge,
            };
            let report = kernlet::cleanup::cleanup(&mut node, dry_run)?;
            match output.output {
                cli::Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                cli::Output::Table => print!("{}", kernlet::cleanup::text(&report)),
            }
            if !report.failed.is_empty() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Join(args) => {
            args.node.dirs.validate()?;
            // Everything about the node is checked before credentials are asked for.
            let node = prepare_node(&args.node)?;
            let join = kernlet::bootstrap::JoinArgs {
                server: args.server.clone(),
                token: args.token.clone(),
                ca_pins: args.ca_cert_hashes.clone(),
                node_name: node.cfg.name.clone(),
                state_dir: args.node.dirs.state_dir.clone(),
                csr_timeout: Duration::from_secs(args.csr_timeout),
            };
            let rt = runtime()?;
            let kubeconfig = rt.block_on(kernlet::bootstrap::join(&join))?;
            let node = with_saved_config(raw, &join.state_dir)?.unwrap_or(node);
            rt.block_on(run_node(kubeconfig, node))
        }
    }
}

/// The node prepared again with the cluster's KubeletConfiguration the join saved (as
/// kubeadm's kubelet runs with the config.yaml it downloads), the command line's flags
/// and `--config` winning; `None` when the command gave its own `--config` or nothing
/// was saved.
fn with_saved_config(
    raw: &[String],
    state_dir: &std::path::Path,
) -> anyhow::Result<Option<kernlet::node::PreparedNode>> {
    let saved = kernlet::bootstrap::config_path(state_dir);
    if !saved.exists()
        || raw
            .iter()
            .any(|a| a == "--config" || a.starts_with("--config="))
    {
        return Ok(None);
    }
    let mut args = raw.to_vec();
    args.push("--config".into());
    args.push(saved.display().to_string());
    let (args, ignored) = kernlet::model::kubelet_config_file::expand(args)?;
    if !ignored.is_empty() {
        tracing::info!(
            "the cluster's KubeletConfiguration sets what kernlet does not implement: {}; ignored",
            ignored.join(", ")
        );
    }
    let Command::Join(args) = Cli::try_parse_from(args)?.command else {
        return Ok(None);
    };
    Ok(Some(prepare_node(&args.node)?))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(kernlet::node::tokio_runtime()?)
}

//! `tandem`: the node daemon and the command line (DESIGN §5).
//!
//! Exit status: 0 success, 1 refused or failed (one line on stderr says why), 2 usage error.

mod metadata;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use manager::config::{Config, DEFAULT_CONFIG_PATH};

/// Two Linux servers, one disk.
#[derive(Debug, Parser)]
#[command(name = "tandem", version, about)]
struct Cli {
    /// The cluster configuration file.
    #[arg(long, global = true, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// This node's name in the configuration (default: the host name).
    #[arg(long, global = true)]
    node: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write fresh metadata on this node's backing store for VOLUME.
    CreateMd {
        /// The volume.
        volume: String,
        /// Overwrite whatever is there.
        #[arg(long)]
        force: bool,
    },
    /// Show the metadata on this node's backing store for VOLUME.
    DumpMd {
        /// The volume.
        volume: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check the configuration file and report the first problem.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tandem: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(&cli.config)?;
    match cli.command {
        Command::CreateMd { volume, force } => {
            let node = this_node(&config, cli.node.as_deref())?;
            metadata::create(&config, &node, &volume, force)
        }
        Command::DumpMd { volume, json } => {
            let node = this_node(&config, cli.node.as_deref())?;
            metadata::dump(&config, &node, &volume, json)
        }
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            println!(
                "{}: ok ({} nodes, {} volumes)",
                cli.config.display(),
                config.nodes.len(),
                config.volumes.len()
            );
            Ok(())
        }
    }
}

/// The node this command acts for: `--node`, else the host name.
fn this_node(config: &Config, node: Option<&str>) -> anyhow::Result<String> {
    let name = match node {
        Some(name) => name.to_string(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .map_err(|e| anyhow::anyhow!("cannot read the host name ({e}); pass --node"))?,
    };
    config
        .node(&name)
        .map_err(|e| anyhow::anyhow!("{e}; pass --node"))?;
    Ok(name)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TANDEM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

//! `tandem`: the node daemon and the command line (DESIGN §5).
//!
//! Exit status: 0 success, 1 refused or failed (one line on stderr says why), 2 usage error.

mod client;
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
    /// Run this node's daemon: its volumes, their links and frontends, the admin socket.
    Daemon,
    /// Print a new cluster key (base64, 32 bytes) for the key file.
    Keygen,
    /// Show nodes, volumes and groups as this node's daemon sees them.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Refresh every second.
        #[arg(long)]
        watch: bool,
    },
    /// Volume commands.
    Volume {
        #[command(subcommand)]
        command: VolumeCommand,
    },
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
    /// After a split brain: what each side changed, and resolving it.
    SplitBrain {
        #[command(subcommand)]
        command: SplitBrainCommand,
    },
    /// Resource groups: start, stop, switch to another node.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// Maintenance mode, cluster-wide: monitors and failover suspended, resources untouched.
    Maintenance {
        /// `on` or `off`.
        state: OnOff,
    },
    /// Run the witness (arbitration node) for two-node clusters: it grants a lease to at most
    /// one node of a cluster at a time. Needs no configuration file.
    Witness {
        /// UDP address to listen on, `host:port`.
        #[arg(long)]
        listen: String,
        /// The cluster key file (the same as the nodes').
        #[arg(long)]
        key: PathBuf,
        /// Grant nothing for this many milliseconds after starting. The witness keeps no
        /// state on disk, so this wait lets any lease it granted before a restart run out;
        /// keep it at least as long as the longest lease the nodes ask for
        /// ([arbitration] lease_ms, at most 60000). Shorter values are for tests.
        #[arg(long, value_name = "MS", default_value_t = 60_000)]
        restart_grace_ms: u64,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    /// Enable GROUP: it starts on the first node that can run it.
    Start {
        /// The group.
        group: String,
    },
    /// Stop GROUP on whichever node runs it, and keep it stopped.
    Stop {
        /// The group.
        group: String,
    },
    /// Move GROUP to NODE (switchover): stopped where it runs, then started there. Refused
    /// when NODE's volumes are not up_to_date unless --force; a start that fails on NODE
    /// goes back.
    Switch {
        /// The group.
        group: String,
        /// The node to run it on.
        #[arg(long)]
        to: String,
        /// Start it there even if its volumes are not up_to_date.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum SplitBrainCommand {
    /// The ranges each side changed since their common ancestor, and which node was primary
    /// on each side and since when.
    Show {
        /// The volume.
        volume: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Keep NODE's data. Run it on both nodes: the discarded node first saves its changed
    /// blocks to --save-discarded DIR (synced to disk; a failed save changes nothing), then
    /// resyncs only the diverged ranges from the kept node.
    Resolve {
        /// The volume.
        volume: String,
        /// The node whose data is kept.
        #[arg(long)]
        keep: String,
        /// Save the discarded node's changed blocks here first: a sparse image of the volume,
        /// the list of ranges, and a RESTORE file with the command to write them back.
        #[arg(long)]
        save_discarded: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum VolumeCommand {
    /// Make this node primary for VOLUME (it then serves the volume).
    Primary {
        /// The volume.
        volume: String,
        /// Accept this node's data even if it is not up to date (the peer then syncs from it).
        #[arg(long)]
        force: bool,
    },
    /// Make this node secondary for VOLUME.
    Secondary {
        /// The volume.
        volume: String,
    },
    /// Connect VOLUME to the peer (and keep reconnecting).
    Connect {
        /// The volume.
        volume: String,
    },
    /// Disconnect VOLUME from the peer and stay stand-alone.
    Disconnect {
        /// The volume.
        volume: String,
    },
    /// Resync VOLUME to the peer from this node: the blocks marked out of sync, or all.
    Resync {
        /// The volume.
        volume: String,
        /// Every block.
        #[arg(long, conflicts_with = "checksum")]
        full: bool,
        /// Every block, compared by checksum first: only the blocks that differ are sent.
        #[arg(long)]
        checksum: bool,
    },
    /// Compare VOLUME on both nodes while it is in use, and report the ranges that differ.
    /// Run it on the primary. Waits for the result unless --no-wait.
    Verify {
        /// The volume.
        volume: String,
        /// Mark the differing blocks out of sync here, so `volume resync` repairs them.
        #[arg(long)]
        mark: bool,
        /// Start it and return; `status` shows progress and the result.
        #[arg(long)]
        no_wait: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Throw away this node's data of VOLUME; it becomes the target of a full sync.
    Invalidate {
        /// The volume.
        volume: String,
    },
    /// Wait until VOLUME is connected, synced, or primary here.
    Wait {
        /// The volume.
        volume: String,
        /// What to wait for.
        condition: client::Condition,
        /// Give up after this many seconds (exit status 1).
        #[arg(long)]
        timeout: Option<u64>,
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
    if matches!(cli.command, Command::Keygen) {
        println!("{}", manager::key::generate());
        return ExitCode::SUCCESS;
    }
    if let Command::Witness {
        listen,
        key,
        restart_grace_ms,
    } = &cli.command
    {
        let limits = manager::cluster::witness::Limits {
            restart_grace_ms: *restart_grace_ms,
            ..manager::cluster::witness::Limits::default()
        };
        return match manager::runtime::witness::run(listen, key, limits) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("tandem: {error}");
                ExitCode::from(1)
            }
        };
    }
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
        Command::Daemon => {
            let node = this_node(&config, cli.node.as_deref())?;
            // A broken invariant stops the node instead of letting it run on half-changed.
            let default_hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                default_hook(info);
                std::process::abort();
            }));
            manager::runtime::run(config, &node).map_err(anyhow::Error::msg)
        }
        Command::Keygen | Command::Witness { .. } => {
            unreachable!("handled before the configuration is read")
        }
        Command::Group { command } => {
            use manager::admin::Request;
            let node = this_node(&config, cli.node.as_deref())?;
            let request = match command {
                GroupCommand::Start { group } => Request::GroupStart { group },
                GroupCommand::Stop { group } => Request::GroupStop { group },
                GroupCommand::Switch { group, to, force } => {
                    Request::GroupSwitch { group, to, force }
                }
            };
            print_message(client::send(&config, &node, &request)?);
            Ok(())
        }
        Command::Maintenance { state } => {
            let node = this_node(&config, cli.node.as_deref())?;
            let on = matches!(state, OnOff::On);
            let request = manager::admin::Request::Maintenance { on };
            print_message(client::send(&config, &node, &request)?);
            Ok(())
        }
        Command::Status { json, watch } => {
            let node = this_node(&config, cli.node.as_deref())?;
            client::print_status(&config, &node, json, watch)
        }
        Command::Volume { command } => {
            let node = this_node(&config, cli.node.as_deref())?;
            volume_command(&config, &node, command)
        }
        Command::SplitBrain { command } => {
            let node = this_node(&config, cli.node.as_deref())?;
            match command {
                SplitBrainCommand::Show { volume, json } => {
                    client::show_split_brain(&config, &node, &volume, json)
                }
                SplitBrainCommand::Resolve {
                    volume,
                    keep,
                    save_discarded,
                } => {
                    let save_discarded =
                        save_discarded.map(|dir| std::path::absolute(&dir).unwrap_or(dir));
                    let request = manager::admin::Request::SplitBrainResolve {
                        volume,
                        keep,
                        save_discarded,
                    };
                    print_message(client::send(&config, &node, &request)?);
                    Ok(())
                }
            }
        }
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            println!(
                "{}: ok ({} nodes, {} volume{}, {} group{})",
                cli.config.display(),
                config.nodes.len(),
                config.volumes.len(),
                if config.volumes.len() == 1 { "" } else { "s" },
                config.groups.len(),
                if config.groups.len() == 1 { "" } else { "s" }
            );
            Ok(())
        }
    }
}

fn volume_command(config: &Config, node: &str, command: VolumeCommand) -> anyhow::Result<()> {
    use manager::admin::Request;
    let request = match command {
        VolumeCommand::Wait {
            volume,
            condition,
            timeout,
        } => {
            return client::wait(config, node, &volume, condition, timeout);
        }
        VolumeCommand::Primary { volume, force } => Request::Primary { volume, force },
        VolumeCommand::Secondary { volume } => Request::Secondary { volume },
        VolumeCommand::Connect { volume } => Request::Connect { volume },
        VolumeCommand::Disconnect { volume } => Request::Disconnect { volume },
        VolumeCommand::Resync {
            volume,
            full,
            checksum,
        } => Request::Resync {
            volume,
            full,
            checksum,
        },
        VolumeCommand::Verify {
            volume,
            mark,
            no_wait,
            json,
        } => {
            client::send(
                config,
                node,
                &Request::Verify {
                    volume: volume.clone(),
                    mark,
                },
            )?;
            if no_wait {
                return Ok(());
            }
            return client::wait_verify(config, node, &volume, json);
        }
        VolumeCommand::Invalidate { volume } => Request::Invalidate { volume },
    };
    client::send(config, node, &request)?;
    Ok(())
}

fn print_message(response: manager::admin::Response) {
    if let Some(message) = response.message {
        println!("{message}");
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
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

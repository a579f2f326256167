//! `dfs`: the command-line client, the metadata and storage daemons, and a local cluster
//! launcher, in one binary. Thin: it parses flags (each also read from a `DFS_*` environment
//! variable), builds the production environment (`dfs-io-real`), runs `dfs-core`'s drivers,
//! and reports errors in one line on stderr with a non-zero exit code.

mod admin;
mod bench;
mod client_cmds;
mod cluster;
mod daemons;
mod progress;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The metadata addresses `cluster up` uses by default, and so the client's default.
pub const DEFAULT_META: &str = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003";

#[derive(Parser)]
#[command(name = "dfs", version, about = "dfs: a fault-tolerant distributed file system", propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a metadata node (one member of the Raft group).
    Meta(daemons::MetaArgs),
    /// Run a storage node.
    Storage(daemons::StorageArgs),
    /// Upload a local file.
    Put(client_cmds::PutArgs),
    /// Download a file.
    Get(client_cmds::GetArgs),
    /// List a directory's entries (or everything under it with -R).
    Ls(client_cmds::LsArgs),
    /// Create a directory.
    Mkdir(client_cmds::MkdirArgs),
    /// Move a file or a directory.
    Mv(client_cmds::MvArgs),
    /// Delete a file or a directory.
    Rm(client_cmds::RmArgs),
    /// Show the metadata leader, the members and the storage nodes.
    Status(client_cmds::StatusArgs),
    /// Administer the cluster (metadata membership).
    Admin {
        #[command(subcommand)]
        command: admin::AdminCommand,
    },
    /// Benchmarks on a local cluster this command starts (and stops) itself.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
    /// Run a whole local cluster.
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let daemon = matches!(cli.command, Command::Meta(_) | Command::Storage(_) | Command::Cluster { .. });
    init_tracing(daemon);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dfs: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Meta(args) => daemons::run_meta(args).await,
            Command::Storage(args) => daemons::run_storage(args).await,
            Command::Put(args) => client_cmds::put(args).await,
            Command::Get(args) => client_cmds::get(args).await,
            Command::Ls(args) => client_cmds::ls(args).await,
            Command::Mkdir(args) => client_cmds::mkdir(args).await,
            Command::Mv(args) => client_cmds::mv(args).await,
            Command::Rm(args) => client_cmds::rm(args).await,
            Command::Status(args) => client_cmds::status(args).await,
            Command::Admin { command } => admin::run(command).await,
            Command::Bench { command } => bench::run(command).await,
            Command::Cluster { command } => cluster::run(command).await,
        }
    });
    // Blocking disk work may still be finishing; do not wait for it after an error.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dfs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, one line per event, level from `RUST_LOG`. Daemons log `info` by
/// default; client commands only warnings, so their output stays readable.
fn init_tracing(daemon: bool) {
    // openraft warns about routine election races; its errors still show.
    let default = if daemon { "info,openraft=error" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

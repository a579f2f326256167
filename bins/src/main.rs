//! `dfs`: the command-line client, the metadata and storage daemons, and a local cluster
//! launcher, in one binary. Thin: it parses flags (each also read from a `DFS_*` environment
//! variable), builds the production environment (`dfs-io-real`), runs `dfs-core`'s drivers,
//! and reports errors in one line on stderr with an exit code: 1 for a failure, 2 for a
//! usage error (the rule is in `cli`).

mod admin;
mod bench;
mod cli;
mod client_cmds;
mod cluster;
mod daemons;
mod everyday;
mod glob;
mod logs;
mod ops;
mod output;
mod progress;
mod s3;
mod security;
mod status_page;
mod transfer;
mod tree;
mod units;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The metadata addresses `cluster up` uses by default, and so the client's default.
pub const DEFAULT_META: &str = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003";

#[derive(Parser)]
#[command(name = "dfs", version, about = "dfs: a fault-tolerant distributed file system", propagate_version = true)]
struct Cli {
    /// Print one JSON object on stdout instead of text (commands that print data).
    #[arg(long, global = true, env = "DFS_JSON")]
    json: bool,
    /// No progress bars (they show only when stderr is a terminal anyway).
    #[arg(short, long, global = true, env = "DFS_QUIET")]
    quiet: bool,
    /// Log lines as text or as JSON objects (one per line); each names its node.
    #[arg(long, global = true, env = "DFS_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: logs::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a metadata node (one member of the Raft group).
    Meta(daemons::MetaArgs),
    /// Run a storage node.
    Storage(daemons::StorageArgs),
    /// Upload a local file ('-': standard input), or a directory tree with -r.
    Put(client_cmds::PutArgs),
    /// Download a file ('-': to standard output), or a directory tree with -r.
    Get(client_cmds::GetArgs),
    /// Write a file to standard output.
    Cat(client_cmds::CatArgs),
    /// A file's size, checksum, chunks and where each chunk's replicas are.
    Stat(client_cmds::StatArgs),
    /// Bytes, files and directories under a path.
    Du(client_cmds::DuArgs),
    /// List a directory's entries (or everything under it with -R).
    Ls(client_cmds::LsArgs),
    /// Create a directory.
    Mkdir(client_cmds::MkdirArgs),
    /// Move a file or a directory.
    Mv(client_cmds::MvArgs),
    /// Delete files or directories (to your trash, `/.trash/<user>/`, unless --skip-trash).
    #[command(visible_alias = "del")]
    Rm(client_cmds::RmArgs),
    /// Copy files (or trees with -r) on the servers: the copy shares the chunks, no byte moves.
    Cp(everyday::CpArgs),
    /// Create empty files, or give existing ones the current time.
    Touch(everyday::TouchArgs),
    /// The first bytes of a file (-c N, default 1 KiB), fetching only those.
    Head(everyday::HeadArgs),
    /// The last bytes of a file (-c N, default 1 KiB), fetching only those.
    Tail(everyday::HeadArgs),
    /// Paths under a directory by name, size, age, kind (-name, -size, -newer, -type).
    Find(everyday::FindArgs),
    /// Set the replication factor of files (or of every file under directories).
    Setrep(everyday::SetrepArgs),
    /// Mirror a local directory into a remote one, sending only what differs (put -r --update).
    Sync(client_cmds::SyncArgs),
    /// Uploads not committed (interrupted or abandoned), and --abort ID to drop one.
    Uploads(everyday::UploadsArgs),
    /// Your trash: list, empty, restore.
    Trash {
        #[command(subcommand)]
        command: everyday::TrashCommand,
    },
    /// Show the metadata leader, the members and the storage nodes.
    Status(client_cmds::StatusArgs),
    /// Storage nodes: state, last heartbeat, capacity, used, chunks, repairs in flight.
    Nodes(client_cmds::NodesArgs),
    /// Health of files and chunks: under/over-replicated, corrupt, missing (exit 1 if any).
    Fsck(client_cmds::FsckArgs),
    /// `put` with named flags: --file LOCAL --name REMOTE.
    Upload(client_cmds::UploadArgs),
    /// `get` with named flags: --name REMOTE --out LOCAL.
    Download(client_cmds::DownloadArgs),
    /// Every file under a prefix directory: --prefix P.
    List(client_cmds::ListArgs),
    /// Delete a file by path (--name) or by file id (--id).
    Delete(client_cmds::DeleteArgs),
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
    /// Serve the cluster over S3 (an S3-compatible gateway): buckets are top-level directories.
    S3(s3::S3Args),
    /// Run a whole local cluster.
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// Certificates for TLS: a cluster CA (`init`), and nodes' and users' certificates (`issue`).
    Cert {
        #[command(subcommand)]
        command: security::CertCommand,
    },
    /// Ask a daemon's HTTP port whether it can serve (GET /healthz): exit 0 if so.
    Health {
        /// The daemon's --http-listen address, HOST:PORT.
        addr: String,
    },
    /// Do nothing until stopped (keeps a client container up for `docker-compose exec`).
    #[command(hide = true)]
    Idle,
}

/// `find`'s tests as `find` spells them (`-name`, `-size`, `-newer`, `-type`) become the
/// long flags clap knows; everything else is left as typed.
fn find_flags(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let is_find = args.iter().skip(1).find(|a| !a.to_string_lossy().starts_with('-')).is_some_and(|a| a == "find");
    if !is_find {
        return args;
    }
    args.into_iter()
        .map(|a| match a.to_str() {
            Some(flag @ ("-name" | "-size" | "-newer" | "-type")) => format!("-{flag}").into(),
            _ => a,
        })
        .collect()
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(find_flags(std::env::args_os().collect())) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let daemon = matches!(cli.command, Command::Meta(_) | Command::Storage(_) | Command::Cluster { command: cluster::ClusterCommand::Up(_) });
    logs::init(daemon, cli.log_format);
    match &cli.command {
        Command::Meta(args) => logs::set_node("meta", &args.id().to_string()),
        Command::Storage(_) => logs::set_node("storage", ""),
        Command::Cluster { command: cluster::ClusterCommand::Up(_) } => logs::set_node("cluster", ""),
        _ => {}
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dfs: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ctx = cli::Ctx { json: cli.json, quiet: cli.quiet };
    let ctx = &ctx;
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Meta(args) => daemons::run_meta(args).await,
            Command::S3(args) => s3::run(args).await,
            Command::Storage(args) => daemons::run_storage(args).await,
            Command::Put(args) => client_cmds::put(ctx, args).await,
            Command::Get(args) => client_cmds::get(ctx, args).await,
            Command::Cat(args) => client_cmds::cat(ctx, args).await,
            Command::Stat(args) => client_cmds::stat(ctx, args).await,
            Command::Du(args) => client_cmds::du(ctx, args).await,
            Command::Ls(args) => client_cmds::ls(ctx, args).await,
            Command::Mkdir(args) => client_cmds::mkdir(ctx, args).await,
            Command::Mv(args) => client_cmds::mv(ctx, args).await,
            Command::Rm(args) => client_cmds::rm(ctx, args).await,
            Command::Cp(args) => everyday::cp(ctx, args).await,
            Command::Touch(args) => everyday::touch(ctx, args).await,
            Command::Head(args) => everyday::head(ctx, args).await,
            Command::Tail(args) => everyday::tail(ctx, args).await,
            Command::Find(args) => everyday::find(ctx, args).await,
            Command::Setrep(args) => everyday::setrep(ctx, args).await,
            Command::Sync(args) => client_cmds::sync(ctx, args).await,
            Command::Uploads(args) => everyday::uploads(ctx, args).await,
            Command::Trash { command } => everyday::trash(ctx, command).await,
            Command::Status(args) => client_cmds::status(ctx, args).await,
            Command::Nodes(args) => client_cmds::nodes(ctx, args).await,
            Command::Fsck(args) => client_cmds::fsck(ctx, args).await,
            Command::Upload(args) => client_cmds::upload(ctx, args).await,
            Command::Download(args) => client_cmds::download(ctx, args).await,
            Command::List(args) => client_cmds::list(ctx, args).await,
            Command::Delete(args) => client_cmds::delete(ctx, args).await,
            Command::Admin { command } => admin::run(ctx, command).await,
            Command::Bench { command } => bench::run(command).await,
            Command::Cluster { command } => cluster::run(ctx, command).await,
            Command::Cert { command } => security::run_cert(ctx, command),
            Command::Health { addr } => ops::probe(&addr).await,
            Command::Idle => {
                daemons::shutdown_signal().await;
                Ok(())
            }
        }
    });
    // Blocking disk work may still be finishing; do not wait for it after an error.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever the error carries (a hostile name, a multi-line message).
            eprintln!("dfs: {}", cli::shown(&format!("{e:#}")));
            ExitCode::from(cli::exit_code(&e))
        }
    }
}

/// Help and version go out as clap prints them; a parse error becomes one line on stderr,
/// like every other error, with the usage in brackets, and exit code 2.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand) {
        e.exit();
    }
    let text = e.render().to_string();
    let mut parts = Vec::new();
    let mut usage = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(u) = line.strip_prefix("Usage: ") {
            usage = Some(u);
        } else if !line.starts_with("For more information") {
            parts.push(line.strip_prefix("error: ").unwrap_or(line));
        }
    }
    let usage = usage.map(|u| format!(" (usage: {u})")).unwrap_or_default();
    eprintln!("dfs: {}{usage}", cli::shown(&parts.join(" ")));
    ExitCode::from(2)
}

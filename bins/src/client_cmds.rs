//! The client commands: put, get, ls, mkdir, mv, rm, status.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{bail, Context};
use bytesize::ByteSize;
use clap::Args;
use dfs_core::chunking;
use dfs_core::client::{ClientConfig, DfsClient};
use dfs_core::proto::{DirEntry, EntryKind};
use dfs_io_real::RealEnv;

use crate::daemons::parse_addrs;
use crate::progress::Bar;
use crate::DEFAULT_META;

#[derive(Args, Clone)]
pub struct MetaFlag {
    /// Metadata nodes: HOST:PORT,... (any of them; the client finds the leader).
    #[arg(long, env = "DFS_META", default_value = DEFAULT_META)]
    meta: String,
}

#[derive(Args)]
pub struct PutArgs {
    /// The local file to upload.
    local: PathBuf,
    /// Where to store it. Ending in '/' means "into this directory, under the local name".
    remote: String,
    /// Replace the remote file if it exists.
    #[arg(short, long, env = "DFS_FORCE")]
    force: bool,
    /// Chunk size, e.g. 4MiB, 64KiB.
    #[arg(long, env = "DFS_CHUNK_SIZE", default_value = "4MiB")]
    chunk_size: ByteSize,
    /// Copies of each chunk.
    #[arg(long, env = "DFS_REPLICATION", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=16))]
    replication: u32,
    /// Chunks transferred at once.
    #[arg(long, env = "DFS_PARALLELISM", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    parallelism: u64,
    #[command(flatten)]
    meta: MetaFlag,
}

#[derive(Args)]
pub struct GetArgs {
    /// The file to download.
    remote: String,
    /// Where to write it; an existing directory receives it under the remote name.
    local: PathBuf,
    /// Replace the local file if it exists.
    #[arg(short, long, env = "DFS_FORCE")]
    force: bool,
    /// Chunks transferred at once.
    #[arg(long, env = "DFS_PARALLELISM", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    parallelism: u64,
    #[command(flatten)]
    meta: MetaFlag,
}

#[derive(Args)]
pub struct LsArgs {
    /// A directory (its entries are listed) or a file.
    #[arg(default_value = "/")]
    path: String,
    /// Everything under the directory, at any depth.
    #[arg(short = 'R', long)]
    recursive: bool,
    /// Long form: replication, size, time and file id.
    #[arg(short = 'l', long)]
    long: bool,
    #[command(flatten)]
    meta: MetaFlag,
}

#[derive(Args)]
pub struct MkdirArgs {
    /// The directory to create.
    path: String,
    /// Create missing parents too; an existing directory is fine.
    #[arg(short = 'p', long)]
    parents: bool,
    #[command(flatten)]
    meta: MetaFlag,
}

#[derive(Args)]
pub struct MvArgs {
    /// The file or directory to move.
    src: String,
    /// Its new path, which must not exist. An existing directory, or a path ending in '/',
    /// receives it under its current name.
    dst: String,
    #[command(flatten)]
    meta: MetaFlag,
}

#[derive(Args)]
pub struct RmArgs {
    /// The file or directory to delete.
    remote: String,
    /// Delete a directory with everything under it.
    #[arg(short = 'r', short_alias = 'R', long)]
    recursive: bool,
    #[command(flatten)]
    meta: MetaFlag,
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub meta: MetaFlag,
}

pub fn client(meta: &MetaFlag, config: ClientConfig) -> anyhow::Result<DfsClient<RealEnv>> {
    Ok(DfsClient::new(RealEnv::default(), parse_addrs(&meta.meta, "--meta")?, config))
}

/// The per-user state directory (resume manifests): `$DFS_STATE_DIR`, else
/// `$XDG_STATE_HOME/dfs`, else `~/.local/state/dfs`; `None` if none can be found (uploads then
/// do not resume).
pub fn state_dir() -> Option<PathBuf> {
    let from_env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    from_env("DFS_STATE_DIR")
        .or_else(|| from_env("XDG_STATE_HOME").map(|d| d.join("dfs")))
        .or_else(|| from_env("HOME").map(|h| h.join(".local/state/dfs")))
}

fn show_progress() -> bool {
    std::io::stderr().is_terminal()
}

pub async fn put(args: PutArgs) -> anyhow::Result<()> {
    let meta = std::fs::metadata(&args.local).with_context(|| format!("{}", args.local.display()))?;
    if !meta.is_file() {
        bail!("{}: not a regular file", args.local.display());
    }
    let chunk_size = args.chunk_size.as_u64();
    chunking::validate(meta.len(), chunk_size).map_err(|e| anyhow::anyhow!("--chunk-size: {e}"))?;
    let remote = if args.remote.ends_with('/') {
        let name = args.local.file_name().context("the local path has no file name")?;
        format!("{}{}", args.remote, name.to_string_lossy())
    } else {
        args.remote.clone()
    };
    let config = ClientConfig {
        chunk_size,
        replication: args.replication,
        parallelism: args.parallelism as usize,
        resume_dir: state_dir().map(|d| d.join("uploads")),
        ..ClientConfig::default()
    };
    let client = client(&args.meta, config)?;
    let bar = Bar::new(&format!("put {remote}"), show_progress());
    // The absolute path names the source in the resume manifest, wherever the rerun starts.
    let local = std::fs::canonicalize(&args.local).with_context(|| format!("{}", args.local.display()))?;
    let info = client.put(&local, &remote, args.force, &bar).await?;
    drop(bar);
    println!("{} ({}, {} chunks, replication {})", info.path, ByteSize(info.size), info.chunk_count, info.replication);
    Ok(())
}

pub async fn get(args: GetArgs) -> anyhow::Result<()> {
    let mut dest = args.local.clone();
    if dest.is_dir() {
        let name = Path::new(&args.remote).file_name().with_context(|| format!("{}: names no file", args.remote))?;
        dest = dest.join(name);
    }
    if dest.exists() && !args.force {
        bail!("{}: already exists (use --force to replace it)", dest.display());
    }
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            bail!("{}: no such directory", parent.display());
        }
    }
    let config = ClientConfig { parallelism: args.parallelism as usize, ..ClientConfig::default() };
    let client = client(&args.meta, config)?;
    let bar = Bar::new(&format!("get {}", args.remote), show_progress());
    let info = client.get(&args.remote, &dest, &bar).await?;
    drop(bar);
    println!("{} -> {} ({})", info.path, dest.display(), ByteSize(info.size));
    Ok(())
}

fn format_time(unix_ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(unix_ms);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    // 2026-11-25T12:00:00Z -> 2026-11-25 12:00
    s.get(..16).map(|p| p.replace('T', " ")).unwrap_or(s)
}

fn print_listing(entries: &[DirEntry], long: bool) {
    println!("Found {} items", entries.len());
    for e in entries {
        let dir = e.kind == EntryKind::Directory as i32;
        let kind = if dir { 'd' } else { '-' };
        match (&e.file, long) {
            (Some(f), true) => println!(
                "{kind} {:>2} {:>14} {} {:>8} {}",
                f.replication,
                f.size,
                format_time(f.committed_unix_ms),
                f.file_id,
                e.path
            ),
            (None, true) => println!("{kind} {:>2} {:>14} {} {:>8} {}", "-", "-", format_time(e.modified_unix_ms), "-", e.path),
            (Some(f), false) => println!("{kind} {:>14} {}", f.size, e.path),
            (None, false) => println!("{kind} {:>14} {}", "-", e.path),
        }
    }
}

pub async fn ls(args: LsArgs) -> anyhow::Result<()> {
    let client = client(&args.meta, ClientConfig::default())?;
    let entries = client.list_dir(&args.path, args.recursive).await?;
    print_listing(&entries, args.long);
    Ok(())
}

pub async fn mkdir(args: MkdirArgs) -> anyhow::Result<()> {
    let client = client(&args.meta, ClientConfig::default())?;
    client.mkdir(&args.path, args.parents).await?;
    Ok(())
}

pub async fn mv(args: MvArgs) -> anyhow::Result<()> {
    let client = client(&args.meta, ClientConfig::default())?;
    let into_dir = args.dst.ends_with('/')
        || client.entry(&args.dst).await?.is_some_and(|e| e.kind == EntryKind::Directory as i32);
    let dst = if into_dir {
        let name = args.src.trim_end_matches('/').rsplit('/').next().filter(|n| !n.is_empty());
        let name = name.with_context(|| format!("{}: names no file or directory to move", args.src))?;
        format!("{}/{name}", args.dst.trim_end_matches('/'))
    } else {
        args.dst.clone()
    };
    client.rename(&args.src, &dst).await?;
    Ok(())
}

pub async fn rm(args: RmArgs) -> anyhow::Result<()> {
    let client = client(&args.meta, ClientConfig::default())?;
    let deleted = client.delete(&args.remote, args.recursive).await?;
    if deleted.file.is_some() {
        println!("Deleted {}", deleted.path);
    } else {
        println!("Deleted {} ({} files, {} directories)", deleted.path, deleted.files_deleted, deleted.dirs_deleted);
    }
    Ok(())
}

pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let client = client(&args.meta, ClientConfig::default())?;
    let s = client.status().await?;
    match &s.leader {
        Some(l) => println!("leader: {} {}", l.id, l.addr),
        None => println!("leader: none"),
    }
    println!("term: {}  applied index: {}", s.term, s.commit_index);
    let members: Vec<String> = s.members.iter().map(|m| format!("{}={}", m.id, m.addr)).collect();
    println!("members: {}", members.join(","));
    println!("files: {}  bytes: {} ({})", s.file_count, s.total_bytes, ByteSize(s.total_bytes));
    println!("storage nodes: {}", s.storage_nodes.len());
    for n in &s.storage_nodes {
        let node = n.node.clone().unwrap_or_default();
        let ago = if n.last_heartbeat_ms_ago == u64::MAX { "never".to_string() } else { format!("{}ms ago", n.last_heartbeat_ms_ago) };
        println!(
            "  {:016x} {:<21} {:<8} chunks={:<8} free={}/{} heartbeat {}",
            node.id,
            node.addr,
            n.state,
            n.chunk_count,
            ByteSize(n.free_bytes),
            ByteSize(n.capacity_bytes),
            ago
        );
    }
    Ok(())
}

//! What `put` and `get` share with `put -r` and `get -r` (`tree`): their flags, where a
//! download goes (decided as `cp` decides it), and client errors explained.

use std::path::{Path, PathBuf};

use bytesize::ByteSize;
use clap::Args;
use dfs_core::chunking::{MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
use dfs_core::client::{ClientConfig, ClientError};
use dfs_core::rpc::RpcError;

use crate::cli::{usage, MetaFlag};

/// Default `--parallel` of uploads and downloads (also the chunk bytes a tree transfer holds:
/// this many chunks' worth). Measured on the 2-core VM, 1 GiB at replication 3, alternated
/// (`dfs put/get --parallel N`): put 3.37-3.54 s at 4, 3.18-3.21 s at 8, 3.42-3.48 s at 16; get
/// 1.61-1.86 s at 4, 1.41-1.51 s at 8, 1.33-1.40 s at 16, 1.35 s at 32. A download gains from
/// more streams because each one waits on its node's disk reads frame by frame; an upload's
/// nodes are already busy hashing.
pub const PUT_PARALLEL_DEFAULT: u64 = 8;
pub const GET_PARALLEL_DEFAULT: u64 = 16;

/// The options of an upload, shared by `put` and `upload`.
#[derive(Args, Clone)]
pub struct PutOpts {
    /// Replace the remote file if it exists (atomically, at commit).
    #[arg(short, long, env = "DFS_FORCE")]
    pub force: bool,
    /// Chunk size, 64KiB..=64MiB, e.g. 4MiB.
    #[arg(long, env = "DFS_CHUNK_SIZE", default_value_t = ByteSize(ClientConfig::default().chunk_size))]
    pub chunk_size: ByteSize,
    /// Copies of each chunk.
    #[arg(long, env = "DFS_REPLICATION", default_value_t = ClientConfig::default().replication, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub replication: u32,
    /// Transfers at once: chunks of one file, or files of a tree with -r.
    #[arg(long = "parallel", visible_alias = "parallelism", env = "DFS_PARALLEL", default_value_t = PUT_PARALLEL_DEFAULT, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub parallel: u64,
    #[command(flatten)]
    pub meta: MetaFlag,
}

impl PutOpts {
    /// The chunk size, checked here so that a bad one is a usage error before any upload.
    pub fn chunk_size(&self) -> anyhow::Result<u64> {
        let size = self.chunk_size.as_u64();
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&size) {
            return Err(usage(format!(
                "--chunk-size {}: the chunk size must be between {} and {}",
                self.chunk_size,
                ByteSize(MIN_CHUNK_SIZE),
                ByteSize(MAX_CHUNK_SIZE)
            )));
        }
        dfs_core::chunking::validate_new(0, size).map_err(|e| usage(format!("--chunk-size {}: {e}", self.chunk_size)))?;
        Ok(size)
    }
}

/// The options of a download, shared by `get`, `download` and `cat`.
#[derive(Args, Clone)]
pub struct GetOpts {
    /// Replace the local file if it exists.
    #[arg(short, long, env = "DFS_FORCE")]
    pub force: bool,
    /// Give each file the mode and modification time it was put with.
    #[arg(short = 'p', long)]
    pub preserve: bool,
    /// Transfers at once: chunks of one file, or files of a tree with -r.
    #[arg(long = "parallel", visible_alias = "parallelism", env = "DFS_PARALLEL", default_value_t = GET_PARALLEL_DEFAULT, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub parallel: u64,
    #[command(flatten)]
    pub meta: MetaFlag,
}

/// What a refusal to replace an existing file adds.
const FORCE_HINT: &str = " (use --force to replace it)";

/// A client error, with a hint for the mistakes that have an obvious way out.
pub(crate) fn explain(e: ClientError) -> anyhow::Error {
    match e.rpc() {
        Some(RpcError::AlreadyExists(_)) => anyhow::anyhow!("{:#}{FORCE_HINT}", anyhow::Error::new(e)),
        _ => anyhow::Error::new(e),
    }
}

/// `explain` of a borrowed error, as text: the error and its causes, `{:#}`-style.
pub(crate) fn explain_ref(e: &ClientError) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if matches!(e.rpc(), Some(RpcError::AlreadyExists(_))) {
        text.push_str(FORCE_HINT);
    }
    text
}

/// Where a download goes, decided as `cp` decides it.
pub enum Target {
    /// A regular file (new, or replaced atomically): written beside it and renamed into place.
    File(PathBuf),
    /// A character device or a FIFO: written through, in order, as `cp` writes to one; never
    /// replaced by a regular file.
    Through(PathBuf),
}

/// What writing a download to `dest` means: a symbolic link is followed to its target (as `cp`
/// does: the link stays, its target gets the bytes; a dangling one is refused), a regular file
/// is replaced only with `force`, a character device or FIFO (`/dev/null`, a pipe, a terminal)
/// is written through, and anything else is refused with what it is.
pub fn download_target(dest: &Path, force: bool) -> anyhow::Result<Target> {
    target_of(dest, force).map_err(|why| usage(format!("{}: {why}", dest.display())))
}

/// `download_target`, refusals saying only why (the caller names the path).
pub fn target_of(dest: &Path, force: bool) -> Result<Target, String> {
    use std::os::unix::fs::FileTypeExt;
    let link = match dest.symlink_metadata() {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Target::File(dest.to_path_buf())),
        Err(e) => return Err(e.to_string()),
    };
    let (path, meta) = if link.file_type().is_symlink() {
        match std::fs::metadata(dest) {
            Ok(meta) => (std::fs::canonicalize(dest).map_err(|e| e.to_string())?, meta),
            Err(_) => return Err("a symbolic link to nothing: not writing through it (remove it, or name a file)".into()),
        }
    } else {
        (dest.to_path_buf(), link)
    };
    let kind = meta.file_type();
    if kind.is_file() {
        if !force {
            return Err("already exists (use --force to replace it)".into());
        }
        return Ok(Target::File(path));
    }
    if kind.is_char_device() || kind.is_fifo() {
        return Ok(Target::Through(path));
    }
    let what = if kind.is_dir() {
        "a directory"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    };
    Err(format!("{what}: get writes only to regular files, character devices and FIFOs"))
}

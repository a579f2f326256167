//! The client commands: put, get, cat, stat, du, ls, mkdir, mv, rm, status, and the seed
//! project's names for some of them (upload, download, list, delete).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use bytesize::ByteSize;
use clap::{ArgAction, Args};
use dfs_core::chunking;
use dfs_core::client::{ClientConfig, ClientError, DfsClient};
use dfs_core::env::Env;
use dfs_core::proto::{self, DirEntry, EntryKind};
use dfs_core::rpc::RpcError;
use dfs_io_real::RealEnv;

pub use crate::cli::MetaFlag;
use crate::cli::{emit, emit_json, join_remote, remote_path, shown, spool_file, usage, Ctx};
use crate::output::*;
use crate::progress::Bar;
use crate::transfer::{download_target, explain, GetOpts, PutOpts, Target, GET_PARALLEL_DEFAULT};
use crate::tree;

#[derive(Args)]
pub struct PutArgs {
    /// The local files to upload ('-': standard input), or with -r directories.
    #[arg(required = true, num_args = 1.., value_name = "LOCAL")]
    local: Vec<PathBuf>,
    /// Where to store it. An existing directory, or a path ending in '/', receives the files
    /// under their local names (with several LOCALs it must be one). With -r, the prefix the
    /// tree goes under (LOCAL/a/b becomes REMOTE/a/b).
    #[arg(value_name = "REMOTE")]
    remote: String,
    /// Upload a whole directory tree.
    #[arg(short = 'r', short_alias = 'R', long)]
    recursive: bool,
    /// With -r: replace remote files whose size or SHA-256 differ from the local ones; those
    /// that match are skipped either way (as `dfs sync`).
    #[arg(long)]
    update: bool,
    #[command(flatten)]
    walk: WalkFlags,
    #[command(flatten)]
    opts: PutOpts,
}

/// How a tree upload (`put -r`, `sync`) walks and what it does.
#[derive(Args, Clone, Copy)]
pub struct WalkFlags {
    /// Say what would be sent (with -r), and send nothing.
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// Follow symbolic links (with -r; without it each is skipped, with a note).
    #[arg(short = 'L', long)]
    dereference: bool,
}

/// `dfs sync LOCAL REMOTE`: `put -r --update`.
#[derive(Args)]
pub struct SyncArgs {
    /// The local directory.
    local: PathBuf,
    /// The remote directory it is mirrored into.
    remote: String,
    #[command(flatten)]
    walk: WalkFlags,
    #[command(flatten)]
    opts: PutOpts,
}

/// The seed project's `upload`: `put` with named flags.
#[derive(Args)]
pub struct UploadArgs {
    /// The local file to upload ('-': standard input).
    #[arg(long)]
    file: PathBuf,
    /// The remote path to store it at.
    #[arg(long)]
    name: String,
    #[command(flatten)]
    opts: PutOpts,
}

#[derive(Args)]
pub struct GetArgs {
    /// The files to download (wildcards allowed), or with -r directories.
    #[arg(required = true, num_args = 1.., value_name = "REMOTE")]
    remote: Vec<String>,
    /// Where to write it ('-': standard output); an existing directory receives it under the
    /// remote name (with several REMOTEs it must be one). With -r, the local directory the
    /// tree goes into (created if missing).
    #[arg(value_name = "LOCAL")]
    local: PathBuf,
    /// Download a whole directory tree.
    #[arg(short = 'r', short_alias = 'R', long)]
    recursive: bool,
    #[command(flatten)]
    opts: GetOpts,
}

/// The seed project's `download`: `get` with named flags.
#[derive(Args)]
pub struct DownloadArgs {
    /// The remote file.
    #[arg(long)]
    name: String,
    /// The local file to write ('-': standard output).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    opts: GetOpts,
}

#[derive(Args)]
pub struct CatArgs {
    /// The files to write to standard output, one after the other (wildcards allowed).
    #[arg(required = true, num_args = 1..)]
    remote: Vec<String>,
    /// Start at this byte of each file (0: the first).
    #[arg(long, value_parser = parse_size)]
    offset: Option<u64>,
    /// At most this many bytes of each file (e.g. 100, 4KiB).
    #[arg(long, value_parser = parse_size)]
    length: Option<u64>,
    /// Chunks transferred at once.
    #[arg(long = "parallel", visible_alias = "parallelism", env = "DFS_PARALLEL", default_value_t = GET_PARALLEL_DEFAULT, value_parser = clap::value_parser!(u64).range(1..=64))]
    parallel: u64,
    #[command(flatten)]
    meta: MetaFlag,
}

#[derive(Args)]
pub struct StatArgs {
    /// A file (or a directory); wildcards allowed.
    remote: String,
    #[command(flatten)]
    meta: MetaFlag,
}

#[derive(Args)]
#[command(disable_help_flag = true)]
pub struct DuArgs {
    /// The directory (or file) to measure.
    #[arg(default_value = "/")]
    path: String,
    /// The total only, no line per child.
    #[arg(short = 's', long)]
    summarize: bool,
    /// Human-readable sizes (1.5 MiB).
    #[arg(short = 'h', long)]
    human: bool,
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
    #[command(flatten)]
    meta: MetaFlag,
}

#[derive(Args)]
#[command(disable_help_flag = true)]
pub struct LsArgs {
    /// Directories (their entries are listed) or files; wildcards allowed.
    #[arg(default_value = "/")]
    path: Vec<String>,
    /// Everything under the directory, at any depth.
    #[arg(short = 'R', long)]
    recursive: bool,
    /// Long form: mode, replication, size, modification time and file id.
    #[arg(short = 'l', long)]
    long: bool,
    /// Also the trash (`/.trash`), which listings of `/` leave out.
    #[arg(short = 'a', long)]
    all: bool,
    /// Human-readable sizes (1.5 MiB).
    #[arg(short = 'h', long)]
    human: bool,
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
    #[command(flatten)]
    meta: MetaFlag,
}

/// The seed project's `list`: every file whose path starts with a prefix directory.
#[derive(Args)]
pub struct ListArgs {
    /// A directory (everything under it, at any depth) or a file.
    #[arg(long, default_value = "/")]
    prefix: String,
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
    /// The files or directories to move (wildcards allowed).
    #[arg(required = true, num_args = 1.., value_name = "SRC")]
    src: Vec<String>,
    /// The new path, which must not exist. An existing directory, or a path ending in '/',
    /// receives each SRC under its current name (with several SRCs it must be one).
    #[arg(value_name = "DST")]
    dst: String,
    #[command(flatten)]
    meta: MetaFlag,
}

#[derive(Args)]
pub struct RmArgs {
    /// The files or directories to delete (wildcards allowed).
    #[arg(required = true, num_args = 1..)]
    remote: Vec<String>,
    /// Delete a directory with everything under it.
    #[arg(short = 'r', short_alias = 'R', long)]
    recursive: bool,
    /// Delete for good now, instead of moving to your trash (`/.trash/<user>/`).
    #[arg(long)]
    skip_trash: bool,
    /// Also `rm -r /` (everything, for good); and no error for paths that are not there.
    #[arg(short = 'f', long)]
    force: bool,
    #[command(flatten)]
    meta: MetaFlag,
}

/// The seed project's `delete`: by path (`--name`) or by file id (`--id`).
#[derive(Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["name", "id"])))]
pub struct DeleteArgs {
    /// The file (or, with -r, directory) to delete.
    #[arg(long)]
    name: Option<String>,
    /// The id of the file to delete (`dfs ls -l` shows it). Deleted only if the file with that
    /// id is still there: a newer file at the same path is left alone.
    #[arg(long)]
    id: Option<u64>,
    /// Delete a directory with everything under it (with --name).
    #[arg(short = 'r', short_alias = 'R', long, conflicts_with = "id")]
    recursive: bool,
    /// Delete for good now, instead of moving to your trash (`/.trash/<user>/`).
    #[arg(long)]
    skip_trash: bool,
    #[command(flatten)]
    meta: MetaFlag,
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub meta: MetaFlag,
}

#[derive(Args)]
pub struct NodesArgs {
    #[command(flatten)]
    pub meta: MetaFlag,
}

#[derive(Args)]
pub struct FsckArgs {
    /// A file or a directory (everything under it); default: the whole namespace.
    pub path: Option<String>,
    /// Chunks with a problem to list (the counts cover all of them).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub problems_max: u32,
    #[command(flatten)]
    pub meta: MetaFlag,
}

/// A "not found" from a file-only call on a path that is a directory says so.
async fn explain_not_found(client: &DfsClient<RealEnv>, remote: &str, e: ClientError, what: &str) -> anyhow::Error {
    if matches!(e.rpc(), Some(RpcError::NotFound(_))) {
        if let Ok(Some(entry)) = client.entry(remote).await {
            if entry.kind == EntryKind::Directory as i32 {
                let hint = if what == "get" { " (get -r copies a whole tree)" } else { "" };
                return anyhow::anyhow!("{what} {}: is a directory{hint}", shown(remote));
            }
        }
    }
    explain(e)
}

// ---- put -------------------------------------------------------------------------------

/// A byte count: `100`, `4KiB`, `1MB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    s.trim().parse::<ByteSize>().map(|b| b.as_u64()).map_err(|e| format!("{s:?} is not a size like 100, 4KiB or 1MiB: {e}"))
}

pub async fn put(ctx: &Ctx, args: PutArgs) -> anyhow::Result<()> {
    if (args.update || args.walk.dry_run || args.walk.dereference) && !args.recursive {
        return Err(usage("put: --update, --dry-run and -L go with -r (dfs sync does the same as put -r --update)"));
    }
    let flags = tree::TreeFlags { update: args.update, dry_run: args.walk.dry_run, follow_links: args.walk.dereference, ..Default::default() };
    if let [local] = args.local.as_slice() {
        if args.recursive {
            return tree::put_tree(ctx, local, &args.remote, &args.opts, flags).await;
        }
        return put_one(ctx, local, &args.remote, &args.opts).await;
    }
    // Several sources: REMOTE is a directory (existing, or to be made: ending in '/').
    let dir = remote_path(&args.remote)?;
    let client = args.opts.meta.client(ClientConfig::default())?;
    let is_dir = args.remote.ends_with('/') || client.entry(&dir).await?.is_some_and(|e| e.kind == EntryKind::Directory as i32);
    if !is_dir {
        return Err(usage(format!("put: with several sources, {} must be a directory (end it with '/' to create it)", shown(&args.remote))));
    }
    let into = if dir == "/" { "/".to_string() } else { format!("{dir}/") };
    let mut failed = 0;
    for local in &args.local {
        let result = match (args.recursive, local.is_dir()) {
            (true, true) => {
                let name = local_name(local)?;
                tree::put_tree(ctx, local, &join_remote(&dir, &name), &args.opts, flags).await
            }
            _ => put_one(ctx, local, &into, &args.opts).await,
        };
        if let Err(e) = result {
            eprintln!("dfs: {}", shown(&format!("{e:#}")));
            failed += 1;
        }
    }
    if failed > 0 {
        anyhow::bail!("put: {failed} of {} failed (each is named above)", crate::cli::plural(args.local.len() as u64, "source"));
    }
    Ok(())
}

pub async fn sync(ctx: &Ctx, args: SyncArgs) -> anyhow::Result<()> {
    let flags = tree::TreeFlags { update: true, dry_run: args.walk.dry_run, follow_links: args.walk.dereference, ..Default::default() };
    tree::put_tree(ctx, &args.local, &args.remote, &args.opts, flags).await
}

pub async fn upload(ctx: &Ctx, args: UploadArgs) -> anyhow::Result<()> {
    put_one(ctx, &args.file, &args.name, &args.opts).await
}

fn is_stdio(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// A local path's last component, as a remote name.
fn local_name(local: &Path) -> anyhow::Result<String> {
    let name = local.file_name().ok_or_else(|| usage(format!("{}: the local path has no file name", local.display())))?;
    Ok(name.to_str().ok_or_else(|| usage(format!("{}: the file name is not UTF-8", local.display())))?.to_string())
}

async fn put_one(ctx: &Ctx, local: &Path, remote_arg: &str, opts: &PutOpts) -> anyhow::Result<()> {
    let chunk_size = opts.chunk_size()?;
    let stdin = is_stdio(local);
    if !stdin {
        // Said before anything else: a directory without -r is the likeliest mistake.
        if std::fs::metadata(local).is_ok_and(|m| m.is_dir()) {
            return Err(usage(format!("{}: is a directory (put -r uploads a tree)", local.display())));
        }
    }
    let mut remote = if remote_arg.ends_with('/') {
        if stdin {
            return Err(usage(format!("put - {}: standard input has no name; give the remote file's full path", shown(remote_arg))));
        }
        remote_path(&format!("{remote_arg}{}", local_name(local)?))?
    } else {
        remote_path(remote_arg)?
    };

    // The upload needs the size up front (to create the file and cut it into chunks), which
    // a pipe does not give: standard input is spooled to a file in the user's private spool
    // directory first, and the file is removed when `_spool` drops, whether the upload
    // succeeded or not (only a killed process leaves one behind).
    let _spool;
    let source: PathBuf = if stdin {
        let mut spool = spool_file("stdin")?;
        tokio::task::block_in_place(|| std::io::copy(&mut std::io::stdin().lock(), spool.as_file_mut())).context("spooling standard input")?;
        let path = spool.path().to_path_buf();
        _spool = spool;
        path
    } else {
        local.to_path_buf()
    };
    let meta = std::fs::metadata(&source).map_err(|e| usage(format!("{}: {e}", local.display())))?;
    if !meta.is_file() {
        return Err(usage(format!("{}: not a regular file (put takes files, and '-' for standard input)", local.display())));
    }
    chunking::validate_new(meta.len(), chunk_size).map_err(|e| usage(format!("{}: {e}", local.display())))?;
    // Readable? Refusing now is clearer than a failure in the middle of the upload.
    let mut opened = std::fs::File::open(&source).map_err(|e| usage(format!("{}: {e}", local.display())))?;
    if meta.len() == 0 && !stdin {
        // A file whose size says 0 but that reads bytes (/proc, /sys) would be stored empty.
        let mut byte = [0u8; 1];
        if std::io::Read::read(&mut opened, &mut byte).unwrap_or(0) > 0 {
            return Err(usage(format!(
                "{}: its size says 0 bytes but it reads more (a /proc or /sys file?); upload what it reads with: cat {} | dfs put - REMOTE",
                local.display(),
                local.display()
            )));
        }
    }

    // A file (not a spooled pipe) resumes an interrupted upload; its absolute path names it in
    // the manifest, wherever the rerun starts from.
    let (source, resume_dir) = match stdin {
        true => (source, None),
        false => (std::fs::canonicalize(&source).unwrap_or(source), crate::cli::state_dir().map(|d| d.join("uploads"))),
    };
    let config = ClientConfig { chunk_size, replication: opts.replication, parallelism: opts.parallel as usize, resume_dir, ..ClientConfig::default() };
    let client = opts.meta.client(config)?;
    // An existing directory receives the file under its local name, as `cp` does.
    if !stdin && remote != "/" && client.entry(&remote).await?.is_some_and(|e| e.kind == EntryKind::Directory as i32) {
        remote = join_remote(&remote, &local_name(local)?);
    }
    if remote == "/" {
        return Err(usage("put: / is the root directory, not a file path"));
    }
    // What the upload keeps of the file: as `put -r` reads it, through the disk.
    let attrs =
        if stdin { Default::default() } else { dfs_core::env::Disk::inspect(&dfs_io_real::RealDisk, &source).await.map(|m| m.attrs).unwrap_or_default() };
    let bar = Bar::new(&format!("put {}", shown(&remote)), ctx.progress());
    let info = client.put_with(&source, &remote, opts.force, attrs, &bar).await.map_err(explain)?;
    drop(bar);
    if ctx.json {
        return emit_json(&PutJson { local: local.display().to_string(), remote: remote.clone(), file: FileJson::from(&info) });
    }
    emit(&format!("{} ({}, {}, replication {})\n", shown(&info.path), ByteSize(info.size), crate::cli::plural(info.chunk_count, "chunk"), info.replication))
}

// ---- get, cat ----------------------------------------------------------------------------

pub async fn get(ctx: &Ctx, args: GetArgs) -> anyhow::Result<()> {
    let wildcards = args.remote.iter().any(|r| crate::glob::has_wildcards(r));
    if let ([remote], false) = (args.remote.as_slice(), wildcards) {
        if args.recursive {
            return tree::get_tree(ctx, remote, &args.local, &args.opts).await;
        }
        return get_one(ctx, remote, &args.local, &args.opts).await;
    }
    // Several (or a pattern): LOCAL is a directory, each goes in under its remote name.
    let client = args.opts.meta.client(ClientConfig::default())?;
    let remotes = crate::glob::expand_all(&client, &args.remote).await?;
    if is_stdio(&args.local) {
        for r in &remotes {
            cat_remote(ctx, &args.opts.meta, r, args.opts.parallel, "get").await?;
        }
        return Ok(());
    }
    let local_is_dir = args.local.is_dir();
    if remotes.len() > 1 && !local_is_dir {
        if args.local.as_os_str().to_string_lossy().ends_with('/') {
            std::fs::create_dir_all(&args.local).map_err(|e| anyhow::anyhow!("{}: {e}", args.local.display()))?;
        } else {
            return Err(usage(format!("get: with several sources, {} must be a directory (end it with '/' to create it)", args.local.display())));
        }
    }
    let mut failed = 0;
    for remote in &remotes {
        let is_dir = client.entry(remote).await?.is_some_and(|e| e.kind == EntryKind::Directory as i32);
        let result = match (args.recursive, is_dir) {
            (true, true) => {
                let name = remote.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or("root");
                tree::get_tree(ctx, remote, &args.local.join(name), &args.opts).await
            }
            _ => get_one(ctx, remote, &args.local, &args.opts).await,
        };
        if let Err(e) = result {
            eprintln!("dfs: {}", shown(&format!("{e:#}")));
            failed += 1;
        }
    }
    if failed > 0 {
        anyhow::bail!("get: {failed} of {} failed (each is named above)", crate::cli::plural(remotes.len() as u64, "source"));
    }
    Ok(())
}

pub async fn download(ctx: &Ctx, args: DownloadArgs) -> anyhow::Result<()> {
    get_one(ctx, &args.name, &args.out, &args.opts).await
}

pub async fn cat(ctx: &Ctx, args: CatArgs) -> anyhow::Result<()> {
    let client = args.meta.client(ClientConfig::default())?;
    let remotes = crate::glob::expand_all(&client, &args.remote).await?;
    for remote in &remotes {
        match (args.offset, args.length) {
            (None, None) => cat_remote(ctx, &args.meta, remote, args.parallel, "cat").await?,
            (offset, length) => read_range(&args.meta, remote, offset.unwrap_or(0), length.unwrap_or(u64::MAX), "cat").await?,
        }
    }
    Ok(())
}

/// Writes bytes `[offset, offset + length)` of a remote file to stdout, fetching only the
/// frames that hold them (`DfsClient::read_range`).
pub async fn read_range(meta: &MetaFlag, remote: &str, offset: u64, length: u64, verb: &str) -> anyhow::Result<()> {
    let client = meta.client(ClientConfig::default())?;
    let mut out = StdoutSink { out: std::io::BufWriter::with_capacity(1 << 20, std::io::stdout()), reader_gone: false };
    match client.read_range(remote, offset, length, &mut out, verb).await {
        Ok(_) => Ok(()),
        Err(_) if out.reader_gone => Ok(()),
        Err(e) => Err(explain_not_found(&client, remote, e, verb).await),
    }
}

async fn get_one(ctx: &Ctx, remote_arg: &str, local: &Path, opts: &GetOpts) -> anyhow::Result<()> {
    let remote = remote_path(remote_arg)?;
    if is_stdio(local) {
        return cat_remote(ctx, &opts.meta, &remote, opts.parallel, "get").await;
    }
    let mut dest = local.to_path_buf();
    if dest.is_dir() {
        let name = remote.rsplit('/').next().filter(|n| !n.is_empty()).ok_or_else(|| usage(format!("get {}: names no file", shown(&remote))))?;
        dest = dest.join(name);
    }
    let dest = match download_target(&dest, opts.force)? {
        Target::File(path) => path,
        Target::Through(path) => return get_through(ctx, opts, &remote, &path).await,
    };
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            return Err(usage(format!("{}: no such directory", parent.display())));
        }
    }
    let client = opts.meta.client(ClientConfig { parallelism: opts.parallel as usize, ..ClientConfig::default() })?;
    let bar = Bar::new(&format!("get {}", shown(&remote)), ctx.progress());
    let info = match client.get(&remote, &dest, &bar).await {
        Ok(info) => info,
        Err(e) => return Err(explain_not_found(&client, &remote, e, "get").await),
    };
    drop(bar);
    if opts.preserve {
        let attrs = dfs_core::namespace::FileAttrs { mode: info.mode, mtime_unix_ms: info.mtime_unix_ms };
        tree::restore_attrs(&dest, attrs).map_err(|e| anyhow::anyhow!("get {}: {}: keeping its mode and time: {e}", shown(&remote), dest.display()))?;
    }
    if ctx.json {
        return emit_json(&GetJson { remote: remote.clone(), local: dest.display().to_string(), file: FileJson::from(&info) });
    }
    emit(&format!("{} -> {} ({})\n", shown(&info.path), dest.display(), ByteSize(info.size)))
}

/// `get` into a character device or FIFO: opened for writing (never created, truncated or
/// replaced) and written in order, each chunk verified first, like `cat` into it.
async fn get_through(ctx: &Ctx, opts: &GetOpts, remote: &str, path: &Path) -> anyhow::Result<()> {
    // Opening a FIFO waits for its reader, as `cp` does.
    let file = tokio::task::block_in_place(|| std::fs::OpenOptions::new().write(true).open(path)).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let client = opts.meta.client(ClientConfig { parallelism: opts.parallel as usize, ..ClientConfig::default() })?;
    let bar = Bar::new(&format!("get {}", shown(remote)), ctx.progress());
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let result = client.get_to_writer_as(remote, &mut out, &bar, "get").await;
    drop(bar);
    let info = match result {
        Ok(info) => info,
        Err(e) => return Err(explain_not_found(&client, remote, e, "get").await),
    };
    if ctx.json {
        return emit_json(&GetJson { remote: remote.to_string(), local: path.display().to_string(), file: FileJson::from(&info) });
    }
    emit(&format!("{} -> {} ({})\n", shown(&info.path), path.display(), ByteSize(info.size)))
}

/// Writes a remote file to stdout as it arrives, as `hdfs dfs -cat` does: each chunk is
/// verified against its checksum before any of its bytes are written, chunks go out in order,
/// and the whole file's SHA-256 is checked at the end. A failure midway leaves a prefix of
/// the file on stdout and exits non-zero (a pipeline sees the error, like `curl` or `cat` of
/// a failing disk); it never writes a wrong byte. Memory stays at the download window.
async fn cat_remote(ctx: &Ctx, meta: &MetaFlag, remote: &str, parallel: u64, verb: &str) -> anyhow::Result<()> {
    let client = meta.client(ClientConfig { parallelism: parallel as usize, ..ClientConfig::default() })?;
    let bar = Bar::new(&format!("{verb} {}", shown(remote)), ctx.progress());
    let mut out = StdoutSink { out: std::io::BufWriter::with_capacity(1 << 20, std::io::stdout()), reader_gone: false };
    let result = client.get_to_writer_as(remote, &mut out, &bar, verb).await;
    drop(bar);
    match result {
        Ok(_) => Ok(()),
        // The reader went away (`dfs cat f | head`): nothing left to do.
        Err(_) if out.reader_gone => Ok(()),
        Err(e) => Err(explain_not_found(&client, remote, e, verb).await),
    }
}

/// Stdout, remembering whether the reader went away (a closed pipe is not a failure).
struct StdoutSink {
    out: std::io::BufWriter<std::io::Stdout>,
    reader_gone: bool,
}

impl StdoutSink {
    fn note<T>(&mut self, r: std::io::Result<T>) -> std::io::Result<T> {
        if matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe) {
            self.reader_gone = true;
        }
        r
    }
}

impl std::io::Write for StdoutSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let r = self.out.write(buf);
        self.note(r)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let r = self.out.flush();
        self.note(r)
    }
}

// ---- stat --------------------------------------------------------------------------------

pub async fn stat(ctx: &Ctx, args: StatArgs) -> anyhow::Result<()> {
    let client = args.meta.client(ClientConfig::default())?;
    let remotes = crate::glob::expand(&client, &args.remote).await?;
    if remotes.len() > 1 {
        return Err(usage(format!("stat {}: matches {} paths; stat takes one", shown(&args.remote), remotes.len())));
    }
    let remote = remotes.into_iter().next().unwrap_or_default();
    let report = match client.stat(&remote).await {
        Ok(reply) => {
            let file = reply.file.as_ref().context("metadata's reply carries no file")?;
            let mut chunks = reply.chunks.clone();
            chunks.sort_by_key(|c| c.index);
            StatJson { path: file.path.clone(), kind: "file", file: Some(FileJson::from(file)), chunks: chunks.iter().map(chunk_json).collect() }
        }
        Err(e) if matches!(e.rpc(), Some(RpcError::NotFound(_))) => match client.entry(&remote).await? {
            Some(dir) if dir.kind == EntryKind::Directory as i32 => StatJson { path: dir.path, kind: "directory", file: None, chunks: Vec::new() },
            _ => return Err(explain(e)),
        },
        Err(e) => return Err(explain(e)),
    };
    if ctx.json {
        return emit_json(&report);
    }
    let mut out = String::new();
    let _ = writeln!(out, "path:          {}", shown(&report.path));
    let _ = writeln!(out, "kind:          {}", report.kind);
    if let Some(f) = &report.file {
        let _ = writeln!(out, "size:          {} ({} bytes)", ByteSize(f.size), f.size);
        let _ = writeln!(out, "sha256:        {}", f.sha256.as_deref().unwrap_or("-"));
        let _ = writeln!(out, "chunk size:    {}", ByteSize(f.chunk_size));
        let _ = writeln!(out, "replication:   {}", f.replication);
        let _ = writeln!(out, "file id:       {}", f.file_id);
        let _ = writeln!(out, "committed:     {} UTC", format_time(f.committed_unix_ms, true));
        if let Some(mode) = f.mode {
            let _ = writeln!(out, "mode:          {} ({:04o})", mode_string(mode, false), mode);
        }
        if let Some(mtime) = f.mtime_unix_ms {
            let _ = writeln!(out, "modified:      {} UTC", format_time(mtime, true));
        }
        let _ = writeln!(out, "chunks:        {}", report.chunks.len());
        if report.chunks.iter().any(|c| c.checksum != "sha256") {
            // Said once, not per chunk: what a chained checksum is (DESIGN.md, "Chained checksums").
            let _ = writeln!(out, "checksums:     chained: each chunk's is the SHA-256 state after its bytes, hashed on from the chunk before; the last one's is the file's SHA-256");
        } else if report.chunks.len() > 1 {
            let _ = writeln!(out, "checksums:     the SHA-256 of each chunk alone (written by an earlier version, or not in file order)");
        }
        for c in &report.chunks {
            let sha = c.sha256.as_deref().unwrap_or("-");
            let _ = writeln!(out, "  chunk {:<6} {:>10}  {:<12} {sha}", c.index, ByteSize(c.size).to_string(), c.checksum);
            for r in &c.replicas {
                let _ = writeln!(out, "    {}  {:<21}  {}", r.node_id, r.addr, r.state);
            }
        }
    }
    emit(&out)
}

/// `-rw-r--r--` for mode bits (setuid, setgid and sticky shown as `ls` shows them).
pub fn mode_string(mode: u32, dir: bool) -> String {
    let mut s = String::with_capacity(10);
    s.push(if dir { 'd' } else { '-' });
    for (shift, special, upper, lower) in [(6, 0o4000, 'S', 's'), (3, 0o2000, 'S', 's'), (0, 0o1000, 'T', 't')] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (bits & 1 != 0, mode & special != 0) {
            (true, true) => lower,
            (false, true) => upper,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}

fn format_time(unix_ms: u64, seconds: bool) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(unix_ms);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    // 2026-11-25T12:00:00Z -> 2026-11-25 12:00(:00)
    let keep = if seconds { 19 } else { 16 };
    s.get(..keep).map(|p| p.replace('T', " ")).unwrap_or(s)
}

// ---- du ----------------------------------------------------------------------------------

pub async fn du(ctx: &Ctx, args: DuArgs) -> anyhow::Result<()> {
    let root = remote_path(&args.path)?;
    let meta = args.meta.meta_client()?;
    let mut total = DuJson { path: root.clone(), ..DuJson::default() };
    let mut children: BTreeMap<String, DuJson> = BTreeMap::new();
    // Summed page by page, so memory stays flat however large the tree; only the direct
    // children's totals are kept.
    let mut start_after = String::new();
    loop {
        let request = proto::ListDirRequest { path: root.clone(), recursive: true, start_after: start_after.clone(), limit: 0 };
        let page = meta.call(request).await.map_err(|source| ClientError::Metadata { context: format!("du {root}"), source })?;
        for e in &page.entries {
            let size = e.file.as_ref().map_or(0, |f| f.size);
            let dir = e.kind == EntryKind::Directory as i32;
            if e.path == root {
                // `root` is a file: it lists as itself.
                total.bytes += size;
                total.files += u64::from(!dir);
                continue;
            }
            let Some(rel) = (if root == "/" { e.path.strip_prefix('/') } else { e.path.strip_prefix(&root).and_then(|r| r.strip_prefix('/')) }) else {
                continue;
            };
            let (name, deeper) = match rel.split_once('/') {
                Some((name, _)) => (name, true),
                None => (rel, false),
            };
            let child_path = join_remote(&root, name);
            let child = children.entry(child_path.clone()).or_insert_with(|| DuJson { path: child_path, ..DuJson::default() });
            if dir {
                total.directories += 1;
                child.directories += u64::from(deeper);
            } else {
                total.bytes += size;
                total.files += 1;
                child.bytes += size;
                child.files += 1;
            }
        }
        match (page.truncated, page.entries.last()) {
            (true, Some(last)) => start_after = last.path.clone(),
            _ => break,
        }
    }
    let children: Vec<DuJson> = if args.summarize { Vec::new() } else { children.into_values().collect() };
    if ctx.json {
        return emit_json(&DuReportJson { total, children });
    }
    let size = |b: u64| if args.human { ByteSize(b).to_string() } else { b.to_string() };
    let mut out = format!("{:>14}  {:>9}  {:>9}  PATH\n", "SIZE", "FILES", "DIRS");
    for d in children.iter().chain(std::iter::once(&total)) {
        let _ = writeln!(out, "{:>14}  {:>9}  {:>9}  {}", size(d.bytes), d.files, d.directories, shown(&d.path));
    }
    emit(&out)
}

// ---- ls, list ------------------------------------------------------------------------------

fn listing(entries: &[DirEntry], long: bool, human: bool) -> String {
    let size = |b: u64| if human { ByteSize(b).to_string() } else { b.to_string() };
    let mut out = format!("Found {}\n", crate::cli::plural(entries.len() as u64, "item"));
    for e in entries {
        let dir = e.kind == EntryKind::Directory as i32;
        let kind = if dir { 'd' } else { '-' };
        let path = shown(&e.path);
        let _ = match (&e.file, long) {
            (Some(f), true) => {
                let mode = f.mode.map(|m| mode_string(m, false)).unwrap_or_else(|| "-".repeat(10));
                let time = f.mtime_unix_ms.unwrap_or(f.committed_unix_ms);
                writeln!(out, "{mode} {:>2} {:>14} {} {:>8} {path}", f.replication, size(f.size), format_time(time, false), f.file_id)
            }
            (None, true) => writeln!(out, "d--------- {:>2} {:>14} {} {:>8} {path}", "-", "-", format_time(e.modified_unix_ms, false), "-"),
            (Some(f), false) => writeln!(out, "{kind} {:>14} {path}", size(f.size)),
            (None, false) => writeln!(out, "{kind} {:>14} {path}", "-"),
        };
    }
    out
}

pub async fn ls(ctx: &Ctx, args: LsArgs) -> anyhow::Result<()> {
    let client = args.meta.client(ClientConfig::default())?;
    let paths = crate::glob::expand_all(&client, &args.path).await?;
    let mut listings = Vec::new();
    for path in paths {
        let mut entries = client.list_dir(&path, args.recursive).await.map_err(explain)?;
        // The trash is out of the way unless asked for (or listed itself).
        if !args.all && !dfs_core::namespace::in_trash(&path) {
            entries.retain(|e| !dfs_core::namespace::in_trash(&e.path));
        }
        listings.push((path, entries));
    }
    if ctx.json {
        let mut json: Vec<LsJson> = listings
            .iter()
            .map(|(path, entries)| LsJson { path: path.clone(), recursive: args.recursive, entries: entries.iter().map(EntryJson::from).collect() })
            .collect();
        if json.len() == 1 {
            return emit_json(&json.remove(0));
        }
        return emit_json(&serde_json::json!({ "listings": json }));
    }
    let many = listings.len() > 1;
    let mut out = String::new();
    for (path, entries) in &listings {
        if many {
            out.push_str(&format!("{}:\n", shown(path)));
        }
        out.push_str(&listing(entries, args.long, args.human));
    }
    emit(&out)
}

pub async fn list(ctx: &Ctx, args: ListArgs) -> anyhow::Result<()> {
    let prefix = remote_path(&args.prefix)?;
    let client = args.meta.client(ClientConfig::default())?;
    let mut files = client.list(&prefix).await.map_err(explain)?;
    if !dfs_core::namespace::in_trash(&prefix) {
        files.retain(|f| !dfs_core::namespace::in_trash(&f.path));
    }
    if ctx.json {
        return emit_json(&ListJson { prefix, files: files.iter().map(FileJson::from).collect() });
    }
    let mut out = format!("Found {} files\n", files.len());
    for f in &files {
        let _ = writeln!(out, "{:>14} {:>8} {}", f.size, f.file_id, shown(&f.path));
    }
    emit(&out)
}

// ---- mkdir, mv ---------------------------------------------------------------------------

pub async fn mkdir(ctx: &Ctx, args: MkdirArgs) -> anyhow::Result<()> {
    let path = remote_path(&args.path)?;
    let client = args.meta.client(ClientConfig::default())?;
    client.mkdir(&path, args.parents).await?;
    if ctx.json {
        return emit_json(&MkdirJson { path, parents: args.parents });
    }
    Ok(())
}

pub async fn mv(ctx: &Ctx, args: MvArgs) -> anyhow::Result<()> {
    let dst_path = remote_path(&args.dst)?;
    let client = args.meta.client(ClientConfig::default())?;
    let sources = crate::glob::expand_all(&client, &args.src).await?;
    let dst_is_dir = client.entry(&dst_path).await?.is_some_and(|e| e.kind == EntryKind::Directory as i32);
    let into_dir = args.dst.ends_with('/') || dst_is_dir;
    if sources.len() > 1 && !into_dir {
        return Err(usage(format!("mv: with several sources, {} must be a directory (end it with '/' to create it)", shown(&args.dst))));
    }
    if sources.len() > 1 && !dst_is_dir {
        client.mkdir(&dst_path, true).await?;
    }
    let mut moved = Vec::new();
    for src in sources {
        let dst = if into_dir {
            let name = src.rsplit('/').next().filter(|n| !n.is_empty()).ok_or_else(|| usage("mv: / cannot be moved"))?;
            join_remote(&dst_path, name)
        } else {
            dst_path.clone()
        };
        client.rename(&src, &dst).await?;
        moved.push(MvJson { src, dst });
    }
    if ctx.json {
        return match moved.len() {
            1 => emit_json(&moved[0]),
            _ => emit_json(&serde_json::json!({ "moved": moved })),
        };
    }
    Ok(())
}

// ---- rm, delete ----------------------------------------------------------------------------

pub async fn rm(ctx: &Ctx, args: RmArgs) -> anyhow::Result<()> {
    let client = args.meta.client(ClientConfig::default())?;
    let mut paths = Vec::new();
    for arg in &args.remote {
        match crate::glob::expand(&client, arg).await {
            Ok(found) => paths.extend(found),
            Err(_) if args.force && crate::glob::has_wildcards(arg) => {}
            Err(e) => return Err(e),
        }
    }
    if paths.iter().any(|p| p == "/") && !args.force {
        return Err(usage("rm: refusing to delete everything under / (rm -r --force / does it, for good, trash included)"));
    }
    let mut results = Vec::new();
    let mut failed = 0;
    for path in &paths {
        // Everything under /, asked for with --force, goes for good: there is no trash left.
        let now = args.skip_trash || path == "/";
        let deleted = if now { client.delete_now(path, args.recursive).await } else { client.delete(path, args.recursive).await };
        match deleted {
            Ok(d) => results.push(d),
            Err(e) if args.force && matches!(e.rpc(), Some(RpcError::NotFound(_))) => {}
            Err(e) if paths.len() == 1 => return Err(e.into()),
            Err(e) => {
                eprintln!("dfs: {}", shown(&format!("{:#}", anyhow::Error::new(e))));
                failed += 1;
            }
        }
    }
    print_deleted(ctx, &results)?;
    if failed > 0 {
        anyhow::bail!("rm: {failed} of {} failed (each is named above)", crate::cli::plural(paths.len() as u64, "path"));
    }
    Ok(())
}

pub async fn delete(ctx: &Ctx, args: DeleteArgs) -> anyhow::Result<()> {
    match (&args.name, args.id) {
        (Some(name), _) => {
            let path = remote_path(name)?;
            let client = args.meta.client(ClientConfig::default())?;
            let deleted = if args.skip_trash { client.delete_now(&path, args.recursive).await? } else { client.delete(&path, args.recursive).await? };
            print_deleted(ctx, &[deleted])
        }
        (None, Some(id)) => delete_by_id(ctx, id, args.skip_trash, &args.meta).await,
        // clap's group makes one of them required.
        (None, None) => Err(usage("delete: give --name or --id")),
    }
}

fn deleted_json(d: &dfs_core::client::Deleted) -> DeletedJson {
    let kind = if d.file.is_some() { "file" } else { "directory" };
    DeletedJson {
        path: d.path.clone(),
        kind,
        file_id: d.file.as_ref().map(|f| f.file_id),
        files_deleted: d.files_deleted,
        dirs_deleted: d.dirs_deleted,
        trashed_to: d.trashed_to.clone(),
    }
}

fn print_deleted(ctx: &Ctx, deleted: &[dfs_core::client::Deleted]) -> anyhow::Result<()> {
    if ctx.json {
        return match deleted {
            [one] => emit_json(&deleted_json(one)),
            many => emit_json(&serde_json::json!({ "deleted": many.iter().map(deleted_json).collect::<Vec<_>>() })),
        };
    }
    let mut out = String::new();
    for d in deleted {
        let what = match &d.file {
            Some(_) => String::new(),
            None => format!(" ({}, {})", crate::cli::plural(d.files_deleted, "file"), crate::cli::plural(d.dirs_deleted, "directory")),
        };
        let _ = match &d.trashed_to {
            Some(to) => writeln!(out, "Moved {}{what} to the trash: {} (dfs trash restore {} brings it back)", shown(&d.path), shown(to), shown(&d.path)),
            None => writeln!(out, "Deleted {}{what}", shown(&d.path)),
        };
    }
    emit(&out)
}

/// Finds the file with this id by listing every file (page by page: the namespace has no
/// index by id, so this costs a walk of the namespace), then deletes it naming that id, so
/// that if the path was meanwhile given to a newer file, that file is left alone.
async fn delete_by_id(ctx: &Ctx, id: u64, skip_trash: bool, meta: &MetaFlag) -> anyhow::Result<()> {
    let client = meta.meta_client()?;
    let mut start_after = String::new();
    let found = loop {
        let request = proto::ListFilesRequest { prefix: "/".into(), start_after: start_after.clone(), limit: 0 };
        let page = client.call(request).await.map_err(|source| ClientError::Metadata { context: format!("delete --id {id}"), source })?;
        // A file in the trash was deleted already.
        if let Some(f) = page.files.iter().find(|f| f.file_id == id && !dfs_core::namespace::in_trash(&f.path)) {
            break Some(f.clone());
        }
        match (page.truncated, page.files.last()) {
            (true, Some(last)) => start_after = last.path.clone(),
            _ => break None,
        }
    };
    let file = found.ok_or_else(|| anyhow::anyhow!("delete --id {id}: no file has id {id}"))?;
    // A fresh client identity for the request id: the server keeps the first answer per
    // (client, sequence), so a retry after a lost reply is not applied twice.
    let request_id = proto::RequestId { client: RealEnv::default().random_u64(), seq: 1 };
    let request = proto::DeleteFileRequest {
        path: file.path.clone(),
        recursive: false,
        expect_file_id: Some(id),
        request_id: Some(request_id),
        skip_trash,
        user: crate::cli::user_name(),
    };
    let reply = match client.call(request).await {
        Ok(reply) => reply,
        Err(RpcError::NotFound(_)) => anyhow::bail!("delete --id {id}: {} was deleted meanwhile", shown(&file.path)),
        Err(RpcError::FailedPrecondition(m)) => anyhow::bail!("delete --id {id}: {} now holds another file; nothing deleted ({m})", shown(&file.path)),
        Err(source) => return Err(ClientError::Metadata { context: format!("delete --id {id}"), source }.into()),
    };
    let deleted = reply.file.unwrap_or(file);
    let trashed_to = Some(reply.trashed_to).filter(|t| !t.is_empty());
    print_deleted(ctx, &[dfs_core::client::Deleted { path: deleted.path.clone(), file: Some(deleted), files_deleted: 1, dirs_deleted: 0, trashed_to }])
}

// ---- status ------------------------------------------------------------------------------

pub async fn status(ctx: &Ctx, args: StatusArgs) -> anyhow::Result<()> {
    let client = args.meta.client(ClientConfig::default())?;
    let s = client.status().await?;
    if ctx.json {
        return emit_json(&StatusJson::from(&s));
    }
    let mut out = String::new();
    let _ = match &s.leader {
        Some(l) => writeln!(out, "leader: {} {}", l.id, l.addr),
        None => writeln!(out, "leader: none"),
    };
    let _ = writeln!(out, "term: {}  applied index: {}", s.term, s.commit_index);
    let members: Vec<String> = s.members.iter().map(|m| format!("{}={}", m.id, m.addr)).collect();
    let _ = writeln!(out, "members: {}", members.join(","));
    let _ = writeln!(out, "files: {}  bytes: {} ({})", s.file_count, s.total_bytes, ByteSize(s.total_bytes));
    let _ = writeln!(out, "storage nodes: {}", s.storage_nodes.len());
    for n in &s.storage_nodes {
        let node = n.node.clone().unwrap_or_default();
        let ago = if n.last_heartbeat_ms_ago == u64::MAX { "never".to_string() } else { format!("{}ms ago", n.last_heartbeat_ms_ago) };
        let _ = writeln!(
            out,
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
    emit(&out)
}

// ---- nodes -------------------------------------------------------------------------------

pub async fn nodes(ctx: &Ctx, args: NodesArgs) -> anyhow::Result<()> {
    let client = args.meta.client(ClientConfig::default())?;
    let s = client.status().await?;
    let mut nodes: Vec<StorageNodeJson> = s.storage_nodes.iter().map(StorageNodeJson::from).collect();
    let volumes: Vec<u64> = s.storage_nodes.iter().map(|n| n.volume_id).collect();
    let total = crate::output::group_disks(&mut nodes, &volumes);
    if ctx.json {
        return emit_json(&NodesJson { nodes, total });
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16}  {:<21}  {:<14}  {:<8}  {:>10}  {:>10}  {:>10}  {:>8}  {:>7}  heartbeat",
        "node", "address", "state", "rack", "capacity", "stored", "usable", "chunks", "repairs"
    );
    for n in &nodes {
        let ago = match n.last_heartbeat_ms_ago {
            Some(ms) => format!("{:.1}s ago", ms as f64 / 1000.0),
            None => "never".to_string(),
        };
        let _ = writeln!(
            out,
            "{:<16}  {:<21}  {:<14}  {:<8}  {:>10}  {:>10}  {:>10}  {:>8}  {:>7}  {ago}",
            n.node_id,
            n.addr,
            n.state,
            n.rack.as_deref().unwrap_or("-"),
            ByteSize(n.capacity_bytes).to_string(),
            ByteSize(n.stored_bytes).to_string(),
            ByteSize(n.usable_bytes).to_string(),
            n.chunk_count,
            n.repairs_in_flight
        );
    }
    let nodes_word = if nodes.len() == 1 { "node" } else { "nodes" };
    let disks_word = if total.disks == 1 { "disk" } else { "disks" };
    let _ = writeln!(
        out,
        "total: {} {nodes_word} on {} {disks_word}: {} stored, {} usable of {} (usable: free space above each node's reserve)",
        nodes.len(),
        total.disks,
        ByteSize(total.stored_bytes),
        ByteSize(total.usable_bytes),
        ByteSize(total.capacity_bytes)
    );
    if nodes.iter().any(|n| !n.shares_disk_with.is_empty()) {
        let _ = writeln!(out, "note: nodes of one host on one disk share its capacity and free space (counted once in the total; each may fill it)");
    }
    emit(&out)
}

// ---- fsck --------------------------------------------------------------------------------

/// A health report like `hdfs fsck`; exits 1 (after the report) when anything is wrong.
pub async fn fsck(ctx: &Ctx, args: FsckArgs) -> anyhow::Result<()> {
    let client = args.meta.meta_client()?;
    let path = args.path.clone().unwrap_or_default();
    let request = proto::FsckRequest { path: path.clone(), problems_max: args.problems_max };
    let shown_path = if path.is_empty() { "/".to_string() } else { path.clone() };
    let r = client.call(request).await.map_err(|source| explain(ClientError::Metadata { context: format!("fsck {}", shown(&shown_path)), source }))?;
    let report = FsckJson::from(&r);
    let healthy = report.healthy;
    if ctx.json {
        emit_json(&report)?;
    } else {
        let mut out = String::new();
        for p in &report.problems {
            let _ =
                writeln!(out, "{} chunk {} ({}): {}, {} of {} replicas valid", shown(&p.path), p.index, p.chunk_id, p.kind, p.valid_replicas, p.replication);
        }
        if report.problems_truncated {
            let _ = writeln!(out, "... more problems not listed (--problems-max)");
        }
        let _ = writeln!(out, "path:              {}", shown(&shown_path));
        let _ = writeln!(out, "files:             {}", report.files);
        let _ = writeln!(out, "chunks:            {}  ({})", report.chunks, ByteSize(report.bytes));
        let _ = writeln!(out, "under-replicated:  {}", report.under_replicated);
        let _ = writeln!(out, "over-replicated:   {}", report.over_replicated);
        let _ = writeln!(out, "corrupt:           {}", report.corrupt);
        let _ = writeln!(out, "missing:           {}", report.missing);
        let _ = writeln!(out, "unreachable:       {}", report.unreachable);
        let _ = writeln!(out, "repairs in flight: {}", report.repairs_in_flight);
        let _ = writeln!(out, "status:            {}", if healthy { "HEALTHY" } else { "UNHEALTHY" });
        emit(&out)?;
    }
    if !healthy {
        anyhow::bail!(
            "{} is not healthy: {} missing, {} unreachable, {} under-replicated, {} corrupt, {} over-replicated chunks",
            shown(&shown_path),
            report.missing,
            report.unreachable,
            report.under_replicated,
            report.corrupt,
            report.over_replicated
        );
    }
    Ok(())
}

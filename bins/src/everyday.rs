//! The everyday commands users of `hdfs dfs`, `mc` and `weed` reach for first: `cp` (on the
//! servers, sharing chunks), `touch`, `head`, `tail`, `find`, `setrep`, `uploads` and `trash`.
//! Every path argument takes wildcards (`glob`).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use clap::Args;
use dfs_core::client::{ClientConfig, ClientError, DfsClient};
use dfs_core::namespace::TRASH_DIR;
use dfs_core::proto::{self, EntryKind};
use dfs_core::rpc::RpcError;
use dfs_io_real::RealEnv;
use serde::Serialize;

use crate::cli::{emit, emit_json, join_remote, plural, remote_path, shown, usage, user_name, Ctx, MetaFlag};
use crate::client_cmds::{parse_size, read_range};
use crate::glob::{expand, expand_all, has_wildcards};
use crate::transfer::explain;

fn is_dir(e: &proto::DirEntry) -> bool {
    e.kind == EntryKind::Directory as i32
}

// ---- cp ----------------------------------------------------------------------------------

#[derive(Args)]
pub struct CpArgs {
    /// The files (or with -r directories) to copy; wildcards allowed.
    #[arg(required = true, num_args = 1.., value_name = "SRC")]
    src: Vec<String>,
    /// The copy's path. An existing directory, or a path ending in '/', receives each SRC
    /// under its name (with several SRCs it must be one).
    #[arg(value_name = "DST")]
    dst: String,
    /// Copy directories with everything under them.
    #[arg(short = 'r', short_alias = 'R', long)]
    recursive: bool,
    /// Replace files that exist at the destination.
    #[arg(short, long)]
    force: bool,
    #[command(flatten)]
    meta: MetaFlag,
}

#[derive(Serialize)]
struct CopiedJson {
    src: String,
    dst: String,
    files: u64,
    bytes: u64,
}

/// Copies on the metadata servers: the copy shares the source's chunks (copy-on-write), so no
/// byte moves and it takes no space until one of them is deleted or replaced; a chunk's
/// replicas go only when no file holds it any more.
pub async fn cp(ctx: &Ctx, args: CpArgs) -> anyhow::Result<()> {
    let client = args.meta.client(ClientConfig::default())?;
    let sources = expand_all(&client, &args.src).await?;
    let dst = remote_path(&args.dst)?;
    let dst_is_dir = client.entry(&dst).await?.is_some_and(|e| is_dir(&e));
    let into_dir = args.dst.ends_with('/') || dst_is_dir;
    if sources.len() > 1 && !into_dir {
        return Err(usage(format!("cp: with several sources, {} must be a directory (end it with '/' to create it)", shown(&args.dst))));
    }
    let mut done = Vec::new();
    for src in &sources {
        let target = if into_dir {
            let name = src.rsplit('/').next().filter(|n| !n.is_empty()).ok_or_else(|| usage("cp: / cannot be copied (cp -r /dir ...)"))?;
            join_remote(&dst, name)
        } else {
            dst.clone()
        };
        let entry = client.entry(src).await?.ok_or_else(|| anyhow::anyhow!("cp {}: no such file or directory", shown(src)))?;
        if !is_dir(&entry) {
            let f = client.copy(src, &target, args.force).await.map_err(explain)?;
            done.push(CopiedJson { src: src.clone(), dst: target, files: 1, bytes: f.size });
            continue;
        }
        if !args.recursive {
            return Err(usage(format!("cp {}: is a directory (cp -r copies a tree)", shown(src))));
        }
        if dfs_core::namespace::is_at_or_under(&target, src) {
            return Err(usage(format!("cp -r {}: cannot copy a directory into itself ({})", shown(src), shown(&target))));
        }
        let (mut files, mut bytes) = (0, 0);
        client.mkdir(&target, true).await.map_err(explain)?;
        for e in client.list_dir(src, true).await.map_err(explain)? {
            let rel = &e.path[src.len()..];
            let to = format!("{target}{rel}");
            if is_dir(&e) {
                client.mkdir(&to, true).await.map_err(explain)?;
            } else {
                let f = client.copy(&e.path, &to, args.force).await.map_err(explain)?;
                files += 1;
                bytes += f.size;
            }
        }
        done.push(CopiedJson { src: src.clone(), dst: target, files, bytes });
    }
    if ctx.json {
        return match done.len() {
            1 => emit_json(&done[0]),
            _ => emit_json(&serde_json::json!({ "copied": done })),
        };
    }
    let mut out = String::new();
    for c in &done {
        let _ = writeln!(out, "{} -> {} ({}, {}; chunks shared, no byte copied)", shown(&c.src), shown(&c.dst), plural(c.files, "file"), ByteSize(c.bytes));
    }
    emit(&out)
}

// ---- touch -------------------------------------------------------------------------------

#[derive(Args)]
pub struct TouchArgs {
    /// Files to create empty if absent, or to give the current time if present (wildcards
    /// allowed for existing ones).
    #[arg(required = true, num_args = 1..)]
    paths: Vec<String>,
    /// Do not create a file that is absent.
    #[arg(short = 'c', long)]
    no_create: bool,
    #[command(flatten)]
    meta: MetaFlag,
}

pub async fn touch(_ctx: &Ctx, args: TouchArgs) -> anyhow::Result<()> {
    let client = args.meta.client(ClientConfig::default())?;
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    for arg in &args.paths {
        let paths = if has_wildcards(arg) { expand(&client, arg).await? } else { vec![remote_path(arg)?] };
        for path in paths {
            match client.entry(&path).await? {
                Some(_) => client.set_attributes(&path, None, Some(now_ms)).await.map_err(explain)?,
                None if args.no_create => {}
                None => {
                    // An empty upload: create and commit, no chunk.
                    let empty = crate::cli::spool_file("touch")?;
                    let attrs = dfs_core::namespace::FileAttrs { mode: Some(0o644), mtime_unix_ms: Some(now_ms) };
                    match client.put_with(empty.path(), &path, false, attrs, &dfs_core::client::NoProgress).await {
                        Ok(_) => {}
                        // Someone made it meanwhile: touching it is what was asked.
                        Err(ClientError::Metadata { source: RpcError::AlreadyExists(_), .. }) => {
                            client.set_attributes(&path, None, Some(now_ms)).await.map_err(explain)?
                        }
                        Err(e) => return Err(explain(e).context(format!("touch {}", shown(&path)))),
                    }
                }
            }
        }
    }
    Ok(())
}

// ---- head, tail --------------------------------------------------------------------------

#[derive(Args)]
pub struct HeadArgs {
    /// The file (wildcards allowed: each match in turn).
    #[arg(required = true, num_args = 1..)]
    paths: Vec<String>,
    /// Bytes to show (e.g. 100, 4KiB).
    #[arg(short = 'c', long = "bytes", default_value = "1KiB", value_parser = parse_size)]
    bytes: u64,
    #[command(flatten)]
    meta: MetaFlag,
}

/// The first `-c` bytes of each file, fetched alone (the frames that hold them).
pub async fn head(_ctx: &Ctx, args: HeadArgs) -> anyhow::Result<()> {
    let client = args.meta.client(ClientConfig::default())?;
    for path in expand_all(&client, &args.paths).await? {
        read_range(&args.meta, &path, 0, args.bytes, "head").await?;
    }
    Ok(())
}

/// The last `-c` bytes of each file, fetched alone.
pub async fn tail(_ctx: &Ctx, args: HeadArgs) -> anyhow::Result<()> {
    let client = args.meta.client(ClientConfig::default())?;
    for path in expand_all(&client, &args.paths).await? {
        let size = match client.stat(&path).await {
            Ok(r) => r.file.map(|f| f.size).unwrap_or(0),
            Err(e) if matches!(e.rpc(), Some(RpcError::NotFound(_))) && client.entry(&path).await?.is_some() => {
                return Err(anyhow::anyhow!("tail {}: is a directory", shown(&path)));
            }
            Err(e) => return Err(explain(e).context(format!("tail {}", shown(&path)))),
        };
        read_range(&args.meta, &path, size.saturating_sub(args.bytes), args.bytes, "tail").await?;
    }
    Ok(())
}

// ---- find --------------------------------------------------------------------------------

#[derive(Args)]
pub struct FindArgs {
    /// Where to look (wildcards allowed); default: everywhere.
    #[arg(default_value = "/")]
    paths: Vec<String>,
    /// Names matching this pattern (`*.log`; quote it).
    #[arg(long = "name", value_name = "GLOB")]
    name: Option<String>,
    /// Files of this size: `+1MiB` more, `-10KiB` less, `4096` exactly (bytes; k/M/G suffixes).
    #[arg(long = "size", value_name = "[+-]SIZE", allow_hyphen_values = true)]
    size: Option<String>,
    /// Modified after this remote path was (its kept modification time, or its commit).
    #[arg(long = "newer", value_name = "PATH")]
    newer: Option<String>,
    /// Only files (`f`) or only directories (`d`).
    #[arg(long = "type", value_name = "f|d", value_parser = ["f", "d"])]
    kind: Option<String>,
    #[command(flatten)]
    meta: MetaFlag,
}

/// What `-size` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SizeTest {
    More(u64),
    Less(u64),
    Exactly(u64),
}

fn size_test(s: &str) -> anyhow::Result<SizeTest> {
    let (kind, rest): (fn(u64) -> SizeTest, &str) = match s.as_bytes().first() {
        Some(b'+') => (SizeTest::More, &s[1..]),
        Some(b'-') => (SizeTest::Less, &s[1..]),
        _ => (SizeTest::Exactly, s),
    };
    let rest = rest.strip_suffix('c').unwrap_or(rest);
    let bytes = parse_size(rest).map_err(|e| usage(format!("find -size {s}: {e}")))?;
    Ok(kind(bytes))
}

/// The time `find -newer` compares: the kept modification time, else the commit.
fn entry_time(e: &proto::DirEntry) -> u64 {
    e.file.as_ref().map(|f| f.mtime_unix_ms.unwrap_or(f.committed_unix_ms)).unwrap_or(e.modified_unix_ms)
}

/// Like `find`: every path under PATH whose name, size, age and kind pass the tests, one
/// per line. Flags may be written as `find` writes them (`-name`, `-size`, `-newer`,
/// `-type`).
pub async fn find(ctx: &Ctx, args: FindArgs) -> anyhow::Result<()> {
    let client = args.meta.client(ClientConfig::default())?;
    let name = match &args.name {
        Some(p) => Some(glob::Pattern::new(p).map_err(|e| usage(format!("find -name {p}: not a valid pattern: {e}")))?),
        None => None,
    };
    let size = args.size.as_deref().map(size_test).transpose()?;
    let newer = match &args.newer {
        Some(p) => {
            let path = remote_path(p)?;
            let entry = client.list_dir(&path, false).await.map_err(explain)?;
            let me = entry.into_iter().find(|e| e.path == path);
            Some(match me {
                Some(e) => entry_time(&e),
                // A directory: its own time, from its parent's listing.
                None => {
                    let parent = path.rsplit_once('/').map(|(p, _)| if p.is_empty() { "/" } else { p }).unwrap_or("/");
                    let siblings = client.list_dir(parent, false).await.map_err(explain)?;
                    siblings
                        .into_iter()
                        .find(|e| e.path == path)
                        .map(|e| entry_time(&e))
                        .ok_or_else(|| anyhow::anyhow!("find -newer {}: no such file or directory", shown(p)))?
                }
            })
        }
        None => None,
    };
    let options = glob::MatchOptions { case_sensitive: true, require_literal_separator: true, require_literal_leading_dot: false };
    let mut found = Vec::new();
    for root in expand_all(&client, &args.paths).await? {
        let mut entries = client.list_dir(&root, true).await.map_err(explain)?;
        if !dfs_core::namespace::in_trash(&root) {
            entries.retain(|e| !dfs_core::namespace::in_trash(&e.path));
        }
        for e in entries {
            let dir = is_dir(&e);
            let pass = name.as_ref().is_none_or(|p| p.matches_with(&e.name, options))
                && args.kind.as_deref().is_none_or(|k| (k == "d") == dir)
                && size.is_none_or(|t| {
                    let bytes = e.file.as_ref().map(|f| f.size);
                    match (t, bytes) {
                        (_, None) => false,
                        (SizeTest::More(n), Some(b)) => b > n,
                        (SizeTest::Less(n), Some(b)) => b < n,
                        (SizeTest::Exactly(n), Some(b)) => b == n,
                    }
                })
                && newer.is_none_or(|t| entry_time(&e) > t);
            if pass {
                found.push(e.path);
            }
        }
    }
    if ctx.json {
        return emit_json(&serde_json::json!({ "paths": found }));
    }
    let mut out = String::new();
    for p in &found {
        let _ = writeln!(out, "{}", shown(p));
    }
    emit(&out)
}

// ---- setrep ------------------------------------------------------------------------------

#[derive(Args)]
pub struct SetrepArgs {
    /// The replication factor to set.
    #[arg(value_parser = clap::value_parser!(u32).range(1..=16))]
    replication: u32,
    /// Files, or directories (every file under them); wildcards allowed.
    #[arg(required = true, num_args = 1..)]
    paths: Vec<String>,
    /// Wait until every chunk of them has exactly that many good copies.
    #[arg(short = 'w', long)]
    wait: bool,
    /// With -w: give up after this long (e.g. 10m).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    wait_timeout: Duration,
    /// Accepted for `hdfs dfs -setrep -R` habits: directories are always done whole.
    #[arg(short = 'R', hide = true)]
    recursive: bool,
    #[command(flatten)]
    meta: MetaFlag,
}

/// Sets the replication factor; repair makes the missing copies and drops the surplus ones in
/// the background (`-w` waits for it, as `hdfs dfs -setrep -w` does).
pub async fn setrep(ctx: &Ctx, args: SetrepArgs) -> anyhow::Result<()> {
    let client = args.meta.client(ClientConfig::default())?;
    let paths = expand_all(&client, &args.paths).await?;
    let mut changed = Vec::new();
    for path in &paths {
        let files = client.set_replication(path, args.replication).await.map_err(explain)?;
        changed.push((path.clone(), files));
    }
    if !ctx.json {
        let mut out = String::new();
        for (path, files) in &changed {
            let _ = writeln!(out, "Replication {} set for {} ({})", args.replication, shown(path), plural(*files, "file"));
        }
        emit(&out)?;
    }
    if args.wait {
        let meta = args.meta.meta_client()?;
        let deadline = Instant::now() + args.wait_timeout;
        for (path, _) in &changed {
            loop {
                let report = meta.call(proto::FsckRequest { path: path.clone(), problems_max: 1 }).await;
                match report {
                    Ok(r) if r.under_replicated + r.over_replicated + r.missing + r.unreachable + r.corrupt == 0 => break,
                    Ok(r) if Instant::now() >= deadline => {
                        anyhow::bail!(
                            "setrep -w {}: not done within {:?}: {} chunks under-, {} over-replicated",
                            shown(path),
                            args.wait_timeout,
                            r.under_replicated,
                            r.over_replicated
                        )
                    }
                    Err(e) if Instant::now() >= deadline => return Err(ClientError::Metadata { context: format!("setrep -w {path}"), source: e }.into()),
                    _ => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        }
    }
    if ctx.json {
        let json: Vec<_> = changed.iter().map(|(path, files)| serde_json::json!({ "path": path, "replication": args.replication, "files": files })).collect();
        return emit_json(&serde_json::json!({ "set": json, "waited": args.wait }));
    }
    Ok(())
}

// ---- uploads -----------------------------------------------------------------------------

#[derive(Args)]
pub struct UploadsArgs {
    /// Only uploads to this path or under this directory.
    path: Option<String>,
    /// Abort the upload with this id (`dfs uploads` lists them); its stored chunks are deleted.
    #[arg(long, value_name = "ID")]
    abort: Vec<u64>,
    #[command(flatten)]
    meta: MetaFlag,
}

#[derive(Serialize)]
struct UploadJson {
    id: u64,
    path: String,
    size: u64,
    replication: u32,
    created_unix_ms: u64,
    age_ms: u64,
    chunks_total: u64,
    chunks_recorded: u64,
    bytes_recorded: u64,
}

/// Uploads created and not committed: in flight, interrupted (rerun the put to resume it) or
/// abandoned (they expire by themselves after an hour; `--abort` frees their chunks now).
pub async fn uploads(ctx: &Ctx, args: UploadsArgs) -> anyhow::Result<()> {
    let client = args.meta.client(ClientConfig::default())?;
    if !args.abort.is_empty() {
        let mut out = String::new();
        for id in &args.abort {
            match client.abort_upload(*id).await {
                Ok(()) => {
                    let _ = writeln!(out, "Aborted upload {id}");
                }
                Err(e) if matches!(e.rpc(), Some(RpcError::NotFound(_))) => {
                    anyhow::bail!("uploads --abort {id}: no upload {id} in flight (committed, expired, or never made; dfs uploads lists them)")
                }
                Err(e) => return Err(explain(e)),
            }
        }
        if ctx.json {
            return emit_json(&serde_json::json!({ "aborted": args.abort }));
        }
        return emit(&out);
    }
    let prefix = match &args.path {
        Some(p) => remote_path(p)?,
        None => String::new(),
    };
    let reply = client.uploads(&prefix).await.map_err(explain)?;
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let list: Vec<UploadJson> = reply
        .uploads
        .iter()
        .map(|u| UploadJson {
            id: u.file_id,
            path: u.path.clone(),
            size: u.size,
            replication: u.replication,
            created_unix_ms: u.created_unix_ms,
            age_ms: now_ms.saturating_sub(u.created_unix_ms),
            chunks_total: u.chunks_total,
            chunks_recorded: u.chunks_recorded,
            bytes_recorded: u.bytes_recorded,
        })
        .collect();
    if ctx.json {
        return emit_json(&serde_json::json!({ "uploads": list, "truncated": reply.truncated }));
    }
    let mut out = format!("Found {}\n", plural(list.len() as u64, "upload"));
    if !list.is_empty() {
        let _ = writeln!(out, "{:>10}  {:>8}  {:>21}  path", "id", "age", "stored");
    }
    for u in &list {
        let age = humantime::format_duration(Duration::from_secs(u.age_ms / 1000)).to_string();
        let stored = format!("{} of {}", ByteSize(u.bytes_recorded), ByteSize(u.size));
        let _ = writeln!(out, "{:>10}  {:>8}  {:>21}  {}", u.id, age, stored, shown(&u.path));
    }
    if reply.truncated {
        out.push_str("... more not listed (the oldest are shown)\n");
    }
    emit(&out)
}

// ---- trash -------------------------------------------------------------------------------

#[derive(clap::Subcommand)]
pub enum TrashCommand {
    /// What your trash holds, by when it was deleted.
    List(TrashArgs),
    /// Deletes everything in your trash, for good.
    Empty(TrashArgs),
    /// Puts deleted files back where they were: the original path (the newest deletion of
    /// it), or a path inside the trash.
    Restore(RestoreArgs),
}

#[derive(Args)]
pub struct TrashArgs {
    #[command(flatten)]
    meta: MetaFlag,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// Paths as they were before `rm` (`/logs/a.txt`), or in the trash
    /// (`/.trash/<user>/2026-12-06T09:31:00Z/logs/a.txt`).
    #[arg(required = true, num_args = 1..)]
    paths: Vec<String>,
    /// Restore under another path instead (one PATH only).
    #[arg(long, value_name = "PATH")]
    to: Option<String>,
    #[command(flatten)]
    meta: MetaFlag,
}

fn user_trash() -> String {
    format!("{TRASH_DIR}/{}", user_name())
}

pub async fn trash(ctx: &Ctx, command: TrashCommand) -> anyhow::Result<()> {
    match command {
        TrashCommand::List(args) => {
            let client = args.meta.client(ClientConfig::default())?;
            let root = user_trash();
            let entries = match client.list_dir(&root, true).await {
                Ok(entries) => entries,
                Err(e) if matches!(e.rpc(), Some(RpcError::NotFound(_))) => Vec::new(),
                Err(e) => return Err(explain(e)),
            };
            if ctx.json {
                let json: Vec<_> = entries.iter().map(crate::output::EntryJson::from).collect();
                return emit_json(&serde_json::json!({ "trash": root, "entries": json }));
            }
            let files = entries.iter().filter(|e| !is_dir(e)).count() as u64;
            let bytes: u64 = entries.iter().filter_map(|e| e.file.as_ref().map(|f| f.size)).sum();
            let mut out = format!("{}: {} ({})\n", shown(&root), plural(files, "file"), ByteSize(bytes));
            for e in entries.iter().filter(|e| !is_dir(e)) {
                let _ = writeln!(out, "{:>14} {}", e.file.as_ref().map_or(0, |f| f.size), shown(&e.path));
            }
            emit(&out)
        }
        TrashCommand::Empty(args) => {
            let client = args.meta.client(ClientConfig::default())?;
            let root = user_trash();
            match client.delete_now(&root, true).await {
                Ok(d) => emit(&format!(
                    "Emptied {} ({}, {})\n",
                    shown(&root),
                    plural(d.files_deleted, "file"),
                    plural(d.dirs_deleted.saturating_sub(1), "directory")
                )),
                Err(e) if matches!(e.rpc(), Some(RpcError::NotFound(_))) => emit(&format!("{} is empty\n", shown(&root))),
                Err(e) => Err(explain(e)),
            }
        }
        TrashCommand::Restore(args) => restore(ctx, args).await,
    }
}

/// Where `original` went most recently in `root` (the user's trash), if it is there.
async fn newest_in_trash(client: &DfsClient<RealEnv>, root: &str, original: &str) -> anyhow::Result<Option<String>> {
    let buckets = match client.list_dir(root, false).await {
        Ok(b) => b,
        Err(e) if matches!(e.rpc(), Some(RpcError::NotFound(_))) => return Ok(None),
        Err(e) => return Err(explain(e)),
    };
    let mut buckets: Vec<(u64, String)> = buckets.into_iter().filter_map(|b| dfs_core::namespace::trash_bucket_unix_ms(&b.name).map(|t| (t, b.path))).collect();
    // Newest first; variants of one minute (`...Z.2`) after their plain bucket.
    buckets.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
    for (_, bucket) in buckets {
        let candidate = format!("{bucket}{original}");
        if client.entry(&candidate).await?.is_some() {
            return Ok(Some(candidate));
        }
    }
    Ok(None)
}

async fn restore(ctx: &Ctx, args: RestoreArgs) -> anyhow::Result<()> {
    let client = args.meta.client(ClientConfig::default())?;
    let root = user_trash();
    if args.to.is_some() && args.paths.len() > 1 {
        return Err(usage("trash restore --to takes one path"));
    }
    let mut restored = Vec::new();
    for arg in &args.paths {
        let path = remote_path(arg)?;
        let (from, original) = if dfs_core::namespace::in_trash(&path) {
            // /.trash/<user>/<bucket>/original...
            let rest: Vec<&str> = path.trim_start_matches('/').splitn(4, '/').collect();
            match rest.as_slice() {
                [_, _, _, original] => (path.clone(), format!("/{original}")),
                _ => return Err(usage(format!("trash restore {}: name something inside a trash bucket, or the path it had", shown(arg)))),
            }
        } else {
            match newest_in_trash(&client, &root, &path).await? {
                Some(from) => (from, path.clone()),
                None => anyhow::bail!("trash restore {}: not in {} (dfs trash list shows what is)", shown(arg), shown(&root)),
            }
        };
        let to = match &args.to {
            Some(t) => remote_path(t)?,
            None => original,
        };
        if client.entry(&to).await?.is_some() {
            anyhow::bail!("trash restore {}: {} exists; restore it elsewhere with --to PATH", shown(arg), shown(&to));
        }
        if let Some((parent, _)) = to.rsplit_once('/').filter(|(p, _)| !p.is_empty()) {
            client.mkdir(parent, true).await.map_err(explain)?;
        }
        client.rename(&from, &to).await.map_err(explain)?;
        restored.push(serde_json::json!({ "from": from, "to": to }));
        if !ctx.json {
            emit(&format!("Restored {} from {}\n", shown(&to), shown(&from)))?;
        }
    }
    if ctx.json {
        return emit_json(&serde_json::json!({ "restored": restored }));
    }
    Ok(())
}

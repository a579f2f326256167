//! `put -r` and `get -r`: whole directory trees, many files in flight (at most `--parallel`),
//! the structure preserved: `LOCAL/a/b` is `REMOTE/a/b` and back. Each file goes through
//! `DfsClient::put`/`get` on its own, so each is all-or-nothing like a single `put`/`get`; a
//! file that fails is reported on stderr as it fails (one line) and in the summary, the others
//! carry on, and the command exits 1 if any failed.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use anyhow::Context;
use bytesize::ByteSize;
use dfs_core::client::tree_resume::{self, Decision, RemoteFile, TreeDone, TreeKey, TreeProgress};
use dfs_core::client::{ClientConfig, DfsClient};
use dfs_core::env::FileStamp;
use dfs_core::ids::Sha256Digest;
use dfs_core::proto::EntryKind;
use dfs_io_real::RealEnv;
use futures::stream::{self, StreamExt};

use crate::cli::{emit, emit_json, join_remote, plural, remote_path, shown, usage, Ctx};
use crate::output::{TreeFileJson, TreeJson};
use crate::progress::Bar;
use crate::transfer::{explain, GetOpts, PutOpts};

/// Chunks in flight per file when `files` files are in flight: the total stays near the
/// single-file default (4), each chunk being held in memory whole.
fn chunks_per_file(files: u64) -> usize {
    (4 / files.max(1)).max(1) as usize
}

/// Files in flight at once in a tree transfer, however small: many small files share
/// metadata and chunk batches, which is what makes them fast.
const FILES_IN_FLIGHT_MAX: usize = 256;

/// Bounds the chunk bytes a tree transfer holds in memory: `--parallel` chunks' worth, each
/// file in flight counting for its first chunk (the whole file when smaller). Small files go
/// by the hundred, large ones `--parallel` at a time.
struct Budget {
    permits: tokio::sync::Semaphore,
    total_kib: u32,
    chunk_size: u64,
}

impl Budget {
    fn new(parallel: u64, chunk_size: u64) -> Self {
        let total_kib = u32::try_from(parallel.saturating_mul(chunk_size) / 1024).unwrap_or(u32::MAX).max(1);
        Budget { permits: tokio::sync::Semaphore::new(total_kib as usize), total_kib, chunk_size }
    }

    async fn take(&self, size: u64) -> tokio::sync::SemaphorePermit<'_> {
        let kib = u32::try_from(size.min(self.chunk_size).div_ceil(1024)).unwrap_or(u32::MAX).clamp(1, self.total_kib);
        self.permits.acquire_many(kib).await.expect("the budget is never closed")
    }
}

struct Job {
    local: PathBuf,
    remote: String,
    size: u64,
    /// What the remote file kept of its source (for `get -p`).
    attrs: dfs_core::namespace::FileAttrs,
}

fn failure(local: &Path, remote: &str, error: impl std::fmt::Display) -> TreeFileJson {
    TreeFileJson { local: local.display().to_string(), remote: remote.to_string(), size: 0, error: Some(error.to_string()), already_uploaded: false }
}

/// What a walk of the local tree found.
#[derive(Default)]
struct Walk {
    files: Vec<Job>,
    /// Remote paths of local directories with nothing in them: created explicitly, since no
    /// file upload creates them.
    empty_dirs: Vec<String>,
    directories: u64,
    failed: Vec<TreeFileJson>,
    /// Symbolic links not followed (without -L): each said once, none a failure.
    skipped_links: Vec<PathBuf>,
    /// The directories being walked, from the top, by (device, inode): with -L a link back up
    /// the tree (a cycle) is not followed.
    ancestors: Vec<(u64, u64)>,
}

/// How `put -r` treats what it finds and what is already there.
#[derive(Clone, Copy, Debug, Default)]
pub struct TreeFlags {
    /// Replace remote files whose size or SHA-256 differ from the local file's (`--update`,
    /// `dfs sync`); without it (and without `--force`) such a file fails.
    pub update: bool,
    /// Say what would be sent, send nothing.
    pub dry_run: bool,
    /// Follow symbolic links (`-L`); without it each is skipped, with a note.
    pub follow_links: bool,
}

/// Walks `dir` (whose remote counterpart is `remote`), depth first, in name order. Symbolic
/// links are skipped with a note, or with `follow` followed (to files and directories; a
/// directory already entered is not entered again, so a link cycle ends); special files and
/// names that cannot be remote names fail.
fn walk(dir: &Path, remote: &str, follow: bool, out: &mut Walk) {
    use std::os::unix::fs::MetadataExt;
    let here = std::fs::metadata(dir).map(|m| (m.dev(), m.ino())).ok();
    if let Some(here) = here {
        if out.ancestors.contains(&here) {
            out.failed.push(failure(dir, remote, "a symbolic link back up the tree (a cycle): not followed"));
            return;
        }
        out.ancestors.push(here);
    }
    walk_entries(dir, remote, follow, out);
    if here.is_some() {
        out.ancestors.pop();
    }
}

fn walk_entries(dir: &Path, remote: &str, follow: bool, out: &mut Walk) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => return out.failed.push(failure(dir, remote, e)),
    };
    let mut entries: Vec<_> = match entries.collect::<Result<_, _>>() {
        Ok(entries) => entries,
        Err(e) => return out.failed.push(failure(dir, remote, e)),
    };
    entries.sort_by_key(|e| e.file_name());
    if entries.is_empty() {
        out.empty_dirs.push(remote.to_string());
    }
    for entry in entries {
        let path = entry.path();
        let link = entry.file_type().map(|t| t.is_symlink()).unwrap_or(false);
        if link && !follow {
            out.skipped_links.push(path);
            continue;
        }
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            out.failed.push(failure(&path, "", "the file name is not UTF-8"));
            continue;
        };
        let child = match remote_path(&join_remote(remote, &name)) {
            Ok(child) => child,
            Err(e) => {
                out.failed.push(failure(&path, "", format!("{e:#}")));
                continue;
            }
        };
        let meta = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) => {
                out.failed.push(failure(&path, &child, e));
                continue;
            }
        };
        if meta.is_dir() {
            out.directories += 1;
            walk(&path, &child, follow, out);
        } else if meta.is_file() {
            out.files.push(Job { local: path, remote: child, size: meta.len(), attrs: Default::default() });
        } else {
            out.failed.push(failure(&path, &child, "not a regular file"));
        }
    }
}

/// Gives a downloaded file the mode and modification time its upload kept (`get -p`).
pub fn restore_attrs(path: &Path, attrs: dfs_core::namespace::FileAttrs) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // The time first: the mode may make the file read-only.
    if let Some(ms) = attrs.mtime_unix_ms {
        let file = std::fs::File::open(path)?;
        file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))?;
    }
    if let Some(mode) = attrs.mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & dfs_core::namespace::MODE_MAX))?;
    }
    Ok(())
}

/// The mode and modification time of a local file, kept with its upload.
pub fn attrs_of(meta: &std::fs::Metadata) -> dfs_core::namespace::FileAttrs {
    use std::os::unix::fs::PermissionsExt;
    let mtime_unix_ms = meta.modified().ok().and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_millis() as u64);
    dfs_core::namespace::FileAttrs { mode: Some(meta.permissions().mode() & dfs_core::namespace::MODE_MAX), mtime_unix_ms }
}

pub async fn put_tree(ctx: &Ctx, local: &Path, remote_arg: &str, opts: &PutOpts, flags: TreeFlags) -> anyhow::Result<()> {
    let chunk_size = opts.chunk_size()?;
    if local.as_os_str() == "-" {
        return Err(usage("put -r: standard input is not a directory"));
    }
    let prefix = remote_path(remote_arg)?;
    let meta = std::fs::metadata(local).map_err(|e| usage(format!("{}: {e}", local.display())))?;
    if !meta.is_dir() {
        return Err(usage(format!("{}: not a directory (put without -r uploads one file)", local.display())));
    }
    let mut found = Walk::default();
    tokio::task::block_in_place(|| walk(local, &prefix, flags.follow_links, &mut found));
    for f in &found.failed {
        eprintln!("dfs: put {}: {}", shown(&f.local), shown(f.error.as_deref().unwrap_or_default()));
    }
    for link in &found.skipped_links {
        eprintln!("dfs: put -r: skipping the symbolic link {} (-L follows links)", link.display());
    }

    let config = ClientConfig { chunk_size, replication: opts.replication, parallelism: chunks_per_file(opts.parallel), ..ClientConfig::default() };
    let client = opts.meta.client(config)?;
    // The prefix first: it fails the whole command at once when the cluster cannot be
    // reached or the prefix is a file, rather than once per file.
    if prefix != "/" {
        client.mkdir(&prefix, true).await.with_context(|| format!("put -r {}", shown(&prefix)))?;
    }
    for dir in found.empty_dirs.iter().filter(|d| **d != prefix) {
        if let Err(e) = client.mkdir(dir, true).await {
            let f = failure(local, dir, format!("{:#}", anyhow::Error::new(e)));
            eprintln!("dfs: put -r: mkdir {}: {}", shown(dir), shown(f.error.as_deref().unwrap_or_default()));
            found.failed.push(f);
        }
    }

    // Resuming: what an interrupted run of this same command committed is not sent again.
    let resume = TreeResume::open(&client, local, &prefix, chunk_size, opts).await;
    let mut decisions = Vec::with_capacity(found.files.len());
    let mut skipped = 0usize;
    for job in found.files {
        let decision = match &resume.progress {
            Some((progress, remote)) => match std::fs::metadata(&job.local) {
                Ok(meta) => progress.decide(&job.remote, stamp_of(&meta), remote.get(&job.remote)),
                Err(_) => Decision::Upload, // the put reports it
            },
            None => Decision::Upload,
        };
        if decision == Decision::Skip {
            skipped += 1;
        }
        decisions.push((job, decision));
    }
    if skipped > 0 {
        eprintln!("resuming: {skipped} of {} files already uploaded", decisions.len());
    }

    // What the remote tree holds already: a file there with the same size and SHA-256 is
    // not sent again; one with other content is replaced with --force or --update, else it
    // fails (one listing of the prefix).
    let existing: BTreeMap<String, (u64, Option<Sha256Digest>)> = match client.list(&prefix).await {
        Ok(files) => files.into_iter().map(|f| (f.path, (f.size, Sha256Digest::from_slice(&f.sha256)))).collect(),
        Err(e) if matches!(e.rpc(), Some(dfs_core::rpc::RpcError::NotFound(_))) => BTreeMap::new(),
        Err(e) => return Err(explain(e)),
    };
    let total: u64 = decisions.iter().filter(|(_, d)| *d != Decision::Skip).map(|(j, _)| j.size).sum();
    let count = decisions.len();
    let verb = if flags.dry_run { "put -r (dry run)" } else { "put -r" };
    let bar = Bar::tree(&format!("{verb} 0/{count} files"), total, ctx.progress() && !flags.dry_run);
    let done = AtomicU64::new(0);
    let sends_failed = AtomicU64::new(0);
    let budget = Budget::new(opts.parallel, chunk_size);
    let (client, bar_ref, done_ref, resume_ref, budget, existing, sends_failed_ref) = (&client, &bar, &done, &resume, &budget, &existing, &sends_failed);
    let results: Vec<TreeFileJson> = stream::iter(decisions)
        .map(|(job, decision)| async move {
            let _held = budget.take(job.size).await;
            let plan = match decision {
                Decision::Skip => Plan::Already,
                Decision::Replace => Plan::Send { overwrite: true, why: "changed" },
                Decision::Verify { size, sha256 } if size == job.size && same_bytes(&job.local, sha256).await => Plan::Already,
                Decision::Verify { .. } | Decision::Upload => match existing.get(&job.remote) {
                    None => Plan::Send { overwrite: opts.force, why: "new" },
                    Some(_) if opts.force => Plan::Send { overwrite: true, why: "replaced" },
                    Some((size, sha)) => {
                        let same = *size == job.size
                            && match sha {
                                Some(d) => same_bytes(&job.local, *d).await,
                                None => false,
                            };
                        if same {
                            Plan::Already
                        } else if flags.update {
                            Plan::Send { overwrite: true, why: "changed" }
                        } else {
                            Plan::Refuse("already exists with other content (--update replaces what differs, --force replaces every file)")
                        }
                    }
                },
            };
            let result = match plan {
                Plan::Already => Ok(None),
                Plan::Refuse(why) => Err(anyhow::anyhow!(why)),
                Plan::Send { why, .. } if flags.dry_run => {
                    bar_ref.println(&format!("would send {} -> {} ({why}, {})", job.local.display(), shown(&job.remote), ByteSize(job.size)));
                    Ok(None)
                }
                Plan::Send { overwrite, .. } => {
                    let attrs = std::fs::metadata(&job.local).map(|m| attrs_of(&m)).unwrap_or_default();
                    let sent = client.put_with(&job.local, &job.remote, overwrite, attrs, &bar_ref.file()).await.map(Some).map_err(explain);
                    if sent.is_err() {
                        sends_failed_ref.fetch_add(1, Ordering::Relaxed);
                    }
                    sent
                }
            };
            let n = done_ref.fetch_add(1, Ordering::Relaxed) + 1;
            bar_ref.set_message(format!("{verb} {n}/{count} files"));
            if let Ok(Some(info)) = &result {
                resume_ref.committed(&job.local, &job.remote, info.file_id);
            }
            let error = result.err().map(|e| format!("{e:#}"));
            if let Some(error) = &error {
                bar_ref.eprintln(&format!("dfs: put {} -> {}: {}", job.local.display(), shown(&job.remote), shown(error)));
            }
            let already = matches!(plan, Plan::Already);
            TreeFileJson { local: job.local.display().to_string(), remote: job.remote, size: job.size, error, already_uploaded: already }
        })
        .buffer_unordered(FILES_IN_FLIGHT_MAX)
        .collect()
        .await;
    drop(bar);
    let all_up = found.failed.is_empty() && results.iter().all(|r| r.error.is_none());
    if !flags.dry_run {
        resume.finish(all_up, sends_failed.load(Ordering::Relaxed) > 0);
    }
    report(ctx, verb, local.display().to_string(), prefix, results, found.failed, found.directories)
}

/// What `put -r` does with one local file.
#[derive(Clone, Copy, Debug)]
enum Plan {
    /// The remote file has the same size and SHA-256 (or an interrupted run committed it).
    Already,
    Send {
        overwrite: bool,
        why: &'static str,
    },
    Refuse(&'static str),
}

/// The stamp the resume manifests compare (as `Disk::stamp` on the real disk).
fn stamp_of(meta: &std::fs::Metadata) -> FileStamp {
    let modified = meta.modified().ok().and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_nanos() as u64).unwrap_or(0);
    FileStamp { len: meta.len(), modified }
}

/// Whether the local file's SHA-256 is `sha256` (a file at the remote path that an
/// interrupted run may have committed without noting it).
async fn same_bytes(path: &Path, sha256: Sha256Digest) -> bool {
    let path = path.to_path_buf();
    let digest = tokio::task::spawn_blocking(move || -> std::io::Result<Sha256Digest> {
        use sha2::Digest;
        use std::io::Read;
        let mut file = std::fs::File::open(path)?;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match file.read(&mut buf)? {
                0 => break,
                n => hasher.update(&buf[..n]),
            }
        }
        Ok(Sha256Digest(hasher.finalize().into()))
    });
    matches!(digest.await, Ok(Ok(d)) if d == sha256)
}

/// The resume manifest of one `put -r` (see `dfs_core::client::tree_resume`): read at the
/// start, appended (no fsync) as files commit, removed when every file is up.
struct TreeResume {
    path: Option<PathBuf>,
    /// The earlier run's progress and what the remote tree holds now, when resuming.
    progress: Option<(TreeProgress, BTreeMap<String, RemoteFile>)>,
    file: Mutex<Option<std::fs::File>>,
}

impl TreeResume {
    async fn open(client: &DfsClient<RealEnv>, local: &Path, prefix: &str, chunk_size: u64, opts: &PutOpts) -> Self {
        let none = TreeResume { path: None, progress: None, file: Mutex::new(None) };
        let Some(dir) = crate::cli::state_dir().map(|d| d.join("uploads")) else { return none };
        let root = std::fs::canonicalize(local).unwrap_or_else(|_| local.to_path_buf());
        let key = TreeKey {
            local_root: root.display().to_string(),
            remote_prefix: prefix.to_string(),
            cluster: client.meta_addrs().join(","),
            chunk_size,
            replication: opts.replication,
            overwrite: opts.force,
        };
        let path = dir.join(tree_resume::manifest_name(&key));
        let earlier = std::fs::read(&path).ok().and_then(|bytes| tree_resume::parse(&bytes, &key)).filter(|p| !p.is_empty());
        let progress = match earlier {
            // What the remote tree holds: one listing, to check each file the earlier run
            // committed is still the one it committed.
            Some(p) => match client.list(prefix).await {
                Ok(files) => {
                    let remote = files
                        .into_iter()
                        .map(|f| (f.path, RemoteFile { file_id: f.file_id, size: f.size, sha256: Sha256Digest::from_slice(&f.sha256) }))
                        .collect();
                    Some((p, remote))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list the remote tree; not resuming");
                    None
                }
            },
            None => None,
        };
        let opened = match progress.is_some() {
            true => std::fs::OpenOptions::new().append(true).open(&path),
            false => std::fs::create_dir_all(&dir).and_then(|()| {
                let mut f = std::fs::File::create(&path)?;
                f.write_all(&tree_resume::header_line(&key))?;
                Ok(f)
            }),
        };
        let file = match opened {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "no resume manifest; an interrupted put -r will start over");
                None
            }
        };
        TreeResume { path: Some(path), progress, file: Mutex::new(file) }
    }

    /// `local` is committed at `remote` as `file_id`.
    fn committed(&self, local: &Path, remote: &str, file_id: u64) {
        let Ok(meta) = std::fs::metadata(local) else { return };
        let line = tree_resume::done_line(&TreeDone { remote: remote.to_string(), stamp: stamp_of(&meta), file_id });
        let mut file = self.file.lock().expect("manifest lock");
        if let Some(f) = file.as_mut() {
            if let Err(e) = f.write_all(&line) {
                tracing::warn!(error = %e, "resume manifest not updated; a rerun verifies more");
                *file = None;
            }
        }
    }

    /// The run ended; with every file up, the manifest goes.
    /// The run ended; with every file up, the manifest goes. `resumable`: some transfer
    /// failed, which a rerun would retry (not only refusals, which it would repeat).
    fn finish(self, all_up: bool, resumable: bool) {
        if let (true, Some(path)) = (all_up, &self.path) {
            if let Err(e) = std::fs::remove_file(path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove the resume manifest");
                }
            }
        } else if resumable && self.path.is_some() && self.file.lock().expect("manifest lock").is_some() {
            eprintln!("dfs: put -r: rerun the same command to resume: files already uploaded are not sent again");
        }
    }
}

pub async fn get_tree(ctx: &Ctx, remote_arg: &str, local: &Path, opts: &GetOpts) -> anyhow::Result<()> {
    if local.as_os_str() == "-" {
        return Err(usage("get -r: a tree cannot be written to standard output"));
    }
    let prefix = remote_path(remote_arg)?;
    if local.exists() && !local.is_dir() {
        return Err(usage(format!("{}: not a directory", local.display())));
    }
    let client = opts.meta.client(ClientConfig { parallelism: chunks_per_file(opts.parallel), ..ClientConfig::default() })?;
    match client.entry(&prefix).await? {
        None => anyhow::bail!("get -r {}: no such file or directory", shown(&prefix)),
        Some(e) if e.kind != EntryKind::Directory as i32 => anyhow::bail!("get -r {}: not a directory (get without -r downloads a file)", shown(&prefix)),
        Some(_) => {}
    }
    let mut entries = client.list_dir(&prefix, true).await.map_err(explain)?;
    // The trash is not part of a tree (unless the tree is in it).
    if !dfs_core::namespace::in_trash(&prefix) {
        entries.retain(|e| !dfs_core::namespace::in_trash(&e.path));
    }
    std::fs::create_dir_all(local).map_err(|e| anyhow::anyhow!("{}: {e}", local.display()))?;

    let mut jobs = Vec::new();
    let mut failed = Vec::new();
    let mut directories = 0;
    for e in &entries {
        let rel = if prefix == "/" { e.path.strip_prefix('/') } else { e.path.strip_prefix(&prefix).and_then(|r| r.strip_prefix('/')) };
        // The metadata cluster refuses such names, but a local path is built from them: never
        // let one climb out of the destination directory.
        let safe = rel.filter(|r| r.split('/').all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0')));
        let Some(rel) = safe else {
            failed.push(failure(local, &e.path, "a name that cannot be a local path"));
            continue;
        };
        let dest = rel.split('/').fold(local.to_path_buf(), |p, c| p.join(c));
        if e.kind == EntryKind::Directory as i32 {
            directories += 1;
            if let Err(err) = std::fs::create_dir_all(&dest) {
                failed.push(failure(&dest, &e.path, err));
            }
            continue;
        }
        // As `get` decides (a link followed, a regular file replaced only with --force), but
        // a tree's files go only to regular files.
        let dest = match crate::transfer::target_of(&dest, opts.force) {
            Ok(crate::transfer::Target::File(path)) => path,
            Ok(crate::transfer::Target::Through(_)) => {
                failed.push(failure(&dest, &e.path, "not a regular file (get -r writes only regular files)"));
                continue;
            }
            Err(why) => {
                failed.push(failure(&dest, &e.path, why));
                continue;
            }
        };
        jobs.push(Job {
            local: dest,
            remote: e.path.clone(),
            size: e.file.as_ref().map_or(0, |f| f.size),
            attrs: dfs_core::namespace::FileAttrs { mode: e.file.as_ref().and_then(|f| f.mode), mtime_unix_ms: e.file.as_ref().and_then(|f| f.mtime_unix_ms) },
        });
    }
    for f in &failed {
        eprintln!("dfs: get {} -> {}: {}", shown(&f.remote), f.local, shown(f.error.as_deref().unwrap_or_default()));
    }

    let total: u64 = jobs.iter().map(|j| j.size).sum();
    let count = jobs.len();
    let bar = Bar::tree(&format!("get -r 0/{count} files"), total, ctx.progress());
    let done = AtomicU64::new(0);
    let budget = Budget::new(opts.parallel, dfs_core::chunking::DEFAULT_CHUNK_SIZE);
    let (client, bar_ref, done_ref, budget) = (&client, &bar, &done, &budget);
    let results: Vec<TreeFileJson> = stream::iter(jobs)
        .map(|job| async move {
            let _held = budget.take(job.size).await;
            // Durable all together at the end (one flush), not file by file.
            let result = client.get_unsynced(&job.remote, &job.local, &bar_ref.file()).await.map_err(explain);
            let result = match result {
                Ok(_) if opts.preserve => {
                    restore_attrs(&job.local, job.attrs).map_err(|e| anyhow::anyhow!("{}: keeping its mode and time: {e}", job.local.display()))
                }
                other => other.map(|_| ()),
            };
            let n = done_ref.fetch_add(1, Ordering::Relaxed) + 1;
            bar_ref.set_message(format!("get -r {n}/{count} files"));
            let error = result.err().map(|e| format!("{e:#}"));
            if let Some(error) = &error {
                bar_ref.eprintln(&format!("dfs: get {} -> {}: {}", shown(&job.remote), job.local.display(), shown(error)));
            }
            TreeFileJson { local: job.local.display().to_string(), remote: job.remote, size: job.size, error, already_uploaded: false }
        })
        .buffer_unordered(FILES_IN_FLIGHT_MAX)
        .collect()
        .await;
    drop(bar);
    // Nothing is reported done before it is durable: one flush of the destination's
    // filesystem covers every file and directory entry written above.
    client.sync_local(local).await.with_context(|| format!("get -r: the files were written to {} but could not be made durable", local.display()))?;
    report(ctx, "get -r", prefix, local.display().to_string(), results, failed, directories)
}

/// Prints the summary (text or JSON) and fails if any file failed.
fn report(
    ctx: &Ctx,
    what: &str,
    source: String,
    destination: String,
    mut results: Vec<TreeFileJson>,
    failed_early: Vec<TreeFileJson>,
    directories: u64,
) -> anyhow::Result<()> {
    results.extend(failed_early);
    results.sort_by(|a, b| (&a.remote, &a.local).cmp(&(&b.remote, &b.local)));
    let failed = results.iter().filter(|r| r.error.is_some()).count() as u64;
    let copied = results.len() as u64 - failed;
    let already = results.iter().filter(|r| r.already_uploaded && r.error.is_none()).count() as u64;
    let bytes: u64 = results.iter().filter(|r| r.error.is_none()).map(|r| r.size).sum();
    let files = results.len();
    if ctx.json {
        emit_json(&TreeJson {
            source,
            destination,
            files: results,
            files_copied: copied,
            files_already_uploaded: already,
            files_failed: failed,
            bytes_copied: bytes,
            directories,
        })?;
    } else {
        let resumed = if already > 0 { format!(" ({already} already there)") } else { String::new() };
        let verb = if what.contains("dry run") { "to copy" } else { "copied" };
        emit(&format!(
            "{what}: {} -> {}: {} ({}) {verb}{resumed}, {failed} failed, {}\n",
            shown(&source),
            shown(&destination),
            plural(copied, "file"),
            ByteSize(bytes),
            plural(directories, "directory")
        ))?;
    }
    if failed > 0 {
        anyhow::bail!("{what}: {failed} of {} failed (each is named above)", plural(files as u64, "file"));
    }
    Ok(())
}

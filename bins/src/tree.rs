//! `put -r` and `get -r`: whole directory trees, many files in flight (at most `--parallel`),
//! the structure preserved: `LOCAL/a/b` is `REMOTE/a/b` and back. Each file goes through
//! `DfsClient::put`/`get` on its own, so each is all-or-nothing like a single `put`/`get`; a
//! file that fails is reported on stderr as it fails (one line) and in the summary, the others
//! carry on, and the command exits 1 if any failed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use bytesize::ByteSize;
use dfs_core::client::tree::{self, Budget, LocalFile, PutTreeError, TreeFileError, TreeFileOutcome, TreeObserver, Walk, FILES_IN_FLIGHT_MAX};
use dfs_core::client::{ClientConfig, Progress};
use dfs_core::proto::EntryKind;
use futures::stream::{self, StreamExt};

use crate::cli::{emit, emit_json, plural, remote_path, shown, usage, Ctx};
use crate::output::{TreeFileJson, TreeJson};
use crate::progress::Bar;
use crate::transfer::{explain, explain_ref, GetOpts, PutOpts};

pub use dfs_core::client::tree::TreeFlags;

/// Chunks in flight per file when `files` files are in flight: the total stays near the
/// single-file default (4), each chunk being held in memory whole.
fn chunks_per_file(files: u64) -> usize {
    (4 / files.max(1)).max(1) as usize
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

/// How one file's failure reads: a cluster's or network's error explained as `put` does.
fn tree_error(error: &TreeFileError) -> String {
    match error {
        TreeFileError::Client(e) => explain_ref(e),
        other => other.to_string(),
    }
}

/// What `dfs put -r` shows as the tree goes up: walk failures and skipped links on stderr,
/// then one progress bar for the whole tree.
struct Shown<'a> {
    verb: &'a str,
    enabled: bool,
    bar: std::sync::OnceLock<Bar>,
    count: AtomicU64,
}

impl Shown<'_> {
    fn bar(&self) -> &Bar {
        self.bar.get_or_init(|| Bar::tree(self.verb, 0, false))
    }
}

impl TreeObserver for Shown<'_> {
    fn walked(&self, walk: &Walk) {
        for f in &walk.failed {
            eprintln!("dfs: put {}: {}", shown(&f.local.display().to_string()), shown(&f.error.as_ref().map(tree_error).unwrap_or_default()));
        }
        for link in &walk.skipped_links {
            eprintln!("dfs: put -r: skipping the symbolic link {} (-L follows links)", link.display());
        }
    }

    fn mkdir_failed(&self, f: &TreeFileOutcome) {
        eprintln!("dfs: put -r: mkdir {}: {}", shown(&f.remote), shown(&f.error.as_ref().map(tree_error).unwrap_or_default()));
    }

    fn resuming(&self, skipped: usize, files: usize) {
        eprintln!("resuming: {skipped} of {files} files already uploaded");
    }

    fn sending(&self, files: usize, bytes: u64) {
        self.count.store(files as u64, Ordering::Relaxed);
        let _ = self.bar.set(Bar::tree(&format!("{} 0/{files} files", self.verb), bytes, self.enabled));
    }

    fn file_progress(&self) -> Box<dyn Progress + '_> {
        Box::new(self.bar().file())
    }

    fn would_send(&self, file: &LocalFile, why: &str) {
        self.bar().println(&format!("would send {} -> {} ({why}, {})", file.local.display(), shown(&file.remote), ByteSize(file.size)));
    }

    fn file_done(&self, outcome: &TreeFileOutcome, done: u64) {
        let bar = self.bar();
        bar.set_message(format!("{} {done}/{} files", self.verb, self.count.load(Ordering::Relaxed)));
        if let Some(error) = &outcome.error {
            bar.eprintln(&format!("dfs: put {} -> {}: {}", outcome.local.display(), shown(&outcome.remote), shown(&tree_error(error))));
        }
    }
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
    // The absolute root names the tree (and each large file) in the resume manifests,
    // wherever the rerun starts from.
    let root = std::fs::canonicalize(local).unwrap_or_else(|_| local.to_path_buf());
    let config = ClientConfig {
        chunk_size,
        replication: opts.replication,
        parallelism: chunks_per_file(opts.parallel),
        resume_dir: crate::cli::state_dir().map(|d| d.join("uploads")),
        ..ClientConfig::default()
    };
    let client = opts.meta.client(config)?;
    let verb = if flags.dry_run { "put -r (dry run)" } else { "put -r" };
    let flags = tree::TreeFlags { force: opts.force, ..flags };
    let observer = Shown { verb, enabled: ctx.progress() && !flags.dry_run, bar: std::sync::OnceLock::new(), count: AtomicU64::new(0) };
    let done = client.put_tree(&root, &prefix, opts.parallel, flags, &observer).await.map_err(|e| match e {
        PutTreeError::Prefix { prefix, source } => anyhow::Error::new(source).context(format!("put -r {}", shown(&prefix))),
        PutTreeError::List(e) => explain(e),
    })?;
    drop(observer);
    if done.rerun_resumes {
        eprintln!("dfs: put -r: rerun the same command to resume: files already uploaded are not sent again");
    }
    let as_json = |f: TreeFileOutcome| TreeFileJson {
        local: f.local.display().to_string(),
        remote: f.remote,
        size: f.size,
        error: f.error.as_ref().map(tree_error),
        already_uploaded: f.already_uploaded,
    };
    report(ctx, verb, local.display().to_string(), prefix, done.files.into_iter().map(as_json).collect(), Vec::new(), done.directories)
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

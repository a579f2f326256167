//! `put -r`: a whole local directory tree uploaded, many files in flight, the structure kept
//! (`LOCAL/a/b` becomes `PREFIX/a/b`), an interrupted run resumed by rerunning it.
//!
//! ## What it promises
//! - Each file goes through `DfsClient::put_with` on its own, so each is all-or-nothing like a
//!   single `put`; a file that fails is reported (`TreeObserver::file_done`) and the others
//!   carry on.
//! - A file already at its remote path with the same size and SHA-256 is not sent again; one
//!   with other content is replaced with `force` or `update`, else it fails.
//! - Resuming (see `tree_resume` for the decisions): with `ClientConfig::resume_dir` set, what
//!   an interrupted run of the same tree committed is skipped, unless it changed since.
//! - Memory is bounded: at most `FILES_IN_FLIGHT_MAX` files in flight, and chunk bytes held
//!   at once stay within `parallel` chunks' worth (each file counting for its first chunk).
//! - Symbolic links are skipped with a note, or followed with `follow_links` (a directory
//!   already being walked is not entered again, so a link cycle ends); special files and
//!   names that cannot be remote names fail; directories with nothing in them are created.
//!
//! ## How it is driven
//! Every local look goes through the env's `Disk` (`read_entries`, `inspect`, reads), so the
//! same walk and the same resume decisions run on the real disk (`dfs put -r`) and on the
//! simulated one (`sim-tests`' interrupted tree upload). The caller sees progress through a
//! `TreeObserver` and gets a `TreeReport` to print.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use futures::stream::{self, StreamExt};
use sha2::Digest;

use super::tree_resume::{self, Decision, RemoteFile, TreeDone, TreeKey, TreeProgress};
use super::{ClientError, DfsClient, Progress};
use crate::env::{Disk, Env, FileStamp, LocalKind, LocalMeta};
use crate::ids::Sha256Digest;
use crate::namespace::{normalize_path, FileAttrs};
use crate::rpc::RpcError;

/// Files in flight at once, however small: many small files share metadata and chunk
/// batches, which is what makes them fast.
pub const FILES_IN_FLIGHT_MAX: usize = 256;

/// Links looked through (`Disk::inspect`) at once while walking one directory.
const WALK_LOOKS_IN_FLIGHT_MAX: usize = 64;

/// Bytes read from a local file per step when comparing it with a remote file's SHA-256.
const COMPARE_READ_BYTES: u64 = 1 << 20;

/// How `put -r` treats what it finds and what is already there.
#[derive(Clone, Copy, Debug, Default)]
pub struct TreeFlags {
    /// Replace remote files whose size or SHA-256 differ from the local file's (`--update`,
    /// `dfs sync`); without it (and without `force`) such a file fails.
    pub update: bool,
    /// Replace every remote file that exists (`--force`).
    pub force: bool,
    /// Say what would be sent, send nothing.
    pub dry_run: bool,
    /// Follow symbolic links (`-L`); without it each is skipped, with a note.
    pub follow_links: bool,
}

/// Why one file of a tree was not uploaded.
#[derive(Debug, thiserror::Error)]
pub enum TreeFileError {
    /// The local disk's (reading the directory or the file).
    #[error("{0}")]
    Local(std::io::Error),
    /// The caller's: a local name that cannot be a remote one.
    #[error("the file name is not UTF-8")]
    NotUtf8,
    #[error("{0}")]
    BadName(crate::namespace::NamespaceError),
    #[error("contains a control character")]
    ControlCharacter,
    #[error("a symbolic link back up the tree (a cycle): not followed")]
    Cycle,
    #[error("not a regular file")]
    NotRegular,
    #[error("already exists with other content (--update replaces what differs, --force replaces every file)")]
    Differs,
    /// The cluster's or the network's, from `put` or `mkdir`.
    #[error(transparent)]
    Client(ClientError),
}

/// Why a tree upload stopped as a whole (each file's own failure is in its outcome).
#[derive(Debug, thiserror::Error)]
pub enum PutTreeError {
    /// The remote directory cannot be made (unreachable cluster, a file in the way).
    #[error("put -r {prefix}")]
    Prefix { prefix: String, source: ClientError },
    /// The remote tree cannot be listed (to see what is there already).
    #[error(transparent)]
    List(ClientError),
}

/// What became of one local file (or directory, for the failures of the walk).
#[derive(Debug)]
pub struct TreeFileOutcome {
    pub local: PathBuf,
    /// Empty when no remote name could be made for it.
    pub remote: String,
    /// Bytes of the file; 0 when it failed before that was known.
    pub size: u64,
    pub error: Option<TreeFileError>,
    /// Already at the remote path with the same content (committed by an earlier run of
    /// the same tree, or the same size and SHA-256): not sent again.
    pub already_uploaded: bool,
}

impl TreeFileOutcome {
    fn failed(local: &Path, remote: &str, error: TreeFileError) -> Self {
        TreeFileOutcome { local: local.to_path_buf(), remote: remote.to_string(), size: 0, error: Some(error), already_uploaded: false }
    }
}

/// A regular file found by the walk.
#[derive(Clone, Debug)]
pub struct LocalFile {
    pub local: PathBuf,
    pub remote: String,
    pub size: u64,
    /// As the walk found it: what the resume manifest compares.
    pub stamp: FileStamp,
    /// What its upload keeps of it.
    pub attrs: FileAttrs,
}

/// What a walk of the local tree found.
#[derive(Debug, Default)]
pub struct Walk {
    pub files: Vec<LocalFile>,
    /// Remote paths of local directories with nothing in them: created explicitly, since no
    /// file upload creates them.
    pub empty_dirs: Vec<String>,
    pub directories: u64,
    pub failed: Vec<TreeFileOutcome>,
    /// Symbolic links not followed (without `follow_links`): each said once, none a failure.
    pub skipped_links: Vec<PathBuf>,
}

/// Walks `root` (whose remote counterpart is `prefix`), depth first, in name order.
pub async fn walk<D: Disk>(disk: &D, root: &Path, prefix: &str, follow: bool) -> Walk {
    let mut out = Walk::default();
    // Depth first without recursion: a stack of directories still to list, each with the
    // identities of the directories above it (with links followed, one of those met again is
    // a cycle). Bounded by the tree: every directory is pushed once per path reaching it,
    // and a path through a cycle stops at the cycle.
    struct ToList {
        dir: PathBuf,
        remote: String,
        /// `LocalMeta::identity` of each directory above it.
        ancestors: Vec<(u64, u64)>,
    }
    let mut stack = vec![ToList { dir: root.to_path_buf(), remote: prefix.to_string(), ancestors: Vec::new() }];
    while let Some(ToList { dir, remote, mut ancestors }) = stack.pop() {
        if let Ok(meta) = disk.inspect(&dir).await {
            if ancestors.contains(&meta.identity) {
                out.failed.push(TreeFileOutcome::failed(&dir, &remote, TreeFileError::Cycle));
                continue;
            }
            ancestors.push(meta.identity);
        }
        let entries = match disk.read_entries(&dir).await {
            Ok(entries) => entries,
            Err(e) => {
                out.failed.push(TreeFileOutcome::failed(&dir, &remote, TreeFileError::Local(e)));
                continue;
            }
        };
        if entries.is_empty() {
            out.empty_dirs.push(remote.clone());
        }
        // Names first (which cannot be remote names fail here), then what each one is: as
        // listed, or (a link followed) looked at, several at once, since each look is a trip
        // to the disk's thread pool.
        let mut named = Vec::with_capacity(entries.len());
        for entry in entries {
            let path = dir.join(&entry.name);
            if entry.kind == LocalKind::Symlink && !follow {
                out.skipped_links.push(path);
                continue;
            }
            let Some(name) = entry.name.to_str() else {
                out.failed.push(TreeFileOutcome::failed(&path, "", TreeFileError::NotUtf8));
                continue;
            };
            if name.chars().any(char::is_control) {
                out.failed.push(TreeFileOutcome::failed(&path, "", TreeFileError::ControlCharacter));
                continue;
            }
            match normalize_path(&join_remote(&remote, name)) {
                Ok(child) => named.push((path, child, entry.meta)),
                Err(e) => out.failed.push(TreeFileOutcome::failed(&path, "", TreeFileError::BadName(e))),
            }
        }
        let look = |(path, child, listed): (PathBuf, String, Option<LocalMeta>)| async move {
            let meta = match listed {
                Some(meta) => Ok(meta),
                None => disk.inspect(&path).await,
            };
            (meta, path, child)
        };
        let mut looked = stream::iter(named).map(look).buffered(WALK_LOOKS_IN_FLIGHT_MAX);
        let mut subdirs = Vec::new();
        while let Some((meta, path, child)) = looked.next().await {
            let meta = match meta {
                Ok(meta) => meta,
                Err(e) => {
                    out.failed.push(TreeFileOutcome::failed(&path, &child, TreeFileError::Local(e)));
                    continue;
                }
            };
            match meta.kind {
                LocalKind::Dir => {
                    out.directories += 1;
                    subdirs.push(ToList { dir: path, remote: child, ancestors: ancestors.clone() });
                }
                LocalKind::File => out.files.push(LocalFile { local: path, remote: child, size: meta.len, stamp: meta.stamp, attrs: meta.attrs }),
                LocalKind::Symlink | LocalKind::Other => out.failed.push(TreeFileOutcome::failed(&path, &child, TreeFileError::NotRegular)),
            }
        }
        // Reversed onto the stack, so the first name is walked first.
        stack.extend(subdirs.into_iter().rev());
    }
    out
}

/// `parent/name` for canonical `parent`.
fn join_remote(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// What the caller of `put_tree` hears as it goes.
pub trait TreeObserver: Send + Sync {
    /// The walk is done; `walk.failed` and `walk.skipped_links` are final.
    fn walked(&self, walk: &Walk) {
        let _ = walk;
    }
    /// An empty directory could not be created (also in the report).
    fn mkdir_failed(&self, outcome: &TreeFileOutcome) {
        let _ = outcome;
    }
    /// `skipped` of `files` files were committed by an interrupted earlier run.
    fn resuming(&self, skipped: usize, files: usize) {
        let _ = (skipped, files);
    }
    /// Sending starts: `files` files, of which `bytes` bytes will be sent.
    fn sending(&self, files: usize, bytes: u64) {
        let _ = (files, bytes);
    }
    /// Where one file's progress goes.
    fn file_progress(&self) -> Box<dyn Progress + '_>;
    /// A dry run would send `file` (`why`: new, changed, replaced).
    fn would_send(&self, file: &LocalFile, why: &str) {
        let _ = (file, why);
    }
    /// `done` of the files are finished, this one last.
    fn file_done(&self, outcome: &TreeFileOutcome, done: u64) {
        let _ = (outcome, done);
    }
}

/// What `put_tree` did, file by file.
#[derive(Debug)]
pub struct TreeReport {
    /// Every file and every failure of the walk, in no particular order.
    pub files: Vec<TreeFileOutcome>,
    pub directories: u64,
    /// Some transfer failed, which a rerun would retry (with a resume manifest kept to
    /// skip what is up already).
    pub rerun_resumes: bool,
}

/// What `put_tree` does with one local file.
#[derive(Clone, Copy, Debug)]
enum Plan {
    /// The remote file has the same size and SHA-256 (or an interrupted run committed it).
    Already,
    Send {
        overwrite: bool,
        why: &'static str,
    },
    Refuse,
}

/// Bounds the chunk bytes a tree transfer holds in memory: `parallel` chunks' worth, each
/// file in flight counting for its first chunk (the whole file when smaller). Small files go
/// by the hundred, large ones `parallel` at a time. Waiters for room take turns, first come
/// first served: a large file waiting is not passed over forever by small ones.
pub struct Budget {
    free_kib: std::sync::Mutex<u32>,
    freed: event_listener::Event,
    /// Held by the one waiter that takes room next.
    turn: futures::lock::Mutex<()>,
    total_kib: u32,
    chunk_size: u64,
}

/// Room taken from a `Budget`, given back when dropped.
pub struct Held<'a> {
    budget: &'a Budget,
    kib: u32,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        *self.budget.free_kib.lock().expect("budget lock") += self.kib;
        self.budget.freed.notify(usize::MAX);
    }
}

impl Budget {
    pub fn new(parallel: u64, chunk_size: u64) -> Self {
        let total_kib = u32::try_from(parallel.saturating_mul(chunk_size) / 1024).unwrap_or(u32::MAX).max(1);
        Budget { free_kib: std::sync::Mutex::new(total_kib), freed: event_listener::Event::new(), turn: futures::lock::Mutex::new(()), total_kib, chunk_size }
    }

    /// Waits for room for a file of `size` bytes.
    pub async fn take(&self, size: u64) -> Held<'_> {
        let kib = u32::try_from(size.min(self.chunk_size).div_ceil(1024)).unwrap_or(u32::MAX).clamp(1, self.total_kib);
        let _turn = self.turn.lock().await;
        loop {
            // Listening before looking: room given back between the look and the wait still
            // wakes this waiter.
            let freed = self.freed.listen();
            {
                let mut free = self.free_kib.lock().expect("budget lock");
                if *free >= kib {
                    *free -= kib;
                    return Held { budget: self, kib };
                }
            }
            freed.await;
        }
    }
}

impl<E: Env> DfsClient<E> {
    /// Uploads the local directory `root` to the remote directory `prefix` (canonical),
    /// `parallel` chunks' worth of bytes in flight. Fails as a whole only when the prefix
    /// cannot be made or the remote tree cannot be listed; each file's failure is in the
    /// report.
    pub async fn put_tree(&self, root: &Path, prefix: &str, parallel: u64, flags: TreeFlags, observer: &dyn TreeObserver) -> Result<TreeReport, PutTreeError> {
        let disk = self.env.disk();
        let mut found = walk(disk, root, prefix, flags.follow_links).await;
        observer.walked(&found);
        // The prefix first: it fails the whole command at once when the cluster cannot be
        // reached or the prefix is a file, rather than once per file.
        if prefix != "/" {
            self.mkdir(prefix, true).await.map_err(|source| PutTreeError::Prefix { prefix: prefix.to_string(), source })?;
        }
        for dir in std::mem::take(&mut found.empty_dirs).iter().filter(|d| *d != prefix) {
            if let Err(e) = self.mkdir(dir, true).await {
                let failed = TreeFileOutcome::failed(root, dir, TreeFileError::Client(e));
                observer.mkdir_failed(&failed);
                found.failed.push(failed);
            }
        }

        // Resuming: what an interrupted run of this same upload committed is not sent again.
        let resume = TreeResume::open(self, root, prefix, flags.force, !flags.dry_run).await;
        let mut decisions = Vec::with_capacity(found.files.len());
        let mut skipped = 0usize;
        for file in std::mem::take(&mut found.files) {
            let decision = match &resume.progress {
                Some((progress, remote)) => progress.decide(&file.remote, file.stamp, remote.get(&file.remote)),
                None => Decision::Upload,
            };
            skipped += usize::from(decision == Decision::Skip);
            decisions.push((file, decision));
        }
        if skipped > 0 {
            observer.resuming(skipped, decisions.len());
        }

        // What the remote tree holds already (one listing of the prefix).
        let existing: BTreeMap<String, (u64, Option<Sha256Digest>)> = match self.list(prefix).await {
            Ok(files) => files.into_iter().map(|f| (f.path, (f.size, Sha256Digest::from_slice(&f.sha256)))).collect(),
            Err(e) if matches!(e.rpc(), Some(RpcError::NotFound(_))) => BTreeMap::new(),
            Err(e) => return Err(PutTreeError::List(e)),
        };
        let total: u64 = decisions.iter().filter(|(_, d)| *d != Decision::Skip).map(|(f, _)| f.size).sum();
        observer.sending(decisions.len(), total);
        let done = AtomicU64::new(0);
        let sends_failed = AtomicU64::new(0);
        let budget = Budget::new(parallel, self.config.chunk_size);
        let (done, sends_failed, resume, budget, existing) = (&done, &sends_failed, &resume, &budget, &existing);
        let mut files: Vec<TreeFileOutcome> = stream::iter(decisions)
            .map(|(file, decision)| async move {
                let _held = budget.take(file.size).await;
                let plan = match decision {
                    Decision::Skip => Plan::Already,
                    Decision::Replace => Plan::Send { overwrite: true, why: "changed" },
                    Decision::Verify { size, sha256 } if size == file.size && self.same_bytes(&file.local, sha256).await => Plan::Already,
                    Decision::Verify { .. } | Decision::Upload => match existing.get(&file.remote) {
                        None => Plan::Send { overwrite: flags.force, why: "new" },
                        Some(_) if flags.force => Plan::Send { overwrite: true, why: "replaced" },
                        Some((size, sha)) => {
                            let same = *size == file.size
                                && match sha {
                                    Some(d) => self.same_bytes(&file.local, *d).await,
                                    None => false,
                                };
                            match (same, flags.update) {
                                (true, _) => Plan::Already,
                                (false, true) => Plan::Send { overwrite: true, why: "changed" },
                                (false, false) => Plan::Refuse,
                            }
                        }
                    },
                };
                let result = match plan {
                    Plan::Already => Ok(None),
                    Plan::Refuse => Err(TreeFileError::Differs),
                    Plan::Send { why, .. } if flags.dry_run => {
                        observer.would_send(&file, why);
                        Ok(None)
                    }
                    Plan::Send { overwrite, .. } => {
                        let progress = observer.file_progress();
                        let sent = self.put_with(&file.local, &file.remote, overwrite, file.attrs, &*progress).await;
                        if sent.is_err() {
                            sends_failed.fetch_add(1, Ordering::Relaxed);
                        }
                        sent.map(Some).map_err(TreeFileError::Client)
                    }
                };
                if let Ok(Some(info)) = &result {
                    resume.committed(disk, &file.remote, file.stamp, info.file_id).await;
                }
                let outcome = TreeFileOutcome {
                    local: file.local,
                    remote: file.remote,
                    size: file.size,
                    error: result.err(),
                    already_uploaded: matches!(plan, Plan::Already),
                };
                observer.file_done(&outcome, done.fetch_add(1, Ordering::Relaxed) + 1);
                outcome
            })
            .buffer_unordered(FILES_IN_FLIGHT_MAX)
            .collect()
            .await;
        let all_up = found.failed.is_empty() && files.iter().all(|r| r.error.is_none());
        let resumable = sends_failed.load(Ordering::Relaxed) > 0;
        let kept = match flags.dry_run {
            true => false,
            false => resume.finish(disk, all_up).await,
        };
        files.append(&mut found.failed);
        Ok(TreeReport { files, directories: found.directories, rerun_resumes: resumable && kept })
    }

    /// Whether the local file's SHA-256 is `sha256` (a file at the remote path that an
    /// interrupted run may have committed without noting it). Read a piece at a time,
    /// hashed through `env.compute`.
    async fn same_bytes(&self, path: &Path, sha256: Sha256Digest) -> bool {
        let disk = self.env.disk();
        let mut hasher = sha2::Sha256::new();
        let mut offset = 0u64;
        loop {
            let piece = match disk.read_at(path, offset, COMPARE_READ_BYTES).await {
                Ok(piece) => piece,
                Err(_) => return false,
            };
            if piece.is_empty() {
                break;
            }
            offset += piece.len() as u64;
            hasher = self
                .env
                .compute(move || {
                    hasher.update(&piece);
                    hasher
                })
                .await;
        }
        Sha256Digest(hasher.finalize().into()) == sha256
    }
}

/// The resume manifest of one tree upload (see `tree_resume`): read at the start, appended
/// (no fsync) as files commit, removed when every file is up.
struct TreeResume {
    path: Option<PathBuf>,
    /// The earlier run's progress and what the remote tree holds now, when resuming.
    progress: Option<(TreeProgress, BTreeMap<String, RemoteFile>)>,
    appends: std::sync::Mutex<Appends>,
}

/// Lines for the manifest, written at its end by one task at a time: whoever adds a line
/// while no write is under way writes everything pending, again until nothing is (a write
/// per file, one at a time, would hold up the files behind it).
#[derive(Debug, Default)]
struct Appends {
    pending: Vec<u8>,
    writing: bool,
    /// The manifest's length, while it can be appended to (`None` after a failed write).
    len: Option<u64>,
}

impl TreeResume {
    /// `write`: keep a manifest for this run (a dry run only reads the earlier one's).
    async fn open<E: Env>(client: &DfsClient<E>, root: &Path, prefix: &str, force: bool, write: bool) -> Self {
        let none = TreeResume { path: None, progress: None, appends: Default::default() };
        let Some(dir) = client.config.resume_dir.clone() else { return none };
        let disk = client.env.disk();
        let key = TreeKey {
            local_root: root.display().to_string(),
            remote_prefix: prefix.to_string(),
            cluster: client.meta_addrs().join(","),
            chunk_size: client.config.chunk_size,
            replication: client.config.replication,
            overwrite: force,
        };
        let path = dir.join(tree_resume::manifest_name(&key));
        let earlier = disk.read_file(&path).await.ok().and_then(|bytes| tree_resume::parse(&bytes, &key)).filter(|p| !p.is_empty());
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
        if !write {
            return TreeResume { path: None, progress, appends: Default::default() };
        }
        let opened = match progress.is_some() {
            true => disk.file_len(&path).await,
            false => {
                let header = tree_resume::header_line(&key);
                let len = header.len() as u64;
                async {
                    disk.create_dir_all(&dir).await?;
                    disk.write_file(&path, header.into()).await
                }
                .await
                .map(|()| len)
            }
        };
        let len = match opened {
            Ok(len) => Some(len),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "no resume manifest; an interrupted put -r will start over");
                None
            }
        };
        TreeResume { path: Some(path), progress, appends: std::sync::Mutex::new(Appends { len, ..Default::default() }) }
    }

    /// The local file of `stamp` is committed at `remote` as `file_id`.
    async fn committed<D: Disk>(&self, disk: &D, remote: &str, stamp: FileStamp, file_id: u64) {
        let Some(path) = &self.path else { return };
        {
            let mut a = self.appends.lock().expect("manifest lock");
            if a.len.is_none() {
                return;
            }
            a.pending.extend(tree_resume::done_line(&TreeDone { remote: remote.to_string(), stamp, file_id }));
            if a.writing {
                return;
            }
            a.writing = true;
        }
        loop {
            let (lines, at) = {
                let mut a = self.appends.lock().expect("manifest lock");
                match a.len {
                    Some(len) if !a.pending.is_empty() => (std::mem::take(&mut a.pending), len),
                    _ => {
                        a.writing = false;
                        return;
                    }
                }
            };
            let n = lines.len() as u64;
            let written = disk.write_at(path, at, lines.into()).await;
            let mut a = self.appends.lock().expect("manifest lock");
            a.len = match written {
                Ok(()) => Some(at + n),
                Err(e) => {
                    tracing::warn!(error = %e, "resume manifest not updated; a rerun verifies more");
                    None
                }
            };
        }
    }

    /// The run ended; with every file up, the manifest goes. Whether a manifest is kept for
    /// a rerun.
    async fn finish<D: Disk>(&self, disk: &D, all_up: bool) -> bool {
        let Some(path) = &self.path else { return false };
        if all_up {
            if let Err(e) = disk.remove_file(path).await {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove the resume manifest");
                }
            }
            return false;
        }
        self.appends.lock().expect("manifest lock").len.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[test]
    fn the_budget_holds_parallel_chunks_and_a_large_file_waiting_is_not_passed_over() {
        // Two chunks of 4 KiB in all; a file counts for its first chunk at most.
        let budget = Budget::new(2, 4096);
        let a = budget.take(4096).now_or_never().expect("room for the first chunk");
        let b = budget.take(2048).now_or_never().expect("a small file fits beside it");
        assert!(budget.take(1 << 30).now_or_never().is_none(), "no room for a second whole chunk");
        // A large file waits; a small one after it waits its turn though there is room for it.
        let mut large = Box::pin(budget.take(1 << 30));
        assert!(large.as_mut().now_or_never().is_none());
        let mut later = Box::pin(budget.take(100));
        assert!(later.as_mut().now_or_never().is_none(), "a small file passed a large one waiting");
        drop(a);
        let large = large.now_or_never().expect("the large file has its room once it is free");
        let later = later.now_or_never().expect("then the small one");
        drop((large, later, b));
        // A waiter given up (its future dropped) holds up nobody.
        let held = (budget.take(4096).now_or_never().unwrap(), budget.take(4096).now_or_never().unwrap());
        let mut gone = Box::pin(budget.take(4096));
        assert!(gone.as_mut().now_or_never().is_none());
        drop(gone);
        drop(held);
        let _all = budget.take(4096).now_or_never().expect("room back");
        let _rest = budget.take(4096).now_or_never().expect("all of it");
    }
}

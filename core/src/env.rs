//! The environment a driver runs in: time, the network, the disk, a seeded source of ids.
//!
//! `dfs-io-real` implements these on tokio, tonic and the real filesystem; `dfs-io-sim` on
//! madsim with a simulated disk. Nothing in `dfs-core` reaches the world any other way.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;

use crate::proto::ReadChunkRequest;
use crate::rpc::{ChunkDownload, ChunkService, ChunkUpload, Rpc, RpcError};

/// A local file operation that failed, in a form a machine's events and errors can carry
/// (cloned, compared): the disk's fault (`Io`) or the file's, changed underfoot (`Shrank`).
#[derive(Clone, Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{}{error}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    Io { path: Option<PathBuf>, error: std::sync::Arc<io::Error> },
    #[error("{got} bytes read where {expected} were expected: the file shrank")]
    Shrank { got: u64, expected: u64 },
}

impl LocalError {
    pub fn io(path: Option<&Path>, error: io::Error) -> Self {
        LocalError::Io { path: path.map(Path::to_path_buf), error: std::sync::Arc::new(error) }
    }
}

/// Equal when they say the same: `io::Error` has no equality of its own.
impl PartialEq for LocalError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (LocalError::Io { path: a, error: x }, LocalError::Io { path: b, error: y }) => a == b && x.kind() == y.kind() && x.to_string() == y.to_string(),
            (LocalError::Shrank { got: a, expected: x }, LocalError::Shrank { got: b, expected: y }) => a == b && x == y,
            _ => false,
        }
    }
}

/// Milliseconds on a monotonic clock whose origin is the clock's own (process start in
/// production, simulation start in tests). Only differences are meaningful.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    pub fn plus(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(d.as_millis() as u64))
    }
}

pub trait Clock: Clone + Send + Sync + 'static {
    /// Monotonic time: what state machines take as `now`.
    fn now(&self) -> Timestamp;
    /// Wall-clock time for humans (file modification times). Never used to order events.
    fn unix_ms(&self) -> u64;
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static;
}

/// Calls to other nodes, by address (`host:port`).
pub trait Transport: Clone + Send + Sync + 'static {
    fn unary<R: Rpc>(&self, to: &str, request: R) -> impl Future<Output = Result<R::Response, RpcError>> + Send;

    /// Streams a chunk to `to` in frames.
    fn write_chunk(
        &self,
        to: &str,
        service: ChunkService,
        upload: ChunkUpload,
    ) -> impl Future<Output = Result<crate::proto::WriteChunkResponse, RpcError>> + Send;

    /// Streams frames to `to` as `frames` yields them (header first): how a primary relays a
    /// chunk to its replicas while it is still arriving. Dropping the future abandons the call,
    /// and the receiver sees its caller go away.
    fn write_chunk_frames(
        &self,
        to: &str,
        service: ChunkService,
        frames: futures::stream::BoxStream<'static, crate::proto::WriteChunkFrame>,
    ) -> impl Future<Output = Result<crate::proto::WriteChunkResponse, RpcError>> + Send;

    /// Receives a chunk from `to` in frames.
    fn read_chunk(&self, to: &str, request: ReadChunkRequest) -> impl Future<Output = Result<ChunkDownload, RpcError>> + Send;
}

/// Files with explicit durability: nothing written is durable until `sync_file` (its bytes)
/// and `sync_dir` (its name in the directory) return. Paths are absolute or relative to the
/// node's own root; the simulated disk gives every node its own.
pub trait Disk: Clone + Send + Sync + 'static {
    /// A single file holding a redb database (the metadata node's Raft log and vote).
    type Store: redb::StorageBackend;

    /// Opens the store file at `path`, creating it (and making its name durable) if absent.
    /// Only one open store per file: a second open, by this process or another, fails. After
    /// a crash, what a store reads back is what its last `sync_data` made durable.
    fn open_store(&self, path: &Path) -> impl Future<Output = io::Result<Self::Store>> + Send;
    /// Creates `dir` and its missing ancestors. A new directory's entry in its parent is, like
    /// a file's name, durable only once `sync_dir(parent)` returns (the real disk fsyncs the
    /// parents it created anyway; drivers must not count on it: see `create_dir_durable`).
    fn create_dir_all(&self, dir: &Path) -> impl Future<Output = io::Result<()>> + Send;
    /// Creates or truncates `path` and writes `data` (not durable until `sync_file`).
    fn write_file(&self, path: &Path, data: Bytes) -> impl Future<Output = io::Result<()>> + Send;
    /// Writes `data` at `offset`, creating the file if needed.
    fn write_at(&self, path: &Path, offset: u64, data: Bytes) -> impl Future<Output = io::Result<()>> + Send;
    fn read_file(&self, path: &Path) -> impl Future<Output = io::Result<Bytes>> + Send;
    /// Reads exactly `len` bytes at `offset` (fewer only at the end of the file).
    fn read_at(&self, path: &Path, offset: u64, len: u64) -> impl Future<Output = io::Result<Bytes>> + Send;
    /// `write_at` of bulk data: a large chunk of a downloaded file, written once and not read
    /// back by us. A disk may bypass its page cache (the real one writes the 4 KiB-aligned
    /// part with `O_DIRECT` when `offset` is aligned, the rest through the cache); the
    /// default is `write_at`. Not durable until `sync_file`, as any write.
    fn write_bulk_at(&self, path: &Path, offset: u64, data: Bytes) -> impl Future<Output = io::Result<()>> + Send {
        self.write_at(path, offset, data)
    }
    /// `read_at` of bulk data: a large chunk's frames, read once per request and not worth
    /// keeping in memory. A disk may bypass its page cache (the real one reads with
    /// `O_DIRECT`, see `DiskStep::WriteBulk`); the default is `read_at`.
    fn read_bulk_at(&self, path: &Path, offset: u64, len: u64) -> impl Future<Output = io::Result<Bytes>> + Send {
        self.read_at(path, offset, len)
    }
    fn file_len(&self, path: &Path) -> impl Future<Output = io::Result<u64>> + Send;
    /// What changes when a regular file's contents change: its length and modification time
    /// (on the simulated disk, a digest of its contents). Compared, never interpreted.
    fn stamp(&self, path: &Path) -> impl Future<Output = io::Result<FileStamp>> + Send;
    fn sync_file(&self, path: &Path) -> impl Future<Output = io::Result<()>> + Send;
    /// Makes creations, renames and removals of entries in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> impl Future<Output = io::Result<()>> + Send;
    /// Makes everything written so far to the filesystem holding `dir` durable: every file's
    /// contents and every directory entry (`syncfs`). One disk flush for many files: the group
    /// commit of small chunks written in a batch.
    fn sync_all(&self, dir: &Path) -> impl Future<Output = io::Result<()>> + Send;
    /// Atomically replaces `to` with `from`.
    fn rename(&self, from: &Path, to: &Path) -> impl Future<Output = io::Result<()>> + Send;
    fn remove_file(&self, path: &Path) -> impl Future<Output = io::Result<()>> + Send;
    /// Entry names (not paths) in `dir`; an absent directory is empty.
    fn list_dir(&self, dir: &Path) -> impl Future<Output = io::Result<Vec<String>>> + Send;
    /// The entries of `dir` with their kinds (a symbolic link is `Symlink`, not followed),
    /// in name order, and what each is where that costs nothing more: walking a local tree
    /// (`put -r`). An absent directory is an error.
    fn read_entries(&self, dir: &Path) -> impl Future<Output = io::Result<Vec<LocalEntry>>> + Send {
        let _ = dir;
        std::future::ready(Err(io::Error::new(io::ErrorKind::Unsupported, "this disk cannot list entries")))
    }
    /// What `path` is, following symbolic links: its kind, size, stamp, attributes and
    /// identity (for `put -r`: what to send, and whether a directory was entered already).
    fn inspect(&self, path: &Path) -> impl Future<Output = io::Result<LocalMeta>> + Send {
        let _ = path;
        std::future::ready(Err(io::Error::new(io::ErrorKind::Unsupported, "this disk cannot inspect files")))
    }
    /// Asks the disk to start writing `len` bytes at `offset` of `path` back now, without
    /// waiting for them and without making them durable: a hint for long sequential writes,
    /// so that the final `sync_file` finds little left to do (the writeback overlaps the
    /// transfer instead of following it). Nothing may count on it; the default does nothing.
    fn start_writeback(&self, path: &Path, offset: u64, len: u64) -> impl Future<Output = io::Result<()>> + Send {
        let _ = (path, offset, len);
        std::future::ready(Ok(()))
    }
    /// (capacity, free) bytes of the volume holding `dir`.
    fn space(&self, dir: &Path) -> impl Future<Output = io::Result<(u64, u64)>> + Send;
    /// Which volume holds `dir`, as this host numbers them (0: unknown). Nodes of one host
    /// with the same number share one disk's capacity.
    fn volume_id(&self, dir: &Path) -> impl Future<Output = io::Result<u64>> + Send {
        let _ = dir;
        std::future::ready(Ok(0))
    }
    /// Runs `steps` in order, stopping at the first error, with exactly the effects of the
    /// primitive calls one by one (the default does that). A disk may run them in one go (the
    /// real one: one blocking call and one open file for a small chunk's five steps, instead of
    /// five hops to the blocking pool), but a crash or a cancellation may still stop it
    /// between any two steps.
    fn run_steps(&self, steps: Vec<DiskStep>) -> impl Future<Output = io::Result<()>> + Send {
        async move {
            for step in steps {
                match step {
                    DiskStep::CreateDir(dir) => self.create_dir_all(&dir).await?,
                    DiskStep::WriteFile { path, data } => self.write_file(&path, data).await?,
                    DiskStep::WriteAt { path, offset, data } => self.write_at(&path, offset, data).await?,
                    DiskStep::WriteBulk { path, head, data } => {
                        let offset = head.len() as u64;
                        self.write_file(&path, head).await?;
                        self.write_at(&path, offset, data).await?
                    }
                    DiskStep::SyncFile(path) => self.sync_file(&path).await?,
                    DiskStep::Rename { from, to } => self.rename(&from, &to).await?,
                    DiskStep::SyncDir(dir) => self.sync_dir(&dir).await?,
                    DiskStep::SyncAll(dir) => self.sync_all(&dir).await?,
                }
            }
            Ok(())
        }
    }
}

/// One step of a sequence `Disk::run_steps` runs (an atomic chunk write), with the meaning of
/// the `Disk` call of the same name.
#[derive(Clone, Debug, PartialEq)]
pub enum DiskStep {
    CreateDir(PathBuf),
    WriteFile {
        path: PathBuf,
        data: Bytes,
    },
    WriteAt {
        path: PathBuf,
        offset: u64,
        data: Bytes,
    },
    /// Creates or truncates `path` and writes `head` then `data`: exactly `WriteFile { head }`
    /// then `WriteAt { offset: head.len(), data }` (the default runs those two), for a large
    /// chunk's file, written once and seldom read soon. A disk may bypass its page cache: the
    /// real one writes with `O_DIRECT`, which saves the copy into the page cache (on the
    /// benchmark's VM that copy was half of a storage node's CPU during a put) and leaves
    /// memory to what is read again. Not durable until `SyncFile`, as any write.
    WriteBulk {
        path: PathBuf,
        head: Bytes,
        data: Bytes,
    },
    SyncFile(PathBuf),
    Rename {
        from: PathBuf,
        to: PathBuf,
    },
    SyncDir(PathBuf),
    SyncAll(PathBuf),
}

/// Tells whether a file changed between two looks at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileStamp {
    pub len: u64,
    pub modified: u64,
}

/// What kind of thing a local path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalKind {
    File,
    Dir,
    /// Only from `read_entries`: `inspect` follows links.
    Symlink,
    /// A device, socket or pipe: nothing a file system stores.
    Other,
}

/// One entry of a local directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalEntry {
    /// As the disk has it: not necessarily UTF-8.
    pub name: std::ffi::OsString,
    pub kind: LocalKind,
    /// What `inspect` would say of it, when the listing could tell at no extra cost (not for
    /// a symbolic link, whose target `inspect` follows): a walk then needs no trip per file.
    pub meta: Option<LocalMeta>,
}

/// What `Disk::inspect` says of a local path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalMeta {
    pub kind: LocalKind,
    pub len: u64,
    /// As `Disk::stamp` would say (meaningful for files).
    pub stamp: FileStamp,
    /// The mode and modification time an upload keeps.
    pub attrs: crate::namespace::FileAttrs,
    /// (device, inode): the same for two paths of one file or directory.
    pub identity: (u64, u64),
}

/// The directory holding `path`'s entry (`.` for a bare relative name).
pub fn parent_dir(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Creates `dir` (and its missing ancestors) so that it survives a power cut: fsyncs the parent
/// of every directory it creates, and the parent of `dir` even if `dir` already existed (a
/// process killed between a mkdir and the fsync of its parent leaves a directory that exists
/// but would not survive power loss). For start-up and rare paths: it lists each missing
/// ancestor's parent. Hot paths remember what they made durable instead (`chunk_store`).
pub async fn create_dir_durable<D: Disk>(disk: &D, dir: &Path) -> io::Result<()> {
    let mut created = Vec::new();
    for ancestor in dir.ancestors() {
        let (Some(parent), Some(name)) = (ancestor.parent(), ancestor.file_name()) else { break };
        if parent.as_os_str().is_empty() {
            created.push(ancestor);
            break;
        }
        if disk.list_dir(parent).await?.iter().any(|n| std::ffi::OsStr::new(n) == name) {
            break;
        }
        created.push(ancestor);
    }
    disk.create_dir_all(dir).await?;
    // Deepest first; the order does not matter: nothing is acknowledged before all are done.
    for new in &created {
        disk.sync_dir(parent_dir(new)).await?;
    }
    if created.first() != Some(&dir) && dir.parent().is_some() {
        disk.sync_dir(parent_dir(dir)).await?;
    }
    Ok(())
}

/// Everything a driver needs, bundled so drivers take one type parameter.
pub trait Env: Clone + Send + Sync + 'static {
    type Clock: Clock;
    type Transport: Transport;
    type Disk: Disk;
    /// openraft's runtime (spawn, timers, RNG for election timeouts).
    type RaftRuntime: openraft::AsyncRuntime;

    fn clock(&self) -> &Self::Clock;
    fn transport(&self) -> &Self::Transport;
    fn disk(&self) -> &Self::Disk;
    /// Random bits: from the OS in production, from the seed in simulation.
    fn random_u64(&self) -> u64;

    /// Key material (chunk keys, the user token key, token ids): the OS's randomness in
    /// production. The simulation derives it without drawing on the seed's stream, so that
    /// making a key never moves a seed's timeline.
    fn random_key(&self) -> [u8; 32];

    /// Runs CPU-heavy work (hashing a chunk) where it does not hold up the caller's task: on a
    /// blocking thread in production, so transfers hash on every core; inline by default (the
    /// simulation, whose time does not pass while code runs).
    fn compute<T, F>(&self, work: F) -> impl Future<Output = T> + Send
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        async move { work() }
    }
}

/// Runs `fut` for at most `limit` on `clock`.
pub async fn with_timeout<C: Clock, F: Future>(clock: &C, limit: Duration, fut: F) -> Result<F::Output, Elapsed> {
    use futures::future::{select, Either};
    let sleep = clock.sleep(limit);
    futures::pin_mut!(fut);
    futures::pin_mut!(sleep);
    match select(fut, sleep).await {
        Either::Left((out, _)) => Ok(out),
        Either::Right(((), _)) => Err(Elapsed(limit)),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("timed out after {0:?}")]
pub struct Elapsed(pub Duration);

/// A call to `to` that gives up after `limit`; giving up is a transport error, like a
/// connection that failed: the call may or may not have taken effect.
pub async fn call_with_timeout<C: Clock, T>(clock: &C, limit: Duration, to: &str, call: impl Future<Output = Result<T, RpcError>>) -> Result<T, RpcError> {
    with_timeout(clock, limit, call).await.unwrap_or_else(|elapsed| Err(RpcError::Transport(format!("{to}: {elapsed}"))))
}

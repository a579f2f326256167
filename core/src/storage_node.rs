//! A storage node: keeps chunks on its disk, serves them verified, forwards new chunks to the
//! other replicas, and heartbeats to the metadata leader, carrying out the deletions that come
//! back on the replies.
//!
//! ## What it promises
//!
//! - **Power loss.** A write is acknowledged only once the chunk file, its name and every
//!   directory on its path are durable (`chunk_store::write_steps`; the data dir, `tmp/`,
//!   `chunks/` and `corrupt/` are made durable at start-up, shard directories on first use).
//!   A chunk acknowledged before a power cut is served after it.
//! - **No chunk stuck in progress.** A write that fails, or whose handler future is dropped
//!   (the caller went away, a timeout, cancellation), leaves no `Writing` entry: a guard aborts
//!   it on drop. Its temporary file is removed at once on failure, after cancellation by the
//!   next write or heartbeat (it cannot be removed from a destructor), and at start-up anyway.
//! - **Full disks.** A write is refused with `NoSpace` before its bytes are received when the
//!   free space is below the chunk's file, the writes in progress and `space_reserve_bytes`; a
//!   write that still meets a full disk ends with `NoSpace` and leaves no file behind. Capacity
//!   and free space in heartbeats are read from the disk each time, so they are right after a
//!   restart.
//! - **Verified, streamed reads.** A read streams the file in frames, never the whole chunk:
//!   each frame is checked (CRC32C, format v2) before it leaves the node and the last one only
//!   after the whole chunk matched its SHA-256. A replica found damaged is quarantined (moved
//!   to `corrupt/`, dropped from the table, so never served again) and reported to metadata.
//! - **Bounded resources.** At most `chunk_streams_max` chunk streams (reads and writes) at a
//!   time; a request beyond that waits up to `chunk_stream_wait`, then gets `Unavailable`. A
//!   write whose sender goes quiet for `frame_timeout` between frames is dropped; forwarding to
//!   a peer may take `frame_timeout` per frame, and never more than `replication_timeout`.
//! - **Metadata hears from the holder.** Every replica stored is reported with a later
//!   heartbeat (`storage_reports`); a primary forwards only to the registered peers the last
//!   heartbeat reply listed.
//! - **Repair.** Copies metadata asks for (repair jobs on heartbeat replies) are pulled from a
//!   source, checked against the recorded SHA-256, stored, and reported, `repair_streams_max`
//!   at a time.
//! - **Scrubbing.** Stored chunks are re-read and verified in the background at
//!   `scrub_rate_bytes_per_sec`, or at once on request; damage found is quarantined and
//!   reported like damage found by a client's read.
//!
//! ## What it does not promise
//!
//! - A reader that stops reading (without closing) holds its stream slot until its connection
//!   dies: the transports' flow control stops the node from reading further, but nothing
//!   times the reader out yet.
//! - Reports not yet sent are in memory: a crash loses them (the uploader's word still
//!   stands, and the inventory pass after the restart reports everything again).
//!
//! ## How it is driven
//!
//! `open` reads the node id (or makes one), removes unfinished temporary files and rebuilds the
//! chunk table from the chunk files' headers. The transports call `ChunkHandler` for each
//! chunk stream; `run_heartbeats` runs for the node's life (heartbeats, repairs and the
//! scrubber, as three loops of one task). Decisions (file format, write
//! steps, space, the table) live in `chunk_store`; this module carries them out.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use futures::StreamExt;

use crate::chunk_store::{self, ChunkFileError, ChunkLayout, ChunkMeta, ChunkStoreError, ChunkTable, FileHeader, FrameReader, WriteDecision};
use crate::env::{call_with_timeout, create_dir_durable, parent_dir, with_timeout, Clock, Disk, Env, Transport};
use crate::fault::{self, Site};
use crate::ids::{ChunkId, Sha256Digest, StorageNodeId};
use crate::limits::CHUNK_FRAME_BYTES;
use crate::meta_client::{MetaClient, RetryPolicy};
use crate::namespace::ReplicaReport;
use crate::proto;
use crate::rpc::{ChunkHandler, ChunkService, ChunkUpload, FrameAssembler, FrameStream, RpcError};
use crate::scrub::{Scrubber, Step};
use crate::storage_reports::{InventoryProgress, Peers, RepairFailure, RepairOrder, Repairs, ReportBatch, Reports, SourceFailure};

mod batch;
mod config;
pub use config::StorageConfig;

const NODE_ID_FILE: &str = "node_id";
/// The cluster this node joined, written when it first registers.
const CLUSTER_ID_FILE: &str = "cluster_id";
/// Replicas found bad and not yet reported; beyond, the oldest reports are dropped (the
/// replicas stay quarantined either way).
const BAD_REPLICAS_UNREPORTED_MAX: usize = 1024;
/// Bad-replica reports sent with one heartbeat.
const BAD_REPLICA_REPORTS_PER_HEARTBEAT_MAX: usize = 64;
/// Temporary files of cancelled writes awaiting removal; beyond, start-up removes them.
const ORPHANED_TMP_MAX: usize = 1024;
/// Shortest time between two heartbeats, however often forwards to unknown peers ask for one.
const HEARTBEAT_GAP_MIN: Duration = Duration::from_millis(200);
/// Shortest time between two warnings that writes are refused for space.
const SPACE_WARNING_INTERVAL: Duration = Duration::from_secs(60);
/// Frames queued for one replica while the primary receives: bounds the primary's memory per
/// stream and holds the sender back to the slowest replica's pace.
const RELAY_FRAMES_MAX: usize = 4;
/// Longest a forward to a peer this node does not know waits for a fresh peer list.
const PEER_REFRESH_WAIT_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum StorageOpenError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a storage node id ({content:?})")]
    BadNodeId { path: PathBuf, content: String },
    #[error("no metadata addresses given")]
    NoMetadata,
}

/// A replica this node found damaged, to report to metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadReplica {
    pub chunk: ChunkId,
    pub reason: String,
}

/// Slots for concurrent chunk streams: a pool of tokens in a bounded channel, so waiting is
/// fair (first come, first served) and cancellable, with no runtime of its own.
struct StreamSlots {
    give: async_channel::Sender<()>,
    take: async_channel::Receiver<()>,
    max: usize,
}

/// A held slot; dropping it (the stream ended, or its future was dropped) gives it back.
struct StreamSlot(async_channel::Sender<()>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        // Never full: there are as many tokens as places in the channel.
        let _ = self.0.try_send(());
    }
}

impl StreamSlots {
    fn new(max: usize) -> Self {
        let max = max.max(1);
        let (give, take) = async_channel::bounded(max);
        for _ in 0..max {
            give.try_send(()).expect("a place for every slot");
        }
        StreamSlots { give, take, max }
    }

    async fn acquire<C: Clock>(&self, clock: &C, wait: Duration) -> Result<StreamSlot, RpcError> {
        match with_timeout(clock, wait, self.take.recv()).await {
            Ok(Ok(())) => Ok(StreamSlot(self.give.clone())),
            Ok(Err(_)) => Err(RpcError::Internal("stream slots closed".into())),
            Err(_) => Err(RpcError::Unavailable(format!("busy: {} chunk streams in progress, none ended within {wait:?}", self.max))),
        }
    }
}

/// What a damaged replica needs done, from a request or from a stream that outlives it.
#[derive(Clone)]
struct Quarantine<E: Env> {
    env: E,
    node: StorageNodeId,
    layout: ChunkLayout,
    table: Arc<Mutex<ChunkTable>>,
    bad: Arc<Mutex<VecDeque<BadReplica>>>,
}

impl<E: Env> Quarantine<E> {
    /// Stops serving `id` at once, moves its file to `corrupt/` (durably, so it does not come
    /// back after a restart) and queues a report for metadata.
    async fn run(&self, id: ChunkId, reason: String) {
        if !self.table.lock().expect("table lock").remove(id) {
            return; // Already quarantined, or deleted, by someone else.
        }
        tracing::error!(node = %self.node, chunk = %id, %reason, "stored replica is corrupt; quarantined, never served again");
        self.move_aside(id, reason).await;
    }

    /// Moves `id`'s file (not in the table) to `corrupt/` and queues a report for metadata.
    async fn move_aside(&self, id: ChunkId, reason: String) {
        let disk = self.env.disk();
        let from = self.layout.chunk_path(id);
        let to = self.layout.corrupt_path(id, self.env.random_u64());
        let moved = async {
            disk.rename(&from, &to).await?;
            disk.sync_dir(&self.layout.corrupt_dir()).await?;
            disk.sync_dir(parent_dir(&from)).await
        };
        if let Err(e) = moved.await {
            tracing::warn!(chunk = %id, error = %e, "cannot move the corrupt replica aside; it stays out of the table");
        }
        let mut bad = self.bad.lock().expect("bad replicas lock");
        if bad.len() >= BAD_REPLICAS_UNREPORTED_MAX {
            bad.pop_front();
        }
        bad.push_back(BadReplica { chunk: id, reason });
    }
}

pub struct StorageNode<E: Env> {
    env: E,
    id: StorageNodeId,
    config: StorageConfig,
    layout: ChunkLayout,
    table: Arc<Mutex<ChunkTable>>,
    meta: MetaClient<E>,
    /// Deleted on request, not yet reported to metadata.
    /// Stored and deleted replicas not yet reported to metadata.
    reports: Mutex<Reports>,
    /// The cluster's registered storage nodes, from the last heartbeat reply.
    peers: Mutex<Peers>,
    /// Fires whenever `peers` is refreshed.
    peers_updated: event_listener::Event,
    /// Wakes the heartbeat loop early (capacity 1: wake-ups coalesce).
    heartbeat_now: (async_channel::Sender<()>, async_channel::Receiver<()>),
    /// Repair jobs from heartbeat replies.
    repairs: Mutex<Repairs>,
    /// Wakes the repair loop (capacity 1: wake-ups coalesce).
    repairs_wake: (async_channel::Sender<()>, async_channel::Receiver<()>),
    scrubber: Mutex<Scrubber>,
    /// Wakes the scrub loop (a pass was requested).
    scrub_wake: (async_channel::Sender<()>, async_channel::Receiver<()>),
    /// Found corrupt, not yet reported to metadata.
    bad_unreported: Arc<Mutex<VecDeque<BadReplica>>>,
    /// When this node last warned that it refuses writes for space (at most one warning per
    /// `SPACE_WARNING_INTERVAL`: a full disk refuses every write).
    space_warned: Mutex<Option<crate::env::Timestamp>>,
    /// Temporary files of writes that were dropped mid-way, to remove.
    orphaned_tmp: Mutex<Vec<Abandoned>>,
    /// A sweep of `orphaned_tmp` is running.
    sweeping: std::sync::atomic::AtomicBool,
    /// The cluster this node belongs to, once it has registered with one.
    cluster_id: Mutex<Option<String>>,
    client_slots: StreamSlots,
    replication_slots: StreamSlots,
    /// Counters for the operator's metrics (nothing here decides anything by them).
    counters: NodeCounters,
    /// A planned stop is under way: every heartbeat says so (`say_stopping`).
    stopping: std::sync::atomic::AtomicBool,
    /// A heartbeat saying so has been answered.
    stopping_heard: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct NodeCounters {
    scrub_damaged: std::sync::atomic::AtomicU64,
    repairs_done: std::sync::atomic::AtomicU64,
    repairs_failed: std::sync::atomic::AtomicU64,
}

/// A storage node as its operator sees it (`StorageNode::view`).
#[derive(Clone, Debug, Default)]
pub struct StorageView {
    pub chunks: u64,
    pub stored_bytes: u64,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    pub reserve_bytes: u64,
    pub writes_in_progress: u64,
    pub scrub: crate::scrub::ScrubStats,
    /// Replicas the scrub found damaged (and quarantined).
    pub scrub_damaged: u64,
    pub repairs_running: u64,
    pub repairs_done: u64,
    pub repairs_failed: u64,
    /// Registered with a metadata leader (has a cluster id).
    pub registered: bool,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StorageOpenError + '_ {
    move |source| StorageOpenError::Io { path: path.to_path_buf(), source }
}

/// A write in progress: aborts it in the table on drop unless finished, so that a failed or
/// cancelled write never leaves a chunk stuck in `Writing`.
struct WriteGuard<'a> {
    table: &'a Mutex<ChunkTable>,
    orphans: &'a Mutex<Vec<Abandoned>>,
    id: ChunkId,
    tmp: PathBuf,
    /// Where the chunk file goes: a write cancelled after its rename leaves it there.
    chunk: PathBuf,
    finished: bool,
}

/// A write that ended without success (failed, or cancelled mid-way when its caller went
/// away). Its claim on the chunk id stays in the table (other writes of the chunk are refused
/// as in progress) until `sweep_orphaned_tmp` has removed its temporary file and, if the write
/// got as far as its rename, its chunk file: nobody was told that copy exists, so it must not
/// stay behind unlisted, and a new write must not start before it is gone (the removal would
/// take the new copy with it).
/// How long a stopping node waits for the leader to hear that it stops.
pub const STOPPING_NOTICE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a stopping node still takes new calls once the leader knows: chunks the leader
/// placed here just before it heard are still on their way (a replica forwarded by a peer
/// moments later), and refusing them would leave those chunks short, to be repaired (found in
/// simulation: self_healing's rolling restart, seed 1).
pub const STOPPING_DRAIN: Duration = Duration::from_secs(2);

/// Runs `f` when dropped (also when the future holding it is cancelled).
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

#[derive(Debug)]
struct Abandoned {
    id: ChunkId,
    tmp: PathBuf,
    chunk: PathBuf,
}

impl WriteGuard<'_> {
    fn finish(mut self) {
        self.table.lock().expect("table lock").finish_write(self.id);
        self.finished = true;
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // A destructor cannot wait for the disk: the files are removed by the next sweep,
        // which then releases the claim. With the list full, the claim goes now and a chunk
        // file left by a rename stays unlisted until the next start-up scan.
        let mut orphans = self.orphans.lock().expect("orphans lock");
        if orphans.len() < ORPHANED_TMP_MAX {
            orphans.push(Abandoned { id: self.id, tmp: std::mem::take(&mut self.tmp), chunk: std::mem::take(&mut self.chunk) });
        } else {
            self.table.lock().expect("table lock").abort_write(self.id);
        }
    }
}

/// What reading a chunk file's header found.
enum HeaderError {
    Io(std::io::Error),
    Damaged(ChunkFileError),
}

async fn read_header<D: Disk>(disk: &D, path: &Path) -> Result<FileHeader, HeaderError> {
    let first = disk.read_at(path, 0, chunk_store::HEADER_BYTES as u64).await.map_err(HeaderError::Io)?;
    let len = chunk_store::header_len(&first).map_err(HeaderError::Damaged)?;
    let whole = if len > first.len() { disk.read_at(path, 0, len as u64).await.map_err(HeaderError::Io)? } else { first };
    chunk_store::decode_header(&whole).map_err(HeaderError::Damaged)
}

fn write_error(node: StorageNodeId, id: ChunkId, e: std::io::Error) -> RpcError {
    if e.kind() == std::io::ErrorKind::StorageFull {
        RpcError::NoSpace(format!("node {node}: disk full while writing chunk {id}: {e}"))
    } else {
        RpcError::Internal(format!("node {node}: writing chunk {id}: {e}"))
    }
}

impl<E: Env> StorageNode<E> {
    pub async fn open(env: E, config: StorageConfig) -> Result<Arc<Self>, StorageOpenError> {
        if config.meta_addrs.is_empty() {
            return Err(StorageOpenError::NoMetadata);
        }
        let disk = env.disk().clone();
        let root = config.data_dir.clone();
        create_dir_durable(&disk, &root).await.map_err(io_error(&root))?;
        let id = Self::load_or_create_id(&env, &root).await?;
        let cluster_path = root.join(CLUSTER_ID_FILE);
        let cluster_id = match disk.read_file(&cluster_path).await {
            Ok(bytes) => Some(String::from_utf8_lossy(&bytes).trim().to_string()).filter(|c| !c.is_empty()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(StorageOpenError::Io { path: cluster_path, source: e }),
        };
        let layout = ChunkLayout::new(&root);
        for dir in [layout.tmp_dir(), layout.chunks_dir(), layout.corrupt_dir()] {
            create_dir_durable(&disk, &dir).await.map_err(io_error(&dir))?;
        }

        let tmp = layout.tmp_dir();
        for name in disk.list_dir(&tmp).await.map_err(io_error(&tmp))? {
            let path = tmp.join(&name);
            disk.remove_file(&path).await.map_err(io_error(&path))?;
        }
        let (table, damaged) = Self::scan_chunks(&disk, &layout).await?;
        tracing::info!(node = %id, chunks = table.stored_count(), dir = %root.display(), "storage node opened");

        let policy = RetryPolicy { deadline: Duration::from_secs(10), ..RetryPolicy::default() };
        let meta = MetaClient::new(env.clone(), config.meta_addrs.clone(), policy);
        let (client_slots, replication_slots) = (StreamSlots::new(config.chunk_streams_max), StreamSlots::new(config.chunk_streams_max));
        let repair_streams_max = config.repair_streams_max;
        // The first paced pass starts a while after start-up, not in the middle of it.
        let (scrub_rate, scrub_start) = (config.scrub_rate_bytes_per_sec, env.clock().now().plus(config.heartbeat_interval * 10));
        let node = Arc::new(StorageNode {
            env,
            id,
            config,
            layout,
            table: Arc::new(Mutex::new(table)),
            meta,
            reports: Mutex::default(),
            peers: Mutex::default(),
            peers_updated: event_listener::Event::new(),
            heartbeat_now: async_channel::bounded(1),
            repairs: Mutex::new(Repairs::new(repair_streams_max)),
            repairs_wake: async_channel::bounded(1),
            scrubber: Mutex::new(Scrubber::new(scrub_rate, scrub_start)),
            scrub_wake: async_channel::bounded(1),
            bad_unreported: Arc::default(),
            space_warned: Mutex::default(),
            orphaned_tmp: Mutex::default(),
            counters: NodeCounters::default(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            stopping_heard: std::sync::atomic::AtomicBool::new(false),
            sweeping: Default::default(),
            cluster_id: Mutex::new(cluster_id),
            client_slots,
            replication_slots,
        });
        // Damaged chunk files found by the scan (a flipped header, a torn length): moved
        // aside and reported bad, like a replica a scrub finds damaged.
        let quarantine = node.quarantine();
        for (chunk, reason) in damaged {
            tracing::error!(node = %node.id, %chunk, %reason, "stored replica is corrupt; quarantined, never served again");
            quarantine.move_aside(chunk, reason).await;
        }
        Ok(node)
    }

    async fn load_or_create_id(env: &E, root: &Path) -> Result<StorageNodeId, StorageOpenError> {
        let disk = env.disk();
        let path = root.join(NODE_ID_FILE);
        match disk.read_file(&path).await {
            Ok(bytes) => {
                let content = String::from_utf8_lossy(&bytes).trim().to_string();
                u64::from_str_radix(&content, 16).ok().filter(|id| *id != 0).map(StorageNodeId).ok_or(StorageOpenError::BadNodeId { path, content })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = StorageNodeId(env.random_u64().max(1));
                let tmp = root.join(format!("{NODE_ID_FILE}.tmp"));
                disk.write_file(&tmp, format!("{id}\n").into()).await.map_err(io_error(&tmp))?;
                disk.sync_file(&tmp).await.map_err(io_error(&tmp))?;
                disk.rename(&tmp, &path).await.map_err(io_error(&path))?;
                disk.sync_dir(root).await.map_err(io_error(root))?;
                Ok(id)
            }
            Err(e) => Err(StorageOpenError::Io { path, source: e }),
        }
    }

    /// Rebuilds the table from chunk file headers. A file whose header is unreadable or whose
    /// length disagrees with it is not served, and returned with why: `open` moves it to
    /// `corrupt/` (never deleted: it may be all that is left of a chunk; but not left among
    /// the chunks either, where no report or inventory would ever name it).
    async fn scan_chunks(disk: &E::Disk, layout: &ChunkLayout) -> Result<(ChunkTable, Vec<(ChunkId, String)>), StorageOpenError> {
        let mut table = ChunkTable::default();
        let mut damaged = Vec::new();
        let chunks = layout.chunks_dir();
        for a in disk.list_dir(&chunks).await.map_err(io_error(&chunks))? {
            if !ChunkLayout::is_shard_name(&a) {
                continue;
            }
            let dir_a = chunks.join(&a);
            for b in disk.list_dir(&dir_a).await.map_err(io_error(&dir_a))? {
                if !ChunkLayout::is_shard_name(&b) {
                    continue;
                }
                let dir_b = dir_a.join(&b);
                for name in disk.list_dir(&dir_b).await.map_err(io_error(&dir_b))? {
                    let Some(id) = ChunkLayout::parse_chunk_file_name(&name) else { continue };
                    let path = dir_b.join(&name);
                    let len = disk.file_len(&path).await.map_err(io_error(&path))?;
                    match read_header(disk, &path).await {
                        Ok(header) if len == header.file_len() => table.insert_stored(id, header.meta),
                        Ok(header) => {
                            tracing::warn!(path = %path.display(), len, expected = header.file_len(), "chunk file has the wrong length; not served");
                            damaged.push((id, format!("found at start-up with {len} bytes instead of {}", header.file_len())));
                        }
                        Err(HeaderError::Damaged(e)) => {
                            tracing::warn!(path = %path.display(), error = %e, "unreadable chunk file; not served");
                            damaged.push((id, format!("found at start-up: {e}")));
                        }
                        Err(HeaderError::Io(e)) => return Err(StorageOpenError::Io { path, source: e }),
                    }
                }
            }
        }
        Ok((table, damaged))
    }

    pub fn id(&self) -> StorageNodeId {
        self.id
    }

    pub fn chunk_count(&self) -> u64 {
        self.table.lock().expect("table lock").stored_count()
    }

    /// What the operator's metrics show: counts, space (one `statvfs`), scrub and repairs.
    pub async fn view(&self) -> StorageView {
        use std::sync::atomic::Ordering::Relaxed;
        let (capacity_bytes, free_bytes) = self.space().await.unwrap_or((0, 0));
        let (chunks, stored_bytes, writes_in_progress) = {
            let table = self.table.lock().expect("table lock");
            (table.stored_count(), table.stored_bytes(), table.writing().0 as u64)
        };
        StorageView {
            chunks,
            stored_bytes,
            capacity_bytes,
            free_bytes,
            reserve_bytes: self.config.space_reserve_bytes,
            writes_in_progress,
            scrub: self.scrubber.lock().expect("scrubber lock").stats(),
            scrub_damaged: self.counters.scrub_damaged.load(Relaxed),
            repairs_running: self.repairs.lock().expect("repairs lock").in_flight().len() as u64,
            repairs_done: self.counters.repairs_done.load(Relaxed),
            repairs_failed: self.counters.repairs_failed.load(Relaxed),
            registered: self.cluster_id.lock().expect("cluster lock").is_some(),
        }
    }

    /// Chunks with a write in progress (a test hook: none may stay after their request ends).
    pub fn writes_in_progress(&self) -> usize {
        self.table.lock().expect("table lock").writing().0
    }

    /// Replicas found corrupt and not yet reported to metadata.
    pub fn bad_replicas_unreported(&self) -> Vec<BadReplica> {
        self.bad_unreported.lock().expect("bad replicas lock").iter().cloned().collect()
    }

    fn self_proto(&self) -> proto::StorageNode {
        proto::StorageNode { id: self.id.0, addr: self.config.advertise_addr.clone() }
    }

    fn quarantine(&self) -> Quarantine<E> {
        Quarantine { env: self.env.clone(), node: self.id, layout: self.layout.clone(), table: self.table.clone(), bad: self.bad_unreported.clone() }
    }

    /// Before a planned stop: tells the metadata leader this node is going, so that it places
    /// no new chunk here while the node is away (its replicas still count, so a restart within
    /// the dead timeout starts no repair). Bounded: a leader that does not answer in
    /// `STOPPING_NOTICE_TIMEOUT` is not waited for (silence then says the same, later).
    pub async fn say_stopping(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        // From now on every heartbeat says so (with its reports, as any heartbeat), until the
        // process ends: the leader keeps the node out of placement while it drains.
        self.stopping.store(true, SeqCst);
        let _ = self.heartbeat_now.0.try_send(());
        let clock = self.env.clock();
        let deadline = clock.now().plus(STOPPING_NOTICE_TIMEOUT);
        while !self.stopping_heard.load(SeqCst) {
            if clock.now() >= deadline {
                tracing::warn!(node = %self.id, "the metadata leader did not hear in time that this node is stopping");
                return;
            }
            clock.sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(node = %self.id, "told the metadata leader this node is stopping");
    }

    /// Heartbeats forever; registers first and again whenever the leader asks. A forward to a
    /// peer the last reply did not list brings the next heartbeat forward (to learn of nodes
    /// registered since), but never sooner than `HEARTBEAT_GAP_MIN` after the last.
    pub async fn run_heartbeats(self: Arc<Self>) {
        futures::join!(self.heartbeat_loop(), self.repair_loop(), self.scrub_loop());
    }

    async fn heartbeat_loop(&self) {
        let mut registered = false;
        let mut next_inventory = self.env.clock().now().plus(self.config.inventory_interval);
        loop {
            let now = self.env.clock().now();
            if now >= next_inventory {
                self.reports.lock().expect("reports lock").start_inventory(self.env.random_u64() | 1);
                next_inventory = now.plus(self.config.inventory_interval);
            }
            // This heartbeat carries whatever asked for it; a wake-up from now on (say a
            // repair finishing during the call or the gap) brings the next one forward.
            let _ = self.heartbeat_now.1.try_recv();
            if let Err(e) = self.heartbeat_once(&mut registered).await {
                tracing::warn!(node = %self.id, error = %e, "heartbeat failed");
            }
            let clock = self.env.clock();
            let gap = HEARTBEAT_GAP_MIN.min(self.config.heartbeat_interval);
            clock.sleep(gap).await;
            let rest = self.config.heartbeat_interval - gap;
            let _ = with_timeout(clock, rest, self.heartbeat_now.1.recv()).await;
        }
    }

    async fn heartbeat_once(&self, registered: &mut bool) -> Result<(), RpcError> {
        fault::inject(self.env.clock(), Site::StorageHeartbeat).await.map_err(|i| RpcError::Transport(format!("node {}: {i}", self.id)))?;
        self.sweep_orphaned_tmp().await;
        let (capacity_bytes, _) = self.space().await?;
        let cluster_id = self.cluster_id.lock().expect("cluster lock").clone().unwrap_or_default();
        if !*registered {
            let request = proto::RegisterStorageRequest {
                node: Some(self.self_proto()),
                capacity_bytes,
                cluster_id: cluster_id.clone(),
                rack: self.config.rack.clone().unwrap_or_default(),
            };
            let reply = self.meta.call(request).await.inspect_err(|e| {
                if matches!(e, RpcError::FailedPrecondition(_)) {
                    tracing::error!(node = %self.id, error = %e, "the metadata cluster refuses this node");
                }
            })?;
            if cluster_id.is_empty() && !reply.cluster_id.is_empty() {
                self.remember_cluster(&reply.cluster_id).await?;
            }
            *registered = true;
            // A (new) leader learns what this node holds: everything, in the next heartbeats.
            self.reports.lock().expect("reports lock").start_inventory(self.env.random_u64() | 1);
        }
        self.report_bad_replicas().await;
        let batch = {
            let table = self.table.lock().expect("table lock");
            self.reports.lock().expect("reports lock").batch_with_inventory(|after| {
                let id = table.next_stored_after(after)?;
                let meta = table.stored(id).ok()?;
                Some(ReplicaReport { chunk: id, size: meta.size, sha256: meta.sha256 })
            })
        };
        let request = self.heartbeat_request_carrying(&batch).await?;
        let said_stopping = request.stopping;
        let repairs_failed = self.repairs.lock().expect("repairs lock").failures();
        let reply = self.meta.call(request).await?;
        if said_stopping {
            self.stopping_heard.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        self.reports.lock().expect("reports lock").acknowledge(&batch);
        {
            let mut repairs = self.repairs.lock().expect("repairs lock");
            repairs.acknowledge_failures(&repairs_failed);
            repairs.offer(reply.repair_jobs.iter().filter_map(|j| {
                Some(RepairOrder {
                    chunk: ChunkId::from_slice(&j.chunk_id)?,
                    size: j.size,
                    sha256: Sha256Digest::from_slice(&j.sha256)?,
                    sources: j.sources.iter().map(|s| (StorageNodeId(s.id), s.addr.clone())).collect(),
                })
            }));
        }
        if !reply.repair_jobs.is_empty() {
            let _ = self.repairs_wake.0.try_send(());
        }
        if reply.inventory_wanted {
            let mut reports = self.reports.lock().expect("reports lock");
            if !reports.inventory_running() {
                reports.start_inventory(self.env.random_u64() | 1);
            }
        }
        if reply.scrub_now && self.scrubber.lock().expect("scrubber lock").request(self.env.clock().now(), reply.scrub_request) {
            tracing::info!(node = %self.id, "scrub pass requested");
            let _ = self.scrub_wake.0.try_send(());
        }
        if reply.register {
            *registered = false;
        } else {
            self.peers.lock().expect("peers lock").update(reply.peers.into_iter().map(|p| (StorageNodeId(p.id), p.addr)));
            self.peers_updated.notify(usize::MAX);
        }
        for raw in reply.delete_chunks {
            let Some(id) = ChunkId::from_slice(&raw) else { continue };
            match self.delete_chunk(id).await {
                Ok(()) => self.reports.lock().expect("reports lock").deleted(id),
                Err(e) => tracing::warn!(chunk = %id, error = %e, "delete failed; will retry when asked again"),
            }
        }
        Ok(())
    }

    /// What the next heartbeat says: space read from the disk now (so it is right after a
    /// restart, whatever happened before), the chunks in the table, deletions to report.
    pub async fn heartbeat_request(&self) -> Result<proto::HeartbeatRequest, RpcError> {
        let batch = self.reports.lock().expect("reports lock").batch();
        self.heartbeat_request_carrying(&batch).await
    }

    async fn heartbeat_request_carrying(&self, batch: &ReportBatch) -> Result<proto::HeartbeatRequest, RpcError> {
        let (capacity_bytes, free_bytes) = self.space().await?;
        let volume_id = self.env.disk().volume_id(&self.config.data_dir).await.unwrap_or(0);
        let stored_bytes = self.table.lock().expect("table lock").stored_bytes();
        Ok(proto::HeartbeatRequest {
            node: Some(self.self_proto()),
            capacity_bytes,
            free_bytes,
            chunk_count: self.chunk_count(),
            stored_bytes,
            reserve_bytes: self.config.space_reserve_bytes,
            volume_id,
            scrub_request_seen: self.scrubber.lock().expect("scrubber lock").request_seen(),
            stopping: self.stopping.load(std::sync::atomic::Ordering::SeqCst),
            deleted_chunks: batch.deleted.iter().map(|c| Bytes::copy_from_slice(c.as_bytes())).collect(),
            cluster_id: self.cluster_id.lock().expect("cluster lock").clone().unwrap_or_default(),
            stored_chunks: batch
                .stored
                .iter()
                .map(|r| proto::ReplicaReport {
                    chunk_id: Bytes::copy_from_slice(r.chunk.as_bytes()),
                    size: r.size,
                    sha256: Bytes::copy_from_slice(&r.sha256.0),
                })
                .collect(),
            inventory_pass: batch.inventory_pass.map(|(p, _)| p).unwrap_or(0),
            inventory_from: batch.inventory_pass.and_then(|(_, from)| from).map(|c| Bytes::copy_from_slice(c.as_bytes())).unwrap_or_default(),
            inventory_through: match batch.inventory {
                InventoryProgress::Through(Some(c)) => Bytes::copy_from_slice(c.as_bytes()),
                _ => Bytes::new(),
            },
            inventory_done: batch.inventory == InventoryProgress::Done,
            repairs_running: {
                let repairs = self.repairs.lock().expect("repairs lock");
                repairs.in_flight().iter().map(|c| Bytes::copy_from_slice(c.as_bytes())).collect()
            },
            repairs_failed: self
                .repairs
                .lock()
                .expect("repairs lock")
                .failures()
                .into_iter()
                .map(|(c, error)| proto::RepairFailure { chunk_id: Bytes::copy_from_slice(c.as_bytes()), error })
                .collect(),
        })
    }

    /// Verifies stored chunks in the background, paced (`scrub::Scrubber`). A damaged replica
    /// is quarantined and reported by the read path it goes through.
    async fn scrub_loop(&self) {
        loop {
            let now = self.env.clock().now();
            let step = {
                let table = self.table.lock().expect("table lock");
                self.scrubber.lock().expect("scrubber lock").next(now, |after| table.next_stored_after(after))
            };
            match step {
                Step::Verify(id) => {
                    let bytes = self.verify_stored(id).await;
                    self.scrubber.lock().expect("scrubber lock").verified(self.env.clock().now(), bytes);
                }
                Step::WaitUntil(at) => {
                    let _ = with_timeout(self.env.clock(), at.saturating_since(now), self.scrub_wake.1.recv()).await;
                }
            }
        }
    }

    /// Reads a stored chunk through the verified read path; returns the bytes read.
    async fn verify_stored(&self, id: ChunkId) -> u64 {
        let request = proto::ReadChunkRequest { chunk_id: Bytes::copy_from_slice(id.as_bytes()), ..Default::default() };
        let mut frames = match self.read_chunk(request).await {
            Ok(frames) => frames,
            Err(RpcError::NotFound(_)) => return 0, // deleted meanwhile
            Err(e) => {
                tracing::warn!(node = %self.id, chunk = %id, error = %e, "scrub: cannot read");
                return 0;
            }
        };
        let mut bytes = 0;
        while let Some(frame) = frames.next().await {
            match frame {
                Ok(f) => bytes += f.data.len() as u64,
                // Damage: the read path quarantined it and will report it.
                Err(e @ RpcError::ChecksumMismatch(_)) => {
                    tracing::error!(node = %self.id, chunk = %id, error = %e, "scrub: damaged replica quarantined");
                    self.counters.scrub_damaged.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    break;
                }
                // Deleted while it was being verified (garbage collection races the scrub):
                // nothing to say.
                Err(_) if self.table.lock().expect("table lock").stored(id).is_err() => break,
                Err(e) => {
                    tracing::warn!(node = %self.id, chunk = %id, error = %e, "scrub: cannot read");
                    break;
                }
            }
        }
        bytes
    }

    /// Runs repair jobs as heartbeat replies bring them, `repair_streams_max` streams at a
    /// time (a stream: one large chunk, or a batch of small ones).
    async fn repair_loop(&self) {
        use futures::future::{select, Either};
        use futures::stream::FuturesUnordered;
        let mut running = FuturesUnordered::new();
        loop {
            while let Some(work) = self.repairs.lock().expect("repairs lock").start() {
                running.push(self.repair_work(work));
            }
            if running.is_empty() {
                let _ = self.repairs_wake.1.recv().await;
                continue;
            }
            let woken = Box::pin(self.repairs_wake.1.recv());
            if let Either::Left((Some(results), _)) = select(running.next(), woken).await {
                let failed = results.iter().filter(|(_, r)| r.is_err()).count();
                self.counters.repairs_failed.fetch_add(failed as u64, std::sync::atomic::Ordering::Relaxed);
                self.counters.repairs_done.fetch_add((results.len() - failed) as u64, std::sync::atomic::Ordering::Relaxed);
                if let Some((chunk, Err(e))) = results.iter().find(|(_, r)| r.is_err()) {
                    tracing::warn!(node = %self.id, %chunk, error = %e, failed, of = results.len(), "repair failed");
                }
                self.repairs.lock().expect("repairs lock").finish(results);
                // Report these copies now, not a heartbeat interval later: the reply frees
                // their slots at metadata and brings the next jobs (heartbeats stay at least
                // `HEARTBEAT_GAP_MIN` apart, however fast copies finish).
                let _ = self.heartbeat_now.0.try_send(());
            }
        }
    }

    /// One stream's work: a large chunk alone, or small chunks read from their first source
    /// in one call and stored in one group commit; a chunk that source does not serve whole
    /// is then tried alone on its other sources.
    async fn repair_work(&self, work: Vec<RepairOrder>) -> Vec<(ChunkId, Result<(), RepairFailure>)> {
        if work.len() == 1 && work[0].size > crate::limits::SMALL_CHUNK_BYTES_MAX as u64 {
            let order = work.into_iter().next().expect("one order");
            return vec![self.repair(order).await];
        }
        let mut results = Vec::with_capacity(work.len());
        let mut wanted = Vec::with_capacity(work.len());
        {
            let table = self.table.lock().expect("table lock");
            for order in work {
                let meta = ChunkMeta { size: order.size, sha256: order.sha256 };
                if table.stored(order.chunk).is_ok_and(|m| m == meta) {
                    self.reports.lock().expect("reports lock").stored(ReplicaReport { chunk: order.chunk, size: meta.size, sha256: meta.sha256 });
                    results.push((order.chunk, Ok(())));
                } else {
                    wanted.push(order);
                }
            }
        }
        let Some((source, addr)) = wanted.first().and_then(|o| o.sources.iter().find(|(id, _)| *id != self.id).cloned()) else {
            results.extend(wanted.into_iter().map(|o| (o.chunk, Err(RepairFailure::NoSource))));
            return results;
        };
        let request = proto::ReadChunksRequest {
            chunks: wanted.iter().map(|o| proto::ReadChunkRequest { chunk_id: Bytes::copy_from_slice(o.chunk.as_bytes()), ..Default::default() }).collect(),
        };
        let read = call_with_timeout(self.env.clock(), self.config.replication_timeout, &addr, self.env.transport().unary(&addr, request)).await;
        let replies: Vec<Option<Bytes>> = match read {
            Ok(reply) if reply.results.len() == wanted.len() => {
                use proto::chunk_read_result::Result as R;
                reply
                    .results
                    .into_iter()
                    .map(|r| match r.result {
                        Some(R::Ok(read)) => Some(read.data),
                        _ => None,
                    })
                    .collect()
            }
            _ => vec![None; wanted.len()],
        };
        // What the source served, checked against what metadata recorded; the rest, and
        // whatever does not match, tried alone on the other sources.
        let checks: Vec<(RepairOrder, Option<Bytes>)> = wanted.into_iter().zip(replies).collect();
        let digests = {
            let datas: Vec<Option<Bytes>> = checks.iter().map(|(_, d)| d.clone()).collect();
            self.env.compute(move || datas.iter().map(|d| d.as_ref().map(|d| Sha256Digest::of(d))).collect::<Vec<_>>()).await
        };
        let mut items = Vec::new();
        let mut stored_orders = Vec::new();
        let mut alone = Vec::new();
        for ((order, data), digest) in checks.into_iter().zip(digests) {
            match (data, digest) {
                (Some(data), Some(d)) if data.len() as u64 == order.size && d == order.sha256 => {
                    items.push((order.chunk, ChunkMeta { size: order.size, sha256: order.sha256 }, data));
                    stored_orders.push(order);
                }
                _ => alone.push(RepairOrder { sources: order.sources.iter().filter(|(id, _)| *id != source).cloned().collect(), ..order }),
            }
        }
        let total: u64 = items.iter().map(|(_, m, _)| m.size).sum();
        let stored = match self.check_room(total).await {
            Ok(()) => self.store_batch(&items).await,
            Err(e) => vec![Err(e); items.len()],
        };
        for (order, outcome) in stored_orders.into_iter().zip(stored) {
            match outcome {
                Ok(()) => {
                    self.reports.lock().expect("reports lock").stored(ReplicaReport { chunk: order.chunk, size: order.size, sha256: order.sha256 });
                    results.push((order.chunk, Ok(())));
                }
                Err(e) => results.push((order.chunk, Err(RepairFailure::Store(e)))),
            }
        }
        if !items.is_empty() {
            tracing::debug!(node = %self.id, %source, chunks = items.len(), "repaired: small replicas copied in a batch");
        }
        for order in alone {
            results.push(self.repair(order).await);
        }
        results
    }

    /// Makes a copy of a chunk here, pulled from the first source that serves it whole and
    /// matching the SHA-256 metadata recorded. The new replica is reported like any other.
    async fn repair(&self, order: RepairOrder) -> (ChunkId, Result<(), RepairFailure>) {
        let meta = ChunkMeta { size: order.size, sha256: order.sha256 };
        if self.table.lock().expect("table lock").stored(order.chunk).is_ok_and(|m| m == meta) {
            self.reports.lock().expect("reports lock").stored(ReplicaReport { chunk: order.chunk, size: meta.size, sha256: meta.sha256 });
            return (order.chunk, Ok(()));
        }
        let mut errors = Vec::new();
        for (source, addr) in order.sources.iter().filter(|(id, _)| *id != self.id) {
            let request = proto::ReadChunkRequest { chunk_id: Bytes::copy_from_slice(order.chunk.as_bytes()), ..Default::default() };
            let read = call_with_timeout(self.env.clock(), self.config.replication_timeout, addr, self.env.transport().read_chunk(addr, request)).await;
            let data = match read {
                Ok(download) => download.data,
                Err(e) => {
                    errors.push((*source, SourceFailure::Read(e)));
                    continue;
                }
            };
            let check = data.clone();
            let digest = self.env.compute(move || Sha256Digest::of(&check)).await;
            if data.len() as u64 != order.size || digest != order.sha256 {
                // The source's own checks passed, so its bytes are not what metadata recorded.
                errors.push((*source, SourceFailure::Mismatch(data.len() as u64)));
                continue;
            }
            if let Err(e) = self.check_room(order.size).await {
                return (order.chunk, Err(RepairFailure::Store(e)));
            }
            return match self.store_local(order.chunk, meta, &data).await {
                Ok(()) => {
                    self.reports.lock().expect("reports lock").stored(ReplicaReport { chunk: order.chunk, size: meta.size, sha256: meta.sha256 });
                    tracing::info!(node = %self.id, chunk = %order.chunk, %source, "repaired: replica copied");
                    (order.chunk, Ok(()))
                }
                Err(e) => (order.chunk, Err(RepairFailure::Store(e))),
            };
        }
        (order.chunk, Err(if errors.is_empty() { RepairFailure::NoSource } else { RepairFailure::Sources(errors) }))
    }

    async fn space(&self) -> Result<(u64, u64), RpcError> {
        self.env.disk().space(&self.config.data_dir).await.map_err(|e| RpcError::Internal(format!("disk space: {e}")))
    }

    /// Writes the cluster id durably (tmp, fsync, rename, fsync dir) before using it.
    async fn remember_cluster(&self, cluster_id: &str) -> Result<(), RpcError> {
        let disk = self.env.disk();
        let root = &self.config.data_dir;
        let (tmp, path) = (root.join(format!("{CLUSTER_ID_FILE}.tmp")), root.join(CLUSTER_ID_FILE));
        let written = async {
            disk.write_file(&tmp, format!("{cluster_id}\n").into()).await?;
            disk.sync_file(&tmp).await?;
            disk.rename(&tmp, &path).await?;
            disk.sync_dir(root).await
        };
        written.await.map_err(|e| RpcError::Internal(format!("{}: {e}", path.display())))?;
        tracing::info!(node = %self.id, cluster = cluster_id, "joined the cluster");
        *self.cluster_id.lock().expect("cluster lock") = Some(cluster_id.to_string());
        Ok(())
    }

    async fn delete_chunk(&self, id: ChunkId) -> std::io::Result<()> {
        let path = self.layout.chunk_path(id);
        self.table.lock().expect("table lock").remove(id);
        match self.env.disk().remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        self.env.disk().sync_dir(path.parent().expect("chunk paths have a parent")).await?;
        tracing::debug!(chunk = %id, "deleted replica");
        Ok(())
    }

    /// Tells metadata about replicas found corrupt, so that it stops handing them out. A report
    /// that fails stays queued for the next heartbeat.
    async fn report_bad_replicas(&self) {
        for _ in 0..BAD_REPLICA_REPORTS_PER_HEARTBEAT_MAX {
            let Some(bad) = self.bad_unreported.lock().expect("bad replicas lock").front().cloned() else { return };
            let request =
                proto::ReportBadReplicaRequest { chunk_id: Bytes::copy_from_slice(bad.chunk.as_bytes()), node_id: self.id.0, reason: bad.reason.clone() };
            match self.meta.call(request).await {
                Ok(_) => {
                    let mut queue = self.bad_unreported.lock().expect("bad replicas lock");
                    if queue.front() == Some(&bad) {
                        queue.pop_front();
                    }
                }
                Err(e) => {
                    tracing::warn!(chunk = %bad.chunk, error = %e, "cannot report a bad replica yet");
                    return;
                }
            }
        }
    }

    /// Removes the temporary files of writes that were dropped mid-way.
    pub async fn sweep_orphaned_tmp(&self) {
        // One sweeper at a time: a second one could release a claim the first already
        // released and a new write then took (and remove that write's file).
        if self.sweeping.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        let _sweeping = scopeguard(|| self.sweeping.store(false, std::sync::atomic::Ordering::Release));
        loop {
            let next = self.orphaned_tmp.lock().expect("orphans lock").first().map(|a| (a.id, a.tmp.clone(), a.chunk.clone()));
            let Some((id, tmp, chunk)) = next else { break };
            for (path, what) in [(&tmp, "temporary file"), (&chunk, "chunk file")] {
                match self.env.disk().remove_file(path).await {
                    Ok(()) => tracing::debug!(chunk = %id, path = %path.display(), "removed the {what} of an abandoned write"),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!(chunk = %id, path = %path.display(), error = %e, "cannot remove the {what} of an abandoned write; start-up will"),
                }
            }
            // Only the sweeper takes entries out, so the first is still this one. Released only
            // now: a sweep cancelled above leaves it (and its claim) to the next sweep.
            self.orphaned_tmp.lock().expect("orphans lock").remove(0);
            self.table.lock().expect("table lock").abort_write(id);
        }
    }

    /// What `id` was stored as, if it is stored here (readable).
    fn stored_meta(&self, id: ChunkId) -> Result<ChunkMeta, RpcError> {
        self.table.lock().expect("table lock").stored(id).map_err(|_| self.not_stored(id))
    }

    fn not_stored(&self, id: ChunkId) -> RpcError {
        RpcError::NotFound(format!("chunk {id} is not stored on node {}", self.id))
    }

    /// Refuses a chunk of `size` bytes early if the disk cannot take it.
    async fn check_room(&self, size: u64) -> Result<(), RpcError> {
        let (_, free_bytes) = self.space().await?;
        let (_, in_progress) = self.table.lock().expect("table lock").writing();
        chunk_store::check_space(chunk_store::file_bytes(size), in_progress, free_bytes, self.config.space_reserve_bytes).map_err(|e| self.refused_for_space(e))
    }

    /// A write refused because the disk cannot take it: said in the node's log (an operator
    /// must hear of a full disk from the node that has it, not only from failing clients),
    /// at most once per `SPACE_WARNING_INTERVAL`.
    pub(crate) fn refused_for_space(&self, e: ChunkStoreError) -> RpcError {
        let now = self.env.clock().now();
        let mut warned = self.space_warned.lock().expect("space lock");
        if warned.is_none_or(|at| now.saturating_since(at) >= SPACE_WARNING_INTERVAL) {
            *warned = Some(now);
            tracing::warn!(node = %self.id, reserve_bytes = self.config.space_reserve_bytes, error = %e, "refusing writes: no room on the disk above the reserve (--space-reserve-bytes)");
        }
        RpcError::NoSpace(format!("node {}: {e}", self.id))
    }

    /// Makes a verified chunk durable here.
    async fn store_local(&self, id: ChunkId, meta: ChunkMeta, data: &Bytes) -> Result<(), RpcError> {
        self.sweep_orphaned_tmp().await;
        let (_, free_bytes) = self.space().await?;
        let nonce = self.env.random_u64();
        let steps = {
            let mut table = self.table.lock().expect("table lock");
            let decision = table.begin_write(id, meta).map_err(|e| match e {
                ChunkStoreError::WriteInProgress(_) => RpcError::Unavailable(e.to_string()),
                _ => RpcError::FailedPrecondition(e.to_string()),
            })?;
            if decision == WriteDecision::AlreadyStored {
                return Ok(());
            }
            // The writes in progress include this one.
            let (_, in_progress) = table.writing();
            if let Err(e) = chunk_store::check_space(0, in_progress, free_bytes, self.config.space_reserve_bytes) {
                table.abort_write(id);
                drop(table);
                return Err(self.refused_for_space(e));
            }
            chunk_store::write_steps(&self.layout, &table, id, nonce, meta, data.clone())
        };
        let guard = WriteGuard {
            table: &self.table,
            orphans: &self.orphaned_tmp,
            id,
            tmp: self.layout.tmp_path(id, nonce),
            chunk: self.layout.chunk_path(id),
            finished: false,
        };
        let written = match fault::inject(self.env.clock(), Site::StorageStore).await {
            Ok(()) => self.env.disk().run_steps(steps).await,
            Err(injected) => Err(std::io::Error::other(injected.to_string())),
        };
        match written {
            Ok(()) => {
                guard.finish();
                Ok(())
            }
            Err(e) => {
                drop(guard);
                self.sweep_orphaned_tmp().await;
                Err(write_error(self.id, id, e))
            }
        }
    }

    /// The next frame of an incoming chunk, within `frame_timeout` of the one before; `None`
    /// after the last.
    async fn next_frame(&self, frames: &mut FrameStream<proto::WriteChunkFrame>) -> Result<Option<proto::WriteChunkFrame>, RpcError> {
        let limit = self.config.frame_timeout;
        with_timeout(self.env.clock(), limit, frames.next())
            .await
            .map_err(|_| RpcError::Unavailable(format!("node {}: no frame from the sender for {limit:?}; write dropped", self.id)))?
            .transpose()
    }

    /// Receives the rest of a chunk after its `first` frame, passing each frame on to `relays`
    /// (the replicas' streams) as it arrives. A relay whose call has ended is skipped.
    async fn receive_relaying(
        &self,
        first: proto::WriteChunkFrame,
        frames: &mut FrameStream<proto::WriteChunkFrame>,
        mut relays: Vec<futures::channel::mpsc::Sender<proto::WriteChunkFrame>>,
    ) -> Result<ChunkUpload, RpcError> {
        use futures::SinkExt;
        let mut assembler = FrameAssembler::<proto::WriteChunkHeader>::new();
        let mut next = Some(first);
        while let Some(frame) = next {
            // Replicas get the header without targets: the fan-out is this node's alone.
            let relayed =
                proto::WriteChunkFrame { header: frame.header.clone().map(|h| proto::WriteChunkHeader { forward_to: vec![], ..h }), data: frame.data.clone() };
            assembler.push(frame.header, frame.data)?;
            for relay in relays.iter_mut() {
                let _ = relay.send(relayed.clone()).await;
            }
            next = self.next_frame(frames).await?;
        }
        // Ends the replicas' streams: each checks the whole chunk against its header itself.
        drop(relays);
        let (header, data) = assembler.finish()?;
        Ok(ChunkUpload { header, data })
    }

    /// The requested forward targets this node sends to (registered peers only; see
    /// `Peers::forward_targets`), and failures for the others. An unknown peer wakes the
    /// heartbeat loop, so that a node registered since the last reply is known soon.
    async fn forward_targets(&self, requested: &[proto::StorageNode]) -> Result<(Vec<proto::StorageNode>, Vec<proto::ReplicaFailure>), RpcError> {
        let requested: Vec<(StorageNodeId, String)> = requested.iter().map(|p| (StorageNodeId(p.id), p.addr.clone())).collect();
        let check = || self.peers.lock().expect("peers lock").forward_targets(self.id, &requested).map_err(|e| RpcError::InvalidArgument(e.to_string()));
        let (mut allowed, mut refused) = check()?;
        if !refused.is_empty() {
            // Perhaps registered since the last heartbeat reply: ask now, and wait (briefly)
            // for the fresh list before refusing (a refusal makes the client avoid that node).
            let updated = self.peers_updated.listen();
            let _ = self.heartbeat_now.0.try_send(());
            let wait = self.config.heartbeat_interval.min(PEER_REFRESH_WAIT_MAX).saturating_add(HEARTBEAT_GAP_MIN);
            let _ = with_timeout(self.env.clock(), wait, updated).await;
            (allowed, refused) = check()?;
        }
        let to_proto = |(id, addr): (StorageNodeId, String)| proto::StorageNode { id: id.0, addr };
        let failures = refused
            .into_iter()
            .map(|r| proto::ReplicaFailure {
                node: Some(to_proto((r.node, r.addr))),
                error: format!("node {}: refused as a forward target: {}", self.id, r.reason),
            })
            .collect();
        Ok((allowed.into_iter().map(to_proto).collect(), failures))
    }

    /// Streams the frames `relay` yields to `peer` as a replica; the peer's id if it stored the
    /// chunk, or why not.
    async fn forward_frames(
        &self,
        peer: proto::StorageNode,
        relay: futures::channel::mpsc::Receiver<proto::WriteChunkFrame>,
        limit: Duration,
    ) -> Result<u64, proto::ReplicaFailure> {
        if let Err(injected) = fault::inject(self.env.clock(), Site::StorageForward).await {
            return Err(proto::ReplicaFailure { node: Some(peer), error: injected.to_string() });
        }
        let send = self.env.transport().write_chunk_frames(&peer.addr, ChunkService::Replication, relay.boxed());
        match call_with_timeout(self.env.clock(), limit, &peer.addr, send).await {
            Ok(reply) if reply.stored_on.contains(&peer.id) => Ok(peer.id),
            Ok(_) => Err(proto::ReplicaFailure { node: Some(peer), error: "peer did not confirm the write".into() }),
            Err(e) => Err(proto::ReplicaFailure { node: Some(peer), error: e.to_string() }),
        }
    }
}

/// Checks that a received chunk is what its header says.
fn verify_upload(upload: &ChunkUpload) -> Result<(ChunkId, ChunkMeta), RpcError> {
    let h = &upload.header;
    let id = ChunkId::from_slice(&h.chunk_id).ok_or_else(|| RpcError::InvalidArgument("chunk id must be 16 bytes".into()))?;
    let sha256 = Sha256Digest::from_slice(&h.sha256).ok_or_else(|| RpcError::InvalidArgument("sha256 must be 32 bytes".into()))?;
    if upload.data.len() as u64 != h.size {
        return Err(RpcError::InvalidArgument(format!("chunk {id}: {} bytes received, {} announced", upload.data.len(), h.size)));
    }
    if Sha256Digest::of(&upload.data) != sha256 {
        return Err(RpcError::ChecksumMismatch(format!("chunk {id} arrived damaged")));
    }
    Ok((id, ChunkMeta { size: h.size, sha256 }))
}

/// A read in progress: the file, the checks, and the slot it holds until it ends.
struct ReadState<E: Env> {
    id: ChunkId,
    disk: E::Disk,
    path: PathBuf,
    reader: FrameReader,
    header: Option<proto::ReadChunkHeader>,
    quarantine: Quarantine<E>,
    /// A large chunk's frames are read as bulk data (`bulk_buf::is_bulk`), as it was written.
    bulk: bool,
    ended: bool,
    _slot: StreamSlot,
}

impl<E: Env> ReadState<E> {
    /// The next verified frame, the error that ends the stream, or `None` after the last.
    async fn next(&mut self) -> Option<Result<proto::ReadChunkFrame, RpcError>> {
        if self.ended {
            return None;
        }
        let (offset, len) = self.reader.next_read()?;
        let read = if self.bulk { self.disk.read_bulk_at(&self.path, offset, len).await } else { self.disk.read_at(&self.path, offset, len).await };
        let result = match read {
            Err(e) => Err(RpcError::Internal(format!("node {}: reading chunk {}: {e}", self.quarantine.node, self.id))),
            Ok(data) => match self.reader.accept(&data) {
                Ok(()) => return Some(Ok(proto::ReadChunkFrame { header: self.header.take(), data })),
                Err(e) => {
                    self.quarantine.run(self.id, e.to_string()).await;
                    Err(RpcError::ChecksumMismatch(format!("chunk {} on node {}: {e}", self.id, self.quarantine.node)))
                }
            },
        };
        self.ended = true;
        Some(result)
    }
}

impl<E: Env> ChunkHandler for StorageNode<E> {
    async fn write_chunk(&self, service: ChunkService, mut frames: FrameStream<proto::WriteChunkFrame>) -> Result<proto::WriteChunkResponse, RpcError> {
        let slots = match service {
            ChunkService::Storage => &self.client_slots,
            ChunkService::Replication => &self.replication_slots,
        };
        let _slot = slots.acquire(self.env.clock(), self.config.chunk_stream_wait).await?;
        let first = self.next_frame(&mut frames).await?.ok_or_else(|| RpcError::InvalidArgument("a chunk stream with no frame".into()))?;
        let header = first.header.clone().ok_or_else(|| RpcError::InvalidArgument("the first frame of a chunk carries no header".into()))?;
        self.check_room(header.size).await?;
        let (peers, refused) = match service {
            ChunkService::Storage => self.forward_targets(&header.forward_to).await?,
            // A replica never forwards: the fan-out is the primary's alone.
            ChunkService::Replication => (vec![], vec![]),
        };
        // Pipelined fan-out: each frame goes on to every replica as it arrives, so replicas
        // receive (and hash) while this node still does. A peer that keeps up at one frame per
        // `frame_timeout` finishes; a stalled one is given up on well before
        // `replication_timeout` for a small chunk.
        let frame_count = header.size.div_ceil(CHUNK_FRAME_BYTES as u64).max(1);
        let limit = self.config.frame_timeout.saturating_mul(u32::try_from(frame_count).unwrap_or(u32::MAX)).min(self.config.replication_timeout);
        let mut relays = Vec::new();
        let mut sends = Vec::new();
        for peer in peers.into_iter().filter(|p| p.id != self.id.0) {
            let (tx, rx) = futures::channel::mpsc::channel(RELAY_FRAMES_MAX);
            relays.push(tx);
            sends.push(self.forward_frames(peer, rx, limit));
        }
        let receiving = self.receive_relaying(first, &mut frames, relays);
        let sending = join_all(sends);
        futures::pin_mut!(receiving, sending);
        // A chunk that fails on its way in (or its check) returns at once: dropping the
        // replicas' calls cancels them, and they store nothing.
        let (upload, replicas) = match futures::future::select(receiving, sending).await {
            futures::future::Either::Left((received, sending)) => (received?, futures::future::Either::Left(sending)),
            futures::future::Either::Right((done, receiving)) => (receiving.await?, futures::future::Either::Right(done)),
        };
        let (id, meta) = verify_upload(&upload)?;
        let replicas = async {
            match replicas {
                futures::future::Either::Left(sending) => sending.await,
                futures::future::Either::Right(done) => done,
            }
        };
        // The local write overlaps the replicas' last frames and their writes.
        let (stored, results) = futures::join!(self.store_local(id, meta, &upload.data), replicas);
        let mut replicated = Vec::new();
        let mut failures = refused;
        for result in results {
            match result {
                Ok(id) => replicated.push(id),
                Err(f) => failures.push(f),
            }
        }
        let mut stored_on = Vec::new();
        match stored {
            Ok(()) => {
                self.reports.lock().expect("reports lock").stored(ReplicaReport { chunk: id, size: meta.size, sha256: meta.sha256 });
                stored_on.push(self.id.0)
            }
            // Nothing stored anywhere: the primary's own error says most.
            Err(e) if replicated.is_empty() => return Err(e),
            Err(e) => failures.push(proto::ReplicaFailure { node: Some(self.self_proto()), error: e.to_string() }),
        }
        stored_on.extend(replicated);
        tracing::debug!(chunk = %id, ?service, stored = stored_on.len(), failed = failures.len(), "chunk written");
        Ok(proto::WriteChunkResponse { stored_on, failures })
    }

    async fn read_chunk(&self, request: proto::ReadChunkRequest) -> Result<FrameStream<proto::ReadChunkFrame>, RpcError> {
        let id = ChunkId::from_slice(&request.chunk_id).ok_or_else(|| RpcError::InvalidArgument("chunk id must be 16 bytes".into()))?;
        let slot = self.client_slots.acquire(self.env.clock(), self.config.chunk_stream_wait).await?;
        fault::inject(self.env.clock(), Site::StorageRead).await.map_err(|i| RpcError::Unavailable(format!("node {}: {i}", self.id)))?;
        let expected = self.stored_meta(id)?;
        let path = self.layout.chunk_path(id);
        let damaged = match read_header(self.env.disk(), &path).await {
            Ok(header) if header.meta == expected => {
                let mut reply_header = proto::ReadChunkHeader { size: expected.size, sha256: expected.sha256.0.to_vec().into(), ..Default::default() };
                let reader = match request.range_offset {
                    // A ranged read: the frames holding the range, and their checks for the reader.
                    Some(offset) => {
                        let (reader, range) = FrameReader::serving_range(header, offset, request.range_length.unwrap_or(u64::MAX));
                        reply_header.range_bytes = Some(range.bytes);
                        reply_header.range_start = range.start;
                        reply_header.frame_bytes = range.frame_bytes;
                        reply_header.frame_crc32c = range.crcs;
                        reader
                    }
                    None => FrameReader::serving(header),
                };
                let state = ReadState {
                    id,
                    disk: self.env.disk().clone(),
                    path,
                    reader,
                    header: Some(reply_header),
                    quarantine: self.quarantine(),
                    bulk: crate::bulk_buf::is_bulk(expected.size),
                    ended: false,
                    _slot: slot,
                };
                return Ok(futures::stream::unfold(state, |mut s| async move { s.next().await.map(|item| (item, s)) }).boxed());
            }
            Ok(_) => "the file's header no longer matches what was stored".to_string(),
            Err(HeaderError::Damaged(e)) => e.to_string(),
            Err(HeaderError::Io(e)) => return Err(RpcError::Internal(format!("node {}: reading chunk {id}: {e}", self.id))),
        };
        self.quarantine().run(id, damaged.clone()).await;
        Err(RpcError::ChecksumMismatch(format!("chunk {id} on node {}: {damaged}", self.id)))
    }
}

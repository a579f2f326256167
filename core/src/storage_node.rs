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
//! chunk table from the chunk files' headers (`open.rs`). The transports call `ChunkHandler`
//! for each chunk stream (`service.rs`, answering through `fan_out::outcome`);
//! `run_heartbeats` runs for the node's life (`upkeep.rs`: heartbeats, repairs and the
//! scrubber, as three loops of one task). The decisions are pure machines this module only
//! carries out: the heartbeat protocol (`heartbeat`), what is reported and which repairs run
//! (`storage_reports`), scrub pacing (`scrub`), and the file format, write steps, space and
//! the table (`chunk_store`).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use futures::StreamExt;

use crate::chunk_store::{self, ChunkFileError, ChunkLayout, ChunkMeta, ChunkStoreError, ChunkTable, FileHeader, FrameReader, WriteDecision};
use crate::chunk_tokens::{ChunkKeys, ChunkOp, ChunkTokenError};
use crate::env::{call_with_timeout, create_dir_durable, parent_dir, with_timeout, Clock, Disk, Env, Transport};
use crate::fault::{self, Site};
use crate::ids::{ChunkId, Sha256Digest, StorageNodeId};
use crate::limits::CHUNK_FRAME_BYTES;
use crate::meta_client::{MetaClient, RetryPolicy};
use crate::namespace::ReplicaReport;
use crate::proto;
use crate::rpc::{ChunkHandler, ChunkService, ChunkUpload, FrameAssembler, FrameStream, RpcError};
use crate::scrub::{Scrubber, Step};
use crate::storage_reports::{InventoryProgress, Peers, RepairFailure, RepairOrder, Repairs, ReportBatch, Reports};
use heartbeat::{Beat, HeartbeatConfig, Heartbeats};

mod batch;
mod config;
mod fan_out;
pub mod heartbeat;
mod open;
mod service;
mod upkeep;
pub use config::StorageConfig;
use service::StreamSlots;

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
    /// When to register and heartbeat, and what replies ask (see `heartbeat`).
    heartbeats: Mutex<Heartbeats>,
    /// The keys chunk access tokens are checked with, as the leader last sent them.
    chunk_keys: Mutex<ChunkKeys>,
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
        let heartbeat_config =
            HeartbeatConfig { interval: config.heartbeat_interval, gap_min: HEARTBEAT_GAP_MIN, inventory_interval: config.inventory_interval };
        let opened = env.clock().now();
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
            // Made afresh when the heartbeats start (`heartbeat_loop`).
            heartbeats: Mutex::new(Heartbeats::new(heartbeat_config, opened)),
            sweeping: Default::default(),
            cluster_id: Mutex::new(cluster_id),
            chunk_keys: Mutex::new(ChunkKeys::default()),
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
        // From now on every heartbeat says so (with its reports, as any heartbeat), until the
        // process ends: the leader keeps the node out of placement while it drains.
        let clock = self.env.clock();
        self.heartbeats.lock().expect("heartbeats lock").say_stopping(clock.now());
        let _ = self.heartbeat_now.0.try_send(());
        let deadline = clock.now().plus(STOPPING_NOTICE_TIMEOUT);
        while !self.heartbeats.lock().expect("heartbeats lock").stopping_heard() {
            if clock.now() >= deadline {
                tracing::warn!(node = %self.id, "the metadata leader did not hear in time that this node is stopping");
                return;
            }
            clock.sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(node = %self.id, "told the metadata leader this node is stopping");
    }

    /// Brings the next heartbeat forward (see `Heartbeats::wake`).
    fn wake_heartbeat(&self) {
        self.heartbeats.lock().expect("heartbeats lock").wake(self.env.clock().now());
        let _ = self.heartbeat_now.0.try_send(());
    }

    /// Heartbeats forever; registers first and again whenever the leader asks. A forward to a
    /// peer the last reply did not list brings the next heartbeat forward (to learn of nodes
    /// registered since), but never sooner than `HEARTBEAT_GAP_MIN` after the last.
    pub async fn run_heartbeats(self: Arc<Self>) {
        futures::join!(self.heartbeat_loop(), self.repair_loop(), self.scrub_loop());
    }

    async fn space(&self) -> Result<(u64, u64), RpcError> {
        self.env.disk().space(&self.config.data_dir).await.map_err(|e| RpcError::Internal(format!("disk space: {e}")))
    }
}

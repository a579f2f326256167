//! What a storage node owes metadata, and whom it may forward to: a pure bookkeeping machine
//! the storage node's heartbeat loop drives.
//!
//! ## What it promises
//! - Every replica the node stores (verified against its SHA-256) is reported once a heartbeat
//!   carrying it is answered: metadata learns where chunks are from the nodes that hold them,
//!   not only from the uploader's word. A report that fails stays queued for the next one.
//! - Deletions done on metadata's request are reported the same way, so it stops asking.
//! - An inventory pass (on registering, and every so often) reports every stored chunk once,
//!   in id order, in whatever room heartbeats have after fresh reports: metadata re-admits
//!   valid replicas it forgot, and has stale and orphaned ones deleted.
//! - Bounded: `STORED_UNREPORTED_MAX` stored and `DELETED_UNREPORTED_MAX` deleted replicas wait
//!   at most; beyond, the oldest stored reports are dropped (counted in `dropped_stored`: a full
//!   inventory is what recovers them) and further deletions are not remembered (metadata asks
//!   again; deleting twice is harmless). A heartbeat carries at most `REPORTS_PER_HEARTBEAT_MAX`
//!   of each.
//! - A primary forwards a chunk only to registered storage nodes of its cluster, as the last
//!   heartbeat reply listed them, at the address listed, never to itself, each at most once,
//!   and to fewer peers than the highest replication factor (`forward_targets`).
//!
//! - Repair jobs from heartbeat replies run at most `running_max` at a time, at most
//!   `REPAIRS_QUEUED_MAX` wait, and every one that fails is reported (`Repairs`).
//!
//! ## How it is driven
//! The storage node calls `stored` after each durable, verified write and `deleted` after each
//! requested deletion; before a heartbeat, `batch()` says what the heartbeat carries; when the
//! reply comes, `acknowledge(&batch)` forgets exactly that and `Peers::update` takes the
//! reply's peer list. Nothing here does I/O or reads a clock.

use std::collections::{BTreeMap, HashSet, VecDeque};

use crate::ids::{ChunkId, Sha256Digest, StorageNodeId};
use crate::namespace::{ReplicaReport, REPLICATION_MAX};

/// Stored replicas waiting to be reported.
pub const STORED_UNREPORTED_MAX: usize = 65_536;
/// Deletions waiting to be reported.
pub const DELETED_UNREPORTED_MAX: usize = 65_536;
/// Stored (and, separately, deleted) replicas one heartbeat carries. Equal to what one
/// `ReportReplicas` command may hold.
pub const REPORTS_PER_HEARTBEAT_MAX: usize = crate::namespace::REPLICA_REPORTS_MAX;

/// What one heartbeat reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReportBatch {
    /// Replicas stored since the last report, then the next part of an inventory pass.
    pub stored: Vec<ReplicaReport>,
    pub deleted: Vec<ChunkId>,
    /// Where the inventory pass stands once this batch is acknowledged.
    pub inventory: InventoryProgress,
    /// The pass this batch belongs to and where it started (`None`: the pass's start), so
    /// that metadata can tell whether it saw a pass whole.
    pub inventory_pass: Option<(u64, Option<ChunkId>)>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InventoryProgress {
    /// No pass is running.
    #[default]
    Idle,
    /// The pass goes on after this chunk (`None`: from the first; the batch was full of
    /// fresh reports).
    Through(Option<ChunkId>),
    /// This batch ends the pass.
    Done,
}

#[derive(Debug, Default)]
pub struct Reports {
    stored: VecDeque<ReplicaReport>,
    deleted: VecDeque<ChunkId>,
    dropped_stored: u64,
    /// An inventory pass in progress: its id and cursor (the last chunk id acknowledged,
    /// `None` before the first). Every stored chunk is reported once per pass, in id order, in
    /// the room heartbeats have left after fresh reports.
    inventory: Option<(u64, Option<ChunkId>)>,
    inventories_completed: u64,
}

impl Reports {
    /// A replica was stored (durable and verified).
    pub fn stored(&mut self, report: ReplicaReport) {
        if self.stored.len() >= STORED_UNREPORTED_MAX {
            self.stored.pop_front();
            self.dropped_stored += 1;
        }
        self.stored.push_back(report);
    }

    /// A replica was deleted on metadata's request.
    pub fn deleted(&mut self, chunk: ChunkId) {
        // Beyond the bound, metadata simply asks again and the delete is a no-op.
        if self.deleted.len() < DELETED_UNREPORTED_MAX {
            self.deleted.push_back(chunk);
        }
    }

    /// Starts a pass reporting every stored chunk (on registering, and now and then), so that
    /// metadata re-admits valid replicas it no longer lists and has stale or orphaned ones
    /// deleted. A pass already running starts over.
    pub fn start_inventory(&mut self, pass: u64) {
        self.inventory = Some((pass, None));
    }

    pub fn inventory_running(&self) -> bool {
        self.inventory.is_some()
    }

    pub fn inventories_completed(&self) -> u64 {
        self.inventories_completed
    }

    /// What the next heartbeat carries: the oldest of each, up to the per-heartbeat bound.
    pub fn batch(&self) -> ReportBatch {
        self.batch_with_inventory(|_| None)
    }

    /// `batch`, filled up with the inventory pass's next chunks: `next_after(c)` is the first
    /// stored chunk after `c` (after nothing: the first) with its size and digest.
    pub fn batch_with_inventory(&self, next_after: impl Fn(Option<ChunkId>) -> Option<ReplicaReport>) -> ReportBatch {
        let mut stored: Vec<ReplicaReport> = self.stored.iter().take(REPORTS_PER_HEARTBEAT_MAX).cloned().collect();
        let mut inventory = InventoryProgress::Idle;
        let mut inventory_pass = None;
        if let Some((pass, start)) = self.inventory {
            inventory_pass = Some((pass, start));
            let mut cursor = start;
            inventory = loop {
                if stored.len() >= REPORTS_PER_HEARTBEAT_MAX {
                    break InventoryProgress::Through(cursor);
                }
                match next_after(cursor) {
                    Some(r) => {
                        cursor = Some(r.chunk);
                        stored.push(r);
                    }
                    // Done only with every fresh report in this batch too: a pass that ends
                    // says "this is all I hold".
                    None if self.stored.len() <= REPORTS_PER_HEARTBEAT_MAX => break InventoryProgress::Done,
                    None => break InventoryProgress::Through(cursor),
                }
            };
        }
        ReportBatch { stored, deleted: self.deleted.iter().take(REPORTS_PER_HEARTBEAT_MAX).copied().collect(), inventory, inventory_pass }
    }

    /// Metadata answered the heartbeat that carried `batch`: forget what it carried (and only
    /// that: reports queued meanwhile stay).
    pub fn acknowledge(&mut self, batch: &ReportBatch) {
        let stored: HashSet<(ChunkId, u64, crate::ids::Sha256Digest)> = batch.stored.iter().map(|r| (r.chunk, r.size, r.sha256)).collect();
        let mut left = stored.len();
        // Reports leave in order; stop scanning once every acknowledged one is gone.
        self.stored.retain(|r| {
            if left > 0 && stored.contains(&(r.chunk, r.size, r.sha256)) {
                left -= 1;
                false
            } else {
                true
            }
        });
        let deleted: HashSet<ChunkId> = batch.deleted.iter().copied().collect();
        self.deleted.retain(|c| !deleted.contains(c));
        if self.inventory.is_some() {
            match batch.inventory {
                InventoryProgress::Through(through) => {
                    if let Some((pass, _)) = self.inventory {
                        self.inventory = Some((pass, through));
                    }
                }
                InventoryProgress::Done => {
                    self.inventory = None;
                    self.inventories_completed += 1;
                }
                InventoryProgress::Idle => {}
            }
        }
    }

    pub fn stored_unreported(&self) -> usize {
        self.stored.len()
    }

    pub fn deleted_unreported(&self) -> usize {
        self.deleted.len()
    }

    /// Stored reports dropped because the queue was full.
    pub fn dropped_stored(&self) -> u64 {
        self.dropped_stored
    }
}

/// Repair jobs waiting to start on this node; beyond, a job is refused (reported failed, so
/// metadata plans it again later).
/// Repair jobs queued on a node: the planner hands a node up to twice its streams' worth, a
/// stream being up to 64 small chunks (`repair::SLOTS_PER_STREAM`), and a node runs at most 64
/// streams.
pub const REPAIRS_QUEUED_MAX: usize = 8192;
/// Failed repairs waiting to be reported.
pub const REPAIR_FAILURES_UNREPORTED_MAX: usize = 1024;
/// Longest error text reported for a failed repair.
const REPAIR_ERROR_MAX_CHARS: usize = 256;

/// Why a repair copy was not made: the sources' fault (unreachable, or serving other bytes
/// than metadata recorded) or this node's (no room, a disk error). Travels to metadata as
/// text, in the next heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RepairFailure {
    #[error("no source to copy from")]
    NoSource,
    /// Every source failed, each in its way (in the order tried).
    #[error("{}", .0.iter().map(|(node, e)| format!("{node}: {e}")).collect::<Vec<_>>().join("; "))]
    Sources(Vec<(StorageNodeId, SourceFailure)>),
    /// Storing the copy here failed.
    #[error("{0}")]
    Store(crate::rpc::RpcError),
}

/// How one source failed a repair copy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SourceFailure {
    #[error("{0}")]
    Read(crate::rpc::RpcError),
    /// Its own checks passed, so the bytes it holds are not what metadata recorded.
    #[error("served {0} bytes that do not match the recorded SHA-256")]
    Mismatch(u64),
}

/// One repair copy being made: which source to read next, and whether what a source served
/// may be stored. Sources are tried in the order metadata listed them (it puts the
/// best first), never this node itself, each at most once; a source that fails or serves
/// other bytes than metadata recorded is passed over for the next. Small chunks are first
/// read in a batch from one source (`take_source`), those it did not serve then go on alone.
#[derive(Debug)]
pub struct RepairAttempt {
    order: RepairOrder,
    me: StorageNodeId,
    tried: Vec<StorageNodeId>,
    failures: Vec<(StorageNodeId, SourceFailure)>,
}

/// Whether a source's bytes may be stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// They are what metadata recorded: store them.
    Store,
    /// They are not: try the next source.
    TryNext,
}

impl RepairAttempt {
    pub fn new(order: RepairOrder, me: StorageNodeId) -> Self {
        RepairAttempt { order, me, tried: Vec::new(), failures: Vec::new() }
    }

    pub fn order(&self) -> &RepairOrder {
        &self.order
    }

    /// The next source to read from, if any is left.
    pub fn next_source(&mut self) -> Option<(StorageNodeId, String)> {
        let next = self.order.sources.iter().find(|(id, _)| *id != self.me && !self.tried.contains(id)).cloned();
        if let Some((id, _)) = &next {
            self.tried.push(*id);
        }
        next
    }

    /// Whether `source` (chosen for a batch of several chunks) is one to read this chunk
    /// from; if so it counts as tried.
    pub fn take_source(&mut self, source: StorageNodeId) -> bool {
        let listed = source != self.me && !self.tried.contains(&source) && self.order.sources.iter().any(|(id, _)| *id == source);
        if listed {
            self.tried.push(source);
        }
        listed
    }

    /// The read from `source` failed.
    pub fn read_failed(&mut self, source: StorageNodeId, e: crate::rpc::RpcError) {
        self.failures.push((source, SourceFailure::Read(e)));
    }

    /// `source` served `len` bytes hashing to `sha256`.
    pub fn served(&mut self, source: StorageNodeId, len: u64, sha256: Sha256Digest) -> Served {
        if len == self.order.size && sha256 == self.order.sha256 {
            return Served::Store;
        }
        // The source's own checks passed, so its bytes are not what metadata recorded.
        self.failures.push((source, SourceFailure::Mismatch(len)));
        Served::TryNext
    }

    /// Every source was tried, none served the chunk: why.
    pub fn failed(self) -> RepairFailure {
        if self.failures.is_empty() {
            RepairFailure::NoSource
        } else {
            RepairFailure::Sources(self.failures)
        }
    }
}

/// A copy this node was asked to make (a repair job from a heartbeat reply).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairOrder {
    pub chunk: ChunkId,
    pub size: u64,
    pub sha256: crate::ids::Sha256Digest,
    /// How `sha256` was computed (`crate::chain`): the copy is checked, and stored, so.
    pub chain: Option<crate::chain::Chain>,
    /// Nodes holding the chunk, to try in order: (id, address).
    pub sources: Vec<(StorageNodeId, String)>,
    /// The leader's leave to read the chunk from them.
    pub token: Option<crate::proto::ChunkToken>,
}

impl RepairOrder {
    /// What the copy is to be stored as.
    pub fn meta(&self) -> crate::chunk_store::ChunkMeta {
        crate::chunk_store::ChunkMeta { size: self.size, sha256: self.sha256, chain: self.chain }
    }
}

/// The repair jobs of one storage node: queued, running, and failures to report. Jobs run
/// `running_max` streams at a time: a stream copies one large chunk, or a batch of small ones
/// (at most `SMALL_CHUNK_BYTES_MAX` each) read from the same source in one call and written in
/// one group commit, up to `CHUNK_BATCH_MAX` chunks and `CHUNK_BATCH_BYTES_MAX` bytes. A job for
/// a chunk already queued or running is a duplicate (a reply re-sent) and ignored.
#[derive(Debug)]
pub struct Repairs {
    running_max: usize,
    queued: VecDeque<RepairOrder>,
    /// Chunks queued or running, for the duplicate check.
    known: HashSet<ChunkId>,
    running: Vec<ChunkId>,
    /// Streams running.
    streams: usize,
    failed: VecDeque<(ChunkId, String)>,
}

/// Whether a chunk of `size` bytes is copied in a batch with others.
fn batched(size: u64) -> bool {
    size <= crate::limits::SMALL_CHUNK_BYTES_MAX as u64
}

impl Repairs {
    pub fn new(running_max: usize) -> Self {
        Repairs { running_max: running_max.max(1), queued: VecDeque::new(), known: HashSet::new(), running: Vec::new(), streams: 0, failed: VecDeque::new() }
    }

    /// Jobs from a heartbeat reply.
    pub fn offer(&mut self, orders: impl IntoIterator<Item = RepairOrder>) {
        for order in orders {
            if self.known.contains(&order.chunk) {
                continue;
            }
            if self.queued.len() >= REPAIRS_QUEUED_MAX {
                self.fail(order.chunk, "too many repair jobs queued on this node");
                continue;
            }
            self.known.insert(order.chunk);
            self.queued.push_back(order);
        }
    }

    /// The next stream's work, if a stream is free: the first job queued, and with a small
    /// chunk the small ones queued after it that have the same first source, up to a batch's
    /// limits (they are read from it in one call).
    pub fn start(&mut self) -> Option<Vec<RepairOrder>> {
        if self.streams >= self.running_max {
            return None;
        }
        let first = self.queued.pop_front()?;
        let mut work = vec![first];
        if batched(work[0].size) {
            let source = work[0].sources.first().map(|(id, _)| *id);
            let mut bytes = work[0].size;
            let mut i = 0;
            while i < self.queued.len() && work.len() < crate::limits::CHUNK_BATCH_MAX {
                let q = &self.queued[i];
                if batched(q.size) && q.sources.first().map(|(id, _)| *id) == source && bytes + q.size <= crate::limits::CHUNK_BATCH_BYTES_MAX as u64 {
                    bytes += q.size;
                    work.extend(self.queued.remove(i));
                } else {
                    i += 1;
                }
            }
        }
        self.streams += 1;
        self.running.extend(work.iter().map(|o| o.chunk));
        Some(work)
    }

    /// A stream ended, with each of its jobs done (its replica is reported like any stored
    /// one) or failed.
    pub fn finish(&mut self, results: Vec<(ChunkId, Result<(), RepairFailure>)>) {
        self.streams = self.streams.saturating_sub(1);
        for (chunk, result) in results {
            self.running.retain(|c| *c != chunk);
            self.known.remove(&chunk);
            if let Err(e) = result {
                self.fail(chunk, &e.to_string());
            }
        }
    }

    fn fail(&mut self, chunk: ChunkId, error: &str) {
        if self.failed.len() >= REPAIR_FAILURES_UNREPORTED_MAX {
            // Metadata times the job out instead.
            return;
        }
        self.failed.push_back((chunk, error.chars().take(REPAIR_ERROR_MAX_CHARS).collect()));
    }

    /// Chunks being copied now, and queued: what a heartbeat says is in flight.
    pub fn in_flight(&self) -> Vec<ChunkId> {
        self.running.iter().copied().chain(self.queued.iter().map(|q| q.chunk)).collect()
    }

    /// Failures the next heartbeat reports.
    pub fn failures(&self) -> Vec<(ChunkId, String)> {
        self.failed.iter().take(REPORTS_PER_HEARTBEAT_MAX).cloned().collect()
    }

    /// The heartbeat that carried `reported` was answered.
    pub fn acknowledge_failures(&mut self, reported: &[(ChunkId, String)]) {
        let reported: HashSet<ChunkId> = reported.iter().map(|(c, _)| *c).collect();
        self.failed.retain(|(c, _)| !reported.contains(c));
    }
}

/// The registered storage nodes of this cluster, as the last heartbeat reply listed them.
#[derive(Debug, Default)]
pub struct Peers {
    nodes: BTreeMap<StorageNodeId, String>,
}

/// A storage node: its id and address.
pub type Peer = (StorageNodeId, String);

/// A requested forward target refused, and why (the caller learns it as a replica failure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub node: StorageNodeId,
    pub addr: String,
    pub reason: &'static str,
}

/// Why a whole forward request is refused: the caller's mistake, or a peer trying to make
/// this node send bytes everywhere.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{count} forward targets; a chunk has at most {max} replicas besides the primary")]
pub struct TooManyTargets {
    pub count: usize,
    pub max: usize,
}

impl Peers {
    pub fn update(&mut self, peers: impl IntoIterator<Item = (StorageNodeId, String)>) {
        self.nodes = peers.into_iter().collect();
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whom of `requested` node `me` forwards to: distinct registered peers at their
    /// registered address, other than itself. The rest are refused one by one (a peer the
    /// last heartbeat did not list may have registered since: the caller sees a replica
    /// failure and places the replica elsewhere). More targets than a chunk can have replicas
    /// refuses the request whole.
    pub fn forward_targets(&self, me: StorageNodeId, requested: &[(StorageNodeId, String)]) -> Result<(Vec<Peer>, Vec<Refused>), TooManyTargets> {
        let mut seen = HashSet::new();
        let distinct: Vec<&(StorageNodeId, String)> = requested.iter().filter(|(id, _)| *id != me && seen.insert(*id)).collect();
        let max = REPLICATION_MAX as usize - 1;
        if distinct.len() > max {
            return Err(TooManyTargets { count: distinct.len(), max });
        }
        let mut allowed = Vec::new();
        let mut refused = Vec::new();
        for (id, addr) in distinct {
            match self.nodes.get(id) {
                Some(known) if known == addr => allowed.push((*id, addr.clone())),
                Some(_) => refused.push(Refused { node: *id, addr: addr.clone(), reason: "not the address this storage node is registered at" }),
                None => refused.push(Refused {
                    node: *id,
                    addr: addr.clone(),
                    reason: "not a registered storage node of this cluster (as of this node's last heartbeat)",
                }),
            }
        }
        Ok((allowed, refused))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{FileId, Sha256Digest};
    use proptest::prelude::*;

    fn report(file: u64, index: u32) -> ReplicaReport {
        ReplicaReport { chunk: ChunkId::derive(FileId(file), index), size: 1, sha256: Sha256Digest::of(&[index as u8]) }
    }

    #[test]
    fn an_acknowledged_batch_is_forgotten_and_what_came_meanwhile_stays() {
        let mut r = Reports::default();
        r.stored(report(1, 0));
        r.deleted(ChunkId::derive(FileId(9), 0));
        let batch = r.batch();
        r.stored(report(1, 1));
        r.deleted(ChunkId::derive(FileId(9), 1));
        r.acknowledge(&batch);
        assert_eq!(
            r.batch(),
            ReportBatch { stored: vec![report(1, 1)], deleted: vec![ChunkId::derive(FileId(9), 1)], inventory: InventoryProgress::Idle, inventory_pass: None }
        );
    }

    #[test]
    fn an_inventory_pass_reports_every_chunk_once_in_bounded_batches() {
        let table: Vec<ReplicaReport> = (0..(2 * REPORTS_PER_HEARTBEAT_MAX + 10) as u32).map(|i| report(3, i)).collect();
        let mut sorted = table.clone();
        sorted.sort_by_key(|r| r.chunk);
        let next_after = |c: Option<ChunkId>| sorted.iter().find(|r| c.is_none_or(|c| r.chunk > c)).cloned();
        let mut r = Reports::default();
        r.start_inventory(7);
        r.stored(report(4, 0)); // a fresh report goes first
        let mut seen = Vec::new();
        let mut heartbeats = 0;
        while r.inventory_running() {
            let batch = r.batch_with_inventory(next_after);
            assert!(batch.stored.len() <= REPORTS_PER_HEARTBEAT_MAX);
            if heartbeats == 1 {
                // A failed heartbeat: the same part is sent again.
                assert_eq!(r.batch_with_inventory(next_after), batch);
            }
            r.acknowledge(&batch);
            seen.extend(batch.stored.into_iter().filter(|s| s.chunk != report(4, 0).chunk));
            heartbeats += 1;
            assert!(heartbeats < 10, "the pass never ends");
        }
        assert_eq!(seen, sorted, "every chunk once, in id order");
        assert_eq!(r.inventories_completed(), 1);
        assert_eq!(r.stored_unreported(), 0);
    }

    #[test]
    fn a_failed_heartbeat_reports_the_same_again() {
        let mut r = Reports::default();
        r.stored(report(1, 0));
        let first = r.batch();
        // No acknowledge: the heartbeat failed.
        assert_eq!(r.batch(), first);
    }

    #[test]
    fn queues_and_batches_are_bounded() {
        let mut r = Reports::default();
        for i in 0..(STORED_UNREPORTED_MAX + 10) as u32 {
            r.stored(report(2, i));
            r.deleted(ChunkId::derive(FileId(3), i));
        }
        assert_eq!(r.stored_unreported(), STORED_UNREPORTED_MAX);
        assert_eq!(r.dropped_stored(), 10);
        assert_eq!(r.deleted_unreported(), DELETED_UNREPORTED_MAX);
        let batch = r.batch();
        assert_eq!(batch.stored.len(), REPORTS_PER_HEARTBEAT_MAX);
        assert_eq!(batch.stored[0], report(2, 10), "the oldest were dropped");
        r.acknowledge(&batch);
        assert_eq!(r.stored_unreported(), STORED_UNREPORTED_MAX - REPORTS_PER_HEARTBEAT_MAX);
    }

    #[test]
    fn forwarding_goes_only_to_registered_peers_at_their_address() {
        let mut peers = Peers::default();
        let me = StorageNodeId(1);
        let (a, b, c) = ((StorageNodeId(2), "a:1".to_string()), (StorageNodeId(3), "b:1".to_string()), (StorageNodeId(4), "c:1".to_string()));
        let requested = vec![a.clone(), b.clone(), (me, "me:1".into()), a.clone(), c.clone()];
        let (allowed, refused) = peers.forward_targets(me, &requested).unwrap();
        assert!(allowed.is_empty(), "no heartbeat reply yet: nobody is known");
        assert_eq!(refused.len(), 3);
        peers.update([(me, "me:1".to_string()), a.clone(), (StorageNodeId(3), "elsewhere:1".to_string())]);
        let (allowed, refused) = peers.forward_targets(me, &requested).unwrap();
        assert_eq!(allowed, vec![a.clone()], "itself and duplicates are dropped");
        assert_eq!(refused.iter().map(|r| r.node).collect::<Vec<_>>(), vec![b.0, c.0]);
        let many: Vec<(StorageNodeId, String)> = (10..10 + REPLICATION_MAX as u64).map(|i| (StorageNodeId(i), format!("n{i}:1"))).collect();
        assert_eq!(peers.forward_targets(me, &many), Err(TooManyTargets { count: REPLICATION_MAX as usize, max: REPLICATION_MAX as usize - 1 }));
    }

    fn order(index: u32) -> RepairOrder {
        RepairOrder { chunk: ChunkId::derive(FileId(8), index), size: 1, sha256: Sha256Digest::of(&[]), chain: None, sources: vec![], token: None }
    }

    #[test]
    fn repairs_run_a_bounded_number_at_once_and_duplicates_are_ignored() {
        let big = |i| RepairOrder { size: 1 << 20, ..order(i) };
        let mut r = Repairs::new(2);
        r.offer([big(0), big(1), big(2), big(0)]);
        let chunks = |w: Option<Vec<RepairOrder>>| w.map(|w| w.iter().map(|o| o.chunk).collect::<Vec<_>>());
        assert_eq!(chunks(r.start()), Some(vec![big(0).chunk]));
        assert_eq!(chunks(r.start()), Some(vec![big(1).chunk]));
        assert_eq!(r.start(), None, "two at once at most");
        r.offer([big(1)]);
        assert_eq!(r.in_flight().len(), 3, "a running job offered again is not queued twice");
        r.finish(vec![(big(0).chunk, Err(RepairFailure::NoSource))]);
        assert_eq!(chunks(r.start()), Some(vec![big(2).chunk]));
        let failures = r.failures();
        assert_eq!(failures, vec![(big(0).chunk, "no source to copy from".to_string())]);
        r.acknowledge_failures(&failures);
        assert!(r.failures().is_empty());
        // A full queue refuses, and says so.
        let mut r = Repairs::new(1);
        r.offer((0..(REPAIRS_QUEUED_MAX + 3) as u32).map(order));
        assert_eq!(r.failures().len(), 3);
    }

    #[test]
    fn small_chunks_from_one_source_go_in_batches_within_the_limits() {
        let from = |i: u32, source: u64, size: u64| RepairOrder { size, sources: vec![(StorageNodeId(source), format!("n{source}"))], ..order(i) };
        let mut r = Repairs::new(4);
        let mut orders: Vec<RepairOrder> = (0..100).map(|i| from(i, 1, 4096)).collect();
        orders.extend((100..130).map(|i| from(i, 2, 4096)));
        orders.push(from(130, 1, 1 << 20));
        orders.extend((131..141).map(|i| from(i, 1, 4096)));
        r.offer(orders);
        let first = r.start().unwrap();
        assert_eq!(first.len(), crate::limits::CHUNK_BATCH_MAX, "a full batch");
        assert!(first.iter().all(|o| o.sources[0].0 == StorageNodeId(1)), "one source per batch");
        let second = r.start().unwrap();
        assert_eq!(second.len(), 36 + 10, "the rest of source 1's small chunks, past the others");
        assert!(second.iter().all(|o| o.sources[0].0 == StorageNodeId(1) && o.size == 4096));
        let third = r.start().unwrap();
        assert!(third.len() == 30 && third.iter().all(|o| o.sources[0].0 == StorageNodeId(2)));
        assert_eq!(r.start().unwrap().len(), 1, "a large chunk streams alone");
        assert!(r.start().is_none(), "four streams at most");
        r.finish(first.iter().map(|o| (o.chunk, Ok(()))).collect());
        assert!(r.start().is_none(), "nothing left queued");
        // Bytes bound a batch too.
        let mut r = Repairs::new(1);
        r.offer((0..20).map(|i| from(i, 1, 256 * 1024)));
        assert_eq!(r.start().unwrap().len(), crate::limits::CHUNK_BATCH_BYTES_MAX / (256 * 1024));
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct(
                concat!(env!("CARGO_MANIFEST_DIR"), "/../proptest-regressions/core-storage-reports.txt")))),
            ..ProptestConfig::default()
        })]
        /// Whatever the interleaving of stores, heartbeats and failures, every stored report is
        /// delivered (acknowledged) exactly once while the queue never overflows.
        #[test]
        fn every_report_is_acknowledged_once(ops in proptest::collection::vec(0u8..3, 1..400)) {
            let mut r = Reports::default();
            let mut next = 0u32;
            let mut delivered = Vec::new();
            let mut in_flight: Option<ReportBatch> = None;
            for op in ops {
                match op {
                    0 => { r.stored(report(5, next)); next += 1; }
                    1 => in_flight = Some(r.batch()),
                    _ => if let Some(batch) = in_flight.take() {
                        r.acknowledge(&batch);
                        delivered.extend(batch.stored.iter().map(|s| s.chunk));
                    },
                }
            }
            let batch = r.batch();
            r.acknowledge(&batch);
            delivered.extend(batch.stored.iter().map(|s| s.chunk));
            let expected: Vec<ChunkId> = (0..next).map(|i| ChunkId::derive(FileId(5), i)).collect();
            prop_assert_eq!(delivered, expected);
            prop_assert_eq!(r.stored_unreported(), 0);
        }
    }

    #[test]
    fn a_repair_tries_each_source_but_itself_and_stores_only_the_recorded_bytes() {
        let order = RepairOrder {
            chunk: ChunkId::from_slice(&[1; 16]).unwrap(),
            size: 10,
            sha256: Sha256Digest([7; 32]),
            chain: None,
            sources: vec![
                (StorageNodeId(1), "a:1".into()),
                (StorageNodeId(9), "me:1".into()),
                (StorageNodeId(2), "b:1".into()),
                (StorageNodeId(3), "c:1".into()),
            ],
            token: None,
        };
        let mut a = RepairAttempt::new(order.clone(), StorageNodeId(9));
        assert_eq!(a.next_source(), Some((StorageNodeId(1), "a:1".into())));
        a.read_failed(StorageNodeId(1), crate::rpc::RpcError::Transport("down".into()));
        assert_eq!(a.next_source(), Some((StorageNodeId(2), "b:1".into())), "never itself");
        assert_eq!(a.served(StorageNodeId(2), 10, Sha256Digest([6; 32])), Served::TryNext);
        assert_eq!(a.next_source(), Some((StorageNodeId(3), "c:1".into())));
        assert_eq!(a.served(StorageNodeId(3), 10, Sha256Digest([7; 32])), Served::Store);

        let mut b = RepairAttempt::new(order.clone(), StorageNodeId(9));
        while let Some((id, _)) = b.next_source() {
            b.read_failed(id, crate::rpc::RpcError::Transport("down".into()));
        }
        let why = b.failed();
        assert!(matches!(&why, RepairFailure::Sources(f) if f.len() == 3), "{why:?}");
        assert!(why.to_string().starts_with("node-1") || why.to_string().contains("down"), "{why}");

        // A batch's source: taken only by the chunks that list it, then never tried again.
        let mut d = RepairAttempt::new(order.clone(), StorageNodeId(9));
        assert!(d.take_source(StorageNodeId(2)));
        assert!(!d.take_source(StorageNodeId(2)), "a source is tried once");
        assert!(!d.take_source(StorageNodeId(4)), "not a source of this chunk");
        assert!(!d.take_source(StorageNodeId(9)), "never itself");
        d.read_failed(StorageNodeId(2), crate::rpc::RpcError::NotFound("gone".into()));
        assert_eq!(d.next_source(), Some((StorageNodeId(1), "a:1".into())));
        assert_eq!(d.next_source(), Some((StorageNodeId(3), "c:1".into())), "the batch's source is not read again");
        assert_eq!(d.next_source(), None);
        d.read_failed(StorageNodeId(1), crate::rpc::RpcError::Transport("down".into()));
        assert!(matches!(d.failed(), RepairFailure::Sources(f) if f.len() == 2 && f[0].0 == StorageNodeId(2)));

        let alone = RepairOrder { sources: vec![(StorageNodeId(9), "me:1".into())], ..order };
        let mut c = RepairAttempt::new(alone, StorageNodeId(9));
        assert_eq!(c.next_source(), None);
        assert_eq!(c.failed(), RepairFailure::NoSource);
    }
}

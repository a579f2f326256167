//! The metadata leader's decisions, as a pure state machine: storage-node liveness, chunk
//! placement, what a heartbeat reply carries, and the housekeeping the leader proposes
//! (the cluster id at formation, expiry of abandoned uploads).
//!
//! ## How it is driven
//! `MetaServer` keeps one `Leader` per term it leads, made when it first acts as leader in that
//! term and dropped when the term changes. Every input carries `now` (the monotonic clock) and
//! the applied `Namespace`; every output is a value: a reply to send, a placement, or
//! `Command`s to propose through Raft. The driver's loop, in full:
//!
//! 1. On a storage node's heartbeat: `on_heartbeat(now, &namespace, heartbeat)`; propose the
//!    decision's commands, if any (the reply is sent only once they committed), then reply.
//!    The heartbeat's replica reports become a `ReportReplicas` command only for replicas the
//!    namespace would learn or discard, so a busy node's confirmations cost no log entries.
//! 2. On an allocation request: `allocate(now, &namespace, ...)`.
//! 3. Whenever `poll_timeout()` has passed: `tick(now, unix_ms, &namespace, random)`; propose
//!    each command it returns (a failed proposal is simply retried by a later tick). The tick
//!    also plans repairs (`repair`): jobs go out in their targets' heartbeat replies.
//!
//! ## What it promises
//! - Nothing here is the only copy of anything that matters. Pending deletions, uploads and the
//!   cluster id live in the replicated namespace; liveness is rebuilt from heartbeats. A leader
//!   change therefore neither loses nor repeats work: the new leader re-derives the same
//!   deletions from the namespace (a node that already deleted a replica reports it and is not
//!   asked again once that is committed; deleting twice is harmless).
//! - A new leader gives every registered node a full `dead_after` of grace: a node it has not
//!   heard from yet is `Unknown` (no new replicas go there, nothing is declared lost) until the
//!   grace ends. A leader change never makes a healthy node look dead.
//! - Placement uses only nodes heard from recently (`Alive`), never Suspect, Dead or Unknown.
//!
//! Not here: Raft itself, and the namespace's own rules (`Namespace::apply` checks every
//! command again; this module only decides what to propose).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::env::Timestamp;
use crate::health::{HealthConfig, HealthTracker, Liveness, NodeStats};
use crate::ids::{ChunkId, StorageNodeId};
use crate::namespace::{Command, Namespace, ReplicaReport, Upload, Verdict, REPLICA_REPORTS_MAX};
use crate::placement::{self, Candidate};
use crate::proto::ReplicaState;
use crate::repair::{Census, ChunkState, NodeState, RepairConfig, RepairJob, RepairPlanner, RepairStats};
use crate::tokens::TokenKey;

/// Expired trash buckets deleted per housekeeping tick, at most.
const TRASH_PURGES_PER_TICK: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaderConfig {
    pub health: HealthConfig,
    /// Deletion requests handed to one storage node per heartbeat.
    pub deletes_per_heartbeat_max: usize,
    /// How long a replica is garbage before its node is asked to delete it.
    pub gc_delay: Duration,
    /// Uploads not committed within this long are dropped and their replicas freed.
    pub upload_expiry: Duration,
    /// How often `tick` looks for housekeeping to do (and plans repairs).
    pub housekeeping_interval: Duration,
    pub repair: RepairConfig,
    /// How long deleted files stay in the trash; zero: no trash.
    pub trash_interval: Duration,
    /// After taking office, how long a leader waits to hear from the registered storage
    /// nodes before it places a chunk on fewer nodes than its replication factor: until
    /// then, a node it has not heard from yet is more likely slow to reach it than gone, and
    /// a chunk placed short is a repair later (found in simulation: uploads right after a
    /// leadership hand-over). Storage nodes heartbeat every 3 s by default.
    pub placement_settle: Duration,
    /// When chunk keys turn over and how long chunk access tokens live.
    pub chunk_keys: crate::chunk_tokens::ChunkKeyPolicy,
}

/// Default of `LeaderConfig::deletes_per_heartbeat_max`.
pub const DELETES_PER_HEARTBEAT_MAX: usize = 1000;

impl Default for LeaderConfig {
    fn default() -> Self {
        LeaderConfig {
            health: HealthConfig::default(),
            deletes_per_heartbeat_max: DELETES_PER_HEARTBEAT_MAX,
            gc_delay: Duration::from_secs(5),
            upload_expiry: Duration::from_millis(crate::namespace::UPLOAD_EXPIRY_DEFAULT_MS),
            housekeeping_interval: Duration::from_secs(1),
            repair: RepairConfig::default(),
            trash_interval: Duration::from_secs(24 * 60 * 60),
            placement_settle: Duration::from_secs(5),
            chunk_keys: crate::chunk_tokens::ChunkKeyPolicy::default(),
        }
    }
}

/// A storage node's heartbeat, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub node: StorageNodeId,
    pub addr: String,
    pub stats: NodeStats,
    /// Replicas it deleted on an earlier reply's request.
    pub deleted: Vec<ChunkId>,
    /// Replicas it stored since its last report.
    pub stored: Vec<ReplicaReport>,
    /// Repair jobs it is running now, and those that failed since its last report.
    pub repairs_running: Vec<ChunkId>,
    pub repairs_failed: Vec<(ChunkId, String)>,
    /// The part of an inventory pass `stored` carries, if any.
    pub inventory: Option<InventoryPart>,
    /// The last scrub request it started a pass for (0: none).
    pub scrub_request_seen: u64,
    /// A planned stop: the node says it is going (and reports nothing else).
    pub stopping: bool,
}

/// Where a heartbeat's replica reports sit in an inventory pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InventoryPart {
    pub pass: u64,
    /// The pass's cursor before this part (`None`: its start).
    pub from: Option<ChunkId>,
    /// After this part (`None`: still at the start, the batch was full of fresh reports).
    pub through: Option<ChunkId>,
    /// This part ends the pass: the node holds nothing else.
    pub done: bool,
}

/// An inventory pass seen from its start.
#[derive(Debug)]
struct Inventory {
    pass: u64,
    next_from: Option<ChunkId>,
    seen: std::collections::HashSet<ChunkId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct HeartbeatReply {
    /// The namespace does not know this node at this address: it must register (again).
    pub register: bool,
    pub delete_chunks: Vec<ChunkId>,
    /// Every registered storage node (id, address): the only peers a primary forwards to.
    pub peers: Vec<(StorageNodeId, String)>,
    /// Copies for this node to make, each with its sources' addresses.
    pub repair_jobs: Vec<(RepairJob, Vec<(StorageNodeId, String)>)>,
    /// Start a full scrub pass now, for `scrub_request` (asked again in every reply until the
    /// node's heartbeat says it saw it: a lost reply loses no scrub).
    pub scrub_now: bool,
    pub scrub_request: u64,
    /// Report the whole inventory: this leader has not seen a complete one from this node.
    pub inventory_wanted: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatDecision {
    /// To propose (and see committed) before the reply is sent.
    pub propose: Vec<Command>,
    pub reply: HeartbeatReply,
}

/// Why chunks cannot be placed. The first two are the world's (retry later, or elsewhere);
/// the last is the caller's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocateError {
    #[error("no usable live storage node ({alive} alive, {excluded} excluded by the client)")]
    NoLiveNode { alive: usize, excluded: usize },
    #[error("{0}")]
    NoSpace(String),
    #[error("upload {file} has no chunk {index}")]
    NoSuchChunk { file: u64, index: u32 },
    /// The world's: a new leader has not heard from every storage node yet. Retry.
    #[error("the metadata leader took office moments ago: {heard} storage nodes heard from, {unheard} not yet")]
    Settling { heard: usize, unheard: usize },
}

/// A request the cluster as it stands cannot carry out: the caller's to change (fewer copies,
/// stop the node first), not worth repeating as it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("replication factor {replication} needs {replication} storage nodes, but {usable} {} available", if *usable == 1 { "is" } else { "are" })]
    TooFewNodes { replication: u32, usable: usize },
    #[error("storage node {node} is still heartbeating: stop it for good first (it would register again)")]
    StillHeartbeating { node: StorageNodeId },
}

/// Whether a storage node that names `presented` as its cluster (empty: none yet) may join
/// this one. Returns the cluster id it belongs to from now on.
pub fn admit(ns: &Namespace, presented: &str) -> Result<String, AdmitError> {
    let ours = ns.cluster_id().ok_or(AdmitError::Forming)?;
    if !presented.is_empty() && presented != ours {
        return Err(AdmitError::OtherCluster { theirs: presented.to_string(), ours: ours.to_string() });
    }
    Ok(ours.to_string())
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    /// The world's: the first leader has not named the cluster yet. Retry.
    #[error("the metadata cluster is still forming (no cluster id yet)")]
    Forming,
    /// The storage node's: it holds another cluster's chunks.
    #[error("this storage node belongs to cluster {theirs}, but this metadata cluster is {ours}: refused, so that two clusters' chunks never mix (point it at its own cluster, or give it an empty data dir)")]
    OtherCluster { theirs: String, ours: String },
}

/// A storage node as the leader sees it, for status reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub id: StorageNodeId,
    pub addr: String,
    pub liveness: Liveness,
    pub stats: NodeStats,
    pub last_heartbeat_ago: Option<Duration>,
    pub rack: Option<String>,
    /// `None` in service; `Some(done)` draining, `done` once every chunk it holds has its full
    /// set of valid replicas elsewhere (decommissioned: safe to switch off).
    pub draining: Option<bool>,
}

impl NodeView {
    /// "alive", "suspect", "dead", "unknown"; a live draining node is "draining" or
    /// "decommissioned".
    pub fn state(&self) -> &'static str {
        match (self.draining, self.liveness) {
            (Some(false), Liveness::Alive | Liveness::Suspect) => "draining",
            (Some(true), Liveness::Alive | Liveness::Suspect) => "decommissioned",
            (_, l) => l.as_str(),
        }
    }
}

/// The storage node `name` names: its address, or its id in hex (as `dfs nodes` shows it) or
/// decimal.
pub fn resolve_node(ns: &Namespace, name: &str) -> Option<(StorageNodeId, String)> {
    let name = name.trim();
    let by_hex = u64::from_str_radix(name.trim_start_matches("0x"), 16).ok();
    let by_dec = name.parse::<u64>().ok();
    let node = ns
        .storage_nodes()
        .find(|n| n.addr == name)
        .or_else(|| ns.storage_nodes().find(|n| Some(n.id.0) == by_hex))
        .or_else(|| ns.storage_nodes().find(|n| Some(n.id.0) == by_dec))?;
    Some((node.id, node.addr.clone()))
}

/// The chunks of a committed file, as the repair planner sees them.
/// A chunk several files share (`cp`) has the highest replication factor of the files
/// holding it.
fn chunk_states<'a>(ns: &'a Namespace, f: &'a crate::namespace::FileRecord) -> impl Iterator<Item = ChunkState<'a>> + 'a {
    f.chunks.iter().enumerate().map(move |(pos, c)| {
        let id = f.chunk_id(c.index);
        let replication = if ns.is_shared(id) { ns.chunk_replication(id).unwrap_or(f.replication) } else { f.replication };
        ChunkState {
            id,
            size: c.size,
            sha256: c.sha256,
            chain: f.chain_at(pos),
            replication,
            replicas: &c.replicas,
            bad: ns.bad_replicas(id),
            deleting: ns.deleting(id),
        }
    })
}

/// Every chunk of every committed file once (a shared chunk through the file that speaks for
/// it): what the repair planner scans.
fn every_chunk(ns: &Namespace) -> impl Iterator<Item = ChunkState<'_>> + '_ {
    ns.files().flat_map(move |f| chunk_states(ns, f).filter(move |c| ns.speaks_for(f.id, c.id)))
}

/// What `Leader::fsck` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FsckReport {
    pub files: u64,
    pub chunks: u64,
    pub bytes: u64,
    pub under_replicated: u64,
    pub over_replicated: u64,
    pub corrupt: u64,
    pub missing: u64,
    /// Chunks whose every copy is on a node not heard from lately (see `chunk_problem`).
    pub unreachable: u64,
    pub repairs_in_flight: u64,
    pub problems: Vec<FsckProblem>,
    pub problems_truncated: bool,
}

impl FsckReport {
    pub fn healthy(&self) -> bool {
        self.under_replicated + self.over_replicated + self.corrupt + self.missing + self.unreachable == 0
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsckProblem {
    pub path: String,
    pub index: u32,
    pub chunk: ChunkId,
    pub kind: &'static str,
    pub valid: usize,
    pub replication: u32,
}

pub struct Leader {
    config: LeaderConfig,
    term: u64,
    health: HealthTracker,
    next_housekeeping: Timestamp,
    repair: RepairPlanner,
    /// Nodes asked (`dfs admin scrub`) to scrub, told with their next heartbeat reply. Kept
    /// by this leader only: a request made just before a leader change may be lost.
    /// Scrubs asked for and not yet seen by their node, with the request's number.
    scrub_requested: BTreeMap<StorageNodeId, u64>,
    /// Numbers scrub requests: the term in the high half, so no two leaders reuse one.
    scrub_requests_made: u64,
    /// Inventory passes being received, and the nodes whose whole inventory this leader has
    /// seen.
    inventories: BTreeMap<StorageNodeId, Inventory>,
    inventoried: BTreeSet<StorageNodeId>,
    /// Replicas a node's last whole inventory lacked, not yet judged: a chunk stored just
    /// after the node built that heartbeat, and recorded by its uploader before the leader
    /// read it, is in the next heartbeat's fresh reports. Judged (and marked missing) on the
    /// first later heartbeat that carries every fresh report the node had.
    suspects: BTreeMap<StorageNodeId, BTreeSet<ChunkId>>,
    /// When this leader first saw each (node, replica) of garbage it looked at.
    garbage_seen: BTreeMap<(StorageNodeId, ChunkId), Timestamp>,
    /// Chunks and bytes placed on each node since its last heartbeat (which cannot show them
    /// in its free space yet): placement's load and a deduction from the reported room.
    placed_since_heartbeat: BTreeMap<StorageNodeId, (u64, u64)>,
    /// What happened lately, newest last (at most `EVENTS_MAX`), for the status page.
    events: std::collections::VecDeque<LeaderEvent>,
    /// Each node's state at the last housekeeping, to see it change.
    states_seen: BTreeMap<StorageNodeId, &'static str>,
    /// Repairs completed as of the last housekeeping.
    repairs_seen: (u64, u64),
    took_office: Timestamp,
    /// When a chunk key this leader proposed may be proposed again (it is applied by then, or
    /// was lost with a leader change): one key per rotation, not one per housekeeping.
    chunk_key_proposed: Option<Timestamp>,
}

/// Events the leader keeps for the status page: enough for the last minutes of a busy
/// cluster, few enough that the page stays small.
pub const EVENTS_MAX: usize = 64;

/// Something that happened, as the leader saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderEvent {
    pub at: Timestamp,
    /// "node", "repair", "damage".
    pub kind: &'static str,
    pub text: String,
}

impl Leader {
    /// The leader of `term`, from `now` on.
    pub fn new(config: LeaderConfig, term: u64, now: Timestamp) -> Self {
        Leader {
            config,
            term,
            health: HealthTracker::new(config.health, now),
            next_housekeeping: now,
            repair: RepairPlanner::new(
                RepairConfig { start_grace: Some(config.repair.start_grace.unwrap_or(config.health.suspect_after)), ..config.repair },
                now,
            ),
            scrub_requested: BTreeMap::new(),
            scrub_requests_made: 0,
            inventories: BTreeMap::new(),
            inventoried: BTreeSet::new(),
            suspects: BTreeMap::new(),
            garbage_seen: BTreeMap::new(),
            placed_since_heartbeat: BTreeMap::new(),
            events: Default::default(),
            states_seen: BTreeMap::new(),
            repairs_seen: (0, 0),
            took_office: now,
            chunk_key_proposed: None,
        }
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    /// When `tick` next has something to look at.
    pub fn poll_timeout(&self) -> Timestamp {
        self.next_housekeeping
    }

    pub fn on_heartbeat(&mut self, now: Timestamp, ns: &Namespace, hb: Heartbeat) -> HeartbeatDecision {
        let known = ns.storage_node(hb.node).is_some_and(|n| n.addr == hb.addr);
        if !known {
            return HeartbeatDecision { propose: vec![], reply: HeartbeatReply { register: true, ..Default::default() } };
        }
        if hb.stopping {
            // Suspect from now until a heartbeat that does not say so: no new chunk goes there
            // and reads prefer other copies, while its replicas still count (a restart shorter
            // than the dead timeout moves nothing). The rest of the heartbeat counts as usual.
            if !self.health.is_stopping(hb.node) {
                self.record_event(now, "node", format!("storage node {} ({}) is stopping", hb.node, hb.addr));
            }
            self.health.record_stopping(hb.node, hb.stats, now);
        } else {
            self.health.record_heartbeat(hb.node, hb.stats, now);
        }
        self.placed_since_heartbeat.remove(&hb.node);
        let stored: Vec<ChunkId> = hb.stored.iter().map(|r| r.chunk).collect();
        self.repair.on_heartbeat(now, hb.node, &hb.repairs_running, &hb.repairs_failed, &stored);
        // Replicas reported deleted are not asked for again, even before the command that
        // forgets them has been applied. A replica becomes garbage for `gc_delay` before it
        // is handed out (a safety delay: a mistaken delete can still be undone meanwhile),
        // counted from when this leader first saw it.
        for c in &hb.deleted {
            self.garbage_seen.remove(&(hb.node, *c));
        }
        let window = self.config.deletes_per_heartbeat_max * 4 + hb.deleted.len();
        let mut delete_chunks = Vec::new();
        for c in ns.garbage_for(hb.node, window) {
            if hb.deleted.contains(&c) {
                continue;
            }
            let since = *self.garbage_seen.entry((hb.node, c)).or_insert(now);
            if now.saturating_since(since) >= self.config.gc_delay && delete_chunks.len() < self.config.deletes_per_heartbeat_max {
                delete_chunks.push(c);
            }
        }
        let mut propose = Vec::new();
        if !hb.deleted.is_empty() {
            propose.push(Command::ForgetDeletedReplicas { node: hb.node, chunks: hb.deleted });
        }
        // Most reports confirm what the uploader recorded: only those that would change
        // something take a log entry. (`apply` judges them again on the committed state.)
        let news: Vec<ReplicaReport> =
            hb.stored.into_iter().filter(|r| matches!(ns.judge_report(hb.node, r), Verdict::Learn | Verdict::Discard)).take(REPLICA_REPORTS_MAX).collect();
        if !news.is_empty() {
            propose.push(Command::ReportReplicas { node: hb.node, replicas: news });
        }
        propose.extend(self.judge_suspects(ns, hb.node, &stored, hb.inventory.is_some()));
        if let Some(part) = &hb.inventory {
            self.on_inventory(ns, hb.node, part, &stored);
        }
        let peers = ns.storage_nodes().map(|n| (n.id, n.addr.clone())).collect();
        let nodes = self.node_states(now, ns);
        let repair_jobs = self
            .repair
            .jobs_for(now, hb.node, &nodes)
            .into_iter()
            .map(|j| {
                let sources = j.sources.iter().filter_map(|s| ns.storage_node(*s).map(|n| (n.id, n.addr.clone()))).collect();
                (j, sources)
            })
            .collect();
        if hb.scrub_request_seen != 0 && self.scrub_requested.get(&hb.node) == Some(&hb.scrub_request_seen) {
            self.scrub_requested.remove(&hb.node);
        }
        let scrub_request = self.scrub_requested.get(&hb.node).copied().unwrap_or(0);
        let scrub_now = scrub_request != 0;
        let inventory_wanted = !self.inventoried.contains(&hb.node) && !self.inventories.contains_key(&hb.node);
        HeartbeatDecision { propose, reply: HeartbeatReply { register: false, delete_chunks, peers, repair_jobs, scrub_now, scrub_request, inventory_wanted } }
    }

    /// The replicas `node`'s last whole inventory lacked and that it still has not reported,
    /// marked missing (bad: never served, repaired, then dropped), once a heartbeat carries
    /// every fresh report the node had (fewer than a full batch) and no new pass has begun.
    fn judge_suspects(&mut self, ns: &Namespace, node: StorageNodeId, stored: &[ChunkId], pass_running: bool) -> Vec<Command> {
        let Some(suspects) = self.suspects.get_mut(&node) else { return vec![] };
        for c in stored {
            suspects.remove(c);
        }
        if pass_running {
            // A new pass judges afresh.
            self.suspects.remove(&node);
            return vec![];
        }
        if stored.len() >= crate::storage_reports::REPORTS_PER_HEARTBEAT_MAX {
            return vec![]; // more fresh reports may be queued on the node
        }
        let suspects = self.suspects.remove(&node).unwrap_or_default();
        let missing: Vec<ChunkId> = suspects.into_iter().filter(|id| !ns.deleting_on(node, *id) && ns.lists_replica(node, *id)).collect();
        if !missing.is_empty() {
            tracing::warn!(%node, missing = missing.len(), "replicas listed on this node are not in its inventory");
        }
        missing.chunks(crate::namespace::DROP_REPLICAS_MAX).map(|c| Command::MarkReplicasMissing { node, chunks: c.to_vec() }).collect()
    }

    /// Follows `node`'s inventory pass; when one seen whole ends, the chunks it is listed for
    /// but did not report become suspects, judged on a later heartbeat (`judge_suspects`).
    fn on_inventory(&mut self, ns: &Namespace, node: StorageNodeId, part: &InventoryPart, stored: &[ChunkId]) {
        let continues = match (self.inventories.get(&node), part.from) {
            (Some(t), from) if t.pass == part.pass && t.next_from == from => true,
            (_, None) => {
                self.inventories.insert(node, Inventory { pass: part.pass, next_from: None, seen: Default::default() });
                true
            }
            _ => false,
        };
        if !continues {
            // A part missed (another leader had it): this pass tells nothing whole.
            self.inventories.remove(&node);
            return;
        }
        let Some(t) = self.inventories.get_mut(&node) else { return };
        t.seen.extend(stored.iter().copied());
        if !part.done {
            t.next_from = part.through;
            return;
        }
        let Some(t) = self.inventories.remove(&node) else { return };
        self.inventoried.insert(node);
        let missing: BTreeSet<ChunkId> = ns
            .files()
            .flat_map(|f| f.chunks.iter().filter(|c| c.replicas.contains(&node)).map(move |c| f.chunk_id(c.index)))
            .filter(|id| !t.seen.contains(id) && !ns.deleting_on(node, *id))
            .collect();
        if !missing.is_empty() {
            self.suspects.insert(node, missing);
        }
    }

    /// Targets for each of `indexes` (chunk indexes of `upload`), the primary first, avoiding
    /// `exclude`. Whether targets that are offered complete a write quorum is the client's to
    /// judge (excluded nodes may already hold the chunk); only an empty offer is refused.
    pub fn allocate(
        &mut self,
        now: Timestamp,
        ns: &Namespace,
        upload: &Upload,
        indexes: &[u32],
        exclude: &[StorageNodeId],
    ) -> Result<Vec<Vec<StorageNodeId>>, AllocateError> {
        let sizes = indexes
            .iter()
            .map(|&index| crate::chunking::chunk_len(upload.size, upload.chunk_size, index).ok_or(AllocateError::NoSuchChunk { file: upload.id.0, index }))
            .collect::<Result<Vec<u64>, _>>()?;
        // Live nodes that take replicas: not draining (decommissioning).
        let repairs_in = self.repair.in_flight();
        let candidates: Vec<Candidate> = self
            .health
            .alive(now)
            .filter_map(|(id, stats)| {
                let record = ns.storage_node(id)?;
                let (chunks, bytes) = self.placed_since_heartbeat.get(&id).copied().unwrap_or((0, 0));
                let load = chunks + repairs_in.get(&id).copied().unwrap_or(0) as u64;
                (!record.draining).then(|| Candidate { id, free_bytes: stats.usable_bytes().saturating_sub(bytes), rack: record.rack.clone(), load })
            })
            .collect();
        let usable = candidates.iter().filter(|c| !exclude.contains(&c.id)).count();
        let unheard = || ns.storage_nodes().filter(|n| !n.draining && !exclude.contains(&n.id) && self.health.liveness(n.id, now) == Liveness::Unknown).count();
        if usable < upload.replication as usize && now.saturating_since(self.took_office) < self.config.placement_settle && unheard() > 0 {
            return Err(AllocateError::Settling { heard: usable, unheard: unheard() });
        }
        if usable == 0 {
            return Err(AllocateError::NoLiveNode { alive: candidates.len(), excluded: exclude.len() });
        }
        let placed = placement::place(&candidates, exclude, upload.replication as usize, &sizes).map_err(|e| {
            let crate::placement::PlacementError::NoCandidates { chunk_bytes } = e;
            let reserve = self.health.alive(now).map(|(_, s)| s.reserve_bytes).max().unwrap_or(0);
            let best = candidates.iter().filter(|c| !exclude.contains(&c.id)).max_by_key(|c| c.free_bytes);
            AllocateError::NoSpace(format!(
                "no storage node has {} free above its {} reserve{}",
                bytesize::ByteSize(chunk_bytes),
                bytesize::ByteSize(reserve),
                best.map(|c| format!(" (the most any has left is {}, on node {})", bytesize::ByteSize(c.free_bytes), c.id)).unwrap_or_default()
            ))
        })?;
        for (nodes, size) in placed.iter().zip(&sizes) {
            for node in nodes {
                let entry = self.placed_since_heartbeat.entry(*node).or_default();
                *entry = (entry.0 + 1, entry.1.saturating_add(*size));
            }
        }
        Ok(placed)
    }

    /// Refuses a replication factor that the cluster cannot hold at all: more copies than
    /// registered storage nodes that are not dead. (Checked when an upload is created, so the
    /// user learns at once, not after the transfers.)
    pub fn check_replication(&self, now: Timestamp, ns: &Namespace, replication: u32) -> Result<(), Refused> {
        let usable = ns.storage_nodes().filter(|n| self.health.liveness(n.id, now) != Liveness::Dead).count();
        if (replication as usize) > usable {
            return Err(Refused::TooFewNodes { replication, usable });
        }
        Ok(())
    }

    /// The order a reader should try `replicas` of chunk `index` in: nodes believed alive
    /// first, rotated per chunk so reads spread over them; then the rest.
    pub fn read_order(&self, now: Timestamp, replicas: &[StorageNodeId], index: u32) -> Vec<StorageNodeId> {
        let mut ordered = replicas.to_vec();
        ordered.sort_by_key(|id| self.health.liveness(*id, now) != Liveness::Alive);
        let alive = ordered.iter().filter(|id| self.health.liveness(**id, now) == Liveness::Alive).count();
        if alive > 1 {
            ordered[..alive].rotate_left(index as usize % alive);
        }
        ordered
    }

    /// The replicas of a chunk to hand to a reader, in `read_order`: never one marked bad.
    pub fn served_replicas(&self, now: Timestamp, replicas: &[StorageNodeId], bad: Option<&BTreeSet<StorageNodeId>>, index: u32) -> Vec<StorageNodeId> {
        let good: Vec<StorageNodeId> = replicas.iter().copied().filter(|r| !bad.is_some_and(|b| b.contains(r))).collect();
        self.read_order(now, &good, index)
    }

    /// Every replica of a chunk with its state, for display: bad if marked so, else what this
    /// leader knows of its node (a node not heard from yet in this term is suspect).
    pub fn replica_states(&self, now: Timestamp, replicas: &[StorageNodeId], bad: Option<&BTreeSet<StorageNodeId>>) -> Vec<(StorageNodeId, ReplicaState)> {
        replicas
            .iter()
            .map(|r| {
                let state = if bad.is_some_and(|b| b.contains(r)) {
                    ReplicaState::Bad
                } else {
                    match self.health.liveness(*r, now) {
                        Liveness::Alive => ReplicaState::Ok,
                        Liveness::Suspect | Liveness::Unknown => ReplicaState::Suspect,
                        Liveness::Dead => ReplicaState::Dead,
                    }
                };
                (*r, state)
            })
            .collect()
    }

    /// Every registered node, with what the leader knows of it.
    pub fn nodes(&self, now: Timestamp, ns: &Namespace) -> Vec<NodeView> {
        ns.storage_nodes()
            .map(|n| {
                let seen = self.health.last_seen(n.id, now);
                NodeView {
                    id: n.id,
                    addr: n.addr.clone(),
                    liveness: self.health.liveness(n.id, now),
                    stats: seen.map(|(s, _)| s).unwrap_or(NodeStats { capacity_bytes: n.capacity_bytes, ..Default::default() }),
                    last_heartbeat_ago: seen.map(|(_, ago)| ago),
                    rack: n.rack.clone(),
                    draining: n.draining.then(|| self.decommissioned(now, ns, n.id)),
                }
            })
            .collect()
    }

    /// Housekeeping due at `now`: commands to propose. `random` seeds a new cluster id;
    /// `fresh_key` (the OS's randomness, never derived from anything seen) becomes a chunk key
    /// when one is due (none: the rotation waits for the next tick that has one).
    pub fn tick(&mut self, now: Timestamp, unix_ms: u64, ns: &Namespace, random: [u64; 2], fresh_key: Option<TokenKey>) -> Vec<Command> {
        if now < self.next_housekeeping {
            return vec![];
        }
        self.next_housekeeping = now.plus(self.config.housekeeping_interval);
        let mut commands = Vec::new();
        if ns.cluster_id().is_none() {
            commands.push(Command::SetClusterId { cluster_id: format!("{:016x}{:016x}", random[0], random[1]) });
        }
        let due = ns.chunk_keys().rotation_due(&self.config.chunk_keys, unix_ms) && self.chunk_key_proposed.is_none_or(|at| now >= at);
        if let Some(key) = fresh_key.filter(|_| due) {
            commands.push(Command::RotateChunkKey { key, made_unix_ms: unix_ms });
            // Once per housekeeping round trip: the command takes a moment to apply.
            self.chunk_key_proposed = Some(now.plus(self.config.housekeeping_interval.saturating_mul(5)));
        }
        let expiry_ms = self.config.upload_expiry.as_millis() as u64;
        let cutoff = unix_ms.saturating_sub(expiry_ms);
        if ns.uploads().any(|u| u.created_unix_ms < cutoff) {
            commands.push(Command::ExpireUploads { now_unix_ms: unix_ms, older_than_ms: expiry_ms });
        }
        commands.extend(self.expired_trash(unix_ms, ns));
        self.note_changes(now, ns);
        let nodes = self.node_states(now, ns);
        commands.extend(self.repair.plan(now, every_chunk(ns), &nodes));
        commands
    }

    /// Records `text` as an event of `kind` at `now`, dropping the oldest past `EVENTS_MAX`.
    pub fn record_event(&mut self, now: Timestamp, kind: &'static str, text: String) {
        if self.events.len() == EVENTS_MAX {
            self.events.pop_front();
        }
        self.events.push_back(LeaderEvent { at: now, kind, text });
    }

    /// The events kept, oldest first.
    pub fn events(&self) -> impl Iterator<Item = &LeaderEvent> {
        self.events.iter()
    }

    /// Events for what changed since the last housekeeping: a node's state (a node this
    /// leader has not heard from yet is not news), and repairs completed.
    fn note_changes(&mut self, now: Timestamp, ns: &Namespace) {
        for view in self.nodes(now, ns) {
            let state = view.state();
            let before = self.states_seen.insert(view.id, state);
            if before.is_some_and(|b| b != state) {
                let before = before.unwrap_or("unknown");
                self.record_event(now, "node", format!("storage node {} ({}) is {state} (was {before})", view.id, view.addr));
            }
        }
        let stats = self.repair.stats();
        let (done, bytes) = (stats.completed, stats.completed_bytes);
        if done > self.repairs_seen.0 {
            let text = format!(
                "{} repair cop{} done ({} bytes)",
                done - self.repairs_seen.0,
                if done - self.repairs_seen.0 == 1 { "y" } else { "ies" },
                bytes - self.repairs_seen.1
            );
            self.record_event(now, "repair", text);
        }
        self.repairs_seen = (done, bytes);
    }

    /// Deletes for the trash buckets older than the trash interval (at most
    /// `TRASH_PURGES_PER_TICK` a tick; a name that is no bucket's is left alone).
    fn expired_trash(&self, unix_ms: u64, ns: &Namespace) -> Vec<Command> {
        let keep_ms = self.config.trash_interval.as_millis() as u64;
        if keep_ms == 0 || ns.kind(crate::namespace::TRASH_DIR).is_none() {
            return Vec::new();
        }
        let mut purges = Vec::new();
        let users = ns.list_dir(crate::namespace::TRASH_DIR, "", usize::MAX).map(|(e, _)| e).unwrap_or_default();
        for user in users.iter().filter(|u| u.kind == crate::namespace::EntryKind::Dir) {
            let buckets = ns.list_dir(&user.path, "", usize::MAX).map(|(e, _)| e).unwrap_or_default();
            for b in buckets {
                let expired = crate::namespace::trash_bucket_unix_ms(&b.name).is_some_and(|at| at.saturating_add(keep_ms) <= unix_ms);
                if expired && purges.len() < TRASH_PURGES_PER_TICK {
                    purges.push(Command::Delete { path: b.path, recursive: true, expect_file_id: None });
                }
            }
        }
        purges
    }

    /// Every registered node as the repair planner sees it.
    fn node_states(&self, now: Timestamp, ns: &Namespace) -> BTreeMap<StorageNodeId, NodeState> {
        ns.storage_nodes()
            .map(|n| {
                let free_bytes = self.health.last_seen(n.id, now).map(|(s, _)| s.free_bytes).unwrap_or(0);
                (n.id, NodeState { liveness: self.health.liveness(n.id, now), free_bytes, draining: n.draining, rack: n.rack.clone() })
            })
            .collect()
    }

    /// A health report of the files at or under `path` (like `hdfs fsck`): counts over every
    /// chunk, and the first `problems_max` chunks that are not as they should be.
    pub fn fsck(&self, now: Timestamp, ns: &Namespace, path: &str, problems_max: usize) -> FsckReport {
        let nodes = self.node_states(now, ns);
        let under = |p: &str| path == crate::namespace::ROOT || p == path || p.strip_prefix(path).is_some_and(|rest| rest.starts_with('/'));
        let mut report = FsckReport { repairs_in_flight: self.repair.jobs_in_flight() as u64, ..FsckReport::default() };
        for f in ns.files().filter(|f| under(&f.path)) {
            report.files += 1;
            report.bytes += f.size;
            for c in chunk_states(ns, f) {
                report.chunks += 1;
                let Some((kind, valid)) = crate::repair::chunk_problem(&c, &nodes) else { continue };
                match kind {
                    "missing" => report.missing += 1,
                    "unreachable" => report.unreachable += 1,
                    "under-replicated" => report.under_replicated += 1,
                    "corrupt" => report.corrupt += 1,
                    _ => report.over_replicated += 1,
                }
                if report.problems.len() < problems_max {
                    let index = c.id.owner().map(|(_, i)| i).unwrap_or(0);
                    report.problems.push(FsckProblem { path: f.path.to_string(), index, chunk: c.id, kind, valid, replication: f.replication });
                } else {
                    report.problems_truncated = true;
                }
            }
        }
        report
    }

    /// How many storage nodes this leader has heard from lately (Alive, not Suspect).
    pub fn alive_count(&self, now: Timestamp) -> usize {
        self.health.alive(now).count()
    }

    /// Asks the storage node named `name` (its id in hex or decimal, or its address) to scrub
    /// now; returns it.
    pub fn request_scrub(&mut self, ns: &Namespace, name: &str) -> Option<(StorageNodeId, String)> {
        let (id, addr) = resolve_node(ns, name)?;
        self.scrub_requests_made += 1;
        self.scrub_requested.insert(id, (self.term << 32) | (self.scrub_requests_made & 0xffff_ffff));
        Some((id, addr))
    }

    /// Whether `node` may be forgotten: only one that is not alive (a live node would simply
    /// register again, and its replicas are real).
    pub fn check_forget(&self, now: Timestamp, node: StorageNodeId) -> Result<(), Refused> {
        match self.health.liveness(node, now) {
            Liveness::Alive | Liveness::Suspect => Err(Refused::StillHeartbeating { node }),
            Liveness::Dead | Liveness::Unknown => Ok(()),
        }
    }

    /// For a draining node: whether every chunk it holds has its full set of valid replicas
    /// elsewhere (safe to switch off).
    pub fn decommissioned(&self, now: Timestamp, ns: &Namespace, node: StorageNodeId) -> bool {
        let nodes = self.node_states(now, ns);
        ns.files()
            .flat_map(|f| chunk_states(ns, f))
            .filter(|c| c.replicas.contains(&node))
            .all(|c| crate::repair::valid_replicas(&c, &nodes).len() >= c.replication as usize)
    }

    /// Repair copies in flight with `node` as their target.
    pub fn repairs_in_flight(&self, node: StorageNodeId) -> usize {
        self.repair.in_flight().get(&node).copied().unwrap_or(0)
    }

    /// Repair progress and what the last planning pass saw.
    /// Chunks waiting for a repair job (see `RepairPlanner::queued`).
    pub fn repair_queued(&self) -> usize {
        self.repair.queued()
    }

    pub fn repair_status(&self) -> (RepairStats, Census, BTreeMap<StorageNodeId, usize>) {
        (self.repair.stats(), self.repair.census(), self.repair.in_flight())
    }
}

#[cfg(test)]
mod tests;

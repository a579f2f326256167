//! The JSON objects the commands print with `--json`, one per command, on one line. These
//! shapes are an interface: `docs/CLI.md` documents every field, and a field is added, never
//! renamed or removed. Node ids are 16-digit hex strings (as in the text output, and because
//! a random 64-bit id does not survive a JavaScript number); everything else that counts is
//! a number, a missing value is `null`.

use serde::Serialize;

use dfs_core::proto;

use crate::cli::hex;

#[derive(Serialize)]
pub struct FileJson {
    pub path: String,
    pub file_id: u64,
    pub size: u64,
    pub chunk_size: u64,
    pub replication: u32,
    pub chunk_count: u64,
    pub committed_unix_ms: u64,
    pub sha256: Option<String>,
    /// Permission bits its source had (e.g. 420 for 0644), when kept; `null` otherwise.
    pub mode: Option<u32>,
    /// When its content last changed at its source (or `touch`), when kept.
    pub mtime_unix_ms: Option<u64>,
}

impl From<&proto::FileInfo> for FileJson {
    fn from(f: &proto::FileInfo) -> Self {
        FileJson {
            path: f.path.clone(),
            file_id: f.file_id,
            size: f.size,
            chunk_size: f.chunk_size,
            replication: f.replication,
            chunk_count: f.chunk_count,
            committed_unix_ms: f.committed_unix_ms,
            sha256: hex(&f.sha256),
            mode: f.mode,
            mtime_unix_ms: f.mtime_unix_ms,
        }
    }
}

pub fn node_id(id: u64) -> String {
    format!("{id:016x}")
}

#[derive(Serialize)]
pub struct PutJson {
    pub local: String,
    pub remote: String,
    pub file: FileJson,
}

#[derive(Serialize)]
pub struct GetJson {
    pub remote: String,
    pub local: String,
    pub file: FileJson,
}

/// One file of a recursive copy.
#[derive(Serialize)]
pub struct TreeFileJson {
    pub local: String,
    pub remote: String,
    /// Bytes of the file (what was read or written); 0 when it failed before that was known.
    pub size: u64,
    /// Why this file failed; `null` when it was copied.
    pub error: Option<String>,
    /// Already at the destination with the same content (uploaded by an earlier, interrupted
    /// run of the same `put -r`, or the same size and SHA-256): not sent again.
    pub already_uploaded: bool,
}

#[derive(Serialize)]
pub struct TreeJson {
    pub source: String,
    pub destination: String,
    pub files: Vec<TreeFileJson>,
    pub files_copied: u64,
    /// Of `files_copied`: already there with the same content, not sent again.
    pub files_already_uploaded: u64,
    pub files_failed: u64,
    pub bytes_copied: u64,
    pub directories: u64,
}

#[derive(Serialize)]
pub struct EntryJson {
    pub path: String,
    pub name: String,
    /// "file" or "directory".
    pub kind: &'static str,
    pub modified_unix_ms: u64,
    pub file: Option<FileJson>,
}

pub fn kind_name(kind: i32) -> &'static str {
    if kind == proto::EntryKind::Directory as i32 {
        "directory"
    } else {
        "file"
    }
}

impl From<&proto::DirEntry> for EntryJson {
    fn from(e: &proto::DirEntry) -> Self {
        EntryJson {
            path: e.path.clone(),
            name: e.name.clone(),
            kind: kind_name(e.kind),
            modified_unix_ms: e.modified_unix_ms,
            file: e.file.as_ref().map(FileJson::from),
        }
    }
}

#[derive(Serialize)]
pub struct LsJson {
    pub path: String,
    pub recursive: bool,
    pub entries: Vec<EntryJson>,
}

#[derive(Serialize)]
pub struct ListJson {
    pub prefix: String,
    pub files: Vec<FileJson>,
}

#[derive(Serialize)]
pub struct ReplicaJson {
    pub node_id: String,
    pub addr: String,
    /// "ok", "suspect", "dead", "bad" or "unknown".
    pub state: &'static str,
}

#[derive(Serialize)]
pub struct ChunkJson {
    pub index: u32,
    pub size: u64,
    pub sha256: Option<String>,
    /// What `sha256` is: "sha256" (of the chunk's bytes alone), "chained" (the SHA-256 state
    /// after the chunk, hashed on from the previous chunk's) or "chained-last" (the file's
    /// SHA-256, hashed on from the previous chunk's).
    pub checksum: &'static str,
    pub chunk_id: Option<String>,
    pub replicas: Vec<ReplicaJson>,
}

#[derive(Serialize)]
pub struct StatJson {
    pub path: String,
    /// "file" or "directory"; a directory has `file: null` and no chunks.
    pub kind: &'static str,
    pub file: Option<FileJson>,
    pub chunks: Vec<ChunkJson>,
}

pub fn replica_state(state: i32) -> &'static str {
    match proto::ReplicaState::try_from(state) {
        Ok(proto::ReplicaState::Ok) => "ok",
        Ok(proto::ReplicaState::Suspect) => "suspect",
        Ok(proto::ReplicaState::Dead) => "dead",
        Ok(proto::ReplicaState::Bad) => "bad",
        _ => "unknown",
    }
}

/// A chunk's replicas with their states: `replica_status` when metadata fills it in, else the
/// readable replicas, which metadata only lists when it believes them good.
pub fn chunk_json(c: &proto::ChunkLocation) -> ChunkJson {
    let replicas = if c.replica_status.is_empty() {
        c.replicas.iter().map(|n| ReplicaJson { node_id: node_id(n.id), addr: n.addr.clone(), state: "ok" }).collect()
    } else {
        c.replica_status
            .iter()
            .map(|r| {
                let node = r.node.clone().unwrap_or_default();
                ReplicaJson { node_id: node_id(node.id), addr: node.addr, state: replica_state(r.state) }
            })
            .collect()
    };
    let checksum = match &c.chain {
        None => "sha256",
        Some(chain) if chain.last => "chained-last",
        Some(_) => "chained",
    };
    ChunkJson { index: c.index, size: c.size, sha256: hex(&c.sha256), checksum, chunk_id: hex(&c.chunk_id), replicas }
}

#[derive(Serialize, Default, Clone)]
pub struct DuJson {
    pub path: String,
    pub bytes: u64,
    pub files: u64,
    /// Directories below `path`, `path` itself not counted.
    pub directories: u64,
}

#[derive(Serialize)]
pub struct DuReportJson {
    #[serde(flatten)]
    pub total: DuJson,
    /// One per direct child of `path`, in path order; empty with `-s` or for a file.
    pub children: Vec<DuJson>,
}

#[derive(Serialize)]
pub struct DeletedJson {
    pub path: String,
    pub kind: &'static str,
    /// The deleted file's id; `null` for a directory.
    pub file_id: Option<u64>,
    pub files_deleted: u64,
    pub dirs_deleted: u64,
    /// Where it went when it was moved to the trash; `null` when it was deleted for good.
    pub trashed_to: Option<String>,
}

#[derive(Serialize)]
pub struct MvJson {
    pub src: String,
    pub dst: String,
}

#[derive(Serialize)]
pub struct MkdirJson {
    pub path: String,
    pub parents: bool,
}

#[derive(Serialize)]
pub struct MetaNodeJson {
    pub id: u64,
    pub addr: String,
}

impl From<&proto::MetaNode> for MetaNodeJson {
    fn from(n: &proto::MetaNode) -> Self {
        MetaNodeJson { id: n.id, addr: n.addr.clone() }
    }
}

#[derive(Serialize)]
pub struct StorageNodeJson {
    pub node_id: String,
    pub addr: String,
    /// "alive", "suspect", "dead" or "unknown"; a live node being decommissioned is
    /// "draining", then "decommissioned" once it is safe to switch off.
    pub state: String,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    pub chunk_count: u64,
    /// `null` when this leader has not heard from the node yet.
    pub last_heartbeat_ms_ago: Option<u64>,
    /// Bytes of dfs's chunk files on the node (what dfs stores there).
    pub used_bytes: u64,
    /// The same, by its plainer name.
    pub stored_bytes: u64,
    /// What dfs may still write there: free space above the reserve.
    pub usable_bytes: u64,
    /// Free space every write must leave (`dfs storage --space-reserve-bytes`).
    pub reserve_bytes: u64,
    /// capacity - free: the whole disk's use, other programs' files included.
    pub disk_used_bytes: u64,
    /// Other nodes on the same disk of the same host (their capacity is this disk's).
    pub shares_disk_with: Vec<String>,
    /// Repair copies the node is making now.
    pub repairs_in_flight: u64,
    /// `null` when the node was started without --rack.
    pub rack: Option<String>,
}

impl From<&proto::StorageNodeStatus> for StorageNodeJson {
    fn from(n: &proto::StorageNodeStatus) -> Self {
        let node = n.node.clone().unwrap_or_default();
        StorageNodeJson {
            node_id: node_id(node.id),
            addr: node.addr,
            state: n.state.clone(),
            capacity_bytes: n.capacity_bytes,
            free_bytes: n.free_bytes,
            chunk_count: n.chunk_count,
            last_heartbeat_ms_ago: (n.last_heartbeat_ms_ago != u64::MAX).then_some(n.last_heartbeat_ms_ago),
            used_bytes: n.stored_bytes,
            stored_bytes: n.stored_bytes,
            usable_bytes: n.free_bytes.saturating_sub(n.reserve_bytes),
            reserve_bytes: n.reserve_bytes,
            disk_used_bytes: n.capacity_bytes.saturating_sub(n.free_bytes),
            shares_disk_with: Vec::new(),
            repairs_in_flight: n.repairs_in_flight,
            rack: Some(n.rack.clone()).filter(|r| !r.is_empty()),
        }
    }
}

/// `dfs nodes --json`.
#[derive(Serialize)]
pub struct NodesJson {
    pub nodes: Vec<StorageNodeJson>,
    /// The cluster's totals, each disk counted once however many nodes share it.
    pub total: SpaceTotals,
}

#[derive(Serialize, Default, Debug, PartialEq, Eq)]
pub struct SpaceTotals {
    pub disks: u64,
    pub capacity_bytes: u64,
    pub stored_bytes: u64,
    pub usable_bytes: u64,
}

/// Fills in `shares_disk_with` (nodes of one host whose data dirs are on one volume) and
/// returns the totals with each disk counted once: several nodes on one machine, as
/// `dfs cluster up` starts them, each report the whole disk's capacity and free space.
pub fn group_disks(nodes: &mut [StorageNodeJson], volumes: &[u64]) -> SpaceTotals {
    let host = |addr: &str| addr.rsplit_once(':').map(|(h, _)| h.to_string()).unwrap_or_else(|| addr.to_string());
    let keys: Vec<Option<(String, u64)>> = (0..nodes.len()).map(|i| (volumes[i] != 0).then(|| (host(&nodes[i].addr), volumes[i]))).collect();
    let mut totals = SpaceTotals::default();
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..nodes.len() {
        let k = keys[i].clone();
        let shared: Vec<String> = (0..nodes.len()).filter(|&j| j != i && k.is_some() && keys[j] == k).map(|j| nodes[j].node_id.clone()).collect();
        nodes[i].shares_disk_with = shared;
        totals.stored_bytes += nodes[i].stored_bytes;
        if k.is_none() || seen.insert(k) {
            totals.disks += 1;
            totals.capacity_bytes += nodes[i].capacity_bytes;
            totals.usable_bytes += nodes[i].usable_bytes;
        }
    }
    totals
}

#[derive(Serialize)]
pub struct FsckProblemJson {
    pub path: String,
    pub index: u32,
    pub chunk_id: String,
    /// "missing", "unreachable", "under-replicated", "over-replicated" or "corrupt".
    pub kind: String,
    pub valid_replicas: u32,
    pub replication: u32,
}

/// `dfs fsck --json`.
#[derive(Serialize)]
pub struct FsckJson {
    pub healthy: bool,
    pub files: u64,
    pub chunks: u64,
    pub bytes: u64,
    pub under_replicated: u64,
    pub over_replicated: u64,
    pub corrupt: u64,
    pub missing: u64,
    /// Chunks with copies that may be intact, none of them on a node heard from lately.
    pub unreachable: u64,
    pub repairs_in_flight: u64,
    pub problems: Vec<FsckProblemJson>,
    pub problems_truncated: bool,
}

impl From<&proto::FsckResponse> for FsckJson {
    fn from(r: &proto::FsckResponse) -> Self {
        FsckJson {
            healthy: r.under_replicated + r.over_replicated + r.corrupt + r.missing + r.unreachable == 0,
            files: r.files,
            chunks: r.chunks,
            bytes: r.bytes,
            under_replicated: r.under_replicated,
            over_replicated: r.over_replicated,
            corrupt: r.corrupt,
            missing: r.missing,
            unreachable: r.unreachable,
            repairs_in_flight: r.repairs_in_flight,
            problems: r
                .problems
                .iter()
                .map(|p| FsckProblemJson {
                    path: p.path.clone(),
                    index: p.index,
                    chunk_id: dfs_core::ids::ChunkId::from_slice(&p.chunk_id).map(|c| c.to_hex()).unwrap_or_default(),
                    kind: p.kind.clone(),
                    valid_replicas: p.valid_replicas,
                    replication: p.replication,
                })
                .collect(),
            problems_truncated: r.problems_truncated,
        }
    }
}

#[derive(Serialize)]
pub struct StatusJson {
    pub leader: Option<MetaNodeJson>,
    pub term: u64,
    pub commit_index: u64,
    pub members: Vec<MetaNodeJson>,
    pub file_count: u64,
    pub total_bytes: u64,
    pub storage_nodes: Vec<StorageNodeJson>,
}

impl From<&proto::ClusterStatusResponse> for StatusJson {
    fn from(s: &proto::ClusterStatusResponse) -> Self {
        StatusJson {
            leader: s.leader.as_ref().map(MetaNodeJson::from),
            term: s.term,
            commit_index: s.commit_index,
            members: s.members.iter().map(MetaNodeJson::from).collect(),
            file_count: s.file_count,
            total_bytes: s.total_bytes,
            storage_nodes: s.storage_nodes.iter().map(StorageNodeJson::from).collect(),
        }
    }
}

#[derive(Serialize)]
pub struct MetaMemberJson {
    pub id: u64,
    pub addr: String,
    /// "voter" or "learner".
    pub role: String,
    pub matched_index: Option<u64>,
    pub lag: Option<u64>,
}

#[derive(Serialize)]
pub struct MetaStatusJson {
    pub leader: Option<MetaNodeJson>,
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub purged_index: u64,
    pub members: Vec<MetaMemberJson>,
}

impl From<&proto::MetaStatusResponse> for MetaStatusJson {
    fn from(s: &proto::MetaStatusResponse) -> Self {
        MetaStatusJson {
            leader: s.leader.as_ref().map(MetaNodeJson::from),
            term: s.term,
            last_log_index: s.last_log_index,
            applied_index: s.applied_index,
            snapshot_index: s.snapshot_index,
            purged_index: s.purged_index,
            members: s
                .members
                .iter()
                .map(|m| MetaMemberJson { id: m.id, addr: m.addr.clone(), role: m.role.clone(), matched_index: m.matched_index, lag: m.lag })
                .collect(),
        }
    }
}

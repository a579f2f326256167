//! What a metadata node answers on the wire: `MetadataService` and `RaftService` requests
//! turned into commands, reads and the engine's inputs, and the results turned back into
//! replies. No decision of the node's own is made here (those are the engine's and the
//! leader's); this is conversion and validation of what arrives.

use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::BasicNode;

use super::engine::{self, namespace_error, MembershipStep};
use super::leader::{resolve_node, AllocateError, Heartbeat, InventoryPart};
use super::server::{target_voters, MetaServer};
use super::state_machine::incoming_snapshot_path;
use super::types::SnapshotFile;
use crate::auth::{self, Denied, Grant, Guard, Peer, Principal, Want};
use crate::chain::{Chain, SumKind};
use crate::chunk_tokens::ChunkOp;
use crate::env::{Clock, Disk, Env};
use crate::health::NodeStats;
use crate::ids::{ChunkId, FileId, MetaNodeId, Sha256Digest, StorageNodeId};
use crate::limits::{
    ALLOCATE_CHUNKS_MAX, ALLOCATE_EXCLUDE_MAX, BATCH_FILES_MAX, CREATE_PLACE_CHUNKS_MAX, GET_FILES_REPLY_BYTES_MAX, LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX,
    RECORD_CHUNKS_MAX,
};
use crate::namespace::{
    self, normalize_path, ChunkRecord, Command, EntryKind, FileRecord, FileSummary, Namespace, NamespaceError, Outcome, ReplicaReport, RequestId,
    PATH_MAX_BYTES, REPLICATION_MAX, REPLICA_REPORTS_MAX,
};
use crate::proto::{self, MetadataServiceHandler, RaftServiceHandler};
use crate::rpc::{Rpc, RpcError};
use crate::tokens::{TokenKey, TokenRecord};

/// A metadata node as its operator sees it (`MetaServer::view`).
#[derive(Clone, Debug)]
pub struct MetaView {
    pub id: MetaNodeId,
    /// openraft's server state: Leader, Follower, Candidate, Learner.
    pub server_state: String,
    pub raft: proto::MetaStatusResponse,
    pub files: u64,
    pub bytes: u64,
    pub uploads_open: u64,
    pub leader: Option<LeaderView>,
}

/// The leader's part of `MetaView`.
#[derive(Clone, Debug)]
pub struct LeaderView {
    /// Each storage node with its repair copies in flight.
    pub nodes: Vec<(usize, crate::meta::leader::NodeView)>,
    pub repair: crate::repair::RepairStats,
    /// The last repair pass's count of chunks by state.
    pub census: crate::repair::Census,
    pub repair_queued: usize,
    /// How long ago, and what.
    pub events: Vec<(Duration, crate::meta::leader::LeaderEvent)>,
    pub fsck: Option<crate::meta::leader::FsckReport>,
}

impl<E: Env> MetaServer<E> {
    /// The repair planner's counters, while this node leads (for tests and status).
    pub fn repair_stats(&self) -> Option<crate::repair::RepairStats> {
        self.engine.lock().expect("engine lock").last_leader().map(|l| l.repair_status().0)
    }

    /// A token for `op` on `chunk` as this node would sign it now with a placement or a
    /// location (for tests that call storage nodes directly): `None` before the cluster has a
    /// chunk key.
    pub fn chunk_token(&self, chunk: ChunkId, op: ChunkOp) -> Option<proto::ChunkToken> {
        self.chunk_keys().sign(&self.config.leader.chunk_keys, chunk, op, self.env.clock().unix_ms())
    }

    /// The cluster's chunk keys as this node has applied them (for tests that make tokens of
    /// their own: expired ones).
    pub fn chunk_keys(&self) -> crate::chunk_tokens::ChunkKeys {
        self.state.read().expect("state lock").namespace.chunk_keys().clone()
    }

    /// The storage nodes this node, while it leads, has heard from lately (for tests).
    pub fn alive_storage_nodes(&self) -> Option<usize> {
        let now = self.env.clock().now();
        self.engine.lock().expect("engine lock").last_leader().map(|l| l.alive_count(now))
    }

    /// Before a planned stop: a leader hands leadership to its most caught-up voter (the
    /// engine's `handle_step_down`, which tries again if the successor did not take over),
    /// so the cluster elects none by timeout. Returns whether leadership moved.
    pub async fn step_down(&self) -> bool {
        let (tx, rx) = futures::channel::oneshot::channel();
        let request = {
            let mut waiting = self.waiting.lock().expect("waiting lock");
            let request = waiting.next_request();
            waiting.step_downs.insert(request, tx);
            request
        };
        let now = self.env.clock().now();
        self.input(|engine| engine.handle_step_down(now, request));
        rx.await.unwrap_or(false)
    }

    /// The leader's id and address, from the membership this node knows (which includes
    /// members added at runtime), else from the member list it started with.
    pub(super) fn leader_hint(&self, leader: Option<MetaNodeId>) -> Option<proto::MetaNode> {
        let id = leader?;
        let metrics = self.raft.metrics().borrow().clone();
        let addr = match metrics.membership_config.membership().get_node(&id) {
            Some(node) => node.addr.clone(),
            None => self.config.members.get(&id)?.clone(),
        };
        Some(proto::MetaNode { id, addr })
    }

    /// Carries out a membership change's steps (planned by the engine's `plan_add` or
    /// `plan_remove`) in order.
    async fn change_membership(&self, steps: Vec<MembershipStep>) -> Result<(), RpcError> {
        for step in steps {
            match step {
                MembershipStep::AddLearner { id, addr } => {
                    self.raft.add_learner(id, BasicNode::new(&addr), true).await.map_err(|e| self.membership_error(e))?;
                }
                MembershipStep::ChangeVoters(voters) => {
                    // retain = false: the removed leave the learners too and stop receiving the log.
                    self.raft.change_membership(voters, false).await.map_err(|e| self.membership_error(e))?;
                }
                MembershipStep::HandOver(successors) => return Err(self.hand_over(successors).await),
            }
        }
        Ok(())
    }

    /// Maps a membership-change failure to what the caller can act on.
    fn membership_error(&self, e: RaftError<MetaNodeId, ClientWriteError<MetaNodeId, BasicNode>>) -> RpcError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => self.not_leader(f.leader_id),
            RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => RpcError::FailedPrecondition(c.to_string()),
            RaftError::Fatal(e) => RpcError::Unavailable(format!("metadata node stopped: {e}")),
        }
    }

    /// What the operator's metrics and status page show of this node: no leadership check,
    /// no Raft round (a scrape must not wait on the cluster). `leader` is `None` unless this
    /// node leads; `fsck_problems_max` > 0 adds a health report (it walks every file: callers
    /// ask for it seldom).
    pub fn view(&self, fsck_problems_max: usize) -> MetaView {
        let raft = self.membership_status();
        let metrics = self.raft.metrics().borrow().clone();
        let (files, bytes, uploads_open) = {
            let state = self.state.read().expect("state lock");
            (state.namespace.file_count(), state.namespace.total_bytes(), state.namespace.uploads().count() as u64)
        };
        let now = self.env.clock().now();
        let leads = metrics.current_leader == Some(self.config.id);
        let leader = leads.then(|| {
            self.with_leader(metrics.current_term, |leader, ns| {
                let (repair, census, _) = leader.repair_status();
                LeaderView {
                    nodes: leader.nodes(now, ns).into_iter().map(|n| (leader.repairs_in_flight(n.id), n)).collect(),
                    repair,
                    census,
                    repair_queued: leader.repair_queued(),
                    events: leader.events().map(|e| (now.saturating_since(e.at), e.clone())).collect(),
                    fsck: (fsck_problems_max > 0).then(|| leader.fsck(now, ns, namespace::ROOT, fsck_problems_max)),
                }
            })
        });
        MetaView { id: self.config.id, server_state: format!("{:?}", metrics.state), raft, files, bytes, uploads_open, leader }
    }

    /// Members, roles and replication progress, as this node (the leader) sees them.
    fn membership_status(&self) -> proto::MetaStatusResponse {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters = target_voters(membership);
        let joint = membership.get_joint_config().len() > 1;
        let last_log = m.last_log_index.unwrap_or(0);
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let matched = if *id == m.id { m.last_log_index } else { m.replication.as_ref().and_then(|r| r.get(id).cloned().flatten()).map(|l| l.index) };
                proto::MetaMemberStatus {
                    id: *id,
                    addr: node.addr.clone(),
                    // While a change is half done (joint consensus), say where it is going.
                    role: match (voters.contains(id), joint, membership.voter_ids().any(|v| v == *id)) {
                        (true, false, _) => "voter",
                        (true, true, _) => "joining",
                        (false, _, true) => "leaving",
                        (false, _, false) => "learner",
                    }
                    .to_string(),
                    matched_index: matched,
                    lag: matched.map(|i| last_log.saturating_sub(i)),
                }
            })
            .collect();
        proto::MetaStatusResponse {
            leader: self.leader_hint(m.current_leader),
            term: m.current_term,
            last_log_index: last_log,
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            purged_index: m.purged.map(|l| l.index).unwrap_or(0),
            members,
            http_address: self.config.http_address.clone().unwrap_or_default(),
        }
    }
}

fn storage_node_proto(ns: &Namespace, id: StorageNodeId) -> Option<proto::StorageNode> {
    ns.storage_node(id).map(|n| proto::StorageNode { id: n.id.0, addr: n.addr.clone() })
}

/// `command`, applied at most once for the client's request id if it sent one.
fn once(request: Option<proto::RequestId>, command: Command) -> Command {
    match request {
        Some(r) => Command::Once { request: RequestId { client: r.client, seq: r.seq }, command: Box::new(command) },
        None => command,
    }
}

/// Most of a bad-replica report's reason that reaches the log.
const REASON_MAX_CHARS: usize = 1024;
/// Problems an fsck lists unless asked otherwise, and at most.
const FSCK_PROBLEMS_DEFAULT: usize = 100;
const FSCK_PROBLEMS_MAX: usize = 10_000;
/// Repairs running or failed that one heartbeat may report.
const REPAIRS_REPORTED_MAX: usize = 1024;

fn unknown_node(name: &str) -> RpcError {
    RpcError::NotFound(format!("no storage node is registered as {:?} (give its id, as `dfs nodes` shows it, or its address)", crate::limits::echo(name)))
}

fn file_info(f: &FileSummary) -> proto::FileInfo {
    proto::FileInfo {
        path: f.path.clone(),
        file_id: f.id.0,
        size: f.size,
        chunk_size: f.chunk_size,
        replication: f.replication,
        chunk_count: f.chunk_count,
        committed_unix_ms: f.committed_unix_ms,
        sha256: f.sha256.map(|d| d.0.to_vec().into()).unwrap_or_default(),
        mode: f.attrs.mode,
        mtime_unix_ms: f.attrs.mtime_unix_ms,
        object: f.object.as_deref().map(object_proto),
    }
}

/// An object's metadata as the namespace keeps it (its bounds are checked there).
pub fn object_meta(o: proto::ObjectMeta) -> namespace::ObjectMeta {
    namespace::ObjectMeta { etag: o.etag, content_type: o.content_type, headers: o.headers.into_iter().collect(), user: o.user.into_iter().collect() }
}

pub fn object_proto(o: &namespace::ObjectMeta) -> proto::ObjectMeta {
    proto::ObjectMeta {
        etag: o.etag.clone(),
        content_type: o.content_type.clone(),
        headers: o.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        user: o.user.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

fn dir_entry(e: &namespace::DirEntry) -> proto::DirEntry {
    proto::DirEntry {
        name: e.name.clone(),
        path: e.path.clone(),
        kind: match e.kind {
            EntryKind::File => proto::EntryKind::File,
            EntryKind::Dir => proto::EntryKind::Directory,
        } as i32,
        file: e.file.as_ref().map(file_info),
        modified_unix_ms: e.modified_unix_ms,
    }
}

use crate::namespace::write_quorum;

/// Chunk records from the wire, checked.
fn chunk_records(chunks: Vec<proto::ChunkInfo>) -> Result<Vec<ChunkRecord>, RpcError> {
    chunks
        .into_iter()
        .map(|c| {
            let sha256 = Sha256Digest::from_slice(&c.sha256).ok_or_else(|| RpcError::InvalidArgument(format!("chunk {}: sha256 must be 32 bytes", c.index)))?;
            let chain = Chain::from_proto_opt(c.chain.as_ref()).map_err(|e| RpcError::InvalidArgument(format!("chunk {}: {e}", c.index)))?;
            // Checked before the set is made: `validate` would refuse it too, after the work.
            if c.replicas.len() > REPLICATION_MAX as usize {
                return Err(RpcError::InvalidArgument(format!("chunk {}: {} replicas; a chunk has at most {REPLICATION_MAX}", c.index, c.replicas.len())));
            }
            let replicas = c.replicas.into_iter().map(StorageNodeId).collect();
            Ok(ChunkRecord { index: c.index, size: c.size, sha256, replicas, sum: SumKind::of(chain.as_ref()) })
        })
        .collect()
}

/// An allocation asks for at most `ALLOCATE_CHUNKS_MAX` chunks and excludes at most
/// `ALLOCATE_EXCLUDE_MAX` nodes: checked before any work for it.
fn check_allocate(r: &proto::AllocateChunksRequest) -> Result<(), RpcError> {
    if r.chunk_indexes.len() > ALLOCATE_CHUNKS_MAX {
        return Err(RpcError::InvalidArgument(format!("at most {ALLOCATE_CHUNKS_MAX} chunks per allocation, not {}", r.chunk_indexes.len())));
    }
    if r.exclude.len() > ALLOCATE_EXCLUDE_MAX {
        return Err(RpcError::InvalidArgument(format!("at most {ALLOCATE_EXCLUDE_MAX} excluded nodes per allocation, not {}", r.exclude.len())));
    }
    Ok(())
}

/// Entries one page of a listing holds: what the caller asked for (0: the default), at most
/// `LIST_LIMIT_MAX`.
fn list_limit(asked: u32) -> usize {
    let limit = match asked {
        0 => LIST_LIMIT_DEFAULT,
        n => n.min(LIST_LIMIT_MAX),
    };
    limit as usize
}

/// Where a listing resumes: a path, so no longer than one.
fn check_start_after(start_after: &str) -> Result<(), RpcError> {
    if start_after.len() > PATH_MAX_BYTES {
        return Err(RpcError::InvalidArgument(format!("start_after is longer than {PATH_MAX_BYTES} bytes")));
    }
    Ok(())
}

/// A batch of file calls holds 1..=`BATCH_FILES_MAX` items.
fn check_batch_len(len: usize) -> Result<(), RpcError> {
    if len == 0 || len > BATCH_FILES_MAX {
        return Err(RpcError::InvalidArgument(format!("a batch holds 1 to {BATCH_FILES_MAX} files, not {len}")));
    }
    Ok(())
}

/// The reply to a commit that was applied.
fn committed(outcome: Outcome) -> Result<proto::CommitFileResponse, RpcError> {
    match outcome {
        Outcome::FileCommitted(f) => Ok(proto::CommitFileResponse { file: Some(file_info(&f)) }),
        other => Err(RpcError::Internal(format!("unexpected outcome {other:?}"))),
    }
}

impl<E: Env> MetaServer<E> {
    /// Proposes the items that are commands (each validated first) in one log entry; an item
    /// that is already an error, or fails validation, keeps its error and is not proposed.
    async fn propose_items(&self, items: Vec<Result<Command, RpcError>>) -> Result<Vec<Result<Outcome, RpcError>>, RpcError> {
        let items: Vec<Result<Command, RpcError>> =
            items.into_iter().map(|item| item.and_then(|c| c.validate().map(|()| c).map_err(|e| RpcError::InvalidArgument(e.to_string())))).collect();
        let commands: Vec<Command> = items.iter().filter_map(|i| i.as_ref().ok().cloned()).collect();
        let mut outcomes = if commands.is_empty() { Vec::new() } else { self.propose_together(commands).await? }.into_iter();
        Ok(items.into_iter().map(|item| item.and_then(|_| outcomes.next().unwrap_or_else(|| Err(RpcError::Internal("missing result".into()))))).collect())
    }

    /// The command for one `CreateFile`, after the checks the state machine cannot make.
    fn create_command(&self, r: proto::CreateFileRequest) -> Result<Command, RpcError> {
        // A replication factor the cluster cannot hold is refused now, not after the transfers
        // (an empty file has no chunks to place).
        if r.size > 0 {
            let term = self.require_leader()?;
            let now = self.env.clock().now();
            self.with_leader(term, |leader, ns| leader.check_replication(now, ns, r.replication)).map_err(|e| RpcError::FailedPrecondition(e.to_string()))?;
        }
        let attrs = namespace::FileAttrs { mode: r.mode, mtime_unix_ms: r.mtime_unix_ms };
        if r.commit_empty {
            if r.size != 0 {
                return Err(RpcError::InvalidArgument(format!("commit_empty asks for an empty file, but the size is {}", r.size)));
            }
            let command = Command::CreateEmptyFile {
                path: r.path,
                chunk_size: r.chunk_size,
                replication: r.replication,
                overwrite: r.overwrite,
                expect_file_id: r.expect_file_id.map(FileId),
                unix_ms: self.env.clock().unix_ms(),
                attrs,
                object: r.object.map(object_meta).map(Box::new),
            };
            // No upload remembers the request: a retry is answered from the session instead.
            return Ok(once(r.request_id, command));
        }
        Ok(Command::CreateFile {
            path: r.path,
            size: r.size,
            chunk_size: r.chunk_size,
            replication: r.replication,
            overwrite: r.overwrite,
            expect_file_id: r.expect_file_id.map(FileId),
            request_id: r.request_id.map(|id| RequestId { client: id.client, seq: id.seq }),
            unix_ms: self.env.clock().unix_ms(),
            attrs,
        })
    }

    /// The reply to an applied `CreateFile`: placements for the first chunks ride on it, so a
    /// small file needs no `AllocateChunks` round trip. The create was just committed in this
    /// leader's term, so its view of the upload is current.
    fn created(&self, outcome: Outcome, place_chunks: u32, size: u64, chunk_size: u64) -> Result<proto::CreateFileResponse, RpcError> {
        let file = match outcome {
            Outcome::FileCreated(id) => id,
            // An empty file committed with its creation (`commit_empty`).
            Outcome::FileCommitted(f) => return Ok(proto::CreateFileResponse { file_id: f.id.0, committed: Some(file_info(&f)), ..Default::default() }),
            other => return Err(RpcError::Internal(format!("unexpected outcome {other:?}"))),
        };
        let count = crate::chunking::chunk_count(size, chunk_size.max(1));
        let place = (place_chunks as u64).min(count).min(CREATE_PLACE_CHUNKS_MAX as u64) as u32;
        if place == 0 {
            return Ok(proto::CreateFileResponse { file_id: file.0, ..Default::default() });
        }
        let indexes: Vec<u32> = (0..place).collect();
        let (placements, write_quorum) = self.place_chunks(file, &indexes, &[])?;
        Ok(proto::CreateFileResponse { file_id: file.0, placements, write_quorum, committed: None })
    }

    /// The command for one `CommitFile`, its input checked.
    fn commit_command(&self, r: proto::CommitFileRequest) -> Result<Command, RpcError> {
        if r.chunks.len() > RECORD_CHUNKS_MAX {
            return Err(RpcError::InvalidArgument(format!("at most {RECORD_CHUNKS_MAX} chunks with a commit")));
        }
        let sha256 = match r.sha256.len() {
            0 => None,
            _ => Some(Sha256Digest::from_slice(&r.sha256).ok_or_else(|| RpcError::InvalidArgument("sha256 must be 32 bytes".into()))?),
        };
        Ok(Command::CommitFile {
            file: FileId(r.file_id),
            unix_ms: self.env.clock().unix_ms(),
            sha256,
            chunks: chunk_records(r.chunks)?,
            object: r.object.map(object_meta).map(Box::new),
        })
    }

    /// A committed file with its chunks' replicas: those on nodes this leader believes alive
    /// first, rotated per chunk so reads spread over them; the client tries them in this order.
    fn file_reply(&self, file: &FileRecord) -> Result<proto::GetFileResponse, RpcError> {
        let term = self.require_leader()?;
        let now = self.env.clock().now();
        let unix_ms = self.env.clock().unix_ms();
        let policy = self.config.leader.chunk_keys;
        let chunks = self.with_leader(term, |leader, ns| {
            file.chunks
                .iter()
                .enumerate()
                .map(|(pos, c)| {
                    let chunk_id = file.chunk_id(c.index);
                    let bad = ns.bad_replicas(chunk_id);
                    proto::ChunkLocation {
                        index: c.index,
                        chunk_id: chunk_id.as_bytes().to_vec().into(),
                        size: c.size,
                        sha256: c.sha256.0.to_vec().into(),
                        replicas: leader.served_replicas(now, &c.replicas, bad, c.index).into_iter().filter_map(|id| storage_node_proto(ns, id)).collect(),
                        replica_status: leader
                            .replica_states(now, &c.replicas, bad)
                            .into_iter()
                            .map(|(id, state)| proto::ReplicaStatus { node: storage_node_proto(ns, id), state: state as i32 })
                            .collect(),
                        chain: file.chain_at(pos).map(Chain::to_proto),
                        token: ns.chunk_keys().sign(&policy, chunk_id, ChunkOp::Read, unix_ms),
                    }
                })
                .collect()
        });
        Ok(proto::GetFileResponse { file: Some(file_info(&FileSummary::from(file))), chunks })
    }

    async fn place_chunks_checked(&self, r: &proto::AllocateChunksRequest) -> Result<proto::AllocateChunksResponse, RpcError> {
        check_allocate(r)?;
        let exclude: Vec<StorageNodeId> = r.exclude.iter().map(|&id| StorageNodeId(id)).collect();
        let (placements, write_quorum) = self.place_chunks(FileId(r.file_id), &r.chunk_indexes, &exclude)?;
        Ok(proto::AllocateChunksResponse { placements, write_quorum })
    }

    /// Placements for chunks of the upload `file`, from this leader's view of the nodes.
    fn place_chunks(&self, file: FileId, indexes: &[u32], exclude: &[StorageNodeId]) -> Result<(Vec<proto::ChunkPlacement>, u32), RpcError> {
        let term = self.require_leader()?;
        let now = self.env.clock().now();
        let unix_ms = self.env.clock().unix_ms();
        let policy = self.config.leader.chunk_keys;
        let (placed, quorum, tokens) = self.with_leader(term, |leader, ns| {
            let upload = ns.upload(file).ok_or_else(|| namespace_error(NamespaceError::UploadNotFound(file)))?;
            let placed = leader.allocate(now, ns, upload, indexes, exclude).map_err(|e| match e {
                AllocateError::NoLiveNode { .. } | AllocateError::Settling { .. } => RpcError::Unavailable(e.to_string()),
                AllocateError::NoSpace(_) => RpcError::NoSpace(e.to_string()),
                AllocateError::NoSuchChunk { .. } => RpcError::InvalidArgument(e.to_string()),
            })?;
            let placed: Vec<Vec<proto::StorageNode>> =
                placed.into_iter().map(|nodes| nodes.into_iter().filter_map(|id| storage_node_proto(ns, id)).collect()).collect();
            let tokens: Vec<_> = indexes.iter().map(|&i| ns.chunk_keys().sign(&policy, ChunkId::derive(file, i), ChunkOp::Write, unix_ms)).collect();
            Ok::<_, RpcError>((placed, write_quorum(upload.replication), tokens))
        })?;
        let placements = indexes.iter().zip(placed).zip(tokens).map(|((&index, targets), token)| proto::ChunkPlacement { index, targets, token }).collect();
        Ok((placements, quorum))
    }
}

impl<E: Env> MetaServer<E> {
    /// Whether the user behind `peer` may make `call`, which wants `want` (see `crate::auth`).
    async fn weigh(&self, peer: &Peer, call: &str, want: Want<'_>) -> Result<(), RpcError> {
        let denied = |d: Denied| RpcError::PermissionDenied(d.to_string());
        let principal = match (&peer.token, &peer.cert) {
            (Some(token), _) => {
                // Tokens are checked against state as new as every acknowledged write (a
                // linearizable read, on the leader: followers redirect): a deposed leader
                // would still honour a token revoked since, and a new leader that has not yet
                // applied its predecessor's entries would refuse a token just made.
                let now = self.env.clock().unix_ms();
                let known = self.read(|state| state.namespace.tokens().authenticate(token, now)).await?;
                known.map_err(|reason| denied(Denied::Token { call: call.into(), reason }))?
            }
            (None, Some(cert)) => Principal::of_certificate(cert).ok_or_else(|| denied(Denied::NoRole { call: call.into(), name: cert.name.clone() }))?,
            (None, None) => return Err(denied(Denied::Anonymous { call: call.into() })),
        };
        match want {
            Want::Open => Ok(()),
            Want::Cluster(grant) => auth::permit(&principal, call, grant, None).map_err(denied),
            Want::Paths(paths) => {
                for (grant, path) in paths {
                    // A path that is not one reaches nothing: the handler refuses it (in a
                    // batch, that item alone).
                    let Ok(path) = normalize_path(path) else { continue };
                    auth::permit(&principal, call, grant, Some(&path)).map_err(denied)?;
                }
                Ok(())
            }
            Want::Uploads(ids) => {
                auth::permit(&principal, call, Grant::Write, None).map_err(denied)?;
                if principal.prefix == namespace::ROOT {
                    return Ok(());
                }
                let state = self.state.read().expect("state lock");
                // An id that names nothing is left to the handler, which says so.
                for path in ids.into_iter().filter_map(|id| state.namespace.path_of_upload(FileId(id))) {
                    auth::permit(&principal, call, Grant::Write, Some(path)).map_err(denied)?;
                }
                Ok(())
            }
        }
    }
}

/// A token as `dfs admin token list` shows it.
fn token_info(t: &TokenRecord) -> proto::TokenInfo {
    proto::TokenInfo {
        id: t.id,
        name: t.name.clone(),
        role: t.grant.to_string(),
        prefix: t.prefix.clone(),
        created_unix_ms: t.created_unix_ms,
        expires_unix_ms: t.expires_unix_ms,
        s3_access_key_id: if t.s3 { crate::tokens::s3_access_key_id(t.id) } else { String::new() },
    }
}

impl<E: Env> MetadataServiceHandler for MetaServer<E> {
    async fn admit<R: Rpc + Guard + Sync>(&self, peer: &Peer, request: &R) -> Result<(), RpcError> {
        if !peer.checked || crate::planted::on(crate::planted::Bug::UsersUnchecked) {
            return Ok(());
        }
        let want = request.want();
        if want == Want::Open {
            return Ok(());
        }
        let call = R::PATH.rsplit('/').next().unwrap_or(R::PATH);
        let result = self.weigh(peer, call, want).await;
        if let Err(RpcError::PermissionDenied(reason)) = &result {
            let caller = peer.cert.as_ref().map(|c| c.name.as_str()).unwrap_or("(no certificate)");
            tracing::warn!(node = self.config.id, peer = ?peer.addr, caller, token = peer.token.is_some(), "refused: {reason}");
        }
        result
    }

    async fn create_token(&self, r: proto::CreateTokenRequest) -> Result<proto::CreateTokenResponse, RpcError> {
        let grant: Grant = r.role.parse().map_err(|e: auth::UnknownGrant| RpcError::InvalidArgument(e.to_string()))?;
        let prefix = normalize_path(if r.prefix.is_empty() { namespace::ROOT } else { &r.prefix }).map_err(namespace_error)?;
        let now = self.env.clock().unix_ms();
        let expires_unix_ms = match r.ttl_ms {
            0 => None,
            ttl => Some(now.checked_add(ttl).ok_or_else(|| RpcError::InvalidArgument(format!("a lifetime of {ttl} ms ends past the year 500 million")))?),
        };
        // A fresh key with every creation, from the OS's randomness: the first one applied
        // becomes the cluster's (`TokenTable::create`).
        let key = self.env.random_key();
        let id = u64::from_le_bytes(self.env.random_key()[..8].try_into().expect("8 bytes"));
        let record = TokenRecord { id, name: r.name, grant, prefix, created_unix_ms: now, expires_unix_ms, s3: r.s3 };
        let record = match self.propose(Command::CreateToken { record, key: TokenKey(key) }).await? {
            Outcome::TokenCreated(record) => record,
            other => return Err(RpcError::Internal(format!("unexpected outcome {other:?}"))),
        };
        let tokens = &self.state.read().expect("state lock").namespace;
        let (token, secret) = match record.s3 {
            false => (tokens.tokens().token(&record), Some(String::new())),
            true => (Some(String::new()), tokens.tokens().s3_secret(&record)),
        };
        let no_key = || RpcError::Internal("a token was made but the cluster has no token key".into());
        Ok(proto::CreateTokenResponse { info: Some(token_info(&record)), token: token.ok_or_else(no_key)?, s3_secret_access_key: secret.ok_or_else(no_key)? })
    }

    async fn get_s3_key(&self, r: proto::GetS3KeyRequest) -> Result<proto::GetS3KeyResponse, RpcError> {
        let now = self.env.clock().unix_ms();
        let found = self.read(move |s| s.namespace.tokens().s3_key(&r.access_key_id, now).map(|(record, secret)| (token_info(record), secret))).await?;
        match found {
            Ok((info, secret_access_key)) => Ok(proto::GetS3KeyResponse { info: Some(info), secret_access_key }),
            Err(e @ crate::tokens::TokenError::Malformed) => Err(RpcError::InvalidArgument(format!("not a dfs S3 access key id: {e}"))),
            Err(e) => Err(RpcError::NotFound(e.to_string())),
        }
    }

    async fn list_tokens(&self, _r: proto::ListTokensRequest) -> Result<proto::ListTokensResponse, RpcError> {
        self.read(|s| proto::ListTokensResponse { tokens: s.namespace.tokens().records().map(token_info).collect() }).await
    }

    async fn revoke_token(&self, r: proto::RevokeTokenRequest) -> Result<proto::RevokeTokenResponse, RpcError> {
        match self.propose(Command::RevokeToken { id: r.id }).await? {
            Outcome::TokenRevoked(record) => Ok(proto::RevokeTokenResponse { info: Some(token_info(&record)) }),
            other => Err(RpcError::Internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn create_file(&self, r: proto::CreateFileRequest) -> Result<proto::CreateFileResponse, RpcError> {
        let (place_chunks, size, chunk_size) = (r.place_chunks, r.size, r.chunk_size);
        let command = self.create_command(r)?;
        let outcome = self.propose(command).await?;
        self.created(outcome, place_chunks, size, chunk_size)
    }

    async fn allocate_chunks(&self, r: proto::AllocateChunksRequest) -> Result<proto::AllocateChunksResponse, RpcError> {
        check_allocate(&r)?;
        // Linearizable like every read the client relies on: a deposed leader never places
        // chunks from its stale view of the upload.
        self.read(|_| ()).await?;
        self.place_chunks_checked(&r).await
    }

    async fn record_chunks(&self, r: proto::RecordChunksRequest) -> Result<proto::RecordChunksResponse, RpcError> {
        if r.chunks.len() > RECORD_CHUNKS_MAX {
            return Err(RpcError::InvalidArgument(format!("at most {RECORD_CHUNKS_MAX} chunks per record")));
        }
        let chunks = chunk_records(r.chunks)?;
        self.propose(Command::RecordChunks { file: FileId(r.file_id), chunks }).await?;
        Ok(proto::RecordChunksResponse {})
    }

    async fn commit_file(&self, r: proto::CommitFileRequest) -> Result<proto::CommitFileResponse, RpcError> {
        let command = self.commit_command(r)?;
        committed(self.propose(command).await?)
    }

    async fn get_file(&self, r: proto::GetFileRequest) -> Result<proto::GetFileResponse, RpcError> {
        let path = normalize_path(&r.path).map_err(namespace_error)?;
        let file: Option<FileRecord> = self.read(|s| s.namespace.file(&path).cloned()).await?;
        let file = file.ok_or_else(|| namespace_error(NamespaceError::NotFound(path)))?;
        self.file_reply(&file)
    }

    async fn create_files(&self, r: proto::CreateFilesRequest) -> Result<proto::CreateFilesResponse, RpcError> {
        check_batch_len(r.files.len())?;
        // Not the leader: the whole call is redirected, not each item refused.
        self.require_leader()?;
        let shapes: Vec<(u32, u64, u64)> = r.files.iter().map(|f| (f.place_chunks, f.size, f.chunk_size)).collect();
        let prepared: Vec<Result<Command, RpcError>> = r.files.into_iter().map(|f| self.create_command(f)).collect();
        let results = self.propose_items(prepared).await?;
        let results = results
            .into_iter()
            .zip(shapes)
            .map(|(outcome, (place, size, chunk_size))| outcome.and_then(|o| self.created(o, place, size, chunk_size)))
            .map(|result| proto::CreateFileResult {
                result: Some(match result {
                    Ok(ok) => proto::create_file_result::Result::Ok(ok),
                    Err(e) => proto::create_file_result::Result::Error(e.to_detail()),
                }),
            })
            .collect();
        Ok(proto::CreateFilesResponse { results })
    }

    async fn commit_files(&self, r: proto::CommitFilesRequest) -> Result<proto::CommitFilesResponse, RpcError> {
        check_batch_len(r.files.len())?;
        let records: usize = r.files.iter().map(|f| f.chunks.len()).sum();
        if records > RECORD_CHUNKS_MAX {
            return Err(RpcError::InvalidArgument(format!("at most {RECORD_CHUNKS_MAX} chunk records in one batch of commits, not {records}")));
        }
        self.require_leader()?;
        let prepared: Vec<Result<Command, RpcError>> = r.files.into_iter().map(|f| self.commit_command(f)).collect();
        let results = self
            .propose_items(prepared)
            .await?
            .into_iter()
            .map(|outcome| proto::CommitFileResult {
                result: Some(match outcome.and_then(committed) {
                    Ok(ok) => proto::commit_file_result::Result::Ok(ok),
                    Err(e) => proto::commit_file_result::Result::Error(e.to_detail()),
                }),
            })
            .collect();
        Ok(proto::CommitFilesResponse { results })
    }

    async fn get_files(&self, r: proto::GetFilesRequest) -> Result<proto::GetFilesResponse, RpcError> {
        check_batch_len(r.files.len())?;
        let paths: Vec<Result<String, RpcError>> = r.files.iter().map(|f| normalize_path(&f.path).map_err(namespace_error)).collect();
        // One leadership check for the whole batch: every item sees state at least as new as
        // every write acknowledged before this call.
        let files: Vec<Result<FileRecord, RpcError>> = self
            .read(|s| {
                paths.into_iter().map(|p| p.and_then(|p| s.namespace.file(&p).cloned().ok_or_else(|| namespace_error(NamespaceError::NotFound(p))))).collect()
            })
            .await?;
        let mut reply_bytes = 0usize;
        let results = files
            .into_iter()
            .map(|file| {
                let result = file.and_then(|f| self.file_reply(&f)).and_then(|reply| {
                    reply_bytes += prost::Message::encoded_len(&reply);
                    if reply_bytes > GET_FILES_REPLY_BYTES_MAX {
                        return Err(RpcError::Unavailable("this file's reply does not fit in the batch: ask for it alone".into()));
                    }
                    Ok(reply)
                });
                proto::GetFileResult {
                    result: Some(match result {
                        Ok(ok) => proto::get_file_result::Result::Ok(ok),
                        Err(e) => proto::get_file_result::Result::Error(e.to_detail()),
                    }),
                }
            })
            .collect();
        Ok(proto::GetFilesResponse { results })
    }

    async fn list_files(&self, r: proto::ListFilesRequest) -> Result<proto::ListFilesResponse, RpcError> {
        let dir = match r.prefix.trim_matches('/') {
            "" => String::new(),
            _ => normalize_path(&r.prefix).map_err(namespace_error)?,
        };
        check_start_after(&r.start_after)?;
        let limit = list_limit(r.limit);
        self.read(|s| {
            let (page, truncated) = s.namespace.list(&dir, &r.start_after, limit);
            proto::ListFilesResponse { files: page.into_iter().map(|f| file_info(&f.into())).collect(), truncated }
        })
        .await
    }

    async fn delete_file(&self, r: proto::DeleteFileRequest) -> Result<proto::DeleteFileResponse, RpcError> {
        let user = if r.user.is_empty() { "unknown" } else { r.user.as_str() };
        let trash = (!r.skip_trash && !self.config.leader.trash_interval.is_zero()).then(|| (user, self.env.clock().unix_ms()));
        let command = namespace::delete_command(&r.path, r.recursive, r.expect_file_id.map(FileId), trash).map_err(namespace_error)?;
        match self.propose(once(r.request_id, command)).await? {
            Outcome::FileDeleted(f) => {
                Ok(proto::DeleteFileResponse { file: Some(file_info(&f)), files_deleted: 1, dirs_deleted: 0, trashed_to: String::new() })
            }
            Outcome::DirDeleted { files, dirs, .. } => {
                Ok(proto::DeleteFileResponse { file: None, files_deleted: files, dirs_deleted: dirs, trashed_to: String::new() })
            }
            Outcome::Trashed { file, to, files, dirs, .. } => {
                Ok(proto::DeleteFileResponse { file: file.as_ref().map(file_info), files_deleted: files, dirs_deleted: dirs, trashed_to: to })
            }
            other => Err(RpcError::Internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn copy_file(&self, r: proto::CopyFileRequest) -> Result<proto::CopyFileResponse, RpcError> {
        let object = r.object.map(object_meta);
        let command = Command::CopyFile { src: r.src, dst: r.dst, overwrite: r.overwrite, unix_ms: self.env.clock().unix_ms(), append: r.append, object };
        match self.propose(once(r.request_id, command)).await? {
            Outcome::FileCommitted(f) => Ok(proto::CopyFileResponse { file: Some(file_info(&f)) }),
            other => Err(RpcError::Internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn set_replication(&self, r: proto::SetReplicationRequest) -> Result<proto::SetReplicationResponse, RpcError> {
        // A factor the cluster cannot hold is refused now, as at create.
        let term = self.require_leader()?;
        let now = self.env.clock().now();
        self.with_leader(term, |leader, ns| leader.check_replication(now, ns, r.replication)).map_err(|e| RpcError::FailedPrecondition(e.to_string()))?;
        match self.propose(once(r.request_id, Command::SetReplication { path: r.path, replication: r.replication })).await? {
            Outcome::ReplicationSet { files } => Ok(proto::SetReplicationResponse { files }),
            other => Err(RpcError::Internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn set_attributes(&self, r: proto::SetAttributesRequest) -> Result<proto::SetAttributesResponse, RpcError> {
        self.propose(once(r.request_id, Command::SetAttributes { path: r.path, mode: r.mode, mtime_unix_ms: r.mtime_unix_ms })).await?;
        Ok(proto::SetAttributesResponse {})
    }

    async fn list_uploads(&self, r: proto::ListUploadsRequest) -> Result<proto::ListUploadsResponse, RpcError> {
        let prefix = if r.prefix.is_empty() { namespace::ROOT.to_string() } else { normalize_path(&r.prefix).map_err(namespace_error)? };
        self.read(|s| {
            let mut uploads: Vec<&namespace::Upload> = s.namespace.uploads().filter(|u| namespace::is_at_or_under(&u.path, &prefix)).collect();
            uploads.sort_by_key(|u| (u.created_unix_ms, u.id));
            let truncated = uploads.len() > LIST_LIMIT_MAX as usize;
            let uploads = uploads
                .into_iter()
                .take(LIST_LIMIT_MAX as usize)
                .map(|u| proto::UploadInfo {
                    file_id: u.id.0,
                    path: u.path.clone(),
                    size: u.size,
                    replication: u.replication,
                    created_unix_ms: u.created_unix_ms,
                    chunks_total: crate::chunking::chunk_count(u.size, u.chunk_size),
                    chunks_recorded: u.chunks.len() as u64,
                    bytes_recorded: u.chunks.values().map(|c| c.size).sum(),
                })
                .collect();
            proto::ListUploadsResponse { uploads, truncated }
        })
        .await
    }

    async fn abort_upload(&self, r: proto::AbortUploadRequest) -> Result<proto::AbortUploadResponse, RpcError> {
        self.propose(once(r.request_id, Command::AbortUpload { file: FileId(r.file_id) })).await?;
        Ok(proto::AbortUploadResponse {})
    }

    async fn mkdir(&self, r: proto::MkdirRequest) -> Result<proto::MkdirResponse, RpcError> {
        let command = Command::Mkdir { path: r.path, parents: r.parents, unix_ms: self.env.clock().unix_ms() };
        self.propose(once(r.request_id, command)).await?;
        Ok(proto::MkdirResponse {})
    }

    async fn rename(&self, r: proto::RenameRequest) -> Result<proto::RenameResponse, RpcError> {
        let command = Command::Rename { src: r.src, dst: r.dst, unix_ms: self.env.clock().unix_ms() };
        self.propose(once(r.request_id, command)).await?;
        Ok(proto::RenameResponse {})
    }

    async fn list_dir(&self, r: proto::ListDirRequest) -> Result<proto::ListDirResponse, RpcError> {
        let path = normalize_path(if r.path.is_empty() { namespace::ROOT } else { &r.path }).map_err(namespace_error)?;
        check_start_after(&r.start_after)?;
        let limit = list_limit(r.limit);
        let listed = self
            .read(|s| {
                let page =
                    if r.recursive { s.namespace.list_recursive(&path, &r.start_after, limit) } else { s.namespace.list_dir(&path, &r.start_after, limit) };
                page.map(|(entries, truncated)| proto::ListDirResponse { entries: entries.iter().map(dir_entry).collect(), truncated })
            })
            .await?;
        listed.map_err(namespace_error)
    }

    async fn cluster_status(&self, _r: proto::ClusterStatusRequest) -> Result<proto::ClusterStatusResponse, RpcError> {
        let (file_count, total_bytes) = self.read(|s| (s.namespace.file_count(), s.namespace.total_bytes())).await?;
        let metrics = self.raft.metrics().borrow().clone();
        let now = self.env.clock().now();
        let storage_nodes = self.with_leader(metrics.current_term, |leader, ns| {
            leader
                .nodes(now, ns)
                .into_iter()
                .map(|n| proto::StorageNodeStatus {
                    repairs_in_flight: leader.repairs_in_flight(n.id) as u64,
                    state: n.state().to_string(),
                    node: Some(proto::StorageNode { id: n.id.0, addr: n.addr.clone() }),
                    rack: n.rack.clone().unwrap_or_default(),
                    capacity_bytes: n.stats.capacity_bytes,
                    free_bytes: n.stats.free_bytes,
                    chunk_count: n.stats.chunk_count,
                    stored_bytes: n.stats.stored_bytes,
                    reserve_bytes: n.stats.reserve_bytes,
                    volume_id: n.stats.volume_id,
                    last_heartbeat_ms_ago: n.last_heartbeat_ago.map(|ago| ago.as_millis() as u64).unwrap_or(u64::MAX),
                })
                .collect()
        });
        Ok(proto::ClusterStatusResponse {
            leader: self.leader_hint(metrics.current_leader),
            members: metrics.membership_config.membership().nodes().map(|(id, node)| proto::MetaNode { id: *id, addr: node.addr.clone() }).collect(),
            term: metrics.current_term,
            commit_index: metrics.last_applied.map(|l| l.index).unwrap_or(0),
            storage_nodes,
            file_count,
            total_bytes,
        })
    }

    async fn register_storage(&self, r: proto::RegisterStorageRequest) -> Result<proto::RegisterStorageResponse, RpcError> {
        let node = r.node.ok_or_else(|| RpcError::InvalidArgument("register: node missing".into()))?;
        if node.addr.is_empty() {
            return Err(RpcError::InvalidArgument("register: node address missing".into()));
        }
        let cluster_id = self.admit_storage(StorageNodeId(node.id), &r.cluster_id).await?;
        let rack = Some(r.rack.clone()).filter(|r| !r.is_empty());
        self.propose(Command::RegisterStorageNode { node: StorageNodeId(node.id), addr: node.addr, capacity_bytes: r.capacity_bytes, rack }).await?;
        tracing::info!(node = %StorageNodeId(node.id), "storage node registered");
        let chunk_keys = self.state.read().expect("state lock").namespace.chunk_keys().to_proto();
        Ok(proto::RegisterStorageResponse { cluster_id, chunk_keys })
    }

    async fn heartbeat(&self, r: proto::HeartbeatRequest) -> Result<proto::HeartbeatResponse, RpcError> {
        let term = self.require_leader()?;
        let node = r.node.ok_or_else(|| RpcError::InvalidArgument("heartbeat: node missing".into()))?;
        self.admit_storage(StorageNodeId(node.id), &r.cluster_id).await?;
        let heartbeat = Heartbeat {
            node: StorageNodeId(node.id),
            addr: node.addr,
            stats: NodeStats {
                capacity_bytes: r.capacity_bytes,
                free_bytes: r.free_bytes,
                chunk_count: r.chunk_count,
                stored_bytes: r.stored_bytes,
                reserve_bytes: r.reserve_bytes,
                volume_id: r.volume_id,
            },
            // A node reports at most this many per heartbeat (`storage_reports`); more is cut.
            deleted: r.deleted_chunks.iter().take(REPLICA_REPORTS_MAX).filter_map(|c| ChunkId::from_slice(c)).collect(),
            stored: r
                .stored_chunks
                .iter()
                .take(REPLICA_REPORTS_MAX)
                .filter_map(|c| Some(ReplicaReport { chunk: ChunkId::from_slice(&c.chunk_id)?, size: c.size, sha256: Sha256Digest::from_slice(&c.sha256)? }))
                .collect(),
            inventory: (r.inventory_pass != 0).then(|| InventoryPart {
                pass: r.inventory_pass,
                from: ChunkId::from_slice(&r.inventory_from),
                through: ChunkId::from_slice(&r.inventory_through),
                done: r.inventory_done,
            }),
            repairs_running: r.repairs_running.iter().take(REPAIRS_REPORTED_MAX).filter_map(|c| ChunkId::from_slice(c)).collect(),
            repairs_failed: r
                .repairs_failed
                .iter()
                .take(REPAIRS_REPORTED_MAX)
                .filter_map(|f| Some((ChunkId::from_slice(&f.chunk_id)?, f.error.chars().take(REASON_MAX_CHARS).collect())))
                .collect(),
            scrub_request_seen: r.scrub_request_seen,
            stopping: r.stopping,
        };
        let now = self.env.clock().now();
        let decision = self.with_leader(term, |leader, ns| leader.on_heartbeat(now, ns, heartbeat));
        for (job, _) in &decision.reply.repair_jobs {
            tracing::debug!(chunk = %job.chunk, target = %StorageNodeId(node.id), "repair job handed out");
        }
        for chunk in &decision.reply.delete_chunks {
            tracing::debug!(%chunk, node = %StorageNodeId(node.id), "replica deletion handed out");
        }
        for command in decision.propose {
            if let Outcome::ReplicasReported(tally) = self.propose(command).await? {
                if tally.learned + tally.discarded > 0 {
                    tracing::info!(node = %StorageNodeId(node.id), learned = tally.learned, discarded = tally.discarded, "replica report");
                }
            }
        }
        let unix_ms = self.env.clock().unix_ms();
        let policy = self.config.leader.chunk_keys;
        let keys = self.state.read().expect("state lock").namespace.chunk_keys().clone();
        Ok(proto::HeartbeatResponse {
            chunk_keys: keys.to_proto(),
            register: decision.reply.register,
            delete_chunks: decision.reply.delete_chunks.iter().map(|c| c.as_bytes().to_vec().into()).collect(),
            peers: decision.reply.peers.into_iter().map(|(id, addr)| proto::StorageNode { id: id.0, addr }).collect(),
            repair_jobs: decision
                .reply
                .repair_jobs
                .into_iter()
                .map(|(j, sources)| proto::RepairJob {
                    chunk_id: j.chunk.as_bytes().to_vec().into(),
                    size: j.size,
                    sha256: j.sha256.0.to_vec().into(),
                    sources: sources.into_iter().map(|(id, addr)| proto::StorageNode { id: id.0, addr }).collect(),
                    chain: j.chain.map(Chain::to_proto),
                    token: keys.sign(&policy, j.chunk, ChunkOp::Read, unix_ms),
                })
                .collect(),
            scrub_now: decision.reply.scrub_now,
            scrub_request: decision.reply.scrub_request,
            inventory_wanted: decision.reply.inventory_wanted,
        })
    }

    async fn scrub_storage_node(&self, r: proto::ScrubStorageNodeRequest) -> Result<proto::ScrubStorageNodeResponse, RpcError> {
        let term = self.require_leader()?;
        let found = self.with_leader(term, |leader, ns| leader.request_scrub(ns, &r.node));
        let (id, addr) = found.ok_or_else(|| unknown_node(&r.node))?;
        tracing::info!(node = %id, "scrub requested");
        Ok(proto::ScrubStorageNodeResponse { node: Some(proto::StorageNode { id: id.0, addr }) })
    }

    async fn fsck(&self, r: proto::FsckRequest) -> Result<proto::FsckResponse, RpcError> {
        let term = self.require_leader()?;
        let path = if r.path.is_empty() { namespace::ROOT.to_string() } else { normalize_path(&r.path).map_err(namespace_error)? };
        // Reads the leader's applied state, made current first like every read.
        self.read(|_| ()).await?;
        let problems_max = match r.problems_max {
            0 => FSCK_PROBLEMS_DEFAULT,
            n => (n as usize).min(FSCK_PROBLEMS_MAX),
        };
        let now = self.env.clock().now();
        let report = self.with_leader(term, |leader, ns| {
            if path != namespace::ROOT && ns.kind(&path).is_none() {
                return Err(RpcError::NotFound(format!("{path}: no such file or directory")));
            }
            Ok(leader.fsck(now, ns, &path, problems_max))
        })?;
        Ok(proto::FsckResponse {
            files: report.files,
            chunks: report.chunks,
            bytes: report.bytes,
            under_replicated: report.under_replicated,
            over_replicated: report.over_replicated,
            corrupt: report.corrupt,
            missing: report.missing,
            unreachable: report.unreachable,
            repairs_in_flight: report.repairs_in_flight,
            problems: report
                .problems
                .into_iter()
                .map(|p| proto::FsckProblem {
                    path: p.path,
                    index: p.index,
                    chunk_id: p.chunk.as_bytes().to_vec().into(),
                    kind: p.kind.to_string(),
                    valid_replicas: p.valid as u32,
                    replication: p.replication,
                })
                .collect(),
            problems_truncated: report.problems_truncated,
        })
    }

    async fn set_draining(&self, r: proto::SetDrainingRequest) -> Result<proto::SetDrainingResponse, RpcError> {
        let term = self.require_leader()?;
        let found = self.with_leader(term, |_, ns| resolve_node(ns, &r.node));
        let (id, addr) = found.ok_or_else(|| unknown_node(&r.node))?;
        self.propose(Command::SetDraining { node: id, draining: r.draining }).await?;
        tracing::info!(node = %id, draining = r.draining, "storage node {}", if r.draining { "decommissioning" } else { "back in service" });
        Ok(proto::SetDrainingResponse { node: Some(proto::StorageNode { id: id.0, addr }) })
    }

    async fn forget_storage_node(&self, r: proto::ForgetStorageNodeRequest) -> Result<proto::ForgetStorageNodeResponse, RpcError> {
        let term = self.require_leader()?;
        let now = self.env.clock().now();
        let found = self.with_leader(term, |leader, ns| resolve_node(ns, &r.node).map(|(id, addr)| (id, addr, leader.check_forget(now, id))));
        let (id, addr, allowed) = found.ok_or_else(|| unknown_node(&r.node))?;
        allowed.map_err(|e| RpcError::FailedPrecondition(e.to_string()))?;
        self.propose(Command::ForgetStorageNode { node: id }).await?;
        tracing::warn!(node = %id, "storage node forgotten");
        Ok(proto::ForgetStorageNodeResponse { node: Some(proto::StorageNode { id: id.0, addr }) })
    }

    async fn report_bad_replica(&self, r: proto::ReportBadReplicaRequest) -> Result<proto::ReportBadReplicaResponse, RpcError> {
        let term = self.require_leader()?;
        let chunk = ChunkId::from_slice(&r.chunk_id).ok_or_else(|| RpcError::InvalidArgument("chunk id must be 16 bytes".into()))?;
        let node = StorageNodeId(r.node_id);
        let reason: String = r.reason.chars().take(REASON_MAX_CHARS).collect();
        tracing::warn!(%chunk, %node, %reason, "replica reported bad; no longer served");
        let now = self.env.clock().now();
        self.with_leader(term, |leader, _| leader.record_event(now, "damage", format!("storage node {node}: replica of chunk {chunk} is bad ({reason})")));
        self.propose(Command::MarkReplicaBad { chunk, node }).await?;
        Ok(proto::ReportBadReplicaResponse {})
    }

    async fn add_meta_member(&self, r: proto::AddMetaMemberRequest) -> Result<proto::AddMetaMemberResponse, RpcError> {
        self.require_leader()?;
        let steps = engine::plan_add(&self.raft_status(), self.config.id, r.id, &r.addr)?;
        let adds = steps.iter().any(|s| matches!(s, MembershipStep::AddLearner { .. }));
        self.change_membership(steps).await?;
        if adds {
            tracing::info!(id = r.id, addr = %r.addr, "metadata member added");
        }
        Ok(proto::AddMetaMemberResponse { status: Some(self.membership_status()) })
    }

    async fn remove_meta_member(&self, r: proto::RemoveMetaMemberRequest) -> Result<proto::RemoveMetaMemberResponse, RpcError> {
        self.require_leader()?;
        let steps = engine::plan_remove(&self.raft_status(), self.config.id, r.id)?;
        self.change_membership(steps).await?;
        tracing::info!(id = r.id, "metadata member removed");
        Ok(proto::RemoveMetaMemberResponse { status: Some(self.membership_status()) })
    }

    async fn meta_status(&self, _r: proto::MetaStatusRequest) -> Result<proto::MetaStatusResponse, RpcError> {
        // Lag is known only to the leader: followers redirect like every other call.
        self.require_leader()?;
        Ok(self.membership_status())
    }
}

impl<E: Env> RaftServiceHandler for MetaServer<E> {
    async fn append_entries(&self, r: proto::AppendEntriesRequest) -> Result<proto::AppendEntriesResponse, RpcError> {
        let rpc = serde_json::from_slice(&r.payload).map_err(|e| RpcError::InvalidArgument(format!("append entries: {e}")))?;
        let result = self.raft.append_entries(rpc).await;
        Ok(proto::AppendEntriesResponse { payload: json(&result) })
    }

    async fn vote(&self, r: proto::VoteRequest) -> Result<proto::VoteResponse, RpcError> {
        let rpc = serde_json::from_slice(&r.payload).map_err(|e| RpcError::InvalidArgument(format!("vote: {e}")))?;
        let result = self.raft.vote(rpc).await;
        Ok(proto::VoteResponse { payload: json(&result) })
    }

    async fn campaign(&self, _r: proto::CampaignRequest) -> Result<proto::CampaignResponse, RpcError> {
        tracing::info!(id = self.config.id, "asked to take over leadership: starting an election");
        self.raft.trigger().elect().await.map_err(|e| RpcError::Unavailable(format!("metadata node stopped: {e}")))?;
        Ok(proto::CampaignResponse {})
    }

    async fn install_snapshot(&self, r: proto::InstallSnapshotRequest) -> Result<proto::InstallSnapshotResponse, RpcError> {
        let (vote, meta): (openraft::Vote<MetaNodeId>, openraft::SnapshotMeta<MetaNodeId, BasicNode>) =
            serde_json::from_slice(&r.payload).map_err(|e| RpcError::InvalidArgument(format!("install snapshot: {e}")))?;
        let path = incoming_snapshot_path(&self.config.data_dir, &meta.snapshot_id);
        let disk = self.env.disk();
        let local = |e: std::io::Error| RpcError::Internal(format!("{}: {e}", path.display()));
        // Held across the write: pieces are taken one at a time, in order.
        let mut incoming = self.incoming.lock().await;
        if r.offset == 0 {
            if let Some(replaced) = incoming.accept(&meta.snapshot_id, 0)? {
                let _ = disk.remove_file(&incoming_snapshot_path(&self.config.data_dir, &replaced)).await;
            }
            let _ = disk.remove_file(&path).await;
        } else {
            incoming.accept(&meta.snapshot_id, r.offset)?;
        }
        disk.write_at(&path, r.offset, r.snapshot.clone()).await.map_err(local)?;
        let received = r.offset + r.snapshot.len() as u64;
        incoming.written(&meta.snapshot_id, received, r.done);
        if !r.done {
            return Ok(proto::InstallSnapshotResponse { payload: bytes::Bytes::new() });
        }
        drop(incoming);
        disk.sync_file(&path).await.map_err(local)?;
        let snapshot = openraft::Snapshot { meta, snapshot: Box::new(SnapshotFile { path, len: received }) };
        let result = self.raft.install_full_snapshot(vote, snapshot).await;
        Ok(proto::InstallSnapshotResponse { payload: json(&result) })
    }
}

fn json<T: serde::Serialize>(v: &T) -> bytes::Bytes {
    serde_json::to_vec(v).expect("raft messages serialize").into()
}

#[cfg(test)]
mod bounds {
    use super::*;

    #[test]
    fn allocations_are_bounded_before_any_work() {
        let at = proto::AllocateChunksRequest { chunk_indexes: vec![0; ALLOCATE_CHUNKS_MAX], exclude: vec![1; ALLOCATE_EXCLUDE_MAX], ..Default::default() };
        assert!(check_allocate(&at).is_ok());
        let more_chunks = proto::AllocateChunksRequest { chunk_indexes: vec![0; ALLOCATE_CHUNKS_MAX + 1], ..Default::default() };
        assert!(matches!(check_allocate(&more_chunks), Err(RpcError::InvalidArgument(_))));
        let more_excluded = proto::AllocateChunksRequest { exclude: vec![1; ALLOCATE_EXCLUDE_MAX + 1], ..Default::default() };
        assert!(matches!(check_allocate(&more_excluded), Err(RpcError::InvalidArgument(_))));
    }

    #[test]
    fn listings_are_bounded() {
        assert_eq!(list_limit(0), LIST_LIMIT_DEFAULT as usize);
        assert_eq!(list_limit(7), 7);
        assert_eq!(list_limit(u32::MAX), LIST_LIMIT_MAX as usize);
        assert!(check_start_after(&"a".repeat(PATH_MAX_BYTES)).is_ok());
        assert!(check_start_after(&"a".repeat(PATH_MAX_BYTES + 1)).is_err());
        assert!(check_batch_len(BATCH_FILES_MAX).is_ok());
        assert!(check_batch_len(BATCH_FILES_MAX + 1).is_err());
        assert!(check_batch_len(0).is_err());
    }

    #[test]
    fn chunk_records_are_bounded_before_their_replica_sets_are_made() {
        let info = |replicas: usize| proto::ChunkInfo { index: 0, size: 1, sha256: vec![0; 32].into(), replicas: (1..=replicas as u64).collect(), chain: None };
        assert!(chunk_records(vec![info(REPLICATION_MAX as usize)]).is_ok());
        assert!(matches!(chunk_records(vec![info(REPLICATION_MAX as usize + 1)]), Err(RpcError::InvalidArgument(_))));
        let short_sum = proto::ChunkInfo { sha256: vec![0; 31].into(), ..info(1) };
        assert!(matches!(chunk_records(vec![short_sum]), Err(RpcError::InvalidArgument(_))));
    }
}

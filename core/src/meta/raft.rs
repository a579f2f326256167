//! openraft glue for the metadata cluster: the type configuration, the log and state-machine
//! storage, and the Raft network over our `Transport`.
//!
//! The state machine is `Namespace::apply`; openraft only orders and carries the commands.
//! Storage is in memory in this version (durable redb storage over `Disk` replaces it without
//! touching anything else): a metadata node that restarts rejoins as a fresh member and catches
//! up from the leader.
//!
//! Raft messages travel as JSON inside the protobuf envelopes of `RaftService`.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use openraft::error::{Fatal, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    AsyncRuntime, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    RaftTypeConfig, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};

use crate::env::{call_with_timeout, Env, Transport};
use crate::ids::MetaNodeId;
use crate::namespace::{ApplyResult, Command, Namespace, Outcome};
use crate::proto;
use crate::rpc::RpcError;

/// openraft's type configuration, generic over the async runtime so that the same metadata
/// code runs on tokio in production and on madsim in simulation.
pub struct MetaTypes<RT>(PhantomData<fn() -> RT>);

// Written out because derives would demand the same traits of `RT`.
impl<RT> fmt::Debug for MetaTypes<RT> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MetaTypes")
    }
}
impl<RT> Clone for MetaTypes<RT> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<RT> Copy for MetaTypes<RT> {}
impl<RT> Default for MetaTypes<RT> {
    fn default() -> Self {
        MetaTypes(PhantomData)
    }
}
impl<RT> PartialEq for MetaTypes<RT> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<RT> Eq for MetaTypes<RT> {}
impl<RT> PartialOrd for MetaTypes<RT> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<RT> Ord for MetaTypes<RT> {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl<RT: AsyncRuntime> RaftTypeConfig for MetaTypes<RT> {
    type D = Command;
    type R = ApplyResult;
    type NodeId = MetaNodeId;
    type Node = BasicNode;
    type Entry = Entry<Self>;
    /// A serialized `Namespace`.
    type SnapshotData = Vec<u8>;
    type AsyncRuntime = RT;
    type Responder = openraft::impls::OneshotResponder<Self>;
}

pub type MetaRaft<RT> = openraft::Raft<MetaTypes<RT>>;

type StorageResult<T> = Result<T, StorageError<MetaNodeId>>;

// ---- log storage ------------------------------------------------------------------------

#[derive(Default)]
struct LogData<RT: AsyncRuntime> {
    last_purged: Option<LogId<MetaNodeId>>,
    entries: BTreeMap<u64, Entry<MetaTypes<RT>>>,
    committed: Option<LogId<MetaNodeId>>,
    vote: Option<Vote<MetaNodeId>>,
}

/// The Raft log, vote and commit index, in memory.
pub struct MemLogStore<RT: AsyncRuntime> {
    data: Arc<Mutex<LogData<RT>>>,
}

impl<RT: AsyncRuntime> Default for MemLogStore<RT> {
    fn default() -> Self {
        MemLogStore {
            data: Arc::new(Mutex::new(LogData { last_purged: None, entries: BTreeMap::new(), committed: None, vote: None })),
        }
    }
}

impl<RT: AsyncRuntime> Clone for MemLogStore<RT> {
    fn clone(&self) -> Self {
        MemLogStore { data: self.data.clone() }
    }
}

impl<RT: AsyncRuntime> RaftLogReader<MetaTypes<RT>> for MemLogStore<RT> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<MetaTypes<RT>>>> {
        let data = self.data.lock().expect("log lock");
        Ok(data.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl<RT: AsyncRuntime> RaftLogStorage<MetaTypes<RT>> for MemLogStore<RT> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<MetaTypes<RT>>> {
        let data = self.data.lock().expect("log lock");
        let last = data.entries.values().next_back().map(|e| e.log_id).or(data.last_purged);
        Ok(LogState { last_purged_log_id: data.last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<MetaNodeId>) -> StorageResult<()> {
        self.data.lock().expect("log lock").vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<MetaNodeId>>> {
        Ok(self.data.lock().expect("log lock").vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<MetaNodeId>>) -> StorageResult<()> {
        self.data.lock().expect("log lock").committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<MetaNodeId>>> {
        Ok(self.data.lock().expect("log lock").committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<MetaTypes<RT>>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<MetaTypes<RT>>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let mut data = self.data.lock().expect("log lock");
            for entry in entries {
                data.entries.insert(entry.log_id.index, entry);
            }
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<MetaNodeId>) -> StorageResult<()> {
        let mut data = self.data.lock().expect("log lock");
        data.entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<MetaNodeId>) -> StorageResult<()> {
        let mut data = self.data.lock().expect("log lock");
        data.last_purged = Some(log_id);
        let keep = data.entries.split_off(&(log_id.index + 1));
        data.entries = keep;
        Ok(())
    }
}

// ---- state machine ----------------------------------------------------------------------

/// The applied state, shared with the metadata server for reads.
#[derive(Debug, Default)]
pub struct AppliedState {
    pub last_applied: Option<LogId<MetaNodeId>>,
    pub membership: StoredMembership<MetaNodeId, BasicNode>,
    pub namespace: Namespace,
}

pub type SharedState = Arc<RwLock<AppliedState>>;

#[derive(Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta<MetaNodeId, BasicNode>,
    data: Vec<u8>,
}

/// What a snapshot holds besides openraft's own metadata.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    namespace: Namespace,
}

pub struct MetaStateMachine {
    state: SharedState,
    snapshot: Arc<Mutex<Option<StoredSnapshot>>>,
    snapshots_built: Arc<Mutex<u64>>,
}

impl MetaStateMachine {
    pub fn new() -> (Self, SharedState) {
        let state = SharedState::default();
        let sm = MetaStateMachine {
            state: state.clone(),
            snapshot: Arc::default(),
            snapshots_built: Arc::default(),
        };
        (sm, state)
    }

    fn builder(&self) -> Self {
        MetaStateMachine {
            state: self.state.clone(),
            snapshot: self.snapshot.clone(),
            snapshots_built: self.snapshots_built.clone(),
        }
    }
}

impl<RT: AsyncRuntime> RaftSnapshotBuilder<MetaTypes<RT>> for MetaStateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<MetaTypes<RT>>> {
        let (data, last_applied, membership) = {
            let state = self.state.read().expect("state lock");
            let body = serde_json::to_vec(&SnapshotBody { namespace: state.namespace.clone() })
                .map_err(|e| StorageIOError::read_state_machine(&e))?;
            (body, state.last_applied, state.membership.clone())
        };
        let seq = {
            let mut n = self.snapshots_built.lock().expect("counter lock");
            *n += 1;
            *n
        };
        let snapshot_id = match last_applied {
            Some(id) => format!("{}-{}-{seq}", id.leader_id, id.index),
            None => format!("none-{seq}"),
        };
        let meta = SnapshotMeta { last_log_id: last_applied, last_membership: membership, snapshot_id };
        *self.snapshot.lock().expect("snapshot lock") = Some(StoredSnapshot { meta: meta.clone(), data: data.clone() });
        Ok(Snapshot { meta, snapshot: Box::new(data) })
    }
}

impl<RT: AsyncRuntime> RaftStateMachine<MetaTypes<RT>> for MetaStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<MetaNodeId>>, StoredMembership<MetaNodeId, BasicNode>)> {
        let state = self.state.read().expect("state lock");
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<ApplyResult>>
    where
        I: IntoIterator<Item = Entry<MetaTypes<RT>>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut state = self.state.write().expect("state lock");
        let mut results = Vec::new();
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            let result = match entry.payload {
                EntryPayload::Blank => Ok(Outcome::Done),
                EntryPayload::Normal(command) => state.namespace.apply(command),
                EntryPayload::Membership(m) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), m);
                    Ok(Outcome::Done)
                }
            };
            results.push(result);
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.builder()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Vec<u8>>> {
        Ok(Box::default())
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta<MetaNodeId, BasicNode>, snapshot: Box<Vec<u8>>) -> StorageResult<()> {
        let body: SnapshotBody = serde_json::from_slice(&snapshot)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        {
            let mut state = self.state.write().expect("state lock");
            state.namespace = body.namespace;
            state.last_applied = meta.last_log_id;
            state.membership = meta.last_membership.clone();
        }
        *self.snapshot.lock().expect("snapshot lock") = Some(StoredSnapshot { meta: meta.clone(), data: *snapshot });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<MetaTypes<RT>>>> {
        let stored = self.snapshot.lock().expect("snapshot lock").clone();
        Ok(stored.map(|s| Snapshot { meta: s.meta, snapshot: Box::new(s.data) }))
    }
}

// ---- network ----------------------------------------------------------------------------

/// Creates a `RaftPeer` per target node.
pub struct RaftNet<E: Env> {
    env: E,
}

impl<E: Env> RaftNet<E> {
    pub fn new(env: E) -> Self {
        RaftNet { env }
    }
}

pub struct RaftPeer<E: Env> {
    env: E,
    target: MetaNodeId,
    addr: String,
}

impl<E: Env> RaftNetworkFactory<MetaTypes<E::RaftRuntime>> for RaftNet<E> {
    type Network = RaftPeer<E>;

    async fn new_client(&mut self, target: MetaNodeId, node: &BasicNode) -> Self::Network {
        RaftPeer { env: self.env.clone(), target, addr: node.addr.clone() }
    }
}

fn unreachable(e: impl std::error::Error + 'static) -> Unreachable {
    Unreachable::new(&e)
}

impl<E: Env> RaftPeer<E> {
    /// Sends one envelope and decodes the JSON answer, within openraft's deadline.
    async fn exchange<R, Resp>(&self, request: R, ttl: Duration) -> Result<Resp, Unreachable>
    where
        R: crate::rpc::Rpc,
        Resp: for<'de> Deserialize<'de>,
        R::Response: Envelope,
    {
        let call = self.env.transport().unary(&self.addr, request);
        let reply = call_with_timeout(self.env.clock(), ttl, &self.addr, call).await.map_err(unreachable)?;
        serde_json::from_slice(reply.payload()).map_err(|e| unreachable(RpcError::Internal(format!("undecodable raft reply: {e}"))))
    }
}

/// Raft envelopes all carry a JSON payload.
pub trait Envelope {
    fn payload(&self) -> &[u8];
}
impl Envelope for proto::AppendEntriesResponse {
    fn payload(&self) -> &[u8] {
        &self.payload
    }
}
impl Envelope for proto::VoteResponse {
    fn payload(&self) -> &[u8] {
        &self.payload
    }
}
impl Envelope for proto::InstallSnapshotResponse {
    fn payload(&self) -> &[u8] {
        &self.payload
    }
}

fn to_json<T: Serialize>(v: &T) -> bytes::Bytes {
    serde_json::to_vec(v).expect("raft messages serialize").into()
}

type RpcResult<T> = Result<T, RPCError<MetaNodeId, BasicNode, RaftError<MetaNodeId>>>;

impl<E: Env> RaftNetwork<MetaTypes<E::RaftRuntime>> for RaftPeer<E> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<MetaTypes<E::RaftRuntime>>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<MetaNodeId>> {
        let request = proto::AppendEntriesRequest { payload: to_json(&rpc) };
        let reply: Result<AppendEntriesResponse<MetaNodeId>, RaftError<MetaNodeId>> =
            self.exchange(request, option.hard_ttl()).await?;
        reply.map_err(|e| RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e)))
    }

    async fn vote(&mut self, rpc: VoteRequest<MetaNodeId>, option: RPCOption) -> RpcResult<VoteResponse<MetaNodeId>> {
        let request = proto::VoteRequest { payload: to_json(&rpc) };
        let reply: Result<VoteResponse<MetaNodeId>, RaftError<MetaNodeId>> = self.exchange(request, option.hard_ttl()).await?;
        reply.map_err(|e| RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e)))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<MetaNodeId>,
        snapshot: Snapshot<MetaTypes<E::RaftRuntime>>,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<MetaNodeId>, StreamingError<MetaTypes<E::RaftRuntime>, Fatal<MetaNodeId>>> {
        let request = proto::InstallSnapshotRequest {
            payload: to_json(&(vote, &snapshot.meta)),
            snapshot: (*snapshot.snapshot).into(),
        };
        let reply: Result<SnapshotResponse<MetaNodeId>, Fatal<MetaNodeId>> = self.exchange(request, option.hard_ttl()).await?;
        reply.map_err(|e| StreamingError::RemoteError(openraft::error::RemoteError::new(self.target, e)))
    }
}

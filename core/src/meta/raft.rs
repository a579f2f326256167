//! openraft glue for the metadata cluster: the Raft network over our `Transport` (the type
//! configuration is in `types`). Storage lives in `log_store` (log, vote) and `state_machine` (the
//! `Namespace` and its snapshot files).
//!
//! The state machine is `Namespace::apply`; openraft only orders and carries the commands.
//! Raft messages travel as JSON inside the protobuf envelopes of `RaftService`. A snapshot
//! travels as its file, read and sent in pieces of `snapshot_piece_bytes`, each with its own
//! deadline, so neither side holds more than a piece of it in flight and a namespace of any
//! size gets across (openraft's single 200 ms install deadline would not).

use std::time::Duration;

use openraft::error::{Fatal, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::storage::Snapshot;
use openraft::{BasicNode, OptionalSend, Vote};
use serde::{Deserialize, Serialize};

use super::types::MetaTypes;
use crate::env::{call_with_timeout, Disk, Env, Transport};
use crate::ids::MetaNodeId;
use crate::proto;
use crate::rpc::RpcError;

// ---- network ----------------------------------------------------------------------------

/// Creates a `RaftPeer` per target node.
pub struct RaftNet<E: Env> {
    env: E,
    snapshots: SnapshotTransfer,
}

/// How a snapshot is sent: in pieces, each with its own deadline.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotTransfer {
    pub piece_bytes: u64,
    pub piece_timeout: Duration,
    /// For the last piece, whose answer waits for the follower to load the whole snapshot.
    pub install_timeout: Duration,
}

impl<E: Env> RaftNet<E> {
    pub fn new(env: E, snapshots: SnapshotTransfer) -> Self {
        RaftNet { env, snapshots }
    }
}

pub struct RaftPeer<E: Env> {
    env: E,
    target: MetaNodeId,
    addr: String,
    snapshots: SnapshotTransfer,
}

impl<E: Env> RaftNetworkFactory<MetaTypes<E::RaftRuntime>> for RaftNet<E> {
    type Network = RaftPeer<E>;

    async fn new_client(&mut self, target: MetaNodeId, node: &BasicNode) -> Self::Network {
        RaftPeer { env: self.env.clone(), target, addr: node.addr.clone(), snapshots: self.snapshots }
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
        serde_json::from_slice(reply.payload()).map_err(|e| unreachable(RpcError::Malformed(format!("undecodable raft reply: {e}"))))
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
        let reply: Result<AppendEntriesResponse<MetaNodeId>, RaftError<MetaNodeId>> = self.exchange(request, option.hard_ttl()).await?;
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
        let _ = option; // each piece has its own deadline (see SnapshotTransfer)
        let file = &*snapshot.snapshot;
        let header = to_json(&(vote, &snapshot.meta));
        let piece = self.snapshots.piece_bytes.max(1);
        let mut offset = 0u64;
        loop {
            let len = piece.min(file.len - offset);
            let data = self.env.disk().read_at(&file.path, offset, len).await.map_err(|e| StreamingError::Unreachable(unreachable(e)))?;
            if data.len() as u64 != len {
                let e = RpcError::Internal(format!("{}: snapshot file shorter than recorded", file.path.display()));
                return Err(StreamingError::Unreachable(unreachable(e)));
            }
            let done = offset + len >= file.len;
            let request = proto::InstallSnapshotRequest { payload: header.clone(), snapshot: data, offset, done };
            let ttl = if done { self.snapshots.install_timeout } else { self.snapshots.piece_timeout };
            if !done {
                let call = self.env.transport().unary(&self.addr, request);
                call_with_timeout(self.env.clock(), ttl, &self.addr, call).await.map_err(|e| StreamingError::Unreachable(unreachable(e)))?;
                offset += len;
                continue;
            }
            let reply: Result<SnapshotResponse<MetaNodeId>, Fatal<MetaNodeId>> = self.exchange(request, ttl).await?;
            return reply.map_err(|e| StreamingError::RemoteError(openraft::error::RemoteError::new(self.target, e)));
        }
    }
}

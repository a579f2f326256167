//! Small chunks in batches (`ChunkBatchService`): the storage node's side.
//!
//! What it promises: every chunk of a call is answered on its own, as `WriteChunk` and
//! `ReadChunk` answer one chunk: a write is verified against its header before anything is
//! stored, durable here (and on the replicas named in the reply) before it is acknowledged, and
//! forwarded only to registered peers; a read is verified on this node before its bytes leave
//! it, and a damaged replica is quarantined and reported. A call holds one stream slot of its
//! kind, as one chunk stream does, so batches are back-pressured like streams.
//!
//! Why batches: a 4 KiB chunk costs far more in round trips, blocking calls and fsyncs than in
//! bytes. A batch's chunks are written with two flushes of the filesystem in all
//! (`chunk_store::batch_write_steps`) and one blocking call, and forwarded to each replica in
//! one call.
//!
//! What it does not do: a call beyond `CHUNK_BATCH_MAX` chunks or `CHUNK_BATCH_BYTES_MAX`
//! bytes, or holding a chunk over `SMALL_CHUNK_BYTES_MAX`, is refused whole (the caller's
//! fault); larger chunks stream. A disk error fails every chunk of the batch that was not
//! already stored.
//!
//! How it is driven: the transports call the generated `ChunkBatchServiceHandler`.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::future::join_all;

use super::service::{checksums, upload_meta};
use super::{write_error, StorageNode, WriteGuard};
use crate::chunk_store::{self, BatchItem, ChunkMeta, ChunkStoreError, WriteDecision};
use crate::chunk_tokens::ChunkOp;
use crate::env::{call_with_timeout, Disk, Env, Transport};
use crate::fault::{self, Site};
use crate::ids::ChunkId;
use crate::limits::{CHUNK_BATCH_BYTES_MAX, CHUNK_BATCH_MAX, CHUNK_FRAME_BYTES, SMALL_CHUNK_BYTES_MAX};
use crate::namespace::ReplicaReport;
use crate::proto;
use crate::rpc::{ChunkUpload, RpcError};

/// Refuses a write batch over the limits, before anything is done with it.
fn check_batch(chunks: &[proto::ChunkWrite]) -> Result<(), RpcError> {
    if chunks.len() > CHUNK_BATCH_MAX {
        return Err(RpcError::InvalidArgument(format!("{} chunks in one batch; at most {CHUNK_BATCH_MAX}", chunks.len())));
    }
    if let Some(big) = chunks.iter().find(|c| c.data.len() > SMALL_CHUNK_BYTES_MAX) {
        return Err(RpcError::InvalidArgument(format!("a chunk of {} bytes in a batch; at most {SMALL_CHUNK_BYTES_MAX} (stream it)", big.data.len())));
    }
    let bytes: usize = chunks.iter().map(|c| c.data.len()).sum();
    if bytes > CHUNK_BATCH_BYTES_MAX {
        return Err(RpcError::InvalidArgument(format!("{bytes} bytes in one batch; at most {CHUNK_BATCH_BYTES_MAX}")));
    }
    Ok(())
}

fn write_result(result: Result<proto::WriteChunkResponse, RpcError>) -> proto::ChunkWriteResult {
    use proto::chunk_write_result::Result as R;
    proto::ChunkWriteResult { result: Some(result.map_or_else(|e| R::Error(e.to_detail()), R::Ok)) }
}

fn read_result(result: Result<proto::ChunkRead, RpcError>) -> proto::ChunkReadResult {
    use proto::chunk_read_result::Result as R;
    proto::ChunkReadResult { result: Some(result.map_or_else(|e| R::Error(e.to_detail()), R::Ok)) }
}

/// The peers a chunk goes to, and failures for the targets refused.
type Targets = (Vec<proto::StorageNode>, Vec<proto::ReplicaFailure>);

/// A verified chunk of a batch and where it came from in the request.
struct Verified {
    position: usize,
    id: ChunkId,
    meta: ChunkMeta,
    upload: ChunkUpload,
}

impl<E: Env> StorageNode<E> {
    /// Verifies, stores and (`forward`: as the primary) replicates a batch; one result per
    /// chunk, in order.
    async fn write_batch(&self, chunks: Vec<proto::ChunkWrite>, forward: bool) -> proto::WriteChunksResponse {
        let mut results: Vec<Option<Result<proto::WriteChunkResponse, RpcError>>> = vec![None; chunks.len()];
        let mut verified = Vec::with_capacity(chunks.len());
        for (position, chunk) in chunks.into_iter().enumerate() {
            let checked = chunk
                .header
                .ok_or_else(|| RpcError::InvalidArgument("a batched chunk carries no header".into()))
                .map(|header| ChunkUpload { header, data: chunk.data })
                .and_then(|upload| upload_meta(&upload).map(|(id, meta)| (id, meta, upload)))
                .and_then(|(id, meta, upload)| self.check_chunk_token(id, upload.header.token.as_ref(), ChunkOp::Write).map(|()| (id, meta, upload)));
            match checked {
                Ok((id, meta, upload)) => verified.push(Verified { position, id, meta, upload }),
                Err(e) => results[position] = Some(Err(e)),
            }
        }
        // The bytes, all in one pass off the executor thread.
        let sums = checksums(&self.env, verified.iter().map(|v| (v.upload.data.clone(), v.meta.chain)).collect()).await;
        let mut checked = Vec::with_capacity(verified.len());
        for (v, sum) in verified.into_iter().zip(sums) {
            if sum == v.meta.sha256 {
                checked.push(v);
            } else {
                results[v.position] = Some(Err(RpcError::ChecksumMismatch(format!("chunk {} arrived damaged", v.id))));
            }
        }
        let mut verified = checked;
        let bytes: u64 = verified.iter().map(|v| v.meta.size).sum();
        if let Err(e) = self.check_room(bytes).await {
            verified.drain(..).for_each(|v| results[v.position] = Some(Err(e.clone())));
        }

        // Forward targets per distinct request (a client usually names the same nodes for all).
        // A chunk whose targets are refused outright fails alone, as its stream would.
        let mut chunk_targets: Vec<Targets> = Vec::with_capacity(verified.len());
        if forward {
            let mut targets: BTreeMap<Vec<(u64, String)>, Result<Targets, RpcError>> = BTreeMap::new();
            let mut forwardable = Vec::with_capacity(verified.len());
            for v in verified {
                let key: Vec<(u64, String)> = v.upload.header.forward_to.iter().map(|p| (p.id, p.addr.clone())).collect();
                if !targets.contains_key(&key) {
                    let found = self.forward_targets(&v.upload.header.forward_to).await;
                    targets.insert(key.clone(), found);
                }
                match &targets[&key] {
                    Ok(found) => {
                        chunk_targets.push(found.clone());
                        forwardable.push(v);
                    }
                    Err(e) => results[v.position] = Some(Err(e.clone())),
                }
            }
            verified = forwardable;
        } else {
            chunk_targets.resize(verified.len(), (vec![], vec![]));
        }
        let mut to_peer: BTreeMap<u64, (proto::StorageNode, Vec<usize>)> = BTreeMap::new();
        let mut refused = Vec::with_capacity(verified.len());
        for (k, (peers, refusals)) in chunk_targets.into_iter().enumerate() {
            for peer in peers.into_iter().filter(|p| p.id != self.id.0) {
                to_peer.entry(peer.id).or_insert_with(|| (peer.clone(), Vec::new())).1.push(k);
            }
            refused.push(refusals);
        }

        let items: Vec<(ChunkId, ChunkMeta, Bytes)> = verified.iter().map(|v| (v.id, v.meta, v.upload.data.clone())).collect();
        let local = self.store_batch(&items);
        let sends = to_peer.into_values().map(|(peer, indexes)| self.replicate_batch(peer, indexes, &verified));
        let (stored, replicated) = futures::join!(local, join_all(sends));

        // Per chunk: the peers' results, then the same outcome policy as a single write's.
        let mut per_chunk: Vec<Vec<Result<u64, proto::ReplicaFailure>>> = vec![Vec::new(); verified.len()];
        for per_peer in replicated {
            for (k, outcome) in per_peer {
                per_chunk[k].push(outcome);
            }
        }
        let me = self.self_proto();
        for (((v, local), replicas), refusals) in verified.iter().zip(stored).zip(per_chunk).zip(refused) {
            if local.is_ok() {
                self.reports.lock().expect("reports lock").stored(ReplicaReport { chunk: v.id, size: v.meta.size, sha256: v.meta.sha256 });
            }
            results[v.position] = Some(super::fan_out::outcome(&me, local, replicas, refusals));
        }
        tracing::debug!(chunks = results.len(), forward, "chunk batch written");
        proto::WriteChunksResponse {
            results: results
                .into_iter()
                .map(|r| write_result(r.unwrap_or_else(|| Err(RpcError::Internal("a batched chunk was not answered".into())))))
                .collect(),
        }
    }

    /// Sends the chunks `indexes` of `verified` to `peer` in one call; per chunk, the peer's id
    /// if it stored it, or why not.
    async fn replicate_batch(&self, peer: proto::StorageNode, indexes: Vec<usize>, verified: &[Verified]) -> Vec<(usize, Result<u64, proto::ReplicaFailure>)> {
        let chunks: Vec<proto::ChunkWrite> = indexes
            .iter()
            .map(|&k| proto::ChunkWrite {
                header: Some(proto::WriteChunkHeader { forward_to: vec![], ..verified[k].upload.header.clone() }),
                data: verified[k].upload.data.clone(),
            })
            .collect();
        // As for a stream: a peer that keeps up at one frame's worth per `frame_timeout`.
        let bytes: usize = chunks.iter().map(|c| c.data.len()).sum();
        let frames = bytes.div_ceil(CHUNK_FRAME_BYTES).max(1) as u32;
        let limit = self.config.frame_timeout.saturating_mul(frames).min(self.config.replication_timeout);
        let failure = |error: String| proto::ReplicaFailure { node: Some(peer.clone()), error };
        if let Err(injected) = fault::inject(self.env.clock(), Site::StorageForward).await {
            return indexes.into_iter().map(|k| (k, Err(failure(injected.to_string())))).collect();
        }
        let send = self.env.transport().unary(&peer.addr, proto::ReplicateChunksRequest { chunks });
        match call_with_timeout(self.env.clock(), limit, &peer.addr, send).await {
            Ok(reply) => {
                let mut answers = reply.results.into_iter();
                indexes
                    .into_iter()
                    .map(|k| {
                        use proto::chunk_write_result::Result as R;
                        let outcome = match answers.next().and_then(|a| a.result) {
                            Some(R::Ok(r)) if r.stored_on.contains(&peer.id) => Ok(peer.id),
                            Some(R::Ok(_)) => Err(failure("peer did not confirm the write".into())),
                            Some(R::Error(e)) => Err(failure(RpcError::from_detail(e).to_string())),
                            None => Err(failure("peer's reply has no result for this chunk".into())),
                        };
                        (k, outcome)
                    })
                    .collect()
            }
            Err(e) => indexes.into_iter().map(|k| (k, Err(failure(e.to_string())))).collect(),
        }
    }

    /// Makes verified chunks durable here, in one blocking call with two filesystem flushes;
    /// one result per chunk, in order.
    pub(super) async fn store_batch(&self, verified: &[(ChunkId, ChunkMeta, Bytes)]) -> Vec<Result<(), RpcError>> {
        if verified.is_empty() {
            return Vec::new();
        }
        self.sweep_orphaned_tmp().await;
        let free_bytes = match self.space().await {
            Ok((_, free)) => free,
            Err(e) => return vec![Err(e); verified.len()],
        };
        let mut outcome: Vec<Result<(), RpcError>> = vec![Ok(()); verified.len()];
        let mut items = Vec::new();
        let mut positions = Vec::new();
        let steps = {
            let mut table = self.table.lock().expect("table lock");
            for (k, (id, meta, data)) in verified.iter().enumerate() {
                match table.begin_write(*id, *meta) {
                    Err(e @ ChunkStoreError::WriteInProgress(_)) => outcome[k] = Err(RpcError::Unavailable(e.to_string())),
                    Err(e) => outcome[k] = Err(RpcError::FailedPrecondition(e.to_string())),
                    Ok(WriteDecision::AlreadyStored) => {}
                    Ok(WriteDecision::Write) => {
                        let (_, in_progress) = table.writing();
                        if let Err(e) = chunk_store::check_space(0, in_progress, free_bytes, self.config.space_reserve_bytes) {
                            table.abort_write(*id);
                            outcome[k] = Err(self.refused_for_space(e));
                            continue;
                        }
                        items.push(BatchItem { id: *id, nonce: self.env.random_u64(), meta: *meta, data: data.clone() });
                        positions.push(k);
                    }
                }
            }
            chunk_store::batch_write_steps(&self.layout, &table, &items)
        };
        if items.is_empty() {
            return outcome;
        }
        let guards: Vec<WriteGuard<'_>> = items
            .iter()
            .map(|item| WriteGuard {
                table: &self.table,
                orphans: &self.orphaned_tmp,
                id: item.id,
                tmp: self.layout.tmp_path(item.id, item.nonce),
                chunk: self.layout.chunk_path(item.id),
                finished: false,
            })
            .collect();
        let written = match fault::inject(self.env.clock(), Site::StorageStore).await {
            Ok(()) => self.env.disk().run_steps(steps).await,
            Err(injected) => Err(std::io::Error::other(injected.to_string())),
        };
        match written {
            Ok(()) => guards.into_iter().for_each(WriteGuard::finish),
            Err(e) => {
                drop(guards);
                self.sweep_orphaned_tmp().await;
                for (item, k) in items.iter().zip(positions) {
                    outcome[k] = Err(write_error(self.id, item.id, std::io::Error::new(e.kind(), e.to_string())));
                }
            }
        }
        outcome
    }

    /// What a chunk of a batch read should be, checked against the batch's limits.
    fn small_read_target(&self, request: &proto::ReadChunkRequest, batch_bytes: &mut u64) -> Result<(ChunkId, ChunkMeta), RpcError> {
        let id = ChunkId::from_slice(&request.chunk_id).ok_or_else(|| RpcError::InvalidArgument("chunk id must be 16 bytes".into()))?;
        self.check_chunk_token(id, request.token.as_ref(), ChunkOp::Read)?;
        let expected = self.stored_meta(id)?;
        if expected.size > SMALL_CHUNK_BYTES_MAX as u64 {
            return Err(RpcError::InvalidArgument(format!("chunk {id} holds {} bytes, too many for a batch read (stream it)", expected.size)));
        }
        *batch_bytes += expected.size;
        if *batch_bytes > CHUNK_BATCH_BYTES_MAX as u64 {
            return Err(RpcError::InvalidArgument(format!("a batch read of more than {CHUNK_BATCH_BYTES_MAX} bytes")));
        }
        Ok((id, expected))
    }

    /// One chunk of a batch read, verified here before it leaves.
    async fn read_small(&self, id: ChunkId, expected: ChunkMeta) -> Result<proto::ChunkRead, RpcError> {
        let path = self.layout.chunk_path(id);
        let file = match self.env.disk().read_file(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(self.not_stored(id)),
            Err(e) => return Err(RpcError::Internal(format!("node {}: reading chunk {id}: {e}", self.id))),
        };
        let damage = match chunk_store::decode_file(file) {
            Ok((meta, data)) if meta == expected => {
                return Ok(proto::ChunkRead {
                    header: Some(proto::ReadChunkHeader {
                        size: meta.size,
                        sha256: Bytes::copy_from_slice(&meta.sha256.0),
                        chain: meta.chain.map(crate::chain::Chain::to_proto),
                        ..Default::default()
                    }),
                    data,
                });
            }
            Ok(_) => "the file's header no longer matches what was stored".to_string(),
            Err(e) => e.to_string(),
        };
        self.quarantine().run(id, damage.clone()).await;
        Err(RpcError::ChecksumMismatch(format!("chunk {id} on node {}: {damage}", self.id)))
    }
}

impl<E: Env> proto::ChunkBatchServiceHandler for StorageNode<E> {
    async fn write_chunks(&self, request: proto::WriteChunksRequest) -> Result<proto::WriteChunksResponse, RpcError> {
        check_batch(&request.chunks)?;
        let _slot = self.client_slots.acquire(self.env.clock(), self.config.chunk_stream_wait).await?;
        Ok(self.write_batch(request.chunks, true).await)
    }

    async fn replicate_chunks(&self, request: proto::ReplicateChunksRequest) -> Result<proto::WriteChunksResponse, RpcError> {
        check_batch(&request.chunks)?;
        let _slot = self.replication_slots.acquire(self.env.clock(), self.config.chunk_stream_wait).await?;
        // A replica never forwards: the fan-out is the primary's alone.
        Ok(self.write_batch(request.chunks, false).await)
    }

    async fn read_chunks(&self, request: proto::ReadChunksRequest) -> Result<proto::ReadChunksResponse, RpcError> {
        if request.chunks.len() > CHUNK_BATCH_MAX {
            return Err(RpcError::InvalidArgument(format!("{} chunks in one batch; at most {CHUNK_BATCH_MAX}", request.chunks.len())));
        }
        let _slot = self.client_slots.acquire(self.env.clock(), self.config.chunk_stream_wait).await?;
        fault::inject(self.env.clock(), Site::StorageRead).await.map_err(|i| RpcError::Unavailable(format!("node {}: {i}", self.id)))?;
        let mut bytes = 0;
        let targets: Vec<_> = request.chunks.iter().map(|c| self.small_read_target(c, &mut bytes)).collect();
        // The reads go to the disk together (each its own blocking call).
        let reads = targets.into_iter().map(|target| async move {
            match target {
                Ok((id, expected)) => self.read_small(id, expected).await,
                Err(e) => Err(e),
            }
        });
        Ok(proto::ReadChunksResponse { results: join_all(reads).await.into_iter().map(read_result).collect() })
    }
}

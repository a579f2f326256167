//! Small chunks to and from storage nodes in batches: a client's concurrent writes (and reads)
//! of chunks of at most `SMALL_CHUNK_BYTES_MAX` bytes to one node share `WriteChunks` (and
//! `ReadChunks`) calls, through the coalescer of `meta_batch`.
//!
//! What it promises: each chunk is answered as its own `WriteChunk` / `ReadChunk` would be (the
//! node answers chunk by chunk); a batch call that fails (timeout, node gone) fails each of
//! its chunks with that error, and the upload or download machine retries them as it retries a
//! failed stream. No timer: the first chunk goes at once, chunks that arrive while batches
//! are in flight go together in the next one.
//!
//! What it does not: larger chunks never come here (the driver streams them). One coalescer per
//! node address, at most `NODES_MAX` of them (beyond, the oldest set is dropped; its task ends
//! once its queued chunks are answered).
//!
//! How it is driven: the client driver calls `ChunkBatches::write` / `read` instead of the
//! transport's stream calls for small chunks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::meta_batch::{missing, BatchKind, BatchLimits, Coalescer, Sink};
use crate::env::{call_with_timeout, Env, Transport};
use crate::limits::{CHUNK_BATCH_BYTES_MAX, CHUNK_BATCH_MAX};
use crate::proto;
use crate::rpc::{ChunkDownload, ChunkService, ChunkUpload, Rpc, RpcError};

/// Storage nodes a client keeps a coalescer for at once.
const NODES_MAX: usize = 1024;

/// Batch calls in flight to one node at once: enough to keep its disk busy while the next
/// batch fills, few enough not to take all its stream slots.
const IN_FLIGHT_PER_NODE_MAX: usize = 2;

fn limits() -> BatchLimits {
    BatchLimits { files_max: CHUNK_BATCH_MAX, records_max: CHUNK_BATCH_BYTES_MAX, in_flight_max: IN_FLIGHT_PER_NODE_MAX, queued_max: 1024 }
}

/// One storage node, with a time limit per call.
#[derive(Clone)]
pub struct NodeSink<E: Env> {
    env: E,
    addr: String,
    timeout: Duration,
}

impl<E: Env> NodeSink<E> {
    async fn unary<R: Rpc>(&self, request: R) -> Result<R::Response, RpcError> {
        call_with_timeout(self.env.clock(), self.timeout, &self.addr, self.env.transport().unary(&self.addr, request)).await
    }
}

pub struct ChunkWrites;
impl BatchKind for ChunkWrites {
    type Item = proto::ChunkWrite;
    type Reply = proto::WriteChunkResponse;
    type Batch = proto::WriteChunksRequest;
    fn records(item: &Self::Item) -> usize {
        item.data.len()
    }
    fn batch(chunks: Vec<Self::Item>) -> Self::Batch {
        proto::WriteChunksRequest { chunks }
    }
    fn results(reply: proto::WriteChunksResponse) -> Vec<Result<proto::WriteChunkResponse, RpcError>> {
        use proto::chunk_write_result::Result as R;
        reply
            .results
            .into_iter()
            .map(|r| match r.result {
                Some(R::Ok(ok)) => Ok(ok),
                Some(R::Error(e)) => Err(RpcError::from_detail(e)),
                None => Err(missing()),
            })
            .collect()
    }
    /// The upload machine retries a chunk itself (elsewhere if need be).
    fn alone_after(_error: &RpcError) -> bool {
        false
    }
}

impl<E: Env> Sink<ChunkWrites> for NodeSink<E> {
    async fn call_batch(&self, batch: proto::WriteChunksRequest) -> Result<proto::WriteChunksResponse, RpcError> {
        self.unary(batch).await
    }
    async fn call_one(&self, item: proto::ChunkWrite) -> Result<proto::WriteChunkResponse, RpcError> {
        let upload = ChunkUpload { header: item.header.unwrap_or_default(), data: item.data };
        let send = self.env.transport().write_chunk(&self.addr, ChunkService::Storage, upload);
        call_with_timeout(self.env.clock(), self.timeout, &self.addr, send).await
    }
}

pub struct ChunkReads;
impl BatchKind for ChunkReads {
    type Item = proto::ReadChunkRequest;
    type Reply = ChunkDownload;
    type Batch = proto::ReadChunksRequest;
    fn batch(chunks: Vec<Self::Item>) -> Self::Batch {
        proto::ReadChunksRequest { chunks }
    }
    fn results(reply: proto::ReadChunksResponse) -> Vec<Result<ChunkDownload, RpcError>> {
        use proto::chunk_read_result::Result as R;
        reply
            .results
            .into_iter()
            .map(|r| match r.result {
                Some(R::Ok(read)) => Ok(ChunkDownload { header: read.header.unwrap_or_default(), data: read.data }),
                Some(R::Error(e)) => Err(RpcError::from_detail(e)),
                None => Err(missing()),
            })
            .collect()
    }
    /// The download machine fails over to another replica itself.
    fn alone_after(_error: &RpcError) -> bool {
        false
    }
}

impl<E: Env> Sink<ChunkReads> for NodeSink<E> {
    async fn call_batch(&self, batch: proto::ReadChunksRequest) -> Result<proto::ReadChunksResponse, RpcError> {
        self.unary(batch).await
    }
    async fn call_one(&self, item: proto::ReadChunkRequest) -> Result<ChunkDownload, RpcError> {
        call_with_timeout(self.env.clock(), self.timeout, &self.addr, self.env.transport().read_chunk(&self.addr, item)).await
    }
}

type Writes<E> = Coalescer<E, ChunkWrites, NodeSink<E>>;
type Reads<E> = Coalescer<E, ChunkReads, NodeSink<E>>;
type NodeBatches<E> = (Arc<Writes<E>>, Arc<Reads<E>>);

/// A client's coalescers of small chunk calls, one pair per storage node address.
pub struct ChunkBatches<E: Env> {
    env: E,
    /// Per call: as long as one chunk's transfer may take.
    timeout: Duration,
    nodes: Mutex<HashMap<String, NodeBatches<E>>>,
}

impl<E: Env> ChunkBatches<E> {
    pub fn new(env: E, timeout: Duration) -> Self {
        ChunkBatches { env, timeout, nodes: Mutex::new(HashMap::new()) }
    }

    fn node(&self, addr: &str) -> NodeBatches<E> {
        let mut nodes = self.nodes.lock().expect("chunk batches lock");
        if let Some(pair) = nodes.get(addr) {
            return pair.clone();
        }
        if nodes.len() >= NODES_MAX {
            nodes.clear();
        }
        let sink = NodeSink { env: self.env.clone(), addr: addr.to_string(), timeout: self.timeout };
        let pair = (Arc::new(Coalescer::new(sink.clone(), limits())), Arc::new(Coalescer::new(sink, limits())));
        nodes.insert(addr.to_string(), pair.clone());
        pair
    }

    /// Writes one small chunk through `addr` (its primary), batched with others in flight.
    pub async fn write(&self, addr: &str, upload: ChunkUpload) -> Result<proto::WriteChunkResponse, RpcError> {
        let writes = self.node(addr).0;
        writes.call(proto::ChunkWrite { header: Some(upload.header), data: upload.data }).await
    }

    /// Reads one small chunk from `addr`, batched with others in flight.
    pub async fn read(&self, addr: &str, request: proto::ReadChunkRequest) -> Result<ChunkDownload, RpcError> {
        let reads = self.node(addr).1;
        reads.call(request).await
    }
}

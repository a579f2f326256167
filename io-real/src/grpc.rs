//! Between tonic and `dfs-core`: errors to and from gRPC statuses, and the adapters that answer
//! the generated service traits with core's handlers. Unary services get their adapter from
//! build.rs; the two chunk-streaming services are adapted here.

use std::pin::Pin;
use std::sync::Arc;

use dfs_core::proto::{ReadChunkFrame, ReadChunkRequest, WriteChunkFrame, WriteChunkResponse};
use dfs_core::rpc::{ChunkHandler, ChunkService, FrameStream as CoreFrameStream, RpcError};
use futures::{Stream, StreamExt};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::generated::replication_service_server::ReplicationService;
use crate::generated::storage_service_server::StorageService;

/// Serves a generated tonic service with one of `dfs-core`'s handlers.
pub struct Adapter<H>(pub Arc<H>);

pub fn respond<T>(result: Result<T, RpcError>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(|e| to_status(&e))
}

/// The gRPC status for an error, with the error itself in the details so the client gets it
/// back exactly (including the leader hint of `NotLeader`).
pub fn to_status(e: &RpcError) -> Status {
    let code = match e {
        RpcError::NotLeader { .. } | RpcError::Unavailable(_) | RpcError::Transport(_) => Code::Unavailable,
        RpcError::NotFound(_) => Code::NotFound,
        RpcError::AlreadyExists(_) => Code::AlreadyExists,
        RpcError::InvalidArgument(_) => Code::InvalidArgument,
        RpcError::ChecksumMismatch(_) => Code::DataLoss,
        RpcError::NoSpace(_) => Code::ResourceExhausted,
        RpcError::FailedPrecondition(_) => Code::FailedPrecondition,
        _ => Code::Internal,
    };
    Status::with_details(code, e.to_string(), e.encode_detail())
}

/// The error behind a status: ours if the server put one in the details, otherwise one made
/// from the status code (a proxy, a crashed server, a connection that never opened).
pub fn from_status(to: &str, status: Status) -> RpcError {
    if !status.details().is_empty() {
        return RpcError::decode_detail(status.details());
    }
    let message = format!("{to}: {}", status.message());
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded | Code::Aborted => RpcError::Transport(message),
        Code::NotFound => RpcError::NotFound(message),
        Code::InvalidArgument | Code::OutOfRange => RpcError::InvalidArgument(message),
        Code::ResourceExhausted => RpcError::NoSpace(message),
        Code::DataLoss => RpcError::ChecksumMismatch(message),
        Code::Unimplemented => RpcError::InvalidArgument(format!("{message} (is {to} a dfs node of the right kind?)")),
        _ => RpcError::Internal(message),
    }
}

/// An incoming chunk's frames as core's handler takes them, pulled as the handler asks (so
/// HTTP/2 flow control holds the sender back while the handler is busy). A broken stream
/// (the client reset it, the connection died) is the world's fault: a transport error.
fn incoming_frames(frames: Streaming<WriteChunkFrame>) -> CoreFrameStream<WriteChunkFrame> {
    frames.map(|frame| frame.map_err(|s| from_status("the sender", s))).boxed()
}

pub type FrameStream = Pin<Box<dyn Stream<Item = Result<ReadChunkFrame, Status>> + Send>>;

#[tonic::async_trait]
impl<H: ChunkHandler> StorageService for Adapter<H> {
    async fn write_chunk(&self, request: Request<Streaming<WriteChunkFrame>>) -> Result<Response<WriteChunkResponse>, Status> {
        // tonic drops this future if the client resets the stream: the handler is cancelled.
        respond(self.0.write_chunk(ChunkService::Storage, incoming_frames(request.into_inner())).await)
    }

    type ReadChunkStream = FrameStream;

    async fn read_chunk(&self, request: Request<ReadChunkRequest>) -> Result<Response<FrameStream>, Status> {
        // Frames are read from disk as the client takes them; an error (a damaged frame) ends
        // the stream with its status.
        let frames = self.0.read_chunk(request.into_inner()).await.map_err(|e| to_status(&e))?;
        Ok(Response::new(Box::pin(frames.map(|frame| frame.map_err(|e| to_status(&e))))))
    }
}

#[tonic::async_trait]
impl<H: ChunkHandler> ReplicationService for Adapter<H> {
    async fn replicate_chunk(&self, request: Request<Streaming<WriteChunkFrame>>) -> Result<Response<WriteChunkResponse>, Status> {
        respond(self.0.write_chunk(ChunkService::Replication, incoming_frames(request.into_inner())).await)
    }
}

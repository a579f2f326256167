//! Between tonic and `dfs-core`: errors to and from gRPC statuses, and the adapters that answer
//! the generated service traits with core's handlers. Unary services get their adapter from
//! build.rs; the two chunk-streaming services are adapted here.

use std::pin::Pin;
use std::sync::Arc;

use dfs_core::proto::{ReadChunkFrame, ReadChunkRequest, WriteChunkFrame, WriteChunkHeader, WriteChunkResponse};
use dfs_core::rpc::{self, ChunkHandler, ChunkService, ChunkUpload, FrameAssembler, RpcError};
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

/// Reads a chunk's frames as they arrive; never more than the header announced.
async fn receive_upload(mut frames: Streaming<WriteChunkFrame>) -> Result<ChunkUpload, Status> {
    let mut assembler = FrameAssembler::<WriteChunkHeader>::new();
    while let Some(frame) = frames.next().await {
        let frame = frame?;
        assembler.push(frame.header, frame.data).map_err(|e| to_status(&e.into()))?;
    }
    let (header, data) = assembler.finish().map_err(|e| to_status(&e.into()))?;
    Ok(ChunkUpload { header, data })
}

pub type FrameStream = Pin<Box<dyn Stream<Item = Result<ReadChunkFrame, Status>> + Send>>;

#[tonic::async_trait]
impl<H: ChunkHandler> StorageService for Adapter<H> {
    async fn write_chunk(&self, request: Request<Streaming<WriteChunkFrame>>) -> Result<Response<WriteChunkResponse>, Status> {
        let upload = receive_upload(request.into_inner()).await?;
        respond(self.0.write_chunk(ChunkService::Storage, upload).await)
    }

    type ReadChunkStream = FrameStream;

    async fn read_chunk(&self, request: Request<ReadChunkRequest>) -> Result<Response<FrameStream>, Status> {
        let download = self.0.read_chunk(request.into_inner()).await.map_err(|e| to_status(&e))?;
        let frames = rpc::read_frames(download).into_iter().map(Ok);
        Ok(Response::new(Box::pin(futures::stream::iter(frames))))
    }
}

#[tonic::async_trait]
impl<H: ChunkHandler> ReplicationService for Adapter<H> {
    async fn replicate_chunk(&self, request: Request<Streaming<WriteChunkFrame>>) -> Result<Response<WriteChunkResponse>, Status> {
        let upload = receive_upload(request.into_inner()).await?;
        respond(self.0.write_chunk(ChunkService::Replication, upload).await)
    }
}

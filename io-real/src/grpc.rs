//! Between tonic and `dfs-core`: errors to and from gRPC statuses, and the adapters that answer
//! the generated service traits with core's handlers. Unary services get their adapter from
//! build.rs; the two chunk-streaming services are adapted here.

use std::pin::Pin;
use std::sync::Arc;

use dfs_core::proto::{ReadChunkFrame, ReadChunkRequest, WriteChunkFrame, WriteChunkResponse};
use dfs_core::rpc::{ChunkHandler, ChunkService, FrameStream as CoreFrameStream, GrpcCode, RpcError};
use futures::{Stream, StreamExt};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::generated::replication_service_server::ReplicationService;
use crate::generated::storage_service_server::StorageService;

/// HTTP/2 flow control. h2's defaults (64 KiB per stream and per connection, 16 KiB frames)
/// let one 64 KiB window of a connection's chunk streams be in flight at a time: every 64 KiB a
/// sender waits for a WINDOW_UPDATE, and chunk frames (256 KiB) cross as 16 HTTP/2 frames.
/// These bound what a connection buffers (a few chunk frames per stream) while letting a chunk
/// stream flow without a round trip per 64 KiB.
pub const HTTP2_STREAM_WINDOW_BYTES: u32 = 2 << 20;
pub const HTTP2_CONNECTION_WINDOW_BYTES: u32 = 8 << 20;
pub const HTTP2_FRAME_BYTES_MAX: u32 = 1 << 20;

/// Serves a generated tonic service with one of `dfs-core`'s handlers.
pub struct Adapter<H>(pub Arc<H>);

pub fn respond<T>(result: Result<T, RpcError>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(|e| to_status(&e))
}

/// The gRPC status for an error (its code decided in core, `RpcError::grpc_code`), with the
/// error itself in the details so the client gets it back exactly (including the leader hint
/// of `NotLeader`).
pub fn to_status(e: &RpcError) -> Status {
    Status::with_details(Code::from_i32(e.grpc_code() as i32), e.to_string(), e.encode_detail())
}

/// The error behind a status: ours if the server put one in the details, otherwise what the
/// code alone means (`RpcError::from_grpc_code`).
pub fn from_status(to: &str, status: Status) -> RpcError {
    if !status.details().is_empty() {
        return RpcError::decode_detail(status.details());
    }
    RpcError::from_grpc_code(to, GrpcCode::from_i32(status.code() as i32), status.message())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// tonic numbers its codes as core does (both follow the gRPC protocol), and an error sent
    /// as a status comes back as itself, or by its code alone as what the code means.
    #[test]
    fn statuses_carry_errors_both_ways() {
        for code in GrpcCode::ALL {
            assert_eq!(Code::from_i32(code as i32) as i32, code as i32, "{code:?}");
        }
        let e = RpcError::ChecksumMismatch("chunk x".into());
        let status = to_status(&e);
        assert_eq!(status.code(), Code::DataLoss);
        assert_eq!(from_status("n:1", status), e);
        let bare = Status::new(Code::Unavailable, "connection reset");
        assert!(matches!(from_status("n:1", bare), RpcError::Transport(m) if m == "n:1: connection reset"));
        let bare = Status::new(Code::Unimplemented, "no such method");
        assert!(matches!(from_status("n:1", bare), RpcError::InvalidArgument(m) if m.contains("right kind")));
    }
}

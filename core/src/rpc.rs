//! What travels between nodes, independent of how: typed unary calls (`Rpc`), the errors every
//! call can end with (`RpcError`), and chunk bytes cut into frames.
//!
//! The wire messages are generated from `proto/dfs/v1/*.proto` (see `crate::proto`). Both
//! environments carry these same encoded messages: production over tonic/HTTP/2, the
//! simulation over madsim's network, so the simulation sees real protobuf and real sizes.

use std::future::Future;

use bytes::{Bytes, BytesMut};
use prost::Message;

use crate::bulk_buf::BulkBuf;
use crate::limits::CHUNK_FRAME_BYTES;
use crate::proto::{
    ErrorCode, ErrorDetail, MetaNode, ReadChunkFrame, ReadChunkHeader, ReadChunkRequest, WriteChunkFrame, WriteChunkHeader, WriteChunkResponse,
};

/// A unary RPC: its request type names its response type and its gRPC path. Implemented by
/// generated code for every unary method in `services.proto`.
pub trait Rpc: Message + Default + Clone + Send + 'static {
    type Response: Message + Default + Send + 'static;
    /// `/dfs.v1.Service/Method`
    const PATH: &'static str;
}

/// Splits `/dfs.v1.MetadataService/CreateFile` into (`dfs.v1.MetadataService`, `CreateFile`).
pub fn split_path(path: &str) -> Option<(&str, &str)> {
    path.strip_prefix('/')?.split_once('/')
}

/// How a call ended when it did not succeed. Each error says whose fault it is (`fault`) and
/// whether the same call may succeed if repeated (`is_retryable`): both are decided here, and
/// nowhere else.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    #[error("not the metadata leader{}", leader.as_ref().map(|l| format!(" (leader is node {} at {})", l.id, l.addr)).unwrap_or_default())]
    NotLeader { leader: Option<MetaNode> },
    /// The message names what is missing (servers say "<path>: no such file").
    #[error("{0}")]
    NotFound(String),
    /// The message names what exists.
    #[error("{0}")]
    AlreadyExists(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Transient on the server's side: no leader yet, too few storage nodes, ...
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The bytes do not match their SHA-256: this replica (or this transfer) is bad.
    #[error("checksum mismatch: {0}")]
    ChecksumMismatch(String),
    #[error("no space: {0}")]
    NoSpace(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller may not do this (`crate::auth`): no credential, a token revoked or expired, a
    /// grant too small, a path outside a token's prefix. The message says which.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The other side failed in a way it should not (a bug, an invariant broken there).
    #[error("internal error: {0}")]
    Internal(String),
    /// What the other side sent makes no sense: frames that do not form a chunk, a message
    /// that does not decode, a reply that contradicts the request. Made by the receiver;
    /// sent back to a caller it becomes `InvalidArgument`, since from where the caller
    /// stands its own request was bad.
    #[error("malformed: {0}")]
    Malformed(String),
    /// The call did not complete: connection refused or reset, timeout. The server may or may
    /// not have carried it out.
    #[error("transport: {0}")]
    Transport(String),
}

/// Whose fault an error is, so that the one who can act on it does (as rustls separates a
/// peer's misbehaviour from the caller's misuse).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The caller asked for something wrong or impossible: a bad name, a file that is not
    /// there, a request the cluster as it stands refuses. Fix the request.
    Caller,
    /// The other side: a corrupt replica, a malformed frame or reply, a bug on that node.
    /// Another replica or node may do; the same one will not.
    Peer,
    /// The environment: a timeout, a node unreachable, no leader yet, no space. Retryable
    /// where `is_retryable` says so.
    World,
}

/// gRPC status codes (the numbers are the protocol's own, the same in every gRPC library):
/// how an `RpcError` travels when it has to travel as a status alone, and what a status
/// that carries none of ours (a proxy, a crashed server) means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum GrpcCode {
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl GrpcCode {
    /// Every code but OK, for tests of the mapping.
    pub const ALL: [GrpcCode; 16] = [
        GrpcCode::Cancelled,
        GrpcCode::Unknown,
        GrpcCode::InvalidArgument,
        GrpcCode::DeadlineExceeded,
        GrpcCode::NotFound,
        GrpcCode::AlreadyExists,
        GrpcCode::PermissionDenied,
        GrpcCode::ResourceExhausted,
        GrpcCode::FailedPrecondition,
        GrpcCode::Aborted,
        GrpcCode::OutOfRange,
        GrpcCode::Unimplemented,
        GrpcCode::Internal,
        GrpcCode::Unavailable,
        GrpcCode::DataLoss,
        GrpcCode::Unauthenticated,
    ];

    pub fn from_i32(code: i32) -> Option<GrpcCode> {
        GrpcCode::ALL.into_iter().find(|c| *c as i32 == code)
    }
}

impl RpcError {
    /// Worth repeating, here or on another node: the same call may succeed. Leadership
    /// moves (`NotLeader`), a server with no quorum or too few nodes recovers
    /// (`Unavailable`), a call that did not complete may complete (`Transport`). Not
    /// `ChecksumMismatch` or `Malformed`: the same replica or node would fail again (a reader
    /// turns to another replica instead). Not `NoSpace`: the cluster stays full until
    /// someone frees space.
    pub fn is_retryable(&self) -> bool {
        matches!(self, RpcError::NotLeader { .. } | RpcError::Unavailable(_) | RpcError::Transport(_))
    }

    /// Whose fault this is (see `Fault`).
    pub fn fault(&self) -> Fault {
        match self {
            RpcError::NotFound(_)
            | RpcError::AlreadyExists(_)
            | RpcError::InvalidArgument(_)
            | RpcError::FailedPrecondition(_)
            | RpcError::PermissionDenied(_) => Fault::Caller,
            RpcError::ChecksumMismatch(_) | RpcError::Internal(_) | RpcError::Malformed(_) => Fault::Peer,
            RpcError::NotLeader { .. } | RpcError::Unavailable(_) | RpcError::NoSpace(_) | RpcError::Transport(_) => Fault::World,
        }
    }

    /// The status code this error travels with (its details carry it exactly, see
    /// `encode_detail`; the code is for what reads only codes: proxies, metrics, other
    /// clients).
    pub fn grpc_code(&self) -> GrpcCode {
        match self {
            RpcError::NotLeader { .. } | RpcError::Unavailable(_) | RpcError::Transport(_) => GrpcCode::Unavailable,
            RpcError::NotFound(_) => GrpcCode::NotFound,
            RpcError::AlreadyExists(_) => GrpcCode::AlreadyExists,
            RpcError::InvalidArgument(_) | RpcError::Malformed(_) => GrpcCode::InvalidArgument,
            RpcError::ChecksumMismatch(_) => GrpcCode::DataLoss,
            RpcError::NoSpace(_) => GrpcCode::ResourceExhausted,
            RpcError::FailedPrecondition(_) => GrpcCode::FailedPrecondition,
            RpcError::PermissionDenied(_) => GrpcCode::PermissionDenied,
            RpcError::Internal(_) => GrpcCode::Internal,
        }
    }

    /// The error behind a status that carries none of ours in its details (a proxy, a server
    /// that crashed mid-call, a connection that never opened): what the code alone says.
    /// `to` names the node called, for the message. `None` is an unknown code.
    pub fn from_grpc_code(to: &str, code: Option<GrpcCode>, message: &str) -> RpcError {
        let m = format!("{to}: {message}");
        match code {
            Some(GrpcCode::Unavailable | GrpcCode::Unknown | GrpcCode::Cancelled | GrpcCode::DeadlineExceeded | GrpcCode::Aborted) => RpcError::Transport(m),
            Some(GrpcCode::NotFound) => RpcError::NotFound(m),
            Some(GrpcCode::AlreadyExists) => RpcError::AlreadyExists(m),
            Some(GrpcCode::InvalidArgument | GrpcCode::OutOfRange) => RpcError::InvalidArgument(m),
            Some(GrpcCode::ResourceExhausted) => RpcError::NoSpace(m),
            Some(GrpcCode::DataLoss) => RpcError::ChecksumMismatch(m),
            Some(GrpcCode::FailedPrecondition) => RpcError::FailedPrecondition(m),
            Some(GrpcCode::PermissionDenied | GrpcCode::Unauthenticated) => RpcError::PermissionDenied(m),
            Some(GrpcCode::Unimplemented) => RpcError::InvalidArgument(format!("{m} (is {to} a dfs node of the right kind?)")),
            Some(GrpcCode::Internal) | None => RpcError::Internal(m),
        }
    }

    /// The error as it travels in a status's details: exactly, including the leader hint of
    /// `NotLeader`. `Malformed` travels as `InvalidArgument` (see there); `Transport` as
    /// `Unavailable` (the caller's own call did complete, its server's onward call did not).
    pub fn to_detail(&self) -> ErrorDetail {
        let (code, message) = match self {
            RpcError::NotLeader { .. } => (ErrorCode::NotLeader, self.to_string()),
            RpcError::NotFound(m) => (ErrorCode::NotFound, m.clone()),
            RpcError::AlreadyExists(m) => (ErrorCode::AlreadyExists, m.clone()),
            RpcError::InvalidArgument(m) | RpcError::Malformed(m) => (ErrorCode::InvalidArgument, m.clone()),
            RpcError::Unavailable(m) | RpcError::Transport(m) => (ErrorCode::Unavailable, m.clone()),
            RpcError::ChecksumMismatch(m) => (ErrorCode::ChecksumMismatch, m.clone()),
            RpcError::NoSpace(m) => (ErrorCode::NoSpace, m.clone()),
            RpcError::FailedPrecondition(m) => (ErrorCode::FailedPrecondition, m.clone()),
            RpcError::PermissionDenied(m) => (ErrorCode::PermissionDenied, m.clone()),
            RpcError::Internal(m) => (ErrorCode::Internal, m.clone()),
        };
        let leader = match self {
            RpcError::NotLeader { leader } => leader.clone(),
            _ => None,
        };
        ErrorDetail { code: code as i32, message, leader }
    }

    pub fn from_detail(detail: ErrorDetail) -> Self {
        let m = detail.message;
        match ErrorCode::try_from(detail.code).unwrap_or(ErrorCode::Unspecified) {
            ErrorCode::NotLeader => RpcError::NotLeader { leader: detail.leader },
            ErrorCode::NotFound => RpcError::NotFound(m),
            ErrorCode::AlreadyExists => RpcError::AlreadyExists(m),
            ErrorCode::InvalidArgument => RpcError::InvalidArgument(m),
            ErrorCode::Unavailable => RpcError::Unavailable(m),
            ErrorCode::ChecksumMismatch => RpcError::ChecksumMismatch(m),
            ErrorCode::NoSpace => RpcError::NoSpace(m),
            ErrorCode::FailedPrecondition => RpcError::FailedPrecondition(m),
            ErrorCode::PermissionDenied => RpcError::PermissionDenied(m),
            ErrorCode::Internal | ErrorCode::Unspecified => RpcError::Internal(m),
        }
    }

    pub fn encode_detail(&self) -> Bytes {
        self.to_detail().encode_to_vec().into()
    }

    /// Decodes what `encode_detail` produced; garbage is the sender's fault (`Malformed`).
    pub fn decode_detail(bytes: &[u8]) -> Self {
        match ErrorDetail::decode(bytes) {
            Ok(d) => Self::from_detail(d),
            Err(e) => RpcError::Malformed(format!("undecodable error detail: {e}")),
        }
    }
}

/// Used by the generated dispatchers: decode, call, encode.
pub async fn dispatch_decoded<Req, Resp, F, Fut>(body: Bytes, call: F) -> Result<Bytes, RpcError>
where
    Req: Message + Default,
    Resp: Message,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Result<Resp, RpcError>>,
{
    let request = Req::decode(body).map_err(|e| RpcError::Malformed(format!("undecodable request: {e}")))?;
    let response = call(request).await?;
    Ok(response.encode_to_vec().into())
}

/// Where chunk bytes go: a write to the primary (`Storage`) or the primary's fan-out to the
/// other replicas (`Replication`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkService {
    Storage,
    Replication,
}

impl ChunkService {
    /// The gRPC path a chunk write to this service travels on: what a node's certificate check
    /// (`auth::need`) weighs it by.
    pub fn write_path(self) -> &'static str {
        match self {
            ChunkService::Storage => WRITE_CHUNK_PATH,
            ChunkService::Replication => REPLICATE_CHUNK_PATH,
        }
    }
}

/// The gRPC paths of the streaming chunk calls (the unary ones are in the generated code).
pub const WRITE_CHUNK_PATH: &str = "/dfs.v1.StorageService/WriteChunk";
pub const REPLICATE_CHUNK_PATH: &str = "/dfs.v1.ReplicationService/ReplicateChunk";
pub const READ_CHUNK_PATH: &str = "/dfs.v1.StorageService/ReadChunk";

/// Frames of one chunk stream, in or out; an error ends the stream. Pulled one at a time, so a
/// stream buffers no more than the frame in hand (plus what the transport's flow control lets
/// through).
pub type FrameStream<F> = futures::stream::BoxStream<'static, Result<F, RpcError>>;

/// Server side of `StorageService` and `ReplicationService`, as streams of frames: the
/// environments only carry frames, the handler decides (limits, timeouts, checks).
///
/// A transport must drop the handler's future, or the stream it returned, when the caller goes
/// away (tonic does when the HTTP/2 stream is reset; the simulated transport when the
/// connection closes): that is how a handler learns its caller is gone.
pub trait ChunkHandler: Send + Sync + 'static {
    /// Receives `frames` (header first) and answers once the chunk is stored.
    fn write_chunk(&self, service: ChunkService, frames: FrameStream<WriteChunkFrame>) -> impl Future<Output = Result<WriteChunkResponse, RpcError>> + Send;
    /// The chunk as a stream of frames, the first carrying the header. Each frame has been
    /// verified before it is yielded; a damaged one ends the stream with `ChecksumMismatch`.
    fn read_chunk(&self, request: ReadChunkRequest) -> impl Future<Output = Result<FrameStream<ReadChunkFrame>, RpcError>> + Send;
}

/// A whole chunk in memory together with the header that describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkUpload {
    pub header: WriteChunkHeader,
    pub data: Bytes,
}

/// A chunk as read back from a storage node.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkDownload {
    pub header: ReadChunkHeader,
    pub data: Bytes,
}

/// Frames of at most `CHUNK_FRAME_BYTES` data each; the first carries the header. A chunk of
/// zero bytes is one frame with the header and no data.
pub fn write_frames(upload: ChunkUpload) -> Vec<WriteChunkFrame> {
    let mut frames = Vec::with_capacity(upload.data.len() / CHUNK_FRAME_BYTES + 1);
    let mut header = Some(upload.header);
    let mut rest = upload.data;
    loop {
        let take = rest.len().min(CHUNK_FRAME_BYTES);
        let data = rest.split_to(take);
        frames.push(WriteChunkFrame { header: header.take(), data });
        if rest.is_empty() {
            return frames;
        }
    }
}

pub fn read_frames(download: ChunkDownload) -> Vec<ReadChunkFrame> {
    write_frames(ChunkUpload { header: WriteChunkHeader::default(), data: download.data })
        .into_iter()
        .enumerate()
        .map(|(i, f)| ReadChunkFrame { header: (i == 0).then(|| download.header.clone()), data: f.data })
        .collect()
}

/// Reassembles frames; the header must come first and only once, and the data must add up to
/// the size it announces (the bytes are checked against the checksum by the receiver). Bulk
/// data (`bulk_buf::is_bulk`) is assembled into a `BulkBuf`, so that it reaches the disk
/// without another copy.
#[derive(Debug, Default)]
pub struct FrameAssembler<H> {
    header: Option<H>,
    expected_size: u64,
    data: Assembled,
}

#[derive(Debug)]
enum Assembled {
    Small(BytesMut),
    Bulk(BulkBuf),
}

impl Default for Assembled {
    fn default() -> Self {
        Assembled::Small(BytesMut::new())
    }
}

impl Assembled {
    fn len(&self) -> usize {
        match self {
            Assembled::Small(b) => b.len(),
            Assembled::Bulk(b) => b.len(),
        }
    }
}

/// Frames that do not form a chunk: a peer error, never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("first frame carries no header")]
    MissingHeader,
    #[error("header repeated in a later frame")]
    RepeatedHeader,
    #[error("received more than the announced {expected} bytes")]
    TooLong { expected: u64 },
    #[error("received {got} of the announced {expected} bytes")]
    TooShort { got: u64, expected: u64 },
    #[error("announced {announced} bytes, more than the largest chunk ({max})")]
    TooLarge { announced: u64, max: u64 },
    #[error("a frame after the first carries no data")]
    EmptyFrame,
}

/// On either side the receiver's verdict on its sender: a server that gets bad frames answers
/// its caller `InvalidArgument` (see `Malformed`), a client that gets them turns to another
/// replica.
impl From<FrameError> for RpcError {
    fn from(e: FrameError) -> Self {
        RpcError::Malformed(e.to_string())
    }
}

/// The part of a header the assembler needs.
pub trait FrameHeader: Clone {
    fn announced_size(&self) -> u64;
}

impl FrameHeader for WriteChunkHeader {
    fn announced_size(&self) -> u64 {
        self.size
    }
}

impl FrameHeader for ReadChunkHeader {
    fn announced_size(&self) -> u64 {
        self.range_bytes.unwrap_or(self.size)
    }
}

/// Upper bound on what we pre-allocate from an untrusted header.
const PREALLOCATE_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// No frame sequence may announce more than a chunk can hold: a receiver buffers it whole.
const ANNOUNCED_MAX_BYTES: u64 = crate::chunking::MAX_CHUNK_SIZE;

impl<H: FrameHeader> FrameAssembler<H> {
    pub fn new() -> Self {
        FrameAssembler { header: None, expected_size: 0, data: Assembled::default() }
    }

    pub fn push(&mut self, header: Option<H>, data: Bytes) -> Result<(), FrameError> {
        match (self.header.is_some(), header) {
            (false, Some(h)) => {
                if h.announced_size() > ANNOUNCED_MAX_BYTES {
                    return Err(FrameError::TooLarge { announced: h.announced_size(), max: ANNOUNCED_MAX_BYTES });
                }
                self.expected_size = h.announced_size();
                let reserved = self.expected_size.min(PREALLOCATE_MAX_BYTES) as usize;
                self.data = if crate::bulk_buf::is_bulk(self.expected_size) {
                    Assembled::Bulk(BulkBuf::with_capacity(reserved))
                } else {
                    Assembled::Small(BytesMut::with_capacity(reserved))
                };
                self.header = Some(h);
            }
            (false, None) => return Err(FrameError::MissingHeader),
            (true, Some(_)) => return Err(FrameError::RepeatedHeader),
            // Every frame after the first brings data: a stream of empty ones would keep a
            // receiver waiting (each resets its frame timeout) for nothing.
            (true, None) if data.is_empty() => return Err(FrameError::EmptyFrame),
            (true, None) => {}
        }
        if self.data.len() as u64 + data.len() as u64 > self.expected_size {
            return Err(FrameError::TooLong { expected: self.expected_size });
        }
        match &mut self.data {
            Assembled::Small(b) => b.extend_from_slice(&data),
            Assembled::Bulk(b) => b.extend_from_slice(&data),
        }
        Ok(())
    }

    pub fn finish(self) -> Result<(H, Bytes), FrameError> {
        let header = self.header.ok_or(FrameError::MissingHeader)?;
        let got = self.data.len() as u64;
        if got != self.expected_size {
            return Err(FrameError::TooShort { got, expected: self.expected_size });
        }
        let data = match self.data {
            Assembled::Small(b) => b.freeze(),
            Assembled::Bulk(b) => b.freeze(),
        };
        Ok((header, data))
    }
}

pub fn assemble_upload(frames: impl IntoIterator<Item = WriteChunkFrame>) -> Result<ChunkUpload, FrameError> {
    let mut asm = FrameAssembler::new();
    for f in frames {
        asm.push(f.header, f.data)?;
    }
    let (header, data) = asm.finish()?;
    Ok(ChunkUpload { header, data })
}

pub fn assemble_download(frames: impl IntoIterator<Item = ReadChunkFrame>) -> Result<ChunkDownload, FrameError> {
    let mut asm = FrameAssembler::new();
    for f in frames {
        asm.push(f.header, f.data)?;
    }
    let (header, data) = asm.finish()?;
    Ok(ChunkDownload { header, data })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn upload(len: usize) -> ChunkUpload {
        ChunkUpload {
            header: WriteChunkHeader { chunk_id: Bytes::from_static(&[7; 16]), size: len as u64, ..Default::default() },
            data: (0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct(
                concat!(env!("CARGO_MANIFEST_DIR"), "/../proptest-regressions/core-rpc-frames.txt")))),
            cases: 64,
            ..ProptestConfig::default()
        })]
        #[test]
        fn frames_round_trip_and_stay_under_the_frame_size(len in 0usize..(3 * CHUNK_FRAME_BYTES + 17)) {
            let up = upload(len);
            let frames = write_frames(up.clone());
            prop_assert!(frames.iter().all(|f| f.data.len() <= CHUNK_FRAME_BYTES));
            prop_assert!(frames[0].header.is_some());
            prop_assert_eq!(assemble_upload(frames).unwrap(), up);
        }
    }

    /// A bulk chunk arrives in aligned memory (its disk may write it from there); a small one
    /// need not.
    #[test]
    fn bulk_chunks_are_assembled_into_aligned_memory() {
        for len in [crate::bulk_buf::BULK_MIN_BYTES as usize, 4 << 20, (4 << 20) + 3] {
            let up = upload(len);
            let assembled = assemble_upload(write_frames(up.clone())).unwrap();
            assert!(crate::bulk_buf::is_aligned(&assembled.data), "{len}");
            assert_eq!(assembled, up);
        }
        // Too short: an error, whatever the buffer.
        let mut frames = write_frames(upload(4 << 20));
        frames.pop();
        assert!(matches!(assemble_upload(frames), Err(FrameError::TooShort { .. })));
    }

    #[test]
    fn malformed_frame_sequences_are_errors() {
        let mut frames = write_frames(upload(10));
        frames[0].header.as_mut().unwrap().size = 9;
        assert_eq!(assemble_upload(frames), Err(FrameError::TooLong { expected: 9 }));
        let mut frames = write_frames(upload(10));
        frames[0].header.as_mut().unwrap().size = 11;
        assert_eq!(assemble_upload(frames), Err(FrameError::TooShort { got: 10, expected: 11 }));
        assert_eq!(assemble_upload(vec![WriteChunkFrame::default()]), Err(FrameError::MissingHeader));
        let mut frames = write_frames(upload(CHUNK_FRAME_BYTES + 1));
        frames[1].header = frames[0].header.clone();
        assert_eq!(assemble_upload(frames), Err(FrameError::RepeatedHeader));
        let mut frames = write_frames(upload(1));
        frames[0].header.as_mut().unwrap().size = u64::MAX;
        assert!(matches!(assemble_upload(frames), Err(FrameError::TooLarge { .. })));
        // Empty frames after the first would each be a sign of life bringing nothing.
        let mut frames = write_frames(upload(10));
        frames.insert(1, WriteChunkFrame::default());
        assert_eq!(assemble_upload(frames), Err(FrameError::EmptyFrame));
        // A chunk of no bytes is one frame, its header's, with no data.
        assert!(assemble_upload(write_frames(upload(0))).is_ok());
    }

    #[test]
    fn errors_survive_the_wire() {
        let leader = MetaNode { id: 2, addr: "10.0.0.2:7000".into() };
        for e in [
            RpcError::NotLeader { leader: Some(leader) },
            RpcError::NotLeader { leader: None },
            RpcError::NotFound("/a".into()),
            RpcError::ChecksumMismatch("chunk x".into()),
            RpcError::FailedPrecondition("missing chunk 3".into()),
        ] {
            assert_eq!(RpcError::decode_detail(&e.encode_detail()), e);
        }
        assert!(matches!(RpcError::decode_detail(b"\xff\xff"), RpcError::Malformed(_)));
    }

    /// One of each variant, with its fault and whether it is retryable: the table the rest of
    /// the code relies on.
    fn every_error() -> Vec<(RpcError, Fault, bool)> {
        let m = || "m".to_string();
        vec![
            (RpcError::NotLeader { leader: Some(MetaNode { id: 2, addr: "a:1".into() }) }, Fault::World, true),
            (RpcError::NotFound(m()), Fault::Caller, false),
            (RpcError::AlreadyExists(m()), Fault::Caller, false),
            (RpcError::InvalidArgument(m()), Fault::Caller, false),
            (RpcError::Unavailable(m()), Fault::World, true),
            (RpcError::ChecksumMismatch(m()), Fault::Peer, false),
            (RpcError::NoSpace(m()), Fault::World, false),
            (RpcError::FailedPrecondition(m()), Fault::Caller, false),
            (RpcError::Internal(m()), Fault::Peer, false),
            (RpcError::Malformed(m()), Fault::Peer, false),
            (RpcError::Transport(m()), Fault::World, true),
        ]
    }

    #[test]
    fn every_error_says_whose_fault_and_whether_to_retry() {
        for (e, fault, retryable) in every_error() {
            assert_eq!((e.fault(), e.is_retryable()), (fault, retryable), "{e:?}");
            // Only the world's errors are ever worth repeating.
            assert!(!e.is_retryable() || e.fault() == Fault::World, "{e:?}");
        }
    }

    /// Through the details every error arrives as itself, but for the two the receiver makes
    /// (`Malformed` arrives as the caller's `InvalidArgument`, `Transport` as the server's
    /// `Unavailable`); by its status code alone, as what the code means, retryable exactly
    /// when the error was.
    #[test]
    fn every_error_travels_by_detail_and_by_code() {
        for (e, _, retryable) in every_error() {
            let arrived = RpcError::decode_detail(&e.encode_detail());
            match &e {
                RpcError::Malformed(m) => assert_eq!(arrived, RpcError::InvalidArgument(m.clone())),
                RpcError::Transport(m) => assert_eq!(arrived, RpcError::Unavailable(m.clone())),
                _ => assert_eq!(arrived, e),
            }
            let by_code = RpcError::from_grpc_code("n:1", Some(e.grpc_code()), "m");
            assert_eq!(by_code.is_retryable(), retryable, "{e:?} arrives as {by_code:?}");
            assert_eq!(by_code.grpc_code(), e.grpc_code(), "{e:?} arrives as {by_code:?}");
        }
        // Every code a proxy or a dying server may send means something, retryable only where
        // the world is to blame.
        for code in GrpcCode::ALL {
            assert_eq!(GrpcCode::from_i32(code as i32), Some(code));
            let e = RpcError::from_grpc_code("n:1", Some(code), "m");
            assert!(!e.is_retryable() || e.fault() == Fault::World, "{code:?} → {e:?}");
        }
        assert!(matches!(RpcError::from_grpc_code("n:1", None, "m"), RpcError::Internal(_)));
        assert_eq!(GrpcCode::from_i32(0), None);
    }
}

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

/// Bytes of chunk data per frame on the wire. Chunks are megabytes; frames keep every message
/// well under transport limits and let the receiver start hashing before the last byte.
pub const CHUNK_FRAME_BYTES: usize = 256 * 1024;

/// Chunks of at most this many bytes may travel whole in a `ChunkBatchService` call, many to
/// a call: one frame's worth. Larger chunks always stream.
pub const SMALL_CHUNK_BYTES_MAX: usize = CHUNK_FRAME_BYTES;

/// Chunks in one `ChunkBatchService` call, and their bytes together: bound what a storage node
/// holds in memory for one call, and how long one call keeps a stream slot.
pub const CHUNK_BATCH_MAX: usize = 64;
pub const CHUNK_BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Largest unary message a node sends or accepts (both transports enforce it). Metadata
/// replies for very large files (a chunk list of 1 TB in 4 MiB chunks is ~30 MB) and batches
/// of Raft entries outgrow gRPC's 4 MiB default; snapshots travel in 1 MiB pieces regardless.
pub const UNARY_MESSAGE_MAX_BYTES: usize = 64 * 1024 * 1024;

/// How a call ended when it did not succeed. The caller can tell apart what is worth repeating
/// (`is_retryable`: `NotLeader`, `Unavailable`, `Transport`), a replica that is bad
/// (`ChecksumMismatch`: never asked again, but another replica of the chunk may be read), and
/// what is final.
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
    #[error("internal error: {0}")]
    Internal(String),
    /// The call did not complete: connection refused or reset, timeout. The server may or may
    /// not have carried it out.
    #[error("transport: {0}")]
    Transport(String),
}

impl RpcError {
    /// Worth repeating, here or on another node: the same call may succeed. Not
    /// `ChecksumMismatch`: the same replica would fail again (a reader turns to another one).
    pub fn is_retryable(&self) -> bool {
        matches!(self, RpcError::NotLeader { .. } | RpcError::Unavailable(_) | RpcError::Transport(_))
    }

    pub fn to_detail(&self) -> ErrorDetail {
        let (code, message) = match self {
            RpcError::NotLeader { .. } => (ErrorCode::NotLeader, self.to_string()),
            RpcError::NotFound(m) => (ErrorCode::NotFound, m.clone()),
            RpcError::AlreadyExists(m) => (ErrorCode::AlreadyExists, m.clone()),
            RpcError::InvalidArgument(m) => (ErrorCode::InvalidArgument, m.clone()),
            RpcError::Unavailable(m) | RpcError::Transport(m) => (ErrorCode::Unavailable, m.clone()),
            RpcError::ChecksumMismatch(m) => (ErrorCode::ChecksumMismatch, m.clone()),
            RpcError::NoSpace(m) => (ErrorCode::NoSpace, m.clone()),
            RpcError::FailedPrecondition(m) => (ErrorCode::FailedPrecondition, m.clone()),
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
            ErrorCode::Internal | ErrorCode::Unspecified => RpcError::Internal(m),
        }
    }

    pub fn encode_detail(&self) -> Bytes {
        self.to_detail().encode_to_vec().into()
    }

    /// Decodes what `encode_detail` produced; garbage becomes an `Internal` error.
    pub fn decode_detail(bytes: &[u8]) -> Self {
        match ErrorDetail::decode(bytes) {
            Ok(d) => Self::from_detail(d),
            Err(e) => RpcError::Internal(format!("undecodable error detail: {e}")),
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
    let request = Req::decode(body).map_err(|e| RpcError::InvalidArgument(format!("undecodable request: {e}")))?;
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
/// data (`chunk_store::is_bulk`) is assembled into a `BulkBuf`, so that it reaches the disk
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
}

impl From<FrameError> for RpcError {
    fn from(e: FrameError) -> Self {
        RpcError::InvalidArgument(e.to_string())
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
                self.data = if crate::chunk_store::is_bulk(self.expected_size) {
                    Assembled::Bulk(BulkBuf::with_capacity(reserved))
                } else {
                    Assembled::Small(BytesMut::with_capacity(reserved))
                };
                self.header = Some(h);
            }
            (false, None) => return Err(FrameError::MissingHeader),
            (true, Some(_)) => return Err(FrameError::RepeatedHeader),
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
        for len in [crate::chunk_store::BULK_MIN_BYTES as usize, 4 << 20, (4 << 20) + 3] {
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
        assert!(matches!(RpcError::decode_detail(b"\xff\xff"), RpcError::Internal(_)));
    }
}

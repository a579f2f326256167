//! A storage node's chunks: the file format, where files go, the steps of an atomic write, and
//! the in-memory table of what is stored. Pure: the storage-node driver carries out the steps
//! on a `Disk` and feeds what it reads to a `FrameReader`.
//!
//! ## File format, versions 2 and 3 (written by this version)
//!
//! ```text
//! 0..8     magic "DFSCHNK2", or "DFSCHNK3" for bulk data (below)
//! 8..16    size of the data, u64 little-endian
//! 16..48   SHA-256 of the data
//! 48..52   frame size in bytes, u32 LE (CHUNK_FRAME_BYTES when written)
//! 52..56   number of frames n = ceil(size / frame size), u32 LE
//! 56..60   CRC32C of bytes 0..56 followed by the frame table
//! 60..64   zero (reserved)
//! 64..     frame table: n × CRC32C (u32 LE) of each frame of data
//! (v3 only) zero padding up to the next multiple of 4096 bytes
//! ..       the data
//! ```
//!
//! The header's CRC32C covers the frame table and (v3) the padding.
//!
//! ## Version 4 (written by this version for chained chunks)
//!
//! A chunk whose checksum is chained (`crate::chain`: the SHA-256 state after its bytes,
//! hashed on from the state before them) is checked from that state, so its header keeps it:
//!
//! ```text
//! 0..60    as version 2 ("DFSCHNK4"; 16..48 is the chained checksum)
//! 60       1 if the data is padded to 4 KiB as in version 3, else 0
//! 61..64   zero
//! 64..96   the SHA-256 state before the chunk's bytes
//! 96..104  the file's bytes before the chunk, u64 LE (a multiple of 64)
//! 104      1 if it is the file's last chunk (its checksum is the file's SHA-256), else 0
//! 105..112 zero
//! 112..    frame table, then (padded) zero padding up to the next multiple of 4096
//! ```
//!
//! Its CRC32C covers bytes 0..56 and 60 to the end of the header. A chunk with a standalone
//! checksum is still written as version 2 or 3, so a one-chunk file's replicas (every small
//! file) are read by earlier versions as before; a version 4 file is not (README, upgrading). Version 3 is written for
//! bulk chunks (`is_bulk`): with the data starting on a 4 KiB boundary, a disk that bypasses its
//! page cache writes the data straight from the buffer it was received into
//! (`bulk_buf::BulkBuf`) and reads it into aligned memory without a copy (`O_DIRECT` wants the
//! file offset, the length and the buffer aligned). The padding costs at most 4 KiB per chunk of
//! at least 1 MiB; small chunks stay version 2, compact.
//!
//! Reads stream a chunk frame by frame: each frame is checked against its CRC32C before it
//! leaves the node, so a reader never holds a whole chunk and a damaged replica never serves a
//! byte past the damaged frame. The whole chunk's SHA-256 is checked by the reader at its end
//! (end to end) and by scrub here, not again on every read (`FrameReader::serving`). CRC32C, not a SHA-256 per frame: the frame check is against media
//! damage, not an adversary (the end-to-end SHA-256 covers that), and CRC32C runs at memory
//! speed with SSE4.2/ARMv8 instructions (the `crc32c` crate), so verifying costs a read
//! nothing; the table is 4 bytes per 256 KiB frame (1 KiB for a 64 MiB chunk).
//!
//! ## Version 1 (still read)
//!
//! `DFSCHNK1`, size, SHA-256, 16 zero bytes, then the data. No frame table: a v1 chunk is
//! streamed in `CHUNK_FRAME_BYTES` frames whose only check is the whole-chunk SHA-256, made
//! before the last frame is released (a damaged v1 replica serves all but its last frame, then
//! fails).
//!
//! ## Durability
//!
//! Files are self-describing, so the table can always be rebuilt from them. A chunk becomes
//! visible only once complete: it is written under `tmp/`, fsynced, renamed into
//! `chunks/ab/cd/abcd….chunk`, and the directory is fsynced. A shard directory's own entry is
//! made durable (its parent fsynced) the first time this process writes into it; the table
//! remembers which of the 256 + 65,536 shard directories it has made durable, so later writes
//! pay no extra fsync. A crash at any step leaves either no chunk or the whole chunk; leftovers
//! in `tmp/` are removed at start-up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::bulk_buf::{is_bulk, BULK_ALIGN};
use crate::chain::{Chain, SumHasher};
use crate::ids::{ChunkId, Sha256Digest};
use crate::limits::CHUNK_FRAME_BYTES;
use crate::planted::{self, Bug};
use bytes::{Bytes, BytesMut};

pub const CHUNK_FILE_MAGIC_V1: [u8; 8] = *b"DFSCHNK1";
pub const CHUNK_FILE_MAGIC: [u8; 8] = *b"DFSCHNK2";
pub const CHUNK_FILE_MAGIC_V3: [u8; 8] = *b"DFSCHNK3";
pub const CHUNK_FILE_MAGIC_V4: [u8; 8] = *b"DFSCHNK4";
/// The chain's part of a version 4 header, after the fixed 64 bytes.
const CHAIN_BYTES: usize = 48;
/// The fixed part of the header; a v2 file's frame table follows it.
pub const HEADER_BYTES: usize = 64;
/// Frame size recorded in the files this version writes.
pub const FILE_FRAME_BYTES: u64 = CHUNK_FRAME_BYTES as u64;
/// Frame sizes a file may declare: small enough to send as one wire frame, large enough to
/// bound the frame table (64 MiB / 4 KiB × 4 bytes = 64 KiB).
const FILE_FRAME_MIN_BYTES: u64 = 4096;
const FILE_FRAME_MAX_BYTES: u64 = CHUNK_FRAME_BYTES as u64;
/// The largest chunk a file may declare.
const FILE_DATA_MAX_BYTES: u64 = crate::chunking::MAX_CHUNK_SIZE;
const CHUNK_SUFFIX: &str = ".chunk";

/// What the header says about the data that follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkMeta {
    pub size: u64,
    /// The chunk's checksum: SHA-256 of its bytes, or chained (`chain`).
    pub sha256: Sha256Digest,
    /// How `sha256` was computed: `None` for a standalone SHA-256.
    pub chain: Option<Chain>,
}

impl ChunkMeta {
    /// A chunk with a standalone SHA-256.
    pub fn standalone(size: u64, sha256: Sha256Digest) -> ChunkMeta {
        ChunkMeta { size, sha256, chain: None }
    }

    /// Bytes the file of this chunk takes, as this version writes it.
    pub fn file_bytes(&self) -> u64 {
        head_len(self.size.div_ceil(FILE_FRAME_BYTES) as usize, is_bulk(self.size), self.chain.is_some()) as u64 + self.size
    }

    /// Whether `data` (all of it) is this chunk's bytes: its length and its checksum.
    pub fn matches(&self, data: &[u8]) -> bool {
        data.len() as u64 == self.size && SumHasher::matches(self.chain.as_ref(), data, &self.sha256)
    }
}

/// Bytes the file of a chunk of `size` bytes with a standalone checksum takes, as this version
/// writes it; a chained one's header is `CHAIN_BYTES` longer (`ChunkMeta::file_bytes`), which
/// the space reserve absorbs in estimates made before the header is known.
pub fn file_bytes(size: u64) -> u64 {
    // Saturating: a size off the wire may be anything until the frames are checked.
    head_bytes(size).saturating_add(size)
}

/// Bytes before the data in the file of a chunk of `size` bytes with a standalone checksum, as
/// this version writes it: version 3 (padded) for bulk data.
fn head_bytes(size: u64) -> u64 {
    head_len(size.div_ceil(FILE_FRAME_BYTES) as usize, is_bulk(size), false) as u64
}

/// Bytes before the data of a file with `frames` frames: the header, the chain (`chained`,
/// version 4), the frame table and, when `padded` (v3, or v4 so flagged), the padding to
/// `BULK_ALIGN`.
fn head_len(frames: usize, padded: bool, chained: bool) -> usize {
    let table_end = HEADER_BYTES + if chained { CHAIN_BYTES } else { 0 } + 4 * frames;
    if padded {
        table_end.next_multiple_of(BULK_ALIGN)
    } else {
        table_end
    }
}

/// A damaged or foreign chunk file: the replica's fault, never the caller's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkFileError {
    #[error("chunk file is {0} bytes, shorter than its header")]
    Truncated(u64),
    #[error("chunk file has a bad magic number")]
    BadMagic,
    #[error("chunk file header is damaged: {0}")]
    BadHeader(&'static str),
    #[error("chunk file holds {actual} bytes of data but its header says {announced}")]
    SizeMismatch { announced: u64, actual: u64 },
    #[error("frame {frame} of the chunk does not match its CRC32C")]
    FrameChecksumMismatch { frame: u64 },
    #[error("chunk data does not match its SHA-256")]
    ChecksumMismatch,
}

/// How the frames of a file are checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameChecks {
    /// Version 1: only the whole-chunk SHA-256.
    WholeChunkOnly,
    /// Version 2: a CRC32C per frame of `frame_bytes`.
    Crc32c { frame_bytes: u64, crcs: Vec<u32> },
}

/// A decoded header, frame table included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileHeader {
    pub meta: ChunkMeta,
    pub checks: FrameChecks,
    /// Where the data starts: the header's length (`header_len`), padding included.
    data_offset: u64,
}

impl FileHeader {
    /// Where the data starts.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    pub fn file_len(&self) -> u64 {
        self.data_offset().saturating_add(self.meta.size)
    }

    fn frame_bytes(&self) -> u64 {
        match &self.checks {
            FrameChecks::WholeChunkOnly => CHUNK_FRAME_BYTES as u64,
            FrameChecks::Crc32c { frame_bytes, .. } => *frame_bytes,
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// From the first `HEADER_BYTES` of a file: how many bytes the whole header (frame table
/// included) takes, so the caller can read exactly that much.
pub fn header_len(first: &[u8]) -> Result<usize, ChunkFileError> {
    if first.len() < HEADER_BYTES {
        return Err(ChunkFileError::Truncated(first.len() as u64));
    }
    let magic: [u8; 8] = first[..8].try_into().expect("8 bytes");
    match magic {
        CHUNK_FILE_MAGIC_V1 => Ok(HEADER_BYTES),
        CHUNK_FILE_MAGIC | CHUNK_FILE_MAGIC_V3 | CHUNK_FILE_MAGIC_V4 => {
            let frames = u32_at(first, 52) as u64;
            // Bounded before anything is read: at most FILE_DATA_MAX_BYTES / FILE_FRAME_MIN_BYTES.
            if frames > FILE_DATA_MAX_BYTES / FILE_FRAME_MIN_BYTES {
                return Err(ChunkFileError::BadHeader("too many frames"));
            }
            let chained = magic == CHUNK_FILE_MAGIC_V4;
            let padded = match (chained, first[60]) {
                (false, _) => magic == CHUNK_FILE_MAGIC_V3,
                (true, 0) => false,
                (true, 1) => true,
                (true, _) => return Err(ChunkFileError::BadHeader("bad padding flag")),
            };
            Ok(head_len(frames as usize, padded, chained))
        }
        _ => Err(ChunkFileError::BadMagic),
    }
}

/// Decodes a whole header (`header_len` bytes, or more: the rest is ignored).
pub fn decode_header(bytes: &[u8]) -> Result<FileHeader, ChunkFileError> {
    let len = header_len(bytes)?;
    if bytes.len() < len {
        return Err(ChunkFileError::Truncated(bytes.len() as u64));
    }
    let size = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let sha256 = Sha256Digest(bytes[16..48].try_into().expect("32 bytes"));
    let mut meta = ChunkMeta::standalone(size, sha256);
    // Every version: no chunk holds more (the fuzzer found a version 1 header announcing
    // 2^64 - 1 bytes, whose file length overflowed).
    if size > FILE_DATA_MAX_BYTES {
        return Err(ChunkFileError::BadHeader("size beyond the largest chunk"));
    }
    if bytes[..8] == CHUNK_FILE_MAGIC_V1 {
        return Ok(FileHeader { meta, checks: FrameChecks::WholeChunkOnly, data_offset: len as u64 });
    }
    let chained = bytes[..8] == CHUNK_FILE_MAGIC_V4;
    // Version 4's flags (byte 60) are covered; 56..60 is the CRC itself.
    let covered_from = if chained { 60 } else { HEADER_BYTES };
    let mut crc = crc32c::crc32c(&bytes[..56]);
    crc = crc32c::crc32c_append(crc, &bytes[covered_from..len]);
    if crc != u32_at(bytes, 56) {
        return Err(ChunkFileError::BadHeader("header checksum mismatch"));
    }
    if chained {
        let ext = &bytes[HEADER_BYTES..HEADER_BYTES + CHAIN_BYTES];
        let last = match ext[40] {
            0 => false,
            1 => true,
            _ => return Err(ChunkFileError::BadHeader("bad last-chunk flag")),
        };
        let chain =
            Chain { before: Sha256Digest(ext[..32].try_into().expect("32 bytes")), offset: u64::from_le_bytes(ext[32..40].try_into().expect("8 bytes")), last };
        if !chain.is_well_formed() || (!last && !size.is_multiple_of(crate::chain::BLOCK_BYTES)) {
            return Err(ChunkFileError::BadHeader("chain off a SHA-256 block boundary"));
        }
        meta.chain = Some(chain);
    }
    let frame_bytes = u32_at(bytes, 48) as u64;
    if !(FILE_FRAME_MIN_BYTES..=FILE_FRAME_MAX_BYTES).contains(&frame_bytes) {
        return Err(ChunkFileError::BadHeader("frame size out of range"));
    }
    if size > FILE_DATA_MAX_BYTES || size.div_ceil(frame_bytes) != u32_at(bytes, 52) as u64 {
        return Err(ChunkFileError::BadHeader("size and frame count disagree"));
    }
    let table_start = HEADER_BYTES + if chained { CHAIN_BYTES } else { 0 };
    let table_end = head_len(u32_at(bytes, 52) as usize, false, chained);
    let crcs = bytes[table_start..table_end].chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
    Ok(FileHeader { meta, checks: FrameChecks::Crc32c { frame_bytes, crcs }, data_offset: len as u64 })
}

/// The header and frame table of a chunk holding `data`: version 2, or version 3 (padded to
/// `BULK_ALIGN`) for bulk data; version 4 (padded alike) for a chained checksum.
pub fn encode_head(meta: ChunkMeta, data: &[u8]) -> Bytes {
    encode_head_as(meta, data, is_bulk(data.len() as u64))
}

/// `encode_head`, padded (`aligned`) or not whatever the size (tests of files earlier builds
/// wrote: version 2 for every size).
fn encode_head_as(meta: ChunkMeta, data: &[u8], aligned: bool) -> Bytes {
    let frames = data.len().div_ceil(FILE_FRAME_BYTES as usize);
    let chained = meta.chain.is_some();
    let mut h = BytesMut::zeroed(head_len(frames, aligned, chained));
    h[..8].copy_from_slice(match (chained, aligned) {
        (true, _) => &CHUNK_FILE_MAGIC_V4,
        (false, true) => &CHUNK_FILE_MAGIC_V3,
        (false, false) => &CHUNK_FILE_MAGIC,
    });
    h[8..16].copy_from_slice(&meta.size.to_le_bytes());
    h[16..48].copy_from_slice(&meta.sha256.0);
    h[48..52].copy_from_slice(&(FILE_FRAME_BYTES as u32).to_le_bytes());
    h[52..56].copy_from_slice(&(frames as u32).to_le_bytes());
    let mut table_start = HEADER_BYTES;
    if let Some(chain) = meta.chain {
        h[60] = u8::from(aligned);
        let ext = &mut h[HEADER_BYTES..HEADER_BYTES + CHAIN_BYTES];
        ext[..32].copy_from_slice(&chain.before.0);
        ext[32..40].copy_from_slice(&chain.offset.to_le_bytes());
        ext[40] = u8::from(chain.last);
        table_start += CHAIN_BYTES;
    }
    for (i, frame) in data.chunks(FILE_FRAME_BYTES as usize).enumerate() {
        h[table_start + 4 * i..table_start + 4 * i + 4].copy_from_slice(&crc32c::crc32c(frame).to_le_bytes());
    }
    let covered_from = if chained { 60 } else { HEADER_BYTES };
    let crc = crc32c::crc32c_append(crc32c::crc32c(&h[..56]), &h[covered_from..]);
    h[56..60].copy_from_slice(&crc.to_le_bytes());
    h.freeze()
}

/// The whole file: header, frame table, data.
pub fn encode_file(meta: ChunkMeta, data: &[u8]) -> Bytes {
    let mut out = BytesMut::from(&encode_head(meta, data)[..]);
    out.extend_from_slice(data);
    out.freeze()
}

/// A version 1 file (for tests of the upgrade path: this version never writes one).
pub fn encode_file_v1(meta: ChunkMeta, data: &[u8]) -> Bytes {
    let mut out = BytesMut::zeroed(HEADER_BYTES);
    out[..8].copy_from_slice(&CHUNK_FILE_MAGIC_V1);
    out[8..16].copy_from_slice(&meta.size.to_le_bytes());
    out[16..48].copy_from_slice(&meta.sha256.0);
    out.extend_from_slice(data);
    out.freeze()
}

/// Checks a chunk frame by frame as the driver reads it: `next_read` says which bytes to read,
/// `accept` checks them. A frame is released to the caller only after `accept` returned `Ok`;
/// with `new`, the last one only after the whole chunk matched its SHA-256.
pub struct FrameReader {
    header: FileHeader,
    next: u64,
    frames: u64,
    /// `None`: the frames' CRC32Cs are the only check (`serving`).
    hasher: Option<SumHasher>,
}

impl FrameReader {
    /// Every check the file allows: each frame's CRC32C and the whole chunk's SHA-256 (scrub,
    /// whole-file checks).
    pub fn new(header: FileHeader) -> Self {
        // An empty chunk is still one (empty) frame: the one that carries the header.
        let frames = header.meta.size.div_ceil(header.frame_bytes()).max(1);
        let hasher = Some(SumHasher::new(header.meta.chain.as_ref()));
        FrameReader { header, next: 0, frames, hasher }
    }

    /// The checks of a chunk served to a reader: for a version 2 file, each frame's CRC32C
    /// only, as HDFS checks a block on read. The SHA-256 was checked when the chunk arrived,
    /// before its CRC32Cs were computed from the same bytes; a frame damaged on disk since
    /// fails its CRC32C, and the reader checks the SHA-256 again at its end (end to end), so
    /// hashing here too cost a third of a download's hashing (a quarter of a storage node's
    /// CPU while serving) for no damage it alone could catch. A version 1 file has no frame
    /// checks: it keeps the SHA-256 check before its last frame.
    pub fn serving(header: FileHeader) -> Self {
        let crc_checked = matches!(header.checks, FrameChecks::Crc32c { .. });
        let mut reader = FrameReader::new(header);
        if crc_checked {
            reader.hasher = None;
        }
        reader
    }

    pub fn meta(&self) -> ChunkMeta {
        self.header.meta
    }

    /// `serving`, limited to the frames holding bytes `[offset, offset + len)` of the chunk
    /// (clamped to it): what those frames are, for the reader to check them. A file without
    /// frame checks (version 1) is served whole, its SHA-256 checked before its last frame.
    pub fn serving_range(header: FileHeader, offset: u64, len: u64) -> (Self, ServedRange) {
        let mut reader = FrameReader::serving(header);
        let FrameChecks::Crc32c { frame_bytes, crcs } = reader.header.checks.clone() else {
            let range = ServedRange { start: 0, bytes: reader.header.meta.size, frame_bytes: reader.header.frame_bytes(), crcs: Vec::new() };
            return (reader, range);
        };
        let size = reader.header.meta.size;
        let end = offset.saturating_add(len).min(size);
        let first = (offset.min(size) / frame_bytes).min(reader.frames.saturating_sub(1));
        let last = if end > offset.min(size) { end.div_ceil(frame_bytes) } else { first + 1 }.min(reader.frames).max(first + 1);
        reader.next = first;
        reader.frames = last;
        let start = first * frame_bytes;
        let bytes = (last * frame_bytes).min(size) - start;
        let range = ServedRange { start, bytes, frame_bytes, crcs: crcs.get(first as usize..last as usize).map(<[u32]>::to_vec).unwrap_or_default() };
        (reader, range)
    }

    /// (offset in the file, length) of the next frame to read; `None` once all are accepted.
    pub fn next_read(&self) -> Option<(u64, u64)> {
        (self.next < self.frames).then(|| {
            let fb = self.header.frame_bytes();
            let start = self.next * fb;
            (self.header.data_offset() + start, fb.min(self.header.meta.size - start))
        })
    }

    /// Checks the frame `next_read` named, as read from disk.
    pub fn accept(&mut self, data: &[u8]) -> Result<(), ChunkFileError> {
        let (_, len) = self.next_read().expect("accept after the last frame");
        if planted::on(Bug::UncheckedRead) {
            self.next += 1;
            return Ok(());
        }
        if data.len() as u64 != len {
            let before = self.next * self.header.frame_bytes();
            return Err(ChunkFileError::SizeMismatch { announced: self.header.meta.size, actual: before + data.len() as u64 });
        }
        if let FrameChecks::Crc32c { crcs, .. } = &self.header.checks {
            if let Some(&expected) = crcs.get(self.next as usize) {
                if crc32c::crc32c(data) != expected {
                    return Err(ChunkFileError::FrameChecksumMismatch { frame: self.next });
                }
            }
        }
        self.next += 1;
        if let Some(hasher) = self.hasher.as_mut() {
            hasher.update(data);
            if self.next == self.frames && hasher.clone().finish() != Some(self.header.meta.sha256) {
                return Err(ChunkFileError::ChecksumMismatch);
            }
        }
        Ok(())
    }
}

/// What a ranged read serves: `bytes` bytes from byte `start` of the chunk, in frames of
/// `frame_bytes` whose CRC32Cs are `crcs` (empty: the whole chunk, checked by its SHA-256).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedRange {
    pub start: u64,
    pub bytes: u64,
    pub frame_bytes: u64,
    pub crcs: Vec<u32>,
}

/// Why bytes a ranged read received cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("frame {frame} of the range does not match its CRC32C")]
    FrameChecksumMismatch { frame: u64 },
    #[error("the whole chunk does not match its SHA-256")]
    ChecksumMismatch,
    #[error("{got} bytes where the range announced {expected}")]
    Length { got: u64, expected: u64 },
}

/// Checks what a ranged read received (`ServedRange` and the data) and returns the bytes
/// `[offset, offset + len)` of the chunk out of it (clamped to what was served).
pub fn check_range(range: &ServedRange, meta: ChunkMeta, data: &Bytes, offset: u64, len: u64) -> Result<Bytes, RangeError> {
    if data.len() as u64 != range.bytes {
        return Err(RangeError::Length { got: data.len() as u64, expected: range.bytes });
    }
    if range.crcs.is_empty() {
        if range.start != 0 || range.bytes != meta.size || !meta.matches(data) {
            return Err(RangeError::ChecksumMismatch);
        }
    } else {
        let frame_bytes = range.frame_bytes.max(1) as usize;
        let frames = data.chunks(frame_bytes).count().max(1);
        if frames != range.crcs.len() {
            return Err(RangeError::Length { got: data.len() as u64, expected: range.crcs.len() as u64 * frame_bytes as u64 });
        }
        for (k, (piece, crc)) in data.chunks(frame_bytes).zip(&range.crcs).enumerate() {
            if crc32c::crc32c(piece) != *crc {
                return Err(RangeError::FrameChecksumMismatch { frame: k as u64 });
            }
        }
    }
    let from = offset.saturating_sub(range.start).min(range.bytes);
    let to = offset.saturating_add(len).saturating_sub(range.start).min(range.bytes).max(from);
    Ok(data.slice(from as usize..to as usize))
}

/// Checks a whole chunk file in memory and returns its data (tests and small tools; the node
/// streams through `FrameReader`).
pub fn decode_file(file: Bytes) -> Result<(ChunkMeta, Bytes), ChunkFileError> {
    let header = decode_header(&file)?;
    let data = file.slice((header.data_offset() as usize).min(file.len())..);
    if data.len() as u64 != header.meta.size {
        return Err(ChunkFileError::SizeMismatch { announced: header.meta.size, actual: data.len() as u64 });
    }
    let mut reader = FrameReader::new(header);
    while let Some((offset, len)) = reader.next_read() {
        let start = (offset as usize).min(file.len());
        reader.accept(&file[start..(start + len as usize).min(file.len())])?;
    }
    Ok((reader.meta(), data))
}

/// Where things live under a storage node's data directory.
#[derive(Clone, Debug)]
pub struct ChunkLayout {
    root: PathBuf,
}

impl ChunkLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ChunkLayout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn chunks_dir(&self) -> PathBuf {
        self.root.join("chunks")
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// `chunks/ab/cd/abcd….chunk`: two levels of 256 directories keep each directory small.
    pub fn chunk_path(&self, id: ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.chunks_dir().join(&hex[0..2]).join(&hex[2..4]).join(format!("{hex}{CHUNK_SUFFIX}"))
    }

    /// Replicas found damaged are moved here: never served, kept for a post-mortem.
    pub fn corrupt_dir(&self) -> PathBuf {
        self.root.join("corrupt")
    }

    pub fn corrupt_path(&self, id: ChunkId, nonce: u64) -> PathBuf {
        self.corrupt_dir().join(format!("{}.{nonce:016x}{CHUNK_SUFFIX}", id.to_hex()))
    }

    /// `chunks/ab` and `chunks/ab/cd` of a chunk.
    pub fn shard_dirs(&self, id: ChunkId) -> (PathBuf, PathBuf) {
        let hex = id.to_hex();
        let outer = self.chunks_dir().join(&hex[0..2]);
        let inner = outer.join(&hex[2..4]);
        (outer, inner)
    }

    pub fn tmp_path(&self, id: ChunkId, nonce: u64) -> PathBuf {
        self.tmp_dir().join(format!("{}.{nonce:016x}.tmp", id.to_hex()))
    }

    /// The chunk a file in a shard directory holds, if its name is one of ours.
    pub fn parse_chunk_file_name(name: &str) -> Option<ChunkId> {
        ChunkId::from_hex(name.strip_suffix(CHUNK_SUFFIX)?)
    }

    /// Is `name` a two-hex-digit shard directory name?
    pub fn is_shard_name(name: &str) -> bool {
        name.len() == 2 && name.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    }
}

pub use crate::env::DiskStep;

/// The steps that make a chunk durable and visible atomically. `nonce` keeps concurrent or
/// crashed attempts from sharing a temporary file. `tmp/` and `chunks/` exist and are durable
/// (the node makes them so at start-up); the shard directories are created, and their entries
/// made durable, unless `table` knows this process already did. Call `ChunkTable::finish_write`
/// once every step succeeded.
pub fn write_steps(layout: &ChunkLayout, table: &ChunkTable, id: ChunkId, nonce: u64, meta: ChunkMeta, data: Bytes) -> Vec<DiskStep> {
    let tmp = layout.tmp_path(id, nonce);
    let dest = layout.chunk_path(id);
    let (outer, inner) = layout.shard_dirs(id);
    let head = encode_head(meta, &data);
    let data_offset = head.len() as u64;
    let mut steps = if is_bulk(meta.size) {
        vec![DiskStep::WriteBulk { path: tmp.clone(), head, data }]
    } else {
        let mut steps = vec![DiskStep::WriteFile { path: tmp.clone(), data: head }];
        if !data.is_empty() {
            steps.push(DiskStep::WriteAt { path: tmp.clone(), offset: data_offset, data });
        }
        steps
    };
    if !planted::on(Bug::NoFileFsync) {
        steps.push(DiskStep::SyncFile(tmp.clone()));
    }
    let (outer_durable, inner_durable) = table.shard_durable(id);
    if !inner_durable {
        steps.push(DiskStep::CreateDir(inner.clone()));
        if !outer_durable {
            steps.push(DiskStep::SyncDir(layout.chunks_dir()));
        }
        steps.push(DiskStep::SyncDir(outer));
    }
    steps.push(DiskStep::Rename { from: tmp, to: dest });
    if !planted::on(Bug::NoDirFsync) {
        steps.push(DiskStep::SyncDir(inner));
    }
    steps
}

/// One chunk of a batch write (`batch_write_steps`).
#[derive(Clone, Debug)]
pub struct BatchItem {
    pub id: ChunkId,
    /// Names its temporary file (as `write_steps`' `nonce`).
    pub nonce: u64,
    pub meta: ChunkMeta,
    pub data: Bytes,
}

/// The steps that make a batch of small chunks durable and visible with two flushes of the
/// filesystem (`SyncAll`) instead of an fsync per file and per directory: every temporary file
/// written; one flush (the contents durable); the missing shard directories created and every
/// chunk renamed into place; one flush (the entries durable). A crash before the first flush
/// leaves only temporary files; between the two, any rename that survives names a complete,
/// durable file, as with `write_steps`. The caller acknowledges nothing before the last step
/// and calls `ChunkTable::finish_write` for each item once every step succeeded.
pub fn batch_write_steps(layout: &ChunkLayout, table: &ChunkTable, items: &[BatchItem]) -> Vec<DiskStep> {
    let mut steps = Vec::with_capacity(items.len() * 3 + 2);
    for item in items {
        let tmp = layout.tmp_path(item.id, item.nonce);
        let head = encode_head(item.meta, &item.data);
        let data_offset = head.len() as u64;
        steps.push(DiskStep::WriteFile { path: tmp.clone(), data: head });
        if !item.data.is_empty() {
            steps.push(DiskStep::WriteAt { path: tmp, offset: data_offset, data: item.data.clone() });
        }
    }
    if !planted::on(Bug::NoFileFsync) {
        steps.push(DiskStep::SyncAll(layout.root().to_path_buf()));
    }
    let mut created = std::collections::BTreeSet::new();
    for item in items {
        let (_, inner) = layout.shard_dirs(item.id);
        if !table.shard_durable(item.id).1 && created.insert(inner.clone()) {
            steps.push(DiskStep::CreateDir(inner));
        }
    }
    for item in items {
        steps.push(DiskStep::Rename { from: layout.tmp_path(item.id, item.nonce), to: layout.chunk_path(item.id) });
    }
    if !planted::on(Bug::NoDirFsync) {
        steps.push(DiskStep::SyncAll(layout.root().to_path_buf()));
    }
    steps
}

/// The state of one chunk on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkState {
    /// Bytes are on their way to disk; not readable yet.
    Writing(ChunkMeta),
    /// Durable, verified when written.
    Stored(ChunkMeta),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkStoreError {
    #[error("chunk {0} is being written by another request")]
    WriteInProgress(ChunkId),
    #[error("chunk {0} is already stored with different contents")]
    Conflict(ChunkId),
    #[error("chunk {0} is not stored here")]
    NotStored(ChunkId),
    #[error("disk full: the chunk needs {needed_bytes} bytes (with the reserve and writes in progress), {free_bytes} are free")]
    NoSpace { needed_bytes: u64, free_bytes: u64 },
}

/// What to do with an incoming write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum WriteDecision {
    /// Write it: carry out `write_steps`, then `finish_write` or `abort_write`.
    Write,
    /// The same bytes are already stored: nothing to do (a retried write).
    AlreadyStored,
}

/// The table of chunks on this node, in memory; rebuilt from the files at start-up. Also
/// remembers which shard directories this process has made durable: a bit per directory,
/// 256 + 65,536 bits, so it is bounded whatever the node stores.
#[derive(Clone, Debug)]
pub struct ChunkTable {
    chunks: BTreeMap<ChunkId, ChunkState>,
    /// Chunks in `Writing`, and the bytes their files will take (kept, not recounted: a node
    /// holds millions of chunks and asks before every write).
    writing_count: usize,
    writing_bytes: u64,
    /// Chunks stored, and the bytes their files take (kept for the same reason).
    stored_count: u64,
    stored_bytes: u64,
    durable_outer: [u64; 4],
    durable_inner: Box<[u64; 1024]>,
}

impl Default for ChunkTable {
    fn default() -> Self {
        ChunkTable {
            chunks: BTreeMap::new(),
            writing_count: 0,
            writing_bytes: 0,
            stored_count: 0,
            stored_bytes: 0,
            durable_outer: [0; 4],
            durable_inner: Box::new([0; 1024]),
        }
    }
}

fn shard_indexes(id: ChunkId) -> (usize, usize) {
    let b = id.as_bytes();
    (b[0] as usize, (b[0] as usize) << 8 | b[1] as usize)
}

/// Refuses a write early when the disk cannot take it: the chunk's file, the writes already in
/// progress, and a reserve (for metadata, logs, and the node's own bookkeeping) must all fit.
pub fn check_space(incoming_file_bytes: u64, in_progress_bytes: u64, free_bytes: u64, reserve_bytes: u64) -> Result<(), ChunkStoreError> {
    let needed_bytes = incoming_file_bytes.saturating_add(in_progress_bytes).saturating_add(reserve_bytes);
    if needed_bytes > free_bytes {
        return Err(ChunkStoreError::NoSpace { needed_bytes, free_bytes });
    }
    Ok(())
}

impl ChunkTable {
    /// A chunk found on disk at start-up.
    pub fn insert_stored(&mut self, id: ChunkId, meta: ChunkMeta) {
        match self.chunks.insert(id, ChunkState::Stored(meta)) {
            Some(ChunkState::Stored(old)) => self.stored_gone(old),
            Some(ChunkState::Writing(old)) => self.writing_done(old),
            None => {}
        }
        self.stored_added(meta);
    }

    fn stored_added(&mut self, meta: ChunkMeta) {
        self.stored_count += 1;
        self.stored_bytes += meta.file_bytes();
    }

    fn stored_gone(&mut self, meta: ChunkMeta) {
        self.stored_count -= 1;
        self.stored_bytes -= meta.file_bytes();
    }

    pub fn begin_write(&mut self, id: ChunkId, meta: ChunkMeta) -> Result<WriteDecision, ChunkStoreError> {
        match self.chunks.get(&id) {
            None => {
                self.chunks.insert(id, ChunkState::Writing(meta));
                self.writing_count += 1;
                self.writing_bytes += meta.file_bytes();
                Ok(WriteDecision::Write)
            }
            Some(ChunkState::Writing(_)) => Err(ChunkStoreError::WriteInProgress(id)),
            Some(ChunkState::Stored(existing)) if *existing == meta => Ok(WriteDecision::AlreadyStored),
            Some(ChunkState::Stored(_)) => Err(ChunkStoreError::Conflict(id)),
        }
    }

    /// Every step of the write succeeded: the chunk is readable, and its shard directories
    /// are durable.
    pub fn finish_write(&mut self, id: ChunkId) {
        if let Some(ChunkState::Writing(meta)) = self.chunks.get(&id).copied() {
            self.chunks.insert(id, ChunkState::Stored(meta));
            self.writing_done(meta);
            self.stored_added(meta);
            let (outer, inner) = shard_indexes(id);
            self.durable_outer[outer / 64] |= 1 << (outer % 64);
            self.durable_inner[inner / 64] |= 1 << (inner % 64);
        }
    }

    pub fn abort_write(&mut self, id: ChunkId) {
        if let Some(ChunkState::Writing(meta)) = self.chunks.get(&id).copied() {
            self.chunks.remove(&id);
            self.writing_done(meta);
        }
    }

    fn writing_done(&mut self, meta: ChunkMeta) {
        self.writing_count -= 1;
        self.writing_bytes -= meta.file_bytes();
    }

    /// Whether this process made `chunks/ab` and `chunks/ab/cd` of `id` durable.
    pub fn shard_durable(&self, id: ChunkId) -> (bool, bool) {
        let (outer, inner) = shard_indexes(id);
        (self.durable_outer[outer / 64] & (1 << (outer % 64)) != 0, self.durable_inner[inner / 64] & (1 << (inner % 64)) != 0)
    }

    /// A stored chunk's metadata; a chunk still being written is not readable.
    pub fn stored(&self, id: ChunkId) -> Result<ChunkMeta, ChunkStoreError> {
        match self.chunks.get(&id) {
            Some(ChunkState::Stored(meta)) => Ok(*meta),
            _ => Err(ChunkStoreError::NotStored(id)),
        }
    }

    /// Forget a stored chunk (deleted, or found corrupt). Returns whether it was stored. A
    /// chunk being written is left to its writer.
    pub fn remove(&mut self, id: ChunkId) -> bool {
        match self.chunks.get(&id).copied() {
            Some(ChunkState::Stored(meta)) => {
                self.chunks.remove(&id);
                self.stored_gone(meta);
                true
            }
            _ => false,
        }
    }

    /// The first stored chunk after `after` in id order (after nothing: the first).
    pub fn next_stored_after(&self, after: Option<ChunkId>) -> Option<ChunkId> {
        let range = match after {
            None => self.chunks.range(..),
            Some(a) => self.chunks.range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
        };
        range.filter(|(_, s)| matches!(s, ChunkState::Stored(_))).map(|(id, _)| *id).next()
    }

    pub fn stored_count(&self) -> u64 {
        self.stored_count
    }

    /// Bytes the stored chunks' files take.
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes
    }

    /// Chunks being written: how many, and the bytes their files will take.
    pub fn writing(&self) -> (usize, u64) {
        (self.writing_count, self.writing_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bulk_buf::BULK_MIN_BYTES;
    use crate::ids::FileId;
    use proptest::prelude::*;

    fn meta(data: &[u8]) -> ChunkMeta {
        ChunkMeta::standalone(data.len() as u64, Sha256Digest::of(data))
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// Reads `file` through a `FrameReader` as the node does: the frames released before the
    /// first error, and that error.
    fn stream(file: &Bytes) -> (Vec<Bytes>, Option<ChunkFileError>) {
        let header = match decode_header(&file[..header_len(file).map(|l| l.min(file.len())).unwrap_or(0)]) {
            Ok(h) => h,
            Err(e) => return (vec![], Some(e)),
        };
        let mut reader = FrameReader::serving(header);
        let mut out = vec![];
        while let Some((offset, len)) = reader.next_read() {
            let start = (offset as usize).min(file.len());
            let frame = file.slice(start..(start + len as usize).min(file.len()));
            if let Err(e) = reader.accept(&frame) {
                return (out, Some(e));
            }
            out.push(frame);
        }
        (out, None)
    }

    #[test]
    fn files_round_trip_and_damage_is_detected() {
        let data = b"hello chunk";
        let file = encode_file(meta(data), data);
        assert_eq!(decode_file(file.clone()).unwrap(), (meta(data), Bytes::from_static(data)));
        assert_eq!(file.len() as u64, meta(data).file_bytes());
        let data_at = file.len() - data.len();
        let mut flipped = file.to_vec();
        flipped[data_at + 3] ^= 0x10;
        assert_eq!(decode_file(flipped.into()), Err(ChunkFileError::FrameChecksumMismatch { frame: 0 }));
        assert_eq!(decode_file(file.slice(..file.len() - 1)), Err(ChunkFileError::SizeMismatch { announced: 11, actual: 10 }));
        assert_eq!(decode_file(file.slice(..10)), Err(ChunkFileError::Truncated(10)));
        let mut magic = file.to_vec();
        magic[0] = b'X';
        assert_eq!(decode_file(magic.into()), Err(ChunkFileError::BadMagic));
        // The header checks itself: a damaged size or CRC table is refused before any read.
        for byte in [9, 20, 50, 53, 57, 64] {
            let mut damaged = file.to_vec();
            damaged[byte] ^= 0x01;
            assert!(matches!(decode_file(damaged.into()), Err(ChunkFileError::BadHeader(_) | ChunkFileError::Truncated(_))), "byte {byte}");
        }
        let mut huge = file.to_vec();
        huge[52..56].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(header_len(&huge), Err(ChunkFileError::BadHeader("too many frames")));
    }

    /// Serving checks the frames only; scrub and whole-file decoding check the SHA-256 too,
    /// so a file whose frame table was computed from bytes other than the recorded chunk's is
    /// served (the reader's own SHA-256 check refuses it) but never passes a scrub.
    #[test]
    fn serving_checks_frames_and_scrub_checks_the_sha256_too() {
        let data = pattern(CHUNK_FRAME_BYTES + 5);
        let wrong = ChunkMeta::standalone(data.len() as u64, Sha256Digest::of(b"other bytes"));
        let file = encode_file(wrong, &data);
        let (frames, err) = stream(&file);
        assert_eq!((frames.concat(), err), (data.clone(), None));
        assert_eq!(decode_file(file), Err(ChunkFileError::ChecksumMismatch));
    }

    /// Bulk chunks are version 3: the data starts on a 4 KiB boundary, and the padding before
    /// it is covered by the header's checksum like the rest of the head.
    #[test]
    fn bulk_chunk_files_start_their_data_on_a_block_boundary() {
        for size in [BULK_MIN_BYTES as usize, BULK_MIN_BYTES as usize + 1, 4 << 20, (4 << 20) + 12345] {
            let data = pattern(size);
            let file = encode_file(meta(&data), &data);
            assert_eq!(file[..8], CHUNK_FILE_MAGIC_V3);
            assert_eq!(file.len() as u64, meta(&data).file_bytes());
            let header = decode_header(&file[..header_len(&file).unwrap()]).unwrap();
            assert_eq!(header.data_offset() % BULK_ALIGN as u64, 0, "{size}");
            assert_eq!(header.data_offset() as usize, file.len() - size);
            assert_eq!(header.file_len(), file.len() as u64);
            assert_eq!(decode_file(file.clone()).unwrap().1, Bytes::from(data.clone()));
            let table_end = HEADER_BYTES + 4 * size.div_ceil(CHUNK_FRAME_BYTES);
            let mut padding = file.to_vec();
            padding[table_end + 1] = 1;
            assert_eq!(decode_file(padding.into()), Err(ChunkFileError::BadHeader("header checksum mismatch")));
        }
        let small = pattern(BULK_MIN_BYTES as usize - 1);
        let file = encode_file(meta(&small), &small);
        assert_eq!((file[..8].to_vec(), file.len() - small.len()), (CHUNK_FILE_MAGIC.to_vec(), HEADER_BYTES + 4 * 4));
        // A large chunk an earlier build wrote as version 2 (data right after the table) is
        // still read, frame by frame, and its damage still caught.
        let data = pattern(4 << 20);
        let mut v2 = BytesMut::from(&encode_head_as(meta(&data), &data, false)[..]);
        v2.extend_from_slice(&data);
        let v2 = v2.freeze();
        assert_eq!(v2[..8], CHUNK_FILE_MAGIC);
        assert_eq!(decode_file(v2.clone()).unwrap().1, Bytes::from(data.clone()));
        assert_eq!(stream(&v2), (data.chunks(CHUNK_FRAME_BYTES).map(Bytes::copy_from_slice).collect(), None));
        let mut damaged = v2.to_vec();
        damaged[HEADER_BYTES + 4 * 16 + 5 * CHUNK_FRAME_BYTES / 2] ^= 4;
        assert_eq!(
            stream(&Bytes::from(damaged)),
            (data.chunks(CHUNK_FRAME_BYTES).take(2).map(Bytes::copy_from_slice).collect(), Some(ChunkFileError::FrameChecksumMismatch { frame: 2 }))
        );
    }

    /// A chained chunk (version 4), padded or not: read back with its chain, checked from the
    /// `before` in its header, and a header whose chain was changed fails its CRC32C.
    #[test]
    fn version_4_files_keep_the_chain_and_are_checked_from_it() {
        for (len, last) in [(3 * CHUNK_FRAME_BYTES, false), (BULK_MIN_BYTES as usize * 2, false), (1000, true), (5 * 64, false)] {
            let data = pattern(len);
            let chain = crate::chain::Chain { before: Sha256Digest::of(b"previous chunk"), offset: 64 * 1024, last };
            let meta = ChunkMeta { size: len as u64, sha256: crate::chain::checksum(&data, Some(&chain)), chain: Some(chain) };
            let file = encode_file(meta, &data);
            assert_eq!(file[..8], CHUNK_FILE_MAGIC_V4);
            assert_eq!(file.len() as u64, meta.file_bytes());
            let header = decode_header(&file[..header_len(&file).unwrap()]).unwrap();
            assert_eq!(header.meta, meta);
            assert_eq!(header.data_offset().is_multiple_of(BULK_ALIGN as u64), is_bulk(len as u64), "len {len}");
            assert_eq!(decode_file(file.clone()).unwrap(), (meta, Bytes::from(data.clone())));
            // Whole-chunk checks (scrub) catch a flipped data bit that the frame CRC32Cs would
            // also catch, and a wrong checksum that they would not.
            let mut damaged = file.to_vec();
            let at = header.data_offset() as usize + len / 2;
            damaged[at] ^= 1;
            assert!(decode_file(damaged.into()).is_err());
            let wrong = ChunkMeta { sha256: Sha256Digest::of(&data), ..meta };
            assert_eq!(decode_file(encode_file(wrong, &data)), Err(ChunkFileError::ChecksumMismatch));
            // The chain is covered by the header's CRC32C: a changed `before` or last flag is
            // refused; a changed padding flag moves the data, and is refused too.
            for at in [HEADER_BYTES + 3, HEADER_BYTES + 40] {
                let mut changed = file.to_vec();
                changed[at] ^= 1;
                assert!(matches!(decode_file(changed.into()), Err(ChunkFileError::BadHeader(_))), "byte {at}");
            }
            let mut changed = file.to_vec();
            changed[60] ^= 1;
            assert!(decode_file(changed.into()).is_err());
        }
        // Standalone checksums are still written as version 2 or 3: earlier versions read them.
        let data = pattern(1000);
        assert_eq!(encode_file(meta(&data), &data)[..8], CHUNK_FILE_MAGIC);
    }

    #[test]
    fn version_1_files_are_still_read_and_checked_at_the_end() {
        let data = pattern(2 * CHUNK_FRAME_BYTES + 5);
        let file = encode_file_v1(meta(&data), &data);
        assert_eq!(decode_file(file.clone()).unwrap().1, Bytes::from(data.clone()));
        let (frames, err) = stream(&file);
        assert_eq!((frames.len(), err), (3, None));
        let mut flipped = file.to_vec();
        flipped[HEADER_BYTES + 10] ^= 1;
        // Without a frame table, damage shows only at the end: the last frame is held back.
        let (frames, err) = stream(&Bytes::from(flipped));
        assert_eq!((frames.len(), err), (2, Some(ChunkFileError::ChecksumMismatch)));
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct(
                concat!(env!("CARGO_MANIFEST_DIR"), "/../proptest-regressions/core-chunk-store.txt")))),
            cases: 48,
            ..ProptestConfig::default()
        })]
        /// Any single flipped bit in a v2 or v3 file is caught, and no byte of the damaged
        /// frame (or after it) is released.
        #[test]
        fn a_flipped_bit_never_leaves_the_node(len in 0usize..(3 * CHUNK_FRAME_BYTES + 17), bulk in any::<bool>(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let len = if bulk { BULK_MIN_BYTES as usize + len } else { len };
            let data = pattern(len);
            let file = encode_file(meta(&data), &data);
            let (frames, err) = stream(&file);
            prop_assert_eq!(err, None);
            prop_assert_eq!(frames.concat(), data.clone());
            prop_assert!(frames.iter().all(|f| f.len() <= CHUNK_FRAME_BYTES));
            let i = at.index(file.len());
            let mut damaged = file.to_vec();
            damaged[i] ^= 1 << bit;
            let (released, err) = stream(&Bytes::from(damaged));
            prop_assert!(err.is_some(), "flip at {} not caught", i);
            let head = file.len() - len;
            if i >= head {
                let damaged_frame = (i - head) / CHUNK_FRAME_BYTES;
                prop_assert!(released.len() <= damaged_frame);
                prop_assert_eq!(released.concat(), data[..released.len() * CHUNK_FRAME_BYTES].to_vec());
            } else {
                prop_assert!(released.is_empty());
            }
        }
    }

    #[test]
    fn layout_is_sharded_and_parseable() {
        let layout = ChunkLayout::new("/data");
        let id = ChunkId::derive(FileId(5), 3);
        let path = layout.chunk_path(id);
        let hex = id.to_hex();
        assert_eq!(path, PathBuf::from(format!("/data/chunks/{}/{}/{hex}.chunk", &hex[..2], &hex[2..4])));
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(ChunkLayout::parse_chunk_file_name(name), Some(id));
        assert_eq!(ChunkLayout::parse_chunk_file_name("x.chunk"), None);
        assert!(ChunkLayout::is_shard_name("0f") && !ChunkLayout::is_shard_name("0F") && !ChunkLayout::is_shard_name("abc"));
    }

    /// A large chunk's file is written as bulk data (a disk may keep it out of its cache), a
    /// small one through the cache; either way the file holds the head, then the data.
    #[test]
    fn large_chunks_are_written_as_bulk_data() {
        let layout = ChunkLayout::new("/data");
        let table = ChunkTable::default();
        let id = ChunkId::derive(FileId(5), 3);
        let tmp = layout.tmp_path(id, 1);
        for size in [0, 10, BULK_MIN_BYTES as usize - 1, BULK_MIN_BYTES as usize, 3 << 20] {
            let data = Bytes::from(pattern(size));
            let head = encode_head(meta(&data), &data);
            let steps = write_steps(&layout, &table, id, 1, meta(&data), data.clone());
            let writes: Vec<&DiskStep> =
                steps.iter().filter(|s| matches!(s, DiskStep::WriteFile { .. } | DiskStep::WriteAt { .. } | DiskStep::WriteBulk { .. })).collect();
            if size as u64 >= BULK_MIN_BYTES {
                assert_eq!(writes, vec![&DiskStep::WriteBulk { path: tmp.clone(), head: head.clone(), data: data.clone() }]);
            } else {
                assert_eq!(writes[0], &DiskStep::WriteFile { path: tmp.clone(), data: head.clone() });
                assert_eq!(writes.len(), if size == 0 { 1 } else { 2 }, "{writes:?}");
            }
        }
    }

    #[test]
    fn shard_directories_are_made_durable_once_per_process() {
        let layout = ChunkLayout::new("/data");
        let mut table = ChunkTable::default();
        let id = ChunkId::derive(FileId(5), 3);
        let (outer, inner) = layout.shard_dirs(id);
        let data = Bytes::from(pattern(10));
        let steps = write_steps(&layout, &table, id, 1, meta(&data), data.clone());
        let dir_steps: Vec<&DiskStep> = steps.iter().filter(|s| matches!(s, DiskStep::CreateDir(_) | DiskStep::SyncDir(_))).collect();
        assert_eq!(
            dir_steps,
            vec![
                &DiskStep::CreateDir(inner.clone()),
                &DiskStep::SyncDir(layout.chunks_dir()),
                &DiskStep::SyncDir(outer.clone()),
                &DiskStep::SyncDir(inner.clone())
            ]
        );
        assert!(matches!(&steps[steps.len() - 2], DiskStep::Rename { to, .. } if *to == layout.chunk_path(id)));
        // Only a finished write proves the directories durable.
        assert_eq!(table.begin_write(id, meta(&data)), Ok(WriteDecision::Write));
        table.abort_write(id);
        assert_eq!(table.shard_durable(id), (false, false));
        assert_eq!(table.begin_write(id, meta(&data)), Ok(WriteDecision::Write));
        table.finish_write(id);
        assert_eq!(table.shard_durable(id), (true, true));
        let steps = write_steps(&layout, &table, id, 2, meta(&data), data.clone());
        assert_eq!(steps.iter().filter(|s| matches!(s, DiskStep::CreateDir(_) | DiskStep::SyncDir(_))).count(), 1, "{steps:?}");
        // A sibling under the same outer directory needs only its own inner directory.
        let sibling =
            (0..).map(|i| ChunkId::derive(FileId(6), i)).find(|c| c.as_bytes()[0] == id.as_bytes()[0] && c.as_bytes()[1] != id.as_bytes()[1]).unwrap();
        let steps = write_steps(&layout, &table, sibling, 3, meta(&data), data);
        assert!(!steps.contains(&DiskStep::SyncDir(layout.chunks_dir())));
        assert!(steps.contains(&DiskStep::SyncDir(layout.shard_dirs(sibling).0)));
    }

    #[test]
    fn a_batch_flushes_contents_before_any_rename_and_entries_last() {
        let layout = ChunkLayout::new("/data");
        let table = ChunkTable::default();
        let items: Vec<BatchItem> = (0..5u32)
            .map(|i| {
                let data = Bytes::from(pattern(i as usize * 7));
                BatchItem { id: ChunkId::derive(FileId(9), i % 3), nonce: u64::from(i), meta: meta(&data), data }
            })
            .collect();
        let steps = batch_write_steps(&layout, &table, &items);
        let first_flush = steps.iter().position(|s| matches!(s, DiskStep::SyncAll(_))).unwrap();
        assert!(steps[..first_flush].iter().all(|s| matches!(s, DiskStep::WriteFile { .. } | DiskStep::WriteAt { .. })), "{steps:?}");
        assert_eq!(steps.last(), Some(&DiskStep::SyncAll(layout.root().to_path_buf())));
        let renames: Vec<&DiskStep> = steps.iter().filter(|s| matches!(s, DiskStep::Rename { .. })).collect();
        assert_eq!(renames.len(), items.len());
        // Every rename comes after the first flush and after its shard directory exists; each
        // missing directory is created once.
        let creates: Vec<&DiskStep> = steps.iter().filter(|s| matches!(s, DiskStep::CreateDir(_))).collect();
        let distinct: std::collections::BTreeSet<PathBuf> = items.iter().map(|i| layout.shard_dirs(i.id).1).collect();
        assert_eq!(creates.len(), distinct.len());
        for item in &items {
            let rename = steps.iter().position(|s| matches!(s, DiskStep::Rename { from, .. } if *from == layout.tmp_path(item.id, item.nonce))).unwrap();
            let create = steps.iter().position(|s| *s == DiskStep::CreateDir(layout.shard_dirs(item.id).1)).unwrap();
            assert!(first_flush < rename && create < rename);
        }
    }

    #[test]
    fn space_is_checked_with_the_reserve_and_writes_in_progress() {
        assert_eq!(check_space(100, 0, 150, 50), Ok(()));
        assert_eq!(check_space(100, 1, 150, 50), Err(ChunkStoreError::NoSpace { needed_bytes: 151, free_bytes: 150 }));
        assert!(check_space(u64::MAX, 1, u64::MAX - 1, 0).is_err(), "no overflow");
    }

    #[test]
    fn table_lifecycle() {
        let mut t = ChunkTable::default();
        let id = ChunkId::derive(FileId(1), 0);
        let m = meta(b"a");
        assert_eq!(t.begin_write(id, m), Ok(WriteDecision::Write));
        assert_eq!(t.writing(), (1, m.file_bytes()));
        assert_eq!(t.begin_write(id, m), Err(ChunkStoreError::WriteInProgress(id)));
        assert_eq!(t.stored(id), Err(ChunkStoreError::NotStored(id)));
        assert!(!t.remove(id), "a write in progress is its writer's");
        t.finish_write(id);
        assert_eq!(t.writing(), (0, 0));
        assert_eq!(t.stored(id), Ok(m));
        assert_eq!(t.begin_write(id, m), Ok(WriteDecision::AlreadyStored));
        assert_eq!(t.begin_write(id, meta(b"b")), Err(ChunkStoreError::Conflict(id)));
        assert_eq!(t.stored_count(), 1);
        assert!(t.remove(id));
        let other = ChunkId::derive(FileId(1), 1);
        assert_eq!(t.begin_write(other, m), Ok(WriteDecision::Write));
        t.abort_write(other);
        assert_eq!(t.writing(), (0, 0));
        assert_eq!(t.begin_write(other, m), Ok(WriteDecision::Write));
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct(
                concat!(env!("CARGO_MANIFEST_DIR"), "/../proptest-regressions/core-chunk-store-range.txt")))),
            ..ProptestConfig::default()
        })]
        /// A ranged read serves whole frames around any range; what the reader checks and keeps
        /// is exactly that range of the chunk, and a byte changed on the way fails a check.
        #[test]
        fn ranged_reads_serve_checked_frames_and_return_exactly_the_range(
            size in 0usize..(3 * CHUNK_FRAME_BYTES + 100),
            offset in 0u64..(4 * CHUNK_FRAME_BYTES as u64),
            len in 0u64..(2 * CHUNK_FRAME_BYTES as u64),
            flip in any::<prop::sample::Index>(),
        ) {
            let data = Bytes::from(pattern(size));
            let file = encode_file(meta(&data), &data);
            let header = decode_header(&file).unwrap();
            let (mut reader, range) = FrameReader::serving_range(header, offset, len);
            let mut served = Vec::new();
            while let Some((at, n)) = reader.next_read() {
                let frame = &file[at as usize..(at + n) as usize];
                reader.accept(frame).unwrap();
                served.extend_from_slice(frame);
            }
            let served = Bytes::from(served);
            let got = check_range(&range, meta(&data), &served, offset, len).unwrap();
            let from = (offset as usize).min(size);
            let to = (offset.saturating_add(len) as usize).min(size).max(from);
            prop_assert_eq!(&got[..], &data[from..to]);
            prop_assert!(range.bytes as usize <= to - from + 2 * CHUNK_FRAME_BYTES, "served {} for a range of {}", range.bytes, to - from);
            if !served.is_empty() {
                let mut bad = served.to_vec();
                bad[flip.index(served.len())] ^= 0x20;
                prop_assert!(check_range(&range, meta(&data), &Bytes::from(bad), offset, len).is_err());
            }
        }
    }
}

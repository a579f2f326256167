//! Limits every role agrees on: the sizes of frames, messages and batches on the wire, and
//! how much one request may ask of the metadata cluster. Clients, metadata nodes and storage
//! nodes all import them from here (never from one another), so that a sender never builds
//! what its receiver refuses.

// On the wire: frames and messages.

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

// Requests to the metadata cluster.

/// Most chunk placements one `AllocateChunks` call may ask for.
pub const ALLOCATE_CHUNKS_MAX: usize = 1024;
/// Most chunks a `CreateFile` places in its reply (`place_chunks` beyond is capped).
pub const CREATE_PLACE_CHUNKS_MAX: usize = 64;
/// Most chunk records one `RecordChunks` call (and the command it becomes) may carry.
pub const RECORD_CHUNKS_MAX: usize = 4096;
/// Page size of `ListFiles` and `ListDir` when the client names none, and the most it may ask for.
pub const LIST_LIMIT_DEFAULT: u32 = 1000;
pub const LIST_LIMIT_MAX: u32 = 10_000;
/// Most commands in one replicated `Batch` (one log entry).
pub const BATCH_COMMANDS_MAX: usize = 256;
/// Most exclusions (storage nodes a client saw fail) one `AllocateChunks` call may name: more
/// than any client's retries collect, few enough that placement's scan of them stays cheap.
pub const ALLOCATE_EXCLUDE_MAX: usize = 1024;
/// Most items in one `CreateFiles`, `CommitFiles` or `GetFiles` call: a batch of creates or
/// commits must fit one log entry.
pub const BATCH_FILES_MAX: usize = 256;
const _: () = assert!(BATCH_FILES_MAX <= BATCH_COMMANDS_MAX);
/// Most bytes of file replies one `GetFiles` answer carries; items past it are answered
/// `Unavailable` (ask alone), so a batch of large files stays under the message limit.
pub const GET_FILES_REPLY_BYTES_MAX: usize = 16 * 1024 * 1024;
const _: () = assert!(GET_FILES_REPLY_BYTES_MAX < UNARY_MESSAGE_MAX_BYTES);

// Echoes of what a caller sent.

/// Characters of a caller's input an error quotes back: a refused 4 KiB path (or a 60 MiB
/// one) is named by its start, not copied whole into the reply and the log.
pub const ECHO_MAX_CHARS: usize = 200;

/// `input` as an error quotes it: its first `ECHO_MAX_CHARS` characters, then `…` if there
/// were more.
pub fn echo(input: &str) -> String {
    match input.char_indices().nth(ECHO_MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &input[..cut]),
        None => input.to_string(),
    }
}

// Servers.

/// Concurrent calls (HTTP/2 streams) one connection may have open on a node: beyond, the
/// caller's transport queues them. Above what any dfs client opens on one connection (a tree
/// upload's `FILES_IN_FLIGHT_MAX` files, each with its chunk streams).
pub const STREAMS_PER_CONNECTION_MAX: u32 = 1024;

/// Largest `ChunkBatchService` message a storage node decodes: a full batch's bytes
/// (`CHUNK_BATCH_BYTES_MAX`) and room for its headers, not the 64 MiB of other unary calls.
pub const CHUNK_BATCH_MESSAGE_MAX_BYTES: usize = CHUNK_BATCH_BYTES_MAX + 1024 * 1024;

/// Largest frame of a chunk stream a storage node decodes: a frame's data
/// (`CHUNK_FRAME_BYTES`) and room for its header.
pub const CHUNK_FRAME_MESSAGE_MAX_BYTES: usize = CHUNK_FRAME_BYTES + 64 * 1024;

const _: () = assert!(CHUNK_BATCH_MESSAGE_MAX_BYTES < UNARY_MESSAGE_MAX_BYTES);
const _: () = assert!(SMALL_CHUNK_BYTES_MAX <= CHUNK_BATCH_BYTES_MAX);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_are_cut_at_a_character_boundary() {
        assert_eq!(echo("short"), "short");
        let long = "é".repeat(5000);
        let cut = echo(&long);
        assert_eq!(cut.chars().count(), ECHO_MAX_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(echo(&"a".repeat(ECHO_MAX_CHARS)), "a".repeat(ECHO_MAX_CHARS));
    }
}

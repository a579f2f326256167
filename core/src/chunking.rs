//! How a file is cut into chunks: fixed-size pieces, the last one shorter. Pure arithmetic
//! shared by the client (to split and reassemble) and metadata (to validate what is recorded).

/// The default chunk size: 4 MiB, as in the design card.
pub const DEFAULT_CHUNK_SIZE: u64 = 4 * 1024 * 1024;
/// Smallest chunk size accepted: 64 KiB. Smaller chunks would only multiply metadata (one
/// record per chunk); tests and simulations use this size to get many chunks.
pub const MIN_CHUNK_SIZE: u64 = 64 * 1024;
/// Largest chunk size accepted: 64 MiB. A chunk is held in memory whole on both ends, once per
/// transfer in flight.
pub const MAX_CHUNK_SIZE: u64 = 64 * 1024 * 1024;
/// A file has at most this many chunks (the chunk index is a u32).
pub const MAX_CHUNKS_PER_FILE: u64 = u32::MAX as u64;

/// One chunk of a file: where it sits and how long it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkSpan {
    pub index: u32,
    pub offset: u64,
    pub len: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkingError {
    #[error("chunk size {0} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE} bytes")]
    ChunkSizeOutOfRange(u64),
    #[error("a file of {size} bytes would need more than {MAX_CHUNKS_PER_FILE} chunks of {chunk_size} bytes")]
    TooManyChunks { size: u64, chunk_size: u64 },
}

/// Why a chunk size cannot be used for a new upload (`validate_new`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NewChunkSizeError {
    #[error(transparent)]
    Range(#[from] ChunkingError),
    #[error("chunk size {size} is not a multiple of {block} bytes (a SHA-256 block, so that one hash pass checks every chunk); the nearest valid sizes are {below} and {above}", block = crate::chain::BLOCK_BYTES)]
    NotBlockMultiple { size: u64, below: u64, above: u64 },
}

/// The rule for new uploads: `validate`, and a whole number of SHA-256 blocks (chunks are
/// chained: see `chain`). Metadata keeps accepting the sizes earlier versions did (`validate`)
/// so that their logs replay alike.
pub fn validate_new(size: u64, chunk_size: u64) -> Result<(), NewChunkSizeError> {
    validate(size, chunk_size)?;
    let block = crate::chain::BLOCK_BYTES;
    if !chunk_size.is_multiple_of(block) {
        let below = (chunk_size / block * block).max(MIN_CHUNK_SIZE);
        let above = chunk_size.next_multiple_of(block).min(MAX_CHUNK_SIZE);
        return Err(NewChunkSizeError::NotBlockMultiple { size: chunk_size, below, above });
    }
    Ok(())
}

pub fn validate(size: u64, chunk_size: u64) -> Result<(), ChunkingError> {
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        return Err(ChunkingError::ChunkSizeOutOfRange(chunk_size));
    }
    if size.div_ceil(chunk_size) > MAX_CHUNKS_PER_FILE {
        return Err(ChunkingError::TooManyChunks { size, chunk_size });
    }
    Ok(())
}

/// A file's chunk list in file order, each with the offset it starts at: the sum of the sizes
/// before it. For a file `put` wrote that is `index * chunk_size`; a joined copy (the S3
/// gateway's multipart objects) has chunks of any size, so readers always add them up.
pub fn placed(chunks: &[crate::proto::ChunkLocation]) -> impl Iterator<Item = (u64, &crate::proto::ChunkLocation)> {
    let mut sorted: Vec<&crate::proto::ChunkLocation> = chunks.iter().collect();
    sorted.sort_by_key(|c| c.index);
    sorted.into_iter().scan(0u64, |at, c| {
        let start = *at;
        *at = at.saturating_add(c.size);
        Some((start, c))
    })
}

/// Number of chunks of a file: a 0-byte file has none.
pub fn chunk_count(size: u64, chunk_size: u64) -> u64 {
    size.div_ceil(chunk_size)
}

/// Length of chunk `index`, or `None` if the file has no such chunk.
pub fn chunk_len(size: u64, chunk_size: u64, index: u32) -> Option<u64> {
    let offset = index as u64 * chunk_size;
    (offset < size).then(|| (size - offset).min(chunk_size))
}

/// The chunks of a file of `size` bytes, in order. Call `validate` first.
pub fn spans(size: u64, chunk_size: u64) -> impl Iterator<Item = ChunkSpan> {
    (0..chunk_count(size, chunk_size)).map(move |i| {
        let offset = i * chunk_size;
        ChunkSpan { index: i as u32, offset, len: (size - offset).min(chunk_size) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn edge_sizes() {
        let c = MIN_CHUNK_SIZE;
        assert_eq!(spans(0, c).count(), 0);
        assert_eq!(spans(1, c).collect::<Vec<_>>(), vec![ChunkSpan { index: 0, offset: 0, len: 1 }]);
        assert_eq!(spans(c, c).count(), 1);
        assert_eq!(spans(c + 1, c).last(), Some(ChunkSpan { index: 1, offset: c, len: 1 }));
        assert_eq!(chunk_len(c + 1, c, 2), None);
        assert!(validate(10, 1).is_err());
        assert!(validate(u64::MAX, MIN_CHUNK_SIZE).is_err());
        assert!(validate(5 << 30, DEFAULT_CHUNK_SIZE).is_ok());
        assert_eq!(validate_new(1, 100_000), Err(NewChunkSizeError::NotBlockMultiple { size: 100_000, below: 99_968, above: 100_032 }));
        assert!(validate_new(1, 100_032).is_ok());
        assert!(matches!(validate_new(1, 10), Err(NewChunkSizeError::Range(_))));
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct(
                concat!(env!("CARGO_MANIFEST_DIR"), "/../proptest-regressions/core-chunking.txt")))),
            ..ProptestConfig::default()
        })]
        #[test]
        fn spans_tile_the_file_exactly(size in 0u64..(1 << 40), chunk_size in MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE) {
            let mut next = 0u64;
            let mut count = 0u64;
            for s in spans(size, chunk_size).take(4096) {
                prop_assert_eq!(s.offset, next);
                prop_assert!(s.len > 0 && s.len <= chunk_size);
                prop_assert_eq!(Some(s.len), chunk_len(size, chunk_size, s.index));
                next += s.len;
                count += 1;
            }
            if count < 4096 {
                prop_assert_eq!(next, size);
                prop_assert_eq!(count, chunk_count(size, chunk_size));
            }
        }
    }
}

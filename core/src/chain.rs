//! Chained chunk checksums: one SHA-256 pass over a file yields every chunk's checksum and the
//! file's standard SHA-256, and each chunk can still be checked on its own.
//!
//! ## What a chained checksum is
//!
//! SHA-256 is a Merkle–Damgård hash: it runs a compression function over 64-byte blocks,
//! carrying a 32-byte chaining state from one block to the next, starting from a fixed initial
//! state, and finishes by hashing a padding block that encodes the message's length. When a
//! file is cut into chunks whose sizes are multiples of 64 bytes, every chunk boundary is a
//! block boundary, so the state after chunk `i` is exactly the state before chunk `i + 1`. A
//! chained chunk records:
//!
//! - `before`: the state before its bytes (the standard initial state for chunk 0, else the
//!   previous chunk's checksum), and `offset`, the file's bytes before it;
//! - its checksum: the state after its bytes; for the file's `last` chunk, the finished
//!   SHA-256 (padding with the whole file's length), which *is* the file's SHA-256, so
//!   `sha256sum` reproduces it.
//!
//! Checking a chunk needs only its bytes and `before`: start from `before`, compress the
//! bytes, compare. So the uploader's one pass over a file yields every chunk's checksum and
//! the file's digest; a storage node checks what it receives, and scrub what it keeps, from
//! the `before` in the chunk's header; a download checks each chunk on its own (and can fail
//! over to another replica before a byte is written) while its last chunk's check finishes
//! the file's digest. DESIGN.md ("Chained checksums") argues why this is as strong as a
//! SHA-256 of each chunk and says what it gives up.
//!
//! Bytes that do not arrive in file order (a chunk another writer produced, a chunk size that
//! is not a multiple of 64 bytes, a file of one chunk) keep a standalone SHA-256 of the chunk
//! alone: `chain` is `None` for them. A one-chunk file's standalone SHA-256 equals its chained
//! checksum (`before` the initial state, `offset` 0, `last`), so small files need no chain.

use sha2::block_api::compress256;
use sha2::{Digest, Sha256};

use crate::ids::Sha256Digest;

/// SHA-256's block: chained chunks (all but a file's last) are whole blocks.
pub const BLOCK_BYTES: u64 = 64;

/// SHA-256's initial chaining state (FIPS 180-4, 5.3.3).
const INITIAL_STATE: [u32; 8] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

/// The chaining state as 32 bytes, big-endian words: the same bytes a finished digest is.
fn state_bytes(state: &[u32; 8]) -> Sha256Digest {
    let mut out = [0u8; 32];
    for (o, w) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    Sha256Digest(out)
}

fn state_of(d: &Sha256Digest) -> [u32; 8] {
    let mut s = [0u32; 8];
    for (w, b) in s.iter_mut().zip(d.0.chunks_exact(4)) {
        *w = u32::from_be_bytes(b.try_into().expect("4 bytes"));
    }
    s
}

/// Where a chained chunk sits in its file's hash: what checking it on its own needs besides
/// its bytes and its checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Chain {
    /// The SHA-256 state before the chunk's bytes.
    pub before: Sha256Digest,
    /// Bytes of the file before the chunk (a multiple of 64).
    pub offset: u64,
    /// The file's last chunk: its checksum is the file's finished SHA-256.
    pub last: bool,
}

impl Chain {
    /// The state before a file's first byte.
    pub fn initial() -> Sha256Digest {
        state_bytes(&INITIAL_STATE)
    }

    /// The chain of chunk `index` of a file cut into `chunk_size`-byte chunks, hashed on from
    /// `before` (the previous chunk's checksum, ignored for chunk 0).
    pub fn at(index: u32, chunk_size: u64, before: Sha256Digest, last: bool) -> Chain {
        let before = if index == 0 { Chain::initial() } else { before };
        Chain { before, offset: u64::from(index) * chunk_size, last }
    }

    /// Whether a file of `size` bytes in `chunk_size`-byte chunks is chained: more than one
    /// chunk, each a whole number of SHA-256 blocks.
    pub fn applies(size: u64, chunk_size: u64) -> bool {
        chunk_size > 0 && chunk_size.is_multiple_of(BLOCK_BYTES) && size > chunk_size
    }

    /// Whether the fields are possible: the offset a whole number of blocks.
    pub fn is_well_formed(&self) -> bool {
        self.offset.is_multiple_of(BLOCK_BYTES)
    }

    pub fn to_proto(self) -> crate::proto::ChunkChain {
        crate::proto::ChunkChain { before: self.before.0.to_vec().into(), offset: self.offset, last: self.last }
    }

    /// `None` for a malformed chain (a `before` not 32 bytes, an offset off a block boundary).
    pub fn from_proto(p: &crate::proto::ChunkChain) -> Option<Chain> {
        let chain = Chain { before: Sha256Digest::from_slice(&p.before)?, offset: p.offset, last: p.last };
        chain.is_well_formed().then_some(chain)
    }

    /// The optional proto field: absent means a standalone SHA-256.
    pub fn from_proto_opt(p: Option<&crate::proto::ChunkChain>) -> Result<Option<Chain>, BadChain> {
        p.map(|p| Chain::from_proto(p).ok_or(BadChain)).transpose()
    }
}

/// Which kind of checksum a chunk's record carries (the namespace keeps this, not the whole
/// `Chain`: `before` is the previous chunk's checksum and `offset` follows from the index).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum SumKind {
    /// SHA-256 of the chunk alone (every chunk of earlier versions).
    #[default]
    Standalone,
    /// The state after the chunk, chained from the previous one.
    Chained,
    /// Chained, and the file's last chunk: its checksum is the file's SHA-256.
    ChainedLast,
}

impl SumKind {
    pub fn is_standalone(&self) -> bool {
        *self == SumKind::Standalone
    }

    pub fn of(chain: Option<&Chain>) -> SumKind {
        match chain {
            None => SumKind::Standalone,
            Some(c) if c.last => SumKind::ChainedLast,
            Some(_) => SumKind::Chained,
        }
    }
}

/// A chain whose `before` is not 32 bytes or whose offset is not a multiple of 64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunk chain: `before` must be 32 bytes and `offset` a multiple of 64")]
pub struct BadChain;

/// Hashes a chained chunk's bytes from its `before` state, as they come.
#[derive(Clone)]
pub struct ChainHasher {
    state: [u32; 8],
    buf: [u8; 64],
    buf_len: usize,
    /// Bytes hashed since the file's start (`offset` included): the padding encodes it.
    total: u64,
    last: bool,
}

impl ChainHasher {
    pub fn new(chain: &Chain) -> Self {
        ChainHasher { state: state_of(&chain.before), buf: [0; 64], buf_len: 0, total: chain.offset, last: chain.last }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.buf_len > 0 {
            let take = (64 - self.buf_len).min(data.len());
            self.buf[self.buf_len..self.buf_len + take].copy_from_slice(&data[..take]);
            self.buf_len += take;
            data = &data[take..];
            if self.buf_len < 64 {
                return;
            }
            compress256(&mut self.state, &[self.buf]);
            self.buf_len = 0;
        }
        let (blocks, rest) = data.as_chunks::<64>();
        compress256(&mut self.state, blocks);
        self.buf[..rest.len()].copy_from_slice(rest);
        self.buf_len = rest.len();
    }

    /// The checksum: the finished SHA-256 for a `last` chunk, the state otherwise. `None` when
    /// a chunk that is not last ends inside a block (it cannot be chained).
    pub fn finish(mut self) -> Option<Sha256Digest> {
        if !self.last {
            return (self.buf_len == 0).then(|| state_bytes(&self.state));
        }
        // FIPS 180-4, 5.1.1: a one bit, zeros, then the length in bits, 64-bit big-endian.
        let bits = self.total.wrapping_mul(8);
        let mut block = [0u8; 64];
        block[..self.buf_len].copy_from_slice(&self.buf[..self.buf_len]);
        block[self.buf_len] = 0x80;
        if self.buf_len >= 56 {
            compress256(&mut self.state, &[block]);
            block = [0; 64];
        }
        block[56..].copy_from_slice(&bits.to_be_bytes());
        compress256(&mut self.state, &[block]);
        Some(state_bytes(&self.state))
    }
}

/// Hashes a chunk's bytes as its checksum says they were hashed: standalone, or chained.
#[derive(Clone)]
pub enum SumHasher {
    Standalone(Sha256),
    Chained(ChainHasher),
}

impl SumHasher {
    pub fn new(chain: Option<&Chain>) -> Self {
        match chain {
            None => SumHasher::Standalone(Sha256::new()),
            Some(c) => SumHasher::Chained(ChainHasher::new(c)),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            SumHasher::Standalone(h) => h.update(data),
            SumHasher::Chained(h) => h.update(data),
        }
    }

    /// `None` only for a chained chunk that cannot be one (see `ChainHasher::finish`): it
    /// matches no checksum.
    pub fn finish(self) -> Option<Sha256Digest> {
        match self {
            SumHasher::Standalone(h) => Some(Sha256Digest(h.finalize().into())),
            SumHasher::Chained(h) => h.finish(),
        }
    }

    /// Whether `data` (all of it) matches `expected`.
    pub fn matches(chain: Option<&Chain>, data: &[u8], expected: &Sha256Digest) -> bool {
        let mut h = SumHasher::new(chain);
        h.update(data);
        h.finish().as_ref() == Some(expected)
    }
}

/// A chunk's checksum, computed as `chain` says. A chained chunk that cannot be one (not the
/// last, yet not whole SHA-256 blocks) gets its standalone SHA-256 instead, which matches no
/// chained checksum; callers check the size on its own anyway.
pub fn checksum(data: &[u8], chain: Option<&Chain>) -> Sha256Digest {
    let mut h = SumHasher::new(chain);
    h.update(data);
    h.finish().unwrap_or_else(|| Sha256Digest::of(data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every chunk's checksum of a file cut into `chunk` bytes, chained, in one pass.
    fn chained(file: &[u8], chunk: usize) -> Vec<(Chain, Sha256Digest)> {
        let count = file.len().div_ceil(chunk).max(1);
        let mut before = Chain::initial();
        (0..count)
            .map(|i| {
                let part = &file[i * chunk..((i + 1) * chunk).min(file.len())];
                let c = Chain::at(i as u32, chunk as u64, before, i + 1 == count);
                let mut h = ChainHasher::new(&c);
                h.update(part);
                let sum = h.finish().expect("whole blocks");
                before = sum;
                (c, sum)
            })
            .collect()
    }

    #[test]
    fn the_last_chunk_is_the_files_sha256_and_one_chunk_is_standalone() {
        for len in [0usize, 1, 55, 56, 63, 64, 65, 119, 120, 128, 4096, 10_000] {
            let file: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let whole = Sha256Digest::of(&file);
            for chunk in [64usize, 128, 4096] {
                let sums = chained(&file, chunk);
                assert_eq!(sums.last().unwrap().1, whole, "len {len} chunk {chunk}");
            }
            assert!(SumHasher::matches(Some(&Chain::at(0, 64, Chain::initial(), true)), &file, &whole));
            assert!(SumHasher::matches(None, &file, &whole));
        }
    }

    #[test]
    fn a_chunk_that_is_not_last_must_end_on_a_block() {
        let c = Chain::at(0, 100, Chain::initial(), false);
        let mut h = ChainHasher::new(&c);
        h.update(&[1; 100]);
        assert_eq!(h.finish(), None);
        assert!(!SumHasher::matches(Some(&c), &[1; 100], &Sha256Digest([0; 32])));
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct(
                concat!(env!("CARGO_MANIFEST_DIR"), "/../proptest-regressions/core-chain.txt")))),
            ..ProptestConfig::default()
        })]
        /// Split anywhere into updates, each chunk checks on its own against its checksum, and
        /// a changed byte, a wrong `before` or a wrong offset fails it.
        #[test]
        fn chunks_check_alone_and_damage_fails(len in 0usize..2000, blocks in 1usize..6, cut in 0usize..400, flip in any::<usize>()) {
            let file: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
            let chunk = blocks * 64;
            let sums = chained(&file, chunk);
            prop_assert_eq!(sums.last().unwrap().1, Sha256Digest::of(&file));
            for (i, (c, sum)) in sums.iter().enumerate() {
                let part = &file[i * chunk..((i + 1) * chunk).min(file.len())];
                let mut h = SumHasher::new(Some(c));
                let at = cut.min(part.len());
                h.update(&part[..at]);
                h.update(&part[at..]);
                prop_assert_eq!(h.finish(), Some(*sum));
                if !part.is_empty() {
                    let mut bad = part.to_vec();
                    bad[flip % part.len()] ^= 1;
                    prop_assert!(!SumHasher::matches(Some(c), &bad, sum));
                }
                let mut wrong = *c;
                wrong.before.0[0] ^= 1;
                prop_assert!(!SumHasher::matches(Some(&wrong), part, sum));
                if c.last {
                    let moved = Chain { offset: c.offset + 64, ..*c };
                    prop_assert!(!SumHasher::matches(Some(&moved), part, sum));
                }
            }
        }
    }
}

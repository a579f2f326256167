//! Buffers for bulk chunk data: 4 KiB-aligned, and reused.
//!
//! What it promises: a `BulkBuf` starts on a `BULK_ALIGN` boundary, so a disk that bypasses
//! its page cache (io-real's `O_DIRECT`, whose buffers must be aligned) can write it or read
//! into it without first copying it into a buffer of its own; and its allocation goes back
//! to a small process-wide pool when the last `Bytes` made from it is dropped, so the next
//! chunk reuses memory already touched instead of paying a page fault per 4 KiB (a seventh of
//! a storage node's CPU during a put, measured, when every chunk had a fresh buffer).
//!
//! What it does not: decide anything. Which bytes go into a bulk buffer is the caller's
//! choice (`bulk_buf::is_bulk`); the pool only changes where memory comes from, never what a
//! machine does, so simulations are unaffected by it.
//!
//! Driven by: `rpc::FrameAssembler` (a received bulk chunk is assembled into one, already laid
//! out for the disk) and io-real's disk (reads and writes that must stage through aligned
//! memory).

use std::sync::Mutex;

use aligned_vec::{AVec, ConstAlign};
use bytes::Bytes;

/// The alignment of every bulk buffer: 4 KiB covers the logical block size of every disk
/// Linux runs on (`O_DIRECT` requires the buffer's address to be a multiple of it).
pub const BULK_ALIGN: usize = 4096;

/// Chunks of at least this many bytes are bulk data: written with `DiskStep::WriteBulk` and
/// read with `Disk::read_bulk_at`, so a disk may keep them out of its page cache both ways.
/// Smaller chunks (small files, the tail of a file) stay cached: they are written in batches
/// flushed together, and read back often enough to be worth the memory.
pub const BULK_MIN_BYTES: u64 = 1 << 20;

/// Is a chunk of `size` bytes bulk data (`BULK_MIN_BYTES`)?
pub fn is_bulk(size: u64) -> bool {
    size >= BULK_MIN_BYTES
}

type Aligned = AVec<u8, ConstAlign<BULK_ALIGN>>;

/// Buffers kept for reuse: at most this many...
const SPARE_BUFS_MAX: usize = 16;
/// ...of at most this capacity each (a larger one, for an unusually large chunk, is freed).
const SPARE_BUF_BYTES_MAX: usize = 16 << 20;

/// Spare allocations. One per process (`POOL`); tests make their own.
struct Pool {
    spare: Mutex<Vec<Aligned>>,
}

static POOL: Pool = Pool { spare: Mutex::new(Vec::new()) };

impl Pool {
    fn take(&'static self, capacity: usize) -> BulkBuf {
        let spare = self.spare.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut buf = spare.unwrap_or_else(|| Aligned::new(BULK_ALIGN));
        buf.clear();
        buf.reserve_exact(capacity);
        BulkBuf { buf: Some(buf), pool: self }
    }

    fn give_back(&self, buf: Aligned) {
        if buf.capacity() <= SPARE_BUF_BYTES_MAX {
            let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
            if spare.len() < SPARE_BUFS_MAX {
                spare.push(buf);
            }
        }
    }
}

/// An aligned, growable byte buffer whose allocation is reused once dropped.
pub struct BulkBuf {
    /// `None` only while dropping.
    buf: Option<Aligned>,
    pool: &'static Pool,
}

impl BulkBuf {
    /// An empty buffer with room for at least `capacity` bytes, from the pool when it has one.
    pub fn with_capacity(capacity: usize) -> Self {
        POOL.take(capacity)
    }

    fn inner(&self) -> &Aligned {
        self.buf.as_ref().expect("taken only on drop")
    }

    fn inner_mut(&mut self) -> &mut Aligned {
        self.buf.as_mut().expect("taken only on drop")
    }

    pub fn extend_from_slice(&mut self, data: &[u8]) {
        self.inner_mut().extend_from_slice(data);
    }

    /// Grows (with `fill`) or shrinks to `len` bytes.
    pub fn resize(&mut self, len: usize, fill: u8) {
        self.inner_mut().resize(len, fill);
    }

    pub fn capacity(&self) -> usize {
        self.inner().capacity()
    }

    /// A `Bytes` over this buffer, without a copy; the allocation returns to the pool when the
    /// last clone or slice of it is dropped.
    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl std::ops::Deref for BulkBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.inner()
    }
}

impl std::ops::DerefMut for BulkBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.inner_mut()
    }
}

impl AsRef<[u8]> for BulkBuf {
    fn as_ref(&self) -> &[u8] {
        self.inner()
    }
}

impl std::fmt::Debug for BulkBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkBuf").field("len", &self.len()).field("capacity", &self.capacity()).finish()
    }
}

impl Drop for BulkBuf {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.pool.give_back(buf);
        }
    }
}

/// Does `bytes` start on a `BULK_ALIGN` boundary (as a `BulkBuf`, or a slice of one at an
/// aligned offset, does)?
pub fn is_aligned(bytes: &[u8]) -> bool {
    (bytes.as_ptr() as usize).is_multiple_of(BULK_ALIGN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_their_memory_is_reused() {
        let pool: &'static Pool = Box::leak(Box::new(Pool { spare: Mutex::new(Vec::new()) }));
        let mut a = pool.take(10_000);
        a.extend_from_slice(&[7; 5000]);
        assert!(is_aligned(&a));
        assert_eq!(a.len(), 5000);
        let frozen = a.freeze();
        assert!(is_aligned(&frozen));
        assert_eq!(&frozen[..], &[7; 5000][..]);
        let slice = frozen.slice(4096..);
        assert!(is_aligned(&slice));
        assert!(!is_aligned(&frozen.slice(1..)));
        drop(frozen);
        // Still referenced by `slice`: nothing returned yet.
        assert!(pool.spare.lock().unwrap().is_empty());
        let ptr = slice.as_ptr() as usize - 4096;
        drop(slice);
        let b = pool.take(1);
        assert_eq!((b.as_ptr() as usize, b.len()), (ptr, 0));
        assert!(b.capacity() >= 10_000);
        // Too large to keep: freed, not pooled.
        drop(b);
        let huge = pool.take(SPARE_BUF_BYTES_MAX + 1);
        drop(huge);
        assert!(pool.spare.lock().unwrap().is_empty());
    }
}

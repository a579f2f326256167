//! An upload whose bytes come from a stream (an S3 request's body) instead of a file.
//!
//! The upload machine reads its source once, in order, one span at a time (`upload`), so a
//! stream can feed it without being kept: each read takes the next `len` bytes, and memory
//! stays at what the machine holds in flight (its window of chunks), whatever the object's
//! size. A read that does not start where the last one ended is refused, never served from
//! the wrong place. The stream must hold exactly the size declared up front (an S3 request's
//! `Content-Length`): fewer bytes fail the read that finds the end, more fail `finish`, and
//! either way the upload is never committed.
//!
//! Alongside, the bytes' MD5 is computed in the same order, since S3 clients expect it as a
//! single-part object's ETag.
//!
//! A multipart upload's part is uploaded with standalone chunk checksums
//! (`standalone_chunks`), so that the parts can later be joined into one file without
//! rehashing. Its SHA-256 is then no by-product of the upload: when the sender declared one,
//! it is computed here, in the same pass as the MD5.

use std::io;

use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt};
use md5::{Digest, Md5};

/// A stream of bytes of a known size, read in order.
pub struct StreamSource {
    size: u64,
    state: futures::lock::Mutex<State>,
    expect: Expected,
    /// Which expected digest the bytes did not match, once `finish` found one.
    mismatch: std::sync::Mutex<Option<DigestKind>>,
    /// Its chunks get standalone checksums (`standalone_chunks`).
    standalone: bool,
}

/// Digests the sender declared (S3's `Content-MD5`, `x-amz-checksum-sha256`): the upload is
/// committed only if the bytes have them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expected {
    pub md5: Option<[u8; 16]>,
    pub sha256: Option<[u8; 32]>,
}

/// A digest a stream was checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestKind {
    Md5,
    Sha256,
}

struct State {
    body: BoxStream<'static, io::Result<Bytes>>,
    /// Bytes handed out so far.
    pos: u64,
    /// What the stream gave beyond the last read.
    rest: Bytes,
    md5: Md5,
    /// The bytes' SHA-256, computed here only when the upload's chunks are standalone and a
    /// SHA-256 was declared.
    sha256: Option<sha2::Sha256>,
}

impl StreamSource {
    /// `body` must yield exactly `size` bytes.
    pub fn new(size: u64, body: BoxStream<'static, io::Result<Bytes>>) -> Self {
        let state = futures::lock::Mutex::new(State { body, pos: 0, rest: Bytes::new(), md5: Md5::new(), sha256: None });
        StreamSource { size, state, expect: Expected::default(), mismatch: std::sync::Mutex::new(None), standalone: false }
    }

    /// The same, committed only if its bytes have these digests.
    pub fn expecting(mut self, expect: Expected) -> Self {
        self.expect = expect;
        self.hash_if_needed();
        self
    }

    /// The same, uploaded with a standalone checksum per chunk, so that the file can be joined
    /// to others (`DfsClient::copy_joined`). The file then keeps no SHA-256 of the whole.
    pub fn standalone_chunks(mut self) -> Self {
        self.standalone = true;
        self.hash_if_needed();
        self
    }

    pub fn is_standalone(&self) -> bool {
        self.standalone
    }

    fn hash_if_needed(&mut self) {
        if self.standalone && self.expect.sha256.is_some() {
            self.state.get_mut().sha256.get_or_insert_with(<sha2::Sha256 as sha2::Digest>::new);
        }
    }

    /// The digest the bytes failed, if `finish` refused them for that.
    pub fn mismatch(&self) -> Option<DigestKind> {
        *self.mismatch.lock().expect("mismatch lock")
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The next `len` bytes, which must start at `offset`.
    pub async fn read_at(&self, offset: u64, len: u64) -> io::Result<Bytes> {
        let mut s = self.state.lock().await;
        if offset != s.pos {
            return Err(io::Error::other(format!("a stream is read in order: asked for byte {offset}, the next is {}", s.pos)));
        }
        let want = usize::try_from(len).map_err(|_| io::Error::other("a span too large for memory"))?;
        if offset.saturating_add(len) > self.size {
            return Err(io::Error::other(format!("asked for bytes past the declared size {}", self.size)));
        }
        // A body's pieces are usually smaller than a span: gather them, copying once.
        let mut out: Option<BytesMut> = None;
        let mut got = 0usize;
        let mut whole = None;
        while got < want {
            if s.rest.is_empty() {
                match s.body.next().await {
                    Some(Ok(piece)) => s.rest = piece,
                    Some(Err(e)) => return Err(e),
                    None => {
                        let at = s.pos + got as u64;
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("the stream ended after {at} of {} bytes", self.size)));
                    }
                }
                continue;
            }
            let take = s.rest.len().min(want - got);
            let piece = s.rest.split_to(take);
            // The first piece covering the whole span is handed out as it is, with no copy.
            if got == 0 && take == want {
                whole = Some(piece);
                break;
            }
            out.get_or_insert_with(|| BytesMut::with_capacity(want)).extend_from_slice(&piece);
            got += take;
        }
        let data = whole.unwrap_or_else(|| out.map(BytesMut::freeze).unwrap_or_default());
        s.md5.update(&data);
        if let Some(h) = s.sha256.as_mut() {
            sha2::Digest::update(h, &data);
        }
        s.pos += len;
        Ok(data)
    }

    /// After the last read: the MD5 of all the bytes, once the stream is found to hold no
    /// more than its declared size and to match the expected digests (`sha256`: what the
    /// upload computed of the same bytes, unless its chunks are standalone, when the SHA-256
    /// computed here is checked instead).
    pub async fn finish(&self, sha256: &[u8; 32]) -> io::Result<[u8; 16]> {
        let mut s = self.state.lock().await;
        if s.pos != self.size {
            return Err(io::Error::other(format!("finished after {} of {} bytes", s.pos, self.size)));
        }
        loop {
            if !s.rest.is_empty() {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("the stream holds more than its declared {} bytes", self.size)));
            }
            match s.body.next().await {
                Some(Ok(piece)) => s.rest = piece,
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
        let md5: [u8; 16] = std::mem::take(&mut s.md5).finalize().into();
        let own: Option<[u8; 32]> = s.sha256.take().map(|h| sha2::Digest::finalize(h).into());
        let sha256 = own.as_ref().unwrap_or(sha256);
        let failed = if self.expect.md5.is_some_and(|m| m != md5) {
            Some(DigestKind::Md5)
        } else if self.expect.sha256.is_some_and(|d| &d != sha256) {
            Some(DigestKind::Sha256)
        } else {
            None
        };
        if let Some(digest) = failed {
            *self.mismatch.lock().expect("mismatch lock") = Some(digest);
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("the bytes do not have the declared {digest:?} digest")));
        }
        Ok(md5)
    }
}

/// Hex digits of an MD5, as an ETag shows them.
pub fn md5_hex(md5: &[u8; 16]) -> String {
    md5.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;

    fn source(pieces: &[&[u8]], size: u64) -> StreamSource {
        let pieces: Vec<io::Result<Bytes>> = pieces.iter().map(|p| Ok(Bytes::copy_from_slice(p))).collect();
        StreamSource::new(size, futures::stream::iter(pieces).boxed())
    }

    #[test]
    fn spans_come_in_order_across_pieces_with_the_md5_of_all() {
        let s = source(&[b"hel", b"", b"lo wor", b"ld"], 11);
        block_on(async {
            assert_eq!(s.read_at(0, 4).await.unwrap(), Bytes::from_static(b"hell"));
            assert!(s.read_at(0, 4).await.is_err(), "a read out of order is refused");
            assert_eq!(s.read_at(4, 5).await.unwrap(), Bytes::from_static(b"o wor"));
            assert_eq!(s.read_at(9, 2).await.unwrap(), Bytes::from_static(b"ld"));
            assert_eq!(md5_hex(&s.finish(&[0; 32]).await.unwrap()), "5eb63bbbe01eeed093cb22bb8f5acdc3");
        });
    }

    #[test]
    fn a_stream_shorter_or_longer_than_declared_fails() {
        block_on(async {
            let short = source(&[b"abc"], 5);
            let e = short.read_at(0, 5).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
            let long = source(&[b"abc", b"d"], 3);
            long.read_at(0, 3).await.unwrap();
            assert_eq!(long.finish(&[0; 32]).await.unwrap_err().kind(), io::ErrorKind::InvalidData);
            let early = source(&[b"abc"], 3);
            assert!(early.finish(&[0; 32]).await.is_err(), "finishing before the last byte is read");
            assert!(source(&[b"abc"], 3).read_at(0, 4).await.is_err(), "past the declared size");
        });
    }

    #[test]
    fn declared_digests_must_match() {
        async fn read_all(s: &StreamSource) -> io::Result<[u8; 16]> {
            s.read_at(0, 3).await.unwrap();
            s.finish(&[7; 32]).await
        }
        block_on(async {
            let abc_md5 = [0x90, 0x01, 0x50, 0x98, 0x3c, 0xd2, 0x4f, 0xb0, 0xd6, 0x96, 0x3f, 0x7d, 0x28, 0xe1, 0x7f, 0x72];
            let right = source(&[b"abc"], 3).expecting(Expected { md5: Some(abc_md5), sha256: Some([7; 32]) });
            assert_eq!(read_all(&right).await.unwrap(), abc_md5);
            assert_eq!(right.mismatch(), None);
            let bad_md5 = source(&[b"abc"], 3).expecting(Expected { md5: Some([0; 16]), sha256: None });
            assert!(read_all(&bad_md5).await.is_err());
            assert_eq!(bad_md5.mismatch(), Some(DigestKind::Md5));
            let bad_sha = source(&[b"abc"], 3).expecting(Expected { md5: None, sha256: Some([8; 32]) });
            assert!(read_all(&bad_sha).await.is_err());
            assert_eq!(bad_sha.mismatch(), Some(DigestKind::Sha256));
            // Standalone chunks: the SHA-256 is this source's own, whatever the upload says.
            let abc_sha: [u8; 32] = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(b"abc")).into();
            let part = source(&[b"abc"], 3).standalone_chunks().expecting(Expected { md5: None, sha256: Some(abc_sha) });
            assert!(part.is_standalone());
            assert_eq!(read_all(&part).await.unwrap(), abc_md5, "the upload's [7; 32] is not what is checked");
            let bad_part = source(&[b"abc"], 3).expecting(Expected { md5: None, sha256: Some([7; 32]) }).standalone_chunks();
            assert!(read_all(&bad_part).await.is_err());
            assert_eq!(bad_part.mismatch(), Some(DigestKind::Sha256));
        });
    }
}

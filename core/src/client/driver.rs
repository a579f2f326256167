//! The drivers of the upload and download machines: they carry out each action (disk,
//! metadata, storage nodes), turn completions into events, and keep the bytes the machines
//! talk about. Every decision is the machines'; see `upload` for the run loop.
//!
//! Bytes are hashed here, once. An upload hashes the file in one pass whose state runs on
//! from chunk to chunk: each chunk's checksum is the state after it (`crate::chain`), the
//! last chunk's is the file's SHA-256. The upload machine guarantees the order that makes
//! this right (reads one at a time, in chunk order). A download checks each chunk on its own
//! from the state before it; only a file of an earlier version, whose chunks are not chained,
//! is hashed again as it is written (`Download::needs_file_pass`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures::future::{select, BoxFuture, Either};
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use sha2::{Digest, Sha256};

use super::download::{self, Download};
use super::resume::{self, Manifest, UploadKey};
use super::stream_source::{md5_hex, StreamSource};
use super::upload::{self, MetaOp, Placement, Start, Upload, UploadError, UploadSpec};
use super::{local, ClientError, DfsClient, Progress};
use crate::chain::{checksum, Chain};
use crate::env::{call_with_timeout, Clock, Disk, Env, LocalError, Transport};
use crate::ids::{FileId, Sha256Digest};
use crate::limits::SMALL_CHUNK_BYTES_MAX;
use crate::namespace::FileAttrs;
use crate::proto;
use crate::rpc::{ChunkService, ChunkUpload, RpcError};

/// Hashing less than this runs on the calling task: a hop to the blocking pool and back
/// costs more than hashing 64 KiB (and small files are many).
const INLINE_HASH_BYTES: usize = 64 * 1024;
/// Writes smaller than this get no early-writeback hint: the final fsync has little to do
/// anyway, and the hint is one more blocking call per small file.
const WRITEBACK_HINT_MIN_BYTES: u64 = 1 << 20;

/// Runs `work` (hashing `len` bytes) inline when small, on the compute pool otherwise.
async fn hash_work<E: Env, T: Send + 'static>(env: &E, len: usize, work: impl FnOnce() -> T + Send + 'static) -> T {
    if len < INLINE_HASH_BYTES {
        work()
    } else {
        env.compute(work).await
    }
}

/// How long the loop waits when the machine has no timer: any completion wakes it first.
const IDLE_WAIT: Duration = Duration::from_secs(3600);

enum UpDone {
    Event(upload::Event),
    /// A span read and hashed as `chain` says.
    Read {
        index: u32,
        chain: Option<Chain>,
        outcome: Result<(Bytes, Sha256Digest), LocalError>,
    },
}

enum DownDone {
    Event(download::Event),
    Fetched {
        index: u32,
        attempt: u32,
        data: Bytes,
        sha256: Sha256Digest,
    },
    /// A chunk written and, when the file needs a second pass, added to the file's running
    /// digest, which comes back with it.
    Written {
        index: u32,
        file_hash: Option<Sha256>,
        outcome: Result<(), LocalError>,
    },
}

/// Where a download's bytes go.
pub enum Output<'a> {
    /// A temporary file next to `dest`, renamed over it once complete and verified; made
    /// durable first (file and directory entry) when `sync`, or left for the caller's
    /// `sync_local` otherwise.
    File { tmp: PathBuf, dest: PathBuf, sync: bool },
    /// A stream (stdout): bytes go out in order as they are verified chunk by chunk.
    Writer(&'a mut (dyn std::io::Write + Send)),
}

/// Where an upload's bytes come from.
enum Source<'a> {
    File(&'a Path),
    /// With what the S3 gateway keeps of the object; its ETag is the stream's MD5.
    Stream(&'a StreamSource, proto::ObjectMeta),
}

/// MD5 of no bytes: an empty object's ETag.
const EMPTY_MD5: [u8; 16] = [0xd4, 0x1d, 0x8c, 0xd9, 0x8f, 0x00, 0xb2, 0x04, 0xe9, 0x80, 0x09, 0x98, 0xec, 0xf8, 0x42, 0x7e];

impl Source<'_> {
    /// What errors name as the source.
    fn path(&self) -> PathBuf {
        match self {
            Source::File(path) => path.to_path_buf(),
            Source::Stream(..) => PathBuf::from("(the request's body)"),
        }
    }

    /// Whether its chunks may have chained checksums: a file's may; a stream's unless it is
    /// to be joined to others later (`StreamSource::standalone_chunks`).
    fn may_chain(&self) -> bool {
        match self {
            Source::File(_) => true,
            Source::Stream(stream, _) => !stream.is_standalone(),
        }
    }

    /// The object's metadata to keep, with the ETag of `md5`; none for a file.
    fn object(&self, md5: Option<[u8; 16]>) -> Option<proto::ObjectMeta> {
        match (self, md5) {
            (Source::Stream(_, object), Some(md5)) => Some(proto::ObjectMeta { etag: md5_hex(&md5), ..object.clone() }),
            _ => None,
        }
    }
}

/// The upload machine's placements; each chunk's access token is kept aside in `tokens`, for
/// the writes of that chunk (a later placement of the same chunk brings a fresh one).
fn placements(p: Vec<proto::ChunkPlacement>, tokens: &std::sync::Mutex<BTreeMap<u32, proto::ChunkToken>>) -> Vec<Placement> {
    let mut kept = tokens.lock().expect("chunk tokens lock");
    p.into_iter()
        .map(|p| {
            if let Some(token) = p.token {
                kept.insert(p.index, token);
            }
            Placement { index: p.index, targets: p.targets }
        })
        .collect()
}

impl<E: Env> DfsClient<E> {
    /// Uploads the local file `source` to `remote`, creating its missing parent directories.
    /// Fails if `remote` exists, unless `overwrite`, in which case the old file is replaced
    /// atomically at commit. With a resume directory configured, an interrupted upload of
    /// the same source to the same path resumes where it stopped.
    pub async fn put(&self, source: &Path, remote: &str, overwrite: bool, progress: &dyn Progress) -> Result<proto::FileInfo, ClientError> {
        self.put_with(source, remote, overwrite, FileAttrs::default(), progress).await
    }

    /// `put`, keeping `attrs` (the source's mode and modification time) with the file.
    pub async fn put_with(
        &self,
        source: &Path,
        remote: &str,
        overwrite: bool,
        attrs: FileAttrs,
        progress: &dyn Progress,
    ) -> Result<proto::FileInfo, ClientError> {
        let first = self.put_once(Source::File(source), remote, overwrite, attrs, progress, true).await;
        match first {
            Err(ClientError::Upload { source: UploadError::UploadGone | UploadError::SourceChanged, resumed: true, .. }) => {
                progress.message("the interrupted upload cannot be resumed; starting over");
                self.put_once(Source::File(source), remote, overwrite, attrs, progress, false).await
            }
            other => other,
        }
    }

    /// Uploads the `source.size()` bytes of `source` to `remote`, as `put` does a file's, with
    /// `object` kept with the file and the bytes' MD5 as its ETag (the S3 gateway's PutObject).
    /// Never resumed: a stream cannot be read twice.
    pub async fn put_stream(
        &self,
        source: &StreamSource,
        remote: &str,
        overwrite: bool,
        object: proto::ObjectMeta,
        progress: &dyn Progress,
    ) -> Result<proto::FileInfo, ClientError> {
        self.put_once(Source::Stream(source, object), remote, overwrite, FileAttrs::default(), progress, false).await
    }

    async fn put_once(
        &self,
        source: Source<'_>,
        remote: &str,
        overwrite: bool,
        attrs: FileAttrs,
        progress: &dyn Progress,
        may_resume: bool,
    ) -> Result<proto::FileInfo, ClientError> {
        let disk = self.env.disk();
        let (size, stamp) = match &source {
            Source::File(path) => {
                let stamp = disk.stamp(path).await.map_err(local(path))?;
                (stamp.len, Some(stamp))
            }
            Source::Stream(stream, _) => (stream.size(), None),
        };
        let spec = UploadSpec { size, chunk_size: self.config.chunk_size, replication: self.config.replication };
        crate::chunking::validate_new(spec.size, spec.chunk_size).map_err(|e| ClientError::Invalid(e.to_string()))?;
        let source_path = source.path();
        let key = stamp.map(|stamp| UploadKey {
            source: source_path.to_string_lossy().into_owned(),
            remote: remote.to_string(),
            cluster: self.meta_addrs.join(","),
            stamp,
            chunk_size: spec.chunk_size,
            replication: spec.replication,
            overwrite,
        });
        // A file of one chunk has nothing to resume (its one chunk is sent again): no manifest,
        // which for many small files saves several file operations each.
        let manifest_path = match (&self.config.resume_dir, &key) {
            (Some(dir), Some(key)) if spec.size > spec.chunk_size => Some(resume::manifest_path(dir, key)),
            _ => None,
        };
        let resumable = match (&manifest_path, &key, may_resume) {
            (Some(path), Some(key), true) => resume::load(disk, path, key).await,
            _ => None,
        };
        let resumed = resumable.is_some();
        let mut manifest = None;
        let start = match resumable {
            Some((file, stored, open)) => {
                manifest = Some(open);
                Start::Resume { file, stored }
            }
            None => Start::Fresh,
        };
        let mut up = Upload::new(spec.clone(), self.upload_config(), start).map_err(|e| ClientError::Invalid(e.to_string()))?;
        progress.start(spec.size);
        if resumed {
            progress.message(&format!("resuming: {} of {} chunks already stored", up.resumed_chunks(), up.chunk_count()));
        }

        let upload_error = |e: UploadError| match e {
            UploadError::Metadata { op, error } => ClientError::Metadata { context: format!("put {remote}: {}", op.as_str()), source: error },
            UploadError::Source { index, error } => {
                ClientError::Local { path: source_path.clone(), source: std::io::Error::other(format!("reading chunk {index}: {error}")) }
            }
            e => ClientError::Upload { path: remote.to_string(), source: e, resumed },
        };

        // Each chunk's access token, from its latest placement (`placements`).
        let tokens = std::sync::Mutex::new(BTreeMap::new());
        let tokens = &tokens;
        let mut buffers: BTreeMap<u32, Bytes> = BTreeMap::new();
        // The hash state after the last chunk read: the next chunk hashes on from it (the
        // machine reads one span at a time, in order). The last chunk's checksum is the file's
        // SHA-256 (a file of one chunk: its SHA-256; of none: the empty string's).
        let chained = Chain::applies(spec.size, spec.chunk_size) && source.may_chain();
        let chunk_count = crate::chunking::chunk_count(spec.size, spec.chunk_size);
        // Standalone checksums of several chunks make no SHA-256 of the whole: none is recorded.
        let whole_digest = chained || chunk_count <= 1;
        let mut chain_before = Chain::initial();
        let mut file_sha256 = Sha256Digest::of(&[]);
        // A stream's MD5, once it was read to its end (the object's ETag).
        let mut stream_md5 = None;
        let mut pending: FuturesUnordered<BoxFuture<'_, UpDone>> = FuturesUnordered::new();
        let mut outcome = None;
        loop {
            while let Some(action) = up.poll_action() {
                match action {
                    upload::Action::Create { place_chunks, commit_empty } => {
                        let request = proto::CreateFileRequest {
                            path: remote.to_string(),
                            size: spec.size,
                            chunk_size: spec.chunk_size,
                            replication: spec.replication,
                            overwrite,
                            request_id: Some(self.next_request_id()),
                            expect_file_id: None,
                            place_chunks,
                            mode: attrs.mode,
                            mtime_unix_ms: attrs.mtime_unix_ms,
                            commit_empty,
                            // An empty stream's ETag is known already: the MD5 of nothing.
                            object: source.object(commit_empty.then_some(EMPTY_MD5)),
                        };
                        pending.push(
                            async move {
                                UpDone::Event(match self.creates.call(request).await {
                                    Ok(r) => upload::Event::Created {
                                        file: FileId(r.file_id),
                                        placements: placements(r.placements, tokens),
                                        write_quorum: r.write_quorum,
                                        committed: r.committed,
                                    },
                                    Err(error) => upload::Event::MetaFailed { op: MetaOp::Create, error },
                                })
                            }
                            .boxed(),
                        );
                    }
                    upload::Action::Read { index, offset, len } => {
                        let last = u64::from(index) + 1 == chunk_count;
                        let chain = chained.then(|| Chain::at(index, spec.chunk_size, chain_before, last));
                        let source = &source;
                        pending.push(
                            async move {
                                let read = match source {
                                    Source::File(path) => disk.read_at(path, offset, len).await,
                                    Source::Stream(stream, _) => stream.read_at(offset, len).await,
                                };
                                let data = match read {
                                    Ok(data) if data.len() as u64 == len => data,
                                    Ok(data) => {
                                        let error = LocalError::Shrank { got: data.len() as u64, expected: len };
                                        return UpDone::Read { index, chain, outcome: Err(error) };
                                    }
                                    Err(e) => return UpDone::Read { index, chain, outcome: Err(LocalError::io(None, e)) },
                                };
                                let (data, sha256) = hash_work(&self.env, data.len(), move || {
                                    let sha256 = checksum(&data, chain.as_ref());
                                    (data, sha256)
                                })
                                .await;
                                UpDone::Read { index, chain, outcome: Ok((data, sha256)) }
                            }
                            .boxed(),
                        );
                    }
                    upload::Action::Allocate { indexes, exclude } => {
                        let file_id = up.file().map_or(0, |f| f.0);
                        let request = proto::AllocateChunksRequest { file_id, chunk_indexes: indexes, exclude };
                        pending.push(
                            async move {
                                UpDone::Event(match self.meta.call(request).await {
                                    Ok(r) => upload::Event::Placed { placements: placements(r.placements, tokens), write_quorum: r.write_quorum },
                                    Err(error) => upload::Event::MetaFailed { op: MetaOp::Allocate, error },
                                })
                            }
                            .boxed(),
                        );
                    }
                    upload::Action::Send { index, attempt, sha256, chain, primary, forward_to } => {
                        let data = buffers.get(&index).cloned().unwrap_or_default();
                        let file = up.file().unwrap_or(FileId(0));
                        let header = proto::WriteChunkHeader {
                            chunk_id: Bytes::copy_from_slice(crate::ids::ChunkId::derive(file, index).as_bytes()),
                            size: data.len() as u64,
                            sha256: Bytes::copy_from_slice(&sha256.0),
                            forward_to,
                            chain: chain.map(Chain::to_proto),
                            token: tokens.lock().expect("chunk tokens lock").get(&index).cloned(),
                        };
                        let timeout = self.config.transfer_timeout;
                        pending.push(
                            async move {
                                let addr = primary.addr.clone();
                                let upload = ChunkUpload { header, data };
                                let _ = crate::fault::inject(self.env.clock(), crate::fault::Site::ClientSend).await;
                                let sent = if self.config.small_chunk_batches && upload.data.len() <= SMALL_CHUNK_BYTES_MAX {
                                    self.chunk_batches.write(&addr, upload).await
                                } else {
                                    let send = self.env.transport().write_chunk(&addr, ChunkService::Storage, upload);
                                    call_with_timeout(self.env.clock(), timeout, &addr, send).await
                                };
                                UpDone::Event(match sent {
                                    Ok(reply) => upload::Event::Stored {
                                        index,
                                        attempt,
                                        stored_on: reply.stored_on,
                                        failed: reply.failures.into_iter().filter_map(|f| Some((f.node?.id, f.error))).collect(),
                                    },
                                    Err(error) => upload::Event::SendFailed { index, attempt, error },
                                })
                            }
                            .boxed(),
                        );
                    }
                    upload::Action::Release { index } => {
                        buffers.remove(&index);
                    }
                    upload::Action::Checkpoint(stored) => {
                        if let Some(m) = manifest.as_mut() {
                            if let Err(e) = m.append(&stored).await {
                                tracing::warn!(path = %m.path().display(), error = %e, "resume manifest not updated; a rerun resends more");
                            }
                        }
                    }
                    upload::Action::Record { chunks } => {
                        let request =
                            proto::RecordChunksRequest { file_id: up.file().map_or(0, |f| f.0), chunks: chunks.iter().map(|c| c.to_proto()).collect() };
                        pending.push(
                            async move {
                                UpDone::Event(match self.meta.call(request).await {
                                    Ok(_) => upload::Event::Recorded,
                                    Err(error) => upload::Event::MetaFailed { op: MetaOp::Record, error },
                                })
                            }
                            .boxed(),
                        );
                    }
                    upload::Action::FinishSource => {
                        let sha256 = file_sha256;
                        let unchanged = match &source {
                            Source::File(path) => disk.stamp(path).await.is_ok_and(|now| Some(now) == stamp),
                            Source::Stream(stream, _) => match stream.finish(&sha256.0).await {
                                Ok(md5) => {
                                    stream_md5 = Some(md5);
                                    true
                                }
                                Err(e) => {
                                    tracing::warn!(remote, error = %e, "the stream did not end at its declared size");
                                    false
                                }
                            },
                        };
                        up.handle(upload::Event::SourceFinished { sha256, unchanged }, self.env.clock().now());
                    }
                    upload::Action::Commit { chunks, sha256 } => {
                        let request = proto::CommitFileRequest {
                            file_id: up.file().map_or(0, |f| f.0),
                            sha256: if whole_digest { Bytes::copy_from_slice(&sha256.0) } else { Bytes::new() },
                            chunks: chunks.iter().map(|c| c.to_proto()).collect(),
                            object: source.object(stream_md5),
                        };
                        pending.push(
                            async move {
                                UpDone::Event(match self.commits.call(request).await {
                                    Ok(r) => match r.file {
                                        Some(file) => upload::Event::Committed { file },
                                        None => {
                                            upload::Event::MetaFailed { op: MetaOp::Commit, error: RpcError::Malformed("commit reply carries no file".into()) }
                                        }
                                    },
                                    Err(error) => upload::Event::MetaFailed { op: MetaOp::Commit, error },
                                })
                            }
                            .boxed(),
                        );
                    }
                    upload::Action::Progress { bytes } => progress.advance(bytes),
                    upload::Action::Done(info) => outcome = Some(Ok(info)),
                    upload::Action::Failed(e) => outcome = Some(Err(e)),
                }
            }
            if up.is_finished() {
                break;
            }
            let done = match self.next_completion(&mut pending, up.poll_timeout()).await {
                Some(done) => done,
                None => {
                    up.handle_timeout(self.env.clock().now());
                    continue;
                }
            };
            let now = self.env.clock().now();
            match done {
                UpDone::Event(event) => {
                    if let (upload::Event::Created { file, committed: None, .. }, Some(path)) = (&event, &manifest_path) {
                        let key = key.clone().expect("a manifest path comes with a key");
                        match Manifest::create(disk.clone(), path.clone(), key, *file).await {
                            Ok(m) => manifest = Some(m),
                            Err(e) => tracing::warn!(path = %path.display(), error = %e, "no resume manifest; an interrupted upload will start over"),
                        }
                    }
                    up.handle(event, now);
                }
                UpDone::Read { index, chain, outcome } => match outcome {
                    Ok((data, sha256)) => {
                        buffers.insert(index, data);
                        chain_before = sha256;
                        if u64::from(index) + 1 == chunk_count {
                            file_sha256 = sha256;
                        }
                        up.handle(upload::Event::Read { index, sha256, chain }, now);
                    }
                    Err(error) => up.handle(upload::Event::ReadFailed { index, error }, now),
                },
            }
        }
        // Transfers still in flight belong to a finished upload: dropping them cancels them.
        drop(pending);
        match outcome {
            Some(Ok(info)) => {
                if let Some(path) = &manifest_path {
                    resume::remove(disk, path).await;
                }
                progress.finish();
                tracing::info!(remote = %info.path, file = info.file_id, size = info.size, chunks = info.chunk_count, "upload committed");
                Ok(info)
            }
            Some(Err(e)) => {
                // A stream cannot be read again, so its upload can never resume: dropped now,
                // its stored chunks deleted, instead of waiting for the upload to expire.
                if let (Source::Stream(..), Some(file)) = (&source, up.file()) {
                    if let Err(abort) = self.abort_upload(file.0).await {
                        tracing::warn!(remote, file = file.0, error = %abort, "a failed stream's upload was not aborted; it expires");
                    }
                }
                // A manifest that can never be resumed is of no use; keep it otherwise.
                if matches!(e, UploadError::SourceChanged | UploadError::UploadGone) {
                    if let Some(path) = &manifest_path {
                        resume::remove(disk, path).await;
                    }
                }
                Err(upload_error(e))
            }
            None => Err(ClientError::Invalid("the upload ended without an outcome".into())),
        }
    }

    /// Waits for the next completion, or until `timeout` (returns `None`).
    async fn next_completion<T>(&self, pending: &mut FuturesUnordered<BoxFuture<'_, T>>, timeout: Option<crate::env::Timestamp>) -> Option<T> {
        let wait = match timeout {
            Some(at) => at.saturating_since(self.env.clock().now()),
            None => IDLE_WAIT,
        };
        if pending.is_empty() {
            self.env.clock().sleep(wait).await;
            return None;
        }
        let sleep = self.env.clock().sleep(wait);
        futures::pin_mut!(sleep);
        match select(pending.next(), sleep).await {
            Either::Left((Some(done), _)) => Some(done),
            Either::Left((None, _)) | Either::Right(((), _)) => None,
        }
    }

    // ---- download ----------------------------------------------------------------------

    /// Downloads `remote` into the local file `dest`, replacing it atomically: `dest` is
    /// either untouched or complete and verified.
    pub async fn get(&self, remote: &str, dest: &Path, progress: &dyn Progress) -> Result<proto::FileInfo, ClientError> {
        self.get_file(remote, dest, true, progress).await
    }

    /// As `get`, but `dest` is not made durable: it is replaced atomically for processes on
    /// this machine, and survives a power cut only after `sync_local` of its filesystem. For
    /// many files (`get -r`): one flush for all of them instead of two per file.
    pub async fn get_unsynced(&self, remote: &str, dest: &Path, progress: &dyn Progress) -> Result<proto::FileInfo, ClientError> {
        self.get_file(remote, dest, false, progress).await
    }

    /// Makes everything written so far to the local filesystem holding `dir` durable (after
    /// `get_unsynced`).
    pub async fn sync_local(&self, dir: &Path) -> Result<(), ClientError> {
        self.env.disk().sync_all(dir).await.map_err(local(dir))
    }

    async fn get_file(&self, remote: &str, dest: &Path, sync: bool, progress: &dyn Progress) -> Result<proto::FileInfo, ClientError> {
        let disk = self.env.disk();
        let tmp = part_path(dest, self.env.random_u64());
        let result = self.download(remote, Output::File { tmp: tmp.clone(), dest: dest.to_path_buf(), sync }, progress, "get").await;
        if result.is_err() {
            let _ = disk.remove_file(&tmp).await;
        }
        result
    }

    /// Writes `remote` to `out` (stdout) in order, each chunk verified before it is written.
    /// A failure midway leaves a prefix of the file written.
    pub async fn get_to_writer(&self, remote: &str, out: &mut (dyn std::io::Write + Send), progress: &dyn Progress) -> Result<proto::FileInfo, ClientError> {
        self.download(remote, Output::Writer(out), progress, "cat").await
    }

    /// `get_to_writer`, its errors naming the command `verb` (`get` to stdout, `cat`).
    pub async fn get_to_writer_as(
        &self,
        remote: &str,
        out: &mut (dyn std::io::Write + Send),
        progress: &dyn Progress,
        verb: &str,
    ) -> Result<proto::FileInfo, ClientError> {
        self.download(remote, Output::Writer(out), progress, verb).await
    }

    async fn download(&self, remote: &str, mut output: Output<'_>, progress: &dyn Progress, verb: &str) -> Result<proto::FileInfo, ClientError> {
        let reply = self
            .gets
            .call(proto::GetFileRequest { path: remote.to_string() })
            .await
            .map_err(|source| ClientError::Metadata { context: format!("{verb} {remote}"), source })?;
        let info = reply.file.ok_or_else(|| ClientError::Invalid("get reply carries no file".into()))?;
        let download_error = |source: download::DownloadError| ClientError::Download { verb: verb.to_string(), path: remote.to_string(), source };
        let mut machine = Download::new(&info, reply.chunks, self.download_config()).map_err(download_error)?;
        // Every chunk of this file is small enough to travel in a batch.
        let small_chunks = self.config.small_chunk_batches && info.chunk_size.min(info.size) <= SMALL_CHUNK_BYTES_MAX as u64;
        let disk = self.env.disk();
        if let Output::File { tmp, .. } = &output {
            disk.write_file(tmp, Bytes::new()).await.map_err(local(tmp))?;
        }
        progress.start(info.size);

        let mut buffers: BTreeMap<u32, Bytes> = BTreeMap::new();
        // Only for a file whose chunks do not prove its SHA-256 (`needs_file_pass`). Travels
        // with the one write in flight (the machine writes one chunk at a time, in order).
        let mut file_hash = machine.needs_file_pass().then(Sha256::new);
        let mut pending: FuturesUnordered<BoxFuture<'_, DownDone>> = FuturesUnordered::new();
        let mut outcome = None;
        loop {
            while let Some(action) = machine.poll_action() {
                match action {
                    download::Action::Fetch { index, attempt, chunk_id, token, from } => {
                        let timeout = self.config.transfer_timeout;
                        let chain = machine.chain(index);
                        pending.push(
                            async move {
                                let request = proto::ReadChunkRequest { chunk_id, token, ..Default::default() };
                                let fetched = if small_chunks {
                                    self.chunk_batches.read(&from.addr, request).await
                                } else {
                                    let fetch = self.env.transport().read_chunk(&from.addr, request);
                                    call_with_timeout(self.env.clock(), timeout, &from.addr, fetch).await
                                };
                                match fetched {
                                    Ok(d) => {
                                        // Chunks in flight hash in parallel, off this task.
                                        let data = d.data;
                                        let (data, sha256) = hash_work(&self.env, data.len(), move || {
                                            let sha256 = checksum(&data, chain.as_ref());
                                            (data, sha256)
                                        })
                                        .await;
                                        DownDone::Fetched { index, attempt, data, sha256 }
                                    }
                                    Err(error) => DownDone::Event(download::Event::FetchFailed { index, attempt, error }),
                                }
                            }
                            .boxed(),
                        );
                    }
                    download::Action::Discard { index } => {
                        buffers.remove(&index);
                    }
                    download::Action::Write { index, offset } => {
                        let data = buffers.remove(&index).unwrap_or_default();
                        match &mut output {
                            // In the background: fetches go on while the disk writes.
                            Output::File { tmp, .. } => {
                                let tmp = tmp.clone();
                                let hasher = file_hash.take();
                                pending.push(
                                    async move {
                                        let len = data.len() as u64;
                                        // The chunk joins the file's digest while the disk writes
                                        // it: one after the other, they were the download's
                                        // longest chain (every chunk waits for the one before).
                                        let hashed = hasher.map(|h| (h, data.clone()));
                                        let hashing = async {
                                            match hashed {
                                                Some((mut hasher, data)) => Some(
                                                    hash_work(&self.env, data.len(), move || {
                                                        hasher.update(&data);
                                                        hasher
                                                    })
                                                    .await,
                                                ),
                                                None => None,
                                            }
                                        };
                                        let writing = async {
                                            // A large chunk bypasses the page cache where the disk
                                            // can (the copy into it was a third of a download's CPU).
                                            let written = if crate::bulk_buf::is_bulk(len) {
                                                disk.write_bulk_at(&tmp, offset, data).await
                                            } else {
                                                disk.write_at(&tmp, offset, data).await
                                            };
                                            let outcome = written.map_err(|e| LocalError::io(Some(&tmp), e));
                                            if outcome.is_ok() && len >= WRITEBACK_HINT_MIN_BYTES {
                                                // The final fsync then finds little left: the disk
                                                // writes while later chunks are fetched. A hint only.
                                                if let Err(e) = disk.start_writeback(&tmp, offset, len).await {
                                                    tracing::debug!(error = %e, "early writeback not started");
                                                }
                                            }
                                            outcome
                                        };
                                        let (hasher, outcome) = futures::join!(hashing, writing);
                                        DownDone::Written { index, file_hash: hasher, outcome }
                                    }
                                    .boxed(),
                                );
                            }
                            Output::Writer(w) => {
                                if let Some(h) = file_hash.as_mut() {
                                    h.update(&data);
                                }
                                let event = match w.write_all(&data) {
                                    Ok(()) => download::Event::Written { index },
                                    Err(e) => download::Event::WriteFailed { error: LocalError::io(None, e) },
                                };
                                machine.handle(event, self.env.clock().now());
                            }
                        }
                    }
                    download::Action::ReportBad { chunk_id, node, reason } => {
                        tracing::warn!(chunk = %hex::encode(&chunk_id), node = node.id, addr = %node.addr, %reason, "replica returned bad bytes");
                        self.report_bad_replica(chunk_id, node, reason).await;
                    }
                    download::Action::HashFile => {
                        let sha256 = Sha256Digest(file_hash.take().unwrap_or_default().finalize().into());
                        machine.handle(download::Event::FileHashed { sha256 }, self.env.clock().now());
                    }
                    download::Action::Finish => {
                        let event = match self.finish_output(&mut output).await {
                            Ok(()) => download::Event::Finished,
                            Err(e) => download::Event::WriteFailed { error: LocalError::io(None, e) },
                        };
                        machine.handle(event, self.env.clock().now());
                    }
                    download::Action::Progress { bytes } => progress.advance(bytes),
                    download::Action::Done => outcome = Some(Ok(())),
                    download::Action::Failed(e) => outcome = Some(Err(e)),
                }
            }
            if machine.is_finished() {
                break;
            }
            let done = match self.next_completion(&mut pending, machine.poll_timeout()).await {
                Some(done) => done,
                None => {
                    machine.handle_timeout(self.env.clock().now());
                    continue;
                }
            };
            let now = self.env.clock().now();
            match done {
                DownDone::Event(event) => machine.handle(event, now),
                DownDone::Fetched { index, attempt, data, sha256 } => {
                    let len = data.len() as u64;
                    buffers.insert(index, data);
                    machine.handle(download::Event::Fetched { index, attempt, len, sha256 }, now);
                }
                DownDone::Written { index, file_hash: hasher, outcome } => {
                    file_hash = hasher;
                    let event = match outcome {
                        Ok(()) => download::Event::Written { index },
                        Err(error) => download::Event::WriteFailed { error },
                    };
                    machine.handle(event, now);
                }
            }
        }
        drop(pending);
        match outcome {
            Some(Ok(())) => {
                progress.finish();
                Ok(info)
            }
            Some(Err(e)) => Err(download_error(e)),
            None => Err(ClientError::Invalid("the download ended without an outcome".into())),
        }
    }

    async fn finish_output(&self, output: &mut Output<'_>) -> std::io::Result<()> {
        match output {
            Output::Writer(w) => w.flush(),
            Output::File { tmp, dest, sync } => {
                let disk = self.env.disk();
                if !*sync {
                    return disk.rename(tmp, dest).await;
                }
                disk.sync_file(tmp).await?;
                disk.rename(tmp, dest).await?;
                let dir = match dest.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d,
                    _ => Path::new("."),
                };
                disk.sync_dir(dir).await
            }
        }
    }

    /// Writes bytes `[offset, offset + len)` of `remote` (clamped to its size) to `out`, in
    /// order, and returns the file and how many bytes were written. Only the chunks that hold
    /// the range are read, and of each only the frames that hold it, every frame checked
    /// against its CRC32C before a byte of it is written (a chunk stored without frame checks
    /// is read whole and checked against its SHA-256). A replica that fails is skipped (and
    /// reported when its bytes are wrong) for the next. `verb` names the command in errors.
    pub async fn read_range(
        &self,
        remote: &str,
        offset: u64,
        len: u64,
        out: &mut (dyn std::io::Write + Send),
        verb: &str,
    ) -> Result<(proto::FileInfo, u64), ClientError> {
        let reply = self.open(remote, verb).await?;
        let written = self.read_opened(remote, &reply, offset, len, out).await?;
        Ok((reply.file.unwrap_or_default(), written))
    }

    /// The file at `remote` with where its chunks are, for `read_opened`: reads of it then
    /// see this version of the file, whatever is committed at `remote` later (a replaced
    /// file's chunks stay readable until the cluster collects them; then reads fail, never
    /// mixing two versions).
    pub async fn open(&self, remote: &str, verb: &str) -> Result<proto::GetFileResponse, ClientError> {
        let mut reply = self
            .gets
            .call(proto::GetFileRequest { path: remote.to_string() })
            .await
            .map_err(|source| ClientError::Metadata { context: format!("{verb} {remote}"), source })?;
        if reply.file.is_none() {
            return Err(ClientError::Invalid("the file's reply carries no file".into()));
        }
        reply.chunks.sort_by_key(|c| c.index);
        Ok(reply)
    }

    /// `read_range` of a file `open` returned: bytes `[offset, offset + len)`, clamped to its
    /// size, written to `out`; returns how many.
    pub async fn read_opened(
        &self,
        remote: &str,
        reply: &proto::GetFileResponse,
        offset: u64,
        len: u64,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<u64, ClientError> {
        let info = reply.file.as_ref().ok_or_else(|| ClientError::Invalid("the file's reply carries no file".into()))?;
        let end = offset.saturating_add(len).min(info.size);
        let mut written = 0;
        for (chunk_start, loc) in crate::chunking::placed(&reply.chunks) {
            let chunk_end = chunk_start + loc.size;
            if chunk_end <= offset || chunk_start >= end {
                continue;
            }
            let (from, to) = (offset.max(chunk_start) - chunk_start, end.min(chunk_end) - chunk_start);
            let meta = crate::chunk_store::ChunkMeta {
                size: loc.size,
                sha256: Sha256Digest::from_slice(&loc.sha256).unwrap_or(Sha256Digest([0; 32])),
                chain: Chain::from_proto_opt(loc.chain.as_ref()).map_err(|e| ClientError::Invalid(format!("chunk {}: {e}", loc.index)))?,
            };
            let mut errors = Vec::new();
            let mut bytes = None;
            for node in &loc.replicas {
                let request = proto::ReadChunkRequest {
                    chunk_id: loc.chunk_id.clone(),
                    range_offset: Some(from),
                    range_length: Some(to - from),
                    token: loc.token.clone(),
                };
                let read =
                    call_with_timeout(self.env.clock(), self.config.transfer_timeout, &node.addr, self.env.transport().read_chunk(&node.addr, request)).await;
                let download = match read {
                    Ok(d) => d,
                    Err(e) => {
                        errors.push(format!("{}: {e}", node.addr));
                        continue;
                    }
                };
                let h = &download.header;
                let range = match h.range_bytes {
                    Some(bytes) => crate::chunk_store::ServedRange { start: h.range_start, bytes, frame_bytes: h.frame_bytes, crcs: h.frame_crc32c.clone() },
                    None => crate::chunk_store::ServedRange { start: 0, bytes: loc.size, frame_bytes: loc.size.max(1), crcs: Vec::new() },
                };
                let data = download.data;
                let checked = self.env.compute(move || crate::chunk_store::check_range(&range, meta, &data, from, to - from)).await;
                match checked {
                    Ok(b) => {
                        bytes = Some(b);
                        break;
                    }
                    Err(e) => {
                        errors.push(format!("{}: {e}", node.addr));
                        self.report_bad_replica(loc.chunk_id.clone(), node.clone(), e.to_string()).await;
                    }
                }
            }
            let Some(bytes) = bytes else {
                let why = if errors.is_empty() { "no replica is listed".to_string() } else { errors.join("; ") };
                return Err(ClientError::Chunk { path: remote.to_string(), index: loc.index, reason: format!("no replica served it ({why})") });
            };
            out.write_all(&bytes).map_err(|e| ClientError::Local { path: PathBuf::from("-"), source: e })?;
            written += bytes.len() as u64;
        }
        out.flush().map_err(|e| ClientError::Local { path: PathBuf::from("-"), source: e })?;
        Ok(written)
    }

    /// Tells metadata a replica is bad, so it is no longer served (HDFS's `reportBadBlocks`).
    /// Best effort: the read has already moved on to another replica.
    async fn report_bad_replica(&self, chunk_id: Bytes, node: proto::StorageNode, reason: String) {
        let request = proto::ReportBadReplicaRequest { chunk_id, node_id: node.id, reason };
        if let Err(e) = self.meta.call(request).await {
            tracing::warn!(node = node.id, error = %e, "could not report a bad replica to metadata");
        }
    }
}

/// Longest file name local filesystems take (Linux's NAME_MAX, in bytes).
pub const LOCAL_NAME_MAX_BYTES: usize = 255;

/// The temporary file a download of `dest` is written to before it is renamed into place:
/// `.NAME.dfs-part-<16 hex>` beside it, hidden, and recognisable by whoever finds one left by
/// a killed process. NAME is `dest`'s name cut (on a character boundary) so that the whole
/// stays within `LOCAL_NAME_MAX_BYTES` whatever the target's name: a 255-byte name is valid
/// and its temporary name must be too.
pub fn part_path(dest: &Path, random: u64) -> PathBuf {
    let suffix = format!(".dfs-part-{random:016x}");
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "download".into());
    let room = LOCAL_NAME_MAX_BYTES - 1 - suffix.len();
    let mut cut = name.len().min(room);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    dest.with_file_name(format!(".{}{suffix}", &name[..cut]))
}

#[cfg(test)]
mod part_path_tests {
    use super::*;

    #[test]
    fn temporary_names_fit_name_max_whatever_the_target() {
        let short = part_path(Path::new("/d/a.txt"), 0xab);
        assert_eq!(short, Path::new("/d/.a.txt.dfs-part-00000000000000ab"));
        for name in ["x".repeat(255), "é".repeat(127), format!("{}é", "y".repeat(227)), "z".repeat(228)] {
            let tmp = part_path(&Path::new("/d").join(&name), u64::MAX);
            let tmp_name = tmp.file_name().unwrap().to_str().unwrap();
            assert!(tmp_name.len() <= LOCAL_NAME_MAX_BYTES, "{} bytes", tmp_name.len());
            assert!(tmp_name.starts_with('.') && tmp_name.ends_with(".dfs-part-ffffffffffffffff"));
            assert_eq!(tmp.parent(), Some(Path::new("/d")));
        }
    }
}

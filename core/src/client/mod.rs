//! The dfs client: uploads and downloads whole files, chunk by chunk, in parallel, verifying
//! every byte; and the namespace operations (list, mkdir, rename, delete, status).
//!
//! Writes are safe to retry: every `CreateFile` carries a request id (a random client id and
//! a counter), so a create retried after a lost reply returns the upload the first attempt
//! made; a delete of a file names the file id it saw, so a retry never removes a newer file
//! put at the same path meanwhile.
//!
//! Upload: create the file at metadata, then for each chunk (at most `parallelism` at once)
//! ask for a placement, stream the chunk to the primary, which stores it and fans it out to the
//! other replicas, until a write quorum holds it; record the chunks; commit. Only the commit
//! makes the file visible, so an interrupted upload never leaves a partial file behind.
//!
//! Download: fetch each chunk from its replicas in turn until one returns bytes matching the
//! recorded SHA-256, write it at its offset in a temporary file, then fsync and rename the
//! temporary file into place: the destination is either untouched or complete.

pub mod admin;
pub mod download;
pub mod upload;
pub mod meta_client;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};

use crate::chunking::{self, ChunkSpan};
use crate::env::{call_with_timeout, Disk, Env, Transport};
use crate::ids::{ChunkId, FileId, Sha256Digest};
use crate::namespace::normalize_path;
use crate::proto;
use crate::rpc::{ChunkService, ChunkUpload, RpcError};
pub use meta_client::{MetaClient, RetryPolicy};

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub chunk_size: u64,
    pub replication: u32,
    /// Chunks in flight at once, each held in memory whole.
    pub parallelism: usize,
    /// Placements tried per chunk before the upload fails.
    pub chunk_attempts: u32,
    /// Limit on one chunk transfer to or from one node.
    pub transfer_timeout: Duration,
    pub metadata: RetryPolicy,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            chunk_size: chunking::DEFAULT_CHUNK_SIZE,
            replication: 3,
            parallelism: 4,
            chunk_attempts: 5,
            transfer_timeout: Duration::from_secs(60),
            metadata: RetryPolicy::default(),
        }
    }
}

/// Chunk records sent to metadata per `RecordChunks` call.
const RECORD_BATCH_CHUNKS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{}: {source}", path.display())]
    Local { path: PathBuf, source: std::io::Error },
    /// Displays only the context: the metadata error follows as the error's source.
    #[error("{context}")]
    Metadata { context: String, source: RpcError },
    #[error("chunk {index} of {path}: {reason}")]
    Chunk { path: String, index: u32, reason: String },
    #[error("{0}")]
    Invalid(String),
}

impl ClientError {
    /// The metadata error behind this one, if any (to tell "not found" from the rest).
    pub fn rpc(&self) -> Option<&RpcError> {
        match self {
            ClientError::Metadata { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Told how far a long transfer has got.
pub trait Progress: Send + Sync {
    fn start(&self, _total_bytes: u64) {}
    fn advance(&self, _bytes: u64) {}
    fn finish(&self) {}
}

/// Reports nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

pub struct DfsClient<E: Env> {
    env: E,
    meta: MetaClient<E>,
    config: ClientConfig,
    /// Names this client in request ids: random, so that clients need no coordination.
    client_id: u64,
    /// The last request sequence number used.
    request_seq: AtomicU64,
}

/// What `delete` removed.
#[derive(Clone, Debug, PartialEq)]
pub struct Deleted {
    pub path: String,
    /// Set when a file was deleted.
    pub file: Option<proto::FileInfo>,
    /// Unknown (0) when a retried delete found its first attempt had done the work.
    pub files_deleted: u64,
    pub dirs_deleted: u64,
}

fn local(path: &Path) -> impl FnOnce(std::io::Error) -> ClientError + '_ {
    move |source| ClientError::Local { path: path.to_path_buf(), source }
}

fn metadata(context: impl Into<String>) -> impl FnOnce(RpcError) -> ClientError {
    let context = context.into();
    move |source| ClientError::Metadata { context, source }
}

impl<E: Env> DfsClient<E> {
    pub fn new(env: E, meta_addrs: Vec<String>, config: ClientConfig) -> Self {
        let meta = MetaClient::new(env.clone(), meta_addrs, config.metadata.clone());
        let client_id = env.random_u64();
        DfsClient { env, meta, config, client_id, request_seq: AtomicU64::new(0) }
    }

    // ---- upload ------------------------------------------------------------------------

    /// Uploads the local file `source` to `remote`, creating its missing parent directories.
    /// Fails if `remote` exists, unless `overwrite`, in which case the old file is replaced
    /// atomically at commit.
    pub async fn put(&self, source: &Path, remote: &str, overwrite: bool, progress: &dyn Progress) -> Result<proto::FileInfo, ClientError> {
        let size = self.env.disk().file_len(source).await.map_err(local(source))?;
        chunking::validate(size, self.config.chunk_size).map_err(|e| ClientError::Invalid(e.to_string()))?;
        let created = self
            .meta
            .call(proto::CreateFileRequest {
                path: remote.to_string(),
                size,
                chunk_size: self.config.chunk_size,
                replication: self.config.replication,
                overwrite,
                request_id: Some(self.next_request_id()),
                expect_file_id: None,
                place_chunks: 0,
            })
            .await
            .map_err(metadata(format!("put {remote}")))?;
        let file = FileId(created.file_id);
        tracing::info!(%remote, %file, size, "upload started");
        progress.start(size);

        let chunks: Vec<proto::ChunkInfo> = stream::iter(chunking::spans(size, self.config.chunk_size))
            .map(|span| async move {
                let info = self.upload_chunk(source, remote, file, span).await?;
                progress.advance(span.len);
                Ok::<_, ClientError>(info)
            })
            .buffer_unordered(self.config.parallelism.max(1))
            .try_collect()
            .await?;

        for batch in chunks.chunks(RECORD_BATCH_CHUNKS) {
            self.meta
                .call(proto::RecordChunksRequest { file_id: file.0, chunks: batch.to_vec() })
                .await
                .map_err(metadata(format!("put {remote}: recording chunks")))?;
        }
        let committed = self
            .meta
            .call(proto::CommitFileRequest { file_id: file.0, ..Default::default() })
            .await
            .map_err(metadata(format!("put {remote}: commit")))?;
        progress.finish();
        let info = committed.file.ok_or_else(|| ClientError::Invalid("commit reply carries no file".into()))?;
        tracing::info!(remote = %info.path, %file, size, chunks = info.chunk_count, "upload committed");
        Ok(info)
    }

    /// Gets one chunk onto at least a write quorum of nodes. Nodes that already hold it are
    /// kept across attempts; nodes that failed are excluded from later placements.
    async fn upload_chunk(&self, source: &Path, remote: &str, file: FileId, span: ChunkSpan) -> Result<proto::ChunkInfo, ClientError> {
        let data = self.env.disk().read_at(source, span.offset, span.len).await.map_err(local(source))?;
        if data.len() as u64 != span.len {
            return Err(ClientError::Local {
                path: source.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "file shrank during upload"),
            });
        }
        let sha256 = Sha256Digest::of(&data);
        let id = ChunkId::derive(file, span.index);
        let chunk_error = |reason: String| ClientError::Chunk { path: remote.to_string(), index: span.index, reason };

        let mut holders: BTreeSet<u64> = BTreeSet::new();
        let mut failed: BTreeSet<u64> = BTreeSet::new();
        let mut last_error = String::from("no attempt made");
        for attempt in 1..=self.config.chunk_attempts {
            let exclude: Vec<u64> = holders.union(&failed).copied().collect();
            // The metadata client already waits out leader changes and a lack of live
            // storage nodes, up to its deadline: an error here is final for this upload.
            let placement = self
                .meta
                .call(proto::AllocateChunksRequest { file_id: file.0, chunk_indexes: vec![span.index], exclude })
                .await
                .map_err(|e| ClientError::Metadata { context: format!("put {remote}: placing chunk {}", span.index), source: e })?;
            let quorum = placement.write_quorum as usize;
            let targets = placement.placements.into_iter().next().map(|p| p.targets).unwrap_or_default();
            let wanted = (self.config.replication as usize).saturating_sub(holders.len());
            let mut targets: Vec<proto::StorageNode> = targets.into_iter().take(wanted).collect();
            if targets.is_empty() {
                last_error = "metadata offered no storage node".into();
                continue;
            }
            let primary = targets.remove(0);
            let upload = ChunkUpload {
                header: proto::WriteChunkHeader {
                    chunk_id: Bytes::copy_from_slice(id.as_bytes()),
                    size: span.len,
                    sha256: Bytes::copy_from_slice(&sha256.0),
                    forward_to: targets,
                },
                data: data.clone(),
            };
            let sent = call_with_timeout(
                self.env.clock(),
                self.config.transfer_timeout,
                &primary.addr,
                self.env.transport().write_chunk(&primary.addr, ChunkService::Storage, upload),
            )
            .await;
            match sent {
                Ok(reply) => {
                    holders.extend(reply.stored_on.iter().copied());
                    for f in &reply.failures {
                        if let Some(n) = &f.node {
                            failed.insert(n.id);
                            last_error = format!("replica on {}: {}", n.addr, f.error);
                        }
                    }
                }
                Err(e) => {
                    failed.insert(primary.id);
                    last_error = format!("primary {}: {e}", primary.addr);
                }
            }
            if holders.len() >= quorum.max(1) {
                return Ok(proto::ChunkInfo {
                    index: span.index,
                    size: span.len,
                    sha256: Bytes::copy_from_slice(&sha256.0),
                    replicas: holders.into_iter().collect(),
                });
            }
            tracing::debug!(chunk = span.index, attempt, holders = holders.len(), quorum, error = %last_error, "chunk below write quorum; retrying");
        }
        Err(chunk_error(format!(
            "not stored on a write quorum after {} attempts; last error: {last_error}",
            self.config.chunk_attempts
        )))
    }

    // ---- download ----------------------------------------------------------------------

    /// Downloads `remote` into the local file `dest`, replacing it atomically.
    pub async fn get(&self, remote: &str, dest: &Path, progress: &dyn Progress) -> Result<proto::FileInfo, ClientError> {
        let reply = self
            .meta
            .call(proto::GetFileRequest { path: remote.to_string() })
            .await
            .map_err(metadata(format!("get {remote}")))?;
        let info = reply.file.ok_or_else(|| ClientError::Invalid("get reply carries no file".into()))?;
        let mut chunks = reply.chunks;
        chunks.sort_by_key(|c| c.index);
        let tiled = chunks.iter().enumerate().all(|(i, c)| c.index as usize == i)
            && chunks.iter().map(|c| c.size).sum::<u64>() == info.size;
        if !tiled {
            return Err(ClientError::Invalid(format!("{remote}: metadata's chunk list does not add up to the file")));
        }

        let disk = self.env.disk();
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "download".into());
        let tmp = dest.with_file_name(format!(".{name}.dfs-part-{:016x}", self.env.random_u64()));
        disk.write_file(&tmp, Bytes::new()).await.map_err(local(&tmp))?;
        progress.start(info.size);
        let fetched = self.fetch_all(remote, &info, chunks, &tmp, progress).await;
        let finished = match fetched {
            Ok(()) => self.finish_download(&tmp, dest).await,
            Err(e) => Err(e),
        };
        if let Err(e) = finished {
            let _ = disk.remove_file(&tmp).await;
            return Err(e);
        }
        progress.finish();
        Ok(info)
    }

    async fn fetch_all(
        &self,
        remote: &str,
        info: &proto::FileInfo,
        chunks: Vec<proto::ChunkLocation>,
        tmp: &Path,
        progress: &dyn Progress,
    ) -> Result<(), ClientError> {
        let chunk_size = info.chunk_size;
        stream::iter(chunks)
            .map(|chunk| async move {
                let data = self.fetch_chunk(remote, &chunk).await?;
                let offset = chunk.index as u64 * chunk_size;
                self.env.disk().write_at(tmp, offset, data).await.map_err(local(tmp))?;
                progress.advance(chunk.size);
                Ok::<_, ClientError>(())
            })
            .buffer_unordered(self.config.parallelism.max(1))
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn finish_download(&self, tmp: &Path, dest: &Path) -> Result<(), ClientError> {
        let disk = self.env.disk();
        disk.sync_file(tmp).await.map_err(local(tmp))?;
        disk.rename(tmp, dest).await.map_err(local(dest))?;
        let dir = match dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        disk.sync_dir(dir).await.map_err(local(dir))?;
        Ok(())
    }

    /// Tries the replicas in metadata's order (live nodes first, rotated per chunk to spread
    /// load) until one returns bytes matching the recorded checksum.
    async fn fetch_chunk(&self, remote: &str, chunk: &proto::ChunkLocation) -> Result<Bytes, ClientError> {
        let expected = Sha256Digest::from_slice(&chunk.sha256);
        let mut errors = Vec::new();
        for replica in &chunk.replicas {
            let request = proto::ReadChunkRequest { chunk_id: chunk.chunk_id.clone() };
            let transfer = self.env.transport().read_chunk(&replica.addr, request);
            match call_with_timeout(self.env.clock(), self.config.transfer_timeout, &replica.addr, transfer).await {
                Ok(download) => {
                    let got = Sha256Digest::of(&download.data);
                    if download.data.len() as u64 == chunk.size && Some(got) == expected {
                        return Ok(download.data);
                    }
                    tracing::warn!(chunk = chunk.index, replica = %replica.addr, "replica returned bytes that do not match the checksum");
                    errors.push(format!("{}: checksum mismatch", replica.addr));
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        if chunk.replicas.is_empty() {
            errors.push("no replica recorded".into());
        }
        Err(ClientError::Chunk { path: remote.to_string(), index: chunk.index, reason: format!("no replica served it: {}", errors.join("; ")) })
    }

    // ---- namespace ---------------------------------------------------------------------

    /// Every file at or under `prefix` (a directory, a file, or "/" for all), in path order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<proto::FileInfo>, ClientError> {
        let mut files = Vec::new();
        let mut start_after = String::new();
        loop {
            let page = self
                .meta
                .call(proto::ListFilesRequest { prefix: prefix.to_string(), start_after: start_after.clone(), limit: 0 })
                .await
                .map_err(metadata(format!("ls {prefix}")))?;
            let last = page.files.last().map(|f| f.path.clone());
            files.extend(page.files);
            match (page.truncated, last) {
                (true, Some(last)) => start_after = last,
                _ => return Ok(files),
            }
        }
    }

    pub async fn stat(&self, remote: &str) -> Result<proto::GetFileResponse, ClientError> {
        self.meta
            .call(proto::GetFileRequest { path: remote.to_string() })
            .await
            .map_err(metadata(format!("stat {remote}")))
    }

    /// Creates the directory `remote`; with `parents`, its missing ancestors too, and an
    /// existing directory is fine.
    pub async fn mkdir(&self, remote: &str, parents: bool) -> Result<(), ClientError> {
        self.meta
            .call(proto::MkdirRequest { path: remote.to_string(), parents, request_id: Some(self.next_request_id()) })
            .await
            .map_err(metadata(format!("mkdir {remote}")))?;
        Ok(())
    }

    /// Moves the file or directory `src` to `dst`, which must not exist. The request carries
    /// an id: a retry after a lost reply gets the first attempt's answer.
    pub async fn rename(&self, src: &str, dst: &str) -> Result<(), ClientError> {
        let request = proto::RenameRequest { src: src.to_string(), dst: dst.to_string(), request_id: Some(self.next_request_id()) };
        self.meta.call(request).await.map_err(metadata(format!("mv {src} {dst}")))?;
        Ok(())
    }

    /// A fresh id for a request that changes the namespace (see `Command::Once`).
    fn next_request_id(&self) -> proto::RequestId {
        proto::RequestId { client: self.client_id, seq: self.request_seq.fetch_add(1, Ordering::Relaxed) + 1 }
    }

    /// What `remote` names: a file's entry, a directory's (name, path and kind only), or
    /// `None` if nothing. One page of one entry, however large the directory.
    pub async fn entry(&self, remote: &str) -> Result<Option<proto::DirEntry>, ClientError> {
        let path = normalize_path(remote).map_err(|e| ClientError::Invalid(e.to_string()))?;
        let request = proto::ListDirRequest { path: path.clone(), recursive: false, start_after: String::new(), limit: 1 };
        match self.meta.call(request).await {
            Ok(page) => {
                // A file lists as itself; a directory lists its children, whose paths are longer.
                let file = page.entries.into_iter().next().filter(|e| e.path == path && e.kind == proto::EntryKind::File as i32);
                Ok(Some(file.unwrap_or_else(|| proto::DirEntry {
                    name: path.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or("/").to_string(),
                    path,
                    kind: proto::EntryKind::Directory as i32,
                    ..Default::default()
                })))
            }
            Err(RpcError::NotFound(_)) => Ok(None),
            Err(e) => Err(ClientError::Metadata { context: format!("stat {remote}"), source: e }),
        }
    }

    /// Deletes the file or directory `remote`; a directory that is not empty only with
    /// `recursive`. A file is deleted only if it is still the one looked at first, so a retry
    /// after a lost reply never deletes a newer file at the same path; finding it gone then
    /// counts as success, since it was there when this call began.
    pub async fn delete(&self, remote: &str, recursive: bool) -> Result<Deleted, ClientError> {
        let context = format!("rm {remote}");
        let Some(existing) = self.entry(remote).await? else {
            let path = normalize_path(remote).map_err(|e| ClientError::Invalid(e.to_string()))?;
            return Err(ClientError::Metadata { context, source: RpcError::NotFound(format!("{path}: no such file or directory")) });
        };
        let expect_file_id = existing.file.as_ref().map(|f| f.file_id);
        // The request id makes a retry (first reply lost) get the first attempt's answer, so
        // "no such file" here means someone else removed it first.
        let request = proto::DeleteFileRequest { path: existing.path.clone(), recursive, expect_file_id, request_id: Some(self.next_request_id()) };
        let reply = self.meta.call(request).await.map_err(|source| ClientError::Metadata { context, source })?;
        Ok(Deleted { path: existing.path, file: reply.file, files_deleted: reply.files_deleted, dirs_deleted: reply.dirs_deleted })
    }

    /// The entries directly under the directory `remote` (or the file itself), by name; with
    /// `recursive`, everything under it, by full path. Reads page after page.
    pub async fn list_dir(&self, remote: &str, recursive: bool) -> Result<Vec<proto::DirEntry>, ClientError> {
        let mut entries = Vec::new();
        let mut start_after = String::new();
        loop {
            let page = self
                .meta
                .call(proto::ListDirRequest { path: remote.to_string(), recursive, start_after: start_after.clone(), limit: 0 })
                .await
                .map_err(metadata(format!("ls {remote}")))?;
            let last = page.entries.last().map(|e| if recursive { e.path.clone() } else { e.name.clone() });
            entries.extend(page.entries);
            match (page.truncated, last) {
                (true, Some(last)) => start_after = last,
                _ => return Ok(entries),
            }
        }
    }

    pub async fn status(&self) -> Result<proto::ClusterStatusResponse, ClientError> {
        self.meta.call(proto::ClusterStatusRequest {}).await.map_err(metadata("status"))
    }
}

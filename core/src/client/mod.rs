//! The dfs client: uploads and downloads whole files, chunk by chunk, in parallel, verifying
//! every byte; and the namespace operations (list, mkdir, rename, delete, status).
//!
//! Writes are safe to retry: every `CreateFile` carries a request id (a random client id and
//! a counter), so a create retried after a lost reply returns the upload the first attempt
//! made; a delete of a file names the file id it saw, so a retry never removes a newer file
//! put at the same path meanwhile.
//!
//! Uploads and downloads are decided by pure state machines (`upload`, `download`, each
//! tested without a runtime) and carried out by `driver`. Upload: create the file at metadata
//! (with placements for the first chunks), read the source in order, send each chunk to its
//! primary, which stores it and fans it out, until a write quorum holds it; commit with the
//! last chunk records and the whole file's SHA-256. Only the commit makes the file visible,
//! so an interrupted upload never leaves a partial file behind; with a resume directory, a
//! rerun sends only what is missing (`resume`). Download: fetch chunks from their replicas
//! (failing over, reporting bad ones), write them in order to a temporary file, check the
//! whole file's SHA-256, then fsync and rename it into place: the destination is either
//! untouched or complete.

pub mod admin;
pub mod chunk_batch;
pub mod download;
mod driver;
pub mod meta_batch;

pub mod resume;
pub mod stream_source;
pub mod tree;
pub mod tree_resume;
pub mod upload;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::chunking;
use crate::env::Env;
pub use crate::meta_client::{MetaClient, RetryPolicy};
use crate::namespace::normalize_path;
use crate::proto;
use crate::rpc::RpcError;
pub use meta_batch::BatchLimits;

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
    /// Where resume manifests of interrupted uploads live; `None`: uploads never resume.
    pub resume_dir: Option<PathBuf>,
    /// How concurrent creates, commits and lookups of files share batch calls (`meta_batch`).
    pub metadata_batch: BatchLimits,
    /// Whether chunks of at most `SMALL_CHUNK_BYTES_MAX` bytes travel in batches to and from a
    /// node (`chunk_batch`) rather than one stream each.
    pub small_chunk_batches: bool,
    /// Who deletes: what this client deletes goes to `/.trash/<user>/` (when the cluster keeps
    /// a trash).
    pub user: String,
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
            resume_dir: None,
            metadata_batch: BatchLimits::default(),
            small_chunk_batches: true,
            user: String::new(),
        }
    }
}

/// Chunk records sent to metadata per `RecordChunks` call.
const RECORD_BATCH_CHUNKS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Displays the path only, like every variant with a `source`: the cause follows as the
    /// error's source (`{:#}` prints the chain once; a message repeating it would say it twice).
    #[error("{}", path.display())]
    Local { path: PathBuf, source: std::io::Error },
    /// Displays only the context: the metadata error follows as the error's source.
    #[error("{context}")]
    Metadata { context: String, source: RpcError },
    #[error("chunk {index} of {path}: {reason}")]
    Chunk { path: String, index: u32, reason: String },
    #[error("put {path}")]
    Upload {
        path: String,
        source: upload::UploadError,
        /// The upload was resuming an interrupted one.
        resumed: bool,
    },
    #[error("{verb} {path}")]
    Download {
        /// The command that downloads: "get", "cat".
        verb: String,
        path: String,
        source: download::DownloadError,
    },
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
    /// A line for the user ("resuming: 37 of 50 chunks already stored").
    fn message(&self, _line: &str) {}
}

/// Reports nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

pub struct DfsClient<E: Env> {
    env: E,
    meta: MetaClient<E>,
    /// Batch the metadata calls of many files in flight at once (see `meta_batch`).
    creates: meta_batch::Coalescer<E, meta_batch::Creates>,
    commits: meta_batch::Coalescer<E, meta_batch::Commits>,
    gets: meta_batch::Coalescer<E, meta_batch::Gets>,
    /// Batch small chunks in flight to one storage node (see `chunk_batch`).
    chunk_batches: chunk_batch::ChunkBatches<E>,
    meta_addrs: Vec<String>,
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
    /// Where it was moved, when it went to the trash rather than away for good.
    pub trashed_to: Option<String>,
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
        let meta = MetaClient::new(env.clone(), meta_addrs.clone(), config.metadata.clone());
        let client_id = env.random_u64();
        let batch = config.metadata_batch;
        DfsClient {
            creates: meta_batch::Coalescer::new(meta.clone(), batch),
            commits: meta_batch::Coalescer::new(meta.clone(), batch),
            gets: meta_batch::Coalescer::new(meta.clone(), batch),
            chunk_batches: chunk_batch::ChunkBatches::new(env.clone(), config.transfer_timeout),
            env,
            meta,
            meta_addrs,
            config,
            client_id,
            request_seq: AtomicU64::new(0),
        }
    }

    /// The metadata addresses this client was given (they name the cluster in resume
    /// manifests).
    pub fn meta_addrs(&self) -> &[String] {
        &self.meta_addrs
    }

    fn upload_config(&self) -> upload::UploadConfig {
        upload::UploadConfig {
            chunks_in_flight_max: self.config.parallelism.max(1),
            chunk_attempts_max: self.config.chunk_attempts.max(1),
            record_batch_chunks: RECORD_BATCH_CHUNKS,
            ..upload::UploadConfig::default()
        }
    }

    fn download_config(&self) -> download::DownloadConfig {
        download::DownloadConfig { chunks_in_flight_max: self.config.parallelism.max(1), ..download::DownloadConfig::default() }
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
        self.meta.call(proto::GetFileRequest { path: remote.to_string() }).await.map_err(metadata(format!("stat {remote}")))
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
    /// It goes to the user's trash when the cluster keeps one; `delete_now` skips it.
    pub async fn delete(&self, remote: &str, recursive: bool) -> Result<Deleted, ClientError> {
        self.delete_with(remote, recursive, false).await
    }

    /// `delete`, never through the trash.
    pub async fn delete_now(&self, remote: &str, recursive: bool) -> Result<Deleted, ClientError> {
        self.delete_with(remote, recursive, true).await
    }

    async fn delete_with(&self, remote: &str, recursive: bool, skip_trash: bool) -> Result<Deleted, ClientError> {
        let context = format!("rm {remote}");
        let Some(existing) = self.entry(remote).await? else {
            let path = normalize_path(remote).map_err(|e| ClientError::Invalid(e.to_string()))?;
            return Err(ClientError::Metadata { context, source: RpcError::NotFound(format!("{path}: no such file or directory")) });
        };
        let expect_file_id = existing.file.as_ref().map(|f| f.file_id);
        // The request id makes a retry (first reply lost) get the first attempt's answer, so
        // "no such file" here means someone else removed it first.
        let request = proto::DeleteFileRequest {
            path: existing.path.clone(),
            recursive,
            expect_file_id,
            request_id: Some(self.next_request_id()),
            skip_trash,
            user: self.config.user.clone(),
        };
        let reply = self.meta.call(request).await.map_err(|source| ClientError::Metadata { context, source })?;
        let trashed_to = Some(reply.trashed_to).filter(|t| !t.is_empty());
        Ok(Deleted { path: existing.path, file: reply.file, files_deleted: reply.files_deleted, dirs_deleted: reply.dirs_deleted, trashed_to })
    }

    /// A new file at `dst` with `src`'s content, sharing its chunks (no byte moves).
    pub async fn copy(&self, src: &str, dst: &str, overwrite: bool) -> Result<proto::FileInfo, ClientError> {
        self.copy_joined(&[src.to_string()], dst, overwrite, None).await
    }

    /// A new file at `dst` with the content of `sources` one after the other, sharing their
    /// chunks (no byte moves; joined files need standalone chunk checksums, see
    /// `put_stream`), and `object` as what the S3 gateway keeps of it, if given (a single
    /// source's is kept otherwise).
    pub async fn copy_joined(&self, sources: &[String], dst: &str, overwrite: bool, object: Option<proto::ObjectMeta>) -> Result<proto::FileInfo, ClientError> {
        let (src, append) = sources.split_first().ok_or_else(|| ClientError::Invalid("a copy needs a source".into()))?;
        let request = proto::CopyFileRequest {
            src: src.clone(),
            dst: dst.to_string(),
            overwrite,
            request_id: Some(self.next_request_id()),
            append: append.to_vec(),
            object,
        };
        let reply = self.meta.call(request).await.map_err(metadata(format!("cp {src} {dst}")))?;
        reply.file.ok_or_else(|| ClientError::Invalid("the copy's reply names no file".into()))
    }

    /// Sets the replication factor of a file, or of every file under a directory; returns how
    /// many files.
    pub async fn set_replication(&self, remote: &str, replication: u32) -> Result<u64, ClientError> {
        let request = proto::SetReplicationRequest { path: remote.to_string(), replication, request_id: Some(self.next_request_id()) };
        Ok(self.meta.call(request).await.map_err(metadata(format!("setrep {replication} {remote}")))?.files)
    }

    /// Sets a file's kept mode and modification time (those given), or a directory's time.
    pub async fn set_attributes(&self, remote: &str, mode: Option<u32>, mtime_unix_ms: Option<u64>) -> Result<(), ClientError> {
        let request = proto::SetAttributesRequest { path: remote.to_string(), mode, mtime_unix_ms, request_id: Some(self.next_request_id()) };
        self.meta.call(request).await.map_err(metadata(format!("touch {remote}")))?;
        Ok(())
    }

    /// Uploads not committed (yet), oldest first, at or under `prefix` (empty: all).
    pub async fn uploads(&self, prefix: &str) -> Result<proto::ListUploadsResponse, ClientError> {
        self.meta.call(proto::ListUploadsRequest { prefix: prefix.to_string() }).await.map_err(metadata("uploads"))
    }

    /// Drops an upload that was never committed; its stored chunks are deleted.
    pub async fn abort_upload(&self, file_id: u64) -> Result<(), ClientError> {
        let request = proto::AbortUploadRequest { file_id, request_id: Some(self.next_request_id()) };
        self.meta.call(request).await.map_err(metadata(format!("uploads --abort {file_id}")))?;
        Ok(())
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

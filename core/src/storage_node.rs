//! A storage node: keeps chunks on its disk, serves them verified, forwards new chunks to the
//! other replicas, and heartbeats to the metadata leader, carrying out the deletions that come
//! back on the replies.
//!
//! Start-up (`open`) reads the node id (or makes one), removes unfinished temporary files and
//! rebuilds the chunk table from the chunk files' headers. Writes follow
//! `chunk_store::write_steps`; reads check every byte against the checksum before serving it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;

use crate::chunk_store::{self, ChunkLayout, ChunkMeta, ChunkStoreError, ChunkTable, DiskStep, WriteDecision};
use crate::client::meta_client::{MetaClient, RetryPolicy};
use crate::env::{call_with_timeout, Clock, Disk, Env, Transport};
use crate::ids::{ChunkId, Sha256Digest, StorageNodeId};
use crate::proto;
use crate::rpc::{ChunkDownload, ChunkHandler, ChunkService, ChunkUpload, RpcError};

const NODE_ID_FILE: &str = "node_id";
/// The cluster this node joined, written when it first registers.
const CLUSTER_ID_FILE: &str = "cluster_id";

#[derive(Clone, Debug)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    /// The address other nodes and clients reach this node at.
    pub advertise_addr: String,
    pub meta_addrs: Vec<String>,
    pub heartbeat_interval: Duration,
    /// Limit on one replication to a peer.
    pub replication_timeout: Duration,
}

impl StorageConfig {
    pub fn new(data_dir: impl Into<PathBuf>, advertise_addr: impl Into<String>, meta_addrs: Vec<String>) -> Self {
        StorageConfig {
            data_dir: data_dir.into(),
            advertise_addr: advertise_addr.into(),
            meta_addrs,
            heartbeat_interval: Duration::from_secs(3),
            replication_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageOpenError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a storage node id ({content:?})")]
    BadNodeId { path: PathBuf, content: String },
    #[error("no metadata addresses given")]
    NoMetadata,
}

pub struct StorageNode<E: Env> {
    env: E,
    id: StorageNodeId,
    config: StorageConfig,
    layout: ChunkLayout,
    table: Mutex<ChunkTable>,
    meta: MetaClient<E>,
    /// Deleted on request, not yet reported to metadata.
    deleted_unreported: Mutex<Vec<ChunkId>>,
    /// The cluster this node belongs to, once it has registered with one.
    cluster_id: Mutex<Option<String>>,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StorageOpenError + '_ {
    move |source| StorageOpenError::Io { path: path.to_path_buf(), source }
}

impl<E: Env> StorageNode<E> {
    pub async fn open(env: E, config: StorageConfig) -> Result<Arc<Self>, StorageOpenError> {
        if config.meta_addrs.is_empty() {
            return Err(StorageOpenError::NoMetadata);
        }
        let disk = env.disk().clone();
        let root = config.data_dir.clone();
        disk.create_dir_all(&root).await.map_err(io_error(&root))?;
        let id = Self::load_or_create_id(&env, &root).await?;
        let cluster_path = root.join(CLUSTER_ID_FILE);
        let cluster_id = match disk.read_file(&cluster_path).await {
            Ok(bytes) => Some(String::from_utf8_lossy(&bytes).trim().to_string()).filter(|c| !c.is_empty()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(StorageOpenError::Io { path: cluster_path, source: e }),
        };
        let layout = ChunkLayout::new(&root);

        let tmp = layout.tmp_dir();
        for name in disk.list_dir(&tmp).await.map_err(io_error(&tmp))? {
            let path = tmp.join(&name);
            disk.remove_file(&path).await.map_err(io_error(&path))?;
        }
        let table = Self::scan_chunks(&disk, &layout).await?;
        tracing::info!(node = %id, chunks = table.stored_count(), dir = %root.display(), "storage node opened");

        let policy = RetryPolicy { deadline: Duration::from_secs(10), ..RetryPolicy::default() };
        let meta = MetaClient::new(env.clone(), config.meta_addrs.clone(), policy);
        Ok(Arc::new(StorageNode {
            env,
            id,
            config,
            layout,
            table: Mutex::new(table),
            meta,
            deleted_unreported: Mutex::default(),
            cluster_id: Mutex::new(cluster_id),
        }))
    }

    async fn load_or_create_id(env: &E, root: &Path) -> Result<StorageNodeId, StorageOpenError> {
        let disk = env.disk();
        let path = root.join(NODE_ID_FILE);
        match disk.read_file(&path).await {
            Ok(bytes) => {
                let content = String::from_utf8_lossy(&bytes).trim().to_string();
                u64::from_str_radix(&content, 16)
                    .ok()
                    .filter(|id| *id != 0)
                    .map(StorageNodeId)
                    .ok_or(StorageOpenError::BadNodeId { path, content })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = StorageNodeId(env.random_u64().max(1));
                let tmp = root.join(format!("{NODE_ID_FILE}.tmp"));
                disk.write_file(&tmp, format!("{id}\n").into()).await.map_err(io_error(&tmp))?;
                disk.sync_file(&tmp).await.map_err(io_error(&tmp))?;
                disk.rename(&tmp, &path).await.map_err(io_error(&path))?;
                disk.sync_dir(root).await.map_err(io_error(root))?;
                Ok(id)
            }
            Err(e) => Err(StorageOpenError::Io { path, source: e }),
        }
    }

    /// Rebuilds the table from chunk file headers. A file whose header is unreadable or whose
    /// length disagrees with it is left in place (never deleted: it may be all that is left of
    /// a chunk) and not served.
    async fn scan_chunks(disk: &E::Disk, layout: &ChunkLayout) -> Result<ChunkTable, StorageOpenError> {
        let mut table = ChunkTable::default();
        let chunks = layout.chunks_dir();
        for a in disk.list_dir(&chunks).await.map_err(io_error(&chunks))? {
            if !ChunkLayout::is_shard_name(&a) {
                continue;
            }
            let dir_a = chunks.join(&a);
            for b in disk.list_dir(&dir_a).await.map_err(io_error(&dir_a))? {
                if !ChunkLayout::is_shard_name(&b) {
                    continue;
                }
                let dir_b = dir_a.join(&b);
                for name in disk.list_dir(&dir_b).await.map_err(io_error(&dir_b))? {
                    let Some(id) = ChunkLayout::parse_chunk_file_name(&name) else { continue };
                    let path = dir_b.join(&name);
                    let header = disk.read_at(&path, 0, chunk_store::HEADER_BYTES as u64).await.map_err(io_error(&path))?;
                    let len = disk.file_len(&path).await.map_err(io_error(&path))?;
                    match chunk_store::decode_header(&header) {
                        Ok(meta) if len == chunk_store::HEADER_BYTES as u64 + meta.size => table.insert_stored(id, meta),
                        Ok(meta) => tracing::warn!(path = %path.display(), len, announced = meta.size, "chunk file has the wrong length; not served"),
                        Err(e) => tracing::warn!(path = %path.display(), error = %e, "unreadable chunk file; not served"),
                    }
                }
            }
        }
        Ok(table)
    }

    pub fn id(&self) -> StorageNodeId {
        self.id
    }

    pub fn chunk_count(&self) -> u64 {
        self.table.lock().expect("table lock").stored_count()
    }

    fn self_proto(&self) -> proto::StorageNode {
        proto::StorageNode { id: self.id.0, addr: self.config.advertise_addr.clone() }
    }

    /// Heartbeats forever; registers first and again whenever the leader asks.
    pub async fn run_heartbeats(self: Arc<Self>) {
        let mut registered = false;
        loop {
            if let Err(e) = self.heartbeat_once(&mut registered).await {
                tracing::warn!(node = %self.id, error = %e, "heartbeat failed");
            }
            self.env.clock().sleep(self.config.heartbeat_interval).await;
        }
    }

    async fn heartbeat_once(&self, registered: &mut bool) -> Result<(), RpcError> {
        let (capacity_bytes, free_bytes) = self
            .env
            .disk()
            .space(&self.config.data_dir)
            .await
            .map_err(|e| RpcError::Internal(format!("disk space: {e}")))?;
        let cluster_id = self.cluster_id.lock().expect("cluster lock").clone().unwrap_or_default();
        if !*registered {
            let request = proto::RegisterStorageRequest { node: Some(self.self_proto()), capacity_bytes, cluster_id: cluster_id.clone() };
            let reply = self.meta.call(request).await.inspect_err(|e| {
                if matches!(e, RpcError::FailedPrecondition(_)) {
                    tracing::error!(node = %self.id, error = %e, "the metadata cluster refuses this node");
                }
            })?;
            if cluster_id.is_empty() && !reply.cluster_id.is_empty() {
                self.remember_cluster(&reply.cluster_id).await?;
            }
            *registered = true;
        }
        let reported: Vec<ChunkId> = self.deleted_unreported.lock().expect("deleted lock").clone();
        let request = proto::HeartbeatRequest {
            node: Some(self.self_proto()),
            capacity_bytes,
            free_bytes,
            chunk_count: self.chunk_count(),
            deleted_chunks: reported.iter().map(|c| Bytes::copy_from_slice(c.as_bytes())).collect(),
            cluster_id: self.cluster_id.lock().expect("cluster lock").clone().unwrap_or_default(),
        };
        let reply = self.meta.call(request).await?;
        self.deleted_unreported.lock().expect("deleted lock").retain(|c| !reported.contains(c));
        if reply.register {
            *registered = false;
        }
        for raw in reply.delete_chunks {
            let Some(id) = ChunkId::from_slice(&raw) else { continue };
            match self.delete_chunk(id).await {
                Ok(()) => self.deleted_unreported.lock().expect("deleted lock").push(id),
                Err(e) => tracing::warn!(chunk = %id, error = %e, "delete failed; will retry when asked again"),
            }
        }
        Ok(())
    }

    /// Writes the cluster id durably (tmp, fsync, rename, fsync dir) before using it.
    async fn remember_cluster(&self, cluster_id: &str) -> Result<(), RpcError> {
        let disk = self.env.disk();
        let root = &self.config.data_dir;
        let (tmp, path) = (root.join(format!("{CLUSTER_ID_FILE}.tmp")), root.join(CLUSTER_ID_FILE));
        let written = async {
            disk.write_file(&tmp, format!("{cluster_id}\n").into()).await?;
            disk.sync_file(&tmp).await?;
            disk.rename(&tmp, &path).await?;
            disk.sync_dir(root).await
        };
        written.await.map_err(|e| RpcError::Internal(format!("{}: {e}", path.display())))?;
        tracing::info!(node = %self.id, cluster = cluster_id, "joined the cluster");
        *self.cluster_id.lock().expect("cluster lock") = Some(cluster_id.to_string());
        Ok(())
    }

    async fn delete_chunk(&self, id: ChunkId) -> std::io::Result<()> {
        let path = self.layout.chunk_path(id);
        self.table.lock().expect("table lock").remove(id);
        match self.env.disk().remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        self.env.disk().sync_dir(path.parent().expect("chunk paths have a parent")).await?;
        tracing::debug!(chunk = %id, "deleted replica");
        Ok(())
    }

    /// Verifies an incoming chunk and makes it durable here.
    async fn store_local(&self, id: ChunkId, meta: ChunkMeta, data: &Bytes) -> Result<(), RpcError> {
        let decision = self.table.lock().expect("table lock").begin_write(id, meta).map_err(|e| match e {
            ChunkStoreError::WriteInProgress(_) => RpcError::Unavailable(e.to_string()),
            _ => RpcError::FailedPrecondition(e.to_string()),
        })?;
        if decision == WriteDecision::AlreadyStored {
            return Ok(());
        }
        let nonce = self.env.random_u64();
        let result = self.run_steps(chunk_store::write_steps(&self.layout, id, nonce, meta, data)).await;
        if let Err(e) = result {
            self.table.lock().expect("table lock").abort_write(id);
            let _ = self.env.disk().remove_file(&self.layout.tmp_path(id, nonce)).await;
            return Err(RpcError::Internal(format!("writing chunk {id}: {e}")));
        }
        self.table.lock().expect("table lock").finish_write(id);
        Ok(())
    }

    async fn run_steps(&self, steps: Vec<DiskStep>) -> std::io::Result<()> {
        let disk = self.env.disk();
        for step in steps {
            match step {
                DiskStep::CreateDir(dir) => disk.create_dir_all(&dir).await?,
                DiskStep::WriteFile { path, data } => disk.write_file(&path, data).await?,
                DiskStep::SyncFile(path) => disk.sync_file(&path).await?,
                DiskStep::Rename { from, to } => disk.rename(&from, &to).await?,
                DiskStep::SyncDir(dir) => disk.sync_dir(&dir).await?,
            }
        }
        Ok(())
    }

    /// Sends the chunk to each peer in parallel; returns who stored it and who did not.
    async fn forward(&self, upload: &ChunkUpload, peers: Vec<proto::StorageNode>) -> (Vec<u64>, Vec<proto::ReplicaFailure>) {
        let sends = peers.into_iter().filter(|p| p.id != self.id.0).map(|peer| {
            let copy = ChunkUpload {
                header: proto::WriteChunkHeader { forward_to: vec![], ..upload.header.clone() },
                data: upload.data.clone(),
            };
            async move {
                let send = self.env.transport().write_chunk(&peer.addr, ChunkService::Replication, copy);
                match call_with_timeout(self.env.clock(), self.config.replication_timeout, &peer.addr, send).await {
                    Ok(reply) if reply.stored_on.contains(&peer.id) => Ok(peer.id),
                    Ok(_) => Err(proto::ReplicaFailure { node: Some(peer), error: "peer did not confirm the write".into() }),
                    Err(e) => Err(proto::ReplicaFailure { node: Some(peer), error: e.to_string() }),
                }
            }
        });
        let mut stored = Vec::new();
        let mut failures = Vec::new();
        for result in join_all(sends).await {
            match result {
                Ok(id) => stored.push(id),
                Err(f) => failures.push(f),
            }
        }
        (stored, failures)
    }
}

/// Checks that a received chunk is what its header says.
fn verify_upload(upload: &ChunkUpload) -> Result<(ChunkId, ChunkMeta), RpcError> {
    let h = &upload.header;
    let id = ChunkId::from_slice(&h.chunk_id).ok_or_else(|| RpcError::InvalidArgument("chunk id must be 16 bytes".into()))?;
    let sha256 = Sha256Digest::from_slice(&h.sha256).ok_or_else(|| RpcError::InvalidArgument("sha256 must be 32 bytes".into()))?;
    if upload.data.len() as u64 != h.size {
        return Err(RpcError::InvalidArgument(format!("chunk {id}: {} bytes received, {} announced", upload.data.len(), h.size)));
    }
    if Sha256Digest::of(&upload.data) != sha256 {
        return Err(RpcError::ChecksumMismatch(format!("chunk {id} arrived damaged")));
    }
    Ok((id, ChunkMeta { size: h.size, sha256 }))
}

impl<E: Env> ChunkHandler for StorageNode<E> {
    async fn write_chunk(&self, service: ChunkService, upload: ChunkUpload) -> Result<proto::WriteChunkResponse, RpcError> {
        let (id, meta) = verify_upload(&upload)?;
        self.store_local(id, meta, &upload.data).await?;
        let peers = match service {
            ChunkService::Storage => upload.header.forward_to.clone(),
            // A replica never forwards: the fan-out is the primary's alone.
            ChunkService::Replication => vec![],
        };
        let (replicated, failures) = self.forward(&upload, peers).await;
        let mut stored_on = vec![self.id.0];
        stored_on.extend(replicated);
        tracing::debug!(chunk = %id, ?service, stored = stored_on.len(), failed = failures.len(), "chunk written");
        Ok(proto::WriteChunkResponse { stored_on, failures })
    }

    async fn read_chunk(&self, request: proto::ReadChunkRequest) -> Result<ChunkDownload, RpcError> {
        let id = ChunkId::from_slice(&request.chunk_id).ok_or_else(|| RpcError::InvalidArgument("chunk id must be 16 bytes".into()))?;
        let expected = self.table.lock().expect("table lock").stored(id).map_err(|e| RpcError::NotFound(e.to_string()))?;
        let path = self.layout.chunk_path(id);
        let file = self
            .env
            .disk()
            .read_file(&path)
            .await
            .map_err(|e| RpcError::Internal(format!("reading chunk {id}: {e}")))?;
        match chunk_store::decode_file(file) {
            Ok((meta, data)) if meta == expected => Ok(ChunkDownload {
                header: proto::ReadChunkHeader { size: meta.size, sha256: meta.sha256.0.to_vec().into() },
                data,
            }),
            Ok(_) => Err(RpcError::ChecksumMismatch(format!("chunk {id}: file header changed on disk"))),
            Err(e) => {
                tracing::error!(chunk = %id, error = %e, "stored replica is corrupt; not served");
                Err(RpcError::ChecksumMismatch(format!("chunk {id} on node {}: {e}", self.id)))
            }
        }
    }
}

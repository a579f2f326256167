//! What a storage node answers on the wire: chunk streams in (stored here and fanned out to
//! the replicas, `fan_out` deciding the answer) and out (read in verified frames), and the
//! stream slots that bound them.

use super::*;
use crate::chain::Chain;

/// Slots for concurrent chunk streams: a pool of tokens in a bounded channel, so waiting is
/// fair (first come, first served) and cancellable, with no runtime of its own.
pub(super) struct StreamSlots {
    give: async_channel::Sender<()>,
    take: async_channel::Receiver<()>,
    max: usize,
}

/// A held slot; dropping it (the stream ended, or its future was dropped) gives it back.
pub(super) struct StreamSlot(async_channel::Sender<()>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        // Never full: there are as many tokens as places in the channel.
        let _ = self.0.try_send(());
    }
}

impl StreamSlots {
    pub(super) fn new(max: usize) -> Self {
        let max = max.max(1);
        let (give, take) = async_channel::bounded(max);
        for _ in 0..max {
            give.try_send(()).expect("a place for every slot");
        }
        StreamSlots { give, take, max }
    }

    pub(super) async fn acquire<C: Clock>(&self, clock: &C, wait: Duration) -> Result<StreamSlot, RpcError> {
        match with_timeout(clock, wait, self.take.recv()).await {
            Ok(Ok(())) => Ok(StreamSlot(self.give.clone())),
            Ok(Err(_)) => Err(RpcError::Internal("stream slots closed".into())),
            Err(_) => Err(RpcError::Unavailable(format!("busy: {} chunk streams in progress, none ended within {wait:?}", self.max))),
        }
    }
}

/// Chunks up to this size are hashed on the calling task: sending them to a blocking thread
/// costs more than hashing them (a few microseconds).
const HASH_INLINE_BYTES_MAX: usize = 16 * 1024;

/// What a received chunk's header says it is, checked for shape (not yet its bytes).
pub(super) fn upload_meta(upload: &ChunkUpload) -> Result<(ChunkId, ChunkMeta), RpcError> {
    let h = &upload.header;
    let id = ChunkId::from_slice(&h.chunk_id).ok_or_else(|| RpcError::InvalidArgument("chunk id must be 16 bytes".into()))?;
    let sha256 = Sha256Digest::from_slice(&h.sha256).ok_or_else(|| RpcError::InvalidArgument("sha256 must be 32 bytes".into()))?;
    if upload.data.len() as u64 != h.size {
        return Err(RpcError::InvalidArgument(format!("chunk {id}: {} bytes received, {} announced", upload.data.len(), h.size)));
    }
    let chain = Chain::from_proto_opt(h.chain.as_ref()).map_err(|e| RpcError::InvalidArgument(format!("chunk {id}: {e}")))?;
    if chain.is_some_and(|c| !c.last && !h.size.is_multiple_of(crate::chain::BLOCK_BYTES)) {
        return Err(RpcError::InvalidArgument(format!("chunk {id}: a chained chunk that is not a file's last must be whole SHA-256 blocks")));
    }
    Ok((id, ChunkMeta { size: h.size, sha256, chain }))
}

/// The checksums of `datas`, each computed as its chain says, through `env.compute` when there
/// is more than a few KiB of them (off the executor thread in production, as repair's checks
/// are).
pub(super) async fn checksums<E: Env>(env: &E, datas: Vec<(Bytes, Option<Chain>)>) -> Vec<Sha256Digest> {
    let inline = datas.iter().map(|(d, _)| d.len()).sum::<usize>() <= HASH_INLINE_BYTES_MAX;
    let sums = move || datas.iter().map(|(d, c)| crate::chain::checksum(d, c.as_ref())).collect();
    if inline {
        return sums();
    }
    env.compute(sums).await
}

/// Checks that a received chunk is what its header says, its bytes included.
async fn verify_upload<E: Env>(env: &E, upload: &ChunkUpload) -> Result<(ChunkId, ChunkMeta), RpcError> {
    let (id, meta) = upload_meta(upload)?;
    if checksums(env, vec![(upload.data.clone(), meta.chain)]).await[0] != meta.sha256 {
        return Err(RpcError::ChecksumMismatch(format!("chunk {id} arrived damaged")));
    }
    Ok((id, meta))
}

/// A read in progress: the file, the checks, and the slot it holds until it ends.
struct ReadState<E: Env> {
    id: ChunkId,
    disk: E::Disk,
    path: PathBuf,
    reader: FrameReader,
    header: Option<proto::ReadChunkHeader>,
    quarantine: Quarantine<E>,
    /// Frames are read as bulk data, bypassing the page cache where the disk can: a large chunk
    /// (`bulk_buf::is_bulk`) read by scrub.
    bulk: bool,
    ended: bool,
    _slot: StreamSlot,
}

impl<E: Env> ReadState<E> {
    /// The next verified frame, the error that ends the stream, or `None` after the last.
    async fn next(&mut self) -> Option<Result<proto::ReadChunkFrame, RpcError>> {
        if self.ended {
            return None;
        }
        let (offset, len) = self.reader.next_read()?;
        let read = if self.bulk { self.disk.read_bulk_at(&self.path, offset, len).await } else { self.disk.read_at(&self.path, offset, len).await };
        let result = match read {
            Err(e) => Err(RpcError::Internal(format!("node {}: reading chunk {}: {e}", self.quarantine.node, self.id))),
            Ok(data) => match self.reader.accept(&data) {
                Ok(()) => return Some(Ok(proto::ReadChunkFrame { header: self.header.take(), data })),
                Err(e) => {
                    self.quarantine.run(self.id, e.to_string()).await;
                    Err(RpcError::ChecksumMismatch(format!("chunk {} on node {}: {e}", self.id, self.quarantine.node)))
                }
            },
        };
        self.ended = true;
        Some(result)
    }
}

impl<E: Env> StorageNode<E> {
    /// Keeps the chunk keys a registration or heartbeat reply carried (none: a leader of an
    /// earlier version, or one that has not made a key yet; the node keeps what it had).
    pub(super) fn learn_chunk_keys(&self, keys: &[proto::ChunkKey]) {
        if !keys.is_empty() {
            *self.chunk_keys.lock().expect("chunk keys lock") = ChunkKeys::from_proto(keys);
        }
    }

    /// Whether `token` lets the caller `op` chunk `id` (`crate::chunk_tokens`). A token under
    /// a key this node has not heard of yet is the world's fault, retryable (its next
    /// heartbeat brings the key); any other refusal is the caller's.
    pub(super) fn check_chunk_token(&self, id: ChunkId, token: Option<&proto::ChunkToken>, op: ChunkOp) -> Result<(), RpcError> {
        if !self.config.chunk_tokens {
            return Ok(());
        }
        let checked = self.chunk_keys.lock().expect("chunk keys lock").check(token, id, op, self.env.clock().unix_ms());
        checked.map_err(|e| match e {
            ChunkTokenError::NoKeys | ChunkTokenError::UnknownKey { .. } => RpcError::Unavailable(format!("node {}: {e}", self.id)),
            e => {
                tracing::warn!(node = %self.id, chunk = %id, "refused: {e}");
                RpcError::PermissionDenied(format!("node {}: {e}", self.id))
            }
        })
    }
}

impl<E: Env> ChunkHandler for StorageNode<E> {
    async fn write_chunk(&self, service: ChunkService, mut frames: FrameStream<proto::WriteChunkFrame>) -> Result<proto::WriteChunkResponse, RpcError> {
        let slots = match service {
            ChunkService::Storage => &self.client_slots,
            ChunkService::Replication => &self.replication_slots,
        };
        let _slot = slots.acquire(self.env.clock(), self.config.chunk_stream_wait).await?;
        let first = self.next_frame(&mut frames).await?.ok_or_else(|| RpcError::InvalidArgument("a chunk stream with no frame".into()))?;
        let header = first.header.clone().ok_or_else(|| RpcError::InvalidArgument("the first frame of a chunk carries no header".into()))?;
        let id = ChunkId::from_slice(&header.chunk_id).ok_or_else(|| RpcError::InvalidArgument("chunk id must be 16 bytes".into()))?;
        // A primary's forward carries the client's token with the header: replicas check it too.
        self.check_chunk_token(id, header.token.as_ref(), ChunkOp::Write)?;
        if header.size > crate::chunking::MAX_CHUNK_SIZE {
            return Err(RpcError::InvalidArgument(format!("a chunk of {} bytes; the largest is {}", header.size, crate::chunking::MAX_CHUNK_SIZE)));
        }
        self.check_room(header.size).await?;
        let (peers, refused) = match service {
            ChunkService::Storage => self.forward_targets(&header.forward_to).await?,
            // A replica never forwards: the fan-out is the primary's alone.
            ChunkService::Replication => (vec![], vec![]),
        };
        // Pipelined fan-out: each frame goes on to every replica as it arrives, so replicas
        // receive (and hash) while this node still does. A peer that keeps up at one frame per
        // `frame_timeout` finishes; a stalled one is given up on well before
        // `replication_timeout` for a small chunk.
        let frame_count = header.size.div_ceil(CHUNK_FRAME_BYTES as u64).max(1);
        let limit = self.config.frame_timeout.saturating_mul(u32::try_from(frame_count).unwrap_or(u32::MAX)).min(self.config.replication_timeout);
        let mut relays = Vec::new();
        let mut sends = Vec::new();
        for peer in peers.into_iter().filter(|p| p.id != self.id.0) {
            let (tx, rx) = futures::channel::mpsc::channel(RELAY_FRAMES_MAX);
            relays.push(tx);
            sends.push(self.forward_frames(peer, rx, limit));
        }
        // The whole chunk arrives within `frame_timeout` per frame it needs: a sender that
        // trickles bytes keeps a stream slot no longer than one that sends at the slowest
        // pace the node accepts.
        let receive_limit = self.config.frame_timeout.saturating_mul(u32::try_from(frame_count).unwrap_or(u32::MAX));
        let receiving = async {
            with_timeout(self.env.clock(), receive_limit, self.receive_relaying(first, &mut frames, relays))
                .await
                .map_err(|_| RpcError::Unavailable(format!("node {}: the chunk did not arrive within {receive_limit:?}; write dropped", self.id)))?
        };
        let sending = join_all(sends);
        futures::pin_mut!(receiving, sending);
        // A chunk that fails on its way in (or its check) returns at once: dropping the
        // replicas' calls cancels them, and they store nothing.
        let (upload, replicas) = match futures::future::select(receiving, sending).await {
            futures::future::Either::Left((received, sending)) => (received?, futures::future::Either::Left(sending)),
            futures::future::Either::Right((done, receiving)) => (receiving.await?, futures::future::Either::Right(done)),
        };
        let (id, meta) = verify_upload(&self.env, &upload).await?;
        let replicas = async {
            match replicas {
                futures::future::Either::Left(sending) => sending.await,
                futures::future::Either::Right(done) => done,
            }
        };
        // The local write overlaps the replicas' last frames and their writes.
        let (stored, results) = futures::join!(self.store_local(id, meta, &upload.data), replicas);
        if stored.is_ok() {
            self.reports.lock().expect("reports lock").stored(ReplicaReport { chunk: id, size: meta.size, sha256: meta.sha256 });
        }
        let answer = fan_out::outcome(&self.self_proto(), stored, results, refused)?;
        tracing::debug!(chunk = %id, ?service, stored = answer.stored_on.len(), failed = answer.failures.len(), "chunk written");
        Ok(answer)
    }

    async fn read_chunk(&self, request: proto::ReadChunkRequest) -> Result<FrameStream<proto::ReadChunkFrame>, RpcError> {
        let id = ChunkId::from_slice(&request.chunk_id).ok_or_else(|| RpcError::InvalidArgument("chunk id must be 16 bytes".into()))?;
        self.check_chunk_token(id, request.token.as_ref(), ChunkOp::Read)?;
        self.serve_chunk(request, true).await
    }
}

impl<E: Env> StorageNode<E> {
    /// A chunk's verified frames. `cached`: a read a client (or a repair) asked for, through the
    /// page cache, so that a chunk read again is served from memory, as SeaweedFS and MooseFS
    /// serve it; scrub reads with `cached` false, bypassing the cache where the disk can, so
    /// that walking every chunk does not evict what readers use.
    pub(super) async fn serve_chunk(&self, request: proto::ReadChunkRequest, cached: bool) -> Result<FrameStream<proto::ReadChunkFrame>, RpcError> {
        let id = ChunkId::from_slice(&request.chunk_id).ok_or_else(|| RpcError::InvalidArgument("chunk id must be 16 bytes".into()))?;
        let slot = self.client_slots.acquire(self.env.clock(), self.config.chunk_stream_wait).await?;
        fault::inject(self.env.clock(), Site::StorageRead).await.map_err(|i| RpcError::Unavailable(format!("node {}: {i}", self.id)))?;
        let expected = self.stored_meta(id)?;
        let path = self.layout.chunk_path(id);
        let damaged = match read_header(self.env.disk(), &path).await {
            Ok(header) if header.meta == expected => {
                let mut reply_header = proto::ReadChunkHeader {
                    size: expected.size,
                    sha256: expected.sha256.0.to_vec().into(),
                    chain: expected.chain.map(Chain::to_proto),
                    ..Default::default()
                };
                let reader = match request.range_offset {
                    // A ranged read: the frames holding the range, and their checks for the reader.
                    Some(offset) => {
                        let (reader, range) = FrameReader::serving_range(header, offset, request.range_length.unwrap_or(u64::MAX));
                        reply_header.range_bytes = Some(range.bytes);
                        reply_header.range_start = range.start;
                        reply_header.frame_bytes = range.frame_bytes;
                        reply_header.frame_crc32c = range.crcs;
                        reader
                    }
                    None => FrameReader::serving(header),
                };
                let state = ReadState {
                    id,
                    disk: self.env.disk().clone(),
                    path,
                    reader,
                    header: Some(reply_header),
                    quarantine: self.quarantine(),
                    bulk: !cached && crate::bulk_buf::is_bulk(expected.size),
                    ended: false,
                    _slot: slot,
                };
                return Ok(futures::stream::unfold(state, |mut s| async move { s.next().await.map(|item| (item, s)) }).boxed());
            }
            Ok(_) => "the file's header no longer matches what was stored".to_string(),
            Err(HeaderError::Damaged(e)) => e.to_string(),
            Err(HeaderError::Io(e)) => return Err(RpcError::Internal(format!("node {}: reading chunk {id}: {e}", self.id))),
        };
        self.quarantine().run(id, damaged.clone()).await;
        Err(RpcError::ChecksumMismatch(format!("chunk {id} on node {}: {damaged}", self.id)))
    }

    /// What `id` was stored as, if it is stored here (readable).
    pub(super) fn stored_meta(&self, id: ChunkId) -> Result<ChunkMeta, RpcError> {
        self.table.lock().expect("table lock").stored(id).map_err(|_| self.not_stored(id))
    }

    pub(super) fn not_stored(&self, id: ChunkId) -> RpcError {
        RpcError::NotFound(format!("chunk {id} is not stored on node {}", self.id))
    }

    /// Refuses a chunk of `size` bytes early if the disk cannot take it.
    pub(super) async fn check_room(&self, size: u64) -> Result<(), RpcError> {
        let (_, free_bytes) = self.space().await?;
        let (_, in_progress) = self.table.lock().expect("table lock").writing();
        chunk_store::check_space(chunk_store::file_bytes(size), in_progress, free_bytes, self.config.space_reserve_bytes).map_err(|e| self.refused_for_space(e))
    }

    /// A write refused because the disk cannot take it: said in the node's log (an operator
    /// must hear of a full disk from the node that has it, not only from failing clients),
    /// at most once per `SPACE_WARNING_INTERVAL`.
    pub(super) fn refused_for_space(&self, e: ChunkStoreError) -> RpcError {
        let now = self.env.clock().now();
        let mut warned = self.space_warned.lock().expect("space lock");
        if warned.is_none_or(|at| now.saturating_since(at) >= SPACE_WARNING_INTERVAL) {
            *warned = Some(now);
            tracing::warn!(node = %self.id, reserve_bytes = self.config.space_reserve_bytes, error = %e, "refusing writes: no room on the disk above the reserve (--space-reserve-bytes)");
        }
        RpcError::NoSpace(format!("node {}: {e}", self.id))
    }

    /// Makes a verified chunk durable here.
    pub(super) async fn store_local(&self, id: ChunkId, meta: ChunkMeta, data: &Bytes) -> Result<(), RpcError> {
        self.sweep_orphaned_tmp().await;
        let (_, free_bytes) = self.space().await?;
        let nonce = self.env.random_u64();
        let steps = {
            let mut table = self.table.lock().expect("table lock");
            let decision = table.begin_write(id, meta).map_err(|e| match e {
                ChunkStoreError::WriteInProgress(_) => RpcError::Unavailable(e.to_string()),
                _ => RpcError::FailedPrecondition(e.to_string()),
            })?;
            if decision == WriteDecision::AlreadyStored {
                return Ok(());
            }
            // The writes in progress include this one.
            let (_, in_progress) = table.writing();
            if let Err(e) = chunk_store::check_space(0, in_progress, free_bytes, self.config.space_reserve_bytes) {
                table.abort_write(id);
                drop(table);
                return Err(self.refused_for_space(e));
            }
            chunk_store::write_steps(&self.layout, &table, id, nonce, meta, data.clone())
        };
        let guard = WriteGuard {
            table: &self.table,
            orphans: &self.orphaned_tmp,
            id,
            tmp: self.layout.tmp_path(id, nonce),
            chunk: self.layout.chunk_path(id),
            finished: false,
        };
        let written = match fault::inject(self.env.clock(), Site::StorageStore).await {
            Ok(()) => self.env.disk().run_steps(steps).await,
            Err(injected) => Err(std::io::Error::other(injected.to_string())),
        };
        match written {
            Ok(()) => {
                guard.finish();
                Ok(())
            }
            Err(e) => {
                drop(guard);
                self.sweep_orphaned_tmp().await;
                Err(write_error(self.id, id, e))
            }
        }
    }

    /// The next frame of an incoming chunk, within `frame_timeout` of the one before; `None`
    /// after the last.
    pub(super) async fn next_frame(&self, frames: &mut FrameStream<proto::WriteChunkFrame>) -> Result<Option<proto::WriteChunkFrame>, RpcError> {
        let limit = self.config.frame_timeout;
        with_timeout(self.env.clock(), limit, frames.next())
            .await
            .map_err(|_| RpcError::Unavailable(format!("node {}: no frame from the sender for {limit:?}; write dropped", self.id)))?
            .transpose()
    }

    /// Receives the rest of a chunk after its `first` frame, passing each frame on to `relays`
    /// (the replicas' streams) as it arrives. A relay whose call has ended is skipped.
    pub(super) async fn receive_relaying(
        &self,
        first: proto::WriteChunkFrame,
        frames: &mut FrameStream<proto::WriteChunkFrame>,
        mut relays: Vec<futures::channel::mpsc::Sender<proto::WriteChunkFrame>>,
    ) -> Result<ChunkUpload, RpcError> {
        use futures::SinkExt;
        let mut assembler = FrameAssembler::<proto::WriteChunkHeader>::new();
        let mut next = Some(first);
        while let Some(frame) = next {
            // Replicas get the header without targets: the fan-out is this node's alone.
            let relayed =
                proto::WriteChunkFrame { header: frame.header.clone().map(|h| proto::WriteChunkHeader { forward_to: vec![], ..h }), data: frame.data.clone() };
            assembler.push(frame.header, frame.data)?;
            for relay in relays.iter_mut() {
                let _ = relay.send(relayed.clone()).await;
            }
            next = self.next_frame(frames).await?;
        }
        // Ends the replicas' streams: each checks the whole chunk against its header itself.
        drop(relays);
        let (header, data) = assembler.finish()?;
        Ok(ChunkUpload { header, data })
    }

    /// The requested forward targets this node sends to (registered peers only; see
    /// `Peers::forward_targets`), and failures for the others. An unknown peer wakes the
    /// heartbeat loop, so that a node registered since the last reply is known soon.
    pub(super) async fn forward_targets(&self, requested: &[proto::StorageNode]) -> Result<(Vec<proto::StorageNode>, Vec<proto::ReplicaFailure>), RpcError> {
        let requested: Vec<(StorageNodeId, String)> = requested.iter().map(|p| (StorageNodeId(p.id), p.addr.clone())).collect();
        let check = || self.peers.lock().expect("peers lock").forward_targets(self.id, &requested).map_err(|e| RpcError::InvalidArgument(e.to_string()));
        let (mut allowed, mut refused) = check()?;
        if !refused.is_empty() {
            // Perhaps registered since the last heartbeat reply: ask now, and wait (briefly)
            // for the fresh list before refusing (a refusal makes the client avoid that node).
            let updated = self.peers_updated.listen();
            self.wake_heartbeat();
            let wait = self.config.heartbeat_interval.min(PEER_REFRESH_WAIT_MAX).saturating_add(HEARTBEAT_GAP_MIN);
            let _ = with_timeout(self.env.clock(), wait, updated).await;
            (allowed, refused) = check()?;
        }
        let to_proto = |(id, addr): (StorageNodeId, String)| proto::StorageNode { id: id.0, addr };
        let failures = refused
            .into_iter()
            .map(|r| proto::ReplicaFailure {
                node: Some(to_proto((r.node, r.addr))),
                error: format!("node {}: refused as a forward target: {}", self.id, r.reason),
            })
            .collect();
        Ok((allowed.into_iter().map(to_proto).collect(), failures))
    }

    /// Streams the frames `relay` yields to `peer` as a replica; the peer's id if it stored the
    /// chunk, or why not.
    pub(super) async fn forward_frames(
        &self,
        peer: proto::StorageNode,
        relay: futures::channel::mpsc::Receiver<proto::WriteChunkFrame>,
        limit: Duration,
    ) -> Result<u64, proto::ReplicaFailure> {
        if let Err(injected) = fault::inject(self.env.clock(), Site::StorageForward).await {
            return Err(proto::ReplicaFailure { node: Some(peer), error: injected.to_string() });
        }
        let send = self.env.transport().write_chunk_frames(&peer.addr, ChunkService::Replication, relay.boxed());
        match call_with_timeout(self.env.clock(), limit, &peer.addr, send).await {
            Ok(reply) if reply.stored_on.contains(&peer.id) => Ok(peer.id),
            Ok(_) => Err(proto::ReplicaFailure { node: Some(peer), error: "peer did not confirm the write".into() }),
            Err(e) => Err(proto::ReplicaFailure { node: Some(peer), error: e.to_string() }),
        }
    }
}

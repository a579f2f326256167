//! A storage node's background work, as its executor: the heartbeat loop (driving the
//! `heartbeat` machine and applying what replies ask), the scrub loop (driving
//! `scrub::Scrubber`), and the repair loop (driving `storage_reports::Repairs`).

use super::service::checksums;
use super::*;
use crate::chain::Chain;
use crate::storage_reports::{RepairAttempt, Served};

impl<E: Env> StorageNode<E> {
    pub(super) async fn heartbeat_loop(&self) {
        let clock = self.env.clock();
        let config =
            HeartbeatConfig { interval: self.config.heartbeat_interval, gap_min: HEARTBEAT_GAP_MIN, inventory_interval: self.config.inventory_interval };
        *self.heartbeats.lock().expect("heartbeats lock") = Heartbeats::new(config, clock.now());
        loop {
            let due = self.heartbeats.lock().expect("heartbeats lock").handle_timeout(clock.now());
            if due.inventory {
                self.reports.lock().expect("reports lock").start_inventory(self.env.random_u64() | 1);
            }
            if let Some(beat) = due.beat {
                // This call carries whatever asked for it; a wake-up from now on (say a repair
                // finishing during the call) brings the next one forward.
                let _ = self.heartbeat_now.1.try_recv();
                if let Err(e) = self.heartbeat_once(beat).await {
                    tracing::warn!(node = %self.id, error = %e, "heartbeat failed");
                    self.heartbeats.lock().expect("heartbeats lock").handle_failed(clock.now());
                }
            }
            let next = self.heartbeats.lock().expect("heartbeats lock").poll_timeout().unwrap_or(clock.now());
            let _ = with_timeout(clock, next.saturating_since(clock.now()), self.heartbeat_now.1.recv()).await;
        }
    }

    pub(super) async fn heartbeat_once(&self, beat: Beat) -> Result<(), RpcError> {
        fault::inject(self.env.clock(), Site::StorageHeartbeat).await.map_err(|i| RpcError::Transport(format!("node {}: {i}", self.id)))?;
        self.sweep_orphaned_tmp().await;
        let (capacity_bytes, _) = self.space().await?;
        let cluster_id = self.cluster_id.lock().expect("cluster lock").clone().unwrap_or_default();
        if beat == Beat::Register {
            let request = proto::RegisterStorageRequest {
                node: Some(self.self_proto()),
                capacity_bytes,
                cluster_id: cluster_id.clone(),
                rack: self.config.rack.clone().unwrap_or_default(),
            };
            let reply = self.meta.call(request).await.inspect_err(|e| {
                if matches!(e, RpcError::FailedPrecondition(_)) {
                    tracing::error!(node = %self.id, error = %e, "the metadata cluster refuses this node");
                }
            })?;
            if cluster_id.is_empty() && !reply.cluster_id.is_empty() {
                self.remember_cluster(&reply.cluster_id).await?;
            }
            self.learn_chunk_keys(&reply.chunk_keys);
            // A (new) leader learns what this node holds: everything, in the next heartbeats.
            if self.heartbeats.lock().expect("heartbeats lock").handle_registered() {
                self.reports.lock().expect("reports lock").start_inventory(self.env.random_u64() | 1);
            }
        }
        self.report_bad_replicas().await;
        let batch = {
            let table = self.table.lock().expect("table lock");
            self.reports.lock().expect("reports lock").batch_with_inventory(|after| {
                let id = table.next_stored_after(after)?;
                let meta = table.stored(id).ok()?;
                Some(ReplicaReport { chunk: id, size: meta.size, sha256: meta.sha256 })
            })
        };
        let request = self.heartbeat_request_carrying(&batch).await?;
        let repairs_failed = self.repairs.lock().expect("repairs lock").failures();
        let reply = self.meta.call(request).await?;
        self.learn_chunk_keys(&reply.chunk_keys);
        let answered = heartbeat::Reply { register: reply.register, inventory_wanted: reply.inventory_wanted };
        let asked = self.heartbeats.lock().expect("heartbeats lock").handle_reply(self.env.clock().now(), answered);
        self.reports.lock().expect("reports lock").acknowledge(&batch);
        {
            let mut repairs = self.repairs.lock().expect("repairs lock");
            repairs.acknowledge_failures(&repairs_failed);
            repairs.offer(reply.repair_jobs.iter().filter_map(|j| {
                Some(RepairOrder {
                    chunk: ChunkId::from_slice(&j.chunk_id)?,
                    size: j.size,
                    sha256: Sha256Digest::from_slice(&j.sha256)?,
                    // A malformed chain drops the job, as a malformed digest does.
                    chain: Chain::from_proto_opt(j.chain.as_ref()).ok()?,
                    sources: j.sources.iter().map(|s| (StorageNodeId(s.id), s.addr.clone())).collect(),
                    token: j.token.clone(),
                })
            }));
        }
        if !reply.repair_jobs.is_empty() {
            let _ = self.repairs_wake.0.try_send(());
        }
        if asked.inventory {
            let mut reports = self.reports.lock().expect("reports lock");
            if !reports.inventory_running() {
                reports.start_inventory(self.env.random_u64() | 1);
            }
        }
        if reply.scrub_now && self.scrubber.lock().expect("scrubber lock").request(self.env.clock().now(), reply.scrub_request) {
            tracing::info!(node = %self.id, "scrub pass requested");
            let _ = self.scrub_wake.0.try_send(());
        }
        if asked.take_peers {
            self.peers.lock().expect("peers lock").update(reply.peers.into_iter().map(|p| (StorageNodeId(p.id), p.addr)));
            self.peers_updated.notify(usize::MAX);
        }
        for raw in reply.delete_chunks {
            let Some(id) = ChunkId::from_slice(&raw) else { continue };
            match self.delete_chunk(id).await {
                Ok(()) => self.reports.lock().expect("reports lock").deleted(id),
                Err(e) => tracing::warn!(chunk = %id, error = %e, "delete failed; will retry when asked again"),
            }
        }
        Ok(())
    }

    /// What the next heartbeat says: space read from the disk now (so it is right after a
    /// restart, whatever happened before), the chunks in the table, deletions to report.
    pub async fn heartbeat_request(&self) -> Result<proto::HeartbeatRequest, RpcError> {
        let batch = self.reports.lock().expect("reports lock").batch();
        self.heartbeat_request_carrying(&batch).await
    }

    pub(super) async fn heartbeat_request_carrying(&self, batch: &ReportBatch) -> Result<proto::HeartbeatRequest, RpcError> {
        let (capacity_bytes, free_bytes) = self.space().await?;
        let volume_id = self.env.disk().volume_id(&self.config.data_dir).await.unwrap_or(0);
        let stored_bytes = self.table.lock().expect("table lock").stored_bytes();
        Ok(proto::HeartbeatRequest {
            node: Some(self.self_proto()),
            capacity_bytes,
            free_bytes,
            chunk_count: self.chunk_count(),
            stored_bytes,
            reserve_bytes: self.config.space_reserve_bytes,
            volume_id,
            scrub_request_seen: self.scrubber.lock().expect("scrubber lock").request_seen(),
            stopping: self.heartbeats.lock().expect("heartbeats lock").stopping(),
            deleted_chunks: batch.deleted.iter().map(|c| Bytes::copy_from_slice(c.as_bytes())).collect(),
            cluster_id: self.cluster_id.lock().expect("cluster lock").clone().unwrap_or_default(),
            stored_chunks: batch
                .stored
                .iter()
                .map(|r| proto::ReplicaReport {
                    chunk_id: Bytes::copy_from_slice(r.chunk.as_bytes()),
                    size: r.size,
                    sha256: Bytes::copy_from_slice(&r.sha256.0),
                })
                .collect(),
            inventory_pass: batch.inventory_pass.map(|(p, _)| p).unwrap_or(0),
            inventory_from: batch.inventory_pass.and_then(|(_, from)| from).map(|c| Bytes::copy_from_slice(c.as_bytes())).unwrap_or_default(),
            inventory_through: match batch.inventory {
                InventoryProgress::Through(Some(c)) => Bytes::copy_from_slice(c.as_bytes()),
                _ => Bytes::new(),
            },
            inventory_done: batch.inventory == InventoryProgress::Done,
            repairs_running: {
                let repairs = self.repairs.lock().expect("repairs lock");
                repairs.in_flight().iter().map(|c| Bytes::copy_from_slice(c.as_bytes())).collect()
            },
            repairs_failed: self
                .repairs
                .lock()
                .expect("repairs lock")
                .failures()
                .into_iter()
                .map(|(c, error)| proto::RepairFailure { chunk_id: Bytes::copy_from_slice(c.as_bytes()), error })
                .collect(),
        })
    }

    /// Verifies stored chunks in the background, paced (`scrub::Scrubber`). A damaged replica
    /// is quarantined and reported by the read path it goes through.
    pub(super) async fn scrub_loop(&self) {
        loop {
            let now = self.env.clock().now();
            let step = {
                let table = self.table.lock().expect("table lock");
                self.scrubber.lock().expect("scrubber lock").next(now, |after| table.next_stored_after(after))
            };
            match step {
                Step::Verify(id) => {
                    let bytes = self.verify_stored(id).await;
                    self.scrubber.lock().expect("scrubber lock").verified(self.env.clock().now(), bytes);
                }
                Step::WaitUntil(at) => {
                    let _ = with_timeout(self.env.clock(), at.saturating_since(now), self.scrub_wake.1.recv()).await;
                }
            }
        }
    }

    /// Reads a stored chunk through the verified read path; returns the bytes read.
    pub(super) async fn verify_stored(&self, id: ChunkId) -> u64 {
        let request = proto::ReadChunkRequest { chunk_id: Bytes::copy_from_slice(id.as_bytes()), ..Default::default() };
        let mut frames = match self.serve_chunk(request, false).await {
            Ok(frames) => frames,
            Err(RpcError::NotFound(_)) => return 0, // deleted meanwhile
            Err(e) => {
                tracing::warn!(node = %self.id, chunk = %id, error = %e, "scrub: cannot read");
                return 0;
            }
        };
        let mut bytes = 0;
        while let Some(frame) = frames.next().await {
            match frame {
                Ok(f) => bytes += f.data.len() as u64,
                // Damage: the read path quarantined it and will report it.
                Err(e @ RpcError::ChecksumMismatch(_)) => {
                    tracing::error!(node = %self.id, chunk = %id, error = %e, "scrub: damaged replica quarantined");
                    self.counters.scrub_damaged.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    break;
                }
                // Deleted while it was being verified (garbage collection races the scrub):
                // nothing to say.
                Err(_) if self.table.lock().expect("table lock").stored(id).is_err() => break,
                Err(e) => {
                    tracing::warn!(node = %self.id, chunk = %id, error = %e, "scrub: cannot read");
                    break;
                }
            }
        }
        bytes
    }

    /// Runs repair jobs as heartbeat replies bring them, `repair_streams_max` streams at a
    /// time (a stream: one large chunk, or a batch of small ones).
    pub(super) async fn repair_loop(&self) {
        use futures::future::{select, Either};
        use futures::stream::FuturesUnordered;
        let mut running = FuturesUnordered::new();
        loop {
            while let Some(work) = self.repairs.lock().expect("repairs lock").start() {
                running.push(self.repair_work(work));
            }
            if running.is_empty() {
                let _ = self.repairs_wake.1.recv().await;
                continue;
            }
            let woken = Box::pin(self.repairs_wake.1.recv());
            if let Either::Left((Some(results), _)) = select(running.next(), woken).await {
                let failed = results.iter().filter(|(_, r)| r.is_err()).count();
                self.counters.repairs_failed.fetch_add(failed as u64, std::sync::atomic::Ordering::Relaxed);
                self.counters.repairs_done.fetch_add((results.len() - failed) as u64, std::sync::atomic::Ordering::Relaxed);
                if let Some((chunk, Err(e))) = results.iter().find(|(_, r)| r.is_err()) {
                    tracing::warn!(node = %self.id, %chunk, error = %e, failed, of = results.len(), "repair failed");
                }
                self.repairs.lock().expect("repairs lock").finish(results);
                // Report these copies now, not a heartbeat interval later: the reply frees
                // their slots at metadata and brings the next jobs (heartbeats stay at least
                // `HEARTBEAT_GAP_MIN` apart, however fast copies finish).
                self.wake_heartbeat();
            }
        }
    }

    /// One stream's work: a large chunk alone, or small chunks read from their first source
    /// in one call and stored in one group commit; a chunk that source does not serve whole
    /// is then tried alone on its other sources.
    pub(super) async fn repair_work(&self, work: Vec<RepairOrder>) -> Vec<(ChunkId, Result<(), RepairFailure>)> {
        if work.len() == 1 && work[0].size > crate::limits::SMALL_CHUNK_BYTES_MAX as u64 {
            let order = work.into_iter().next().expect("one order");
            return vec![self.repair(order).await];
        }
        let mut results = Vec::with_capacity(work.len());
        let mut wanted = Vec::with_capacity(work.len());
        {
            let table = self.table.lock().expect("table lock");
            for order in work {
                let meta = order.meta();
                if table.stored(order.chunk).is_ok_and(|m| m == meta) {
                    self.reports.lock().expect("reports lock").stored(ReplicaReport { chunk: order.chunk, size: meta.size, sha256: meta.sha256 });
                    results.push((order.chunk, Ok(())));
                } else {
                    wanted.push(order);
                }
            }
        }
        // One source for the batch: the first chunk's first; the chunks that do not list it,
        // and those it does not serve whole and matching, go on alone to their other sources.
        let mut attempts: Vec<RepairAttempt> = wanted.into_iter().map(|o| RepairAttempt::new(o, self.id)).collect();
        let Some((source, addr)) = attempts.first_mut().and_then(RepairAttempt::next_source) else {
            results.extend(attempts.into_iter().map(|a| (a.order().chunk, Err(a.failed()))));
            return results;
        };
        let (mut batch, mut alone): (Vec<RepairAttempt>, Vec<RepairAttempt>) = (Vec::new(), Vec::new());
        for (i, mut attempt) in attempts.into_iter().enumerate() {
            match i == 0 || attempt.take_source(source) {
                true => batch.push(attempt),
                false => alone.push(attempt),
            }
        }
        let request = proto::ReadChunksRequest {
            chunks: batch
                .iter()
                .map(|a| proto::ReadChunkRequest {
                    chunk_id: Bytes::copy_from_slice(a.order().chunk.as_bytes()),
                    token: a.order().token.clone(),
                    ..Default::default()
                })
                .collect(),
        };
        let read = call_with_timeout(self.env.clock(), self.config.replication_timeout, &addr, self.env.transport().unary(&addr, request)).await;
        let replies: Vec<Result<Bytes, RpcError>> = match read {
            Ok(reply) if reply.results.len() == batch.len() => {
                use proto::chunk_read_result::Result as R;
                let read = |r: proto::ChunkReadResult| match r.result {
                    Some(R::Ok(read)) => Ok(read.data),
                    Some(R::Error(e)) => Err(RpcError::from_detail(e)),
                    None => Err(RpcError::Malformed("a batch read result with nothing in it".into())),
                };
                reply.results.into_iter().map(read).collect()
            }
            Ok(reply) => {
                let e = RpcError::Malformed(format!("{} results for {} chunks", reply.results.len(), batch.len()));
                vec![Err(e); batch.len()]
            }
            Err(e) => vec![Err(e); batch.len()],
        };
        // Hashed off the executor thread, as every check of received bytes is.
        let chains: Vec<Option<Chain>> = batch.iter().map(|a| a.order().chain).collect();
        let hashed = |(r, chain): (Result<Bytes, RpcError>, Option<Chain>)| {
            r.map(|data| {
                let digest = crate::chain::checksum(&data, chain.as_ref());
                (data, digest)
            })
        };
        let checked: Vec<Result<(Bytes, Sha256Digest), RpcError>> = self.env.compute(move || replies.into_iter().zip(chains).map(hashed).collect()).await;
        let mut items = Vec::new();
        let mut stored_orders = Vec::new();
        for (mut attempt, reply) in batch.into_iter().zip(checked) {
            let served = match reply {
                Ok((data, digest)) => (attempt.served(source, data.len() as u64, digest) == Served::Store).then_some(data),
                Err(e) => {
                    attempt.read_failed(source, e);
                    None
                }
            };
            match served {
                Some(data) => {
                    let order = attempt.order().clone();
                    items.push((order.chunk, order.meta(), data));
                    stored_orders.push(order);
                }
                None => alone.push(attempt),
            }
        }
        let total: u64 = items.iter().map(|(_, m, _)| m.size).sum();
        let stored = match self.check_room(total).await {
            Ok(()) => self.store_batch(&items).await,
            Err(e) => vec![Err(e); items.len()],
        };
        for (order, outcome) in stored_orders.into_iter().zip(stored) {
            match outcome {
                Ok(()) => {
                    self.reports.lock().expect("reports lock").stored(ReplicaReport { chunk: order.chunk, size: order.size, sha256: order.sha256 });
                    results.push((order.chunk, Ok(())));
                }
                Err(e) => results.push((order.chunk, Err(RepairFailure::Store(e)))),
            }
        }
        if !items.is_empty() {
            tracing::debug!(node = %self.id, %source, chunks = items.len(), "repaired: small replicas copied in a batch");
        }
        for attempt in alone {
            results.push(self.go_on(attempt).await);
        }
        results
    }

    /// Makes a copy of a chunk here, pulled from the first source that serves it whole and
    /// matching the SHA-256 metadata recorded. The new replica is reported like any other.
    pub(super) async fn repair(&self, order: RepairOrder) -> (ChunkId, Result<(), RepairFailure>) {
        let meta = order.meta();
        if self.table.lock().expect("table lock").stored(order.chunk).is_ok_and(|m| m == meta) {
            self.reports.lock().expect("reports lock").stored(ReplicaReport { chunk: order.chunk, size: meta.size, sha256: meta.sha256 });
            return (order.chunk, Ok(()));
        }
        self.go_on(RepairAttempt::new(order, self.id)).await
    }

    /// Carries a repair copy on from the sources `attempt` has not tried yet.
    async fn go_on(&self, mut attempt: RepairAttempt) -> (ChunkId, Result<(), RepairFailure>) {
        let meta = attempt.order().meta();
        while let Some((source, addr)) = attempt.next_source() {
            let chunk = attempt.order().chunk;
            let request =
                proto::ReadChunkRequest { chunk_id: Bytes::copy_from_slice(chunk.as_bytes()), token: attempt.order().token.clone(), ..Default::default() };
            let read = call_with_timeout(self.env.clock(), self.config.replication_timeout, &addr, self.env.transport().read_chunk(&addr, request)).await;
            let data = match read {
                Ok(download) => download.data,
                Err(e) => {
                    attempt.read_failed(source, e);
                    continue;
                }
            };
            let digest = checksums(&self.env, vec![(data.clone(), meta.chain)]).await[0];
            if attempt.served(source, data.len() as u64, digest) == Served::TryNext {
                continue;
            }
            if let Err(e) = self.check_room(meta.size).await {
                return (chunk, Err(RepairFailure::Store(e)));
            }
            return match self.store_local(chunk, meta, &data).await {
                Ok(()) => {
                    self.reports.lock().expect("reports lock").stored(ReplicaReport { chunk, size: meta.size, sha256: meta.sha256 });
                    tracing::info!(node = %self.id, %chunk, %source, "repaired: replica copied");
                    (chunk, Ok(()))
                }
                Err(e) => (chunk, Err(RepairFailure::Store(e))),
            };
        }
        let chunk = attempt.order().chunk;
        (chunk, Err(attempt.failed()))
    }

    /// Writes the cluster id durably (tmp, fsync, rename, fsync dir) before using it.
    pub(super) async fn remember_cluster(&self, cluster_id: &str) -> Result<(), RpcError> {
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

    pub(super) async fn delete_chunk(&self, id: ChunkId) -> std::io::Result<()> {
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

    /// Tells metadata about replicas found corrupt, so that it stops handing them out. A report
    /// that fails stays queued for the next heartbeat.
    pub(super) async fn report_bad_replicas(&self) {
        for _ in 0..BAD_REPLICA_REPORTS_PER_HEARTBEAT_MAX {
            let Some(bad) = self.bad_unreported.lock().expect("bad replicas lock").front().cloned() else { return };
            let request =
                proto::ReportBadReplicaRequest { chunk_id: Bytes::copy_from_slice(bad.chunk.as_bytes()), node_id: self.id.0, reason: bad.reason.clone() };
            match self.meta.call(request).await {
                Ok(_) => {
                    let mut queue = self.bad_unreported.lock().expect("bad replicas lock");
                    if queue.front() == Some(&bad) {
                        queue.pop_front();
                    }
                }
                Err(e) => {
                    tracing::warn!(chunk = %bad.chunk, error = %e, "cannot report a bad replica yet");
                    return;
                }
            }
        }
    }

    /// Removes the temporary files of writes that were dropped mid-way.
    pub async fn sweep_orphaned_tmp(&self) {
        // One sweeper at a time: a second one could release a claim the first already
        // released and a new write then took (and remove that write's file).
        if self.sweeping.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        let _sweeping = scopeguard(|| self.sweeping.store(false, std::sync::atomic::Ordering::Release));
        loop {
            let next = self.orphaned_tmp.lock().expect("orphans lock").first().map(|a| (a.id, a.tmp.clone(), a.chunk.clone()));
            let Some((id, tmp, chunk)) = next else { break };
            for (path, what) in [(&tmp, "temporary file"), (&chunk, "chunk file")] {
                match self.env.disk().remove_file(path).await {
                    Ok(()) => tracing::debug!(chunk = %id, path = %path.display(), "removed the {what} of an abandoned write"),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!(chunk = %id, path = %path.display(), error = %e, "cannot remove the {what} of an abandoned write; start-up will"),
                }
            }
            // Only the sweeper takes entries out, so the first is still this one. Released only
            // now: a sweep cancelled above leaves it (and its claim) to the next sweep.
            self.orphaned_tmp.lock().expect("orphans lock").remove(0);
            self.table.lock().expect("table lock").abort_write(id);
        }
    }
}

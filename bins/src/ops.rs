//! A daemon's HTTP port (`--http-listen`): `/metrics` in the Prometheus text format
//! (OpenMetrics), `/healthz`, and on metadata nodes the status page at `/`.
//!
//! Observes only. Figures are read when scraped, from snapshots the servers hand out under
//! their own short locks (`MetaServer::view`, `StorageNode::view`), and encoded into a buffer
//! before a byte is sent: a slow scraper holds nothing the RPCs need. The one costly figure,
//! the page's health report (it walks every file), is made at most every
//! `FSCK_PAGE_INTERVAL` whatever the number of viewers.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use dfs_core::meta::leader::FsckReport;
use dfs_core::meta::MetaServer;
use dfs_core::meta::MetaView;
use dfs_core::storage_node::StorageNode;
use dfs_io_real::metrics::RpcMetrics;
use dfs_io_real::RealEnv;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::status_page;

/// How often the status page's health report is made anew (it reads every file's chunks).
pub const FSCK_PAGE_INTERVAL: Duration = Duration::from_secs(10);
/// Problems the status page lists.
pub const PAGE_PROBLEMS_MAX: usize = 20;

pub enum Node {
    Meta(Arc<MetaServer<RealEnv>>),
    Storage(Arc<StorageNode<RealEnv>>),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    role: String,
}

/// A counter that follows a figure kept elsewhere: it goes up by what the figure grew, and
/// by the whole figure when that starts again from zero (a new leader's repair counts).
struct Follow {
    counter: Counter,
    last: AtomicU64,
}

impl Follow {
    fn new() -> Self {
        Follow { counter: Counter::default(), last: AtomicU64::new(0) }
    }
    fn set(&self, now: u64) {
        let last = self.last.swap(now, std::sync::atomic::Ordering::Relaxed);
        self.counter.inc_by(if now >= last { now - last } else { now });
    }
}

struct MetaGauges {
    term: Gauge,
    last_log_index: Gauge,
    commit_index: Gauge,
    applied_index: Gauge,
    leader: Gauge,
    leaderless: Counter<f64, AtomicU64>,
    leader_changes: Counter,
    members: Family<RoleLabel, Gauge>,
    files: Gauge,
    file_bytes: Gauge,
    uploads: Gauge,
    nodes: Family<StateLabel, Gauge>,
    chunks: Gauge,
    under: Gauge,
    over: Gauge,
    lost: Gauge,
    with_bad: Gauge,
    repair_queue: Gauge,
    repairs_in_flight: Gauge,
    repairs_started: Follow,
    repairs_completed: Follow,
    repairs_failed: Follow,
    repaired_bytes: Follow,
    /// Since when this node has known no leader (counted into `leaderless` as it goes).
    leaderless_since: Mutex<Option<Instant>>,
}

struct StorageGauges {
    chunks: Gauge,
    stored_bytes: Gauge,
    capacity: Gauge,
    free: Gauge,
    reserve: Gauge,
    writes: Gauge,
    scrub_chunks: Follow,
    scrub_bytes: Follow,
    scrub_passes: Follow,
    scrub_damaged: Follow,
    repairs_running: Gauge,
    repairs_done: Follow,
    repairs_failed: Follow,
}

pub struct Ops {
    node: Node,
    registry: Registry,
    rpc: Arc<RpcMetrics>,
    meta: Option<MetaGauges>,
    storage: Option<StorageGauges>,
    /// The page's last health report, and when it was made.
    fsck: Mutex<Option<(Instant, FsckReport)>>,
    /// The leader's page address, as that leader (by id) said it.
    leader_page: Mutex<Option<(u64, String)>>,
}

fn gauge(registry: &mut Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::default();
    registry.register(name, help, g.clone());
    g
}

fn gauge_unit(registry: &mut Registry, name: &str, help: &str, unit: Unit) -> Gauge {
    let g = Gauge::default();
    registry.register_with_unit(name, help, unit, g.clone());
    g
}

fn follow(registry: &mut Registry, name: &str, help: &str, unit: Option<Unit>) -> Follow {
    let f = Follow::new();
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, f.counter.clone()),
        None => registry.register(name, help, f.counter.clone()),
    }
    f
}

fn as_gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Ops {
    pub fn new(node: Node, role: &str, id: &str) -> Arc<Self> {
        let mut registry = Registry::default();
        registry.register(
            "dfs_node",
            "This node: its role and id",
            Info::new(vec![
                ("role".to_string(), role.to_string()),
                ("id".to_string(), id.to_string()),
                ("version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
            ]),
        );
        let rpc = RpcMetrics::register(&mut registry);
        let r = &mut registry;
        let meta = matches!(node, Node::Meta(_)).then(|| {
            let leaderless = Counter::<f64, AtomicU64>::default();
            r.register_with_unit("dfs_raft_leaderless", "Time this node knew no metadata leader", Unit::Seconds, leaderless.clone());
            let leader_changes = Counter::default();
            r.register("dfs_raft_leader_changes", "Times the leader this node knows changed", leader_changes.clone());
            let members = Family::<RoleLabel, Gauge>::default();
            r.register("dfs_raft_members", "Metadata members by role (the leader's view)", members.clone());
            let nodes = Family::<StateLabel, Gauge>::default();
            r.register(
                "dfs_storage_nodes",
                "Storage nodes by state: alive, suspect, dead, unknown, draining, decommissioned (the leader's view; 0 elsewhere)",
                nodes.clone(),
            );
            MetaGauges {
                term: gauge(r, "dfs_raft_term", "Raft term"),
                last_log_index: gauge(r, "dfs_raft_last_log_index", "Index of the last entry in this node's log"),
                commit_index: gauge(r, "dfs_raft_commit_index", "Index of the last entry this node knows committed"),
                applied_index: gauge(r, "dfs_raft_applied_index", "Index of the last entry applied to this node's namespace"),
                leader: gauge(r, "dfs_raft_leader", "1 while this node is the metadata leader"),
                leaderless,
                leader_changes,
                members,
                files: gauge(r, "dfs_files", "Files in the namespace"),
                file_bytes: gauge_unit(r, "dfs_file", "Bytes in all files (before replication)", Unit::Bytes),
                uploads: gauge(r, "dfs_uploads_in_progress", "Uploads begun and not yet committed or expired"),
                nodes,
                chunks: gauge(r, "dfs_chunks", "Chunks of all files (the leader's last repair pass; 0 elsewhere)"),
                under: gauge(r, "dfs_chunks_under_replicated", "Chunks with fewer valid replicas than their file's factor"),
                over: gauge(r, "dfs_chunks_over_replicated", "Chunks with more valid replicas than their file's factor"),
                lost: gauge(r, "dfs_chunks_lost", "Chunks with no valid replica"),
                with_bad: gauge(r, "dfs_chunks_with_bad_replicas", "Chunks with a replica found corrupt"),
                repair_queue: gauge(r, "dfs_repair_queue", "Under-replicated chunks waiting for a repair job"),
                repairs_in_flight: gauge(r, "dfs_repairs_in_flight", "Repair copies handed out and not yet done"),
                repairs_started: follow(r, "dfs_repairs_started", "Repair copies planned by this node while it led", None),
                repairs_completed: follow(r, "dfs_repairs_completed", "Repair copies completed", None),
                repairs_failed: follow(r, "dfs_repairs_failed", "Repair copies that failed or timed out", None),
                repaired_bytes: follow(r, "dfs_repaired", "Bytes of chunks repaired", Some(Unit::Bytes)),
                leaderless_since: Mutex::new(None),
            }
        });
        let storage = matches!(node, Node::Storage(_)).then(|| StorageGauges {
            chunks: gauge(r, "dfs_storage_chunks", "Chunk replicas stored on this node"),
            stored_bytes: gauge_unit(r, "dfs_storage_stored", "Bytes of the chunk files on this node", Unit::Bytes),
            capacity: gauge_unit(r, "dfs_disk_capacity", "Size of the data directory's file system", Unit::Bytes),
            free: gauge_unit(r, "dfs_disk_free", "Free space on the data directory's file system", Unit::Bytes),
            reserve: gauge_unit(r, "dfs_disk_reserve", "Free space every write must leave", Unit::Bytes),
            writes: gauge(r, "dfs_storage_writes_in_progress", "Chunk writes in progress (uploads, replication, repair)"),
            scrub_chunks: follow(r, "dfs_scrub_verified_chunks", "Chunks the scrub verified", None),
            scrub_bytes: follow(r, "dfs_scrub_verified", "Bytes the scrub verified", Some(Unit::Bytes)),
            scrub_passes: follow(r, "dfs_scrub_passes", "Whole passes the scrub completed", None),
            scrub_damaged: follow(r, "dfs_scrub_damaged_chunks", "Replicas the scrub found damaged (quarantined)", None),
            repairs_running: gauge(r, "dfs_storage_repairs_running", "Repair copies this node is making"),
            repairs_done: follow(r, "dfs_storage_repairs_done", "Repair copies this node made", None),
            repairs_failed: follow(r, "dfs_storage_repairs_failed", "Repair copies this node failed to make", None),
        });
        let ops = Arc::new(Ops { node, registry, rpc, meta, storage, fsck: Mutex::new(None), leader_page: Mutex::new(None) });
        if let Node::Meta(server) = &ops.node {
            tokio::spawn(watch_leader(ops.clone(), server.clone()));
        }
        ops
    }

    /// The RPC figures, for the RPC server to feed.
    pub fn rpc(&self) -> Arc<RpcMetrics> {
        self.rpc.clone()
    }

    async fn refresh(&self) {
        match &self.node {
            Node::Meta(server) => self.refresh_meta(server).await,
            Node::Storage(node) => {
                let v = node.view().await;
                let g = self.storage.as_ref().expect("storage gauges");
                g.chunks.set(as_gauge(v.chunks));
                g.stored_bytes.set(as_gauge(v.stored_bytes));
                g.capacity.set(as_gauge(v.capacity_bytes));
                g.free.set(as_gauge(v.free_bytes));
                g.reserve.set(as_gauge(v.reserve_bytes));
                g.writes.set(as_gauge(v.writes_in_progress));
                g.scrub_chunks.set(v.scrub.chunks_verified);
                g.scrub_bytes.set(v.scrub.bytes_verified);
                g.scrub_passes.set(v.scrub.passes_completed);
                g.scrub_damaged.set(v.scrub_damaged);
                g.repairs_running.set(as_gauge(v.repairs_running));
                g.repairs_done.set(v.repairs_done);
                g.repairs_failed.set(v.repairs_failed);
            }
        }
    }

    async fn refresh_meta(&self, server: &MetaServer<RealEnv>) {
        let g = self.meta.as_ref().expect("meta gauges");
        // The commit index is the Raft core's; asked with a bound, as a scrape must not hang.
        let committed = tokio::time::timeout(Duration::from_secs(1), server.raft().with_raft_state(|s| s.committed.map(|l| l.index))).await;
        if let Ok(Ok(c)) = committed {
            g.commit_index.set(as_gauge(c.unwrap_or(0)));
        }
        let v = server.view(0);
        g.term.set(as_gauge(v.raft.term));
        g.last_log_index.set(as_gauge(v.raft.last_log_index));
        g.applied_index.set(as_gauge(v.raft.applied_index));
        g.leader.set(i64::from(v.leader.is_some()));
        g.files.set(as_gauge(v.files));
        g.file_bytes.set(as_gauge(v.bytes));
        g.uploads.set(as_gauge(v.uploads_open));
        g.members.clear();
        g.nodes.clear();
        if let Some(since) = g.leaderless_since.lock().expect("leaderless lock").as_mut() {
            let _ = g.leaderless.inc_by(since.elapsed().as_secs_f64());
            *since = Instant::now();
        }
        let Some(l) = v.leader else {
            for gauge in [&g.chunks, &g.under, &g.over, &g.lost, &g.with_bad, &g.repair_queue, &g.repairs_in_flight] {
                gauge.set(0);
            }
            return;
        };
        for m in &v.raft.members {
            g.members.get_or_create(&RoleLabel { role: m.role.clone() }).inc();
        }
        for (_, n) in &l.nodes {
            g.nodes.get_or_create(&StateLabel { state: n.state().to_string() }).inc();
        }
        g.chunks.set(as_gauge(l.census.chunks));
        g.under.set(as_gauge(l.census.under_replicated));
        g.over.set(as_gauge(l.census.over_replicated));
        g.lost.set(as_gauge(l.census.missing));
        g.with_bad.set(as_gauge(l.census.with_bad_replicas));
        g.repair_queue.set(l.repair_queued as i64);
        g.repairs_in_flight.set(l.nodes.iter().map(|(r, _)| *r as i64).sum());
        g.repairs_started.set(l.repair.planned);
        g.repairs_completed.set(l.repair.completed);
        g.repairs_failed.set(l.repair.failed + l.repair.timed_out);
        g.repaired_bytes.set(l.repair.completed_bytes);
    }

    async fn metrics(&self) -> String {
        self.refresh().await;
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        text
    }

    /// Whether this node can serve, and why not.
    async fn health(&self) -> Result<String, String> {
        match &self.node {
            Node::Meta(server) => {
                let m = server.raft().metrics().borrow().clone();
                if let Err(e) = &m.running_state {
                    return Err(format!("raft stopped: {e}"));
                }
                match m.current_leader {
                    Some(l) if l == m.id => Ok(format!("metadata node {}: leader, term {}", m.id, m.current_term)),
                    Some(l) => Ok(format!("metadata node {}: follower of {l}, term {}", m.id, m.current_term)),
                    None => Err(format!("metadata node {}: no leader known (term {})", m.id, m.current_term)),
                }
            }
            Node::Storage(node) => {
                let v = node.view().await;
                if !v.registered {
                    return Err(format!("storage node {}: not registered with a metadata leader yet", node.id()));
                }
                if v.capacity_bytes == 0 {
                    return Err(format!("storage node {}: cannot read its disk's space", node.id()));
                }
                Ok(format!("storage node {}: serving {} chunks", node.id(), v.chunks))
            }
        }
    }

    /// The node's view for the page, with a health report: the cached one while it is fresh,
    /// else one made with this view.
    fn page_view(&self, server: &MetaServer<RealEnv>) -> (MetaView, Option<FsckReport>) {
        let mut cached = self.fsck.lock().expect("fsck lock");
        if let Some((_, report)) = cached.as_ref().filter(|(at, _)| at.elapsed() < FSCK_PAGE_INTERVAL) {
            return (server.view(0), Some(report.clone()));
        }
        let view = server.view(PAGE_PROBLEMS_MAX);
        let report = view.leader.as_ref().and_then(|l| l.fsck.clone());
        if let Some(r) = &report {
            *cached = Some((Instant::now(), r.clone()));
        }
        (view, report)
    }

    /// The leader's page address, asked of the leader once per leader (a follower's page
    /// reloads every few seconds).
    async fn leader_page(&self, leader: &dfs_core::proto::MetaNode) -> Option<String> {
        if let Some((id, page)) = self.leader_page.lock().expect("leader page lock").as_ref() {
            if *id == leader.id {
                return Some(page.clone());
            }
        }
        let page = leader_http(&leader.addr).await?;
        *self.leader_page.lock().expect("leader page lock") = Some((leader.id, page.clone()));
        Some(page)
    }

    async fn page(&self) -> String {
        match &self.node {
            Node::Meta(server) => {
                let (view, fsck) = self.page_view(server);
                let leader_page = match (&view.leader, &view.raft.leader) {
                    (None, Some(leader)) => self.leader_page(leader).await,
                    _ => None,
                };
                status_page::render_meta(&view, fsck.as_ref(), leader_page.as_deref())
            }
            Node::Storage(node) => status_page::render_storage(&node.id().to_string(), &node.view().await),
        }
    }
}

/// The leader's status page address, asked of the leader itself (bounded: a page must not
/// hang on a node that does not answer).
async fn leader_http(addr: &str) -> Option<String> {
    use dfs_core::meta_client::{MetaClient, RetryPolicy};
    let policy = RetryPolicy { deadline: Duration::from_secs(2), attempt_timeout: Duration::from_secs(1), ..RetryPolicy::default() };
    let client = MetaClient::new(crate::security::env(), vec![addr.to_string()], policy);
    let status = tokio::time::timeout(Duration::from_secs(2), client.call(dfs_core::proto::MetaStatusRequest {})).await.ok()?.ok()?;
    Some(status.http_address).filter(|a| !a.is_empty())
}

/// Counts the time this node knows no leader, and leader changes, as Raft reports them.
async fn watch_leader(ops: Arc<Ops>, server: Arc<MetaServer<RealEnv>>) {
    let g = ops.meta.as_ref().expect("meta gauges");
    let mut metrics = server.raft().metrics();
    let mut known = metrics.borrow().current_leader;
    if known.is_none() {
        *g.leaderless_since.lock().expect("leaderless lock") = Some(Instant::now());
    }
    while metrics.changed().await.is_ok() {
        let leader = metrics.borrow().current_leader;
        if leader == known {
            continue;
        }
        let mut since = g.leaderless_since.lock().expect("leaderless lock");
        match (leader, since.take()) {
            (None, _) => *since = Some(Instant::now()),
            (Some(_), Some(t)) => {
                g.leaderless.inc_by(t.elapsed().as_secs_f64());
            }
            (Some(_), None) => {}
        }
        if leader.is_some() {
            g.leader_changes.inc();
        }
        known = leader;
    }
}

async fn metrics_handler(State(ops): State<Arc<Ops>>) -> Response {
    let text = ops.metrics().await;
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

async fn health_handler(State(ops): State<Arc<Ops>>) -> Response {
    match ops.health().await {
        Ok(text) => (StatusCode::OK, format!("ok: {text}\n")).into_response(),
        Err(text) => (StatusCode::SERVICE_UNAVAILABLE, format!("unavailable: {text}\n")).into_response(),
    }
}

async fn page_handler(State(ops): State<Arc<Ops>>) -> Response {
    let html = ops.page().await;
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], html).into_response()
}

/// A daemon's HTTP port, if it has one (`--http-listen`).
pub struct HttpPort(Option<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>)>);

impl HttpPort {
    /// Binds `addr` now (so a taken port fails the start), then serves in the background.
    pub async fn start(addr: Option<SocketAddr>, ops: &Arc<Ops>) -> anyhow::Result<HttpPort> {
        let Some(addr) = addr else { return Ok(HttpPort(None)) };
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen for HTTP on {addr}"))?;
        let app =
            Router::new().route("/metrics", get(metrics_handler)).route("/healthz", get(health_handler)).route("/", get(page_handler)).with_state(ops.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
            {
                tracing::warn!(error = %e, "HTTP server failed");
            }
        });
        Ok(HttpPort(Some((stop, task))))
    }

    /// Stops serving, once the requests being answered are.
    pub async fn stop(self) {
        if let Some((stop, task)) = self.0 {
            let _ = stop.send(());
            let _ = task.await;
        }
    }
}

/// The address a page on `listen` is reached at by others: `listen`, with an unspecified IP
/// replaced by the host of `rpc_addr` (the address the cluster knows this node by).
pub fn advertised(listen: SocketAddr, rpc_addr: Option<&str>) -> String {
    if !listen.ip().is_unspecified() {
        return listen.to_string();
    }
    let host = rpc_addr.and_then(|a| a.rsplit_once(':')).map(|(h, _)| h.to_string()).unwrap_or_else(|| "127.0.0.1".to_string());
    format!("{host}:{}", listen.port())
}

/// `dfs health HOST:PORT`: asks a daemon's `/healthz` (for container health checks, which
/// have no curl in an image made from scratch).
pub async fn probe(addr: &str) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("cannot connect to {addr}"))?;
        stream.write_all(format!("GET /healthz HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
        let mut reply = Vec::new();
        stream.take(64 * 1024).read_to_end(&mut reply).await?;
        anyhow::Ok(String::from_utf8_lossy(&reply).into_owned())
    };
    let reply = tokio::time::timeout(Duration::from_secs(5), exchange).await.with_context(|| format!("{addr} did not answer within 5 s"))??;
    let status = reply.lines().next().unwrap_or_default();
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default().trim();
    if status.split_whitespace().nth(1) == Some("200") {
        println!("{body}");
        Ok(())
    } else {
        anyhow::bail!("{addr}: {}", if body.is_empty() { status } else { body })
    }
}

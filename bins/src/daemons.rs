//! `dfs meta` and `dfs storage`: the long-running nodes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use dfs_core::auth::Role;
use dfs_core::health::HealthConfig;
use dfs_core::meta::leader::LeaderConfig;
use dfs_core::meta::{MetaConfig, MetaServer};
use dfs_core::storage_node::{StorageConfig, StorageNode};
use dfs_io_real::{serve_metadata, serve_storage};
use tokio::net::TcpListener;

use crate::ops::{self, Node, Ops};
use crate::security::{self, NodeTlsArgs};
use crate::units::{self, Rate, Span};
use crate::DEFAULT_META;

#[derive(Args)]
pub struct MetaArgs {
    /// This node's id: one of the ids in --peers, or a new id when joining with `dfs admin meta add`.
    #[arg(long, env = "DFS_ID", value_parser = clap::value_parser!(u64).range(1..))]
    id: u64,
    /// Address to listen on.
    #[arg(long, env = "DFS_LISTEN")]
    listen: SocketAddr,
    /// Directory for this node's state.
    #[arg(long, env = "DFS_DATA_DIR")]
    data_dir: PathBuf,
    /// The members a new cluster forms with, this one included: ID=HOST:PORT,... Start every
    /// member with the same list. Without it, a new node waits to be added (`dfs admin meta
    /// add`). A node restarted on its data dir rejoins as what it was either way.
    #[arg(long, env = "DFS_PEERS")]
    peers: Option<String>,
    /// Build a snapshot of the namespace (and purge the log behind it) every N applied entries,
    /// or one per 20 files in the namespace when that is more (a snapshot costs in proportion
    /// to the files).
    #[arg(long, env = "DFS_SNAPSHOT_EVERY", default_value_t = dfs_core::meta::config::SNAPSHOT_EVERY_DEFAULT, value_parser = clap::value_parser!(u64).range(1..))]
    snapshot_every: u64,
    /// Silence after which a storage node is Suspect: no new chunks go there, reads prefer
    /// others (e.g. 10s, 2s, 500ms).
    #[arg(long, env = "DFS_SUSPECT_AFTER", default_value_t = Span(leader_defaults().health.suspect_after), value_parser = units::span)]
    suspect_after: Span,
    /// Silence after which a storage node is Dead: its replicas no longer count, and are
    /// copied elsewhere.
    #[arg(long, env = "DFS_DEAD_AFTER", default_value_t = Span(leader_defaults().health.dead_after), value_parser = units::span)]
    dead_after: Span,
    /// Repair copies reading from, and (separately) writing to, one storage node at once.
    #[arg(long, env = "DFS_REPAIR_STREAMS_MAX", default_value_t = leader_defaults().repair.streams_in_max as u64, value_parser = clap::value_parser!(u64).range(1..=64))]
    repair_streams_max: u64,
    /// How long a replica no file needs waits before its node is asked to delete it (a
    /// safety delay).
    #[arg(long, env = "DFS_GC_DELAY", default_value_t = Span(leader_defaults().gc_delay), value_parser = units::span)]
    gc_delay: Span,
    /// Repair copy streams in the whole cluster at once (a stream: one large chunk, or up to
    /// 64 small ones).
    #[arg(long, env = "DFS_REPAIR_JOBS_MAX", default_value_t = leader_defaults().repair.jobs_max as u64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    repair_jobs_max: u64,
    /// How long what `rm` deletes stays in its user's trash (`/.trash/<user>/`) before it goes
    /// for good (e.g. 1d, 12h); 0 turns the trash off: deletes are immediate.
    #[arg(long, env = "DFS_TRASH_INTERVAL", default_value_t = Span(leader_defaults().trash_interval), value_parser = units::span_or_zero)]
    trash_interval: Span,
    /// Serve /metrics (Prometheus), /healthz and the status page on this HOST:PORT.
    #[arg(long, env = "DFS_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    #[command(flatten)]
    tls: NodeTlsArgs,
}

/// The leader's defaults (core's), which `--help` shows.
fn leader_defaults() -> LeaderConfig {
    LeaderConfig::default()
}

/// A storage node's defaults (core's), which `--help` shows.
pub fn storage_defaults() -> StorageConfig {
    StorageConfig::new(PathBuf::new(), String::new(), Vec::new())
}

#[derive(Args)]
pub struct StorageArgs {
    /// Address to listen on.
    #[arg(long, env = "DFS_LISTEN")]
    listen: SocketAddr,
    /// Address clients and peers reach this node at (default: the listen address).
    #[arg(long, env = "DFS_ADVERTISE")]
    advertise: Option<String>,
    /// Metadata nodes: HOST:PORT,...
    #[arg(long, env = "DFS_META", default_value = DEFAULT_META)]
    meta: String,
    /// Directory for chunk files.
    #[arg(long, env = "DFS_DATA_DIR")]
    data_dir: PathBuf,
    /// Time between heartbeats to the metadata leader (e.g. 3s, 1s, 500ms).
    #[arg(long, env = "DFS_HEARTBEAT_INTERVAL", default_value_t = Span(storage_defaults().heartbeat_interval), value_parser = units::span)]
    heartbeat_interval: Span,
    /// Milliseconds between heartbeats (the older spelling of --heartbeat-interval).
    #[arg(long, env = "DFS_HEARTBEAT_MS", hide = true, conflicts_with = "heartbeat_interval", value_parser = clap::value_parser!(u64).range(100..=60_000))]
    heartbeat_ms: Option<u64>,
    /// Pace of background verification of stored chunks, in bytes per second (e.g. 8MiB/s,
    /// the default: a full pass of 2 TB in about three days).
    #[arg(long, env = "DFS_SCRUB_RATE", default_value_t = Rate(storage_defaults().scrub_rate_bytes_per_sec), value_parser = units::rate)]
    scrub_rate: Rate,
    /// This node's rack (failure domain): with two racks or more, every chunk's replicas span
    /// at least two.
    #[arg(long, env = "DFS_RACK")]
    rack: Option<String>,
    /// Repair copies this node makes at once (metadata also bounds them).
    #[arg(long, env = "DFS_REPAIR_STREAMS_MAX", default_value_t = storage_defaults().repair_streams_max as u64, value_parser = clap::value_parser!(u64).range(1..=64))]
    repair_streams_max: u64,
    /// Chunk streams served at once (reads and writes from clients; as many again for
    /// replication from peers); more wait up to 5 s, then are refused as busy.
    #[arg(long, env = "DFS_CHUNK_STREAMS_MAX", default_value_t = storage_defaults().chunk_streams_max as u64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    chunk_streams_max: u64,
    /// Milliseconds a sender may stay silent between two frames of a chunk before the write
    /// is dropped.
    #[arg(long, env = "DFS_FRAME_TIMEOUT_MS", default_value_t = storage_defaults().frame_timeout.as_millis() as u64, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    frame_timeout_ms: u64,
    /// Bytes of free space every write must leave on the disk.
    #[arg(long, env = "DFS_SPACE_RESERVE_BYTES", default_value_t = storage_defaults().space_reserve_bytes)]
    space_reserve_bytes: u64,
    /// Serve /metrics (Prometheus), /healthz and a status page on this HOST:PORT.
    #[arg(long, env = "DFS_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    #[command(flatten)]
    tls: NodeTlsArgs,
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_peers(peers: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut members = BTreeMap::new();
    for entry in peers.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (id, addr) = entry.split_once('=').with_context(|| format!("--peers entry {entry:?} is not ID=HOST:PORT"))?;
        let id: u64 = id.trim().parse().with_context(|| format!("--peers entry {entry:?}: {id:?} is not a node id"))?;
        let addr = addr.trim();
        if addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
            bail!("--peers entry {entry:?}: {addr:?} is not HOST:PORT");
        }
        if members.insert(id, addr.to_string()).is_some() {
            bail!("--peers names node {id} twice");
        }
    }
    if members.is_empty() {
        bail!("--peers is empty");
    }
    Ok(members)
}

pub fn parse_addrs(list: &str, flag: &str) -> anyhow::Result<Vec<String>> {
    let addrs: Vec<String> = list.split(',').map(str::trim).filter(|a| !a.is_empty()).map(String::from).collect();
    if addrs.is_empty() {
        bail!("{flag} names no address");
    }
    for a in &addrs {
        if a.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
            bail!("{flag}: {a:?} is not HOST:PORT");
        }
    }
    Ok(addrs)
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
    tracing::info!("shutting down");
}

impl MetaArgs {
    pub fn id(&self) -> u64 {
        self.id
    }
}

pub async fn run_meta(args: MetaArgs) -> anyhow::Result<()> {
    let members = match &args.peers {
        Some(peers) => parse_peers(peers)?,
        None => BTreeMap::new(),
    };
    if !members.is_empty() && !members.contains_key(&args.id) {
        bail!("--id {} is not among the --peers ids {:?}", args.id, members.keys().collect::<Vec<_>>());
    }
    const WHAT: &str = "a metadata node";
    let credentials = security::node_credentials(&args.tls, Role::Meta, WHAT)?;
    let server_security = security::server_security(credentials.as_ref(), WHAT)?;
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let listener = bind(args.listen).await?;
    let mut config = MetaConfig::new(args.id, members.clone(), &args.data_dir);
    config.snapshot_every = args.snapshot_every;
    config.logs_kept_behind_snapshot = args.snapshot_every.min(config.logs_kept_behind_snapshot);
    if args.dead_after.0 <= args.suspect_after.0 {
        bail!("--dead-after ({}) must be longer than --suspect-after ({})", args.dead_after, args.suspect_after);
    }
    config.leader.health = HealthConfig { suspect_after: args.suspect_after.0, dead_after: args.dead_after.0 };
    config.leader.repair.streams_in_max = args.repair_streams_max as usize;
    config.leader.repair.streams_out_max = args.repair_streams_max as usize;
    config.leader.repair.jobs_max = args.repair_jobs_max as usize;
    config.leader.gc_delay = args.gc_delay.0;
    config.leader.trash_interval = args.trash_interval.0;
    config.http_address = args.http_listen.map(|a| ops::advertised(a, members.get(&args.id).map(String::as_str)));
    let server = MetaServer::start(security::env(), config).await.context("metadata node failed to start")?;
    let ops = Ops::new(Node::Meta(server.clone()), "meta", &args.id.to_string());
    let http = ops::HttpPort::start(args.http_listen, &ops).await?;
    tracing::info!(id = args.id, listen = %args.listen, http = ?args.http_listen, members = ?members, "metadata node serving");
    // A planned stop (SIGTERM, Ctrl-C) hands leadership over first, while this node still
    // serves, so that the cluster does not wait out an election timeout.
    let stepping_down = server.clone();
    let stop = async move {
        shutdown_signal().await;
        if stepping_down.step_down().await {
            tracing::info!("leadership handed over");
        }
    };
    serve_metadata(listener, server.clone(), ops.rpc(), server_security, stop).await.context("metadata server failed")?;
    server.shutdown().await;
    http.stop().await;
    Ok(())
}

pub async fn run_storage(args: StorageArgs) -> anyhow::Result<()> {
    let meta = parse_addrs(&args.meta, "--meta")?;
    const WHAT: &str = "a storage node";
    let credentials = security::node_credentials(&args.tls, Role::Storage, WHAT)?;
    let server_security = security::server_security(credentials.as_ref(), WHAT)?;
    let listener = bind(args.listen).await?;
    let local = listener.local_addr().context("listener address")?;
    let advertise = match args.advertise {
        Some(a) => a,
        None if local.ip().is_unspecified() => bail!("listening on {local}: give --advertise with the address others reach this node at"),
        None => local.to_string(),
    };
    let mut config = StorageConfig::new(&args.data_dir, advertise.clone(), meta);
    config.heartbeat_interval = args.heartbeat_ms.map(Duration::from_millis).unwrap_or(args.heartbeat_interval.0);
    if config.heartbeat_interval < Duration::from_millis(100) || config.heartbeat_interval > Duration::from_secs(60) {
        bail!("--heartbeat-interval {:?} is outside 100ms..=60s", config.heartbeat_interval);
    }
    config.repair_streams_max = args.repair_streams_max as usize;
    config.scrub_rate_bytes_per_sec = args.scrub_rate.0;
    if let Some(rack) = &args.rack {
        if rack.is_empty() || rack.len() > dfs_core::namespace::RACK_MAX_BYTES || rack.chars().any(char::is_control) {
            bail!("--rack {rack:?}: a name of 1..={} bytes with no control characters", dfs_core::namespace::RACK_MAX_BYTES);
        }
    }
    config.rack = args.rack.clone();
    // A node run with --insecure checks nothing, chunk access tokens included.
    config.chunk_tokens = credentials.is_some();
    config.chunk_streams_max = args.chunk_streams_max as usize;
    config.frame_timeout = Duration::from_millis(args.frame_timeout_ms);
    config.space_reserve_bytes = args.space_reserve_bytes;
    let node = StorageNode::open(security::env(), config).await.with_context(|| format!("cannot open storage in {}", args.data_dir.display()))?;
    crate::logs::set_node("storage", &node.id().to_string());
    let ops = Ops::new(Node::Storage(node.clone()), "storage", &node.id().to_string());
    let http = ops::HttpPort::start(args.http_listen, &ops).await?;
    tracing::info!(node = %node.id(), listen = %local, %advertise, http = ?args.http_listen, "storage node serving");
    let heartbeats = tokio::spawn(node.clone().run_heartbeats());
    // A planned stop (SIGTERM, Ctrl-C): the leader hears first, so it places nothing new
    // here; then the server stops taking calls and finishes those in flight.
    let stopping_node = node.clone();
    let stop = async move {
        shutdown_signal().await;
        stopping_node.say_stopping().await;
        tokio::time::sleep(dfs_core::storage_node::STOPPING_DRAIN).await;
    };
    let served = serve_storage(listener, node, ops.rpc(), server_security, stop).await;
    heartbeats.abort();
    http.stop().await;
    served.context("storage server failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_reject_garbage() {
        let m = parse_peers("1=127.0.0.1:7001, 2=localhost:7002").unwrap();
        assert_eq!(m[&2], "localhost:7002");
        for bad in ["", "1", "x=h:1", "1=h", "1=h:99999", "1=a:1,1=b:2"] {
            assert!(parse_peers(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_addrs("a:1,b:2", "--meta").is_ok());
        assert!(parse_addrs(" , ", "--meta").is_err());
        assert!(parse_addrs("a", "--meta").is_err());
    }
}

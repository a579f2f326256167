//! A storage node's settings, with their defaults (defined here once; the CLI shows these).

use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    /// The address other nodes and clients reach this node at.
    pub advertise_addr: String,
    pub meta_addrs: Vec<String>,
    pub heartbeat_interval: Duration,
    /// Limit on one replication to a peer, however large the chunk.
    pub replication_timeout: Duration,
    /// Chunk streams served at once: reads and writes from clients, and as many again for
    /// replication from peers (separate slots, so that primaries forwarding to each other
    /// never wait on each other's slots). Each write buffers its chunk: at most
    /// 2 × `chunk_streams_max` chunks in memory.
    pub chunk_streams_max: usize,
    /// How long a stream waits for a slot before it is refused with `Unavailable`.
    pub chunk_stream_wait: Duration,
    /// Longest silence between two frames of an incoming chunk before the write is dropped;
    /// forwarding to a peer is allowed this much per frame (capped by `replication_timeout`).
    pub frame_timeout: Duration,
    /// Free space a write must leave on the disk.
    pub space_reserve_bytes: u64,
    /// Repair jobs (copies pulled from peers) run at once.
    pub repair_streams_max: usize,
    /// Pace of background verification (`scrub`).
    pub scrub_rate_bytes_per_sec: u64,
    /// How often the whole inventory is reported (besides on every registration).
    pub inventory_interval: Duration,
    /// This node's failure domain: replicas of a chunk span two racks or more.
    pub rack: Option<String>,
    /// Read and write a chunk only with a valid access token (`crate::chunk_tokens`). Off only
    /// for a node run with `--insecure`, which checks nothing.
    pub chunk_tokens: bool,
}

impl StorageConfig {
    pub fn new(data_dir: impl Into<PathBuf>, advertise_addr: impl Into<String>, meta_addrs: Vec<String>) -> Self {
        StorageConfig {
            data_dir: data_dir.into(),
            advertise_addr: advertise_addr.into(),
            meta_addrs,
            heartbeat_interval: Duration::from_secs(3),
            replication_timeout: Duration::from_secs(30),
            chunk_streams_max: 16,
            chunk_stream_wait: Duration::from_secs(5),
            frame_timeout: Duration::from_secs(10),
            space_reserve_bytes: 64 * 1024 * 1024,
            repair_streams_max: 2,
            scrub_rate_bytes_per_sec: crate::scrub::SCRUB_RATE_DEFAULT_BYTES_PER_SEC,
            inventory_interval: Duration::from_secs(3600),
            rack: None,
            chunk_tokens: true,
        }
    }
}

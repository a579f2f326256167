//! The chaos scenario: every fault kind at once on a whole cluster, with checkers that match
//! exactly what the fault atlas allows to break.
//!
//! The cluster: 3 or 5 metadata nodes and 3 to 5 storage nodes (the atlas decides: with 3,
//! as many as copies, a lost or bad copy can only be made again where one was), 3 client hosts
//! with 2 workers each. Every host holds a TLS identity, and servers admit calls by it: the
//! first and third client hosts present client certificates, the second only a user's write
//! token (each of its calls is checked against the leader's token table). Each worker owns 2 *groups* of two paths (`/gK/a`, `/gK/b`) and runs
//! put (always `--force`: a new file or an overwrite), get, mv between the two paths and rm,
//! pausing up to `THINK_MAX` between operations. File contents describe themselves (a header with version and size, then bytes generated
//! from the version), so every read is checked byte for byte without storing what was written.
//!
//! **Safety phase** (`SAFETY` of simulated time): the atlas's faults come and go (see
//! `atlas`), the fault sites fire, and after every operation the checkers run:
//! - *no wrong bytes*: a read returns exactly the bytes some put wrote;
//! - *linearizable history, acknowledged writes kept*: each group's results fit one order of
//!   events (`model`), so an acknowledged put is never lost and a removed file never returns;
//! - *one leader per term* (the cluster's observer).
//!
//! **Liveness phase** (faults healed, every host up, sites off, a scrub asked of every storage
//! node): within `HEAL_BOUND` the cluster must have a leader, every storage node alive, every
//! chunk of every file at exactly its replication factor of valid copies on live nodes that
//! hold it whole, no orphan or surplus copy on any disk, and every metadata member holding the
//! same namespace; then every path reads back as the model allows, and nothing may fail. Nodes
//! decommissioned during the run are recommissioned; if the atlas says so, one node is
//! decommissioned now instead, and its drain must finish within the same bound (the node shows
//! `decommissioned`, every chunk has its factor of copies elsewhere, its own copies still
//! listed).
//!
//! A violation records a `check` event on the timeline and panics with the verdict; the seed
//! runner prints the timeline around it and `cargo sim-replay SEED`.

pub mod atlas;
pub mod model;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dfs_core::client::{ClientConfig, ClientError, DfsClient, NoProgress};
use dfs_core::env::Disk;
use dfs_core::ids::ChunkId;
use dfs_core::rpc::RpcError;
use dfs_io_sim::{SimDisk, SimEnv, SplitMix};
use madsim::net::NetSim;
use madsim::rand::Rng;
use madsim::runtime::Handle;
use madsim::time::Instant;

use self::atlas::{Atlas, FaultKind};
use self::model::{Group, Mutation, Outcome};
use crate::checks;
use crate::cluster::{fault_event, Cluster, ClusterConfig};
use crate::coverage;
use crate::faults;
use crate::seeds::SimTest;
use crate::timeline::{self, Kind};

/// The test that runs the chaos seeds (its replay command is `cargo sim-replay SEED`).
pub const TEST: SimTest = SimTest { file: "chaos", name: "chaos_ci_seeds" };

const CLIENTS: usize = 3;
const WORKERS_PER_CLIENT: usize = 2;
const GROUPS_PER_WORKER: usize = 2;
/// The smallest chunk size: files of a few chunks stay small.
const CHUNK: u64 = 64 * 1024;
use self::atlas::REPLICATION;
/// Simulated time with faults on.
pub const SAFETY: Duration = Duration::from_secs(40);
/// Simulated time the cluster has, once every fault is healed, to converge (the upload expiry
/// of abandoned uploads, then the garbage delay, fit inside it).
pub const HEAL_BOUND: Duration = Duration::from_secs(90);
/// How often storage nodes report everything they hold. A client that dies after storing a
/// chunk but before recording it leaves copies metadata never heard of; once the upload
/// expires, the next inventory finds them and they are deleted. So orphans last at most the
/// upload expiry plus one inventory interval (plus the garbage delay).
const INVENTORY_INTERVAL: Duration = Duration::from_secs(20);
/// Background scrub pace: a pass over a node's few MiB about every half minute (faster passes
/// re-hashed the same bytes over and over: a seventh of a run's CPU at 512 KiB/s). Reads find
/// damage too, and the liveness phase asks every node for a full pass anyway.
const SCRUB_RATE_BYTES_PER_SEC: u64 = 128 * 1024;
/// Longest pause of a worker between two operations (uniform in `0..THINK_MAX`). Workers that
/// never pause ran ~40 operations per simulated second, twice the CPU per seed for no more
/// kinds of interleaving; with pauses a run does ~14 per second and costs about 1 s of CPU,
/// so more seeds (more fault plans) fit in the same time.
const THINK_MAX: Duration = Duration::from_millis(400);
/// Fewest writes and reads with a definite answer a run must make while faults are on (a run
/// typically makes a hundred or more of each; the harshest fault plans seen, about 15), so
/// that a run where nothing got through fails instead of passing with nothing checked.
const DEFINITE_WRITES_MIN: u64 = 5;
const DEFINITE_READS_MIN: u64 = 5;
/// Longest the safety phase goes on past `SAFETY`, without new faults, for a run that has not
/// yet made `DEFINITE_WRITES_MIN` writes and `DEFINITE_READS_MIN` reads (a harsh plan once
/// left a run at 9 writes and 4 reads).
const SAFETY_EXTENSION_MAX: Duration = Duration::from_secs(60);
/// How often an extended safety phase looks at the count again.
const EXTENSION_POLL: Duration = Duration::from_secs(1);
/// Longest a worker's operation in flight may take to end once faults are healed.
const DRAIN_BOUND: Duration = Duration::from_secs(120);

/// Fails the run: records the verdict on the timeline (about `path`, if any) and panics.
pub fn verdict(checker: &str, path: Option<&str>, detail: impl std::fmt::Display) -> ! {
    let text = format!("VERDICT [{checker}] {}{detail}", path.map(|p| format!("{p}: ")).unwrap_or_default());
    timeline::push(timeline::Record {
        at_us: timeline::now_us(),
        host: "-".into(),
        kind: Kind::Check,
        text: text.clone(),
        paths: path.into_iter().map(str::to_string).collect(),
        file: None,
        chunk: None,
    });
    panic!("{text}");
}

/// Self-describing content: version, size, then bytes drawn from the version.
fn content(version: u64, size: usize) -> Bytes {
    let mut out = Vec::with_capacity(size.max(16));
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(size.max(16) as u64).to_le_bytes());
    let mut rng = SplitMix(version.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    while out.len() < size.max(16) {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(size.max(16));
    out.into()
}

/// The version `bytes` are, if they are exactly what `content` makes of it.
fn version_of(bytes: &[u8]) -> Result<u64, String> {
    if bytes.len() < 16 {
        return Err(format!("{} bytes: shorter than any version", bytes.len()));
    }
    let version = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    let size = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
    if size != bytes.len() as u64 {
        return Err(format!("{} bytes, but the header of version {version} says {size}", bytes.len()));
    }
    let expected = content(version, size as usize);
    match expected.iter().zip(bytes).position(|(a, b)| a != b) {
        None => Ok(version),
        Some(at) => Err(format!("differs from version {version} at byte {at} of {size}")),
    }
}

/// The outcome an error proves, if any: `None` when the operation may or may not have
/// happened.
fn proven(e: &ClientError) -> Option<Outcome> {
    match e.rpc() {
        Some(RpcError::NotFound(_)) => Some(Outcome::NotFound),
        Some(RpcError::AlreadyExists(_)) => Some(Outcome::Exists),
        _ => None,
    }
}

fn client_config(chunk_batches: bool) -> ClientConfig {
    ClientConfig {
        chunk_size: CHUNK,
        replication: REPLICATION,
        transfer_timeout: Duration::from_secs(5),
        small_chunk_batches: chunk_batches,
        ..ClientConfig::default()
    }
}

/// A worker's share of the state, with the model of each of its groups.
struct Worker {
    index: usize,
    client_host: usize,
    groups: Vec<(String, Group)>,
    ops: u64,
    ambiguous: u64,
}

fn paths(group: &str) -> [String; 2] {
    [format!("{group}/a"), format!("{group}/b")]
}

/// Shared by the workers and the fault driver.
struct Shared {
    cluster: Arc<Cluster>,
    stop: AtomicBool,
    /// Client hosts that are up.
    clients_up: Mutex<Vec<bool>>,
    next_version: Mutex<u64>,
    chunk_batches: bool,
    /// Mutations acknowledged (or refused with a proven outcome) while faults were on. Shared
    /// so that the fault driver can see a run that is not getting anything through.
    definite_writes: AtomicU64,
    /// Reads that returned a version, or proved the path absent, while faults were on.
    definite_reads: AtomicU64,
}

impl Shared {
    fn definite(&self) -> (u64, u64) {
        (self.definite_writes.load(Ordering::Relaxed), self.definite_reads.load(Ordering::Relaxed))
    }

    /// Has the run made enough definite writes and reads to prove something (see
    /// `DEFINITE_WRITES_MIN`)?
    fn proved_enough(&self) -> bool {
        let (writes, reads) = self.definite();
        writes >= DEFINITE_WRITES_MIN && reads >= DEFINITE_READS_MIN
    }
}

/// What one operation did, as the worker sees it.
enum Done {
    Put(Result<u64, ClientError>),
    Get(Result<Bytes, ClientError>),
    Other(Result<(), ClientError>),
}

impl Worker {
    async fn run(mut self, shared: Arc<Shared>) -> Worker {
        let host_name = shared.cluster.client_names[self.client_host].clone();
        let local = SimDisk::new(1 << 30);
        let config = client_config(shared.chunk_batches);
        let mut client = Arc::new(shared.cluster.client_on(self.client_host, config.clone(), &local));
        let dir = PathBuf::from(format!("/w{}", self.index));
        local.create_dir_all(&dir).await.unwrap();
        while !shared.stop.load(Ordering::Relaxed) {
            if !shared.clients_up.lock().unwrap()[self.client_host] {
                madsim::time::sleep(Duration::from_millis(100)).await;
                // A restarted client process starts with nothing of the old one.
                client = Arc::new(shared.cluster.client_on(self.client_host, config.clone(), &local));
                continue;
            }
            self.step(&shared, &host_name, &client, &local, &dir).await;
            let pause = madsim::rand::thread_rng().gen_range(Duration::ZERO..THINK_MAX);
            madsim::time::sleep(pause).await;
        }
        self
    }

    async fn step(&mut self, shared: &Shared, host: &str, client: &Arc<DfsClient<SimEnv>>, local: &SimDisk, dir: &std::path::Path) {
        let (g, slot, roll, size) = {
            let mut rng = madsim::rand::thread_rng();
            let size = match rng.gen_range(0..100) {
                0..50 => rng.gen_range(16..4096),
                50..85 => rng.gen_range(4096..CHUNK as usize),
                _ => rng.gen_range(CHUNK as usize..3 * CHUNK as usize),
            };
            (rng.gen_range(0..self.groups.len()), rng.gen_range(0..2usize), rng.gen_range(0..100), size)
        };
        let group_name = self.groups[g].0.clone();
        let [a, b] = paths(&group_name);
        let path = if slot == 0 { a.clone() } else { b.clone() };
        let read_only = self.groups[g].1.pending() >= model::PENDING_MAX;
        let op = if read_only { 40 } else { roll };
        self.ops += 1;
        let op_id = format!("op#{}.{}", self.index, self.ops);
        let c = client.clone();
        let (mutation, described, task) = match op {
            0..40 => {
                let version = {
                    let mut v = shared.next_version.lock().unwrap();
                    *v += 1;
                    *v
                };
                let data = content(version, size);
                let source = dir.join(format!("v{version}"));
                local.write_file(&source, data.clone()).await.unwrap();
                let (p, l) = (path.clone(), local.clone());
                let task = shared.cluster.client_host(self.client_host).spawn(async move {
                    let r = c.put(&source, &p, true, &NoProgress).await;
                    let _ = l.remove_file(&source).await;
                    Done::Put(r.map(|info| info.file_id))
                });
                (Some(Mutation::Put { slot, version }), format!("put {path} v{version} ({} bytes)", data.len()), task)
            }
            40..75 => {
                let out = dir.join(format!("get-{}", self.ops));
                let (p, l) = (path.clone(), local.clone());
                let task = shared.cluster.client_host(self.client_host).spawn(async move {
                    let r = c.get(&p, &out, &NoProgress).await;
                    let r = match r {
                        Ok(_) => l.read_file(&out).await.map_err(|e| ClientError::Local { path: out.clone(), source: e }),
                        Err(e) => Err(e),
                    };
                    let _ = l.remove_file(&out).await;
                    Done::Get(r)
                });
                (None, format!("get {path}"), task)
            }
            75..88 => {
                let (from, to) = if slot == 0 { (0, 1) } else { (1, 0) };
                let (src, dst) = (if from == 0 { a.clone() } else { b.clone() }, if to == 0 { a.clone() } else { b.clone() });
                let described = format!("mv {src} {dst}");
                let task = shared.cluster.client_host(self.client_host).spawn(async move { Done::Other(c.rename(&src, &dst).await) });
                (Some(Mutation::Mv { from, to }), described, task)
            }
            _ => {
                let p = path.clone();
                let task = shared.cluster.client_host(self.client_host).spawn(async move { Done::Other(c.delete(&p, false).await.map(|_| ())) });
                (Some(Mutation::Rm { slot }), format!("rm {path}"), task)
            }
        };
        let op_paths = match mutation {
            Some(Mutation::Mv { .. }) => vec![a.clone(), b.clone()],
            _ => vec![path.clone()],
        };
        timeline::record_op(host, format!("{op_id} {described}"), op_paths.clone(), None);
        let done = task.await;
        let group = &mut self.groups[g].1;
        let (result_text, file, checked) = match (done, mutation) {
            (Err(_), Some(m)) => {
                self.ambiguous += 1;
                madsim::time::sleep(Duration::from_millis(100)).await;
                ("unanswered (client host lost power)".to_string(), None, group.mutated(m, None))
            }
            (Err(_), None) => {
                madsim::time::sleep(Duration::from_millis(100)).await;
                ("unanswered (client host lost power)".to_string(), None, Ok(()))
            }
            (Ok(Done::Put(r)), Some(m)) => match r {
                Ok(file) => {
                    shared.definite_writes.fetch_add(1, Ordering::Relaxed);
                    (format!("ok file={file}"), Some(file), group.mutated(m, Some(Outcome::Done)))
                }
                Err(e) => {
                    self.ambiguous += 1;
                    (format!("failed, may have happened: {e:#}"), None, group.mutated(m, None))
                }
            },
            (Ok(Done::Other(r)), Some(m)) => match r {
                Ok(()) => {
                    shared.definite_writes.fetch_add(1, Ordering::Relaxed);
                    ("ok".to_string(), None, group.mutated(m, Some(Outcome::Done)))
                }
                Err(e) => match proven(&e) {
                    Some(outcome) => {
                        shared.definite_writes.fetch_add(1, Ordering::Relaxed);
                        (format!("refused: {e:#}"), None, group.mutated(m, Some(outcome)))
                    }
                    None => {
                        self.ambiguous += 1;
                        (format!("failed, may have happened: {e:#}"), None, group.mutated(m, None))
                    }
                },
            },
            (Ok(Done::Get(r)), None) => match r {
                Ok(bytes) => match version_of(&bytes) {
                    Ok(v) => {
                        shared.definite_reads.fetch_add(1, Ordering::Relaxed);
                        (format!("ok v{v}"), None, group.read(slot, Some(v)))
                    }
                    Err(why) => verdict("no wrong bytes", Some(&path), format!("{op_id} read {why}")),
                },
                Err(e) if proven(&e) == Some(Outcome::NotFound) => {
                    shared.definite_reads.fetch_add(1, Ordering::Relaxed);
                    ("not found".to_string(), None, group.read(slot, None))
                }
                // A read may fail while faults last; it proves nothing.
                Err(e) => (format!("failed: {e:#}"), None, Ok(())),
            },
            _ => unreachable!("operations and their results are paired"),
        };
        timeline::record_op(host, format!("{op_id} -> {result_text}"), op_paths, file);
        if let Err(v) = checked {
            verdict(
                "linearizable history",
                Some(&path),
                format!("{op_id} {described} -> {result_text}, but {group_name} could only hold (a, b) in {:?}", v.possible),
            );
        }
    }
}

/// Directed links cut, counted, so that overlapping partitions heal independently.
#[derive(Default)]
struct Links {
    cut: BTreeMap<(String, String), u32>,
}

/// A host, by name and madsim node.
#[derive(Clone)]
struct Host {
    name: String,
    id: madsim::task::NodeId,
}

impl Links {
    fn cut(&mut self, from: &Host, to: &Host) {
        let n = self.cut.entry((from.name.clone(), to.name.clone())).or_default();
        if *n == 0 {
            NetSim::current().clog_link(from.id, to.id);
        }
        *n += 1;
    }

    fn uncut(&mut self, from: &Host, to: &Host) {
        let key = (from.name.clone(), to.name.clone());
        if let Some(n) = self.cut.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                NetSim::current().unclog_link(from.id, to.id);
                self.cut.remove(&key);
            }
        }
    }
}

/// How to undo a fault.
enum Heal {
    RestartMeta(Vec<u64>),
    RestartStorage(Vec<u64>),
    RestartClient(usize),
    Uncut(Vec<(Host, Host)>),
    RestoreNet,
    ReleaseBallast(u64),
    Recommission(u64),
}

/// Injects the atlas's faults and heals them; keeps the bit-flip budget.
struct Driver {
    atlas: Atlas,
    shared: Arc<Shared>,
    links: Links,
    meta_down: BTreeSet<u64>,
    storage_down: BTreeSet<u64>,
    disks_full: BTreeSet<u64>,
    /// Storage indexes decommissioned (or perhaps: the request's answer was lost) and not
    /// surely recommissioned since.
    draining: BTreeSet<u64>,
    /// Every node a drain was asked for during the run: its request may still be on its way
    /// (a retry delivered after a partition heals) and undo a recommission, so the liveness
    /// phase recommissions each once more (soak seed 262).
    drained_ever: BTreeSet<u64>,
    slow: bool,
    /// Healing agenda: when, what.
    heals: Vec<(Instant, Heal)>,
    /// Chunks with a damaged copy not yet made good, and the storage index of that copy.
    flips: BTreeMap<ChunkId, u64>,
    /// Storage index → node id, for the flip budget.
    storage_ids: BTreeMap<u64, u64>,
}

impl Driver {
    fn cluster(&self) -> &Cluster {
        &self.shared.cluster
    }

    fn hosts(&self) -> Vec<Host> {
        let c = self.cluster();
        let mut hosts: Vec<Host> = c.meta.iter().map(|m| Host { name: format!("meta-{}", m.id), id: m.node.id() }).collect();
        hosts.extend(c.storage.iter().map(|s| Host { name: format!("storage-{}", s.index), id: s.node.id() }));
        hosts.extend(c.clients.iter().zip(&c.client_names).map(|(n, name)| Host { name: name.clone(), id: n.id() }));
        hosts
    }

    fn meta_host(&self, id: u64) -> Host {
        Host { name: format!("meta-{id}"), id: self.cluster().meta[id as usize - 1].node.id() }
    }

    /// Cuts the links between `a` and `b` (every pair, both ways unless `one_way`).
    fn cut_between(&mut self, a: &[Host], b: &[Host], one_way: bool) -> Heal {
        let mut cut = Vec::new();
        for x in a {
            for y in b {
                if x.name != y.name {
                    self.links.cut(x, y);
                    cut.push((x.clone(), y.clone()));
                    if !one_way {
                        self.links.cut(y, x);
                        cut.push((y.clone(), x.clone()));
                    }
                }
            }
        }
        Heal::Uncut(cut)
    }

    async fn heal(&mut self, heal: Heal) {
        match heal {
            Heal::RestartMeta(ids) => {
                for id in ids {
                    self.meta_down.remove(&id);
                    self.shared.cluster.restart_meta(id);
                }
            }
            Heal::RestartStorage(ids) => {
                for i in ids {
                    self.storage_down.remove(&i);
                    self.shared.cluster.restart_storage(i);
                }
            }
            Heal::RestartClient(i) => {
                self.shared.cluster.restart_client(i);
                self.shared.clients_up.lock().unwrap()[i] = true;
            }
            Heal::Uncut(links) => {
                fault_event(format!("heal partition ({} links)", links.len()));
                for (from, to) in &links {
                    self.links.uncut(from, to);
                }
            }
            Heal::RestoreNet => {
                self.slow = false;
                self.shared.cluster.restore_network();
            }
            Heal::ReleaseBallast(i) => {
                self.disks_full.remove(&i);
                fault_event(format!("storage-{i}'s disk has room again"));
                self.shared.cluster.storage[i as usize - 1].disk.set_ballast(0);
            }
            Heal::Recommission(i) => {
                fault_event(format!("storage-{i} recommissioned"));
                if self.set_draining(i, false).await {
                    self.draining.remove(&i);
                }
            }
        }
    }

    /// Liveness: every node decommissioned during the run is recommissioned, and, if the atlas
    /// says so, one node is decommissioned now (returned), each retried until it is surely done.
    async fn settle_drains(&mut self) -> Option<u64> {
        let deadline = Instant::now() + HEAL_BOUND;
        let at_end = self.atlas.drain_at_end.then(|| madsim::rand::thread_rng().gen_range(1..=self.atlas.storage_nodes));
        let mut wanted: Vec<(u64, bool)> = self.draining.union(&self.drained_ever).filter(|i| Some(**i) != at_end).map(|i| (*i, false)).collect();
        wanted.extend(at_end.map(|i| (i, true)));
        for (i, draining) in wanted {
            while !self.set_draining(i, draining).await {
                if Instant::now() >= deadline {
                    verdict(
                        "liveness",
                        None,
                        format!(
                            "storage-{i} could not be {} within {HEAL_BOUND:?} of the faults being healed",
                            if draining { "decommissioned" } else { "recommissioned" }
                        ),
                    );
                }
                madsim::time::sleep(Duration::from_millis(500)).await;
            }
            self.draining.remove(&i);
            if draining {
                timeline::record(Kind::Phase, "-", format!("storage-{i} decommissioned: its drain must finish"));
            }
        }
        at_end
    }

    /// Asks the cluster, as `dfs admin decommission` / `recommission` would, from a client host
    /// that is up. True only if the answer says it was done (a lost answer may hide that it was).
    async fn set_draining(&self, index: u64, draining: bool) -> bool {
        let host = {
            let up = self.shared.clients_up.lock().unwrap();
            (0..CLIENTS).find(|i| up[*i])
        };
        let Some(host) = host else { return false };
        let addr = self.cluster().storage[index as usize - 1].addr.to_string();
        let meta = self.cluster().meta_addrs();
        let env = self.cluster().admin_env(&SimDisk::new(1 << 20));
        let task = self.cluster().client_host(host).spawn(async move {
            let policy = dfs_core::client::RetryPolicy { deadline: Duration::from_secs(5), ..Default::default() };
            let admin = dfs_core::meta_client::MetaClient::new(env, meta, policy);
            admin.call(dfs_core::proto::SetDrainingRequest { node: addr, draining }).await
        });
        matches!(madsim::time::timeout(Duration::from_secs(10), task).await, Ok(Ok(Ok(_))))
    }

    /// Injects one fault of `kind`; `None` if there is nothing to inject it on now (every
    /// candidate already down, say). Returns how to heal it, if it needs healing.
    async fn inject(&mut self, kind: FaultKind) -> Option<Option<Heal>> {
        let mut rng = madsim::rand::thread_rng();
        let meta_up: Vec<u64> = (1..=self.atlas.meta_nodes).filter(|id| !self.meta_down.contains(id)).collect();
        let storage_up: Vec<u64> = (1..=self.atlas.storage_nodes).filter(|i| !self.storage_down.contains(i)).collect();
        let pick = |rng: &mut madsim::rand::GlobalRng, of: &[u64]| (!of.is_empty()).then(|| of[rng.gen_range(0..of.len())]);
        let heal = match kind {
            FaultKind::CrashMeta => {
                let id = pick(&mut rng, &meta_up)?;
                self.meta_down.insert(id);
                self.cluster().kill_meta(id);
                Heal::RestartMeta(vec![id])
            }
            FaultKind::CrashLeader => {
                let id = self.cluster().leader().filter(|id| !self.meta_down.contains(id))?;
                self.meta_down.insert(id);
                fault_event(format!("the leader, meta-{id}, loses power"));
                self.cluster().kill_meta(id);
                Heal::RestartMeta(vec![id])
            }
            FaultKind::CrashAllMeta => {
                if meta_up.is_empty() {
                    return None;
                }
                fault_event("every metadata node up loses power");
                for id in &meta_up {
                    self.meta_down.insert(*id);
                    self.cluster().kill_meta(*id);
                }
                Heal::RestartMeta(meta_up)
            }
            FaultKind::CrashStorage => {
                let i = pick(&mut rng, &storage_up)?;
                self.storage_down.insert(i);
                self.cluster().kill_storage(i);
                Heal::RestartStorage(vec![i])
            }
            FaultKind::CrashRack => {
                if storage_up.len() < 2 {
                    return None;
                }
                let first = rng.gen_range(0..storage_up.len());
                let second = (first + rng.gen_range(1..storage_up.len())) % storage_up.len();
                let rack = vec![storage_up[first], storage_up[second]];
                fault_event(format!("rack power: storage-{} and storage-{} at once", rack[0], rack[1]));
                for i in &rack {
                    self.storage_down.insert(*i);
                    self.cluster().kill_storage(*i);
                }
                Heal::RestartStorage(rack)
            }
            FaultKind::CrashClient => {
                let up: Vec<u64> = {
                    let clients = self.shared.clients_up.lock().unwrap();
                    (0..CLIENTS as u64).filter(|i| clients[*i as usize]).collect()
                };
                let i = pick(&mut rng, &up)? as usize;
                self.shared.clients_up.lock().unwrap()[i] = false;
                self.cluster().kill_client(i);
                Heal::RestartClient(i)
            }
            FaultKind::IsolateHost | FaultKind::IsolateLeader | FaultKind::OneWay => {
                let hosts = self.hosts();
                let victim =
                    if kind == FaultKind::IsolateLeader { self.meta_host(self.cluster().leader()?) } else { hosts[rng.gen_range(0..hosts.len())].clone() };
                let others: Vec<Host> = hosts.into_iter().filter(|h| h.name != victim.name).collect();
                if kind == FaultKind::OneWay {
                    let outgoing = rng.gen_bool(0.5);
                    fault_event(format!("{} loses its {} messages", victim.name, if outgoing { "outgoing" } else { "incoming" }));
                    if outgoing {
                        self.cut_between(std::slice::from_ref(&victim), &others, true)
                    } else {
                        self.cut_between(&others, std::slice::from_ref(&victim), true)
                    }
                } else {
                    fault_event(format!("{} cut off{}", victim.name, if kind == FaultKind::IsolateLeader { " (the leader)" } else { "" }));
                    self.cut_between(std::slice::from_ref(&victim), &others, false)
                }
            }
            FaultKind::Split => {
                let hosts = self.hosts();
                let (mut a, mut b): (Vec<Host>, Vec<Host>) = (Vec::new(), Vec::new());
                for h in hosts {
                    if rng.gen_bool(0.5) {
                        a.push(h)
                    } else {
                        b.push(h)
                    }
                }
                if a.is_empty() || b.is_empty() {
                    return None;
                }
                let names = |g: &[Host]| g.iter().map(|h| h.name.as_str()).collect::<Vec<_>>().join(",");
                fault_event(format!("network split: {{{}}} | {{{}}}", names(&a), names(&b)));
                self.cut_between(&a, &b, false)
            }
            FaultKind::StorageFromMeta => {
                let i = pick(&mut rng, &(1..=self.atlas.storage_nodes).collect::<Vec<_>>())?;
                let storage = Host { name: format!("storage-{i}"), id: self.cluster().storage[i as usize - 1].node.id() };
                let metas: Vec<Host> = (1..=self.atlas.meta_nodes).map(|id| self.meta_host(id)).collect();
                fault_event(format!("storage-{i} cut from every metadata node"));
                self.cut_between(std::slice::from_ref(&storage), &metas, false)
            }
            FaultKind::SlowNet => {
                if self.slow {
                    return None;
                }
                let (latency_ms, loss) = (rng.gen_range(20..300), rng.gen_range(0.0..0.05));
                self.slow = true;
                self.cluster().degrade_network(Duration::from_millis(1)..Duration::from_millis(latency_ms), loss);
                Heal::RestoreNet
            }
            FaultKind::DiskFull => {
                let free: Vec<u64> = (1..=self.atlas.storage_nodes).filter(|i| !self.disks_full.contains(i)).collect();
                let i = pick(&mut rng, &free)?;
                self.disks_full.insert(i);
                fault_event(format!("storage-{i}'s disk is full"));
                self.cluster().storage[i as usize - 1].disk.set_ballast(self.cluster().config.storage_capacity_bytes);
                Heal::ReleaseBallast(i)
            }
            FaultKind::BitFlip => {
                drop(rng);
                self.flip().await?;
                return Some(None);
            }
            FaultKind::Drain => {
                let candidates: Vec<u64> = (1..=self.atlas.storage_nodes).filter(|i| !self.draining.contains(i)).collect();
                let i = pick(&mut rng, &candidates)?;
                drop(rng);
                fault_event(format!("storage-{i} decommissioned"));
                // Done or perhaps done: it is undone either way.
                self.draining.insert(i);
                self.drained_ever.insert(i);
                self.set_draining(i, true).await;
                Heal::Recommission(i)
            }
        };
        Some(Some(heal))
    }

    /// Flips a bit in one durable copy of a chunk, within the budget: at most one damaged copy
    /// of a chunk at a time.
    async fn flip(&mut self) -> Option<()> {
        self.settle_flips();
        let i = madsim::rand::thread_rng().gen_range(1..=self.atlas.storage_nodes);
        let files = self.cluster().chunk_files(i).await;
        let candidates: Vec<(PathBuf, ChunkId)> = files
            .into_iter()
            .filter_map(|f| {
                let id = ChunkId::from_hex(f.file_name()?.to_str()?.trim_end_matches(".chunk"))?;
                (!self.flips.contains_key(&id)).then_some((f, id))
            })
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let (byte, bit, which) = {
            let mut rng = madsim::rand::thread_rng();
            (rng.gen_range(0..usize::MAX), rng.gen_range(0..8u8), rng.gen_range(0..candidates.len()))
        };
        let (file, id) = &candidates[which];
        if !self.cluster().storage[i as usize - 1].disk.flip_bit(file, byte, bit) {
            return None;
        }
        self.flips.insert(*id, i);
        timeline::record_chunk(Kind::Fault, &format!("storage-{i}"), format!("bit flipped in the copy on disk of chunk {id}"), *id);
        Some(())
    }

    /// Forgets the flips that are made good: the chunk is no longer referenced (its file
    /// deleted or replaced; ids are never reused), or the leader lists `REPLICATION` good
    /// copies of it elsewhere than the damaged one.
    fn settle_flips(&mut self) {
        if self.flips.is_empty() {
            return;
        }
        let Some(server) = self.cluster().leader().and_then(|id| self.cluster().meta_server(id)) else { return };
        let state = server.local_state();
        let ns = &state.namespace;
        let uploads: BTreeSet<u64> = ns.uploads().map(|u| u.id.0).collect();
        let mut listed: BTreeMap<ChunkId, Vec<u64>> = BTreeMap::new();
        for f in ns.files() {
            for c in &f.chunks {
                let id = f.chunk_id(c.index);
                if self.flips.contains_key(&id) {
                    let bad = ns.bad_replicas(id).cloned().unwrap_or_default();
                    listed.insert(id, c.replicas.iter().filter(|r| !bad.contains(r)).map(|r| r.0).collect());
                }
            }
        }
        let ids = self.storage_ids.clone();
        self.flips.retain(|chunk, index| {
            let damaged_node = ids.get(index).copied();
            match listed.get(chunk) {
                Some(replicas) => replicas.iter().filter(|r| Some(**r) != damaged_node).count() < REPLICATION as usize,
                None => chunk.owner().is_some_and(|(f, _)| uploads.contains(&f.0)),
            }
        });
    }
}

/// The chaos scenario, for the seed madsim runs with.
pub async fn scenario() {
    let seed = Handle::current().seed();
    let atlas = Atlas::from_seed(seed);
    timeline::record(Kind::Phase, "-", atlas.describe().trim_end().replace('\n', "\n                               "));
    for kind in FaultKind::ALL {
        coverage::known(kind.name());
    }
    for kind in atlas.kinds.keys() {
        coverage::enabled(kind.name());
    }
    coverage::known("clock.skew");
    for _ in &atlas.clocks {
        coverage::fired("clock.skew");
    }
    let cluster = Arc::new(Cluster::start(ClusterConfig {
        meta_nodes: atlas.meta_nodes,
        storage_nodes: atlas.storage_nodes,
        clients: CLIENTS,
        storage_heartbeat: Duration::from_millis(500),
        meta_health: Some(dfs_core::health::HealthConfig { suspect_after: Duration::from_secs(2), dead_after: Duration::from_secs(6) }),
        meta_gc_delay: Some(Duration::from_secs(2)),
        meta_upload_expiry: Some(Duration::from_secs(20)),
        storage_inventory_interval: Some(INVENTORY_INTERVAL),
        storage_scrub_rate_bytes_per_sec: Some(SCRUB_RATE_BYTES_PER_SEC),
        clock_skews: atlas.clocks.clone(),
        ..ClusterConfig::default()
    }));
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    cluster.wait_for_storage(atlas.storage_nodes as usize, Duration::from_secs(30)).await;
    // Hosts hold TLS identities (certificates of their roles); the second client host works as
    // a user with a write token and no certificate, so token checks run on every call it makes,
    // through leader changes and restarts.
    let token = cluster.create_token("chaos", "write").await;
    cluster.use_token_on(1, token);
    let storage_ids = (1..=atlas.storage_nodes).filter_map(|i| cluster.storage_node(i).map(|n| (i, n.id().0))).collect();
    let shared = Arc::new(Shared {
        cluster: cluster.clone(),
        stop: AtomicBool::new(false),
        clients_up: Mutex::new(vec![true; CLIENTS]),
        next_version: Mutex::new(0),
        chunk_batches: atlas.chunk_batches,
        definite_writes: AtomicU64::new(0),
        definite_reads: AtomicU64::new(0),
    });

    timeline::record(Kind::Phase, "-", "safety phase: faults on");
    faults::enable_plan(atlas.sites.clone());
    let mut workers = Vec::new();
    for index in 0..CLIENTS * WORKERS_PER_CLIENT {
        let groups = (0..GROUPS_PER_WORKER).map(|g| (format!("/g{}", index * GROUPS_PER_WORKER + g), Group::default())).collect();
        let worker = Worker { index, client_host: index % CLIENTS, groups, ops: 0, ambiguous: 0 };
        workers.push(madsim::task::spawn(worker.run(shared.clone())));
    }
    let mut driver = Driver {
        atlas,
        shared: shared.clone(),
        links: Links::default(),
        meta_down: BTreeSet::new(),
        storage_down: BTreeSet::new(),
        disks_full: BTreeSet::new(),
        draining: BTreeSet::new(),
        drained_ever: BTreeSet::new(),
        slow: false,
        heals: Vec::new(),
        flips: BTreeMap::new(),
        storage_ids,
    };
    let end = Instant::now() + SAFETY;
    let per_ms = driver.atlas.total_per_min() / 60_000.0;
    let gap = |per_ms: f64| {
        let u: f64 = madsim::rand::thread_rng().gen_range(f64::EPSILON..1.0);
        Duration::from_millis((-u.ln() / per_ms.max(1e-9)).min(1e9) as u64)
    };
    let mut next_fault = Instant::now() + gap(per_ms);
    let mut extended = false;
    loop {
        let next_heal = driver.heals.iter().map(|(t, _)| *t).min();
        let now = Instant::now();
        // Past `end` no new fault is injected; a run that has not yet proved anything goes on
        // (its faults healing as planned, fault sites still on) rather than failing at once:
        // a harsh plan can stall the first 40 s. Nothing here runs before `end`, so every
        // other run's timeline is the same as without the extension.
        if now >= end {
            if shared.proved_enough() || now >= end + SAFETY_EXTENSION_MAX {
                break;
            }
            if !extended {
                extended = true;
                let (writes, reads) = shared.definite();
                timeline::record(
                    Kind::Phase,
                    "-",
                    format!("safety phase extended: only {writes} writes and {reads} reads had a definite answer; no new faults, up to {SAFETY_EXTENSION_MAX:?} more"),
                );
            }
        }
        let wake = if now < end {
            next_heal.map_or(next_fault, |h| h.min(next_fault)).min(end)
        } else {
            let poll = now + EXTENSION_POLL;
            next_heal.map_or(poll, |h| h.min(poll))
        };
        madsim::time::sleep_until(wake).await;
        let now = Instant::now();
        // Heal what is due.
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut driver.heals).into_iter().partition(|(t, _)| *t <= now);
        driver.heals = later;
        for (_, heal) in due {
            driver.heal(heal).await;
        }
        if now >= next_fault && now < end {
            next_fault = now + gap(per_ms);
            let kind = driver.atlas.pick_kind(madsim::rand::thread_rng().gen_range(0.0..1.0));
            let Some(kind) = kind else { continue };
            let needs_slot = kind != FaultKind::BitFlip;
            if needs_slot && driver.heals.len() >= driver.atlas.active_max {
                continue;
            }
            if let Some(heal) = driver.inject(kind).await {
                coverage::fired(kind.name());
                if let Some(heal) = heal {
                    let hold = driver.atlas.hold(kind, madsim::rand::thread_rng().gen_range(0.0..1.0));
                    driver.heals.push((Instant::now() + hold, heal));
                }
            }
        }
    }

    // Liveness: every fault healed, every host up, sites off.
    shared.stop.store(true, Ordering::Relaxed);
    faults::disable();
    for (_, heal) in std::mem::take(&mut driver.heals) {
        driver.heal(heal).await;
    }
    timeline::record(Kind::Phase, "-", "liveness phase: faults healed, every host up, fault sites off");
    let drained = Instant::now() + DRAIN_BOUND;
    let mut done = Vec::new();
    for w in workers {
        let left = drained.saturating_duration_since(Instant::now());
        match madsim::time::timeout(left, w).await {
            Ok(Ok(w)) => done.push(w),
            Ok(Err(e)) => verdict("liveness", None, format!("a worker died: {e}")),
            Err(_) => verdict("liveness", None, format!("an operation still had no answer {DRAIN_BOUND:?} after the faults were healed")),
        }
    }
    let (ops, ambiguous): (u64, u64) = done.iter().fold((0, 0), |(o, a), w| (o + w.ops, a + w.ambiguous));
    let (writes, reads) = shared.definite();
    timeline::record(
        Kind::Phase,
        "-",
        format!("workers stopped: {ops} operations, {ambiguous} with unknown outcome, {writes} writes and {reads} reads with a definite one"),
    );
    // A run whose operations all failed, or hardly ran, checked nothing: the checkers above
    // only judge answers.
    if writes < DEFINITE_WRITES_MIN || reads < DEFINITE_READS_MIN {
        verdict(
            "work done",
            None,
            format!("only {writes} writes and {reads} reads had a definite answer under faults, even {SAFETY_EXTENSION_MAX:?} past the safety phase (at least {DEFINITE_WRITES_MIN} and {DEFINITE_READS_MIN} expected): the run proves nothing"),
        );
    }
    let drained = driver.settle_drains().await;
    converge(&cluster, driver.atlas.storage_nodes, drained).await;
    final_reads(&cluster, done).await;
    timeline::record(Kind::Phase, "-", "converged; every path reads back as the history allows");
}

/// Waits, within `HEAL_BOUND`, for a leader, every storage node alive, every chunk at exactly
/// its replication factor of valid copies, no orphan, and every metadata member identical;
/// with a node `drained` (its storage index), also for that node to show `decommissioned`,
/// its copies not counted.
async fn converge(cluster: &Arc<Cluster>, storage_nodes: u64, drained: Option<u64>) {
    let deadline = Instant::now() + HEAL_BOUND;
    let left = || deadline.saturating_duration_since(Instant::now());
    let (leader_wait, storage_wait) = (left(), left());
    let leader = madsim::time::timeout(leader_wait, cluster.wait_for_leader(leader_wait)).await;
    if leader.is_err() {
        verdict("liveness", None, format!("no metadata leader within {HEAL_BOUND:?} of the faults being healed"));
    }
    cluster.wait_for_storage(storage_nodes as usize, storage_wait).await;
    let draining: BTreeSet<u64> = drained.into_iter().collect();
    let drained_addr = drained.map(|i| cluster.storage[i as usize - 1].addr.to_string());
    checks::scrub_all(cluster).await;
    let admin = Arc::new(cluster.client(client_config(true), &SimDisk::new(1 << 20)));
    loop {
        let a = admin.clone();
        let files = cluster.on_client(async move { a.list_dir("/", true).await }).await;
        let problem = match files {
            Ok(entries) => {
                let paths: Vec<String> = entries.into_iter().filter(|e| e.kind == dfs_core::proto::EntryKind::File as i32).map(|e| e.path).collect();
                checks::replica_problems_draining(cluster, &admin, &paths, true, &draining).await
            }
            Err(e) => Some(format!("cannot list the files: {e:#}")),
        };
        let problem = match (problem, &drained_addr) {
            (None, Some(addr)) => {
                let a = admin.clone();
                match cluster.on_client(async move { a.status().await }).await {
                    Ok(status) => status
                        .storage_nodes
                        .iter()
                        .find(|n| n.node.as_ref().is_some_and(|n| n.addr == *addr))
                        .filter(|n| n.state != "decommissioned")
                        .map(|n| format!("the drained node {addr} is {}, not decommissioned", n.state)),
                    Err(e) => Some(format!("cannot read the status: {e:#}")),
                }
            }
            (problem, _) => problem,
        };
        let problem = problem.or_else(|| meta_divergence(cluster));
        match problem {
            None => return,
            Some(p) if Instant::now() >= deadline => verdict("liveness", None, format!("not healed within {HEAL_BOUND:?}: {p}")),
            Some(_) => madsim::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// What differs between the metadata members, if anything.
fn meta_divergence(cluster: &Cluster) -> Option<String> {
    let mut states = Vec::new();
    for m in &cluster.meta {
        let Some(server) = cluster.meta_server(m.id) else { return Some(format!("meta-{} is down", m.id)) };
        let state = server.local_state();
        states.push((m.id, state.last_applied, state.namespace.clone()));
    }
    states.windows(2).find(|w| (w[0].1, &w[0].2) != (w[1].1, &w[1].2)).map(|w| format!("meta-{} and meta-{} differ", w[0].0, w[1].0))
}

/// Reads every path of every group: each must succeed and fit the group's history.
async fn final_reads(cluster: &Arc<Cluster>, workers: Vec<Worker>) {
    let local = SimDisk::new(1 << 30);
    let client = Arc::new(cluster.client(client_config(true), &local));
    local.create_dir_all(std::path::Path::new("/final")).await.unwrap();
    for mut w in workers {
        for (name, group) in &mut w.groups {
            for (slot, path) in paths(name).into_iter().enumerate() {
                let (c, p, l) = (client.clone(), path.clone(), local.clone());
                let out = PathBuf::from(format!("/final/{}", path.replace('/', "_")));
                let result = cluster
                    .on_client(async move {
                        match c.get(&p, &out, &NoProgress).await {
                            Ok(_) => l.read_file(&out).await.map(Some).map_err(|e| format!("{e}")),
                            Err(e) if proven(&e) == Some(Outcome::NotFound) => Ok(None),
                            Err(e) => Err(format!("{e:#}")),
                        }
                    })
                    .await;
                let version = match result {
                    Ok(Some(bytes)) => Some(version_of(&bytes).unwrap_or_else(|why| verdict("no wrong bytes", Some(&path), format!("final read {why}")))),
                    Ok(None) => None,
                    Err(e) => verdict("liveness", Some(&path), format!("final read failed after healing: {e}")),
                };
                timeline::record_op("-", format!("final read {path} -> {}", version.map_or("not found".into(), |v| format!("v{v}"))), vec![path.clone()], None);
                if let Err(v) = group.read(slot, version) {
                    verdict(
                        "acknowledged writes kept",
                        Some(&path),
                        format!("final read found {version:?}, but {name} could only hold (a, b) in {:?}", v.possible),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_describes_itself_and_any_change_is_caught() {
        for size in [0usize, 15, 16, 17, 4096, 100_000] {
            let c = content(42, size);
            assert_eq!(version_of(&c), Ok(42), "size {size}");
        }
        let mut c = content(7, 5000).to_vec();
        c[4000] ^= 1;
        assert!(version_of(&c).unwrap_err().contains("byte 4000"));
        assert!(version_of(&content(7, 5000)[..4999]).is_err(), "a truncated read");
        assert!(version_of(&[0u8; 8]).is_err());
    }
}

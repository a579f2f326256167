//! A simulated dfs cluster: metadata and storage nodes as madsim hosts with their own IPs and
//! disks, a client host, and checkers that watch them.
//!
//! Each host's disk (`SimDisk`) belongs to the harness, not to the host, so it outlives a kill;
//! `restart_*` boots the host again on the same disk. Servers are published in slots so
//! checkers can read their state without going through the network.
//!
//! Hosts hold TLS identities unless `ClusterConfig::tls` is off, as `dfs cluster up` gives
//! them: a certificate of the cluster CA (`CLUSTER_CA`) of role `meta` for metadata nodes,
//! `storage` for storage nodes, `client` for the client hosts' everyday calls and `admin` for
//! their administration (`admin_env`). Every server admits callers by those (see
//! `dfs_io_sim::identity`), so a call a role does not allow fails here as in production.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dfs_core::auth::Role;
use dfs_core::client::{ClientConfig, DfsClient};
use dfs_core::meta::{MetaConfig, MetaServer};
use dfs_core::storage_node::{StorageConfig, StorageNode};
use dfs_io_sim::{serve, ClockSkew, CrashModel, SimClock, SimCredentials, SimDisk, SimEnv};
use madsim::rand::Rng;
use madsim::runtime::{Handle, NodeHandle};

use crate::timeline::{self, Kind};
use crate::trace;

/// A fault injected or healed: in the trace and on the timeline.
pub fn fault_event(text: impl Into<String>) {
    let text = text.into();
    trace::event(&text);
    timeline::record(Kind::Fault, "-", text);
}

const PORT: u16 = 7000;

/// The CA every host of a simulated cluster trusts, and whose certificates its hosts present.
pub const CLUSTER_CA: u64 = 1;

/// What a killed host's disk keeps of contents written but not synced: a third of such files
/// were written back whole before the cut, a third in part (torn), a third not at all. Only
/// what was synced may be counted on; this makes sure nothing counts on less.
const POWER_CUT: CrashModel = CrashModel { keep_unsynced: 0.33, torn: 0.33 };

#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub meta_nodes: u64,
    pub storage_nodes: u64,
    pub storage_capacity_bytes: u64,
    pub storage_heartbeat: Duration,
    /// Metadata snapshots every this many entries; small values exercise snapshots and log
    /// purges (and so catch-up by snapshot install).
    pub meta_snapshot_every: u64,
    pub meta_logs_kept_behind_snapshot: u64,
    /// Snapshots travel in pieces of this size (small: many pieces per transfer).
    pub meta_snapshot_piece_bytes: u64,
    /// Metadata timers (`MetaConfig`'s defaults unless set): storage node health, garbage
    /// delay, upload expiry. Short ones make death, repair, GC and expiry happen inside a
    /// short run.
    pub meta_health: Option<dfs_core::health::HealthConfig>,
    pub meta_gc_delay: Option<Duration>,
    pub meta_upload_expiry: Option<Duration>,
    /// How often storage nodes report their whole inventory (default: `StorageConfig`'s).
    /// The inventory is what finds a copy metadata never heard of (a client that died before
    /// recording its chunk), so it bounds how long such an orphan lasts.
    pub storage_inventory_interval: Option<Duration>,
    /// Background verification pace (default: `StorageConfig`'s). Every byte a scrub reads
    /// is hashed in wall time, so a long run with little data scrubs it over and over.
    pub storage_scrub_rate_bytes_per_sec: Option<u64>,
    /// Hosts whose clocks are skewed, by name (`meta-1`, `storage-3`, `client-2`); the others
    /// read the simulation's clock.
    pub clock_skews: BTreeMap<String, ClockSkew>,
    /// Client hosts (`client` when one, `client-1`.. otherwise).
    pub clients: usize,
    /// Whether hosts hold TLS identities and servers admit callers by them (the default, as
    /// `dfs cluster up`); off, every host is an `--insecure` one.
    pub tls: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            meta_nodes: 3,
            storage_nodes: 3,
            storage_capacity_bytes: 1 << 30,
            storage_heartbeat: Duration::from_secs(1),
            meta_snapshot_every: 10_000,
            meta_logs_kept_behind_snapshot: 1000,
            meta_snapshot_piece_bytes: 1 << 20,
            meta_health: None,
            meta_gc_delay: None,
            meta_upload_expiry: None,
            storage_inventory_interval: None,
            storage_scrub_rate_bytes_per_sec: None,
            clock_skews: BTreeMap::new(),
            clients: 1,
            tls: true,
        }
    }
}

type Slot<T> = Arc<Mutex<Option<Arc<T>>>>;

pub struct MetaHost {
    pub id: u64,
    pub addr: SocketAddr,
    pub node: NodeHandle,
    pub disk: SimDisk,
    pub server: Slot<MetaServer<SimEnv>>,
}

pub struct StorageHost {
    pub index: u64,
    pub addr: SocketAddr,
    pub node: NodeHandle,
    pub disk: SimDisk,
    pub server: Slot<StorageNode<SimEnv>>,
}

pub struct Cluster {
    pub config: ClusterConfig,
    pub meta: Vec<MetaHost>,
    pub storage: Vec<StorageHost>,
    /// The client hosts; requests come only from them.
    pub clients: Vec<NodeHandle>,
    pub client_names: Vec<String>,
    /// term → the node seen leading it (checked by the observer).
    leaders: Arc<Mutex<BTreeMap<u64, u64>>>,
    /// Client hosts that act as a user holding a token instead of a certificate.
    client_tokens: Mutex<BTreeMap<usize, String>>,
}

fn ip(a: u8, b: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, a, b))
}

impl Cluster {
    /// Boots every host. Call from inside a madsim runtime.
    pub fn start(config: ClusterConfig) -> Cluster {
        let handle = Handle::current();
        let members: BTreeMap<u64, String> = (1..=config.meta_nodes).map(|id| (id, SocketAddr::new(ip(0, id as u8), PORT).to_string())).collect();
        let meta_addrs: Vec<String> = members.values().cloned().collect();

        let meta = (1..=config.meta_nodes)
            .map(|id| {
                let addr = SocketAddr::new(ip(0, id as u8), PORT);
                let disk = SimDisk::new(1 << 30);
                let server: Slot<MetaServer<SimEnv>> = Arc::default();
                let (members, disk2, slot) = (members.clone(), disk.clone(), server.clone());
                let (snapshot_every, logs_kept, piece_bytes) =
                    (config.meta_snapshot_every, config.meta_logs_kept_behind_snapshot, config.meta_snapshot_piece_bytes);
                let (health, gc_delay, upload_expiry) = (config.meta_health, config.meta_gc_delay, config.meta_upload_expiry);
                let skew = config.clock_skews.get(&format!("meta-{id}")).copied();
                let credentials = identity(config.tls, Role::Meta, &format!("meta-{id}"));
                let node = handle
                    .create_node()
                    .name(format!("meta-{id}"))
                    .ip(addr.ip())
                    .init(move || {
                        let (members, disk, slot, credentials) = (members.clone(), disk2.clone(), slot.clone(), credentials.clone());
                        async move {
                            boot_delay().await;
                            let mut config = MetaConfig::new(id, members, "/meta");
                            config.snapshot_every = snapshot_every;
                            config.logs_kept_behind_snapshot = logs_kept;
                            config.snapshot_transfer.piece_bytes = piece_bytes;
                            if let Some(health) = health {
                                config.leader.health = health;
                            }
                            config.leader.gc_delay = gc_delay.unwrap_or(config.leader.gc_delay);
                            config.leader.upload_expiry = upload_expiry.unwrap_or(config.leader.upload_expiry);
                            // A host's monotonic clock starts again at boot; its skew stays.
                            let env = env_for(disk, skew).with_credentials(credentials.clone());
                            let server = MetaServer::start(env, config).await.expect("metadata node starts");
                            *slot.lock().unwrap() = Some(server.clone());
                            serve(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT), server, credentials).await.expect("serve");
                        }
                    })
                    .build();
                // openraft's timers drift with the host's clock too (its offset does not
                // matter to them: they only measure durations).
                if let Some(skew) = skew {
                    dfs_io_sim::runtime::set_clock_rate(node.id(), skew.rate);
                }
                MetaHost { id, addr, node, disk, server }
            })
            .collect();

        let storage = (1..=config.storage_nodes)
            .map(|index| {
                let addr = SocketAddr::new(ip(1, index as u8), PORT);
                let disk = SimDisk::new(config.storage_capacity_bytes);
                let server: Slot<StorageNode<SimEnv>> = Arc::default();
                let (meta_addrs, disk2, slot, heartbeat) = (meta_addrs.clone(), disk.clone(), server.clone(), config.storage_heartbeat);
                let (inventory_interval, scrub_rate) = (config.storage_inventory_interval, config.storage_scrub_rate_bytes_per_sec);
                let skew = config.clock_skews.get(&format!("storage-{index}")).copied();
                let credentials = identity(config.tls, Role::Storage, &format!("storage-{index}"));
                let node = handle
                    .create_node()
                    .name(format!("storage-{index}"))
                    .ip(addr.ip())
                    .init(move || {
                        let (meta_addrs, disk, slot, credentials) = (meta_addrs.clone(), disk2.clone(), slot.clone(), credentials.clone());
                        async move {
                            boot_delay().await;
                            let mut config = StorageConfig::new("/data", addr.to_string(), meta_addrs);
                            config.heartbeat_interval = heartbeat;
                            config.inventory_interval = inventory_interval.unwrap_or(config.inventory_interval);
                            config.scrub_rate_bytes_per_sec = scrub_rate.unwrap_or(config.scrub_rate_bytes_per_sec);
                            let env = env_for(disk, skew).with_credentials(credentials.clone());
                            let node = StorageNode::open(env, config).await.expect("storage node opens");
                            *slot.lock().unwrap() = Some(node.clone());
                            madsim::task::spawn(node.clone().run_heartbeats());
                            serve(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT), node, credentials).await.expect("serve");
                        }
                    })
                    .build();
                StorageHost { index, addr, node, disk, server }
            })
            .collect();

        let client_names: Vec<String> =
            (1..=config.clients.max(1)).map(|i| if config.clients <= 1 { "client".to_string() } else { format!("client-{i}") }).collect();
        let clients = client_names.iter().enumerate().map(|(i, name)| handle.create_node().name(name).ip(ip(2, i as u8 + 1)).build()).collect();
        let cluster = Cluster { config, meta, storage, clients, client_names, leaders: Arc::default(), client_tokens: Mutex::default() };
        cluster.spawn_leader_observer();
        cluster
    }

    pub fn meta_addrs(&self) -> Vec<String> {
        self.meta.iter().map(|m| m.addr.to_string()).collect()
    }

    /// A client with a disk of its own, to be used inside `on_client`.
    pub fn client(&self, config: ClientConfig, disk: &SimDisk) -> DfsClient<SimEnv> {
        DfsClient::new(self.client_env(disk), self.meta_addrs(), config)
    }

    /// A client for client host `i` (0-based), reading that host's clock.
    pub fn client_on(&self, i: usize, config: ClientConfig, disk: &SimDisk) -> DfsClient<SimEnv> {
        let skew = self.config.clock_skews.get(&self.client_names[i]).copied();
        let credentials = match self.client_tokens.lock().unwrap().get(&i) {
            Some(token) if self.config.tls => SimCredentials::tls(CLUSTER_CA).with_token(token.clone()),
            _ => self.credentials(Role::Client, &self.client_names[i]),
        };
        DfsClient::new(env_for(disk.clone(), skew).with_credentials(credentials), self.meta_addrs(), config)
    }

    /// From now on, clients made for client host `i` (`client_on`) present no certificate but
    /// `token`, as a user with only `DFS_TOKEN` set.
    pub fn use_token_on(&self, i: usize, token: String) {
        fault_event(format!("{} works with a user's token from now on", self.client_names[i]));
        self.client_tokens.lock().unwrap().insert(i, token);
    }

    /// A user's token of `role` over the whole namespace, made by an admin (retried until it
    /// is made, or for a minute).
    pub async fn create_token(&self, name: &str, role: &str) -> String {
        let admin = dfs_core::meta_client::MetaClient::new(self.admin_env(&SimDisk::new(1 << 20)), self.meta_addrs(), Default::default());
        let request = dfs_core::proto::CreateTokenRequest { name: name.into(), role: role.into(), ..Default::default() };
        let made = self.on_client(async move { admin.call(request).await }).await;
        made.unwrap_or_else(|e| panic!("an admin could not make a token: {e}")).token
    }

    /// The environment of a client host's everyday calls: a `client` certificate.
    pub fn client_env(&self, disk: &SimDisk) -> SimEnv {
        SimEnv::new(disk.clone()).with_credentials(self.credentials(Role::Client, &self.client_names[0]))
    }

    /// The environment of a client host's administration (membership, draining, scrub
    /// orders): an `admin` certificate, as `dfs cluster up` leaves in the config directory.
    pub fn admin_env(&self, disk: &SimDisk) -> SimEnv {
        SimEnv::new(disk.clone()).with_credentials(self.credentials(Role::Admin, "admin"))
    }

    /// What a host of `role` named `name` holds in this cluster.
    pub fn credentials(&self, role: Role, name: &str) -> SimCredentials {
        identity(self.config.tls, role, name)
    }

    /// Runs `work` on the client host (the only host a scenario's requests come from).
    pub async fn on_client<F, T>(&self, work: F) -> T
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.client_host(0).spawn(work).await.expect("client task")
    }

    /// Starts `work` on the client host and returns at once.
    pub fn spawn_on_client<F, T>(&self, work: F) -> madsim::task::JoinHandle<T>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.client_host(0).spawn(work)
    }

    /// Client host `i` (0-based) as it is now: a handle taken before a restart would spawn
    /// onto the killed incarnation, where tasks never run.
    pub fn client_host(&self, i: usize) -> NodeHandle {
        Handle::current().get_node(self.clients[i].id()).expect("client host exists")
    }

    /// The leader as the live metadata nodes see it: the node that believes it leads the
    /// highest term.
    pub fn leader(&self) -> Option<u64> {
        self.live_meta_servers()
            .filter_map(|(id, s)| {
                let m = s.raft().metrics().borrow().clone();
                (m.current_leader == Some(id)).then_some((m.current_term, id))
            })
            .max()
            .map(|(_, id)| id)
    }

    pub async fn wait_for_leader(&self, limit: Duration) -> u64 {
        wait_until(limit, "a metadata leader", || self.leader()).await
    }

    /// The server of metadata node `id`, if it is up.
    pub fn meta_server(&self, id: u64) -> Option<Arc<MetaServer<SimEnv>>> {
        self.meta[id as usize - 1].server.lock().unwrap().clone()
    }

    fn live_meta_servers(&self) -> impl Iterator<Item = (u64, Arc<MetaServer<SimEnv>>)> + '_ {
        self.meta.iter().filter_map(|m| m.server.lock().unwrap().clone().map(|s| (m.id, s)))
    }

    /// Waits until the leader sees `n` storage nodes alive.
    /// Waits until the leader has heard lately from at least `n` storage nodes (registered is
    /// not enough: a node stays registered after it dies).
    pub async fn wait_for_storage(&self, n: usize, limit: Duration) {
        wait_until(limit, &format!("{n} live storage nodes"), || {
            let leader = self.leader()?;
            let server = self.meta[leader as usize - 1].server.lock().unwrap().clone()?;
            (server.alive_storage_nodes()? >= n).then_some(())
        })
        .await;
    }

    /// Kills a metadata host as a power cut would: the process dies at once and its disk keeps
    /// what was synced, and of what was not, per file, nothing, all of it or a torn part
    /// (`POWER_CUT`).
    pub fn kill_meta(&self, id: u64) {
        let host = &self.meta[id as usize - 1];
        *host.server.lock().unwrap() = None;
        let report = host.disk.crash_with(POWER_CUT, madsim::rand::thread_rng().gen());
        fault_event(format!("kill meta-{id} (power cut: unsynced contents of {} files kept, {} torn)", report.kept, report.torn));
        Handle::current().kill(host.node.id());
    }

    /// Boots a killed metadata host again on its disk.
    pub fn restart_meta(&self, id: u64) {
        let host = &self.meta[id as usize - 1];
        fault_event(format!("restart meta-{id}"));
        Handle::current().restart(host.node.id());
    }

    /// Kills storage host `index` (1-based) as a power cut would: its disk keeps what was
    /// synced, directory entries included, and of unsynced contents, per file, nothing, all of
    /// it or a torn part (`POWER_CUT`).
    pub fn kill_storage(&self, index: u64) {
        let host = &self.storage[index as usize - 1];
        *host.server.lock().unwrap() = None;
        let report = host.disk.crash_with(POWER_CUT, madsim::rand::thread_rng().gen());
        fault_event(format!("kill storage-{index} (power cut: unsynced contents of {} files kept, {} torn)", report.kept, report.torn));
        Handle::current().kill(host.node.id());
    }

    /// Kills client host `i` (0-based): every request in flight from it ends unanswered.
    pub fn kill_client(&self, i: usize) {
        fault_event(format!("kill {} (power cut)", self.client_names[i]));
        Handle::current().kill(self.clients[i].id());
    }

    pub fn restart_client(&self, i: usize) {
        fault_event(format!("restart {}", self.client_names[i]));
        Handle::current().restart(self.clients[i].id());
    }

    /// Boots a killed storage host again on its disk.
    pub fn restart_storage(&self, index: u64) {
        let host = &self.storage[index as usize - 1];
        fault_event(format!("restart storage-{index}"));
        Handle::current().restart(host.node.id());
    }

    /// A slow, lossy network for everyone: each message takes `latency` (instead of madsim's
    /// 1-10 ms), and `loss` of them are lost (on madsim's reliable connections a loss shows
    /// as a retry after a back-off, so as a longer delay; a lost connect is refused).
    pub fn degrade_network(&self, latency: std::ops::Range<Duration>, loss: f64) {
        fault_event(format!("network degraded: latency {latency:?}, loss {loss:.3}"));
        madsim::net::NetSim::current().update_config(|c| {
            c.send_latency = latency;
            c.packet_loss_rate = loss;
        });
    }

    /// The network as it was before `degrade_network`.
    pub fn restore_network(&self) {
        fault_event("network restored");
        madsim::net::NetSim::current().update_config(|c| *c = madsim::net::Config::default());
    }

    /// Cuts storage host `index` off the network (from clients, peers and metadata alike),
    /// in both directions or one.
    pub fn partition_storage(&self, index: u64, cut: Cut) {
        let node = self.storage[index as usize - 1].node.id();
        fault_event(format!("partition storage-{index} ({cut:?})"));
        let net = madsim::net::NetSim::current();
        match cut {
            Cut::Both => net.clog_node(node),
            Cut::Outgoing => net.clog_node_out(node),
            Cut::Incoming => net.clog_node_in(node),
        }
    }

    pub fn heal_storage(&self, index: u64) {
        let node = self.storage[index as usize - 1].node.id();
        fault_event(format!("heal storage-{index}"));
        madsim::net::NetSim::current().unclog_node(node);
    }

    /// Cuts storage host `index` off from every metadata node (both ways), while clients and
    /// other storage nodes still reach it.
    pub fn cut_storage_from_meta(&self, index: u64) {
        let node = self.storage[index as usize - 1].node.id();
        fault_event(format!("cut storage-{index} from metadata"));
        let net = madsim::net::NetSim::current();
        for m in &self.meta {
            net.clog_link(node, m.node.id());
            net.clog_link(m.node.id(), node);
        }
    }

    pub fn uncut_storage_from_meta(&self, index: u64) {
        let node = self.storage[index as usize - 1].node.id();
        fault_event(format!("reconnect storage-{index} to metadata"));
        let net = madsim::net::NetSim::current();
        for m in &self.meta {
            net.unclog_link(node, m.node.id());
            net.unclog_link(m.node.id(), node);
        }
    }

    /// Cuts storage host `index` off from the clients (both ways), while metadata and other
    /// storage nodes still reach it: it heartbeats as healthy but serves no client.
    pub fn cut_storage_from_clients(&self, index: u64, cut: bool) {
        let node = self.storage[index as usize - 1].node.id();
        fault_event(format!("{} storage-{index} {} the clients", if cut { "cut" } else { "reconnect" }, if cut { "from" } else { "to" }));
        let net = madsim::net::NetSim::current();
        for client in self.clients.iter().map(|c| c.id()) {
            if cut {
                net.clog_link(node, client);
                net.clog_link(client, node);
            } else {
                net.unclog_link(node, client);
                net.unclog_link(client, node);
            }
        }
    }

    /// Repair counters of the current leader (since it became leader), if there is one.
    pub fn repair_stats(&self) -> Option<dfs_core::repair::RepairStats> {
        let leader = self.leader()?;
        self.meta_server(leader)?.repair_stats()
    }

    /// The chunk files on storage host `index`, by path (what a listing would show now).
    pub async fn chunk_files(&self, index: u64) -> Vec<std::path::PathBuf> {
        let disk = &self.storage[index as usize - 1].disk;
        disk.files_under(std::path::Path::new("/data/chunks")).into_iter().filter(|p| p.extension().is_some_and(|e| e == "chunk")).collect()
    }

    /// The server of storage host `index`, if it is up.
    pub fn storage_node(&self, index: u64) -> Option<Arc<StorageNode<SimEnv>>> {
        self.storage[index as usize - 1].server.lock().unwrap().clone()
    }

    pub fn meta_is_up(&self, id: u64) -> bool {
        self.meta[id as usize - 1].server.lock().unwrap().is_some()
    }

    /// Cuts a metadata host off the network in both directions, or only its outgoing or
    /// incoming messages.
    pub fn partition_meta(&self, id: u64, cut: Cut) {
        let node = self.meta[id as usize - 1].node.id();
        fault_event(format!("partition meta-{id} ({cut:?})"));
        let net = madsim::net::NetSim::current();
        match cut {
            Cut::Both => net.clog_node(node),
            Cut::Outgoing => net.clog_node_out(node),
            Cut::Incoming => net.clog_node_in(node),
        }
    }

    pub fn heal_meta(&self, id: u64) {
        let node = self.meta[id as usize - 1].node.id();
        fault_event(format!("heal meta-{id}"));
        madsim::net::NetSim::current().unclog_node(node);
    }

    /// One metadata fault, chosen by the seed, held for a random while and then healed: a
    /// power cut of any node or of the leader, a partition of the leader (both ways or one
    /// way), or a power cut of every metadata node at once.
    pub async fn meta_fault(&self) {
        let mut rng = madsim::rand::thread_rng();
        let victim = self.leader().unwrap_or_else(|| rng.gen_range(1..=self.meta.len() as u64));
        let any = rng.gen_range(1..=self.meta.len() as u64);
        let hold = |lo: u64, hi: u64| Duration::from_millis(madsim::rand::thread_rng().gen_range(lo..hi));
        match rng.gen_range(0..6) {
            5 => self.membership_change(any, victim).await,
            0 | 1 => {
                let id = if rng.gen_bool(0.5) { any } else { victim };
                self.kill_meta(id);
                madsim::time::sleep(hold(100, 4000)).await;
                self.restart_meta(id);
            }
            2 => {
                self.partition_meta(victim, Cut::Both);
                madsim::time::sleep(hold(1000, 5000)).await;
                self.heal_meta(victim);
            }
            3 => {
                let cut = if rng.gen_bool(0.5) { Cut::Outgoing } else { Cut::Incoming };
                self.partition_meta(victim, cut);
                madsim::time::sleep(hold(1000, 5000)).await;
                self.heal_meta(victim);
            }
            _ => {
                fault_event("every metadata node loses power");
                for m in &self.meta {
                    self.kill_meta(m.id);
                }
                madsim::time::sleep(hold(100, 3000)).await;
                for m in &self.meta {
                    self.restart_meta(m.id);
                }
            }
        }
    }

    /// Removes metadata node `id` from the cluster and adds it back, through the admin
    /// client; with even odds, `crash` loses power in the middle of the change. Returns once
    /// `id` is a voter again.
    async fn membership_change(&self, id: u64, crash: u64) {
        let addr = self.meta[id as usize - 1].addr.to_string();
        let admin = Arc::new(DfsClient::new(self.admin_env(&SimDisk::new(1 << 20)), self.meta_addrs(), ClientConfig::default()));
        fault_event(format!("membership: remove meta-{id}, then add it back"));
        let change = {
            let admin = admin.clone();
            self.spawn_on_client(async move {
                // Either step may fail while faults last; the re-add is retried below.
                let removed = admin.remove_meta_member(id).await;
                let added = admin.add_meta_member(id, &addr).await;
                (removed.map(|_| ()).map_err(|e| format!("{e:#}")), added.map(|_| ()).map_err(|e| format!("{e:#}")))
            })
        };
        let mid_change_crash = madsim::rand::thread_rng().gen_bool(0.5);
        if mid_change_crash {
            madsim::time::sleep(Duration::from_millis(madsim::rand::thread_rng().gen_range(0..300))).await;
            self.kill_meta(crash);
            madsim::time::sleep(Duration::from_millis(madsim::rand::thread_rng().gen_range(100..3000))).await;
            self.restart_meta(crash);
        }
        let (removed, added) = change.await.expect("membership task");
        fault_event(format!("membership change of meta-{id}: remove {removed:?}, add {added:?}"));
        // Faults healed: the node must become a voter again.
        let addr = self.meta[id as usize - 1].addr.to_string();
        let deadline = madsim::time::Instant::now() + Duration::from_secs(120);
        loop {
            let (a, addr2) = (admin.clone(), addr.clone());
            let result = self.spawn_on_client(async move { a.add_meta_member(id, &addr2).await.map_err(|e| format!("{e:#}")) }).await.expect("task");
            match result {
                Ok(status) if status.members.iter().any(|m| m.id == id && m.role == "voter") => break,
                other => {
                    assert!(madsim::time::Instant::now() < deadline, "meta-{id} could not rejoin the cluster: {other:?}");
                    madsim::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        fault_event(format!("meta-{id} is a voter again"));
    }

    /// Every metadata member is up, has applied the same log and holds the same namespace.
    pub async fn wait_all_meta_converged(&self, limit: Duration) {
        self.wait_converged(limit, self.meta.len()).await
    }

    /// Every live metadata node (at least two) has applied the same log and holds the same
    /// namespace.
    pub async fn wait_meta_converged(&self, limit: Duration) {
        self.wait_converged(limit, 2).await
    }

    async fn wait_converged(&self, limit: Duration, at_least: usize) {
        wait_until(limit, &format!("at least {at_least} metadata nodes to converge"), || {
            let states: Vec<_> = self
                .live_meta_servers()
                .map(|(_, s)| {
                    let st = s.local_state();
                    (st.last_applied, st.namespace.clone())
                })
                .collect();
            (states.len() >= at_least && states.windows(2).all(|w| w[0] == w[1])).then_some(())
        })
        .await;
    }

    /// Samples every live metadata node's Raft state every 10 ms of simulated time and fails
    /// the run if two nodes ever lead the same term.
    fn spawn_leader_observer(&self) {
        let servers: Vec<(u64, Slot<MetaServer<SimEnv>>)> = self.meta.iter().map(|m| (m.id, m.server.clone())).collect();
        let leaders = self.leaders.clone();
        madsim::task::spawn(async move {
            loop {
                for (id, slot) in &servers {
                    let Some(server) = slot.lock().unwrap().clone() else { continue };
                    // Read in place: cloning the whole metrics every 10 ms was a visible share
                    // of a run's time.
                    let (leader, state, term) = {
                        let metrics = server.raft().metrics();
                        let m = metrics.borrow();
                        (m.current_leader, m.state, m.current_term)
                    };
                    if leader == Some(*id) && state == openraft::ServerState::Leader {
                        let mut seen = leaders.lock().unwrap();
                        if !seen.contains_key(&term) {
                            timeline::record(Kind::Leader, &format!("meta-{id}"), format!("leader of term {term}"));
                        }
                        let previous = *seen.entry(term).or_insert(*id);
                        assert_eq!(previous, *id, "two leaders in term {term}: nodes {previous} and {id}");
                    }
                }
                madsim::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }

    /// Terms in which a leader was observed, with that leader.
    pub fn observed_leaders(&self) -> BTreeMap<u64, u64> {
        self.leaders.lock().unwrap().clone()
    }
}

/// How a partition cuts a host off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    Both,
    Outgoing,
    Incoming,
}

/// What a host of `role` named `name` holds: a certificate of the cluster CA, or (TLS off)
/// nothing.
fn identity(tls: bool, role: Role, name: &str) -> SimCredentials {
    match tls {
        true => SimCredentials::tls(CLUSTER_CA).with_cert(role, name, CLUSTER_CA),
        false => SimCredentials::insecure(),
    }
}

/// A host's environment, its clock skewed if it is one of those `ClusterConfig::clock_skews`
/// names.
fn env_for(disk: SimDisk, skew: Option<ClockSkew>) -> SimEnv {
    match skew {
        Some(skew) => SimEnv::with_clock(disk, SimClock::skewed(skew)),
        None => SimEnv::new(disk),
    }
}

/// Hosts boot at slightly different moments, as real machines do. (Booting all at one
/// instant aligns every timer in the cluster, which no real deployment sees.)
async fn boot_delay() {
    let ms = madsim::rand::thread_rng().gen_range(0..500);
    madsim::time::sleep(Duration::from_millis(ms)).await;
}

/// Polls `probe` every 50 ms of simulated time until it yields, or panics after `limit`.
pub async fn wait_until<T>(limit: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = madsim::time::Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(madsim::time::Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        madsim::time::sleep(Duration::from_millis(50)).await;
    }
}

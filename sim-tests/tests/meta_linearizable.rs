//! Client-visible metadata operations are linearizable, under metadata faults.
//!
//! Three clients, each with its own connection state and request ids, plus three workers
//! sharing a fourth client (so that their concurrent creates, commits and lookups go to
//! metadata together in batch calls, `client::meta_batch`), work on two paths at once:
//! overwrite (`put --force`), read (`get`), delete (`rm`), while metadata nodes lose power
//! (alone or all at once), the leader is cut off (both ways or one way), and replies are lost
//! now and then (`LOSE_REPLY_RATE`), so that clients retry requests that took effect. Every
//! operation is recorded with its invocation and its answer, per path, and the history is
//! checked with stateright's linearizability tester against a register: a path holds nothing
//! or one version, and every answer must fit one order of the operations that respects real
//! time. An operation that ended in an ambiguous error (timeout, unreachable) stays "in
//! flight": it may or may not have taken effect. Each version has its own size, so a read or
//! a delete names the version it saw.
//!
//! After the faults, every member converges, and a final read of each path is part of the
//! history.

#![cfg(madsim)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dfs_core::client::{ClientConfig, ClientError, DfsClient, NoProgress, RetryPolicy};
use dfs_core::env::Disk;
use dfs_core::fault::Site;
use dfs_core::rpc::RpcError;
use dfs_io_sim::{SimDisk, SimEnv};
use dfs_sim_tests::cluster::{Cluster, ClusterConfig};
use dfs_sim_tests::faults;
use dfs_sim_tests::seeds::{self, SimTest};
use dfs_sim_tests::trace;
use madsim::rand::Rng;
use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};

const KEYS: usize = 2;
const CLIENTS: u64 = 3;
/// Workers sharing one client, whose calls are batched together.
const SHARING_WORKERS: u64 = 3;
const OPS_PER_CLIENT: usize = 8;
const FAULT_ROUNDS: usize = 4;
/// Fewest client operations (of 48) with a definite answer for the history to be worth
/// checking.
const DEFINITE_MIN: usize = 12;
/// Chance that a reply is lost while the clients work (half of the firings lose it, the rest
/// delay it): a retried request whose first attempt took effect is the case `Command::Once`
/// exists for, and power loss and partitions alone make it rare.
const LOSE_REPLY_RATE: f64 = 0.05;

/// What a path holds: nothing, or the version with this size.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
struct Register(Option<u64>);

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum Op {
    Write(u64),
    Read,
    Delete,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum Ret {
    Written,
    Read(Option<u64>),
    Deleted(u64),
    Absent,
}

impl SequentialSpec for Register {
    type Op = Op;
    type Ret = Ret;

    fn invoke(&mut self, op: &Op) -> Ret {
        match op {
            Op::Write(v) => {
                self.0 = Some(*v);
                Ret::Written
            }
            Op::Read => Ret::Read(self.0),
            Op::Delete => match self.0.take() {
                Some(v) => Ret::Deleted(v),
                None => Ret::Absent,
            },
        }
    }
}

type Tester = LinearizabilityTester<u64, Register>;

/// The recorded history: one tester per path (linearizability is local), plus a readable log.
#[derive(Default)]
struct History {
    testers: BTreeMap<usize, Tester>,
    log: Vec<String>,
}

fn content(version: u64) -> Bytes {
    Bytes::from(vec![(version % 251) as u8; version as usize])
}

/// Only "no such file" is a definite answer among errors; everything else may or may not have
/// taken effect.
fn not_found(e: &ClientError) -> bool {
    matches!(e.rpc(), Some(RpcError::NotFound(_)))
}

async fn client_loop(index: u64, client: Arc<DfsClient<SimEnv>>, disk: SimDisk, history: Arc<Mutex<History>>) {
    // Thread ids for the tester: a fresh one after an ambiguous outcome, since that operation
    // stays in flight forever.
    let mut thread = index * 1000;
    for i in 0..OPS_PER_CLIENT {
        let key = madsim::rand::thread_rng().gen_range(0..KEYS);
        let path = format!("/k{key}");
        let op = match madsim::rand::thread_rng().gen_range(0..3) {
            0 => Op::Write(1000 * (index + 1) + i as u64 * 10 + key as u64),
            1 => Op::Read,
            _ => Op::Delete,
        };
        {
            let mut h = history.lock().unwrap();
            h.testers.entry(key).or_insert_with(|| Tester::new(Register::default())).on_invoke(thread, op.clone()).unwrap();
        }
        trace::event(format!("client {index} {path} {op:?} invoked"));
        let started = madsim::time::Instant::now();
        let ret: Option<Ret> = match &op {
            Op::Write(v) => {
                let local = PathBuf::from(format!("/in/c{index}-{i}"));
                disk.create_dir_all(local.parent().unwrap()).await.unwrap();
                disk.write_file(&local, content(*v)).await.unwrap();
                client.put(&local, &path, true, &NoProgress).await.ok().map(|_| Ret::Written)
            }
            Op::Read => {
                let out = PathBuf::from(format!("/out/c{index}-{i}"));
                disk.create_dir_all(out.parent().unwrap()).await.unwrap();
                match client.get(&path, &out, &NoProgress).await {
                    Ok(info) => {
                        let got = disk.read_file(&out).await.unwrap();
                        assert!(got == content(info.size), "{path}: read bytes that no write wrote ({} bytes)", got.len());
                        Some(Ret::Read(Some(info.size)))
                    }
                    Err(e) if not_found(&e) => Some(Ret::Read(None)),
                    Err(_) => None,
                }
            }
            Op::Delete => match client.delete(&path, false).await {
                Ok(d) => d.file.map(|f| Ret::Deleted(f.size)),
                Err(e) if not_found(&e) => Some(Ret::Absent),
                Err(_) => None,
            },
        };
        {
            let mut h = history.lock().unwrap();
            let took = started.elapsed().as_millis();
            h.log.push(format!("client {index} {path} {op:?} -> {ret:?} ({took} ms)"));
            trace::event(format!("client {index} {path} {op:?} -> {ret:?}"));
            match ret {
                Some(ret) => {
                    h.testers.get_mut(&key).unwrap().on_return(thread, ret).unwrap();
                }
                None => thread += 1,
            }
        }
        madsim::time::sleep(Duration::from_millis(madsim::rand::thread_rng().gen_range(0..400))).await;
    }
}

async fn scenario() {
    let cluster = Arc::new(Cluster::start(ClusterConfig { meta_snapshot_every: 20, ..ClusterConfig::default() }));
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    cluster.wait_for_storage(3, Duration::from_secs(30)).await;
    let history: Arc<Mutex<History>> = Arc::default();
    let metadata = RetryPolicy { deadline: Duration::from_secs(30), ..RetryPolicy::default() };
    let config = ClientConfig { chunk_size: 64 * 1024, metadata, ..ClientConfig::default() };

    let mut workers = Vec::new();
    for index in 0..CLIENTS {
        let disk = SimDisk::new(1 << 30);
        let client = Arc::new(cluster.client(config.clone(), &disk));
        workers.push(cluster.spawn_on_client(client_loop(index, client, disk, history.clone())));
    }
    let disk = SimDisk::new(1 << 30);
    let shared = Arc::new(cluster.client(config.clone(), &disk));
    for index in CLIENTS..CLIENTS + SHARING_WORKERS {
        workers.push(cluster.spawn_on_client(client_loop(index, shared.clone(), disk.clone(), history.clone())));
    }
    faults::enable_plan(BTreeMap::from([(Site::NetLoseReply, LOSE_REPLY_RATE)]));
    for _ in 0..FAULT_ROUNDS {
        madsim::time::sleep(Duration::from_millis(madsim::rand::thread_rng().gen_range(200..1500))).await;
        cluster.meta_fault().await;
    }
    for w in workers {
        w.await.expect("client");
    }
    faults::disable();
    cluster.wait_all_meta_converged(Duration::from_secs(120)).await;

    // A final, fault-free read of every path joins the history.
    let disk = SimDisk::new(1 << 30);
    let client = Arc::new(cluster.client(config, &disk));
    for key in 0..KEYS {
        let thread = 1_000_000 + key as u64;
        history.lock().unwrap().testers.entry(key).or_insert_with(|| Tester::new(Register::default())).on_invoke(thread, Op::Read).unwrap();
        let (c, d) = (client.clone(), disk.clone());
        let got = cluster
            .on_client(async move {
                let out = PathBuf::from(format!("/out/final-{key}"));
                d.create_dir_all(out.parent().unwrap()).await.unwrap();
                match c.get(&format!("/k{key}"), &out, &NoProgress).await {
                    Ok(info) => Ok(Some(info.size)),
                    Err(e) if not_found(&e) => Ok(None),
                    Err(e) => Err(format!("{e:#}")),
                }
            })
            .await
            .unwrap_or_else(|e| panic!("final read of /k{key} failed with faults healed: {e}"));
        let mut h = history.lock().unwrap();
        h.log.push(format!("final /k{key} Read -> {got:?}"));
        h.testers.get_mut(&key).unwrap().on_return(thread, Ret::Read(got)).unwrap();
    }

    let h = history.lock().unwrap();
    for (key, tester) in &h.testers {
        assert!(
            tester.is_consistent(),
            "the history of /k{key} is not linearizable:\n{}\n(len {})",
            h.log.iter().filter(|l| l.contains(&format!("/k{key} "))).cloned().collect::<Vec<_>>().join("\n"),
            tester.len()
        );
    }
    // The final reads are fault-free and always definite: only the clients' operations count.
    let definite = h.log.iter().filter(|l| l.starts_with("client ") && !l.contains("-> None")).count();
    assert!(
        definite >= DEFINITE_MIN,
        "only {definite} operations had a definite answer under faults (at least {DEFINITE_MIN} expected): the check would prove nothing"
    );
    trace::event(format!("{} operations, {definite} with a definite answer: linearizable", h.log.len()));
}

#[test]
fn metadata_operations_are_linearizable_under_faults() {
    seeds::run_all(SimTest { file: "meta_linearizable", name: "metadata_operations_are_linearizable_under_faults" }, scenario);
}

/// Bugs planted on purpose (`core/src/planted.rs`) this scenario must catch.
mod planted {
    use dfs_core::planted::Bug;
    use dfs_sim_tests::seeds;

    const TEST: seeds::SimTest = seeds::SimTest { file: "meta_linearizable", name: "metadata_operations_are_linearizable_under_faults" };

    #[test]
    fn a_retried_request_applied_twice_breaks_the_history() {
        seeds::expect_caught(TEST, Bug::DoubleApply, "is not linearizable", 1, 40);
    }
}

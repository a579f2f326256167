//! Storage nodes under power loss and media damage: every storage node loses power at once
//! right after uploads were acknowledged (their chunks stored in batches or one by one, by
//! seed), comes back, and every file still downloads intact;
//! then a bit rots in one replica, the download still succeeds from another, and the damaged
//! replica is quarantined, reported, and made again on the node that held it (the cluster has
//! three storage nodes at replication 3: no other node could take it).
//!
//! Checkers: byte-identical downloads (the oracle); the damaged replica is repaired in place:
//! its node lists a copy that decodes whole and every replica is OK again; no storage node
//! keeps a write in progress once the uploads are done.

#![cfg(madsim)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dfs_core::chunk_store::ChunkLayout;
use dfs_core::client::{ClientConfig, DfsClient, NoProgress};
use dfs_core::env::Disk;
use dfs_core::ids::ChunkId;
use dfs_core::proto::ReplicaState;
use dfs_io_sim::{SimDisk, SimEnv};
use dfs_sim_tests::cluster::{wait_until, Cluster, ClusterConfig};
use dfs_sim_tests::seeds::{self, SimTest};
use dfs_sim_tests::trace;
use madsim::rand::Rng;

const CHUNK: u64 = 256 * 1024;

type Client = Arc<DfsClient<SimEnv>>;

async fn put(cluster: &Cluster, client: &Client, disk: &SimDisk, remote: &str, size: u64) -> Bytes {
    let mut data = vec![0u8; size as usize];
    madsim::rand::thread_rng().fill(&mut data[..]);
    let data = Bytes::from(data);
    let local = PathBuf::from(format!("/in{remote}"));
    disk.create_dir_all(local.parent().unwrap()).await.unwrap();
    disk.write_file(&local, data.clone()).await.unwrap();
    let (c, r) = (client.clone(), remote.to_string());
    cluster.on_client(async move { c.put(&local, &r, false, &NoProgress).await }).await.unwrap_or_else(|e| panic!("put {remote}: {e}"));
    data
}

async fn check(cluster: &Cluster, client: &Client, disk: &SimDisk, oracle: &BTreeMap<String, Bytes>, when: &str) {
    for (i, (remote, expected)) in oracle.iter().enumerate() {
        let out = PathBuf::from(format!("/out/{}-{i}", when.replace(' ', "-")));
        disk.create_dir_all(out.parent().unwrap()).await.unwrap();
        let (c, r, o) = (client.clone(), remote.clone(), out.clone());
        cluster.on_client(async move { c.get(&r, &o, &NoProgress).await }).await.unwrap_or_else(|e| panic!("get {remote} {when}: {e}"));
        assert!(disk.read_file(&out).await.unwrap() == *expected, "{remote} differs {when}");
    }
    trace::event(format!("{} downloads byte-identical {when}", oracle.len()));
}

async fn scenario() {
    let cluster = Cluster::start(ClusterConfig::default());
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    cluster.wait_for_storage(3, Duration::from_secs(30)).await;
    let disk = SimDisk::new(1 << 30);
    // Chunks go to disk batched (one flush of the file system for many) or one by one (an
    // fsync per file and per directory), chosen by seed: a power cut must find both durable.
    let small_chunk_batches = madsim::rand::thread_rng().gen_bool(0.5);
    trace::event(format!("chunks stored {}", if small_chunk_batches { "in batches" } else { "one by one" }));
    let config = ClientConfig { chunk_size: CHUNK, small_chunk_batches, ..ClientConfig::default() };
    let client: Client = Arc::new(cluster.client(config, &disk));
    let mut oracle = BTreeMap::new();
    for (i, size) in [0, 1, CHUNK, 3 * CHUNK + 4321].into_iter().enumerate() {
        let remote = format!("/f{i}");
        oracle.insert(remote.clone(), put(&cluster, &client, &disk, &remote, size).await);
    }
    for index in 1..=3 {
        let node = cluster.storage_node(index).expect("storage node up");
        assert_eq!(node.writes_in_progress(), 0, "storage-{index} kept a write in progress");
    }

    // Power cut on every storage node at once, right after the acknowledgements.
    madsim::time::sleep(Duration::from_millis(madsim::rand::thread_rng().gen_range(0..50))).await;
    for index in 1..=3 {
        cluster.kill_storage(index);
    }
    for index in 1..=3 {
        cluster.restart_storage(index);
    }
    wait_until(Duration::from_secs(30), "storage nodes back", || (1..=3).all(|i| cluster.storage_node(i).is_some()).then_some(())).await;
    check(&cluster, &client, &disk, &oracle, "after storage power loss").await;

    // A bit rots in the first replica the leader hands out for chunk 1 of /f3.
    let (c, r) = (client.clone(), "/f3".to_string());
    let stat = cluster.on_client(async move { c.stat(&r).await }).await.expect("stat");
    let location = stat.chunks.iter().find(|c| c.index == 1).expect("chunk 1").clone();
    let victim = location.replicas[0].clone();
    let host = cluster.storage.iter().find(|h| h.addr.to_string() == victim.addr).expect("victim host");
    let chunk = ChunkId::from_slice(&location.chunk_id).unwrap();
    let path = ChunkLayout::new("/data").chunk_path(chunk);
    assert!(host.disk.flip_bit(&path, 100 + madsim::rand::thread_rng().gen_range(0..CHUNK as usize), 5), "replica file present");
    trace::event(format!("flipped a bit of chunk 1 of /f3 on storage-{}", host.index));
    check(&cluster, &client, &disk, &oracle, "after bit rot").await;

    // The node found it (the download read it first), quarantined it and reports it with its
    // next heartbeat; metadata stops serving it, drops it, and repair makes it again on the
    // same node (the only one that can take it).
    let deadline = madsim::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (c, r) = (client.clone(), "/f3".to_string());
        let stat = cluster.on_client(async move { c.stat(&r).await }).await.expect("stat");
        let loc = stat.chunks.iter().find(|c| c.index == 1).unwrap();
        let served = loc.replicas.iter().any(|n| n.id == victim.id);
        let all_ok = loc.replica_status.len() == 3 && loc.replica_status.iter().all(|s| s.state == ReplicaState::Ok as i32);
        // Whole: decodes, and its bytes hash to metadata's checksum (hashed here, not trusted
        // from the copy's own checks).
        let whole = host.disk.read_file(&path).await.ok().is_some_and(|f| {
            let chain = dfs_core::chain::Chain::from_proto_opt(loc.chain.as_ref()).expect("metadata's chain");
            dfs_core::chunk_store::decode_file(f).is_ok_and(|(_, data)| dfs_core::chain::checksum(&data, chain.as_ref()).0.as_slice() == loc.sha256.as_ref())
        });
        if served && all_ok && whole {
            break;
        }
        assert!(madsim::time::Instant::now() < deadline, "the damaged replica was not made again on its node: {loc:?}, its file decodes whole: {whole}");
        madsim::time::sleep(Duration::from_millis(500)).await;
    }
    trace::event("the damaged replica was quarantined and made again on its node");
    check(&cluster, &client, &disk, &oracle, "after quarantine").await;
    chunk_calls_need_the_leaders_token(&cluster).await;
    strangers_are_refused_everywhere(&cluster).await;
    users_tokens_hold_their_grant(&cluster).await;
    callers_that_go_away_leave_no_write_behind(&cluster).await;
}

/// A call a stranger might try, on a metadata node (`Meta`) or a storage node (`Storage`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    // Metadata: a user's calls (read, write, admin), the storage nodes' calls, Raft.
    GetFile,
    Mkdir,
    Fsck,
    CreateToken,
    RegisterStorage,
    Heartbeat,
    Vote,
    AppendEntries,
    InstallSnapshot,
    // Storage: chunks alone and in batches, written, replicated and read.
    WriteChunk,
    ReplicateChunk,
    ReadChunk,
    WriteChunks,
    ReplicateChunks,
    ReadChunks,
}

impl Probe {
    const META: [Probe; 9] = [
        Probe::GetFile,
        Probe::Mkdir,
        Probe::Fsck,
        Probe::CreateToken,
        Probe::RegisterStorage,
        Probe::Heartbeat,
        Probe::Vote,
        Probe::AppendEntries,
        Probe::InstallSnapshot,
    ];
    const STORAGE: [Probe; 6] = [Probe::WriteChunk, Probe::ReplicateChunk, Probe::ReadChunk, Probe::WriteChunks, Probe::ReplicateChunks, Probe::ReadChunks];
}

/// The chunk strangers try to write and read: no file holds it.
fn stranger_chunk() -> (ChunkId, Bytes) {
    (ChunkId::derive(dfs_core::ids::FileId(1 << 42), 0), Bytes::from_static(b"a stranger's chunk"))
}

/// Makes call `probe` to `to` through `transport`. Batch answers carry a result per chunk: the
/// first chunk's error is the call's.
async fn probe(
    transport: dfs_io_sim::SimTransport,
    to: String,
    probe: Probe,
    token: Option<dfs_core::proto::ChunkToken>,
) -> Result<(), dfs_core::rpc::RpcError> {
    use dfs_core::env::Transport;
    use dfs_core::proto::{self, chunk_read_result, chunk_write_result};
    use dfs_core::rpc::{ChunkService, ChunkUpload, RpcError};
    let (id, data) = stranger_chunk();
    let header = proto::WriteChunkHeader {
        chunk_id: Bytes::copy_from_slice(id.as_bytes()),
        size: data.len() as u64,
        sha256: dfs_core::ids::Sha256Digest::of(&data).0.to_vec().into(),
        token: token.clone(),
        ..Default::default()
    };
    let write = proto::ChunkWrite { header: Some(header.clone()), data: data.clone() };
    let read = proto::ReadChunkRequest { chunk_id: Bytes::copy_from_slice(id.as_bytes()), token, ..Default::default() };
    let first_write = |r: proto::WriteChunksResponse| match r.results.into_iter().next().and_then(|r| r.result) {
        Some(chunk_write_result::Result::Error(e)) => Err(RpcError::from_detail(e)),
        _ => Ok(()),
    };
    match probe {
        Probe::GetFile => transport.unary(&to, proto::GetFileRequest { path: "/f0".into() }).await.map(drop),
        Probe::Mkdir => transport.unary(&to, proto::MkdirRequest { path: "/stranger".into(), ..Default::default() }).await.map(drop),
        Probe::Fsck => transport.unary(&to, proto::FsckRequest::default()).await.map(drop),
        Probe::CreateToken => {
            transport.unary(&to, proto::CreateTokenRequest { name: "stranger".into(), role: "admin".into(), ..Default::default() }).await.map(drop)
        }
        Probe::RegisterStorage => transport.unary(&to, proto::RegisterStorageRequest::default()).await.map(drop),
        Probe::Heartbeat => transport.unary(&to, proto::HeartbeatRequest::default()).await.map(drop),
        Probe::Vote => transport.unary(&to, proto::VoteRequest::default()).await.map(drop),
        Probe::AppendEntries => transport.unary(&to, proto::AppendEntriesRequest::default()).await.map(drop),
        Probe::InstallSnapshot => transport.unary(&to, proto::InstallSnapshotRequest::default()).await.map(drop),
        Probe::WriteChunk | Probe::ReplicateChunk => {
            let service = if probe == Probe::WriteChunk { ChunkService::Storage } else { ChunkService::Replication };
            transport.write_chunk(&to, service, ChunkUpload { header, data }).await.map(drop)
        }
        Probe::ReadChunk => transport.read_chunk(&to, read).await.map(drop),
        Probe::WriteChunks => first_write(transport.unary(&to, proto::WriteChunksRequest { chunks: vec![write] }).await?),
        Probe::ReplicateChunks => first_write(transport.unary(&to, proto::ReplicateChunksRequest { chunks: vec![write] }).await?),
        Probe::ReadChunks => {
            match transport.unary(&to, proto::ReadChunksRequest { chunks: vec![read] }).await?.results.into_iter().next().and_then(|r| r.result) {
                Some(chunk_read_result::Result::Error(e)) => Err(RpcError::from_detail(e)),
                _ => Ok(()),
            }
        }
    }
}

/// Strangers are refused everywhere, and change nothing:
/// - a host with no credentials but the cluster CA (a user without certificate or token) is
///   refused every call on every node: by `admit` on metadata nodes, for want of a role on the
///   cluster's own calls, for want of a chunk token on storage nodes;
/// - a plaintext host, a host trusting another CA, and a host whose (metadata) certificate
///   another CA signed fail the handshake with every node;
/// - a client's certificate does not open the cluster's own calls (Raft, storage registration
///   and heartbeats, replication) nor administration; a storage node's does not write files.
///
/// Controls: the same calls with the right certificate get past admission, so each refusal
/// above is the caller's credentials' doing, not a call that could never work.
async fn strangers_are_refused_everywhere(cluster: &Cluster) {
    use dfs_core::auth::Role;
    use dfs_core::rpc::RpcError;
    use dfs_io_sim::{SimCredentials, SimTransport};
    use dfs_sim_tests::cluster::CLUSTER_CA;
    let leader_id = cluster.wait_for_leader(Duration::from_secs(30)).await;
    let leader = cluster.meta_server(leader_id).expect("the leader runs");
    let term_before = leader.raft().metrics().borrow().current_term;
    let tokens_before = leader.local_state().namespace.tokens().records().count();
    let stranger = madsim::runtime::Handle::current().create_node().name("stranger").ip("10.0.3.1".parse().unwrap()).build();
    let targets: Vec<(String, Probe)> = cluster
        .meta
        .iter()
        .flat_map(|m| Probe::META.map(|p| (m.addr.to_string(), p)))
        .chain(cluster.storage.iter().flat_map(|s| Probe::STORAGE.map(|p| (s.addr.to_string(), p))))
        .collect();
    let run = |credentials: SimCredentials, to: String, p: Probe, token: Option<dfs_core::proto::ChunkToken>| {
        let transport = SimTransport::new(credentials);
        stranger.spawn(async move { probe(transport, to, p, token).await })
    };
    let denied = |r: &Result<(), RpcError>| matches!(r, Err(RpcError::PermissionDenied(_)));
    // The handshake fails: the server drops the connection unanswered.
    let dropped = |r: &Result<(), RpcError>| matches!(r, Err(RpcError::Transport(_)));

    let bare = SimCredentials::tls(CLUSTER_CA);
    let handshake_fails = [
        ("a plaintext host", SimCredentials::insecure()),
        ("a host trusting another CA", SimCredentials::tls(CLUSTER_CA + 1).with_cert(Role::Meta, "meta-1", CLUSTER_CA + 1)),
        ("a host with a metadata certificate of another CA", SimCredentials::tls(CLUSTER_CA).with_cert(Role::Meta, "meta-1", CLUSTER_CA + 1)),
    ];
    for (to, p) in &targets {
        let result = run(bare.clone(), to.clone(), *p, None).await.expect("task");
        assert!(denied(&result), "{to}: {p:?} from a host without credentials was not refused: {result:?}");
        for (who, credentials) in &handshake_fails {
            let result = run(credentials.clone(), to.clone(), *p, None).await.expect("task");
            assert!(dropped(&result), "{to}: {p:?} from {who} passed the handshake: {result:?}");
        }
    }
    let client = SimCredentials::tls(CLUSTER_CA).with_cert(Role::Client, "mallory", CLUSTER_CA);
    let storage = SimCredentials::tls(CLUSTER_CA).with_cert(Role::Storage, "storage-9", CLUSTER_CA);
    for (to, p) in &targets {
        let cluster_call = matches!(
            p,
            Probe::RegisterStorage
                | Probe::Heartbeat
                | Probe::Vote
                | Probe::AppendEntries
                | Probe::InstallSnapshot
                | Probe::ReplicateChunk
                | Probe::ReplicateChunks
        );
        if cluster_call || matches!(p, Probe::Fsck | Probe::CreateToken) {
            let result = run(client.clone(), to.clone(), *p, None).await.expect("task");
            assert!(denied(&result), "{to}: {p:?} with a client certificate was not refused: {result:?}");
        }
        if *p == Probe::Mkdir {
            let result = run(storage.clone(), to.clone(), *p, None).await.expect("task");
            assert!(denied(&result), "{to}: {p:?} with a storage certificate was not refused: {result:?}");
        }
    }

    // Controls, each with the certificate its call needs: past admission, whatever follows.
    let (id, _) = stranger_chunk();
    let write_token = leader.chunk_token(id, dfs_core::chunk_tokens::ChunkOp::Write);
    let meta_addr = cluster.meta[0].addr.to_string();
    let storage_addr = cluster.storage[0].addr.to_string();
    let controls = [
        (cluster.credentials(Role::Meta, "meta-1"), meta_addr.clone(), Probe::Vote, None),
        (cluster.credentials(Role::Admin, "admin"), leader_id_addr(cluster, leader_id), Probe::Fsck, None),
        (cluster.credentials(Role::Client, "client"), meta_addr, Probe::GetFile, None),
        (cluster.credentials(Role::Storage, "storage-2"), storage_addr, Probe::ReplicateChunks, write_token),
    ];
    for (credentials, to, p, token) in controls {
        let result = run(credentials, to.clone(), p, token).await.expect("task");
        assert!(!denied(&result) && !dropped(&result), "{to}: {p:?} with the right certificate was refused: {result:?}");
    }
    // The control wrote the stranger's chunk on storage-1 (with the leader's token); remove it
    // from what is checked below: no other node may hold it, and nothing else changed.
    let (chunk, _) = stranger_chunk();
    let path = ChunkLayout::new("/data").chunk_path(chunk);
    for host in &cluster.storage[1..] {
        assert!(host.disk.read_file(&path).await.is_err(), "storage-{} holds a chunk only strangers wrote", host.index);
    }
    let state = leader.local_state();
    assert!(state.namespace.kind("/stranger").is_none(), "a stranger made a directory");
    assert_eq!(state.namespace.tokens().records().count(), tokens_before, "a stranger made a token");
    drop(state);
    assert_eq!(leader.raft().metrics().borrow().current_term, term_before, "a stranger moved the Raft term");
    madsim::runtime::Handle::current().kill(stranger.id());
    trace::event(format!("{} calls by strangers refused on every node", targets.len() * 4));
}

fn leader_id_addr(cluster: &Cluster, leader: u64) -> String {
    cluster.meta[leader as usize - 1].addr.to_string()
}

/// A user's token holds its grant and its prefix, and is refused once revoked: tokens made by
/// an admin through the leader, used from a host that holds no certificate.
async fn users_tokens_hold_their_grant(cluster: &Cluster) {
    use dfs_core::proto;
    use dfs_core::rpc::RpcError;
    use dfs_io_sim::SimCredentials;
    use dfs_sim_tests::cluster::CLUSTER_CA;
    let meta = cluster.meta_addrs();
    let admin = dfs_core::meta_client::MetaClient::new(cluster.admin_env(&SimDisk::new(1 << 20)), meta.clone(), Default::default());
    let a = admin.clone();
    let made = cluster
        .on_client(async move {
            let reader = a.call(proto::CreateTokenRequest { name: "reader".into(), role: "read".into(), ..Default::default() }).await?;
            let home =
                a.call(proto::CreateTokenRequest { name: "alice".into(), role: "write".into(), prefix: "/home/alice".into(), ttl_ms: 0, s3: false }).await?;
            a.call(proto::MkdirRequest { path: "/home/alice".into(), parents: true, ..Default::default() }).await?;
            Ok::<_, RpcError>((reader, home))
        })
        .await;
    let (reader, home) = made.expect("an admin makes tokens");
    let as_user = |token: &str| {
        dfs_core::meta_client::MetaClient::new(
            SimEnv::new(SimDisk::new(1 << 20)).with_credentials(SimCredentials::tls(CLUSTER_CA).with_token(token)),
            meta.clone(),
            Default::default(),
        )
    };
    let (r, h) = (as_user(&reader.token), as_user(&home.token));
    let outcome = cluster
        .on_client(async move {
            let read = r.call(proto::GetFileRequest { path: "/f0".into() }).await.map(drop);
            let write = r.call(proto::MkdirRequest { path: "/by-reader".into(), ..Default::default() }).await.map(drop);
            let inside = h.call(proto::MkdirRequest { path: "/home/alice/docs".into(), ..Default::default() }).await.map(drop);
            let outside = h.call(proto::MkdirRequest { path: "/home/bob".into(), ..Default::default() }).await.map(drop);
            (read, write, inside, outside)
        })
        .await;
    let denied = |r: &Result<(), RpcError>| matches!(r, Err(RpcError::PermissionDenied(_)));
    assert!(outcome.0.is_ok(), "a read token could not read: {:?}", outcome.0);
    assert!(denied(&outcome.1), "a read token wrote: {:?}", outcome.1);
    assert!(outcome.2.is_ok(), "a token for /home/alice could not write there: {:?}", outcome.2);
    assert!(denied(&outcome.3), "a token for /home/alice wrote outside it: {:?}", outcome.3);
    let (a, id, r) = (admin.clone(), reader.info.as_ref().map(|i| i.id).unwrap_or_default(), as_user(&reader.token));
    let after = cluster
        .on_client(async move {
            a.call(proto::RevokeTokenRequest { id }).await.expect("an admin revokes a token");
            r.call(proto::GetFileRequest { path: "/f0".into() }).await.map(drop)
        })
        .await;
    assert!(denied(&after), "a revoked token still reads: {after:?}");
    trace::event("users' tokens held their grants and prefixes, and a revoked one was refused");
}

/// Every storage node refuses a chunk write or read without the leader's token for it: none,
/// a forged one, an expired one, a read token for a write, another chunk's; the leader's own
/// token is taken. The calls come with a valid storage certificate, as a storage node's
/// would: a certificate is not enough, and neither is knowing a chunk id.
async fn chunk_calls_need_the_leaders_token(cluster: &Cluster) {
    use dfs_core::chunk_tokens::{ChunkKeyPolicy, ChunkOp};
    use dfs_core::env::Transport;
    use dfs_core::proto::{ChunkToken, ReadChunkRequest, WriteChunkHeader};
    use dfs_core::rpc::{ChunkService, ChunkUpload, RpcError};
    let leader = cluster.meta_server(cluster.wait_for_leader(Duration::from_secs(30)).await).expect("the leader runs");
    let id = ChunkId::derive(dfs_core::ids::FileId(1 << 41), 0);
    let other = ChunkId::derive(dfs_core::ids::FileId(1 << 41), 1);
    let write = leader.chunk_token(id, ChunkOp::Write).expect("the cluster has a chunk key");
    let read = leader.chunk_token(id, ChunkOp::Read).expect("a read token");
    let now_ms = madsim::time::TimeHandle::current().now_time().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let short = ChunkKeyPolicy { token_life_ms: 1, ..ChunkKeyPolicy::default() };
    // Expired an hour ago: far beyond any clock skew the scenario gives a node.
    let expired = leader.chunk_keys().sign(&short, id, ChunkOp::Write, now_ms - 3_600_000).expect("an expired token");
    let forged = ChunkToken { mac: vec![7u8; 32].into(), ..write.clone() };
    let data = Bytes::from_static(b"a chunk no file holds");
    let upload = |token: Option<ChunkToken>| ChunkUpload {
        header: WriteChunkHeader {
            chunk_id: Bytes::copy_from_slice(id.as_bytes()),
            size: data.len() as u64,
            sha256: dfs_core::ids::Sha256Digest::of(&data).0.to_vec().into(),
            token,
            ..Default::default()
        },
        data: data.clone(),
    };
    let transport = dfs_io_sim::SimTransport::new(cluster.credentials(dfs_core::auth::Role::Storage, "storage-1"));
    for node in &cluster.storage {
        let to = node.addr.to_string();
        let cases = [
            ("no token", None, "no access token"),
            ("a forged token", Some(forged.clone()), "signature does not match"),
            ("an expired token", Some(expired.clone()), "expired"),
            ("a read token", Some(read.clone()), "allows no write"),
        ];
        for (what, token, expected) in cases {
            for service in [ChunkService::Storage, ChunkService::Replication] {
                let (dest, upload, t) = (to.clone(), upload(token.clone()), transport.clone());
                let result = cluster.on_client(async move { t.write_chunk(&dest, service, upload).await }).await;
                match result {
                    Err(RpcError::PermissionDenied(m)) if m.contains(expected) => {}
                    other => panic!("{to}: a {service:?} write with {what} was not refused for {expected:?}: {other:?}"),
                }
            }
        }
        let request = ReadChunkRequest { chunk_id: Bytes::copy_from_slice(other.as_bytes()), token: Some(read.clone()), ..Default::default() };
        let (to2, t) = (to.clone(), transport.clone());
        let result = cluster.on_client(async move { t.read_chunk(&to2, request).await.map(drop) }).await;
        assert!(
            matches!(&result, Err(RpcError::PermissionDenied(m)) if m.contains("signature does not match")),
            "{to}: another chunk's token read: {result:?}"
        );
        let (up, t) = (upload(Some(write.clone())), transport.clone());
        let stored = cluster.on_client(async move { t.write_chunk(&to, ChunkService::Storage, up).await }).await;
        // The leader's token passes the check: what follows is the node's own business (it
        // may refuse for space, or be cut off by the scenario), but not for the token.
        assert!(!matches!(stored, Err(RpcError::PermissionDenied(_))), "the leader's token refused: {stored:?}");
    }
    trace::event("storage nodes refused chunk calls without the leader's token");
}

/// Writes whose caller gives up at random moments (mid-transfer, mid-fsync): the server drops
/// the handler, and nothing stays in progress; the temporary files go with the next heartbeat.
async fn callers_that_go_away_leave_no_write_behind(cluster: &Cluster) {
    use dfs_core::env::Transport;
    use dfs_core::rpc::{ChunkService, ChunkUpload};
    let target = cluster.storage[0].addr.to_string();
    let leader = cluster.meta_server(cluster.wait_for_leader(Duration::from_secs(30)).await).expect("the leader runs");
    let transport = dfs_io_sim::SimTransport::new(cluster.credentials(dfs_core::auth::Role::Client, "client"));
    for attempt in 0..8u32 {
        // The leader's token: without one the node would refuse at once, and the write this
        // looks at (abandoned mid-way) would never start.
        let id = ChunkId::derive(dfs_core::ids::FileId(1 << 40), attempt);
        let token = leader.chunk_token(id, dfs_core::chunk_tokens::ChunkOp::Write);
        assert!(token.is_some(), "the cluster has a chunk key");
        let mut data = vec![0u8; 3 * CHUNK as usize];
        madsim::rand::thread_rng().fill(&mut data[..]);
        let data = Bytes::from(data);
        let upload = ChunkUpload {
            header: dfs_core::proto::WriteChunkHeader {
                chunk_id: Bytes::copy_from_slice(id.as_bytes()),
                size: data.len() as u64,
                sha256: dfs_core::ids::Sha256Digest::of(&data).0.to_vec().into(),
                forward_to: vec![],
                chain: None,
                token,
            },
            data,
        };
        let (to, transport) = (target.clone(), transport.clone());
        let give_up_after = Duration::from_micros(madsim::rand::thread_rng().gen_range(0..30_000));
        cluster
            .on_client(async move {
                let write = transport.write_chunk(&to, ChunkService::Storage, upload);
                let _ = madsim::time::timeout(give_up_after, write).await;
            })
            .await;
    }
    let node = cluster.storage_node(1).expect("storage-1 up");
    let deadline = madsim::time::Instant::now() + Duration::from_secs(10);
    loop {
        let tmp = cluster.storage[0].disk.list_dir(&ChunkLayout::new("/data").tmp_dir()).await.unwrap();
        if node.writes_in_progress() == 0 && tmp.is_empty() {
            break;
        }
        assert!(madsim::time::Instant::now() < deadline, "abandoned writes left {} in progress, tmp files {tmp:?}", node.writes_in_progress());
        madsim::time::sleep(Duration::from_millis(200)).await;
    }
    trace::event("abandoned writes left nothing behind");
}

#[test]
fn chunks_survive_storage_power_loss_and_bit_rot_is_quarantined() {
    seeds::run_all(SimTest { file: "storage_durability", name: "chunks_survive_storage_power_loss_and_bit_rot_is_quarantined" }, scenario);
}

/// Bugs planted on purpose (`core/src/planted.rs`) this scenario must catch.
mod planted {
    use dfs_core::planted::Bug;
    use dfs_sim_tests::seeds;

    const TEST: seeds::SimTest = seeds::SimTest { file: "storage_durability", name: "chunks_survive_storage_power_loss_and_bit_rot_is_quarantined" };

    #[test]
    fn no_directory_fsync_loses_chunks_in_a_power_cut() {
        seeds::expect_caught(TEST, Bug::NoDirFsync, "after storage power loss", 1, 8);
    }

    #[test]
    fn no_file_fsync_loses_chunks_in_a_power_cut() {
        seeds::expect_caught(TEST, Bug::NoFileFsync, "after storage power loss", 1, 8);
    }

    #[test]
    fn a_certificate_check_that_ignores_roles_lets_strangers_in() {
        seeds::expect_caught(TEST, Bug::RolesUnchecked, "from a host without credentials was not refused", 1, 4);
    }

    #[test]
    fn a_metadata_node_that_weighs_no_user_lets_strangers_in() {
        seeds::expect_caught(TEST, Bug::UsersUnchecked, "from a host without credentials was not refused", 1, 4);
    }

    #[test]
    fn a_node_with_a_bad_copy_never_a_target_leaves_the_copy_unmade() {
        seeds::expect_caught(TEST, Bug::BadCopyNeverTarget, "the damaged replica was not made again on its node", 1, 8);
    }
}

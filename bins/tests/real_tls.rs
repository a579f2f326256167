//! TLS and roles, with real processes on 127.0.0.1: `dfs cluster up` runs TLS by default and
//! its local client needs no flags; a client without the cluster's CA, with another CA, or
//! with a certificate whose role does not allow a call is refused in one line (exit 1); a node
//! refuses to start without credentials or with another role's; each guarded call made on the
//! wire with another role's certificate (Raft, storage registration, replication) is refused,
//! and the right role gets past the check; and no chunk byte crosses the loopback in plaintext
//! (a packet capture of a put, against the same capture of a cluster run with `--insecure`,
//! where the bytes are seen: the check can fail).

#![cfg(not(madsim))]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::*;

fn meta_of(base: u16) -> String {
    format!("127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}", base, base + 1, base + 2)
}

/// `dfs ARGS` against the cluster at `meta`, with `config` as the per-user config dir.
fn dfs_with(meta: &str, config: &Path, args: &[&str]) -> Output {
    Command::new(DFS).args(args).env("DFS_META", meta).env("DFS_CONFIG_DIR", config).env("DFS_TIMEOUT", "5s").output().expect("run dfs")
}

#[test]
fn cluster_up_runs_tls_and_refuses_clients_without_the_right_credentials() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let base = free_ports(CLUSTER_PORTS);
    let config = dir.join("config");
    let _up = cluster_up_tls(base, &dir.join("data"), &config);
    let meta = meta_of(base);

    // The local user needs no flags: `cluster up` wrote the CA and an admin credential.
    let file = dir.join("f.bin");
    let bytes = test_bytes(3 << 20, 7);
    std::fs::write(&file, &bytes).unwrap();
    let out = dfs_with(&meta, &config, &["put", file.to_str().unwrap(), "/f.bin"]);
    assert!(out.status.success(), "put over TLS: {}", stderr(&out));
    let back = dir.join("back.bin");
    let out = dfs_with(&meta, &config, &["get", "/f.bin", back.to_str().unwrap()]);
    assert!(out.status.success(), "get over TLS: {}", stderr(&out));
    assert_same_file(&file, &back);
    let out = dfs_with(&meta, &config, &["fsck", "/"]);
    assert!(out.status.success(), "fsck as the cluster's admin: {}", stderr(&out));

    // No CA for this cluster: the client speaks plaintext, which a TLS node does not answer.
    let elsewhere = dir.join("no-config");
    refused(dfs_with(&meta, &elsewhere, &["ls", "/"]), "did not answer in plaintext", "a client without the CA");
    // Forced plaintext.
    refused(dfs_with(&meta, &config, &["ls", "/", "--insecure"]), "did not answer in plaintext", "--insecure against TLS");
    // Another cluster's CA.
    let other = dir.join("other-ca");
    let out = Command::new(DFS).args(["cert", "init", "--dir", other.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "cert init: {}", stderr(&out));
    let other_ca = other.join("ca.pem");
    refused(dfs_with(&meta, &config, &["ls", "/", "--ca", other_ca.to_str().unwrap()]), "UnknownIssuer", "a client with another CA");

    // A user's certificate (role client) signed by the cluster's CA: files yes, administration no.
    let users = dir.join("users");
    let ca_dir = dir.join("data/tls");
    let out = Command::new(DFS)
        .args(["cert", "issue", "--dir", ca_dir.to_str().unwrap(), "--out", users.to_str().unwrap(), "--role", "client", "--name", "alice"])
        .output()
        .unwrap();
    assert!(out.status.success(), "cert issue: {}", stderr(&out));
    let ca = ca_dir.join("ca.pem");
    let (alice_cert, alice_key) = (users.join("alice.pem"), users.join("alice.key"));
    let alice = ["--ca", ca.to_str().unwrap(), "--cert", alice_cert.to_str().unwrap(), "--key", alice_key.to_str().unwrap()];
    let mut ls = vec!["ls", "/"];
    ls.extend(alice);
    let out = dfs_with(&meta, &elsewhere, &ls);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("/f.bin"), "ls as alice: {}", stderr(&out));
    let mut fsck = vec!["fsck", "/"];
    fsck.extend(alice);
    refused(dfs_with(&meta, &elsewhere, &fsck), "Fsck needs the admin role; certificate \"alice\" (role client) has write", "fsck as a client");
    let mut remove = vec!["admin", "meta", "remove", "3"];
    remove.extend(alice);
    refused(dfs_with(&meta, &elsewhere, &remove), "RemoveMetaMember needs the admin role", "removing a member as a client");
    // The node logged the refusal with who asked.
    let logged = wait_for(Duration::from_secs(10), "the refusal in a metadata node's log", || {
        (1..=3).find_map(|i| {
            std::fs::read_to_string(dir.join(format!("data/logs/meta-{i}.log"))).ok().filter(|l| l.contains("refused: Fsck") && l.contains("alice"))
        })
    });
    assert!(logged.contains("peer="), "the refusal names the peer's address: {logged}");
    // Nothing was done: still three members, the file still there.
    let out = dfs_with(&meta, &config, &["stat", "/f.bin"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_node_refuses_to_start_without_credentials_or_with_another_roles() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let certs = dir.join("certs");
    let run = |args: &[&str]| Command::new(DFS).args(args).output().unwrap();
    assert!(run(&["cert", "init", "--dir", certs.to_str().unwrap()]).status.success());
    let out = run(&["cert", "issue", "--dir", certs.to_str().unwrap(), "--role", "meta", "--name", "meta-1", "--san", "127.0.0.1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A node's certificate without --san is refused: nobody could check its address.
    let out = run(&["cert", "issue", "--dir", certs.to_str().unwrap(), "--role", "storage", "--name", "s1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--san"), "{}", stderr(&out));
    // The CA is never overwritten.
    let out = run(&["cert", "init", "--dir", certs.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));

    let listen = format!("127.0.0.1:{}", free_port());
    let data = dir.join("storage");
    let storage = |extra: &[&str]| {
        Command::new(DFS)
            .args(["storage", "--listen", &listen, "--meta", "127.0.0.1:1", "--data-dir", data.to_str().unwrap()])
            .args(extra)
            .env_remove("DFS_INSECURE")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = storage(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("needs --ca, --cert and --key") && stderr(&out).contains("--insecure"), "{}", stderr(&out));
    let (ca, cert, key) = (certs.join("ca.pem"), certs.join("meta-1.pem"), certs.join("meta-1.key"));
    let out = storage(&["--ca", ca.to_str().unwrap(), "--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("a storage node needs a certificate of role storage") && stderr(&out).contains("is of role meta"), "{}", stderr(&out));
    assert!(!data.exists(), "a node that refused to start created its data dir");
}

/// The bytes a capture of the loopback saw while a file made of a marker was put.
fn captured_put(tls: bool) -> (bool, usize) {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let base = free_ports(CLUSTER_PORTS);
    let config = dir.join("config");
    let data = dir.join("data");
    let _up = if tls { cluster_up_tls(base, &data, &config) } else { cluster_up(base, &data) };
    let meta = meta_of(base);
    let pcap = dir.join("put.pcap");
    let filter = format!("tcp portrange {}-{}", base, base + 109);
    let mut capture = Command::new("tcpdump")
        // Packets written as they come (-U), delivered to tcpdump at once rather than in the
        // kernel's blocks (--immediate-mode: a block still held at SIGTERM would be lost), and
        // as root (-Z root: tcpdump would otherwise write the file as its own user, outside
        // this test's private directory).
        .args(["-i", "lo", "-U", "--immediate-mode", "-Z", "root", "-s", "0", "-w", pcap.to_str().unwrap(), &filter])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("this test needs tcpdump (.ci/run installs it)");
    // tcpdump says "listening on lo" once it captures; its stderr is read to the end (a closed
    // pipe would kill it before it flushes), and kept for the failure message.
    let mut err = capture.stderr.take().unwrap();
    let (listening_tx, listening) = std::sync::mpsc::channel();
    let said = std::thread::spawn(move || {
        use std::io::Read;
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while err.read(&mut byte).map(|n| n == 1).unwrap_or(false) {
            seen.push(byte[0]);
            if seen.ends_with(b"listening on") {
                let _ = listening_tx.send(());
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    if listening.recv_timeout(Duration::from_secs(20)).is_err() {
        let _ = capture.kill();
        panic!("tcpdump did not start capturing: {}", said.join().unwrap());
    }
    let marker = b"dfs-plaintext-canary-0123456789-";
    let file = dir.join("secret.bin");
    std::fs::write(&file, marker.repeat((2 << 20) / marker.len())).unwrap();
    let out = dfs_with(&meta, &config, &["put", file.to_str().unwrap(), "/secret.bin"]);
    assert!(out.status.success(), "put: {}", stderr(&out));
    // The put moved 3 copies of 2 MiB: wait until the capture holds more than one (the kernel
    // may drop a few packets of a capture that cannot keep up).
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(&pcap).map_or(0, |m| m.len()) <= 2 << 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // SIGTERM: tcpdump flushes and exits.
    unsafe { libc::kill(capture.id() as i32, libc::SIGTERM) };
    capture.wait().unwrap();
    let said = said.join().unwrap();
    let captured = std::fs::metadata(&pcap).map_or(0, |m| m.len());
    assert!(captured > 2 << 20, "the capture holds only {captured} bytes: it missed the put ({said})");
    let bytes = std::fs::read(&pcap).unwrap();
    let seen = bytes.windows(marker.len()).any(|w| w == marker);
    (seen, bytes.len())
}

/// tcpdump present and allowed to capture (root); with `CI` set it must be.
fn tcpdump_available() -> bool {
    let ok = Command::new("tcpdump").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
        && unsafe { libc::geteuid() } == 0;
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "CI must run the capture test: no tcpdump here (.ci/run installs it), or not root");
        eprintln!("SKIPPED: no tcpdump, or not root");
    }
    ok
}

#[test]
fn no_chunk_byte_crosses_the_loopback_in_plaintext() {
    if !tcpdump_available() {
        return;
    }
    let (seen_plain, plain_bytes) = captured_put(false);
    assert!(seen_plain, "the capture of a put to an --insecure cluster ({plain_bytes} bytes) lacks the file's bytes: the check below could not fail");
    let (seen_tls, _) = captured_put(true);
    assert!(!seen_tls, "the file's bytes crossed the loopback in plaintext with TLS on");
}

/// Each guarded call, made on the wire with a certificate the cluster's CA signed but of another
/// role (or with none), is refused by the node it reaches; the same call with the right role
/// gets past the check (it may then fail on its empty payload, but not for its role), so the
/// refusals are the roles' doing.
#[test]
fn nodes_refuse_guarded_calls_from_certificates_of_the_wrong_role() {
    use dfs_core::env::Transport;
    use dfs_core::proto;
    use dfs_core::rpc::{ChunkService, RpcError};
    use dfs_io_real::tls::Credentials;
    use dfs_io_real::GrpcTransport;
    use futures::StreamExt;

    let tmp = TestDir::new();
    let dir = tmp.path();
    let base = free_ports(CLUSTER_PORTS);
    let data = dir.join("data");
    let _up = cluster_up_tls(base, &data, &dir.join("config"));
    let (meta, storage) = (format!("127.0.0.1:{base}"), format!("127.0.0.1:{}", base + 100));
    let tls = data.join("tls");
    let out = Command::new(DFS)
        .args(["cert", "issue", "--dir", tls.to_str().unwrap(), "--out", dir.to_str().unwrap(), "--role", "client", "--name", "alice"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let ca = tls.join("ca.pem");
    // `cluster up`'s own certificates: meta-1 (role meta), storage-1 (storage); and alice's.
    let with = |cert: &Path, key: &Path| GrpcTransport::new(Some(&Credentials::load(&ca, Some(cert), Some(key)).unwrap()));
    let member = with(&tls.join("meta-1.pem"), &tls.join("meta-1.key"));
    let storage_node = with(&tls.join("storage-1.pem"), &tls.join("storage-1.key"));
    let alice = with(&dir.join("alice.pem"), &dir.join("alice.key"));
    let anonymous = GrpcTransport::new(Some(&Credentials::load(&ca, None, None).unwrap()));
    let refused = |what: &str, r: Result<(), RpcError>| match r {
        Err(RpcError::PermissionDenied(m)) if m.contains("needs a certificate of role") => {}
        other => panic!("{what}: not refused for its role: {other:?}"),
    };
    // Past the check, the node's handler answers: the call itself (an empty payload) may be
    // refused, but not for its role, and not left unanswered.
    let admitted = |what: &str, r: Result<(), RpcError>| match r {
        Ok(()) => {}
        Err(RpcError::PermissionDenied(m)) if m.contains("needs a certificate of role") => panic!("{what}: refused for its role: {m}"),
        Err(RpcError::Transport(m)) => panic!("{what}: no answer: {m}"),
        Err(e) => eprintln!("{what}: past the role check, answered {e}"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        // Raft: a storage node, a user and a caller without a certificate cannot vote, append
        // or install a snapshot; a member can.
        for (who, t) in [("storage-1", &storage_node), ("alice", &alice), ("no certificate", &anonymous)] {
            refused(&format!("Vote by {who}"), t.unary(&meta, proto::VoteRequest::default()).await.map(drop));
            refused(&format!("AppendEntries by {who}"), t.unary(&meta, proto::AppendEntriesRequest::default()).await.map(drop));
            refused(&format!("InstallSnapshot by {who}"), t.unary(&meta, proto::InstallSnapshotRequest::default()).await.map(drop));
        }
        admitted("Vote by meta-1", member.unary(&meta, proto::VoteRequest::default()).await.map(drop));
        // Joining as a storage node: not as a user.
        for (who, t) in [("alice", &alice), ("no certificate", &anonymous)] {
            refused(&format!("RegisterStorage by {who}"), t.unary(&meta, proto::RegisterStorageRequest::default()).await.map(drop));
            refused(&format!("Heartbeat by {who}"), t.unary(&meta, proto::HeartbeatRequest::default()).await.map(drop));
        }
        admitted("RegisterStorage by storage-1", storage_node.unary(&meta, proto::RegisterStorageRequest::default()).await.map(drop));
        // Writing replicas to a storage node: only another storage node, whole or in batches.
        for (who, t) in [("alice", &alice), ("meta-1", &member), ("no certificate", &anonymous)] {
            refused(&format!("ReplicateChunks by {who}"), t.unary(&storage, proto::ReplicateChunksRequest::default()).await.map(drop));
            let frames = futures::stream::empty().boxed();
            refused(&format!("ReplicateChunk by {who}"), t.write_chunk_frames(&storage, ChunkService::Replication, frames).await.map(drop));
        }
        admitted("ReplicateChunks by storage-1", storage_node.unary(&storage, proto::ReplicateChunksRequest::default()).await.map(drop));
    });
    // The cluster still serves: nothing refused did anything.
    let out = dfs_with(&meta_of(base), &dir.join("config"), &["status"]);
    assert!(out.status.success(), "status after the refusals: {}", stderr(&out));
}

/// Chunk access tokens on the wire: a storage node reads or writes a chunk only with the
/// metadata leader's token for that chunk and that operation. With a certificate the cluster's
/// CA signed and a chunk's id and replica in hand, a call without a token, with another
/// chunk's, with a read token for a write, or with an altered one is refused (and logged);
/// the leader's own token reads the chunk. Then repair: a storage node killed, its replicas are
/// copied elsewhere by repair orders whose tokens the sources accept.
#[test]
fn storage_nodes_read_and_write_chunks_only_with_the_leaders_token() {
    use dfs_core::env::Transport;
    use dfs_core::proto;
    use dfs_core::rpc::{ChunkService, ChunkUpload, RpcError};
    use dfs_io_real::tls::Credentials;
    use dfs_io_real::GrpcTransport;

    let tmp = TestDir::new();
    let dir = tmp.path();
    let base = free_ports(CLUSTER_PORTS);
    let data = dir.join("data");
    let config = dir.join("config");
    let _up = cluster_up_tls_with(base, &data, &config, &["--storage", "4"]);
    let meta = meta_of(base);
    let (a, b) = (dir.join("a.bin"), dir.join("b.bin"));
    std::fs::write(&a, test_bytes(1 << 20, 1)).unwrap();
    std::fs::write(&b, test_bytes(1 << 20, 2)).unwrap();
    for (local, remote) in [(&a, "/a.bin"), (&b, "/b.bin")] {
        let out = dfs_with(&meta, &config, &["put", local.to_str().unwrap(), remote]);
        assert!(out.status.success(), "put {remote}: {}", stderr(&out));
    }
    let tls = data.join("tls");
    let out = Command::new(DFS)
        .args(["cert", "issue", "--dir", tls.to_str().unwrap(), "--out", dir.to_str().unwrap(), "--role", "client", "--name", "mallory"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let mallory = GrpcTransport::new(Some(&Credentials::load(&tls.join("ca.pem"), Some(&dir.join("mallory.pem")), Some(&dir.join("mallory.key"))).unwrap()));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let node = runtime.block_on(async {
        // The chunks' locations, with their read tokens, from whichever member leads.
        let located = |path: &'static str| {
            let mallory = mallory.clone();
            let meta = meta.clone();
            async move {
                for addr in meta.split(',') {
                    if let Ok(reply) = mallory.unary(addr, proto::GetFileRequest { path: path.into() }).await {
                        return reply.chunks.into_iter().next().expect("one chunk");
                    }
                }
                panic!("no member answered GetFile {path}");
            }
        };
        let (la, lb) = (located("/a.bin").await, located("/b.bin").await);
        let node = la.replicas[0].addr.clone();
        let token = la.token.clone().expect("a location carries a read token");
        let read = |chunk_id: bytes::Bytes, token: Option<proto::ChunkToken>| {
            let (mallory, node) = (mallory.clone(), node.clone());
            async move { mallory.read_chunk(&node, proto::ReadChunkRequest { chunk_id, token, ..Default::default() }).await }
        };
        let denied = |what: &str, r: Result<(), RpcError>, expected: &str| match r {
            Err(RpcError::PermissionDenied(m)) if m.contains(expected) => {}
            other => panic!("{what}: not refused for {expected:?}: {other:?}"),
        };
        // The leader's token reads the chunk.
        let got = read(la.chunk_id.clone(), Some(token.clone())).await.expect("a read with the leader's token");
        assert_eq!(got.data.len(), 1 << 20);
        denied("a read without a token", read(la.chunk_id.clone(), None).await.map(drop), "no access token");
        // b's replica on the same node, if it has one; else any of b's: a's token opens neither.
        let b_node = lb.replicas.iter().find(|r| r.addr == node).map_or(lb.replicas[0].addr.clone(), |r| r.addr.clone());
        let other =
            mallory.read_chunk(&b_node, proto::ReadChunkRequest { chunk_id: lb.chunk_id.clone(), token: Some(token.clone()), ..Default::default() }).await;
        denied("a's token on b's chunk", other.map(drop), "signature does not match");
        let later = proto::ChunkToken { expires_unix_ms: token.expires_unix_ms + 86_400_000, ..token.clone() };
        denied("a token with its expiry pushed back", read(la.chunk_id.clone(), Some(later)).await.map(drop), "signature does not match");
        let forged = proto::ChunkToken { mac: vec![0u8; 32].into(), ..token.clone() };
        denied("a forged token", read(la.chunk_id.clone(), Some(forged)).await.map(drop), "signature does not match");
        // Batched reads are checked item by item.
        let batch = proto::ReadChunksRequest { chunks: vec![proto::ReadChunkRequest { chunk_id: la.chunk_id.clone(), ..Default::default() }] };
        let reply = mallory.unary(&node, batch).await.expect("a batch is answered item by item");
        match &reply.results[0].result {
            Some(proto::chunk_read_result::Result::Error(e)) => assert!(e.message.contains("no access token"), "{e:?}"),
            other => panic!("a batched read without a token: {other:?}"),
        }
        // Overwriting the chunk: not with no token, not with a read token.
        let junk = bytes::Bytes::from(vec![0u8; 1 << 20]);
        let sha = dfs_core::ids::Sha256Digest::of(&junk);
        let write = |token: Option<proto::ChunkToken>| {
            let header =
                proto::WriteChunkHeader { chunk_id: la.chunk_id.clone(), size: junk.len() as u64, sha256: sha.0.to_vec().into(), token, ..Default::default() };
            mallory.write_chunk(&node, ChunkService::Storage, ChunkUpload { header, data: junk.clone() })
        };
        denied("a write without a token", write(None).await.map(drop), "no access token");
        denied("a write with a read token", write(Some(token.clone())).await.map(drop), "allows no write");
        // The chunk is intact.
        let again = read(la.chunk_id.clone(), Some(token.clone())).await.expect("read again");
        assert_eq!(again.data, got.data, "a refused write changed the chunk");
        node
    });
    let out = dfs_with(&meta, &config, &["get", "/a.bin", dir.join("a.back").to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_file(&a, &dir.join("a.back"));
    let logged = wait_for(Duration::from_secs(10), "a storage node's log of a refused chunk call", || {
        (1..=4).find_map(|i| std::fs::read_to_string(data.join(format!("logs/storage-{i}.log"))).ok().filter(|l| l.contains("refused: chunk")))
    });
    assert!(logged.contains("no access token"), "{logged}");

    // Repair under tokens: the node read from above (it holds a replica of /a.bin) goes; its
    // copies are made again on the others, each a repair order whose token the source checks.
    let port: u16 = node.rsplit(':').next().unwrap().parse().unwrap();
    let name = format!("storage-{}", port - (base + 100) + 1);
    let out = dfs_with(&meta, &config, &["cluster", "stop", &name, "--data-dir", data.to_str().unwrap()]);
    assert!(out.status.success(), "stop {name}: {}", stderr(&out));
    let healthy = || {
        let out = dfs_with(&meta, &config, &["fsck", "/", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["healthy"].as_bool()
    };
    wait_for(Duration::from_secs(60), "fsck to see the stopped node's replicas missing", || (healthy() == Some(false)).then_some(()));
    wait_for(Duration::from_secs(120), "repair to make every chunk whole again", || (healthy() == Some(true)).then_some(()));
    let out = dfs_with(&meta, &config, &["get", "/a.bin", dir.join("a.again").to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_file(&a, &dir.join("a.again"));
}

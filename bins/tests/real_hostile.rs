//! Hostile requests on the wire, to real processes on 127.0.0.1: chunk ids and paths crafted to
//! reach outside a node's data dir (`../`, absolute paths, NUL bytes, ids of the wrong length)
//! are refused as the caller's mistake, and no file appears anywhere but where the nodes keep
//! their data; chunk ids that parse (16 bytes, whatever they spell) name files under the data
//! dir only. And requests larger than a call may be are refused by the servers' decoders
//! before they are read whole, the node serving on. Issue 22's "path and resource safety".

#![cfg(not(madsim))]

use std::path::{Path, PathBuf};

use bytes::Bytes;
use dfs_core::env::Transport;
use dfs_core::proto;
use dfs_core::rpc::{ChunkService, ChunkUpload, RpcError};
use dfs_io_real::GrpcTransport;

mod common;

use common::*;

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn invalid(what: &str, r: Result<(), RpcError>) {
    match r {
        Err(RpcError::InvalidArgument(_)) => {}
        other => panic!("{what}: not refused as an invalid argument: {other:?}"),
    }
}

/// A plaintext metadata node and a storage node, running while `_procs` is held.
struct Nodes {
    meta: String,
    meta_dir: PathBuf,
    storage: String,
    _procs: [Proc; 2],
}

fn one_of_each(dir: &Path) -> Nodes {
    let meta = format!("127.0.0.1:{}", free_port());
    let meta_dir = dir.join("meta");
    let meta_proc = spawn(
        "meta",
        &["meta", "--id", "1", "--listen", &meta, "--data-dir", meta_dir.to_str().unwrap(), "--peers", &format!("1={meta}")].map(String::from),
        dir,
    );
    let storage_proc = spawn_storage(dir, 1, &meta, &[]);
    wait_ready(&meta, 1);
    let status = dfs_ok(&meta, &["--json", "status"]);
    let storage = serde_json::from_str::<serde_json::Value>(&status).unwrap()["storage_nodes"][0]["addr"].as_str().unwrap().to_string();
    Nodes { meta, meta_dir, storage, _procs: [meta_proc, storage_proc] }
}

#[test]
fn crafted_chunk_ids_and_paths_never_reach_outside_a_nodes_data_dir() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let Nodes { meta, meta_dir, storage: storage_addr, _procs } = one_of_each(dir);
    // Where a traversal would land: beside the data dirs, and the process's working dir.
    let outside = dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let before: Vec<PathBuf> = files_under(dir).into_iter().filter(|p| !p.starts_with(dir.join("storage-1")) && !p.starts_with(&meta_dir)).collect();

    let crafted: Vec<Vec<u8>> = vec![
        b"../../outside/x".to_vec(),
        format!("{}/x", outside.display()).into_bytes(),
        b"/etc/passwd".to_vec(),
        b"".to_vec(),
        b"..\0/..\0/..\0/..\0".to_vec()[..15].to_vec(),
        vec![b'.'; 17],
        vec![0xff; 64],
    ];
    let transport = GrpcTransport::default();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        for id in &crafted {
            let chunk_id = Bytes::from(id.clone());
            let shown = String::from_utf8_lossy(id);
            invalid(
                &format!("ReadChunk {shown:?}"),
                transport.read_chunk(&storage_addr, proto::ReadChunkRequest { chunk_id: chunk_id.clone(), ..Default::default() }).await.map(drop),
            );
            let header = proto::WriteChunkHeader { chunk_id: chunk_id.clone(), size: 4, sha256: Bytes::from(vec![0u8; 32]), ..Default::default() };
            let upload = ChunkUpload { header: header.clone(), data: Bytes::from_static(b"evil") };
            invalid(&format!("WriteChunk {shown:?}"), transport.write_chunk(&storage_addr, ChunkService::Storage, upload).await.map(drop));
            // In batches, each chunk gets its own answer: an error, never a write.
            let batch = proto::WriteChunksRequest { chunks: vec![proto::ChunkWrite { header: Some(header), data: Bytes::from_static(b"evil") }] };
            let answer = transport.unary(&storage_addr, batch).await.expect("a batch is answered chunk by chunk");
            assert!(answer.results.iter().all(|r| matches!(r.result, Some(proto::chunk_write_result::Result::Error(_)))), "WriteChunks {shown:?}: {answer:?}");
            let reads = proto::ReadChunksRequest { chunks: vec![proto::ReadChunkRequest { chunk_id, ..Default::default() }] };
            match transport.unary(&storage_addr, reads).await {
                Err(RpcError::InvalidArgument(_)) => {}
                Ok(a) => assert!(
                    a.results.iter().all(|r| matches!(r.result, Some(proto::chunk_read_result::Result::Error(_)))),
                    "ReadChunks {shown:?} served something: {a:?}"
                ),
                Err(e) => panic!("ReadChunks {shown:?}: {e}"),
            }
        }
        // Paths: metadata refuses every way out of the namespace's root as the caller's mistake.
        for path in ["/../outside/x", "/a/../../etc/passwd", "a\0b", &format!("/{}", "x/".repeat(3000))] {
            let request = proto::CreateFileRequest { path: path.to_string(), size: 1, chunk_size: 1 << 20, replication: 1, ..Default::default() };
            invalid(&format!("CreateFile {:?}", &path[..path.len().min(40)]), transport.unary(&meta, request).await.map(drop));
            let request = proto::MkdirRequest { path: path.to_string(), ..Default::default() };
            invalid(&format!("Mkdir {:?}", &path[..path.len().min(40)]), transport.unary(&meta, request).await.map(drop));
        }
    });
    // Ids of the right length that spell a way out: stored, if at all, under the data dir by
    // their hex (the writes are correct chunks, so a node may keep them).
    let spelled: Vec<[u8; 16]> = vec![*b"../../../etc/pwd", *b"/tmp/outside/x\0\0", *b"..\\..\\..\\win\\xyz"];
    runtime.block_on(async {
        for id in &spelled {
            let data = Bytes::from_static(b"bytes");
            let sha256 = Bytes::copy_from_slice(&<sha2::Sha256 as sha2::Digest>::digest(&data));
            let header = proto::WriteChunkHeader { chunk_id: Bytes::copy_from_slice(id), size: data.len() as u64, sha256, ..Default::default() };
            let _ = transport.write_chunk(&storage_addr, ChunkService::Storage, ChunkUpload { header, data }).await;
        }
    });
    let layout = dfs_core::chunk_store::ChunkLayout::new(dir.join("storage-1"));
    let allowed: Vec<PathBuf> = spelled.iter().map(|id| layout.chunk_path(dfs_core::ids::ChunkId(*id))).collect();
    let kept: Vec<PathBuf> = files_under(&dir.join("storage-1/chunks")).into_iter().filter(|p| p.extension().is_some_and(|e| e == "chunk")).collect();
    assert!(!kept.is_empty(), "no spelled chunk was stored: the check below would prove nothing");
    assert!(kept.iter().all(|p| allowed.contains(p)), "chunk files other than the spelled ids' hex names: {kept:?}");
    for id in &spelled {
        std::fs::remove_file(layout.chunk_path(dfs_core::ids::ChunkId(*id))).ok();
    }
    // Nothing appeared outside the nodes' data dirs.
    let after: Vec<PathBuf> = files_under(dir).into_iter().filter(|p| !p.starts_with(dir.join("storage-1")) && !p.starts_with(&meta_dir)).collect();
    assert_eq!(after, before, "files appeared outside the data dirs");
    assert!(files_under(&outside).is_empty());
    // And inside the storage node's, no chunk was kept but the spelled ones.
    let chunks: Vec<PathBuf> = files_under(&dir.join("storage-1/chunks")).into_iter().filter(|p| p.extension().is_some_and(|e| e == "chunk")).collect();
    assert!(chunks.is_empty(), "chunks were written: {chunks:?}");
}

/// A raw gRPC call with no size limit of its own, as a hostile client would make it.
async fn raw_unary<Req, Resp>(addr: &str, path: &'static str, request: Req) -> Result<Resp, tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel).max_encoding_message_size(usize::MAX).max_decoding_message_size(usize::MAX);
    grpc.ready().await.expect("ready");
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    grpc.unary(tonic::Request::new(request), tonic::codegen::http::uri::PathAndQuery::from_static(path), codec).await.map(|r| r.into_inner())
}

/// Each server decodes no more than its calls may carry: a metadata call over 64 MiB, a chunk
/// batch over its 4 MiB of chunks (and headers), a chunk stream frame over 256 KiB (and its
/// header) are refused before they are read whole; the nodes serve on.
#[test]
fn oversized_requests_are_refused_by_the_decoders() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let Nodes { meta, storage, _procs, .. } = one_of_each(dir);
    let too_large = |what: &str, r: Result<(), tonic::Status>| match r {
        Err(s) if matches!(s.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted) => {}
        // Inside a stream the handler gets the decoder's refusal, and answers it as the sender's.
        Err(s) if s.code() == tonic::Code::InvalidArgument && s.message().contains("message length too large") => {}
        other => panic!("{what}: not refused for its size: {other:?}"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let path = "x".repeat(dfs_core::limits::UNARY_MESSAGE_MAX_BYTES + 1);
        let r = raw_unary::<_, proto::GetFileResponse>(&meta, "/dfs.v1.MetadataService/GetFile", proto::GetFileRequest { path }).await;
        too_large("a 64 MiB GetFile", r.map(drop));
        let chunks: Vec<proto::ChunkWrite> = (0..dfs_core::limits::CHUNK_BATCH_MAX)
            .map(|i| proto::ChunkWrite {
                header: Some(proto::WriteChunkHeader { chunk_id: vec![i as u8; 16].into(), ..Default::default() }),
                data: vec![0u8; 96 * 1024].into(),
            })
            .collect();
        let r = raw_unary::<_, proto::WriteChunksResponse>(&storage, "/dfs.v1.ChunkBatchService/WriteChunks", proto::WriteChunksRequest { chunks }).await;
        too_large("a 6 MiB WriteChunks", r.map(drop));
        // A stream frame: the storage service's decoder looks at each message of the stream.
        let channel = tonic::transport::Channel::from_shared(format!("http://{storage}")).unwrap().connect().await.expect("connect");
        let mut grpc = tonic::client::Grpc::new(channel).max_encoding_message_size(usize::MAX);
        grpc.ready().await.expect("ready");
        let frame = proto::WriteChunkFrame {
            header: Some(proto::WriteChunkHeader { chunk_id: vec![1; 16].into(), size: 1 << 20, ..Default::default() }),
            data: vec![0u8; 1 << 20].into(),
        };
        let codec = tonic_prost::ProstCodec::<proto::WriteChunkFrame, proto::WriteChunkResponse>::default();
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(dfs_core::rpc::WRITE_CHUNK_PATH);
        let r = grpc.client_streaming(tonic::Request::new(futures::stream::iter([frame])), path, codec).await;
        too_large("a 1 MiB chunk frame", r.map(drop));
        // Both nodes still answer.
        let alive = raw_unary::<_, proto::ClusterStatusResponse>(&meta, "/dfs.v1.MetadataService/ClusterStatus", proto::ClusterStatusRequest::default()).await;
        assert!(alive.is_ok(), "the metadata node stopped answering: {alive:?}");
        let read = proto::ReadChunksRequest { chunks: vec![proto::ReadChunkRequest { chunk_id: vec![1; 16].into(), ..Default::default() }] };
        let alive = raw_unary::<_, proto::ReadChunksResponse>(&storage, "/dfs.v1.ChunkBatchService/ReadChunks", read).await;
        assert!(alive.is_ok(), "the storage node stopped answering: {alive:?}");
    });
}

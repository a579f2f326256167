//! Hostile requests on the wire, to real processes on 127.0.0.1: chunk ids and paths crafted to
//! reach outside a node's data dir (`../`, absolute paths, NUL bytes, ids of the wrong length)
//! are refused as the caller's mistake, and no file appears anywhere but where the nodes keep
//! their data. The first part of issue 22's "path and resource safety".

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

#[test]
fn crafted_chunk_ids_and_paths_never_reach_outside_a_nodes_data_dir() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let meta_port = free_port();
    let meta = format!("127.0.0.1:{meta_port}");
    let meta_dir = dir.join("meta");
    let _meta = spawn(
        "meta",
        &["meta", "--id", "1", "--listen", &meta, "--data-dir", meta_dir.to_str().unwrap(), "--peers", &format!("1={meta}")].map(String::from),
        dir,
    );
    let _storage = spawn_storage(dir, 1, &meta, &[]);
    wait_ready(&meta, 1);
    let status = dfs_ok(&meta, &["--json", "status"]);
    let storage_addr = serde_json::from_str::<serde_json::Value>(&status).unwrap()["storage_nodes"][0]["addr"].as_str().unwrap().to_string();
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
    // Nothing appeared outside the nodes' data dirs.
    let after: Vec<PathBuf> = files_under(dir).into_iter().filter(|p| !p.starts_with(dir.join("storage-1")) && !p.starts_with(&meta_dir)).collect();
    assert_eq!(after, before, "files appeared outside the data dirs");
    assert!(files_under(&outside).is_empty());
    // And inside the storage node's, no chunk was kept.
    let chunks: Vec<PathBuf> = files_under(&dir.join("storage-1/chunks"));
    assert!(chunks.is_empty(), "chunks were written: {chunks:?}");
}

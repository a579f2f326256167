//! Batch metadata calls keep per-item semantics, and a client's concurrent small files share
//! them.
//!
//! Checkers: in `CreateFiles`, `CommitFiles` and `GetFiles`, an item that is refused (bad
//! path, name taken, unknown upload, no such file) fails alone with the error the single call
//! gives, and the other items of the same call take effect; a batch past the item limit is
//! refused whole; many files put and got at once through one client (whose calls are batched)
//! all come back byte-identical.

#![cfg(madsim)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dfs_core::client::{ClientConfig, MetaClient, NoProgress, RetryPolicy};
use dfs_core::env::Disk;
use dfs_core::proto;
use dfs_core::rpc::RpcError;
use dfs_io_sim::{SimDisk, SimEnv};
use dfs_sim_tests::cluster::{Cluster, ClusterConfig};
use dfs_sim_tests::seeds::{self, SimTest};
use dfs_sim_tests::trace;

const FILES_AT_ONCE: usize = 40;

fn create(path: &str, seq: u64) -> proto::CreateFileRequest {
    proto::CreateFileRequest {
        path: path.into(),
        size: 0,
        chunk_size: 64 * 1024,
        replication: 3,
        request_id: Some(proto::RequestId { client: 7, seq }),
        ..Default::default()
    }
}

fn error_of<T: std::fmt::Debug>(r: Option<Result<T, proto::ErrorDetail>>) -> RpcError {
    match r {
        Some(Err(e)) => RpcError::from_detail(e),
        other => panic!("expected an error, got {other:?}"),
    }
}

async fn per_item(meta: MetaClient<SimEnv>) {
    use proto::commit_file_result::Result as Commit;
    use proto::create_file_result::Result as Create;
    use proto::get_file_result::Result as Get;
    let created =
        meta.call(proto::CreateFilesRequest { files: vec![create("/b/a", 1), create("", 2), create("/b/c", 3)] }).await.expect("create batch").results;
    let created: Vec<Option<Result<proto::CreateFileResponse, proto::ErrorDetail>>> = created
        .into_iter()
        .map(|r| {
            r.result.map(|r| match r {
                Create::Ok(ok) => Ok(ok),
                Create::Error(e) => Err(e),
            })
        })
        .collect();
    assert_eq!(created.len(), 3);
    let (a, c) = (created[0].clone().unwrap().unwrap().file_id, created[2].clone().unwrap().unwrap().file_id);
    assert!(matches!(error_of(created[1].clone()), RpcError::InvalidArgument(_)), "{:?}", created[1]);

    let commit = |file_id| proto::CommitFileRequest { file_id, ..Default::default() };
    let committed: Vec<_> = meta
        .call(proto::CommitFilesRequest { files: vec![commit(a), commit(u64::MAX), commit(c)] })
        .await
        .expect("commit batch")
        .results
        .into_iter()
        .map(|r| {
            r.result.map(|r| match r {
                Commit::Ok(ok) => Ok(ok),
                Commit::Error(e) => Err(e),
            })
        })
        .collect();
    assert_eq!(committed[0].clone().unwrap().unwrap().file.unwrap().path, "/b/a");
    assert!(matches!(error_of(committed[1].clone()), RpcError::NotFound(_)), "{:?}", committed[1]);
    assert_eq!(committed[2].clone().unwrap().unwrap().file.unwrap().path, "/b/c");

    // A name now taken fails its item only, as the single call would.
    let again: Vec<_> = meta.call(proto::CreateFilesRequest { files: vec![create("/b/a", 4), create("/b/d", 5)] }).await.expect("second create batch").results;
    match &again[0].result {
        Some(Create::Error(e)) => assert!(matches!(RpcError::from_detail(e.clone()), RpcError::AlreadyExists(_)), "{e:?}"),
        other => panic!("a taken name was accepted: {other:?}"),
    }
    assert!(matches!(again[1].result, Some(Create::Ok(_))));
    let single = meta.call(create("/b/a", 6)).await;
    assert!(matches!(single, Err(RpcError::AlreadyExists(_))), "{single:?}");

    let get = |path: &str| proto::GetFileRequest { path: path.into() };
    let got = meta.call(proto::GetFilesRequest { files: vec![get("/b/a"), get("/b/missing"), get("/b/c")] }).await.expect("get batch").results;
    let paths: Vec<Result<String, RpcError>> = got
        .into_iter()
        .map(|r| match r.result {
            Some(Get::Ok(ok)) => Ok(ok.file.unwrap().path),
            Some(Get::Error(e)) => Err(RpcError::from_detail(e)),
            None => panic!("an item without a result"),
        })
        .collect();
    assert_eq!(paths[0], Ok("/b/a".to_string()));
    assert!(matches!(&paths[1], Err(RpcError::NotFound(_))), "{:?}", paths[1]);
    assert_eq!(paths[2], Ok("/b/c".to_string()));

    let too_many = meta.call(proto::GetFilesRequest { files: (0..257).map(|i| get(&format!("/x{i}"))).collect() }).await;
    assert!(matches!(too_many, Err(RpcError::InvalidArgument(_))), "{too_many:?}");
    let empty = meta.call(proto::CreateFilesRequest { files: vec![] }).await;
    assert!(matches!(empty, Err(RpcError::InvalidArgument(_))), "{empty:?}");
}

async fn scenario() {
    let cluster = Cluster::start(ClusterConfig::default());
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    cluster.wait_for_storage(3, Duration::from_secs(30)).await;
    let disk = SimDisk::new(1 << 30);
    let meta = MetaClient::new(cluster.client_env(&disk), cluster.meta_addrs(), RetryPolicy::default());
    cluster.on_client(per_item(meta)).await;
    trace::event("batch items keep their own results");

    let client = Arc::new(cluster.client(ClientConfig { chunk_size: 64 * 1024, ..ClientConfig::default() }, &disk));
    let mut expected = Vec::new();
    for i in 0..FILES_AT_ONCE {
        let data = Bytes::from(vec![i as u8; 1000 + i * 37]);
        let local = PathBuf::from(format!("/in/f{i}"));
        disk.create_dir_all(local.parent().unwrap()).await.unwrap();
        disk.write_file(&local, data.clone()).await.unwrap();
        expected.push(data);
    }
    disk.create_dir_all(&PathBuf::from("/out")).await.unwrap();
    let c = client.clone();
    cluster
        .on_client(async move {
            let puts = (0..FILES_AT_ONCE).map(|i| {
                let c = c.clone();
                async move { c.put(&PathBuf::from(format!("/in/f{i}")), &format!("/many/f{i}"), false, &NoProgress).await }
            });
            for r in futures::future::join_all(puts).await {
                r.expect("put");
            }
            let gets = (0..FILES_AT_ONCE).map(|i| {
                let c = c.clone();
                async move { c.get(&format!("/many/f{i}"), &PathBuf::from(format!("/out/f{i}")), &NoProgress).await }
            });
            for r in futures::future::join_all(gets).await {
                r.expect("get");
            }
        })
        .await;
    for (i, data) in expected.iter().enumerate() {
        assert!(disk.read_file(&PathBuf::from(format!("/out/f{i}"))).await.unwrap() == *data, "/many/f{i} came back different");
    }
    trace::event(format!("{FILES_AT_ONCE} files put and got at once, byte-identical"));
}

#[test]
fn batch_items_keep_their_own_semantics() {
    seeds::run_all(SimTest { file: "meta_batch", name: "batch_items_keep_their_own_semantics" }, scenario);
}

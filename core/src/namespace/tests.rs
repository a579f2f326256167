use super::*;
use proptest::prelude::*;

const CHUNK: u64 = chunking::MIN_CHUNK_SIZE;

fn register(ns: &mut Namespace, ids: &[u64]) {
    for &id in ids {
        ns.apply(Command::RegisterStorageNode { node: StorageNodeId(id), addr: format!("n{id}:1"), capacity_bytes: 1 << 30 }).unwrap();
    }
}

fn create(ns: &mut Namespace, path: &str, size: u64, overwrite: bool) -> Result<FileId, NamespaceError> {
    match ns.apply(Command::CreateFile { path: path.into(), size, chunk_size: CHUNK, replication: 3, overwrite, unix_ms: 7 })? {
        Outcome::FileCreated(id) => Ok(id),
        other => panic!("unexpected {other:?}"),
    }
}

fn chunks_for(size: u64, replicas: &[u64]) -> Vec<ChunkRecord> {
    chunking::spans(size, CHUNK)
        .map(|s| ChunkRecord {
            index: s.index,
            size: s.len,
            sha256: Sha256Digest([s.index as u8; 32]),
            replicas: replicas.iter().map(|&r| StorageNodeId(r)).collect(),
        })
        .collect()
}

fn upload(ns: &mut Namespace, path: &str, size: u64, overwrite: bool) -> Result<FileSummary, NamespaceError> {
    let id = create(ns, path, size, overwrite)?;
    ns.apply(Command::RecordChunks { file: id, chunks: chunks_for(size, &[1, 2, 3]) })?;
    match ns.apply(Command::CommitFile { file: id, unix_ms: 9 })? {
        Outcome::FileCommitted(s) => Ok(s),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn paths_are_normalized_and_checked() {
    assert_eq!(normalize_path("a//b/").unwrap(), "/a/b");
    assert_eq!(normalize_path("/x").unwrap(), "/x");
    for bad in ["", "/", "//", "/a/../b", "/./a", "/a\0b"] {
        assert!(normalize_path(bad).is_err(), "{bad:?} accepted");
    }
    assert!(normalize_path(&format!("/{}", "n".repeat(256))).is_err());
    assert!(normalize_path(&"/a".repeat(2100)).is_err());
}

#[test]
fn an_upload_becomes_visible_only_at_commit() {
    let mut ns = Namespace::default();
    register(&mut ns, &[1, 2, 3]);
    let id = create(&mut ns, "/f", 3 * CHUNK + 1, false).unwrap();
    assert!(ns.file("/f").is_none());
    let mut chunks = chunks_for(3 * CHUNK + 1, &[1, 2]);
    let last = chunks.pop().unwrap();
    ns.apply(Command::RecordChunks { file: id, chunks }).unwrap();
    assert_eq!(
        ns.apply(Command::CommitFile { file: id, unix_ms: 1 }),
        Err(NamespaceError::Incomplete { file: id, missing: 1, total: 4 })
    );
    ns.apply(Command::RecordChunks { file: id, chunks: vec![last] }).unwrap();
    let committed = ns.apply(Command::CommitFile { file: id, unix_ms: 1 }).unwrap();
    assert_eq!(ns.file("/f").unwrap().chunks.len(), 4);
    // a retried commit answers the same
    assert_eq!(ns.apply(Command::CommitFile { file: id, unix_ms: 2 }).unwrap(), committed);
}

#[test]
fn bad_chunks_are_refused_without_change() {
    let mut ns = Namespace::default();
    register(&mut ns, &[1, 2]);
    let id = create(&mut ns, "/f", CHUNK + 10, false).unwrap();
    let before = ns.clone();
    let mut wrong_size = chunks_for(CHUNK + 10, &[1]);
    wrong_size[1].size = 11;
    assert!(matches!(ns.apply(Command::RecordChunks { file: id, chunks: wrong_size }), Err(NamespaceError::BadChunk { index: 1, .. })));
    let mut beyond = chunks_for(CHUNK + 10, &[1]);
    beyond[1].index = 2;
    assert!(ns.apply(Command::RecordChunks { file: id, chunks: beyond }).is_err());
    assert!(ns.apply(Command::RecordChunks { file: id, chunks: chunks_for(CHUNK + 10, &[1, 9]) }).is_err());
    assert!(ns.apply(Command::RecordChunks { file: id, chunks: chunks_for(CHUNK + 10, &[1, 1]) }).is_err());
    assert!(ns.apply(Command::RecordChunks { file: id, chunks: chunks_for(CHUNK + 10, &[]) }).is_err());
    assert_eq!(ns, before);
}

#[test]
fn overwrite_replaces_atomically_and_collects_garbage() {
    let mut ns = Namespace::default();
    register(&mut ns, &[1, 2, 3]);
    let old = upload(&mut ns, "/f", 2 * CHUNK, false).unwrap();
    assert_eq!(upload(&mut ns, "/f", 1, false), Err(NamespaceError::AlreadyExists("/f".into())));
    let new = upload(&mut ns, "/f", 1, true).unwrap();
    assert_ne!(old.id, new.id);
    assert_eq!(ns.file("/f").unwrap().size, 1);
    let garbage = ns.garbage_for(StorageNodeId(2), 100);
    assert_eq!(garbage.len(), 2);
    assert!(garbage.contains(&ChunkId::derive(old.id, 0)));
    ns.apply(Command::ForgetDeletedReplicas { node: StorageNodeId(2), chunks: garbage }).unwrap();
    assert!(ns.garbage_for(StorageNodeId(2), 100).is_empty());
    assert_eq!(ns.garbage_for(StorageNodeId(1), 100).len(), 2);
}

#[test]
fn a_path_is_a_file_or_a_directory_never_both() {
    let mut ns = Namespace::default();
    register(&mut ns, &[1, 2, 3]);
    upload(&mut ns, "/a/b", 1, false).unwrap();
    assert!(matches!(upload(&mut ns, "/a", 1, true), Err(NamespaceError::IsDirectory(_))));
    assert!(matches!(upload(&mut ns, "/a/b/c", 1, true), Err(NamespaceError::ParentIsFile { .. })));
    upload(&mut ns, "/a b", 1, false).unwrap();
    upload(&mut ns, "/a/c", 0, false).unwrap();
    let (all, more) = ns.list("/a", "", 10);
    assert_eq!(all.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), vec!["/a/b", "/a/c"]);
    assert!(!more);
    let (page, more) = ns.list("/", "", 2);
    assert_eq!((page.len(), more), (2, true));
    let (rest, more) = ns.list("/", &page[1].path, 2);
    assert_eq!((rest.len(), more), (1, false));
    assert_eq!(ns.list("/a/b", "", 10).0.len(), 1);
    assert_eq!(ns.list("/nothing", "", 10).0.len(), 0);
}

#[test]
fn deleting_frees_the_path_and_queues_replicas() {
    let mut ns = Namespace::default();
    register(&mut ns, &[1, 2, 3]);
    let f = upload(&mut ns, "/d", CHUNK, false).unwrap();
    assert_eq!(ns.apply(Command::DeleteFile { path: "d".into() }), Ok(Outcome::FileDeleted(f.clone())));
    assert_eq!(ns.apply(Command::DeleteFile { path: "/d".into() }), Err(NamespaceError::NotFound("/d".into())));
    assert_eq!(ns.garbage_for(StorageNodeId(3), 10), vec![ChunkId::derive(f.id, 0)]);
    // an old upload's commit after delete is refused, not resurrected
    assert_eq!(ns.apply(Command::CommitFile { file: f.id, unix_ms: 1 }), Err(NamespaceError::UploadNotFound(f.id)));
}

// ---- model-based property test ---------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Upload { path: usize, size: u64, overwrite: bool },
    CreateOnly { path: usize, size: u64 },
    Record { upload: usize, chunk: u32, node: u64 },
    Commit { upload: usize },
    Delete { path: usize },
    Forget { node: u64, n: usize },
}

const PATHS: [&str; 6] = ["/a", "/a/b", "/b", "/b/c/d", "/c", "a"];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..PATHS.len(), 0..4 * CHUNK, any::<bool>()).prop_map(|(path, size, overwrite)| Op::Upload { path, size, overwrite }),
        (0..PATHS.len(), 0..4 * CHUNK).prop_map(|(path, size)| Op::CreateOnly { path, size }),
        (0..8usize, 0..5u32, 1..5u64).prop_map(|(upload, chunk, node)| Op::Record { upload, chunk, node }),
        (0..8usize).prop_map(|upload| Op::Commit { upload }),
        (0..PATHS.len()).prop_map(|path| Op::Delete { path }),
        (1..5u64, 0..4usize).prop_map(|(node, n)| Op::Forget { node, n }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct(
            concat!(env!("CARGO_MANIFEST_DIR"), "/../proptest-regressions/core-namespace.txt")))),
        cases: 512,
        ..ProptestConfig::default()
    })]
    #[test]
    fn namespace_invariants_hold_under_any_command_sequence(ops in proptest::collection::vec(op(), 1..60)) {
        let mut ns = Namespace::default();
        register(&mut ns, &[1, 2, 3]);
        // model: path -> (file id, size)
        let mut model: BTreeMap<String, (FileId, u64)> = BTreeMap::new();
        let mut created: Vec<FileId> = Vec::new();
        for op in ops {
            let before = ns.clone();
            let result = match op {
                Op::Upload { path, size, overwrite } => upload(&mut ns, PATHS[path], size, overwrite).map(|s| {
                    model.insert(s.path.clone(), (s.id, s.size));
                    Outcome::FileCommitted(s)
                }),
                Op::CreateOnly { path, size } => create(&mut ns, PATHS[path], size, true).map(|id| {
                    created.push(id);
                    Outcome::FileCreated(id)
                }),
                Op::Record { upload, chunk, node } => match created.get(upload) {
                    Some(&file) => {
                        let size = ns.upload(file).map(|u| chunking::chunk_len(u.size, u.chunk_size, chunk).unwrap_or(1)).unwrap_or(1);
                        ns.apply(Command::RecordChunks { file, chunks: vec![ChunkRecord { index: chunk, size, sha256: Sha256Digest([0; 32]), replicas: vec![StorageNodeId(node)] }] })
                    }
                    None => continue,
                },
                Op::Commit { upload } => match created.get(upload) {
                    Some(&file) => ns.apply(Command::CommitFile { file, unix_ms: 3 }).inspect(|o| {
                        if let Outcome::FileCommitted(s) = o {
                            model.insert(s.path.clone(), (s.id, s.size));
                        }
                    }),
                    None => continue,
                },
                Op::Delete { path } => ns.apply(Command::DeleteFile { path: PATHS[path].into() }).inspect(|o| {
                    if let Outcome::FileDeleted(s) = o {
                        model.remove(&s.path);
                    }
                }),
                Op::Forget { node, n } => {
                    let chunks = ns.garbage_for(StorageNodeId(node), n);
                    ns.apply(Command::ForgetDeletedReplicas { node: StorageNodeId(node), chunks })
                }
            };
            if result.is_err() {
                prop_assert_eq!(&ns, &before, "a refused command changed the state");
            }
            // the namespace holds exactly the model's files
            let files: BTreeMap<String, (FileId, u64)> = ns.files().map(|f| (f.path.clone(), (f.id, f.size))).collect();
            prop_assert_eq!(&files, &model);
            for f in ns.files() {
                // every committed file is complete and tiles its size
                prop_assert_eq!(f.chunks.len() as u64, chunking::chunk_count(f.size, f.chunk_size));
                prop_assert_eq!(f.chunks.iter().map(|c| c.size).sum::<u64>(), f.size);
                prop_assert!(f.chunks.iter().enumerate().all(|(i, c)| c.index as usize == i && !c.replicas.is_empty()));
                // no file sits above another
                for (i, _) in f.path.match_indices('/').skip(1) {
                    prop_assert!(ns.file(&f.path[..i]).is_none());
                }
                // the live file's replicas are never queued for deletion
                for c in &f.chunks {
                    for r in &c.replicas {
                        prop_assert!(!ns.garbage_for(*r, usize::MAX).contains(&f.chunk_id(c.index)));
                    }
                }
            }
            // a snapshot restores the same state
            let restored: Namespace = serde_json::from_slice(&serde_json::to_vec(&ns).unwrap()).unwrap();
            prop_assert_eq!(&restored, &ns);
        }
    }
}

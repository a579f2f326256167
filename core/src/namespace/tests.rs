use super::*;
use proptest::prelude::*;

const CHUNK: u64 = chunking::MIN_CHUNK_SIZE;

fn register(ns: &mut Namespace, ids: &[u64]) {
    for &id in ids {
        ns.apply(Command::RegisterStorageNode { node: StorageNodeId(id), addr: format!("n{id}:1"), capacity_bytes: 1 << 30, rack: None }).unwrap();
    }
}

fn create(ns: &mut Namespace, path: &str, size: u64, overwrite: bool) -> Result<FileId, NamespaceError> {
    match ns.apply(create_cmd(path, size, overwrite))? {
        Outcome::FileCreated(id) => Ok(id),
        other => panic!("unexpected {other:?}"),
    }
}

fn create_cmd(path: &str, size: u64, overwrite: bool) -> Command {
    Command::CreateFile {
        path: path.into(),
        size,
        chunk_size: CHUNK,
        replication: 3,
        overwrite,
        expect_file_id: None,
        request_id: None,
        unix_ms: 7,
        attrs: Default::default(),
    }
}

fn empty_file_cmd(path: &str, overwrite: bool) -> Command {
    Command::CreateEmptyFile {
        path: path.into(),
        chunk_size: CHUNK,
        replication: 3,
        overwrite,
        expect_file_id: None,
        unix_ms: 7,
        attrs: FileAttrs { mode: Some(0o640), mtime_unix_ms: Some(3) },
        object: None,
    }
}

fn delete(path: &str) -> Command {
    Command::Delete { path: path.into(), recursive: false, expect_file_id: None }
}

fn mkdir(ns: &mut Namespace, path: &str, parents: bool) -> ApplyResult {
    ns.apply(Command::Mkdir { path: path.into(), parents, unix_ms: 5 })
}

fn rename(ns: &mut Namespace, src: &str, dst: &str) -> ApplyResult {
    ns.apply(Command::Rename { src: src.into(), dst: dst.into(), unix_ms: 6 })
}

/// Names and kinds of a directory's entries, read in pages of `page`.
fn names(ns: &Namespace, dir: &str, page: usize) -> Vec<(String, EntryKind)> {
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let (entries, more) = ns.list_dir(dir, &after, page).unwrap();
        out.extend(entries.iter().map(|e| (e.name.clone(), e.kind)));
        match (more, entries.last()) {
            (true, Some(last)) => after = last.name.clone(),
            _ => return out,
        }
    }
}

/// Full paths under `dir`, read recursively in pages of `page`.
fn walk(ns: &Namespace, dir: &str, page: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let (entries, more) = ns.list_recursive(dir, &after, page).unwrap();
        out.extend(entries.iter().map(|e| e.path.clone()));
        match (more, entries.last()) {
            (true, Some(last)) => after = last.path.clone(),
            _ => return out,
        }
    }
}

fn chunks_for(size: u64, replicas: &[u64]) -> Vec<ChunkRecord> {
    chunking::spans(size, CHUNK)
        .map(|s| ChunkRecord {
            index: s.index,
            size: s.len,
            sha256: Sha256Digest([s.index as u8; 32]),
            replicas: replicas.iter().map(|&r| StorageNodeId(r)).collect(),
            sum: Default::default(),
        })
        .collect()
}

fn upload(ns: &mut Namespace, path: &str, size: u64, overwrite: bool) -> Result<FileSummary, NamespaceError> {
    let id = create(ns, path, size, overwrite)?;
    ns.apply(Command::RecordChunks { file: id, chunks: chunks_for(size, &[1, 2, 3]) })?;
    match ns.apply(Command::CommitFile { file: id, unix_ms: 9, sha256: None, chunks: vec![], object: None })? {
        Outcome::FileCommitted(s) => Ok(s),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_commit_carries_the_last_records_and_the_file_checksum_in_one_command() {
    let mut ns = Namespace::default();
    register(&mut ns, &[1, 2, 3]);
    let id = create(&mut ns, "/f", 2 * CHUNK + 5, false).unwrap();
    let mut chunks = chunks_for(2 * CHUNK + 5, &[1, 2]);
    let sha = Some(Sha256Digest([9; 32]));
    // A bad record refuses the whole command and changes nothing.
    let mut bad = chunks.clone();
    bad[0].replicas = [StorageNodeId(1)].into_iter().collect();
    assert!(matches!(ns.apply(Command::CommitFile { file: id, unix_ms: 1, sha256: sha, chunks: bad, object: None }), Err(NamespaceError::BadChunk { .. })));
    assert!(ns.upload(id).is_some_and(|u| u.chunks.is_empty()));
    // Records sent earlier and records with the commit add up.
    let last = chunks.pop().unwrap();
    ns.apply(Command::RecordChunks { file: id, chunks }).unwrap();
    let committed = ns.apply(Command::CommitFile { file: id, unix_ms: 1, sha256: sha, chunks: vec![last.clone()], object: None }).unwrap();
    let file = ns.file("/f").unwrap();
    assert_eq!((file.chunks.len(), file.sha256()), (3, sha));
    // A retry (reply lost) answers the same; its records are not applied to anything.
    assert_eq!(ns.apply(Command::CommitFile { file: id, unix_ms: 2, sha256: sha, chunks: vec![last], object: None }).unwrap(), committed);
    // Too many records with a commit are refused before anything is looked at.
    let many = (0..=RECORD_CHUNKS_MAX as u32).map(|index| ChunkRecord { index, ..chunks_for(CHUNK, &[1, 2])[0].clone() }).collect();
    assert!(Command::CommitFile { file: id, unix_ms: 3, sha256: None, chunks: many, object: None }.validate().is_err());
}

#[test]
fn paths_are_normalized_and_checked() {
    assert_eq!(normalize_path("a//b/").unwrap(), "/a/b");
    assert_eq!(normalize_path("/x").unwrap(), "/x");
    assert_eq!(normalize_path("/").unwrap(), "/");
    assert_eq!(normalize_path("//").unwrap(), "/");
    for bad in ["", "/a/../b", "/./a", "/a\0b"] {
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
        ns.apply(Command::CommitFile { file: id, unix_ms: 1, sha256: None, chunks: vec![], object: None }),
        Err(NamespaceError::Incomplete { file: id, missing: 1, total: 4 })
    );
    ns.apply(Command::RecordChunks { file: id, chunks: vec![last] }).unwrap();
    let committed = ns.apply(Command::CommitFile { file: id, unix_ms: 1, sha256: None, chunks: vec![], object: None }).unwrap();
    assert_eq!(ns.file("/f").unwrap().chunks.len(), 4);
    // a retried commit answers the same
    assert_eq!(ns.apply(Command::CommitFile { file: id, unix_ms: 2, sha256: None, chunks: vec![], object: None }).unwrap(), committed);
}

#[test]
fn bad_chunks_are_refused_without_change() {
    let mut ns = Namespace::default();
    register(&mut ns, &[1, 2]);
    let id = create(&mut ns, "/f", CHUNK + 10, false).unwrap();
    let before = ns.clone();
    let mut wrong_size = chunks_for(CHUNK + 10, &[1, 2]);
    wrong_size[1].size = 11;
    assert!(matches!(ns.apply(Command::RecordChunks { file: id, chunks: wrong_size }), Err(NamespaceError::BadChunk { index: 1, .. })));
    let mut beyond = chunks_for(CHUNK + 10, &[1, 2]);
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
    assert_eq!(all.iter().map(|f| &*f.path).collect::<Vec<_>>(), vec!["/a/b", "/a/c"]);
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
    assert_eq!(ns.apply(delete("d")), Ok(Outcome::FileDeleted(f.clone())));
    assert_eq!(ns.apply(delete("/d")), Err(NamespaceError::NotFound("/d".into())));
    assert_eq!(ns.garbage_for(StorageNodeId(3), 10), vec![ChunkId::derive(f.id, 0)]);
    // an old upload's commit after delete is refused, not resurrected
    assert_eq!(ns.apply(Command::CommitFile { file: f.id, unix_ms: 1, sha256: None, chunks: vec![], object: None }), Err(NamespaceError::UploadNotFound(f.id)));
}

#[test]
fn replicas_marked_bad_are_remembered_until_their_file_goes() {
    let mut ns = Namespace::default();
    register(&mut ns, &[1, 2, 3]);
    let f = upload(&mut ns, "/f", 2 * CHUNK, false).unwrap();
    let (c0, c1) = (ChunkId::derive(f.id, 0), ChunkId::derive(f.id, 1));
    let mark = |chunk, node| Command::MarkReplicaBad { chunk, node: StorageNodeId(node) };
    // An old snapshot (without the field) still loads, with nothing marked.
    let mut json: serde_json::Value = serde_json::to_value(&ns).unwrap();
    assert!(json.as_object_mut().unwrap().remove("bad_replicas").is_none(), "an empty set is not written");
    let old: Namespace = serde_json::from_value(json).unwrap();
    assert_eq!(old, ns);
    assert_eq!(ns.apply(mark(c0, 2)), Ok(Outcome::Done));
    assert_eq!(ns.apply(mark(c0, 2)), Ok(Outcome::Done), "reporting twice is harmless");
    assert_eq!(ns.apply(mark(c0, 3)), Ok(Outcome::Done));
    assert!(matches!(ns.apply(mark(c1, 9)), Err(NamespaceError::InvalidArgument(_))), "an unknown node is refused");
    assert_eq!(ns.bad_replicas(c0), Some(&[StorageNodeId(2), StorageNodeId(3)].into()));
    assert_eq!(ns.bad_replicas(c1), None);
    // The replica stays in the record (it is still deleted with the file)...
    assert_eq!(ns.file("/f").unwrap().chunks[0].replicas.len(), 3);
    // ...the mark survives a snapshot, a rename, and goes with the file.
    let restored: Namespace = serde_json::from_slice(&serde_json::to_vec(&ns).unwrap()).unwrap();
    assert_eq!(restored, ns);
    rename(&mut ns, "/f", "/g").unwrap();
    assert!(ns.bad_replicas(c0).is_some());
    ns.apply(delete("/g")).unwrap();
    assert_eq!(ns.bad_replicas(c0), None);
    assert!(ns.garbage_for(StorageNodeId(2), 10).contains(&c0), "the bad replica is still collected");
}

#[test]
fn committing_creates_parents_and_listing_shows_direct_children_only() {
    let mut ns = Namespace::default();
    register(&mut ns, &[1, 2, 3]);
    assert_eq!(ns.list_dir("/", "", 10).unwrap(), (vec![], false));
    let id = create(&mut ns, "/x/y/in-flight", 1, false).unwrap();
    assert_eq!(ns.kind("/x"), None, "an upload in flight creates nothing");
    upload(&mut ns, "/a/b/c", 1, false).unwrap();
    upload(&mut ns, "/a/f", 1, false).unwrap();
    upload(&mut ns, "/top", 1, false).unwrap();
    assert_eq!(ns.kind("/a/b"), Some(EntryKind::Dir));
    assert_eq!(names(&ns, "/", 1), vec![("a".into(), EntryKind::Dir), ("top".into(), EntryKind::File)]);
    assert_eq!(names(&ns, "/a", 1), vec![("b".into(), EntryKind::Dir), ("f".into(), EntryKind::File)]);
    let (file, more) = ns.list_dir("/a/f", "", 10).unwrap();
    assert_eq!((file.len(), more, file[0].path.as_str(), file[0].name.as_str()), (1, false, "/a/f", "f"));
    assert_eq!(file[0].file.as_ref().unwrap().size, 1);
    assert_eq!(ns.list_dir("/nothing", "", 10), Err(NamespaceError::NotFound("/nothing".into())));
    assert_eq!(walk(&ns, "/", 2), vec!["/a", "/a/b", "/a/b/c", "/a/f", "/top"]);
    assert_eq!(walk(&ns, "/a/b", 1), vec!["/a/b/c"]);
    assert_eq!(walk(&ns, "/top", 1), vec!["/top"]);
    ns.apply(Command::RecordChunks { file: id, chunks: chunks_for(1, &[1, 2]) }).unwrap();
    ns.apply(Command::CommitFile { file: id, unix_ms: 1, sha256: None, chunks: vec![], object: None }).unwrap();
    assert_eq!(ns.kind("/x/y"), Some(EntryKind::Dir));
}

#[test]
fn mkdir_edge_cases() {
    let mut ns = Namespace::default();
    register(&mut ns, &[1, 2, 3]);
    assert_eq!(mkdir(&mut ns, "/", false), Err(NamespaceError::AlreadyExists("/".into())));
    assert_eq!(mkdir(&mut ns, "/", true), Ok(Outcome::Done));
    assert_eq!(mkdir(&mut ns, "/a/b", false), Err(NamespaceError::NoParent { path: "/a/b".into(), parent: "/a".into() }));
    assert_eq!(ns, Namespace::default_with_nodes(&[1, 2, 3]));
    mkdir(&mut ns, "/a/b/c", true).unwrap();
    assert_eq!(walk(&ns, "/", 10), vec!["/a", "/a/b", "/a/b/c"]);
    assert_eq!(mkdir(&mut ns, "/a/b", false), Err(NamespaceError::AlreadyExists("/a/b".into())));
    assert_eq!(mkdir(&mut ns, "a/b/", true), Ok(Outcome::Done));
    mkdir(&mut ns, "/a/d", false).unwrap();
    upload(&mut ns, "/a/f", 1, false).unwrap();
    let before = ns.clone();
    assert_eq!(mkdir(&mut ns, "/a/f", true), Err(NamespaceError::NotADirectory("/a/f".into())));
    assert_eq!(mkdir(&mut ns, "/a/f/g/h", true), Err(NamespaceError::ParentIsFile { path: "/a/f/g/h".into(), conflict: "/a/f".into() }));
    assert!(matches!(mkdir(&mut ns, "/a/../b", true), Err(NamespaceError::InvalidPath { .. })));
    assert_eq!(ns, before);
    // a directory is in the way of a file, and the other way round
    assert_eq!(upload(&mut ns, "/a/d", 1, true), Err(NamespaceError::IsDirectory("/a/d".into())));
}

impl Namespace {
    fn default_with_nodes(ids: &[u64]) -> Self {
        let mut ns = Namespace::default();
        register(&mut ns, ids);
        ns
    }
}

#[test]
fn rename_moves_files_and_whole_subtrees() {
    let mut ns = Namespace::default_with_nodes(&[1, 2, 3]);
    let f = upload(&mut ns, "/d/sub/f", CHUNK, false).unwrap();
    upload(&mut ns, "/d/g", 1, false).unwrap();
    upload(&mut ns, "/d0", 1, false).unwrap();
    mkdir(&mut ns, "/e", false).unwrap();
    let in_flight = create(&mut ns, "/d/sub/late", 1, false).unwrap();

    rename(&mut ns, "/d", "/e/moved").unwrap();
    assert_eq!(walk(&ns, "/", 10), vec!["/d0", "/e", "/e/moved", "/e/moved/g", "/e/moved/sub", "/e/moved/sub/f"]);
    let moved = ns.file("/e/moved/sub/f").unwrap();
    assert_eq!((moved.id, &*moved.path), (f.id, "/e/moved/sub/f"));
    // the id index follows: a retried commit answers with the new path
    match ns.apply(Command::CommitFile { file: f.id, unix_ms: 1, sha256: None, chunks: vec![], object: None }).unwrap() {
        Outcome::FileCommitted(s) => assert_eq!(s.path, "/e/moved/sub/f"),
        other => panic!("{other:?}"),
    }
    assert_eq!(names(&ns, "/e/moved", 10), vec![("g".into(), EntryKind::File), ("sub".into(), EntryKind::Dir)]);
    // an upload in flight keeps its path: its commit recreates the parents
    ns.apply(Command::RecordChunks { file: in_flight, chunks: chunks_for(1, &[1, 2]) }).unwrap();
    ns.apply(Command::CommitFile { file: in_flight, unix_ms: 1, sha256: None, chunks: vec![], object: None }).unwrap();
    assert_eq!(ns.kind("/d/sub/late"), Some(EntryKind::File));

    rename(&mut ns, "/d0", "/e/file").unwrap();
    assert_eq!(ns.kind("/d0"), None);
    assert_eq!(&*ns.file("/e/file").unwrap().path, "/e/file");
    // moving a directory with a name that sorts between the parent and its children
    mkdir(&mut ns, "/p/q", true).unwrap();
    upload(&mut ns, "/p/q/r", 1, false).unwrap();
    rename(&mut ns, "/p/q", "/p q").unwrap();
    assert_eq!(walk(&ns, "/p q", 10), vec!["/p q/r"]);
    assert_eq!(names(&ns, "/p", 10), vec![]);

    let before = ns.clone();
    assert_eq!(rename(&mut ns, "/missing", "/x"), Err(NamespaceError::NotFound("/missing".into())));
    assert_eq!(rename(&mut ns, "/e", "/p"), Err(NamespaceError::AlreadyExists("/p".into())));
    assert_eq!(rename(&mut ns, "/e/file", "/e/moved/g"), Err(NamespaceError::AlreadyExists("/e/moved/g".into())));
    assert!(matches!(rename(&mut ns, "/e", "/e/moved/x"), Err(NamespaceError::MoveIntoItself { .. })));
    assert!(matches!(rename(&mut ns, "/e", "/e"), Err(NamespaceError::MoveIntoItself { .. })));
    assert_eq!(rename(&mut ns, "/e", "/nope/x"), Err(NamespaceError::NoParent { path: "/nope/x".into(), parent: "/nope".into() }));
    assert_eq!(rename(&mut ns, "/p", "/e/file/x"), Err(NamespaceError::ParentIsFile { path: "/e/file/x".into(), conflict: "/e/file".into() }));
    assert!(matches!(rename(&mut ns, "/", "/x"), Err(NamespaceError::Root(_))));
    assert!(matches!(rename(&mut ns, "/e", "/"), Err(NamespaceError::AlreadyExists(_))));
    assert_eq!(ns, before);
}

#[test]
fn delete_files_directories_and_subtrees() {
    let mut ns = Namespace::default_with_nodes(&[1, 2, 3]);
    let f = upload(&mut ns, "/t/a/f", CHUNK, false).unwrap();
    let g = upload(&mut ns, "/t/g", CHUNK, false).unwrap();
    mkdir(&mut ns, "/t/empty", false).unwrap();
    let before = ns.clone();
    assert_eq!(ns.apply(delete("/t")), Err(NamespaceError::DirectoryNotEmpty("/t".into())));
    assert_eq!(ns.apply(delete("/nothing")), Err(NamespaceError::NotFound("/nothing".into())));
    assert!(matches!(ns.apply(delete("/")), Err(NamespaceError::DirectoryNotEmpty(_))));
    let stale = Command::Delete { path: "/t/g".into(), recursive: false, expect_file_id: Some(FileId(g.id.0 + 100)) };
    assert_eq!(ns.apply(stale), Err(NamespaceError::FileChanged { path: "/t/g".into(), expected: FileId(g.id.0 + 100), found: Some(g.id) }));
    let on_dir = Command::Delete { path: "/t/empty".into(), recursive: true, expect_file_id: Some(g.id) };
    assert!(matches!(ns.apply(on_dir), Err(NamespaceError::FileChanged { found: None, .. })));
    assert_eq!(ns, before);

    assert_eq!(ns.apply(delete("/t/empty")), Ok(Outcome::DirDeleted { path: "/t/empty".into(), files: 0, dirs: 1 }));
    let exact = Command::Delete { path: "/t/g".into(), recursive: false, expect_file_id: Some(g.id) };
    assert_eq!(ns.apply(exact.clone()), Ok(Outcome::FileDeleted(g.clone())));
    // the retry of that delete finds nothing, and must not delete a newer file there
    assert_eq!(ns.apply(exact.clone()), Err(NamespaceError::NotFound("/t/g".into())));
    let newer = upload(&mut ns, "/t/g", 1, false).unwrap();
    assert!(matches!(ns.apply(exact), Err(NamespaceError::FileChanged { .. })));
    assert_eq!(ns.file("/t/g").unwrap().id, newer.id);

    let recursive = Command::Delete { path: "/t".into(), recursive: true, expect_file_id: None };
    assert_eq!(ns.apply(recursive), Ok(Outcome::DirDeleted { path: "/t".into(), files: 2, dirs: 2 }));
    assert_eq!(walk(&ns, "/", 10), Vec::<String>::new());
    for node in 1..=3 {
        let garbage = ns.garbage_for(StorageNodeId(node), 100);
        assert!(garbage.contains(&ChunkId::derive(f.id, 0)) && garbage.contains(&ChunkId::derive(g.id, 0)));
    }

    upload(&mut ns, "/r/x", 1, false).unwrap();
    upload(&mut ns, "/y", 1, false).unwrap();
    let root = Command::Delete { path: "/".into(), recursive: true, expect_file_id: None };
    assert_eq!(ns.apply(root.clone()), Ok(Outcome::DirDeleted { path: "/".into(), files: 2, dirs: 1 }));
    assert_eq!((ns.file_count(), ns.dir_count()), (0, 1));
    assert_eq!(ns.list_dir("/", "", 10).unwrap(), (vec![], false));
    assert_eq!(ns.apply(root), Ok(Outcome::DirDeleted { path: "/".into(), files: 0, dirs: 0 }));
    assert!(matches!(ns.apply(delete("/")), Err(NamespaceError::Root(_))));
}

#[test]
fn a_retried_create_with_the_same_request_id_creates_nothing_new() {
    let mut ns = Namespace::default_with_nodes(&[1, 2, 3]);
    let request = Some(RequestId { client: 42, seq: 1 });
    let command = Command::CreateFile {
        path: "/f".into(),
        size: 1,
        chunk_size: CHUNK,
        replication: 3,
        overwrite: false,
        expect_file_id: None,
        request_id: request,
        unix_ms: 1,
        attrs: Default::default(),
    };
    let first = ns.apply(command.clone()).unwrap();
    let after_first = ns.clone();
    assert_eq!(ns.apply(command.clone()).unwrap(), first);
    assert_eq!(ns, after_first);
    let Outcome::FileCreated(id) = first else { panic!("{first:?}") };
    // the same request id for another upload is a client bug, refused
    let mut other = command.clone();
    if let Command::CreateFile { path, .. } = &mut other {
        *path = "/g".into();
    }
    assert!(matches!(ns.apply(other), Err(NamespaceError::InvalidUpload(_))));
    // another seq is another upload
    let mut next = command.clone();
    if let Command::CreateFile { request_id, .. } = &mut next {
        *request_id = Some(RequestId { client: 42, seq: 2 });
    }
    assert_ne!(ns.apply(next).unwrap(), Outcome::FileCreated(id));
    // once committed, the request id is forgotten with the upload
    ns.apply(Command::RecordChunks { file: id, chunks: chunks_for(1, &[1, 2]) }).unwrap();
    ns.apply(Command::CommitFile { file: id, unix_ms: 2, sha256: None, chunks: vec![], object: None }).unwrap();
    assert!(ns.uploads_by_request.get(&42).is_some_and(|seqs| !seqs.contains_key(&1)));
    assert_eq!(ns.apply(command), Err(NamespaceError::AlreadyExists("/f".into())));
}

#[test]
fn an_overwrite_replaces_only_the_file_the_client_saw() {
    let mut ns = Namespace::default_with_nodes(&[1, 2, 3]);
    let seen = upload(&mut ns, "/f", 1, false).unwrap();
    let expecting = |expect: FileId| Command::CreateFile {
        path: "/f".into(),
        size: 1,
        chunk_size: CHUNK,
        replication: 3,
        overwrite: true,
        expect_file_id: Some(expect),
        request_id: None,
        unix_ms: 1,
        attrs: Default::default(),
    };
    assert!(matches!(ns.apply(expecting(FileId(999))), Err(NamespaceError::FileChanged { .. })));
    let Outcome::FileCreated(mine) = ns.apply(expecting(seen.id)).unwrap() else { panic!() };
    ns.apply(Command::RecordChunks { file: mine, chunks: chunks_for(1, &[1, 2]) }).unwrap();
    // someone else replaces the file first
    let theirs = upload(&mut ns, "/f", 1, true).unwrap();
    let before = ns.clone();
    assert_eq!(
        ns.apply(Command::CommitFile { file: mine, unix_ms: 2, sha256: None, chunks: vec![], object: None }),
        Err(NamespaceError::FileChanged { path: "/f".into(), expected: seen.id, found: Some(theirs.id) })
    );
    assert_eq!(ns, before);
    let Outcome::FileCreated(again) = ns.apply(expecting(theirs.id)).unwrap() else { panic!() };
    ns.apply(Command::RecordChunks { file: again, chunks: chunks_for(1, &[1, 2]) }).unwrap();
    ns.apply(Command::CommitFile { file: again, unix_ms: 3, sha256: None, chunks: vec![], object: None }).unwrap();
    assert_eq!(ns.file("/f").unwrap().id, again);
}

#[test]
fn expired_uploads_are_dropped_and_their_replicas_collected() {
    let mut ns = Namespace::default_with_nodes(&[1, 2, 3]);
    let at = |ns: &mut Namespace, path: &str, unix_ms: u64, seq: u64| -> FileId {
        let command = Command::CreateFile {
            path: path.into(),
            size: CHUNK,
            chunk_size: CHUNK,
            replication: 3,
            overwrite: false,
            expect_file_id: None,
            request_id: Some(RequestId { client: 7, seq }),
            unix_ms,
            attrs: Default::default(),
        };
        match ns.apply(command).unwrap() {
            Outcome::FileCreated(id) => id,
            other => panic!("{other:?}"),
        }
    };
    let old = at(&mut ns, "/old", 1_000, 1);
    let young = at(&mut ns, "/young", 5_000, 2);
    ns.apply(Command::RecordChunks { file: old, chunks: chunks_for(CHUNK, &[2, 3]) }).unwrap();
    assert_eq!(ns.apply(Command::ExpireUploads { now_unix_ms: 4_000, older_than_ms: 3_000 }), Ok(Outcome::UploadsExpired(0)));
    assert_eq!(ns.apply(Command::ExpireUploads { now_unix_ms: 4_000, older_than_ms: 2_000 }), Ok(Outcome::UploadsExpired(1)));
    assert!(ns.upload(old).is_none() && ns.upload(young).is_some());
    assert_eq!(ns.garbage_for(StorageNodeId(2), 10), vec![ChunkId::derive(old, 0)]);
    assert_eq!(ns.apply(Command::CommitFile { file: old, unix_ms: 5, sha256: None, chunks: vec![], object: None }), Err(NamespaceError::UploadNotFound(old)));
    assert_eq!(ns.uploads_by_request.get(&7).map(|s| s.len()), Some(1));
    // far in the future everything goes, without underflow
    assert_eq!(ns.apply(Command::ExpireUploads { now_unix_ms: 10, older_than_ms: UPLOAD_EXPIRY_DEFAULT_MS }), Ok(Outcome::UploadsExpired(0)));
    assert_eq!(ns.apply(Command::ExpireUploads { now_unix_ms: u64::MAX, older_than_ms: 0 }), Ok(Outcome::UploadsExpired(1)));
    assert!(ns.uploads_by_request.is_empty());
}

#[test]
fn the_cluster_id_is_set_once() {
    let mut ns = Namespace::default();
    assert_eq!(ns.cluster_id(), None);
    let set = |id: &str| Command::SetClusterId { cluster_id: id.into() };
    ns.apply(set("c-1")).unwrap();
    ns.apply(set("c-1")).unwrap();
    assert_eq!(ns.apply(set("c-2")), Err(NamespaceError::ClusterIdMismatch { current: "c-1".into(), proposed: "c-2".into() }));
    assert!(ns.apply(set("")).is_err());
    assert!(ns.apply(set("a\nb")).is_err());
    assert_eq!(ns.cluster_id(), Some("c-1"));
}

#[test]
fn validation_refuses_what_no_state_could_accept() {
    let valid = create_cmd("/f", 1, false);
    assert_eq!(valid.validate(), Ok(()));
    let with = |f: &dyn Fn(&mut Command)| {
        let mut c = valid.clone();
        f(&mut c);
        c.validate()
    };
    let set_chunk = |v: u64| {
        move |c: &mut Command| {
            if let Command::CreateFile { chunk_size, .. } = c {
                *chunk_size = v
            }
        }
    };
    assert!(with(&set_chunk(64 * 1024 - 1)).is_err());
    assert!(with(&set_chunk(64 * 1024)).is_ok());
    assert!(with(&set_chunk(64 * 1024 * 1024)).is_ok());
    assert!(with(&set_chunk(64 * 1024 * 1024 + 1)).is_err());
    for (r, ok) in [(0, false), (1, true), (REPLICATION_MAX, true), (REPLICATION_MAX + 1, false)] {
        assert_eq!(
            with(&|c: &mut Command| if let Command::CreateFile { replication, .. } = c {
                *replication = r
            })
            .is_ok(),
            ok,
            "replication {r}"
        );
    }
    assert!(with(&|c: &mut Command| if let Command::CreateFile { expect_file_id, .. } = c {
        *expect_file_id = Some(FileId(1))
    })
    .is_err());
    assert!(with(&|c: &mut Command| if let Command::CreateFile { path, .. } = c {
        *path = "/".into()
    })
    .is_err());
    assert!(with(&|c: &mut Command| if let Command::CreateFile { path, .. } = c {
        *path = "/a/./b".into()
    })
    .is_err());
    assert!(with(&|c: &mut Command| if let Command::CreateFile { path, .. } = c {
        *path = format!("/{}", "x".repeat(300))
    })
    .is_err());

    let record = |n: usize| Command::RecordChunks {
        file: FileId(1),
        chunks: (0..n)
            .map(|i| ChunkRecord {
                index: i as u32,
                size: 1,
                sha256: Sha256Digest([0; 32]),
                replicas: [StorageNodeId(1), StorageNodeId(2)].into_iter().collect(),
                sum: Default::default(),
            })
            .collect(),
    };
    assert!(record(RECORD_CHUNKS_MAX).validate().is_ok());
    assert!(record(RECORD_CHUNKS_MAX + 1).validate().is_err());
    let too_many_replicas = Command::RecordChunks {
        file: FileId(1),
        chunks: vec![ChunkRecord { index: 0, size: 1, sha256: Sha256Digest([0; 32]), replicas: (0..17).map(StorageNodeId).collect(), sum: Default::default() }],
    };
    assert!(too_many_replicas.validate().is_err());
    assert!(Command::Mkdir { path: "".into(), parents: true, unix_ms: 0 }.validate().is_err());
    assert!(Command::Rename { src: "/a".into(), dst: "/a/b".into(), unix_ms: 0 }.validate().is_err());
    assert!(Command::Rename { src: "/a".into(), dst: "/ab".into(), unix_ms: 0 }.validate().is_ok());
    assert!(Command::Rename { src: "//".into(), dst: "/b".into(), unix_ms: 0 }.validate().is_err());
    assert!(Command::RegisterStorageNode { node: StorageNodeId(1), addr: String::new(), capacity_bytes: 0, rack: None }.validate().is_err());
    // apply refuses the same, whatever the state
    let mut ns = Namespace::default();
    assert!(ns.apply(record(RECORD_CHUNKS_MAX + 1)).is_err());
    assert_eq!(ns, Namespace::default());
}

/// Every list, name and number a command carries from a request has its bound in `validate`,
/// checked before anything is applied: each at the bound is taken, one past it refused.
#[test]
fn validate_refuses_every_field_one_past_its_bound() {
    let chunk = |i: usize| ChunkId::derive(FileId(1), i as u32);
    let node = StorageNodeId(1);
    let register =
        |addr: usize, rack: usize| Command::RegisterStorageNode { node, addr: "a".repeat(addr), capacity_bytes: 1, rack: (rack > 0).then(|| "r".repeat(rack)) };
    let cases: Vec<(&str, Command, Command)> = vec![
        ("storage node address", register(ADDR_MAX_BYTES, 0), register(ADDR_MAX_BYTES + 1, 0)),
        ("rack name", register(1, RACK_MAX_BYTES), register(1, RACK_MAX_BYTES + 1)),
        (
            "cluster id",
            Command::SetClusterId { cluster_id: "c".repeat(CLUSTER_ID_MAX_BYTES) },
            Command::SetClusterId { cluster_id: "c".repeat(CLUSTER_ID_MAX_BYTES + 1) },
        ),
        (
            "mode",
            Command::SetAttributes { path: "/f".into(), mode: Some(MODE_MAX), mtime_unix_ms: None },
            Command::SetAttributes { path: "/f".into(), mode: Some(MODE_MAX + 1), mtime_unix_ms: None },
        ),
        (
            "replication",
            Command::SetReplication { path: "/f".into(), replication: REPLICATION_MAX },
            Command::SetReplication { path: "/f".into(), replication: REPLICATION_MAX + 1 },
        ),
        (
            "path",
            Command::Mkdir { path: format!("/{}", ["n"; 2048].join("/")), parents: true, unix_ms: 0 },
            Command::Mkdir { path: format!("/{}", ["n"; 2049].join("/")), parents: true, unix_ms: 0 },
        ),
        (
            "name",
            Command::Mkdir { path: format!("/{}", "n".repeat(NAME_MAX_BYTES)), parents: true, unix_ms: 0 },
            Command::Mkdir { path: format!("/{}", "n".repeat(NAME_MAX_BYTES + 1)), parents: true, unix_ms: 0 },
        ),
        (
            "replicas dropped",
            Command::DropReplicas { drops: (0..DROP_REPLICAS_MAX).map(|i| (chunk(i), node)).collect() },
            Command::DropReplicas { drops: (0..=DROP_REPLICAS_MAX).map(|i| (chunk(i), node)).collect() },
        ),
        (
            "replicas missing",
            Command::MarkReplicasMissing { node, chunks: (0..DROP_REPLICAS_MAX).map(chunk).collect() },
            Command::MarkReplicasMissing { node, chunks: (0..=DROP_REPLICAS_MAX).map(chunk).collect() },
        ),
        (
            "replicas reported",
            Command::ReportReplicas {
                node,
                replicas: (0..REPLICA_REPORTS_MAX).map(|i| ReplicaReport { chunk: chunk(i), size: 1, sha256: Sha256Digest([0; 32]) }).collect(),
            },
            Command::ReportReplicas {
                node,
                replicas: (0..=REPLICA_REPORTS_MAX).map(|i| ReplicaReport { chunk: chunk(i), size: 1, sha256: Sha256Digest([0; 32]) }).collect(),
            },
        ),
        (
            "deleted replicas",
            Command::ForgetDeletedReplicas { node, chunks: (0..REPLICA_REPORTS_MAX).map(chunk).collect() },
            Command::ForgetDeletedReplicas { node, chunks: (0..=REPLICA_REPORTS_MAX).map(chunk).collect() },
        ),
        (
            "commands in a batch",
            Command::Batch(vec![Command::Mkdir { path: "/d".into(), parents: true, unix_ms: 0 }; crate::limits::BATCH_COMMANDS_MAX]),
            Command::Batch(vec![Command::Mkdir { path: "/d".into(), parents: true, unix_ms: 0 }; crate::limits::BATCH_COMMANDS_MAX + 1]),
        ),
    ];
    for (what, at, past) in cases {
        assert_eq!(at.validate(), Ok(()), "{what} at its bound");
        assert!(past.validate().is_err(), "{what} one past its bound was taken");
    }
}

#[test]
fn a_cluster_registers_at_most_its_bound_of_storage_nodes() {
    let mut ns = Namespace::default();
    let register = |id: u64| Command::RegisterStorageNode { node: StorageNodeId(id), addr: format!("10.0.0.1:{id}"), capacity_bytes: 1, rack: None };
    for id in 1..=STORAGE_NODES_MAX as u64 {
        assert!(ns.apply(register(id)).is_ok());
    }
    assert!(ns.apply(register(STORAGE_NODES_MAX as u64 + 1)).is_err(), "a node past the bound was registered");
    // One already known registers again (a restart, a new address) at the bound.
    assert!(ns.apply(register(1)).is_ok());
}

#[test]
fn a_refused_path_is_quoted_by_its_start_only() {
    let long = format!("/{}", "\u{1}".repeat(50_000));
    let e = normalize_path(&long).unwrap_err().to_string();
    assert!(e.len() < 2 * crate::limits::ECHO_MAX_CHARS * 6 + 200, "{} bytes of error", e.len());
}

// ---- model-based property test ---------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Upload {
        path: usize,
        size: u64,
        overwrite: bool,
    },
    /// `CreateEmptyFile`, retried once (as `Once`) when `retry`.
    CreateEmpty {
        path: usize,
        overwrite: bool,
        retry: bool,
    },
    CreateOnly {
        path: usize,
        size: u64,
        retry: bool,
    },
    Record {
        upload: usize,
        chunk: u32,
        node: u64,
    },
    Commit {
        upload: usize,
    },
    Mkdir {
        path: usize,
        parents: bool,
    },
    Rename {
        src: usize,
        dst: usize,
    },
    /// `expect`: 0 none, 1 the file's current id, 2 a stale id.
    Delete {
        path: usize,
        recursive: bool,
        expect: u8,
    },
    Expire {
        older_than_ms: u64,
    },
    Forget {
        node: u64,
        n: usize,
    },
    Copy {
        src: usize,
        dst: usize,
        overwrite: bool,
    },
    Trash {
        path: usize,
        recursive: bool,
    },
    SetRep {
        path: usize,
        replication: u32,
    },
    Abort {
        upload: usize,
    },
    /// A storage node reports it holds chunk `chunk` of the file at `path` (learned, or
    /// stale when `stale`).
    Report {
        path: usize,
        chunk: u32,
        node: u64,
        stale: bool,
    },
}

// "/a b", "/a-c/d" and "/a0" sort around the subtree of "/a" ("/a/..."), which a listing of
// "/" skips to find the root's own files.
const PATHS: [&str; 12] = ["/a", "/a/b", "/a/b/c", "/a b", "/b", "/b/c/d", "/c", "a", "/", "/b/c", "/a-c/d", "/a0"];

fn op() -> impl Strategy<Value = Op> {
    let path = 0..PATHS.len();
    prop_oneof![
        (path.clone(), 0..4 * CHUNK, any::<bool>()).prop_map(|(path, size, overwrite)| Op::Upload { path, size, overwrite }),
        (path.clone(), 0..4 * CHUNK, any::<bool>()).prop_map(|(path, size, retry)| Op::CreateOnly { path, size, retry }),
        (path.clone(), any::<bool>(), any::<bool>()).prop_map(|(path, overwrite, retry)| Op::CreateEmpty { path, overwrite, retry }),
        (0..8usize, 0..5u32, 1..5u64).prop_map(|(upload, chunk, node)| Op::Record { upload, chunk, node }),
        (0..8usize).prop_map(|upload| Op::Commit { upload }),
        (path.clone(), any::<bool>()).prop_map(|(path, parents)| Op::Mkdir { path, parents }),
        (path.clone(), path.clone()).prop_map(|(src, dst)| Op::Rename { src, dst }),
        (path.clone(), any::<bool>(), 0..3u8).prop_map(|(path, recursive, expect)| Op::Delete { path, recursive, expect }),
        (0..20u64).prop_map(|older_than_ms| Op::Expire { older_than_ms }),
        (1..5u64, 0..4usize).prop_map(|(node, n)| Op::Forget { node, n }),
        (path.clone(), path.clone(), any::<bool>()).prop_map(|(src, dst, overwrite)| Op::Copy { src, dst, overwrite }),
        (path.clone(), any::<bool>()).prop_map(|(path, recursive)| Op::Trash { path, recursive }),
        (path.clone(), 1..4u32).prop_map(|(path, replication)| Op::SetRep { path, replication }),
        (0..8usize).prop_map(|upload| Op::Abort { upload }),
        (path, 0..4u32, 1..5u64, any::<bool>()).prop_map(|(path, chunk, node, stale)| Op::Report { path, chunk, node, stale }),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ModelEntry {
    Dir,
    File(FileId, u64),
}

/// The tree as a plain map of full paths, and the rules of each command written out naively.
#[derive(Clone, Debug)]
struct Model {
    entries: BTreeMap<String, ModelEntry>,
}

impl Model {
    fn new() -> Self {
        Model { entries: BTreeMap::from([("/".to_string(), ModelEntry::Dir)]) }
    }

    fn parent(path: &str) -> String {
        match path.rfind('/') {
            Some(0) | None => "/".into(),
            Some(i) => path[..i].into(),
        }
    }

    fn ancestors(path: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut p = path.to_string();
        while p != "/" {
            p = Self::parent(&p);
            out.push(p.clone());
        }
        out
    }

    fn under(path: &str, dir: &str) -> bool {
        path != dir && (dir == "/" || path.starts_with(&format!("{dir}/")))
    }

    fn is_file(&self, p: &str) -> bool {
        matches!(self.entries.get(p), Some(ModelEntry::File(..)))
    }

    fn can_commit(&self, path: &str, overwrite: bool) -> bool {
        match self.entries.get(path) {
            Some(ModelEntry::Dir) => false,
            Some(ModelEntry::File(..)) if !overwrite => false,
            _ => Self::ancestors(path).iter().all(|a| !self.is_file(a)),
        }
    }

    fn commit(&mut self, path: &str, id: FileId, size: u64) {
        for a in Self::ancestors(path) {
            self.entries.insert(a, ModelEntry::Dir);
        }
        self.entries.insert(path.into(), ModelEntry::File(id, size));
    }

    fn mkdir(&mut self, path: &str, parents: bool) -> bool {
        match self.entries.get(path) {
            Some(ModelEntry::Dir) => return parents,
            Some(ModelEntry::File(..)) => return false,
            None => {}
        }
        let ancestors = Self::ancestors(path);
        if ancestors.iter().any(|a| self.is_file(a)) || (!parents && !self.entries.contains_key(&Self::parent(path))) {
            return false;
        }
        for a in ancestors.into_iter().chain([path.to_string()]) {
            self.entries.insert(a, ModelEntry::Dir);
        }
        true
    }

    fn rename(&mut self, src: &str, dst: &str) -> bool {
        if src == "/" || src == dst || Self::under(dst, src) || !self.entries.contains_key(src) || self.entries.contains_key(dst) {
            return false;
        }
        if self.entries.get(&Self::parent(dst)) != Some(&ModelEntry::Dir) {
            return false;
        }
        let moved: Vec<String> = self.entries.keys().filter(|k| *k == src || Self::under(k, src)).cloned().collect();
        for old in moved {
            let entry = self.entries.remove(&old).unwrap();
            self.entries.insert(format!("{dst}{}", &old[src.len()..]), entry);
        }
        true
    }

    /// Where `MoveToTrash` puts `path` in the bucket `trash`: the first variant with nothing
    /// there and no file above it.
    fn trash_target(&self, trash: &str, path: &str) -> Option<String> {
        (0..=TRASH_VARIANTS_MAX)
            .map(|n| if n == 0 { format!("{trash}{path}") } else { format!("{trash}.{n}{path}") })
            .find(|d| !self.entries.contains_key(d) && Self::ancestors(d).iter().all(|a| !self.is_file(a)))
    }

    /// Moves `path` (and what is under it) to `to`, creating `to`'s missing parents.
    fn move_to(&mut self, path: &str, to: &str) {
        for a in Self::ancestors(to) {
            self.entries.entry(a).or_insert(ModelEntry::Dir);
        }
        let moved: Vec<String> = self.entries.keys().filter(|k| *k == path || Self::under(k, path)).cloned().collect();
        for old in moved {
            let entry = self.entries.remove(&old).unwrap();
            self.entries.insert(format!("{to}{}", &old[path.len()..]), entry);
        }
    }

    fn delete(&mut self, path: &str, recursive: bool, expect: Option<FileId>) -> bool {
        let Some(entry) = self.entries.get(path).copied() else { return false };
        if let Some(e) = expect {
            if !matches!(entry, ModelEntry::File(id, _) if id == e) {
                return false;
            }
        }
        let has_children = self.entries.keys().any(|k| Self::under(k, path));
        if entry == ModelEntry::Dir && !recursive && (has_children || path == "/") {
            return false;
        }
        self.entries.retain(|k, _| !(Self::under(k, path) || (k == path && k != "/")));
        true
    }
}

fn commit_in_model(model: &mut Model, uploads: &mut BTreeMap<FileId, (String, u64, bool)>, result: &ApplyResult) {
    if let Ok(Outcome::FileCommitted(s)) = result {
        if uploads.remove(&s.id).is_some() {
            model.commit(&s.path, s.id, s.size);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct(
            concat!(env!("CARGO_MANIFEST_DIR"), "/../proptest-regressions/core-namespace.txt")))),
        cases: 512,
        ..ProptestConfig::default()
    })]
    #[test]
    fn namespace_matches_a_model_under_any_command_sequence(ops in proptest::collection::vec(op(), 1..60)) {
        let mut ns = Namespace::default();
        register(&mut ns, &[1, 2, 3]);
        let mut model = Model::new();
        // uploads in flight: id -> (path, size, overwrite)
        let mut uploads: BTreeMap<FileId, (String, u64, bool)> = BTreeMap::new();
        let mut created: Vec<FileId> = Vec::new();
        let mut seq = 0u64;
        for (now, op) in (10u64..).zip(ops) {
            let before = ns.clone();
            let result = match op {
                Op::Upload { path, size, overwrite } => {
                    let norm = normalize_path(PATHS[path]).unwrap();
                    let allowed = norm != "/" && model.can_commit(&norm, overwrite);
                    let result = upload(&mut ns, PATHS[path], size, overwrite);
                    prop_assert_eq!(result.is_ok(), allowed, "upload {} {:?}", norm, result);
                    // a refused upload may leave its upload in flight (created, refused at
                    // commit): the model only tracks what the namespace reports
                    for u in ns.uploads() {
                        uploads.entry(u.id).or_insert((u.path.clone(), u.size, u.overwrite));
                    }
                    result.map(|s| {
                        model.commit(&s.path, s.id, s.size);
                        Outcome::FileCommitted(s)
                    })
                }
                Op::CreateEmpty { path, overwrite, retry } => {
                    seq += 1;
                    let norm = normalize_path(PATHS[path]).unwrap();
                    let allowed = norm != "/" && model.can_commit(&norm, overwrite);
                    let command = Command::Once { request: RequestId { client: 2, seq }, command: Box::new(empty_file_cmd(PATHS[path], overwrite)) };
                    let result = ns.apply(command.clone());
                    prop_assert_eq!(result.is_ok(), allowed, "create empty {} {:?}", norm, result);
                    if let Ok(Outcome::FileCommitted(s)) = &result {
                        prop_assert_eq!((s.size, ns.file(&norm).and_then(|f| f.sha256())), (0, Some(Sha256Digest::of(&[]))));
                        model.commit(&s.path, s.id, 0);
                    }
                    if retry {
                        let again = ns.clone();
                        prop_assert_eq!(&ns.apply(command), &result);
                        prop_assert_eq!(&ns.files().count(), &again.files().count(), "a retried empty create changed the files");
                    }
                    result
                }
                Op::CreateOnly { path, size, retry } => {
                    seq += 1;
                    let command = Command::CreateFile {
                        path: PATHS[path].into(),
                        size,
                        chunk_size: CHUNK,
                        replication: 3,
                        overwrite: true,
                        expect_file_id: None,
                        request_id: Some(RequestId { client: 1, seq }),
                        unix_ms: now,
                        attrs: Default::default(),
                    };
                    let result = ns.apply(command.clone());
                    if let Ok(Outcome::FileCreated(id)) = result {
                        created.push(id);
                        uploads.insert(id, (normalize_path(PATHS[path]).unwrap(), size, true));
                        if retry {
                            let again = ns.clone();
                            prop_assert_eq!(ns.apply(command), Ok(Outcome::FileCreated(id)));
                            prop_assert_eq!(&ns, &again, "a retried create changed the state");
                        }
                    }
                    result
                }
                Op::Record { upload, chunk, node } => match created.get(upload) {
                    Some(&file) => {
                        let size = ns.upload(file).map(|u| chunking::chunk_len(u.size, u.chunk_size, chunk).unwrap_or(1)).unwrap_or(1);
                        ns.apply(Command::RecordChunks { file, chunks: vec![ChunkRecord { index: chunk, size, sha256: Sha256Digest([0; 32]), replicas: [StorageNodeId(node)].into_iter().collect(), sum: Default::default() }] })
                    }
                    None => continue,
                },
                Op::Commit { upload } => match created.get(upload) {
                    Some(&file) => {
                        let complete = ns.upload(file).map(|u| u.chunks.len() as u64 == chunking::chunk_count(u.size, u.chunk_size));
                        let allowed = uploads.get(&file).map(|(p, _, o)| model.can_commit(p, *o));
                        let result = ns.apply(Command::CommitFile { file, unix_ms: now, sha256: None, chunks: vec![], object: None });
                        if complete == Some(true) {
                            prop_assert_eq!(result.is_ok(), allowed == Some(true), "commit {:?}", result);
                        }
                        commit_in_model(&mut model, &mut uploads, &result);
                        result
                    }
                    None => continue,
                },
                Op::Mkdir { path, parents } => {
                    let norm = normalize_path(PATHS[path]).unwrap();
                    let allowed = model.clone().mkdir(&norm, parents);
                    let result = ns.apply(Command::Mkdir { path: PATHS[path].into(), parents, unix_ms: now });
                    prop_assert_eq!(result.is_ok(), allowed, "mkdir {} {:?}", norm, result);
                    if result.is_ok() {
                        model.mkdir(&norm, parents);
                    }
                    result
                }
                Op::Rename { src, dst } => {
                    let (s, d) = (normalize_path(PATHS[src]).unwrap(), normalize_path(PATHS[dst]).unwrap());
                    let allowed = model.clone().rename(&s, &d);
                    let result = ns.apply(Command::Rename { src: PATHS[src].into(), dst: PATHS[dst].into(), unix_ms: now });
                    prop_assert_eq!(result.is_ok(), allowed, "rename {} {} {:?}", s, d, result);
                    if result.is_ok() {
                        model.rename(&s, &d);
                    }
                    result
                }
                Op::Delete { path, recursive, expect } => {
                    let norm = normalize_path(PATHS[path]).unwrap();
                    let current = ns.file(&norm).map(|f| f.id).unwrap_or(FileId(1));
                    let expect_file_id = match expect {
                        0 => None,
                        1 => Some(current),
                        _ => Some(FileId(current.0 + 1000)),
                    };
                    let allowed = norm != "/" || expect_file_id.is_none();
                    let allowed = allowed && model.clone().delete(&norm, recursive, expect_file_id);
                    let result = ns.apply(Command::Delete { path: PATHS[path].into(), recursive, expect_file_id });
                    prop_assert_eq!(result.is_ok(), allowed, "delete {} {:?}", norm, result);
                    if result.is_ok() {
                        model.delete(&norm, recursive, expect_file_id);
                    }
                    result
                }
                Op::Expire { older_than_ms } => {
                    let result = ns.apply(Command::ExpireUploads { now_unix_ms: now, older_than_ms });
                    uploads.retain(|id, _| ns.upload(*id).is_some());
                    result
                }
                Op::Forget { node, n } => {
                    let chunks = ns.garbage_for(StorageNodeId(node), n);
                    ns.apply(Command::ForgetDeletedReplicas { node: StorageNodeId(node), chunks })
                }
                Op::Copy { src, dst, overwrite } => {
                    let (s, d) = (normalize_path(PATHS[src]).unwrap(), normalize_path(PATHS[dst]).unwrap());
                    let allowed = s != d && d != "/" && model.is_file(&s) && model.can_commit(&d, overwrite);
                    let result = ns.apply(Command::CopyFile { src: PATHS[src].into(), dst: PATHS[dst].into(), overwrite, unix_ms: now, append: vec![], object: None });
                    prop_assert_eq!(result.is_ok(), allowed, "cp {} {} {:?}", s, d, result);
                    if let Ok(Outcome::FileCommitted(f)) = &result {
                        let size = match model.entries.get(&s) {
                            Some(ModelEntry::File(_, size)) => *size,
                            _ => unreachable!("a file was copied"),
                        };
                        model.commit(&d, f.id, size);
                    }
                    result
                }
                Op::Trash { path, recursive } => {
                    let norm = normalize_path(PATHS[path]).unwrap();
                    let trash = "/.trash/u/2026-12-06T09:31:00Z";
                    let target = model.trash_target(trash, &norm);
                    let allowed = norm != "/" && target.is_some() && model.clone().delete(&norm, recursive, None);
                    let result = ns.apply(Command::MoveToTrash { path: PATHS[path].into(), recursive, expect_file_id: None, trash: trash.into(), unix_ms: now });
                    prop_assert_eq!(result.is_ok(), allowed, "trash {} {:?}", norm, result);
                    if let Ok(Outcome::Trashed { to, .. }) = &result {
                        prop_assert_eq!(Some(to.clone()), target.clone());
                        model.move_to(&norm, to);
                    }
                    result
                }
                Op::SetRep { path, replication } => {
                    let norm = normalize_path(PATHS[path]).unwrap();
                    let result = ns.apply(Command::SetReplication { path: PATHS[path].into(), replication });
                    prop_assert_eq!(result.is_ok(), model.entries.contains_key(&norm), "setrep {} {:?}", norm, result);
                    if result.is_ok() {
                        for f in ns.files().filter(|f| *f.path == *norm || Model::under(&f.path, &norm)) {
                            prop_assert_eq!(f.replication, replication);
                        }
                    }
                    result
                }
                Op::Abort { upload } => match created.get(upload) {
                    Some(&file) => {
                        let result = ns.apply(Command::AbortUpload { file });
                        prop_assert_eq!(result.is_ok(), uploads.remove(&file).is_some(), "abort {:?} {:?}", file, result);
                        result
                    }
                    None => continue,
                },
                Op::Report { path, chunk, node, stale } => {
                    let Some(f) = ns.file(&normalize_path(PATHS[path]).unwrap()).cloned() else { continue };
                    let Some(c) = f.chunks.get(chunk as usize) else { continue };
                    let report = ReplicaReport { chunk: f.chunk_id(c.index), size: c.size, sha256: if stale { Sha256Digest([9; 32]) } else { c.sha256 } };
                    ns.apply(Command::ReportReplicas { node: StorageNodeId(node), replicas: vec![report] })
                }
            };
            if result.is_err() {
                // A refusal under `Once` is remembered for its retry, and only that.
                let mut after = ns.clone();
                (after.sessions, after.applied) = (before.sessions.clone(), before.applied);
                prop_assert_eq!(&after, &before, "a refused command changed the state");
            }
            // the namespace holds exactly the model's tree
            let mut tree: BTreeMap<String, ModelEntry> = ns.files().map(|f| (f.path.to_string(), ModelEntry::File(f.id, f.size))).collect();
            tree.extend(ns.dirs().map(|d| (d.to_string(), ModelEntry::Dir)));
            prop_assert_eq!(&tree, &model.entries);
            // and exactly the uploads it reported
            let in_flight: BTreeSet<FileId> = ns.uploads().map(|u| u.id).collect();
            prop_assert_eq!(&in_flight, &uploads.keys().copied().collect::<BTreeSet<_>>());
            for f in ns.files() {
                // every committed file is complete and tiles its size
                prop_assert_eq!(f.chunks.len() as u64, chunking::chunk_count(f.size, f.chunk_size));
                prop_assert_eq!(f.chunks.iter().map(|c| c.size).sum::<u64>(), f.size);
                prop_assert!(f.chunks.iter().enumerate().all(|(i, c)| c.index as usize == i && !c.replicas.is_empty()));
                // the live file's replicas are never queued for deletion
                for c in &f.chunks {
                    for r in &c.replicas {
                        prop_assert!(!ns.garbage_for(*r, usize::MAX).contains(&f.chunk_id(c.index)));
                    }
                }
                // the id index points back at the file
                prop_assert_eq!(ns.paths_by_id.get(&f.id).map(|p| &**p), Some(&*f.path));
            }
            prop_assert_eq!(ns.paths_by_id.len(), ns.files.len());
            // Shared chunks: every holder listed holds the chunk and lists the same replicas;
            // every chunk a file holds that is not its own is listed as shared; an entry is
            // never just the file the chunk was uploaded for.
            for (chunk, holders) in &ns.shared_chunks {
                prop_assert!(!holders.is_empty());
                let owner = chunk.owner().map(|(f, _)| f);
                prop_assert!(!(holders.len() == 1 && holders.first() == owner.as_ref()), "a shared entry of its owner alone: {:?}", chunk);
                let mut lists = BTreeSet::new();
                for h in holders {
                    let f = ns.paths_by_id.get(h).and_then(|p| ns.files.get(p));
                    prop_assert!(f.is_some(), "holder {:?} of {:?} is not a live file", h, chunk);
                    let f = f.unwrap();
                    let (_, index) = chunk.owner().unwrap();
                    prop_assert_eq!(f.chunk_id(index), *chunk);
                    lists.insert(f.chunks[index as usize].replicas.clone());
                }
                prop_assert_eq!(lists.len(), 1, "files sharing {:?} list different replicas", chunk);
            }
            for f in ns.files() {
                for c in &f.chunks {
                    let id = f.chunk_id(c.index);
                    if id.owner().map(|(o, _)| o) != Some(f.id) {
                        prop_assert!(ns.shared_chunks.get(&id).is_some_and(|h| h.contains(&f.id)), "{} holds {:?} unlisted", f.path, id);
                    }
                }
            }
            // listings, read in small pages, are the model's sorted children and subtrees
            for (dir, _) in model.entries.iter().filter(|(_, e)| **e == ModelEntry::Dir) {
                let children: Vec<(String, EntryKind)> = model
                    .entries
                    .iter()
                    .filter(|(k, _)| *k != "/" && Model::parent(k) == *dir)
                    .map(|(k, e)| (k.rsplit('/').next().unwrap().to_string(), if *e == ModelEntry::Dir { EntryKind::Dir } else { EntryKind::File }))
                    .collect();
                let mut sorted = children.clone();
                sorted.sort();
                prop_assert_eq!(names(&ns, dir, 2), sorted);
                let subtree: Vec<String> = model.entries.keys().filter(|k| Model::under(k, dir)).cloned().collect();
                prop_assert_eq!(walk(&ns, dir, 3), subtree);
            }
            // a snapshot restores the same state, in either form
            let restored: Namespace = serde_json::from_slice(&serde_json::to_vec(&ns).unwrap()).unwrap();
            prop_assert_eq!(&restored, &ns);
            prop_assert_eq!(&binary_round_trip(&ns), &ns);
        }
    }
}

#[test]
fn a_retried_request_gets_the_first_answer_and_acts_once() {
    let mut ns = Namespace::default();
    register(&mut ns, &[1, 2, 3]);
    upload(&mut ns, "/f", 1, false).unwrap();
    let once = |seq: u64, command: Command| Command::Once { request: RequestId { client: 7, seq }, command: Box::new(command) };
    let delete = || Command::Delete { path: "/f".into(), recursive: false, expect_file_id: None };
    let first = ns.apply(once(1, delete())).unwrap();
    assert!(matches!(first, Outcome::FileDeleted(_)));
    // The retry of request 1 answers as the first attempt did, and changes nothing.
    let before = ns.clone();
    assert_eq!(ns.apply(once(1, delete())), Ok(first));
    assert_eq!(ns.files().count(), before.files().count());
    // A new request is a new delete: the file is gone.
    assert!(matches!(ns.apply(once(2, delete())), Err(NamespaceError::NotFound(_))));
    // A refusal is remembered too: the retry of request 2 is refused the same way even
    // after the path exists again.
    upload(&mut ns, "/f", 1, false).unwrap();
    assert!(matches!(ns.apply(once(2, delete())), Err(NamespaceError::NotFound(_))));
    // Requests nest no further.
    assert!(ns.apply(once(3, once(4, delete()))).is_err());
    // Results are kept for the last SESSION_RESULTS_MAX requests of a client; an older one
    // is refused rather than applied twice.
    for seq in 10..10 + SESSION_RESULTS_MAX as u64 {
        ns.apply(once(seq, Command::Mkdir { path: format!("/d{seq}"), parents: false, unix_ms: 1 })).unwrap();
    }
    assert!(matches!(ns.apply(once(5, delete())), Err(NamespaceError::RequestTooOld { .. })));
    // Snapshots carry the sessions: a restored node answers retries the same way.
    let restored: Namespace = serde_json::from_slice(&serde_json::to_vec(&ns).unwrap()).unwrap();
    assert_eq!(restored, ns);
}

#[test]
fn an_empty_file_is_created_and_committed_by_one_command() {
    let mut ns = Namespace::default();
    register(&mut ns, &[1, 2, 3]);
    let Ok(Outcome::FileCommitted(s)) = ns.apply(empty_file_cmd("/d/e", false)) else { panic!("not committed") };
    let f = ns.file("/d/e").expect("visible at once");
    assert_eq!((f.id, f.size, f.chunks.len(), f.sha256()), (s.id, 0, 0, Some(Sha256Digest::of(&[]))));
    assert_eq!((f.attrs().mode, f.attrs().mtime_unix_ms, f.committed_unix_ms), (Some(0o640), Some(3), 7));
    assert_eq!(ns.kind("/d"), Some(EntryKind::Dir), "parents are created as a commit creates them");
    assert_eq!(ns.uploads().count(), 0, "no upload is left open");
    // The path rules of a commit: taken without overwrite, a directory, a file above.
    assert!(matches!(ns.apply(empty_file_cmd("/d/e", false)), Err(NamespaceError::AlreadyExists(_))));
    assert!(matches!(ns.apply(empty_file_cmd("/d", true)), Err(NamespaceError::IsDirectory(_))));
    assert!(matches!(ns.apply(empty_file_cmd("/d/e/f", true)), Err(NamespaceError::ParentIsFile { .. })));
    assert!(matches!(ns.apply(empty_file_cmd("/", true)), Err(NamespaceError::IsDirectory(_))));
    // Overwriting a file with data sends its replicas to the garbage.
    upload(&mut ns, "/g", 3 * CHUNK, false).unwrap();
    let garbage_before: usize = ns.garbage.values().map(|g| g.len()).sum();
    let Ok(Outcome::FileCommitted(g)) = ns.apply(empty_file_cmd("/g", true)) else { panic!("not replaced") };
    assert_eq!(ns.file("/g").map(|f| (f.id, f.size)), Some((g.id, 0)));
    let garbage_after: usize = ns.garbage.values().map(|g| g.len()).sum();
    assert_eq!(garbage_after, garbage_before + 3 * 3, "the old file's 3 chunks on 3 nodes are garbage");
    // Only the file the client saw is replaced.
    let mut expecting = empty_file_cmd("/g", true);
    if let Command::CreateEmptyFile { expect_file_id, .. } = &mut expecting {
        *expect_file_id = Some(s.id);
    }
    assert!(matches!(ns.apply(expecting), Err(NamespaceError::FileChanged { .. })));
    // Refused whatever the state: an expected file without overwrite.
    let mut bad = empty_file_cmd("/h", false);
    if let Command::CreateEmptyFile { expect_file_id, .. } = &mut bad {
        *expect_file_id = Some(g.id);
    }
    assert!(bad.validate().is_err());
    // It survives a snapshot.
    let restored: Namespace = serde_json::from_slice(&serde_json::to_vec(&ns).unwrap()).unwrap();
    assert_eq!(restored, ns);
}

#[test]
fn a_batch_applies_each_command_on_its_own() {
    let mut ns = Namespace::default();
    register(&mut ns, &[1, 2, 3]);
    let outcome = ns
        .apply(Command::Batch(vec![
            Command::Mkdir { path: "/a".into(), parents: false, unix_ms: 1 },
            Command::Mkdir { path: "/a".into(), parents: false, unix_ms: 1 },
            Command::Mkdir { path: "/b/c".into(), parents: false, unix_ms: 1 },
            Command::Mkdir { path: "/a/d".into(), parents: false, unix_ms: 1 },
        ]))
        .unwrap();
    let Outcome::Batch(results) = outcome else { panic!("{outcome:?}") };
    assert!(results[0].is_ok() && results[3].is_ok());
    assert!(matches!(results[1], Err(NamespaceError::AlreadyExists(_))));
    assert!(matches!(results[2], Err(NamespaceError::NoParent { .. })));
    assert_eq!(ns.dirs().collect::<Vec<_>>(), vec!["/", "/a", "/a/d"]);
    assert!(ns.apply(Command::Batch(vec![Command::Batch(vec![])])).is_err());
}

#[test]
fn a_copy_shares_chunks_and_they_go_only_with_their_last_file() {
    let mut ns = Namespace::default();
    register(&mut ns, &[1, 2, 3, 4]);
    let a = upload(&mut ns, "/a", 3 * CHUNK, false).unwrap();
    let copy = |ns: &mut Namespace, src: &str, dst: &str| match ns.apply(Command::CopyFile {
        src: src.into(),
        dst: dst.into(),
        overwrite: false,
        unix_ms: 20,
        append: vec![],
        object: None,
    }) {
        Ok(Outcome::FileCommitted(f)) => f,
        other => panic!("{other:?}"),
    };
    let b = copy(&mut ns, "/a", "/b");
    let c = copy(&mut ns, "/b", "/c");
    assert!(b.id != a.id && c.id != b.id);
    let ids = |ns: &Namespace, p: &str| -> Vec<ChunkId> {
        let f = ns.file(p).unwrap();
        f.chunks.iter().map(|x| f.chunk_id(x.index)).collect()
    };
    assert_eq!(ids(&ns, "/a"), ids(&ns, "/b"));
    assert_eq!(ids(&ns, "/a"), ids(&ns, "/c"));
    let shared = ids(&ns, "/a");
    let nothing_to_delete = |ns: &Namespace| (1..=4).all(|n| ns.garbage_for(StorageNodeId(n), usize::MAX).is_empty());

    // The file the chunks were uploaded for goes: the copies still hold them.
    ns.apply(delete("/a")).unwrap();
    assert!(nothing_to_delete(&ns), "chunks still held by copies became garbage");
    let report = |chunk: ChunkId, index: u32| ReplicaReport { chunk, size: CHUNK, sha256: Sha256Digest([index as u8; 32]) };
    assert_eq!(ns.judge_report(StorageNodeId(1), &report(shared[0], 0)), Verdict::Counted, "a holder's report of a shared chunk");
    // A replica learned is listed in every file that shares the chunk.
    ns.apply(Command::ReportReplicas { node: StorageNodeId(4), replicas: vec![report(shared[1], 1)] }).unwrap();
    for p in ["/b", "/c"] {
        assert!(ns.file(p).unwrap().chunks[1].replicas.contains(&StorageNodeId(4)), "{p} missed the learned replica");
    }
    // A dropped one leaves every file.
    ns.apply(Command::DropReplicas { drops: vec![(shared[1], StorageNodeId(4))] }).unwrap();
    assert!(["/b", "/c"].iter().all(|p| !ns.file(p).unwrap().chunks[1].replicas.contains(&StorageNodeId(4))));
    ns.apply(Command::ForgetDeletedReplicas { node: StorageNodeId(4), chunks: vec![shared[1]] }).unwrap();
    // Replication of a shared chunk is the highest of its holders'.
    ns.apply(Command::SetReplication { path: "/b".into(), replication: 5 }).unwrap();
    assert_eq!(ns.chunk_replication(shared[0]), Some(5));
    ns.apply(delete("/b")).unwrap();
    assert!(nothing_to_delete(&ns));
    assert_eq!(ns.chunk_replication(shared[0]), Some(3));
    // The last holder goes: now every replica is garbage, and nothing is shared any more.
    ns.apply(delete("/c")).unwrap();
    for node in 1..=3 {
        let mut g = ns.garbage_for(StorageNodeId(node), usize::MAX);
        g.sort();
        let mut want = shared.clone();
        want.sort();
        assert_eq!(g, want, "node {node}");
    }
    assert!(ns.shared_chunks.is_empty());
    // Reports of them are now of files that are gone.
    assert_eq!(ns.judge_report(StorageNodeId(1), &report(shared[0], 0)), Verdict::Discard);
}

/// A joined copy (S3's multipart completion): the parts' chunks, in order, at offsets that add
/// up, shared and not copied; the parts can go, the object keeps its chunks, and they go with
/// it. Chained files, a file twice and a copy onto itself without new metadata are refused.
#[test]
fn a_joined_copy_shares_every_parts_chunks_in_order() {
    let mut ns = Namespace::default();
    register(&mut ns, &[1, 2, 3, 4]);
    upload(&mut ns, "/up/p1", CHUNK + 10, false).unwrap();
    upload(&mut ns, "/up/p2", 7, false).unwrap();
    upload(&mut ns, "/up/p3", 2 * CHUNK, false).unwrap();
    let ids = |ns: &Namespace, p: &str| -> Vec<ChunkId> {
        let f = ns.file(p).unwrap();
        f.chunks.iter().map(|x| f.chunk_id(x.index)).collect()
    };
    let parts: Vec<ChunkId> = ["/up/p1", "/up/p2", "/up/p3"].iter().flat_map(|p| ids(&ns, p)).collect();
    let object = ObjectMeta { etag: "0123456789abcdef0123456789abcdef-3".into(), ..object_meta() };
    let join = Command::CopyFile {
        src: "/up/p1".into(),
        dst: "/b/obj".into(),
        overwrite: true,
        unix_ms: 30,
        append: vec!["/up/p2".into(), "/up/p3".into()],
        object: Some(object.clone()),
    };
    join.validate().unwrap();
    let Outcome::FileCommitted(summary) = ns.apply(join).unwrap() else { panic!("not committed") };
    assert_eq!(summary.size, 3 * CHUNK + 17);
    let f = ns.file("/b/obj").unwrap();
    assert_eq!(f.chunks.iter().map(|c| c.size).collect::<Vec<_>>(), vec![CHUNK, 10, 7, CHUNK, CHUNK]);
    assert_eq!(f.chunks.iter().map(|c| c.index).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    assert_eq!(ids(&ns, "/b/obj"), parts, "the parts' chunks, in order");
    assert_eq!((f.sha256(), f.object()), (None, Some(&object)));
    assert_eq!(binary_round_trip(&ns), ns);

    // The parts go: nothing becomes garbage, and reports of the chunks count for the object.
    ns.apply(Command::Delete { path: "/up".into(), recursive: true, expect_file_id: None }).unwrap();
    assert!((1..=4).all(|n| ns.garbage_for(StorageNodeId(n), usize::MAX).is_empty()), "chunks the object holds became garbage");
    let f = ns.file("/b/obj").unwrap();
    let report = |pos: usize| ReplicaReport { chunk: parts[pos], size: f.chunks[pos].size, sha256: f.chunks[pos].sha256 };
    for pos in 0..parts.len() {
        assert_eq!(ns.judge_report(StorageNodeId(1), &report(pos)), Verdict::Counted, "chunk at {pos}");
    }
    // A replica learned of the fourth chunk (the third part's first) is listed at its place.
    let learned = report(3);
    ns.apply(Command::ReportReplicas { node: StorageNodeId(4), replicas: vec![learned] }).unwrap();
    let f = ns.file("/b/obj").unwrap();
    assert!(f.chunks[3].replicas.contains(&StorageNodeId(4)) && !f.chunks[1].replicas.contains(&StorageNodeId(4)));

    // Onto itself with new metadata: the chunks stay; without, refused.
    let replaced = ObjectMeta { content_type: Some("image/png".into()), ..object.clone() };
    let onto_itself =
        |object: Option<ObjectMeta>| Command::CopyFile { src: "/b/obj".into(), dst: "/b/obj".into(), overwrite: true, unix_ms: 31, append: vec![], object };
    assert!(matches!(onto_itself(None).validate(), Err(NamespaceError::InvalidArgument(_))));
    ns.apply(onto_itself(Some(replaced.clone()))).unwrap();
    assert_eq!(ns.file("/b/obj").unwrap().object(), Some(&replaced));
    assert_eq!(ids(&ns, "/b/obj"), parts);
    assert!((1..=4).all(|n| ns.garbage_for(StorageNodeId(n), usize::MAX).is_empty()), "a copy onto itself dropped its chunks");

    // The object goes: now its chunks are garbage.
    ns.apply(delete("/b/obj")).unwrap();
    let mut g = ns.garbage_for(StorageNodeId(1), usize::MAX);
    g.sort();
    let mut want = parts.clone();
    want.sort();
    assert_eq!(g, want);
    assert!(ns.shared_chunks.is_empty());

    // Refused, changing nothing: a chained file joined, a file twice, too many files.
    let size = 2 * CHUNK;
    let id = create(&mut ns, "/c/chained", size, false).unwrap();
    let mut chained = chunks_for(size, &[1, 2, 3]);
    chained[0].sum = SumKind::Chained;
    chained[1].sum = SumKind::ChainedLast;
    let last = chained[1].sha256;
    ns.apply(Command::CommitFile { file: id, unix_ms: 1, sha256: Some(last), chunks: chained, object: None }).unwrap();
    upload(&mut ns, "/c/plain", 5, false).unwrap();
    let before = ns.clone();
    let joined = |src: &str, append: &[&str]| Command::CopyFile {
        src: src.into(),
        dst: "/c/joined".into(),
        overwrite: false,
        unix_ms: 40,
        append: append.iter().map(|a| a.to_string()).collect(),
        object: None,
    };
    assert!(matches!(ns.apply(joined("/c/plain", &["/c/chained"])), Err(NamespaceError::InvalidArgument(_))));
    assert!(matches!(joined("/c/plain", &["/c/plain"]).validate(), Err(NamespaceError::InvalidArgument(_))));
    assert!(matches!(joined("/c/plain", &vec!["/c/x"; COPY_APPEND_MAX + 1]).validate(), Err(NamespaceError::InvalidArgument(_))));
    assert!(matches!(ns.apply(joined("/c/plain", &["/c/missing"])), Err(NamespaceError::NotFound(_))));
    assert_eq!(ns, before);
    // A chained file alone is still copied as it is.
    ns.apply(joined("/c/chained", &[])).unwrap();
}

#[test]
fn trash_keeps_what_is_deleted_under_the_users_bucket_and_never_collides() {
    let mut ns = Namespace::default();
    register(&mut ns, &[1, 2, 3]);
    upload(&mut ns, "/logs/a", CHUNK, false).unwrap();
    let bucket = trash_bucket("alice", 1_796_549_123_456);
    assert_eq!(bucket, "/.trash/alice/2026-12-06T09:25:00Z");
    assert_eq!(trash_bucket_unix_ms("2026-12-06T09:25:00Z"), Some(1_796_549_100_000));
    assert_eq!(trash_bucket_unix_ms("2026-12-06T09:25:00Z.3"), Some(1_796_549_100_000));
    assert_eq!(trash_bucket_unix_ms("notes"), None);
    let trash = |ns: &mut Namespace, path: &str, recursive: bool| {
        ns.apply(Command::MoveToTrash { path: path.into(), recursive, expect_file_id: None, trash: bucket.clone(), unix_ms: 10 })
    };
    match trash(&mut ns, "/logs/a", false).unwrap() {
        Outcome::Trashed { to, files, .. } => assert_eq!((to.as_str(), files), ("/.trash/alice/2026-12-06T09:25:00Z/logs/a", 1)),
        other => panic!("{other:?}"),
    }
    assert!(ns.file("/logs/a").is_none());
    assert!((1..=3).all(|n| ns.garbage_for(StorageNodeId(n), usize::MAX).is_empty()), "a trashed file's replicas must stay");
    // The same path deleted again in the same minute goes to a variant of the bucket.
    upload(&mut ns, "/logs/a", CHUNK, false).unwrap();
    match trash(&mut ns, "/logs/a", false).unwrap() {
        Outcome::Trashed { to, .. } => assert_eq!(to, "/.trash/alice/2026-12-06T09:25:00Z.1/logs/a"),
        other => panic!("{other:?}"),
    }
    // A directory, with the rules of delete: not empty needs recursive.
    upload(&mut ns, "/logs/b", CHUNK, false).unwrap();
    assert!(matches!(trash(&mut ns, "/logs", false), Err(NamespaceError::DirectoryNotEmpty(_))));
    match trash(&mut ns, "/logs", true).unwrap() {
        Outcome::Trashed { to, files, dirs, .. } => assert_eq!((to.as_str(), files, dirs), ("/.trash/alice/2026-12-06T09:25:00Z.2/logs", 1, 1)),
        other => panic!("{other:?}"),
    }
    // Nothing in the trash, nor the root, nor a bucket elsewhere is accepted.
    for (path, bucket) in [("/.trash/alice", bucket.as_str()), ("/", bucket.as_str()), ("/x", "/tmp/b"), ("/x", "/.trash")] {
        let refused = ns.apply(Command::MoveToTrash { path: path.into(), recursive: true, expect_file_id: None, trash: bucket.into(), unix_ms: 1 });
        assert!(refused.is_err(), "{path} into {bucket}");
    }
    for bad in ["", "a/b", "..", &"x".repeat(USER_MAX_BYTES + 1), "a\nb"] {
        assert!(check_user(bad).is_err(), "{bad:?}");
    }
    assert!(check_user("alice").is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct(
            concat!(env!("CARGO_MANIFEST_DIR"), "/../proptest-regressions/core-namespace-trash.txt")))),
        ..ProptestConfig::default()
    })]
    /// Trash buckets name their minute in UTC and read back as it, for any time.
    #[test]
    fn trash_bucket_names_round_trip(ms in 0u64..8_000_000_000_000) {
        let bucket = trash_bucket("u", ms);
        let name = bucket.rsplit('/').next().unwrap();
        prop_assert_eq!(trash_bucket_unix_ms(name), Some(ms - ms % 60_000));
        prop_assert_eq!(trash_bucket_unix_ms(&format!("{name}.7")), Some(ms - ms % 60_000));
    }
}

#[test]
fn a_snapshot_of_the_previous_version_still_loads() {
    // The previous version's state: no attrs anywhere, no shared chunks; a kept `Once` result
    // holding a file summary.
    let mut ns = Namespace::default();
    register(&mut ns, &[1, 2, 3]);
    upload(&mut ns, "/a", CHUNK, false).unwrap();
    ns.apply(Command::Once { request: RequestId { client: 1, seq: 1 }, command: Box::new(delete("/a")) }).unwrap();
    let mut value = serde_json::to_value(&ns).unwrap();
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                map.remove("attrs");
                map.remove("shared");
                map.remove("shared_chunks");
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut value);
    let old: Namespace = serde_json::from_value(value).expect("an old snapshot loads");
    assert_eq!(old, ns);
}

#[test]
fn a_delete_goes_to_the_trash_only_when_it_can() {
    let trash = Some(("alice", 1_796_549_123_456));
    assert!(matches!(delete_command("/a/b", true, None, trash), Ok(Command::MoveToTrash { trash, .. }) if trash == "/.trash/alice/2026-12-06T09:25:00Z"));
    for (path, trash) in [("/a/b", None), ("/", trash), ("/.trash/alice/x", trash)] {
        assert!(matches!(delete_command(path, true, None, trash), Ok(Command::Delete { .. })), "{path}");
    }
    assert!(delete_command("/a", false, None, Some(("a/b", 1))).is_err(), "a user name with a slash");
    assert!(delete_command("", false, None, None).is_err());
}

/// A chunk record of an earlier version (no `sum`) reads as standalone, and a standalone record
/// is written as it always was, so earlier versions read it; a chained one says so.
#[test]
fn chunk_records_of_earlier_versions_read_as_standalone() {
    let old = r#"{"index":0,"size":1,"sha256":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],"replicas":[1]}"#;
    let record: ChunkRecord = serde_json::from_str(old).unwrap();
    assert_eq!(record.sum, crate::chain::SumKind::Standalone);
    assert_eq!(serde_json::to_string(&record).unwrap(), old);
    let chained = ChunkRecord { sum: crate::chain::SumKind::ChainedLast, ..record };
    let text = serde_json::to_string(&chained).unwrap();
    assert!(text.contains(r#""sum":"ChainedLast""#), "{text}");
    assert_eq!(serde_json::from_str::<ChunkRecord>(&text).unwrap(), chained);
}

/// Chained checksums are recorded only where they can be: in a file of several chunks, the
/// last marked last, each after a chained chunk, the last one equal to the file's SHA-256.
/// The replies and repair orders rebuild each chain from the records (`chain_at`).
#[test]
fn chained_records_must_form_the_files_chain() {
    use crate::chain::SumKind::{Chained, ChainedLast};
    let mut ns = Namespace::default();
    register(&mut ns, &[1, 2, 3]);
    let size = 2 * CHUNK + 5;
    let chained = || {
        let mut c = chunks_for(size, &[1, 2]);
        c[0].sum = Chained;
        c[1].sum = Chained;
        c[2].sum = ChainedLast;
        c
    };
    let last_sha = chained()[2].sha256;
    let id = create(&mut ns, "/f", size, false).unwrap();
    // The last chunk not marked last, or a middle one marked last: refused, nothing changed.
    for (at, kind) in [(2, Chained), (1, ChainedLast)] {
        let mut bad = chained();
        bad[at].sum = kind;
        assert!(matches!(ns.apply(Command::RecordChunks { file: id, chunks: bad }), Err(NamespaceError::BadChunk { .. })), "{at} {kind:?}");
    }
    // A chain after a standalone chunk, or a file SHA-256 other than the last checksum.
    let mut gap = chained();
    gap[0].sum = Default::default();
    assert!(matches!(
        ns.apply(Command::CommitFile { file: id, unix_ms: 1, sha256: Some(last_sha), chunks: gap, object: None }),
        Err(NamespaceError::BadChunk { .. })
    ));
    let other = Some(Sha256Digest([42; 32]));
    assert!(matches!(
        ns.apply(Command::CommitFile { file: id, unix_ms: 1, sha256: other, chunks: chained(), object: None }),
        Err(NamespaceError::BadChunk { .. })
    ));
    ns.apply(Command::CommitFile { file: id, unix_ms: 1, sha256: Some(last_sha), chunks: chained(), object: None }).unwrap();
    let file = ns.file("/f").unwrap();
    let chains: Vec<_> = (0..3).map(|pos| file.chain_at(pos).unwrap()).collect();
    assert_eq!(chains[0].before, crate::chain::Chain::initial());
    assert_eq!((chains[1].before, chains[1].offset, chains[1].last), (file.chunks[0].sha256, CHUNK, false));
    assert_eq!((chains[2].before, chains[2].offset, chains[2].last), (file.chunks[1].sha256, 2 * CHUNK, true));
    // A file of one chunk cannot be chained (its chunk's SHA-256 is the file's already).
    let one = create(&mut ns, "/one", 5, false).unwrap();
    let mut single = chunks_for(5, &[1, 2]);
    single[0].sum = ChainedLast;
    assert!(matches!(ns.apply(Command::RecordChunks { file: one, chunks: single }), Err(NamespaceError::BadChunk { .. })));
}

#[test]
fn a_loaded_namespace_keeps_no_spare_capacity_in_its_lists() {
    let mut ns = Namespace::default();
    register(&mut ns, &[1, 2, 3]);
    upload(&mut ns, "/f", CHUNK + 1, false).unwrap();
    let mut back: Namespace = serde_json::from_slice(&serde_json::to_vec(&ns).unwrap()).unwrap();
    back.shrink_to_fit();
    let f = back.file("/f").unwrap();
    assert!(f.chunks.iter().all(|c| c.replicas.capacity() == c.replicas.len()));
    let key = back.files.keys().find(|k| &***k == "/f").unwrap();
    assert!(ArcStr::ptr_eq(key, &back.paths_by_id[&f.id]), "the id index shares the tree's path");
    assert!(ArcStr::ptr_eq(key, &f.path), "the record shares the tree's path");
    assert!(f.chunks.iter().all(|c| !c.replicas.spilled()), "three replicas are held inline");
    assert_eq!(back, ns);
}

/// A snapshot's maps are built from their entries in one pass: the same map as inserting them
/// one by one, in any order, a repeated key keeping its last value.
#[test]
fn a_map_read_in_one_pass_is_the_map_inserted_key_by_key() {
    #[derive(Deserialize)]
    struct Wrapped(#[serde(deserialize_with = "super::bulk_map::deserialize")] BTreeMap<String, u32>);
    let read = |json: &str| serde_json::from_str::<Wrapped>(json).unwrap().0;
    let inserted = |pairs: &[(&str, u32)]| pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>();
    assert_eq!(read(r#"{"/a":1,"/a/b":2,"/b":3}"#), inserted(&[("/a", 1), ("/a/b", 2), ("/b", 3)]));
    assert_eq!(read(r#"{"/b":3,"/a":1,"/a/b":2}"#), inserted(&[("/a", 1), ("/a/b", 2), ("/b", 3)]));
    assert_eq!(read(r#"{"/a":1,"/b":3,"/a":7}"#), inserted(&[("/a", 7), ("/b", 3)]));
    assert_eq!(read("{}"), BTreeMap::new());
    assert!(serde_json::from_str::<Wrapped>(r#"[1]"#).is_err());
}

/// A directory's files are found among its subdirectories' files by skipping each subtree:
/// names that sort just before and after `name/` are listed in name order, in pages of any
/// size, and a snapshot still lists the files among each directory's children, as earlier
/// versions read them.
#[test]
fn a_listing_skips_subtrees_and_a_snapshot_lists_files_among_children() {
    let mut ns = Namespace::default();
    register(&mut ns, &[1, 2, 3]);
    for path in ["/d/a", "/d/a b", "/d/a-c", "/d/a.x/f", "/d/a0", "/d/b/c/deep", "/d/b/e", "/d/b0", "/d/z", "/top"] {
        upload(&mut ns, path, 1, false).unwrap();
    }
    mkdir(&mut ns, "/d/empty", false).unwrap();
    let want: Vec<(String, EntryKind)> = [
        ("a", EntryKind::File),
        ("a b", EntryKind::File),
        ("a-c", EntryKind::File),
        ("a.x", EntryKind::Dir),
        ("a0", EntryKind::File),
        ("b", EntryKind::Dir),
        ("b0", EntryKind::File),
        ("empty", EntryKind::Dir),
        ("z", EntryKind::File),
    ]
    .iter()
    .map(|(n, k)| (n.to_string(), *k))
    .collect();
    for page in 1..=10 {
        assert_eq!(names(&ns, "/d", page), want, "pages of {page}");
    }
    assert_eq!(names(&ns, "/", 1), vec![("d".into(), EntryKind::Dir), ("top".into(), EntryKind::File)]);
    assert_eq!(names(&ns, "/d/b", 1), vec![("c".into(), EntryKind::Dir), ("e".into(), EntryKind::File)]);
    // A directory holding only a subdirectory's files is not empty either.
    assert!(matches!(ns.apply(delete("/d/b")), Err(NamespaceError::DirectoryNotEmpty(_))));
    ns.apply(Command::Delete { path: "/d/b/e".into(), recursive: false, expect_file_id: None }).unwrap();
    assert!(matches!(ns.apply(delete("/d/b")), Err(NamespaceError::DirectoryNotEmpty(_))), "its subdirectory c holds a file");
    ns.apply(delete("/d/empty")).unwrap();

    let json = serde_json::to_value(&ns).unwrap();
    let children = &json["dirs"]["/d"]["children"];
    assert_eq!(children["a"], "File");
    assert_eq!(children["a.x"], "Dir");
    assert_eq!(children.as_object().unwrap().len(), 8, "{children}");
    assert_eq!(json["dirs"]["/"]["children"], serde_json::json!({"d": "Dir", "top": "File"}));
    let back: Namespace = serde_json::from_value(json).unwrap();
    assert_eq!(back, ns);
    assert_eq!(back.dirs["/d"].subdirs.iter().map(String::as_str).collect::<Vec<_>>(), vec!["a.x", "b"], "files are not kept among the subdirectories");
}

/// `ns` through the binary snapshot form.
fn binary_round_trip(ns: &Namespace) -> Namespace {
    let mut bytes = Vec::new();
    ns.write_snapshot(&mut bytes);
    Namespace::read_snapshot(&bytes).unwrap()
}

/// A namespace with something in every field the binary form writes: chained and standalone
/// files, a file checksum equal to its last chunk's and one that is not, attributes, a copy
/// sharing chunks, an upload in flight, a remembered `Once` result, a bad replica, garbage,
/// an empty directory, and a path of many bytes beyond ASCII.
fn varied_namespace() -> Namespace {
    use crate::chain::SumKind::{Chained, ChainedLast};
    let mut ns = Namespace::default();
    register(&mut ns, &[1, 2, 3, 300]);
    ns.apply(Command::SetClusterId { cluster_id: "c-1".into() }).unwrap();
    let size = 2 * CHUNK + 5;
    let id = create(&mut ns, "/d/chained", size, false).unwrap();
    let mut chained = chunks_for(size, &[1, 300, 2]);
    chained[0].sum = Chained;
    chained[1].sum = Chained;
    chained[2].sum = ChainedLast;
    let last = chained[2].sha256;
    ns.apply(Command::CommitFile { file: id, unix_ms: 1_800_000_000_000, sha256: Some(last), chunks: chained, object: None }).unwrap();
    let id = create(&mut ns, "/d/other-sha", CHUNK, false).unwrap();
    ns.apply(Command::CommitFile { file: id, unix_ms: 2, sha256: Some(Sha256Digest([7; 32])), chunks: chunks_for(CHUNK, &[1, 2]), object: None }).unwrap();
    upload(&mut ns, "/d/plain", 3 * CHUNK, false).unwrap();
    ns.apply(empty_file_cmd("/d/e/mpty", false)).unwrap();
    ns.apply(Command::CopyFile { src: "/d/plain".into(), dst: "/copy".into(), overwrite: false, unix_ms: 3, append: vec![], object: None }).unwrap();
    upload(&mut ns, "/\u{fc}ber/\u{65e5}\u{672c}/\u{1f600}", 1, false).unwrap();
    mkdir(&mut ns, "/empty/dir", true).unwrap();
    create(&mut ns, "/in-flight", 2 * CHUNK, false).unwrap();
    ns.apply(Command::Once { request: RequestId { client: 5, seq: 1 }, command: Box::new(delete("/d/plain")) }).unwrap();
    let plain_chunk = ChunkId::derive(ns.file("/copy").unwrap().id, 0);
    let copy = ns.file("/copy").unwrap();
    let shared = copy.chunk_id(0);
    assert_ne!(shared, plain_chunk, "the copy shares the deleted file's chunk");
    ns.apply(Command::MarkReplicaBad { chunk: shared, node: StorageNodeId(2) }).unwrap();
    let id = create(&mut ns, "/bkt/obj", CHUNK + 1, false).unwrap();
    let object = Some(Box::new(object_meta()));
    ns.apply(Command::CommitFile { file: id, unix_ms: 4, sha256: None, chunks: chunks_for(CHUNK + 1, &[1, 2]), object: object.clone() }).unwrap();
    ns.apply(Command::CopyFile { src: "/bkt/obj".into(), dst: "/bkt/obj-copy".into(), overwrite: false, unix_ms: 5, append: vec![], object: None }).unwrap();
    let mut empty = empty_file_cmd("/bkt/empty", false);
    if let Command::CreateEmptyFile { object: empty_object, .. } = &mut empty {
        *empty_object = object;
    }
    ns.apply(empty).unwrap();
    ns
}

fn object_meta() -> ObjectMeta {
    ObjectMeta {
        etag: "5eb63bbbe01eeed093cb22bb8f5acdc3".into(),
        content_type: Some("text/plain; charset=utf-8".into()),
        headers: [("cache-control".to_string(), "no-cache".to_string())].into(),
        user: [("owner".to_string(), "\u{e9}milie".to_string())].into(),
    }
}

/// What the S3 gateway keeps of an object stays with its file: committed, listed, copied,
/// and through both snapshot forms; too much of it is refused before the log.
#[test]
fn objects_keep_their_metadata() {
    let mut ns = Namespace::default();
    register(&mut ns, &[1, 2, 3]);
    let id = create(&mut ns, "/b/o", 5, false).unwrap();
    let commit = Command::CommitFile { file: id, unix_ms: 1, sha256: None, chunks: chunks_for(5, &[1, 2]), object: Some(Box::new(object_meta())) };
    let Outcome::FileCommitted(summary) = ns.apply(commit).unwrap() else { panic!("not committed") };
    assert_eq!(summary.object.as_deref(), Some(&object_meta()));
    ns.apply(Command::CopyFile { src: "/b/o".into(), dst: "/b/c".into(), overwrite: false, unix_ms: 2, append: vec![], object: None }).unwrap();
    assert_eq!(ns.file("/b/c").unwrap().object(), Some(&object_meta()), "a copy keeps it");
    let mut empty = empty_file_cmd("/b/e", false);
    if let Command::CreateEmptyFile { object, .. } = &mut empty {
        *object = Some(Box::new(ObjectMeta { etag: "d41d8cd98f00b204e9800998ecf8427e".into(), ..Default::default() }));
    }
    ns.apply(empty).unwrap();
    assert_eq!(ns.file("/b/e").unwrap().object().map(|o| o.etag.as_str()), Some("d41d8cd98f00b204e9800998ecf8427e"));
    upload(&mut ns, "/b/plain", 5, false).unwrap();
    assert_eq!(ns.file("/b/plain").unwrap().object(), None, "files dfs put wrote have none");
    assert_eq!(binary_round_trip(&ns), ns);
    assert_eq!(serde_json::from_str::<Namespace>(&serde_json::to_string(&ns).unwrap()).unwrap(), ns);

    let id = create(&mut ns, "/b/big", 5, false).unwrap();
    let too_much = ObjectMeta { user: [("k".to_string(), "v".repeat(OBJECT_USER_META_MAX_BYTES))].into(), ..object_meta() };
    let commit = Command::CommitFile { file: id, unix_ms: 1, sha256: None, chunks: chunks_for(5, &[1, 2]), object: Some(Box::new(too_much)) };
    assert!(matches!(commit.validate(), Err(NamespaceError::InvalidArgument(_))));
    assert!(matches!(ns.apply(commit), Err(NamespaceError::InvalidArgument(_))));
    let many = ObjectMeta { headers: (0..=OBJECT_HEADERS_MAX).map(|i| (format!("h{i}"), String::new())).collect(), ..Default::default() };
    assert!(many.validate().is_err());
}

#[test]
fn the_binary_snapshot_form_restores_every_field() {
    let ns = varied_namespace();
    assert!(!ns.shared_chunks.is_empty() && !ns.bad_replicas.is_empty() && !ns.sessions.is_empty() && !ns.uploads.is_empty());
    assert!(ns.files.values().any(|f| f.shared().is_some()) && ns.files.values().any(|f| !f.attrs().is_empty()));
    let back = binary_round_trip(&ns);
    assert_eq!(back, ns);
    // The id index and every path share one allocation, as after `shrink_to_fit`.
    for (key, f) in &back.files {
        assert!(ArcStr::ptr_eq(key, &back.paths_by_id[&f.id]) && ArcStr::ptr_eq(key, &f.path), "{key}");
    }
    // And the form is smaller than JSON: digests as bytes, paths by what they add.
    let mut bytes = Vec::new();
    ns.write_snapshot(&mut bytes);
    assert!(bytes.len() * 2 < serde_json::to_vec(&ns).unwrap().len(), "{} bytes", bytes.len());
    assert_eq!(binary_round_trip(&Namespace::default()), Namespace::default());
}

/// A damaged or cut snapshot is an error, never a panic, and no claimed length is reserved
/// before the bytes behind it are there.
#[test]
fn a_cut_or_damaged_binary_snapshot_is_refused_without_panicking() {
    let mut bytes = Vec::new();
    varied_namespace().write_snapshot(&mut bytes);
    for len in 0..bytes.len() {
        assert!(Namespace::read_snapshot(&bytes[..len]).is_err(), "cut at {len} of {}", bytes.len());
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(Namespace::read_snapshot(&longer), Err(SnapshotFormatError::TrailingBytes { len: 1 })));
    let mut other = bytes.clone();
    other[0] = 3;
    assert!(matches!(Namespace::read_snapshot(&other), Err(SnapshotFormatError::UnknownVersion(3))));
    // Every byte flipped in turn: decoded or refused, never a panic.
    for at in 0..bytes.len() {
        for mask in [0x01, 0x80, 0xff] {
            let mut flipped = bytes.clone();
            flipped[at] ^= mask;
            let _ = Namespace::read_snapshot(&flipped);
        }
    }
    // A count of 2^62 files with nothing behind it is refused before anything is reserved.
    use integer_encoding::VarInt;
    let mut huge = vec![SNAPSHOT_FORMAT_VERSION];
    let rest_start = 1;
    let (rest_len, n) = u64::decode_var(&bytes[rest_start..]).unwrap();
    huge.extend_from_slice(&bytes[rest_start..rest_start + n + rest_len as usize]);
    huge.extend_from_slice(&[1, 0, 1, b'/', 0]); // the root directory alone
    huge.extend_from_slice(&(1u64 << 62).encode_var_vec());
    assert!(matches!(Namespace::read_snapshot(&huge), Err(SnapshotFormatError::Truncated(_))));
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 500,
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct(
            concat!(env!("CARGO_MANIFEST_DIR"), "/../proptest-regressions/core-namespace-snapshot.txt")))),
        ..ProptestConfig::default()
    })]
    /// A real snapshot with bytes overwritten anywhere, then cut anywhere: an error or a
    /// namespace, never a panic, and never a reservation the bytes do not back (a claimed
    /// count of 2^60 entries would abort the process).
    #[test]
    fn a_mangled_binary_snapshot_never_panics(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
        let mut bytes = Vec::new();
        varied_namespace().write_snapshot(&mut bytes);
        for (at, value) in edits {
            let at = at.index(bytes.len());
            bytes[at] = value;
        }
        let _ = Namespace::read_snapshot(&bytes);
        let _ = Namespace::read_snapshot(&bytes[..cut.index(bytes.len() + 1)]);
    }
}

//! Fuzz targets: every decoder that reads what another process or a disk wrote, fed arbitrary
//! bytes. Each target is a plain function of the input that panics when a promise breaks; the
//! harness in `fuzz/` (afl.rs, coverage-guided) runs them, and `cargo test` replays the
//! committed corpus and every regression through them (`fuzz/corpus/<target>/`, test
//! `fuzz_corpus_replays`).
//!
//! What each target promises, beyond "no panic, no allocation the input did not pay for":
//! - `frames`: chunk frames as they arrive (header first, then data) assemble into at most
//!   what the header announced, and a chunk that assembles comes apart and together again the
//!   same.
//! - `messages`: every request and reply of every service decodes or is refused; what decodes
//!   encodes and decodes back the same; a metadata request's paths are weighed without panic.
//! - `chunk_file`: chunk files of every format version (v1; v2 standalone and chained): a file
//!   that decodes re-encodes to one that decodes the same.
//! - `snapshot`: the namespace's binary snapshot form, and a whole snapshot file past its
//!   checksum: what reads writes back and reads the same.
//! - `raft_log`: Raft log entries, append and vote requests, and commands, as they travel and
//!   are stored (JSON): a command that decodes is applied to a namespace without panic, and the
//!   namespace still round-trips through its snapshot form.
//! - `paths`: path normalization is idempotent and yields only absolute paths without `.`,
//!   `..` or empty components; a chunk file name that parses names a file under the data dir;
//!   a snapshot id names a file in the snapshots dir; trash names round-trip.
//! - `tokens`: no string but the token the cluster made passes as it.

use std::path::{Component, Path};

use bytes::Bytes;
use prost::Message;
use sha2::Digest;

use crate::auth::{Grant, Guard, Want};
use crate::chunk_store::{self, ChunkLayout};
use crate::namespace::{self, normalize_path, Command, Namespace};
use crate::proto;
use crate::rpc::{self, RpcError};
use crate::tokens::{TokenKey, TokenRecord, TokenTable};

/// A fuzz target: panics when a promise breaks.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz/` builds them and the corpus replay runs them.
pub const TARGETS: &[(&str, Target)] = &[
    ("frames", frames),
    ("messages", messages),
    ("chunk_file", chunk_file),
    ("snapshot", snapshot),
    ("raft_log", raft_log),
    ("paths", paths),
    ("tokens", tokens),
];

/// Splits `data` into at most `max` pieces, each a 2-byte little-endian length and that many
/// bytes (fewer at the end).
fn pieces(mut data: &[u8], max: usize) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while data.len() >= 2 && out.len() < max {
        let len = usize::from(u16::from_le_bytes([data[0], data[1]]));
        let (piece, rest) = data[2..].split_at(len.min(data.len() - 2));
        out.push(piece);
        data = rest;
    }
    out
}

pub fn frames(data: &[u8]) {
    let Some((&kind, rest)) = data.split_first() else { return };
    let encoded = pieces(rest, 64);
    if kind & 1 == 0 {
        let frames: Vec<proto::WriteChunkFrame> = encoded.iter().filter_map(|p| proto::WriteChunkFrame::decode(*p).ok()).collect();
        if let Ok(upload) = rpc::assemble_upload(frames) {
            assert_eq!(upload.data.len() as u64, upload.header.size, "assembled bytes differ from the announced size");
            let again = rpc::assemble_upload(rpc::write_frames(upload.clone())).expect("a chunk's own frames assemble");
            assert_eq!(again, upload);
        }
    } else {
        let frames: Vec<proto::ReadChunkFrame> = encoded.iter().filter_map(|p| proto::ReadChunkFrame::decode(*p).ok()).collect();
        if let Ok(download) = rpc::assemble_download(frames) {
            let again = rpc::assemble_download(rpc::read_frames(download.clone())).expect("a chunk's own frames assemble");
            assert_eq!(again, download);
        }
    }
}

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(data: &[u8]) -> Option<M> {
    let m = M::decode(data).ok()?;
    let again = M::decode(m.encode_to_vec().as_slice()).expect("what decoded encodes and decodes");
    assert_eq!(again, m, "a message changed through encoding");
    Some(m)
}

/// A metadata request: round-trips, and what it wants of its caller is weighed (paths
/// normalized, as `admit` does) without panic.
fn guarded<M: Message + Default + PartialEq + std::fmt::Debug + Guard>(data: &[u8]) {
    let Some(m) = round_trip::<M>(data) else { return };
    match m.want() {
        Want::Paths(paths) => {
            for (_, p) in paths {
                let _ = normalize_path(p);
            }
        }
        Want::Open | Want::Cluster(_) | Want::Uploads(_) => {}
    }
}

macro_rules! pick {
    ($selector:expr, $data:expr; guarded: $($g:ident),*; plain: $($p:ident),* $(,)?) => {{
        let all: &[fn(&[u8])] = &[$(guarded::<proto::$g>,)* $(|d| { round_trip::<proto::$p>(d); },)*];
        all[usize::from($selector) % all.len()]($data)
    }};
}

pub fn messages(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else { return };
    let _ = RpcError::decode_detail(rest);
    pick!(selector, rest;
        guarded: CreateFileRequest, CreateFilesRequest, AllocateChunksRequest, RecordChunksRequest, CommitFileRequest,
            CommitFilesRequest, AbortUploadRequest, GetFileRequest, GetFilesRequest, ListFilesRequest, ListDirRequest,
            ListUploadsRequest, DeleteFileRequest, MkdirRequest, RenameRequest, CopyFileRequest, SetReplicationRequest,
            SetAttributesRequest, ClusterStatusRequest, ReportBadReplicaRequest, RegisterStorageRequest, HeartbeatRequest,
            MetaStatusRequest, FsckRequest, ScrubStorageNodeRequest, SetDrainingRequest, ForgetStorageNodeRequest,
            AddMetaMemberRequest, RemoveMetaMemberRequest, ListTokensRequest, RevokeTokenRequest, CreateTokenRequest;
        plain: CreateFileResponse, AllocateChunksResponse, RecordChunksResponse, CommitFileResponse, GetFileResponse,
            CreateFilesResponse, CommitFilesResponse, GetFilesResponse, ListFilesResponse, DeleteFileResponse,
            CopyFileResponse, SetReplicationResponse, SetAttributesResponse, ListUploadsResponse, AbortUploadResponse,
            MkdirResponse, RenameResponse, ListDirResponse, ClusterStatusResponse, SetDrainingResponse,
            ForgetStorageNodeResponse, FsckResponse, RegisterStorageResponse, HeartbeatResponse, ReportBadReplicaResponse,
            ScrubStorageNodeResponse, AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse,
            InstallSnapshotRequest, InstallSnapshotResponse, CampaignRequest, CampaignResponse, WriteChunkFrame,
            WriteChunkResponse, ReadChunkRequest, ReadChunkFrame, WriteChunksRequest, ReplicateChunksRequest,
            WriteChunksResponse, ReadChunksRequest, ReadChunksResponse, AddMetaMemberResponse, RemoveMetaMemberResponse,
            MetaStatusResponse, CreateTokenResponse, ListTokensResponse, RevokeTokenResponse, ErrorDetail,
            // Appended, not among the guarded, so that committed inputs keep their selectors.
            GetS3KeyRequest, GetS3KeyResponse,
    )
}

pub fn chunk_file(data: &[u8]) {
    let _ = chunk_store::header_len(data);
    if let Ok(header) = chunk_store::decode_header(data) {
        let _ = (header.data_offset(), header.file_len());
    }
    if let Ok((meta, bytes)) = chunk_store::decode_file(Bytes::copy_from_slice(data)) {
        let again = chunk_store::decode_file(chunk_store::encode_file(meta, &bytes)).expect("a decoded chunk re-encodes to a valid file");
        assert_eq!(again, (meta, bytes), "a chunk changed through its file");
    }
}

/// Reads the namespace's form; what reads, writes back the same.
fn namespace_round_trip(ns: &Namespace) {
    let mut out = Vec::new();
    ns.write_snapshot(&mut out);
    let again = Namespace::read_snapshot(&out).expect("a namespace written reads back");
    assert!(again == *ns, "a namespace changed through its snapshot form");
}

pub fn snapshot(data: &[u8]) {
    if let Ok(ns) = Namespace::read_snapshot(data) {
        namespace_round_trip(&ns);
    }
    // A whole snapshot file, sealed with its checksum so that the bytes get past it.
    let mut sealed = data.to_vec();
    sealed.extend_from_slice(&sha2::Sha256::digest(data));
    let _ = crate::meta::state_machine::decode_file_bytes(&sealed);
}

type FuzzTypes = crate::meta::types::MetaTypes<openraft::TokioRuntime>;

/// A namespace with a little of everything: nodes, directories, a committed file, an open
/// upload, a token.
fn seeded_namespace() -> Namespace {
    let mut ns = Namespace::default();
    let id = crate::ids::StorageNodeId;
    for n in 1..=3 {
        ns.apply(Command::RegisterStorageNode { node: id(n), addr: format!("127.0.0.1:{n}"), capacity_bytes: 1 << 40, rack: None }).expect("register");
    }
    ns.apply(Command::Mkdir { path: "/a/b".into(), parents: true, unix_ms: 1 }).expect("mkdir");
    let attrs = namespace::FileAttrs::default();
    let empty = Command::CreateEmptyFile {
        path: "/a/e".into(),
        chunk_size: 4 << 20,
        replication: 3,
        overwrite: false,
        expect_file_id: None,
        unix_ms: 2,
        attrs,
        object: None,
    };
    ns.apply(empty).expect("empty file");
    let upload = Command::CreateFile {
        path: "/a/b/u".into(),
        size: 10,
        chunk_size: 4 << 20,
        replication: 2,
        overwrite: false,
        expect_file_id: None,
        request_id: None,
        unix_ms: 3,
        attrs,
    };
    ns.apply(upload).expect("upload");
    let record = TokenRecord { id: 7, name: "t".into(), grant: Grant::Read, prefix: "/a".into(), created_unix_ms: 4, expires_unix_ms: None, s3: false };
    ns.apply(Command::CreateToken { record, key: TokenKey([3; 32]) }).expect("token");
    ns
}

pub fn raft_log(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else { return };
    match selector % 4 {
        0 => {
            let _ = serde_json::from_slice::<openraft::Entry<FuzzTypes>>(rest);
        }
        1 => {
            let _ = serde_json::from_slice::<openraft::raft::AppendEntriesRequest<FuzzTypes>>(rest);
        }
        2 => {
            let _ = serde_json::from_slice::<openraft::raft::VoteRequest<crate::ids::MetaNodeId>>(rest);
        }
        _ => {
            let Ok(command) = serde_json::from_slice::<Command>(rest) else { return };
            let mut ns = seeded_namespace();
            let _ = ns.apply(command);
            namespace_round_trip(&ns);
        }
    }
}

/// No `..`, and nothing but plain names after the root.
fn plain_under(path: &Path, root: &Path) -> bool {
    path.starts_with(root) && path.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

pub fn paths(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(p) = normalize_path(s) {
        assert!(p.starts_with('/'), "{p:?} is not absolute");
        assert_eq!(normalize_path(&p).as_deref(), Ok(p.as_str()), "normalizing {s:?} twice differs");
        if p != "/" {
            assert!(p[1..].split('/').all(|c| !c.is_empty() && c != "." && c != ".."), "{p:?} has an empty, . or .. component");
        }
        assert!(namespace::is_at_or_under(&p, "/"));
    }
    let root = Path::new("/data");
    if let Some(id) = ChunkLayout::parse_chunk_file_name(s) {
        let layout = ChunkLayout::new(root);
        for path in [layout.chunk_path(id), layout.tmp_path(id, 1), layout.corrupt_path(id, 1)] {
            assert!(plain_under(&path, root), "{path:?} leaves {root:?}");
        }
    }
    let incoming = crate::meta::state_machine::incoming_snapshot_path(Path::new("/meta"), s);
    assert_eq!(incoming.parent(), Some(Path::new("/meta/snapshots")), "snapshot id {s:?} names {incoming:?}");
    if namespace::check_user(s).is_ok() {
        let bucket = namespace::trash_bucket(s, 1_796_549_123_456);
        assert_eq!(normalize_path(&bucket).as_deref(), Ok(bucket.as_str()), "trash bucket {bucket:?}");
        let name = bucket.rsplit('/').next().unwrap_or_default();
        assert_eq!(namespace::trash_bucket_unix_ms(name), Some(1_796_549_100_000));
    }
    let _ = namespace::trash_bucket_unix_ms(s);
    let _ = crate::auth::need(s);
}

pub fn tokens(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let mut table = TokenTable::default();
    let record = TokenRecord {
        id: 0x0123_4567_89ab_cdef,
        name: "fuzz".into(),
        grant: Grant::Admin,
        prefix: "/".into(),
        created_unix_ms: 1,
        expires_unix_ms: None,
        s3: false,
    };
    table.create(record.clone(), TokenKey([5; 32])).expect("one token");
    let token = table.token(&record).expect("a key");
    if let Ok(p) = table.authenticate(s, 2) {
        assert_eq!(s.trim(), token, "{s:?} passed as the token");
        assert_eq!(p.name, "fuzz");
    }
    let _ = crate::tokens::check_name(s);
}

/// Starting inputs for each target (the fuzzer's initial corpus, written by
/// `dfs-fuzz seeds`): valid encodings of each kind, so that mutation starts from inputs that
/// get past the first checks.
pub fn seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    use crate::chunk_store::ChunkMeta;
    use crate::ids::Sha256Digest;

    let data = b"seed chunk bytes".repeat(40);
    let sha = Sha256Digest(sha2::Sha256::digest(&data).into());
    let framed = |frames: Vec<Vec<u8>>, kind: u8| {
        let mut out = vec![kind];
        for f in frames {
            out.extend_from_slice(&(f.len() as u16).to_le_bytes());
            out.extend_from_slice(&f);
        }
        out
    };
    let header = proto::WriteChunkHeader { chunk_id: vec![1; 16].into(), size: data.len() as u64, sha256: sha.0.to_vec().into(), ..Default::default() };
    let upload = rpc::ChunkUpload { header: header.clone(), data: Bytes::from(data.clone()) };
    let write = framed(rpc::write_frames(upload).into_iter().map(|f| f.encode_to_vec()).collect(), 0);
    let read_header = proto::ReadChunkHeader { size: data.len() as u64, sha256: sha.0.to_vec().into(), ..Default::default() };
    let download = rpc::ChunkDownload { header: read_header, data: Bytes::from(data.clone()) };
    let read = framed(rpc::read_frames(download).into_iter().map(|f| f.encode_to_vec()).collect(), 1);

    let with_selector = |selector: u8, bytes: Vec<u8>| {
        let mut out = vec![selector];
        out.extend(bytes);
        out
    };
    let messages = vec![
        with_selector(0, proto::CreateFileRequest { path: "/a/b".into(), size: 10, replication: 3, ..Default::default() }.encode_to_vec()),
        with_selector(15, proto::RenameRequest { src: "/a".into(), dst: "/b".into(), ..Default::default() }.encode_to_vec()),
        with_selector(31, proto::CreateTokenRequest { name: "n".into(), role: "read".into(), prefix: "/p".into(), ttl_ms: 5, s3: false }.encode_to_vec()),
        with_selector(32 + 58, proto::WriteChunksRequest::default().encode_to_vec()),
        with_selector(32 + 4, proto::GetFileResponse::default().encode_to_vec()),
        RpcError::NotLeader { leader: Some(proto::MetaNode { id: 2, addr: "h:1".into() }) }.encode_detail().to_vec(),
    ];

    let meta = ChunkMeta::standalone(data.len() as u64, sha);
    // A chained chunk: the middle of a file, a whole number of SHA-256 blocks.
    let blocks = &data[..data.len() / 64 * 64];
    let chain = crate::chain::Chain { before: Sha256Digest::of(b"previous chunk"), offset: 64 * 1024, last: false };
    let chained = ChunkMeta { size: blocks.len() as u64, sha256: crate::chain::checksum(blocks, Some(&chain)), chain: Some(chain) };
    let chunk_files = vec![
        chunk_store::encode_file(meta, &data).to_vec(),
        chunk_store::encode_file_v1(meta, &data).to_vec(),
        chunk_store::encode_file(chained, blocks).to_vec(),
    ];

    let ns = seeded_namespace();
    let mut snapshot = Vec::new();
    ns.write_snapshot(&mut snapshot);

    let commands = [
        Command::Rename { src: "/a/b".into(), dst: "/c".into(), unix_ms: 9 },
        Command::Delete { path: "/a".into(), recursive: true, expect_file_id: None },
        Command::RevokeToken { id: 7 },
    ];
    let raft = commands.iter().map(|c| with_selector(3, serde_json::to_vec(c).expect("command json"))).collect();

    let table = {
        let mut t = TokenTable::default();
        let record = TokenRecord {
            id: 0x0123_4567_89ab_cdef,
            name: "fuzz".into(),
            grant: Grant::Admin,
            prefix: "/".into(),
            created_unix_ms: 1,
            expires_unix_ms: None,
            s3: false,
        };
        t.create(record.clone(), TokenKey([5; 32])).expect("one token");
        t.token(&record).expect("a key")
    };

    vec![
        ("frames", vec![write, read]),
        ("messages", messages),
        ("chunk_file", chunk_files),
        ("snapshot", vec![snapshot]),
        ("raft_log", raft),
        (
            "paths",
            ["/a/b/../c", "//x//y/", "0123456789abcdef0123456789abcdef.chunk", "alice", "2026-12-06T09:31:00Z.3"].map(|s| s.as_bytes().to_vec()).to_vec(),
        ),
        ("tokens", vec![table.into_bytes(), b"dfs1_0123456789abcdef_00".to_vec()]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The targets hold on their seeds and on nothing at all.
    #[test]
    fn targets_take_their_seeds() {
        for (name, seeds) in seeds() {
            let (_, target) = TARGETS.iter().find(|(n, _)| *n == name).expect("a target");
            target(&[]);
            for seed in seeds {
                target(&seed);
            }
        }
    }
}

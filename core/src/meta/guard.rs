//! What each metadata request asks of its caller as a user (`crate::auth::Guard`): the grant,
//! and the paths or uploads it reaches. Conversion only; `auth::permit` decides, and the
//! metadata node's `admit` applies it. Every `MetadataService` request has its line here: the
//! generated dispatch does not compile for a request without one.

use crate::auth::{Grant, Guard, Want};
use crate::limits::BATCH_FILES_MAX;
use crate::namespace::ROOT;
use crate::proto;

/// The items of a batch that are weighed: no more than a batch may hold. A longer batch is
/// refused whole by its handler, so the items beyond reach nothing; weighing them would be
/// work (and a list) as long as the message.
fn weighed<T>(items: &[T]) -> impl Iterator<Item = &T> {
    items.iter().take(BATCH_FILES_MAX)
}

/// A listing's directory: empty (or only slashes) is the root.
fn or_root(path: &str) -> &str {
    if path.trim_matches('/').is_empty() {
        ROOT
    } else {
        path
    }
}

macro_rules! guard {
    ($($request:ident => |$r:ident| $want:expr;)*) => {
        $(impl Guard for proto::$request {
            fn want(&self) -> Want<'_> {
                let $r = self;
                $want
            }
        })*
    };
}

guard! {
    CreateFileRequest => |r| Want::Paths(vec![(Grant::Write, &r.path)]);
    CreateFilesRequest => |r| Want::Paths(weighed(&r.files).map(|f| (Grant::Write, f.path.as_str())).collect());
    AllocateChunksRequest => |r| Want::Uploads(vec![r.file_id]);
    RecordChunksRequest => |r| Want::Uploads(vec![r.file_id]);
    CommitFileRequest => |r| Want::Uploads(vec![r.file_id]);
    CommitFilesRequest => |r| Want::Uploads(weighed(&r.files).map(|f| f.file_id).collect());
    AbortUploadRequest => |r| Want::Uploads(vec![r.file_id]);
    GetFileRequest => |r| Want::Paths(vec![(Grant::Read, &r.path)]);
    GetFilesRequest => |r| Want::Paths(weighed(&r.files).map(|f| (Grant::Read, f.path.as_str())).collect());
    ListFilesRequest => |r| Want::Paths(vec![(Grant::Read, or_root(&r.prefix))]);
    ListDirRequest => |r| Want::Paths(vec![(Grant::Read, or_root(&r.path))]);
    ListUploadsRequest => |r| Want::Paths(vec![(Grant::Read, or_root(&r.prefix))]);
    DeleteFileRequest => |r| Want::Paths(vec![(Grant::Write, &r.path)]);
    MkdirRequest => |r| Want::Paths(vec![(Grant::Write, &r.path)]);
    RenameRequest => |r| Want::Paths(vec![(Grant::Write, &r.src), (Grant::Write, &r.dst)]);
    // A joined copy's sources beyond the most it may join are refused whole by the handler.
    CopyFileRequest => |r| {
        let sources = std::iter::once(&r.src).chain(r.append.iter().take(crate::namespace::COPY_APPEND_MAX));
        Want::Paths(std::iter::once((Grant::Write, r.dst.as_str())).chain(sources.map(|p| (Grant::Read, p.as_str()))).collect())
    };
    SetReplicationRequest => |r| Want::Paths(vec![(Grant::Write, &r.path)]);
    SetAttributesRequest => |r| Want::Paths(vec![(Grant::Write, &r.path)]);
    // The cluster's state: nodes, capacity, counts.
    ClusterStatusRequest => |_r| Want::Cluster(Grant::Read);
    // A reader (or a storage node) that found a replica corrupt.
    ReportBadReplicaRequest => |_r| Want::Cluster(Grant::Read);
    // A storage node's own traffic: its certificate's role was checked before decoding.
    RegisterStorageRequest => |_r| Want::Open;
    HeartbeatRequest => |_r| Want::Open;
    // A node's own Raft status, which any member answers (`dfs admin meta status`).
    MetaStatusRequest => |_r| Want::Open;
    // Administration.
    FsckRequest => |_r| Want::Cluster(Grant::Admin);
    ScrubStorageNodeRequest => |_r| Want::Cluster(Grant::Admin);
    SetDrainingRequest => |_r| Want::Cluster(Grant::Admin);
    ForgetStorageNodeRequest => |_r| Want::Cluster(Grant::Admin);
    AddMetaMemberRequest => |_r| Want::Cluster(Grant::Admin);
    RemoveMetaMemberRequest => |_r| Want::Cluster(Grant::Admin);
    ListTokensRequest => |_r| Want::Cluster(Grant::Admin);
    GetS3KeyRequest => |_r| Want::Cluster(Grant::Admin);
    RevokeTokenRequest => |_r| Want::Cluster(Grant::Admin);
    // An admin makes tokens only within its own prefix: one reaching /home cannot make one
    // reaching /.
    CreateTokenRequest => |r| Want::Paths(vec![(Grant::Admin, or_root(&r.prefix))]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_of_nothing_are_of_the_root_and_moves_reach_both_ends() {
        assert_eq!(proto::ListDirRequest::default().want(), Want::Paths(vec![(Grant::Read, "/")]));
        assert_eq!(proto::ListFilesRequest { prefix: "//".into(), ..Default::default() }.want(), Want::Paths(vec![(Grant::Read, "/")]));
        let r = proto::RenameRequest { src: "/a".into(), dst: "/b".into(), ..Default::default() };
        assert_eq!(r.want(), Want::Paths(vec![(Grant::Write, "/a"), (Grant::Write, "/b")]));
        let r = proto::CopyFileRequest { src: "/a".into(), dst: "/b".into(), append: vec!["/c".into()], ..Default::default() };
        assert_eq!(r.want(), Want::Paths(vec![(Grant::Write, "/b"), (Grant::Read, "/a"), (Grant::Read, "/c")]));
        let r = proto::CommitFilesRequest { files: vec![proto::CommitFileRequest { file_id: 4, ..Default::default() }] };
        assert_eq!(r.want(), Want::Uploads(vec![4]));
        assert_eq!(proto::FsckRequest::default().want(), Want::Cluster(Grant::Admin));
        assert_eq!(proto::CreateTokenRequest::default().want(), Want::Paths(vec![(Grant::Admin, "/")]));
    }

    #[test]
    fn a_batch_is_weighed_no_further_than_a_batch_may_hold() {
        let files = vec![proto::CreateFileRequest { path: "/a".into(), ..Default::default() }; BATCH_FILES_MAX * 100];
        let request = proto::CreateFilesRequest { files };
        let Want::Paths(paths) = request.want() else { panic!("a create weighs paths") };
        assert_eq!(paths.len(), BATCH_FILES_MAX);
        let files = vec![proto::GetFileRequest { path: "/a".into() }; BATCH_FILES_MAX + 1];
        let request = proto::GetFilesRequest { files };
        let Want::Paths(paths) = request.want() else { panic!("a get weighs paths") };
        assert_eq!(paths.len(), BATCH_FILES_MAX);
        let files = vec![proto::CommitFileRequest::default(); BATCH_FILES_MAX + 1];
        let request = proto::CommitFilesRequest { files };
        let Want::Uploads(ids) = request.want() else { panic!("a commit weighs uploads") };
        assert_eq!(ids.len(), BATCH_FILES_MAX);
    }
}

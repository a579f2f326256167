//! What each metadata request asks of its caller as a user (`crate::auth::Guard`): the grant,
//! and the paths or uploads it reaches. Conversion only; `auth::permit` decides, and the
//! metadata node's `admit` applies it. Every `MetadataService` request has its line here: the
//! generated dispatch does not compile for a request without one.

use crate::auth::{Grant, Guard, Want};
use crate::namespace::ROOT;
use crate::proto;

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
    CreateFilesRequest => |r| Want::Paths(r.files.iter().map(|f| (Grant::Write, f.path.as_str())).collect());
    AllocateChunksRequest => |r| Want::Uploads(vec![r.file_id]);
    RecordChunksRequest => |r| Want::Uploads(vec![r.file_id]);
    CommitFileRequest => |r| Want::Uploads(vec![r.file_id]);
    CommitFilesRequest => |r| Want::Uploads(r.files.iter().map(|f| f.file_id).collect());
    AbortUploadRequest => |r| Want::Uploads(vec![r.file_id]);
    GetFileRequest => |r| Want::Paths(vec![(Grant::Read, &r.path)]);
    GetFilesRequest => |r| Want::Paths(r.files.iter().map(|f| (Grant::Read, f.path.as_str())).collect());
    ListFilesRequest => |r| Want::Paths(vec![(Grant::Read, or_root(&r.prefix))]);
    ListDirRequest => |r| Want::Paths(vec![(Grant::Read, or_root(&r.path))]);
    ListUploadsRequest => |r| Want::Paths(vec![(Grant::Read, or_root(&r.prefix))]);
    DeleteFileRequest => |r| Want::Paths(vec![(Grant::Write, &r.path)]);
    MkdirRequest => |r| Want::Paths(vec![(Grant::Write, &r.path)]);
    RenameRequest => |r| Want::Paths(vec![(Grant::Write, &r.src), (Grant::Write, &r.dst)]);
    CopyFileRequest => |r| Want::Paths(vec![(Grant::Read, &r.src), (Grant::Write, &r.dst)]);
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
        let r = proto::CopyFileRequest { src: "/a".into(), dst: "/b".into(), ..Default::default() };
        assert_eq!(r.want(), Want::Paths(vec![(Grant::Read, "/a"), (Grant::Write, "/b")]));
        let r = proto::CommitFilesRequest { files: vec![proto::CommitFileRequest { file_id: 4, ..Default::default() }] };
        assert_eq!(r.want(), Want::Uploads(vec![4]));
        assert_eq!(proto::FsckRequest::default().want(), Want::Cluster(Grant::Admin));
        assert_eq!(proto::CreateTokenRequest::default().want(), Want::Paths(vec![(Grant::Admin, "/")]));
    }
}

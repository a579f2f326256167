//! Resuming `dfs put -r`: which files of a tree an interrupted run already uploaded.
//!
//! ## What it promises
//! - A rerun with the same arguments (same local root, remote prefix, cluster, chunk size,
//!   replication, `--force`) skips every file the manifest lists as committed, if the local
//!   file's stamp (length, modification time) is unchanged and the remote path still holds
//!   the file that run committed (same file id). Nothing else is trusted.
//! - A file the earlier run committed and that changed locally since is replaced (the earlier
//!   run's copy is the user's own, stale); a file at the remote path that the manifest does
//!   not list is compared by size and whole-file SHA-256 before it counts as uploaded (a run
//!   killed between a commit and the manifest's append); anything else is uploaded as a
//!   fresh run would.
//! - Large files inside the tree resume chunk by chunk through their own manifests
//!   (`resume.rs`); this one only records whole files.
//!
//! ## What it does not promise
//! - The manifest is appended without fsync: a power cut may forget files committed just
//!   before it, which a rerun then verifies by SHA-256 (see above) instead of skipping.
//!
//! ## How it is driven
//! Pure: the driver (`dfs put -r`) reads the manifest file, calls `parse`, asks `decide` for
//! each local file with what the remote tree holds, appends `done_line` for each committed
//! file, and removes the manifest once every file is up.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::env::FileStamp;
use crate::ids::Sha256Digest;

const TREE_MANIFEST_VERSION: u32 = 1;
/// A manifest larger than this is not read (about ten million files).
pub const TREE_MANIFEST_MAX_BYTES: u64 = 1 << 30;

/// What identifies a tree upload: all of it must match for a rerun to resume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeKey {
    /// The local root, absolute.
    pub local_root: String,
    pub remote_prefix: String,
    pub cluster: String,
    pub chunk_size: u64,
    pub replication: u32,
    pub overwrite: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    version: u32,
    key: TreeKey,
}

/// One committed file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeDone {
    /// The remote path it was committed at.
    pub remote: String,
    pub stamp: FileStamp,
    pub file_id: u64,
}

/// What an earlier run of the same tree upload committed, by remote path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TreeProgress {
    done: BTreeMap<String, TreeDone>,
}

/// What the remote path of a local file holds now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteFile {
    pub file_id: u64,
    pub size: u64,
    pub sha256: Option<Sha256Digest>,
}

/// What to do with one local file of the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Uploaded by the earlier run and unchanged: skip it.
    Skip,
    /// Uploaded by the earlier run, changed locally since: upload it, replacing that copy.
    Replace,
    /// Something is at the remote path that the manifest does not list, with this size and
    /// digest: skip it if the local file has the same bytes, else upload as usual.
    Verify { size: u64, sha256: Sha256Digest },
    /// Upload as a fresh run would.
    Upload,
}

/// The manifest's file name for `key`: a digest of the tree's identity (without the chunk
/// size, replication and `--force`, so a rerun with other options replaces the manifest).
pub fn manifest_name(key: &TreeKey) -> String {
    let identity = format!("tree\n{}\n{}\n{}", key.local_root, key.remote_prefix, key.cluster);
    format!("{}.tree", &Sha256Digest::of(identity.as_bytes()).to_string()[..32])
}

/// The manifest's first line.
pub fn header_line(key: &TreeKey) -> Vec<u8> {
    let mut line = serde_json::to_vec(&Header { version: TREE_MANIFEST_VERSION, key: key.clone() }).expect("a header serializes");
    line.push(b'\n');
    line
}

/// The line recording one committed file.
pub fn done_line(done: &TreeDone) -> Vec<u8> {
    let mut line = serde_json::to_vec(done).expect("a line serializes");
    line.push(b'\n');
    line
}

/// The earlier run's progress, if `bytes` is a manifest of exactly this tree upload. Lines
/// that do not parse (one torn by a kill) are skipped; the others stand.
pub fn parse(bytes: &[u8], key: &TreeKey) -> Option<TreeProgress> {
    if bytes.len() as u64 > TREE_MANIFEST_MAX_BYTES {
        return None;
    }
    let mut lines = bytes.split(|b| *b == b'\n');
    let header: Header = serde_json::from_slice(lines.next()?).ok()?;
    if header.version != TREE_MANIFEST_VERSION || header.key != *key {
        return None;
    }
    let done = lines.filter_map(|l| serde_json::from_slice::<TreeDone>(l).ok()).map(|d| (d.remote.clone(), d)).collect();
    Some(TreeProgress { done })
}

impl TreeProgress {
    /// Files the earlier run committed.
    pub fn len(&self) -> usize {
        self.done.len()
    }

    pub fn is_empty(&self) -> bool {
        self.done.is_empty()
    }

    /// What to do with the local file of `stamp` bound for `remote`, which now holds
    /// `existing`.
    pub fn decide(&self, remote: &str, stamp: FileStamp, existing: Option<&RemoteFile>) -> Decision {
        let earlier = self.done.get(remote);
        match (earlier, existing) {
            (Some(d), Some(e)) if d.file_id == e.file_id && d.stamp == stamp => Decision::Skip,
            (Some(d), Some(e)) if d.file_id == e.file_id => Decision::Replace,
            (_, Some(RemoteFile { size, sha256: Some(sha256), .. })) => Decision::Verify { size: *size, sha256: *sha256 },
            _ => Decision::Upload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TreeKey {
        TreeKey {
            local_root: "/home/u/photos".into(),
            remote_prefix: "/p".into(),
            cluster: "127.0.0.1:7000".into(),
            chunk_size: 4 << 20,
            replication: 3,
            overwrite: false,
        }
    }

    fn stamp(len: u64, modified: u64) -> FileStamp {
        FileStamp { len, modified }
    }

    fn remote(file_id: u64) -> RemoteFile {
        RemoteFile { file_id, size: 10, sha256: Some(Sha256Digest([7; 32])) }
    }

    #[test]
    fn a_rerun_skips_only_what_it_can_prove_was_uploaded() {
        let mut bytes = header_line(&key());
        bytes.extend(done_line(&TreeDone { remote: "/p/a".into(), stamp: stamp(10, 1), file_id: 5 }));
        bytes.extend(done_line(&TreeDone { remote: "/p/b".into(), stamp: stamp(10, 1), file_id: 6 }));
        bytes.extend(b"{\"remote\":\"/p/c\",\"sta"); // torn by a kill
        let progress = parse(&bytes, &key()).expect("same key");
        assert_eq!(progress.len(), 2);
        // Unchanged and still there: skipped.
        assert_eq!(progress.decide("/p/a", stamp(10, 1), Some(&remote(5))), Decision::Skip);
        // Changed locally since: replaced.
        assert_eq!(progress.decide("/p/a", stamp(11, 2), Some(&remote(5))), Decision::Replace);
        // Someone replaced the remote file since: not ours, compared like any stranger.
        assert_eq!(progress.decide("/p/b", stamp(10, 1), Some(&remote(9))), Decision::Verify { size: 10, sha256: Sha256Digest([7; 32]) });
        // Deleted remotely since: uploaded again.
        assert_eq!(progress.decide("/p/b", stamp(10, 1), None), Decision::Upload);
        // The torn line counts for nothing.
        assert_eq!(progress.decide("/p/c", stamp(10, 1), None), Decision::Upload);
    }

    #[test]
    fn another_upload_or_a_damaged_manifest_resumes_nothing() {
        let bytes = header_line(&key());
        let other = TreeKey { replication: 2, ..key() };
        assert_eq!(parse(&bytes, &other), None);
        assert_eq!(parse(b"not json\n", &key()), None);
        assert_eq!(parse(b"", &key()), None);
        // Options are not part of the name: a rerun with others replaces the manifest.
        assert_eq!(manifest_name(&key()), manifest_name(&other));
        assert_ne!(manifest_name(&key()), manifest_name(&TreeKey { remote_prefix: "/q".into(), ..key() }));
    }
}

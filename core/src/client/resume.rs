//! Resume manifests: what an interrupted `put` had stored, so that a rerun with the same
//! arguments sends only the rest.
//!
//! One file per (source, remote path, cluster) in the client's state directory: a JSON header
//! line (what the upload was, the file id metadata gave it), then one JSON line per chunk
//! stored on a write quorum. Lines are appended as chunks complete and never fsynced: a killed
//! process loses nothing the kernel has, and a power cut at worst costs resending a few chunks.
//! A torn last line is ignored. The file is removed when the upload commits, or when it can no
//! longer be resumed (the source changed, metadata forgot the upload).
//!
//! A manifest is trusted only if its header matches the rerun exactly, including the source
//! file's length and modification time; the upload machine also re-reads and re-hashes every
//! chunk it skips, so a source changed behind an unchanged stamp is still caught.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::env::{Disk, FileStamp};
use crate::ids::{FileId, Sha256Digest};

use super::upload::StoredChunk;

const MANIFEST_VERSION: u32 = 1;
/// A manifest larger than this is not read (a file of 2^32 chunks would need ~600 GB).
const MANIFEST_MAX_BYTES: u64 = 1 << 30;

/// What identifies an upload for resuming: all of it must match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadKey {
    pub source: String,
    pub remote: String,
    pub cluster: String,
    pub stamp: FileStamp,
    pub chunk_size: u64,
    pub replication: u32,
    pub overwrite: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    version: u32,
    key: UploadKey,
    file_id: u64,
}

/// The manifest of one upload in progress, open for appending.
pub struct Manifest<D: Disk> {
    disk: D,
    path: PathBuf,
    /// Where the next line goes.
    len: u64,
}

/// The manifest's file name for `key`: a digest of everything but the stamp, so a changed
/// source finds (and replaces) the old manifest.
pub fn manifest_path(dir: &Path, key: &UploadKey) -> PathBuf {
    let identity = format!("{}\n{}\n{}", key.source, key.remote, key.cluster);
    let digest = Sha256Digest::of(identity.as_bytes()).to_string();
    dir.join(format!("{}.upload", &digest[..32]))
}

/// The resumable state for `key`, if a manifest for exactly this upload exists, with the
/// manifest open for appending.
pub async fn load<D: Disk>(disk: &D, path: &Path, key: &UploadKey) -> Option<(FileId, Vec<StoredChunk>, Manifest<D>)> {
    let len = disk.file_len(path).await.ok()?;
    if len > MANIFEST_MAX_BYTES {
        return None;
    }
    let bytes = disk.read_file(path).await.ok()?;
    let mut lines = bytes.split(|b| *b == b'\n');
    let header: Header = serde_json::from_slice(lines.next()?).ok()?;
    if header.version != MANIFEST_VERSION || header.key != *key || header.file_id == 0 {
        return None;
    }
    // A line cut short by a kill ends the list; what came before it stands.
    let stored = lines.map_while(|line| serde_json::from_slice::<StoredChunk>(line).ok()).collect();
    // Appends go after the last whole line: a torn one is overwritten.
    let len = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i as u64 + 1);
    Some((FileId(header.file_id), stored, Manifest { disk: disk.clone(), path: path.to_path_buf(), len }))
}

impl<D: Disk> Manifest<D> {
    /// Starts a manifest for a new upload, replacing any older one at `path`.
    pub async fn create(disk: D, path: PathBuf, key: UploadKey, file: FileId) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            disk.create_dir_all(dir).await?;
        }
        let mut line = serde_json::to_vec(&Header { version: MANIFEST_VERSION, key, file_id: file.0 }).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let len = line.len() as u64;
        disk.write_file(&path, Bytes::from(line)).await?;
        Ok(Manifest { disk, path, len })
    }

    pub async fn append(&mut self, chunk: &StoredChunk) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(chunk).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let n = line.len() as u64;
        self.disk.write_at(&self.path, self.len, Bytes::from(line)).await?;
        self.len += n;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Removes the manifest at `path`, if any.
pub async fn remove<D: Disk>(disk: &D, path: &Path) {
    match disk.remove_file(path).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "could not remove the resume manifest"),
    }
}

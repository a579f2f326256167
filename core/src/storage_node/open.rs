//! Opening a storage node's data dir: its id, and the chunk table rebuilt from the chunk
//! files' headers.

use super::*;

impl<E: Env> StorageNode<E> {
    pub(super) async fn load_or_create_id(env: &E, root: &Path) -> Result<StorageNodeId, StorageOpenError> {
        let disk = env.disk();
        let path = root.join(NODE_ID_FILE);
        match disk.read_file(&path).await {
            Ok(bytes) => {
                let content = String::from_utf8_lossy(&bytes).trim().to_string();
                u64::from_str_radix(&content, 16).ok().filter(|id| *id != 0).map(StorageNodeId).ok_or(StorageOpenError::BadNodeId { path, content })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = StorageNodeId(env.random_u64().max(1));
                let tmp = root.join(format!("{NODE_ID_FILE}.tmp"));
                disk.write_file(&tmp, format!("{id}\n").into()).await.map_err(io_error(&tmp))?;
                disk.sync_file(&tmp).await.map_err(io_error(&tmp))?;
                disk.rename(&tmp, &path).await.map_err(io_error(&path))?;
                disk.sync_dir(root).await.map_err(io_error(root))?;
                Ok(id)
            }
            Err(e) => Err(StorageOpenError::Io { path, source: e }),
        }
    }

    /// Rebuilds the table from chunk file headers. A file whose header is unreadable or whose
    /// length disagrees with it is not served, and returned with why: `open` moves it to
    /// `corrupt/` (never deleted: it may be all that is left of a chunk; but not left among
    /// the chunks either, where no report or inventory would ever name it).
    pub(super) async fn scan_chunks(disk: &E::Disk, layout: &ChunkLayout) -> Result<(ChunkTable, Vec<(ChunkId, String)>), StorageOpenError> {
        let mut table = ChunkTable::default();
        let mut damaged = Vec::new();
        let chunks = layout.chunks_dir();
        for a in disk.list_dir(&chunks).await.map_err(io_error(&chunks))? {
            if !ChunkLayout::is_shard_name(&a) {
                continue;
            }
            let dir_a = chunks.join(&a);
            for b in disk.list_dir(&dir_a).await.map_err(io_error(&dir_a))? {
                if !ChunkLayout::is_shard_name(&b) {
                    continue;
                }
                let dir_b = dir_a.join(&b);
                for name in disk.list_dir(&dir_b).await.map_err(io_error(&dir_b))? {
                    let Some(id) = ChunkLayout::parse_chunk_file_name(&name) else { continue };
                    let path = dir_b.join(&name);
                    let len = disk.file_len(&path).await.map_err(io_error(&path))?;
                    match read_header(disk, &path).await {
                        Ok(header) if len == header.file_len() => table.insert_stored(id, header.meta),
                        Ok(header) => {
                            tracing::warn!(path = %path.display(), len, expected = header.file_len(), "chunk file has the wrong length; not served");
                            damaged.push((id, format!("found at start-up with {len} bytes instead of {}", header.file_len())));
                        }
                        Err(HeaderError::Damaged(e)) => {
                            tracing::warn!(path = %path.display(), error = %e, "unreadable chunk file; not served");
                            damaged.push((id, format!("found at start-up: {e}")));
                        }
                        Err(HeaderError::Io(e)) => return Err(StorageOpenError::Io { path, source: e }),
                    }
                }
            }
        }
        Ok((table, damaged))
    }
}

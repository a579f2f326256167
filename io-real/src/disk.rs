//! The local filesystem. Every call runs on tokio's blocking pool; `sync_file` and `sync_dir`
//! are real `fsync`s.
//!
//! Bulk data (`DiskStep::WriteBulk`, `Disk::read_bulk_at`: a large chunk's file) bypasses the
//! page cache with `O_DIRECT` where the filesystem allows it, and falls back to buffered I/O
//! where it does not (`EINVAL`: tmpfs before Linux 6.6, some FUSE and network filesystems).
//! Why: each byte a put stores went through a copy into the page cache, half of a storage
//! node's CPU on the benchmark's VM (`perf`: `copy_folio_from_iter_atomic`; there, one
//! buffered `write` of 4 MiB costs about ten times as much as four of 1 MiB), and a chunk
//! file is written once and read seldom: the cache is better left to what is read again.
//! Data already in aligned memory (a `BulkBuf`: a received bulk chunk, whose file format puts
//! the data on a 4 KiB boundary) is written from where it is; anything else is first copied
//! into an aligned `BulkBuf`.

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use dfs_core::bulk_buf::{self, BulkBuf, BULK_ALIGN};

use dfs_core::env::{Disk, DiskStep, FileStamp, LocalEntry, LocalKind, LocalMeta};
use dfs_core::namespace::FileAttrs;

/// `O_DIRECT`'s alignment, of the buffer's address, the file offset and the length.
const DIRECT_ALIGN: usize = BULK_ALIGN;

#[derive(Clone, Debug, Default)]
pub struct RealDisk;

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| io::Error::other(format!("blocking task failed: {e}")))?
}

fn parent_or_dot(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// What changes when a file's contents change: its length and modification time.
fn stamp_of(meta: &fs::Metadata) -> FileStamp {
    let modified = meta.modified().ok().and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_nanos() as u64).unwrap_or(0);
    FileStamp { len: meta.len(), modified }
}

fn local_meta(meta: &fs::Metadata) -> LocalMeta {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mtime_unix_ms = meta.modified().ok().and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_millis() as u64);
    let attrs = FileAttrs { mode: Some(meta.permissions().mode() & dfs_core::namespace::MODE_MAX), mtime_unix_ms };
    LocalMeta { kind: kind_of(meta.file_type()), len: meta.len(), stamp: stamp_of(meta), attrs, identity: (meta.dev(), meta.ino()) }
}

fn kind_of(t: fs::FileType) -> LocalKind {
    if t.is_symlink() {
        LocalKind::Symlink
    } else if t.is_dir() {
        LocalKind::Dir
    } else if t.is_file() {
        LocalKind::File
    } else {
        LocalKind::Other
    }
}

fn owned(path: &Path) -> PathBuf {
    path.to_path_buf()
}

impl Disk for RealDisk {
    /// redb's own file backend: it takes an advisory lock, so a second process opening the same
    /// data dir fails instead of corrupting it.
    type Store = redb::backends::FileBackend;

    fn open_store(&self, path: &Path) -> impl Future<Output = io::Result<Self::Store>> + Send {
        let path = owned(path);
        blocking(move || {
            let existed = path.exists();
            let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
            if !existed {
                // The name of a new store must survive a power cut like its contents.
                File::open(parent_or_dot(&path))?.sync_all()?;
            }
            redb::backends::FileBackend::new(file).map_err(|e| io::Error::other(e.to_string()))
        })
    }

    /// Creates each missing directory and fsyncs the parent of each one it created, top down,
    /// so that what it created survives a power cut (core's drivers also sync what they need,
    /// as the simulated disk, which does not do this, requires).
    fn create_dir_all(&self, dir: &Path) -> impl Future<Output = io::Result<()>> + Send {
        let dir = owned(dir);
        blocking(move || create_dirs(&dir))
    }

    fn write_file(&self, path: &Path, data: Bytes) -> impl Future<Output = io::Result<()>> + Send {
        let path = owned(path);
        blocking(move || File::create(path)?.write_all(&data))
    }

    fn write_at(&self, path: &Path, offset: u64, data: Bytes) -> impl Future<Output = io::Result<()>> + Send {
        let path = owned(path);
        blocking(move || OpenOptions::new().write(true).create(true).truncate(false).open(path)?.write_all_at(&data, offset))
    }

    fn read_file(&self, path: &Path) -> impl Future<Output = io::Result<Bytes>> + Send {
        let path = owned(path);
        blocking(move || fs::read(path).map(Bytes::from))
    }

    fn read_at(&self, path: &Path, offset: u64, len: u64) -> impl Future<Output = io::Result<Bytes>> + Send {
        let path = owned(path);
        blocking(move || read_buffered(&File::open(path)?, offset, len))
    }

    /// The 4 KiB-aligned part with `O_DIRECT` when `offset` is aligned (see the module's doc),
    /// the rest buffered; all of it buffered where the filesystem refuses `O_DIRECT`.
    fn write_bulk_at(&self, path: &Path, offset: u64, data: Bytes) -> impl Future<Output = io::Result<()>> + Send {
        let path = owned(path);
        blocking(move || write_direct_at(&path, offset, &[&data]))
    }

    /// With `O_DIRECT` (see the module's doc), buffered where the filesystem refuses it.
    fn read_bulk_at(&self, path: &Path, offset: u64, len: u64) -> impl Future<Output = io::Result<Bytes>> + Send {
        let path = owned(path);
        blocking(move || read_direct(&path, offset, len))
    }

    fn file_len(&self, path: &Path) -> impl Future<Output = io::Result<u64>> + Send {
        let path = owned(path);
        blocking(move || {
            let meta = fs::metadata(&path)?;
            if meta.is_dir() {
                return Err(io::Error::new(io::ErrorKind::IsADirectory, "is a directory"));
            }
            Ok(meta.len())
        })
    }

    fn stamp(&self, path: &Path) -> impl Future<Output = io::Result<FileStamp>> + Send {
        let path = owned(path);
        blocking(move || {
            let meta = fs::metadata(&path)?;
            if !meta.is_file() {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
            }
            Ok(stamp_of(&meta))
        })
    }

    fn read_entries(&self, dir: &Path) -> impl Future<Output = io::Result<Vec<LocalEntry>>> + Send {
        let dir = owned(dir);
        blocking(move || {
            let mut entries = Vec::new();
            for entry in fs::read_dir(&dir)? {
                let entry = entry?;
                let kind = kind_of(entry.file_type()?);
                // Not following links: for anything but a link, what `inspect` says.
                let meta = match kind {
                    LocalKind::Symlink => None,
                    _ => entry.metadata().ok().map(|m| local_meta(&m)),
                };
                entries.push(LocalEntry { name: entry.file_name(), kind, meta });
            }
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(entries)
        })
    }

    fn inspect(&self, path: &Path) -> impl Future<Output = io::Result<LocalMeta>> + Send {
        let path = owned(path);
        blocking(move || Ok(local_meta(&fs::metadata(&path)?)))
    }

    fn sync_file(&self, path: &Path) -> impl Future<Output = io::Result<()>> + Send {
        let path = owned(path);
        blocking(move || File::open(path)?.sync_all())
    }

    /// `sync_file_range(SYNC_FILE_RANGE_WRITE)`: queues the range for writeback and returns
    /// (it blocks only while the device's queue is full, which paces the writer at disk speed).
    fn start_writeback(&self, path: &Path, offset: u64, len: u64) -> impl Future<Output = io::Result<()>> + Send {
        let path = owned(path);
        blocking(move || {
            use std::os::fd::AsRawFd;
            let file = OpenOptions::new().write(true).open(path)?;
            let (offset, len) = (i64::try_from(offset).map_err(io::Error::other)?, i64::try_from(len).map_err(io::Error::other)?);
            // SAFETY: a valid open descriptor; the call reads no memory of ours.
            let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    }

    fn sync_dir(&self, dir: &Path) -> impl Future<Output = io::Result<()>> + Send {
        let dir = owned(dir);
        blocking(move || File::open(dir)?.sync_all())
    }

    fn sync_all(&self, dir: &Path) -> impl Future<Output = io::Result<()>> + Send {
        let dir = owned(dir);
        blocking(move || sync_fs(&dir))
    }

    fn rename(&self, from: &Path, to: &Path) -> impl Future<Output = io::Result<()>> + Send {
        let (from, to) = (owned(from), owned(to));
        blocking(move || fs::rename(from, to))
    }

    fn remove_file(&self, path: &Path) -> impl Future<Output = io::Result<()>> + Send {
        let path = owned(path);
        blocking(move || fs::remove_file(path))
    }

    fn list_dir(&self, dir: &Path) -> impl Future<Output = io::Result<Vec<String>>> + Send {
        let dir = owned(dir);
        blocking(move || {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
                Err(e) => return Err(e),
            };
            let mut names = Vec::new();
            for entry in entries {
                names.push(entry?.file_name().to_string_lossy().into_owned());
            }
            names.sort();
            Ok(names)
        })
    }

    fn space(&self, dir: &Path) -> impl Future<Output = io::Result<(u64, u64)>> + Send {
        let dir = owned(dir);
        blocking(move || statvfs(&dir))
    }

    fn volume_id(&self, dir: &Path) -> impl Future<Output = io::Result<u64>> + Send {
        use std::os::unix::fs::MetadataExt;
        let dir = owned(dir);
        blocking(move || Ok(fs::metadata(&dir)?.dev()))
    }

    /// All steps in one blocking call, the file a step writes kept open for the steps that
    /// follow (a small chunk's write is one hop to the blocking pool and one open, not five:
    /// the hops, not the disk, limited small writes).
    fn run_steps(&self, steps: Vec<DiskStep>) -> impl Future<Output = io::Result<()>> + Send {
        blocking(move || {
            // The file the last write went to, still open.
            let mut open: Option<(PathBuf, File)> = None;
            for step in steps {
                match step {
                    // The steps sync what must be durable themselves (a chunk write syncs
                    // the parents it needs; a batch flushes the filesystem): no fsync here.
                    DiskStep::CreateDir(dir) => fs::create_dir_all(&dir)?,
                    DiskStep::WriteFile { path, data } => {
                        let mut file = File::create(&path)?;
                        file.write_all(&data)?;
                        open = Some((path, file));
                    }
                    DiskStep::WriteBulk { path, head, data } => {
                        let file = write_bulk(&path, &head, &data)?;
                        open = Some((path, file));
                    }
                    DiskStep::WriteAt { path, offset, data } => {
                        if open.as_ref().is_none_or(|(p, _)| *p != path) {
                            let file = OpenOptions::new().write(true).create(true).truncate(false).open(&path)?;
                            open = Some((path, file));
                        }
                        open.as_ref().expect("opened above").1.write_all_at(&data, offset)?;
                    }
                    DiskStep::SyncFile(path) => match open.as_ref().filter(|(p, _)| *p == path) {
                        Some((_, file)) => file.sync_all()?,
                        None => File::open(&path)?.sync_all()?,
                    },
                    DiskStep::Rename { from, to } => {
                        open = None;
                        fs::rename(from, to)?
                    }
                    DiskStep::SyncDir(dir) => File::open(dir)?.sync_all()?,
                    DiskStep::SyncAll(dir) => sync_fs(&dir)?,
                }
            }
            Ok(())
        })
    }
}

/// Reads into `buf` at `offset` until it is full or the file ends; how many bytes it read.
/// With `direct` (`O_DIRECT`), a count that is not a whole number of blocks ends the file.
fn read_into(file: &File, buf: &mut [u8], offset: u64, direct: bool) -> io::Result<usize> {
    let mut filled = 0usize;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => {
                filled += n;
                if direct && !n.is_multiple_of(DIRECT_ALIGN) {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Reads up to `len` bytes at `offset` through the page cache (fewer only at the end). Bulk
/// reads (a large file's chunk, read to be uploaded) go into a reused `BulkBuf`: a fresh
/// buffer per chunk costs a page fault per 4 KiB.
fn read_buffered(file: &File, offset: u64, len: u64) -> io::Result<Bytes> {
    let len = usize::try_from(len).map_err(io::Error::other)?;
    if bulk_buf::is_bulk(len as u64) {
        let mut buf = BulkBuf::with_capacity(len);
        buf.resize(len, 0);
        let filled = read_into(file, &mut buf, offset, false)?;
        buf.resize(filled, 0);
        return Ok(buf.freeze());
    }
    let mut buf = vec![0u8; len];
    let filled = read_into(file, &mut buf, offset, false)?;
    buf.truncate(filled);
    Ok(Bytes::from(buf))
}

/// Did the kernel refuse `O_DIRECT` (on open: the filesystem has none; on a transfer: an
/// alignment it does not accept)?
fn direct_refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}

/// `read_buffered`, but reading the aligned span around the range with `O_DIRECT` into a
/// `BulkBuf`, and returning the range as a slice of it (no copy).
fn read_direct(path: &Path, offset: u64, len: u64) -> io::Result<Bytes> {
    let file = match OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path) {
        Ok(file) => file,
        Err(e) if direct_refused(&e) => return read_buffered(&File::open(path)?, offset, len),
        Err(e) => return Err(e),
    };
    let align = DIRECT_ALIGN as u64;
    let start = offset / align * align;
    let end = offset.checked_add(len).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "range past u64"))?.next_multiple_of(align);
    let span = usize::try_from(end - start).map_err(io::Error::other)?;
    let mut buf = BulkBuf::with_capacity(span);
    buf.resize(span, 0);
    let filled = match read_into(&file, &mut buf, start, true) {
        Ok(filled) => filled,
        Err(e) if direct_refused(&e) => return read_buffered(&File::open(path)?, offset, len),
        Err(e) => return Err(e),
    };
    let skip = (offset - start) as usize;
    let end = filled.min(skip + len as usize).max(skip);
    Ok(buf.freeze().slice(skip..end))
}

/// `parts`, one after the other, at `offset` of `path` (created if absent), through the cache.
fn write_buffered_at(path: &Path, mut offset: u64, parts: &[&[u8]]) -> io::Result<()> {
    let file = OpenOptions::new().write(true).create(true).truncate(false).open(path)?;
    for part in parts {
        file.write_all_at(part, offset)?;
        offset += part.len() as u64;
    }
    Ok(())
}

/// `parts`, one after the other, at `offset` of `path` (created if absent): their whole 4 KiB
/// blocks with `O_DIRECT` when `offset` is aligned, the remainder (and everything, when
/// `offset` is not aligned or the filesystem refuses) through the cache. A part in aligned
/// memory (a `BulkBuf`, as a received bulk chunk is) at an aligned position is written from
/// where it is; others are copied into an aligned buffer first.
fn write_direct_at(path: &Path, offset: u64, parts: &[&[u8]]) -> io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if !offset.is_multiple_of(DIRECT_ALIGN as u64) || len < DIRECT_ALIGN {
        return write_buffered_at(path, offset, parts);
    }
    let file = match OpenOptions::new().write(true).create(true).truncate(false).custom_flags(libc::O_DIRECT).open(path) {
        Ok(file) => file,
        Err(e) if direct_refused(&e) => return write_buffered_at(path, offset, parts),
        Err(e) => return Err(e),
    };
    match write_parts_direct(&file, path, offset, parts) {
        // The same bytes again, through the cache, over whatever was written directly.
        Err(e) if direct_refused(&e) => write_buffered_at(path, offset, parts),
        written => written,
    }
}

/// `write_direct_at`'s work, on `file` opened with `O_DIRECT`, `offset` aligned.
fn write_parts_direct(file: &File, path: &Path, offset: u64, parts: &[&[u8]]) -> io::Result<()> {
    // Invariant: `pos` (where `staged`, then the next part, go) is aligned.
    let mut pos = offset;
    let mut staged: Option<BulkBuf> = None;
    for (i, part) in parts.iter().enumerate() {
        let mut part: &[u8] = part;
        if staged.as_ref().is_none_or(|s| s.is_empty()) && bulk_buf::is_aligned(part) {
            let blocks = part.len() / DIRECT_ALIGN * DIRECT_ALIGN;
            file.write_all_at(&part[..blocks], pos)?;
            pos += blocks as u64;
            part = &part[blocks..];
        }
        if part.is_empty() {
            continue;
        }
        let stage = staged.get_or_insert_with(|| BulkBuf::with_capacity(part.len() + parts[i + 1..].iter().map(|p| p.len()).sum::<usize>()));
        stage.extend_from_slice(part);
        if stage.len().is_multiple_of(DIRECT_ALIGN) {
            file.write_all_at(stage, pos)?;
            pos += stage.len() as u64;
            stage.resize(0, 0);
        }
    }
    if let Some(stage) = staged {
        let blocks = stage.len() / DIRECT_ALIGN * DIRECT_ALIGN;
        file.write_all_at(&stage[..blocks], pos)?;
        if blocks < stage.len() {
            write_buffered_at(path, pos + blocks as u64, &[&stage[blocks..]])?;
        }
    }
    Ok(())
}

/// Creates (or truncates) `path` holding `head` then `data`, written as `write_direct_at`
/// writes. Returns the open file for the steps that follow.
fn write_bulk(path: &Path, head: &[u8], data: &[u8]) -> io::Result<File> {
    let file = File::create(path)?;
    write_direct_at(path, 0, &[head, data])?;
    Ok(file)
}

/// `create_dir_all`, fsyncing the parent of each directory it creates (see the trait method).
fn create_dirs(dir: &Path) -> io::Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|a| !a.as_os_str().is_empty() && !a.is_dir()).collect();
    for new in missing.iter().rev() {
        match fs::create_dir(new) {
            Ok(()) => File::open(parent_or_dot(new))?.sync_all()?,
            // Created meanwhile by someone else, who syncs it.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && new.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// (capacity, available to unprivileged users) of the filesystem holding `dir`.
fn statvfs(dir: &Path) -> io::Result<(u64, u64)> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c_path = CString::new(dir.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` a valid out-pointer.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let block = stat.f_frsize as u64;
    Ok((stat.f_blocks as u64 * block, stat.f_bavail as u64 * block))
}

/// `syncfs(2)` on the filesystem holding `dir`: flushes every dirty page and inode of it and
/// commits its journal, once. Since Linux 5.8 it reports writeback errors of the filesystem.
fn sync_fs(dir: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let file = File::open(dir)?;
    // SAFETY: the descriptor is valid for the call (owned by `file`).
    let rc = unsafe { libc::syncfs(file.as_raw_fd()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn files_round_trip_on_the_real_disk() {
        let dir = std::env::temp_dir().join(format!("dfs-realdisk-{}", std::process::id()));
        let disk = RealDisk;
        disk.create_dir_all(&dir.join("a/b")).await.unwrap();
        disk.create_dir_all(&dir.join("a/b")).await.unwrap();
        assert_eq!(disk.list_dir(&dir.join("a")).await.unwrap(), vec!["b".to_string()]);
        std::fs::remove_dir_all(dir.join("a")).unwrap();
        let f = dir.join("f");
        disk.write_file(&f, Bytes::from_static(b"hello")).await.unwrap();
        disk.write_at(&f, 10, Bytes::from_static(b"world")).await.unwrap();
        disk.sync_file(&f).await.unwrap();
        assert_eq!(disk.file_len(&f).await.unwrap(), 15);
        assert_eq!(&disk.read_at(&f, 10, 100).await.unwrap()[..], b"world");
        disk.rename(&f, &dir.join("g")).await.unwrap();
        disk.sync_dir(&dir).await.unwrap();
        assert_eq!(disk.list_dir(&dir).await.unwrap(), vec!["g".to_string()]);
        assert!(disk.list_dir(&dir.join("absent")).await.unwrap().is_empty());
        let (capacity, free) = disk.space(&dir).await.unwrap();
        assert!(capacity >= free && capacity > 0);
        assert_eq!(disk.read_file(&f).await.unwrap_err().kind(), io::ErrorKind::NotFound);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Bulk writes and reads (`O_DIRECT` where the filesystem has it, buffered where not) hold
    /// exactly the bytes given, at every alignment: lengths around block edges, reads starting
    /// and ending inside blocks and past the end of the file.
    #[tokio::test]
    async fn bulk_writes_and_reads_round_trip_at_any_alignment() {
        let dir = std::env::temp_dir().join(format!("dfs-realdisk-bulk-{}", std::process::id()));
        let disk = RealDisk;
        disk.create_dir_all(&dir).await.unwrap();
        let pattern = |len: usize, seed: usize| -> Bytes { (0..len).map(|i| ((i * 31 + seed * 7) % 251) as u8).collect::<Vec<_>>().into() };
        // The same bytes in aligned memory, as a received bulk chunk is: written from there.
        let in_aligned_memory = |bytes: Bytes| -> Bytes {
            let mut buf = BulkBuf::with_capacity(bytes.len());
            buf.extend_from_slice(&bytes);
            buf.freeze()
        };
        let cases = [
            (64, 0),
            (100, 1),
            (128, 4096 - 128),
            (128, 4096 - 127),
            (64, 3 << 20),
            (4096, 1 << 20),
            (333, (1 << 20) + 4095),
            (4096, (1 << 20) + 5),
            (8192, 4096),
        ];
        for (case, (head_len, data_len, aligned)) in cases.into_iter().flat_map(|(h, d)| [(h, d, false), (h, d, true)]).enumerate() {
            let (head, mut data) = (pattern(head_len, case), pattern(data_len, case + 100));
            if aligned {
                data = in_aligned_memory(data);
                assert!(bulk_buf::is_aligned(&data));
            }
            let path = dir.join(format!("c{case}"));
            // Over a longer file: the write truncates.
            std::fs::write(&path, vec![0xEEu8; head_len + data_len + 9000]).unwrap();
            let steps = vec![DiskStep::WriteBulk { path: path.clone(), head: head.clone(), data: data.clone() }, DiskStep::SyncFile(path.clone())];
            disk.run_steps(steps).await.unwrap();
            let mut whole = head.to_vec();
            whole.extend_from_slice(&data);
            assert_eq!(std::fs::read(&path).unwrap(), whole, "case {case}");
            let total = whole.len() as u64;
            for (offset, len) in [
                (0, total),
                (1, 10),
                (head_len as u64, data_len as u64),
                (4095, 2),
                (4096, 4096),
                (total.saturating_sub(5), 100),
                (total, 10),
                (total + 5000, 10),
            ] {
                let got = disk.read_bulk_at(&path, offset, len).await.unwrap();
                let from = (offset as usize).min(whole.len());
                let to = (offset + len).min(total) as usize;
                assert_eq!(&got[..], &whole[from..to.max(from)], "case {case}: {len} bytes at {offset}");
            }
        }
        assert_eq!(disk.read_bulk_at(&dir.join("absent"), 0, 10).await.unwrap_err().kind(), io::ErrorKind::NotFound);
        // A file assembled from bulk writes at aligned and unaligned offsets, in any order, with
        // lengths that are and are not whole blocks, holds exactly what a buffered one would.
        let out = dir.join("out");
        let mut expected = vec![0u8; 0];
        for (i, (offset, len)) in
            [(8192usize, 4096usize), (0, 8192), (12288, 10000), (22288, 5000), (4096 * 7, 1), (1 << 20, (1 << 20) + 3), (4096 * 3, 8192 + 7), (4096 * 5, 100)]
                .into_iter()
                .enumerate()
        {
            let data = if i % 2 == 0 { pattern(len, offset) } else { in_aligned_memory(pattern(len, offset)) };
            disk.write_bulk_at(&out, offset as u64, data.clone()).await.unwrap();
            if expected.len() < offset + len {
                expected.resize(offset + len, 0);
            }
            expected[offset..offset + len].copy_from_slice(&data);
            assert_eq!(std::fs::read(&out).unwrap(), expected, "after {len} bytes at {offset}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Where `O_DIRECT` is refused (tmpfs before Linux 6.6 and others), bulk I/O falls back to
    /// the page cache. `/dev/shm` is tmpfs: whichever way this kernel goes, the bytes match.
    #[tokio::test]
    async fn bulk_io_works_on_tmpfs() {
        let dir = Path::new("/dev/shm").join(format!("dfs-realdisk-bulk-{}", std::process::id()));
        // Skipping without /dev/shm would pass with nothing checked: say why it cannot run.
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("this test needs a tmpfs at /dev/shm (O_DIRECT is refused there): {e}"));
        let disk = RealDisk;
        let data: Bytes = (0..(1usize << 20) + 17).map(|i| (i % 253) as u8).collect::<Vec<_>>().into();
        let path = dir.join("c");
        disk.run_steps(vec![DiskStep::WriteBulk { path: path.clone(), head: Bytes::from_static(b"head"), data: data.clone() }]).await.unwrap();
        assert_eq!(&disk.read_bulk_at(&path, 4, data.len() as u64).await.unwrap()[..], &data[..]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn steps_in_one_go_do_what_the_calls_do() {
        let dir = std::env::temp_dir().join(format!("dfs-realdisk-steps-{}", std::process::id()));
        let disk = RealDisk;
        let (tmp, dest) = (dir.join("t.tmp"), dir.join("x/y/c"));
        let steps = vec![
            DiskStep::CreateDir(dir.clone()),
            DiskStep::WriteFile { path: tmp.clone(), data: Bytes::from_static(b"head") },
            DiskStep::WriteAt { path: tmp.clone(), offset: 8, data: Bytes::from_static(b"data") },
            DiskStep::SyncFile(tmp.clone()),
            DiskStep::CreateDir(dir.join("x/y")),
            DiskStep::SyncDir(dir.join("x")),
            DiskStep::Rename { from: tmp.clone(), to: dest.clone() },
            DiskStep::SyncDir(dir.join("x/y")),
        ];
        disk.run_steps(steps).await.unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"head\0\0\0\0data");
        assert!(!tmp.exists());
        // The first failing step stops the rest.
        let steps = vec![DiskStep::SyncFile(dir.join("absent")), DiskStep::WriteFile { path: dir.join("never"), data: Bytes::new() }];
        assert_eq!(disk.run_steps(steps).await.unwrap_err().kind(), io::ErrorKind::NotFound);
        assert!(!dir.join("never").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! The local filesystem. Every call runs on tokio's blocking pool; `sync_file` and `sync_dir`
//! are real `fsync`s.

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use dfs_core::env::{Disk, DiskStep};

#[derive(Clone, Debug, Default)]
pub struct RealDisk;

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| io::Error::other(format!("blocking task failed: {e}")))?
}

fn parent_or_dot(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
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
        blocking(move || {
            let file = File::open(path)?;
            let mut buf = vec![0u8; len as usize];
            let mut filled = 0usize;
            while filled < buf.len() {
                match file.read_at(&mut buf[filled..], offset + filled as u64) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            buf.truncate(filled);
            Ok(Bytes::from(buf))
        })
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

    fn stamp(&self, path: &Path) -> impl Future<Output = io::Result<dfs_core::env::FileStamp>> + Send {
        let path = owned(path);
        blocking(move || {
            let meta = fs::metadata(&path)?;
            if !meta.is_file() {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
            }
            let modified = meta.modified()?.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
            Ok(dfs_core::env::FileStamp { len: meta.len(), modified })
        })
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
        let steps = vec![
            DiskStep::SyncFile(dir.join("absent")),
            DiskStep::WriteFile { path: dir.join("never"), data: Bytes::new() },
        ];
        assert_eq!(disk.run_steps(steps).await.unwrap_err().kind(), io::ErrorKind::NotFound);
        assert!(!dir.join("never").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

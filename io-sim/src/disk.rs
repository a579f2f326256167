//! A simulated disk that knows what a power cut would keep.
//!
//! ## Fault model
//!
//! The disk holds files (inodes) and directory entries, each in two versions: what the running
//! process sees (volatile) and what is on stable storage (durable).
//!
//! - `write_file` / `write_at` change only the volatile contents of the file.
//! - `sync_file` makes the file's current contents durable.
//! - Creating, renaming and removing a name changes only the volatile directory; `sync_dir`
//!   makes the directory's current entries durable.
//! - `crash()` (power loss) throws away everything volatile: each name reverts to its durable
//!   entry, each file to its durable contents; a file created and never synced reads back empty
//!   if its name survived, and does not exist if its name did not.
//! - `crash_with(model, seed)` is a power cut where the kernel may have written some unsynced
//!   contents back before it: per file, its unsynced contents are lost, kept whole, or torn
//!   (each 4 KiB page old or new, the length old or new), as `CrashModel` says. Names follow
//!   the same rules as for `crash()`. Nothing that was synced is ever lost or torn.
//! - `set_ballast(bytes)` takes room on the disk (another tenant filling it) until released:
//!   writes meet a full disk (ENOSPC), and `space` reports it.
//! - Directories are entries too: `create_dir_all` adds a volatile entry in the parent of each
//!   directory it creates, and only `sync_dir(parent)` makes that entry durable. `crash()`
//!   removes every directory whose entry (or an ancestor's) was never made durable, with
//!   everything under it, however durable the files inside were. The root (`/`) always exists.
//!   Directories are never removed or renamed (no driver does either).
//! - Every operation takes effect when called and reports back after a random latency (up to
//!   `LATENCY_MAX`, in simulated time), so a crash can fall between any two steps.
//! - `flip_bit` damages the durable and volatile contents of one file, as silent media
//!   corruption would; the checksums must catch it.
//!
//! - A store (`open_store`, the file under a redb database) follows the same rules: `write`
//!   changes the volatile contents, `sync_data` makes them durable. `crash()` also fences every
//!   store opened before it: the dead process's handle can neither read nor write any more (a
//!   SIGKILLed process runs no destructors, so nothing it would have written on close lands).
//!
//! The disk lives outside the simulated node (the test harness holds it), so it survives the
//! node being killed and restarted; call `crash()` on kill to model power loss.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use dfs_core::env::{Disk, LocalEntry, LocalKind, LocalMeta};

type Inode = u64;

#[derive(Debug, Default, Clone)]
struct FileData {
    volatile: Vec<u8>,
    durable: Vec<u8>,
    /// The volatile contents changed since they were last made durable (or the other way
    /// round): only such files need copying on a sync and considering on a crash. Keeps
    /// `sync_all` and crashes proportional to what changed, not to the disk's contents.
    dirty: bool,
    /// For a store (redb's file): the pages written since the last sync, so that a sync
    /// copies those and not the whole file (redb syncs on every commit).
    dirty_pages: BTreeSet<u64>,
}

impl FileData {
    /// Makes the volatile contents durable.
    fn sync(&mut self) {
        if !self.dirty {
            return;
        }
        if self.dirty_pages.is_empty() || self.durable.is_empty() {
            self.durable.clone_from(&self.volatile);
        } else {
            self.durable.resize(self.volatile.len(), 0);
            for page in std::mem::take(&mut self.dirty_pages) {
                let start = (page as usize * PAGE_BYTES).min(self.volatile.len());
                let end = (start + PAGE_BYTES).min(self.volatile.len());
                self.durable[start..end].copy_from_slice(&self.volatile[start..end]);
            }
        }
        self.dirty_pages.clear();
        self.dirty = false;
    }
}

#[derive(Debug, Default)]
struct DiskState {
    inodes: BTreeMap<Inode, FileData>,
    next_inode: Inode,
    volatile_names: BTreeMap<PathBuf, Inode>,
    durable_names: BTreeMap<PathBuf, Inode>,
    /// Directories as the running process sees them.
    dirs: BTreeSet<PathBuf>,
    /// Directories whose entry in their parent was made durable by `sync_dir(parent)`.
    durable_dirs: BTreeSet<PathBuf>,
    capacity_bytes: u64,
    /// Room taken by something else (`set_ballast`).
    ballast_bytes: u64,
    /// Bumped by every crash; stores opened in an older epoch are fenced.
    epoch: u64,
    /// Inodes with a live store open on them.
    open_stores: BTreeSet<Inode>,
    /// Names whose volatile entry may differ from the durable one (created, renamed or
    /// removed since their directory was last synced), and directories whose entry may not be
    /// durable yet: `sync_all` makes just these durable instead of copying every name on the
    /// disk (a storage node syncs its whole batch that way, and holds thousands of names).
    /// A superset is harmless: making an entry durable that already is changes nothing.
    unsynced_names: BTreeSet<PathBuf>,
    unsynced_dirs: BTreeSet<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct SimDisk {
    state: Arc<Mutex<DiskState>>,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}: no such file", path.display()))
}

impl SimDisk {
    pub fn new(capacity_bytes: u64) -> Self {
        SimDisk { state: Arc::new(Mutex::new(DiskState { capacity_bytes, ..Default::default() })) }
    }

    /// Power loss: keep only what was made durable.
    pub fn crash(&self) {
        self.crash_with(CrashModel::LOSE_ALL, 0);
    }

    /// Power loss after which some unsynced contents may have reached the disk anyway, whole or
    /// torn, as `model` says; `seed` picks which (the same seed, the same outcome).
    pub fn crash_with(&self, model: CrashModel, seed: u64) -> CrashReport {
        let mut rng = SplitMix(seed);
        let mut report = CrashReport::default();
        let mut s = self.state.lock().unwrap();
        for data in s.inodes.values_mut() {
            if !data.dirty || data.volatile == data.durable {
                continue;
            }
            let roll = rng.unit();
            if roll < model.keep_unsynced {
                data.durable = data.volatile.clone();
                report.kept += 1;
            } else if roll < model.keep_unsynced + model.torn {
                data.durable = torn(&data.durable, &data.volatile, &mut rng);
                report.torn += 1;
            }
        }
        Self::lose_volatile(&mut s);
        report
    }

    /// Takes `bytes` of the disk's room (0 gives it back), as another tenant filling the
    /// disk would.
    pub fn set_ballast(&self, bytes: u64) {
        self.state.lock().unwrap().ballast_bytes = bytes;
    }

    /// Every file under `dir` (at any depth) as the running process sees it, in path order:
    /// for checkers, which would otherwise list directory after directory.
    pub fn files_under(&self, dir: &Path) -> Vec<PathBuf> {
        let s = self.state.lock().unwrap();
        s.volatile_names
            .range::<Path, _>((std::ops::Bound::Excluded(dir), std::ops::Bound::Unbounded))
            .map(|(p, _)| p)
            .take_while(|p| p.starts_with(dir))
            .cloned()
            .collect()
    }

    /// What a power cut would leave of the file named `path` by a durable entry, if any.
    pub fn durable_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let s = self.state.lock().unwrap();
        let ino = s.durable_names.get(path)?;
        s.inodes.get(ino).map(|d| d.durable.clone())
    }

    fn lose_volatile(s: &mut DiskState) {
        s.epoch += 1;
        s.open_stores.clear();
        // A directory survives if its entry and every ancestor's entry are durable.
        let surviving: BTreeSet<PathBuf> =
            s.durable_dirs.iter().filter(|d| d.ancestors().skip(1).all(|a| is_root(a) || s.durable_dirs.contains(a))).cloned().collect();
        s.durable_names.retain(|p, _| p.parent().is_none_or(|dir| is_root(dir) || surviving.contains(dir)));
        s.dirs = surviving.clone();
        s.durable_dirs = surviving;
        s.volatile_names = s.durable_names.clone();
        s.unsynced_names.clear();
        s.unsynced_dirs.clear();
        let live: BTreeSet<Inode> = s.durable_names.values().copied().collect();
        s.inodes.retain(|ino, _| live.contains(ino));
        for data in s.inodes.values_mut().filter(|d| d.dirty) {
            data.volatile = data.durable.clone();
            data.dirty = false;
            data.dirty_pages.clear();
        }
    }

    /// Flips one bit of a file's stored bytes. Returns false if the file is absent or empty.
    pub fn flip_bit(&self, path: &Path, byte: usize, bit: u8) -> bool {
        let mut s = self.state.lock().unwrap();
        let Some(&ino) = s.volatile_names.get(path) else { return false };
        let data = s.inodes.get_mut(&ino).expect("names point at inodes");
        if data.volatile.is_empty() {
            return false;
        }
        let i = byte % data.volatile.len();
        data.volatile[i] ^= 1 << (bit % 8);
        if i < data.durable.len() {
            data.durable[i] ^= 1 << (bit % 8);
        }
        true
    }

    fn used_bytes(s: &DiskState) -> u64 {
        s.inodes.values().map(|d| d.volatile.len().max(d.durable.len()) as u64).sum::<u64>() + s.ballast_bytes
    }

    /// Does the operation at once, then (inside a simulation) takes a random while of up to
    /// `LATENCY_MAX` to report it: a crash can land between any two steps of a driver (after
    /// the write, before its fsync; after the rename, before the directory fsync), as it can
    /// on a real disk.
    fn with<T: Send + 'static>(&self, f: impl FnOnce(&mut DiskState) -> io::Result<T>) -> Delayed<T> {
        delayed(f(&mut self.state.lock().unwrap()))
    }
}

/// How a power cut treats contents written but not synced (`SimDisk::crash_with`). The two
/// chances add up to at most 1; the rest of the time the unsynced contents are lost.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CrashModel {
    /// Chance that a file's unsynced contents were all written back before the cut.
    pub keep_unsynced: f64,
    /// Chance that they were written back in part: a torn write.
    pub torn: f64,
}

impl CrashModel {
    /// Everything unsynced is lost (`SimDisk::crash`).
    pub const LOSE_ALL: CrashModel = CrashModel { keep_unsynced: 0.0, torn: 0.0 };
}

/// What a `crash_with` did to unsynced contents: files kept whole, files torn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrashReport {
    pub kept: u64,
    pub torn: u64,
}

/// Pages a torn write mixes.
const PAGE_BYTES: usize = 4096;

/// A torn image of a file between its durable (`old`) and volatile (`new`) contents: the
/// length of one or the other, each page from one or the other (a page past the end of `old`
/// reads as zeros where it comes from `old`).
fn torn(old: &[u8], new: &[u8], rng: &mut SplitMix) -> Vec<u8> {
    let len = if rng.unit() < 0.5 { old.len() } else { new.len() };
    let mut out = vec![0u8; len];
    for (page, chunk) in out.chunks_mut(PAGE_BYTES).enumerate() {
        let start = page * PAGE_BYTES;
        let source = if rng.unit() < 0.5 { old } else { new };
        let have = source.len().saturating_sub(start).min(chunk.len());
        if have > 0 {
            chunk[..have].copy_from_slice(&source[start..start + have]);
        }
    }
    out
}

/// A small seeded generator (splitmix64): crashes are reproducible from their seed alone.
/// Also the harness's generator where a plan must not depend on madsim's stream.
#[derive(Clone, Debug)]
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A disk operation's result, reported after the disk's latency.
type Delayed<T> = std::pin::Pin<Box<dyn Future<Output = io::Result<T>> + Send>>;

fn delayed<T: Send + 'static>(result: io::Result<T>) -> Delayed<T> {
    let delay = latency();
    Box::pin(async move {
        if let Some(d) = delay {
            sleep(d).await;
        }
        result
    })
}

/// Longest a simulated disk operation takes.
pub const LATENCY_MAX: std::time::Duration = std::time::Duration::from_micros(500);

#[cfg(madsim)]
fn latency() -> Option<std::time::Duration> {
    use madsim::rand::Rng;
    madsim::runtime::Handle::try_current().ok()?;
    Some(std::time::Duration::from_micros(madsim::rand::thread_rng().gen_range(0..=LATENCY_MAX.as_micros() as u64)))
}

#[cfg(not(madsim))]
fn latency() -> Option<std::time::Duration> {
    None
}

#[cfg(madsim)]
async fn sleep(d: std::time::Duration) {
    madsim::time::sleep(d).await
}

#[cfg(not(madsim))]
async fn sleep(_d: std::time::Duration) {}

/// The directory every path hangs from: `/`, or the empty parent of a relative name.
/// A file's stamp on this disk, which has no clock: a digest of the contents changes
/// whenever they do.
fn content_stamp(data: &[u8]) -> dfs_core::env::FileStamp {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    dfs_core::env::FileStamp { len: data.len() as u64, modified: h.finish() }
}

fn is_root(dir: &Path) -> bool {
    dir.parent().is_none() || dir.as_os_str().is_empty() || dir == Path::new(".")
}

impl DiskState {
    /// What `Disk::inspect` says of `path`, if it exists.
    fn local_meta(&self, path: &Path) -> Option<LocalMeta> {
        use std::hash::{Hash, Hasher};
        if is_root(path) || self.dirs.contains(path) {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            path.hash(&mut h);
            let stamp = dfs_core::env::FileStamp { len: 0, modified: 0 };
            // Directories have no inode here: a digest of the path tells them apart.
            return Some(LocalMeta { kind: LocalKind::Dir, len: 0, stamp, attrs: Default::default(), identity: (1, h.finish()) });
        }
        let ino = *self.volatile_names.get(path)?;
        let stamp = content_stamp(&self.inodes[&ino].volatile);
        Some(LocalMeta { kind: LocalKind::File, len: stamp.len, stamp, attrs: Default::default(), identity: (0, ino) })
    }

    /// The names of the files and directories in `dir`, in order.
    fn names_in(&self, dir: &Path) -> Vec<String> {
        let mut names: BTreeSet<String> = BTreeSet::new();
        // Paths order by component, so everything under `dir` is one range of each map.
        let under = |p: &&PathBuf| p.starts_with(dir);
        let files = self.volatile_names.range::<Path, _>((std::ops::Bound::Excluded(dir), std::ops::Bound::Unbounded)).map(|(p, _)| p).take_while(under);
        let dirs = self.dirs.range::<Path, _>((std::ops::Bound::Excluded(dir), std::ops::Bound::Unbounded)).take_while(under);
        for p in files.chain(dirs).filter(|p| p.parent() == Some(dir)) {
            if let Some(name) = p.file_name() {
                names.insert(name.to_string_lossy().into_owned());
            }
        }
        names.into_iter().collect()
    }

    /// Makes the current entries of `dir`, files and subdirectories, durable.
    fn sync_entries(&mut self, dir: &Path) {
        let dir = if dir == Path::new(".") { Path::new("") } else { dir };
        // Only the entries changed since the last sync can differ from their durable version
        // (`unsynced_names`); paths order by component, so those under `dir` are one range.
        let from = (std::ops::Bound::Excluded(dir), std::ops::Bound::Unbounded);
        let changed: Vec<PathBuf> =
            self.unsynced_names.range::<Path, _>(from).take_while(|p| p.starts_with(dir)).filter(|p| p.parent() == Some(dir)).cloned().collect();
        for path in changed {
            self.unsynced_names.remove(&path);
            self.make_entry_durable(path);
        }
        let subdirs: Vec<PathBuf> =
            self.unsynced_dirs.range::<Path, _>(from).take_while(|p| p.starts_with(dir)).filter(|p| p.parent() == Some(dir)).cloned().collect();
        for sub in subdirs {
            self.unsynced_dirs.remove(&sub);
            self.durable_dirs.insert(sub);
        }
    }

    /// The durable entry of `path` becomes what the process sees: its file, or no entry.
    fn make_entry_durable(&mut self, path: PathBuf) {
        match self.volatile_names.get(&path) {
            Some(&ino) => self.durable_names.insert(path, ino),
            None => self.durable_names.remove(&path),
        };
    }

    fn dir_exists(&self, dir: &Path) -> bool {
        is_root(dir) || self.dirs.contains(dir)
    }

    fn parent_exists(&self, path: &Path) -> io::Result<()> {
        match path.parent() {
            Some(dir) if !self.dir_exists(dir) => Err(io::Error::new(io::ErrorKind::NotFound, format!("{}: no such directory", dir.display()))),
            _ => Ok(()),
        }
    }

    fn inode_for_write(&mut self, path: &Path) -> io::Result<Inode> {
        if let Some(&ino) = self.volatile_names.get(path) {
            return Ok(ino);
        }
        self.parent_exists(path)?;
        self.next_inode += 1;
        let ino = self.next_inode;
        self.inodes.insert(ino, FileData::default());
        self.volatile_names.insert(path.to_path_buf(), ino);
        self.unsynced_names.insert(path.to_path_buf());
        Ok(ino)
    }

    /// Fails, changing nothing, if giving `path` `new_len` volatile bytes would use more than
    /// the capacity. Shrinking or rewriting in place always fits.
    fn check_space(&self, path: &Path, new_len: u64) -> io::Result<()> {
        let (before, after) = match self.volatile_names.get(path).map(|ino| &self.inodes[ino]) {
            Some(d) => (d.volatile.len().max(d.durable.len()) as u64, new_len.max(d.durable.len() as u64)),
            None => (0, new_len),
        };
        if after > before && SimDisk::used_bytes(self) + (after - before) > self.capacity_bytes {
            return Err(io::Error::new(io::ErrorKind::StorageFull, format!("{}: simulated disk is full (no space left on device)", path.display())));
        }
        Ok(())
    }

    fn data(&self, path: &Path) -> io::Result<&FileData> {
        let ino = self.volatile_names.get(path).ok_or_else(|| not_found(path))?;
        Ok(&self.inodes[ino])
    }
}

/// A store file on a `SimDisk`: redb's backend, with the disk's power-loss model.
#[derive(Debug)]
pub struct SimStore {
    state: Arc<Mutex<DiskState>>,
    inode: Inode,
    epoch: u64,
}

impl SimStore {
    fn with<T>(&self, f: impl FnOnce(&mut FileData, u64) -> io::Result<T>) -> io::Result<T> {
        let mut s = self.state.lock().unwrap();
        if s.epoch != self.epoch {
            return Err(io::Error::other("simulated power loss: this store's process is gone"));
        }
        let room = s.capacity_bytes.saturating_sub(SimDisk::used_bytes(&s));
        let data = s.inodes.get_mut(&self.inode).ok_or_else(|| io::Error::other("store file removed"))?;
        f(data, room)
    }
}

impl redb::StorageBackend for SimStore {
    fn len(&self) -> io::Result<u64> {
        self.with(|d, _| Ok(d.volatile.len() as u64))
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.with(|d, _| {
            let end = offset as usize + out.len();
            if end > d.volatile.len() {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the store"));
            }
            out.copy_from_slice(&d.volatile[offset as usize..end]);
            Ok(())
        })
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(|d, room| {
            if len > d.volatile.len() as u64 && len - d.volatile.len() as u64 > room {
                return Err(io::Error::new(io::ErrorKind::StorageFull, "simulated disk is full"));
            }
            let old = d.volatile.len() as u64;
            d.volatile.resize(len as usize, 0);
            d.dirty = true;
            let first = old.min(len) / PAGE_BYTES as u64;
            d.dirty_pages.extend(first..=(old.max(len) / PAGE_BYTES as u64));
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with(|d, _| {
            d.sync();
            Ok(())
        })
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.with(|d, room| {
            let end = offset as usize + data.len();
            if end > d.volatile.len() {
                if (end - d.volatile.len()) as u64 > room {
                    return Err(io::Error::new(io::ErrorKind::StorageFull, "simulated disk is full"));
                }
                d.volatile.resize(end, 0);
            }
            d.volatile[offset as usize..end].copy_from_slice(data);
            d.dirty = true;
            if !data.is_empty() {
                d.dirty_pages.extend(offset / PAGE_BYTES as u64..=(end as u64 - 1) / PAGE_BYTES as u64);
            }
            Ok(())
        })
    }

    fn close(&self) -> io::Result<()> {
        let mut s = self.state.lock().unwrap();
        if s.epoch == self.epoch {
            s.open_stores.remove(&self.inode);
        }
        Ok(())
    }
}

impl Disk for SimDisk {
    type Store = SimStore;

    fn open_store(&self, path: &Path) -> impl Future<Output = io::Result<SimStore>> + Send {
        self.with(|s| {
            let inode = s.inode_for_write(path)?;
            if !s.open_stores.insert(inode) {
                return Err(io::Error::new(io::ErrorKind::WouldBlock, format!("{}: store already open", path.display())));
            }
            // Like the real disk: a new store's name is made durable at once.
            if let Some(dir) = path.parent() {
                s.sync_entries(dir);
            }
            Ok(SimStore { state: self.state.clone(), inode, epoch: s.epoch })
        })
    }

    fn create_dir_all(&self, dir: &Path) -> impl Future<Output = io::Result<()>> + Send {
        self.with(|s| {
            for ancestor in dir.ancestors().filter(|a| !is_root(a)) {
                if s.volatile_names.contains_key(ancestor) {
                    return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{}: a file, not a directory", ancestor.display())));
                }
                if s.dirs.insert(ancestor.to_path_buf()) {
                    s.unsynced_dirs.insert(ancestor.to_path_buf());
                }
            }
            Ok(())
        })
    }

    fn write_file(&self, path: &Path, data: Bytes) -> impl Future<Output = io::Result<()>> + Send {
        self.with(|s| {
            s.parent_exists(path)?;
            s.check_space(path, data.len() as u64)?;
            let ino = s.inode_for_write(path)?;
            let file = s.inodes.get_mut(&ino).expect("just made");
            file.volatile = data.to_vec();
            file.dirty = true;
            // Not a store's page write: the next sync copies it whole.
            file.dirty_pages.clear();
            Ok(())
        })
    }

    fn write_at(&self, path: &Path, offset: u64, data: Bytes) -> impl Future<Output = io::Result<()>> + Send {
        self.with(|s| {
            s.parent_exists(path)?;
            let current = s.volatile_names.get(path).map_or(0, |ino| s.inodes[ino].volatile.len() as u64);
            s.check_space(path, current.max(offset + data.len() as u64))?;
            let ino = s.inode_for_write(path)?;
            let inode = s.inodes.get_mut(&ino).expect("just made");
            inode.dirty = true;
            inode.dirty_pages.clear();
            let file = &mut inode.volatile;
            let end = offset as usize + data.len();
            if file.len() < end {
                file.resize(end, 0);
            }
            file[offset as usize..end].copy_from_slice(&data);
            Ok(())
        })
    }

    fn read_file(&self, path: &Path) -> impl Future<Output = io::Result<Bytes>> + Send {
        self.with(|s| Ok(Bytes::from(s.data(path)?.volatile.clone())))
    }

    fn read_at(&self, path: &Path, offset: u64, len: u64) -> impl Future<Output = io::Result<Bytes>> + Send {
        self.with(|s| {
            let data = &s.data(path)?.volatile;
            let start = (offset as usize).min(data.len());
            let end = (offset.saturating_add(len) as usize).min(data.len());
            Ok(Bytes::copy_from_slice(&data[start..end]))
        })
    }

    fn file_len(&self, path: &Path) -> impl Future<Output = io::Result<u64>> + Send {
        self.with(|s| Ok(s.data(path)?.volatile.len() as u64))
    }

    fn stamp(&self, path: &Path) -> impl Future<Output = io::Result<dfs_core::env::FileStamp>> + Send {
        self.with(|s| Ok(content_stamp(&s.data(path)?.volatile)))
    }

    fn sync_file(&self, path: &Path) -> impl Future<Output = io::Result<()>> + Send {
        self.with(|s| {
            let ino = *s.volatile_names.get(path).ok_or_else(|| not_found(path))?;
            let file = s.inodes.get_mut(&ino).expect("names point at inodes");
            file.sync();
            Ok(())
        })
    }

    fn sync_dir(&self, dir: &Path) -> impl Future<Output = io::Result<()>> + Send {
        self.with(|s| {
            s.sync_entries(dir);
            Ok(())
        })
    }

    fn sync_all(&self, _dir: &Path) -> impl Future<Output = io::Result<()>> + Send {
        // One simulated disk is one filesystem: everything on it becomes durable.
        self.with(|s| {
            for path in std::mem::take(&mut s.unsynced_names) {
                s.make_entry_durable(path);
            }
            let dirs = std::mem::take(&mut s.unsynced_dirs);
            s.durable_dirs.extend(dirs);
            for data in s.inodes.values_mut() {
                data.sync();
            }
            Ok(())
        })
    }

    fn rename(&self, from: &Path, to: &Path) -> impl Future<Output = io::Result<()>> + Send {
        self.with(|s| {
            s.parent_exists(to)?;
            let ino = s.volatile_names.remove(from).ok_or_else(|| not_found(from))?;
            s.volatile_names.insert(to.to_path_buf(), ino);
            s.unsynced_names.insert(from.to_path_buf());
            s.unsynced_names.insert(to.to_path_buf());
            Ok(())
        })
    }

    fn remove_file(&self, path: &Path) -> impl Future<Output = io::Result<()>> + Send {
        self.with(|s| {
            s.volatile_names.remove(path).ok_or_else(|| not_found(path))?;
            s.unsynced_names.insert(path.to_path_buf());
            let referenced: BTreeSet<Inode> = s.volatile_names.values().chain(s.durable_names.values()).copied().collect();
            s.inodes.retain(|ino, _| referenced.contains(ino));
            Ok(())
        })
    }

    fn list_dir(&self, dir: &Path) -> impl Future<Output = io::Result<Vec<String>>> + Send {
        self.with(|s| Ok(s.names_in(dir)))
    }

    fn read_entries(&self, dir: &Path) -> impl Future<Output = io::Result<Vec<LocalEntry>>> + Send {
        self.with(|s| {
            if !is_root(dir) && !s.dirs.contains(dir) {
                return Err(not_found(dir));
            }
            // This disk has no links or special files: what is not a directory is a file.
            let entries = s.names_in(dir).into_iter().map(|name| {
                let meta = s.local_meta(&dir.join(&name));
                let kind = meta.as_ref().map_or(LocalKind::File, |m| m.kind);
                LocalEntry { name: name.into(), kind, meta }
            });
            Ok(entries.collect())
        })
    }

    fn inspect(&self, path: &Path) -> impl Future<Output = io::Result<LocalMeta>> + Send {
        self.with(|s| s.local_meta(path).ok_or_else(|| not_found(path)))
    }

    fn space(&self, _dir: &Path) -> impl Future<Output = io::Result<(u64, u64)>> + Send {
        self.with(|s| Ok((s.capacity_bytes, s.capacity_bytes.saturating_sub(SimDisk::used_bytes(s)))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// redb writes pages and syncs: a sync makes exactly what was written durable (only the
    /// pages touched are copied), a crash keeps exactly the last synced image.
    #[test]
    fn a_store_sync_keeps_every_page_written_and_a_crash_only_what_was_synced() {
        use redb::StorageBackend;
        let d = SimDisk::new(1 << 20);
        let store = block_on(d.open_store(Path::new("/db"))).unwrap();
        store.set_len(4 * PAGE_BYTES as u64).unwrap();
        store.write(0, &[1u8; 4 * PAGE_BYTES]).unwrap();
        store.sync_data().unwrap();
        store.write(PAGE_BYTES as u64 + 10, &[2u8; PAGE_BYTES]).unwrap(); // pages 1 and 2
        store.set_len(5 * PAGE_BYTES as u64).unwrap();
        store.write(4 * PAGE_BYTES as u64, &[3u8; 100]).unwrap();
        store.sync_data().unwrap();
        let mut synced = vec![1u8; 5 * PAGE_BYTES];
        synced[4 * PAGE_BYTES..].fill(0);
        synced[PAGE_BYTES + 10..2 * PAGE_BYTES + 10].fill(2);
        synced[4 * PAGE_BYTES..4 * PAGE_BYTES + 100].fill(3);
        store.write(0, &[9u8; 10]).unwrap(); // never synced
        store.set_len(6 * PAGE_BYTES as u64).unwrap();
        d.crash();
        let store = block_on(d.open_store(Path::new("/db"))).unwrap();
        let mut back = vec![0u8; store.len().unwrap() as usize];
        store.read(0, &mut back).unwrap();
        assert!(back == synced, "the store after the crash is not its last synced image");
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    /// A synced 3-page file, then overwritten (unsynced) with 2.5 pages of other bytes.
    fn half_synced(d: &SimDisk) -> (Vec<u8>, Vec<u8>) {
        let old = vec![b'o'; 3 * PAGE_BYTES];
        let new = vec![b'n'; 2 * PAGE_BYTES + PAGE_BYTES / 2];
        half_synced_with(d, old, new)
    }

    /// As `half_synced`, with the new contents longer than the old (a file that grew).
    fn grown(d: &SimDisk) -> (Vec<u8>, Vec<u8>) {
        half_synced_with(d, vec![b'o'; PAGE_BYTES / 2], vec![b'n'; 4 * PAGE_BYTES + 7])
    }

    fn half_synced_with(d: &SimDisk, old: Vec<u8>, new: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
        block_on(async {
            d.write_file(Path::new("/f"), Bytes::from(old.clone())).await.unwrap();
            d.sync_file(Path::new("/f")).await.unwrap();
            d.sync_dir(Path::new("/")).await.unwrap();
            d.write_file(Path::new("/f"), Bytes::from(new.clone())).await.unwrap();
        });
        (old, new)
    }

    #[test]
    fn a_crash_may_keep_or_tear_unsynced_contents_but_never_synced_ones() {
        let kept = SimDisk::new(1 << 20);
        let (_, new) = half_synced(&kept);
        assert_eq!(kept.crash_with(CrashModel { keep_unsynced: 1.0, torn: 0.0 }, 1), CrashReport { kept: 1, torn: 0 });
        assert_eq!(&block_on(kept.read_file(Path::new("/f"))).unwrap()[..], &new[..]);

        // Torn: every page is one image's or the other's, the length one of the two; over
        // many seeds both images show up, and mixed files too.
        let mut mixed = 0;
        for seed in 0..64 {
            let d = SimDisk::new(1 << 20);
            let (old, new) = if seed % 2 == 0 { half_synced(&d) } else { grown(&d) };
            assert_eq!(d.crash_with(CrashModel { keep_unsynced: 0.0, torn: 1.0 }, seed).torn, 1);
            let got = block_on(d.read_file(Path::new("/f"))).unwrap();
            assert!(got.len() == old.len() || got.len() == new.len());
            let mut sources = BTreeSet::new();
            for (page, bytes) in got.chunks(PAGE_BYTES).enumerate() {
                let start = page * PAGE_BYTES;
                let from = |image: &[u8]| (0..bytes.len()).all(|i| bytes[i] == image.get(start + i).copied().unwrap_or(0));
                assert!(from(&old) || from(&new), "seed {seed}: page {page} is neither image");
                sources.insert(from(&new));
            }
            mixed += usize::from(sources.len() == 2);
            // A second crash changes nothing: what is left is durable.
            d.crash_with(CrashModel { keep_unsynced: 0.0, torn: 1.0 }, seed + 1);
            assert_eq!(block_on(d.read_file(Path::new("/f"))).unwrap(), got);
        }
        assert!(mixed > 0, "no seed tore a file");

        // Nothing unsynced: nothing to tear.
        let d = SimDisk::new(1 << 20);
        block_on(d.write_file(Path::new("/g"), Bytes::from_static(b"x"))).unwrap();
        block_on(d.sync_file(Path::new("/g"))).unwrap();
        block_on(d.sync_dir(Path::new("/"))).unwrap();
        assert_eq!(d.crash_with(CrashModel { keep_unsynced: 0.0, torn: 1.0 }, 3), CrashReport::default());
        assert_eq!(&block_on(d.read_file(Path::new("/g"))).unwrap()[..], b"x");
        assert_eq!(d.durable_bytes(Path::new("/g")), Some(b"x".to_vec()));
    }

    #[test]
    fn ballast_fills_the_disk_until_released() {
        let d = SimDisk::new(10_000);
        d.set_ballast(9_000);
        assert_eq!(block_on(d.space(Path::new("/"))).unwrap(), (10_000, 1_000));
        let err = block_on(d.write_file(Path::new("/big"), Bytes::from(vec![0u8; 2_000]))).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        d.set_ballast(0);
        block_on(d.write_file(Path::new("/big"), Bytes::from(vec![0u8; 2_000]))).unwrap();
    }

    #[test]
    fn unsynced_data_and_names_are_lost_on_crash() {
        let d = SimDisk::new(1 << 20);
        block_on(async {
            d.create_dir_all(Path::new("/d")).await.unwrap();
            d.sync_dir(Path::new("/")).await.unwrap();
            d.write_file(Path::new("/d/a.tmp"), Bytes::from_static(b"AAAA")).await.unwrap();
            d.sync_file(Path::new("/d/a.tmp")).await.unwrap();
            d.rename(Path::new("/d/a.tmp"), Path::new("/d/a")).await.unwrap();
            d.sync_dir(Path::new("/d")).await.unwrap();
            // durable: /d/a = AAAA
            d.write_file(Path::new("/d/a"), Bytes::from_static(b"BB")).await.unwrap();
            d.write_file(Path::new("/d/b"), Bytes::from_static(b"never synced")).await.unwrap();
            d.sync_file(Path::new("/d/b")).await.unwrap(); // contents synced, name not
        });
        d.crash();
        block_on(async {
            assert_eq!(&d.read_file(Path::new("/d/a")).await.unwrap()[..], b"AAAA");
            assert_eq!(d.read_file(Path::new("/d/b")).await.unwrap_err().kind(), io::ErrorKind::NotFound);
            assert_eq!(d.list_dir(Path::new("/d")).await.unwrap(), vec!["a".to_string()]);
        });
    }

    #[test]
    fn directories_are_lost_on_crash_until_their_parent_is_synced() {
        let d = SimDisk::new(1 << 20);
        block_on(async {
            d.create_dir_all(Path::new("/kept/sub")).await.unwrap();
            d.sync_dir(Path::new("/")).await.unwrap();
            d.sync_dir(Path::new("/kept")).await.unwrap();
            // The file and its name are durable, but the directory holding it is not.
            d.create_dir_all(Path::new("/lost/deep")).await.unwrap();
            d.sync_dir(Path::new("/lost")).await.unwrap();
            d.write_file(Path::new("/lost/deep/f"), Bytes::from_static(b"data")).await.unwrap();
            d.sync_file(Path::new("/lost/deep/f")).await.unwrap();
            d.sync_dir(Path::new("/lost/deep")).await.unwrap();
            // A durable directory under one whose own entry was never synced is lost too.
            d.create_dir_all(Path::new("/kept/unsynced/child")).await.unwrap();
            d.sync_dir(Path::new("/kept/unsynced")).await.unwrap();
            assert_eq!(d.list_dir(Path::new("/")).await.unwrap(), vec!["kept".to_string(), "lost".to_string()]);
        });
        d.crash();
        block_on(async {
            assert_eq!(d.list_dir(Path::new("/")).await.unwrap(), vec!["kept".to_string()]);
            assert_eq!(d.list_dir(Path::new("/kept")).await.unwrap(), vec!["sub".to_string()]);
            assert_eq!(d.read_file(Path::new("/lost/deep/f")).await.unwrap_err().kind(), io::ErrorKind::NotFound);
            assert_eq!(d.write_file(Path::new("/lost/deep/g"), Bytes::new()).await.unwrap_err().kind(), io::ErrorKind::NotFound);
            assert_eq!(d.space(Path::new("/")).await.unwrap(), (1 << 20, 1 << 20), "the lost file's bytes are freed");
            d.write_file(Path::new("/kept/sub/f"), Bytes::from_static(b"x")).await.unwrap();
        });
    }

    /// What `put -r` walks: kinds, name order, an absent directory an error, and identities
    /// that tell two files or two directories apart.
    #[test]
    fn entries_and_inspect_describe_the_tree() {
        let d = SimDisk::new(1 << 20);
        block_on(async {
            d.create_dir_all(Path::new("/t/sub")).await.unwrap();
            d.create_dir_all(Path::new("/t/empty")).await.unwrap();
            d.write_file(Path::new("/t/b"), Bytes::from_static(b"bb")).await.unwrap();
            d.write_file(Path::new("/t/sub/a"), Bytes::from_static(b"a")).await.unwrap();
            let entries = d.read_entries(Path::new("/t")).await.unwrap();
            let seen: Vec<(String, LocalKind)> = entries.into_iter().map(|e| (e.name.to_string_lossy().into_owned(), e.kind)).collect();
            assert_eq!(seen, vec![("b".into(), LocalKind::File), ("empty".into(), LocalKind::Dir), ("sub".into(), LocalKind::Dir)]);
            assert!(d.read_entries(Path::new("/t/empty")).await.unwrap().is_empty());
            assert_eq!(d.read_entries(Path::new("/none")).await.unwrap_err().kind(), io::ErrorKind::NotFound);
            let file = d.inspect(Path::new("/t/b")).await.unwrap();
            assert_eq!((file.kind, file.len), (LocalKind::File, 2));
            assert_eq!(file.stamp, d.stamp(Path::new("/t/b")).await.unwrap());
            let (sub, empty) = (d.inspect(Path::new("/t/sub")).await.unwrap(), d.inspect(Path::new("/t/empty")).await.unwrap());
            assert_eq!((sub.kind, empty.kind), (LocalKind::Dir, LocalKind::Dir));
            assert_ne!(sub.identity, empty.identity);
            assert_ne!(file.identity, d.inspect(Path::new("/t/sub/a")).await.unwrap().identity);
            assert_eq!(d.inspect(Path::new("/t/nothing")).await.unwrap_err().kind(), io::ErrorKind::NotFound);
        });
    }

    #[test]
    fn a_write_that_does_not_fit_changes_nothing() {
        let d = SimDisk::new(10);
        block_on(async {
            d.create_dir_all(Path::new("/x")).await.unwrap();
            d.write_file(Path::new("/x/f"), Bytes::from_static(b"012345")).await.unwrap();
            let full = d.write_at(Path::new("/x/f"), 4, Bytes::from_static(b"abcdefg")).await.unwrap_err();
            assert_eq!(full.kind(), io::ErrorKind::StorageFull);
            assert_eq!(d.write_file(Path::new("/x/g"), Bytes::from_static(b"01234")).await.unwrap_err().kind(), io::ErrorKind::StorageFull);
            assert_eq!(&d.read_file(Path::new("/x/f")).await.unwrap()[..], b"012345");
            assert_eq!(d.list_dir(Path::new("/x")).await.unwrap(), vec!["f".to_string()]);
            // Rewriting in place, or growing within the capacity, fits.
            d.write_at(Path::new("/x/f"), 2, Bytes::from_static(b"abcdefgh")).await.unwrap();
            d.write_file(Path::new("/x/f"), Bytes::from_static(b"0123456789")).await.unwrap();
            assert_eq!(d.space(Path::new("/x")).await.unwrap(), (10, 0));
        });
    }

    #[test]
    fn full_disk_and_missing_parents_are_errors() {
        let d = SimDisk::new(10);
        block_on(async {
            assert_eq!(d.write_file(Path::new("/x/f"), Bytes::from_static(b"1")).await.unwrap_err().kind(), io::ErrorKind::NotFound);
            d.create_dir_all(Path::new("/x")).await.unwrap();
            d.write_file(Path::new("/x/f"), Bytes::from_static(b"0123456789")).await.unwrap();
            assert_eq!(d.write_file(Path::new("/x/g"), Bytes::from_static(b"1")).await.unwrap_err().kind(), io::ErrorKind::StorageFull);
            assert_eq!(d.space(Path::new("/x")).await.unwrap(), (10, 0));
            assert!(d.flip_bit(Path::new("/x/f"), 3, 0));
            assert_eq!(&d.read_at(Path::new("/x/f"), 2, 3).await.unwrap()[..], b"224");
        });
    }

    /// The names on the disk against a model that syncs by copying everything: any sequence
    /// of creates, renames, removals, directory creations, `sync_dir`, `sync_all` and crashes
    /// leaves exactly the files (and contents) the model says, before and after a final
    /// crash. (`sync_all` and `sync_dir` only touch the names changed since the last sync; the
    /// model checks that nothing else needed touching.)
    mod names_model {
        use std::collections::{BTreeMap, BTreeSet};

        use proptest::prelude::*;

        use super::*;

        #[derive(Clone, Debug)]
        enum Op {
            Write(u8, u8, u8),
            Rename(u8, u8, u8, u8),
            Remove(u8, u8),
            MakeDir(u8),
            SyncFile(u8, u8),
            SyncDir(Option<u8>),
            SyncAll,
            Crash,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (0u8..3, 0u8..4, any::<u8>()).prop_map(|(d, f, v)| Op::Write(d, f, v)),
                2 => (0u8..3, 0u8..4, 0u8..3, 0u8..4).prop_map(|(a, b, c, d)| Op::Rename(a, b, c, d)),
                2 => (0u8..3, 0u8..4).prop_map(|(d, f)| Op::Remove(d, f)),
                1 => (0u8..3).prop_map(Op::MakeDir),
                2 => (0u8..3, 0u8..4).prop_map(|(d, f)| Op::SyncFile(d, f)),
                2 => proptest::option::of(0u8..3).prop_map(Op::SyncDir),
                1 => Just(Op::SyncAll),
                1 => Just(Op::Crash),
            ]
        }

        fn dir(d: u8) -> PathBuf {
            PathBuf::from(format!("/d{d}"))
        }

        fn file(d: u8, f: u8) -> PathBuf {
            dir(d).join(format!("f{f}"))
        }

        /// Names and directories, volatile and durable; contents by inode, volatile and durable.
        #[derive(Default)]
        struct Model {
            names: BTreeMap<PathBuf, u64>,
            durable_names: BTreeMap<PathBuf, u64>,
            dirs: BTreeSet<PathBuf>,
            durable_dirs: BTreeSet<PathBuf>,
            contents: BTreeMap<u64, (Vec<u8>, Vec<u8>)>,
            next: u64,
        }

        impl Model {
            fn sync_dir(&mut self, d: &Path) {
                self.durable_names.retain(|p, _| p.parent() != Some(d));
                let entries: Vec<_> = self.names.iter().filter(|(p, _)| p.parent() == Some(d)).map(|(p, i)| (p.clone(), *i)).collect();
                self.durable_names.extend(entries);
                let subdirs: Vec<_> = self.dirs.iter().filter(|p| p.parent() == Some(d)).cloned().collect();
                self.durable_dirs.extend(subdirs);
            }

            fn crash(&mut self) {
                self.durable_names.retain(|p, _| p.parent().is_none_or(|d| d == Path::new("/") || self.durable_dirs.contains(d)));
                self.names = self.durable_names.clone();
                self.dirs = self.durable_dirs.clone();
                for (volatile, durable) in self.contents.values_mut() {
                    *volatile = durable.clone();
                }
            }

            /// What the running process sees: path → contents.
            fn visible(&self) -> BTreeMap<PathBuf, Vec<u8>> {
                self.names.iter().map(|(p, i)| (p.clone(), self.contents[i].0.clone())).collect()
            }
        }

        fn visible(d: &SimDisk) -> BTreeMap<PathBuf, Vec<u8>> {
            let files = d.files_under(Path::new("/"));
            files.into_iter().map(|p| (p.clone(), block_on(d.read_file(&p)).unwrap().to_vec())).collect()
        }

        proptest! {
            #![proptest_config(ProptestConfig {
                failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct(
                    concat!(env!("CARGO_MANIFEST_DIR"), "/../proptest-regressions/io-sim-disk.txt")))),
                ..ProptestConfig::default()
            })]
            #[test]
            fn names_survive_exactly_as_a_copy_everything_model_says(ops in proptest::collection::vec(op(), 0..60)) {
                let d = SimDisk::new(1 << 20);
                let mut m = Model::default();
                for op in ops {
                    match op {
                        Op::Write(di, f, v) => {
                            let ok = block_on(d.write_file(&file(di, f), Bytes::from(vec![v; 3]))).is_ok();
                            prop_assert_eq!(ok, m.dirs.contains(&dir(di)));
                            if ok {
                                let ino = *m.names.entry(file(di, f)).or_insert_with(|| { m.next += 1; m.next });
                                m.contents.entry(ino).or_default().0 = vec![v; 3];
                            }
                        }
                        Op::Rename(a, b, c, e) => {
                            let ok = block_on(d.rename(&file(a, b), &file(c, e))).is_ok();
                            prop_assert_eq!(ok, m.names.contains_key(&file(a, b)) && m.dirs.contains(&dir(c)));
                            if ok {
                                let ino = m.names.remove(&file(a, b)).unwrap();
                                m.names.insert(file(c, e), ino);
                            }
                        }
                        Op::Remove(di, f) => {
                            let ok = block_on(d.remove_file(&file(di, f))).is_ok();
                            prop_assert_eq!(ok, m.names.remove(&file(di, f)).is_some());
                        }
                        Op::MakeDir(di) => {
                            block_on(d.create_dir_all(&dir(di))).unwrap();
                            m.dirs.insert(dir(di));
                        }
                        Op::SyncFile(di, f) => {
                            let ok = block_on(d.sync_file(&file(di, f))).is_ok();
                            prop_assert_eq!(ok, m.names.contains_key(&file(di, f)));
                            if let Some(ino) = m.names.get(&file(di, f)) {
                                let c = m.contents.get_mut(ino).unwrap();
                                c.1 = c.0.clone();
                            }
                        }
                        Op::SyncDir(di) => {
                            let path = di.map_or(PathBuf::from("/"), dir);
                            block_on(d.sync_dir(&path)).unwrap();
                            m.sync_dir(&path);
                        }
                        Op::SyncAll => {
                            block_on(d.sync_all(Path::new("/"))).unwrap();
                            m.durable_names = m.names.clone();
                            m.durable_dirs = m.dirs.clone();
                            for (volatile, durable) in m.contents.values_mut() {
                                *durable = volatile.clone();
                            }
                        }
                        Op::Crash => {
                            d.crash();
                            m.crash();
                        }
                    }
                    prop_assert_eq!(visible(&d), m.visible());
                }
                d.crash();
                m.crash();
                prop_assert_eq!(visible(&d), m.visible());
            }
        }
    }
}

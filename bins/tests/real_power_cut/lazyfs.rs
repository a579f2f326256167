//! A FUSE file system, in memory, that forgets what was not synced: the power-cut test's disk
//! (the approach of Jepsen's LazyFS).
//!
//! ## What it promises
//! - Every file and directory has what processes see (volatile) and what is on "stable
//!   storage" (durable). Writes, truncations, creations, renames and removals change only the
//!   volatile side. `fsync`/`fdatasync` of a file makes its current bytes durable; `fsync` of
//!   a directory makes its current entries durable (as POSIX promises, and no more: a name a
//!   file got by `rename` survives a cut only once the directory holding it was synced).
//! - `arm(n)`: the `n`th mutating call from now (write, truncate, create, mkdir, rename,
//!   unlink, rmdir, fsync of a file or a directory) is not applied; from then on the file
//!   system is *frozen*: every call waits, as on a machine that lost power mid-call, until
//!   `cut`. `freeze()` does the same at once, between two calls.
//! - `cut()` is the power cut: everything volatile goes, each file reverts to its durable bytes
//!   and each directory to its durable entries; waiting calls fail with EIO (their callers are
//!   dead by then: the test kills every process first) and the file system runs again.
//! - `log()` lists the mutating calls applied, with the paths they named, for checks on the
//!   order of a write path (bounded: the oldest go first past `LOG_MAX`).
//!
//! Files are served with direct I/O (no page cache), so a read after a cut sees this model,
//! not what the kernel kept. `syncfs(2)` reaches no FUSE file system (the kernel sends it to
//! virtiofs only): here it makes nothing durable, which is stricter than a real disk.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

/// Mutating calls kept in the log.
const LOG_MAX: usize = 200_000;
/// The size the file system says it has (statfs): large, so that no node's reserve matters.
const CAPACITY_BYTES: u64 = 64 << 30;
/// Attributes and entries are never cached by the kernel: after a cut, everything is asked
/// again.
const TTL: Duration = Duration::ZERO;
/// Longest a frozen call waits for the cut before failing anyway (a test that forgot to cut
/// must not hang the machine).
const FROZEN_WAIT_MAX: Duration = Duration::from_secs(120);

/// A mutating call, as the log records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Write(PathBuf),
    Truncate(PathBuf),
    Create(PathBuf),
    Mkdir(PathBuf),
    Rename(PathBuf, PathBuf),
    Unlink(PathBuf),
    Rmdir(PathBuf),
    Fsync(PathBuf),
    FsyncDir(PathBuf),
}

#[derive(Debug)]
enum Body {
    File { data: Vec<u8>, durable: Vec<u8> },
    Dir { entries: BTreeMap<OsString, u64>, durable: BTreeMap<OsString, u64> },
}

#[derive(Debug)]
struct Inode {
    body: Body,
    mode: u16,
    /// Where it was last named, for the log (a file may have two names after a cut).
    path: PathBuf,
}

#[derive(Debug)]
struct State {
    inodes: BTreeMap<u64, Inode>,
    next_ino: u64,
    /// Mutating calls left before the freeze, if armed.
    armed: Option<u64>,
    frozen: bool,
    /// Cuts so far: a call frozen before cut `k` fails once `cuts > k`.
    cuts: u64,
    log: VecDeque<Op>,
    applied: u64,
}

/// The file system's handle: give a clone to `mount`, keep one to arm and cut.
#[derive(Clone)]
pub struct LazyFs {
    state: Arc<Mutex<State>>,
    thawed: Arc<Condvar>,
}

impl Default for LazyFs {
    fn default() -> Self {
        Self::new()
    }
}

impl LazyFs {
    pub fn new() -> Self {
        let root = Inode { body: Body::Dir { entries: BTreeMap::new(), durable: BTreeMap::new() }, mode: 0o755, path: PathBuf::from("/") };
        let state = State { inodes: BTreeMap::from([(1, root)]), next_ino: 2, armed: None, frozen: false, cuts: 0, log: VecDeque::new(), applied: 0 };
        LazyFs { state: Arc::new(Mutex::new(state)), thawed: Arc::new(Condvar::new()) }
    }

    /// Mounts it at `dir` (which must exist); unmounted when the session is dropped.
    pub fn mount(&self, dir: &Path) -> std::io::Result<fuser::BackgroundSession> {
        let mut config = fuser::Config::default();
        config.mount_options = vec![fuser::MountOption::FSName("dfs-lazyfs".into()), fuser::MountOption::DefaultPermissions];
        config.acl = fuser::SessionACL::All;
        fuser::spawn_mount(self.clone(), dir, &config)
    }

    /// Freezes the file system at the `n`th mutating call from now (1: the next one).
    pub fn arm(&self, n: u64) {
        self.state.lock().unwrap().armed = Some(n.max(1));
    }

    /// Freezes the file system now, between two calls.
    pub fn freeze(&self) {
        let mut s = self.state.lock().unwrap();
        s.frozen = true;
        s.armed = None;
    }

    pub fn frozen(&self) -> bool {
        self.state.lock().unwrap().frozen
    }

    /// Mutating calls applied since the file system was made.
    pub fn applied(&self) -> u64 {
        self.state.lock().unwrap().applied
    }

    /// The power cut: every file and directory back to what was synced.
    pub fn cut(&self) {
        let mut s = self.state.lock().unwrap();
        for inode in s.inodes.values_mut() {
            match &mut inode.body {
                Body::File { data, durable } => *data = durable.clone(),
                Body::Dir { entries, durable } => *entries = durable.clone(),
            }
        }
        s.frozen = false;
        s.armed = None;
        s.cuts += 1;
        self.thawed.notify_all();
    }

    /// Every file (by path in this file system) whose name ends with `suffix`, as processes
    /// see them now: read from the model, never through the mount (the test must not wait on
    /// its own frozen file system).
    pub fn files_ending_with(&self, suffix: &str) -> Vec<PathBuf> {
        let s = self.state.lock().unwrap();
        let mut out = Vec::new();
        let mut stack = vec![(1u64, PathBuf::from("/"))];
        while let Some((ino, path)) = stack.pop() {
            let Some(Body::Dir { entries, .. }) = s.inodes.get(&ino).map(|i| &i.body) else {
                continue;
            };
            for (name, child) in entries {
                let p = path.join(name);
                match s.inodes.get(child).map(|i| &i.body) {
                    Some(Body::Dir { .. }) => stack.push((*child, p)),
                    Some(Body::File { .. }) if name.to_string_lossy().ends_with(suffix) => out.push(p),
                    _ => {}
                }
            }
        }
        out
    }

    pub fn log(&self) -> Vec<Op> {
        self.state.lock().unwrap().log.iter().cloned().collect()
    }

    /// Takes the state for a mutating call: `None` (after waiting for the cut) if the file
    /// system is or becomes frozen.
    fn mutate(&self) -> Option<std::sync::MutexGuard<'_, State>> {
        let mut s = self.state.lock().unwrap();
        if !s.frozen {
            if let Some(left) = s.armed.as_mut() {
                *left -= 1;
                if *left == 0 {
                    s.frozen = true;
                    s.armed = None;
                }
            }
        }
        if !s.frozen {
            s.applied += 1;
        }
        self.unless_frozen(s)
    }

    /// Takes the state for a reading call: waits out a freeze too (a dead machine answers
    /// nothing).
    fn read_state(&self) -> Option<std::sync::MutexGuard<'_, State>> {
        self.unless_frozen(self.state.lock().unwrap())
    }

    /// `s` if the file system runs; if it is frozen, `None` once the cut has come.
    fn unless_frozen<'a>(&self, s: std::sync::MutexGuard<'a, State>) -> Option<std::sync::MutexGuard<'a, State>> {
        if !s.frozen {
            return Some(s);
        }
        let cut = s.cuts;
        let _ = self.thawed.wait_timeout_while(s, FROZEN_WAIT_MAX, |s| s.cuts == cut).unwrap();
        None
    }
}

fn record(s: &mut State, op: Op) {
    if s.log.len() >= LOG_MAX {
        s.log.pop_front();
    }
    s.log.push_back(op);
}

fn attr(ino: u64, inode: &Inode) -> FileAttr {
    let (kind, size, nlink) = match &inode.body {
        Body::File { data, .. } => (FileType::RegularFile, data.len() as u64, 1),
        Body::Dir { .. } => (FileType::Directory, 0, 2),
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind,
        perm: inode.mode,
        nlink,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl State {
    fn entries(&self, dir: u64) -> Result<&BTreeMap<OsString, u64>, Errno> {
        match self.inodes.get(&dir).map(|i| &i.body) {
            Some(Body::Dir { entries, .. }) => Ok(entries),
            Some(Body::File { .. }) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn entries_mut(&mut self, dir: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match self.inodes.get_mut(&dir).map(|i| &mut i.body) {
            Some(Body::Dir { entries, .. }) => Ok(entries),
            Some(Body::File { .. }) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn child_path(&self, dir: u64, name: &OsStr) -> PathBuf {
        self.inodes.get(&dir).map(|i| i.path.join(name)).unwrap_or_else(|| PathBuf::from(name))
    }

    /// Adds `name` in `dir` for a new inode with `body`.
    /// Adds `name` in `dir` for a new inode (a directory or an empty file) and logs the call.
    fn make(&mut self, dir: u64, name: &OsStr, is_dir: bool, mode: u32) -> Result<FileAttr, Errno> {
        if self.entries(dir)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let path = self.child_path(dir, name);
        let body = if is_dir { Body::Dir { entries: BTreeMap::new(), durable: BTreeMap::new() } } else { Body::File { data: Vec::new(), durable: Vec::new() } };
        let inode = Inode { body, mode: (mode & 0o7777) as u16, path: path.clone() };
        let a = attr(ino, &inode);
        self.inodes.insert(ino, inode);
        self.entries_mut(dir)?.insert(name.to_os_string(), ino);
        record(self, if is_dir { Op::Mkdir(path) } else { Op::Create(path) });
        Ok(a)
    }

    fn file_mut(&mut self, ino: u64) -> Result<&mut Vec<u8>, Errno> {
        match self.inodes.get_mut(&ino).map(|i| &mut i.body) {
            Some(Body::File { data, .. }) => Ok(data),
            Some(Body::Dir { .. }) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        }
    }
}

impl Filesystem for LazyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(s) = self.read_state() else {
            return reply.error(Errno::EIO);
        };
        match s.entries(parent.0).map(|e| e.get(name).copied()) {
            Ok(Some(ino)) => match s.inodes.get(&ino) {
                Some(inode) => reply.entry(&TTL, &attr(ino, inode), Generation(0)),
                None => reply.error(Errno::ENOENT),
            },
            Ok(None) => reply.error(Errno::ENOENT),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let Some(s) = self.read_state() else {
            return reply.error(Errno::EIO);
        };
        match s.inodes.get(&ino.0) {
            Some(inode) => reply.attr(&TTL, &attr(ino.0, inode)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let guard = if size.is_some() { self.mutate() } else { self.read_state() };
        let Some(mut s) = guard else {
            return reply.error(Errno::EIO);
        };
        if let Some(size) = size {
            match s.file_mut(ino.0) {
                Ok(data) => data.resize(size as usize, 0),
                Err(e) => return reply.error(e),
            }
            let path = s.inodes[&ino.0].path.clone();
            record(&mut s, Op::Truncate(path));
        }
        let Some(inode) = s.inodes.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if let Some(mode) = mode {
            inode.mode = (mode & 0o7777) as u16;
        }
        reply.attr(&TTL, &attr(ino.0, inode));
    }

    fn mknod(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, _rdev: u32, reply: ReplyEntry) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::ENOSYS);
        }
        let Some(mut s) = self.mutate() else {
            return reply.error(Errno::EIO);
        };
        match s.make(parent.0, name, false, mode) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        let Some(mut s) = self.mutate() else {
            return reply.error(Errno::EIO);
        };
        match s.make(parent.0, name, true, mode) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let Some(mut s) = self.mutate() else {
            return reply.error(Errno::EIO);
        };
        let found = s.entries(parent.0).map(|e| e.get(name).copied());
        match found {
            Ok(Some(ino)) if matches!(s.inodes.get(&ino).map(|i| &i.body), Some(Body::Dir { .. })) => reply.error(Errno::EISDIR),
            Ok(Some(_)) => {
                let path = s.child_path(parent.0, name);
                s.entries_mut(parent.0).expect("a directory").remove(name);
                record(&mut s, Op::Unlink(path));
                reply.ok();
            }
            Ok(None) => reply.error(Errno::ENOENT),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let Some(mut s) = self.mutate() else {
            return reply.error(Errno::EIO);
        };
        let found = s.entries(parent.0).map(|e| e.get(name).copied());
        match found {
            Ok(Some(ino)) => match s.entries(ino) {
                Ok(children) if !children.is_empty() => reply.error(Errno::ENOTEMPTY),
                Ok(_) => {
                    let path = s.child_path(parent.0, name);
                    s.entries_mut(parent.0).expect("a directory").remove(name);
                    record(&mut s, Op::Rmdir(path));
                    reply.ok();
                }
                Err(e) => reply.error(e),
            },
            Ok(None) => reply.error(Errno::ENOENT),
            Err(e) => reply.error(e),
        }
    }

    fn rename(&self, _req: &Request, parent: INodeNo, name: &OsStr, newparent: INodeNo, newname: &OsStr, flags: RenameFlags, reply: ReplyEmpty) {
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            return reply.error(Errno::EINVAL);
        }
        let Some(mut s) = self.mutate() else {
            return reply.error(Errno::EIO);
        };
        let ino = match s.entries(parent.0).map(|e| e.get(name).copied()) {
            Ok(Some(ino)) => ino,
            Ok(None) => return reply.error(Errno::ENOENT),
            Err(e) => return reply.error(e),
        };
        let replaced = match s.entries(newparent.0) {
            Ok(e) => e.get(newname).copied(),
            Err(e) => return reply.error(e),
        };
        if replaced.is_some() && flags.contains(RenameFlags::RENAME_NOREPLACE) {
            return reply.error(Errno::EEXIST);
        }
        if let Some(old) = replaced {
            let dir_over = matches!(s.inodes.get(&old).map(|i| &i.body), Some(Body::Dir { .. }));
            let is_dir = matches!(s.inodes.get(&ino).map(|i| &i.body), Some(Body::Dir { .. }));
            if dir_over != is_dir {
                return reply.error(if dir_over { Errno::EISDIR } else { Errno::ENOTDIR });
            }
        }
        let (from, to) = (s.child_path(parent.0, name), s.child_path(newparent.0, newname));
        s.entries_mut(parent.0).expect("a directory").remove(name);
        s.entries_mut(newparent.0).expect("a directory").insert(newname.to_os_string(), ino);
        if let Some(inode) = s.inodes.get_mut(&ino) {
            inode.path = to.clone();
        }
        record(&mut s, Op::Rename(from, to));
        reply.ok();
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let Some(s) = self.read_state() else {
            return reply.error(Errno::EIO);
        };
        match s.inodes.get(&ino.0) {
            // Direct I/O: reads and writes come here, never from or to the page cache.
            Some(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, size: u32, _flags: OpenFlags, _lock_owner: Option<LockOwner>, reply: ReplyData) {
        let Some(s) = self.read_state() else {
            return reply.error(Errno::EIO);
        };
        match s.inodes.get(&ino.0).map(|i| &i.body) {
            Some(Body::File { data, .. }) => {
                let start = (offset as usize).min(data.len());
                let end = (start + size as usize).min(data.len());
                reply.data(&data[start..end]);
            }
            Some(Body::Dir { .. }) => reply.error(Errno::EISDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        bytes: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(mut s) = self.mutate() else {
            return reply.error(Errno::EIO);
        };
        let data = match s.file_mut(ino.0) {
            Ok(d) => d,
            Err(e) => return reply.error(e),
        };
        let end = offset as usize + bytes.len();
        if data.len() < end {
            data.resize(end, 0);
        }
        data[offset as usize..end].copy_from_slice(bytes);
        let path = s.inodes[&ino.0].path.clone();
        record(&mut s, Op::Write(path));
        reply.written(bytes.len() as u32);
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let Some(mut s) = self.mutate() else {
            return reply.error(Errno::EIO);
        };
        let Some(inode) = s.inodes.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        match &mut inode.body {
            Body::File { data, durable } => *durable = data.clone(),
            // fsync on a directory's descriptor (what `File::sync_all` on a directory does).
            Body::Dir { entries, durable } => *durable = entries.clone(),
        }
        let op = match inode.body {
            Body::File { .. } => Op::Fsync(inode.path.clone()),
            Body::Dir { .. } => Op::FsyncDir(inode.path.clone()),
        };
        record(&mut s, op);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let Some(s) = self.read_state() else {
            return reply.error(Errno::EIO);
        };
        match s.entries(ino.0) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let Some(s) = self.read_state() else {
            return reply.error(Errno::EIO);
        };
        let entries = match s.entries(ino.0) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        let mut all: Vec<(u64, FileType, OsString)> = vec![(ino.0, FileType::Directory, ".".into()), (ino.0, FileType::Directory, "..".into())];
        for (name, child) in entries {
            let kind = match s.inodes.get(child).map(|i| &i.body) {
                Some(Body::Dir { .. }) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            all.push((*child, kind, name.clone()));
        }
        for (i, (child, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let Some(mut s) = self.mutate() else {
            return reply.error(Errno::EIO);
        };
        let Some(inode) = s.inodes.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let Body::Dir { entries, durable } = &mut inode.body else {
            return reply.error(Errno::ENOTDIR);
        };
        *durable = entries.clone();
        let path = inode.path.clone();
        record(&mut s, Op::FsyncDir(path));
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let Some(s) = self.read_state() else {
            return reply.error(Errno::EIO);
        };
        let used: u64 = s.inodes.values().map(|i| if let Body::File { data, .. } = &i.body { data.len() as u64 } else { 0 }).sum();
        let blocks = CAPACITY_BYTES / 4096;
        let free = blocks.saturating_sub(used.div_ceil(4096));
        reply.statfs(blocks, free, free, 1 << 20, 1 << 20, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, _flags: i32, reply: ReplyCreate) {
        let Some(mut s) = self.mutate() else {
            return reply.error(Errno::EIO);
        };
        match s.make(parent.0, name, false, mode) {
            Ok(a) => reply.created(&TTL, &a, Generation(0), FileHandle(0), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }
}

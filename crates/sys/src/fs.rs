//! Confined filesystem access: a directory handle whose every path stays beneath it.
//!
//! Paths from drivers and from tar archives are untrusted. [`Dir`] checks them lexically
//! (relative, no `..`, no NUL, bounded length) and then resolves them with `openat2`:
//! `RESOLVE_BENEATH` for driver paths (a symlink pointing out is an error: `denied`), or
//! `RESOLVE_IN_ROOT` for tar entries (chroot semantics: an absolute symlink in a layer means
//! the layer's own root, as it will when the layer is a container's `/`). The final component
//! of a path is then operated on with an `*at` syscall relative to its resolved parent, never
//! following a final symlink, so no check-then-use gap lets a path leave the directory.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{
    AtFlags, Dev, FileType, Mode, OFlags, ResolveFlags, StatxAttributes, StatxFlags, Timespec,
    Timestamps,
};

use super::error::{ErrorKind, SysError, SysResult};

/// The longest path accepted from a driver or a tar entry.
pub const MAX_PATH_LEN: usize = 4096;
/// The most xattr names (bytes of the name list) read from one file.
pub const MAX_XATTR_LIST: usize = 64 * 1024;
/// The largest xattr value read or written.
pub const MAX_XATTR_VALUE: usize = 64 * 1024;
/// The deepest a tree the host builds or reads may be: a tar entry with more path components
/// is refused (apply), and copying, comparing or exporting a tree with entries deeper than
/// this fails with an error naming the limit. Removal has no depth limit
/// ([`remove_tree_at`]): it must remove whatever the kernel let a container make.
pub const MAX_TREE_DEPTH: usize = 1024;

/// The message of every error about [`MAX_TREE_DEPTH`].
pub fn too_deep() -> String {
    format!("directory tree deeper than {MAX_TREE_DEPTH} levels (the host's tree depth limit)")
}

/// What kind of file a path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Regular,
    Directory,
    Symlink,
    Fifo,
    CharDevice,
    BlockDevice,
    Socket,
}

impl FileKind {
    pub(super) fn from_type(t: FileType) -> FileKind {
        match t {
            FileType::Directory => FileKind::Directory,
            FileType::Symlink => FileKind::Symlink,
            FileType::Fifo => FileKind::Fifo,
            FileType::CharacterDevice => FileKind::CharDevice,
            FileType::BlockDevice => FileKind::BlockDevice,
            FileType::Socket => FileKind::Socket,
            _ => FileKind::Regular,
        }
    }

    pub fn file_type(self) -> FileType {
        match self {
            FileKind::Regular => FileType::RegularFile,
            FileKind::Directory => FileType::Directory,
            FileKind::Symlink => FileType::Symlink,
            FileKind::Fifo => FileType::Fifo,
            FileKind::CharDevice => FileType::CharacterDevice,
            FileKind::BlockDevice => FileType::BlockDevice,
            FileKind::Socket => FileType::Socket,
        }
    }
}

/// What `lstat` says of a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub kind: FileKind,
    /// Permission and special bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u64,
    pub rdev: u64,
    pub dev: u64,
    pub ino: u64,
    pub atime_sec: i64,
    pub atime_nsec: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
}

impl Stat {
    pub(super) fn from_raw(st: &rustix::fs::Stat) -> Stat {
        Stat {
            kind: FileKind::from_type(FileType::from_raw_mode(st.st_mode)),
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size as u64,
            nlink: st.st_nlink,
            rdev: st.st_rdev,
            dev: st.st_dev,
            ino: st.st_ino,
            atime_sec: st.st_atime,
            atime_nsec: st.st_atime_nsec as u32,
            mtime_sec: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec as u32,
        }
    }
}

/// How often a lookup that raced a rename or mount is retried before EAGAIN is returned.
const OPENAT2_RETRIES: u32 = 64;

/// How paths beneath a [`Dir`] are resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confinement {
    /// Symlinks may not lead out: leaving is an error (driver paths). Mounts inside the
    /// directory may be entered.
    Beneath,
    /// Absolute symlinks and `..` resolve against the directory as if it were `/` (tar
    /// entries of a layer).
    InRoot,
    /// [`Confinement::Beneath`] without any symlink on the way (mount plan paths): a
    /// directory handed to the kernel for a mount is reached through real directories only,
    /// so the path that was checked is the path of what gets mounted.
    NoSymlinks,
}

/// An open directory that confines every path resolved through it.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
    confinement: Confinement,
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Checks an untrusted relative path lexically; `.` (or empty after normalising) means the
/// directory itself.
pub fn check_relative(path: &str) -> SysResult<PathBuf> {
    if path.len() > MAX_PATH_LEN {
        return Err(SysError::invalid("check path", path, "path too long"));
    }
    if path.as_bytes().contains(&0) {
        return Err(SysError::invalid("check path", path, "path contains NUL"));
    }
    let p = Path::new(path);
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(SysError::escape(
                    "check path",
                    path,
                    "`..` may not be used: paths stay beneath the driver home",
                ));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(SysError::escape(
                    "check path",
                    path,
                    "absolute paths are not allowed: paths are relative to the driver home",
                ));
            }
        }
    }
    Ok(out)
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(rustix::io::Errno) -> SysError + 'a {
    move |e| SysError::from_errno(op, path, e)
}

/// The `/proc/self/fd/N/NAME` path naming `name` in the directory `fd`; used for the xattr
/// syscalls, which have no `*at` form. The parent is already resolved; `l*` variants then
/// keep the final component from being followed.
pub(super) fn proc_path(fd: BorrowedFd<'_>, name: &OsStr) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    if !name.is_empty() {
        p.push(name);
    }
    p
}

impl Dir {
    /// Opens a host-chosen (trusted) directory.
    pub fn open_ambient(path: &Path) -> SysResult<Dir> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_err("open", path))?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
            confinement: Confinement::Beneath,
        })
    }

    /// Opens (creating, mode 0700) a directory that only this process's user may use: the
    /// host's own mount points live in one. The directory must not be a symlink and must be
    /// owned by the effective user; its mode is set back to 0700 when it is wider.
    pub fn open_private(path: &Path) -> SysResult<Dir> {
        match rustix::fs::mkdir(path, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(SysError::from_errno("mkdir", path, e)),
        }
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_err("open", path))?;
        let st = rustix::fs::fstat(&fd).map_err(io_err("fstat", path))?;
        if st.st_uid != rustix::process::geteuid().as_raw() {
            return Err(SysError::without_errno(
                ErrorKind::Denied,
                "open",
                path,
                format!("owned by uid {}, not by the user running strata", st.st_uid),
            ));
        }
        if st.st_mode & 0o077 != 0 {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700)).map_err(io_err("fchmod", path))?;
        }
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
            confinement: Confinement::NoSymlinks,
        })
    }

    /// Opens (creating, mode 0700, owned by the effective user) the directory `name`, one
    /// component, directly in this one; a symlink there is not followed (`denied`).
    pub fn private_subdir(&self, name: &str) -> SysResult<Dir> {
        let rel = self.checked(name)?;
        if rel.components().count() != 1 {
            return Err(SysError::invalid("mkdir", &rel, "not a single name"));
        }
        match rustix::fs::mkdirat(&self.fd, &rel, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(SysError::from_errno("mkdirat", self.path.join(&rel), e)),
        }
        let fd = rustix::fs::openat(
            &self.fd,
            &rel,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| SysError::from_errno("openat", self.path.join(&rel), e))?;
        Ok(Dir {
            fd,
            path: self.path.join(&rel),
            confinement: self.confinement,
        })
    }

    /// The root of a mount the host created (a detached mount from `fsmount`).
    pub fn from_mount(fd: OwnedFd, path: PathBuf) -> Dir {
        Dir {
            fd,
            path,
            confinement: Confinement::Beneath,
        }
    }

    /// A directory already opened (and checked) by another `sys` function.
    pub(super) fn from_opened(fd: OwnedFd, path: PathBuf, confinement: Confinement) -> Dir {
        Dir {
            fd,
            path,
            confinement,
        }
    }

    /// How paths beneath this directory are resolved.
    pub fn confinement(&self) -> Confinement {
        self.confinement
    }

    /// The same directory, resolving paths with `confinement`.
    pub fn with_confinement(&self, confinement: Confinement) -> SysResult<Dir> {
        let fd = self.fd.try_clone().map_err(|e| {
            SysError::from_errno(
                "dup",
                &self.path,
                rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO),
            )
        })?;
        Ok(Dir {
            fd,
            path: self.path.clone(),
            confinement,
        })
    }

    /// A name for messages (the host path it was opened as, plus the relative path).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn resolve_flags(&self) -> ResolveFlags {
        match self.confinement {
            // Driver paths may enter mounts inside the home: every one was made by the host
            // from a checked plan or dataset (zfs mounts a layer's dataset at `layers/ID`).
            Confinement::Beneath => ResolveFlags::NO_MAGICLINKS | ResolveFlags::BENEATH,
            Confinement::NoSymlinks => {
                ResolveFlags::NO_MAGICLINKS | ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS
            }
            // A tar entry never leaves the layer's own filesystem.
            Confinement::InRoot => {
                ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV | ResolveFlags::IN_ROOT
            }
        }
    }

    fn display(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            rel.to_path_buf()
        }
    }

    /// Resolves `rel` (already checked) beneath this directory.
    pub fn open_raw(&self, rel: &Path, flags: OFlags) -> SysResult<OwnedFd> {
        let target = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        // With `..` in a path (a relative symlink such as overlay's `l/<LID>`), the kernel
        // answers EAGAIN when any rename or mount raced the lookup; it asks to be retried.
        let mut tries = 0;
        let opened = loop {
            match rustix::fs::openat2(
                &self.fd,
                target,
                flags | OFlags::CLOEXEC,
                Mode::empty(),
                self.resolve_flags(),
            ) {
                Err(rustix::io::Errno::AGAIN) if tries < OPENAT2_RETRIES => tries += 1,
                other => break other,
            }
        };
        opened.map_err(|e| {
            let mut err = SysError::from_errno("openat2", self.display(rel), e);
            if e == rustix::io::Errno::XDEV {
                err.kind = ErrorKind::Denied;
                err.detail = Some("the path leads outside its directory".into());
            }
            if e == rustix::io::Errno::LOOP && self.confinement == Confinement::NoSymlinks {
                err.kind = ErrorKind::Denied;
                err.detail =
                    Some("the path goes through a symlink, which is not allowed here".into());
            }
            err
        })
    }

    /// The parent directory of `rel` (resolved, as an `O_PATH` fd) and the final name.
    /// `rel` (already checked) must name something other than the directory itself.
    pub fn parent(&self, rel: &Path) -> SysResult<(OwnedFd, OsString)> {
        let name = rel
            .file_name()
            .ok_or_else(|| {
                SysError::invalid("resolve", self.display(rel), "names the directory itself")
            })?
            .to_os_string();
        let parent = rel.parent().unwrap_or(Path::new(""));
        let fd = self.open_raw(parent, OFlags::PATH | OFlags::DIRECTORY)?;
        Ok((fd, name))
    }

    fn checked(&self, path: &str) -> SysResult<PathBuf> {
        check_relative(path)
    }

    /// Opens the directory at `path` beneath this one, with the same confinement.
    pub fn open_dir(&self, path: &str) -> SysResult<Dir> {
        let rel = self.checked(path)?;
        self.open_dir_rel(&rel)
    }

    pub fn open_dir_rel(&self, rel: &Path) -> SysResult<Dir> {
        let fd = self.open_raw(rel, OFlags::PATH | OFlags::DIRECTORY)?;
        Ok(Dir {
            fd,
            path: self.path.join(rel),
            confinement: self.confinement,
        })
    }

    /// `lstat` of `path` (`.` is the directory itself).
    pub fn lstat(&self, path: &str) -> SysResult<Stat> {
        let rel = self.checked(path)?;
        self.lstat_rel(&rel)
    }

    pub fn lstat_rel(&self, rel: &Path) -> SysResult<Stat> {
        if rel.as_os_str().is_empty() {
            let st = rustix::fs::fstat(&self.fd).map_err(io_err("fstat", &self.path))?;
            return Ok(Stat::from_raw(&st));
        }
        let (parent, name) = self.parent(rel)?;
        stat_at(parent.as_fd(), &name).map_err(|e| e.at(self.display(rel)))
    }

    /// Creates one directory with exactly `mode` and owner `uid:gid`.
    pub fn mkdir(&self, path: &str, mode: u32, uid: u32, gid: u32) -> SysResult<()> {
        let rel = self.checked(path)?;
        let (parent, name) = self.parent(&rel)?;
        mkdir_at(parent.as_fd(), &name, mode, uid, gid).map_err(|e| e.at(self.display(&rel)))
    }

    /// Changes the owner of `path`, not following a final symlink.
    pub fn lchown(&self, path: &str, uid: u32, gid: u32) -> SysResult<()> {
        let rel = self.checked(path)?;
        if rel.as_os_str().is_empty() {
            return rustix::fs::chownat(
                &self.fd,
                "",
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
                AtFlags::EMPTY_PATH,
            )
            .map_err(io_err("fchownat", &self.path));
        }
        let (parent, name) = self.parent(&rel)?;
        chown_at(parent.as_fd(), &name, uid, gid).map_err(|e| e.at(self.display(&rel)))
    }

    /// Sets permission and special bits of `path`. A symlink has no mode of its own:
    /// `invalid-argument`.
    pub fn chmod(&self, path: &str, mode: u32) -> SysResult<()> {
        let rel = self.checked(path)?;
        if rel.as_os_str().is_empty() {
            return chmod_fd(self.fd.as_fd(), mode).map_err(|e| e.at(&self.path));
        }
        let (parent, name) = self.parent(&rel)?;
        chmod_at(parent.as_fd(), &name, mode).map_err(|e| e.at(self.display(&rel)))
    }

    pub fn set_xattr(&self, path: &str, name: &str, value: &[u8]) -> SysResult<()> {
        let rel = self.checked(path)?;
        let (p, n, _keep) = self.xattr_target(&rel)?;
        set_xattr_path(&p, name, value, n).map_err(|e| e.at(self.display(&rel)))
    }

    pub fn get_xattr(&self, path: &str, name: &str) -> SysResult<Option<Vec<u8>>> {
        let rel = self.checked(path)?;
        let (p, n, _keep) = self.xattr_target(&rel)?;
        get_xattr_path(&p, name, n).map_err(|e| e.at(self.display(&rel)))
    }

    pub fn list_xattrs(&self, path: &str) -> SysResult<Vec<String>> {
        let rel = self.checked(path)?;
        let (p, n, _keep) = self.xattr_target(&rel)?;
        Ok(list_xattrs_path(&p, n)
            .map_err(|e| e.at(self.display(&rel)))?
            .into_iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect())
    }

    pub fn remove_xattr(&self, path: &str, name: &str) -> SysResult<()> {
        let rel = self.checked(path)?;
        let (p, nofollow, _keep) = self.xattr_target(&rel)?;
        let r = if nofollow {
            rustix::fs::lremovexattr(&p, name)
        } else {
            rustix::fs::removexattr(&p, name)
        };
        r.map_err(|e| SysError::from_errno("removexattr", self.display(&rel), e))
    }

    /// A `/proc` path for the xattr syscalls and whether to use the no-follow variants; the
    /// returned fd keeps the parent open while the path is used.
    fn xattr_target(&self, rel: &Path) -> SysResult<(PathBuf, bool, OwnedFd)> {
        if rel.as_os_str().is_empty() {
            let fd = self.open_raw(rel, OFlags::PATH | OFlags::DIRECTORY)?;
            return Ok((proc_path(fd.as_fd(), OsStr::new("")), false, fd));
        }
        let (parent, name) = self.parent(rel)?;
        Ok((proc_path(parent.as_fd(), &name), true, parent))
    }

    /// Creates an overlay whiteout: a character device 0:0, owner 0:0, mode 0.
    pub fn make_whiteout(&self, path: &str) -> SysResult<()> {
        let rel = self.checked(path)?;
        let (parent, name) = self.parent(&rel)?;
        mknod_at(parent.as_fd(), &name, FileKind::CharDevice, 0, 0)
            .and_then(|_| chown_at(parent.as_fd(), &name, 0, 0))
            .map_err(|e| e.at(self.display(&rel)))
    }

    /// Creates a symlink at `path` to the relative `target` (an absolute target is refused:
    /// it would mean something else to every process that looks).
    pub fn symlink(&self, target: &str, path: &str) -> SysResult<()> {
        let rel = self.checked(path)?;
        if target.is_empty() || target.starts_with('/') || target.len() > MAX_PATH_LEN {
            return Err(SysError::invalid(
                "symlink",
                self.display(&rel),
                "the target must be a relative path",
            ));
        }
        let (parent, name) = self.parent(&rel)?;
        symlink_at(OsStr::new(target), parent.as_fd(), &name).map_err(|e| e.at(self.display(&rel)))
    }

    /// Sets access and modification times (seconds, nanoseconds), not following a final
    /// symlink.
    pub fn set_times(&self, path: &str, atime: (i64, u32), mtime: (i64, u32)) -> SysResult<()> {
        let rel = self.checked(path)?;
        if rel.as_os_str().is_empty() {
            let fd = self.open_raw(&rel, OFlags::RDONLY | OFlags::DIRECTORY)?;
            return rustix::fs::futimens(&fd, &timestamps(atime, mtime))
                .map_err(io_err("futimens", &self.path));
        }
        let (parent, name) = self.parent(&rel)?;
        set_times_at(parent.as_fd(), &name, atime, mtime).map_err(|e| e.at(self.display(&rel)))
    }

    /// Removes `path` and everything beneath it. Refuses (`busy`) to enter a mount point.
    pub fn remove_tree(&self, path: &str) -> SysResult<()> {
        let rel = self.checked(path)?;
        let (parent, name) = self.parent(&rel)?;
        remove_tree_at(parent.as_fd(), &name).map_err(|e| e.at(self.display(&rel)))
    }

    /// The kernel's name for the filesystem holding `path`.
    pub fn filesystem_type(&self, path: &str) -> SysResult<&'static str> {
        let rel = self.checked(path)?;
        let fd = self.open_raw(&rel, OFlags::PATH)?;
        let st = rustix::fs::fstatfs(&fd).map_err(io_err("fstatfs", &self.path))?;
        Ok(filesystem_name(st.f_type as i64))
    }
}

impl SysError {
    /// Replaces the path in a message with `path` (the caller's relative name).
    pub fn at(mut self, path: impl AsRef<Path>) -> SysError {
        self.path = path.as_ref().to_path_buf();
        self
    }
}

fn filesystem_name(magic: i64) -> &'static str {
    match magic {
        0xEF53 => "ext4",
        0x9123_683E => "btrfs",
        0x5846_5342 => "xfs",
        0x0102_1994 => "tmpfs",
        0x794C_7630 => "overlay",
        0x2FC1_2FC1 => "zfs",
        0x6573_5546 => "fuse",
        0x6969 => "nfs",
        0xCAFE_CAFE => "bcachefs",
        _ => "unknown",
    }
}

fn timestamps(atime: (i64, u32), mtime: (i64, u32)) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: atime.0,
            tv_nsec: atime.1 as _,
        },
        last_modification: Timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1 as _,
        },
    }
}

// ---- operations on one name in an already resolved directory -------------------------------

/// `lstat` of `name` in `dir`.
pub fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> SysResult<Stat> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .map(|st| Stat::from_raw(&st))
        .map_err(|e| SysError::from_errno("lstat", name, e))
}

/// Whether `name` in `dir` is the root of a mount (a different filesystem or a bind mount).
pub fn is_mount_root_at(dir: BorrowedFd<'_>, name: &OsStr) -> SysResult<bool> {
    let st = rustix::fs::statx(
        dir,
        name,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    )
    .map_err(|e| SysError::from_errno("statx", name, e))?;
    Ok(st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT)
        && st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT))
}

/// Creates directory `name` with exactly `mode` (special bits included) owned `uid:gid`.
pub fn mkdir_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32, uid: u32, gid: u32) -> SysResult<()> {
    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700))
        .map_err(|e| SysError::from_errno("mkdirat", name, e))?;
    chown_at(dir, name, uid, gid)?;
    chmod_at(dir, name, mode)
}

pub fn chown_at(dir: BorrowedFd<'_>, name: &OsStr, uid: u32, gid: u32) -> SysResult<()> {
    rustix::fs::chownat(
        dir,
        name,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| SysError::from_errno("fchownat", name, e))
}

/// Sets the mode of `name` (not a symlink) through an `O_PATH` descriptor of it, so the
/// inode changed is the one looked up, whatever happens to the name meanwhile.
pub fn chmod_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> SysResult<()> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| SysError::from_errno("openat", name, e))?;
    chmod_fd(fd.as_fd(), mode).map_err(|e| e.at(name))
}

fn chmod_fd(fd: BorrowedFd<'_>, mode: u32) -> SysResult<()> {
    let st = rustix::fs::fstat(fd).map_err(|e| SysError::from_errno("fstat", "", e))?;
    if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
        return Err(SysError::invalid(
            "chmod",
            "",
            "a symlink has no mode of its own",
        ));
    }
    rustix::fs::chmodat(
        rustix::fs::CWD,
        proc_path(fd, OsStr::new("")),
        Mode::from_raw_mode(mode & 0o7777),
        AtFlags::empty(),
    )
    .map_err(|e| SysError::from_errno("chmod", "", e))
}

pub fn set_times_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    atime: (i64, u32),
    mtime: (i64, u32),
) -> SysResult<()> {
    rustix::fs::utimensat(
        dir,
        name,
        &timestamps(atime, mtime),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| SysError::from_errno("utimensat", name, e))
}

/// Writes all of `buf` to `file`; a full disk or quota is `NoSpace`.
pub fn write_all(file: &File, mut buf: &[u8]) -> SysResult<()> {
    while !buf.is_empty() {
        match rustix::io::write(file, buf) {
            Ok(0) => {
                return Err(SysError::from_errno("write", "", rustix::io::Errno::IO));
            }
            Ok(n) => buf = &buf[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(SysError::from_errno("write", "", e)),
        }
    }
    Ok(())
}

/// Bytes read from each side per step of [`same_content`]: two such buffers are all the
/// memory a comparison takes, whatever the files' sizes.
pub const COMPARE_CHUNK: usize = 64 * 1024;

/// Fills as much of `buf` as `file` has left (short only at end of file).
fn read_full(file: &File, name: &OsStr, buf: &mut [u8]) -> SysResult<usize> {
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::read(file, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(SysError::from_errno("read", name, e)),
        }
    }
    Ok(got)
}

/// Whether `a` and `b` hold the same bytes, read from their current offsets to the end, in
/// [`COMPARE_CHUNK`]s; stops at the first difference. `name` is for errors.
pub fn same_content(a: &File, b: &File, name: &OsStr) -> SysResult<bool> {
    let mut ba = vec![0u8; COMPARE_CHUNK];
    let mut bb = vec![0u8; COMPARE_CHUNK];
    loop {
        let na = read_full(a, name, &mut ba)?;
        let nb = read_full(b, name, &mut bb)?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na < COMPARE_CHUNK {
            return Ok(true);
        }
    }
}

/// Sets owner, mode (special bits included, after the owner: `chown` clears set-id bits)
/// and times of a regular file through the descriptor it was created with: no lookup, so
/// nothing can swap the name meanwhile, and three syscalls instead of a lookup each.
pub fn set_file_metadata(
    file: &File,
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: (i64, u32),
) -> SysResult<()> {
    rustix::fs::fchown(
        file,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
    .map_err(|e| SysError::from_errno("fchown", "", e))?;
    rustix::fs::fchmod(file, Mode::from_raw_mode(mode & 0o7777))
        .map_err(|e| SysError::from_errno("fchmod", "", e))?;
    rustix::fs::futimens(file, &timestamps(mtime, mtime))
        .map_err(|e| SysError::from_errno("futimens", "", e))
}

/// Creates a fifo, socket or device node `name`.
pub fn mknod_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    kind: FileKind,
    mode: u32,
    rdev: u64,
) -> SysResult<()> {
    rustix::fs::mknodat(
        dir,
        name,
        kind.file_type(),
        Mode::from_raw_mode(mode & 0o777),
        rdev as Dev,
    )
    .map_err(|e| SysError::from_errno("mknodat", name, e))
}

pub fn symlink_at(target: &OsStr, dir: BorrowedFd<'_>, name: &OsStr) -> SysResult<()> {
    rustix::fs::symlinkat(target, dir, name).map_err(|e| SysError::from_errno("symlinkat", name, e))
}

pub fn readlink_at(dir: BorrowedFd<'_>, name: &OsStr) -> SysResult<OsString> {
    rustix::fs::readlinkat(dir, name, Vec::new())
        .map(|c| OsString::from(OsStr::from_bytes(c.as_bytes())))
        .map_err(|e| SysError::from_errno("readlinkat", name, e))
}

/// Hard-links `old` (in `old_dir`) as `new` (in `new_dir`), not following a symlink.
pub fn link_at(
    old_dir: BorrowedFd<'_>,
    old: &OsStr,
    new_dir: BorrowedFd<'_>,
    new: &OsStr,
) -> SysResult<()> {
    rustix::fs::linkat(old_dir, old, new_dir, new, AtFlags::empty())
        .map_err(|e| SysError::from_errno("linkat", new, e))
}

/// Renames `old` in `old_dir` to `new` in `new_dir` (the same filesystem), never replacing
/// anything already at `new` (`RENAME_NOREPLACE`). On a filesystem without
/// `RENAME_NOREPLACE` (zfs-fuse, older FUSE filesystems: `EINVAL`), checks that `new` is free
/// and renames plainly: callers hold the store's lock over directories only they write.
pub fn rename_noreplace_at(
    old_dir: BorrowedFd<'_>,
    old: &OsStr,
    new_dir: BorrowedFd<'_>,
    new: &OsStr,
) -> SysResult<()> {
    let flags = rustix::fs::RenameFlags::NOREPLACE;
    match rustix::fs::renameat_with(old_dir, old, new_dir, new, flags) {
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
            match stat_at(new_dir, new) {
                Ok(_) => Err(SysError::from_errno(
                    "renameat",
                    new,
                    rustix::io::Errno::EXIST,
                )),
                Err(s) if s.kind == ErrorKind::NotFound => {
                    rustix::fs::renameat(old_dir, old, new_dir, new)
                        .map_err(|e| SysError::from_errno("renameat", old, e))
                }
                Err(s) => Err(s),
            }
        }
        r => r.map_err(|e| SysError::from_errno("renameat2", old, e)),
    }
}

pub fn unlink_at(dir: BorrowedFd<'_>, name: &OsStr, is_dir: bool) -> SysResult<()> {
    let flags = if is_dir {
        AtFlags::REMOVEDIR
    } else {
        AtFlags::empty()
    };
    rustix::fs::unlinkat(dir, name, flags).map_err(|e| SysError::from_errno("unlinkat", name, e))
}

/// Opens directory `name` in `dir` for reading, not following a symlink.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> SysResult<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| SysError::from_errno("openat", name, e))
}

/// Opens regular file `name` in `dir` for reading, not following a symlink.
pub fn open_file_at(dir: BorrowedFd<'_>, name: &OsStr) -> SysResult<File> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .map(File::from)
    .map_err(|e| SysError::from_errno("openat", name, e))
}

/// How a file found by name differs from what an earlier `lstat` of the name said, if it does:
/// another kind, or another inode.
fn changed_since(now: &Stat, expected: &Stat) -> Option<String> {
    if now.kind != expected.kind {
        Some(format!(
            "changed while being opened: now a {:?}, was a {:?}",
            now.kind, expected.kind
        ))
    } else if (now.dev, now.ino) != (expected.dev, expected.ino) {
        Some("changed while being opened: another file took its name".into())
    } else {
        None
    }
}

/// Opens regular file `name` in `dir` for reading, provided it is still the file an earlier
/// `lstat` described (`expected`: a regular file, same device and inode); else `denied`.
///
/// Between that `lstat` and an open by name, a driver could put a device node, a fifo or a
/// symlink in its place: opening a device can have effects of its own (a tape rewinds, a
/// watchdog arms) and reading a fifo blocks. So the name is opened `O_PATH | O_NOFOLLOW` —
/// which opens nothing, follows nothing and cannot block — checked with `fstat`, and only then
/// reopened for reading through `/proc/self/fd`, which reaches that same inode whatever the
/// name points at by then.
pub fn open_regular_checked(dir: BorrowedFd<'_>, name: &OsStr, expected: &Stat) -> SysResult<File> {
    if expected.kind != FileKind::Regular {
        return Err(SysError::invalid("open", name, "not a regular file"));
    }
    let pinned = rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| SysError::from_errno("openat(O_PATH)", name, e))?;
    check_unchanged(pinned.as_fd(), name, expected)?;
    let file = rustix::fs::open(
        proc_path(pinned.as_fd(), OsStr::new("")),
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map(File::from)
    .map_err(|e| SysError::from_errno("open(/proc/self/fd)", name, e))?;
    check_unchanged(file.as_fd(), name, expected)?;
    Ok(file)
}

/// `denied` unless the file open at `fd` is still what `expected` (an earlier `lstat` of
/// `name`) described: same kind, device and inode.
pub(super) fn check_unchanged(fd: BorrowedFd<'_>, name: &OsStr, expected: &Stat) -> SysResult<()> {
    let now = rustix::fs::fstat(fd)
        .map(|st| Stat::from_raw(&st))
        .map_err(|e| SysError::from_errno("fstat", name, e))?;
    match changed_since(&now, expected) {
        Some(why) => Err(SysError::without_errno(
            ErrorKind::Denied,
            "open",
            name,
            why,
        )),
        None => Ok(()),
    }
}

/// Opens directory `name` in `dir` for reading, provided it is still the directory an
/// earlier `lstat` described (same device and inode); else `denied`. For walks that decide
/// from the `lstat` whether and how to descend.
pub fn open_dir_checked(dir: BorrowedFd<'_>, name: &OsStr, expected: &Stat) -> SysResult<OwnedFd> {
    let fd = open_dir_at(dir, name)?;
    check_unchanged(fd.as_fd(), name, expected)?;
    Ok(fd)
}

/// Whether the directory open at `fd` is the root of a mount.
pub fn is_mount_root_fd(fd: BorrowedFd<'_>) -> SysResult<bool> {
    let st = rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS)
        .map_err(|e| SysError::from_errno("statx", "", e))?;
    Ok(st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT)
        && st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT))
}

/// Creates regular file `name` in `dir` (which must not exist) for writing.
pub fn create_file_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> SysResult<File> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode & 0o777),
    )
    .map(File::from)
    .map_err(|e| SysError::from_errno("openat(O_CREAT)", name, e))
}

/// The names in directory `fd` (without `.` and `..`), sorted.
pub fn read_dir_names(fd: BorrowedFd<'_>) -> SysResult<Vec<OsString>> {
    let mut dir =
        rustix::fs::Dir::read_from(fd).map_err(|e| SysError::from_errno("readdir", "", e))?;
    let mut names = Vec::new();
    while let Some(entry) = dir.read() {
        let entry = entry.map_err(|e| SysError::from_errno("readdir", "", e))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsString::from(OsStr::from_bytes(name)));
        }
    }
    names.sort();
    Ok(names)
}

/// Removes `name` in `dir` and everything beneath it, never following symlinks and never
/// entering a mount point (`busy`). There is no depth limit and the descriptors held stay
/// bounded ([`super::tree::walk_post_order`]): removal must work on any tree the kernel let
/// someone make, or one container's layer could never be removed.
pub fn remove_tree_at(dir: BorrowedFd<'_>, name: &OsStr) -> SysResult<()> {
    let st = stat_at(dir, name)?;
    if st.kind != FileKind::Directory {
        return unlink_at(dir, name, false);
    }
    let enterable = |dir: BorrowedFd<'_>, name: &OsStr, st: &Stat| -> SysResult<()> {
        if is_mount_root_at(dir, name)? {
            return Err(SysError::without_errno(
                ErrorKind::Busy,
                "remove",
                name,
                "a filesystem is mounted there",
            ));
        }
        // Make sure the directory can be emptied even if it is 0000 and we lack CAP_DAC_*.
        if st.mode & 0o700 != 0o700 {
            let _ = chmod_at(dir, name, st.mode | 0o700);
        }
        Ok(())
    };
    enterable(dir, name, &st)?;
    let top = open_dir_checked(dir, name, &st)?;
    super::tree::walk_post_order(
        top.as_fd(),
        &mut |dir, child, cst| {
            if cst.kind != FileKind::Directory {
                unlink_at(dir, child, false)?;
                return Ok(super::tree::Step::Skip);
            }
            enterable(dir, child, cst)?;
            Ok(super::tree::Step::Enter)
        },
        &mut |parent, child, _| unlink_at(parent, child, true),
    )
    .map_err(|e| {
        let p = Path::new(name).join(&e.path);
        e.at(p)
    })?;
    drop(top);
    unlink_at(dir, name, true)
}

// ---- xattrs ---------------------------------------------------------------------------------

pub fn set_xattr_path(path: &Path, name: &str, value: &[u8], nofollow: bool) -> SysResult<()> {
    if value.len() > MAX_XATTR_VALUE {
        return Err(SysError::invalid(
            "setxattr",
            path,
            format!("xattr {name} value too large"),
        ));
    }
    let r = if nofollow {
        rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty())
    } else {
        rustix::fs::setxattr(path, name, value, rustix::fs::XattrFlags::empty())
    };
    r.map_err(|e| SysError::from_errno("setxattr", path, e))
}

pub fn get_xattr_path(path: &Path, name: &str, nofollow: bool) -> SysResult<Option<Vec<u8>>> {
    let mut buf = vec![0u8; MAX_XATTR_VALUE];
    let r = if nofollow {
        rustix::fs::lgetxattr(path, name, &mut buf[..])
    } else {
        rustix::fs::getxattr(path, name, &mut buf[..])
    };
    match r {
        Ok(n) => {
            buf.truncate(n);
            Ok(Some(buf))
        }
        Err(rustix::io::Errno::NODATA) => Ok(None),
        Err(e) => Err(SysError::from_errno("getxattr", path, e)),
    }
}

pub fn list_xattrs_path(path: &Path, nofollow: bool) -> SysResult<Vec<OsString>> {
    let mut buf = vec![0u8; MAX_XATTR_LIST];
    let r = if nofollow {
        rustix::fs::llistxattr(path, &mut buf[..])
    } else {
        rustix::fs::listxattr(path, &mut buf[..])
    };
    let n = match r {
        Ok(n) => n,
        Err(rustix::io::Errno::OPNOTSUPP) => 0,
        Err(e) => return Err(SysError::from_errno("listxattr", path, e)),
    };
    let mut names: Vec<OsString> = buf[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| OsString::from(OsStr::from_bytes(s)))
        .collect();
    names.sort();
    Ok(names)
}

/// All xattrs of `name` in `dir`, sorted by name, not following a final symlink.
pub fn xattrs_at(dir: BorrowedFd<'_>, name: &OsStr) -> SysResult<Vec<(String, Vec<u8>)>> {
    let p = proc_path(dir, name);
    let mut out = Vec::new();
    for n in list_xattrs_path(&p, true)? {
        let key = n.to_string_lossy().into_owned();
        if let Some(v) = get_xattr_path(&p, &key, true)? {
            out.push((key, v));
        }
    }
    Ok(out)
}

pub fn set_xattr_at(dir: BorrowedFd<'_>, name: &OsStr, key: &str, value: &[u8]) -> SysResult<()> {
    set_xattr_path(&proc_path(dir, name), key, value, true).map_err(|e| e.at(name))
}

/// xattr `key` of `name` in `dir` (`None` when absent), not following a final symlink.
pub fn get_xattr_at(dir: BorrowedFd<'_>, name: &OsStr, key: &str) -> SysResult<Option<Vec<u8>>> {
    get_xattr_path(&proc_path(dir, name), key, true).map_err(|e| e.at(name))
}

/// Removes xattr `key` of `name` in `dir`, not following a final symlink.
pub fn remove_xattr_at(dir: BorrowedFd<'_>, name: &OsStr, key: &str) -> SysResult<()> {
    rustix::fs::lremovexattr(proc_path(dir, name), key)
        .map_err(|e| SysError::from_errno("removexattr", Path::new(name), e))
}

// ---- file content ---------------------------------------------------------------------------

/// Clones `src`'s content into `dst` with `FICLONE`.
pub fn reflink(src: &File, dst: &File) -> SysResult<()> {
    rustix::fs::ioctl_ficlone(dst, src).map_err(|e| SysError::from_errno("ficlone", "", e))
}

#[cfg(test)]
#[path = "fs_tests.rs"]
mod tests;

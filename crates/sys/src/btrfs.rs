//! btrfs subvolumes and quota groups, through the kernel's ioctls.
//!
//! Why these wrappers check more than the kernel does: several btrfs ioctls act on the
//! *subvolume containing* the file they are given, not on the file. Snapshotting or limiting
//! an ordinary directory of the driver home would act on whatever subvolume holds the home,
//! possibly the filesystem's top level with the host's own files. So every operation first
//! proves that its path is the root of a subvolume (inode 256 on a btrfs filesystem), and
//! paths are resolved beneath the driver home like every other driver path.
//!
//! Deleting a subvolume that a container filled with subvolumes of its own fails with
//! `ENOTEMPTY`; [`Dir::delete_subvolume`] then walks the tree (descriptor-relative, never
//! following symlinks or entering mounts), deletes the nested subvolumes deepest first and
//! tries again, as containers/storage's btrfs driver does.
// btrfs ioctls: rustix's `ioctl` is unsafe (the kernel reads and writes the argument
// structs); each call names its opcode and argument type, with a `SAFETY:` comment.
#![allow(unsafe_code)]

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{FileType, OFlags};
use rustix::ioctl::{Opcode, Setter, Updater, ioctl, opcode};

use super::error::{ErrorKind, SysError, SysResult};
use super::fs::{Dir, FileKind, check_relative, is_mount_root_at, open_dir_at};
use super::tree::Step;

/// `statfs.f_type` of btrfs.
pub const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;
/// The inode number of every subvolume's root directory.
pub const SUBVOLUME_ROOT_INO: u64 = 256;
/// The longest subvolume name `SNAP_CREATE_V2`/`SNAP_DESTROY_V2` carry.
pub const MAX_SUBVOLUME_NAME: usize = 4039;
/// Nested subvolumes deleted beneath one subvolume before giving up.
pub const MAX_NESTED_SUBVOLUMES: usize = 100_000;

const IOCTL_MAGIC: u8 = 0x94;
const SUBVOL_RDONLY: u64 = 1 << 1;
const QUOTA_CTL_ENABLE: u64 = 1;
const QGROUP_LIMIT_MAX_RFER: u64 = 1 << 0;
/// A limit of all ones clears it (`btrfs qgroup limit none`).
const QGROUP_LIMIT_CLEAR: u64 = u64::MAX;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}

/// `struct btrfs_ioctl_vol_args_v2` (the union of size/qgroup_inherit and unused is kept as
/// its widest member, `unused[4]`; the name union as `name`).
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; 4040],
}

/// `struct btrfs_ioctl_quota_ctl_args`.
#[repr(C)]
struct QuotaCtlArgs {
    cmd: u64,
    status: u64,
}

/// `struct btrfs_ioctl_qgroup_limit_args` (`qgroupid` then `struct btrfs_qgroup_limit`).
#[repr(C)]
struct QgroupLimitArgs {
    qgroupid: u64,
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

/// `struct btrfs_ioctl_ino_lookup_args`.
#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}

const _: () = assert!(std::mem::size_of::<VolArgs>() == 4096);
const _: () = assert!(std::mem::size_of::<VolArgsV2>() == 4096);
const _: () = assert!(std::mem::size_of::<QgroupLimitArgs>() == 48);
const _: () = assert!(std::mem::size_of::<InoLookupArgs>() == 4096);

const SUBVOL_CREATE: Opcode = opcode::write::<VolArgs>(IOCTL_MAGIC, 14);
const SNAP_DESTROY: Opcode = opcode::write::<VolArgs>(IOCTL_MAGIC, 15);
const INO_LOOKUP: Opcode = opcode::read_write::<InoLookupArgs>(IOCTL_MAGIC, 18);
const SNAP_CREATE_V2: Opcode = opcode::write::<VolArgsV2>(IOCTL_MAGIC, 23);
const SUBVOL_GETFLAGS: Opcode = opcode::read::<u64>(IOCTL_MAGIC, 25);
const SUBVOL_SETFLAGS: Opcode = opcode::write::<u64>(IOCTL_MAGIC, 26);
const QUOTA_CTL: Opcode = opcode::read_write::<QuotaCtlArgs>(IOCTL_MAGIC, 40);
// The kernel declares this one `_IOR` although it only reads the argument.
const QGROUP_LIMIT: Opcode = opcode::read::<QgroupLimitArgs>(IOCTL_MAGIC, 43);
const SNAP_DESTROY_V2: Opcode = opcode::write::<VolArgsV2>(IOCTL_MAGIC, 63);

/// What one subvolume is, as [`Dir::subvolume_info`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubvolumeInfo {
    /// The subvolume's id (its quota group is `0/ID`).
    pub id: u64,
    pub read_only: bool,
}

/// `name` NUL-terminated in the name field of an ioctl argument (every one holds at least
/// [`MAX_SUBVOLUME_NAME`] bytes and the NUL).
fn name_bytes<const N: usize>(op: &'static str, name: &OsStr) -> SysResult<[u8; N]> {
    let bytes = name.as_bytes();
    if bytes.len() > MAX_SUBVOLUME_NAME {
        return Err(SysError::invalid(op, name, "subvolume name too long"));
    }
    let mut out = [0u8; N];
    out[..bytes.len()].copy_from_slice(bytes);
    Ok(out)
}

/// Whether the open file `fd` is on btrfs.
fn on_btrfs(fd: BorrowedFd<'_>) -> SysResult<bool> {
    let st = rustix::fs::fstatfs(fd).map_err(|e| SysError::from_errno("fstatfs", "", e))?;
    Ok(st.f_type as i64 == BTRFS_SUPER_MAGIC)
}

/// Whether the open directory `fd` is the root of a btrfs subvolume.
fn is_subvolume_fd(fd: BorrowedFd<'_>) -> SysResult<bool> {
    let st = rustix::fs::fstat(fd).map_err(|e| SysError::from_errno("fstat", "", e))?;
    Ok(st.st_ino == SUBVOLUME_ROOT_INO
        && FileType::from_raw_mode(st.st_mode) == FileType::Directory
        && on_btrfs(fd)?)
}

/// Fails unless `fd` is the root of a subvolume: what every btrfs operation acts on.
fn require_subvolume(op: &'static str, fd: BorrowedFd<'_>) -> SysResult<()> {
    if !on_btrfs(fd)? {
        return Err(SysError::without_errno(
            ErrorKind::Unsupported,
            op,
            "",
            "not on a btrfs filesystem",
        ));
    }
    if !is_subvolume_fd(fd)? {
        return Err(SysError::invalid(op, "", "not a btrfs subvolume"));
    }
    Ok(())
}

/// `BTRFS_IOC_SUBVOL_CREATE`: a new, empty subvolume `name` in directory `parent`.
fn create_subvolume_at(parent: BorrowedFd<'_>, name: &OsStr) -> SysResult<()> {
    if !on_btrfs(parent)? {
        return Err(SysError::without_errno(
            ErrorKind::Unsupported,
            "subvolume create",
            name,
            "not on a btrfs filesystem",
        ));
    }
    let args = VolArgs {
        fd: 0,
        name: name_bytes("subvolume create", name)?,
    };
    // SAFETY: SUBVOL_CREATE reads a `struct btrfs_ioctl_vol_args`, which `VolArgs` lays out
    // exactly (size checked at compile time); the name is NUL-terminated within it.
    unsafe { ioctl(parent, Setter::<SUBVOL_CREATE, VolArgs>::new(args)) }
        .map_err(|e| SysError::from_errno("subvolume create", name, e))
}

/// `BTRFS_IOC_SNAP_CREATE_V2`: a snapshot of subvolume `source` as `name` in `parent`.
fn snapshot_at(
    source: BorrowedFd<'_>,
    parent: BorrowedFd<'_>,
    name: &OsStr,
    read_only: bool,
) -> SysResult<()> {
    require_subvolume("subvolume snapshot", source)?;
    let args = VolArgsV2 {
        fd: i64::from(rustix::fd::AsRawFd::as_raw_fd(&source)),
        transid: 0,
        flags: if read_only { SUBVOL_RDONLY } else { 0 },
        unused: [0; 4],
        name: name_bytes("subvolume snapshot", name)?,
    };
    // SAFETY: SNAP_CREATE_V2 reads a `struct btrfs_ioctl_vol_args_v2`, laid out by
    // `VolArgsV2`; `fd` is an open descriptor borrowed for the duration of the call, and no
    // flag asks the kernel to follow the (zeroed) qgroup-inherit pointer.
    unsafe { ioctl(parent, Setter::<SNAP_CREATE_V2, VolArgsV2>::new(args)) }
        .map_err(|e| SysError::from_errno("subvolume snapshot", name, e))
}

/// `BTRFS_IOC_SNAP_DESTROY_V2` (or the v1 call on kernels before 5.7) of subvolume `name` in
/// `parent`. The outer error is a name too long to pass; the inner one the kernel's answer.
fn destroy_at(parent: BorrowedFd<'_>, name: &OsStr) -> SysResult<Result<(), rustix::io::Errno>> {
    let args = VolArgsV2 {
        fd: 0,
        transid: 0,
        flags: 0,
        unused: [0; 4],
        name: name_bytes("subvolume delete", name)?,
    };
    // SAFETY: SNAP_DESTROY_V2 reads a `struct btrfs_ioctl_vol_args_v2` laid out by
    // `VolArgsV2`; with no flags it deletes by the NUL-terminated name.
    Ok(
        match unsafe { ioctl(parent, Setter::<SNAP_DESTROY_V2, VolArgsV2>::new(args)) } {
            Err(rustix::io::Errno::NOTTY) => {
                let args = VolArgs {
                    fd: 0,
                    name: name_bytes("subvolume delete", name)?,
                };
                // SAFETY: SNAP_DESTROY reads a `struct btrfs_ioctl_vol_args`, laid out by
                // `VolArgs` with a NUL-terminated name.
                unsafe { ioctl(parent, Setter::<SNAP_DESTROY, VolArgs>::new(args)) }
            }
            other => other,
        },
    )
}

fn subvolume_flags(fd: BorrowedFd<'_>) -> SysResult<u64> {
    let mut flags: u64 = 0;
    // SAFETY: SUBVOL_GETFLAGS writes one `u64` to the pointer, which `flags` provides.
    unsafe { ioctl(fd, Updater::<SUBVOL_GETFLAGS, u64>::new(&mut flags)) }
        .map_err(|e| SysError::from_errno("subvolume getflags", "", e))?;
    Ok(flags)
}

fn set_subvolume_flags(fd: BorrowedFd<'_>, flags: u64) -> SysResult<()> {
    // SAFETY: SUBVOL_SETFLAGS reads one `u64`.
    unsafe { ioctl(fd, Setter::<SUBVOL_SETFLAGS, u64>::new(flags)) }
        .map_err(|e| SysError::from_errno("subvolume setflags", "", e))
}

/// Deletes subvolume `name` in `parent`, deleting the subvolumes nested inside it first.
fn delete_subvolume_at(parent: BorrowedFd<'_>, name: &OsStr) -> SysResult<()> {
    let fd = open_dir_at(parent, name)?;
    require_subvolume("subvolume delete", fd.as_fd()).map_err(|e| e.at(name))?;
    match destroy_at(parent, name)? {
        Ok(()) => return Ok(()),
        Err(rustix::io::Errno::NOTEMPTY) => {}
        Err(e) => return Err(SysError::from_errno("subvolume delete", name, e)),
    }
    // Subvolumes inside it. A read-only subvolume cannot lose entries, so it becomes
    // writable first (it is about to be deleted anyway).
    let flags = subvolume_flags(fd.as_fd()).map_err(|e| e.at(name))?;
    if flags & SUBVOL_RDONLY != 0 {
        set_subvolume_flags(fd.as_fd(), flags & !SUBVOL_RDONLY).map_err(|e| e.at(name))?;
    }
    let mut budget = MAX_NESTED_SUBVOLUMES;
    delete_nested(fd.as_fd(), &mut budget).map_err(|e| {
        let p = Path::new(name).join(&e.path);
        e.at(p)
    })?;
    destroy_at(parent, name)?.map_err(|e| SysError::from_errno("subvolume delete", name, e))
}

/// Deletes every subvolume beneath directory `dir` (which belongs to the subvolume being
/// deleted): each one found is deleted whole, nested ones first. The walk has no depth limit
/// and holds a bounded number of descriptors ([`super::tree::walk_post_order`]): whatever a
/// container nested in its layer, the layer can be deleted.
fn delete_nested(dir: BorrowedFd<'_>, budget: &mut usize) -> SysResult<()> {
    super::tree::walk_post_order(
        dir,
        &mut |dir, child, st| {
            if st.kind != FileKind::Directory {
                return Ok(Step::Skip);
            }
            if is_mount_root_at(dir, child)? {
                return Err(SysError::without_errno(
                    ErrorKind::Busy,
                    "subvolume delete",
                    child,
                    "a filesystem is mounted there",
                ));
            }
            let sub = open_dir_at(dir, child)?;
            if !is_subvolume_fd(sub.as_fd())? {
                return Ok(Step::Enter);
            }
            *budget = budget.checked_sub(1).ok_or_else(|| {
                SysError::invalid(
                    "subvolume delete",
                    child,
                    format!("more than {MAX_NESTED_SUBVOLUMES} nested subvolumes"),
                )
            })?;
            drop(sub);
            delete_subvolume_at(dir, child)?;
            Ok(Step::Skip)
        },
        &mut |_, _, _| Ok(()),
    )
}

impl Dir {
    /// The parent of `path` (not the home itself) opened for ioctls, and the final name.
    fn parent_for_ioctl(&self, op: &'static str, path: &str) -> SysResult<(OwnedFd, OsString)> {
        let rel = check_relative(path)?;
        let name = rel
            .file_name()
            .ok_or_else(|| SysError::invalid(op, path, "names the driver home itself"))?
            .to_os_string();
        let parent = self.open_raw(
            rel.parent().unwrap_or(Path::new("")),
            OFlags::RDONLY | OFlags::DIRECTORY,
        )?;
        Ok((parent, name))
    }

    /// Creates the subvolume `path` (its parent must exist; `path` must not).
    pub fn create_subvolume(&self, path: &str) -> SysResult<()> {
        let (parent, name) = self.parent_for_ioctl("subvolume create", path)?;
        create_subvolume_at(parent.as_fd(), &name).map_err(|e| e.at(path))
    }

    /// Snapshots the subvolume `source` as the new subvolume `dest`.
    pub fn snapshot_subvolume(&self, source: &str, dest: &str, read_only: bool) -> SysResult<()> {
        let src_rel = check_relative(source)?;
        let src = self
            .open_raw(&src_rel, OFlags::RDONLY | OFlags::DIRECTORY)
            .map_err(|e| e.at(source))?;
        let (parent, name) = self.parent_for_ioctl("subvolume snapshot", dest)?;
        snapshot_at(src.as_fd(), parent.as_fd(), &name, read_only).map_err(|e| {
            if e.path.as_os_str().is_empty() {
                e.at(source)
            } else {
                e.at(dest)
            }
        })
    }

    /// Deletes the subvolume `path` and every subvolume nested inside it.
    pub fn delete_subvolume(&self, path: &str) -> SysResult<()> {
        let (parent, name) = self.parent_for_ioctl("subvolume delete", path)?;
        delete_subvolume_at(parent.as_fd(), &name).map_err(|e| {
            let rel = check_relative(path).unwrap_or_default();
            let full = rel.parent().unwrap_or(Path::new("")).join(&e.path);
            e.at(full)
        })
    }

    /// Whether `path` is the root of a btrfs subvolume (`false` for anything else,
    /// including every path on other filesystems).
    pub fn is_subvolume(&self, path: &str) -> SysResult<bool> {
        let rel = check_relative(path)?;
        let fd = self.open_raw(&rel, OFlags::PATH)?;
        let st = rustix::fs::fstat(&fd).map_err(|e| SysError::from_errno("fstat", path, e))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            return Ok(false);
        }
        is_subvolume_fd(fd.as_fd()).map_err(|e| e.at(path))
    }

    /// The id and read-only flag of the subvolume `path`.
    pub fn subvolume_info(&self, path: &str) -> SysResult<SubvolumeInfo> {
        let rel = check_relative(path)?;
        let fd = self.open_raw(&rel, OFlags::RDONLY | OFlags::DIRECTORY)?;
        require_subvolume("subvolume show", fd.as_fd()).map_err(|e| e.at(path))?;
        let mut args = InoLookupArgs {
            treeid: 0,
            objectid: SUBVOLUME_ROOT_INO,
            name: [0; 4080],
        };
        // SAFETY: INO_LOOKUP reads and writes a `struct btrfs_ioctl_ino_lookup_args`, laid
        // out by `InoLookupArgs`; with treeid 0 it reports the tree of the open file.
        unsafe { ioctl(&fd, Updater::<INO_LOOKUP, InoLookupArgs>::new(&mut args)) }
            .map_err(|e| SysError::from_errno("subvolume show", path, e))?;
        let flags = subvolume_flags(fd.as_fd()).map_err(|e| e.at(path))?;
        Ok(SubvolumeInfo {
            id: args.treeid,
            read_only: flags & SUBVOL_RDONLY != 0,
        })
    }

    /// Turns quota groups on for the whole filesystem holding subvolume `path` (nothing
    /// happens when they are on already).
    pub fn enable_quota(&self, path: &str) -> SysResult<()> {
        let rel = check_relative(path)?;
        let fd = self.open_raw(&rel, OFlags::RDONLY | OFlags::DIRECTORY)?;
        require_subvolume("quota enable", fd.as_fd()).map_err(|e| e.at(path))?;
        let mut args = QuotaCtlArgs {
            cmd: QUOTA_CTL_ENABLE,
            status: 0,
        };
        // SAFETY: QUOTA_CTL reads and writes a `struct btrfs_ioctl_quota_ctl_args`, laid out
        // by `QuotaCtlArgs`.
        unsafe { ioctl(&fd, Updater::<QUOTA_CTL, QuotaCtlArgs>::new(&mut args)) }
            .map_err(|e| SysError::from_errno("quota enable", path, e))
    }

    /// Sets (or with `None` clears) the limit on bytes referenced by subvolume `path`, its
    /// quota group `0/ID`. Fails with `unsupported` when quotas are not enabled.
    pub fn set_qgroup_limit(&self, path: &str, limit: Option<u64>) -> SysResult<()> {
        let rel = check_relative(path)?;
        let fd = self.open_raw(&rel, OFlags::RDONLY | OFlags::DIRECTORY)?;
        require_subvolume("qgroup limit", fd.as_fd()).map_err(|e| e.at(path))?;
        let args = QgroupLimitArgs {
            // 0: the quota group of the subvolume the descriptor is in.
            qgroupid: 0,
            flags: QGROUP_LIMIT_MAX_RFER,
            max_rfer: limit.unwrap_or(QGROUP_LIMIT_CLEAR),
            max_excl: 0,
            rsv_rfer: 0,
            rsv_excl: 0,
        };
        // SAFETY: QGROUP_LIMIT reads a `struct btrfs_ioctl_qgroup_limit_args`, laid out by
        // `QgroupLimitArgs`.
        unsafe { ioctl(&fd, Setter::<QGROUP_LIMIT, QgroupLimitArgs>::new(args)) }.map_err(|e| {
            let mut err = SysError::from_errno("qgroup limit", path, e);
            if e == rustix::io::Errno::NOTCONN {
                err.kind = ErrorKind::Unsupported;
                err.detail = Some("quotas are not enabled on this btrfs filesystem".into());
            }
            err
        })
    }
}

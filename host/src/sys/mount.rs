//! Mounting with the new mount API (`open_tree`, `fsopen`/`fsconfig`/`fsmount`,
//! `move_mount`).
//!
//! Every directory is passed as a file descriptor that was resolved beneath the driver home
//! before this module sees it, so a path cannot be swapped for a symlink between the check and
//! the mount. Overlay layers are given one `lowerdir+` call each (kernel ≥ 6.8) as
//! `/proc/self/fd/N` of those descriptors, so the one-page limit of the classic option string
//! never applies.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, OpenTreeFlags,
    UnmountFlags, fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen,
    mount_remount, move_mount, open_tree, unmount as sys_unmount,
};

use super::Dir;
use super::error::{SysError, SysResult};

fn fd_path(fd: &impl AsRawFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

fn attach(mount: &OwnedFd, target: &Dir, target_path: &Path) -> SysResult<()> {
    move_mount(
        mount.as_fd(),
        "",
        target.as_fd(),
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(|e| SysError::from_errno("move_mount", target_path, e))
}

/// Binds the directory `source` onto `target` (`target_path` names it in messages and for
/// the read-only remount).
pub fn bind(source: &Dir, target: &Dir, target_path: &Path, read_only: bool) -> SysResult<()> {
    let tree = open_tree(
        source.as_fd(),
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH,
    )
    .map_err(|e| SysError::from_errno("open_tree", source.path(), e))?;
    attach(&tree, target, target_path)?;
    if read_only
        && let Err(e) = mount_remount(target_path, MountFlags::BIND | MountFlags::RDONLY, "")
    {
        {
            let _ = sys_unmount(target_path, UnmountFlags::DETACH);
            return Err(SysError::from_errno(
                "mount(MS_REMOUNT|MS_RDONLY)",
                target_path,
                e,
            ));
        }
    }
    Ok(())
}

/// What an overlay mount is made of, every directory already resolved.
pub struct OverlaySpec<'a> {
    /// Nearest parent first.
    pub lower: Vec<&'a Dir>,
    pub upper: Option<&'a Dir>,
    pub work: Option<&'a Dir>,
    /// `key=value` or `flag` options, already checked against the allow-list.
    pub options: &'a [String],
    pub read_only: bool,
}

/// Whether the running kernel's overlayfs accepts `lowerdir+`.
pub fn overlay_supports_lowerdir_plus() -> bool {
    let Ok(fs) = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC) else {
        return false;
    };
    fsconfig_set_string(fs.as_fd(), "lowerdir+", "/").is_ok()
}

/// Mounts an overlay on `target`.
pub fn overlay(spec: &OverlaySpec<'_>, target: &Dir, target_path: &Path) -> SysResult<()> {
    let err = |op: &'static str| move |e| SysError::from_errno(op, target_path, e);
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(err("fsopen(overlay)"))?;
    fsconfig_set_string(fs.as_fd(), "source", "strata").map_err(err("fsconfig(source)"))?;
    for lower in &spec.lower {
        fsconfig_set_string(fs.as_fd(), "lowerdir+", fd_path(&lower.as_fd()))
            .map_err(|e| SysError::from_errno("fsconfig(lowerdir+)", lower.path(), e))?;
    }
    if let Some(upper) = spec.upper {
        fsconfig_set_string(fs.as_fd(), "upperdir", fd_path(&upper.as_fd()))
            .map_err(|e| SysError::from_errno("fsconfig(upperdir)", upper.path(), e))?;
    }
    if let Some(work) = spec.work {
        fsconfig_set_string(fs.as_fd(), "workdir", fd_path(&work.as_fd()))
            .map_err(|e| SysError::from_errno("fsconfig(workdir)", work.path(), e))?;
    }
    for option in spec.options {
        match option.split_once('=') {
            Some((k, v)) => fsconfig_set_string(fs.as_fd(), k, v),
            None => fsconfig_set_flag(fs.as_fd(), option.as_str()),
        }
        .map_err(err("fsconfig(option)"))?;
    }
    fsconfig_create(fs.as_fd()).map_err(err("fsconfig(create)"))?;
    let attrs = if spec.read_only {
        MountAttrFlags::MOUNT_ATTR_RDONLY
    } else {
        MountAttrFlags::empty()
    };
    let mnt = fsmount(fs.as_fd(), FsMountFlags::FSMOUNT_CLOEXEC, attrs).map_err(err("fsmount"))?;
    attach(&mnt, target, target_path)
}

/// Unmounts `target`; `detach` makes it lazy (`MNT_DETACH`) for a forced unmount.
pub fn unmount(target: &Path, detach: bool) -> SysResult<()> {
    let flags = if detach {
        UnmountFlags::DETACH
    } else {
        UnmountFlags::empty()
    };
    sys_unmount(target, flags).map_err(|e| SysError::from_errno("umount2", target, e))
}

/// Whether `path` is a mount point (its device differs from its parent's, or it is bind
/// mounted onto itself), from `/proc/self/mountinfo`.
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = path.to_string_lossy();
    info.lines().any(|line| {
        line.split(' ')
            .nth(4)
            .is_some_and(|mp| unescape_mountinfo(mp) == wanted)
    })
}

/// Mount points at or beneath `dir`, deepest first (from `/proc/self/mountinfo`).
pub fn mount_points_beneath(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|mp| PathBuf::from(unescape_mountinfo(mp)))
        .filter(|mp| mp.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    points.dedup();
    points
}

/// Lazily unmounts everything at or beneath `dir`, deepest first: what a test or a
/// conformance run does before deleting its scratch directory, so that the deletion never
/// walks into a mounted layer.
pub fn detach_all_beneath(dir: &Path) {
    for mp in mount_points_beneath(dir) {
        let _ = sys_unmount(&mp, UnmountFlags::DETACH);
    }
}

fn unescape_mountinfo(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&field[i + 1..i + 4], 8)
        {
            out.push(v as char);
            i += 4;
            continue;
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    out
}

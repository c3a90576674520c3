//! Mounting with the new mount API (`open_tree`, `fsopen`/`fsconfig`/`fsmount`,
//! `move_mount`).
//!
//! Every directory is passed as a file descriptor that was resolved beneath the driver home
//! before this module sees it, so a path cannot be swapped for a symlink between the check and
//! the mount. Overlay layers are given one `lowerdir+` call each (kernel ≥ 6.8) as
//! `/proc/self/fd/N` of those descriptors, so the one-page limit of the classic option string
//! never applies.
//!
//! A mount the host makes is identified by its mount id (`statx` `STATX_MNT_ID_UNIQUE`, or
//! `STATX_MNT_ID` on kernels before 6.8), and it is unmounted only through a pinned
//! descriptor of its parent directory with `UMOUNT_NOFOLLOW`, after checking that the mount
//! there is still the one recorded ([`unmount_at`]): never by a path text that something
//! else could re-point.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, OpenTreeFlags,
    UnmountFlags, fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen,
    mount_remount, move_mount, open_tree, unmount as sys_unmount,
};

use rustix::fs::{AtFlags, StatxAttributes, StatxFlags, statx};

use super::Dir;
use super::error::{SysError, SysResult};

fn fd_path(fd: &impl AsRawFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// `STATX_MNT_ID_UNIQUE` (Linux 6.8): a 64-bit mount id never reused within a boot. Older
/// kernels ignore the bit and fill the classic (reusable) `STATX_MNT_ID`.
const STATX_MNT_ID_UNIQUE: u32 = 0x4000;

fn mount_id_flags() -> StatxFlags {
    StatxFlags::MNT_ID | StatxFlags::from_bits_retain(STATX_MNT_ID_UNIQUE)
}

/// The id of the mount whose root (or any file) `fd` is on.
pub fn mount_id(fd: BorrowedFd<'_>, what: &Path) -> SysResult<u64> {
    let st = statx(fd, "", AtFlags::EMPTY_PATH, mount_id_flags())
        .map_err(|e| SysError::from_errno("statx(mnt_id)", what, e))?;
    Ok(st.stx_mnt_id)
}

/// The id of the mount whose root is `name` in `dir` (the topmost one there), or `None` when
/// `name` is not the root of a mount. `name` is not followed when it is a symlink.
pub fn mounted_id_at(dir: BorrowedFd<'_>, name: &OsStr) -> SysResult<Option<u64>> {
    let st = statx(
        dir,
        name,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS | mount_id_flags(),
    )
    .map_err(|e| SysError::from_errno("statx", name, e))?;
    let root = st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT)
        && st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT);
    Ok(root.then_some(st.stx_mnt_id))
}

/// Unmounts the mount at `name` in the directory `dir` (an `O_PATH` descriptor the caller
/// resolved and holds), provided it is the mount `expected` (its mount id); `detach` makes
/// it lazy. The path given to `umount2` is `/proc/self/fd/DIR/NAME` with `UMOUNT_NOFOLLOW`:
/// the descriptor's magic link is the pinned directory and the final name is not followed.
/// A mount point with no mount on it is left alone and answered `not-found`; another mount
/// there is answered `denied` and left alone.
pub fn unmount_at(dir: BorrowedFd<'_>, name: &OsStr, expected: u64, detach: bool) -> SysResult<()> {
    let mut path = PathBuf::from(fd_path(&dir));
    path.push(name);
    match mounted_id_at(dir, name)? {
        None => {
            return Err(SysError::without_errno(
                super::ErrorKind::NotFound,
                "umount2",
                name,
                "nothing is mounted there",
            ));
        }
        Some(id) if id != expected => {
            return Err(SysError::without_errno(
                super::ErrorKind::Denied,
                "umount2",
                name,
                format!(
                    "the mount there (id {id}) is not the one the host made (id {expected}); \
                     left alone"
                ),
            ));
        }
        Some(_) => {}
    }
    let mut flags = UnmountFlags::NOFOLLOW;
    if detach {
        flags |= UnmountFlags::DETACH;
    }
    let mut attempts = 1;
    loop {
        match sys_unmount(&path, flags) {
            Err(rustix::io::Errno::BUSY) if !detach && attempts < UNMOUNT_BUSY_ATTEMPTS => {
                attempts += 1;
                std::thread::sleep(UNMOUNT_BUSY_PAUSE);
            }
            r => return r.map_err(|e| SysError::from_errno("umount2", name, e)),
        }
    }
}

/// Tries a non-lazy unmount makes while the kernel answers EBUSY. A process that forks (the
/// host runs `zfs`, `mkfs`, containerd's shims…) briefly holds copies of every descriptor of
/// the parent, those inside a mount included, until its `exec` closes them: an unmount in that
/// window fails although nothing uses the mount. Retrying for up to
/// `UNMOUNT_BUSY_ATTEMPTS × UNMOUNT_BUSY_PAUSE` (1 s) rides that out; a mount really in use
/// is still answered `busy`, that much later.
pub const UNMOUNT_BUSY_ATTEMPTS: u32 = 40;
/// The pause between two of those tries.
pub const UNMOUNT_BUSY_PAUSE: std::time::Duration = std::time::Duration::from_millis(25);

/// Attaches the detached `mount` onto the directory `target`; returns the mount's id.
fn attach(mount: &OwnedFd, target: &Dir, target_path: &Path) -> SysResult<u64> {
    let id = mount_id(mount.as_fd(), target_path)?;
    move_mount(
        mount.as_fd(),
        "",
        target.as_fd(),
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(|e| SysError::from_errno("move_mount", target_path, e))?;
    Ok(id)
}

/// Binds the directory `source` onto `target` (`target_path` names it in messages); returns
/// the new mount's id. The read-only remount goes through the new mount's own descriptor.
pub fn bind(source: &Dir, target: &Dir, target_path: &Path, read_only: bool) -> SysResult<u64> {
    let tree = open_tree(
        source.as_fd(),
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH,
    )
    .map_err(|e| SysError::from_errno("open_tree", source.path(), e))?;
    let id = attach(&tree, target, target_path)?;
    // `/proc/self/fd/N` of the attached tree is the new mount's root, whatever its path.
    let mounted = fd_path(&tree);
    if read_only
        && let Err(e) = mount_remount(mounted.as_str(), MountFlags::BIND | MountFlags::RDONLY, "")
    {
        let _ = sys_unmount(mounted.as_str(), UnmountFlags::DETACH);
        return Err(SysError::from_errno(
            "mount(MS_REMOUNT|MS_RDONLY)",
            target_path,
            e,
        ));
    }
    Ok(id)
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

/// Whether the running kernel's overlayfs accepts `lowerdir+` (asked once per process).
pub fn overlay_supports_lowerdir_plus() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let Ok(fs) = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC) else {
            return false;
        };
        fsconfig_set_string(fs.as_fd(), "lowerdir+", "/").is_ok()
    })
}

/// Longest classic `lowerdir=` option the fallback passes (the kernel's limit is a page,
/// with room left for the other options).
pub const MAX_LEGACY_LOWERDIR_LEN: usize = 3500;

/// How lower directories are handed to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LowerdirStyle {
    /// One `lowerdir+` call per layer (kernel ≥ 6.8): no length limit.
    Append,
    /// One `lowerdir=` string of `/proc/self/fd/N` paths joined by `:`, for older kernels;
    /// about 190 layers fit.
    Legacy,
}

impl LowerdirStyle {
    pub fn detect() -> LowerdirStyle {
        if overlay_supports_lowerdir_plus() {
            LowerdirStyle::Append
        } else {
            LowerdirStyle::Legacy
        }
    }
}

/// Creates (but does not attach) an overlay superblock from `spec`; returns the detached
/// mount.
fn overlay_mount_fd(
    spec: &OverlaySpec<'_>,
    style: LowerdirStyle,
    what: &Path,
) -> SysResult<OwnedFd> {
    let err = |op: &'static str| move |e| SysError::from_errno(op, what, e);
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(err("fsopen(overlay)"))?;
    fsconfig_set_string(fs.as_fd(), "source", "strata").map_err(err("fsconfig(source)"))?;
    match style {
        LowerdirStyle::Append => {
            for lower in &spec.lower {
                fsconfig_set_string(fs.as_fd(), "lowerdir+", fd_path(&lower.as_fd()))
                    .map_err(|e| SysError::from_errno("fsconfig(lowerdir+)", lower.path(), e))?;
            }
        }
        LowerdirStyle::Legacy => {
            let joined = spec
                .lower
                .iter()
                .map(|l| fd_path(&l.as_fd()))
                .collect::<Vec<_>>()
                .join(":");
            if joined.len() > MAX_LEGACY_LOWERDIR_LEN {
                return Err(SysError::invalid(
                    "fsconfig(lowerdir)",
                    what,
                    format!(
                        "{} lower layers do not fit one lowerdir= option on a kernel without \
                         lowerdir+ (6.8 or later stacks up to 500)",
                        spec.lower.len()
                    ),
                ));
            }
            fsconfig_set_string(fs.as_fd(), "lowerdir", joined.as_str())
                .map_err(err("fsconfig(lowerdir)"))?;
        }
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
    fsmount(fs.as_fd(), FsMountFlags::FSMOUNT_CLOEXEC, attrs).map_err(err("fsmount"))
}

/// Mounts an overlay on `target`; returns the new mount's id.
pub fn overlay(spec: &OverlaySpec<'_>, target: &Dir, target_path: &Path) -> SysResult<u64> {
    overlay_with(spec, LowerdirStyle::detect(), target, target_path)
}

/// [`overlay`] with the lowerdir style chosen (tests exercise the fallback with it).
pub fn overlay_with(
    spec: &OverlaySpec<'_>,
    style: LowerdirStyle,
    target: &Dir,
    target_path: &Path,
) -> SysResult<u64> {
    let mnt = overlay_mount_fd(spec, style, target_path)?;
    attach(&mnt, target, target_path)
}

/// A read-only merged view of `lower` (topmost first, at least two) that is never attached
/// anywhere: the returned directory is the root of a detached mount, gone when dropped. The
/// host compares layer stacks through such views without a mount point to clean up.
pub fn overlay_view(lower: &[&Dir], options: &[String], name: &Path) -> SysResult<Dir> {
    let spec = OverlaySpec {
        lower: lower.to_vec(),
        upper: None,
        work: None,
        options,
        read_only: true,
    };
    let fd = overlay_mount_fd(&spec, LowerdirStyle::detect(), name)?;
    Ok(Dir::from_mount(fd, name.to_path_buf()))
}

/// Unmounts `target` by path; `detach` makes it lazy (`MNT_DETACH`). Only for paths no
/// driver can reach (test and scratch directories the host made): layer mounts go through
/// [`unmount_at`].
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

/// What the kernel's overlayfs can do on one backing filesystem.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OverlayFeatures {
    /// Two lower layers with a whiteout merge as they should.
    pub supported: bool,
    /// The backing filesystem reports file types in directory entries (overlay requires it).
    pub d_type: bool,
    /// `lowerdir+` (kernel ≥ 6.8): 500-layer stacks mount.
    pub lowerdir_append: bool,
    /// `metacopy=on` copies up metadata only.
    pub metacopy: bool,
    /// `redirect_dir=on` is accepted.
    pub redirect_dir: bool,
    /// `volatile` is accepted.
    pub volatile: bool,
}

/// Probes overlayfs on the filesystem of `scratch`, an empty directory the caller owns
/// (and removes afterwards): makes a few directories in it and mounts them, detached only.
pub fn probe_overlay(scratch: &Dir) -> SysResult<OverlayFeatures> {
    use super::fs::create_file_at;
    for d in [
        "lower1",
        "lower2",
        "lower2/subdir",
        "up1",
        "wk1",
        "up2",
        "wk2",
        "up3",
        "wk3",
    ] {
        scratch.mkdir(d, 0o755, 0, 0)?;
    }
    for f in ["lower2/subdir/file", "lower2/gone"] {
        let rel = Path::new(f);
        let (parent, name) = scratch.parent(rel)?;
        create_file_at(parent.as_fd(), &name, 0o644)?;
    }
    scratch.make_whiteout("lower1/gone")?;
    let lower1 = scratch.open_dir("lower1")?;
    let lower2 = scratch.open_dir("lower2")?;
    let mut features = OverlayFeatures {
        lowerdir_append: overlay_supports_lowerdir_plus(),
        ..Default::default()
    };
    {
        let mut dir = rustix::fs::Dir::read_from(lower2.open_raw(
            Path::new(""),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
        )?)
        .map_err(|e| SysError::from_errno("readdir", scratch.path(), e))?;
        let mut known = true;
        while let Some(Ok(entry)) = dir.read() {
            if entry.file_name().to_bytes() != b"." && entry.file_name().to_bytes() != b".." {
                known &= entry.file_type() != rustix::fs::FileType::Unknown;
            }
        }
        features.d_type = known;
    }
    match overlay_view(&[&lower1, &lower2], &[], scratch.path()) {
        Ok(view) => {
            features.supported = view.lstat("subdir/file").is_ok()
                && view
                    .lstat("gone")
                    .is_err_and(|e| e.kind == super::ErrorKind::NotFound);
        }
        // Not allowed to mount at all (no CAP_SYS_ADMIN): say that, not "unsupported".
        Err(e) if e.kind == super::ErrorKind::Denied => return Err(e),
        Err(_) => {}
    }
    if !features.supported {
        return Ok(features);
    }
    let rw = |n: u32, options: &[String]| -> SysResult<Dir> {
        let upper = scratch.open_dir(&format!("up{n}"))?;
        let work = scratch.open_dir(&format!("wk{n}"))?;
        let spec = OverlaySpec {
            lower: vec![&lower2],
            upper: Some(&upper),
            work: Some(&work),
            options,
            read_only: false,
        };
        let fd = overlay_mount_fd(&spec, LowerdirStyle::detect(), scratch.path())?;
        Ok(Dir::from_mount(fd, scratch.path().to_path_buf()))
    };
    if let Ok(m) = rw(1, &["metacopy=on".to_string()]) {
        features.metacopy = m.chmod("subdir/file", 0o600).is_ok()
            && scratch
                .get_xattr("up1/subdir/file", "trusted.overlay.metacopy")
                .is_ok_and(|v| v.is_some());
    }
    features.redirect_dir = rw(2, &["redirect_dir=on".to_string()]).is_ok();
    features.volatile = rw(3, &["volatile".to_string()]).is_ok();
    Ok(features)
}

//! Copying layer trees: reflinks where the filesystem has them, byte copies where not.
//!
//! A vfs child layer starts as a copy of its parent, so the copy must preserve everything a
//! container's root filesystem holds: modes (setuid, setgid, sticky), owners, xattrs
//! (`security.capability` and `trusted.*` included), timestamps, symlinks, hardlink groups,
//! fifos, sockets and device nodes. The walk is descriptor-relative and never follows a
//! symlink; it does not descend into mount points (their directory is copied empty).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::sys::fs::{
    self as sfs, Dir, FileKind, MAX_TREE_DEPTH, Stat, check_relative, chmod_at, chown_at,
    create_file_at, link_at, mkdir_at, mknod_at, open_dir_at, read_dir_names, readlink_at,
    set_times_at, set_xattr_at, stat_at, symlink_at, xattrs_at,
};
use crate::sys::{ErrorKind, SysError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyMode {
    ReflinkOrCopy,
    ReflinkOnly,
    Copy,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Entries created, directories included.
    pub entries: u64,
    /// Bytes of regular files, each hardlink group once.
    pub bytes: u64,
    /// Regular files reflinked rather than copied.
    pub reflinked: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("copying {path}: {cause}")]
pub struct CopyError {
    pub path: PathBuf,
    pub cause: SysError,
}

impl CopyError {
    pub fn kind(&self) -> ErrorKind {
        self.cause.kind
    }

    pub fn errno(&self) -> i32 {
        self.cause.errno
    }
}

struct Copier {
    mode: CopyMode,
    stats: CopyStats,
    /// (dev, ino) of a source file with several links → the path of its first copy,
    /// relative to the destination's parent directory.
    links: HashMap<(u64, u64), PathBuf>,
    /// When set, the copy stops with `busy` at the first entry reached after this instant
    /// (the wall-clock limit of the driver call that asked for it).
    until: Option<Instant>,
}

/// Copies the tree at `src_rel` in `src` to the new path `dst_rel` in `dst`.
pub fn copy_tree(
    src: &Dir,
    src_rel: &str,
    dst: &Dir,
    dst_rel: &str,
    mode: CopyMode,
) -> Result<CopyStats, CopyError> {
    copy_entry(src, src_rel, dst, dst_rel, mode, true, None)
}

/// [`copy_tree`] that gives up with `busy` once `until` has passed, checked before each
/// entry: a driver call's copy never outlives the call's time limit by more than one entry.
pub fn copy_tree_until(
    src: &Dir,
    src_rel: &str,
    dst: &Dir,
    dst_rel: &str,
    mode: CopyMode,
    until: Instant,
) -> Result<CopyStats, CopyError> {
    copy_entry(src, src_rel, dst, dst_rel, mode, true, Some(until))
}

/// Copies the single file at `src_rel` (any type but directory) to `dst_rel`.
pub fn copy_file(
    src: &Dir,
    src_rel: &str,
    dst: &Dir,
    dst_rel: &str,
    mode: CopyMode,
) -> Result<CopyStats, CopyError> {
    copy_entry(src, src_rel, dst, dst_rel, mode, false, None)
}

fn split(dir: &Dir, rel: &str) -> Result<(Dir, std::ffi::OsString), CopyError> {
    let err = |cause| CopyError {
        path: rel.into(),
        cause,
    };
    let p = check_relative(rel).map_err(err)?;
    let name = p
        .file_name()
        .ok_or_else(|| err(SysError::invalid("copy", rel, "names the directory itself")))?
        .to_os_string();
    let parent = dir
        .open_dir_rel(p.parent().unwrap_or(Path::new("")))
        .map_err(err)?;
    Ok((parent, name))
}

fn copy_entry(
    src: &Dir,
    src_rel: &str,
    dst: &Dir,
    dst_rel: &str,
    mode: CopyMode,
    tree: bool,
    until: Option<Instant>,
) -> Result<CopyStats, CopyError> {
    let (sp, sname) = split(src, src_rel)?;
    let (dp, dname) = split(dst, dst_rel)?;
    let st = stat_at(sp.as_fd(), &sname).map_err(|e| CopyError {
        path: src_rel.into(),
        cause: e.at(src_rel),
    })?;
    if st.kind == FileKind::Directory && !tree {
        return Err(CopyError {
            path: src_rel.into(),
            cause: SysError::invalid("copy-file", src_rel, "is a directory; use copy-tree"),
        });
    }
    let mut c = Copier {
        mode,
        stats: CopyStats::default(),
        links: HashMap::new(),
        until,
    };
    // One stack frame and two descriptors per level, up to MAX_TREE_DEPTH levels.
    crate::sys::tree::on_deep_stack(|| {
        c.copy(
            sp.as_fd(),
            &sname,
            &st,
            dp.as_fd(),
            &dname,
            (&dp, Path::new(&dname)),
            Path::new(src_rel),
            0,
        )
    })?;
    Ok(c.stats)
}

impl Copier {
    #[allow(clippy::too_many_arguments)]
    fn copy(
        &mut self,
        sdir: BorrowedFd<'_>,
        sname: &OsStr,
        st: &Stat,
        ddir: BorrowedFd<'_>,
        dname: &OsStr,
        (dst_root, drel): (&Dir, &Path),
        shown: &Path,
        depth: usize,
    ) -> Result<(), CopyError> {
        let err = |cause: SysError| CopyError {
            path: shown.to_path_buf(),
            cause,
        };
        if let Some(until) = self.until
            && Instant::now() >= until
        {
            return Err(err(SysError::without_errno(
                ErrorKind::Busy,
                "copy",
                shown,
                "stopped: the driver call ran out of time",
            )));
        }
        if depth > MAX_TREE_DEPTH {
            return Err(err(SysError::invalid("copy", shown, sfs::too_deep())));
        }
        if st.kind != FileKind::Directory
            && st.nlink > 1
            && let Some(first) = self.links.get(&(st.dev, st.ino))
        {
            {
                let first_dir = dst_root
                    .open_dir_rel(first.parent().unwrap_or(Path::new("")))
                    .map_err(err)?;
                let first_name = first.file_name().unwrap_or_default();
                link_at(first_dir.as_fd(), first_name, ddir, dname).map_err(err)?;
                self.stats.entries += 1;
                return Ok(());
            }
        }
        match st.kind {
            FileKind::Directory => {
                // Opened and checked before anything is made: the lstat that chose this
                // branch must still describe what is read.
                let sfd = sfs::open_dir_checked(sdir, sname, st).map_err(err)?;
                mkdir_at(ddir, dname, 0o700, 0, 0).map_err(err)?;
                if !sfs::is_mount_root_fd(sfd.as_fd()).map_err(err)? {
                    let dfd = open_dir_at(ddir, dname).map_err(err)?;
                    for child in read_dir_names(sfd.as_fd()).map_err(err)? {
                        let cst = stat_at(sfd.as_fd(), &child)
                            .map_err(|e| err(e.at(shown.join(&child))))?;
                        self.copy(
                            sfd.as_fd(),
                            &child,
                            &cst,
                            dfd.as_fd(),
                            &child,
                            (dst_root, &drel.join(&child)),
                            &shown.join(&child),
                            depth + 1,
                        )?;
                    }
                }
            }
            FileKind::Regular => {
                let from = sfs::open_regular_checked(sdir, sname, st).map_err(err)?;
                let to = create_file_at(ddir, dname, 0o600).map_err(err)?;
                let reflinked = match self.mode {
                    CopyMode::Copy => false,
                    CopyMode::ReflinkOnly => {
                        sfs::reflink(&from, &to).map_err(err)?;
                        true
                    }
                    CopyMode::ReflinkOrCopy => match sfs::reflink(&from, &to) {
                        Ok(()) => true,
                        Err(e)
                            if matches!(
                                e.kind,
                                ErrorKind::Unsupported | ErrorKind::InvalidArgument
                            ) =>
                        {
                            false
                        }
                        Err(e) => return Err(err(e)),
                    },
                };
                if reflinked {
                    self.stats.reflinked += 1;
                } else {
                    // Data only: holes stay holes.
                    crate::sys::sparse::copy_keeping_holes(&from, &to, st.size).map_err(err)?;
                }
                self.stats.bytes += st.size;
            }
            FileKind::Symlink => {
                let target = readlink_at(sdir, sname).map_err(err)?;
                symlink_at(&target, ddir, dname).map_err(err)?;
            }
            FileKind::Fifo | FileKind::CharDevice | FileKind::BlockDevice | FileKind::Socket => {
                mknod_at(ddir, dname, st.kind, st.mode, st.rdev).map_err(err)?;
            }
        }
        self.stats.entries += 1;
        // Owner before mode (chown clears setuid/setgid), xattrs after chown (it drops
        // security.capability), times last.
        chown_at(ddir, dname, st.uid, st.gid).map_err(err)?;
        if st.kind != FileKind::Symlink {
            chmod_at(ddir, dname, st.mode).map_err(err)?;
        }
        for (k, v) in xattrs_at(sdir, sname).map_err(err)? {
            set_xattr_at(ddir, dname, &k, &v).map_err(err)?;
        }
        set_times_at(
            ddir,
            dname,
            (st.atime_sec, st.atime_nsec),
            (st.mtime_sec, st.mtime_nsec),
        )
        .map_err(err)?;
        if st.kind != FileKind::Directory && st.nlink > 1 {
            self.links.insert((st.dev, st.ino), drel.to_path_buf());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileExt, MetadataExt};

    use super::*;

    /// A byte copy writes a sparse file's data only: a 1 GiB hole costs the copy no disk
    /// (`copy_file_range` alone reads holes as zeros and writes them on ext4).
    #[test]
    fn a_copy_keeps_holes() {
        if !crate::test_env::root_or_skip(
            "a_copy_keeps_holes",
            "a copied directory is made owned 0:0 before its owner is set",
        ) {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("src")).unwrap();
        let f = std::fs::File::create(tmp.path().join("src/sparse")).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"tail", (1 << 30) - 4).unwrap();
        drop(f);
        let d = Dir::open_ambient(tmp.path()).unwrap();
        copy_tree(&d, "src", &d, "dst", CopyMode::Copy).unwrap();
        let copied = tmp.path().join("dst/sparse");
        let md = std::fs::metadata(&copied).unwrap();
        assert_eq!(md.len(), 1 << 30);
        assert!(
            md.blocks() * 512 <= 1 << 20,
            "{} bytes of disk",
            md.blocks() * 512
        );
        let g = std::fs::File::open(&copied).unwrap();
        let mut buf = [0u8; 4];
        g.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"head");
        g.read_exact_at(&mut buf, (1 << 30) - 4).unwrap();
        assert_eq!(&buf, b"tail");
        g.read_exact_at(&mut buf, 1 << 29).unwrap();
        assert_eq!(buf, [0; 4]);
    }
}

//! Comparing a layer tree with its parent tree.
//!
//! The rules follow containers/storage (`pkg/archive` `ChangesDirs`), which image tools
//! expect: a path only in the layer is Add (and so is everything beneath it); only in the
//! parent is Delete (a deleted directory is reported once); in both, a non-directory is
//! Modify when its type, mode, owner, device number, size, mtime, link target or xattrs
//! differ, and a directory when its type, mode, owner or xattrs differ — or when anything
//! beneath it changed, so that exporting the changes carries the directory's metadata.
//!
//! Unlike containers/storage, a regular file whose size and mtime agree is not trusted to
//! be unchanged: its bytes are compared (see [`same_bytes`]), because mtimes are coarse on
//! some filesystems and equal for two writes in the same tick, and a diff must never lose a
//! change.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use super::ArchiveError;
use crate::sys::SysError;
use crate::sys::fs::{
    Dir, FileKind, MAX_TREE_DEPTH, Stat, is_mount_root_fd, open_dir_checked, open_regular_checked,
    read_dir_names, readlink_at, same_content, stat_at, too_deep, xattrs_at,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChangeKind {
    Add,
    Modify,
    Delete,
}

/// One changed path, `/`-prefixed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub path: String,
    pub kind: ChangeKind,
}

/// A change with the layer-side stat (for Add and Modify).
pub(super) struct Changed {
    pub path: String,
    pub kind: ChangeKind,
    pub stat: Option<Stat>,
}

fn sys(path: &str) -> impl Fn(SysError) -> ArchiveError + '_ {
    move |e| ArchiveError::Sys(e.at(path))
}

fn open_root(d: &Dir) -> Result<OwnedFd, ArchiveError> {
    d.open_raw(
        Path::new(""),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
    )
    .map_err(ArchiveError::Sys)
}

/// What changed from `parent` (an empty tree when `None`) to `layer`, sorted by path.
pub fn changes(layer: &Dir, parent: Option<&Dir>) -> Result<Vec<Change>, ArchiveError> {
    Ok(compare(layer, parent)?
        .into_iter()
        .map(|c| Change {
            path: c.path,
            kind: c.kind,
        })
        .collect())
}

/// Bytes of regular files added or modified, each hardlink group once.
pub fn diff_size(layer: &Dir, parent: Option<&Dir>) -> Result<u64, ArchiveError> {
    let mut seen = BTreeSet::new();
    Ok(compare(layer, parent)?
        .iter()
        .filter_map(|c| c.stat)
        .filter(|st| st.kind == FileKind::Regular)
        .filter(|st| st.nlink < 2 || seen.insert((st.dev, st.ino)))
        .map(|st| st.size)
        .sum())
}

pub(super) fn compare(layer: &Dir, parent: Option<&Dir>) -> Result<Vec<Changed>, ArchiveError> {
    let lfd = open_root(layer)?;
    let pfd = parent.map(open_root).transpose()?;
    let mut out = Vec::new();
    // One stack frame and two descriptors per level, up to MAX_TREE_DEPTH levels.
    crate::sys::tree::on_deep_stack(|| {
        walk(
            Some(lfd.as_fd()),
            pfd.as_ref().map(|f| f.as_fd()),
            "",
            &mut out,
            0,
        )
    })?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn names(fd: Option<BorrowedFd<'_>>, path: &str) -> Result<Vec<OsString>, ArchiveError> {
    match fd {
        Some(fd) => read_dir_names(fd).map_err(sys(path)),
        None => Ok(Vec::new()),
    }
}

fn stat_opt(
    fd: Option<BorrowedFd<'_>>,
    name: &OsStr,
    path: &str,
) -> Result<Option<Stat>, ArchiveError> {
    match fd {
        None => Ok(None),
        Some(fd) => match stat_at(fd, name) {
            Ok(st) => Ok(Some(st)),
            Err(e) if e.kind == crate::sys::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(sys(path)(e)),
        },
    }
}

fn differs(
    l: &Stat,
    p: &Stat,
    ldir: BorrowedFd<'_>,
    pdir: BorrowedFd<'_>,
    name: &OsStr,
    path: &str,
) -> Result<bool, ArchiveError> {
    if l.kind != p.kind || l.mode != p.mode || l.uid != p.uid || l.gid != p.gid || l.rdev != p.rdev
    {
        return Ok(true);
    }
    if l.kind != FileKind::Directory
        && (l.size != p.size || l.mtime_sec != p.mtime_sec || l.mtime_nsec != p.mtime_nsec)
    {
        return Ok(true);
    }
    if l.kind == FileKind::Regular
        && (l.dev, l.ino) != (p.dev, p.ino)
        && !same_bytes(l, p, ldir, pdir, name, path)?
    {
        return Ok(true);
    }
    if l.kind == FileKind::Symlink
        && readlink_at(ldir, name).map_err(sys(path))?
            != readlink_at(pdir, name).map_err(sys(path))?
    {
        return Ok(true);
    }
    Ok(xattrs_at(ldir, name).map_err(sys(path))? != xattrs_at(pdir, name).map_err(sys(path))?)
}

/// Whether two regular files whose metadata agree (size, mtime) hold the same bytes.
///
/// Metadata cannot decide: mtimes are whole seconds on some filesystems (zfs-fuse, ext3,
/// some network filesystems), two writes in the same tick leave the same mtime, and anyone
/// may set an mtime back with `utimensat`. A diff must never lose a change, so equal
/// metadata is confirmed by reading both files (two [`crate::sys::fs::COMPARE_CHUNK`]
/// buffers, stopping at the first difference). The same inode on both sides (a hardlink, a
/// shared tree) is the same content without reading.
fn same_bytes(
    l: &Stat,
    p: &Stat,
    ldir: BorrowedFd<'_>,
    pdir: BorrowedFd<'_>,
    name: &OsStr,
    path: &str,
) -> Result<bool, ArchiveError> {
    if l.size == 0 {
        return Ok(true);
    }
    let lf = open_regular_checked(ldir, name, l).map_err(sys(path))?;
    let pf = open_regular_checked(pdir, name, p).map_err(sys(path))?;
    same_content(&lf, &pf, name).map_err(sys(path))
}

/// Compares directory `l` (layer side) with `p` (parent side); returns whether anything
/// beneath changed.
fn walk(
    l: Option<BorrowedFd<'_>>,
    p: Option<BorrowedFd<'_>>,
    path: &str,
    out: &mut Vec<Changed>,
    depth: usize,
) -> Result<bool, ArchiveError> {
    if depth > MAX_TREE_DEPTH {
        return Err(ArchiveError::invalid(format!("{path}: {}", too_deep())));
    }
    let mut all: BTreeSet<OsString> = names(l, path)?.into_iter().collect();
    all.extend(names(p, path)?);
    let mut any = false;
    for name in all {
        let child = format!("{path}/{}", name.to_string_lossy());
        let lst = stat_opt(l, &name, &child)?;
        let pst = stat_opt(p, &name, &child)?;
        match (lst, pst) {
            (None, None) => {}
            (None, Some(_)) => {
                out.push(Changed {
                    path: child,
                    kind: ChangeKind::Delete,
                    stat: None,
                });
                any = true;
            }
            (Some(ls), None) => {
                out.push(Changed {
                    path: child.clone(),
                    kind: ChangeKind::Add,
                    stat: Some(ls),
                });
                any = true;
                let ldir = l.expect("layer side exists");
                if ls.kind == FileKind::Directory {
                    let sub = open_dir_checked(ldir, &name, &ls).map_err(sys(&child))?;
                    if !is_mount_root_fd(sub.as_fd()).map_err(sys(&child))? {
                        walk(Some(sub.as_fd()), None, &child, out, depth + 1)?;
                    }
                }
            }
            (Some(ls), Some(ps)) => {
                let (ldir, pdir) = (l.expect("layer side"), p.expect("parent side"));
                let changed = differs(&ls, &ps, ldir, pdir, &name, &child)?;
                let index = out.len();
                let mut below = false;
                let lsub = if ls.kind == FileKind::Directory {
                    let fd = open_dir_checked(ldir, &name, &ls).map_err(sys(&child))?;
                    (!is_mount_root_fd(fd.as_fd()).map_err(sys(&child))?).then_some(fd)
                } else {
                    None
                };
                if let Some(lsub) = lsub {
                    let psub = if ps.kind == FileKind::Directory {
                        Some(open_dir_checked(pdir, &name, &ps).map_err(sys(&child))?)
                    } else {
                        None
                    };
                    below = walk(
                        Some(lsub.as_fd()),
                        psub.as_ref().map(|f| f.as_fd()),
                        &child,
                        out,
                        depth + 1,
                    )?;
                }
                if changed || below {
                    out.insert(
                        index,
                        Changed {
                            path: child,
                            kind: ChangeKind::Modify,
                            stat: Some(ls),
                        },
                    );
                    any = true;
                }
            }
        }
    }
    Ok(any)
}

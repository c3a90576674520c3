//! Overlay layers: the native diff of an upper directory, and comparisons of merged stacks.
//!
//! An overlay layer's `diff/` holds only what the layer changed, with deletions as 0:0
//! character devices and replaced directories marked opaque. Its changes against the direct
//! parent come from `diff/` alone (as containers/storage's `OverlayChanges`): an entry is
//! Add when nothing is at its path in the merged layers below, Modify otherwise; a whiteout
//! is Delete. The diff tar turns whiteouts back into `.wh.NAME` and writes `.wh..wh..opq`
//! into an opaque directory only when a directory of that name exists below (a brand-new
//! directory needs no marker).
//!
//! Comparing with any other layer needs the merged trees: the host builds read-only overlay
//! views of both stacks as detached mounts (never attached anywhere, gone when dropped) and
//! compares them like two plain trees.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use super::compare::{ChangeKind, Changed};
use super::export::write_changes_tar;
use super::{ArchiveError, Change, WhiteoutFormat};
use crate::mount::MAX_OVERLAY_LOWERS;
use crate::sys::fs::{
    Dir, FileKind, MAX_TREE_DEPTH, get_xattr_at, open_dir_checked, read_dir_names, stat_at,
    too_deep,
};
use crate::sys::{ErrorKind, SysError};

/// The xattr marking an opaque directory in `format`.
pub fn opaque_xattr(format: WhiteoutFormat) -> &'static str {
    match format {
        WhiteoutFormat::OverlayUser => "user.overlay.opaque",
        _ => "trusted.overlay.opaque",
    }
}

/// Mount options a view of layers in `format` needs.
fn view_options(format: WhiteoutFormat) -> Vec<String> {
    let mut o = vec!["redirect_dir=off".to_string(), "metacopy=off".to_string()];
    if format == WhiteoutFormat::OverlayUser {
        o.push("userxattr".into());
    }
    o
}

/// The merged, read-only tree of `dirs` (topmost first): `None` for no layers, the directory
/// itself for one (a bottom layer holds no whiteouts), else a detached overlay view.
pub fn merged_view(
    dirs: Vec<Dir>,
    format: WhiteoutFormat,
    name: &Path,
) -> Result<Option<Dir>, ArchiveError> {
    match dirs.len() {
        0 => Ok(None),
        1 => Ok(dirs.into_iter().next()),
        n if n > MAX_OVERLAY_LOWERS => {
            // One directory more than a mount stacks (a layer over 500: a container on a
            // 500-layer image): the topmost over a view of the rest, an overlay on an
            // overlay, which the kernel allows one level of.
            if n > MAX_VIEW_DIRS {
                return Err(ArchiveError::invalid(format!(
                    "a view of {n} layers: at most {MAX_VIEW_DIRS} are merged"
                )));
            }
            let mut dirs = dirs;
            let rest = dirs.split_off(1);
            let below = merged_view(rest, format, name)?.expect("more than one directory");
            let top = dirs.pop().expect("one directory");
            crate::sys::mount::overlay_view(&[&top, &below], &view_options(format), name)
                .map(Some)
                .map_err(ArchiveError::Sys)
        }
        _ => {
            let refs: Vec<&Dir> = dirs.iter().collect();
            crate::sys::mount::overlay_view(&refs, &view_options(format), name)
                .map(Some)
                .map_err(ArchiveError::Sys)
        }
    }
}

/// Most directories [`merged_view`] merges: the kernel's [`MAX_OVERLAY_LOWERS`], plus one
/// mounted over a view of those.
pub const MAX_VIEW_DIRS: usize = MAX_OVERLAY_LOWERS + 1;

struct UpperWalk<'a> {
    opaque_key: &'a str,
    changes: Vec<Changed>,
    /// Opaque directories that hide a directory below: they get `.wh..wh..opq` in a tar.
    opaque_dirs: BTreeSet<String>,
}

fn sys(path: &str) -> impl Fn(SysError) -> ArchiveError + '_ {
    move |e| ArchiveError::Sys(e.at(path))
}

fn is_whiteout(st: &crate::sys::fs::Stat) -> bool {
    st.kind == FileKind::CharDevice && st.rdev == 0
}

impl UpperWalk<'_> {
    fn walk(
        &mut self,
        upper: BorrowedFd<'_>,
        lower: Option<BorrowedFd<'_>>,
        path: &str,
        depth: usize,
    ) -> Result<(), ArchiveError> {
        if depth > MAX_TREE_DEPTH {
            return Err(ArchiveError::invalid(format!("{path}: {}", too_deep())));
        }
        for name in read_dir_names(upper).map_err(sys(path))? {
            let child = format!("{path}/{}", name.to_string_lossy());
            let st = stat_at(upper, &name).map_err(sys(&child))?;
            let below = match lower {
                None => None,
                Some(l) => match stat_at(l, &name) {
                    Ok(s) => Some(s),
                    Err(e) if e.kind == ErrorKind::NotFound => None,
                    Err(e) => return Err(sys(&child)(e)),
                },
            };
            if is_whiteout(&st) {
                self.changes.push(Changed {
                    path: child,
                    kind: ChangeKind::Delete,
                    stat: None,
                });
                continue;
            }
            self.changes.push(Changed {
                path: child.clone(),
                kind: if below.is_some() {
                    ChangeKind::Modify
                } else {
                    ChangeKind::Add
                },
                stat: Some(st),
            });
            if st.kind != FileKind::Directory {
                continue;
            }
            let sub = open_dir_checked(upper, &name, &st).map_err(sys(&child))?;
            let opaque = get_xattr_at(upper, &name, self.opaque_key)
                .map_err(sys(&child))?
                .is_some_and(|v| v == b"y");
            let below_dir = below.is_some_and(|b| b.kind == FileKind::Directory);
            if opaque && below_dir {
                self.opaque_dirs.insert(child.clone());
            }
            let lower_sub = match (lower, below) {
                (Some(l), Some(b)) if below_dir && !opaque => {
                    Some(open_dir_checked(l, &name, &b).map_err(sys(&child))?)
                }
                _ => None,
            };
            self.walk(
                sub.as_fd(),
                lower_sub.as_ref().map(|f| f.as_fd()),
                &child,
                depth + 1,
            )?;
        }
        Ok(())
    }
}

fn walk_upper(
    upper: &Dir,
    lower: Option<&Dir>,
    format: WhiteoutFormat,
) -> Result<UpperWalk<'static>, ArchiveError> {
    let open = |d: &Dir| {
        d.open_raw(
            Path::new(""),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
        )
        .map_err(ArchiveError::Sys)
    };
    let ufd = open(upper)?;
    let lfd = lower.map(open).transpose()?;
    let mut w = UpperWalk {
        opaque_key: opaque_xattr(format),
        changes: Vec::new(),
        opaque_dirs: BTreeSet::new(),
    };
    // One stack frame and two descriptors per level, up to MAX_TREE_DEPTH levels.
    crate::sys::tree::on_deep_stack(|| {
        w.walk(ufd.as_fd(), lfd.as_ref().map(|f| f.as_fd()), "", 0)
    })?;
    w.changes.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(w)
}

/// The changes an overlay upper directory makes over `lower` (the merged layers below it).
pub fn upper_changes(
    upper: &Dir,
    lower: Option<&Dir>,
    format: WhiteoutFormat,
) -> Result<Vec<Change>, ArchiveError> {
    Ok(walk_upper(upper, lower, format)?
        .changes
        .into_iter()
        .map(|c| Change {
            path: c.path,
            kind: c.kind,
        })
        .collect())
}

/// The native diff of an overlay upper directory over `lower`, as a tar with `.wh.` entries.
pub fn write_upper_tar(
    upper: &Dir,
    lower: Option<&Dir>,
    format: WhiteoutFormat,
    out: &mut dyn Write,
) -> Result<u64, ArchiveError> {
    let w = walk_upper(upper, lower, format)?;
    write_changes_tar(upper, &w.changes, &w.opaque_dirs, out)
}

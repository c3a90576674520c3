//! Mount plans: the driver decides, the host checks, then executes.
//!
//! A driver's [`MountPlan`] names directories relative to its home. Before any mount syscall
//! every one of them is resolved beneath the home without following any symlink (an escape
//! or a symlink is `denied`), and a plan that would give write access where the host asked for
//! a read-only mount is refused. Overlay options are typed ([`OverlayOption`]): a contract
//! version's edge in the sandbox refuses any option the host does not allow before a plan gets
//! here.
//! Only then are the resolved descriptors handed to [`crate::sys::mount`].
//!
//! The host mounts a layer on a mount point of its own, `<root>/mounts/<layer id>`
//! ([`MountDir`]), never on a path in a driver home: everything the host prints, records,
//! hands to a runtime or unmounts is in a directory no driver can write, so no later driver
//! call can re-point it (a renamed directory or a symlink in the home changes nothing that
//! was mounted from descriptors). The plan's `target` is still checked, as a directory the
//! driver reserves for the layer, but nothing is mounted on it. A mount is identified by its
//! mount id, recorded with the layer, and unmounted only through the pinned mount directory
//! after checking that id. Reference counts live in the layer store.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::contract::{MountKind, MountPlan, MountRequest, OverlayOption};
use crate::sys::{self, SysError};

/// The kernel's limit of overlay lower directories.
pub const MAX_OVERLAY_LOWERS: usize = 500;
/// Most layers an image may have on driver `driver` so that a container (a read-write
/// layer on its top layer) still mounts; `None` when the driver has no such limit.
///
/// Overlay stacks a container's `diff/` as the upper over every image layer as a lower, so
/// an image may have [`MAX_OVERLAY_LOWERS`] layers. Image import asks this before writing
/// anything, so a deeper image is refused at once instead of after applying 500 layers.
pub fn max_image_depth(driver: &str) -> Option<usize> {
    (driver == "overlay").then_some(MAX_OVERLAY_LOWERS)
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("mount plan of driver {driver}: {role} `{path}`: {reason}")]
    Path {
        driver: String,
        role: &'static str,
        path: String,
        reason: String,
        kind: sys::ErrorKind,
    },
    #[error("mount plan of driver {driver}: {reason}")]
    Invalid { driver: String, reason: String },
    #[error("mounting layer {id} on {target}: {cause}")]
    Mount {
        id: String,
        target: PathBuf,
        cause: SysError,
    },
}

impl PlanError {
    /// Whether the driver asked for something outside its sandbox.
    pub fn is_denied(&self) -> bool {
        matches!(
            self,
            PlanError::Path {
                kind: sys::ErrorKind::Denied,
                ..
            }
        ) || matches!(self, PlanError::Invalid { .. })
    }
}

enum Resolved {
    Bind {
        source: sys::Dir,
    },
    Overlay {
        lower: Vec<sys::Dir>,
        upper: Option<sys::Dir>,
        work: Option<sys::Dir>,
        options: Vec<String>,
    },
}

/// A plan whose every path has been resolved beneath the driver home and whose options are
/// allowed: safe to execute.
pub struct CheckedPlan {
    read_only: bool,
    resolved: Resolved,
}

impl CheckedPlan {
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Sets the mode of a bind plan's source directory (the layer's root): containerd expects
    /// a snapshot without a parent to start as an empty `0755` directory. Through the
    /// descriptor resolved when the plan was checked. Other plans are left alone.
    pub fn set_bind_root_mode(&self, mode: u32) -> Result<(), PlanError> {
        if let Resolved::Bind { source } = &self.resolved {
            source.chmod(".", mode).map_err(|cause| PlanError::Mount {
                id: String::new(),
                target: source.path().to_path_buf(),
                cause,
            })?;
        }
        Ok(())
    }

    /// Mounts the plan on `at` (a host-owned directory, named `at_path` in messages); returns
    /// the new mount's id. An overlay of one lower directory and no upper is a read-only bind
    /// of that directory (overlayfs wants two lowers without an upper).
    pub fn execute(&self, id: &str, at: &sys::Dir) -> Result<u64, PlanError> {
        let at_path = at.path();
        let r = match &self.resolved {
            Resolved::Bind { source } => sys::mount::bind(source, at, at_path, self.read_only),
            Resolved::Overlay {
                lower,
                upper: None,
                work: None,
                ..
            } if lower.len() == 1 => sys::mount::bind(&lower[0], at, at_path, true),
            Resolved::Overlay {
                lower,
                upper,
                work,
                options,
            } => {
                let spec = sys::mount::OverlaySpec {
                    lower: lower.iter().collect(),
                    upper: upper.as_ref(),
                    work: work.as_ref(),
                    options,
                    read_only: self.read_only,
                };
                sys::mount::overlay(&spec, at, at_path)
            }
        };
        r.map_err(|cause| PlanError::Mount {
            id: id.into(),
            target: at_path.to_path_buf(),
            cause,
        })
    }
}

/// The directory, beneath the store root, holding the host's mount points.
pub const MOUNTS_DIR: &str = "mounts";
/// The most mounts found stacked on one of the host's mount points that are detached before
/// mounting there again (left by a crash between a mount and its record).
pub const MAX_STALE_MOUNTS: usize = 16;

/// The host's own mount points: `<root>/mounts/<layer id>`, mode 0700, owned by the host's
/// user, outside every driver home. Opened once; every operation goes through its
/// descriptor.
pub struct MountDir {
    dir: sys::Dir,
}

impl MountDir {
    /// Opens (creating) `<root>/mounts`.
    pub fn open(root: &Path) -> Result<MountDir, SysError> {
        Ok(MountDir {
            dir: sys::Dir::open_private(&root.join(MOUNTS_DIR))?,
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Where layer `id` is mounted.
    pub fn mount_point(&self, id: &str) -> PathBuf {
        self.dir.path().join(id)
    }

    /// Mounts `plan` for layer `id` on its mount point (made if missing); returns the mount
    /// id. Mounts already there belong to no record (the caller saw the layer unmounted):
    /// they are left by a crash between a mount and its record, and are detached first.
    pub fn mount(&self, id: &str, plan: &CheckedPlan) -> Result<u64, PlanError> {
        let err = |cause: SysError| PlanError::Mount {
            id: id.into(),
            target: self.mount_point(id),
            cause,
        };
        let name = std::ffi::OsStr::new(id);
        // Made if missing; opened again below, once stale mounts are gone (opened now, it
        // would be the root of the topmost stale mount).
        self.dir.private_subdir(id).map_err(err)?;
        for _ in 0..MAX_STALE_MOUNTS {
            match sys::mount::mounted_id_at(self.dir.as_fd(), name).map_err(err)? {
                Some(stale) => {
                    sys::mount::unmount_at(self.dir.as_fd(), name, stale, true).map_err(err)?
                }
                None => break,
            }
        }
        let at = self.dir.private_subdir(id).map_err(err)?;
        plan.execute(id, &at)
            .inspect_err(|_| self.remove_mount_point(id))
    }

    /// Removes layer `id`'s mount point when it is an empty directory with nothing mounted.
    pub fn remove_mount_point(&self, id: &str) {
        let _ = sys::fs::unlink_at(self.dir.as_fd(), std::ffi::OsStr::new(id), true);
    }

    /// Detaches whatever is mounted on layer `id`'s mount point and removes it: for a layer
    /// whose record says it is not mounted and that is going (removal, recovery), anything
    /// there is left by a crash between a mount and its record. A missing one is fine.
    pub fn clear(&self, id: &str) -> Result<(), SysError> {
        let name = std::ffi::OsStr::new(id);
        for _ in 0..MAX_STALE_MOUNTS {
            match sys::mount::mounted_id_at(self.dir.as_fd(), name) {
                Ok(Some(stale)) => sys::mount::unmount_at(self.dir.as_fd(), name, stale, true)?,
                Ok(None) => break,
                Err(e) if e.kind == sys::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        self.remove_mount_point(id);
        Ok(())
    }

    /// Whether the mount `mount_id` is (still) the one at layer `id`'s mount point.
    pub fn holds(&self, id: &str, mount_id: u64) -> bool {
        sys::mount::mounted_id_at(self.dir.as_fd(), std::ffi::OsStr::new(id))
            .is_ok_and(|m| m == Some(mount_id))
    }

    /// Unmounts layer `id`'s mount `mount_id` (only that one; `force` detaches it lazily
    /// when busy) and removes the emptied mount point. Nothing mounted there any more counts
    /// as unmounted.
    pub fn unmount(&self, id: &str, mount_id: u64, force: bool) -> Result<(), SysError> {
        let name = std::ffi::OsStr::new(id);
        let r = match sys::mount::unmount_at(self.dir.as_fd(), name, mount_id, false) {
            Err(e) if force && e.kind == sys::ErrorKind::Busy => {
                sys::mount::unmount_at(self.dir.as_fd(), name, mount_id, true)
            }
            other => other,
        };
        match r {
            Ok(()) => {}
            Err(e) if e.kind == sys::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.remove_mount_point(id);
        Ok(())
    }
}

/// Checks a plan's target (relative to the driver home): it may not be the home itself.
/// Escapes and symlinks are refused when it is resolved.
pub fn check_target(target: &str) -> Result<(), String> {
    if sys::fs::check_relative(target).is_ok_and(|p| p.as_os_str().is_empty()) {
        return Err("the mount target may not be the driver home itself".into());
    }
    Ok(())
}

/// Checks an overlay's shape: 1 to [`MAX_OVERLAY_LOWERS`] lower directories, and an upper
/// directory exactly when there is a work directory.
pub fn check_overlay_shape(lowers: usize, upper: bool, work: bool) -> Result<(), String> {
    if lowers == 0 {
        return Err("an overlay needs at least one lower directory".into());
    }
    if lowers > MAX_OVERLAY_LOWERS {
        return Err(format!(
            "{lowers} lower directories is more than the kernel's {MAX_OVERLAY_LOWERS}"
        ));
    }
    if upper != work {
        return Err("an overlay needs both an upper and a work directory, or neither".into());
    }
    Ok(())
}

/// Checks `plan` (from driver `driver`, whose home is `home`) against the sandbox and against
/// `request`.
pub fn check_plan(
    driver: &str,
    home: &sys::Dir,
    plan: &MountPlan,
    request: &MountRequest,
) -> Result<CheckedPlan, PlanError> {
    // No symlink anywhere in a plan path: what was checked is what gets mounted.
    let home = home
        .with_confinement(sys::fs::Confinement::NoSymlinks)
        .map_err(|cause| PlanError::Mount {
            id: String::new(),
            target: home.path().to_path_buf(),
            cause,
        })?;
    let resolve = |role: &'static str, path: &str| {
        home.open_dir(path).map_err(|e| PlanError::Path {
            driver: driver.into(),
            role,
            path: path.into(),
            reason: e.reason(),
            kind: e.kind,
        })
    };
    let invalid = |reason: String| PlanError::Invalid {
        driver: driver.into(),
        reason,
    };
    if request.read_only && !plan.read_only {
        return Err(invalid(
            "the host asked for a read-only mount and the plan is read-write".into(),
        ));
    }
    check_target(&plan.target).map_err(invalid)?;
    // The target is a directory the driver reserves for the layer; the host mounts on its
    // own mount point instead (see the module doc), but a plan naming a bad one is refused.
    resolve("target", &plan.target)?;
    let resolved = match &plan.kind {
        MountKind::Bind(bind) => Resolved::Bind {
            source: resolve("bind source", &bind.source)?,
        },
        MountKind::Overlay(ov) => {
            check_overlay_shape(ov.lower.len(), ov.upper.is_some(), ov.work.is_some())
                .map_err(invalid)?;
            let lower = ov
                .lower
                .iter()
                .map(|l| resolve("overlay lower", l))
                .collect::<Result<Vec<_>, _>>()?;
            Resolved::Overlay {
                lower,
                upper: ov
                    .upper
                    .as_deref()
                    .map(|u| resolve("overlay upper", u))
                    .transpose()?,
                work: ov
                    .work
                    .as_deref()
                    .map(|w| resolve("overlay work", w))
                    .transpose()?,
                options: ov
                    .options
                    .iter()
                    .map(|o| OverlayOption::as_str(*o).to_string())
                    .collect(),
            }
        }
    };
    Ok(CheckedPlan {
        read_only: plan.read_only || request.read_only,
        resolved,
    })
}

#[cfg(test)]
mod checks_tests;

//! Mount plans: the driver decides, the host checks, then executes.
//!
//! A driver's [`MountPlan`] names directories relative to its home. Before any mount syscall
//! every one of them is resolved beneath the home (an escape is `denied`), overlay options are
//! checked against [`OVERLAY_OPTIONS`], and a plan that would give write access where the host
//! asked for a read-only mount is refused. Only then are the resolved descriptors handed to
//! [`crate::sys::mount`]. Reference counts live in the layer store; this module only mounts
//! and unmounts.

use std::path::{Path, PathBuf};

use crate::sandbox::{MountKind, MountPlan, MountRequest};
use crate::sys::{self, SysError};

/// The kernel's limit of overlay lower directories.
pub const MAX_OVERLAY_LOWERS: usize = 500;
/// Options a driver may put on an overlay mount; anything naming a path (`lowerdir=`,
/// `upperdir=`, `workdir=`, `datadir+=`) must come through the typed plan instead.
pub const OVERLAY_OPTIONS: &[&str] = &[
    "index=off",
    "index=on",
    "metacopy=off",
    "metacopy=on",
    "redirect_dir=off",
    "redirect_dir=on",
    "redirect_dir=follow",
    "redirect_dir=nofollow",
    "xino=off",
    "xino=on",
    "xino=auto",
    "userxattr",
    "volatile",
];

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

/// A mount for another process to perform (containerd mounts what its snapshotter returns):
/// host paths, `mount(8)`-style options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalMount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// A plan whose every path has been resolved beneath the driver home and whose options are
/// allowed: safe to execute.
pub struct CheckedPlan {
    target: sys::Dir,
    target_path: PathBuf,
    read_only: bool,
    resolved: Resolved,
}

impl CheckedPlan {
    /// The absolute host path where the layer appears once mounted.
    pub fn target_path(&self) -> &Path {
        &self.target_path
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The plan as mounts for another process, by host path: a bind (`rbind`, `ro`/`rw`),
    /// or an overlay with `lowerdir=` nearest layer first (one lower directory and no upper
    /// is a read-only bind of it, as overlayfs wants two lowers without an upper). The paths
    /// were resolved beneath the driver home when the plan was checked; one holding `:` or
    /// `,` cannot be passed in overlay options and is refused.
    pub fn external_mounts(&self) -> Result<Vec<ExternalMount>, PlanError> {
        let path = |d: &sys::Dir| -> Result<String, PlanError> {
            let p = d.path().to_string_lossy().into_owned();
            if p.contains([':', ',']) {
                return Err(PlanError::Invalid {
                    driver: String::new(),
                    reason: format!("path {p} holds `:` or `,` and cannot be an overlay option"),
                });
            }
            Ok(p)
        };
        let bind = |source: &sys::Dir, read_only: bool| -> Result<ExternalMount, PlanError> {
            Ok(ExternalMount {
                kind: "bind".into(),
                source: path(source)?,
                options: vec![if read_only { "ro" } else { "rw" }.into(), "rbind".into()],
            })
        };
        match &self.resolved {
            Resolved::Bind { source } => Ok(vec![bind(source, self.read_only)?]),
            Resolved::Overlay {
                lower,
                upper: None,
                work: None,
                ..
            } if lower.len() == 1 => Ok(vec![bind(&lower[0], true)?]),
            Resolved::Overlay {
                lower,
                upper,
                work,
                options,
            } => {
                let mut opts = Vec::new();
                if let (Some(u), Some(w)) = (upper, work) {
                    opts.push(format!("workdir={}", path(w)?));
                    opts.push(format!("upperdir={}", path(u)?));
                }
                let lowers = lower.iter().map(path).collect::<Result<Vec<_>, _>>()?;
                opts.push(format!("lowerdir={}", lowers.join(":")));
                opts.extend(options.iter().cloned());
                if self.read_only && upper.is_some() {
                    opts.push("ro".into());
                }
                Ok(vec![ExternalMount {
                    kind: "overlay".into(),
                    source: "overlay".into(),
                    options: opts,
                }])
            }
        }
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

    /// Performs the mount.
    pub fn execute(&self, id: &str) -> Result<(), PlanError> {
        let r = match &self.resolved {
            Resolved::Bind { source } => {
                sys::mount::bind(source, &self.target, &self.target_path, self.read_only)
            }
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
                sys::mount::overlay(&spec, &self.target, &self.target_path)
            }
        };
        r.map_err(|cause| PlanError::Mount {
            id: id.into(),
            target: self.target_path.clone(),
            cause,
        })
    }
}

/// Checks `plan` (from driver `driver`, whose home is `home` at `home_path`) against the
/// sandbox and against `request`.
pub fn check_plan(
    driver: &str,
    home: &sys::Dir,
    home_path: &Path,
    plan: &MountPlan,
    request: &MountRequest,
) -> Result<CheckedPlan, PlanError> {
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
    if crate::sys::fs::check_relative(&plan.target).is_ok_and(|p| p.as_os_str().is_empty()) {
        return Err(invalid(
            "the mount target may not be the driver home itself".into(),
        ));
    }
    let target = resolve("target", &plan.target)?;
    let resolved = match &plan.kind {
        MountKind::Bind(bind) => Resolved::Bind {
            source: resolve("bind source", &bind.source)?,
        },
        MountKind::Overlay(ov) => {
            if ov.lower.is_empty() {
                return Err(invalid(
                    "an overlay needs at least one lower directory".into(),
                ));
            }
            if ov.lower.len() > MAX_OVERLAY_LOWERS {
                return Err(invalid(format!(
                    "{} lower directories is more than the kernel's {MAX_OVERLAY_LOWERS}",
                    ov.lower.len()
                )));
            }
            if ov.upper.is_some() != ov.work.is_some() {
                return Err(invalid(
                    "an overlay needs both an upper and a work directory, or neither".into(),
                ));
            }
            if let Some(bad) = ov
                .options
                .iter()
                .find(|o| !OVERLAY_OPTIONS.contains(&o.as_str()))
            {
                return Err(invalid(format!(
                    "overlay option `{bad}` is not allowed (allowed: {})",
                    OVERLAY_OPTIONS.join(", ")
                )));
            }
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
                options: ov.options.clone(),
            }
        }
    };
    Ok(CheckedPlan {
        target,
        target_path: home_path.join(&plan.target),
        read_only: plan.read_only || request.read_only,
        resolved,
    })
}

/// Unmounts a layer's mount point; `force` detaches a busy mount lazily.
pub fn unmount(target: &Path, force: bool) -> Result<(), SysError> {
    match sys::mount::unmount(target, false) {
        Err(e) if force && e.kind == sys::ErrorKind::Busy => sys::mount::unmount(target, true),
        other => other,
    }
}

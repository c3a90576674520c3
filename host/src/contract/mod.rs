//! The host's own types for what the driver contract carries: mount plans, layer changes,
//! driver errors, file stats, copy and apply figures, btrfs and zfs records.
//!
//! Why they exist: the WIT of each contract version (`wit/`) generates its own Rust types in
//! [`crate::sandbox`], one set per version. The rest of the host (mount, layers, the suite,
//! the front ends) works on these types only, and each version's module in the sandbox
//! converts at the edge, so a new contract version is one more module in the sandbox and
//! nothing else changes. These types never name wasmtime.
//!
//! Where a domain type already existed lower down (tree changes and whiteout formats in
//! [`crate::archive`], copy modes and figures in [`crate::copy`], btrfs, zfs and overlayfs
//! records in [`crate::sys`]) it is re-exported here rather than duplicated.

pub use crate::archive::{ApplyStats, Change, ChangeKind, WhiteoutFormat};
pub use crate::copy::{CopyMode, CopyStats};
pub use crate::sys::FileKind;
pub use crate::sys::btrfs::SubvolumeInfo;
pub use crate::sys::mount::OverlayFeatures;
pub use crate::sys::zfs::{ListedDataset as ZfsDataset, ZfsBackend};

/// Key/value options: `--opt KEY=VALUE` on the CLI, `[drivers.NAME] options` in config.
pub type Options = Vec<(String, String)>;

/// An errno from a syscall the host made, with the host's description of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoError {
    pub errno: i32,
    pub message: String,
}

/// A driver's expected failures (and the host's answers to a driver's calls). Host bugs and
/// guest protocol violations are not these: they end the call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DriverError {
    NotFound(String),
    AlreadyExists(String),
    InvalidArgument(String),
    Unsupported(String),
    Busy(String),
    Denied(String),
    /// Out of space or over a quota (ENOSPC, EDQUOT). Contract 0.1 has no such error: there
    /// it travels as [`DriverError::Io`] with the errno, both ways.
    NoSpace(IoError),
    Io(IoError),
}

impl DriverError {
    /// The same error with its text passed through `f` (escaping a driver's text).
    pub fn map_text(self, f: impl Fn(&str) -> String) -> DriverError {
        use DriverError as E;
        match self {
            E::NotFound(m) => E::NotFound(f(&m)),
            E::AlreadyExists(m) => E::AlreadyExists(f(&m)),
            E::InvalidArgument(m) => E::InvalidArgument(f(&m)),
            E::Unsupported(m) => E::Unsupported(f(&m)),
            E::Busy(m) => E::Busy(f(&m)),
            E::Denied(m) => E::Denied(f(&m)),
            E::NoSpace(mut e) => {
                e.message = f(&e.message);
                E::NoSpace(e)
            }
            E::Io(mut e) => {
                e.message = f(&e.message);
                E::Io(e)
            }
        }
    }
}

/// A driver error as people read it.
pub fn describe(error: &DriverError) -> String {
    match error {
        DriverError::NotFound(m) => format!("not found: {m}"),
        DriverError::AlreadyExists(m) => format!("already exists: {m}"),
        DriverError::InvalidArgument(m) => format!("invalid argument: {m}"),
        DriverError::Unsupported(m) => format!("unsupported: {m}"),
        DriverError::Busy(m) => format!("busy: {m}"),
        DriverError::Denied(m) => format!("denied: {m}"),
        DriverError::NoSpace(e) => format!("no space (errno {}): {}", e.errno, e.message),
        DriverError::Io(e) => format!("I/O error (errno {}): {}", e.errno, e.message),
    }
}

/// What a driver says of itself at `init`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverInfo {
    /// The driver's name, e.g. `vfs`.
    pub name: String,
    /// Capabilities the driver has found usable on this host, as `strata status` shows.
    pub status: Vec<(String, String)>,
}

/// What the host asks of a mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountRequest {
    /// The layer must be mounted read-only (a view, or a layer that is not read-write).
    pub read_only: bool,
    pub options: Options,
}

/// How to mount a layer, as a driver plans it; checked by [`crate::mount::check_plan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountPlan {
    /// A directory the driver reserves for the layer, relative to its home.
    pub target: String,
    pub kind: MountKind,
    pub read_only: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountKind {
    Bind(BindMount),
    Overlay(OverlayMount),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    /// The directory to bind, relative to the home.
    pub source: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlayMount {
    /// Lower directories, nearest parent first.
    pub lower: Vec<String>,
    /// Upper and work directories; both absent for a read-only overlay.
    pub upper: Option<String>,
    pub work: Option<String>,
    /// Extra mount options, each one the host allows.
    pub options: Vec<OverlayOption>,
}

/// The overlayfs mount options a driver may ask for. Nothing naming a path (`lowerdir=`,
/// `upperdir=`, `workdir=`, `datadir+=`) is here: paths come through the typed plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OverlayOption {
    /// `index=on|off`.
    Index(bool),
    /// `metacopy=on|off`.
    Metacopy(bool),
    /// `redirect_dir=...`.
    RedirectDir(RedirectDir),
    /// `xino=...`.
    Xino(Xino),
    /// `userxattr`: overlay xattrs in the `user.` namespace.
    UserXattr,
    /// `volatile`: no syncs to the upper layer.
    Volatile,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RedirectDir {
    On,
    Off,
    Follow,
    NoFollow,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Xino {
    On,
    Off,
    Auto,
}

impl OverlayOption {
    /// Every option, in the order the host lists them.
    pub const ALL: [OverlayOption; 13] = [
        OverlayOption::Index(false),
        OverlayOption::Index(true),
        OverlayOption::Metacopy(false),
        OverlayOption::Metacopy(true),
        OverlayOption::RedirectDir(RedirectDir::Off),
        OverlayOption::RedirectDir(RedirectDir::On),
        OverlayOption::RedirectDir(RedirectDir::Follow),
        OverlayOption::RedirectDir(RedirectDir::NoFollow),
        OverlayOption::Xino(Xino::Off),
        OverlayOption::Xino(Xino::On),
        OverlayOption::Xino(Xino::Auto),
        OverlayOption::UserXattr,
        OverlayOption::Volatile,
    ];

    /// The option as overlayfs spells it (`index=off`).
    pub fn as_str(self) -> &'static str {
        match self {
            OverlayOption::Index(false) => "index=off",
            OverlayOption::Index(true) => "index=on",
            OverlayOption::Metacopy(false) => "metacopy=off",
            OverlayOption::Metacopy(true) => "metacopy=on",
            OverlayOption::RedirectDir(RedirectDir::Off) => "redirect_dir=off",
            OverlayOption::RedirectDir(RedirectDir::On) => "redirect_dir=on",
            OverlayOption::RedirectDir(RedirectDir::Follow) => "redirect_dir=follow",
            OverlayOption::RedirectDir(RedirectDir::NoFollow) => "redirect_dir=nofollow",
            OverlayOption::Xino(Xino::Off) => "xino=off",
            OverlayOption::Xino(Xino::On) => "xino=on",
            OverlayOption::Xino(Xino::Auto) => "xino=auto",
            OverlayOption::UserXattr => "userxattr",
            OverlayOption::Volatile => "volatile",
        }
    }

    /// Parses an option as overlayfs spells it; `Err` names the option and the allowed ones.
    pub fn parse(text: &str) -> Result<OverlayOption, String> {
        OverlayOption::ALL
            .into_iter()
            .find(|o| o.as_str() == text)
            .ok_or_else(|| {
                let allowed: Vec<&str> = OverlayOption::ALL.iter().map(|o| o.as_str()).collect();
                format!(
                    "overlay option `{}` is not allowed (allowed: {})",
                    crate::text::escape(text),
                    allowed.join(", ")
                )
            })
    }
}

/// What `lstat` says of a path in a driver's home (symlinks are not followed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStat {
    pub kind: FileKind,
    /// Permission and special bits (`0o7777` at most).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u64,
    /// Device number of a char/block device.
    pub rdev: u64,
    pub mtime_seconds: i64,
    pub mtime_nanoseconds: u32,
}

/// Which ZFS serves a driver's parent dataset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZfsPoolInfo {
    pub backend: ZfsBackend,
    /// The operator's parent dataset, in full (for status output).
    pub parent: String,
}

/// How much a driver's log message matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_options_parse_back_to_themselves() {
        for o in OverlayOption::ALL {
            assert_eq!(OverlayOption::parse(o.as_str()), Ok(o));
        }
    }

    #[test]
    fn overlay_options_naming_paths_are_refused() {
        for bad in [
            "lowerdir=/etc",
            "upperdir=/tmp",
            "workdir=x",
            "datadir+=/",
            "index",
            "",
            // A comma would smuggle a second option past an exact match on the first.
            "index=off,lowerdir=/etc",
            "index=off ",
            "INDEX=off",
            "xino",
        ] {
            let e = OverlayOption::parse(bad).expect_err(bad);
            assert!(e.contains("is not allowed"), "{e}");
        }
    }
}

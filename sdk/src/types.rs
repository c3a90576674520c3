//! The SDK's own types for what crosses the contract, and their conversions to and from the
//! generated bindings.
//!
//! Why: the bindings change with every contract version. A driver written against these
//! types keeps compiling when the SDK moves to a new version wherever the SDK can absorb the
//! change (a new error case, a field the SDK fills in, a function split or joined). Enums a
//! later contract may extend are `#[non_exhaustive]`, so matching them needs a `_` arm.

use crate::bindings::exports::strata::driver::driver as wit_driver;
use crate::bindings::strata::driver::types as wit;

/// An errno from a syscall the host made, with the host's description of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoError {
    pub errno: i32,
    pub message: String,
}

/// A driver's expected failures, and the host's answers to a driver's calls. Host bugs and
/// guest protocol violations trap instead.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The path, layer, dataset or attribute does not exist.
    NotFound(String),
    /// Something is already there.
    AlreadyExists(String),
    /// The request is malformed or past a limit of the contract.
    InvalidArgument(String),
    /// The filesystem, kernel or driver cannot do this.
    Unsupported(String),
    /// In use: a mount point, a dataset with clones.
    Busy(String),
    /// Outside the driver's sandbox, or not permitted.
    Denied(String),
    /// Out of space or over a quota (ENOSPC, EDQUOT).
    NoSpace(IoError),
    /// Any other failed syscall.
    Io(IoError),
}

impl Error {
    /// The error's text, without its kind.
    pub fn message(&self) -> &str {
        match self {
            Error::NotFound(m)
            | Error::AlreadyExists(m)
            | Error::InvalidArgument(m)
            | Error::Unsupported(m)
            | Error::Busy(m)
            | Error::Denied(m) => m,
            Error::NoSpace(e) | Error::Io(e) => &e.message,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NotFound(m) => write!(f, "not found: {m}"),
            Error::AlreadyExists(m) => write!(f, "already exists: {m}"),
            Error::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            Error::Unsupported(m) => write!(f, "unsupported: {m}"),
            Error::Busy(m) => write!(f, "busy: {m}"),
            Error::Denied(m) => write!(f, "denied: {m}"),
            Error::NoSpace(e) => write!(f, "no space (errno {}): {}", e.errno, e.message),
            Error::Io(e) => write!(f, "I/O error (errno {}): {}", e.errno, e.message),
        }
    }
}

impl std::error::Error for Error {}

impl From<wit::Error> for Error {
    fn from(e: wit::Error) -> Self {
        match e {
            wit::Error::NotFound(m) => Error::NotFound(m),
            wit::Error::AlreadyExists(m) => Error::AlreadyExists(m),
            wit::Error::InvalidArgument(m) => Error::InvalidArgument(m),
            wit::Error::Unsupported(m) => Error::Unsupported(m),
            wit::Error::Busy(m) => Error::Busy(m),
            wit::Error::Denied(m) => Error::Denied(m),
            wit::Error::NoSpace(e) => Error::NoSpace(IoError {
                errno: e.errno,
                message: e.message,
            }),
            wit::Error::Io(e) => Error::Io(IoError {
                errno: e.errno,
                message: e.message,
            }),
        }
    }
}

impl From<Error> for wit::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::NotFound(m) => wit::Error::NotFound(m),
            Error::AlreadyExists(m) => wit::Error::AlreadyExists(m),
            Error::InvalidArgument(m) => wit::Error::InvalidArgument(m),
            Error::Unsupported(m) => wit::Error::Unsupported(m),
            Error::Busy(m) => wit::Error::Busy(m),
            Error::Denied(m) => wit::Error::Denied(m),
            Error::NoSpace(e) => wit::Error::NoSpace(wit::IoError {
                errno: e.errno,
                message: e.message,
            }),
            Error::Io(e) => wit::Error::Io(wit::IoError {
                errno: e.errno,
                message: e.message,
            }),
        }
    }
}

/// A point in time: seconds since the Unix epoch and nanoseconds (below 1 000 000 000)
/// within that second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    pub seconds: i64,
    pub nanoseconds: u32,
}

impl Timestamp {
    /// Whole seconds.
    pub fn from_seconds(seconds: i64) -> Self {
        Timestamp {
            seconds,
            nanoseconds: 0,
        }
    }
}

impl From<wit::Timestamp> for Timestamp {
    fn from(t: wit::Timestamp) -> Self {
        Timestamp {
            seconds: t.seconds,
            nanoseconds: t.nanoseconds,
        }
    }
}

impl From<Timestamp> for wit::Timestamp {
    fn from(t: Timestamp) -> Self {
        wit::Timestamp {
            seconds: t.seconds,
            nanoseconds: t.nanoseconds,
        }
    }
}

/// What happened to a path of a layer relative to its parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    Add,
    Modify,
    Delete,
}

/// One changed path of a layer relative to its parent; `path` is absolute within the layer
/// (`/etc/passwd`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub path: String,
    pub kind: ChangeKind,
}

impl From<wit::Change> for Change {
    fn from(c: wit::Change) -> Self {
        Change {
            path: c.path,
            kind: match c.kind {
                wit::ChangeKind::Add => ChangeKind::Add,
                wit::ChangeKind::Modify => ChangeKind::Modify,
                wit::ChangeKind::Delete => ChangeKind::Delete,
            },
        }
    }
}

impl From<Change> for wit::Change {
    fn from(c: Change) -> Self {
        wit::Change {
            path: c.path,
            kind: match c.kind {
                ChangeKind::Add => wit::ChangeKind::Add,
                ChangeKind::Modify => wit::ChangeKind::Modify,
                ChangeKind::Delete => wit::ChangeKind::Delete,
            },
        }
    }
}

/// How a layer keeps deletions on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WhiteoutFormat {
    /// Full-tree layers (vfs, btrfs, zfs): deletions delete; nothing stays on disk.
    Delete,
    /// overlayfs: a deletion is a 0:0 character device, an opaque directory has
    /// `trusted.overlay.opaque=y`.
    OverlayTrusted,
    /// overlayfs mounted with `userxattr`: as above with `user.overlay.opaque=y`.
    OverlayUser,
}

impl From<WhiteoutFormat> for wit::WhiteoutFormat {
    fn from(w: WhiteoutFormat) -> Self {
        match w {
            WhiteoutFormat::Delete => wit::WhiteoutFormat::Delete,
            WhiteoutFormat::OverlayTrusted => wit::WhiteoutFormat::OverlayTrusted,
            WhiteoutFormat::OverlayUser => wit::WhiteoutFormat::OverlayUser,
        }
    }
}

/// A layer diff the host holds for the driver (a tar stream): what [`crate::host::archive`]
/// and [`crate::host::overlay`] return and what [`Driver::diff`](crate::Driver::diff)
/// returns. Layer bytes never enter the driver's memory.
#[derive(Debug)]
pub struct LayerDiff(pub(crate) wit::LayerDiff);

/// The incoming layer tar of [`Driver::apply_diff`](crate::Driver::apply_diff), lent by the
/// host for the call: hand it to [`crate::host::archive::apply`]. It can be applied once.
#[derive(Clone, Copy, Debug)]
pub struct IncomingDiff<'a>(pub(crate) &'a wit::LayerDiff);

impl<'a> IncomingDiff<'a> {
    #[doc(hidden)]
    pub fn __from_bindings(diff: &'a wit::LayerDiff) -> Self {
        IncomingDiff(diff)
    }
}

/// What `init` reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DriverInfo {
    /// The driver's name, e.g. `vfs`.
    pub name: String,
    /// Capabilities the driver has found usable on this host, as `strata status` shows.
    pub status: Vec<(String, String)>,
}

/// What the host asks of a mount.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountRequest {
    /// The layer must be mounted read-only (a view, or a layer that is not read-write).
    pub read_only: bool,
    /// The operator's mount options, as given.
    pub options: crate::Options,
}

/// How to mount a layer. The host validates every path beneath the home before mounting and
/// refuses a writable plan when it asked for read-only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountPlan {
    /// A directory, relative to the home, that the driver reserves for the layer.
    pub target: String,
    pub kind: MountKind,
    pub read_only: bool,
}

/// What kind of mount a plan asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MountKind {
    Bind(BindMount),
    Overlay(OverlayMount),
}

/// A bind mount of one directory of the home.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    /// The directory to bind, relative to the home.
    pub source: String,
}

/// An overlay mount of directories of the home.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OverlayMount {
    /// Lower directories, nearest parent first (at most 500).
    pub lower: Vec<String>,
    /// Upper and work directories; both absent for a read-only overlay.
    pub upper: Option<String>,
    pub work: Option<String>,
    /// Extra mount options.
    pub options: Vec<OverlayOption>,
}

/// `redirect_dir=` of an overlay mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RedirectDir {
    On,
    Off,
    Follow,
    NoFollow,
}

/// `xino=` of an overlay mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Xino {
    On,
    Off,
    Auto,
}

/// The overlayfs mount options a driver may ask for: exactly those the host allows. Nothing
/// naming a path can be said; paths come through the typed plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OverlayOption {
    /// `index=on` (true) or `index=off`.
    Index(bool),
    /// `metacopy=on` (true) or `metacopy=off`.
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

impl OverlayOption {
    /// Every option, in the order [`OverlayOption::parse`] lists them.
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

    /// Parses an option as overlayfs spells it (an operator's `mountopt=`); anything else,
    /// a path-naming option included, is `invalid-argument` naming the allowed ones.
    pub fn parse(text: &str) -> Result<OverlayOption, Error> {
        OverlayOption::ALL
            .into_iter()
            .find(|o| o.as_str() == text)
            .ok_or_else(|| {
                let allowed: Vec<&str> = OverlayOption::ALL.iter().map(|o| o.as_str()).collect();
                Error::InvalidArgument(format!(
                    "overlay option `{}` is not one the host allows ({})",
                    text.escape_debug(),
                    allowed.join(", ")
                ))
            })
    }
}

impl From<OverlayOption> for wit_driver::OverlayOption {
    fn from(o: OverlayOption) -> Self {
        use wit_driver::OverlayOption as W;
        match o {
            OverlayOption::Index(on) => W::Index(on),
            OverlayOption::Metacopy(on) => W::Metacopy(on),
            OverlayOption::RedirectDir(r) => W::RedirectDir(match r {
                RedirectDir::On => wit_driver::RedirectDir::On,
                RedirectDir::Off => wit_driver::RedirectDir::Off,
                RedirectDir::Follow => wit_driver::RedirectDir::Follow,
                RedirectDir::NoFollow => wit_driver::RedirectDir::Nofollow,
            }),
            OverlayOption::Xino(x) => W::Xino(match x {
                Xino::On => wit_driver::Xino::On,
                Xino::Off => wit_driver::Xino::Off,
                Xino::Auto => wit_driver::Xino::Auto,
            }),
            OverlayOption::UserXattr => W::UserXattr,
            OverlayOption::Volatile => W::Volatile,
        }
    }
}

impl From<MountPlan> for wit_driver::MountPlan {
    fn from(p: MountPlan) -> Self {
        wit_driver::MountPlan {
            target: p.target,
            kind: match p.kind {
                MountKind::Bind(b) => {
                    wit_driver::MountKind::Bind(wit_driver::BindMount { source: b.source })
                }
                MountKind::Overlay(o) => wit_driver::MountKind::Overlay(wit_driver::OverlayMount {
                    lower: o.lower,
                    upper: o.upper,
                    work: o.work,
                    options: o.options.into_iter().map(Into::into).collect(),
                }),
            },
            read_only: p.read_only,
        }
    }
}

impl From<wit_driver::MountRequest> for MountRequest {
    fn from(r: wit_driver::MountRequest) -> Self {
        MountRequest {
            read_only: r.read_only,
            options: crate::Options(r.options),
        }
    }
}

impl From<DriverInfo> for wit_driver::DriverInfo {
    fn from(i: DriverInfo) -> Self {
        wit_driver::DriverInfo {
            name: i.name,
            status: i.status,
        }
    }
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
    fn overlay_options_naming_paths_do_not_parse() {
        for bad in ["lowerdir=/etc", "upperdir=/tmp", "workdir=x", "index", ""] {
            let Err(Error::InvalidArgument(m)) = OverlayOption::parse(bad) else {
                panic!("{bad} parsed")
            };
            assert!(m.contains("volatile"), "{m}");
        }
    }

    #[test]
    fn errors_cross_the_contract_unchanged() {
        let all = [
            Error::NotFound("a".into()),
            Error::AlreadyExists("b".into()),
            Error::InvalidArgument("c".into()),
            Error::Unsupported("d".into()),
            Error::Busy("e".into()),
            Error::Denied("f".into()),
            Error::NoSpace(IoError {
                errno: 122,
                message: "g".into(),
            }),
            Error::Io(IoError {
                errno: 5,
                message: "h".into(),
            }),
        ];
        for e in all {
            assert_eq!(Error::from(wit::Error::from(e.clone())), e);
        }
    }
}

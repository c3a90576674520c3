//! Errno mapped to meaning, once. Every wrapper in `sys` returns [`SysError`]; callers above
//! match on [`ErrorKind`] and never look at raw errno values.

use std::fmt;
use std::path::{Path, PathBuf};

/// What a failed syscall means for the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// ENOENT, ENOTDIR on a path component.
    NotFound,
    /// EEXIST, ENOTEMPTY.
    AlreadyExists,
    /// The path would leave its confining directory (EXDEV from `openat2` with
    /// `RESOLVE_BENEATH`/`RESOLVE_IN_ROOT`, ELOOP on a symlink where none may be), or the
    /// kernel refused permission (EACCES, EPERM).
    Denied,
    /// EBUSY: a mount point, a mounted filesystem.
    Busy,
    /// EOPNOTSUPP, ENOTSUP, ENOSYS, ENOTTY on an ioctl, EXDEV on a cross-device reflink.
    Unsupported,
    /// EINVAL, ENAMETOOLONG, and lexically bad input caught before any syscall.
    InvalidArgument,
    /// EDQUOT, ENOSPC.
    NoSpace,
    /// Anything else.
    Other,
}

/// A failed filesystem operation: what was attempted, on which path, and why.
#[derive(Debug, thiserror::Error)]
pub struct SysError {
    pub kind: ErrorKind,
    /// The raw errno, 0 for errors found before a syscall.
    pub errno: i32,
    /// The operation, e.g. `mkdirat`, `openat2`, `fsmount`.
    pub op: &'static str,
    pub path: PathBuf,
    /// Extra words for errors found before a syscall.
    pub detail: Option<String>,
}

impl SysError {
    /// Maps an errno to its meaning for `op` on `path`. This is the only place errno values
    /// are interpreted.
    pub fn from_errno(op: &'static str, path: impl AsRef<Path>, errno: rustix::io::Errno) -> Self {
        use rustix::io::Errno as E;
        let kind = match errno {
            E::NOENT | E::NOTDIR => ErrorKind::NotFound,
            E::EXIST | E::NOTEMPTY => ErrorKind::AlreadyExists,
            E::ACCESS | E::PERM | E::LOOP => ErrorKind::Denied,
            E::XDEV if op == "openat2" => ErrorKind::Denied,
            E::XDEV if op == "ficlone" => ErrorKind::Unsupported,
            E::BUSY => ErrorKind::Busy,
            E::OPNOTSUPP | E::NOSYS | E::NOTTY => ErrorKind::Unsupported,
            E::INVAL | E::NAMETOOLONG => ErrorKind::InvalidArgument,
            E::DQUOT | E::NOSPC => ErrorKind::NoSpace,
            _ => ErrorKind::Other,
        };
        SysError {
            kind,
            errno: errno.raw_os_error(),
            op,
            path: path.as_ref().to_path_buf(),
            detail: None,
        }
    }

    /// An error found before any syscall (bad input), with its explanation.
    pub fn invalid(op: &'static str, path: impl AsRef<Path>, detail: impl Into<String>) -> Self {
        Self::without_errno(ErrorKind::InvalidArgument, op, path, detail)
    }

    /// A path that would leave its confining directory.
    pub fn escape(op: &'static str, path: impl AsRef<Path>, detail: impl Into<String>) -> Self {
        Self::without_errno(ErrorKind::Denied, op, path, detail)
    }

    pub fn without_errno(
        kind: ErrorKind,
        op: &'static str,
        path: impl AsRef<Path>,
        detail: impl Into<String>,
    ) -> Self {
        SysError {
            kind,
            errno: 0,
            op,
            path: path.as_ref().to_path_buf(),
            detail: Some(detail.into()),
        }
    }

    /// The errno with the kernel's text, or the detail for errors found before a syscall.
    pub fn reason(&self) -> String {
        match (&self.detail, self.errno) {
            (Some(d), _) => d.clone(),
            (None, e) => std::io::Error::from_raw_os_error(e).to_string(),
        }
    }
}

impl fmt::Display for SysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.op, self.path.display(), self.reason())
    }
}

pub type SysResult<T> = Result<T, SysError>;

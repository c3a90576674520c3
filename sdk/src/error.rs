//! Constructors for [`Error`], so drivers say what went wrong in one line.

use crate::Error;

pub fn not_found(what: impl Into<String>) -> Error {
    Error::NotFound(what.into())
}

pub fn already_exists(what: impl Into<String>) -> Error {
    Error::AlreadyExists(what.into())
}

pub fn invalid_argument(what: impl Into<String>) -> Error {
    Error::InvalidArgument(what.into())
}

pub fn unsupported(what: impl Into<String>) -> Error {
    Error::Unsupported(what.into())
}

pub fn busy(what: impl Into<String>) -> Error {
    Error::Busy(what.into())
}

pub fn denied(what: impl Into<String>) -> Error {
    Error::Denied(what.into())
}

/// Out of space or over a quota, with the errno (ENOSPC 28, EDQUOT 122).
pub fn no_space(errno: i32, what: impl Into<String>) -> Error {
    Error::NoSpace(crate::IoError {
        errno,
        message: what.into(),
    })
}

/// An error from the guest's own file access (WASI, beneath the home) as an [`Error`]:
/// not-found, already-exists, permission and no-space keep their meaning; the rest is `io`.
pub fn from_io(what: impl std::fmt::Display, e: std::io::Error) -> Error {
    use std::io::ErrorKind as K;
    let message = format!("{what}: {e}");
    let io = |message| crate::IoError {
        errno: e.raw_os_error().unwrap_or(0),
        message,
    };
    match e.kind() {
        K::NotFound => Error::NotFound(message),
        K::AlreadyExists => Error::AlreadyExists(message),
        K::PermissionDenied => Error::Denied(message),
        K::StorageFull | K::QuotaExceeded => Error::NoSpace(io(message)),
        _ => Error::Io(io(message)),
    }
}

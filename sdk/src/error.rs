//! Constructors for the WIT [`Error`] variant, so drivers say what went wrong in one line.

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

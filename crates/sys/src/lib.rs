//! Syscalls. The one crate of Strata allowed `unsafe`, and only in the files that say so
//! (`#![allow(unsafe_code)]` at their top: [`btrfs`] ioctls, [`rusage`]'s `wait4`, and
//! [`component`], loading native code wasmtime compiled); everything above it uses the typed,
//! confined wrappers here. Errno values are mapped to meaning once, in [`error`].
#![deny(unsafe_code)]

pub mod btrfs;
#[cfg(feature = "component")]
pub mod component;
pub mod error;
pub mod fs;
pub mod mount;
pub mod named;
pub mod rusage;
pub mod sparse;
pub mod tree;
pub mod wasi_open;
pub mod zfs;

pub use error::{ErrorKind, SysError, SysResult};
pub use fs::{Dir, FileKind, Stat};

//! Syscalls. The one module of Strata allowed `unsafe`; everything above it uses the typed,
//! confined wrappers here. Errno values are mapped to meaning once, in [`error`].
#![allow(unsafe_code)]

pub mod btrfs;
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

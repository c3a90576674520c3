//! Strata's core: the layer store, layers, mount plans, layer archives, images and config:
//! everything the host decides and records, on top of the syscall wrappers of [`sys`].
//!
//! No `unsafe` here (it is forbidden), and no WebAssembly runtime: drivers are reached
//! through [`contract::Driver`], which the sandbox crate implements. Modules:
//!
//! - the [`contract`]: the host's own types for what the driver contract carries, and the
//!   driver traits.
//! - the [`archive`]: layer tars (apply, export) and tree comparison (changes, sizes).
//! - the [`copy`]: copying trees with reflinks, preserving everything a layer holds.
//! - the [`mount`]: mount-plan validation and execution.
//! - the [`store`]: the layer store (SQLite), crash recovery, locking.
//! - the [`layers`]: the store and its driver together (`Strata`).
//! - the [`image`]: OCI image import and export.
//! - the [`config`], [`registry`], [`layout`]: reading `strata.toml`, finding drivers, the
//!   store's directories.
#![forbid(unsafe_code)]

pub use strata_sys as sys;

pub mod archive;
pub mod config;
pub mod contract;
pub mod copy;
#[doc(hidden)]
pub mod fuzzing;
pub mod image;
pub mod layers;
pub mod layout;
pub mod mount;
pub mod paths;
pub mod registry;
pub mod store;
pub mod text;

#[cfg(test)]
pub(crate) mod test_env;

//! Strata's host: the privileged half of a container storage driver.
//!
//! Drivers (WebAssembly components) decide layering policy; this crate checks what they ask
//! for against their sandbox and then performs it. Modules follow the architecture:
//!
//! - the [`sys`]: the only module with `unsafe` and raw syscalls; typed wrappers on rustix.
//! - the [`archive`]: layer tars (apply, export) and tree comparison (changes, sizes).
//! - the [`copy`]: copying trees with reflinks, preserving everything a layer holds.
//! - the [`contract`]: the host's own types for what the driver contract carries.
//! - the [`sandbox`]: wasmtime engine, component cache, the host interfaces drivers import.
//! - the [`mount`]: mount-plan validation and execution, mount reference counts.
//! - the [`store`]: the layer store (SQLite), crash recovery, locking.
//! - the [`config`]: reading `strata.toml`.
//! - the [`frontend`]: the CLI's commands, on top of the above.

pub mod archive;
pub mod config;
pub mod conformance;
pub mod contract;
pub mod copy;
pub mod frontend;
#[doc(hidden)]
pub mod fuzzing;
pub mod image;
pub mod layers;
pub mod layout;
pub mod mount;
pub mod paths;
pub mod registry;
pub mod sandbox;
pub mod store;
pub mod sys;
pub mod text;

#[cfg(test)]
pub(crate) mod test_env;

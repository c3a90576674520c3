//! The driver sandbox: wasmtime, the component cache, and the host interfaces drivers import.
//!
//! Why it is shaped this way:
//! - A wasmtime `Store` is dead after a trap, so every driver operation runs in a fresh
//!   `Store` instantiated from a long-lived `InstancePre` (tens of microseconds). A panic,
//!   trap, memory exhaustion or timeout fails that one call and nothing else.
//! - Capabilities are linked, not checked at call time: only the host interfaces the operator
//!   granted are in the linker, and a driver importing anything else is refused at load with
//!   a message naming the capability.
//! - Two time limits per call. The deadline counts the driver's own time on the wall clock:
//!   guest execution, its WASI waits and small host calls, but not bulk host work (a large
//!   tar apply is the host's work, not the driver's). The call timeout counts everything, so
//!   no call holds the store lock for longer. An epoch ticker wakes the store every
//!   [`EPOCH_TICK`] and the callback checks both; WASI waits and bulk host work check them
//!   themselves ([`limits`]). Memory is one budget for all memories and tables of the call.
//! - Each contract version has its own module (`v0_1`, `v0_2`): its bindings, the conversions between
//!   them and the host's own types ([`crate::contract`]) and thin adapters; nothing outside
//!   that module names a generated type, so serving a new version is adding a module and the
//!   arms that name it ([`ContractVersion`]).
//! - Compiling a component costs tens of milliseconds; the result is cached on disk keyed by
//!   the component's SHA-256 and the engine's compatibility hash, so a warm start only maps
//!   the cached code. Only `.wasm` from authors is accepted, never precompiled native code.

#![forbid(unsafe_code)]

pub(crate) use strata_core::{archive, config, contract, copy, layers, mount, store, text};
pub(crate) use strata_sys as sys;

pub mod cache;
mod driver;
pub mod host;
pub mod inspect;
pub mod limits;
mod runtime;
mod v0_1;
mod v0_2;
mod wasi_files;

pub use crate::contract::{ApplyTrace, ZfsAccess};
pub use cache::ComponentCache;
pub use driver::{SandboxLoader, SandboxedDriver, inspect_driver, open};
pub use host::{HostState, LayerDiff};
pub use runtime::{
    ContractVersion, DriverComponent, DriverRuntime, MAX_LAYERS_PER_METADATA_CALL, SandboxEngine,
    SandboxLimits,
};

use std::time::Duration;

pub use crate::contract::driver::{CallError, Capability, SandboxError};

/// The WIT package this host serves, in the versions of [`ContractVersion::ALL`].
pub const WIT_PACKAGE: &str = "strata:driver";

/// How often the epoch ticker wakes running drivers to check their deadline.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Bytes of a driver's stderr (panic messages) kept for error reports.
pub const MAX_DRIVER_STDERR: usize = 64 * 1024;
/// Host resources (diff handles) one driver call may hold at once.
pub const MAX_HOST_RESOURCES: usize = 256;
/// Bytes a single guest-to-host call may make the host copy out of guest memory.
pub const MAX_HOSTCALL_BYTES: usize = 16 * 1024 * 1024;

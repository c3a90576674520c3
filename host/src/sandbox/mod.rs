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
//! - Each contract version has its own module (`v0_1`): its bindings, the conversions between
//!   them and the host's own types ([`crate::contract`]) and thin adapters; nothing outside
//!   that module names a generated type, so serving a new version is adding a module and the
//!   arms that name it ([`ContractVersion`]).
//! - Compiling a component costs tens of milliseconds; the result is cached on disk keyed by
//!   the component's SHA-256 and the engine's compatibility hash, so a warm start only maps
//!   the cached code. Only `.wasm` from authors is accepted, never precompiled native code.

pub mod cache;
pub mod host;
pub mod inspect;
pub mod limits;
mod runtime;
mod v0_1;
mod wasi_files;

pub use cache::ComponentCache;
pub use host::ZfsAccess;
pub use host::{ApplyTrace, HostState, LayerDiff};
pub use runtime::{
    ContractVersion, DriverComponent, DriverRuntime, EngineError, MAX_LAYERS_PER_METADATA_CALL,
    SandboxEngine, SandboxLimits,
};

use std::time::Duration;

use crate::contract::{DriverError, describe};

/// The WIT package this host serves.
pub const WIT_PACKAGE: &str = "strata:driver";
/// Its version; drivers built against any `0.1.x` load (component-model semver rules).
pub const WIT_VERSION: &str = "0.1.0";

/// How often the epoch ticker wakes running drivers to check their deadline.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Bytes of a driver's stderr (panic messages) kept for error reports.
pub const MAX_DRIVER_STDERR: usize = 64 * 1024;
/// Host resources (diff handles) one driver call may hold at once.
pub const MAX_HOST_RESOURCES: usize = 256;
/// Bytes a single guest-to-host call may make the host copy out of guest memory.
pub const MAX_HOSTCALL_BYTES: usize = 16 * 1024 * 1024;

/// A host interface a driver may import; operators grant them per driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    Files,
    Copy,
    Archive,
    Overlay,
    Btrfs,
    Zfs,
    Log,
}

impl Capability {
    pub const ALL: [Capability; 7] = [
        Capability::Files,
        Capability::Copy,
        Capability::Archive,
        Capability::Overlay,
        Capability::Btrfs,
        Capability::Zfs,
        Capability::Log,
    ];

    /// The interface name in the WIT package, which is also the grant's name in config.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Files => "files",
            Capability::Copy => "copy",
            Capability::Archive => "archive",
            Capability::Overlay => "overlay",
            Capability::Btrfs => "btrfs",
            Capability::Zfs => "zfs",
            Capability::Log => "log",
        }
    }

    pub fn from_name(name: &str) -> Option<Capability> {
        Capability::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// Why a driver could not be loaded or a call could not complete. A driver's own expected
/// failures are [`DriverError`]s, not these.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("driver {driver}: cannot read {path}: {cause}")]
    Read {
        driver: String,
        path: std::path::PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "driver {driver}: {path} is precompiled native code; Strata loads only WebAssembly \
         components (.wasm) and compiles them itself"
    )]
    Precompiled {
        driver: String,
        path: std::path::PathBuf,
    },
    #[error("driver {driver}: {path} is not a valid WebAssembly component: {reason}")]
    Invalid {
        driver: String,
        path: std::path::PathBuf,
        reason: String,
    },
    #[error(
        "driver {driver} imports the `{capability}` capability ({import}), which is not granted \
         to it; grant it with `grants = [..., \"{capability}\"]` in [drivers.{driver}] if you \
         trust it"
    )]
    NotGranted {
        driver: String,
        capability: String,
        import: String,
    },
    #[error("driver {driver} imports `{import}`, which Strata does not provide{hint}")]
    UnknownImport {
        driver: String,
        import: String,
        hint: String,
    },
    #[error(
        "driver {driver} does not export strata:driver/driver@{WIT_VERSION}-compatible \
         interface (it exports: {exports})"
    )]
    NoDriverExport { driver: String, exports: String },
    #[error("driver {driver}: component cache {path}: {cause}")]
    Cache {
        driver: String,
        path: std::path::PathBuf,
        cause: std::io::Error,
    },
    #[error("driver {driver}: cannot open its home {path}: {reason}")]
    Home {
        driver: String,
        path: std::path::PathBuf,
        reason: String,
    },
    #[error(
        "driver {driver}: {op}: exceeded its deadline of {deadline:?} of its own time (guest \
         execution and waits; `deadline`)"
    )]
    Deadline {
        driver: String,
        op: String,
        deadline: Duration,
    },
    #[error(
        "driver {driver}: {op}: did not finish within its call timeout of {limit:?} (wall \
         clock, host work and waits included; `call_timeout`)"
    )]
    CallTimeout {
        driver: String,
        op: String,
        limit: Duration,
    },
    #[error(
        "driver {driver}: {op}: exceeded its memory limit of {limit} bytes (linear memories \
         and tables together){stderr}"
    )]
    OutOfMemory {
        driver: String,
        op: String,
        limit: usize,
        stderr: String,
    },
    #[error("driver {driver}: {op}: crashed: {reason}{stderr}")]
    Crashed {
        driver: String,
        op: String,
        reason: String,
        stderr: String,
    },
    #[error("driver {driver}: {reason}")]
    Setup { driver: String, reason: String },
    /// The driver answered something its contract version can say but the host refuses
    /// (an overlay mount option the host does not allow, ...).
    #[error("driver {driver}: {op}: {reason}")]
    InvalidAnswer {
        driver: String,
        op: String,
        reason: String,
    },
}

/// The outcome of a driver call that may fail either way.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The driver answered with an expected failure.
    #[error("driver {driver}: {op}: {}", describe(error))]
    Driver {
        driver: String,
        op: String,
        error: DriverError,
    },
    /// The call could not complete (trap, timeout, memory limit, ...).
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

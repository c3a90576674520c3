//! What the host's core needs of a driver, whatever runs it: the [`Driver`] trait, the
//! [`DriverLoader`] that starts one, and the ways a call can fail.
//!
//! Why a trait: the core (store, layers, mounts, images) must not depend on the WebAssembly
//! runtime. The sandbox implements these traits with wasmtime; the core only calls them, so
//! the trust boundary (untrusted guest code on one side, the host's records and syscalls on
//! the other) is visible in which crate depends on which.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{Change, DriverError, DriverInfo, MountPlan, MountRequest, describe};
use crate::archive::{ArchiveError, Journal};
use crate::sys::{self, ErrorKind};

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
        "driver {driver} does not export a strata:driver/driver interface (it exports: \
         {exports})"
    )]
    NoDriverExport { driver: String, exports: String },
    /// The driver exports a contract version this host does not speak: refused before
    /// anything is linked, with the versions it speaks (docs/contract.md).
    #[error(
        "driver {driver} was built for contract strata:driver {version}, which this host does \
         not speak (it speaks {speaks}); rebuild it with a strata-driver-sdk of one of those \
         versions, or use a Strata release that speaks {wanted}"
    )]
    UnsupportedContract {
        driver: String,
        /// The version it exports (escaped).
        version: String,
        /// The versions this host speaks: `0.1, 0.2`.
        speaks: String,
        /// `MAJOR.MINOR` of `version`.
        wanted: String,
    },
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

/// What the host's `archive.apply` did during one driver call: whether a layer may have been
/// changed by it, which the caller needs when the call fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyTrace {
    /// Applies that succeeded (their changes stay).
    pub committed: u32,
    /// Applies that failed and could not be undone.
    pub not_undone: u32,
}

impl ApplyTrace {
    /// Whether no host apply of this call left a change behind.
    pub fn left_nothing(&self) -> bool {
        self.committed == 0 && self.not_undone == 0
    }
}

/// What the `zfs` capability works with: the confined `zfs` command, or why a driver granted
/// `zfs` has none (no `fsname` configured, no `zfs` command), which every call answers.
pub type ZfsAccess = Arc<Result<sys::zfs::Zfs, (ErrorKind, String)>>;

/// A driver's metadata pairs for one layer, or its error.
pub type LayerMetadata = Result<Vec<(String, String)>, CallError>;

/// A layer diff a driver returned, streamed by the host as a tar with `.wh.` whiteouts.
pub trait LayerTar: Send {
    /// Streams the diff; returns the bytes written.
    fn write_tar(&self, out: &mut dyn Write) -> Result<u64, ArchiveError>;
}

/// What the host knows of a loaded driver's component, for status output and warnings.
#[derive(Debug)]
pub struct ComponentInfo {
    pub name: String,
    pub path: PathBuf,
    pub sha256: String,
    pub from_cache: bool,
    /// Set when the compiled component could not be written to the cache.
    pub cache_warning: Option<SandboxError>,
    /// The contract version of the driver interface it exports, e.g. `0.1.0`.
    pub wit_version: String,
    /// Strata capabilities it imports.
    pub capabilities: Vec<Capability>,
}

/// A loaded driver: every call runs isolated, and its expected failures are [`CallError::Driver`].
pub trait Driver: Send + Sync {
    fn name(&self) -> &str;
    /// The driver's home on the host.
    fn home_path(&self) -> &Path;
    /// The driver's home, as a confining directory handle.
    fn home(&self) -> &sys::Dir;
    fn component(&self) -> &ComponentInfo;
    fn init(&self, options: &[(String, String)]) -> Result<DriverInfo, CallError>;
    fn create(
        &self,
        id: &str,
        parent: Option<&str>,
        read_write: bool,
        options: &[(String, String)],
    ) -> Result<(), CallError>;
    fn remove(&self, id: &str) -> Result<(), CallError>;
    fn exists(&self, id: &str) -> Result<bool, CallError>;
    fn plan_mount(&self, id: &str, request: &MountRequest) -> Result<MountPlan, CallError>;
    fn unmounted(&self, id: &str) -> Result<(), CallError>;
    /// Hands `tar` (an uncompressed layer tar stream) to the driver's `apply-diff`, and says
    /// what the host's applies did in the call: when the call failed and
    /// [`ApplyTrace::left_nothing`], the layer is as it was. With a `journal`, the host's
    /// applies write their undo journal ahead to it.
    fn apply_diff_traced(
        &self,
        id: &str,
        parent: Option<&str>,
        tar: Box<dyn Read + Send>,
        journal: Option<Journal>,
    ) -> (Result<u64, CallError>, ApplyTrace);
    fn apply_diff(
        &self,
        id: &str,
        parent: Option<&str>,
        tar: Box<dyn Read + Send>,
    ) -> Result<u64, CallError> {
        self.apply_diff_traced(id, parent, tar, None).0
    }
    fn diff(&self, id: &str, parent: Option<&str>) -> Result<Box<dyn LayerTar>, CallError>;
    fn changes(&self, id: &str, parent: Option<&str>) -> Result<Vec<Change>, CallError>;
    fn diff_size(&self, id: &str, parent: Option<&str>) -> Result<u64, CallError>;
    fn status(&self) -> Result<Vec<(String, String)>, CallError>;
    fn metadata(&self, id: &str) -> Result<Vec<(String, String)>, CallError>;
    /// `metadata` of many layers; one result per id, in order.
    fn layers_metadata(&self, ids: &[String]) -> Result<Vec<LayerMetadata>, SandboxError>;
}

/// Everything needed to start driver `name`, decided by the host's core from its config.
pub struct DriverSetup<'a> {
    pub name: &'a str,
    /// Its component (`.wasm`).
    pub path: &'a Path,
    /// Where compiled components are cached.
    pub cache_dir: PathBuf,
    /// Its home (exists).
    pub home: PathBuf,
    /// The host-private directory of its runtime state (probe caches).
    pub run_dir: PathBuf,
    /// The capabilities the operator grants it.
    pub grants: Vec<Capability>,
    /// Bytes its memories and tables may hold per call.
    pub memory: usize,
    /// Its own time per call.
    pub deadline: Duration,
    /// Wall-clock time per call.
    pub call_timeout: Duration,
    /// The confined `zfs` command, for a driver granted `zfs`.
    pub zfs: Option<ZfsAccess>,
}

/// Starts drivers: the sandbox implements it.
pub trait DriverLoader {
    fn load(&self, setup: DriverSetup<'_>) -> Result<Box<dyn Driver>, SandboxError>;
}

//! Engine, loading and calling drivers.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasmtime::component::{Component, Linker, Resource};
use wasmtime::{Config, Engine, Store, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx};

use super::cache::ComponentCache;
use super::host::{ApplyTrace, DeadlineExceeded, HostState, LayerDiff, ZfsAccess, sanitize};
use super::limits::{BudgetExceeded, CallBudget, link_bounded_poll};
use super::v0_1;
use super::wasi_files::{WASI_BLOCKING_CURRENT_THREAD, link_checked_open};
use super::{
    CallError, Capability, EPOCH_TICK, MAX_DRIVER_STDERR, MAX_HOST_RESOURCES, MAX_HOSTCALL_BYTES,
    SandboxError, WIT_PACKAGE, WIT_VERSION,
};
use crate::contract::{Change, DriverError, DriverInfo, MountPlan, MountRequest};
use crate::sys;

/// Layers whose metadata one `layers-metadata` call asks for (the answers cross into and
/// out of guest memory).
pub const MAX_LAYERS_PER_METADATA_CALL: usize = 1024;

/// A driver's metadata pairs for one layer, or its error.
pub type LayerMetadata = Result<Vec<(String, String)>, CallError>;

/// Memory and time limits of one driver call.
#[derive(Clone, Copy, Debug)]
pub struct SandboxLimits {
    /// Bytes the call's linear memories and tables may hold in all.
    pub memory: usize,
    /// The driver's own time per call: guest execution, its WASI waits and host calls that
    /// do a fixed amount of work each; bulk host work excluded.
    pub deadline: Duration,
    /// Wall-clock time per call, everything included.
    pub call_timeout: Duration,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            memory: 256 << 20,
            deadline: Duration::from_secs(10),
            call_timeout: Duration::from_secs(600),
        }
    }
}

/// The deepest wasm stack a driver call may use (wasmtime's default, pinned: host threads
/// that run driver calls have at least 2 MiB of stack).
pub const MAX_WASM_STACK: usize = 512 << 10;

/// wasmtime could not make its engine (the reason, with its causes).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EngineError(String);

/// The process-wide wasmtime engine and its epoch ticker.
#[derive(Clone)]
pub struct SandboxEngine {
    engine: Engine,
}

impl SandboxEngine {
    /// The process-wide engine (created on first use, with its epoch ticker). One engine
    /// serves every driver: compiled code and the ticker are shared.
    pub fn new() -> Result<Self, EngineError> {
        static SHARED: OnceLock<SandboxEngine> = OnceLock::new();
        if let Some(e) = SHARED.get() {
            return Ok(e.clone());
        }
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.max_wasm_stack(MAX_WASM_STACK);
        let engine = Engine::new(&config).map_err(|e| EngineError(format!("{e:#}")))?;
        let created = SandboxEngine { engine };
        let shared = SHARED.get_or_init(|| {
            created.start_ticker();
            created.clone()
        });
        Ok(shared.clone())
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Starts the thread that advances the epoch every [`EPOCH_TICK`] while the engine lives.
    fn start_ticker(&self) {
        let weak = self.engine.weak();
        std::thread::Builder::new()
            .name("strata-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .expect("spawning the epoch ticker thread");
    }
}

/// A driver component that passed the host's checks: what it imports and exports.
pub struct DriverComponent {
    pub name: String,
    pub path: PathBuf,
    pub sha256: String,
    pub from_cache: bool,
    /// Set when the compiled component could not be written to the cache (see
    /// [`super::cache::LoadedComponent::cache_warning`]).
    pub cache_warning: Option<SandboxError>,
    pub component: Component,
    /// The WIT version of the driver interface it exports, e.g. `0.1.0`.
    pub wit_version: String,
    /// Strata capabilities it imports.
    pub capabilities: Vec<Capability>,
    /// Every import, as named in the component (WASI included).
    pub imports: Vec<String>,
}

impl DriverComponent {
    /// Loads (from the cache when possible) and inspects the component at `path`.
    pub fn load(
        engine: &SandboxEngine,
        cache: &ComponentCache,
        name: &str,
        path: &Path,
    ) -> Result<Self, SandboxError> {
        let loaded = cache.load(&engine.engine, name, path)?;
        let ty = loaded.component.component_type();
        let imports: Vec<String> = ty
            .imports(&engine.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let exports: Vec<String> = ty
            .exports(&engine.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let (wit_version, capabilities) = interfaces(name, &imports, &exports)?;
        Ok(DriverComponent {
            name: name.into(),
            path: path.into(),
            sha256: loaded.sha256,
            from_cache: loaded.from_cache,
            cache_warning: loaded.cache_warning,
            component: loaded.component,
            wit_version,
            capabilities,
            imports,
        })
    }
}

/// What a driver's imports and exports say: the WIT version of the driver interface it
/// exports and the Strata capabilities it imports. Refused: an import of this package that
/// this host does not serve, no driver export. Shared by loading and by `driver inspect`
/// (which reads the names from the binary without compiling it).
pub(super) fn interfaces(
    name: &str,
    imports: &[String],
    exports: &[String],
) -> Result<(String, Vec<Capability>), SandboxError> {
    let mut capabilities = Vec::new();
    for import in imports {
        if let Some(interface) = strata_interface(import) {
            if interface == "types" {
                continue;
            }
            match Capability::from_name(interface) {
                Some(c) => capabilities.push(c),
                None => {
                    return Err(SandboxError::UnknownImport {
                        driver: name.into(),
                        import: import.clone(),
                        hint: format!(" (this host serves {WIT_PACKAGE}@{WIT_VERSION})"),
                    });
                }
            }
        }
    }
    let wit_version = exports
        .iter()
        .find_map(|n| {
            n.strip_prefix(&format!("{WIT_PACKAGE}/driver@"))
                .map(str::to_string)
        })
        .ok_or_else(|| SandboxError::NoDriverExport {
            driver: name.into(),
            exports: exports.join(", "),
        })?;
    Ok((wit_version, capabilities))
}

/// The interface name of a `strata:driver/NAME@VERSION` import.
fn strata_interface(import: &str) -> Option<&str> {
    let rest = import.strip_prefix(WIT_PACKAGE)?.strip_prefix('/')?;
    Some(rest.split('@').next().unwrap_or(rest))
}

/// A version of the driver contract this host speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContractVersion {
    /// `strata:driver@0.1.x`, module [`v0_1`].
    V0_1,
}

/// A driver's answer that its contract version can carry but the host refuses (a mount
/// option outside the host's list, ...): the call fails with
/// [`SandboxError::InvalidAnswer`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidAnswer(pub String);

/// Key/value pairs of a driver's answer (status, metadata).
pub(super) type Pairs = Vec<(String, String)>;

/// A driver's exports as the host calls them, in the host's own types: each contract
/// version's instance implements it in its module, converting at the edge.
pub(super) trait DriverExports {
    fn init(
        &self,
        s: &mut Store<HostState>,
        options: &[(String, String)],
    ) -> wasmtime::Result<Result<DriverInfo, DriverError>>;
    /// `create` of a read-only (image) layer, or of a read-write one.
    fn create(
        &self,
        s: &mut Store<HostState>,
        id: &str,
        parent: Option<&str>,
        read_write: bool,
        options: &[(String, String)],
    ) -> wasmtime::Result<Result<(), DriverError>>;
    fn remove(
        &self,
        s: &mut Store<HostState>,
        id: &str,
    ) -> wasmtime::Result<Result<(), DriverError>>;
    fn exists(&self, s: &mut Store<HostState>, id: &str) -> wasmtime::Result<bool>;
    /// A plan the version cannot express in the host's types ends the call with
    /// [`InvalidAnswer`].
    fn plan_mount(
        &self,
        s: &mut Store<HostState>,
        id: &str,
        request: &MountRequest,
    ) -> wasmtime::Result<Result<MountPlan, DriverError>>;
    fn unmounted(
        &self,
        s: &mut Store<HostState>,
        id: &str,
    ) -> wasmtime::Result<Result<(), DriverError>>;
    fn apply_diff(
        &self,
        s: &mut Store<HostState>,
        id: &str,
        parent: Option<&str>,
        diff: Resource<LayerDiff>,
    ) -> wasmtime::Result<Result<u64, DriverError>>;
    fn diff(
        &self,
        s: &mut Store<HostState>,
        id: &str,
        parent: Option<&str>,
    ) -> wasmtime::Result<Result<Resource<LayerDiff>, DriverError>>;
    fn changes(
        &self,
        s: &mut Store<HostState>,
        id: &str,
        parent: Option<&str>,
    ) -> wasmtime::Result<Result<Vec<Change>, DriverError>>;
    fn diff_size(
        &self,
        s: &mut Store<HostState>,
        id: &str,
        parent: Option<&str>,
    ) -> wasmtime::Result<Result<u64, DriverError>>;
    fn status(&self, s: &mut Store<HostState>) -> wasmtime::Result<Vec<(String, String)>>;
    fn metadata(
        &self,
        s: &mut Store<HostState>,
        id: &str,
    ) -> wasmtime::Result<Result<Vec<(String, String)>, DriverError>>;
    fn layers_metadata(
        &self,
        s: &mut Store<HostState>,
        ids: &[String],
    ) -> wasmtime::Result<Vec<Result<Pairs, DriverError>>>;
    fn cleanup(&self, s: &mut Store<HostState>) -> wasmtime::Result<Result<(), DriverError>>;
}

/// A driver linked and ready to instantiate, by contract version.
enum DriverPre {
    V0_1(v0_1::StrataDriverPre<HostState>),
}

impl DriverPre {
    /// Links WASI and the granted interfaces of `version`, and pre-instantiates `component`.
    fn new(
        engine: &Engine,
        version: ContractVersion,
        component: &Component,
        grants: &[Capability],
    ) -> Result<DriverPre, LinkError> {
        let mut linker: Linker<HostState> = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(LinkError::Setup)?;
        link_bounded_poll(&mut linker).map_err(LinkError::Setup)?;
        link_checked_open(&mut linker).map_err(LinkError::Setup)?;
        match version {
            ContractVersion::V0_1 => v0_1::link(&mut linker, grants),
        }
        .map_err(LinkError::Setup)?;
        let instance_pre = linker
            .instantiate_pre(component)
            .map_err(LinkError::Import)?;
        Ok(match version {
            ContractVersion::V0_1 => {
                DriverPre::V0_1(v0_1::StrataDriverPre::new(instance_pre).map_err(LinkError::Setup)?)
            }
        })
    }

    fn instantiate(&self, store: &mut Store<HostState>) -> wasmtime::Result<DriverInstance> {
        Ok(match self {
            DriverPre::V0_1(pre) => DriverInstance::V0_1(pre.instantiate(store)?),
        })
    }
}

/// Why [`DriverPre::new`] failed: a component's import the linker lacks, or anything else.
enum LinkError {
    Import(wasmtime::Error),
    Setup(wasmtime::Error),
}

/// One instance of a driver, by contract version.
pub(super) enum DriverInstance {
    V0_1(v0_1::StrataDriver),
}

impl DriverInstance {
    fn exports(&self) -> &dyn DriverExports {
        match self {
            DriverInstance::V0_1(d) => d,
        }
    }
}

/// A loaded driver, ready to run operations: each in a fresh, limited instance.
pub struct DriverRuntime {
    name: String,
    engine: SandboxEngine,
    version: ContractVersion,
    pre: DriverPre,
    home_path: PathBuf,
    home: Arc<sys::Dir>,
    limits: SandboxLimits,
    /// Host-private runtime state of this driver (under the store's `run_root`): where the
    /// host caches what it probed for the driver, e.g. overlayfs features, until reboot.
    run_dir: Option<Arc<PathBuf>>,
    /// The `zfs` command confined to the operator's parent dataset, for a driver granted
    /// `zfs` (or why there is none, answered to every zfs call).
    zfs: Option<ZfsAccess>,
}

impl DriverRuntime {
    /// Links `driver` with WASI and the granted capabilities only; fails naming the first
    /// imported capability that is not granted.
    pub fn new(
        engine: &SandboxEngine,
        driver: &DriverComponent,
        grants: &[Capability],
        home: &Path,
        limits: SandboxLimits,
    ) -> Result<Self, SandboxError> {
        let name = driver.name.clone();
        for cap in &driver.capabilities {
            if !grants.contains(cap) {
                let import = driver
                    .imports
                    .iter()
                    .find(|i| strata_interface(i) == Some(cap.name()))
                    .cloned()
                    .unwrap_or_default();
                return Err(SandboxError::NotGranted {
                    driver: name,
                    capability: cap.name().into(),
                    import,
                });
            }
        }
        // The only version this host speaks so far; a driver of another one fails to link.
        let version = ContractVersion::V0_1;
        let pre = DriverPre::new(&engine.engine, version, &driver.component, grants).map_err(
            |e| match e {
                LinkError::Import(e) => SandboxError::UnknownImport {
                    driver: name.clone(),
                    import: format!("{e:#}"),
                    hint: String::new(),
                },
                LinkError::Setup(e) => SandboxError::Setup {
                    driver: name.clone(),
                    reason: format!("{e:#}"),
                },
            },
        )?;
        let home_dir = sys::Dir::open_ambient(home).map_err(|e| SandboxError::Home {
            driver: name.clone(),
            path: home.into(),
            reason: e.to_string(),
        })?;
        Ok(DriverRuntime {
            name,
            engine: engine.clone(),
            version,
            pre,
            home_path: home.into(),
            home: Arc::new(home_dir),
            limits,
            run_dir: None,
            zfs: None,
        })
    }

    /// Sets the directory where the host keeps this driver's runtime state (probe results);
    /// without one, nothing is cached.
    pub fn with_run_dir(mut self, dir: PathBuf) -> Self {
        self.run_dir = Some(Arc::new(dir));
        self
    }

    /// Gives the driver's `zfs` calls their confined command.
    pub fn with_zfs(mut self, zfs: ZfsAccess) -> Self {
        self.zfs = Some(zfs);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The contract version the driver is called with.
    pub fn contract_version(&self) -> ContractVersion {
        self.version
    }

    /// The driver's home on the host.
    pub fn home_path(&self) -> &Path {
        &self.home_path
    }

    /// The driver's home, as a confining directory handle.
    pub fn home(&self) -> &sys::Dir {
        &self.home
    }

    /// Runs one operation in a fresh instance. `f` gets the store and the instance; a trap,
    /// timeout or memory exhaustion becomes a [`SandboxError`] and the instance is dropped.
    fn call<R>(
        &self,
        op: &str,
        f: impl FnOnce(&mut Store<HostState>, &dyn DriverExports) -> wasmtime::Result<R>,
    ) -> Result<R, SandboxError> {
        let stderr = MemoryOutputPipe::new(MAX_DRIVER_STDERR);
        let mut wasi = WasiCtx::builder();
        wasi.stderr(stderr.clone());
        wasi.allow_blocking_current_thread(WASI_BLOCKING_CURRENT_THREAD);
        wasi.preopened_dir(&self.home_path, "/", FsPerms::ReadWrite)
            .map_err(|e| SandboxError::Home {
                driver: self.name.clone(),
                path: self.home_path.clone(),
                reason: format!("{e:#}"),
            })?;
        let state = HostState::new(
            self.name.clone(),
            self.home.clone(),
            wasi.build(),
            CallBudget::new(self.limits.memory),
            MAX_HOST_RESOURCES,
        )
        .with_run_dir(self.run_dir.clone())
        .with_zfs(self.zfs.clone());
        let mut store = Store::new(self.engine.engine(), state);
        store.limiter(|s| &mut s.limits);
        store.set_hostcall_fuel(MAX_HOSTCALL_BYTES);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |ctx| match ctx.data().exceeded() {
            Some(which) => Err(wasmtime::Error::new(which)),
            None => Ok(UpdateDeadline::Continue(1)),
        });
        store
            .data_mut()
            .start_clock(self.limits.deadline, self.limits.call_timeout);
        let result = self
            .pre
            .instantiate(&mut store)
            .and_then(|instance| f(&mut store, instance.exports()));
        result.map_err(|e| self.classify(op, e, &stderr))
    }

    fn classify(&self, op: &str, e: wasmtime::Error, stderr: &MemoryOutputPipe) -> SandboxError {
        let captured = String::from_utf8_lossy(&stderr.contents())
            .trim()
            .to_string();
        let stderr_note = if captured.is_empty() {
            String::new()
        } else {
            format!("; driver stderr: {}", sanitize(&captured))
        };
        match e.downcast_ref::<DeadlineExceeded>() {
            Some(DeadlineExceeded::Guest) => {
                return SandboxError::Deadline {
                    driver: self.name.clone(),
                    op: op.into(),
                    deadline: self.limits.deadline,
                };
            }
            Some(DeadlineExceeded::Wall) => {
                return SandboxError::CallTimeout {
                    driver: self.name.clone(),
                    op: op.into(),
                    limit: self.limits.call_timeout,
                };
            }
            None => {}
        }
        if let Some(InvalidAnswer(reason)) = e.downcast_ref::<InvalidAnswer>() {
            return SandboxError::InvalidAnswer {
                driver: self.name.clone(),
                op: op.into(),
                reason: sanitize(reason),
            };
        }
        if e.downcast_ref::<BudgetExceeded>().is_some() {
            return SandboxError::OutOfMemory {
                driver: self.name.clone(),
                op: op.into(),
                limit: self.limits.memory,
                stderr: stderr_note,
            };
        }
        let reason = match e.downcast_ref::<wasmtime::Trap>() {
            Some(trap) => format!("trap: {trap}"),
            None => format!("{e:#}"),
        };
        SandboxError::Crashed {
            driver: self.name.clone(),
            op: op.into(),
            reason,
            stderr: stderr_note,
        }
    }

    /// Calls one driver operation whose WIT result is `result<T, error>`; the error's text
    /// is escaped ([`clean_error`]) before anything else sees it.
    fn op<T>(
        &self,
        op: &str,
        f: impl FnOnce(
            &mut Store<HostState>,
            &dyn DriverExports,
        ) -> wasmtime::Result<Result<T, DriverError>>,
    ) -> Result<T, CallError> {
        self.call(op, f)?.map_err(|error| CallError::Driver {
            driver: self.name.clone(),
            op: op.into(),
            error: clean_error(error),
        })
    }

    pub fn init(&self, options: &[(String, String)]) -> Result<DriverInfo, CallError> {
        let mut info = self.op("init", |s, d| d.init(s, options))?;
        info.name = sanitize(&info.name);
        info.status = clean_pairs(info.status);
        Ok(info)
    }

    pub fn create(
        &self,
        id: &str,
        parent: Option<&str>,
        read_write: bool,
        options: &[(String, String)],
    ) -> Result<(), CallError> {
        let op = if read_write { "create-rw" } else { "create" };
        self.op(op, |s, d| d.create(s, id, parent, read_write, options))
    }

    pub fn remove(&self, id: &str) -> Result<(), CallError> {
        self.op("remove", |s, d| d.remove(s, id))
    }

    pub fn exists(&self, id: &str) -> Result<bool, CallError> {
        Ok(self.call("exists", |s, d| d.exists(s, id))?)
    }

    pub fn plan_mount(&self, id: &str, request: &MountRequest) -> Result<MountPlan, CallError> {
        self.op("plan-mount", |s, d| d.plan_mount(s, id, request))
    }

    pub fn unmounted(&self, id: &str) -> Result<(), CallError> {
        self.op("unmounted", |s, d| d.unmounted(s, id))
    }

    /// Hands `tar` (an uncompressed layer tar stream) to the driver's `apply-diff`.
    pub fn apply_diff(
        &self,
        id: &str,
        parent: Option<&str>,
        tar: Box<dyn std::io::Read + Send>,
    ) -> Result<u64, CallError> {
        self.apply_diff_traced(id, parent, tar, None).0
    }

    /// [`DriverRuntime::apply_diff`], and what the host's applies did in the call: when the
    /// call failed and [`ApplyTrace::left_nothing`], the layer is as it was (every host apply
    /// was undone), as far as the host's own writes go. With a `journal`, the host's applies
    /// write their undo journal ahead to it (`archive::journal`).
    pub fn apply_diff_traced(
        &self,
        id: &str,
        parent: Option<&str>,
        tar: Box<dyn std::io::Read + Send>,
        journal: Option<crate::archive::Journal>,
    ) -> (Result<u64, CallError>, ApplyTrace) {
        let mut trace = ApplyTrace::default();
        let result = self.op("apply-diff", |s, d| {
            s.data_mut().journal = journal;
            let diff: Resource<LayerDiff> = s.data_mut().push_diff(LayerDiff::input(tar))?;
            let borrowed = Resource::new_borrow(diff.rep());
            let r = d.apply_diff(&mut *s, id, parent, borrowed);
            trace = s.data().applies;
            s.data_mut().take_diff(diff)?;
            r
        });
        (result, trace)
    }

    /// The driver's diff of `id` against `parent`, as the host-side description the driver
    /// returned; stream it with [`LayerDiff::write_tar`].
    pub fn diff(&self, id: &str, parent: Option<&str>) -> Result<LayerDiff, CallError> {
        self.op("diff", |s, d| match d.diff(&mut *s, id, parent)? {
            Ok(res) => Ok(Ok(s.data_mut().take_diff(res)?)),
            Err(e) => Ok(Err(e)),
        })
    }

    pub fn changes(&self, id: &str, parent: Option<&str>) -> Result<Vec<Change>, CallError> {
        self.op("changes", |s, d| d.changes(s, id, parent))
    }

    pub fn diff_size(&self, id: &str, parent: Option<&str>) -> Result<u64, CallError> {
        self.op("diff-size", |s, d| d.diff_size(s, id, parent))
    }

    pub fn status(&self) -> Result<Vec<(String, String)>, CallError> {
        Ok(clean_pairs(self.call("status", |s, d| d.status(s))?))
    }

    pub fn metadata(&self, id: &str) -> Result<Vec<(String, String)>, CallError> {
        self.op("metadata", |s, d| d.metadata(s, id))
            .map(clean_pairs)
    }

    /// `metadata` of many layers, [`MAX_LAYERS_PER_METADATA_CALL`] per driver call; one
    /// result per id, in order.
    pub fn layers_metadata(&self, ids: &[String]) -> Result<Vec<LayerMetadata>, SandboxError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_LAYERS_PER_METADATA_CALL) {
            let answers = self.call("layers-metadata", |s, d| d.layers_metadata(s, chunk))?;
            if answers.len() != chunk.len() {
                return Err(SandboxError::Crashed {
                    driver: self.name.clone(),
                    op: "layers-metadata".into(),
                    reason: format!(
                        "returned {} answers for {} layers",
                        answers.len(),
                        chunk.len()
                    ),
                    stderr: String::new(),
                });
            }
            out.extend(answers.into_iter().map(|r| {
                r.map(clean_pairs).map_err(|error| CallError::Driver {
                    driver: self.name.clone(),
                    op: "layers-metadata".into(),
                    error: clean_error(error),
                })
            }));
        }
        Ok(out)
    }

    pub fn cleanup(&self) -> Result<(), CallError> {
        self.op("cleanup", |s, d| d.cleanup(s))
    }
}

/// Key/value pairs a driver returned (status, metadata), escaped.
fn clean_pairs(pairs: Vec<(String, String)>) -> Vec<(String, String)> {
    pairs
        .into_iter()
        .map(|(k, v)| (sanitize(&k), sanitize(&v)))
        .collect()
}

/// A driver's error with its message escaped: it reaches terminals, logs and containerd.
pub fn clean_error(error: DriverError) -> DriverError {
    error.map_text(sanitize)
}

//! The layer service: a store, a driver and the mounts, tied together.
//!
//! Every front end (the CLI today; the containerd snapshotter and image import later) goes
//! through [`Strata`]. It keeps the ordering that makes crashes harmless: a layer record is
//! written *incomplete* before any driver work and marked complete after, so a store opened
//! after a crash removes half-made layers; an apply onto a complete layer is journaled
//! instead, and rolled back (docs/crash-safety.md, "The apply journal"); mutations hold the
//! store's exclusive lock so that recovery never races a live operation.
//!
//!
//! The lock rule: every driver call that names a layer (create, apply, mount plans, unmounted,
//! diff, changes, diff size, metadata, remove) runs under the store's exclusive lock, the
//! lock removal takes. A driver may write into a layer's directory on any of them (overlay
//! re-creates `merged/` and lost `l/` links on a mount plan or a diff; zfs mounts the
//! dataset for a diff), and a removal running beside such a write fails ("Directory not
//! empty") or removes what the writer still uses. The lock is re-entrant per store handle
//! ([`LayerStore::lock_exclusive`]): a front end that makes one operation of several steps
//! (containerd's snapshots: record, layer, mount) takes it once around all of them, so
//! nothing in between is seen by another handle.

use std::io::{Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::archive;
use crate::config::Config;
use crate::contract::{DriverInfo, MountRequest};
use crate::mount::{self, PlanError};
use crate::registry::{self, DriverLocation, LocateError};
use crate::sandbox::inspect::{ComponentSummary, inspect_component};
use crate::sandbox::{
    CallError, Capability, ComponentCache, DriverComponent, DriverRuntime, SandboxEngine,
    SandboxError, SandboxLimits,
};
use crate::store::{Layer, LayerStore, NewLayer, StoreError};
use crate::sys::SysError;

pub use crate::contract::{Change, ChangeKind};

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Call(#[from] CallError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Locate(#[from] LocateError),
    #[error(transparent)]
    Layout(Box<crate::layout::LayoutError>),
    #[error("unmounting layer {id}: {cause}")]
    Unmount { id: String, cause: Box<SysError> },
    #[error("layer {0} is not mounted")]
    NotMounted(String),
    #[error("layer {id}: {what}: {cause}")]
    Archive {
        id: String,
        what: &'static str,
        cause: Box<archive::ArchiveError>,
    },
    #[error("{what}: {cause}")]
    Io { what: String, cause: std::io::Error },
    #[error("driver grant `{0}` is not a capability this host provides")]
    UnknownGrant(String),
    #[error(
        "the store at {root} holds layers of driver {} and cannot be opened with driver \
         {driver}; use --driver {} (or `driver = ...` in the config)",
        others.join(", "), others[0]
    )]
    WrongDriver {
        root: PathBuf,
        driver: String,
        others: Vec<String>,
    },
    #[error(
        "layer {id} was mounted at {mount_point} by an older strata, which recorded no mount id; \
         unmount it with umount(8), then clear the record with `strata layer unmount --force {id}`"
    )]
    UnverifiedMount { id: String, mount_point: String },
    #[error("host mount directory {path}: {cause}")]
    MountDir { path: PathBuf, cause: Box<SysError> },
    #[error("applying onto layer {id} failed, so the layer was removed: {cause}")]
    ApplyFailed { id: String, cause: Box<LayerError> },
    /// The apply failed, could not be undone, and the layer belongs to an image or a
    /// container: it cannot go without its owner, so it is set aside as damaged.
    #[error(
        "applying onto layer {id} failed and could not be undone; the layer is set aside as \
         damaged ({owner}): {cause}"
    )]
    ApplyDamaged {
        id: String,
        owner: String,
        cause: Box<LayerError>,
    },
    /// The apply failed and the layer is exactly as it was before it.
    #[error("applying onto layer {id} failed; the layer was left as it was: {cause}")]
    ApplyUndone { id: String, cause: Box<LayerError> },
}

impl From<crate::layout::LayoutError> for LayerError {
    fn from(e: crate::layout::LayoutError) -> Self {
        LayerError::Layout(Box::new(e))
    }
}

pub type Result<T, E = LayerError> = std::result::Result<T, E>;

/// Where a store lives and which driver runs it.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub config: Config,
    /// A first-party driver name or a path to a `.wasm`; `None` uses `config.driver`.
    pub driver: Option<String>,
    /// Driver options added on top of `[drivers.NAME] options`.
    pub driver_options: Vec<(String, String)>,
    /// Where compiled components are cached; default `$STRATA_COMPONENT_CACHE`, else
    /// `<root>/cache/components` ([`crate::paths::component_cache`]). Never at or beneath
    /// `<root>/drivers`, where drivers write.
    pub cache_dir: Option<PathBuf>,
}

/// A request to create a layer.
#[derive(Clone, Debug, Default)]
pub struct CreateLayer {
    pub id: Option<String>,
    pub parent: Option<String>,
    pub names: Vec<String>,
    pub read_write: bool,
    pub options: Vec<(String, String)>,
    /// Create the layer as a copy of this one: the new layer gets the template's parent and
    /// the template's content (containers/storage's `CreateFromTemplate`).
    pub template: Option<String>,
}

/// What applying a layer tar did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Applied {
    /// Bytes of file content written, as the driver reports it.
    pub size: u64,
    /// Bytes of the uncompressed tar and its digest (the diff ID).
    pub uncompressed_size: u64,
    pub uncompressed_digest: String,
    /// Bytes as given (compressed or not) and their digest.
    pub compressed_size: u64,
    pub compressed_digest: String,
}

/// The store and its driver, opened.
pub struct Strata {
    config: Config,
    store: LayerStore,
    /// The host's own mount points (`<root>/mounts/<id>`): where layers appear.
    mounts: mount::MountDir,
    driver: DriverRuntime,
    component: DriverComponent,
    info: DriverInfo,
}

/// What the driver `spec` imports and exports, read from its component without compiling
/// it and without a store: for `driver inspect` ([`crate::sandbox::inspect`]).
pub fn inspect_driver(spec: &str, config: &Config) -> Result<ComponentSummary> {
    let location = locate_driver(spec, config)?;
    Ok(inspect_component(&location.name, &location.path)?)
}

/// The grants the driver `spec` would be linked with.
pub fn driver_grants(spec: &str, config: &Config) -> Result<Vec<String>> {
    let location = locate_driver(spec, config)?;
    Ok(config.driver_grants(&location.name, location.first_party()))
}

/// The driver `spec` names under `config`, with the identity the config gives it.
pub fn locate_driver(spec: &str, config: &Config) -> Result<DriverLocation> {
    Ok(registry::locate(spec, config)?)
}

/// Driver options that name the zfs parent dataset (`fsname`, `zfs.fsname`): removed from
/// `options`, the last one checked and returned.
fn take_fsname_option(options: &mut Vec<(String, String)>) -> Result<Option<String>> {
    let mut found = None;
    let mut kept = Vec::with_capacity(options.len());
    for (k, v) in options.drain(..) {
        if k == "fsname" || k == "zfs.fsname" {
            crate::sys::zfs::check_parent_name(&v)
                .map_err(|m| StoreError::Invalid(format!("driver option {k}: {m}")))?;
            found = Some(v);
        } else {
            kept.push((k, v));
        }
    }
    *options = kept;
    Ok(found)
}

fn grants(names: &[String]) -> Result<Vec<Capability>> {
    names
        .iter()
        .map(|n| Capability::from_name(n).ok_or_else(|| LayerError::UnknownGrant(n.clone())))
        .collect()
}

/// A driver's metadata of one layer, or why it could not give it.
pub type MetadataAnswer = std::result::Result<Vec<(String, String)>, String>;

impl Strata {
    /// Opens (creating if needed) the store at `config.root`, loads and initialises the driver,
    /// and removes layers left incomplete by a crash.
    pub fn open(options: StoreOptions) -> Result<Strata> {
        let config = options.config;
        let spec = options.driver.unwrap_or_else(|| config.driver.clone());
        let location = locate_driver(&spec, &config)?;
        let settings = config.driver_settings(&location.name);
        let io = |what: String| move |cause| LayerError::Io { what, cause };
        std::fs::create_dir_all(&config.root)
            .map_err(io(format!("creating root {}", config.root.display())))?;
        let store = LayerStore::open(&config.root)?;
        {
            let _lock = store.lock_exclusive()?;
            crate::layout::migrate(&config.root, &config.run_root, &store, &location.name)?;
        }
        // One store, one driver: another driver would not find the layers' data.
        let others = store.other_drivers(&location.name)?;
        if !others.is_empty() {
            return Err(LayerError::WrongDriver {
                root: config.root.clone(),
                driver: location.name.clone(),
                others,
            });
        }
        let engine = SandboxEngine::new().map_err(|e| SandboxError::Setup {
            driver: location.name.clone(),
            reason: e.to_string(),
        })?;
        let cache_dir = crate::paths::component_cache(&config.root, options.cache_dir);
        crate::layout::check_cache_dir(&config.root, &cache_dir)?;
        let cache = ComponentCache::new(cache_dir);
        let component = DriverComponent::load(&engine, &cache, &location.name, &location.path)?;
        let home = crate::layout::driver_home(&config.root, &location.name);
        // Homes are `<root>/drivers/<checked name>`: none can reach `<root>/mounts`.
        let mounts_path = config.root.join(mount::MOUNTS_DIR);
        let mounts = mount::MountDir::open(&config.root).map_err(|cause| LayerError::MountDir {
            path: mounts_path,
            cause: Box::new(cause),
        })?;
        std::fs::create_dir_all(&home)
            .map_err(io(format!("creating driver home {}", home.display())))?;
        let limits = SandboxLimits {
            memory: usize::try_from(settings.memory).unwrap_or(usize::MAX),
            deadline: settings.deadline,
            call_timeout: settings.call_timeout,
        };
        let granted = grants(&config.driver_grants(&location.name, location.first_party()))?;
        let run_dir = crate::layout::driver_run_dir(&config.run_root, &location.name);
        let mut driver = DriverRuntime::new(&engine, &component, &granted, &home, limits)?
            .with_run_dir(run_dir.clone());
        let mut init_options = settings.options.clone();
        init_options.extend(options.driver_options);
        let mut fsname = settings.fsname.clone();
        if granted.contains(&Capability::Zfs) {
            // containers/storage users pass the parent dataset as a driver option; it is the
            // host's setting (it confines the zfs grant), so the driver never sees it.
            if let Some(parent) = take_fsname_option(&mut init_options)? {
                fsname = Some(parent);
            }
            let access = match fsname.as_deref() {
                None => Err((
                    crate::sys::ErrorKind::Unsupported,
                    format!(
                        "no parent dataset for zfs: set `fsname` in [drivers.{}] of the config \
                         (e.g. fsname = \"tank/strata\"), or pass --driver-opt fsname=...",
                        location.name
                    ),
                )),
                Some(parent) => crate::sys::zfs::Zfs::new(parent, &run_dir)
                    .map_err(|e| (e.kind, format!("{parent}: {}", e.reason()))),
            };
            driver = driver.with_zfs(std::sync::Arc::new(access));
        }
        let info = driver.init(&init_options)?;
        let strata = Strata {
            config,
            store,
            mounts,
            driver,
            component,
            info,
        };
        strata.recover()?;
        Ok(strata)
    }

    /// Finishes what a crash left: applies in progress are rolled back from their journals
    /// ([`Strata::recover_applies`]); other layers still incomplete are removed (stale mounts
    /// on their mount points detached first, then the driver's data, then the record). A
    /// layer that cannot be finished is set aside ([`Strata::damaged`]) and the store opens.
    fn recover(&self) -> Result<()> {
        let incomplete = self.store.incomplete_layers()?;
        let journals = self.config.root.join(crate::layout::APPLY_JOURNAL_DIR);
        let has_journals = std::fs::read_dir(&journals).is_ok_and(|mut r| r.next().is_some());
        if incomplete.is_empty() && !has_journals {
            return Ok(());
        }
        // Layers set aside before (and journals of recorded applies) are retried when the
        // store is free, never waited for: a damaged layer must not make every command
        // queue behind a long import. (The lock is per open file: taking it again while
        // this is held does not wait.)
        let _free = if incomplete.iter().all(|l| l.damaged.is_some()) {
            match self.store.try_lock_exclusive()? {
                Some(lock) => Some(lock),
                None => return Ok(()),
            }
        } else {
            None
        };
        {
            let _lock = self.store.lock_exclusive()?;
            self.recover_applies()?;
        }
        if incomplete.iter().any(|l| !l.applying) {
            self.store
                .recover(|layer: &Layer| self.remove_data(&layer.id))?;
        }
        Ok(())
    }

    /// Removes layer `id`'s data: whatever is mounted on its mount point (its record says
    /// nothing is: the caller checked), the mount point, the driver's data.
    fn remove_data(&self, id: &str) -> Result<()> {
        self.mounts.clear(id).map_err(|cause| LayerError::Unmount {
            id: id.to_string(),
            cause: Box::new(cause),
        })?;
        self.driver.remove(id)?;
        Ok(())
    }

    /// Throws away layer `id` (not mounted, no children, no owner), record last: marked
    /// incomplete, its data removed ([`Strata::remove_data`]), the record deleted. When
    /// removing the data fails the record stays, incomplete, for recovery.
    pub(crate) fn discard(&self, id: &str) -> Result<()> {
        // Usually held by the caller already (the lock is re-entrant per handle).
        let _lock = self.store.lock_exclusive()?;
        self.store.mark_incomplete(id)?;
        self.remove_data(id)?;
        self.store.delete_record(id)?;
        Ok(())
    }

    /// Layers set aside as damaged: recovery could not finish them (see
    /// docs/crash-safety.md). Each open retries them; the rest of the store works.
    pub fn damaged(&self) -> Result<Vec<Layer>> {
        Ok(self.store.damaged_layers()?)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The store's exclusive lock (re-entrant per handle): while it is held no other handle
    /// changes the store or calls its driver on a layer.
    pub fn lock_exclusive(&self) -> Result<crate::store::StoreLock<'_>> {
        Ok(self.store.lock_exclusive()?)
    }

    /// Layers not (or no longer) complete: being made, removed, applied onto, or set aside.
    pub fn incomplete_layers(&self) -> Result<Vec<Layer>> {
        Ok(self.store.incomplete_layers()?)
    }

    /// The containerd snapshot `key` (`strata serve`'s records).
    pub fn snapshot(
        &self,
        key: &str,
    ) -> std::result::Result<crate::store::SnapshotInfo, crate::store::SnapshotError> {
        self.store.snapshot(key)
    }

    /// The driver's name: the host's identity of it (the config's or the file's name),
    /// never the name the driver reports.
    pub fn driver_name(&self) -> &str {
        self.driver.name()
    }

    /// The driver's home, `<root>/drivers/<name>`: the one directory it may write.
    pub fn driver_home(&self) -> &Path {
        self.driver.home_path()
    }

    pub(crate) fn store(&self) -> &LayerStore {
        &self.store
    }

    pub(crate) fn driver(&self) -> &DriverRuntime {
        &self.driver
    }

    pub fn component(&self) -> &DriverComponent {
        &self.component
    }

    pub fn driver_info(&self) -> &DriverInfo {
        &self.info
    }

    pub fn list(&self) -> Result<Vec<Layer>> {
        Ok(self.store.list()?)
    }

    /// Every layer with the driver's metadata for it, asked for in batches (one driver call
    /// per [`crate::sandbox::MAX_LAYERS_PER_METADATA_CALL`] layers) so that a driver can
    /// answer from one query.
    pub fn list_with_metadata(&self) -> Result<Vec<(Layer, MetadataAnswer)>> {
        let _lock = self.store.lock_exclusive()?;
        let layers = self.store.list()?;
        let ids: Vec<String> = layers.iter().map(|l| l.id.clone()).collect();
        let answers = self.driver.layers_metadata(&ids)?;
        Ok(layers
            .into_iter()
            .zip(answers)
            .map(|(l, a)| (l, a.map_err(|e| e.to_string())))
            .collect())
    }

    pub fn get(&self, id: &str) -> Result<Layer> {
        Ok(self.store.get(id)?)
    }

    /// Creates a layer: record (incomplete) → driver → record complete.
    pub fn create_layer(&self, req: CreateLayer) -> Result<Layer> {
        let _lock = self.store.lock_exclusive()?;
        let parent = match &req.parent {
            Some(p) => Some(self.store.get(p)?.id),
            None => None,
        };
        let template = match &req.template {
            Some(t) => Some(self.store.get(t)?),
            None => None,
        };
        // The driver builds the new layer on what it starts from: the template's data when
        // there is one, else the parent's. The record names the template's parent.
        let (parent, base) = match &template {
            Some(t) => {
                if parent.is_some() && parent != t.parent {
                    return Err(StoreError::Invalid(format!(
                        "a layer created from template {} gets the template's parent ({}); do not give another",
                        t.id,
                        t.parent.as_deref().unwrap_or("none")
                    ))
                    .into());
                }
                (t.parent.clone(), Some(t.id.clone()))
            }
            None => (parent.clone(), parent),
        };
        let mut pending = PendingLayers::new(self)?;
        let id = pending.create(
            NewLayer {
                id: req.id,
                parent,
                names: req.names,
                read_write: req.read_write,
                template: template.map(|t| t.id),
                ..Default::default()
            },
            base.as_deref(),
            &req.options,
        )?;
        self.store.finish_create(&id)?;
        pending.keep();
        Ok(self.store.get(&id)?)
    }

    /// Applies a layer tar (plain, gzip or zstd) read from `input` onto layer `id`. All or
    /// nothing: on failure the layer is left exactly as it was ([`LayerError::ApplyUndone`];
    /// the host's apply undoes itself, see `archive::undo`). Onto a complete layer the undo
    /// journal is written ahead to `<root>/apply-journal/<id>` and the layer marked applying,
    /// so a crash is rolled back at the next open, and a driver failing after its apply went
    /// through is rolled back too; when rolling back fails the layer is set aside
    /// ([`LayerError::ApplyDamaged`]). A layer made by the same command (incomplete) has no
    /// journal: when its apply cannot be undone it is removed ([`LayerError::ApplyFailed`]).
    /// A half-applied layer is never left behind.
    pub fn apply(&self, id: &str, input: Box<dyn Read + Send>) -> Result<Applied> {
        let _lock = self.store.lock_exclusive()?;
        let layer = self.store.get(id)?;
        if layer.mount_count > 0 {
            return Err(StoreError::Busy(layer.id).into());
        }
        let children = self.store.children(&layer.id)?;
        if !children.is_empty() {
            return Err(StoreError::HasChildren {
                id: layer.id,
                children: children.into_iter().map(|c| c.id).collect(),
            }
            .into());
        }
        let compressed = HashingReader::new(input);
        let compressed_tally = compressed.tally();
        let tar = archive::decompressed(Box::new(compressed)).map_err(|e| LayerError::Io {
            what: format!("reading the tar for layer {}", layer.id),
            cause: e,
        })?;
        // A layer made by this same command (incomplete already) goes whole if a crash cuts
        // the apply short. Any other is journaled: its undo notes are written ahead to a
        // host file, and a crash is rolled back from it at the next open.
        let journaled = !layer.incomplete;
        let journal = if journaled {
            let journal = self.create_journal(&layer.id)?;
            self.store.begin_apply(&layer.id)?;
            Some(journal)
        } else {
            None
        };
        let uncompressed = HashingReader::new(tar);
        let uncompressed_tally = uncompressed.tally();
        let (result, trace) = self.driver.apply_diff_traced(
            &layer.id,
            layer.parent.as_deref(),
            Box::new(uncompressed),
            journal,
        );
        match result {
            Ok(size) => {
                let applied = Applied {
                    size,
                    uncompressed_size: uncompressed_tally.bytes(),
                    uncompressed_digest: uncompressed_tally.digest(),
                    compressed_size: compressed_tally.bytes(),
                    compressed_digest: compressed_tally.digest(),
                };
                self.store.finish_apply(
                    &layer.id,
                    &applied.compressed_digest,
                    applied.compressed_size,
                    &applied.uncompressed_digest,
                    applied.uncompressed_size,
                )?;
                if journaled {
                    // Recorded: the replaced originals go. A failure here leaves the journal
                    // for the next open to finish; the apply itself stands.
                    self.finish_journal(&layer.id)?;
                }
                Ok(applied)
            }
            Err(e) if journaled => {
                // Whatever the host's applies left (none, a whole apply the driver failed
                // after, or a rollback that failed half-way) is rolled back from the journal.
                match self.roll_back_journal(&layer.id) {
                    Ok(()) => {
                        self.store.end_apply(&layer.id)?;
                        Err(LayerError::ApplyUndone {
                            id: layer.id,
                            cause: Box::new(e.into()),
                        })
                    }
                    Err(undoing) => {
                        let reason = format!(
                            "applying onto it failed and rolling it back failed too \
                             ({undoing}); the next open tries the rollback again"
                        );
                        self.store.set_damaged(&layer.id, &reason)?;
                        Err(LayerError::ApplyDamaged {
                            id: layer.id,
                            owner: "its undo journal is kept".into(),
                            cause: Box::new(e.into()),
                        })
                    }
                }
            }
            Err(e) if trace.left_nothing() => Err(LayerError::ApplyUndone {
                id: layer.id,
                cause: Box::new(e.into()),
            }),
            Err(e) => {
                // An image's or a container's layer goes only with its owner (its record is
                // theirs): it is set aside, reported, and its owner's removal takes it.
                if let Err(owner) = self.store.check_unowned(&layer.id) {
                    let owner = owner.to_string();
                    self.store.set_damaged(
                        &layer.id,
                        &format!("applying onto it failed and could not be undone; {owner}"),
                    )?;
                    return Err(LayerError::ApplyDamaged {
                        id: layer.id,
                        owner,
                        cause: Box::new(e.into()),
                    });
                }
                // The record is incomplete already; if removing the data fails it stays so,
                // and the next open's recovery finishes.
                let _ = self.discard(&layer.id);
                Err(LayerError::ApplyFailed {
                    id: layer.id,
                    cause: Box::new(e.into()),
                })
            }
        }
    }

    /// Creates (replacing a stale one) the undo journal of an apply onto layer `id`, in the
    /// host's `<root>/apply-journal/` (see `archive::journal`).
    fn create_journal(&self, id: &str) -> Result<archive::Journal> {
        let dir = self.config.root.join(crate::layout::APPLY_JOURNAL_DIR);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|cause| LayerError::Io {
                what: format!("creating {}", dir.display()),
                cause,
            })?;
        let path = crate::layout::apply_journal(&self.config.root, id);
        archive::Journal::create(&path, id).map_err(|e| self.journal_error(id, e))
    }

    fn journal_error(&self, id: &str, e: archive::JournalError) -> LayerError {
        LayerError::Archive {
            id: id.to_string(),
            what: "the apply's undo journal",
            cause: Box::new(archive::ArchiveError::Invalid(e.to_string())),
        }
    }

    /// Rolls back what layer `id`'s apply journal holds (newest first), then deletes it: the
    /// layer is as it was before the apply. A missing or corrupt journal is an error: the
    /// caller sets the layer aside.
    fn roll_back_journal(&self, id: &str) -> Result<()> {
        let path = crate::layout::apply_journal(&self.config.root, id);
        let mut journal =
            archive::Journal::open(&path, id).map_err(|e| self.journal_error(id, e))?;
        archive::replay_journal(self.driver.home(), &mut journal).map_err(|cause| {
            LayerError::Archive {
                id: id.to_string(),
                what: "rolling back an apply",
                cause: Box::new(cause),
            }
        })?;
        self.remove_journal(&path)
    }

    /// Layer `id`'s apply is recorded: its scratch directories go, then the journal.
    fn finish_journal(&self, id: &str) -> Result<()> {
        let path = crate::layout::apply_journal(&self.config.root, id);
        let journal = archive::Journal::open(&path, id).map_err(|e| self.journal_error(id, e))?;
        archive::finish_journal(self.driver.home(), &journal).map_err(|cause| {
            LayerError::Archive {
                id: id.to_string(),
                what: "removing what the apply replaced",
                cause: Box::new(cause),
            }
        })?;
        self.remove_journal(&path)
    }

    fn remove_journal(&self, path: &Path) -> Result<()> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(cause) => Err(LayerError::Io {
                what: format!("removing {}", path.display()),
                cause,
            }),
        }
    }

    /// Finishes the applies a crash interrupted (under the store lock): a layer with an
    /// apply in progress is rolled back from its journal and marked complete, as it was
    /// before the apply; one whose journal is missing, corrupt or cannot be replayed is set
    /// aside as damaged (its data kept; each open retries). A journal left by an apply the
    /// store recorded has its scratch directories removed; one of a layer that is gone is
    /// deleted.
    fn recover_applies(&self) -> Result<()> {
        for layer in self.store.applying_layers()? {
            match self.roll_back_journal(&layer.id) {
                Ok(()) => self.store.end_apply(&layer.id)?,
                Err(e) => self.store.set_damaged(
                    &layer.id,
                    &format!("an apply onto it was interrupted and cannot be rolled back: {e}"),
                )?,
            }
        }
        let dir = self.config.root.join(crate::layout::APPLY_JOURNAL_DIR);
        let names = match std::fs::read_dir(&dir) {
            Ok(r) => r
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>(),
            Err(_) => Vec::new(),
        };
        for id in names {
            match self.store.get_exact(&id)? {
                Some(l) if l.applying => {}
                // The apply stands; if its scratch cannot be removed now, the next open
                // tries again (the layer itself is whole).
                Some(l) => {
                    let _ = self.finish_journal(&l.id);
                }
                None => self.remove_journal(&dir.join(&id))?,
            }
        }
        Ok(())
    }

    /// Mounts layer `id` (or counts one more user of an existing mount); returns where: the
    /// host's own mount point `<root>/mounts/<id>`, which no driver can re-point.
    pub fn mount(&self, id: &str, options: &[(String, String)]) -> Result<PathBuf> {
        let _lock = self.store.lock_exclusive()?;
        let layer = self.store.get(id)?;
        if let Some(mp) = self.live_mount(&layer) {
            self.store.increment_mount(&layer.id, &mp)?;
            return Ok(PathBuf::from(mp));
        }
        self.mount_fresh(&layer, options, None)
    }

    /// The recorded mount point of `layer` when the mount the host recorded is still there.
    /// A count whose mount went missing (unmounted behind the host's back, or a mount of an
    /// older strata without a recorded id) is not a live mount: mounting again restarts it.
    fn live_mount(&self, layer: &Layer) -> Option<String> {
        if layer.mount_count == 0 {
            return None;
        }
        let (mp, mount_id) = (layer.mount_point.as_ref()?, layer.mount_id?);
        (Path::new(mp) == self.mounts.mount_point(&layer.id)
            && self.mounts.holds(&layer.id, mount_id))
        .then(|| mp.clone())
    }

    /// Checks the driver's plan and mounts it on the host's mount point; one user.
    fn mount_fresh(
        &self,
        layer: &Layer,
        options: &[(String, String)],
        root_mode: Option<u32>,
    ) -> Result<PathBuf> {
        let checked = self.checked_plan(
            &layer.id,
            &MountRequest {
                read_only: !layer.read_write,
                options: options.to_vec(),
            },
        )?;
        if let Some(mode) = root_mode {
            checked.set_bind_root_mode(mode)?;
        }
        let mount_id = self.mounts.mount(&layer.id, &checked)?;
        let target = self.mounts.mount_point(&layer.id);
        self.store
            .record_mount(&layer.id, &target.to_string_lossy(), mount_id)?;
        Ok(target)
    }

    /// The driver's mount plan for layer `id`, checked against its sandbox and `request`.
    fn checked_plan(&self, id: &str, request: &MountRequest) -> Result<mount::CheckedPlan> {
        // Held by the callers already (re-entrant): the plan may write into the layer.
        let _lock = self.store.lock_exclusive()?;
        let plan = match self.driver.plan_mount(id, request) {
            // A plan the contract could carry but the host refuses is a refused plan.
            Err(CallError::Sandbox(SandboxError::InvalidAnswer { driver, reason, .. })) => {
                return Err(PlanError::Invalid { driver, reason }.into());
            }
            other => other?,
        };
        Ok(mount::check_plan(
            self.driver.name(),
            self.driver.home(),
            &plan,
            request,
        )?)
    }

    /// Layer `id` mounted by the host for a runtime that keeps it while a record of its own
    /// says so (containerd's active and view snapshots): one mount, made on the first call
    /// and returned again by the next ones (made again when it went missing, as after a
    /// reboot), on the host's mount point, read-only when the layer is. `root_mode` sets the
    /// mode of a bind plan's source first (a layer without parent, whose root containerd
    /// expects to be `0755`). [`Strata::release_mount`] ends it.
    pub fn hold_mount(&self, id: &str, root_mode: Option<u32>) -> Result<PathBuf> {
        let _lock = self.store.lock_exclusive()?;
        let layer = self.store.get(id)?;
        if let Some(mp) = self.live_mount(&layer) {
            return Ok(PathBuf::from(mp));
        }
        self.mount_fresh(&layer, &[], root_mode)
    }

    /// Ends layer `id`'s mount whatever its count (a lazy detach when busy); a layer that is
    /// not mounted is fine.
    pub fn release_mount(&self, id: &str) -> Result<()> {
        match self.unmount(id, true) {
            Ok(_) | Err(LayerError::NotMounted(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Drops one user of layer `id`'s mount, unmounting on the last; `force` unmounts now
    /// whatever the count. Returns the users left. Only the mount the host recorded is
    /// unmounted, through its pinned mount directory.
    pub fn unmount(&self, id: &str, force: bool) -> Result<u32> {
        let _lock = self.store.lock_exclusive()?;
        let layer = self.store.get(id)?;
        let Some(mount_point) = layer.mount_point.clone().filter(|_| layer.mount_count > 0) else {
            return Err(LayerError::NotMounted(layer.id));
        };
        if layer.mount_count > 1 && !force {
            return Ok(self.store.decrement_mount(&layer.id, false)?);
        }
        match layer.mount_id {
            Some(mount_id) if Path::new(&mount_point) == self.mounts.mount_point(&layer.id) => self
                .mounts
                .unmount(&layer.id, mount_id, force)
                .map_err(|cause| LayerError::Unmount {
                    id: layer.id.clone(),
                    cause: Box::new(cause),
                })?,
            // A record this host cannot verify: only the operator clears it.
            _ if force => {}
            _ => {
                return Err(LayerError::UnverifiedMount {
                    id: layer.id,
                    mount_point,
                });
            }
        }
        let left = self.store.decrement_mount(&layer.id, true)?;
        self.driver.unmounted(&layer.id)?;
        Ok(left)
    }

    /// The parent to compare against: the one given, or the layer's own.
    fn compare_parent(&self, layer: &Layer, parent: Option<&str>) -> Result<Option<String>> {
        match parent {
            Some(p) => Ok(Some(self.store.get(p)?.id)),
            None => Ok(layer.parent.clone()),
        }
    }

    pub fn changes(&self, id: &str, parent: Option<&str>) -> Result<Vec<Change>> {
        let _lock = self.store.lock_exclusive()?;
        let layer = self.store.get(id)?;
        let parent = self.compare_parent(&layer, parent)?;
        let mut changes = self.driver.changes(&layer.id, parent.as_deref())?;
        changes.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(changes)
    }

    /// Writes layer `id`'s diff against its parent (or `parent`) as a tar to `out`; the lock
    /// is held until the tar is written (it reads the layer's files).
    pub fn diff(&self, id: &str, parent: Option<&str>, out: &mut dyn Write) -> Result<u64> {
        let _lock = self.store.lock_exclusive()?;
        let layer = self.store.get(id)?;
        let parent = self.compare_parent(&layer, parent)?;
        let diff = self.driver.diff(&layer.id, parent.as_deref())?;
        diff.write_tar(out).map_err(|cause| LayerError::Archive {
            id: layer.id,
            what: "writing its diff",
            cause: Box::new(cause),
        })
    }

    pub fn diff_size(&self, id: &str, parent: Option<&str>) -> Result<u64> {
        let _lock = self.store.lock_exclusive()?;
        let layer = self.store.get(id)?;
        let parent = self.compare_parent(&layer, parent)?;
        Ok(self.driver.diff_size(&layer.id, parent.as_deref())?)
    }

    pub fn metadata(&self, id: &str) -> Result<Vec<(String, String)>> {
        let _lock = self.store.lock_exclusive()?;
        let layer = self.store.get(id)?;
        Ok(self.driver.metadata(&layer.id)?)
    }

    /// Removes a layer without children that is not mounted.
    pub fn remove(&self, id: &str) -> Result<()> {
        let _lock = self.store.lock_exclusive()?;
        let layer = self.store.get(id)?;
        self.store.check_removable(&layer.id)?;
        self.discard(&layer.id)
    }

    /// The driver's status lines, fresh from the driver.
    pub fn status(&self) -> Result<Vec<(String, String)>> {
        Ok(self.driver.status()?)
    }
}

/// Layers being made ("record, then driver data"), the one rollback of layer creation: plain
/// layers ([`Strata::create_layer`]), containers, committed containers, each new layer of an
/// image import, containerd's snapshots. [`PendingLayers::create`] writes a layer's record
/// incomplete, then has the driver make its data; the layers stay incomplete until their
/// caller marks them complete (or records their owner) and calls [`PendingLayers::keep`].
/// Dropped before that (every error path, a panic), it undoes them newest first, each as
/// [`Strata::discard`] does after ending a mount the caller made on it: marked incomplete,
/// mount ended, data removed, record deleted. It stops at the first layer that cannot be
/// removed: that one and those below it (its parents) stay incomplete, and the store's
/// recovery finishes them, leaves first (docs/crash-safety.md). Holds the store's
/// exclusive lock from the first record to the last drop, so no other handle sees a
/// half-made layer.
#[must_use]
pub(crate) struct PendingLayers<'a> {
    strata: &'a Strata,
    ids: Vec<String>,
    _lock: crate::store::StoreLock<'a>,
}

impl<'a> PendingLayers<'a> {
    pub(crate) fn new(strata: &'a Strata) -> Result<Self> {
        Ok(PendingLayers {
            strata,
            ids: Vec::new(),
            _lock: strata.store.lock_exclusive()?,
        })
    }

    /// Records `new` (incomplete; its `driver` is this store's) and has the driver create
    /// its data on `base` (the template or the parent; `None`: empty), read-write when the
    /// record says so. Returns the layer's id. A failure of either leaves nothing once this
    /// guard drops.
    pub(crate) fn create(
        &mut self,
        new: NewLayer,
        base: Option<&str>,
        options: &[(String, String)],
    ) -> Result<String> {
        let read_write = new.read_write;
        let layer = self.strata.store.begin_create(NewLayer {
            driver: self.strata.driver.name().to_string(),
            ..new
        })?;
        // From here on the record exists: the rollback owns it, whatever the driver does.
        self.ids.push(layer.id.clone());
        self.strata
            .driver
            .create(&layer.id, base, read_write, options)?;
        Ok(layer.id)
    }

    /// The layers are made (complete or owned): nothing to undo.
    pub(crate) fn keep(mut self) {
        self.ids.clear();
    }

    /// The layers made so far, oldest first.
    pub(crate) fn ids(&self) -> &[String] {
        &self.ids
    }
}

impl Drop for PendingLayers<'_> {
    fn drop(&mut self) {
        for id in self.ids.iter().rev() {
            // A mount the caller made on it (containerd's snapshots) ends first; then the
            // layer goes record last. A failure leaves the record incomplete: recovery
            // finishes the job, and the layers below (its parents) wait for it.
            let _ = self.strata.release_mount(id);
            if self.strata.discard(id).is_err() {
                return;
            }
        }
    }
}

/// Counts and hashes the bytes that pass through it (sha256 once, no second read).
pub(crate) struct HashingReader<R> {
    inner: R,
    tally: Tally,
    /// Also counts the bytes here, for a progress display.
    progress: Option<Arc<std::sync::atomic::AtomicU64>>,
}

#[derive(Clone, Default)]
pub(crate) struct Tally(Arc<Mutex<(Sha256, u64)>>);

impl Tally {
    pub(crate) fn bytes(&self) -> u64 {
        self.0.lock().map(|g| g.1).unwrap_or(0)
    }

    pub(crate) fn digest(&self) -> String {
        let hasher = self.0.lock().map(|g| g.0.clone()).unwrap_or_default();
        format!("sha256:{}", hex::encode(hasher.finalize()))
    }
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        HashingReader {
            inner,
            tally: Tally::default(),
            progress: None,
        }
    }

    pub(crate) fn with_progress(mut self, counter: Arc<std::sync::atomic::AtomicU64>) -> Self {
        self.progress = Some(counter);
        self
    }

    pub(crate) fn tally(&self) -> Tally {
        self.tally.clone()
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Ok(mut g) = self.tally.0.lock() {
            g.0.update(&buf[..n]);
            g.1 += n as u64;
        }
        if let Some(p) = &self.progress {
            p.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(n)
    }
}

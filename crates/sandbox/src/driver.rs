//! The sandbox as the host's core sees it: [`SandboxLoader`] starts a driver component in
//! wasmtime and hands it over as a [`Driver`]; [`open`] opens a store with it.

use std::io::Read;
use std::path::Path;

use super::host::LayerDiff;
use super::inspect::{ComponentSummary, inspect_component};
use super::{
    ComponentCache, DriverComponent, DriverRuntime, SandboxEngine, SandboxError, SandboxLimits,
};
use crate::archive::{ArchiveError, Journal};
use crate::config::Config;
use crate::contract::{
    ApplyTrace, CallError, Change, ComponentInfo, Driver, DriverInfo, DriverLoader, DriverSetup,
    LayerMetadata, LayerTar, MountPlan, MountRequest,
};
use crate::layers::{LayerError, StoreOptions, Strata, locate_driver};
use crate::sys;

/// Starts drivers in wasmtime: compiles (or maps from the cache) the component, links the
/// granted interfaces only, and runs each call in a fresh instance.
pub struct SandboxLoader;

impl DriverLoader for SandboxLoader {
    fn load(&self, setup: DriverSetup<'_>) -> Result<Box<dyn Driver>, SandboxError> {
        let engine = SandboxEngine::new().map_err(|e| SandboxError::Setup {
            driver: setup.name.into(),
            reason: format!("{e:#}"),
        })?;
        let cache = ComponentCache::new(setup.cache_dir);
        let component = DriverComponent::load(&engine, &cache, setup.name, setup.path)?;
        let limits = SandboxLimits {
            memory: setup.memory,
            deadline: setup.deadline,
            call_timeout: setup.call_timeout,
        };
        let mut runtime =
            DriverRuntime::new(&engine, &component, &setup.grants, &setup.home, limits)?
                .with_run_dir(setup.run_dir);
        if let Some(zfs) = setup.zfs {
            runtime = runtime.with_zfs(zfs);
        }
        let info = ComponentInfo {
            name: component.name.clone(),
            path: component.path.clone(),
            sha256: component.sha256.clone(),
            from_cache: component.from_cache,
            cache_warning: component.cache_warning,
            wit_version: component.wit_version,
            capabilities: component.capabilities,
        };
        Ok(Box::new(SandboxedDriver { runtime, info }))
    }
}

/// Opens the store of `options` with its driver in the sandbox.
pub fn open(options: StoreOptions) -> Result<Strata, LayerError> {
    Strata::open(options, &SandboxLoader)
}

/// What the driver `spec` imports and exports, read from its component without compiling
/// it and without a store: for `driver inspect`.
pub fn inspect_driver(spec: &str, config: &Config) -> Result<ComponentSummary, LayerError> {
    let location = locate_driver(spec, config)?;
    Ok(inspect_component(&location.name, &location.path)?)
}

/// A driver running in the sandbox.
pub struct SandboxedDriver {
    runtime: DriverRuntime,
    info: ComponentInfo,
}

impl SandboxedDriver {
    /// The runtime calling the driver.
    pub fn runtime(&self) -> &DriverRuntime {
        &self.runtime
    }
}

impl LayerTar for LayerDiff {
    fn write_tar(&self, out: &mut dyn std::io::Write) -> Result<u64, ArchiveError> {
        LayerDiff::write_tar(self, out)
    }
}

impl Driver for SandboxedDriver {
    fn name(&self) -> &str {
        self.runtime.name()
    }

    fn home_path(&self) -> &Path {
        self.runtime.home_path()
    }

    fn home(&self) -> &sys::Dir {
        self.runtime.home()
    }

    fn component(&self) -> &ComponentInfo {
        &self.info
    }

    fn init(&self, options: &[(String, String)]) -> Result<DriverInfo, CallError> {
        self.runtime.init(options)
    }

    fn create(
        &self,
        id: &str,
        parent: Option<&str>,
        read_write: bool,
        options: &[(String, String)],
    ) -> Result<(), CallError> {
        self.runtime.create(id, parent, read_write, options)
    }

    fn remove(&self, id: &str) -> Result<(), CallError> {
        self.runtime.remove(id)
    }

    fn exists(&self, id: &str) -> Result<bool, CallError> {
        self.runtime.exists(id)
    }

    fn plan_mount(&self, id: &str, request: &MountRequest) -> Result<MountPlan, CallError> {
        self.runtime.plan_mount(id, request)
    }

    fn unmounted(&self, id: &str) -> Result<(), CallError> {
        self.runtime.unmounted(id)
    }

    fn apply_diff_traced(
        &self,
        id: &str,
        parent: Option<&str>,
        tar: Box<dyn Read + Send>,
        journal: Option<Journal>,
    ) -> (Result<u64, CallError>, ApplyTrace) {
        self.runtime.apply_diff_traced(id, parent, tar, journal)
    }

    fn diff(&self, id: &str, parent: Option<&str>) -> Result<Box<dyn LayerTar>, CallError> {
        Ok(Box::new(self.runtime.diff(id, parent)?))
    }

    fn changes(&self, id: &str, parent: Option<&str>) -> Result<Vec<Change>, CallError> {
        self.runtime.changes(id, parent)
    }

    fn diff_size(&self, id: &str, parent: Option<&str>) -> Result<u64, CallError> {
        self.runtime.diff_size(id, parent)
    }

    fn status(&self) -> Result<Vec<(String, String)>, CallError> {
        self.runtime.status()
    }

    fn metadata(&self, id: &str) -> Result<Vec<(String, String)>, CallError> {
        self.runtime.metadata(id)
    }

    fn layers_metadata(&self, ids: &[String]) -> Result<Vec<LayerMetadata>, SandboxError> {
        self.runtime.layers_metadata(ids)
    }
}

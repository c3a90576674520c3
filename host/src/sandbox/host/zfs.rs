//! The `zfs` interface: datasets beneath the operator's parent dataset, mounted beneath the
//! driver home.
//!
//! Linked only for drivers granted `zfs`. Name and property checks live in
//! [`crate::sys::zfs`], next to the command they guard; mount targets are resolved beneath
//! the home here, like every driver path, before the host mounts anything on them.

use std::sync::Arc;

use super::{HostResult, HostState, to_wit, wit_error};
use crate::sandbox::bindings::strata::driver::{types, zfs as wit_zfs};
use crate::sys::zfs::{ListedDataset, Zfs, ZfsBackend};
use crate::sys::{ErrorKind, SysError};

/// What the `zfs` capability works with: the confined `zfs` command, or why a driver granted
/// `zfs` has none (no `fsname` configured, no `zfs` command), which every call answers.
pub type ZfsAccess = Arc<Result<Zfs, (ErrorKind, String)>>;

impl HostState {
    /// Runs `f` with the confined `zfs` command, off the driver's deadline.
    fn zfs_call<T>(
        &mut self,
        f: impl FnOnce(&Zfs, &HostState) -> Result<T, types::Error>,
    ) -> Result<T, types::Error> {
        let access = self.zfs.clone();
        self.timed(|s| match access.as_deref() {
            Some(Ok(zfs)) => f(zfs, s),
            Some(Err((kind, why))) => Err(super::wit_error(*kind, 0, why.clone())),
            None => Err(types::Error::Unsupported(
                "this driver has no zfs parent dataset".into(),
            )),
        })
    }
}

fn named(e: SysError) -> types::Error {
    let name = e.path.to_string_lossy().into_owned();
    to_wit(&name, e)
}

fn listed(d: ListedDataset) -> wit_zfs::Dataset {
    wit_zfs::Dataset {
        name: d.name,
        properties: d.properties,
    }
}

impl wit_zfs::Host for HostState {
    fn info(&mut self) -> HostResult<wit_zfs::PoolInfo> {
        Ok(self.zfs_call(|zfs, _| {
            // The parent must exist and be a filesystem; `type` is a statistic every
            // dataset has, so this one query proves both.
            let out = zfs.parent_type().map_err(named)?;
            if out != "filesystem" {
                return Err(wit_error(
                    ErrorKind::InvalidArgument,
                    0,
                    format!(
                        "the parent dataset {} is a {out}, not a filesystem",
                        zfs.parent()
                    ),
                ));
            }
            Ok(wit_zfs::PoolInfo {
                backend: match zfs.backend() {
                    ZfsBackend::Kernel => wit_zfs::Backend::Kernel,
                    ZfsBackend::Fuse => wit_zfs::Backend::Fuse,
                },
                parent: zfs.parent().to_string(),
            })
        }))
    }

    fn create(&mut self, dataset: String, properties: Vec<(String, String)>) -> HostResult<()> {
        Ok(self.zfs_call(|zfs, _| zfs.create(&dataset, &properties).map_err(named)))
    }

    fn snapshot(&mut self, snapshot: String) -> HostResult<()> {
        Ok(self.zfs_call(|zfs, _| zfs.snapshot(&snapshot).map_err(named)))
    }

    fn clone_snapshot(
        &mut self,
        snapshot: String,
        dataset: String,
        properties: Vec<(String, String)>,
    ) -> HostResult<()> {
        Ok(self.zfs_call(|zfs, _| {
            zfs.clone_snapshot(&snapshot, &dataset, &properties)
                .map_err(named)
        }))
    }

    fn destroy(&mut self, name: String, recursive: bool) -> HostResult<()> {
        Ok(self.zfs_call(|zfs, _| zfs.destroy(&name, recursive).map_err(named)))
    }

    fn set_properties(
        &mut self,
        name: String,
        properties: Vec<(String, String)>,
    ) -> HostResult<()> {
        Ok(self.zfs_call(|zfs, _| zfs.set_properties(&name, &properties).map_err(named)))
    }

    fn get_properties(
        &mut self,
        name: String,
        names: Vec<String>,
    ) -> HostResult<Vec<(String, String)>> {
        Ok(self.zfs_call(|zfs, _| zfs.get_properties(&name, &names).map_err(named)))
    }

    fn list_datasets(
        &mut self,
        dataset: Option<String>,
        names: Vec<String>,
        depth: Option<u32>,
    ) -> HostResult<Vec<wit_zfs::Dataset>> {
        Ok(self.zfs_call(|zfs, _| {
            zfs.list(dataset.as_deref(), &names, depth)
                .map(|l| l.into_iter().map(listed).collect())
                .map_err(named)
        }))
    }

    fn mount(&mut self, dataset: String, path: String) -> HostResult<()> {
        Ok(self.zfs_call(|zfs, s| {
            let target = s.open_dir(&path)?;
            zfs.mount(&dataset, &target, &path).map_err(named)
        }))
    }

    fn unmount(&mut self, path: String) -> HostResult<()> {
        Ok(self.zfs_call(|zfs, s| zfs.unmount(&s.home, &path).map_err(named)))
    }
}

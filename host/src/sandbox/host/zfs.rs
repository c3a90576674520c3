//! The `zfs` interface: datasets beneath the operator's parent dataset, mounted beneath the
//! driver home.
//!
//! Linked only for drivers granted `zfs`. Name and property checks live in
//! [`crate::sys::zfs`], next to the command they guard; mount targets are resolved beneath
//! the home here, like every driver path, before the host mounts anything on them.

use std::sync::Arc;

use super::{HostResult, HostState, driver_error, to_error};
use crate::contract::{DriverError, ZfsDataset, ZfsPoolInfo};
use crate::sys::zfs::Zfs;
use crate::sys::{ErrorKind, SysError};

/// What the `zfs` capability works with: the confined `zfs` command, or why a driver granted
/// `zfs` has none (no `fsname` configured, no `zfs` command), which every call answers.
pub type ZfsAccess = Arc<Result<Zfs, (ErrorKind, String)>>;

impl HostState {
    /// Runs `f` with the confined `zfs` command, off the driver's deadline.
    fn zfs_call<T>(
        &mut self,
        f: impl FnOnce(&Zfs, &HostState) -> Result<T, DriverError>,
    ) -> Result<T, DriverError> {
        let access = self.zfs.clone();
        self.timed(|s| match access.as_deref() {
            Some(Ok(zfs)) => f(zfs, s),
            Some(Err((kind, why))) => Err(driver_error(*kind, 0, why.clone())),
            None => Err(DriverError::Unsupported(
                "this driver has no zfs parent dataset".into(),
            )),
        })
    }
}

fn named(e: SysError) -> DriverError {
    let name = e.path.to_string_lossy().into_owned();
    to_error(&name, e)
}

/// The `zfs` interface.
impl HostState {
    pub(in crate::sandbox) fn zfs_info(&mut self) -> HostResult<ZfsPoolInfo> {
        Ok(self.zfs_call(|zfs, _| {
            // The parent must exist and be a filesystem; `type` is a statistic every
            // dataset has, so this one query proves both.
            let out = zfs.parent_type().map_err(named)?;
            if out != "filesystem" {
                return Err(driver_error(
                    ErrorKind::InvalidArgument,
                    0,
                    format!(
                        "the parent dataset {} is a {out}, not a filesystem",
                        zfs.parent()
                    ),
                ));
            }
            Ok(ZfsPoolInfo {
                backend: zfs.backend(),
                parent: zfs.parent().to_string(),
            })
        }))
    }

    pub(in crate::sandbox) fn zfs_create(
        &mut self,
        dataset: String,
        properties: Vec<(String, String)>,
    ) -> HostResult<()> {
        Ok(self.zfs_call(|zfs, _| zfs.create(&dataset, &properties).map_err(named)))
    }

    pub(in crate::sandbox) fn zfs_snapshot(&mut self, snapshot: String) -> HostResult<()> {
        Ok(self.zfs_call(|zfs, _| zfs.snapshot(&snapshot).map_err(named)))
    }

    pub(in crate::sandbox) fn zfs_clone_snapshot(
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

    pub(in crate::sandbox) fn zfs_destroy(
        &mut self,
        name: String,
        recursive: bool,
    ) -> HostResult<()> {
        Ok(self.zfs_call(|zfs, _| zfs.destroy(&name, recursive).map_err(named)))
    }

    pub(in crate::sandbox) fn zfs_set_properties(
        &mut self,
        name: String,
        properties: Vec<(String, String)>,
    ) -> HostResult<()> {
        Ok(self.zfs_call(|zfs, _| zfs.set_properties(&name, &properties).map_err(named)))
    }

    pub(in crate::sandbox) fn zfs_get_properties(
        &mut self,
        name: String,
        names: Vec<String>,
    ) -> HostResult<Vec<(String, String)>> {
        Ok(self.zfs_call(|zfs, _| zfs.get_properties(&name, &names).map_err(named)))
    }

    pub(in crate::sandbox) fn zfs_list_datasets(
        &mut self,
        dataset: Option<String>,
        names: Vec<String>,
        depth: Option<u32>,
    ) -> HostResult<Vec<ZfsDataset>> {
        Ok(self.zfs_call(|zfs, _| zfs.list(dataset.as_deref(), &names, depth).map_err(named)))
    }

    pub(in crate::sandbox) fn zfs_mount(
        &mut self,
        dataset: String,
        path: String,
    ) -> HostResult<()> {
        Ok(self.zfs_call(|zfs, s| {
            let target = s.open_dir(&path)?;
            zfs.mount(&dataset, &target, &path).map_err(named)
        }))
    }

    pub(in crate::sandbox) fn zfs_unmount(&mut self, path: String) -> HostResult<()> {
        Ok(self.zfs_call(|zfs, s| zfs.unmount(&s.home, &path).map_err(named)))
    }
}

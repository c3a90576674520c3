//! The `btrfs` interface: subvolumes and quota groups beneath the driver home.
//!
//! Linked only for drivers granted `btrfs`. The checks that matter for the sandbox (paths
//! beneath the home, every path a subvolume root) live in [`crate::sys::btrfs`], next to
//! the ioctls they guard, so no caller can skip them.

use super::{HostResult, HostState, to_error};
use crate::contract::SubvolumeInfo;

/// Mode of a new subvolume's root, whatever the host's umask.
const NEW_SUBVOLUME_MODE: u32 = 0o755;

/// The `btrfs` interface.
impl HostState {
    pub(in crate::sandbox) fn btrfs_create_subvolume(&mut self, path: String) -> HostResult<()> {
        Ok(self
            .timed(|s| {
                s.home.create_subvolume(&path)?;
                s.home.chmod(&path, NEW_SUBVOLUME_MODE)?;
                s.home.lchown(&path, 0, 0)
            })
            .map_err(|e| to_error(&path, e)))
    }

    pub(in crate::sandbox) fn btrfs_snapshot(
        &mut self,
        source: String,
        dest: String,
        read_only: bool,
    ) -> HostResult<()> {
        Ok(self.timed(|s| {
            s.home
                .snapshot_subvolume(&source, &dest, read_only)
                .map_err(|e| {
                    let named = e.path.to_string_lossy().into_owned();
                    to_error(&named, e)
                })
        }))
    }

    pub(in crate::sandbox) fn btrfs_delete_subvolume(&mut self, path: String) -> HostResult<()> {
        Ok(self.timed(|s| {
            s.home.delete_subvolume(&path).map_err(|e| {
                let named = e.path.to_string_lossy().into_owned();
                to_error(&named, e)
            })
        }))
    }

    pub(in crate::sandbox) fn btrfs_is_subvolume(&mut self, path: String) -> HostResult<bool> {
        Ok(self.timed(|s| s.home.is_subvolume(&path).map_err(|e| to_error(&path, e))))
    }

    pub(in crate::sandbox) fn btrfs_subvolume_info(
        &mut self,
        path: String,
    ) -> HostResult<SubvolumeInfo> {
        Ok(self.timed(|s| s.home.subvolume_info(&path).map_err(|e| to_error(&path, e))))
    }

    pub(in crate::sandbox) fn btrfs_enable_quota(&mut self, path: String) -> HostResult<()> {
        Ok(self.timed(|s| s.home.enable_quota(&path).map_err(|e| to_error(&path, e))))
    }

    pub(in crate::sandbox) fn btrfs_set_qgroup_limit(
        &mut self,
        path: String,
        limit: Option<u64>,
    ) -> HostResult<()> {
        Ok(self.timed(|s| {
            s.home
                .set_qgroup_limit(&path, limit)
                .map_err(|e| to_error(&path, e))
        }))
    }
}

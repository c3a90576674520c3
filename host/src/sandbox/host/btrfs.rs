//! The `btrfs` interface: subvolumes and quota groups beneath the driver home.
//!
//! Linked only for drivers granted `btrfs`. The checks that matter for the sandbox (paths
//! beneath the home, every path a subvolume root) live in [`crate::sys::btrfs`], next to
//! the ioctls they guard, so no caller can skip them.

use super::{HostResult, HostState, to_wit};
use crate::sandbox::bindings::strata::driver::btrfs as wit_btrfs;

/// Mode of a new subvolume's root, whatever the host's umask.
const NEW_SUBVOLUME_MODE: u32 = 0o755;

impl wit_btrfs::Host for HostState {
    fn create_subvolume(&mut self, path: String) -> HostResult<()> {
        Ok(self
            .timed(|s| {
                s.home.create_subvolume(&path)?;
                s.home.chmod(&path, NEW_SUBVOLUME_MODE)?;
                s.home.lchown(&path, 0, 0)
            })
            .map_err(|e| to_wit(&path, e)))
    }

    fn snapshot(&mut self, source: String, dest: String, read_only: bool) -> HostResult<()> {
        Ok(self.timed(|s| {
            s.home
                .snapshot_subvolume(&source, &dest, read_only)
                .map_err(|e| {
                    let named = e.path.to_string_lossy().into_owned();
                    to_wit(&named, e)
                })
        }))
    }

    fn delete_subvolume(&mut self, path: String) -> HostResult<()> {
        Ok(self.timed(|s| {
            s.home.delete_subvolume(&path).map_err(|e| {
                let named = e.path.to_string_lossy().into_owned();
                to_wit(&named, e)
            })
        }))
    }

    fn is_subvolume(&mut self, path: String) -> HostResult<bool> {
        Ok(self.timed(|s| s.home.is_subvolume(&path).map_err(|e| to_wit(&path, e))))
    }

    fn subvolume_info(&mut self, path: String) -> HostResult<wit_btrfs::SubvolumeDetails> {
        Ok(self.timed(|s| {
            s.home
                .subvolume_info(&path)
                .map(|i| wit_btrfs::SubvolumeDetails {
                    id: i.id,
                    read_only: i.read_only,
                })
                .map_err(|e| to_wit(&path, e))
        }))
    }

    fn enable_quota(&mut self, path: String) -> HostResult<()> {
        Ok(self.timed(|s| s.home.enable_quota(&path).map_err(|e| to_wit(&path, e))))
    }

    fn set_qgroup_limit(&mut self, path: String, limit: Option<u64>) -> HostResult<()> {
        Ok(self.timed(|s| {
            s.home
                .set_qgroup_limit(&path, limit)
                .map_err(|e| to_wit(&path, e))
        }))
    }
}

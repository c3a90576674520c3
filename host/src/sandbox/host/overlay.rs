//! The `overlay` interface: probing overlayfs, and diffs of overlay layers.
//!
//! Every directory a stack names is resolved beneath the driver home like any other driver
//! path. Merged views are read-only overlay mounts the host creates detached (never attached
//! to a path), so nothing is left mounted whatever the driver does.

use std::path::PathBuf;

use super::{DiffSource, HostResult, HostState, LayerDiff, archive_error, changes_out, to_error};
use crate::archive;
use crate::contract::{Change, DriverError, OverlayFeatures, WhiteoutFormat};
use crate::mount::MAX_OVERLAY_LOWERS;
use crate::sys;

/// Probe results are cached by the host (never by the driver) in its run directory, keyed by
/// the boot and the home's device and inode: a reboot (a new kernel) or a new filesystem
/// probes again, as containers/storage caches its probes in its run root.
fn read_probe_cache(path: &std::path::Path, key: &str) -> Option<OverlayFeatures> {
    let text = std::fs::read_to_string(path).ok()?;
    let (k, flags) = text.split_once('\n')?;
    let b: Vec<bool> = flags.trim().split(' ').map(|f| f == "1").collect();
    (k == key && b.len() == 6).then(|| OverlayFeatures {
        supported: b[0],
        d_type: b[1],
        lowerdir_append: b[2],
        metacopy: b[3],
        redirect_dir: b[4],
        volatile: b[5],
    })
}

fn write_probe_cache(path: &std::path::Path, key: &str, f: &OverlayFeatures) {
    let bit = |b: bool| if b { "1" } else { "0" };
    let text = format!(
        "{key}\n{} {} {} {} {} {}\n",
        bit(f.supported),
        bit(f.d_type),
        bit(f.lowerdir_append),
        bit(f.metacopy),
        bit(f.redirect_dir),
        bit(f.volatile)
    );
    let Some(dir) = path.parent() else { return };
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    // A cache that cannot be written only costs the next start a probe.
    let _ = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&tmp, text))
        .and_then(|()| std::fs::rename(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
}

impl HostState {
    /// Where the probe result for this home is cached, and the key it must carry.
    fn probe_cache_key(&self) -> Option<(PathBuf, String)> {
        let dir = self.run_dir.as_ref()?;
        let st = self.home.lstat(".").ok()?;
        let key = format!(
            "boot {} dev {} ino {}",
            crate::store::current_boot_id(),
            st.dev,
            st.ino
        );
        Some((dir.join("overlay-features"), key))
    }

    /// Opens the directories of a stack (topmost first).
    fn open_stack(&self, dirs: &[String]) -> Result<Vec<sys::Dir>, DriverError> {
        if dirs.len() > archive::MAX_VIEW_DIRS {
            return Err(DriverError::InvalidArgument(format!(
                "a stack of {} directories is more than the {} a view merges (overlayfs's \
                 {MAX_OVERLAY_LOWERS}, and one over them)",
                dirs.len(),
                archive::MAX_VIEW_DIRS
            )));
        }
        dirs.iter().map(|d| self.open_dir(d)).collect()
    }

    /// The merged read-only view of a stack (`None` for an empty one).
    fn view(
        &self,
        dirs: &[String],
        format: archive::WhiteoutFormat,
    ) -> Result<Option<sys::Dir>, DriverError> {
        let opened = self.open_stack(dirs)?;
        let name = PathBuf::from(format!(
            "overlay view of {}",
            dirs.first().map(String::as_str).unwrap_or("nothing")
        ));
        archive::merged_view(opened, format, &name)
            .map_err(|e| archive_error(&format!("merging {}", dirs.join(":")), e))
    }

    fn upper_and_lower(
        &self,
        upper: &str,
        lower: &[String],
        format: archive::WhiteoutFormat,
    ) -> Result<(sys::Dir, Option<sys::Dir>), DriverError> {
        Ok((self.open_dir(upper)?, self.view(lower, format)?))
    }

    fn views(
        &self,
        layer: &[String],
        parent: &[String],
        format: archive::WhiteoutFormat,
    ) -> Result<(sys::Dir, Option<sys::Dir>), DriverError> {
        let Some(l) = self.view(layer, format)? else {
            return Err(DriverError::InvalidArgument(
                "the layer's stack names no directory".into(),
            ));
        };
        Ok((l, self.view(parent, format)?))
    }
}

/// The `overlay` interface.
impl HostState {
    pub(in crate::sandbox) fn overlay_probe(
        &mut self,
        scratch: String,
    ) -> HostResult<OverlayFeatures> {
        Ok(self.timed(|s| {
            let key = s.probe_cache_key();
            if let Some(cached) = key
                .as_ref()
                .and_then(|(path, key)| read_probe_cache(path, key))
            {
                return Ok(cached);
            }
            s.home
                .mkdir(&scratch, 0o700, 0, 0)
                .map_err(|e| to_error(&scratch, e))?;
            let dir = s.open_dir(&scratch)?;
            let probed = sys::mount::probe_overlay(&dir).map_err(|e| to_error(&scratch, e));
            let removed = s
                .home
                .remove_tree(&scratch)
                .map_err(|e| to_error(&scratch, e));
            let f = probed?;
            removed?;
            if let Some((path, key)) = key {
                write_probe_cache(&path, &key, &f);
            }
            Ok(f)
        }))
    }

    pub(in crate::sandbox) fn overlay_diff_upper(
        &mut self,
        upper: String,
        lower: Vec<String>,
        format: WhiteoutFormat,
    ) -> HostResult<wasmtime::component::Resource<LayerDiff>> {
        match self.timed(|s| s.upper_and_lower(&upper, &lower, format)) {
            Ok((upper, lower)) => Ok(Ok(self.push_diff(LayerDiff {
                source: DiffSource::Upper {
                    upper,
                    lower,
                    format,
                },
            })?)),
            Err(e) => Ok(Err(e)),
        }
    }

    pub(in crate::sandbox) fn overlay_changes_upper(
        &mut self,
        upper: String,
        lower: Vec<String>,
        format: WhiteoutFormat,
    ) -> HostResult<Vec<Change>> {
        Ok(self.timed(|s| {
            let (u, l) = s.upper_and_lower(&upper, &lower, format)?;
            let changes = archive::upper_changes(&u, l.as_ref(), format)
                .map_err(|e| archive_error(&format!("comparing {upper}"), e))?;
            changes_out(&upper, changes)
        }))
    }

    pub(in crate::sandbox) fn overlay_diff_stacks(
        &mut self,
        layer: Vec<String>,
        parent: Vec<String>,
        format: WhiteoutFormat,
    ) -> HostResult<wasmtime::component::Resource<LayerDiff>> {
        match self.timed(|s| s.views(&layer, &parent, format)) {
            Ok((layer, parent)) => Ok(Ok(self.push_diff(LayerDiff {
                source: DiffSource::Trees { layer, parent },
            })?)),
            Err(e) => Ok(Err(e)),
        }
    }

    pub(in crate::sandbox) fn overlay_changes_stacks(
        &mut self,
        layer: Vec<String>,
        parent: Vec<String>,
        format: WhiteoutFormat,
    ) -> HostResult<Vec<Change>> {
        Ok(self.timed(|s| {
            let (l, p) = s.views(&layer, &parent, format)?;
            let what = layer.first().cloned().unwrap_or_default();
            let changes = archive::changes(&l, p.as_ref())
                .map_err(|e| archive_error(&format!("comparing {what}"), e))?;
            changes_out(&what, changes)
        }))
    }

    pub(in crate::sandbox) fn overlay_diff_size_stacks(
        &mut self,
        layer: Vec<String>,
        parent: Vec<String>,
        format: WhiteoutFormat,
    ) -> HostResult<u64> {
        Ok(self.timed(|s| {
            let (l, p) = s.views(&layer, &parent, format)?;
            archive::diff_size(&l, p.as_ref()).map_err(|e| {
                archive_error(
                    &format!("sizing {}", layer.first().cloned().unwrap_or_default()),
                    e,
                )
            })
        }))
    }
}

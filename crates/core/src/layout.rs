//! The store root's layout, and the move of stores made before it.
//!
//! ```text
//! <root>/layers.db, store.lock   the store (host only)
//! <root>/cache/components/       compiled components and their digests (host only, 0700)
//! <root>/apply-journal/<id>      the undo journal of an apply onto layer <id> in progress
//!                                (host only, 0700; archive::journal)
//! <root>/drivers/<name>/         driver homes: each driver's sandbox, nothing else
//! <run_root>/drivers/<name>/     host-private runtime state of each driver (probe results,
//!                                zfs-fuse private mounts)
//! ```
//!
//! Why: a driver home is the one place a driver can write, so no driver name may ever reach
//! host state. Before, homes were `<root>/<name>/`, and a driver named `cache` got the
//! component cache as its home — and with it native code the host would map. Homes now live
//! in their own directory, names are checked ([`crate::registry::check_name`]), the cache is
//! outside every home, and a cached artifact is verified against a digest before it is
//! mapped (`strata_sandbox::ComponentCache`).
//!
//! A store made before this layout is moved on its first open (under the store lock): every
//! recorded driver's `<root>/<name>/` (and `<run_root>/<name>/`) moves to
//! `<root>/drivers/<name>/` (and `<run_root>/drivers/<name>/`), and the old component cache is
//! deleted unread, since a driver could have written it. A home with something mounted
//! beneath it is not moved: the open fails naming the mounts and saying how to proceed.

use std::path::{Path, PathBuf};

use crate::store::{LayerStore, StoreError};

/// The directory beneath the root (and the run root) holding driver homes.
pub const DRIVERS_DIR: &str = "drivers";

/// Driver `name`'s home beneath `root`.
pub fn driver_home(root: &Path, name: &str) -> PathBuf {
    root.join(DRIVERS_DIR).join(name)
}

/// Driver `name`'s host-private runtime directory beneath `run_root`.
pub fn driver_run_dir(run_root: &Path, name: &str) -> PathBuf {
    run_root.join(DRIVERS_DIR).join(name)
}

/// The directory beneath the root holding the undo journals of applies in progress.
pub const APPLY_JOURNAL_DIR: &str = "apply-journal";

/// Where the undo journal of an apply onto layer `id` (a checked id: a plain name) is kept:
/// beside the store, outside every driver home, so no driver can write it.
pub fn apply_journal(root: &Path, id: &str) -> PathBuf {
    root.join(APPLY_JOURNAL_DIR).join(id)
}

/// Where compiled components are cached unless configured otherwise.
pub fn default_cache_dir(root: &Path) -> PathBuf {
    root.join("cache").join("components")
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "the store at {root} was made by an older Strata, which kept driver {driver}'s home at \
         {old}; it moves to {new}, but these are mounted beneath it: {mounts}. Stop every user \
         of the store, unmount them (`umount -R PATH` for each; the layers' data stays and \
         Strata mounts it again when needed) or reboot, then run strata again"
    )]
    Mounted {
        root: PathBuf,
        driver: String,
        old: PathBuf,
        new: PathBuf,
        mounts: String,
    },
    #[error(
        "the store at {root} was made by an older Strata; moving {old} to {new} failed: \
         {cause}. Move it by hand (with nothing mounted beneath it) and run strata again"
    )]
    Move {
        root: PathBuf,
        old: PathBuf,
        new: PathBuf,
        cause: std::io::Error,
    },
    #[error("{what} {path}: {cause}")]
    Io {
        what: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "the component cache {cache} is inside the driver homes ({homes}); a driver could write \
         the native code the host maps. Put it elsewhere (STRATA_COMPONENT_CACHE)"
    )]
    CacheInHome { cache: PathBuf, homes: PathBuf },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The layout version recorded in the store's metadata once its homes are in place.
pub const LAYOUT_VERSION: &str = "2";
const LAYOUT_KEY: &str = "layout";

/// Brings the layout of the store at `root` up to date; the caller holds the store's
/// exclusive lock and is about to open driver `driver`. A store already in this layout is
/// left alone (one metadata read).
pub fn migrate(
    root: &Path,
    run_root: &Path,
    store: &LayerStore,
    driver: &str,
) -> Result<(), LayoutError> {
    let homes = root.join(DRIVERS_DIR);
    if store.meta(LAYOUT_KEY)?.as_deref() == Some(LAYOUT_VERSION) {
        return create_dir(&homes);
    }
    // Whatever cache is there was written when homes were beside it: never read it.
    let old_cache = default_cache_dir(root);
    if std::fs::symlink_metadata(&old_cache).is_ok() {
        remove_any(&old_cache)?;
    }
    let mut names = store.recorded_drivers()?;
    if !names.iter().any(|n| n == driver) {
        names.push(driver.to_string());
    }
    // A driver once called `drivers` had its home where the homes now go.
    if names.iter().any(|n| n == DRIVERS_DIR) && is_real_dir(&homes) {
        let aside = root.join(format!(".{DRIVERS_DIR}-migrating"));
        move_legacy_dir(root, &homes, &aside, DRIVERS_DIR)?;
        create_dir(&homes)?;
        move_legacy_dir(root, &aside, &driver_home(root, DRIVERS_DIR), DRIVERS_DIR)?;
    }
    create_dir(&homes)?;
    create_dir(&run_root.join(DRIVERS_DIR))?;
    for name in &names {
        if crate::registry::check_name(name).is_err() || name == DRIVERS_DIR {
            // Not a name this host could have made a home for beside the store.
            continue;
        }
        move_legacy_dir(root, &root.join(name), &driver_home(root, name), name)?;
        move_legacy_dir(
            root,
            &run_root.join(name),
            &driver_run_dir(run_root, name),
            name,
        )?;
    }
    store.set_meta(LAYOUT_KEY, LAYOUT_VERSION)?;
    Ok(())
}

fn is_real_dir(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

fn create_dir(p: &Path) -> Result<(), LayoutError> {
    std::fs::create_dir_all(p).map_err(|cause| LayoutError::Io {
        what: "creating",
        path: p.into(),
        cause,
    })
}

fn remove_any(p: &Path) -> Result<(), LayoutError> {
    let r = if is_real_dir(p) {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    };
    r.map_err(|cause| LayoutError::Io {
        what: "removing the component cache of an older layout",
        path: p.into(),
        cause,
    })
}

/// Moves an old-layout directory `old` to `new` when `old` is a real directory (not a
/// symlink) and `new` does not exist yet.
fn move_legacy_dir(root: &Path, old: &Path, new: &Path, driver: &str) -> Result<(), LayoutError> {
    if !is_real_dir(old) || std::fs::symlink_metadata(new).is_ok() {
        return Ok(());
    }
    let mounts = crate::sys::mount::mount_points_beneath(old);
    if !mounts.is_empty() {
        return Err(LayoutError::Mounted {
            root: root.into(),
            driver: driver.into(),
            old: old.into(),
            new: new.into(),
            mounts: mounts
                .iter()
                .map(|m| m.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    std::fs::rename(old, new).map_err(|cause| LayoutError::Move {
        root: root.into(),
        old: old.into(),
        new: new.into(),
        cause,
    })
}

/// Refuses a component cache directory at or beneath the driver homes of `root`.
pub fn check_cache_dir(root: &Path, cache: &Path) -> Result<(), LayoutError> {
    let homes = root.join(DRIVERS_DIR);
    let canonical = |p: &Path| -> PathBuf {
        // The deepest existing ancestor, resolved, plus the rest as given.
        let mut existing = p.to_path_buf();
        let mut rest = Vec::new();
        while !existing.exists() {
            match (existing.file_name(), existing.parent()) {
                (Some(n), Some(parent)) => {
                    rest.push(n.to_os_string());
                    existing = parent.to_path_buf();
                }
                _ => break,
            }
        }
        let mut out = std::fs::canonicalize(&existing).unwrap_or(existing);
        for n in rest.iter().rev() {
            out.push(n);
        }
        out
    };
    let (cache_c, homes_c) = (canonical(cache), canonical(&homes));
    if cache_c.starts_with(&homes_c) {
        return Err(LayoutError::CacheInHome {
            cache: cache.into(),
            homes,
        });
    }
    Ok(())
}

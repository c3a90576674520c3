//! Strata's btrfs driver: every layer is a btrfs subvolume, and a child is a writable
//! snapshot of its parent, so creating a layer costs the same whatever its parent holds.
//!
//! ```text
//! <home>/subvolumes/<id>/   the layer: a subvolume holding the layer's whole tree
//! <home>/mnt/<id>/          mount point (a bind of the subvolume, read-only for views)
//! <home>/quotas/<id>        the layer's size limit in bytes, when it has one
//! <home>/.options           the operator's options as `init` received them
//! ```
//!
//! `size=` limits the bytes a layer references with a btrfs quota group (quotas are turned on
//! for the filesystem the first time a layer asks for one); a child without its own `size=`
//! gets its parent's limit. Diffs compare a layer's tree with its parent's, as vfs does. The
//! host checks every path and refuses to snapshot or limit anything that is not a subvolume
//! root beneath the home. See `docs/drivers/btrfs.md`.
#![forbid(unsafe_code)]

use strata_driver_sdk::host::{btrfs, files};
use strata_driver_sdk::{
    Driver, DriverInfo, Error, MountPlan, MountRequest, Options, SizeOption, bind_plan, ensure_dir,
    error, read_small_file, remove_bind_target, remove_if_exists, validate_id, write_small_file,
};

/// Where layers live: `subvolumes/ID` is the subvolume of layer ID.
const SUBVOLUMES: &str = "subvolumes";
/// `quotas/ID` holds layer ID's limit in bytes (children inherit it).
const QUOTAS: &str = "quotas";
/// Operator options as `init` received them: later calls run in fresh instances.
const OPTIONS_FILE: &str = ".options";
/// Mode of a base layer's root, as containers/storage gives it.
const EMPTY_ROOT_MODE: u32 = 0o555;
/// The smallest `size=` accepted: btrfs needs room for a subvolume's own metadata.
pub const MIN_SIZE: u64 = 1 << 20;

pub struct Btrfs;

/// `size=` on create, and the operator's default `size` kept in [`OPTIONS_FILE`].
const SIZE: SizeOption = SizeOption {
    min: MIN_SIZE,
    holder: "a btrfs subvolume",
};

fn quota_file(id: &str) -> String {
    format!("{QUOTAS}/{id}")
}

/// The limit recorded for layer `id`, if any.
fn recorded_limit(id: &str) -> Result<Option<u64>, Error> {
    match read_small_file(&quota_file(id))? {
        None => Ok(None),
        Some(text) => text.trim().parse::<u64>().map(Some).map_err(|_| {
            error::invalid_argument(format!(
                "{}: `{}` is not a size",
                quota_file(id),
                text.trim()
            ))
        }),
    }
}

/// Limits the subvolume of `id` to `limit` bytes, turning quotas on where they are off.
fn limit_layer(id: &str, limit: u64) -> Result<(), Error> {
    let subvolume = Btrfs::layer_dir(id);
    match btrfs::set_qgroup_limit(&subvolume, Some(limit)) {
        Err(Error::Unsupported(_)) => {
            strata_driver_sdk::log::info(&format!(
                "turning btrfs quotas on for the filesystem of the home (layer {id} asked for size={limit})"
            ));
            btrfs::enable_quota(&subvolume)?;
            btrfs::set_qgroup_limit(&subvolume, Some(limit))
        }
        other => other,
    }?;
    ensure_dir(QUOTAS, 0o700)?;
    write_small_file(&quota_file(id), &format!("{limit}\n"))
}

impl Driver for Btrfs {
    fn init(options: Options) -> Result<DriverInfo, Error> {
        let default_size = SIZE.parse(&options)?;
        let backing = files::filesystem_type(".")?;
        if backing != files::FilesystemType::Btrfs {
            return Err(error::unsupported(format!(
                "the btrfs driver needs its home on a btrfs filesystem, and this home is on \
                 {backing}; put the store root on btrfs (e.g. mount one at it) or use the \
                 overlay or vfs driver"
            )));
        }
        SIZE.save_default(OPTIONS_FILE, default_size)?;
        ensure_dir(SUBVOLUMES, 0o700)?;
        Ok(DriverInfo {
            name: "btrfs".into(),
            status: Self::status(),
        })
    }

    fn layer_dir(id: &str) -> String {
        format!("{SUBVOLUMES}/{id}")
    }

    fn create(
        id: &str,
        parent: Option<&str>,
        options: Options,
        _read_write: bool,
    ) -> Result<(), Error> {
        validate_id(id)?;
        let asked = SIZE.parse(&options)?;
        let dir = Self::layer_dir(id);
        let inherited = match parent {
            Some(parent) => {
                validate_id(parent)?;
                if !Self::exists(parent) {
                    return Err(error::not_found(format!("parent layer {parent}")));
                }
                btrfs::snapshot(&Self::layer_dir(parent), &dir, false)?;
                recorded_limit(parent)?
            }
            None => {
                btrfs::create_subvolume(&dir)?;
                files::chmod(&dir, EMPTY_ROOT_MODE)?;
                None
            }
        };
        let limit = match asked {
            Some(l) => Some(l),
            None => inherited.or(SIZE.load_default(OPTIONS_FILE)?),
        };
        if let Some(limit) = limit
            && let Err(e) = limit_layer(id, limit)
        {
            // A layer that cannot have the limit asked for is not created.
            let _ = btrfs::delete_subvolume(&dir);
            let _ = remove_if_exists(&quota_file(id));
            return Err(e);
        }
        Ok(())
    }

    fn exists(id: &str) -> bool {
        validate_id(id).is_ok() && btrfs::is_subvolume(&Self::layer_dir(id)).unwrap_or(false)
    }

    fn remove(id: &str) -> Result<(), Error> {
        validate_id(id)?;
        let dir = Self::layer_dir(id);
        match btrfs::is_subvolume(&dir) {
            Ok(true) => btrfs::delete_subvolume(&dir)?,
            // Not a subvolume (never one: a crash before the snapshot): plain removal.
            Ok(false) => remove_if_exists(&dir)?,
            Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        remove_if_exists(&quota_file(id))?;
        remove_bind_target(id)
    }

    fn plan_mount(id: &str, request: MountRequest) -> Result<MountPlan, Error> {
        validate_id(id)?;
        request.options.reject_unknown(&[])?;
        if !Self::exists(id) {
            return Err(error::not_found(format!("layer {id}")));
        }
        bind_plan(&Self::layer_dir(id), id, request.read_only)
    }

    fn unmounted(id: &str) -> Result<(), Error> {
        validate_id(id)?;
        remove_bind_target(id)
    }

    fn status() -> Vec<(String, String)> {
        let backing = files::filesystem_type(".").map_or("unknown", |t| t.as_str());
        let mut status = vec![("Backing Filesystem".to_string(), backing.to_string())];
        if let Ok(Some(size)) = SIZE.load_default(OPTIONS_FILE) {
            status.push(("Default Layer Size".into(), size.to_string()));
        }
        status
    }

    fn metadata(id: &str) -> Result<Vec<(String, String)>, Error> {
        validate_id(id)?;
        let dir = Self::layer_dir(id);
        let info = btrfs::subvolume_info(&dir)?;
        let mut meta = vec![
            ("subvolume".to_string(), dir),
            ("subvolume id".into(), info.id.to_string()),
        ];
        if let Some(limit) = recorded_limit(id)? {
            meta.push(("size".into(), limit.to_string()));
        }
        Ok(meta)
    }
}

strata_driver_sdk::export_driver!(Btrfs);

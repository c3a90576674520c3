//! Strata's vfs driver: every layer is a complete directory tree.
//!
//! A child starts as a copy of its parent (reflinked file by file where the filesystem can,
//! byte copies otherwise), so it works on any filesystem and needs no kernel features beyond
//! bind mounts. It is the slowest driver and the simplest to reason about, which makes it the
//! reference every other driver's conformance is checked against. See `docs/drivers/vfs.md`.
#![forbid(unsafe_code)]

use strata_driver_sdk::host::{copy, files};
use strata_driver_sdk::{
    Driver, DriverInfo, Error, MountPlan, MountRequest, Options, bind_plan, ensure_dir, error,
    remove_bind_target, remove_if_exists, validate_id,
};

/// Where layers live, relative to the driver home: `dir/ID` is layer ID's root.
const LAYERS: &str = "dir";

/// Mode and owner of a layer without parent, as containers/storage gives them.
const EMPTY_ROOT_MODE: u32 = 0o555;

pub struct Vfs;

impl Driver for Vfs {
    fn init(options: Options) -> Result<DriverInfo, Error> {
        options.reject_unknown(&[])?;
        ensure_dir(LAYERS, 0o700)?;
        let backing = files::filesystem_type(LAYERS)?;
        Ok(DriverInfo {
            name: "vfs".into(),
            status: vec![("Backing Filesystem".into(), backing.to_string())],
        })
    }

    fn layer_dir(id: &str) -> String {
        format!("{LAYERS}/{id}")
    }

    fn create(
        id: &str,
        parent: Option<&str>,
        options: Options,
        _read_write: bool,
    ) -> Result<(), Error> {
        validate_id(id)?;
        if options.get("size").is_some() {
            return Err(error::unsupported(
                "vfs cannot limit a layer's size (`size=`); use the btrfs or zfs driver",
            ));
        }
        options.reject_unknown(&[])?;
        let dir = Self::layer_dir(id);
        match parent {
            Some(parent) => {
                validate_id(parent)?;
                copy::copy_tree(
                    &Self::layer_dir(parent),
                    &dir,
                    copy::CopyMode::ReflinkOrCopy,
                )?;
                Ok(())
            }
            None => files::mkdir(&dir, EMPTY_ROOT_MODE, 0, 0),
        }
    }

    fn remove(id: &str) -> Result<(), Error> {
        validate_id(id)?;
        remove_if_exists(&Self::layer_dir(id))?;
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
        let backing = files::filesystem_type(LAYERS).map_or("unknown", |t| t.as_str());
        vec![("Backing Filesystem".into(), backing.to_string())]
    }
}

strata_driver_sdk::export_driver!(Vfs);

//! Strata's zfs driver: every layer is a ZFS dataset, and a child is a clone of a snapshot of
//! its parent, so creating a layer costs the same whatever its parent holds.
//!
//! ```text
//! <fsname>/<store>/               the store's dataset (one per home, named in .dataset)
//! <fsname>/<store>/<id>           layer id: a filesystem holding the layer's whole tree
//! <fsname>/<store>/<parent>@<id>  the snapshot of its parent that layer id was cloned from
//! <home>/layers/<id>/             where the host mounts layer id's dataset for the driver
//! <home>/mnt/<id>/                mount point of the layer (a bind, read-only for views)
//! <home>/.dataset                 the store dataset's name, relative to fsname
//! <home>/.options                 the operator's options as `init` received them
//! ```
//!
//! Dataset names are relative to the operator's parent dataset (`[drivers.zfs] fsname`);
//! the host prefixes it and refuses anything that would leave it. `size=` sets the `quota`
//! property; a child without its own `size=` gets its parent's quota. Removing a layer
//! destroys its dataset and then its origin snapshot when no other clone uses it. Metadata of
//! all layers comes from one `zfs get -r` (`layers-metadata`). See `docs/drivers/zfs.md`.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

use strata_driver_sdk::host::{files, zfs};
use strata_driver_sdk::{
    Driver, DriverInfo, Error, MountPlan, MountRequest, Options, SizeOption, bind_plan, ensure_dir,
    error, read_small_file, remove_bind_target, remove_if_exists, validate_id, write_small_file,
};

/// `layers/ID` is where the host mounts layer ID's dataset for the driver's own work.
const LAYERS: &str = "layers";
/// The store dataset's name (relative to the parent dataset), chosen once by `init`.
const STORE_FILE: &str = ".dataset";
/// Operator options as `init` received them: later calls run in fresh instances.
const OPTIONS_FILE: &str = ".options";
/// Mode of a base layer's root, as containers/storage gives it.
const EMPTY_ROOT_MODE: u32 = 0o555;
/// The smallest `size=` accepted: a dataset needs room for its own metadata.
pub const MIN_SIZE: u64 = 1 << 20;
/// What `metadata` and `layers-metadata` report, read in one query.
const METADATA_PROPERTIES: [&str; 4] = ["origin", "used", "referenced", "quota"];

pub struct Zfs;

/// `size=` on create, and the operator's default `size` kept in [`OPTIONS_FILE`].
const SIZE: SizeOption = SizeOption {
    min: MIN_SIZE,
    holder: "a dataset",
};

/// The store dataset, relative to the parent dataset.
fn store() -> Result<String, Error> {
    read_small_file(STORE_FILE)?
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| error::not_found(format!("{STORE_FILE}: the driver was not initialised")))
}

/// Layer `id`'s dataset, relative to the parent dataset.
fn dataset(id: &str) -> Result<String, Error> {
    validate_id(id)?;
    Ok(format!("{}/{id}", store()?))
}

/// A fresh store dataset name: 64 random bits from WASI (std's hasher keys).
fn new_store_name() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(b"strata zfs store");
    format!("strata-{:016x}", h.finish())
}

/// The quota of `ds` in bytes, `None` when it has none.
fn quota_of(ds: &str) -> Result<Option<u64>, Error> {
    let props = zfs::get_properties(ds, &["quota".to_string()])?;
    let value = props
        .into_iter()
        .find(|(k, _)| k == "quota")
        .map(|(_, v)| v)
        .unwrap_or_default();
    match value.as_str() {
        "" | "0" | "-" | "none" => Ok(None),
        v => v
            .parse::<u64>()
            .map(Some)
            .map_err(|_| error::invalid_argument(format!("{ds}: quota `{v}` is not a number"))),
    }
}

/// The metadata pairs of a layer from its properties (as `zfs get -p` gives them).
fn describe(ds: &str, props: &[(String, String)]) -> Vec<(String, String)> {
    let mut meta = vec![("dataset".to_string(), ds.to_string())];
    for (k, v) in props {
        match k.as_str() {
            "quota" if v == "0" || v == "-" => {}
            "quota" => meta.push(("size".into(), v.clone())),
            "origin" if v == "-" => {}
            _ => meta.push((k.clone(), v.clone())),
        }
    }
    meta
}

fn metadata_names() -> Vec<String> {
    METADATA_PROPERTIES.iter().map(|s| s.to_string()).collect()
}

fn ignore_not_found(r: Result<(), Error>) -> Result<(), Error> {
    match r {
        Err(Error::NotFound(_)) => Ok(()),
        other => other,
    }
}

impl Driver for Zfs {
    fn init(options: Options) -> Result<DriverInfo, Error> {
        let default_size = SIZE.parse(&options)?;
        zfs::info()?;
        match read_small_file(STORE_FILE)? {
            Some(name) if !name.trim().is_empty() => {
                let name = name.trim();
                if let Err(Error::NotFound(_)) = zfs::get_properties(name, &["type".into()]) {
                    strata_driver_sdk::log::warn(&format!(
                        "the store dataset {name} is gone (destroyed by hand?); creating it \
                         again empty"
                    ));
                    zfs::create(name, &[])?;
                }
            }
            _ => {
                let name = new_store_name();
                zfs::create(&name, &[])?;
                write_small_file(STORE_FILE, &format!("{name}\n"))?;
            }
        }
        SIZE.save_default(OPTIONS_FILE, default_size)?;
        ensure_dir(LAYERS, 0o700)?;
        Ok(DriverInfo {
            name: "zfs".into(),
            status: Self::status(),
        })
    }

    fn layer_dir(id: &str) -> String {
        format!("{LAYERS}/{id}")
    }

    /// Mounts the layer's dataset at `layers/ID` unless it is mounted there already (after
    /// a reboot nothing is).
    fn open_layer_dir(id: &str) -> Result<(), Error> {
        let ds = dataset(id)?;
        let dir = Self::layer_dir(id);
        ensure_dir(&dir, 0o700)?;
        match zfs::mount(&ds, &dir) {
            Ok(()) | Err(Error::AlreadyExists(_)) => Ok(()),
            Err(Error::NotFound(m)) => Err(error::not_found(format!("layer {id}: {m}"))),
            Err(e) => Err(e),
        }
    }

    fn create(
        id: &str,
        parent: Option<&str>,
        options: Options,
        _read_write: bool,
    ) -> Result<(), Error> {
        let asked = SIZE.parse(&options)?;
        let ds = dataset(id)?;
        let mut origin = None;
        let inherited = match parent {
            Some(parent) => {
                let parent_ds = dataset(parent)?;
                let inherited = match quota_of(&parent_ds) {
                    Err(Error::NotFound(_)) => {
                        return Err(error::not_found(format!("parent layer {parent}")));
                    }
                    other => other?,
                };
                let snapshot = format!("{parent_ds}@{id}");
                zfs::snapshot(&snapshot)?;
                origin = Some(snapshot);
                inherited
            }
            None => None,
        };
        let limit = match asked {
            Some(l) => Some(l),
            None => inherited.or(SIZE.load_default(OPTIONS_FILE)?),
        };
        let props: Vec<(String, String)> = limit
            .map(|l| ("quota".to_string(), l.to_string()))
            .into_iter()
            .collect();
        let made = match &origin {
            Some(snapshot) => zfs::clone_snapshot(snapshot, &ds, &props),
            None => zfs::create(&ds, &props),
        };
        if let Err(e) = made {
            if let Some(snapshot) = &origin {
                let _ = zfs::destroy(snapshot, false);
            }
            return Err(e);
        }
        let ready = Self::open_layer_dir(id).and_then(|()| match parent {
            None => files::chmod(&Self::layer_dir(id), EMPTY_ROOT_MODE),
            Some(_) => Ok(()),
        });
        if let Err(e) = ready {
            // A layer that cannot be mounted is not created.
            let _ = Self::remove(id);
            return Err(e);
        }
        Ok(())
    }

    fn exists(id: &str) -> bool {
        dataset(id).is_ok_and(|ds| zfs::get_properties(&ds, &["type".into()]).is_ok())
    }

    fn remove(id: &str) -> Result<(), Error> {
        let ds = dataset(id)?;
        let dir = Self::layer_dir(id);
        match zfs::unmount(&dir) {
            Ok(()) | Err(Error::NotFound(_)) | Err(Error::InvalidArgument(_)) => {}
            Err(e) => return Err(e),
        }
        // One query for the whole store: this layer's origin, the snapshot taken for it (a
        // crash can leave one without its clone), and which snapshots other layers use.
        let listed = zfs::list_datasets(Some(&store()?), &["origin".into()], None)?;
        let origin_of = |name: &str| -> Option<String> {
            listed
                .iter()
                .find(|d| d.name == name)
                .and_then(|d| d.properties.first())
                .map(|(_, v)| v.clone())
                .filter(|v| v != "-")
        };
        let suffix = format!("@{id}");
        let mut snapshots: Vec<String> = listed
            .iter()
            .filter(|d| d.name.ends_with(&suffix))
            .map(|d| d.name.clone())
            .collect();
        if let Some(o) = origin_of(&ds)
            && !snapshots.contains(&o)
        {
            snapshots.push(o);
        }
        ignore_not_found(zfs::destroy(&ds, true))?;
        for snapshot in snapshots {
            let still_used = listed
                .iter()
                .filter(|d| d.name != ds && !d.name.contains('@'))
                .any(|d| d.properties.first().is_some_and(|(_, v)| *v == snapshot));
            if !still_used {
                ignore_not_found(zfs::destroy(&snapshot, false))?;
            }
        }
        remove_if_exists(&dir)?;
        remove_bind_target(id)
    }

    fn plan_mount(id: &str, request: MountRequest) -> Result<MountPlan, Error> {
        request.options.reject_unknown(&[])?;
        Self::open_layer_dir(id)?;
        bind_plan(&Self::layer_dir(id), id, request.read_only)
    }

    fn unmounted(id: &str) -> Result<(), Error> {
        validate_id(id)?;
        remove_bind_target(id)
    }

    fn status() -> Vec<(String, String)> {
        let mut status = Vec::new();
        match zfs::info() {
            Ok(info) => {
                let backend = match info.backend {
                    zfs::Backend::Kernel => "kernel ZFS",
                    zfs::Backend::Fuse => "zfs-fuse",
                    _ => "another ZFS",
                };
                status.push(("Backend".to_string(), backend.to_string()));
                let store = store().unwrap_or_default();
                status.push(("Parent Dataset".into(), info.parent.clone()));
                status.push(("Store Dataset".into(), format!("{}/{store}", info.parent)));
            }
            Err(e) => status.push(("Backend".into(), format!("unavailable: {}", e.message()))),
        }
        if let Ok(Some(size)) = SIZE.load_default(OPTIONS_FILE) {
            status.push(("Default Layer Size".into(), size.to_string()));
        }
        status
    }

    fn metadata(id: &str) -> Result<Vec<(String, String)>, Error> {
        let ds = dataset(id)?;
        let props = zfs::get_properties(&ds, &metadata_names())?;
        Ok(describe(&ds, &props))
    }

    /// One `zfs get -r -d 1` over the store dataset answers for every layer.
    fn layers_metadata(ids: &[String]) -> Vec<Result<Vec<(String, String)>, Error>> {
        // Depth 1: the layer datasets without their snapshots.
        let listed = store().and_then(|s| zfs::list_datasets(Some(&s), &metadata_names(), Some(1)));
        let listed = match listed {
            Ok(l) => l,
            Err(e) => return ids.iter().map(|_| Err(e.clone())).collect(),
        };
        let by_name: HashMap<&str, &[(String, String)]> = listed
            .iter()
            .map(|d| (d.name.as_str(), d.properties.as_slice()))
            .collect();
        let Ok(store) = store() else {
            return ids
                .iter()
                .map(|_| Err(error::not_found(STORE_FILE)))
                .collect();
        };
        ids.iter()
            .map(|id| {
                validate_id(id)?;
                let ds = format!("{store}/{id}");
                by_name
                    .get(ds.as_str())
                    .map(|props| describe(&ds, props))
                    .ok_or_else(|| error::not_found(format!("layer {id}: dataset {ds}")))
            })
            .collect()
    }
}

strata_driver_sdk::export_driver!(Zfs);

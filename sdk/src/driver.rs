//! The [`Driver`] trait and the [`export_driver!`](crate::export_driver) macro.

use crate::host::archive;
use crate::{
    Change, DriverInfo, Error, LayerDiff, MountPlan, MountRequest, Options, WhiteoutFormat,
};

/// A storage driver: the policy half of a layer store.
///
/// Methods are associated functions (no `self`) because every call runs in a fresh
/// instance; state lives in the driver's home directory. Ids are opaque strings the host has
/// validated (`[A-Za-z0-9][A-Za-z0-9_.-]*`, at most [`MAX_ID_LEN`](crate::MAX_ID_LEN) bytes);
/// validating them again with [`validate_id`](crate::validate_id) costs nothing.
///
/// The defaults for `apply_diff`, `diff`, `changes` and `diff_size` treat
/// [`layer_dir`](Driver::layer_dir) as a full tree of the layer (as vfs, btrfs and zfs keep
/// it) and let the host's archive interface do the work; a driver that stores only each
/// layer's own changes (overlay) overrides them.
pub trait Driver {
    /// Prepares the home and probes the host; runs once per host start, before any other call.
    fn init(options: Options) -> Result<DriverInfo, Error>;

    /// The directory, relative to the home, holding layer `id`'s files.
    fn layer_dir(id: &str) -> String;

    /// Makes [`layer_dir`](Driver::layer_dir) of `id` usable before the default
    /// `apply_diff`, `diff`, `changes` and `diff_size` read or write it (zfs mounts the
    /// layer's dataset there). Nothing by default.
    fn open_layer_dir(_id: &str) -> Result<(), Error> {
        Ok(())
    }

    /// Creates layer `id`, empty or as a child of `parent`. `read_write` is true for a
    /// container layer (`create-rw`).
    fn create(
        id: &str,
        parent: Option<&str>,
        options: Options,
        read_write: bool,
    ) -> Result<(), Error>;

    /// Removes layer `id` and everything the driver keeps for it. Removing a layer that has
    /// no data (a creation that crashed early) must succeed.
    fn remove(id: &str) -> Result<(), Error>;

    /// Whether the driver holds data for layer `id`.
    fn exists(id: &str) -> bool {
        crate::exists(&Self::layer_dir(id))
    }

    /// How to mount layer `id`. The host validates the plan, then mounts it.
    fn plan_mount(id: &str, request: MountRequest) -> Result<MountPlan, Error>;

    /// Called after the host unmounted layer `id` for the last time.
    fn unmounted(_id: &str) -> Result<(), Error> {
        Ok(())
    }

    /// Applies a layer tar onto layer `id`; returns the bytes of file content written.
    fn apply_diff(id: &str, _parent: Option<&str>, diff: &LayerDiff) -> Result<u64, Error> {
        Self::open_layer_dir(id)?;
        archive::apply(diff, &Self::layer_dir(id), WhiteoutFormat::Delete).map(|s| s.size)
    }

    /// Layer `id`'s changes against `parent` as a tar with `.wh.` whiteouts.
    fn diff(id: &str, parent: Option<&str>) -> Result<LayerDiff, Error> {
        open_pair::<Self>(id, parent)?;
        let parent_dir = parent.map(Self::layer_dir);
        archive::diff_trees(&Self::layer_dir(id), parent_dir.as_deref())
    }

    /// Layer `id`'s changes against `parent`.
    fn changes(id: &str, parent: Option<&str>) -> Result<Vec<Change>, Error> {
        open_pair::<Self>(id, parent)?;
        let parent_dir = parent.map(Self::layer_dir);
        archive::changes(&Self::layer_dir(id), parent_dir.as_deref())
    }

    /// Bytes of regular files added or modified against `parent`.
    fn diff_size(id: &str, parent: Option<&str>) -> Result<u64, Error> {
        open_pair::<Self>(id, parent)?;
        let parent_dir = parent.map(Self::layer_dir);
        archive::diff_size(&Self::layer_dir(id), parent_dir.as_deref())
    }

    /// Status lines for `strata status`.
    fn status() -> Vec<(String, String)> {
        Vec::new()
    }

    /// Driver-specific facts about layer `id`, for `strata layer inspect`.
    fn metadata(id: &str) -> Result<Vec<(String, String)>, Error> {
        Ok(vec![("dir".to_string(), Self::layer_dir(id))])
    }

    /// `metadata` of many layers (`strata layer ls --json`), one answer per id in order.
    /// A driver whose metadata comes from one query for all layers overrides this.
    fn layers_metadata(ids: &[String]) -> Vec<Result<Vec<(String, String)>, Error>> {
        ids.iter().map(|id| Self::metadata(id)).collect()
    }

    /// Called when the host shuts the store down.
    fn cleanup() -> Result<(), Error> {
        Ok(())
    }
}

fn open_pair<D: Driver + ?Sized>(id: &str, parent: Option<&str>) -> Result<(), Error> {
    D::open_layer_dir(id)?;
    match parent {
        Some(p) => D::open_layer_dir(p),
        None => Ok(()),
    }
}

/// Exports a [`Driver`] implementation as the component's `strata:driver/driver` interface.
///
/// Use it once, at the crate root of a `cdylib`: `strata_driver_sdk::export_driver!(MyDriver);`
#[macro_export]
macro_rules! export_driver {
    ($driver:ident) => {
        const _: () = {
            use $crate::bindings::exports::strata::driver::driver as __wit;

            impl __wit::Guest for $driver {
                fn init(
                    options: ::std::vec::Vec<(String, String)>,
                ) -> Result<__wit::DriverInfo, $crate::Error> {
                    <$driver as $crate::Driver>::init($crate::Options(options))
                }
                fn create(
                    id: String,
                    parent: Option<String>,
                    options: ::std::vec::Vec<(String, String)>,
                ) -> Result<(), $crate::Error> {
                    <$driver as $crate::Driver>::create(
                        &id,
                        parent.as_deref(),
                        $crate::Options(options),
                        false,
                    )
                }
                fn create_rw(
                    id: String,
                    parent: Option<String>,
                    options: ::std::vec::Vec<(String, String)>,
                ) -> Result<(), $crate::Error> {
                    <$driver as $crate::Driver>::create(
                        &id,
                        parent.as_deref(),
                        $crate::Options(options),
                        true,
                    )
                }
                fn remove(id: String) -> Result<(), $crate::Error> {
                    <$driver as $crate::Driver>::remove(&id)
                }
                fn exists(id: String) -> bool {
                    <$driver as $crate::Driver>::exists(&id)
                }
                fn plan_mount(
                    id: String,
                    request: __wit::MountRequest,
                ) -> Result<__wit::MountPlan, $crate::Error> {
                    <$driver as $crate::Driver>::plan_mount(&id, request)
                }
                fn unmounted(id: String) -> Result<(), $crate::Error> {
                    <$driver as $crate::Driver>::unmounted(&id)
                }
                fn apply_diff(
                    id: String,
                    parent: Option<String>,
                    diff: &$crate::LayerDiff,
                ) -> Result<u64, $crate::Error> {
                    <$driver as $crate::Driver>::apply_diff(&id, parent.as_deref(), diff)
                }
                fn diff(
                    id: String,
                    parent: Option<String>,
                ) -> Result<$crate::LayerDiff, $crate::Error> {
                    <$driver as $crate::Driver>::diff(&id, parent.as_deref())
                }
                fn changes(
                    id: String,
                    parent: Option<String>,
                ) -> Result<::std::vec::Vec<$crate::Change>, $crate::Error> {
                    <$driver as $crate::Driver>::changes(&id, parent.as_deref())
                }
                fn diff_size(id: String, parent: Option<String>) -> Result<u64, $crate::Error> {
                    <$driver as $crate::Driver>::diff_size(&id, parent.as_deref())
                }
                fn status() -> ::std::vec::Vec<(String, String)> {
                    <$driver as $crate::Driver>::status()
                }
                fn metadata(
                    id: String,
                ) -> Result<::std::vec::Vec<(String, String)>, $crate::Error> {
                    <$driver as $crate::Driver>::metadata(&id)
                }
                fn layers_metadata(
                    ids: ::std::vec::Vec<String>,
                ) -> ::std::vec::Vec<Result<::std::vec::Vec<(String, String)>, $crate::Error>>
                {
                    <$driver as $crate::Driver>::layers_metadata(&ids)
                }
                fn cleanup() -> Result<(), $crate::Error> {
                    <$driver as $crate::Driver>::cleanup()
                }
            }

    $crate::bindings::__export_strata_driver!($driver with_types_in $crate::bindings);
        };
    };
}

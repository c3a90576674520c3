//! The [`Driver`] trait and the [`export_driver!`](crate::export_driver) macro.

use crate::host::archive;
use crate::{
    Change, DriverInfo, Error, IncomingDiff, LayerDiff, MountPlan, MountRequest, Options,
    WhiteoutFormat,
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
    /// container layer.
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
    fn apply_diff(id: &str, _parent: Option<&str>, diff: IncomingDiff<'_>) -> Result<u64, Error> {
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
}

fn open_pair<D: Driver + ?Sized>(id: &str, parent: Option<&str>) -> Result<(), Error> {
    D::open_layer_dir(id)?;
    match parent {
        Some(p) => D::open_layer_dir(p),
        None => Ok(()),
    }
}

/// The glue [`export_driver!`](crate::export_driver) expands to: each export of the contract
/// converted from the bindings to the SDK's types, the [`Driver`] called, and its answer
/// converted back. Not for drivers to call.
#[doc(hidden)]
pub mod __private {
    use super::Driver;
    use crate::bindings::exports::strata::driver::driver as wit;
    use crate::bindings::strata::driver::types as wit_types;
    use crate::{IncomingDiff, Options};

    type R<T> = Result<T, wit_types::Error>;

    pub fn init<D: Driver>(options: Vec<(String, String)>) -> R<wit::DriverInfo> {
        D::init(Options(options))
            .map(Into::into)
            .map_err(Into::into)
    }

    pub fn create<D: Driver>(
        id: String,
        parent: Option<String>,
        read_write: bool,
        options: Vec<(String, String)>,
    ) -> R<()> {
        D::create(&id, parent.as_deref(), Options(options), read_write).map_err(Into::into)
    }

    pub fn remove<D: Driver>(id: String) -> R<()> {
        D::remove(&id).map_err(Into::into)
    }

    pub fn exists<D: Driver>(id: String) -> bool {
        D::exists(&id)
    }

    pub fn plan_mount<D: Driver>(id: String, request: wit::MountRequest) -> R<wit::MountPlan> {
        D::plan_mount(&id, request.into())
            .map(Into::into)
            .map_err(Into::into)
    }

    pub fn unmounted<D: Driver>(id: String) -> R<()> {
        D::unmounted(&id).map_err(Into::into)
    }

    pub fn apply_diff<D: Driver>(
        id: String,
        parent: Option<String>,
        diff: &wit_types::LayerDiff,
    ) -> R<u64> {
        D::apply_diff(&id, parent.as_deref(), IncomingDiff::__from_bindings(diff))
            .map_err(Into::into)
    }

    pub fn diff<D: Driver>(id: String, parent: Option<String>) -> R<wit_types::LayerDiff> {
        D::diff(&id, parent.as_deref())
            .map(|d| d.0)
            .map_err(Into::into)
    }

    pub fn changes<D: Driver>(id: String, parent: Option<String>) -> R<Vec<wit_types::Change>> {
        D::changes(&id, parent.as_deref())
            .map(|c| c.into_iter().map(Into::into).collect())
            .map_err(Into::into)
    }

    pub fn diff_size<D: Driver>(id: String, parent: Option<String>) -> R<u64> {
        D::diff_size(&id, parent.as_deref()).map_err(Into::into)
    }

    pub fn status<D: Driver>() -> Vec<(String, String)> {
        D::status()
    }

    pub fn metadata<D: Driver>(id: String) -> R<Vec<(String, String)>> {
        D::metadata(&id).map_err(Into::into)
    }

    pub fn layers_metadata<D: Driver>(ids: Vec<String>) -> Vec<R<Vec<(String, String)>>> {
        D::layers_metadata(&ids)
            .into_iter()
            .map(|r| r.map_err(Into::into))
            .collect()
    }
}

/// Exports a [`Driver`] implementation as the component's `strata:driver/driver` interface.
///
/// Use it once, at the crate root of a `cdylib`: `strata_driver_sdk::export_driver!(MyDriver);`
/// On targets other than wasm32 the implementation is type-checked but nothing is exported
/// (so a driver's code and the SDK's doc tests compile and link natively).
#[macro_export]
macro_rules! export_driver {
    ($driver:ident) => {
        const _: () = {
            use $crate::__private as __p;
            use $crate::bindings::exports::strata::driver::driver as __wit;
            use $crate::bindings::strata::driver::types as __types;
            type __R<T> = ::core::result::Result<T, __types::Error>;
            type __Pairs = ::std::vec::Vec<(::std::string::String, ::std::string::String)>;

            impl __wit::Guest for $driver {
                fn init(options: __Pairs) -> __R<__wit::DriverInfo> {
                    __p::init::<$driver>(options)
                }
                fn create(
                    id: ::std::string::String,
                    parent: ::core::option::Option<::std::string::String>,
                    read_write: bool,
                    options: __Pairs,
                ) -> __R<()> {
                    __p::create::<$driver>(id, parent, read_write, options)
                }
                fn remove(id: ::std::string::String) -> __R<()> {
                    __p::remove::<$driver>(id)
                }
                fn exists(id: ::std::string::String) -> bool {
                    __p::exists::<$driver>(id)
                }
                fn plan_mount(
                    id: ::std::string::String,
                    request: __wit::MountRequest,
                ) -> __R<__wit::MountPlan> {
                    __p::plan_mount::<$driver>(id, request)
                }
                fn unmounted(id: ::std::string::String) -> __R<()> {
                    __p::unmounted::<$driver>(id)
                }
                fn apply_diff(
                    id: ::std::string::String,
                    parent: ::core::option::Option<::std::string::String>,
                    diff: &__types::LayerDiff,
                ) -> __R<u64> {
                    __p::apply_diff::<$driver>(id, parent, diff)
                }
                fn diff(
                    id: ::std::string::String,
                    parent: ::core::option::Option<::std::string::String>,
                ) -> __R<__types::LayerDiff> {
                    __p::diff::<$driver>(id, parent)
                }
                fn changes(
                    id: ::std::string::String,
                    parent: ::core::option::Option<::std::string::String>,
                ) -> __R<::std::vec::Vec<__types::Change>> {
                    __p::changes::<$driver>(id, parent)
                }
                fn diff_size(
                    id: ::std::string::String,
                    parent: ::core::option::Option<::std::string::String>,
                ) -> __R<u64> {
                    __p::diff_size::<$driver>(id, parent)
                }
                fn status() -> __Pairs {
                    __p::status::<$driver>()
                }
                fn metadata(id: ::std::string::String) -> __R<__Pairs> {
                    __p::metadata::<$driver>(id)
                }
                fn layers_metadata(
                    ids: ::std::vec::Vec<::std::string::String>,
                ) -> ::std::vec::Vec<__R<__Pairs>> {
                    __p::layers_metadata::<$driver>(ids)
                }
            }

            #[cfg(target_arch = "wasm32")]
    $crate::bindings::__export_strata_driver!($driver with_types_in $crate::bindings);
        };
    };
}

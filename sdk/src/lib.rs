//! # strata-driver-sdk: write a Strata storage driver in Rust
//!
//! A Strata driver is a WebAssembly component (`wasm32-wasip2`) that decides layering
//! *policy* — where a layer lives in the driver's home, what to copy or snapshot, how to
//! mount it — while the Strata host performs every privileged syscall on its behalf and
//! checks each request against the driver's sandbox first. This crate gives you:
//!
//! - the [`Driver`] trait, one method per driver operation, with defaults where sensible
//!   (full-tree diffs computed by the host's archive interface);
//! - [`export_driver!`], which turns a type implementing [`Driver`] into the component's
//!   exports;
//! - the host interfaces a driver may import ([`host`]), each a capability the operator
//!   grants in config (`[drivers.NAME] grants`); a driver that calls an ungranted one fails to
//!   load with a message naming it;
//! - helpers drivers share: [`Options`], [`error`] constructors, [`validate_id`], [`log`].
//!
//! ## The contract it targets
//!
//! This SDK builds drivers against contract [`WIT_PACKAGE`] (`strata:driver@0.2.0`); the
//! crate carries its own copy of that WIT in `wit/strata-driver.wit`, where every limit a
//! driver can hit is written. The types a driver sees ([`Error`], [`MountPlan`],
//! [`host::files::FileStat`], ...) are the SDK's own, converted to and from the generated
//! bindings, so a driver's code survives a contract change wherever the SDK can absorb it.
//! Enums a later contract may extend are `#[non_exhaustive]`. Strata's `docs/contract.md`
//! has the versioning rules and the move from 0.1.
//!
//! ## A complete minimal driver
//!
//! ```no_run
//! #![forbid(unsafe_code)]
//! use strata_driver_sdk::host::{copy, files};
//! use strata_driver_sdk::{Driver, DriverInfo, Error, MountPlan, MountRequest, Options};
//!
//! pub struct Plain;
//!
//! impl Driver for Plain {
//!     fn init(options: Options) -> Result<DriverInfo, Error> {
//!         options.reject_unknown(&[])?;
//!         strata_driver_sdk::ensure_dir("layers", 0o700)?;
//!         let backing = files::filesystem_type("layers")?;
//!         Ok(DriverInfo {
//!             name: "plain".into(),
//!             status: vec![("Backing Filesystem".into(), backing.to_string())],
//!         })
//!     }
//!     fn layer_dir(id: &str) -> String {
//!         format!("layers/{id}")
//!     }
//!     fn create(id: &str, parent: Option<&str>, options: Options, _rw: bool) -> Result<(), Error> {
//!         strata_driver_sdk::validate_id(id)?;
//!         options.reject_unknown(&[])?;
//!         match parent {
//!             Some(p) => copy::copy_tree(&Self::layer_dir(p), &Self::layer_dir(id),
//!                                        copy::CopyMode::ReflinkOrCopy).map(|_| ()),
//!             None => files::mkdir(&Self::layer_dir(id), 0o555, 0, 0),
//!         }
//!     }
//!     fn remove(id: &str) -> Result<(), Error> {
//!         strata_driver_sdk::validate_id(id)?;
//!         strata_driver_sdk::remove_if_exists(&Self::layer_dir(id))?;
//!         strata_driver_sdk::remove_bind_target(id)
//!     }
//!     fn plan_mount(id: &str, request: MountRequest) -> Result<MountPlan, Error> {
//!         request.options.reject_unknown(&[])?;
//!         strata_driver_sdk::bind_plan(&Self::layer_dir(id), id, request.read_only)
//!     }
//!     fn unmounted(id: &str) -> Result<(), Error> {
//!         strata_driver_sdk::remove_bind_target(id)
//!     }
//! }
//!
//! strata_driver_sdk::export_driver!(Plain);
//! # fn main() {}
//! ```
//!
//! This example is a doc test: it compiles with every build of the SDK's tests (natively,
//! where [`export_driver!`] type-checks the driver and exports nothing; `no_run` because
//! the host functions exist only inside a Strata host).
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (crate type `cdylib`), then
//! use it by path: `strata --driver target/wasm32-wasip2/release/plain.wasm layer create`.
//!
//! ## Hold it to the conformance suite
//!
//! Before you ship the `.wasm`, run the same suite every first-party driver passes in
//! Strata's CI (as root: it mounts layers, makes device nodes and changes owners):
//!
//! ```text
//! sudo strata driver test target/wasm32-wasip2/release/plain.wasm
//! sudo strata driver test plain.wasm --case diff-apply --case echo/   # some cases
//! sudo strata --json driver test plain.wasm > report.json             # for CI
//! strata driver test --list                                           # the case names
//! ```
//!
//! Each case runs in a fresh store under `--scratch DIR` (default `/var/tmp`; put it on the
//! filesystem your driver is for), prints `ok` or `FAIL` with the path, what was expected
//! and what was found, and the command exits non-zero when any case fails. Grants and
//! limits come from your config's `[drivers.NAME]` section, driver options from
//! `--driver-opt`. The cases are listed in `docs/conformance.md`. Two rules the suite holds
//! every driver to: an option the driver does not know is `invalid-argument`, and `size=`
//! on a driver without quotas is `unsupported` ([`Options::reject_unknown`] does both).
//!
//! ## The sandbox, from the driver's side
//! - Every call runs in a fresh instance: keep state in your home directory, not in statics.
//! - Paths given to host interfaces are relative to your home. `..`, absolute paths and
//!   symlinks that leave the home are answered with [`Error::Denied`].
//! - Each call has a memory limit and a deadline on guest execution (host calls do not count
//!   against it). A panic, a trap or a timeout fails that one call; the host carries on.
//! - Layer bytes never pass through your memory: a [`LayerDiff`] is a host handle you hand to
//!   [`host::archive`].
//!
//! ## Safety
//! The driver-facing API is safe Rust; drivers should be `#![forbid(unsafe_code)]`. The only
//! `unsafe` in this crate is the ABI glue that `wit-bindgen` generates in [`bindings`].

#![deny(unsafe_code)]

// Lets the generated code name this crate the way driver crates do.
extern crate self as strata_driver_sdk;

/// Bindings generated by `wit-bindgen` from this crate's `wit/strata-driver.wit`. Drivers
/// need not name them: the SDK's own types and [`host`] functions wrap them.
#[allow(unsafe_code, missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "strata-driver",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__export_strata_driver",
        default_bindings_module: "strata_driver_sdk::bindings",
        runtime_path: "strata_driver_sdk::wit_bindgen::rt",
    });
}

pub use wit_bindgen;

/// The WIT package this SDK builds drivers against.
pub const WIT_PACKAGE: &str = "strata:driver@0.2.0";

pub mod host;

mod types;
pub use types::{
    BindMount, Change, ChangeKind, DriverInfo, Error, IncomingDiff, IoError, LayerDiff, MountKind,
    MountPlan, MountRequest, OverlayMount, OverlayOption, RedirectDir, Timestamp, WhiteoutFormat,
    Xino,
};

mod options;
pub use options::{GENERIC_OPTIONS, Options, SizeOption, parse_size};

pub mod error;
pub mod log;

mod driver;
#[doc(hidden)]
pub use driver::__private;
pub use driver::Driver;

mod helpers;
pub use helpers::{
    MAX_ID_LEN, MAX_SMALL_FILE, bind_plan, bind_target, ensure_dir, exists, read_small_file,
    remove_bind_target, remove_if_exists, validate_id, write_small_file,
};

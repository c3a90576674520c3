//! A deliberately broken driver: a plain full-tree driver whose `apply-diff` forgets
//! whiteouts (it keeps `.wh.NAME` as an overlay whiteout device instead of deleting NAME).
//! Everything else is correct, so the conformance suite must fail it on exactly the cases
//! that apply diffs with deletions, and name them.
#![forbid(unsafe_code)]

use strata_driver_sdk::host::{archive, copy, files};
use strata_driver_sdk::{
    Driver, DriverInfo, Error, IncomingDiff, MountPlan, MountRequest, Options, WhiteoutFormat,
    bind_plan, ensure_dir, remove_bind_target, remove_if_exists, validate_id,
};

pub struct Forgetful;

impl Driver for Forgetful {
    fn init(options: Options) -> Result<DriverInfo, Error> {
        options.reject_unknown(&[])?;
        ensure_dir("layers", 0o700)?;
        Ok(DriverInfo {
            name: "forgetful".into(),
            status: vec![],
        })
    }

    fn layer_dir(id: &str) -> String {
        format!("layers/{id}")
    }

    fn create(
        id: &str,
        parent: Option<&str>,
        options: Options,
        _read_write: bool,
    ) -> Result<(), Error> {
        validate_id(id)?;
        options.reject_unknown(&[])?;
        match parent {
            Some(p) => copy::copy_tree(
                &Self::layer_dir(p),
                &Self::layer_dir(id),
                copy::CopyMode::ReflinkOrCopy,
            )
            .map(|_| ()),
            None => files::mkdir(&Self::layer_dir(id), 0o555, 0, 0),
        }
    }

    fn remove(id: &str) -> Result<(), Error> {
        validate_id(id)?;
        remove_if_exists(&Self::layer_dir(id))?;
        remove_bind_target(id)
    }

    fn plan_mount(id: &str, request: MountRequest) -> Result<MountPlan, Error> {
        validate_id(id)?;
        bind_plan(&Self::layer_dir(id), id, request.read_only)
    }

    fn apply_diff(id: &str, _parent: Option<&str>, diff: IncomingDiff<'_>) -> Result<u64, Error> {
        // The bug: overlay's whiteout format on a layout where layers are full trees.
        archive::apply(diff, &Self::layer_dir(id), WhiteoutFormat::OverlayTrusted).map(|s| s.size)
    }
}

strata_driver_sdk::export_driver!(Forgetful);

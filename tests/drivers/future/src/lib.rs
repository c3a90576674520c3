//! A driver built for contract `strata:driver@0.9.0`, a version no Strata host speaks yet.
//! Test-only: loading it must fail with the sentence naming the versions the host speaks and
//! this one, never with wasmtime's import error. It carries its own WIT (`wit/`), as any
//! driver built without the SDK does, and imports `log` of that version too.
#![deny(unsafe_code)]

/// The generated bindings and the export glue: the only `unsafe` here, all generated.
#[allow(unsafe_code, missing_docs, clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        world: "strata-driver",
        path: "wit",
    });

    #[cfg(target_arch = "wasm32")]
    use super::Future;
    #[cfg(target_arch = "wasm32")]
    export!(Future with_types_in self);
}

use bindings::exports::strata::driver::driver::Guest;
use bindings::strata::driver::log::{Level, log};
use bindings::strata::driver::types::Error;

pub struct Future;

impl Guest for Future {
    fn init(_options: Vec<(String, String)>) -> Result<String, Error> {
        log(Level::Warn, "a driver of contract 0.9 was loaded");
        Ok("future".into())
    }
}

//! Mapping compiled driver code from the component cache.
//!
//! This is `unsafe` in wasmtime because a serialized component is native code: loading
//! attacker-controlled bytes would run them. The host therefore never loads artifacts from
//! driver authors; it only maps what it compiled itself into its own root-owned cache.

use std::path::Path;

use wasmtime::Engine;
use wasmtime::component::Component;

/// Loads a component that [`crate::sandbox::ComponentCache`] compiled and wrote.
pub fn load_cached_component(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: `path` is an entry of the host's component cache: a directory created 0700 by
    // the host, entries written 0600 by the host from `Component::serialize` and renamed into
    // place, keyed by the engine's compatibility hash. wasmtime additionally rejects artifacts
    // from another version or configuration with an error.
    unsafe { Component::deserialize_file(engine, path) }
}

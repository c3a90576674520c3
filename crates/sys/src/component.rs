//! Mapping compiled driver code from the component cache.
//!
//! This is `unsafe` in wasmtime because a serialized component is native code: loading
//! attacker-controlled bytes would run them. The host therefore never loads artifacts from
//! driver authors; it only maps what it compiled itself, and only bytes whose SHA-256 matches
//! the digest it recorded when it wrote them (checked by `strata_sandbox::ComponentCache`
//! on the very bytes handed here, so nothing can swap the file between check and use).
// Mapping native code wasmtime compiled earlier (`Component::deserialize_file`) is unsafe:
// only files whose digest the cache recorded are loaded.
#![allow(unsafe_code)]

use wasmtime::Engine;
use wasmtime::component::Component;

/// A compiled component read from the host's cache whose bytes matched their recorded
/// digest. Only `strata_sandbox::ComponentCache` makes these.
pub struct VerifiedArtifact<'a> {
    bytes: &'a [u8],
}

impl<'a> VerifiedArtifact<'a> {
    /// `bytes` must be an artifact the host serialized itself, verified against the digest
    /// it recorded in its own (host-only) cache directory.
    pub fn new_checked(bytes: &'a [u8]) -> Self {
        VerifiedArtifact { bytes }
    }
}

/// Loads a component that `strata_sandbox::ComponentCache` compiled, wrote and verified.
pub fn load_cached_component(
    engine: &Engine,
    artifact: VerifiedArtifact<'_>,
) -> wasmtime::Result<Component> {
    // SAFETY: `artifact` holds bytes read from the host's component cache (a directory the
    // host created 0700, outside every driver home, owned by the host's user) whose SHA-256
    // equals the digest the host recorded when it wrote them from `Component::serialize`;
    // the bytes are in the host's memory, so the checked bytes are the loaded bytes. wasmtime
    // additionally rejects artifacts from another version or configuration with an error.
    unsafe { Component::deserialize(engine, artifact.bytes) }
}

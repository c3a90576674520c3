//! Strata's host binary: the `strata` CLI and daemon, wiring the crates together.
//!
//! The crates follow the trust domains (see docs/architecture.md): `strata-sys` (syscalls,
//! the only `unsafe`), `strata-core` (store, layers, mounts, archives, images),
//! `strata-sandbox` (wasmtime and the driver contract), `strata-conformance` (the suite),
//! `strata-containerd` (the containerd front end). This crate is the command line on top.
#![forbid(unsafe_code)]

pub mod frontend;

pub(crate) use strata_conformance as conformance;
pub(crate) use strata_containerd as containerd;
pub(crate) use strata_core::{config, contract, image, layers, paths, registry, text};
pub(crate) use strata_sandbox as sandbox;
pub(crate) use strata_sys as sys;

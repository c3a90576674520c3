//! Fuzz target `mount_plan`: see [`strata_fuzz::mount_plan`] and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_fuzz::mount_plan::run(data));

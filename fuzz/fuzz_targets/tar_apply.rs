//! Fuzz target `tar_apply`: see [`strata_fuzz::tar_apply`] and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_fuzz::tar_apply::run(data));

//! Fuzz target `tar_reader`: see [`strata_fuzz::tar_reader`] and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_fuzz::tar_reader::run(data));

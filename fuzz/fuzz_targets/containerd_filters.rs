//! Fuzz target `containerd_filters`: see [`strata_fuzz::containerd_filters`] and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_fuzz::containerd_filters::run(data));

//! Fuzz target `oci_image`: see [`strata_fuzz::oci_image`] and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_fuzz::oci_image::run(data));

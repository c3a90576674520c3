//! Contract versions (docs/contract.md): the released WIT files are kept byte for byte, the
//! SDK carries the current one, and the drivers built against 0.1 are the files that were
//! built, never rebuilt.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The repository root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    hex::encode(Sha256::digest(bytes))
}

/// The built 0.1 drivers of `tests/drivers/v0.1`, with the SHA-256 its README records.
const KEPT_V0_1: &[(&str, &str)] = &[
    (
        "strata_driver_vfs.wasm",
        "4e7925ead969177925e380b909741e33ada8b07f3b8cfc138f7bccb73da306b8",
    ),
    (
        "strata_driver_overlay.wasm",
        "6a954c9abf3508a47c8d26685e84a4aa46d7bb65f72b903ad26e4e056207ff42",
    ),
    (
        "strata_test_driver_hostile.wasm",
        "e65da5b189fa72b73f4992d8c950d258b861a8bab28f25b641ce288d6a64fe93",
    ),
];

/// A built 0.1 driver kept in the repository.
fn kept_v0_1(file: &str) -> PathBuf {
    repo().join("tests/drivers/v0.1").join(file)
}

#[test]
fn the_released_0_1_wit_is_kept_byte_for_byte() {
    // The SHA-256 of `wit/strata-driver.wit` as released with 0.1.0 (commit 3909a24).
    assert_eq!(
        sha256(&repo().join("wit/v0.1/strata-driver.wit")),
        "11451184c84b35eddde9891a53076e69c1dbc97588add165332911054c920461",
        "wit/v0.1 changed: a released contract is never edited (docs/contract.md)"
    );
}

#[test]
fn the_sdk_carries_the_current_contract() {
    let sdk = std::fs::read_to_string(repo().join("sdk/wit/strata-driver.wit")).unwrap();
    let current = std::fs::read_to_string(repo().join("wit/v0.2/strata-driver.wit")).unwrap();
    assert!(
        sdk == current,
        "sdk/wit/strata-driver.wit differs from wit/v0.2/strata-driver.wit: copy it over"
    );
    assert!(current.contains("\npackage strata:driver@0.2.0;\n"));
    let sdk_lib = std::fs::read_to_string(repo().join("sdk/src/lib.rs")).unwrap();
    assert!(
        sdk_lib.contains("pub const WIT_PACKAGE: &str = \"strata:driver@0.2.0\";"),
        "the SDK's WIT_PACKAGE names another version than its WIT"
    );
}

#[test]
fn the_kept_0_1_drivers_are_the_files_that_were_built() {
    let readme = std::fs::read_to_string(repo().join("tests/drivers/v0.1/README.md")).unwrap();
    for (file, digest) in KEPT_V0_1 {
        assert_eq!(
            &sha256(&kept_v0_1(file)),
            digest,
            "{file} changed: the 0.1 drivers are never rebuilt"
        );
        assert!(readme.contains(digest), "the README does not record {file}");
    }
}

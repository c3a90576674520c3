//! Host memory while applying a small but hostile layer: the bookkeeping an apply keeps
//! across entries is deduplicated and bounded (`strata_core::archive::APPLY_BOOKKEEPING_BUDGET`,
//! docs/sandbox.md), so a 4 KiB-path directory entry repeated thousands of times, or thousands
//! of distinct 4 KiB-path directories, cost the `strata` process no more than the deferred
//! directory times' share of the budget above the peak of applying a one-entry layer.
//!
//! Before the budget the host kept a copy of every directory entry's path: each 12,000-entry
//! layer below (a ~60 KB zstd) grew it by about 50 MiB (100 MiB for distinct directories on
//! vfs, which also kept every created path).

use std::path::Path;

use strata_core::archive::MAX_DIR_TIMES_BYTES;
use strata_tests::applymem::{MeasuredStore, distinct_dirs, mib, repeated_dir, write_layer, zstd};
use strata_tests::{TempStore, root_or_skip, strata_bin};

/// Entries of each hostile layer: enough that keeping a path per entry (about 4 KiB each)
/// exceeds the bound twice over, few enough for a debug build to apply in seconds.
const ENTRIES: usize = 12_000;
/// What a run may differ from the baseline by besides the bookkeeping: allocator and page
/// cache noise, the decoder's buffers.
const SLACK: u64 = 12 << 20;

/// Peak RSS of `strata --driver DRIVER layer apply ID LAYER` on a fresh layer `id`.
fn apply_peak(t: &TempStore, driver: &str, id: &str, layer: &Path) -> u64 {
    let (ok, _, err) = t.cli(&["--driver", driver, "layer", "create", "--id", id]);
    assert!(ok, "creating {id} with {driver}: {err}");
    let (root, run) = (t.root(), t.dir.path().join("run"));
    let store = MeasuredStore {
        root: &root,
        run_root: &run,
        driver,
    };
    strata_tests::applymem::apply_peak(
        Path::new(env!("CARGO_BIN_EXE_strata-peak-rss")),
        &strata_bin(),
        &store,
        id,
        layer,
    )
}

fn check(driver: &str, shape: &str, tar: Vec<u8>) {
    let t = TempStore::new();
    let one = write_layer(
        t.dir.path(),
        "one.tar.zst",
        &zstd(&repeated_dir(1), 3, false),
    );
    let hostile = write_layer(t.dir.path(), "hostile.tar.zst", &zstd(&tar, 3, false));
    let baseline = apply_peak(&t, driver, "baseline", &one);
    let peak = apply_peak(&t, driver, "hostile", &hostile);
    let bound = baseline + MAX_DIR_TIMES_BYTES as u64 + SLACK;
    eprintln!(
        "{driver}, {shape} ({ENTRIES} entries, {} KB zstd): peak {:.1} MiB, baseline {:.1} MiB, \
         bound {:.1} MiB",
        std::fs::metadata(&hostile)
            .map(|m| m.len() / 1000)
            .unwrap_or(0),
        mib(peak),
        mib(baseline),
        mib(bound)
    );
    assert!(
        peak <= bound,
        "{driver}, {shape}: applying took the host to {:.1} MiB, over the bound of {:.1} MiB \
         (baseline {:.1} MiB + {} MiB of directory times + {} MiB slack)",
        mib(peak),
        mib(bound),
        mib(baseline),
        MAX_DIR_TIMES_BYTES >> 20,
        SLACK >> 20
    );
}

#[test]
fn a_repeated_directory_entry_costs_the_host_nothing_per_entry() {
    if !root_or_skip(
        "a_repeated_directory_entry_costs_the_host_nothing_per_entry",
        "applying root-owned entries",
    ) {
        return;
    }
    check("overlay", "one directory repeated", repeated_dir(ENTRIES));
}

#[test]
fn distinct_directories_cost_the_host_a_bounded_amount() {
    if !root_or_skip(
        "distinct_directories_cost_the_host_a_bounded_amount",
        "applying root-owned entries",
    ) {
        return;
    }
    check("vfs", "distinct directories", distinct_dirs(ENTRIES));
}

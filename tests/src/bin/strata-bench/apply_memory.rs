//! `apply-memory`: the peak memory (`ru_maxrss`, through `strata-peak-rss`) of
//! `target/release/strata layer apply` on small hostile layers, against the peak of applying a
//! one-entry layer of the same compression in the same run (the baseline: the process, the
//! driver and the decoder). The layers are those of issue 15: one 4 KiB-path directory entry
//! repeated 50,000 and 200,000 times (gzip) and 50,000 times (zstd --long); 50,000 distinct
//! 4 KiB-path directories; and, to show the budget leaves real layers alone, 300,000 small
//! files (a legitimate big layer). Each runs on vfs (the delete format, which also records
//! created paths) and on an overlay layer above a parent (overlay whiteouts).
//!
//! Target: every peak ≤ its baseline + `APPLY_BOOKKEEPING_BUDGET` (96 MiB), + the zstd
//! decoder's window for zstd layers (up to 128 MiB, `MAX_ZSTD_WINDOW_LOG`: a one-entry layer
//! needs no window, a large `--long` one the whole of it).

use std::path::Path;

use strata_core::archive::{APPLY_BOOKKEEPING_BUDGET, MAX_ZSTD_WINDOW_LOG};
use strata_tests::applymem::{
    Compression, MeasuredStore, apply_peak, mib, write_compressed, write_distinct_dirs,
    write_many_files, write_repeated_dir,
};
use strata_tests::{TempStore, target_dir};

struct Shape {
    name: &'static str,
    entries: usize,
    compression: Compression,
    write: fn(&mut dyn std::io::Write, usize) -> std::io::Result<()>,
}

fn repeated(w: &mut dyn std::io::Write, n: usize) -> std::io::Result<()> {
    write_repeated_dir(w, n).map(drop)
}

fn distinct(w: &mut dyn std::io::Write, n: usize) -> std::io::Result<()> {
    write_distinct_dirs(w, n).map(drop)
}

fn many_files(w: &mut dyn std::io::Write, n: usize) -> std::io::Result<()> {
    write_many_files(w, n).map(drop)
}

const SHAPES: [Shape; 5] = [
    Shape {
        name: "one directory repeated",
        entries: 50_000,
        compression: Compression::Gzip,
        write: repeated,
    },
    Shape {
        name: "one directory repeated",
        entries: 200_000,
        compression: Compression::Gzip,
        write: repeated,
    },
    Shape {
        name: "one directory repeated",
        entries: 50_000,
        compression: Compression::ZstdLong,
        write: repeated,
    },
    Shape {
        name: "distinct directories",
        entries: 50_000,
        compression: Compression::Zstd,
        write: distinct,
    },
    Shape {
        name: "small files (legitimate)",
        entries: 300_000,
        compression: Compression::Zstd,
        write: many_files,
    },
];

/// Applies `layer` with `driver` onto a fresh layer (a child of an empty parent for
/// overlay, so that its whiteouts are overlay's); the peak RSS in bytes.
fn peak(bin: &Path, tool: &Path, driver: &str, layer: &Path) -> u64 {
    let t = TempStore::new();
    let (root, run) = (t.root(), t.dir.path().join("run"));
    let cli = |args: &[&str]| {
        strata_tests::run_tool(
            strata_tests::strata_command(bin)
                .arg("--root")
                .arg(&root)
                .arg("--run-root")
                .arg(&run)
                .args(["--driver", driver])
                .args(args),
        );
    };
    cli(&["layer", "create", "--id", "base"]);
    cli(&["layer", "create", "--id", "top", "--parent", "base"]);
    let store = MeasuredStore {
        root: &root,
        run_root: &run,
        driver,
    };
    apply_peak(tool, bin, &store, "top", layer)
}

pub fn run() {
    if !rustix::process::geteuid().is_root() {
        println!("apply-memory: skipped (applying root-owned entries needs root)");
        return;
    }
    let bin = target_dir().join("release").join("strata");
    let tool = target_dir().join("release").join("strata-peak-rss");
    for p in [&bin, &tool] {
        assert!(
            p.is_file(),
            "{} is missing: run `cargo xtask bench apply-memory`",
            p.display()
        );
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    println!(
        "apply-memory: peak RSS of `strata layer apply`; baseline: a one-entry layer of the same \
         compression; bound: baseline + {} MiB (APPLY_BOOKKEEPING_BUDGET), + {} MiB for zstd \
         (the decoder's window)",
        APPLY_BOOKKEEPING_BUDGET >> 20,
        (1u64 << MAX_ZSTD_WINDOW_LOG) >> 20
    );
    for shape in &SHAPES {
        let layer = dir.path().join("layer");
        let one = dir.path().join("one");
        let size = write_compressed(&layer, shape.compression, |w| {
            (shape.write)(w, shape.entries)
        })
        .expect("writing the layer");
        write_compressed(&one, shape.compression, |w| (shape.write)(w, 1))
            .expect("writing the baseline layer");
        for driver in ["vfs", "overlay"] {
            let base = peak(&bin, &tool, driver, &one);
            let got = peak(&bin, &tool, driver, &layer);
            let window = match shape.compression {
                Compression::Gzip => 0,
                Compression::Zstd | Compression::ZstdLong => 1u64 << MAX_ZSTD_WINDOW_LOG,
            };
            let bound = base + APPLY_BOOKKEEPING_BUDGET as u64 + window;
            println!(
                "  {} ×{} ({}, {} KB), {driver}: peak {:.1} MiB, baseline {:.1} MiB, +{:.1} MiB \
                 (ratio {:.2}), {}",
                shape.name,
                shape.entries,
                shape.compression.name(),
                size / 1000,
                mib(got),
                mib(base),
                mib(got.saturating_sub(base)),
                got as f64 / base as f64,
                if got <= bound {
                    "within the bound"
                } else {
                    "OVER THE BOUND"
                }
            );
        }
    }
}

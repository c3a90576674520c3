//! Fuzz targets for the parsers a stranger feeds Strata, and their seed corpora.
//!
//! Each target is a module with `run(data)`, called by its libFuzzer binary
//! (`fuzz_targets/NAME.rs`), and `seeds()`, the inputs its corpus starts from (written by
//! the `seed` binary; all made here by code, nothing fetched). A target fails (panics) on a
//! panic of the host, and on a broken property that it checks after each input: see each
//! module, and docs/fuzzing.md. `cargo xtask fuzz` builds and runs them.

use std::path::PathBuf;

pub mod containerd_filters;
pub mod mount_plan;
pub mod oci_image;
pub mod tar_apply;
pub mod tar_reader;
pub mod tars;

/// A fuzz target: its name (and binary's), what it runs on one input, and its seeds.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    pub seeds: fn() -> Vec<Vec<u8>>,
}

/// The targets.
pub const TARGETS: &[Target] = &[
    Target {
        name: "tar_reader",
        run: tar_reader::run,
        seeds: tar_reader::seeds,
    },
    Target {
        name: "tar_apply",
        run: tar_apply::run,
        seeds: tar_apply::seeds,
    },
    Target {
        name: "oci_image",
        run: oci_image::run,
        seeds: oci_image::seeds,
    },
    Target {
        name: "containerd_filters",
        run: containerd_filters::run,
        seeds: containerd_filters::seeds,
    },
    Target {
        name: "mount_plan",
        run: mount_plan::run,
        seeds: mount_plan::seeds,
    },
];

/// The environment variable naming the directory the targets that need files work in
/// (apply's destination, image layouts, a driver home); `cargo xtask fuzz` sets it.
pub const SCRATCH_ENV: &str = "STRATA_FUZZ_SCRATCH";

/// The directory a target works in: `$STRATA_FUZZ_SCRATCH/<target>`, else one of this
/// process's under the system's temporary directory. The target and the `seed` binary get
/// the same `STRATA_FUZZ_SCRATCH` from `cargo xtask fuzz`, so that seeds can name the
/// directory (symlinks to an absolute path outside apply's destination).
pub fn scratch(target: &str) -> PathBuf {
    scratch_base().join(target)
}

fn scratch_base() -> PathBuf {
    std::env::var_os(SCRATCH_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("strata-fuzz-scratch-{}", std::process::id()))
        })
}

/// Removes `path` (a tree) whatever modes a tar left in it: directories without write or
/// search permission are opened up first (needed when not root).
pub fn remove_tree(path: &std::path::Path) {
    if std::fs::remove_dir_all(path).is_ok() || !path.exists() {
        return;
    }
    open_up(path);
    std::fs::remove_dir_all(path)
        .unwrap_or_else(|e| panic!("fuzz harness: removing {}: {e}", path.display()));
}

fn open_up(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(md) = std::fs::symlink_metadata(path) else {
        return;
    };
    if md.is_dir() {
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
        if let Ok(rd) = std::fs::read_dir(path) {
            for e in rd.flatten() {
                open_up(&e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// The seeds are a regression corpus: every target passes each of them, uninstrumented,
    /// in the ordinary test run.
    #[test]
    fn every_target_passes_its_seeds() {
        for t in super::TARGETS {
            let seeds = (t.seeds)();
            assert!(!seeds.is_empty(), "{}", t.name);
            for s in &seeds {
                (t.run)(s);
            }
        }
        // The image seeds are images import reads: the fuzzer starts from documents that
        // get all the way through, not from ones refused at the first digest.
        for (i, seed) in super::oci_image::seeds().iter().enumerate() {
            assert_eq!(super::oci_image::resolved(seed), Some(true), "seed {i}");
        }
        if std::env::var_os(super::SCRATCH_ENV).is_none() {
            super::remove_tree(&super::scratch_base());
        }
    }
}

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

/// Makes a target's seed corpus.
pub type Seeds = fn() -> Vec<Vec<u8>>;

/// The targets, by name: `(name, seeds)`.
pub const TARGETS: &[(&str, Seeds)] = &[
    ("tar_reader", tar_reader::seeds),
    ("tar_apply", tar_apply::seeds),
    ("oci_image", oci_image::seeds),
    ("containerd_filters", containerd_filters::seeds),
    ("mount_plan", mount_plan::seeds),
];

/// The environment variable naming the directory the targets that need files work in
/// (apply's destination, image layouts, a driver home); `cargo xtask fuzz` sets it.
pub const SCRATCH_ENV: &str = "STRATA_FUZZ_SCRATCH";

/// The directory a target works in: `$STRATA_FUZZ_SCRATCH/<target>`, else one under the
/// system's temporary directory. A fixed path, so that seeds can name it (symlinks to an
/// absolute path outside the destination).
pub fn scratch(target: &str) -> PathBuf {
    let base = std::env::var_os(SCRATCH_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("strata-fuzz-scratch"));
    base.join(target)
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

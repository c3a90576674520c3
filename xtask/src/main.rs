//! `cargo xtask`: the project's build, demo, test and bench entry points.
//!
//! - `cargo xtask build`: the host (release) and every driver (wasm32-wasip2), drivers
//!   installed next to the `strata` binary so it finds them by name.
//! - `cargo xtask demo`: the main job on a fresh machine — build, then in a temporary root
//!   import an image the project builds itself (an OCI layout with a whiteout and an opaque
//!   directory), make a container on it, mount it, write a file, show the changes, unmount,
//!   commit, remove.
//! - `cargo xtask test`: as root, install what the tests need; then format and lint checks
//!   and every test, privileged ones included; as root a test that would skip fails
//!   (`STRATA_TEST_REQUIRE_ALL=1`).
//! - `cargo xtask bench`: figures, each as a ratio to a baseline measured in the same run.
//! - `cargo xtask fuzz [TARGET] [--time SECS]`: the fuzz targets of `fuzz/` under libFuzzer
//!   (docs/fuzzing.md); `test` runs each for a short time too.

mod bench;
mod demo;
mod fuzz;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Drivers that ship with Strata (crate `strata-driver-NAME`, installed as `NAME.wasm`).
pub const DRIVERS: &[&str] = &["overlay", "vfs", "btrfs", "zfs"];
/// Drivers only the tests use.
pub const TEST_DRIVERS: &[&str] = &[
    "strata-test-driver-hostile",
    "strata-test-driver-forgetful",
    // Built for contract 0.9.0, which no host speaks: the host must refuse it by name.
    "strata-test-driver-future",
];
/// Set to `1`, every test that cannot run here (not root, a tool missing) fails instead of
/// printing `skipped:`; `cargo xtask test` sets it when it runs as root (see `test`).
pub const REQUIRE_ALL_ENV: &str = "STRATA_TEST_REQUIRE_ALL";
/// The cargo profile drivers are built with (small, optimised components).
pub const WASM_PROFILE: &str = "wasm";
pub const WASM_TARGET: &str = "wasm32-wasip2";
/// Debian packages the tests need, with a command each provides; installed (as root) when the
/// command is missing. The vfs tests need none: mounts, device nodes and ownership go through
/// syscalls, and so do the btrfs driver's; its tests make their own loop-mounted btrfs with
/// `mkfs.btrfs` and check reflinks with `filefrag`.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("btrfs-progs", "mkfs.btrfs"),
    ("e2fsprogs", "filefrag"),
    ("zfs-fuse", "zfs-fuse"),
    // The containerd snapshotter tests run a private containerd with runc, on an image whose
    // only program is a static busybox.
    ("containerd", "containerd"),
    ("runc", "runc"),
    ("busybox-static", "busybox"),
    // `cargo xtask fuzz` (run by `test`): libfuzzer-sys compiles libFuzzer's C++, and each
    // target runs in its own mount namespace.
    ("g++", "g++"),
    ("util-linux", "unshare"),
];

fn main() -> Result<()> {
    if let Some(wrapped) = fuzz::as_rustc_wrapper() {
        return wrapped;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = &args[1.min(args.len())..];
    match args.first().map(String::as_str) {
        Some("build") => build_all(true).map(|_| ()),
        Some("install") => install(rest),
        Some("demo") => demo::run(),
        Some("test") => test(rest),
        Some("bench") => bench::run(rest),
        Some("fuzz") => fuzz::run_cli(rest),
        _ => {
            eprintln!(
                "usage: cargo xtask <build|install [--prefix DIR]|demo|test|bench|fuzz [TARGET] [--time SECS]>"
            );
            bail!("unknown or missing task")
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

pub fn is_root() -> bool {
    // SAFETY-free: the effective uid from /proc, avoiding a libc dependency.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Installs the wasm32-wasip2 target when rustup lacks it.
fn ensure_wasm_target() -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("running rustup (needed for the wasm32-wasip2 target)")?;
    if !String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == WASM_TARGET)
    {
        eprintln!("xtask: installing the {WASM_TARGET} target");
        run(Command::new("rustup").args(["target", "add", WASM_TARGET]))?;
    }
    Ok(())
}

/// Where built driver components land.
pub fn wasm_dir() -> PathBuf {
    target_dir().join(WASM_TARGET).join(WASM_PROFILE)
}

/// Builds every driver component, and the host when `host_release`; installs the first-party
/// drivers as `target/release/drivers/NAME.wasm`. Returns the `strata` binary's path.
pub fn build_all(host_release: bool) -> Result<PathBuf> {
    ensure_wasm_target()?;
    let mut c = cargo();
    c.args(["build", "--target", WASM_TARGET, "--profile", WASM_PROFILE]);
    for d in DRIVERS {
        c.args(["-p", &format!("strata-driver-{d}")]);
    }
    for d in TEST_DRIVERS {
        c.args(["-p", d]);
    }
    run(&mut c)?;
    let profile = if host_release { "release" } else { "debug" };
    let mut c = cargo();
    c.args(["build", "-p", "strata-host"]);
    if host_release {
        c.arg("--release");
    }
    run(&mut c)?;
    let bin_dir = target_dir().join(profile);
    let drivers_dir = bin_dir.join("drivers");
    std::fs::create_dir_all(&drivers_dir)?;
    for d in DRIVERS {
        let built = wasm_dir().join(format!("strata_driver_{d}.wasm"));
        std::fs::copy(&built, drivers_dir.join(format!("{d}.wasm")))
            .with_context(|| format!("installing {}", built.display()))?;
    }
    Ok(bin_dir.join("strata"))
}

/// Installs `strata` into `PREFIX/bin` and the first-party drivers into
/// `PREFIX/lib/strata/drivers` (where `strata` finds them by name). Default prefix
/// `/usr/local`.
fn install(args: &[String]) -> Result<()> {
    let prefix = match args {
        [] => PathBuf::from("/usr/local"),
        [flag, dir] if flag == "--prefix" => PathBuf::from(dir),
        _ => bail!("usage: cargo xtask install [--prefix DIR]"),
    };
    let bin = build_all(true)?;
    let bin_dir = prefix.join("bin");
    let drivers_dir = prefix.join("lib/strata/drivers");
    std::fs::create_dir_all(&bin_dir)?;
    std::fs::create_dir_all(&drivers_dir)?;
    std::fs::copy(&bin, bin_dir.join("strata"))
        .with_context(|| format!("installing strata into {}", bin_dir.display()))?;
    for d in DRIVERS {
        let built = wasm_dir().join(format!("strata_driver_{d}.wasm"));
        std::fs::copy(&built, drivers_dir.join(format!("{d}.wasm")))
            .with_context(|| format!("installing the {d} driver"))?;
    }
    println!(
        "installed {} and drivers {:?} in {}",
        bin_dir.join("strata").display(),
        DRIVERS,
        drivers_dir.display()
    );
    Ok(())
}

fn ensure_packages() -> Result<()> {
    let missing: Vec<&str> = TEST_PACKAGES
        .iter()
        .filter(|(_, cmd)| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {cmd}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        eprintln!(
            "xtask: not root, so not installing {missing:?}; tests needing them skip \
             (they would fail with {REQUIRE_ALL_ENV}=1)"
        );
        return Ok(());
    }
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn test(args: &[String]) -> Result<()> {
    ensure_packages()?;
    ensure_wasm_target()?;
    for comp in ["rustfmt", "clippy"] {
        let _ = Command::new("rustup")
            .args(["component", "add", comp])
            .status();
    }
    run(cargo().args(["fmt", "--all", "--check"]))?;
    build_all(false)?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo().args([
        "clippy",
        "--target",
        WASM_TARGET,
        "-p",
        "strata-driver-sdk",
        "-p",
        "strata-driver-vfs",
        "-p",
        "strata-driver-overlay",
        "-p",
        "strata-driver-btrfs",
        "-p",
        "strata-test-driver-hostile",
        "-p",
        "strata-test-driver-forgetful",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Driver crates are components: built for wasm32-wasip2 above and exercised through the
    // host's tests; natively they would not link (their export names are WIT names).
    let mut c = cargo();
    c.args(["test", "--workspace"]);
    for d in DRIVERS {
        c.args(["--exclude", &format!("strata-driver-{d}")]);
    }
    for d in TEST_DRIVERS {
        c.args(["--exclude", d]);
    }
    c.env("STRATA_TEST_WASM_DIR", wasm_dir()).args(args);
    // As root (as in CI) every test can run, and the packages they need were installed
    // above: a test that would skip fails instead. An explicit value is left as it is.
    if let Some(v) = require_all(is_root(), std::env::var_os(REQUIRE_ALL_ENV).is_some()) {
        c.env(REQUIRE_ALL_ENV, v);
    }
    run(&mut c)?;
    // The fuzz targets, briefly: the seeds and what a short run finds from them.
    fuzz::fuzz(fuzz::TARGETS, fuzz::CI_SECONDS)
}

/// The value `cargo xtask test` gives [`REQUIRE_ALL_ENV`]: `1` as root (every test can run
/// there, so a skip is a failure), unless the caller set it already; otherwise left alone.
fn require_all(root: bool, already_set: bool) -> Option<&'static str> {
    (root && !already_set).then_some("1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_test_must_run_as_root_unless_the_caller_says_otherwise() {
        assert_eq!(require_all(true, false), Some("1"));
        assert_eq!(require_all(true, true), None);
        assert_eq!(require_all(false, false), None);
        assert_eq!(require_all(false, true), None);
    }
}

//! Contract versions (docs/contract.md): the released WIT files are kept byte for byte, the
//! SDK carries the current one, and the drivers built against 0.1 are the files that were
//! built, never rebuilt. One host loads drivers of 0.1 and of 0.2, side by side; the kept
//! 0.1 drivers pass the conformance suite; a driver of a version the host does not speak is
//! refused with a sentence; `no-space` reaches a 0.2 driver, the errno a 0.1 driver.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use strata_conformance::{self as conformance, Report, SuiteOptions};
use strata_core::contract::DriverError;
use strata_core::layers::{CreateLayer, LayerError, StoreOptions, Strata};
use strata_sandbox::{CallError, SandboxError};
use strata_tests::targen::{Entry, tar_of};
use strata_tests::{
    LoopBtrfs, TempStore, assert_all_pass, btrfs_or_skip, cache_dir, configure_driver, create_with,
    driver_wasm, hostile_config, hostile_wasm, root_or_skip, run_conformance, run_tool, strata_bin,
    strata_command, vfs_wasm,
};

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

// ---- Part B: one host, both versions -----------------------------------------------------

fn suite(t: &TempStore, wasm: &Path) -> Report {
    run_conformance(&SuiteOptions {
        driver: wasm.to_string_lossy().into_owned(),
        config: t.config(),
        driver_options: vec![],
        scratch: t.dir.path().to_path_buf(),
        cache_dir: cache_dir(),
        deep_chain: conformance::DEFAULT_DEEP_CHAIN,
        only: vec![],
    })
}

#[test]
fn the_kept_0_1_vfs_passes_the_conformance_suite() {
    if !root_or_skip(
        "the_kept_0_1_vfs_passes_the_conformance_suite",
        "the suite mounts, chowns and makes device nodes",
    ) {
        return;
    }
    let t = TempStore::new();
    let report = suite(&t, &kept_v0_1("strata_driver_vfs.wasm"));
    assert_all_pass(&report, conformance::DEFAULT_DEEP_CHAIN);
}

#[test]
fn the_kept_0_1_overlay_passes_the_conformance_suite() {
    if !root_or_skip(
        "the_kept_0_1_overlay_passes_the_conformance_suite",
        "the suite mounts, chowns and makes device nodes",
    ) {
        return;
    }
    let t = TempStore::new();
    let report = suite(&t, &kept_v0_1("strata_driver_overlay.wasm"));
    assert_all_pass(&report, conformance::DEFAULT_DEEP_CHAIN);
}

/// Builds a base layer from a tar, a child with a change, and checks what the store says of
/// them: the same whichever contract version the driver speaks.
fn exercise(s: &Strata) -> Vec<String> {
    create_with(s, "base", &[]).unwrap();
    let tar = tar_of(&[
        Entry::dir("etc", 0o755),
        Entry::file("etc/hostname", 0o644, b"side-by-side\n"),
        Entry::file("gone", 0o600, b"x"),
    ]);
    s.apply("base", Box::new(std::io::Cursor::new(tar)))
        .unwrap();
    s.create_layer(CreateLayer {
        id: Some("child".into()),
        parent: Some("base".into()),
        read_write: true,
        ..Default::default()
    })
    .unwrap();
    let tar = tar_of(&[Entry::whiteout("gone"), Entry::file("new", 0o644, b"n")]);
    s.apply("child", Box::new(std::io::Cursor::new(tar)))
        .unwrap();
    let mut changes: Vec<String> = s
        .changes("child", Some("base"))
        .unwrap()
        .into_iter()
        .map(|c| format!("{:?} {}", c.kind, c.path))
        .collect();
    changes.sort();
    changes
}

#[test]
fn a_0_1_driver_and_a_0_2_driver_run_side_by_side() {
    if !root_or_skip(
        "a_0_1_driver_and_a_0_2_driver_run_side_by_side",
        "layers are created owned 0:0 and the suite mounts",
    ) {
        return;
    }
    // One process, two stores: the kept 0.1 vfs and the vfs built now (0.2).
    let old = TempStore::new();
    let new = TempStore::new();
    let s_old = old
        .open_with(&kept_v0_1("strata_driver_vfs.wasm"), old.config())
        .expect("the 0.1 driver loads");
    let s_new = new
        .open_with(&vfs_wasm(), new.config())
        .expect("the 0.2 driver loads");
    for (wasm, version) in [
        (kept_v0_1("strata_driver_vfs.wasm"), "0.1.0"),
        (vfs_wasm(), "0.2.0"),
    ] {
        let c = strata_sandbox::inspect::inspect_component("vfs", &wasm).unwrap();
        assert_eq!(c.wit_version, version);
    }
    let old_changes = exercise(&s_old);
    let new_changes = exercise(&s_new);
    assert_eq!(old_changes, new_changes);
    assert_eq!(
        new_changes,
        ["Add /new", "Delete /gone"],
        "both report the child's own changes"
    );

    // `strata driver test` on both at once, as an author runs it.
    let run = |t: &TempStore, wasm: PathBuf| {
        let scratch = t.dir.path().join("scratch");
        std::fs::create_dir_all(&scratch).unwrap();
        strata_command(strata_bin())
            .arg("--root")
            .arg(t.dir.path().join("cli-root"))
            .arg("--run-root")
            .arg(t.dir.path().join("cli-run"))
            .args(["driver", "test"])
            .arg(wasm)
            .arg("--scratch")
            .arg(scratch)
            .output()
            .expect("running strata driver test")
    };
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| run(&old, kept_v0_1("strata_driver_vfs.wasm")));
        let b = scope.spawn(|| run(&new, vfs_wasm()));
        (a.join().unwrap(), b.join().unwrap())
    });
    for (which, out) in [("0.1", a), ("0.2", b)] {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{which} vfs fails the suite: {text}");
        assert!(!text.contains("FAIL"), "{which}: {text}");
    }
}

#[test]
fn a_driver_of_a_version_this_host_does_not_speak_is_refused_with_a_sentence() {
    let t = TempStore::new();
    let future = driver_wasm("strata_test_driver_future");
    let err = t
        .open_with(&future, t.config())
        .err()
        .expect("a 0.9 driver must be refused");
    let msg = err.to_string();
    assert!(
        matches!(
            &err,
            LayerError::Sandbox(SandboxError::UnsupportedContract { version, .. }) if version == "0.9.0"
        ),
        "{msg}"
    );
    assert_eq!(
        msg,
        "driver strata_test_driver_future was built for contract strata:driver 0.9.0, which this host does not \
         speak (it speaks 0.1, 0.2); rebuild it with a strata-driver-sdk of one of those \
         versions, or use a Strata release that speaks 0.9"
    );
    // The CLI says the same, loading it or inspecting it.
    for args in [
        vec!["--driver", future.to_str().unwrap(), "layer", "ls"],
        vec!["driver", "inspect", future.to_str().unwrap()],
    ] {
        let (ok, out, err) = t.cli(&args);
        assert!(!ok, "{args:?}: {out}");
        assert!(
            err.contains("was built for contract strata:driver 0.9.0")
                && err.contains("it speaks 0.1, 0.2"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("matching implementation"), "{args:?}: {err}");
    }
}

#[test]
fn driver_inspect_shows_the_contract_version() {
    let t = TempStore::new();
    for (wasm, version) in [
        (kept_v0_1("strata_driver_vfs.wasm"), "0.1.0"),
        (kept_v0_1("strata_driver_overlay.wasm"), "0.1.0"),
        (vfs_wasm(), "0.2.0"),
    ] {
        let (ok, out, err) = t.cli(&["driver", "inspect", wasm.to_str().unwrap()]);
        assert!(ok, "{err}");
        assert!(
            out.lines()
                .any(|l| l == format!("wit:          strata:driver@{version}")),
            "{}: {out}",
            wasm.display()
        );
        let (ok, out, err) = t.cli(&["--json", "driver", "inspect", wasm.to_str().unwrap()]);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["wit"], format!("strata:driver@{version}"));
    }
}

/// The driver's own error inside a failed apply (undone or not).
fn driver_error(err: LayerError) -> DriverError {
    match err {
        LayerError::ApplyUndone { cause, .. } => driver_error(*cause),
        LayerError::Call(CallError::Driver { error, .. }) => error,
        other => panic!("expected the driver's error, got {other}"),
    }
}

/// A tmpfs of `bytes` mounted on `at` (made), unmounted on drop.
struct SmallTmpfs(PathBuf);

impl SmallTmpfs {
    fn mount(at: PathBuf, bytes: u64) -> Self {
        std::fs::create_dir_all(&at).unwrap();
        run_tool(
            std::process::Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={bytes}"),
                    "strata-nospace",
                ])
                .arg(&at),
        );
        SmallTmpfs(at)
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        strata_sys::mount::detach_all_beneath(&self.0);
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// What the host hears from driver `wasm` when a layer's apply runs out of space on a store
/// whose root is a 4 MiB tmpfs.
fn apply_on_a_full_filesystem(wasm: &Path) -> DriverError {
    let t = TempStore::new();
    let _fs = SmallTmpfs::mount(t.root(), 4 << 20);
    let s = t.open_with(wasm, t.config()).expect("opening the store");
    create_with(&s, "big", &[]).unwrap();
    let tar = tar_of(&[Entry::file("big", 0o644, &vec![0x5a; 8 << 20])]);
    let err = s
        .apply("big", Box::new(std::io::Cursor::new(tar)))
        .expect_err("8 MiB do not fit in 4 MiB");
    driver_error(err)
}

#[test]
fn no_space_reaches_a_0_2_driver_and_the_errno_a_0_1_driver() {
    if !root_or_skip(
        "no_space_reaches_a_0_2_driver_and_the_errno_a_0_1_driver",
        "it mounts a tmpfs",
    ) {
        return;
    }
    match apply_on_a_full_filesystem(&vfs_wasm()) {
        DriverError::NoSpace(e) => assert_eq!(e.errno, 28, "ENOSPC: {}", e.message),
        other => panic!("a 0.2 driver hears no-space: {other:?}"),
    }
    match apply_on_a_full_filesystem(&kept_v0_1("strata_driver_vfs.wasm")) {
        DriverError::Io(e) => assert_eq!(e.errno, 28, "ENOSPC as an errno: {}", e.message),
        other => panic!("a 0.1 driver hears io with the errno, as 0.1 always did: {other:?}"),
    }
}

/// What the host hears from driver `wasm` when a layer's apply goes over a btrfs quota: the
/// store lives in subvolume `fs/NAME`, limited to 2 MiB.
fn apply_over_a_quota(fs: &LoopBtrfs, name: &str, wasm: &Path) -> DriverError {
    let sub = fs.mnt().join(name);
    run_tool(
        std::process::Command::new("btrfs")
            .args(["subvolume", "create"])
            .arg(&sub),
    );
    run_tool(
        std::process::Command::new("btrfs")
            .args(["qgroup", "limit", "2M"])
            .arg(&sub),
    );
    let config = strata_core::config::Config {
        root: sub.join("root"),
        run_root: sub.join("run"),
        ..Default::default()
    };
    let (driver, config) = configure_driver(config, wasm);
    let s = strata_sandbox::open(StoreOptions {
        config,
        driver: Some(driver),
        driver_options: vec![],
        cache_dir: Some(cache_dir()),
    })
    .expect("opening the store");
    create_with(&s, "big", &[]).unwrap();
    let tar = tar_of(&[Entry::file("big", 0o644, &vec![0x5a; 8 << 20])]);
    let err = s
        .apply("big", Box::new(std::io::Cursor::new(tar)))
        .expect_err("8 MiB do not fit in a 2 MiB quota");
    driver_error(err)
}

#[test]
fn a_quota_reaches_a_0_2_driver_as_no_space_and_a_0_1_driver_as_errno_122() {
    if !btrfs_or_skip("a_quota_reaches_a_0_2_driver_as_no_space_and_a_0_1_driver_as_errno_122") {
        return;
    }
    let fs = LoopBtrfs::new(512 << 20);
    run_tool(
        std::process::Command::new("btrfs")
            .args(["quota", "enable"])
            .arg(fs.mnt()),
    );
    match apply_over_a_quota(&fs, "new", &vfs_wasm()) {
        DriverError::NoSpace(e) => assert_eq!(e.errno, 122, "EDQUOT: {}", e.message),
        other => panic!("a 0.2 driver hears no-space: {other:?}"),
    }
    match apply_over_a_quota(&fs, "old", &kept_v0_1("strata_driver_vfs.wasm")) {
        DriverError::Io(e) => assert_eq!(e.errno, 122, "EDQUOT as errno 122: {}", e.message),
        other => panic!("a 0.1 driver hears io with errno 122, as 0.1 always did: {other:?}"),
    }
}

#[test]
fn overlay_options_are_checked_as_0_1_strings_and_cannot_be_misspelt_in_0_2() {
    if !root_or_skip(
        "overlay_options_are_checked_as_0_1_strings_and_cannot_be_misspelt_in_0_2",
        "layers are created owned 0:0 and an allowed plan mounts",
    ) {
        return;
    }
    let bad = [
        ("overlay-option", "lowerdir=/etc"),
        ("overlay-option", "upperdir=/tmp"),
    ];
    let opts = |(k, v): (&str, &str)| vec![(k.to_string(), v.to_string())];

    // 0.1 carries options as strings: the host checks each against its list and refuses
    // the plan before any mount.
    let t = TempStore::new();
    let s = t
        .open_with(
            &kept_v0_1("strata_test_driver_hostile.wasm"),
            hostile_config(&t, ""),
        )
        .expect("the 0.1 hostile driver loads");
    create_with(&s, "l", &[]).unwrap();
    for kv in bad {
        let err = s.mount("l", &opts(kv)).expect_err("refused");
        match &err {
            LayerError::Plan(p) => assert!(p.is_denied(), "{kv:?}: {err}"),
            other => panic!("{kv:?}: expected a refused plan, got {other}"),
        }
        assert_eq!(
            s.get("l").unwrap().mount_count,
            0,
            "{kv:?}: nothing mounted"
        );
    }
    s.mount("l", &opts(("overlay-option", "index=off")))
        .expect("an allowed 0.1 option mounts");
    s.unmount("l", false).unwrap();

    // 0.2 options are typed: a driver cannot say an option the host does not allow (the
    // hostile driver's SDK refuses to spell one), and an allowed one mounts.
    let t = TempStore::new();
    let s = t
        .open_with(&hostile_wasm(), hostile_config(&t, ""))
        .expect("the 0.2 hostile driver loads");
    create_with(&s, "l", &[]).unwrap();
    for kv in bad {
        let err = s.mount("l", &opts(kv)).expect_err("refused");
        assert!(
            matches!(
                &err,
                LayerError::Call(CallError::Driver {
                    error: DriverError::InvalidArgument(m),
                    ..
                }) if m.contains("is not one the host allows")
            ),
            "{kv:?}: {err}"
        );
        assert_eq!(
            s.get("l").unwrap().mount_count,
            0,
            "{kv:?}: nothing mounted"
        );
    }
    s.mount("l", &opts(("overlay-option", "index=off")))
        .expect("an allowed 0.2 option mounts");
    s.unmount("l", false).unwrap();
}

#[test]
fn nanoseconds_reach_the_file_and_invalid_ones_are_refused() {
    if !root_or_skip(
        "nanoseconds_reach_the_file_and_invalid_ones_are_refused",
        "layers are created owned 0:0",
    ) {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let t = TempStore::new();
    let s = t
        .open_with(&hostile_wasm(), hostile_config(&t, ""))
        .expect("the hostile driver loads");
    create_with(&s, "ns", &[("set-times", "123456789")]).unwrap();
    let meta = std::fs::symlink_metadata(t.home(strata_tests::HOSTILE).join("dir/ns")).unwrap();
    assert_eq!((meta.mtime(), meta.mtime_nsec()), (1, 123_456_789));
    assert_eq!((meta.atime(), meta.atime_nsec()), (1, 123_456_789));
    // A second of nanoseconds is no timestamp, and UTIME_NOW (2^30 - 1) must not reach the
    // kernel, which would read it as "now".
    for bad in ["1000000000", "1073741823", "4294967295"] {
        let err = create_with(&s, "bad", &[("set-times", bad)]).expect_err(bad);
        assert!(
            matches!(
                &err,
                LayerError::Call(CallError::Driver {
                    error: DriverError::InvalidArgument(m),
                    ..
                }) if m.contains("nanoseconds must be below 1000000000")
            ),
            "{bad}: {err}"
        );
    }
}

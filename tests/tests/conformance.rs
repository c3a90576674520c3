//! The conformance suite, run on every first-party driver through the library, and through
//! `strata driver test` as a third-party author runs it, including on a driver that forgets
//! whiteouts, which must fail by name.

use std::path::Path;

use strata_conformance::{self as conformance, Report, SuiteOptions};
use strata_tests::{
    TempStore, assert_all_pass, cache_dir, driver_wasm, root_or_skip, run_conformance,
};

fn run_suite(t: &TempStore, wasm: &Path, only: &[&str], deep_chain: usize) -> Report {
    run_conformance(&SuiteOptions {
        driver: wasm.to_string_lossy().into_owned(),
        config: t.config(),
        driver_options: vec![],
        scratch: t.dir.path().to_path_buf(),
        cache_dir: cache_dir(),
        deep_chain,
        only: only.iter().map(|s| s.to_string()).collect(),
    })
}

#[test]
fn vfs_passes_the_conformance_suite() {
    if !root_or_skip(
        "vfs_passes_the_conformance_suite",
        "the suite mounts, chowns and makes device nodes",
    ) {
        return;
    }
    let t = TempStore::new();
    let report = run_suite(
        &t,
        &driver_wasm("strata_driver_vfs"),
        &[],
        conformance::DEFAULT_DEEP_CHAIN,
    );
    assert_all_pass(&report, conformance::DEFAULT_DEEP_CHAIN);
    let quota = report
        .cases
        .iter()
        .find(|c| c.name == "quota/size")
        .unwrap();
    assert!(
        quota
            .note
            .as_deref()
            .is_some_and(|n| n.contains("unsupported")),
        "vfs reports size= unsupported: {quota:?}"
    );
}

#[test]
fn overlay_passes_the_conformance_suite_with_a_500_layer_chain() {
    if !root_or_skip(
        "overlay_passes_the_conformance_suite_with_a_500_layer_chain",
        "the suite mounts, chowns and makes device nodes",
    ) {
        return;
    }
    let t = TempStore::new();
    let report = run_suite(&t, &driver_wasm("strata_driver_overlay"), &[], 500);
    assert_all_pass(&report, 500);
    assert!(
        report.cases.iter().any(|c| c.name == "deep-chain-500"),
        "the deep chain ran at overlayfs's limit"
    );
}

#[test]
fn the_cli_runs_the_suite_and_fails_a_driver_that_forgets_whiteouts() {
    if !root_or_skip(
        "the_cli_runs_the_suite_and_fails_a_driver_that_forgets_whiteouts",
        "the suite mounts, chowns and makes device nodes",
    ) {
        return;
    }
    let t = TempStore::new();
    let scratch = t.dir.path().to_string_lossy().into_owned();
    let vfs = driver_wasm("strata_driver_vfs");
    let (ok, out, err) = t.cli(&[
        "--json",
        "driver",
        "test",
        &vfs.to_string_lossy(),
        "--scratch",
        &scratch,
        "--case",
        "create-empty",
        "--case",
        "diff-apply",
    ]);
    assert!(ok, "vfs passes: {out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(v["passed"], 2, "{v}");
    assert_eq!(v["failed"], 0, "{v}");
    assert_eq!(v["cases"][0]["name"], "create-empty");
    assert_eq!(v["cases"][1]["outcome"], "passed");

    let forgetful = driver_wasm("strata_test_driver_forgetful");
    let (ok, out, err) = t.cli(&[
        "driver",
        "test",
        &forgetful.to_string_lossy(),
        "--scratch",
        &scratch,
        "--case",
        "create-empty",
        "--case",
        "diff-apply",
        "--case",
        "populate/",
    ]);
    assert!(!ok, "a driver that forgets whiteouts must fail: {out}");
    assert!(out.contains("ok    create-empty"), "{out}");
    assert!(out.contains("ok    populate/changes"), "{out}");
    assert!(out.contains("FAIL  diff-apply"), "{out}");
    assert!(
        out.contains("whiteout not applied: /file-remove.txt: expected absent"),
        "the failure names the case, the path, expected and actual: {out}"
    );
    assert!(out.contains("FAIL  populate/apply-diff"), "{out}");
    assert!(out.contains("3 passed, 2 failed"), "{out}");
    assert!(
        err.contains("failed 2 of 5 conformance cases: diff-apply, populate/apply-diff"),
        "{err}"
    );

    let (ok, out, _) = t.cli(&["driver", "test", "--list", "--deep-chain", "500"]);
    assert!(ok);
    assert!(out.lines().any(|l| l == "deep-chain-500"), "{out}");
    assert!(
        out.lines().any(|l| l == "snapshot/128-layers-mount"),
        "{out}"
    );

    let (ok, _, err) = t.cli(&[
        "driver",
        "test",
        &vfs.to_string_lossy(),
        "--scratch",
        &scratch,
        "--case",
        "no-such-case",
    ]);
    assert!(!ok);
    assert!(err.contains("no case matches"), "{err}");
}

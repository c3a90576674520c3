//! A skip in CI is a failure: with `STRATA_TEST_REQUIRE_ALL=1` (which `cargo xtask test`
//! sets when it runs as root, as CI does), a test that cannot run here fails instead of
//! printing `skipped:`. Shown on this test binary itself, run as an unprivileged user
//! (`nobody` when this test runs as root; the current user otherwise), where
//! [`needs_root_probe`] cannot run.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

use strata_tests::{REQUIRE_ALL_ENV, root_or_skip};

/// The uid and gid of `nobody`.
const NOBODY: u32 = 65534;

/// Needs root; run only by [`a_skip_fails_when_every_test_must_run`], as another user.
#[test]
#[ignore = "run by a_skip_fails_when_every_test_must_run as an unprivileged user"]
fn needs_root_probe() {
    if !root_or_skip("needs_root_probe", "the probe of require_all.rs") {
        return;
    }
    assert!(rustix::process::geteuid().is_root());
}

/// Runs [`needs_root_probe`] from a copy of this test binary as an unprivileged user, with
/// `STRATA_TEST_REQUIRE_ALL` set to `value` (or unset).
fn probe_as_unprivileged(value: Option<&str>) -> Output {
    // A copy in a directory anyone may enter: the target dir may be private to root.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.path().join("probe");
    let me = std::env::current_exe().unwrap();
    if std::fs::hard_link(&me, &exe).is_err() {
        std::fs::copy(&me, &exe).unwrap();
    }
    let mut c = Command::new(&exe);
    c.args(["--ignored", "--exact", "needs_root_probe", "--nocapture"])
        .current_dir(dir.path())
        .env_remove(REQUIRE_ALL_ENV);
    if let Some(v) = value {
        c.env(REQUIRE_ALL_ENV, v);
    }
    if rustix::process::geteuid().is_root() {
        // std drops the supplementary groups too when root sets the uid.
        c.uid(NOBODY).gid(NOBODY);
    }
    c.output().expect("running the probe")
}

#[test]
fn a_skip_fails_when_every_test_must_run() {
    let out = probe_as_unprivileged(Some("1"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "the probe must fail as non-root with {REQUIRE_ALL_ENV}=1\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stderr.contains("needs_root_probe cannot run here (needs root")
            && stderr.contains("STRATA_TEST_REQUIRE_ALL=1 requires every test to run"),
        "the failure names the test and why\nstderr: {stderr}"
    );
    assert!(!stderr.contains("skipped:"), "stderr: {stderr}");
}

#[test]
fn a_skip_is_printed_when_not_every_test_must_run() {
    for value in [None, Some("0")] {
        let out = probe_as_unprivileged(value);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{value:?}: the probe skips\nstderr: {stderr}"
        );
        assert!(
            stderr.contains("skipped: needs_root_probe: needs root"),
            "{value:?}: stderr: {stderr}"
        );
    }
}

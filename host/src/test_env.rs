//! The host's unit tests that cannot run in some environments (a device node needs root)
//! give up through [`skip`], the equivalent of `strata_tests::skip` for the integration
//! tests: it prints `skipped: TEST: REASON`, or panics when `STRATA_TEST_REQUIRE_ALL=1`,
//! which `cargo xtask test` sets whenever it runs as root (as CI does). A skip there would
//! be a test that passed without running.

/// The environment variable that turns every skip into a failure (the same one the
/// integration tests read).
pub const REQUIRE_ALL_ENV: &str = "STRATA_TEST_REQUIRE_ALL";

/// Whether the variable's value asks for every test to run: only `1` does.
pub fn requires_all(value: Option<&std::ffi::OsStr>) -> bool {
    value.is_some_and(|v| v == "1")
}

/// Gives up `test` because the environment cannot run it (`reason`): prints why, or panics
/// when [`REQUIRE_ALL_ENV`] is `1`.
pub fn skip(test: &str, reason: &str) {
    skip_if_allowed(
        requires_all(std::env::var_os(REQUIRE_ALL_ENV).as_deref()),
        test,
        reason,
    )
}

/// [`skip`] with the requirement given.
pub fn skip_if_allowed(require_all: bool, test: &str, reason: &str) {
    if require_all {
        panic!(
            "{test} cannot run here ({reason}), and {REQUIRE_ALL_ENV}=1 requires every test \
             to run (a skip in CI is a failure)"
        );
    }
    eprintln!("skipped: {test}: {reason}");
}

/// Whether this process is root; when not, [`skip`]s `test` (`why`: what needs root).
pub fn root_or_skip(test: &str, why: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        true
    } else {
        skip(test, &format!("needs root ({why})"));
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn only_1_requires_every_test() {
        assert!(requires_all(Some(OsStr::new("1"))));
        for v in ["", "0", "yes", "true", " 1"] {
            assert!(!requires_all(Some(OsStr::new(v))), "{v:?}");
        }
        assert!(!requires_all(None));
    }

    #[test]
    fn a_skip_is_allowed_without_the_requirement() {
        skip_if_allowed(false, "a_test", "a reason");
    }

    #[test]
    #[should_panic(expected = "a_test cannot run here (a reason), and STRATA_TEST_REQUIRE_ALL=1")]
    fn a_skip_fails_when_every_test_must_run() {
        skip_if_allowed(true, "a_test", "a reason");
    }
}

//! kill -9 of the `strata` CLI at random points of image import, layer apply, container
//! commit and removal (layer rm, image rm, container rm) on vfs and overlay: the store opens,
//! holds no incomplete or orphaned layer data, and running the operation again gives the
//! right tree (see `strata_tests::crash`). A few seeded trials; `cargo xtask bench crash`
//! runs more than a hundred.

use strata_tests::crash::{self, Fixtures, Op, Rng};

/// Trials per operation and driver here (the benchmark runs more, on bigger inputs).
const TRIALS: usize = 2;
/// Files per layer of the inputs: small, so that each trial takes a second or two.
const FILES: usize = 40;

fn trials_on(driver: &str, seed: u64) {
    let bin = strata_tests::strata_bin();
    let fx = Fixtures::new(FILES);
    let mut rng = Rng::new(seed);
    let mut spans = Vec::new();
    let mut all = Vec::new();
    for op in Op::ALL {
        let (span, trials) =
            crash::run(op, &bin, driver, &fx, TRIALS, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        spans.push((op, driver.to_string(), span));
        all.extend(trials);
    }
    eprint!("{}", crash::summary(&spans, &all));
}

#[test]
fn killed_operations_leave_a_clean_store_on_vfs() {
    if !strata_tests::root_or_skip("killed_operations_leave_a_clean_store_on_vfs", "mounts") {
        return;
    }
    trials_on("vfs", 0x5eed_0001);
}

#[test]
fn killed_operations_leave_a_clean_store_on_overlay() {
    if !strata_tests::root_or_skip("killed_operations_leave_a_clean_store_on_overlay", "mounts") {
        return;
    }
    trials_on("overlay", 0x5eed_0002);
}

/// Apply trials alone, more of them: most kills land while the driver applies onto a layer
/// that has content. The layer must come back exactly as before or exactly as after (tree
/// compare; its undo journal rolls a killed apply back), never removed or set aside.
const APPLY_TRIALS: usize = 6;
/// Files per layer for them: enough that the apply is most of the command's span.
const APPLY_FILES: usize = 400;

fn apply_trials_on(driver: &str, seed: u64) {
    let bin = strata_tests::strata_bin();
    let fx = Fixtures::new(APPLY_FILES);
    let mut rng = Rng::new(seed);
    let (span, trials) = crash::run(Op::Apply, &bin, driver, &fx, APPLY_TRIALS, &mut rng)
        .unwrap_or_else(|e| panic!("{e}"));
    eprint!(
        "{}",
        crash::summary(&[(Op::Apply, driver.to_string(), span)], &trials)
    );
}

#[test]
fn killed_applies_leave_the_layer_as_before_or_after_on_vfs() {
    if !strata_tests::root_or_skip(
        "killed_applies_leave_the_layer_as_before_or_after_on_vfs",
        "mounts",
    ) {
        return;
    }
    apply_trials_on("vfs", 0x5eed_0a01);
}

#[test]
fn killed_applies_leave_the_layer_as_before_or_after_on_overlay() {
    if !strata_tests::root_or_skip(
        "killed_applies_leave_the_layer_as_before_or_after_on_overlay",
        "mounts",
    ) {
        return;
    }
    apply_trials_on("overlay", 0x5eed_0a02);
}

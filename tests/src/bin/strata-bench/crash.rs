//! `crash`: `kill -9` of `target/release/strata` at random points of image import, layer
//! apply, container commit, layer rm, image rm and container rm, on vfs and overlay (needs
//! root): [`TRIALS`] trials per operation and driver, each followed by the checks of
//! `strata_tests::crash` (the store opens; nothing incomplete or orphaned; running the
//! operation again gives the reference tree). Prints, per operation, the measured span the
//! kill delays are drawn from, where the kills landed (tenths of the span), how many
//! processes had ended before their kill, and what the crashes left. The seed is
//! `STRATA_CRASH_SEED` (default the time), printed so a failure can be replayed;
//! `STRATA_CRASH_BIN` names another CLI binary.

use anyhow::{Result, bail};
use strata_tests::crash::{self, Fixtures, Op, Rng};
use strata_tests::target_dir;

/// Trials per operation and driver: 6 operations × 2 drivers × 9 = 108.
pub const TRIALS: usize = 9;
/// Files per layer of the inputs (the test suite's run uses fewer).
pub const FILES: usize = 200;

pub fn run() -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        eprintln!("crash: skipped: needs root (mounts)");
        return Ok(());
    }
    // `STRATA_CRASH_BIN` runs another build of the CLI (e.g. a debug one).
    let bin = std::env::var_os("STRATA_CRASH_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| target_dir().join("release").join("strata"));
    let seed = match std::env::var("STRATA_CRASH_SEED") {
        Ok(s) => s.parse()?,
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64,
    };
    println!(
        "crash: seed {seed} (STRATA_CRASH_SEED), {} as the CLI",
        bin.display()
    );
    let fx = Fixtures::new(FILES);
    let mut rng = Rng::new(seed);
    let mut spans = Vec::new();
    let mut trials = Vec::new();
    for driver in ["vfs", "overlay"] {
        for op in Op::ALL {
            match crash::run(op, &bin, driver, &fx, TRIALS, &mut rng) {
                Ok((span, t)) => {
                    spans.push((op, driver.to_string(), span));
                    trials.extend(t);
                }
                Err(e) => {
                    print!("{}", crash::summary(&spans, &trials));
                    bail!("crash: FAILED after {} good trials: {e}", trials.len());
                }
            }
        }
    }
    print!("{}", crash::summary(&spans, &trials));
    println!(
        "crash: {} trials, all passed (store opened, nothing incomplete or orphaned, re-run gave the reference tree)",
        trials.len()
    );
    Ok(())
}

//! `cargo xtask fuzz [TARGET] [--time SECS]`: builds the fuzz targets of `fuzz/` with
//! coverage instrumentation and runs each (or TARGET) under libFuzzer for SECS seconds,
//! starting from its seed corpus; prints per target the execs, execs per second, corpus size
//! and findings, and fails when there is a finding. docs/fuzzing.md.
//!
//! Stable Rust, nothing installed beyond crates.io: libFuzzer comes from the `libfuzzer-sys`
//! crate (built from its C++ source), and coverage is LLVM's SanitizerCoverage, switched on
//! with stable `-C passes=sancov-module` and `-C llvm-args` flags (the ones cargo-fuzz
//! passes, without a sanitizer, which would need nightly). Only the host and the fuzz crate
//! are instrumented: xtask puts itself in as `RUSTC_WORKSPACE_WRAPPER`, which cargo runs for
//! workspace members only and keeps apart in its fingerprints, so the dependencies
//! (wasmtime among them) are the ones the tests built, not built again, and the normal
//! build's artifacts stay uninstrumented.
//!
//! As root (CI), each target runs in a mount namespace of its own whose root filesystem is
//! read-only except for that directory, so an escape from a scratch directory cannot damage
//! the machine.
//!
//! Everything lands under `<target dir>/fuzz/`: `corpus/T` (grows run after run), `seeds/T`
//! (written anew each run by the `seed` binary), `findings/T` (libFuzzer's `crash-*`,
//! `timeout-*`, `oom-*` inputs; replay one with `<target dir>/debug/T FILE`), `logs/T.log`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{cargo, run, target_dir};

/// The fuzz targets (binaries of the `strata-fuzz` crate), with the longest input each is
/// given.
pub const TARGETS: &[(&str, usize)] = &[
    ("tar_reader", 64 << 10),
    ("tar_apply", 64 << 10),
    ("oci_image", 16 << 10),
    ("containerd_filters", 16 << 10),
    ("mount_plan", 4 << 10),
];
/// Seconds each target runs in `cargo xtask test`.
pub const CI_SECONDS: u64 = 20;
/// Seconds each target runs when `--time` is not given.
const DEFAULT_SECONDS: u64 = 60;
/// One input running longer than this is a finding (a hang).
const INPUT_TIMEOUT_SECS: u64 = 20;
/// A target whose memory grows past this is a finding (an unbounded allocation).
const RSS_LIMIT_MB: u64 = 2048;

/// Set (to anything) when xtask runs as cargo's rustc wrapper.
const WRAPPER_ENV: &str = "STRATA_XTASK_RUSTC_WRAPPER";
/// Crates instrumented for coverage.
const INSTRUMENTED: &[&str] = &[
    "strata_core",
    "strata_sys",
    "strata_containerd",
    "strata_fuzz",
];
const SANCOV_FLAGS: &[&str] = &[
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    // Optimised, so that the fuzzer gets through many inputs, with the checks of a debug
    // build kept: an overflow is a finding.
    "-Copt-level=2",
    "-Cdebug-assertions=on",
    "-Coverflow-checks=on",
];

/// When xtask was started by cargo as its rustc wrapper: runs rustc (argv[1]) with the rest,
/// adding the coverage flags for the instrumented crates. `None` otherwise.
pub fn as_rustc_wrapper() -> Option<Result<()>> {
    std::env::var_os(WRAPPER_ENV)?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (rustc, rest) = args.split_first()?;
    let crate_name = rest
        .windows(2)
        .find(|w| w[0] == "--crate-name")
        .map(|w| w[1].as_str());
    let mut c = Command::new(rustc);
    c.args(rest);
    if crate_name.is_some_and(|n| INSTRUMENTED.contains(&n)) {
        c.args(SANCOV_FLAGS);
    }
    Some(match c.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => std::process::exit(s.code().unwrap_or(1)),
        Err(e) => Err(e).with_context(|| format!("running {rustc}")),
    })
}

/// What one target's run found.
struct Outcome {
    target: &'static str,
    execs: u64,
    execs_per_sec: u64,
    corpus: usize,
    findings: Vec<PathBuf>,
    log: PathBuf,
}

pub fn run_cli(args: &[String]) -> Result<()> {
    let mut seconds = DEFAULT_SECONDS;
    let mut only = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--time" => {
                seconds = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .context("--time takes a number of seconds")?;
            }
            t if !t.starts_with('-') && only.is_none() => only = Some(t.to_string()),
            other => bail!("usage: cargo xtask fuzz [TARGET] [--time SECS] (not `{other}`)"),
        }
    }
    let targets: Vec<(&'static str, usize)> = match &only {
        None => TARGETS.to_vec(),
        Some(t) => vec![
            *TARGETS
                .iter()
                .find(|(name, _)| name == t)
                .with_context(|| {
                    format!(
                        "no fuzz target `{t}`; targets: {}",
                        TARGETS.iter().map(|t| t.0).collect::<Vec<_>>().join(", ")
                    )
                })?,
        ],
    };
    fuzz(&targets, seconds)
}

/// Builds and runs `targets` for `seconds` each; fails on any finding.
pub fn fuzz(targets: &[(&'static str, usize)], seconds: u64) -> Result<()> {
    let work = target_dir().join("fuzz");
    let scratch = work.join("scratch");
    // Seeds: written by an ordinary (uninstrumented) build of the `seed` binary.
    run(cargo().args(["build", "-q", "-p", "strata-fuzz", "--bin", "seed"]))?;
    let seed_bin = target_dir().join("debug/seed");
    let mut c = cargo();
    c.args(["build", "-q", "-p", "strata-fuzz"]);
    for (t, _) in targets {
        c.args(["--bin", t]);
    }
    c.env("RUSTC_WORKSPACE_WRAPPER", std::env::current_exe()?)
        .env(WRAPPER_ENV, "1");
    run(&mut c)?;
    let mut outcomes = Vec::new();
    for &(target, max_len) in targets {
        let seeds = work.join("seeds").join(target);
        let _ = std::fs::remove_dir_all(&seeds);
        run(Command::new(&seed_bin)
            .arg(target)
            .arg(&seeds)
            .env("STRATA_FUZZ_SCRATCH", &scratch))?;
        outcomes.push(run_target(&work, &scratch, target, max_len, seconds)?);
    }
    println!("fuzzing, {seconds} s per target:");
    let mut found = 0;
    for o in &outcomes {
        println!(
            "  {:<20} {:>10} execs {:>7} execs/s  corpus {:>5}  findings {}",
            o.target,
            o.execs,
            o.execs_per_sec,
            o.corpus,
            o.findings.len()
        );
        for f in &o.findings {
            println!("      {} (log: {})", f.display(), o.log.display());
        }
        found += o.findings.len();
    }
    if found > 0 {
        bail!(
            "{found} finding(s); replay one with {}/debug/TARGET FILE",
            target_dir().display()
        );
    }
    Ok(())
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn run_target(
    work: &Path,
    scratch: &Path,
    target: &'static str,
    max_len: usize,
    seconds: u64,
) -> Result<Outcome> {
    let corpus = work.join("corpus").join(target);
    let findings_dir = work.join("findings").join(target);
    let logs = work.join("logs");
    for d in [&corpus, &findings_dir, &logs] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let before = files_in(&findings_dir);
    let log = logs.join(format!("{target}.log"));
    let log_file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    eprintln!(
        "xtask: fuzzing {target} for {seconds} s (log: {})",
        log.display()
    );
    let bin = target_dir().join("debug").join(target);
    let mut c = if crate::is_root() {
        // As root, in a mount namespace of its own where the root filesystem is read-only
        // but for the fuzz directory: a target that escapes its scratch directory (the
        // finding `tar_apply` looks for) cannot damage the machine.
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(r#"mount --bind "$1" "$1" && mount -o remount,bind,ro / && shift && exec "$@""#)
            .arg("sh")
            .arg(work)
            .arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    let status = c
        .arg(&corpus)
        .arg(work.join("seeds").join(target))
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-max_len={max_len}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-artifact_prefix={}/", findings_dir.display()))
        .arg("-print_final_stats=1")
        .env("STRATA_FUZZ_SCRATCH", scratch)
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .status()
        .with_context(|| format!("running fuzz target {target}"))?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let stat = |key: &str| -> u64 {
        text.lines()
            .filter_map(|l| l.strip_prefix(&format!("stat::{key}:")))
            .filter_map(|v| v.trim().parse().ok())
            .next_back()
            .unwrap_or(0)
    };
    let findings: Vec<PathBuf> = files_in(&findings_dir)
        .into_iter()
        .filter(|f| !before.contains(f))
        .filter(|f| {
            f.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with("slow-unit-"))
        })
        .collect();
    if !status.success() && findings.is_empty() {
        bail!(
            "fuzz target {target} failed ({status}) without saving an input; see {}",
            log.display()
        );
    }
    Ok(Outcome {
        target,
        execs: stat("number_of_executed_units"),
        execs_per_sec: stat("average_exec_per_sec"),
        corpus: files_in(&corpus).len(),
        findings,
        log,
    })
}

//! `cargo xtask bench`: figures, each with a baseline measured in the same run.
//!
//! - `ls`: warm `strata layer ls` wall time (component cached, 10 layers in the store) against
//!   spawning `/bin/true` — the floor of any command. Target: ≤ 20 ms.
//! - `host-call`, `lifecycle`, `overlay`, `btrfs`, `zfs`, `apply-memory`, `import`,
//!   `containerd`: from the `strata-bench` binary (see tests/src/bin/strata-bench; its
//!   `strata-peak-rss` helper measures a command's peak memory). `import` times
//!   `target/release/strata image import` (built here by `build_all`, drivers found through
//!   `STRATA_DRIVER_DIR`) against `tar -xf`, skopeo and containerd; as root it installs what
//!   it needs with apt-get and caches a debootstrapped image in `target/bench-cache`.
//!   `containerd` times `ctr images import` and `ctr run` with `target/release/strata serve`
//!   as containerd's proxy snapshotter against containerd's overlayfs, on the same image.
//! - `crash`: ≥ 100 trials of `kill -9` at random points of image import, layer apply,
//!   container commit and removal, on vfs and overlay; prints where the kills landed and
//!   what each left, and fails on the first store that is not clean (see
//!   tests/src/crash.rs).
//! - `serve-load` puts 1,000 concurrent clients (Prepare, Commit, Remove) on
//!   `target/release/strata serve` against one sequential client, and SIGTERMs it under load.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{build_all, target_dir, wasm_dir, workspace_root};

const RUNS: usize = 31;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time_command(cmd: &mut Command) -> Result<Duration> {
    let start = Instant::now();
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let took = start.elapsed();
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(took)
}

fn strata(bin: &Path, root: &Path) -> Command {
    let mut c = Command::new(bin);
    c.arg("--root")
        .arg(root.join("root"))
        .arg("--run-root")
        .arg(root.join("run"));
    c
}

fn bench_ls(bin: &Path) -> Result<()> {
    let tmp = std::env::temp_dir().join(format!("strata-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let result = (|| -> Result<()> {
        for i in 0..10 {
            time_command(strata(bin, &tmp).args(["layer", "create", "--id", &format!("l{i}")]))?;
        }
        // Warm: the component is compiled and cached by the commands above.
        let ls: Vec<Duration> = (0..RUNS)
            .map(|_| time_command(strata(bin, &tmp).args(["layer", "ls"])))
            .collect::<Result<_>>()?;
        let floor: Vec<Duration> = (0..RUNS)
            .map(|_| time_command(&mut Command::new("/bin/true")))
            .collect::<Result<_>>()?;
        let (ls, floor) = (median(ls), median(floor));
        println!(
            "ls: warm `strata layer ls` {:.2} ms (target ≤ 20 ms); spawning /bin/true {:.2} ms; ratio {:.1}x",
            ls.as_secs_f64() * 1e3,
            floor.as_secs_f64() * 1e3,
            ls.as_secs_f64() / floor.as_secs_f64()
        );
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

pub fn run(args: &[String]) -> Result<()> {
    let bin = build_all(true)?;
    let which = |name: &str| args.is_empty() || args.iter().any(|a| a == name);
    if which("ls") {
        bench_ls(&bin)?;
    }
    let rest: Vec<&str> = [
        "host-call",
        "lifecycle",
        "overlay",
        "btrfs",
        "zfs",
        "apply-memory",
        "import",
        "containerd",
        "crash",
        "serve-load",
    ]
    .into_iter()
    .filter(|n| which(n))
    .collect();
    if !rest.is_empty() {
        crate::run(
            Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .current_dir(workspace_root())
                .args([
                    "build",
                    "--release",
                    "-p",
                    "strata-tests",
                    "--bin",
                    "strata-bench",
                    "--bin",
                    "strata-peak-rss",
                ]),
        )?;
        run_bench_binary(&rest)?;
    }
    Ok(())
}

fn run_bench_binary(which: &[&str]) -> Result<()> {
    crate::run(
        Command::new(target_dir().join("release").join("strata-bench"))
            .args(which)
            .env("STRATA_TEST_WASM_DIR", wasm_dir())
            .env("STRATA_DRIVER_DIR", wasm_dir()),
    )
}

//! `containerd`: containerd with Strata as its proxy snapshotter (`strata serve
//! --containerd-socket`) next to containerd's built-in `overlayfs` snapshotter, same image,
//! same daemons' configuration, same run of the bench.
//!
//! # The image
//!
//! The `import` bench's Debian image (`debootstrap --variant=minbase bookworm`, three layers
//! with whiteouts, an opaque directory, hardlinks and device nodes; made once and cached in
//! `target/bench-cache/debian-minbase/`), as its gzip OCI archive (the `oci-gzip.tar` that
//! `ctr images import` reads).
//!
//! # A run
//!
//! Every run of every snapshotter starts from nothing, on a new ext4 (the `import` bench's
//! [`FreshFs`]: a sparse file under `/var/tmp`, `mkfs.ext4`, `mount -o loop,noinit_itable`),
//! with new daemons, all started untimed:
//!
//! 1. `strata --root MNT/strata --run-root MNT/strata-run serve --containerd-socket
//!    DIR/strata.sock` (overlay driver, the default; driver components from
//!    `STRATA_DRIVER_DIR`, compiled once into `target/bench-cache/strata-components`), and
//!    the bench waits for its socket;
//! 2. a private containerd from its own `config.toml`: version 2, `root` and `state` on the
//!    fresh filesystem (so the task's rootfs mount is beneath it), its own gRPC and ttrpc
//!    sockets in DIR, unused plugins disabled (CRI among them), and
//!    `[proxy_plugins.strata] type = "snapshot" address = "DIR/strata.sock"`;
//! 3. once `ctr version` answers, one snapshot is prepared and removed with each snapshotter
//!    (`ctr snapshots --snapshotter S prepare probe`, `rm probe`), retried while containerd
//!    reports the proxy unavailable: containerd dials its proxy plugins in the background
//!    with a back-off of up to 3 s, and a listing would answer from containerd's own records;
//! 4. `sync`.
//!
//! Both daemons run whichever snapshotter is measured, so the two differ only in the
//! `--snapshotter` given to `ctr`. Then, timed, the wall time of each command (process start
//! to exit, output captured), with `sync` (untimed) between them:
//!
//! - import: `ctr -n bench images import --snapshotter S --base-name bench ARCHIVE`, which
//!   writes the blobs into containerd's content store and unpacks the three layers into the
//!   snapshotter (prepare, apply the layer through the mounts the snapshotter returns,
//!   commit: the same diff applier for both);
//! - run: `ctr -n bench run --rm --snapshotter S IMAGE bench-true-N /bin/true`: the
//!   container's snapshot prepared on the image's top layer, its mounts made by the shim,
//!   runc's start and exit of `/bin/true`, then the task, the container and its snapshot
//!   removed (containerd removes the snapshot from its records at once and from the
//!   snapshotter at its next garbage collection, for both alike). [`CONTAINERS`] containers
//!   one after the other, and the run's figure is their median: one container takes 0.12 to
//!   0.2 s, and a single sample moves by ±20 % with the machine's other work.
//!
//! The figures are medians of [`RUNS`] runs of each (import + run is the median of each
//! run's sum), and their ratio strata / overlayfs. Rounds interleave the snapshotters,
//! alternating which goes first, so drift of the machine and the host disk's slowdown after
//! the previous run's filesystem is deleted fall on both alike.
//!
//! An untimed check round first (its times printed apart) warms the page cache and checks
//! what each snapshotter made: after the import and the run, `ctr snapshots ls` lists the
//! image's three layers as committed snapshots and nothing else, and `ctr run --rm ...
//! /bin/sh -c 'cat /etc/os-release'` prints the image's `/etc/os-release` byte for byte.
//!
//! On the way out, errors included: leftover tasks are killed and deleted, containerd and
//! then strata are stopped (SIGTERM; SIGKILL after 20 s), everything mounted beneath the
//! run's filesystem and the filesystem are unmounted and its file removed, and the
//! directories runc and ctr leave in `/run/containerd` go if they were not there before
//! (when empty). containerd, runc and ctr are installed with apt-get when missing; when that
//! fails the bench prints `skipped: containerd: <reason>`.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use strata_tests::target_dir;

use crate::import::{
    Apt, CpuTicks, FreshFs, Leftovers, SUITE, check, median, prepare_image, tail, timed,
};

/// Timed runs per snapshotter.
const RUNS: usize = 5;
/// Containers run one after the other in each run; the run's figure is their median.
const CONTAINERS: usize = 5;
/// What containerd and runc make outside the run's directories with the default runc
/// options, deepest first: removed at the end when empty and not there at the start.
const RUN_LEFTOVERS: [&str; 5] = [
    "/run/containerd/runc/bench",
    "/run/containerd/runc",
    "/run/containerd/fifo",
    "/run/containerd/s",
    "/run/containerd",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Snapshotter {
    Strata,
    Overlayfs,
}

const SNAPSHOTTERS: [Snapshotter; 2] = [Snapshotter::Strata, Snapshotter::Overlayfs];

impl Snapshotter {
    /// The name given to `ctr --snapshotter`.
    fn name(self) -> &'static str {
        match self {
            Snapshotter::Strata => "strata",
            Snapshotter::Overlayfs => "overlayfs",
        }
    }
}

/// One run's figures.
#[derive(Clone, Copy)]
struct Times {
    import: Duration,
    run: Duration,
}

pub fn run() -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        println!("containerd: skipped (needs root: containerd, loop mounts, overlay mounts)");
        return Ok(());
    }
    let started = Instant::now();
    let strata = target_dir().join("release").join("strata");
    if !strata.is_file() {
        bail!(
            "{} is missing: run `cargo xtask bench containerd`, which builds it",
            strata.display()
        );
    }
    let help = Command::new(&strata)
        .args(["serve", "--help"])
        .output()
        .context("running strata")?;
    if !help.status.success() {
        bail!(
            "{} has no `serve` command: {}",
            strata.display(),
            tail(&help.stderr)
        );
    }
    let _leftovers = Leftovers::of(&RUN_LEFTOVERS);
    let mut apt = Apt::default();
    apt.ensure("mkfs.ext4", &["e2fsprogs"])?;
    for (command, packages) in [
        ("containerd", &["containerd", "runc"][..]),
        ("ctr", &["containerd"][..]),
        ("runc", &["runc"][..]),
    ] {
        if let Err(e) = apt.ensure(command, packages) {
            println!("skipped: containerd: {e:#}");
            return Ok(());
        }
    }
    let versions = ["containerd", "runc"]
        .map(|tool| {
            Command::new(tool)
                .arg("--version")
                .output()
                .ok()
                .and_then(|o| {
                    let text = String::from_utf8_lossy(&o.stdout).into_owned();
                    text.lines().next().map(str::to_string)
                })
                .unwrap_or_else(|| format!("{tool}: version unknown"))
        })
        .join("; ");
    let image = prepare_image(&mut apt)?;
    let variant = image
        .variants
        .iter()
        .find(|v| v.name == "gzip")
        .ok_or_else(|| anyhow!("the image has no gzip variant"))?;
    let os_release_path = target_dir().join("bench-cache/debian-minbase/rootfs/etc/os-release");
    let os_release = std::fs::read(&os_release_path)
        .with_context(|| format!("reading {}", os_release_path.display()))?;
    let component_cache = target_dir().join("bench-cache").join("strata-components");
    std::fs::create_dir_all(&component_cache)?;
    let bench = Bench {
        strata,
        component_cache,
        archive: variant.archive.clone(),
        layers: image.tars.len(),
        os_release,
    };
    eprintln!(
        "containerd: image ready ({:.1} s)",
        started.elapsed().as_secs_f64()
    );

    let cpu_at_start = CpuTicks::now();
    let mut warm_up = Vec::new();
    for s in SNAPSHOTTERS {
        let t = bench
            .measure(s, true)
            .with_context(|| format!("check round, {}", s.name()))?;
        eprintln!(
            "containerd: check round, {}: import {:.3} s, run {:.3} s, results checked",
            s.name(),
            t.import.as_secs_f64(),
            t.run.as_secs_f64()
        );
        warm_up.push((s, t));
    }
    let mut times: BTreeMap<Snapshotter, Vec<Times>> = BTreeMap::new();
    for run in 0..RUNS {
        let mut order = SNAPSHOTTERS;
        if run % 2 == 1 {
            order.reverse();
        }
        for s in order {
            let t = bench
                .measure(s, false)
                .with_context(|| format!("run {}, {}", run + 1, s.name()))?;
            eprintln!(
                "containerd: run {}/{RUNS}, {}: import {:.3} s, run {:.3} s",
                run + 1,
                s.name(),
                t.import.as_secs_f64(),
                t.run.as_secs_f64()
            );
            times.entry(s).or_default().push(t);
        }
    }
    let others = cpu_at_start.and_then(|start| start.others_share());
    println!(
        "containerd: Debian {SUITE} minbase (debootstrap), {} layers, {:.1} MB uncompressed, \
         {} tar entries ({} regular files); gzip OCI archive, layer blobs {:.1} MB",
        image.tars.len(),
        image.bytes as f64 / 1e6,
        image.entries,
        image.files,
        variant.blob_bytes as f64 / 1e6,
    );
    println!("containerd: {versions}");
    print_table(&times, &warm_up);
    println!(
        "  machine: {} CPUs; other processes (kernel I/O threads and the daemons included) kept \
         them {} busy during the runs",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        others.map_or("?".into(), |s| format!("{:.0} %", s * 100.0)),
    );
    eprintln!(
        "containerd: done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn print_table(times: &BTreeMap<Snapshotter, Vec<Times>>, warm_up: &[(Snapshotter, Times)]) {
    type Pick = fn(&Times) -> Duration;
    let rows: [(&str, Pick); 3] = [
        ("ctr images import (unpack)", |t| t.import),
        ("ctr run --rm IMAGE /bin/true", |t| t.run),
        ("import + run", |t| t.import + t.run),
    ];
    let med = |s: Snapshotter, pick: Pick| {
        times
            .get(&s)
            .map(|v| median(v.iter().map(pick).collect()).as_secs_f64())
    };
    println!(
        "containerd: median wall time of {RUNS} runs, each snapshotter in each run on a fresh \
         loop-mounted ext4 with its own containerd and strata serve (a run's `ctr run` figure: the \
         median of {CONTAINERS} containers in a row); ratio strata / overlayfs"
    );
    println!(
        "  {:<32} {:>10} {:>10} {:>18}",
        "seconds", "strata", "overlayfs", "strata/overlayfs"
    );
    for (label, pick) in rows {
        let (s, o) = (
            med(Snapshotter::Strata, pick),
            med(Snapshotter::Overlayfs, pick),
        );
        let show = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.3}"));
        let ratio = match (s, o) {
            (Some(s), Some(o)) => format!("{:.2}x", s / o),
            _ => "-".into(),
        };
        println!("  {label:<32} {:>10} {:>10} {ratio:>18}", show(s), show(o));
    }
    for (s, t) in warm_up {
        println!(
            "  check round (untimed figures, cold page cache), {}: import {:.3} s, run {:.3} s",
            s.name(),
            t.import.as_secs_f64(),
            t.run.as_secs_f64()
        );
    }
    println!("  runs (s), in order:");
    for (s, v) in times {
        let rows: [(&str, Pick); 2] = [("import", |t| t.import), ("run", |t| t.run)];
        for (label, pick) in rows {
            println!(
                "    {:<10} {label:<7} {}",
                s.name(),
                v.iter()
                    .map(|t| format!("{:.3}", pick(t).as_secs_f64()))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
    }
}

struct Bench {
    strata: PathBuf,
    component_cache: PathBuf,
    /// The image's gzip OCI archive.
    archive: PathBuf,
    /// How many layers the image has.
    layers: usize,
    /// The image's `/etc/os-release`.
    os_release: Vec<u8>,
}

impl Bench {
    /// One run of snapshotter `s` on a fresh filesystem with fresh daemons; with `verify`,
    /// checks what it made.
    fn measure(&self, s: Snapshotter, verify: bool) -> Result<Times> {
        // Dropped in reverse: containerd, strata, then the filesystem.
        let fs = FreshFs::new()?;
        let strata = StrataServe::start(self, &fs)?;
        let containerd = Containerd::start(&fs, &strata.socket)?;
        let logs = || format!("{}\n{}", containerd.log_tail(), strata.log_tail());
        for probe in SNAPSHOTTERS {
            containerd.probe(probe).with_context(logs)?;
        }
        rustix::fs::sync();
        let import = timed(
            containerd
                .ctr()
                .args(["images", "import", "--snapshotter", s.name()])
                .args(["--base-name", "bench"])
                .arg(&self.archive),
        )
        .with_context(logs)?;
        let image = containerd.image_name().with_context(logs)?;
        rustix::fs::sync();
        let mut runs = Vec::with_capacity(CONTAINERS);
        for i in 1..=CONTAINERS {
            runs.push(
                timed(
                    containerd
                        .ctr()
                        .args(["run", "--rm", "--snapshotter", s.name(), &image])
                        .arg(format!("bench-true-{i}"))
                        .arg("/bin/true"),
                )
                .with_context(logs)?,
            );
        }
        let run = median(runs);
        if verify {
            self.verify(&containerd, s, &image).with_context(logs)?;
        }
        Ok(Times { import, run })
    }

    fn verify(&self, containerd: &Containerd, s: Snapshotter, image: &str) -> Result<()> {
        let out = check(
            containerd
                .ctr()
                .args(["snapshots", "--snapshotter", s.name(), "ls"]),
        )?;
        let listed = String::from_utf8_lossy(&out.stdout).into_owned();
        let rows: Vec<&str> = listed.lines().skip(1).filter(|l| !l.is_empty()).collect();
        let committed = rows.iter().filter(|l| l.contains("Committed")).count();
        if committed != self.layers || rows.len() != self.layers {
            bail!(
                "after the import and a run, the {} snapshotter lists {} snapshots, {committed} \
                 committed, not {} committed:\n{listed}",
                s.name(),
                rows.len(),
                self.layers
            );
        }
        let out = check(
            containerd
                .ctr()
                .args(["run", "--rm", "--snapshotter", s.name()])
                .args([image, "bench-check", "/bin/sh", "-c", "cat /etc/os-release"]),
        )?;
        if out.stdout != self.os_release {
            bail!(
                "`cat /etc/os-release` in a container on the {} snapshotter printed {:?}, not \
                 the image's {:?}",
                s.name(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&self.os_release)
            );
        }
        Ok(())
    }
}

/// Waits until `path` exists, failing when `child` exits first or after `limit`.
fn wait_for_socket(path: &Path, child: &mut Child, what: &str, limit: Duration) -> Result<()> {
    let started = Instant::now();
    while !path.exists() {
        if let Some(status) = child.try_wait()? {
            bail!(
                "{what} exited ({status}) before {} appeared",
                path.display()
            );
        }
        if started.elapsed() > limit {
            bail!(
                "{} did not appear within {} s",
                path.display(),
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Stops `child`: SIGTERM, then SIGKILL after 20 s.
fn stop(child: &mut Child) {
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    let pid = rustix::process::Pid::from_child(child);
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `strata serve --containerd-socket` for one run; stopped when dropped.
struct StrataServe {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl StrataServe {
    fn start(bench: &Bench, fs: &FreshFs) -> Result<StrataServe> {
        let socket = fs.scratch().join("strata.sock");
        let log = fs.scratch().join("strata.log");
        let out = File::create(&log)?;
        let child = Command::new(&bench.strata)
            .arg("--root")
            .arg(fs.at("strata"))
            .arg("--run-root")
            .arg(fs.at("strata-run"))
            .arg("serve")
            .arg("--containerd-socket")
            .arg(&socket)
            .env(
                strata_host::paths::COMPONENT_CACHE_ENV,
                &bench.component_cache,
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting strata serve")?;
        let mut serve = StrataServe { child, socket, log };
        // The first start compiles the driver component into the cache.
        wait_for_socket(
            &serve.socket,
            &mut serve.child,
            "strata serve",
            Duration::from_secs(120),
        )
        .map_err(|e| anyhow!("{e:#}: {}", serve.log_tail()))?;
        Ok(serve)
    }

    fn log_tail(&self) -> String {
        format!(
            "strata log: {}",
            tail(&std::fs::read(&self.log).unwrap_or_default())
        )
    }
}

impl Drop for StrataServe {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A private containerd for one run (import's, with strata as the proxy snapshotter
/// `strata`); its tasks killed and deleted before it is stopped, when dropped.
struct Containerd(crate::import::Containerd);

impl std::ops::Deref for Containerd {
    type Target = crate::import::Containerd;

    fn deref(&self) -> &crate::import::Containerd {
        &self.0
    }
}

impl Containerd {
    fn start(fs: &FreshFs, strata_socket: &Path) -> Result<Containerd> {
        let proxy = format!(
            "\n[proxy_plugins]\n  [proxy_plugins.strata]\n    type = \"snapshot\"\n    \
             address = {strata_socket:?}\n"
        );
        Ok(Containerd(crate::import::Containerd::start_with(
            fs, &proxy,
        )?))
    }

    fn probe(&self, s: Snapshotter) -> Result<()> {
        let started = Instant::now();
        loop {
            let out = self
                .ctr()
                .args(["snapshots", "--snapshotter", s.name(), "prepare", "probe"])
                .stdin(Stdio::null())
                .output()
                .context("running ctr")?;
            if out.status.success() {
                check(
                    self.ctr()
                        .args(["snapshots", "--snapshotter", s.name(), "rm", "probe"]),
                )?;
                return Ok(());
            }
            let err = String::from_utf8_lossy(&out.stderr);
            if !err.contains("unavailable") || started.elapsed() > Duration::from_secs(30) {
                bail!(
                    "preparing a snapshot with the {} snapshotter failed: {}",
                    s.name(),
                    tail(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The name of the one image in the namespace.
    fn image_name(&self) -> Result<String> {
        let out = check(self.ctr().args(["images", "ls", "-q"]))?;
        let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        match &names[..] {
            [name] => Ok(name.clone()),
            _ => bail!("after the import, containerd lists the images {names:?}, not one"),
        }
    }

    fn log_tail(&self) -> String {
        format!("containerd log: {}", self.0.log_tail())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if matches!(self.0.child.try_wait(), Ok(None)) {
            // Tasks left by a failed run: their rootfs is mounted beneath the run's state.
            let tasks = self
                .ctr()
                .args(["tasks", "ls", "-q"])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output();
            if let Ok(out) = tasks {
                for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = self
                        .ctr()
                        .args(["tasks", "delete", "--force", id])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
        // crate::import::Containerd's own drop stops the daemon.
    }
}

//! `import`: `strata image import` of a realistic image, next to a floor and two peers, each
//! figure a median over runs that each start on a freshly made filesystem.
//!
//! # The image
//!
//! `debootstrap --variant=minbase bookworm` (about 205 MB in 7,000 tar entries; made once and
//! cached in `target/bench-cache/debian-minbase/`; debootstrap is installed with apt-get when
//! missing), split into three layer tars written with the `tar` crate (GNU headers: mode with
//! setuid/setgid bits, numeric owner, mtime, symlinks, hardlinks, device nodes):
//!
//! 1. `usr/`;
//! 2. everything else (with `/dev`'s device nodes and the merged-usr symlinks);
//! 3. a top layer as an image build makes one: changed files (`/etc/hostname`, `/etc/passwd`,
//!    `/etc/group`), a new tree under `/opt/app` (200 small files, a 1 MiB binary, a hardlink,
//!    a symlink), a home owned by uid 1000, `.wh.` whiteouts deleting files and whole trees
//!    from the lower layers (`/etc/motd`, `/usr/share/man`, apt's caches, three locales) and
//!    one opaque directory (`/usr/share/doc/.wh..wh..opq`) with a new file in it.
//!
//! [`strata_tests::oci`] writes the tars as OCI image layouts with gzip and with zstd layer
//! blobs, and as OCI archives (the same layouts as tars) for `ctr`, cached next to the tars.
//!
//! # What is timed
//!
//! Wall time of the command (process start to exit, output captured), median of [`RUNS`] runs,
//! for each variant (gzip, zstd):
//!
//! - `strata image import LAYOUT` with the overlay driver (the default) and with vfs, into a
//!   fresh root and run root. Compiled driver components are cached in a directory outside the
//!   root that the bench empties when it starts: the warm-up run compiles (its time is printed
//!   apart); the timed runs use the cache, as every import after a store's first does.
//! - The floor: GNU `tar -xf L --numeric-owner -C DIR` of each uncompressed layer tar, in
//!   order, into one directory (no whiteout processing: a lower bound, not an equivalent).
//! - For scale, `tar -x` of the compressed blobs the same way (`-z`, or `--zstd`): the
//!   floor plus decompression by an external process.
//! - skopeo: `skopeo copy oci:LAYOUT:latest containers-storage:[overlay@ROOT+RUNROOT]bench:latest`
//!   with a private `--policy` (insecureAcceptAnything) and `--tmpdir` on the fresh filesystem.
//! - containerd: a private daemon per run (its own `config.toml`: version 2, `root` and `state`
//!   on the fresh filesystem, its own gRPC socket, unused plugins disabled), started and
//!   stopped untimed, timing `ctr images import --snapshotter overlayfs --base-name bench
//!   ARCHIVE`, which unpacks into the snapshotter (`--no-unpack` is not given; ctr 1.6
//!   unpacks by default).
//!
//! The best peer is the faster of skopeo and containerd in the same variant. Targets: strata
//! overlay ≤ 0.8× the best peer and ≤ 1.3× the floor.
//!
//! Every run gets a new ext4: a sparse file under `/var/tmp`, `mkfs.ext4`, `mount -o
//! loop,noinit_itable` (no inode-table zeroing thread competing with the run), `sync` before
//! the timed command; unmounted and deleted after it. The host disk slows file creation 5–15×
//! for a while after a large delete, so reusing one filesystem would measure its recovery.
//! Rounds interleave the tools (run i of every tool, then run i+1), so drift of the machine
//! spreads over all of them. An untimed warm-up round first warms the page cache and checks
//! results: the tree strata shows with the image's top layer mounted is compared entry by
//! entry (type, mode, owner, mtime, size, content digest, link target, device numbers, shared
//! inodes of hardlinks) with the merge of the layer tars computed here; skopeo's store must
//! list three layers and containerd must hold three committed snapshots.
//!
//! Peers missing are installed with apt-get (skopeo; containerd and runc; zstd for `tar
//! --zstd`). A peer that cannot be installed or fails is reported as `skipped: <peer>:
//! <reason>` and the bench goes on. On the way out, errors included, daemons are stopped,
//! everything mounted beneath a run's filesystem and the filesystem itself are unmounted,
//! loop devices detached and temporary files removed, and skopeo's blob info cache
//! (`/var/lib/containers/cache`, which it writes whatever the store) goes if it was not there
//! before: only the image cache stays.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};
use strata_host::sys::mount::{is_mount_point, mount_points_beneath, unmount};
use strata_tests::oci::{self, Compression};
use strata_tests::target_dir;
use tar::{EntryType, Header};

/// Timed runs per tool and variant.
const RUNS: usize = 5;
/// Size of each run's (sparse) filesystem.
const FS_BYTES: u64 = 4 << 30;
/// The cached layers and layouts; bump when the image changes, and it is rebuilt.
const IMAGE_VERSION: &str = "image-v1";
const MIRROR: &str = "http://deb.debian.org/debian";
pub(crate) const SUITE: &str = "bookworm";
/// The reference in the layouts' `index.json` (a tag, as skopeo and buildah write it).
const REFERENCE: &str = "latest";
/// mtime of the entries the top layer makes up (2026-01-01).
const TOP_MTIME: u64 = 1_767_225_600;

/// What skopeo makes outside its store (c/image's blob info cache, fixed for root), deepest
/// first: removed at the end when they were not there at the start.
const SKOPEO_LEFTOVERS: [&str; 3] = [
    "/var/lib/containers/cache/blob-info-cache-v1.boltdb",
    "/var/lib/containers/cache",
    "/var/lib/containers",
];

pub fn run() -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        println!("import: skipped (needs root: debootstrap, loop mounts, overlay mounts)");
        return Ok(());
    }
    let started = Instant::now();
    let _leftovers = Leftovers::of(&SKOPEO_LEFTOVERS);
    let strata = target_dir().join("release").join("strata");
    if !strata.is_file() {
        bail!(
            "{} is missing: run `cargo xtask bench import`, which builds it",
            strata.display()
        );
    }
    let help = Command::new(&strata)
        .args(["image", "import", "--help"])
        .output()
        .context("running strata")?;
    if !help.status.success() {
        bail!(
            "{} has no `image import` command: {}",
            strata.display(),
            tail(&help.stderr)
        );
    }
    let mut apt = Apt::default();
    apt.ensure("mkfs.ext4", &["e2fsprogs"])?;
    apt.ensure("tar", &["tar"])?;
    let image = prepare_image(&mut apt)?;
    eprintln!(
        "import: image ready ({:.1} s)",
        started.elapsed().as_secs_f64()
    );

    let mut skipped = BTreeMap::new();
    for (tool, command, packages) in [
        (Tool::Skopeo, "skopeo", &["skopeo"][..]),
        (Tool::Containerd, "containerd", &["containerd", "runc"][..]),
        (Tool::Decompress, "zstd", &["zstd"][..]),
    ] {
        if let Err(e) = apt.ensure(command, packages) {
            println!("skipped: {}: {e:#}", tool.label());
            skipped.insert(tool, format!("{e:#}"));
        }
    }
    let component_cache = target_dir().join("bench-cache").join("strata-components");
    match std::fs::remove_dir_all(&component_cache) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).context("emptying the component cache");
        }
        _ => {}
    }
    std::fs::create_dir_all(&component_cache)?;
    let bench = Bench {
        strata,
        component_cache,
        image,
    };

    let cpu_at_start = CpuTicks::now();
    let mut failed: BTreeMap<(usize, Tool), String> = BTreeMap::new();
    let mut times: BTreeMap<(usize, Tool), Vec<Duration>> = BTreeMap::new();
    let mut cold: Vec<(Tool, Duration)> = Vec::new();
    let report_failure = |v: usize, tool: Tool, e: anyhow::Error, failed: &mut BTreeMap<_, _>| {
        let variant = bench.image.variants[v].name;
        let what = if tool.is_peer() { "skipped" } else { "failed" };
        println!("{what}: {}: {variant}: {e:#}", tool.label());
        failed.insert((v, tool), format!("{e:#}"));
    };
    for (v, variant) in bench.image.variants.iter().enumerate() {
        for tool in TOOLS {
            if skipped.contains_key(&tool) {
                continue;
            }
            match bench.measure(tool, variant, true) {
                Ok(d) => {
                    eprintln!(
                        "import: {} warm-up, {}: {:.3} s{}",
                        variant.name,
                        tool.label(),
                        d.as_secs_f64(),
                        if tool.is_checked() {
                            ", result checked"
                        } else {
                            ""
                        }
                    );
                    if v == 0 && tool.is_strata() {
                        cold.push((tool, d));
                    }
                }
                Err(e) => report_failure(v, tool, e, &mut failed),
            }
        }
        for run in 0..RUNS {
            for tool in TOOLS {
                if skipped.contains_key(&tool) || failed.contains_key(&(v, tool)) {
                    continue;
                }
                match bench.measure(tool, variant, false) {
                    Ok(d) => {
                        eprintln!(
                            "import: {} run {}/{RUNS}, {}: {:.3} s",
                            variant.name,
                            run + 1,
                            tool.label(),
                            d.as_secs_f64()
                        );
                        times.entry((v, tool)).or_default().push(d);
                    }
                    Err(e) => report_failure(v, tool, e, &mut failed),
                }
            }
        }
    }
    let others = cpu_at_start.and_then(|start| start.others_share());
    print_table(&bench.image, &times, &cold);
    println!(
        "  machine: {} CPUs; other processes (kernel I/O threads included) kept them {} busy \
         during the runs (figures inflate with it: compare ratios within one run)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        others.map_or("?".into(), |s| format!("{:.0} %", s * 100.0)),
    );
    eprintln!("import: done in {:.0} s", started.elapsed().as_secs_f64());
    let broken: Vec<String> = failed
        .iter()
        .filter(|((_, tool), _)| !tool.is_peer())
        .map(|((v, tool), e)| format!("{} ({}): {e}", tool.label(), bench.image.variants[*v].name))
        .collect();
    if !broken.is_empty() {
        bail!("{}", broken.join("; "));
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Tool {
    Floor,
    Decompress,
    StrataOverlay,
    StrataVfs,
    Skopeo,
    Containerd,
}

const TOOLS: [Tool; 6] = [
    Tool::Floor,
    Tool::Decompress,
    Tool::StrataOverlay,
    Tool::StrataVfs,
    Tool::Skopeo,
    Tool::Containerd,
];

impl Tool {
    fn label(self) -> &'static str {
        match self {
            Tool::Floor => "tar -xf of the uncompressed layers (floor)",
            Tool::Decompress => "tar -x of the compressed blobs",
            Tool::StrataOverlay => "strata image import, overlay",
            Tool::StrataVfs => "strata image import, vfs",
            Tool::Skopeo => "skopeo copy to containers-storage overlay",
            Tool::Containerd => "ctr images import, containerd overlayfs",
        }
    }

    fn is_peer(self) -> bool {
        matches!(self, Tool::Skopeo | Tool::Containerd | Tool::Decompress)
    }

    /// Whether the warm-up run checks what the tool made.
    fn is_checked(self) -> bool {
        !matches!(self, Tool::Floor | Tool::Decompress)
    }

    fn is_strata(self) -> bool {
        matches!(self, Tool::StrataOverlay | Tool::StrataVfs)
    }
}

/// CPU time, in clock ticks: of the whole machine, and of this process with its children.
#[derive(Clone, Copy)]
pub(crate) struct CpuTicks {
    busy: u64,
    total: u64,
    own: u64,
}

impl CpuTicks {
    pub(crate) fn now() -> Option<CpuTicks> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        // cpu user nice system idle iowait irq softirq steal …
        let f: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .map_while(|v| v.parse().ok())
            .collect();
        let busy = f.get(..3)?.iter().sum::<u64>() + f.get(5..8)?.iter().sum::<u64>();
        let idle = f[3] + f[4];
        // /proc/self/stat after the command's `)`: field 3 (state) on; utime, stime, cutime and
        // cstime are fields 14 to 17. Every child this bench starts is waited for.
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        let fields: Vec<&str> = own[own.rfind(')')? + 1..].split_whitespace().collect();
        let own = fields
            .get(11..15)?
            .iter()
            .map(|v| v.parse::<u64>().ok())
            .sum::<Option<u64>>()?;
        Some(CpuTicks {
            busy,
            total: busy + idle,
            own,
        })
    }

    /// The share of all CPUs' time since `self` that other processes used.
    pub(crate) fn others_share(self) -> Option<f64> {
        let now = CpuTicks::now()?;
        let total = now.total.checked_sub(self.total)?.max(1);
        let busy = now.busy.saturating_sub(self.busy);
        let own = now.own.saturating_sub(self.own);
        Some(busy.saturating_sub(own) as f64 / total as f64)
    }
}

/// Paths that did not exist when made; on drop, those that exist then are removed (files, and
/// directories if empty), in the order given.
pub(crate) struct Leftovers(Vec<PathBuf>);

impl Leftovers {
    pub(crate) fn of(paths: &[&str]) -> Leftovers {
        Leftovers(
            paths
                .iter()
                .map(PathBuf::from)
                .filter(|p| std::fs::symlink_metadata(p).is_err())
                .collect(),
        )
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for p in &self.0 {
            match std::fs::symlink_metadata(p) {
                Ok(m) if m.is_dir() => {
                    let _ = std::fs::remove_dir(p);
                }
                Ok(_) => {
                    let _ = std::fs::remove_file(p);
                }
                Err(_) => {}
            }
        }
    }
}

pub(crate) fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn print_table(
    image: &Image,
    times: &BTreeMap<(usize, Tool), Vec<Duration>>,
    cold: &[(Tool, Duration)],
) {
    let med = |v: usize, t: Tool| times.get(&(v, t)).map(|d| median(d.clone()).as_secs_f64());
    println!(
        "import: Debian {SUITE} minbase (debootstrap), {} layers, {:.1} MB uncompressed, {} tar entries \
         ({} regular files), {} entries once merged; layer blobs: {}",
        image.tars.len(),
        image.bytes as f64 / 1e6,
        image.entries,
        image.files,
        image.expected.nodes.len(),
        image
            .variants
            .iter()
            .map(|v| format!("{} {:.1} MB", v.name, v.blob_bytes as f64 / 1e6))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "import: median wall time of {RUNS} runs, each on a fresh loop-mounted ext4; ratios to the floor \
         (tar -xf of the uncompressed layers) and to the best peer (faster of skopeo and ctr) of the same variant"
    );
    let mut header = format!("  {:<44}", "");
    let mut sub = format!("  {:<44}", "");
    for v in &image.variants {
        header.push_str(&format!("  {:^30}", v.name));
        sub.push_str(&format!(
            "  {:>9} {:>8} {:>11}",
            "seconds", "x floor", "x best peer"
        ));
    }
    println!("{header}");
    println!("{sub}");
    let best_peer = |v: usize| {
        [Tool::Skopeo, Tool::Containerd]
            .into_iter()
            .filter_map(|t| med(v, t))
            .min_by(f64::total_cmp)
    };
    for tool in TOOLS {
        let mut line = format!("  {:<44}", tool.label());
        for v in 0..image.variants.len() {
            match med(v, tool) {
                Some(s) => {
                    let floor = med(v, Tool::Floor).map_or("-".into(), |f| format!("{:.2}", s / f));
                    let best = best_peer(v).map_or("-".into(), |b| format!("{:.2}", s / b));
                    line.push_str(&format!("  {s:>9.3} {floor:>8} {best:>11}"));
                }
                None => line.push_str(&format!("  {:>9} {:>8} {:>11}", "-", "-", "-")),
            }
        }
        println!("{line}");
    }
    for (tool, d) in cold {
        println!(
            "  first {} into an empty component cache (compiles the driver): {:.3} s",
            tool.label(),
            d.as_secs_f64()
        );
    }
    for (v, variant) in image.variants.iter().enumerate() {
        let Some(s) = med(v, Tool::StrataOverlay) else {
            println!("  target ({}): no strata overlay figure", variant.name);
            continue;
        };
        let verdict = |ratio: f64, limit: f64| {
            format!(
                "{ratio:.2}x (target <= {limit}x: {})",
                if ratio <= limit { "met" } else { "NOT met" }
            )
        };
        let peer = best_peer(v).map_or("no peer measured".into(), |b| verdict(s / b, 0.8));
        let floor = med(v, Tool::Floor).map_or("no floor measured".into(), |f| verdict(s / f, 1.3));
        println!(
            "  target ({}): strata overlay / best peer {peer}; strata overlay / floor {floor}",
            variant.name
        );
    }
    println!("  runs (s), in order:");
    for ((v, tool), d) in times {
        println!(
            "    {:<5} {:<44} {}",
            image.variants[*v].name,
            tool.label(),
            d.iter()
                .map(|d| format!("{:.3}", d.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
}

// ---------------------------------------------------------------------------------------
// Tools and packages

fn command_exists(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The last lines of a tool's output, for an error message.
pub(crate) fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(12)..].join("\n")
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` to its end, failing with its output when it fails.
pub(crate) fn check(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting `{}`", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}{}",
            describe(cmd),
            out.status,
            tail(&out.stdout),
            tail(&out.stderr)
        );
    }
    Ok(out)
}

/// Wall time of `cmd`, which must succeed.
pub(crate) fn timed(cmd: &mut Command) -> Result<Duration> {
    let t = Instant::now();
    check(cmd)?;
    Ok(t.elapsed())
}

/// Installs missing commands from Debian packages (`apt-get update` once, first).
#[derive(Default)]
pub(crate) struct Apt {
    updated: bool,
}

impl Apt {
    pub(crate) fn ensure(&mut self, command: &str, packages: &[&str]) -> Result<()> {
        if command_exists(command) {
            return Ok(());
        }
        if !command_exists("apt-get") {
            bail!("`{command}` is missing and there is no apt-get to install {packages:?}");
        }
        if !self.updated {
            eprintln!("import: apt-get update");
            check(Command::new("apt-get").args(["update", "-q"]))?;
            self.updated = true;
        }
        eprintln!("import: apt-get install {}", packages.join(" "));
        check(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(packages)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        if !command_exists(command) {
            bail!("installed {packages:?} but `{command}` is still missing");
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// The image

pub(crate) struct Variant {
    pub(crate) name: &'static str,
    layout: PathBuf,
    pub(crate) archive: PathBuf,
    /// The compressed layer blobs, bottom first.
    blobs: Vec<PathBuf>,
    compression: Compression,
    pub(crate) blob_bytes: u64,
}

pub(crate) struct Image {
    /// Uncompressed layer tars, bottom first.
    pub(crate) tars: Vec<PathBuf>,
    pub(crate) variants: Vec<Variant>,
    /// Strata's ids of the image's layers (chain ids), bottom first.
    layer_ids: Vec<String>,
    /// The tree the top layer should show: the layers merged.
    expected: Tree,
    pub(crate) bytes: u64,
    pub(crate) entries: usize,
    pub(crate) files: usize,
}

/// A directory removed (after unmounting anything beneath it) when dropped, unless it was
/// renamed away first: what a build in progress writes into.
struct Partial(PathBuf);

impl Partial {
    fn new(path: PathBuf) -> Result<Partial> {
        let p = Partial(path);
        p.clear();
        if p.0.exists() {
            bail!("could not remove {}", p.0.display());
        }
        std::fs::create_dir_all(&p.0)?;
        Ok(p)
    }

    fn clear(&self) {
        for mp in mount_points_beneath(&self.0) {
            let _ = unmount(&mp, true);
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        self.clear();
    }
}

pub(crate) fn prepare_image(apt: &mut Apt) -> Result<Image> {
    let cache = target_dir().join("bench-cache").join("debian-minbase");
    std::fs::create_dir_all(&cache)?;
    let cache = cache.canonicalize()?;
    let rootfs = cache.join("rootfs");
    let rootfs_done = cache.join("rootfs.done");
    if !rootfs_done.exists() {
        debootstrap(apt, &cache, &rootfs)?;
        std::fs::write(&rootfs_done, format!("{SUITE} minbase from {MIRROR}\n"))?;
    }
    let dir = cache.join(IMAGE_VERSION);
    if !dir.join("done").exists() {
        build_image(&cache, &rootfs, &dir)?;
    }
    let tars: Vec<PathBuf> = (1..=3).map(|i| dir.join(format!("layer{i}.tar"))).collect();
    let mut variants = Vec::new();
    for (name, compression) in [("gzip", Compression::Gzip), ("zstd", Compression::Zstd)] {
        let layout = dir.join(format!("oci-{name}"));
        let blobs = layout_layers(&layout)?;
        let blob_bytes = blobs
            .iter()
            .map(|b| std::fs::metadata(b).map(|m| m.len()))
            .sum::<std::io::Result<u64>>()?;
        variants.push(Variant {
            name,
            archive: dir.join(format!("oci-{name}.tar")),
            layout,
            blobs,
            compression,
            blob_bytes,
        });
    }
    let bytes = tars
        .iter()
        .map(|t| std::fs::metadata(t).map(|m| m.len()))
        .sum::<std::io::Result<u64>>()?;
    let mut contents = Vec::new();
    for t in &tars {
        contents.push(std::fs::read(t).with_context(|| format!("reading {}", t.display()))?);
    }
    // Uncompressed, only for the chain ids (the same whatever the compression).
    let built = oci::build(&contents, Compression::None, REFERENCE);
    let layer_ids = (0..tars.len()).map(|i| built.layer_id(i)).collect();
    drop((built, contents));
    let (expected, entries, files) = merge_layers(&tars)?;
    Ok(Image {
        tars,
        variants,
        layer_ids,
        expected,
        bytes,
        entries,
        files,
    })
}

fn debootstrap(apt: &mut Apt, cache: &Path, rootfs: &Path) -> Result<()> {
    apt.ensure("debootstrap", &["debootstrap"])
        .and_then(|()| apt.ensure("wget", &["wget"]))
        .with_context(|| {
            format!("installing debootstrap (is the Debian mirror {MIRROR} reachable?)")
        })?;
    let release = format!("{MIRROR}/dists/{SUITE}/Release");
    check(Command::new("wget").args(["-q", "-O", "/dev/null", "--timeout=20", "--tries=2", &release]))
        .map_err(|e| {
            anyhow!(
                "the Debian mirror {MIRROR} is unreachable, and the bench builds its image from it with \
                 debootstrap ({e:#})"
            )
        })?;
    let partial = Partial::new(cache.join("rootfs.partial"))?;
    eprintln!(
        "import: debootstrap --variant=minbase {SUITE} {} {MIRROR} (once; cached)",
        partial.0.display()
    );
    let t = Instant::now();
    check(
        Command::new("debootstrap")
            .args(["--variant=minbase", SUITE])
            .arg(&partial.0)
            .arg(MIRROR),
    )
    .with_context(|| format!("debootstrap from {MIRROR} failed"))?;
    eprintln!(
        "import: debootstrap took {:.0} s",
        t.elapsed().as_secs_f64()
    );
    if !mount_points_beneath(&partial.0).is_empty() {
        bail!("debootstrap left mounts beneath {}", partial.0.display());
    }
    Partial(rootfs.to_path_buf()).clear();
    std::fs::rename(&partial.0, rootfs)?;
    Ok(())
}

fn build_image(cache: &Path, rootfs: &Path, dir: &Path) -> Result<()> {
    // Images of other versions go.
    for entry in std::fs::read_dir(cache)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("image-") && entry.path() != dir {
            std::fs::remove_dir_all(entry.path())?;
        }
    }
    let partial = Partial::new(cache.join(format!("{IMAGE_VERSION}.partial")))?;
    eprintln!(
        "import: writing the layer tars and the OCI layouts in {}",
        dir.display()
    );
    let tars: Vec<PathBuf> = (1..=3)
        .map(|i| partial.0.join(format!("layer{i}.tar")))
        .collect();
    let mut usr = LayerWriter::create(&tars[0])?;
    usr.append_tree(rootfs, "usr")?;
    usr.finish()?;
    let mut rest = LayerWriter::create(&tars[1])?;
    for name in sorted_names(rootfs)? {
        if name != "usr" {
            rest.append_tree(rootfs, &name)?;
        }
    }
    rest.finish()?;
    write_top_layer(rootfs, &tars[2])?;
    let mut layers = Vec::new();
    for t in &tars {
        layers.push(std::fs::read(t)?);
    }
    for (name, compression) in [("gzip", Compression::Gzip), ("zstd", Compression::Zstd)] {
        let built = oci::build(&layers, compression, REFERENCE);
        oci::write_layout(&built, &partial.0.join(format!("oci-{name}")));
        oci::write_oci_archive(&built, &partial.0.join(format!("oci-{name}.tar")));
    }
    std::fs::write(partial.0.join("done"), "")?;
    std::fs::rename(&partial.0, dir)?;
    Ok(())
}

fn sorted_names(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let name = e?.file_name();
        names.push(
            name.into_string()
                .map_err(|n| anyhow!("a name that is not UTF-8 in {}: {n:?}", dir.display()))?,
        );
    }
    names.sort();
    Ok(names)
}

/// The layer blobs of the single image in the OCI layout at `layout`, bottom first.
fn layout_layers(layout: &Path) -> Result<Vec<PathBuf>> {
    let blob = |digest: &str| {
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let read_json = |path: PathBuf| -> Result<serde_json::Value> {
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(serde_json::from_slice(&bytes)?)
    };
    let index = read_json(layout.join("index.json"))?;
    let manifest = index["manifests"][0]["digest"]
        .as_str()
        .ok_or_else(|| anyhow!("no manifest in {}", layout.display()))?;
    let manifest = read_json(blob(manifest))?;
    manifest["layers"]
        .as_array()
        .ok_or_else(|| anyhow!("no layers in the manifest"))?
        .iter()
        .map(|l| {
            l["digest"]
                .as_str()
                .map(blob)
                .ok_or_else(|| anyhow!("a layer without a digest"))
        })
        .collect()
}

/// Writes a layer tar: GNU headers, numeric owners, hardlinks within the layer as links.
struct LayerWriter {
    tar: tar::Builder<BufWriter<File>>,
    /// (device, inode) of files with several links → the first path written.
    links: HashMap<(u64, u64), String>,
}

impl LayerWriter {
    fn create(path: &Path) -> Result<LayerWriter> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut tar = tar::Builder::new(BufWriter::with_capacity(1 << 20, file));
        tar.mode(tar::HeaderMode::Complete);
        tar.follow_symlinks(false);
        Ok(LayerWriter {
            tar,
            links: HashMap::new(),
        })
    }

    fn finish(self) -> Result<()> {
        use std::io::Write;
        self.tar.into_inner()?.flush()?;
        Ok(())
    }

    fn header(mode: u32, uid: u32, gid: u32, mtime: u64, kind: EntryType) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode & 0o7777);
        h.set_uid(uid.into());
        h.set_gid(gid.into());
        h.set_mtime(mtime);
        h.set_size(0);
        h
    }

    /// Appends `rel` (a path relative to `root`) as it is on disk, and when it is a directory,
    /// everything beneath it, in name order.
    fn append_tree(&mut self, root: &Path, rel: &str) -> Result<()> {
        let path = root.join(rel);
        if self.append_from_disk(root, rel)? {
            for name in sorted_names(&path)? {
                self.append_tree(root, &format!("{rel}/{name}"))?;
            }
        }
        Ok(())
    }

    /// Appends the one entry `rel` as it is on disk; whether it is a directory.
    fn append_from_disk(&mut self, root: &Path, rel: &str) -> Result<bool> {
        let path = root.join(rel);
        let meta = std::fs::symlink_metadata(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let ft = meta.file_type();
        let mtime = meta.mtime().max(0) as u64;
        let h = |kind| Self::header(meta.mode(), meta.uid(), meta.gid(), mtime, kind);
        if ft.is_dir() {
            self.tar
                .append_data(&mut h(EntryType::Directory), rel, std::io::empty())?;
            return Ok(true);
        }
        if ft.is_file() {
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = self.links.get(&key) {
                    self.tar.append_link(&mut h(EntryType::Link), rel, first)?;
                    return Ok(false);
                }
                self.links.insert(key, rel.to_string());
            }
            let mut header = h(EntryType::Regular);
            header.set_size(meta.len());
            let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            self.tar.append_data(&mut header, rel, file)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path)?;
            self.tar
                .append_link(&mut h(EntryType::Symlink), rel, target)?;
        } else if ft.is_char_device() || ft.is_block_device() {
            let kind = if ft.is_char_device() {
                EntryType::Char
            } else {
                EntryType::Block
            };
            let mut header = h(kind);
            header.set_device_major(rustix::fs::major(meta.rdev()))?;
            header.set_device_minor(rustix::fs::minor(meta.rdev()))?;
            self.tar.append_data(&mut header, rel, std::io::empty())?;
        } else if ft.is_fifo() {
            self.tar
                .append_data(&mut h(EntryType::Fifo), rel, std::io::empty())?;
        } else {
            eprintln!(
                "import: leaving out {} (a socket: tar cannot hold one)",
                path.display()
            );
        }
        Ok(false)
    }

    /// Appends a made-up entry.
    fn append_new(
        &mut self,
        rel: &str,
        kind: EntryType,
        mode: u32,
        owner: u32,
        data: &[u8],
    ) -> Result<()> {
        let mut h = Self::header(mode, owner, owner, TOP_MTIME, kind);
        h.set_size(data.len() as u64);
        self.tar.append_data(&mut h, rel, data)?;
        Ok(())
    }

    /// Appends a whiteout: `.wh.NAME` hides NAME of the lower layers; `.wh..wh..opq` makes its
    /// directory opaque.
    fn append_whiteout(&mut self, dir: &str, name: &str) -> Result<()> {
        self.append_new(
            &format!("{dir}/.wh.{name}"),
            EntryType::Regular,
            0o600,
            0,
            b"",
        )
    }
}

/// The top layer: changes, additions, whiteouts and an opaque directory (see the module doc).
fn write_top_layer(rootfs: &Path, out: &Path) -> Result<()> {
    let exists = |rel: &str| std::fs::symlink_metadata(rootfs.join(rel)).is_ok();
    let mut w = LayerWriter::create(out)?;
    // Parents are written as they are below, as image builders do.
    w.append_from_disk(rootfs, "etc")?;
    if exists("etc/motd") {
        w.append_whiteout("etc", "motd")?;
    }
    for (file, line) in [
        ("etc/group", "bench:x:1000:\n"),
        (
            "etc/passwd",
            "bench:x:1000:1000:bench:/home/bench:/bin/sh\n",
        ),
    ] {
        let mut content = std::fs::read(rootfs.join(file))?;
        content.extend_from_slice(line.as_bytes());
        w.append_new(file, EntryType::Regular, 0o644, 0, &content)?;
    }
    w.append_new(
        "etc/hostname",
        EntryType::Regular,
        0o644,
        0,
        b"strata-bench\n",
    )?;
    w.append_from_disk(rootfs, "home")?;
    w.append_new("home/bench", EntryType::Directory, 0o750, 1000, b"")?;
    w.append_new(
        "home/bench/.profile",
        EntryType::Regular,
        0o644,
        1000,
        b"PS1='$ '\n",
    )?;
    w.append_from_disk(rootfs, "opt")?;
    w.append_new("opt/app", EntryType::Directory, 0o755, 0, b"")?;
    w.append_new("opt/app/bin", EntryType::Directory, 0o755, 0, b"")?;
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    };
    w.append_new(
        "opt/app/bin/tool",
        EntryType::Regular,
        0o755,
        0,
        &noise(1 << 20),
    )?;
    let mut link = LayerWriter::header(0o755, 0, 0, TOP_MTIME, EntryType::Link);
    w.tar
        .append_link(&mut link, "opt/app/bin/tool-alias", "opt/app/bin/tool")?;
    let mut symlink = LayerWriter::header(0o777, 0, 0, TOP_MTIME, EntryType::Symlink);
    w.tar
        .append_link(&mut symlink, "opt/app/current", "bin/tool")?;
    w.append_new("opt/app/data", EntryType::Directory, 0o755, 0, b"")?;
    for d in 0..10 {
        w.append_new(
            &format!("opt/app/data/d{d}"),
            EntryType::Directory,
            0o755,
            0,
            b"",
        )?;
        for f in 0..20 {
            let size = 512 + (d * 20 + f) * 17;
            w.append_new(
                &format!("opt/app/data/d{d}/f{f:02}"),
                EntryType::Regular,
                0o644,
                0,
                &noise(size),
            )?;
        }
    }
    w.append_from_disk(rootfs, "usr")?;
    w.append_from_disk(rootfs, "usr/share")?;
    if exists("usr/share/man") {
        w.append_whiteout("usr/share", "man")?;
    }
    w.append_from_disk(rootfs, "usr/share/doc")?;
    w.append_whiteout("usr/share/doc", ".wh..opq")?;
    w.append_new(
        "usr/share/doc/README",
        EntryType::Regular,
        0o644,
        0,
        b"Documentation was removed from this image.\n",
    )?;
    w.append_from_disk(rootfs, "usr/share/locale")?;
    for locale in ["de", "es", "fr"] {
        if exists(&format!("usr/share/locale/{locale}")) {
            w.append_whiteout("usr/share/locale", locale)?;
        }
    }
    w.append_from_disk(rootfs, "var")?;
    w.append_from_disk(rootfs, "var/cache")?;
    w.append_from_disk(rootfs, "var/cache/apt")?;
    for cache in ["pkgcache.bin", "srcpkgcache.bin"] {
        if exists(&format!("var/cache/apt/{cache}")) {
            w.append_whiteout("var/cache/apt", cache)?;
        }
    }
    w.finish()
}

// ---------------------------------------------------------------------------------------
// Checking what an import made

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    Char,
    Block,
    Fifo,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Node {
    kind: Kind,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
    size: u64,
    digest: Option<[u8; 32]>,
    target: Option<Vec<u8>>,
    device: Option<(u32, u32)>,
}

/// A tree of paths (relative, `/`-separated, no leading `./`).
#[derive(Default)]
struct Tree {
    nodes: BTreeMap<Vec<u8>, Node>,
    /// Pairs of paths that must share an inode.
    hardlinks: Vec<(Vec<u8>, Vec<u8>)>,
}

fn digest_of(mut r: impl Read) -> Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finalize().into());
        }
        h.update(&buf[..n]);
    }
}

fn normalize(path: &[u8]) -> Vec<u8> {
    let mut p = path;
    while let Some(rest) = p.strip_prefix(b"./").or_else(|| p.strip_prefix(b"/")) {
        p = rest;
    }
    while let Some(rest) = p.strip_suffix(b"/") {
        p = rest;
    }
    p.to_vec()
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        return name.to_vec();
    }
    let mut p = dir.to_vec();
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

/// Removes from `nodes` what lies beneath `dir` and came from a layer below `layer`.
fn remove_beneath(nodes: &mut BTreeMap<Vec<u8>, (Node, usize)>, dir: &[u8], layer: usize) {
    let prefix = if dir.is_empty() {
        Vec::new()
    } else {
        join(dir, b"")
    };
    let doomed: Vec<Vec<u8>> = nodes
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .filter(|(_, (_, l))| *l < layer)
        .map(|(k, _)| k.clone())
        .collect();
    for k in doomed {
        nodes.remove(&k);
    }
}

/// The tree the layer tars (bottom first) make once merged with the OCI whiteout rules, the
/// number of entries in the tars and of regular files among them.
fn merge_layers(tars: &[PathBuf]) -> Result<(Tree, usize, usize)> {
    let mut nodes: BTreeMap<Vec<u8>, (Node, usize)> = BTreeMap::new();
    let mut hardlinks = Vec::new();
    let (mut entries, mut files) = (0, 0);
    for (layer, tar) in tars.iter().enumerate() {
        let file = File::open(tar).with_context(|| format!("opening {}", tar.display()))?;
        let mut archive = tar::Archive::new(BufReader::with_capacity(1 << 20, file));
        for entry in archive.entries()? {
            let entry = entry?;
            entries += 1;
            let path = normalize(&entry.path_bytes());
            let (dir, base) = match path.iter().rposition(|&b| b == b'/') {
                Some(i) => (&path[..i], &path[i + 1..]),
                None => (&[][..], &path[..]),
            };
            if base == b".wh..wh..opq" {
                remove_beneath(&mut nodes, dir, layer);
                continue;
            }
            if let Some(hidden) = base.strip_prefix(b".wh.") {
                let hidden = join(dir, hidden);
                if nodes.get(&hidden).is_some_and(|(_, l)| *l < layer) {
                    nodes.remove(&hidden);
                }
                remove_beneath(&mut nodes, &hidden, layer);
                continue;
            }
            let h = entry.header();
            let mut node = Node {
                kind: Kind::File,
                mode: h.mode()? & 0o7777,
                uid: h.uid()?,
                gid: h.gid()?,
                mtime: h.mtime()? as i64,
                size: 0,
                digest: None,
                target: None,
                device: None,
            };
            match h.entry_type() {
                EntryType::Regular | EntryType::Continuous => {
                    files += 1;
                    node.size = h.size()?;
                    node.digest = Some(digest_of(entry)?);
                }
                EntryType::Link => {
                    let target = normalize(&entry.link_name_bytes().unwrap_or_default());
                    node = nodes
                        .get(&target)
                        .map(|(n, _)| n.clone())
                        .ok_or_else(|| anyhow!("hardlink {path:?} to a missing {target:?}"))?;
                    hardlinks.push((path.clone(), target));
                }
                EntryType::Symlink => {
                    node.kind = Kind::Symlink;
                    node.target = entry.link_name_bytes().map(|t| t.into_owned());
                }
                EntryType::Directory => node.kind = Kind::Dir,
                kind @ (EntryType::Char | EntryType::Block) => {
                    node.kind = if kind == EntryType::Char {
                        Kind::Char
                    } else {
                        Kind::Block
                    };
                    node.device = Some((
                        h.device_major()?.unwrap_or(0),
                        h.device_minor()?.unwrap_or(0),
                    ));
                }
                EntryType::Fifo => node.kind = Kind::Fifo,
                other => bail!("unexpected entry type {other:?} for {path:?}"),
            }
            if node.kind != Kind::Dir {
                // A non-directory replaces a directory with all beneath it.
                remove_beneath(&mut nodes, &path, usize::MAX);
            }
            nodes.insert(path, (node, layer));
        }
    }
    let nodes: BTreeMap<Vec<u8>, Node> = nodes.into_iter().map(|(k, (n, _))| (k, n)).collect();
    hardlinks.retain(|(a, b)| nodes.contains_key(a) && nodes.contains_key(b));
    Ok((Tree { nodes, hardlinks }, entries, files))
}

/// The tree beneath `root` (not `root` itself), with each entry's inode.
fn read_tree(root: &Path) -> Result<BTreeMap<Vec<u8>, (Node, u64)>> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![(root.to_path_buf(), Vec::new())];
    while let Some((dir, rel)) = stack.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let e = e?;
            let path = e.path();
            let key = join(&rel, e.file_name().as_bytes());
            let meta = std::fs::symlink_metadata(&path)?;
            let ft = meta.file_type();
            let mut node = Node {
                kind: Kind::File,
                mode: meta.mode() & 0o7777,
                uid: meta.uid().into(),
                gid: meta.gid().into(),
                mtime: meta.mtime(),
                size: 0,
                digest: None,
                target: None,
                device: None,
            };
            if ft.is_file() {
                node.size = meta.len();
                node.digest = Some(digest_of(File::open(&path)?)?);
            } else if ft.is_dir() {
                node.kind = Kind::Dir;
                stack.push((path.clone(), key.clone()));
            } else if ft.is_symlink() {
                node.kind = Kind::Symlink;
                node.target = Some(std::fs::read_link(&path)?.as_os_str().as_bytes().to_vec());
            } else if ft.is_char_device() || ft.is_block_device() {
                node.kind = if ft.is_char_device() {
                    Kind::Char
                } else {
                    Kind::Block
                };
                node.device = Some((
                    rustix::fs::major(meta.rdev()),
                    rustix::fs::minor(meta.rdev()),
                ));
            } else if ft.is_fifo() {
                node.kind = Kind::Fifo;
            } else {
                bail!("{} is a socket", path.display());
            }
            out.insert(key, (node, meta.ino()));
        }
    }
    Ok(out)
}

/// What differs between the expected tree and the tree beneath `root`; empty when nothing.
fn compare(expected: &Tree, root: &Path) -> Result<Vec<String>> {
    let actual = read_tree(root)?;
    let mut problems: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    let show = |p: &[u8]| format!("/{}", String::from_utf8_lossy(p));
    for (path, want) in &expected.nodes {
        let Some((got, _)) = actual.get(path) else {
            problems.entry("missing").or_default().push(show(path));
            continue;
        };
        let mut differ = |what: &'static str, detail: String| {
            problems
                .entry(what)
                .or_default()
                .push(format!("{} ({detail})", show(path)));
        };
        if got.kind != want.kind {
            differ(
                "type differs",
                format!("{:?}, not {:?}", got.kind, want.kind),
            );
            continue;
        }
        if got.mode != want.mode {
            differ(
                "mode differs",
                format!("{:o}, not {:o}", got.mode, want.mode),
            );
        }
        if (got.uid, got.gid) != (want.uid, want.gid) {
            differ(
                "owner differs",
                format!("{}:{}, not {}:{}", got.uid, got.gid, want.uid, want.gid),
            );
        }
        if got.size != want.size || got.digest != want.digest {
            differ(
                "content differs",
                format!("{} bytes, not {}", got.size, want.size),
            );
        }
        if got.target != want.target {
            differ(
                "link target differs",
                format!(
                    "{}, not {}",
                    String::from_utf8_lossy(got.target.as_deref().unwrap_or_default()),
                    String::from_utf8_lossy(want.target.as_deref().unwrap_or_default())
                ),
            );
        }
        if got.device != want.device {
            differ(
                "device differs",
                format!("{:?}, not {:?}", got.device, want.device),
            );
        }
        if got.mtime != want.mtime {
            let what = if want.kind == Kind::Dir {
                "directory mtime differs"
            } else {
                "mtime differs"
            };
            differ(what, format!("{}, not {}", got.mtime, want.mtime));
        }
    }
    for path in actual.keys() {
        if !expected.nodes.contains_key(path) {
            problems.entry("unexpected").or_default().push(show(path));
        }
    }
    for (a, b) in &expected.hardlinks {
        if let (Some((_, ia)), Some((_, ib))) = (actual.get(a), actual.get(b))
            && ia != ib
        {
            problems
                .entry("hardlink not kept")
                .or_default()
                .push(format!("{} and {}", show(a), show(b)));
        }
    }
    Ok(problems
        .into_iter()
        .map(|(what, paths)| {
            let shown: Vec<&str> = paths.iter().take(5).map(String::as_str).collect();
            format!("{what}: {} entries, e.g. {}", paths.len(), shown.join(", "))
        })
        .collect())
}

// ---------------------------------------------------------------------------------------
// Runs

/// An ext4 made for one run: a sparse file in a new directory under `/var/tmp`, loop-mounted
/// at `mnt`. Dropping it unmounts everything beneath `mnt` and `mnt`, detaches the loop device
/// and removes the directory.
pub(crate) struct FreshFs {
    dir: tempfile::TempDir,
    image: PathBuf,
    mnt: PathBuf,
}

impl FreshFs {
    pub(crate) fn new() -> Result<FreshFs> {
        let dir = tempfile::Builder::new()
            .prefix("strata-bench-import-")
            .tempdir_in("/var/tmp")
            .context("creating a directory in /var/tmp")?;
        let fs = FreshFs {
            image: dir.path().join("fs.img"),
            mnt: dir.path().join("mnt"),
            dir,
        };
        File::create(&fs.image)?.set_len(FS_BYTES)?;
        check(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&fs.image))?;
        std::fs::create_dir(&fs.mnt)?;
        check(
            Command::new("mount")
                .args(["-t", "ext4", "-o", "loop,noinit_itable"])
                .arg(&fs.image)
                .arg(&fs.mnt),
        )?;
        rustix::fs::sync();
        Ok(fs)
    }

    /// A path on the filesystem.
    pub(crate) fn at(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// A directory for this run off the filesystem (sockets, logs, configuration).
    pub(crate) fn scratch(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for FreshFs {
    fn drop(&mut self) {
        for mp in mount_points_beneath(&self.mnt) {
            if mp != self.mnt {
                let _ = unmount(&mp, true);
            }
        }
        if is_mount_point(&self.mnt) && unmount(&self.mnt, false).is_err() {
            let _ = unmount(&self.mnt, true);
        }
        // `mount -o loop` sets autoclear, so the device goes with the unmount; detach any left.
        if let Ok(out) = Command::new("losetup").arg("-j").arg(&self.image).output() {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some((device, _)) = line.split_once(':') {
                    let _ = Command::new("losetup").arg("-d").arg(device).status();
                }
            }
        }
    }
}

/// A private containerd on a run's filesystem; stopped (SIGTERM, then SIGKILL after 20 s)
/// when dropped.
pub(crate) struct Containerd {
    pub(crate) child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Containerd {
    fn start(fs: &FreshFs) -> Result<Containerd> {
        Self::start_with(fs, "")
    }

    /// Starts containerd with `extra_config` appended to its config (a proxy plugin).
    pub(crate) fn start_with(fs: &FreshFs, extra_config: &str) -> Result<Containerd> {
        let socket = fs.scratch().join("containerd.sock");
        let config = fs.scratch().join("containerd.toml");
        let log = fs.scratch().join("containerd.log");
        let disabled = [
            "io.containerd.grpc.v1.cri",
            "io.containerd.internal.v1.opt",
            "io.containerd.snapshotter.v1.aufs",
            "io.containerd.snapshotter.v1.btrfs",
            "io.containerd.snapshotter.v1.devmapper",
            "io.containerd.snapshotter.v1.native",
            "io.containerd.snapshotter.v1.zfs",
            "io.containerd.tracing.processor.v1.otlp",
            "io.containerd.internal.v1.tracing",
        ];
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = {:?}\nstate = {:?}\ndisabled_plugins = {:?}\n\n[grpc]\n  address = {:?}\n\n\
                 [ttrpc]\n  address = {:?}\n{extra_config}",
                fs.at("containerd/root"),
                fs.at("containerd/state"),
                disabled,
                socket,
                fs.scratch().join("containerd.sock.ttrpc"),
            ),
        )?;
        let out = File::create(&log)?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting containerd")?;
        let mut daemon = Containerd { child, socket, log };
        let started = Instant::now();
        loop {
            if let Some(status) = daemon.child.try_wait()? {
                bail!(
                    "containerd exited ({status}) at start: {}",
                    daemon.log_tail()
                );
            }
            let answers = daemon.socket.exists()
                && daemon
                    .ctr()
                    .arg("version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
            if answers {
                return Ok(daemon);
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!(
                    "containerd did not answer within 30 s: {}",
                    daemon.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "bench"]);
        c
    }

    pub(crate) fn log_tail(&self) -> String {
        tail(&std::fs::read(&self.log).unwrap_or_default())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Bench {
    strata: PathBuf,
    component_cache: PathBuf,
    image: Image,
}

impl Bench {
    /// One run of `tool` on a fresh filesystem; with `verify`, checks what it made.
    fn measure(&self, tool: Tool, variant: &Variant, verify: bool) -> Result<Duration> {
        let fs = FreshFs::new()?;
        match tool {
            Tool::Floor => {
                let dest = fs.at("floor");
                std::fs::create_dir(&dest)?;
                let t = Instant::now();
                for tar in &self.image.tars {
                    check(
                        Command::new("tar")
                            .arg("-xf")
                            .arg(tar)
                            .arg("--numeric-owner")
                            .arg("-C")
                            .arg(&dest),
                    )?;
                }
                Ok(t.elapsed())
            }
            Tool::Decompress => {
                let dest = fs.at("floor");
                std::fs::create_dir(&dest)?;
                let flag = match variant.compression {
                    Compression::Gzip => "-z",
                    Compression::Zstd => "--zstd",
                    Compression::None => "--no-auto-compress",
                };
                let t = Instant::now();
                for blob in &variant.blobs {
                    check(
                        Command::new("tar")
                            .arg(flag)
                            .arg("-xf")
                            .arg(blob)
                            .arg("--numeric-owner")
                            .arg("-C")
                            .arg(&dest),
                    )?;
                }
                Ok(t.elapsed())
            }
            Tool::StrataOverlay | Tool::StrataVfs => {
                let driver = if tool == Tool::StrataVfs {
                    Some("vfs")
                } else {
                    None
                };
                let d = timed(
                    self.strata_command(&fs, driver)
                        .args(["image", "import"])
                        .arg(&variant.layout),
                )?;
                if verify {
                    self.verify_strata(&fs, driver)?;
                }
                Ok(d)
            }
            Tool::Skopeo => {
                let policy = fs.scratch().join("policy.json");
                std::fs::write(
                    &policy,
                    r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
                )?;
                let tmp = fs.at("skopeo-tmp");
                std::fs::create_dir(&tmp)?;
                let root = fs.at("containers/storage");
                let dest = format!(
                    "containers-storage:[overlay@{}+{}]bench:latest",
                    root.display(),
                    fs.at("containers/run").display()
                );
                let d = timed(
                    Command::new("skopeo")
                        .arg("--policy")
                        .arg(&policy)
                        .arg("--tmpdir")
                        .arg(&tmp)
                        .args(["copy", "--quiet"])
                        .arg(format!("oci:{}:{REFERENCE}", variant.layout.display()))
                        .arg(dest),
                )?;
                if verify {
                    let layers = root.join("overlay-layers/layers.json");
                    let listed: serde_json::Value = serde_json::from_slice(
                        &std::fs::read(&layers)
                            .with_context(|| format!("reading {}", layers.display()))?,
                    )?;
                    let n = listed.as_array().map_or(0, Vec::len);
                    if n != self.image.tars.len() {
                        bail!(
                            "containers-storage holds {n} layers, not {}",
                            self.image.tars.len()
                        );
                    }
                }
                Ok(d)
            }
            Tool::Containerd => {
                let daemon = Containerd::start(&fs)?;
                let d = timed(
                    daemon
                        .ctr()
                        .args([
                            "images",
                            "import",
                            "--snapshotter",
                            "overlayfs",
                            "--base-name",
                            "bench",
                        ])
                        .arg(&variant.archive),
                )?;
                if verify {
                    let out = check(daemon.ctr().args([
                        "snapshots",
                        "--snapshotter",
                        "overlayfs",
                        "ls",
                    ]))?;
                    let committed = String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .filter(|l| l.contains("Committed"))
                        .count();
                    if committed != self.image.tars.len() {
                        bail!(
                            "containerd holds {committed} committed snapshots after the import, not {}",
                            self.image.tars.len()
                        );
                    }
                }
                drop(daemon);
                Ok(d)
            }
        }
    }

    fn strata_command(&self, fs: &FreshFs, driver: Option<&str>) -> Command {
        let mut c = Command::new(&self.strata);
        c.arg("--root")
            .arg(fs.at("root"))
            .arg("--run-root")
            .arg(fs.at("run"))
            .env(
                strata_host::paths::COMPONENT_CACHE_ENV,
                &self.component_cache,
            );
        if let Some(driver) = driver {
            c.args(["--driver", driver]);
        }
        c
    }

    /// Mounts the image's top layer and compares what it shows with the merged layer tars.
    fn verify_strata(&self, fs: &FreshFs, driver: Option<&str>) -> Result<()> {
        let top = self.image.layer_ids.last().expect("an image has layers");
        let out = check(
            self.strata_command(fs, driver)
                .args(["layer", "mount", top]),
        )
        .context("mounting the image's top layer")?;
        let mounted = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let problems = compare(&self.image.expected, &mounted);
        check(
            self.strata_command(fs, driver)
                .args(["layer", "unmount", top]),
        )?;
        let problems = problems?;
        if !problems.is_empty() {
            bail!(
                "the imported image differs from its layers:\n  {}",
                problems.join("\n  ")
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer tar of made-up entries owned by this process (so the tree made from them on
    /// disk matches without root): (path, type, mode, content or link target).
    fn layer(path: &Path, entries: &[(&str, EntryType, u32, &str)]) {
        let (uid, gid) = (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        );
        let mut w = LayerWriter::create(path).unwrap();
        for (rel, kind, mode, data) in entries {
            let mut h = LayerWriter::header(*mode, uid, gid, TOP_MTIME, *kind);
            if *kind == EntryType::Link || *kind == EntryType::Symlink {
                w.tar.append_link(&mut h, rel, data).unwrap();
            } else {
                h.set_size(data.len() as u64);
                w.tar.append_data(&mut h, rel, data.as_bytes()).unwrap();
            }
        }
        w.finish().unwrap();
    }

    fn put(root: &Path, rel: &str, mode: u32, content: Option<&str>) {
        use std::os::unix::fs::PermissionsExt;
        let p = root.join(rel);
        match content {
            Some(c) => std::fs::write(&p, c).unwrap(),
            None => std::fs::create_dir(&p).unwrap(),
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn set_mtimes(root: &Path, rels: &[&str]) {
        let when = std::time::UNIX_EPOCH + Duration::from_secs(TOP_MTIME);
        for rel in rels {
            File::open(root.join(rel))
                .unwrap()
                .set_modified(when)
                .unwrap();
        }
    }

    #[test]
    fn merge_applies_whiteouts_and_compare_finds_differences() {
        let t = tempfile::tempdir().unwrap();
        let (l1, l2) = (t.path().join("l1.tar"), t.path().join("l2.tar"));
        use EntryType::{Directory as D, Link as H, Regular as F, Symlink as S};
        layer(
            &l1,
            &[
                ("a", D, 0o755, ""),
                ("a/x", F, 0o644, "x"),
                ("a/y", F, 0o644, "y"),
                ("b", D, 0o755, ""),
                ("b/z", F, 0o644, "z"),
                ("b/sub", D, 0o755, ""),
                ("b/sub/deep", F, 0o644, "deep"),
                ("keep", F, 0o640, "keep"),
                ("keep2", H, 0o640, "keep"),
            ],
        );
        layer(
            &l2,
            &[
                ("a", D, 0o755, ""),
                ("a/.wh.x", F, 0o600, ""),
                ("b", D, 0o700, ""),
                ("b/.wh..wh..opq", F, 0o600, ""),
                ("b/new", F, 0o644, "new"),
                ("link", S, 0o777, "keep"),
            ],
        );
        let (tree, entries, files) = merge_layers(&[l1, l2]).unwrap();
        assert_eq!((entries, files), (15, 6));
        let keys: Vec<String> = tree
            .nodes
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        assert_eq!(keys, ["a", "a/y", "b", "b/new", "keep", "keep2", "link"]);
        assert_eq!(tree.nodes[&b"b".to_vec()].mode, 0o700);
        assert_eq!(tree.hardlinks, [(b"keep2".to_vec(), b"keep".to_vec())]);

        let root = t.path().join("root");
        std::fs::create_dir(&root).unwrap();
        put(&root, "a", 0o755, None);
        put(&root, "a/y", 0o644, Some("y"));
        put(&root, "b", 0o700, None);
        put(&root, "b/new", 0o644, Some("new"));
        put(&root, "keep", 0o640, Some("keep"));
        std::fs::hard_link(root.join("keep"), root.join("keep2")).unwrap();
        std::os::unix::fs::symlink("keep", root.join("link")).unwrap();
        set_mtimes(&root, &["a/y", "b/new", "keep", "a", "b"]);
        let link = std::ffi::CString::new(root.join("link").into_os_string().into_encoded_bytes())
            .unwrap();
        let when = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: TOP_MTIME as i64,
                tv_nsec: 0,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: TOP_MTIME as i64,
                tv_nsec: 0,
            },
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            link.as_c_str(),
            &when,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
        assert_eq!(compare(&tree, &root).unwrap(), Vec::<String>::new());

        put(&root, "a/x", 0o644, Some("x"));
        std::fs::set_permissions(
            root.join("a/y"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        std::fs::remove_file(root.join("keep2")).unwrap();
        std::fs::copy(root.join("keep"), root.join("keep2")).unwrap();
        std::fs::write(root.join("b/new"), "changed").unwrap();
        set_mtimes(&root, &["b/new", "keep2", "a"]);
        let problems = compare(&tree, &root).unwrap().join("\n");
        for what in [
            "unexpected: 1 entries, e.g. /a/x",
            "mode differs: 1 entries, e.g. /a/y (600, not 644)",
            "hardlink not kept: 1 entries, e.g. /keep2 and /keep",
            "content differs: 1 entries, e.g. /b/new (7 bytes, not 3)",
        ] {
            assert!(problems.contains(what), "{what} in:\n{problems}");
        }
    }
}

//! Crash trials: `kill -9` of the `strata` CLI at random points of an operation, then the
//! checks of issue 16's crash test.
//!
//! Each trial makes a fresh store, sets it up for one operation (image import, layer apply,
//! container commit, layer rm, image rm, container rm), starts the operation and kills it
//! with SIGKILL after a random delay drawn from `[0, span)`, where `span` is the operation's
//! wall time measured un-killed on the same setup (the reference run, which also gives the
//! expected trees): kills land across the whole operation, process start included. Then:
//!
//! 1. the store opens (`layer ls`), without a layer set aside as damaged;
//! 2. no layer is incomplete, and the driver's home holds exactly the recorded layers (vfs:
//!    `dir/<id>`; overlay: `<id>/` and one valid `l/` link each), no apply scratch directory
//!    is left in a layer, and `<root>/mounts` holds only mount points of mounted layers;
//! 3. what the operation works on is in a state a crash may leave: as before the operation
//!    or as after it, compared tree by tree (an apply onto a layer with content is rolled
//!    back from its undo journal: the layer is never removed);
//! 4. running the operation again (from what is left) gives the reference run's tree, and
//!    the store is clean again.
//!
//! Used by the test suite (tests/tests/crash.rs, a few seeded trials) and by `cargo xtask
//! bench crash` (strata-bench, ≥ 100 trials), which prints where the kills landed and what
//! each trial left.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::oci::{self, BuiltImage, Compression};
use crate::targen::{Entry, tar_of};

/// A small seeded generator (splitmix64): trials are repeatable from their seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The operations killed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    Import,
    Apply,
    Commit,
    LayerRm,
    ImageRm,
    ContainerRm,
}

impl Op {
    pub const ALL: [Op; 6] = [
        Op::Import,
        Op::Apply,
        Op::Commit,
        Op::LayerRm,
        Op::ImageRm,
        Op::ContainerRm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Import => "image import",
            Op::Apply => "layer apply",
            Op::Commit => "container commit",
            Op::LayerRm => "layer rm",
            Op::ImageRm => "image rm",
            Op::ContainerRm => "container rm --force",
        }
    }
}

const IMAGE_LAYERS: usize = 4;

/// The inputs every trial uses, written once.
pub struct Fixtures {
    dir: tempfile::TempDir,
    image: BuiltImage,
    /// Files per image layer and in the applied tars (the apply adds twice as many): the
    /// more, the longer each operation runs.
    files: usize,
}

fn files(prefix: &str, n: usize, salt: u8) -> Vec<Entry> {
    let mut entries = vec![Entry::dir(prefix, 0o755)];
    for i in 0..n {
        let body: Vec<u8> = (0..(64 + i % 512)).map(|b| (b as u8) ^ salt).collect();
        entries.push(Entry::file(&format!("{prefix}/f{i}"), 0o644, &body));
    }
    entries
}

impl Fixtures {
    /// The inputs, with `files` files per layer (see [`Fixtures::files`]).
    pub fn new(files_per_layer: usize) -> Fixtures {
        let dir = tempfile::Builder::new()
            .prefix("strata-crash-inputs-")
            .tempdir()
            .expect("a fixture directory");
        let n = files_per_layer;
        let layers: Vec<Vec<u8>> = (0..IMAGE_LAYERS)
            .map(|i| {
                let mut e = files(&format!("l{i}"), n, i as u8);
                if i > 0 {
                    // Each layer changes the one below: a replaced file and a deletion.
                    e.push(Entry::file(&format!("l{}/f0", i - 1), 0o600, b"replaced"));
                    e.push(Entry::whiteout(&format!("l{}/f1", i - 1)));
                }
                tar_of(&e)
            })
            .collect();
        let image = oci::build(&layers, Compression::Gzip, "crash:1");
        oci::write_layout(&image, &dir.path().join("image"));
        // The apply's layer content before, and the tar applied onto it (replacing, deleting,
        // adding beside what is there).
        std::fs::write(dir.path().join("pre.tar"), tar_of(&files("pre", n, 7))).unwrap();
        let mut post = files("post", 2 * n, 9);
        post.push(Entry::file("pre/f0", 0o600, b"replaced by the apply"));
        post.push(Entry::whiteout("pre/f1"));
        post.push(Entry::opaque("pre"));
        std::fs::write(dir.path().join("post.tar"), tar_of(&post)).unwrap();
        Fixtures {
            dir,
            image,
            files: n,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    fn top(&self) -> String {
        self.image.layer_id(IMAGE_LAYERS - 1)
    }
}

/// A fresh store run through the CLI binary `bin` with `driver`.
pub struct Store<'a> {
    dir: tempfile::TempDir,
    bin: &'a Path,
    driver: &'a str,
}

/// What a CLI call gave: (success, stdout, stderr).
pub type Output = (bool, String, String);

impl<'a> Store<'a> {
    pub fn new(bin: &'a Path, driver: &'a str) -> Store<'a> {
        Store {
            dir: tempfile::Builder::new()
                .prefix("strata-crash-")
                .tempdir_in("/var/tmp")
                .expect("a store directory"),
            bin,
            driver,
        }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = crate::strata_command(self.bin);
        c.arg("--root")
            .arg(self.root())
            .arg("--run-root")
            .arg(self.dir.path().join("run"))
            .arg("--driver")
            .arg(self.driver)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        let out = self.command(args).output().expect("running strata");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn ok(&self, args: &[&str]) -> Result<String, String> {
        let (success, out, err) = self.cli(args);
        if success {
            Ok(out)
        } else {
            Err(format!("strata {args:?} failed: {err}"))
        }
    }

    fn home(&self) -> PathBuf {
        strata_core::layout::driver_home(&self.root(), self.driver)
    }

    /// The records, as `layer ls --json` prints them; an error when the store does not open
    /// cleanly (or opens with a layer set aside).
    fn layers(&self) -> Result<Vec<serde_json::Value>, String> {
        let (success, out, err) = self.cli(&["--json", "layer", "ls"]);
        if !success {
            return Err(format!("the store does not open: {err}"));
        }
        if err.contains("damaged") {
            return Err(format!("the store opens with a layer set aside: {err}"));
        }
        serde_json::from_str::<Vec<serde_json::Value>>(&out).map_err(|e| e.to_string())
    }

    fn ids(&self) -> Result<BTreeSet<String>, String> {
        Ok(self
            .layers()?
            .iter()
            .map(|l| l["id"].as_str().unwrap_or_default().to_string())
            .collect())
    }

    fn has_image(&self) -> Result<bool, String> {
        let out = self.ok(&["--json", "image", "ls"])?;
        Ok(out.contains("crash:1"))
    }

    fn has_container(&self) -> Result<bool, String> {
        let out = self.ok(&["--json", "container", "ls"])?;
        Ok(out.contains("\"c\""))
    }

    /// Checks 1 and 2: the store opens, nothing incomplete, nothing orphaned.
    pub fn check_clean(&self) -> Result<(), String> {
        let layers = self.layers()?;
        let mut ids = BTreeSet::new();
        let mut mounted = BTreeSet::new();
        for l in &layers {
            let id = l["id"].as_str().unwrap_or_default().to_string();
            if l["incomplete"].as_bool() != Some(false) {
                return Err(format!("layer {id} is incomplete after recovery: {l}"));
            }
            if l["mount_count"].as_u64().unwrap_or(0) > 0 {
                mounted.insert(id.clone());
            }
            ids.insert(id);
        }
        let home = self.home();
        let mut data = BTreeSet::new();
        let mut data_dirs = Vec::new();
        match self.driver {
            "vfs" => {
                for e in read_names(&home.join("dir"))? {
                    data_dirs.push(home.join("dir").join(&e));
                    data.insert(e);
                }
            }
            "overlay" => {
                for e in read_names(&home)? {
                    if e.starts_with('.') || e == "l" {
                        continue;
                    }
                    data_dirs.push(home.join(&e).join("diff"));
                    data.insert(e);
                }
                let links = read_names(&home.join("l"))?;
                for link in &links {
                    let target = std::fs::read_link(home.join("l").join(link))
                        .map_err(|e| format!("l/{link}: {e}"))?;
                    let owner = target
                        .components()
                        .nth(1)
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .unwrap_or_default();
                    if !ids.contains(&owner) || !home.join("l").join(link).exists() {
                        return Err(format!(
                            "overlay link l/{link} -> {} names no recorded layer",
                            target.display()
                        ));
                    }
                }
                if links.len() != ids.len() {
                    return Err(format!(
                        "{} overlay links for {} layers",
                        links.len(),
                        ids.len()
                    ));
                }
            }
            other => return Err(format!("no layout check for driver {other}")),
        }
        if data != ids {
            return Err(format!(
                "driver data {:?} does not match the records {:?}",
                data, ids
            ));
        }
        for d in &data_dirs {
            for e in read_names(d)? {
                if e.starts_with(".strata-apply-") {
                    return Err(format!("apply scratch {} left in {}", e, d.display()));
                }
            }
        }
        let mount_points = read_names(&self.root().join("mounts"))?;
        for m in &mount_points {
            if !mounted.contains(m) {
                return Err(format!(
                    "mount point mounts/{m} for a layer not recorded as mounted"
                ));
            }
        }
        Ok(())
    }

    /// The content of layer `id` as mounted: path → kind and content hash.
    fn tree(&self, id: &str) -> Result<Tree, String> {
        let mnt = self.ok(&["layer", "mount", id])?;
        let tree = tree_of(Path::new(mnt.trim()));
        self.ok(&["layer", "unmount", id])?;
        Ok(tree)
    }
}

fn read_names(dir: &Path) -> Result<Vec<String>, String> {
    match std::fs::read_dir(dir) {
        Ok(r) => Ok(r
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        Err(e) => Err(format!("{}: {e}", dir.display())),
    }
}

/// Path → kind, mode and content hash.
pub type Tree = BTreeMap<String, String>;

fn tree_of(dir: &Path) -> Tree {
    use std::os::unix::fs::MetadataExt;
    let mut out = Tree::new();
    for rel in crate::tree(dir) {
        let p = dir.join(&rel);
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let what = if m.is_dir() {
            "dir".to_string()
        } else if m.file_type().is_symlink() {
            format!("link {:?}", std::fs::read_link(&p).ok())
        } else {
            let bytes = std::fs::read(&p).unwrap_or_default();
            hex::encode(Sha256::digest(&bytes))
        };
        out.insert(rel, format!("{:o} {what}", m.mode()));
    }
    out
}

/// What an operation works on, as the trial found it after the crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Left {
    /// As before the operation.
    Before,
    /// As after it.
    After,
}

/// The expected states of one operation, from its reference run.
struct Expected {
    before: Option<Tree>,
    after: Option<Tree>,
}

/// Sets `s` up for `op`.
fn setup(op: Op, s: &Store, fx: &Fixtures) -> Result<(), String> {
    let image = fx.path("image");
    match op {
        Op::Import => Ok(()),
        Op::Apply | Op::LayerRm => {
            s.ok(&["image", "import", &image, "--name", "crash:1"])?;
            s.ok(&["layer", "create", "--id", "L", "--parent", &fx.top()])?;
            s.ok(&["layer", "apply", "L", &fx.path("pre.tar")])?;
            Ok(())
        }
        Op::ImageRm => s
            .ok(&["image", "import", &image, "--name", "crash:1"])
            .map(drop),
        Op::Commit | Op::ContainerRm => {
            s.ok(&["image", "import", &image, "--name", "crash:1"])?;
            s.ok(&["container", "create", "crash:1", "--name", "c"])?;
            let mnt = s.ok(&["container", "mount", "c"])?;
            let mnt = PathBuf::from(mnt.trim());
            std::fs::create_dir(mnt.join("written")).map_err(|e| e.to_string())?;
            for i in 0..fx.files {
                std::fs::write(mnt.join(format!("written/w{i}")), format!("w{i}"))
                    .map_err(|e| e.to_string())?;
            }
            std::fs::remove_file(mnt.join("l0/f5")).map_err(|e| e.to_string())?;
            if op == Op::Commit {
                s.ok(&["container", "unmount", "c"])?;
            }
            Ok(())
        }
    }
}

fn command(op: Op, fx: &Fixtures) -> Vec<String> {
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect();
    match op {
        Op::Import => v(&["image", "import", &fx.path("image"), "--name", "crash:1"]),
        Op::Apply => v(&["layer", "apply", "L", &fx.path("post.tar")]),
        Op::Commit => v(&["container", "commit", "c", "--name", "snap"]),
        Op::LayerRm => v(&["layer", "rm", "L"]),
        Op::ImageRm => v(&["image", "rm", "crash:1"]),
        Op::ContainerRm => v(&["container", "rm", "--force", "c"]),
    }
}

/// The state that tells before from after: a tree where the operation makes one, else
/// `None` with the presence of its object deciding.
fn observe(op: Op, s: &Store, fx: &Fixtures) -> Result<(bool, Option<Tree>), String> {
    match op {
        Op::Import | Op::ImageRm => {
            if s.has_image()? {
                Ok((true, Some(s.tree(&fx.top())?)))
            } else {
                Ok((false, None))
            }
        }
        Op::Apply | Op::LayerRm => {
            if s.ids()?.contains("L") {
                Ok((true, Some(s.tree("L")?)))
            } else {
                Ok((false, None))
            }
        }
        Op::Commit => {
            if s.ok(&["layer", "inspect", "snap"]).is_ok() {
                Ok((true, Some(s.tree("snap")?)))
            } else {
                Ok((false, None))
            }
        }
        Op::ContainerRm => Ok((s.has_container()?, None)),
    }
}

/// Which legitimate state `op`'s object is in, or why none.
fn classify(op: Op, s: &Store, fx: &Fixtures, exp: &Expected) -> Result<Left, String> {
    let (present, tree) = observe(op, s, fx)?;
    let layers = s.ids()?;
    let matches = |t: &Option<Tree>| tree.is_some() && tree == *t;
    let left = match (op, present) {
        // Nothing of a half-imported image stays; a whole one has its tree.
        (Op::Import, false) if layers.is_empty() => Left::Before,
        (Op::Import, true) if matches(&exp.after) => Left::After,
        (Op::Apply, true) if matches(&exp.before) => Left::Before,
        (Op::Apply, true) if matches(&exp.after) => Left::After,
        (Op::Commit, false) => Left::Before,
        (Op::Commit, true) if matches(&exp.after) => Left::After,
        (Op::LayerRm, true) if matches(&exp.before) => Left::Before,
        (Op::LayerRm, false) => Left::After,
        (Op::ImageRm, true) if matches(&exp.before) => Left::Before,
        (Op::ImageRm, false) if layers.is_empty() => Left::After,
        (Op::ContainerRm, true) => Left::Before,
        (Op::ContainerRm, false) if layers.len() == IMAGE_LAYERS => Left::After,
        _ => {
            return Err(format!(
                "{} left a state that is neither before nor after it: present {present}, \
                 layers {layers:?}, tree {}",
                op.name(),
                match &tree {
                    Some(t) => format!("of {} entries", t.len()),
                    None => "none".into(),
                }
            ));
        }
    };
    Ok(left)
}

/// Runs `op` again from what a crash left (`left`), to its end.
fn rerun(op: Op, s: &Store, fx: &Fixtures, left: Left) -> Result<(), String> {
    if left == Left::After {
        return Ok(());
    }
    let args = command(op, fx);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    s.ok(&args).map(drop)
}

/// The operation's span un-killed and the expected states, from one reference run.
struct Reference {
    span: Duration,
    expected: Expected,
}

fn reference(op: Op, bin: &Path, driver: &str, fx: &Fixtures) -> Result<Reference, String> {
    let s = Store::new(bin, driver);
    setup(op, &s, fx)?;
    let before = observe(op, &s, fx)?.1;
    let args = command(op, fx);
    let start = Instant::now();
    let (success, _, err) = s
        .command(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .output()
        .map(|o| {
            (
                o.status.success(),
                (),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .map_err(|e| e.to_string())?;
    let span = start.elapsed();
    if !success {
        return Err(format!("the reference {} failed: {err}", op.name()));
    }
    let after = observe(op, &s, fx)?.1;
    s.check_clean()?;
    Ok(Reference {
        span,
        expected: Expected { before, after },
    })
}

/// One trial's outcome.
#[derive(Clone, Debug)]
pub struct Trial {
    pub op: Op,
    pub driver: String,
    /// When the kill was sent, as a fraction of the reference span.
    pub at: f64,
    /// The process had ended by itself before the kill.
    pub finished_first: bool,
    pub left: Left,
}

/// Runs `trials` trials of `op` on `driver` with the CLI at `bin`; the first failure ends
/// it with a description naming the trial.
pub fn run(
    op: Op,
    bin: &Path,
    driver: &str,
    fx: &Fixtures,
    trials: usize,
    rng: &mut Rng,
) -> Result<(Duration, Vec<Trial>), String> {
    let reference = reference(op, bin, driver, fx)?;
    let mut out = Vec::with_capacity(trials);
    for n in 0..trials {
        let at = rng.unit();
        let trial = one(op, bin, driver, fx, &reference, at).map_err(|e| {
            format!(
                "{} on {driver}, trial {n} (kill at {:.0}% of {:?}): {e}",
                op.name(),
                at * 100.0,
                reference.span
            )
        })?;
        out.push(trial);
    }
    Ok((reference.span, out))
}

fn one(
    op: Op,
    bin: &Path,
    driver: &str,
    fx: &Fixtures,
    reference: &Reference,
    at: f64,
) -> Result<Trial, String> {
    let s = Store::new(bin, driver);
    setup(op, &s, fx)?;
    let args = command(op, fx);
    let mut child = s
        .command(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    std::thread::sleep(reference.span.mul_f64(at));
    let finished_first = child.try_wait().map_err(|e| e.to_string())?.is_some();
    let _ = child.kill();
    let _ = child.wait();
    // The next command opens the store and recovers.
    s.check_clean()
        .map_err(|e| format!("after the crash: {e}"))?;
    let left = classify(op, &s, fx, &reference.expected)?;
    rerun(op, &s, fx, left).map_err(|e| format!("running it again: {e}"))?;
    let again = classify(op, &s, fx, &reference.expected)?;
    if again != Left::After {
        return Err(format!(
            "running it again left {again:?}, not the reference's result"
        ));
    }
    s.check_clean()
        .map_err(|e| format!("after running it again: {e}"))?;
    Ok(Trial {
        op,
        driver: driver.to_string(),
        at,
        finished_first,
        left,
    })
}

/// A summary of `trials` for people: per operation and driver, the outcomes and where the
/// kills landed (tenths of the reference span).
pub fn summary(spans: &[(Op, String, Duration)], trials: &[Trial]) -> String {
    let mut text = String::new();
    for (op, driver, span) in spans {
        let mine: Vec<&Trial> = trials
            .iter()
            .filter(|t| t.op == *op && t.driver == *driver)
            .collect();
        let mut deciles = [0usize; 10];
        let mut left: BTreeMap<String, usize> = BTreeMap::new();
        let mut finished = 0;
        for t in &mine {
            deciles[((t.at * 10.0) as usize).min(9)] += 1;
            *left.entry(format!("{:?}", t.left)).or_default() += 1;
            finished += usize::from(t.finished_first);
        }
        text.push_str(&format!(
            "{:<22} {:<8} span {:>7.1} ms  {:>3} trials  kills per tenth of the span {:?}  \
             ended before the kill {}  left {:?}\n",
            op.name(),
            driver,
            span.as_secs_f64() * 1e3,
            mine.len(),
            deciles,
            finished,
            left
        ));
    }
    text
}

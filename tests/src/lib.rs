//! Shared helpers for Strata's integration tests: where the built drivers are, temporary
//! stores, the root check, and tar builders.
//!
//! Driver components are built by `cargo xtask test` (or `cargo xtask build`) before the
//! tests run; compiled components are cached in one directory per target dir, so each test
//! binary compiles each driver at most once.

use std::path::{Path, PathBuf};

use strata_host::config::Config;
use strata_host::conformance::{self, Outcome, Report, SuiteOptions};
use strata_host::layers::{StoreOptions, Strata};

pub mod applymem;
pub mod containerd;
pub mod crash;
pub mod oci;
pub mod serveload;
pub mod targen;

/// Where `cargo xtask` put the driver components.
pub fn wasm_dir() -> PathBuf {
    std::env::var_os("STRATA_TEST_WASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("wasm32-wasip2").join("wasm"))
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The component of a driver crate (`strata_driver_vfs`, `strata_test_driver_hostile`).
pub fn driver_wasm(crate_file_stem: &str) -> PathBuf {
    let p = wasm_dir().join(format!("{crate_file_stem}.wasm"));
    assert!(
        p.is_file(),
        "{} is missing: build the drivers first with `cargo xtask test` or `cargo xtask build`",
        p.display()
    );
    p
}

pub fn vfs_wasm() -> PathBuf {
    driver_wasm("strata_driver_vfs")
}

pub fn hostile_wasm() -> PathBuf {
    driver_wasm("strata_test_driver_hostile")
}

/// The component cache shared by every test in this target dir.
pub fn cache_dir() -> PathBuf {
    target_dir().join("strata-test-component-cache")
}

/// The `strata` binary built by `cargo xtask`.
pub fn strata_bin() -> PathBuf {
    let p = target_dir().join("debug").join("strata");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo xtask test` (it builds the CLI)",
        p.display()
    );
    p
}

/// The environment that makes a `strata` process use this target dir's drivers and
/// component cache.
pub fn strata_env() -> [(&'static str, PathBuf); 2] {
    [
        (strata_host::paths::COMPONENT_CACHE_ENV, cache_dir()),
        (strata_host::paths::DRIVER_DIR_ENV, wasm_dir()),
    ]
}

/// A `strata` command (the binary at `bin`) with [`strata_env`].
pub fn strata_command(bin: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    let mut c = std::process::Command::new(bin);
    c.envs(strata_env());
    c
}

/// The environment variable that turns every skip into a failure: when it is `1`, a test
/// that cannot run here (not root, a tool missing) panics instead of printing `skipped:`.
/// `cargo xtask test` sets it whenever it runs as root (as CI does), where every test can
/// run, so a skip there is a fault in the machine or the test, never a silent pass.
pub const REQUIRE_ALL_ENV: &str = "STRATA_TEST_REQUIRE_ALL";

/// Whether [`REQUIRE_ALL_ENV`], with the value `value`, asks for every test to run: only
/// `1` does (unset, empty or `0`: skips are allowed).
pub fn requires_all(value: Option<&std::ffi::OsStr>) -> bool {
    value.is_some_and(|v| v == "1")
}

/// The one place a test gives up because the environment cannot run it: prints
/// `skipped: TEST: REASON`, or panics with that reason when [`REQUIRE_ALL_ENV`] is `1`.
/// Every helper that decides a test cannot run here (`root_or_skip`, `btrfs_or_skip`,
/// `zfs_or_skip`, `containerd::tools_or_skip`) and every test that checks its environment
/// itself calls this, so `cargo xtask test` as root cannot pass with a test not run.
pub fn skip(test: &str, reason: &str) {
    skip_if_allowed(
        requires_all(std::env::var_os(REQUIRE_ALL_ENV).as_deref()),
        test,
        reason,
    )
}

/// [`skip`] with the requirement given (what [`skip`] reads from the environment).
pub fn skip_if_allowed(require_all: bool, test: &str, reason: &str) {
    if require_all {
        panic!(
            "{test} cannot run here ({reason}), and {REQUIRE_ALL_ENV}=1 requires every test \
             to run (a skip in CI is a failure)"
        );
    }
    eprintln!("skipped: {test}: {reason}");
}

/// Why a test that opens a store needs root: every driver's `init` makes its directories
/// owned 0:0 (through the host's `files.mkdir`), which only root may do.
pub const DRIVER_INIT_NEEDS_ROOT: &str = "a driver's init makes its directories owned 0:0";

/// Whether this process is root; when it is not, [`skip`]s `test` (`why` says what needs
/// root).
pub fn root_or_skip(test: &str, why: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        true
    } else {
        skip(test, &format!("needs root ({why})"));
        false
    }
}

/// The name tests configure a driver component under: its file stem without the
/// `strata_driver_` prefix (`strata_driver_vfs.wasm` → `vfs`).
pub fn test_driver_name(wasm: &Path) -> String {
    let stem = wasm
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .expect("a driver file name");
    stem.strip_prefix("strata_driver_")
        .map(str::to_string)
        .unwrap_or(stem)
}

/// `config` with `[drivers.NAME] path = wasm` (NAME from [`test_driver_name`]), and NAME.
pub fn configure_driver(mut config: Config, wasm: &Path) -> (String, Config) {
    let name = test_driver_name(wasm);
    config.drivers.entry(name.clone()).or_default().path = Some(wasm.to_path_buf());
    (name, config)
}

/// The hostile test driver's crate file stem, which tests also configure it under.
pub const HOSTILE: &str = "strata_test_driver_hostile";
/// Every interface the hostile driver imports, as a config line.
pub const HOSTILE_GRANTS: &str = r#"grants = ["files", "copy", "archive", "btrfs", "zfs", "log"]"#;

/// The config of a store in `t` running the hostile driver, its `[drivers.…]` section
/// holding `section` and, unless `section` names its own `grants`, [`HOSTILE_GRANTS`].
pub fn hostile_config(t: &TempStore, section: &str) -> Config {
    let grants = if section.contains("grants") {
        ""
    } else {
        HOSTILE_GRANTS
    };
    let text = format!(
        "root = {:?}\nrun_root = {:?}\n[drivers.{HOSTILE}]\n{grants}\n{section}\n",
        t.root(),
        t.dir.path().join("run")
    );
    Config::from_str(&text, "test.toml").expect("test config")
}

/// Creates layer `id` (no parent, read-only) with driver options `opts`.
pub fn create_with(s: &Strata, id: &str, opts: &[(&str, &str)]) -> strata_host::layers::Result<()> {
    s.create_layer(strata_host::layers::CreateLayer {
        id: Some(id.into()),
        options: opts
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    })
    .map(|_| ())
}

/// Every path beneath `dir`, relative, sorted (symlinks not followed): to show what a
/// command left behind, or that it left nothing.
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&p, base, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A temporary store root (removed on drop, unmounting anything left mounted).
pub struct TempStore {
    pub dir: tempfile::TempDir,
}

impl TempStore {
    pub fn new() -> Self {
        TempStore {
            dir: tempfile::Builder::new()
                .prefix("strata-test-")
                .tempdir()
                .expect("creating a temporary store"),
        }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn config(&self) -> Config {
        Config {
            root: self.root(),
            run_root: self.dir.path().join("run"),
            ..Config::default()
        }
    }

    /// Opens the store with the driver at `wasm`, configured as the operator would: a
    /// `[drivers.NAME]` section with its `path` (NAME from [`test_driver_name`]; a section of
    /// that name already in `config` keeps its other keys).
    pub fn open_with(&self, wasm: &Path, config: Config) -> strata_host::layers::Result<Strata> {
        let (name, config) = configure_driver(config, wasm);
        Strata::open(StoreOptions {
            config,
            driver: Some(name),
            driver_options: vec![],
            cache_dir: Some(cache_dir()),
        })
    }

    /// Opens the store with the driver at `wasm` given by path and not configured: it gets
    /// a `path-…` identity and the `[sandbox]` defaults only.
    pub fn open_unconfigured(
        &self,
        wasm: &Path,
        config: Config,
    ) -> strata_host::layers::Result<Strata> {
        Strata::open(StoreOptions {
            config,
            driver: Some(wasm.to_string_lossy().into_owned()),
            driver_options: vec![],
            cache_dir: Some(cache_dir()),
        })
    }

    /// The home of driver `name` in this store.
    pub fn home(&self, name: &str) -> PathBuf {
        strata_host::layout::driver_home(&self.root(), name)
    }

    pub fn open_vfs(&self) -> Strata {
        self.open_with(&vfs_wasm(), self.config())
            .expect("opening a vfs store")
    }

    /// Runs the CLI against this store; returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = strata_command(strata_bin())
            .arg("--root")
            .arg(self.root())
            .arg("--run-root")
            .arg(self.dir.path().join("run"))
            .args(args)
            .output()
            .expect("running strata");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Default for TempStore {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempStore {
    fn drop(&mut self) {
        // Unmount anything a failed test left mounted beneath the store, deepest first, so
        // that removing the temporary directory never walks into a mounted layer.
        strata_host::sys::mount::detach_all_beneath(self.dir.path());
    }
}

/// Whether the tools and the kernel can make a loop-mounted btrfs here; [`skip`]s `test`
/// when not.
pub fn btrfs_or_skip(test: &str) -> bool {
    if !root_or_skip(test, "it loop-mounts a btrfs filesystem") {
        return false;
    }
    let has_tool = std::process::Command::new("sh")
        .args(["-c", "command -v mkfs.btrfs && command -v btrfs"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_tool {
        skip(test, "mkfs.btrfs is not installed (Debian: btrfs-progs)");
        return false;
    }
    true
}

/// A btrfs filesystem on a sparse file, loop-mounted in a temporary directory; unmounted and
/// removed on drop (anything mounted beneath it first).
pub struct LoopBtrfs {
    pub dir: tempfile::TempDir,
}

impl LoopBtrfs {
    /// Makes and mounts a btrfs of `size` bytes (at least 256 MiB: smaller btrfs
    /// filesystems run out of metadata space) in a new temporary directory under `/var/tmp`
    /// (on disk, not tmpfs).
    pub fn new(size: u64) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("strata-btrfs-")
            .tempdir_in("/var/tmp")
            .expect("creating a temporary directory for a loop btrfs");
        let image = dir.path().join("image");
        let f = std::fs::File::create(&image).expect("creating the btrfs image");
        f.set_len(size).expect("sizing the btrfs image");
        drop(f);
        run_tool(
            std::process::Command::new("mkfs.btrfs")
                .arg("-q")
                .arg(&image),
        );
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        run_tool(
            std::process::Command::new("mount")
                .args(["-t", "btrfs", "-o", "loop"])
                .arg(&image)
                .arg(&mnt),
        );
        LoopBtrfs { dir }
    }

    /// Where the filesystem is mounted.
    pub fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// `strata --driver btrfs ARGS` (the first-party driver by name, as an operator runs it)
    /// on a store in this filesystem (`root/`, `run/`); its trimmed stdout, the command
    /// checked to succeed.
    pub fn cli(&self, args: &[&str]) -> String {
        run_tool(
            strata_command(strata_bin())
                .arg("--root")
                .arg(self.mnt().join("root"))
                .arg("--run-root")
                .arg(self.mnt().join("run"))
                .args(["--driver", "btrfs"])
                .args(args),
        )
        .trim()
        .to_string()
    }
}

impl Drop for LoopBtrfs {
    fn drop(&mut self) {
        strata_host::sys::mount::detach_all_beneath(&self.mnt());
        // The loop device goes with the last unmount (mount -o loop sets autoclear).
        let _ = std::process::Command::new("umount")
            .arg(self.mnt())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Runs a tool a test needs, failing the test with its output when it fails.
pub fn run_tool(cmd: &mut std::process::Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the conformance suite, printing each case as it ends; a driver given by path is configured first ([`configure_driver`]), so
/// that its config section (grants, `fsname`) applies as it would for an operator.
pub fn run_conformance(options: &SuiteOptions) -> Report {
    let mut options = options.clone();
    if strata_host::registry::is_path(&options.driver) {
        let (name, config) = configure_driver(options.config.clone(), Path::new(&options.driver));
        options.driver = name;
        options.config = config;
    }
    conformance::run(&options, |r| match &r.outcome {
        Outcome::Passed => eprintln!("ok    {} [{} ms]", r.name, r.millis),
        Outcome::Failed { message } => eprintln!("FAIL  {}: {message}", r.name),
    })
    .expect("running the conformance suite")
}

/// Fails the test listing every failed case, and unless every case ran (with the deep chain
/// `deep_chain` long).
pub fn assert_all_pass(report: &Report, deep_chain: usize) {
    let failures: Vec<String> = report
        .cases
        .iter()
        .filter_map(|c| match &c.outcome {
            Outcome::Failed { message } => Some(format!("{}: {message}", c.name)),
            Outcome::Passed => None,
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} conformance cases failed:\n{}",
        failures.len(),
        report.cases.len(),
        failures.join("\n")
    );
    assert_eq!(
        report.cases.len(),
        conformance::case_names(deep_chain).len(),
        "every case ran"
    );
}

/// Whether zfs-fuse can serve a test pool here; [`skip`]s `test` when not.
pub fn zfs_or_skip(test: &str) -> bool {
    if !root_or_skip(test, "it runs zfs-fuse and makes a file-backed pool") {
        return false;
    }
    let has_tools = std::process::Command::new("sh")
        .args([
            "-c",
            "command -v zfs-fuse && command -v zpool && command -v zfs",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_tools {
        skip(test, "zfs-fuse is not installed (Debian: zfs-fuse)");
        return false;
    }
    if !Path::new("/dev/fuse").exists() {
        skip(test, "/dev/fuse is missing, so zfs-fuse cannot mount");
        return false;
    }
    true
}

/// Users of the zfs-fuse daemon in this process, and the daemon this process started (if
/// it found none running): its pid.
struct DaemonState {
    users: usize,
    started: Option<i32>,
}

static ZFS_DAEMON: std::sync::Mutex<DaemonState> = std::sync::Mutex::new(DaemonState {
    users: 0,
    started: None,
});

/// How long the zfs-fuse daemon gets to start answering, or to exit after SIGTERM.
const ZFS_DAEMON_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

fn zfs_daemon_answers() -> bool {
    std::process::Command::new("zpool")
        .args(["list", "-H"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A share of the zfs-fuse daemon: started (with `-x`, for xattrs) when none runs; stopped
/// when the last share this process holds is dropped, and only if this process started it.
pub struct ZfsDaemon(());

impl ZfsDaemon {
    pub fn acquire() -> ZfsDaemon {
        let mut state = ZFS_DAEMON.lock().unwrap_or_else(|e| e.into_inner());
        if state.users == 0 && !zfs_daemon_answers() {
            let dir = tempfile::Builder::new()
                .prefix("strata-zfs-fuse-")
                .tempdir()
                .expect("a directory for the zfs-fuse pid file");
            let pidfile = dir.path().join("pid");
            run_tool(
                std::process::Command::new("zfs-fuse")
                    .arg("-x")
                    .arg("--pidfile")
                    .arg(&pidfile),
            );
            let start = std::time::Instant::now();
            while !zfs_daemon_answers() {
                assert!(
                    start.elapsed() < ZFS_DAEMON_WAIT,
                    "zfs-fuse did not answer within {ZFS_DAEMON_WAIT:?}"
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let pid = std::fs::read_to_string(&pidfile)
                .expect("reading the zfs-fuse pid file")
                .trim()
                .parse()
                .expect("a pid in the zfs-fuse pid file");
            eprintln!("started zfs-fuse -x (pid {pid}) for the tests");
            state.started = Some(pid);
        }
        state.users += 1;
        ZfsDaemon(())
    }
}

impl Drop for ZfsDaemon {
    fn drop(&mut self) {
        let mut state = ZFS_DAEMON.lock().unwrap_or_else(|e| e.into_inner());
        state.users -= 1;
        if state.users > 0 {
            return;
        }
        if let Some(pid) = state.started.take() {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
            let start = std::time::Instant::now();
            while Path::new(&format!("/proc/{pid}")).exists() && start.elapsed() < ZFS_DAEMON_WAIT {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}

/// A zfs pool on a sparse file with a unique name, and a parent dataset `<pool>/strata` for a
/// store (`fsname`); destroyed on drop. Holds a share of the zfs-fuse daemon.
pub struct ZfsPool {
    pub name: String,
    pub dir: tempfile::TempDir,
    _daemon: ZfsDaemon,
}

impl ZfsPool {
    /// A pool of `size` bytes (zfs-fuse wants at least 64 MiB) in `/var/tmp` (on disk).
    pub fn new(size: u64) -> ZfsPool {
        static SERIAL: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let daemon = ZfsDaemon::acquire();
        let dir = tempfile::Builder::new()
            .prefix("strata-zfs-")
            .tempdir_in("/var/tmp")
            .expect("creating a directory for a pool image");
        let image = dir.path().join("image");
        let f = std::fs::File::create(&image).expect("creating the pool image");
        f.set_len(size).expect("sizing the pool image");
        drop(f);
        let name = format!(
            "strata-test-{}-{}",
            std::process::id(),
            SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        run_tool(
            std::process::Command::new("zpool")
                .args(["create", "-m", "none", &name])
                .arg(&image),
        );
        run_tool(std::process::Command::new("zfs").args([
            "create",
            "-o",
            "mountpoint=none",
            &format!("{name}/strata"),
        ]));
        ZfsPool {
            name,
            dir,
            _daemon: daemon,
        }
    }

    /// The parent dataset for a store.
    pub fn fsname(&self) -> String {
        format!("{}/strata", self.name)
    }

    /// Names of every dataset and snapshot in the pool (`zfs list -r -t all`).
    pub fn datasets(&self) -> Vec<String> {
        run_tool(std::process::Command::new("zfs").args([
            "list",
            "-H",
            "-o",
            "name",
            "-t",
            "filesystem,snapshot",
            "-r",
            &self.name,
        ]))
        .lines()
        .map(str::to_string)
        .collect()
    }
}

impl Drop for ZfsPool {
    fn drop(&mut self) {
        // zfs-fuse may still be settling an unmount; a few tries.
        for _ in 0..20 {
            let ok = std::process::Command::new("zpool")
                .args(["destroy", "-f", &self.name])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        eprintln!("warning: could not destroy test pool {}", self.name);
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

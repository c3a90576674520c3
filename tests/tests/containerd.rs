//! Strata under real containerd: `strata serve --containerd-socket` as a proxy snapshotter
//! of a private containerd (Debian's, with runc). Images are imported and run with `ctr
//! --snapshotter strata`; removing the image lets containerd's garbage collection remove the
//! snapshots through Strata; the daemon is killed with SIGKILL and restarted.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strata_tests::oci::{self, Compression};
use strata_tests::strata_bin;
use strata_tests::targen::{Entry, tar_of};

fn tools_or_skip(test: &str) -> bool {
    if !strata_tests::root_or_skip(test, "containerd and mounts") {
        return false;
    }
    for (tool, package) in [
        ("containerd", "containerd"),
        ("ctr", "containerd"),
        ("runc", "runc"),
        ("busybox", "busybox-static"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            eprintln!("skipped: {test}: needs {tool} (Debian package {package})");
            return false;
        }
    }
    true
}

/// A private containerd with Strata as the proxy snapshotter `strata`.
struct Daemons {
    dir: tempfile::TempDir,
    strata: Option<Child>,
    containerd: Child,
}

impl Daemons {
    fn start() -> Daemons {
        let dir = tempfile::Builder::new()
            .prefix("strata-containerd-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("config.toml"),
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
                 [grpc]\n  address = \"{0}/containerd.sock\"\n\
                 [proxy_plugins]\n  [proxy_plugins.strata]\n    type = \"snapshot\"\n    \
                 address = \"{0}/strata.sock\"\n",
                d.display()
            ),
        )
        .unwrap();
        let containerd = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("containerd.log")).unwrap())
            .spawn()
            .expect("starting containerd");
        let mut daemons = Daemons {
            dir,
            strata: None,
            containerd,
        };
        daemons.start_strata();
        daemons.wait_for(&daemons.path("containerd.sock"));
        daemons
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn wait_for(&self, socket: &Path) {
        let start = Instant::now();
        while !socket.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{} did not appear",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn strata_command(&self) -> Command {
        let mut c = strata_tests::strata_command(strata_bin());
        c.arg("--root")
            .arg(self.path("strata"))
            .arg("--run-root")
            .arg(self.path("strata-run"));
        c
    }

    fn start_strata(&mut self) {
        let _ = std::fs::remove_file(self.path("strata.sock"));
        let child = self
            .strata_command()
            .arg("serve")
            .arg("--containerd-socket")
            .arg(self.path("strata.sock"))
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.path("strata.log"))
                    .unwrap(),
            )
            .spawn()
            .expect("starting strata serve");
        self.strata = Some(child);
        self.wait_for(&self.path("strata.sock"));
    }

    /// After a restart containerd's connection to the old socket is broken; it redials with
    /// a back-off of up to 3 s and fails calls as unavailable until then. Listing answers
    /// from containerd's own records, so a snapshot is prepared (and removed) to be sure the
    /// snapshotter itself answers.
    fn wait_until_containerd_reconnects(&self) {
        let start = Instant::now();
        loop {
            let (success, _, err) = self.ctr(&[
                "snapshots",
                "--snapshotter",
                "strata",
                "prepare",
                "reconnect-probe",
            ]);
            if success {
                self.ok(&[
                    "snapshots",
                    "--snapshotter",
                    "strata",
                    "rm",
                    "reconnect-probe",
                ]);
                return;
            }
            assert!(
                err.contains("unavailable") && start.elapsed() < Duration::from_secs(30),
                "containerd does not reach the restarted snapshotter: {err}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill_strata(&mut self) {
        if let Some(mut c) = self.strata.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn ctr(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(self.path("containerd.sock"))
            .args(["--namespace", "strata-test"])
            .args(args)
            .output()
            .expect("running ctr");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (success, out, err) = self.ctr(args);
        assert!(
            success,
            "ctr {args:?} failed: {err}\nstrata log: {}\nprocesses: {}",
            std::fs::read_to_string(self.path("strata.log")).unwrap_or_default(),
            String::from_utf8_lossy(
                &Command::new("sh")
                    .args(["-c", "ps -eo pid,stat,args | grep '[s]trata.sock'"])
                    .output()
                    .unwrap()
                    .stdout
            )
        );
        out
    }

    /// Snapshot keys containerd's strata snapshotter lists.
    fn snapshots(&self) -> Vec<String> {
        self.ok(&["snapshots", "--snapshotter", "strata", "ls"])
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }

    /// Layers in Strata's store.
    fn layers(&self) -> Vec<String> {
        let out = self
            .strata_command()
            .args(["layer", "ls"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split('\t').next().unwrap().to_string())
            .collect()
    }

    /// Waits for containerd's garbage collection to have removed every snapshot, through
    /// Strata: no snapshot and no layer left.
    fn wait_until_collected(&self) {
        let start = Instant::now();
        while !self.snapshots().is_empty() && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(self.snapshots(), Vec::<String>::new());
        assert_eq!(self.layers(), Vec::<String>::new());
    }

    /// `ctr run --rm` of `image` on the strata snapshotter running [`RUN`]; its output.
    fn run(&self, image: &str, id: &str) -> String {
        self.ok(&[
            "run",
            "--rm",
            "--snapshotter",
            "strata",
            image,
            id,
            "/bin/sh",
            "-c",
            RUN,
        ])
    }

    /// Imports the OCI archive at `path`; returns the image's name in containerd.
    fn import(&self, path: &Path, base: &str) -> String {
        self.ok(&[
            "images",
            "import",
            "--snapshotter",
            "strata",
            "--base-name",
            base,
            path.to_str().unwrap(),
        ]);
        let names = self.ok(&["images", "ls", "-q"]);
        names
            .lines()
            .find(|n| n.starts_with(base))
            .unwrap_or_else(|| panic!("no image named {base}* in {names}"))
            .to_string()
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for log in ["containerd.log", "strata.log"] {
                let text = std::fs::read_to_string(self.path(log)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(25).collect();
                eprintln!("--- last lines of {log}:");
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.containerd.id().to_string())
            .status();
        let start = Instant::now();
        while self.containerd.try_wait().ok().flatten().is_none()
            && start.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.containerd.kill();
        let _ = self.containerd.wait();
        self.kill_strata();
        strata_host::sys::mount::detach_all_beneath(self.dir.path());
    }
}

/// A small image whose only program is the static busybox: a base with a file the top layer
/// deletes (a whiteout), and `extra` bytes of data per layer to make imports take time.
fn busybox_image(dir: &Path, name: &str, extra: usize) -> PathBuf {
    let busybox = std::fs::read("/bin/busybox").expect("reading /bin/busybox");
    let mut base = vec![
        Entry::dir("bin", 0o755),
        Entry::file("bin/busybox", 0o755, &busybox),
        Entry::symlink("bin/sh", "busybox"),
        Entry::symlink("bin/cat", "busybox"),
        Entry::symlink("bin/echo", "busybox"),
        Entry::symlink("bin/test", "busybox"),
        Entry::dir("tmp", 0o1777),
        Entry::dir("etc", 0o755),
        Entry::file(
            "etc/os-release",
            0o644,
            b"PRETTY_NAME=\"Strata test image\"\n",
        ),
        Entry::file("etc/gone", 0o644, b"deleted by the top layer\n"),
    ];
    if extra > 0 {
        base.push(Entry::file("data/base", 0o644, &vec![1u8; extra]));
    }
    let mut top = vec![
        Entry::whiteout("etc/gone"),
        Entry::file("etc/motd", 0o644, b"from the top layer\n"),
    ];
    if extra > 0 {
        top.push(Entry::file("data/top", 0o644, &vec![2u8; extra]));
    }
    let image = oci::build(&[tar_of(&base), tar_of(&top)], Compression::Gzip, "1");
    let path = dir.join(format!("{name}.tar"));
    oci::write_oci_archive(&image, &path);
    path
}

const RUN: &str = "echo ok > /tmp/x && cat /tmp/x && cat /etc/os-release /etc/motd && test ! -e /etc/gone && echo whiteout-ok";

#[test]
fn containerd_imports_runs_and_collects_through_strata() {
    if !tools_or_skip("containerd_imports_runs_and_collects_through_strata") {
        return;
    }
    let d = Daemons::start();
    let archive = busybox_image(d.dir.path(), "busybox", 0);
    let image = d.import(&archive, "strata-test/busybox");
    assert_eq!(d.snapshots().len(), 2, "one committed snapshot per layer");
    assert_eq!(d.layers().len(), 2);
    let out = d.run(&image, "c1");
    assert!(out.contains("ok\n"), "{out}");
    assert!(out.contains("Strata test image"), "{out}");
    assert!(out.contains("from the top layer"), "{out}");
    assert!(out.contains("whiteout-ok"), "{out}");
    // The container's snapshot went with --rm; the image's stay until the image goes, then
    // containerd's garbage collection removes them through Strata.
    assert_eq!(d.snapshots().len(), 2);
    d.ok(&["images", "rm", "--sync", &image]);
    d.wait_until_collected();
}

#[test]
fn a_killed_snapshotter_restarts_with_its_snapshots() {
    if !tools_or_skip("a_killed_snapshotter_restarts_with_its_snapshots") {
        return;
    }
    let mut d = Daemons::start();
    let small = busybox_image(d.dir.path(), "small", 0);
    let image = d.import(&small, "strata-test/small");
    d.kill_strata();
    d.start_strata();
    d.wait_until_containerd_reconnects();
    // Every snapshot is still there and serves the same mounts.
    assert_eq!(d.snapshots().len(), 2);
    let out = d.run(&image, "c1");
    assert!(out.contains("whiteout-ok"), "{out}");

    // SIGKILL while containerd imports a larger image.
    let big = busybox_image(d.dir.path(), "big", 48 << 20);
    let mut import = Command::new("ctr")
        .arg("--address")
        .arg(d.path("containerd.sock"))
        .args(["--namespace", "strata-test", "images", "import"])
        .args(["--snapshotter", "strata", "--base-name", "strata-test/big"])
        .arg(&big)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let before = d.layers().len();
    let start = Instant::now();
    let mut killed_mid_import = false;
    while start.elapsed() < Duration::from_secs(120) {
        if import.try_wait().unwrap().is_some() {
            break;
        }
        let layers_dir = strata_host::layout::driver_home(&d.path("strata"), "overlay");
        let present = std::fs::read_dir(&layers_dir)
            .map(|r| r.count())
            .unwrap_or(0);
        // `l/` plus the two layers of the small image: a third entry is the big image's
        // first snapshot, prepared and being filled by containerd.
        if present > before + 1 {
            d.kill_strata();
            killed_mid_import = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = import.wait();
    assert!(
        killed_mid_import,
        "the import ended before the snapshotter could be killed"
    );
    d.start_strata();
    d.wait_until_containerd_reconnects();
    let big_image = d.import(&big, "strata-test/big");
    let out = d.run(&big_image, "c2");
    assert!(out.contains("whiteout-ok"), "{out}");
    for i in [&image, &big_image] {
        d.ok(&["images", "rm", "--sync", i]);
    }
    d.wait_until_collected();
}

/// An image of `count` layers: busybox at the bottom, then one tiny file per layer
/// (`layers/<i>`), as deep as containerd's own overlayfs snapshotter runs.
fn deep_busybox_image(dir: &Path, count: usize) -> PathBuf {
    let busybox = std::fs::read("/bin/busybox").expect("reading /bin/busybox");
    let mut layers = vec![tar_of(&[
        Entry::dir("bin", 0o755),
        Entry::file("bin/busybox", 0o755, &busybox),
        Entry::symlink("bin/sh", "busybox"),
        Entry::symlink("bin/cat", "busybox"),
        Entry::symlink("bin/ls", "busybox"),
        Entry::symlink("bin/wc", "busybox"),
        Entry::dir("tmp", 0o1777),
        Entry::dir("layers", 0o755),
    ])];
    for i in 1..count {
        layers.push(tar_of(&[Entry::file(
            &format!("layers/{i}"),
            0o644,
            format!("layer {i}\n").as_bytes(),
        )]));
    }
    let image = oci::build(&layers, Compression::None, "1");
    let path = dir.join(format!("deep{count}.tar"));
    oci::write_oci_archive(&image, &path);
    path
}

/// A container on a 500-layer image runs through containerd on the overlay driver: its
/// active snapshot is an upper over 500 lowers, as containerd's overlayfs mounts it.
#[test]
fn ctr_runs_a_container_on_a_500_layer_image() {
    if !tools_or_skip("ctr_runs_a_container_on_a_500_layer_image") {
        return;
    }
    let d = Daemons::start();
    let archive = deep_busybox_image(d.dir.path(), 500);
    let image = d.import(&archive, "strata-test/deep");
    assert_eq!(d.snapshots().len(), 500, "one committed snapshot per layer");
    let out = d.ok(&[
        "run",
        "--rm",
        "--snapshotter",
        "strata",
        &image,
        "deep",
        "/bin/sh",
        "-c",
        "cat /layers/1 /layers/250 /layers/499 && ls /layers | wc -l && echo w > /tmp/w && cat /tmp/w",
    ]);
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(
        lines,
        ["layer 1", "layer 250", "layer 499", "499", "w"],
        "{out}"
    );
    d.ok(&["images", "rm", "--sync", &image]);
    d.wait_until_collected();
}

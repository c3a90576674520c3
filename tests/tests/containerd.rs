//! Strata under real containerd: `strata serve --containerd-socket` as a proxy snapshotter
//! of a private containerd (Debian's, with runc). Images are imported and run with `ctr
//! --snapshotter strata`; removing the image lets containerd's garbage collection remove the
//! snapshots through Strata; the daemon is killed with SIGKILL and restarted.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use strata_tests::containerd::{Daemons, tools_or_skip};
use strata_tests::oci::{self, Compression};
use strata_tests::targen::{Entry, tar_of};

/// What these tests do with the shared [`Daemons`].
trait Images {
    fn run(&self, image: &str, id: &str) -> String;
    fn import(&self, path: &Path, base: &str) -> String;
}

impl Images for Daemons {
    /// `ctr run --rm` of `image` on the strata snapshotter running [`RUN`]; its output. The
    /// container id gets this containerd's directory name as a suffix: runc's state root is
    /// shared by every containerd on the machine, and the tests run at the same time.
    fn run(&self, image: &str, id: &str) -> String {
        let unique = self.dir.path().file_name().unwrap().to_string_lossy();
        let id = &format!("{id}-{unique}");
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
        let layers_dir = strata_core::layout::driver_home(&d.path("strata"), "overlay");
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

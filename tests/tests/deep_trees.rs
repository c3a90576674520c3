//! Trees deeper than the host's depth limit (`MAX_TREE_DEPTH`, 1024 levels) never brick the
//! store. An image entry deeper than the limit is refused at import, naming the limit; a
//! container may make any tree the kernel allows (here 1,100 levels, and paths far longer
//! than `PATH_MAX`), and then diff, changes and commit fail cleanly naming the limit while
//! removing the container, and every command after, works — on vfs and on overlay.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use strata_tests::TempStore;
use strata_tests::oci::{self, Compression};
use strata_tests::targen::{Entry, tar_of};

/// Levels of the deep trees: more than the host's limit of 1024.
const LEVELS: usize = 1100;

fn with(d: &[&str], args: &[&str]) -> Vec<String> {
    d.iter().chain(args).map(|s| s.to_string()).collect()
}

fn run(t: &TempStore, d: &[&str], args: &[&str]) -> (bool, String, String) {
    let all = with(d, args);
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    t.cli(&refs)
}

fn run_ok(t: &TempStore, d: &[&str], args: &[&str]) -> String {
    let (success, out, err) = run(t, d, args);
    assert!(success, "strata {d:?} {args:?} failed: {err}");
    out
}

/// A failure that names the depth limit, not an internal error.
fn fails_naming_the_limit(t: &TempStore, d: &[&str], args: &[&str]) {
    let (success, out, err) = run(t, d, args);
    assert!(!success, "strata {d:?} {args:?} succeeded: {out}");
    assert!(
        err.contains("deeper than 1024 levels"),
        "strata {d:?} {args:?} should name the depth limit: {err}"
    );
}

/// A small image, to show the store still imports, makes containers and removes them.
fn small_image(t: &TempStore, d: &[&str], reference: &str) {
    let layout = t
        .dir
        .path()
        .join(format!("small-{}", reference.replace(':', "-")));
    let img = oci::build(
        &[tar_of(&[Entry::file("hello", 0o644, b"hello\n")])],
        Compression::Gzip,
        reference,
    );
    oci::write_layout(&img, &layout);
    run_ok(t, d, &["image", "import", layout.to_str().unwrap()]);
    run_ok(t, d, &["container", "create", reference, "--name", "after"]);
    run_ok(t, d, &["container", "rm", "--force", "after"]);
    run_ok(t, d, &["image", "rm", reference]);
}

fn deep_image_refused_or_removable(d: &[&str]) {
    let t = TempStore::new();
    let name = format!("{}f", "d/".repeat(LEVELS - 1));
    assert!(
        name.len() < 4096,
        "under the path limit: only depth is at stake"
    );
    let layout = t.dir.path().join("deep");
    let img = oci::build(
        &[tar_of(&[Entry::file(&name, 0o644, b"deep\n")])],
        Compression::Zstd,
        "deep:1",
    );
    oci::write_layout(&img, &layout);
    let (imported, _, err) = run(&t, d, &["image", "import", layout.to_str().unwrap()]);
    if imported {
        // Taken in: then it must go again.
        run_ok(&t, d, &["image", "rm", "deep:1"]);
    } else {
        assert!(
            err.contains("deeper than 1024 levels"),
            "a refusal names the depth limit: {err}"
        );
    }
    assert_eq!(
        run_ok(&t, d, &["layer", "ls"]).trim(),
        "",
        "nothing is left"
    );
    small_image(&t, d, "small:1");
    assert_eq!(run_ok(&t, d, &["image", "ls"]).trim(), "");
}

#[test]
fn an_image_1100_levels_deep_is_refused_cleanly_on_vfs() {
    if !strata_tests::root_or_skip(
        "an_image_1100_levels_deep_is_refused_cleanly_on_vfs",
        strata_tests::DRIVER_INIT_NEEDS_ROOT,
    ) {
        return;
    }
    deep_image_refused_or_removable(&["--driver", "vfs"]);
}

#[test]
fn an_image_1100_levels_deep_is_refused_cleanly_on_overlay() {
    if !strata_tests::root_or_skip(
        "an_image_1100_levels_deep_is_refused_cleanly_on_overlay",
        "mounts",
    ) {
        return;
    }
    deep_image_refused_or_removable(&["--driver", "overlay"]);
}

/// A 1024-level tree (the limit itself) imports, copies, diffs and is removed.
#[test]
fn an_image_at_the_depth_limit_works() {
    if !strata_tests::root_or_skip(
        "an_image_at_the_depth_limit_works",
        strata_tests::DRIVER_INIT_NEEDS_ROOT,
    ) {
        return;
    }
    let t = TempStore::new();
    let d = ["--driver", "vfs"];
    let name = format!("{}f", "d/".repeat(1023));
    let layout = t.dir.path().join("deep");
    let img = oci::build(
        &[tar_of(&[Entry::file(&name, 0o644, b"deep\n")])],
        Compression::None,
        "deep:1024",
    );
    oci::write_layout(&img, &layout);
    run_ok(&t, &d, &["image", "import", layout.to_str().unwrap()]);
    // A vfs container is a copy of the image's layer.
    let id = run_ok(&t, &d, &["container", "create", "deep:1024", "--name", "c"])
        .trim()
        .to_string();
    let out = t.dir.path().join("diff.tar");
    run_ok(&t, &d, &["layer", "diff", &id, "-o", out.to_str().unwrap()]);
    run_ok(&t, &d, &["container", "rm", "--force", "c"]);
    run_ok(&t, &d, &["image", "rm", "deep:1024"]);
    assert_eq!(run_ok(&t, &d, &["layer", "ls"]).trim(), "");
}

/// Makes `levels` nested directories named `name` under `top` with `mkdirat`/`openat`
/// (the whole path is far beyond what one path syscall takes) and a file at the bottom.
/// Close-on-exec: the strata processes other tests start must not hold the mount busy.
fn make_deep_tree(top: &Path, name: &str, levels: usize) {
    let mut fd: OwnedFd = rustix::fs::open(
        top,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .expect("opening the mount");
    for _ in 0..levels {
        rustix::fs::mkdirat(fd.as_fd(), name, Mode::from_raw_mode(0o755)).expect("mkdirat");
        fd = rustix::fs::openat(
            fd.as_fd(),
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("openat");
    }
    let f = rustix::fs::openat(
        fd.as_fd(),
        "bottom",
        OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .expect("creating the bottom file");
    rustix::io::write(&f, b"at the bottom\n").expect("writing the bottom file");
}

fn container_with_a_deep_tree(d: &[&str]) {
    let t = TempStore::new();
    small_image(&t, d, "base:1");
    let layout = t.dir.path().join("base");
    let img = oci::build(
        &[tar_of(&[Entry::file("base", 0o644, b"base\n")])],
        Compression::None,
        "base:2",
    );
    oci::write_layout(&img, &layout);
    run_ok(&t, d, &["image", "import", layout.to_str().unwrap()]);
    let id = run_ok(&t, d, &["container", "create", "base:2", "--name", "deep"])
        .trim()
        .to_string();
    let mnt = PathBuf::from(run_ok(&t, d, &["container", "mount", "deep"]).trim());
    // Two trees: `d/d/…` 1,100 levels (2.2 KiB of path) and 1,100 levels of a 12-byte name
    // (14 KiB of path, beyond PATH_MAX).
    make_deep_tree(&mnt, "d", LEVELS);
    make_deep_tree(&mnt, "long-name-12", LEVELS);
    run_ok(&t, d, &["container", "unmount", "deep"]);

    fails_naming_the_limit(&t, d, &["layer", "changes", &id]);
    let out = t.dir.path().join("diff.tar");
    fails_naming_the_limit(&t, d, &["layer", "diff", &id, "-o", out.to_str().unwrap()]);
    fails_naming_the_limit(&t, d, &["container", "commit", "deep", "--name", "snap"]);
    let layers = run_ok(&t, d, &["layer", "ls"]);
    assert!(
        !layers.contains("snap"),
        "no partial commit is left: {layers}"
    );

    // Removal works whatever the depth, and the store keeps working.
    run_ok(&t, d, &["container", "rm", "--force", "deep"]);
    run_ok(&t, d, &["image", "rm", "base:2"]);
    assert_eq!(
        run_ok(&t, d, &["layer", "ls"]).trim(),
        "",
        "nothing is left"
    );
    small_image(&t, d, "small:2");
    let leftovers = strata_tests::tree(&t.root());
    assert!(
        !leftovers
            .iter()
            .any(|p| p.contains("long-name-12") || p.contains("/d/d/")),
        "the deep trees are gone from the store"
    );
}

#[test]
fn a_vfs_container_with_a_tree_1100_levels_deep_is_removed() {
    if !strata_tests::root_or_skip(
        "a_vfs_container_with_a_tree_1100_levels_deep_is_removed",
        "mounts",
    ) {
        return;
    }
    container_with_a_deep_tree(&["--driver", "vfs"]);
}

#[test]
fn an_overlay_container_with_a_tree_1100_levels_deep_is_removed() {
    if !strata_tests::root_or_skip(
        "an_overlay_container_with_a_tree_1100_levels_deep_is_removed",
        "mounts",
    ) {
        return;
    }
    container_with_a_deep_tree(&["--driver", "overlay"]);
}

/// A tree deeper than the removal's descriptor window and its checkpoints many times over
/// (5,000 levels) is removed by `layer rm`.
#[test]
fn a_layer_5000_levels_deep_is_removed() {
    if !strata_tests::root_or_skip("a_layer_5000_levels_deep_is_removed", "mounts") {
        return;
    }
    let t = TempStore::new();
    let d = ["--driver", "overlay"];
    run_ok(&t, &d, &["layer", "create", "--id", "rw", "--rw"]);
    let mnt = PathBuf::from(run_ok(&t, &d, &["layer", "mount", "rw"]).trim());
    make_deep_tree(&mnt, "d", 5_000);
    run_ok(&t, &d, &["layer", "unmount", "rw"]);
    run_ok(&t, &d, &["layer", "rm", "rw"]);
    assert_eq!(run_ok(&t, &d, &["layer", "ls"]).trim(), "");
}

/// On btrfs a layer is a subvolume, deleted in the kernel whatever its depth, unless a
/// container nested subvolumes in it: those are found by a walk of the layer, which must
/// reach any depth too.
#[test]
fn a_btrfs_container_with_a_subvolume_1100_levels_deep_is_removed() {
    if !strata_tests::btrfs_or_skip(
        "a_btrfs_container_with_a_subvolume_1100_levels_deep_is_removed",
    ) {
        return;
    }
    let fs = strata_tests::LoopBtrfs::new(512 << 20);
    // Through the CLI by name, as an operator runs it: the first-party driver gets the
    // btrfs grant without any config.
    let cli = |args: &[&str]| fs.cli(args);
    let base = cli(&["layer", "create", "--rw"]);
    let container = cli(&["layer", "create", "--rw", "--parent", &base]);
    let m = PathBuf::from(cli(&["layer", "mount", &container]));
    make_deep_tree(&m, "d", LEVELS);
    let nested = m.join(format!("{}nested", "d/".repeat(LEVELS)));
    strata_tests::run_tool(
        std::process::Command::new("btrfs")
            .args(["subvolume", "create"])
            .arg(&nested),
    );
    cli(&["layer", "unmount", &container]);
    cli(&["layer", "rm", &container]);
    cli(&["layer", "rm", &base]);
    assert_eq!(cli(&["layer", "ls"]), "");
}

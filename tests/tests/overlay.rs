//! The overlay driver as an operator meets it through `strata`: the on-disk layout, copy-up
//! and whiteouts landing in `diff/`, `layer diff` turning them back into `.wh.` entries, and
//! recovery when the short-name links are lost.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use strata_tests::targen::{Entry, tar_of};
use strata_tests::{TempStore, root_or_skip};

fn ok(t: &TempStore, args: &[&str]) -> String {
    let (success, out, err) = t.cli(args);
    assert!(success, "strata {} failed: {err}", args.join(" "));
    out.trim().to_string()
}

fn home(t: &TempStore) -> PathBuf {
    t.home("overlay")
}

fn base_with_files(t: &TempStore) {
    let tar = t.dir.path().join("base.tar");
    std::fs::write(
        &tar,
        tar_of(&[
            Entry::dir("etc", 0o755),
            Entry::file("etc/hosts", 0o644, b"127.0.0.1 localhost\n"),
            Entry::file("etc/motd", 0o644, b"welcome\n"),
            Entry::dir("opt", 0o755),
            Entry::file("opt/tool", 0o755, b"#!/bin/sh\n"),
        ]),
    )
    .unwrap();
    ok(t, &["layer", "create", "--id", "base"]);
    ok(t, &["layer", "apply", "base", &tar.to_string_lossy()]);
}

fn is_whiteout(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

#[test]
fn the_operators_lab_copy_up_whiteouts_and_diff() {
    if !root_or_skip(
        "the_operators_lab_copy_up_whiteouts_and_diff",
        "overlay mounts",
    ) {
        return;
    }
    let t = TempStore::new();
    base_with_files(&t);
    ok(
        &t,
        &["layer", "create", "--id", "web", "--parent", "base", "--rw"],
    );

    // The layout operators know from containers/storage.
    let web = home(&t).join("web");
    for d in ["diff", "work", "merged"] {
        assert!(web.join(d).is_dir(), "web/{d}");
    }
    let lid = std::fs::read_to_string(web.join("link")).unwrap();
    assert_eq!(lid.len(), 26, "{lid}");
    assert_eq!(
        std::fs::read_link(home(&t).join("l").join(&lid)).unwrap(),
        Path::new("../web/diff")
    );
    let base_lid = std::fs::read_to_string(home(&t).join("base/link")).unwrap();
    assert_eq!(
        std::fs::read_to_string(web.join("lower")).unwrap(),
        format!("l/{base_lid}")
    );
    assert!(
        !home(&t).join("base/lower").exists(),
        "a base layer has no lower"
    );

    let merged = PathBuf::from(ok(&t, &["layer", "mount", "web"]));
    // The host mounts on its own mount point, outside the driver home.
    assert_eq!(merged, t.root().join("mounts/web"));
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(&*merged.to_string_lossy()))
        .expect("the layer is mounted");
    assert!(line.contains(" - overlay "), "an overlay mount: {line}");

    // Modify a lower file: the copy appears in diff/.
    std::fs::write(merged.join("etc/hosts"), b"10.0.0.1 web\n").unwrap();
    assert_eq!(
        std::fs::read(web.join("diff/etc/hosts")).unwrap(),
        b"10.0.0.1 web\n"
    );
    assert_eq!(
        std::fs::read(home(&t).join("base/diff/etc/hosts")).unwrap(),
        b"127.0.0.1 localhost\n",
        "the lower layer is untouched"
    );
    // Delete one: a 0:0 character device appears in diff/.
    std::fs::remove_file(merged.join("etc/motd")).unwrap();
    assert!(is_whiteout(&web.join("diff/etc/motd")), "whiteout in diff/");
    // Replace a directory: it becomes opaque.
    std::fs::remove_dir_all(merged.join("opt")).unwrap();
    std::fs::create_dir(merged.join("opt")).unwrap();
    std::fs::write(merged.join("opt/new"), b"new\n").unwrap();
    ok(&t, &["layer", "unmount", "web"]);
    assert!(!strata_sys::mount::is_mount_point(&merged));

    assert_eq!(
        ok(&t, &["layer", "changes", "web"]),
        "Modify /etc\nModify /etc/hosts\nDelete /etc/motd\nModify /opt\nAdd /opt/new"
    );
    // `layer diff` turns the device back into `.wh.NAME` and marks the replaced directory.
    let diff = t.dir.path().join("web.tar");
    ok(&t, &["layer", "diff", "web", "-o", &diff.to_string_lossy()]);
    let mut names: Vec<String> = tar::Archive::new(std::fs::File::open(&diff).unwrap())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "etc",
            "etc/.wh.motd",
            "etc/hosts",
            "opt",
            "opt/.wh..wh..opq",
            "opt/new"
        ],
        "no whiteout device leaks into the tar"
    );
    let bytes = std::fs::read(&diff).unwrap();
    assert!(
        !bytes.windows(8).any(|w| w == b".overlay"),
        "no overlay xattr leaks into the tar"
    );
    // 13 bytes of etc/hosts and 4 of opt/new.
    assert_eq!(ok(&t, &["layer", "diff-size", "web"]), "17");

    // The diff, applied onto a fresh child of base, gives the same tree.
    ok(
        &t,
        &["layer", "create", "--id", "replay", "--parent", "base"],
    );
    ok(&t, &["layer", "apply", "replay", &diff.to_string_lossy()]);
    assert_eq!(
        ok(&t, &["layer", "changes", "replay"]),
        ok(&t, &["layer", "changes", "web"])
    );
    let m = PathBuf::from(ok(&t, &["layer", "mount", "replay"]));
    assert!(!m.join("etc/motd").exists());
    assert!(!m.join("opt/tool").exists(), "the opaque dir hides base's");
    assert_eq!(std::fs::read(m.join("opt/new")).unwrap(), b"new\n");
    ok(&t, &["layer", "unmount", "replay"]);

    let inspect: serde_json::Value =
        serde_json::from_str(&ok(&t, &["--json", "layer", "inspect", "web"])).unwrap();
    assert!(inspect.to_string().contains("LowerDir"), "{inspect}");
}

#[test]
fn lost_links_and_mount_points_are_recreated() {
    if !root_or_skip(
        "lost_links_and_mount_points_are_recreated",
        "overlay mounts",
    ) {
        return;
    }
    let t = TempStore::new();
    base_with_files(&t);
    ok(&t, &["layer", "create", "--id", "mid", "--parent", "base"]);
    ok(
        &t,
        &["layer", "create", "--id", "top", "--parent", "mid", "--rw"],
    );
    // containers/storage's overlay-recreate.bats: remove every l/ link, every link file, and
    // a mount point; mounting still works.
    for e in std::fs::read_dir(home(&t).join("l")).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    for id in ["base", "mid", "top"] {
        std::fs::remove_file(home(&t).join(id).join("link")).unwrap();
    }
    std::fs::remove_dir(home(&t).join("top/merged")).unwrap();
    let m = PathBuf::from(ok(&t, &["layer", "mount", "top"]));
    assert_eq!(
        std::fs::read(m.join("etc/hosts")).unwrap(),
        b"127.0.0.1 localhost\n"
    );
    ok(&t, &["layer", "unmount", "top"]);
    assert_eq!(std::fs::read_dir(home(&t).join("l")).unwrap().count(), 3);
    for id in ["top", "mid", "base"] {
        ok(&t, &["layer", "rm", id]);
    }
    assert_eq!(
        std::fs::read_dir(home(&t).join("l")).unwrap().count(),
        0,
        "removing a layer removes its link"
    );
}

#[test]
fn operator_options_are_checked_and_size_is_unsupported() {
    if !root_or_skip(
        "operator_options_are_checked_and_size_is_unsupported",
        "the overlay probe mounts",
    ) {
        return;
    }
    let t = TempStore::new();
    let (okay, _, err) = t.cli(&["--driver-opt", "mountopt=upperdir=/etc", "layer", "ls"]);
    assert!(!okay);
    assert!(
        err.contains("mountopt") && err.contains("upperdir=/etc"),
        "{err}"
    );
    let (okay, _, err) = t.cli(&["--driver-opt", "size=10G", "layer", "ls"]);
    assert!(!okay);
    assert!(err.contains("unsupported"), "{err}");
    let (okay, _, err) = t.cli(&["layer", "create", "--rw", "--opt", "size=50M"]);
    assert!(!okay);
    assert!(err.contains("unsupported"), "{err}");
    // A permitted option reaches the mount.
    ok(
        &t,
        &[
            "--driver-opt",
            "mountopt=volatile",
            "layer",
            "create",
            "--id",
            "b",
        ],
    );
    ok(
        &t,
        &[
            "--driver-opt",
            "mountopt=volatile",
            "layer",
            "create",
            "--id",
            "c",
            "--parent",
            "b",
            "--rw",
        ],
    );
    let m = ok(
        &t,
        &["--driver-opt", "mountopt=volatile", "layer", "mount", "c"],
    );
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(m.as_str()))
        .expect("mounted");
    assert!(line.contains("volatile"), "{line}");
    ok(&t, &["layer", "unmount", "c"]);
}

#[test]
fn the_legacy_lowerdir_fallback_mounts_and_names_its_limit() {
    use strata_sys::Dir;
    use strata_sys::mount::{LowerdirStyle, OverlaySpec, overlay_view, overlay_with};
    if !root_or_skip(
        "the_legacy_lowerdir_fallback_mounts_and_names_its_limit",
        "overlay mounts",
    ) {
        return;
    }
    let t = TempStore::new();
    let p = t.dir.path();
    for (i, name) in ["top", "bottom"].iter().enumerate() {
        std::fs::create_dir(p.join(name)).unwrap();
        std::fs::write(p.join(name).join("shared"), name).unwrap();
        std::fs::write(p.join(name).join(format!("only-{i}")), name).unwrap();
    }
    std::fs::create_dir(p.join("target")).unwrap();
    let top = Dir::open_ambient(&p.join("top")).unwrap();
    let bottom = Dir::open_ambient(&p.join("bottom")).unwrap();
    let target = Dir::open_ambient(&p.join("target")).unwrap();
    let spec = OverlaySpec {
        lower: vec![&top, &bottom],
        upper: None,
        work: None,
        options: &[],
        read_only: true,
    };
    // What a kernel without `lowerdir+` gets: one lowerdir= string.
    overlay_with(&spec, LowerdirStyle::Legacy, &target, &p.join("target")).unwrap();
    assert_eq!(std::fs::read(p.join("target/shared")).unwrap(), b"top");
    assert!(p.join("target/only-1").exists(), "the lower layer shows");
    strata_sys::mount::unmount(&p.join("target"), false).unwrap();

    // Past one option string the fallback refuses, naming the way out.
    let many: Vec<Dir> = (0..300)
        .map(|i| {
            let d = p.join(format!("l{i}"));
            std::fs::create_dir(&d).unwrap();
            Dir::open_ambient(&d).unwrap()
        })
        .collect();
    let spec = OverlaySpec {
        lower: many.iter().collect(),
        upper: None,
        work: None,
        options: &[],
        read_only: true,
    };
    let err = overlay_with(&spec, LowerdirStyle::Legacy, &target, &p.join("target"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("300 lower layers") && err.contains("lowerdir+"),
        "{err}"
    );
    if LowerdirStyle::detect() == LowerdirStyle::Append {
        overlay_with(&spec, LowerdirStyle::Append, &target, &p.join("target")).unwrap();
        strata_sys::mount::unmount(&p.join("target"), false).unwrap();
    }

    // A detached view merges without a mount point and leaves nothing mounted.
    let view = overlay_view(&[&top, &bottom], &[], Path::new("view")).unwrap();
    assert!(view.lstat("only-0").is_ok() && view.lstat("only-1").is_ok());
    drop(view);
    assert!(strata_sys::mount::mount_points_beneath(p).is_empty());
}

#[test]
fn probe_results_are_cached_by_the_host_per_boot() {
    if !root_or_skip(
        "probe_results_are_cached_by_the_host_per_boot",
        "the overlay probe mounts",
    ) {
        return;
    }
    let t = TempStore::new();
    ok(&t, &["status"]);
    let cache = t.dir.path().join("run/drivers/overlay/overlay-features");
    let text = std::fs::read_to_string(&cache).expect("the host cached the probe");
    let (key, flags) = text.split_once('\n').unwrap();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert!(key.contains(boot.trim()), "keyed by the boot: {key}");
    assert_eq!(flags.trim().split(' ').next(), Some("1"), "{text}");
    // The cached answer is what the driver gets (here: overlayfs unusable)...
    std::fs::write(&cache, format!("{key}\n0 1 1 0 0 0\n")).unwrap();
    let (okay, _, err) = t.cli(&["status"]);
    assert!(!okay && err.contains("overlayfs does not work"), "{err}");
    // ...until the key no longer matches (another boot): then the host probes again.
    std::fs::write(&cache, "boot another dev 1 ino 2\n0 0 0 0 0 0\n").unwrap();
    ok(&t, &["status"]);
    assert!(std::fs::read_to_string(&cache).unwrap().starts_with(key));
}

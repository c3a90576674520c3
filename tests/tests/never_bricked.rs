//! One layer never takes the store down: a layer whose data cannot be removed, or an apply
//! onto a container's layer interrupted by a crash whose undo journal is gone, leave a layer
//! that recovery cannot finish. Opening the store sets it aside (reported on every open, in
//! `layer ls` and `status`), the rest of the store works, a later open tries again, and
//! removing its owner takes it. An apply onto a container's layer that fails after it went
//! through, or is killed, is rolled back from its journal: the container keeps its data.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use strata_tests::oci::{self, Compression};
use strata_tests::targen::{Entry, tar_of};
use strata_tests::{HOSTILE, HOSTILE_GRANTS, TempStore, hostile_wasm, strata_bin};

/// The CLI on `t`'s store with the hostile driver, configured as an operator would.
fn cli(t: &TempStore, args: &[&str]) -> (bool, String, String) {
    let config = t.dir.path().join("hostile.toml");
    std::fs::write(
        &config,
        format!(
            "root = {:?}\nrun_root = {:?}\n[drivers.{HOSTILE}]\npath = {:?}\n{HOSTILE_GRANTS}\n",
            t.root(),
            t.dir.path().join("run"),
            hostile_wasm()
        ),
    )
    .unwrap();
    let out = strata_tests::strata_command(strata_bin())
        .arg("--config")
        .arg(&config)
        .args(["--driver", HOSTILE])
        .args(args)
        .output()
        .expect("running strata");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(t: &TempStore, args: &[&str]) -> (String, String) {
    let (success, out, err) = cli(t, args);
    assert!(success, "strata {args:?} failed: {err}");
    (out, err)
}

/// A one-layer image with `files` files in `d/`, as an OCI layout in `t`.
fn image(t: &TempStore, files: usize) -> PathBuf {
    let mut entries = vec![Entry::dir("d", 0o755)];
    for i in 0..files {
        entries.push(Entry::file(&format!("d/f{i}"), 0o644, b"from the image"));
    }
    let img = oci::build(&[tar_of(&entries)], Compression::None, "img:1");
    let path = t.dir.path().join("image");
    oci::write_layout(&img, &path);
    path
}

fn container_layer(t: &TempStore, name: &str) -> String {
    let (out, _) = ok(t, &["--json", "container", "ls"]);
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    list.iter()
        .find(|c| c["names"].as_array().unwrap().iter().any(|n| n == name))
        .map(|c| c["layer"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("no container {name} in {out}"))
}

#[test]
fn a_layer_whose_removal_keeps_failing_is_set_aside_and_the_store_works() {
    if !strata_tests::root_or_skip(
        "a_layer_whose_removal_keeps_failing_is_set_aside_and_the_store_works",
        "the CLI mounts",
    ) {
        return;
    }
    let t = TempStore::new();
    ok(&t, &["layer", "create", "--id", "base"]);
    ok(
        &t,
        &[
            "layer",
            "create",
            "--id",
            "bad",
            "--opt",
            "fail-remove-always=1",
        ],
    );
    let (success, _, err) = cli(&t, &["layer", "rm", "bad"]);
    assert!(!success, "the driver's remove fails");
    assert!(err.contains("fail-remove-always"), "{err}");

    // Every later command opens the store: the layer is set aside and reported.
    let (out, err) = ok(&t, &["layer", "ls"]);
    assert!(
        err.contains("warning: layer bad is set aside as damaged"),
        "{err}"
    );
    let bad = out.lines().find(|l| l.starts_with("bad\t")).expect(&out);
    assert!(bad.contains("damaged: removing its data failed"), "{out}");
    let (status, _) = ok(&t, &["status"]);
    assert!(status.contains("Damaged layers: 1"), "{status}");
    let (json, _) = ok(&t, &["--json", "status"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["damaged"][0]["id"], "bad", "{json}");

    // The rest works; nothing is made on the damaged layer.
    ok(
        &t,
        &["layer", "create", "--id", "child", "--parent", "base"],
    );
    ok(&t, &["layer", "rm", "child"]);
    let (success, _, err) = cli(&t, &["layer", "create", "--id", "x", "--parent", "bad"]);
    assert!(!success && err.contains("incomplete"), "{err}");

    // Each open tries again: once the driver can remove it, it goes.
    let marker = t.home(HOSTILE).join("fail-remove-always-bad");
    std::fs::remove_dir(&marker).unwrap();
    let (out, err) = ok(&t, &["layer", "ls"]);
    assert!(!err.contains("damaged"), "{err}");
    assert_eq!(out.lines().count(), 1, "only base is left: {out}");
    assert!(!t.home(HOSTILE).join("dir/bad").exists());
}

#[test]
fn a_failed_apply_on_a_containers_layer_never_bricks_the_store() {
    if !strata_tests::root_or_skip(
        "a_failed_apply_on_a_containers_layer_never_bricks_the_store",
        "the CLI mounts",
    ) {
        return;
    }
    let t = TempStore::new();
    let layout = image(&t, 3);
    ok(&t, &["image", "import", layout.to_str().unwrap()]);
    ok(
        &t,
        &[
            "container",
            "create",
            "img:1",
            "--name",
            "c",
            "--opt",
            "fail-after-apply=1",
        ],
    );
    let layer = container_layer(&t, "c");
    let tar = t.dir.path().join("more.tar");
    std::fs::write(
        &tar,
        tar_of(&[
            Entry::file("more", 0o644, b"more"),
            Entry::file("d/f0", 0o644, b"replaced"),
        ]),
    )
    .unwrap();
    let data = t.home(HOSTILE).join("dir").join(&layer);
    let before = std::fs::read(data.join("d/f0")).unwrap();
    // The driver fails after the host's apply went through: its undo journal rolls it back,
    // and the container's layer is as it was (before the journal: set aside as damaged).
    let (success, _, err) = cli(&t, &["layer", "apply", &layer, tar.to_str().unwrap()]);
    assert!(!success);
    assert!(!err.contains("FOREIGN KEY"), "{err}");
    assert!(err.contains("the layer was left as it was"), "{err}");
    assert!(!data.join("more").exists());
    assert_eq!(std::fs::read(data.join("d/f0")).unwrap(), before);
    assert!(!scratch_in(&data));

    let (_, err) = ok(&t, &["layer", "ls"]);
    assert!(!err.contains("damaged"), "{err}");
    ok(&t, &["layer", "create", "--id", "other"]);
    ok(&t, &["container", "rm", "c"]);
    let (out, err) = ok(&t, &["layer", "ls"]);
    assert!(!err.contains("damaged"), "{err}");
    assert!(!out.contains(&layer), "{out}");
    ok(&t, &["image", "rm", "img:1"]);
    ok(&t, &["layer", "rm", "other"]);
}

/// The first `.strata-apply-*` scratch directory beneath `dir`, if any.
fn scratch_in(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|r| {
        r.flatten().any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".strata-apply-")
        })
    })
}

/// A crash in the middle of an apply onto a container's layer is rolled back from the
/// apply's undo journal at the next open: the container keeps exactly what it had. Without
/// the journal (deleted here) recovery cannot know what to undo: the layer, owned by its
/// container, is set aside (before, the database refused with "FOREIGN KEY constraint
/// failed" on every later command), and removing the container takes it.
#[test]
fn a_crash_mid_apply_on_a_containers_layer_never_bricks_the_store() {
    if !strata_tests::root_or_skip(
        "a_crash_mid_apply_on_a_containers_layer_never_bricks_the_store",
        "the CLI mounts",
    ) {
        return;
    }
    let t = TempStore::new();
    let layout = image(&t, 200);
    let vfs = |args: &[&str]| {
        let (success, out, err) = t.cli(&[&["--driver", "vfs"], args].concat());
        assert!(success, "strata {args:?} failed: {err}");
        (out, err)
    };
    vfs(&["image", "import", layout.to_str().unwrap()]);
    let (id, _) = vfs(&["container", "create", "img:1", "--name", "c"]);
    let id = id.trim().to_string();
    // The tar replaces what the container has (so the apply notes its undo in a scratch
    // directory first), then adds many files: a long apply onto an owned layer.
    let mut entries: Vec<Entry> = (0..200)
        .map(|i| Entry::file(&format!("d/f{i}"), 0o644, b"replaced"))
        .collect();
    entries.push(Entry::dir("many", 0o755));
    for i in 0..40_000 {
        entries.push(Entry::file(&format!("many/{i}"), 0o644, b"x"));
    }
    let tar = t.dir.path().join("big.tar");
    std::fs::write(&tar, tar_of(&entries)).unwrap();
    let layer_dir = t.home("vfs").join("dir").join(&id);
    let kill_mid_apply = || {
        let mut apply = strata_tests::strata_command(strata_bin())
            .arg("--root")
            .arg(t.root())
            .arg("--run-root")
            .arg(t.dir.path().join("run"))
            .args(["--driver", "vfs", "layer", "apply", &id])
            .arg(&tar)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while !scratch_in(&layer_dir) {
            assert!(
                apply.try_wait().unwrap().is_none(),
                "the apply ended before it was seen working"
            );
            assert!(start.elapsed() < Duration::from_secs(60));
            std::thread::sleep(Duration::from_millis(1));
        }
        apply.kill().unwrap();
        apply.wait().unwrap();
    };
    let files = |dir: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let before = files(&layer_dir);

    kill_mid_apply();
    let (_, err) = vfs(&["layer", "ls"]);
    assert!(!err.contains("FOREIGN KEY"), "{err}");
    assert!(!err.contains("damaged"), "{err}");
    assert_eq!(files(&layer_dir), before, "rolled back");
    for i in [0, 199] {
        assert_eq!(
            std::fs::read(layer_dir.join(format!("d/f{i}"))).unwrap(),
            b"from the image"
        );
    }

    // Without its journal the interrupted apply cannot be rolled back: set aside.
    kill_mid_apply();
    let journal = strata_host::layout::apply_journal(&t.root(), &id);
    std::fs::remove_file(&journal).unwrap();
    let (_, err) = vfs(&["layer", "ls"]);
    assert!(!err.contains("FOREIGN KEY"), "{err}");
    assert!(err.contains(&format!("layer {id} is set aside")), "{err}");
    assert!(err.contains("cannot be rolled back"), "{err}");
    // The rest works: another container on the image, made and removed.
    vfs(&["container", "create", "img:1", "--name", "c2"]);
    vfs(&["container", "rm", "c2"]);
    // Removing the container takes its damaged layer with it.
    vfs(&["container", "rm", "c"]);
    let (out, err) = vfs(&["layer", "ls"]);
    assert!(!err.contains("damaged"), "{err}");
    assert_eq!(out.lines().count(), 1, "only the image's layer: {out}");
    assert!(!layer_dir.exists());
}

/// `strata serve` starts (its reconcile removes `sn` layers without a snapshot record) even
/// when one such layer cannot be removed: it is set aside, the daemon serves the rest.
#[test]
fn serve_starts_beside_a_snapshot_layer_it_cannot_remove() {
    if !strata_tests::root_or_skip(
        "serve_starts_beside_a_snapshot_layer_it_cannot_remove",
        strata_tests::DRIVER_INIT_NEEDS_ROOT,
    ) {
        return;
    }
    let t = TempStore::new();
    let s = t
        .open_with(&hostile_wasm(), strata_tests::hostile_config(&t, ""))
        .unwrap();
    strata_tests::create_with(&s, "sn7", &[("fail-remove-always", "1")]).unwrap();
    strata_tests::create_with(&s, "sn8", &[]).unwrap();
    strata_host::frontend::containerd::service::reconcile(&s)
        .expect("one layer does not stop the daemon");
    let stuck = s.get("sn7").unwrap();
    assert!(stuck.damaged.unwrap().contains("fail-remove-always"));
    assert!(s.get("sn8").is_err(), "the other orphan is removed");
    // What `strata serve` starts with: every handle opens, the service reconciles.
    let handles = (0..2)
        .map(|_| {
            t.open_with(&hostile_wasm(), strata_tests::hostile_config(&t, ""))
                .unwrap()
        })
        .collect();
    assert!(strata_host::frontend::containerd::service::SnapshotService::new(handles).is_ok());
}

//! `strata image` and `strata container`: imports of OCI layouts, OCI archives and `docker
//! save` archives through the CLI, on the default driver (overlay) and on vfs; layer reuse
//! by chain ID; damaged images that must leave the store as it was; containers on images.

use std::path::{Path, PathBuf};

use strata_tests::oci::{self, BuiltImage, Compression};
use strata_tests::targen::{Entry, tar_of};
use strata_tests::{TempStore, tree};

fn base_layer() -> Vec<u8> {
    tar_of(&[
        Entry::dir("bin", 0o755),
        Entry::file("bin/sh", 0o755, b"#!shell\n"),
        Entry::dir("etc", 0o755),
        Entry::file("etc/os-release", 0o644, b"NAME=base\n"),
        Entry::dir("usr/share/doc/a", 0o755),
        Entry::file("usr/share/doc/a/README", 0o644, b"docs"),
        Entry::dir("var/cache/x", 0o755),
        Entry::file("var/cache/x/1", 0o644, b"one"),
        Entry::file("var/cache/x/2", 0o644, b"two"),
    ])
}

fn middle_layer() -> Vec<u8> {
    tar_of(&[
        Entry::dir("app", 0o755),
        Entry::file("app/main", 0o755, &vec![7u8; 300_000]),
        Entry::file("etc/os-release", 0o644, b"NAME=middle\n"),
        Entry::hardlink("app/hard", "app/main"),
    ])
}

/// Whiteouts: a deleted directory and an opaque one with a new file.
fn top_layer() -> Vec<u8> {
    tar_of(&[
        Entry::whiteout("usr/share/doc/a"),
        Entry::dir("var/cache/x", 0o755),
        Entry::opaque("var/cache/x"),
        Entry::file("var/cache/x/new", 0o644, b"new"),
        Entry::symlink("app/link", "main"),
    ])
}

fn image(compression: Compression) -> BuiltImage {
    oci::build(
        &[base_layer(), middle_layer(), top_layer()],
        compression,
        "demo:1",
    )
}

/// An image sharing only the base layer with [`image`].
fn other_image() -> BuiltImage {
    let extra = tar_of(&[Entry::file("other", 0o644, b"other image")]);
    oci::build(&[base_layer(), extra], Compression::Gzip, "other:1")
}

fn ok(t: &TempStore, args: &[&str]) -> String {
    let (success, out, err) = t.cli(args);
    assert!(success, "strata {args:?} failed: {err}");
    out
}

fn json(t: &TempStore, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(t, &all)).expect("JSON output")
}

fn layer_ids(t: &TempStore, driver: &[&str]) -> Vec<String> {
    let mut args = driver.to_vec();
    args.extend(["layer", "ls"]);
    ok(t, &args)
        .lines()
        .map(|l| l.split('\t').next().unwrap().to_string())
        .collect()
}

fn import(t: &TempStore, driver: &[&str], path: &Path) -> serde_json::Value {
    let mut args = vec!["--json"];
    args.extend_from_slice(driver);
    args.extend(["image", "import", path.to_str().unwrap()]);
    serde_json::from_str(&ok(t, &args)).expect("import JSON")
}

fn reused(report: &serde_json::Value) -> Vec<bool> {
    report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["reused"].as_bool().unwrap())
        .collect()
}

fn check_rootfs(mnt: &Path) {
    let read = |p: &str| std::fs::read(mnt.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(read("bin/sh"), b"#!shell\n");
    assert_eq!(read("etc/os-release"), b"NAME=middle\n");
    assert_eq!(read("app/main").len(), 300_000);
    assert_eq!(read("app/hard").len(), 300_000);
    assert_eq!(
        std::fs::read_link(mnt.join("app/link")).unwrap(),
        PathBuf::from("main")
    );
    assert!(
        !mnt.join("usr/share/doc/a").exists(),
        "the whiteout must hide the directory"
    );
    assert!(mnt.join("usr/share/doc").is_dir());
    let mut cache: Vec<String> = std::fs::read_dir(mnt.join("var/cache/x"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    cache.sort();
    assert_eq!(cache, vec!["new"], "the opaque directory hides 1 and 2");
}

/// Every form and compression of one image imports to the same image and layers; the
/// second and later imports reuse every layer; a second image shares the base layer.
fn import_forms_and_reuse(driver: &[&str]) {
    let t = TempStore::new();
    let work = t.dir.path().join("images");
    let gzip = image(Compression::Gzip);
    let zstd = image(Compression::Zstd);
    let plain = image(Compression::None);
    // Same layers, so the same diff IDs, chain IDs and config; blobs differ.
    assert_eq!(gzip.chain_ids, zstd.chain_ids);
    assert_eq!(gzip.config_digest, plain.config_digest);
    assert_ne!(gzip.layer_digests, zstd.layer_digests);
    oci::write_layout(&gzip, &work.join("layout-gzip"));
    oci::write_oci_archive(&zstd, &work.join("archive-zstd.tar"));
    oci::write_docker_archive(&plain, &work.join("docker.tar"));

    let first = import(&t, driver, &work.join("layout-gzip"));
    assert_eq!(first["new_image"], true);
    assert_eq!(reused(&first), vec![false, false, false]);
    assert_eq!(first["image"]["id"], gzip.image_id());
    assert_eq!(first["image"]["names"], serde_json::json!(["demo:1"]));
    let ids: Vec<String> = (0..3).map(|i| gzip.layer_id(i)).collect();
    assert_eq!(layer_ids(&t, driver), ids);
    for (i, id) in ids.iter().enumerate() {
        let mut args = driver.to_vec();
        args.extend(["layer", "inspect", id]);
        let l = json(&t, &args);
        assert_eq!(l["uncompressed_digest"], gzip.diff_ids[i]);
        assert_eq!(l["compressed_digest"], gzip.layer_digests[i]);
        assert_eq!(
            l["parent"],
            if i == 0 {
                serde_json::Value::Null
            } else {
                ids[i - 1].clone().into()
            }
        );
    }

    for again in [
        work.join("layout-gzip"),
        work.join("archive-zstd.tar"),
        work.join("docker.tar"),
    ] {
        let r = import(&t, driver, &again);
        assert_eq!(r["new_image"], false, "{}", again.display());
        assert_eq!(reused(&r), vec![true, true, true], "{}", again.display());
        assert_eq!(r["bytes_read"], 0, "a reused layer is not read");
    }
    assert_eq!(layer_ids(&t, driver), ids);

    let other = other_image();
    oci::write_layout(&other, &work.join("other"));
    let r = import(&t, driver, &work.join("other"));
    assert_eq!(reused(&r), vec![true, false]);
    // A ref name that is only a tag does not name the image; --name does.
    let tagged = oci::build(
        &[base_layer(), tar_of(&[Entry::file("t", 0o644, b"t")])],
        Compression::Gzip,
        "latest",
    );
    oci::write_layout(&tagged, &work.join("tagged"));
    let r = import(&t, driver, &work.join("tagged"));
    assert_eq!(r["image"]["names"], serde_json::json!([]));
    let mut args = vec!["--json"];
    args.extend_from_slice(driver);
    args.extend(["image", "import", "--name", "tagged:1"]);
    let path = work.join("tagged");
    args.push(path.to_str().unwrap());
    let r: serde_json::Value = serde_json::from_str(&ok(&t, &args)).unwrap();
    assert_eq!(r["image"]["names"], serde_json::json!(["tagged:1"]));
    let mut args = driver.to_vec();
    args.extend(["image", "rm", "tagged:1"]);
    ok(&t, &args);
    assert_eq!(layer_ids(&t, driver).len(), 4);
    let mut args = driver.to_vec();
    args.extend(["image", "ls"]);
    let images = json(&t, &args);
    assert_eq!(images.as_array().unwrap().len(), 2);

    if strata_tests::root_or_skip("import_forms_and_reuse (rootfs check)", "mounts") {
        let mut args = driver.to_vec();
        args.extend(["container", "create", "demo:1", "--name", "c1"]);
        ok(&t, &args);
        let mut args = driver.to_vec();
        args.extend(["container", "mount", "c1"]);
        let mnt = PathBuf::from(ok(&t, &args).trim());
        check_rootfs(&mnt);
        let mut args = driver.to_vec();
        args.extend(["container", "rm", "--force", "c1"]);
        ok(&t, &args);
    }

    // rm keeps what the other image shares, then the other image takes the rest.
    let mut args = driver.to_vec();
    args.extend(["image", "rm", "demo:1"]);
    let removed = json(&t, &args);
    assert_eq!(
        removed["removed_layers"],
        serde_json::json!([ids[2], ids[1]])
    );
    assert_eq!(removed["kept_layers"], serde_json::json!([ids[0]]));
    assert_eq!(
        layer_ids(&t, driver),
        vec![ids[0].clone(), other.layer_id(1)]
    );
    let mut args = driver.to_vec();
    args.extend(["image", "rm", "other:1"]);
    ok(&t, &args);
    assert!(layer_ids(&t, driver).is_empty());
}

#[test]
fn import_forms_and_reuse_on_vfs() {
    if !strata_tests::root_or_skip(
        "import_forms_and_reuse_on_vfs",
        strata_tests::DRIVER_INIT_NEEDS_ROOT,
    ) {
        return;
    }
    import_forms_and_reuse(&["--driver", "vfs"]);
}

#[test]
fn import_forms_and_reuse_on_overlay() {
    if !strata_tests::root_or_skip(
        "import_forms_and_reuse_on_overlay",
        "overlay layers keep whiteouts as device nodes",
    ) {
        return;
    }
    import_forms_and_reuse(&[]);
}

/// Damaged images fail with a message naming what is wrong, and the store is as it was:
/// the same layers, the same images, nothing left in the driver's home.
#[test]
fn damaged_images_leave_the_store_as_it_was() {
    if !strata_tests::root_or_skip(
        "damaged_images_leave_the_store_as_it_was",
        strata_tests::DRIVER_INIT_NEEDS_ROOT,
    ) {
        return;
    }
    let driver: &[&str] = &["--driver", "vfs"];
    let t = TempStore::new();
    let work = t.dir.path().join("images");
    // One image in the store already, sharing the base with the damaged ones.
    let other = other_image();
    oci::write_layout(&other, &work.join("other"));
    import(&t, driver, &work.join("other"));
    let home = t.home("vfs");
    let before_layers = layer_ids(&t, driver);
    let before_tree = tree(&home);
    let check = |path: &Path, expect: &[&str]| {
        let mut args = driver.to_vec();
        args.extend(["image", "import", path.to_str().unwrap()]);
        let (success, _, err) = t.cli(&args);
        assert!(!success, "importing {} must fail", path.display());
        for e in expect {
            assert!(err.contains(e), "{}: `{e}` not in: {err}", path.display());
        }
        assert_eq!(layer_ids(&t, driver), before_layers, "{err}");
        assert_eq!(tree(&home), before_tree, "{err}");
        let mut args = driver.to_vec();
        args.extend(["image", "ls"]);
        assert_eq!(ok(&t, &args).lines().count(), 1);
    };

    // A flipped byte inside a file of the uncompressed top layer: the tar still reads, the
    // whole layer is applied, and only the digest at its end tells.
    let plain = image(Compression::None);
    let dir = work.join("mismatch");
    oci::write_layout(&plain, &dir);
    let top = dir
        .join("blobs/sha256")
        .join(plain.layer_digests[1].trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&top).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(&top, &bytes).unwrap();
    check(
        &dir,
        &[
            "digest mismatch",
            plain.layer_digests[1].trim_start_matches("sha256:"),
        ],
    );

    // A corrupted gzip blob.
    let gzip = image(Compression::Gzip);
    let dir = work.join("corrupt");
    oci::write_layout(&gzip, &dir);
    let blob = dir
        .join("blobs/sha256")
        .join(gzip.layer_digests[2].trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&blob).unwrap();
    for b in bytes.iter_mut().skip(20).take(40) {
        *b = b.wrapping_add(77);
    }
    std::fs::write(&blob, &bytes).unwrap();
    check(&dir, &[gzip.layer_digests[2].trim_start_matches("sha256:")]);

    // A truncated blob in a layout, and a truncated archive.
    let dir = work.join("truncated-blob");
    oci::write_layout(&gzip, &dir);
    let blob = dir
        .join("blobs/sha256")
        .join(gzip.layer_digests[1].trim_start_matches("sha256:"));
    let bytes = std::fs::read(&blob).unwrap();
    std::fs::write(&blob, &bytes[..bytes.len() / 2]).unwrap();
    check(
        &dir,
        &[
            "truncated",
            gzip.layer_digests[1].trim_start_matches("sha256:"),
        ],
    );
    let archive = work.join("truncated.tar");
    oci::write_oci_archive(&gzip, &archive);
    let bytes = std::fs::read(&archive).unwrap();
    std::fs::write(&archive, &bytes[..bytes.len() * 2 / 3]).unwrap();
    check(&archive, &["truncated.tar"]);

    // A config whose diff ID for the top layer is another layer's: every blob matches
    // the manifest, and only the uncompressed digest tells.
    let dir = work.join("diff-id");
    let mut claimed = gzip.diff_ids.clone();
    claimed[2] = oci::sha256(b"another layer");
    let liar = oci::build_claiming(
        &[base_layer(), middle_layer(), top_layer()],
        Compression::Gzip,
        "demo:1",
        Some(claimed),
    );
    oci::write_layout(&liar, &dir);
    check(
        &dir,
        &[
            "diff ID mismatch",
            liar.layer_digests[2].trim_start_matches("sha256:"),
        ],
    );

    // Bad JSON in the index, and a manifest that does not match its digest.
    let dir = work.join("bad-json");
    oci::write_layout(&gzip, &dir);
    std::fs::write(
        dir.join("index.json"),
        b"{\"schemaVersion\": 2, \"manifests\": [",
    )
    .unwrap();
    check(&dir, &["index.json", "bad JSON"]);
    let dir = work.join("bad-manifest");
    oci::write_layout(&gzip, &dir);
    let manifest = dir
        .join("blobs/sha256")
        .join(gzip.manifest_digest.trim_start_matches("sha256:"));
    let mut text = std::fs::read(&manifest).unwrap();
    text.push(b' ');
    std::fs::write(&manifest, &text).unwrap();
    check(
        &dir,
        &[
            gzip.manifest_digest.trim_start_matches("sha256:"),
            "truncated or replaced",
        ],
    );

    // Not an image at all.
    let dir = work.join("empty");
    std::fs::create_dir_all(&dir).unwrap();
    check(&dir, &["not an image"]);
}

/// A container on an image: write, list changes, commit the changes as a layer.
#[test]
fn containers_write_change_and_commit() {
    if !strata_tests::root_or_skip("containers_write_change_and_commit", "mounts") {
        return;
    }
    let t = TempStore::new();
    let work = t.dir.path().join("images");
    let img = image(Compression::Zstd);
    oci::write_layout(&img, &work.join("layout"));
    import(&t, &[], &work.join("layout"));
    let id = ok(&t, &["container", "create", "demo:1", "--name", "web"])
        .trim()
        .to_string();
    let (success, _, err) = t.cli(&["container", "create", "demo:1", "--name", "web"]);
    assert!(!success && err.contains("web"), "{err}");
    let mnt = PathBuf::from(ok(&t, &["container", "mount", "web"]).trim());
    check_rootfs(&mnt);
    std::fs::write(mnt.join("app/state"), b"written in the container").unwrap();
    std::fs::remove_file(mnt.join("bin/sh")).unwrap();
    let changes = ok(&t, &["layer", "changes", &id]);
    assert!(changes.contains("Add /app/state"), "{changes}");
    assert!(changes.contains("Delete /bin/sh"), "{changes}");
    ok(&t, &["container", "unmount", "web"]);
    let listed = json(&t, &["container", "ls"]);
    assert_eq!(listed[0]["names"], serde_json::json!(["web"]));
    assert_eq!(listed[0]["image"], img.image_id());

    // The image cannot go while the container uses it; its layers cannot go at all.
    let (success, _, err) = t.cli(&["image", "rm", "demo:1"]);
    assert!(!success && err.contains(&id), "{err}");
    let (success, _, err) = t.cli(&["layer", "rm", &img.layer_id(2)]);
    assert!(!success && err.contains("image"), "{err}");

    let committed = json(
        &t,
        &["container", "commit", "web", "--name", "web-snapshot"],
    );
    let layer = committed["layer"]["id"].as_str().unwrap().to_string();
    assert_eq!(committed["layer"]["parent"], img.layer_id(2));
    // The committed layer holds exactly the container's changes.
    assert_eq!(ok(&t, &["layer", "changes", "web-snapshot"]), changes);
    let tar = t.dir.path().join("commit.tar");
    ok(&t, &["layer", "diff", &layer, "-o", tar.to_str().unwrap()]);
    let mut names = Vec::new();
    for e in tar::Archive::new(std::fs::File::open(&tar).unwrap())
        .entries()
        .unwrap()
    {
        names.push(e.unwrap().path().unwrap().display().to_string());
    }
    assert!(names.contains(&"bin/.wh.sh".to_string()), "{names:?}");
    assert!(names.contains(&"app/state".to_string()), "{names:?}");

    ok(&t, &["container", "rm", "web"]);
    assert!(
        json(&t, &["container", "ls"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    ok(&t, &["layer", "rm", "web-snapshot"]);
    ok(&t, &["image", "rm", "demo:1"]);
    assert!(layer_ids(&t, &[]).is_empty());
}

/// `kill -9` in the middle of an import: the next command finds the store as it was before
/// (the layers made so far were never complete and are removed), and the image imports.
#[test]
fn a_killed_import_leaves_nothing_behind() {
    if !strata_tests::root_or_skip(
        "a_killed_import_leaves_nothing_behind",
        strata_tests::DRIVER_INIT_NEEDS_ROOT,
    ) {
        return;
    }
    let driver: &[&str] = &["--driver", "vfs"];
    let t = TempStore::new();
    let layers: Vec<Vec<u8>> = (0..4)
        .map(|l| {
            let files: Vec<Entry> = (0..4)
                .map(|f| Entry::file(&format!("l{l}/f{f}"), 0o644, &vec![f as u8; 4 << 20]))
                .collect();
            tar_of(&files)
        })
        .collect();
    let img = oci::build(&layers, Compression::None, "big:1");
    let layout = t.dir.path().join("big");
    oci::write_layout(&img, &layout);
    let home = t.home("vfs").join("dir");
    let mut child = strata_tests::strata_command(strata_tests::strata_bin())
        .arg("--root")
        .arg(t.root())
        .arg("--run-root")
        .arg(t.dir.path().join("run"))
        .args(driver)
        .args(["image", "import"])
        .arg(&layout)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once the second layer has begun: the first is applied and still incomplete.
    let started = std::time::Instant::now();
    let mut killed_mid_import = false;
    loop {
        let made = std::fs::read_dir(&home).map(|d| d.count()).unwrap_or(0);
        if made >= 2 {
            killed_mid_import = child.try_wait().unwrap().is_none();
            break;
        }
        if child.try_wait().unwrap().is_some() || started.elapsed().as_secs() > 120 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().ok();
    child.wait().unwrap();
    assert!(
        killed_mid_import,
        "the import ended before it could be killed in the middle"
    );
    assert!(
        layer_ids(&t, driver).is_empty(),
        "recovery removes the partial layers"
    );
    let mut args = driver.to_vec();
    args.extend(["image", "ls"]);
    assert_eq!(ok(&t, &args), "");
    assert_eq!(tree(&home), Vec::<String>::new());
    let r = import(&t, driver, &layout);
    assert_eq!(reused(&r), vec![false; 4]);
}

/// Progress shows on a terminal (run under `script`, which gives the command a pty) and not
/// when stderr is a file or pipe.
#[test]
fn progress_shows_on_a_terminal_only() {
    if !strata_tests::root_or_skip(
        "progress_shows_on_a_terminal_only",
        strata_tests::DRIVER_INIT_NEEDS_ROOT,
    ) {
        return;
    }
    let t = TempStore::new();
    let img = image(Compression::Gzip);
    let layout = t.dir.path().join("layout");
    oci::write_layout(&img, &layout);
    let (success, _, quiet) = t.cli(&[
        "--driver",
        "vfs",
        "image",
        "import",
        layout.to_str().unwrap(),
    ]);
    assert!(success, "{quiet}");
    assert!(
        !quiet.contains("MiB/s"),
        "no progress without a terminal: {quiet}"
    );
    let command = format!(
        "{} --root {} --run-root {} --driver vfs image import --name again:1 {}",
        strata_tests::strata_bin().display(),
        t.root().display(),
        t.dir.path().join("run").display(),
        layout.display()
    );
    let out = std::process::Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .envs(strata_tests::strata_env())
        .output()
        .expect("running script (bsdutils)");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("layers 3/3 (3 reused)"), "{shown}");
    assert!(shown.contains("MiB/s"), "{shown}");
}

//! The `strata` command as users run it: commands, `--json`, config errors naming the key.

use strata_tests::targen::{Entry, tar_of};
use strata_tests::{TempStore, root_or_skip};

fn ok(t: &TempStore, args: &[&str]) -> String {
    let (success, out, err) = t.cli(args);
    assert!(success, "strata {} failed: {err}", args.join(" "));
    out
}

#[test]
fn layer_lifecycle_with_plain_and_json_output() {
    if !root_or_skip(
        "layer_lifecycle_with_plain_and_json_output",
        "layers are created owned 0:0",
    ) {
        return;
    }
    let t = TempStore::new();
    let id = ok(&t, &["layer", "create"]).trim().to_string();
    assert_eq!(id.len(), 64, "a random id is 64 hex digits: {id}");
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));

    let tar = t.dir.path().join("l.tar");
    std::fs::write(
        &tar,
        tar_of(&[Entry::dir("d", 0o755), Entry::file("d/f", 0o644, b"12345")]),
    )
    .unwrap();
    let size = ok(&t, &["layer", "apply", &id, &tar.to_string_lossy()]);
    assert_eq!(size.trim(), "5");

    let json: serde_json::Value =
        serde_json::from_str(&ok(&t, &["--json", "layer", "ls"])).unwrap();
    let layers = json.as_array().unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0]["id"], id.as_str());
    let tar_len = std::fs::metadata(&tar).unwrap().len();
    assert_eq!(
        layers[0]["uncompressed_size"], tar_len,
        "the tar's own size"
    );
    assert_eq!(
        layers[0]["compressed_size"], tar_len,
        "a plain tar is its own compressed form"
    );
    let digest = layers[0]["uncompressed_digest"].as_str().unwrap();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );
    assert_eq!(layers[0]["incomplete"], false);

    let changes = ok(&t, &["layer", "changes", &id]);
    assert_eq!(changes, "Add /d\nAdd /d/f\n");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&t, &["--json", "layer", "changes", &id])).unwrap();
    assert_eq!(json[1]["kind"], "Add");
    assert_eq!(json[1]["path"], "/d/f");
    assert_eq!(ok(&t, &["layer", "diff-size", &id]).trim(), "5");

    let child = ok(
        &t,
        &[
            "layer", "create", "--parent", &id, "--id", "kid", "--name", "web",
        ],
    );
    assert_eq!(child.trim(), "kid");
    let (success, _, err) = t.cli(&["layer", "rm", &id]);
    assert!(!success, "a parent with children cannot be removed");
    assert!(err.contains("kid"), "the error names the child: {err}");
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(&t, &["--json", "layer", "inspect", "web"])).unwrap();
    assert_eq!(inspect["id"], "kid");
    assert_eq!(inspect["parent"], id.as_str());

    let diff = t.dir.path().join("d.tar");
    ok(&t, &["layer", "diff", &id, "-o", &diff.to_string_lossy()]);
    let mut archive = tar::Archive::new(std::fs::File::open(&diff).unwrap());
    let names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.trim_end_matches('/') == "d/f"),
        "{names:?}"
    );

    ok(&t, &["layer", "rm", "kid"]);
    ok(&t, &["layer", "rm", &id]);
    assert_eq!(ok(&t, &["layer", "ls"]), "");
    let status: serde_json::Value = serde_json::from_str(&ok(&t, &["--json", "status"])).unwrap();
    assert_eq!(status["driver"], "overlay", "overlay is the default driver");
    assert_eq!(status["layers"], 0);
    assert_eq!(status["status"]["Native Overlay Diff"], "true", "{status}");
}

#[test]
fn mount_and_unmount_from_the_command_line() {
    if !root_or_skip("mount_and_unmount_from_the_command_line", "mounts") {
        return;
    }
    let t = TempStore::new();
    ok(&t, &["layer", "create", "--id", "c", "--rw"]);
    let mp = ok(&t, &["layer", "mount", "c"]).trim().to_string();
    assert!(
        strata_host::sys::mount::is_mount_point(std::path::Path::new(&mp)),
        "{mp}"
    );
    std::fs::write(format!("{mp}/hello"), b"hi").unwrap();
    ok(&t, &["layer", "unmount", "c"]);
    assert!(!strata_host::sys::mount::is_mount_point(
        std::path::Path::new(&mp)
    ));
    assert_eq!(ok(&t, &["layer", "changes", "c"]), "Add /hello\n");
    let (success, _, err) = t.cli(&["layer", "unmount", "c"]);
    assert!(!success && err.contains("not mounted"), "{err}");
}

#[test]
fn config_errors_name_the_key() {
    let t = TempStore::new();
    let cfg = t.dir.path().join("strata.toml");
    for (text, key) in [
        ("drivr = \"vfs\"\n", "drivr"),
        ("[sandbox]\nmemory = \"12Q\"\n", "sandbox.memory"),
        (
            "[sandbox]\ngrants = [\"files\", \"network\"]\n",
            "sandbox.grants",
        ),
        ("[drivers.vfs]\npathh = \"/x\"\n", "drivers.vfs.pathh"),
    ] {
        std::fs::write(&cfg, text).unwrap();
        let (success, _, err) = t.cli(&["--config", &cfg.to_string_lossy(), "layer", "ls"]);
        assert!(!success, "{text:?} must be refused");
        assert!(
            err.contains(key),
            "error for {text:?} should name `{key}`: {err}"
        );
    }
}

#[test]
fn driver_inspect_shows_wit_version_and_capabilities() {
    let t = TempStore::new();
    let out: serde_json::Value =
        serde_json::from_str(&ok(&t, &["--json", "driver", "inspect", "vfs"])).unwrap();
    assert_eq!(out["wit"], "strata:driver@0.1.0");
    let caps: Vec<&str> = out["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for c in ["files", "copy"] {
        assert!(caps.contains(&c), "vfs imports {c}: {caps:?}");
    }
    let listing = ok(&t, &["driver", "ls"]);
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("strata_driver_vfs") || l.starts_with("vfs")),
        "{listing}"
    );
}

#[test]
fn unsupported_quota_is_reported_not_ignored() {
    if !root_or_skip(
        "unsupported_quota_is_reported_not_ignored",
        strata_tests::DRIVER_INIT_NEEDS_ROOT,
    ) {
        return;
    }
    let t = TempStore::new();
    let (success, _, err) = t.cli(&["layer", "create", "--opt", "size=10M"]);
    assert!(!success);
    assert!(err.contains("unsupported"), "{err}");
    assert_eq!(ok(&t, &["layer", "ls"]), "", "no layer is left behind");
}

#[test]
fn compressed_tars_and_stdin_apply_with_their_digests() {
    if !root_or_skip(
        "compressed_tars_and_stdin_apply_with_their_digests",
        "layers are created owned 0:0",
    ) {
        return;
    }
    use std::io::Write;
    let t = TempStore::new();
    let plain = tar_of(&[Entry::file("z", 0o644, b"zipped")]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(std::io::Cursor::new(plain.clone()), 3).unwrap();
    let mut digests = Vec::new();
    for (name, bytes) in [("gz", gz), ("zst", zst)] {
        ok(&t, &["layer", "create", "--id", name]);
        let file = t.dir.path().join(format!("l.tar.{name}"));
        std::fs::write(&file, &bytes).unwrap();
        let out: serde_json::Value = serde_json::from_str(&ok(
            &t,
            &["--json", "layer", "apply", name, &file.to_string_lossy()],
        ))
        .unwrap();
        assert_eq!(out["size"], 6, "{name}");
        assert_eq!(out["compressed_size"], bytes.len(), "{name}");
        assert_eq!(out["uncompressed_size"], plain.len(), "{name}");
        digests.push(out["uncompressed_digest"].as_str().unwrap().to_string());
    }
    assert_eq!(
        digests[0], digests[1],
        "the same tar has the same diff ID however compressed"
    );

    ok(&t, &["layer", "create", "--id", "stdin"]);
    let mut child = strata_tests::strata_command(strata_tests::strata_bin())
        .args(["--root"])
        .arg(t.root())
        .args(["layer", "apply", "stdin", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&plain).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "6");
    assert_eq!(ok(&t, &["layer", "changes", "stdin"]), "Add /z\n");
}

#[test]
fn a_corrupt_tar_fails_naming_the_layer_and_leaves_it_as_it_was() {
    if !root_or_skip(
        "a_corrupt_tar_fails_naming_the_layer_and_leaves_it_as_it_was",
        "layers are created owned 0:0",
    ) {
        return;
    }
    let t = TempStore::new();
    ok(&t, &["layer", "create", "--id", "bad"]);
    let file = t.dir.path().join("bad.tar.gz");
    std::fs::write(&file, [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3]).unwrap();
    let (success, _, err) = t.cli(&["layer", "apply", "bad", &file.to_string_lossy()]);
    assert!(!success);
    assert!(err.contains("bad"), "{err}");
    assert!(err.contains("left as it was"), "{err}");
    assert!(
        ok(&t, &["layer", "ls"]).contains("bad"),
        "a failed apply keeps the layer as it was"
    );
    assert_eq!(ok(&t, &["layer", "changes", "bad"]), "", "and empty");
}

#[test]
fn a_layer_from_a_template_copies_it_onto_its_parent() {
    if !root_or_skip(
        "a_layer_from_a_template_copies_it_onto_its_parent",
        "layers are created owned 0:0",
    ) {
        return;
    }
    let t = TempStore::new();
    ok(&t, &["layer", "create", "--id", "base"]);
    ok(&t, &["layer", "create", "--id", "tpl", "--parent", "base"]);
    let tar = t.dir.path().join("l.tar");
    std::fs::write(
        &tar,
        tar_of(&[Entry::file("f", 0o644, b"from the template")]),
    )
    .unwrap();
    ok(&t, &["layer", "apply", "tpl", &tar.to_string_lossy()]);
    let copy: serde_json::Value = serde_json::from_str(&ok(
        &t,
        &[
            "--json",
            "layer",
            "create",
            "--id",
            "copy",
            "--template",
            "tpl",
        ],
    ))
    .unwrap();
    assert_eq!(copy["parent"], "base", "{copy}");
    assert_eq!(copy["template"], "tpl", "{copy}");
    assert_eq!(ok(&t, &["layer", "changes", "copy"]), "Add /f\n");
    assert_eq!(ok(&t, &["layer", "changes", "copy", "--parent", "tpl"]), "");
    let (removed, _, err) = t.cli(&["layer", "rm", "tpl"]);
    assert!(!removed, "a template outlives its copies");
    assert!(
        err.contains("copy"),
        "the error names the dependent layer: {err}"
    );
    let (both, _, err) = t.cli(&["layer", "create", "--template", "tpl", "--parent", "base"]);
    assert!(!both && err.contains("--parent"), "{err}");
    ok(&t, &["layer", "rm", "copy"]);
    ok(&t, &["layer", "rm", "tpl"]);
}

#[test]
fn a_store_refuses_a_driver_other_than_the_one_its_layers_were_made_with() {
    if !root_or_skip(
        "a_store_refuses_a_driver_other_than_the_one_its_layers_were_made_with",
        "layers are created owned 0:0",
    ) {
        return;
    }
    let t = TempStore::new();
    ok(&t, &["--driver", "vfs", "layer", "create", "--id", "base"]);
    let (success, _, err2) = t.cli(&["--driver", "overlay", "layer", "ls"]);
    assert!(!success, "opening a vfs store with overlay must fail");
    assert!(
        err2.contains("holds layers of driver vfs") && err2.contains("--driver vfs"),
        "{err2}"
    );
    // The right driver still opens it, the layer intact.
    assert_eq!(
        ok(&t, &["--driver", "vfs", "layer", "ls"]).lines().count(),
        1
    );
}

//! Nothing lost (issue 16, items 1 and 4): a failed apply leaves the layer exactly as it was,
//! on every driver, and a failed rollback leaves a record the next open's recovery finishes.
//!
//! Each failing tar first does everything a layer tar can do to what the layer holds —
//! replaces a file, turns a file into a directory, deletes with a whiteout, empties a
//! directory with an opaque marker, changes a directory's mode, adds beside existing files
//! and in new directories — and then fails: (a) truncated in the middle of a file, (b) an
//! entry the host refuses (`../escape`), (c) a full disk. The driver's whole home (every
//! path's kind, mode, owner, inode, mtime, content, link target and xattrs) must be the same
//! before and after, the error must say the layer was left as it was, and the layer must
//! still take a good tar.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::Digest;
use strata_tests::targen::{Entry, tar_of};
use strata_tests::{TempStore, create_with, hostile_config, hostile_wasm, root_or_skip};

/// Everything about the tree at `root`, one line per path.
fn tree_state(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, path: &Path, out: &mut BTreeMap<String, String>) {
        let md = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let ft = md.file_type();
        let content = if ft.is_file() {
            hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
        } else if ft.is_symlink() {
            std::fs::read_link(path).unwrap().display().to_string()
        } else {
            String::new()
        };
        let mut xattrs: Vec<String> = strata_host::sys::fs::list_xattrs_path(path, true)
            .unwrap_or_default()
            .into_iter()
            .map(|k| {
                let k = k.to_string_lossy().into_owned();
                let v = strata_host::sys::fs::get_xattr_path(path, &k, true)
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                format!("{k}={}", hex::encode(v))
            })
            .collect();
        xattrs.sort();
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        out.insert(
            format!("/{rel}"),
            format!(
                "mode={:o} uid={} gid={} ino={} nlink={} rdev={} mtime={}.{:09} size={} {content} [{}]",
                md.mode(),
                md.uid(),
                md.gid(),
                md.ino(),
                md.nlink(),
                md.rdev(),
                md.mtime(),
                md.mtime_nsec(),
                if ft.is_dir() { 0 } else { md.size() },
                xattrs.join(" ")
            ),
        );
        if ft.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(path)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            for n in names {
                walk(root, &path.join(n), out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn assert_same(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>, what: &str) {
    let mut diffs = Vec::new();
    for (k, v) in before {
        match after.get(k) {
            None => diffs.push(format!("gone: {k} ({v})")),
            Some(w) if w != v => diffs.push(format!("changed: {k}\n  was {v}\n  now {w}")),
            _ => {}
        }
    }
    for (k, v) in after {
        if !before.contains_key(k) {
            diffs.push(format!("new: {k} ({v})"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{what}: the layer is not as it was:\n{}",
        diffs.join("\n")
    );
}

/// The first layer's content.
fn good_base() -> Vec<u8> {
    tar_of(&[
        Entry::dir("etc", 0o755).mtime(1_600_000_000),
        Entry::file("etc/hosts", 0o644, b"127.0.0.1 localhost\n").mtime(1_600_000_001),
        Entry::file("etc/motd", 0o644, b"welcome\n"),
        Entry::dir("opt", 0o755),
        Entry::file("opt/tool", 0o755, b"#!/bin/sh\n"),
        Entry::dir("opt/lib", 0o755),
        Entry::file("opt/lib/a.so", 0o644, b"elf"),
        Entry::symlink("hosts", "etc/hosts"),
        Entry::hardlink("etc/hosts.bak", "etc/hosts"),
        Entry::file("keep", 0o600, b"the good file\n").owner(1000, 1000),
    ])
}

/// The entries of a failing tar that change everything the layer held, before it fails.
fn destructive() -> Vec<Entry> {
    vec![
        Entry::file("etc/hosts", 0o600, b"replaced\n"),
        Entry::whiteout("etc/motd"),
        Entry::opaque("opt"),
        Entry::dir("etc", 0o700),
        Entry::dir("keep", 0o755),
        Entry::file("keep/inside", 0o644, b"x"),
        Entry::dir("new", 0o755),
        Entry::file("new/file", 0o644, b"new"),
        Entry::file("etc/added", 0o644, b"added"),
        Entry::symlink("hosts", "elsewhere"),
        Entry::whiteout("missing"),
    ]
}

/// (a) The destructive entries, then a file cut off in the middle of its content.
fn truncated() -> Vec<u8> {
    let mut entries = destructive();
    entries.push(Entry::file("big", 0o644, &vec![7u8; 64 * 1024]));
    let tar = tar_of(&entries);
    // Cut inside `big`'s content: past its header, well before the end-of-archive blocks.
    tar[..tar.len() - 1024 - 40 * 1024 - 100].to_vec()
}

/// (b) The destructive entries, then an entry named `../escape`, which the host refuses.
fn refused() -> Vec<u8> {
    let mut tar = tar_of(&destructive());
    // Drop the end-of-archive blocks and append a raw header the tar crate would not write.
    tar.truncate(tar.len() - 1024);
    let mut h = tar::Header::new_old();
    {
        let old = h.as_old_mut();
        old.name[..9].copy_from_slice(b"../escape");
    }
    h.set_size(4);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    tar.extend_from_slice(h.as_bytes());
    tar.extend_from_slice(b"evil");
    tar.extend_from_slice(&[0u8; 508]);
    tar.extend_from_slice(&[0u8; 1024]);
    tar
}

/// (c) The destructive entries, then a file larger than the filesystem.
fn too_big(bytes: usize) -> Vec<u8> {
    let mut entries = destructive();
    entries.push(Entry::file("huge", 0o644, &vec![0x5a; bytes]));
    tar_of(&entries)
}

fn ok(t: &TempStore, args: &[&str]) -> String {
    let (success, out, err) = t.cli(args);
    assert!(success, "strata {} failed: {err}", args.join(" "));
    out
}

fn write_tar(t: &TempStore, name: &str, bytes: &[u8]) -> String {
    let p = t.dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_string_lossy().into_owned()
}

/// Applies each failing tar onto `layer` of the store in `t` (driver `d[1]`, `d` the
/// arguments choosing it), checking the driver's whole home is untouched and the error says
/// so.
fn fails_leaving_all(t: &TempStore, d: &[&str], layer: &str, failing: &[(&str, Vec<u8>)]) {
    let driver = d[1];
    let home = t.home(driver);
    for (what, bytes) in failing {
        let before = tree_state(&home);
        let path = write_tar(t, &format!("{what}.tar"), bytes);
        let (success, _, err) = t.cli(&[d, &["layer", "apply", layer, &path]].concat());
        assert!(!success, "{driver}: applying the {what} tar succeeded");
        assert!(
            err.contains("left as it was"),
            "{driver}, {what} tar: the error does not say the layer was kept: {err}"
        );
        assert!(!err.contains("was removed"), "{driver}, {what} tar: {err}");
        let after = tree_state(&home);
        assert_same(
            &before,
            &after,
            &format!("{driver}, {what} tar onto {layer}"),
        );
        let listed = ok(t, &[d, &["layer", "ls"]].concat());
        assert!(
            listed.contains(layer),
            "{driver}: {layer} is gone: {listed}"
        );
    }
}

/// Base and child layers of the driver `d` chooses (`--driver NAME …`) with content, then
/// every failing tar onto each.
fn failed_applies_keep_the_layer(t: &TempStore, d: &[&str], full_disk: Option<usize>) {
    let base = write_tar(t, "base.tar", &good_base());
    ok(t, &[d, &["layer", "create", "--id", "base"]].concat());
    ok(t, &[d, &["layer", "apply", "base", &base]].concat());
    let mut failing = vec![("truncated", truncated()), ("refused", refused())];
    if let Some(bytes) = full_disk {
        failing = vec![("full-disk", too_big(bytes))];
    }
    fails_leaving_all(t, d, "base", &failing);

    // A child (overlay: whiteouts as 0:0 devices, opacity as an xattr) that has content of
    // its own.
    ok(
        t,
        &[d, &["layer", "create", "--id", "top", "--parent", "base"]].concat(),
    );
    let top = write_tar(
        t,
        "top.tar",
        &tar_of(&[
            Entry::file("etc/hosts", 0o644, b"the child's hosts\n"),
            Entry::whiteout("etc/motd"),
            Entry::dir("srv", 0o755),
            Entry::file("srv/data", 0o644, b"data"),
            Entry::opaque("opt/lib"),
            Entry::file("opt/lib/b.so", 0o644, b"elf2"),
        ]),
    );
    ok(t, &[d, &["layer", "apply", "top", &top]].concat());
    fails_leaving_all(t, d, "top", &failing);

    // The layer still takes a good tar, and still holds what it held.
    let more = write_tar(t, "more.tar", &tar_of(&[Entry::file("more", 0o644, b"1")]));
    ok(t, &[d, &["layer", "apply", "top", &more]].concat());
    let mp = ok(t, &[d, &["layer", "mount", "top"]].concat());
    let mp = PathBuf::from(mp.trim());
    assert_eq!(
        std::fs::read(mp.join("etc/hosts")).unwrap(),
        b"the child's hosts\n"
    );
    assert_eq!(std::fs::read(mp.join("keep")).unwrap(), b"the good file\n");
    assert_eq!(std::fs::read(mp.join("srv/data")).unwrap(), b"data");
    assert!(!mp.join("etc/motd").exists());
    assert!(mp.join("opt/lib/b.so").exists() && !mp.join("opt/lib/a.so").exists());
    ok(t, &[d, &["layer", "unmount", "top"]].concat());
}

#[test]
fn a_failed_apply_leaves_a_vfs_layer_as_it_was() {
    if !root_or_skip(
        "a_failed_apply_leaves_a_vfs_layer_as_it_was",
        "it mounts layers and sets owners",
    ) {
        return;
    }
    let t = TempStore::new();
    failed_applies_keep_the_layer(&t, &["--driver", "vfs"], None);
}

#[test]
fn a_failed_apply_leaves_an_overlay_layer_as_it_was() {
    if !root_or_skip(
        "a_failed_apply_leaves_an_overlay_layer_as_it_was",
        "overlay mounts",
    ) {
        return;
    }
    let t = TempStore::new();
    failed_applies_keep_the_layer(&t, &["--driver", "overlay"], None);
}

/// The store root on a 24 MiB tmpfs; the failing tar writes a 48 MiB file.
fn on_a_small_filesystem(driver: &str) {
    let t = TempStore::new();
    std::fs::create_dir_all(t.root()).unwrap();
    let status = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=24m",
            "strata-full",
            &t.root().to_string_lossy(),
        ])
        .status()
        .expect("running mount");
    assert!(status.success(), "mounting a tmpfs");
    failed_applies_keep_the_layer(&t, &["--driver", driver], Some(48 << 20));
}

#[test]
fn a_full_disk_during_apply_leaves_a_vfs_layer_as_it_was() {
    if !root_or_skip(
        "a_full_disk_during_apply_leaves_a_vfs_layer_as_it_was",
        "it mounts a tmpfs",
    ) {
        return;
    }
    on_a_small_filesystem("vfs");
}

#[test]
fn a_full_disk_during_apply_leaves_an_overlay_layer_as_it_was() {
    if !root_or_skip(
        "a_full_disk_during_apply_leaves_an_overlay_layer_as_it_was",
        "it mounts a tmpfs",
    ) {
        return;
    }
    on_a_small_filesystem("overlay");
}

#[test]
fn a_failed_apply_leaves_a_btrfs_layer_as_it_was() {
    if !strata_tests::btrfs_or_skip("a_failed_apply_leaves_a_btrfs_layer_as_it_was") {
        return;
    }
    let fs = strata_tests::LoopBtrfs::new(512 << 20);
    let t = TempStore::new();
    std::fs::create_dir_all(t.root()).unwrap();
    let status = std::process::Command::new("mount")
        .arg("--bind")
        .arg(fs.mnt())
        .arg(t.root())
        .status()
        .expect("running mount");
    assert!(status.success(), "bind-mounting the btrfs");
    failed_applies_keep_the_layer(&t, &["--driver", "btrfs"], None);
}

#[test]
fn a_failed_apply_leaves_a_zfs_layer_as_it_was() {
    if !strata_tests::zfs_or_skip("a_failed_apply_leaves_a_zfs_layer_as_it_was") {
        return;
    }
    let pool = strata_tests::ZfsPool::new(512 << 20);
    let t = TempStore::new();
    let fsname = format!("fsname={}", pool.fsname());
    failed_applies_keep_the_layer(&t, &["--driver", "zfs", "--driver-opt", &fsname], None);
}

/// Item 4: a driver whose `remove` fails during a rollback leaves the layer's record,
/// incomplete, and the next open's recovery removes the data and the record.
#[test]
fn a_failed_rollback_leaves_a_record_that_recovery_finishes() {
    if !strata_tests::root_or_skip(
        "a_failed_rollback_leaves_a_record_that_recovery_finishes",
        strata_tests::DRIVER_INIT_NEEDS_ROOT,
    ) {
        return;
    }
    let t = TempStore::new();
    let cfg = hostile_config(&t, "");
    let layer_data = t.home(strata_tests::HOSTILE).join("dir/victim");
    {
        let s = t.open_with(&hostile_wasm(), cfg.clone()).expect("opening");
        let err = create_with(&s, "victim", &[("fail-remove-once", "1")])
            .expect_err("the create fails on request");
        assert!(err.to_string().contains("fail-remove-once"), "{err}");
        assert!(layer_data.is_dir(), "the driver made the layer's data");
        let incomplete: Vec<String> = s
            .incomplete_layers()
            .unwrap()
            .into_iter()
            .map(|l| l.id)
            .collect();
        assert_eq!(
            incomplete,
            vec!["victim".to_string()],
            "the record must stay, incomplete, while the driver's data does"
        );
    }
    let s = t.open_with(&hostile_wasm(), cfg).expect("reopening");
    assert!(s.get("victim").is_err(), "recovery removed the record");
    assert!(
        !layer_data.exists(),
        "recovery removed the driver's data: nothing orphaned"
    );
    assert!(s.incomplete_layers().unwrap().is_empty());
}

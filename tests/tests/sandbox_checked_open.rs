//! Copy and export open a regular file only after checking the descriptor against the
//! `lstat` (crates/sys/src/fs.rs `open_regular_checked`, unit-tested with swapped-in fifos,
//! devices and symlinks in crates/core/src/archive/checked_open_tests.rs). Here, end to end: a layer
//! holding a fifo and device nodes (never opened, recreated from their `lstat`) is copied to
//! a child and exported, on vfs and on overlay, without blocking and with every entry intact.

use std::io::Cursor;
use std::sync::mpsc;
use std::time::Duration;

use strata_core::layers::{CreateLayer, Strata};
use strata_tests::targen::{Entry, tar_of};
use strata_tests::{TempStore, driver_wasm, root_or_skip};

fn special_files() -> Vec<Entry> {
    vec![
        Entry::dir("dev", 0o755),
        Entry::fifo("dev/pipe", 0o600),
        // /dev/zero's numbers: opened and read, it would never end.
        Entry::char_device("dev/zero2", 0o666, 1, 5),
        Entry::block_device("dev/loop9", 0o660, 7, 9),
        Entry::file("dev/regular", 0o644, b"regular content"),
    ]
}

fn create(s: &Strata, id: &str, parent: Option<&str>) {
    s.create_layer(CreateLayer {
        id: Some(id.into()),
        parent: parent.map(str::to_string),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("creating {id}: {e}"));
}

/// (path, entry type, size, content) of every entry of `tar`.
fn entries(tar: &[u8]) -> Vec<(String, tar::EntryType, Vec<u8>)> {
    let mut a = tar::Archive::new(Cursor::new(tar));
    a.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let kind = e.header().entry_type();
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut body).unwrap();
            (path, kind, body)
        })
        .collect()
}

fn check(wasm: &str) {
    let t = TempStore::new();
    let s = t
        .open_with(&driver_wasm(wasm), t.config())
        .expect("opening the store");
    create(&s, "base", None);
    s.apply("base", Box::new(Cursor::new(tar_of(&special_files()))))
        .expect("applying special files");
    // A child (vfs: a copy of the parent through the copy interface), and exports of both.
    create(&s, "child", Some("base"));
    create(&s, "empty", None);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut full = Vec::new();
        s.diff("base", None, &mut full).expect("exporting base");
        let mut child = Vec::new();
        s.diff("child", Some("empty"), &mut child)
            .expect("exporting the child whole");
        let _ = tx.send((full, child));
    });
    let (full, child) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("an export blocked");
    for tar in [full, child] {
        let got = entries(&tar);
        let find = |p: &str| {
            got.iter()
                .find(|(path, _, _)| path.trim_end_matches('/') == p)
                .unwrap_or_else(|| panic!("{wasm}: {p} missing from the export: {got:?}"))
        };
        assert_eq!(find("dev/pipe").1, tar::EntryType::Fifo);
        assert_eq!(find("dev/zero2").1, tar::EntryType::Char);
        assert_eq!(find("dev/loop9").1, tar::EntryType::Block);
        assert!(find("dev/zero2").2.is_empty());
        assert_eq!(find("dev/regular").2, b"regular content");
    }
}

#[test]
fn fifos_and_devices_are_copied_and_exported_without_being_opened_vfs() {
    if !root_or_skip(
        "fifos_and_devices_are_copied_and_exported_without_being_opened_vfs",
        "mknod",
    ) {
        return;
    }
    check("strata_driver_vfs");
}

#[test]
fn fifos_and_devices_are_copied_and_exported_without_being_opened_overlay() {
    if !root_or_skip(
        "fifos_and_devices_are_copied_and_exported_without_being_opened_overlay",
        "mknod, overlay mounts",
    ) {
        return;
    }
    check("strata_driver_overlay");
}

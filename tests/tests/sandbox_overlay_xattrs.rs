//! An image cannot forge overlayfs metadata: `trusted.overlay.*` and `user.overlay.*` xattrs
//! in a layer tar's PAX `SCHILY.xattr.*` records (a `redirect` or `metacopy` would make
//! overlayfs show another file's data, an `opaque` hide the layers below) are dropped on
//! apply, on vfs and on overlay layers alike, while other xattrs are kept and the host's own
//! opaque marking from a `.wh..wh..opq` entry still works.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use strata_tests::TempStore;
use strata_tests::root_or_skip;
use strata_tests::targen::{Entry, tar_of};

/// A valid `security.capability` (v2, CAP_NET_BIND_SERVICE permitted): the kernel refuses
/// malformed ones.
const CAPABILITY: [u8; 20] = [
    0x00, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

const FORGED: [(&str, &[u8]); 7] = [
    ("trusted.overlay.redirect", b"/etc/shadow"),
    ("trusted.overlay.metacopy", b""),
    ("trusted.overlay.opaque", b"y"),
    ("trusted.overlay.origin", b"\x00\xfb"),
    ("user.overlay.redirect", b"/etc/shadow"),
    ("user.overlay.metacopy", b""),
    ("user.overlay.opaque", b"y"),
];

fn forged(mut e: Entry) -> Entry {
    for (k, v) in FORGED {
        e = e.xattr(k, v);
    }
    e
}

fn layer_tar() -> Vec<u8> {
    tar_of(&[
        forged(Entry::dir("probe-dir", 0o755).xattr("user.foo", b"dir")),
        forged(
            Entry::file("probe-dir/probe-file", 0o755, b"x")
                .xattr("user.foo", b"file")
                .xattr("security.capability", &CAPABILITY),
        ),
        // user.* xattrs are not allowed on symlinks at all: only the trusted ones.
        Entry::symlink("probe-dir/probe-link", "probe-file")
            .xattr("trusted.overlay.redirect", b"/etc/shadow")
            .xattr("trusted.overlay.metacopy", b""),
        Entry::dir("probe-opaque", 0o755),
        Entry::opaque("probe-opaque"),
    ])
}

/// The directory of the store holding `probe-dir` (the layer's own directory, wherever the
/// driver keeps it).
fn find_layer(root: &Path) -> PathBuf {
    fn walk(dir: &Path, depth: usize) -> Option<PathBuf> {
        if depth > 8 {
            return None;
        }
        let entries = std::fs::read_dir(dir).ok()?;
        for e in entries.flatten() {
            let ft = e.file_type().ok()?;
            if !ft.is_dir() {
                continue;
            }
            if e.file_name() == "probe-dir" {
                return Some(dir.to_path_buf());
            }
            if let Some(found) = walk(&e.path(), depth + 1) {
                return Some(found);
            }
        }
        None
    }
    walk(root, 0).expect("the applied layer's directory in the store")
}

fn xattr_names(p: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 64 * 1024];
    let n = rustix::fs::llistxattr(p, &mut buf[..]).expect("listxattr");
    buf[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 64 * 1024];
    rustix::fs::lgetxattr(p, name, &mut buf[..])
        .ok()
        .map(|n| buf[..n].to_vec())
}

fn check(driver: &str, opaque_key: Option<&str>) {
    let t = TempStore::new();
    let tar = t.dir.path().join("forged.tar");
    std::fs::write(&tar, layer_tar()).unwrap();
    // A bottom overlay layer applies whiteouts by deleting: the tar goes onto a child.
    let (ok, _, err) = t.cli(&["--driver", driver, "layer", "create", "--id", "base"]);
    assert!(ok, "{driver}: creating a layer: {err}");
    let (ok, _, err) = t.cli(&[
        "--driver", driver, "layer", "create", "--id", "forged", "--parent", "base",
    ]);
    assert!(ok, "{driver}: creating a layer: {err}");
    let (ok, _, err) = t.cli(&[
        "--driver",
        driver,
        "layer",
        "apply",
        "forged",
        tar.to_str().unwrap(),
    ]);
    assert!(ok, "{driver}: applying: {err}");
    let layer = find_layer(&t.root());
    for rel in ["probe-dir", "probe-dir/probe-file", "probe-dir/probe-link"] {
        let p = layer.join(rel);
        let overlay: Vec<String> = xattr_names(&p)
            .into_iter()
            .filter(|k| k.starts_with("trusted.overlay.") || k.starts_with("user.overlay."))
            .collect();
        assert!(
            overlay.is_empty(),
            "{driver}: {rel} got overlay xattrs from the tar: {overlay:?}"
        );
    }
    assert_eq!(
        xattr(&layer.join("probe-dir"), "user.foo").as_deref(),
        Some(&b"dir"[..]),
        "{driver}: user.foo of the directory"
    );
    let file = layer.join("probe-dir/probe-file");
    assert_eq!(xattr(&file, "user.foo").as_deref(), Some(&b"file"[..]));
    assert_eq!(
        xattr(&file, "security.capability").as_deref(),
        Some(&CAPABILITY[..]),
        "{driver}: security.capability kept"
    );
    // The host's own marking from `.wh..wh..opq`.
    let opaque_dir = layer.join("probe-opaque");
    assert!(opaque_dir.is_dir());
    if let Some(key) = opaque_key {
        assert_eq!(
            xattr(&opaque_dir, key).as_deref(),
            Some(&b"y"[..]),
            "{driver}: the opaque marker's xattr"
        );
    }
    assert!(!layer.join(OsStr::new("probe-opaque/.wh..wh..opq")).exists());
}

#[test]
fn overlay_xattrs_from_a_tar_are_dropped_on_vfs() {
    if !root_or_skip(
        "overlay_xattrs_from_a_tar_are_dropped_on_vfs",
        "trusted.* xattrs and root-owned entries",
    ) {
        return;
    }
    check("vfs", None);
}

#[test]
fn overlay_xattrs_from_a_tar_are_dropped_on_overlay() {
    if !root_or_skip(
        "overlay_xattrs_from_a_tar_are_dropped_on_overlay",
        "trusted.* xattrs and root-owned entries",
    ) {
        return;
    }
    check("overlay", Some("trusted.overlay.opaque"));
}

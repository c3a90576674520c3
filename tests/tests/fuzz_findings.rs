//! What the fuzz targets (`fuzz/`, `cargo xtask fuzz`, docs/fuzzing.md) found, each kept as
//! a test that failed before its fix. Root-free: they run anywhere.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use strata_core::archive::{ArchiveError, WhiteoutFormat, apply_layer_tar};
use strata_sys::Dir;
use strata_tests::targen::{Entry, tar_of};

/// Names, kinds, modes, link targets and contents of a tree.
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let mut line = format!("{rel} {:o}", md.mode());
        if md.file_type().is_symlink() {
            line.push_str(&format!(
                " -> {}",
                std::fs::read_link(&p).unwrap().display()
            ));
        } else if md.is_file() {
            line.push_str(&format!(" {:?}", std::fs::read(&p).unwrap()));
        } else if md.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
        out.push(line);
    }
    out.sort();
    out
}

/// tar_apply: an overlay layer holding a symlink `l` to its directory `d`, and a tar with an
/// opaque marker beneath it (`l/.wh..wh..opq`). The marker's directory is a symlink: the
/// apply set the opaque xattr on the symlink itself (refused for `user.` xattrs, so the
/// apply failed), and undoing the apply then tried to set the symlink's mode back, which a
/// symlink does not have: "the layer is damaged". An opaque marker must be in a directory of
/// the layer: refused, and the apply undone with the layer as it was.
#[test]
fn an_opaque_marker_beneath_a_symlink_is_refused_and_the_apply_undone() {
    for format in [WhiteoutFormat::OverlayUser, WhiteoutFormat::OverlayTrusted] {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path();
        std::fs::create_dir(dest.join("d")).unwrap();
        std::fs::write(dest.join("d/f"), b"kept").unwrap();
        std::os::unix::fs::symlink("d", dest.join("l")).unwrap();
        let before = tree(dest);
        let tar = tar_of(&[Entry::file("new", 0o644, b"undone"), Entry::opaque("l")]);
        let dir = Dir::open_ambient(dest).unwrap();
        let result = apply_layer_tar(tar.as_slice(), &dir, format);
        match &result {
            Err(ArchiveError::Undone(cause)) => {
                let message = cause.to_string();
                assert!(message.contains("l/.wh..wh..opq"), "{format:?}: {message}");
                assert!(message.contains("not a directory"), "{format:?}: {message}");
            }
            other => panic!("{format:?}: expected a refusal, undone: {other:?}"),
        }
        assert_eq!(tree(dest), before, "{format:?}");
    }
}

/// tar_apply: a layer holding a symlink `out` that leads nowhere within the layer
/// (`../outside`, `/missing`: resolved in the layer's root, neither exists), and a tar with
/// an entry beneath it. Making the entry's parent directories, the apply noted `out` as
/// created by it before `mkdir` found the name taken, and undoing the failed apply then
/// removed the layer's own symlink. Nothing the layer had may be noted as created: refused,
/// and the layer as it was.
#[test]
fn an_entry_beneath_a_dangling_symlink_is_refused_and_the_symlink_kept() {
    for (format, entry) in [
        (WhiteoutFormat::Delete, Entry::file("out/new", 0o644, b"x")),
        (
            WhiteoutFormat::OverlayTrusted,
            Entry::whiteout("out/sentinel"),
        ),
        (WhiteoutFormat::OverlayUser, Entry::dir("out/sub", 0o755)),
    ] {
        for target in ["../outside", "/missing"] {
            let tmp = tempfile::tempdir().unwrap();
            let dest = tmp.path();
            std::fs::write(dest.join("top"), b"kept").unwrap();
            std::os::unix::fs::symlink(target, dest.join("out")).unwrap();
            let before = tree(dest);
            let tar = tar_of(&[Entry::file("new", 0o644, b"undone"), entry.clone()]);
            let dir = Dir::open_ambient(dest).unwrap();
            let result = apply_layer_tar(tar.as_slice(), &dir, format);
            assert!(
                matches!(result, Err(ArchiveError::Undone(_))),
                "{format:?} {target}: expected a refusal, undone: {result:?}"
            );
            assert_eq!(tree(dest), before, "{format:?} {target}");
        }
    }
}

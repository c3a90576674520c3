//! The lexical check every driver-supplied path goes through ([`check_relative`]) and the
//! confinement each [`Dir`] resolves with: a driver path stays beneath its home (symlinks
//! inside it may be followed, none may lead out), a tar entry resolves as if the layer were
//! `/`. None needs root.

use std::os::unix::fs::symlink;
use std::path::PathBuf;

use super::{Confinement, Dir, MAX_PATH_LEN, check_relative};
use crate::sys::ErrorKind;

#[test]
fn relative_paths_are_normalised() {
    for (path, want) in [
        ("a/b", "a/b"),
        ("./a//b/", "a/b"),
        ("a/./b/.", "a/b"),
        ("", ""),
        (".", ""),
        ("..a/b..", "..a/b.."),
        ("a b/\u{e9}", "a b/\u{e9}"),
    ] {
        assert_eq!(
            check_relative(path).unwrap(),
            PathBuf::from(want),
            "{path:?}"
        );
    }
    let longest = "a".repeat(MAX_PATH_LEN);
    assert!(check_relative(&longest).is_ok());
}

#[test]
fn parent_components_absolute_nul_and_overlong_paths_are_refused() {
    for (path, kind, why) in [
        ("..", ErrorKind::Denied, "`..` may not be used"),
        ("a/..", ErrorKind::Denied, "`..` may not be used"),
        ("a/../b", ErrorKind::Denied, "`..` may not be used"),
        ("./../a", ErrorKind::Denied, "`..` may not be used"),
        ("/", ErrorKind::Denied, "absolute paths are not allowed"),
        (
            "/etc/passwd",
            ErrorKind::Denied,
            "absolute paths are not allowed",
        ),
        ("//a", ErrorKind::Denied, "absolute paths are not allowed"),
        ("a\0b", ErrorKind::InvalidArgument, "NUL"),
    ] {
        let e = check_relative(path).expect_err(path);
        assert_eq!(e.kind, kind, "{path:?}: {e}");
        assert!(e.reason().contains(why), "{path:?}: {}", e.reason());
    }
    let e = check_relative(&"a".repeat(MAX_PATH_LEN + 1)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    assert!(e.reason().contains("too long"), "{e}");
}

/// `top/home/{sub/f, in -> sub, abs -> /, out -> ../outside, root -> /sub}` and
/// `top/outside/secret`.
fn tree() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    std::fs::create_dir_all(home.join("sub")).unwrap();
    std::fs::write(home.join("sub/f"), b"in").unwrap();
    std::fs::create_dir(t.path().join("outside")).unwrap();
    std::fs::write(t.path().join("outside/secret"), b"out").unwrap();
    symlink("sub", home.join("in")).unwrap();
    symlink("/", home.join("abs")).unwrap();
    symlink("../outside", home.join("out")).unwrap();
    symlink("/sub", home.join("root")).unwrap();
    (t, home)
}

fn open(home: &std::path::Path, c: Confinement) -> Dir {
    Dir::open_ambient(home)
        .unwrap()
        .with_confinement(c)
        .unwrap()
}

#[test]
fn a_driver_path_may_follow_symlinks_inside_its_home_but_never_out() {
    let (_t, home) = tree();
    let d = open(&home, Confinement::Beneath);
    assert!(d.lstat("in/f").is_ok());
    assert!(d.open_dir("in").is_ok());
    for out in ["out", "out/secret", "abs", "abs/etc", "root"] {
        let e = d.open_dir(out).expect_err(out);
        assert_eq!(e.kind, ErrorKind::Denied, "{out:?}: {e}");
    }
}

#[test]
fn a_plan_path_may_not_go_through_any_symlink() {
    let (_t, home) = tree();
    let d = open(&home, Confinement::NoSymlinks);
    assert!(d.open_dir("sub").is_ok());
    for through in ["in", "out", "abs", "root"] {
        let e = d.open_dir(through).expect_err(through);
        assert_eq!(e.kind, ErrorKind::Denied, "{through:?}: {e}");
        assert!(
            e.reason().contains("symlink"),
            "{through:?}: {}",
            e.reason()
        );
    }
}

#[test]
fn a_tar_entry_resolves_as_if_the_layer_were_the_root() {
    let (_t, home) = tree();
    let d = open(&home, Confinement::InRoot);
    // `/sub` and `/` are the layer's own, not the host's.
    let sub = d.open_dir("root").unwrap();
    assert!(sub.lstat("f").is_ok());
    let top = d.open_dir("abs").unwrap();
    assert!(top.lstat("sub/f").is_ok());
    assert!(
        top.lstat("etc/passwd").is_err(),
        "the host's /etc is not reached"
    );
    // `../outside` is clamped at the layer's root: there is no `outside` there.
    let e = d.open_dir("out").unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
}

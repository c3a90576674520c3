//! The checks a driver's mount plan goes through before any mount syscall, at the level of
//! its strings: the target, the overlay's shape and options, and every path resolved beneath
//! the driver home the way [`super::check_plan`] resolves it (no `..`, nothing absolute, no
//! symlink anywhere). None needs root: nothing is mounted.

use std::os::unix::fs::symlink;

use super::{MAX_OVERLAY_LOWERS, check_overlay_shape, check_target};
use crate::sys::{self, ErrorKind, fs::Confinement};

#[test]
fn the_target_may_not_be_the_home_itself() {
    for home in ["", ".", "./", ".//.", "./."] {
        let e = check_target(home).expect_err(home);
        assert!(
            e.contains("may not be the driver home itself"),
            "{home:?}: {e}"
        );
    }
    for ok in ["layers/a", "a", "./a", "a/"] {
        assert_eq!(check_target(ok), Ok(()), "{ok:?}");
    }
}

#[test]
fn an_overlay_needs_lowers_within_the_kernel_limit_and_upper_with_work() {
    assert_eq!(check_overlay_shape(1, false, false), Ok(()));
    assert_eq!(check_overlay_shape(MAX_OVERLAY_LOWERS, true, true), Ok(()));
    let e = check_overlay_shape(0, false, false).unwrap_err();
    assert!(e.contains("at least one lower"), "{e}");
    let e = check_overlay_shape(MAX_OVERLAY_LOWERS + 1, false, false).unwrap_err();
    assert_eq!(e, "501 lower directories is more than the kernel's 500");
    for (upper, work) in [(true, false), (false, true)] {
        let e = check_overlay_shape(2, upper, work).unwrap_err();
        assert!(e.contains("both an upper and a work directory"), "{e}");
    }
}

/// A driver home like a real one: `layers/a/{diff,work}`, `layers/b/diff`, a symlink inside
/// the home to a directory inside it, one leading out, and a file outside the home.
fn home() -> (tempfile::TempDir, sys::Dir) {
    let t = tempfile::tempdir().unwrap();
    let h = t.path().join("home");
    for d in ["layers/a/diff", "layers/a/work", "layers/b/diff"] {
        std::fs::create_dir_all(h.join(d)).unwrap();
    }
    std::fs::create_dir(t.path().join("outside")).unwrap();
    symlink("layers/b", h.join("inside")).unwrap();
    symlink("/", h.join("root")).unwrap();
    symlink("../outside", h.join("out")).unwrap();
    symlink("b", h.join("layers/to-b")).unwrap();
    let dir = sys::Dir::open_ambient(&h)
        .unwrap()
        .with_confinement(Confinement::NoSymlinks)
        .unwrap();
    (t, dir)
}

/// How `check_plan` resolves each plan path.
fn resolve(home: &sys::Dir, path: &str) -> Result<sys::Dir, sys::SysError> {
    home.open_dir(path)
}

#[test]
fn plan_paths_beneath_the_home_through_real_directories_resolve() {
    let (t, home) = home();
    for ok in ["layers/a/diff", "./layers//a/work/", "layers/b", ""] {
        let d = resolve(&home, ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        assert!(d.path().starts_with(t.path().join("home")), "{ok:?}");
    }
}

#[test]
fn plan_paths_leaving_the_home_or_through_a_symlink_are_denied() {
    let (_t, home) = home();
    for (bad, why) in [
        ("..", "`..` may not be used"),
        ("layers/../..", "`..` may not be used"),
        ("layers/a/../../../outside", "`..` may not be used"),
        ("/etc", "absolute paths are not allowed"),
        ("/", "absolute paths are not allowed"),
        ("root", "through a symlink"),
        ("root/etc", "through a symlink"),
        ("out", "through a symlink"),
        // Inside the home, yet a symlink: what was checked must be what gets mounted.
        ("inside", "through a symlink"),
        ("inside/diff", "through a symlink"),
        ("layers/to-b/diff", "through a symlink"),
    ] {
        let e = resolve(&home, bad).expect_err(bad);
        assert_eq!(e.kind, ErrorKind::Denied, "{bad:?}: {e}");
        assert!(e.reason().contains(why), "{bad:?}: {}", e.reason());
    }
}

#[test]
fn missing_overlong_and_nul_plan_paths_are_refused_but_not_as_escapes() {
    let (_t, home) = home();
    let e = resolve(&home, "layers/c").unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    let long = "a/".repeat(sys::fs::MAX_PATH_LEN / 2 + 1);
    let e = resolve(&home, &long).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    assert!(e.reason().contains("too long"), "{e}");
    let e = resolve(&home, "layers/a\0/diff").unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    assert!(e.reason().contains("NUL"), "{e}");
}

//! A non-lazy unmount of a layer rides out a short EBUSY (a forked child holding a copy of a
//! descriptor inside the mount until its `exec`), and still answers `busy` for a mount that
//! stays in use (`strata_sys::mount::unmount_at`, `UNMOUNT_BUSY_ATTEMPTS`).

use std::os::fd::AsFd;

use strata_sys::ErrorKind;
use strata_sys::fs::Dir;
use strata_sys::mount::{UNMOUNT_BUSY_PAUSE, bind, unmount_at};
use strata_tests::root_or_skip;

/// A bind mount of `src` on `root/m`; returns the parent directory and the mount id.
fn bound(root: &std::path::Path) -> (Dir, u64) {
    std::fs::create_dir(root.join("src")).unwrap();
    std::fs::write(root.join("src/file"), b"held").unwrap();
    std::fs::create_dir(root.join("m")).unwrap();
    let src = Dir::open_ambient(&root.join("src")).unwrap();
    let target = Dir::open_ambient(&root.join("m")).unwrap();
    let id = bind(&src, &target, &root.join("m"), false).unwrap();
    (Dir::open_ambient(root).unwrap(), id)
}

#[test]
fn a_descriptor_held_briefly_inside_the_mount_does_not_fail_the_unmount() {
    if !root_or_skip(
        "a_descriptor_held_briefly_inside_the_mount_does_not_fail_the_unmount",
        "bind mounts",
    ) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (parent, id) = bound(t.path());
    // What a forked child holds between fork and exec: an open file inside the mount.
    let held = std::fs::File::open(t.path().join("m/file")).unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(UNMOUNT_BUSY_PAUSE * 2);
        drop(held);
    });
    let r = unmount_at(parent.as_fd(), "m".as_ref(), id, false);
    release.join().unwrap();
    r.expect("the unmount waits out a descriptor released within its retries");
    assert!(!strata_sys::mount::is_mount_point(&t.path().join("m")));
}

#[test]
fn a_mount_that_stays_in_use_is_still_busy() {
    if !root_or_skip("a_mount_that_stays_in_use_is_still_busy", "bind mounts") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (parent, id) = bound(t.path());
    let held = std::fs::File::open(t.path().join("m/file")).unwrap();
    let e = unmount_at(parent.as_fd(), "m".as_ref(), id, false)
        .expect_err("a file open inside the mount for longer than the retries keeps it busy");
    assert_eq!(e.kind, ErrorKind::Busy, "{e}");
    drop(held);
    unmount_at(parent.as_fd(), "m".as_ref(), id, false).unwrap();
}

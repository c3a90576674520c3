//! `open_regular_checked` and `open_dir_checked`: a name `lstat`ed as one file and then
//! replaced (by a fifo, a device node, a symlink, another file) before the open is refused,
//! at once — never opened for content, never blocking on a fifo.

use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::AsFd;
use std::sync::mpsc;
use std::time::Duration;

use crate::sys::ErrorKind;
use crate::sys::fs::{
    Dir, FileKind, mknod_at, open_dir_checked, open_regular_checked, stat_at, symlink_at,
};

/// Runs `f` on a thread; fails the test if it has not returned within 10 s (it blocked).
fn without_blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the checked open blocked")
}

/// A directory holding regular file `f`; the lstat of `f` taken before `replace` runs on it.
fn swapped(replace: impl FnOnce(&std::path::Path, &Dir)) -> Result<String, (ErrorKind, String)> {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("f"), b"content").unwrap();
    let dir = Dir::open_ambient(tmp.path()).unwrap();
    let expected = stat_at(dir.as_fd(), OsStr::new("f")).unwrap();
    assert_eq!(expected.kind, FileKind::Regular);
    replace(tmp.path(), &dir);
    let path = tmp.path().to_path_buf();
    without_blocking(move || {
        let dir = Dir::open_ambient(&path).unwrap();
        match open_regular_checked(dir.as_fd(), OsStr::new("f"), &expected) {
            Ok(mut f) => {
                let mut s = String::new();
                f.read_to_string(&mut s).unwrap();
                Ok(s)
            }
            Err(e) => Err((e.kind, e.to_string())),
        }
    })
}

fn refused(r: Result<String, (ErrorKind, String)>, what: &str) {
    match r {
        Ok(s) => panic!("{what}: opened and read {s:?}"),
        Err((kind, msg)) => {
            assert_eq!(kind, ErrorKind::Denied, "{what}: {msg}");
            assert!(msg.contains("changed while being opened"), "{what}: {msg}");
        }
    }
}

#[test]
fn the_file_that_was_lstated_is_opened() {
    assert_eq!(swapped(|_, _| {}), Ok("content".into()));
}

#[test]
fn a_fifo_swapped_in_is_refused_without_blocking() {
    refused(
        swapped(|p, d| {
            std::fs::remove_file(p.join("f")).unwrap();
            mknod_at(d.as_fd(), OsStr::new("f"), FileKind::Fifo, 0o644, 0).unwrap();
        }),
        "fifo",
    );
}

#[test]
fn a_device_node_swapped_in_is_refused() {
    if !crate::test_env::root_or_skip("a_device_node_swapped_in_is_refused", "mknod") {
        return;
    }
    refused(
        swapped(|p, d| {
            std::fs::remove_file(p.join("f")).unwrap();
            // /dev/zero: were it opened and read, the read would never end.
            let zero = rustix::fs::makedev(1, 5);
            mknod_at(
                d.as_fd(),
                OsStr::new("f"),
                FileKind::CharDevice,
                0o644,
                zero,
            )
            .unwrap();
        }),
        "device node",
    );
}

#[test]
fn a_symlink_swapped_in_is_refused() {
    refused(
        swapped(|p, d| {
            std::fs::rename(p.join("f"), p.join("g")).unwrap();
            symlink_at(OsStr::new("g"), d.as_fd(), OsStr::new("f")).unwrap();
        }),
        "symlink to the original",
    );
}

#[test]
fn another_regular_file_swapped_in_is_refused() {
    refused(
        swapped(|p, _| {
            std::fs::write(p.join("g"), b"other").unwrap();
            std::fs::rename(p.join("g"), p.join("f")).unwrap();
        }),
        "another file",
    );
}

#[test]
fn a_directory_swapped_for_another_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("d")).unwrap();
    let dir = Dir::open_ambient(tmp.path()).unwrap();
    let expected = stat_at(dir.as_fd(), OsStr::new("d")).unwrap();
    assert!(open_dir_checked(dir.as_fd(), OsStr::new("d"), &expected).is_ok());
    std::fs::rename(tmp.path().join("d"), tmp.path().join("old")).unwrap();
    std::fs::create_dir(tmp.path().join("d")).unwrap();
    let err = open_dir_checked(dir.as_fd(), OsStr::new("d"), &expected).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Denied, "{err}");
}

//! A driver's plain WASI file access (`std::fs` in the driver) opens regular files and
//! directories only (issue 15).
//!
//! A layer applied from an image tar puts device nodes and a FIFO in the hostile driver's
//! home (it keeps layers like vfs, at `dir/ID`). Opening any of them through WASI must fail
//! with a WASI `access` error (`PermissionDenied` in the guest) and must not hang: a FIFO's
//! open would block the host thread with no bound, so every call runs on a worker thread
//! watched by the test. Regular files and directories keep working: read, write in place,
//! create, list.

use std::io::Cursor;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use strata_tests::targen::{Entry, tar_of};
use strata_tests::{TempStore, create_with, hostile_config, hostile_wasm, root_or_skip};

const NAME: &str = strata_tests::HOSTILE;

/// How long one driver call may take before the test calls it hung.
const WATCHDOG: Duration = Duration::from_secs(30);

/// The first bytes of the regular file in the layer.
const FILE_BODY: &[u8] = b"hello layers, a regular file\n";

/// The layer the attacks are made on: every kind of file a tar can hold.
fn layer_tree() -> Vec<Entry> {
    vec![
        Entry::dir("a", 0o755),
        Entry::file("a/file", 0o644, FILE_BODY),
        Entry::symlink("a/file-link", "file"),
        Entry::symlink("a/abs", "/etc/passwd"),
        Entry::dir("a/sub", 0o755),
        Entry::dir("dev", 0o755),
        // /dev/zero and /dev/null.
        Entry::char_device("dev/zero", 0o666, 1, 5),
        Entry::char_device("dev/null", 0o666, 1, 3),
        // /dev/loop0: a block device whose open succeeds as root on an unbound loop device.
        Entry::block_device("dev/loop0", 0o660, 7, 0),
        Entry::fifo("dev/fifo", 0o666),
        // A relative symlink to a device: followed beneath the home, it reaches the device.
        Entry::symlink("zero-link", "dev/zero"),
    ]
}

/// One driver call: its create options, and its outcome (`Err` carries the error's text).
type Attempt = (&'static str, String);
type Outcome = Result<(), String>;

/// Opens the hostile driver, makes layer `base` from [`layer_tree`], then makes one layer
/// per attempt with the attempt's option, on a worker thread; returns the outcomes in order.
/// Fails the test if any call does not return within [`WATCHDOG`].
fn run(t: TempStore, attempts: Vec<Attempt>) -> (TempStore, Vec<Outcome>) {
    let cfg = hostile_config(&t, "");
    let n = attempts.len();
    let (tx, rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let s = t
            .open_with(&hostile_wasm(), cfg)
            .expect("opening the hostile driver");
        create_with(&s, "base", &[]).expect("creating base");
        s.apply("base", Box::new(Cursor::new(tar_of(&layer_tree()))))
            .expect("applying the layer tar");
        for (i, (option, path)) in attempts.into_iter().enumerate() {
            let r = create_with(&s, &format!("probe{i}"), &[(option, &path)])
                .map_err(|e| e.to_string());
            let _ = tx.send(r);
        }
        drop(s);
        let _ = done_tx.send(t);
    });
    let mut outcomes = Vec::new();
    for i in 0..n {
        match rx.recv_timeout(WATCHDOG) {
            Ok(r) => outcomes.push(r),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("driver call {i} did not return within {WATCHDOG:?}")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the worker thread failed"),
        }
    }
    let t = done_rx.recv_timeout(WATCHDOG).expect("closing the store");
    (t, outcomes)
}

fn home(t: &TempStore) -> std::path::PathBuf {
    t.home(NAME)
}

/// Runs `attempts` and checks that each failed with a WASI `access` error (not a trap, not
/// what the device or the kernel would have said).
fn assert_refused(attempts: Vec<Attempt>) -> TempStore {
    let (t, outcomes) = run(TempStore::new(), attempts.clone());
    for ((option, path), outcome) in attempts.iter().zip(&outcomes) {
        eprintln!("{option}={path}: {outcome:?}");
    }
    for ((option, path), outcome) in attempts.iter().zip(&outcomes) {
        let err = outcome
            .as_ref()
            .expect_err(&format!("{option}={path} must fail"));
        assert!(
            err.contains("PermissionDenied"),
            "{option}={path}: expected a refusal, got: {err}"
        );
        assert!(!err.contains("trap"), "{option}={path}: {err}");
    }
    t
}

#[test]
fn wasi_opens_of_device_nodes_are_refused() {
    if !root_or_skip(
        "wasi_opens_of_device_nodes_are_refused",
        "the layer tar holds device nodes (mknod)",
    ) {
        return;
    }
    let t = assert_refused(vec![
        ("wasi-read", "dir/base/dev/zero".into()),
        ("wasi-read", "dir/base/dev/loop0".into()),
        ("wasi-read", "dir/base/zero-link".into()),
        ("wasi-write", "dir/base/dev/null".into()),
        ("wasi-list", "dir/base/dev/zero".into()),
    ]);
    // The device nodes are still there (the refusal changed nothing), and nothing was read.
    for dev in ["dev/zero", "dev/null", "dev/loop0"] {
        assert!(
            home(&t)
                .join("dir/base")
                .join(dev)
                .symlink_metadata()
                .is_ok(),
            "{dev}"
        );
    }
    assert!(!home(&t).join("wasi-out").exists());
}

#[test]
fn wasi_opens_of_fifos_are_refused_without_blocking() {
    if !root_or_skip(
        "wasi_opens_of_fifos_are_refused_without_blocking",
        "the layer tar holds device nodes (mknod)",
    ) {
        return;
    }
    let t = assert_refused(vec![
        ("wasi-read", "dir/base/dev/fifo".into()),
        ("wasi-write", "dir/base/dev/fifo".into()),
    ]);
    // Nothing holds the FIFO open for reading: a non-blocking writer finds no reader.
    let fifo = home(&t).join("dir/base/dev/fifo");
    let writer = rustix::fs::open(
        &fifo,
        rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::NONBLOCK,
        rustix::fs::Mode::empty(),
    );
    assert_eq!(
        writer.err(),
        Some(rustix::io::Errno::NXIO),
        "the FIFO was opened by someone"
    );
}

#[test]
fn wasi_regular_files_and_directories_still_work() {
    if !root_or_skip(
        "wasi_regular_files_and_directories_still_work",
        "the layer tar holds device nodes (mknod)",
    ) {
        return;
    }
    let attempts: Vec<Attempt> = vec![
        ("wasi-read", "dir/base/a/file".into()),
        ("wasi-read", "dir/base/a/file-link".into()),
        ("wasi-list", "dir/base/a".into()),
        ("wasi-write", "dir/base/a/file".into()),
        ("wasi-write", "dir/base/a/new".into()),
        // Not a file: what the kernel says, as before (EISDIR, ENOENT).
        ("wasi-write", "dir/base/a/sub".into()),
        ("wasi-read", "dir/base/a/missing".into()),
        // Out of the home through an absolute symlink: refused as wasmtime-wasi always did.
        ("wasi-read", "dir/base/a/abs".into()),
    ];
    let (t, outcomes) = run(TempStore::new(), attempts);
    assert_eq!(outcomes[0], Ok(()), "reading a regular file");
    assert_eq!(
        outcomes[1],
        Ok(()),
        "reading through a symlink to a regular file"
    );
    assert_eq!(outcomes[2], Ok(()), "listing a directory");
    // The listing is the last call that wrote `wasi-out` (the reads' bytes are checked by
    // `wasi_read_returns_the_file_bytes`).
    assert_eq!(
        std::fs::read_to_string(home(&t).join("wasi-out")).unwrap(),
        "abs\nfile\nfile-link\nsub",
        "the listing as the driver saw it"
    );
    assert_eq!(outcomes[3], Ok(()), "writing a regular file in place");
    assert_eq!(outcomes[4], Ok(()), "creating a regular file");
    let file = home(&t).join("dir/base/a/file");
    let mut want = FILE_BODY.to_vec();
    want[..7].copy_from_slice(b"hostile");
    assert_eq!(std::fs::read(&file).unwrap(), want);
    assert_eq!(
        std::fs::read(home(&t).join("dir/base/a/new")).unwrap(),
        b"hostile"
    );
    let err = outcomes[5].as_ref().expect_err("writing a directory");
    assert!(err.contains("IsADirectory"), "{err}");
    let err = outcomes[6].as_ref().expect_err("reading a missing file");
    assert!(err.contains("NotFound"), "{err}");
    let err = outcomes[7].as_ref().expect_err("reading out of the home");
    assert!(err.contains("PermissionDenied"), "{err}");
    assert!(Path::new("/etc/passwd").exists());
}

#[test]
fn wasi_read_returns_the_file_bytes() {
    if !root_or_skip(
        "wasi_read_returns_the_file_bytes",
        "the layer tar holds device nodes (mknod)",
    ) {
        return;
    }
    let (t, outcomes) = run(
        TempStore::new(),
        vec![("wasi-read", "dir/base/a/file-link".into())],
    );
    assert_eq!(outcomes, vec![Ok(())]);
    assert_eq!(
        std::fs::read(home(&t).join("wasi-out")).unwrap(),
        &FILE_BODY[..16]
    );
}

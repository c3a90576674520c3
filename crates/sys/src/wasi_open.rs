//! Opening a path for a driver's WASI `open-at`: regular files and directories only, and
//! nothing else is ever opened on the way.
//!
//! Why: a driver's home holds layer data from image tars, which may contain device nodes and
//! FIFOs. wasmtime-wasi opens the path as asked, so a driver could open a character or block
//! device a layer put there (a block device is the host's raw disk, opened as root), and
//! opening a FIFO blocks the host thread in `open(2)` until a peer shows up, with no bound.
//! Checking the path first and then opening it would leave a gap in which the path could be
//! swapped. Instead:
//!
//! 1. The path is resolved beneath the directory with `openat2` (`RESOLVE_BENEATH`, as
//!    wasmtime-wasi does: a path or symlink leading out is an error) into an `O_PATH`
//!    descriptor. `O_PATH` runs no device's open and never blocks, whatever the file is.
//! 2. The file type is read from that descriptor (`fstat`); anything but a regular file or a
//!    directory is refused ([`WasiOpenError::Refused`]).
//! 3. The checked inode itself is opened for real through `/proc/self/fd/N` (the descriptor's
//!    magic link, which reaches that inode and no other), with the access the driver asked
//!    for, and checked again.
//!
//! A file that does not exist yet is created with `O_CREAT | O_EXCL`, which only ever makes
//! a new regular file and follows no final symlink; if something appears there in between,
//! the lookup starts over (at most [`MAX_CREATE_RACES`] times). One difference from
//! wasmtime-wasi follows: creating a file through a dangling final symlink fails with EEXIST
//! instead of creating the symlink's target.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::fs::{FileKind, MAX_PATH_LEN};

/// How often a lookup that raced a rename or mount (EAGAIN from `openat2`) is retried.
const OPENAT2_RETRIES: u32 = 64;
/// How often creating a file may find that something appeared at its path since the lookup
/// found nothing, before the open fails with EEXIST.
pub const MAX_CREATE_RACES: u32 = 8;
/// Permission bits of a file a driver creates (before the umask), as wasmtime-wasi uses.
const CREATE_MODE: u32 = 0o666;

/// What a WASI `open-at` asks for, in POSIX terms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WasiOpen {
    pub read: bool,
    pub write: bool,
    /// Create the file if it does not exist (`O_CREAT`).
    pub create: bool,
    /// With `create`: fail if it exists (`O_EXCL`).
    pub exclusive: bool,
    pub truncate: bool,
    /// Follow a symlink in the final component.
    pub follow: bool,
    /// Fail unless it is a directory.
    pub directory: bool,
}

/// What was opened.
#[derive(Debug)]
pub enum WasiOpened {
    File(File),
    Dir(File),
}

/// Why nothing was opened.
#[derive(Debug)]
pub enum WasiOpenError {
    /// What the kernel answered (errno kept, for WASI's own mapping to its error codes).
    Os(io::Error),
    /// The path names something other than a regular file or directory; it was not opened.
    Refused(FileKind),
}

impl From<Errno> for WasiOpenError {
    fn from(e: Errno) -> Self {
        WasiOpenError::Os(match e {
            // What wasmtime-wasi answers for a path leading out (its `escape_attempt`).
            Errno::XDEV => io::Error::new(
                io::ErrorKind::PermissionDenied,
                "a path led outside of the filesystem",
            ),
            e => e.into(),
        })
    }
}

/// Opens `path` beneath `dir` as `how` says, if it is a regular file or a directory.
pub fn open_regular_or_dir(
    dir: BorrowedFd<'_>,
    path: &str,
    how: &WasiOpen,
) -> Result<WasiOpened, WasiOpenError> {
    if path.len() > MAX_PATH_LEN {
        return Err(Errno::NAMETOOLONG.into());
    }
    let nofollow = if how.follow {
        OFlags::empty()
    } else {
        OFlags::NOFOLLOW
    };
    let access = match (how.read, how.write) {
        (_, false) => OFlags::RDONLY,
        (false, true) => OFlags::WRONLY,
        (true, true) => OFlags::RDWR,
    };
    let mut races = 0;
    loop {
        let found = match openat2_beneath(dir, path, OFlags::PATH | nofollow, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) if how.create => {
                // Nothing there: make a new regular file (O_EXCL follows no final symlink).
                let created = openat2_beneath(
                    dir,
                    path,
                    access | OFlags::CREATE | OFlags::EXCL | OFlags::NOCTTY,
                    Mode::from_raw_mode(CREATE_MODE),
                );
                match created {
                    Ok(fd) => {
                        let file = File::from(fd);
                        expect_kind(&file, FileType::RegularFile)?;
                        return Ok(WasiOpened::File(file));
                    }
                    Err(Errno::EXIST) if !how.exclusive && races < MAX_CREATE_RACES => {
                        races += 1;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        };
        if how.create && how.exclusive {
            return Err(Errno::EXIST.into());
        }
        let st = rustix::fs::fstat(&found)?;
        let ty = FileType::from_raw_mode(st.st_mode);
        match ty {
            FileType::RegularFile | FileType::Directory => {}
            // Only without `follow`: what `O_NOFOLLOW` answers for a final symlink.
            FileType::Symlink => return Err(Errno::LOOP.into()),
            other => return Err(WasiOpenError::Refused(FileKind::from_type(other))),
        }
        if how.directory && ty != FileType::Directory {
            return Err(Errno::NOTDIR.into());
        }
        let mut flags = access | OFlags::CLOEXEC | OFlags::NOCTTY;
        if how.truncate {
            flags |= OFlags::TRUNC;
        }
        // The magic link reaches the inode `found` holds, not whatever the path names now.
        let reopened = rustix::fs::open(
            super::fs::proc_path(found.as_fd(), OsStr::new("")),
            flags,
            Mode::empty(),
        )?;
        let file = File::from(reopened);
        let again = rustix::fs::fstat(&file)?;
        if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino) {
            return Err(WasiOpenError::Os(io::Error::other(
                "the reopened file is not the one that was checked",
            )));
        }
        return Ok(if ty == FileType::Directory {
            WasiOpened::Dir(file)
        } else {
            WasiOpened::File(file)
        });
    }
}

/// `openat2` beneath `dir` (retrying lookups that raced a rename); EXDEV, a path leading out,
/// becomes the error wasmtime-wasi gives for it.
fn openat2_beneath(
    dir: BorrowedFd<'_>,
    path: &str,
    flags: OFlags,
    mode: Mode,
) -> Result<OwnedFd, Errno> {
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(
            dir,
            path,
            flags | OFlags::CLOEXEC,
            mode,
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        ) {
            Err(Errno::AGAIN) if tries < OPENAT2_RETRIES => tries += 1,
            other => return other,
        }
    }
}

/// Checks that `file` is of type `want`.
fn expect_kind(file: &File, want: FileType) -> Result<(), WasiOpenError> {
    let st = rustix::fs::fstat(file)?;
    let ty = FileType::from_raw_mode(st.st_mode);
    if ty == want {
        Ok(())
    } else {
        Err(WasiOpenError::Refused(FileKind::from_type(ty)))
    }
}

impl From<WasiOpenError> for io::Error {
    fn from(e: WasiOpenError) -> io::Error {
        match e {
            WasiOpenError::Os(e) => e,
            WasiOpenError::Refused(kind) => io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("a {kind:?} is not opened: only regular files and directories are"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    /// A directory with `file` ("hello"), `sub/`, `link -> file`, `abs -> /etc/passwd`,
    /// `fifo`.
    fn tree() -> (tempfile::TempDir, File) {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("file"), b"hello").unwrap();
        std::fs::create_dir(t.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("file", t.path().join("link")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", t.path().join("abs")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            t.path().join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let dir = File::open(t.path()).unwrap();
        (t, dir)
    }

    fn read() -> WasiOpen {
        WasiOpen {
            read: true,
            follow: true,
            ..WasiOpen::default()
        }
    }

    fn errno(r: Result<WasiOpened, WasiOpenError>) -> Option<i32> {
        match r {
            Err(WasiOpenError::Os(e)) => e.raw_os_error(),
            Err(WasiOpenError::Refused(k)) => panic!("refused a {k:?}"),
            Ok(_) => panic!("opened"),
        }
    }

    #[test]
    fn regular_files_and_directories_open_as_asked() {
        let (t, d) = tree();
        let Ok(WasiOpened::File(mut f)) = open_regular_or_dir(d.as_fd(), "link", &read()) else {
            panic!("link to a file")
        };
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
        assert!(matches!(
            open_regular_or_dir(d.as_fd(), "sub", &read()),
            Ok(WasiOpened::Dir(_))
        ));
        let write = WasiOpen {
            write: true,
            create: true,
            truncate: true,
            ..read()
        };
        let Ok(WasiOpened::File(mut f)) = open_regular_or_dir(d.as_fd(), "file", &write) else {
            panic!("truncating a file")
        };
        f.write_all(b"x").unwrap();
        assert_eq!(std::fs::read(t.path().join("file")).unwrap(), b"x");
        let Ok(WasiOpened::File(mut f)) = open_regular_or_dir(d.as_fd(), "sub/new", &write) else {
            panic!("creating a file")
        };
        f.write_all(b"new").unwrap();
        assert_eq!(std::fs::read(t.path().join("sub/new")).unwrap(), b"new");
    }

    #[test]
    fn errors_are_what_the_kernel_says_for_the_same_open() {
        let (_t, d) = tree();
        let nofollow = WasiOpen {
            follow: false,
            ..read()
        };
        let exclusive = WasiOpen {
            write: true,
            create: true,
            exclusive: true,
            ..read()
        };
        let directory = WasiOpen {
            directory: true,
            ..read()
        };
        let write = WasiOpen {
            write: true,
            ..read()
        };
        let e = |p, how: &WasiOpen| errno(open_regular_or_dir(d.as_fd(), p, how));
        assert_eq!(e("link", &nofollow), Some(Errno::LOOP.raw_os_error()));
        assert_eq!(e("file", &exclusive), Some(Errno::EXIST.raw_os_error()));
        assert_eq!(e("link", &exclusive), Some(Errno::EXIST.raw_os_error()));
        assert_eq!(e("file", &directory), Some(Errno::NOTDIR.raw_os_error()));
        assert_eq!(e("sub", &write), Some(Errno::ISDIR.raw_os_error()));
        assert_eq!(e("missing", &read()), Some(Errno::NOENT.raw_os_error()));
        assert_eq!(
            e("missing/x", &exclusive),
            Some(Errno::NOENT.raw_os_error())
        );
        let long = "a".repeat(MAX_PATH_LEN + 1);
        assert_eq!(e(&long, &read()), Some(Errno::NAMETOOLONG.raw_os_error()));
        // Leaving the directory: wasmtime-wasi's escape error (PermissionDenied, no errno).
        for out in ["abs", "../x", "/etc/passwd"] {
            match open_regular_or_dir(d.as_fd(), out, &read()) {
                Err(WasiOpenError::Os(e)) => {
                    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{out}");
                    assert_eq!(e.raw_os_error(), None, "{out}");
                }
                other => panic!("{out}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_fifo_is_refused_without_being_opened() {
        let (_t, d) = tree();
        for how in [
            read(),
            WasiOpen {
                write: true,
                create: true,
                ..read()
            },
        ] {
            assert!(matches!(
                open_regular_or_dir(d.as_fd(), "fifo", &how),
                Err(WasiOpenError::Refused(FileKind::Fifo))
            ));
        }
    }
}

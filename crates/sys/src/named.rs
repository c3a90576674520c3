//! Files a user or an image names: opened without blocking and without side effects, and
//! checked on the descriptor before a byte is read.
//!
//! A path on the command line (`--config`, an image, a layer tar, a driver `.wasm`) or a file
//! inside an image layout can be anything the filesystem holds. Opened and read naively:
//! - a FIFO blocks `open()` until a writer appears, and then `read()` until it writes: forever,
//!   while the command holds the store's lock;
//! - a character device such as `/dev/zero` never ends, and its metadata size is 0, so a cap
//!   that trusts the size from `stat` lets the read grow without bound;
//! - opening a device can act by itself (a tape rewinds, a watchdog arms).
//!
//! So a named file is first opened `O_PATH` — which opens nothing, cannot block and has no
//! effect on the file — and checked with `fstat` on that descriptor: only the kind the caller
//! expects (a regular file, or a directory) goes on. A regular file is then reopened for
//! reading through `/proc/self/fd/N`, which reaches that same inode whatever the name points
//! at by then, `O_NONBLOCK | O_NOCTTY` (checked again: same device and inode), and
//! `O_NONBLOCK` is cleared again (it means nothing for a regular file, but a FUSE filesystem
//! sees it). Readers then bound every read by the bytes actually read ([`read_capped`]), never
//! by a size from `stat`.
//!
//! [`open_named`] follows symlinks in the path: the user named it, and a config or an image
//! reached through a symlink of their own is theirs. [`open_in`] resolves beneath a [`Dir`]
//! with the directory's confinement and never follows a final symlink: an image layout's
//! files are opened this way, with [`Confinement::NoSymlinks`], so that no name in a
//! stranger's image can reach outside it.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags};

use super::error::{ErrorKind, SysError, SysResult};
use super::fs::{Confinement, Dir, FileKind, Stat, check_relative, check_unchanged, proc_path};

/// What a named file must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    File,
    Directory,
    FileOrDirectory,
}

impl Want {
    fn accepts(self, kind: FileKind) -> bool {
        matches!(
            (self, kind),
            (Want::File | Want::FileOrDirectory, FileKind::Regular)
                | (Want::Directory | Want::FileOrDirectory, FileKind::Directory)
        )
    }

    fn describe(self) -> &'static str {
        match self {
            Want::File => "a regular file",
            Want::Directory => "a directory",
            Want::FileOrDirectory => "a regular file or a directory",
        }
    }
}

/// How a file kind is named in messages.
pub fn kind_name(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Regular => "a regular file",
        FileKind::Directory => "a directory",
        FileKind::Symlink => "a symlink",
        FileKind::Fifo => "a FIFO (named pipe)",
        FileKind::CharDevice => "a character device",
        FileKind::BlockDevice => "a block device",
        FileKind::Socket => "a socket",
    }
}

/// A named file, opened and checked.
#[derive(Debug)]
pub enum Named {
    /// A regular file open for reading (blocking reads), and what `fstat` said of it.
    File(File, Stat),
    /// A directory, as a [`Dir`] with the confinement the caller asked for.
    Directory(Dir),
}

/// Opens `path` (named by a user; symlinks in it are followed) as `want` says: a directory
/// becomes a [`Dir`] confined by `confinement`. Anything else (a FIFO, a device, a socket)
/// is refused before it is opened for reading, naming what it is.
pub fn open_named(path: &Path, want: Want, confinement: Confinement) -> SysResult<Named> {
    let pinned = rustix::fs::open(path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| SysError::from_errno("open", path, e))?;
    finish(pinned, path, want, confinement)
}

/// Opens `path` beneath `dir` (resolved with the directory's confinement, a final symlink
/// not followed) as `want` says; as [`open_named`] otherwise.
pub fn open_in(dir: &Dir, path: &str, want: Want) -> SysResult<Named> {
    let rel = check_relative(path)?;
    let pinned = dir.open_raw(&rel, OFlags::PATH | OFlags::NOFOLLOW)?;
    finish(pinned, &dir.path().join(&rel), want, dir.confinement())
}

fn finish(pinned: OwnedFd, path: &Path, want: Want, confinement: Confinement) -> SysResult<Named> {
    let stat = rustix::fs::fstat(&pinned)
        .map(|st| Stat::from_raw(&st))
        .map_err(|e| SysError::from_errno("fstat", path, e))?;
    if !want.accepts(stat.kind) {
        let mut err = SysError::without_errno(
            ErrorKind::InvalidArgument,
            "open",
            path,
            format!(
                "{}, where {} is expected (refused unread: it could block or never end)",
                kind_name(stat.kind),
                want.describe()
            ),
        );
        if stat.kind == FileKind::Symlink {
            err.kind = ErrorKind::Denied;
            err.detail = Some("a symlink, which is not followed here".into());
        }
        return Err(err);
    }
    if stat.kind == FileKind::Directory {
        return Ok(Named::Directory(Dir::from_opened(
            pinned,
            path.to_path_buf(),
            confinement,
        )));
    }
    let file = rustix::fs::open(
        proc_path(pinned.as_fd(), OsStr::new("")),
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map(File::from)
    .map_err(|e| SysError::from_errno("open", path, e))?;
    check_unchanged(file.as_fd(), path.as_os_str(), &stat)?;
    let flags =
        rustix::fs::fcntl_getfl(&file).map_err(|e| SysError::from_errno("fcntl", path, e))?;
    rustix::fs::fcntl_setfl(&file, flags - OFlags::NONBLOCK)
        .map_err(|e| SysError::from_errno("fcntl", path, e))?;
    Ok(Named::File(file, stat))
}

/// Opens `path` (named by a user) as a regular file for reading; see [`open_named`].
pub fn open_named_file(path: &Path) -> SysResult<(File, Stat)> {
    match open_named(path, Want::File, Confinement::Beneath)? {
        Named::File(f, st) => Ok((f, st)),
        Named::Directory(_) => unreachable!("Want::File accepts only regular files"),
    }
}

/// Reads `reader` to its end, but never more than `cap` bytes: `None` when there is more.
/// The bound is the bytes actually read, whatever a `stat` said.
pub fn read_capped(reader: impl Read, cap: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    reader.take(cap.saturating_add(1)).read_to_end(&mut out)?;
    Ok((out.len() as u64 <= cap).then_some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fifo(dir: &Path, name: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &p,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        p
    }

    #[test]
    fn fifos_and_devices_are_refused_without_blocking() {
        let t = tempfile::tempdir().unwrap();
        let f = fifo(t.path(), "pipe");
        let e = open_named(&f, Want::File, Confinement::Beneath).unwrap_err();
        assert!(
            e.to_string()
                .contains("a FIFO (named pipe), where a regular file is expected"),
            "{e}"
        );
        let e = open_named(
            Path::new("/dev/zero"),
            Want::FileOrDirectory,
            Confinement::Beneath,
        )
        .unwrap_err();
        assert!(e.to_string().contains("a character device"), "{e}");
        std::fs::write(t.path().join("f"), b"abc").unwrap();
        let (file, st) = open_named_file(&t.path().join("f")).unwrap();
        assert_eq!(st.size, 3);
        assert_eq!(read_capped(&file, 3).unwrap().unwrap(), b"abc");
        assert!(read_capped(&b"abcd"[..], 3).unwrap().is_none());
        let flags = rustix::fs::fcntl_getfl(&file).unwrap();
        assert!(!flags.contains(OFlags::NONBLOCK));
        assert!(matches!(
            open_named(t.path(), Want::FileOrDirectory, Confinement::Beneath).unwrap(),
            Named::Directory(_)
        ));
    }

    #[test]
    fn beneath_a_dir_symlinks_are_refused_anywhere_on_the_way() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir_all(outside.join("sub")).unwrap();
        std::fs::write(outside.join("sub/secret"), b"s").unwrap();
        let root = t.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        std::os::unix::fs::symlink("sub", root.join("inner")).unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/ok"), b"ok").unwrap();
        std::os::unix::fs::symlink("ok", root.join("sub/alias")).unwrap();
        fifo(&root, "pipe");
        let Named::Directory(dir) =
            open_named(&root, Want::Directory, Confinement::NoSymlinks).unwrap()
        else {
            panic!("a directory")
        };
        assert!(matches!(
            open_in(&dir, "sub/ok", Want::File).unwrap(),
            Named::File(..)
        ));
        for path in ["link/sub/secret", "inner/ok", "sub/alias"] {
            let e = open_in(&dir, path, Want::File).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Denied, "{path}: {e}");
            assert!(!e.to_string().contains("secret") || path.contains("secret"));
        }
        let e = open_in(&dir, "pipe", Want::File).unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
        assert!(open_in(&dir, "../outside/sub/secret", Want::File).is_err());
    }
}

//! A driver's WASI file access opens regular files and directories only.
//!
//! Why: the driver's home is preopened read-write at `/`, and it holds layer data from image
//! tars, device nodes and FIFOs included. wasmtime-wasi's `open-at` opens whatever the path
//! names, so through plain `std::fs::File::open` a driver could open a block device a layer
//! put there (the host's disk, as root) or a character device, and opening a FIFO would
//! block the host thread in `open(2)` with no bound (not even the call's time limits, which
//! only run in guest code and WASI waits). [`link_checked_open`] replaces `wasi:filesystem`'s
//! `[method]descriptor.open-at` with one that resolves the path the way wasmtime-wasi does,
//! checks the file's type on an `O_PATH` descriptor before anything is opened, and refuses
//! all but regular files and directories with the WASI error `access` (see
//! [`crate::sys::wasi_open`]). wasmtime-wasi's own checks and permissions are kept: the
//! flags it refuses, the preopen's read-only or read-write permission, the open mode it
//! records on the new descriptor.
//!
//! The other WASI filesystem functions need no such check: they act on descriptors this
//! `open-at` made (reads and writes), or on paths without opening them (`stat-at`,
//! `link-at`, `symlink-at`, `rename-at`, `unlink-file-at`, `remove-directory-at`,
//! `set-times-at`, `readlink-at`).

use std::os::fd::AsFd;

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime_wasi::filesystem::{Descriptor, Dir, File};
use wasmtime_wasi::p2::bindings::filesystem::types::{
    DescriptorFlags, ErrorCode, OpenFlags, PathFlags,
};
use wasmtime_wasi::{FsPerms, OpenMode};

use super::host::HostState;
use crate::sys::wasi_open::{self, WasiOpen, WasiOpenError, WasiOpened};

/// The `wasi:filesystem/types` interface name the WASI linker defines (wasmtime-wasi 48
/// serves `wasi:filesystem@0.2.12`; components importing any 0.2.x are matched to it).
const WASI_FILESYSTEM_TYPES: &str = "wasi:filesystem/types@0.2.12";

/// Whether WASI file I/O runs on the calling thread (wasmtime-wasi's
/// `allow_blocking_current_thread`). Set on every driver's `WasiCtx` and on every descriptor
/// [`link_checked_open`] makes, so both kinds of descriptor behave alike.
pub(super) const WASI_BLOCKING_CURRENT_THREAD: bool = false;

/// Replaces `[method]descriptor.open-at` (already linked by wasmtime-wasi) with one that
/// opens regular files and directories only.
pub(super) fn link_checked_open(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut types = linker.instance(WASI_FILESYSTEM_TYPES)?;
    types.func_wrap(
        "[method]descriptor.open-at",
        |mut store: StoreContextMut<'_, HostState>,
         (fd, path_flags, path, oflags, flags): (
            Resource<Descriptor>,
            PathFlags,
            String,
            OpenFlags,
            DescriptorFlags,
        )| {
            let table = store.data_mut().table_mut();
            Ok((open_at(table, fd, path_flags, path, oflags, flags)?,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// `open-at` as wasmtime-wasi 48 does it (`Dir::open_at`), but opening through
/// [`wasi_open::open_regular_or_dir`]. The outer error traps (a bad resource, a full table,
/// as in wasmtime-wasi); the inner one is the driver's WASI error.
fn open_at(
    table: &mut ResourceTable,
    fd: Resource<Descriptor>,
    path_flags: PathFlags,
    path: String,
    oflags: OpenFlags,
    flags: DescriptorFlags,
) -> wasmtime::Result<Result<Resource<Descriptor>, ErrorCode>> {
    let dir = match table.get(&fd)? {
        Descriptor::Dir(d) => d.clone(),
        Descriptor::File(_) => return Ok(Err(ErrorCode::NotDirectory)),
    };
    let (how, open_mode) = match open_request(&dir, path_flags, oflags, flags) {
        Ok(r) => r,
        Err(code) => return Ok(Err(code)),
    };
    let opened = match wasi_open::open_regular_or_dir(dir.dir.as_fd(), &path, &how) {
        Ok(WasiOpened::Dir(d)) => Descriptor::Dir(Dir::new(
            d,
            dir.perms,
            open_mode,
            WASI_BLOCKING_CURRENT_THREAD,
        )),
        Ok(WasiOpened::File(f)) => Descriptor::File(File::new(
            f,
            dir.perms,
            open_mode,
            WASI_BLOCKING_CURRENT_THREAD,
        )),
        Err(WasiOpenError::Refused(_)) => return Ok(Err(ErrorCode::Access)),
        // wasmtime-wasi's mapping of an OS error to a WASI error code.
        Err(WasiOpenError::Os(e)) => return Ok(Err(ErrorCode::from(e))),
    };
    Ok(Ok(table.push(opened)?))
}

/// The POSIX open wasmtime-wasi makes of a WASI `open-at`, and the mode it records, or the
/// error it answers before asking the OS.
fn open_request(
    dir: &Dir,
    path_flags: PathFlags,
    oflags: OpenFlags,
    flags: DescriptorFlags,
) -> Result<(WasiOpen, OpenMode), ErrorCode> {
    let mut how = WasiOpen {
        follow: path_flags.contains(PathFlags::SYMLINK_FOLLOW),
        directory: oflags.contains(OpenFlags::DIRECTORY),
        ..WasiOpen::default()
    };
    let mut open_mode = OpenMode::empty();
    if oflags.contains(OpenFlags::CREATE) {
        how.create = true;
        how.exclusive = oflags.contains(OpenFlags::EXCLUSIVE);
        how.write = true;
        open_mode |= OpenMode::WRITE;
    }
    if oflags.contains(OpenFlags::TRUNCATE) {
        how.truncate = true;
        how.write = true;
        open_mode |= OpenMode::WRITE;
    }
    if flags.contains(DescriptorFlags::READ) {
        how.read = true;
        open_mode |= OpenMode::READ;
    }
    if flags.contains(DescriptorFlags::WRITE) {
        how.write = true;
        open_mode |= OpenMode::WRITE;
    } else {
        // Not opened for writing: open for reading, as wasmtime-wasi does (the OS lets it
        // open; the recorded mode refuses what was not asked for).
        how.read = true;
        open_mode |= OpenMode::READ;
    }
    if flags.intersects(
        DescriptorFlags::FILE_INTEGRITY_SYNC
            | DescriptorFlags::DATA_INTEGRITY_SYNC
            | DescriptorFlags::REQUESTED_WRITE_SYNC,
    ) {
        return Err(ErrorCode::Unsupported);
    }
    if how.directory
        && oflags.intersects(OpenFlags::CREATE | OpenFlags::EXCLUSIVE | OpenFlags::TRUNCATE)
    {
        return Err(ErrorCode::Invalid);
    }
    if dir.perms == FsPerms::ReadOnly && (how.create || open_mode.contains(OpenMode::WRITE)) {
        return Err(ErrorCode::NotPermitted);
    }
    Ok((how, open_mode))
}

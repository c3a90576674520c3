//! Layer tars the demo and the benches generate, so nothing is downloaded.

use std::io::Write;

use anyhow::Result;
use tar::{Builder, EntryType, Header};

fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(size);
    h
}

/// Appends a regular file.
pub fn file(b: &mut Builder<impl Write>, path: &str, mode: u32, body: &[u8]) -> Result<()> {
    let mut h = header(EntryType::Regular, mode, body.len() as u64);
    b.append_data(&mut h, path, body)?;
    Ok(())
}

/// Appends a directory.
pub fn dir(b: &mut Builder<impl Write>, path: &str, mode: u32) -> Result<()> {
    let mut h = header(EntryType::Directory, mode, 0);
    b.append_data(&mut h, path, std::io::empty())?;
    Ok(())
}

/// Appends a symlink.
pub fn symlink(b: &mut Builder<impl Write>, path: &str, target: &str) -> Result<()> {
    let mut h = header(EntryType::Symlink, 0o777, 0);
    b.append_link(&mut h, path, target)?;
    Ok(())
}

/// The demo's base layer: a tiny root filesystem.
pub fn base_layer() -> Result<Vec<u8>> {
    let mut b = Builder::new(Vec::new());
    dir(&mut b, "etc", 0o755)?;
    file(&mut b, "etc/hostname", 0o644, b"strata-demo\n")?;
    file(&mut b, "etc/motd", 0o644, b"layers all the way down\n")?;
    dir(&mut b, "usr", 0o755)?;
    dir(&mut b, "usr/bin", 0o755)?;
    file(
        &mut b,
        "usr/bin/hello",
        0o755,
        b"#!/bin/sh\necho hello from a layer\n",
    )?;
    symlink(&mut b, "bin", "usr/bin")?;
    dir(&mut b, "var", 0o755)?;
    dir(&mut b, "var/cache", 0o755)?;
    file(&mut b, "var/cache/old-1", 0o644, b"stale\n")?;
    file(&mut b, "var/cache/old-2", 0o644, b"stale\n")?;
    Ok(b.into_inner()?)
}

/// The demo's child layer: a changed file, a new file, a whiteout and an opaque directory.
pub fn child_layer() -> Result<Vec<u8>> {
    let mut b = Builder::new(Vec::new());
    dir(&mut b, "etc", 0o755)?;
    file(&mut b, "etc/hostname", 0o644, b"strata-child\n")?;
    file(&mut b, "etc/.wh.motd", 0o644, b"")?;
    dir(&mut b, "var/cache", 0o755)?;
    file(&mut b, "var/cache/.wh..wh..opq", 0o644, b"")?;
    file(&mut b, "var/cache/fresh", 0o644, b"new\n")?;
    file(&mut b, "usr/bin/world", 0o755, b"#!/bin/sh\necho world\n")?;
    Ok(b.into_inner()?)
}

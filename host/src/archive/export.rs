//! Writing a layer's changes as a layer tar with `.wh.` whiteouts.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use tar::{Builder, EntryType, Header};

use super::compare::{ChangeKind, Changed, compare};
use super::{ArchiveError, OPAQUE_MARKER, WHITEOUT_PREFIX, is_overlay_xattr};
use crate::sys::fs::{Dir, FileKind, open_regular_checked, readlink_at, stat_at, xattrs_at};

struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the changes from `parent` (an empty tree when `None`) to `layer` as a tar to
/// `out`; returns the bytes written.
pub fn write_diff_tar(
    layer: &Dir,
    parent: Option<&Dir>,
    out: &mut dyn Write,
) -> Result<u64, ArchiveError> {
    let changes = compare(layer, parent)?;
    write_changes_tar(layer, &changes, &BTreeSet::new(), out)
}

fn whiteout_header(mode: u32, uid: u32, gid: u32) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::Regular);
    h.set_mode(mode);
    h.set_uid(uid as u64);
    h.set_gid(gid as u64);
    h.set_size(0);
    h.set_mtime(0);
    h
}

/// Writes `changes` (sorted by path; Add and Modify entries read from `layer`, Delete as
/// `.wh.NAME`) as a tar to `out`, with an `.wh..wh..opq` entry after each directory in
/// `opaque_dirs`; returns the bytes written.
pub(super) fn write_changes_tar(
    layer: &Dir,
    changes: &[Changed],
    opaque_dirs: &BTreeSet<String>,
    out: &mut dyn Write,
) -> Result<u64, ArchiveError> {
    let mut builder = Builder::new(Counting {
        inner: out,
        bytes: 0,
    });
    builder.mode(tar::HeaderMode::Complete);
    let mut first_link: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let w = ArchiveError::Write;
    for c in changes {
        let rel = PathBuf::from(c.path.trim_start_matches('/'));
        if c.kind == ChangeKind::Delete {
            let name = rel.file_name().unwrap_or_default();
            let mut wh = std::ffi::OsString::from(WHITEOUT_PREFIX);
            wh.push(name);
            let path = rel.parent().unwrap_or(Path::new("")).join(wh);
            let mut h = whiteout_header(0o644, 0, 0);
            builder
                .append_data(&mut h, &path, std::io::empty())
                .map_err(w)?;
            continue;
        }
        let (pfd, name) = layer.parent(&rel).map_err(ArchiveError::Sys)?;
        let pfd = pfd.as_fd();
        let st = stat_at(pfd, &name).map_err(|e| ArchiveError::Sys(e.at(&rel)))?;
        let mut xattrs = xattrs_at(pfd, &name).map_err(|e| ArchiveError::Sys(e.at(&rel)))?;
        xattrs.retain(|(k, _)| !is_overlay_xattr(k));
        if !xattrs.is_empty() {
            let records: Vec<(String, &[u8])> = xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice()))
                .collect();
            builder
                .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
                .map_err(w)?;
        }
        let mut h = Header::new_gnu();
        h.set_mode(st.mode);
        h.set_uid(st.uid as u64);
        h.set_gid(st.gid as u64);
        h.set_mtime(st.mtime_sec.max(0) as u64);
        h.set_size(0);
        if st.kind != FileKind::Directory && st.nlink > 1 {
            if let Some(first) = first_link.get(&(st.dev, st.ino)) {
                h.set_entry_type(EntryType::Link);
                builder.append_link(&mut h, &rel, first).map_err(w)?;
                continue;
            }
            first_link.insert((st.dev, st.ino), rel.clone());
        }
        match st.kind {
            FileKind::Directory => {
                h.set_entry_type(EntryType::Directory);
                builder
                    .append_data(&mut h, &rel, std::io::empty())
                    .map_err(w)?;
                if opaque_dirs.contains(&c.path) {
                    let mut m = whiteout_header(st.mode & 0o777, st.uid, st.gid);
                    builder
                        .append_data(&mut m, rel.join(OPAQUE_MARKER), std::io::empty())
                        .map_err(w)?;
                }
            }
            FileKind::Regular => {
                h.set_entry_type(EntryType::Regular);
                h.set_size(st.size);
                let f = open_regular_checked(pfd, &name, &st)
                    .map_err(|e| ArchiveError::Sys(e.at(&rel)))?;
                builder
                    .append_data(&mut h, &rel, std::io::Read::take(f, st.size))
                    .map_err(w)?;
            }
            FileKind::Symlink => {
                h.set_entry_type(EntryType::Symlink);
                let target = readlink_at(pfd, &name).map_err(|e| ArchiveError::Sys(e.at(&rel)))?;
                builder
                    .append_link(
                        &mut h,
                        &rel,
                        Path::new(std::ffi::OsStr::from_bytes(target.as_bytes())),
                    )
                    .map_err(w)?;
            }
            FileKind::Fifo | FileKind::CharDevice | FileKind::BlockDevice => {
                h.set_entry_type(match st.kind {
                    FileKind::Fifo => EntryType::Fifo,
                    FileKind::CharDevice => EntryType::Char,
                    _ => EntryType::Block,
                });
                h.set_device_major(rustix::fs::major(st.rdev)).map_err(w)?;
                h.set_device_minor(rustix::fs::minor(st.rdev)).map_err(w)?;
                builder
                    .append_data(&mut h, &rel, std::io::empty())
                    .map_err(w)?;
            }
            FileKind::Socket => {
                // Sockets cannot be stored in a tar; runtimes recreate them.
            }
        }
    }
    builder.finish().map_err(w)?;
    let counting = builder.into_inner().map_err(w)?;
    Ok(counting.bytes)
}

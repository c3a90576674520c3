//! Writing a layer's changes as a layer tar with `.wh.` whiteouts.

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use tar::{Builder, EntryType, GnuExtSparseHeader, Header};

use super::compare::{ChangeKind, Changed, compare};
use super::reader::MAX_SPARSE_ENTRIES;
use super::{ArchiveError, OPAQUE_MARKER, WHITEOUT_PREFIX, is_overlay_xattr};
use crate::sys::fs::{Dir, FileKind, open_regular_checked, readlink_at, stat_at, xattrs_at};
use crate::sys::sparse::{data_regions, has_holes, read_at};

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

/// Makes `h` an old GNU sparse entry (`S`) of a `real_size`-byte file whose data is
/// `regions` (each but the last a multiple of 512 bytes long, as readers require); returns
/// the extension blocks that go between the header and the data (21 regions each, the four
/// first ones being in the header). A file ending in a hole gets a last region
/// `(real_size, 0)`, as GNU tar writes it, so every reader knows the length.
fn sparse_header(h: &mut Header, regions: &[(u64, u64)], real_size: u64) -> Vec<u8> {
    let mut list = regions.to_vec();
    if list.last().is_none_or(|&(o, l)| o + l < real_size) {
        list.push((real_size, 0));
    }
    h.set_entry_type(EntryType::GNUSparse);
    h.set_size(regions.iter().map(|r| r.1).sum());
    let gnu = h.as_gnu_mut().expect("a GNU header");
    gnu.set_real_size(real_size);
    let in_header = list.len().min(gnu.sparse.len());
    for (slot, &(offset, length)) in gnu.sparse.iter_mut().zip(&list) {
        slot.set_offset(offset);
        slot.set_length(length);
    }
    let rest = &list[in_header..];
    gnu.set_is_extended(!rest.is_empty());
    let chunks: Vec<&[(u64, u64)]> = rest.chunks(21).collect();
    let mut blocks = Vec::with_capacity(chunks.len() * 512);
    for (i, chunk) in chunks.iter().enumerate() {
        let mut ext = GnuExtSparseHeader::new();
        for (slot, &(offset, length)) in ext.sparse_mut().iter_mut().zip(chunk.iter()) {
            slot.set_offset(offset);
            slot.set_length(length);
        }
        ext.set_is_extended(i + 1 < chunks.len());
        blocks.extend_from_slice(ext.as_bytes());
    }
    blocks
}

/// The data of a sparse file's regions, in order. A file that got shorter since it was
/// mapped reads as zeros where its data was, so the entry stays as long as its header says.
struct Regions {
    file: std::fs::File,
    regions: Vec<(u64, u64)>,
    index: usize,
    done: u64,
}

impl std::io::Read for Regions {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(&(offset, length)) = self.regions.get(self.index) else {
            return Ok(0);
        };
        let want = buf
            .len()
            .min(usize::try_from(length - self.done).unwrap_or(usize::MAX));
        let n = read_at(&self.file, &mut buf[..want], offset + self.done).map_err(|e| {
            match e.errno {
                0 => std::io::Error::other(e.to_string()),
                errno => std::io::Error::from_raw_os_error(errno),
            }
        })?;
        if n < want {
            buf[n..want].fill(0);
        }
        self.done += want as u64;
        if self.done == length {
            self.index += 1;
            self.done = 0;
        }
        Ok(want)
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
                let f = open_regular_checked(pfd, &name, &st)
                    .map_err(|e| ArchiveError::Sys(e.at(&rel)))?;
                let regions = if has_holes(&f, st.size) {
                    data_regions(&f, st.size, 512, MAX_SPARSE_ENTRIES)
                        .map_err(|e| ArchiveError::Sys(e.at(&rel)))?
                } else {
                    None
                };
                match regions {
                    Some(regions) if regions != [(0, st.size)] => {
                        let blocks = sparse_header(&mut h, &regions, st.size);
                        let data = Regions {
                            file: f,
                            regions,
                            index: 0,
                            done: 0,
                        };
                        builder
                            .append_data(&mut h, &rel, std::io::Cursor::new(blocks).chain(data))
                            .map_err(w)?;
                    }
                    _ => {
                        h.set_entry_type(EntryType::Regular);
                        h.set_size(st.size);
                        builder
                            .append_data(&mut h, &rel, std::io::Read::take(f, st.size))
                            .map_err(w)?;
                    }
                }
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

//! Sparse files: finding their data with `SEEK_DATA`/`SEEK_HOLE`, writing at offsets, and
//! copying them with their holes kept.
//!
//! A hole costs no disk. A file written byte by byte — a copy that reads a hole as zeros and
//! writes them back, or a tar entry unpacked as one stream — turns every hole into allocated
//! zeros: `truncate -s 1G` in a container would cost a gigabyte in each copy of its layer.
//! So copies and unpacking write only the data and set the length with `ftruncate`.

use std::fs::File;

use rustix::fs::SeekFrom;

use super::error::{SysError, SysResult};

/// Writes all of `buf` to `file` at `offset`.
pub fn write_all_at(file: &File, mut buf: &[u8], mut offset: u64) -> SysResult<()> {
    while !buf.is_empty() {
        match rustix::io::pwrite(file, buf, offset) {
            Ok(0) => return Err(SysError::from_errno("pwrite", "", rustix::io::Errno::IO)),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(SysError::from_errno("pwrite", "", e)),
        }
    }
    Ok(())
}

/// Reads as much of `buf` as `file` has at `offset` (short only at end of file).
pub fn read_at(file: &File, buf: &mut [u8], offset: u64) -> SysResult<usize> {
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::pread(file, &mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(SysError::from_errno("pread", "", e)),
        }
    }
    Ok(got)
}

/// Sets `file`'s length: what is added is a hole.
pub fn set_len(file: &File, len: u64) -> SysResult<()> {
    rustix::fs::ftruncate(file, len).map_err(|e| SysError::from_errno("ftruncate", "", e))
}

/// The data regions of `file` (`size` bytes) as `(offset, length)`, ascending, each widened
/// to `align` bytes (start rounded down, end up, capped at `size`; overlapping ones merged),
/// at most `max_regions` of them (the last one then reaches to the end of the data). `None`
/// when the filesystem cannot say where the holes are: treat the file as all data. The file
/// offset is put back at the start.
pub fn data_regions(
    file: &File,
    size: u64,
    align: u64,
    max_regions: usize,
) -> SysResult<Option<Vec<(u64, u64)>>> {
    let mut regions: Vec<(u64, u64)> = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match rustix::fs::seek(file, SeekFrom::Data(pos)) {
            Ok(s) => s,
            // No data after `pos`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) if pos == 0 => {
                return Ok(None);
            }
            Err(e) => return Err(SysError::from_errno("lseek(SEEK_DATA)", "", e)),
        };
        if start >= size {
            break;
        }
        let end = match rustix::fs::seek(file, SeekFrom::Hole(start)) {
            Ok(e) => e.min(size),
            Err(rustix::io::Errno::NXIO) => size,
            Err(e) => return Err(SysError::from_errno("lseek(SEEK_HOLE)", "", e)),
        };
        let s = start / align * align;
        let e = end.div_ceil(align).saturating_mul(align).min(size);
        let full = regions.len() >= max_regions;
        match regions.last_mut() {
            Some(last) if s <= last.0 + last.1 || full => {
                last.1 = e.max(last.0 + last.1) - last.0;
            }
            _ => regions.push((s, e - s)),
        }
        pos = end.max(start + 1);
    }
    rustix::fs::seek(file, SeekFrom::Start(0)).map_err(|e| SysError::from_errno("lseek", "", e))?;
    Ok(Some(regions))
}

/// Whether `file` (`size` bytes) has a hole: one `SEEK_HOLE`, which finds the implicit hole
/// at the end when there is none before. The file offset is put back at the start.
pub fn has_holes(file: &File, size: u64) -> bool {
    let holes = size > 0
        && match rustix::fs::seek(file, SeekFrom::Hole(0)) {
            Ok(h) => h < size,
            Err(_) => false,
        };
    // A failure here shows in the next read, which reads from the start or fails.
    let _ = rustix::fs::seek(file, SeekFrom::Start(0));
    holes
}

/// Bytes moved per step of a copy without `copy_file_range`.
const COPY_STEP: usize = 256 * 1024;

/// Copies `len` bytes at `offset` of `src` to the same offset of `dst`.
fn copy_range(src: &File, dst: &File, offset: u64, len: u64) -> SysResult<()> {
    let mut done = 0u64;
    let mut fallback: Option<Vec<u8>> = None;
    while done < len {
        let chunk = (len - done).min(1 << 30) as usize;
        if fallback.is_none() {
            let mut off_in = offset + done;
            let mut off_out = offset + done;
            match rustix::fs::copy_file_range(
                src,
                Some(&mut off_in),
                dst,
                Some(&mut off_out),
                chunk,
            ) {
                Ok(0) => return Ok(()), // the source got shorter: the length is set after
                Ok(n) => {
                    done += n as u64;
                    continue;
                }
                Err(
                    rustix::io::Errno::XDEV
                    | rustix::io::Errno::NOSYS
                    | rustix::io::Errno::INVAL
                    | rustix::io::Errno::OPNOTSUPP,
                ) => fallback = Some(vec![0u8; COPY_STEP]),
                Err(e) => return Err(SysError::from_errno("copy_file_range", "", e)),
            }
        }
        let buf = fallback.as_mut().expect("set above");
        let want = buf.len().min((len - done) as usize);
        let n = read_at(src, &mut buf[..want], offset + done)?;
        if n == 0 {
            return Ok(());
        }
        write_all_at(dst, &buf[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Copies all of `src` (`size` bytes, as `lstat` said) into the empty `dst`, data only:
/// holes stay holes. Returns the bytes of data copied.
pub fn copy_keeping_holes(src: &File, dst: &File, size: u64) -> SysResult<u64> {
    let regions = if has_holes(src, size) {
        data_regions(src, size, 1, usize::MAX)?
    } else {
        None
    };
    let regions = regions.unwrap_or_else(|| vec![(0, size)]);
    let mut copied = 0;
    for (offset, len) in regions {
        copy_range(src, dst, offset, len)?;
        copied += len;
    }
    set_len(dst, size)?;
    Ok(copied)
}

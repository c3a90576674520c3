//! Reading a layer tar: headers, the metadata entries that describe the next entry, and sparse
//! maps, with every size checked against its limit *before* a byte of it is buffered.
//!
//! The `tar` crate's reader buffers a GNU long name (`L`), long link (`K`) or PAX record
//! entry (`x`) whole before anyone can look at its size, and builds a sparse entry's map with
//! no limit: a few KiB of zstd expand to a 256 MiB name or a map of millions of regions, all in
//! memory. This reader takes the crate's header parsing (`tar::Header`, `PaxExtensions`) and
//! does the rest itself: a metadata entry larger than its limit is refused from its header's
//! size field, what is read is read through `Read::take` (memory grows only with bytes that
//! actually arrived), and a sparse map larger than [`MAX_SPARSE_ENTRIES`] is refused.
//!
//! Sparse entries: old GNU (`S`, the map in the header and extension blocks) and PAX sparse
//! formats 0.0 (`GNU.sparse.offset`/`numbytes` records), 0.1 (`GNU.sparse.map`) and 1.0 (the
//! map at the start of the data), as GNU tar writes them.

use std::io::{self, BufReader, Read};

use tar::{EntryType, GnuExtSparseHeader, Header, PaxExtensions};

use super::ArchiveError;
use super::apply::{MAX_ENTRIES, MAX_PAX_EXTENSION_SIZE};
use crate::sys::fs::MAX_PATH_LEN;

const BLOCK: u64 = 512;

/// Regions (data extents) one sparse entry's map may list: 16 bytes each in memory, 1 MiB
/// at most.
pub const MAX_SPARSE_ENTRIES: usize = 1 << 16;
/// The longest GNU long-name or long-link entry: a name of [`MAX_PATH_LEN`] bytes and its NUL.
pub const MAX_LONG_NAME: u64 = MAX_PATH_LEN as u64 + 1;
/// Headers (entries and the metadata entries before them) one tar may hold.
pub const MAX_HEADERS: u64 = 4 * MAX_ENTRIES;

/// A sparse file: where its data goes and how long it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SparseMap {
    /// `(offset, length)` of each region of data, ascending and apart; everything else of
    /// the file is a hole.
    pub regions: Vec<(u64, u64)>,
    /// The file's length.
    pub real_size: u64,
}

/// One entry, with what the metadata entries before it said.
pub struct TarEntry {
    pub header: Header,
    /// The name: a GNU long name, else PAX `path` (or `GNU.sparse.name`), else the header's.
    pub path: Vec<u8>,
    /// The link target: a GNU long link, else PAX `linkpath`, else the header's.
    pub link: Option<Vec<u8>>,
    /// The PAX records (`x`) of this entry, raw.
    pub pax: Option<Vec<u8>>,
    /// Set for a sparse entry: its content is the regions' data, in order.
    pub sparse: Option<SparseMap>,
}

impl TarEntry {
    pub fn entry_type(&self) -> EntryType {
        match self.header.entry_type() {
            // A PAX sparse entry is a regular file; so is an old GNU sparse one.
            EntryType::GNUSparse => EntryType::Regular,
            t => t,
        }
    }
}

/// Reads entries from an uncompressed tar.
pub struct TarReader<R> {
    /// Buffered: headers come in blocks and a PAX 1.0 map is read a byte at a time.
    inner: BufReader<R>,
    /// Bytes of the current entry's content not read yet.
    remaining: u64,
    /// Padding after the current entry's content.
    padding: u64,
    headers: u64,
}

fn invalid(reason: impl Into<String>) -> ArchiveError {
    ArchiveError::invalid(reason)
}

fn padding_of(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

/// Reads all of `buf`; `false` at a clean end of input before the first byte.
fn read_block<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<bool, ArchiveError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => {
                return Err(ArchiveError::Read(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the tar ends inside a header",
                )));
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ArchiveError::Read(e)),
        }
    }
    Ok(true)
}

/// The PAX record `key`, if present.
fn pax_value<'a>(pax: Option<&'a [u8]>, key: &str) -> Option<&'a [u8]> {
    PaxExtensions::new(pax?)
        .filter_map(Result::ok)
        .find(|e| e.key_bytes() == key.as_bytes())
        .map(|e| e.value_bytes())
}

fn pax_number(pax: Option<&[u8]>, key: &str) -> Result<Option<u64>, ArchiveError> {
    match pax_value(pax, key) {
        None => Ok(None),
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| invalid(format!("PAX record {key} is not a number"))),
    }
}

/// Builds a map from regions in file order, checking them: ascending, apart, within the
/// file, at most [`MAX_SPARSE_ENTRIES`], their lengths summing to `data` bytes.
struct MapBuilder {
    regions: Vec<(u64, u64)>,
    end: u64,
    data: u64,
}

impl MapBuilder {
    fn new() -> Self {
        MapBuilder {
            regions: Vec::new(),
            end: 0,
            data: 0,
        }
    }

    fn push(&mut self, offset: u64, length: u64) -> Result<(), ArchiveError> {
        if offset < self.end {
            return Err(invalid("sparse map regions out of order or overlapping"));
        }
        self.end = offset
            .checked_add(length)
            .ok_or_else(|| invalid("sparse map region beyond any file size"))?;
        self.data += length;
        if length == 0 {
            // GNU tar ends a map with a hole at the end as (size, 0): nothing to write.
            return Ok(());
        }
        if self.regions.len() >= MAX_SPARSE_ENTRIES {
            return Err(invalid(format!(
                "sparse map of more than {MAX_SPARSE_ENTRIES} regions (MAX_SPARSE_ENTRIES)"
            )));
        }
        self.regions.push((offset, length));
        Ok(())
    }

    fn finish(self, real_size: u64, data: u64) -> Result<SparseMap, ArchiveError> {
        if self.end > real_size {
            return Err(invalid("sparse map reaches beyond the file's size"));
        }
        if self.data != data {
            return Err(invalid(format!(
                "sparse map lists {} bytes of data, the entry holds {data}",
                self.data
            )));
        }
        Ok(SparseMap {
            regions: self.regions,
            real_size,
        })
    }
}

impl<R: Read> TarReader<R> {
    pub fn new(inner: R) -> Self {
        TarReader {
            inner: BufReader::with_capacity(64 * 1024, inner),
            remaining: 0,
            padding: 0,
            headers: 0,
        }
    }

    /// The stream, positioned after the last entry read (or at the end-of-archive blocks).
    pub fn into_inner(self) -> BufReader<R> {
        self.inner
    }

    /// Discards the rest of the current entry and its padding.
    fn skip_rest(&mut self) -> Result<(), ArchiveError> {
        let n = self.remaining + self.padding;
        self.remaining = 0;
        self.padding = 0;
        let copied = io::copy(&mut (&mut self.inner).take(n), &mut io::sink())
            .map_err(ArchiveError::Read)?;
        if copied < n {
            return Err(ArchiveError::Read(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the tar ends inside an entry",
            )));
        }
        Ok(())
    }

    /// The content of a metadata entry of `size` bytes (checked by the caller against its
    /// limit), read as it arrives, and its padding skipped.
    fn read_meta(&mut self, size: u64) -> Result<Vec<u8>, ArchiveError> {
        let mut buf = Vec::new();
        (&mut self.inner)
            .take(size)
            .read_to_end(&mut buf)
            .map_err(ArchiveError::Read)?;
        if (buf.len() as u64) < size {
            return Err(ArchiveError::Read(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the tar ends inside an entry",
            )));
        }
        self.remaining = 0;
        self.padding = padding_of(size);
        self.skip_rest()?;
        Ok(buf)
    }

    /// The next header, checksum verified; `None` at the end of the archive (a zero block or
    /// the end of input).
    fn next_header(&mut self) -> Result<Option<Header>, ArchiveError> {
        let mut header = Header::new_old();
        if !read_block(&mut self.inner, header.as_mut_bytes())? {
            return Ok(None);
        }
        if header.as_bytes().iter().all(|b| *b == 0) {
            return Ok(None);
        }
        self.headers += 1;
        if self.headers > MAX_HEADERS {
            return Err(invalid(format!(
                "more than {MAX_HEADERS} headers (MAX_HEADERS)"
            )));
        }
        let bytes = header.as_bytes();
        let sum = bytes[..148]
            .iter()
            .chain(&bytes[156..])
            .map(|b| u32::from(*b))
            .sum::<u32>()
            + 8 * 32;
        if header.cksum().map_err(ArchiveError::Read)? != sum {
            return Err(invalid("tar header checksum mismatch"));
        }
        Ok(Some(header))
    }

    /// The next entry; its content is then read with [`Read`] on this reader.
    pub fn next_entry(&mut self) -> Result<Option<TarEntry>, ArchiveError> {
        self.skip_rest()?;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax: Option<Vec<u8>> = None;
        let header = loop {
            let Some(header) = self.next_header()? else {
                if long_name.is_some() || long_link.is_some() || pax.is_some() {
                    return Err(invalid(
                        "the tar ends after metadata entries that describe no entry",
                    ));
                }
                return Ok(None);
            };
            let size = header.entry_size().map_err(ArchiveError::Read)?;
            match header.entry_type() {
                EntryType::GNULongName | EntryType::GNULongLink => {
                    let what = if header.entry_type() == EntryType::GNULongName {
                        "name"
                    } else {
                        "link target"
                    };
                    if size > MAX_LONG_NAME {
                        return Err(invalid(format!(
                            "GNU long {what} of {size} bytes: names are at most {MAX_PATH_LEN} \
                             bytes (MAX_PATH_LEN)"
                        )));
                    }
                    let slot = if what == "name" {
                        &mut long_name
                    } else {
                        &mut long_link
                    };
                    if slot.is_some() {
                        return Err(invalid(format!("two GNU long {what}s for one entry")));
                    }
                    let mut v = self.read_meta(size)?;
                    if v.last() == Some(&0) {
                        v.pop();
                    }
                    let slot = if what == "name" {
                        &mut long_name
                    } else {
                        &mut long_link
                    };
                    *slot = Some(v);
                }
                EntryType::XHeader | EntryType::XGlobalHeader => {
                    if size > MAX_PAX_EXTENSION_SIZE as u64 {
                        return Err(invalid(format!(
                            "PAX records of {size} bytes: at most {MAX_PAX_EXTENSION_SIZE} \
                             (MAX_PAX_EXTENSION_SIZE)"
                        )));
                    }
                    let records = self.read_meta(size)?;
                    if header.entry_type() == EntryType::XHeader {
                        if pax.is_some() {
                            return Err(invalid("two PAX headers for one entry"));
                        }
                        pax = Some(records);
                    }
                    // Global records (`g`) describe nothing a layer keeps.
                }
                _ => break header,
            }
        };
        let pax_ref = pax.as_deref();
        let mut size = header.entry_size().map_err(ArchiveError::Read)?;
        if let Some(s) = pax_number(pax_ref, "size")? {
            size = s;
        }
        let mut path = match (&long_name, pax_value(pax_ref, "path")) {
            (Some(n), _) => n.clone(),
            (None, Some(p)) => p.to_vec(),
            (None, None) => header.path_bytes().into_owned(),
        };
        let link = match (&long_link, pax_value(pax_ref, "linkpath")) {
            (Some(l), _) => Some(l.clone()),
            (None, Some(l)) => Some(l.to_vec()),
            (None, None) => header.link_name_bytes().map(|l| l.into_owned()),
        };
        self.remaining = size;
        self.padding = padding_of(size);
        let sparse = if header.entry_type() == EntryType::GNUSparse {
            Some(self.old_gnu_map(&header, size)?)
        } else if let Some(map) = self.pax_sparse_map(pax_ref, size)? {
            if let Some(name) = pax_value(pax_ref, "GNU.sparse.name") {
                path = name.to_vec();
            }
            Some(map)
        } else {
            None
        };
        Ok(Some(TarEntry {
            header,
            path,
            link,
            pax,
            sparse,
        }))
    }

    /// The map of an old GNU sparse entry: four regions in the header, 21 in each extension
    /// block after it (blocks that come before the data and are not counted in its size).
    fn old_gnu_map(&mut self, header: &Header, size: u64) -> Result<SparseMap, ArchiveError> {
        let gnu = header
            .as_gnu()
            .ok_or_else(|| invalid("a sparse entry without a GNU header"))?;
        let real_size = gnu.real_size().map_err(ArchiveError::Read)?;
        let mut map = MapBuilder::new();
        let add = |map: &mut MapBuilder, s: &tar::GnuSparseHeader| -> Result<(), ArchiveError> {
            if s.is_empty() {
                return Ok(());
            }
            map.push(
                s.offset().map_err(ArchiveError::Read)?,
                s.length().map_err(ArchiveError::Read)?,
            )
        };
        for s in &gnu.sparse {
            add(&mut map, s)?;
        }
        let mut extended = gnu.is_extended();
        let mut blocks = 0usize;
        while extended {
            blocks += 1;
            if blocks > MAX_SPARSE_ENTRIES.div_ceil(21) {
                return Err(invalid(format!(
                    "sparse map of more than {MAX_SPARSE_ENTRIES} regions (MAX_SPARSE_ENTRIES)"
                )));
            }
            let mut ext = GnuExtSparseHeader::new();
            if !read_block(&mut self.inner, ext.as_mut_bytes())? {
                return Err(ArchiveError::Read(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the tar ends inside a sparse map",
                )));
            }
            for s in ext.sparse() {
                add(&mut map, s)?;
            }
            extended = ext.is_extended();
        }
        map.finish(real_size, size)
    }

    /// The map of a PAX sparse entry (formats 0.0, 0.1 and 1.0), if it is one. For 1.0 the
    /// map is read from the start of the content, which then holds only the data.
    fn pax_sparse_map(
        &mut self,
        pax: Option<&[u8]>,
        size: u64,
    ) -> Result<Option<SparseMap>, ArchiveError> {
        let Some(records) = pax else {
            return Ok(None);
        };
        let major = pax_number(pax, "GNU.sparse.major")?;
        let minor = pax_number(pax, "GNU.sparse.minor")?;
        if major == Some(1) && minor == Some(0) {
            let real_size = pax_number(pax, "GNU.sparse.realsize")?
                .ok_or_else(|| invalid("PAX sparse 1.0 entry without GNU.sparse.realsize"))?;
            let mut used = 0u64;
            let count = self.map_number(&mut used)?;
            if count > MAX_SPARSE_ENTRIES as u64 {
                return Err(invalid(format!(
                    "sparse map of {count} regions: at most {MAX_SPARSE_ENTRIES} \
                     (MAX_SPARSE_ENTRIES)"
                )));
            }
            let mut map = MapBuilder::new();
            for _ in 0..count {
                let offset = self.map_number(&mut used)?;
                let length = self.map_number(&mut used)?;
                map.push(offset, length)?;
            }
            // The map is padded to a block; the data follows.
            let pad = padding_of(used);
            if self.remaining < pad {
                return Err(invalid("sparse map longer than its entry"));
            }
            io::copy(&mut (&mut self.inner).take(pad), &mut io::sink())
                .map_err(ArchiveError::Read)?;
            self.remaining -= pad;
            let data = self.remaining;
            return map.finish(real_size, data).map(Some);
        }
        if pax_value(pax, "GNU.sparse.map").is_some()
            || pax_value(pax, "GNU.sparse.offset").is_some()
        {
            let real_size = pax_number(pax, "GNU.sparse.size")?
                .or(pax_number(pax, "GNU.sparse.realsize")?)
                .ok_or_else(|| invalid("PAX sparse entry without GNU.sparse.size"))?;
            let mut map = MapBuilder::new();
            let number = |v: &[u8]| -> Result<u64, ArchiveError> {
                std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .ok_or_else(|| invalid("sparse map entry is not a number"))
            };
            if let Some(list) = pax_value(pax, "GNU.sparse.map") {
                // 0.1: "offset,length,offset,length,…".
                let mut parts = list.split(|b| *b == b',');
                while let Some(o) = parts.next() {
                    let l = parts
                        .next()
                        .ok_or_else(|| invalid("sparse map with an offset and no length"))?;
                    map.push(number(o)?, number(l)?)?;
                }
            } else {
                // 0.0: GNU.sparse.offset and GNU.sparse.numbytes records, in pairs.
                let mut offset = None;
                for e in PaxExtensions::new(records).filter_map(Result::ok) {
                    match e.key_bytes() {
                        b"GNU.sparse.offset" => offset = Some(number(e.value_bytes())?),
                        b"GNU.sparse.numbytes" => {
                            let o = offset
                                .take()
                                .ok_or_else(|| invalid("sparse map length without an offset"))?;
                            map.push(o, number(e.value_bytes())?)?;
                        }
                        _ => {}
                    }
                }
            }
            return map.finish(real_size, size).map(Some);
        }
        Ok(None)
    }

    /// One decimal number and its newline from a PAX 1.0 sparse map; `used` counts the bytes.
    fn map_number(&mut self, used: &mut u64) -> Result<u64, ArchiveError> {
        let mut value: u64 = 0;
        let mut digits = 0;
        loop {
            let mut b = [0u8; 1];
            if self.remaining == 0 || !read_block(&mut self.inner, &mut b)? {
                return Err(invalid("sparse map cut short"));
            }
            self.remaining -= 1;
            *used += 1;
            match b[0] {
                b'\n' if digits > 0 => return Ok(value),
                c @ b'0'..=b'9' if digits < 20 => {
                    digits += 1;
                    value = value
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(u64::from(c - b'0')))
                        .ok_or_else(|| invalid("sparse map number too large"))?;
                }
                _ => return Err(invalid("sparse map entry is not a number")),
            }
        }
    }
}

impl<R: Read> Read for TarReader<R> {
    /// Reads the current entry's content (for a sparse entry, its regions' data in order).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the tar ends inside an entry",
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

//! The undo journal of an apply onto a layer that already has content, written ahead to a
//! file, so that a `kill -9` in the middle of the apply is rolled back at the next open.
//!
//! Why: the journal in memory ([`super::undo`]) undoes a *failed* apply, but dies with the
//! process; recovery then found a half-applied layer and could only remove it (or set it
//! aside when a container owns it), losing what the layer held. Now every note is appended
//! to this file with one `write` *before* the change it guards, and replaying the file in
//! reverse puts the layer back exactly as it was.
//!
//! The file is the host's (`<root>/apply-journal/<layer id>`, see [`crate::layout`]), never
//! in a driver's home: a driver cannot forge what recovery will do. Even so every path in it
//! is treated as relative to the layer root and resolved as the apply resolved it (`Dir`
//! helpers, `RESOLVE_IN_ROOT` without crossing filesystems), the scratch name must be one the
//! apply makes, and the file is capped at [`MAX_JOURNAL_BYTES`].
//!
//! Format: [`JOURNAL_MAGIC`], the layer id and a newline; then records of a tag byte, a
//! little-endian `u32` payload length, the payload and a `u32` FNV-1a check of the three.
//! A record cut short at the end is a write the kill interrupted: the change it guards never
//! started, so it is dropped. A record that fails its check, an unknown tag or a record
//! before the first `Start` makes the journal corrupt: recovery sets the layer aside.
//!
//! Replay is idempotent and records its progress: after undoing a record the file is cut
//! back to that record's start, so a replay killed half-way resumes where it stopped, and a
//! note is never undone twice (a moved-aside entry is renamed back only while its slot is
//! still in the scratch directory).
//!
//! Power loss: nothing here is `fsync`ed (an fsync per note would cost every apply far more
//! than the crash it guards). After a power cut the journal may lack notes whose changes
//! reached the disk; recovery then finds it short or corrupt, or cannot undo a change it
//! does not know: the layer is set aside as damaged, never silently wrong, and never removed.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::undo::{Meta, Note, SCRATCH_PREFIX};
use crate::sys::fs::MAX_PATH_LEN;

/// The first bytes of every apply journal.
pub const JOURNAL_MAGIC: &[u8] = b"strata-apply-journal-1 ";
/// Bytes a journal file may take: the in-memory journal's budget.
pub const MAX_JOURNAL_BYTES: u64 = super::undo::MAX_UNDO_BYTES as u64;
/// A record's tag and payload length.
pub const RECORD_HEAD_BYTES: usize = 1 + 4;
/// A record's check.
pub const RECORD_CHECK_BYTES: usize = 4;
/// A directory's metadata without its xattrs: uid, gid, mode, two times, xattr count.
pub const META_FIXED_BYTES: usize = 4 + 4 + 4 + 2 * (8 + 4) + 2;
/// A path's length prefix.
const PATH_LEN_BYTES: usize = 2;
/// Longest layer id in the header (the store's own limit is smaller).
const MAX_HEADER_ID: usize = 256;

const TAG_START: u8 = b'S';
const TAG_CREATED: u8 = b'C';
const TAG_MOVED: u8 = b'M';
const TAG_META: u8 = b'D';

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("apply journal {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("apply journal {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "apply journal {path} would grow past {} MiB; the tar changes more of what the layer \
         held than an apply can undo",
        MAX_JOURNAL_BYTES >> 20
    )]
    Full { path: PathBuf },
}

/// An apply journal file, open for appending (the apply) or replaying (recovery).
pub struct Journal {
    file: File,
    path: PathBuf,
    /// Bytes of whole records (and the header) in the file.
    len: u64,
    /// Where the records start (after the header).
    body: u64,
}

/// A record as read: tag, payload, and the offset of the next record.
type RawRecord<'b> = (u8, &'b [u8], usize);

fn fnv1a(parts: &[&[u8]]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for part in parts {
        for b in *part {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

impl Journal {
    fn io(&self, cause: std::io::Error) -> JournalError {
        JournalError::Io {
            path: self.path.clone(),
            cause,
        }
    }

    fn corrupt(&self, reason: impl Into<String>) -> JournalError {
        JournalError::Corrupt {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// Creates (replacing) the journal of an apply onto layer `id` at `path`: no note yet.
    pub fn create(path: &Path, id: &str) -> Result<Journal, JournalError> {
        let io = |cause| JournalError::Io {
            path: path.to_path_buf(),
            cause,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)
            .map_err(io)?;
        let mut header = JOURNAL_MAGIC.to_vec();
        header.extend_from_slice(id.as_bytes());
        header.push(b'\n');
        file.write_all(&header).map_err(io)?;
        Ok(Journal {
            file,
            path: path.to_path_buf(),
            len: header.len() as u64,
            body: header.len() as u64,
        })
    }

    /// Opens the journal at `path` for replay; it must be layer `id`'s. A record cut short
    /// at the end is dropped from the file.
    pub fn open(path: &Path, id: &str) -> Result<Journal, JournalError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)
            .map_err(|cause| JournalError::Io {
                path: path.to_path_buf(),
                cause,
            })?;
        let mut j = Journal {
            file,
            path: path.to_path_buf(),
            len: 0,
            body: 0,
        };
        let size = j.file.metadata().map_err(|e| j.io(e))?.len();
        if size > MAX_JOURNAL_BYTES {
            return Err(j.corrupt(format!(
                "{size} bytes, more than the {MAX_JOURNAL_BYTES} a journal may take"
            )));
        }
        let mut head = vec![0u8; (JOURNAL_MAGIC.len() + MAX_HEADER_ID + 1).min(size as usize)];
        j.file.read_exact_at(&mut head, 0).map_err(|e| j.io(e))?;
        let Some(rest) = head.strip_prefix(JOURNAL_MAGIC) else {
            return Err(j.corrupt("no journal header"));
        };
        let Some(nl) = rest.iter().position(|b| *b == b'\n') else {
            return Err(j.corrupt("no layer id in the header"));
        };
        if &rest[..nl] != id.as_bytes() {
            return Err(j.corrupt(format!(
                "it is the journal of layer {:?}, not of {id}",
                String::from_utf8_lossy(&rest[..nl])
            )));
        }
        j.body = (JOURNAL_MAGIC.len() + nl + 1) as u64;
        j.len = size;
        // Drop a torn last record (the kill cut its write short).
        let whole = j.scan()?;
        if whole < j.len {
            j.truncate(whole)?;
        }
        Ok(j)
    }

    /// The offset just past the last whole record.
    fn scan(&self) -> Result<u64, JournalError> {
        let bytes = self.read_body()?;
        let mut at = 0usize;
        while let Some((_, _, next)) = self.next_record(&bytes, at)? {
            at = next;
        }
        Ok(self.body + at as u64)
    }

    fn read_body(&self) -> Result<Vec<u8>, JournalError> {
        let mut bytes = vec![0u8; (self.len - self.body) as usize];
        self.file
            .read_exact_at(&mut bytes, self.body)
            .map_err(|e| self.io(e))?;
        Ok(bytes)
    }

    /// The record at `at` of `bytes`, `None` at the end or at a record cut short.
    fn next_record<'b>(
        &self,
        bytes: &'b [u8],
        at: usize,
    ) -> Result<Option<RawRecord<'b>>, JournalError> {
        let rest = &bytes[at..];
        if rest.len() < RECORD_HEAD_BYTES {
            return Ok(None);
        }
        let tag = rest[0];
        let len = u32::from_le_bytes(rest[1..5].try_into().expect("4 bytes")) as usize;
        let Some(end) = RECORD_HEAD_BYTES
            .checked_add(len)
            .and_then(|n| n.checked_add(RECORD_CHECK_BYTES))
        else {
            return Ok(None);
        };
        if rest.len() < end {
            return Ok(None);
        }
        let payload = &rest[RECORD_HEAD_BYTES..RECORD_HEAD_BYTES + len];
        let check = u32::from_le_bytes(rest[end - 4..end].try_into().expect("4 bytes"));
        if fnv1a(&[&rest[..RECORD_HEAD_BYTES], payload]) != check {
            return Err(self.corrupt(format!(
                "record at byte {} fails its check",
                self.body as usize + at
            )));
        }
        Ok(Some((tag, payload, at + end)))
    }

    /// Where the next record goes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the journal holds no record.
    pub fn is_empty(&self) -> bool {
        self.len == self.body
    }

    /// Appends `note` with one write. On a failed write the file is cut back, so a later
    /// record never follows a partial one.
    pub(super) fn append(&mut self, note: &Note) -> Result<(), JournalError> {
        let (tag, payload) = encode(note);
        let mut record = Vec::with_capacity(RECORD_HEAD_BYTES + payload.len() + 4);
        record.push(tag);
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        record.extend_from_slice(&payload);
        let check = fnv1a(&[&record[..RECORD_HEAD_BYTES], &payload]);
        record.extend_from_slice(&check.to_le_bytes());
        if self.len + record.len() as u64 > MAX_JOURNAL_BYTES {
            return Err(JournalError::Full {
                path: self.path.clone(),
            });
        }
        if let Err(e) = self.file.write_all_at(&record, self.len) {
            let _ = self.file.set_len(self.len);
            return Err(self.io(e));
        }
        self.len += record.len() as u64;
        Ok(())
    }

    /// Cuts the journal back to `len` (a record's start): what follows is undone.
    pub fn truncate(&mut self, len: u64) -> Result<(), JournalError> {
        self.file.set_len(len).map_err(|e| self.io(e))?;
        self.len = len;
        Ok(())
    }

    /// The records from offset `from` (a record's start) on, each with its offset.
    pub(super) fn records_from(&self, from: u64) -> Result<Vec<(u64, Note)>, JournalError> {
        let bytes = self.read_body()?;
        let mut at = from.saturating_sub(self.body) as usize;
        let mut out = Vec::new();
        while let Some((tag, payload, next)) = self.next_record(&bytes, at)? {
            let note = decode(tag, payload).map_err(|reason| {
                self.corrupt(format!(
                    "record at byte {}: {reason}",
                    self.body as usize + at
                ))
            })?;
            if out.is_empty() && !matches!(note, Note::Start { .. }) {
                return Err(self.corrupt("a note before the apply's start"));
            }
            out.push((self.body + at as u64, note));
            at = next;
        }
        Ok(out)
    }

    /// Every record, each with its offset.
    pub(super) fn records(&self) -> Result<Vec<(u64, Note)>, JournalError> {
        self.records_from(self.body)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    let len = (b.len() as u16).to_le_bytes();
    out.extend_from_slice(&len[..PATH_LEN_BYTES]);
    out.extend_from_slice(b);
}

fn put_meta(out: &mut Vec<u8>, m: &Meta) {
    out.extend_from_slice(&m.uid.to_le_bytes());
    out.extend_from_slice(&m.gid.to_le_bytes());
    out.extend_from_slice(&m.mode.to_le_bytes());
    for (s, ns) in [m.atime, m.mtime] {
        out.extend_from_slice(&s.to_le_bytes());
        out.extend_from_slice(&ns.to_le_bytes());
    }
    out.extend_from_slice(&(m.xattrs.len() as u16).to_le_bytes());
    for (k, v) in &m.xattrs {
        put_bytes(out, k.as_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v);
    }
}

/// Bytes a note takes in the journal besides its record's head and check.
pub(super) fn encoded_len(note: &Note) -> usize {
    encode(note).1.len()
}

fn encode(note: &Note) -> (u8, Vec<u8>) {
    let mut out = Vec::new();
    match note {
        Note::Start {
            dest,
            scratch,
            fresh,
            root_meta,
        } => {
            out.push(u8::from(*fresh));
            put_bytes(&mut out, dest.as_bytes());
            put_bytes(&mut out, scratch.as_bytes());
            put_meta(&mut out, root_meta);
            (TAG_START, out)
        }
        Note::Created(rel) => {
            put_bytes(&mut out, rel.as_os_str().as_bytes());
            (TAG_CREATED, out)
        }
        Note::MovedAside { rel, slot } => {
            out.extend_from_slice(&slot.to_le_bytes());
            put_bytes(&mut out, rel.as_os_str().as_bytes());
            (TAG_MOVED, out)
        }
        Note::Meta { rel, meta } => {
            put_bytes(&mut out, rel.as_os_str().as_bytes());
            put_meta(&mut out, meta);
            (TAG_META, out)
        }
    }
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("cut short".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    /// A path relative to the layer root: no `..`, no root, no NUL, not too long.
    fn rel(&mut self) -> Result<PathBuf, String> {
        let b = self.bytes()?;
        check_rel(b)?;
        Ok(PathBuf::from(OsString::from_vec(b.to_vec())))
    }
    fn meta(&mut self) -> Result<Meta, String> {
        if self.0.len() < META_FIXED_BYTES {
            return Err("metadata cut short".into());
        }
        let uid = self.u32()?;
        let gid = self.u32()?;
        let mode = self.u32()?;
        let atime = (self.u64()? as i64, self.u32()?);
        let mtime = (self.u64()? as i64, self.u32()?);
        let n = self.u16()? as usize;
        if n > super::MAX_XATTRS_PER_ENTRY {
            return Err(format!("{n} xattrs"));
        }
        let mut xattrs = Vec::with_capacity(n);
        for _ in 0..n {
            let k = String::from_utf8(self.bytes()?.to_vec()).map_err(|e| e.to_string())?;
            let vlen = self.u32()? as usize;
            xattrs.push((k, self.take(vlen)?.to_vec()));
        }
        Ok(Meta {
            uid,
            gid,
            mode,
            atime,
            mtime,
            xattrs,
        })
    }
    fn end(&self) -> Result<(), String> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err("trailing bytes".into())
        }
    }
}

fn check_rel(b: &[u8]) -> Result<(), String> {
    if b.len() > MAX_PATH_LEN || b.contains(&0) {
        return Err("a path that is too long or holds NUL".into());
    }
    if b.starts_with(b"/") || b.split(|c| *c == b'/').any(|c| c == b".." || c == b".") {
        return Err("a path that is not relative to the layer root".into());
    }
    Ok(())
}

fn decode(tag: u8, payload: &[u8]) -> Result<Note, String> {
    let mut c = Cursor(payload);
    let note = match tag {
        TAG_START => {
            let fresh = match c.take(1)?[0] {
                0 => false,
                1 => true,
                other => return Err(format!("fresh flag {other}")),
            };
            let dest = String::from_utf8(c.bytes()?.to_vec()).map_err(|e| e.to_string())?;
            check_rel(dest.as_bytes())?;
            let scratch = c.bytes()?;
            let valid_scratch = scratch.starts_with(SCRATCH_PREFIX.as_bytes())
                && !scratch.contains(&b'/')
                && !scratch.contains(&0);
            if !valid_scratch {
                return Err("a scratch name the apply does not make".into());
            }
            let scratch = OsString::from_vec(scratch.to_vec());
            Note::Start {
                dest,
                scratch,
                fresh,
                root_meta: c.meta()?,
            }
        }
        TAG_CREATED => Note::Created(c.rel()?),
        TAG_MOVED => {
            let slot = c.u64()?;
            Note::MovedAside {
                rel: c.rel()?,
                slot,
            }
        }
        TAG_META => {
            let rel = c.rel()?;
            Note::Meta {
                rel,
                meta: c.meta()?,
            }
        }
        other => return Err(format!("unknown record tag {other}")),
    };
    c.end()?;
    if let Note::Created(rel) | Note::MovedAside { rel, .. } = &note
        && rel.as_os_str().is_empty()
    {
        return Err("a note on the layer root itself".into());
    }
    Ok(note)
}

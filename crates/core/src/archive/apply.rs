//! Unpacking a layer tar onto a layer directory.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::fd::AsFd;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use tar::EntryType;

use super::bookkeeping::{Created, DirTimes, Insert};
use super::reader::{SparseMap, TarEntry, TarReader};
use super::undo::Undo;
use super::{ArchiveError, OPAQUE_MARKER, WHITEOUT_PREFIX, WhiteoutFormat, is_overlay_xattr};
use crate::sys::fs::{
    Confinement, Dir, FileKind, MAX_PATH_LEN, MAX_TREE_DEPTH, MAX_XATTR_VALUE, chmod_at, chown_at,
    create_file_at, link_at, mkdir_at, mknod_at, read_dir_names, remove_xattr_at,
    set_file_metadata, set_times_at, set_xattr_at, stat_at, symlink_at, too_deep, xattrs_at,
};
use crate::sys::sparse::{set_len, write_all_at};
use crate::sys::{ErrorKind, SysError};

/// Entries one tar may hold.
pub const MAX_ENTRIES: u64 = 50_000_000;
/// xattrs one entry may carry.
pub const MAX_XATTRS_PER_ENTRY: usize = 256;
/// Bytes of PAX extension records one entry may carry.
pub const MAX_PAX_EXTENSION_SIZE: usize = 1 << 20;
/// Bytes copied per write of a file's content.
const COPY_BUFFER_SIZE: usize = 256 * 1024;

/// What applying a tar did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Bytes of regular-file content written; hardlinks add nothing.
    pub size: u64,
    /// Entries processed, whiteouts included.
    pub entries: u64,
}

/// A tar entry name, normalised: no leading `/` or `./`, no empty or `.` components. `..`
/// is refused (it could only mean leaving the layer), and so is a name of more than
/// [`MAX_TREE_DEPTH`] components: copying, comparing and exporting the layer must be able
/// to reach everything applied.
fn normalise(raw: &[u8]) -> Result<PathBuf, String> {
    if raw.len() > MAX_PATH_LEN {
        return Err(format!("name longer than {MAX_PATH_LEN} bytes"));
    }
    if raw.contains(&0) {
        return Err("name contains NUL".into());
    }
    let mut out = PathBuf::new();
    let mut depth = 0;
    for c in Path::new(OsStr::from_bytes(raw)).components() {
        match c {
            Component::Normal(n) => {
                depth += 1;
                if depth > MAX_TREE_DEPTH {
                    return Err(too_deep());
                }
                out.push(n)
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => return Err("`..` would leave the layer".into()),
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(super) fn tests_normalise(raw: &[u8]) -> Result<String, String> {
    normalise(raw).map(|p| p.to_string_lossy().into_owned())
}

struct Applier<'a, 'j> {
    root: &'a Dir,
    whiteouts: WhiteoutFormat,
    /// Paths this tar created or updated: an opaque marker keeps them (delete format only).
    created: Option<Created>,
    /// Directory mtimes, set at the end (later entries inside would change them).
    dir_times: DirTimes,
    stats: ApplyStats,
    /// The directory the last entry went into, resolved once for the entries after it in
    /// the same directory (a tar lists a directory's files together). Dropped whenever
    /// anything is removed, so it never names a directory that was replaced.
    parent_cache: Option<(PathBuf, Rc<OwnedFd>)>,
    buffer: Vec<u8>,
    /// How to put the layer back as it was if the apply fails.
    undo: Undo<'j>,
}

/// Unpacks the (uncompressed) layer tar `reader` onto `dest`. All or nothing: when it fails,
/// `dest` is put back as it was (see `undo`) and the error says so
/// ([`ArchiveError::Undone`]), or says that it could not be ([`ArchiveError::NotUndone`]).
pub fn apply_layer_tar(
    reader: impl Read,
    dest: &Dir,
    whiteouts: WhiteoutFormat,
) -> Result<ApplyStats, ArchiveError> {
    apply_layer_tar_journaled(reader, dest, "", whiteouts, None)
}

/// [`apply_layer_tar`], its undo journal written ahead to `journal` when there is one
/// (`dest_name` is `dest`'s path in the driver home, for the replay): a crash in the middle
/// is then rolled back by [`super::replay_journal`], and the replaced originals stay (in a
/// scratch directory in `dest`) until [`super::finish_journal`].
pub fn apply_layer_tar_journaled(
    reader: impl Read,
    dest: &Dir,
    dest_name: &str,
    whiteouts: WhiteoutFormat,
    journal: Option<&mut super::Journal>,
) -> Result<ApplyStats, ArchiveError> {
    let root = dest.with_confinement(Confinement::InRoot)?;
    let undo = Undo::start(&root, dest_name, journal)?;
    let mut a = Applier {
        root: &root,
        whiteouts,
        created: (whiteouts == WhiteoutFormat::Delete).then(Created::default),
        dir_times: DirTimes::default(),
        stats: ApplyStats::default(),
        parent_cache: None,
        buffer: vec![0; COPY_BUFFER_SIZE],
        undo,
    };
    let result = a.run(reader);
    let Applier { undo, stats, .. } = a;
    match result {
        Ok(()) => {
            undo.commit(&root).map_err(ArchiveError::Sys)?;
            Ok(stats)
        }
        Err(cause) => match undo.rollback(&root) {
            Ok(()) => Err(ArchiveError::Undone(Box::new(cause))),
            Err(undoing) => Err(ArchiveError::NotUndone {
                cause: Box::new(cause),
                undoing,
            }),
        },
    }
}

impl Applier<'_, '_> {
    fn run(&mut self, reader: impl Read) -> Result<(), ArchiveError> {
        let a = self;
        let mut tar = TarReader::new(reader);
        while let Some(entry) = tar.next_entry()? {
            a.stats.entries += 1;
            if a.stats.entries > MAX_ENTRIES {
                return Err(ArchiveError::invalid(format!(
                    "more than {MAX_ENTRIES} entries"
                )));
            }
            let raw_name = entry.path.clone();
            let shown = String::from_utf8_lossy(&raw_name).into_owned();
            let rel = normalise(&raw_name)
                .and_then(|rel| a.undo.check_entry(&rel).map(|()| rel))
                .map_err(|reason| ArchiveError::BadEntry {
                    entry: shown.clone(),
                    reason,
                })?;
            a.entry(&mut tar, &entry, &rel).map_err(|e| match e {
                ArchiveError::Sys(cause) => ArchiveError::Entry {
                    entry: shown.clone(),
                    cause,
                },
                ArchiveError::Invalid(reason) => ArchiveError::BadEntry {
                    entry: shown.clone(),
                    reason,
                },
                other => other,
            })?;
        }
        a.finish()?;
        // Read the end-of-archive blocks and any padding too, so that digests taken over the
        // stream cover all of it.
        std::io::copy(&mut tar.into_inner(), &mut std::io::sink()).map_err(ArchiveError::Read)?;
        Ok(())
    }
}

/// PAX records of an entry: xattrs and the overrides we honour.
#[derive(Default)]
struct Pax {
    xattrs: Vec<(String, Vec<u8>)>,
    uid: Option<u32>,
    gid: Option<u32>,
    mtime: Option<(i64, u32)>,
}

fn read_pax(entry: &TarEntry) -> Result<Pax, ArchiveError> {
    let mut pax = Pax::default();
    let Some(records) = entry.pax.as_deref() else {
        return Ok(pax);
    };
    let exts = tar::PaxExtensions::new(records);
    let mut total = 0usize;
    for ext in exts {
        let ext = ext.map_err(ArchiveError::Read)?;
        total += ext.key_bytes().len() + ext.value_bytes().len();
        if total > MAX_PAX_EXTENSION_SIZE {
            return Err(ArchiveError::invalid(format!(
                "PAX records larger than {MAX_PAX_EXTENSION_SIZE} bytes"
            )));
        }
        let key = String::from_utf8_lossy(ext.key_bytes()).into_owned();
        let value = ext.value_bytes();
        if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
            if pax.xattrs.len() >= MAX_XATTRS_PER_ENTRY {
                return Err(ArchiveError::invalid(format!(
                    "more than {MAX_XATTRS_PER_ENTRY} xattrs"
                )));
            }
            if value.len() > MAX_XATTR_VALUE {
                return Err(ArchiveError::invalid(format!(
                    "xattr {name} larger than {MAX_XATTR_VALUE} bytes"
                )));
            }
            // overlayfs metadata (opaque, redirect, metacopy, origin, …) is the host's to
            // write, from whiteout entries: from a tar it would forge what overlayfs does
            // with the layer. Dropped, as export drops it.
            if is_overlay_xattr(name) {
                continue;
            }
            pax.xattrs.push((name.to_string(), value.to_vec()));
        } else {
            let text = String::from_utf8_lossy(value);
            match key.as_str() {
                "uid" => pax.uid = text.trim().parse().ok(),
                "gid" => pax.gid = text.trim().parse().ok(),
                "mtime" => pax.mtime = parse_pax_time(&text),
                _ => {}
            }
        }
    }
    Ok(pax)
}

fn parse_pax_time(text: &str) -> Option<(i64, u32)> {
    let (secs, frac) = match text.trim().split_once('.') {
        Some((s, f)) => (s, f),
        None => (text.trim(), ""),
    };
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: u32 = 0;
    for (i, c) in frac.chars().take(9).enumerate() {
        nanos += c.to_digit(10)? * 10u32.pow(8 - i as u32);
    }
    Some((secs, nanos))
}

/// xattrs a tar never describes: overlay's own markers (set from whiteouts) and the security
/// label the filesystem assigns.
fn host_managed_xattr(key: &str) -> bool {
    is_overlay_xattr(key) || key == "security.selinux"
}

fn sys(e: SysError) -> ArchiveError {
    ArchiveError::Sys(e)
}

impl Applier<'_, '_> {
    /// Makes sure every directory above `rel` exists (created 0755 root-owned if missing).
    fn ensure_parents(&mut self, rel: &Path) -> Result<(), ArchiveError> {
        let Some(parent) = rel.parent() else {
            return Ok(());
        };
        let mut prefix = PathBuf::new();
        for c in parent.components() {
            prefix.push(c);
            match self.root.open_dir_rel(&prefix) {
                Ok(_) => {}
                Err(e) if e.kind == ErrorKind::NotFound => {
                    let (pfd, name) = self.root.parent(&prefix).map_err(sys)?;
                    self.undo.before_create(self.root, &prefix)?;
                    match mkdir_at(pfd.as_fd(), &name, 0o755, 0, 0) {
                        Ok(()) => {
                            self.mark_created(&prefix)?;
                        }
                        Err(e) if e.kind == ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(sys(e.at(&prefix))),
                    }
                }
                Err(e) => return Err(sys(e)),
            }
        }
        Ok(())
    }

    /// The directory `rel` goes into (made if missing) and its name there.
    fn parent_of(&mut self, rel: &Path) -> Result<(Rc<OwnedFd>, OsString), ArchiveError> {
        let name = rel
            .file_name()
            .ok_or_else(|| ArchiveError::invalid("names the layer root"))?
            .to_os_string();
        let parent = rel.parent().unwrap_or(Path::new(""));
        if let Some((cached, fd)) = &self.parent_cache
            && cached == parent
        {
            return Ok((fd.clone(), name));
        }
        let flags = rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY;
        let fd = match self.root.open_raw(parent, flags) {
            Ok(fd) => fd,
            Err(e) if e.kind == ErrorKind::NotFound => {
                self.ensure_parents(rel)?;
                self.root.open_raw(parent, flags).map_err(sys)?
            }
            Err(e) => return Err(sys(e)),
        };
        let fd = Rc::new(fd);
        self.parent_cache = Some((parent.to_path_buf(), fd.clone()));
        Ok((fd, name))
    }

    /// Takes `name` (the layer's `rel`) out of `dir`, a whole tree, in a way the undo
    /// journal can put back; forgets the cached directory.
    fn remove_at(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        rel: &Path,
    ) -> Result<(), ArchiveError> {
        self.parent_cache = None;
        self.undo.take_away(self.root, dir, name, rel)
    }

    /// Notes, for the undo journal, that `rel` is about to be created.
    fn before_create(&mut self, rel: &Path) -> Result<(), ArchiveError> {
        self.undo.before_create(self.root, rel)
    }

    /// Notes, for the undo journal, directory `rel`'s metadata before it changes.
    fn before_meta(&mut self, rel: &Path) -> Result<(), ArchiveError> {
        self.undo.before_meta(self.root, rel)
    }

    /// Copies a regular file's content from the tar; a sparse entry's data goes to its
    /// regions' offsets and the length is set after, so its holes stay holes. Returns the
    /// bytes of data written.
    fn copy_content<R: Read>(
        &mut self,
        tar: &mut TarReader<R>,
        sparse: Option<&SparseMap>,
        f: &std::fs::File,
    ) -> Result<u64, ArchiveError> {
        let whole;
        let regions: &[(u64, u64)] = match sparse {
            Some(map) => &map.regions,
            None => {
                whole = [(0, u64::MAX)];
                &whole
            }
        };
        let mut total = 0u64;
        for &(offset, len) in regions {
            let mut done = 0u64;
            while done < len {
                let want = self
                    .buffer
                    .len()
                    .min(usize::try_from(len - done).unwrap_or(usize::MAX));
                let n = match tar.read(&mut self.buffer[..want]) {
                    Ok(0) if sparse.is_none() => return Ok(total),
                    Ok(0) => {
                        return Err(ArchiveError::invalid("sparse entry shorter than its map"));
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(ArchiveError::Read(e)),
                };
                write_all_at(f, &self.buffer[..n], offset + done).map_err(ArchiveError::Sys)?;
                done += n as u64;
                total += n as u64;
            }
        }
        if let Some(map) = sparse {
            set_len(f, map.real_size).map_err(ArchiveError::Sys)?;
        }
        Ok(total)
    }

    fn entry<R: Read>(
        &mut self,
        tar: &mut TarReader<R>,
        entry: &TarEntry,
        rel: &Path,
    ) -> Result<(), ArchiveError> {
        let header = &entry.header;
        let kind = entry.entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let pax = read_pax(entry)?;
        let uid = pax
            .uid
            .or_else(|| header.uid().ok().map(|u| u as u32))
            .unwrap_or(0);
        let gid = pax
            .gid
            .or_else(|| header.gid().ok().map(|g| g as u32))
            .unwrap_or(0);
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let mtime = pax.mtime.unwrap_or((header.mtime().unwrap_or(0) as i64, 0));

        if rel.as_os_str().is_empty() {
            // The layer root itself: metadata only.
            if kind.is_dir() {
                self.before_meta(rel)?;
                self.root.lchown(".", uid, gid)?;
                self.root.chmod(".", mode)?;
                for (k, v) in &pax.xattrs {
                    self.root.set_xattr(".", k, v)?;
                }
                self.defer_dir_time(Path::new(""), mtime)?;
            }
            return Ok(());
        }

        let name = rel.file_name().unwrap_or_default().to_os_string();
        let name_bytes = name.as_bytes();
        if name_bytes.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return self.whiteout(rel, &name, uid, gid);
        }

        let (pfd_owned, fname) = self.parent_of(rel)?;
        let pfd = pfd_owned.as_fd();
        let existing = match stat_at(pfd, &fname) {
            Ok(st) => Some(st),
            Err(e) if e.kind == ErrorKind::NotFound => None,
            Err(e) => return Err(sys(e.at(rel))),
        };
        let want_dir = kind.is_dir();
        let keeps_dir = existing.is_some_and(|st| want_dir && st.kind == FileKind::Directory);
        if existing.is_some() && !keeps_dir {
            self.remove_at(pfd, &fname, rel)?;
        }
        if keeps_dir {
            self.before_meta(rel)?;
        } else {
            self.before_create(rel)?;
        }
        let at = |e: SysError| sys(e.at(rel));
        match kind {
            EntryType::Directory => {
                if existing.is_none_or(|s| s.kind != FileKind::Directory) {
                    mkdir_at(pfd, &fname, 0o700, 0, 0).map_err(at)?;
                } else {
                    // A directory entry describes the directory whole: xattrs it does not
                    // carry are gone from it (removed in the layer, or the directory was
                    // deleted and made anew).
                    for (key, _) in xattrs_at(pfd, &fname).map_err(at)? {
                        if !pax.xattrs.iter().any(|(k, _)| *k == key) && !host_managed_xattr(&key) {
                            remove_xattr_at(pfd, &fname, &key).map_err(at)?;
                        }
                    }
                }
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let f = create_file_at(pfd, &fname, 0o600).map_err(at)?;
                let n = self
                    .copy_content(tar, entry.sparse.as_ref(), &f)
                    .map_err(|e| match e {
                        ArchiveError::Sys(cause) => sys(cause.at(rel)),
                        other => other,
                    })?;
                self.stats.size += n;
                // Owner, mode and times through the descriptor (setting xattrs after does
                // not change the mtime); xattrs, rare, by name.
                set_file_metadata(&f, uid, gid, mode, mtime).map_err(at)?;
                for (k, v) in &pax.xattrs {
                    set_xattr_at(pfd, &fname, k, v).map_err(at)?;
                }
                self.mark_created(rel)?;
                return Ok(());
            }
            EntryType::Symlink => {
                let target = entry
                    .link
                    .clone()
                    .ok_or_else(|| ArchiveError::invalid("symlink without a target"))?;
                if target.len() > MAX_PATH_LEN {
                    return Err(ArchiveError::invalid("symlink target too long"));
                }
                symlink_at(OsStr::from_bytes(&target), pfd, &fname).map_err(at)?;
            }
            EntryType::Link => {
                let target = entry
                    .link
                    .clone()
                    .ok_or_else(|| ArchiveError::invalid("hardlink without a target"))?;
                let trel = normalise(&target)
                    .map_err(|r| ArchiveError::invalid(format!("hardlink target: {r}")))?;
                if trel.as_os_str().is_empty() {
                    return Err(ArchiveError::invalid("hardlink to the layer root"));
                }
                let (tpfd, tname) = self.root.parent(&trel).map_err(sys)?;
                let tst = stat_at(tpfd.as_fd(), &tname).map_err(|e| sys(e.at(&trel)))?;
                if tst.kind == FileKind::Directory {
                    return Err(ArchiveError::invalid("hardlink to a directory"));
                }
                link_at(tpfd.as_fd(), &tname, pfd, &fname).map_err(at)?;
                self.mark_created(rel)?;
                return Ok(());
            }
            EntryType::Char | EntryType::Block => {
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                let fk = if kind == EntryType::Char {
                    FileKind::CharDevice
                } else {
                    FileKind::BlockDevice
                };
                mknod_at(pfd, &fname, fk, mode, rustix::fs::makedev(major, minor)).map_err(at)?;
            }
            EntryType::Fifo => {
                mknod_at(pfd, &fname, FileKind::Fifo, mode, 0).map_err(at)?;
            }
            other => {
                return Err(ArchiveError::invalid(format!(
                    "unsupported entry type {other:?}"
                )));
            }
        }
        chown_at(pfd, &fname, uid, gid).map_err(at)?;
        if kind != EntryType::Symlink {
            chmod_at(pfd, &fname, mode).map_err(at)?;
        }
        for (k, v) in &pax.xattrs {
            set_xattr_at(pfd, &fname, k, v).map_err(at)?;
        }
        if want_dir {
            self.defer_dir_time(rel, mtime)?;
        } else {
            set_times_at(pfd, &fname, mtime, mtime).map_err(at)?;
        }
        self.mark_created(rel)?;
        Ok(())
    }

    fn whiteout(
        &mut self,
        rel: &Path,
        name: &OsStr,
        uid: u32,
        gid: u32,
    ) -> Result<(), ArchiveError> {
        // A whiteout removes things: the cached directory may be among them.
        self.parent_cache = None;
        let dir = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        let name_bytes = name.as_bytes();
        if name_bytes == OPAQUE_MARKER.as_bytes() {
            if !dir.as_os_str().is_empty() {
                self.ensure_parents(&dir.join("x"))?;
            }
            return self.opaque(&dir);
        }
        if name_bytes.starts_with(b".wh..wh.") {
            // aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs): nothing to apply.
            return Ok(());
        }
        let target = OsString::from(OsStr::from_bytes(&name_bytes[WHITEOUT_PREFIX.len()..]));
        if target.is_empty() || target == "." || target == ".." {
            return Err(ArchiveError::invalid("whiteout of an invalid name"));
        }
        let trel = dir.join(&target);
        match self.whiteouts {
            WhiteoutFormat::Delete => {
                let (pfd, tname) = match self.root.parent(&trel) {
                    Ok(p) => p,
                    Err(e) if e.kind == ErrorKind::NotFound => return Ok(()),
                    Err(e) => return Err(sys(e)),
                };
                match stat_at(pfd.as_fd(), &tname) {
                    Ok(_) => self.remove_at(pfd.as_fd(), &tname, &trel),
                    Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(sys(e.at(&trel))),
                }
            }
            WhiteoutFormat::OverlayTrusted | WhiteoutFormat::OverlayUser => {
                self.ensure_parents(&trel)?;
                let (pfd, tname) = self.root.parent(&trel).map_err(sys)?;
                match stat_at(pfd.as_fd(), &tname) {
                    Ok(_) => self.remove_at(pfd.as_fd(), &tname, &trel)?,
                    Err(e) if e.kind == ErrorKind::NotFound => {}
                    Err(e) => return Err(sys(e.at(&trel))),
                }
                self.before_create(&trel)?;
                mknod_at(pfd.as_fd(), &tname, FileKind::CharDevice, 0, 0)
                    .and_then(|_| chown_at(pfd.as_fd(), &tname, uid, gid))
                    .map_err(|e| sys(e.at(&trel)))?;
                Ok(())
            }
        }
    }

    fn opaque(&mut self, dir: &Path) -> Result<(), ArchiveError> {
        // The marker's directory must be a directory of the layer, not a symlink to one:
        // what is noted for undo and marked opaque is the name itself, and a symlink has
        // neither a mode to set back nor an opaque xattr that means anything.
        if !dir.as_os_str().is_empty() {
            let st = self.root.lstat_rel(dir).map_err(sys)?;
            if st.kind != FileKind::Directory {
                return Err(ArchiveError::invalid(format!(
                    "opaque marker in {}, which is not a directory of the layer ({:?})",
                    crate::text::quote_path(&dir.to_string_lossy()),
                    st.kind
                )));
            }
        }
        match self.whiteouts {
            WhiteoutFormat::Delete => {
                let d = self.root.open_dir_rel(dir).map_err(sys)?;
                let fd = d
                    .open_raw(
                        Path::new(""),
                        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
                    )
                    .map_err(sys)?;
                for child in read_dir_names(fd.as_fd()).map_err(sys)? {
                    let crel = dir.join(&child);
                    if !self.created.as_ref().is_some_and(|c| c.contains(&crel))
                        && !self.undo.is_scratch(&crel)
                    {
                        self.remove_at(fd.as_fd(), &child, &crel)?;
                    }
                }
                Ok(())
            }
            WhiteoutFormat::OverlayTrusted | WhiteoutFormat::OverlayUser => {
                let key = if self.whiteouts == WhiteoutFormat::OverlayTrusted {
                    "trusted.overlay.opaque"
                } else {
                    "user.overlay.opaque"
                };
                self.before_meta(dir)?;
                let path = if dir.as_os_str().is_empty() {
                    ".".to_string()
                } else {
                    dir.to_string_lossy().into_owned()
                };
                self.root.set_xattr(&path, key, b"y").map_err(sys)
            }
        }
    }

    /// Notes that this tar created or updated `rel` (kept for opaque markers of the delete
    /// format); fails past the bookkeeping budget.
    fn mark_created(&mut self, rel: &Path) -> Result<(), ArchiveError> {
        match &mut self.created {
            Some(c) => c.insert(rel).map_err(ArchiveError::Invalid),
            None => Ok(()),
        }
    }

    /// Defers directory `rel`'s mtime to the end; past the budget, sets every pending time
    /// now instead (a directory's content may follow and change it: see `bookkeeping`).
    fn defer_dir_time(&mut self, rel: &Path, mtime: (i64, u32)) -> Result<(), ArchiveError> {
        if let Insert::Flush = self.dir_times.insert(rel, mtime) {
            self.set_dir_times()?;
            // Empty now: it takes any one path.
            let _ = self.dir_times.insert(rel, mtime);
        }
        Ok(())
    }

    /// Sets and forgets every pending directory time.
    fn set_dir_times(&mut self) -> Result<(), ArchiveError> {
        // Setting a directory's times changes nothing of its parent: any order will do.
        for (rel, mtime) in self.dir_times.take() {
            let shown = if rel.as_os_str().is_empty() {
                ".".to_string()
            } else {
                rel.to_string_lossy().into_owned()
            };
            match self.root.set_times(&shown, mtime, mtime) {
                Ok(()) => {}
                // Removed by a later whiteout.
                Err(e) if e.kind == ErrorKind::NotFound => {}
                Err(e) => return Err(sys(e)),
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), ArchiveError> {
        self.set_dir_times()
    }
}

//! The undo journal of an apply: a failed apply leaves the layer exactly as it was.
//!
//! Every driver's `apply-diff` ends in the host's [`super::apply_layer_tar`], so the host
//! makes the apply atomic for all of them (vfs, overlay, btrfs, zfs, third-party) instead of
//! each driver snapshotting in its own way. Before the apply changes anything that was in
//! the layer, it notes how to undo it:
//!
//! - something the tar replaces or deletes (a file under a new entry, a whiteout's target, a
//!   directory's children under an opaque marker) is *renamed aside* into a scratch directory
//!   inside the layer root (`.strata-apply-<random>`, on the layer's own filesystem, so a
//!   rename: no copy, no space), and renamed back on failure;
//! - something the tar creates beside what was there is noted, and removed on failure
//!   (what it creates inside a directory it created goes with that directory: not noted);
//! - a directory whose metadata or entries the tar changes has its owner, mode, xattrs and
//!   times noted first (once), and set back on failure.
//!
//! On success the scratch directory (the replaced originals) is deleted. An apply onto an
//! empty layer (every import, every fresh layer) notes nothing but its start: undoing it
//! empties the layer and sets the root's metadata back.
//!
//! The journal is bounded: each note is charged (path bytes, xattrs, a fixed overhead, the
//! hash sets' tables) against [`MAX_UNDO_BYTES`], part of the apply's
//! [`super::APPLY_BOOKKEEPING_BUDGET`]. Past it the apply fails and is undone (the layer is
//! left as it was) with an error naming the limit: failing is safe, and only a tar that
//! replaces or adds hundreds of thousands of entries in directories the layer already had
//! gets there (a note is ~100 bytes plus its path).
//!
//! A crash in the middle: an apply onto a layer that already has content (`layer apply`)
//! is given a [`Journal`] file by the host; every note is then written ahead to it (one
//! `write` before the change), the scratch directory stays until the store has recorded the
//! apply ([`finish_journal`]), and the next open rolls a killed apply back from the file
//! ([`replay_journal`]; see `journal.rs`). An apply onto an empty layer journals only that
//! it was fresh: imports pay no write per entry. Without a journal (a layer made by the same
//! command) a crash leaves the layer incomplete and recovery removes it
//! (docs/crash-safety.md).

use std::ffi::{OsStr, OsString};
use std::hash::{BuildHasher, Hasher, RandomState};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use super::ArchiveError;
use super::bookkeeping::{ALLOCATION_OVERHEAD, PathHashes};
use super::journal::{self, Journal, JournalError};
use crate::sys::fs::{
    Confinement, Dir, chmod_at, chown_at, mkdir_at, open_dir_at, read_dir_names, remove_tree_at,
    remove_xattr_at, rename_noreplace_at, set_times_at, set_xattr_at, stat_at, xattrs_at,
};
use crate::sys::{ErrorKind, SysError};

/// Bytes the undo journal of one apply may take before the apply fails (and is undone).
pub const MAX_UNDO_BYTES: usize = 32 << 20;

/// The prefix of the scratch directory's name in the layer root.
pub(super) const SCRATCH_PREFIX: &str = ".strata-apply-";

/// A directory's metadata, as it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Meta {
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) mode: u32,
    pub(super) atime: (i64, u32),
    pub(super) mtime: (i64, u32),
    pub(super) xattrs: Vec<(String, Vec<u8>)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Note {
    /// An apply onto `dest` (the layer root, relative to the driver home) started: undoing
    /// it empties the root when it was `fresh`, else removes the scratch directory; then
    /// sets the root's metadata back.
    Start {
        dest: String,
        scratch: OsString,
        fresh: bool,
        root_meta: Meta,
    },
    /// Created by the apply: removed on undo.
    Created(PathBuf),
    /// Was at the path, now at `slot` in the scratch directory: renamed back on undo.
    MovedAside { rel: PathBuf, slot: u64 },
    /// A directory's metadata before the apply changed it or its entries.
    Meta { rel: PathBuf, meta: Meta },
}

/// How to undo what an apply did so far.
pub(super) struct Undo<'j> {
    /// The layer was empty: undoing empties it again; nothing else is noted.
    fresh: bool,
    scratch_name: OsString,
    scratch: Option<OwnedFd>,
    next_slot: u64,
    /// The notes, when there is no journal file (the first is the `Start`).
    notes: Vec<Note>,
    /// The journal file the notes are written ahead to, and where this apply's records
    /// start in it.
    journal: Option<(&'j mut Journal, u64)>,
    /// Paths the apply created (noted, or inside a created directory).
    new: PathHashes,
    /// Directories whose metadata is noted.
    saved: PathHashes,
    /// Bytes of the notes themselves (the sets' tables are counted apart).
    note_bytes: usize,
}

fn meta_of(root: &Dir, rel: &Path) -> Result<Meta, SysError> {
    let (st, xattrs) = if rel.as_os_str().is_empty() {
        let st = root.lstat_rel(Path::new(""))?;
        let mut xattrs = Vec::new();
        for key in root.list_xattrs(".")? {
            if let Some(v) = root.get_xattr(".", &key)? {
                xattrs.push((key, v));
            }
        }
        (st, xattrs)
    } else {
        let (pfd, name) = root.parent(rel)?;
        (stat_at(pfd.as_fd(), &name)?, xattrs_at(pfd.as_fd(), &name)?)
    };
    Ok(Meta {
        uid: st.uid,
        gid: st.gid,
        mode: st.mode,
        atime: (st.atime_sec, st.atime_nsec),
        mtime: (st.mtime_sec, st.mtime_nsec),
        xattrs,
    })
}

/// xattrs the filesystem manages: never set back.
fn filesystem_xattr(key: &str) -> bool {
    key == "security.selinux"
}

fn restore_meta(root: &Dir, rel: &Path, meta: &Meta) -> Result<(), SysError> {
    if rel.as_os_str().is_empty() {
        for key in root.list_xattrs(".")? {
            if !filesystem_xattr(&key) && !meta.xattrs.iter().any(|(k, _)| *k == key) {
                root.remove_xattr(".", &key)?;
            }
        }
        for (k, v) in meta.xattrs.iter().filter(|(k, _)| !filesystem_xattr(k)) {
            root.set_xattr(".", k, v)?;
        }
        root.lchown(".", meta.uid, meta.gid)?;
        root.chmod(".", meta.mode)?;
        return root.set_times(".", meta.atime, meta.mtime);
    }
    let (pfd, name) = root.parent(rel)?;
    let pfd = pfd.as_fd();
    for (key, _) in xattrs_at(pfd, &name)? {
        if !filesystem_xattr(&key) && !meta.xattrs.iter().any(|(k, _)| *k == key) {
            remove_xattr_at(pfd, &name, &key)?;
        }
    }
    for (k, v) in meta.xattrs.iter().filter(|(k, _)| !filesystem_xattr(k)) {
        set_xattr_at(pfd, &name, k, v)?;
    }
    chown_at(pfd, &name, meta.uid, meta.gid)?;
    chmod_at(pfd, &name, meta.mode)?;
    set_times_at(pfd, &name, meta.atime, meta.mtime)
}

fn parent_rel(rel: &Path) -> &Path {
    rel.parent().unwrap_or(Path::new(""))
}

fn journal_error(e: JournalError) -> ArchiveError {
    ArchiveError::Invalid(e.to_string())
}

impl<'j> Undo<'j> {
    /// Starts the journal of an apply onto `root` (`dest` in the driver home), written
    /// ahead to `journal` when there is one.
    pub(super) fn start(
        root: &Dir,
        dest: &str,
        journal: Option<&'j mut Journal>,
    ) -> Result<Undo<'j>, ArchiveError> {
        let fd = root.open_raw(
            Path::new(""),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
        )?;
        let fresh = read_dir_names(fd.as_fd())?.is_empty();
        let random = RandomState::new().build_hasher().finish();
        let mut saved = PathHashes::default();
        saved.insert_within(Path::new(""), usize::MAX);
        if dest.len() > crate::sys::fs::MAX_PATH_LEN {
            return Err(ArchiveError::invalid(
                "the layer's path is too long to journal",
            ));
        }
        let start = Note::Start {
            dest: dest.to_string(),
            scratch: OsString::from(format!("{SCRATCH_PREFIX}{random:016x}")),
            fresh,
            root_meta: meta_of(root, Path::new(""))?,
        };
        let Note::Start { scratch, .. } = &start else {
            unreachable!("made above")
        };
        let mut undo = Undo {
            fresh,
            scratch_name: scratch.clone(),
            scratch: None,
            next_slot: 0,
            notes: Vec::new(),
            journal: journal.map(|j| {
                let at = j.len();
                (j, at)
            }),
            new: PathHashes::default(),
            saved,
            note_bytes: 0,
        };
        undo.record(start)?;
        Ok(undo)
    }

    /// Keeps `note`: written ahead to the journal file (before the change it guards), or
    /// in memory.
    fn record(&mut self, note: Note) -> Result<(), ArchiveError> {
        match &mut self.journal {
            Some((j, _)) => j.append(&note).map_err(journal_error),
            None => {
                self.notes.push(note);
                Ok(())
            }
        }
    }

    /// Bytes a note costs: in memory, or in the journal file.
    fn cost_of(&self, rel: &Path, note: Option<&Note>) -> usize {
        match (&self.journal, note) {
            (Some(_), Some(n)) => {
                journal::RECORD_HEAD_BYTES + journal::encoded_len(n) + journal::RECORD_CHECK_BYTES
            }
            _ => Self::note_cost(rel),
        }
    }

    /// Refuses a tar entry naming the scratch directory (or anything in it).
    pub(super) fn check_entry(&self, rel: &Path) -> Result<(), String> {
        match rel.components().next() {
            Some(Component::Normal(first)) if first == self.scratch_name.as_os_str() => {
                Err("names the apply's scratch directory".into())
            }
            _ => Ok(()),
        }
    }

    /// Whether `name` in the layer root is the scratch directory (never deleted by an
    /// opaque marker).
    pub(super) fn is_scratch(&self, rel: &Path) -> bool {
        rel.as_os_str() == self.scratch_name.as_os_str()
    }

    fn bytes(&self) -> usize {
        self.note_bytes + self.new.bytes() + self.saved.bytes()
    }

    fn over_budget(&self) -> String {
        format!(
            "the tar changes more of what the layer held than an apply can undo ({} MiB of \
             undo journal)",
            MAX_UNDO_BYTES >> 20
        )
    }

    fn charge(&mut self, bytes: usize) -> Result<(), ArchiveError> {
        if self.bytes() + bytes > MAX_UNDO_BYTES {
            return Err(ArchiveError::Invalid(self.over_budget()));
        }
        self.note_bytes += bytes;
        Ok(())
    }

    /// Adds `rel` to `set` unless its table would take the journal (with `others` bytes
    /// besides) past [`MAX_UNDO_BYTES`].
    fn add_to(
        set: &mut PathHashes,
        rel: &Path,
        others: usize,
        limit: &str,
    ) -> Result<(), ArchiveError> {
        if set.insert_within(rel, MAX_UNDO_BYTES.saturating_sub(others)) {
            Ok(())
        } else {
            Err(ArchiveError::Invalid(limit.to_string()))
        }
    }

    fn mark_new(&mut self, rel: &Path) -> Result<(), ArchiveError> {
        let others = self.note_bytes + self.saved.bytes();
        let limit = self.over_budget();
        Self::add_to(&mut self.new, rel, others, &limit)
    }

    /// Whether `rel` is something this apply made (so undoing needs nothing for it).
    fn is_new(&self, rel: &Path) -> bool {
        self.new.contains(rel)
    }

    fn note_cost(rel: &Path) -> usize {
        std::mem::size_of::<Note>() + rel.as_os_str().len() + ALLOCATION_OVERHEAD
    }

    /// Notes directory `rel`'s metadata (once) before the apply changes it or its entries.
    pub(super) fn before_meta(&mut self, root: &Dir, rel: &Path) -> Result<(), ArchiveError> {
        if self.fresh || self.is_new(rel) || self.saved.contains(rel) {
            return Ok(());
        }
        let meta = meta_of(root, rel).map_err(|e| ArchiveError::Sys(e.at(rel)))?;
        let xattr_bytes: usize = meta
            .xattrs
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2 * ALLOCATION_OVERHEAD)
            .sum();
        let note = Note::Meta {
            rel: rel.to_path_buf(),
            meta,
        };
        self.charge(self.cost_of(rel, Some(&note)) + xattr_bytes)?;
        let others = self.note_bytes + self.new.bytes();
        let limit = self.over_budget();
        Self::add_to(&mut self.saved, rel, others, &limit)?;
        self.record(note)
    }

    /// Notes that the apply is about to create `rel`, where nothing is.
    pub(super) fn before_create(&mut self, root: &Dir, rel: &Path) -> Result<(), ArchiveError> {
        if self.fresh {
            return Ok(());
        }
        let parent = parent_rel(rel);
        if self.is_new(parent) && !parent.as_os_str().is_empty() {
            // Goes with its new parent.
            return self.mark_new(rel);
        }
        // Undoing removes what is noted as created: it must not be something the layer
        // had (a symlink that leads nowhere in the layer, which a directory lookup of the
        // name does not find, is still there).
        let (pfd, name) = root.parent(rel).map_err(|e| ArchiveError::Sys(e.at(rel)))?;
        match stat_at(pfd.as_fd(), &name) {
            Err(e) if e.kind == ErrorKind::NotFound => {}
            Err(e) => return Err(ArchiveError::Sys(e.at(rel))),
            Ok(st) => {
                return Err(ArchiveError::invalid(format!(
                    "{} is in the way ({:?}; a symlink leading nowhere in the layer?)",
                    crate::text::quote_path(&rel.to_string_lossy()),
                    st.kind
                )));
            }
        }
        self.before_meta(root, parent)?;
        let note = Note::Created(rel.to_path_buf());
        self.charge(self.cost_of(rel, Some(&note)))?;
        self.mark_new(rel)?;
        self.record(note)
    }

    /// Takes `name` in `dir` (the layer's `rel`) out of the way of the apply: renamed aside
    /// when the layer had it, removed when this apply made it.
    pub(super) fn take_away(
        &mut self,
        root: &Dir,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        rel: &Path,
    ) -> Result<(), ArchiveError> {
        let made_here = self.fresh || self.is_new(rel) || {
            let parent = parent_rel(rel);
            !parent.as_os_str().is_empty() && self.is_new(parent)
        };
        if made_here {
            return remove_tree_at(dir, name).map_err(|e| ArchiveError::Sys(e.at(rel)));
        }
        self.before_meta(root, parent_rel(rel))?;
        let slot = self.next_slot;
        let note = Note::MovedAside {
            rel: rel.to_path_buf(),
            slot,
        };
        self.charge(self.cost_of(rel, Some(&note)))?;
        self.make_scratch(root).map_err(ArchiveError::Sys)?;
        // Written ahead: the slot is used once, whether or not the rename happens.
        self.next_slot += 1;
        self.record(note)?;
        let scratch = self.scratch.as_ref().expect("made above").as_fd();
        rename_noreplace_at(dir, name, scratch, OsStr::new(&slot.to_string()))
            .map_err(|e| ArchiveError::Sys(e.at(rel)))
    }

    fn make_scratch(&mut self, root: &Dir) -> Result<(), SysError> {
        if self.scratch.is_none() {
            let rootfd = root.open_raw(
                Path::new(""),
                rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
            )?;
            mkdir_at(rootfd.as_fd(), &self.scratch_name, 0o700, 0, 0)?;
            self.scratch = Some(open_dir_at(rootfd.as_fd(), &self.scratch_name)?);
        }
        Ok(())
    }

    /// The apply succeeded: what it replaced or deleted goes. With a journal file the
    /// scratch directory stays until the store has recorded the apply (a crash before that
    /// still rolls it back): [`finish_journal`] removes it.
    pub(super) fn commit(self, root: &Dir) -> Result<(), SysError> {
        if self.journal.is_some() || self.scratch.is_none() {
            return Ok(());
        }
        drop_scratch(root, &self.scratch_name)
    }

    /// The apply failed: everything it did is undone, in reverse. Without a journal file
    /// it carries on past a step that fails and returns the first failure; with one it
    /// stops there, the file still holding what is left to undo (replaying it again must
    /// never undo a note twice).
    pub(super) fn rollback(mut self, root: &Dir) -> Result<(), SysError> {
        drop(self.scratch.take());
        match self.journal.take() {
            None => {
                let notes: Vec<(u64, Note)> = std::mem::take(&mut self.notes)
                    .into_iter()
                    .map(|n| (0, n))
                    .collect();
                undo_notes(
                    &mut |_| root.with_confinement(Confinement::InRoot),
                    &notes,
                    None,
                )
            }
            Some((j, from)) => {
                let notes = j
                    .records_from(from)
                    .map_err(|e| SysError::invalid("undo", root.path(), e.to_string()))?;
                undo_notes(
                    &mut |_| root.with_confinement(Confinement::InRoot),
                    &notes,
                    Some(j),
                )
            }
        }
    }
}

/// Removes scratch directory `name` from `root` (if there), keeping the root's times.
fn drop_scratch(root: &Dir, name: &OsStr) -> Result<(), SysError> {
    let st = root.lstat_rel(Path::new(""))?;
    let rootfd = root.open_raw(
        Path::new(""),
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
    )?;
    match stat_at(rootfd.as_fd(), name) {
        Ok(_) => {}
        Err(e) if e.kind == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    remove_tree_at(rootfd.as_fd(), name)?;
    root.set_times(
        ".",
        (st.atime_sec, st.atime_nsec),
        (st.mtime_sec, st.mtime_nsec),
    )
}

/// Undoes `notes` (each with its offset in `journal`) in reverse. `root_of(dest)` opens the
/// layer root a `Start` names (the notes after a `Start` are relative to its root). With a
/// journal, the file is cut back to each note once it is undone, and the first failure
/// stops it; without, it carries on and returns the first failure.
fn undo_notes(
    root_of: &mut dyn FnMut(&str) -> Result<Dir, SysError>,
    notes: &[(u64, Note)],
    mut journal: Option<&mut Journal>,
) -> Result<(), SysError> {
    // Each note's root: the last `Start` at or before it.
    let mut roots: Vec<Option<usize>> = Vec::with_capacity(notes.len());
    let mut current = None;
    for (i, (_, n)) in notes.iter().enumerate() {
        if matches!(n, Note::Start { .. }) {
            current = Some(i);
        }
        roots.push(current);
    }
    let mut opened: Option<(usize, Dir)> = None;
    let mut first: Option<SysError> = None;
    for (i, (offset, note)) in notes.iter().enumerate().rev() {
        let Some(start) = roots[i] else {
            return Err(SysError::invalid(
                "undo",
                Path::new(""),
                "a note before its start",
            ));
        };
        let Note::Start { dest, scratch, .. } = &notes[start].1 else {
            unreachable!("roots index starts")
        };
        let root = match &opened {
            Some((s, dir)) if *s == start => dir,
            _ => {
                let dir = match root_of(dest) {
                    Ok(d) => d,
                    Err(e) => return Err(first.unwrap_or(e)),
                };
                &opened.insert((start, dir)).1
            }
        };
        let result = undo_note(root, scratch, note);
        match result {
            Ok(()) => {
                if let Some(j) = journal.as_deref_mut()
                    && let Err(e) = j.truncate(*offset)
                {
                    return Err(SysError::invalid("undo", j.path(), e.to_string()));
                }
            }
            Err(e) if journal.is_some() => return Err(e),
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    match first {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// Undoes one note; doing it again (after a crash mid-undo) does no harm.
fn undo_note(root: &Dir, scratch: &OsStr, note: &Note) -> Result<(), SysError> {
    match note {
        Note::Created(rel) => remove_if_there(root, rel),
        Note::MovedAside { rel, slot } => {
            let rootfd = root.open_raw(
                Path::new(""),
                rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
            )?;
            let scratch_fd = match open_dir_at(rootfd.as_fd(), scratch) {
                Ok(fd) => fd,
                // Renamed back already (and the scratch directory removed).
                Err(e) if e.kind == ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            };
            let slot = slot.to_string();
            match stat_at(scratch_fd.as_fd(), OsStr::new(&slot)) {
                Ok(_) => {}
                // Renamed back already, or the rename it guards never happened.
                Err(e) if e.kind == ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            }
            remove_if_there(root, rel)?;
            let (pfd, name) = root.parent(rel)?;
            rename_noreplace_at(scratch_fd.as_fd(), OsStr::new(&slot), pfd.as_fd(), &name)
                .map_err(|e| e.at(rel))
        }
        Note::Meta { rel, meta } => restore_meta(root, rel, meta),
        Note::Start {
            fresh, root_meta, ..
        } => {
            if *fresh {
                empty_root(root)?;
            } else {
                let rootfd = root.open_raw(
                    Path::new(""),
                    rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
                )?;
                remove_if_there_at(rootfd.as_fd(), scratch)?;
            }
            restore_meta(root, Path::new(""), root_meta)
        }
    }
}

fn remove_if_there_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), SysError> {
    match remove_tree_at(dir, name) {
        Ok(()) => Ok(()),
        Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Rolls back what `journal` holds (a killed apply), newest first, onto the layer roots its
/// `Start`s name beneath `home`; the file is cut back as it goes, to the header at the end.
pub fn replay_journal(home: &Dir, journal: &mut Journal) -> Result<(), ArchiveError> {
    let notes = journal.records().map_err(journal_error)?;
    undo_notes(
        &mut |dest| home.open_dir(dest)?.with_confinement(Confinement::InRoot),
        &notes,
        Some(journal),
    )
    .map_err(ArchiveError::Sys)
}

/// The store has recorded the applies `journal` describes: their scratch directories (the
/// replaced originals) go. The caller deletes the file after.
pub fn finish_journal(home: &Dir, journal: &Journal) -> Result<(), ArchiveError> {
    for (_, note) in journal.records().map_err(journal_error)? {
        if let Note::Start { dest, scratch, .. } = note {
            let root = home.open_dir(&dest)?;
            drop_scratch(&root, &scratch)?;
        }
    }
    Ok(())
}

fn remove_if_there(root: &Dir, rel: &Path) -> Result<(), SysError> {
    let (pfd, name) = match root.parent(rel) {
        Ok(p) => p,
        Err(e) if e.kind == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    match stat_at(pfd.as_fd(), &name) {
        Ok(_) => remove_tree_at(pfd.as_fd(), &name).map_err(|e| e.at(rel)),
        Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.at(rel)),
    }
}

fn empty_root(root: &Dir) -> Result<(), SysError> {
    let fd = root.open_raw(
        Path::new(""),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
    )?;
    for child in read_dir_names(fd.as_fd())? {
        match remove_tree_at(fd.as_fd(), &child) {
            Ok(()) => {}
            Err(e) if e.kind == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

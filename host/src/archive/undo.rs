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
//! empty layer (every import, every fresh layer) notes nothing at all: undoing it empties the
//! layer and sets the root's metadata back.
//!
//! The journal is bounded: each note is charged (path bytes, xattrs, a fixed overhead, the
//! hash sets' tables) against [`MAX_UNDO_BYTES`], part of the apply's
//! [`super::APPLY_BOOKKEEPING_BUDGET`]. Past it the apply fails and is undone (the layer is
//! left as it was) with an error naming the limit: failing is safe, and only a tar that
//! replaces or adds hundreds of thousands of entries in directories the layer already had
//! gets there (a note is ~100 bytes plus its path). Spilling the journal to disk was the
//! alternative; it would cost a write per entry on every apply for a case no real layer
//! reaches.
//!
//! A crash in the middle is not undone here: the layer's record is incomplete while the apply
//! runs, and the store's recovery removes it (docs/images.md, "A failed apply").

use std::ffi::{OsStr, OsString};
use std::hash::{BuildHasher, Hasher, RandomState};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use super::ArchiveError;
use super::bookkeeping::{ALLOCATION_OVERHEAD, PathHashes};
use crate::sys::fs::{
    Dir, chmod_at, chown_at, mkdir_at, open_dir_at, read_dir_names, remove_tree_at,
    remove_xattr_at, rename_noreplace_at, set_times_at, set_xattr_at, stat_at, xattrs_at,
};
use crate::sys::{ErrorKind, SysError};

/// Bytes the undo journal of one apply may take before the apply fails (and is undone).
pub const MAX_UNDO_BYTES: usize = 32 << 20;

/// The prefix of the scratch directory's name in the layer root.
pub(super) const SCRATCH_PREFIX: &str = ".strata-apply-";

/// A directory's metadata, as it was.
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    atime: (i64, u32),
    mtime: (i64, u32),
    xattrs: Vec<(String, Vec<u8>)>,
}

enum Note {
    /// Created by the apply: removed on undo.
    Created(PathBuf),
    /// Was at the path, now at `slot` in the scratch directory: renamed back on undo.
    MovedAside { rel: PathBuf, slot: u64 },
    /// A directory's metadata before the apply changed it or its entries.
    Meta { rel: PathBuf, meta: Meta },
}

/// How to undo what an apply did so far.
pub(super) struct Undo {
    /// The layer was empty: undoing empties it again; nothing else is noted.
    fresh: bool,
    scratch_name: OsString,
    scratch: Option<OwnedFd>,
    next_slot: u64,
    notes: Vec<Note>,
    /// Paths the apply created (noted, or inside a created directory).
    new: PathHashes,
    /// Directories whose metadata is noted.
    saved: PathHashes,
    /// Bytes of the notes themselves (the sets' tables are counted apart).
    note_bytes: usize,
    root_meta: Meta,
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

impl Undo {
    /// Starts the journal of an apply onto `root`.
    pub(super) fn start(root: &Dir) -> Result<Undo, SysError> {
        let fd = root.open_raw(
            Path::new(""),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
        )?;
        let fresh = read_dir_names(fd.as_fd())?.is_empty();
        let random = RandomState::new().build_hasher().finish();
        let mut saved = PathHashes::default();
        saved.insert_within(Path::new(""), usize::MAX);
        Ok(Undo {
            fresh,
            scratch_name: OsString::from(format!("{SCRATCH_PREFIX}{random:016x}")),
            scratch: None,
            next_slot: 0,
            notes: Vec::new(),
            new: PathHashes::default(),
            saved,
            note_bytes: 0,
            root_meta: meta_of(root, Path::new(""))?,
        })
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
        self.charge(Self::note_cost(rel) + xattr_bytes)?;
        let others = self.note_bytes + self.new.bytes();
        let limit = self.over_budget();
        Self::add_to(&mut self.saved, rel, others, &limit)?;
        self.notes.push(Note::Meta {
            rel: rel.to_path_buf(),
            meta,
        });
        Ok(())
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
        self.before_meta(root, parent)?;
        self.charge(Self::note_cost(rel))?;
        self.mark_new(rel)?;
        self.notes.push(Note::Created(rel.to_path_buf()));
        Ok(())
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
        self.charge(Self::note_cost(rel))?;
        self.make_scratch(root).map_err(ArchiveError::Sys)?;
        let scratch = self.scratch.as_ref().expect("made above").as_fd();
        let slot = self.next_slot;
        rename_noreplace_at(dir, name, scratch, OsStr::new(&slot.to_string()))
            .map_err(|e| ArchiveError::Sys(e.at(rel)))?;
        self.next_slot += 1;
        self.notes.push(Note::MovedAside {
            rel: rel.to_path_buf(),
            slot,
        });
        Ok(())
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

    /// Removes the scratch directory (if any), keeping the root's times as they are.
    fn drop_scratch(&mut self, root: &Dir) -> Result<(), SysError> {
        if self.scratch.take().is_none() {
            return Ok(());
        }
        let st = root.lstat_rel(Path::new(""))?;
        let rootfd = root.open_raw(
            Path::new(""),
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
        )?;
        remove_tree_at(rootfd.as_fd(), &self.scratch_name)?;
        root.set_times(
            ".",
            (st.atime_sec, st.atime_nsec),
            (st.mtime_sec, st.mtime_nsec),
        )
    }

    /// The apply succeeded: what it replaced or deleted goes.
    pub(super) fn commit(mut self, root: &Dir) -> Result<(), SysError> {
        self.drop_scratch(root)
    }

    /// The apply failed: everything it did is undone, in reverse. Carries on past a step
    /// that fails and returns the first failure.
    pub(super) fn rollback(mut self, root: &Dir) -> Result<(), SysError> {
        let mut first: Option<SysError> = None;
        let mut keep = |r: Result<(), SysError>| {
            if let Err(e) = r
                && first.is_none()
            {
                first = Some(e);
            }
        };
        if self.fresh {
            keep(empty_root(root));
        } else {
            let rootfd = root.open_raw(
                Path::new(""),
                rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
            );
            for note in std::mem::take(&mut self.notes).into_iter().rev() {
                match note {
                    Note::Created(rel) => keep(remove_if_there(root, &rel)),
                    Note::MovedAside { rel, slot } => {
                        keep(remove_if_there(root, &rel));
                        let back = match (&self.scratch, root.parent(&rel)) {
                            (Some(scratch), Ok((pfd, name))) => rename_noreplace_at(
                                scratch.as_fd(),
                                OsStr::new(&slot.to_string()),
                                pfd.as_fd(),
                                &name,
                            )
                            .map_err(|e| e.at(&rel)),
                            (_, Err(e)) => Err(e),
                            (None, _) => Err(SysError::invalid(
                                "undo",
                                &rel,
                                "no scratch directory holds it",
                            )),
                        };
                        keep(back);
                    }
                    Note::Meta { rel, meta } => keep(restore_meta(root, &rel, &meta)),
                }
            }
            if self.scratch.take().is_some() {
                keep(rootfd.and_then(|fd| remove_tree_at(fd.as_fd(), &self.scratch_name)));
            }
        }
        keep(restore_meta(root, Path::new(""), &self.root_meta));
        match first {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
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

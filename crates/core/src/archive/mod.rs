//! Layer tars and tree comparison.
//!
//! - [`apply_layer_tar`]: unpacks a layer tar into a layer directory. Tar entries are
//!   resolved with `RESOLVE_IN_ROOT`, so no entry — `../` names, absolute names, symlinks
//!   planted earlier in the same tar, hardlinks to outside paths — can write outside the layer.
//! - [`changes`] and [`diff_size`]: what changed from a parent tree to a layer tree.
//! - [`write_diff_tar`]: those changes as a layer tar with `.wh.` whiteouts.
//! - [`upper_changes`], [`write_upper_tar`], [`merged_view`]: the same for overlay layers,
//!   from an upper directory alone or from merged views of two layer stacks.
//! - [`decompressed`]: gzip and zstd detected by their magic bytes, on a plain stream.

mod apply;
mod bookkeeping;
mod compare;
mod export;
mod journal;
mod overlay;
pub(crate) mod reader;
mod undo;

pub use apply::{
    ApplyStats, MAX_ENTRIES, MAX_PAX_EXTENSION_SIZE, MAX_XATTRS_PER_ENTRY, apply_layer_tar,
    apply_layer_tar_journaled,
};
pub use bookkeeping::{APPLY_BOOKKEEPING_BUDGET, MAX_CREATED_BYTES, MAX_DIR_TIMES_BYTES};
pub use compare::{Change, ChangeKind, changes, diff_size};
pub use export::write_diff_tar;
pub use journal::{Journal, JournalError, MAX_JOURNAL_BYTES};
pub use overlay::MAX_VIEW_DIRS;
pub use overlay::{merged_view, opaque_xattr, upper_changes, write_upper_tar};
pub use reader::{MAX_HEADERS, MAX_LONG_NAME, MAX_SPARSE_ENTRIES, SparseMap};
pub use undo::{MAX_UNDO_BYTES, finish_journal, replay_journal};

use std::io::{BufRead, BufReader, Read};

use crate::sys::{ErrorKind, SysError};

/// How a layer keeps deletions on disk (mirrors the WIT `whiteout-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhiteoutFormat {
    /// Full-tree layers: whiteouts delete; nothing of them is kept.
    Delete,
    /// overlayfs: char device 0:0 and `trusted.overlay.opaque=y`.
    OverlayTrusted,
    /// overlayfs with `userxattr`: char device 0:0 and `user.overlay.opaque=y`.
    OverlayUser,
}

/// xattrs that describe how overlayfs stores a layer (`opaque`, `redirect`, `metacopy`,
/// `origin`, …), never what the layer holds. The host writes them itself (from `.wh.`
/// entries) and never takes them from a tar or puts them in one: a tar says the same with
/// `.wh.` entries, and a forged `redirect` or `metacopy` would make overlayfs show another
/// file's data.
pub(crate) fn is_overlay_xattr(key: &str) -> bool {
    key.starts_with("trusted.overlay.") || key.starts_with("user.overlay.")
}

/// The prefix of a whiteout file name in a layer tar.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The name marking an opaque directory in a layer tar.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("tar entry {entry}: {cause}")]
    Entry { entry: String, cause: SysError },
    #[error("tar entry {entry}: {reason}")]
    BadEntry { entry: String, reason: String },
    #[error("reading the tar: {0}")]
    Read(std::io::Error),
    #[error("writing the tar: {0}")]
    Write(std::io::Error),
    #[error("{0}")]
    Sys(#[from] SysError),
    #[error("{0}")]
    Invalid(String),
    /// The apply failed and what it had done was undone: the layer is as it was.
    #[error("{0} (the layer was left as it was)")]
    Undone(Box<ArchiveError>),
    /// The apply failed and undoing it failed too: the layer is neither as it was nor whole.
    #[error("{cause}; undoing the apply failed too ({undoing}), so the layer is damaged")]
    NotUndone {
        cause: Box<ArchiveError>,
        undoing: SysError,
    },
}

impl ArchiveError {
    pub fn invalid(reason: impl Into<String>) -> Self {
        ArchiveError::Invalid(reason.into())
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            ArchiveError::Undone(cause) | ArchiveError::NotUndone { cause, .. } => cause.kind(),
            ArchiveError::Entry { cause, .. } | ArchiveError::Sys(cause) => cause.kind,
            ArchiveError::BadEntry { .. } | ArchiveError::Invalid(_) => ErrorKind::InvalidArgument,
            ArchiveError::Read(_) => ErrorKind::InvalidArgument,
            ArchiveError::Write(_) => ErrorKind::Other,
        }
    }

    pub fn errno(&self) -> i32 {
        match self {
            ArchiveError::Undone(cause) | ArchiveError::NotUndone { cause, .. } => cause.errno(),
            ArchiveError::Entry { cause, .. } | ArchiveError::Sys(cause) => cause.errno,
            ArchiveError::Read(e) | ArchiveError::Write(e) => e.raw_os_error().unwrap_or(0),
            _ => 0,
        }
    }
}

/// The largest zstd window (log2 bytes) a layer may ask the decoder for: 128 MiB, what `zstd
/// --long` and `--ultra -22` write and zstd's own default limit. The decoder keeps a window
/// this large in memory, so it is part of the host's figure for applying a layer
/// (docs/sandbox.md); a frame asking for more is refused.
pub const MAX_ZSTD_WINDOW_LOG: u32 = 27;

/// Wraps `input` in a gzip or zstd decoder when its first bytes say so.
pub fn decompressed(input: Box<dyn Read + Send>) -> std::io::Result<Box<dyn Read + Send>> {
    let mut buffered = BufReader::with_capacity(256 * 1024, input);
    let head = buffered.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(buffered)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let mut d = zstd::stream::read::Decoder::with_buffer(buffered)?;
        d.window_log_max(MAX_ZSTD_WINDOW_LOG)?;
        Ok(Box::new(d))
    } else {
        Ok(Box::new(buffered))
    }
}

#[cfg(test)]
mod checked_open_tests;
#[cfg(test)]
mod journal_tests;
#[cfg(test)]
mod tests;

//! Where an image's files come from: an OCI layout directory, or an archive (an OCI archive
//! or a `docker save` tar) read in place.
//!
//! An archive is scanned once for its entries' offsets and sizes; blobs are then read by
//! offset from the one descriptor it was opened as, so nothing is extracted to disk first.
//! Names are looked up exactly after dropping a leading `./` or `/`; a name with `..` cannot
//! be looked up at all.
//!
//! An image is a stranger's: it is confined like a driver home. A layout's files are resolved
//! beneath the layout directory with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so a
//! `blobs/` or `blobs/sha256` that is a symlink (or a `docker save` directory's `Layers`
//! entry through one) is refused before anything outside is opened, and no size or digest of
//! an outside file can reach a message. Every file — the image path itself, `index.json`,
//! each blob — is opened without blocking and checked on its descriptor (a regular file, or
//! the layout directory) before a byte is read ([`crate::sys::named`]): a FIFO or a device
//! is refused, never waited on.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::ImageError;
use crate::sys::fs::Confinement;
use crate::sys::named::{self, Named, Want};
use crate::sys::{Dir, ErrorKind, SysError};

/// Entries an archive may hold.
pub const MAX_ARCHIVE_ENTRIES: usize = 1_000_000;

pub enum ImageSource {
    /// A layout directory: every name is resolved beneath it, through no symlink.
    Layout { path: PathBuf, dir: Dir },
    Archive {
        path: PathBuf,
        /// The archive, opened once; entries are read from it by offset.
        file: Arc<File>,
        /// Entry name → (offset of its data, size).
        entries: HashMap<String, (u64, u64)>,
    },
}

/// A file of the image, opened.
pub struct SourceFile {
    pub reader: Box<dyn Read + Send>,
    pub size: u64,
}

/// One entry of an archive: reads at most its size from its offset, whatever else reads the
/// archive meanwhile (positioned reads; the blobs of an import are read by several threads).
struct EntryReader {
    file: Arc<File>,
    at: u64,
    end: u64,
}

impl Read for EntryReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.end.saturating_sub(self.at);
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if n == 0 {
            return Ok(0);
        }
        let got = self.file.read_at(&mut buf[..n], self.at)?;
        self.at += got as u64;
        Ok(got)
    }
}

fn clean_name(raw: &str) -> Option<String> {
    let mut parts = Vec::new();
    for c in Path::new(raw).components() {
        match c {
            Component::Normal(n) => parts.push(n.to_str()?.to_string()),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Why a file of the image cannot be read, without anything of what lies outside the image:
/// a symlink is refused before it is followed, so no size, digest or content of its target
/// ever reaches a message.
fn open_error(image: &Path, name: &str, e: &SysError) -> ImageError {
    let reason = match e.kind {
        ErrorKind::Denied if e.detail.is_some() => format!(
            "{}; an image is read only from within its own directory, through no symlink",
            e.reason()
        ),
        _ => e.reason(),
    };
    ImageError::Open {
        image: image.to_path_buf(),
        name: name.to_string(),
        reason,
    }
}

impl ImageSource {
    /// Opens the image at `path` (a user's path: symlinks in it are followed): a layout
    /// directory, or an archive file. Anything else — a FIFO, a device — is refused before it
    /// is read.
    pub fn open(path: &Path) -> Result<ImageSource, ImageError> {
        let opened = named::open_named(path, Want::FileOrDirectory, Confinement::NoSymlinks)
            .map_err(|e| ImageError::Format {
                path: path.to_path_buf(),
                reason: format!("cannot open the image: {}", e.reason()),
            })?;
        let file = match opened {
            Named::Directory(dir) => {
                return Ok(ImageSource::Layout {
                    path: path.to_path_buf(),
                    dir,
                });
            }
            Named::File(file, _) => file,
        };
        let mut archive = tar::Archive::new(std::io::BufReader::new(&file));
        let mut entries = HashMap::new();
        let bad = |reason: String| ImageError::Format {
            path: path.to_path_buf(),
            reason,
        };
        let iter = archive.entries().map_err(|e| {
            bad(format!(
                "not an image layout directory nor a readable tar archive: {e}"
            ))
        })?;
        for entry in iter {
            let entry = entry.map_err(|e| bad(format!("reading the archive: {e}")))?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            if entries.len() >= MAX_ARCHIVE_ENTRIES {
                return Err(bad(format!(
                    "more than {MAX_ARCHIVE_ENTRIES} files in the archive"
                )));
            }
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            if let Some(name) = clean_name(&name) {
                entries.insert(name, (entry.raw_file_position(), entry.size()));
            }
        }
        drop(archive);
        if entries.is_empty() {
            return Err(bad(
                "not an image: neither a layout directory nor a tar archive with files".into(),
            ));
        }
        Ok(ImageSource::Archive {
            path: path.to_path_buf(),
            file: Arc::new(file),
            entries,
        })
    }

    /// Where the image is, for messages.
    pub fn path(&self) -> &Path {
        match self {
            ImageSource::Layout { path, .. } => path,
            ImageSource::Archive { path, .. } => path,
        }
    }

    /// Whether the image has something called `name`. In a layout, anything there counts
    /// (a symlink, a FIFO, a name behind a symlinked directory): opening it then says why it
    /// cannot be read, rather than the image seeming to lack it.
    pub fn exists(&self, name: &str) -> bool {
        let Some(clean) = clean_name(name) else {
            return false;
        };
        match self {
            ImageSource::Layout { dir, .. } => {
                !matches!(dir.lstat(&clean), Err(e) if e.kind == ErrorKind::NotFound)
            }
            ImageSource::Archive { entries, .. } => entries.contains_key(&clean),
        }
    }

    /// Opens the file `name` (relative to the layout or archive root). In a layout, it is
    /// resolved beneath the layout through no symlink, and only a regular file is opened for
    /// reading (never a FIFO or a device: see [`crate::sys::named`]).
    pub fn open_file(&self, name: &str) -> Result<SourceFile, ImageError> {
        let missing = || ImageError::Missing {
            image: self.path().to_path_buf(),
            name: name.to_string(),
        };
        let clean = clean_name(name).ok_or_else(missing)?;
        match self {
            ImageSource::Layout { path, dir } => match named::open_in(dir, &clean, Want::File) {
                Ok(Named::File(file, stat)) => Ok(SourceFile {
                    size: stat.size,
                    reader: Box::new(file),
                }),
                Ok(Named::Directory(_)) => unreachable!("Want::File opens only regular files"),
                Err(e) if e.kind == ErrorKind::NotFound => Err(missing()),
                Err(e) => Err(open_error(path, &clean, &e)),
            },
            ImageSource::Archive { file, entries, .. } => {
                let &(offset, size) = entries.get(&clean).ok_or_else(missing)?;
                Ok(SourceFile {
                    size,
                    reader: Box::new(EntryReader {
                        file: Arc::clone(file),
                        at: offset,
                        end: offset.saturating_add(size),
                    }),
                })
            }
        }
    }

    /// Reads a small file whole (a JSON document), refusing one over `cap` bytes. The cap
    /// holds for the bytes actually read, whatever size the file claimed.
    pub fn read_document(&self, name: &str, cap: u64) -> Result<Vec<u8>, ImageError> {
        let f = self.open_file(name)?;
        let too_large = |size| ImageError::TooLarge {
            name: name.to_string(),
            size,
            cap,
        };
        if f.size > cap {
            return Err(too_large(f.size));
        }
        named::read_capped(f.reader, cap)
            .map_err(|cause| ImageError::Io {
                what: format!("reading {name}"),
                cause,
            })?
            .ok_or_else(|| too_large(cap + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cleaned_and_dotdot_refused() {
        assert_eq!(clean_name("./index.json").as_deref(), Some("index.json"));
        assert_eq!(
            clean_name("/blobs//sha256/ab").as_deref(),
            Some("blobs/sha256/ab")
        );
        assert_eq!(clean_name("blobs/../../etc/passwd"), None);
        assert_eq!(clean_name("."), None);
    }
}

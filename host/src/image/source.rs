//! Where an image's files come from: an OCI layout directory, or an archive (an OCI archive
//! or a `docker save` tar) read in place.
//!
//! An archive is scanned once for its entries' offsets and sizes; blobs are then read by
//! seeking into it, so nothing is extracted to disk first. Names are looked up exactly after
//! dropping a leading `./` or `/`; a name with `..` cannot be looked up at all.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use super::ImageError;

/// Entries an archive may hold.
pub const MAX_ARCHIVE_ENTRIES: usize = 1_000_000;

pub enum ImageSource {
    Layout(PathBuf),
    Archive {
        path: PathBuf,
        /// Entry name → (offset of its data, size).
        entries: HashMap<String, (u64, u64)>,
    },
}

/// A file of the image, opened.
pub struct SourceFile {
    pub reader: Box<dyn Read + Send>,
    pub size: u64,
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

impl ImageSource {
    pub fn open(path: &Path) -> Result<ImageSource, ImageError> {
        let io = |cause| ImageError::Io {
            what: format!("reading {}", path.display()),
            cause,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.is_dir() {
            return Ok(ImageSource::Layout(path.to_path_buf()));
        }
        let file = File::open(path).map_err(io)?;
        let mut archive = tar::Archive::new(std::io::BufReader::new(file));
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
        if entries.is_empty() {
            return Err(bad(
                "not an image: neither a layout directory nor a tar archive with files".into(),
            ));
        }
        Ok(ImageSource::Archive {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// Where the image is, for messages.
    pub fn path(&self) -> &Path {
        match self {
            ImageSource::Layout(p) => p,
            ImageSource::Archive { path, .. } => path,
        }
    }

    pub fn exists(&self, name: &str) -> bool {
        match self {
            ImageSource::Layout(dir) => {
                clean_name(name).is_some_and(|n| dir.join(n).symlink_metadata().is_ok())
            }
            ImageSource::Archive { entries, .. } => {
                clean_name(name).is_some_and(|n| entries.contains_key(&n))
            }
        }
    }

    /// Opens the file `name` (relative to the layout or archive root). In a layout, symlinks
    /// are not followed and only regular files are read.
    pub fn open_file(&self, name: &str) -> Result<SourceFile, ImageError> {
        let missing = || ImageError::Missing {
            image: self.path().to_path_buf(),
            name: name.to_string(),
        };
        let clean = clean_name(name).ok_or_else(missing)?;
        match self {
            ImageSource::Layout(dir) => {
                let path = dir.join(&clean);
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(&path)
                    .map_err(|e| match e.kind() {
                        std::io::ErrorKind::NotFound => missing(),
                        _ => ImageError::Io {
                            what: format!("opening {}", path.display()),
                            cause: e,
                        },
                    })?;
                let meta = file.metadata().map_err(|cause| ImageError::Io {
                    what: format!("reading {}", path.display()),
                    cause,
                })?;
                if !meta.is_file() {
                    return Err(ImageError::Format {
                        path,
                        reason: "not a regular file".into(),
                    });
                }
                Ok(SourceFile {
                    size: meta.len(),
                    reader: Box::new(file),
                })
            }
            ImageSource::Archive { path, entries } => {
                let &(offset, size) = entries.get(&clean).ok_or_else(missing)?;
                let io = |cause| ImageError::Io {
                    what: format!("reading {name} in {}", path.display()),
                    cause,
                };
                let mut file = File::open(path).map_err(io)?;
                file.seek(SeekFrom::Start(offset)).map_err(io)?;
                Ok(SourceFile {
                    size,
                    reader: Box::new(file.take(size)),
                })
            }
        }
    }

    /// Reads a small file whole (a JSON document), refusing one over `cap` bytes.
    pub fn read_document(&self, name: &str, cap: u64) -> Result<Vec<u8>, ImageError> {
        let f = self.open_file(name)?;
        if f.size > cap {
            return Err(ImageError::TooLarge {
                name: name.to_string(),
                size: f.size,
                cap,
            });
        }
        let mut out = Vec::with_capacity(f.size as usize);
        f.reader
            .take(cap + 1)
            .read_to_end(&mut out)
            .map_err(|cause| ImageError::Io {
                what: format!("reading {name}"),
                cause,
            })?;
        Ok(out)
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

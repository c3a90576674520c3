//! Entry points for the fuzz targets (`fuzz/`, `cargo xtask fuzz`) into modules that are not
//! public: only what a target needs to reach the code a stranger's bytes go through. Not part
//! of the host's API; hidden from its docs.

use std::io::Read;

use crate::archive::ArchiveError;
use crate::archive::SparseMap;
use crate::archive::reader::TarReader;

/// What the tar reader said of one entry.
#[derive(Debug)]
pub struct ReadEntry {
    pub path: Vec<u8>,
    pub link: Option<Vec<u8>>,
    pub sparse: Option<SparseMap>,
    /// Bytes of content read (for a sparse entry: of its regions' data).
    pub content: u64,
}

/// Reads the uncompressed layer tar `input` entry by entry as apply does (the same reader),
/// content included, and returns what it found; stops at the first error.
pub fn read_tar(input: impl Read) -> Result<Vec<ReadEntry>, ArchiveError> {
    let mut tar = TarReader::new(input);
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while let Some(entry) = tar.next_entry()? {
        let mut content = 0u64;
        loop {
            match tar.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => content += n as u64,
                Err(e) => return Err(ArchiveError::Read(e)),
            }
        }
        out.push(ReadEntry {
            path: entry.path,
            link: entry.link,
            sparse: entry.sparse,
            content,
        });
    }
    Ok(out)
}

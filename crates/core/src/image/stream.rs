//! Layer blobs streamed from the image to the driver: read, hashed, decompressed and hashed
//! again on a thread of their own, then handed over in chunks through a bounded channel.
//!
//! Why a thread per blob: applying a layer is syscall-bound and decompressing it is
//! CPU-bound, so they overlap; and the blobs of the layers above the one being applied are
//! decompressed ahead (each at most [`READ_AHEAD_CHUNKS`] × [`CHUNK_SIZE`] bytes ahead), so
//! the next layer is ready when its turn comes. Each byte is hashed once, as it passes.
//!
//! The end of a blob is only reported (as end of file) once both digests and the size
//! match; otherwise the reader fails with the reason, so a layer can never be applied
//! completely from bytes that do not match the image.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use super::source::SourceFile;
use super::spec::Digest;
use crate::layers::{HashingReader, Tally};

/// Bytes per chunk handed to the driver.
pub const CHUNK_SIZE: usize = 1 << 20;
/// Chunks a blob's thread may run ahead of the layer being applied.
pub const READ_AHEAD_CHUNKS: usize = 32;

/// What the blob's thread saw.
#[derive(Clone, Debug)]
pub struct BlobDigests {
    pub compressed: Digest,
    pub compressed_size: u64,
    pub uncompressed: Digest,
    pub uncompressed_size: u64,
}

/// What a blob must turn out to be.
#[derive(Clone, Debug)]
pub struct Expected {
    /// Shown in messages: the blob's name in the image.
    pub name: String,
    pub digest: Option<Digest>,
    pub size: Option<u64>,
    pub diff_id: Digest,
}

enum Chunk {
    Data(Vec<u8>),
    /// Both digests matched: end of file.
    Verified,
    Failed(String),
}

/// A digest and byte count, as the blob's thread reports them.
fn finish(tally: &Tally) -> (Digest, u64) {
    let digest = Digest::parse(&tally.digest()).expect("sha256 output is a digest");
    (digest, tally.bytes())
}

/// The driver's end of a blob's channel.
pub struct ChunkReader {
    rx: Receiver<Chunk>,
    current: Vec<u8>,
    at: usize,
    done: bool,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.current.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Chunk::Data(d)) => {
                    self.current = d;
                    self.at = 0;
                }
                Ok(Chunk::Verified) => {
                    self.done = true;
                    return Ok(0);
                }
                Ok(Chunk::Failed(reason)) => {
                    return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, reason));
                }
                Err(_) => {
                    return Err(std::io::Error::other("the blob's reader stopped"));
                }
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// A blob being read on its own thread.
pub struct BlobStream {
    pub reader: ChunkReader,
    pub thread: std::thread::JoinHandle<Result<BlobDigests, String>>,
}

/// Starts reading `file` on a thread; `read_bytes` counts the blob's bytes as they are read.
pub fn spawn(file: SourceFile, expected: Expected, read_bytes: Arc<AtomicU64>) -> BlobStream {
    let (tx, rx) = sync_channel(READ_AHEAD_CHUNKS);
    let thread = std::thread::Builder::new()
        .name("strata-blob".into())
        .spawn(move || {
            let result = pump(file, &expected, &tx, read_bytes);
            let last = match &result {
                Ok(_) => Chunk::Verified,
                Err(reason) => Chunk::Failed(reason.clone()),
            };
            let _ = tx.send(last);
            result
        })
        .expect("starting a thread");
    BlobStream {
        reader: ChunkReader {
            rx,
            current: Vec::new(),
            at: 0,
            done: false,
        },
        thread,
    }
}

fn pump(
    file: SourceFile,
    expected: &Expected,
    tx: &SyncSender<Chunk>,
    read_bytes: Arc<AtomicU64>,
) -> Result<BlobDigests, String> {
    let name = &expected.name;
    if let Some(size) = expected.size
        && size != file.size
    {
        return Err(format!(
            "blob {name}: {} bytes, but the manifest says {size} (truncated or replaced)",
            file.size
        ));
    }
    // One byte more than expected is read so that a longer blob is noticed.
    let compressed =
        HashingReader::new(file.reader.take(file.size.saturating_add(1))).with_progress(read_bytes);
    let compressed_tally = compressed.tally();
    let decoder = crate::archive::decompressed(Box::new(compressed))
        .map_err(|e| format!("blob {name}: reading: {e}"))?;
    let mut tar = HashingReader::new(decoder);
    let uncompressed_tally = tar.tally();
    loop {
        let mut chunk = vec![0u8; CHUNK_SIZE];
        let mut filled = 0;
        while filled < CHUNK_SIZE {
            match tar.read(&mut chunk[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(format!(
                        "blob {name}: decompressing: {e} (corrupt or truncated)"
                    ));
                }
            }
        }
        if filled == 0 {
            break;
        }
        chunk.truncate(filled);
        if tx.send(Chunk::Data(chunk)).is_err() {
            return Err(format!("blob {name}: the import stopped reading it"));
        }
    }
    // The decoders read their input to its end (gzip and zstd go on to further members or
    // frames), so the compressed digest covers the whole blob; bytes a decoder left unread
    // show as a short count below.
    drop(tar);
    let (compressed, compressed_size) = finish(&compressed_tally);
    let (uncompressed, uncompressed_size) = finish(&uncompressed_tally);
    if compressed_size != file.size {
        return Err(format!(
            "blob {name}: the compressed stream ended after {compressed_size} of {} bytes (trailing data)",
            file.size
        ));
    }
    if let Some(d) = &expected.digest
        && *d != compressed
    {
        return Err(format!(
            "blob {name}: digest mismatch: the manifest says {d}, the blob is {compressed}"
        ));
    }
    if uncompressed != expected.diff_id {
        return Err(format!(
            "blob {name}: diff ID mismatch: the config says {}, the uncompressed layer is {uncompressed}",
            expected.diff_id
        ));
    }
    Ok(BlobDigests {
        compressed,
        compressed_size,
        uncompressed,
        uncompressed_size,
    })
}

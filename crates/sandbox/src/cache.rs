//! On-disk cache of compiled driver components.
//!
//! Compiling a component with Cranelift takes tens of milliseconds; mapping a cached compiled
//! artifact takes a fraction of one. Entries are keyed by the SHA-256 of the `.wasm` and by the
//! engine's compatibility hash (wasmtime version and every codegen setting), so a changed
//! driver or a changed engine never loads stale native code.
//!
//! Mapping an entry runs its bytes as native code, so an entry is loaded only when:
//! - the cache directory is a real directory (not a symlink) owned by the host's user and
//!   writable by nobody else (the host creates it `0700`), outside every driver home (checked
//!   by `strata_core::layout::check_cache_dir`);
//! - the entry and its digest file are regular files owned by the host's user, opened without
//!   following symlinks;
//! - the SHA-256 of the entry's bytes, read into memory, equals the digest the host wrote
//!   beside it (`<key>.sha256`) when it compiled it; the verified in-memory bytes are the ones
//!   deserialized, so nothing can change them between the check and the load.
//!
//! Anything else is treated as a damaged entry: removed, recompiled and rewritten, with a
//! warning. Entries and digests are written `0600` to temporary names and renamed into place,
//! digest first.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::SandboxError;

/// Largest driver component the host will read.
pub const MAX_COMPONENT_SIZE: u64 = 64 * 1024 * 1024;
/// Largest compiled artifact the host will read back from its cache.
pub const MAX_CACHED_ARTIFACT_SIZE: u64 = 512 * 1024 * 1024;
/// Bytes of a digest file (64 hex digits and a newline).
const DIGEST_FILE_SIZE: u64 = 65;

pub struct ComponentCache {
    dir: PathBuf,
}

/// A component ready to instantiate, and whether it came from the cache.
pub struct LoadedComponent {
    pub component: Component,
    pub sha256: String,
    pub from_cache: bool,
    /// Why the freshly compiled component could not be cached (a read-only or full disk). The
    /// component is still usable; the next start compiles again.
    pub cache_warning: Option<SandboxError>,
}

impl ComponentCache {
    /// A cache in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ComponentCache { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Loads the component at `path`: from the cache when this exact `.wasm` was compiled by
    /// this engine before, otherwise compiled now and cached.
    pub fn load(
        &self,
        engine: &Engine,
        driver: &str,
        path: &Path,
    ) -> Result<LoadedComponent, SandboxError> {
        let wasm = read_component(driver, path)?;
        let sha256 = hex::encode(Sha256::digest(&wasm));
        let entry = self.entry_path(engine, &sha256);
        let mut rejected = None;
        match self.read_verified(&entry) {
            Ok(Some(bytes)) => {
                let artifact = crate::sys::component::VerifiedArtifact::new_checked(&bytes);
                match crate::sys::component::load_cached_component(engine, artifact) {
                    Ok(component) => {
                        return Ok(LoadedComponent {
                            component,
                            sha256,
                            from_cache: true,
                            cache_warning: None,
                        });
                    }
                    // Verified but from another engine build: recompile and replace it.
                    Err(_) => self.discard(&entry),
                }
            }
            Ok(None) => {}
            Err(reason) => {
                self.discard(&entry);
                rejected = Some(reason);
            }
        }
        let component = Component::new(engine, &wasm).map_err(|e| SandboxError::Invalid {
            driver: driver.into(),
            path: path.into(),
            reason: format!("{e:#}"),
        })?;
        let serialized = component.serialize().map_err(|e| SandboxError::Setup {
            driver: driver.into(),
            reason: format!("serializing compiled component: {e:#}"),
        })?;
        let cache_warning = match self.store(&entry, &serialized) {
            Err(cause) => Some(SandboxError::Cache {
                driver: driver.into(),
                path: entry.clone(),
                cause,
            }),
            Ok(()) => rejected.map(|reason| SandboxError::Cache {
                driver: driver.into(),
                path: entry.clone(),
                cause: std::io::Error::other(format!(
                    "{reason}; not loaded, compiled again and replaced"
                )),
            }),
        };
        Ok(LoadedComponent {
            component,
            sha256,
            from_cache: false,
            cache_warning,
        })
    }

    fn entry_path(&self, engine: &Engine, sha256: &str) -> PathBuf {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        self.dir.join(format!("{sha256}-{:016x}.cwasm", h.finish()))
    }

    fn digest_path(entry: &Path) -> PathBuf {
        entry.with_extension("sha256")
    }

    /// Removes an entry and its digest (both may be missing).
    fn discard(&self, entry: &Path) {
        let _ = fs::remove_file(entry);
        let _ = fs::remove_file(Self::digest_path(entry));
    }

    /// The bytes of `entry` when it exists and passes every check of the module docs;
    /// `Ok(None)` when there is no entry; `Err` saying why an entry that exists was refused.
    fn read_verified(&self, entry: &Path) -> Result<Option<Vec<u8>>, String> {
        let dir_meta = match fs::symlink_metadata(&self.dir) {
            Ok(m) => m,
            Err(_) => return Ok(None),
        };
        let digest_path = Self::digest_path(entry);
        let entry_exists = fs::symlink_metadata(entry).is_ok();
        let digest_exists = fs::symlink_metadata(&digest_path).is_ok();
        if !entry_exists && !digest_exists {
            return Ok(None);
        }
        check_owned(&dir_meta, true).map_err(|m| format!("cache directory: {m}"))?;
        if !digest_exists {
            return Err("the entry has no recorded digest".into());
        }
        let digest =
            read_owned(&digest_path, DIGEST_FILE_SIZE).map_err(|m| format!("digest file: {m}"))?;
        let digest = String::from_utf8(digest)
            .map_err(|_| "digest file: not text".to_string())?
            .trim()
            .to_string();
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("digest file: not a SHA-256".into());
        }
        let bytes =
            read_owned(entry, MAX_CACHED_ARTIFACT_SIZE).map_err(|m| format!("entry: {m}"))?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if !actual.eq_ignore_ascii_case(&digest) {
            return Err(format!(
                "the entry's SHA-256 {actual} is not the recorded {digest}"
            ));
        }
        Ok(Some(bytes))
    }

    fn store(&self, entry: &Path, bytes: &[u8]) -> std::io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))?;
        check_owned(&fs::symlink_metadata(&self.dir)?, true)
            .map_err(|m| std::io::Error::other(format!("{}: {m}", self.dir.display())))?;
        let digest = format!("{}\n", hex::encode(Sha256::digest(bytes)));
        write_replacing(&Self::digest_path(entry), digest.as_bytes())?;
        write_replacing(entry, bytes)
    }
}

/// The bytes of the driver component at `path`, at most [`MAX_COMPONENT_SIZE`]: opened
/// without blocking and checked on the descriptor (a FIFO or a device is refused, never
/// waited on or read without end), read no further than the limit whatever the metadata
/// said, and refused when it is precompiled native code rather than WebAssembly.
pub fn read_component(driver: &str, path: &Path) -> Result<Vec<u8>, SandboxError> {
    let read_err = |cause| SandboxError::Read {
        driver: driver.to_string(),
        path: path.to_path_buf(),
        cause,
    };
    let invalid = |reason: String| SandboxError::Invalid {
        driver: driver.into(),
        path: path.into(),
        reason,
    };
    let (file, _) = crate::sys::named::open_named_file(path).map_err(|e| {
        if e.kind == crate::sys::ErrorKind::InvalidArgument {
            invalid(e.reason())
        } else {
            read_err(std::io::Error::other(e.reason()))
        }
    })?;
    let wasm = crate::sys::named::read_capped(&file, MAX_COMPONENT_SIZE)
        .map_err(read_err)?
        .ok_or_else(|| invalid(format!("more than the {MAX_COMPONENT_SIZE} bytes allowed")))?;
    if Engine::detect_precompiled(&wasm).is_some() {
        return Err(SandboxError::Precompiled {
            driver: driver.into(),
            path: path.into(),
        });
    }
    Ok(wasm)
}

/// Whether `meta` is a directory (`dir`) or regular file owned by this process's user and
/// writable by no one else.
fn check_owned(meta: &fs::Metadata, dir: bool) -> Result<(), String> {
    let ft = meta.file_type();
    if ft.is_symlink() {
        return Err("is a symlink".into());
    }
    if dir && !ft.is_dir() {
        return Err("is not a directory".into());
    }
    if !dir && !ft.is_file() {
        return Err("is not a regular file".into());
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(format!("is owned by uid {}, not {me}", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "mode {:o} lets others write it",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Reads a regular file owned by this user, not following a symlink, at most `max` bytes.
fn read_owned(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    check_owned(&meta, false)?;
    if meta.len() > max {
        return Err(format!(
            "{} bytes is more than the {max} allowed",
            meta.len()
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    (&mut file)
        .take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > max {
        return Err(format!("more than the {max} bytes allowed"));
    }
    Ok(bytes)
}

/// Writes `bytes` to a fresh temporary file beside `path` (0600), syncs it and renames it
/// over `path`; a failure leaves no temporary file behind.
fn write_replacing(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // Unique per writer (process and call), so concurrent compilations of the same
    // component never share a temporary file; the last rename wins, all are identical.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}.{n}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        // A full disk must not leave half an entry behind.
        let _ = fs::remove_file(&tmp);
    }
    written
}

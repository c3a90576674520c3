//! On-disk cache of compiled driver components.
//!
//! Compiling a component with Cranelift takes tens of milliseconds; mapping a cached compiled
//! artifact takes a fraction of one. Entries are keyed by the SHA-256 of the `.wasm` and by the
//! engine's compatibility hash (wasmtime version and every codegen setting), so a changed
//! driver or a changed engine never loads stale native code. The cache directory is created
//! `0700` and entries are written `0600` then renamed into place: only the host writes native
//! code that the host later maps, which is what makes loading it sound.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::SandboxError;

/// Largest driver component the host will read.
pub const MAX_COMPONENT_SIZE: u64 = 64 * 1024 * 1024;

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
        let read_err = |cause| SandboxError::Read {
            driver: driver.to_string(),
            path: path.to_path_buf(),
            cause,
        };
        let size = fs::metadata(path).map_err(read_err)?.len();
        if size > MAX_COMPONENT_SIZE {
            return Err(SandboxError::Invalid {
                driver: driver.into(),
                path: path.into(),
                reason: format!("{size} bytes is more than the {MAX_COMPONENT_SIZE} allowed"),
            });
        }
        let wasm = fs::read(path).map_err(read_err)?;
        if Engine::detect_precompiled(&wasm).is_some() {
            return Err(SandboxError::Precompiled {
                driver: driver.into(),
                path: path.into(),
            });
        }
        let sha256 = hex::encode(Sha256::digest(&wasm));
        let entry = self.entry_path(engine, &sha256);
        if entry.exists() {
            match crate::sys::component::load_cached_component(engine, &entry) {
                Ok(component) => {
                    return Ok(LoadedComponent {
                        component,
                        sha256,
                        from_cache: true,
                        cache_warning: None,
                    });
                }
                // A truncated or foreign entry: recompile and replace it.
                Err(_) => {
                    let _ = fs::remove_file(&entry);
                }
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
        let cache_warning =
            self.store(&entry, &serialized)
                .err()
                .map(|cause| SandboxError::Cache {
                    driver: driver.into(),
                    path: entry.clone(),
                    cause,
                });
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

    fn store(&self, entry: &Path, bytes: &[u8]) -> std::io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))?;
        // Unique per writer (process and call), so concurrent compilations of the same
        // component never share a temporary file; the last rename wins, all are identical.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = entry.with_extension(format!("tmp.{}.{n}", std::process::id()));
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(bytes)?;
                f.sync_all()
            })
            .and_then(|()| fs::rename(&tmp, entry));
        if written.is_err() {
            // A full disk must not leave half an entry behind.
            let _ = fs::remove_file(&tmp);
        }
        written
    }
}

//! Where drivers come from, and who they are.
//!
//! A driver's *identity* — its name, and with it its home (`<root>/drivers/<name>/`), its
//! layers, its grants and its `fsname` — comes only from the operator: a `[drivers.NAME]`
//! section with a `path`, or the first-party set. Never from a file name: a file called
//! `overlay.wasm` or `zfs.wasm` given by path is not the overlay or zfs driver, and a file
//! called `cache.wasm` cannot name a host directory.
//!
//! - A **name** is a configured driver (`[drivers.NAME] path = ...`) or, without a path in
//!   its section, a first-party driver: the file `NAME.wasm` (or `strata_driver_NAME.wasm`,
//!   as cargo builds it) in the first of these directories that has it:
//!   `$STRATA_DRIVER_DIR`, `<dir of the strata binary>/drivers`, `<dir of the strata
//!   binary>/../lib/strata/drivers`, `/usr/local/lib/strata/drivers`,
//!   `/usr/lib/strata/drivers`. Any other name is refused with the config it needs.
//! - A **path** (contains `/` or ends in `.wasm`) is the configured driver whose `path` is
//!   the same file, if there is one. Otherwise it is an *unconfigured* driver: its name is
//!   `path-` and 16 hex digits of the SHA-256 of its canonical path, so it gets a home of
//!   its own (the same one each time that file is used) and only the `[sandbox]` defaults.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::Config;

/// Drivers that ship with Strata.
pub const FIRST_PARTY: &[&str] = &["overlay", "vfs", "btrfs", "zfs"];
/// Longest driver name (it is a directory name under `<root>/drivers/`).
pub const MAX_DRIVER_NAME: usize = 64;
/// The prefix of the names given to unconfigured drivers loaded by path; configured names
/// may not use it.
pub const PATH_NAME_PREFIX: &str = "path-";

/// Grants a first-party driver gets on top of `[sandbox] grants` when it is loaded by name
/// from the install directories and its config section names no `grants` of its own: the
/// interfaces of its filesystem, which no other driver gets unless an operator says so.
pub fn builtin_grants(name: &str) -> &'static [&'static str] {
    match name {
        "btrfs" => &["btrfs"],
        "zfs" => &["zfs"],
        _ => &[],
    }
}

/// Directories searched for first-party drivers, in order.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = crate::paths::driver_dir() {
        dirs.push(d);
    }
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        dirs.push(exe_dir.join("drivers"));
        dirs.push(exe_dir.join("../lib/strata/drivers"));
    }
    dirs.push(PathBuf::from("/usr/local/lib/strata/drivers"));
    dirs.push(PathBuf::from("/usr/lib/strata/drivers"));
    dirs
}

/// How a driver got its identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A first-party name found in the install directories: [`builtin_grants`] apply.
    FirstParty,
    /// A `[drivers.NAME]` section with a `path`: its section applies.
    Configured,
    /// A path no section names: `[sandbox]` defaults only, a `path-…` name.
    Unconfigured,
}

/// A driver named on the command line or in config, resolved to a file and an identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverLocation {
    pub name: String,
    pub path: PathBuf,
    pub origin: Origin,
}

impl DriverLocation {
    /// Found by a first-party name in the install directories.
    pub fn first_party(&self) -> bool {
        self.origin == Origin::FirstParty
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("driver `{name}` not found; looked for {file} in: {searched}")]
    NotFound {
        name: String,
        file: String,
        searched: String,
    },
    #[error(
        "driver `{0}` is not a first-party driver ({first}) and is not configured; add \
         [drivers.{0}] with path = \"/path/to/{0}.wasm\" to the config (a driver's name, home \
         and grants come from the config, never from a file name)",
        first = FIRST_PARTY.join(", ")
    )]
    NotConfigured(String),
    #[error("driver path {0} does not exist or is not a file")]
    Missing(PathBuf),
    #[error("driver name `{name}` is not valid: {reason}")]
    BadName { name: String, reason: String },
}

/// Whether `spec` names a file rather than a driver.
pub fn is_path(spec: &str) -> bool {
    spec.contains('/') || spec.ends_with(".wasm")
}

/// Checks a driver name: it becomes a directory name beneath `<root>/drivers/` and
/// `<run_root>/drivers/`, so it is ASCII letters, digits, `_` and `-`, starts with a letter
/// or digit, and is at most [`MAX_DRIVER_NAME`] bytes. `path-` names are reserved.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if name.len() > MAX_DRIVER_NAME {
        return Err(format!("it is longer than {MAX_DRIVER_NAME} bytes"));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err("it must start with a letter or a digit".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err("use ASCII letters, digits, `_` and `-`".into());
    }
    if name.starts_with(PATH_NAME_PREFIX) {
        return Err(format!(
            "names starting with `{PATH_NAME_PREFIX}` are given to unconfigured drivers loaded \
             by path"
        ));
    }
    Ok(())
}

/// The name of an unconfigured driver at `canonical`: from the path, not the file name.
pub fn unconfigured_name(canonical: &Path) -> String {
    let digest = Sha256::digest(canonical.as_os_str().as_encoded_bytes());
    format!("{PATH_NAME_PREFIX}{}", &hex::encode(digest)[..16])
}

/// Resolves `spec` (a name or a path) to a driver file and its identity under `config`.
pub fn locate(spec: &str, config: &Config) -> Result<DriverLocation, LocateError> {
    if is_path(spec) {
        let path = PathBuf::from(spec);
        let canonical = std::fs::canonicalize(&path)
            .ok()
            .filter(|p| p.is_file())
            .ok_or_else(|| LocateError::Missing(path.clone()))?;
        // The configured driver at this file, if any (first section in name order).
        for (name, section) in &config.drivers {
            let Some(p) = &section.path else { continue };
            if std::fs::canonicalize(p).is_ok_and(|c| c == canonical) {
                return Ok(DriverLocation {
                    name: name.clone(),
                    path: canonical,
                    origin: Origin::Configured,
                });
            }
        }
        return Ok(DriverLocation {
            name: unconfigured_name(&canonical),
            path: canonical,
            origin: Origin::Unconfigured,
        });
    }
    check_name(spec).map_err(|reason| LocateError::BadName {
        name: spec.into(),
        reason,
    })?;
    if let Some(p) = config.drivers.get(spec).and_then(|d| d.path.as_ref()) {
        if !p.is_file() {
            return Err(LocateError::Missing(p.clone()));
        }
        return Ok(DriverLocation {
            name: spec.into(),
            path: p.clone(),
            origin: Origin::Configured,
        });
    }
    if !FIRST_PARTY.contains(&spec) {
        return Err(LocateError::NotConfigured(spec.into()));
    }
    let file = format!("{spec}.wasm");
    let built = format!("strata_driver_{spec}.wasm");
    let dirs = search_dirs();
    for dir in &dirs {
        for candidate in [dir.join(&file), dir.join(&built)] {
            if candidate.is_file() {
                return Ok(DriverLocation {
                    name: spec.into(),
                    path: candidate,
                    origin: Origin::FirstParty,
                });
            }
        }
    }
    Err(LocateError::NotFound {
        name: spec.into(),
        file,
        searched: dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Every driver usable by name: the configured ones (with a `path`) and the first-party
/// drivers found in the search directories.
pub fn available(config: &Config) -> Vec<DriverLocation> {
    let mut found: Vec<DriverLocation> = Vec::new();
    for (name, section) in &config.drivers {
        if let Some(path) = &section.path {
            found.push(DriverLocation {
                name: name.clone(),
                path: path.clone(),
                origin: Origin::Configured,
            });
        }
    }
    for name in FIRST_PARTY {
        if found.iter().any(|d| d.name == *name) {
            continue;
        }
        if let Ok(d) = locate(name, config) {
            found.push(d);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::from_str(text, "test.toml").unwrap()
    }

    #[test]
    fn names_and_paths() {
        assert!(is_path("./x.wasm"));
        assert!(is_path("x.wasm"));
        assert!(!is_path("vfs"));
        let none = Config::default();
        assert!(matches!(
            locate("../x", &none),
            Err(LocateError::Missing(_))
        ));
        assert!(matches!(
            locate("a b", &none),
            Err(LocateError::BadName { .. })
        ));
        for bad in ["", "-x", "_x", "a.b", "path-0123", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["vfs", "my-driver_2", "Cache", &"x".repeat(64)] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
        assert_eq!(builtin_grants("btrfs"), ["btrfs"]);
        assert_eq!(builtin_grants("zfs"), ["zfs"]);
        assert!(builtin_grants("vfs").is_empty());
        let err = locate("surely-not-installed", &none)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[drivers.surely-not-installed]") && err.contains("path ="),
            "{err}"
        );
    }

    #[test]
    fn identity_comes_from_config_never_from_a_file_name() {
        let d = tempfile::tempdir().unwrap();
        let overlay = d.path().join("overlay.wasm");
        let cache = d.path().join("cache.wasm");
        std::fs::write(&overlay, b"x").unwrap();
        std::fs::write(&cache, b"x").unwrap();
        let none = Config::default();
        let o = locate(overlay.to_str().unwrap(), &none).unwrap();
        assert_eq!(o.origin, Origin::Unconfigured);
        assert!(o.name.starts_with(PATH_NAME_PREFIX), "{}", o.name);
        assert_ne!(o.name, "overlay");
        let c = locate(cache.to_str().unwrap(), &none).unwrap();
        assert_ne!(c.name, o.name, "two files, two homes");
        assert_eq!(
            locate(overlay.to_str().unwrap(), &none).unwrap().name,
            o.name,
            "the same file, the same home"
        );
        // Configured: the section names it, by path or by name.
        let conf = config(&format!(
            "[drivers.mine]\npath = {:?}\n",
            overlay.to_str().unwrap()
        ));
        let by_path = locate(&format!("{}/./overlay.wasm", d.path().display()), &conf).unwrap();
        assert_eq!(
            (by_path.name.as_str(), by_path.origin),
            ("mine", Origin::Configured)
        );
        let by_name = locate("mine", &conf).unwrap();
        assert_eq!(by_name.origin, Origin::Configured);
        // A section without a path does not make a name a driver.
        let conf = config("[drivers.other]\nmemory = \"64M\"\n");
        assert!(matches!(
            locate("other", &conf),
            Err(LocateError::NotConfigured(_))
        ));
    }
}

//! Where drivers come from: first-party drivers by name, third-party drivers by path.
//!
//! A first-party driver `NAME` is the file `NAME.wasm` (or `strata_driver_NAME.wasm`, as cargo
//! builds it) in the first of these directories that has it: `$STRATA_DRIVER_DIR`, `<dir of the strata binary>/drivers`,
//! `<dir of the strata binary>/../lib/strata/drivers`, `/usr/local/lib/strata/drivers`,
//! `/usr/lib/strata/drivers`. `[drivers.NAME] path` in config overrides the search. Anything
//! containing a `/` or ending in `.wasm` is a path; its name is the file stem.

use std::path::{Path, PathBuf};

/// Drivers that ship with Strata.
pub const FIRST_PARTY: &[&str] = &["overlay", "vfs", "btrfs", "zfs"];

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
    if let Some(d) = std::env::var_os("STRATA_DRIVER_DIR") {
        dirs.push(PathBuf::from(d));
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

/// A driver named on the command line or in config, resolved to a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverLocation {
    pub name: String,
    pub path: PathBuf,
    /// Found by a first-party name in the install directories (not given by path, not a
    /// `[drivers.NAME] path`): only then do [`builtin_grants`] apply.
    pub first_party: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("driver `{name}` not found; looked for {file} in: {searched}")]
    NotFound {
        name: String,
        file: String,
        searched: String,
    },
    #[error("driver path {0} does not exist")]
    Missing(PathBuf),
    #[error("driver name `{0}` is not valid (use letters, digits, `_` and `-`)")]
    BadName(String),
}

/// Whether `spec` names a file rather than a driver.
pub fn is_path(spec: &str) -> bool {
    spec.contains('/') || spec.ends_with(".wasm")
}

/// The name a driver file goes by: its stem, without a `strata_driver_` prefix.
pub fn name_of_path(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "driver".into());
    stem.strip_prefix("strata_driver_")
        .map(str::to_string)
        .unwrap_or(stem)
        .replace('.', "_")
}

/// Resolves `spec` (a name or a path); `configured` is `[drivers.NAME] path` if any.
pub fn locate(spec: &str, configured: Option<&Path>) -> Result<DriverLocation, LocateError> {
    if is_path(spec) {
        let path = PathBuf::from(spec);
        if !path.is_file() {
            return Err(LocateError::Missing(path));
        }
        return Ok(DriverLocation {
            name: name_of_path(&path),
            path,
            first_party: false,
        });
    }
    if spec.is_empty()
        || !spec
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(LocateError::BadName(spec.into()));
    }
    if let Some(p) = configured {
        if !p.is_file() {
            return Err(LocateError::Missing(p.into()));
        }
        return Ok(DriverLocation {
            name: spec.into(),
            path: p.into(),
            first_party: false,
        });
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
                    first_party: FIRST_PARTY.contains(&spec),
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

/// Every driver found in the search directories, first occurrence of each name.
pub fn installed() -> Vec<DriverLocation> {
    let mut found: Vec<DriverLocation> = Vec::new();
    for dir in search_dirs() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
            .collect();
        paths.sort();
        for path in paths {
            let name = name_of_path(&path);
            if !found.iter().any(|d| d.name == name) {
                let first_party = FIRST_PARTY.contains(&name.as_str());
                found.push(DriverLocation {
                    name,
                    path,
                    first_party,
                });
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        assert!(is_path("./x.wasm"));
        assert!(is_path("x.wasm"));
        assert!(!is_path("vfs"));
        assert_eq!(name_of_path(Path::new("/a/strata_driver_vfs.wasm")), "vfs");
        assert_eq!(name_of_path(Path::new("/a/my.driver.wasm")), "my_driver");
        assert!(matches!(locate("../x", None), Err(LocateError::Missing(_))));
        assert!(matches!(locate("a b", None), Err(LocateError::BadName(_))));
        assert_eq!(builtin_grants("btrfs"), ["btrfs"]);
        assert_eq!(builtin_grants("zfs"), ["zfs"]);
        assert!(builtin_grants("vfs").is_empty());
        let err = locate("surely-not-installed", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("surely-not-installed.wasm"), "{err}");
    }
}

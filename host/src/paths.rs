//! Where the host finds its files and what the environment changes: the one place that
//! resolves the config file, the store's root and run root, the component cache and the
//! `STRATA_*` variables. Front ends (the CLI, `serve`, the conformance suite), the library's
//! [`crate::layers::Strata::open`] and the tests' helpers all ask here, so that one setting
//! means the same thing whoever reads it. (What lies beneath a root is [`crate::layout`]'s.)
//!
//! | what | default | changed by |
//! |---|---|---|
//! | config file | [`DEFAULT_CONFIG_FILE`] when it exists, else built-in defaults | `--config FILE` |
//! | store root | [`DEFAULT_ROOT`] | `root` in the config, `--root DIR` |
//! | run root | [`DEFAULT_RUN_ROOT`] | `run_root` in the config, `--run-root DIR` |
//! | component cache | `<root>/cache/components` ([`crate::layout::default_cache_dir`]) | `$STRATA_COMPONENT_CACHE` |
//! | conformance suite's cache | `<scratch>/strata-conformance-cache` (shared by its stores) | `$STRATA_COMPONENT_CACHE` |
//! | first-party drivers | [`crate::registry::search_dirs`] | `$STRATA_DRIVER_DIR` (searched first) |
//!
//! (`$STRATA_LOG`, the drivers' log level, is read by the sandbox's log import.)

use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError};

/// The config file read when none is given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/strata/strata.toml";
/// The store's root unless the config or `--root` says otherwise.
pub const DEFAULT_ROOT: &str = "/var/lib/strata";
/// The run root (host-private runtime state) unless the config or `--run-root` says.
pub const DEFAULT_RUN_ROOT: &str = "/run/strata";
/// Names the directory compiled components are cached in, instead of the default.
pub const COMPONENT_CACHE_ENV: &str = "STRATA_COMPONENT_CACHE";
/// Names a directory searched first for first-party drivers.
pub const DRIVER_DIR_ENV: &str = "STRATA_DRIVER_DIR";
/// The conformance suite's cache beneath its scratch directory: one for all the stores it
/// makes, so the driver is compiled once per run, not once per case.
pub const CONFORMANCE_CACHE_DIR: &str = "strata-conformance-cache";

/// The configuration: the file given, else [`DEFAULT_CONFIG_FILE`] when it exists, else the
/// defaults; then the roots given on the command line over the file's.
pub fn load_config(
    file: Option<&Path>,
    root: Option<&Path>,
    run_root: Option<&Path>,
) -> Result<Config, ConfigError> {
    let default = Path::new(DEFAULT_CONFIG_FILE);
    let mut config = match file {
        Some(path) => Config::load(path)?,
        None if default.is_file() => Config::load(default)?,
        None => Config::default(),
    };
    if let Some(root) = root {
        config.root = root.to_path_buf();
    }
    if let Some(run_root) = run_root {
        config.run_root = run_root.to_path_buf();
    }
    Ok(config)
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Where a store at `root` caches compiled components: `given` (a library caller's
/// choice), else `$STRATA_COMPONENT_CACHE`, else `<root>/cache/components`.
pub fn component_cache(root: &Path, given: Option<PathBuf>) -> PathBuf {
    given
        .or_else(|| env_path(COMPONENT_CACHE_ENV))
        .unwrap_or_else(|| crate::layout::default_cache_dir(root))
}

/// Where the conformance suite run in `scratch` caches compiled components:
/// `$STRATA_COMPONENT_CACHE`, else `<scratch>/strata-conformance-cache`.
pub fn conformance_cache(scratch: &Path) -> PathBuf {
    env_path(COMPONENT_CACHE_ENV).unwrap_or_else(|| scratch.join(CONFORMANCE_CACHE_DIR))
}

/// `$STRATA_DRIVER_DIR`, when set.
pub fn driver_dir() -> Option<PathBuf> {
    env_path(DRIVER_DIR_ENV)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_given_override_the_config_file_and_the_rest_is_kept() {
        let dir = std::env::temp_dir().join(format!("strata-paths-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("strata.toml");
        std::fs::write(
            &file,
            "driver = \"vfs\"\nroot = \"/from/file\"\nrun_root = \"/run/from/file\"\n",
        )
        .unwrap();
        let config = load_config(Some(&file), Some(Path::new("/given")), None).unwrap();
        assert_eq!(config.root, Path::new("/given"));
        assert_eq!(config.run_root, Path::new("/run/from/file"));
        assert_eq!(config.driver, "vfs");
        let config = load_config(Some(&file), None, Some(Path::new("/run/given"))).unwrap();
        assert_eq!(config.root, Path::new("/from/file"));
        assert_eq!(config.run_root, Path::new("/run/given"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_config_file_given_is_an_error() {
        assert!(load_config(Some(Path::new("/nonexistent/strata.toml")), None, None).is_err());
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = Config::default();
        assert_eq!(config.root, Path::new("/var/lib/strata"));
        assert_eq!(config.run_root, Path::new("/run/strata"));
        assert_eq!(
            component_cache(Path::new("/r"), Some(PathBuf::from("/given"))),
            Path::new("/given"),
            "a library caller's cache wins over the environment"
        );
    }
}

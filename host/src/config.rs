//! `strata.toml`: where the store lives, which driver runs it, and the sandbox each driver
//! gets. Modelled on `containers-storage.conf`. Every unknown key and every bad value is
//! refused with a message naming the file and the full dotted key, because a typo in a
//! storage config must never silently fall back to a default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Grants a config may name: the host interfaces of `wit/strata-driver.wit` (and those later
/// drivers bring).
pub const KNOWN_GRANTS: &[&str] = &["files", "copy", "archive", "overlay", "log", "btrfs", "zfs"];
/// Bounds of `memory`.
pub const MIN_MEMORY: u64 = 16 << 20;
pub const MAX_MEMORY: u64 = 16 << 30;
/// Bounds of `deadline`.
pub const MIN_DEADLINE: Duration = Duration::from_millis(10);
pub const MAX_DEADLINE: Duration = Duration::from_secs(3600);
/// Bounds of `call_timeout`: at least the smallest `deadline`, at most a day (one call that
/// holds the store lock for longer is broken, not busy).
pub const MIN_CALL_TIMEOUT: Duration = Duration::from_millis(10);
pub const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Default `call_timeout`: applying a multi-gigabyte layer (a 10 GB layer at a slow disk's
/// 50 MB/s is under 4 minutes) fits with room to spare, while a stuck driver gives the store
/// lock back within minutes.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(600);
/// Largest config file read.
pub const MAX_CONFIG_SIZE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{origin}: cannot read: {cause}")]
    Read {
        origin: String,
        cause: std::io::Error,
    },
    #[error("{origin}: cannot open: {reason}")]
    Open { origin: String, reason: String },
    #[error("{origin}: not valid TOML: {message}")]
    Syntax { origin: String, message: String },
    #[error("{origin}: unknown key {key}")]
    UnknownKey { origin: String, key: String },
    #[error("{origin}: {key}: {message}")]
    BadValue {
        origin: String,
        key: String,
        message: String,
    },
}

/// Sandbox settings: defaults in `[sandbox]`, overridable per driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sandbox {
    /// Bytes of linear memory a driver may grow to, per call.
    pub memory: u64,
    /// The driver's own time per call (guest execution, its waits, small host calls).
    pub deadline: Duration,
    /// Wall-clock time per call, everything included.
    pub call_timeout: Duration,
    /// Host interfaces linked for drivers.
    pub grants: Vec<String>,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            memory: 256 << 20,
            deadline: Duration::from_secs(10),
            call_timeout: DEFAULT_CALL_TIMEOUT,
            grants: ["files", "copy", "archive", "overlay", "log"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// One `[drivers.NAME]` section; absent values fall back to `[sandbox]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DriverConfig {
    pub path: Option<PathBuf>,
    pub options: Vec<(String, String)>,
    pub grants: Option<Vec<String>>,
    pub memory: Option<u64>,
    pub deadline: Option<Duration>,
    pub call_timeout: Option<Duration>,
    /// The parent dataset of a driver granted `zfs` (`tank/strata`).
    pub fsname: Option<String>,
}

/// The effective settings of one driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverSettings {
    pub path: Option<PathBuf>,
    pub options: Vec<(String, String)>,
    pub memory: u64,
    pub deadline: Duration,
    pub call_timeout: Duration,
    /// The parent dataset its `zfs` calls are confined to.
    pub fsname: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Default driver: a first-party name or a path to a `.wasm`.
    pub driver: String,
    pub root: PathBuf,
    pub run_root: PathBuf,
    pub sandbox: Sandbox,
    pub drivers: BTreeMap<String, DriverConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            driver: "overlay".into(),
            root: PathBuf::from(crate::paths::DEFAULT_ROOT),
            run_root: PathBuf::from(crate::paths::DEFAULT_RUN_ROOT),
            sandbox: Sandbox::default(),
            drivers: BTreeMap::new(),
        }
    }
}

struct Parser<'a> {
    origin: &'a str,
}

impl Parser<'_> {
    fn bad(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::BadValue {
            origin: self.origin.into(),
            key: key.into(),
            message: message.into(),
        }
    }

    fn unknown(&self, key: &str) -> ConfigError {
        ConfigError::UnknownKey {
            origin: self.origin.into(),
            key: key.into(),
        }
    }

    fn string(&self, key: &str, v: &toml::Value) -> Result<String, ConfigError> {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| self.bad(key, format!("expected a string, found {}", v.type_str())))
    }

    fn path(&self, key: &str, v: &toml::Value) -> Result<PathBuf, ConfigError> {
        let s = self.string(key, v)?;
        if s.is_empty() {
            return Err(self.bad(key, "must not be empty"));
        }
        Ok(PathBuf::from(s))
    }

    fn table<'v>(&self, key: &str, v: &'v toml::Value) -> Result<&'v toml::Table, ConfigError> {
        v.as_table()
            .ok_or_else(|| self.bad(key, format!("expected a table, found {}", v.type_str())))
    }

    fn memory(&self, key: &str, v: &toml::Value) -> Result<u64, ConfigError> {
        let bytes = match v {
            toml::Value::Integer(i) => u64::try_from(*i).ok(),
            toml::Value::String(s) => parse_size(s),
            _ => None,
        }
        .ok_or_else(|| self.bad(key, format!("{v} is not a size (use bytes with K, M or G)")))?;
        if !(MIN_MEMORY..=MAX_MEMORY).contains(&bytes) {
            return Err(self.bad(key, format!("{v} is outside 16M..16G")));
        }
        Ok(bytes)
    }

    fn deadline(&self, key: &str, v: &toml::Value) -> Result<Duration, ConfigError> {
        let d = v.as_str().and_then(parse_duration).ok_or_else(|| {
            self.bad(
                key,
                format!("{v} is not a duration (use \"500ms\", \"10s\", \"2m\")"),
            )
        })?;
        if !(MIN_DEADLINE..=MAX_DEADLINE).contains(&d) {
            return Err(self.bad(key, format!("{v} is outside 10ms..1h")));
        }
        Ok(d)
    }

    fn call_timeout(&self, key: &str, v: &toml::Value) -> Result<Duration, ConfigError> {
        let d = v.as_str().and_then(parse_duration).ok_or_else(|| {
            self.bad(
                key,
                format!("{v} is not a duration (use \"30s\", \"10m\", \"1h\")"),
            )
        })?;
        if !(MIN_CALL_TIMEOUT..=MAX_CALL_TIMEOUT).contains(&d) {
            return Err(self.bad(key, format!("{v} is outside 10ms..24h")));
        }
        Ok(d)
    }

    fn grants(&self, key: &str, v: &toml::Value) -> Result<Vec<String>, ConfigError> {
        let arr = v
            .as_array()
            .ok_or_else(|| self.bad(key, format!("expected a list, found {}", v.type_str())))?;
        let mut out = Vec::new();
        for item in arr {
            let g = self.string(key, item)?;
            if !KNOWN_GRANTS.contains(&g.as_str()) {
                return Err(self.bad(
                    key,
                    format!("unknown grant `{g}` (valid: {})", KNOWN_GRANTS.join(", ")),
                ));
            }
            if !out.contains(&g) {
                out.push(g);
            }
        }
        Ok(out)
    }

    fn sandbox(&self, t: &toml::Table) -> Result<Sandbox, ConfigError> {
        let mut s = Sandbox::default();
        for (k, v) in t {
            let key = format!("sandbox.{k}");
            match k.as_str() {
                "memory" => s.memory = self.memory(&key, v)?,
                "deadline" => s.deadline = self.deadline(&key, v)?,
                "call_timeout" => s.call_timeout = self.call_timeout(&key, v)?,
                "grants" => s.grants = self.grants(&key, v)?,
                _ => return Err(self.unknown(&key)),
            }
        }
        Ok(s)
    }

    fn driver(&self, name: &str, t: &toml::Table) -> Result<DriverConfig, ConfigError> {
        let mut d = DriverConfig::default();
        for (k, v) in t {
            let key = format!("drivers.{name}.{k}");
            match k.as_str() {
                "path" => d.path = Some(self.path(&key, v)?),
                "options" => {
                    for (ok, ov) in self.table(&key, v)? {
                        let okey = format!("{key}.{ok}");
                        let value = match ov {
                            toml::Value::String(s) => s.clone(),
                            toml::Value::Integer(i) => i.to_string(),
                            toml::Value::Boolean(b) => b.to_string(),
                            other => {
                                return Err(self.bad(
                                    &okey,
                                    format!(
                                        "expected a string, number or boolean, found {}",
                                        other.type_str()
                                    ),
                                ));
                            }
                        };
                        d.options.push((ok.clone(), value));
                    }
                }
                "grants" => d.grants = Some(self.grants(&key, v)?),
                "memory" => d.memory = Some(self.memory(&key, v)?),
                "deadline" => d.deadline = Some(self.deadline(&key, v)?),
                "call_timeout" => d.call_timeout = Some(self.call_timeout(&key, v)?),
                "fsname" => {
                    let name = self.string(&key, v)?;
                    crate::sys::zfs::check_parent_name(&name).map_err(|m| self.bad(&key, m))?;
                    d.fsname = Some(name);
                }
                _ => return Err(self.unknown(&key)),
            }
        }
        Ok(d)
    }
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let origin = crate::text::quote_path(&path.to_string_lossy()).into_owned();
        let read = |cause| ConfigError::Read {
            origin: origin.clone(),
            cause,
        };
        // Opened without blocking and checked on the descriptor: a FIFO or a device named by
        // `--config` is refused, not waited on or read without end; the cap holds for the
        // bytes read, not the size `stat` claims (0 for a device).
        let (file, _) =
            crate::sys::named::open_named_file(path).map_err(|e| ConfigError::Open {
                origin: origin.clone(),
                reason: e.reason(),
            })?;
        let bytes = crate::sys::named::read_capped(&file, MAX_CONFIG_SIZE)
            .map_err(read)?
            .ok_or_else(|| ConfigError::Syntax {
                origin: origin.clone(),
                message: format!("larger than {MAX_CONFIG_SIZE} bytes"),
            })?;
        let text = String::from_utf8(bytes).map_err(|_| ConfigError::Syntax {
            origin: origin.clone(),
            message: "not UTF-8 text".into(),
        })?;
        Config::from_str(&text, &origin)
    }

    /// Parses config text; `origin` names it in messages.
    pub fn from_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    origin: origin.into(),
                    message: e.message().to_string(),
                })?;
        let p = Parser { origin };
        let mut c = Config::default();
        for (k, v) in &table {
            match k.as_str() {
                "driver" => {
                    c.driver = p.string(k, v)?;
                    if c.driver.is_empty() {
                        return Err(p.bad(k, "must not be empty"));
                    }
                }
                "root" => c.root = p.path(k, v)?,
                "run_root" => c.run_root = p.path(k, v)?,
                "sandbox" => c.sandbox = p.sandbox(p.table(k, v)?)?,
                "drivers" => {
                    for (name, section) in p.table(k, v)? {
                        let key = format!("drivers.{name}");
                        crate::registry::check_name(name)
                            .map_err(|m| p.bad(&key, format!("not a valid driver name: {m}")))?;
                        let t = p.table(&key, section)?;
                        c.drivers.insert(name.clone(), p.driver(name, t)?);
                    }
                }
                _ => return Err(p.unknown(k)),
            }
        }
        Ok(c)
    }

    /// The grants of driver `name`: its section's `grants` if it has them, else `[sandbox]
    /// grants` plus, for a first-party driver loaded by name (`first_party`), the interfaces
    /// of its own filesystem ([`crate::registry::builtin_grants`]).
    pub fn driver_grants(&self, name: &str, first_party: bool) -> Vec<String> {
        if let Some(explicit) = self.drivers.get(name).and_then(|d| d.grants.clone()) {
            return explicit;
        }
        let mut grants = self.sandbox.grants.clone();
        if first_party {
            for g in crate::registry::builtin_grants(name) {
                if !grants.iter().any(|x| x == g) {
                    grants.push((*g).to_string());
                }
            }
        }
        grants
    }

    /// The effective settings of driver `name`: its section over `[sandbox]`.
    pub fn driver_settings(&self, name: &str) -> DriverSettings {
        let d = self.drivers.get(name).cloned().unwrap_or_default();
        DriverSettings {
            path: d.path,
            options: d.options,
            memory: d.memory.unwrap_or(self.sandbox.memory),
            deadline: d.deadline.unwrap_or(self.sandbox.deadline),
            call_timeout: d.call_timeout.unwrap_or(self.sandbox.call_timeout),
            fsname: d.fsname,
        }
    }
}

/// `1024`, `64K`, `256M`, `2G` (binary multiples; `KiB`/`MB` spellings accepted).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.char_indices().last()? {
        (i, 'k' | 'K') => (&t[..i], 10),
        (i, 'm' | 'M') => (&t[..i], 20),
        (i, 'g' | 'G') => (&t[..i], 30),
        (i, 't' | 'T') => (&t[..i], 40),
        _ => (t, 0),
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// `500ms`, `10s`, `2m`, `1h`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let (n, unit): (&str, fn(u64) -> Duration) = if let Some(n) = t.strip_suffix("ms") {
        (n, Duration::from_millis)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, Duration::from_secs)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, |m| Duration::from_secs(m * 60))
    } else if let Some(n) = t.strip_suffix('h') {
        (n, |h| Duration::from_secs(h * 3600))
    } else {
        return None;
    };
    n.trim()
        .parse::<u64>()
        .ok()
        .filter(|v| *v < 1 << 32)
        .map(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::from_str(text, "strata.toml")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn defaults() {
        let c = Config::from_str("", "x").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.root, PathBuf::from("/var/lib/strata"));
        assert_eq!(c.run_root, PathBuf::from("/run/strata"));
        let s = c.driver_settings("vfs");
        assert_eq!(s.memory, 256 << 20);
        assert_eq!(s.deadline, Duration::from_secs(10));
        assert_eq!(s.call_timeout, Duration::from_secs(600));
        assert_eq!(
            c.driver_grants("vfs", true),
            vec!["files", "copy", "archive", "overlay", "log"]
        );
        assert_eq!(
            c.driver_grants("btrfs", true),
            vec!["files", "copy", "archive", "overlay", "log", "btrfs"]
        );
        // A file called btrfs.wasm given by path is not the first-party driver.
        assert_eq!(
            c.driver_grants("btrfs", false),
            vec!["files", "copy", "archive", "overlay", "log"]
        );
    }

    #[test]
    fn full_file_with_overrides() {
        let c = Config::from_str(
            r#"
driver = "/opt/x.wasm"
root = "/srv/strata"
run_root = "/run/s"
[sandbox]
memory = "512M"
deadline = "500ms"
call_timeout = "20m"
grants = ["files", "log"]
[drivers.vfs]
path = "/opt/vfs.wasm"
options = { "a.b" = "c", n = 3 }
memory = 33554432
deadline = "2m"
call_timeout = "1h"
[drivers.other]
grants = ["log"]
[drivers.zfs]
fsname = "tank/strata"
"#,
            "t",
        )
        .unwrap();
        assert_eq!(c.driver, "/opt/x.wasm");
        let v = c.driver_settings("vfs");
        assert_eq!(v.path, Some(PathBuf::from("/opt/vfs.wasm")));
        assert_eq!(
            v.options,
            vec![("a.b".into(), "c".into()), ("n".into(), "3".into())]
        );
        assert_eq!(v.memory, 32 << 20);
        assert_eq!(v.deadline, Duration::from_secs(120));
        assert_eq!(v.call_timeout, Duration::from_secs(3600));
        assert_eq!(c.driver_grants("vfs", true), vec!["files", "log"]);
        let o = c.driver_settings("other");
        assert_eq!(c.driver_grants("other", false), vec!["log"]);
        assert_eq!(o.memory, 512 << 20);
        assert_eq!(o.deadline, Duration::from_millis(500));
        assert_eq!(o.call_timeout, Duration::from_secs(1200));
        assert_eq!(
            c.driver_settings("zfs").fsname.as_deref(),
            Some("tank/strata")
        );
        assert_eq!(o.fsname, None);
    }

    #[test]
    fn bad_keys_and_values_are_named() {
        for (text, needle) in [
            ("drivr = \"vfs\"", "unknown key drivr"),
            ("root = 3", "root: expected a string"),
            ("[sandbox]\nmemory = \"12Q\"", "sandbox.memory"),
            ("[sandbox]\nmemory = \"1K\"", "outside 16M..16G"),
            ("[sandbox]\ndeadline = \"forever\"", "sandbox.deadline"),
            ("[sandbox]\ndeadline = \"2h\"", "outside 10ms..1h"),
            ("[sandbox]\ncall_timeout = 30", "sandbox.call_timeout"),
            (
                "[drivers.vfs]\ncall_timeout = \"25h\"",
                "drivers.vfs.call_timeout: \"25h\" is outside 10ms..24h",
            ),
            (
                "[sandbox]\ngrants = [\"files\", \"net\"]",
                "unknown grant `net`",
            ),
            ("[sandbox]\nswap = 1", "unknown key sandbox.swap"),
            (
                "[drivers.vfs]\npathh = \"/x\"",
                "unknown key drivers.vfs.pathh",
            ),
            (
                "[drivers.vfs]\noptions = { a = [1] }",
                "drivers.vfs.options.a",
            ),
            ("drivers = 1", "drivers: expected a table"),
            (
                "[drivers.zfs]\nfsname = \"/tank/strata\"",
                "drivers.zfs.fsname: `/tank/strata` is not a dataset name",
            ),
            (
                "[drivers.zfs]\nfsname = \"tank@snap\"",
                "drivers.zfs.fsname",
            ),
            (
                "[drivers.zfs]\nfsname = 3",
                "drivers.zfs.fsname: expected a string",
            ),
            ("root = ", "not valid TOML"),
            (
                "[drivers.\"../x\"]\npath = \"/x.wasm\"",
                "drivers.../x: not a valid driver name",
            ),
            (
                "[drivers.path-0123]\npath = \"/x.wasm\"",
                "drivers.path-0123: not a valid driver name",
            ),
        ] {
            let e = err(text);
            assert!(e.contains(needle), "{text:?}: {e}");
            assert!(e.starts_with("strata.toml"), "{e}");
        }
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("64K"), Some(64 << 10));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("3h"), Some(Duration::from_secs(3 * 3600)));
        assert_eq!(parse_duration("3"), None);
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod syntax_tests;

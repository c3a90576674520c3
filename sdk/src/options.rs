//! Key/value options as the host passes them (`--opt KEY=VALUE`, `[drivers.NAME] options`).

use crate::{Error, error};

/// Options with one meaning across drivers (`size`: a layer's quota, as in
/// containers/storage). The conformance suite holds drivers to it.
pub const GENERIC_OPTIONS: &[&str] = &["size"];

/// Options given to `init`, `create` or `mount-plan`, in the order the operator gave them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options(pub Vec<(String, String)>);

impl Options {
    /// The last value given for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Fails with `invalid-argument` naming the first key not in `known`, so a typo never
    /// passes silently. A key every Strata driver is expected to understand (such as `size`,
    /// see [`GENERIC_OPTIONS`]) that this driver does not take is `unsupported` instead: the
    /// operator asked for a real feature this driver lacks.
    pub fn reject_unknown(&self, known: &[&str]) -> Result<(), Error> {
        match self.0.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            Some((k, _)) if GENERIC_OPTIONS.contains(&k.as_str()) => Err(error::unsupported(
                format!("this driver does not support option `{k}`"),
            )),
            Some((k, _)) if known.is_empty() => Err(error::invalid_argument(format!(
                "unknown option `{k}`: this driver takes no options here"
            ))),
            Some((k, _)) => Err(error::invalid_argument(format!(
                "unknown option `{k}` (known: {})",
                known.join(", ")
            ))),
            None => Ok(()),
        }
    }

    /// A size option such as `size=10G`, in bytes.
    pub fn size(&self, key: &str) -> Result<Option<u64>, Error> {
        self.get(key)
            .map(|v| {
                parse_size(v).ok_or_else(|| {
                    error::invalid_argument(format!(
                        "option `{key}`: `{v}` is not a size (bytes with K, M, G or T)"
                    ))
                })
            })
            .transpose()
    }
}

impl Options {
    /// Reads options kept with [`Options::save`]; a missing file holds none. `init` runs
    /// once per host start and every later call is a fresh instance, so a driver that needs
    /// its operator options later keeps them in a file of its home.
    pub fn load(path: &str) -> Result<Options, Error> {
        let text = crate::read_small_file(path)?.unwrap_or_default();
        Ok(Options(
            text.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ))
    }

    /// Keeps these options in `path` (one `KEY=VALUE` a line, replaced whole, left alone
    /// when unchanged). A key or value with a line break, or a key with `=`, is refused.
    pub fn save(&self, path: &str) -> Result<(), Error> {
        let mut text = String::new();
        for (k, v) in &self.0 {
            if k.contains(['\n', '\r', '=']) || v.contains(['\n', '\r']) {
                return Err(error::invalid_argument(format!(
                    "option `{}` cannot be kept: line breaks (and `=` in keys) are not allowed",
                    k.escape_debug()
                )));
            }
            text.push_str(&format!("{k}={v}\n"));
        }
        crate::write_small_file(path, &text)
    }
}

/// The `size=` option of a driver that limits a layer's bytes (btrfs qgroups, zfs quotas),
/// and the operator's default `size` such a driver keeps across calls.
pub struct SizeOption {
    /// The smallest limit accepted.
    pub min: u64,
    /// What needs that much room, for the error (`a dataset`).
    pub holder: &'static str,
}

impl SizeOption {
    /// `size=` of `options` (the only option accepted), refused below [`SizeOption::min`].
    pub fn parse(&self, options: &Options) -> Result<Option<u64>, Error> {
        options.reject_unknown(&["size"])?;
        let size = options.size("size")?;
        if let Some(s) = size
            && s < self.min
        {
            return Err(error::invalid_argument(format!(
                "size: {s} bytes is less than the {} {} needs",
                self.min, self.holder
            )));
        }
        Ok(size)
    }

    /// Keeps the operator's default in `path` (see [`Options::save`]).
    pub fn save_default(&self, path: &str, default: Option<u64>) -> Result<(), Error> {
        let pairs = default
            .map(|s| ("size".to_string(), s.to_string()))
            .into_iter()
            .collect();
        Options(pairs).save(path)
    }

    /// The default kept by [`SizeOption::save_default`], checked again.
    pub fn load_default(&self, path: &str) -> Result<Option<u64>, Error> {
        self.parse(&Options::load(path)?)
    }
}

impl From<Vec<(String, String)>> for Options {
    fn from(pairs: Vec<(String, String)>) -> Self {
        Options(pairs)
    }
}

/// Parses `1024`, `64K`, `10M`, `2G`, `1T` (binary multiples; a trailing `B`/`iB` is allowed).
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
    let n: u64 = digits.trim().parse().ok()?;
    n.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("50M"), Some(50 << 20));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("10x"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("99999999999T"), None);
    }

    #[test]
    fn unknown_options_are_named() {
        let o = Options(vec![
            ("size".into(), "1G".into()),
            ("sise".into(), "1".into()),
        ]);
        let Err(Error::InvalidArgument(m)) = o.reject_unknown(&["size"]) else {
            panic!("expected invalid-argument")
        };
        assert!(m.contains("`sise`"), "{m}");
        assert_eq!(o.size("size").unwrap(), Some(1 << 30));
        assert_eq!(o.get("nope"), None);
    }

    #[test]
    fn size_options_below_the_minimum_are_refused() {
        let limit = SizeOption {
            min: 1 << 20,
            holder: "a dataset",
        };
        let o = |v: &str| Options(vec![("size".into(), v.into())]);
        assert_eq!(limit.parse(&o("2M")).unwrap(), Some(2 << 20));
        let Err(Error::InvalidArgument(m)) = limit.parse(&o("1K")) else {
            panic!("expected invalid-argument")
        };
        assert_eq!(
            m,
            "size: 1024 bytes is less than the 1048576 a dataset needs"
        );
        assert!(
            limit
                .parse(&Options(vec![("sise".into(), "1".into())]))
                .is_err()
        );
        assert_eq!(limit.parse(&Options(vec![])).unwrap(), None);
    }

    #[test]
    fn a_generic_option_a_driver_lacks_is_unsupported() {
        let o = Options(vec![("size".into(), "1G".into())]);
        let Err(Error::Unsupported(m)) = o.reject_unknown(&[]) else {
            panic!("expected unsupported")
        };
        assert!(m.contains("`size`"), "{m}");
    }
}

#[cfg(test)]
#[path = "options_tests.rs"]
mod reading_tests;

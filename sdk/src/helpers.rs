//! Small pieces every driver needs, built on the `files` capability.

use crate::host::files;
use crate::{BindMount, Error, MountKind, MountPlan, error};

/// The longest layer id the host accepts.
pub const MAX_ID_LEN: usize = 128;

/// Checks that `id` is a single safe path component: `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most
/// [`MAX_ID_LEN`] bytes. The host validates ids too; a driver checking again keeps a bad id
/// from ever becoming a path.
pub fn validate_id(id: &str) -> Result<(), Error> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok && id.len() <= MAX_ID_LEN {
        Ok(())
    } else {
        Err(error::invalid_argument(format!("invalid layer id `{id}`")))
    }
}

/// Whether `path` (relative to the home) exists, without following a final symlink.
pub fn exists(path: &str) -> bool {
    files::stat(path).is_ok()
}

/// Creates directory `path` (mode `mode`, owner 0:0) unless it already exists as one.
pub fn ensure_dir(path: &str, mode: u32) -> Result<(), Error> {
    match files::stat(path) {
        Ok(st) if st.kind == files::FileKind::Directory => Ok(()),
        Ok(_) => Err(error::already_exists(format!(
            "{path} exists and is not a directory"
        ))),
        Err(Error::NotFound(_)) => match files::mkdir(path, mode, 0, 0) {
            Err(Error::AlreadyExists(_)) => Ok(()),
            other => other,
        },
        Err(e) => Err(e),
    }
}

/// Removes `path` and everything beneath it; a missing path is not an error.
pub fn remove_if_exists(path: &str) -> Result<(), Error> {
    match files::remove_tree(path) {
        Err(Error::NotFound(_)) => Ok(()),
        other => other,
    }
}

/// A bind-mount plan for a layer kept as one directory: `source` appears at `mnt/ID`, a
/// mount point this creates.
pub fn bind_plan(source: &str, id: &str, read_only: bool) -> Result<MountPlan, Error> {
    validate_id(id)?;
    ensure_dir("mnt", 0o700)?;
    let target = format!("mnt/{id}");
    ensure_dir(&target, 0o755)?;
    Ok(MountPlan {
        target,
        kind: MountKind::Bind(BindMount {
            source: source.to_string(),
        }),
        read_only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(validate_id("abc123").is_ok());
        assert!(validate_id("a.b-c_d").is_ok());
        for bad in [
            "",
            "..",
            ".x",
            "a/b",
            "-a",
            "a b",
            &"x".repeat(MAX_ID_LEN + 1),
        ] {
            assert!(validate_id(bad).is_err(), "{bad:?} accepted");
        }
    }
}

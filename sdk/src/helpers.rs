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

/// Largest file [`read_small_file`] reads: drivers keep bookkeeping, not data, in files.
pub const MAX_SMALL_FILE: u64 = 1 << 20;

/// Reads a small bookkeeping file of the home (`None` when it does not exist). The guest
/// reads it itself, through the home it was given; no capability is needed.
pub fn read_small_file(path: &str) -> Result<Option<String>, Error> {
    use std::io::Read;
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(error::from_io(format!("reading {path}"), e)),
    };
    let mut text = String::new();
    f.take(MAX_SMALL_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| error::from_io(format!("reading {path}"), e))?;
    if text.len() as u64 > MAX_SMALL_FILE {
        return Err(error::invalid_argument(format!(
            "{path} is larger than {MAX_SMALL_FILE} bytes"
        )));
    }
    Ok(Some(text))
}

/// Writes a small bookkeeping file of the home, replacing it whole: written to a temporary
/// name, then renamed, so a crash leaves the old content or the new, never half. A file that
/// already holds `contents` is left alone.
pub fn write_small_file(path: &str, contents: &str) -> Result<(), Error> {
    if std::fs::read(path).is_ok_and(|old| old == contents.as_bytes()) {
        return Ok(());
    }
    let tmp = format!("{path}.tmp");
    std::fs::write(&tmp, contents)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| error::from_io(format!("writing {path}"), e))
}

/// Where [`bind_plan`] mounts layer `id`: `mnt/ID`.
pub fn bind_target(id: &str) -> String {
    format!("mnt/{id}")
}

/// Removes the mount point [`bind_plan`] made for layer `id` (after its last unmount, or when
/// the layer goes); a missing one is not an error.
pub fn remove_bind_target(id: &str) -> Result<(), Error> {
    validate_id(id)?;
    remove_if_exists(&bind_target(id))
}

/// A bind-mount plan for a layer kept as one directory: `source` appears at `mnt/ID`, a
/// mount point this creates.
pub fn bind_plan(source: &str, id: &str, read_only: bool) -> Result<MountPlan, Error> {
    validate_id(id)?;
    ensure_dir("mnt", 0o700)?;
    let target = bind_target(id);
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

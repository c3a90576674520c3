//! What the suite writes into layers: small filesystem operations ("appliers", in containerd's
//! words) that are applied both to a mounted layer and to a plain directory, whose manifests
//! must then agree.
//!
//! Every regular file gets an explicit mtime, unique across the run unless a case pins one,
//! so that "modified" never depends on the clock's resolution and mtimes can be compared.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};

use rustix::fs::{CWD, FileType, Mode, Timespec, Timestamps, XattrFlags};

/// The first mtime handed out (2020-09-13), then one second more per file written.
const FIRST_MTIME: i64 = 1_600_000_000;
static NEXT_MTIME: AtomicI64 = AtomicI64::new(FIRST_MTIME);

/// A fresh mtime, later than every one handed out before.
pub fn next_mtime() -> i64 {
    NEXT_MTIME.fetch_add(1, Ordering::Relaxed)
}

#[derive(Clone, Debug)]
pub enum Op {
    /// mkdir (the parent must exist), then chmod to `mode` (no umask).
    Dir {
        path: String,
        mode: u32,
    },
    /// Create or truncate, write, chmod, set atime and mtime.
    File {
        path: String,
        data: Vec<u8>,
        mode: u32,
        mtime: i64,
    },
    Symlink {
        path: String,
        target: String,
    },
    Hardlink {
        path: String,
        existing: String,
    },
    Fifo {
        path: String,
        mode: u32,
        mtime: i64,
    },
    Device {
        path: String,
        block: bool,
        major: u32,
        minor: u32,
        mode: u32,
        mtime: i64,
    },
    /// lchown (clears setuid/setgid on files, so chmod after it).
    Chown {
        path: String,
        uid: u32,
        gid: u32,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    Xattr {
        path: String,
        name: String,
        value: Vec<u8>,
    },
    /// rm -rf; a missing path is an error (the case is wrong, not the driver).
    RemoveAll {
        path: String,
    },
    /// rename, falling back to what `mv` does when the filesystem refuses (overlayfs without
    /// `redirect_dir` answers EXDEV for a directory from a lower layer).
    Rename {
        from: String,
        to: String,
    },
}

pub fn dir(path: &str, mode: u32) -> Op {
    Op::Dir {
        path: path.into(),
        mode,
    }
}

pub fn file(path: &str, data: impl Into<Vec<u8>>, mode: u32) -> Op {
    file_at(path, data, mode, next_mtime())
}

/// A file with a chosen mtime (to rewrite a file keeping size and mtime).
pub fn file_at(path: &str, data: impl Into<Vec<u8>>, mode: u32, mtime: i64) -> Op {
    Op::File {
        path: path.into(),
        data: data.into(),
        mode,
        mtime,
    }
}

pub fn symlink(path: &str, target: &str) -> Op {
    Op::Symlink {
        path: path.into(),
        target: target.into(),
    }
}

pub fn hardlink(path: &str, existing: &str) -> Op {
    Op::Hardlink {
        path: path.into(),
        existing: existing.into(),
    }
}

pub fn fifo(path: &str, mode: u32) -> Op {
    Op::Fifo {
        path: path.into(),
        mode,
        mtime: next_mtime(),
    }
}

pub fn device(path: &str, block: bool, major: u32, minor: u32, mode: u32) -> Op {
    Op::Device {
        path: path.into(),
        block,
        major,
        minor,
        mode,
        mtime: next_mtime(),
    }
}

pub fn chown(path: &str, uid: u32, gid: u32) -> Op {
    Op::Chown {
        path: path.into(),
        uid,
        gid,
    }
}

pub fn chmod(path: &str, mode: u32) -> Op {
    Op::Chmod {
        path: path.into(),
        mode,
    }
}

pub fn xattr(path: &str, name: &str, value: &[u8]) -> Op {
    Op::Xattr {
        path: path.into(),
        name: name.into(),
        value: value.to_vec(),
    }
}

pub fn remove_all(path: &str) -> Op {
    Op::RemoveAll { path: path.into() }
}

pub fn rename(from: &str, to: &str) -> Op {
    Op::Rename {
        from: from.into(),
        to: to.into(),
    }
}

/// `len` bytes determined by `seed` (splitmix64), the same on every run and machine.
pub fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn at(root: &Path, rel: &str) -> PathBuf {
    root.join(rel.trim_start_matches('/'))
}

fn chmod_path(p: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
}

/// Sets atime and mtime of `p` (not following a symlink) to `mtime` seconds.
fn set_mtime(p: &Path, mtime: i64) -> std::io::Result<()> {
    let t = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        CWD,
        p,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )?;
    Ok(())
}

/// Applies `ops` in order beneath `root`.
pub fn apply(root: &Path, ops: &[Op]) -> Result<(), String> {
    for op in ops {
        apply_one(root, op).map_err(|e| format!("{op:?} beneath {}: {e}", root.display()))?;
    }
    Ok(())
}

fn apply_one(root: &Path, op: &Op) -> std::io::Result<()> {
    match op {
        Op::Dir { path, mode } => {
            let p = at(root, path);
            std::fs::create_dir(&p)?;
            chmod_path(&p, *mode)
        }
        Op::File {
            path,
            data,
            mode,
            mtime,
        } => {
            let p = at(root, path);
            std::fs::write(&p, data)?;
            chmod_path(&p, *mode)?;
            set_mtime(&p, *mtime)
        }
        Op::Symlink { path, target } => std::os::unix::fs::symlink(target, at(root, path)),
        Op::Hardlink { path, existing } => std::fs::hard_link(at(root, existing), at(root, path)),
        Op::Fifo { path, mode, mtime } => {
            let p = at(root, path);
            rustix::fs::mknodat(CWD, &p, FileType::Fifo, Mode::from_raw_mode(*mode), 0)?;
            chmod_path(&p, *mode)?;
            set_mtime(&p, *mtime)
        }
        Op::Device {
            path,
            block,
            major,
            minor,
            mode,
            mtime,
        } => {
            let p = at(root, path);
            let ft = if *block {
                FileType::BlockDevice
            } else {
                FileType::CharacterDevice
            };
            rustix::fs::mknodat(
                CWD,
                &p,
                ft,
                Mode::from_raw_mode(*mode),
                rustix::fs::makedev(*major, *minor),
            )?;
            chmod_path(&p, *mode)?;
            set_mtime(&p, *mtime)
        }
        Op::Chown { path, uid, gid } => {
            std::os::unix::fs::lchown(at(root, path), Some(*uid), Some(*gid))
        }
        Op::Chmod { path, mode } => chmod_path(&at(root, path), *mode),
        Op::Xattr { path, name, value } => {
            rustix::fs::lsetxattr(at(root, path), name.as_str(), value, XattrFlags::empty())?;
            Ok(())
        }
        Op::RemoveAll { path } => {
            let p = at(root, path);
            if std::fs::symlink_metadata(&p)?.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            }
        }
        Op::Rename { from, to } => move_path(&at(root, from), &at(root, to)),
    }
}

/// `mv FROM TO`: a rename, or where the filesystem answers EXDEV for a directory, a new
/// directory with the same mode and owner, its entries moved one by one, the old one removed.
fn move_path(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
            use std::os::unix::fs::MetadataExt;
            let md = std::fs::symlink_metadata(from)?;
            if !md.is_dir() {
                return Err(e);
            }
            std::fs::create_dir(to)?;
            std::os::unix::fs::lchown(to, Some(md.uid()), Some(md.gid()))?;
            chmod_path(to, md.mode() & 0o7777)?;
            for entry in std::fs::read_dir(from)? {
                let name = entry?.file_name();
                move_path(&from.join(&name), &to.join(&name))?;
            }
            std::fs::remove_dir(from)
        }
        other => other,
    }
}

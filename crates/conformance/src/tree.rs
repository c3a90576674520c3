//! An independent oracle for "identical trees": a manifest of everything a layer holds, read
//! with plain `lstat`/`readlink`/`l*xattr` through whatever the driver mounted. It shares no
//! code with the host's archive or copy modules, so a bug there cannot hide itself.
//!
//! Compared per path: type, permission bits with setuid/setgid/sticky, uid, gid, content
//! (regular files), target (symlinks), device numbers, the mtime of non-directories, xattrs
//! (except `security.selinux`, which the backing filesystem assigns), and which paths share
//! an inode (hardlink groups). Directory mtimes are not compared: every driver touches them.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use sha2::{Digest, Sha256};

/// Most entries a manifest holds: a runaway tree fails instead of exhausting memory.
pub const MAX_MANIFEST_ENTRIES: usize = 1_000_000;
/// Largest xattr list or value read.
const MAX_XATTR_BYTES: usize = 64 * 1024;

/// Everything that must survive a copy, a mount or a diff round trip, for one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// SHA-256 of the content (regular files) or the link target (symlinks).
    pub digest: Option<String>,
    /// (major, minor) of devices.
    pub rdev: Option<(u32, u32)>,
    /// mtime (seconds, nanoseconds) of non-directories other than symlinks.
    pub mtime: Option<(i64, i64)>,
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// The first path (in sorted order) sharing this inode, for files with several links.
    pub link_group: Option<String>,
}

/// A tree's manifest: `/`-prefixed paths (the root itself is `/`) to their metadata.
pub type Manifest = BTreeMap<String, Meta>;

fn kind(ft: std::fs::FileType) -> &'static str {
    if ft.is_symlink() {
        "symlink"
    } else if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_char_device() {
        "char-device"
    } else if ft.is_block_device() {
        "block-device"
    } else {
        "socket"
    }
}

fn xattrs(path: &Path) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut list = vec![0u8; MAX_XATTR_BYTES];
    let n = match rustix::fs::llistxattr(path, &mut list[..]) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Ok(vec![]),
        Err(e) => return Err(format!("{}: listing xattrs: {e}", path.display())),
    };
    let mut out = Vec::new();
    for name in list[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        if name == "security.selinux" {
            continue;
        }
        let mut value = vec![0u8; MAX_XATTR_BYTES];
        let len = rustix::fs::lgetxattr(path, name.as_str(), &mut value[..])
            .map_err(|e| format!("{}: reading xattr {name}: {e}", path.display()))?;
        value.truncate(len);
        out.push((name, value));
    }
    out.sort();
    Ok(out)
}

/// The manifest of the tree at `root`. `lost+found` at the top is skipped (a filesystem's,
/// not a layer's).
pub fn manifest(root: &Path) -> Result<Manifest, String> {
    let mut out = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), Vec<String>> = HashMap::new();
    walk(root, "", &mut out, &mut inodes)?;
    for paths in inodes.values().filter(|p| p.len() > 1) {
        let first = paths.iter().min().expect("non-empty").clone();
        for p in paths {
            if let Some(m) = out.get_mut(p) {
                m.link_group = Some(first.clone());
            }
        }
    }
    Ok(out)
}

fn walk(
    path: &Path,
    rel: &str,
    out: &mut Manifest,
    inodes: &mut HashMap<(u64, u64), Vec<String>>,
) -> Result<(), String> {
    if out.len() >= MAX_MANIFEST_ENTRIES {
        return Err(format!(
            "more than {MAX_MANIFEST_ENTRIES} entries beneath the tree"
        ));
    }
    let io = |what: &str, e: std::io::Error| format!("{}: {what}: {e}", path.display());
    let md = std::fs::symlink_metadata(path).map_err(|e| io("lstat", e))?;
    let k = kind(md.file_type());
    let key = if rel.is_empty() {
        "/".to_string()
    } else {
        rel.to_string()
    };
    let digest = match k {
        "file" => Some(hex::encode(Sha256::digest(
            std::fs::read(path).map_err(|e| io("reading", e))?,
        ))),
        "symlink" => Some(hex::encode(Sha256::digest(
            std::fs::read_link(path)
                .map_err(|e| io("readlink", e))?
                .into_os_string()
                .into_encoded_bytes(),
        ))),
        _ => None,
    };
    if !matches!(k, "dir") && md.nlink() > 1 {
        inodes
            .entry((md.dev(), md.ino()))
            .or_default()
            .push(key.clone());
    }
    out.insert(
        key,
        Meta {
            kind: k,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            size: if k == "dir" { 0 } else { md.size() },
            digest,
            rdev: matches!(k, "char-device" | "block-device").then(|| {
                let dev = md.rdev();
                (rustix::fs::major(dev), rustix::fs::minor(dev))
            }),
            mtime: (!matches!(k, "dir" | "symlink")).then(|| (md.mtime(), md.mtime_nsec())),
            xattrs: xattrs(path)?,
            link_group: None,
        },
    );
    if k == "dir" {
        let mut names = Vec::new();
        for e in std::fs::read_dir(path).map_err(|e| io("readdir", e))? {
            names.push(e.map_err(|e| io("readdir", e))?.file_name());
        }
        names.sort();
        for name in names {
            if rel.is_empty() && name == "lost+found" {
                continue;
            }
            let child_rel = format!("{rel}/{}", name.to_string_lossy());
            walk(&path.join(&name), &child_rel, out, inodes)?;
        }
    }
    Ok(())
}

fn field_differences(e: &Meta, a: &Meta) -> Vec<String> {
    let mut d = Vec::new();
    if e.kind != a.kind {
        d.push(format!("type expected {}, actual {}", e.kind, a.kind));
        return d;
    }
    if e.mode != a.mode {
        d.push(format!(
            "mode expected {:04o}, actual {:04o}",
            e.mode, a.mode
        ));
    }
    if (e.uid, e.gid) != (a.uid, a.gid) {
        d.push(format!(
            "owner expected {}:{}, actual {}:{}",
            e.uid, e.gid, a.uid, a.gid
        ));
    }
    if e.size != a.size {
        d.push(format!("size expected {}, actual {}", e.size, a.size));
    }
    if e.digest != a.digest {
        d.push(if e.kind == "symlink" {
            "link target differs".to_string()
        } else {
            "content differs".to_string()
        });
    }
    if e.rdev != a.rdev {
        d.push(format!("device expected {:?}, actual {:?}", e.rdev, a.rdev));
    }
    if e.mtime != a.mtime {
        d.push(format!(
            "mtime expected {:?}, actual {:?}",
            e.mtime, a.mtime
        ));
    }
    if e.xattrs != a.xattrs {
        let names = |m: &Meta| m.xattrs.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        d.push(format!(
            "xattrs expected {:?}, actual {:?}",
            names(e),
            names(a)
        ));
    }
    if e.link_group != a.link_group {
        d.push(format!(
            "hardlink group expected {:?}, actual {:?}",
            e.link_group, a.link_group
        ));
    }
    d
}

/// How `actual` differs from `expected`, one line per path (empty when identical).
pub fn differences(expected: &Manifest, actual: &Manifest) -> Vec<String> {
    let mut diffs = Vec::new();
    for (p, e) in expected {
        match actual.get(p) {
            None => diffs.push(format!("{p}: missing (expected a {})", e.kind)),
            Some(a) if a != e => {
                diffs.push(format!("{p}: {}", field_differences(e, a).join("; ")));
            }
            _ => {}
        }
    }
    for (p, a) in actual.iter().filter(|(p, _)| !expected.contains_key(*p)) {
        diffs.push(format!("{p}: unexpected {}", a.kind));
    }
    diffs
}

/// `differences` as one message naming at most `limit` paths.
pub fn describe_differences(diffs: &[String], limit: usize) -> String {
    let mut msg = diffs
        .iter()
        .take(limit)
        .cloned()
        .collect::<Vec<_>>()
        .join("\n  ");
    if diffs.len() > limit {
        msg.push_str(&format!("\n  ... and {} more", diffs.len() - limit));
    }
    msg
}

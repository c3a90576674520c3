//! An independent oracle for "identical trees": a snapshot of everything a layer holds,
//! read with plain `lstat`/`readlink`/`l*xattr`, sharing no code with the host's archive.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Everything that must survive a round trip, for one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// File content (regular files), link target (symlinks).
    pub data: Vec<u8>,
    pub rdev: u64,
    /// mtime in seconds, for non-directories.
    pub mtime: Option<i64>,
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// The first path (in sorted order) sharing this inode, for files with several links.
    pub link_group: Option<String>,
}

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
        "char"
    } else if ft.is_block_device() {
        "block"
    } else {
        "socket"
    }
}

fn xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut list = vec![0u8; 64 * 1024];
    let n = match rustix::fs::llistxattr(path, &mut list[..]) {
        Ok(n) => n,
        Err(_) => return vec![],
    };
    let mut out: Vec<(String, Vec<u8>)> = list[..n]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|name| {
            let name = String::from_utf8_lossy(name).into_owned();
            let mut value = vec![0u8; 64 * 1024];
            let len = rustix::fs::lgetxattr(path, name.as_str(), &mut value[..]).unwrap_or(0);
            value.truncate(len);
            (name, value)
        })
        .collect();
    out.sort();
    out
}

/// Snapshots the tree at `root`; paths are `/`-prefixed, the root itself is `/`.
pub fn snapshot(root: &Path) -> BTreeMap<String, Meta> {
    let mut out = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), Vec<String>> = HashMap::new();
    walk(root, "", &mut out, &mut inodes);
    for paths in inodes.values().filter(|p| p.len() > 1) {
        let first = paths.iter().min().expect("non-empty").clone();
        for p in paths {
            if let Some(m) = out.get_mut(p) {
                m.link_group = Some(first.clone());
            }
        }
    }
    out
}

fn walk(
    path: &Path,
    rel: &str,
    out: &mut BTreeMap<String, Meta>,
    inodes: &mut HashMap<(u64, u64), Vec<String>>,
) {
    let md = std::fs::symlink_metadata(path).expect("lstat in snapshot");
    let k = kind(md.file_type());
    let key = if rel.is_empty() {
        "/".to_string()
    } else {
        rel.to_string()
    };
    let data = match k {
        "file" => std::fs::read(path).expect("reading a file in snapshot"),
        "symlink" => std::fs::read_link(path)
            .expect("readlink in snapshot")
            .into_os_string()
            .into_encoded_bytes(),
        _ => vec![],
    };
    if k != "dir" && md.nlink() > 1 {
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
            data,
            rdev: if matches!(k, "char" | "block") {
                md.rdev()
            } else {
                0
            },
            mtime: (k != "dir").then(|| md.mtime()),
            xattrs: xattrs(path),
            link_group: None,
        },
    );
    if k == "dir" {
        let mut names: Vec<_> = std::fs::read_dir(path)
            .expect("readdir in snapshot")
            .map(|e| e.expect("dir entry").file_name())
            .collect();
        names.sort();
        for name in names {
            let child_rel = format!("{rel}/{}", name.to_string_lossy());
            walk(&path.join(&name), &child_rel, out, inodes);
        }
    }
}

/// Describes how two snapshots differ, path by path (empty when identical).
pub fn differences(
    expected: &BTreeMap<String, Meta>,
    actual: &BTreeMap<String, Meta>,
) -> Vec<String> {
    let mut diffs = Vec::new();
    for (p, e) in expected {
        match actual.get(p) {
            None => diffs.push(format!("{p}: missing")),
            Some(a) if a != e => diffs.push(format!("{p}: expected {e:?}, actual {a:?}")),
            _ => {}
        }
    }
    for p in actual.keys().filter(|p| !expected.contains_key(*p)) {
        diffs.push(format!("{p}: unexpected"));
    }
    diffs
}

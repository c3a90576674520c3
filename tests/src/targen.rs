//! Building layer tars entry by entry, including what `tar::Builder`'s convenience methods
//! leave out: devices, fifos, hardlinks, owners, special mode bits and xattrs (as PAX
//! `SCHILY.xattr.*` records).

use tar::{Builder, EntryType, Header};

/// One tar entry to write.
#[derive(Clone, Debug)]
pub struct Entry {
    pub path: String,
    pub kind: EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub body: Vec<u8>,
    /// Symlink or hardlink target.
    pub link: Option<String>,
    /// Device major/minor for char and block devices.
    pub device: (u32, u32),
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Entry {
    fn new(path: &str, kind: EntryType, mode: u32) -> Self {
        Entry {
            path: path.into(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: 1_600_000_000,
            body: vec![],
            link: None,
            device: (0, 0),
            xattrs: vec![],
        }
    }

    pub fn file(path: &str, mode: u32, body: &[u8]) -> Self {
        let mut e = Self::new(path, EntryType::Regular, mode);
        e.body = body.to_vec();
        e
    }

    pub fn dir(path: &str, mode: u32) -> Self {
        Self::new(path, EntryType::Directory, mode)
    }

    pub fn symlink(path: &str, target: &str) -> Self {
        let mut e = Self::new(path, EntryType::Symlink, 0o777);
        e.link = Some(target.into());
        e
    }

    pub fn hardlink(path: &str, target: &str) -> Self {
        let mut e = Self::new(path, EntryType::Link, 0o644);
        e.link = Some(target.into());
        e
    }

    pub fn fifo(path: &str, mode: u32) -> Self {
        Self::new(path, EntryType::Fifo, mode)
    }

    pub fn char_device(path: &str, mode: u32, major: u32, minor: u32) -> Self {
        let mut e = Self::new(path, EntryType::Char, mode);
        e.device = (major, minor);
        e
    }

    pub fn block_device(path: &str, mode: u32, major: u32, minor: u32) -> Self {
        let mut e = Self::new(path, EntryType::Block, mode);
        e.device = (major, minor);
        e
    }

    /// A whiteout for `path` (`dir/.wh.name`).
    pub fn whiteout(path: &str) -> Self {
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n),
            None => (String::new(), path),
        };
        Self::file(&format!("{dir}.wh.{name}"), 0o644, b"")
    }

    /// An opaque-directory marker for `dir`.
    pub fn opaque(dir: &str) -> Self {
        Self::file(&format!("{dir}/.wh..wh..opq"), 0o644, b"")
    }

    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub fn mtime(mut self, mtime: u64) -> Self {
        self.mtime = mtime;
        self
    }

    pub fn xattr(mut self, name: &str, value: &[u8]) -> Self {
        self.xattrs.push((name.into(), value.to_vec()));
        self
    }
}

/// Writes `entries` as an uncompressed tar.
pub fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut b = Builder::new(Vec::new());
    for e in entries {
        if !e.xattrs.is_empty() {
            let pax: Vec<(String, &[u8])> = e
                .xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice()))
                .collect();
            b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), *v)))
                .expect("writing pax extensions");
        }
        let mut h = Header::new_gnu();
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(e.mtime);
        h.set_size(e.body.len() as u64);
        if matches!(e.kind, EntryType::Char | EntryType::Block) {
            h.set_device_major(e.device.0).expect("device major");
            h.set_device_minor(e.device.1).expect("device minor");
        }
        // Names are written into the header fields raw (hostile ones included: the tar
        // crate's own path setters refuse `..`); longer names go through its GNU long-name
        // support.
        let fits = e.path.len() < 100 && e.link.as_ref().is_none_or(|l| l.len() < 100);
        if fits {
            let gnu = h.as_gnu_mut().expect("a GNU header");
            gnu.name[..e.path.len()].copy_from_slice(e.path.as_bytes());
            if let Some(target) = &e.link {
                gnu.linkname[..target.len()].copy_from_slice(target.as_bytes());
            }
            h.set_cksum();
            b.append(&h, e.body.as_slice()).expect("appending an entry");
        } else {
            match &e.link {
                Some(target) => b
                    .append_link(&mut h, &e.path, target)
                    .expect("appending a link"),
                None => b
                    .append_data(&mut h, &e.path, e.body.as_slice())
                    .expect("appending an entry"),
            }
        }
    }
    b.into_inner().expect("finishing the tar")
}

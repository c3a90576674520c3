//! The host interfaces a driver may import, each a capability the operator grants in config
//! (`[drivers.NAME] grants`). A driver that imports an ungranted one fails to load with a
//! message naming it; a capability is imported when the driver calls any function of it.
//!
//! These functions take and return the SDK's own types and convert to the bindings of the
//! contract the SDK targets, so driver code does not change when the contract does wherever
//! the SDK can absorb it. The limits of each call are in the contract's WIT
//! (`wit/strata-driver.wit` of this crate).

use crate::bindings::strata::driver as wit;
use crate::{Error, LayerDiff};

fn err(e: wit::types::Error) -> Error {
    Error::from(e)
}

/// File operations WASI lacks: ownership, modes, xattrs, whiteout devices, times.
pub mod files {
    use super::{err, wit::files as wit};
    use crate::{Error, Timestamp};

    /// The type of a file, as `lstat` reports it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum FileKind {
        Regular,
        Directory,
        Symlink,
        Fifo,
        CharDevice,
        BlockDevice,
        Socket,
    }

    /// What `lstat` says of a path (symlinks are not followed).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct FileStat {
        pub kind: FileKind,
        /// Permission and special bits (`0o7777` at most).
        pub mode: u32,
        pub uid: u32,
        pub gid: u32,
        pub size: u64,
        pub nlink: u64,
        /// Device number of a char/block device.
        pub rdev: u64,
        pub mtime: Timestamp,
    }

    /// The filesystem holding a path.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum FilesystemType {
        Ext4,
        Btrfs,
        Xfs,
        Tmpfs,
        Overlay,
        Zfs,
        Fuse,
        Nfs,
        Bcachefs,
        /// One the contract does not name.
        Unknown,
    }

    impl FilesystemType {
        /// The kernel's name for it (`ext4`, ...; `unknown`).
        pub fn as_str(self) -> &'static str {
            match self {
                FilesystemType::Ext4 => "ext4",
                FilesystemType::Btrfs => "btrfs",
                FilesystemType::Xfs => "xfs",
                FilesystemType::Tmpfs => "tmpfs",
                FilesystemType::Overlay => "overlay",
                FilesystemType::Zfs => "zfs",
                FilesystemType::Fuse => "fuse",
                FilesystemType::Nfs => "nfs",
                FilesystemType::Bcachefs => "bcachefs",
                FilesystemType::Unknown => "unknown",
            }
        }
    }

    impl std::fmt::Display for FilesystemType {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.as_str())
        }
    }

    /// Creates one directory (its parent must exist) with exactly this mode and owner.
    pub fn mkdir(path: &str, mode: u32, uid: u32, gid: u32) -> Result<(), Error> {
        wit::mkdir(path, mode, uid, gid).map_err(err)
    }

    /// Changes the owner of a path without following a final symlink.
    pub fn chown(path: &str, uid: u32, gid: u32) -> Result<(), Error> {
        wit::chown(path, uid, gid).map_err(err)
    }

    /// Sets permission and special bits (setuid, setgid, sticky) exactly.
    pub fn chmod(path: &str, mode: u32) -> Result<(), Error> {
        wit::chmod(path, mode).map_err(err)
    }

    /// Sets an extended attribute (values up to 64 KiB).
    pub fn set_xattr(path: &str, name: &str, value: &[u8]) -> Result<(), Error> {
        wit::set_xattr(path, name, value).map_err(err)
    }

    /// An extended attribute; `None` when it is absent.
    pub fn get_xattr(path: &str, name: &str) -> Result<Option<Vec<u8>>, Error> {
        wit::get_xattr(path, name).map_err(err)
    }

    /// The names of a path's extended attributes.
    pub fn list_xattrs(path: &str) -> Result<Vec<String>, Error> {
        wit::list_xattrs(path).map_err(err)
    }

    /// Removes an extended attribute.
    pub fn remove_xattr(path: &str, name: &str) -> Result<(), Error> {
        wit::remove_xattr(path, name).map_err(err)
    }

    /// Creates an overlay whiteout: a character device 0:0 owned 0:0.
    pub fn make_whiteout(path: &str) -> Result<(), Error> {
        wit::make_whiteout(path).map_err(err)
    }

    /// Creates a symlink at `path` pointing to the relative `target`.
    pub fn symlink(target: &str, path: &str) -> Result<(), Error> {
        wit::symlink(target, path).map_err(err)
    }

    /// Sets access and modification times, to the nanosecond, without following a final
    /// symlink.
    pub fn set_times(path: &str, atime: Timestamp, mtime: Timestamp) -> Result<(), Error> {
        wit::set_times(path, atime.into(), mtime.into()).map_err(err)
    }

    /// What `lstat` says of `path`.
    pub fn stat(path: &str) -> Result<FileStat, Error> {
        let st = wit::stat(path).map_err(err)?;
        Ok(FileStat {
            kind: match st.kind {
                wit::FileKind::Regular => FileKind::Regular,
                wit::FileKind::Directory => FileKind::Directory,
                wit::FileKind::Symlink => FileKind::Symlink,
                wit::FileKind::Fifo => FileKind::Fifo,
                wit::FileKind::CharDevice => FileKind::CharDevice,
                wit::FileKind::BlockDevice => FileKind::BlockDevice,
                wit::FileKind::Socket => FileKind::Socket,
            },
            mode: st.mode,
            uid: st.uid,
            gid: st.gid,
            size: st.size,
            nlink: st.nlink,
            rdev: st.rdev,
            mtime: st.mtime.into(),
        })
    }

    /// Removes a file or a whole tree; refuses (`busy`) to cross into a mount point.
    pub fn remove_tree(path: &str) -> Result<(), Error> {
        wit::remove_tree(path).map_err(err)
    }

    /// The filesystem holding `path`.
    pub fn filesystem_type(path: &str) -> Result<FilesystemType, Error> {
        use wit::FilesystemKind as W;
        Ok(match wit::filesystem_type(path).map_err(err)? {
            W::Ext4 => FilesystemType::Ext4,
            W::Btrfs => FilesystemType::Btrfs,
            W::Xfs => FilesystemType::Xfs,
            W::Tmpfs => FilesystemType::Tmpfs,
            W::Overlay => FilesystemType::Overlay,
            W::Zfs => FilesystemType::Zfs,
            W::Fuse => FilesystemType::Fuse,
            W::Nfs => FilesystemType::Nfs,
            W::Bcachefs => FilesystemType::Bcachefs,
            W::Unknown => FilesystemType::Unknown,
        })
    }
}

/// Copying files and trees, with reflinks where the filesystem has them.
pub mod copy {
    use super::{err, wit::copy as wit};
    use crate::Error;

    /// Whether to share data blocks (reflinks) or copy bytes.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum CopyMode {
        /// Reflink each regular file; copy its bytes where the filesystem cannot.
        ReflinkOrCopy,
        /// Reflink or fail with `unsupported`.
        ReflinkOnly,
        /// Always copy bytes.
        Copy,
    }

    /// What a copy did.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct CopyStats {
        /// Entries created (every file type, directories included).
        pub entries: u64,
        /// Bytes of regular files, each hardlink group counted once.
        pub bytes: u64,
        /// Regular files that were reflinked rather than copied.
        pub reflinked: u64,
    }

    fn mode(m: CopyMode) -> wit::CopyMode {
        match m {
            CopyMode::ReflinkOrCopy => wit::CopyMode::ReflinkOrCopy,
            CopyMode::ReflinkOnly => wit::CopyMode::ReflinkOnly,
            CopyMode::Copy => wit::CopyMode::Copy,
        }
    }

    fn stats(s: wit::CopyStats) -> CopyStats {
        CopyStats {
            entries: s.entries,
            bytes: s.bytes,
            reflinked: s.reflinked,
        }
    }

    /// Copies `src` to the new path `dst` preserving mode, owner, xattrs and times.
    pub fn copy_file(src: &str, dst: &str, m: CopyMode) -> Result<CopyStats, Error> {
        wit::copy_file(src, dst, mode(m)).map(stats).map_err(err)
    }

    /// Copies the tree at `src` to the new path `dst`, preserving everything a layer holds.
    /// Does not cross mount points.
    pub fn copy_tree(src: &str, dst: &str, m: CopyMode) -> Result<CopyStats, Error> {
        wit::copy_tree(src, dst, mode(m)).map(stats).map_err(err)
    }
}

/// Layer tars: apply, export, compare.
pub mod archive {
    use super::{LayerDiff, err, wit::archive as wit};
    use crate::{Change, Error, IncomingDiff, WhiteoutFormat};

    /// What an apply wrote.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct ApplyStats {
        /// Bytes of regular-file content written (hardlinks add nothing).
        pub size: u64,
        /// Tar entries processed, whiteouts included.
        pub entries: u64,
    }

    /// Unpacks `diff` onto the directory `dest`, deletions as `whiteouts` says. A diff can
    /// be applied once.
    pub fn apply(
        diff: IncomingDiff<'_>,
        dest: &str,
        whiteouts: WhiteoutFormat,
    ) -> Result<ApplyStats, Error> {
        wit::apply(diff.0, dest, whiteouts.into())
            .map(|s| ApplyStats {
                size: s.size,
                entries: s.entries,
            })
            .map_err(err)
    }

    /// A diff that turns the tree `parent` (an empty tree when none) into the tree `layer`.
    pub fn diff_trees(layer: &str, parent: Option<&str>) -> Result<LayerDiff, Error> {
        wit::diff_trees(layer, parent).map(LayerDiff).map_err(err)
    }

    /// What changed from `parent` (an empty tree when none) to `layer`.
    pub fn changes(layer: &str, parent: Option<&str>) -> Result<Vec<Change>, Error> {
        wit::changes(layer, parent)
            .map(|c| c.into_iter().map(Change::from).collect())
            .map_err(err)
    }

    /// Bytes of regular files added or modified from `parent` to `layer`.
    pub fn diff_size(layer: &str, parent: Option<&str>) -> Result<u64, Error> {
        wit::diff_size(layer, parent).map_err(err)
    }
}

/// overlayfs: what the kernel supports, and diffs of overlay layers. A stack is a list of
/// directories, topmost first.
pub mod overlay {
    use super::{LayerDiff, err, wit::overlay as wit};
    use crate::{Change, Error, WhiteoutFormat};

    /// What overlayfs on the home's filesystem can do.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Features {
        /// Two lower layers with a whiteout merge as they should.
        pub supported: bool,
        /// The backing filesystem reports file types in directory entries.
        pub d_type: bool,
        /// Lower layers are passed one per call (`lowerdir+`).
        pub lowerdir_append: bool,
        /// `metacopy=on` works.
        pub metacopy: bool,
        /// `redirect_dir=on` is accepted.
        pub redirect_dir: bool,
        /// `volatile` is accepted.
        pub volatile: bool,
    }

    /// Probes overlayfs with scratch directories made in `scratch` (which must not exist).
    pub fn probe(scratch: &str) -> Result<Features, Error> {
        let f = wit::probe(scratch).map_err(err)?;
        Ok(Features {
            supported: f.supported,
            d_type: f.d_type,
            lowerdir_append: f.lowerdir_append,
            metacopy: f.metacopy,
            redirect_dir: f.redirect_dir,
            volatile: f.volatile,
        })
    }

    /// The native diff of the upper directory `upper` over the stack `lower`.
    pub fn diff_upper(
        upper: &str,
        lower: &[String],
        whiteouts: WhiteoutFormat,
    ) -> Result<LayerDiff, Error> {
        wit::diff_upper(upper, lower, whiteouts.into())
            .map(LayerDiff)
            .map_err(err)
    }

    /// What `upper` changes over `lower`.
    pub fn changes_upper(
        upper: &str,
        lower: &[String],
        whiteouts: WhiteoutFormat,
    ) -> Result<Vec<Change>, Error> {
        wit::changes_upper(upper, lower, whiteouts.into())
            .map(|c| c.into_iter().map(Change::from).collect())
            .map_err(err)
    }

    /// A diff from the merged tree of stack `parent` to that of `layer`.
    pub fn diff_stacks(
        layer: &[String],
        parent: &[String],
        whiteouts: WhiteoutFormat,
    ) -> Result<LayerDiff, Error> {
        wit::diff_stacks(layer, parent, whiteouts.into())
            .map(LayerDiff)
            .map_err(err)
    }

    /// The changes from the merged tree of stack `parent` to that of `layer`.
    pub fn changes_stacks(
        layer: &[String],
        parent: &[String],
        whiteouts: WhiteoutFormat,
    ) -> Result<Vec<Change>, Error> {
        wit::changes_stacks(layer, parent, whiteouts.into())
            .map(|c| c.into_iter().map(Change::from).collect())
            .map_err(err)
    }

    /// Bytes of regular files added or modified from stack `parent` to stack `layer`.
    pub fn diff_size_stacks(
        layer: &[String],
        parent: &[String],
        whiteouts: WhiteoutFormat,
    ) -> Result<u64, Error> {
        wit::diff_size_stacks(layer, parent, whiteouts.into()).map_err(err)
    }
}

/// btrfs subvolumes and quota groups, beneath the home.
pub mod btrfs {
    use super::{err, wit::btrfs as wit};
    use crate::Error;

    /// What `subvolume_info` says of a subvolume.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct SubvolumeDetails {
        /// The subvolume id; its quota group is `0/id`.
        pub id: u64,
        pub read_only: bool,
    }

    /// Creates an empty subvolume at `path`, its root a directory 0755 owned 0:0.
    pub fn create_subvolume(path: &str) -> Result<(), Error> {
        wit::create_subvolume(path).map_err(err)
    }

    /// Creates subvolume `dest` as a snapshot of subvolume `source`.
    pub fn snapshot(source: &str, dest: &str, read_only: bool) -> Result<(), Error> {
        wit::snapshot(source, dest, read_only).map_err(err)
    }

    /// Deletes subvolume `path`, after the subvolumes nested inside it.
    pub fn delete_subvolume(path: &str) -> Result<(), Error> {
        wit::delete_subvolume(path).map_err(err)
    }

    /// Whether `path` is the root of a subvolume.
    pub fn is_subvolume(path: &str) -> Result<bool, Error> {
        wit::is_subvolume(path).map_err(err)
    }

    /// The id and read-only flag of subvolume `path`.
    pub fn subvolume_info(path: &str) -> Result<SubvolumeDetails, Error> {
        wit::subvolume_info(path)
            .map(|d| SubvolumeDetails {
                id: d.id,
                read_only: d.read_only,
            })
            .map_err(err)
    }

    /// Turns on quota groups for the filesystem holding subvolume `path`.
    pub fn enable_quota(path: &str) -> Result<(), Error> {
        wit::enable_quota(path).map_err(err)
    }

    /// Limits the bytes subvolume `path` references (`None` clears the limit); writes past
    /// it fail with [`Error::NoSpace`].
    pub fn set_qgroup_limit(path: &str, limit: Option<u64>) -> Result<(), Error> {
        wit::set_qgroup_limit(path, limit).map_err(err)
    }
}

/// ZFS datasets beneath the operator's parent dataset; names are relative to it.
pub mod zfs {
    use super::{err, wit::zfs as wit};
    use crate::Error;

    /// `name=value` pairs; sizes as ZFS reads them, `none` to clear.
    pub type Properties = Vec<(String, String)>;

    /// Which ZFS implementation serves the parent dataset.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum Backend {
        /// The ZFS kernel module.
        Kernel,
        /// The zfs-fuse daemon.
        Fuse,
    }

    /// What [`info`] says of the parent dataset.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct PoolInfo {
        pub backend: Backend,
        /// The operator's parent dataset, in full.
        pub parent: String,
    }

    /// One dataset or snapshot of a listing.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Dataset {
        /// Relative to the parent dataset.
        pub name: String,
        /// The properties asked for, in the order asked.
        pub properties: Properties,
    }

    /// Which ZFS serves the parent dataset; `not-found` when it does not exist.
    pub fn info() -> Result<PoolInfo, Error> {
        wit::info()
            .map(|i| PoolInfo {
                backend: match i.backend {
                    wit::Backend::Kernel => Backend::Kernel,
                    wit::Backend::Fuse => Backend::Fuse,
                },
                parent: i.parent,
            })
            .map_err(err)
    }

    /// Creates a filesystem (its parent must exist), not mounted anywhere.
    pub fn create(dataset: &str, properties: &[(String, String)]) -> Result<(), Error> {
        wit::create(dataset, properties).map_err(err)
    }

    /// Snapshots a filesystem: `snapshot` is `DATASET@NAME`.
    pub fn snapshot(snapshot: &str) -> Result<(), Error> {
        wit::snapshot(snapshot).map_err(err)
    }

    /// Creates filesystem `dataset` as a writable clone of `snapshot`.
    pub fn clone_snapshot(
        snapshot: &str,
        dataset: &str,
        properties: &[(String, String)],
    ) -> Result<(), Error> {
        wit::clone_snapshot(snapshot, dataset, properties).map_err(err)
    }

    /// Destroys a filesystem or snapshot (`recursive`: its snapshots and children too).
    pub fn destroy(name: &str, recursive: bool) -> Result<(), Error> {
        wit::destroy(name, recursive).map_err(err)
    }

    /// Sets properties of a dataset or snapshot.
    pub fn set_properties(name: &str, properties: &[(String, String)]) -> Result<(), Error> {
        wit::set_properties(name, properties).map_err(err)
    }

    /// The named properties of one dataset or snapshot.
    pub fn get_properties(name: &str, names: &[String]) -> Result<Properties, Error> {
        wit::get_properties(name, names).map_err(err)
    }

    /// The named properties of every filesystem and snapshot beneath `dataset` (the parent
    /// when none), `depth` levels down (all when none), from one query.
    pub fn list_datasets(
        dataset: Option<&str>,
        names: &[String],
        depth: Option<u32>,
    ) -> Result<Vec<Dataset>, Error> {
        wit::list_datasets(dataset, names, depth)
            .map(|l| {
                l.into_iter()
                    .map(|d| Dataset {
                        name: d.name,
                        properties: d.properties,
                    })
                    .collect()
            })
            .map_err(err)
    }

    /// Mounts filesystem `dataset` on the directory `path` of the home.
    pub fn mount(dataset: &str, path: &str) -> Result<(), Error> {
        wit::mount(dataset, path).map_err(err)
    }

    /// Unmounts what [`mount`] put on `path`.
    pub fn unmount(path: &str) -> Result<(), Error> {
        wit::unmount(path).map_err(err)
    }
}

/// The host's log.
pub mod log {
    use super::wit::log as wit;

    /// How much a message matters.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub enum Level {
        Error,
        Warn,
        Info,
        Debug,
        Trace,
    }

    /// Writes `message` to the host's log (escaped and cut to 4096 bytes by the host).
    pub fn log(level: Level, message: &str) {
        let level = match level {
            Level::Error => wit::Level::Error,
            Level::Warn => wit::Level::Warn,
            Level::Info => wit::Level::Info,
            Level::Debug => wit::Level::Debug,
            Level::Trace => wit::Level::Trace,
        };
        wit::log(level, message)
    }
}

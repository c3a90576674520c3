//! Contract version 0.1 (`wit/strata-driver.wit`, `strata:driver@0.1.0`): its generated
//! bindings, and every conversion between them and the host's own types
//! ([`crate::contract`]).
//!
//! Why a module per version: a driver built against 0.1 keeps working when the contract
//! moves on, so the host keeps this version's bindings for as long as it serves 0.1. Nothing
//! outside this module names a 0.1 type: the imported interfaces are thin adapters over the
//! version-independent functions of [`super::host`], the exported `driver` interface is
//! called through [`DriverExports`], and each type is converted here, at the edge.
//!
//! What 0.1 cannot say: it has no `no-space` error (ENOSPC and EDQUOT travel as `io` with
//! their errno, both ways), and its overlay mount options are strings, parsed here into
//! [`OverlayOption`]; an option the host does not allow ends the call with
//! [`InvalidAnswer`], which the host reports as a refused plan.

use wasmtime::Store;
use wasmtime::component::{HasSelf, Linker, Resource};

use super::Capability;
use super::host::{HostResult, HostState, LayerDiff};
use super::runtime::{DriverExports, InvalidAnswer, Pairs};
use crate::contract::{
    self as c, Change, DriverError, DriverInfo, IoError, MountPlan, MountRequest, OverlayOption,
};

mod bindings {
    wasmtime::component::bindgen!({
        world: "strata-driver",
        path: "../wit",
        imports: { default: trappable },
        with: {
            "strata:driver/types.layer-diff": crate::sandbox::host::LayerDiff,
        },
    });
}

use bindings::exports::strata::driver::driver as wit_driver;
use bindings::strata::driver::{archive, btrfs, copy, files, log, overlay, types, zfs};
pub(super) use bindings::{StrataDriver, StrataDriverPre};

/// Links the interfaces of 0.1 that `grants` allow (and `types`, always).
pub(super) fn link(linker: &mut Linker<HostState>, grants: &[Capability]) -> wasmtime::Result<()> {
    type Data = HasSelf<HostState>;
    types::add_to_linker::<HostState, Data>(linker, |s| s)?;
    for cap in grants {
        match cap {
            Capability::Files => files::add_to_linker::<HostState, Data>(linker, |s| s),
            Capability::Copy => copy::add_to_linker::<HostState, Data>(linker, |s| s),
            Capability::Archive => archive::add_to_linker::<HostState, Data>(linker, |s| s),
            Capability::Overlay => overlay::add_to_linker::<HostState, Data>(linker, |s| s),
            Capability::Btrfs => btrfs::add_to_linker::<HostState, Data>(linker, |s| s),
            Capability::Zfs => zfs::add_to_linker::<HostState, Data>(linker, |s| s),
            Capability::Log => log::add_to_linker::<HostState, Data>(linker, |s| s),
        }?;
    }
    Ok(())
}

// ---- Conversions: host types to 0.1 ----

impl From<DriverError> for types::Error {
    fn from(e: DriverError) -> Self {
        let io = |e: IoError| types::IoError {
            errno: e.errno,
            message: e.message,
        };
        match e {
            DriverError::NotFound(m) => types::Error::NotFound(m),
            DriverError::AlreadyExists(m) => types::Error::AlreadyExists(m),
            DriverError::InvalidArgument(m) => types::Error::InvalidArgument(m),
            DriverError::Unsupported(m) => types::Error::Unsupported(m),
            DriverError::Busy(m) => types::Error::Busy(m),
            DriverError::Denied(m) => types::Error::Denied(m),
            // 0.1 has no `no-space`: the errno says it.
            DriverError::NoSpace(e) | DriverError::Io(e) => types::Error::Io(io(e)),
        }
    }
}

impl From<Change> for types::Change {
    fn from(c: Change) -> Self {
        types::Change {
            path: c.path,
            kind: match c.kind {
                c::ChangeKind::Add => types::ChangeKind::Add,
                c::ChangeKind::Modify => types::ChangeKind::Modify,
                c::ChangeKind::Delete => types::ChangeKind::Delete,
            },
        }
    }
}

impl From<c::FileStat> for files::FileStat {
    fn from(st: c::FileStat) -> Self {
        files::FileStat {
            kind: match st.kind {
                c::FileKind::Regular => files::FileKind::Regular,
                c::FileKind::Directory => files::FileKind::Directory,
                c::FileKind::Symlink => files::FileKind::Symlink,
                c::FileKind::Fifo => files::FileKind::Fifo,
                c::FileKind::CharDevice => files::FileKind::CharDevice,
                c::FileKind::BlockDevice => files::FileKind::BlockDevice,
                c::FileKind::Socket => files::FileKind::Socket,
            },
            mode: st.mode,
            uid: st.uid,
            gid: st.gid,
            size: st.size,
            nlink: st.nlink,
            rdev: st.rdev,
            mtime_seconds: st.mtime_seconds,
            mtime_nanoseconds: st.mtime_nanoseconds,
        }
    }
}

impl From<c::CopyStats> for copy::CopyStats {
    fn from(s: c::CopyStats) -> Self {
        copy::CopyStats {
            entries: s.entries,
            bytes: s.bytes,
            reflinked: s.reflinked,
        }
    }
}

impl From<c::ApplyStats> for archive::ApplyStats {
    fn from(s: c::ApplyStats) -> Self {
        archive::ApplyStats {
            size: s.size,
            entries: s.entries,
        }
    }
}

impl From<c::OverlayFeatures> for overlay::Features {
    fn from(f: c::OverlayFeatures) -> Self {
        overlay::Features {
            supported: f.supported,
            d_type: f.d_type,
            lowerdir_append: f.lowerdir_append,
            metacopy: f.metacopy,
            redirect_dir: f.redirect_dir,
            volatile: f.volatile,
        }
    }
}

impl From<c::SubvolumeInfo> for btrfs::SubvolumeDetails {
    fn from(i: c::SubvolumeInfo) -> Self {
        btrfs::SubvolumeDetails {
            id: i.id,
            read_only: i.read_only,
        }
    }
}

impl From<c::ZfsPoolInfo> for zfs::PoolInfo {
    fn from(i: c::ZfsPoolInfo) -> Self {
        zfs::PoolInfo {
            backend: match i.backend {
                c::ZfsBackend::Kernel => zfs::Backend::Kernel,
                c::ZfsBackend::Fuse => zfs::Backend::Fuse,
            },
            parent: i.parent,
        }
    }
}

impl From<c::ZfsDataset> for zfs::Dataset {
    fn from(d: c::ZfsDataset) -> Self {
        zfs::Dataset {
            name: d.name,
            properties: d.properties,
        }
    }
}

fn request(r: &MountRequest) -> wit_driver::MountRequest {
    wit_driver::MountRequest {
        read_only: r.read_only,
        options: r.options.clone(),
    }
}

// ---- Conversions: 0.1 to host types ----

impl From<types::Error> for DriverError {
    fn from(e: types::Error) -> Self {
        match e {
            types::Error::NotFound(m) => DriverError::NotFound(m),
            types::Error::AlreadyExists(m) => DriverError::AlreadyExists(m),
            types::Error::InvalidArgument(m) => DriverError::InvalidArgument(m),
            types::Error::Unsupported(m) => DriverError::Unsupported(m),
            types::Error::Busy(m) => DriverError::Busy(m),
            types::Error::Denied(m) => DriverError::Denied(m),
            types::Error::Io(e) => DriverError::Io(IoError {
                errno: e.errno,
                message: e.message,
            }),
        }
    }
}

impl From<types::Change> for Change {
    fn from(ch: types::Change) -> Self {
        Change {
            path: ch.path,
            kind: match ch.kind {
                types::ChangeKind::Add => c::ChangeKind::Add,
                types::ChangeKind::Modify => c::ChangeKind::Modify,
                types::ChangeKind::Delete => c::ChangeKind::Delete,
            },
        }
    }
}

fn whiteouts(w: types::WhiteoutFormat) -> c::WhiteoutFormat {
    match w {
        types::WhiteoutFormat::Delete => c::WhiteoutFormat::Delete,
        types::WhiteoutFormat::OverlayTrusted => c::WhiteoutFormat::OverlayTrusted,
        types::WhiteoutFormat::OverlayUser => c::WhiteoutFormat::OverlayUser,
    }
}

fn copy_mode(m: copy::CopyMode) -> c::CopyMode {
    match m {
        copy::CopyMode::ReflinkOrCopy => c::CopyMode::ReflinkOrCopy,
        copy::CopyMode::ReflinkOnly => c::CopyMode::ReflinkOnly,
        copy::CopyMode::Copy => c::CopyMode::Copy,
    }
}

fn log_level(l: log::Level) -> c::LogLevel {
    match l {
        log::Level::Error => c::LogLevel::Error,
        log::Level::Warn => c::LogLevel::Warn,
        log::Level::Info => c::LogLevel::Info,
        log::Level::Debug => c::LogLevel::Debug,
        log::Level::Trace => c::LogLevel::Trace,
    }
}

impl From<wit_driver::DriverInfo> for DriverInfo {
    fn from(i: wit_driver::DriverInfo) -> Self {
        DriverInfo {
            name: i.name,
            status: i.status,
        }
    }
}

/// A 0.1 mount plan in the host's types; `Err` when it asks for an overlay option the host
/// does not allow (0.1 spells options as strings).
fn plan(p: wit_driver::MountPlan) -> Result<MountPlan, InvalidAnswer> {
    let kind = match p.kind {
        wit_driver::MountKind::Bind(b) => c::MountKind::Bind(c::BindMount { source: b.source }),
        wit_driver::MountKind::Overlay(o) => c::MountKind::Overlay(c::OverlayMount {
            lower: o.lower,
            upper: o.upper,
            work: o.work,
            options: o
                .options
                .iter()
                .map(|s| OverlayOption::parse(s))
                .collect::<Result<_, _>>()
                .map_err(InvalidAnswer)?,
        }),
    };
    Ok(MountPlan {
        target: p.target,
        kind,
        read_only: p.read_only,
    })
}

// ---- The imported interfaces: thin adapters ----

/// A host function's answer in 0.1's types.
fn edge<T, U: From<T>>(r: HostResult<T>) -> wasmtime::Result<Result<U, types::Error>> {
    Ok(r?.map(U::from).map_err(types::Error::from))
}

/// [`edge`] for a list.
fn edge_list<T, U: From<T>>(
    r: HostResult<Vec<T>>,
) -> wasmtime::Result<Result<Vec<U>, types::Error>> {
    Ok(r?
        .map(|v| v.into_iter().map(U::from).collect())
        .map_err(types::Error::from))
}

type Answer<T> = wasmtime::Result<Result<T, types::Error>>;

impl types::Host for HostState {}

impl types::HostLayerDiff for HostState {
    fn drop(&mut self, rep: Resource<LayerDiff>) -> wasmtime::Result<()> {
        self.drop_diff(rep)
    }
}

impl files::Host for HostState {
    fn mkdir(&mut self, path: String, mode: u32, uid: u32, gid: u32) -> Answer<()> {
        edge(self.files_mkdir(path, mode, uid, gid))
    }

    fn chown(&mut self, path: String, uid: u32, gid: u32) -> Answer<()> {
        edge(self.files_chown(path, uid, gid))
    }

    fn chmod(&mut self, path: String, mode: u32) -> Answer<()> {
        edge(self.files_chmod(path, mode))
    }

    fn set_xattr(&mut self, path: String, name: String, value: Vec<u8>) -> Answer<()> {
        edge(self.files_set_xattr(path, name, value))
    }

    fn get_xattr(&mut self, path: String, name: String) -> Answer<Option<Vec<u8>>> {
        edge(self.files_get_xattr(path, name))
    }

    fn list_xattrs(&mut self, path: String) -> Answer<Vec<String>> {
        edge(self.files_list_xattrs(path))
    }

    fn remove_xattr(&mut self, path: String, name: String) -> Answer<()> {
        edge(self.files_remove_xattr(path, name))
    }

    fn make_whiteout(&mut self, path: String) -> Answer<()> {
        edge(self.files_make_whiteout(path))
    }

    fn symlink(&mut self, target: String, path: String) -> Answer<()> {
        edge(self.files_symlink(target, path))
    }

    fn set_times(&mut self, path: String, atime: i64, mtime: i64) -> Answer<()> {
        edge(self.files_set_times(path, atime, mtime))
    }

    fn stat(&mut self, path: String) -> Answer<files::FileStat> {
        edge(self.files_stat(path))
    }

    fn remove_tree(&mut self, path: String) -> Answer<()> {
        edge(self.files_remove_tree(path))
    }

    fn filesystem_type(&mut self, path: String) -> Answer<String> {
        edge(self.files_filesystem_type(path))
    }
}

impl copy::Host for HostState {
    fn copy_file(
        &mut self,
        src: String,
        dst: String,
        mode: copy::CopyMode,
    ) -> Answer<copy::CopyStats> {
        edge(self.copy_copy_file(src, dst, copy_mode(mode)))
    }

    fn copy_tree(
        &mut self,
        src: String,
        dst: String,
        mode: copy::CopyMode,
    ) -> Answer<copy::CopyStats> {
        edge(self.copy_copy_tree(src, dst, copy_mode(mode)))
    }
}

impl archive::Host for HostState {
    fn apply(
        &mut self,
        diff: Resource<LayerDiff>,
        dest: String,
        w: types::WhiteoutFormat,
    ) -> Answer<archive::ApplyStats> {
        edge(self.archive_apply(diff, dest, whiteouts(w)))
    }

    fn diff_trees(&mut self, layer: String, parent: Option<String>) -> Answer<Resource<LayerDiff>> {
        edge(self.archive_diff_trees(layer, parent))
    }

    fn changes(&mut self, layer: String, parent: Option<String>) -> Answer<Vec<types::Change>> {
        edge_list(self.archive_changes(layer, parent))
    }

    fn diff_size(&mut self, layer: String, parent: Option<String>) -> Answer<u64> {
        edge(self.archive_diff_size(layer, parent))
    }
}

impl overlay::Host for HostState {
    fn probe(&mut self, scratch: String) -> Answer<overlay::Features> {
        edge(self.overlay_probe(scratch))
    }

    fn diff_upper(
        &mut self,
        upper: String,
        lower: Vec<String>,
        w: types::WhiteoutFormat,
    ) -> Answer<Resource<LayerDiff>> {
        edge(self.overlay_diff_upper(upper, lower, whiteouts(w)))
    }

    fn changes_upper(
        &mut self,
        upper: String,
        lower: Vec<String>,
        w: types::WhiteoutFormat,
    ) -> Answer<Vec<types::Change>> {
        edge_list(self.overlay_changes_upper(upper, lower, whiteouts(w)))
    }

    fn diff_stacks(
        &mut self,
        layer: Vec<String>,
        parent: Vec<String>,
        w: types::WhiteoutFormat,
    ) -> Answer<Resource<LayerDiff>> {
        edge(self.overlay_diff_stacks(layer, parent, whiteouts(w)))
    }

    fn changes_stacks(
        &mut self,
        layer: Vec<String>,
        parent: Vec<String>,
        w: types::WhiteoutFormat,
    ) -> Answer<Vec<types::Change>> {
        edge_list(self.overlay_changes_stacks(layer, parent, whiteouts(w)))
    }

    fn diff_size_stacks(
        &mut self,
        layer: Vec<String>,
        parent: Vec<String>,
        w: types::WhiteoutFormat,
    ) -> Answer<u64> {
        edge(self.overlay_diff_size_stacks(layer, parent, whiteouts(w)))
    }
}

impl btrfs::Host for HostState {
    fn create_subvolume(&mut self, path: String) -> Answer<()> {
        edge(self.btrfs_create_subvolume(path))
    }

    fn snapshot(&mut self, source: String, dest: String, read_only: bool) -> Answer<()> {
        edge(self.btrfs_snapshot(source, dest, read_only))
    }

    fn delete_subvolume(&mut self, path: String) -> Answer<()> {
        edge(self.btrfs_delete_subvolume(path))
    }

    fn is_subvolume(&mut self, path: String) -> Answer<bool> {
        edge(self.btrfs_is_subvolume(path))
    }

    fn subvolume_info(&mut self, path: String) -> Answer<btrfs::SubvolumeDetails> {
        edge(self.btrfs_subvolume_info(path))
    }

    fn enable_quota(&mut self, path: String) -> Answer<()> {
        edge(self.btrfs_enable_quota(path))
    }

    fn set_qgroup_limit(&mut self, path: String, limit: Option<u64>) -> Answer<()> {
        edge(self.btrfs_set_qgroup_limit(path, limit))
    }
}

impl zfs::Host for HostState {
    fn info(&mut self) -> Answer<zfs::PoolInfo> {
        edge(self.zfs_info())
    }

    fn create(&mut self, dataset: String, properties: Vec<(String, String)>) -> Answer<()> {
        edge(self.zfs_create(dataset, properties))
    }

    fn snapshot(&mut self, snapshot: String) -> Answer<()> {
        edge(self.zfs_snapshot(snapshot))
    }

    fn clone_snapshot(
        &mut self,
        snapshot: String,
        dataset: String,
        properties: Vec<(String, String)>,
    ) -> Answer<()> {
        edge(self.zfs_clone_snapshot(snapshot, dataset, properties))
    }

    fn destroy(&mut self, name: String, recursive: bool) -> Answer<()> {
        edge(self.zfs_destroy(name, recursive))
    }

    fn set_properties(&mut self, name: String, properties: Vec<(String, String)>) -> Answer<()> {
        edge(self.zfs_set_properties(name, properties))
    }

    fn get_properties(
        &mut self,
        name: String,
        names: Vec<String>,
    ) -> Answer<Vec<(String, String)>> {
        edge(self.zfs_get_properties(name, names))
    }

    fn list_datasets(
        &mut self,
        dataset: Option<String>,
        names: Vec<String>,
        depth: Option<u32>,
    ) -> Answer<Vec<zfs::Dataset>> {
        edge_list(self.zfs_list_datasets(dataset, names, depth))
    }

    fn mount(&mut self, dataset: String, path: String) -> Answer<()> {
        edge(self.zfs_mount(dataset, path))
    }

    fn unmount(&mut self, path: String) -> Answer<()> {
        edge(self.zfs_unmount(path))
    }
}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        self.log_log(log_level(level), message)
    }
}

// ---- The exported interface ----

/// A 0.1 driver's answer in the host's types.
fn answer<T, U: From<T>>(
    r: wasmtime::Result<Result<T, types::Error>>,
) -> wasmtime::Result<Result<U, DriverError>> {
    Ok(r?.map(U::from).map_err(DriverError::from))
}

type Answered<T> = wasmtime::Result<Result<T, DriverError>>;
type S<'a> = &'a mut Store<HostState>;

impl DriverExports for StrataDriver {
    fn init(&self, s: S<'_>, options: &[(String, String)]) -> Answered<DriverInfo> {
        answer(self.strata_driver_driver().call_init(s, &options.to_vec()))
    }

    fn create(
        &self,
        s: S<'_>,
        id: &str,
        parent: Option<&str>,
        read_write: bool,
        options: &[(String, String)],
    ) -> Answered<()> {
        let d = self.strata_driver_driver();
        answer(if read_write {
            d.call_create_rw(s, id, parent, &options.to_vec())
        } else {
            d.call_create(s, id, parent, &options.to_vec())
        })
    }

    fn remove(&self, s: S<'_>, id: &str) -> Answered<()> {
        answer(self.strata_driver_driver().call_remove(s, id))
    }

    fn exists(&self, s: S<'_>, id: &str) -> wasmtime::Result<bool> {
        self.strata_driver_driver().call_exists(s, id)
    }

    fn plan_mount(&self, s: S<'_>, id: &str, r: &MountRequest) -> Answered<MountPlan> {
        match self
            .strata_driver_driver()
            .call_plan_mount(s, id, &request(r))?
        {
            Ok(p) => Ok(Ok(plan(p)?)),
            Err(e) => Ok(Err(e.into())),
        }
    }

    fn unmounted(&self, s: S<'_>, id: &str) -> Answered<()> {
        answer(self.strata_driver_driver().call_unmounted(s, id))
    }

    fn apply_diff(
        &self,
        s: S<'_>,
        id: &str,
        parent: Option<&str>,
        diff: Resource<LayerDiff>,
    ) -> Answered<u64> {
        answer(
            self.strata_driver_driver()
                .call_apply_diff(s, id, parent, diff),
        )
    }

    fn diff(&self, s: S<'_>, id: &str, parent: Option<&str>) -> Answered<Resource<LayerDiff>> {
        answer(self.strata_driver_driver().call_diff(s, id, parent))
    }

    fn changes(&self, s: S<'_>, id: &str, parent: Option<&str>) -> Answered<Vec<Change>> {
        Ok(self
            .strata_driver_driver()
            .call_changes(s, id, parent)?
            .map(|v| v.into_iter().map(Change::from).collect())
            .map_err(DriverError::from))
    }

    fn diff_size(&self, s: S<'_>, id: &str, parent: Option<&str>) -> Answered<u64> {
        answer(self.strata_driver_driver().call_diff_size(s, id, parent))
    }

    fn status(&self, s: S<'_>) -> wasmtime::Result<Vec<(String, String)>> {
        self.strata_driver_driver().call_status(s)
    }

    fn metadata(&self, s: S<'_>, id: &str) -> Answered<Vec<(String, String)>> {
        answer(self.strata_driver_driver().call_metadata(s, id))
    }

    fn layers_metadata(
        &self,
        s: S<'_>,
        ids: &[String],
    ) -> wasmtime::Result<Vec<Result<Pairs, DriverError>>> {
        Ok(self
            .strata_driver_driver()
            .call_layers_metadata(s, ids)?
            .into_iter()
            .map(|r| r.map_err(DriverError::from))
            .collect())
    }

    fn cleanup(&self, s: S<'_>) -> Answered<()> {
        answer(self.strata_driver_driver().call_cleanup(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_space_travels_as_its_errno_in_0_1() {
        let e = DriverError::NoSpace(IoError {
            errno: 122,
            message: "quota".into(),
        });
        match types::Error::from(e) {
            types::Error::Io(io) => assert_eq!((io.errno, io.message.as_str()), (122, "quota")),
            other => panic!("{other:?}"),
        }
    }

    fn overlay_plan(options: &[&str]) -> wit_driver::MountPlan {
        wit_driver::MountPlan {
            target: "mnt/l".into(),
            kind: wit_driver::MountKind::Overlay(wit_driver::OverlayMount {
                lower: vec!["l/diff".into()],
                upper: None,
                work: None,
                options: options.iter().map(|o| o.to_string()).collect(),
            }),
            read_only: true,
        }
    }

    #[test]
    fn overlay_option_strings_become_typed_options() {
        let p = plan(overlay_plan(&["index=off", "userxattr"])).unwrap();
        let c::MountKind::Overlay(o) = p.kind else {
            panic!("not an overlay")
        };
        assert_eq!(
            o.options,
            [OverlayOption::Index(false), OverlayOption::UserXattr]
        );
    }

    #[test]
    fn overlay_options_outside_the_list_are_an_invalid_answer() {
        for bad in ["lowerdir=/etc", "upperdir=/tmp", "index=off,lowerdir=/"] {
            let InvalidAnswer(why) = plan(overlay_plan(&["index=off", bad])).unwrap_err();
            assert!(why.contains("is not allowed"), "{bad}: {why}");
        }
    }
}

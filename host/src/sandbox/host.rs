//! The host interfaces drivers import (`files`, `copy`, `archive`, `overlay`, `btrfs`, `zfs`,
//! `log`), and the per-call store state behind them.
//!
//! The functions here take and return the host's own types ([`crate::contract`]) and are the
//! same for every contract version: each version's module (`v0_1`, ...) implements its
//! generated `Host` traits as thin adapters that convert at the edge and call them. They are
//! named after their interface (`files_mkdir`, `zfs_snapshot`).
//!
//! Every path a driver passes is untrusted: it is checked lexically and then resolved beneath
//! the driver's home with `openat2(RESOLVE_BENEATH)` by [`crate::sys::Dir`], so `..`,
//! absolute paths and symlinks that point out are answered with `denied`. Error messages
//! name the path as the driver gave it, never the host's absolute paths. Expected failures
//! are [`DriverError`] values; only host bugs trap.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::limits::CallBudget;
use crate::contract::{
    ApplyStats, Change, CopyMode, CopyStats, DriverError, FileStat, IoError, LogLevel,
    WhiteoutFormat,
};
use crate::sys::{self, ErrorKind, SysError};
use crate::{archive, copy};

mod btrfs;
mod overlay;
mod zfs;

pub use zfs::ZfsAccess;

/// Changes one call may return to a driver (each crosses into guest memory).
pub const MAX_CHANGES_TO_GUEST: usize = 1_000_000;
/// Bytes of one log message kept; the rest is cut.
pub const MAX_LOG_MESSAGE: usize = 4096;
/// Largest xattr value a driver may set.
pub const MAX_XATTR_VALUE: usize = 64 * 1024;

/// The verdict that a driver call ran past one of its time limits (raised by the epoch
/// callback, by a bounded WASI wait, or after bulk host work).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadlineExceeded {
    /// `deadline`: the driver's own time (guest execution, its WASI waits, and host calls
    /// that do a fixed amount of work each).
    Guest,
    /// `call_timeout`: the wall clock, everything included.
    Wall,
}

impl std::fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeadlineExceeded::Guest => f.write_str("driver exceeded its deadline"),
            DeadlineExceeded::Wall => f.write_str("driver call exceeded its call timeout"),
        }
    }
}

impl std::error::Error for DeadlineExceeded {}

/// Per-call state of one driver instance.
pub struct HostState {
    driver: String,
    home: Arc<sys::Dir>,
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limits: CallBudget,
    /// When the call started, for the deadline.
    pub(super) started: Instant,
    /// Time spent in bulk host work (see [`HostState::timed`]), which the deadline does not
    /// count.
    pub(super) host_time: Duration,
    /// The driver's own time allowed (`deadline`).
    pub(super) deadline: Duration,
    /// Wall-clock time allowed for the whole call (`call_timeout`).
    pub(super) call_timeout: Duration,
    /// Host-private runtime directory for this driver (probe caches), if any.
    run_dir: Option<Arc<std::path::PathBuf>>,
    /// The `zfs` capability's confined command, for drivers granted it.
    zfs: Option<ZfsAccess>,
    /// What the host's applies did to layers in this call.
    pub(super) applies: ApplyTrace,
    /// The host's file the applies of this call write their undo journal ahead to (an
    /// apply onto a layer with content: see `archive::journal`).
    pub(super) journal: Option<archive::Journal>,
}

/// What the host's `archive.apply` did during one driver call: whether a layer may have been
/// changed by it, which the caller needs when the call fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyTrace {
    /// Applies that succeeded (their changes stay).
    pub committed: u32,
    /// Applies that failed and could not be undone.
    pub not_undone: u32,
}

impl ApplyTrace {
    /// Whether no host apply of this call left a change behind.
    pub fn left_nothing(&self) -> bool {
        self.committed == 0 && self.not_undone == 0
    }
}

impl HostState {
    pub(super) fn new(
        driver: String,
        home: Arc<sys::Dir>,
        wasi: WasiCtx,
        limits: CallBudget,
        max_resources: usize,
    ) -> Self {
        let mut table = ResourceTable::new();
        table.set_max_capacity(max_resources);
        HostState {
            driver,
            home,
            wasi,
            table,
            limits,
            started: Instant::now(),
            host_time: Duration::ZERO,
            deadline: Duration::MAX,
            call_timeout: Duration::MAX,
            run_dir: None,
            zfs: None,
            applies: ApplyTrace::default(),
            journal: None,
        }
    }

    pub(super) fn with_zfs(mut self, zfs: Option<ZfsAccess>) -> Self {
        self.zfs = zfs;
        self
    }

    pub(super) fn with_run_dir(mut self, dir: Option<Arc<std::path::PathBuf>>) -> Self {
        self.run_dir = dir;
        self
    }

    pub(super) fn table_mut(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    pub(super) fn push_diff(&mut self, diff: LayerDiff) -> wasmtime::Result<Resource<LayerDiff>> {
        Ok(self.table.push(diff)?)
    }

    pub(super) fn take_diff(&mut self, diff: Resource<LayerDiff>) -> wasmtime::Result<LayerDiff> {
        Ok(self.table.delete(diff)?)
    }

    /// Sets the call's time limits (`deadline`, `call_timeout`), counted from now.
    pub(super) fn start_clock(&mut self, deadline: Duration, call_timeout: Duration) {
        self.started = Instant::now();
        self.host_time = Duration::ZERO;
        self.deadline = deadline;
        self.call_timeout = call_timeout;
    }

    /// The driver's own time so far: the wall clock less bulk host work.
    pub(super) fn guest_time(&self) -> Duration {
        self.started.elapsed().saturating_sub(self.host_time)
    }

    /// The limit this call has run past, if any.
    pub(super) fn exceeded(&self) -> Option<DeadlineExceeded> {
        if self.started.elapsed() >= self.call_timeout {
            Some(DeadlineExceeded::Wall)
        } else if self.guest_time() >= self.deadline {
            Some(DeadlineExceeded::Guest)
        } else {
            None
        }
    }

    /// When the call's wall-clock limit passes.
    pub(super) fn call_deadline(&self) -> Instant {
        far_after(self.started, self.call_timeout)
    }

    /// How long the guest may wait in WASI from now before a limit passes (waiting counts
    /// toward both), and which limit that is.
    pub(super) fn wait_allowance(&self) -> (Duration, DeadlineExceeded) {
        let wall = self.call_timeout.saturating_sub(self.started.elapsed());
        let guest = self.deadline.saturating_sub(self.guest_time());
        if wall <= guest {
            (wall, DeadlineExceeded::Wall)
        } else {
            (guest, DeadlineExceeded::Guest)
        }
    }

    /// Runs bulk host work (work that grows with the data: applying a tar, copying or
    /// comparing trees, btrfs and zfs commands), keeping its duration off the driver's
    /// `deadline`; it still counts toward `call_timeout`, which such work checks as it goes.
    fn timed<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> T {
        let start = Instant::now();
        let out = f(self);
        self.host_time += start.elapsed();
        out
    }

    /// Runs a host call that does a fixed amount of work (one stat, one mkdir): its time is
    /// the driver's, so a driver that loops on such calls runs into its `deadline`.
    fn paced<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> T {
        f(self)
    }

    fn open_dir(&self, path: &str) -> Result<sys::Dir, DriverError> {
        self.home.open_dir(path).map_err(|e| to_error(path, e))
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A layer diff held by the host on a driver's behalf.
pub struct LayerDiff {
    source: DiffSource,
}

enum DiffSource {
    /// A tar stream coming in (`apply-diff`); taken by the first `archive.apply`.
    Input(Option<Box<dyn Read + Send>>),
    /// A diff between two trees of the driver home (`archive.diff-trees`), or two merged
    /// overlay views (`overlay.diff-stacks`), streamed out by the host after the driver
    /// returned it.
    Trees {
        layer: sys::Dir,
        parent: Option<sys::Dir>,
    },
    /// The native diff of an overlay upper directory over the merged view of the layers
    /// below it (`overlay.diff-upper`).
    Upper {
        upper: sys::Dir,
        lower: Option<sys::Dir>,
        format: archive::WhiteoutFormat,
    },
}

impl LayerDiff {
    /// An incoming layer tar (uncompressed) for `apply-diff`.
    pub fn input(tar: Box<dyn Read + Send>) -> Self {
        LayerDiff {
            source: DiffSource::Input(Some(tar)),
        }
    }

    /// Streams this diff as a tar with `.wh.` whiteouts; returns the bytes written.
    pub fn write_tar(&self, out: &mut dyn Write) -> Result<u64, archive::ArchiveError> {
        match &self.source {
            DiffSource::Trees { layer, parent } => {
                archive::write_diff_tar(layer, parent.as_ref(), out)
            }
            DiffSource::Upper {
                upper,
                lower,
                format,
            } => archive::write_upper_tar(upper, lower.as_ref(), *format, out),
            DiffSource::Input(_) => Err(archive::ArchiveError::invalid(
                "a driver returned an incoming diff as its own diff",
            )),
        }
    }
}

/// The driver-facing error for a failure of `kind`, with `errno` where there was one.
fn driver_error(kind: ErrorKind, errno: i32, msg: String) -> DriverError {
    let io = IoError {
        errno,
        message: msg,
    };
    match kind {
        ErrorKind::NotFound => DriverError::NotFound(io.message),
        ErrorKind::AlreadyExists => DriverError::AlreadyExists(io.message),
        ErrorKind::Denied => DriverError::Denied(io.message),
        ErrorKind::Busy => DriverError::Busy(io.message),
        ErrorKind::Unsupported => DriverError::Unsupported(io.message),
        ErrorKind::InvalidArgument => DriverError::InvalidArgument(io.message),
        ErrorKind::NoSpace => DriverError::NoSpace(io),
        ErrorKind::Other => DriverError::Io(io),
    }
}

/// The driver-facing meaning of a host failure on `path` (as the driver named it).
pub(super) fn to_error(path: &str, e: SysError) -> DriverError {
    driver_error(e.kind, e.errno, format!("{path}: {}", e.reason()))
}

fn archive_error(what: &str, e: archive::ArchiveError) -> DriverError {
    driver_error(e.kind(), e.errno(), format!("{what}: {e}"))
}

fn copy_error(what: &str, e: copy::CopyError) -> DriverError {
    driver_error(e.kind(), e.errno(), format!("{what}: {e}"))
}

/// Makes guest text safe to print: every control character escaped (a newline included, so
/// a driver cannot forge a log line of the host's), length capped.
pub fn sanitize(text: &str) -> String {
    crate::text::escape_capped(text, MAX_LOG_MESSAGE)
}

/// What a host function answers a driver: a trap (`Err`, a host bug or a protocol
/// violation), or the interface's own result.
pub(super) type HostResult<T> = wasmtime::Result<Result<T, DriverError>>;

impl HostState {
    /// The driver dropped its handle to a layer diff.
    pub(super) fn drop_diff(&mut self, rep: Resource<LayerDiff>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

/// The `files` interface.
impl HostState {
    pub(super) fn files_mkdir(
        &mut self,
        path: String,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> HostResult<()> {
        Ok(self.paced(|s| {
            s.home
                .mkdir(&path, mode, uid, gid)
                .map_err(|e| to_error(&path, e))
        }))
    }

    pub(super) fn files_chown(&mut self, path: String, uid: u32, gid: u32) -> HostResult<()> {
        Ok(self.paced(|s| {
            s.home
                .lchown(&path, uid, gid)
                .map_err(|e| to_error(&path, e))
        }))
    }

    pub(super) fn files_chmod(&mut self, path: String, mode: u32) -> HostResult<()> {
        Ok(self.paced(|s| s.home.chmod(&path, mode).map_err(|e| to_error(&path, e))))
    }

    pub(super) fn files_set_xattr(
        &mut self,
        path: String,
        name: String,
        value: Vec<u8>,
    ) -> HostResult<()> {
        if value.len() > MAX_XATTR_VALUE {
            return Ok(Err(DriverError::InvalidArgument(format!(
                "{path}: xattr {name}: {} bytes is more than {MAX_XATTR_VALUE}",
                value.len()
            ))));
        }
        Ok(self.paced(|s| {
            s.home
                .set_xattr(&path, &name, &value)
                .map_err(|e| to_error(&path, e))
        }))
    }

    pub(super) fn files_get_xattr(
        &mut self,
        path: String,
        name: String,
    ) -> HostResult<Option<Vec<u8>>> {
        Ok(self.paced(|s| {
            s.home
                .get_xattr(&path, &name)
                .map_err(|e| to_error(&path, e))
        }))
    }

    pub(super) fn files_list_xattrs(&mut self, path: String) -> HostResult<Vec<String>> {
        Ok(self.paced(|s| s.home.list_xattrs(&path).map_err(|e| to_error(&path, e))))
    }

    pub(super) fn files_remove_xattr(&mut self, path: String, name: String) -> HostResult<()> {
        Ok(self.paced(|s| {
            s.home
                .remove_xattr(&path, &name)
                .map_err(|e| to_error(&path, e))
        }))
    }

    pub(super) fn files_make_whiteout(&mut self, path: String) -> HostResult<()> {
        Ok(self.paced(|s| s.home.make_whiteout(&path).map_err(|e| to_error(&path, e))))
    }

    pub(super) fn files_symlink(&mut self, target: String, path: String) -> HostResult<()> {
        Ok(self.paced(|s| {
            s.home
                .symlink(&target, &path)
                .map_err(|e| to_error(&path, e))
        }))
    }

    pub(super) fn files_set_times(
        &mut self,
        path: String,
        atime: i64,
        mtime: i64,
    ) -> HostResult<()> {
        Ok(self.paced(|s| {
            s.home
                .set_times(&path, (atime, 0), (mtime, 0))
                .map_err(|e| to_error(&path, e))
        }))
    }

    pub(super) fn files_stat(&mut self, path: String) -> HostResult<FileStat> {
        Ok(self.paced(|s| {
            s.home
                .lstat(&path)
                .map(|st| FileStat {
                    kind: st.kind,
                    mode: st.mode,
                    uid: st.uid,
                    gid: st.gid,
                    size: st.size,
                    nlink: st.nlink,
                    rdev: st.rdev,
                    mtime_seconds: st.mtime_sec,
                    mtime_nanoseconds: st.mtime_nsec,
                })
                .map_err(|e| to_error(&path, e))
        }))
    }

    pub(super) fn files_remove_tree(&mut self, path: String) -> HostResult<()> {
        Ok(self.timed(|s| s.home.remove_tree(&path).map_err(|e| to_error(&path, e))))
    }

    pub(super) fn files_filesystem_type(&mut self, path: String) -> HostResult<String> {
        Ok(self.paced(|s| {
            s.home
                .filesystem_type(&path)
                .map(str::to_string)
                .map_err(|e| to_error(&path, e))
        }))
    }
}

/// The `copy` interface.
impl HostState {
    pub(super) fn copy_copy_file(
        &mut self,
        src: String,
        dst: String,
        mode: CopyMode,
    ) -> HostResult<CopyStats> {
        Ok(self.timed(|s| {
            copy::copy_file(&s.home, &src, &s.home, &dst, mode)
                .map_err(|e| copy_error(&format!("{src} -> {dst}"), e))
        }))
    }

    pub(super) fn copy_copy_tree(
        &mut self,
        src: String,
        dst: String,
        mode: CopyMode,
    ) -> HostResult<CopyStats> {
        Ok(self.timed(|s| {
            let until = s.call_deadline();
            copy::copy_tree_until(&s.home, &src, &s.home, &dst, mode, until)
                .map_err(|e| copy_error(&format!("{src} -> {dst}"), e))
        }))
    }
}

/// Changes as the guest receives them, at most [`MAX_CHANGES_TO_GUEST`].
fn changes_out(what: &str, changes: Vec<Change>) -> Result<Vec<Change>, DriverError> {
    if changes.len() > MAX_CHANGES_TO_GUEST {
        return Err(DriverError::Unsupported(format!(
            "{what}: {} changes is more than the {MAX_CHANGES_TO_GUEST} a driver call may return",
            changes.len()
        )));
    }
    Ok(changes)
}

impl HostState {
    fn open_pair(
        &self,
        layer: &str,
        parent: Option<&str>,
    ) -> Result<(sys::Dir, Option<sys::Dir>), DriverError> {
        let layer_dir = self.open_dir(layer)?;
        let parent_dir = parent.map(|p| self.open_dir(p)).transpose()?;
        Ok((layer_dir, parent_dir))
    }
}

/// The `archive` interface.
impl HostState {
    pub(super) fn archive_apply(
        &mut self,
        diff: Resource<LayerDiff>,
        dest: String,
        whiteouts: WhiteoutFormat,
    ) -> HostResult<ApplyStats> {
        let reader = match &mut self.table.get_mut(&diff)?.source {
            DiffSource::Input(reader) => reader.take(),
            DiffSource::Trees { .. } | DiffSource::Upper { .. } => None,
        };
        let Some(reader) = reader else {
            return Ok(Err(DriverError::InvalidArgument(
                "this diff was already applied, or is not an incoming diff".into(),
            )));
        };
        let reader = UntilReader {
            inner: reader,
            until: self.call_deadline(),
        };
        Ok(self.timed(|s| {
            let dest_dir = s.open_dir(&dest)?;
            let applied = archive::apply_layer_tar_journaled(
                reader,
                &dest_dir,
                &dest,
                whiteouts,
                s.journal.as_mut(),
            );
            match &applied {
                Ok(_) => s.applies.committed += 1,
                Err(archive::ArchiveError::Undone(_)) => {}
                Err(_) => s.applies.not_undone += 1,
            }
            applied.map_err(|e| archive_error(&format!("applying a layer onto {dest}"), e))
        }))
    }

    pub(super) fn archive_diff_trees(
        &mut self,
        layer: String,
        parent: Option<String>,
    ) -> HostResult<Resource<LayerDiff>> {
        let pair = self.timed(|s| s.open_pair(&layer, parent.as_deref()));
        match pair {
            Ok((layer, parent)) => Ok(Ok(self.push_diff(LayerDiff {
                source: DiffSource::Trees { layer, parent },
            })?)),
            Err(e) => Ok(Err(e)),
        }
    }

    pub(super) fn archive_changes(
        &mut self,
        layer: String,
        parent: Option<String>,
    ) -> HostResult<Vec<Change>> {
        Ok(self.timed(|s| {
            let (l, p) = s.open_pair(&layer, parent.as_deref())?;
            let changes = archive::changes(&l, p.as_ref())
                .map_err(|e| archive_error(&format!("comparing {layer}"), e))?;
            changes_out(&layer, changes)
        }))
    }

    pub(super) fn archive_diff_size(
        &mut self,
        layer: String,
        parent: Option<String>,
    ) -> HostResult<u64> {
        Ok(self.timed(|s| {
            let (l, p) = s.open_pair(&layer, parent.as_deref())?;
            archive::diff_size(&l, p.as_ref())
                .map_err(|e| archive_error(&format!("sizing {layer}"), e))
        }))
    }
}

/// A layer stream that ends in an error once the driver call's wall-clock limit has passed,
/// so that applying an endless (or very slow) stream stops with the call; checked per read.
struct UntilReader<R> {
    inner: R,
    until: Instant,
}

impl<R: Read> Read for UntilReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if Instant::now() >= self.until {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "stopped: the driver call ran out of time",
            ));
        }
        self.inner.read(buf)
    }
}

/// `start + d`, or far in the future when that does not fit.
fn far_after(start: Instant, d: Duration) -> Instant {
    start
        .checked_add(d)
        .unwrap_or_else(|| start + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// The most verbose driver log level printed, from `STRATA_LOG` (`error`, `warn` (default),
/// `info`, `debug`, `trace`).
fn log_threshold() -> u8 {
    match std::env::var("STRATA_LOG").as_deref() {
        Ok("error") => 0,
        Ok("info") => 2,
        Ok("debug") => 3,
        Ok("trace") => 4,
        _ => 1,
    }
}

/// The `log` interface.
impl HostState {
    pub(super) fn log_log(&mut self, level: LogLevel, message: String) -> wasmtime::Result<()> {
        let (rank, word) = match level {
            LogLevel::Error => (0, "error"),
            LogLevel::Warn => (1, "warn"),
            LogLevel::Info => (2, "info"),
            LogLevel::Debug => (3, "debug"),
            LogLevel::Trace => (4, "trace"),
        };
        if rank <= log_threshold() {
            eprintln!(
                "strata: driver {}: {word}: {}",
                self.driver,
                sanitize(&message)
            );
        }
        Ok(())
    }
}

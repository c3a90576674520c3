//! ZFS datasets, through the `zfs` command, confined to the operator's parent dataset.
//!
//! The host drives the `zfs` command (as containers/storage does) rather than `libzfs`: the
//! command is the interface both kernel ZFS and zfs-fuse keep stable. Every call is an
//! argument vector (never a shell) with a clean environment, a timeout and capped output.
//!
//! Why the checks here: a driver names datasets *relative* to the parent dataset the operator
//! configured (`[drivers.NAME] fsname`). [`Zfs::full_name`] refuses (`denied`) every name that
//! would leave it (absolute names, `..`, the parent itself), and only properties on an
//! allow-list may be set: `mountpoint`, `sharenfs`, `keylocation` and friends would let a
//! driver mount a dataset over a host path or make the daemon read host files.
//!
//! Mounting differs by backend ([`ZfsBackend`], detected once):
//! - kernel ZFS: datasets are created `mountpoint=legacy` and mounted with `mount(2)` type
//!   `zfs` onto the target directory's `/proc/self/fd/N`, which was resolved beneath the
//!   home, so the target cannot be swapped for a symlink after the check;
//! - zfs-fuse: the daemon mounts a dataset where its `mountpoint` property says, by path.
//!   That path is a host-private directory under the run root (the driver cannot touch it),
//!   and the host then binds it onto the target by file descriptor (`open_tree` +
//!   `move_mount`). The private mount stays until the dataset is destroyed.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rustix::mount::{MountFlags, UnmountFlags};

use super::error::{ErrorKind, SysError, SysResult};
use super::fs::{Dir, is_mount_root_at};
use super::mount;

/// The longest full dataset or snapshot name ZFS accepts (`ZFS_MAX_DATASET_NAME_LEN` - 1).
pub const MAX_DATASET_NAME: usize = 255;
/// Bytes of a property value a driver may set.
pub const MAX_PROPERTY_VALUE: usize = 1024;
/// Properties one call may set or read.
pub const MAX_PROPERTIES_PER_CALL: usize = 64;
/// Datasets and snapshots one `list` may return.
pub const MAX_LISTED_DATASETS: usize = 100_000;
/// Bytes of `zfs` output read (a listing of [`MAX_LISTED_DATASETS`] fits).
pub const MAX_COMMAND_OUTPUT: usize = 64 << 20;
/// How long one `zfs` command may run before it is killed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
/// How often a destroy that zfs-fuse answered "dataset is busy" (its unmount still
/// settling) is retried, and how long it waits between tries.
pub const BUSY_RETRIES: u32 = 20;
pub const BUSY_RETRY_WAIT: Duration = Duration::from_millis(50);

/// Where the `zfs` command is looked for, in order (root's usual locations; `$PATH` is not
/// consulted, so the environment of whoever started the host cannot choose the binary).
const ZFS_COMMANDS: &[&str] = &[
    "/usr/sbin/zfs",
    "/sbin/zfs",
    "/usr/bin/zfs",
    "/usr/local/sbin/zfs",
];

/// Properties a driver may set: storage behaviour of its own datasets, nothing that names
/// a host path, shares a dataset, or reads keys.
pub const SETTABLE_PROPERTIES: &[&str] = &[
    "quota",
    "refquota",
    "reservation",
    "refreservation",
    "compression",
    "atime",
    "recordsize",
    "checksum",
    "copies",
    "dedup",
    "exec",
    "setuid",
    "devices",
    "readonly",
    "xattr",
    "snapdir",
    "sync",
    "logbias",
    "primarycache",
    "secondarycache",
];

/// Read-only statistics a driver may read, beyond [`SETTABLE_PROPERTIES`] and user
/// properties. `mountpoint` is not among them: it is the host's private business.
pub const READABLE_STATISTICS: &[&str] = &[
    "type",
    "used",
    "referenced",
    "available",
    "usedbysnapshots",
    "usedbydataset",
    "usedbychildren",
    "usedbyrefreservation",
    "origin",
    "creation",
    "mounted",
    "compressratio",
    "defer_destroy",
    "userrefs",
];

/// Properties refused with an explanation, because setting them would leave the parent
/// dataset or the driver home.
const ESCAPING_PROPERTIES: &[(&str, &str)] = &[
    (
        "mountpoint",
        "the host mounts datasets; a mountpoint could put one over any host path",
    ),
    ("canmount", "the host decides when datasets mount"),
    ("sharenfs", "sharing exports a dataset off the host"),
    ("sharesmb", "sharing exports a dataset off the host"),
    ("zoned", "delegates the dataset to another zone"),
    ("mlslabel", "labels belong to the operator"),
    (
        "keylocation",
        "a key location makes the host read a path or URL",
    ),
    ("keyformat", "encryption keys belong to the operator"),
    ("encryption", "encryption keys belong to the operator"),
    ("volsize", "drivers get filesystems, not volumes"),
];

/// Which ZFS implementation serves the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZfsBackend {
    /// The ZFS kernel module (OpenZFS on Linux).
    Kernel,
    /// The zfs-fuse daemon (Debian `zfs-fuse`): datasets are FUSE mounts.
    Fuse,
}

impl ZfsBackend {
    /// `zfs` appears in `/proc/filesystems` only when the kernel module is loaded; without
    /// it, the `zfs` command can only be talking to zfs-fuse.
    pub fn detect() -> ZfsBackend {
        let kernel = std::fs::read_to_string("/proc/filesystems")
            .map(|t| {
                t.lines()
                    .any(|l| l.split_whitespace().last() == Some("zfs"))
            })
            .unwrap_or(false);
        if kernel {
            ZfsBackend::Kernel
        } else {
            ZfsBackend::Fuse
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ZfsBackend::Kernel => "kernel",
            ZfsBackend::Fuse => "zfs-fuse",
        }
    }

    /// The `mountpoint` every dataset the host creates starts with: not mounted anywhere.
    fn initial_mountpoint(self) -> &'static str {
        match self {
            ZfsBackend::Kernel => "legacy",
            ZfsBackend::Fuse => "none",
        }
    }
}

/// What a name passed by a driver must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameKind {
    /// `a/b`: a filesystem beneath the parent.
    Dataset,
    /// `a/b@snap`.
    Snapshot,
    /// Either.
    Any,
}

/// One dataset or snapshot of a listing, its name relative to the parent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedDataset {
    pub name: String,
    pub properties: Vec<(String, String)>,
}

/// The `zfs` command, confined to one parent dataset.
#[derive(Debug)]
pub struct Zfs {
    command: PathBuf,
    parent: String,
    backend: ZfsBackend,
    /// zfs-fuse only: where the daemon mounts datasets before the host binds them into the
    /// home (host-private, under the run root).
    private_mounts: PathBuf,
}

fn component_ok(c: &str) -> bool {
    !c.is_empty()
        && c != "."
        && c != ".."
        && !c.starts_with('-')
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

/// Checks an operator's parent dataset name (`pool/path`, no snapshot).
pub fn check_parent_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_DATASET_NAME {
        return Err(format!("must be 1..{MAX_DATASET_NAME} bytes"));
    }
    if !name.split('/').all(component_ok) {
        return Err(format!(
            "`{name}` is not a dataset name (components of letters, digits, `_-.:`, \
             separated by `/`, no leading `/`)"
        ));
    }
    Ok(())
}

impl Zfs {
    /// The `zfs` command for datasets beneath `parent` (already checked with
    /// [`check_parent_name`]); `run_dir` is host-private runtime space.
    pub fn new(parent: &str, run_dir: &Path) -> SysResult<Zfs> {
        check_parent_name(parent).map_err(|m| SysError::invalid("zfs", parent, m))?;
        let command = ZFS_COMMANDS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or_else(|| {
                SysError::without_errno(
                    ErrorKind::Unsupported,
                    "zfs",
                    parent,
                    format!(
                        "no zfs command (looked in {}); install zfsutils-linux or zfs-fuse",
                        ZFS_COMMANDS.join(", ")
                    ),
                )
            })?;
        Ok(Zfs {
            command,
            parent: parent.to_string(),
            backend: ZfsBackend::detect(),
            private_mounts: run_dir.join("zfs-mounts"),
        })
    }

    pub fn backend(&self) -> ZfsBackend {
        self.backend
    }

    /// The operator's parent dataset.
    pub fn parent(&self) -> &str {
        &self.parent
    }

    /// The full name of `rel`, a name relative to the parent; `denied` for anything that
    /// would leave the parent (or name the parent itself), `invalid-argument` for names
    /// ZFS would refuse.
    pub fn full_name(&self, rel: &str, kind: NameKind) -> SysResult<String> {
        let op = "zfs name";
        if rel.is_empty() {
            return Err(SysError::escape(
                op,
                rel,
                "names the parent dataset itself, which belongs to the operator",
            ));
        }
        if rel.starts_with('/') {
            return Err(SysError::escape(
                op,
                rel,
                "dataset names are relative to the parent dataset",
            ));
        }
        let (dataset, snapshot) = match rel.split_once('@') {
            Some((d, s)) => (d, Some(s)),
            None => (rel, None),
        };
        if dataset
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(SysError::escape(
                op,
                rel,
                "empty, `.` and `..` components would leave the parent dataset",
            ));
        }
        match (kind, snapshot) {
            (NameKind::Dataset, Some(_)) => {
                return Err(SysError::invalid(
                    op,
                    rel,
                    "expected a dataset, not a snapshot",
                ));
            }
            (NameKind::Snapshot, None) => {
                return Err(SysError::invalid(
                    op,
                    rel,
                    "expected a snapshot (`DATASET@NAME`)",
                ));
            }
            _ => {}
        }
        if !dataset.split('/').all(component_ok) || !snapshot.is_none_or(component_ok) {
            return Err(SysError::invalid(
                op,
                rel,
                "names are letters, digits and `_-.:` (no leading `-`), one `@` before a \
                 snapshot name",
            ));
        }
        let full = format!("{}/{rel}", self.parent);
        if full.len() > MAX_DATASET_NAME {
            return Err(SysError::invalid(
                op,
                rel,
                format!(
                    "the full name would be {} bytes; ZFS allows {MAX_DATASET_NAME}",
                    full.len()
                ),
            ));
        }
        Ok(full)
    }

    /// The name of `full` relative to the parent, or `None` when it is outside it (or the
    /// parent itself, or one of the parent's own snapshots).
    pub fn relative_name(&self, full: &str) -> Option<String> {
        full.strip_prefix(&self.parent)?
            .strip_prefix('/')
            .filter(|r| !r.is_empty())
            .map(str::to_string)
    }

    /// Checks properties a driver asks to set; returns `KEY=VALUE` arguments.
    fn settable(&self, subject: &str, properties: &[(String, String)]) -> SysResult<Vec<String>> {
        if properties.len() > MAX_PROPERTIES_PER_CALL {
            return Err(SysError::invalid(
                "zfs set",
                subject,
                format!("more than {MAX_PROPERTIES_PER_CALL} properties"),
            ));
        }
        properties
            .iter()
            .map(|(k, v)| {
                check_settable(k)
                    .and_then(|()| check_value(k, v))
                    .map_err(|e| e.at(subject))?;
                Ok(format!("{k}={v}"))
            })
            .collect()
    }

    /// Runs `zfs ARGS`; a failure is classified from the command's message, which is
    /// passed on with the parent's name taken out.
    fn run(&self, op: &'static str, subject: &str, args: &[&str]) -> SysResult<String> {
        let mut child = Command::new(&self.command)
            .args(args)
            .env_clear()
            .env("LC_ALL", "C")
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                SysError::without_errno(
                    ErrorKind::Other,
                    op,
                    subject,
                    format!("cannot run {}: {e}", self.command.display()),
                )
            })?;
        let mut stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut err = Vec::new();
            let reader = std::thread::spawn(move || {
                let mut out = Vec::new();
                let r = (&mut stdout)
                    .take(MAX_COMMAND_OUTPUT as u64 + 1)
                    .read_to_end(&mut out);
                // Drain the rest so the command never blocks on a full pipe.
                let _ = std::io::copy(&mut stdout, &mut std::io::sink());
                r.map(|_| out)
            });
            let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut err);
            let _ = std::io::copy(&mut stderr, &mut std::io::sink());
            let out = reader.join().unwrap_or_else(|_| Ok(Vec::new()));
            let status = child.wait();
            let _ = tx.send((status, out, err));
        });
        let (status, out, err) = match rx.recv_timeout(COMMAND_TIMEOUT) {
            Ok(r) => r,
            Err(_) => {
                if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
                return Err(SysError::without_errno(
                    ErrorKind::Busy,
                    op,
                    subject,
                    format!(
                        "zfs did not answer within {}s (is the zfs daemon stuck?)",
                        COMMAND_TIMEOUT.as_secs()
                    ),
                ));
            }
        };
        let io = |what: String| SysError::without_errno(ErrorKind::Other, op, subject, what);
        let status = status.map_err(|e| io(format!("waiting for zfs: {e}")))?;
        let out = out.map_err(|e| io(format!("reading zfs output: {e}")))?;
        if out.len() > MAX_COMMAND_OUTPUT {
            return Err(io(format!(
                "zfs printed more than {MAX_COMMAND_OUTPUT} bytes"
            )));
        }
        if status.success() {
            return String::from_utf8(out).map_err(|_| io("zfs printed non-UTF-8 text".into()));
        }
        let message = String::from_utf8_lossy(&err);
        let first = message
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("zfs failed without a message")
            .trim();
        let mut first = first.replace(&format!("{}/", self.parent), "");
        first.truncate(512);
        Err(SysError::without_errno(
            classify(&message),
            op,
            subject,
            first,
        ))
    }

    /// The `type` of the parent dataset (`filesystem` when it is usable); `not-found` with
    /// the command that makes it when it does not exist.
    pub fn parent_type(&self) -> SysResult<String> {
        let parent = self.parent.as_str();
        match self.run(
            "zfs get",
            parent,
            &["get", "-H", "-o", "value", "type", parent],
        ) {
            Ok(out) => Ok(out.trim().to_string()),
            Err(mut e) if e.kind == ErrorKind::NotFound => {
                e.detail = Some(format!(
                    "the parent dataset {parent} does not exist; create it with \
                     `zfs create -o mountpoint=none {parent}`"
                ));
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// `zfs create`: a filesystem not mounted anywhere yet.
    pub fn create(&self, rel: &str, properties: &[(String, String)]) -> SysResult<()> {
        let full = self.full_name(rel, NameKind::Dataset)?;
        let props = self.settable(rel, properties)?;
        let mountpoint = format!("mountpoint={}", self.backend.initial_mountpoint());
        let mut args = vec!["create", "-o", &mountpoint];
        for p in &props {
            args.extend(["-o", p]);
        }
        args.push(&full);
        self.run("zfs create", rel, &args).map(drop)
    }

    /// `zfs snapshot DATASET@NAME`.
    pub fn snapshot(&self, rel: &str) -> SysResult<()> {
        let full = self.full_name(rel, NameKind::Snapshot)?;
        self.run("zfs snapshot", rel, &["snapshot", &full])
            .map(drop)
    }

    /// `zfs clone SNAPSHOT DATASET`: a writable filesystem sharing the snapshot's blocks.
    pub fn clone_snapshot(
        &self,
        snapshot: &str,
        rel: &str,
        properties: &[(String, String)],
    ) -> SysResult<()> {
        let source = self.full_name(snapshot, NameKind::Snapshot)?;
        let full = self.full_name(rel, NameKind::Dataset)?;
        let props = self.settable(rel, properties)?;
        let mountpoint = format!("mountpoint={}", self.backend.initial_mountpoint());
        let mut args = vec!["clone", "-o", &mountpoint];
        for p in &props {
            args.extend(["-o", p]);
        }
        args.extend([source.as_str(), full.as_str()]);
        self.run("zfs clone", rel, &args).map(drop)
    }

    /// `zfs destroy [-r]`: `recursive` takes the dataset's snapshots and children with it.
    /// A dataset the host mounted privately (zfs-fuse) is unmounted first.
    pub fn destroy(&self, rel: &str, recursive: bool) -> SysResult<()> {
        let full = self.full_name(rel, NameKind::Any)?;
        let mut args = vec!["destroy"];
        if recursive {
            args.push("-r");
        }
        args.push(&full);
        let private = self.private_mount(&full);
        if !full.contains('@') && self.backend == ZfsBackend::Fuse && is_mounted_dir(&private) {
            self.run("zfs unmount", rel, &["unmount", &full])?;
        }
        let mut tries = 0;
        loop {
            match self.run("zfs destroy", rel, &args) {
                Err(e)
                    if e.kind == ErrorKind::Busy
                        && e.reason().contains("dataset is busy")
                        && tries < BUSY_RETRIES =>
                {
                    tries += 1;
                    std::thread::sleep(BUSY_RETRY_WAIT);
                }
                Err(e) => return Err(e),
                Ok(_) => break,
            }
        }
        if !full.contains('@') {
            let _ = std::fs::remove_dir(&private);
        }
        Ok(())
    }

    /// `zfs set KEY=VALUE` for each property (one at a time: zfs-fuse takes one per call).
    pub fn set_properties(&self, rel: &str, properties: &[(String, String)]) -> SysResult<()> {
        let full = self.full_name(rel, NameKind::Any)?;
        for p in self.settable(rel, properties)? {
            self.run("zfs set", rel, &["set", &p, &full])?;
        }
        Ok(())
    }

    /// `zfs get -H -p`: the named properties of one dataset or snapshot, in order.
    pub fn get_properties(&self, rel: &str, names: &[String]) -> SysResult<Vec<(String, String)>> {
        let full = self.full_name(rel, NameKind::Any)?;
        let list = self.readable(rel, names)?;
        let out = self.run(
            "zfs get",
            rel,
            &["get", "-H", "-p", "-o", "property,value", &list, &full],
        )?;
        out.lines()
            .map(|line| {
                let (k, v) = line.split_once('\t').ok_or_else(|| {
                    SysError::without_errno(
                        ErrorKind::Other,
                        "zfs get",
                        rel,
                        format!("unexpected zfs output line `{line}`"),
                    )
                })?;
                Ok((k.to_string(), self.translate_value(k, v)))
            })
            .collect()
    }

    /// The named properties of every dataset and snapshot beneath `rel` (beneath the parent
    /// when `None`), with one `zfs get -H -p -r` whatever their number. (zfs-fuse's `zfs list`
    /// has no `-p`; `zfs get -p` gives exact numbers on both backends.)
    ///
    /// `depth` limits how far below (`zfs get -d`): 1 is the children without their
    /// snapshots, which is what a listing of layers needs and about a third of the work.
    pub fn list(
        &self,
        rel: Option<&str>,
        names: &[String],
        depth: Option<u32>,
    ) -> SysResult<Vec<ListedDataset>> {
        let full = match rel {
            Some(r) => self.full_name(r, NameKind::Dataset)?,
            None => self.parent.clone(),
        };
        let subject = rel.unwrap_or(".");
        let list = self.readable(subject, names)?;
        let depth = depth.map(|d| d.to_string());
        let mut args = vec!["get", "-H", "-p", "-r"];
        if let Some(d) = &depth {
            args.extend(["-d", d]);
        }
        args.extend(["-o", "name,property,value", &list, &full]);
        let out = self.run("zfs get", subject, &args)?;
        let mut listed: Vec<ListedDataset> = Vec::new();
        for line in out.lines() {
            let mut fields = line.splitn(3, '\t');
            let (Some(name), Some(k), Some(v)) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(SysError::without_errno(
                    ErrorKind::Other,
                    "zfs get",
                    subject,
                    format!("unexpected zfs output line `{line}`"),
                ));
            };
            let Some(name) = self.relative_name(name) else {
                continue;
            };
            let value = self.translate_value(k, v);
            match listed.last_mut() {
                Some(last) if last.name == name => last.properties.push((k.to_string(), value)),
                _ => {
                    if listed.len() == MAX_LISTED_DATASETS {
                        return Err(SysError::without_errno(
                            ErrorKind::Other,
                            "zfs get",
                            subject,
                            format!("more than {MAX_LISTED_DATASETS} datasets"),
                        ));
                    }
                    listed.push(ListedDataset {
                        name,
                        properties: vec![(k.to_string(), value)],
                    });
                }
            }
        }
        Ok(listed)
    }

    /// Checks property names a driver asks to read; returns the comma-separated list.
    fn readable(&self, subject: &str, names: &[String]) -> SysResult<String> {
        if names.is_empty() || names.len() > MAX_PROPERTIES_PER_CALL {
            return Err(SysError::invalid(
                "zfs get",
                subject,
                format!("ask for 1..{MAX_PROPERTIES_PER_CALL} properties"),
            ));
        }
        for n in names {
            if !(READABLE_STATISTICS.contains(&n.as_str())
                || SETTABLE_PROPERTIES.contains(&n.as_str())
                || is_user_property(n))
            {
                let reason = ESCAPING_PROPERTIES
                    .iter()
                    .find(|(p, _)| p == n)
                    .map(|(_, why)| *why)
                    .unwrap_or("not among the properties a driver may read");
                return Err(SysError::escape(
                    "zfs get",
                    subject,
                    format!("property `{n}`: {reason}"),
                ));
            }
        }
        Ok(names.join(","))
    }

    /// A property value as the driver sees it: dataset names (`origin`) made relative, and
    /// `-` for a name outside the parent.
    fn translate_value(&self, property: &str, value: &str) -> String {
        if property == "origin" && value != "-" {
            return self.relative_name(value).unwrap_or_else(|| "-".into());
        }
        value.to_string()
    }

    /// Where zfs-fuse mounts `full` for the host (`/` spelled `%`, which ZFS names never hold).
    fn private_mount(&self, full: &str) -> PathBuf {
        self.private_mounts.join(full.replace('/', "%"))
    }

    /// Mounts dataset `rel` onto `target` (a directory resolved beneath the home;
    /// `target_rel` names it in messages). `already-exists` when `target` is a mount point.
    pub fn mount(&self, rel: &str, target: &Dir, target_rel: &str) -> SysResult<()> {
        let full = self.full_name(rel, NameKind::Dataset)?;
        if is_mount_root(target) {
            return Err(SysError::without_errno(
                ErrorKind::AlreadyExists,
                "zfs mount",
                target_rel,
                "something is already mounted here",
            ));
        }
        match self.backend {
            ZfsBackend::Kernel => {
                let at = format!("/proc/self/fd/{}", target.as_fd().as_raw_fd());
                rustix::mount::mount(full.as_str(), at.as_str(), "zfs", MountFlags::empty(), None)
                    .map_err(|e| SysError::from_errno("mount(zfs)", target_rel, e))
            }
            ZfsBackend::Fuse => {
                let private = self.private_mount(&full);
                if !is_mounted_dir(&private) {
                    std::fs::create_dir_all(&private).map_err(|e| {
                        SysError::without_errno(
                            ErrorKind::Other,
                            "zfs mount",
                            rel,
                            format!("creating the host's mount directory: {e}"),
                        )
                    })?;
                    let mountpoint = format!("mountpoint={}", private.display());
                    self.run("zfs set", rel, &["set", &mountpoint, &full])?;
                    if !is_mounted_dir(&private) {
                        self.run("zfs mount", rel, &["mount", &full])?;
                    }
                    if !is_mounted_dir(&private) {
                        return Err(SysError::without_errno(
                            ErrorKind::Other,
                            "zfs mount",
                            rel,
                            "zfs reported success but the dataset is not mounted",
                        ));
                    }
                }
                let source = Dir::open_ambient(&private)?;
                mount::bind(&source, target, target.path(), false)
                    .map(|_| ())
                    .map_err(|e| e.at(target_rel))
            }
        }
    }

    /// Unmounts whatever the host mounted at `target_rel` beneath `home`. The target is
    /// named through its parent directory's descriptor (`/proc/self/fd/N/NAME`, final
    /// component not followed): a descriptor of the mount root itself would keep it busy,
    /// and a path from `/` could be redirected by a symlink swapped in after the check. On
    /// zfs-fuse the dataset's private mount stays until the dataset is destroyed.
    pub fn unmount(&self, home: &Dir, target_rel: &str) -> SysResult<()> {
        let rel = super::fs::check_relative(target_rel)?;
        let (parent, name) = home.parent(&rel)?;
        if !is_mount_root_at(parent.as_fd(), &name)? {
            return Err(SysError::invalid("umount", target_rel, "not a mount point"));
        }
        let mut at = std::ffi::OsString::from(format!("/proc/self/fd/{}/", parent.as_raw_fd()));
        at.push(&name);
        rustix::mount::unmount(Path::new(&at), UnmountFlags::NOFOLLOW)
            .map_err(|e| SysError::from_errno("umount2", target_rel, e))
    }
}

/// Whether the directory `dir` is the root of a mount (checked on its own descriptor).
fn is_mount_root(dir: &Dir) -> bool {
    rustix::fs::statx(
        dir.as_fd(),
        "",
        rustix::fs::AtFlags::EMPTY_PATH,
        rustix::fs::StatxFlags::BASIC_STATS,
    )
    .map(|st| {
        st.stx_attributes_mask
            .contains(rustix::fs::StatxAttributes::MOUNT_ROOT)
            && st
                .stx_attributes
                .contains(rustix::fs::StatxAttributes::MOUNT_ROOT)
    })
    .unwrap_or(false)
}

/// Whether the host-private directory `path` has a filesystem mounted on it.
fn is_mounted_dir(path: &Path) -> bool {
    match (
        std::fs::metadata(path),
        path.parent().map(std::fs::metadata),
    ) {
        (Ok(m), Some(Ok(p))) => {
            use std::os::unix::fs::MetadataExt;
            m.dev() != p.dev()
        }
        _ => false,
    }
}

fn is_user_property(name: &str) -> bool {
    name.contains(':')
        && name.len() <= 256
        && !name.starts_with(':')
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b':' | b'_' | b'-' | b'.')
        })
}

fn check_settable(name: &str) -> SysResult<()> {
    if let Some((_, why)) = ESCAPING_PROPERTIES.iter().find(|(p, _)| *p == name) {
        return Err(SysError::escape(
            "zfs set",
            "",
            format!("property `{name}` may not be set by a driver: {why}"),
        ));
    }
    if SETTABLE_PROPERTIES.contains(&name) || is_user_property(name) {
        Ok(())
    } else {
        Err(SysError::escape(
            "zfs set",
            "",
            format!(
                "property `{name}` is not among those a driver may set ({}, or a user \
                 property `module:name`)",
                SETTABLE_PROPERTIES.join(", ")
            ),
        ))
    }
}

fn check_value(name: &str, value: &str) -> SysResult<()> {
    if value.is_empty() || value.len() > MAX_PROPERTY_VALUE {
        return Err(SysError::invalid(
            "zfs set",
            "",
            format!("property `{name}`: the value must be 1..{MAX_PROPERTY_VALUE} bytes"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(SysError::invalid(
            "zfs set",
            "",
            format!("property `{name}`: control characters in the value"),
        ));
    }
    Ok(())
}

/// The meaning of a `zfs` failure, from its message (the command has no error codes).
fn classify(message: &str) -> ErrorKind {
    let m = message.to_ascii_lowercase();
    if m.contains("does not exist") || m.contains("no such pool") {
        ErrorKind::NotFound
    } else if m.contains("already exists") {
        ErrorKind::AlreadyExists
    } else if m.contains("dependent clones") || m.contains("has children") || m.contains("busy") {
        ErrorKind::Busy
    } else if m.contains("permission denied") {
        ErrorKind::Denied
    } else if m.contains("out of space") || m.contains("quota exceeded") {
        ErrorKind::NoSpace
    } else if m.contains("invalid")
        || m.contains("bad ")
        || m.contains("usage:")
        || m.contains("not currently mounted")
    {
        ErrorKind::InvalidArgument
    } else {
        ErrorKind::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zfs() -> Zfs {
        Zfs {
            command: PathBuf::from("/usr/sbin/zfs"),
            parent: "tank/strata".into(),
            backend: ZfsBackend::Fuse,
            private_mounts: PathBuf::from("/run/strata/zfs/zfs-mounts"),
        }
    }

    #[test]
    fn names_leaving_the_parent_are_denied() {
        let z = zfs();
        for bad in [
            "",
            "/tank",
            "/tank/strata/x",
            "..",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a/",
            "a/.@s",
        ] {
            let e = z.full_name(bad, NameKind::Any).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Denied, "{bad}: {e}");
        }
        for bad in ["-o", "a b", "a%b", "a@b@c", "a#b", "a/-x"] {
            let e = z.full_name(bad, NameKind::Any).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidArgument, "{bad}: {e}");
        }
        assert_eq!(
            z.full_name("s1/l1", NameKind::Dataset).unwrap(),
            "tank/strata/s1/l1"
        );
        assert_eq!(
            z.full_name("s1/l1@c", NameKind::Snapshot).unwrap(),
            "tank/strata/s1/l1@c"
        );
        assert_eq!(
            z.full_name("a@b", NameKind::Dataset).unwrap_err().kind,
            ErrorKind::InvalidArgument
        );
        let long = "x".repeat(250);
        assert_eq!(
            z.full_name(&long, NameKind::Dataset).unwrap_err().kind,
            ErrorKind::InvalidArgument
        );
    }

    #[test]
    fn relative_names_stay_inside() {
        let z = zfs();
        assert_eq!(z.relative_name("tank/strata/a@b").as_deref(), Some("a@b"));
        assert_eq!(z.relative_name("tank/strata"), None);
        assert_eq!(z.relative_name("tank/strata@snap"), None);
        assert_eq!(z.relative_name("tank/stratax/a"), None);
        assert_eq!(z.relative_name("tank/other"), None);
        assert_eq!(z.translate_value("origin", "tank/other@x"), "-");
        assert_eq!(z.translate_value("origin", "tank/strata/a@x"), "a@x");
    }

    #[test]
    fn escaping_properties_are_denied() {
        let z = zfs();
        for (k, v) in [
            ("mountpoint", "/etc"),
            ("sharenfs", "on"),
            ("keylocation", "file:///etc/shadow"),
            ("canmount", "on"),
            ("bogus", "1"),
        ] {
            let e = z
                .settable("a", &[(k.to_string(), v.to_string())])
                .unwrap_err();
            assert_eq!(e.kind, ErrorKind::Denied, "{k}: {e}");
        }
        assert_eq!(
            z.settable("a", &[("quota".into(), "1\n".into())])
                .unwrap_err()
                .kind,
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            z.settable(
                "a",
                &[
                    ("quota".into(), "50M".into()),
                    ("strata:x".into(), "y".into())
                ]
            )
            .unwrap(),
            ["quota=50M", "strata:x=y"]
        );
        assert_eq!(
            z.readable("a", &["mountpoint".into()]).unwrap_err().kind,
            ErrorKind::Denied
        );
        assert_eq!(
            z.readable("a", &["used".into(), "quota".into()]).unwrap(),
            "used,quota"
        );
    }

    #[test]
    fn messages_are_classified() {
        assert_eq!(
            classify("cannot open 'x': dataset does not exist"),
            ErrorKind::NotFound
        );
        assert_eq!(
            classify("cannot create 'x': dataset already exists"),
            ErrorKind::AlreadyExists
        );
        assert_eq!(
            classify("cannot destroy 'x@b': snapshot has dependent clones"),
            ErrorKind::Busy
        );
        assert_eq!(
            classify("cannot destroy 'x': dataset is busy"),
            ErrorKind::Busy
        );
        assert_eq!(
            classify("bad property list: invalid property 'clones'"),
            ErrorKind::InvalidArgument
        );
    }
}

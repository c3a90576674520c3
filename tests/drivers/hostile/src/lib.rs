//! A driver that misbehaves on request, to prove the sandbox holds. Test-only.
//!
//! It keeps layers like vfs (`dir/ID`) so that ordinary calls work, and turns hostile when
//! an operation's options ask it to:
//!
//! | option (on `create`)   | what the driver does                                        |
//! |------------------------|-------------------------------------------------------------|
//! | `escape=PATH`          | `files.mkdir(PATH)` — e.g. `../x`, `/etc/x`, `evil/x`        |
//! | `chown=PATH`           | `files.chown(PATH, 0, 0)`                                   |
//! | `steal=PATH`           | `copy.copy-tree(PATH, dir/ID)` — copy host files in         |
//! | `snapshot=PATH`        | `btrfs.snapshot(PATH, dir/ID)` — e.g. a plain directory, so  |
//! |                        | the kernel would snapshot the subvolume holding the home     |
//! | `qgroup=PATH`          | `btrfs.set-qgroup-limit(PATH, 1 MiB)`                        |
//! | `unsubvolume=PATH`     | `btrfs.delete-subvolume(PATH)`                               |
//! | `zfs-create=NAME`      | `zfs.create(NAME)` — e.g. `../x`, `/pool/x`, `a/../../x`     |
//! | `zfs-property=K=V`     | `zfs.create("h-ID", [(K, V)])` — e.g. `mountpoint=/etc`      |
//! | `zfs-get=K`            | `zfs.get-properties("h-ID", [K])`                            |
//! | `zfs-destroy=NAME`     | `zfs.destroy(NAME, recursive)`                               |
//! | `zfs-snapshot=NAME`    | `zfs.snapshot(NAME)`                                         |
//! | `zfs-clone=SNAPSHOT`   | `zfs.clone-snapshot(SNAPSHOT, "h-ID")`                       |
//! | `zfs-mount=PATH`       | `zfs.mount("h-ID", PATH)`                                    |
//! | `zfs-unmount=PATH`     | `zfs.unmount(PATH)`                                          |
//! | `loop=1`               | spins forever                                               |
//! | `alloc=1`              | allocates without bound                                     |
//! | `panic=1`              | panics                                                      |
//! | `host-calls=N`         | (benign) makes N `files.stat` calls first, for benchmarks   |
//! | `error-text=TEXT`      | fails with `invalid-argument` carrying TEXT (e.g. escapes)   |
//! | `log-text=TEXT`        | logs TEXT (warn), then creates the layer                    |
//! | `panic-text=TEXT`      | prints TEXT to stderr and panics with it                    |
//! | `sleep=SECS`           | `std::thread::sleep` (a blocking WASI wait)                 |
//! | `host-loop=stat`       | `files.stat` forever (small host calls)                     |
//! | `host-loop=copy`       | `copy.copy-tree` of `dir` forever (bulk host work)          |
//! | `symlink=PATH=TARGET`  | makes PATH a symlink to TARGET (for plans through it)       |
//! | `repoint=PATH=TARGET`  | renames PATH to `PATH.moved` and puts a symlink to TARGET   |
//! |                        | in its place: re-points what an earlier plan named          |
//! | `wasi-read=PATH`       | WASI `File::open(PATH)`, up to 16 bytes read into `wasi-out` |
//! | `wasi-write=PATH`      | WASI open of PATH for writing (created if missing), writes  |
//! |                        | `hostile` at its start                                      |
//! | `wasi-list=PATH`       | WASI `read_dir(PATH)`, the sorted names into `wasi-out`     |
//! | `fail-remove-once=1`   | makes the layer, then fails; the next `remove` of it fails  |
//! |                        | (leaving its data), the one after works                     |
//! | `fail-remove-always=1` | makes the layer; every `remove` of it fails (its data stays) |
//! |                        | while `fail-remove-always-ID` is in the home                 |
//! | `fail-after-apply=1`   | makes the layer; each `apply-diff` onto it applies the tar   |
//! |                        | (the host's apply goes through), then fails                 |
//!
//! | marker in the home     | what the driver does while it exists                        |
//! |------------------------|-------------------------------------------------------------|
//! | `fail-create`          | every `create` makes the layer's data, then fails: a        |
//! |                        | failure after the record, through any front end             |
//!
//! | option (on `init`)     | what the driver does                                        |
//! |------------------------|-------------------------------------------------------------|
//! | `status-text=TEXT`     | reports a status line `Note: TEXT`                          |
//!
//! | option (on mount)      | the plan it returns                                         |
//! |------------------------|-------------------------------------------------------------|
//! | `bind=PATH`            | a bind of PATH (e.g. `/`, `..`, `evil`)                     |
//! | `target=PATH`          | its own layer bound at PATH                                 |
//! | `lower=PATH[,PATH]`    | a read-only overlay of these lower directories              |
//! | `overlay-option=OPT`   | an overlay with option OPT                                  |
//! | `writable=1`           | a read-write plan whatever the host asked                   |
#![forbid(unsafe_code)]

use strata_driver_sdk::host::{archive, btrfs, copy, files, zfs};
use strata_driver_sdk::{
    BindMount, Driver, DriverInfo, Error, LayerDiff, MountKind, MountPlan, MountRequest, Options,
    OverlayMount, WhiteoutFormat, ensure_dir, error, remove_bind_target, remove_if_exists,
};

pub struct Hostile;

/// The `zfs-*` options: one zfs call each, with what the option says.
fn hostile_zfs(id: &str, options: &Options) -> Option<Result<(), Error>> {
    let own = format!("h-{id}");
    if let Some(name) = options.get("zfs-create") {
        return Some(zfs::create(name, &[]));
    }
    if let Some(kv) = options.get("zfs-property") {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        return Some(zfs::create(&own, &[(k.to_string(), v.to_string())]));
    }
    if let Some(k) = options.get("zfs-get") {
        return Some(zfs::get_properties(&own, &[k.to_string()]).map(|_| ()));
    }
    if let Some(name) = options.get("zfs-destroy") {
        return Some(zfs::destroy(name, true));
    }
    if let Some(name) = options.get("zfs-snapshot") {
        return Some(zfs::snapshot(name));
    }
    if let Some(snapshot) = options.get("zfs-clone") {
        return Some(zfs::clone_snapshot(snapshot, &own, &[]));
    }
    if let Some(path) = options.get("zfs-mount") {
        return Some(zfs::mount(&own, path));
    }
    if let Some(path) = options.get("zfs-unmount") {
        return Some(zfs::unmount(path));
    }
    None
}

/// The marker of `fail-remove-once`: while it exists, `remove(id)` fails (once).
fn remove_fails_marker(id: &str) -> String {
    format!("fail-remove-{id}")
}

/// `fail-remove-once=1`: the layer is made, then `create` fails, and the `remove` the host
/// rolls back with fails too (once): a failed rollback, for the host to leave recoverable.
fn fail_remove_once(id: &str, options: &Options) -> Option<Result<(), Error>> {
    options.get("fail-remove-once")?;
    Some((|| {
        files::mkdir(&Hostile::layer_dir(id), 0o755, 0, 0)?;
        files::mkdir(&remove_fails_marker(id), 0o755, 0, 0)?;
        Err(error::invalid_argument(
            "create fails on request (fail-remove-once)",
        ))
    })())
}

/// The home marker `fail-create` (put there by a test): while it exists, every `create`
/// makes the layer's data, then fails. Front ends that pass no driver options (image
/// import, container commit, containerd's snapshots) meet a create failing after the host
/// wrote the layer's record, and must leave neither the record nor the data.
const FAIL_CREATE_MARKER: &str = "fail-create";

fn fail_create_marked(id: &str) -> Option<Result<(), Error>> {
    files::stat(FAIL_CREATE_MARKER).ok()?;
    Some((|| {
        files::mkdir(&Hostile::layer_dir(id), 0o755, 0, 0)?;
        Err(error::invalid_argument(
            "create fails on request (the fail-create marker)",
        ))
    })())
}

/// The markers of `fail-remove-always` and `fail-after-apply`: while one exists, `remove(id)`
/// fails, or `apply-diff` onto `id` fails after applying.
fn remove_always_fails_marker(id: &str) -> String {
    format!("fail-remove-always-{id}")
}

fn apply_fails_marker(id: &str) -> String {
    format!("fail-after-apply-{id}")
}

/// `fail-remove-always=1` and `fail-after-apply=1`: the layer is made as usual; its later
/// `remove` (every one, until the marker is taken away) or `apply-diff` fails. A layer that
/// cannot be removed or whose apply cannot be undone, for the host to set aside.
fn lasting_failures(id: &str, options: &Options) -> Result<(), Error> {
    if options.get("fail-remove-always").is_some() {
        files::mkdir(&remove_always_fails_marker(id), 0o755, 0, 0)?;
    }
    if options.get("fail-after-apply").is_some() {
        files::mkdir(&apply_fails_marker(id), 0o755, 0, 0)?;
    }
    Ok(())
}

/// Where `init` keeps its `status-text` option for `status`.
const STATUS_TEXT_FILE: &str = "status-text";

/// The `*-text` options: text meant for the operator's terminal, as a hostile driver writes
/// it (terminal escapes, forged lines).
fn hostile_text(options: &Options) -> Option<Result<(), Error>> {
    if let Some(t) = options.get("log-text") {
        strata_driver_sdk::log::warn(t);
    }
    if let Some(t) = options.get("error-text") {
        return Some(Err(error::invalid_argument(t)));
    }
    if let Some(t) = options.get("panic-text") {
        eprintln!("{t}");
        panic!("{t}");
    }
    None
}

/// The `sleep` and `host-loop` options: a driver that waits or keeps the host busy.
fn hostile_time(id: &str, options: &Options) -> Option<Result<(), Error>> {
    if let Some(secs) = options.get("sleep") {
        let Ok(secs) = secs.parse::<u64>() else {
            return Some(Err(error::invalid_argument("sleep=SECS")));
        };
        std::thread::sleep(std::time::Duration::from_secs(secs));
        return Some(Ok(()));
    }
    match options.get("host-loop") {
        Some("stat") => loop {
            if let Err(e) = files::stat("dir") {
                return Some(Err(e));
            }
        },
        Some("copy") => {
            let scratch = format!("scratch-{id}");
            loop {
                // Whatever the host answers (even `busy` once the call is out of time), ask
                // again.
                let _ = copy::copy_tree("dir", &scratch, copy::CopyMode::Copy);
                let _ = files::remove_tree(&scratch);
            }
        }
        Some(_) => Some(Err(error::invalid_argument("host-loop=stat|copy"))),
        None => None,
    }
}

/// The `symlink` and `repoint` options: symlinks in the home, made after the fact.
fn hostile_links(options: &Options) -> Option<Result<(), Error>> {
    if let Some(spec) = options.get("symlink") {
        let (path, target) = spec.split_once('=').unwrap_or((spec, "."));
        return Some(files::symlink(target, path));
    }
    if let Some(spec) = options.get("repoint") {
        let (path, target) = spec.split_once('=').unwrap_or((spec, "."));
        let moved = format!("{path}.moved");
        return Some(
            std::fs::rename(path, &moved)
                .map_err(|e| error::from_io(format!("renaming {path}"), e))
                .and_then(|()| files::symlink(target, path)),
        );
    }
    None
}

/// Where the `wasi-*` options leave what they read, for the test to compare.
const WASI_OUT_FILE: &str = "wasi-out";

/// The `wasi-*` options: plain WASI file access (`std::fs`) to a path in the home, as any
/// driver code does; a failure is returned as `invalid-argument` with the I/O error's kind
/// and text.
fn hostile_wasi_files(options: &Options) -> Option<Result<(), Error>> {
    use std::io::{Read, Write};
    let fail = |what: &str, path: &str, e: std::io::Error| {
        error::invalid_argument(format!("{what} {path}: {:?}: {e}", e.kind()))
    };
    if let Some(path) = options.get("wasi-read") {
        let read = std::fs::File::open(path).and_then(|f| {
            let mut buf = Vec::new();
            f.take(16).read_to_end(&mut buf)?;
            Ok(buf)
        });
        return Some(match read {
            Ok(buf) => {
                std::fs::write(WASI_OUT_FILE, buf).map_err(|e| fail("write", WASI_OUT_FILE, e))
            }
            Err(e) => Err(fail("wasi-read", path, e)),
        });
    }
    if let Some(path) = options.get("wasi-write") {
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .and_then(|mut f| f.write_all(b"hostile"));
        return Some(written.map_err(|e| fail("wasi-write", path, e)));
    }
    if let Some(path) = options.get("wasi-list") {
        let listed = std::fs::read_dir(path).and_then(|entries| {
            let mut names = entries
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<Result<Vec<_>, _>>()?;
            names.sort();
            Ok(names.join("\n"))
        });
        return Some(match listed {
            Ok(names) => {
                std::fs::write(WASI_OUT_FILE, names).map_err(|e| fail("write", WASI_OUT_FILE, e))
            }
            Err(e) => Err(fail("wasi-list", path, e)),
        });
    }
    None
}

impl Driver for Hostile {
    fn init(options: Options) -> Result<DriverInfo, Error> {
        ensure_dir("dir", 0o700)?;
        ensure_dir("mnt", 0o700)?;
        let note = options.get("status-text").unwrap_or_default();
        std::fs::write(STATUS_TEXT_FILE, note)
            .map_err(|e| error::invalid_argument(format!("keeping status-text: {e}")))?;
        Ok(DriverInfo {
            name: "hostile".into(),
            status: vec![],
        })
    }

    fn status() -> Vec<(String, String)> {
        match std::fs::read_to_string(STATUS_TEXT_FILE) {
            Ok(t) if !t.is_empty() => vec![("Note".to_string(), t)],
            _ => vec![],
        }
    }

    fn layer_dir(id: &str) -> String {
        format!("dir/{id}")
    }

    fn create(id: &str, parent: Option<&str>, options: Options, _rw: bool) -> Result<(), Error> {
        if let Some(n) = options.get("host-calls") {
            let n: u64 = n
                .parse()
                .map_err(|_| error::invalid_argument("host-calls=N"))?;
            for _ in 0..n {
                std::hint::black_box(files::stat("dir")?);
            }
        }
        if let Some(r) = hostile_text(&options) {
            return r;
        }
        if let Some(r) = fail_create_marked(id) {
            return r;
        }
        if let Some(r) = fail_remove_once(id, &options) {
            return r;
        }
        if let Some(path) = options.get("escape") {
            return files::mkdir(path, 0o755, 0, 0);
        }
        if let Some(path) = options.get("chown") {
            return files::chown(path, 0, 0);
        }
        if let Some(path) = options.get("steal") {
            return copy::copy_tree(path, &Self::layer_dir(id), copy::CopyMode::Copy).map(|_| ());
        }
        if let Some(path) = options.get("snapshot") {
            return btrfs::snapshot(path, &Self::layer_dir(id), false);
        }
        if let Some(path) = options.get("qgroup") {
            return btrfs::set_qgroup_limit(path, Some(1 << 20));
        }
        if let Some(path) = options.get("unsubvolume") {
            return btrfs::delete_subvolume(path);
        }
        if let Some(r) = hostile_zfs(id, &options) {
            return r;
        }
        if let Some(r) = hostile_time(id, &options) {
            return r;
        }
        if let Some(r) = hostile_links(&options) {
            return r;
        }
        if let Some(r) = hostile_wasi_files(&options) {
            return r;
        }
        if options.get("loop").is_some() {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        if options.get("alloc").is_some() {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![0xa5; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        if options.get("panic").is_some() {
            panic!("hostile driver panicked on purpose");
        }
        lasting_failures(id, &options)?;
        match parent {
            Some(p) => copy::copy_tree(
                &Self::layer_dir(p),
                &Self::layer_dir(id),
                copy::CopyMode::ReflinkOrCopy,
            )
            .map(|_| ()),
            None => files::mkdir(&Self::layer_dir(id), 0o555, 0, 0),
        }
    }

    fn remove(id: &str) -> Result<(), Error> {
        if files::stat(&remove_always_fails_marker(id)).is_ok() {
            return Err(error::invalid_argument(
                "remove fails, on request (fail-remove-always)",
            ));
        }
        remove_if_exists(&apply_fails_marker(id))?;
        if files::stat(&remove_fails_marker(id)).is_ok() {
            remove_if_exists(&remove_fails_marker(id))?;
            return Err(error::invalid_argument(
                "remove fails once, on request (fail-remove-once)",
            ));
        }
        remove_if_exists(&Self::layer_dir(id))?;
        remove_bind_target(id)
    }

    fn apply_diff(id: &str, _parent: Option<&str>, diff: &LayerDiff) -> Result<u64, Error> {
        let size = archive::apply(diff, &Self::layer_dir(id), WhiteoutFormat::Delete)?.size;
        if files::stat(&apply_fails_marker(id)).is_ok() {
            return Err(error::invalid_argument(
                "the tar was applied, then apply-diff fails on request (fail-after-apply)",
            ));
        }
        Ok(size)
    }

    fn plan_mount(id: &str, request: MountRequest) -> Result<MountPlan, Error> {
        let options = Options(request.options);
        let target = match options.get("target") {
            Some(t) => t.to_string(),
            None => {
                let t = strata_driver_sdk::bind_target(id);
                ensure_dir(&t, 0o755)?;
                t
            }
        };
        let read_only = request.read_only && options.get("writable").is_none();
        let kind = if let Some(lower) = options.get("lower") {
            MountKind::Overlay(OverlayMount {
                lower: lower.split(',').map(str::to_string).collect(),
                upper: None,
                work: None,
                options: vec![],
            })
        } else if let Some(opt) = options.get("overlay-option") {
            MountKind::Overlay(OverlayMount {
                lower: vec![Self::layer_dir(id)],
                upper: None,
                work: None,
                options: vec![opt.to_string()],
            })
        } else {
            MountKind::Bind(BindMount {
                source: options
                    .get("bind")
                    .map(str::to_string)
                    .unwrap_or_else(|| Self::layer_dir(id)),
            })
        };
        Ok(MountPlan {
            target,
            kind,
            read_only,
        })
    }
}

strata_driver_sdk::export_driver!(Hostile);

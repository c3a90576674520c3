//! Strata's overlay driver, the default: each layer keeps only its own changes, and the
//! kernel's overlayfs stacks them at mount time.
//!
//! The on-disk layout is the one operators know from containers/storage, so their tools and
//! habits carry over (see `docs/drivers/overlay.md`):
//!
//! ```text
//! <home>/l/<LID>         symlink -> ../<id>/diff (LID: 26 base32 characters)
//! <home>/<id>/diff/      the layer's own files; deletions are 0:0 char devices
//! <home>/<id>/work/      overlayfs work directory
//! <home>/<id>/merged/    mount point
//! <home>/<id>/link       the layer's LID
//! <home>/<id>/lower      l/<parent LID>:l/<grandparent LID>:... (absent for a base layer)
//! ```
//!
//! A LID is derived from the layer id (a 128-bit FNV-1a hash in base32), so a lost `l/`
//! link or `link` file is recreated from the id alone. The driver decides; the host checks
//! every path of a mount plan beneath the home and mounts with one `lowerdir+` per layer.
#![forbid(unsafe_code)]

use strata_driver_sdk::host::{archive, files, overlay};
use strata_driver_sdk::{
    BindMount, Change, Driver, DriverInfo, Error, IncomingDiff, LayerDiff, MountKind, MountPlan,
    MountRequest, Options, OverlayMount, OverlayOption, RedirectDir, WhiteoutFormat, Xino,
    ensure_dir, error, read_small_file, remove_if_exists, validate_id, write_small_file,
};

/// Short-name links to each layer's `diff/`.
const LINKS: &str = "l";
/// Where `init` probes overlayfs (made and removed by the host).
const PROBE_DIR: &str = ".probe";
/// Operator options as `init` received them: later calls run in fresh instances.
const OPTIONS_FILE: &str = ".options";
/// What `init` found, for `status`.
const STATUS_FILE: &str = ".status";
/// Length of a short layer name, as containers/storage uses.
const LID_LEN: usize = 26;
/// Lower directories one overlayfs mount stacks at most (the kernel's `OVL_MAX_STACK`),
/// besides an upper directory.
pub const MAX_LOWERS: usize = 500;
/// Most layers below a layer: a read-write layer mounts its `diff/` as the upper over all of
/// them, as containerd's overlayfs snapshotter does, so a container runs on a 500-layer
/// image. A read-only view stacks its own `diff/` as a lower too, which fits below this
/// depth; at this depth the view mounts `diff/` as the upper of a read-only mount instead
/// (see `plan_mount`).
pub const MAX_DEPTH: usize = MAX_LOWERS;
/// Mode of a base layer's root.
const EMPTY_ROOT_MODE: u32 = 0o555;
/// Overlay options an operator may set with `mountopt`.
const OPERATOR_MOUNT_OPTIONS: &[OverlayOption] = &[
    OverlayOption::Volatile,
    OverlayOption::Xino(Xino::Off),
    OverlayOption::Xino(Xino::On),
    OverlayOption::Xino(Xino::Auto),
];

pub struct Overlay;

/// The operator's settings, persisted by `init`.
#[derive(Default)]
struct Settings {
    mountopt: Vec<OverlayOption>,
    userxattr: bool,
}

impl Settings {
    fn parse(options: &Options) -> Result<Settings, Error> {
        options.reject_unknown(&["mountopt", "userxattr"])?;
        let mut s = Settings::default();
        if let Some(m) = options.get("mountopt") {
            for text in m.split(',').map(str::trim).filter(|o| !o.is_empty()) {
                let o = OverlayOption::parse(text)
                    .ok()
                    .filter(|o| OPERATOR_MOUNT_OPTIONS.contains(o));
                let Some(o) = o else {
                    let allowed: Vec<&str> =
                        OPERATOR_MOUNT_OPTIONS.iter().map(|o| o.as_str()).collect();
                    return Err(error::invalid_argument(format!(
                        "mountopt: `{text}` is not an option this driver passes (allowed: {}); \
                         index, redirect_dir and metacopy stay off so native diffs are exact",
                        allowed.join(", ")
                    )));
                };
                s.mountopt.push(o);
            }
        }
        s.userxattr = match options.get("userxattr") {
            None | Some("false") => false,
            Some("true") => true,
            Some(v) => {
                return Err(error::invalid_argument(format!(
                    "userxattr: `{v}` is not true or false"
                )));
            }
        };
        Ok(s)
    }

    fn save(&self) -> Result<(), Error> {
        Options(vec![
            (
                "mountopt".into(),
                self.mountopt
                    .iter()
                    .map(|o| o.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            ("userxattr".into(), self.userxattr.to_string()),
        ])
        .save(OPTIONS_FILE)
    }

    fn load() -> Result<Settings, Error> {
        Settings::parse(&Options::load(OPTIONS_FILE)?)
    }

    fn whiteouts(&self) -> WhiteoutFormat {
        if self.userxattr {
            WhiteoutFormat::OverlayUser
        } else {
            WhiteoutFormat::OverlayTrusted
        }
    }

    /// Options of every overlay mount: off what would make `diff/` disagree with what the
    /// layer changed (index, redirects, metadata-only copy-up), then the operator's.
    fn mount_options(&self) -> Vec<OverlayOption> {
        let mut o = vec![
            OverlayOption::Index(false),
            OverlayOption::RedirectDir(RedirectDir::Off),
            OverlayOption::Metacopy(false),
        ];
        if self.userxattr {
            o.push(OverlayOption::UserXattr);
        }
        o.extend(self.mountopt.iter().copied());
        o
    }
}

/// The short name of layer `id`: 26 base32 characters of a 128-bit FNV-1a hash.
pub fn short_id(id: &str) -> String {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013B;
    let mut h = OFFSET;
    for b in id.bytes() {
        h ^= b as u128;
        h = h.wrapping_mul(PRIME);
    }
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    (0..LID_LEN)
        .map(|i| ALPHABET[((h >> (i * 5 % 128)) & 31) as usize] as char)
        .collect()
}

fn diff_dir(id: &str) -> String {
    format!("{id}/diff")
}

fn link_path(lid: &str) -> String {
    format!("{LINKS}/{lid}")
}

/// The layer's lower chain, nearest parent first, as `l/<LID>` paths.
fn lowers(id: &str) -> Result<Vec<String>, Error> {
    Ok(read_small_file(&format!("{id}/lower"))?
        .map(|l| {
            l.trim()
                .split(':')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default())
}

/// Makes sure `l/<LID>` and `<id>/link` exist for layer `id` (they are derived from the id).
fn ensure_link(id: &str) -> Result<String, Error> {
    let lid = short_id(id);
    if read_small_file(&format!("{id}/link"))?.as_deref() != Some(lid.as_str()) {
        write_small_file(&format!("{id}/link"), &lid)?;
    }
    match files::stat(&link_path(&lid)) {
        Ok(_) => {}
        Err(Error::NotFound(_)) => files::symlink(&format!("../{id}/diff"), &link_path(&lid))?,
        Err(e) => return Err(e),
    }
    Ok(lid)
}

/// Re-creates every layer's `l/` link and `link` file (after an operator or a crash lost
/// them), as containers/storage's `recreateSymlinks` does.
fn recreate_links() -> Result<(), Error> {
    ensure_dir(LINKS, 0o700)?;
    let entries = std::fs::read_dir(".").map_err(|e| error::from_io("listing the home", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| error::from_io("listing the home", e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if validate_id(&name).is_ok() && files::stat(&diff_dir(&name)).is_ok() {
            ensure_link(&name)?;
        }
    }
    Ok(())
}

/// The stack of layer `id` for a read-only merged view: its own `diff/` over its lowers.
fn stack(id: &str) -> Result<Vec<String>, Error> {
    let mut s = vec![diff_dir(id)];
    s.extend(checked_lowers(id)?);
    Ok(s)
}

/// The lowers of `id`, every link present (re-created when missing).
fn checked_lowers(id: &str) -> Result<Vec<String>, Error> {
    let lowers = lowers(id)?;
    if lowers.iter().any(|l| files::stat(l).is_err()) {
        recreate_links()?;
        if let Some(missing) = lowers.iter().find(|l| files::stat(l).is_err()) {
            return Err(error::not_found(format!(
                "layer {id}: lower layer {missing} is gone"
            )));
        }
    }
    Ok(lowers)
}

/// The `<id>/diff` directory an `l/<LID>` link points to: mount plans name real directories
/// (the host refuses a plan path through a symlink), so each lower is given by its target.
fn link_target(link: &str) -> Result<String, Error> {
    let target =
        std::fs::read_link(link).map_err(|e| error::from_io(format!("reading {link}"), e))?;
    let target = target.to_string_lossy();
    match target
        .strip_prefix("../")
        .and_then(|t| t.strip_suffix("/diff"))
    {
        Some(id) if validate_id(id).is_ok() => Ok(diff_dir(id)),
        _ => Err(error::invalid_argument(format!(
            "{link} points to {target}, not to a layer's diff directory"
        ))),
    }
}

/// Whether `parent` is the layer `id` was created on (then diffs come from `diff/` alone).
fn is_direct_parent(id: &str, parent: Option<&str>) -> Result<bool, Error> {
    let lowers = lowers(id)?;
    Ok(match parent {
        None => lowers.is_empty(),
        Some(p) => lowers.first().map(String::as_str) == Some(link_path(&short_id(p)).as_str()),
    })
}

fn parent_stack(parent: Option<&str>) -> Result<Vec<String>, Error> {
    parent.map(stack).transpose().map(Option::unwrap_or_default)
}

impl Driver for Overlay {
    fn init(options: Options) -> Result<DriverInfo, Error> {
        if options.get("size").is_some() {
            return Err(error::unsupported(
                "overlay `size=`: Strata's overlay driver has no project quotas yet; use the btrfs \
                 or zfs driver for per-layer limits",
            ));
        }
        let settings = Settings::parse(&options)?;
        remove_if_exists(PROBE_DIR)?;
        let f = overlay::probe(PROBE_DIR)?;
        let backing = files::filesystem_type(".")?.to_string();
        if !f.supported {
            return Err(error::unsupported(format!(
                "overlayfs does not work on this host's {backing} filesystem (a mount of two \
                 lower layers with a whiteout failed); use the vfs driver"
            )));
        }
        if !f.d_type {
            return Err(error::unsupported(format!(
                "the {backing} filesystem holding the driver home does not report file types \
                 (d_type); overlayfs needs it (xfs: reformat with ftype=1)"
            )));
        }
        if settings.mountopt.contains(&OverlayOption::Volatile) && !f.volatile {
            return Err(error::unsupported(
                "mountopt volatile: this kernel's overlayfs refuses it",
            ));
        }
        settings.save()?;
        ensure_dir(LINKS, 0o700)?;
        let yes = |b: bool| if b { "true" } else { "false" }.to_string();
        let status = vec![
            ("Backing Filesystem".to_string(), backing),
            ("Supports d_type".into(), yes(f.d_type)),
            ("Native Overlay Diff".into(), "true".into()),
            (
                "Lower layers per call (lowerdir+)".into(),
                yes(f.lowerdir_append),
            ),
            ("Supports metacopy".into(), yes(f.metacopy)),
            ("Using metacopy".into(), "false".into()),
            ("Supports redirect_dir".into(), yes(f.redirect_dir)),
            ("Supports volatile".into(), yes(f.volatile)),
            (
                "Whiteout xattrs".into(),
                match settings.whiteouts() {
                    WhiteoutFormat::OverlayUser => "user.overlay.*".into(),
                    _ => "trusted.overlay.*".into(),
                },
            ),
        ];
        let text: String = status.iter().map(|(k, v)| format!("{k}\t{v}\n")).collect();
        write_small_file(STATUS_FILE, &text)?;
        Ok(DriverInfo {
            name: "overlay".into(),
            status,
        })
    }

    fn layer_dir(id: &str) -> String {
        diff_dir(id)
    }

    fn create(
        id: &str,
        parent: Option<&str>,
        options: Options,
        _read_write: bool,
    ) -> Result<(), Error> {
        validate_id(id)?;
        options.reject_unknown(&[])?;
        // A leftover of a crashed creation is replaced, as containers/storage does.
        if files::stat(id).is_ok() {
            Self::remove(id)?;
        }
        let (mode, uid, gid, lower) = match parent {
            None => (EMPTY_ROOT_MODE, 0, 0, None),
            Some(p) => {
                validate_id(p)?;
                let st = files::stat(&diff_dir(p))?;
                let mut chain = vec![link_path(&ensure_link(p)?)];
                chain.extend(lowers(p)?);
                if chain.len() > MAX_DEPTH {
                    return Err(error::invalid_argument(format!(
                        "layer {id} would have {} layers below it; overlayfs stacks at most {MAX_DEPTH} \
                         lower layers",
                        chain.len()
                    )));
                }
                (st.mode & 0o7777, st.uid, st.gid, Some(chain.join(":")))
            }
        };
        ensure_dir(LINKS, 0o700)?;
        files::mkdir(id, 0o700, 0, 0)?;
        files::mkdir(&diff_dir(id), mode, uid, gid)?;
        files::mkdir(&format!("{id}/work"), 0o700, 0, 0)?;
        files::mkdir(&format!("{id}/merged"), 0o700, 0, 0)?;
        ensure_link(id)?;
        if let Some(lower) = lower {
            write_small_file(&format!("{id}/lower"), &lower)?;
        }
        Ok(())
    }

    fn remove(id: &str) -> Result<(), Error> {
        validate_id(id)?;
        let lid = read_small_file(&format!("{id}/link"))?.unwrap_or_else(|| short_id(id));
        match files::remove_tree(&link_path(lid.trim())) {
            Ok(()) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        remove_if_exists(id)
    }

    fn exists(id: &str) -> bool {
        validate_id(id).is_ok() && files::stat(&diff_dir(id)).is_ok()
    }

    fn plan_mount(id: &str, request: MountRequest) -> Result<MountPlan, Error> {
        validate_id(id)?;
        request.options.reject_unknown(&[])?;
        if !Self::exists(id) {
            return Err(error::not_found(format!("layer {id}")));
        }
        let settings = Settings::load()?;
        let target = format!("{id}/merged");
        ensure_dir(&target, 0o700)?;
        let lowers = checked_lowers(id)?
            .iter()
            .map(|l| link_target(l))
            .collect::<Result<Vec<_>, _>>()?;
        let kind = if lowers.is_empty() {
            // A base layer is its diff: bind it (overlayfs would need an empty lower).
            MountKind::Bind(BindMount {
                source: diff_dir(id),
            })
        } else if request.read_only && lowers.len() < MAX_LOWERS {
            let mut lower = vec![diff_dir(id)];
            lower.extend(lowers);
            MountKind::Overlay(OverlayMount {
                lower,
                upper: None,
                work: None,
                options: settings.mount_options(),
            })
        } else {
            // A read-write layer: `diff/` is the upper. So is it for a read-only layer over
            // MAX_LOWERS lowers (`diff/` as one more lower is one directory more than
            // overlayfs stacks): the plan says read-only, so the host makes the mount
            // read-only and refuses a writable plan; a read-only layer is never mounted
            // read-write, so nothing else uses its `work/` meanwhile.
            if settings.mountopt.contains(&OverlayOption::Volatile) {
                // The kernel refuses a volatile work dir left dirty by an unclean stop.
                remove_if_exists(&format!("{id}/work/work/incompat"))?;
            }
            MountKind::Overlay(OverlayMount {
                lower: lowers,
                upper: Some(diff_dir(id)),
                work: Some(format!("{id}/work")),
                options: settings.mount_options(),
            })
        };
        Ok(MountPlan {
            target,
            kind,
            read_only: request.read_only,
        })
    }

    fn apply_diff(id: &str, _parent: Option<&str>, diff: IncomingDiff<'_>) -> Result<u64, Error> {
        validate_id(id)?;
        // A base layer is mounted as a bind: deletions there have nothing to hide, so they
        // delete. Above a parent they become overlay whiteouts.
        let format = if lowers(id)?.is_empty() {
            WhiteoutFormat::Delete
        } else {
            Settings::load()?.whiteouts()
        };
        archive::apply(diff, &diff_dir(id), format).map(|s| s.size)
    }

    fn diff(id: &str, parent: Option<&str>) -> Result<LayerDiff, Error> {
        validate_id(id)?;
        let format = Settings::load()?.whiteouts();
        if is_direct_parent(id, parent)? {
            overlay::diff_upper(&diff_dir(id), &checked_lowers(id)?, format)
        } else {
            overlay::diff_stacks(&stack(id)?, &parent_stack(parent)?, format)
        }
    }

    fn changes(id: &str, parent: Option<&str>) -> Result<Vec<Change>, Error> {
        validate_id(id)?;
        let format = Settings::load()?.whiteouts();
        if is_direct_parent(id, parent)? {
            overlay::changes_upper(&diff_dir(id), &checked_lowers(id)?, format)
        } else {
            overlay::changes_stacks(&stack(id)?, &parent_stack(parent)?, format)
        }
    }

    fn diff_size(id: &str, parent: Option<&str>) -> Result<u64, Error> {
        validate_id(id)?;
        if is_direct_parent(id, parent)? {
            // Everything in diff/ is the layer's own: the size of its regular files.
            archive::diff_size(&diff_dir(id), None)
        } else {
            let format = Settings::load()?.whiteouts();
            overlay::diff_size_stacks(&stack(id)?, &parent_stack(parent)?, format)
        }
    }

    fn status() -> Vec<(String, String)> {
        read_small_file(STATUS_FILE)
            .ok()
            .flatten()
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn metadata(id: &str) -> Result<Vec<(String, String)>, Error> {
        validate_id(id)?;
        let mut m = vec![
            ("UpperDir".to_string(), diff_dir(id)),
            ("WorkDir".into(), format!("{id}/work")),
            ("MergedDir".into(), format!("{id}/merged")),
            ("Link".into(), short_id(id)),
        ];
        let lowers = lowers(id)?;
        if !lowers.is_empty() {
            m.push(("LowerDir".into(), lowers.join(":")));
        }
        Ok(m)
    }
}

strata_driver_sdk::export_driver!(Overlay);

//! `mount_plan`: the host's check of a driver's mount plan (`mount::check_plan`), the last
//! thing between a driver's answer and a mount syscall, against a driver home that holds
//! directories, a file, and symlinks within it, to its parent, to `/` and to a directory
//! beside it.
//!
//! Input: bytes read as a plan (target, bind or overlay with lower, upper and work
//! directories and options, read-only flag) and the host's request (read-only or not); paths
//! are made of components that mean something in the home (`a`, `..`, `.`, symlink names,
//! empty ones, `/`) or of raw bytes. Checks, besides "no panic": the check's verdict is the
//! one a plain model of the rules gives — every path relative, without `..`, at most
//! `MAX_PATH_LEN` bytes, naming a real directory beneath the home reached through no
//! symlink; the target not the home itself; a read-only request not answered read-write;
//! an overlay of 1 to `MAX_OVERLAY_LOWERS` lowers, upper and work together, options from
//! `OverlayOption::ALL` — and a plan it accepts mounts read-only when either side asks.
//!
//! The plan types are the host's contract types (`strata_core::contract`); [`check`] is the
//! one function that builds them, to re-point when they move.

use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use strata_core::contract::{
    BindMount, MountKind, MountPlan, MountRequest, OverlayMount, OverlayOption,
};
use strata_core::mount::{MAX_OVERLAY_LOWERS, check_plan};
use strata_sys::Dir;
use strata_sys::fs::MAX_PATH_LEN;

/// A plan as this target makes it, independent of the host's types.
#[derive(Debug, Clone)]
pub struct Plan {
    pub target: String,
    pub kind: Kind,
    pub read_only: bool,
}

#[derive(Debug, Clone)]
pub enum Kind {
    Bind {
        source: String,
    },
    Overlay {
        lower: Vec<String>,
        upper: Option<String>,
        work: Option<String>,
        options: Vec<String>,
    },
}

/// The overlay options a driver may name, as strings.
fn allowed_options() -> Vec<&'static str> {
    OverlayOption::ALL.iter().map(|o| o.as_str()).collect()
}

/// Checks `plan` with the host, for a request read-only or not: `Ok(read_only)` of the
/// checked plan, or the refusal's message. Option strings become typed options as at the
/// contract's edge (`OverlayOption::parse`: one outside the list makes the answer invalid),
/// then the host's own plan check runs.
pub fn check(home: &Dir, plan: &Plan, request_read_only: bool) -> Result<bool, String> {
    let kind = match &plan.kind {
        Kind::Bind { source } => MountKind::Bind(BindMount {
            source: source.clone(),
        }),
        Kind::Overlay {
            lower,
            upper,
            work,
            options,
        } => MountKind::Overlay(OverlayMount {
            lower: lower.clone(),
            upper: upper.clone(),
            work: work.clone(),
            options: options
                .iter()
                .map(|o| OverlayOption::parse(o))
                .collect::<Result<_, _>>()?,
        }),
    };
    let plan = MountPlan {
        target: plan.target.clone(),
        kind,
        read_only: plan.read_only,
    };
    let request = MountRequest {
        read_only: request_read_only,
        options: Vec::new(),
    };
    check_plan("fuzz", home, &plan, &request)
        .map(|checked| checked.read_only())
        .map_err(|e| e.to_string())
}

struct Home {
    dir: Dir,
    path: PathBuf,
}

/// Components a path is made of.
const COMPONENTS: &[&str] = &[
    "a", "b", "c", "lower1", "lower2", "upper", "work", "file", "missing", "up", "root", "in",
    "beside", "..", ".", "", "outside",
];

fn home() -> &'static Home {
    static H: OnceLock<Home> = OnceLock::new();
    H.get_or_init(|| {
        let scratch = crate::scratch("mount_plan");
        crate::remove_tree(&scratch);
        let path = scratch.join("home");
        for d in ["a/b/c", "lower1", "lower2", "upper", "work"] {
            std::fs::create_dir_all(path.join(d)).expect("scratch");
        }
        std::fs::create_dir_all(scratch.join("outside")).expect("scratch");
        std::fs::write(path.join("file"), b"not a directory").expect("scratch");
        symlink("..", path.join("up")).expect("scratch");
        symlink("/", path.join("root")).expect("scratch");
        symlink("a", path.join("in")).expect("scratch");
        symlink("../outside", path.join("beside")).expect("scratch");
        symlink("..", path.join("a/up")).expect("scratch");
        symlink("../lower1", path.join("a/in")).expect("scratch");
        Home {
            dir: Dir::open_ambient(&path).expect("opening the home"),
            path,
        }
    })
}

fn path(u: &mut Unstructured<'_>) -> ArbResult<String> {
    if u.ratio(1, 8)? {
        return u.arbitrary::<String>();
    }
    let mut s = String::new();
    if u.ratio(1, 8)? {
        s.push('/');
    }
    let n = u.int_in_range(0..=4)?;
    for i in 0..n {
        if i > 0 {
            s.push_str(u.choose(&["/", "/", "/", "//", "/./"])?);
        }
        s.push_str(u.choose(COMPONENTS)?);
    }
    if u.ratio(1, 8)? {
        s.push('/');
    }
    Ok(s)
}

fn option(u: &mut Unstructured<'_>) -> ArbResult<String> {
    if u.ratio(1, 4)? {
        let bad = [
            "lowerdir=/",
            "upperdir=/tmp",
            "index=off,lowerdir=/",
            "userxattr ",
            "",
            "INDEX=OFF",
            "xino=auto\0",
        ];
        return Ok(if u.ratio(1, 2)? {
            u.choose(&bad)?.to_string()
        } else {
            u.arbitrary::<String>()?
        });
    }
    Ok(u.choose(&allowed_options())?.to_string())
}

fn plan(u: &mut Unstructured<'_>) -> ArbResult<(Plan, bool)> {
    let target = path(u)?;
    let kind = if u.arbitrary::<bool>()? {
        Kind::Bind { source: path(u)? }
    } else {
        let n = if u.ratio(1, 16)? {
            u.int_in_range(MAX_OVERLAY_LOWERS - 1..=MAX_OVERLAY_LOWERS + 1)?
        } else {
            u.int_in_range(0..=4)?
        };
        let mut lower = Vec::new();
        let distinct = u.int_in_range(1..=4)?;
        let paths = (0..distinct)
            .map(|_| path(u))
            .collect::<ArbResult<Vec<_>>>()?;
        for i in 0..n {
            lower.push(paths[i % paths.len()].clone());
        }
        let upper = if u.arbitrary()? { Some(path(u)?) } else { None };
        let work = if u.arbitrary()? { Some(path(u)?) } else { None };
        let options = (0..u.int_in_range(0..=3)?)
            .map(|_| option(u))
            .collect::<ArbResult<Vec<_>>>()?;
        Kind::Overlay {
            lower,
            upper,
            work,
            options,
        }
    };
    let read_only = u.arbitrary()?;
    let request_read_only = u.arbitrary()?;
    Ok((
        Plan {
            target,
            kind,
            read_only,
        },
        request_read_only,
    ))
}

/// The model: whether `p` names a real directory beneath `home`, reached through no symlink.
fn model_dir(home: &Path, p: &str) -> Result<PathBuf, String> {
    if p.len() > MAX_PATH_LEN || p.contains('\0') {
        return Err("too long or NUL".into());
    }
    let mut rel = PathBuf::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(n) => rel.push(n),
            Component::CurDir => {}
            _ => return Err("leaves the home".into()),
        }
        let md = std::fs::symlink_metadata(home.join(&rel)).map_err(|e| e.to_string())?;
        if !md.is_dir() {
            return Err("not a directory (or a symlink)".into());
        }
    }
    Ok(rel)
}

fn model(home: &Path, plan: &Plan, request_read_only: bool) -> Result<bool, String> {
    if request_read_only && !plan.read_only {
        return Err("read-write for a read-only request".into());
    }
    if model_dir(home, &plan.target)?.as_os_str().is_empty() {
        return Err("target is the home".into());
    }
    match &plan.kind {
        Kind::Bind { source } => {
            model_dir(home, source)?;
        }
        Kind::Overlay {
            lower,
            upper,
            work,
            options,
        } => {
            if lower.is_empty() || lower.len() > MAX_OVERLAY_LOWERS {
                return Err("lower count".into());
            }
            if upper.is_some() != work.is_some() {
                return Err("upper without work".into());
            }
            if options
                .iter()
                .any(|o| !allowed_options().contains(&o.as_str()))
            {
                return Err("option".into());
            }
            for p in lower.iter().chain(upper).chain(work) {
                model_dir(home, p)?;
            }
        }
    }
    Ok(plan.read_only || request_read_only)
}

pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok((plan, request_read_only)) = plan(&mut u) else {
        return;
    };
    let h = home();
    let host = check(&h.dir, &plan, request_read_only);
    let expected = model(&h.path, &plan, request_read_only);
    match (&host, &expected) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "read-only of the checked plan: {plan:?}"),
        (Err(_), Err(_)) => {}
        (Ok(_), Err(why)) => panic!("the host accepted a plan that {why}: {plan:?}"),
        (Err(e), Ok(_)) => panic!("the host refused a plan within the rules ({e}): {plan:?}"),
    }
}

pub fn seeds() -> Vec<Vec<u8>> {
    // Unstructured reads choices from the front and lengths from the back: a few byte
    // patterns give a spread of plans; the fuzzer takes it from there.
    let mut out = Vec::new();
    for seed in 0u8..32 {
        let v: Vec<u8> = (0..64u8)
            .map(|i| i.wrapping_mul(seed.wrapping_add(7)).wrapping_add(seed))
            .collect();
        out.push(v);
    }
    out
}

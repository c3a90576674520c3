//! The driver conformance suite: what every storage driver must do, checked through the same
//! host a store uses.
//!
//! Why it lives in the host library: the CLI links it, so `strata driver test PATH.wasm` runs
//! exactly the checks the first-party drivers pass in CI, and a third-party author needs
//! nothing but the `strata` binary. The cases follow containers/storage's `graphtest` and its
//! CLI tests (populate, apply-diff, mount counting) and containerd's snapshotter testsuite
//! (layer chains compared with a plain directory that received the same writes).
//!
//! Every case runs in a fresh store (its own root under the scratch directory), so a failing
//! case cannot disturb the next. A case ends by removing every layer it created in reverse
//! order, which must succeed; then anything left mounted is detached and the root deleted.

mod cases;
pub mod ops;
pub mod tree;

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::config::Config;
use crate::contract::{Change, ChangeKind, DriverError};
use crate::layers::{Applied, CreateLayer, LayerError, StoreOptions, Strata};
use crate::sandbox::CallError;

/// Layers in the deep-chain case unless asked otherwise (graphtest's overlay figure).
pub const DEFAULT_DEEP_CHAIN: usize = 128;
/// Most layers a deep chain may ask for: overlayfs stacks at most 500 layers.
pub const MAX_DEEP_CHAIN: usize = 500;

/// What to run the suite on.
#[derive(Clone, Debug)]
pub struct SuiteOptions {
    /// A driver name or a path to a `.wasm`.
    pub driver: String,
    /// Grants, limits and `[drivers.NAME]` settings come from here; its roots are not used.
    pub config: Config,
    /// Options given to the driver's `init`, over the configured ones.
    pub driver_options: Vec<(String, String)>,
    /// Each case's store root is created beneath it (it must exist; it should be on the
    /// filesystem the driver is meant for).
    pub scratch: PathBuf,
    /// Where compiled components are cached.
    pub cache_dir: PathBuf,
    /// Layers in the deep-chain case, at most [`MAX_DEEP_CHAIN`].
    pub deep_chain: usize,
    /// Run only cases whose name contains one of these (all when empty).
    pub only: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "outcome")]
pub enum Outcome {
    Passed,
    Failed { message: String },
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct CaseResult {
    pub name: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Something the reader should know about a pass (e.g. `size=` reported unsupported).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub millis: u64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub driver: String,
    pub path: PathBuf,
    pub sha256: String,
    pub cases: Vec<CaseResult>,
}

impl Report {
    pub fn failed(&self) -> usize {
        self.cases
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Failed { .. }))
            .count()
    }

    pub fn passed(&self) -> usize {
        self.cases.len() - self.failed()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    #[error(
        "the conformance suite needs root: it mounts layers, creates device nodes and changes \
         owners (run it with sudo, or as root in a VM or CI job)"
    )]
    NotRoot,
    #[error("--deep-chain {0}: at most {MAX_DEEP_CHAIN} layers (overlayfs's limit)")]
    DeepChain(usize),
    #[error("no case matches {0:?}; `strata driver test --list` names them")]
    NoCase(Vec<String>),
    #[error("scratch directory {path}: {cause}")]
    Scratch {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("loading the driver under test: {0}")]
    Driver(#[source] LayerError),
}

/// The names of every case, in the order they run.
pub fn case_names(deep_chain: usize) -> Vec<String> {
    cases::all(deep_chain).into_iter().map(|c| c.name).collect()
}

/// Runs the suite; `progress` sees each result as it is known.
pub fn run(
    options: &SuiteOptions,
    mut progress: impl FnMut(&CaseResult),
) -> Result<Report, SuiteError> {
    if !rustix::process::geteuid().is_root() {
        return Err(SuiteError::NotRoot);
    }
    if options.deep_chain > MAX_DEEP_CHAIN || options.deep_chain == 0 {
        return Err(SuiteError::DeepChain(options.deep_chain));
    }
    let selected: Vec<cases::Case> = cases::all(options.deep_chain)
        .into_iter()
        .filter(|c| options.only.is_empty() || options.only.iter().any(|o| c.name.contains(o)))
        .collect();
    if selected.is_empty() {
        return Err(SuiteError::NoCase(options.only.clone()));
    }
    let scratch = |cause| SuiteError::Scratch {
        path: options.scratch.clone(),
        cause,
    };
    let run_dir = tempfile::Builder::new()
        .prefix("strata-conformance-")
        .tempdir_in(&options.scratch)
        .map_err(scratch)?;

    // Load the driver once up front: a driver that cannot even start fails the run with its
    // own message instead of every case failing with it.
    let probe_root = run_dir.path().join("probe");
    let (path, sha256) = {
        let strata = open(options, &probe_root).map_err(SuiteError::Driver)?;
        let c = strata.component();
        (c.path.clone(), c.sha256.clone())
    };
    let mut report = Report {
        driver: options.driver.clone(),
        path,
        sha256,
        cases: Vec::new(),
    };
    for (n, case) in selected.into_iter().enumerate() {
        let root = run_dir.path().join(format!("case-{n:03}"));
        let started = Instant::now();
        let (outcome, note) = run_case(options, &root, &case);
        crate::sys::mount::detach_all_beneath(&root);
        let _ = std::fs::remove_dir_all(&root);
        let result = CaseResult {
            name: case.name,
            outcome,
            note,
            millis: started.elapsed().as_millis() as u64,
        };
        progress(&result);
        report.cases.push(result);
    }
    crate::sys::mount::detach_all_beneath(run_dir.path());
    Ok(report)
}

fn open(options: &SuiteOptions, root: &Path) -> Result<Strata, LayerError> {
    let mut config = options.config.clone();
    config.root = root.join("root");
    config.run_root = root.join("run");
    Strata::open(StoreOptions {
        config,
        driver: Some(options.driver.clone()),
        driver_options: options.driver_options.clone(),
        cache_dir: Some(options.cache_dir.clone()),
    })
}

fn run_case(options: &SuiteOptions, root: &Path, case: &cases::Case) -> (Outcome, Option<String>) {
    let strata = match open(options, root) {
        Ok(s) => s,
        Err(e) => {
            return (
                Outcome::Failed {
                    message: format!("opening a fresh store: {e}"),
                },
                None,
            );
        }
    };
    let mut ctx = Ctx {
        strata,
        flat_dir: root.join("flat"),
        flats: 0,
        created: Vec::new(),
        note: None,
    };
    let body = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (case.run)(&mut ctx)));
    let body = match body {
        Ok(r) => r,
        Err(panic) => Err(format!(
            "the case panicked: {}",
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
    };
    let teardown = ctx.teardown();
    let outcome = match (body, teardown) {
        (Ok(()), Ok(())) => Outcome::Passed,
        (Err(message), _) => Outcome::Failed { message },
        (Ok(()), Err(message)) => Outcome::Failed {
            message: format!("removing the case's layers in reverse order: {message}"),
        },
    };
    (outcome, ctx.note)
}

/// A check's result: `Err` says what was expected and what was found.
pub(crate) type Check<T = ()> = Result<T, String>;

fn step<T>(what: impl Display, r: Result<T, LayerError>) -> Check<T> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// What a case works with: a fresh store on the driver under test, and scratch space for
/// the plain directories its expectations are built in.
pub(crate) struct Ctx {
    strata: Strata,
    flat_dir: PathBuf,
    flats: usize,
    /// Layers created, in order (removed in reverse at the end).
    created: Vec<String>,
    note: Option<String>,
}

impl Ctx {
    fn create_layer(&mut self, req: CreateLayer) -> Check {
        let what = format!(
            "creating layer {}{}",
            req.id.as_deref().unwrap_or("?"),
            req.parent
                .as_deref()
                .map(|p| format!(" on {p}"))
                .unwrap_or_default()
        );
        let layer = step(what, self.strata.create_layer(req))?;
        self.created.push(layer.id);
        Ok(())
    }

    /// A read-write layer.
    pub fn create(&mut self, id: &str, parent: Option<&str>) -> Check {
        self.create_layer(CreateLayer {
            id: Some(id.into()),
            parent: parent.map(str::to_string),
            read_write: true,
            ..Default::default()
        })
    }

    /// A read-only (image) layer.
    pub fn create_ro(&mut self, id: &str, parent: Option<&str>) -> Check {
        self.create_layer(CreateLayer {
            id: Some(id.into()),
            parent: parent.map(str::to_string),
            ..Default::default()
        })
    }

    pub fn create_from_template(&mut self, id: &str, template: &str, rw: bool) -> Check {
        self.create_layer(CreateLayer {
            id: Some(id.into()),
            template: Some(template.into()),
            read_write: rw,
            ..Default::default()
        })
    }

    /// Creates with driver options; the driver's error is returned as is.
    pub fn try_create_with(
        &mut self,
        id: &str,
        options: &[(&str, &str)],
    ) -> Result<(), LayerError> {
        let layer = self.strata.create_layer(CreateLayer {
            id: Some(id.into()),
            read_write: true,
            options: options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        })?;
        self.created.push(layer.id);
        Ok(())
    }

    pub fn parent_of(&self, id: &str) -> Check<Option<String>> {
        Ok(step(format!("looking up layer {id}"), self.strata.get(id))?.parent)
    }

    pub fn exists(&self, id: &str) -> Check<bool> {
        self.strata
            .driver()
            .exists(id)
            .map_err(|e| format!("asking whether layer {id} exists: {e}"))
    }

    pub fn mount(&mut self, id: &str) -> Check<PathBuf> {
        step(format!("mounting layer {id}"), self.strata.mount(id, &[]))
    }

    /// Unmounts once; returns the users left.
    pub fn unmount(&mut self, id: &str) -> Check<u32> {
        step(
            format!("unmounting layer {id}"),
            self.strata.unmount(id, false),
        )
    }

    pub fn force_unmount(&mut self, id: &str) -> Check<u32> {
        step(
            format!("force-unmounting layer {id}"),
            self.strata.unmount(id, true),
        )
    }

    pub fn try_remove(&mut self, id: &str) -> Result<(), LayerError> {
        self.strata.remove(id)?;
        self.created.retain(|c| c != id);
        Ok(())
    }

    pub fn remove(&mut self, id: &str) -> Check {
        step(format!("removing layer {id}"), self.try_remove(id))
    }

    pub fn list(&self) -> Check<Vec<String>> {
        let mut ids: Vec<String> = step("listing layers", self.strata.list())?
            .into_iter()
            .map(|l| l.id)
            .collect();
        ids.sort();
        Ok(ids)
    }

    pub fn changes(&self, id: &str, parent: Option<&str>) -> Check<Vec<Change>> {
        step(format!("changes of {id}"), self.strata.changes(id, parent))
    }

    pub fn diff(&self, id: &str, parent: Option<&str>) -> Check<Vec<u8>> {
        let mut out = Vec::new();
        step(
            format!("diff of {id}"),
            self.strata.diff(id, parent, &mut out),
        )?;
        Ok(out)
    }

    pub fn diff_size(&self, id: &str, parent: Option<&str>) -> Check<u64> {
        step(
            format!("diff-size of {id}"),
            self.strata.diff_size(id, parent),
        )
    }

    pub fn apply(&mut self, id: &str, tar: Vec<u8>) -> Check<Applied> {
        let r = self.strata.apply(id, Box::new(std::io::Cursor::new(tar)));
        if r.is_err() {
            // A failed apply removes the layer.
            self.created.retain(|c| c != id);
        }
        step(format!("applying a diff onto {id}"), r)
    }

    /// Mounts layer `id`, applies `ops` to it, unmounts.
    pub fn write(&mut self, id: &str, ops: &[ops::Op]) -> Check {
        let m = self.mount(id)?;
        ops::apply(&m, ops).map_err(|e| format!("writing into layer {id}: {e}"))?;
        self.unmount(id)?;
        Ok(())
    }

    /// A new plain directory, root `0555` owned `0:0` like an empty layer's.
    pub fn flat(&mut self) -> Check<PathBuf> {
        self.flats += 1;
        let p = self.flat_dir.join(self.flats.to_string());
        std::fs::create_dir_all(&p)
            .and_then(|()| std::os::unix::fs::chown(&p, Some(0), Some(0)))
            .and_then(|()| {
                std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o555))
            })
            .map_err(|e| format!("creating scratch directory {}: {e}", p.display()))?;
        Ok(p)
    }

    /// Mounts `id` and checks its tree equals the manifest of `expected`.
    pub fn expect_tree(&mut self, id: &str, expected: &Path) -> Check {
        let m = self.mount(id)?;
        let r = same_tree(expected, &m).map_err(|e| format!("layer {id}: {e}"));
        self.unmount(id)?;
        r
    }

    /// As containerd's View: a read-only child of `id`, mounted, must equal `expected`.
    pub fn expect_view(&mut self, id: &str, expected: &Path) -> Check {
        let view = format!("{id}-view");
        self.create_ro(&view, Some(id))?;
        let m = self.mount(&view)?;
        let r = same_tree(expected, &m).map_err(|e| format!("read-only view of {id}: {e}"));
        self.unmount(&view)?;
        self.remove(&view)?;
        r
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.note = Some(note.into());
    }

    /// Unmounts what is still mounted and removes every layer, newest first.
    fn teardown(&mut self) -> Check {
        for layer in step("listing layers", self.strata.list())? {
            if layer.mount_count > 0 {
                self.force_unmount(&layer.id)?;
            }
        }
        while let Some(id) = self.created.pop() {
            step(format!("removing layer {id}"), self.strata.remove(&id))?;
        }
        Ok(())
    }
}

/// Compares the trees at `expected` and `actual` (their roots included).
pub(crate) fn same_tree(expected: &Path, actual: &Path) -> Check {
    let e = tree::manifest(expected)?;
    let a = tree::manifest(actual)?;
    let diffs = tree::differences(&e, &a);
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "tree differs from what was written:\n  {}",
            tree::describe_differences(&diffs, 12)
        ))
    }
}

/// The driver's answer when it is an expected failure.
pub(crate) fn driver_error(e: &LayerError) -> Option<&DriverError> {
    match e {
        LayerError::Call(CallError::Driver { error, .. }) => Some(error),
        LayerError::ApplyFailed { cause, .. } | LayerError::ApplyUndone { cause, .. } => {
            driver_error(cause)
        }
        _ => None,
    }
}

fn kind_word(k: ChangeKind) -> &'static str {
    match k {
        ChangeKind::Add => "Add",
        ChangeKind::Modify => "Modify",
        ChangeKind::Delete => "Delete",
    }
}

/// Checks `actual` changes are exactly `expected` (order aside), naming what is missing and
/// what is extra.
pub(crate) fn same_changes(
    what: &str,
    expected: &[(ChangeKind, &str)],
    actual: &[Change],
) -> Check {
    let mut e: Vec<String> = expected
        .iter()
        .map(|(k, p)| format!("{} {p}", kind_word(*k)))
        .collect();
    let mut a: Vec<String> = actual
        .iter()
        .map(|c| format!("{} {}", kind_word(c.kind), c.path))
        .collect();
    e.sort();
    a.sort();
    if e == a {
        return Ok(());
    }
    let missing: Vec<&String> = e.iter().filter(|x| !a.contains(x)).collect();
    let extra: Vec<&String> = a.iter().filter(|x| !e.contains(x)).collect();
    Err(format!(
        "{what}: changes differ from the expected {} entries (got {}); missing: {missing:?}; unexpected: {extra:?}",
        e.len(),
        a.len()
    ))
}

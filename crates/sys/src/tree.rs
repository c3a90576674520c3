//! Walking a directory tree of any depth with a bounded number of open descriptors.
//!
//! The kernel puts no limit on how deep a tree may be: a container can `mkdir d; cd d` a
//! million times, and the paths beneath get longer than `PATH_MAX`. Everything the host reads
//! or writes *into* a layer is bounded by [`MAX_TREE_DEPTH`](super::fs::MAX_TREE_DEPTH), but
//! removing a layer must work whatever a container made of it: a layer that cannot be removed
//! bricks the store (recovery retries it on every open).
//!
//! A recursive walk holds one descriptor per level, and running out of descriptors (or stack)
//! is exactly the failure to avoid. [`walk_post_order`] keeps, per level of the current path,
//! only the name and the `(dev, ino)` seen when it was entered; descriptors are kept for the
//! deepest [`OPEN_WINDOW`] levels and for a few *checkpoints* (for each `k`, the last two
//! levels that are multiples of `OPEN_WINDOW · 2^k`), at most [`MAX_OPEN_DIRS`] in all. A level
//! whose descriptor was closed is opened again, when the walk climbs back to it, by name from
//! the nearest open ancestor: one `openat(O_NOFOLLOW | O_DIRECTORY)` per level, each checked
//! against the `(dev, ino)` recorded on the way down. So the walk never follows a symlink,
//! never uses `..`, never leaves the pinned top directory and never acts in a directory other
//! than the one it entered (a directory renamed or replaced meanwhile is `denied`). The
//! checkpoints keep re-opening cheap: each level is re-opened O(log depth) times, so a tree
//! a million levels deep is walked in seconds, not hours.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use super::error::{ErrorKind, SysError, SysResult};
use super::fs::{FileKind, Stat, open_dir_at, read_dir_names, stat_at};

/// The deepest levels of the current path whose descriptors stay open.
pub const OPEN_WINDOW: usize = 32;
/// The most descriptors [`walk_post_order`] holds at once, the top directory not counted: the
/// window and two checkpoints for each of the 64 powers of two a depth can reach.
pub const MAX_OPEN_DIRS: usize = OPEN_WINDOW + 2 * 64;

/// What to do with a directory the walk came across.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Walk into it; `leave` is called for it once everything beneath has been visited.
    Enter,
    /// Leave it alone.
    Skip,
}

struct Level {
    /// Its name in the level above.
    name: OsString,
    /// What `lstat` said of it when the walk entered it.
    stat: Stat,
    fd: Option<OwnedFd>,
    /// Names not visited yet.
    pending: Vec<OsString>,
}

/// Whether the descriptor of level `m` (1 = a child of the top) is kept while the walk is at
/// depth `cur`: the window, or one of the last two multiples of `OPEN_WINDOW · 2^k` (any `k`).
fn keeps(m: usize, cur: usize) -> bool {
    if m + OPEN_WINDOW > cur {
        return true;
    }
    let mut step = OPEN_WINDOW;
    while step <= cur {
        let last = cur / step * step;
        if m == last || m + step == last {
            return true;
        }
        step = match step.checked_mul(2) {
            Some(s) => s,
            None => break,
        };
    }
    false
}

/// The path of `name` below the top, for messages: its last `MAX_SHOWN` bytes when longer.
fn shown(levels: &[Level], name: Option<&OsStr>) -> PathBuf {
    const MAX_SHOWN: usize = 512;
    let mut parts: Vec<&OsStr> = Vec::new();
    let mut len = 0;
    for n in name
        .into_iter()
        .chain(levels.iter().rev().map(|l| l.name.as_os_str()))
    {
        if len + n.len() > MAX_SHOWN {
            parts.push(OsStr::new("…"));
            break;
        }
        len += n.len() + 1;
        parts.push(n);
    }
    parts.iter().rev().collect()
}

struct Walk<'a> {
    top: BorrowedFd<'a>,
    levels: Vec<Level>,
    /// Levels (1-based depths) whose descriptors are open, ascending.
    open: Vec<usize>,
}

impl Walk<'_> {
    fn fd(&self, depth: usize) -> BorrowedFd<'_> {
        if depth == 0 {
            self.top
        } else {
            self.levels[depth - 1]
                .fd
                .as_ref()
                .expect("opened before use")
                .as_fd()
        }
    }

    /// Closes every descriptor [`keeps`] no longer wants at the current depth.
    fn trim(&mut self) {
        let cur = self.levels.len();
        let levels = &mut self.levels;
        self.open.retain(|&m| {
            let keep = keeps(m, cur);
            if !keep {
                levels[m - 1].fd = None;
            }
            keep
        });
    }

    /// Opens `name` in the directory at `depth` and checks it is the directory `expected`.
    fn open_checked(&self, depth: usize, name: &OsStr, expected: &Stat) -> SysResult<OwnedFd> {
        let fd = open_dir_at(self.fd(depth), name)?;
        let now = rustix::fs::fstat(&fd).map_err(|e| SysError::from_errno("fstat", name, e))?;
        if (now.st_dev, now.st_ino) != (expected.dev, expected.ino) {
            return Err(SysError::without_errno(
                ErrorKind::Denied,
                "walk",
                name,
                "the directory was replaced while the tree was being walked",
            ));
        }
        Ok(fd)
    }

    /// Makes sure the directory at `depth` is open: re-opened by name, level by level, from
    /// the nearest open ancestor, keeping the descriptors [`keeps`] wants.
    fn reopen(&mut self, depth: usize) -> SysResult<()> {
        if depth == 0 || self.levels[depth - 1].fd.is_some() {
            return Ok(());
        }
        let from = self.open.iter().rev().find(|&&m| m < depth).copied();
        let from = from.unwrap_or(0);
        let cur = self.levels.len();
        // Descriptors opened on the way that are not kept: dropped once the next is open.
        let mut transient: Option<OwnedFd> = None;
        for m in from + 1..=depth {
            let (name, stat) = (self.levels[m - 1].name.clone(), self.levels[m - 1].stat);
            let fd = {
                let parent = match &transient {
                    Some(fd) => fd.as_fd(),
                    None => self.fd(m - 1),
                };
                let fd = open_dir_at(parent, &name)?;
                let now =
                    rustix::fs::fstat(&fd).map_err(|e| SysError::from_errno("fstat", &name, e))?;
                if (now.st_dev, now.st_ino) != (stat.dev, stat.ino) {
                    return Err(SysError::without_errno(
                        ErrorKind::Denied,
                        "walk",
                        &name,
                        "the directory was replaced while the tree was being walked",
                    ));
                }
                fd
            };
            if m == depth || keeps(m, cur) {
                self.levels[m - 1].fd = Some(fd);
                let at = self.open.partition_point(|&o| o < m);
                self.open.insert(at, m);
                transient = None;
            } else {
                transient = Some(fd);
            }
        }
        Ok(())
    }
}

/// Walks everything beneath the directory `top` (open for reading), depth first and without
/// a depth limit. `visit(dir, name, stat)` is called for each entry of each directory
/// entered (`stat` is its `lstat`); for a directory it returns whether to enter it. Once
/// everything beneath an entered directory was visited, `leave(parent, name, stat)` is called
/// for it. Directories are entered by descriptor, never through a symlink; an entry that
/// vanished before its `lstat` is passed over. Errors carry the path below `top`.
pub fn walk_post_order(
    top: BorrowedFd<'_>,
    visit: &mut dyn FnMut(BorrowedFd<'_>, &OsStr, &Stat) -> SysResult<Step>,
    leave: &mut dyn FnMut(BorrowedFd<'_>, &OsStr, &Stat) -> SysResult<()>,
) -> SysResult<()> {
    let mut top_names = read_dir_names(top)?;
    let mut w = Walk {
        top,
        levels: Vec::new(),
        open: Vec::new(),
    };
    loop {
        let depth = w.levels.len();
        let next = match w.levels.last_mut() {
            Some(l) => l.pending.pop(),
            None => top_names.pop(),
        };
        match next {
            Some(name) => {
                let at = |e: SysError, w: &Walk<'_>| {
                    let p = shown(&w.levels, Some(&name));
                    e.at(p)
                };
                let st = match stat_at(w.fd(depth), &name) {
                    Ok(st) => st,
                    Err(e) if e.kind == ErrorKind::NotFound => continue,
                    Err(e) => return Err(at(e, &w)),
                };
                let step = visit(w.fd(depth), &name, &st).map_err(|e| at(e, &w))?;
                if step == Step::Enter && st.kind == FileKind::Directory {
                    let fd = w.open_checked(depth, &name, &st).map_err(|e| at(e, &w))?;
                    let mut pending = read_dir_names(fd.as_fd()).map_err(|e| at(e, &w))?;
                    pending.shrink_to_fit();
                    w.levels.push(Level {
                        name,
                        stat: st,
                        fd: Some(fd),
                        pending,
                    });
                    w.open.push(depth + 1);
                    w.trim();
                }
            }
            None => {
                let Some(done) = w.levels.pop() else {
                    return Ok(());
                };
                drop(done.fd);
                if w.open.last() == Some(&depth) {
                    w.open.pop();
                }
                let at = |e: SysError, w: &Walk<'_>| {
                    let p = shown(&w.levels, Some(&done.name));
                    e.at(p)
                };
                w.reopen(depth - 1).map_err(|e| at(e, &w))?;
                leave(w.fd(depth - 1), &done.name, &done.stat).map_err(|e| at(e, &w))?;
            }
        }
    }
}

/// The stack a walk that recurses once per level (copy, compare, export) runs on:
/// [`MAX_TREE_DEPTH`](super::fs::MAX_TREE_DEPTH) levels of those walks take more than the 8 MiB
/// of a main thread (and far more than the 2 MiB of a runtime's worker) in a debug build, and
/// less than 16 MiB (`tests/tests/deep_trees.rs` passes with 16): four times that. Reserved,
/// not committed: only the pages a walk reaches are ever touched.
pub const DEEP_WALK_STACK: usize = 64 << 20;

/// Descriptors a process needs for walks of [`MAX_TREE_DEPTH`](super::fs::MAX_TREE_DEPTH)
/// levels (two trees at a time, one descriptor per level each) and everything else it holds.
pub const WALK_DESCRIPTORS: u64 = 4 * super::fs::MAX_TREE_DEPTH as u64 + 1024;

/// Raises the soft limit on open descriptors to [`WALK_DESCRIPTORS`] (or the hard limit, if
/// lower), once: the common soft limit of 1024 is less than a walk of the deepest tree the
/// host accepts takes.
pub fn raise_descriptor_limit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let now = getrlimit(Resource::Nofile);
        let want = match now.maximum {
            Some(max) => WALK_DESCRIPTORS.min(max),
            None => WALK_DESCRIPTORS,
        };
        if now.current.is_some_and(|cur| cur < want) {
            // Best effort: a walk that runs out of descriptors fails with EMFILE, cleanly.
            let _ = setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(want),
                    maximum: now.maximum,
                },
            );
        }
    });
}

/// Runs `f` on a thread with a [`DEEP_WALK_STACK`] stack (and the descriptor limit raised),
/// so a walk that recurses per level handles every depth up to the limit whatever thread
/// asked for it. Where no thread can be started, `f` runs here.
pub fn on_deep_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    raise_descriptor_limit();
    let slot = std::sync::Mutex::new(Some(f));
    let taken = || slot.lock().ok().and_then(|mut s| s.take());
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("strata-walk".into())
            .stack_size(DEEP_WALK_STACK)
            .spawn_scoped(scope, || taken().map(|f| f()));
        match spawned.map(|h| h.join()) {
            Ok(Ok(Some(out))) => out,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Ok(Ok(None)) | Err(_) => (taken().expect("not taken by a thread that never ran"))(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_window_and_few_checkpoints() {
        for cur in [1, 31, 32, 33, 100, 1000, 1_000_000] {
            let kept = (1..=cur).filter(|&m| keeps(m, cur)).count();
            assert!(kept <= MAX_OPEN_DIRS, "{kept} descriptors at depth {cur}");
            assert!(keeps(cur, cur), "the current level at {cur}");
        }
        assert!(!keeps(1, 1_000_000));
        assert!(
            keeps(999_968, 1_000_000),
            "the last multiples of the window"
        );
        assert!(!keeps(999_950, 1_000_000));
    }
}

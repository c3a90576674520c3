//! What applying a layer tar keeps from one entry to the next, and its byte budget.
//!
//! A layer tar is untrusted and compresses extremely well when it repeats itself: 50,000
//! copies of one directory entry with a 4 KiB name are a 1.2 MB gzip (a 21.6 KB `zstd
//! --long`), and an apply that kept something per entry grew the host by hundreds of
//! megabytes. So everything apply keeps across entries lives here, deduplicated by path and
//! charged against a named budget:
//!
//! - [`DirTimes`]: directory mtimes, set after the entries inside them (which would change
//!   them). One slot per distinct directory, at most [`MAX_DIR_TIMES_BYTES`]. When a new
//!   directory would exceed it, the caller sets the pending times *now* and starts over
//!   ([`DirTimes::insert`] says so): degrading, not failing, because a directory mtime is
//!   cosmetic (changes never compare directory times) and a real layer needs hundreds of
//!   thousands of directories, each with a long path, to get there.
//! - [`Created`]: which paths this tar created or updated, so that an opaque marker
//!   (`.wh..wh..opq`) in the delete format removes only what the layers below put there. Kept
//!   only for the delete format (overlay layers record opacity as an xattr), as a 128-bit
//!   keyed hash of the path (a fixed 16 bytes, however long the name), at most
//!   [`MAX_CREATED_BYTES`] — about 1.8 million entries. Past that the apply fails with an
//!   error naming the limit: forgetting would let a later opaque marker delete the layer's
//!   own files, a silently wrong layer, and no real layer comes near it.
//!
//! With [`APPLY_BOOKKEEPING_BUDGET`] (their sum) the host's memory while applying any layer is
//! bounded: see `docs/sandbox.md` for the whole figure (decompressor windows, one entry's
//! PAX records and the copy buffer come on top).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher, RandomState};
use std::path::{Path, PathBuf};

/// Bytes the deferred directory times may take before they are set early.
pub const MAX_DIR_TIMES_BYTES: usize = 16 << 20;
/// Bytes the set of created paths (delete format) may take before the apply fails.
pub const MAX_CREATED_BYTES: usize = 48 << 20;
/// Everything an apply keeps across entries, its undo journal included.
pub const APPLY_BOOKKEEPING_BUDGET: usize =
    MAX_DIR_TIMES_BYTES + MAX_CREATED_BYTES + super::undo::MAX_UNDO_BYTES;

/// What the allocator adds to each heap allocation (a path's bytes), conservatively.
pub(super) const ALLOCATION_OVERHEAD: usize = 16;

/// Bytes of a hash table able to hold `capacity` entries of `slot` bytes: a power-of-two
/// number of buckets at most 7/8 full, each with its slot and one control byte.
fn table_bytes(capacity: usize, slot: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = (capacity.saturating_mul(8) / 7).max(4).next_power_of_two();
    buckets.saturating_mul(slot + 1)
}

/// The capacity a full table of `len` entries grows to.
fn grown(len: usize) -> usize {
    (len.saturating_mul(2)).max(64)
}

/// Deferred directory mtimes, one per distinct directory.
#[derive(Default)]
pub(super) struct DirTimes {
    times: HashMap<PathBuf, (i64, u32)>,
    /// Bytes of the paths' own allocations.
    path_bytes: usize,
}

/// What [`DirTimes::insert`] asks of its caller.
#[must_use]
pub(super) enum Insert {
    Done,
    /// Over budget: set [`DirTimes::take`]'s times now, then insert again.
    Flush,
}

impl DirTimes {
    const SLOT: usize = std::mem::size_of::<(PathBuf, (i64, u32))>();

    fn bytes_with(&self, capacity: usize, extra_path: usize) -> usize {
        table_bytes(capacity, Self::SLOT) + self.path_bytes + extra_path
    }

    /// Records `mtime` for `rel` (the last one given for a path wins).
    pub(super) fn insert(&mut self, rel: &Path, mtime: (i64, u32)) -> Insert {
        if let Some(t) = self.times.get_mut(rel) {
            *t = mtime;
            return Insert::Done;
        }
        let path = rel.as_os_str().len() + ALLOCATION_OVERHEAD;
        let len = self.times.len();
        let capacity = if len < self.times.capacity() {
            self.times.capacity()
        } else {
            grown(len)
        };
        if len > 0 && self.bytes_with(capacity, path) > MAX_DIR_TIMES_BYTES {
            return Insert::Flush;
        }
        if capacity > self.times.capacity() {
            self.times.reserve(capacity - len);
        }
        self.path_bytes += path;
        self.times.insert(rel.to_path_buf(), mtime);
        Insert::Done
    }

    /// Every pending time, leaving nothing (the table's memory is given back).
    pub(super) fn take(&mut self) -> HashMap<PathBuf, (i64, u32)> {
        self.path_bytes = 0;
        std::mem::take(&mut self.times)
    }

    /// Bytes this holds now (for tests and the budget).
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.bytes_with(self.times.capacity(), 0)
    }
}

/// A set of paths as keyed 128-bit hashes: 16 bytes a path however long it is, and hashes a
/// tar cannot aim at (two independently keyed SipHash states). Used for the paths an apply
/// created and for the undo journal's sets.
pub(super) struct PathHashes {
    keys: (RandomState, RandomState),
    hashes: HashSet<u128>,
}

impl Default for PathHashes {
    fn default() -> Self {
        PathHashes {
            keys: (RandomState::new(), RandomState::new()),
            hashes: HashSet::new(),
        }
    }
}

impl PathHashes {
    const SLOT: usize = std::mem::size_of::<u128>();

    fn hash(&self, rel: &Path) -> u128 {
        let half = |k: &RandomState| {
            let mut h = k.build_hasher();
            h.write(rel.as_os_str().as_encoded_bytes());
            h.finish()
        };
        (u128::from(half(&self.keys.0)) << 64) | u128::from(half(&self.keys.1))
    }

    /// Adds `rel` (already there: nothing to do); `false`, adding nothing, when the table
    /// would have to grow past `max_table_bytes` for it.
    pub(super) fn insert_within(&mut self, rel: &Path, max_table_bytes: usize) -> bool {
        let h = self.hash(rel);
        if self.hashes.contains(&h) {
            return true;
        }
        let len = self.hashes.len();
        if len == self.hashes.capacity() {
            let capacity = grown(len);
            if table_bytes(capacity, Self::SLOT) > max_table_bytes {
                return false;
            }
            self.hashes.reserve(capacity - len);
        }
        self.hashes.insert(h);
        true
    }

    pub(super) fn contains(&self, rel: &Path) -> bool {
        self.hashes.contains(&self.hash(rel))
    }

    pub(super) fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Bytes the table holds now.
    pub(super) fn bytes(&self) -> usize {
        table_bytes(self.hashes.capacity(), Self::SLOT)
    }
}

/// Paths a delete-format apply created or updated.
#[derive(Default)]
pub(super) struct Created(PathHashes);

impl Created {
    /// Records `rel`; an error (the reason) when that would exceed [`MAX_CREATED_BYTES`].
    pub(super) fn insert(&mut self, rel: &Path) -> Result<(), String> {
        if self.0.insert_within(rel, MAX_CREATED_BYTES) {
            return Ok(());
        }
        Err(format!(
            "the tar creates more than {} entries, which is more than an apply keeps track \
             of ({} MiB of bookkeeping for opaque directories)",
            self.0.len(),
            MAX_CREATED_BYTES >> 20
        ))
    }

    pub(super) fn contains(&self, rel: &Path) -> bool {
        self.0.contains(rel)
    }

    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.0.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_directory_takes_one_slot() {
        let mut t = DirTimes::default();
        let long = Path::new("d").join("x".repeat(250)).join("y".repeat(250));
        for i in 0..100_000 {
            assert!(matches!(t.insert(&long, (i, 0)), Insert::Done));
        }
        assert_eq!(t.times.len(), 1);
        assert!(t.bytes() < 64 * 1024, "{} bytes", t.bytes());
        assert_eq!(t.take().get(&long), Some(&(99_999, 0)));
    }

    #[test]
    fn distinct_directories_stay_within_the_budget_by_flushing() {
        let mut t = DirTimes::default();
        let pad = "p".repeat(3000);
        let mut flushed = 0usize;
        let mut most = 0usize;
        for i in 0..20_000 {
            let p = PathBuf::from(format!("{pad}/{i}"));
            if let Insert::Flush = t.insert(&p, (i, 0)) {
                flushed += t.take().len();
                assert!(matches!(t.insert(&p, (i, 0)), Insert::Done));
            }
            most = most.max(t.bytes());
        }
        assert!(most <= MAX_DIR_TIMES_BYTES, "{most} bytes");
        assert!(flushed > 0);
        assert_eq!(flushed + t.take().len(), 20_000);
    }

    #[test]
    fn created_paths_cost_a_fixed_size_and_are_capped() {
        let mut c = Created::default();
        let pad = "q".repeat(4000);
        for i in 0..10_000 {
            c.insert(&PathBuf::from(format!("{pad}/{i}"))).unwrap();
        }
        assert!(c.contains(&PathBuf::from(format!("{pad}/42"))));
        assert!(!c.contains(&PathBuf::from(format!("{pad}/10000"))));
        // 16-byte hashes, not 4 KiB paths.
        assert!(c.bytes() < 10_000 * 64, "{} bytes", c.bytes());
        // Filled until it refuses: more than a million entries fit, and no more than the
        // budget is ever allocated.
        let mut c = Created::default();
        let mut failed_at = None;
        for i in 0..4_000_000u32 {
            if let Err(reason) = c.insert(Path::new(&i.to_string())) {
                assert!(reason.contains("48 MiB"), "{reason}");
                failed_at = Some(i);
                break;
            }
            assert!(c.bytes() <= MAX_CREATED_BYTES);
        }
        let at = failed_at.expect("the set is capped");
        assert!(at > 1_500_000, "{at}");
    }
}

//! Snapshot records for the containerd snapshotter front end, with containerd's semantics.
//!
//! containerd names snapshots by opaque keys (they hold `/` and spaces: never file names);
//! active snapshots, views and committed snapshots share one key space. Each record has a
//! numeric id that is kept when an active snapshot is committed under a new name, so the
//! data behind it never moves. The rules enforced here are the ones containerd's own
//! metadata store enforces (see docs/containerd.md): parents must be committed, only an
//! active snapshot commits, a snapshot with children is not removed, labels are replaced on
//! commit, and `Update` touches labels only (an empty value deletes a label).

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, params};

use crate::layers::Strata;
use crate::store::{LayerStore, StoreError};

/// Bytes of one label's key and value together (containerd's own limit).
pub const MAX_LABEL_SIZE: usize = 4096;
/// Labels one snapshot may carry.
pub const MAX_LABELS: usize = 256;
/// Longest snapshot key or name.
pub const MAX_KEY_LEN: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum SnapshotKind {
    View = 1,
    Active = 2,
    Committed = 3,
}

impl SnapshotKind {
    fn from_i64(v: i64) -> SnapshotKind {
        match v {
            1 => SnapshotKind::View,
            2 => SnapshotKind::Active,
            _ => SnapshotKind::Committed,
        }
    }

    /// The word containerd's filters use.
    pub fn word(self) -> &'static str {
        match self {
            SnapshotKind::View => "view",
            SnapshotKind::Active => "active",
            SnapshotKind::Committed => "committed",
        }
    }
}

/// A snapshot record.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SnapshotInfo {
    pub key: String,
    /// Kept across commit: names the snapshot's data.
    pub id: i64,
    pub kind: SnapshotKind,
    /// The committed parent's name.
    pub parent: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Nanoseconds since the Unix epoch.
    pub created_ns: i64,
    pub updated_ns: i64,
    /// Usage stored at commit (bytes, inodes).
    pub size: i64,
    pub inodes: i64,
}

/// Why a snapshot operation was refused; each maps to one gRPC status code.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {0} not found")]
    NotFound(String),
    #[error("snapshot {0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Checks labels against containerd's limits and drops empty values (an empty value means
/// "no such label").
pub fn checked_labels(
    labels: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, SnapshotError> {
    if labels.len() > MAX_LABELS {
        return Err(SnapshotError::InvalidArgument(format!(
            "more than {MAX_LABELS} labels"
        )));
    }
    for (k, v) in labels {
        if k.len() + v.len() > MAX_LABEL_SIZE {
            return Err(SnapshotError::InvalidArgument(format!(
                "label {}: key and value longer than {MAX_LABEL_SIZE} bytes",
                k.chars().take(64).collect::<String>()
            )));
        }
    }
    Ok(labels
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect())
}

fn check_key(what: &str, key: &str) -> Result<(), SnapshotError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(SnapshotError::InvalidArgument(format!(
            "{what} must be 1 to {MAX_KEY_LEN} bytes"
        )));
    }
    Ok(())
}

const SNAPSHOT_COLUMNS: &str =
    "key, id, kind, parent, labels, created_ns, updated_ns, size, inodes";

fn row_to_snapshot(r: &rusqlite::Row<'_>) -> rusqlite::Result<SnapshotInfo> {
    let labels: String = r.get(4)?;
    Ok(SnapshotInfo {
        key: r.get(0)?,
        id: r.get(1)?,
        kind: SnapshotKind::from_i64(r.get(2)?),
        parent: r.get(3)?,
        labels: serde_json::from_str(&labels).unwrap_or_default(),
        created_ns: r.get(5)?,
        updated_ns: r.get(6)?,
        size: r.get(7)?,
        inodes: r.get(8)?,
    })
}

fn snapshot_row(store: &LayerStore, key: &str) -> Result<Option<SnapshotInfo>, StoreError> {
    store
        .connection()
        .query_row(
            &format!("SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE key = ?1"),
            params![key],
            row_to_snapshot,
        )
        .optional()
        .map_err(store.db_error("reading a snapshot"))
}

/// containerd's snapshot records and rules, kept in the layer store's database (the
/// `snapshots` table of its schema): an extension of [`LayerStore`] that only this front end
/// uses.
pub trait SnapshotRecords {
    fn snapshot(&self, key: &str) -> Result<SnapshotInfo, SnapshotError>;

    /// Every snapshot, in key order.
    fn snapshots(&self) -> Result<Vec<SnapshotInfo>, StoreError>;

    /// The snapshot's committed ancestors, nearest first.
    fn snapshot_parents(&self, info: &SnapshotInfo) -> Result<Vec<SnapshotInfo>, SnapshotError>;

    /// Records a new active snapshot or view on `parent` (which must be committed).
    fn create_snapshot(
        &self,
        key: &str,
        parent: Option<&str>,
        kind: SnapshotKind,
        labels: &BTreeMap<String, String>,
    ) -> Result<SnapshotInfo, SnapshotError>;

    /// Commits active snapshot `key` as `name`: same id, same data; times reset; labels
    /// replaced by `labels`; `usage` (bytes, inodes) stored. `rebase` gives a parent to an
    /// active snapshot made without one.
    fn commit_snapshot(
        &self,
        name: &str,
        key: &str,
        labels: &BTreeMap<String, String>,
        rebase: Option<&str>,
        usage: (i64, i64),
    ) -> Result<SnapshotInfo, SnapshotError>;

    /// Removes a snapshot's record (the caller removes its data by id); refused while it has
    /// children. The key is free again at once.
    fn remove_snapshot(&self, key: &str) -> Result<SnapshotInfo, SnapshotError>;

    /// containerd's `Update`: labels only. No field paths or `labels` replace them all;
    /// `labels.K` sets (or, given no or an empty value, deletes) one; anything else is an
    /// invalid argument.
    fn update_snapshot(
        &self,
        key: &str,
        labels: &BTreeMap<String, String>,
        fieldpaths: &[String],
    ) -> Result<SnapshotInfo, SnapshotError>;
}

impl SnapshotRecords for LayerStore {
    fn snapshot(&self, key: &str) -> Result<SnapshotInfo, SnapshotError> {
        snapshot_row(self, key)?.ok_or_else(|| SnapshotError::NotFound(key.into()))
    }

    /// Every snapshot, in key order.
    fn snapshots(&self) -> Result<Vec<SnapshotInfo>, StoreError> {
        let ctx = "listing snapshots";
        let mut stmt = self
            .connection()
            .prepare(&format!(
                "SELECT {SNAPSHOT_COLUMNS} FROM snapshots ORDER BY key"
            ))
            .map_err(self.db_error(ctx))?;
        let rows = stmt
            .query_map([], row_to_snapshot)
            .map_err(self.db_error(ctx))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(self.db_error(ctx))
    }

    /// The snapshot's committed ancestors, nearest first.
    fn snapshot_parents(&self, info: &SnapshotInfo) -> Result<Vec<SnapshotInfo>, SnapshotError> {
        let mut out: Vec<SnapshotInfo> = Vec::new();
        let mut next = info.parent.clone();
        while let Some(p) = next {
            if out.len() >= crate::store::MAX_CHAIN_DEPTH {
                return Err(SnapshotError::InvalidArgument(format!(
                    "snapshot {}: more than {} parents",
                    info.key,
                    crate::store::MAX_CHAIN_DEPTH
                )));
            }
            let parent = self.snapshot(&p)?;
            next = parent.parent.clone();
            out.push(parent);
        }
        Ok(out)
    }

    /// Records a new active snapshot or view on `parent` (which must be committed).
    fn create_snapshot(
        &self,
        key: &str,
        parent: Option<&str>,
        kind: SnapshotKind,
        labels: &BTreeMap<String, String>,
    ) -> Result<SnapshotInfo, SnapshotError> {
        check_key("a snapshot key", key)?;
        let labels = checked_labels(labels)?;
        let tx = self.immediate_transaction()?;
        if snapshot_row(self, key)?.is_some() {
            return Err(SnapshotError::AlreadyExists(key.into()));
        }
        if let Some(p) = parent {
            let parent = self.snapshot(p)?;
            if parent.kind != SnapshotKind::Committed {
                return Err(SnapshotError::InvalidArgument(format!(
                    "parent {p:?} is not committed snapshot"
                )));
            }
        }
        // Ids are never reused: a removed snapshot's data may outlive its record until
        // cleanup, and must not be mistaken for a new snapshot's.
        let id: i64 = tx
            .query_row(
                "SELECT COALESCE((SELECT CAST(value AS INTEGER) FROM meta
                   WHERE key = 'snapshot_seq'), 0) + 1",
                [],
                |r| r.get(0),
            )
            .map_err(self.db_error("allocating a snapshot id"))?;
        tx.execute(
            "INSERT INTO meta(key, value) VALUES('snapshot_seq', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![id.to_string()],
        )
        .map_err(self.db_error("allocating a snapshot id"))?;
        let now = now_ns();
        tx.execute(
            "INSERT INTO snapshots(key, id, kind, parent, labels, created_ns, updated_ns)
             VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?6)",
            params![
                key,
                id,
                kind as i64,
                parent,
                serde_json::to_string(&labels).unwrap_or_else(|_| "{}".into()),
                now
            ],
        )
        .map_err(self.db_error("inserting a snapshot"))?;
        tx.commit()
            .map_err(self.db_error("committing a snapshot"))?;
        self.snapshot(key)
    }

    /// Commits active snapshot `key` as `name`: same id, same data; times reset; labels
    /// replaced by `labels`; `usage` (bytes, inodes) stored. `rebase` gives a parent to an
    /// active snapshot made without one.
    fn commit_snapshot(
        &self,
        name: &str,
        key: &str,
        labels: &BTreeMap<String, String>,
        rebase: Option<&str>,
        usage: (i64, i64),
    ) -> Result<SnapshotInfo, SnapshotError> {
        check_key("a snapshot name", name)?;
        let labels = checked_labels(labels)?;
        let tx = self.immediate_transaction()?;
        let active = self.snapshot(key)?;
        if active.kind != SnapshotKind::Active {
            return Err(SnapshotError::FailedPrecondition(format!(
                "snapshot {key} is not active (a {} cannot be committed)",
                active.kind.word()
            )));
        }
        if snapshot_row(self, name)?.is_some() {
            return Err(SnapshotError::AlreadyExists(name.into()));
        }
        let parent = match (rebase, &active.parent) {
            (None, p) => p.clone(),
            (Some(r), Some(p)) if r == p => Some(p.clone()),
            (Some(r), Some(p)) => {
                return Err(SnapshotError::InvalidArgument(format!(
                    "cannot rebase snapshot {key} onto {r}: its parent is {p}"
                )));
            }
            (Some(r), None) => {
                let parent = self.snapshot(r)?;
                if parent.kind != SnapshotKind::Committed {
                    return Err(SnapshotError::FailedPrecondition(format!(
                        "rebase parent {r} is not committed"
                    )));
                }
                Some(r.to_string())
            }
        };
        let now = now_ns();
        tx.execute(
            "UPDATE snapshots SET key = ?2, kind = ?3, parent = ?4, labels = ?5,
               created_ns = ?6, updated_ns = ?6, size = ?7, inodes = ?8 WHERE key = ?1",
            params![
                key,
                name,
                SnapshotKind::Committed as i64,
                parent,
                serde_json::to_string(&labels).unwrap_or_else(|_| "{}".into()),
                now,
                usage.0,
                usage.1
            ],
        )
        .map_err(self.db_error("committing a snapshot"))?;
        tx.commit()
            .map_err(self.db_error("committing a snapshot"))?;
        self.snapshot(name)
    }

    /// Removes a snapshot's record (the caller removes its data by id); refused while it has
    /// children. The key is free again at once.
    fn remove_snapshot(&self, key: &str) -> Result<SnapshotInfo, SnapshotError> {
        let tx = self.immediate_transaction()?;
        let info = self.snapshot(key)?;
        let children: i64 = self
            .connection()
            .query_row(
                "SELECT COUNT(*) FROM snapshots WHERE parent = ?1",
                params![key],
                |r| r.get(0),
            )
            .map_err(self.db_error("counting a snapshot's children"))?;
        if children > 0 {
            return Err(SnapshotError::FailedPrecondition(format!(
                "cannot remove snapshot with child: {key} has {children}"
            )));
        }
        tx.execute("DELETE FROM snapshots WHERE key = ?1", params![key])
            .map_err(self.db_error("removing a snapshot"))?;
        tx.commit().map_err(self.db_error("removing a snapshot"))?;
        Ok(info)
    }

    /// containerd's `Update`: labels only. No field paths or `labels` replace them all;
    /// `labels.K` sets (or, given no or an empty value, deletes) one; anything else is an
    /// invalid argument.
    fn update_snapshot(
        &self,
        key: &str,
        labels: &BTreeMap<String, String>,
        fieldpaths: &[String],
    ) -> Result<SnapshotInfo, SnapshotError> {
        let tx = self.immediate_transaction()?;
        let mut info = self.snapshot(key)?;
        if fieldpaths.is_empty() || fieldpaths.iter().any(|p| p == "labels") {
            if let Some(other) = fieldpaths
                .iter()
                .find(|p| *p != "labels" && !p.starts_with("labels."))
            {
                return Err(SnapshotError::InvalidArgument(format!(
                    "cannot update {other} of snapshot {key}: only labels can change"
                )));
            }
            info.labels = checked_labels(labels)?;
        } else {
            for path in fieldpaths {
                let Some(label) = path.strip_prefix("labels.") else {
                    return Err(SnapshotError::InvalidArgument(format!(
                        "cannot update {path} of snapshot {key}: only labels can change"
                    )));
                };
                match labels.get(label).filter(|v| !v.is_empty()) {
                    Some(v) => {
                        info.labels.insert(label.to_string(), v.clone());
                    }
                    None => {
                        info.labels.remove(label);
                    }
                }
            }
            info.labels = checked_labels(&info.labels)?;
        }
        info.updated_ns = now_ns();
        tx.execute(
            "UPDATE snapshots SET labels = ?2, updated_ns = ?3 WHERE key = ?1",
            params![
                key,
                serde_json::to_string(&info.labels).unwrap_or_else(|_| "{}".into()),
                info.updated_ns
            ],
        )
        .map_err(self.db_error("updating a snapshot"))?;
        tx.commit().map_err(self.db_error("updating a snapshot"))?;
        Ok(info)
    }
}

/// containerd's snapshot `key` in an open store (`strata serve`'s records).
pub trait StrataSnapshots {
    fn snapshot(&self, key: &str) -> Result<SnapshotInfo, SnapshotError>;
}

impl StrataSnapshots for Strata {
    fn snapshot(&self, key: &str) -> Result<SnapshotInfo, SnapshotError> {
        self.front_end_store().snapshot(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn store(dir: &std::path::Path) -> LayerStore {
        LayerStore::open_with_boot_id(dir, "b").unwrap()
    }

    fn committed(s: &LayerStore, name: &str, parent: Option<&str>) -> SnapshotInfo {
        let key = format!("{name}-prepare");
        s.create_snapshot(&key, parent, SnapshotKind::Active, &labels(&[]))
            .unwrap();
        s.commit_snapshot(name, &key, &labels(&[]), None, (0, 0))
            .unwrap()
    }

    #[test]
    fn keys_kinds_parents_and_commit() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path());
        let a = s
            .create_snapshot(
                "/work/preparing",
                None,
                SnapshotKind::Active,
                &labels(&[("x", "1")]),
            )
            .unwrap();
        assert_eq!((a.kind, a.created_ns), (SnapshotKind::Active, a.updated_ns));
        let c = s
            .commit_snapshot(
                "committed",
                "/work/preparing",
                &labels(&[("y", "2")]),
                None,
                (5, 1),
            )
            .unwrap();
        assert_eq!(c.id, a.id, "commit keeps the data's id");
        assert_eq!(c.labels, labels(&[("y", "2")]), "labels are replaced");
        assert!(matches!(
            s.snapshot("/work/preparing"),
            Err(SnapshotError::NotFound(_))
        ));
        // One key space: a key may not take a committed name, nor twice.
        assert!(matches!(
            s.create_snapshot("committed", None, SnapshotKind::View, &labels(&[])),
            Err(SnapshotError::AlreadyExists(_))
        ));
        s.create_snapshot(
            "next",
            Some("committed"),
            SnapshotKind::Active,
            &labels(&[]),
        )
        .unwrap();
        assert!(matches!(
            s.create_snapshot("next", Some("committed"), SnapshotKind::View, &labels(&[])),
            Err(SnapshotError::AlreadyExists(_))
        ));
        // Parents must be committed, and exist.
        assert!(matches!(
            s.create_snapshot("bad", Some("next"), SnapshotKind::Active, &labels(&[])),
            Err(SnapshotError::InvalidArgument(_))
        ));
        assert!(matches!(
            s.create_snapshot("bad", Some("nope"), SnapshotKind::Active, &labels(&[])),
            Err(SnapshotError::NotFound(_))
        ));
        // A view does not commit; a missing key is not found; a taken name already exists.
        s.create_snapshot("v", Some("committed"), SnapshotKind::View, &labels(&[]))
            .unwrap();
        assert!(matches!(
            s.commit_snapshot("vc", "v", &labels(&[]), None, (0, 0)),
            Err(SnapshotError::FailedPrecondition(_))
        ));
        assert!(matches!(
            s.commit_snapshot("x", "nope", &labels(&[]), None, (0, 0)),
            Err(SnapshotError::NotFound(_))
        ));
        assert!(matches!(
            s.commit_snapshot("committed", "next", &labels(&[]), None, (0, 0)),
            Err(SnapshotError::AlreadyExists(_))
        ));
        // Removing a parent with children fails saying "remove"; children first works and
        // frees the key at once.
        match s.remove_snapshot("committed") {
            Err(SnapshotError::FailedPrecondition(m)) => assert!(m.contains("remove")),
            other => panic!("{other:?}"),
        }
        s.remove_snapshot("next").unwrap();
        s.create_snapshot("next", Some("committed"), SnapshotKind::View, &labels(&[]))
            .unwrap();
        s.remove_snapshot("next").unwrap();
        s.remove_snapshot("v").unwrap();
        let last = s.remove_snapshot("committed").unwrap();
        assert!(s.snapshots().unwrap().is_empty());
        // Ids are not reused.
        let again = s
            .create_snapshot("again", None, SnapshotKind::Active, &labels(&[]))
            .unwrap();
        assert!(again.id > last.id);
    }

    #[test]
    fn rebase_at_commit() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path());
        committed(&s, "base", None);
        committed(&s, "other", None);
        s.create_snapshot("a", None, SnapshotKind::Active, &labels(&[]))
            .unwrap();
        let c = s
            .commit_snapshot("c", "a", &labels(&[]), Some("base"), (0, 0))
            .unwrap();
        assert_eq!(c.parent.as_deref(), Some("base"));
        s.create_snapshot("b", Some("base"), SnapshotKind::Active, &labels(&[]))
            .unwrap();
        assert!(matches!(
            s.commit_snapshot("d", "b", &labels(&[]), Some("other"), (0, 0)),
            Err(SnapshotError::InvalidArgument(_))
        ));
        s.create_snapshot("e", Some("c"), SnapshotKind::Active, &labels(&[]))
            .unwrap();
        s.create_snapshot("f", None, SnapshotKind::Active, &labels(&[]))
            .unwrap();
        assert!(matches!(
            s.commit_snapshot("g", "f", &labels(&[]), Some("e"), (0, 0)),
            Err(SnapshotError::FailedPrecondition(_))
        ));
        let chain = s.snapshot_parents(&s.snapshot("e").unwrap()).unwrap();
        let names: Vec<&str> = chain.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(names, vec!["c", "base"]);
    }

    /// containerd's testsuite `Update` case, on the records.
    #[test]
    fn update_touches_labels_only() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path());
        let c1 = committed(&s, "c1", None);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let root = ("containerd.io/gc.root", "now");
        let u = s
            .update_snapshot(
                "c1",
                &labels(&[("l1", "v1"), ("l2", "v2"), ("l3", "v3"), root]),
                &[],
            )
            .unwrap();
        assert_eq!(u.created_ns, c1.created_ns);
        assert!(u.updated_ns > c1.updated_ns);
        assert_eq!(u.labels.len(), 4);
        let u = s
            .update_snapshot(
                "c1",
                &labels(&[("l1", "updated"), ("l4", "v4")]),
                &["labels.l1".into(), "labels.l2".into()],
            )
            .unwrap();
        assert_eq!(u.labels, labels(&[("l1", "updated"), ("l3", "v3"), root]));
        let u = s
            .update_snapshot("c1", &labels(&[("l4", "v4"), root]), &["labels".into()])
            .unwrap();
        assert_eq!(u.labels, labels(&[("l4", "v4"), root]));
        assert!(matches!(
            s.update_snapshot("c1", &labels(&[]), &["parent".into()]),
            Err(SnapshotError::InvalidArgument(_))
        ));
        assert!(matches!(
            s.update_snapshot("nope", &labels(&[]), &[]),
            Err(SnapshotError::NotFound(_))
        ));
        let big = "x".repeat(MAX_LABEL_SIZE);
        assert!(matches!(
            s.update_snapshot("c1", &labels(&[("k", &big)]), &[]),
            Err(SnapshotError::InvalidArgument(_))
        ));
        // What Stat returns is what a listing returns, times included.
        let listed = s.snapshots().unwrap();
        assert_eq!(listed, vec![s.snapshot("c1").unwrap()]);
    }
}

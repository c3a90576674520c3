//! The snapshots gRPC service: containerd's semantics on Strata's store and driver.
//!
//! Each snapshot is a Strata layer named `sn<id>` (the record's id, kept across commit), on
//! the layer of its parent: an active snapshot is a read-write layer, a view a read-only
//! one. The host mounts each active and view snapshot itself (the driver's mount plan,
//! checked, mounted by descriptor on the host's mount point `<root>/mounts/sn<id>`) and
//! `Prepare`, `View` and `Mounts` return a bind of that mount point: a directory no driver
//! can write, so no later driver call can re-point what containerd mounts. The mount is
//! released on `Commit` and `Remove`, and reconciled at start and on `Cleanup`.
//!
//! Ordering for crashes: the record is written first, then the layer (incomplete until the
//! driver made it), then the mount; on removal the record goes first, then the mount and the
//! layer (marked incomplete before its data goes). A killed daemon leaves at worst a record
//! without a complete layer (a Prepare or View that never answered) or an `sn` layer
//! without a record (a Remove that never answered): the start's reconcile removes both, so
//! a restarted daemon has every snapshot containerd was told about. What it made but could
//! not answer (a complete Prepare killed before its reply) stays until containerd's garbage
//! collection, which removes every snapshot it has no record of, removes it.
//!
//! Concurrency: every request that changes snapshots (Prepare, View, Commit, Remove, Mounts,
//! and Usage, which asks the driver) holds the store's exclusive lock from its first read
//! to its last write, and so does `Cleanup` (containerd calls it after each garbage
//! collection without holding its own lock, beside Prepares and Commits in flight). A
//! request's half-made states (a record whose layer is being made, a layer whose record is
//! gone and which is being removed) are therefore never seen by `Cleanup` or another
//! request: what `Cleanup` finds out of step is provably dead — left by a request that
//! failed and said so to containerd, whose rollback failed too, or by a crash before the
//! start — and no in-flight or later request can own it.
//!
//! Requests run on worker threads, each with a store handle of its own (one SQLite
//! connection and driver runtime per handle), fed by a bounded queue (see [`super::workers`]
//! for why, and for the backpressure): they run concurrently, and SQLite's transactions and
//! the store's lock keep them from corrupting each other.

use std::collections::BTreeMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::api::snapshots as pb;
use super::api::types::Mount;
use super::filters;
use crate::layers::{LayerError, PendingLayers, Strata};
use crate::store::{NewLayer, SnapshotError, SnapshotInfo, SnapshotKind, StoreError};

/// Infos per `List` response message (containerd's own batch size).
pub const LIST_BATCH: usize = 100;

/// The layer holding snapshot `id`'s data.
pub fn layer_id(id: i64) -> String {
    format!("sn{id}")
}

pub use super::workers::STORE_HANDLES;
use super::workers::Workers;

pub struct SnapshotService {
    workers: Arc<Workers>,
}

/// Messages reach containerd's clients (`ctr` prints them): escaped like any untrusted text.
fn message(text: String) -> String {
    crate::text::escape(&text).into_owned()
}

fn status_of(e: SnapshotError) -> Status {
    match e {
        SnapshotError::NotFound(_) => Status::not_found(message(e.to_string())),
        SnapshotError::AlreadyExists(_) => Status::already_exists(message(e.to_string())),
        SnapshotError::FailedPrecondition(_) => Status::failed_precondition(message(e.to_string())),
        SnapshotError::InvalidArgument(_) => Status::invalid_argument(message(e.to_string())),
        SnapshotError::Store(e) => Status::internal(message(e.to_string())),
    }
}

/// The store's exclusive lock, held by a request from its first read to its last write.
fn lock(s: &Strata) -> Result<crate::store::StoreLock<'_>, Status> {
    s.store()
        .lock_exclusive()
        .map_err(|e| Status::internal(message(e.to_string())))
}

fn layer_status(e: LayerError) -> Status {
    match e {
        LayerError::Store(StoreError::NotFound(m)) => Status::not_found(message(m)),
        other => Status::internal(message(format!("{other}"))),
    }
}

fn timestamp(ns: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ns.div_euclid(1_000_000_000),
        nanos: ns.rem_euclid(1_000_000_000) as i32,
    }
}

fn info_of(i: &SnapshotInfo) -> pb::Info {
    pb::Info {
        name: i.key.clone(),
        parent: i.parent.clone().unwrap_or_default(),
        kind: match i.kind {
            SnapshotKind::View => pb::Kind::View,
            SnapshotKind::Active => pb::Kind::Active,
            SnapshotKind::Committed => pb::Kind::Committed,
        } as i32,
        created_at: Some(timestamp(i.created_ns)),
        updated_at: Some(timestamp(i.updated_ns)),
        labels: i.labels.clone().into_iter().collect(),
    }
}

fn labels_of(map: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    map.into_iter().collect()
}

/// What containerd mounts for a snapshot: a bind of the host's mount of its layer.
fn mounts_of(path: std::path::PathBuf, read_only: bool) -> Vec<Mount> {
    vec![Mount {
        r#type: "bind".into(),
        source: path.to_string_lossy().into_owned(),
        target: String::new(),
        options: vec![if read_only { "ro" } else { "rw" }.into(), "rbind".into()],
    }]
}

impl SnapshotService {
    /// Serves the store of `handles` (opened on one root); removes what a crash left half
    /// made first.
    pub fn new(handles: Vec<Strata>) -> Result<SnapshotService, Status> {
        let first = handles
            .first()
            .ok_or_else(|| Status::internal("no store handle"))?;
        // What one snapshot's reconcile could not finish never stops the daemon: it shows
        // again in that snapshot's next request, and the next `Cleanup` retries it.
        if let Err(e) = reconcile(first) {
            eprintln!(
                "strata serve: warning: reconciling snapshots at start: {}",
                e.message()
            );
        }
        let workers = Workers::start(handles)
            .map_err(|e| Status::internal(format!("starting the worker threads: {e}")))?;
        Ok(SnapshotService {
            workers: Arc::new(workers),
        })
    }

    /// The worker threads requests run on (to stop them when the daemon stops).
    pub fn workers(&self) -> Arc<Workers> {
        self.workers.clone()
    }

    /// Runs `f` with a store handle on a worker thread (see [`Workers::run`]).
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Strata) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        self.workers.run(f).await
    }

    async fn create(
        &self,
        key: String,
        parent: String,
        labels: BTreeMap<String, String>,
        kind: SnapshotKind,
    ) -> Result<Vec<Mount>, Status> {
        self.run(move |s| {
            let _lock = lock(s)?;
            let parent = (!parent.is_empty()).then_some(parent);
            let info = s
                .store()
                .create_snapshot(&key, parent.as_deref(), kind, &labels)
                .map_err(status_of)?;
            let parent_layer = match &info.parent {
                Some(p) => Some(layer_id(s.store().snapshot(p).map_err(status_of)?.id)),
                None => None,
            };
            // The layer and its mount: on a failure the guard ends the mount and removes
            // the layer, then the record goes.
            let made = (|| -> Result<std::path::PathBuf, LayerError> {
                let mut pending = PendingLayers::new(s)?;
                let id = pending.create(
                    NewLayer {
                        id: Some(layer_id(info.id)),
                        parent: parent_layer.clone(),
                        read_write: kind == SnapshotKind::Active,
                        ..Default::default()
                    },
                    parent_layer.as_deref(),
                    &[],
                )?;
                s.store().finish_create(&id)?;
                // containerd's snapshots start as an empty 0755 directory.
                let root_mode = info.parent.is_none().then_some(0o755);
                let path = s.hold_mount(&id, root_mode)?;
                pending.keep();
                Ok(path)
            })();
            match made {
                Ok(path) => Ok(mounts_of(path, kind == SnapshotKind::View)),
                Err(e) => {
                    let _ = s.store().remove_snapshot(&key);
                    Err(layer_status(e))
                }
            }
        })
        .await
    }
}

/// Removes records whose layer is missing or incomplete and `sn` layers without a record,
/// and gives active snapshots and views their mount back (committed snapshots and removed
/// layers lose theirs). At start nothing else runs; on `Cleanup` it runs under the store's
/// lock, which every snapshot request holds from start to end (see the module docs), so
/// what it removes is dead. Goes on past failures; returns the first.
pub fn reconcile(s: &Strata) -> Result<(), Status> {
    let _lock = lock(s)?;
    let snapshots = s
        .store()
        .snapshots()
        .map_err(|e| Status::internal(message(e.to_string())))?;
    let layers = s.list().map_err(layer_status)?;
    let complete: std::collections::HashSet<&str> = layers
        .iter()
        .filter(|l| !l.incomplete)
        .map(|l| l.id.as_str())
        .collect();
    let mut first_error = None;
    let mut failed = |e: Status| {
        first_error.get_or_insert(e);
    };
    let mut known = std::collections::HashSet::new();
    // A broken record has no children (only committed snapshots are parents, and their
    // layers were complete before they were), so order does not matter here.
    for info in &snapshots {
        let layer = layer_id(info.id);
        if !complete.contains(layer.as_str()) {
            if let Err(e) = s.store().remove_snapshot(&info.key) {
                known.insert(layer);
                failed(status_of(e));
            }
            continue;
        }
        // Active and view snapshots keep the host's mount (made again after a reboot);
        // committed ones hold none (a crash between the commit and the release left one).
        let kept = match info.kind {
            SnapshotKind::Committed => s.release_mount(&layer),
            SnapshotKind::Active | SnapshotKind::View => s.hold_mount(&layer, None).map(|_| ()),
        };
        if let Err(e) = kept {
            failed(layer_status(e));
        }
        known.insert(layer);
    }
    let mut orphans: Vec<&crate::store::Layer> = layers
        .iter()
        .filter(|l| l.id.starts_with("sn") && !known.contains(&l.id))
        .collect();
    // Children first.
    orphans
        .sort_by_key(|l| std::cmp::Reverse(s.store().chain(&l.id).map(|c| c.len()).unwrap_or(0)));
    for l in orphans {
        // One layer that cannot go never stops the daemon (nor the other snapshots): it is
        // set aside, reported, and the next reconcile (start, `Cleanup`) tries again.
        if let Err(e) = s.release_mount(&l.id).and_then(|()| s.remove(&l.id)) {
            let reason = format!("removing this snapshot layer without a record failed: {e}");
            eprintln!(
                "strata serve: warning: layer {} is set aside as damaged: {}",
                l.id,
                crate::text::escape(&reason)
            );
            if let Err(e) = s.store().set_damaged(&l.id, &reason) {
                failed(Status::internal(message(e.to_string())));
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[tonic::async_trait]
impl pb::snapshots_server::Snapshots for SnapshotService {
    async fn prepare(
        &self,
        request: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let r = request.into_inner();
        let mounts = self
            .create(r.key, r.parent, labels_of(r.labels), SnapshotKind::Active)
            .await?;
        Ok(Response::new(pb::PrepareSnapshotResponse { mounts }))
    }

    async fn view(
        &self,
        request: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let r = request.into_inner();
        let mounts = self
            .create(r.key, r.parent, labels_of(r.labels), SnapshotKind::View)
            .await?;
        Ok(Response::new(pb::ViewSnapshotResponse { mounts }))
    }

    async fn mounts(
        &self,
        request: Request<pb::MountsRequest>,
    ) -> Result<Response<pb::MountsResponse>, Status> {
        let key = request.into_inner().key;
        let mounts = self
            .run(move |s| {
                let _lock = lock(s)?;
                let info = s.store().snapshot(&key).map_err(status_of)?;
                if info.kind == SnapshotKind::Committed {
                    return Err(Status::failed_precondition(format!(
                        "snapshot {key} is committed: not active or view"
                    )));
                }
                s.hold_mount(&layer_id(info.id), None)
                    .map(|path| mounts_of(path, info.kind == SnapshotKind::View))
                    .map_err(layer_status)
            })
            .await?;
        Ok(Response::new(pb::MountsResponse { mounts }))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        self.run(move |s| {
            let _lock = lock(s)?;
            let active = s.store().snapshot(&r.key).map_err(status_of)?;
            // Only an active snapshot commits (the store says why not otherwise).
            let is_active = active.kind == SnapshotKind::Active;
            let usage = if is_active {
                usage_of(s, &active)?
            } else {
                (0, 0)
            };
            let layer = layer_id(active.id);
            // A committed snapshot is not mounted. The mount goes before the record changes,
            // so that the record is the last thing written before the answer: a daemon
            // killed in between restarts with the active snapshot, mounted again.
            if is_active {
                s.release_mount(&layer).map_err(layer_status)?;
            }
            let rebase = (!r.parent.is_empty()).then_some(r.parent.as_str());
            let committed =
                s.store()
                    .commit_snapshot(&r.name, &r.key, &labels_of(r.labels), rebase, usage);
            if let Err(e) = committed {
                // Still active: mounted again (else on its next `Mounts`).
                if is_active {
                    let _ = s.hold_mount(&layer, None);
                }
                return Err(status_of(e));
            }
            Ok(())
        })
        .await?;
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let key = request.into_inner().key;
        self.run(move |s| {
            let _lock = lock(s)?;
            let info = s.store().snapshot(&key).map_err(status_of)?;
            let layer = layer_id(info.id);
            // The record goes first (refused while it has children); a crash or a failure
            // before the layer is gone leaves an `sn` layer without a record, which the next
            // reconcile (start, `Cleanup`) removes. A layer already gone is fine.
            s.store().remove_snapshot(&key).map_err(status_of)?;
            match s.release_mount(&layer).and_then(|()| s.remove(&layer)) {
                Ok(()) | Err(LayerError::Store(StoreError::NotFound(_))) => Ok(()),
                Err(e) => Err(layer_status(e)),
            }
        })
        .await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        request: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let key = request.into_inner().key;
        let info = self
            .run(move |s| s.store().snapshot(&key).map_err(status_of))
            .await?;
        Ok(Response::new(pb::StatSnapshotResponse {
            info: Some(info_of(&info)),
        }))
    }

    async fn update(
        &self,
        request: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let r = request.into_inner();
        let Some(info) = r.info else {
            return Err(Status::invalid_argument("update without an info"));
        };
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let updated = self
            .run(move |s| {
                s.store()
                    .update_snapshot(&info.name, &labels_of(info.labels), &paths)
                    .map_err(status_of)
            })
            .await?;
        Ok(Response::new(pb::UpdateSnapshotResponse {
            info: Some(info_of(&updated)),
        }))
    }

    type ListStream =
        tokio_stream::Iter<std::vec::IntoIter<Result<pb::ListSnapshotsResponse, Status>>>;

    async fn list(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let texts = request.into_inner().filters;
        // Parsing compiles regular expressions: on a worker, not on the async runtime.
        let matching: Vec<pb::Info> = self
            .run(move |s| {
                let parsed = filters::parse_all(&texts)
                    .map_err(|e| Status::invalid_argument(message(e.to_string())))?;
                let all = s
                    .store()
                    .snapshots()
                    .map_err(|e| Status::internal(e.to_string()))?;
                Ok(all
                    .iter()
                    .filter(|i| filters::any_matches(&parsed, *i))
                    .map(info_of)
                    .collect())
            })
            .await?;
        let batches: Vec<Result<pb::ListSnapshotsResponse, Status>> = matching
            .chunks(LIST_BATCH)
            .map(|c| Ok(pb::ListSnapshotsResponse { info: c.to_vec() }))
            .collect();
        Ok(Response::new(tokio_stream::iter(batches)))
    }

    async fn usage(
        &self,
        request: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        let key = request.into_inner().key;
        let (size, inodes) = self
            .run(move |s| {
                let _lock = lock(s)?;
                let info = s.store().snapshot(&key).map_err(status_of)?;
                match info.kind {
                    SnapshotKind::Committed => Ok((info.size, info.inodes)),
                    _ => usage_of(s, &info),
                }
            })
            .await?;
        Ok(Response::new(pb::UsageResponse { size, inodes }))
    }

    async fn cleanup(&self, _request: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        self.run(reconcile).await?;
        Ok(Response::new(()))
    }
}

/// A snapshot's own usage: bytes of its changes against its parent, and how many paths
/// changed (an upper bound of its inodes).
fn usage_of(s: &Strata, info: &SnapshotInfo) -> Result<(i64, i64), Status> {
    let layer = layer_id(info.id);
    let size = s.diff_size(&layer, None).map_err(layer_status)?;
    let changes = s.changes(&layer, None).map_err(layer_status)?;
    Ok((size as i64, changes.len() as i64))
}

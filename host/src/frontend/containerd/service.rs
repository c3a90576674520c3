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
//! driver made it); on removal the layer is marked incomplete before the record goes. At
//! start (and on `Cleanup`) records without a complete layer and `sn` layers without a
//! record are removed, so a killed daemon restarts with every snapshot that containerd was
//! told about and nothing else.
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
use crate::layers::{CreateLayer, LayerError, Strata};
use crate::store::{SnapshotError, SnapshotInfo, SnapshotKind, StoreError};

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
        reconcile(first)?;
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
            let parent = (!parent.is_empty()).then_some(parent);
            let info = s
                .store()
                .create_snapshot(&key, parent.as_deref(), kind, &labels)
                .map_err(status_of)?;
            let parent_layer = match &info.parent {
                Some(p) => Some(layer_id(s.store().snapshot(p).map_err(status_of)?.id)),
                None => None,
            };
            let layer = layer_id(info.id);
            let made = s
                .create_layer(CreateLayer {
                    id: Some(layer.clone()),
                    parent: parent_layer,
                    read_write: kind == SnapshotKind::Active,
                    ..Default::default()
                })
                .and_then(|_| {
                    // containerd's snapshots start as an empty 0755 directory.
                    let root_mode = info.parent.is_none().then_some(0o755);
                    s.hold_mount(&layer, root_mode)
                });
            match made {
                Ok(path) => Ok(mounts_of(path, kind == SnapshotKind::View)),
                Err(e) => {
                    let _ = s.release_mount(&layer);
                    let _ = s.remove(&layer);
                    let _ = s.store().remove_snapshot(&key);
                    Err(layer_status(e))
                }
            }
        })
        .await
    }
}

/// Removes records whose layer is missing or incomplete (a crash between the record and
/// the layer) and `sn` layers without a record (a crash while removing).
pub fn reconcile(s: &Strata) -> Result<(), Status> {
    let snapshots = s
        .store()
        .snapshots()
        .map_err(|e| Status::internal(e.to_string()))?;
    let layers = s.list().map_err(layer_status)?;
    let complete: std::collections::HashSet<&str> = layers
        .iter()
        .filter(|l| !l.incomplete)
        .map(|l| l.id.as_str())
        .collect();
    // Children before parents: a broken record has no children (only committed snapshots
    // are parents, and those had their layer), so order does not matter here.
    for info in &snapshots {
        if !complete.contains(layer_id(info.id).as_str()) {
            let _ = s.store().remove_snapshot(&info.key);
            continue;
        }
        // Active and view snapshots keep the host's mount (made again after a reboot);
        // committed ones hold none (a crash between the commit and the release left one).
        // Failures here show again in the snapshot's next `Mounts` or `Remove`.
        let layer = layer_id(info.id);
        let _ = match info.kind {
            SnapshotKind::Committed => s.release_mount(&layer),
            SnapshotKind::Active | SnapshotKind::View => s.hold_mount(&layer, None).map(|_| ()),
        };
    }
    let known: std::collections::HashSet<String> =
        snapshots.iter().map(|i| layer_id(i.id)).collect();
    let mut orphans: Vec<&crate::store::Layer> = layers
        .iter()
        .filter(|l| l.id.starts_with("sn") && !known.contains(&l.id))
        .collect();
    // Children first.
    orphans
        .sort_by_key(|l| std::cmp::Reverse(s.store().chain(&l.id).map(|c| c.len()).unwrap_or(0)));
    for l in orphans {
        s.release_mount(&l.id).map_err(layer_status)?;
        s.remove(&l.id).map_err(layer_status)?;
    }
    Ok(())
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
            let active = s.store().snapshot(&r.key).map_err(status_of)?;
            let usage = if active.kind == SnapshotKind::Active {
                usage_of(s, &active)?
            } else {
                (0, 0)
            };
            let rebase = (!r.parent.is_empty()).then_some(r.parent.as_str());
            s.store()
                .commit_snapshot(&r.name, &r.key, &labels_of(r.labels), rebase, usage)
                .map_err(status_of)?;
            // A committed snapshot is not mounted; a failure here is retried by the next
            // reconcile (start, `Cleanup`).
            let _ = s.release_mount(&layer_id(active.id));
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
            let info = s.store().snapshot(&key).map_err(status_of)?;
            let layer = layer_id(info.id);
            // The record goes first (refused while it has children); a crash before the
            // layer is gone leaves an `sn` layer without a record, removed at the next start.
            s.store().remove_snapshot(&key).map_err(status_of)?;
            s.release_mount(&layer).map_err(layer_status)?;
            s.remove(&layer).map_err(layer_status)?;
            Ok(())
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

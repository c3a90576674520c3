//! The containerd snapshotter front end: `strata serve --containerd-socket PATH` serves
//! containerd's snapshots gRPC API (`containerd.services.snapshots.v1.Snapshots`) over a
//! unix socket, for a `[proxy_plugins]` entry in containerd's config. The API is generated
//! at build time from the project's own `.proto` files (host/proto).
//!
//! Requests are queued for a fixed set of worker threads with backpressure ([`workers`]).
//! SIGTERM or SIGINT stops the daemon within [`SHUTDOWN_GRACE`]: it stops accepting
//! connections, answers queued requests `UNAVAILABLE` unrun, gives the running ones (at
//! most [`service::STORE_HANDLES`]) the rest of the grace to finish and exits even if they
//! did not; what an interrupted request leaves (a record without its layer, a layer without
//! its record, a mount) is what a killed daemon leaves, and the next start reconciles it.

pub mod filters;
pub mod service;
pub mod workers;

use std::time::Duration;

/// From SIGTERM or SIGINT to the daemon's exit, at most (a second signal exits at once).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The generated API, in modules that follow the protobuf packages.
#[allow(clippy::all, missing_docs)]
pub mod api {
    pub mod types {
        tonic::include_proto!("containerd.types");
    }
    pub mod services {
        pub mod snapshots {
            pub mod v1 {
                tonic::include_proto!("containerd.services.snapshots.v1");
            }
        }
    }
    pub use services::snapshots::v1 as snapshots;
}

/// Resolves at the first SIGINT or SIGTERM after it is first polled.
async fn stop_signal(term: &mut tokio::signal::unix::Signal) {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Why the daemon could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Opening a store handle failed (the caller's error, kept whole).
    #[error(transparent)]
    Open(Box<dyn std::error::Error + Send + Sync>),
    #[error("reconciling snapshots: {0}")]
    Reconcile(String),
    #[error("{what}: {cause}")]
    Io { what: String, cause: std::io::Error },
    #[error("{} exists and is not a socket", .0.display())]
    NotASocket(std::path::PathBuf),
    #[error("serving the snapshots API")]
    Transport(#[source] tonic::transport::Error),
}

/// Serves the snapshots API on the unix socket `path` until SIGINT or SIGTERM, with
/// [`service::STORE_HANDLES`] store handles made by `open`; returns at most
/// [`SHUTDOWN_GRACE`] after the signal.
pub fn serve<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    open: impl Fn() -> Result<crate::layers::Strata, E>,
    path: &std::path::Path,
) -> Result<(), ServeError> {
    let io = |what: String| move |cause| ServeError::Io { what, cause };
    let handles = (0..service::STORE_HANDLES)
        .map(|_| open().map_err(|e| ServeError::Open(e.into())))
        .collect::<Result<Vec<_>, _>>()?;
    let service = service::SnapshotService::new(handles)
        .map_err(|s| ServeError::Reconcile(s.message().to_string()))?;
    let workers = service.workers();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(io("starting the async runtime".into()))?;
    let served = runtime.block_on(async move {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket() {
                std::fs::remove_file(path)
                    .map_err(io(format!("removing the stale socket {}", path.display())))?;
            } else {
                return Err(ServeError::NotASocket(path.to_path_buf()));
            }
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(io("installing a SIGTERM handler".into()))?;
        // Bound under a temporary name and renamed into place once listening: a client that
        // sees the socket can connect (between bind and listen, connects are refused).
        let pending = path.with_file_name(format!(".strata-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&pending);
        let listener = tokio::net::UnixListener::bind(&pending)
            .map_err(io(format!("listening on {}", pending.display())))?;
        std::fs::rename(&pending, path).map_err(io(format!(
            "moving the socket {} to {}",
            pending.display(),
            path.display()
        )))?;
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .add_service(api::snapshots::snapshots_server::SnapshotsServer::new(
                service,
            ))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            });
        tokio::pin!(server);
        tokio::select! {
            r = &mut server => {
                let _ = std::fs::remove_file(path);
                return r.map_err(ServeError::Transport);
            }
            _ = stop_signal(&mut term) => {}
        }
        // Stop: no new connections, queued requests refused, running ones get the grace.
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        workers.close();
        let _ = stop.send(());
        let drained = tokio::select! {
            r = tokio::time::timeout_at(deadline, async {
                let _ = (&mut server).await;
                workers.stopped().await;
            }) => r.is_ok(),
            _ = stop_signal(&mut term) => false,
        };
        let _ = std::fs::remove_file(path);
        if !drained {
            eprintln!(
                "strata serve: requests still running {} s after the stop signal; exiting \
                 without them (the next start reconciles what they left)",
                SHUTDOWN_GRACE.as_secs()
            );
        }
        Ok(())
    });
    // Neither the runtime's tasks nor the worker threads are waited for: the process exits.
    runtime.shutdown_background();
    served
}

use crate::store::SnapshotInfo;

/// The fields containerd's filters name on a snapshot: `name`, `parent`, `kind`
/// (`active`, `view`, `committed`) and `labels.<key>`.
impl filters::Fields for SnapshotInfo {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "name" => Some(self.key.clone()),
            [f] if f == "parent" => Some(self.parent.clone().unwrap_or_default()),
            [f] if f == "kind" => Some(self.kind.word().to_string()),
            [f, rest @ ..] if f == "labels" && !rest.is_empty() => {
                self.labels.get(&rest.join(".")).cloned()
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::filters::{any_matches, parse_all};
    use crate::store::{LayerStore, SnapshotKind};

    /// `strata serve --help` states the figures the constants hold.
    #[test]
    fn serve_help_states_the_bounds() {
        use clap::CommandFactory;
        let mut cli = crate::frontend::cli::Cli::command();
        let help = cli
            .find_subcommand_mut("serve")
            .unwrap()
            .render_long_help()
            .to_string();
        for figure in [
            format!("{} worker threads", super::workers::STORE_HANDLES),
            format!("queue of {}", super::workers::MAX_QUEUED_REQUESTS),
            format!("waits {} s", super::workers::MAX_QUEUE_WAIT.as_secs()),
            format!("within {} s", super::SHUTDOWN_GRACE.as_secs()),
        ] {
            assert!(help.contains(&figure), "`{figure}` in: {help}");
        }
    }

    /// containerd's testsuite `Walk` case: the same snapshots, filters and expected names.
    #[test]
    fn the_walk_filter_matrix() {
        let d = tempfile::tempdir().unwrap();
        let s = LayerStore::open_with_boot_id(d.path(), "b").unwrap();
        let labels = |extra: Option<&str>| {
            let mut m = BTreeMap::from([(
                "containerd.io/gc.root".to_string(),
                "check-walk".to_string(),
            )]);
            if let Some(l) = extra {
                m.insert("l".into(), l.into());
            }
            m
        };
        let active = SnapshotKind::Active;
        s.create_snapshot("a-np", None, active, &labels(None))
            .unwrap();
        s.create_snapshot("p-tmp", None, active, &labels(None))
            .unwrap();
        s.commit_snapshot("p", "p-tmp", &labels(None), None, (0, 0))
            .unwrap();
        s.create_snapshot("a", Some("p"), active, &labels(None))
            .unwrap();
        s.create_snapshot("v", Some("p"), SnapshotKind::View, &labels(None))
            .unwrap();
        s.create_snapshot("p-wl-tmp", None, active, &labels(None))
            .unwrap();
        s.commit_snapshot("p-wl", "p-wl-tmp", &labels(Some("1")), None, (0, 0))
            .unwrap();
        s.create_snapshot("a-wl", Some("p-wl"), active, &labels(Some("2")))
            .unwrap();
        s.create_snapshot("v-wl", Some("p-wl"), SnapshotKind::View, &labels(Some("3")))
            .unwrap();
        s.create_snapshot("a-np-wl", None, active, &labels(Some("2")))
            .unwrap();
        let all = s.snapshots().unwrap();
        let walk = |filters: &[&str]| {
            let parsed =
                parse_all(&filters.iter().map(|f| f.to_string()).collect::<Vec<_>>()).unwrap();
            let mut names: Vec<String> = all
                .iter()
                .filter(|i| any_matches(&parsed, *i))
                .map(|i| i.key.clone())
                .collect();
            names.sort();
            names
        };
        let sorted = |names: &[&str]| {
            let mut v: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            v.sort();
            v
        };
        let root = r#"labels."containerd.io/gc.root"==check-walk"#;
        assert_eq!(walk(&[root]).len(), 8);
        assert_eq!(
            walk(&[&format!("kind==active,{root}")]),
            sorted(&["a-np", "a", "a-wl", "a-np-wl"])
        );
        assert_eq!(
            walk(&[&format!("kind==view,{root}")]),
            sorted(&["v", "v-wl"])
        );
        assert_eq!(
            walk(&[&format!("kind==committed,{root}")]),
            sorted(&["p", "p-wl"])
        );
        assert_eq!(
            walk(&["name==p", "name==a-np-wl"]),
            sorted(&["p", "a-np-wl"])
        );
        assert_eq!(walk(&["name==a-wl,labels.l"]), sorted(&["a-wl"]));
        assert_eq!(walk(&["parent==p"]), sorted(&["a", "v"]));
        assert_eq!(
            walk(&[&format!(r#"parent!="",{root}"#)]),
            sorted(&["a", "v", "a-wl", "v-wl"])
        );
        assert_eq!(
            walk(&["labels.l"]),
            sorted(&["p-wl", "a-wl", "v-wl", "a-np-wl"])
        );
        assert_eq!(walk(&["labels.l==2"]), sorted(&["a-wl", "a-np-wl"]));
    }
}

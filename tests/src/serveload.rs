//! Load on `strata serve --containerd-socket`: a daemon on a private socket and store, and many
//! concurrent gRPC clients making snapshots (Prepare, Commit, Remove), each call under a client
//! deadline. Shared by the `serve_load` tests (small, bounded loads) and `cargo xtask bench
//! serve-load` (1,000 clients, with figures).
//!
//! Every call ends in one of: success, `RESOURCE_EXHAUSTED` (the daemon's backpressure), another
//! gRPC status, or the client deadline (a hang: the daemon must never let that happen). The
//! report counts them and keeps each successful call's latency.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use strata_containerd::api::snapshots as pb;
use strata_containerd::api::snapshots::snapshots_client::SnapshotsClient;
use tonic::Code;
use tonic::transport::Channel;

/// A `strata serve` daemon on `<dir>/strata.sock`, its store in `<dir>/root`.
pub struct Serve {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub child: Child,
}

impl Serve {
    /// Starts `bin serve` on the store in `dir` (made when missing) and waits for its socket.
    pub fn start(bin: &Path, dir: &Path) -> Serve {
        let socket = dir.join("strata.sock");
        let _ = std::fs::remove_file(&socket);
        let log = std::fs::File::create(dir.join("serve.log")).expect("creating the log");
        let mut child = crate::strata_command(bin)
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--run-root")
            .arg(dir.join("run"))
            .arg("serve")
            .arg("--containerd-socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting strata serve");
        let start = Instant::now();
        while !socket.exists() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "strata serve exited ({status}) before its socket appeared: {}",
                    std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
                );
            }
            assert!(start.elapsed() < Duration::from_secs(120), "no socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        Serve {
            dir: dir.to_path_buf(),
            socket,
            child,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// A client on a connection of its own.
    pub async fn connect(&self) -> SnapshotsClient<Channel> {
        connect(&self.socket).await
    }

    /// Sends SIGTERM and waits for the daemon to exit, at most `limit`: how long it took, or
    /// `None` when it was still running (it is then killed).
    pub fn terminate(&mut self, limit: Duration) -> Option<Duration> {
        let pid = rustix::process::Pid::from_child(&self.child);
        let sent = Instant::now();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
        while sent.elapsed() < limit {
            if self.child.try_wait().unwrap().is_some() {
                return Some(sent.elapsed());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("serve.log")).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A client of the daemon on `socket`, on a connection of its own. Connecting is retried
/// for a while (the daemon renames its socket into place once it listens, but a client may
/// also race a restart).
pub async fn connect(socket: &Path) -> SnapshotsClient<Channel> {
    let start = Instant::now();
    loop {
        let socket = socket.to_path_buf();
        let connected = tonic::transport::Endpoint::try_from("http://strata.invalid")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(socket).await?,
                    ))
                }
            }))
            .await;
        match connected {
            Ok(channel) => return SnapshotsClient::new(channel),
            Err(e) if start.elapsed() > Duration::from_secs(30) => {
                panic!("connecting to strata serve: {e:?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// How one call ended.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Ok,
    /// The daemon's backpressure: `RESOURCE_EXHAUSTED`.
    Exhausted,
    /// Any other status (its code).
    Failed(String),
    /// The client deadline passed without an answer.
    Hung,
}

fn outcome<T>(r: Result<Result<T, tonic::Status>, tokio::time::error::Elapsed>) -> Outcome {
    match r {
        Ok(Ok(_)) => Outcome::Ok,
        Ok(Err(s)) if s.code() == Code::ResourceExhausted => Outcome::Exhausted,
        Ok(Err(s)) => Outcome::Failed(format!("{:?}: {}", s.code(), s.message())),
        Err(_) => Outcome::Hung,
    }
}

/// What a load did: per operation, how many calls ended how, and the latencies of the
/// successful calls; the wall time of the whole load.
#[derive(Debug, Default)]
pub struct Report {
    pub outcomes: BTreeMap<(&'static str, Outcome), usize>,
    pub latencies: BTreeMap<&'static str, Vec<Duration>>,
    pub wall: Duration,
    /// Snapshot lifecycles (prepare, commit, remove) that completed.
    pub lifecycles: usize,
}

impl Report {
    fn add(&mut self, op: &'static str, o: Outcome, took: Duration) {
        if o == Outcome::Ok {
            self.latencies.entry(op).or_default().push(took);
        }
        *self.outcomes.entry((op, o)).or_default() += 1;
    }

    /// Adds `other`'s calls and lifecycles to these.
    pub fn merge(&mut self, other: Report) {
        for (k, n) in other.outcomes {
            *self.outcomes.entry(k).or_default() += n;
        }
        for (op, l) in other.latencies {
            self.latencies.entry(op).or_default().extend(l);
        }
        self.lifecycles += other.lifecycles;
    }

    /// Calls that ended as `o`, over every operation.
    pub fn count(&self, o: &Outcome) -> usize {
        self.outcomes
            .iter()
            .filter(|((_, x), _)| x == o)
            .map(|(_, n)| n)
            .sum()
    }

    /// Calls that ended neither in success nor in `RESOURCE_EXHAUSTED`.
    pub fn unexpected(&self) -> Vec<String> {
        self.outcomes
            .iter()
            .filter(|((_, o), _)| !matches!(o, Outcome::Ok | Outcome::Exhausted))
            .map(|((op, o), n)| format!("{op}: {o:?} ×{n}"))
            .collect()
    }

    /// Every successful call's latency, sorted.
    pub fn all_latencies(&self) -> Vec<Duration> {
        let mut v: Vec<Duration> = self.latencies.values().flatten().copied().collect();
        v.sort();
        v
    }
}

/// The `q`-quantile (0..=1) of sorted `v`.
pub fn quantile(v: &[Duration], q: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}

async fn timed<T>(
    deadline: Duration,
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> (Outcome, Duration) {
    let start = Instant::now();
    let o = outcome(tokio::time::timeout(deadline, call).await);
    (o, start.elapsed())
}

fn labels() -> std::collections::HashMap<String, String> {
    std::collections::HashMap::from([("containerd.io/gc.root".into(), "load".into())])
}

/// Prepare of `key` (no parent).
pub async fn prepare(
    client: &mut SnapshotsClient<Channel>,
    key: &str,
) -> Result<Vec<strata_containerd::api::types::Mount>, tonic::Status> {
    client
        .prepare(pb::PrepareSnapshotRequest {
            snapshotter: "strata".into(),
            key: key.into(),
            parent: String::new(),
            labels: labels(),
        })
        .await
        .map(|r| r.into_inner().mounts)
}

/// What each client of a load does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// One Prepare.
    Prepare,
    /// Prepare, Commit, Remove of the committed snapshot: a snapshot's whole life.
    Lifecycle,
}

/// `clients` concurrent clients, client `i` working on key `<prefix>-<i>`, spread over
/// `connections` connections; every call under `deadline`. Stops at a client's first call
/// that does not succeed.
pub async fn load(
    socket: &Path,
    prefix: &str,
    clients: usize,
    connections: usize,
    work: Work,
    deadline: Duration,
) -> Report {
    let mut conns = Vec::new();
    for _ in 0..connections.max(1) {
        conns.push(connect(socket).await);
    }
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..clients {
        let mut c = conns[i % conns.len()].clone();
        let key = format!("{prefix}-{i}");
        tasks.spawn(async move { client(&mut c, &key, work, deadline).await });
    }
    let mut report = Report::default();
    while let Some(r) = tasks.join_next().await {
        report.merge(r.expect("a load client panicked"));
    }
    report.wall = start.elapsed();
    report
}

/// One client's work on `key` with `c`, every call under `deadline`; stops at the first call
/// that does not succeed.
pub async fn client(
    c: &mut SnapshotsClient<Channel>,
    key: &str,
    work: Work,
    deadline: Duration,
) -> Report {
    let mut r = Report::default();
    let (o, t) = timed(deadline, prepare(c, key)).await;
    let ok = o == Outcome::Ok;
    r.add("prepare", o, t);
    if !ok || work == Work::Prepare {
        return r;
    }
    let name = format!("{key}-committed");
    let (o, t) = timed(
        deadline,
        c.commit(pb::CommitSnapshotRequest {
            snapshotter: "strata".into(),
            name: name.clone(),
            key: key.to_string(),
            labels: labels(),
            parent: String::new(),
        }),
    )
    .await;
    let ok = o == Outcome::Ok;
    r.add("commit", o, t);
    if !ok {
        return r;
    }
    let (o, t) = timed(
        deadline,
        c.remove(pb::RemoveSnapshotRequest {
            snapshotter: "strata".into(),
            key: name,
        }),
    )
    .await;
    if o == Outcome::Ok {
        r.lifecycles += 1;
    }
    r.add("remove", o, t);
    r
}

/// Stat of `key` under `deadline`.
pub async fn stat(
    client: &mut SnapshotsClient<Channel>,
    key: &str,
    deadline: Duration,
) -> Result<pb::Info, String> {
    match tokio::time::timeout(
        deadline,
        client.stat(pb::StatSnapshotRequest {
            snapshotter: "strata".into(),
            key: key.into(),
        }),
    )
    .await
    {
        Ok(Ok(r)) => Ok(r.into_inner().info.unwrap_or_default()),
        Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
        Err(_) => Err(format!("no answer within {deadline:?}")),
    }
}

/// List with `filters` under `deadline`: the infos, or the status.
pub async fn list(
    client: &mut SnapshotsClient<Channel>,
    filters: Vec<String>,
    deadline: Duration,
) -> Result<Result<Vec<pb::Info>, tonic::Status>, String> {
    let call = async {
        let mut stream = client
            .list(pb::ListSnapshotsRequest {
                snapshotter: "strata".into(),
                filters,
            })
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(batch) = stream.message().await? {
            out.extend(batch.info);
        }
        Ok(out)
    };
    tokio::time::timeout(deadline, call)
        .await
        .map_err(|_| format!("no answer within {deadline:?}"))
}

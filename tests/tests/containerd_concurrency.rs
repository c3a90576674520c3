//! Strata under concurrent containerd clients, with containerd's garbage collection running
//! after every removal and a SIGKILL of `strata serve` in the middle of the load.
//!
//! containerd calls the snapshotter's `Cleanup` at the end of every collection, without
//! holding its own lock, so Cleanup runs while Prepare, View and Commit are in flight; the
//! collection's `Remove` calls run beside Strata's other requests too. [`CLIENTS`] clients
//! each loop `ctr snapshots prepare/commit/mounts/rm` (on their own committed parents
//! and on one shared parent); the daemon is killed once and restarted. Afterwards no client
//! command and no collection failed except while the daemon was down (each failure is
//! classified by the time it happened), and Strata's snapshot records, its `sn` layers and
//! its mounts are exactly what containerd lists.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use strata_containerd::snapshots::{SnapshotKind, SnapshotRecords};
use strata_core::store::LayerStore;
use strata_tests::containerd::{Daemons, NAMESPACE, ctr_at, tools_or_skip};

/// Concurrent `ctr` clients.
const CLIENTS: usize = 8;
/// Rounds per client; each round is at most [`OPS_PER_ROUND`] commands.
const ROUNDS: usize = 14;
const OPS_PER_ROUND: usize = 11;
/// The committed snapshot every client also builds on.
const SHARED: &str = "shared";

/// containerd collects garbage at once after every removal (and so calls Cleanup).
const GC_AFTER_EVERY_REMOVAL: &str = "[plugins]\n  [plugins.\"io.containerd.gc.v1.scheduler\"]\n    \
     deletion_threshold = 1\n    schedule_delay = \"0s\"\n    \
     startup_delay = \"10ms\"\n";

/// One `ctr` command a client ran.
struct Ran {
    client: usize,
    args: Vec<String>,
    start: SystemTime,
    end: SystemTime,
    error: Option<String>,
}

/// When the daemon was down: from just before the SIGKILL until containerd reached the
/// restarted daemon again.
#[derive(Default)]
struct Outage {
    /// (killed, reachable again); `None` until it happened.
    window: Option<(SystemTime, Option<SystemTime>)>,
}

impl Outage {
    fn overlaps(&self, start: SystemTime, end: SystemTime) -> bool {
        match self.window {
            Some((down, Some(up))) => start <= up && end >= down,
            Some((down, None)) => end >= down,
            None => false,
        }
    }
}

struct Shared {
    /// containerd's socket.
    address: PathBuf,
    outage: Mutex<Outage>,
    /// Signalled when the daemon is reachable again.
    up: Condvar,
    done_ops: AtomicUsize,
    ran: Mutex<Vec<Ran>>,
}

impl Shared {
    /// Runs `ctr snapshots --snapshotter strata ARGS` for `client`, recording it.
    fn snap(&self, client: usize, args: &[&str]) -> bool {
        let mut full = vec!["snapshots", "--snapshotter", "strata"];
        full.extend_from_slice(args);
        let start = SystemTime::now();
        let (success, _, err) = ctr_at(&self.address, &full);
        let end = SystemTime::now();
        self.done_ops.fetch_add(1, Ordering::Relaxed);
        self.ran.lock().unwrap().push(Ran {
            client,
            args: args.iter().map(|a| a.to_string()).collect(),
            start,
            end,
            error: (!success).then(|| err.trim().to_string()),
        });
        success
    }

    /// Waits while the daemon is down (between the kill and containerd reaching it again).
    fn wait_until_up(&self) {
        let mut o = self.outage.lock().unwrap();
        while matches!(o.window, Some((_, None))) {
            o = self.up.wait(o).unwrap();
        }
    }
}

fn key(client: usize, round: usize, what: &str) -> String {
    format!("c{client}-r{round}-{what}")
}

/// One client: rounds of prepare, commit, prepare on the committed snapshot and on
/// the shared one, mounts, commit, and removal (the last round keeps its snapshots). A
/// round whose command failed is abandoned: once the daemon is reachable, whatever
/// containerd lists of the round is removed (those commands must succeed). Returns the
/// snapshots it keeps (the last round's, unless that round failed), as containerd lists
/// them.
fn client(s: &Shared, c: usize) -> Vec<Listed> {
    let mut kept = Vec::new();
    for r in 0..ROUNDS {
        let k = |w: &str| key(c, r, w);
        let last = r + 1 == ROUNDS;
        let mnt = format!("/tmp/strata-concurrency-{c}");
        // No views: `ctr snapshots view` sets no `containerd.io/gc.root` label (prepare and
        // commit do), and containerd 1.6's collection of such a view leaves its parent with
        // a dangling child link, which refuses the parent's removal for good.
        let steps: Vec<Vec<String>> = [
            vec!["prepare", &k("a")],
            vec!["commit", &k("p"), &k("a")],
            vec!["prepare", &k("b"), &k("p")],
            vec!["prepare", &k("s"), SHARED],
            vec!["mounts", &mnt, &k("s")],
            vec!["commit", &k("q"), &k("b")],
            vec!["prepare", &k("t"), &k("q")],
            vec!["rm", &k("t")],
            vec!["rm", &k("q")],
        ]
        .iter()
        .map(|v| v.iter().map(|a| a.to_string()).collect())
        .collect();
        let removals: Vec<Vec<String>> = if last {
            vec![]
        } else {
            ["s", "p"]
                .iter()
                .map(|w| vec!["rm".to_string(), k(w)])
                .collect()
        };
        let mut failed = false;
        for step in steps.iter().chain(&removals) {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            if !s.snap(c, &args) {
                failed = true;
                break;
            }
        }
        if failed {
            s.wait_until_up();
            clear_round(s, c, r);
        } else if last {
            kept.push(Listed {
                key: k("p"),
                parent: String::new(),
                kind: "committed".into(),
            });
            kept.push(Listed {
                key: k("s"),
                parent: SHARED.into(),
                kind: "active".into(),
            });
        }
    }
    kept
}

/// Removes every snapshot of client `c`'s round `r` that containerd has a record of,
/// children first. Each key is removed rather than each listed one: `ctr snapshots ls`
/// leaves out a snapshot containerd keeps but Strata does not have, which is what a kill
/// between a Commit's transaction and its answer leaves (see docs/containerd.md); its
/// removal is containerd's alone. "Does not exist" is containerd's own answer for a key
/// the round never made.
fn clear_round(s: &Shared, c: usize, r: usize) {
    for w in ["t", "q", "b", "s", "a", "p"] {
        let k = key(c, r, w);
        let start = SystemTime::now();
        let (removed, _, err) = ctr_at(
            &s.address,
            &["snapshots", "--snapshotter", "strata", "rm", &k],
        );
        if !removed && !err.contains("does not exist") {
            s.ran.lock().unwrap().push(Ran {
                client: c,
                args: vec!["rm".into(), k],
                start,
                end: SystemTime::now(),
                error: Some(err.trim().to_string()),
            });
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Listed {
    key: String,
    parent: String,
    kind: String,
}

/// `ctr snapshots ls` of the strata snapshotter: containerd's own records.
fn containerd_snapshots(address: &Path) -> Vec<Listed> {
    let (success, out, err) = ctr_at(address, &["snapshots", "--snapshotter", "strata", "ls"]);
    assert!(success, "ctr snapshots ls: {err}");
    out.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [key, kind] => Listed {
                    key: key.to_string(),
                    parent: String::new(),
                    kind: kind.to_lowercase(),
                },
                [key, parent, kind] => Listed {
                    key: key.to_string(),
                    parent: parent.to_string(),
                    kind: kind.to_lowercase(),
                },
                _ => panic!("unexpected `ctr snapshots ls` line {l:?}"),
            }
        })
        .collect()
}

/// The snapshots of the clients that containerd has a record of but its snapshotter does
/// not (`ctr snapshots ls` leaves them out): containerd's answer to `info` names the
/// backend's key.
fn lost_in_backend(address: &Path) -> Vec<String> {
    let mut lost = Vec::new();
    for c in 0..CLIENTS {
        for r in 0..ROUNDS {
            for w in ["a", "p", "b", "s", "q", "t"] {
                let k = key(c, r, w);
                let (_, _, err) = ctr_at(
                    address,
                    &["snapshots", "--snapshotter", "strata", "info", &k],
                );
                if err.contains(&format!("{NAMESPACE}/")) {
                    lost.push(format!("{k}: {}", err.trim()));
                }
            }
        }
    }
    lost
}

/// Has containerd collect garbage now and waits for it (its snapshotters' removals and
/// `Cleanup` included): the deletion of a lease, `--sync`.
fn collect_garbage(d: &Daemons) {
    d.ok(&["leases", "create", "--id", "collect-now"]);
    d.ok(&["leases", "rm", "--sync", "collect-now"]);
}

/// containerd's key of a Strata record: Strata's keys are containerd's backend keys,
/// `<namespace>/<number>/<key>`.
fn containerd_key(backend: &str) -> String {
    let mut parts = backend.splitn(3, '/');
    let (ns, _, key) = (parts.next(), parts.next(), parts.next());
    assert_eq!(ns, Some(NAMESPACE), "backend key {backend:?}");
    key.unwrap_or_else(|| panic!("backend key {backend:?}"))
        .to_string()
}

/// What Strata's store holds, checked for agreement with itself: every record has its
/// complete `sn` layer, every layer is a record's, and exactly the active snapshots and
/// views are mounted. Returns the records as containerd would list them.
fn strata_snapshots(d: &Daemons) -> Result<Vec<Listed>, String> {
    let store = LayerStore::open(&d.path("strata")).expect("opening Strata's store");
    let records = store.snapshots().expect("listing Strata's snapshots");
    let layers = store.list().expect("listing Strata's layers");
    let mut problems = Vec::new();
    let wanted: BTreeSet<String> = records.iter().map(|r| format!("sn{}", r.id)).collect();
    for l in &layers {
        if !wanted.contains(&l.id) {
            problems.push(format!("layer {} has no snapshot record", l.id));
        }
        if l.incomplete {
            problems.push(format!("layer {} is incomplete", l.id));
        }
    }
    for r in &records {
        let id = format!("sn{}", r.id);
        match layers.iter().find(|l| l.id == id) {
            None => problems.push(format!("snapshot {} has no layer {id}", r.key)),
            Some(l) => {
                let mounted = l.mount_count > 0;
                if mounted != (r.kind != SnapshotKind::Committed) {
                    problems.push(format!(
                        "snapshot {} ({}) has {} mounts",
                        r.key,
                        r.kind.word(),
                        l.mount_count
                    ));
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    let mut listed: Vec<Listed> = records
        .iter()
        .map(|r| Listed {
            key: containerd_key(&r.key),
            parent: r.parent.as_deref().map(containerd_key).unwrap_or_default(),
            kind: r.kind.word().to_string(),
        })
        .collect();
    listed.sort();
    Ok(listed)
}

/// `time="2026-01-02T03:04:05.123456789Z"` of a containerd log line (containerd runs with
/// `TZ=UTC`).
fn log_time(line: &str) -> Option<SystemTime> {
    let t = line.strip_prefix("time=\"")?.split('"').next()?;
    let t = t.strip_suffix('Z')?;
    let (date, time) = t.split_once('T')?;
    let mut d = date.split('-').map(|v| v.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut h = hms.split(':').map(|v| v.parse::<i64>());
    let (hh, mm, ss) = (h.next()?.ok()?, h.next()?.ok()?, h.next()?.ok()?);
    let nanos: u32 = format!("{frac:0<9}")[..9].parse().ok()?;
    // Days from 1970-01-01 of a proleptic Gregorian date.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(UNIX_EPOCH + Duration::new(u64::try_from(secs).ok()?, nanos))
}

/// On overlay, the default driver: making a layer is a few `mkdir`s.
#[test]
fn concurrent_clients_gc_and_a_kill_leave_strata_equal_to_containerd() {
    let test = "concurrent_clients_gc_and_a_kill_leave_strata_equal_to_containerd";
    if tools_or_skip(test) {
        load(None);
    }
}

/// On vfs, where a snapshot on the shared parent is a copy of its [`SHARED_FILES`] files:
/// each such Prepare has its record for the time of the copy before its layer is complete.
#[test]
fn concurrent_clients_gc_and_a_kill_on_vfs_copies() {
    let test = "concurrent_clients_gc_and_a_kill_on_vfs_copies";
    if tools_or_skip(test) {
        load(Some("vfs"));
    }
}

/// Files (of [`SHARED_FILE_SIZE`] bytes) in the shared parent.
const SHARED_FILES: usize = 200;
const SHARED_FILE_SIZE: usize = 8 << 10;

/// Writes [`SHARED_FILES`] files into active snapshot `key` through Strata's own mount of it.
fn fill(d: &Daemons, key: &str) {
    let store = LayerStore::open(&d.path("strata")).expect("opening Strata's store");
    let id = store
        .snapshots()
        .unwrap()
        .into_iter()
        .find(|r| containerd_key(&r.key) == key)
        .unwrap_or_else(|| panic!("Strata has no snapshot {key}"))
        .id;
    let dir = d
        .path("strata")
        .join("mounts")
        .join(format!("sn{id}"))
        .join("data");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..SHARED_FILES {
        std::fs::write(dir.join(format!("f{i}")), vec![i as u8; SHARED_FILE_SIZE]).unwrap();
    }
}

/// The load and its checks, Strata on `driver` (`None`: the default).
fn load(driver: Option<&str>) {
    let mut daemons = Daemons::start_with(GC_AFTER_EVERY_REMOVAL, driver);
    daemons.ok(&[
        "snapshots",
        "--snapshotter",
        "strata",
        "prepare",
        "shared-a",
    ]);
    fill(&daemons, "shared-a");
    daemons.ok(&[
        "snapshots",
        "--snapshotter",
        "strata",
        "commit",
        SHARED,
        "shared-a",
    ]);
    let load_start = SystemTime::now();
    let s = Shared {
        address: daemons.path("containerd.sock"),
        outage: Mutex::new(Outage::default()),
        up: Condvar::new(),
        done_ops: AtomicUsize::new(0),
        ran: Mutex::new(Vec::new()),
    };
    let mut expected = vec![Listed {
        key: SHARED.into(),
        parent: String::new(),
        kind: "committed".into(),
    }];
    std::thread::scope(|scope| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let s = &s;
                scope.spawn(move || client(s, c))
            })
            .collect();
        // SIGKILL in the middle of the load, then a restart.
        let total = CLIENTS * ROUNDS * OPS_PER_ROUND;
        while s.done_ops.load(Ordering::Relaxed) < total / 2 {
            std::thread::sleep(Duration::from_millis(10));
        }
        s.outage.lock().unwrap().window = Some((SystemTime::now(), None));
        daemons.kill_strata();
        daemons.start_strata();
        daemons.wait_until_containerd_reconnects();
        {
            let mut o = s.outage.lock().unwrap();
            o.window = o.window.map(|(down, _)| (down, Some(SystemTime::now())));
        }
        s.up.notify_all();
        for c in clients {
            expected.extend(c.join().expect("a client panicked"));
        }
    });
    expected.sort();
    let load_end = SystemTime::now();

    // Every failure happened while the daemon was down.
    let outage = s.outage.lock().unwrap();
    let ran = s.ran.lock().unwrap();
    let failures: Vec<&Ran> = ran.iter().filter(|r| r.error.is_some()).collect();
    let unexpected: Vec<String> = failures
        .iter()
        .filter(|r| !outage.overlaps(r.start, r.end))
        .map(|r| {
            format!(
                "client {} `ctr snapshots {}`: {}",
                r.client,
                r.args.join(" "),
                r.error.as_deref().unwrap_or_default()
            )
        })
        .collect();

    // Strata's records equal containerd's once its last collection ran: a snapshot Strata
    // made but could not report before the kill is containerd's to collect. (containerd's
    // scheduler skips a removal made while a collection runs until the next trigger: a
    // synchronous collection is asked for before each look.)
    let settle = Instant::now();
    let (theirs, ours) = loop {
        collect_garbage(&daemons);
        let mut theirs = containerd_snapshots(&s.address);
        theirs.sort();
        let ours = strata_snapshots(&daemons);
        if ours.as_ref() == Ok(&theirs) || settle.elapsed() > Duration::from_secs(60) {
            break (theirs, ours);
        }
        std::thread::sleep(Duration::from_millis(200));
    };

    // containerd's collections (its Remove and Cleanup calls) failed only while it was down.
    let log = std::fs::read_to_string(daemons.path("containerd.log")).unwrap_or_default();
    let gc_problems: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("level=error") || l.contains("level=warning"))
        .filter(|l| {
            l.contains("snapshot") || l.contains("garbage collection") || l.contains("strata")
        })
        .filter(|l| {
            let t = log_time(l).unwrap_or(load_end);
            t >= load_start && !outage.overlaps(t, t)
        })
        .collect();
    let since = |t: SystemTime| t.duration_since(load_start).unwrap_or_default();
    let (down, up) = outage.window.expect("the daemon was killed");
    eprintln!(
        "{} commands in {:?}; the daemon was down from {:?} to {:?}; {} commands failed \
         then, {} otherwise; {} collection problems otherwise",
        ran.len(),
        since(load_end),
        since(down),
        up.map(since),
        failures.len() - unexpected.len(),
        unexpected.len(),
        gc_problems.len()
    );
    assert!(
        unexpected.is_empty() && gc_problems.is_empty(),
        "failures while the daemon was up:\n{}\ncontainerd's collection problems:\n{}",
        unexpected.join("\n"),
        gc_problems.join("\n")
    );
    let ours = ours.unwrap_or_else(|p| panic!("Strata's store disagrees with itself: {p}"));
    let only_theirs: Vec<&Listed> = theirs.iter().filter(|l| !ours.contains(l)).collect();
    let only_ours: Vec<&Listed> = ours.iter().filter(|l| !theirs.contains(l)).collect();
    assert!(
        only_theirs.is_empty() && only_ours.is_empty(),
        "containerd lists snapshots Strata lost: {only_theirs:?}\n\
         Strata keeps snapshots containerd does not know: {only_ours:?}"
    );
    // What the clients kept is there, on both sides (containerd's list leaves out a
    // snapshot its snapshotter lost, so it is compared with what the clients did).
    assert_eq!(ours, expected, "the snapshots the clients kept");
    drop((outage, ran));

    // Everything can be removed, children first, and the collection removes it from Strata.
    let settle = Instant::now();
    loop {
        let left = containerd_snapshots(&s.address);
        if left.is_empty() {
            break;
        }
        assert!(
            settle.elapsed() < Duration::from_secs(120),
            "containerd keeps {left:?}"
        );
        let parents: BTreeSet<&str> = left.iter().map(|l| l.parent.as_str()).collect();
        let leaves: Vec<&Listed> = left
            .iter()
            .filter(|l| !parents.contains(l.key.as_str()))
            .collect();
        for l in &leaves {
            let (removed, _, err) =
                daemons.ctr(&["snapshots", "--snapshotter", "strata", "rm", &l.key]);
            assert!(
                removed,
                "removing {}: {err}\nsnapshots containerd keeps but cannot stat: {:?}",
                l.key,
                lost_in_backend(&s.address)
            );
        }
        if leaves.is_empty() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    daemons.wait_until_collected();
}

#[test]
fn containerd_log_times_are_read() {
    let line = r#"time="2026-11-28T11:11:38.473396341Z" level=error msg="x""#;
    let t = log_time(line).unwrap();
    let d = t.duration_since(UNIX_EPOCH).unwrap();
    assert_eq!(d.as_secs(), 1_795_864_298);
    assert_eq!(d.subsec_nanos(), 473_396_341);
}

//! `strata serve` under load: many concurrent containerd requests end in success or a clean
//! `RESOURCE_EXHAUSTED`, never a hang; the daemon answers afterwards and SIGTERM stops it within
//! its stated shutdown time, under load too, leaving a store the next start serves; a `List`
//! request with filters over the request budget is refused without the memory it would take.
//!
//! The client deadlines and the wait for the daemon's exit are liveness bounds (generous, far
//! above what the calls take), not speed claims: speed is `cargo xtask bench serve-load`.

use std::time::Duration;

use strata_containerd::SHUTDOWN_GRACE;
use strata_tests::serveload::{self, Outcome, Serve, Work};
use strata_tests::{root_or_skip, strata_bin};
use tonic::Code;

/// A client deadline no call may reach: its expiry is a hang.
const CLIENT_DEADLINE: Duration = Duration::from_secs(90);

/// How long the test waits for the daemon to exit after SIGTERM before calling it hung: the
/// stated bound plus room for a slow, busy machine.
fn exit_limit() -> Duration {
    SHUTDOWN_GRACE + Duration::from_secs(20)
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("strata-serve-load-")
        .tempdir_in("/var/tmp")
        .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Unmounts what the daemon left mounted beneath the scratch directory.
struct Unmount<'a>(&'a std::path::Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        strata_sys::mount::detach_all_beneath(self.0);
    }
}

#[test]
fn seven_hundred_concurrent_prepares_end_and_sigterm_stops_the_daemon() {
    if !root_or_skip(
        "seven_hundred_concurrent_prepares_end_and_sigterm_stops_the_daemon",
        "snapshots are mounted",
    ) {
        return;
    }
    let dir = scratch();
    let _unmount = Unmount(dir.path());
    let mut serve = Serve::start(&strata_bin(), dir.path());
    let rt = runtime();
    let report = rt.block_on(serveload::load(
        &serve.socket,
        "p",
        700,
        10,
        Work::Prepare,
        CLIENT_DEADLINE,
    ));
    eprintln!("{:?}", report.outcomes);
    assert_eq!(
        report.unexpected(),
        Vec::<String>::new(),
        "every Prepare succeeds or is refused with RESOURCE_EXHAUSTED; log: {}",
        serve.log()
    );
    let ok = report.count(&Outcome::Ok);
    assert!(ok > 0, "some Prepare succeeds");
    // The daemon still answers: a Stat of a prepared snapshot (whichever succeeded).
    let info = rt.block_on(async {
        let mut c = serve.connect().await;
        let mut found = None;
        for i in 0..700 {
            match serveload::stat(&mut c, &format!("p-{i}"), CLIENT_DEADLINE).await {
                Ok(info) => {
                    found = Some(info);
                    break;
                }
                Err(e) => assert!(e.starts_with("NotFound"), "Stat p-{i}: {e}"),
            }
        }
        found
    });
    assert!(info.is_some(), "a prepared snapshot is there");
    assert!(
        serve.terminate(exit_limit()).is_some(),
        "strata serve exits after SIGTERM (stated: within {SHUTDOWN_GRACE:?}); log: {}",
        serve.log()
    );
}

#[test]
fn sigterm_under_lifecycle_load_stops_the_daemon_and_the_store_serves_again() {
    if !root_or_skip(
        "sigterm_under_lifecycle_load_stops_the_daemon_and_the_store_serves_again",
        "snapshots are mounted",
    ) {
        return;
    }
    let dir = scratch();
    let _unmount = Unmount(dir.path());
    let mut serve = Serve::start(&strata_bin(), dir.path());
    let rt = runtime();
    // A bounded load that finishes: 200 clients, each Prepare, Commit, Remove.
    let report = rt.block_on(serveload::load(
        &serve.socket,
        "a",
        200,
        4,
        Work::Lifecycle,
        CLIENT_DEADLINE,
    ));
    eprintln!("{:?}", report.outcomes);
    assert_eq!(
        report.unexpected(),
        Vec::<String>::new(),
        "log: {}",
        serve.log()
    );
    assert!(report.lifecycles > 0, "some lifecycle completes");
    // More clients than tokio's 512 blocking threads, and SIGTERM while they run.
    let socket = serve.socket.clone();
    let load = rt.spawn(async move {
        serveload::load(&socket, "b", 600, 6, Work::Lifecycle, CLIENT_DEADLINE).await
    });
    std::thread::sleep(Duration::from_millis(300));
    let took = serve.terminate(exit_limit());
    assert!(
        took.is_some(),
        "strata serve exits after SIGTERM under load (stated: within {SHUTDOWN_GRACE:?}); log: {}",
        serve.log()
    );
    // The clients' calls all ended (with whatever the stop gave them): none waits forever.
    let report = rt.block_on(load).unwrap();
    assert_eq!(report.count(&Outcome::Hung), 0, "{:?}", report.outcomes);
    // The next start reconciles what the interrupted requests left and serves every
    // snapshot it lists.
    let serve = Serve::start(&strata_bin(), dir.path());
    rt.block_on(async {
        let mut c = serve.connect().await;
        let all = serveload::list(&mut c, vec![], CLIENT_DEADLINE)
            .await
            .unwrap()
            .unwrap();
        for info in &all {
            serveload::stat(&mut c, &info.name, CLIENT_DEADLINE)
                .await
                .unwrap();
        }
        let m = serveload::prepare(&mut c, "after-restart").await.unwrap();
        assert!(!m.is_empty());
    });
}

/// The daemon's peak resident memory (`VmHWM`), in bytes.
fn peak_rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}

/// The daemon's current resident memory (`VmRSS`), in bytes.
fn rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}

/// Memory a `List` request's filters may add to the daemon, far above the request budget's
/// worst case and far below what compiling the heavy request unbudgeted takes (1.2 GB).
const LIST_MEMORY_ALLOWANCE: u64 = 256 << 20;

#[test]
fn list_filters_over_the_request_budget_are_refused_and_the_daemon_answers() {
    if !root_or_skip(
        "list_filters_over_the_request_budget_are_refused_and_the_daemon_answers",
        "snapshots are mounted",
    ) {
        return;
    }
    let dir = scratch();
    let _unmount = Unmount(dir.path());
    let serve = Serve::start(&strata_bin(), dir.path());
    let rt = runtime();
    rt.block_on(async {
        let mut c = serve.connect().await;
        for key in ["alpha-1", "alpha-2", "beta-1"] {
            serveload::prepare(&mut c, key).await.unwrap();
        }
        // Peak memory from here on (writing 5 to clear_refs resets VmHWM).
        std::fs::write(format!("/proc/{}/clear_refs", serve.pid()), "5").unwrap();
        let before = rss(serve.pid());
        // 16 filters of 64 `name~=\w{20}` selectors each: 13 KB of request.
        let heavy = vec![vec![r"name~=\w{20}"; 64].join(","); 16];
        let answer = serveload::list(&mut c, heavy, CLIENT_DEADLINE).await;
        match &answer {
            Ok(Err(s)) => {
                assert!(
                    matches!(s.code(), Code::InvalidArgument | Code::ResourceExhausted),
                    "{s:?}"
                );
                assert!(s.message().contains("limit"), "names the limit: {s:?}");
            }
            Ok(Ok(infos)) => assert!(infos.is_empty(), "no name has 20 word characters"),
            Err(e) => panic!("List: {e}"),
        }
        let grew = peak_rss(serve.pid()).saturating_sub(before);
        assert!(
            grew < LIST_MEMORY_ALLOWANCE,
            "the List request took {grew} bytes more than the {before} resident before it"
        );
        // The daemon answers, and filters within the budget (regular expressions included)
        // work.
        let mut names: Vec<String> = serveload::list(
            &mut c,
            vec![r"name~=^alpha-\d$".into(), "name==beta-1".into()],
            CLIENT_DEADLINE,
        )
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
        names.sort();
        assert_eq!(names, ["alpha-1", "alpha-2", "beta-1"]);
        serveload::stat(&mut c, "beta-1", CLIENT_DEADLINE)
            .await
            .unwrap();
    });
}

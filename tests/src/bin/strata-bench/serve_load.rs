//! `serve-load`: `strata serve --containerd-socket` (release build, overlay driver) under
//! 1,000 concurrent clients on its local socket, against one client working sequentially in
//! the same run (needs root: snapshots are mounted).
//!
//! 1. A fresh store in `/var/tmp`; the daemon started; 20 lifecycles (Prepare, Commit,
//!    Remove) untimed as a warm-up.
//! 2. Baseline: one client, 200 lifecycles one after another: lifecycles per second and the
//!    latency of its calls.
//! 3. Load: 1,000 clients at once over 10 connections, each one lifecycle (a client stops at
//!    its first call that does not succeed): wall time, completed lifecycles per second, calls
//!    that succeeded, were refused `RESOURCE_EXHAUSTED` (the daemon's backpressure) or ended
//!    otherwise, and the latency (p50, p99, max) of the successful calls. Every call has a
//!    client deadline of 120 s; one reaching it is a hang and fails the bench.
//! 4. SIGTERM 0.5 s into the same load again: the time to the daemon's exit (stated bound:
//!    `SHUTDOWN_GRACE`), how the clients' calls ended; then the daemon restarted on the same
//!    store: the time until its socket is up, and a `Stat` of every snapshot it lists.
//!
//! Everything is bounded (the clients' deadlines, the wait for the exit) and the bench stops
//! by itself; the daemon is killed and what it mounted detached on the way out.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use strata_containerd::SHUTDOWN_GRACE;
use strata_containerd::workers::{MAX_QUEUED_REQUESTS, STORE_HANDLES};
use strata_tests::serveload::{self, Outcome, Report, Serve, Work, quantile};

const CLIENTS: usize = 1000;
const CONNECTIONS: usize = 10;
const SEQUENTIAL: usize = 200;
const WARM_UP: usize = 20;
const CLIENT_DEADLINE: Duration = Duration::from_secs(120);
const SIGTERM_AFTER: Duration = Duration::from_millis(500);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn calls(r: &Report) -> String {
    let mut by: std::collections::BTreeMap<String, usize> = Default::default();
    for ((_, o), n) in &r.outcomes {
        let k = match o {
            Outcome::Ok => "ok".to_string(),
            Outcome::Exhausted => "RESOURCE_EXHAUSTED".to_string(),
            Outcome::Hung => "hung".to_string(),
            Outcome::Failed(s) => s.split(':').next().unwrap_or("").to_string(),
        };
        *by.entry(k).or_default() += n;
    }
    by.iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Unmounts what the daemon mounted beneath the scratch directory, then removes it.
struct Scratch(tempfile::TempDir);

impl Drop for Scratch {
    fn drop(&mut self) {
        strata_sys::mount::detach_all_beneath(self.0.path());
    }
}

pub fn run() -> Result<()> {
    // The `strata` of this binary's own profile (release under `cargo xtask bench`).
    let bin = std::env::current_exe()?
        .parent()
        .context("the bench's directory")?
        .join("strata");
    if !bin.is_file() {
        bail!("{} is missing (cargo xtask bench builds it)", bin.display());
    }
    let scratch = Scratch(
        tempfile::Builder::new()
            .prefix("strata-bench-serve-")
            .tempdir_in("/var/tmp")
            .context("making a scratch directory in /var/tmp")?,
    );
    let dir = scratch.0.path();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut serve = Serve::start(&bin, dir);
    println!(
        "serve-load: {} (overlay driver) serve on a unix socket, store in /var/tmp; \
         {STORE_HANDLES} workers, queue of {MAX_QUEUED_REQUESTS}; a lifecycle = Prepare + Commit + Remove",
        bin.display()
    );

    // Warm-up and the sequential baseline: one client, one lifecycle after another.
    let sequential = |prefix: &str, n: usize| -> Result<Report> {
        rt.block_on(async {
            let mut c = serve.connect().await;
            let mut all = Report::default();
            let start = Instant::now();
            for i in 0..n {
                let r = serveload::client(
                    &mut c,
                    &format!("{prefix}-{i}"),
                    Work::Lifecycle,
                    CLIENT_DEADLINE,
                )
                .await;
                if r.lifecycles != 1 {
                    bail!("a sequential lifecycle failed: {:?}", r.outcomes);
                }
                all.merge(r);
            }
            all.wall = start.elapsed();
            Ok(all)
        })
    };
    sequential("warm", WARM_UP)?;
    let seq = sequential("seq", SEQUENTIAL)?;
    let seq_rate = seq.lifecycles as f64 / seq.wall.as_secs_f64();
    let seq_lat = seq.all_latencies();
    println!(
        "serve-load: baseline, 1 client, {SEQUENTIAL} lifecycles in a row: {seq_rate:.1} lifecycles/s; \
         call latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(quantile(&seq_lat, 0.5)),
        ms(quantile(&seq_lat, 0.99)),
        ms(quantile(&seq_lat, 1.0)),
    );

    // The load.
    let load = rt.block_on(serveload::load(
        &serve.socket,
        "load",
        CLIENTS,
        CONNECTIONS,
        Work::Lifecycle,
        CLIENT_DEADLINE,
    ));
    let rate = load.lifecycles as f64 / load.wall.as_secs_f64();
    let lat = load.all_latencies();
    println!(
        "serve-load: {CLIENTS} clients at once ({CONNECTIONS} connections), one lifecycle each: \
         all answered in {:.2} s; {} lifecycles completed, {rate:.1}/s ({:.2}x the baseline's rate); \
         calls: {}",
        load.wall.as_secs_f64(),
        load.lifecycles,
        rate / seq_rate,
        calls(&load),
    );
    println!(
        "serve-load:   successful calls' latency p50 {:.2} ms ({:.1}x baseline), p99 {:.2} ms ({:.1}x), max {:.2} ms ({:.1}x)",
        ms(quantile(&lat, 0.5)),
        ms(quantile(&lat, 0.5)) / ms(quantile(&seq_lat, 0.5)),
        ms(quantile(&lat, 0.99)),
        ms(quantile(&lat, 0.99)) / ms(quantile(&seq_lat, 0.99)),
        ms(quantile(&lat, 1.0)),
        ms(quantile(&lat, 1.0)) / ms(quantile(&seq_lat, 1.0)),
    );
    if load.count(&Outcome::Hung) > 0 {
        bail!("calls hung (no answer within {CLIENT_DEADLINE:?})");
    }

    // SIGTERM under the same load.
    let socket = serve.socket.clone();
    let load = rt.spawn(async move {
        serveload::load(
            &socket,
            "term",
            CLIENTS,
            CONNECTIONS,
            Work::Lifecycle,
            CLIENT_DEADLINE,
        )
        .await
    });
    std::thread::sleep(SIGTERM_AFTER);
    let limit = SHUTDOWN_GRACE + Duration::from_secs(30);
    let exited = serve.terminate(limit);
    let during = rt.block_on(load)?;
    match exited {
        Some(t) => println!(
            "serve-load: SIGTERM {:.1} s into a load of {CLIENTS} clients: the daemon exited after {:.3} s \
             (stated bound {} s); the clients' calls: {}",
            SIGTERM_AFTER.as_secs_f64(),
            t.as_secs_f64(),
            SHUTDOWN_GRACE.as_secs(),
            calls(&during),
        ),
        None => bail!("the daemon did not exit within {limit:?} of SIGTERM"),
    }
    if during.count(&Outcome::Hung) > 0 {
        bail!("calls hung after SIGTERM");
    }
    drop(serve);
    let start = Instant::now();
    let serve = Serve::start(&bin, dir);
    let ready = start.elapsed();
    let (listed, statted) = rt.block_on(async {
        let mut c = serve.connect().await;
        let all = serveload::list(&mut c, vec![], CLIENT_DEADLINE)
            .await
            .map_err(anyhow::Error::msg)??;
        let mut ok = 0;
        for info in &all {
            if serveload::stat(&mut c, &info.name, CLIENT_DEADLINE)
                .await
                .is_ok()
            {
                ok += 1;
            }
        }
        anyhow::Ok((all.len(), ok))
    })?;
    println!(
        "serve-load: restarted on the same store: socket up after {:.2} s (start-time reconcile included); \
         {listed} snapshots listed, {statted} of them answer Stat",
        ready.as_secs_f64()
    );
    if listed != statted {
        bail!("listed snapshots that do not answer Stat");
    }
    Ok(())
}

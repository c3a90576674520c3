//! Benchmarks of the driver sandbox, run by `cargo xtask bench` (release build). Each figure
//! is printed with a baseline measured in the same run and their ratio.
//!
//! - `host-call`: the cost of one host call made by a driver (`files.stat`), against the same
//!   `lstat` made natively by the host.
//! - `lifecycle`: create + mount + unmount + remove of a vfs layer through the layer service,
//!   against `mkdir` + bind mount + unmount + `rmdir` made natively (needs root).

use std::time::{Duration, Instant};

use strata_host::layers::{CreateLayer, Strata};
use strata_tests::{TempStore, hostile_wasm};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time<F: FnMut()>(runs: usize, mut f: F) -> Duration {
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

fn create(s: &Strata, id: &str, opts: Vec<(String, String)>) {
    s.create_layer(CreateLayer {
        id: Some(id.into()),
        options: opts,
        ..Default::default()
    })
    .expect("creating a layer");
    s.remove(id).expect("removing a layer");
}

fn host_call() {
    const CALLS: u64 = 200_000;
    let t = TempStore::new();
    let s = t
        .open_with(&hostile_wasm(), t.config())
        .expect("opening the test driver");
    let n = CALLS.to_string();
    let mut i = 0;
    let mut next = || {
        i += 1;
        format!("l{i}")
    };
    let without = time(5, || create(&s, &next(), vec![]));
    let with = time(5, || {
        create(&s, &next(), vec![("host-calls".into(), n.clone())])
    });
    let per_call = with.saturating_sub(without).as_secs_f64() / CALLS as f64;
    let home = strata_host::sys::Dir::open_ambient(&t.root().join("strata_test_driver_hostile"))
        .expect("opening the driver home");
    let native = time(5, || {
        for _ in 0..CALLS {
            std::hint::black_box(home.lstat("dir").expect("lstat"));
        }
    })
    .as_secs_f64()
        / CALLS as f64;
    println!(
        "host-call: one driver→host call (files.stat) {:.0} ns; native lstat beneath the home {:.0} ns; ratio {:.2}x",
        per_call * 1e9,
        native * 1e9,
        per_call / native
    );
}

fn lifecycle() {
    if !rustix::process::geteuid().is_root() {
        println!("lifecycle: skipped (mounting needs root)");
        return;
    }
    let t = TempStore::new();
    let s = t.open_vfs();
    let mut i = 0;
    let strata = time(30, || {
        i += 1;
        let id = format!("l{i}");
        s.create_layer(CreateLayer {
            id: Some(id.clone()),
            read_write: true,
            ..Default::default()
        })
        .expect("create");
        s.mount(&id, &[]).expect("mount");
        s.unmount(&id, false).expect("unmount");
        s.remove(&id).expect("remove");
    });
    let base = t.dir.path().join("native");
    std::fs::create_dir(&base).unwrap();
    let native = time(30, || {
        let src = base.join("src");
        let dst = base.join("dst");
        std::fs::create_dir(&src).unwrap();
        std::fs::create_dir(&dst).unwrap();
        rustix::mount::mount_bind(&src, &dst).expect("bind");
        rustix::mount::unmount(&dst, rustix::mount::UnmountFlags::empty()).expect("unmount");
        std::fs::remove_dir(&dst).unwrap();
        std::fs::remove_dir(&src).unwrap();
    });
    println!(
        "lifecycle: vfs create+mount+unmount+remove {:.2} ms; native mkdir+bind+umount+rmdir {:.3} ms; ratio {:.1}x",
        strata.as_secs_f64() * 1e3,
        native.as_secs_f64() * 1e3,
        strata.as_secs_f64() / native.as_secs_f64()
    );
}

fn main() {
    let which: Vec<String> = std::env::args().skip(1).collect();
    let all = which.is_empty();
    if all || which.iter().any(|w| w == "host-call") {
        host_call();
    }
    if all || which.iter().any(|w| w == "lifecycle") {
        lifecycle();
    }
}

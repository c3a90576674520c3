//! Benchmarks of the driver sandbox, run by `cargo xtask bench` (release build). Each figure
//! is printed with a baseline measured in the same run and their ratio.
//!
//! - `host-call`: the cost of one host call made by a driver (`files.stat`), against the same
//!   `lstat` made natively by the host.
//! - `lifecycle`: create + mount + unmount + remove of a vfs layer through the layer service,
//!   against `mkdir` + bind mount + unmount + `rmdir` made natively (needs root).
//! - `overlay`: create + mount + unmount + remove of a read-write layer on top of a 10-deep
//!   and a 499-deep overlay chain (a 500-layer stack, the kernel's limit), against the same overlay mounted by `mount -t overlay`
//!   and by the same syscalls made natively in-process (needs root).
//! - `btrfs`: creating a child of a layer holding 10,000 files and 200 MiB, on one loop
//!   btrfs: the btrfs driver (a snapshot) next to `btrfs subvolume snapshot`, vfs with
//!   reflinks next to `cp -a --reflink=always`, and vfs on ext4 (byte copies) next to
//!   `cp -a` on ext4 (needs root and btrfs-progs).
//! - `zfs`: listing 200 zfs layers (a chain, as an image's layers are) with their metadata
//!   (origin, used, referenced, quota): `strata layer ls --json` and the layer service's
//!   batched listing (one `zfs get -r` through `layers-metadata`) next to asking the driver
//!   layer by layer (one `zfs get` each), and the same two queries made with the `zfs`
//!   command directly (needs root and zfs-fuse; starts the daemon when none runs).
//! - `import`: `strata image import` of a debootstrapped Debian image (gzip and zstd) with the
//!   overlay and vfs drivers, next to `tar -xf` of its layers, skopeo into containers-storage
//!   and `ctr images import` into containerd, each on a fresh loop-mounted ext4 per run (needs
//!   root; see `import.rs`).
//! - `apply-memory`: the peak memory of `strata layer apply` on small hostile layers (a
//!   directory entry repeated 50,000 and 200,000 times, gzip and zstd --long; 50,000 distinct
//!   directories) and a legitimate big one, against applying a one-entry layer (needs root;
//!   see `apply_memory.rs`).
//! - `containerd`: `ctr images import` and `ctr run --rm … /bin/true` of the same image with
//!   containerd's proxy snapshotter `strata serve --containerd-socket`, against containerd's
//!   built-in overlayfs snapshotter, each on a fresh loop-mounted ext4 with fresh daemons per
//!   run (needs root; see `containerd.rs`).
//! - `crash`: `kill -9` of the CLI at random points of import, apply, commit and removal, on
//!   vfs and overlay, ≥ 100 trials, each checked (needs root; see `crash.rs`).
//! - `serve-load`: `strata serve --containerd-socket` under 1,000 concurrent clients (Prepare,
//!   Commit, Remove; overlay driver) against one sequential client, and SIGTERM under that
//!   load (needs root; see `serve_load.rs`).

mod apply_memory;
mod containerd;
mod crash;
mod import;
mod serve_load;

use std::time::{Duration, Instant};

use strata_core::layers::{CreateLayer, Strata};
use strata_tests::targen::{Entry, tar_of};
use strata_tests::{
    LoopBtrfs, TempStore, ZfsPool, cache_dir, driver_wasm, hostile_wasm, target_dir,
};

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

/// What `lifecycle` and `overlay` time: a read-write layer `id` on `parent` created,
/// mounted, unmounted and removed.
fn rw_layer_lifecycle(s: &Strata, id: &str, parent: Option<&str>) {
    s.create_layer(CreateLayer {
        id: Some(id.into()),
        parent: parent.map(str::to_string),
        read_write: true,
        ..Default::default()
    })
    .expect("create");
    s.mount(id, &[]).expect("mount");
    s.unmount(id, false).expect("unmount");
    s.remove(id).expect("remove");
}

fn host_call() {
    const CALLS: u64 = 200_000;
    let t = TempStore::new();
    // The hostile test driver imports every interface, btrfs and zfs included.
    let mut config = t.config();
    config.sandbox.grants.push("btrfs".to_string());
    config.sandbox.grants.push("zfs".to_string());
    let s = t
        .open_with(&hostile_wasm(), config)
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
    let home = strata_sys::Dir::open_ambient(&t.home("strata_test_driver_hostile"))
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
        rw_layer_lifecycle(&s, &format!("l{i}"), None);
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

/// One overlay mount of `lowers` (topmost first) with a fresh upper, made without Strata:
/// by `mount -t overlay` when `with_command`, else by the same syscalls in-process.
fn native_overlay(base: &std::path::Path, lowers: &[std::path::PathBuf], with_command: bool) {
    use strata_sys::Dir;
    let (u, w, m) = (base.join("u"), base.join("w"), base.join("m"));
    for d in [&u, &w, &m] {
        std::fs::create_dir(d).unwrap();
    }
    if with_command {
        let lowerdir: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
        let opts = format!(
            "lowerdir={},upperdir={},workdir={},index=off,redirect_dir=off,metacopy=off",
            lowerdir.join(":"),
            u.display(),
            w.display()
        );
        let st = std::process::Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&m)
            .status()
            .expect("running mount");
        assert!(st.success(), "mount -t overlay failed");
    } else {
        let dirs: Vec<Dir> = lowers
            .iter()
            .map(|l| Dir::open_ambient(l).unwrap())
            .collect();
        let (ud, wd, md) = (
            Dir::open_ambient(&u).unwrap(),
            Dir::open_ambient(&w).unwrap(),
            Dir::open_ambient(&m).unwrap(),
        );
        let options: Vec<String> = ["index=off", "redirect_dir=off", "metacopy=off"]
            .map(String::from)
            .to_vec();
        let spec = strata_sys::mount::OverlaySpec {
            lower: dirs.iter().collect(),
            upper: Some(&ud),
            work: Some(&wd),
            options: &options,
            read_only: false,
        };
        strata_sys::mount::overlay(&spec, &md, &m).expect("overlay mount");
    }
    rustix::mount::unmount(&m, rustix::mount::UnmountFlags::empty()).expect("unmount");
    std::fs::remove_dir_all(&u).unwrap();
    std::fs::remove_dir_all(&w).unwrap();
    std::fs::remove_dir(&m).unwrap();
}

fn overlay_chains() {
    if !rustix::process::geteuid().is_root() {
        println!("overlay: skipped (mounting needs root)");
        return;
    }
    let t = TempStore::new();
    let s = t
        .open_with(&driver_wasm("strata_driver_overlay"), t.config())
        .expect("opening an overlay store");
    let mut chain: Vec<String> = Vec::new();
    for i in 0..499 {
        let id = format!("c{i:03}");
        s.create_layer(CreateLayer {
            id: Some(id.clone()),
            parent: chain.last().cloned(),
            ..Default::default()
        })
        .expect("create");
        let tar = tar_of(&[Entry::file(&format!("file-{i}"), 0o644, b"layer content\n")]);
        s.apply(&id, Box::new(std::io::Cursor::new(tar)))
            .expect("apply");
        chain.push(id);
    }
    let home = t.home("overlay");
    let native_dir = t.dir.path().join("native");
    std::fs::create_dir(&native_dir).unwrap();
    // The new layer's upper over 10 lowers, and over 499: a 500-layer stack, overlayfs's limit.
    for depth in [10usize, 499] {
        let top = chain[depth - 1].clone();
        let mut i = 0;
        let strata = time(15, || {
            i += 1;
            rw_layer_lifecycle(&s, &format!("x{depth}-{i}"), Some(&top));
        });
        let lowers: Vec<std::path::PathBuf> = chain[..depth]
            .iter()
            .rev()
            .map(|id| home.join(id).join("diff"))
            .collect();
        let syscalls = time(15, || native_overlay(&native_dir, &lowers, false));
        let page = rustix::param::page_size();
        let option_len: usize = lowers.iter().map(|l| l.as_os_str().len() + 1).sum();
        let command = if option_len < page - 512 {
            let c = time(15, || native_overlay(&native_dir, &lowers, true));
            format!(
                "`mount -t overlay` {:.2} ms (ratio {:.1}x)",
                c.as_secs_f64() * 1e3,
                strata.as_secs_f64() / c.as_secs_f64()
            )
        } else {
            format!(
                "`mount -t overlay` cannot: its lowerdir= option is {option_len} bytes, over the {page}-byte page"
            )
        };
        println!(
            "overlay: {} layers ({depth} lowers + upper): strata create+mount+unmount+remove {:.2} ms; same mount by native syscalls {:.2} ms (ratio {:.1}x); {command}",
            depth + 1,
            strata.as_secs_f64() * 1e3,
            syscalls.as_secs_f64() * 1e3,
            strata.as_secs_f64() / syscalls.as_secs_f64(),
        );
    }
}

/// Files and bytes of the layer the btrfs bench copies.
const BTRFS_BENCH_FILES: usize = 10_000;
const BTRFS_BENCH_BYTES: usize = 200 << 20;
const BTRFS_BENCH_RUNS: usize = 5;

/// Writes the bench's layer content into `dir`: 100 directories of 100 files, 200 MiB in all,
/// of bytes that neither compress nor dedupe.
fn populate(dir: &std::path::Path) {
    let per_file = BTRFS_BENCH_BYTES / BTRFS_BENCH_FILES;
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; per_file];
    for d in 0..BTRFS_BENCH_FILES / 100 {
        let sub = dir.join(format!("d{d:03}"));
        std::fs::create_dir(&sub).unwrap();
        for f in 0..100 {
            for chunk in buf.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
            }
            std::fs::write(sub.join(format!("f{f:03}")), &buf).unwrap();
        }
    }
}

fn sync() {
    rustix::fs::sync();
}

/// A store on `fs` with a populated base layer `base`.
fn populated_store(t: &TempStore, wasm: &str, fs: &std::path::Path) -> Strata {
    let config = strata_core::config::Config::from_str(
        &format!(
            "root = {:?}\nrun_root = {:?}\n[drivers.btrfs]\ngrants = [\"files\", \"archive\", \"btrfs\", \"log\"]\n",
            fs.join(format!("root-{wasm}")),
            t.dir.path().join(format!("run-{wasm}")),
        ),
        "bench.toml",
    )
    .unwrap();
    let s = t
        .open_with(&driver_wasm(wasm), config)
        .expect("opening a store");
    s.create_layer(CreateLayer {
        id: Some("base".into()),
        read_write: true,
        ..Default::default()
    })
    .expect("create base");
    let m = s.mount("base", &[]).expect("mount base");
    populate(&m);
    s.unmount("base", false).expect("unmount base");
    s
}

/// Median time to create (and, untimed, remove) a child of `base`.
fn time_child(s: &Strata) -> Duration {
    let mut runs = Vec::new();
    for i in 0..BTRFS_BENCH_RUNS {
        sync();
        let id = format!("child{i}");
        let t = Instant::now();
        s.create_layer(CreateLayer {
            id: Some(id.clone()),
            parent: Some("base".into()),
            read_write: true,
            ..Default::default()
        })
        .expect("create child");
        runs.push(t.elapsed());
        s.remove(&id).expect("remove child");
    }
    median(runs)
}

/// Median time of `cmd SRC DST` (DST removed, untimed, by `remove` after each run).
fn time_tool(
    args: &[&str],
    src: &std::path::Path,
    dst: &std::path::Path,
    remove: fn(&std::path::Path),
) -> Duration {
    let mut runs = Vec::new();
    for _ in 0..BTRFS_BENCH_RUNS {
        sync();
        let t = Instant::now();
        let st = std::process::Command::new(args[0])
            .args(&args[1..])
            .arg(src)
            .arg(dst)
            .status()
            .expect("running a baseline tool");
        runs.push(t.elapsed());
        assert!(st.success(), "{args:?} failed");
        remove(dst);
    }
    median(runs)
}

fn remove_tree(dst: &std::path::Path) {
    std::fs::remove_dir_all(dst).unwrap();
}

fn btrfs_copies() {
    if !rustix::process::geteuid().is_root() {
        println!("btrfs: skipped (loop-mounting btrfs needs root)");
        return;
    }
    if !std::process::Command::new("sh")
        .args(["-c", "command -v mkfs.btrfs"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        println!("btrfs: skipped (mkfs.btrfs missing; Debian package btrfs-progs)");
        return;
    }
    let fs = LoopBtrfs::new(4 << 30);
    let t = TempStore::new();
    let ext4 = t.dir.path().to_path_buf();
    let fs_type = |p: &std::path::Path| {
        strata_sys::Dir::open_ambient(p)
            .and_then(|d| d.filesystem_type("."))
            .unwrap_or("unknown")
    };
    let btrfs_store = populated_store(&t, "strata_driver_btrfs", &fs.mnt());
    let vfs_btrfs = populated_store(&t, "strata_driver_vfs", &fs.mnt());
    let vfs_ext4 = populated_store(&t, "strata_driver_vfs", &ext4);
    let snapshot = time_child(&btrfs_store);
    let reflink = time_child(&vfs_btrfs);
    let copy = time_child(&vfs_ext4);
    let btrfs_base = fs
        .mnt()
        .join("root-strata_driver_btrfs/drivers/btrfs/subvolumes/base");
    let vfs_btrfs_base = fs.mnt().join("root-strata_driver_vfs/drivers/vfs/dir/base");
    let vfs_ext4_base = ext4.join("root-strata_driver_vfs/drivers/vfs/dir/base");
    let tool_snapshot = time_tool(
        &["btrfs", "-q", "subvolume", "snapshot"],
        &btrfs_base,
        &fs.mnt().join("tool-snapshot"),
        |dst| {
            strata_tests::run_tool(
                std::process::Command::new("btrfs")
                    .args(["subvolume", "delete"])
                    .arg(dst),
            );
        },
    );
    let cp_reflink = time_tool(
        &["cp", "-a", "--reflink=always"],
        &vfs_btrfs_base,
        &fs.mnt().join("tool-reflink"),
        remove_tree,
    );
    let cp = time_tool(
        &["cp", "-a"],
        &vfs_ext4_base,
        &ext4.join("tool-copy"),
        remove_tree,
    );
    let cp_never = time_tool(
        &["cp", "-a", "--reflink=never"],
        &vfs_ext4_base,
        &ext4.join("tool-copy-never"),
        remove_tree,
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "btrfs: child of a layer with {BTRFS_BENCH_FILES} files and {} MiB, median of {BTRFS_BENCH_RUNS} (vfs copy on {}):",
        BTRFS_BENCH_BYTES >> 20,
        fs_type(&ext4)
    );
    let rows = [
        (
            "strata btrfs (snapshot)",
            snapshot,
            "`btrfs subvolume snapshot`",
            tool_snapshot,
        ),
        (
            "strata vfs on btrfs (reflinks)",
            reflink,
            "`cp -a --reflink=always`",
            cp_reflink,
        ),
        (
            "strata vfs on ext4 (byte copies)",
            copy,
            "`cp -a` on ext4",
            cp,
        ),
        (
            "strata vfs on ext4 (byte copies)",
            copy,
            "`cp -a --reflink=never`",
            cp_never,
        ),
    ];
    for (name, d, base_name, base) in rows {
        println!(
            "  {name:<34} {:>9.2} ms   {base_name:<28} {:>9.2} ms   ratio {:>5.2}x   vs strata vfs copy {:>7.4}x",
            ms(d),
            ms(base),
            d.as_secs_f64() / base.as_secs_f64(),
            d.as_secs_f64() / copy.as_secs_f64(),
        );
    }
}

/// Layers in the zfs listing bench.
const ZFS_LAYERS: usize = 200;
/// The properties the zfs driver reports per layer.
const ZFS_METADATA: &str = "origin,used,referenced,quota";

fn zfs_listing() {
    if !rustix::process::geteuid().is_root() {
        println!("zfs: skipped (zfs-fuse and its pool need root)");
        return;
    }
    let has_tools = std::process::Command::new("sh")
        .args(["-c", "command -v zfs-fuse && command -v zpool"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_tools {
        println!("zfs: skipped (zfs-fuse missing; Debian package zfs-fuse)");
        return;
    }
    let pool = ZfsPool::new(1 << 30);
    let t = TempStore::new();
    let config_path = t.dir.path().join("strata.toml");
    std::fs::write(
        &config_path,
        format!(
            "driver = \"zfs\"\nroot = {:?}\nrun_root = {:?}\n[drivers.zfs]\nfsname = {:?}\n",
            t.root(),
            t.dir.path().join("run"),
            pool.fsname()
        ),
    )
    .unwrap();
    let config = strata_core::config::Config::load(&config_path).unwrap();
    let s = strata_sandbox::open(strata_core::layers::StoreOptions {
        config,
        driver: Some("zfs".into()),
        driver_options: vec![],
        cache_dir: Some(cache_dir()),
    })
    .expect("opening a zfs store (is STRATA_DRIVER_DIR set?)");
    let started = Instant::now();
    let mut parent: Option<String> = None;
    for i in 0..ZFS_LAYERS {
        let id = format!("layer-{i:03}");
        s.create_layer(CreateLayer {
            id: Some(id.clone()),
            parent: parent.clone(),
            ..Default::default()
        })
        .expect("creating a zfs layer");
        parent = Some(id);
    }
    println!(
        "zfs: made a chain of {ZFS_LAYERS} layers in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let ids: Vec<String> = s.list().unwrap().into_iter().map(|l| l.id).collect();
    let batched_answers = s.list_with_metadata().expect("batched metadata");
    for (layer, answer) in &batched_answers {
        let one = s.metadata(&layer.id).expect("per-layer metadata");
        assert_eq!(answer.as_ref().ok(), Some(&one), "layer {}", layer.id);
    }
    let bin = target_dir().join("release").join("strata");
    let cli_ls = time(5, || {
        let out = strata_tests::strata_command(&bin)
            .arg("--config")
            .arg(&config_path)
            .args(["--json", "layer", "ls"])
            .output()
            .expect("running strata");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let listed = listed.as_array().expect("a JSON list");
        assert_eq!(listed.len(), ZFS_LAYERS);
        assert!(
            listed
                .iter()
                .all(|l| l["driver_metadata"]["used"].is_string()),
            "every layer listed with its metadata: {:?}",
            listed
                .iter()
                .find(|l| !l["driver_metadata"]["used"].is_string())
        );
    });
    let batched = time(5, || {
        std::hint::black_box(s.list_with_metadata().unwrap());
    });
    let per_layer = time(3, || {
        for id in &ids {
            std::hint::black_box(s.metadata(id).unwrap());
        }
    });
    let store = format!(
        "{}/{}",
        pool.fsname(),
        std::fs::read_to_string(t.home("zfs").join(".dataset"))
            .unwrap()
            .trim()
    );
    let zfs_get = |args: &[&str]| {
        let out = std::process::Command::new("zfs")
            .args(args)
            .output()
            .expect("running zfs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let native_one = time(5, || {
        zfs_get(&[
            "get",
            "-H",
            "-p",
            "-r",
            "-d",
            "1",
            "-o",
            "name,property,value",
            ZFS_METADATA,
            &store,
        ])
    });
    let native_each = time(3, || {
        for id in &ids {
            zfs_get(&[
                "get",
                "-H",
                "-p",
                "-o",
                "property,value",
                ZFS_METADATA,
                &format!("{store}/{id}"),
            ]);
        }
    });
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "zfs: metadata of {ZFS_LAYERS} layers (median; zfs-fuse): `strata layer ls --json` {:.1} ms; \
         batched listing in-process {:.1} ms; per-layer driver calls {:.1} ms ({:.1}x the batched); \
         native: one `zfs get -r -d 1` {:.1} ms, one `zfs get` per layer {:.1} ms ({:.1}x). \
         batched in-process / native one query {:.2}x; ls --json / native one query {:.2}x",
        ms(cli_ls),
        ms(batched),
        ms(per_layer),
        per_layer.as_secs_f64() / batched.as_secs_f64(),
        ms(native_one),
        ms(native_each),
        native_each.as_secs_f64() / native_one.as_secs_f64(),
        batched.as_secs_f64() / native_one.as_secs_f64(),
        cli_ls.as_secs_f64() / native_one.as_secs_f64(),
    );
    drop(s);
    drop(t);
    drop(pool);
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
    if all || which.iter().any(|w| w == "overlay") {
        overlay_chains();
    }
    if all || which.iter().any(|w| w == "btrfs") {
        btrfs_copies();
    }
    if all || which.iter().any(|w| w == "zfs") {
        zfs_listing();
    }
    if all || which.iter().any(|w| w == "apply-memory") {
        apply_memory::run();
    }
    if (all || which.iter().any(|w| w == "import"))
        && let Err(e) = import::run()
    {
        eprintln!("import: error: {e:#}");
        std::process::exit(1);
    }
    if (all || which.iter().any(|w| w == "containerd"))
        && let Err(e) = containerd::run()
    {
        eprintln!("containerd: error: {e:#}");
        std::process::exit(1);
    }
    if (all || which.iter().any(|w| w == "crash"))
        && let Err(e) = crash::run()
    {
        eprintln!("crash: error: {e:#}");
        std::process::exit(1);
    }
    if (all || which.iter().any(|w| w == "serve-load"))
        && let Err(e) = serve_load::run()
    {
        eprintln!("serve-load: error: {e:#}");
        std::process::exit(1);
    }
}

//! The btrfs driver and the host's btrfs capability, on a real loop-mounted btrfs each test
//! makes for itself: the conformance suite (quota included), nested subvolumes left by a
//! container, the sandbox around the ioctls, the first-party grant, and vfs using reflinks
//! on a btrfs home.

use std::path::Path;

use strata_host::config::Config;
use strata_host::conformance::{self, SuiteOptions};
use strata_host::contract::DriverError;
use strata_host::layers::{CreateLayer, LayerError, StoreOptions, Strata};
use strata_host::sandbox::{CallError, SandboxError};
use strata_host::sys;
use strata_tests::{
    LoopBtrfs, TempStore, assert_all_pass, btrfs_or_skip, cache_dir, driver_wasm, run_conformance,
    run_tool, vfs_wasm,
};

fn btrfs_wasm() -> std::path::PathBuf {
    driver_wasm("strata_driver_btrfs")
}

/// A config for a store at `<fs>/root` whose `btrfs` driver (loaded by path, so not
/// first-party) is granted the btrfs interface explicitly.
fn config_on(fs: &Path) -> Config {
    let text = format!(
        "root = {:?}\nrun_root = {:?}\n[drivers.btrfs]\ngrants = [\"files\", \"archive\", \"btrfs\", \"log\"]\n",
        fs.join("root"),
        fs.join("run"),
    );
    Config::from_str(&text, "test.toml").expect("test config")
}

fn open_on(fs: &Path, wasm: &Path, config: Config) -> Result<Strata, LayerError> {
    let (name, config) = strata_tests::configure_driver(config, wasm);
    Strata::open(StoreOptions {
        config,
        driver: Some(name),
        driver_options: vec![],
        cache_dir: Some(cache_dir()),
    })
    .inspect(|_| assert!(fs.join("root").is_dir()))
}

fn create(
    s: &Strata,
    id: &str,
    parent: Option<&str>,
    opts: &[(&str, &str)],
) -> Result<(), LayerError> {
    s.create_layer(CreateLayer {
        id: Some(id.into()),
        parent: parent.map(str::to_string),
        read_write: true,
        options: opts
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    })
    .map(|_| ())
}

fn subvolume_paths(fs: &Path) -> Vec<String> {
    run_tool(
        std::process::Command::new("btrfs")
            .args(["subvolume", "list"])
            .arg(fs),
    )
    .lines()
    .filter_map(|l| l.split(" path ").nth(1).map(str::to_string))
    .collect()
}

#[test]
fn btrfs_passes_the_conformance_suite_with_quota() {
    if !btrfs_or_skip("btrfs_passes_the_conformance_suite_with_quota") {
        return;
    }
    let fs = LoopBtrfs::new(2 << 30);
    let options = SuiteOptions {
        driver: btrfs_wasm().to_string_lossy().into_owned(),
        config: config_on(&fs.mnt()),
        driver_options: vec![],
        scratch: fs.mnt(),
        cache_dir: cache_dir(),
        deep_chain: conformance::DEFAULT_DEEP_CHAIN,
        only: vec![],
    };
    let report = run_conformance(&options);
    assert_all_pass(&report, conformance::DEFAULT_DEEP_CHAIN);
    let quota = report
        .cases
        .iter()
        .find(|c| c.name == "quota/size")
        .unwrap();
    assert_eq!(
        quota.note, None,
        "btrfs enforces size= (EDQUOT past 50M), it does not report it unsupported"
    );
}

#[test]
fn removing_a_layer_deletes_the_subvolumes_a_container_made_inside_it() {
    if !btrfs_or_skip("removing_a_layer_deletes_the_subvolumes_a_container_made_inside_it") {
        return;
    }
    let fs = LoopBtrfs::new(512 << 20);
    // Through the CLI by name, as an operator runs it: the first-party driver gets the
    // btrfs grant without any config.
    let cli = |args: &[&str]| fs.cli(args);
    let base = cli(&["layer", "create", "--rw"]);
    let container = cli(&["layer", "create", "--rw", "--parent", &base]);
    let m = std::path::PathBuf::from(cli(&["layer", "mount", &container]));
    for nested in ["var-lib", "var-lib/inner", "deep"] {
        let p = if nested == "deep" {
            std::fs::create_dir_all(m.join("a/b/c")).unwrap();
            m.join("a/b/c/deep")
        } else {
            m.join(nested)
        };
        run_tool(
            std::process::Command::new("btrfs")
                .args(["subvolume", "create"])
                .arg(&p),
        );
    }
    std::fs::write(m.join("var-lib/inner/data"), b"container data").unwrap();
    run_tool(
        std::process::Command::new("btrfs")
            .args(["property", "set", "-ts"])
            .arg(m.join("var-lib"))
            .args(["ro", "true"]),
    );
    cli(&["layer", "unmount", &container]);
    let home = fs.mnt().join("root/drivers/btrfs");
    assert_eq!(
        subvolume_paths(&fs.mnt()).len(),
        5,
        "two layers and three nested subvolumes"
    );
    cli(&["layer", "rm", &container]);
    assert!(!home.join("subvolumes").join(&container).exists());
    let left = subvolume_paths(&fs.mnt());
    assert_eq!(
        left,
        vec![format!("root/drivers/btrfs/subvolumes/{base}")],
        "{left:?}"
    );
    cli(&["layer", "rm", &base]);
    assert!(subvolume_paths(&fs.mnt()).is_empty());
    assert_eq!(cli(&["layer", "ls"]), "");
}

#[test]
fn init_refuses_a_home_that_is_not_on_btrfs() {
    let t = TempStore::new();
    let fs_type = sys::Dir::open_ambient(t.dir.path())
        .unwrap()
        .filesystem_type(".")
        .unwrap();
    if fs_type == "btrfs" {
        strata_tests::skip(
            "init_refuses_a_home_that_is_not_on_btrfs",
            "the temp dir is on btrfs",
        );
        return;
    }
    let err = open_on(t.dir.path(), &btrfs_wasm(), config_on(t.dir.path()))
        .err()
        .expect("btrfs on a non-btrfs home must not start");
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            LayerError::Call(CallError::Driver {
                error: DriverError::Unsupported(_),
                ..
            })
        ),
        "{msg}"
    );
    assert!(
        msg.contains("needs its home on a btrfs filesystem") && msg.contains(fs_type),
        "{msg}"
    );
}

#[test]
fn a_driver_file_named_btrfs_given_by_path_is_not_granted_btrfs() {
    let t = TempStore::new();
    let copy = t.dir.path().join("btrfs.wasm");
    std::fs::copy(btrfs_wasm(), &copy).unwrap();
    let err = t
        .open_unconfigured(&copy, t.config())
        .err()
        .expect("a third-party driver does not get the btrfs grant by its file name");
    assert!(
        matches!(err, LayerError::Sandbox(SandboxError::NotGranted { ref capability, .. }) if capability == "btrfs"),
        "{err}"
    );
}

#[test]
fn the_host_refuses_btrfs_calls_on_anything_but_a_subvolume_beneath_the_home() {
    if !btrfs_or_skip("the_host_refuses_btrfs_calls_on_anything_but_a_subvolume_beneath_the_home") {
        return;
    }
    let fs = LoopBtrfs::new(512 << 20);
    // Something of the host's in the filesystem's top-level subvolume, outside the store.
    std::fs::write(fs.mnt().join("host-secret"), b"secret").unwrap();
    let name = "strata_test_driver_hostile";
    let text = format!(
        "root = {:?}\nrun_root = {:?}\n[drivers.{name}]\ngrants = [\"files\", \"copy\", \"archive\", \"btrfs\", \"zfs\", \"log\"]\n",
        fs.mnt().join("root"),
        fs.mnt().join("run"),
    );
    let s = open_on(
        &fs.mnt(),
        &driver_wasm(name),
        Config::from_str(&text, "test.toml").unwrap(),
    )
    .expect("opening the hostile driver on btrfs");
    create(&s, "plain", None, &[]).expect("a plain layer");
    let home = fs.mnt().join("root/drivers").join(name);
    // The home and a plain directory are not subvolumes: snapshotting them would snapshot
    // the top-level subvolume, host-secret and all.
    for (i, (op, path)) in [
        ("snapshot", "."),
        ("snapshot", "dir"),
        ("snapshot", "dir/plain"),
        ("qgroup", "."),
        ("qgroup", "dir/plain"),
        ("unsubvolume", "dir/plain"),
    ]
    .iter()
    .enumerate()
    {
        let err = create(&s, &format!("x{i}"), None, &[(op, path)])
            .expect_err(&format!("{op}={path} must be refused"));
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                LayerError::Call(CallError::Driver {
                    error: DriverError::InvalidArgument(_),
                    ..
                })
            ) && msg.contains("not a btrfs subvolume"),
            "{op}={path}: {msg}"
        );
    }
    assert!(home.join("dir/plain").is_dir(), "nothing was deleted");
    let leaked: Vec<_> = walkdir_names(&home)
        .into_iter()
        .filter(|n| n == "host-secret")
        .collect();
    assert!(leaked.is_empty(), "the host's file appeared in the home");
    assert!(
        subvolume_paths(&fs.mnt()).is_empty(),
        "no subvolume was made"
    );
}

fn walkdir_names(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            out.push(e.file_name().to_string_lossy().into_owned());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    out
}

#[test]
fn subvolume_wrappers_snapshot_read_only_report_ids_and_clear_limits() {
    if !btrfs_or_skip("subvolume_wrappers_snapshot_read_only_report_ids_and_clear_limits") {
        return;
    }
    let fs = LoopBtrfs::new(512 << 20);
    let d = sys::Dir::open_ambient(&fs.mnt()).unwrap();
    d.create_subvolume("a").unwrap();
    assert!(d.is_subvolume("a").unwrap());
    assert!(
        d.is_subvolume(".").unwrap(),
        "a fresh mount's root is the top-level subvolume"
    );
    std::fs::create_dir(fs.mnt().join("plain")).unwrap();
    assert!(!d.is_subvolume("plain").unwrap());
    std::fs::write(fs.mnt().join("a/f"), b"x").unwrap();
    d.snapshot_subvolume("a", "ro", true).unwrap();
    let a = d.subvolume_info("a").unwrap();
    let ro = d.subvolume_info("ro").unwrap();
    assert!(!a.read_only && ro.read_only && a.id != ro.id && a.id >= 256);
    assert_eq!(std::fs::read(fs.mnt().join("ro/f")).unwrap(), b"x");
    let err = std::fs::write(fs.mnt().join("ro/g"), b"y").unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(rustix::io::Errno::ROFS.raw_os_error())
    );
    // Limits need quotas on; then they can be set and cleared.
    let e = d.set_qgroup_limit("a", Some(8 << 20)).unwrap_err();
    assert_eq!(e.kind, sys::ErrorKind::Unsupported, "{e}");
    d.enable_quota("a").unwrap();
    d.enable_quota("a").unwrap();
    d.set_qgroup_limit("a", Some(8 << 20)).unwrap();
    let show = run_tool(
        std::process::Command::new("btrfs")
            .args(["qgroup", "show", "-r", "--raw"])
            .arg(fs.mnt()),
    );
    let line = |id: u64| {
        show.lines()
            .find(|l| l.starts_with(&format!("0/{id} ")))
            .unwrap_or_else(|| panic!("qgroup 0/{id} in {show}"))
            .to_string()
    };
    assert!(line(a.id).contains(&(8u64 << 20).to_string()), "{show}");
    d.set_qgroup_limit("a", None).unwrap();
    let show = run_tool(
        std::process::Command::new("btrfs")
            .args(["qgroup", "show", "-r", "--raw"])
            .arg(fs.mnt()),
    );
    assert!(
        !show.contains(&(8u64 << 20).to_string()),
        "the limit is cleared: {show}"
    );
    // A read-only subvolume is deleted like any other; creating one twice is already-exists.
    d.delete_subvolume("ro").unwrap();
    assert!(!fs.mnt().join("ro").exists());
    let e = d.create_subvolume("a").unwrap_err();
    assert_eq!(e.kind, sys::ErrorKind::AlreadyExists, "{e}");
    let e = d.create_subvolume("../x").unwrap_err();
    assert_eq!(e.kind, sys::ErrorKind::Denied, "{e}");
    d.delete_subvolume("a").unwrap();
}

#[test]
fn vfs_on_a_btrfs_home_reflinks_instead_of_copying() {
    if !btrfs_or_skip("vfs_on_a_btrfs_home_reflinks_instead_of_copying") {
        return;
    }
    let fs = LoopBtrfs::new(512 << 20);
    let config = Config {
        root: fs.mnt().join("root"),
        run_root: fs.mnt().join("run"),
        ..Config::default()
    };
    let s = open_on(&fs.mnt(), &vfs_wasm(), config).expect("vfs on btrfs");
    create(&s, "base", None, &[]).unwrap();
    let m = s.mount("base", &[]).unwrap();
    let data: Vec<u8> = (0..(8u32 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(m.join("big"), &data).unwrap();
    s.unmount("base", false).unwrap();
    create(&s, "child", Some("base"), &[]).unwrap();
    let child_file = fs.mnt().join("root/drivers/vfs/dir/child/big");
    assert_eq!(std::fs::read(&child_file).unwrap(), data);
    // FIEMAP says whether the child's extents are shared with the parent's.
    let frag = run_tool(
        std::process::Command::new("filefrag")
            .arg("-v")
            .arg(&child_file),
    );
    let extents: Vec<&str> = frag
        .lines()
        .filter(|l| {
            l.trim_start()
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit())
        })
        .collect();
    assert!(!extents.is_empty(), "{frag}");
    assert!(
        extents.iter().all(|l| l.contains("shared")),
        "every extent of the child's copy is shared with the parent:\n{frag}"
    );
}

#[test]
fn the_operator_default_size_limits_every_layer_and_children_inherit_limits() {
    if !btrfs_or_skip("the_operator_default_size_limits_every_layer_and_children_inherit_limits") {
        return;
    }
    let fs = LoopBtrfs::new(512 << 20);
    let open = |size: &str| {
        let (name, config) = strata_tests::configure_driver(config_on(&fs.mnt()), &btrfs_wasm());
        Strata::open(StoreOptions {
            config,
            driver: Some(name),
            driver_options: vec![("size".into(), size.into())],
            cache_dir: Some(cache_dir()),
        })
    };
    let err = open("lots").err().expect("a bad size is refused");
    assert!(err.to_string().contains("option `size`"), "{err}");
    let s = open("64M").expect("btrfs with a default size");
    assert!(
        s.driver_info()
            .status
            .contains(&("Default Layer Size".into(), (64u64 << 20).to_string())),
        "{:?}",
        s.driver_info().status
    );
    create(&s, "base", None, &[]).unwrap();
    create(&s, "own", Some("base"), &[("size", "32M")]).unwrap();
    create(&s, "inherits", Some("own"), &[]).unwrap();
    let limit_of = |id: &str| {
        let meta = s.metadata(id).unwrap();
        meta.iter()
            .find(|(k, _)| k == "size")
            .map(|(_, v)| v.parse::<u64>().unwrap())
    };
    assert_eq!(limit_of("base"), Some(64 << 20));
    assert_eq!(limit_of("own"), Some(32 << 20));
    assert_eq!(
        limit_of("inherits"),
        Some(32 << 20),
        "a child keeps its parent's limit"
    );
    // The kernel holds the same limits.
    let show = run_tool(
        std::process::Command::new("btrfs")
            .args(["qgroup", "show", "-r", "--raw"])
            .arg(fs.mnt()),
    );
    let limits: Vec<&str> = show
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter(|v| v.parse::<u64>().is_ok())
        .collect();
    let expected = [(64u64 << 20).to_string(), (32u64 << 20).to_string()];
    assert_eq!(
        limits.iter().filter(|v| **v == expected[0]).count(),
        1,
        "{show}"
    );
    assert_eq!(
        limits.iter().filter(|v| **v == expected[1]).count(),
        2,
        "{show}"
    );
    for id in ["inherits", "own", "base"] {
        s.remove(id).unwrap();
    }
}

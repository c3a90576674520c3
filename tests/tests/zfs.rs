//! The zfs driver and the host's zfs capability, on zfs-fuse (started here when none runs)
//! with a file-backed pool each test makes and destroys: the conformance suite (quota
//! included), the CLI by name with metadata from one query and origin snapshots cleaned up,
//! the sandbox around dataset names and properties, and the config key it needs.

use std::path::{Path, PathBuf};

use strata_host::config::Config;
use strata_host::conformance::{self, SuiteOptions};
use strata_host::contract::DriverError;
use strata_host::layers::{CreateLayer, LayerError, StoreOptions, Strata};
use strata_host::sandbox::CallError;
use strata_tests::{
    TempStore, ZfsPool, assert_all_pass, cache_dir, driver_wasm, hostile_wasm, run_conformance,
    strata_bin, zfs_or_skip,
};

fn zfs_wasm() -> PathBuf {
    driver_wasm("strata_driver_zfs")
}

/// Config text for a store in `dir` whose `section` driver is confined to `fsname`.
fn config_text(dir: &Path, section: &str, fsname: &str, extra: &str) -> String {
    format!(
        "root = {:?}\nrun_root = {:?}\n[drivers.{section}]\nfsname = {fsname:?}\n{extra}\n",
        dir.join("root"),
        dir.join("run"),
    )
}

fn driver_error(e: &LayerError) -> Option<&DriverError> {
    match e {
        LayerError::Call(CallError::Driver { error, .. }) => Some(error),
        _ => None,
    }
}

#[test]
fn zfs_passes_the_conformance_suite_with_quota() {
    if !zfs_or_skip("zfs_passes_the_conformance_suite_with_quota") {
        return;
    }
    let pool = ZfsPool::new(2 << 30);
    let t = TempStore::new();
    let config = Config::from_str(
        &config_text(
            t.dir.path(),
            "zfs",
            &pool.fsname(),
            "grants = [\"files\", \"archive\", \"zfs\", \"log\"]",
        ),
        "test.toml",
    )
    .unwrap();
    let scratch = t.dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let options = SuiteOptions {
        driver: zfs_wasm().to_string_lossy().into_owned(),
        config,
        driver_options: vec![],
        scratch,
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
        "zfs enforces size= with the quota property (EDQUOT past 50M)"
    );
    // Every case removed its layers: each case's store dataset is empty, and no snapshot
    // (a child's origin) was left behind.
    let left: Vec<String> = pool
        .datasets()
        .into_iter()
        .filter(|d| d.matches('/').count() > 2 || d.contains('@'))
        .collect();
    assert!(left.is_empty(), "datasets left after the suite: {left:?}");
}

#[test]
fn cli_by_name_lists_metadata_and_removal_destroys_unused_origin_snapshots() {
    if !zfs_or_skip("cli_by_name_lists_metadata_and_removal_destroys_unused_origin_snapshots") {
        return;
    }
    let pool = ZfsPool::new(512 << 20);
    let t = TempStore::new();
    let config_path = t.dir.path().join("strata.toml");
    // First-party by name: the zfs grant comes built in; only fsname is configured.
    std::fs::write(
        &config_path,
        config_text(
            t.dir.path(),
            "zfs",
            &pool.fsname(),
            "options = { size = \"64M\" }",
        ),
    )
    .unwrap();
    let cli = |args: &[&str]| {
        strata_tests::run_tool(
            strata_tests::strata_command(strata_bin())
                .arg("--config")
                .arg(&config_path)
                .args(["--driver", "zfs"])
                .args(args),
        )
        .trim()
        .to_string()
    };
    let status = cli(&["status"]);
    assert!(status.contains("Backend: zfs-fuse"), "{status}");
    assert!(
        status.contains(&format!("Parent Dataset: {}", pool.fsname())),
        "{status}"
    );
    cli(&["layer", "create", "--id", "base"]);
    cli(&["layer", "create", "--id", "one", "--parent", "base"]);
    cli(&[
        "layer", "create", "--id", "two", "--parent", "base", "--opt", "size=32M",
    ]);

    let listed: serde_json::Value = serde_json::from_str(&cli(&["--json", "layer", "ls"])).unwrap();
    let meta = |id: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["id"] == id)
            .unwrap_or_else(|| panic!("layer {id} in {listed}"))["driver_metadata"]
            .clone()
    };
    let store = meta("base")["dataset"]
        .as_str()
        .unwrap()
        .strip_suffix("/base")
        .expect("layer datasets live in the store dataset")
        .to_string();
    assert!(store.starts_with("strata-"), "{store}");
    assert_eq!(meta("one")["origin"], format!("{store}/base@one"));
    assert_eq!(meta("two")["origin"], format!("{store}/base@two"));
    // The operator default applies to a layer without size=; size= wins where given.
    assert_eq!(meta("base")["size"], (64u64 << 20).to_string());
    assert_eq!(meta("one")["size"], (64u64 << 20).to_string());
    assert_eq!(meta("two")["size"], (32u64 << 20).to_string());
    assert!(
        meta("base")["used"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .is_ok()
    );
    // `layer inspect` (one query per layer) agrees with the batched listing.
    let inspected: serde_json::Value =
        serde_json::from_str(&cli(&["--json", "layer", "inspect", "two"])).unwrap();
    assert_eq!(
        inspected["driver_metadata"]["origin"],
        meta("two")["origin"]
    );
    assert_eq!(inspected["driver_metadata"]["size"], meta("two")["size"]);

    // Data written through a mount lands in the dataset.
    cli(&["layer", "create", "--rw", "--id", "ctr", "--parent", "one"]);
    let mp = PathBuf::from(cli(&["layer", "mount", "ctr"]));
    std::fs::write(mp.join("hello"), b"zfs").unwrap();
    cli(&["layer", "unmount", "ctr"]);
    assert_eq!(cli(&["layer", "changes", "ctr"]), "Add /hello");

    let full = |rel: &str| format!("{}/{rel}", pool.fsname());
    let has = |name: &str| pool.datasets().contains(&full(name));
    assert!(has(&format!("{store}/base@one")));
    cli(&["layer", "rm", "ctr"]);
    assert!(
        !has(&format!("{store}/one@ctr")),
        "origin snapshot of ctr destroyed"
    );
    cli(&["layer", "rm", "one"]);
    assert!(!has(&format!("{store}/one")));
    assert!(
        !has(&format!("{store}/base@one")),
        "origin snapshot of one destroyed"
    );
    assert!(has(&format!("{store}/base@two")), "two's origin stays");
    cli(&["layer", "rm", "two"]);
    cli(&["layer", "rm", "base"]);
    let left: Vec<String> = pool
        .datasets()
        .into_iter()
        .filter(|d| d.starts_with(&full(&store)) && *d != full(&store))
        .collect();
    assert!(left.is_empty(), "left in the store dataset: {left:?}");
}

#[test]
fn dataset_names_and_properties_leaving_the_parent_are_denied() {
    if !zfs_or_skip("dataset_names_and_properties_leaving_the_parent_are_denied") {
        return;
    }
    let pool = ZfsPool::new(256 << 20);
    // A sibling of the parent the driver must never reach.
    strata_tests::run_tool(std::process::Command::new("zfs").args([
        "create",
        "-o",
        "mountpoint=none",
        &format!("{}/other", pool.name),
    ]));
    let t = TempStore::new();
    let config = Config::from_str(
        &config_text(
            t.dir.path(),
            "strata_test_driver_hostile",
            &pool.fsname(),
            "grants = [\"files\", \"copy\", \"archive\", \"btrfs\", \"zfs\", \"log\"]",
        ),
        "test.toml",
    )
    .unwrap();
    let s = t.open_with(&hostile_wasm(), config).expect("opening");
    let before = pool.datasets();
    let other = format!("/{}/other", pool.name);
    let escapes: Vec<(&str, String)> = vec![
        ("zfs-create", "../other/x".into()),
        ("zfs-create", other.clone()),
        ("zfs-create", "a/../../other/x".into()),
        ("zfs-create", "..".into()),
        ("zfs-create", "".into()),
        ("zfs-destroy", "..".into()),
        ("zfs-destroy", "../other".into()),
        ("zfs-destroy", "".into()),
        ("zfs-snapshot", "@escape".into()),
        ("zfs-snapshot", "../other@x".into()),
        ("zfs-clone", "../other@x".into()),
        ("zfs-property", "mountpoint=/etc".into()),
        ("zfs-property", "mountpoint=legacy".into()),
        ("zfs-property", "sharenfs=on".into()),
        ("zfs-property", "keylocation=file:///etc/shadow".into()),
        ("zfs-property", "canmount=on".into()),
        ("zfs-property", "no-such-property=1".into()),
        ("zfs-get", "mountpoint".into()),
        ("zfs-mount", "../..".into()),
        ("zfs-mount", "/etc".into()),
        ("zfs-unmount", "../../..".into()),
    ];
    for (n, (option, value)) in escapes.iter().enumerate() {
        let e = s
            .create_layer(CreateLayer {
                id: Some(format!("e{n}")),
                options: vec![(option.to_string(), value.clone())],
                ..Default::default()
            })
            .expect_err("a hostile zfs call must fail");
        assert!(
            matches!(driver_error(&e), Some(DriverError::Denied(_))),
            "{option}={value}: expected denied, got {e}"
        );
    }
    assert_eq!(
        pool.datasets(),
        before,
        "no dataset was created or destroyed"
    );
    // Names ZFS itself would refuse are invalid, not denied, and never reach the command
    // line as options.
    let e = s
        .create_layer(CreateLayer {
            id: Some("bad".into()),
            options: vec![("zfs-create".into(), "-o".into())],
            ..Default::default()
        })
        .unwrap_err();
    assert!(
        matches!(driver_error(&e), Some(DriverError::InvalidArgument(_))),
        "{e}"
    );
    // Within the parent the same call works.
    s.create_layer(CreateLayer {
        id: Some("ok".into()),
        options: vec![("zfs-create".into(), "inside".into())],
        ..Default::default()
    })
    .expect("creating a dataset inside the parent");
    assert!(
        pool.datasets()
            .contains(&format!("{}/inside", pool.fsname()))
    );
}

/// Opens a store with the zfs driver under its own name (its section gives the path, so the
/// grant is explicit) and `fsname` if any.
fn open_zfs_by_name(t: &TempStore, fsname: Option<&str>) -> Result<Strata, LayerError> {
    let fsname = fsname
        .map(|f| format!("fsname = {f:?}\n"))
        .unwrap_or_default();
    let text = format!(
        "root = {:?}\nrun_root = {:?}\n[drivers.zfs]\npath = {:?}\n{fsname}grants = [\"files\", \"archive\", \"zfs\", \"log\"]\n",
        t.root(),
        t.dir.path().join("run"),
        zfs_wasm(),
    );
    Strata::open(StoreOptions {
        config: Config::from_str(&text, "test.toml").unwrap(),
        driver: Some("zfs".into()),
        driver_options: vec![],
        cache_dir: Some(cache_dir()),
    })
}

#[test]
fn a_zfs_driver_without_fsname_names_the_config_key() {
    let t = TempStore::new();
    let e = match open_zfs_by_name(&t, None) {
        Ok(_) => panic!("a zfs store without fsname opened"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("fsname") && e.contains("[drivers.zfs]"),
        "the error names the key: {e}"
    );
}

#[test]
fn a_missing_parent_dataset_is_reported_with_the_command_that_makes_it() {
    if !zfs_or_skip("a_missing_parent_dataset_is_reported_with_the_command_that_makes_it") {
        return;
    }
    let pool = ZfsPool::new(128 << 20);
    let t = TempStore::new();
    let missing = format!("{}/absent", pool.name);
    let e = match open_zfs_by_name(&t, Some(&missing)) {
        Ok(_) => panic!("opened without a parent dataset"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("does not exist")
            && e.contains(&format!("zfs create -o mountpoint=none {missing}")),
        "{e}"
    );
}

/// containers/storage users pass the parent dataset as a driver option: `--driver-opt
/// fsname=…` (or `zfs.fsname`) works like the config key, is checked like it, and never
/// reaches the driver.
#[test]
fn fsname_is_accepted_as_a_driver_option() {
    if !zfs_or_skip("fsname_is_accepted_as_a_driver_option") {
        return;
    }
    let pool = ZfsPool::new(256 << 20);
    let t = TempStore::new();
    for key in ["fsname", "zfs.fsname"] {
        let opt = format!("{key}={}", pool.fsname());
        let (ok, out, err) = t.cli(&["--driver", "zfs", "--driver-opt", &opt, "status"]);
        assert!(ok, "{key}: {err}");
        assert!(
            out.contains(&format!("Parent Dataset: {}", pool.fsname())),
            "{out}"
        );
    }
    let opt = format!("fsname={}", pool.fsname());
    let (ok, _, err) = t.cli(&[
        "--driver",
        "zfs",
        "--driver-opt",
        &opt,
        "layer",
        "create",
        "--id",
        "base",
    ]);
    assert!(ok, "{err}");
    assert!(
        pool.datasets()
            .iter()
            .any(|d| d.starts_with(&pool.fsname()) && d.ends_with("/base")),
        "{:?}",
        pool.datasets()
    );
    let (ok, _, err) = t.cli(&["--driver", "zfs", "--driver-opt", "fsname=/abs/x", "status"]);
    assert!(!ok);
    assert!(err.contains("driver option fsname"), "{err}");
}

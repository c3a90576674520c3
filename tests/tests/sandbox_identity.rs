//! A driver's identity, home and grants come from the operator's config or the first-party
//! set, never from a file name; driver homes cannot reach host state; cached native code is
//! mapped only when it matches the digest the host recorded.

use strata_host::config::Config;
use strata_host::contract::DriverError;
use strata_host::layers::{LayerError, StoreOptions, Strata};
use strata_host::sandbox::{CallError, ComponentCache, DriverComponent, SandboxEngine};
use strata_tests::{TempStore, create_with, hostile_wasm, root_or_skip, vfs_wasm};

const ALL_GRANTS: &str = r#"grants = ["files", "copy", "archive", "btrfs", "zfs", "log"]"#;

fn open(t: &TempStore, config: Config, driver: &str) -> Result<Strata, LayerError> {
    Strata::open(StoreOptions {
        config,
        driver: Some(driver.into()),
        driver_options: vec![],
        cache_dir: None,
    })
    .inspect(|_| assert!(t.root().is_dir()))
}

fn config(t: &TempStore, sections: &str) -> Config {
    let text = format!(
        "root = {:?}\nrun_root = {:?}\n{sections}\n",
        t.root(),
        t.dir.path().join("run")
    );
    Config::from_str(&text, "test.toml").expect("test config")
}

/// Escape 1: a driver named `cache` (configured, or a file called `cache.wasm`) must not get
/// the component cache as its home, nor be able to write a cached artifact.
#[test]
fn a_driver_named_cache_cannot_reach_the_component_cache() {
    if !root_or_skip(
        "a_driver_named_cache_cannot_reach_the_component_cache",
        "layers are created owned 0:0",
    ) {
        return;
    }
    let t = TempStore::new();
    let wasm = t.dir.path().join("cache.wasm");
    std::fs::copy(hostile_wasm(), &wasm).unwrap();
    let sections = format!("[drivers.cache]\npath = {wasm:?}\n{ALL_GRANTS}\n");
    let s = open(&t, config(&t, &sections), "cache").expect("a driver named cache opens");
    let cache = strata_host::layout::default_cache_dir(&t.root());
    let cached_before = strata_tests::tree(&cache);
    assert!(
        !cached_before.is_empty(),
        "the store's own cache holds the compiled driver"
    );
    assert_eq!(s.driver_home(), t.home("cache"));
    assert!(!s.driver_home().starts_with(&cache));
    // What the driver would write where the old layout put the cache.
    create_with(&s, "a", &[("escape", "components")]).expect("in its own home");
    for escape in [
        "../../cache/components/planted",
        "../cache/components/planted",
    ] {
        let err = create_with(&s, "b", &[("escape", escape)]).expect_err("outside its home");
        assert!(
            matches!(
                err,
                LayerError::Call(CallError::Driver {
                    error: DriverError::Denied(_),
                    ..
                })
            ),
            "{escape}: {err}"
        );
    }
    assert_eq!(
        strata_tests::tree(&cache),
        cached_before,
        "the component cache is untouched"
    );
    drop(s);

    // The same file given by path, unconfigured: a home of its own, not `cache`.
    let t2 = TempStore::new();
    let s = t2
        .open_unconfigured(&wasm, config(&t2, ""))
        .err()
        .expect("unconfigured, it gets the [sandbox] grants only (it imports btrfs)");
    assert!(s.to_string().contains("btrfs"), "{s}");
    let s = t2
        .open_unconfigured(
            &wasm,
            config(
                &t2,
                "[sandbox]\ngrants = [\"files\", \"copy\", \"archive\", \"btrfs\", \"zfs\", \"log\"]",
            ),
        )
        .expect("with the grants in [sandbox]");
    let name = s.driver_name().to_string();
    assert!(name.starts_with("path-"), "{name}");
    assert_eq!(s.driver_home(), t2.home(&name));
    assert!(!t2.root().join("cache").join("layers.db").exists());
}

/// Escape 1: a cached artifact is mapped only when its bytes match the digest recorded when
/// the host wrote it; anything else is recompiled, with a warning.
#[test]
fn a_tampered_or_unrecorded_cache_entry_is_never_mapped() {
    let t = TempStore::new();
    let engine = SandboxEngine::new().unwrap();
    let cache = ComponentCache::new(t.dir.path().join("cache"));
    let vfs = DriverComponent::load(&engine, &cache, "vfs", &vfs_wasm()).unwrap();
    assert!(!vfs.from_cache);
    let entry = |sha: &str| {
        std::fs::read_dir(cache.dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.extension().is_some_and(|x| x == "cwasm")
                    && p.file_name().unwrap().to_string_lossy().starts_with(sha)
            })
            .expect("the entry")
    };
    let vfs_entry = entry(&vfs.sha256);
    // Native code of another component, as a driver with write access would plant it.
    let other_cache = ComponentCache::new(t.dir.path().join("other"));
    let hostile = DriverComponent::load(&engine, &other_cache, "h", &hostile_wasm()).unwrap();
    let planted = std::fs::read(
        std::fs::read_dir(other_cache.dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "cwasm"))
            .unwrap(),
    )
    .unwrap();
    drop((vfs, hostile));
    std::fs::write(&vfs_entry, &planted).unwrap();
    let reloaded = DriverComponent::load(&engine, &cache, "vfs", &vfs_wasm()).unwrap();
    assert!(
        !reloaded.from_cache,
        "an entry that does not match its digest is not mapped"
    );
    let warning = reloaded
        .cache_warning
        .as_ref()
        .expect("tampering is reported")
        .to_string();
    assert!(warning.contains("not the recorded"), "{warning}");
    assert!(
        reloaded
            .imports
            .iter()
            .all(|i| !i.contains("/btrfs") && !i.contains("/zfs")),
        "the vfs component, not the planted one: {:?}",
        reloaded.imports
    );
    drop(reloaded);
    assert!(
        DriverComponent::load(&engine, &cache, "vfs", &vfs_wasm())
            .unwrap()
            .from_cache,
        "rewritten and mapped again"
    );

    // An entry without a recorded digest (as an older cache holds them) is not mapped either.
    let digest = vfs_entry.with_extension("sha256");
    std::fs::remove_file(&digest).unwrap();
    let again = DriverComponent::load(&engine, &cache, "vfs", &vfs_wasm()).unwrap();
    assert!(!again.from_cache);
    assert!(digest.is_file(), "the digest is recorded again");

    // A digest file that is a symlink (to a digest that would match) is refused.
    drop(again);
    std::fs::rename(&digest, t.dir.path().join("real.sha256")).unwrap();
    std::os::unix::fs::symlink(t.dir.path().join("real.sha256"), &digest).unwrap();
    let linked = DriverComponent::load(&engine, &cache, "vfs", &vfs_wasm()).unwrap();
    assert!(!linked.from_cache, "a symlinked digest is not trusted");
}

/// Escape 1: the host refuses a component cache inside the driver homes.
#[test]
fn a_component_cache_inside_the_driver_homes_is_refused() {
    let t = TempStore::new();
    let (name, config) = strata_tests::configure_driver(t.config(), &vfs_wasm());
    let err = Strata::open(StoreOptions {
        config,
        driver: Some(name),
        driver_options: vec![],
        cache_dir: Some(t.root().join("drivers").join("vfs").join("cache")),
    })
    .err()
    .expect("refused");
    assert!(err.to_string().contains("inside the driver homes"), "{err}");
}

/// Escape 3: a file named after a first-party driver, given by path, is not that driver: it
/// gets neither its layers and home nor its section's grants and `fsname`.
#[test]
fn a_file_named_like_a_first_party_driver_is_not_that_driver() {
    if !root_or_skip(
        "a_file_named_like_a_first_party_driver_is_not_that_driver",
        "layers are created owned 0:0",
    ) {
        return;
    }
    let t = TempStore::new();
    // A store of the vfs driver with a layer.
    let (ok, _, err) = t.cli(&["--driver", "vfs", "layer", "create", "--id", "base"]);
    assert!(ok, "{err}");
    let vfs_named = t.dir.path().join("vfs.wasm");
    std::fs::copy(hostile_wasm(), &vfs_named).unwrap();
    let (ok, _, err) = t.cli(&["--driver", vfs_named.to_str().unwrap(), "layer", "ls"]);
    assert!(!ok, "a file called vfs.wasm must not open the vfs store");
    assert!(err.contains("holds layers of driver vfs"), "{err}");

    // Grants and fsname of [drivers.zfs] do not apply to a file called zfs.wasm.
    let zfs_named = t.dir.path().join("zfs.wasm");
    std::fs::copy(hostile_wasm(), &zfs_named).unwrap();
    let t2 = TempStore::new();
    let sections = format!("[drivers.zfs]\nfsname = \"tank/strata\"\n{ALL_GRANTS}\n");
    let err = t2
        .open_unconfigured(&zfs_named, config(&t2, &sections))
        .err()
        .expect("the zfs section's grants are not the file's");
    let msg = err.to_string();
    assert!(msg.contains("not granted"), "{msg}");
    // Configured under a name of the operator's choosing, it gets that section.
    let sections = format!("[drivers.mine]\npath = {zfs_named:?}\n{ALL_GRANTS}\n");
    let s = t2
        .open_unconfigured(&zfs_named, config(&t2, &sections))
        .expect("the section naming the file by path applies");
    assert_eq!(s.driver_name(), "mine");
    assert_eq!(s.driver_home(), t2.home("mine"));
}

/// An unknown name is refused with the config it needs; a bad section name names its key.
#[test]
fn names_come_from_the_config() {
    let t = TempStore::new();
    let (ok, _, err) = t.cli(&["--driver", "mydriver", "layer", "ls"]);
    assert!(!ok);
    assert!(
        err.contains("[drivers.mydriver]") && err.contains("path ="),
        "{err}"
    );
    let conf = t.dir.path().join("strata.toml");
    std::fs::write(&conf, "[drivers.\"../cache\"]\npath = \"/x.wasm\"\n").unwrap();
    let (ok, _, err) = t.cli(&["--config", conf.to_str().unwrap(), "layer", "ls"]);
    assert!(!ok);
    assert!(
        err.contains("drivers.../cache") && err.contains("not a valid driver name"),
        "{err}"
    );
}

/// A store made before driver homes moved under `drivers/` is migrated on open: homes move
/// (layers intact), the old component cache is deleted unread; with something mounted in an
/// old home the open refuses, saying what to do.
#[test]
fn an_old_layout_store_is_migrated_or_refused_with_a_way_out() {
    if !root_or_skip(
        "an_old_layout_store_is_migrated_or_refused_with_a_way_out",
        "layers are created owned 0:0 and the test mounts a tmpfs",
    ) {
        return;
    }
    let t = TempStore::new();
    let (ok, _, err) = t.cli(&["--driver", "vfs", "layer", "create", "--id", "base"]);
    assert!(ok, "{err}");
    let applied = t.dir.path().join("l.tar");
    {
        let mut b = tar::Builder::new(std::fs::File::create(&applied).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "kept", &b"hello"[..]).unwrap();
        b.finish().unwrap();
    }
    let (ok, _, err) = t.cli(&[
        "--driver",
        "vfs",
        "layer",
        "apply",
        "base",
        applied.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    // Turn it into the old layout: the home beside the store, a cache the driver could
    // have written, and no layout record.
    let root = t.root();
    std::fs::rename(t.home("vfs"), root.join("vfs")).unwrap();
    std::fs::remove_dir(root.join("drivers")).unwrap();
    let old_cache = root.join("cache/components");
    std::fs::create_dir_all(&old_cache).unwrap();
    std::fs::write(old_cache.join("planted.cwasm"), b"native code").unwrap();
    std::fs::write(old_cache.join("planted.sha256"), b"forged").unwrap();
    {
        let store = strata_host::store::LayerStore::open(&root).unwrap();
        store.set_meta("layout", "1").unwrap();
    }
    // Something mounted beneath the old home: refused, nothing moved.
    let mnt = root.join("vfs/dir/base-mnt");
    std::fs::create_dir(&mnt).unwrap();
    strata_tests::run_tool(
        std::process::Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(&mnt),
    );
    let (ok, _, err) = t.cli(&["--driver", "vfs", "layer", "ls"]);
    strata_tests::run_tool(std::process::Command::new("umount").arg(&mnt));
    assert!(!ok, "refused while mounted");
    assert!(
        err.contains("older Strata") && err.contains("umount") && err.contains("base-mnt"),
        "{err}"
    );
    assert!(root.join("vfs/dir/base").is_dir(), "nothing moved");
    std::fs::remove_dir(&mnt).unwrap();
    // Unmounted: migrated.
    let (ok, out, err) = t.cli(&["--driver", "vfs", "layer", "ls"]);
    assert!(ok, "{err}");
    assert!(out.contains("base"), "{out}");
    assert!(!root.join("vfs").exists(), "the old home moved");
    assert_eq!(
        std::fs::read(t.home("vfs").join("dir/base/kept")).unwrap(),
        b"hello",
        "the layer's data moved with it"
    );
    assert!(
        !old_cache.join("planted.cwasm").exists(),
        "the old cache is deleted unread"
    );
    // And it stays migrated: a new directory called vfs beside the store is not moved in.
    std::fs::create_dir(root.join("vfs")).unwrap();
    let (ok, _, err) = t.cli(&["--driver", "vfs", "layer", "ls"]);
    assert!(ok, "{err}");
    assert!(root.join("vfs").is_dir());
}

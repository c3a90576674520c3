//! Compiled components are cached on disk, keyed by the component's hash and the engine: a
//! warm start maps the cached code instead of compiling, and a damaged entry is recompiled.

use strata_sandbox::{ComponentCache, DriverComponent, SandboxEngine};
use strata_tests::{TempStore, vfs_wasm};

#[test]
fn a_warm_start_loads_from_the_cache_and_a_damaged_entry_is_rebuilt() {
    let t = TempStore::new();
    let engine = SandboxEngine::new().unwrap();
    let cache = ComponentCache::new(t.dir.path().join("cache"));
    let cold = DriverComponent::load(&engine, &cache, "vfs", &vfs_wasm()).unwrap();
    assert!(!cold.from_cache, "the first load compiles");
    let warm = DriverComponent::load(&engine, &cache, "vfs", &vfs_wasm()).unwrap();
    assert!(warm.from_cache, "the second load maps the cached code");
    assert_eq!(cold.sha256, warm.sha256);

    let mut entries: Vec<_> = std::fs::read_dir(cache.dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort_by_key(|p| p.extension().is_some_and(|x| x == "sha256"));
    assert_eq!(
        entries.len(),
        2,
        "one entry and its digest, no temporary files left: {entries:?}"
    );
    assert!(
        entries[1].to_string_lossy().ends_with(".sha256"),
        "{entries:?}"
    );
    let name = entries[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with(&warm.sha256),
        "keyed by the component's hash: {name}"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&entries[0]).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "only the host can write cached code");

    // Damage the entry (after dropping the mapping of it: the host itself only ever replaces
    // entries by rename, never in place).
    let sha = warm.sha256.clone();
    drop((cold, warm));
    std::fs::write(&entries[0], b"not a compiled component").unwrap();
    let rebuilt = DriverComponent::load(&engine, &cache, "vfs", &vfs_wasm()).unwrap();
    assert!(!rebuilt.from_cache, "a damaged entry is compiled again");
    let again = DriverComponent::load(&engine, &cache, "vfs", &vfs_wasm()).unwrap();
    assert!(again.from_cache, "and cached again");
    assert_eq!(again.sha256, sha);
    assert_eq!(again.wit_version, "0.2.0");
}

#[test]
fn a_cache_that_cannot_be_written_warns_and_still_loads() {
    let t = TempStore::new();
    let engine = SandboxEngine::new().unwrap();
    // A regular file where the cache directory should be: no user (root included) can create
    // entries beneath it.
    let blocked = t.dir.path().join("not-a-dir");
    std::fs::write(&blocked, b"").unwrap();
    let cache = ComponentCache::new(blocked.join("components"));
    let loaded = DriverComponent::load(&engine, &cache, "vfs", &vfs_wasm()).unwrap();
    assert!(!loaded.from_cache);
    let warning = loaded
        .cache_warning
        .as_ref()
        .expect("a failed cache write is reported")
        .to_string();
    assert!(
        warning.contains("component cache") && warning.contains("not-a-dir"),
        "the warning names the cache path: {warning}"
    );
    assert_eq!(loaded.wit_version, "0.2.0", "and the component is usable");
}

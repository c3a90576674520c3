//! Drivers that misbehave get a clear error, never the host's files, and the host keeps
//! serving the next call. The hostile driver is built with the SDK like any third-party one.

use std::time::{Duration, Instant};

use strata_host::contract::DriverError;
use strata_host::layers::{LayerError, Strata};
use strata_host::sandbox::{CallError, SandboxError};
use strata_tests::{TempStore, create_with, hostile_config, hostile_wasm, root_or_skip};

const NAME: &str = strata_tests::HOSTILE;

/// The hostile driver with `driver_section` (all its imports granted unless the section
/// names `grants`).
fn open(t: &TempStore, driver_section: &str) -> Strata {
    t.open_with(&hostile_wasm(), hostile_config(t, driver_section))
        .expect("opening the hostile driver")
}

fn assert_serves(s: &Strata, id: &str) {
    create_with(s, id, &[]).unwrap_or_else(|e| panic!("the host stopped serving: {e}"));
    assert!(s.get(id).is_ok());
}

fn is_denied(e: &LayerError) -> bool {
    matches!(
        e,
        LayerError::Call(CallError::Driver {
            error: DriverError::Denied(_),
            ..
        })
    )
}

#[test]
fn escaping_paths_are_denied() {
    if !root_or_skip("escaping_paths_are_denied", "layers are created owned 0:0") {
        return;
    }
    let t = TempStore::new();
    let s = open(&t, "");
    let home = t.home(NAME);
    let victim = t.dir.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("secret"), b"secret").unwrap();
    // Symlinks planted in the home (as a layer's content could plant them).
    std::os::unix::fs::symlink(&victim, home.join("evil")).unwrap();
    std::os::unix::fs::symlink("../../victim", home.join("evil-rel")).unwrap();
    std::os::unix::fs::symlink("/", home.join("slash")).unwrap();

    let attempts: &[(&str, &str)] = &[
        ("escape", "../escape"),
        ("escape", "/etc/strata-escape"),
        ("escape", "dir/../../escape"),
        ("escape", "evil/made-here"),
        ("escape", "evil-rel/made-here"),
        ("escape", "slash/tmp/made-here"),
        ("chown", "evil/secret"),
        ("chown", "../root"),
        ("steal", "evil/secret"),
        ("steal", "slash/etc/passwd"),
        ("steal", "/etc"),
        ("snapshot", "../root"),
        ("snapshot", "slash"),
        ("snapshot", "evil/"),
        ("qgroup", "/"),
        ("qgroup", "slash/"),
        ("unsubvolume", "../root"),
        ("unsubvolume", "evil-rel/x"),
    ];
    for (i, (op, path)) in attempts.iter().enumerate() {
        let err = create_with(&s, &format!("x{i}"), &[(op, path)])
            .expect_err(&format!("{op}={path} must fail"));
        assert!(is_denied(&err), "{op}={path}: expected denied, got {err}");
    }
    // Copying the planted symlink itself copies a symlink, not what it points to.
    create_with(&s, "copied-link", &[("steal", "evil")]).expect("copying a symlink is fine");
    let copied = home.join("dir/copied-link");
    assert!(
        std::fs::symlink_metadata(&copied)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let listing: Vec<_> = std::fs::read_dir(&victim).unwrap().collect();
    assert_eq!(listing.len(), 1, "nothing was written into the victim dir");
    assert!(!t.root().join("escape").exists() && !t.dir.path().join("escape").exists());
    assert!(!std::path::Path::new("/etc/strata-escape").exists());
    assert_serves(&s, "after-escapes");
}

#[test]
fn hostile_mount_plans_are_refused_before_any_mount() {
    if !root_or_skip(
        "hostile_mount_plans_are_refused_before_any_mount",
        "layers are created owned 0:0",
    ) {
        return;
    }
    let t = TempStore::new();
    let s = open(&t, "");
    assert_serves(&s, "l");
    let plans: &[(&str, &str)] = &[
        ("bind", "/"),
        ("bind", ".."),
        ("bind", "../.."),
        ("target", "../outside"),
        ("target", "/mnt"),
        ("target", "."),
        ("lower", "/"),
        ("lower", "../x"),
        ("overlay-option", "lowerdir=/etc"),
        ("overlay-option", "upperdir=/tmp"),
        ("writable", "1"),
    ];
    for (k, v) in plans {
        let err = s
            .mount("l", &[(k.to_string(), v.to_string())])
            .expect_err(&format!("plan {k}={v} must be refused"));
        match &err {
            LayerError::Plan(p) => assert!(p.is_denied(), "{k}={v}: {err}"),
            other => panic!("{k}={v}: expected a refused plan, got {other}"),
        }
        assert_eq!(
            s.get("l").unwrap().mount_count,
            0,
            "{k}={v}: nothing mounted"
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(t.dir.path().to_string_lossy().as_ref()),
        "no mount was made under the store"
    );
    // The honest plan still mounts (as root, which this test requires).
    let p = s.mount("l", &[]).expect("the honest plan still mounts");
    s.unmount("l", false).unwrap();
    assert!(!strata_host::sys::mount::is_mount_point(&p));
    // An honest read-only overlay of the layer's own directory mounts through
    // fsopen/fsconfig(lowerdir+)/fsmount and refuses writes.
    std::fs::write(t.home(NAME).join("dir/l/seen"), b"through overlay").unwrap();
    assert_serves(&s, "l2");
    std::fs::write(t.home(NAME).join("dir/l2/below"), b"lower down").unwrap();
    let p = s
        .mount("l", &[("lower".into(), "dir/l,dir/l2".into())])
        .expect("an overlay of a directory in the home mounts");
    assert_eq!(std::fs::read(p.join("seen")).unwrap(), b"through overlay");
    assert_eq!(std::fs::read(p.join("below")).unwrap(), b"lower down");
    let err = std::fs::write(p.join("new"), b"x").unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(rustix::io::Errno::ROFS.raw_os_error())
    );
    s.unmount("l", false).unwrap();
    assert!(!strata_host::sys::mount::is_mount_point(&p));
}

#[test]
fn an_ungranted_capability_fails_the_load_naming_it() {
    let t = TempStore::new();
    let err = t
        .open_with(
            &hostile_wasm(),
            hostile_config(&t, "grants = [\"log\", \"files\", \"archive\"]"),
        )
        .err()
        .expect("the driver imports `copy`, which is not granted");
    let msg = err.to_string();
    assert!(
        matches!(err, LayerError::Sandbox(SandboxError::NotGranted { ref capability, .. }) if capability == "copy"),
        "{msg}"
    );
    assert!(
        msg.contains("`copy`") && msg.contains("not granted"),
        "{msg}"
    );
}

#[test]
fn a_looping_driver_hits_its_deadline_and_the_host_carries_on() {
    if !root_or_skip(
        "a_looping_driver_hits_its_deadline_and_the_host_carries_on",
        "layers are created owned 0:0",
    ) {
        return;
    }
    let t = TempStore::new();
    let s = open(&t, "deadline = \"300ms\"");
    let start = Instant::now();
    let err = create_with(&s, "spin", &[("loop", "1")]).expect_err("an endless loop must stop");
    let took = start.elapsed();
    assert!(
        matches!(
            err,
            LayerError::Call(CallError::Sandbox(SandboxError::Deadline { .. }))
        ),
        "{err}"
    );
    assert!(err.to_string().contains("deadline"), "{err}");
    assert!(took < Duration::from_secs(30), "stopped after {took:?}");
    assert!(
        s.get("spin").is_err(),
        "the failed layer is not left behind"
    );
    assert_serves(&s, "after-loop");
}

#[test]
fn an_allocating_driver_hits_its_memory_limit_and_the_host_carries_on() {
    if !root_or_skip(
        "an_allocating_driver_hits_its_memory_limit_and_the_host_carries_on",
        "layers are created owned 0:0",
    ) {
        return;
    }
    let t = TempStore::new();
    let s = open(&t, "memory = \"32M\"");
    let err = create_with(&s, "hog", &[("alloc", "1")]).expect_err("unbounded allocation");
    assert!(
        matches!(
            err,
            LayerError::Call(CallError::Sandbox(SandboxError::OutOfMemory { .. }))
        ),
        "{err}"
    );
    assert_serves(&s, "after-hog");
}

#[test]
fn a_panicking_driver_reports_its_message_and_the_host_carries_on() {
    if !root_or_skip(
        "a_panicking_driver_reports_its_message_and_the_host_carries_on",
        "layers are created owned 0:0",
    ) {
        return;
    }
    let t = TempStore::new();
    let s = open(&t, "");
    let err = create_with(&s, "boom", &[("panic", "1")]).expect_err("a panic fails the call");
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            LayerError::Call(CallError::Sandbox(SandboxError::Crashed { .. }))
        ),
        "{msg}"
    );
    assert!(
        msg.contains("panicked on purpose"),
        "the driver's panic message: {msg}"
    );
    assert_serves(&s, "after-panic");
}

#[test]
fn precompiled_native_code_is_refused() {
    let t = TempStore::new();
    let engine = wasmtime::Engine::default();
    let cwasm = engine
        .precompile_component(&std::fs::read(hostile_wasm()).unwrap())
        .unwrap();
    let path = t.dir.path().join("sneaky.wasm");
    std::fs::write(&path, cwasm).unwrap();
    let err = t
        .open_with(&path, t.config())
        .err()
        .expect("a .cwasm must be refused");
    assert!(err.to_string().contains("precompiled native code"), "{err}");
}

//! The lock rule (host/src/layers.rs, docs/containerd.md): every driver call that names a
//! layer runs under the store's exclusive lock, the lock removal takes, because a driver may
//! write into the layer's directory on any of them (overlay re-creates `merged/` and lost
//! links on a mount plan or a diff; zfs mounts the dataset for a diff), and a removal beside
//! such a write fails with "Directory not empty" or removes what the writer uses.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use strata_host::layers::{CreateLayer, Strata};
use strata_tests::{TempStore, vfs_wasm};

type Call = fn(&Strata) -> Result<(), String>;

/// The calls that asked the driver about a layer without the lock.
const CALLS: &[(&str, Call)] = &[
    ("changes", |s| {
        s.changes("top", None)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }),
    ("diff", |s| {
        s.diff("top", None, &mut std::io::sink())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }),
    ("diff_size", |s| {
        s.diff_size("top", None)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }),
    ("metadata", |s| {
        s.metadata("top").map(|_| ()).map_err(|e| e.to_string())
    }),
    ("list_with_metadata", |s| {
        s.list_with_metadata()
            .map(|_| ())
            .map_err(|e| e.to_string())
    }),
];

/// While one handle holds the lock, another handle's call waits until it is released: the
/// call ends after the holder said it lets go.
#[test]
fn driver_calls_on_a_layer_wait_for_the_store_lock() {
    if !strata_tests::root_or_skip(
        "driver_calls_on_a_layer_wait_for_the_store_lock",
        strata_tests::DRIVER_INIT_NEEDS_ROOT,
    ) {
        return;
    }
    let t = TempStore::new();
    let holder = t.open_with(&vfs_wasm(), t.config()).unwrap();
    let mut other = t.open_with(&vfs_wasm(), t.config()).unwrap();
    for (id, parent) in [("base", None), ("top", Some("base"))] {
        holder
            .create_layer(CreateLayer {
                id: Some(id.into()),
                parent: parent.map(str::to_string),
                ..Default::default()
            })
            .unwrap();
    }
    for (name, call) in CALLS {
        call(&other).unwrap_or_else(|e| panic!("{name}: {e}"));
        let lock = holder.lock_exclusive().unwrap();
        let released = Arc::new(AtomicBool::new(false));
        let seen = released.clone();
        let call = *call;
        let waiter = std::thread::spawn(move || {
            let result = call(&other);
            (other, result, seen.load(Ordering::SeqCst))
        });
        // Long enough for a call that does not wait to end first; a call that waits ends
        // after the release whatever the machine's speed.
        std::thread::sleep(Duration::from_millis(500));
        released.store(true, Ordering::SeqCst);
        drop(lock);
        let (back, result, after_release) = waiter.join().expect("the call panicked");
        other = back;
        result.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            after_release,
            "{name} asked the driver while another handle held the store's lock"
        );
    }
}

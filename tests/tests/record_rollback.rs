//! "Record, then driver data", rolled back by one guard (issue 17, along the way): when the
//! driver's `create` fails after the host wrote the layer's record (the hostile driver's
//! `fail-create` marker: it makes the layer's data, then fails), every front end that makes
//! layers — `layer create`, image import, container create, container commit, containerd's
//! `Prepare` and `View` — leaves neither a record nor data, nor a mount point, and the store
//! reopens as it was.

use std::collections::BTreeSet;
use std::path::Path;

use strata_host::frontend::containerd::api::snapshots as pb;
use strata_host::frontend::containerd::api::snapshots::snapshots_server::Snapshots;
use strata_host::frontend::containerd::service::SnapshotService;
use strata_host::image::{ContainerOptions, ImportOptions, ImportProgress};
use strata_host::layers::Strata;
use strata_tests::oci::{self, Compression};
use strata_tests::targen::{Entry, tar_of};
use strata_tests::{TempStore, create_with, hostile_config, hostile_wasm, root_or_skip};

fn open(t: &TempStore) -> Strata {
    t.open_with(&hostile_wasm(), hostile_config(t, ""))
        .expect("opening the hostile driver")
}

/// While this is in the driver's home, every `create` makes its data, then fails.
fn fail_creates(s: &Strata, on: bool) {
    let marker = s.driver_home().join("fail-create");
    if on {
        std::fs::create_dir_all(&marker).unwrap();
    } else {
        std::fs::remove_dir_all(&marker).unwrap();
    }
}

/// What the store holds: the layer records, the driver's layer data and the host's mount
/// points.
#[derive(Debug, PartialEq)]
struct Held {
    records: BTreeSet<String>,
    data: BTreeSet<String>,
    mount_points: BTreeSet<String>,
}

fn names(dir: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(dir) {
        Ok(r) => r
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

fn held(s: &Strata, t: &TempStore) -> Held {
    assert!(
        s.incomplete_layers().unwrap().is_empty(),
        "no record is left incomplete"
    );
    Held {
        records: s.list().unwrap().into_iter().map(|l| l.id).collect(),
        data: names(&s.driver_home().join("dir")),
        mount_points: names(&t.root().join("mounts")),
    }
}

/// `op` fails with the driver's failure, and the store holds what it held before, also
/// after reopening.
fn fails_leaving_nothing<T: std::fmt::Debug, E: std::fmt::Display>(
    t: &TempStore,
    s: &Strata,
    what: &str,
    op: impl FnOnce() -> Result<T, E>,
) {
    let before = held(s, t);
    fail_creates(s, true);
    let err = op().expect_err(what);
    fail_creates(s, false);
    let msg = err.to_string();
    assert!(msg.contains("fail-create"), "{what}: {msg}");
    assert_eq!(
        held(s, t),
        before,
        "{what}: neither record nor data is left"
    );
    assert_eq!(
        held(&open(t), t),
        before,
        "{what}: the store reopens as it was"
    );
}

#[test]
fn a_failed_create_after_the_record_leaves_nothing_through_each_front_end() {
    if !root_or_skip(
        "a_failed_create_after_the_record_leaves_nothing_through_each_front_end",
        "layers are created owned 0:0 and snapshots are mounted",
    ) {
        return;
    }
    let t = TempStore::new();
    let s = open(&t);
    create_with(&s, "base", &[]).unwrap();

    fails_leaving_nothing(&t, &s, "layer create", || create_with(&s, "l", &[]));
    fails_leaving_nothing(&t, &s, "layer create --template", || {
        s.create_layer(strata_host::layers::CreateLayer {
            id: Some("copy".into()),
            template: Some("base".into()),
            ..Default::default()
        })
    });

    let image = oci::build(
        &[
            tar_of(&[Entry::file("a", 0o644, b"a")]),
            tar_of(&[Entry::file("b", 0o644, b"b")]),
        ],
        Compression::Gzip,
        "rollback:1",
    );
    let layout = t.dir.path().join("layout");
    oci::write_layout(&image, &layout);
    let import = || {
        s.import_image(
            &layout,
            &ImportOptions::default(),
            &ImportProgress::default(),
        )
    };
    fails_leaving_nothing(&t, &s, "image import", import);
    assert!(s.images().unwrap().is_empty(), "no image is recorded");
    import().expect("the import works once the driver does");

    let image_id = image.image_id();
    fails_leaving_nothing(&t, &s, "container create", || {
        s.create_container(&image_id, &ContainerOptions::default())
    });
    assert!(
        s.containers().unwrap().is_empty(),
        "no container is recorded"
    );
    let container = s
        .create_container(&image_id, &ContainerOptions::default())
        .expect("the container is made once the driver works");
    fails_leaving_nothing(&t, &s, "container commit", || {
        s.commit_container(&container.id, &[])
    });

    // containerd's Prepare and View: the snapshot's record goes with its layer.
    drop(s);
    let s = open(&t);
    let service = SnapshotService::new(vec![open(&t)]).expect("starting the service");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    fails_leaving_nothing(&t, &s, "containerd Prepare", || {
        rt.block_on(
            service.prepare(tonic::Request::new(pb::PrepareSnapshotRequest {
                snapshotter: "strata".into(),
                key: "active".into(),
                parent: String::new(),
                labels: Default::default(),
            })),
        )
        .map(|_| ())
        .map_err(|status| status.message().to_string())
    });
    assert!(s.snapshot("active").is_err(), "no snapshot record is left");
    fails_leaving_nothing(&t, &s, "containerd View", || {
        rt.block_on(service.view(tonic::Request::new(pb::ViewSnapshotRequest {
            snapshotter: "strata".into(),
            key: "view".into(),
            parent: String::new(),
            labels: Default::default(),
        })))
        .map(|_| ())
        .map_err(|status| status.message().to_string())
    });
    assert!(s.snapshot("view").is_err(), "no snapshot record is left");
}

//! Paths the host hands out or acts on cannot be re-pointed by a driver (issue 15, item 2).
//!
//! A mount plan names directories in the driver's home, and the driver may rename them or
//! put symlinks in their place in any later call. The host therefore refuses plan paths
//! through symlinks, mounts by descriptor on a mount point of its own (`<root>/mounts/<id>`),
//! and unmounts only that mount, through a pinned descriptor: what `layer mount` printed,
//! what the store recorded, what `layer unmount` acts on and what containerd is told to
//! mount stay the layer, whatever the driver does next.

use std::path::{Path, PathBuf};
use std::process::Command;

use strata_host::frontend::containerd::api::snapshots as pb;
use strata_host::frontend::containerd::api::snapshots::snapshots_server::Snapshots;
use strata_host::frontend::containerd::service::{SnapshotService, layer_id};
use strata_host::layers::{LayerError, Strata};
use strata_host::sys::mount::is_mount_point;
use strata_tests::{TempStore, create_with, hostile_config, hostile_wasm, root_or_skip};

fn open(t: &TempStore) -> Strata {
    t.open_with(&hostile_wasm(), hostile_config(t, ""))
        .expect("opening the hostile driver")
}

/// `dest` as a symlink target relative to the driver home (the driver may only make
/// relative symlinks; `..` is allowed in the text).
fn relative_from_home(s: &Strata, t: &TempStore, dest: &str) -> String {
    let home = s.driver_home();
    let depth = home
        .strip_prefix(t.dir.path())
        .expect("the home is beneath the store's directory")
        .components()
        .count();
    format!("{}{dest}", "../".repeat(depth))
}

/// A tmpfs of the host's, mounted at `dir`, holding `host-secret`.
fn host_tmpfs(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "strata-test-host"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success(), "mounting a tmpfs at {}", dir.display());
    std::fs::write(dir.join("host-secret"), b"host").unwrap();
}

#[test]
fn a_plan_path_through_a_symlink_is_denied() {
    if !root_or_skip(
        "a_plan_path_through_a_symlink_is_denied",
        "layers are created owned 0:0 and mounted",
    ) {
        return;
    }
    let t = TempStore::new();
    let s = open(&t);
    create_with(&s, "l", &[]).unwrap();
    create_with(&s, "l2", &[]).unwrap();
    // The honest plan mounts (and makes its target `mnt/l`).
    s.mount("l", &[]).expect("the honest plan mounts");
    s.unmount("l", false).unwrap();
    // Symlinks inside the home, to directories inside the home: harmless to resolve
    // beneath the home, but a plan through them names a path the driver can re-point.
    create_with(&s, "s1", &[("symlink", "alias=dir")]).unwrap();
    create_with(&s, "s2", &[("symlink", "mnt-alias=mnt")]).unwrap();
    create_with(&s, "s3", &[("symlink", "dir/l-alias=l")]).unwrap();
    let plans: &[(&str, &str)] = &[
        ("bind", "alias/l"),
        ("bind", "dir/l-alias"),
        ("target", "mnt-alias/l"),
        ("lower", "alias/l,dir/l2"),
        ("lower", "dir/l,alias/l2"),
        ("lower", "dir/l,dir/l-alias"),
    ];
    for (k, v) in plans {
        let err = s
            .mount("l", &[(k.to_string(), v.to_string())])
            .expect_err(&format!(
                "plan {k}={v} goes through a symlink and must be refused"
            ));
        match &err {
            LayerError::Plan(p) => assert!(p.is_denied(), "{k}={v}: {err}"),
            other => panic!("{k}={v}: expected a refused plan, got {other}"),
        }
        assert!(err.to_string().contains("symlink"), "{k}={v}: {err}");
        assert_eq!(
            s.get("l").unwrap().mount_count,
            0,
            "{k}={v}: nothing mounted"
        );
    }
    let p = s.mount("l", &[]).expect("the honest plan still mounts");
    s.unmount("l", false).unwrap();
    assert!(!is_mount_point(&p));
}

#[test]
fn repointing_the_plan_after_mount_changes_nothing_the_host_hands_out_or_unmounts() {
    if !root_or_skip(
        "repointing_the_plan_after_mount_changes_nothing_the_host_hands_out_or_unmounts",
        "layers are mounted, and so is a tmpfs",
    ) {
        return;
    }
    let t = TempStore::new();
    let s = open(&t);
    create_with(&s, "l", &[]).unwrap();
    let layer_dir = s.driver_home().join("dir/l");
    std::fs::write(layer_dir.join("layer-file"), b"layer").unwrap();
    // The host's own files, where the driver will point its directories: `host/l` is a
    // tmpfs the host mounted.
    let host = t.dir.path().join("host");
    host_tmpfs(&host.join("l"));

    let p = s.mount("l", &[]).expect("mounting the layer");
    assert_eq!(std::fs::read(p.join("layer-file")).unwrap(), b"layer");
    // Later driver calls move the plan's target and source directories aside and put
    // symlinks to the host's directory in their place.
    let to_host = relative_from_home(&s, &t, "host");
    create_with(&s, "x", &[("repoint", &format!("mnt={to_host}"))]).unwrap();
    create_with(&s, "y", &[("repoint", &format!("dir={to_host}"))]).unwrap();
    assert!(
        s.driver_home().join("mnt/l/host-secret").exists(),
        "the re-point took effect in the home"
    );

    // The path the host printed and recorded still shows the layer, not the host's files.
    assert_eq!(
        s.get("l").unwrap().mount_point.as_deref(),
        Some(p.to_string_lossy().as_ref())
    );
    assert_eq!(std::fs::read(p.join("layer-file")).unwrap(), b"layer");
    assert!(
        !p.join("host-secret").exists(),
        "{} shows host files",
        p.display()
    );
    // A second mount returns the same, live mount.
    assert_eq!(s.mount("l", &[]).unwrap(), p);
    s.unmount("l", false).unwrap();
    assert!(is_mount_point(&p), "one user is left");

    // The last unmount unmounts the layer's mount and nothing else.
    s.unmount("l", false).expect("unmounting the layer");
    assert!(!is_mount_point(&p), "the layer's mount is gone");
    assert!(
        is_mount_point(&host.join("l")),
        "the host's tmpfs at the re-point's destination is still mounted"
    );
    assert_eq!(std::fs::read(host.join("l/host-secret")).unwrap(), b"host");
    assert!(
        !std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.contains(&*s.driver_home().to_string_lossy())),
        "nothing is left mounted in the driver home"
    );
    strata_host::sys::mount::unmount(&host.join("l"), false).unwrap();
}

#[test]
fn containerd_mounts_cannot_be_repointed_to_host_directories() {
    if !root_or_skip(
        "containerd_mounts_cannot_be_repointed_to_host_directories",
        "snapshots are mounted",
    ) {
        return;
    }
    let t = TempStore::new();
    let service = SnapshotService::new(vec![open(&t)]).expect("starting the service");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mounts = rt
        .block_on(
            service.prepare(tonic::Request::new(pb::PrepareSnapshotRequest {
                snapshotter: "strata".into(),
                key: "active".into(),
                parent: String::new(),
                labels: Default::default(),
            })),
        )
        .expect("prepare")
        .into_inner()
        .mounts;
    // A following request (any driver call on the same store) re-points the directories
    // the plan named to a directory of the host's.
    let s = open(&t);
    let layer = layer_id(s.snapshot("active").unwrap().id);
    let host = t.dir.path().join("host");
    std::fs::create_dir_all(host.join(&layer)).unwrap();
    std::fs::write(host.join(&layer).join("host-secret"), b"host").unwrap();
    let to_host = relative_from_home(&s, &t, "host");
    create_with(&s, "x", &[("repoint", &format!("dir={to_host}"))]).unwrap();
    assert!(
        s.driver_home()
            .join("dir")
            .join(&layer)
            .join("host-secret")
            .exists(),
        "the re-point took effect in the home"
    );

    // containerd mounts what Prepare returned, then what Mounts returns.
    let check = |n: usize, ms: &[strata_host::frontend::containerd::api::types::Mount]| {
        let rootfs: PathBuf = t.dir.path().join(format!("rootfs-{n}"));
        std::fs::create_dir_all(&rootfs).unwrap();
        for m in ms {
            let mut c = Command::new("mount");
            if m.r#type != "bind" {
                c.args(["-t", &m.r#type]);
            }
            let status = c
                .args(["-o", &m.options.join(","), &m.source])
                .arg(&rootfs)
                .status()
                .unwrap();
            assert!(status.success(), "mounting {m:?}");
        }
        let leaked = rootfs.join("host-secret").exists();
        std::fs::write(rootfs.join(format!("written-{n}")), b"container").unwrap();
        let status = Command::new("umount").arg("-R").arg(&rootfs).status();
        assert!(status.unwrap().success());
        assert!(
            !leaked,
            "the container's rootfs is the host's directory: {ms:?}"
        );
        assert!(
            !host.join(&layer).join(format!("written-{n}")).exists(),
            "a container write landed in the host's directory"
        );
    };
    check(0, &mounts);
    let again = rt
        .block_on(service.mounts(tonic::Request::new(pb::MountsRequest {
            snapshotter: "strata".into(),
            key: "active".into(),
        })))
        .expect("mounts")
        .into_inner()
        .mounts;
    check(1, &again);
    // Undo the driver's damage to its own home so that it can remove the layer; removing the
    // snapshot releases the host's mount.
    let home = s.driver_home();
    std::fs::remove_file(home.join("dir")).unwrap();
    std::fs::rename(home.join("dir.moved"), home.join("dir")).unwrap();
    rt.block_on(
        service.remove(tonic::Request::new(pb::RemoveSnapshotRequest {
            snapshotter: "strata".into(),
            key: "active".into(),
        })),
    )
    .expect("remove");
    assert!(
        !std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&*t.dir.path().to_string_lossy()),
        "nothing of the store is left mounted"
    );
}

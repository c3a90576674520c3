//! The vfs driver end to end through the layer service: file types round-trip exactly, diffs
//! reproduce trees, whiteouts and opaque directories apply, hostile tars stay inside.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use strata_host::conformance::tree::{differences, manifest};
use strata_host::layers::{ChangeKind, CreateLayer, Strata};
use strata_tests::targen::{Entry, tar_of};

fn snapshot(root: &std::path::Path) -> strata_host::conformance::tree::Manifest {
    manifest(root).expect("reading the layer tree")
}

/// The digest the manifest keeps of file content or a link target.
fn digest(bytes: &[u8]) -> Option<String> {
    use sha2::Digest;
    Some(hex::encode(sha2::Sha256::digest(bytes)))
}
use strata_tests::{TempStore, root_or_skip};

fn create(s: &Strata, id: &str, parent: Option<&str>) {
    s.create_layer(CreateLayer {
        id: Some(id.into()),
        parent: parent.map(str::to_string),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("creating layer {id}: {e}"));
}

fn apply(s: &Strata, id: &str, tar: Vec<u8>) -> u64 {
    s.apply(id, Box::new(Cursor::new(tar)))
        .unwrap_or_else(|e| panic!("applying onto {id}: {e}"))
        .size
}

fn layer_dir(t: &TempStore, id: &str) -> PathBuf {
    t.home("vfs").join("dir").join(id)
}

fn every_file_type() -> Vec<Entry> {
    vec![
        Entry::dir("a", 0o755).owner(1000, 1000),
        Entry::file("a/file", 0o644, b"hello layers\n")
            .owner(1000, 1000)
            .xattr("user.note", b"kept")
            .xattr("trusted.strata", b"also kept"),
        Entry::file("a/suid", 0o4755, b"#!/bin/true\n"),
        Entry::file("a/sgid", 0o2750, b"g").owner(0, 50),
        Entry::dir("sticky", 0o1777),
        Entry::dir("base", 0o755),
        Entry::dir("base/sub", 0o1705).owner(1, 2),
        Entry::file("base/setuid", 0o4222, b"x"),
        Entry::symlink("a/link", "file"),
        Entry::symlink("abs", "/etc/passwd"),
        Entry::hardlink("a/hard", "a/file"),
        Entry::fifo("a/fifo", 0o600).owner(7, 8),
        Entry::dir("dev", 0o755),
        Entry::char_device("dev/null2", 0o666, 1, 3),
        Entry::block_device("dev/loop9", 0o660, 7, 9).owner(0, 6),
        Entry::file("owned", 0o640, b"data")
            .owner(1234, 5678)
            .mtime(1_234_567_890),
    ]
}

#[test]
fn every_file_type_round_trips_exactly() {
    if !root_or_skip(
        "every_file_type_round_trips_exactly",
        "chown, mknod, trusted xattrs",
    ) {
        return;
    }
    let t = TempStore::new();
    let s = t.open_vfs();
    create(&s, "base", None);
    let size = apply(&s, "base", tar_of(&every_file_type()));
    let snap = snapshot(&layer_dir(&t, "base"));

    let root = &snap["/"];
    assert_eq!(
        (root.mode, root.uid, root.gid),
        (0o555, 0, 0),
        "a new layer's root"
    );
    let f = &snap["/a/file"];
    assert_eq!((f.kind, f.mode, f.uid, f.gid), ("file", 0o644, 1000, 1000));
    assert_eq!(f.digest, digest(b"hello layers\n"));
    assert_eq!(f.mtime, Some((1_600_000_000, 0)));
    assert_eq!(
        f.xattrs,
        vec![
            ("trusted.strata".to_string(), b"also kept".to_vec()),
            ("user.note".to_string(), b"kept".to_vec())
        ]
    );
    assert_eq!(f.link_group.as_deref(), Some("/a/file"));
    assert_eq!(snap["/a/hard"].link_group.as_deref(), Some("/a/file"));
    assert_eq!(snap["/a/suid"].mode, 0o4755);
    assert_eq!((snap["/a/sgid"].mode, snap["/a/sgid"].gid), (0o2750, 50));
    assert_eq!(snap["/sticky"].mode, 0o1777);
    let sub = &snap["/base/sub"];
    assert_eq!(
        (sub.kind, sub.mode, sub.uid, sub.gid),
        ("dir", 0o1705, 1, 2)
    );
    assert_eq!(snap["/base/setuid"].mode, 0o4222);
    assert_eq!(
        (snap["/a/link"].kind, snap["/a/link"].digest.clone()),
        ("symlink", digest(b"file"))
    );
    assert_eq!(snap["/abs"].digest, digest(b"/etc/passwd"));
    let fifo = &snap["/a/fifo"];
    assert_eq!(
        (fifo.kind, fifo.mode, fifo.uid, fifo.gid),
        ("fifo", 0o600, 7, 8)
    );
    let null2 = &snap["/dev/null2"];
    assert_eq!((null2.kind, null2.rdev), ("char-device", Some((1, 3))));
    let loop9 = &snap["/dev/loop9"];
    assert_eq!(
        (loop9.kind, loop9.mode, loop9.gid),
        ("block-device", 0o660, 6)
    );
    assert_eq!(loop9.rdev, Some((7, 9)));
    let owned = &snap["/owned"];
    assert_eq!((owned.uid, owned.gid, owned.mode), (1234, 5678, 0o640));
    assert_eq!(owned.mtime, Some((1_234_567_890, 0)));
    // Regular-file bytes, each hardlink group once.
    assert_eq!(size, 13 + 12 + 1 + 1 + 4);

    // A child sees its parent exactly, and keeps the parent's root mode.
    create(&s, "child", Some("base"));
    let child = snapshot(&layer_dir(&t, "child"));
    let d = differences(&snap, &child);
    assert!(d.is_empty(), "child differs from parent:\n{}", d.join("\n"));
    assert!(
        s.changes("child", None).unwrap().is_empty(),
        "a fresh child has no changes"
    );
}

fn base_tree() -> Vec<Entry> {
    vec![
        Entry::dir("etc", 0o755),
        Entry::file("etc/motd", 0o644, b"welcome\n"),
        Entry::file("etc/hostname", 0o644, b"base\n"),
        Entry::dir("var", 0o755),
        Entry::dir("var/cache", 0o755),
        Entry::file("var/cache/a", 0o644, b"a"),
        Entry::dir("var/cache/deep", 0o755),
        Entry::file("var/cache/deep/b", 0o644, b"b"),
        Entry::dir("opt", 0o755),
        Entry::dir("opt/tool", 0o755),
        Entry::file("opt/tool/bin", 0o755, b"tool"),
        Entry::file("keep", 0o600, b"keep").owner(5, 5),
    ]
}

fn child_changes() -> Vec<Entry> {
    vec![
        Entry::dir("etc", 0o755),
        Entry::whiteout("etc/motd"),
        Entry::file("etc/hostname", 0o644, b"child\n"),
        Entry::dir("var/cache", 0o755),
        Entry::opaque("var/cache"),
        Entry::file("var/cache/fresh", 0o644, b"fresh"),
        Entry::whiteout("opt/tool"),
        Entry::file("new", 0o4750, b"new file")
            .owner(3, 4)
            .xattr("user.k", b"v"),
        Entry::hardlink("new-link", "new"),
    ]
}

#[test]
fn whiteouts_and_diff_reproduce_the_child() {
    if !root_or_skip("whiteouts_and_diff_reproduce_the_child", "chown and mknod") {
        return;
    }
    let t = TempStore::new();
    let s = t.open_vfs();
    create(&s, "base", None);
    apply(&s, "base", tar_of(&base_tree()));
    create(&s, "child", Some("base"));
    apply(&s, "child", tar_of(&child_changes()));

    let child_dir = layer_dir(&t, "child");
    let snap = snapshot(&child_dir);
    assert!(!snap.contains_key("/etc/motd"), "whiteout deletes the file");
    assert!(
        !snap.contains_key("/opt/tool"),
        "whiteout deletes the directory"
    );
    assert!(
        !snap.contains_key("/var/cache/a"),
        "opaque dir hides lower entries"
    );
    assert!(
        !snap.contains_key("/var/cache/deep"),
        "opaque dir hides lower dirs"
    );
    assert_eq!(snap["/var/cache/fresh"].digest, digest(b"fresh"));
    assert_eq!(snap["/etc/hostname"].digest, digest(b"child\n"));
    assert!(
        !snap.keys().any(|k| k.contains(".wh.")),
        "no whiteout is left on disk"
    );
    assert_eq!(
        snap["/keep"].digest,
        digest(b"keep"),
        "untouched files stay"
    );

    let changes = s.changes("child", None).unwrap();
    let has =
        |kind: ChangeKind, path: &str| changes.iter().any(|c| c.kind == kind && c.path == path);
    assert!(has(ChangeKind::Delete, "/etc/motd"), "{changes:?}");
    assert!(has(ChangeKind::Modify, "/etc/hostname"), "{changes:?}");
    assert!(has(ChangeKind::Delete, "/opt/tool"), "{changes:?}");
    assert!(
        !changes.iter().any(|c| c.path == "/opt/tool/bin"),
        "a deleted directory is reported once: {changes:?}"
    );
    assert!(has(ChangeKind::Add, "/new"), "{changes:?}");
    assert!(has(ChangeKind::Add, "/var/cache/fresh"), "{changes:?}");
    assert!(has(ChangeKind::Delete, "/var/cache/a"), "{changes:?}");
    assert!(!changes.iter().any(|c| c.path == "/keep"), "{changes:?}");

    // Export the child's diff, apply it to a fresh child of the same parent: same tree.
    let mut diff = Vec::new();
    s.diff("child", None, &mut diff).unwrap();
    let diff_size = s.diff_size("child", None).unwrap();
    create(&s, "replay", Some("base"));
    let applied = apply(&s, "replay", diff);
    let replay = snapshot(&layer_dir(&t, "replay"));
    let d = differences(&snap, &replay);
    assert!(d.is_empty(), "replayed diff differs:\n{}", d.join("\n"));
    assert_eq!(applied, diff_size, "applied size equals diff-size");
    assert!(applied > 0);
}

#[test]
fn hostile_tars_write_nothing_outside_the_layer() {
    if !root_or_skip(
        "hostile_tars_write_nothing_outside_the_layer",
        "chown and mknod",
    ) {
        return;
    }
    let t = TempStore::new();
    let victim = t.dir.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("secret"), b"secret").unwrap();
    let victim_abs = victim.to_string_lossy().into_owned();
    let climb = "../../../../victim"; // from root/vfs/dir/ID up to the temp dir
    let s = t.open_vfs();
    let attacks: Vec<(&str, Vec<Entry>)> = vec![
        (
            "dot-dot path",
            vec![Entry::file(&format!("{climb}/pwned-dotdot"), 0o644, b"x")],
        ),
        (
            "absolute path",
            vec![Entry::file(&format!("{victim_abs}/pwned-abs"), 0o644, b"x")],
        ),
        (
            "absolute symlink then write through",
            vec![
                Entry::symlink("esc", &victim_abs),
                Entry::file("esc/pwned-sym", 0o644, b"x"),
            ],
        ),
        (
            "relative symlink then write through",
            vec![
                Entry::symlink("esc", climb),
                Entry::file("esc/pwned-rel", 0o644, b"x"),
            ],
        ),
        (
            "hardlink to an absolute outside path",
            vec![Entry::hardlink("hl", &format!("{victim_abs}/secret"))],
        ),
        (
            "hardlink climbing out",
            vec![Entry::hardlink("hl", &format!("{climb}/secret"))],
        ),
        (
            "symlink, then hardlink through it",
            vec![
                Entry::symlink("esc", &victim_abs),
                Entry::hardlink("hl", "esc/secret"),
            ],
        ),
        (
            "symlink then chmod through it",
            vec![Entry::symlink("esc", &victim_abs), Entry::dir("esc", 0o777)],
        ),
    ];
    for (i, (what, entries)) in attacks.into_iter().enumerate() {
        let id = format!("attack{i}");
        create(&s, &id, None);
        let result = s.apply(&id, Box::new(Cursor::new(tar_of(&entries))));
        let listing: Vec<String> = std::fs::read_dir(&victim)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            listing,
            vec!["secret"],
            "{what}: something was written outside"
        );
        let md = std::fs::metadata(victim.join("secret")).unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::nlink(&md),
            1,
            "{what}: linked"
        );
        assert_eq!(
            std::fs::read(victim.join("secret")).unwrap(),
            b"secret",
            "{what}"
        );
        let victim_md = std::fs::metadata(&victim).unwrap();
        assert_ne!(
            std::os::unix::fs::PermissionsExt::mode(&victim_md.permissions()) & 0o777,
            0o777,
            "{what}: chmod went through"
        );
        match result {
            Ok(_) => {
                // Accepted attacks must have landed inside the layer.
                assert!(layer_dir(&t, &id).exists(), "{what}");
            }
            Err(e) => {
                let msg = format!("{e}");
                assert!(
                    msg.contains(&id),
                    "{what}: error should name the layer: {msg}"
                );
                assert!(
                    msg.contains("left as it was"),
                    "{what}: a failed apply leaves the layer as it was: {msg}"
                );
                assert!(
                    s.get(&id).is_ok() && s.changes(&id, None).unwrap().is_empty(),
                    "{what}: a failed apply leaves the (empty) layer as it was"
                );
            }
        }
    }
}

#[test]
fn a_crash_mid_create_is_recovered_on_open() {
    if !root_or_skip(
        "a_crash_mid_create_is_recovered_on_open",
        "layers are created owned 0:0",
    ) {
        return;
    }
    let t = TempStore::new();
    {
        let s = t.open_vfs();
        create(&s, "done", None);
    }
    // Simulate a crash between the incomplete record and the end of driver work: the record
    // written incomplete, the driver's data made (vfs: a copy of the parent's directory).
    {
        let store = strata_host::store::LayerStore::open(&t.root()).unwrap();
        let layer = store
            .begin_create(strata_host::store::NewLayer {
                id: Some("halfway".into()),
                parent: Some("done".into()),
                names: vec![],
                driver: "vfs".into(),
                read_write: false,
                ..Default::default()
            })
            .unwrap();
        std::fs::create_dir(layer_dir(&t, &layer.id)).unwrap();
        std::fs::write(layer_dir(&t, &layer.id).join("half-made"), b"data").unwrap();
        assert!(layer_dir(&t, "halfway").exists());
    }
    let s = t.open_vfs();
    assert!(s.get("halfway").is_err(), "the incomplete layer is gone");
    assert!(!layer_dir(&t, "halfway").exists(), "and so is its data");
    assert!(s.get("done").is_ok(), "complete layers stay");
}

fn mounted(path: &Path) -> bool {
    strata_host::sys::mount::is_mount_point(path)
}

#[test]
fn mounts_nest_views_are_read_only_and_removal_follows_the_rules() {
    if !root_or_skip(
        "mounts_nest_views_are_read_only_and_removal_follows_the_rules",
        "mounts",
    ) {
        return;
    }
    let t = TempStore::new();
    let s = t.open_vfs();
    create(&s, "base", None);
    apply(&s, "base", tar_of(&base_tree()));
    s.create_layer(CreateLayer {
        id: Some("rw".into()),
        parent: Some("base".into()),
        read_write: true,
        ..Default::default()
    })
    .unwrap();

    let p1 = s.mount("rw", &[]).unwrap();
    let p2 = s.mount("rw", &[]).unwrap();
    assert_eq!(p1, p2, "a second mount reuses the first");
    assert!(mounted(&p1));
    assert_eq!(std::fs::read(p1.join("etc/hostname")).unwrap(), b"base\n");
    std::fs::write(p1.join("written"), b"rw layer").unwrap();
    assert_eq!(s.get("rw").unwrap().mount_count, 2);
    assert_eq!(s.unmount("rw", false).unwrap(), 1);
    assert!(mounted(&p1), "still mounted for the other user");
    assert!(
        matches!(
            s.remove("rw"),
            Err(strata_host::layers::LayerError::Store(_))
        ),
        "a mounted layer cannot be removed"
    );
    assert_eq!(s.unmount("rw", false).unwrap(), 0);
    assert!(!mounted(&p1), "unmounted with the last user");
    assert_eq!(
        std::fs::read(layer_dir(&t, "rw").join("written")).unwrap(),
        b"rw layer"
    );

    // A layer that is not read-write mounts as a read-only view.
    let view = s.mount("base", &[]).unwrap();
    let err = std::fs::write(view.join("nope"), b"x").unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(rustix::io::Errno::ROFS.raw_os_error()),
        "{err}"
    );
    // A child can be created while its parent is mounted.
    create(&s, "child2", Some("base"));
    s.unmount("base", false).unwrap();
    assert!(matches!(
        s.unmount("base", false),
        Err(strata_host::layers::LayerError::NotMounted(_))
    ));

    assert!(
        s.remove("base").is_err(),
        "a layer with children cannot be removed"
    );
    let mut ids: Vec<String> = s.list().unwrap().into_iter().map(|l| l.id).collect();
    ids.sort();
    assert_eq!(
        ids,
        vec!["base", "child2", "rw"],
        "ls lists exactly the layers created"
    );
    for id in ["child2", "rw", "base"] {
        s.remove(id)
            .unwrap_or_else(|e| panic!("removing {id}: {e}"));
        assert!(!layer_dir(&t, id).exists());
    }
    assert!(s.list().unwrap().is_empty());
}
